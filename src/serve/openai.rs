//! The OpenAI-compatible wire format: request bodies (checked field by field, so a wrong
//! type names the field), responses, stream chunks, and OpenAI-shaped errors.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

/// An error as OpenAI clients expect it: `{"error": {"message", "type", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub code: &'static str,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind, code, retry_after: None }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_request", message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", code, message)
    }
    pub fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", "invalid_api_key", "missing or wrong API key (Authorization: Bearer KEY)")
    }
    pub fn queue_full(retry_after: u64) -> ApiError {
        ApiError { retry_after: Some(retry_after), ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "queue_full", "the request queue is full; retry later") }
    }
    pub fn shutting_down() -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "shutting_down", "the server is shutting down")
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error", message)
    }
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "code": self.code, "param": Value::Null}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert("retry-after", HeaderValue::from(s));
        }
        r
    }
}

/// One adapter of the `adapters` extension field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterChoice {
    pub name: String,
    #[serde(default = "one")]
    pub scale: f32,
}

fn one() -> f32 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// The fields both endpoints share.
#[derive(Debug, Clone, Default)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub user: Option<String>,
    pub stream: bool,
    pub adapters: Option<Vec<AdapterChoice>>,
}

/// What a request asks for: a chat or a plain prompt.
#[derive(Debug, Clone)]
pub enum Input {
    Chat(Vec<Message>),
    Text(String),
}

fn field<T: serde::de::DeserializeOwned>(obj: &serde_json::Map<String, Value>, key: &str, what: &str) -> Result<Option<T>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| ApiError::bad_request(format!("field `{key}`: expected {what} ({e})"))),
    }
}

/// Parses a request body: `chat` for /v1/chat/completions (needs `messages`), else
/// /v1/completions (needs `prompt`).
pub fn parse(body: &[u8], chat: bool) -> Result<(Input, Common), ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(obj) = v else { return Err(ApiError::bad_request("the body must be a JSON object")) };
    let stop = match obj.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(v) => serde_json::from_value::<Vec<String>>(v.clone()).map_err(|_| ApiError::bad_request("field `stop`: expected a string or an array of strings"))?,
    };
    let common = Common {
        model: field(&obj, "model", "a string")?,
        max_tokens: field::<u64>(&obj, "max_tokens", "a non-negative integer")?.or(field::<u64>(&obj, "max_completion_tokens", "a non-negative integer")?).map(|n| n.min(usize::MAX as u64) as usize),
        temperature: field(&obj, "temperature", "a number")?,
        top_p: field(&obj, "top_p", "a number")?,
        seed: field::<i64>(&obj, "seed", "an integer")?.map(|s| s as u64),
        stop,
        user: field(&obj, "user", "a string")?,
        stream: field(&obj, "stream", "a boolean")?.unwrap_or(false),
        adapters: field(&obj, "adapters", "an array of {name, scale}")?,
    };
    if let Some(t) = common.temperature.filter(|t| !(t.is_finite() && (0.0..=2.0).contains(t))) {
        return Err(ApiError::bad_request(format!("field `temperature`: {t} is not in [0, 2]")));
    }
    if let Some(p) = common.top_p.filter(|p| !(p.is_finite() && *p > 0.0 && *p <= 1.0)) {
        return Err(ApiError::bad_request(format!("field `top_p`: {p} is not in (0, 1]")));
    }
    if let Some(a) = common.adapters.iter().flatten().find(|a| !a.scale.is_finite()) {
        return Err(ApiError::bad_request(format!("field `adapters`: adapter {:?} has scale {}", a.name, a.scale)));
    }
    let input = if chat {
        let messages: Vec<Message> = field(&obj, "messages", "an array of {role, content}")?.ok_or_else(|| ApiError::bad_request("field `messages` is required"))?;
        if messages.is_empty() {
            return Err(ApiError::bad_request("field `messages` is empty"));
        }
        if let Some((i, m)) = messages.iter().enumerate().find(|(_, m)| !["system", "user", "assistant"].contains(&m.role.as_str())) {
            return Err(ApiError::bad_request(format!("field `messages[{i}].role`: {:?} is not system, user or assistant", m.role)));
        }
        Input::Chat(messages)
    } else {
        let prompt = match obj.get("prompt") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or_default().to_string(),
            Some(_) => return Err(ApiError::bad_request("field `prompt`: expected a string (or an array of one string)")),
            None => return Err(ApiError::bad_request("field `prompt` is required")),
        };
        Input::Text(prompt)
    };
    Ok((input, common))
}

/// OpenAI's finish_reason for a stop reason.
pub fn finish_reason(r: crate::engine::StopReason) -> &'static str {
    use crate::engine::StopReason::*;
    match r {
        MaxTokens | ContextFull => "length",
        EndOfGeneration | StopString | Cancelled => "stop",
    }
}

//! llama.cpp's built-in chat formats, ported: `llm_chat_detect_template` and
//! `llm_chat_apply_template` of `src/llama-chat.cpp` in the llama.cpp that llama-cpp-sys-2
//! builds (what the llama.cpp backend calls through `llama_chat_apply_template`).
//!
//! Both backends render [`Prompt::Chat`](super::Prompt::Chat) this way, so that they give
//! the same tokens for the same request: the llama.cpp backend through llama.cpp itself,
//! the native engine through this port (no llama.cpp). This is not a Jinja renderer: the
//! model's `tokenizer.chat_template` (or a format's name, such as `"chatml"`) is searched
//! for markers that pick one of llama.cpp's formats, each written out below. A template
//! that picks none is refused ([`EngineError::ChatTemplate`]), as llama.cpp refuses it.
//! Jinja rendering (what Hugging Face transformers does, e.g. SmolLM2's default system
//! prompt when a conversation has none) is
//! [`Tokenizer::apply_chat_template`](crate::tokenizer::Tokenizer::apply_chat_template).
//!
//! tests/suite/native_vocab.rs checks every format against llama.cpp's own renderer.

use super::runtime::ChatMessage;
use crate::error::EngineError;

/// One of llama.cpp's chat formats (`llm_chat_template`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatFormat {
    Chatml,
    Llama2,
    Llama2Sys,
    Llama2SysBos,
    Llama2SysStrip,
    MistralV1,
    MistralV3,
    MistralV3Tekken,
    MistralV7,
    MistralV7Tekken,
    Phi3,
    Phi4,
    Falcon3,
    Zephyr,
    Monarch,
    Gemma,
    Orion,
    Openchat,
    Vicuna,
    VicunaOrca,
    Deepseek,
    Deepseek2,
    Deepseek3,
    DeepseekOcr,
    CommandR,
    Llama3,
    Chatglm3,
    Chatglm4,
    Glmedge,
    Minicpm,
    Exaone3,
    Exaone4,
    ExaoneMoe,
    RwkvWorld,
    Granite3x,
    Granite40,
    Granite41,
    Gigachat,
    Megrez,
    Yandex,
    Bailing,
    BailingThink,
    Bailing2,
    Llama4,
    Smolvlm,
    Dots1,
    HunyuanMoe,
    OpenaiMoe,
    HunyuanDense,
    HunyuanVl,
    KimiK2,
    SeedOss,
    Grok2,
    PanguEmbed,
    SolarOpen,
}

/// The names llama.cpp accepts in place of a template (`llama_chat_builtin_templates`).
pub const BUILTIN_NAMES: &[(&str, ChatFormat)] = {
    use ChatFormat::*;
    &[
        ("chatml", Chatml),
        ("llama2", Llama2),
        ("llama2-sys", Llama2Sys),
        ("llama2-sys-bos", Llama2SysBos),
        ("llama2-sys-strip", Llama2SysStrip),
        ("mistral-v1", MistralV1),
        ("mistral-v3", MistralV3),
        ("mistral-v3-tekken", MistralV3Tekken),
        ("mistral-v7", MistralV7),
        ("mistral-v7-tekken", MistralV7Tekken),
        ("phi3", Phi3),
        ("phi4", Phi4),
        ("falcon3", Falcon3),
        ("zephyr", Zephyr),
        ("monarch", Monarch),
        ("gemma", Gemma),
        ("orion", Orion),
        ("openchat", Openchat),
        ("vicuna", Vicuna),
        ("vicuna-orca", VicunaOrca),
        ("deepseek", Deepseek),
        ("deepseek2", Deepseek2),
        ("deepseek3", Deepseek3),
        ("deepseek-ocr", DeepseekOcr),
        ("command-r", CommandR),
        ("llama3", Llama3),
        ("chatglm3", Chatglm3),
        ("chatglm4", Chatglm4),
        ("glmedge", Glmedge),
        ("minicpm", Minicpm),
        ("exaone3", Exaone3),
        ("exaone4", Exaone4),
        ("exaone-moe", ExaoneMoe),
        ("rwkv-world", RwkvWorld),
        ("granite", Granite3x),
        ("granite-4.0", Granite40),
        ("granite-4.1", Granite41),
        ("gigachat", Gigachat),
        ("megrez", Megrez),
        ("yandex", Yandex),
        ("bailing", Bailing),
        ("bailing-think", BailingThink),
        ("bailing2", Bailing2),
        ("llama4", Llama4),
        ("smolvlm", Smolvlm),
        ("hunyuan-moe", HunyuanMoe),
        ("gpt-oss", OpenaiMoe),
        ("hunyuan-dense", HunyuanDense),
        ("hunyuan-vl", HunyuanVl),
        ("kimi-k2", KimiK2),
        ("seed_oss", SeedOss),
        ("grok-2", Grok2),
        ("pangu-embedded", PanguEmbed),
        ("solar-open", SolarOpen),
    ]
};

/// The format llama.cpp picks for `template` (a format's name or a Jinja template's
/// text), or `None` where it knows none (`llm_chat_detect_template`).
pub fn detect(template: &str) -> Option<ChatFormat> {
    use ChatFormat::*;
    if let Some(&(_, f)) = BUILTIN_NAMES.iter().find(|(n, _)| *n == template) {
        return Some(f);
    }
    let has = |s: &str| template.contains(s);
    let f = if has("<|im_start|>") {
        if has("<|im_sep|>") {
            Phi4
        } else if has("<end_of_utterance>") {
            Smolvlm
        } else {
            Chatml
        }
    } else if template.starts_with("mistral") || has("[INST]") {
        if has("[SYSTEM_PROMPT]") {
            MistralV7
        } else if has("' [INST] ' + system_message") || has("[AVAILABLE_TOOLS]") {
            if has(" [INST]") {
                MistralV1
            } else if has("\"[INST]\"") {
                MistralV3Tekken
            } else {
                MistralV3
            }
        } else if has("content.strip()") {
            Llama2SysStrip
        } else if has("bos_token + '[INST]") {
            Llama2SysBos
        } else if has("<<SYS>>") {
            Llama2Sys
        } else {
            Llama2
        }
    } else if has("<|assistant|>") && has("<|end|>") {
        Phi3
    } else if has("[gMASK]<sop>") {
        Chatglm4
    } else if has("<|assistant|>") && has("<|user|>") {
        if has("<|tool_declare|>") {
            ExaoneMoe
        } else if has("</s>") {
            Falcon3
        } else {
            Glmedge
        }
    } else if has("<|{{ item['role'] }}|>") && has("<|begin_of_image|>") {
        Glmedge
    } else if has("<|user|>") && has("<|endoftext|>") {
        Zephyr
    } else if has("bos_token + message['role']") {
        Monarch
    } else if has("<start_of_turn>") {
        Gemma
    } else if has("'\\n\\nAssistant: ' + eos_token") {
        Orion
    } else if has("GPT4 Correct ") {
        Openchat
    } else if has("USER: ") && has("ASSISTANT: ") {
        if has("SYSTEM: ") {
            VicunaOrca
        } else {
            Vicuna
        }
    } else if has("### Instruction:") && has("<|EOT|>") {
        Deepseek
    } else if has("<|START_OF_TURN_TOKEN|>") && has("<|USER_TOKEN|>") {
        CommandR
    } else if has("<|start_header_id|>") && has("<|end_header_id|>") {
        Llama3
    } else if has("[gMASK]sop") {
        Chatglm3
    } else if has("<用户>") {
        Minicpm
    } else if has("'Assistant: ' + message['content'] + eos_token") {
        Deepseek2
    } else if has("<｜Assistant｜>") && has("<｜User｜>") && has("<｜end▁of▁sentence｜>") {
        Deepseek3
    } else if has("[|system|]") && has("[|assistant|]") && has("[|endofturn|]") {
        if has("[|tool|]") {
            Exaone4
        } else {
            Exaone3
        }
    } else if has("rwkv-world") || has("{{- 'User: ' + message['content']|trim + '\\n\\n' -}}") {
        RwkvWorld
    } else if has("<|start_of_role|>") {
        if has("<tool_call>") || has("<tools>") {
            if has("g4_default_system_message") {
                Granite40
            } else {
                Granite41
            }
        } else {
            Granite3x
        }
    } else if has("message['role'] + additional_special_tokens[0] + message['content'] + additional_special_tokens[1]") {
        Gigachat
    } else if has("<|role_start|>") {
        Megrez
    } else if has(" Ассистент:") {
        Yandex
    } else if has("<role>ASSISTANT</role>") && has("'HUMAN'") {
        Bailing
    } else if has("<role>ASSISTANT</role>") && has("\"HUMAN\"") && has("<think>") {
        BailingThink
    } else if has("<role>ASSISTANT</role>") && has("<role>HUMAN</role>") && has("<|role_end|>") {
        Bailing2
    } else if has("<|header_start|>") && has("<|header_end|>") {
        Llama4
    } else if has("<|endofuserprompt|>") {
        Dots1
    } else if has("<|extra_0|>") && has("<|extra_4|>") {
        HunyuanMoe
    } else if has("<|start|>") && has("<|channel|>") {
        OpenaiMoe
    } else if has("<｜hy_Assistant｜>") && has("<｜hy_begin▁of▁sentence｜>") {
        HunyuanVl
    } else if has("<｜hy_Assistant｜>") && has("<｜hy_place▁holder▁no▁3｜>") {
        HunyuanDense
    } else if has("<|im_assistant|>assistant<|im_middle|>") {
        KimiK2
    } else if has("<seed:bos>") {
        SeedOss
    } else if has("'Assistant: '  + message['content'] + '<|separator|>") {
        Grok2
    } else if has("[unused9]系统：[unused10]") {
        PanguEmbed
    } else if has("<|begin|>") && has("<|end|>") && has("<|content|>") {
        SolarOpen
    } else {
        return None;
    };
    Some(f)
}

/// Renders `messages` as llama.cpp's `llama_chat_apply_template(template, …)` does (the
/// llama.cpp backend's `Runtime::render_chat_with`): a typed error where llama.cpp
/// knows no format for `template`, and for a message holding a NUL byte (which cannot
/// cross llama.cpp's C interface). `template` is read up to its first NUL, as llama.cpp
/// reads it.
pub fn apply_template(template: &str, messages: &[ChatMessage], add_assistant: bool) -> Result<String, EngineError> {
    if messages.iter().any(|m| m.role.contains('\0') || m.content.contains('\0')) {
        return Err(EngineError::ChatTemplate("a message contains a NUL byte".into()));
    }
    let template = template.split('\0').next().unwrap_or("");
    let format = detect(template)
        .ok_or_else(|| EngineError::ChatTemplate("the model's chat template is none of llama.cpp's built-in chat formats (the native engine renders those as llama.cpp does)".into()))?;
    Ok(render(format, messages, add_assistant))
}

/// C's `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// llama.cpp's `trim`: C whitespace off both ends (ASCII only, so the cut stays UTF-8).
fn trim(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii() && is_c_space(c as u8))
}

/// `llm_chat_apply_template` for a detected format.
pub fn render(format: ChatFormat, chat: &[ChatMessage], add_ass: bool) -> String {
    use ChatFormat::*;
    let mut ss = String::new();
    let n = chat.len();
    match format {
        Chatml => {
            for m in chat {
                ss += &format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content);
            }
            if add_ass {
                ss += "<|im_start|>assistant\n";
            }
        }
        MistralV7 | MistralV7Tekken => {
            let sp = if format == MistralV7 { " " } else { "" };
            for m in chat {
                match m.role.as_str() {
                    "system" => ss += &format!("[SYSTEM_PROMPT]{sp}{}[/SYSTEM_PROMPT]", m.content),
                    "user" => ss += &format!("[INST]{sp}{}[/INST]", m.content),
                    _ => ss += &format!("{sp}{}</s>", m.content),
                }
            }
        }
        MistralV1 | MistralV3 | MistralV3Tekken => {
            let leading = if format == MistralV1 { " " } else { "" };
            let trailing = if format == MistralV3Tekken { "" } else { " " };
            let trim_assistant = format == MistralV3;
            let mut inside = false;
            for m in chat {
                if !inside {
                    ss += &format!("{leading}[INST]{trailing}");
                    inside = true;
                }
                match m.role.as_str() {
                    "system" => ss += &format!("{}\n\n", m.content),
                    "user" => ss += &format!("{}{leading}[/INST]", m.content),
                    _ => {
                        let c = if trim_assistant { trim(&m.content) } else { &m.content };
                        ss += &format!("{trailing}{c}</s>");
                        inside = false;
                    }
                }
            }
        }
        Llama2 | Llama2Sys | Llama2SysBos | Llama2SysStrip => {
            let system = format != Llama2;
            let bos_inside = format == Llama2SysBos;
            let strip = format == Llama2SysStrip;
            let mut inside = true;
            ss += "[INST] ";
            for m in chat {
                let content = if strip { trim(&m.content) } else { &m.content };
                if !inside {
                    inside = true;
                    ss += if bos_inside { "<s>[INST] " } else { "[INST] " };
                }
                match m.role.as_str() {
                    "system" if system => ss += &format!("<<SYS>>\n{content}\n<</SYS>>\n\n"),
                    "system" => ss += &format!("{content}\n"),
                    "user" => ss += &format!("{content} [/INST]"),
                    _ => {
                        ss += &format!("{content}</s>");
                        inside = false;
                    }
                }
            }
        }
        Phi3 => {
            for m in chat {
                ss += &format!("<|{}|>\n{}<|end|>\n", m.role, m.content);
            }
            if add_ass {
                ss += "<|assistant|>\n";
            }
        }
        Phi4 => {
            for m in chat {
                ss += &format!("<|im_start|>{}<|im_sep|>{}<|im_end|>", m.role, m.content);
            }
            if add_ass {
                ss += "<|im_start|>assistant<|im_sep|>";
            }
        }
        Falcon3 => {
            for m in chat {
                ss += &format!("<|{}|>\n{}\n", m.role, m.content);
            }
            if add_ass {
                ss += "<|assistant|>\n";
            }
        }
        Zephyr => {
            for m in chat {
                ss += &format!("<|{}|>\n{}<|endoftext|>\n", m.role, m.content);
            }
            if add_ass {
                ss += "<|assistant|>\n";
            }
        }
        Monarch => {
            for (i, m) in chat.iter().enumerate() {
                let bos = if i == 0 { "" } else { "<s>" };
                ss += &format!("{bos}{}\n{}</s>\n", m.role, m.content);
            }
            if add_ass {
                ss += "<s>assistant\n";
            }
        }
        Gemma => {
            let mut system = String::new();
            for m in chat {
                if m.role == "system" {
                    system += trim(&m.content);
                    continue;
                }
                let role = if m.role == "assistant" { "model" } else { m.role.as_str() };
                ss += &format!("<start_of_turn>{role}\n");
                if !system.is_empty() && role != "model" {
                    ss += &format!("{system}\n\n");
                    system.clear();
                }
                ss += &format!("{}<end_of_turn>\n", trim(&m.content));
            }
            if add_ass {
                ss += "<start_of_turn>model\n";
            }
        }
        Orion => {
            let mut system = String::new();
            for m in chat {
                match m.role.as_str() {
                    "system" => system += &m.content,
                    "user" => {
                        ss += "Human: ";
                        if !system.is_empty() {
                            ss += &format!("{system}\n\n");
                            system.clear();
                        }
                        ss += &format!("{}\n\nAssistant: </s>", m.content);
                    }
                    _ => ss += &format!("{}</s>", m.content),
                }
            }
        }
        Openchat => {
            for m in chat {
                if m.role == "system" {
                    ss += &format!("{}<|end_of_turn|>", m.content);
                } else {
                    // C's toupper on the first byte: ASCII letters only.
                    let mut role = m.role.clone().into_bytes();
                    if let Some(b) = role.first_mut() {
                        *b = b.to_ascii_uppercase();
                    }
                    let role = String::from_utf8(role).expect("an ASCII change keeps UTF-8");
                    ss += &format!("GPT4 Correct {role}: {}<|end_of_turn|>", m.content);
                }
            }
            if add_ass {
                ss += "GPT4 Correct Assistant:";
            }
        }
        Vicuna | VicunaOrca => {
            for m in chat {
                match m.role.as_str() {
                    "system" if format == VicunaOrca => ss += &format!("SYSTEM: {}\n", m.content),
                    "system" => ss += &format!("{}\n\n", m.content),
                    "user" => ss += &format!("USER: {}\n", m.content),
                    "assistant" => ss += &format!("ASSISTANT: {}</s>\n", m.content),
                    _ => {}
                }
            }
            if add_ass {
                ss += "ASSISTANT:";
            }
        }
        Deepseek => {
            for m in chat {
                match m.role.as_str() {
                    "system" => ss += &m.content,
                    "user" => ss += &format!("### Instruction:\n{}\n", m.content),
                    "assistant" => ss += &format!("### Response:\n{}\n<|EOT|>\n", m.content),
                    _ => {}
                }
            }
            if add_ass {
                ss += "### Response:\n";
            }
        }
        CommandR => {
            for m in chat {
                let tag = match m.role.as_str() {
                    "system" => "<|SYSTEM_TOKEN|>",
                    "user" => "<|USER_TOKEN|>",
                    "assistant" => "<|CHATBOT_TOKEN|>",
                    _ => continue,
                };
                ss += &format!("<|START_OF_TURN_TOKEN|>{tag}{}<|END_OF_TURN_TOKEN|>", trim(&m.content));
            }
            if add_ass {
                ss += "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>";
            }
        }
        Llama3 => {
            for m in chat {
                ss += &format!("<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>", m.role, trim(&m.content));
            }
            if add_ass {
                ss += "<|start_header_id|>assistant<|end_header_id|>\n\n";
            }
        }
        Chatglm3 => {
            ss += "[gMASK]sop";
            for m in chat {
                ss += &format!("<|{}|>\n {}", m.role, m.content);
            }
            if add_ass {
                ss += "<|assistant|>";
            }
        }
        Chatglm4 => {
            ss += "[gMASK]<sop>";
            for m in chat {
                ss += &format!("<|{}|>\n{}", m.role, m.content);
            }
            if add_ass {
                ss += "<|assistant|>\n";
            }
        }
        Glmedge => {
            for m in chat {
                ss += &format!("<|{}|>\n{}", m.role, m.content);
            }
            if add_ass {
                ss += "<|assistant|>";
            }
        }
        Minicpm => {
            for m in chat {
                if m.role == "user" {
                    ss += &format!("<用户>{}<AI>", trim(&m.content));
                } else {
                    ss += trim(&m.content);
                }
            }
        }
        Deepseek2 => {
            for m in chat {
                match m.role.as_str() {
                    "system" => ss += &format!("{}\n\n", m.content),
                    "user" => ss += &format!("User: {}\n\n", m.content),
                    "assistant" => ss += &format!("Assistant: {}<｜end▁of▁sentence｜>", m.content),
                    _ => {}
                }
            }
            if add_ass {
                ss += "Assistant:";
            }
        }
        Deepseek3 => {
            for m in chat {
                match m.role.as_str() {
                    "system" => ss += &format!("{}\n\n", m.content),
                    "user" => ss += &format!("<｜User｜>{}", m.content),
                    "assistant" => ss += &format!("<｜Assistant｜>{}<｜end▁of▁sentence｜>", m.content),
                    _ => {}
                }
            }
            if add_ass {
                ss += "<｜Assistant｜>";
            }
        }
        DeepseekOcr => {
            for m in chat {
                ss += &m.content;
            }
        }
        Exaone3 | Exaone4 => {
            for m in chat {
                let c = trim(&m.content);
                match m.role.as_str() {
                    "system" => ss += &format!("[|system|]{c}[|endofturn|]\n"),
                    "user" => ss += &format!("[|user|]{c}\n"),
                    "assistant" => ss += &format!("[|assistant|]{c}[|endofturn|]\n"),
                    "tool" if format == Exaone4 => ss += &format!("[|tool|]{c}[|endofturn|]\n"),
                    _ => {}
                }
            }
            if add_ass {
                ss += "[|assistant|]";
            }
        }
        ExaoneMoe => {
            for m in chat {
                if matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
                    ss += &format!("<|{}|>\n{}<|endofturn|>\n", m.role, trim(&m.content));
                }
            }
            if add_ass {
                ss += "<|assistant|>\n";
            }
        }
        RwkvWorld => {
            for (i, m) in chat.iter().enumerate() {
                match m.role.as_str() {
                    "system" => ss += &format!("System: {}\n\n", trim(&m.content)),
                    "user" => {
                        ss += &format!("User: {}\n\n", trim(&m.content));
                        if i == n - 1 {
                            ss += "Assistant:";
                        }
                    }
                    "assistant" => ss += &format!("Assistant: {}\n\n", trim(&m.content)),
                    _ => {}
                }
            }
        }
        Granite3x => {
            for m in chat {
                ss += &format!("<|start_of_role|>{}<|end_of_role|>", m.role);
                if m.role == "assistant_tool_call" {
                    ss += "<|tool_call|>";
                }
                ss += &format!("{}<|end_of_text|>\n", m.content);
            }
            if add_ass {
                ss += "<|start_of_role|>assistant<|end_of_role|>";
            }
        }
        Granite40 | Granite41 => {
            for m in chat {
                if m.role == "assistant_tool_call" {
                    ss += "<|start_of_role|>assistant<|end_of_role|><|tool_call|>";
                } else {
                    ss += &format!("<|start_of_role|>{}<|end_of_role|>", m.role);
                }
                ss += &format!("{}<|end_of_text|>\n", m.content);
            }
            if add_ass {
                ss += "<|start_of_role|>assistant<|end_of_role|>";
            }
        }
        Gigachat => {
            let has_system = chat.first().is_some_and(|m| m.role == "system");
            if has_system {
                ss += &format!("<s>{}<|message_sep|>", chat[0].content);
            } else {
                ss += "<s>";
            }
            for m in &chat[usize::from(has_system)..] {
                match m.role.as_str() {
                    "user" => ss += &format!("user<|role_sep|>{}<|message_sep|>available functions<|role_sep|>[]<|message_sep|>", m.content),
                    "assistant" => ss += &format!("assistant<|role_sep|>{}<|message_sep|>", m.content),
                    _ => {}
                }
            }
            if add_ass {
                ss += "assistant<|role_sep|>";
            }
        }
        Megrez => {
            for m in chat {
                ss += &format!("<|role_start|>{}<|role_end|>{}<|turn_end|>", m.role, m.content);
            }
            if add_ass {
                ss += "<|role_start|>assistant<|role_end|>";
            }
        }
        Yandex => {
            for m in chat {
                match m.role.as_str() {
                    "user" => ss += &format!(" Пользователь: {}\n\n", m.content),
                    "assistant" => ss += &format!(" Ассистент: {}\n\n", m.content),
                    _ => {}
                }
            }
            if add_ass {
                ss += " Ассистент:[SEP]";
            }
        }
        Bailing | BailingThink => {
            for m in chat {
                let role = if m.role == "user" { "HUMAN".to_string() } else { m.role.to_ascii_uppercase() };
                ss += &format!("<role>{role}</role>{}", m.content);
            }
            if add_ass {
                ss += "<role>ASSISTANT</role>";
                if format == BailingThink {
                    ss += "<think>";
                }
            }
        }
        Bailing2 => {
            if !chat.first().is_some_and(|m| m.role == "system") {
                ss += "<role>SYSTEM</role>detailed thinking off<|role_end|>";
            }
            for m in chat {
                let role = if m.role == "user" { "HUMAN".to_string() } else { m.role.to_ascii_uppercase() };
                ss += &format!("<role>{role}</role>{}<|role_end|>", m.content);
            }
            if add_ass {
                ss += "<role>ASSISTANT</role>";
            }
        }
        Llama4 => {
            for m in chat {
                ss += &format!("<|header_start|>{}<|header_end|>\n\n{}<|eot|>", m.role, trim(&m.content));
            }
            if add_ass {
                ss += "<|header_start|>assistant<|header_end|>\n\n";
            }
        }
        Smolvlm => {
            ss += "<|im_start|>";
            for m in chat {
                match m.role.as_str() {
                    "system" => ss += &format!("{}\n\n", m.content),
                    "user" => ss += &format!("User: {}<end_of_utterance>\n", m.content),
                    _ => ss += &format!("Assistant: {}<end_of_utterance>\n", m.content),
                }
            }
            if add_ass {
                ss += "Assistant:";
            }
        }
        Dots1 => {
            for m in chat {
                match m.role.as_str() {
                    "system" => ss += &format!("<|system|>{}<|endofsystem|>", m.content),
                    "user" => ss += &format!("<|userprompt|>{}<|endofuserprompt|>", m.content),
                    _ => ss += &format!("<|response|>{}<|endofresponse|>", m.content),
                }
            }
            if add_ass {
                ss += "<|response|>";
            }
        }
        HunyuanMoe => {
            for m in chat {
                match m.role.as_str() {
                    "system" => ss += &format!("<|startoftext|>{}<|extra_4|>", m.content),
                    "assistant" => ss += &format!("{}<|eos|>", m.content),
                    _ => ss += &format!("<|startoftext|>{}<|extra_0|>", m.content),
                }
            }
        }
        OpenaiMoe => {
            for m in chat {
                let end = if m.role == "assistant" { "<|return|>" } else { "<|end|>" };
                ss += &format!("<|start|>{}<|message|>{}{end}", m.role, m.content);
            }
            if add_ass {
                ss += "<|start|>assistant";
            }
        }
        HunyuanDense => {
            for (i, m) in chat.iter().enumerate() {
                if i == 0 && m.role == "system" {
                    ss += &format!("{}<｜hy_place▁holder▁no▁3｜>", m.content);
                }
                match m.role.as_str() {
                    "assistant" => ss += &format!("<｜hy_Assistant｜>{}<｜hy_place▁holder▁no▁2｜>", m.content),
                    "user" => ss += &format!("<｜hy_User｜>{}<｜hy_Assistant｜>", m.content),
                    _ => {}
                }
            }
        }
        HunyuanVl => {
            ss += "<｜hy_begin▁of▁sentence｜>";
            for (i, m) in chat.iter().enumerate() {
                if i == 0 && m.role == "system" {
                    ss += &format!("{}<｜hy_place▁holder▁no▁3｜>", m.content);
                    continue;
                }
                match m.role.as_str() {
                    "user" => ss += &format!("{}<｜hy_User｜>", m.content),
                    "assistant" => ss += &format!("{}<｜hy_Assistant｜>", m.content),
                    _ => {}
                }
            }
        }
        KimiK2 => {
            for m in chat {
                match m.role.as_str() {
                    "system" => ss += "<|im_system|>system<|im_middle|>",
                    "user" => ss += "<|im_user|>user<|im_middle|>",
                    "assistant" => ss += "<|im_assistant|>assistant<|im_middle|>",
                    "tool" => ss += "<|im_system|>tool<|im_middle|>",
                    _ => {}
                }
                ss += &format!("{}<|im_end|>", m.content);
            }
            if add_ass {
                ss += "<|im_assistant|>assistant<|im_middle|>";
            }
        }
        SeedOss => {
            for m in chat {
                let c = if m.role == "assistant" { trim(&m.content) } else { &m.content };
                ss += &format!("<seed:bos>{}\n{c}<seed:eos>", m.role);
            }
            if add_ass {
                ss += "<seed:bos>assistant\n";
            }
        }
        Grok2 => {
            for m in chat {
                match m.role.as_str() {
                    "system" => ss += &format!("System: {}<|separator|>\n\n", trim(&m.content)),
                    "user" => ss += &format!("Human: {}<|separator|>\n\n", trim(&m.content)),
                    "assistant" => ss += &format!("Assistant: {}<|separator|>\n\n", m.content),
                    _ => {}
                }
            }
            if add_ass {
                ss += "Assistant:";
            }
        }
        PanguEmbed => {
            for (i, m) in chat.iter().enumerate() {
                if i == 0 && m.role != "system" {
                    ss += "[unused9]系统：[unused10]";
                }
                let tag = match m.role.as_str() {
                    "system" => "系统",
                    "user" => "用户",
                    "assistant" => "助手",
                    "tool" => "工具",
                    "function" => "方法",
                    _ => continue,
                };
                ss += &format!("[unused9]{tag}：{}[unused10]", m.content);
            }
            if add_ass {
                ss += "[unused9]助手：";
            }
        }
        SolarOpen => {
            for m in chat {
                ss += &format!("<|begin|>{}<|content|>{}<|end|>", m.role, m.content);
            }
            if add_ass {
                ss += "<|begin|>assistant";
            }
        }
    }
    ss
}

//! The router (`--router router.toml`): business scenarios (name → weighted adapter set,
//! optional system prompt and sampling defaults), A/B experiments as arms of a scenario
//! (each an adapter set with a traffic share, sticky per `user`), and rules that pick a
//! scenario from a request header.
//!
//! ```toml
//! [[scenario]]
//! name = "credit"                       # selected by "model": "credit" or X-Scenario: credit
//! system = "You are a loan officer. Answer approve or reject."
//! temperature = 0.0                     # defaults when the request does not say
//! max_tokens = 16
//! adapters = [{ name = "credit", scale = 1.0 }]
//!
//! [[scenario]]
//! name = "support"
//! [[scenario.arm]]                      # an A/B test: arms replace `adapters`
//! name = "v1"
//! share = 0.5
//! adapters = [{ name = "support-v1" }]  # scale defaults to 1
//! [[scenario.arm]]
//! name = "v2"
//! share = 0.5
//! adapters = [{ name = "support-v2" }]
//!
//! [[rule]]                              # requests with this header value go to the scenario
//! header = "x-department"
//! equals = "loans"
//! scenario = "credit"
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, ServeError};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterRef {
    pub name: String,
    #[serde(default = "one")]
    pub scale: f32,
}

fn one() -> f32 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    pub name: String,
    pub share: f64,
    #[serde(default)]
    pub adapters: Vec<AdapterRef>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub adapters: Vec<AdapterRef>,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(default, rename = "arm")]
    pub arms: Vec<Arm>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub header: String,
    pub equals: String,
    pub scenario: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    #[serde(default, rename = "scenario")]
    pub scenarios: Vec<Scenario>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
}

/// What the router picked for a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub scenario: String,
    pub arm: Option<String>,
    pub adapters: Vec<(String, f32)>,
}

impl RouterConfig {
    /// Parses and checks a router file: unique scenario and arm names, arms with positive
    /// shares, finite scales, rules naming scenarios, every adapter in `loaded`.
    pub fn parse(text: &str, path: &Path, loaded: &[String]) -> Result<RouterConfig, Error> {
        let bad = |reason: String| -> Error { ServeError::Router { path: path.to_path_buf(), reason }.into() };
        let cfg: RouterConfig = toml::from_str(text).map_err(|e| bad(format!("not a router file: {e}")))?;
        let mut seen = std::collections::BTreeSet::new();
        for s in &cfg.scenarios {
            if s.name.is_empty() || !seen.insert(s.name.as_str()) {
                return Err(bad(format!("scenario name {:?} is empty or repeated", s.name)));
            }
            if !s.arms.is_empty() && !s.adapters.is_empty() {
                return Err(bad(format!("scenario {:?}: give either `adapters` or arms, not both", s.name)));
            }
            let mut arm_names = std::collections::BTreeSet::new();
            for a in &s.arms {
                if !(a.share.is_finite() && a.share > 0.0) {
                    return Err(bad(format!("scenario {:?} arm {:?}: share {} must be > 0", s.name, a.name, a.share)));
                }
                if a.name.is_empty() || !arm_names.insert(a.name.as_str()) {
                    return Err(bad(format!("scenario {:?}: arm name {:?} is empty or repeated", s.name, a.name)));
                }
            }
            for r in s.adapters.iter().chain(s.arms.iter().flat_map(|a| &a.adapters)) {
                if !r.scale.is_finite() {
                    return Err(bad(format!("scenario {:?}: adapter {:?} has scale {}", s.name, r.name, r.scale)));
                }
                if !loaded.contains(&r.name) {
                    return Err(bad(format!("scenario {:?}: adapter {:?} is not loaded (loaded: {loaded:?})", s.name, r.name)));
                }
            }
            if let Some(t) = s.temperature.filter(|t| !(t.is_finite() && *t >= 0.0)) {
                return Err(bad(format!("scenario {:?}: temperature {t}", s.name)));
            }
        }
        for r in &cfg.rules {
            if !seen.contains(r.scenario.as_str()) {
                return Err(bad(format!("rule on header {:?}: no scenario {:?}", r.header, r.scenario)));
            }
        }
        Ok(cfg)
    }

    pub fn read(path: &Path, loaded: &[String]) -> Result<RouterConfig, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| ServeError::Router { path: path.to_path_buf(), reason: format!("cannot read: {e}") })?;
        RouterConfig::parse(&text, path, loaded)
    }

    pub fn scenario(&self, name: &str) -> Option<&Scenario> {
        self.scenarios.iter().find(|s| s.name == name)
    }

    /// The scenario a rule picks from the request's headers (lower-case names).
    pub fn by_rule(&self, headers: &BTreeMap<String, String>) -> Option<&Scenario> {
        self.rules.iter().find(|r| headers.get(&r.header.to_ascii_lowercase()).is_some_and(|v| *v == r.equals)).and_then(|r| self.scenario(&r.scenario))
    }
}

/// A stable number in [0, 1) for (scenario, user): the same user always lands in the same arm.
pub fn sticky_unit(scenario: &str, user: &str) -> f64 {
    let h = Sha256::digest(format!("{scenario}\u{1}{user}").as_bytes());
    let x = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
    (x >> 11) as f64 / (1u64 << 53) as f64
}

impl Scenario {
    /// The route for a request of `user` (an arm by share when the scenario has arms;
    /// without a user, `fallback` in [0, 1) decides).
    pub fn route(&self, user: Option<&str>, fallback: f64) -> Route {
        let pick = |refs: &[AdapterRef]| refs.iter().map(|r| (r.name.clone(), r.scale)).collect::<Vec<_>>();
        if self.arms.is_empty() {
            return Route { scenario: self.name.clone(), arm: None, adapters: pick(&self.adapters) };
        }
        let u = user.map_or(fallback, |u| sticky_unit(&self.name, u));
        let total: f64 = self.arms.iter().map(|a| a.share).sum();
        let mut acc = 0.0;
        let arm = self
            .arms
            .iter()
            .find(|a| {
                acc += a.share / total;
                u < acc
            })
            .unwrap_or_else(|| self.arms.last().expect("arms is not empty"));
        Route { scenario: self.name.clone(), arm: Some(arm.name.clone()), adapters: pick(&arm.adapters) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
[[scenario]]
name = "credit"
adapters = [{ name = "a", scale = 0.5 }]
[[scenario]]
name = "ab"
[[scenario.arm]]
name = "x"
share = 0.3
adapters = [{ name = "a" }]
[[scenario.arm]]
name = "y"
share = 0.7
adapters = [{ name = "b" }]
[[rule]]
header = "X-Dept"
equals = "loans"
scenario = "credit"
"#;

    fn loaded() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn arms_split_users_by_share_and_stick() {
        let cfg = RouterConfig::parse(TEXT, Path::new("r.toml"), &loaded()).unwrap();
        let ab = cfg.scenario("ab").unwrap();
        let n = 1000;
        let x = (0..n).filter(|i| ab.route(Some(&format!("user-{i}")), 0.0).arm.as_deref() == Some("x")).count();
        assert!((x as f64 / n as f64 - 0.3).abs() < 0.05, "{x} of {n} in arm x (share 0.3)");
        for i in 0..50 {
            let u = format!("user-{i}");
            assert_eq!(ab.route(Some(&u), 0.0), ab.route(Some(&u), 0.99));
        }
        let h = BTreeMap::from([("x-dept".to_string(), "loans".to_string())]);
        assert_eq!(cfg.by_rule(&h).unwrap().name, "credit");
        assert_eq!(cfg.scenario("credit").unwrap().route(None, 0.5).adapters, vec![("a".to_string(), 0.5)]);
    }

    #[test]
    fn bad_router_files_name_the_problem() {
        for (text, want) in [
            ("[[scenario]]\nname = \"s\"\nadapters = [{ name = \"zzz\" }]", "not loaded"),
            ("[[scenario]]\nname = \"s\"\n[[scenario]]\nname = \"s\"", "repeated"),
            ("[[scenario]]\nname = \"s\"\n[[scenario.arm]]\nname = \"x\"\nshare = 0", "share"),
            ("[[rule]]\nheader = \"h\"\nequals = \"v\"\nscenario = \"nope\"", "no scenario"),
            ("[[scenario]]\nnam = \"s\"", "not a router file"),
        ] {
            let e = RouterConfig::parse(text, Path::new("r.toml"), &loaded()).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("r.toml"), "{text:?}: {e}");
        }
    }
}

//! Interactive chat. Lines starting with `/` are commands:
//!   /adapter NAME[:SCALE] …   use these loaded adapters from the next turn (none = base)
//!   /load PATH [NAME]         load another adapter (named by file stem by default)
//!   /adapters                 list loaded adapters and the active set
//!   /reset                    forget the conversation
//!   /quit                     leave

use std::io::{BufRead, Write};

use anyhow::{bail, Result};
use clap::Args;

use edgelora::engine::{ChatMessage, Engine, GenerateRequest, Prompt};

use super::{ModelArgs, SamplingArgs};

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// System prompt
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn run(a: ChatArgs) -> Result<()> {
    let loaded = a.model.load()?;
    let (rt, mut active) = (loaded.engine(), loaded.adapters.clone());
    let mut history: Vec<ChatMessage> = a.system.iter().map(|s| ChatMessage::new("system", s.clone())).collect();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    eprintln!("chat with {} — /adapter NAME[:SCALE]… to switch adapters, /adapters, /load PATH [NAME], /reset, /quit", a.model.model.display());
    describe(rt, &active);
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(cmd) = line.strip_prefix('/') {
            match command(rt, cmd, &mut active, &mut history, a.model.lenient) {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => eprintln!("error: {e:#}"),
            }
            continue;
        }
        history.push(ChatMessage::new("user", line));
        let mut req = GenerateRequest::new(Prompt::Chat(history.clone()));
        req.adapters = active.clone();
        req.sampling = a.sampling.params();
        req.max_tokens = a.sampling.max_tokens;
        req.stop = a.sampling.stop.clone();
        let gen = rt.generate(&req, &mut |piece| {
            let _ = write!(out, "{piece}");
            let _ = out.flush();
            true
        });
        writeln!(out)?;
        match gen {
            Ok(g) => history.push(ChatMessage::new("assistant", g.text)),
            Err(e) => {
                history.pop();
                eprintln!("error: {e}");
            }
        }
    }
    Ok(())
}

fn describe(rt: &dyn Engine, active: &[(String, f32)]) {
    eprintln!("  backend: {}", rt.backend_name());
    for name in rt.adapter_names() {
        let scale = active.iter().find(|(n, _)| *n == name).map(|(_, s)| format!("active at {s}")).unwrap_or_else(|| "inactive".into());
        eprintln!("  adapter {name:<12} {scale}");
    }
}

/// Runs one slash command; true means quit.
fn command(rt: &dyn Engine, cmd: &str, active: &mut Vec<(String, f32)>, history: &mut Vec<ChatMessage>, lenient: bool) -> Result<bool> {
    let mut words = cmd.split_whitespace();
    match words.next().unwrap_or("") {
        "quit" | "exit" => return Ok(true),
        "reset" => history.retain(|m| m.role == "system"),
        "adapters" => describe(rt, active),
        "adapter" => {
            let mut set = Vec::new();
            for w in words {
                if w == "none" {
                    continue;
                }
                let (name, scale) = match w.rsplit_once(':') {
                    Some((n, s)) => (n.to_string(), s.parse::<f32>().map_err(|_| anyhow::anyhow!("scale {s:?} is not a number"))?),
                    None => (w.to_string(), 1.0),
                };
                set.push((name, scale));
            }
            // Validate now rather than at the next turn.
            let known = rt.adapter_names();
            if let Some((bad, _)) = set.iter().find(|(n, _)| !known.contains(n)) {
                bail!("no adapter named {bad:?} (loaded: {})", known.join(", "));
            }
            if let Some((n, s)) = set.iter().find(|(_, s)| !s.is_finite()) {
                bail!("adapter {n:?}: scale {s} is not a finite number");
            }
            *active = set;
            describe(rt, active);
        }
        "load" => {
            let Some(path) = words.next() else { bail!("usage: /load PATH [NAME]") };
            let name = match words.next() {
                Some(n) => n.to_string(),
                None => std::path::Path::new(path).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| path.to_string()),
            };
            super::load_adapter(rt, &name, std::path::Path::new(path), lenient)?;
            eprintln!("loaded {path} as {name:?}; activate it with /adapter {name}");
        }
        other => bail!("unknown command /{other}"),
    }
    Ok(false)
}

use std::io::Write;

use anyhow::Result;
use clap::Args;

use edgelora::engine::{ChatMessage, GenerateRequest, Prompt};

use super::{ModelArgs, SamplingArgs};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt
    #[arg(long, short = 'p')]
    prompt: String,
    /// Render the prompt as a user message with the model's chat template
    #[arg(long)]
    chat: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let loaded = a.model.load()?;
    let (rt, adapters) = (loaded.engine(), loaded.adapters.clone());
    let prompt = if a.chat {
        Prompt::Chat(vec![ChatMessage::new("user", a.prompt.clone())])
    } else {
        Prompt::Text(a.prompt.clone())
    };
    let mut req = GenerateRequest::new(prompt);
    req.adapters = adapters;
    req.sampling = a.sampling.params();
    req.max_tokens = a.sampling.max_tokens;
    req.stop = a.sampling.stop.clone();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !a.chat {
        write!(out, "{}", a.prompt)?;
    }
    let gen = rt.generate(&req, &mut |piece| {
        let _ = write!(out, "{piece}");
        let _ = out.flush();
        true
    })?;
    writeln!(out)?;
    let tps = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    eprintln!(
        "[{} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s, stop: {:?}]",
        gen.n_prompt,
        tps(gen.n_prompt - gen.n_prompt_cached, gen.prompt_secs),
        gen.tokens.len(),
        tps(gen.tokens.len().saturating_sub(1), gen.gen_secs),
        gen.stop_reason
    );
    Ok(())
}

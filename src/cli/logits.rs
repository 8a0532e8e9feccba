use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use edgelora::engine::{top_k, ChatMessage, Prompt};
use edgelora::gguf::temp_path_for;

use super::ModelArgs;

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text (special tokens written in it are parsed)
    #[arg(long, short = 'p', conflicts_with = "tokens", required_unless_present = "tokens")]
    prompt: Option<String>,
    /// Render the prompt as a user message with the model's chat template
    #[arg(long, requires = "prompt")]
    chat: bool,
    /// Token ids, comma-separated, instead of a prompt
    #[arg(long, value_delimiter = ',')]
    tokens: Option<Vec<i32>>,
    /// How many of the highest logits to print
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Print JSON
    #[arg(long)]
    json: bool,
    /// Write every last-position logit as little-endian f32 to FILE
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(a: LogitsArgs) -> Result<()> {
    let loaded = a.model.load()?;
    let (rt, adapters) = (loaded.engine(), loaded.adapters.clone());
    let prompt = match (&a.prompt, &a.tokens) {
        (Some(p), _) if a.chat => Prompt::Chat(vec![ChatMessage::new("user", p.clone())]),
        (Some(p), _) => Prompt::Text(p.clone()),
        (None, Some(t)) => Prompt::Tokens(t.clone()),
        (None, None) => bail!("give --prompt or --tokens"),
    };
    let tokens = rt.tokenize(&prompt)?;
    let logits = rt.logits(&tokens, &adapters)?;
    let top = top_k(&logits, a.top);
    if let Some(path) = &a.out {
        let tmp = temp_path_for(path);
        let bytes: Vec<u8> = logits.iter().flat_map(|l| l.to_le_bytes()).collect();
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("writing logits to {}", path.display()));
        }
    }
    if a.json {
        let v = serde_json::json!({
            "model": a.model.model,
            "backend": rt.backend_name(),
            "adapters": a.model.adapters,
            "tokens": tokens,
            "n_vocab": logits.len(),
            "top": top.iter().map(|(id, l)| serde_json::json!({"id": id, "logit": l, "piece": rt.detokenize(&[*id])})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("tokens ({}): {:?}", tokens.len(), tokens);
        println!("{:>4}  {:>8}  {:>10}  piece", "rank", "id", "logit");
        for (i, (id, l)) in top.iter().enumerate() {
            println!("{:>4}  {:>8}  {:>10.4}  {:?}", i + 1, id, l, rt.detokenize(&[*id]));
        }
    }
    Ok(())
}

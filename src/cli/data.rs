//! `edgelora data stats`: the data report before training (formats, labels, scenarios,
//! token lengths, duplicates, contradictions, records over --max-len).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use edgelora::engine::Vocabulary;
use edgelora::train::data::read_jsonl;
use edgelora::train::report::{DataFile, DataReport};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Report on JSONL training data: records per format, label and scenario, token
    /// lengths, exact and near duplicates, contradicting answers, records over --max-len
    Stats(StatsArgs),
}

#[derive(Args)]
pub struct StatsArgs {
    /// JSONL files (the training formats)
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Model whose tokenizer and chat template measure the lengths (`none`: no token figures)
    #[arg(long, short = 'm', default_value = super::DEFAULT_MODEL)]
    model: PathBuf,
    /// Training's --max-len: records longer than this are listed (truncated or refused)
    #[arg(long, default_value_t = 512)]
    max_len: usize,
    /// Count prompt tokens as trained (training's --train-on-prompt)
    #[arg(long)]
    train_on_prompt: bool,
    /// Print JSON (the default prints the summary and then the JSON report)
    #[arg(long)]
    json: bool,
}

pub fn run(c: DataCommand) -> Result<()> {
    match c {
        DataCommand::Stats(a) => stats(a),
    }
}

fn stats(a: StatsArgs) -> Result<()> {
    let files = a.files.iter().map(|p| Ok(DataFile { path: p.clone(), records: read_jsonl(p)? })).collect::<Result<Vec<_>>>()?;
    let rt = if a.model.as_os_str() == "none" {
        None
    } else {
        if !a.model.exists() && a.model == std::path::Path::new(super::DEFAULT_MODEL) {
            anyhow::bail!("the default model {} is missing: run models/fetch first (or pass --model, or --model none for no token figures)", super::DEFAULT_MODEL);
        }
        Some(Vocabulary::open(&a.model).with_context(|| format!("loading the vocabulary of {}", a.model.display()))?)
    };
    let report = DataReport::build(&files, rt.as_ref(), a.max_len, a.train_on_prompt)?;
    if !a.json {
        eprintln!("{}", report.summary());
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

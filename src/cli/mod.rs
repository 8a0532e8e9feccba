//! clap definitions and dispatch; one file per command.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use edgelora::adapter::ReadOptions;
use edgelora::compute::Device;
use edgelora::engine::{parse_adapter_arg, Engine, NativeRuntime, RuntimeOptions, SamplingParams};
#[cfg(feature = "llama")]
use edgelora::engine::Runtime;

mod adapter;
mod bench;
mod chat;
mod data;
mod eval;
mod generate;
mod inspect;
mod logits;
mod merge;
mod plot;
#[cfg(feature = "serve")]
mod serve;
pub mod train;

pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Parser)]
#[command(name = "edgelora", version, about = "Run quantized LLMs with LoRA adapters on the edge")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming it to stdout
    Generate(generate::GenerateArgs),
    /// Interactive chat; /adapter switches adapters mid-conversation
    Chat(chat::ChatArgs),
    /// Print a prompt's token ids and the last position's top logits
    Logits(logits::LogitsArgs),
    /// Show a model's or an adapter's metadata and tensors
    Inspect(inspect::InspectArgs),
    /// Measure prompt/generation speed with and without adapters, switch latency, peak RSS
    Bench(bench::BenchArgs),
    /// Merge adapters into the model's quantized weights, writing a new GGUF
    Merge(merge::MergeArgs),
    /// Train a LoRA adapter on the frozen quantized model (CPU)
    Train(train::TrainArgs),
    /// Score a model (with adapters) on a JSONL test set: accuracy, classification metrics or loss; compare two adapters
    Eval(eval::EvalArgs),
    /// Training data tools
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Adapter tools
    #[command(subcommand)]
    Adapter(adapter::AdapterCommand),
    /// OpenAI-compatible HTTP server: adapters by name ([NAME=]PATH[:SCALE] with --adapter),
    /// scenarios and A/B arms, feedback capture; requests for different adapters decoded together
    #[cfg(feature = "serve")]
    #[command(mut_arg("adapters", |a| a.value_name("[NAME=]PATH[:SCALE]").help("Adapter to serve: GGUF-LoRA file or PEFT folder, named NAME (default: the file stem); SCALE is what a request naming it gets; repeat for several")))]
    #[command(mut_arg("backend", |a| a.default_value("native").help("Generation backend: native (edgelora's engine: continuous batching of mixed-adapter requests on the CPU) or llama (llama.cpp: one request at a time)")))]
    Serve(serve::ServeArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Logits(a) => logits::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Merge(a) => merge::run(a),
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Data(c) => data::run(c),
        Command::Adapter(c) => adapter::run(c),
        #[cfg(feature = "serve")]
        Command::Serve(a) => serve::run(a),
    }
}

/// Options shared by every command that loads a model.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// GGUF model file
    #[arg(long, short = 'm', default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// LoRA adapter (GGUF-LoRA) with an optional scale; repeat for several at once
    #[arg(long = "adapter", short = 'a', value_name = "PATH[:SCALE]")]
    pub adapters: Vec<String>,
    /// CPU threads (default: all cores)
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Context length in tokens
    #[arg(long = "ctx", default_value_t = 2048)]
    pub n_ctx: u32,
    /// Keep the KV cache in F32 (default F16)
    #[arg(long)]
    pub f32_kv_cache: bool,
    /// Flash attention: auto (llama.cpp decides), on, off. Its CPU kernel rounds Q to F16
    #[arg(long, value_name = "auto|on|off", default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub flash_attn: String,
    /// Merge the adapters into the weights at load (a temporary merged GGUF, requantized
    /// to the base's types) instead of applying them on the fly
    #[arg(long)]
    pub merge: bool,
    /// Quantizer of --merge: refit, ggml or gptq (as `merge --quantizer`; gptq takes about two minutes on the default model)
    #[arg(long, value_parser = merge::quantizer_names(), default_value = "refit", requires = "merge")]
    pub merge_quantizer: String,
    /// Generation backend: llama (llama.cpp) or native (edgelora's own engine)
    #[arg(long, value_parser = ["llama", "native"], default_value = DEFAULT_BACKEND)]
    pub backend: String,
    /// Compute device of the native backend: cpu, or gpu (wgpu; fails if no adapter)
    #[arg(long, value_parser = ["cpu", "gpu"], default_value = "cpu")]
    pub device: String,
    /// Decode with int8 copies of the adapters' factors (a scale per rank component): half
    /// the adapter bytes read per token, lossy (native backend on the CPU)
    #[arg(long)]
    pub lora_int8: bool,
    /// Load PEFT adapters whose target_modules name modules the model does not have
    /// (a warning on stderr instead of an error)
    #[arg(long)]
    pub lenient: bool,
}

/// Loads `path` under `name`, printing a lenient read's warnings on stderr.
pub fn load_adapter(rt: &dyn Engine, name: &str, path: &std::path::Path, lenient: bool) -> Result<()> {
    let warnings = rt.load_adapter(name, path, ReadOptions { lenient }).with_context(|| format!("loading adapter {}", path.display()))?;
    for w in warnings {
        eprintln!("{w}");
    }
    Ok(())
}

/// `--backend`'s default: llama.cpp where the build has it (feature `llama`).
pub const DEFAULT_BACKEND: &str = if cfg!(feature = "llama") { "llama" } else { "native" };

/// The loaded backend.
pub enum Loaded {
    #[cfg(feature = "llama")]
    Llama(Runtime),
    Native(NativeRuntime),
}

/// A loaded engine with the request's adapter set (empty when merged at load).
pub struct LoadedModel {
    pub loaded: Loaded,
    pub adapters: Vec<(String, f32)>,
    /// The merged model's temporary directory, removed on drop.
    _merged: Option<tempfile::TempDir>,
}

impl LoadedModel {
    pub fn engine(&self) -> &dyn Engine {
        self.loaded.engine()
    }

    /// The llama.cpp runtime, for what only that backend has.
    #[cfg(feature = "llama")]
    pub fn llama(&self) -> Option<&Runtime> {
        match &self.loaded {
            Loaded::Llama(r) => Some(r),
            Loaded::Native(_) => None,
        }
    }

    /// Whether the model runs on llama.cpp.
    pub fn is_llama(&self) -> bool {
        !matches!(self.loaded, Loaded::Native(_))
    }
}

impl Loaded {
    pub fn engine(&self) -> &dyn Engine {
        match self {
            #[cfg(feature = "llama")]
            Loaded::Llama(r) => r,
            Loaded::Native(n) => n,
        }
    }
}

impl ModelArgs {
    pub fn options(&self) -> RuntimeOptions {
        let flash_attention = match self.flash_attn.as_str() {
            "on" => Some(true),
            "off" => Some(false),
            _ => None,
        };
        let mut o = RuntimeOptions { n_ctx: self.n_ctx, f32_kv_cache: self.f32_kv_cache, flash_attention, ..RuntimeOptions::default() };
        if let Some(t) = self.threads {
            o.threads = t;
        }
        o
    }

    pub fn open(&self, path: &std::path::Path) -> Result<Loaded> {
        let what = || format!("loading model {}", path.display());
        if self.backend == "native" {
            let device = if self.device == "gpu" { Device::Gpu } else { Device::Cpu };
            if let Some(t) = self.threads {
                // The native engine's CPU kernels run on rayon's global pool.
                let _ = rayon::ThreadPoolBuilder::new().num_threads(t.max(1)).build_global();
            }
            // Refused before the weights are uploaded (set_decode_factors refuses it too).
            anyhow::ensure!(!(self.lora_int8 && device == Device::Gpu), "--lora-int8 is for the CPU: the GPU forward reads f16 factors");
            let mut rt = NativeRuntime::load(path, device, self.options().threads).with_context(what)?;
            if self.lora_int8 {
                rt.set_decode_factors(edgelora::model::DecodeFactors::Int8)?;
            }
            return Ok(Loaded::Native(rt));
        }
        anyhow::ensure!(!self.lora_int8, "--lora-int8 needs --backend native (llama.cpp reads the adapters as stored)");
        if self.device == "gpu" {
            anyhow::bail!("--device gpu needs --backend native (the llama.cpp backend here is built for the CPU)");
        }
        #[cfg(feature = "llama")]
        {
            Ok(Loaded::Llama(Runtime::load(path, self.options()).with_context(what)?))
        }
        #[cfg(not(feature = "llama"))]
        {
            let _ = what;
            anyhow::bail!("--backend llama: this edgelora was built without llama.cpp (cargo feature `llama`); use --backend native")
        }
    }

    /// Loads the model and every `--adapter`, named by position (`a0`, `a1`, …), or with
    /// `--merge` a merged copy of the model.
    pub fn load(&self) -> Result<LoadedModel> {
        if !self.model.exists() && self.model == std::path::Path::new(DEFAULT_MODEL) {
            anyhow::bail!("the default model {DEFAULT_MODEL} is missing: run models/fetch first (or pass --model)");
        }
        if self.merge && !self.adapters.is_empty() {
            let dir = tempfile::tempdir().context("creating a temporary directory for the merged model")?;
            let out = dir.path().join("merged.gguf");
            let quantizer = edgelora::merge::Quantizer::from_name(&self.merge_quantizer).context("clap checked --merge-quantizer")?;
            let read = ReadOptions { lenient: self.lenient };
            merge::merge_args_into(&self.model, &self.adapters, &out, &edgelora::merge::MergeOptions { quantizer, read, ..Default::default() }, false)?;
            let loaded = self.open(&out).context("loading the merged model")?;
            return Ok(LoadedModel { loaded, adapters: Vec::new(), _merged: Some(dir) });
        }
        let loaded = self.open(&self.model)?;
        let rt = loaded.engine();
        let mut set = Vec::new();
        for (i, arg) in self.adapters.iter().enumerate() {
            let (path, scale) = parse_adapter_arg(arg)?;
            let name = format!("a{i}");
            load_adapter(rt, &name, &path, self.lenient)?;
            set.push((name, scale));
        }
        Ok(LoadedModel { loaded, adapters: set, _merged: None })
    }
}

/// Sampling options shared by generate and chat.
#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Temperature; 0 is greedy
    #[arg(long = "temp", default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0 = off)
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1 = off)
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than MIN_P × the top token's probability (0 = off)
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalty for recently seen tokens (1 = off)
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Maximum tokens to generate
    #[arg(short = 'n', long = "max-tokens", default_value_t = 128)]
    pub max_tokens: usize,
    /// Stop before this string (repeatable)
    #[arg(long = "stop")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: 64,
            seed: self.seed,
        }
    }
}

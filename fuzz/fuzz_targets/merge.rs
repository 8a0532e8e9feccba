//! Merge: the input parsed as a GGUF-LoRA adapter (`read_gguf_lora`) and, on `Ok`,
//! merged (weight 1, refit) into a tiny F32 `llama` model held in memory, written to a
//! per-process directory in /dev/shm. An `Err` leaves nothing under the output path (nor
//! a temporary file beside it); an `Ok` output parses and passes `check_model`.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use edgelora::adapter::read_gguf_lora;
use edgelora::gguf::GgufFile;
use edgelora::merge::{merge, MergeInput, MergeOptions, Quantizer};
use libfuzzer_sys::fuzz_target;

/// `/dev/shm/edgelora-fuzz-merge-<pid>` (or the system temp dir without /dev/shm),
/// emptied at start.
fn out_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir = root.join(format!("edgelora-fuzz-merge-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("fuzz setup: output directory");
        dir
    })
}

fn leftovers(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir).expect("output directory").map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned()).collect()
}

fuzz_target!(
    init: {
        edgelora_fuzz::tiny_model();
        out_dir();
    },
    |data: &[u8]| {
        let Ok(f) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else { return };
        let Ok(adapter) = read_gguf_lora(&f) else { return };
        let base = edgelora_fuzz::tiny_model();
        let dir = out_dir();
        let out = dir.join("merged.gguf");
        let inputs = [MergeInput { adapter: &adapter, weight: 1.0, label: "fuzz".into() }];
        let opts = MergeOptions { out_type: None, quantizer: Quantizer::Refit, ..Default::default() };
        match merge(base, &inputs, &out, &opts, &mut |_, _, _| {}) {
            Err(_) => {
                let left = leftovers(dir);
                assert!(left.is_empty(), "a failed merge left {left:?}");
            }
            Ok(_) => {
                let merged = GgufFile::open(&out).expect("a merged model parses");
                edgelora::model::validate::check_model(&merged).expect("a merged model passes check_model");
                assert_eq!(merged.tensors().len(), base.tensors().len());
                drop(merged);
                std::fs::remove_file(&out).expect("remove the merged model");
                let left = leftovers(dir);
                assert!(left.is_empty(), "a merge left {left:?}");
            }
        }
    }
);

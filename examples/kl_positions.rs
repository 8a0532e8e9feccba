//! Merge quality over every position (used by `benches/merge_kl_positions.sh`): the mean
//! KL divergence of each merged model's next-token distribution to the base with the
//! adapter on the fly, over every position of the token sequences in TOKENS (one
//! sequence per line, comma-separated ids), both through the native f32 engine on the CPU.
//!
//! kl_positions BASE.gguf ADAPTER TOKENS MERGED.gguf…
use anyhow::{bail, Context, Result};
use edgelora::compute::cpu::Cpu;
use edgelora::gguf::GgufFile;
use edgelora::model::{NativeModel, Session};

fn log_softmax(v: &[f32]) -> Vec<f64> {
    let m = v.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
    let s = v.iter().map(|&x| (f64::from(x) - m).exp()).sum::<f64>().ln() + m;
    v.iter().map(|&x| f64::from(x) - s).collect()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        bail!("usage: kl_positions BASE.gguf ADAPTER TOKENS MERGED.gguf…");
    }
    let (base, adapter, tokens) = (&args[0], &args[1], &args[2]);
    let text = std::fs::read_to_string(tokens).with_context(|| format!("reading {tokens}"))?;
    let mut seqs = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let ids: Vec<i32> = line.split(',').map(|v| v.trim().parse()).collect::<Result<_, _>>().with_context(|| format!("{tokens}:{}: expected comma-separated token ids", i + 1))?;
        seqs.push(ids);
    }
    let g = GgufFile::open(base)?;
    let a = edgelora::adapter::load(std::path::Path::new(adapter), &g)?;
    let fly = NativeModel::new(g, Box::new(Cpu))?;
    let mut reference = Vec::new();
    for s in &seqs {
        reference.push(fly.forward(&mut Session::default(), s, &[(&a, 1.0)], true)?.iter().map(|l| log_softmax(l)).collect::<Vec<_>>());
    }
    for merged in &args[3..] {
        let m = NativeModel::new(GgufFile::open(merged)?, Box::new(Cpu))?;
        let (mut sum, mut n, mut last) = (0.0, 0, 0.0);
        for (s, r) in seqs.iter().zip(&reference) {
            let out = m.forward(&mut Session::default(), s, &[], true)?;
            for (i, (o, p)) in out.iter().zip(r).enumerate() {
                let q = log_softmax(o);
                let kl: f64 = p.iter().zip(&q).map(|(a, b)| a.exp() * (a - b)).sum();
                sum += kl;
                n += 1;
                if i + 1 == s.len() {
                    last += kl;
                }
            }
        }
        println!("{merged}: KL to on-the-fly, mean over {n} positions {:.4}, over the {} last positions {:.4}", sum / n as f64, seqs.len(), last / seqs.len() as f64);
    }
    Ok(())
}

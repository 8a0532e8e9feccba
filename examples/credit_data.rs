//! Synthetic credit-approval data for the worked example (`examples/credit/README.md`):
//! applicant fields → approve/reject by a fixed rule (the seed document's bank scenario).
//!
//! Rule: approve iff credit score ≥ 650 and no prior defaults. Age, income, debt ratio and
//! years employed are distractors. Records are Alpaca JSONL.
//!
//! `cargo run --release --example credit_data -- OUT_DIR [N_TRAIN N_VALID N_TEST SEED]`

use std::io::Write;

use rand::{Rng, SeedableRng};

fn record(r: &mut impl Rng) -> String {
    let age: u32 = r.random_range(21..70);
    let income: u32 = r.random_range(18..160) * 1000;
    let score: u32 = r.random_range(500..850);
    let dti: u32 = r.random_range(5..60);
    let defaults: u32 = if r.random_bool(0.75) { 0 } else { r.random_range(1..4) };
    let years: u32 = r.random_range(0..25);
    let approve = score >= 650 && defaults == 0;
    let input = format!(
        "Age: {age}\nAnnual income: ${income}\nCredit score: {score}\nDebt-to-income: {dti}%\nPrior defaults: {}\nYears employed: {years}",
        if defaults == 0 { "none".to_string() } else { defaults.to_string() }
    );
    serde_json::json!({
        "instruction": "Decide on this loan application. Answer with one word: approve or reject.",
        "input": input,
        "output": if approve { "approve" } else { "reject" },
    })
    .to_string()
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: credit_data OUT_DIR [N_TRAIN N_VALID N_TEST SEED]");
        std::process::exit(2);
    };
    let num = |i: usize, d: u64| args.get(i).map_or(Ok(d), |s| s.parse::<u64>()).unwrap_or_else(|e| {
        eprintln!("argument {i}: {e}");
        std::process::exit(2)
    });
    let (n_train, n_valid, n_test, seed) = (num(1, 2000), num(2, 200), num(3, 200), num(4, 7));
    std::fs::create_dir_all(dir)?;
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (name, n) in [("train", n_train), ("valid", n_valid), ("test", n_test)] {
        let mut f = std::io::BufWriter::new(std::fs::File::create(format!("{dir}/{name}.jsonl"))?);
        for _ in 0..n {
            writeln!(f, "{}", record(&mut r))?;
        }
    }
    eprintln!("wrote {dir}/{{train,valid,test}}.jsonl ({n_train}/{n_valid}/{n_test})");
    Ok(())
}

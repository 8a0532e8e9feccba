//! Synthetic credit-approval data for the worked example (`examples/credit/README.md`):
//! applicant fields → approve/reject by a fixed rule (the seed document's bank scenario).
//!
//! Rule (policy v1): approve iff credit score ≥ 650 and no prior defaults. Age, income,
//! debt ratio and years employed are distractors. Records are Alpaca JSONL.
//!
//! `cargo run --release --example credit_data -- OUT_DIR [N_TRAIN N_VALID N_TEST SEED [DTI_MAX]]`
//!
//! With DTI_MAX (the continual-learning example, `examples/continual/`): the bank's policy
//! changes to v2 — also reject a debt-to-income ratio ≥ DTI_MAX% — and each split is written
//! three more ways: `NAME.v2.jsonl` (the same applications labelled by v2),
//! `NAME.unchanged.jsonl` (the applications whose label is the same under both policies) and
//! `NAME.explain.jsonl` (v1 labels with a one-line reason: a second skill for the demo's mix).

use std::io::Write;

use rand::{Rng, SeedableRng};

/// One application: its input text, the v1 label, the v2 label for `dti_max`, and v1's reason.
fn application(r: &mut impl Rng, dti_max: u32) -> (String, bool, bool, String) {
    let age: u32 = r.random_range(21..70);
    let income: u32 = r.random_range(18..160) * 1000;
    let score: u32 = r.random_range(500..850);
    let dti: u32 = r.random_range(5..60);
    let defaults: u32 = if r.random_bool(0.75) { 0 } else { r.random_range(1..4) };
    let years: u32 = r.random_range(0..25);
    let v1 = score >= 650 && defaults == 0;
    let v2 = v1 && dti < dti_max;
    let input = format!(
        "Age: {age}\nAnnual income: ${income}\nCredit score: {score}\nDebt-to-income: {dti}%\nPrior defaults: {}\nYears employed: {years}",
        if defaults == 0 { "none".to_string() } else { defaults.to_string() }
    );
    let reason = match (score >= 650, defaults == 0) {
        (true, true) => format!("approve: credit score {score} is at least 650 and there are no prior defaults."),
        (false, true) => format!("reject: credit score {score} is below 650."),
        (true, false) => format!("reject: {defaults} prior default(s)."),
        (false, false) => format!("reject: credit score {score} is below 650 and {defaults} prior default(s)."),
    };
    (input, v1, v2, reason)
}

const INSTRUCTION: &str = "Decide on this loan application. Answer with one word: approve or reject.";
const EXPLAIN: &str = "Decide on this loan application and give the reason in one line.";

fn line(instruction: &str, input: &str, output: &str) -> String {
    serde_json::json!({ "instruction": instruction, "input": input, "output": output }).to_string()
}

fn word(approve: bool) -> &'static str {
    if approve { "approve" } else { "reject" }
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
    let dti_max = args.get(5).map(|_| num(5, 40) as u32);
    std::fs::create_dir_all(dir)?;
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let open = |name: String| std::fs::File::create(format!("{dir}/{name}")).map(std::io::BufWriter::new);
    for (name, n) in [("train", n_train), ("valid", n_valid), ("test", n_test)] {
        let mut v1 = open(format!("{name}.jsonl"))?;
        let mut more = match dti_max {
            Some(_) => Some((open(format!("{name}.v2.jsonl"))?, open(format!("{name}.unchanged.jsonl"))?, open(format!("{name}.explain.jsonl"))?)),
            None => None,
        };
        for _ in 0..n {
            // Without DTI_MAX the v2 label is never used: the draws (and files) stay as before.
            let (input, a1, a2, reason) = application(&mut r, dti_max.unwrap_or(u32::MAX));
            writeln!(v1, "{}", line(INSTRUCTION, &input, word(a1)))?;
            if let Some((v2, same, explain)) = more.as_mut() {
                writeln!(v2, "{}", line(INSTRUCTION, &input, word(a2)))?;
                if a1 == a2 {
                    writeln!(same, "{}", line(INSTRUCTION, &input, word(a1)))?;
                }
                writeln!(explain, "{}", line(EXPLAIN, &input, &reason))?;
            }
        }
    }
    eprintln!("wrote {dir}/{{train,valid,test}}.jsonl ({n_train}/{n_valid}/{n_test}){}", if dti_max.is_some() { " and their .v2/.unchanged/.explain twins" } else { "" });
    Ok(())
}

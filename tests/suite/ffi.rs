//! The C ABI: header drift, a C program and a host-JVM program driving the shared
//! library through their APIs.

use std::path::{Path, PathBuf};
use std::process::Command;

use edgelora::adapter::{read_peft, write_gguf_lora, GgufLoraDtype};

use crate::common::{model_gguf, model_path, tmpdir};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn generated_header() -> String {
    let config = cbindgen::Config::from_file(root().join("cbindgen.toml")).unwrap();
    let mut out = Vec::new();
    // Only the C ABI files: the crate's other #[repr(C)] types are not part of the API.
    cbindgen::Builder::new().with_src(root().join("src/ffi/capi.rs")).with_src(root().join("src/ffi/train.rs")).with_config(config).generate().expect("cbindgen").write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn header_matches_the_code() {
    let path = root().join("include/edgelora.h");
    let want = generated_header();
    if std::env::var_os("EDGELORA_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(have == want, "include/edgelora.h is out of date with src/ffi: regenerate with `EDGELORA_BLESS=1 cargo test --release header`");
}

/// The directory holding the freshly built libedgelora.so (beside the binary).
fn lib_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_edgelora")).parent().unwrap().to_path_buf();
    assert!(
        dir.join("libedgelora.so").exists(),
        "libedgelora.so missing in {}: `cargo test` does not build the cdylib; run `cargo build --release --lib` first (scripts/test does)",
        dir.display()
    );
    dir
}

/// An adapter that does not fit the model: the seed fixture relabelled for qwen2.
fn foreign_adapter(dir: &Path) -> PathBuf {
    let mut a = read_peft(&root().join("tests/fixtures/seed_r16_qv"), model_gguf()).unwrap();
    a.architecture = "qwen2".into();
    let p = dir.join("qwen2-adapter.gguf");
    write_gguf_lora(&a, &p, GgufLoraDtype::F16).unwrap();
    p
}

/// The seed fixture with a target module llama does not have added to its config.
fn unknown_target_adapter(dir: &Path) -> PathBuf {
    let src = root().join("tests/fixtures/seed_r16_qv");
    let out = dir.join("wq-adapter");
    std::fs::create_dir_all(&out).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap()).unwrap();
    cfg["target_modules"] = serde_json::json!(["q_proj", "v_proj", "wq"]);
    std::fs::write(out.join("adapter_config.json"), cfg.to_string()).unwrap();
    std::fs::copy(src.join("adapter_model.safetensors"), out.join("adapter_model.safetensors")).unwrap();
    out
}

/// The six arguments both programs take: model, two fixture adapters, a foreign adapter,
/// an adapter with an unknown target module, and the bad models' case list.
fn program_args(dir: &Path) -> Vec<PathBuf> {
    let bad = dir.join("bad-models");
    std::fs::create_dir_all(&bad).unwrap();
    crate::model_checks::bad_model_cases(&bad);
    vec![
        model_path(),
        root().join("tests/fixtures/seed_r16_qv"),
        root().join("tests/fixtures/rslora_r8_all"),
        foreign_adapter(dir),
        unknown_target_adapter(dir),
        bad.join("cases.tsv"),
    ]
}

#[test]
fn c_program_drives_the_library() {
    run_c_program("cc", &[], &[]);
}

/// The same C program built with AddressSanitizer + LeakSanitizer (clang's runtime from
/// libclang-rt-14-dev, installed by scripts/install-deps): the runtime intercepts every
/// malloc/free of the process — the library's Rust and C++ allocations included — so a
/// use after free, a double free or a leak at exit fails the test. The GPTQ merge (two
/// minutes uninstrumented) is left to the plain run.
#[test]
fn c_program_is_clean_under_address_and_leak_sanitizer() {
    let clang = ["clang-14", "clang"].into_iter().find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()));
    let clang = clang.expect("clang is missing: scripts/install-deps installs clang-14 and libclang-rt-14-dev");
    let supp = root().join("tests/ffi/lsan.supp");
    run_c_program(
        clang,
        &["-fsanitize=address", "-fno-omit-frame-pointer", "-g"],
        &[
            ("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:halt_on_error=1".to_string()),
            ("LSAN_OPTIONS", format!("suppressions={}:print_suppressions=1", supp.display())),
            ("EDGELORA_C_TEST_SKIP_GPTQ", "1".to_string()),
        ],
    );
}

fn run_c_program(compiler: &str, flags: &[&str], env: &[(&str, String)]) {
    let dir = tmpdir();
    let args = program_args(dir.path());
    let stdout = compile_and_run("test_edgelora.c", compiler, flags, env, dir.path(), &args);
    assert!(stdout.contains("all C API checks passed"), "{stdout}");
}

/// The training loop through the C API (tests/ffi/test_train.c): in-memory examples,
/// evaluation, export, hot-load into an open runtime with changed greedy answers, cancel
/// from a second thread, a training child SIGKILLed mid-run and resumed, the store's
/// versions and roll-back. The program writes three adapters trained for the same
/// steps — uninterrupted, cancelled and continued, killed and resumed — whose tensors
/// must be bit-identical.
#[test]
fn c_training_program_personalizes_and_survives_cancel_and_kill() {
    run_c_training("cc", &[], &[]);
}

/// The same under AddressSanitizer + LeakSanitizer (the forked child is killed before
/// exit; the parent's leaks at exit are checked).
#[test]
fn c_training_program_is_clean_under_address_and_leak_sanitizer() {
    let clang = ["clang-14", "clang"].into_iter().find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()));
    let clang = clang.expect("clang is missing: scripts/install-deps installs clang-14 and libclang-rt-14-dev");
    let supp = root().join("tests/ffi/lsan.supp");
    run_c_training(
        clang,
        &["-fsanitize=address", "-fno-omit-frame-pointer", "-g"],
        &[("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:halt_on_error=1".to_string()), ("LSAN_OPTIONS", format!("suppressions={}:print_suppressions=1", supp.display()))],
    );
}

fn run_c_training(compiler: &str, flags: &[&str], env: &[(&str, String)]) {
    let dir = tmpdir();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let stdout = compile_and_run("test_train.c", compiler, flags, env, dir.path(), &[model_path(), work.clone()]);
    assert!(stdout.contains("all C training checks passed"), "{stdout}");
    let read = |name: &str| edgelora::adapter::read_gguf_lora(&edgelora::gguf::GgufFile::open(work.join(name)).unwrap()).unwrap();
    let straight = read("straight.gguf");
    assert!(!straight.tensors.is_empty() && straight.tensors.values().any(|t| t.b.iter().any(|&x| x != 0.0)), "the straight run trained nothing");
    for other in ["cancelled.gguf", "resumed.gguf"] {
        let o = read(other);
        assert_eq!(o.tensors.len(), straight.tensors.len(), "{other}");
        for (name, t) in &straight.tensors {
            let u = &o.tensors[name];
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&t.a) == bits(&u.a) && bits(&t.b) == bits(&u.b), "{other}: tensor {name} differs from the uninterrupted run");
        }
    }
}

/// Compiles tests/ffi/`source` against the header and the cdylib and runs it with `args`.
fn compile_and_run(source: &str, compiler: &str, flags: &[&str], env: &[(&str, String)], dir: &Path, args: &[PathBuf]) -> String {
    let exe = dir.join(source.trim_end_matches(".c"));
    let lib = lib_dir();
    let cc = Command::new(compiler)
        .args(flags)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(root().join("tests/ffi").join(source))
        .arg(format!("-I{}", root().join("include").display()))
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-ledgelora", "-lpthread"])
        .output()
        .expect("cc runs");
    assert!(cc.status.success(), "cc failed:\n{}", String::from_utf8_lossy(&cc.stderr));
    let out = Command::new(&exe).args(args).envs(env.iter().map(|(k, v)| (*k, v.as_str()))).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "C test {source} ({compiler} {flags:?}) failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn jvm_program_drives_the_java_api() {
    let dir = tmpdir();
    let args = program_args(dir.path());
    let stdout = compile_and_run_java("JvmTest", dir.path(), &args);
    assert!(stdout.contains("all Java API checks passed"), "{stdout}");
}

/// The personalization loop through the Java API (tests/jvm/JvmTrainTest.java): bad
/// input, a listener exception propagating (checkpoint saved), cancel from a thread,
/// evaluate, export, load into an open model, generate, store versions, roll back.
#[test]
fn jvm_program_trains_evaluates_loads_and_rolls_back() {
    let dir = tmpdir();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let stdout = compile_and_run_java("JvmTrainTest", dir.path(), &[model_path(), work]);
    assert!(stdout.contains("all Java training checks passed"), "{stdout}");
}

/// Compiles the Java API with tests/jvm/`main`.java and runs `main` with `args` against
/// the cdylib; returns its stdout.
fn compile_and_run_java(main: &str, dir: &Path, args: &[PathBuf]) -> String {
    let classes = dir.join("classes");
    let java_src = root().join("android/edgelora/src/main/java/dev/edgelora");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&java_src).unwrap().map(|e| e.unwrap().path()).collect();
    sources.push(root().join(format!("tests/jvm/{main}.java")));
    let javac = Command::new("javac").arg("-d").arg(&classes).args(&sources).output().expect("javac runs (install a JDK)");
    assert!(javac.status.success(), "javac failed:\n{}", String::from_utf8_lossy(&javac.stderr));
    let out = Command::new("java").arg(format!("-Djava.library.path={}", lib_dir().display())).arg("-cp").arg(&classes).arg(main).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "JVM test {main} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

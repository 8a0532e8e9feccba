//! The `edgelora` command line. Errors are printed with their cause chain; exit codes:
//! 0 success, 1 failure, 2 usage error (from clap), 130 training stopped by Ctrl-C
//! (after saving its checkpoint).

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`edgelora inspect M | head`), as Unix tools do,
    // instead of panicking in println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // EDGELORA_PROFILE=1 is read here, once: the profile's timers check a flag that only
    // its first use sets from the environment.
    edgelora::model::profile::enabled();
    // An assert inside llama.cpp (none should be reachable from a file: README
    // "Reliability") would fork gdb for a backtrace, which can hang; fail fast instead.
    if std::env::var_os("GGML_NO_BACKTRACE").is_none() {
        // Before any thread starts: nothing reads the environment concurrently.
        std::env::set_var("GGML_NO_BACKTRACE", "1");
    }
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.downcast_ref::<cli::train::Interrupted>().is_some() => {
            eprintln!("{err}");
            ExitCode::from(130)
        }
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(1)
        }
    }
}

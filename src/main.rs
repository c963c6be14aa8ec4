//! The `liaison` binary: parse arguments, set up logging, run the command.
//! The command line, the demo and the bench live here, on the library's
//! public API.

mod bench;
mod cli;
mod demo;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

/// The store's writer and the RPC paths allocate and free many short-lived
/// buffers (sled copies a tree node on every insert); mimalloc's thread-local
/// free lists cost a fraction of glibc malloc's there (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // sled panics on some damaged files; the store turns those panics into
    // an error that names the data directory, so they are not printed as
    // a crash.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !liaison::store::panic_expected() {
            default_hook(info);
        }
    }));
    let args = match cli::config::expand(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    // The demo runs a whole region in one process: its links go up and down
    // on purpose, so only errors are logged unless RUST_LOG says otherwise.
    let quiet = matches!(cli.command, cli::Command::Demo(_) | cli::Command::Bench(_));
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(if quiet { "error" } else { "info" }));
    // Colour only for a person at a terminal: a file, journald or docker
    // would store the escape codes verbatim (NO_COLOR turns it off too).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes in one line, each cause once: most errors
/// already include their source's text in their own.
fn message(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

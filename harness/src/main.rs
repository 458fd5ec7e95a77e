//! `unlost`: the thin binary; the library does the work.

use clap::Parser;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UNLOST_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(format!(
                    "warn,{},fuser=error",
                    unlost::driver::QUIET_LOGS
                ))
            }),
        )
        .init();
    let cli = unlost::cli::Cli::parse();
    std::process::exit(unlost::cli::main(cli));
}

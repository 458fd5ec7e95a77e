//! `unlost`: the thin binary; the library does the work.

use clap::Parser;

/// glibc's malloc gives each thread that allocates its own arena (up to
/// eight per core), and memory freed in one is not reused by another. A
/// run has many threads (tokio's workers, the broker clients' own threads
/// in every client, consumer threads, the lazy filesystem's), and after
/// each burst of work (a pile-up of sends while the cluster is degraded)
/// the arenas keep their peak: the soak's resident memory grew by steps
/// of 10-20 MiB. Two arenas keep it flat (docs/benchmarks.md).
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any
    // other thread exists.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 2);
    }
}

fn main() {
    cap_malloc_arenas();
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

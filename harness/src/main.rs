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

/// Memory freed inside glibc's heap stays resident until the kernel is
/// told it is free, so after a burst of work the resident set keeps the
/// burst's peak although the harness no longer holds it (a soak: 50.8 MiB
/// resident, 41.1 after one `malloc_trim`; docs/benchmarks.md). Once a
/// minute the harness hands freed pages back, so its resident memory
/// shows what it holds.
fn trim_freed_memory_every_minute() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let _ = std::thread::Builder::new()
        .name("unlost-trim".into())
        .spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_secs(60));
            // SAFETY: malloc_trim only returns free memory to the kernel;
            // glibc locks each arena while it does.
            unsafe {
                nix::libc::malloc_trim(0);
            }
        });
}

fn main() {
    cap_malloc_arenas();
    trim_freed_memory_every_minute();
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

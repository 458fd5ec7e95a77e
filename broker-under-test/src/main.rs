//! `unlost-broker`: parses flags, opens the data dir, serves until SIGTERM
//! or SIGINT, then fsyncs every partition and exits.
//! Exit codes: 0 clean stop, 1 storage or network failure, 2 bad configuration.

use clap::Parser;
use unlost_broker::{Args, Broker, Config};

#[global_allocator]
static ALLOC: unlost_broker::alloc::LazyHugeAlloc = unlost_broker::alloc::LazyHugeAlloc;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UNLOST_BROKER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .init();
    let mut args = Args::parse();
    match args.bug.take().as_deref() {
        Some("list") => {
            print!("{}", unlost_broker::bugs::list());
            std::process::exit(0);
        }
        Some(name) => match unlost_broker::bugs::select(name) {
            Ok(_) => tracing::warn!("running with the deliberate bug {name}"),
            Err(e) => {
                eprintln!("unlost-broker: {e}");
                std::process::exit(2);
            }
        },
        None => {}
    }
    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("unlost-broker: {e}");
            std::process::exit(2);
        }
    };
    raise_fd_limit();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    std::process::exit(runtime.block_on(run(config)));
}

async fn run(config: Config) -> i32 {
    let listen = config.listen;
    let (id, flush, dir) = (config.id, config.flush, config.data_dir.clone());
    let broker = match Broker::open(config).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("cannot start with data dir {}: {e}", dir.display());
            return 1;
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on {listen}: {e}");
            return 1;
        }
    };
    tracing::info!(id, %listen, %flush, data_dir = %dir.display(), "broker started");
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let code = tokio::select! {
        r = broker.clone().serve(listener) => {
            tracing::error!("listener failed: {r:?}");
            1
        }
        _ = term.recv() => 0,
        _ = int.recv() => 0,
        why = broker.controller.stopped() => {
            // Fail-stop: no graceful flush on a disk that fails.
            tracing::error!(id, "controller stopped: {why}; exiting");
            return 1;
        }
    };
    broker.flush_all().await;
    tracing::info!(id, "broker stopped");
    code
}

/// Each partition keeps two files open: allow as many as the hard limit does.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

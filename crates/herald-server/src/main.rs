//! The `herald` binary: parses the command line, sets up logging, runs the server until
//! SIGINT or SIGTERM, then shuts it down gracefully.

use std::process::ExitCode;

use clap::Parser;

/// jemalloc instead of the system allocator: less memory per idle WebSocket than glibc's
/// malloc (see "What each optimisation bought" in BENCHMARKS.md for the figures and the
/// command that measures them).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use herald_server::{Cli, Command, Config, RunningServer};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Command::Serve(args) = cli.command;
    let config = match Config::resolve(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("herald: {error}");
            return ExitCode::from(2);
        }
    };
    let filter = match EnvFilter::try_new(&config.log) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("herald: invalid log filter {:?}: {error}", config.log);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    raise_open_files_limit();
    // The accept loop, the tickers and the engine's tasks: connections have threads of their
    // own (see `herald_server::threads`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("herald: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    tracing::debug!(?config, "configuration");
    let server = match RunningServer::start(config).await {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            // A setting that cannot be used (a key or certificate file) is a configuration
            // error, like those `Config::resolve` finds: exit status 2.
            return if error.is_configuration() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            };
        }
    };
    wait_for_signal().await;
    tracing::info!("signal received; shutting down");
    server.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Every subscriber holds a socket: raise the soft open-files limit to the hard one, as push
/// servers do, and log what we got.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open files limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open files limit"),
    }
}

//! The `herald-bench` command: parses the options, builds the runtime with `--threads`
//! workers, runs the scenario (or the `bare` floor server) and prints / writes the results.

use std::fs::File;
use std::io::BufWriter;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use herald_bench::bare::{self, BareArgs};
use herald_bench::Scenario;

/// Load generator for Herald and nginx+nchan.
#[derive(Debug, Parser)]
#[command(name = "herald-bench", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Scenario,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The floor reference: a minimal WebSocket fan-out server (not for real use).
    Bare(BareArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    // The floor server's connections have threads of their own (see `bare`): its accept loop
    // needs one thread only.
    let runtime = match &cli.command {
        Some(Command::Bare(_)) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.run.threads.max(1))
            .enable_all()
            .build(),
    }
    .context("cannot start the runtime")?;
    match cli.command {
        Some(Command::Bare(args)) => runtime.block_on(bare::serve(&args)),
        None => {
            let report = runtime.block_on(herald_bench::run(&cli.run))?;
            print!("{report}");
            if let Some(path) = &cli.run.json {
                let file = File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                serde_json::to_writer_pretty(BufWriter::new(file), &report)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            Ok(())
        }
    }
}

//! `wgcable`: the WireGuard cable driver of a Submariner-compatible gateway.
//!
//! `wgcable gateway` runs the gateway; `wgcable show connections|endpoint` inspects a running
//! one; `wgcable cleanup` removes everything a gateway installed.

mod cli;
mod show;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, ShowCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        // Two workers are plenty for one control loop, the HTTP server and netlink.
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Configuration mistakes are usage errors (exit 2), like clap's own.
            let usage = e
                .downcast_ref::<wgcable_engine::Error>()
                .is_some_and(|e| matches!(e, wgcable_engine::Error::Config { .. }))
                || e.downcast_ref::<cli::UsageError>().is_some();
            eprintln!("error: {e:#}");
            if usage {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Gateway(args) => {
            let config = args.into_config()?;
            wgcable_engine::gateway::run(config, shutdown_signal()).await?;
            Ok(())
        }
        Command::Show { what } => match what {
            ShowCommand::Connections { json, url } => show::connections(&url, json).await,
            ShowCommand::Endpoint { state_dir } => show::endpoint(&state_dir),
        },
        Command::Cleanup(args) => {
            let report = wgcable_engine::gateway::cleanup(
                &args.device,
                args.table,
                args.rule_priority,
                args.backend,
            )
            .await?;
            if report.is_empty() {
                eprintln!(
                    "nothing to remove: no device {}, no route of it in table {}, no rule at priority {}",
                    args.device, args.table, args.rule_priority
                );
            } else {
                eprintln!("device {}: {report}", args.device);
            }
            Ok(())
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WGCABLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for people: logs going to files and journals stay plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .with_target(false)
        .init();
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            // Without signal handlers the only way out is being killed; say so and wait.
            tracing::warn!("cannot install signal handlers; stop the gateway with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

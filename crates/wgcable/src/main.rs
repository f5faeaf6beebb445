//! `wgcable`: the WireGuard cable driver of a Submariner-compatible gateway.
//!
//! `wgcable gateway` runs the gateway; `wgcable show connections|endpoint` inspects a running
//! one; `wgcable cleanup` removes everything a gateway installed.

mod cli;
mod show;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{AdmissionCommand, BrokerPlan, Cli, Command, GatewayPlan, LogFormat, ShowCommand};

/// What the binary was built from (see build.rs).
pub mod build {
    /// The git commit, or "unknown" for a build outside a git checkout.
    pub const GIT_COMMIT: &str = env!("WGCABLE_GIT_COMMIT");
    /// The crate version.
    pub const VERSION_NUMBER: &str = env!("CARGO_PKG_VERSION");
    /// What `--version` prints after the name.
    pub const VERSION: &str = concat!(
        env!("CARGO_PKG_VERSION"),
        " (git ",
        env!("WGCABLE_GIT_COMMIT"),
        ")"
    );
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    if let Err(message) = cli::check_environment(&Cli::command(), &argv) {
        // A usage error like clap's own: exit code 2.
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse_from(argv);
    init_logging(cli.verbose, cli.log_format);
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
                .is_some_and(wgcable_engine::Error::is_usage)
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
            let plan = args.into_plan()?;
            gateway(plan).await
        }
        Command::Admission { what } => match what {
            AdmissionCommand::Forget {
                cluster,
                cluster_id,
                state_dir,
            } => forget(&state_dir, &cluster_id, &cluster),
        },
        Command::Plan(args) => {
            let plan = args.into_plan()?;
            let (source, _) = endpoint_source(&plan, false).await?;
            let host = wgcable_engine::gateway::plan(&plan.config, source).await?;
            print!("{}", host.describe());
            Ok(())
        }
        Command::Show { what } => match what {
            ShowCommand::Connections {
                json,
                url,
                metrics_port,
            } => show::connections(url.as_deref(), metrics_port, json).await,
            ShowCommand::Endpoint { state_dir } => show::endpoint(&state_dir),
            ShowCommand::Conflicts {
                json,
                url,
                metrics_port,
            } => show::conflicts(url.as_deref(), metrics_port, json).await,
        },
        Command::Leave(args) => leave(args).await,
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

/// Starts the gateway the plan describes; everything was validated already.
async fn gateway(plan: GatewayPlan) -> anyhow::Result<()> {
    if plan.check_only {
        print!("{}", plan.summary());
        tracing::info!("the configuration is valid; nothing was changed (--check-config)");
        return Ok(());
    }
    tracing::info!(
        version = build::VERSION,
        cluster = %plan.config.driver.cluster_id,
        hostname = %plan.config.driver.hostname,
        namespace = plan.namespace.as_deref().unwrap_or("-"),
        pod = plan.pod_name.as_deref().unwrap_or("-"),
        "starting the gateway"
    );
    let origin = plan.psk_origin.describe();
    for ignored in &plan.psk_ignored {
        tracing::warn!("{ignored} is set but not used: the pre-shared key comes from {origin}");
    }
    if let Some(file) = plan.psk_origin.file() {
        // The engine does not refresh the key yet (wgcable_keys::PskWatcher is ready for it).
        tracing::info!(
            path = %file.resolve().display(),
            "pre-shared key read from a file; a change takes effect at the next restart"
        );
    }
    if plan.insecure_psk {
        tracing::warn!(
            "--insecure-default-psk: a weak pre-shared key is accepted; never use this outside a demo"
        );
    }
    let (source, leader) = endpoint_source(&plan, true).await?;
    let mut gateway = wgcable_engine::Gateway::builder(plan.config).source(source);
    if let Some(leader) = leader {
        gateway = gateway.leader(leader);
    }
    gateway.run(shutdown_signal()).await?;
    Ok(())
}

/// `wgcable admission forget`: only while no gateway runs on the state directory (a running one
/// would write its registry back).
fn forget(state_dir: &std::path::Path, local: &str, cluster: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let _lock = wgcable_engine::gateway::StateLock::acquire(state_dir)
        .context("stop the gateway first: `wgcable admission forget` edits the registry of a stopped gateway")?;
    let limits = wgcable_broker::admission::AdmissionConfig::default();
    let forgot = wgcable_broker::admission::registry::forget_offline(
        state_dir,
        local,
        cluster,
        limits.max_registry_bytes,
        limits.max_objects,
    )
    .with_context(|| format!("editing the admission registry in {}", state_dir.display()))?;
    if forgot {
        eprintln!("forgot cluster {cluster}: at the next start, its subnets and key go to whichever object claims them first");
    } else {
        eprintln!(
            "cluster {cluster} is not in the admission registry of {}; nothing changed",
            state_dir.display()
        );
    }
    Ok(())
}

/// The endpoint source `--broker` names, configured from its flags, and its leader elector
/// when it has one (`None`: always the leader). `may_create`: a `--broker-dir-create`
/// directory is created (never by `wgcable plan`).
async fn endpoint_source(
    plan: &GatewayPlan,
    may_create: bool,
) -> anyhow::Result<(
    Box<dyn wgcable_broker::EndpointSource>,
    Option<std::sync::Arc<dyn wgcable_broker::LeaderElector>>,
)> {
    use anyhow::Context as _;
    Ok(match &plan.broker {
        BrokerPlan::Kubernetes(config) => {
            let (source, elector) = wgcable_k8s::connect((**config).clone())
                .await
                .context("connecting to the Kubernetes API (--broker kubernetes)")?;
            (Box::new(source), Some(elector))
        }
        BrokerPlan::File {
            dir,
            create,
            rescan_interval,
        } => {
            if *create && may_create {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating --broker-dir {}", dir.display()))?;
                tracing::info!(path = %dir.display(), "created the broker directory (--broker-dir-create)");
            }
            let mut config =
                wgcable_broker::FileSourceConfig::new(dir, &plan.config.driver.cluster_id);
            config.rescan_interval = *rescan_interval;
            config.max_file_bytes = plan.config.admission.limits.max_bytes;
            (Box::new(wgcable_broker::FileSource::new(config)), None)
        }
        BrokerPlan::Etcd(config) => {
            // Values are cut at the limit admission applies, so an oversized one is refused as
            // such without being held whole.
            let config = (**config)
                .clone()
                .with_max_value_bytes(plan.config.admission.limits.max_bytes);
            (
                Box::new(
                    wgcable_etcd::EtcdSource::new(config).context("configuring --broker etcd")?,
                ),
                None,
            )
        }
    })
}

/// `wgcable leave`: withdraws this cluster's Endpoint from the broker.
async fn leave(args: cli::LeaveArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let source: Box<dyn wgcable_broker::EndpointSource> = match args.broker {
        cli::BrokerKind::File => {
            let Some(dir) = args.broker_dir else {
                return Err(cli::UsageError(
                    "--broker file needs --broker-dir: the directory the gateways share their Endpoints through".into(),
                )
                .into());
            };
            Box::new(wgcable_broker::FileSource::new(
                wgcable_broker::FileSourceConfig::new(dir, &args.cluster_id),
            ))
        }
        cli::BrokerKind::Etcd => Box::new(
            wgcable_etcd::EtcdSource::new(args.etcd.config(&args.cluster_id)?)
                .context("configuring --broker etcd")?,
        ),
        cli::BrokerKind::Kubernetes => {
            let config = args.kubernetes_config()?;
            let (source, _elector) = wgcable_k8s::connect(config)
                .await
                .context("connecting to the Kubernetes API (--broker kubernetes)")?;
            Box::new(source)
        }
    };
    source.preflight().await?;
    let mut local = wgcable_api::Endpoint::new(Default::default());
    local.spec.cluster_id = args.cluster_id.clone();
    source
        .withdraw(&local)
        .await
        .with_context(|| format!("withdrawing the Endpoint of cluster {}", args.cluster_id))?;
    eprintln!(
        "cluster {}: Endpoint withdrawn from the {} broker; the other gateways drop their tunnels to it",
        args.cluster_id,
        source.kind()
    );
    Ok(())
}

/// wgcable's own crates: `-v` and `-vv` raise their level only, since the HTTP/2 and gRPC
/// stacks underneath (h2, tonic, hyper, kube) log every frame at debug and would bury
/// the gateway's own lines; `-vvv` raises everything.
const OWN_CRATES: [&str; 10] = [
    "wgcable",
    "wgcable_api",
    "wgcable_broker",
    "wgcable_engine",
    "wgcable_etcd",
    "wgcable_k8s",
    "wgcable_keys",
    "wgcable_metrics",
    "wgcable_netlink",
    "wgcable_peers",
];

/// The log filter for `-v` given `verbose` times, when no filter variable is set.
fn default_filter(verbose: u8) -> String {
    let own = match verbose {
        0 => return "info".to_string(),
        1 => "debug",
        2 => "trace",
        _ => return "trace".to_string(),
    };
    let mut filter = String::from("info");
    for krate in OWN_CRATES {
        filter.push_str(&format!(",{krate}={own}"));
    }
    filter
}

/// Logs to stderr. The filter is `WGCABLE_LOG`, else `RUST_LOG`, else the level `-v` asks for;
/// a filter that does not parse is reported and skipped rather than silently ignored.
fn init_logging(verbose: u8, format: LogFormat) {
    let default = default_filter(verbose);
    let mut ignored = Vec::new();
    let filter = ["WGCABLE_LOG", "RUST_LOG"]
        .into_iter()
        .find_map(|var| {
            let value = std::env::var(var).ok().filter(|v| !v.trim().is_empty())?;
            match tracing_subscriber::EnvFilter::try_new(&value) {
                Ok(filter) => Some(filter),
                Err(e) => {
                    ignored.push(format!("ignoring {var}: {e}"));
                    None
                }
            }
        })
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&default));
    match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // Colour only for people: logs going to files and journals stay plain text.
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none(),
            )
            // The target (module path) helps when debugging, and is noise otherwise.
            .with_target(verbose >= 2)
            .init(),
        // One JSON object per line, with the fields at the top level where collectors look.
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    for message in ignored {
        tracing::warn!("{message}");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbose_raises_our_crates_and_leaves_the_http_stack_at_info() {
        assert_eq!(default_filter(0), "info");
        let debug = default_filter(1);
        assert!(debug.starts_with("info,"), "{debug}");
        assert!(debug.contains(",wgcable_etcd=debug"), "{debug}");
        assert!(debug.contains(",wgcable=debug"), "{debug}");
        assert!(!debug.contains("h2"), "{debug}");
        assert!(default_filter(2).contains(",wgcable_engine=trace"));
        assert_eq!(default_filter(3), "trace");
        for verbose in 0..4 {
            let filter = default_filter(verbose);
            tracing_subscriber::EnvFilter::try_new(&filter).expect(&filter);
        }
    }
}

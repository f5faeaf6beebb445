//! Command-line flags. Each gateway flag also reads Submariner's environment variable where
//! one exists, so wgcable drops into a Submariner gateway pod's environment unchanged.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use wgcable_engine::config::{DEFAULT_DEVICE, DEFAULT_PORT, DEFAULT_RULE_PRIORITY, DEFAULT_TABLE};
use wgcable_engine::{DriverConfig, GatewayConfig};
use wgcable_keys::PresharedKey;
use wgcable_peers::BackendPreference;

/// A usage mistake found after parsing (exit code 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}

#[derive(Debug, Parser)]
#[command(
    name = "wgcable",
    version,
    about = "WireGuard cable driver and gateway for multi-cluster networking (Submariner-compatible)"
)]
pub struct Cli {
    /// More logging (-v debug, -vv trace). WGCABLE_LOG=<filter> overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: publish the local Endpoint, connect to the others, route, report.
    Gateway(Box<GatewayArgs>),
    /// Inspect a running gateway.
    Show {
        #[command(subcommand)]
        what: ShowCommand,
    },
    /// Remove the device, its routes, the rule and the userspace WireGuard process.
    Cleanup(CleanupArgs),
}

#[derive(Debug, Subcommand)]
pub enum ShowCommand {
    /// The connections to remote clusters, as `subctl show connections` prints them.
    Connections {
        /// Print the Connection objects as JSON (Submariner's field names).
        #[arg(long)]
        json: bool,
        /// The gateway's HTTP address.
        #[arg(long, default_value = "http://127.0.0.1:32780")]
        url: String,
    },
    /// The local Endpoint, as published to the broker.
    Endpoint {
        /// The gateway's state directory.
        #[arg(long, default_value = "/var/lib/wgcable")]
        state_dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// The local cluster's id (a DNS label).
    #[arg(long, env = "SUBMARINER_CLUSTERID")]
    pub cluster_id: String,
    /// The local cluster's CIDRs (pods and services), comma-separated; IPv4 and IPv6.
    #[arg(long, value_delimiter = ',', required = true)]
    pub subnets: Vec<IpNet>,
    /// The gateway's private (underlay) IP that other gateways reach it on.
    #[arg(long)]
    pub private_ip: IpAddr,
    /// The gateway's public IP, used by remote clusters when NAT is in play.
    #[arg(long)]
    pub public_ip: Option<IpAddr>,
    /// This gateway is behind NAT: remote gateways use its public IP.
    #[arg(long)]
    pub nat: bool,
    /// The hostname published in the Endpoint (default: this host's name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// The gateway's address inside the local subnets (one per IP family, comma-separated),
    /// put on the device as the source of traffic it sends to remote clusters.
    #[arg(long, value_delimiter = ',')]
    pub health_check_ip: Vec<IpAddr>,
    /// The WireGuard UDP port.
    #[arg(long, env = "CE_IPSEC_NATTPORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// The pre-shared key string; the PSK is its SHA-256, as in Submariner.
    #[arg(long, env = "CE_IPSEC_PSK", default_value = wgcable_keys::DEFAULT_PSK, hide_env_values = true)]
    pub psk: String,
    /// The WireGuard device name.
    #[arg(long, default_value = DEFAULT_DEVICE)]
    pub device: String,
    /// The shared directory Endpoints are exchanged through.
    #[arg(long)]
    pub broker_dir: PathBuf,
    /// Where the private key is kept (0600); keeping it keeps the public key across restarts.
    #[arg(long, default_value = "/var/lib/wgcable")]
    pub state_dir: PathBuf,
    /// The HTTP address for /metrics, /healthz, /readyz and /connections.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// The metrics port when --metrics-addr is not given (Submariner's variable).
    #[arg(long, env = "SUBMARINER_METRICSPORT", default_value_t = wgcable_metrics::DEFAULT_METRICS_PORT)]
    pub metrics_port: u16,
    /// Where WireGuard runs: auto (kernel if it has WireGuard, else userspace), kernel or userspace.
    #[arg(long, default_value = "auto")]
    pub backend: BackendPreference,
    /// The routing table remote subnets are routed in.
    #[arg(long, default_value_t = DEFAULT_TABLE)]
    pub table: u32,
    /// The priority of the policy rule that looks up the table.
    #[arg(long, default_value_t = DEFAULT_RULE_PRIORITY)]
    pub rule_priority: u32,
    /// The device MTU (default: the underlay MTU minus 80).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// How often connection status is judged.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub status_interval: Duration,
    /// How often the host is compared with the desired state and drift repaired.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,
    /// How often the broker directory is rescanned besides inotify.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub rescan_interval: Duration,
    /// Ping each remote gateway's health-check IP through the tunnel (latency, path check).
    #[arg(long, env = "SUBMARINER_HEALTHCHECKENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub health_check: bool,
    /// Time between health-check pings (a bare number is seconds, as Submariner's variable).
    #[arg(long, env = "SUBMARINER_HEALTHCHECKINTERVAL", default_value = "1s", value_parser = seconds_or_duration)]
    pub health_check_interval: Duration,
    /// Consecutive lost pings after which a connection is in error.
    #[arg(
        long,
        env = "SUBMARINER_HEALTHCHECKMAXPACKETLOSSCOUNT",
        default_value_t = 5
    )]
    pub health_check_max_lost: u32,
}

/// Submariner's interval variables are bare seconds; people write `500ms` or `2s`.
fn seconds_or_duration(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 1, 1s, 500ms)")),
    }
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// The WireGuard device name.
    #[arg(long, default_value = DEFAULT_DEVICE)]
    pub device: String,
    /// The routing table the gateway used.
    #[arg(long, default_value_t = DEFAULT_TABLE)]
    pub table: u32,
    /// The priority of the gateway's rule.
    #[arg(long, default_value_t = DEFAULT_RULE_PRIORITY)]
    pub rule_priority: u32,
    /// Which backend the device lives in (auto finds out).
    #[arg(long, default_value = "auto")]
    pub backend: BackendPreference,
}

impl GatewayArgs {
    /// Turns the flags into the engine's configuration; every mistake is a usage error.
    pub fn into_config(self) -> Result<GatewayConfig, UsageError> {
        let min = Duration::from_millis(100);
        for (flag, d) in [
            ("--status-interval", self.status_interval),
            ("--resync-interval", self.resync_interval),
            ("--rescan-interval", self.rescan_interval),
            ("--health-check-interval", self.health_check_interval),
        ] {
            if d < min {
                return Err(UsageError(format!(
                    "{flag} {d:?} is too short; use at least 100ms"
                )));
            }
        }
        if self.psk.is_empty() {
            return Err(UsageError("--psk (CE_IPSEC_PSK) must not be empty".into()));
        }
        let hostname = match self.hostname {
            Some(h) => h,
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "localhost".into()),
        };
        let driver = DriverConfig {
            cluster_id: self.cluster_id,
            hostname,
            local_subnets: self.subnets,
            private_ip: self.private_ip,
            public_ip: self.public_ip,
            nat: self.nat,
            health_check_ips: self.health_check_ip,
            listen_port: self.port,
            preshared_key: PresharedKey::from_passphrase(&self.psk),
            device: self.device,
            table: self.table,
            rule_priority: self.rule_priority,
            mtu: self.mtu,
        };
        driver.validate().map_err(|e| UsageError(e.to_string()))?;
        Ok(GatewayConfig {
            driver,
            backend: self.backend,
            broker_dir: self.broker_dir,
            state_dir: self.state_dir,
            metrics_addr: self
                .metrics_addr
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], self.metrics_port))),
            status_interval: self.status_interval,
            resync_interval: self.resync_interval,
            rescan_interval: self.rescan_interval,
            health_check: self
                .health_check
                .then_some(wgcable_engine::gateway::HealthCheckConfig {
                    interval: self.health_check_interval,
                    max_lost: self.health_check_max_lost,
                }),
        })
    }
}

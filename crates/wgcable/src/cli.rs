//! Command-line flags. Each gateway flag also reads Submariner's environment variable where
//! one exists, so wgcable drops into a Submariner gateway pod's environment unchanged.
//!
//! Every input is checked here, before anything on the host changes: a mistake is a usage error
//! (exit code 2) that names the flag, and the environment variable when the value came from one.

use std::ffi::OsString;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::error::{ContextKind, ContextValue};
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use wgcable_engine::config::{DEFAULT_DEVICE, DEFAULT_PORT, DEFAULT_RULE_PRIORITY, DEFAULT_TABLE};
use wgcable_engine::{DriverConfig, GatewayConfig};
use wgcable_keys::{KeyError, KeyStore, PresharedKey, PskFile};
use wgcable_peers::BackendPreference;

use crate::build;

/// A usage mistake found after parsing (exit code 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}

fn usage(message: impl Into<String>) -> UsageError {
    UsageError(message.into())
}

#[derive(Debug, Parser)]
#[command(
    name = "wgcable",
    version = build::VERSION,
    about = "WireGuard cable driver and gateway for multi-cluster networking (Submariner-compatible)"
)]
pub struct Cli {
    /// More logging of wgcable's own crates (-v debug, -vv trace, with each line's target; -vvv
    /// also the libraries underneath). WGCABLE_LOG=<filter>, else
    /// RUST_LOG=<filter>, overrides the level.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// How log lines are written to stderr: text for people, json (one object per line) for
    /// log collectors.
    #[arg(
        long,
        value_enum,
        env = "WGCABLE_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: publish the local Endpoint, connect to the others, route, report.
    Gateway(Box<GatewayArgs>),
    /// Print what `wgcable gateway` with these flags would change on this host now (the
    /// device, its link and addresses, peers, routes, rules), changing nothing.
    Plan(Box<GatewayArgs>),
    /// The admission registry (what the gateway remembers of accepted clusters).
    Admission {
        #[command(subcommand)]
        what: AdmissionCommand,
    },
    /// Inspect a running gateway.
    Show {
        #[command(subcommand)]
        what: ShowCommand,
    },
    /// Remove the device, its routes, the rule and the userspace WireGuard process.
    Cleanup(CleanupArgs),
    /// Withdraw this cluster's Endpoint from the broker: every other gateway drops its tunnel
    /// to this cluster. Stop this cluster's gateway first (a running gateway keeps its tunnels;
    /// with etcd it does not publish again until restarted).
    Leave(LeaveArgs),
}

/// The etcd broker's flags (`--broker etcd`), named as etcdctl names them.
#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// The etcd members' client URLs, comma-separated (`http://host:2379`, `https://...`, or
    /// `host:port`).
    #[arg(long, env = "WGCABLE_ETCD_ENDPOINTS", value_name = "URL[,URL...]")]
    pub etcd_endpoints: Option<String>,
    /// Keys live under `<prefix>/endpoints/<cluster-id>`.
    #[arg(long, env = "WGCABLE_ETCD_PREFIX", default_value = wgcable_etcd::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// The CA certificate that signed the etcd members' certificates (PEM).
    #[arg(long)]
    pub etcd_cacert: Option<PathBuf>,
    /// A client certificate for etcd (PEM), with --etcd-key.
    #[arg(long)]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM; keep it 0600).
    #[arg(long)]
    pub etcd_key: Option<PathBuf>,
}

impl EtcdArgs {
    /// The source's configuration; every check that needs no file or network is done here.
    pub fn config(&self, cluster_id: &str) -> Result<wgcable_etcd::EtcdConfig, UsageError> {
        let Some(list) = &self.etcd_endpoints else {
            return Err(usage(
                "--broker etcd needs --etcd-endpoints: the client URLs of the etcd members (for example http://10.0.0.1:2379,http://10.0.0.2:2379)",
            ));
        };
        let mut config =
            wgcable_etcd::EtcdConfig::new(wgcable_etcd::EtcdConfig::parse_endpoints(list));
        config.prefix = self.etcd_prefix.clone();
        config.local_cluster = Some(cluster_id.to_owned());
        config.cacert = self.etcd_cacert.clone();
        config.cert = self.etcd_cert.clone();
        config.key = self.etcd_key.clone();
        config.validate().map_err(|e| usage(e.to_string()))?;
        Ok(config)
    }
}

#[derive(Debug, Args)]
pub struct LeaveArgs {
    /// The local cluster's id (a DNS label).
    #[arg(long, env = "SUBMARINER_CLUSTERID")]
    pub cluster_id: String,
    /// The broker the cluster's Endpoint is in: `file`, `kubernetes` or `etcd`.
    #[arg(long, env = "WGCABLE_BROKER", default_value = "file")]
    pub broker: BrokerKind,
    /// The shared directory (`--broker file`).
    #[arg(long)]
    pub broker_dir: Option<PathBuf>,
    /// The namespace of the local Endpoints (`--broker kubernetes`; default
    /// submariner-operator). The broker namespace comes from `BROKER_K8S_REMOTENAMESPACE`.
    #[arg(long, env = "SUBMARINER_NAMESPACE")]
    pub namespace: Option<String>,
    /// A kubeconfig for the local cluster (`--broker kubernetes`; default: the pod's service
    /// account in a cluster, else the usual kubeconfig). The broker is reached from
    /// `BROKER_K8S_*`, as the gateway reaches it.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

impl LeaveArgs {
    /// The Kubernetes configuration of `wgcable leave --broker kubernetes`: Submariner's
    /// environment, with the cluster id, namespace and kubeconfig these flags settled on.
    pub fn kubernetes_config(&self) -> Result<wgcable_k8s::KubernetesConfig, UsageError> {
        check_namespace(self.namespace.as_deref())?;
        let lookup = |key: &str| match key {
            "SUBMARINER_CLUSTERID" => Some(self.cluster_id.clone()),
            "SUBMARINER_NAMESPACE" => self.namespace.clone(),
            "KUBECONFIG" => self.kubeconfig.as_ref().map(|p| p.display().to_string()),
            other => std::env::var(other).ok(),
        };
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".to_owned());
        let mut config = wgcable_k8s::KubernetesConfig::from_lookup(
            lookup,
            &host,
            std::path::Path::new(wgcable_k8s::config::SECRET_ROOT),
        )
        .map_err(|e| usage(format!("--broker kubernetes: {e}")))?;
        if let Some(path) = &self.kubeconfig {
            config.local = wgcable_k8s::LocalAccess::Kubeconfig(path.to_owned());
        }
        Ok(config)
    }
}

#[derive(Debug, Subcommand)]
pub enum ShowCommand {
    /// The connections to remote clusters, in the columns of `subctl show connections`.
    Connections {
        /// Print the Connection objects as JSON (Submariner's field names).
        #[arg(long)]
        json: bool,
        /// The gateway's HTTP address: host:port or http://host:port (default: 127.0.0.1 on
        /// the metrics port).
        #[arg(long)]
        url: Option<String>,
        /// The port used when --url is absent or names no port.
        #[arg(long, env = "SUBMARINER_METRICSPORT", default_value_t = wgcable_metrics::DEFAULT_METRICS_PORT)]
        metrics_port: u16,
    },
    /// The local Endpoint, as published to the broker.
    Endpoint {
        /// The gateway's state directory.
        #[arg(long, default_value = "/var/lib/wgcable")]
        state_dir: PathBuf,
    },
    /// The Endpoints the gateway refuses (and why), and which cluster holds what.
    Conflicts {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// The gateway's HTTP address: host:port or http://host:port (default: 127.0.0.1 on
        /// the metrics port).
        #[arg(long)]
        url: Option<String>,
        /// The port used when --url is absent or names no port.
        #[arg(long, env = "SUBMARINER_METRICSPORT", default_value_t = wgcable_metrics::DEFAULT_METRICS_PORT)]
        metrics_port: u16,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdmissionCommand {
    /// Forgets a cluster in the admission registry of a stopped gateway, so that another
    /// object may take its subnets (see `wgcable show conflicts`). Nothing else changes.
    Forget {
        /// The cluster to forget.
        cluster: String,
        /// The local cluster's id (the registry belongs to it).
        #[arg(long, env = "SUBMARINER_CLUSTERID")]
        cluster_id: String,
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
    /// The local cluster's CIDRs (pods and services), comma-separated; IPv4 and IPv6. Without
    /// it, the service CIDRs then the cluster CIDRs are used.
    #[arg(long, value_delimiter = ',', value_parser = parse_cidr)]
    pub subnets: Vec<IpNet>,
    /// The pod CIDRs, comma-separated (used when --subnets is absent).
    #[arg(long, env = "SUBMARINER_CLUSTERCIDR", value_parser = parse_cidr_list)]
    pub cluster_cidr: Option<CidrList>,
    /// The service CIDRs, comma-separated (used when --subnets is absent).
    #[arg(long, env = "SUBMARINER_SERVICECIDR", value_parser = parse_cidr_list)]
    pub service_cidr: Option<CidrList>,
    /// The namespace the local Endpoint is published in.
    #[arg(long, env = "SUBMARINER_NAMESPACE")]
    pub namespace: Option<String>,
    /// The gateway's private (underlay) IP that other gateways reach it on (default: the
    /// address this host's routes use towards other networks, as Submariner's gateway finds it).
    #[arg(long)]
    pub private_ip: Option<IpAddr>,
    /// The gateway's public IP(s), used by remote clusters when NAT is in play: an address, or
    /// Submariner's resolver list where only `ipv4:<address>` entries are supported.
    #[arg(long, env = "SUBMARINER_PUBLICIP", value_parser = parse_public_ips)]
    pub public_ip: Option<PublicIps>,
    /// This gateway is behind NAT: remote gateways use its public IP (needs --public-ip).
    #[arg(long, env = "SUBMARINER_NATENABLED", value_name = "BOOL", num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool)]
    pub nat: bool,
    /// The hostname published in the Endpoint: the node's name, by which Submariner's route
    /// agent recognises the gateway node (default: this host's name).
    #[arg(long, env = "NODE_NAME")]
    pub hostname: Option<String>,
    /// The gateway pod's name, logged at start (identifies this gateway among several).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// The gateway's address inside the local subnets (one per IP family, comma-separated),
    /// put on the device as the source of traffic it sends to remote clusters.
    #[arg(long, value_delimiter = ',')]
    pub health_check_ip: Vec<IpAddr>,
    /// The WireGuard UDP port.
    #[arg(long, env = "CE_IPSEC_NATTPORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// The pre-shared key string; the PSK is its SHA-256, as in Submariner. Visible in `ps` and
    /// the pod spec: prefer --psk-file or CE_IPSEC_PSKSECRET. Used only when neither is given.
    #[arg(long, env = "CE_IPSEC_PSK", hide_env_values = true)]
    pub psk: Option<String>,
    /// A file holding the pre-shared key string, or a directory (a mounted Secret) holding it
    /// as `psk`; one trailing newline is ignored. Wins over CE_IPSEC_PSKSECRET and --psk.
    #[arg(long, value_name = "PATH")]
    pub psk_file: Option<PathBuf>,
    /// The Secret holding the pre-shared key as `psk`: a name (mounted at
    /// /var/run/secrets/submariner.io/<name>, as Submariner's operator does) or a path. Wins
    /// over --psk.
    #[arg(long, env = "CE_IPSEC_PSKSECRET", value_name = "NAME|PATH")]
    pub psk_secret: Option<String>,
    /// Accept an empty pre-shared key or Submariner's well-known default "default psk" (used
    /// when none is set). Only for throwaway demos and tests: anyone can derive that key.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false",
          default_missing_value = "true", value_parser = parse_go_bool)]
    pub insecure_default_psk: bool,
    /// The WireGuard device name.
    #[arg(long, default_value = DEFAULT_DEVICE)]
    pub device: String,
    /// Where Endpoints are exchanged: `file` (a shared directory, --broker-dir), `kubernetes`
    /// (Submariner's Endpoint objects) or `etcd` (an etcd cluster).
    #[arg(long, env = "WGCABLE_BROKER", default_value = "file")]
    pub broker: BrokerKind,
    /// The shared directory Endpoints are exchanged through (`--broker file`); it must exist.
    #[arg(long)]
    pub broker_dir: Option<PathBuf>,
    /// Create --broker-dir if it does not exist (instead of refusing a path that may be a typo).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false",
          default_missing_value = "true", value_parser = parse_go_bool)]
    pub broker_dir_create: bool,
    /// A kubeconfig for the local cluster (`--broker kubernetes`; default: the pod's service
    /// account in a cluster, else the usual kubeconfig). The broker is reached as Submariner's
    /// gateway reaches it, from `BROKER_K8S_*` (see docs/kubernetes.md).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Where the private key is kept (0600); keeping it keeps the public key across restarts.
    #[arg(long, default_value = "/var/lib/wgcable")]
    pub state_dir: PathBuf,
    /// A read-only directory holding the private key as `private.key`, e.g. a mounted
    /// Kubernetes Secret (its link chain is followed only inside the directory; the file must
    /// be 0600 or stricter and owned by this user). Never written; without it the key lives
    /// in --state-dir.
    #[arg(long, env = "WGCABLE_PRIVATE_KEY_DIR", value_name = "DIR")]
    pub private_key_dir: Option<PathBuf>,
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
    /// How often connection status is judged (a bare number is seconds).
    #[arg(long, default_value = "5s", value_parser = seconds_or_duration)]
    pub status_interval: Duration,
    /// How often the host is compared with the desired state and drift repaired (a bare number
    /// is seconds).
    #[arg(long, default_value = "30s", value_parser = seconds_or_duration)]
    pub resync_interval: Duration,
    /// How often the broker directory is rescanned besides inotify (`--broker file`; a bare
    /// number is seconds).
    #[arg(long, default_value = "10s", value_parser = seconds_or_duration)]
    pub rescan_interval: Duration,
    /// Ping each remote gateway's health-check IP through the tunnel (latency, path check).
    #[arg(long, env = "SUBMARINER_HEALTHCHECKENABLED", value_name = "BOOL", num_args = 0..=1,
          default_value = "true", default_missing_value = "true", value_parser = parse_go_bool)]
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
    /// Check the flags and environment, print the configuration the gateway would run with, and
    /// exit without changing anything.
    #[arg(long)]
    pub check_config: bool,
}

/// A comma-separated CIDR list from Submariner's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrList(pub Vec<IpNet>);

/// The public addresses, at most one per IP family, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicIps(pub Vec<IpAddr>);

/// Go's `strconv.ParseBool`, which Submariner's environment is parsed with.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(
            "expected a boolean: 1, t, T, TRUE, true, True, 0, f, F, FALSE, false or False"
                .to_string(),
        ),
    }
}

/// Submariner's interval variables are bare seconds; people write `500ms` or `2s`. Every
/// duration flag takes both.
pub fn seconds_or_duration(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 1, 1s, 500ms)")),
    }
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.trim()
        .parse::<IpNet>()
        .map_err(|e| format!("{e} (expected a CIDR such as 10.42.0.0/16 or fd00:42::/56)"))
}

fn parse_cidr_list(s: &str) -> Result<CidrList, String> {
    s.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| parse_cidr(item).map_err(|e| format!("{item:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()
        .map(CidrList)
}

/// Submariner's `SUBMARINER_PUBLICIP` is a list of resolvers (`ipv4:1.2.3.4`, `api:host`,
/// `lb:service`, `dns:name`); wgcable resolves nothing over the network, so it takes the literal
/// ones (`ipv4:`, `ipv6:` or a bare address) and refuses the others with what to write instead.
fn parse_public_ips(s: &str) -> Result<PublicIps, String> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (method, value) = match item.split_once(':') {
            Some((m @ ("ipv4" | "ipv6" | "api" | "lb" | "dns"), v)) => (m, v),
            _ => ("", item),
        };
        let ip = match method {
            "" => value.parse::<IpAddr>().ok(),
            "ipv4" => value.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
            "ipv6" => value.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6),
            _ => {
                return Err(format!(
                    "the {method}: resolver is not supported (wgcable does not look its public IP up); give the address itself, e.g. 203.0.113.7 or ipv4:203.0.113.7"
                ))
            }
        };
        let Some(ip) = ip else {
            return Err(format!(
                "{item:?} is not an IP address (expected e.g. 203.0.113.7, ipv4:203.0.113.7 or 2001:db8::7)"
            ));
        };
        // Upstream takes the first resolver that works; with literal addresses, the first of
        // each family.
        if !ips.iter().any(|known| known.is_ipv4() == ip.is_ipv4()) {
            ips.push(ip);
        }
    }
    Ok(PublicIps(ips))
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

/// Where the pre-shared key came from, for messages (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PskOrigin {
    /// `--psk-file`.
    File(PskFile),
    /// `CE_IPSEC_PSKSECRET` / `--psk-secret`.
    Secret(PskFile),
    /// `--psk` / `CE_IPSEC_PSK`.
    Literal,
    /// Nothing set and `--insecure-default-psk`.
    InsecureDefault,
}

impl PskOrigin {
    /// Where the key came from, for messages.
    pub fn describe(&self) -> String {
        match self {
            PskOrigin::File(f) => format!("--psk-file {}", f.path().display()),
            PskOrigin::Secret(f) => {
                format!(
                    "CE_IPSEC_PSKSECRET (--psk-secret) at {}",
                    f.path().display()
                )
            }
            PskOrigin::Literal => "CE_IPSEC_PSK (--psk)".to_string(),
            PskOrigin::InsecureDefault => "the built-in default".to_string(),
        }
    }

    /// The file to follow for changes, if the key came from one.
    pub fn file(&self) -> Option<&PskFile> {
        match self {
            PskOrigin::File(f) | PskOrigin::Secret(f) => Some(f),
            PskOrigin::Literal | PskOrigin::InsecureDefault => None,
        }
    }
}

/// Which endpoint source (`--broker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BrokerKind {
    /// A directory shared by the gateways (a shared volume, or one machine).
    File,
    /// Submariner's Endpoint objects in Kubernetes (a drop-in submariner-gateway).
    Kubernetes,
    /// An etcd cluster.
    Etcd,
}

/// The endpoint source, as configured.
#[derive(Debug, Clone)]
pub enum BrokerPlan {
    File {
        dir: PathBuf,
        /// `--broker-dir-create`: create it before the gateway starts.
        create: bool,
        rescan_interval: Duration,
    },
    /// Submariner's objects through the Kubernetes API, with Lease leader election.
    Kubernetes(Box<wgcable_k8s::KubernetesConfig>),
    /// `--broker etcd` (boxed: the configuration is much larger than the other variants).
    Etcd(Box<wgcable_etcd::EtcdConfig>),
}

impl BrokerPlan {
    fn describe(&self) -> String {
        match self {
            BrokerPlan::File {
                dir,
                create,
                rescan_interval,
            } => format!(
                "file {}{} (rescan every {})",
                dir.display(),
                if *create { ", to be created" } else { "" },
                humantime::format_duration(*rescan_interval)
            ),
            BrokerPlan::Kubernetes(k) => format!(
                "kubernetes namespace {}{}, broker {}",
                k.namespace,
                match &k.local {
                    wgcable_k8s::LocalAccess::Kubeconfig(path) =>
                        format!(" (kubeconfig {})", path.display()),
                    _ => String::new(),
                },
                k.broker.as_ref().map_or_else(
                    || "none".to_owned(),
                    |b| format!("{} namespace {}", b.url(), b.remote_namespace)
                ),
            ),
            BrokerPlan::Etcd(c) => format!(
                "etcd {} under {}/endpoints/{}",
                c.endpoints.join(","),
                if c.prefix == "/" {
                    ""
                } else {
                    c.prefix.as_str()
                },
                if c.tls() { " (TLS)" } else { "" }
            ),
        }
    }
}

/// Everything `wgcable gateway` was asked for: the engine's configuration and what the binary
/// itself acts on or the engine cannot take yet.
#[derive(Debug)]
pub struct GatewayPlan {
    /// What the engine runs with.
    pub config: GatewayConfig,
    /// `--namespace` / `SUBMARINER_NAMESPACE`, for the published Endpoint.
    pub namespace: Option<String>,
    /// `--pod-name` / `POD_NAME`.
    pub pod_name: Option<String>,
    /// Every public address, one per IP family (the engine publishes the first today).
    pub public_ips: Vec<IpAddr>,
    /// Where the pre-shared key came from.
    pub psk_origin: PskOrigin,
    /// PSK sources that were set but lost to a higher one (for a warning).
    pub psk_ignored: Vec<&'static str>,
    /// Weak pre-shared keys are accepted (`--insecure-default-psk`), also on a refresh.
    pub insecure_psk: bool,
    /// The endpoint source.
    pub broker: BrokerPlan,
    /// `--check-config`: print [`GatewayPlan::summary`] instead of running.
    pub check_only: bool,
}

impl GatewayPlan {
    /// The configuration in operator terms, one `key: value` per line (no secrets).
    pub fn summary(&self) -> String {
        let c = &self.config;
        let d = &c.driver;
        let list = |items: Vec<String>| {
            if items.is_empty() {
                "-".to_string()
            } else {
                items.join(",")
            }
        };
        let lines = [
            ("cluster-id", d.cluster_id.clone()),
            (
                "namespace",
                self.namespace.clone().unwrap_or_else(|| "-".into()),
            ),
            ("hostname", d.hostname.clone()),
            (
                "pod-name",
                self.pod_name.clone().unwrap_or_else(|| "-".into()),
            ),
            (
                "subnets",
                list(d.local_subnets.iter().map(|n| n.to_string()).collect()),
            ),
            ("private-ip", d.private_ip.to_string()),
            (
                "public-ip",
                list(self.public_ips.iter().map(|ip| ip.to_string()).collect()),
            ),
            ("nat", d.nat.to_string()),
            (
                "health-check-ip",
                list(d.health_check_ips.iter().map(|ip| ip.to_string()).collect()),
            ),
            ("port", d.listen_port.to_string()),
            ("psk", format!("from {}", self.psk_origin.describe())),
            ("device", d.device.clone()),
            ("backend", c.backend.to_string()),
            ("table", d.table.to_string()),
            ("rule-priority", d.rule_priority.to_string()),
            (
                "mtu",
                d.mtu.map_or_else(|| "auto".to_string(), |m| m.to_string()),
            ),
            ("broker", self.broker.describe()),
            ("state-dir", c.state_dir.display().to_string()),
            ("metrics-addr", c.metrics_addr.to_string()),
            (
                "status-interval",
                humantime::format_duration(c.status_interval).to_string(),
            ),
            (
                "resync-interval",
                humantime::format_duration(c.resync_interval).to_string(),
            ),
            (
                "health-check",
                match &c.health_check {
                    Some(hc) => format!(
                        "every {}, error after {} lost",
                        humantime::format_duration(hc.interval),
                        hc.max_lost
                    ),
                    None => "off".to_string(),
                },
            ),
        ];
        lines.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
    }
}

/// The message for a PSK that is missing or weak: what is wrong and every way to set one.
fn psk_help(problem: &str) -> UsageError {
    usage(format!(
        "{problem}. Set the same secret on every gateway of the deployment, e.g. one made with \
         `openssl rand -base64 48`: in a mounted Secret (CE_IPSEC_PSKSECRET=<secret name>, key \
         `psk`, or --psk-file <path>), or in CE_IPSEC_PSK / --psk. For a throwaway demo, \
         --insecure-default-psk accepts Submariner's well-known default"
    ))
}

impl GatewayArgs {
    /// Turns the flags into the engine's configuration; every mistake is a usage error. Reads
    /// files (the PSK, the key file, the directories' types) but changes nothing.
    pub fn into_plan(self) -> Result<GatewayPlan, UsageError> {
        let min = Duration::from_millis(100);
        for (flag, d) in [
            ("--status-interval", self.status_interval),
            ("--resync-interval", self.resync_interval),
            ("--rescan-interval", self.rescan_interval),
            (
                "--health-check-interval (SUBMARINER_HEALTHCHECKINTERVAL)",
                self.health_check_interval,
            ),
        ] {
            if d < min {
                return Err(usage(format!(
                    "{flag} {d:?} is too short; use at least 100ms"
                )));
            }
        }

        let subnets = self.local_subnets()?;
        check_overlaps(&subnets)?;

        let public_ips = self.public_ip.map(|p| p.0).unwrap_or_default();
        if self.nat && public_ips.is_empty() {
            return Err(usage(
                "--nat (SUBMARINER_NATENABLED) needs --public-ip (SUBMARINER_PUBLICIP): remote \
                 gateways reach a gateway behind NAT on its public IP, and an empty one would be \
                 published",
            ));
        }

        let (preshared_key, psk_origin, psk_ignored) = resolve_psk(
            self.psk,
            self.psk_file,
            self.psk_secret,
            self.insecure_default_psk,
        )?;

        check_namespace(self.namespace.as_deref())?;
        let hostname = match self.hostname {
            Some(h) if !h.is_empty() => h,
            _ => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "localhost".into()),
        };
        if hostname.len() > 253 || hostname.chars().any(|c| c.is_control() || c == ' ') {
            return Err(usage(
                "--hostname (NODE_NAME) must be a node name: at most 253 characters, no spaces",
            ));
        }

        let driver = DriverConfig {
            cluster_id: self.cluster_id,
            hostname,
            local_subnets: subnets,
            private_ip: match self.private_ip {
                Some(ip) => ip,
                None => detect_private_ip()?,
            },
            public_ips: public_ips.clone(),
            namespace: self.namespace.clone(),
            nat: self.nat,
            health_check_ips: self.health_check_ip,
            listen_port: self.port,
            preshared_key,
            device: self.device,
            table: self.table,
            rule_priority: self.rule_priority,
            mtu: self.mtu,
        };
        driver.validate().map_err(|e| usage(e.to_string()))?;

        check_state_dir(&self.state_dir)?;
        if let Some(dir) = &self.private_key_dir {
            match KeyStore::read_only(dir).load() {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(usage(format!(
                        "--private-key-dir {}: there is no private.key in it; mount the Secret holding the key there (or leave the flag out to keep the key in --state-dir)",
                        dir.display()
                    )))
                }
                Err(e) => {
                    return Err(usage(format!(
                        "--private-key-dir {}: {}",
                        dir.display(),
                        chain(&e)
                    )))
                }
            }
        }
        let broker = match self.broker {
            BrokerKind::File => {
                let Some(dir) = self.broker_dir else {
                    return Err(usage(
                        "--broker file needs --broker-dir: the directory the gateways share their Endpoints through",
                    ));
                };
                let create = check_broker_dir(&dir, self.broker_dir_create)?;
                BrokerPlan::File {
                    dir,
                    create,
                    rescan_interval: self.rescan_interval,
                }
            }
            BrokerKind::Kubernetes => BrokerPlan::Kubernetes(Box::new(kubernetes_config(
                &driver,
                self.pod_name.as_deref(),
                &self.cluster_cidr,
                &self.service_cidr,
                self.kubeconfig.as_deref(),
            )?)),
            BrokerKind::Etcd => BrokerPlan::Etcd(Box::new(self.etcd.config(&driver.cluster_id)?)),
        };

        Ok(GatewayPlan {
            config: GatewayConfig {
                driver,
                backend: self.backend,
                state_dir: self.state_dir,
                key_dir: self.private_key_dir,
                metrics_addr: self
                    .metrics_addr
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], self.metrics_port))),
                status_interval: self.status_interval,
                resync_interval: self.resync_interval,
                health_check: self.health_check.then_some(
                    wgcable_engine::gateway::HealthCheckConfig {
                        interval: self.health_check_interval,
                        max_lost: self.health_check_max_lost,
                    },
                ),
                admission: wgcable_broker::admission::AdmissionConfig::default(),
                psk_refresh: psk_origin
                    .file()
                    .map(|file| wgcable_engine::gateway::PskRefresh {
                        file: file.clone(),
                        allow_weak: self.insecure_default_psk,
                    }),
                build: wgcable_engine::gateway::BuildInfo {
                    version: crate::build::VERSION_NUMBER.to_owned(),
                    git_commit: crate::build::GIT_COMMIT.to_owned(),
                },
            },
            namespace: self.namespace,
            pod_name: self.pod_name.filter(|p| !p.is_empty()),
            public_ips,
            psk_origin,
            psk_ignored,
            insecure_psk: self.insecure_default_psk,
            broker,
            check_only: self.check_config,
        })
    }

    /// `--subnets`, else Submariner's service CIDRs then cluster CIDRs (upstream's order).
    fn local_subnets(&self) -> Result<Vec<IpNet>, UsageError> {
        if !self.subnets.is_empty() {
            return Ok(self.subnets.clone());
        }
        let from_env: Vec<IpNet> = self
            .service_cidr
            .iter()
            .chain(&self.cluster_cidr)
            .flat_map(|list| list.0.iter().copied())
            .collect();
        if from_env.is_empty() {
            return Err(usage(
                "no local subnets: give --subnets, or set SUBMARINER_CLUSTERCIDR and/or \
                 SUBMARINER_SERVICECIDR (--cluster-cidr, --service-cidr) to the cluster's pod and \
                 service CIDRs",
            ));
        }
        Ok(from_env)
    }
}

/// Picks the pre-shared key: `--psk-file`, else `CE_IPSEC_PSKSECRET`, else `CE_IPSEC_PSK`;
/// refuses an empty one or Submariner's default unless `insecure`.
fn resolve_psk(
    literal: Option<String>,
    file: Option<PathBuf>,
    secret: Option<String>,
    insecure: bool,
) -> Result<(PresharedKey, PskOrigin, Vec<&'static str>), UsageError> {
    let file = file.filter(|p| !p.as_os_str().is_empty());
    let secret = secret.filter(|s| !s.is_empty());
    let mut ignored = Vec::new();
    let origin = if let Some(path) = file {
        if secret.is_some() {
            ignored.push("CE_IPSEC_PSKSECRET (--psk-secret)");
        }
        if literal.is_some() {
            ignored.push("CE_IPSEC_PSK (--psk)");
        }
        PskOrigin::File(PskFile::new(path))
    } else if let Some(secret) = secret {
        if literal.is_some() {
            ignored.push("CE_IPSEC_PSK (--psk)");
        }
        PskOrigin::Secret(PskFile::from_secret(&secret))
    } else if literal.is_some() {
        PskOrigin::Literal
    } else if insecure {
        PskOrigin::InsecureDefault
    } else {
        return Err(psk_help("no pre-shared key is set"));
    };
    let passphrase = match (&origin, &literal) {
        (PskOrigin::File(f) | PskOrigin::Secret(f), _) => {
            let (text, _) = f
                .read_passphrase()
                .map_err(|e| usage(format!("{}: {}", origin.describe(), chain(&e))))?;
            text
        }
        (PskOrigin::Literal, Some(text)) => zeroize::Zeroizing::new(text.clone()),
        _ => zeroize::Zeroizing::new(String::new()),
    };
    match wgcable_keys::check_passphrase(&passphrase) {
        Ok(()) => {}
        Err(_) if insecure => {}
        Err(e) => return Err(psk_help(&format!("{}: {}", origin.describe(), chain(&e)))),
    }
    // Submariner's behaviour before its hardening: an unset or empty PSK meant "default psk".
    let key = if passphrase.is_empty() {
        PresharedKey::from_passphrase(wgcable_keys::DEFAULT_PSK)
    } else {
        PresharedKey::from_passphrase(&passphrase)
    };
    Ok((key, origin, ignored))
}

/// Refuses two local subnets that overlap (or repeat): the remote side could not tell which of
/// the two a destination belongs to, and one of them is a mistake.
fn check_overlaps(subnets: &[IpNet]) -> Result<(), UsageError> {
    for (i, a) in subnets.iter().enumerate() {
        for b in &subnets[i + 1..] {
            let a_n = a.trunc();
            let b_n = b.trunc();
            if a_n.contains(&b_n.network()) || b_n.contains(&a_n.network()) {
                return Err(usage(format!(
                    "local subnets {a} and {b} overlap; list each of the cluster's pod and service CIDRs once (--subnets, or SUBMARINER_CLUSTERCIDR / SUBMARINER_SERVICECIDR)"
                )));
            }
        }
    }
    Ok(())
}

/// The state directory must be a directory (created if missing), and a key file already in it
/// must be usable: both are found here rather than after the device was created.
fn check_state_dir(dir: &Path) -> Result<(), UsageError> {
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(usage(format!(
            "--state-dir {d} is not a directory, so the private key {k} cannot be kept there; \
             point --state-dir at a directory (it is created when missing)",
            d = dir.display(),
            k = dir.join(wgcable_keys::KEY_FILE_NAME).display()
        ))),
        Ok(_) => match KeyStore::new(dir).load() {
            Ok(_) => Ok(()),
            Err(e) => Err(usage(format!(
                "--state-dir {}: {}",
                dir.display(),
                chain(&e)
            ))),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(usage(format!(
            "--state-dir {d}: cannot use it for the private key {k}: {e}",
            d = dir.display(),
            k = dir.join(wgcable_keys::KEY_FILE_NAME).display()
        ))),
    }
}

/// The Kubernetes side's configuration: Submariner's environment (`BROKER_K8S_*`,
/// `LEADERSHIP_*`, the CIDRs) with the values these flags settled on in its place.
fn kubernetes_config(
    driver: &DriverConfig,
    pod_name: Option<&str>,
    cluster_cidr: &Option<CidrList>,
    service_cidr: &Option<CidrList>,
    kubeconfig: Option<&Path>,
) -> Result<wgcable_k8s::KubernetesConfig, UsageError> {
    let cidrs = |list: &Option<CidrList>| {
        list.as_ref().map(|l| {
            l.0.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
    };
    let (cluster_cidr, service_cidr) = (cidrs(cluster_cidr), cidrs(service_cidr));
    let lookup = |key: &str| match key {
        "SUBMARINER_CLUSTERID" => Some(driver.cluster_id.clone()),
        "SUBMARINER_NAMESPACE" => driver.namespace.clone(),
        "NODE_NAME" => Some(driver.hostname.clone()),
        "POD_NAME" => pod_name.map(str::to_owned),
        "SUBMARINER_CLUSTERCIDR" => cluster_cidr.clone(),
        "SUBMARINER_SERVICECIDR" => service_cidr.clone(),
        "KUBECONFIG" => kubeconfig.map(|p| p.display().to_string()),
        other => std::env::var(other).ok(),
    };
    // The Lease identity is this host's name, as Submariner's (`os.Hostname()`).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| driver.hostname.clone());
    let mut config = wgcable_k8s::KubernetesConfig::from_lookup(
        lookup,
        &host,
        std::path::Path::new(wgcable_k8s::config::SECRET_ROOT),
    )
    .map_err(|e| usage(format!("--broker kubernetes: {e}")))?;
    if let Some(path) = kubeconfig {
        config.local = wgcable_k8s::LocalAccess::Kubeconfig(path.to_owned());
    }
    config.version = crate::build::VERSION_NUMBER.to_owned();
    Ok(config)
}

/// `--namespace` / `SUBMARINER_NAMESPACE` must be a Kubernetes namespace name.
fn check_namespace(namespace: Option<&str>) -> Result<(), UsageError> {
    match namespace {
        Some(ns) if !is_dns_label(ns) => Err(usage(format!(
            "--namespace (SUBMARINER_NAMESPACE) {ns:?} is not a Kubernetes namespace name (a DNS label: lowercase letters, digits and '-', at most 63)"
        ))),
        _ => Ok(()),
    }
}

/// The address this host's routing uses towards other networks: what Submariner's gateway
/// publishes as its private IP when none is configured. The UDP socket is only connected (a
/// route lookup), never sent on; 192.0.2.1 is TEST-NET-1, routed like any outside address and
/// nobody's.
fn detect_private_ip() -> Result<IpAddr, UsageError> {
    let no_route = |e: std::io::Error| {
        usage(format!(
            "--private-ip is not given and this host has no route to other networks to find it by ({e}); give --private-ip"
        ))
    };
    let socket = std::net::UdpSocket::bind(("0.0.0.0", 0)).map_err(no_route)?;
    socket.connect(("192.0.2.1", 4500)).map_err(no_route)?;
    let ip = socket.local_addr().map_err(no_route)?.ip();
    if ip.is_unspecified() {
        return Err(usage(
            "--private-ip is not given and none could be found; give --private-ip",
        ));
    }
    Ok(ip)
}

/// `--broker-dir` must be an existing directory: a path that does not exist is more likely a
/// typo in a shared-storage path (which would leave the gateway alone) than a wish. Returns
/// whether it is to be created (`--broker-dir-create`).
fn check_broker_dir(dir: &Path, create: bool) -> Result<bool, UsageError> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(false),
        Ok(_) => Err(usage(format!(
            "--broker-dir {} is a file, not a directory; give the shared directory the gateways exchange Endpoints through",
            dir.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(usage(format!(
            "--broker-dir {} does not exist; check the path (every gateway must use the same shared directory), or add --broker-dir-create to create it",
            dir.display()
        ))),
        Err(e) => Err(usage(format!("--broker-dir {}: {e}", dir.display()))),
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The error and its causes on one line (the workspace's one formatter).
fn chain(e: &KeyError) -> String {
    wgcable_api::error_chain(e)
}

/// Checks, before clap parses, the environment variables behind the invoked subcommand's flags.
///
/// clap reports a bad value from the environment as if it were the flag's ("invalid value 'abc'
/// for '--port <PORT>'"), which sends the user looking at a command line that does not have it;
/// this names the variable. An empty variable is treated as unset, as Submariner's envconfig
/// does (its operator sets some to ""), by removing it from the environment.
pub fn check_environment(cmd: &clap::Command, argv: &[OsString]) -> Result<(), String> {
    let args: Vec<&str> = argv.iter().skip(1).filter_map(|a| a.to_str()).collect();
    if args
        .iter()
        .any(|a| matches!(*a, "-h" | "--help" | "-V" | "--version" | "help"))
    {
        return Ok(());
    }
    // The invoked subcommand chain, found by name among the arguments.
    let mut invoked = vec![cmd];
    let mut current = cmd;
    for arg in &args {
        if let Some(sub) = current.find_subcommand(arg) {
            invoked.push(sub);
            current = sub;
        }
    }
    let given = |long: &str| {
        args.iter().any(|a| {
            a.strip_prefix("--")
                .is_some_and(|rest| rest == long || rest.starts_with(&format!("{long}=")))
        })
    };
    let mut problems = Vec::new();
    for command in invoked {
        for arg in command.get_arguments() {
            let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) else {
                continue;
            };
            let Some(value) = std::env::var_os(var) else {
                continue;
            };
            if value.is_empty() {
                // Rust 2021: removing a variable is safe; nothing else runs yet.
                std::env::remove_var(var);
                continue;
            }
            if given(long) {
                continue;
            }
            // The flag's own parser, run on the variable's value through a command holding just
            // this flag (clap does not expose a parser on its own).
            let mut flag = OsString::from(format!("--{long}="));
            flag.push(&value);
            let probe = clap::Command::new("env")
                .no_binary_name(true)
                .arg(arg.clone().required(false).env(None::<&str>))
                .try_get_matches_from([flag]);
            if let Err(e) = probe {
                let reason = match (
                    std::error::Error::source(&e),
                    e.get(ContextKind::ValidValue),
                ) {
                    (Some(source), _) => source.to_string(),
                    (None, Some(ContextValue::Strings(valid))) => {
                        format!("possible values: {}", valid.join(", "))
                    }
                    _ => e.kind().to_string(),
                };
                let shown = if arg.is_hide_env_values_set() {
                    "(hidden)".to_string()
                } else {
                    format!("'{}'", value.to_string_lossy())
                };
                problems.push(format!(
                    "invalid value {shown} in environment variable {} (read for --{long}): {reason}",
                    var.to_string_lossy()
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\nerror: "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_parse_as_gos_strconv_parse_bool() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(t), Ok(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(f), Ok(false), "{f}");
        }
        for bad in ["yes", "no", "on", "tRUE", "", " true", "2"] {
            assert!(parse_go_bool(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_take_bare_seconds_and_units() {
        assert_eq!(seconds_or_duration("1"), Ok(Duration::from_secs(1)));
        assert_eq!(seconds_or_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(seconds_or_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(seconds_or_duration("soon").is_err());
    }

    #[test]
    fn public_ips_take_literals_and_refuse_resolvers() {
        let ips = |s| parse_public_ips(s).map(|p| p.0);
        assert_eq!(
            ips("203.0.113.7"),
            Ok(vec!["203.0.113.7".parse().expect("ip")])
        );
        assert_eq!(
            ips("ipv4:203.0.113.7, ipv6:2001:db8::7,ipv4:198.51.100.1"),
            Ok(vec![
                "203.0.113.7".parse().expect("ip"),
                "2001:db8::7".parse().expect("ip")
            ])
        );
        assert_eq!(
            ips("2001:db8::7"),
            Ok(vec!["2001:db8::7".parse().expect("ip")])
        );
        assert_eq!(ips(""), Ok(vec![]));
        let err = ips("api:ip4.seeip.org,ipv4:1.2.3.4").expect_err("api");
        assert!(err.contains("api: resolver is not supported"), "{err}");
        let err = ips("lb:submariner-gateway").expect_err("lb");
        assert!(err.contains("lb: resolver"), "{err}");
        assert!(ips("ipv4:2001:db8::7").is_err());
        assert!(ips("gateway.example").is_err());
    }

    #[test]
    fn cidr_lists_are_comma_separated_with_spaces_allowed() {
        assert_eq!(
            parse_cidr_list("10.42.0.0/16, fd00:42::/56,").map(|l| l.0),
            Ok(vec![
                "10.42.0.0/16".parse().expect("cidr"),
                "fd00:42::/56".parse().expect("cidr")
            ])
        );
        let err = parse_cidr_list("10.42.0.0/16,10.43.0.0/33").expect_err("bad");
        assert!(err.contains("10.43.0.0/33"), "{err}");
    }

    #[test]
    fn overlapping_subnets_are_found_in_either_order() {
        let nets = |list: &[&str]| -> Vec<IpNet> {
            list.iter().map(|s| s.parse().expect("cidr")).collect()
        };
        for bad in [
            &["10.42.0.0/16", "10.42.128.0/17"][..],
            &["10.42.128.0/17", "10.42.0.0/16"],
            &["10.42.0.0/16", "10.43.0.0/16", "10.42.0.0/16"],
            &["fd00:42::/56", "fd00:42:0:1::/64"],
        ] {
            let err = check_overlaps(&nets(bad)).expect_err("overlap");
            assert!(err.0.contains("overlap"), "{err}");
        }
        check_overlaps(&nets(&["10.42.0.0/16", "10.43.0.0/16", "fd00:42::/56"])).expect("disjoint");
        // An IPv4 and an IPv6 subnet never overlap, even where their bits would.
        check_overlaps(&nets(&["0.0.0.0/8", "::/8"])).expect("families differ");
    }

    #[test]
    fn the_psk_file_wins_then_the_secret_then_the_literal() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("psk-file");
        std::fs::write(&file, "from-file\n").expect("write");
        let secret = tmp.path().join("secret");
        std::fs::create_dir(&secret).expect("mkdir");
        std::fs::write(secret.join("psk"), "from-secret").expect("write");
        let secret = secret.to_string_lossy().into_owned();

        let (key, origin, ignored) = resolve_psk(
            Some("literal".into()),
            Some(file.clone()),
            Some(secret.clone()),
            false,
        )
        .expect("file");
        assert_eq!(key, PresharedKey::from_passphrase("from-file"));
        assert!(matches!(origin, PskOrigin::File(_)));
        assert_eq!(ignored.len(), 2);

        let (key, origin, ignored) =
            resolve_psk(Some("literal".into()), None, Some(secret), false).expect("secret");
        assert_eq!(key, PresharedKey::from_passphrase("from-secret"));
        assert!(matches!(origin, PskOrigin::Secret(_)));
        assert_eq!(ignored, ["CE_IPSEC_PSK (--psk)"]);

        let (key, origin, ignored) =
            resolve_psk(Some("literal".into()), None, None, false).expect("literal");
        assert_eq!(key, PresharedKey::from_passphrase("literal"));
        assert_eq!(origin, PskOrigin::Literal);
        assert!(ignored.is_empty());
        assert_eq!(origin.file(), None);
    }

    #[test]
    fn weak_or_missing_psks_are_refused_unless_insecure() {
        for (literal, fragment) in [
            (None, "no pre-shared key is set"),
            (Some(""), "is empty"),
            (Some("default psk"), "well-known default"),
        ] {
            let err = resolve_psk(literal.map(String::from), None, None, false).expect_err("weak");
            assert!(err.0.contains(fragment), "{err}");
            assert!(err.0.contains("CE_IPSEC_PSKSECRET"), "{err}");
            assert!(err.0.contains("--insecure-default-psk"), "{err}");
            let (key, _, _) =
                resolve_psk(literal.map(String::from), None, None, true).expect("insecure");
            // Unset or empty meant "default psk" in Submariner before its hardening.
            assert_eq!(
                key,
                PresharedKey::from_passphrase(wgcable_keys::DEFAULT_PSK)
            );
        }
    }
}

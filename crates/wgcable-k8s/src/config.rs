//! The Kubernetes side's configuration, read from a Submariner gateway pod's environment.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::Error;

/// Submariner's namespace when `SUBMARINER_NAMESPACE` is not set.
pub const DEFAULT_NAMESPACE: &str = "submariner-operator";
/// Where the operator mounts secrets named by `BROKER_K8S_SECRET` (admiral's `SecretPath`).
pub const SECRET_ROOT: &str = "/run/secrets/submariner.io";
/// The Lease gateways of one cluster elect their leader with.
pub const LEASE_NAME: &str = "submariner-gateway-lock";
/// The default Lease timings of Submariner's gateway (client-go's usual 15/10/2 s).
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// How the gateway reaches its own cluster's API server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalAccess {
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`, the mounted token and CA).
    InCluster,
    /// A kubeconfig file (development, or a gateway outside the cluster).
    Kubeconfig(PathBuf),
    /// In-cluster when available, else `$KUBECONFIG` or `~/.kube/config`.
    Infer,
}

/// Lease timings (`LEADERSHIP_LEASEDURATION`, `LEADERSHIP_RENEWDEADLINE`,
/// `LEADERSHIP_RETRYPERIOD`, whole seconds, as Submariner reads them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimings {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        LeaseTimings {
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }
}

impl LeaseTimings {
    /// client-go's own checks: lease duration > renew deadline > retry period * 1.2 (its jitter
    /// factor), all positive.
    pub fn validate(&self) -> Result<(), Error> {
        let ok = !self.retry_period.is_zero()
            && self.lease_duration > self.renew_deadline
            && self.renew_deadline > self.retry_period.mul_f64(1.2);
        if ok {
            Ok(())
        } else {
            Err(Error::Config {
                message: format!(
                    "leader election timings lease {:?}, renew deadline {:?}, retry period {:?} are inconsistent; \
                     the lease must outlast the renew deadline, which must exceed 1.2 retry periods (defaults 15/10/2 s)",
                    self.lease_duration, self.renew_deadline, self.retry_period
                ),
            })
        }
    }
}

/// Access to the broker cluster (`BROKER_K8S_*`).
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// `BROKER_K8S_APISERVER`: `host:port` or a URL.
    pub api_server: String,
    /// `BROKER_K8S_APISERVERTOKEN`, or `token` from the mounted `BROKER_K8S_SECRET`.
    pub token: Option<String>,
    /// The CA bundle (PEM): `BROKER_K8S_CA` (base64, as the operator passes it), or `ca.crt`
    /// from the mounted secret.
    pub ca_pem: Option<Vec<u8>>,
    /// `BROKER_K8S_INSECURE`: skip TLS verification (never in production).
    pub insecure: bool,
    /// `BROKER_K8S_REMOTENAMESPACE`: where the broker keeps every cluster's objects.
    pub remote_namespace: String,
}

// By hand: the token is a credential and never printed.
impl fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("api_server", &self.api_server)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field(
                "ca_pem",
                &self.ca_pem.as_ref().map(|c| format!("<{} bytes>", c.len())),
            )
            .field("insecure", &self.insecure)
            .field("remote_namespace", &self.remote_namespace)
            .finish()
    }
}

impl BrokerConfig {
    /// The broker's URL (`https://` added to a bare `host:port`, as admiral does).
    pub fn url(&self) -> String {
        if self.api_server.contains("://") {
            self.api_server.clone()
        } else {
            format!("https://{}", self.api_server)
        }
    }

    /// A kube client for the broker.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        use base64::Engine as _;
        let mut cluster = json!({"server": self.url()});
        if let Some(ca) = &self.ca_pem {
            cluster["certificate-authority-data"] =
                json!(base64::engine::general_purpose::STANDARD.encode(ca));
        }
        if self.insecure {
            cluster["insecure-skip-tls-verify"] = json!(true);
        }
        let mut user = json!({});
        if let Some(token) = &self.token {
            user["token"] = json!(token);
        }
        let kubeconfig: kube::config::Kubeconfig = serde_json::from_value(json!({
            "clusters": [{"name": "broker", "cluster": cluster}],
            "users": [{"name": "broker", "user": user}],
            "contexts": [{"name": "broker", "context": {"cluster": "broker", "user": "broker", "namespace": self.remote_namespace}}],
            "current-context": "broker",
        }))
        .map_err(|source| Error::Encode {
            what: "the broker's client configuration",
            source,
        })?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|e| Error::Config {
                message: format!(
                    "configuring access to the broker at {}: {e}; check BROKER_K8S_APISERVER and BROKER_K8S_CA",
                    self.url()
                ),
            })?;
        kube::Client::try_from(config).map_err(Error::kube("creating the broker's API client"))
    }
}

/// Everything the Kubernetes source, the Gateway status writer and the Lease elector need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// `SUBMARINER_NAMESPACE`: where Endpoints, Clusters, Gateways and the Lease live.
    pub namespace: String,
    /// `SUBMARINER_CLUSTERID`.
    pub cluster_id: String,
    /// `NODE_NAME`: the gateway node (Endpoint `hostname`, Gateway name, pod label).
    pub node_name: String,
    /// `POD_NAME`: the gateway's own pod, labelled active/passive; `None` outside a pod.
    pub pod_name: Option<String>,
    /// This host's name: the Lease holder identity is `<hostname>-submariner-gateway`.
    pub hostname: String,
    /// `SUBMARINER_CLUSTERCIDR`, `SUBMARINER_SERVICECIDR`, `SUBMARINER_GLOBALCIDR`
    /// (comma-separated) for the Cluster object.
    pub cluster_cidrs: Vec<String>,
    pub service_cidrs: Vec<String>,
    pub global_cidrs: Vec<String>,
    pub local: LocalAccess,
    /// `None`: no broker (a single cluster, or the broker is this cluster's own namespace).
    pub broker: Option<BrokerConfig>,
    pub lease: LeaseTimings,
    /// How often the Endpoint watch is relisted from scratch (repairs anything missed).
    pub resync_interval: Duration,
    /// What the Gateway status reports as `version`.
    pub version: String,
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl KubernetesConfig {
    /// Reads the process environment (and the mounted broker secret, if named).
    pub fn from_env() -> Result<Self, Error> {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned());
        Self::from_lookup(
            |key| std::env::var(key).ok(),
            &hostname,
            Path::new(SECRET_ROOT),
        )
    }

    /// Reads configuration through `lookup` (an environment), with `hostname` for the Lease
    /// identity and `secret_root` where `BROKER_K8S_SECRET` is mounted.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        hostname: &str,
        secret_root: &Path,
    ) -> Result<Self, Error> {
        let get = |key: &str| lookup(key).filter(|v| !v.is_empty());
        let mut problems = Vec::new();
        let bool_of = |key: &str, problems: &mut Vec<String>| match get(key) {
            None => false,
            Some(v) => parse_bool(&v).unwrap_or_else(|| {
                problems.push(format!("{key} must be a boolean (true, false, 1, 0, t, f)"));
                false
            }),
        };
        let seconds = |key: &str, default: Duration, problems: &mut Vec<String>| match get(key) {
            None => default,
            Some(v) => match v.parse::<u64>() {
                Ok(s) if s > 0 => Duration::from_secs(s),
                _ => {
                    problems.push(format!("{key} must be a positive number of seconds"));
                    default
                }
            },
        };

        let cluster_id = get("SUBMARINER_CLUSTERID").unwrap_or_default();
        if cluster_id.is_empty() {
            problems.push("SUBMARINER_CLUSTERID is not set; it names this cluster".to_owned());
        }
        let node_name = get("NODE_NAME").unwrap_or_else(|| hostname.to_owned());
        let lease = LeaseTimings {
            lease_duration: seconds(
                "LEADERSHIP_LEASEDURATION",
                DEFAULT_LEASE_DURATION,
                &mut problems,
            ),
            renew_deadline: seconds(
                "LEADERSHIP_RENEWDEADLINE",
                DEFAULT_RENEW_DEADLINE,
                &mut problems,
            ),
            retry_period: seconds(
                "LEADERSHIP_RETRYPERIOD",
                DEFAULT_RETRY_PERIOD,
                &mut problems,
            ),
        };
        if let Err(e) = lease.validate() {
            problems.push(e.to_string());
        }

        let broker = match get("BROKER_K8S_APISERVER") {
            None => None,
            Some(api_server) => {
                let mut token = get("BROKER_K8S_APISERVERTOKEN");
                let mut ca_pem = None;
                if let Some(ca) = get("BROKER_K8S_CA") {
                    use base64::Engine as _;
                    match base64::engine::general_purpose::STANDARD.decode(ca.trim()) {
                        Ok(pem) => ca_pem = Some(pem),
                        Err(_) => problems.push(
                            "BROKER_K8S_CA is not base64; it holds the broker's CA bundle (PEM) base64-encoded".to_owned(),
                        ),
                    }
                }
                if let Some(secret) = get("BROKER_K8S_SECRET") {
                    let dir = secret_root.join(&secret);
                    match read_secret_file(&dir, "token") {
                        Ok(Some(t)) => token = Some(String::from_utf8_lossy(&t).trim().to_owned()),
                        Ok(None) => {}
                        Err(e) => problems.push(e.to_string()),
                    }
                    match read_secret_file(&dir, "ca.crt") {
                        Ok(Some(ca)) => ca_pem = Some(ca),
                        Ok(None) => {}
                        Err(e) => problems.push(e.to_string()),
                    }
                    if !dir.is_dir() {
                        problems.push(format!(
                            "BROKER_K8S_SECRET names {secret:?} but {} is not mounted",
                            dir.display()
                        ));
                    }
                }
                let remote_namespace = get("BROKER_K8S_REMOTENAMESPACE").unwrap_or_default();
                if remote_namespace.is_empty() {
                    problems.push(
                        "BROKER_K8S_REMOTENAMESPACE is not set; it names the broker namespace"
                            .to_owned(),
                    );
                }
                Some(BrokerConfig {
                    api_server,
                    token,
                    ca_pem,
                    insecure: bool_of("BROKER_K8S_INSECURE", &mut problems),
                    remote_namespace,
                })
            }
        };

        let local = match get("KUBECONFIG") {
            Some(path) if get("KUBERNETES_SERVICE_HOST").is_none() => {
                LocalAccess::Kubeconfig(PathBuf::from(path))
            }
            _ => LocalAccess::Infer,
        };

        if !problems.is_empty() {
            return Err(Error::Config {
                message: problems.join("; "),
            });
        }
        Ok(KubernetesConfig {
            namespace: get("SUBMARINER_NAMESPACE").unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            cluster_id,
            node_name,
            pod_name: get("POD_NAME"),
            hostname: hostname.to_owned(),
            cluster_cidrs: get("SUBMARINER_CLUSTERCIDR")
                .map(|v| split_list(&v))
                .unwrap_or_default(),
            service_cidrs: get("SUBMARINER_SERVICECIDR")
                .map(|v| split_list(&v))
                .unwrap_or_default(),
            global_cidrs: get("SUBMARINER_GLOBALCIDR")
                .map(|v| split_list(&v))
                .unwrap_or_default(),
            local,
            broker,
            lease,
            resync_interval: Duration::from_secs(300),
            version: default_version(),
        })
    }

    /// The Lease holder identity, `<hostname>-submariner-gateway` as Submariner's gateway uses.
    pub fn identity(&self) -> String {
        format!("{}-submariner-gateway", self.hostname)
    }

    /// A kube client for the local cluster.
    pub async fn local_client(&self) -> Result<kube::Client, Error> {
        let config = match &self.local {
            LocalAccess::InCluster => kube::Config::incluster().map_err(|e| Error::Config {
                message: format!(
                    "reading the in-cluster configuration: {e}; run inside a pod with a service account, or pass --kubeconfig"
                ),
            })?,
            LocalAccess::Kubeconfig(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| Error::Config {
                    message: format!("reading kubeconfig {}: {e}", path.display()),
                })?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .map_err(|e| Error::Config {
                        message: format!("using kubeconfig {}: {e}", path.display()),
                    })?
            }
            LocalAccess::Infer => kube::Config::infer().await.map_err(|e| Error::Config {
                message: format!(
                    "finding the cluster's API server: {e}; run inside a pod, set KUBECONFIG or pass --kubeconfig"
                ),
            })?,
        };
        kube::Client::try_from(config).map_err(Error::kube("creating the local API client"))
    }
}

/// `wgcable-<version>`.
pub fn default_version() -> String {
    concat!("wgcable-", env!("CARGO_PKG_VERSION")).to_owned()
}

/// Reads one key of a mounted Secret; `None` when the key is absent. A Secret volume is a tree
/// of symlinks (`token -> ..data/token`); following them is what is wanted here.
fn read_secret_file(dir: &Path, key: &str) -> Result<Option<Vec<u8>>, Error> {
    let path = dir.join(key);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            action: format!("reading the broker secret's {key} at {}", path.display()),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(env: &[(&str, &str)], root: &Path) -> Result<KubernetesConfig, Error> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        KubernetesConfig::from_lookup(|k| env.get(k).cloned(), "gw-node-1", root)
    }

    #[test]
    fn go_booleans() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for bad in ["yes", "tRUE", "", " true", "2"] {
            assert_eq!(parse_bool(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_gateway_pod_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = config(
            &[
                ("SUBMARINER_NAMESPACE", "submariner-operator"),
                ("SUBMARINER_CLUSTERID", "cluster-a"),
                ("SUBMARINER_CLUSTERCIDR", "10.42.0.0/16"),
                ("SUBMARINER_SERVICECIDR", "10.43.0.0/16,fd00:43::/108"),
                ("NODE_NAME", "node-a"),
                ("POD_NAME", "submariner-gateway-x7k2p"),
                ("BROKER_K8S_APISERVER", "broker.example:6443"),
                ("BROKER_K8S_APISERVERTOKEN", "secret-token"),
                ("BROKER_K8S_REMOTENAMESPACE", "submariner-k8s-broker"),
                ("BROKER_K8S_CA", "LS0tLS1CRUdJTg=="),
                ("BROKER_K8S_INSECURE", "F"),
                ("LEADERSHIP_LEASEDURATION", "30"),
            ],
            dir.path(),
        )
        .expect("valid");
        assert_eq!(c.cluster_id, "cluster-a");
        assert_eq!(c.node_name, "node-a");
        assert_eq!(c.identity(), "gw-node-1-submariner-gateway");
        assert_eq!(c.service_cidrs, ["10.43.0.0/16", "fd00:43::/108"]);
        assert_eq!(c.lease.lease_duration, Duration::from_secs(30));
        assert_eq!(c.lease.renew_deadline, DEFAULT_RENEW_DEADLINE);
        let broker = c.broker.expect("broker configured");
        assert_eq!(broker.url(), "https://broker.example:6443");
        assert_eq!(broker.ca_pem.as_deref(), Some(&b"-----BEGIN"[..]));
        assert!(!broker.insecure);
        let debug = format!("{broker:?}");
        assert!(!debug.contains("secret-token"), "{debug}");
    }

    #[test]
    fn the_mounted_broker_secret_wins_and_is_read_through_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("broker-secret");
        let data = secret.join("..data");
        std::fs::create_dir_all(&data).expect("mkdir");
        std::fs::write(data.join("token"), "from-secret\n").expect("write");
        std::fs::write(data.join("ca.crt"), "PEM").expect("write");
        std::os::unix::fs::symlink("..data/token", secret.join("token")).expect("symlink");
        std::os::unix::fs::symlink("..data/ca.crt", secret.join("ca.crt")).expect("symlink");
        let c = config(
            &[
                ("SUBMARINER_CLUSTERID", "cluster-a"),
                ("BROKER_K8S_APISERVER", "https://broker:6443"),
                ("BROKER_K8S_APISERVERTOKEN", "from-env"),
                ("BROKER_K8S_REMOTENAMESPACE", "broker-ns"),
                ("BROKER_K8S_SECRET", "broker-secret"),
            ],
            dir.path(),
        )
        .expect("valid");
        let broker = c.broker.expect("broker");
        assert_eq!(broker.token.as_deref(), Some("from-secret"));
        assert_eq!(broker.ca_pem.as_deref(), Some(&b"PEM"[..]));
    }

    #[test]
    fn every_problem_is_reported_without_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = config(
            &[
                ("BROKER_K8S_APISERVER", "https://broker:6443"),
                ("BROKER_K8S_APISERVERTOKEN", "do-not-print"),
                ("BROKER_K8S_INSECURE", "maybe"),
                ("BROKER_K8S_SECRET", "missing"),
                ("LEADERSHIP_RETRYPERIOD", "9"),
            ],
            dir.path(),
        )
        .expect_err("invalid");
        let text = err.to_string();
        for fragment in [
            "SUBMARINER_CLUSTERID is not set",
            "BROKER_K8S_INSECURE must be a boolean",
            "BROKER_K8S_REMOTENAMESPACE is not set",
            "is not mounted",
            "inconsistent",
        ] {
            assert!(text.contains(fragment), "{fragment:?} missing from {text}");
        }
        assert!(!text.contains("do-not-print"), "{text}");
    }

    #[test]
    fn client_go_timing_rules() {
        let ok = LeaseTimings::default();
        ok.validate().expect("defaults are valid");
        let bad = LeaseTimings {
            renew_deadline: Duration::from_secs(15),
            ..ok
        };
        assert!(bad.validate().is_err());
        let bad = LeaseTimings {
            retry_period: Duration::from_secs(9),
            ..ok
        };
        assert!(bad.validate().is_err());
    }
}

//! Planning: which peers the device should have, and what to change to get there. Pure: no
//! I/O, no clock.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use wgcable_api::{NatEndpointInfo, ValidatedSpec, ValidationErrors, BACKEND_WIREGUARD};
use wgcable_keys::{PresharedKey, PublicKey};

use crate::device::{DeviceStatus, DeviceUpdate, PeerChange, PeerConfig};
use crate::prefix::PrefixIndex;

/// The default WireGuard port of Submariner (`CE_IPSEC_NATTPORT`).
pub const DEFAULT_LISTEN_PORT: u16 = 4500;

/// What the local gateway contributes to every peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPeerConfig {
    pub cluster_id: String,
    pub public_key: PublicKey,
    /// Also the remote port when a remote endpoint publishes no `udp-port`.
    pub listen_port: u16,
    /// The same for every peer, as Submariner derives it (SHA-256 of `CE_IPSEC_PSK`).
    pub preshared_key: PresharedKey,
    /// Subnets of the local cluster; no remote cluster may claim any part of them.
    pub local_subnets: Vec<IpNet>,
    /// Persistent keepalive in seconds; 0 disables it.
    pub keepalive: u16,
}

/// A peer the device should have, and the cluster it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPeer {
    pub cluster_id: String,
    pub config: PeerConfig,
    /// The address we reach the remote gateway on (the host part of `config.endpoint`).
    pub use_ip: IpAddr,
}

/// Why a remote endpoint gets no peer. Each names what is wrong with that one endpoint; the
/// caller adds which cluster it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    #[error("the endpoint is of our own cluster; a gateway never peers with its own cluster")]
    OwnCluster,
    #[error("the endpoint publishes our own WireGuard public key")]
    OwnPublicKey,
    #[error("the endpoint's public key {key} is already used by cluster {other_cluster}")]
    DuplicateKey {
        key: PublicKey,
        other_cluster: String,
    },
    #[error(
        "another endpoint of the same cluster ({other_endpoint}) came first; only one gateway \
         per cluster is peered"
    )]
    DuplicateCluster { other_endpoint: String },
    #[error("the endpoint publishes no WireGuard public key (backend_config.publicKey)")]
    MissingPublicKey,
    #[error("the endpoint uses cable driver {0:?}, not wireguard")]
    UnsupportedBackend(String),
    #[error("the endpoint is invalid")]
    InvalidEndpoint(#[source] ValidationErrors),
    #[error("the address to reach the endpoint on (use_ip {0:?}) is not an IP address")]
    InvalidUseIp(String),
    #[error(
        "the WireGuard device refused this peer ({0}); it is retried when the endpoint changes"
    )]
    DeviceRefused(String),
    #[error(
        "remote subnet {subnet} overlaps local subnet {local}; refusing it so the endpoint \
         cannot take over local traffic"
    )]
    OverlapsLocal { subnet: IpNet, local: IpNet },
    #[error(
        "remote subnet {subnet} overlaps subnet {other} of cluster {other_cluster}, which \
         claimed it first; refusing it so the endpoint cannot take over that cluster's traffic"
    )]
    OverlapsRemote {
        subnet: IpNet,
        other_cluster: String,
        other: IpNet,
    },
}

/// The outcome of [`desired_peers`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredPeers {
    pub peers: Vec<DesiredPeer>,
    /// Refused endpoints: (cluster id, why).
    pub rejected: Vec<(String, PeerError)>,
}

/// One remote cluster as planning sees it: its Endpoint validated once, on arrival, and the
/// address to reach its gateway on already decided (Submariner's `NATEndpointInfo.UseIP`,
/// typed). Nothing below this parses a string again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCandidate {
    pub cluster_id: String,
    /// The Endpoint object's name, to say which one came first in a refusal.
    pub endpoint_name: String,
    pub spec: Arc<ValidatedSpec>,
    pub use_ip: IpAddr,
}

impl PeerCandidate {
    /// A candidate from Submariner's `NATEndpointInfo` and its validated spec.
    pub fn from_nat_info(
        info: &NatEndpointInfo,
        spec: Arc<ValidatedSpec>,
    ) -> Result<Self, PeerError> {
        let use_ip: IpAddr = info
            .use_ip
            .trim()
            .parse()
            .map_err(|_| PeerError::InvalidUseIp(info.use_ip.clone()))?;
        Ok(PeerCandidate {
            cluster_id: info.endpoint.spec.cluster_id.clone(),
            endpoint_name: info.endpoint.name().to_owned(),
            spec,
            use_ip,
        })
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Allowed IPs as WireGuard stores them: host bits cleared, each once, in a stable order.
fn normalized(nets: &[IpNet]) -> BTreeSet<IpNet> {
    nets.iter().map(IpNet::trunc).collect()
}

/// What is already held by accepted peers: keys and subnets. Both planners (all at once and
/// [`PeerBook`](crate::PeerBook)) decide through [`decide`] against one of these, so they
/// cannot disagree on a rule.
pub(crate) trait Held {
    /// The accepted cluster holding `key`, if any.
    fn key_holder(&self, key: &PublicKey) -> Option<&str>;
    /// An accepted subnet overlapping `net`, and its cluster, if any.
    fn overlapping(&self, net: &IpNet) -> Option<(IpNet, &str)>;
}

/// The accepted keys and subnets of a plan made all at once.
#[derive(Debug, Default)]
struct HeldSoFar<'a> {
    keys: HashMap<PublicKey, &'a str>,
    subnets: PrefixIndex<&'a str>,
}

impl Held for HeldSoFar<'_> {
    fn key_holder(&self, key: &PublicKey) -> Option<&str> {
        self.keys.get(key).copied()
    }
    fn overlapping(&self, net: &IpNet) -> Option<(IpNet, &str)> {
        self.subnets.any_overlapping(net).map(|(n, c)| (n, *c))
    }
}

/// The local rules, which depend on the candidate alone.
pub(crate) fn check_alone(
    local: &LocalPeerConfig,
    local_subnets: &[IpNet],
    candidate: &PeerCandidate,
) -> Result<DesiredPeer, PeerError> {
    let spec = &candidate.spec;
    if candidate.cluster_id == local.cluster_id {
        return Err(PeerError::OwnCluster);
    }
    if !spec.backend.is_empty() && spec.backend != BACKEND_WIREGUARD {
        return Err(PeerError::UnsupportedBackend(spec.backend.clone()));
    }
    let public_key = spec.public_key.ok_or(PeerError::MissingPublicKey)?;
    if public_key == local.public_key {
        return Err(PeerError::OwnPublicKey);
    }
    let use_ip = candidate.use_ip;
    if use_ip.is_unspecified() || use_ip.is_multicast() {
        return Err(PeerError::InvalidUseIp(use_ip.to_string()));
    }
    let allowed_ips: Vec<IpNet> = normalized(&spec.subnets).into_iter().collect();
    for subnet in &allowed_ips {
        if let Some(local) = local_subnets.iter().find(|l| overlaps(subnet, l)) {
            return Err(PeerError::OverlapsLocal {
                subnet: *subnet,
                local: *local,
            });
        }
    }
    let port = spec.udp_port.unwrap_or(local.listen_port);
    Ok(DesiredPeer {
        cluster_id: candidate.cluster_id.clone(),
        config: PeerConfig {
            public_key,
            endpoint: Some(SocketAddr::new(use_ip, port)),
            allowed_ips,
            persistent_keepalive: (local.keepalive != 0).then_some(local.keepalive),
            preshared_key: Some(local.preshared_key.clone()),
        },
        use_ip,
    })
}

/// The rules against what earlier candidates hold: a key or a subnet is never taken from a
/// cluster that holds it.
pub(crate) fn check_held(peer: &DesiredPeer, held: &dyn Held) -> Result<(), PeerError> {
    if let Some(other_cluster) = held.key_holder(&peer.config.public_key) {
        return Err(PeerError::DuplicateKey {
            key: peer.config.public_key,
            other_cluster: other_cluster.to_owned(),
        });
    }
    for subnet in &peer.config.allowed_ips {
        if let Some((other, other_cluster)) = held.overlapping(subnet) {
            return Err(PeerError::OverlapsRemote {
                subnet: *subnet,
                other_cluster: other_cluster.to_owned(),
                other,
            });
        }
    }
    Ok(())
}

/// The peer for `candidate`, or why it gets none, given what earlier candidates hold.
pub(crate) fn decide(
    local: &LocalPeerConfig,
    local_subnets: &[IpNet],
    candidate: &PeerCandidate,
    held: &dyn Held,
) -> Result<DesiredPeer, PeerError> {
    let peer = check_alone(local, local_subnets, candidate)?;
    check_held(&peer, held)?;
    Ok(peer)
}

/// The peers the device should have for `endpoints`, and the endpoints refused.
///
/// Order is priority: when two endpoints claim overlapping subnets, the same key or the same
/// cluster, the earlier one keeps it and the later one is refused. The engine lists
/// already-connected clusters first, so a newcomer cannot hijack an established cluster's
/// traffic. A refused endpoint never affects the others.
pub fn desired_peers(local: &LocalPeerConfig, endpoints: &[NatEndpointInfo]) -> DesiredPeers {
    desired_peers_of(
        local,
        endpoints.iter().map(|info| {
            let cluster = || info.endpoint.spec.cluster_id.clone();
            let spec = info
                .endpoint
                .spec
                .validate()
                .map_err(|e| (cluster(), PeerError::InvalidEndpoint(e)))?;
            PeerCandidate::from_nat_info(info, Arc::new(spec)).map_err(|e| (cluster(), e))
        }),
    )
}

/// [`desired_peers`] for endpoints validated earlier: a caller that validates each endpoint
/// once, when it arrives, plans 10,000 of them in milliseconds (validation, which decodes keys
/// and parses every address, is most of the cost).
pub fn desired_peers_validated<'a>(
    local: &LocalPeerConfig,
    endpoints: impl IntoIterator<Item = (&'a NatEndpointInfo, &'a ValidatedSpec)>,
) -> DesiredPeers {
    desired_peers_of(
        local,
        endpoints.into_iter().map(|(info, spec)| {
            PeerCandidate::from_nat_info(info, Arc::new(spec.clone()))
                .map_err(|e| (info.endpoint.spec.cluster_id.clone(), e))
        }),
    )
}

/// The reference planner: every candidate, in priority order, decided against what the
/// earlier ones hold. [`PeerBook`](crate::PeerBook) keeps the same result up to date one
/// change at a time; its tests compare the two.
pub fn desired_peers_of(
    local: &LocalPeerConfig,
    candidates: impl IntoIterator<Item = Result<PeerCandidate, (String, PeerError)>>,
) -> DesiredPeers {
    let candidates: Vec<Result<PeerCandidate, (String, PeerError)>> =
        candidates.into_iter().collect();
    let mut out = DesiredPeers::default();
    let mut held = HeldSoFar::default();
    let mut clusters: HashMap<&str, &str> = HashMap::new();
    let local_subnets: Vec<IpNet> = local.local_subnets.iter().map(IpNet::trunc).collect();
    for candidate in &candidates {
        let candidate = match candidate {
            Ok(c) => c,
            Err(refused) => {
                out.rejected.push(refused.clone());
                continue;
            }
        };
        let result = match clusters.get(candidate.cluster_id.as_str()) {
            Some(other) => Err(PeerError::DuplicateCluster {
                other_endpoint: (*other).to_owned(),
            }),
            None => decide(local, &local_subnets, candidate, &held),
        };
        match result {
            Ok(peer) => {
                held.keys
                    .insert(peer.config.public_key, &candidate.cluster_id);
                clusters.insert(&candidate.cluster_id, &candidate.endpoint_name);
                for net in &peer.config.allowed_ips {
                    held.subnets.insert(net, &candidate.cluster_id);
                }
                out.peers.push(peer);
            }
            Err(e) => out.rejected.push((candidate.cluster_id.clone(), e)),
        }
    }
    out
}

/// The changes that turn the observed device into the desired one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerPlan {
    pub add: Vec<PeerConfig>,
    /// Peers whose endpoint, allowed IPs, keepalive or PSK differ; updated in place so their
    /// session survives.
    pub update: Vec<PeerConfig>,
    /// The subset of `update` whose allowed IPs change (and are therefore replaced).
    pub replace_allowed_ips: BTreeSet<PublicKey>,
    /// Peers on the device that are not desired, including a cluster's previous key.
    pub remove: Vec<PublicKey>,
}

impl PeerPlan {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.update.is_empty() && self.remove.is_empty()
    }

    /// The number of peer changes.
    pub fn len(&self) -> usize {
        self.add.len() + self.update.len() + self.remove.len()
    }

    /// All changes as one device update: removals first (so a subnet or key freed by one
    /// cluster is free before another takes it), then updates, then additions.
    pub fn to_update(&self) -> DeviceUpdate {
        let removes = self.remove.iter().copied().map(PeerChange::Remove);
        let updates = self.update.iter().map(|config| PeerChange::Update {
            replace_allowed_ips: self.replace_allowed_ips.contains(&config.public_key),
            config: config.clone(),
        });
        let adds = self.add.iter().cloned().map(PeerChange::Add);
        DeviceUpdate {
            private_key: None,
            listen_port: None,
            peers: removes.chain(updates).chain(adds).collect(),
        }
    }
}

/// Plans the peer changes from `observed` (`None`: no device yet) to `desired`. A peer that is
/// already right is not touched, so its handshake is never reset. Allowed IPs are compared as
/// sets of normalized networks; an endpoint of `None` in `desired` accepts whatever the peer
/// roamed to.
pub fn plan(desired: &[DesiredPeer], observed: Option<&DeviceStatus>) -> PeerPlan {
    plan_peers(
        desired,
        observed
            .into_iter()
            .flat_map(|d| d.peers.iter().map(|p| &p.config)),
    )
}

/// [`plan`] against any set of observed peers: the whole device, or only the peers a change
/// is about (a caller planning one cluster's change passes that cluster's old and new peers,
/// and every observed peer not desired is removed, so it must pass only those in scope).
pub fn plan_peers<'a>(
    desired: &[DesiredPeer],
    observed: impl IntoIterator<Item = &'a PeerConfig>,
) -> PeerPlan {
    let observed: Vec<&PeerConfig> = observed.into_iter().collect();
    let observed_peers: HashMap<PublicKey, &PeerConfig> =
        observed.iter().map(|c| (c.public_key, *c)).collect();
    let mut out = PeerPlan::default();
    let mut wanted: HashSet<PublicKey> = HashSet::new();

    for peer in desired {
        let want = &peer.config;
        if !wanted.insert(want.public_key) {
            // The same key twice: the first one stands (desired_peers never produces this).
            continue;
        }
        let Some(have) = observed_peers.get(&want.public_key) else {
            out.add.push(want.clone());
            continue;
        };
        let allowed_ips_differ = normalized(&want.allowed_ips) != normalized(&have.allowed_ips);
        let differs = allowed_ips_differ
            || (want.endpoint.is_some() && want.endpoint != have.endpoint)
            || want.persistent_keepalive != have.persistent_keepalive
            || want.preshared_key != have.preshared_key;
        if differs {
            if allowed_ips_differ {
                out.replace_allowed_ips.insert(want.public_key);
            }
            out.update.push(want.clone());
        }
    }
    out.remove = observed
        .iter()
        .map(|c| c.public_key)
        .filter(|key| !wanted.contains(key))
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::PeerStatus;
    use wgcable_api::{Endpoint, EndpointSpec};

    fn key(n: u8) -> PublicKey {
        PublicKey::from_bytes([n; 32])
    }

    fn psk() -> PresharedKey {
        PresharedKey::from_passphrase(wgcable_keys::DEFAULT_PSK)
    }

    fn local() -> LocalPeerConfig {
        LocalPeerConfig {
            cluster_id: "local".to_owned(),
            public_key: key(100),
            listen_port: DEFAULT_LISTEN_PORT,
            preshared_key: psk(),
            local_subnets: vec![
                "10.0.0.0/16".parse().expect("net"),
                "fd00::/64".parse().expect("net"),
            ],
            keepalive: 10,
        }
    }

    fn endpoint(cluster: &str, key_n: u8, subnets: &[&str], use_ip: &str) -> NatEndpointInfo {
        let mut spec = EndpointSpec {
            cluster_id: cluster.to_owned(),
            cable_name: format!("submariner-cable-{cluster}"),
            hostname: format!("gw-{cluster}"),
            subnets: subnets.iter().map(|s| (*s).to_owned()).collect(),
            private_ip: "192.0.2.10".to_owned(),
            backend: BACKEND_WIREGUARD.to_owned(),
            ..EndpointSpec::default()
        };
        spec.set_public_key(&key(key_n));
        NatEndpointInfo {
            endpoint: Endpoint::new(spec),
            use_ip: use_ip.to_owned(),
            use_nat: false,
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    #[test]
    fn desired_peer_follows_submariner() {
        let mut with_port = endpoint("b", 2, &["10.2.0.0/16", "fd02::/64"], "2001:db8::2");
        with_port
            .endpoint
            .spec
            .set_backend_config("udp-port", "51820");
        let out = desired_peers(
            &local(),
            &[
                endpoint("a", 1, &["10.1.0.0/16"], "198.51.100.1"),
                with_port,
            ],
        );
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        assert_eq!(
            out.peers,
            vec![
                DesiredPeer {
                    cluster_id: "a".to_owned(),
                    config: PeerConfig {
                        public_key: key(1),
                        endpoint: Some("198.51.100.1:4500".parse().expect("addr")),
                        allowed_ips: vec![net("10.1.0.0/16")],
                        persistent_keepalive: Some(10),
                        preshared_key: Some(psk()),
                    },
                    use_ip: "198.51.100.1".parse().expect("ip"),
                },
                DesiredPeer {
                    cluster_id: "b".to_owned(),
                    config: PeerConfig {
                        public_key: key(2),
                        endpoint: Some("[2001:db8::2]:51820".parse().expect("addr")),
                        allowed_ips: vec![net("10.2.0.0/16"), net("fd02::/64")],
                        persistent_keepalive: Some(10),
                        preshared_key: Some(psk()),
                    },
                    use_ip: "2001:db8::2".parse().expect("ip"),
                },
            ]
        );
    }

    #[test]
    fn keepalive_zero_disables_it() {
        let mut cfg = local();
        cfg.keepalive = 0;
        let out = desired_peers(&cfg, &[endpoint("a", 1, &["10.1.0.0/16"], "198.51.100.1")]);
        assert_eq!(out.peers[0].config.persistent_keepalive, None);
    }

    #[test]
    fn refusals_name_the_problem_and_leave_the_others_alone() {
        let mut no_key = endpoint("nokey", 9, &["10.9.0.0/16"], "198.51.100.9");
        no_key.endpoint.spec.backend_config.clear();
        no_key.endpoint.spec.backend = String::new();
        let mut ipsec = endpoint("ipsec", 8, &["10.8.0.0/16"], "198.51.100.8");
        ipsec.endpoint.spec.backend = "libreswan".to_owned();
        let mut invalid = endpoint("invalid", 7, &["10.7.0.0/16"], "198.51.100.7");
        invalid.endpoint.spec.subnets = vec!["not-a-cidr".to_owned()];

        let endpoints = [
            endpoint("a", 1, &["10.1.0.0/16"], "198.51.100.1"),
            endpoint("local", 2, &["10.2.0.0/16"], "198.51.100.2"),
            endpoint("ownkey", 100, &["10.3.0.0/16"], "198.51.100.3"),
            endpoint("dupkey", 1, &["10.4.0.0/16"], "198.51.100.4"),
            endpoint("a", 5, &["10.5.0.0/16"], "198.51.100.5"),
            endpoint("badip", 6, &["10.6.0.0/16"], "gateway.example"),
            endpoint("anyip", 16, &["10.16.0.0/16"], "0.0.0.0"),
            invalid,
            no_key,
            ipsec,
            endpoint("hijack-local", 10, &["10.0.128.0/17"], "198.51.100.10"),
            endpoint("hijack-v6", 11, &["fd00::/48"], "198.51.100.11"),
            endpoint(
                "hijack-remote",
                12,
                &["10.20.0.0/16", "10.1.2.0/24"],
                "198.51.100.12",
            ),
            endpoint("b", 13, &["10.13.0.0/16"], "198.51.100.13"),
        ];
        let out = desired_peers(&local(), &endpoints);
        let accepted: Vec<&str> = out.peers.iter().map(|p| p.cluster_id.as_str()).collect();
        assert_eq!(accepted, ["a", "b"]);

        let expected: Vec<(&str, PeerError)> = vec![
            ("local", PeerError::OwnCluster),
            ("ownkey", PeerError::OwnPublicKey),
            (
                "dupkey",
                PeerError::DuplicateKey {
                    key: key(1),
                    other_cluster: "a".to_owned(),
                },
            ),
            (
                "a",
                PeerError::DuplicateCluster {
                    other_endpoint: endpoints[0].endpoint.name().to_owned(),
                },
            ),
            (
                "badip",
                PeerError::InvalidUseIp("gateway.example".to_owned()),
            ),
            ("anyip", PeerError::InvalidUseIp("0.0.0.0".to_owned())),
        ];
        for (i, (cluster, err)) in expected.iter().enumerate() {
            assert_eq!(out.rejected[i].0, *cluster);
            assert_eq!(&out.rejected[i].1, err, "{cluster}");
        }
        let rest: Vec<(&str, String)> = out.rejected[expected.len()..]
            .iter()
            .map(|(c, e)| (c.as_str(), e.to_string()))
            .collect();
        assert_eq!(rest.len(), 6, "{rest:?}");
        assert_eq!(rest[0].0, "invalid");
        assert!(matches!(out.rejected[6].1, PeerError::InvalidEndpoint(_)));
        assert_eq!(rest[1], ("nokey", PeerError::MissingPublicKey.to_string()));
        assert_eq!(
            rest[2],
            (
                "ipsec",
                PeerError::UnsupportedBackend("libreswan".to_owned()).to_string()
            )
        );
        assert_eq!(
            out.rejected[9].1,
            PeerError::OverlapsLocal {
                subnet: net("10.0.128.0/17"),
                local: net("10.0.0.0/16")
            }
        );
        assert_eq!(
            out.rejected[10].1,
            PeerError::OverlapsLocal {
                subnet: net("fd00::/48"),
                local: net("fd00::/64")
            }
        );
        assert_eq!(
            out.rejected[11].1,
            PeerError::OverlapsRemote {
                subnet: net("10.1.2.0/24"),
                other_cluster: "a".to_owned(),
                other: net("10.1.0.0/16")
            }
        );
        assert!(
            rest[5].1.contains("cluster a, which claimed it first"),
            "{}",
            rest[5].1
        );
    }

    #[test]
    fn earlier_endpoint_wins_a_contested_subnet() {
        let established = endpoint("established", 1, &["10.50.0.0/16"], "198.51.100.1");
        let newcomer = endpoint("newcomer", 2, &["10.50.0.0/24"], "198.51.100.2");
        let out = desired_peers(&local(), &[established.clone(), newcomer.clone()]);
        assert_eq!(out.peers[0].cluster_id, "established");
        assert_eq!(out.rejected[0].0, "newcomer");
        let out = desired_peers(&local(), &[newcomer, established]);
        assert_eq!(out.peers[0].cluster_id, "newcomer");
        assert_eq!(out.rejected[0].0, "established");
    }

    fn desired(n: u8) -> DesiredPeer {
        DesiredPeer {
            cluster_id: format!("c{n}"),
            config: PeerConfig {
                public_key: key(n),
                endpoint: Some(SocketAddr::new(IpAddr::from([198, 51, 100, n]), 4500)),
                allowed_ips: vec![
                    net(&format!("10.{n}.0.0/16")),
                    net(&format!("fd{n:02x}::/64")),
                ],
                persistent_keepalive: Some(10),
                preshared_key: Some(psk()),
            },
            use_ip: IpAddr::from([198, 51, 100, n]),
        }
    }

    fn device(peers: Vec<PeerConfig>) -> DeviceStatus {
        DeviceStatus {
            name: "wg0".to_owned(),
            public_key: Some(key(100)),
            listen_port: Some(4500),
            peers: peers
                .into_iter()
                .map(|config| PeerStatus {
                    config,
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn no_device_means_add_everything() {
        let want = [desired(1), desired(2)];
        let p = plan(&want, None);
        assert_eq!(p.add, vec![want[0].config.clone(), want[1].config.clone()]);
        assert!(p.update.is_empty() && p.remove.is_empty());
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn a_peer_that_is_right_is_not_touched() {
        let want = [desired(1), desired(2)];
        // Same allowed IPs in another order and with host bits as a device may echo them.
        let mut have = want[0].config.clone();
        have.allowed_ips = vec![net("fd01::/64"), net("10.1.0.0/16")];
        let p = plan(&want, Some(&device(vec![have, want[1].config.clone()])));
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(p.len(), 0);
        assert!(p.to_update().is_empty());
    }

    #[test]
    fn each_field_that_differs_causes_one_update() {
        let want = desired(1);
        let mut cases: Vec<(&str, PeerConfig, bool)> = Vec::new();
        let mut c = want.config.clone();
        c.endpoint = Some("198.51.100.99:4500".parse().expect("addr"));
        cases.push(("endpoint", c, false));
        let mut c = want.config.clone();
        c.endpoint = None;
        cases.push(("no endpoint yet", c, false));
        let mut c = want.config.clone();
        c.allowed_ips.pop();
        cases.push(("allowed ips", c, true));
        let mut c = want.config.clone();
        c.persistent_keepalive = None;
        cases.push(("keepalive", c, false));
        let mut c = want.config.clone();
        c.preshared_key = Some(PresharedKey::from_passphrase("other"));
        cases.push(("psk", c, false));
        let mut c = want.config.clone();
        c.preshared_key = None;
        cases.push(("no psk", c, false));
        for (what, have, replace) in cases {
            let p = plan(std::slice::from_ref(&want), Some(&device(vec![have])));
            assert_eq!(p.update, vec![want.config.clone()], "{what}");
            assert!(p.add.is_empty() && p.remove.is_empty(), "{what}");
            assert_eq!(p.replace_allowed_ips.contains(&key(1)), replace, "{what}");
            assert_eq!(
                p.to_update().peers,
                vec![PeerChange::Update {
                    config: want.config.clone(),
                    replace_allowed_ips: replace
                }],
                "{what}"
            );
        }
    }

    #[test]
    fn desired_without_endpoint_accepts_a_roamed_one() {
        let mut want = desired(1);
        want.config.endpoint = None;
        let mut have = want.config.clone();
        have.endpoint = Some("203.0.113.7:3000".parse().expect("addr"));
        assert!(plan(&[want], Some(&device(vec![have]))).is_empty());
    }

    #[test]
    fn unknown_peers_are_removed_and_a_new_key_replaces_the_old() {
        let mut rekeyed = desired(2);
        rekeyed.config.public_key = key(42);
        let want = [desired(1), rekeyed.clone()];
        let have = vec![desired(1).config, desired(2).config, desired(3).config];
        let p = plan(&want, Some(&device(have)));
        assert_eq!(p.remove, vec![key(2), key(3)]);
        assert_eq!(p.add, vec![rekeyed.config.clone()]);
        assert!(p.update.is_empty());
        let update = p.to_update();
        assert_eq!(
            update.peers,
            vec![
                PeerChange::Remove(key(2)),
                PeerChange::Remove(key(3)),
                PeerChange::Add(rekeyed.config)
            ],
            "removals come first"
        );
        assert!(update.private_key.is_none() && update.listen_port.is_none());
    }

    #[test]
    fn duplicate_desired_keys_keep_the_first() {
        let mut second = desired(1);
        second.config.allowed_ips = vec![net("10.99.0.0/16")];
        let p = plan(&[desired(1), second], None);
        assert_eq!(p.add, vec![desired(1).config]);
    }

    #[test]
    fn a_thousand_peers_are_one_device_update() {
        let want: Vec<DesiredPeer> = (0..1000u32)
            .map(|i| {
                let mut bytes = [0u8; 32];
                bytes[..4].copy_from_slice(&i.to_be_bytes());
                let [_, _, hi, lo] = i.to_be_bytes();
                DesiredPeer {
                    cluster_id: format!("c{i}"),
                    config: PeerConfig {
                        public_key: PublicKey::from_bytes(bytes),
                        endpoint: Some(SocketAddr::new(IpAddr::from([198, 18, hi, lo]), 4500)),
                        allowed_ips: vec![net(&format!("10.{hi}.{lo}.0/24"))],
                        persistent_keepalive: Some(10),
                        preshared_key: Some(psk()),
                    },
                    use_ip: IpAddr::from([198, 18, hi, lo]),
                }
            })
            .collect();
        // 400 already right, 300 to update, 300 new, plus 50 unknown to remove.
        let mut have: Vec<PeerConfig> = want[..700].iter().map(|p| p.config.clone()).collect();
        for config in &mut have[400..700] {
            config.persistent_keepalive = Some(25);
        }
        have.extend((101..151u8).map(|n| desired(n).config));
        let p = plan(&want, Some(&device(have)));
        assert_eq!(
            (p.add.len(), p.update.len(), p.remove.len()),
            (300, 300, 50)
        );
        let update = p.to_update();
        assert_eq!(update.peers.len(), p.len());
        assert_eq!(update.peers.len(), 650);
        let keys: HashSet<PublicKey> = update.peers.iter().map(|c| *c.public_key()).collect();
        assert_eq!(keys.len(), 650, "each peer changed exactly once");

        let fresh = plan(&want, None).to_update();
        assert_eq!(fresh.peers.len(), 1000);
        assert!(fresh.peers.iter().all(|c| matches!(c, PeerChange::Add(_))));
    }

    #[test]
    fn nested_subnets_of_one_cluster_stay_claimed() {
        for order in [
            ["10.30.0.0/16", "10.30.1.0/24"],
            ["10.30.1.0/24", "10.30.0.0/16"],
        ] {
            for probe in [
                "10.30.50.0/24",
                "10.30.1.5/32",
                "10.30.255.0/24",
                "10.16.0.0/12",
            ] {
                let out = desired_peers(
                    &local(),
                    &[
                        endpoint("b", 2, &order, "198.51.100.2"),
                        endpoint("c", 3, &[probe], "198.51.100.3"),
                    ],
                );
                assert_eq!(out.peers.len(), 1, "{order:?} {probe}");
                assert!(
                    matches!(&out.rejected[..], [(c, PeerError::OverlapsRemote { other_cluster, .. })]
                        if c == "c" && other_cluster == "b"),
                    "{order:?} {probe}: {:?}",
                    out.rejected
                );
            }
        }
    }
}

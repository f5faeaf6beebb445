//! [`plan_host`]: the desired host and the observed one in, the plan out. Pure.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use wgcable_keys::PublicKey;
use wgcable_netlink::{diff_addrs, diff_routes, AddrDiff, IpFamily, Route, RouteSpec, Rule};
use wgcable_peers::{DesiredPeer, PeerPlan};

use super::{Drift, ObservedHost};

/// The identity the device must carry. The private key is not part of a plan (plans are
/// printed by `wgcable plan` and logged); the executor is handed it separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub public_key: PublicKey,
    pub listen_port: u16,
}

/// What the driver wants the host to look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredHost {
    pub identity: Identity,
    /// The device MTU.
    pub mtu: u32,
    /// The device's addresses (the health-check IPs); IPv6 link-local ones the kernel adds
    /// are kept whatever this says.
    pub addrs: Vec<IpNet>,
    /// The peers: all of them for [`Scope::Full`], those of the clusters in scope otherwise.
    pub peers: Vec<DesiredPeer>,
    /// Where remote subnets are routed, and the priority of the rules that look it up.
    pub table: u32,
    pub rule_priority: u32,
    /// The IP families a rule is needed for (every family of the local subnets and of every
    /// accepted remote subnet, whatever the scope).
    pub families: Vec<IpFamily>,
    /// The preferred source of routes of each family (IPv4, IPv6): the device's address of
    /// that family, if it has one.
    pub sources: [Option<IpAddr>; 2],
}

impl DesiredHost {
    /// The rule that sends traffic of `family` to our table.
    pub fn rule(&self, family: IpFamily) -> Rule {
        Rule {
            priority: Some(self.rule_priority),
            ..Rule::lookup(family, self.table)
        }
    }

    fn source_for(&self, dst: &IpNet) -> Option<IpAddr> {
        self.sources[usize::from(dst.addr().is_ipv6())]
    }
}

/// Which part of the host a plan is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything: peers or routes of ours not desired are removed.
    Full,
    /// Only these peers (old and new keys of the clusters a change is about) and these route
    /// prefixes (their old and new subnets); the rest of the host is left as it is. The link,
    /// its addresses, the device's identity and the rules are always planned in full (they
    /// are few).
    Clusters {
        keys: HashSet<PublicKey>,
        subnets: HashSet<IpNet>,
    },
}

/// A route to add, through the device (whose ifindex the executor knows once the device
/// exists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRoute {
    pub dst: IpNet,
    pub pref_src: Option<IpAddr>,
    /// The peer whose allowed IP this is: if the device refuses that peer, its routes are not
    /// installed.
    pub peer: PublicKey,
}

/// What to change on the host, in the order the executor applies it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPlan {
    /// The device's link as observed (`None`: it must be created).
    pub link_index: Option<u32>,
    pub create_device: bool,
    pub set_mtu: Option<u32>,
    pub set_up: bool,
    pub addrs: AddrDiff,
    /// Set the device's key and listen port.
    pub identity: Option<Identity>,
    pub peers: PeerPlan,
    pub routes_add: Vec<PlannedRoute>,
    pub routes_del: Vec<Route>,
    pub rules_add: Vec<Rule>,
    /// What changed behind the driver's back since its last apply (full plans only).
    pub drift: Drift,
}

impl HostPlan {
    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        !self.create_device
            && self.set_mtu.is_none()
            && !self.set_up
            && self.addrs.is_empty()
            && self.identity.is_none()
            && self.peers.is_empty()
            && self.routes_add.is_empty()
            && self.routes_del.is_empty()
            && self.rules_add.is_empty()
    }

    /// The plan as a list of operations, one per line, for `wgcable plan` (no secrets: the
    /// plan holds no private key, and pre-shared keys print as `<redacted>`).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        if self.create_device {
            line("create the WireGuard device".into());
        }
        if let Some(mtu) = self.set_mtu {
            line(format!("set the device MTU to {mtu}"));
        }
        if self.set_up {
            line("bring the device's link up".into());
        }
        for a in &self.addrs.to_add {
            line(format!("add address {a}"));
        }
        for a in &self.addrs.to_del {
            line(format!("remove address {a}"));
        }
        if let Some(id) = &self.identity {
            line(format!(
                "set the device's key (public {}) and listen port {}",
                id.public_key, id.listen_port
            ));
        }
        for key in &self.peers.remove {
            line(format!("remove peer {key}"));
        }
        for p in &self.peers.update {
            line(format!(
                "update peer {} ({})",
                p.public_key,
                peer_summary(p)
            ));
        }
        for p in &self.peers.add {
            line(format!("add peer {} ({})", p.public_key, peer_summary(p)));
        }
        for r in &self.routes_add {
            match r.pref_src {
                Some(src) => line(format!("add route {} dev <device> src {src}", r.dst)),
                None => line(format!("add route {} dev <device>", r.dst)),
            }
        }
        for r in &self.routes_del {
            line(format!("remove route {}", r.dst));
        }
        for r in &self.rules_add {
            line(format!("add rule {r}"));
        }
        for d in &self.drift.items {
            line(format!("(drift: {d})"));
        }
        if out.is_empty() {
            out.push_str("nothing to change\n");
        }
        out
    }
}

fn peer_summary(p: &wgcable_peers::PeerConfig) -> String {
    let ips: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
    match p.endpoint {
        Some(e) => format!("endpoint {e}, allowed IPs {}", ips.join(",")),
        None => format!("allowed IPs {}", ips.join(",")),
    }
}

/// One line: what the plan changes, by kind (`device created; peers +2 ~1 -0; routes +4 -0`).
impl fmt::Display for HostPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if self.create_device {
            parts.push("device created".into());
        }
        if let Some(mtu) = self.set_mtu {
            parts.push(format!("mtu {mtu}"));
        }
        if self.set_up {
            parts.push("link up".into());
        }
        if !self.addrs.is_empty() {
            parts.push(format!(
                "addrs +{} -{}",
                self.addrs.to_add.len(),
                self.addrs.to_del.len()
            ));
        }
        if self.identity.is_some() {
            parts.push("key and port set".into());
        }
        if !self.peers.is_empty() {
            parts.push(format!(
                "peers +{} ~{} -{}",
                self.peers.add.len(),
                self.peers.update.len(),
                self.peers.remove.len()
            ));
        }
        if !self.routes_add.is_empty() || !self.routes_del.is_empty() {
            parts.push(format!(
                "routes +{} -{}",
                self.routes_add.len(),
                self.routes_del.len()
            ));
        }
        for r in &self.rules_add {
            parts.push(format!("{} rule added", r.family));
        }
        if parts.is_empty() {
            f.write_str("nothing to change")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// Plans the changes that take `observed` to `desired` within `scope`. With `expected` (the
/// host as the last apply left it) a full plan also reports drift.
pub fn plan_host(
    desired: &DesiredHost,
    observed: &ObservedHost,
    scope: &Scope,
    expected: Option<&ObservedHost>,
) -> HostPlan {
    let link = observed.link.as_ref().filter(|_| observed.device.is_some());
    let create_device = link.is_none();
    let mut plan = HostPlan {
        link_index: link.map(|l| l.index),
        create_device,
        ..HostPlan::default()
    };

    // The link: MTU, up, addresses. A new device has none of them.
    match link {
        Some(l) => {
            plan.set_mtu = (l.mtu != desired.mtu).then_some(desired.mtu);
            plan.set_up = !l.up;
            plan.addrs = diff_addrs(&observed.addrs, &desired.addrs);
        }
        None => {
            plan.set_mtu = Some(desired.mtu);
            plan.set_up = true;
            plan.addrs = diff_addrs(&[], &desired.addrs);
        }
    }

    // The device: identity and peers.
    let device = observed.device.as_ref().filter(|_| link.is_some());
    let identity_ok = device.is_some_and(|d| {
        d.public_key == Some(desired.identity.public_key)
            && d.listen_port == Some(desired.identity.listen_port)
    });
    plan.identity = (!identity_ok).then_some(desired.identity);
    let observed_peers = device
        .into_iter()
        .flat_map(|d| d.peers.iter())
        .map(|p| &p.config);
    plan.peers = match scope {
        Scope::Full => wgcable_peers::plan_peers(&desired.peers, observed_peers),
        Scope::Clusters { keys, .. } => wgcable_peers::plan_peers(
            &desired.peers,
            observed_peers.filter(|c| keys.contains(&c.public_key)),
        ),
    };

    // Routes to every desired allowed IP, through the device, in our table.
    let oif = link.map_or(0, |l| l.index);
    let specs: Vec<(RouteSpec, PublicKey)> = desired
        .peers
        .iter()
        .flat_map(|p| {
            p.config.allowed_ips.iter().map(|dst| {
                (
                    RouteSpec {
                        dst: *dst,
                        oif,
                        table: desired.table,
                        pref_src: desired.source_for(dst),
                    },
                    p.config.public_key,
                )
            })
        })
        .collect();
    let owner = |dst: &IpNet| {
        specs
            .iter()
            .find(|(s, _)| s.dst.trunc() == dst.trunc())
            .map(|(_, k)| *k)
    };
    let diff = match (link, scope) {
        (None, _) => wgcable_netlink::RouteDiff {
            to_add: specs.iter().map(|(s, _)| s.clone()).collect(),
            to_del: Vec::new(),
        },
        (Some(_), Scope::Full) => diff_routes(
            &observed.routes,
            &specs.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(),
            desired.table,
            oif,
        ),
        (Some(_), Scope::Clusters { subnets, .. }) => {
            let in_scope: Vec<Route> = observed
                .routes
                .iter()
                .filter(|r| subnets.contains(&r.dst.trunc()))
                .cloned()
                .collect();
            diff_routes(
                &in_scope,
                &specs.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(),
                desired.table,
                oif,
            )
        }
    };
    // Few routes change at a time; a lookup per added route is cheaper than an index. A full
    // plan of a fresh device adds them all, so index then.
    let owners: std::collections::HashMap<IpNet, PublicKey> = if diff.to_add.len() > 16 {
        specs.iter().map(|(s, k)| (s.dst.trunc(), *k)).collect()
    } else {
        Default::default()
    };
    plan.routes_add = diff
        .to_add
        .into_iter()
        .filter_map(|s| {
            let peer = owners
                .get(&s.dst.trunc())
                .copied()
                .or_else(|| owner(&s.dst))?;
            Some(PlannedRoute {
                dst: s.dst,
                pref_src: s.pref_src,
                peer,
            })
        })
        .collect();
    plan.routes_del = diff.to_del;

    // One rule per family in use.
    plan.rules_add = desired
        .families
        .iter()
        .map(|f| desired.rule(*f))
        .filter(|want| !observed.rules.iter().any(|have| want.matches(have)))
        .collect();

    if let (Scope::Full, Some(expected)) = (scope, expected) {
        plan.drift = Drift::between(expected, observed, desired.table, desired.rule_priority);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::DriftItem;
    use wgcable_keys::PresharedKey;
    use wgcable_netlink::Link;
    use wgcable_peers::{DeviceStatus, PeerConfig, PeerStatus};

    const TABLE: u32 = 150;
    const PRIO: u32 = 100;

    fn key(n: u8) -> PublicKey {
        PublicKey::from_bytes([n; 32])
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    fn peer(n: u8, subnets: &[&str]) -> DesiredPeer {
        let ip: IpAddr = format!("192.0.2.{n}").parse().expect("ip");
        DesiredPeer {
            cluster_id: format!("c{n}"),
            config: PeerConfig {
                public_key: key(n),
                endpoint: Some(std::net::SocketAddr::new(ip, 4500)),
                allowed_ips: subnets.iter().map(|s| net(s)).collect(),
                persistent_keepalive: Some(10),
                preshared_key: Some(PresharedKey::from_bytes([9; 32])),
            },
            use_ip: ip,
        }
    }

    fn desired(peers: Vec<DesiredPeer>) -> DesiredHost {
        DesiredHost {
            identity: Identity {
                public_key: key(100),
                listen_port: 4500,
            },
            mtu: 1420,
            addrs: vec![net("10.0.0.1/32")],
            peers,
            table: TABLE,
            rule_priority: PRIO,
            families: vec![IpFamily::V4],
            sources: [Some("10.0.0.1".parse().expect("ip")), None],
        }
    }

    fn link(up: bool, mtu: u32) -> Link {
        Link {
            index: 7,
            name: "submariner".into(),
            kind: Some("wireguard".into()),
            mtu,
            up,
            flags: 0,
        }
    }

    /// The host exactly as `want` describes it.
    fn converged(want: &DesiredHost) -> ObservedHost {
        ObservedHost {
            link: Some(link(true, want.mtu)),
            addrs: want.addrs.clone(),
            device: Some(DeviceStatus {
                name: "submariner".into(),
                public_key: Some(want.identity.public_key),
                listen_port: Some(want.identity.listen_port),
                peers: want
                    .peers
                    .iter()
                    .map(|p| PeerStatus {
                        config: p.config.clone(),
                        last_handshake: None,
                        rx_bytes: 0,
                        tx_bytes: 0,
                    })
                    .collect(),
            }),
            routes: want
                .peers
                .iter()
                .flat_map(|p| p.config.allowed_ips.iter())
                .map(|dst| {
                    RouteSpec {
                        dst: *dst,
                        oif: 7,
                        table: TABLE,
                        pref_src: want.source_for(dst),
                    }
                    .installed()
                })
                .collect(),
            rules: want.families.iter().map(|f| want.rule(*f)).collect(),
        }
    }

    #[test]
    fn a_fresh_host_gets_everything_in_one_plan() {
        let want = desired(vec![peer(1, &["10.1.0.0/16"]), peer(2, &["10.2.0.0/16"])]);
        let plan = plan_host(&want, &ObservedHost::default(), &Scope::Full, None);
        assert!(plan.create_device && plan.set_up);
        assert_eq!(plan.set_mtu, Some(1420));
        assert_eq!(plan.addrs.to_add, vec![net("10.0.0.1/32")]);
        assert!(plan.identity.is_some());
        assert_eq!(plan.peers.add.len(), 2);
        assert_eq!(plan.routes_add.len(), 2);
        assert_eq!(plan.routes_add[1].peer, key(2));
        assert_eq!(plan.rules_add, vec![want.rule(IpFamily::V4)]);
        assert!(plan.drift.is_empty());
        assert_eq!(
            plan.to_string(),
            "device created; mtu 1420; link up; addrs +1 -0; key and port set; peers +2 ~0 -0; routes +2 -0; inet rule added"
        );
    }

    #[test]
    fn a_converged_host_needs_nothing() {
        let want = desired(vec![peer(1, &["10.1.0.0/16"])]);
        let host = converged(&want);
        let plan = plan_host(&want, &host, &Scope::Full, Some(&host));
        assert!(plan.is_empty(), "{plan:?}");
        assert_eq!(plan.describe(), "nothing to change\n");
    }

    #[test]
    fn the_first_ipv6_remote_brings_the_ipv6_rule_even_in_a_scoped_plan() {
        let before = desired(vec![peer(1, &["10.1.0.0/16"])]);
        let host = converged(&before);
        let mut want = desired(vec![peer(2, &["fd02::/48"])]);
        want.families = vec![IpFamily::V4, IpFamily::V6];
        let scope = Scope::Clusters {
            keys: HashSet::from([key(2)]),
            subnets: HashSet::from([net("fd02::/48")]),
        };
        let plan = plan_host(&want, &host, &scope, None);
        assert_eq!(plan.peers.add.len(), 1);
        assert!(plan.peers.remove.is_empty(), "out of scope peers stay");
        assert_eq!(plan.routes_add.len(), 1);
        assert!(plan.routes_del.is_empty(), "out of scope routes stay");
        assert_eq!(plan.rules_add, vec![want.rule(IpFamily::V6)]);
    }

    #[test]
    fn a_scoped_plan_touches_only_its_clusters() {
        let all = desired(vec![
            peer(1, &["10.1.0.0/16"]),
            peer(2, &["10.2.0.0/16"]),
            peer(3, &["10.3.0.0/16"]),
        ]);
        let host = converged(&all);
        // Cluster 2 moves to a new subnet.
        let want = desired(vec![peer(2, &["10.22.0.0/16"])]);
        let scope = Scope::Clusters {
            keys: HashSet::from([key(2)]),
            subnets: HashSet::from([net("10.2.0.0/16"), net("10.22.0.0/16")]),
        };
        let plan = plan_host(&want, &host, &scope, None);
        assert_eq!(plan.peers.update.len(), 1);
        assert!(plan.peers.replace_allowed_ips.contains(&key(2)));
        assert!(plan.peers.add.is_empty() && plan.peers.remove.is_empty());
        assert_eq!(
            plan.routes_add.iter().map(|r| r.dst).collect::<Vec<_>>(),
            [net("10.22.0.0/16")]
        );
        assert_eq!(
            plan.routes_del.iter().map(|r| r.dst).collect::<Vec<_>>(),
            [net("10.2.0.0/16")]
        );
        // The same change planned in full gives the same peer and route operations.
        let full_want = desired(vec![
            peer(1, &["10.1.0.0/16"]),
            peer(2, &["10.22.0.0/16"]),
            peer(3, &["10.3.0.0/16"]),
        ]);
        let full = plan_host(&full_want, &host, &Scope::Full, None);
        assert_eq!(full.peers, plan.peers);
        assert_eq!(full.routes_add, plan.routes_add);
        assert_eq!(full.routes_del, plan.routes_del);
    }

    /// Drift rules, one row each: (what was done to the converged host, expected items).
    #[test]
    fn drift_rules() {
        let want = desired(vec![peer(1, &["10.1.0.0/16"]), peer(2, &["10.2.0.0/16"])]);
        type Edit = fn(&mut ObservedHost);
        let rows: Vec<(&str, Edit, Vec<DriftItem>)> = vec![
            ("nothing", |_| {}, vec![]),
            (
                "device deleted",
                |h| {
                    h.link = None;
                    h.device = None;
                    h.routes.clear();
                },
                vec![DriftItem::DeviceMissing],
            ),
            (
                "device recreated by someone else",
                |h| {
                    if let Some(l) = &mut h.link {
                        l.index = 99;
                    }
                },
                vec![DriftItem::DeviceMissing],
            ),
            (
                "link down",
                |h| {
                    if let Some(l) = &mut h.link {
                        l.up = false;
                    }
                },
                vec![DriftItem::LinkDown],
            ),
            (
                "mtu changed",
                |h| {
                    if let Some(l) = &mut h.link {
                        l.mtu = 1500;
                    }
                },
                vec![DriftItem::MtuChanged {
                    expected: 1420,
                    found: 1500,
                }],
            ),
            (
                "address removed, another added",
                |h| h.addrs = vec![net("10.0.0.9/32")],
                vec![
                    DriftItem::AddrMissing(net("10.0.0.1/32")),
                    DriftItem::AddrUnexpected(net("10.0.0.9/32")),
                ],
            ),
            (
                "kernel link-local address is not drift",
                |h| h.addrs.push(net("fe80::1/64")),
                vec![],
            ),
            (
                "key changed",
                |h| {
                    if let Some(d) = &mut h.device {
                        d.public_key = Some(PublicKey::from_bytes([55; 32]));
                    }
                },
                vec![DriftItem::IdentityChanged],
            ),
            (
                "peer removed",
                |h| {
                    if let Some(d) = &mut h.device {
                        d.peers.remove(0);
                    }
                },
                vec![DriftItem::PeerMissing(PublicKey::from_bytes([1; 32]))],
            ),
            (
                "peer added by hand",
                |h| {
                    if let Some(d) = &mut h.device {
                        let mut p = d.peers[0].clone();
                        p.config.public_key = PublicKey::from_bytes([77; 32]);
                        d.peers.push(p);
                    }
                },
                vec![DriftItem::PeerUnexpected(PublicKey::from_bytes([77; 32]))],
            ),
            (
                "peer's allowed IPs changed",
                |h| {
                    if let Some(d) = &mut h.device {
                        d.peers[1].config.allowed_ips = vec!["10.9.0.0/16".parse().expect("net")];
                    }
                },
                vec![DriftItem::PeerChanged(PublicKey::from_bytes([2; 32]))],
            ),
            (
                "roamed endpoint and traffic are not drift",
                |h| {
                    if let Some(d) = &mut h.device {
                        d.peers[0].config.endpoint = Some("203.0.113.1:999".parse().expect("addr"));
                        d.peers[0].rx_bytes = 5;
                        d.peers[0].last_handshake = Some(std::time::SystemTime::UNIX_EPOCH);
                    }
                },
                vec![],
            ),
            (
                "route deleted",
                |h| {
                    h.routes.remove(0);
                },
                vec![DriftItem::RouteMissing("10.1.0.0/16".parse().expect("net"))],
            ),
            (
                "route added by hand through the device",
                |h| {
                    let mut r = h.routes[0].clone();
                    r.dst = "10.77.0.0/16".parse().expect("net");
                    h.routes.push(r);
                },
                vec![DriftItem::RouteUnexpected(
                    "10.77.0.0/16".parse().expect("net"),
                )],
            ),
            (
                "route through another link is not ours",
                |h| {
                    let mut r = h.routes[0].clone();
                    r.dst = "10.78.0.0/16".parse().expect("net");
                    r.oif = Some(3);
                    h.routes.push(r);
                },
                vec![],
            ),
            (
                "route's source changed",
                |h| h.routes[1].pref_src = None,
                vec![DriftItem::RouteChanged("10.2.0.0/16".parse().expect("net"))],
            ),
            (
                "rule deleted",
                |h| h.rules.clear(),
                vec![DriftItem::RuleMissing(IpFamily::V4)],
            ),
        ];
        for (name, edit, items) in rows {
            let expected = converged(&want);
            let mut observed = expected.clone();
            edit(&mut observed);
            let plan = plan_host(&want, &observed, &Scope::Full, Some(&expected));
            assert_eq!(plan.drift.items, items, "{name}");
            // Whatever drifted, the plan repairs it; the one difference that is not drift but
            // still gets a change is a roamed endpoint of a peer that is not behind NAT
            // (the driver masks NAT'd peers' endpoints before planning).
            let repairs = !plan.is_empty();
            let roamed = name.starts_with("roamed");
            assert_eq!(repairs, !items.is_empty() || roamed, "{name}: {plan:?}");
        }
    }

    #[test]
    fn desired_changes_are_not_drift() {
        let before = desired(vec![peer(1, &["10.1.0.0/16"])]);
        let host = converged(&before);
        let mut want = desired(vec![peer(1, &["10.1.0.0/16"]), peer(2, &["10.2.0.0/16"])]);
        want.mtu = 1380;
        let plan = plan_host(&want, &host, &Scope::Full, Some(&host));
        assert!(plan.drift.is_empty());
        assert_eq!(plan.set_mtu, Some(1380));
        assert_eq!(plan.peers.add.len(), 1);
    }
}

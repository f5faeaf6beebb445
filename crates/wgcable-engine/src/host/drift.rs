//! Drift: what changed on the host behind the driver's back since its last apply.
//!
//! One rule for every part of the host: drift is a difference between the host as the last
//! apply left it (`expected`, the driver's cache) and the host as observed now. A change of
//! the *desired* state (a new remote, a new MTU) is never drift, whatever it makes the plan
//! do; and a difference that WireGuard makes on its own (a peer's endpoint roaming, counters,
//! handshakes) is not drift either.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use ipnet::IpNet;
use wgcable_keys::PublicKey;
use wgcable_netlink::{IpFamily, Route, Rule};
use wgcable_peers::PeerConfig;

use super::ObservedHost;

/// One thing found changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum DriftItem {
    /// The WireGuard device (or its link) is gone; everything on it went with it.
    DeviceMissing,
    /// The link was set down.
    LinkDown,
    /// The link's MTU changed.
    MtuChanged {
        expected: u32,
        found: u32,
    },
    /// The device's key or listen port changed.
    IdentityChanged,
    AddrMissing(IpNet),
    AddrUnexpected(IpNet),
    PeerMissing(PublicKey),
    PeerUnexpected(PublicKey),
    /// A peer's allowed IPs, keepalive or pre-shared key changed.
    PeerChanged(PublicKey),
    RouteMissing(IpNet),
    RouteUnexpected(IpNet),
    /// A route to one of our prefixes now has another source or a gateway.
    RouteChanged(IpNet),
    RuleMissing(IpFamily),
}

impl DriftItem {
    /// The part of the host, as the `what` label of `wgcable_repairs_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            DriftItem::DeviceMissing => "device",
            DriftItem::LinkDown | DriftItem::MtuChanged { .. } => "link",
            DriftItem::IdentityChanged => "identity",
            DriftItem::AddrMissing(_) | DriftItem::AddrUnexpected(_) => "addr",
            DriftItem::PeerMissing(_)
            | DriftItem::PeerUnexpected(_)
            | DriftItem::PeerChanged(_) => "peer",
            DriftItem::RouteMissing(_)
            | DriftItem::RouteUnexpected(_)
            | DriftItem::RouteChanged(_) => "route",
            DriftItem::RuleMissing(_) => "rule",
        }
    }
}

impl fmt::Display for DriftItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriftItem::DeviceMissing => f.write_str("the WireGuard device was gone"),
            DriftItem::LinkDown => f.write_str("the device's link was down"),
            DriftItem::MtuChanged { expected, found } => {
                write!(f, "the device's MTU was {found}, not {expected}")
            }
            DriftItem::IdentityChanged => f.write_str("the device's key or port had changed"),
            DriftItem::AddrMissing(a) => write!(f, "address {a} was missing"),
            DriftItem::AddrUnexpected(a) => write!(f, "address {a} had been added"),
            DriftItem::PeerMissing(k) => write!(f, "peer {k} was missing"),
            DriftItem::PeerUnexpected(k) => write!(f, "unknown peer {k} had been added"),
            DriftItem::PeerChanged(k) => write!(f, "peer {k}'s configuration had changed"),
            DriftItem::RouteMissing(n) => write!(f, "route {n} was missing"),
            DriftItem::RouteUnexpected(n) => write!(f, "route {n} had been added"),
            DriftItem::RouteChanged(n) => write!(f, "route {n} had been changed"),
            DriftItem::RuleMissing(family) => write!(f, "the {family} rule was missing"),
        }
    }
}

/// Everything found changed, in a stable order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    pub items: Vec<DriftItem>,
}

impl Drift {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many items of each kind (see [`DriftItem::kind`]).
    pub fn by_kind(&self) -> Vec<(&'static str, usize)> {
        let mut counts: Vec<(&'static str, usize)> = Vec::new();
        for item in &self.items {
            match counts.iter_mut().find(|(k, _)| *k == item.kind()) {
                Some((_, n)) => *n += 1,
                None => counts.push((item.kind(), 1)),
            }
        }
        counts
    }

    /// The differences between the host the last apply left (`expected`) and the host now,
    /// for our `table` and the rules at `rule_priority`.
    pub fn between(
        expected: &ObservedHost,
        observed: &ObservedHost,
        table: u32,
        rule_priority: u32,
    ) -> Drift {
        let mut items = Vec::new();
        // With the device gone, its link, peers and routes went too: one item says it all.
        let (Some(exp_link), Some(exp_dev)) = (&expected.link, &expected.device) else {
            return Drift::default();
        };
        let (Some(link), Some(dev)) = (&observed.link, &observed.device) else {
            return Drift {
                items: vec![DriftItem::DeviceMissing],
            };
        };
        if exp_link.index != link.index {
            // Deleted and created again by someone else: everything of ours went with it.
            return Drift {
                items: vec![DriftItem::DeviceMissing],
            };
        }
        if exp_link.up && !link.up {
            items.push(DriftItem::LinkDown);
        }
        if exp_link.mtu != link.mtu {
            items.push(DriftItem::MtuChanged {
                expected: exp_link.mtu,
                found: link.mtu,
            });
        }
        if exp_dev.public_key != dev.public_key || exp_dev.listen_port != dev.listen_port {
            items.push(DriftItem::IdentityChanged);
        }
        let kernel_own =
            |a: &IpNet| matches!(a, IpNet::V6(n) if n.addr().segments()[0] & 0xffc0 == 0xfe80);
        for a in expected.addrs.iter().filter(|a| !kernel_own(a)) {
            if !observed.addrs.contains(a) {
                items.push(DriftItem::AddrMissing(*a));
            }
        }
        for a in observed.addrs.iter().filter(|a| !kernel_own(a)) {
            if !expected.addrs.contains(a) {
                items.push(DriftItem::AddrUnexpected(*a));
            }
        }

        let peers = |d: &wgcable_peers::DeviceStatus| -> HashMap<PublicKey, PeerConfig> {
            d.peers
                .iter()
                .map(|p| (p.config.public_key, p.config.clone()))
                .collect()
        };
        let (want, have) = (peers(exp_dev), peers(dev));
        for (key, config) in &want {
            match have.get(key) {
                None => items.push(DriftItem::PeerMissing(*key)),
                Some(now) if !same_peer_config(config, now) => {
                    items.push(DriftItem::PeerChanged(*key))
                }
                Some(_) => {}
            }
        }
        for key in have.keys().filter(|k| !want.contains_key(k)) {
            items.push(DriftItem::PeerUnexpected(*key));
        }

        let ours = |routes: &[Route]| -> HashMap<IpNet, Route> {
            routes
                .iter()
                .filter(|r| r.table == table && r.oif == Some(link.index))
                .map(|r| (r.dst.trunc(), r.clone()))
                .collect()
        };
        let (want, have) = (ours(&expected.routes), ours(&observed.routes));
        for (dst, route) in &want {
            match have.get(dst) {
                None => items.push(DriftItem::RouteMissing(*dst)),
                Some(now) if now.pref_src != route.pref_src || now.gateway != route.gateway => {
                    items.push(DriftItem::RouteChanged(*dst))
                }
                Some(_) => {}
            }
        }
        for dst in have.keys().filter(|d| !want.contains_key(d)) {
            items.push(DriftItem::RouteUnexpected(*dst));
        }

        let ours = |rules: &[Rule]| -> BTreeSet<IpFamily> {
            rules
                .iter()
                .filter(|r| r.table == table && r.priority == Some(rule_priority))
                .map(|r| r.family)
                .collect()
        };
        for family in ours(&expected.rules).difference(&ours(&observed.rules)) {
            items.push(DriftItem::RuleMissing(*family));
        }
        items.sort();
        Drift { items }
    }
}

/// The parts of a peer's configuration the driver sets and WireGuard never changes on its own
/// (the endpoint roams, so it is not compared).
fn same_peer_config(a: &PeerConfig, b: &PeerConfig) -> bool {
    let nets = |c: &PeerConfig| {
        c.allowed_ips
            .iter()
            .map(IpNet::trunc)
            .collect::<BTreeSet<_>>()
    };
    nets(a) == nets(b)
        && a.persistent_keepalive == b.persistent_keepalive
        && a.preshared_key == b.preshared_key
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{item}")?;
        }
        Ok(())
    }
}

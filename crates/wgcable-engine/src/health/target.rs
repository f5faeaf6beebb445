//! Whom a pinger probes: [`HealthTarget`], keyed by [`HealthKey`].

use std::fmt;
use std::net::IpAddr;

use wgcable_netlink::IpFamily;

/// Which pinger: one per remote cluster and IP family (a dual-stack tunnel is two paths, and
/// either can break alone).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HealthKey {
    pub cluster_id: String,
    pub family: IpFamily,
}

impl HealthKey {
    pub fn new(cluster_id: &str, family: IpFamily) -> Self {
        HealthKey {
            cluster_id: cluster_id.to_owned(),
            family,
        }
    }

    /// The keys of one cluster's targets, IPv4 first (Submariner's single `healthCheckIP` is
    /// IPv4).
    pub fn both(cluster_id: &str) -> [HealthKey; 2] {
        [
            HealthKey::new(cluster_id, IpFamily::V4),
            HealthKey::new(cluster_id, IpFamily::V6),
        ]
    }

    /// `IPv4` or `IPv6`, for messages.
    pub fn family_name(&self) -> &'static str {
        match self.family {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }
}

impl fmt::Display for HealthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.cluster_id, self.family_name())
    }
}

/// Whom one pinger probes: the remote gateway's health-check IP, from the local one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthTarget {
    /// The key of [`HealthChecker::status`](super::HealthChecker::status).
    pub key: HealthKey,
    /// The remote gateway's health-check IP.
    pub dst: IpAddr,
    /// The local health-check IP (on the WireGuard device) to send from, so the routes through
    /// the tunnel are the ones taken; `None` lets the kernel choose.
    pub src: Option<IpAddr>,
}

impl HealthTarget {
    /// Picks the target for a remote: its first health-check IP of a family the local side has
    /// a health-check IP of too (that one is the source); failing that, its first one with no
    /// source. `None` when the remote has no health-check IP.
    pub fn pick(cluster_id: &str, remote: &[IpAddr], local: &[IpAddr]) -> Option<Self> {
        let same_family = |a: &IpAddr, b: &IpAddr| a.is_ipv4() == b.is_ipv4();
        let (dst, src) = remote
            .iter()
            .find_map(|r| {
                local
                    .iter()
                    .find(|l| same_family(r, l))
                    .map(|l| (*r, Some(*l)))
            })
            .or_else(|| remote.first().map(|r| (*r, None)))?;
        Some(HealthTarget {
            key: HealthKey::new(cluster_id, IpFamily::of(dst)),
            dst,
            src,
        })
    }

    /// One target per IP family both sides have a health-check IP of; when the families do
    /// not meet, [`HealthTarget::pick`]'s fallback.
    pub fn per_family(cluster_id: &str, remote: &[IpAddr], local: &[IpAddr]) -> Vec<Self> {
        let mut out: Vec<Self> = [IpFamily::V4, IpFamily::V6]
            .into_iter()
            .filter_map(|family| {
                let dst = remote.iter().find(|r| IpFamily::of(**r) == family)?;
                let src = local.iter().find(|l| IpFamily::of(**l) == family)?;
                Some(HealthTarget {
                    key: HealthKey::new(cluster_id, family),
                    dst: *dst,
                    src: Some(*src),
                })
            })
            .collect();
        if out.is_empty() {
            out.extend(Self::pick(cluster_id, remote, local));
        }
        out
    }
}

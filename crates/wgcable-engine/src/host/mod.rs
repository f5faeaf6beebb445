//! The host as a value: what the driver observes (the device's link, its addresses, the
//! WireGuard device, the routes of our table, the rules), what it wants, and the plan between
//! them.
//!
//! Every trigger is "observe, plan, apply": [`observe`] reads the host (or the driver takes
//! the [`ObservedHost`] the last apply left, see [`ObservedHost::after`]), [`plan_host`]
//! decides (pure: no I/O, no clock), [`apply`] carries the plan out in the order the
//! invariants need. A dry run is a plan that is printed instead of applied.

mod apply;
mod drift;
mod observe;
mod plan;

pub use apply::{apply, Applied, PeerFailure, Target};
pub use drift::{Drift, DriftItem};
pub use observe::observe;
pub use plan::{plan_host, DesiredHost, HostPlan, Identity, PlannedRoute, Scope};

use ipnet::IpNet;
use wgcable_netlink::{Link, Route, Rule};
use wgcable_peers::{DeviceStatus, PeerStatus};

/// The parts of the host the driver owns or depends on, as observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedHost {
    /// The device's link; `None` when there is no link of that name.
    pub link: Option<Link>,
    /// The link's addresses (IPv6 link-local ones included).
    pub addrs: Vec<IpNet>,
    /// The WireGuard device; `None` when it does not exist.
    pub device: Option<DeviceStatus>,
    /// The routes of our table, through any link.
    pub routes: Vec<Route>,
    /// Every lookup rule (both families).
    pub rules: Vec<Rule>,
}

impl ObservedHost {
    /// What the host looks like once `applied` (a plan, or the part of it that went through)
    /// is carried out, for the configuration the driver set. This is the cache the next
    /// incremental change plans against, instead of reading every peer and route back.
    pub fn after(mut self, plan: &HostPlan, applied: &Applied, device_name: &str) -> Self {
        if let Some(link) = &applied.link {
            self.link = Some(link.clone());
        }
        self.addrs.retain(|a| !plan.addrs.to_del.contains(a));
        for a in &plan.addrs.to_add {
            if !self.addrs.contains(a) {
                self.addrs.push(*a);
            }
        }
        let device = self.device.get_or_insert_with(|| DeviceStatus {
            name: device_name.to_owned(),
            public_key: None,
            listen_port: None,
            peers: Vec::new(),
        });
        if let Some(identity) = &plan.identity {
            device.public_key = Some(identity.public_key);
            device.listen_port = Some(identity.listen_port);
        }
        let failed =
            |key: &wgcable_keys::PublicKey| applied.peer_failures.iter().any(|f| f.key == *key);
        let removed: std::collections::HashSet<_> = plan
            .peers
            .remove
            .iter()
            .filter(|k| !failed(k))
            .copied()
            .collect();
        device
            .peers
            .retain(|p| !removed.contains(&p.config.public_key));
        for config in plan.peers.update.iter().filter(|c| !failed(&c.public_key)) {
            if let Some(p) = device
                .peers
                .iter_mut()
                .find(|p| p.config.public_key == config.public_key)
            {
                // An update without an endpoint leaves the one the peer has, as WireGuard does.
                let endpoint = config.endpoint.or(p.config.endpoint);
                p.config = config.clone();
                p.config.endpoint = endpoint;
            }
        }
        for config in plan.peers.add.iter().filter(|c| !failed(&c.public_key)) {
            device.peers.push(PeerStatus {
                config: config.clone(),
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
            });
        }
        let deleted: std::collections::HashSet<&Route> = applied.routes_deleted.iter().collect();
        self.routes.retain(|r| !deleted.contains(r));
        for spec in &applied.routes_added {
            // An add replaces whatever the table had for that prefix.
            self.routes
                .retain(|have| !(have.table == spec.table && have.dst.trunc() == spec.dst.trunc()));
            self.routes.push(spec.installed());
        }
        self.rules.extend(applied.rules_added.iter().cloned());
        self
    }
}

//! [`apply`]: carries a [`HostPlan`] out, in the order the invariants need.
//!
//! 1. The device exists.
//! 2. Its link: MTU, up, addresses - before any peer is configured: a userspace device whose
//!    link is down when a peer is added sends that peer nothing, so a handshake the other side
//!    started before it knew us would only be retried after WireGuard's 5 s rekey timeout.
//! 3. The device's identity and every peer change, as one device update. If the device
//!    refuses the batch for its content (an invalid argument, a peer too large), the batch is
//!    split and retried until the changes it refuses are found: those are reported as
//!    [`PeerFailure`]s, everything else is applied. One hostile Endpoint can never keep the
//!    other tunnels from being configured.
//! 4. Routes: added (except those of refused peers), then removed.
//! 5. Rules.

use wgcable_keys::{PrivateKey, PublicKey};
use wgcable_netlink::{Link, Netlink, Route, RouteSpec, Rule};
use wgcable_peers::{DeviceUpdate, PeerChange, WgDevice};

use super::HostPlan;
use crate::Error;

/// A peer change the device refused, and why (the device's own words, errno included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFailure {
    pub key: PublicKey,
    pub reason: String,
}

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub device_created: bool,
    /// The device's link after the apply.
    pub link: Option<Link>,
    pub routes_added: Vec<RouteSpec>,
    pub routes_deleted: Vec<Route>,
    pub rules_added: Vec<Rule>,
    /// Peer changes the device refused; the rest of the plan went through.
    pub peer_failures: Vec<PeerFailure>,
    /// Device requests made (one, unless a refused batch had to be split).
    pub device_requests: usize,
}

/// Where and with what to apply a plan.
#[derive(Clone, Copy)]
#[allow(missing_debug_implementations)] // Holds the private key: no Debug on purpose.
pub struct Target<'a> {
    pub netlink: &'a dyn Netlink,
    pub device: &'a dyn WgDevice,
    pub name: &'a str,
    pub table: u32,
    /// Set on the device when the plan changes its identity.
    pub private_key: &'a PrivateKey,
}

/// Carries `plan` out on `target` (see the module docs for the order). An error means the host
/// itself failed (netlink, a device that is gone); refused peer changes are not errors.
pub async fn apply(plan: &HostPlan, target: Target<'_>) -> Result<Applied, Error> {
    let Target {
        netlink,
        device,
        name,
        table,
        private_key,
    } = target;
    let mut applied = Applied::default();

    // 1. The device.
    if plan.create_device {
        applied.device_created = device
            .ensure(name)
            .await
            .map_err(Error::device(format!("creating WireGuard device {name}")))?;
    }
    let index = match plan.link_index.filter(|_| !plan.create_device) {
        Some(index) => index,
        None => {
            netlink
                .link_get(name)
                .await
                .map_err(Error::netlink(format!("looking up link {name}")))?
                .ok_or_else(|| Error::MissingLink {
                    device: name.to_owned(),
                })?
                .index
        }
    };

    // 2. The link.
    if let Some(mtu) = plan.set_mtu {
        netlink
            .link_set_mtu(index, mtu)
            .await
            .map_err(Error::netlink(format!("setting MTU {mtu} on {name}")))?;
    }
    if plan.set_up {
        netlink
            .link_set_up(index, true)
            .await
            .map_err(Error::netlink(format!("bringing {name} up")))?;
    }
    for addr in &plan.addrs.to_add {
        match netlink.addr_add(index, *addr).await {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => {
                return Err(Error::netlink(format!("adding address {addr} to {name}"))(
                    e,
                ))
            }
        }
    }
    for addr in &plan.addrs.to_del {
        match netlink.addr_del(index, *addr).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                return Err(Error::netlink(format!(
                    "removing address {addr} from {name}"
                ))(e))
            }
        }
    }
    if plan.set_mtu.is_some() || plan.set_up || applied.device_created {
        applied.link = netlink
            .link_get(name)
            .await
            .map_err(Error::netlink(format!("looking up link {name}")))?;
    }

    // 3. The device's identity and peers.
    let mut update = plan.peers.to_update();
    if let Some(identity) = &plan.identity {
        update.private_key = Some(private_key.clone());
        update.listen_port = Some(identity.listen_port);
    }
    if !update.is_empty() {
        configure(device, name, update, &mut applied).await?;
    }

    // 4. Routes, but none for a peer the device refused (it would send traffic into a
    //    device that has no peer for it).
    let refused = |key: &PublicKey| applied.peer_failures.iter().any(|f| f.key == *key);
    let add: Vec<RouteSpec> = plan
        .routes_add
        .iter()
        .filter(|r| !refused(&r.peer))
        .map(|r| RouteSpec {
            dst: r.dst,
            oif: index,
            table,
            pref_src: r.pref_src,
        })
        .collect();
    if !add.is_empty() {
        netlink
            .route_add(&add)
            .await
            .map_err(Error::netlink(format!(
                "adding {} route(s) in table {table} through {name}",
                add.len()
            )))?;
    }
    if !plan.routes_del.is_empty() {
        netlink
            .route_del(&plan.routes_del)
            .await
            .map_err(Error::netlink(format!(
                "removing {} route(s) from table {table}",
                plan.routes_del.len()
            )))?;
    }
    applied.routes_added = add;
    applied.routes_deleted = plan.routes_del.clone();

    // 5. Rules.
    for rule in &plan.rules_add {
        match netlink.rule_add(rule).await {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => {
                return Err(Error::netlink(format!(
                    "adding the rule that looks up table {table}"
                ))(e))
            }
        }
        applied.rules_added.push(rule.clone());
    }
    Ok(applied)
}

/// Applies `update`; if the device refuses it for its content, finds the changes it refuses by
/// splitting the batch in halves (a few requests for one bad change among thousands).
async fn configure(
    device: &dyn WgDevice,
    name: &str,
    update: DeviceUpdate,
    applied: &mut Applied,
) -> Result<(), Error> {
    applied.device_requests += 1;
    let n = update.peers.len();
    let err = match device.apply(name, &update).await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let action = || format!("configuring {n} peer change(s) on device {name}");
    if !err.is_rejected_config() {
        return Err(Error::device(action())(err));
    }
    if n == 0 {
        // Only the identity was sent and refused: nothing to isolate.
        return Err(Error::device(format!(
            "setting the key and port of device {name}"
        ))(err));
    }
    if update.private_key.is_some() || update.listen_port.is_some() {
        // The identity goes first, alone: if the device refuses that, nothing else matters.
        let identity = DeviceUpdate {
            private_key: update.private_key.clone(),
            listen_port: update.listen_port,
            peers: Vec::new(),
        };
        applied.device_requests += 1;
        device
            .apply(name, &identity)
            .await
            .map_err(Error::device(format!(
                "setting the key and port of device {name}"
            )))?;
    }
    let mut pending: Vec<(Vec<PeerChange>, wgcable_peers::Error)> = vec![(update.peers, err)];
    while let Some((changes, err)) = pending.pop() {
        // The kernel backend says which changes the refused message carried: the ones before
        // were applied, the ones after were not sent. Without that, every change is a suspect.
        let (suspects, untried) = match err.rejected_peer_changes() {
            Some(r) if r.start < r.end && r.end <= changes.len() => {
                (changes[r.clone()].to_vec(), changes[r.end..].to_vec())
            }
            _ => (changes, Vec::new()),
        };
        let mut batches = Vec::new();
        if suspects.len() == 1 {
            applied.peer_failures.push(PeerFailure {
                key: *suspects[0].public_key(),
                reason: crate::error::chain(&err),
            });
        } else {
            let right = suspects[suspects.len() / 2..].to_vec();
            let left = suspects[..suspects.len() / 2].to_vec();
            batches.extend([left, right]);
        }
        batches.push(untried);
        for batch in batches.into_iter().filter(|b| !b.is_empty()) {
            applied.device_requests += 1;
            let part = DeviceUpdate {
                private_key: None,
                listen_port: None,
                peers: batch,
            };
            match device.apply(name, &part).await {
                Ok(()) => {}
                Err(e) if e.is_rejected_config() => pending.push((part.peers, e)),
                Err(e) => return Err(Error::device(action())(e)),
            }
        }
    }
    Ok(())
}

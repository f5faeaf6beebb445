//! Removing everything a gateway installed.

use std::fmt;

use wgcable_netlink::Netlink;
use wgcable_peers::WgDevice;

use crate::Error;

/// What [`cleanup_host`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub rules_removed: usize,
    pub routes_removed: usize,
    /// The device (for userspace, with its process) was there and is gone.
    pub device_removed: bool,
}

impl CleanupReport {
    pub fn is_empty(&self) -> bool {
        self.rules_removed == 0 && self.routes_removed == 0 && !self.device_removed
    }
}

/// `removed device submariner, 4 route(s) and 2 rule(s)`, or `nothing to remove`.
impl fmt::Display for CleanupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("nothing to remove");
        }
        let mut parts = Vec::new();
        if self.device_removed {
            parts.push("the WireGuard device".to_owned());
        }
        if self.routes_removed > 0 {
            parts.push(format!("{} route(s)", self.routes_removed));
        }
        if self.rules_removed > 0 {
            parts.push(format!("{} rule(s)", self.rules_removed));
        }
        write!(f, "removed {}", parts.join(", "))
    }
}

/// Removes what a gateway installed: the rules looking up `table` at `priority`, the routes in
/// `table` through the device, and the device (for userspace, its process too); `device` is
/// `None` when there is no device. Absent parts are fine, so it can run any number of times
/// and after a crash; the report says what was actually there.
pub async fn cleanup_host(
    netlink: &dyn Netlink,
    device: Option<&dyn WgDevice>,
    name: &str,
    table: u32,
    priority: u32,
) -> Result<CleanupReport, Error> {
    let mut report = CleanupReport::default();
    let rules = netlink
        .rule_list()
        .await
        .map_err(Error::netlink("listing rules"))?;
    for rule in rules
        .iter()
        .filter(|r| r.table == table && r.priority == Some(priority))
    {
        match netlink.rule_del(rule).await {
            Ok(()) => report.rules_removed += 1,
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                return Err(Error::netlink(format!(
                    "removing the rule that looks up table {table}"
                ))(e))
            }
        }
    }
    if let Some(link) = netlink
        .link_get(name)
        .await
        .map_err(Error::netlink(format!("looking up link {name}")))?
    {
        let routes = netlink
            .route_list(table)
            .await
            .map_err(Error::netlink(format!("listing table {table}")))?;
        let ours: Vec<_> = routes
            .into_iter()
            .filter(|r| r.oif == Some(link.index))
            .collect();
        if !ours.is_empty() {
            netlink
                .route_del(&ours)
                .await
                .map_err(Error::netlink(format!("removing routes in table {table}")))?;
            report.routes_removed = ours.len();
        }
    }
    if let Some(device) = device {
        let present = device
            .read(name)
            .await
            .map_err(Error::device(format!("reading WireGuard device {name}")))?
            .is_some();
        device
            .delete(name)
            .await
            .map_err(Error::device(format!("deleting WireGuard device {name}")))?;
        report.device_removed = present;
    }
    Ok(report)
}

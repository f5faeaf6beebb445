//! Pure planning: observed kernel state + desired state -> the operations to carry out.
//!
//! No I/O here, so every rule of "what is already right" is unit-tested without a kernel.

use std::collections::{HashMap, HashSet};

use ipnet::IpNet;

use crate::types::{Route, RouteSpec};

/// The route operations that take a table/link from what it has to what is wanted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteDiff {
    /// Routes to add or replace (`NLM_F_CREATE | NLM_F_REPLACE`).
    pub to_add: Vec<RouteSpec>,
    /// Routes to delete, exactly as the kernel reported them.
    pub to_del: Vec<Route>,
}

impl RouteDiff {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.to_add.is_empty() && self.to_del.is_empty()
    }
}

/// Computes what to change so that the routes of `table` through link `oif` are `desired`.
///
/// - Only routes of `current` in `table` whose `oif` is `oif` are considered; routes of
///   other links or tables are never deleted.
/// - A desired route already present exactly (same prefix, link, source, no gateway) is
///   left alone, so syncing twice does nothing the second time.
/// - A desired prefix present with another source or a gateway is re-added: the add
///   replaces it in place, so it is not also deleted (deleting it afterwards could remove
///   the replacement, as IPv6 deletes ignore the source).
/// - Host bits are ignored (`10.0.0.1/24` is `10.0.0.0/24`); when `desired` names a
///   prefix twice, the first entry wins.
/// - `desired` entries are used as given; [`sync_routes`](crate::sync_routes) rejects
///   entries for another table or link before calling this.
pub fn diff_routes(current: &[Route], desired: &[RouteSpec], table: u32, oif: u32) -> RouteDiff {
    let ours: Vec<&Route> = current
        .iter()
        .filter(|r| r.table == table && r.oif == Some(oif))
        .collect();
    // By prefix, so thousands of routes diff in linear time (a prefix is usually there once;
    // the kernel can hold it more than once, e.g. with another source).
    let mut by_dst: HashMap<IpNet, Vec<&Route>> = HashMap::with_capacity(ours.len());
    for r in &ours {
        by_dst.entry(r.dst.trunc()).or_default().push(r);
    }

    let mut seen = HashSet::new();
    let to_add = desired
        .iter()
        .filter(|spec| seen.insert(spec.dst.trunc()))
        .filter(|spec| {
            !by_dst
                .get(&spec.dst.trunc())
                .is_some_and(|rs| rs.iter().any(|r| spec.is_satisfied_by(r)))
        })
        .cloned()
        .collect();
    let to_del = ours
        .into_iter()
        .filter(|r| !seen.contains(&r.dst.trunc()))
        .cloned()
        .collect();
    RouteDiff { to_add, to_del }
}

/// The address operations that take a link from what it has to what is wanted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrDiff {
    /// Addresses to add.
    pub to_add: Vec<IpNet>,
    /// Addresses to remove.
    pub to_del: Vec<IpNet>,
}

impl AddrDiff {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.to_add.is_empty() && self.to_del.is_empty()
    }
}

/// Computes which addresses to add and remove so that a link has exactly `desired`.
///
/// Addresses compare by address AND prefix length (`10.0.0.1/24` is not `10.0.0.1/32`).
/// IPv6 link-local addresses (`fe80::/10`) are never removed: the kernel assigns them
/// itself and IPv6 needs them.
pub fn diff_addrs(current: &[IpNet], desired: &[IpNet]) -> AddrDiff {
    let mut seen = HashSet::new();
    let to_add = desired
        .iter()
        .filter(|a| seen.insert(**a))
        .filter(|a| !current.contains(a))
        .copied()
        .collect();
    let to_del = current
        .iter()
        .filter(|a| !desired.contains(a) && !is_ipv6_link_local(a))
        .copied()
        .collect();
    AddrDiff { to_add, to_del }
}

fn is_ipv6_link_local(net: &IpNet) -> bool {
    match net {
        IpNet::V6(net) => net.addr().segments()[0] & 0xffc0 == 0xfe80,
        IpNet::V4(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    /// (name, current, desired, expected to_add, expected to_del)
    type RouteCase = (
        &'static str,
        Vec<Route>,
        Vec<RouteSpec>,
        Vec<RouteSpec>,
        Vec<Route>,
    );
    /// (name, current, desired, expected to_add, expected to_del), addresses as text.
    type AddrCase = (
        &'static str,
        Vec<&'static str>,
        Vec<&'static str>,
        Vec<&'static str>,
        Vec<&'static str>,
    );

    fn net(s: &str) -> IpNet {
        s.parse().expect("test prefix")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn route(dst: &str, table: u32, oif: u32, src: Option<&str>) -> Route {
        Route {
            dst: net(dst),
            table,
            oif: Some(oif),
            gateway: None,
            pref_src: src.map(ip),
            protocol: 4,
            scope: 253,
        }
    }

    fn spec(dst: &str, table: u32, oif: u32, src: Option<&str>) -> RouteSpec {
        RouteSpec {
            dst: net(dst),
            oif,
            table,
            pref_src: src.map(ip),
        }
    }

    #[test]
    fn diff_routes_cases() {
        let gw_route = Route {
            gateway: Some(ip("192.0.2.1")),
            ..route("10.9.0.0/16", 150, 7, None)
        };
        // (name, current, desired, expected to_add, expected to_del)
        let cases: Vec<RouteCase> = vec![
            ("empty", vec![], vec![], vec![], vec![]),
            (
                "all new",
                vec![],
                vec![
                    spec("10.1.0.0/16", 150, 7, None),
                    spec("fd00::/64", 150, 7, None),
                ],
                vec![
                    spec("10.1.0.0/16", 150, 7, None),
                    spec("fd00::/64", 150, 7, None),
                ],
                vec![],
            ),
            (
                "already right is untouched",
                vec![route("10.1.0.0/16", 150, 7, Some("10.0.0.1"))],
                vec![spec("10.1.0.0/16", 150, 7, Some("10.0.0.1"))],
                vec![],
                vec![],
            ),
            (
                "host bits are ignored",
                vec![route("10.1.0.0/16", 150, 7, None)],
                vec![spec("10.1.2.3/16", 150, 7, None)],
                vec![],
                vec![],
            ),
            (
                "stale route is deleted",
                vec![
                    route("10.1.0.0/16", 150, 7, None),
                    route("10.2.0.0/16", 150, 7, None),
                ],
                vec![spec("10.1.0.0/16", 150, 7, None)],
                vec![],
                vec![route("10.2.0.0/16", 150, 7, None)],
            ),
            (
                "wrong source is replaced, not deleted",
                vec![route("10.1.0.0/16", 150, 7, Some("10.0.0.9"))],
                vec![spec("10.1.0.0/16", 150, 7, Some("10.0.0.1"))],
                vec![spec("10.1.0.0/16", 150, 7, Some("10.0.0.1"))],
                vec![],
            ),
            (
                "route with a gateway is replaced",
                vec![gw_route],
                vec![spec("10.9.0.0/16", 150, 7, None)],
                vec![spec("10.9.0.0/16", 150, 7, None)],
                vec![],
            ),
            (
                "other links and tables are never deleted",
                vec![
                    route("10.3.0.0/16", 150, 8, None),
                    route("10.4.0.0/16", 254, 7, None),
                ],
                vec![],
                vec![],
                vec![],
            ),
            (
                "a route of another link does not satisfy the spec",
                vec![route("10.3.0.0/16", 150, 8, None)],
                vec![spec("10.3.0.0/16", 150, 7, None)],
                vec![spec("10.3.0.0/16", 150, 7, None)],
                vec![],
            ),
            (
                "duplicate desired prefixes: first wins",
                vec![],
                vec![
                    spec("10.1.0.0/16", 150, 7, Some("10.0.0.1")),
                    spec("10.1.0.0/16", 150, 7, None),
                ],
                vec![spec("10.1.0.0/16", 150, 7, Some("10.0.0.1"))],
                vec![],
            ),
            (
                "v4 and v6 side by side",
                vec![
                    route("fd00:1::/64", 150, 7, None),
                    route("10.5.0.0/16", 150, 7, None),
                ],
                vec![
                    spec("fd00:1::/64", 150, 7, None),
                    spec("fd00:2::/64", 150, 7, None),
                ],
                vec![spec("fd00:2::/64", 150, 7, None)],
                vec![route("10.5.0.0/16", 150, 7, None)],
            ),
        ];
        for (name, current, desired, to_add, to_del) in cases {
            let diff = diff_routes(&current, &desired, 150, 7);
            assert_eq!(diff, RouteDiff { to_add, to_del }, "case {name}");
        }
    }

    #[test]
    fn diff_routes_is_idempotent_once_applied() {
        let desired: Vec<RouteSpec> = (0..=255u8)
            .map(|i| spec(&format!("10.{i}.0.0/16"), 150, 3, None))
            .collect();
        let applied: Vec<Route> = desired
            .iter()
            .map(|s| route(&s.dst.to_string(), 150, 3, None))
            .collect();
        assert_eq!(diff_routes(&[], &desired, 150, 3).to_add.len(), 256);
        assert!(diff_routes(&applied, &desired, 150, 3).is_empty());
    }

    #[test]
    fn diff_addrs_cases() {
        // (name, current, desired, expected to_add, expected to_del)
        let cases: Vec<AddrCase> = vec![
            ("empty", vec![], vec![], vec![], vec![]),
            (
                "add missing",
                vec![],
                vec!["10.0.0.1/32", "fd00::1/128"],
                vec!["10.0.0.1/32", "fd00::1/128"],
                vec![],
            ),
            (
                "already right",
                vec!["10.0.0.1/32"],
                vec!["10.0.0.1/32"],
                vec![],
                vec![],
            ),
            (
                "remove extra",
                vec!["10.0.0.1/32", "10.0.0.2/32"],
                vec!["10.0.0.1/32"],
                vec![],
                vec!["10.0.0.2/32"],
            ),
            (
                "prefix length counts",
                vec!["10.0.0.1/24"],
                vec!["10.0.0.1/32"],
                vec!["10.0.0.1/32"],
                vec!["10.0.0.1/24"],
            ),
            (
                "link-local v6 is kept",
                vec!["fe80::1/64", "fd00::2/64"],
                vec![],
                vec![],
                vec!["fd00::2/64"],
            ),
            (
                "duplicates in desired",
                vec![],
                vec!["10.0.0.1/32", "10.0.0.1/32"],
                vec!["10.0.0.1/32"],
                vec![],
            ),
        ];
        for (name, current, desired, to_add, to_del) in cases {
            let nets = |v: Vec<&str>| v.into_iter().map(net).collect::<Vec<_>>();
            let diff = diff_addrs(&nets(current), &nets(desired));
            assert_eq!(
                diff,
                AddrDiff {
                    to_add: nets(to_add),
                    to_del: nets(to_del)
                },
                "case {name}"
            );
        }
    }
}

//! Idempotent helpers written once over the [`Netlink`] trait, so they behave the same on
//! the kernel, the fake and the mock.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::{Error, Op};
use crate::plan::{diff_addrs, diff_routes, AddrDiff, RouteDiff};
use crate::types::{Link, LinkKind, RouteSpec, Rule};
use crate::Netlink;

/// Makes the routes of `table` through link `oif` exactly `desired`, and returns what it
/// changed.
///
/// Only routes in `table` whose output link is `oif` are read for deletion; routes that are
/// already right are not touched (no flapping, no kernel notification). Adds use replace
/// semantics, so a desired prefix that another link holds in `table` is taken over.
/// Every entry of `desired` must be for `table` and `oif`.
pub async fn sync_routes<N: Netlink + ?Sized>(
    nl: &N,
    table: u32,
    oif: u32,
    desired: &[RouteSpec],
) -> Result<RouteDiff, Error> {
    if let Some(stray) = desired.iter().find(|s| s.table != table || s.oif != oif) {
        return Err(Error::InvalidInput {
            op: Op::RouteAdd {
                dst: stray.dst,
                table: stray.table,
                oif: stray.oif,
            },
            reason: format!("syncing table {table} of link with index {oif} got a route for another table or link"),
        });
    }
    let current = nl.route_list(table).await?;
    let diff = diff_routes(&current, desired, table, oif);
    // Adds first: a prefix that moves never leaves a gap, and the two sets never share a
    // prefix, so the order cannot undo anything.
    if !diff.to_add.is_empty() {
        nl.route_add(&diff.to_add).await?;
    }
    if !diff.to_del.is_empty() {
        nl.route_del(&diff.to_del).await?;
    }
    Ok(diff)
}

/// Returns the link `name`, creating it with `kind` if it does not exist; the flag says
/// whether it was created.
///
/// A link of another kind under that name is an [`Error::WrongKind`]: it might belong to
/// someone else, so it is never deleted here. For a veth only the kind is checked, not the
/// peer's name.
pub async fn ensure_link<N: Netlink + ?Sized>(
    nl: &N,
    name: &str,
    kind: &LinkKind,
) -> Result<(Link, bool), Error> {
    if let Some(link) = nl.link_get(name).await? {
        return match link.kind.as_deref() {
            Some(found) if found == kind.as_str() => Ok((link, false)),
            found => Err(Error::WrongKind {
                name: name.to_owned(),
                wanted: kind.as_str().to_owned(),
                found: found.unwrap_or("none").to_owned(),
            }),
        };
    }
    let link = nl.link_add(name, kind).await?;
    Ok((link, true))
}

/// Gives link `index` exactly the addresses `desired` (see [`diff_addrs`] for how they
/// compare), and returns what it changed. Extras are removed before missing ones are added,
/// so the same address can change its prefix length.
pub async fn ensure_addrs<N: Netlink + ?Sized>(
    nl: &N,
    index: u32,
    desired: &[IpNet],
) -> Result<AddrDiff, Error> {
    let current = nl.addr_list(index).await?;
    let diff = diff_addrs(&current, desired);
    for addr in &diff.to_del {
        match nl.addr_del(index, *addr).await {
            // Gone already (e.g. removed with its primary): that is the goal.
            Err(e) if e.is_not_found() => {}
            other => other?,
        }
    }
    for addr in &diff.to_add {
        nl.addr_add(index, *addr).await?;
    }
    Ok(diff)
}

/// Adds `rule` unless a rule matching it ([`Rule::matches`]) exists; returns whether it
/// added one. Without a priority, any priority matches: the kernel gives each new
/// priority-less rule a fresh priority, so blindly adding would pile up duplicates.
pub async fn ensure_rule<N: Netlink + ?Sized>(nl: &N, rule: &Rule) -> Result<bool, Error> {
    let rules = nl.rule_list().await?;
    if rules.iter().any(|existing| rule.matches(existing)) {
        return Ok(false);
    }
    nl.rule_add(rule).await?;
    Ok(true)
}

/// The MTU of the link the kernel would send packets to `dst` through (the underlay),
/// from which a tunnel's MTU is derived.
pub async fn underlay_mtu<N: Netlink + ?Sized>(nl: &N, dst: IpAddr) -> Result<u32, Error> {
    let lookup = nl.route_get(dst).await?;
    match nl.link_get_by_index(lookup.oif).await? {
        Some(link) => Ok(link.mtu),
        // The link vanished between the two calls.
        None => Err(Error::from_errno(
            Op::LinkGetByIndex { index: lookup.oif },
            libc::ENODEV,
        )),
    }
}

/// The local address the kernel would use as the source of packets to `dst`.
pub async fn source_for<N: Netlink + ?Sized>(nl: &N, dst: IpAddr) -> Result<Option<IpAddr>, Error> {
    Ok(nl.route_get(dst).await?.pref_src)
}

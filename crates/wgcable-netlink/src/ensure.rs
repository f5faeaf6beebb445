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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Route;
    use crate::{IpFamily, MockNetlink};

    fn route(dst: &str) -> Route {
        Route {
            dst: dst.parse().expect("test prefix"),
            table: 150,
            oif: Some(3),
            gateway: None,
            pref_src: None,
            protocol: 4,
            scope: 253,
        }
    }

    fn spec(dst: &str) -> RouteSpec {
        RouteSpec {
            dst: dst.parse().expect("test prefix"),
            oif: 3,
            table: 150,
            pref_src: None,
        }
    }

    // The mock panics on any call it was not told to expect, so these tests pin down
    // exactly which requests each helper sends.

    #[tokio::test]
    async fn sync_with_nothing_to_do_only_lists() {
        let mut nl = MockNetlink::new();
        nl.expect_route_list()
            .withf(|table| *table == 150)
            .times(1)
            .returning(|_| Ok(vec![route("10.1.0.0/16")]));
        let diff = sync_routes(&nl, 150, 3, &[spec("10.1.0.0/16")])
            .await
            .expect("sync");
        assert!(diff.is_empty());
    }

    #[tokio::test]
    async fn sync_sends_one_batch_each_way() {
        let mut nl = MockNetlink::new();
        let mut seq = mockall::Sequence::new();
        nl.expect_route_list()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(vec![route("10.1.0.0/16"), route("10.2.0.0/16")]));
        nl.expect_route_add()
            .withf(|routes| routes == [spec("10.3.0.0/16"), spec("10.4.0.0/16")])
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(()));
        nl.expect_route_del()
            .withf(|routes| routes == [route("10.2.0.0/16")])
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(()));
        let desired = [
            spec("10.1.0.0/16"),
            spec("10.3.0.0/16"),
            spec("10.4.0.0/16"),
        ];
        let diff = sync_routes(&nl, 150, 3, &desired).await.expect("sync");
        assert_eq!((diff.to_add.len(), diff.to_del.len()), (2, 1));
    }

    #[tokio::test]
    async fn ensure_link_passes_unsupported_through() {
        let mut nl = MockNetlink::new();
        nl.expect_link_get().times(1).returning(|_| Ok(None));
        nl.expect_link_add().times(1).returning(|name, kind| {
            Err(Error::from_errno(
                Op::LinkAdd {
                    name: name.to_owned(),
                    kind: kind.as_str().to_owned(),
                },
                libc::EOPNOTSUPP,
            ))
        });
        let err = ensure_link(&nl, "wg0", &LinkKind::Wireguard)
            .await
            .expect_err("unsupported");
        assert!(err.is_unsupported(), "{err}");
        assert!(
            err.to_string()
                .starts_with("creating link wg0 of kind wireguard"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn ensure_rule_does_not_add_a_matching_rule() {
        let mut nl = MockNetlink::new();
        // As the kernel lists the rule after `ip rule add not fwmark 5871 lookup 220`.
        let existing = Rule {
            priority: Some(32765),
            fwmark: Some(5871),
            fwmask: Some(u32::MAX),
            invert: true,
            ..Rule::lookup(IpFamily::V4, 220)
        };
        nl.expect_rule_list()
            .times(1)
            .returning(move || Ok(vec![existing.clone()]));
        let wanted = Rule {
            fwmark: Some(5871),
            invert: true,
            ..Rule::lookup(IpFamily::V4, 220)
        };
        assert!(!ensure_rule(&nl, &wanted).await.expect("ensure"));
    }

    #[test]
    fn rule_matching_cases() {
        let base = Rule::lookup(IpFamily::V4, 150);
        let net = |s: &str| Some(s.parse::<IpNet>().expect("test prefix"));
        // (name, wanted, existing as listed by the kernel, matches)
        let cases = [
            ("identical", base.clone(), base.clone(), true),
            (
                "no priority matches any",
                base.clone(),
                Rule {
                    priority: Some(7),
                    ..base.clone()
                },
                true,
            ),
            (
                "priority must agree",
                Rule {
                    priority: Some(8),
                    ..base.clone()
                },
                Rule {
                    priority: Some(7),
                    ..base.clone()
                },
                false,
            ),
            (
                "table differs",
                base.clone(),
                Rule {
                    table: 151,
                    ..base.clone()
                },
                false,
            ),
            (
                "family differs",
                base.clone(),
                Rule {
                    family: IpFamily::V6,
                    ..base.clone()
                },
                false,
            ),
            (
                "mark implies full mask",
                Rule {
                    fwmark: Some(1),
                    ..base.clone()
                },
                Rule {
                    fwmark: Some(1),
                    fwmask: Some(u32::MAX),
                    ..base.clone()
                },
                true,
            ),
            (
                "other mask",
                Rule {
                    fwmark: Some(1),
                    ..base.clone()
                },
                Rule {
                    fwmark: Some(1),
                    fwmask: Some(0xff),
                    ..base.clone()
                },
                false,
            ),
            (
                "mask 0 without mark is no mark",
                base.clone(),
                Rule {
                    fwmask: Some(0),
                    ..base.clone()
                },
                true,
            ),
            (
                "invert counts",
                Rule {
                    invert: true,
                    ..base.clone()
                },
                base.clone(),
                false,
            ),
            (
                "host bits ignored",
                Rule {
                    dst: net("10.1.2.3/16"),
                    ..base.clone()
                },
                Rule {
                    dst: net("10.1.0.0/16"),
                    ..base.clone()
                },
                true,
            ),
            (
                "/0 is no prefix",
                Rule {
                    src: net("0.0.0.0/0"),
                    ..base.clone()
                },
                base.clone(),
                true,
            ),
            (
                "dst is not src",
                Rule {
                    dst: net("10.1.0.0/16"),
                    ..base.clone()
                },
                Rule {
                    src: net("10.1.0.0/16"),
                    ..base.clone()
                },
                false,
            ),
            (
                "a selector is not a wildcard",
                base.clone(),
                Rule {
                    dst: net("10.1.0.0/16"),
                    ..base.clone()
                },
                false,
            ),
        ];
        for (name, wanted, existing, expected) in cases {
            assert_eq!(wanted.matches(&existing), expected, "case {name}");
        }
    }
}

//! The netlink contract (feature `testing`): one suite that [`crate::FakeNetlink`] and
//! [`crate::RtNetlink`] (in a fresh network namespace, `tests/kernel.rs`) both pass, so the
//! in-memory kernel every upper crate's tests use cannot drift from the real one.
//!
//! It asserts what callers rely on: what a lookup returns, that adding what exists is
//! `is_exists()` and removing what is gone is `is_not_found()`, and that routes, addresses and
//! rules read back as written, that adding a route again replaces it and removing a route that is gone is no error, and
//! that a lookup follows policy rules into their table. It panics on the first broken promise.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::{IpFamily, LinkKind, Netlink, RouteSpec, Rule};

const LINK: &str = "nlct0";
const TABLE: u32 = 150;

fn net(s: &str) -> IpNet {
    s.parse().expect("test prefix")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// The contract; `nl` must be a namespace (or fake) of its own with nothing named `nlct*`.
pub async fn netlink_contract(nl: &dyn Netlink) {
    // Lookups of what is not there.
    assert_eq!(nl.link_get("nlctmissing").await.expect("get"), None);
    assert_eq!(nl.link_get_by_index(999_999).await.expect("get"), None);
    let lo = nl.link_get("lo").await.expect("get lo").expect("lo exists");
    assert_eq!(lo.kind, None, "loopback has no link kind");

    // Links: a veth pair (every kernel here has veth), its kind, up and MTU, no duplicates.
    let link = nl
        .link_add(
            LINK,
            &LinkKind::Veth {
                peer: format!("{LINK}p"),
            },
        )
        .await
        .expect("adding a veth");
    assert_eq!(link.name, LINK);
    assert_eq!(link.kind.as_deref(), Some("veth"));
    assert!(!link.up, "a new link is down");
    let names: Vec<String> = nl
        .link_list()
        .await
        .expect("list")
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert!(
        names.contains(&LINK.to_owned()) && names.contains(&format!("{LINK}p")),
        "both ends are listed: {names:?}"
    );
    let again = nl
        .link_add(
            LINK,
            &LinkKind::Veth {
                peer: format!("{LINK}q"),
            },
        )
        .await
        .expect_err("a second link of the same name");
    assert!(again.is_exists(), "{again}");
    nl.link_set_up(link.index, true).await.expect("up");
    nl.link_set_mtu(link.index, 1400).await.expect("mtu");
    let got = nl
        .link_get_by_index(link.index)
        .await
        .expect("get")
        .expect("exists");
    assert!(got.up, "set up");
    assert_eq!(got.mtu, 1400);

    // Addresses of both families; adding twice is is_exists, removing twice is_not_found.
    let v4 = net("10.99.0.1/24");
    let v6 = net("fd00:99::1/64");
    for a in [v4, v6] {
        nl.addr_add(link.index, a).await.expect("adding an address");
    }
    let addrs = nl.addr_list(link.index).await.expect("addresses");
    assert!(
        addrs.contains(&v4) && addrs.contains(&v6),
        "addresses read back: {addrs:?}"
    );
    let dup = nl.addr_add(link.index, v4).await.expect_err("twice");
    assert!(dup.is_exists(), "{dup}");

    // Routes in a table of our own, through the link, with a source; then a lookup.
    let specs = [
        RouteSpec {
            dst: net("10.98.0.0/16"),
            oif: link.index,
            table: TABLE,
            pref_src: Some(ip("10.99.0.1")),
        },
        RouteSpec {
            dst: net("fd00:98::/48"),
            oif: link.index,
            table: TABLE,
            pref_src: Some(ip("fd00:99::1")),
        },
    ];
    nl.route_add(&specs).await.expect("adding routes");
    let routes = nl.route_list(TABLE).await.expect("routes");
    for spec in &specs {
        assert!(
            routes.iter().any(|r| spec.is_satisfied_by(r)),
            "{spec:?} reads back from {routes:?}"
        );
    }
    assert!(routes.iter().all(|r| r.table == TABLE));
    // Adding a route again replaces it (NLM_F_REPLACE): no error, no second copy.
    nl.route_add(&specs[..1])
        .await
        .expect("adding a route again");
    assert_eq!(
        nl.route_list(TABLE).await.expect("routes").len(),
        routes.len(),
        "no duplicate route"
    );

    // A rule per family that looks the table up.
    let rules = [IpFamily::V4, IpFamily::V6].map(|family| Rule {
        family,
        priority: Some(100),
        table: TABLE,
        dst: None,
        src: None,
        fwmark: None,
        fwmask: None,
        invert: false,
    });
    for r in &rules {
        nl.rule_add(r).await.expect("adding a rule");
    }
    let listed = nl.rule_list().await.expect("rules");
    for r in &rules {
        assert!(
            listed
                .iter()
                .any(|l| l.family == r.family && l.table == TABLE && l.priority == Some(100)),
            "{r:?} reads back from {listed:?}"
        );
    }
    let dup = nl.rule_add(&rules[0]).await.expect_err("twice");
    assert!(dup.is_exists(), "{dup}");

    // With the rule in place, the kernel routes a remote address through our table.
    let lookup = nl.route_get(ip("10.98.1.1")).await.expect("lookup");
    assert_eq!(lookup.oif, link.index, "routed through the link");
    assert_eq!(lookup.pref_src, Some(ip("10.99.0.1")));
    assert_eq!(lookup.gateway, None);

    // Removing, and removing again.
    for r in &rules {
        nl.rule_del(r).await.expect("removing a rule");
        let gone = nl.rule_del(r).await.expect_err("twice");
        assert!(gone.is_not_found(), "{gone}");
    }
    let routes = nl.route_list(TABLE).await.expect("routes");
    nl.route_del(&routes).await.expect("removing routes");
    assert!(nl.route_list(TABLE).await.expect("routes").is_empty());
    // Removing a route that is gone is no error: the goal is reached.
    nl.route_del(&routes[..1])
        .await
        .expect("removing a route again");
    nl.addr_del(link.index, v4)
        .await
        .expect("removing an address");
    let gone = nl.addr_del(link.index, v4).await.expect_err("twice");
    assert!(gone.is_not_found(), "{gone}");
    let addrs = nl.addr_list(link.index).await.expect("addresses");
    assert!(!addrs.contains(&v4) && addrs.contains(&v6), "{addrs:?}");

    // Deleting one end of a veth removes both.
    nl.link_del(link.index).await.expect("deleting the link");
    assert_eq!(nl.link_get(LINK).await.expect("get"), None);
    assert_eq!(nl.link_get(&format!("{LINK}p")).await.expect("get"), None);
    let gone = nl.link_del(link.index).await.expect_err("twice");
    assert!(gone.is_not_found(), "{gone}");
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn fake_netlink_passes_the_netlink_contract() {
        super::netlink_contract(&crate::FakeNetlink::new()).await;
    }
}

//! Tests against the real kernel. Each one runs in a fresh network namespace of its own
//! (its thread unshares `CLONE_NEWNET`), so nothing of the host's network is touched.
//! Without the privilege to do that they print one "skipped" line - unless `CI` is set,
//! where a missing privilege fails the test.

use std::future::Future;
use std::net::IpAddr;

use futures::StreamExt;
use ipnet::IpNet;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::route::RouteAttribute;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;
use wgcable_netlink::testing::in_netns;
use wgcable_netlink::{
    ensure_addrs, ensure_link, ensure_rule, source_for, sync_routes, underlay_mtu, Error, IpFamily,
    Link, LinkKind, Netlink, RouteSpec, RtNetlink, Rule,
};

fn net(s: &str) -> IpNet {
    s.parse().expect("test prefix")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// A link that is up, to hang addresses and routes on: a dummy where the kernel has the
/// driver, else one end of a veth pair (with the other end `<name>-p` up too).
async fn scratch_link(nl: &RtNetlink, name: &str) -> Link {
    let link = match nl.link_add(name, &LinkKind::Dummy).await {
        Ok(link) => link,
        Err(e) if e.is_unsupported() => {
            let peer = format!("{name}-p");
            let link = nl
                .link_add(name, &LinkKind::Veth { peer: peer.clone() })
                .await
                .expect("add veth");
            let peer = nl
                .link_get(&peer)
                .await
                .expect("get peer")
                .expect("peer exists");
            nl.link_set_up(peer.index, true).await.expect("set peer up");
            link
        }
        Err(e) => panic!("add dummy {name}: {e}"),
    };
    nl.link_set_up(link.index, true).await.expect("set link up");
    link
}

/// Creates, reads, changes and deletes a link of `kind`.
async fn exercise_link(nl: &RtNetlink, name: &str, kind: &LinkKind) {
    let link = nl.link_add(name, kind).await.expect("add link");
    assert_eq!(link.name, name);
    assert_eq!(link.kind.as_deref(), Some(kind.as_str()));
    assert!(!link.up);
    let dup = nl.link_add(name, kind).await.expect_err("duplicate");
    assert!(dup.is_exists(), "{dup}");

    nl.link_set_up(link.index, true).await.expect("up");
    nl.link_set_mtu(link.index, 1380).await.expect("mtu");
    let got = nl
        .link_get_by_index(link.index)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!((got.up, got.mtu, got.name.as_str()), (true, 1380, name));
    assert_ne!(got.flags & wgcable_netlink::IFF_UP, 0);
    nl.link_set_up(link.index, false).await.expect("down");
    assert!(!nl.link_get(name).await.expect("get").expect("exists").up);

    nl.link_del(link.index).await.expect("delete");
    assert_eq!(nl.link_get(name).await.expect("get"), None);
    assert_eq!(nl.link_get_by_index(link.index).await.expect("get"), None);
    let gone = nl.link_del(link.index).await.expect_err("already gone");
    assert!(gone.is_not_found(), "{gone}");
    let err = nl
        .link_set_mtu(link.index, 1400)
        .await
        .expect_err("no such link");
    assert!(err.is_not_found(), "{err}");
}

#[test]
fn dummy_veth_and_vxlan_links() {
    in_netns("dummy_veth_and_vxlan_links", |nl| async move {
        // Some kernels are built without the dummy driver; that must read as unsupported.
        match nl.link_add("probe0", &LinkKind::Dummy).await {
            Ok(probe) => {
                nl.link_del(probe.index).await.expect("delete probe");
                exercise_link(&nl, "dummy0", &LinkKind::Dummy).await;
            }
            Err(e) => {
                assert!(e.is_unsupported(), "{e}");
                println!("note: this kernel has no dummy driver; dummy links not exercised");
            }
        }
        let vxlan = LinkKind::Vxlan {
            vni: 42,
            port: Some(4789),
            dev: None,
            local: Some(ip("192.0.2.1")),
        };
        exercise_link(&nl, "vxlan0", &vxlan).await;
        exercise_link(
            &nl,
            "veth-x",
            &LinkKind::Veth {
                peer: "veth-y".to_owned(),
            },
        )
        .await;
        assert_eq!(
            nl.link_get("veth-y").await.expect("get"),
            None,
            "the peer goes with its veth"
        );

        let veth = nl
            .link_add(
                "veth-a",
                &LinkKind::Veth {
                    peer: "veth-b".to_owned(),
                },
            )
            .await
            .expect("add veth");
        let peer = nl
            .link_get("veth-b")
            .await
            .expect("get")
            .expect("peer exists");
        assert_eq!(peer.kind.as_deref(), Some("veth"));
        assert_ne!(peer.index, veth.index);
        let names: Vec<String> = nl
            .link_list()
            .await
            .expect("list")
            .into_iter()
            .map(|l| l.name)
            .collect();
        for name in ["lo", "veth-a", "veth-b"] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        let err = nl
            .link_add("a-name-much-too-long", &LinkKind::Dummy)
            .await
            .expect_err("long name");
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    });
}

#[test]
fn ensure_link_refuses_the_wrong_kind() {
    in_netns("ensure_link_refuses_the_wrong_kind", |nl| async move {
        let (link, created) = ensure_link(&nl, "cable0", &LinkKind::Other("bridge".to_owned()))
            .await
            .expect("create");
        assert!(created);
        let (again, created) = ensure_link(&nl, "cable0", &LinkKind::Other("bridge".to_owned()))
            .await
            .expect("reuse");
        assert_eq!((again.index, created), (link.index, false));

        let err = ensure_link(
            &nl,
            "cable0",
            &LinkKind::Veth {
                peer: "p".to_owned(),
            },
        )
        .await
        .expect_err("wrong kind");
        assert!(
            matches!(&err, Error::WrongKind { found, wanted, .. } if found == "bridge" && wanted == "veth"),
            "{err}"
        );
        assert!(err.to_string().contains("cable0"), "{err}");
        let err = ensure_link(&nl, "lo", &LinkKind::Other("bridge".to_owned()))
            .await
            .expect_err("lo has no kind");
        assert!(
            matches!(&err, Error::WrongKind { found, .. } if found == "none"),
            "{err}"
        );
        assert!(
            nl.link_get("cable0").await.expect("get").is_some(),
            "never deleted"
        );
    });
}

#[test]
fn addresses_v4_and_v6() {
    in_netns("addresses_v4_and_v6", |nl| async move {
        let link = scratch_link(&nl, "dummy0").await;
        let desired = [net("10.0.0.1/32"), net("10.0.1.1/24"), net("fd00::1/64")];
        let diff = ensure_addrs(&nl, link.index, &desired)
            .await
            .expect("ensure");
        assert_eq!(diff.to_add, desired.to_vec());
        let have = nl.addr_list(link.index).await.expect("list");
        for addr in desired {
            assert!(have.contains(&addr), "{addr} in {have:?}");
        }

        let again = ensure_addrs(&nl, link.index, &desired)
            .await
            .expect("ensure again");
        assert!(again.is_empty(), "{again:?}");

        let dup = nl
            .addr_add(link.index, net("10.0.0.1/32"))
            .await
            .expect_err("duplicate");
        assert!(dup.is_exists(), "{dup}");
        let missing = nl
            .addr_del(link.index, net("10.9.9.9/32"))
            .await
            .expect_err("missing");
        assert!(missing.is_not_found(), "{missing}");

        let fewer = [net("10.0.0.1/24"), net("fd00::1/64")];
        let diff = ensure_addrs(&nl, link.index, &fewer).await.expect("change");
        assert_eq!(diff.to_add, vec![net("10.0.0.1/24")]);
        assert_eq!(diff.to_del.len(), 2, "{diff:?}");
        let have = nl.addr_list(link.index).await.expect("list");
        let global: Vec<IpNet> = have
            .into_iter()
            .filter(|a| !a.to_string().starts_with("fe80"))
            .collect();
        assert_eq!(global.len(), 2, "{global:?}");
        for addr in fewer {
            assert!(global.contains(&addr), "{addr} in {global:?}");
        }
    });
}

/// Counts route notifications until the sentinel route (table 151) shows up: everything
/// before it was caused by what ran between subscribing and adding the sentinel.
/// The sentinel must be a new route: the kernel announces nothing for an IPv4 route
/// replaced by an identical one.
async fn route_events_before_sentinel(
    nl: &RtNetlink,
    oif: u32,
    sentinel: &str,
    between: impl Future<Output = ()>,
) -> usize {
    let (conn, _handle, mut events) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ])
    .expect("monitor socket");
    let monitor = tokio::spawn(conn);
    between.await;
    let sentinel = RouteSpec {
        dst: net(sentinel),
        oif,
        table: 151,
        pref_src: None,
    };
    nl.route_add(&[sentinel]).await.expect("sentinel route");
    let mut before = 0;
    while let Some((message, _)) = events.next().await {
        if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) = &message.payload
        {
            if route.attributes.contains(&RouteAttribute::Table(151)) {
                monitor.abort();
                return before;
            }
        }
        before += 1;
    }
    panic!("the monitor stopped before the sentinel route was seen");
}

#[test]
fn routes_in_table_150() {
    in_netns("routes_in_table_150", |nl| async move {
        let link = scratch_link(&nl, "cable0").await;
        let other = scratch_link(&nl, "other0").await;
        nl.addr_add(link.index, net("10.0.0.1/32"))
            .await
            .expect("v4 addr");
        nl.addr_add(link.index, net("fd00::1/128"))
            .await
            .expect("v6 addr");

        let specs = [
            RouteSpec {
                dst: net("10.1.0.0/16"),
                oif: link.index,
                table: 150,
                pref_src: Some(ip("10.0.0.1")),
            },
            RouteSpec {
                dst: net("fd01::/64"),
                oif: link.index,
                table: 150,
                pref_src: Some(ip("fd00::1")),
            },
            RouteSpec {
                dst: net("10.2.0.0/16"),
                oif: link.index,
                table: 150,
                pref_src: None,
            },
        ];
        nl.route_add(&specs).await.expect("add");
        nl.route_add(&specs)
            .await
            .expect("add again: replace semantics");
        let routes = nl.route_list(150).await.expect("list");
        assert_eq!(routes.len(), 3, "{routes:?}");
        for spec in &specs {
            assert!(
                routes.iter().any(|r| spec.is_satisfied_by(r)),
                "{spec:?} in {routes:?}"
            );
        }
        assert!(nl
            .route_list(254)
            .await
            .expect("main")
            .iter()
            .all(|r| r.table == 254));

        // Tables above 255 need RTA_TABLE.
        let big = RouteSpec {
            table: 1000,
            ..specs[0].clone()
        };
        nl.route_add(std::slice::from_ref(&big))
            .await
            .expect("table 1000");
        let in_big = nl.route_list(1000).await.expect("list 1000");
        assert!(
            in_big.len() == 1 && big.is_satisfied_by(&in_big[0]),
            "{in_big:?}"
        );

        // Another link's route in the same table is never touched by a sync.
        let foreign = RouteSpec {
            dst: net("10.50.0.0/16"),
            oif: other.index,
            table: 150,
            pref_src: None,
        };
        nl.route_add(std::slice::from_ref(&foreign))
            .await
            .expect("foreign route");

        // 900 IPv4 and 100 IPv6 routes.
        let desired: Vec<RouteSpec> = (0..1000u32)
            .map(|i| {
                let (dst, src) = if i < 900 {
                    (
                        IpAddr::from([10, 100 + (i / 256) as u8, (i % 256) as u8, 0]),
                        "10.0.0.1",
                    )
                } else {
                    (
                        IpAddr::from([0xfd10, i as u16, 0, 0, 0, 0, 0, 0]),
                        "fd00::1",
                    )
                };
                RouteSpec {
                    dst: IpNet::new(dst, if i < 900 { 24 } else { 64 }).expect("prefix"),
                    oif: link.index,
                    table: 150,
                    pref_src: Some(ip(src)),
                }
            })
            .collect();
        let applied = sync_routes(&nl, 150, link.index, &desired)
            .await
            .expect("sync 1000");
        assert_eq!((applied.to_add.len(), applied.to_del.len()), (1000, 3));
        let routes = nl.route_list(150).await.expect("list");
        assert_eq!(routes.len(), 1001, "1000 routes + the foreign one");
        assert!(routes.iter().any(|r| foreign.is_satisfied_by(r)));

        // The kernel announces every route it is sent, even one replaced by itself...
        // (An IPv4 route replaced by an identical one is a silent no-op in the kernel, so
        // the IPv6 routes are the ones that would show a needless re-add.)
        let events = route_events_before_sentinel(&nl, other.index, "10.255.1.0/24", async {
            nl.route_add(&desired[999..])
                .await
                .expect("re-add one IPv6 route");
        })
        .await;
        assert_eq!(events, 1, "the monitor sees a route replaced by itself");
        // ...so a sync with nothing to change must send nothing: no notification at all.
        let events = route_events_before_sentinel(&nl, other.index, "10.255.2.0/24", async {
            let applied = sync_routes(&nl, 150, link.index, &desired)
                .await
                .expect("resync");
            assert!(applied.is_empty(), "{applied:?}");
        })
        .await;
        assert_eq!(
            events, 0,
            "an unchanged sync must not touch the kernel's routes"
        );

        let applied = sync_routes(&nl, 150, link.index, &desired[..10])
            .await
            .expect("shrink");
        assert_eq!((applied.to_add.len(), applied.to_del.len()), (0, 990));
        assert_eq!(nl.route_list(150).await.expect("list").len(), 11);

        // Deleting routes that are gone is not an error.
        nl.route_del(&applied.to_del[..5])
            .await
            .expect("already gone");
        let applied = sync_routes(&nl, 150, link.index, &[]).await.expect("empty");
        assert_eq!(applied.to_del.len(), 10);
        let left = nl.route_list(150).await.expect("list");
        assert!(
            left.len() == 1 && foreign.is_satisfied_by(&left[0]),
            "{left:?}"
        );
    });
}

#[test]
fn rules_v4_and_v6() {
    in_netns("rules_v4_and_v6", |nl| async move {
        let before = nl.rule_list().await.expect("list");
        assert!(
            before
                .iter()
                .any(|r| r.table == 254 && r.family == IpFamily::V4),
            "{before:?}"
        );

        // Submariner's original rule: not fwmark 5871 lookup 220, no priority given.
        let marked = Rule {
            fwmark: Some(5871),
            invert: true,
            ..Rule::lookup(IpFamily::V4, 220)
        };
        assert!(ensure_rule(&nl, &marked).await.expect("add"));
        assert!(!ensure_rule(&nl, &marked).await.expect("idempotent"));
        let listed: Vec<Rule> = nl
            .rule_list()
            .await
            .expect("list")
            .into_iter()
            .filter(|r| r.table == 220)
            .collect();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert!(
            listed[0].invert && listed[0].fwmark == Some(5871) && listed[0].priority.is_some(),
            "{listed:?}"
        );

        let v6 = Rule {
            priority: Some(100),
            src: Some(net("fd00:1::/64")),
            dst: Some(net("fd00:2::/64")),
            ..Rule::lookup(IpFamily::V6, 1000)
        };
        nl.rule_add(&v6).await.expect("add v6");
        let dup = nl.rule_add(&v6).await.expect_err("duplicate");
        assert!(dup.is_exists(), "{dup}");
        assert!(nl
            .rule_list()
            .await
            .expect("list")
            .iter()
            .any(|r| v6.matches(r) && r.table == 1000));
        nl.rule_del(&v6).await.expect("delete v6");
        let gone = nl.rule_del(&v6).await.expect_err("gone");
        assert!(gone.is_not_found(), "{gone}");

        nl.rule_del(&marked).await.expect("delete v4");
        assert!(!nl
            .rule_list()
            .await
            .expect("list")
            .iter()
            .any(|r| r.table == 220));
        let err = nl
            .rule_add(&Rule {
                dst: Some(net("10.0.0.0/8")),
                ..Rule::lookup(IpFamily::V6, 150)
            })
            .await
            .expect_err("family mismatch");
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    });
}

#[test]
fn rules_really_steer_lookups() {
    in_netns("rules_really_steer_lookups", |nl| async move {
        let main = scratch_link(&nl, "main0").await;
        let cable = scratch_link(&nl, "cable0").await;
        nl.addr_add(main.index, net("192.168.7.1/24"))
            .await
            .expect("addr");
        nl.addr_add(cable.index, net("10.0.0.1/32"))
            .await
            .expect("addr");
        // Without the rule, 10.99.0.0/16 has no route at all.
        let err = nl
            .route_get(ip("10.99.1.1"))
            .await
            .expect_err("unreachable");
        assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{err}");

        let route = RouteSpec {
            dst: net("10.99.0.0/16"),
            oif: cable.index,
            table: 150,
            pref_src: Some(ip("10.0.0.1")),
        };
        nl.route_add(&[route]).await.expect("route");
        let rule = Rule {
            priority: Some(100),
            dst: Some(net("10.99.0.0/16")),
            ..Rule::lookup(IpFamily::V4, 150)
        };
        nl.rule_add(&rule).await.expect("rule");
        // A rule with the default "unspec" action would make this lookup fail.
        let lookup = nl
            .route_get(ip("10.99.1.1"))
            .await
            .expect("lookup through table 150");
        assert_eq!(
            (lookup.oif, lookup.pref_src),
            (cable.index, Some(ip("10.0.0.1")))
        );
    });
}

#[test]
fn underlay_facts_on_a_veth_pair() {
    in_netns("underlay_facts_on_a_veth_pair", |nl| async move {
        let a = nl
            .link_add(
                "veth-a",
                &LinkKind::Veth {
                    peer: "veth-b".to_owned(),
                },
            )
            .await
            .expect("veth");
        let b = nl.link_get("veth-b").await.expect("get").expect("peer");
        nl.link_set_mtu(a.index, 1400).await.expect("mtu");
        for link in [&a, &b] {
            nl.link_set_up(link.index, true).await.expect("up");
        }
        nl.addr_add(a.index, net("192.168.50.1/24"))
            .await
            .expect("addr v4");
        nl.addr_add(a.index, net("fd50::1/64"))
            .await
            .expect("addr v6");

        let lookup = nl
            .route_get(ip("192.168.50.2"))
            .await
            .expect("route get v4");
        assert_eq!(
            (lookup.oif, lookup.pref_src, lookup.gateway),
            (a.index, Some(ip("192.168.50.1")), None)
        );
        assert_eq!(
            underlay_mtu(&nl, ip("192.168.50.2")).await.expect("mtu"),
            1400
        );
        assert_eq!(
            source_for(&nl, ip("192.168.50.2")).await.expect("src"),
            Some(ip("192.168.50.1"))
        );
        assert_eq!(
            source_for(&nl, ip("fd50::2")).await.expect("src v6"),
            Some(ip("fd50::1"))
        );
        assert_eq!(
            underlay_mtu(&nl, ip("fd50::2")).await.expect("mtu v6"),
            1400
        );
    });
}

#[test]
fn wireguard_link_is_unsupported_or_works() {
    in_netns("wireguard_link_is_unsupported_or_works", |nl| async move {
        match nl.link_add("wg-test", &LinkKind::Wireguard).await {
            Ok(link) => {
                assert_eq!(link.kind.as_deref(), Some("wireguard"));
                nl.link_del(link.index)
                    .await
                    .expect("delete wireguard link");
            }
            Err(err) => {
                assert!(err.is_unsupported(), "expected EOPNOTSUPP, got: {err}");
                assert!(
                    err.to_string()
                        .starts_with("creating link wg-test of kind wireguard"),
                    "{err}"
                );
                assert_eq!(nl.link_get("wg-test").await.expect("get"), None);
            }
        }
    });
}

/// The contract FakeNetlink passes too (`src/contract.rs`), against the real kernel.
#[test]
fn rtnetlink_passes_the_netlink_contract() {
    in_netns("rtnetlink_passes_the_netlink_contract", |nl| async move {
        wgcable_netlink::contract::netlink_contract(&nl).await;
    });
}

/// The kernel runs one dump per socket at a time and answers a second with EBUSY ("Device or
/// resource busy"; seen in the e2e when the engine read routes and rules concurrently on a
/// loaded machine). Deterministically: every listing is queued on the socket before its
/// connection sends anything, so without turns the kernel would see them all at once.
#[test]
fn concurrent_dumps_on_one_socket_take_turns() {
    in_netns(
        "concurrent_dumps_on_one_socket_take_turns",
        |nl| async move {
            let link = scratch_link(&nl, "dumps0").await;
            // Enough routes that one dump needs several messages: the kernel holds the dump open
            // until they are read.
            let many: Vec<RouteSpec> = (0..1500u32)
                .map(|i| RouteSpec {
                    dst: IpNet::new(IpAddr::from([10, 96, (i / 256) as u8, (i % 256) as u8]), 32)
                        .expect("prefix"),
                    oif: link.index,
                    table: 151,
                    pref_src: None,
                })
                .collect();
            nl.route_add(&many).await.expect("adding routes");
            let (other, conn) = RtNetlink::connect().expect("a second socket");
            let listings = futures::future::join_all((0..8).map(|_| async {
                let (routes, rules) = futures::join!(other.route_list(151), other.rule_list());
                (
                    routes.expect("concurrent route listing").len(),
                    rules.expect("concurrent rule listing").len(),
                )
            }));
            let mut listings = Box::pin(listings);
            assert!(
                futures::poll!(&mut listings).is_pending(),
                "nothing can be answered before the connection runs"
            );
            tokio::spawn(conn);
            let counts = listings.await;
            assert!(counts.iter().all(|c| c.0 == many.len()), "{counts:?}");
        },
    );
}

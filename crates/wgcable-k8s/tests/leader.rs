//! Lease leader election between gateways through the in-memory API server: one leader,
//! takeover after expiry, clock skew, release, lost renewals, and a Lease held by a Go
//! gateway.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{config, eventually, forward, recv, NS};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use wgcable_broker::{LeaderElector, Role};
use wgcable_k8s::testing::{FakeApiServer, FaultKind, FaultMatch, LEASES, PODS};
use wgcable_k8s::LeaseElector;

const LOCK: &str = "submariner-gateway-lock";

fn elector(server: &FakeApiServer, node: &str, skew: Duration, ahead: bool) -> LeaseElector {
    let clock: wgcable_k8s::leader::WallClock = Arc::new(move || {
        if ahead {
            SystemTime::now() + skew
        } else {
            SystemTime::now() - skew
        }
    });
    LeaseElector::with_clock(server.client(NS), &config("cluster-a", node), clock)
}

fn pod(server: &FakeApiServer, node: &str) {
    server.insert(
        PODS,
        NS,
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": format!("submariner-gateway-{node}"), "labels": {"app": "submariner-gateway"}},
            "spec": {"nodeName": node}
        }),
    );
}

fn lease(server: &FakeApiServer) -> Value {
    server.get(LEASES, NS, LOCK).expect("the Lease exists")
}

fn pod_status(server: &FakeApiServer, node: &str) -> Option<String> {
    server
        .get(PODS, NS, &format!("submariner-gateway-{node}"))
        .and_then(|p| {
            p["metadata"]["labels"]["gateway.submariner.io/status"]
                .as_str()
                .map(str::to_owned)
        })
}

async fn role(rx: &mut UnboundedReceiver<Role>, secs: u64) -> Role {
    recv(rx, secs, "a role change").await
}

async fn until_leader(rx: &mut UnboundedReceiver<Role>, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .as_secs()
            .max(1);
        if role(rx, left).await == Role::Leader {
            return;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn one_of_two_gateways_leads_and_the_pods_say_which() {
    let server = FakeApiServer::new();
    pod(&server, "node-a");
    pod(&server, "node-b");
    let a = elector(&server, "node-a", Duration::ZERO, true);
    let mut a_roles = forward(a.roles());
    assert_eq!(role(&mut a_roles, 5).await, Role::Follower { leader: None });
    until_leader(&mut a_roles, 10).await;

    let b = elector(&server, "node-b", Duration::ZERO, true);
    let mut b_roles = forward(b.roles());
    assert_eq!(role(&mut b_roles, 5).await, Role::Follower { leader: None });
    assert_eq!(
        role(&mut b_roles, 10).await,
        Role::Follower {
            leader: Some("node-a-submariner-gateway".into())
        }
    );
    // Both keep running for a minute: a renews, b never leads.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(b_roles.try_recv().is_err(), "b's role did not change");
    assert!(a_roles.try_recv().is_err(), "a stayed the leader");

    let spec = &lease(&server)["spec"];
    assert_eq!(spec["holderIdentity"], "node-a-submariner-gateway");
    assert_eq!(spec["leaseDurationSeconds"], 15);
    assert_eq!(spec["leaseTransitions"], 0);
    assert!(spec["acquireTime"].is_string() && spec["renewTime"].is_string());
    assert_eq!(pod_status(&server, "node-a").as_deref(), Some("active"));
    assert_eq!(pod_status(&server, "node-b").as_deref(), Some("passive"));
    let a_pod = server
        .get(PODS, NS, "submariner-gateway-node-a")
        .expect("pod");
    assert_eq!(
        a_pod["metadata"]["labels"]["gateway.submariner.io/node"],
        "node-a"
    );
    assert_eq!(
        a_pod["metadata"]["labels"]["app"], "submariner-gateway",
        "other labels kept"
    );
}

#[tokio::test(start_paused = true)]
async fn a_standby_takes_over_once_the_leader_stops_renewing() {
    let server = FakeApiServer::new();
    let a = elector(&server, "node-a", Duration::ZERO, true);
    // Polled here rather than on a task, so that it can be frozen.
    let mut a_roles = a.roles();
    assert_eq!(
        common::next(&mut a_roles, 5, "a's first role").await,
        Role::Follower { leader: None }
    );
    assert_eq!(
        common::next(&mut a_roles, 10, "a's leadership").await,
        Role::Leader
    );
    let b = elector(&server, "node-b", Duration::ZERO, true);
    let mut b_roles = forward(b.roles());
    assert_eq!(role(&mut b_roles, 5).await, Role::Follower { leader: None });
    assert!(matches!(
        role(&mut b_roles, 10).await,
        Role::Follower { leader: Some(_) }
    ));

    // a's process freezes (its role stream is no longer polled): no more renewals.
    drop(a_roles);
    drop(a);
    let stopped = tokio::time::Instant::now();
    until_leader(&mut b_roles, 60).await;
    let waited = tokio::time::Instant::now() - stopped;
    // Not before the lease expired on b's clock; within a retry (with jitter) after.
    assert!(
        waited >= Duration::from_secs(13),
        "took over after {waited:?}"
    );
    assert!(
        waited <= Duration::from_secs(15 + 5),
        "took over after {waited:?}"
    );
    let spec = &lease(&server)["spec"];
    assert_eq!(spec["holderIdentity"], "node-b-submariner-gateway");
    assert_eq!(spec["leaseTransitions"], 1);
}

#[tokio::test(start_paused = true)]
async fn clock_skew_between_nodes_does_not_let_a_standby_steal_a_live_lease() {
    for ahead in [true, false] {
        let server = FakeApiServer::new();
        // The leader's clock is an hour off: its renewTime looks absurd to the others.
        let a = elector(&server, "node-a", Duration::from_secs(3600), ahead);
        let mut a_roles = forward(a.roles());
        until_leader(&mut a_roles, 10).await;
        let b = elector(&server, "node-b", Duration::ZERO, true);
        let mut b_roles = forward(b.roles());
        assert_eq!(role(&mut b_roles, 5).await, Role::Follower { leader: None });
        assert!(matches!(
            role(&mut b_roles, 10).await,
            Role::Follower { leader: Some(_) }
        ));
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(
            b_roles.try_recv().is_err(),
            "b never led (skew ahead={ahead})"
        );
        assert!(
            a_roles.try_recv().is_err(),
            "a kept leading (skew ahead={ahead})"
        );
        assert_eq!(
            lease(&server)["spec"]["holderIdentity"],
            "node-a-submariner-gateway"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn release_hands_over_without_waiting_for_expiry() {
    let server = FakeApiServer::new();
    let a = elector(&server, "node-a", Duration::ZERO, true);
    let mut a_roles = forward(a.roles());
    until_leader(&mut a_roles, 10).await;
    let b = elector(&server, "node-b", Duration::ZERO, true);
    let mut b_roles = forward(b.roles());
    assert!(matches!(role(&mut b_roles, 5).await, Role::Follower { .. }));
    assert!(matches!(
        role(&mut b_roles, 10).await,
        Role::Follower { leader: Some(_) }
    ));

    a.release().await;
    let spec = &lease(&server)["spec"];
    assert_eq!(spec["holderIdentity"], "");
    assert_eq!(spec["leaseDurationSeconds"], 1);
    let released = tokio::time::Instant::now();
    until_leader(&mut b_roles, 30).await;
    assert!(
        tokio::time::Instant::now() - released <= Duration::from_secs(5),
        "b took over within a retry period or two"
    );
    assert_eq!(lease(&server)["spec"]["leaseTransitions"], 1);
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_cannot_renew_within_the_deadline_steps_down() {
    let server = FakeApiServer::new();
    pod(&server, "node-a");
    let a = elector(&server, "node-a", Duration::ZERO, true);
    let mut a_roles = forward(a.roles());
    until_leader(&mut a_roles, 10).await;
    eventually(5, "the active label", || {
        pod_status(&server, "node-a").as_deref() == Some("active")
    })
    .await;

    // Every Lease request fails for a while (the API server is overloaded).
    server.fail(
        FaultMatch {
            resource: Some(LEASES.to_owned()),
            ..FaultMatch::default()
        },
        1000,
        FaultKind::Status(503),
    );
    let failing = tokio::time::Instant::now();
    assert!(matches!(
        role(&mut a_roles, 30).await,
        Role::Follower { .. }
    ));
    let waited = tokio::time::Instant::now() - failing;
    assert!(
        waited >= Duration::from_secs(10) && waited <= Duration::from_secs(13),
        "stepped down after {waited:?} (renew deadline 10 s, retry period 2 s)"
    );
    eventually(5, "the passive label", || {
        pod_status(&server, "node-a").as_deref() == Some("passive")
    })
    .await;
    server.heal();
    until_leader(&mut a_roles, 30).await;
}

#[tokio::test(start_paused = true)]
async fn a_lease_renewed_by_a_go_gateway_is_respected_until_it_stops() {
    let server = FakeApiServer::new();
    let go_lease = |renew: &str| {
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LOCK},
            "spec": {
                "holderIdentity": "node-go-submariner-gateway",
                "leaseDurationSeconds": 15,
                "acquireTime": "2026-01-01T00:00:00.000000Z",
                "renewTime": renew,
                "leaseTransitions": 4
            }
        })
    };
    server.insert(LEASES, NS, go_lease("2026-01-01T00:00:00.000000Z"));
    let w = elector(&server, "node-w", Duration::ZERO, true);
    let mut roles = forward(w.roles());
    assert!(matches!(
        role(&mut roles, 5).await,
        Role::Follower { leader: None }
    ));
    assert_eq!(
        role(&mut roles, 10).await,
        Role::Follower {
            leader: Some("node-go-submariner-gateway".into())
        }
    );
    // The Go gateway renews every 2 s for a minute; wgcable must not lead meanwhile.
    for i in 1..=30 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut l = lease(&server);
        l["spec"]["renewTime"] = json!(format!("2026-01-01T00:00:{:02}.000000Z", i * 2 % 60));
        server.insert(LEASES, NS, l);
    }
    assert!(
        roles.try_recv().is_err(),
        "never led while the Go gateway renewed"
    );
    // The Go gateway dies: takeover after its lease duration, transitions counted on.
    until_leader(&mut roles, 30).await;
    let spec = &lease(&server)["spec"];
    assert_eq!(spec["holderIdentity"], "node-w-submariner-gateway");
    assert_eq!(spec["leaseTransitions"], 5);
}

#[tokio::test(start_paused = true)]
async fn two_contenders_racing_for_a_fresh_lease_never_both_lead() {
    let server = FakeApiServer::new();
    let a = elector(&server, "node-a", Duration::ZERO, true);
    let b = elector(&server, "node-b", Duration::ZERO, true);
    let mut a_roles = forward(a.roles());
    let mut b_roles = forward(b.roles());
    tokio::time::sleep(Duration::from_secs(60)).await;
    let mut leaders = 0;
    for rx in [&mut a_roles, &mut b_roles] {
        let mut last = None;
        while let Ok(r) = rx.try_recv() {
            last = Some(r);
        }
        if last == Some(Role::Leader) {
            leaders += 1;
        }
    }
    assert_eq!(leaders, 1, "exactly one leader");
}

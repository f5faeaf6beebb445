//! Table tests of the identity and conflict rules, through the pure core.

use std::time::{Duration, SystemTime};

use wgcable_api::{Endpoint, EndpointSpec, PublicKey};

use super::*;
use crate::debounce::Batch;
use crate::{Format, ObjectKey, RawObject, SourceProblem};

fn pk(n: u8) -> PublicKey {
    PublicKey::from_bytes([n; 32])
}

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

/// An Endpoint of `cluster` with key `key`, subnets and gateway IP.
fn endpoint(cluster: &str, key: u8, subnets: &[&str], ip: &str) -> Endpoint {
    let mut spec = EndpointSpec {
        cluster_id: cluster.into(),
        cable_name: format!("submariner-cable-{cluster}"),
        subnets: subnets.iter().map(|s| s.to_string()).collect(),
        private_ip: ip.into(),
        backend: "wireguard".into(),
        ..EndpointSpec::default()
    };
    spec.set_public_key(&pk(key));
    Endpoint::new(spec)
}

/// A file-source object: `<name>`, bound to its stem.
fn raw(name: &str, ep: &Endpoint, created: Option<u64>) -> RawObject {
    let bytes = if name.ends_with(".json") {
        ep.to_json().expect("json")
    } else {
        ep.to_yaml().expect("yaml")
    };
    raw_bytes(name, bytes.into_bytes(), created)
}

fn raw_bytes(name: &str, bytes: Vec<u8>, created: Option<u64>) -> RawObject {
    let (stem, format) = match name.rsplit_once('.') {
        Some((stem, "json")) => (stem, Format::Json),
        Some((stem, _)) => (stem, Format::Yaml),
        None => (name, Format::Yaml),
    };
    RawObject {
        key: ObjectKey(name.into()),
        bound_cluster: Some(stem.into()),
        format,
        bytes,
        created,
        version: None,
    }
}

fn local() -> LocalIdentity {
    LocalIdentity {
        cluster_id: "b".into(),
        public_key: pk(2),
        subnets: vec!["10.2.0.0/16".parse().expect("cidr")],
        underlay: vec!["192.168.77.2".parse().expect("ip")],
        own_key: Some(ObjectKey("b.yaml".into())),
        published: endpoint("b", 2, &["10.2.0.0/16"], "192.168.77.2"),
    }
}

fn admission() -> Admission {
    admission_from(&registry::Registry::empty("b"))
}

fn admission_from(registry: &registry::Registry) -> Admission {
    let (a, notes) = Admission::new(AdmissionConfig::default(), local(), registry);
    assert!(notes.is_empty(), "{notes:?}");
    a
}

/// A snapshot of `objects` and our own, correctly published Endpoint.
fn snapshot(mut objects: Vec<RawObject>) -> Batch {
    if !objects.iter().any(|o| o.key.0 == "b.yaml") {
        objects.push(raw("b.yaml", &local().published, Some(0)));
    }
    let mut batch = Batch::default();
    batch.fold(crate::SourceEvent::Snapshot(objects));
    batch
}

fn changes(events: Vec<crate::SourceEvent>) -> Batch {
    let mut batch = Batch::default();
    for e in events {
        batch.fold(e);
    }
    batch
}

fn run(a: &mut Admission, batch: Batch, now: SystemTime) -> AdmissionUpdate {
    let prepared = a.prepare_inline(batch);
    a.apply(prepared, now)
}

fn admitted(a: &Admission) -> Vec<(String, String)> {
    a.admitted()
        .map(|e| (e.cluster_id.clone(), e.key.0.clone()))
        .collect()
}

fn upserted(u: &AdmissionUpdate) -> Vec<&str> {
    u.upserted.iter().map(|e| e.cluster_id.as_str()).collect()
}

fn reasons(u: &AdmissionUpdate) -> Vec<(&str, &str)> {
    u.refused
        .iter()
        .map(|r| (r.key.0.as_str(), r.reason.as_str()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn valid_endpoints_are_admitted_oldest_first() {
    let mut a = admission();
    let u = run(
        &mut a,
        snapshot(vec![
            raw(
                "c.yaml",
                &endpoint("c", 3, &["10.3.0.0/16"], "192.168.77.3"),
                Some(20),
            ),
            raw(
                "a.yaml",
                &endpoint("a", 1, &["10.1.0.0/16"], "192.168.77.1"),
                Some(10),
            ),
            raw("b.yaml", &local().published, Some(5)),
        ]),
        t(0),
    );
    assert!(u.snapshot && a.is_synced());
    assert_eq!(upserted(&u), ["a", "c"], "by creation order");
    assert!(
        u.removed.is_empty() && u.refused.is_empty() && !u.republish,
        "{u:?}"
    );
    assert_eq!(admitted(&a), pairs(&[("a", "a.yaml"), ("c", "c.yaml")]));
    let first = &u.upserted[0];
    assert_eq!(
        first.spec.subnets,
        vec!["10.1.0.0/16".parse().expect("cidr")]
    );
    assert!(first.seniority < u.upserted[1].seniority);
}

#[test]
fn per_object_rules() {
    let mut no_key = endpoint("d", 4, &["10.4.0.0/16"], "192.168.77.4");
    no_key.spec.backend_config.clear();
    no_key.spec.backend.clear();
    let mut other_driver = endpoint("e", 5, &["10.5.0.0/16"], "192.168.77.5");
    other_driver.spec.backend = "libreswan".into();
    let cases: Vec<(&str, RawObject, &str)> = vec![
        (
            "impostor: 0-a.yaml claims a",
            raw(
                "0-a.yaml",
                &endpoint("a", 9, &["10.1.0.0/16"], "192.168.77.9"),
                Some(1),
            ),
            "impostor",
        ),
        (
            "the local cluster from another object",
            raw(
                "b.json",
                &endpoint("b", 9, &["10.9.0.0/16"], "192.168.77.9"),
                Some(1),
            ),
            "local_cluster",
        ),
        (
            "our own public key",
            raw(
                "f.yaml",
                &endpoint("f", 2, &["10.6.0.0/16"], "192.168.77.6"),
                Some(1),
            ),
            "own_public_key",
        ),
        (
            "no public key",
            raw("d.yaml", &no_key, Some(1)),
            "public_key_missing",
        ),
        (
            "another cable driver",
            raw("e.yaml", &other_driver, Some(1)),
            "unsupported_backend",
        ),
        (
            "overlaps the local subnets",
            raw(
                "g.yaml",
                &endpoint("g", 7, &["10.2.128.0/17"], "192.168.77.7"),
                Some(1),
            ),
            "subnet_overlaps_local",
        ),
        (
            "not UTF-8",
            raw_bytes("h.yaml", vec![b'a', 0xff, 0xfe], Some(1)),
            "not_utf8",
        ),
        (
            "too large",
            raw_bytes("h.yaml", vec![b' '; 40 * 1024], Some(1)),
            "too_large",
        ),
        (
            "too many subnets",
            raw(
                "h.yaml",
                &endpoint(
                    "h",
                    8,
                    &(0..300)
                        .map(|i| format!("10.{}.{}.0/24", 100 + i / 256, i % 256))
                        .collect::<Vec<_>>()
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>(),
                    "192.168.77.8",
                ),
                Some(1),
            ),
            "too_many_subnets",
        ),
        (
            "garbage",
            raw_bytes("h.yaml", b"{[".to_vec(), Some(1)),
            "syntax",
        ),
        (
            "core Endpoints, not Submariner's",
            raw_bytes(
                "h.yaml",
                b"apiVersion: v1\nkind: Endpoints\n".to_vec(),
                Some(1),
            ),
            "wrong_kind",
        ),
        (
            "an invalid spec",
            raw_bytes(
                "h.yaml",
                b"apiVersion: submariner.io/v1\nkind: Endpoint\nspec:\n  cluster_id: h\n".to_vec(),
                Some(1),
            ),
            "private_ip_missing",
        ),
    ];
    for (what, object, want) in cases {
        let mut a = admission();
        let u = run(&mut a, snapshot(vec![object.clone()]), t(0));
        assert_eq!(
            reasons(&u),
            [(object.key.0.as_str(), want)],
            "{what}: {u:?}"
        );
        assert!(u.upserted.is_empty(), "{what}");
        let r = &u.refused[0];
        assert!(
            r.message.starts_with(&format!("{}: ", object.key)),
            "{what}: {}",
            r.message
        );
        assert!(!r.is_waiting(), "{what}: refused for good, not waiting");
        assert_eq!(u.warnings.len(), 1, "{what}: logged once");
        let report = a.report();
        assert_eq!(report.refused.len(), 1, "{what}");
        assert_eq!(report.refused[0].reason, want);
    }
}

#[test]
fn impostor_never_wins_in_any_order_nor_after_a_restart() {
    let real = raw(
        "a.yaml",
        &endpoint("a", 1, &["10.1.0.0/16"], "192.168.77.1"),
        Some(20),
    );
    let impostor = raw(
        "0-a.yaml",
        &endpoint("a", 9, &["10.1.0.0/16"], "192.168.77.9"),
        Some(10),
    );
    for order in [
        vec![real.clone(), impostor.clone()],
        vec![impostor.clone(), real.clone()],
    ] {
        let mut a = admission();
        let u = run(&mut a, snapshot(order), t(0));
        assert_eq!(upserted(&u), ["a"]);
        assert_eq!(u.upserted[0].spec.public_key, Some(pk(1)));
        assert_eq!(reasons(&u), [("0-a.yaml", "impostor")]);
        let mut restarted = admission_from(&a.registry());
        let u = run(
            &mut restarted,
            snapshot(vec![impostor.clone(), real.clone()]),
            t(60),
        );
        assert_eq!(upserted(&u), ["a"]);
        assert_eq!(u.upserted[0].key.0, "a.yaml");
    }
}

#[test]
fn own_endpoint_is_authoritative() {
    let mut a = admission();
    let ours = raw("b.yaml", &local().published, Some(1));
    let u = run(&mut a, snapshot(vec![ours.clone()]), t(0));
    assert!(
        !u.republish && u.upserted.is_empty() && u.refused.is_empty(),
        "{u:?}"
    );
    // Someone else's key and IP at our key: publish again; never admitted.
    let fake = raw(
        "b.yaml",
        &endpoint("b", 9, &["10.2.0.0/16"], "192.168.77.99"),
        Some(2),
    );
    let u = run(&mut a, changes(vec![crate::SourceEvent::Apply(fake)]), t(1));
    assert!(u.republish && u.upserted.is_empty(), "{u:?}");
    let u = run(
        &mut a,
        changes(vec![crate::SourceEvent::Apply(ours.clone())]),
        t(2),
    );
    assert!(!u.republish, "ours again");
    let u = run(
        &mut a,
        changes(vec![crate::SourceEvent::Delete(ours.key.clone())]),
        t(3),
    );
    assert!(u.republish, "deleted");
    let mut empty = Batch::default();
    empty.fold(crate::SourceEvent::Snapshot(vec![]));
    let u = run(&mut a, empty, t(4));
    assert!(u.republish, "missing from a snapshot");
    let u = run(
        &mut a,
        changes(vec![crate::SourceEvent::Refused {
            key: ours.key.clone(),
            problem: SourceProblem {
                reason: "symlink",
                message: "b.yaml: a link".into(),
            },
        }]),
        t(5),
    );
    assert!(u.republish, "replaced by a link");
    let u = run(
        &mut a,
        changes(vec![crate::SourceEvent::Apply(raw_bytes(
            "b.yaml",
            b"{[".to_vec(),
            None,
        ))]),
        t(6),
    );
    assert!(u.republish, "garbage");
    assert!(
        a.report().refused.is_empty(),
        "our own object is never listed as refused"
    );
}

#[test]
fn conflicts_wait_and_are_admitted_once_the_holder_leaves() {
    let a_ep = raw(
        "a.yaml",
        &endpoint("a", 1, &["10.1.0.0/16"], "192.168.77.1"),
        Some(10),
    );
    let cases: Vec<(&str, RawObject, &str)> = vec![
        (
            "subnet overlap",
            raw(
                "c.yaml",
                &endpoint("c", 3, &["10.1.5.0/24"], "192.168.77.3"),
                Some(20),
            ),
            "subnet_conflict",
        ),
        (
            "a's key",
            raw(
                "c.yaml",
                &endpoint("c", 1, &["10.3.0.0/16"], "192.168.77.3"),
                Some(20),
            ),
            "duplicate_key",
        ),
        (
            "covers a's gateway",
            raw(
                "c.yaml",
                &endpoint("c", 3, &["192.168.77.0/31"], "192.168.78.3"),
                Some(20),
            ),
            "gateway_conflict",
        ),
        (
            "its gateway inside a's subnets",
            raw(
                "c.yaml",
                &endpoint("c", 3, &["10.3.0.0/16"], "10.1.0.7"),
                Some(20),
            ),
            "gateway_conflict",
        ),
        (
            "a second object for a",
            raw(
                "a.json",
                &endpoint("a", 3, &["10.3.0.0/16"], "192.168.77.3"),
                Some(20),
            ),
            "duplicate_cluster",
        ),
    ];
    for (what, newcomer, want) in cases {
        let mut a = admission();
        let u = run(&mut a, snapshot(vec![a_ep.clone(), newcomer.clone()]), t(0));
        assert_eq!(upserted(&u), ["a"], "{what}");
        assert_eq!(reasons(&u), [(newcomer.key.0.as_str(), want)], "{what}");
        let r = &u.refused[0];
        assert!(r.is_waiting(), "{what}");
        assert_eq!(r.conflicts_with.as_deref(), Some("a"), "{what}");
        assert!(a.report().refused[0].waiting, "{what}");
        // Re-judged at every release, but reported again only when something changes.
        let u = run(
            &mut a,
            changes(vec![crate::SourceEvent::Apply(newcomer.clone())]),
            t(1),
        );
        assert!(
            u.refused.is_empty() && u.upserted.is_empty(),
            "{what}: a re-delivery: {u:?}"
        );
        // The holder leaves: the waiting one is admitted in the same batch.
        let u = run(
            &mut a,
            changes(vec![crate::SourceEvent::Delete(a_ep.key.clone())]),
            t(2),
        );
        let want_up = newcomer.bound_cluster.clone().expect("bound");
        if want_up == "a" {
            assert!(u.removed.is_empty(), "{what}: a is replaced, not removed");
        } else {
            assert_eq!(u.removed, ["a"], "{what}");
        }
        assert_eq!(upserted(&u), [want_up.as_str()], "{what}");
        assert!(a.report().refused.is_empty(), "{what}");
    }
}

#[test]
fn the_holder_never_depends_on_names_or_read_order() {
    // zz (created later) and a0 (created first) claim the same subnet; a0's name sorts
    // before zz's too, so use names that would favour the squatter: "0" sorts first.
    let older = raw(
        "m.yaml",
        &endpoint("m", 1, &["10.1.0.0/16"], "192.168.77.1"),
        Some(10),
    );
    let squatter = raw(
        "0.yaml",
        &endpoint("0", 9, &["10.1.0.0/16"], "192.168.77.9"),
        Some(20),
    );
    let third = raw(
        "x.yaml",
        &endpoint("x", 3, &["10.3.0.0/16"], "192.168.77.3"),
        None,
    );
    let orders = [
        vec![older.clone(), squatter.clone(), third.clone()],
        vec![squatter.clone(), third.clone(), older.clone()],
        vec![third.clone(), older.clone(), squatter.clone()],
    ];
    for objects in orders {
        let mut a = admission();
        let u = run(&mut a, snapshot(objects), t(0));
        assert_eq!(upserted(&u), ["m", "x"], "unknown creation comes last");
        assert_eq!(reasons(&u), [("0.yaml", "subnet_conflict")]);
    }
    // Without creation times, the smaller cluster id.
    let mut a = admission();
    let mut a_obj = older.clone();
    let mut b_obj = squatter.clone();
    a_obj.created = None;
    b_obj.created = None;
    let u = run(&mut a, snapshot(vec![a_obj, b_obj]), t(0));
    assert_eq!(upserted(&u), ["0"]);
}

#[test]
fn a_newcomer_never_displaces_an_accepted_cluster() {
    let mut a = admission();
    let incumbent = raw(
        "z.yaml",
        &endpoint("z", 9, &["10.1.0.0/16"], "192.168.77.9"),
        Some(50),
    );
    run(&mut a, snapshot(vec![incumbent.clone()]), t(0));
    // Older by the source's creation order, but it arrives after z was accepted.
    let older = raw(
        "a.yaml",
        &endpoint("a", 1, &["10.1.0.0/16"], "192.168.77.1"),
        Some(10),
    );
    let u = run(
        &mut a,
        changes(vec![crate::SourceEvent::Apply(older.clone())]),
        t(1),
    );
    assert!(u.upserted.is_empty() && u.removed.is_empty());
    assert_eq!(reasons(&u), [("a.yaml", "subnet_conflict")]);
    // A restart reproduces it, in any order.
    let registry = a.registry();
    for objects in [
        vec![incumbent.clone(), older.clone()],
        vec![older.clone(), incumbent.clone()],
    ] {
        let mut restarted = admission_from(&registry);
        let u = run(&mut restarted, snapshot(objects), t(60));
        assert_eq!(upserted(&u), ["z"]);
        assert_eq!(reasons(&u), [("a.yaml", "subnet_conflict")]);
    }
    // The operator resolves it: forget z, and the oldest claimant wins.
    let u = a.forget("z", t(2));
    assert_eq!(u.removed, ["z"]);
    assert_eq!(upserted(&u), ["a"]);
    assert_eq!(reasons(&u), [("z.yaml", "subnet_conflict")]);
    assert_eq!(admitted(&a), pairs(&[("a", "a.yaml")]));
}

#[test]
fn forget_removes_a_cluster_that_nothing_replaces() {
    let mut a = admission();
    run(
        &mut a,
        snapshot(vec![raw(
            "a.yaml",
            &endpoint("a", 1, &["10.1.0.0/16"], "192.168.77.1"),
            Some(1),
        )]),
        t(0),
    );
    let u = a.forget("a", t(1));
    // Its own object is still there: it comes back as the newest cluster.
    assert_eq!(upserted(&u), ["a"]);
    assert!(u.upserted[0].seniority > 1);
    let u = a.forget("nobody", t(2));
    assert!(u.is_noop());
}

#[test]
fn restarts_remember_seniority_and_forget_clusters_that_left() {
    let a_obj = raw(
        "a.yaml",
        &endpoint("a", 1, &["10.1.0.0/16"], "192.168.77.1"),
        Some(10),
    );
    let c_obj = raw(
        "c.yaml",
        &endpoint("c", 3, &["10.3.0.0/16"], "192.168.77.3"),
        Some(20),
    );
    let mut a = admission();
    run(&mut a, snapshot(vec![a_obj.clone(), c_obj.clone()]), t(0));
    assert!(a.take_registry_dirty());
    let registry = a.registry();
    assert_eq!(registry.clusters.len(), 2);

    // a is gone while we were down; c's object is now garbage: c is not admitted, but its
    // subnets stay reserved, so a newcomer cannot take them.
    let squatter = raw(
        "s.yaml",
        &endpoint("s", 7, &["10.3.0.0/16"], "192.168.77.7"),
        Some(1),
    );
    let mut restarted = admission_from(&registry);
    let u = run(
        &mut restarted,
        snapshot(vec![
            raw_bytes("c.yaml", b"{[".to_vec(), Some(20)),
            squatter.clone(),
        ]),
        t(60),
    );
    assert!(u.upserted.is_empty(), "{u:?}");
    assert!(
        u.removed.is_empty(),
        "never admitted since the restart, so nothing to remove"
    );
    assert_eq!(
        reasons(&u),
        [("c.yaml", "syntax"), ("s.yaml", "subnet_conflict")]
    );
    assert!(
        u.refused[0]
            .message
            .contains("keeps its subnets and key reserved"),
        "{}",
        u.refused[0].message
    );
    let kept = restarted.registry();
    assert_eq!(kept.clusters.len(), 1, "a left and was forgotten");
    assert_eq!(kept.clusters[0].cluster_id, "c");
    // c's object is fixed: admitted with its old seniority.
    let u = run(
        &mut restarted,
        changes(vec![crate::SourceEvent::Apply(c_obj.clone())]),
        t(61),
    );
    assert_eq!(upserted(&u), ["c"]);
    assert_eq!(u.upserted[0].seniority, registry.clusters[1].seniority);
}

#[test]
fn a_bad_update_keeps_the_last_accepted_endpoint() {
    let mut a = admission();
    let good = raw(
        "a.yaml",
        &endpoint("a", 1, &["10.1.0.0/16"], "192.168.77.1"),
        Some(1),
    );
    run(&mut a, snapshot(vec![good.clone()]), t(0));
    for (what, bad, reason) in [
        (
            "garbage",
            raw_bytes("a.yaml", b"spec: [".to_vec(), Some(1)),
            "syntax",
        ),
        (
            "impostor content",
            raw(
                "a.yaml",
                &endpoint("q", 5, &["10.5.0.0/16"], "192.168.77.5"),
                Some(1),
            ),
            "impostor",
        ),
        (
            "overlaps local",
            raw(
                "a.yaml",
                &endpoint("a", 1, &["10.2.0.0/24"], "192.168.77.1"),
                Some(1),
            ),
            "subnet_overlaps_local",
        ),
    ] {
        let u = run(&mut a, changes(vec![crate::SourceEvent::Apply(bad)]), t(1));
        assert!(
            u.upserted.is_empty() && u.removed.is_empty(),
            "{what}: {u:?}"
        );
        assert_eq!(reasons(&u), [("a.yaml", reason)], "{what}");
        assert!(
            u.refused[0]
                .message
                .contains("keeps its last accepted Endpoint"),
            "{what}"
        );
        assert_eq!(admitted(&a), pairs(&[("a", "a.yaml")]), "{what}");
        assert_eq!(a.report().refused[0].holds.as_deref(), Some("a"));
    }
    // A real change is an upsert, with the same seniority.
    let moved = raw(
        "a.yaml",
        &endpoint("a", 1, &["10.1.0.0/16"], "192.168.77.11"),
        Some(1),
    );
    let u = run(
        &mut a,
        changes(vec![crate::SourceEvent::Apply(moved)]),
        t(2),
    );
    assert_eq!(upserted(&u), ["a"]);
    assert_eq!(
        u.upserted[0].spec.private_ips,
        vec!["192.168.77.11".parse::<std::net::IpAddr>().expect("ip")]
    );
    assert_eq!(u.upserted[0].seniority, 1);
    assert!(a.report().refused.is_empty());
    // The same Endpoint in other bytes (JSON instead of YAML formatting) changes nothing.
    let mut same = raw(
        "a.yaml",
        &endpoint("a", 1, &["10.1.0.0/16"], "192.168.77.11"),
        Some(1),
    );
    same.bytes = endpoint("a", 1, &["10.1.0.0/16"], "192.168.77.11")
        .to_json()
        .expect("json")
        .into_bytes();
    let u = run(&mut a, changes(vec![crate::SourceEvent::Apply(same)]), t(3));
    assert!(u.is_noop() && u.refused.is_empty(), "{u:?}");
}

#[test]
fn a_held_update_waits_for_a_younger_cluster_to_free_the_subnet() {
    let mut a = admission();
    let a1 = raw(
        "a.yaml",
        &endpoint("a", 1, &["10.1.0.0/16"], "192.168.77.1"),
        Some(1),
    );
    let c1 = raw(
        "c.yaml",
        &endpoint("c", 3, &["10.3.0.0/16"], "192.168.77.3"),
        Some(2),
    );
    run(&mut a, snapshot(vec![a1, c1]), t(0));
    // a (older) wants c's subnet too: refused, a keeps what it has.
    let a2 = raw(
        "a.yaml",
        &endpoint("a", 1, &["10.1.0.0/16", "10.3.0.0/16"], "192.168.77.1"),
        Some(1),
    );
    let u = run(&mut a, changes(vec![crate::SourceEvent::Apply(a2)]), t(1));
    assert_eq!(reasons(&u), [("a.yaml", "subnet_conflict")]);
    assert!(u.upserted.is_empty());
    // c gives the subnet up in the next batch: a's waiting update goes in at once.
    let c2 = raw(
        "c.yaml",
        &endpoint("c", 3, &["10.4.0.0/16"], "192.168.77.3"),
        Some(2),
    );
    let u = run(&mut a, changes(vec![crate::SourceEvent::Apply(c2)]), t(2));
    assert_eq!(upserted(&u), ["a", "c"]);
    assert_eq!(u.upserted[0].spec.subnets.len(), 2);
}

#[test]
fn unchanged_redeliveries_and_one_change_among_many_cost_one_upsert() {
    let mut a = admission();
    let objects: Vec<RawObject> = (0..1000u32)
        .map(|i| {
            let name = format!("c{i}");
            raw(
                &format!("{name}.yaml"),
                &endpoint(
                    &name,
                    (i % 250) as u8 + 3,
                    &[&format!("10.{}.{}.0/24", 100 + i / 256, i % 256)],
                    &format!("172.16.{}.{}", i / 256, i % 256),
                ),
                Some(u64::from(i)),
            )
        })
        .collect();
    // Keys repeat every 250 clusters: those are duplicate_key refusals; fine for this test.
    let u = run(&mut a, snapshot(objects.clone()), t(0));
    let admitted_count = a.admitted_count();
    assert_eq!(u.upserted.len(), admitted_count);
    assert_eq!(admitted_count, 250);
    // The whole snapshot again: nothing parsed, nothing changed.
    let sorted = a.sort(snapshot(objects.clone()));
    assert_eq!(sorted.objects().len(), 0);
    let u = a.apply(sorted.complete(Vec::new()), t(1));
    assert!(u.is_noop() && u.refused.is_empty(), "{u:?}");
    // One change.
    let mut changed = objects[7].clone();
    changed.bytes = endpoint("c7", 10, &["10.100.7.0/24"], "172.16.0.77")
        .to_yaml()
        .expect("yaml")
        .into_bytes();
    let mut all = objects;
    all[7] = changed;
    let sorted = a.sort(snapshot(all));
    assert_eq!(sorted.objects().len(), 1);
    let u = a.apply(a.prepare_inline(Batch::default()), t(2));
    assert!(u.is_noop());
    let prepared = {
        let results = sorted
            .objects()
            .iter()
            .map(|r| a.parser().parse(r))
            .collect();
        sorted.complete(results)
    };
    let u = a.apply(prepared, t(3));
    assert_eq!(upserted(&u), ["c7"]);
    assert!(u.removed.is_empty());
}

#[test]
fn objects_beyond_the_limit_are_refused_oldest_kept() {
    let config = AdmissionConfig {
        max_objects: 3,
        ..AdmissionConfig::default()
    };
    let (mut a, _) = Admission::new(config, local(), &registry::Registry::empty("b"));
    let objects: Vec<RawObject> = (0..5u32)
        .map(|i| {
            let name = format!("c{i}");
            raw(
                &format!("{name}.yaml"),
                &endpoint(
                    &name,
                    i as u8 + 10,
                    &[&format!("10.{}.0.0/16", 10 + i)],
                    &format!("192.168.77.{}", 10 + i),
                ),
                Some(u64::from(10 - i)),
            )
        })
        .collect();
    let u = run(&mut a, snapshot(objects), t(0));
    // Created 10, 9, 8, 7, 6: the three oldest are c4, c3, c2.
    assert_eq!(upserted(&u), ["c4", "c3", "c2"]);
    assert_eq!(
        reasons(&u),
        [
            ("c1.yaml", "too_many_objects"),
            ("c0.yaml", "too_many_objects")
        ]
    );
}

#[test]
fn a_file_turned_into_a_link_leaves_and_is_listed() {
    let mut a = admission();
    let obj = raw(
        "a.yaml",
        &endpoint("a", 1, &["10.1.0.0/16"], "192.168.77.1"),
        Some(1),
    );
    run(&mut a, snapshot(vec![obj.clone()]), t(0));
    let link = || crate::SourceEvent::Refused {
        key: obj.key.clone(),
        problem: SourceProblem {
            reason: "symlink",
            message: "a.yaml: refused: a symbolic link".into(),
        },
    };
    let u = run(&mut a, changes(vec![link()]), t(1));
    assert_eq!(u.removed, ["a"]);
    assert_eq!(reasons(&u), [("a.yaml", "symlink")]);
    let u = run(&mut a, changes(vec![link()]), t(2));
    assert!(u.refused.is_empty(), "reported once");
    assert_eq!(a.report().refused[0].reason, "symlink");
    let u = run(
        &mut a,
        changes(vec![crate::SourceEvent::Delete(obj.key.clone())]),
        t(3),
    );
    assert!(u.is_noop());
    assert!(a.report().refused.is_empty());
}

#[test]
fn refusals_never_quote_the_input() {
    const SECRET: &str = "cGFzc3dvcmQtbGlrZS1zZWNyZXQta2V5LW1hdGVyaWFsISE=";
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        ("a bare key", SECRET.as_bytes().to_vec()),
        ("a key as a YAML key", format!("{SECRET}: 1\n").into_bytes()),
        ("in apiVersion", format!("apiVersion: {SECRET}\nkind: Endpoint\n").into_bytes()),
        (
            "in a field",
            format!(
                "apiVersion: submariner.io/v1\nkind: Endpoint\nspec:\n  cluster_id: a\n  private_ip: {SECRET}\n  subnets: [{SECRET}]\n  backend: wireguard\n  backend_config: {{publicKey: {SECRET}, udp-port: {SECRET}}}\n"
            )
            .into_bytes(),
        ),
        ("in the cluster id", format!("apiVersion: submariner.io/v1\nkind: Endpoint\nspec:\n  cluster_id: {SECRET}\n").into_bytes()),
        ("JSON", format!("{{\"apiVersion\": 5, \"x\": \"{SECRET}\"}}").into_bytes()),
    ];
    for (what, bytes) in inputs {
        for name in ["a.yaml", "a.json"] {
            let mut a = admission();
            let u = run(
                &mut a,
                snapshot(vec![raw_bytes(name, bytes.clone(), Some(1))]),
                t(0),
            );
            assert_eq!(u.refused.len(), 1, "{what} {name}");
            let text = format!(
                "{:?} {:?} {}",
                u,
                a.report(),
                serde_json::to_string(&a.report()).expect("json")
            );
            assert!(!text.contains(SECRET), "{what} in {name} leaked: {text}");
            assert!(
                !text.contains("cGFzc3dvcmQ"),
                "{what} in {name} leaked a prefix: {text}"
            );
        }
    }
}

#[test]
fn health_changes_are_reported_once() {
    let mut a = admission();
    let mut batch = snapshot(vec![]);
    batch.health = Some(crate::SourceHealth::Unhealthy("down".into()));
    let u = run(&mut a, batch.clone(), t(0));
    assert_eq!(
        u.health,
        Some(crate::SourceHealth::Unhealthy("down".into()))
    );
    let u = run(&mut a, batch, t(1));
    assert_eq!(u.health, None);
}

#[test]
fn a_corrupt_registry_entry_that_overlaps_an_older_one_is_dropped() {
    let mut a = admission();
    run(
        &mut a,
        snapshot(vec![
            raw(
                "a.yaml",
                &endpoint("a", 1, &["10.1.0.0/16"], "192.168.77.1"),
                Some(1),
            ),
            raw(
                "c.yaml",
                &endpoint("c", 3, &["10.3.0.0/16"], "192.168.77.3"),
                Some(2),
            ),
        ]),
        t(0),
    );
    let mut registry = a.registry();
    registry.clusters[1].subnets = vec!["10.1.0.0/24".parse().expect("cidr")];
    let (restarted, notes) = Admission::new(AdmissionConfig::default(), local(), &registry);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(restarted.registry().clusters.len(), 1);
}

/// A small deterministic PRNG (xorshift64*): randomized tests without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A random object among a small universe, so that conflicts of every kind are frequent.
fn random_object(rng: &mut Rng) -> RawObject {
    let clusters = ["a", "c", "d", "e", "f", "g"];
    let subnets = [
        "10.1.0.0/16",
        "10.1.5.0/24",
        "10.3.0.0/16",
        "10.4.0.0/16",
        "10.5.0.0/16",
        "10.0.0.0/8",
        "172.20.0.0/24",
    ];
    let ips = [
        "172.20.0.5",
        "192.168.77.10",
        "192.168.77.11",
        "10.5.0.9",
        "198.18.0.1",
    ];
    let cluster = clusters[rng.below(clusters.len())];
    // Mostly at its own name, sometimes an impostor or a second file.
    let name = match rng.below(10) {
        0 => format!("x-{cluster}.yaml"),
        1 => format!("{cluster}.json"),
        _ => format!("{cluster}.yaml"),
    };
    let nets: Vec<&str> = (0..1 + rng.below(2))
        .map(|_| subnets[rng.below(subnets.len())])
        .collect();
    let mut nets_unique = nets.clone();
    nets_unique.sort();
    nets_unique.dedup();
    let ep = endpoint(
        cluster,
        10 + rng.below(5) as u8,
        &nets_unique,
        ips[rng.below(ips.len())],
    );
    let bytes = if rng.below(12) == 0 {
        b"spec: [".to_vec()
    } else if name.ends_with(".json") {
        ep.to_json().expect("json").into_bytes()
    } else {
        ep.to_yaml().expect("yaml").into_bytes()
    };
    let created = (rng.below(4) != 0).then(|| rng.next() % 1000);
    raw_bytes(&name, bytes, created)
}

#[test]
fn random_sequences_keep_the_invariants_and_restarts_reproduce_them() {
    let mut seen: std::collections::BTreeMap<&'static str, usize> = Default::default();
    for seed in 1..=60u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut a = admission();
        // What the source holds, to replay as a snapshot at a restart.
        let mut held: std::collections::BTreeMap<String, RawObject> = Default::default();
        run(&mut a, snapshot(vec![]), t(0));
        for step in 0..40u64 {
            let mut events = Vec::new();
            for _ in 0..1 + rng.below(4) {
                if rng.below(4) == 0 && !held.is_empty() {
                    let keys: Vec<String> = held.keys().cloned().collect();
                    let key = keys[rng.below(keys.len())].clone();
                    held.remove(&key);
                    events.push(crate::SourceEvent::Delete(ObjectKey(key)));
                } else {
                    let o = random_object(&mut rng);
                    held.insert(o.key.0.clone(), o.clone());
                    events.push(crate::SourceEvent::Apply(o));
                }
            }
            let u = run(&mut a, changes(events), t(step + 1));
            for r in &u.refused {
                *seen.entry(r.reason.as_str()).or_default() += 1;
            }
            *seen.entry("upserted").or_default() += u.upserted.len();
            *seen.entry("removed").or_default() += u.removed.len();
            if let Err(e) = a.check_invariants() {
                panic!("seed {seed} step {step}: {e}; update {u:?}");
            }
            if rng.below(5) == 0 {
                let id = ["a", "c", "d", "e", "f", "g"][rng.below(6)];
                a.forget(id, t(step + 1));
                a.check_invariants()
                    .unwrap_or_else(|e| panic!("seed {seed} step {step} forget: {e}"));
            }
        }
        // A restart from the registry, the snapshot in another order, decides the same.
        let mut objects: Vec<RawObject> = held.values().cloned().collect();
        objects.reverse();
        let before: Vec<(String, String, u64)> = a
            .admitted()
            .map(|e| (e.cluster_id.clone(), e.key.0.clone(), e.seniority))
            .collect();
        let before_specs: Vec<EndpointSpec> =
            a.admitted().map(|e| e.endpoint.spec.clone()).collect();
        let mut restarted = admission_from(&a.registry());
        run(&mut restarted, snapshot(objects), t(1000));
        restarted
            .check_invariants()
            .expect("invariants after the restart");
        let after: Vec<(String, String, u64)> = restarted
            .admitted()
            .map(|e| (e.cluster_id.clone(), e.key.0.clone(), e.seniority))
            .collect();
        // A cluster that kept its last good Endpoint while its object is refused is not
        // admitted after a restart (its last content is not stored), but keeps its claims.
        let kept_last_good: Vec<String> = a
            .report()
            .refused
            .iter()
            .filter_map(|r| r.holds.clone())
            .collect();
        let expected: Vec<_> = before
            .iter()
            .filter(|(c, _, _)| !kept_last_good.contains(c))
            .cloned()
            .collect();
        assert_eq!(after, expected, "seed {seed}");
        let after_specs: Vec<EndpointSpec> = restarted
            .admitted()
            .map(|e| e.endpoint.spec.clone())
            .collect();
        let expected_specs: Vec<EndpointSpec> = before_specs
            .into_iter()
            .zip(&before)
            .filter(|(_, (c, _, _))| !kept_last_good.contains(c))
            .map(|(s, _)| s)
            .collect();
        assert_eq!(after_specs, expected_specs, "seed {seed}");
    }
    // The universe is small enough that every rule is exercised, many times.
    for what in [
        "upserted",
        "removed",
        "impostor",
        "duplicate_cluster",
        "duplicate_key",
        "subnet_conflict",
        "gateway_conflict",
        "syntax",
        "subnet_overlaps_local",
    ] {
        assert!(
            seen.get(what).copied().unwrap_or(0) >= 10,
            "{what}: {seen:?}"
        );
    }
}

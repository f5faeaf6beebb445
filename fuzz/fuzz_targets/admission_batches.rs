//! The admission core (`wgcable_broker::admission::Admission`, what `AdmissionRunner` drives)
//! on arbitrary batches of source events: snapshots, applies, deletes, source refusals,
//! health changes, `forget` and clock ticks, about objects whose bytes are arbitrary, or
//! Endpoints built from a few small pools (cluster ids, keys, subnets, addresses) so that
//! identity and conflict rules fire often, or Endpoints carrying a secret in one field.
//!
//! Invariants, after every batch:
//! - no panic;
//! - the engine's view, built only from the updates (`removed`, then `upserted`), equals
//!   `Admission::admitted()`;
//! - no two admitted clusters share a key or overlapping subnets, none is the local cluster
//!   or has the local key or subnets, each sits at an object its location binds to it, no
//!   admitted gateway address lies in another admitted cluster's subnet;
//! - no refusal message quotes the secret;
//! - a restart (the registry through JSON, then a snapshot of what the source holds now)
//!   holds the same clusters with the same seniority and claims, and admits a subset of
//!   what runs now, with the same Endpoints.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use arbitrary::Arbitrary;
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use wgcable_api::{Endpoint, EndpointSpec, PublicKey};
use wgcable_broker::admission::registry::Registry;
use wgcable_broker::admission::{Admission, AdmissionConfig, AdmissionUpdate, LocalIdentity};
use wgcable_broker::debounce::Batch;
use wgcable_broker::{Format, ObjectKey, RawObject, SourceEvent, SourceHealth, SourceProblem};

/// Not a DNS label (upper case): the one value a message may quote, a validated cluster id,
/// can never be it.
const SECRET: &str = "SECRET+KEY+MATERIAL+0123456789";

/// Object names: bound to their stem (file broker), a second object for cluster a, an
/// impostor, our own, and two without a binding (a source that has none).
const NAMES: &[(&str, Option<&str>)] = &[
    ("a.yaml", Some("a")),
    ("b.yaml", Some("b")),
    ("c.yaml", Some("c")),
    ("d.yaml", Some("d")),
    ("e.json", Some("e")),
    ("a.json", Some("a")),
    ("0-a.yaml", Some("0-a")),
    ("ns/x", None),
    ("ns/y", None),
];
const CLUSTERS: &[&str] = &["a", "b", "c", "d", "e", "0-a", "Bad_Id"];
const SUBNETS: &[&str] = &[
    "10.1.0.0/16",
    "10.1.2.0/24",
    "10.2.0.0/16",
    "10.3.0.0/16",
    "10.4.0.0/16",
    "10.9.0.0/16",
    "192.168.77.0/24",
    "127.0.0.0/8",
    "fd00:1::/48",
    "fd00:2::/48",
    "0.0.0.0/0",
    "10.0.0.0/7",
];
const IPS: &[&str] = &[
    "192.168.77.1",
    "192.168.77.2",
    "192.168.77.3",
    "10.3.0.5",
    "127.0.0.1",
    "fd77::4",
    "not-an-ip",
];
/// The local cluster.
const LOCAL: &str = "b";
const LOCAL_KEY: u8 = 2;

#[derive(Arbitrary, Debug, Clone)]
enum Content {
    Bytes(Vec<u8>),
    Endpoint(Ep),
    /// A valid Endpoint with the secret in one field.
    Secret(Ep, u8),
}

#[derive(Arbitrary, Debug, Clone)]
struct Ep {
    cluster: u8,
    key: Option<u8>,
    subnets: Vec<u8>,
    ip: u8,
    public_ip: Option<u8>,
    json: bool,
    other_backend: bool,
}

#[derive(Arbitrary, Debug, Clone)]
struct Obj {
    name: u8,
    content: Content,
    created: Option<u8>,
}

#[derive(Arbitrary, Debug)]
enum Event {
    Snapshot(Vec<Obj>),
    Apply(Obj),
    Delete(u8),
    Refused(u8),
    Health(bool),
}

#[derive(Arbitrary, Debug)]
enum Step {
    Batch(Vec<Event>),
    Forget(u8),
    Tick(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    max_objects: u8,
    steps: Vec<Step>,
}

fn pick<T: Copy>(list: &[T], i: u8) -> T {
    list[usize::from(i) % list.len()]
}

fn key(n: u8) -> PublicKey {
    PublicKey::from_bytes([n % 8 + 1; 32])
}

fn local_subnets() -> Vec<IpNet> {
    vec!["10.2.0.0/16".parse().expect("cidr")]
}

fn published() -> Endpoint {
    endpoint(&Ep {
        cluster: 1,
        key: Some(LOCAL_KEY - 1),
        subnets: vec![2],
        ip: 1,
        public_ip: None,
        json: false,
        other_backend: false,
    })
}

fn endpoint(ep: &Ep) -> Endpoint {
    let mut spec = EndpointSpec {
        cluster_id: pick(CLUSTERS, ep.cluster).into(),
        cable_name: format!("submariner-cable-{}", pick(CLUSTERS, ep.cluster)),
        subnets: ep.subnets.iter().take(4).map(|&s| pick(SUBNETS, s).into()).collect(),
        private_ip: pick(IPS, ep.ip).into(),
        public_ip: ep.public_ip.map(|i| pick(IPS, i).into()).unwrap_or_default(),
        backend: if ep.other_backend { "libreswan" } else { "wireguard" }.into(),
        ..EndpointSpec::default()
    };
    if let Some(k) = ep.key {
        spec.set_public_key(&key(k));
    }
    Endpoint::new(spec)
}

fn bytes(content: &Content, format: Format) -> Vec<u8> {
    let encode = |e: &Endpoint| match format {
        Format::Json => e.to_json().expect("json").into_bytes(),
        Format::Yaml => e.to_yaml().expect("yaml").into_bytes(),
    };
    match content {
        Content::Bytes(b) => b.clone(),
        Content::Endpoint(ep) => encode(&endpoint(ep)),
        Content::Secret(ep, field) => {
            let mut e = endpoint(ep);
            let s = &mut e.spec;
            match field % 6 {
                0 => s.cluster_id = SECRET.into(),
                1 => s.subnets.push(SECRET.into()),
                2 => s.private_ip = SECRET.into(),
                3 => s.hostname = SECRET.into(),
                4 => {
                    s.backend_config.insert("publicKey".into(), SECRET.into());
                }
                _ => s.public_ip = SECRET.into(),
            }
            encode(&e)
        }
    }
}

fn raw(obj: &Obj) -> RawObject {
    let (name, bound) = pick(NAMES, obj.name);
    let format = if name.ends_with(".json") {
        Format::Json
    } else if let Content::Endpoint(ep) | Content::Secret(ep, _) = &obj.content {
        if ep.json && bound.is_none() {
            Format::Json
        } else {
            Format::Yaml
        }
    } else {
        Format::Yaml
    };
    RawObject {
        key: ObjectKey(name.into()),
        bound_cluster: bound.map(str::to_owned),
        format,
        bytes: bytes(&obj.content, format),
        created: obj.created.map(u64::from),
        version: None,
    }
}

fn local() -> LocalIdentity {
    LocalIdentity {
        cluster_id: LOCAL.into(),
        public_key: key(LOCAL_KEY - 1),
        subnets: local_subnets(),
        underlay: vec!["192.168.77.2".parse().expect("ip")],
        own_key: Some(ObjectKey("b.yaml".into())),
        published: published(),
    }
}

/// What the source holds: an object, or something it refuses to read.
#[derive(Clone)]
enum Held {
    Object(RawObject),
    Refused(SourceProblem),
}

/// A refusal as the file source words it (its messages start with the object key).
fn problem(key: &str) -> SourceProblem {
    SourceProblem {
        reason: "symlink",
        message: format!("{key}: refused: a symbolic link"),
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// (cluster, object key, endpoint) of every admitted Endpoint.
fn admitted(a: &Admission) -> BTreeMap<String, (String, Endpoint)> {
    a.admitted()
        .map(|e| (e.cluster_id.clone(), (e.key.0.clone(), e.endpoint.clone())))
        .collect()
}

/// The registry's holdings without the wall-clock field.
fn holdings(r: &Registry) -> BTreeSet<(String, String, u64, String, Vec<IpNet>, Vec<IpAddr>)> {
    r.clusters
        .iter()
        .map(|c| {
            (
                c.cluster_id.clone(),
                c.object_key.clone(),
                c.seniority,
                c.public_key.clone(),
                c.subnets.clone(),
                c.gateway_ips.clone(),
            )
        })
        .collect()
}

fn check_update(update: &AdmissionUpdate, view: &mut BTreeMap<String, (String, Endpoint)>) {
    for r in update.refused.iter().chain(&update.warnings) {
        assert!(!r.message.contains(SECRET), "a message quotes the secret: {}", r.message);
        assert!(r.message.starts_with(&r.key.0), "{}", r.message);
    }
    for cluster in &update.removed {
        view.remove(cluster);
    }
    for a in &update.upserted {
        view.insert(a.cluster_id.clone(), (a.key.0.clone(), a.endpoint.clone()));
    }
}

fn check_admitted(a: &Admission) {
    let all: Vec<_> = a.admitted().cloned().collect();
    let local_key = key(LOCAL_KEY - 1);
    for (i, x) in all.iter().enumerate() {
        assert_ne!(x.cluster_id, LOCAL);
        assert_eq!(x.endpoint.spec.cluster_id, x.cluster_id);
        assert_ne!(x.spec.public_key, Some(local_key));
        if let Some((_, Some(bound))) = NAMES.iter().find(|(n, _)| *n == x.key.0) {
            assert_eq!(*bound, x.cluster_id, "{} admitted at {}", x.cluster_id, x.key.0);
        }
        for s in &x.spec.subnets {
            for l in local_subnets() {
                assert!(!overlaps(s, &l), "{} holds {s}, local", x.cluster_id);
            }
        }
        for y in &all[i + 1..] {
            assert_ne!(x.spec.public_key, y.spec.public_key, "{} and {}", x.cluster_id, y.cluster_id);
            for s in &x.spec.subnets {
                for t in &y.spec.subnets {
                    assert!(!overlaps(s, t), "{} {s} and {} {t}", x.cluster_id, y.cluster_id);
                }
            }
            for (p, q) in [(x, y), (y, x)] {
                for ip in p.spec.private_ips.iter().chain(&p.spec.public_ips) {
                    assert!(
                        !q.spec.subnets.iter().any(|s| s.contains(ip)),
                        "{}'s gateway {ip} in {}'s subnets",
                        p.cluster_id,
                        q.cluster_id
                    );
                }
            }
        }
    }
}

/// What a source delivers first: everything it holds (a snapshot, then what it refuses).
fn snapshot_of(source: &BTreeMap<String, Held>) -> Batch {
    let mut batch = Batch::default();
    batch.fold(SourceEvent::Snapshot(
        source
            .values()
            .filter_map(|h| match h {
                Held::Object(o) => Some(o.clone()),
                Held::Refused(_) => None,
            })
            .collect(),
    ));
    for (k, h) in source {
        if let Held::Refused(p) = h {
            batch.fold(SourceEvent::Refused {
                key: ObjectKey(k.clone()),
                problem: p.clone(),
            });
        }
    }
    batch
}

/// A restart: the registry (through its JSON form) and a snapshot of what the source holds.
fn check_restart(config: &AdmissionConfig, running: &Admission, source: &BTreeMap<String, Held>, now: SystemTime) {
    let json = serde_json::to_vec(&running.registry()).expect("registry to JSON");
    let registry: Registry = serde_json::from_slice(&json).expect("registry from JSON");
    let (mut restarted, _) = Admission::new(config.clone(), local(), &registry);
    let prepared = restarted.prepare_inline(snapshot_of(source));
    let _ = restarted.apply(prepared, now);
    check_admitted(&restarted);
    assert_eq!(
        holdings(&restarted.registry()),
        holdings(&running.registry()),
        "a restart changed who holds what"
    );
    let now_admitted = admitted(running);
    for (cluster, got) in admitted(&restarted) {
        assert_eq!(now_admitted.get(&cluster), Some(&got), "a restart admitted {cluster} differently");
    }
}

fuzz_target!(|input: Input| {
    let config = AdmissionConfig {
        max_objects: usize::from(input.max_objects % 12) + 1,
        ..AdmissionConfig::default()
    };
    let (mut admission, _) = Admission::new(config.clone(), local(), &Registry::empty(LOCAL));
    let mut view: BTreeMap<String, (String, Endpoint)> = BTreeMap::new();
    let mut source: BTreeMap<String, Held> = BTreeMap::new();
    let mut now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for step in input.steps.iter().take(16) {
        now += Duration::from_secs(1);
        let update = match step {
            Step::Batch(events) => {
                let mut batch = Batch::default();
                for event in events.iter().take(16) {
                    let event = match event {
                        Event::Snapshot(objects) => {
                            source.clear();
                            let raws: Vec<RawObject> = objects.iter().take(12).map(raw).collect();
                            // A source lists each key once.
                            let mut unique: BTreeMap<String, RawObject> = BTreeMap::new();
                            for r in raws {
                                unique.insert(r.key.0.clone(), r);
                            }
                            for (k, r) in &unique {
                                source.insert(k.clone(), Held::Object(r.clone()));
                            }
                            SourceEvent::Snapshot(unique.into_values().collect())
                        }
                        Event::Apply(obj) => {
                            let r = raw(obj);
                            source.insert(r.key.0.clone(), Held::Object(r.clone()));
                            SourceEvent::Apply(r)
                        }
                        Event::Delete(n) => {
                            let (name, _) = pick(NAMES, *n);
                            source.remove(name);
                            SourceEvent::Delete(ObjectKey(name.into()))
                        }
                        Event::Refused(n) => {
                            let (name, _) = pick(NAMES, *n);
                            source.insert(name.into(), Held::Refused(problem(name)));
                            SourceEvent::Refused {
                                key: ObjectKey(name.into()),
                                problem: problem(name),
                            }
                        }
                        Event::Health(h) => SourceEvent::Health(if *h {
                            SourceHealth::Healthy
                        } else {
                            SourceHealth::Unhealthy("down".into())
                        }),
                    };
                    batch.fold(event);
                }
                // A source's first event is always its snapshot.
                if !admission.is_synced() && !batch.snapshot {
                    batch = snapshot_of(&source);
                }
                let prepared = admission.prepare_inline(batch);
                admission.apply(prepared, now)
            }
            Step::Forget(c) => {
                if !admission.is_synced() {
                    continue;
                }
                admission.forget(pick(CLUSTERS, *c), now)
            }
            Step::Tick(s) => {
                now += Duration::from_secs(u64::from(*s));
                let _ = admission.tick(now);
                continue;
            }
        };
        check_update(&update, &mut view);
        assert_eq!(view, admitted(&admission), "the updates do not add up to the admitted set");
        check_admitted(&admission);
        let _ = admission.report();
        check_restart(&config, &admission, &source, now);
    }
});

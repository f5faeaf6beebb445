//! Admission benchmarks (issue 13): the admission layer's share of "5,000 Endpoints arriving at
//! once converge in under 10 s" and "removing 1,000 in under 2 s".
//!
//! - `admit_5000/parse_only`: the baseline, `wgcable_api::parse_endpoint` + `validate` of the
//!   5,000 objects on one thread (the floor: what any admission must do);
//! - `admit_5000/inline`: a fresh `Admission` takes the 5,000 as one snapshot, parsed on the
//!   calling thread: parse, policy, identity, conflicts (the indexes), registry and report;
//! - `admit_5000/runner`: the same through `AdmissionRunner::apply`, parsing on the blocking
//!   pool with one worker per core (what the gateway runs; no registry file);
//! - `remove_1000/inline`: 1,000 of the 5,000 deleted in one batch;
//! - `one_change_among_5000/inline`: one object of 5,000 changes (the cost of a single change);
//! - `file_source/first_snapshot_5000`: the file source's first snapshot of a directory of
//!   5,000 endpoint files (two reads of each, `settle` 0).
//!
//! Run with `cargo bench -p wgcable-broker --bench admission`; medians are in
//! `target/criterion/<group>/<case>/new/estimates.json`. No root.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use futures::StreamExt;
use wgcable_api::{Endpoint, EndpointSpec, PublicKey, BACKEND_WIREGUARD};
use wgcable_broker::admission::registry::Registry;
use wgcable_broker::admission::{Admission, AdmissionConfig, AdmissionRunner, LocalIdentity};
use wgcable_broker::debounce::Batch;
use wgcable_broker::{
    EndpointSource, FileSource, FileSourceConfig, Format, ObjectKey, RawObject, SourceEvent,
};

const N: u32 = 5000;

fn key(i: u32) -> PublicKey {
    let mut bytes = [0x5a; 32];
    bytes[..4].copy_from_slice(&i.to_be_bytes());
    PublicKey::from_bytes(bytes)
}

/// Cluster `i`: two /24s of 10.0.0.0/8, reached on 198.18.x.y.
fn endpoint(i: u32, ip_offset: u32) -> Endpoint {
    let subnet = |n: u32| format!("10.{}.{}.0/24", n >> 8, n & 0xff);
    let ip_n = i + ip_offset;
    let mut spec = EndpointSpec {
        cluster_id: format!("c{i}"),
        cable_name: format!("submariner-cable-c{i}"),
        hostname: format!("gw-c{i}"),
        subnets: vec![subnet(2 * i), subnet(2 * i + 1)],
        private_ip: format!("198.18.{}.{}", (ip_n >> 8) & 0xff, ip_n & 0xff),
        backend: BACKEND_WIREGUARD.to_owned(),
        ..EndpointSpec::default()
    };
    spec.set_public_key(&key(i));
    Endpoint::new(spec)
}

fn raw(i: u32, ip_offset: u32) -> RawObject {
    RawObject {
        key: ObjectKey(format!("c{i}.yaml")),
        bound_cluster: Some(format!("c{i}")),
        format: Format::Yaml,
        bytes: endpoint(i, ip_offset).to_yaml().expect("yaml").into_bytes(),
        created: Some(u64::from(i)),
        version: None,
    }
}

fn local() -> LocalIdentity {
    let mut spec = EndpointSpec {
        cluster_id: "local".into(),
        subnets: vec!["172.16.0.0/16".into()],
        private_ip: "192.168.77.2".into(),
        backend: BACKEND_WIREGUARD.into(),
        ..EndpointSpec::default()
    };
    spec.set_public_key(&key(u32::MAX));
    LocalIdentity {
        cluster_id: "local".into(),
        public_key: key(u32::MAX),
        subnets: vec!["172.16.0.0/16".parse().expect("cidr")],
        underlay: vec!["192.168.77.2".parse().expect("ip")],
        own_key: Some(ObjectKey("local.yaml".into())),
        published: Endpoint::new(spec),
    }
}

fn snapshot(objects: Vec<RawObject>) -> Batch {
    let mut batch = Batch::default();
    batch.fold(SourceEvent::Snapshot(objects));
    batch
}

fn fresh() -> Admission {
    Admission::new(
        AdmissionConfig::default(),
        local(),
        &Registry::empty("local"),
    )
    .0
}

fn admitted_5000(objects: &[RawObject]) -> Admission {
    let mut a = fresh();
    let prepared = a.prepare_inline(snapshot(objects.to_vec()));
    let update = a.apply(prepared, std::time::SystemTime::now());
    assert_eq!(
        update.upserted.len(),
        N as usize,
        "{:?}",
        update.refused.first()
    );
    a
}

fn benches(c: &mut Criterion) {
    let objects: Vec<RawObject> = (0..N).map(|i| raw(i, 0)).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let mut g = c.benchmark_group("admit_5000");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("parse_only", |b| {
        b.iter(|| {
            for o in &objects {
                let ep = wgcable_api::parse_endpoint(
                    &o.bytes,
                    wgcable_api::Format::Yaml,
                    &wgcable_api::ParseLimits::default(),
                )
                .expect("parses");
                ep.spec.validate().expect("valid");
            }
        })
    });
    g.bench_function("inline", |b| {
        b.iter_batched(
            || (fresh(), snapshot(objects.clone())),
            |(mut a, batch)| {
                let prepared = a.prepare_inline(batch);
                let u = a.apply(prepared, std::time::SystemTime::now());
                assert_eq!(u.upserted.len(), N as usize);
                (a, u)
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("runner", |b| {
        b.iter_batched(
            || {
                (
                    AdmissionRunner::in_memory(AdmissionConfig::default(), local()),
                    snapshot(objects.clone()),
                )
            },
            |(mut r, batch)| {
                let u = rt.block_on(r.apply(batch));
                assert_eq!(u.upserted.len(), N as usize);
                (r, u)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("remove_1000");
    g.sample_size(10);
    let deletes = || {
        let mut batch = Batch::default();
        for i in 0..1000 {
            batch.fold(SourceEvent::Delete(ObjectKey(format!("c{}.yaml", i * 5))));
        }
        batch
    };
    g.bench_function("inline", |b| {
        b.iter_batched(
            || (admitted_5000(&objects), deletes()),
            |(mut a, batch)| {
                let prepared = a.prepare_inline(batch);
                let u = a.apply(prepared, std::time::SystemTime::now());
                assert_eq!(u.removed.len(), 1000);
                (a, u)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("one_change_among_5000");
    g.sample_size(20);
    let mut moved = Batch::default();
    moved.fold(SourceEvent::Apply(raw(17, 7)));
    g.bench_function("inline", |b| {
        b.iter_batched(
            || (admitted_5000(&objects), moved.clone()),
            |(mut a, batch)| {
                let prepared = a.prepare_inline(batch);
                let u = a.apply(prepared, std::time::SystemTime::now());
                assert_eq!(u.upserted.len(), 1);
                (a, u)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    let dir = tempfile::tempdir().expect("temp dir");
    for o in &objects {
        let tmp = dir.path().join(format!(".{}", o.key));
        std::fs::write(&tmp, &o.bytes).expect("write");
        std::fs::rename(&tmp, dir.path().join(&o.key.0)).expect("rename");
    }
    let mut g = c.benchmark_group("file_source");
    g.sample_size(10);
    g.bench_function("first_snapshot_5000", |b| {
        b.iter(|| {
            rt.block_on(async {
                let config = FileSourceConfig {
                    settle: Duration::ZERO,
                    ..FileSourceConfig::new(dir.path(), "local")
                };
                let source = FileSource::new(config);
                let mut events = source.watch();
                match events.next().await {
                    Some(SourceEvent::Snapshot(objects)) => assert_eq!(objects.len(), N as usize),
                    other => panic!("{other:?}"),
                }
            })
        })
    });
    g.finish();
}

criterion_group!(admission, benches);
criterion_main!(admission);

//! Planner micro-benchmarks (issue 8, case 6): the pure planning a reconcile does, at 10,000
//! remote clusters, against a device that already has the 10,000 peers.
//!
//! - `plan`: [`plan`] alone (observed device -> minimal changes), nothing to change and one
//!   endpoint moved.
//! - `desired_peers+plan`: endpoints -> peers (every endpoint validated and checked for
//!   overlapping subnets, duplicate keys and clusters), then the plan: what every reconcile
//!   runs. One endpoint has moved.
//!
//! Run with `cargo bench -p wgcable-peers --bench planner`; `cargo xtask bench` runs it and
//! reads the medians from `target/criterion/planner/*/new/estimates.json`. No I/O, no root.

use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use wgcable_api::{Endpoint, EndpointSpec, NatEndpointInfo, BACKEND_WIREGUARD};
use wgcable_keys::{PresharedKey, PublicKey};
use wgcable_peers::{
    desired_peers, desired_peers_validated, plan, DesiredPeer, DeviceStatus, LocalPeerConfig,
    PeerBook, PeerCandidate, PeerStatus,
};

/// A distinct, valid-looking public key per cluster (planning never does curve arithmetic,
/// so any 32 bytes will do).
fn key(i: u32) -> PublicKey {
    let mut bytes = [0x5a; 32];
    bytes[..4].copy_from_slice(&i.to_be_bytes());
    PublicKey::from_bytes(bytes)
}

/// Cluster `i`: two /24s of 10.0.0.0/8 (room for 32,768 clusters), reached on 198.18.x.y.
fn endpoint(i: u32, ip_offset: u32) -> NatEndpointInfo {
    let subnet = |n: u32| format!("10.{}.{}.0/24", n >> 8, n & 0xff);
    let ip_n = i + ip_offset;
    let use_ip = format!("198.18.{}.{}", (ip_n >> 8) & 0xff, ip_n & 0xff);
    let mut spec = EndpointSpec {
        cluster_id: format!("c{i}"),
        cable_name: format!("submariner-cable-c{i}"),
        hostname: format!("gw-c{i}"),
        subnets: vec![subnet(2 * i), subnet(2 * i + 1)],
        private_ip: use_ip.clone(),
        backend: BACKEND_WIREGUARD.to_owned(),
        ..EndpointSpec::default()
    };
    spec.set_public_key(&key(i));
    NatEndpointInfo {
        endpoint: Endpoint::new(spec),
        use_ip,
        use_nat: false,
    }
}

fn local() -> LocalPeerConfig {
    LocalPeerConfig {
        cluster_id: "local".to_owned(),
        public_key: key(u32::MAX),
        listen_port: 4500,
        preshared_key: PresharedKey::from_passphrase("bench"),
        local_subnets: vec!["172.16.0.0/16".parse().expect("a valid CIDR")],
        keepalive: 10,
    }
}

struct Fixture {
    endpoints: Vec<NatEndpointInfo>,
    /// The device as it is after the endpoints were applied.
    observed: DeviceStatus,
}

fn fixture(n: u32) -> Fixture {
    let endpoints: Vec<NatEndpointInfo> = (0..n).map(|i| endpoint(i, 0)).collect();
    let desired = desired_peers(&local(), &endpoints);
    assert_eq!(
        desired.peers.len(),
        n as usize,
        "the generated endpoints are all acceptable"
    );
    let observed = DeviceStatus {
        name: "submariner".to_owned(),
        public_key: Some(local().public_key),
        listen_port: Some(4500),
        peers: desired
            .peers
            .iter()
            .map(|p| PeerStatus {
                config: p.config.clone(),
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
            })
            .collect(),
    };
    Fixture {
        endpoints,
        observed,
    }
}

fn planner(c: &mut Criterion) {
    let local = local();
    let mut group = c.benchmark_group("planner");
    // Each iteration at 10,000 takes milliseconds or more: flat sampling keeps the run short
    // (criterion's default linear sampling would run the largest sample tens of times).
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));

    for n in [1_000u32, 10_000] {
        let f = fixture(n);
        let desired = desired_peers(&local, &f.endpoints).peers;
        let mut moved = f.endpoints.clone();
        moved[n as usize / 2] = endpoint(n / 2, 40_000);
        let moved_desired = desired_peers(&local, &moved).peers;
        let check = plan(&moved_desired, Some(&f.observed));
        assert_eq!(
            (check.update.len(), check.add.len(), check.remove.len()),
            (1, 0, 0)
        );

        group.bench_with_input(BenchmarkId::new("plan-nothing-to-change", n), &n, |b, _| {
            b.iter(|| plan(black_box(&desired), black_box(Some(&f.observed))))
        });
        group.bench_with_input(
            BenchmarkId::new("plan-one-endpoint-moved", n),
            &n,
            |b, _| b.iter(|| plan(black_box(&moved_desired), black_box(Some(&f.observed)))),
        );
        group.bench_with_input(BenchmarkId::new("desired_peers+plan", n), &n, |b, _| {
            b.iter(|| {
                let desired = desired_peers(black_box(&local), black_box(&moved));
                plan(&desired.peers, black_box(Some(&f.observed)))
            })
        });
        // The engine's first snapshot (and a source's relist): every endpoint validated once,
        // on arrival, its candidate handed to the peer book, which decides them all again;
        // then the book's peers planned against the device. A resync plans the book's peers
        // without deciding anything (the first half of this is what a resync does not do).
        let candidates: Vec<(u64, PeerCandidate)> = moved
            .iter()
            .enumerate()
            .map(|(i, info)| {
                let spec = Arc::new(info.endpoint.spec.validate().expect("valid fixture"));
                let candidate = PeerCandidate::from_nat_info(info, spec).expect("valid fixture");
                (i as u64, candidate)
            })
            .collect();
        let mut book = PeerBook::new(local.clone());
        group.bench_with_input(BenchmarkId::new("book_replace_all+plan", n), &n, |b, _| {
            b.iter(|| {
                // The engine hands the book a fresh candidate a remote (`Remote::candidate`:
                // two strings and the shared spec), as this clone does.
                book.replace_all(black_box(candidates.clone()));
                let peers: Vec<DesiredPeer> = book.peers().into_iter().cloned().collect();
                plan(&peers, black_box(Some(&f.observed)))
            })
        });
        group.bench_with_input(BenchmarkId::new("book_peers+plan", n), &n, |b, _| {
            b.iter(|| {
                let peers: Vec<DesiredPeer> = book.peers().into_iter().cloned().collect();
                plan(&peers, black_box(Some(&f.observed)))
            })
        });
        // The reference planner over validated endpoints (the engine used it before the
        // peer book; kept as the book's yardstick).
        let validated: Vec<_> = moved
            .iter()
            .map(|i| i.endpoint.spec.validate().expect("valid fixture"))
            .collect();
        group.bench_with_input(
            BenchmarkId::new("desired_peers_validated+plan", n),
            &n,
            |b, _| {
                b.iter(|| {
                    let desired =
                        desired_peers_validated(black_box(&local), moved.iter().zip(&validated));
                    plan(&desired.peers, black_box(Some(&f.observed)))
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, planner);
criterion_main!(benches);

//! The file broker against a real directory: publish, snapshot, add/change/remove, bad files.

use std::time::Duration;

use wgcable_api::{Endpoint, EndpointSpec, BACKEND_CONFIG_PUBLIC_KEY};
use wgcable_engine::{EndpointEvent, EndpointSource, FileBroker};
use wgcable_keys::PrivateKey;

fn endpoint(cluster: &str, subnet: &str) -> Endpoint {
    let mut spec = EndpointSpec {
        cluster_id: cluster.into(),
        cable_name: format!("submariner-cable-{cluster}"),
        hostname: format!("gw-{cluster}"),
        subnets: vec![subnet.into()],
        private_ip: "192.168.77.20".into(),
        backend: "wireguard".into(),
        ..EndpointSpec::default()
    };
    spec.set_backend_config(
        BACKEND_CONFIG_PUBLIC_KEY,
        PrivateKey::generate().public_key().to_base64(),
    );
    Endpoint::new(spec)
}

fn write(dir: &std::path::Path, name: &str, ep: &Endpoint) {
    std::fs::write(dir.join(name), ep.to_yaml().expect("yaml")).expect("write");
}

/// Waits for the next event with a deadline (the broker reacts to inotify or its rescan).
async fn next(b: &mut FileBroker) -> EndpointEvent {
    tokio::time::timeout(Duration::from_secs(10), b.next())
        .await
        .expect("an event within 10s")
        .expect("event")
}

#[tokio::test]
async fn publish_snapshot_and_follow_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker =
        FileBroker::open(dir.path(), "cluster-a", Duration::from_millis(200), None).expect("open");
    let own = endpoint("cluster-a", "10.201.0.0/16");
    broker.publish(&own).await.expect("publish");
    let published = std::fs::read_to_string(dir.path().join("cluster-a.yaml")).expect("own file");
    assert_eq!(Endpoint::from_yaml(&published).expect("parses"), own);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "no temporary files left");

    let b = endpoint("cluster-b", "10.202.0.0/16");
    write(dir.path(), "cluster-b.yaml", &b);
    let snap = broker.snapshot().await.expect("snapshot");
    assert_eq!(
        snap,
        vec![b.clone()],
        "own endpoint is not part of the snapshot"
    );

    let c = endpoint("cluster-c", "10.203.0.0/16");
    write(dir.path(), "cluster-c.yaml", &c);
    assert_eq!(
        next(&mut broker).await,
        EndpointEvent::Upsert(Box::new(c.clone()))
    );

    let mut b2 = b.clone();
    b2.spec.private_ip = "192.168.77.99".into();
    write(dir.path(), "cluster-b.yaml", &b2);
    assert_eq!(
        next(&mut broker).await,
        EndpointEvent::Upsert(Box::new(b2.clone()))
    );

    std::fs::remove_file(dir.path().join("cluster-c.yaml")).expect("rm");
    assert_eq!(
        next(&mut broker).await,
        EndpointEvent::Remove {
            cluster_id: "cluster-c".into()
        }
    );
}

#[tokio::test]
async fn bad_files_are_ignored_and_the_last_good_state_stays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker =
        FileBroker::open(dir.path(), "cluster-a", Duration::from_millis(200), None).expect("open");
    let b = endpoint("cluster-b", "10.202.0.0/16");
    write(dir.path(), "cluster-b.yaml", &b);
    assert_eq!(broker.snapshot().await.expect("snapshot").len(), 1);

    // Garbage in a new file, and a broken update of cluster-b: neither produces an event.
    std::fs::write(dir.path().join("junk.yaml"), "this: [is not an endpoint").expect("write");
    let mut broken = b.clone();
    broken.spec.subnets = vec!["10.202.0.1/16".into()];
    write(dir.path(), "cluster-b.yaml", &broken);
    // Then a good new file: the first event seen must be about it.
    let d = endpoint("cluster-d", "10.204.0.0/16");
    write(dir.path(), "cluster-d.yaml", &d);
    assert_eq!(
        next(&mut broker).await,
        EndpointEvent::Upsert(Box::new(d.clone()))
    );
    let snap = broker.snapshot().await.expect("snapshot");
    assert!(
        snap.contains(&b),
        "cluster-b keeps its last good endpoint: {snap:?}"
    );

    // Fixing the file applies the fix.
    let mut fixed = b.clone();
    fixed.spec.subnets = vec!["10.212.0.0/16".into()];
    write(dir.path(), "cluster-b.yaml", &fixed);
    assert_eq!(
        next(&mut broker).await,
        EndpointEvent::Upsert(Box::new(fixed))
    );
}

#[tokio::test]
async fn a_second_file_cannot_take_over_a_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker =
        FileBroker::open(dir.path(), "cluster-a", Duration::from_millis(200), None).expect("open");
    let b = endpoint("cluster-b", "10.202.0.0/16");
    write(dir.path(), "cluster-b.yaml", &b);
    broker.snapshot().await.expect("snapshot");
    let impostor = endpoint("cluster-b", "10.99.0.0/16");
    write(dir.path(), "zzz-impostor.yaml", &impostor);
    let e = endpoint("cluster-e", "10.205.0.0/16");
    write(dir.path(), "zzz-later.yaml", &e);
    assert_eq!(next(&mut broker).await, EndpointEvent::Upsert(Box::new(e)));
    let snap = broker.snapshot().await.expect("snapshot");
    assert!(snap.contains(&b) && !snap.contains(&impostor));
}

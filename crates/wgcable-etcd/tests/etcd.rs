//! The etcd source against a real 3-member etcd cluster in network namespaces (root, Debian's
//! etcd-server and etcd-client): listing and watching, resuming after a cut, compaction,
//! leader loss, etcd down, hostile values, compare-and-swap publishing.
//!
//! Each test starts its own cluster ([`wgcable_etcd::testing`]) and runs the source on a
//! thread inside a client namespace attached to the etcd network, so a test can cut that
//! client's link while the source runs. The test thread drives etcd with `etcdctl` and reads
//! the source's events from a channel, each wait bounded by a deadline.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use wgcable_api::{Endpoint, EndpointSpec};
use wgcable_broker::{EndpointSource, ObjectKey, RawObject, Role, SourceEvent};
use wgcable_etcd::testing::{can_run, spawn_in_netns, ClusterOptions, EtcdCluster, NetnsThread};
use wgcable_etcd::{Backoff, EtcdConfig, EtcdSource, EtcdStats};

const WAIT: Duration = Duration::from_secs(20);

fn endpoint(cluster: &str, ip: &str) -> Endpoint {
    Endpoint::new(EndpointSpec {
        cluster_id: cluster.into(),
        cable_name: format!("submariner-cable-{cluster}"),
        hostname: format!("gw-{cluster}"),
        subnets: vec!["10.1.0.0/16".into()],
        private_ip: ip.into(),
        backend: "wireguard".into(),
        ..EndpointSpec::default()
    })
}

fn key(id: &str) -> String {
    format!("/wgcable/endpoints/{id}")
}

/// Short timeouts so that faults are noticed within a few seconds (and long enough for a
/// machine busy with several clusters at once).
fn config(cluster: &EtcdCluster) -> EtcdConfig {
    let mut c = EtcdConfig::new(cluster.client_urls());
    c.request_timeout = Duration::from_secs(2);
    c.connect_timeout = Duration::from_secs(1);
    c.probe_interval = Duration::from_millis(300);
    c.backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    c
}

enum Cmd {
    Publish(Endpoint, mpsc::Sender<Result<(), String>>),
    Withdraw(Endpoint, mpsc::Sender<Result<(), String>>),
    Lead,
    Stats(mpsc::Sender<EtcdStats>),
    /// A put with a client of our own (etcdctl cannot send more than 2 MiB).
    Put(String, Vec<u8>, mpsc::Sender<Result<(), String>>),
    /// Stop polling the watch stream until the sender is dropped, as a gateway busy with a
    /// reconcile or a publish does.
    Hold(tokio::sync::oneshot::Receiver<()>),
}

/// An [`EtcdSource`] running in a client namespace.
struct Watching {
    netns: String,
    events: mpsc::Receiver<SourceEvent>,
    cmds: tokio::sync::mpsc::UnboundedSender<Cmd>,
    thread: Option<NetnsThread<()>>,
    /// Every event received so far, in order.
    seen: Vec<SourceEvent>,
}

impl Watching {
    /// A source in a new client namespace `name`, with [`config`] unless given one.
    fn start(cluster: &mut EtcdCluster, name: &str, cfg: Option<EtcdConfig>) -> Result<Watching> {
        let config = cfg.unwrap_or_else(|| config(cluster));
        let (netns, _) = cluster.add_client(name)?;
        Self::start_in(&netns, config)
    }

    fn start_in(netns: &str, config: EtcdConfig) -> Result<Watching> {
        let (tx, events) = mpsc::channel();
        let (cmds, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let thread = spawn_in_netns(netns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let urls = config.endpoints.clone();
                let source = EtcdSource::new(config).expect("valid config");
                source.preflight().await.expect("preflight");
                let mut stream = source.watch();
                loop {
                    tokio::select! {
                        ev = stream.next() => {
                            let Some(ev) = ev else { break };
                            if tx.send(ev).is_err() { break }
                        }
                        cmd = rx.recv() => match cmd {
                            None => break,
                            Some(Cmd::Publish(ep, reply)) => {
                                let _ = reply.send(source.publish(&ep).await.map_err(|e| chain(&e)));
                            }
                            Some(Cmd::Withdraw(ep, reply)) => {
                                let _ = reply.send(source.withdraw(&ep).await.map_err(|e| chain(&e)));
                            }
                            Some(Cmd::Lead) => source.set_role(&Role::Leader).await,
                            Some(Cmd::Stats(reply)) => { let _ = reply.send(source.stats()); }
                            Some(Cmd::Put(key, value, reply)) => {
                                let _ = reply.send(raw_put(&urls, key, value).await.map_err(|e| format!("{e:#}")));
                            }
                            Some(Cmd::Hold(release)) => { let _ = release.await; }
                        }
                    }
                }
            });
        })?;
        Ok(Watching {
            netns: netns.to_string(),
            events,
            cmds,
            thread: Some(thread),
            seen: Vec::new(),
        })
    }

    fn ask<T>(&self, make: impl FnOnce(mpsc::Sender<T>) -> Cmd) -> Result<T> {
        let (tx, rx) = mpsc::channel();
        self.cmds
            .send(make(tx))
            .ok()
            .context("the source thread ended")?;
        rx.recv_timeout(WAIT)
            .context("no answer from the source thread")
    }

    fn publish(&self, ep: &Endpoint) -> Result<(), String> {
        let ep = ep.clone();
        self.ask(|tx| Cmd::Publish(ep, tx)).expect("answer")
    }

    fn withdraw(&self, ep: &Endpoint) -> Result<(), String> {
        let ep = ep.clone();
        self.ask(|tx| Cmd::Withdraw(ep, tx)).expect("answer")
    }

    fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        let key = key.to_string();
        self.ask(|tx| Cmd::Put(key, value, tx))?
            .map_err(anyhow::Error::msg)
    }

    fn stats(&self) -> EtcdStats {
        self.ask(Cmd::Stats).expect("stats")
    }

    /// Waits for the next event.
    fn next(&mut self, timeout: Duration) -> Result<SourceEvent> {
        let ev = self
            .events
            .recv_timeout(timeout)
            .with_context(|| format!("no event within {timeout:?}"))?;
        self.seen.push(ev.clone());
        Ok(ev)
    }

    /// Waits for the first snapshot (a busy machine may make the first attempt time out, which
    /// the source reports as health first).
    fn first_snapshot(&mut self) -> Result<Vec<RawObject>> {
        let (ev, before) = self.until("the first snapshot", WAIT, |ev| snapshot(ev).is_some())?;
        assert!(
            before.iter().all(|e| matches!(e, SourceEvent::Health(_))),
            "only health before the first snapshot: {before:?}"
        );
        Ok(snapshot(&ev).cloned().expect("a snapshot"))
    }

    /// Waits for an event matching `want`; returns it and the events before it.
    fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut want: impl FnMut(&SourceEvent) -> bool,
    ) -> Result<(SourceEvent, Vec<SourceEvent>)> {
        let deadline = Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = self
                .next(left)
                .with_context(|| format!("waiting for {what}; got before: {before:?}"))?;
            if want(&ev) {
                return Ok((ev, before));
            }
            before.push(ev);
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        // Closing the command channel ends the thread's loop.
        let (dead, _) = tokio::sync::mpsc::unbounded_channel();
        self.cmds = dead;
        if let Some(t) = self.thread.take() {
            if !std::thread::panicking() {
                t.join();
            }
        }
    }
}

async fn raw_put(urls: &[String], key: String, value: Vec<u8>) -> Result<()> {
    let client = etcd_client::Client::connect(urls, None).await?;
    client
        .kv_client()
        .max_encoding_message_size(64 << 20)
        .put(key, value, None)
        .await?;
    Ok(())
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn start(test: &str, opts: ClusterOptions) -> Option<EtcdCluster> {
    if !can_run(test) {
        return None;
    }
    Some(EtcdCluster::start(opts).expect("start the etcd cluster"))
}

fn snapshot(ev: &SourceEvent) -> Option<&Vec<RawObject>> {
    match ev {
        SourceEvent::Snapshot(objects) => Some(objects),
        _ => None,
    }
}

fn keys(objects: &[RawObject]) -> Vec<&str> {
    objects.iter().map(|o| o.key.0.as_str()).collect()
}

fn is_unhealthy(ev: &SourceEvent) -> bool {
    matches!(ev, SourceEvent::Health(h) if !h.is_healthy())
}

fn is_healthy(ev: &SourceEvent) -> bool {
    matches!(ev, SourceEvent::Health(h) if h.is_healthy())
}

/// The changes (key, version or "deleted") in the events, in order.
fn changes(events: &[SourceEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|ev| match ev {
            SourceEvent::Apply(raw) => Some((
                raw.key.0.clone(),
                String::from_utf8_lossy(&raw.bytes).into_owned(),
            )),
            SourceEvent::Delete(ObjectKey(k)) => Some((k.clone(), "deleted".into())),
            _ => None,
        })
        .collect()
}

#[test]
fn snapshot_then_watch() -> Result<()> {
    let Some(mut cluster) = start("snapshot_then_watch", ClusterOptions::new()) else {
        return Ok(());
    };
    cluster.put(&key("a"), b"a-1")?;
    cluster.put(&key("b"), b"{\"b\": 1}")?;
    cluster.put("/wgcable/other", b"not an endpoint")?;
    let mut w = Watching::start(&mut cluster, "c1", None)?;

    let objects = &w.first_snapshot()?;
    assert_eq!(keys(objects), [key("a"), key("b")]);
    let a = &objects[0];
    assert_eq!(a.bound_cluster.as_deref(), Some("a"));
    assert_eq!(a.bytes, b"a-1");
    assert_eq!(a.format, wgcable_broker::Format::Yaml);
    assert_eq!(objects[1].format, wgcable_broker::Format::Json);
    let (a_created, b_created) = (a.created.expect("created"), objects[1].created.expect("c"));
    assert!(
        a_created < b_created,
        "creation order is etcd's create revision"
    );

    cluster.put(&key("c"), b"c-1")?;
    cluster.put(&key("b"), b"b-2")?;
    cluster.ctl(["del", &key("a")])?;
    let (_, before) = w.until("the deletion of a", WAIT, |ev| {
        *ev == SourceEvent::Delete(ObjectKey(key("a")))
    })?;
    assert_eq!(
        changes(&before),
        [(key("c"), "c-1".into()), (key("b"), "b-2".into())]
    );
    let versions: Vec<u64> = before
        .iter()
        .filter_map(|ev| match ev {
            SourceEvent::Apply(raw) => raw.version.as_deref()?.parse().ok(),
            _ => None,
        })
        .collect();
    assert!(versions.windows(2).all(|v| v[0] < v[1]), "{versions:?}");
    if let SourceEvent::Apply(b) = &before[1] {
        assert_eq!(
            b.created,
            Some(b_created),
            "a change keeps the creation order"
        );
    }

    // Publishing writes our YAML once; the same Endpoint again writes nothing.
    let local = endpoint("z", "10.250.0.9");
    w.publish(&local).map_err(anyhow::Error::msg)?;
    let (ev, _) = w.until(
        "our own key",
        WAIT,
        |ev| matches!(ev, SourceEvent::Apply(r) if r.key.0 == key("z")),
    )?;
    let SourceEvent::Apply(raw) = ev else {
        unreachable!()
    };
    assert_eq!(raw.bytes, local.to_yaml()?.as_bytes());
    let rev = cluster.revision()?;
    w.publish(&local).map_err(anyhow::Error::msg)?;
    assert_eq!(
        cluster.revision()?,
        rev,
        "an unchanged Endpoint is not rewritten"
    );
    assert_eq!(
        cluster
            .ctl(["get", &key("z"), "--print-value-only"])?
            .trim_end(),
        local.to_yaml()?.trim_end()
    );
    // No lease: the key lives until it is deleted.
    let lease = cluster.ctl(["get", &key("z"), "-w", "fields"])?;
    assert!(lease.contains("\"Lease\" : 0"), "{lease}");

    // Leaving deletes our key; the others see the deletion.
    w.withdraw(&local).map_err(anyhow::Error::msg)?;
    w.until("our key's deletion", WAIT, |ev| {
        *ev == SourceEvent::Delete(ObjectKey(key("z")))
    })?;
    assert_eq!(cluster.ctl(["get", &key("z")])?, "");
    assert_eq!(w.stats().relists, 1);
    Ok(())
}

#[test]
fn resume_after_a_cut_misses_and_repeats_nothing() -> Result<()> {
    let Some(mut cluster) = start("resume_after_a_cut", ClusterOptions::new()) else {
        return Ok(());
    };
    cluster.put(&key("a"), b"0")?;
    let mut w = Watching::start(&mut cluster, "c1", None)?;
    w.first_snapshot()?;
    cluster.put(&key("a"), b"1")?;
    w.until("a=1", WAIT, |ev| matches!(ev, SourceEvent::Apply(_)))?;

    cluster.set_link(&w.netns, "eth0", false)?;
    w.until("unhealthy after the cut", WAIT, is_unhealthy)?;
    // Changes while the client is cut off: puts, a delete, a new key, a txn of two.
    let mut want = Vec::new();
    for i in 2..12 {
        let v = i.to_string();
        cluster.put(&key("a"), v.as_bytes())?;
        want.push((key("a"), v));
    }
    cluster.ctl(["del", &key("a")])?;
    want.push((key("a"), "deleted".into()));
    cluster.put(&key("b"), b"b")?;
    want.push((key("b"), "b".into()));
    cluster.put(&key("a"), b"again")?;
    want.push((key("a"), "again".into()));
    cluster.set_link(&w.netns, "eth0", true)?;

    w.until("healthy after the cut", WAIT, is_healthy)?;
    let mut got = Vec::new();
    while got.len() < want.len() {
        let ev = w.next(WAIT).context(format!("changes so far: {got:?}"))?;
        assert!(snapshot(&ev).is_none(), "resumed, not relisted: {ev:?}");
        got.extend(changes(&[ev]));
    }
    assert_eq!(got, want);
    // Nothing repeated afterwards.
    cluster.put(&key("c"), b"c")?;
    let (_, extra) = w.until(
        "c",
        WAIT,
        |ev| matches!(ev, SourceEvent::Apply(r) if r.key.0 == key("c")),
    )?;
    assert!(changes(&extra).is_empty(), "repeated: {extra:?}");
    let stats = w.stats();
    assert_eq!(stats.relists, 1, "{stats:?}");
    assert!(stats.watches >= 2, "{stats:?}");
    Ok(())
}

#[test]
fn compaction_while_away_relists_and_shows_removals() -> Result<()> {
    let Some(mut cluster) = start("compaction_relists", ClusterOptions::new()) else {
        return Ok(());
    };
    cluster.put(&key("a"), b"a")?;
    cluster.put(&key("b"), b"b")?;
    let mut w = Watching::start(&mut cluster, "c1", None)?;
    assert_eq!(keys(&w.first_snapshot()?), [key("a"), key("b")]);

    cluster.set_link(&w.netns, "eth0", false)?;
    w.until("unhealthy after the cut", WAIT, is_unhealthy)?;
    cluster.ctl(["del", &key("a")])?;
    cluster.put(&key("c"), b"c")?;
    cluster.put(&key("b"), b"b2")?;
    cluster.compact()?;
    cluster.set_link(&w.netns, "eth0", true)?;

    let (ev, before) = w.until("a new snapshot", WAIT, |ev| snapshot(ev).is_some())?;
    assert!(
        changes(&before).is_empty(),
        "no stale events before it: {before:?}"
    );
    let objects = snapshot(&ev).expect("snapshot");
    assert_eq!(keys(objects), [key("b"), key("c")], "a is gone");
    assert_eq!(objects[0].bytes, b"b2");
    // And the watch goes on from the listing's revision.
    cluster.put(&key("d"), b"d")?;
    let (ev, _) = w.until("d", WAIT, |ev| matches!(ev, SourceEvent::Apply(_)))?;
    assert_eq!(changes(&[ev]), [(key("d"), "d".into())]);
    assert_eq!(w.stats().relists, 2);
    Ok(())
}

#[test]
fn leader_sigkill_loses_no_event() -> Result<()> {
    let Some(mut cluster) = start("leader_sigkill", ClusterOptions::new()) else {
        return Ok(());
    };
    let mut w = Watching::start(&mut cluster, "c1", None)?;
    w.first_snapshot()?;
    // Writes keep coming while the leader dies; each is retried until etcd confirms it.
    let n = 30;
    let mut confirmed = Vec::new();
    for i in 0..n {
        if i == 10 {
            let leader = cluster.leader()?;
            cluster.kill_member(leader)?;
        }
        let id = format!("w{i}");
        let deadline = Instant::now() + WAIT;
        loop {
            match cluster.put(&key(&id), id.as_bytes()) {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => eprintln!("retrying: {e:#}"),
                Err(e) => return Err(e),
            }
        }
        confirmed.push(id);
    }
    let mut got: Vec<String> = Vec::new();
    while got.len() < n {
        let ev = w.next(WAIT).context(format!("got so far: {got:?}"))?;
        if let SourceEvent::Apply(raw) = ev {
            got.push(String::from_utf8_lossy(&raw.bytes).into_owned());
        }
    }
    // In order, none lost. (A put whose answer was lost during the election and was retried
    // shows as one change: the retry writes the same bytes, a new revision of the same key.)
    got.dedup();
    assert_eq!(got, confirmed);
    Ok(())
}

#[test]
fn etcd_down_only_reports_health_and_catches_up() -> Result<()> {
    let Some(mut cluster) = start("etcd_down", ClusterOptions::new()) else {
        return Ok(());
    };
    cluster.put(&key("a"), b"a")?;
    let mut w = Watching::start(&mut cluster, "c1", None)?;
    w.first_snapshot()?;
    let local = endpoint("z", "10.250.0.9");
    w.publish(&local).map_err(anyhow::Error::msg)?;
    w.until("our key", WAIT, |ev| matches!(ev, SourceEvent::Apply(_)))?;

    for i in 0..cluster.members.len() {
        cluster.stop_member(i)?;
    }
    let (_, before) = w.until("unhealthy", WAIT, is_unhealthy)?;
    assert!(changes(&before).is_empty(), "{before:?}");
    // While etcd is down: nothing but health; a publish fails as unavailable and is kept.
    let moved = endpoint("z", "10.250.0.10");
    let err = w.publish(&moved).expect_err("etcd is down");
    assert!(err.contains("unavailable"), "{err}");
    let quiet = Instant::now() + Duration::from_secs(3);
    while let Some(left) = quiet.checked_duration_since(Instant::now()) {
        match w.next(left) {
            Ok(ev) => assert!(matches!(ev, SourceEvent::Health(_)), "{ev:?}"),
            Err(_) => break,
        }
    }

    let back = Instant::now();
    for i in 0..cluster.members.len() {
        cluster.start_member(i)?;
    }
    cluster.wait_for_leader(WAIT)?;
    cluster.put(&key("b"), b"b")?;
    let (_, before) = w.until(
        "b after etcd's return",
        WAIT,
        |ev| matches!(ev, SourceEvent::Apply(r) if r.key.0 == key("b")),
    )?;
    eprintln!("caught up {:?} after etcd's return", back.elapsed());
    assert!(before.iter().any(is_healthy), "{before:?}");
    assert!(
        !before.iter().any(|e| snapshot(e).is_some()),
        "resumed: {before:?}"
    );
    // The publish that failed meanwhile was written once etcd answered again.
    let deadline = Instant::now() + WAIT;
    loop {
        let value = cluster.ctl(["get", &key("z"), "--print-value-only"])?;
        if value.trim_end() == moved.to_yaml()?.trim_end() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the publish made while etcd was down never landed");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[test]
fn hostile_values_are_handed_on_bounded() -> Result<()> {
    let mut opts = ClusterOptions::new();
    // Let etcd take values larger than our message limit, as a carelessly configured one would.
    opts.extra_args = vec!["--max-request-bytes=10485760".into()];
    let Some(mut cluster) = start("hostile_values", opts) else {
        return Ok(());
    };
    let limit = 64 * 1024;
    let mut cfg = config(&cluster).with_max_value_bytes(limit);
    cfg.max_message_bytes = 4 * 1024 * 1024;
    // A writer with a client of its own (etcdctl cannot send values over 2 MiB).
    let writer = Watching::start(&mut cluster, "writer", None)?;
    // Before the source starts (seen by the listing) ...
    cluster.put(&key("garbage"), b"\x00\xff{{{: not yaml\n\x1b[31m")?;
    writer.put(&key("huge"), vec![b'x'; 2 * 1024 * 1024])?;
    writer.put(&key("enormous"), vec![b'y'; 6 * 1024 * 1024])?;
    cluster.put(&key("UPPER"), b"x")?;
    cluster.put("/wgcable/endpoints/a/b", b"x")?;
    cluster.put("/elsewhere/endpoints/a", b"x")?;
    cluster.put(&key("good"), b"spec: {}")?;
    let mut w = Watching::start(&mut cluster, "c1", Some(cfg))?;
    let objects = &w.first_snapshot()?;
    assert_eq!(
        keys(objects),
        [key("enormous"), key("garbage"), key("good"), key("huge")]
    );
    let by = |k: &str| objects.iter().find(|o| o.key.0 == key(k)).expect(k);
    assert_eq!(by("garbage").bytes, b"\x00\xff{{{: not yaml\n\x1b[31m");
    assert_eq!(by("huge").bytes.len(), limit + 1, "cut to the limit + 1");
    assert_eq!(
        by("enormous").bytes.len(),
        limit + 1,
        "too large to receive: oversized"
    );
    assert_eq!(by("good").bytes, b"spec: {}");
    assert_eq!(
        w.stats().ignored_keys,
        2,
        "UPPER and a/b; /elsewhere is not ours"
    );
    // Keys outside the layout follow the snapshot as refusals, named by key.
    let mut refused = Vec::new();
    while refused.len() < 2 {
        match w.next(WAIT)? {
            SourceEvent::Refused { key, problem } => {
                assert_eq!(problem.reason, "key_layout");
                refused.push(key.0);
            }
            other => panic!("expected the refusals, got {other:?}"),
        }
    }
    assert_eq!(
        refused,
        [key("UPPER"), "/wgcable/endpoints/a/b".to_string()]
    );

    // ... and after (seen by the watch; the enormous one breaks the stream, then a listing).
    writer.put(&key("huge2"), vec![b'x'; 2 * 1024 * 1024])?;
    let (ev, _) = w.until("huge2", WAIT, |ev| matches!(ev, SourceEvent::Apply(_)))?;
    let SourceEvent::Apply(raw) = ev else {
        unreachable!()
    };
    assert_eq!(raw.bytes.len(), limit + 1);
    writer.put(&key("enormous2"), vec![b'y'; 6 * 1024 * 1024])?;
    cluster.put(&key("after"), b"after")?;
    let (ev, _) = w.until("a snapshot with enormous2", WAIT, |ev| {
        snapshot(ev).is_some()
    })?;
    let objects = snapshot(&ev).expect("snapshot");
    let e2 = objects
        .iter()
        .find(|o| o.key.0 == key("enormous2"))
        .context("enormous2")?;
    assert_eq!(e2.bytes.len(), limit + 1);
    cluster.put(&key("BAD2"), b"x")?;
    w.until(
        "BAD2 refused",
        WAIT,
        |ev| matches!(ev, SourceEvent::Refused { key: k, .. } if k.0 == key("BAD2")),
    )?;
    cluster.ctl(["del", &key("BAD2")])?;
    w.until("BAD2's refusal gone", WAIT, |ev| {
        *ev == SourceEvent::Delete(ObjectKey(key("BAD2")))
    })?;
    cluster.put(&key("last"), b"last")?;
    w.until(
        "last",
        WAIT,
        |ev| matches!(ev, SourceEvent::Apply(r) if r.key.0 == key("last")),
    )?;
    let deadline = Instant::now() + WAIT;
    while w.stats().ignored_keys < 5 {
        assert!(Instant::now() < deadline, "{:?}", w.stats());
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn compare_and_swap_publishing() -> Result<()> {
    let Some(mut cluster) = start("compare_and_swap", ClusterOptions::new()) else {
        return Ok(());
    };
    let old = Watching::start(&mut cluster, "c1", None)?;
    let v1 = endpoint("z", "10.250.0.1");
    old.publish(&v1).map_err(anyhow::Error::msg)?;

    // A newer gateway of the same cluster (another identity) takes the key over.
    let new = Watching::start(&mut cluster, "c2", None)?;
    let v2 = endpoint("z", "10.250.0.2");
    new.publish(&v2).map_err(anyhow::Error::msg)?;
    let value = |c: &EtcdCluster| -> Result<String> {
        Ok(c.ctl(["get", &key("z"), "--print-value-only"])?
            .trim_end()
            .to_string())
    };
    assert_eq!(value(&cluster)?, v2.to_yaml()?.trim_end());

    // The older one is superseded: it does not write back, and says why.
    let v3 = endpoint("z", "10.250.0.3");
    let err = old.publish(&v3).expect_err("superseded");
    assert!(err.contains("by another writer"), "{err}");
    assert_eq!(value(&cluster)?, v2.to_yaml()?.trim_end());
    let err = old.withdraw(&v1).expect_err("not ours any more");
    assert!(err.contains("not deleting"), "{err}");
    assert_eq!(value(&cluster)?, v2.to_yaml()?.trim_end());

    // Becoming leader again takes the key back deliberately.
    old.cmds.send(Cmd::Lead).ok().context("thread")?;
    old.publish(&v3).map_err(anyhow::Error::msg)?;
    assert_eq!(value(&cluster)?, v3.to_yaml()?.trim_end());

    // `wgcable leave` from a fresh process deletes whatever the key holds.
    let leave = Watching::start(&mut cluster, "c3", None)?;
    leave.withdraw(&v1).map_err(anyhow::Error::msg)?;
    assert_eq!(cluster.ctl(["get", &key("z")])?, "");
    Ok(())
}

#[test]
fn tls_with_client_certificates() -> Result<()> {
    let mut opts = ClusterOptions::new();
    opts.tls = true;
    let Some(mut cluster) = start("tls_with_client_certificates", opts) else {
        return Ok(());
    };
    let tls = cluster.tls().cloned().context("TLS files")?;
    cluster.put(&key("a"), b"a")?;
    let mut cfg = config(&cluster);
    cfg.cacert = Some(tls.cacert.clone());
    cfg.cert = Some(tls.cert.clone());
    cfg.key = Some(tls.key.clone());
    let mut w = Watching::start(&mut cluster, "c1", Some(cfg.clone()))?;
    assert_eq!(keys(&w.first_snapshot()?), [key("a")]);
    w.publish(&endpoint("z", "10.250.0.9"))
        .map_err(anyhow::Error::msg)?;
    w.until(
        "our key over TLS",
        WAIT,
        |ev| matches!(ev, SourceEvent::Apply(r) if r.key.0 == key("z")),
    )?;

    // Without a client certificate, etcd refuses the connection: only health, never a
    // snapshot.
    let mut anonymous = cfg.clone();
    anonymous.cert = None;
    anonymous.key = None;
    let mut w = Watching::start(&mut cluster, "c2", Some(anonymous))?;
    let ev = w.next(WAIT)?;
    assert!(is_unhealthy(&ev), "{ev:?}");

    // Preflight names the flag and the file of a certificate that is not one.
    let mut swapped = cfg;
    swapped.cacert = Some(tls.key.clone());
    let source = EtcdSource::new(swapped)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let err = rt
        .block_on(source.preflight())
        .expect_err("a key is not a CA certificate");
    let text = chain(&err);
    assert!(text.contains("--etcd-cacert"), "{text}");
    assert!(!text.contains("PRIVATE KEY-----\n"), "{text}");
    Ok(())
}

/// The gateway awaits `publish` between two polls of the watch stream. The watcher writes a
/// publish that failed during an outage when etcd returns, holding the publisher's lock; if
/// it ran only while polled, a consumer awaiting `publish` at that moment waited forever for a
/// lock held by a future it did not poll (the `etcd-down` e2e saw it). So the watcher must make
/// progress, its pending write included, while nobody polls the stream.
#[test]
fn the_watch_writes_a_pending_publish_while_its_consumer_is_busy() -> Result<()> {
    let Some(mut cluster) = start("busy_consumer", ClusterOptions::new()) else {
        return Ok(());
    };
    let mut w = Watching::start(&mut cluster, "c1", None)?;
    w.first_snapshot()?;
    for i in 0..cluster.members.len() {
        cluster.stop_member(i)?;
    }
    w.until("unhealthy", WAIT, is_unhealthy)?;
    let local = endpoint("z", "10.250.0.9");
    let err = w.publish(&local).expect_err("etcd is down");
    assert!(err.contains("unavailable"), "{err}");

    // The consumer stops polling; etcd returns meanwhile.
    let (release, hold) = tokio::sync::oneshot::channel();
    w.cmds
        .send(Cmd::Hold(hold))
        .ok()
        .context("the source thread ended")?;
    for i in 0..cluster.members.len() {
        cluster.start_member(i)?;
    }
    cluster.wait_for_leader(WAIT)?;
    let deadline = Instant::now() + WAIT;
    let want = local.to_yaml()?;
    loop {
        // etcdctl itself may meet a member still starting: that is only "not yet".
        let value = cluster.ctl(["get", &key("z"), "--print-value-only"]);
        if value
            .as_deref()
            .is_ok_and(|v| v.trim_end() == want.trim_end())
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the watch did not write the pending publish while its consumer was busy (last read: {value:?})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(release);
    // What happened meanwhile is delivered, in order, once the consumer polls again; and a
    // publish now is answered (the watcher holds no lock across a suspension: `publish`
    // panics when no answer comes within WAIT).
    w.until("healthy", WAIT, is_healthy)?;
    w.until(
        "our key",
        WAIT,
        |ev| matches!(ev, SourceEvent::Apply(r) if r.key.0 == key("z")),
    )?;
    let moved = endpoint("z", "10.250.0.10");
    w.publish(&moved).map_err(anyhow::Error::msg)?;
    Ok(())
}

#[test]
fn a_source_started_while_etcd_is_down_reports_health_then_snapshots() -> Result<()> {
    let Some(mut cluster) = start("started_while_down", ClusterOptions::new()) else {
        return Ok(());
    };
    cluster.put(&key("a"), b"a")?;
    for i in 0..cluster.members.len() {
        cluster.stop_member(i)?;
    }
    let mut w = Watching::start(&mut cluster, "c1", None)?;
    let ev = w.next(WAIT)?;
    assert!(is_unhealthy(&ev), "health first: {ev:?}");
    for i in 0..cluster.members.len() {
        cluster.start_member(i)?;
    }
    assert_eq!(keys(&w.first_snapshot()?), [key("a")]);
    Ok(())
}

#[test]
fn a_member_without_a_leader_is_unhealthy_until_its_quorum_returns() -> Result<()> {
    let Some(mut cluster) = start("leaderless_member", ClusterOptions::new()) else {
        return Ok(());
    };
    // The client knows only m1. m2 and m3 lose their links to the bridge: m1 still answers
    // the client but has no quorum, and so no leader after an election timeout.
    let mut cfg = config(&cluster);
    cfg.endpoints = vec![cluster.members[0].client_url()];
    let mut w = Watching::start(&mut cluster, "c1", Some(cfg))?;
    w.first_snapshot()?;
    let (m2, m3) = (
        cluster.members[1].netns.clone(),
        cluster.members[2].netns.clone(),
    );
    cluster.set_link(&m2, "eth0", false)?;
    cluster.set_link(&m3, "eth0", false)?;
    let started = Instant::now();
    let (ev, before) = w.until("unhealthy: m1 has no leader", WAIT, is_unhealthy)?;
    eprintln!("leaderless noticed after {:?}: {ev:?}", started.elapsed());
    assert!(changes(&before).is_empty(), "{before:?}");
    cluster.set_link(&m2, "eth0", true)?;
    cluster.set_link(&m3, "eth0", true)?;
    cluster.wait_for_leader(WAIT)?;
    // The members may still settle their terms for a moment after one reports a leader: the
    // write is retried until it lands (what is tested is the source catching up, not etcd).
    let deadline = Instant::now() + WAIT;
    while let Err(e) = cluster.put(&key("b"), b"b") {
        if Instant::now() >= deadline {
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, before) = w.until(
        "b after the quorum is back",
        WAIT,
        |ev| matches!(ev, SourceEvent::Apply(r) if r.key.0 == key("b")),
    )?;
    assert!(before.iter().any(is_healthy), "{before:?}");
    Ok(())
}

//! The async layer of the watch: lists, watches, resumes, probes and backs off, feeding what
//! etcd sends to the [`Tracker`] and handing its events on.
//!
//! The loop, in the shape of kube-rs's watcher:
//!
//! 1. No revision yet (start, compaction, a value too large to stream, a limit crossed): list
//!    the whole range at one revision R, in pages, and deliver a `Snapshot`.
//! 2. Watch from the revision after the last one delivered (R + 1 after a listing), with
//!    progress notifications and fragmented large revisions. Every event is delivered in
//!    etcd's order; a resumed watch's repeats are dropped by the tracker.
//! 3. Any failure (connection cut, member down or leaderless, no answer to a progress probe
//!    within the request timeout): report `Health(Unhealthy)`, wait a jittered backoff, and go
//!    back to 2 with the same revision, so nothing is missed or repeated. If etcd compacted
//!    that revision meanwhile, the watch is refused with the compaction revision and the loop
//!    goes back to 1: the new snapshot, diffed against the old one by admission, shows what
//!    was removed while this gateway was away.
//!
//! Nothing here ever drops what was delivered: an unreachable etcd only produces health
//! events, so a working tunnel is never cut because the broker is down.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, KvClient, WatchOptions, WatchResponse, WatchStream};
use tokio::time::Instant;
use wgcable_broker::{SourceEvent, SourceHealth};

use crate::publish;
use crate::source::Shared;
use crate::tracker::{cut, unreadable_value, Change, Kv, OverLimit, Tracker};
use crate::Error;

/// Keys fetched per listing request at first; halved when a page is too large to receive.
const PAGE: i64 = 500;
/// While etcd stays unavailable, a new reason is reported at most this often.
const REREPORT: Duration = Duration::from_secs(30);

/// Why one round of the loop stopped.
#[derive(Debug)]
enum Stop {
    /// etcd failed or did not answer: unhealthy, back off, resume.
    Failed(Error),
    /// The range holds more than the source's limits: unhealthy, list again later.
    OverLimit(OverLimit),
    /// The revision to resume from is gone (compacted), or a revision was too large to
    /// stream: list again now.
    Relist(&'static str),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Failed(e)
    }
}

impl From<OverLimit> for Stop {
    fn from(e: OverLimit) -> Stop {
        Stop::OverLimit(e)
    }
}

/// An open watch.
struct Active {
    stream: WatchStream,
    watch_id: Option<i64>,
    /// When something last arrived on the stream.
    heard: Instant,
    /// When the next progress probe is due.
    probe: Instant,
}

/// The state of one `watch()` stream.
pub(crate) struct Watcher {
    shared: Arc<Shared>,
    tracker: Tracker,
    pending: VecDeque<SourceEvent>,
    /// The health last reported (`None`: nothing reported yet, the start).
    health: Option<SourceHealth>,
    /// When an unhealthy state was last reported (a new reason is reported at most this often).
    reported: Option<Instant>,
    /// Consecutive failures, for the backoff.
    failures: u32,
    /// Consecutive failed retries of a publish left over from an outage, for their backoff.
    publish_failures: u32,
    active: Option<Active>,
}

impl Watcher {
    pub fn new(shared: Arc<Shared>) -> Watcher {
        let tracker = Tracker::new(shared.layout.clone(), shared.limits);
        Watcher {
            shared,
            tracker,
            pending: VecDeque::new(),
            health: None,
            reported: None,
            failures: 0,
            publish_failures: 0,
            active: None,
        }
    }

    /// The next event; never ends (the gateway drops the stream to stop it).
    pub async fn next(&mut self) -> SourceEvent {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return ev;
            }
            let result = if self.tracker.revision() == 0 {
                self.relist().await
            } else if self.active.is_none() {
                self.open().await
            } else {
                self.read().await
            };
            match result {
                Ok(()) => {}
                Err(Stop::Relist(why)) => {
                    tracing::info!(prefix = %self.shared.layout.range_start(), "{why}; listing all Endpoints again");
                    self.active = None;
                    self.tracker.lost_track();
                }
                Err(Stop::Failed(e)) => {
                    self.active = None;
                    let wait = self.shared.config.backoff.next_delay(self.failures);
                    self.failures = self.failures.saturating_add(1);
                    self.unhealthy(chain(&e), wait);
                    tokio::time::sleep(wait).await;
                }
                Err(Stop::OverLimit(e)) => {
                    self.active = None;
                    self.tracker.lost_track();
                    // Listing an over-full range again soon would only repeat the same answer.
                    let wait = self.shared.config.backoff.max.max(Duration::from_secs(10));
                    self.unhealthy(e.to_string(), wait);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Reports an unhealthy etcd: at once when it was healthy, then a changed reason at most
    /// every [`REREPORT`] (during an outage each retry may fail a little differently, say
    /// with another member's address, and that must not flood the log).
    fn unhealthy(&mut self, why: String, wait: Duration) {
        let endpoints = self.shared.config.endpoints.join(",");
        let health = SourceHealth::Unhealthy(format!("etcd ({endpoints}): {why}"));
        let was_unhealthy = matches!(self.health, Some(SourceHealth::Unhealthy(_)));
        let now = Instant::now();
        let due = self
            .reported
            .is_none_or(|t| now.duration_since(t) >= REREPORT);
        if !was_unhealthy || (self.health.as_ref() != Some(&health) && due) {
            tracing::warn!(problem = %why, endpoints = %endpoints, retry_in = ?wait,
                "the etcd broker is unavailable; tunnels stay as they are, retrying");
            self.pending.push_back(SourceEvent::Health(health.clone()));
            self.health = Some(health);
            self.reported = Some(now);
        } else {
            tracing::debug!(problem = %why, retry_in = ?wait, "etcd still unavailable");
        }
    }

    fn healthy(&mut self) {
        self.failures = 0;
        if matches!(self.health, Some(SourceHealth::Unhealthy(_))) {
            tracing::info!("the etcd broker is reachable again");
            self.pending
                .push_back(SourceEvent::Health(SourceHealth::Healthy));
        }
        self.health = Some(SourceHealth::Healthy);
    }

    async fn relist(&mut self) -> Result<(), Stop> {
        let mut kv = self.shared.kv().await?;
        // A publish left over from an outage goes first, so that the listing holds it: listed
        // before it, our key would show the earlier gateway's Endpoint, which admission takes
        // for someone else's change and asks to republish.
        self.flush_publish(&mut kv).await;
        let (kvs, revision) = list(&mut kv, &self.shared).await?;
        self.shared.stats.relists.fetch_add(1, Ordering::Relaxed);
        let snapshot = self.tracker.snapshot(kvs, revision);
        self.log_ignored();
        let snapshot = snapshot?;
        self.healthy();
        self.pending.extend(snapshot);
        Ok(())
    }

    async fn open(&mut self) -> Result<(), Stop> {
        let mut watch = self.shared.watch().await?;
        let layout = &self.shared.layout;
        let opts = WatchOptions::new()
            .with_range(layout.range_end())
            .with_start_revision(self.tracker.revision() + 1)
            .with_progress_notify()
            .with_fragment();
        let timeout = self.shared.config.request_timeout;
        let action = format!("watching {} in etcd", layout.range_start());
        let stream = tokio::time::timeout(timeout, watch.watch(layout.range_start(), Some(opts)))
            .await
            .map_err(|_| Error::timeout(&action, timeout))?
            .map_err(|e| Error::from_client(&action, e))?;
        let now = Instant::now();
        self.active = Some(Active {
            stream,
            watch_id: None,
            heard: now,
            probe: now + self.shared.config.probe_interval,
        });
        self.shared.stats.watches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn read(&mut self) -> Result<(), Stop> {
        let interval = self.shared.config.probe_interval;
        let timeout = self.shared.config.request_timeout;
        let action = || format!("watching {} in etcd", self.shared.layout.range_start());
        let active = self.active.as_mut().expect("read only with an open watch");
        let deadline = active.heard + interval + timeout;
        let wake = active.probe.min(deadline);
        let message = tokio::select! {
            m = active.stream.message() => m,
            () = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(Error::timeout(action(), interval + timeout).into());
                }
                // A progress request is answered by the member itself: no answer means the
                // path or the member is gone, which TCP alone would notice only minutes later.
                active.probe = now + interval;
                active.stream.request_progress().await.map_err(|e| Error::from_client(action(), e))?;
                // A publish that failed after the watch was (re)opened is retried here.
                let mut kv = self.shared.kv().await?;
                self.flush_publish(&mut kv).await;
                self.publish_retry_sooner();
                return Ok(());
            }
        };
        active.heard = Instant::now();
        let resp = match message {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                return Err(Error::Unavailable {
                    action: action(),
                    source: "the watch stream ended".into(),
                }
                .into())
            }
            Err(e) if is_too_large(&e) => {
                return Err(Stop::Relist("a revision too large to stream arrived"))
            }
            Err(e) => return Err(Error::from_client(action(), e).into()),
        };
        self.handle(resp).await
    }

    async fn handle(&mut self, resp: WatchResponse) -> Result<(), Stop> {
        let active = self
            .active
            .as_mut()
            .expect("handle only with an open watch");
        if resp.created() {
            active.watch_id = Some(resp.watch_id());
        }
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                return Err(Stop::Relist(
                    "the revision to resume from was compacted in etcd",
                ));
            }
            return Err(Error::Unavailable {
                action: format!("watching {} in etcd", self.shared.layout.range_start()),
                source: format!("etcd cancelled the watch: {}", resp.cancel_reason()).into(),
            }
            .into());
        }
        if resp.created() {
            self.healthy();
            let mut kv = self.shared.kv().await?;
            self.flush_publish(&mut kv).await;
            self.publish_retry_sooner();
        }
        let ours = self
            .active
            .as_ref()
            .and_then(|a| a.watch_id)
            .is_some_and(|id| id == resp.watch_id());
        let fragment = resp.0.fragment;
        let raw = resp.0;
        if raw.events.is_empty() {
            // A progress notification of our watch: every revision up to the header's has
            // been sent. (A response to our progress *request* carries watch id -1 and, on
            // etcd 3.4, may overtake events in flight: it only proves the member answers.)
            if ours && !raw.created {
                if let Some(h) = &raw.header {
                    self.tracker.complete(h.revision);
                }
            }
            return Ok(());
        }
        let mut last = 0;
        let own_key = self.shared.own_key();
        for event in raw.events {
            let Some(kv) = event.kv else { continue };
            last = kv.mod_revision;
            let change = match EventType::try_from(event.r#type) {
                Ok(EventType::Put) => Change::Put(Kv {
                    value: cut(kv.value, self.shared.limits.max_value_bytes),
                    key: kv.key,
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                }),
                Ok(EventType::Delete) => Change::Delete {
                    key: kv.key,
                    revision: kv.mod_revision,
                },
                Err(_) => {
                    tracing::warn!(
                        kind = event.r#type,
                        "etcd sent a watch event of an unknown kind; ignored"
                    );
                    continue;
                }
            };
            if let Some(own) = &own_key {
                let (key, revision, value) = match &change {
                    Change::Put(kv) => (&kv.key, kv.mod_revision, Some(kv.value.as_slice())),
                    Change::Delete { key, revision } => (key, *revision, None),
                };
                if key.as_slice() == own.as_bytes() {
                    let mut publisher = self.shared.publisher.lock().await;
                    if let Some(warning) = publisher.observe(revision, value) {
                        tracing::warn!("{warning}");
                    }
                }
            }
            let ev = self.tracker.change(change);
            self.log_ignored();
            if let Some(ev) = ev? {
                self.pending.push_back(ev);
            }
        }
        if !fragment {
            self.tracker.complete(last);
        }
        Ok(())
    }

    /// Retries a publish that failed while etcd was unreachable, now that it answers. A
    /// failure here is logged, not fatal: the watch goes on, and the next probe retries.
    async fn flush_publish(&mut self, kv: &mut KvClient) {
        // Held: a publish or withdraw is under way, which is the same write.
        let Ok(mut publisher) = self.shared.publisher.try_lock() else {
            return;
        };
        if !publisher.dirty() {
            return;
        }
        let c = &self.shared.config;
        match publish::write(&mut publisher, kv, c.request_timeout, c.endpoints.len()).await {
            Ok(()) => tracing::info!("published the local Endpoint to etcd"),
            Err(e) => {
                tracing::warn!(error = %chain(&e), "publishing the local Endpoint to etcd failed; retrying at the next probe")
            }
        }
    }

    /// A publish still to be written (its retry failed: right after etcd's return, a request
    /// may go to a member still starting) is retried after the backoff, not the probe
    /// interval: the next probe, which retries it, is brought forward.
    fn publish_retry_sooner(&mut self) {
        let dirty = self.shared.publisher.try_lock().is_ok_and(|p| p.dirty());
        if !dirty {
            self.publish_failures = 0;
            return;
        }
        let wait = self.shared.config.backoff.next_delay(self.publish_failures);
        self.publish_failures = self.publish_failures.saturating_add(1);
        if let Some(active) = self.active.as_mut() {
            active.probe = active.probe.min(Instant::now() + wait);
        }
    }

    /// Keys outside the layout are reported as `Refused` events (admission logs and counts
    /// them, rate-limited); the source keeps its own count.
    fn log_ignored(&mut self) {
        self.shared
            .stats
            .ignored_keys
            .store(self.tracker.ignored(), Ordering::Relaxed);
    }
}

/// Lists the whole range at one revision, page by page; values are cut as each page arrives.
/// A page too large to receive is asked for again at half the size; a single value too large
/// to receive is listed by key only and handed on as oversized.
async fn list(kv: &mut KvClient, shared: &Shared) -> Result<(Vec<Kv>, i64), Stop> {
    let layout = &shared.layout;
    let limits = shared.limits;
    let timeout = shared.config.request_timeout;
    let end = layout.range_end();
    let action = format!("listing {} in etcd", layout.range_start());
    let mut from = layout.range_start().as_bytes().to_vec();
    let mut revision = 0i64;
    let mut page = PAGE;
    let mut kvs = Vec::new();
    let mut total = 0usize;
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(page);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let got = tokio::time::timeout(timeout, kv.get(from.clone(), Some(opts)))
            .await
            .map_err(|_| Error::timeout(&action, timeout))?;
        let mut resp = match got {
            Ok(resp) => resp,
            Err(e) if is_too_large(&e) && page > 1 => {
                page /= 2;
                continue;
            }
            Err(e) if is_too_large(&e) => {
                // One value larger than we will receive: name it by its key alone.
                let opts = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(1)
                    .with_keys_only()
                    .with_revision(revision.max(0));
                let mut resp = tokio::time::timeout(timeout, kv.get(from.clone(), Some(opts)))
                    .await
                    .map_err(|_| Error::timeout(&action, timeout))?
                    .map_err(|e| Error::from_client(&action, e))?;
                if revision == 0 {
                    revision = resp.header().map_or(0, |h| h.revision());
                }
                let Some(item) = resp.take_kvs().into_iter().next() else {
                    break;
                };
                let (create_revision, mod_revision) = (item.create_revision(), item.mod_revision());
                let (key, _) = item.into_key_value();
                from = next_key(&key);
                total += limits.max_value_bytes + 1;
                kvs.push(Kv {
                    key,
                    value: unreadable_value(limits.max_value_bytes),
                    create_revision,
                    mod_revision,
                });
                check(&kvs, total, shared)?;
                continue;
            }
            Err(e) if is_compacted(&e) => {
                // The revision of the first page was compacted while paging: start over.
                revision = 0;
                from = layout.range_start().as_bytes().to_vec();
                kvs.clear();
                total = 0;
                continue;
            }
            Err(e) => return Err(Error::from_client(&action, e).into()),
        };
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        let more = resp.more();
        for item in resp.take_kvs() {
            let (create_revision, mod_revision) = (item.create_revision(), item.mod_revision());
            let (key, value) = item.into_key_value();
            let value = cut(value, limits.max_value_bytes);
            total += value.len();
            from = next_key(&key);
            kvs.push(Kv {
                key,
                value,
                create_revision,
                mod_revision,
            });
        }
        check(&kvs, total, shared)?;
        if !more {
            break;
        }
        page = (page * 2).min(PAGE);
    }
    Ok((kvs, revision.max(1)))
}

/// The listing's own bound: all keys of the range count, inside the layout or not.
fn check(kvs: &[Kv], total: usize, shared: &Shared) -> Result<(), OverLimit> {
    let l = shared.limits;
    if kvs.len() > l.max_objects || total > l.max_total_bytes {
        return Err(OverLimit {
            what: format!(
                "{} holds more than {} keys or {} bytes; nothing more is taken from etcd until keys are removed there (what is known stays in place)",
                shared.layout.range_start(),
                l.max_objects,
                l.max_total_bytes
            ),
        });
    }
    Ok(())
}

/// The smallest key after `key`.
fn next_key(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// tonic refused to decode a message above the limit (checked before reading the body, so
/// the message was never held).
fn is_too_large(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() == tonic::Code::OutOfRange && s.message().contains("message length too large"))
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() == tonic::Code::OutOfRange && s.message().contains("compacted"))
}

/// An error and its causes on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::is_transient;

    fn watcher() -> Watcher {
        let source = crate::EtcdSource::new(crate::EtcdConfig::new(["http://192.0.2.1:2379"]))
            .expect("valid config");
        Watcher::new(source.shared())
    }

    fn health(w: &mut Watcher) -> Vec<SourceEvent> {
        w.pending.drain(..).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn health_is_reported_on_change_and_a_new_reason_at_most_every_30_s() {
        let mut w = watcher();
        w.healthy();
        assert!(health(&mut w).is_empty(), "healthy at start is no news");
        w.unhealthy("down".into(), Duration::ZERO);
        let evs = health(&mut w);
        assert!(
            matches!(evs.as_slice(), [SourceEvent::Health(SourceHealth::Unhealthy(m))] if m.contains("down")),
            "{evs:?}"
        );
        w.unhealthy("down".into(), Duration::ZERO);
        w.unhealthy("refused by 10.0.0.2".into(), Duration::ZERO);
        assert!(health(&mut w).is_empty(), "the same outage, reported once");
        tokio::time::advance(REREPORT).await;
        w.unhealthy("refused by 10.0.0.3".into(), Duration::ZERO);
        assert_eq!(health(&mut w).len(), 1, "a new reason after 30 s");
        w.healthy();
        assert_eq!(health(&mut w), [SourceEvent::Health(SourceHealth::Healthy)]);
        w.unhealthy("down".into(), Duration::ZERO);
        assert_eq!(health(&mut w).len(), 1, "a new outage, at once");
    }

    #[test]
    fn next_key_is_the_successor() {
        assert_eq!(next_key(b"/a"), b"/a\0".to_vec());
        assert!(next_key(b"/a").as_slice() > b"/a".as_slice());
        assert!(next_key(b"/a").as_slice() < b"/a\x01".as_slice());
    }

    #[test]
    fn errors_are_sorted_by_their_status() {
        let too_large = etcd_client::Error::GRpcStatus(tonic::Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes",
        ));
        let compacted = etcd_client::Error::GRpcStatus(tonic::Status::out_of_range(
            "etcdserver: mvcc: required revision has been compacted",
        ));
        let no_leader =
            etcd_client::Error::GRpcStatus(tonic::Status::unavailable("etcdserver: no leader"));
        let denied = etcd_client::Error::GRpcStatus(tonic::Status::permission_denied(
            "etcdserver: permission denied",
        ));
        assert!(is_too_large(&too_large) && !is_compacted(&too_large));
        assert!(is_compacted(&compacted) && !is_too_large(&compacted));
        assert!(is_transient(&no_leader));
        assert!(!is_transient(&denied));
        assert!(Error::from_client("x", no_leader).is_unavailable());
        assert!(!Error::from_client("x", denied).is_unavailable());
    }
}

//! Lease leader election with client-go's `LeaseLock` semantics, so that a Go gateway and a
//! wgcable gateway of one cluster never both lead.
//!
//! Written here rather than taken from a crate: kube-lease-manager (the well-kept Rust one)
//! decides expiry by comparing the holder's `renewTime` with the local clock, which two nodes
//! with skewed clocks disagree on, and takes an orphaned lease with server-side apply rather
//! than a resourceVersion-checked update. client-go instead times expiry on the *local*
//! monotonic clock from the moment it last saw the record change (so clock skew between nodes
//! does not matter), and every write is an update conditional on the resourceVersion it read
//! (so two contenders cannot both win). [`LeaseLockState`] is that decision, pure and
//! table-tested; [`LeaseElector`] drives it like client-go's `RunOrDie`: acquire every retry
//! period (with client-go's 1.2 jitter), renew every retry period, and give up leadership when
//! no renewal succeeded within the renew deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::time::Instant;
use wgcable_broker::{LeaderElector, Role};

use crate::config::{LeaseTimings, LEASE_NAME};
use crate::{Error, KubernetesConfig};

/// The pod label Submariner's tools find the active gateway by.
pub const STATUS_LABEL: &str = "gateway.submariner.io/status";
/// The pod label naming the gateway's node.
pub const NODE_LABEL: &str = "gateway.submariner.io/node";

/// client-go's `LeaderElectionRecord`, as a Lease's spec carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub holder_identity: String,
    pub lease_duration_seconds: i32,
    pub acquire_time: Option<SystemTime>,
    pub renew_time: Option<SystemTime>,
    pub leader_transitions: i32,
}

impl Record {
    /// The record of a Lease (client-go's `LeaseSpecToLeaderElectionRecord`).
    pub fn from_lease(lease: &Lease) -> Record {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            holder_identity: spec.holder_identity.unwrap_or_default(),
            lease_duration_seconds: spec.lease_duration_seconds.unwrap_or(0),
            acquire_time: spec.acquire_time.map(|t| from_micro(&t)),
            renew_time: spec.renew_time.map(|t| from_micro(&t)),
            leader_transitions: spec.lease_transitions.unwrap_or(0),
        }
    }

    /// The Lease spec for this record (client-go's `LeaderElectionRecordToLeaseSpec`).
    pub fn to_spec(&self) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.holder_identity.clone()),
            lease_duration_seconds: Some(self.lease_duration_seconds),
            acquire_time: self.acquire_time.and_then(to_micro),
            renew_time: self.renew_time.and_then(to_micro),
            lease_transitions: Some(self.leader_transitions),
            ..LeaseSpec::default()
        }
    }
}

fn from_micro(t: &MicroTime) -> SystemTime {
    let micros = t.0.as_microsecond();
    if micros >= 0 {
        UNIX_EPOCH + Duration::from_micros(micros as u64)
    } else {
        UNIX_EPOCH
    }
}

fn to_micro(t: SystemTime) -> Option<MicroTime> {
    let micros = t.duration_since(UNIX_EPOCH).ok()?.as_micros();
    let micros = i64::try_from(micros).ok()?;
    k8s_openapi::jiff::Timestamp::from_microsecond(micros)
        .ok()
        .map(MicroTime)
}

/// A wall-clock time cut to the microseconds a `MicroTime` keeps, so a record read back
/// equals the record written.
fn truncate_micros(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_micros(d.as_micros() as u64),
        Err(_) => UNIX_EPOCH,
    }
}

/// What to do after reading the lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No Lease exists: create it holding this record.
    Create(Record),
    /// Acquire or renew: update the Lease (conditionally on the version read) to this record.
    Update(Record),
    /// Someone else holds an unexpired lease.
    HeldBy(String),
}

/// client-go's `tryAcquireOrRenew` decision, without I/O: `now` is the local monotonic clock
/// (expiry is judged on it alone), `wall_now` what goes into the record.
#[derive(Clone, Debug)]
pub struct LeaseLockState {
    identity: String,
    lease_duration: Duration,
    observed: Option<Record>,
    observed_time: Option<Instant>,
}

impl LeaseLockState {
    pub fn new(identity: impl Into<String>, lease_duration: Duration) -> Self {
        LeaseLockState {
            identity: identity.into(),
            lease_duration,
            observed: None,
            observed_time: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// client-go's `IsLeader`: the record last observed names this identity.
    pub fn is_leader(&self) -> bool {
        self.observed
            .as_ref()
            .is_some_and(|r| r.holder_identity == self.identity)
    }

    /// The holder last observed, if any.
    pub fn holder(&self) -> Option<&str> {
        self.observed
            .as_ref()
            .map(|r| r.holder_identity.as_str())
            .filter(|h| !h.is_empty())
    }

    /// Decides on the record read (`None`: the Lease does not exist).
    pub fn decide(&mut self, current: Option<&Record>, wall_now: SystemTime, now: Instant) -> Step {
        let wall_now = truncate_micros(wall_now);
        let mut desired = Record {
            holder_identity: self.identity.clone(),
            lease_duration_seconds: i32::try_from(self.lease_duration.as_secs())
                .unwrap_or(i32::MAX),
            acquire_time: Some(wall_now),
            renew_time: Some(wall_now),
            leader_transitions: 0,
        };
        let Some(old) = current else {
            return Step::Create(desired);
        };
        // A changed record restarts the expiry clock; an unchanged one lets it run. Only the
        // local clock is involved, so a holder whose clock is skewed cannot fool anyone.
        if self.observed.as_ref() != Some(old) {
            self.observed = Some(old.clone());
            self.observed_time = Some(now);
        }
        let valid = self.observed_time.is_some_and(|seen| {
            let duration =
                Duration::from_secs(u64::try_from(old.lease_duration_seconds).unwrap_or(0));
            seen + duration > now
        });
        if !old.holder_identity.is_empty() && valid && !self.is_leader() {
            return Step::HeldBy(old.holder_identity.clone());
        }
        if self.is_leader() {
            desired.acquire_time = old.acquire_time;
            desired.leader_transitions = old.leader_transitions;
        } else {
            desired.leader_transitions = old.leader_transitions.saturating_add(1);
        }
        Step::Update(desired)
    }

    /// The write of `record` succeeded at `now`.
    pub fn written(&mut self, record: Record, now: Instant) {
        self.observed = Some(record);
        self.observed_time = Some(now);
    }
}

/// A source of wall-clock time (tests skew it).
pub type WallClock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

struct ElectorInner {
    leases: Api<Lease>,
    pod: Option<(Api<Pod>, String)>,
    node_name: String,
    timings: LeaseTimings,
    state: tokio::sync::Mutex<LeaseLockState>,
    wall: WallClock,
    released: AtomicBool,
}

/// The Lease elector of a Submariner gateway (Lease `submariner-gateway-lock`).
#[derive(Clone)]
pub struct LeaseElector {
    inner: Arc<ElectorInner>,
}

impl std::fmt::Debug for LeaseElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseElector")
            .field("node_name", &self.inner.node_name)
            .field("timings", &self.inner.timings)
            .finish_non_exhaustive()
    }
}

impl LeaseElector {
    /// An elector for the gateway `config` describes, on `client` (the local cluster).
    pub fn new(client: kube::Client, config: &KubernetesConfig) -> Self {
        Self::with_clock(client, config, Arc::new(SystemTime::now))
    }

    /// As [`LeaseElector::new`], with the wall clock written into the Lease given.
    pub fn with_clock(client: kube::Client, config: &KubernetesConfig, wall: WallClock) -> Self {
        let pod = config.pod_name.as_ref().map(|name| {
            (
                Api::namespaced(client.clone(), &config.namespace),
                name.clone(),
            )
        });
        LeaseElector {
            inner: Arc::new(ElectorInner {
                leases: Api::namespaced(client, &config.namespace),
                pod,
                node_name: config.node_name.clone(),
                timings: config.lease,
                state: tokio::sync::Mutex::new(LeaseLockState::new(
                    config.identity(),
                    config.lease.lease_duration,
                )),
                wall,
                released: AtomicBool::new(false),
            }),
        }
    }
}

impl ElectorInner {
    /// One `tryAcquireOrRenew`: true when this gateway holds the lease afterwards.
    async fn try_acquire_or_renew(&self) -> Result<bool, Error> {
        let mut state = self.state.lock().await;
        let current = self
            .leases
            .get_opt(LEASE_NAME)
            .await
            .map_err(Error::kube(format!("reading Lease {LEASE_NAME}")))?;
        let record = current.as_ref().map(Record::from_lease);
        let step = state.decide(record.as_ref(), (self.wall)(), Instant::now());
        let result = match &step {
            Step::HeldBy(_) => return Ok(false),
            Step::Create(record) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(LEASE_NAME.to_owned()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(record.to_spec()),
                };
                self.leases.create(&PostParams::default(), &lease).await
            }
            Step::Update(record) => {
                let mut lease = current.expect("an update follows a read of an existing Lease");
                lease.spec = Some(record.to_spec());
                self.leases
                    .replace(LEASE_NAME, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => {
                let record = match step {
                    Step::Create(r) | Step::Update(r) => r,
                    Step::HeldBy(_) => unreachable!("returned above"),
                };
                state.written(record, Instant::now());
                Ok(true)
            }
            // Someone else wrote first: not an error, just not us this round.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(source) => Err(Error::Kube {
                action: format!("writing Lease {LEASE_NAME}"),
                source,
            }),
        }
    }

    async fn holder(&self) -> Option<String> {
        self.state.lock().await.holder().map(str::to_owned)
    }

    /// Labels this gateway's pod active or passive (Submariner's `SetHALabels`), retrying
    /// briefly; failures are logged (tools then show the old label until the next change).
    async fn label_pod(&self, role: &Role) {
        let Some((pods, name)) = &self.pod else {
            return;
        };
        let patch = serde_json::json!({"metadata": {"labels": {
            NODE_LABEL: self.node_name,
            STATUS_LABEL: role.ha_status(),
        }}});
        for attempt in 0..5 {
            match pods
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return,
                // Missing pod or permission: retrying will not help.
                Err(kube::Error::Api(s)) if matches!(s.code, 403 | 404 | 422) => {
                    tracing::warn!(pod = %name, code = s.code, "labelling the gateway pod failed; check POD_NAME and the pods patch permission");
                    return;
                }
                Err(e) if attempt == 4 => {
                    tracing::warn!(pod = %name, error = %crate::error_chain(&e), "labelling the gateway pod failed");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    fn jittered_retry(&self, attempt: &mut u64) -> Duration {
        // client-go's acquire loop waits retry * (1 + 1.2 * rand). A deterministic generator
        // (per identity and attempt) spreads contenders just as well and keeps tests exact.
        *attempt += 1;
        let mut x = self
            .node_name
            .bytes()
            .fold(0x9E37_79B9_7F4A_7C15_u64 ^ *attempt, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
            });
        x ^= x >> 33;
        let fraction = (x % 1000) as f64 / 1000.0;
        self.timings.retry_period.mul_f64(1.0 + 1.2 * fraction)
    }

    async fn renew_round(&self) -> bool {
        // client-go: PollImmediateUntil(retryPeriod, tryAcquireOrRenew) bounded by renewDeadline.
        let deadline = Instant::now() + self.timings.renew_deadline;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "renewing the gateway lease failed")
                }
            }
            let next = Instant::now() + self.timings.retry_period;
            if next >= deadline {
                tokio::time::sleep_until(deadline).await;
                return false;
            }
            tokio::time::sleep_until(next).await;
        }
    }
}

#[async_trait]
impl LeaderElector for LeaseElector {
    fn roles(&self) -> BoxStream<'static, Role> {
        let inner = self.inner.clone();
        async_stream::stream! {
            let passive = Role::Follower { leader: None };
            inner.label_pod(&passive).await;
            yield passive;
            let mut attempt = 0u64;
            let mut last_leader: Option<String> = None;
            loop {
                // Acquire.
                loop {
                    if inner.released.load(Ordering::SeqCst) {
                        futures::future::pending::<()>().await;
                    }
                    match inner.try_acquire_or_renew().await {
                        Ok(true) => break,
                        Ok(false) => {
                            let holder = inner.holder().await;
                            if holder != last_leader {
                                last_leader = holder.clone();
                                yield Role::Follower { leader: holder };
                            }
                        }
                        Err(e) => tracing::warn!(error = %crate::error_chain(&e), "acquiring the gateway lease failed"),
                    }
                    tokio::time::sleep(inner.jittered_retry(&mut attempt)).await;
                }
                tracing::info!("leadership acquired");
                inner.label_pod(&Role::Leader).await;
                yield Role::Leader;
                // Renew until a whole renew deadline passes without success.
                loop {
                    if inner.released.load(Ordering::SeqCst) {
                        futures::future::pending::<()>().await;
                    }
                    if !inner.renew_round().await {
                        break;
                    }
                    tokio::time::sleep(inner.timings.retry_period).await;
                }
                tracing::warn!("leadership lost");
                let identity = inner.state.lock().await.identity().to_owned();
                last_leader = inner.holder().await.filter(|h| *h != identity);
                let role = Role::Follower { leader: last_leader.clone() };
                inner.label_pod(&role).await;
                yield role;
            }
        }
        .boxed()
    }

    /// client-go's `release`: a held lease is rewritten with no holder and a 1 s duration, so
    /// a standby (Go or wgcable) takes over at its next retry instead of after expiry.
    async fn release(&self) {
        let inner = &self.inner;
        inner.released.store(true, Ordering::SeqCst);
        let mut state = inner.state.lock().await;
        if !state.is_leader() {
            return;
        }
        let current = match inner.leases.get_opt(LEASE_NAME).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "releasing the gateway lease failed");
                return;
            }
        };
        let old = Record::from_lease(&current);
        if old.holder_identity != state.identity() {
            return;
        }
        let now = truncate_micros((inner.wall)());
        let record = Record {
            holder_identity: String::new(),
            lease_duration_seconds: 1,
            acquire_time: Some(now),
            renew_time: Some(now),
            leader_transitions: old.leader_transitions,
        };
        let mut lease = current;
        lease.spec = Some(record.to_spec());
        match inner
            .leases
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                state.written(record, Instant::now());
                tracing::info!("released the gateway lease");
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "releasing the gateway lease failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "node-a-submariner-gateway";
    const OTHER: &str = "node-b-submariner-gateway";

    fn record(holder: &str, duration: i32, transitions: i32, at: u64) -> Record {
        let t = UNIX_EPOCH + Duration::from_secs(at);
        Record {
            holder_identity: holder.to_owned(),
            lease_duration_seconds: duration,
            acquire_time: Some(t),
            renew_time: Some(t),
            leader_transitions: transitions,
        }
    }

    /// Each row: the record read (None = no Lease), seconds since the state machine started,
    /// and what it must decide.
    #[test]
    fn lease_lock_decisions() {
        let wall = UNIX_EPOCH + Duration::from_secs(5_000);
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);

        // No Lease: create it, zero transitions.
        let mut s = LeaseLockState::new(ME, Duration::from_secs(15));
        match s.decide(None, wall, at(0)) {
            Step::Create(r) => {
                assert_eq!(r.holder_identity, ME);
                assert_eq!(r.lease_duration_seconds, 15);
                assert_eq!(r.leader_transitions, 0);
                assert_eq!(r.acquire_time, Some(wall));
            }
            other => panic!("{other:?}"),
        }

        // Held by another, first seen now: respected for its whole duration from *now*, however
        // old its renewTime looks (it was written by another clock).
        let held = record(OTHER, 15, 3, 10);
        let mut s = LeaseLockState::new(ME, Duration::from_secs(15));
        assert_eq!(
            s.decide(Some(&held), wall, at(0)),
            Step::HeldBy(OTHER.into())
        );
        assert_eq!(
            s.decide(Some(&held), wall, at(14)),
            Step::HeldBy(OTHER.into())
        );
        // Unchanged for 15 s on our clock: expired, taken over with one more transition.
        match s.decide(Some(&held), wall, at(15)) {
            Step::Update(r) => {
                assert_eq!(r.holder_identity, ME);
                assert_eq!(r.leader_transitions, 4);
                assert_eq!(r.acquire_time, Some(wall));
            }
            other => panic!("{other:?}"),
        }

        // A renewal (the record changes) restarts the expiry clock.
        let mut s = LeaseLockState::new(ME, Duration::from_secs(15));
        assert!(matches!(
            s.decide(Some(&held), wall, at(0)),
            Step::HeldBy(_)
        ));
        let renewed = record(OTHER, 15, 3, 12);
        assert!(matches!(
            s.decide(Some(&renewed), wall, at(14)),
            Step::HeldBy(_)
        ));
        assert!(matches!(
            s.decide(Some(&renewed), wall, at(28)),
            Step::HeldBy(_)
        ));
        assert!(matches!(
            s.decide(Some(&renewed), wall, at(29)),
            Step::Update(_)
        ));

        // The record's own leaseDurationSeconds counts, not ours.
        let long = record(OTHER, 60, 0, 10);
        let mut s = LeaseLockState::new(ME, Duration::from_secs(15));
        assert!(matches!(
            s.decide(Some(&long), wall, at(0)),
            Step::HeldBy(_)
        ));
        assert!(matches!(
            s.decide(Some(&long), wall, at(59)),
            Step::HeldBy(_)
        ));
        assert!(matches!(
            s.decide(Some(&long), wall, at(60)),
            Step::Update(_)
        ));

        // A released lease (no holder) is taken at once.
        let released = record("", 1, 7, 10);
        let mut s = LeaseLockState::new(ME, Duration::from_secs(15));
        match s.decide(Some(&released), wall, at(0)) {
            Step::Update(r) => assert_eq!(r.leader_transitions, 8),
            other => panic!("{other:?}"),
        }

        // Renewing our own lease keeps acquireTime and transitions.
        let mine = record(ME, 15, 2, 10);
        let mut s = LeaseLockState::new(ME, Duration::from_secs(15));
        match s.decide(Some(&mine), wall, at(0)) {
            Step::Update(r) => {
                assert_eq!(r.leader_transitions, 2);
                assert_eq!(r.acquire_time, mine.acquire_time);
                assert_eq!(r.renew_time, Some(wall));
            }
            other => panic!("{other:?}"),
        }
        assert!(s.is_leader());

        // Clock skew: a holder whose clock is an hour behind (renewTime far in the past) or
        // ahead is judged only by whether its record keeps changing.
        let behind = record(OTHER, 15, 0, 1);
        let ahead = record(OTHER, 15, 0, 1_000_000);
        for skewed in [behind, ahead] {
            let mut s = LeaseLockState::new(ME, Duration::from_secs(15));
            assert!(matches!(
                s.decide(Some(&skewed), wall, at(0)),
                Step::HeldBy(_)
            ));
            assert!(matches!(
                s.decide(Some(&skewed), wall, at(14)),
                Step::HeldBy(_)
            ));
            assert!(matches!(
                s.decide(Some(&skewed), wall, at(15)),
                Step::Update(_)
            ));
        }
    }

    #[test]
    fn records_round_trip_through_a_lease_at_microsecond_precision() {
        let t = UNIX_EPOCH + Duration::from_nanos(1_767_225_600_123_456_789);
        let mut s = LeaseLockState::new(ME, Duration::from_secs(15));
        let Step::Create(r) = s.decide(None, t, Instant::now()) else {
            panic!("create expected");
        };
        let lease = Lease {
            metadata: ObjectMeta::default(),
            spec: Some(r.to_spec()),
        };
        let json = serde_json::to_value(&lease).expect("encodes");
        assert_eq!(json["spec"]["renewTime"], "2026-01-01T00:00:00.123456Z");
        assert_eq!(json["spec"]["holderIdentity"], ME);
        assert_eq!(json["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(json["spec"]["leaseTransitions"], 0);
        let back: Lease = serde_json::from_value(json).expect("decodes");
        assert_eq!(Record::from_lease(&back), r);
    }
}

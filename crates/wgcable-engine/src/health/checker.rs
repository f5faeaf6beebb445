//! [`HealthChecker`]: the async layer that runs one pinger per target.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::task::{AbortHandle, JoinSet};
use wgcable_api::LatencyRtt;

use super::*;

/// What the health check says of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthStatus {
    /// Round-trip statistics, `None` before the first reply.
    pub latency: Option<LatencyRtt>,
    /// The latest round-trip time (for `submariner_connection_latency_seconds`).
    pub last_rtt: Option<Duration>,
    /// Probes lost since the last reply.
    pub consecutive_lost: u32,
    /// More than the allowed number of probes were lost in a row: the connection is `error`.
    pub failed: bool,
}

/// Pings every target's health-check IP; see the module documentation.
pub struct HealthChecker {
    interval: Duration,
    timeout: Duration,
    max_lost: u32,
    slots: Mutex<HashMap<HealthKey, Slot>>,
    /// Wakes [`HealthChecker::run`] when the targets change.
    changed: tokio::sync::Notify,
    next_generation: AtomicU64,
    /// ICMP identifiers of raw sockets: every raw socket sees every echo reply, so each pinger
    /// needs its own. Seeded from the process id so two gateways in one namespace differ too.
    next_ident: AtomicU16,
    /// A socket that cannot be opened is warned about once; later failures are debug logs.
    warned: AtomicBool,
}

/// One target's shared state. `generation` tells a replaced target's late pinger (it may run
/// until its next await point after being aborted) that its results no longer count.
#[derive(Debug)]
pub(crate) struct Slot {
    generation: u64,
    target: HealthTarget,
    stats: PingStats,
    /// The socket is open: until then health is unknown.
    open: bool,
    socket_error: Option<String>,
}

impl std::fmt::Debug for HealthChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecker")
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("max_lost", &self.max_lost)
            .field("targets", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl HealthChecker {
    /// A checker probing every `interval` (Submariner: 1 s); a probe unanswered after
    /// `timeout` is lost (checked at each interval). Intervals under 1 ms are taken as 1 ms.
    pub fn new(interval: Duration, timeout: Duration) -> Self {
        HealthChecker {
            interval: interval.max(Duration::from_millis(1)),
            timeout,
            max_lost: MAX_CONSECUTIVE_LOST,
            slots: Mutex::new(HashMap::new()),
            changed: tokio::sync::Notify::new(),
            next_generation: AtomicU64::new(0),
            next_ident: AtomicU16::new(std::process::id() as u16),
            warned: AtomicBool::new(false),
        }
    }

    /// Changes how many probes may be lost in a row before a connection fails (default
    /// [`MAX_CONSECUTIVE_LOST`], Submariner's `healthCheckMaxPacketLossCount`).
    pub fn with_max_lost(mut self, max_lost: u32) -> Self {
        self.max_lost = max_lost;
        self
    }

    /// Sets the targets: new ones get a pinger, removed ones lose theirs, changed ones (another
    /// address) start afresh, unchanged ones keep their statistics. One target per cluster: a
    /// later duplicate wins. Takes effect in [`HealthChecker::run`].
    pub fn set_targets(&self, targets: Vec<HealthTarget>) {
        let mut slots = self.lock();
        let mut next = HashMap::with_capacity(targets.len());
        for target in targets {
            let slot = match slots.remove(&target.key) {
                Some(slot) if slot.target == target => slot,
                _ => Slot {
                    generation: self.next_generation.fetch_add(1, Ordering::Relaxed),
                    target: target.clone(),
                    stats: PingStats::new(),
                    open: false,
                    socket_error: None,
                },
            };
            next.insert(target.key, slot);
        }
        *slots = next;
        drop(slots);
        // Stores a permit when `run` is busy, so the change is never missed.
        self.changed.notify_one();
    }

    /// The health of one path of a connection; `None` when it is unknown: no such target, or
    /// its socket is not open (yet, or for lack of privilege).
    pub fn status(&self, key: &HealthKey) -> Option<HealthStatus> {
        let slots = self.lock();
        let slot = slots.get(key).filter(|s| s.open)?;
        Some(HealthStatus {
            latency: slot.stats.latency_rtt(),
            last_rtt: slot.stats.last(),
            consecutive_lost: slot.stats.consecutive_lost(),
            failed: slot.stats.is_failed(self.max_lost),
        })
    }

    /// Why the socket of a pinger could not be opened, while it cannot.
    pub fn socket_error(&self, key: &HealthKey) -> Option<String> {
        self.lock().get(key)?.socket_error.clone()
    }

    /// Runs the pingers until `shutdown` resolves: one task per target, started and stopped
    /// as [`HealthChecker::set_targets`] changes them. The engine spawns this; every pinger
    /// task lives inside it and ends with it, sockets closed.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        let mut tasks = JoinSet::new();
        let mut running: HashMap<HealthKey, (u64, AbortHandle)> = HashMap::new();
        tokio::pin!(shutdown);
        loop {
            self.start_and_stop(&mut tasks, &mut running);
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.changed.notified() => {}
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    // Pingers never end on their own: this one panicked (or was aborted).
                    // Forgetting it lets the next round start it again.
                    let id = match &done {
                        Ok((id, ())) => *id,
                        Err(e) => e.id(),
                    };
                    if let Err(e) = &done {
                        if e.is_panic() {
                            tracing::error!("a health check pinger panicked; restarting it");
                        }
                    }
                    running.retain(|_, (_, handle)| handle.id() != id);
                }
            }
        }
        tasks.shutdown().await;
    }

    /// Starts a pinger for every target without one and stops those of removed targets.
    fn start_and_stop(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        running: &mut HashMap<HealthKey, (u64, AbortHandle)>,
    ) {
        let wanted: Vec<(u64, HealthTarget)> = self
            .lock()
            .values()
            .map(|s| (s.generation, s.target.clone()))
            .collect();
        running.retain(|cluster, (generation, handle)| {
            let keep = wanted
                .iter()
                .any(|(g, t)| g == generation && &t.key == cluster);
            if !keep {
                handle.abort();
            }
            keep
        });
        for (generation, target) in wanted {
            if !running.contains_key(&target.key) {
                let cluster = target.key.clone();
                let handle = tasks.spawn(self.clone().ping(generation, target));
                running.insert(cluster, (generation, handle));
            }
        }
    }

    /// One pinger: opens its socket (retrying every interval until it can), then sends a probe
    /// every interval and matches the replies.
    async fn ping(self: Arc<Self>, generation: u64, target: HealthTarget) {
        let ident = self.next_ident.fetch_add(1, Ordering::Relaxed);
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let socket = loop {
            tick.tick().await;
            match EchoSocket::open(target.dst, target.src, true) {
                Ok(socket) => break socket,
                Err(e) => self.socket_failed(generation, &target, &e),
            }
        };
        self.update(&target.key, generation, |slot| {
            slot.open = true;
            slot.socket_error = None;
        });
        tracing::debug!(health_target = %target.key, dst = %target.dst, raw = socket.raw, "health check started");

        let mut seq: u16 = 0;
        let mut buf = [0u8; RECV_BYTES];
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = tokio::time::Instant::now().into_std();
                    seq = seq.wrapping_add(1);
                    let sent = socket.send(ident, seq).await;
                    self.update(&target.key, generation, |slot| {
                        slot.stats.expire(now, self.timeout);
                        match &sent {
                            Ok(()) => slot.stats.record(seq, now),
                            Err(_) => slot.stats.send_failed(),
                        }
                    });
                    if let Err(e) = sent {
                        tracing::debug!(health_target = %target.key, dst = %target.dst, error = %e, "sending a health check probe failed");
                    }
                }
                got = socket.recv(&mut buf, ident) => match got {
                    Ok(Some(seq)) => {
                        let now = tokio::time::Instant::now().into_std();
                        self.update(&target.key, generation, |slot| {
                            slot.stats.reply(seq, now);
                        });
                    }
                    Ok(None) => {}
                    // Ping sockets report ICMP errors (e.g. host unreachable) here; the probe
                    // it was about expires as lost anyway.
                    Err(e) => tracing::debug!(health_target = %target.key, error = %e, "health check receive error"),
                },
            }
        }
    }

    fn socket_failed(&self, generation: u64, target: &HealthTarget, e: &io::Error) {
        let message = e.to_string();
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                health_target = %target.key, dst = %target.dst, error = %message,
                "cannot open the health check socket; connection health stays unknown until it \
                 can (run as root or with CAP_NET_RAW, or allow ping sockets with \
                 `sysctl net.ipv4.ping_group_range`)"
            );
        } else {
            tracing::debug!(health_target = %target.key, dst = %target.dst, error = %message, "cannot open the health check socket");
        }
        self.update(&target.key, generation, |slot| {
            slot.socket_error = Some(message);
        });
    }

    /// Applies `f` to the slot of `key` if it is still the same target.
    fn update(&self, key: &HealthKey, generation: u64, f: impl FnOnce(&mut Slot)) {
        if let Some(slot) = self
            .lock()
            .get_mut(key)
            .filter(|s| s.generation == generation)
        {
            f(slot);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<HealthKey, Slot>> {
        // The slots hold plain statistics, consistent after any panic: keep using them.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

//! Health checking of connections (Submariner's cable engine health checker): one ICMP echo
//! pinger per remote gateway, to its `healthCheckIP`, sent from the local health-check IP so
//! that it goes through the tunnel. A probe goes out every interval (Submariner: 1 s); more
//! than [`MAX_CONSECUTIVE_LOST`] lost in a row marks the connection failed, and the round-trip
//! times feed `latencyRTT` and `submariner_connection_latency_seconds`.
//!
//! - [`PingStats`] is the pure core: probes sent, replies and timeouts in, with `now` passed in;
//!   it knows no sockets and no clock, so its tests need neither root nor sleeps.
//! - [`HealthChecker`] is the thin async layer. The engine owns it: it calls
//!   [`HealthChecker::set_targets`] when remotes change, reads [`HealthChecker::status`] when it
//!   judges connections, and spawns [`HealthChecker::run`], which in turn runs one task per
//!   target for as long as it runs (and only then).
//!
//! Sockets: a raw ICMP socket (needs `CAP_NET_RAW`), else an unprivileged ping socket (allowed
//! by `net.ipv4.ping_group_range`). When neither can be opened, or the source address cannot
//! be bound yet, the health of that connection is *unknown* (`None`), never failed: a gateway
//! without the privilege must not turn every connection to `error`. It is logged once.
//!
//! This module knows nothing of WireGuard, netlink or metrics: the engine maps its status onto
//! connections and the latency gauge.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::task::{AbortHandle, JoinSet};
use wgcable_api::LatencyRtt;

/// More than this many probes lost in a row marks a connection failed (Submariner's
/// `maxPacketLossCount`).
pub const MAX_CONSECUTIVE_LOST: u32 = 5;

/// How many round-trip times the statistics are computed over.
pub const STATS_WINDOW: usize = 64;

/// Probes awaiting a reply are bounded too, in case nobody expires them.
const MAX_IN_FLIGHT: usize = 64;

/// Carried in every echo request and checked in replies, so that another program's echoes
/// (raw sockets see them all) are never taken for ours.
const PAYLOAD: &[u8] = b"wgcable-health";

/// Round-trip statistics and losses of one pinger. Pure: every event carries its `now`.
#[derive(Debug, Clone, Default)]
pub struct PingStats {
    /// Probes sent and not yet answered or expired, oldest first.
    in_flight: VecDeque<(u16, Instant)>,
    /// The last [`STATS_WINDOW`] round-trip times, oldest first.
    rtts: VecDeque<Duration>,
    consecutive_lost: u32,
}

impl PingStats {
    /// No probe sent yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// An echo request with sequence number `seq` was sent at `now`.
    pub fn record(&mut self, seq: u16, now: Instant) {
        // A sequence number that wrapped around replaces its stale namesake.
        self.in_flight.retain(|&(s, _)| s != seq);
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            self.in_flight.pop_front();
            self.lose();
        }
        self.in_flight.push_back((seq, now));
    }

    /// A probe could not even be sent (no route, address gone...): it counts as lost.
    pub fn send_failed(&mut self) {
        self.lose();
    }

    /// An echo reply for `seq` arrived at `now`. Returns its round-trip time, or `None` for a
    /// reply to nothing in flight (a duplicate, or one that came after its timeout).
    pub fn reply(&mut self, seq: u16, now: Instant) -> Option<Duration> {
        let i = self.in_flight.iter().position(|&(s, _)| s == seq)?;
        let (_, sent) = self.in_flight.remove(i)?;
        let rtt = now.saturating_duration_since(sent);
        if self.rtts.len() >= STATS_WINDOW {
            self.rtts.pop_front();
        }
        self.rtts.push_back(rtt);
        self.consecutive_lost = 0;
        Some(rtt)
    }

    /// Counts as lost every probe sent `timeout` or longer before `now`; returns how many.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> u32 {
        let mut lost = 0;
        while let Some(&(_, sent)) = self.in_flight.front() {
            if now.saturating_duration_since(sent) < timeout {
                break;
            }
            self.in_flight.pop_front();
            self.lose();
            lost += 1;
        }
        lost
    }

    fn lose(&mut self) {
        self.consecutive_lost = self.consecutive_lost.saturating_add(1);
    }

    /// Probes lost since the last reply.
    pub fn consecutive_lost(&self) -> u32 {
        self.consecutive_lost
    }

    /// True when more than `max_lost` probes were lost in a row.
    pub fn is_failed(&self, max_lost: u32) -> bool {
        self.consecutive_lost > max_lost
    }

    /// The latest round-trip time.
    pub fn last(&self) -> Option<Duration> {
        self.rtts.back().copied()
    }

    /// The smallest round-trip time in the window.
    pub fn min(&self) -> Option<Duration> {
        self.rtts.iter().min().copied()
    }

    /// The largest round-trip time in the window.
    pub fn max(&self) -> Option<Duration> {
        self.rtts.iter().max().copied()
    }

    /// The mean round-trip time over the window.
    pub fn mean(&self) -> Option<Duration> {
        let n = self.rtts.len();
        if n == 0 {
            return None;
        }
        let sum: u128 = self.rtts.iter().map(Duration::as_nanos).sum();
        Some(nanos(sum as f64 / n as f64))
    }

    /// The (population) standard deviation of the round-trip times in the window.
    pub fn std_dev(&self) -> Option<Duration> {
        let n = self.rtts.len();
        if n == 0 {
            return None;
        }
        let mean = self.rtts.iter().map(|d| d.as_nanos() as f64).sum::<f64>() / n as f64;
        let var = self
            .rtts
            .iter()
            .map(|d| (d.as_nanos() as f64 - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        Some(nanos(var.sqrt()))
    }

    /// The statistics as Submariner reports them, or `None` before the first reply.
    pub fn latency_rtt(&self) -> Option<LatencyRtt> {
        Some(LatencyRtt {
            last: go_duration(self.last()?),
            min: go_duration(self.min()?),
            average: go_duration(self.mean()?),
            max: go_duration(self.max()?),
            std_dev: go_duration(self.std_dev()?),
        })
    }
}

/// Rounds a non-negative count of nanoseconds to a `Duration` (saturating, never panics).
fn nanos(ns: f64) -> Duration {
    // `as` saturates for out-of-range floats and maps NaN to 0.
    Duration::from_nanos(ns.round() as u64)
}

/// Formats a duration as Go's `time.Duration.String()` does: `"0s"`, `"850ns"`, `"250µs"`,
/// `"1.234ms"`, `"1.5s"`, `"2m3.5s"`, `"1h0m0s"`. Submariner's `latencyRTT` strings are these.
pub fn go_duration(d: Duration) -> String {
    const US: u128 = 1_000;
    const MS: u128 = 1_000_000;
    const S: u128 = 1_000_000_000;
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < US {
        return format!("{ns}ns");
    }
    if ns < MS {
        return format!("{}µs", decimal(ns, 3));
    }
    if ns < S {
        return format!("{}ms", decimal(ns, 6));
    }
    let secs = format!("{}s", decimal(ns % (60 * S), 9));
    let minutes = ns / (60 * S);
    match (minutes / 60, minutes % 60) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

/// `v / 10^digits` in decimal, without trailing zeros in the fraction.
fn decimal(v: u128, digits: u32) -> String {
    let unit = 10u128.pow(digits);
    let (int, frac) = (v / unit, v % unit);
    if frac == 0 {
        return int.to_string();
    }
    let frac = format!("{frac:0width$}", width = digits as usize);
    format!("{int}.{}", frac.trim_end_matches('0'))
}

/// Whom one pinger probes: the remote gateway's health-check IP, from the local one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthTarget {
    /// The remote cluster; the key of [`HealthChecker::status`].
    pub cluster_id: String,
    /// The remote gateway's health-check IP.
    pub dst: IpAddr,
    /// The local health-check IP (on the WireGuard device) to send from, so the routes through
    /// the tunnel are the ones taken; `None` lets the kernel choose.
    pub src: Option<IpAddr>,
}

impl HealthTarget {
    /// Picks the target for a remote: its first health-check IP of a family the local side has
    /// a health-check IP of too (that one is the source); failing that, its first one with no
    /// source. `None` when the remote has no health-check IP.
    pub fn pick(cluster_id: &str, remote: &[IpAddr], local: &[IpAddr]) -> Option<Self> {
        let same_family = |a: &IpAddr, b: &IpAddr| a.is_ipv4() == b.is_ipv4();
        let (dst, src) = remote
            .iter()
            .find_map(|r| {
                local
                    .iter()
                    .find(|l| same_family(r, l))
                    .map(|l| (*r, Some(*l)))
            })
            .or_else(|| remote.first().map(|r| (*r, None)))?;
        Some(HealthTarget {
            cluster_id: cluster_id.to_string(),
            dst,
            src,
        })
    }
}

/// The health-check keys of one cluster's targets, primary family first: see
/// [`HealthTarget::per_family`].
pub fn family_keys(cluster_id: &str) -> [String; 2] {
    [format!("{cluster_id}/ipv4"), format!("{cluster_id}/ipv6")]
}

impl HealthTarget {
    /// One target per IP family both sides have a health-check IP of (a dual-stack tunnel is
    /// two paths, and either can break alone), keyed `<cluster>/ipv4` and `<cluster>/ipv6`
    /// (see [`family_keys`]); when the families do not meet, [`HealthTarget::pick`]'s fallback
    /// under the `<cluster>/ipv4` or `<cluster>/ipv6` key of the destination.
    pub fn per_family(cluster_id: &str, remote: &[IpAddr], local: &[IpAddr]) -> Vec<Self> {
        let [v4, v6] = family_keys(cluster_id);
        let key = |ip: &IpAddr| if ip.is_ipv4() { v4.clone() } else { v6.clone() };
        let mut out: Vec<Self> = [true, false]
            .into_iter()
            .filter_map(|want_v4| {
                let dst = remote.iter().find(|r| r.is_ipv4() == want_v4)?;
                let src = local.iter().find(|l| l.is_ipv4() == want_v4)?;
                Some(HealthTarget {
                    cluster_id: key(dst),
                    dst: *dst,
                    src: Some(*src),
                })
            })
            .collect();
        if out.is_empty() {
            out.extend(Self::pick(cluster_id, remote, local).map(|t| HealthTarget {
                cluster_id: key(&t.dst),
                ..t
            }));
        }
        out
    }
}

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
    slots: Mutex<HashMap<String, Slot>>,
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
struct Slot {
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
            let slot = match slots.remove(&target.cluster_id) {
                Some(slot) if slot.target == target => slot,
                _ => Slot {
                    generation: self.next_generation.fetch_add(1, Ordering::Relaxed),
                    target: target.clone(),
                    stats: PingStats::new(),
                    open: false,
                    socket_error: None,
                },
            };
            next.insert(target.cluster_id, slot);
        }
        *slots = next;
        drop(slots);
        // Stores a permit when `run` is busy, so the change is never missed.
        self.changed.notify_one();
    }

    /// The health of the connection to `cluster_id`; `None` when it is unknown: no such
    /// target, or its socket is not open (yet, or for lack of privilege).
    pub fn status(&self, cluster_id: &str) -> Option<HealthStatus> {
        let slots = self.lock();
        let slot = slots.get(cluster_id).filter(|s| s.open)?;
        Some(HealthStatus {
            latency: slot.stats.latency_rtt(),
            last_rtt: slot.stats.last(),
            consecutive_lost: slot.stats.consecutive_lost(),
            failed: slot.stats.is_failed(self.max_lost),
        })
    }

    /// Why the socket of `cluster_id`'s pinger could not be opened, while it cannot.
    pub fn socket_error(&self, cluster_id: &str) -> Option<String> {
        self.lock().get(cluster_id)?.socket_error.clone()
    }

    /// Runs the pingers until `shutdown` resolves: one task per target, started and stopped
    /// as [`HealthChecker::set_targets`] changes them. The engine spawns this; every pinger
    /// task lives inside it and ends with it, sockets closed.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        let mut tasks = JoinSet::new();
        let mut running: HashMap<String, (u64, AbortHandle)> = HashMap::new();
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
        running: &mut HashMap<String, (u64, AbortHandle)>,
    ) {
        let wanted: Vec<(u64, HealthTarget)> = self
            .lock()
            .values()
            .map(|s| (s.generation, s.target.clone()))
            .collect();
        running.retain(|cluster, (generation, handle)| {
            let keep = wanted
                .iter()
                .any(|(g, t)| g == generation && &t.cluster_id == cluster);
            if !keep {
                handle.abort();
            }
            keep
        });
        for (generation, target) in wanted {
            if !running.contains_key(&target.cluster_id) {
                let cluster = target.cluster_id.clone();
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
        self.update(&target.cluster_id, generation, |slot| {
            slot.open = true;
            slot.socket_error = None;
        });
        tracing::debug!(cluster = %target.cluster_id, dst = %target.dst, raw = socket.raw, "health check started");

        let mut seq: u16 = 0;
        let mut buf = vec![0u8; 2048];
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = tokio::time::Instant::now().into_std();
                    seq = seq.wrapping_add(1);
                    let sent = socket.send(ident, seq).await;
                    self.update(&target.cluster_id, generation, |slot| {
                        slot.stats.expire(now, self.timeout);
                        match &sent {
                            Ok(()) => slot.stats.record(seq, now),
                            Err(_) => slot.stats.send_failed(),
                        }
                    });
                    if let Err(e) = sent {
                        tracing::debug!(cluster = %target.cluster_id, dst = %target.dst, error = %e, "sending a health check probe failed");
                    }
                }
                got = socket.recv(&mut buf, ident) => match got {
                    Ok(Some(seq)) => {
                        let now = tokio::time::Instant::now().into_std();
                        self.update(&target.cluster_id, generation, |slot| {
                            slot.stats.reply(seq, now);
                        });
                    }
                    Ok(None) => {}
                    // Ping sockets report ICMP errors (e.g. host unreachable) here; the probe
                    // it was about expires as lost anyway.
                    Err(e) => tracing::debug!(cluster = %target.cluster_id, error = %e, "health check receive error"),
                },
            }
        }
    }

    fn socket_failed(&self, generation: u64, target: &HealthTarget, e: &io::Error) {
        let message = e.to_string();
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                cluster = %target.cluster_id, dst = %target.dst, error = %message,
                "cannot open the health check socket; connection health stays unknown until it \
                 can (run as root or with CAP_NET_RAW, or allow ping sockets with \
                 `sysctl net.ipv4.ping_group_range`)"
            );
        } else {
            tracing::debug!(cluster = %target.cluster_id, dst = %target.dst, error = %message, "cannot open the health check socket");
        }
        self.update(&target.cluster_id, generation, |slot| {
            slot.socket_error = Some(message);
        });
    }

    /// Applies `f` to the slot of `cluster_id` if it is still the same target.
    fn update(&self, cluster_id: &str, generation: u64, f: impl FnOnce(&mut Slot)) {
        if let Some(slot) = self
            .lock()
            .get_mut(cluster_id)
            .filter(|s| s.generation == generation)
        {
            f(slot);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // The slots hold plain statistics, consistent after any panic: keep using them.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An ICMP or ICMPv6 socket talking to one destination.
#[derive(Debug)]
struct EchoSocket {
    socket: tokio::net::UdpSocket,
    dst: IpAddr,
    /// Raw sockets see IPv4 headers and every echo reply; ping sockets neither.
    raw: bool,
}

impl EchoSocket {
    /// Opens a raw socket, else a ping socket (`raw_first` false: the other way round).
    fn open(dst: IpAddr, src: Option<IpAddr>, raw_first: bool) -> io::Result<Self> {
        // Checked here because a raw IPv4 socket reads whatever address is passed to bind():
        // an IPv6 one would silently bind the wildcard address.
        if let Some(src) = src.filter(|s| s.is_ipv4() != dst.is_ipv4()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "health check source {src} and destination {dst} are of different families"
                ),
            ));
        }
        let (domain, protocol) = match dst {
            IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
            IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
        };
        let kinds = if raw_first {
            [Type::RAW, Type::DGRAM]
        } else {
            [Type::DGRAM, Type::RAW]
        };
        let (socket, raw) = match Socket::new(domain, kinds[0], Some(protocol)) {
            Ok(socket) => (socket, kinds[0] == Type::RAW),
            Err(first) => match Socket::new(domain, kinds[1], Some(protocol)) {
                Ok(socket) => (socket, kinds[1] == Type::RAW),
                Err(second) => {
                    let (raw_err, ping_err) = if raw_first {
                        (first, second)
                    } else {
                        (second, first)
                    };
                    return Err(io::Error::new(
                        raw_err.kind(),
                        format!(
                            "opening an ICMP socket to {dst}: raw socket: {raw_err}; \
                             ping socket: {ping_err}"
                        ),
                    ));
                }
            },
        };
        if let Some(src) = src {
            socket.bind(&SocketAddr::new(src, 0).into()).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("binding the ICMP socket to {dst} to source {src}: {e}"),
                )
            })?;
        }
        socket.set_nonblocking(true)?;
        // An ICMP socket is a datagram socket as far as tokio's readiness is concerned.
        let socket = tokio::net::UdpSocket::from_std(socket.into())?;
        Ok(EchoSocket { socket, dst, raw })
    }

    async fn send(&self, ident: u16, seq: u16) -> io::Result<()> {
        let packet = encode_echo(self.dst.is_ipv6(), ident, seq);
        // The port means nothing to ICMP sockets; 0 is what the kernel expects.
        self.socket
            .send_to(&packet, SocketAddr::new(self.dst, 0))
            .await
            .map(drop)
    }

    /// Receives one packet; `Some(seq)` when it is an echo reply to one of our probes.
    async fn recv(&self, buf: &mut [u8], ident: u16) -> io::Result<Option<u16>> {
        let (n, from) = self.socket.recv_from(buf).await?;
        if from.ip() != self.dst {
            return Ok(None);
        }
        let v6 = self.dst.is_ipv6();
        // Ping sockets get their identifier from the kernel, which also demultiplexes replies.
        let ident = self.raw.then_some(ident);
        Ok(parse_reply(&buf[..n], v6, self.raw && !v6, ident))
    }
}

/// An echo request: type, code 0, checksum, identifier, sequence number, [`PAYLOAD`].
/// ICMPv6 checksums cover a pseudo-header the kernel fills in, so the kernel computes them.
fn encode_echo(v6: bool, ident: u16, seq: u16) -> Vec<u8> {
    let mut packet = Vec::with_capacity(8 + PAYLOAD.len());
    packet.extend_from_slice(&[if v6 { 128 } else { 8 }, 0, 0, 0]);
    packet.extend_from_slice(&ident.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(PAYLOAD);
    if !v6 {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// The sequence number of `packet` if it is an echo reply carrying our payload (and `ident`,
/// when given). `ip_header`: the packet starts with an IPv4 header (raw IPv4 sockets).
fn parse_reply(packet: &[u8], v6: bool, ip_header: bool, ident: Option<u16>) -> Option<u16> {
    let icmp = if ip_header {
        let ihl = usize::from(packet.first()? & 0x0f) * 4;
        if ihl < 20 {
            return None;
        }
        packet.get(ihl..)?
    } else {
        packet
    };
    let echo_reply = if v6 { 129 } else { 0 };
    if icmp.len() < 8 || icmp[0] != echo_reply || icmp[1] != 0 || !icmp[8..].starts_with(PAYLOAD) {
        return None;
    }
    let id = u16::from_be_bytes([icmp[4], icmp[5]]);
    if ident.is_some_and(|want| want != id) {
        return None;
    }
    Some(u16::from_be_bytes([icmp[6], icmp[7]]))
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    /// Sends probe `seq` at `t0 + sent` and answers it at `t0 + sent + rtt`.
    fn answered(stats: &mut PingStats, t0: Instant, seq: u16, sent: Duration, rtt: Duration) {
        stats.record(seq, t0 + sent);
        assert_eq!(stats.reply(seq, t0 + sent + rtt), Some(rtt));
    }

    #[test]
    fn go_durations() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "1ns"),
            (Duration::from_nanos(999), "999ns"),
            (us(1), "1µs"),
            (us(250), "250µs"),
            (Duration::from_nanos(292_800), "292.8µs"),
            (ms(1), "1ms"),
            (Duration::from_nanos(1_234_000), "1.234ms"),
            (Duration::from_nanos(1_000_001), "1.000001ms"),
            (ms(999), "999ms"),
            (Duration::from_secs(1), "1s"),
            (ms(1500), "1.5s"),
            (Duration::from_nanos(1_000_000_001), "1.000000001s"),
            (Duration::from_secs(60), "1m0s"),
            (ms(123_500), "2m3.5s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(3600 * 25 + 61), "25h1m1s"),
        ];
        for (d, want) in cases {
            assert_eq!(go_duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn statistics_over_replies() {
        let t0 = Instant::now();
        let mut stats = PingStats::new();
        assert_eq!(stats.latency_rtt(), None);
        assert_eq!(
            (stats.last(), stats.mean(), stats.std_dev()),
            (None, None, None)
        );
        for (seq, rtt) in [
            (1, 2),
            (2, 4),
            (3, 4),
            (4, 4),
            (5, 5),
            (6, 5),
            (7, 7),
            (8, 9),
        ] {
            answered(&mut stats, t0, seq, ms(u64::from(seq) * 1000), ms(rtt));
        }
        // The textbook sample: mean 5, population standard deviation 2.
        assert_eq!(stats.last(), Some(ms(9)));
        assert_eq!(stats.min(), Some(ms(2)));
        assert_eq!(stats.max(), Some(ms(9)));
        assert_eq!(stats.mean(), Some(ms(5)));
        assert_eq!(stats.std_dev(), Some(ms(2)));
        let latency = stats.latency_rtt().expect("replies seen");
        assert_eq!(
            latency,
            LatencyRtt {
                last: "9ms".into(),
                min: "2ms".into(),
                average: "5ms".into(),
                max: "9ms".into(),
                std_dev: "2ms".into(),
            }
        );
    }

    #[test]
    fn window_keeps_the_latest_samples() {
        let t0 = Instant::now();
        let mut stats = PingStats::new();
        // One slow outlier, then a full window of fast replies pushes it out.
        answered(&mut stats, t0, 0, ms(0), ms(900));
        let n = STATS_WINDOW as u16;
        for seq in 1..=n {
            answered(
                &mut stats,
                t0,
                seq,
                ms(u64::from(seq) * 1000),
                us(250 + u64::from(seq)),
            );
        }
        assert_eq!(stats.max(), Some(us(250 + u64::from(n))));
        assert_eq!(stats.min(), Some(us(251)));
        assert_eq!(stats.mean(), Some(Duration::from_nanos(250_000 + 32_500)));
        assert_eq!(stats.latency_rtt().expect("replies").min, "251µs");
    }

    #[test]
    fn losses_in_a_row_fail_and_a_reply_recovers() {
        let t0 = Instant::now();
        let timeout = ms(1000);
        let mut stats = PingStats::new();
        answered(&mut stats, t0, 1, ms(0), ms(3));
        // Probes every second, none answered: each expires at the next tick.
        for (i, seq) in (2..=7u16).enumerate() {
            let now = t0 + ms(1000 * (i as u64 + 1));
            stats.expire(now, timeout);
            stats.record(seq, now);
            assert!(!stats.is_failed(MAX_CONSECUTIVE_LOST), "after {i} lost");
        }
        assert_eq!(stats.consecutive_lost(), 5);
        // Not yet timed out: still 5.
        assert_eq!(stats.expire(t0 + ms(6999), timeout), 0);
        assert!(!stats.is_failed(MAX_CONSECUTIVE_LOST));
        // The sixth loss in a row is one more than allowed.
        assert_eq!(stats.expire(t0 + ms(7000), timeout), 1);
        assert_eq!(stats.consecutive_lost(), 6);
        assert!(stats.is_failed(MAX_CONSECUTIVE_LOST));
        // The statistics of earlier replies remain.
        assert_eq!(stats.last(), Some(ms(3)));
        // A reply that comes after its timeout changes nothing; a timely one recovers.
        assert_eq!(stats.reply(7, t0 + ms(7100)), None);
        assert!(stats.is_failed(MAX_CONSECUTIVE_LOST));
        answered(&mut stats, t0, 8, ms(8000), ms(4));
        assert_eq!(stats.consecutive_lost(), 0);
        assert!(!stats.is_failed(MAX_CONSECUTIVE_LOST));
        assert_eq!(stats.last(), Some(ms(4)));
    }

    #[test]
    fn send_failures_count_as_losses_and_duplicates_are_ignored() {
        let t0 = Instant::now();
        let mut stats = PingStats::new();
        for _ in 0..6 {
            stats.send_failed();
        }
        assert!(stats.is_failed(5));
        assert!(!stats.is_failed(6));
        answered(&mut stats, t0, 9, ms(0), ms(1));
        assert_eq!(stats.reply(9, t0 + ms(2)), None, "duplicate reply");
        assert_eq!(stats.reply(10, t0 + ms(2)), None, "never sent");
        assert_eq!(stats.consecutive_lost(), 0);
    }

    #[test]
    fn in_flight_probes_are_bounded() {
        let t0 = Instant::now();
        let mut stats = PingStats::new();
        for seq in 0..(MAX_IN_FLIGHT as u16 + 3) {
            stats.record(seq, t0 + ms(u64::from(seq)));
        }
        // Nobody expired them: the three oldest were dropped as lost.
        assert_eq!(stats.consecutive_lost(), 3);
        assert_eq!(stats.reply(0, t0 + ms(100)), None);
        assert!(stats.reply(3, t0 + ms(100)).is_some());
    }

    #[test]
    fn echo_request_and_reply_wire_format() {
        let request = encode_echo(false, 0x1234, 0xabcd);
        assert_eq!(&request[..2], &[8, 0]);
        assert_eq!(&request[4..8], &[0x12, 0x34, 0xab, 0xcd]);
        assert_eq!(&request[8..], PAYLOAD);
        assert_eq!(checksum(&request), 0, "a valid checksum sums to zero");

        let mut reply = request.clone();
        reply[0] = 0;
        assert_eq!(
            parse_reply(&reply, false, false, Some(0x1234)),
            Some(0xabcd)
        );
        assert_eq!(parse_reply(&reply, false, false, None), Some(0xabcd));
        assert_eq!(parse_reply(&reply, false, false, Some(0x1235)), None);
        assert_eq!(parse_reply(&request, false, false, None), None, "a request");

        // Raw IPv4 sockets deliver the IP header (here with 4 bytes of options) first.
        let mut with_header = vec![0x46];
        with_header.extend_from_slice(&[0; 23]);
        with_header.extend_from_slice(&reply);
        assert_eq!(
            parse_reply(&with_header, false, true, Some(0x1234)),
            Some(0xabcd)
        );

        let v6 = encode_echo(true, 7, 8);
        assert_eq!(&v6[..4], &[128, 0, 0, 0], "the kernel fills the checksum");
        let mut v6_reply = v6.clone();
        v6_reply[0] = 129;
        assert_eq!(parse_reply(&v6_reply, true, false, Some(7)), Some(8));
        assert_eq!(
            parse_reply(&reply, true, false, None),
            None,
            "an IPv4 reply"
        );

        let mut other_payload = reply.clone();
        other_payload[8] ^= 0xff;
        assert_eq!(parse_reply(&other_payload, false, false, None), None);
    }

    #[test]
    fn malformed_packets_do_not_panic() {
        let reply = {
            let mut r = encode_echo(false, 1, 2);
            r[0] = 0;
            r
        };
        for len in 0..reply.len() {
            assert_eq!(parse_reply(&reply[..len], false, false, None), None);
            assert_eq!(parse_reply(&reply[..len], false, true, None), None);
        }
        assert_eq!(
            parse_reply(&[0x41, 0, 0, 0], false, true, None),
            None,
            "IHL < 5"
        );
        assert_eq!(parse_reply(&[0x4f], false, true, None), None);
        assert_eq!(checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn picks_a_target_of_a_family_both_sides_have() {
        let v4 = ip("10.1.0.1");
        let v6 = ip("fd00:1::1");
        let local = [ip("fd00:2::1")];
        let t = HealthTarget::pick("east", &[v4, v6], &local).expect("target");
        assert_eq!((t.dst, t.src), (v6, Some(local[0])));
        assert_eq!(t.cluster_id, "east");
        let t = HealthTarget::pick("east", &[v4, v6], &[]).expect("target");
        assert_eq!((t.dst, t.src), (v4, None));
        assert_eq!(HealthTarget::pick("east", &[], &local), None);
    }

    #[test]
    fn one_target_per_family_both_sides_have() {
        let (r4, r6, l4, l6) = (
            ip("10.1.0.1"),
            ip("fd00:1::1"),
            ip("10.2.0.1"),
            ip("fd00:2::1"),
        );
        let ts = HealthTarget::per_family("east", &[r4, r6], &[l4, l6]);
        let got: Vec<_> = ts
            .iter()
            .map(|t| (t.cluster_id.as_str(), t.dst, t.src))
            .collect();
        assert_eq!(
            got,
            vec![("east/ipv4", r4, Some(l4)), ("east/ipv6", r6, Some(l6))]
        );
        let ts = HealthTarget::per_family("east", &[r4, r6], &[l6]);
        let got: Vec<_> = ts
            .iter()
            .map(|t| (t.cluster_id.as_str(), t.dst, t.src))
            .collect();
        assert_eq!(got, vec![("east/ipv6", r6, Some(l6))]);
        // Families that do not meet: the remote's first address, no source.
        let ts = HealthTarget::per_family("east", &[r4], &[l6]);
        let got: Vec<_> = ts
            .iter()
            .map(|t| (t.cluster_id.as_str(), t.dst, t.src))
            .collect();
        assert_eq!(got, vec![("east/ipv4", r4, None)]);
        assert!(HealthTarget::per_family("east", &[], &[l4]).is_empty());
        assert_eq!(
            family_keys("east"),
            ["east/ipv4".to_string(), "east/ipv6".to_string()]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_not_failed_when_the_socket_cannot_be_opened() {
        // A source of the other family is refused before any socket is opened, so nothing is
        // sent from this (the host's) namespace; health must stay unknown, not failed.
        let checker = Arc::new(HealthChecker::new(ms(1000), ms(1000)));
        let target = HealthTarget {
            cluster_id: "east".into(),
            dst: ip("192.0.2.1"),
            src: Some(ip("::1")),
        };
        checker.set_targets(vec![target]);
        assert_eq!(checker.status("east"), None);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(checker.clone().run(async move {
            let _ = stopped.await;
        }));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while checker.socket_error("east").is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no socket error seen"
            );
            tokio::time::sleep(ms(100)).await;
        }
        // Keep it retrying well past the point where losses would have failed it.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(checker.status("east"), None);
        let error = checker.socket_error("east").expect("still failing");
        assert!(error.contains("different families"), "{error}");
        checker.set_targets(Vec::new());
        assert_eq!(checker.socket_error("east"), None);
        let _ = stop.send(());
        run.await.expect("run ends on shutdown");
    }
}

/// Real pings, each test in a fresh network namespace of its own (its thread unshares
/// `CLONE_NEWNET`), so nothing of the host's network is touched or reached.
#[cfg(test)]
mod kernel_tests {
    use super::*;
    use wgcable_netlink::testing::in_netns;
    use wgcable_netlink::{LinkKind, Netlink, RtNetlink};

    /// A link that is up and drops what is routed to it, like a tunnel that is down: a dummy,
    /// else one end of a veth pair whose other end has no such address.
    async fn dark_link(nl: &RtNetlink, name: &str) -> u32 {
        let link = match nl.link_add(name, &LinkKind::Dummy).await {
            Ok(link) => link,
            Err(e) if e.is_unsupported() => {
                let peer = format!("{name}-p");
                let link = nl
                    .link_add(name, &LinkKind::Veth { peer: peer.clone() })
                    .await
                    .expect("add veth");
                let peer = nl.link_get(&peer).await.expect("get peer").expect("peer");
                nl.link_set_up(peer.index, true).await.expect("set peer up");
                link
            }
            Err(e) => panic!("add dummy {name}: {e}"),
        };
        nl.link_set_up(link.index, true).await.expect("set link up");
        link.index
    }

    fn target(cluster: &str, dst: &str, src: &str) -> HealthTarget {
        HealthTarget {
            cluster_id: cluster.into(),
            dst: dst.parse().expect("dst"),
            src: Some(src.parse().expect("src")),
        }
    }

    /// Polls `cond` every few milliseconds until it holds, failing after a deadline.
    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn rtts_from_live_targets_and_losses_from_dark_ones() {
        in_netns(
            "health::rtts_from_live_targets_and_losses_from_dark_ones",
            |nl| async move {
                let dark = dark_link(&nl, "hc0").await;
                for addr in ["192.0.2.1/24", "2001:db8::1/64"] {
                    nl.addr_add(dark, addr.parse().expect("prefix"))
                        .await
                        .expect("add address");
                }
                // Probes every 20 ms; a generous timeout so a loaded machine does not lose
                // loopback replies, while the dark targets still fail within a second.
                let checker = Arc::new(HealthChecker::new(
                    Duration::from_millis(20),
                    Duration::from_millis(500),
                ));
                let live = [
                    target("lo4", "127.0.0.1", "127.0.0.1"),
                    target("lo6", "::1", "::1"),
                ];
                let silent = [
                    target("dark4", "192.0.2.2", "192.0.2.1"),
                    target("dark6", "2001:db8::2", "2001:db8::1"),
                ];
                checker.set_targets(live.iter().chain(&silent).cloned().collect());
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let run = tokio::spawn(checker.clone().run(async move {
                    let _ = stopped.await;
                }));

                for t in &live {
                    let id = &t.cluster_id;
                    wait_for(&format!("{id} to have an RTT"), || {
                        checker.status(id).is_some_and(|s| s.latency.is_some())
                    })
                    .await;
                    let status = checker.status(id).expect("known");
                    assert!(!status.failed, "{id}: {status:?}");
                    let last = status.last_rtt.expect("an RTT");
                    assert!(
                        last > Duration::ZERO && last < Duration::from_secs(1),
                        "{last:?}"
                    );
                    let latency = status.latency.expect("latency");
                    for field in [&latency.last, &latency.min, &latency.average, &latency.max] {
                        assert!(field.ends_with('s') && field != "0s", "{id}: {latency:?}");
                    }
                    assert_eq!(latency.last, go_duration(last));
                }
                for t in &silent {
                    let id = &t.cluster_id;
                    wait_for(&format!("{id} to fail"), || {
                        checker.status(id).is_some_and(|s| s.failed)
                    })
                    .await;
                    let status = checker.status(id).expect("known");
                    assert!(status.consecutive_lost > MAX_CONSECUTIVE_LOST, "{status:?}");
                    assert_eq!((status.latency, status.last_rtt), (None, None));
                }
                // The live ones kept answering all along.
                for t in &live {
                    let status = checker.status(&t.cluster_id).expect("known");
                    assert!(!status.failed, "{status:?}");
                }

                // Removing targets forgets them; unchanged ones keep their statistics.
                checker.set_targets(vec![live[0].clone()]);
                assert_eq!(checker.status("dark4"), None);
                assert_eq!(checker.status("lo6"), None);
                assert!(checker.status("lo4").is_some_and(|s| s.latency.is_some()));

                // Re-pointing a target at a dark address starts afresh and then fails.
                checker.set_targets(vec![target("lo4", "192.0.2.3", "192.0.2.1")]);
                assert!(checker.status("lo4").is_none_or(|s| s.latency.is_none()));
                wait_for("lo4 re-pointed to fail", || {
                    checker.status("lo4").is_some_and(|s| s.failed)
                })
                .await;

                let _ = stop.send(());
                tokio::time::timeout(Duration::from_secs(5), run)
                    .await
                    .expect("run stops on shutdown")
                    .expect("run does not panic");
            },
        );
    }
    #[test]
    fn unprivileged_ping_sockets_work_too() {
        in_netns(
            "health::unprivileged_ping_sockets_work_too",
            |_nl| async move {
                // A new namespace allows ping sockets to no group; allow root's. This write goes
                // to this thread's namespace: /proc/sys/net follows the opener's.
                std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 0")
                    .expect("allow ping sockets in the namespace");
                for (dst, ident) in [("127.0.0.1", 7), ("::1", 8)] {
                    let dst: IpAddr = dst.parse().expect("dst");
                    let socket =
                        EchoSocket::open(dst, Some(dst), false).expect("open a ping socket");
                    assert!(!socket.raw, "{dst}: a ping socket was asked for");
                    socket.send(ident, 41).await.expect("send a probe");
                    let mut buf = [0u8; 512];
                    let seq = tokio::time::timeout(Duration::from_secs(5), async {
                        loop {
                            if let Some(seq) = socket.recv(&mut buf, ident).await.expect("recv") {
                                break seq;
                            }
                        }
                    })
                    .await
                    .expect("an echo reply in time");
                    assert_eq!(seq, 41, "{dst}");
                }
            },
        );
    }
}

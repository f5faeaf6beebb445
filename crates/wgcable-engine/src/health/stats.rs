//! [`PingStats`]: round-trip statistics and losses of one pinger, pure.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use wgcable_api::LatencyRtt;

use super::*;

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
pub(crate) fn nanos(ns: f64) -> Duration {
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
pub(crate) fn decimal(v: u128, digits: u32) -> String {
    let unit = 10u128.pow(digits);
    let (int, frac) = (v / unit, v % unit);
    if frac == 0 {
        return int.to_string();
    }
    let frac = format!("{frac:0width$}", width = digits as usize);
    format!("{int}.{}", frac.trim_end_matches('0'))
}

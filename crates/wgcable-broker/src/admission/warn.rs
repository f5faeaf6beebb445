//! Rate-limited refusal warnings: a file rewritten 1,000 times a second must not write 1,000
//! log lines a second.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::refusal::Reason;
use crate::ObjectKey;

/// Warnings suppressed during one interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suppressed {
    pub warnings: u64,
    pub objects: usize,
    pub interval: Duration,
}

/// Decides which refusals are logged.
///
/// Per object: the first refusal, and a refusal for a different reason, are logged at once;
/// the same reason again only after `interval`. In all, at most `max_per_interval` lines per
/// interval. Everything else is counted and reported by [`WarnLimiter::summary`] once per
/// interval. Pure: the caller passes `now`.
#[derive(Debug)]
pub struct WarnLimiter {
    interval: Duration,
    max_per_interval: usize,
    last: HashMap<ObjectKey, (SystemTime, Reason)>,
    window_start: Option<SystemTime>,
    warned_in_window: usize,
    suppressed: u64,
    suppressed_objects: std::collections::HashSet<ObjectKey>,
}

impl WarnLimiter {
    pub fn new(interval: Duration, max_per_interval: usize) -> Self {
        WarnLimiter {
            interval,
            max_per_interval,
            last: HashMap::new(),
            window_start: None,
            warned_in_window: 0,
            suppressed: 0,
            suppressed_objects: Default::default(),
        }
    }

    fn elapsed(&self, since: SystemTime, now: SystemTime) -> bool {
        // A clock stepped backwards counts as "not yet": at worst a warning is delayed.
        now.duration_since(since).is_ok_and(|d| d >= self.interval)
    }

    /// Whether to log this refusal now.
    pub fn allow(&mut self, key: &ObjectKey, reason: Reason, now: SystemTime) -> bool {
        let start = *self.window_start.get_or_insert(now);
        if self.elapsed(start, now) && self.suppressed == 0 {
            // A new window; an old one with suppressed warnings is closed by `summary`.
            self.window_start = Some(now);
            self.warned_in_window = 0;
        }
        let due = match self.last.get(key) {
            None => true,
            Some((at, last_reason)) => *last_reason != reason || self.elapsed(*at, now),
        };
        if due && self.warned_in_window < self.max_per_interval {
            self.warned_in_window += 1;
            self.last.insert(key.clone(), (now, reason));
            true
        } else {
            self.suppressed += 1;
            self.suppressed_objects.insert(key.clone());
            false
        }
    }

    /// What was suppressed in the interval that ended, once it has ended.
    pub fn summary(&mut self, now: SystemTime) -> Option<Suppressed> {
        let start = self.window_start?;
        if !self.elapsed(start, now) {
            return None;
        }
        self.window_start = Some(now);
        self.warned_in_window = 0;
        if self.suppressed == 0 {
            return None;
        }
        let summary = Suppressed {
            warnings: self.suppressed,
            objects: self.suppressed_objects.len(),
            interval: self.interval,
        };
        self.suppressed = 0;
        self.suppressed_objects.clear();
        Some(summary)
    }

    /// The object is gone: its next refusal is news again.
    pub fn forget(&mut self, key: &ObjectKey) {
        self.last.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thousand_refusals_a_second_give_one_line_and_a_summary() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut limiter = WarnLimiter::new(Duration::from_secs(60), 100);
        let key = ObjectKey("a.yaml".into());
        let mut logged = 0;
        for ms in 0..1000 {
            let now = t0 + Duration::from_millis(ms);
            if limiter.allow(&key, Reason::Parse("malformed"), now) {
                logged += 1;
            }
        }
        assert_eq!(logged, 1);
        assert_eq!(
            limiter.summary(t0 + Duration::from_secs(1)),
            None,
            "not yet"
        );
        assert_eq!(
            limiter.summary(t0 + Duration::from_secs(60)),
            Some(Suppressed {
                warnings: 999,
                objects: 1,
                interval: Duration::from_secs(60)
            })
        );
        assert_eq!(limiter.summary(t0 + Duration::from_secs(121)), None);
        // The same refusal after the interval is logged again; a new reason at once.
        let later = t0 + Duration::from_secs(130);
        assert!(limiter.allow(&key, Reason::Parse("malformed"), later));
        assert!(limiter.allow(&key, Reason::Impostor, later + Duration::from_secs(1)));
        assert!(!limiter.allow(&key, Reason::Impostor, later + Duration::from_secs(2)));
    }

    #[test]
    fn many_objects_are_capped_per_interval() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut limiter = WarnLimiter::new(Duration::from_secs(60), 10);
        let logged = (0..50)
            .filter(|i| {
                limiter.allow(
                    &ObjectKey(format!("c{i}.yaml")),
                    Reason::Parse("too_large"),
                    t0 + Duration::from_millis(*i),
                )
            })
            .count();
        assert_eq!(logged, 10);
        let summary = limiter
            .summary(t0 + Duration::from_secs(60))
            .expect("summary");
        assert_eq!((summary.warnings, summary.objects), (40, 40));
        // The next interval has room again.
        assert!(limiter.allow(
            &ObjectKey("c49.yaml".into()),
            Reason::Parse("too_large"),
            t0 + Duration::from_secs(61)
        ));
        limiter.forget(&ObjectKey("c0.yaml".into()));
        assert!(limiter.allow(
            &ObjectKey("c0.yaml".into()),
            Reason::Parse("too_large"),
            t0 + Duration::from_secs(62)
        ));
    }
}

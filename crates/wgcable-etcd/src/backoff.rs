//! Retry delays: exponential, bounded, jittered.

use std::time::Duration;

/// How long to wait before retry number `attempt` (0 = the first retry): `initial * 2^attempt`
/// capped at `max`, then a random point in its upper half ("equal jitter"), so gateways that
/// lost etcd at the same moment do not come back in lock step, yet none waits longer than
/// `max`.
///
/// `max` is also what bounds catching up: once etcd is back, a gateway notices within `max`
/// (plus one request), so it must stay well under the few seconds a change may take to
/// reach everyone. Default 100 ms to 1 s: a retry against members that refuse connections
/// costs them nothing, and the e2e's 5 s from etcd's return to every gateway holds with room
/// (at 2 s, two unlucky retries, one to a member still starting, took 4.7 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// The delay before retry `attempt`, with `jitter` in `[0, 1)` (pure: the caller draws it).
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let cap = self.max.max(self.initial);
        let full = self
            .initial
            .checked_mul(1u32 << attempt.min(20))
            .map_or(cap, |d| d.min(cap));
        let half = full / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// [`Backoff::delay`] with a random jitter.
    pub fn next_delay(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_stays_in_the_upper_half() {
        let b = Backoff::default();
        let ms = |d: Duration| d.as_millis();
        assert_eq!(ms(b.delay(0, 0.0)), 50);
        assert_eq!(ms(b.delay(0, 0.999_999)), 99);
        assert_eq!(ms(b.delay(1, 0.0)), 100);
        assert_eq!(ms(b.delay(3, 0.0)), 400);
        for attempt in [5, 10, 31, u32::MAX] {
            for jitter in [0.0, 0.5, 1.0, 7.0, -1.0] {
                let d = b.delay(attempt, jitter);
                assert!(
                    d >= Duration::from_millis(500) && d <= b.max,
                    "{attempt} {jitter} {d:?}"
                );
            }
        }
        for _ in 0..100 {
            assert!(b.next_delay(40) <= b.max);
        }
    }

    #[test]
    fn a_cap_below_the_start_is_the_start() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_millis(10),
        };
        assert_eq!(b.delay(0, 1.0), Duration::from_secs(1));
        assert_eq!(b.delay(9, 1.0), Duration::from_secs(1));
    }
}

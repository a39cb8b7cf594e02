//! When to try again after a connection drops or cannot be made: exponential backoff
//! with jitter, as Autobahn does it.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::time::Duration;

/// Retry timing. The rpc-websockets options map onto it: `reconnect(false)` is
/// `max_retries = 0`, `reconnect_interval` is `initial_delay`, `max_reconnects(n)` is
/// `max_retries = n` (0 meaning forever).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ReconnectPolicy {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// Each delay is the previous one times this.
    pub growth: f64,
    /// Each delay is moved by up to this fraction either way; 0 is none at all.
    pub jitter: f64,
    /// Retries after a drop before giving up; negative means forever.
    pub max_retries: i64,
    /// Retry when no connection could be made at all.
    pub retry_if_unreachable: bool,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_delay: Duration::from_millis(1500),
            max_delay: Duration::from_secs(300),
            growth: 1.5,
            jitter: 0.1,
            max_retries: 15,
            retry_if_unreachable: true,
        }
    }
}

impl ReconnectPolicy {
    /// The wait before retry number `retry` (1 for the first), or `None` when no
    /// retry is to be made. `random` is uniform in `[0, 1)`.
    pub(crate) fn delay(&self, retry: u32, random: f64) -> Option<Duration> {
        if retry == 0 || (self.max_retries >= 0 && i64::from(retry) > self.max_retries) {
            return None;
        }
        let max = self.max_delay.as_secs_f64();
        // NaN settings count as none; any result outside Duration's range is the cap.
        let growth = if self.growth.is_nan() {
            1.0
        } else {
            self.growth.max(1.0)
        };
        let jitter = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        let base = self.initial_delay.as_secs_f64() * growth.powi(retry as i32 - 1);
        let spread = jitter * (2.0 * random - 1.0);
        let secs = (base.min(max) * (1.0 + spread)).clamp(0.0, max);
        Some(Duration::try_from_secs_f64(secs).unwrap_or(self.max_delay))
    }
}

/// A number uniform in `[0, 1)`; jitter needs no better randomness than this.
pub(crate) fn random_unit() -> f64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u8(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ReconnectPolicy {
        ReconnectPolicy {
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
            growth: 2.0,
            jitter: 0.0,
            max_retries: 5,
            retry_if_unreachable: true,
        }
    }

    #[test]
    fn delays_grow_to_the_cap() {
        let p = policy();
        let secs: Vec<f64> = (1..=5)
            .map(|n| p.delay(n, 0.3).unwrap().as_secs_f64())
            .collect();
        assert_eq!(secs, [1.0, 2.0, 4.0, 8.0, 10.0]);
    }

    #[test]
    fn retries_stop_at_the_cap_and_negative_means_forever() {
        let p = policy();
        assert!(p.delay(5, 0.5).is_some());
        assert_eq!(p.delay(6, 0.5), None);
        assert_eq!(
            ReconnectPolicy {
                max_retries: 0,
                ..p
            }
            .delay(1, 0.5),
            None
        );
        assert!(
            ReconnectPolicy {
                max_retries: -1,
                ..p
            }
            .delay(1000, 0.5)
            .is_some()
        );
    }

    #[test]
    fn jitter_moves_the_delay_by_at_most_its_fraction() {
        let p = ReconnectPolicy {
            jitter: 0.1,
            ..policy()
        };
        let low = p.delay(2, 0.0).unwrap().as_secs_f64();
        let high = p.delay(2, 0.999_999).unwrap().as_secs_f64();
        assert!((low - 1.8).abs() < 1e-9, "{low}");
        assert!(high > 2.19 && high <= 2.2, "{high}");
        let none = ReconnectPolicy {
            jitter: 0.0,
            ..policy()
        };
        assert_eq!(none.delay(2, 0.0), none.delay(2, 0.99));
    }

    #[test]
    fn odd_settings_give_a_delay_not_a_panic() {
        let odd = ReconnectPolicy {
            max_delay: Duration::MAX,
            jitter: f64::NAN,
            growth: f64::NAN,
            ..policy()
        };
        assert_eq!(odd.delay(3, 0.5), Some(Duration::from_secs(1)));
        let huge = ReconnectPolicy {
            max_delay: Duration::MAX,
            growth: 1e300,
            ..policy()
        };
        assert_eq!(huge.delay(4, 0.5), Some(Duration::MAX));
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let p = ReconnectPolicy::default();
        assert_eq!(p.initial_delay, Duration::from_millis(1500));
        assert_eq!(p.max_delay, Duration::from_secs(300));
        assert_eq!((p.growth, p.jitter, p.max_retries), (1.5, 0.1, 15));
        assert!(p.retry_if_unreachable);
    }

    #[test]
    fn random_units_are_in_range() {
        for _ in 0..1000 {
            let r = random_unit();
            assert!((0.0..1.0).contains(&r));
        }
    }
}

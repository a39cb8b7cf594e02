//! When to try again after a connection drops or cannot be made.

use std::time::Duration;

/// The rpc-websockets reconnect options: a fixed interval and a cap on attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ReconnectPolicy {
    pub enabled: bool,
    pub interval: Duration,
    /// Attempts after a drop before giving up; 0 means no limit.
    pub max_attempts: u32,
}

impl ReconnectPolicy {
    /// The wait before attempt number `attempt` (1 for the first retry after a drop),
    /// or `None` when no attempt is to be made.
    pub(crate) fn delay(&self, attempt: u32) -> Option<Duration> {
        let allowed = self.enabled && (self.max_attempts == 0 || attempt <= self.max_attempts);
        allowed.then_some(self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_stop_at_the_cap_and_zero_means_forever() {
        let p = ReconnectPolicy {
            enabled: true,
            interval: Duration::from_millis(10),
            max_attempts: 2,
        };
        assert_eq!(p.delay(1), Some(Duration::from_millis(10)));
        assert_eq!(p.delay(2), Some(Duration::from_millis(10)));
        assert_eq!(p.delay(3), None);
        let forever = ReconnectPolicy {
            max_attempts: 0,
            ..p
        };
        assert!(forever.delay(1_000_000).is_some());
        let off = ReconnectPolicy {
            enabled: false,
            ..p
        };
        assert_eq!(off.delay(1), None);
    }
}

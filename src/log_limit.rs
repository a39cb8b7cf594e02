//! Log lines a client can trigger at will (a refused connection, an oversized batch,
//! a protocol error) go through [`log_limited!`]: each call site logs at most
//! [`LINES_PER_WINDOW`] lines per [`WINDOW`], and says how many it held back, so a
//! client cannot flood the application's log.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lines one call site may log per window.
pub(crate) const LINES_PER_WINDOW: u64 = 10;
/// The window.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

/// The state of one call site: the window it is in, and lines logged and held back
/// in it. Lock-free; a race at a window's edge can let a line or two more through.
pub(crate) struct Limit {
    window: AtomicU64,
    logged: AtomicU64,
    held_back: AtomicU64,
}

impl Limit {
    pub(crate) const fn new() -> Self {
        Limit {
            window: AtomicU64::new(0),
            logged: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged now: `Some(n)` with the lines held back since the
    /// last one logged, `None` to hold this one back.
    pub(crate) fn allow(&self) -> Option<u64> {
        self.allow_at(window_now())
    }

    fn allow_at(&self, window: u64) -> Option<u64> {
        if self.window.swap(window, Ordering::Relaxed) != window {
            self.logged.store(0, Ordering::Relaxed);
        }
        if self.logged.fetch_add(1, Ordering::Relaxed) < LINES_PER_WINDOW {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// The number of the current window since the first use (1-based, so 0 is "none").
fn window_now() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    (epoch.elapsed().as_millis() / WINDOW.as_millis()) as u64 + 1
}

/// `log::log!` at `level`, at most [`LINES_PER_WINDOW`] times per [`WINDOW`] from each
/// call site.
macro_rules! log_limited {
    ($level:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::Limit = $crate::log_limit::Limit::new();
        if log::log_enabled!($level) && let Some(held_back) = LIMIT.allow() {
            if held_back > 0 {
                log::log!($level, "({held_back} lines like the next were not logged)");
            }
            log::log!($level, $($arg)+);
        }
    }};
}
pub(crate) use log_limited;

/// `log::warn!` through [`log_limited!`].
macro_rules! warn_limited {
    ($($arg:tt)+) => {
        $crate::log_limit::log_limited!(log::Level::Warn, $($arg)+)
    };
}
pub(crate) use warn_limited;

/// `log::error!` through [`log_limited!`].
macro_rules! error_limited {
    ($($arg:tt)+) => {
        $crate::log_limit::log_limited!(log::Level::Error, $($arg)+)
    };
}
pub(crate) use error_limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_site_logs_a_few_lines_per_window_and_counts_the_rest() {
        let limit = Limit::new();
        for _ in 0..LINES_PER_WINDOW {
            assert_eq!(limit.allow_at(1), Some(0));
        }
        assert_eq!(limit.allow_at(1), None);
        assert_eq!(limit.allow_at(1), None);
        assert_eq!(
            limit.allow_at(2),
            Some(2),
            "the next window says what was held"
        );
        assert_eq!(limit.allow_at(2), Some(0));
    }
}

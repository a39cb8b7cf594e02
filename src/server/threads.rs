//! The threads a server starts besides one per connection, each kind with a
//! server-wide cap: a pool of writer threads that send what the server pushes
//! (events, close frames), and the threads that keep running slow handlers after
//! their connection's reading has been handed to a new thread.
//!
//! Generic over what is written (`T`, a connection), so that this file knows nothing
//! of connections: `connection.rs` drives the pool.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::lock;

/// How long an idle writer thread waits for work before it ends.
const WRITER_IDLE: Duration = Duration::from_secs(5);

/// Writer threads, at most `max`, serving connections that have something to send.
/// A connection with queued frames and no writer waits in `waiting` (once: the
/// connection's own flag says it is there) until a writer takes it. A writer serves one
/// connection at a time until its queue is empty, then takes the next one waiting.
pub(crate) struct WriterPool<T> {
    /// Connections waiting for a writer; `None` tells a writer to end (shutdown).
    waiting_tx: Sender<Option<Arc<T>>>,
    waiting_rx: Receiver<Option<Arc<T>>>,
    max: usize,
    /// Writer threads alive.
    threads: AtomicUsize,
    /// Of those, how many wait for a connection to serve.
    idle: AtomicUsize,
    /// Of those, how many were started and have not taken their first connection:
    /// while one is starting no other is started, so the pool grows one thread at a
    /// time, and only while every writer is busy.
    starting: AtomicUsize,
    /// Connections taken from `waiting` so far: no change between two looks while
    /// some wait means every writer is stuck (blocked on a client that does not read).
    taken: AtomicU64,
}

/// What a writer thread should do next.
pub(crate) enum Next<T> {
    Serve(Arc<T>),
    /// End the thread.
    End,
}

impl<T> WriterPool<T> {
    pub(crate) fn new(max: usize) -> Self {
        let (waiting_tx, waiting_rx) = crossbeam_channel::unbounded();
        WriterPool {
            waiting_tx,
            waiting_rx,
            max: max.max(1),
            threads: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            starting: AtomicUsize::new(0),
            taken: AtomicU64::new(0),
        }
    }

    /// Queue `conn` for a writer. Returns whether the caller should start a new writer
    /// thread (it then calls [`WriterPool::started`] on it, or
    /// [`WriterPool::not_started`] if it could not start one); `false` when an idle
    /// writer will take it, one is starting, or `max` writers are busy (it waits).
    pub(crate) fn enqueue(&self, conn: Arc<T>) -> Enqueued {
        let _ = self.waiting_tx.send(Some(conn));
        if self.idle.load(Ordering::SeqCst) > 0 || self.starting.load(Ordering::SeqCst) > 0 {
            return Enqueued::Taken;
        }
        self.reserve_thread()
    }

    /// Count a new thread in, if under the cap.
    fn reserve_thread(&self) -> Enqueued {
        let reserved = self
            .threads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if reserved {
            self.starting.fetch_add(1, Ordering::SeqCst);
            Enqueued::StartThread
        } else {
            Enqueued::AtCap
        }
    }

    /// A thread [`WriterPool::enqueue`] asked for could not be started.
    pub(crate) fn not_started(&self) {
        self.starting.fetch_sub(1, Ordering::SeqCst);
        self.threads.fetch_sub(1, Ordering::SeqCst);
    }

    /// The first connection of a newly started writer thread.
    pub(crate) fn started(&self) -> Next<T> {
        self.starting.fetch_sub(1, Ordering::SeqCst);
        self.next()
    }

    /// Wait for a connection to serve; `End` after `WRITER_IDLE` without one (the
    /// thread is then counted out) or at shutdown.
    pub(crate) fn next(&self) -> Next<T> {
        loop {
            self.idle.fetch_add(1, Ordering::SeqCst);
            let job = self.waiting_rx.recv_timeout(WRITER_IDLE);
            self.idle.fetch_sub(1, Ordering::SeqCst);
            match job {
                Ok(Some(conn)) => {
                    self.taken.fetch_add(1, Ordering::SeqCst);
                    return Next::Serve(conn);
                }
                // Shutdown: one `None` for each thread, so each ends at its own.
                Ok(None) => {
                    self.threads.fetch_sub(1, Ordering::SeqCst);
                    return Next::End;
                }
                Err(_) => {}
            }
            self.threads.fetch_sub(1, Ordering::SeqCst);
            // A connection queued while this thread was counting itself out would
            // otherwise wait for the next enqueue: stay if one is there.
            if self.waiting_rx.is_empty() || self.reserve_existing().is_err() {
                return Next::End;
            }
        }
    }

    /// Count this (still running) thread back in, if under the cap.
    fn reserve_existing(&self) -> Result<usize, usize> {
        self.threads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
    }

    /// Whether connections wait for a writer (a writer with more to send for its
    /// current connection then queues it again behind them, for fairness).
    pub(crate) fn others_waiting(&self) -> bool {
        !self.waiting_rx.is_empty()
    }

    /// Whether connections have waited since the last look (`seen` keeps what it saw)
    /// with no writer taking any, none idle and none starting: every writer is stuck
    /// on a client that stopped reading. The caller then starts another
    /// ([`WriterPool::grow`]), so a few such clients cannot hold up everyone else.
    pub(crate) fn stuck(&self, seen: &mut u64) -> bool {
        let taken = self.taken.load(Ordering::SeqCst);
        let stuck = taken == *seen
            && self.others_waiting()
            && self.idle.load(Ordering::SeqCst) == 0
            && self.starting.load(Ordering::SeqCst) == 0;
        *seen = taken;
        stuck
    }

    /// One more writer thread, if under the cap (as [`WriterPool::enqueue`] answers).
    pub(crate) fn grow(&self) -> Enqueued {
        self.reserve_thread()
    }

    /// Writer threads alive now.
    pub(crate) fn threads(&self) -> usize {
        self.threads.load(Ordering::SeqCst)
    }

    /// Wake every idle writer so that it ends (the server is closing).
    pub(crate) fn shut_down(&self) {
        for _ in 0..self.threads() {
            let _ = self.waiting_tx.send(None);
        }
    }
}

/// What [`WriterPool::enqueue`] asks of its caller.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// A running writer will take the connection.
    Taken,
    /// Start a writer thread.
    StartThread,
    /// `max` writers are busy: the connection waits for one to be free.
    AtCap,
}

/// A count of running threads with a cap, for slow-call hand-offs.
pub(crate) struct Capped {
    running: AtomicUsize,
    max: usize,
}

impl Capped {
    pub(crate) fn new(max: usize) -> Self {
        Capped {
            running: AtomicUsize::new(0),
            max,
        }
    }

    /// Count one more in, unless `max` run.
    pub(crate) fn try_add(&self) -> bool {
        self.running
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    /// One has ended.
    pub(crate) fn remove(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
    }

    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
}

/// The threads a server has started and not seen end, so that `close` can wait for
/// them, with a deadline.
#[derive(Default)]
pub(crate) struct Live {
    /// Whether new threads may start, and how many run.
    state: Mutex<(bool, usize)>,
    ended: Condvar,
}

/// Held by a running thread; counts it out when dropped.
pub(crate) struct LiveGuard(Arc<Live>);

impl Live {
    pub(crate) fn new() -> Self {
        Live {
            state: Mutex::new((true, 0)),
            ended: Condvar::new(),
        }
    }

    /// Count a thread in; `None` once closed.
    pub(crate) fn enter(self: &Arc<Self>) -> Option<LiveGuard> {
        let mut state = lock(&self.state);
        if !state.0 {
            return None;
        }
        state.1 += 1;
        Some(LiveGuard(self.clone()))
    }

    /// No thread may start any more.
    pub(crate) fn close(&self) {
        lock(&self.state).0 = false;
    }

    /// Wait until at most `n` threads run, or `deadline` passes; whether they did.
    pub(crate) fn wait_for(&self, n: usize, deadline: Instant) -> bool {
        let mut state = lock(&self.state);
        while state.1 > n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .ended
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    pub(crate) fn running(&self) -> usize {
        lock(&self.state).1
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        lock(&self.0.state).1 -= 1;
        self.0.ended.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_grows_one_thread_at_a_time_and_only_while_all_are_busy() {
        let pool = WriterPool::<u32>::new(2);
        assert_eq!(pool.enqueue(Arc::new(1)), Enqueued::StartThread);
        // The first thread has not started yet: it will take this one too.
        assert_eq!(pool.enqueue(Arc::new(2)), Enqueued::Taken);
        assert!(matches!(pool.started(), Next::Serve(c) if *c == 1));
        // Busy with 1, none idle or starting: a second thread.
        assert_eq!(pool.enqueue(Arc::new(3)), Enqueued::StartThread);
        assert_eq!(pool.enqueue(Arc::new(4)), Enqueued::Taken);
        assert!(matches!(pool.started(), Next::Serve(c) if *c == 2));
        assert_eq!(pool.threads(), 2);
        assert_eq!(pool.enqueue(Arc::new(5)), Enqueued::AtCap);
        assert_eq!(pool.threads(), 2, "the cap was passed");
        // Writers done with their connection take the waiting ones in order.
        for expected in [3, 4, 5] {
            assert!(matches!(pool.next(), Next::Serve(c) if *c == expected));
        }
    }

    #[test]
    fn a_pool_whose_writers_take_nothing_while_others_wait_is_stuck_and_grows() {
        let pool = WriterPool::<u32>::new(4);
        let mut seen = 0;
        assert_eq!(pool.enqueue(Arc::new(1)), Enqueued::StartThread);
        assert!(matches!(pool.started(), Next::Serve(_)));
        assert!(!pool.stuck(&mut seen), "stuck with nobody waiting");
        // The writer blocks on its client; two more connections queue behind it.
        assert_eq!(pool.enqueue(Arc::new(2)), Enqueued::StartThread);
        pool.not_started();
        assert_eq!(pool.enqueue(Arc::new(3)), Enqueued::StartThread);
        pool.not_started();
        assert!(
            pool.stuck(&mut seen),
            "nothing taken since the last look: every writer is stuck"
        );
        assert_eq!(pool.grow(), Enqueued::StartThread);
        assert!(!pool.stuck(&mut seen), "a thread is starting");
        assert!(matches!(pool.started(), Next::Serve(c) if *c == 2));
        assert!(!pool.stuck(&mut seen), "the new writer took one");
    }

    #[test]
    fn a_thread_that_could_not_start_is_counted_out() {
        let pool = WriterPool::<u32>::new(1);
        assert_eq!(pool.enqueue(Arc::new(1)), Enqueued::StartThread);
        pool.not_started();
        assert_eq!(pool.threads(), 0);
        assert_eq!(pool.enqueue(Arc::new(2)), Enqueued::StartThread);
    }

    #[test]
    fn shutting_down_ends_every_idle_writer() {
        let pool = WriterPool::<u32>::new(4);
        assert_eq!(pool.enqueue(Arc::new(1)), Enqueued::StartThread);
        assert!(matches!(pool.started(), Next::Serve(_)));
        assert_eq!(pool.enqueue(Arc::new(2)), Enqueued::StartThread);
        assert!(matches!(pool.started(), Next::Serve(_)));
        pool.shut_down();
        // Each takes one of the two shutdown notes, not both.
        assert!(matches!(pool.next(), Next::End));
        assert_eq!(pool.threads(), 1);
        assert!(pool.others_waiting(), "one writer took every shutdown note");
        assert!(matches!(pool.next(), Next::End));
        assert_eq!(pool.threads(), 0);
    }

    #[test]
    fn live_threads_are_waited_for_until_a_deadline() {
        let live = Arc::new(Live::new());
        let a = live.enter().unwrap();
        let b = live.enter().unwrap();
        assert_eq!(live.running(), 2);
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(
            !live.wait_for(0, soon),
            "waited past the deadline or counted wrong"
        );
        drop(a);
        assert!(live.wait_for(1, Instant::now()));
        live.close();
        assert!(live.enter().is_none(), "a thread started after close");
        drop(b);
        assert!(live.wait_for(0, Instant::now()));
    }

    #[test]
    fn capped_counts_hold_their_cap() {
        let capped = Capped::new(2);
        assert!(capped.try_add() && capped.try_add());
        assert!(!capped.try_add());
        capped.remove();
        assert!(capped.try_add());
        assert_eq!(capped.running(), 2);
    }
}

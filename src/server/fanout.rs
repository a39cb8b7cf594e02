//! Events to their subscribers: a send that never waits per subscriber
//! ([`Conn::push`]), split among a few threads when there are many subscribers.
//!
//! With many subscribers, the dispatcher writes to a share of them and up to
//! [`MAX_SHARES`]` - 1` helper threads write to the others, and the dispatcher waits
//! until every share is written before it takes its next command. So events still
//! reach each subscriber in emit order, and the dispatcher stays the only owner of
//! who is subscribed. A few threads writing get more of a busy machine's CPU than one
//! (the scheduler shares it out thread by thread, and every subscriber's thread that an
//! event wakes is one more to share with), so an event reaches its last subscriber
//! sooner; no helper ever waits for a client.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::Sender;
use tungstenite::Bytes;

use super::Server;
use super::admission::Counters;
use super::connection::Conn;
use crate::log_limit::warn_limited;

/// Subscribers an event (or a batch of events sent together) must have before its
/// writes are shared among threads.
const SPLIT_AT: usize = 256;

/// At most this many threads (the dispatcher and its helpers) write one event.
pub(crate) const MAX_SHARES: usize = 4;

/// A subscriber and the frames it is sent.
pub(crate) type Delivery = (Arc<Conn>, Frames);

/// One event's frame (no allocation: the common case), or several emitted together.
pub(crate) enum Frames {
    One(Bytes),
    Many(Vec<Bytes>),
}

impl Frames {
    /// Add the frame of a later event of the same batch.
    pub(crate) fn push(&mut self, frame: Bytes) {
        match self {
            Frames::One(first) => *self = Frames::Many(vec![first.clone(), frame]),
            Frames::Many(frames) => frames.push(frame),
        }
    }

    fn as_slice(&self) -> &[Bytes] {
        match self {
            Frames::One(frame) => std::slice::from_ref(frame),
            Frames::Many(frames) => frames,
        }
    }
}

/// A share of the subscribers for a helper.
struct Job {
    deliveries: Arc<Vec<Delivery>>,
    range: Range<usize>,
    /// Dropped when the share is written, or when the job is dropped unwritten (the
    /// helper panicked, or had ended): the dispatcher waits for every job's.
    _done: Sender<()>,
}

/// The dispatcher's helpers, started when a batch first has many subscribers.
pub(crate) struct FanOut {
    helpers: Vec<Sender<Job>>,
    /// Threads that may share one batch: the machine's cores, at most `MAX_SHARES`.
    shares: usize,
}

impl FanOut {
    pub(crate) fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        FanOut {
            helpers: Vec::new(),
            shares: cores.clamp(1, MAX_SHARES),
        }
    }

    /// Write each delivery's frames to its subscriber, and return once all are
    /// written (or queued, for those whose socket is full).
    pub(crate) fn send(&mut self, server: &Server, deliveries: Vec<Delivery>) {
        if deliveries.len() < SPLIT_AT || self.shares == 1 {
            for (conn, frames) in &deliveries {
                deliver(server, conn, frames);
            }
            return;
        }
        self.start_helpers(server);
        let conns = Arc::new(deliveries);
        let per = conns.len().div_ceil(self.helpers.len() + 1);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        let mut mine: Vec<Range<usize>> = Vec::with_capacity(self.helpers.len() + 1);
        mine.push(0..per.min(conns.len()));
        for (i, helper) in self.helpers.iter().enumerate() {
            let start = (i + 1) * per;
            let range = start.min(conns.len())..((i + 2) * per).min(conns.len());
            if range.is_empty() {
                continue;
            }
            let job = Job {
                deliveries: conns.clone(),
                range,
                _done: done_tx.clone(),
            };
            // A helper that has ended: its share is the dispatcher's.
            if let Err(job) = helper.send(job) {
                mine.push(job.into_inner().range.clone());
            }
        }
        drop(done_tx);
        for range in mine {
            for (conn, frames) in &conns[range] {
                deliver(server, conn, frames);
            }
        }
        // Helpers never wait for a client: each job's sender is dropped as soon as its
        // share is written (or the job is dropped unwritten), and then this returns.
        let _ = done_rx.recv();
    }

    /// Start the helpers not started yet (as many as the machine's cores allow, less
    /// the dispatcher); those that cannot start are done without.
    fn start_helpers(&mut self, server: &Server) {
        while self.helpers.len() + 1 < self.shares {
            let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded::<Job>();
            let srv = server.clone();
            // The stack of a connection thread: a helper may call the application's
            // logger (a client cut off). Address space only.
            let stack = server.config().stack_size;
            let started = server.spawn("wsrpc-fanout", stack, move || {
                let _running = Running::new(srv.fanout_threads());
                while let Ok(job) = jobs_rx.recv() {
                    for (conn, frames) in &job.deliveries[job.range.clone()] {
                        deliver(&srv, conn, frames);
                    }
                }
            });
            if let Err(e) = started {
                warn_limited!("could not start a fan-out thread: {e}");
                self.shares = self.helpers.len() + 1;
                return;
            }
            self.helpers.push(jobs_tx);
        }
    }
}

/// Counts a helper thread in `Stats::fanout_threads` while it runs (a panic included).
struct Running<'a>(&'a AtomicUsize);

impl<'a> Running<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Running(count)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Write events to one subscriber, without waiting; one whose outgoing queue is full
/// is cut off (1008).
pub(crate) fn deliver(server: &Server, conn: &Arc<Conn>, frames: &Frames) {
    if !conn.push(server, frames.as_slice()) {
        warn_limited!(
            "client {} let its outgoing queue fill up; disconnecting it",
            conn.session.socket_id
        );
        Counters::count(&server.counters().slow_clients_dropped);
        conn.drop_connection(1008, "outgoing queue full");
    }
}

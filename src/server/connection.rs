//! One client connection after its handshake (`handshake.rs`): the thread that reads
//! and answers requests, and a writer thread, started only while events are queued,
//! for what the server pushes.
//!
//! Calls are answered on the reading thread itself (no hand-off on the hot path). While
//! a handler runs, the reader is parked in `reader_slot`; if the handler is still
//! running when the dispatcher's watch looks twice, the watch gives the reader to a new
//! thread so the connection's later requests are not held up. The old thread sends its
//! reply and ends.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

use super::Server;
use super::admission::{Budget, Counters, Slot};
use super::calls::{self, Session};
use super::config::{DisconnectInfo, FREE_MESSAGE_BYTES};
use super::dispatcher::Command;
use super::handshake;
use super::registry::View;
use super::threads::Next;
use crate::error::Error;
use crate::lock;
use crate::log_limit::warn_limited;
use crate::protocol::Codec;
use crate::transport::{
    ConnStream, Cutoff, Idle, IntakeLimits, Sink, close_info, is_timeout, message,
};

/// The reading half of a connection. Always boxed: it moves between threads and
/// slots, and an idle connection's thread should keep its stack to two pages.
pub(super) type Reader = Box<WebSocket<ConnStream>>;

/// Queued frames a writer thread sends in one write, at most: 64, or as many as
/// reach 16 KiB (each subscriber's batch is a copy of the shared event frames).
const WRITE_AT_ONCE: usize = 64;
const WRITE_BYTES_AT_ONCE: usize = 16 << 10;
/// Writer threads only encode frame headers and write.
pub(crate) const WRITER_STACK: usize = 64 << 10;
/// How long an ended connection waits for its writer thread to stop.
const WRITER_STOP: Duration = Duration::from_secs(1);

/// How a writer thread left a connection.
enum Served {
    /// It ended, or its writing is over: the writer flag is cleared.
    Done,
    /// Its queue was empty: the flag was cleared, and may be another writer's now.
    Released,
    /// Others wait for a writer: it queues again, the flag still set.
    Yielded,
}

/// A writer thread of the pool: serves connections until the pool has none for it.
pub(crate) fn writer_thread(server: Server) {
    let mut next = server.writers().started();
    while let Next::Serve(conn) = next {
        conn.write_queued(&server);
        next = server.writers().next();
    }
}

/// Something to write to a client from outside its reading thread.
pub(crate) enum Outgoing {
    Frame(Message),
    Close(u16, String),
    /// Write the replies the reader holds back (it is busy in a handler).
    Flush,
    /// The connection ended: the writer may stop.
    Stop,
}

pub(crate) struct Conn {
    pub session: Session,
    pub sink: Arc<Sink>,
    /// Unbounded so that an idle connection holds no preallocated slots (a bounded
    /// crossbeam channel of 1024 allocates 64 KiB up front); `queued` enforces the bound.
    outbox: Sender<Outgoing>,
    inbox: Receiver<Outgoing>,
    queued: AtomicUsize,
    capacity: usize,
    writer_running: AtomicBool,
    finished: AtomicBool,
    /// The reader, while the thread that owns it runs a handler. Whichever thread
    /// finishes a handler first takes it back and reads on; the others end.
    reader_slot: Mutex<Option<Reader>>,
    /// Whether the reader is parked (a hint for the watch: it may lag for an instant).
    parked: AtomicBool,
    /// Counts parks, so the watch can tell one long handler from several short ones.
    park_epoch: AtomicU64,
    /// `park_epoch` as the dispatcher's last scan saw it (only the dispatcher uses it).
    seen_epoch: AtomicU64,
    /// Handlers running for this connection now.
    in_flight: AtomicUsize,
    /// Whether the last scan found `max_calls_in_flight` reached (logged once).
    at_call_limit: AtomicBool,
    /// Why the server dropped the connection, if it did.
    dropped_for: Mutex<Option<(u16, String)>>,
    /// Frames the writer took but could not send (the connection had ended).
    unsent: Mutex<Vec<Message>>,
    /// Signalled when a writer thread ends.
    writer_gone: (Mutex<()>, Condvar),
    /// The token of the parked session this connection resumes.
    pub resumes: Option<String>,
    /// Its place among the open connections: given back when the connection ends,
    /// not when the thread that accepted it does (a slow handler hands reading over).
    slot: Mutex<Option<Slot>>,
    /// The codec events are sent in: 0 until settled (JSON meanwhile), then
    /// `Codec::index() + 1`. Declared at the handshake or taken from the first frame.
    codec: AtomicU8,
}

impl Conn {
    pub(super) fn new(
        session: Session,
        sink: Arc<Sink>,
        queue: usize,
        codec: Option<Codec>,
    ) -> Self {
        let (outbox, inbox) = crossbeam_channel::unbounded();
        Conn {
            session,
            sink,
            outbox,
            inbox,
            queued: AtomicUsize::new(0),
            capacity: queue.max(1),
            writer_running: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            reader_slot: Mutex::new(None),
            parked: AtomicBool::new(false),
            park_epoch: AtomicU64::new(0),
            seen_epoch: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            at_call_limit: AtomicBool::new(false),
            dropped_for: Mutex::new(None),
            unsent: Mutex::new(Vec::new()),
            writer_gone: (Mutex::new(()), Condvar::new()),
            resumes: None,
            slot: Mutex::new(None),
            codec: AtomicU8::new(codec.map_or(0, |c| c.index() as u8 + 1)),
        }
    }

    /// The frames queued for this (ended) connection that its writer did not take.
    pub(crate) fn take_unsent(&self) -> Vec<Message> {
        let mut unsent = std::mem::take(&mut *lock(&self.unsent));
        while let Ok(item) = self.inbox.try_recv() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            if let Outgoing::Frame(message) = item {
                unsent.push(message);
            }
        }
        unsent
    }

    /// The codec of the connection's events.
    pub(crate) fn codec(&self) -> Codec {
        match self.codec.load(Ordering::Relaxed) {
            0 => Codec::Json,
            n => Codec::ALL[usize::from(n - 1)],
        }
    }

    /// Take the first request's codec as the connection's, if none was declared.
    fn settle_codec(&self, codec: Codec) {
        if self.codec.load(Ordering::Relaxed) != 0 {
            return;
        }
        let settled = codec.index() as u8 + 1;
        let _ = self
            .codec
            .compare_exchange(0, settled, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Queue a frame for the writer thread; `false` when the queue is full.
    pub(crate) fn push(self: &Arc<Self>, server: &Server, item: Outgoing) -> bool {
        let finished = self.finished.load(Ordering::SeqCst);
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            // An ended connection is not a slow client; its session keeps what fit.
            return finished;
        }
        let _ = self.outbox.send(item);
        if finished {
            // Kept for the session, if it is parked (`take_unsent`).
            return true;
        }
        if !self.writer_running.swap(true, Ordering::SeqCst) {
            server.start_writing(self.clone());
        }
        true
    }

    /// Send what is queued, on a writer thread of the pool, until the queue is empty,
    /// the connection ends, or other connections wait for a writer (then this one
    /// queues again behind them).
    pub(crate) fn write_queued(self: &Arc<Self>, server: &Server) {
        match self.write_frames(server) {
            Served::Done => {
                // Say it ended: `finish` waits for this before the dispatcher takes
                // what is left in the queue.
                let _guard = lock(&self.writer_gone.0);
                self.writer_running.store(false, Ordering::SeqCst);
                self.writer_gone.1.notify_all();
            }
            // Only `finish` waits for the flag, and only once `finished` is set: the
            // flag was cleared before this look, so a finish that set it later sees it
            // clear without waiting. Most releases take no lock.
            Served::Released if self.finished.load(Ordering::SeqCst) => {
                let _guard = lock(&self.writer_gone.0);
                self.writer_gone.1.notify_all();
            }
            Served::Released => {}
            // Still ours: `writer_running` stays set while it waits in the pool.
            Served::Yielded => server.start_writing(self.clone()),
        }
    }

    /// Write queued frames until the queue is empty, the connection ended, or others
    /// wait for a writer.
    fn write_frames(&self, server: &Server) -> Served {
        loop {
            let next = self.inbox.try_recv();
            if next.is_ok() {
                self.queued.fetch_sub(1, Ordering::SeqCst);
            }
            match next {
                Ok(Outgoing::Frame(message)) => {
                    // The frames queued behind it go out in the same write.
                    let mut bytes = message.len();
                    let mut frames = vec![message];
                    let mut after = None;
                    while frames.len() < WRITE_AT_ONCE
                        && bytes < WRITE_BYTES_AT_ONCE
                        && let Ok(item) = self.inbox.try_recv()
                    {
                        self.queued.fetch_sub(1, Ordering::SeqCst);
                        match item {
                            Outgoing::Frame(message) => {
                                bytes += message.len();
                                frames.push(message);
                            }
                            other => {
                                after = Some(other);
                                break;
                            }
                        }
                    }
                    // Frames that cannot go out are handed back for a parked session
                    // (all of them: some may reach the client twice, none is lost).
                    if self.finished.load(Ordering::SeqCst)
                        || self.sink.send_all(frames.iter().cloned()).is_err()
                    {
                        lock(&self.unsent).extend(frames);
                        // A write that failed ends the connection: its reader wakes and
                        // finishes it, and no more frames pile up for a dead client.
                        self.sink.shutdown();
                        return Served::Done;
                    }
                    match after {
                        Some(Outgoing::Close(code, reason)) => {
                            let _ = self.sink.close(code, &reason);
                        }
                        Some(Outgoing::Stop) => return Served::Done,
                        _ => {}
                    }
                }
                Ok(Outgoing::Close(code, reason)) => {
                    let _ = self.sink.close(code, &reason);
                }
                Ok(Outgoing::Flush) => {
                    let _ = self.sink.flush();
                }
                Ok(Outgoing::Stop) => return Served::Done,
                Err(_) => {
                    // Empty: let go, unless a frame slipped in meanwhile (then whoever
                    // sets the flag first writes it).
                    self.writer_running.store(false, Ordering::SeqCst);
                    if self.inbox.is_empty() || self.writer_running.swap(true, Ordering::SeqCst) {
                        return Served::Released;
                    }
                }
            }
            if self.finished.load(Ordering::SeqCst) {
                return Served::Done;
            }
            if server.writers().others_waiting() && !self.inbox.is_empty() {
                return Served::Yielded;
            }
        }
    }

    /// A handler runs long: have the writer send the replies held back before it
    /// (answers to earlier requests of the same read), rather than let them wait for it.
    pub(crate) fn flush_soon(self: &Arc<Self>, server: &Server) {
        if self.sink.is_holding() {
            self.push(server, Outgoing::Flush);
        }
    }

    /// Start the close handshake from outside the reading thread.
    pub(crate) fn close(self: &Arc<Self>, server: &Server, code: u16, reason: &str) {
        if !self.push(server, Outgoing::Close(code, reason.to_owned())) {
            self.drop_connection(code, reason);
        }
    }

    /// End the connection at once (no close handshake), recording why.
    pub(crate) fn drop_connection(&self, code: u16, reason: &str) {
        lock(&self.dropped_for).get_or_insert_with(|| (code, reason.to_owned()));
        self.sink.shutdown();
    }

    pub(crate) fn in_handler(&self) -> bool {
        self.parked.load(Ordering::SeqCst)
    }

    /// Whether the reader has stayed parked by the same handler since the last scan.
    pub(crate) fn same_handler_as_last_scan(&self) -> bool {
        let now = self.park_epoch.load(Ordering::SeqCst);
        self.seen_epoch.swap(now, Ordering::Relaxed) == now
    }

    /// A handler has held the parked reader since the last scan: give the reader to a
    /// new thread, unless `max_calls_in_flight` handlers already run for this
    /// connection (then its later requests wait: backpressure). The slot stays locked
    /// until the new thread has the reader, so a failed spawn puts it back.
    pub(crate) fn hand_off(self: &Arc<Self>, server: &Server) {
        if self.in_flight.load(Ordering::SeqCst) >= server.config().max_calls_in_flight {
            if !self.at_call_limit.swap(true, Ordering::Relaxed) {
                warn_limited!(
                    "client {} has max_calls_in_flight handlers running; its next requests wait",
                    self.session.socket_id
                );
            }
            return;
        }
        self.at_call_limit.store(false, Ordering::Relaxed);
        let Ok(mut slot) = self.reader_slot.try_lock() else {
            return;
        };
        let Some(reader) = slot.take() else {
            return;
        };
        if !server.handoffs().try_add() {
            // Every thread the cap allows runs a slow handler: this connection's next
            // requests wait for its own handler, as at max_calls_in_flight.
            Counters::count(&server.counters().handoffs_at_cap);
            *slot = Some(reader);
            warn_limited!(
                "max_handoff_threads ({}) slow handlers run; client {}'s next requests wait",
                server.config().max_handoff_threads,
                self.session.socket_id
            );
            return;
        }
        log::debug!(
            "a slow handler holds client {}; reading on in a new thread",
            self.session.socket_id
        );
        if let Err(reader) = read_on_new_thread(server, self.clone(), reader) {
            server.handoffs().remove();
            *slot = Some(reader);
        }
    }

    fn park(&self, server: &Server, reader: Reader) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        *lock(&self.reader_slot) = Some(reader);
        self.park_epoch.fetch_add(1, Ordering::SeqCst);
        self.parked.store(true, Ordering::SeqCst);
        let asleep = server.watch_asleep();
        if asleep.load(Ordering::SeqCst) && asleep.swap(false, Ordering::SeqCst) {
            server.try_dispatch(Command::Wake);
        }
    }

    /// The reader back, or `None` if another thread now reads for this connection.
    fn unpark(&self) -> Option<Reader> {
        self.parked.store(false, Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        lock(&self.reader_slot).take()
    }
}

/// Serve one accepted TCP connection: its handshake on the calling thread, then its
/// read loop on a new one (or on this one if no thread can be started).
pub(crate) fn serve(server: Server, stream: TcpStream, slot: Slot) {
    let key = server.next_key();
    if !server.handshake_started(key, &stream) {
        return;
    }
    let opened = handshake::open(&server, key, stream);
    server.handshake_ended(key);
    let Some((conn, mut reader, info)) = opened else {
        return;
    };
    // The limits hold even if the socket refuses the shorter read timeout (it never
    // does on an open socket); a timed-out message is then noticed at the next tick.
    let _ = reader
        .get_mut()
        .limit(intake_limits(&server, &slot), &server.config().heartbeat());
    *lock(&conn.slot) = Some(slot);
    if !server.register_connection(conn.clone()) {
        let _ = conn.sink.close(1001, "server shutting down");
        conn.sink.shutdown();
        return;
    }
    log::debug!("client {} connected to {}", info.socket_id, info.namespace);
    server.hooks().connection(&info);
    // The handshake parses HTTP deep in this thread's stack. The connection lives on
    // in a fresh thread, so an idle connection keeps only the stack pages its read loop
    // touched (two: see `Reader`), not the handshake's five. Without a new thread it
    // goes on here.
    if let Err(reader) = read_on_new_thread(&server, conn.clone(), reader) {
        read_loop(server, conn, reader);
    }
}

/// What this connection's messages may cost.
fn intake_limits(server: &Server, slot: &Slot) -> IntakeLimits {
    let config = server.config();
    IntakeLimits {
        bytes: slot.message_bytes(Budget {
            free: FREE_MESSAGE_BYTES,
            per_address: config.max_message_bytes_per_ip,
            total: config.max_message_bytes,
        }),
        message_timeout: config.message_timeout,
        max_message_size: config.max_message_size,
        max_frame_size: config.max_frame_size.min(config.max_message_size),
    }
}

/// Run the read loop of `conn` on a new thread; if none can be started, the reader
/// comes back.
fn read_on_new_thread(server: &Server, conn: Arc<Conn>, reader: Reader) -> Result<(), Reader> {
    // Through a shared slot, so that a failed spawn can hand the reader back.
    let carrier = Arc::new(Mutex::new(Some(reader)));
    let (srv, handed) = (server.clone(), carrier.clone());
    let spawned = server.spawn("wsrpc-conn", server.config().stack_size, move || {
        if let Some(reader) = lock(&handed).take() {
            read_loop(srv, conn, reader);
        }
    });
    spawned.map_err(|e| {
        warn_limited!("could not start a reader thread: {e}");
        lock(&carrier)
            .take()
            .expect("a thread that never started kept nothing")
    })
}

fn read_loop(server: Server, conn: Arc<Conn>, mut reader: Reader) {
    let mut view = View::new(server.registry(), &conn.session.namespace);
    let mut peer_close = None;
    let heartbeat = server.config().heartbeat();
    let budget = reader.get_ref().message_bytes();
    let error = loop {
        let message = match reader.read() {
            Ok(message) => message,
            Err(e) => {
                if let Some(cutoff) = reader.get_mut().take_cutoff() {
                    cut_off(&server, &conn, cutoff);
                    break e;
                }
                // The read timeout is the heartbeat's tick.
                if is_timeout(&e) {
                    if reader.get_mut().idle(&heartbeat) == Idle::Dead {
                        Counters::count(&server.counters().peers_timed_out);
                        log::debug!("client {} timed out", conn.session.socket_id);
                        conn.drop_connection(1006, "peer timed out");
                        break tungstenite::Error::ConnectionClosed;
                    }
                    continue;
                }
                if conn.sink.is_stalled() {
                    log::debug!("client {} stopped reading", conn.session.socket_id);
                    Counters::count(&server.counters().peers_timed_out);
                    conn.drop_connection(1006, "peer timed out");
                }
                break e;
            }
        };
        // The bytes of a data message stay counted until it is answered.
        let held = reader.get_mut().took(&message);
        let (payload, binary): (&[u8], bool) = match &message {
            Message::Text(text) => (text.as_bytes(), false),
            Message::Binary(bytes) => (bytes, true),
            Message::Close(frame) => {
                conn.sink.peer_closed();
                peer_close = Some(close_info(frame.as_ref()));
                continue;
            }
            _ => continue,
        };
        if reader.get_ref().shrink_due() {
            reader = shrink(reader);
        }
        conn.park(&server, reader);
        answer(&server, &conn, &mut view, binary, payload);
        if let Some(budget) = &budget {
            budget.give_back(held);
        }
        match conn.unpark() {
            Some(back) => reader = back,
            None => {
                // Another thread reads for this connection now: this reply goes out
                // at once rather than at this thread's next read.
                if let Err(e) = conn.sink.flush() {
                    log::debug!("reply to {} not sent: {e}", conn.session.socket_id);
                }
                // This thread was the one a hand-off added.
                server.handoffs().remove();
                return;
            }
        }
    };
    finish(&server, &conn, peer_close, error);
}

/// The reader anew, with a small buffer: tungstenite keeps its read buffer at the
/// largest frame it has read, and an idle connection should not hold on to that. Only
/// when the reader holds no bytes it has not returned (`ConnStream::shrink_due`).
#[inline(never)]
fn shrink(reader: Reader) -> Reader {
    let config = *reader.get_config();
    let mut stream = (*reader).into_inner();
    stream.shrunk();
    Box::new(WebSocket::from_raw_socket(
        stream,
        Role::Server,
        Some(config),
    ))
}

/// Close a connection the reader stopped on purpose (`Cutoff`), and count it.
#[inline(never)]
fn cut_off(server: &Server, conn: &Conn, cutoff: Cutoff) {
    let counters = server.counters();
    let (counter, code, reason) = match cutoff {
        Cutoff::TooSlow => (&counters.messages_timed_out, 1008, "message took too long"),
        Cutoff::OverBudget => (
            &counters.over_message_budget,
            1013,
            "too many message bytes in flight",
        ),
        Cutoff::TooBig => (&counters.oversized_messages, 1009, "message too big"),
        Cutoff::ControlTooBig => (&counters.protocol_errors, 1002, "control frame too big"),
    };
    Counters::count(counter);
    // Debug only: a client can make this happen as often as it connects.
    log::debug!(
        "closing client {} ({code}): {reason}",
        conn.session.socket_id
    );
    // Not behind a writer blocked on this peer.
    conn.sink.try_close(code, reason);
    conn.drop_connection(code, reason);
}

/// Answer one request frame. Out of line: what handlers put on the stack stays out
/// of the read loop's own frame, the one an idle connection keeps resident.
#[inline(never)]
fn answer(server: &Server, conn: &Conn, view: &mut View, binary: bool, payload: &[u8]) {
    // Replies use the codec of the request; the first request also settles the
    // connection's codec for events, unless the handshake declared it.
    let codec = Codec::of_frame(binary, payload);
    conn.settle_codec(codec);
    let table = view.current(server.registry(), &conn.session.namespace);
    if let Some(reply) = calls::handle_frame(server, &conn.session, table, codec, payload) {
        send_reply(conn, codec, reply);
    }
}

fn send_reply(conn: &Conn, codec: Codec, reply: Vec<u8>) {
    match message(codec, reply) {
        Ok(frame) => {
            if let Err(e) = conn.sink.send_later(frame) {
                log::debug!("reply to {} not sent: {e}", conn.session.socket_id);
            }
        }
        Err(e) => log::error!("a reply was not UTF-8: {e}"),
    }
}

/// The connection is over: answer protocol errors with a close frame, tell the
/// dispatcher, and report how it ended.
#[inline(never)]
fn finish(
    server: &Server,
    conn: &Arc<Conn>,
    peer_close: Option<(u16, String)>,
    error: tungstenite::Error,
) {
    use tungstenite::error::{Error as WsError, ProtocolError};
    let refusal = match &error {
        WsError::ConnectionClosed | WsError::AlreadyClosed => None,
        WsError::Io(_) | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Capacity(e) => {
            Counters::count(&server.counters().oversized_messages);
            Some((1009, format!("message too big: {e}")))
        }
        WsError::Utf8(_) => {
            Counters::count(&server.counters().protocol_errors);
            Some((1007, "text frame is not valid UTF-8".to_owned()))
        }
        WsError::Protocol(e) => {
            Counters::count(&server.counters().protocol_errors);
            Some((1002, e.to_string()))
        }
        other => Some((1011, other.to_string())),
    };
    if let Some((code, reason)) = &refusal {
        warn_limited!(
            "closing client {} ({code}): {reason}",
            conn.session.socket_id
        );
        let _ = conn.sink.close(*code, reason);
        server.report(Error::Protocol(
            format!("client {}: {reason}", conn.session.socket_id).into(),
        ));
    }
    conn.finished.store(true, Ordering::SeqCst);
    conn.queued.fetch_add(1, Ordering::SeqCst);
    let _ = conn.outbox.send(Outgoing::Stop);
    conn.sink.shutdown();
    // The writer fails fast on the shut socket; once it is gone, what it did not send
    // is all in the queue (or handed back) for the dispatcher to park with the session.
    let deadline = Instant::now() + WRITER_STOP;
    let mut guard = lock(&conn.writer_gone.0);
    while conn.writer_running.load(Ordering::SeqCst) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        guard = conn
            .writer_gone
            .1
            .wait_timeout(guard, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    drop(guard);
    // A client that said goodbye, or that the server dropped for cause, does not
    // come back to its session; one that just vanished (or timed out) may.
    let dropped = lock(&conn.dropped_for).clone();
    let resumable = peer_close.is_none()
        && refusal.is_none()
        && dropped.as_ref().is_none_or(|(code, _)| *code == 1006)
        && !server.is_closing();
    server.dispatch(Command::Disconnect {
        key: conn.session.key,
        resumable,
    });
    let (code, reason) = dropped
        .or(refusal)
        .or(peer_close)
        .unwrap_or((1006, String::new()));
    log::debug!(
        "client {} disconnected ({code} {reason})",
        conn.session.socket_id
    );
    server.hooks().disconnection(&DisconnectInfo {
        socket_id: conn.session.socket_id.clone(),
        namespace: conn.session.namespace.clone(),
        code,
        reason,
    });
    lock(&conn.slot).take();
}

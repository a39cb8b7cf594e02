//! One client connection after its handshake (`handshake.rs`): the thread that reads
//! and answers requests, and what the server pushes to it (events, close frames),
//! written by the pushing thread without waiting while the socket has room, and by a
//! writer thread of the pool only once the peer falls behind.
//!
//! Calls are answered on the reading thread itself (no hand-off on the hot path). While
//! a handler runs, the reader is parked in `reader_slot`; if the handler is still
//! running when the dispatcher's watch looks twice, the watch gives the reader to a new
//! thread so the connection's later requests are not held up. The old thread sends its
//! reply and ends.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tungstenite::protocol::Role;
use tungstenite::{Bytes, Message, WebSocket};

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
use crate::sink::{Offer, Progress, Sink};
use crate::transport::{ConnStream, Cutoff, Idle, IntakeLimits, close_info, is_timeout, message};

/// The reading half of a connection. Always boxed: it moves between threads and
/// slots, and an idle connection's thread should keep its stack to two pages.
pub(super) type Reader = Box<WebSocket<ConnStream>>;

/// Writer threads only encode frame headers and write.
pub(crate) const WRITER_STACK: usize = 64 << 10;
/// How long an ended connection waits for the writer of its queue to let go.
const WRITER_STOP: Duration = Duration::from_secs(1);

/// A writer thread of the pool: serves connections until the pool has none for it.
pub(crate) fn writer_thread(server: Server) {
    let mut next = server.writers().started();
    while let Next::Serve(conn) = next {
        conn.write_queued(&server);
        next = server.writers().next();
    }
}

pub(crate) struct Conn {
    pub session: Session,
    /// Where everything sent to the client goes; it queues the events that the
    /// socket did not take at once, at most `capacity` of them.
    pub sink: Arc<Sink>,
    capacity: usize,
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
        Conn {
            session,
            sink,
            capacity: queue.max(1),
            finished: AtomicBool::new(false),
            reader_slot: Mutex::new(None),
            parked: AtomicBool::new(false),
            park_epoch: AtomicU64::new(0),
            seen_epoch: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            at_call_limit: AtomicBool::new(false),
            dropped_for: Mutex::new(None),
            resumes: None,
            slot: Mutex::new(None),
            codec: AtomicU8::new(codec.map_or(0, |c| c.index() as u8 + 1)),
        }
    }

    /// The events queued for this (ended) connection that were not written.
    pub(crate) fn take_unsent(&self) -> Vec<Bytes> {
        self.sink.take_unsent()
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

    /// Send event frames (whole, each encoded once for every subscriber) without
    /// waiting for the client: written at once, in one write, while its socket has
    /// room, else queued for a writer thread. `false` when that would put more than
    /// `capacity` events in its queue.
    pub(crate) fn push(self: &Arc<Self>, server: &Server, frames: &[Bytes]) -> bool {
        match self.sink.offer(frames, self.capacity) {
            Offer::Sent | Offer::Queued | Offer::Closed => true,
            Offer::HandOver => {
                self.hand_over(server);
                true
            }
            // An ended connection is not a slow client.
            Offer::Full => self.finished.load(Ordering::SeqCst),
        }
    }

    /// The socket is full: a writer thread of the pool finishes what is queued.
    fn hand_over(self: &Arc<Self>, server: &Server) {
        Counters::count(&server.counters().writes_handed_over);
        server.start_writing(self.clone());
    }

    /// On a writer thread of the pool: write what is queued, waiting for the client
    /// to make room, until the queue is empty, the connection ends, or other
    /// connections wait for a writer (then this one queues again behind them).
    pub(crate) fn write_queued(self: &Arc<Self>, server: &Server) {
        // The connection's own thread may have taken it up meanwhile.
        if !self.sink.take_up() {
            return;
        }
        loop {
            match self.sink.write_some() {
                Progress::Empty | Progress::Failed => return,
                Progress::More if server.writers().others_waiting() => {
                    // Still to be written: it waits in the pool again.
                    self.sink.hand_back();
                    server.start_writing(self.clone());
                    return;
                }
                Progress::More => {}
            }
        }
    }

    /// A handler runs long: have the writer send the replies held back before it
    /// (answers to earlier requests of the same read), rather than let them wait for it.
    pub(crate) fn flush_soon(self: &Arc<Self>, server: &Server) {
        if self.sink.is_holding() && self.sink.offer_held() == Offer::HandOver {
            self.hand_over(server);
        }
    }

    /// Start the close handshake from outside the reading thread, without waiting.
    pub(crate) fn close(self: &Arc<Self>, server: &Server, code: u16, reason: &str) {
        if self.sink.offer_close(code, reason) == Offer::HandOver {
            self.hand_over(server);
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
    conn.sink.shutdown();
    // A write under way fails fast on the shut socket; once its writer has let go,
    // what was not written is in the queue for the dispatcher to park with the session.
    conn.sink.wait_unowned(crate::deadline(WRITER_STOP));
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

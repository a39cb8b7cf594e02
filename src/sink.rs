//! The write half of a connection. Every thread that sends to one peer goes through
//! its [`Sink`], which keeps frames whole and in order and honours the close
//! handshake.
//!
//! What is sent is queued as encoded frames; whoever finds nobody writing becomes the
//! writer until the queue is empty. Two kinds of sender:
//! - threads that must never wait for a peer (the dispatcher fanning an event out to
//!   thousands of subscribers) [`Sink::offer`] frames: it is written at once with a
//!   send that does not wait ([`Socket::try_write`]), and only when the kernel's send
//!   buffer is full is the rest handed over ([`Offer::HandOver`]) to a thread that may
//!   wait, which then calls [`Sink::write_some`] until the queue is empty;
//! - the connection's own threads (its reader sending replies, pongs and close frames;
//!   a client's calls) send and wait until their bytes are written: behind what is
//!   queued already, which they write themselves if it waits for a writer thread, so
//!   they only ever wait for their own peer.
//!
//! No lock is held across a socket write: the writer takes its bytes out of the
//! queue, writes them, and comes back to account for them. Others meanwhile queue
//! behind it.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Bytes, Message};

use crate::lock;
use crate::protocol::Codec;
use crate::socket::Socket;

/// Frames written in one write, at most: 64, or as many as reach 64 KiB.
const WRITE_AT_ONCE: usize = 64;
const WRITE_BYTES_AT_ONCE: usize = 64 << 10;

/// Held-back replies are written once they reach this size, whatever the reader has
/// left to do.
const HOLD_AT_MOST: usize = 16 << 10;

/// The buffer of held-back frames is kept between writes up to this capacity.
const HELD_KEPT: usize = 1 << 10;

/// Frames larger than this do not keep the encoder's buffer once sent.
const LARGE_FRAME: usize = 64 << 10;

/// How often a sender waiting for another thread's write looks whether the
/// connection has ended meanwhile.
const RECHECK: Duration = Duration::from_millis(50);

/// The write half of a connection.
pub(crate) struct Sink {
    socket: Socket,
    /// A write waited past the write timeout: the peer has stopped reading.
    stalled: AtomicBool,
    /// The connection is cut, or a write failed: nothing more is written.
    dead: AtomicBool,
    /// `Out::held` has frames (read without the lock before each socket read).
    holding: AtomicBool,
    out: Mutex<Out>,
    /// Signalled when bytes were written or the writer let go (for senders waiting).
    progress: Condvar,
}

struct Out {
    ctx: WebSocketContext,
    /// Encoded frames not yet queued: replies held back while the reader still has
    /// requests in its buffer, so that pipelined calls are answered in one write.
    held: Vec<u8>,
    role: Role,
    config: WebSocketConfig,
    /// A close frame was seen or queued: no more data frames (RFC 6455, 5.5.1).
    closing: bool,
    /// We queued our close frame: nothing at all may follow it.
    close_sent: bool,
    /// Frames to write, in order; of the first, `front_sent` bytes are written.
    queue: VecDeque<Chunk>,
    front_sent: usize,
    /// Events in `queue`: what the outgoing bound counts.
    events: usize,
    /// A thread owns the writing of `queue` (it may be writing right now, without
    /// the lock, or be waiting for a writer thread to take it up).
    writing: bool,
    /// The writing was handed over and no thread has taken it up yet: whoever comes
    /// first (a writer of the pool, or a connection's own thread that would otherwise
    /// wait for one) takes it.
    handed: bool,
    /// Bytes accepted and bytes written since the connection opened: a sender waits
    /// until `written` reaches the end of its own bytes.
    accepted: u64,
    written: u64,
    /// Senders waiting on `progress`.
    waiters: usize,
}

/// A queued frame, or several held-back replies.
struct Chunk {
    bytes: Bytes,
    /// An event (it counts against the bound, and a parked session keeps it).
    event: bool,
}

/// What [`Sink::offer`] did with frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Written, all of it.
    Sent,
    /// Queued behind a write under way (or kept for the session of a connection
    /// that has ended).
    Queued,
    /// Queued; the socket is full. The caller must have a thread that may wait call
    /// [`Sink::write_some`] until it reports the queue empty.
    HandOver,
    /// The bound was reached: nothing was queued.
    Full,
    /// The connection is closing: no more data frames.
    Closed,
}

/// What [`Sink::write_some`] left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// The queue is empty; the writer has let go.
    Empty,
    /// More is queued; the caller is still the writer.
    More,
    /// The connection has ended; the writer has let go.
    Failed,
}

impl Sink {
    pub(crate) fn new(socket: Socket, role: Role, config: WebSocketConfig) -> Self {
        // This context only encodes: no read buffer, and every frame comes out at once.
        let config = config.write_buffer_size(0).read_buffer_size(0);
        Sink {
            socket,
            stalled: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            holding: AtomicBool::new(false),
            out: Mutex::new(Out {
                ctx: WebSocketContext::new(role, Some(config)),
                held: Vec::new(),
                role,
                config,
                closing: false,
                close_sent: false,
                queue: VecDeque::new(),
                front_sent: 0,
                events: 0,
                writing: false,
                handed: false,
                accepted: 0,
                written: 0,
                waiters: 0,
            }),
            progress: Condvar::new(),
        }
    }

    pub(crate) fn socket(&self) -> &Socket {
        &self.socket
    }

    /// Send one message and wait until it is written; after a close frame it is
    /// dropped and `AlreadyClosed` returned.
    pub(crate) fn send(&self, message: Message) -> Result<(), tungstenite::Error> {
        self.send_all([message])
    }

    /// Send messages in one write (with any replies held back before them), and wait.
    pub(crate) fn send_all(
        &self,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<(), tungstenite::Error> {
        let mut w = lock(&self.out);
        self.hold(&mut w, messages)?;
        self.write_held(w)
    }

    /// Send one message with the next write or socket read of this connection, rather
    /// than now: the connection's reader calls this for replies, and writes them all
    /// before its next socket read (`ConnStream`'s read: it has no whole frame left),
    /// or with [`Sink::flush`] (another thread reads now, or a handler runs long).
    pub(crate) fn send_later(&self, message: Message) -> Result<(), tungstenite::Error> {
        let mut w = lock(&self.out);
        self.hold(&mut w, [message])?;
        if w.held.len() >= HOLD_AT_MOST {
            return self.write_held(w);
        }
        Ok(())
    }

    /// Encode frames into the held-back bytes.
    fn hold(
        &self,
        w: &mut Out,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<(), tungstenite::Error> {
        if w.closing {
            return Err(tungstenite::Error::AlreadyClosed);
        }
        for message in messages {
            let large = message.len() > LARGE_FRAME;
            w.ctx.write(&mut Held(&mut w.held), message)?;
            if large {
                // The context keeps its output buffer at its largest size; an idle
                // connection should not hold on to the biggest frame it ever sent.
                w.ctx = WebSocketContext::new(w.role, Some(w.config));
            }
        }
        self.holding.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether replies are held back (a hint: [`Sink::flush`] looks again).
    pub(crate) fn is_holding(&self) -> bool {
        self.holding.load(Ordering::Acquire)
    }

    /// Write what [`Sink::send_later`] held back, and wait.
    pub(crate) fn flush(&self) -> Result<(), tungstenite::Error> {
        if !self.holding.load(Ordering::Acquire) {
            return Ok(());
        }
        self.write_held(lock(&self.out))
    }

    /// Write the held-back bytes and wait until they are out.
    fn write_held<'a>(&'a self, mut w: MutexGuard<'a, Out>) -> Result<(), tungstenite::Error> {
        self.holding.store(false, Ordering::Release);
        if w.held.is_empty() {
            return Ok(());
        }
        if w.writing || !w.queue.is_empty() || self.is_dead() {
            self.queue_held(&mut w);
            let end = w.accepted;
            return self.wait_written(w, end);
        }
        // The common case, a reply and nothing else to send: written straight from
        // the buffer, which is kept for the next one.
        let held = std::mem::take(&mut w.held);
        w.writing = true;
        w.accepted += held.len() as u64;
        drop(w);
        let written = write_all(&self.socket, &held);
        let mut w = lock(&self.out);
        if w.held.is_empty() && held.capacity() <= HELD_KEPT {
            w.held = held;
            w.held.clear();
        }
        match written {
            Ok(n) => {
                w.written += n as u64;
                // Others queued behind this write: still the writer, write them too.
                self.drain(w)
            }
            Err(e) => {
                self.fail(&mut w, &e, true);
                Err(tungstenite::Error::Io(e))
            }
        }
    }

    /// The held-back bytes, queued.
    fn queue_held(&self, w: &mut Out) {
        self.holding.store(false, Ordering::Release);
        if w.held.is_empty() {
            return;
        }
        let held = if w.held.capacity() > HELD_KEPT {
            std::mem::take(&mut w.held)
        } else {
            let copy = w.held.clone();
            w.held.clear();
            copy
        };
        Self::push(w, Bytes::from(held), false);
    }

    fn push(w: &mut Out, bytes: Bytes, event: bool) {
        if bytes.is_empty() {
            return;
        }
        w.accepted += bytes.len() as u64;
        w.events += usize::from(event);
        w.queue.push_back(Chunk { bytes, event });
    }

    /// Wait until `written` reaches `end`, writing if nobody else is.
    fn wait_written<'a>(
        &'a self,
        mut w: MutexGuard<'a, Out>,
        end: u64,
    ) -> Result<(), tungstenite::Error> {
        loop {
            if w.written >= end {
                return Ok(());
            }
            if self.is_dead() {
                return Err(gone());
            }
            if !w.writing || w.handed {
                // Nobody writes, or the writing waits for a writer of the pool (which
                // may all be busy with other clients): write it here.
                w.writing = true;
                w.handed = false;
                return self.drain(w);
            }
            w.waiters += 1;
            w = self
                .progress
                .wait_timeout(w, RECHECK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            w.waiters -= 1;
        }
    }

    /// As the writer, write until the queue is empty, waiting for room; then let go.
    fn drain<'a>(&'a self, mut w: MutexGuard<'a, Out>) -> Result<(), tungstenite::Error> {
        loop {
            if self.is_dead() {
                self.release(&mut w);
                return Err(gone());
            }
            if w.queue.is_empty() {
                self.release(&mut w);
                return Ok(());
            }
            let (back, written) = self.write_once(w, true);
            w = back;
            if let Err(e) = written {
                self.fail(&mut w, &e, true);
                return Err(tungstenite::Error::Io(e));
            }
        }
    }

    /// As the writer, write the front of the queue once (without the lock), waiting
    /// for room or not; how many bytes went out, of how many tried.
    fn write_once<'a>(
        &'a self,
        w: MutexGuard<'a, Out>,
        wait: bool,
    ) -> (MutexGuard<'a, Out>, io::Result<(usize, usize)>) {
        let mut batch: Vec<Bytes> = Vec::with_capacity(w.queue.len().min(WRITE_AT_ONCE));
        let mut tried = 0;
        for (i, chunk) in w.queue.iter().enumerate() {
            if i == WRITE_AT_ONCE || tried >= WRITE_BYTES_AT_ONCE {
                break;
            }
            let bytes = if i == 0 {
                chunk.bytes.slice(w.front_sent..)
            } else {
                chunk.bytes.clone()
            };
            tried += bytes.len();
            batch.push(bytes);
        }
        drop(w);
        let slices: Vec<IoSlice<'_>> = batch.iter().map(|b| IoSlice::new(b)).collect();
        let written = loop {
            let result = if wait {
                self.socket.write_waiting(&slices)
            } else {
                self.socket.try_write(&slices).unwrap_or(Ok(0))
            };
            match result {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(0) if wait && tried > 0 => break Err(io::ErrorKind::WriteZero.into()),
                other => break other,
            }
        };
        let mut w = lock(&self.out);
        if let Ok(n) = written {
            self.advance(&mut w, n);
        }
        (w, written.map(|n| (n, tried)))
    }

    /// `n` bytes from the front of the queue are written.
    fn advance(&self, w: &mut Out, mut n: usize) {
        w.written += n as u64;
        while n > 0 {
            let Some(front) = w.queue.front() else {
                break;
            };
            let left = front.bytes.len() - w.front_sent;
            if n < left {
                w.front_sent += n;
                break;
            }
            n -= left;
            w.front_sent = 0;
            if let Some(chunk) = w.queue.pop_front() {
                w.events = w.events.saturating_sub(usize::from(chunk.event));
            }
        }
        if w.waiters > 0 {
            self.progress.notify_all();
        }
    }

    /// The writer lets go.
    fn release(&self, w: &mut Out) {
        w.writing = false;
        w.handed = false;
        if w.waiters > 0 {
            self.progress.notify_all();
        }
    }

    /// A write failed: the connection is over (a write that waited past its timeout
    /// means a peer that stopped reading). The writer lets go.
    fn fail(&self, w: &mut Out, e: &io::Error, waited: bool) {
        if waited
            && matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            )
        {
            self.stalled.store(true, Ordering::SeqCst);
        }
        self.shutdown();
        self.release(w);
    }

    /// Send event frames (each whole and encoded: [`server_frame`]) without ever
    /// waiting for the peer, in one write while the socket has room; at most `limit`
    /// events stay queued.
    pub(crate) fn offer(&self, frames: &[Bytes], limit: usize) -> Offer {
        let mut w = lock(&self.out);
        if w.closing {
            return Offer::Closed;
        }
        if self.is_dead() {
            // Kept, as far as the bound allows, for the session if it is parked
            // ([`Sink::take_unsent`]). An ended connection is not a slow client.
            for frame in frames {
                if w.events < limit {
                    Self::push(&mut w, frame.clone(), true);
                }
            }
            return Offer::Queued;
        }
        if w.writing {
            if w.events + frames.len() > limit {
                return Offer::Full;
            }
            for frame in frames {
                Self::push(&mut w, frame.clone(), true);
            }
            return Offer::Queued;
        }
        w.writing = true;
        if !w.held.is_empty() || !w.queue.is_empty() {
            self.queue_held(&mut w);
            for frame in frames {
                Self::push(&mut w, frame.clone(), true);
            }
            return self.try_drain(w);
        }
        // The common case: the socket has room, and one send without waiting writes
        // the frames every subscriber shares. Nothing is copied or queued.
        let total: usize = frames.iter().map(Bytes::len).sum();
        w.accepted += total as u64;
        drop(w);
        let sent = match frames {
            [one] => self.socket.try_write(&[IoSlice::new(one)]),
            _ => {
                let slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
                self.socket.try_write(&slices)
            }
        };
        let mut w = lock(&self.out);
        let n = match sent {
            Some(Ok(n)) => n,
            // TLS: a writer thread writes them.
            None => 0,
            Some(Err(e)) => {
                // Kept whole for the session (as far as the bound allows), ahead of
                // anything queued meanwhile.
                Self::push_front(&mut w, &frames[..frames.len().min(limit)], 0);
                self.fail(&mut w, &e, false);
                return Offer::Queued;
            }
        };
        w.written += n as u64;
        if n == total {
            // Others may have queued behind this write meanwhile.
            return self.try_drain(w);
        }
        // The rest goes first (others queue only behind it while this thread is the
        // writer), for a writer that may wait.
        let mut skip = n;
        let mut first = 0;
        while skip >= frames[first].len() {
            skip -= frames[first].len();
            first += 1;
        }
        // The bound is checked by the next offer, once the writer has had its chance.
        Self::push_front(&mut w, &frames[first..], skip);
        w.handed = true;
        Offer::HandOver
    }

    /// Put event frames at the front of the queue, in order, `sent` bytes of the
    /// first already written.
    fn push_front(w: &mut Out, frames: &[Bytes], sent: usize) {
        for frame in frames.iter().rev() {
            w.queue.push_front(Chunk {
                bytes: frame.clone(),
                event: true,
            });
        }
        w.events += frames.len();
        w.front_sent = sent;
    }

    /// As the writer, write what the socket takes without waiting; `HandOver` if
    /// something is left.
    fn try_drain<'a>(&'a self, mut w: MutexGuard<'a, Out>) -> Offer {
        loop {
            if w.queue.is_empty() {
                self.release(&mut w);
                return Offer::Sent;
            }
            let (back, written) = self.write_once(w, false);
            w = back;
            match written {
                Ok((n, tried)) if n == tried => {}
                Ok(_) => {
                    w.handed = true;
                    return Offer::HandOver;
                }
                Err(e) => {
                    self.fail(&mut w, &e, false);
                    return Offer::Queued;
                }
            }
        }
    }

    /// Queue the replies held back (their handler runs long) and write what fits
    /// without waiting; `HandOver` as for [`Sink::offer`].
    pub(crate) fn offer_held(&self) -> Offer {
        let mut w = lock(&self.out);
        self.holding.store(false, Ordering::Release);
        self.queue_held(&mut w);
        self.try_own(w)
    }

    /// Start the close handshake without waiting for the peer; `HandOver` as for
    /// [`Sink::offer`].
    pub(crate) fn offer_close(&self, code: u16, reason: &str) -> Offer {
        let mut w = lock(&self.out);
        if w.close_sent {
            return Offer::Sent;
        }
        if let Err(e) = self.queue_close(&mut w, code, reason) {
            log::debug!("close frame not encoded: {e}");
            return Offer::Closed;
        }
        self.try_own(w)
    }

    /// Become the writer if nobody is, and write what fits without waiting.
    fn try_own<'a>(&'a self, mut w: MutexGuard<'a, Out>) -> Offer {
        if w.queue.is_empty() {
            return Offer::Sent;
        }
        if w.writing || self.is_dead() {
            return Offer::Queued;
        }
        w.writing = true;
        self.try_drain(w)
    }

    /// Take up writing that was handed over ([`Offer::HandOver`]); `false` if another
    /// thread took it up meanwhile, or it is over. Then call [`Sink::write_some`].
    pub(crate) fn take_up(&self) -> bool {
        let mut w = lock(&self.out);
        let handed = w.writing && w.handed;
        w.handed = false;
        handed
    }

    /// As the writer that took it up, hand the writing back (to wait in the pool
    /// behind other connections).
    pub(crate) fn hand_back(&self) {
        lock(&self.out).handed = true;
    }

    /// As the writer that took up a handed-over write ([`Sink::take_up`]): write the
    /// front of the queue, waiting for room.
    pub(crate) fn write_some(&self) -> Progress {
        let mut w = lock(&self.out);
        if self.is_dead() {
            self.release(&mut w);
            return Progress::Failed;
        }
        if w.queue.is_empty() {
            self.release(&mut w);
            return Progress::Empty;
        }
        let (mut w, written) = self.write_once(w, true);
        if let Err(e) = written {
            log::debug!("write failed: {e}");
            self.fail(&mut w, &e, true);
            return Progress::Failed;
        }
        if w.queue.is_empty() {
            self.release(&mut w);
            return Progress::Empty;
        }
        Progress::More
    }

    /// Start the close handshake with `code` and `reason` (once: later calls only
    /// wait), and wait until the close frame is written.
    pub(crate) fn close(&self, code: u16, reason: &str) -> Result<(), tungstenite::Error> {
        let mut w = lock(&self.out);
        // Already queued (by a thread that does not wait): see it written all the same.
        if !w.close_sent {
            self.queue_close(&mut w, code, reason)?;
        }
        let end = w.accepted;
        self.wait_written(w, end)
    }

    /// [`Sink::close`] unless a write is under way (it may be blocked on a peer that
    /// does not read) or the close frame does not fit the socket's buffer at once
    /// (over TLS it is written, waiting as a reply would): then `false`, and the
    /// caller cuts the connection.
    pub(crate) fn try_close(&self, code: u16, reason: &str) -> bool {
        let mut w = lock(&self.out);
        if w.close_sent {
            return true;
        }
        if w.writing || self.queue_close(&mut w, code, reason).is_err() {
            return false;
        }
        if !self.socket.writes_without_waiting() {
            // TLS: a close frame is a record of its own, written whole. It goes to the
            // caller's own peer, within the write timeout, as any reply would.
            w.writing = true;
            return self.drain(w).is_ok();
        }
        match self.try_own(w) {
            Offer::Sent => true,
            Offer::HandOver => {
                // Nobody may wait for this peer here: let go, and the caller cuts.
                self.release(&mut lock(&self.out));
                false
            }
            _ => false,
        }
    }

    /// Queue our close frame, behind the replies held back.
    fn queue_close(&self, w: &mut Out, code: u16, reason: &str) -> Result<(), tungstenite::Error> {
        self.queue_held(w);
        w.closing = true;
        w.close_sent = true;
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: truncate_reason(reason).into(),
        };
        let mut bytes = Vec::new();
        w.ctx.close(&mut Held(&mut bytes), Some(frame))?;
        Self::push(w, Bytes::from(bytes), false);
        Ok(())
    }

    /// The peer sent its close frame: our reader answers it; no data may follow.
    pub(crate) fn peer_closed(&self) {
        lock(&self.out).closing = true;
    }

    /// Bytes the reader's tungstenite context wants sent (the handshake's response,
    /// pongs, close replies; whole frames), behind everything queued; waits.
    pub(crate) fn write_raw(&self, bytes: &[u8]) -> io::Result<()> {
        let mut w = lock(&self.out);
        if w.close_sent {
            return Ok(());
        }
        self.queue_held(&mut w);
        Self::push(&mut w, Bytes::copy_from_slice(bytes), false);
        // After the peer's close frame the reader writes only its close reply: that
        // was our close frame, and nothing may follow it.
        if w.closing {
            w.close_sent = true;
        }
        let end = w.accepted;
        self.wait_written(w, end).map_err(into_io)
    }

    /// The events still queued for this (ended) connection, whole: a session parked
    /// for it keeps them. One the peer got part of is sent again whole (it is
    /// discarded with the broken connection).
    pub(crate) fn take_unsent(&self) -> Vec<Bytes> {
        let mut w = lock(&self.out);
        w.front_sent = 0;
        w.events = 0;
        std::mem::take(&mut w.queue)
            .into_iter()
            .filter(|chunk| chunk.event)
            .map(|chunk| chunk.bytes)
            .collect()
    }

    /// Once the connection is shut down: wait until no thread writes for it, or
    /// `deadline` passes; whether none does. A write handed over and not taken up
    /// yet is dropped at once.
    pub(crate) fn wait_unowned(&self, deadline: Instant) -> bool {
        let mut w = lock(&self.out);
        while w.writing {
            if w.handed {
                // No thread is on it: the connection has ended, nothing to wait for.
                self.release(&mut w);
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            w.waiters += 1;
            w = self
                .progress
                .wait_timeout(w, left.min(RECHECK))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            w.waiters -= 1;
        }
        true
    }

    /// Events queued and not yet written.
    #[cfg(test)]
    pub(crate) fn queued_events(&self) -> usize {
        lock(&self.out).events
    }

    pub(crate) fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::SeqCst)
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Drop the TCP connection at once, waking a reader blocked on it and failing
    /// the write under way.
    pub(crate) fn shutdown(&self) {
        self.dead.store(true, Ordering::SeqCst);
        self.socket.shutdown();
    }
}

/// Write all of `bytes`, waiting for room; how many were written.
fn write_all(socket: &Socket, bytes: &[u8]) -> io::Result<usize> {
    (&*socket).write_all(bytes).map(|()| bytes.len())
}

/// The error of a write to a connection that has ended.
fn gone() -> tungstenite::Error {
    tungstenite::Error::Io(io::Error::new(
        io::ErrorKind::NotConnected,
        "the connection has ended",
    ))
}

/// A whole server frame for `payload` in `codec` (text for JSON, binary for
/// MessagePack), encoded once and written as it is to every subscriber: frames from
/// a server are not masked, so they are the same bytes for everyone.
pub(crate) fn server_frame(codec: Codec, payload: Vec<u8>) -> Result<Bytes, tungstenite::Error> {
    let opcode = if codec.is_binary() {
        OpCode::Data(Data::Binary)
    } else {
        std::str::from_utf8(&payload)?;
        OpCode::Data(Data::Text)
    };
    let frame = Frame::message(payload, opcode, true);
    let mut out = Vec::with_capacity(frame.len());
    frame.format(&mut out)?;
    Ok(Bytes::from(out))
}

/// A close reason must fit a control frame: 123 bytes, cut on a character boundary.
fn truncate_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// Encoded frames as a stream tungstenite can write frames to (it asks for `Read`
/// too, which it does not use for writing).
struct Held<'a>(&'a mut Vec<u8>);

impl Read for Held<'_> {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Ok(0)
    }
}

impl Write for Held<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A write error as the `io::Error` it mostly is.
pub(crate) fn into_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        other => io::Error::other(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// A server-side sink and the raw socket of its peer.
    fn pair() -> (Sink, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (ours, _) = listener.accept().unwrap();
        let sink = Sink::new(
            Socket::Plain(ours),
            Role::Server,
            WebSocketConfig::default(),
        );
        (sink, peer)
    }

    /// Event `n` as a whole text frame with `pad` bytes of padding.
    fn event(n: u32, pad: usize) -> Bytes {
        let payload = format!("{n:08}{}", "x".repeat(pad)).into_bytes();
        server_frame(Codec::Json, payload).unwrap()
    }

    /// Read `frames` back and return their numbers, in the order they came.
    fn numbers(peer: &mut TcpStream, frames: &[Bytes]) -> Vec<u32> {
        let total: usize = frames.iter().map(|f| f.len()).sum();
        let mut bytes = vec![0; total];
        peer.read_exact(&mut bytes).unwrap();
        let mut out = Vec::new();
        let mut rest = &bytes[..];
        for frame in frames {
            let (head, tail) = rest.split_at(frame.len());
            assert_eq!(head, &frame[..], "a frame came out cut or mixed");
            out.push(number_of(head));
            rest = tail;
        }
        out
    }

    fn number_of(frame: &[u8]) -> u32 {
        // Header: 2 bytes, or 4 with a 16-bit length.
        let start = if frame[1] & 0x7f == 126 { 4 } else { 2 };
        std::str::from_utf8(&frame[start..start + 8])
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn an_event_is_written_at_once_while_the_socket_has_room() {
        let (sink, mut peer) = pair();
        let frames: Vec<Bytes> = (0..10).map(|n| event(n, 100)).collect();
        for frame in &frames {
            assert_eq!(sink.offer(std::slice::from_ref(frame), 4), Offer::Sent);
        }
        assert_eq!(sink.queued_events(), 0);
        assert_eq!(numbers(&mut peer, &frames), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_socket_hands_over_then_queues_up_to_the_bound_and_keeps_order() {
        let (sink, mut peer) = pair();
        let mut offered = Vec::new();
        let mut n = 0;
        // Until the kernel's buffers are full, each event goes straight out.
        loop {
            let frame = event(n, 16 << 10);
            n += 1;
            let offer = sink.offer(std::slice::from_ref(&frame), 8);
            offered.push(frame);
            match offer {
                Offer::Sent => assert!(n < 10_000, "the socket never filled"),
                Offer::HandOver => break,
                other => panic!("{other:?} before the socket was full"),
            }
        }
        assert_eq!(sink.queued_events(), 1, "the event cut short is queued");
        // Behind it, others queue without a write, up to the bound.
        for _ in 0..7 {
            let frame = event(n, 16 << 10);
            n += 1;
            assert_eq!(sink.offer(std::slice::from_ref(&frame), 8), Offer::Queued);
            offered.push(frame);
        }
        assert_eq!(sink.offer(&[event(n, 16 << 10)], 8), Offer::Full);
        // A writer that may wait takes it up and finishes while the peer reads.
        assert!(sink.take_up());
        assert!(!sink.take_up(), "taken up twice");
        let writer = std::thread::scope(|scope| {
            let writer = scope.spawn(|| {
                let mut writes = 0;
                loop {
                    writes += 1;
                    match sink.write_some() {
                        Progress::More => {}
                        done => return (done, writes),
                    }
                }
            });
            let got = numbers(&mut peer, &offered);
            assert_eq!(got, (0..n).collect::<Vec<_>>(), "lost or out of order");
            writer.join().unwrap()
        });
        assert_eq!(writer.0, Progress::Empty);
        assert_eq!(sink.queued_events(), 0);
        // The writer let go: the next event goes straight out again.
        let next = event(n, 10);
        assert_eq!(sink.offer(std::slice::from_ref(&next), 8), Offer::Sent);
        assert_eq!(numbers(&mut peer, &[next]), vec![n]);
    }

    #[test]
    fn frames_offered_together_go_out_in_one_write_and_stay_in_order_when_cut() {
        let (sink, mut peer) = pair();
        let mut offered = Vec::new();
        let mut n = 0;
        loop {
            let batch: Vec<Bytes> = (n..n + 5).map(|i| event(i, 12 << 10)).collect();
            n += 5;
            let offer = sink.offer(&batch, 1000);
            offered.extend(batch);
            match offer {
                Offer::Sent => assert!(n < 50_000, "the socket never filled"),
                Offer::HandOver => break,
                other => panic!("{other:?} before the socket was full"),
            }
        }
        assert!(sink.queued_events() >= 1 && sink.queued_events() <= 5);
        // A batch that would pass the bound behind a write under way is refused whole.
        let limit = sink.queued_events() + 2;
        assert_eq!(
            sink.offer(&[event(n, 1), event(n + 1, 1), event(n + 2, 1)], limit),
            Offer::Full
        );
        assert!(sink.take_up());
        std::thread::scope(|scope| {
            let writer = scope.spawn(|| while sink.write_some() == Progress::More {});
            assert_eq!(numbers(&mut peer, &offered), (0..n).collect::<Vec<_>>());
            writer.join().unwrap();
        });
    }

    #[test]
    fn a_blocking_send_takes_up_a_handed_over_write_rather_than_wait_for_a_writer() {
        let (sink, mut peer) = pair();
        let mut offered = Vec::new();
        let mut n = 0;
        while {
            let frame = event(n, 16 << 10);
            n += 1;
            let offer = sink.offer(std::slice::from_ref(&frame), 1000);
            offered.push(frame);
            offer == Offer::Sent
        } {}
        // No writer of the pool comes (they may all be busy with other clients): a
        // reply from the connection's own thread writes the events, then itself.
        let sink = std::sync::Arc::new(sink);
        let (sent_tx, sent_rx) = std::sync::mpsc::channel();
        let replier = sink.clone();
        std::thread::spawn(move || sent_tx.send(replier.send(Message::text("reply"))));
        assert_eq!(numbers(&mut peer, &offered), (0..n).collect::<Vec<_>>());
        let mut reply = [0u8; 7];
        peer.read_exact(&mut reply).unwrap();
        assert_eq!(&reply[2..], b"reply");
        let sent = sent_rx.recv_timeout(Duration::from_secs(10));
        assert!(matches!(sent, Ok(Ok(()))), "{sent:?}");
        assert!(!sink.take_up(), "a writer of the pool would write it again");
        assert_eq!(sink.offer(&[event(n, 10)], 1000), Offer::Sent);
    }

    #[test]
    fn an_ended_connection_keeps_its_unwritten_events_whole_for_its_session() {
        let (sink, _peer) = pair();
        let mut n = 0;
        while sink.offer(&[event(n, 16 << 10)], 1000) == Offer::Sent {
            n += 1;
        }
        let cut_short = n;
        assert_eq!(sink.offer(&[event(n + 1, 10)], 1000), Offer::Queued);
        sink.shutdown();
        assert_eq!(sink.write_some(), Progress::Failed);
        // After the end, events are kept (no longer a slow client), up to the bound.
        assert_eq!(sink.offer(&[event(n + 2, 10)], 3), Offer::Queued);
        assert_eq!(sink.offer(&[event(n + 3, 10)], 3), Offer::Queued);
        let unsent: Vec<u32> = sink.take_unsent().iter().map(|f| number_of(f)).collect();
        assert_eq!(unsent, vec![cut_short, n + 1, n + 2]);
    }

    #[test]
    fn reasons_are_cut_to_fit_a_control_frame() {
        assert_eq!(truncate_reason("short"), "short");
        let long = "é".repeat(100);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= 123 && cut.chars().all(|c| c == 'é'));
    }
}

//! The read side shared by server and client: one socket, read by exactly one thread
//! at a time through a tungstenite reader, while any thread writes through the
//! connection's [`Sink`].
//!
//! tungstenite's `WebSocket` wants one owner for reading and writing; a reader blocked
//! in `read` would then hold up every event sent to that peer. So the reader gets a
//! [`ConnStream`] whose writes (the handshake's response, pongs and close replies that
//! tungstenite sends on its own) are forwarded into the sink, and everything else we
//! send goes through the sink too.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::Message;
use tungstenite::protocol::frame::{CloseFrame, Utf8Bytes};

use crate::protocol::Codec;
use crate::sink::{Sink, into_io};

/// Frames at least this large are read apart from what follows them, and the
/// reader's buffer is not kept at their size.
const LARGE_FRAME: usize = 64 << 10;

/// Keep-alive settings of one side: ping a silent peer, give up on one silent too long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Heartbeat {
    /// Ping after this long without hearing from the peer; `None`: never.
    pub ping_interval: Option<Duration>,
    /// Close a peer silent this long; `None`: never.
    pub peer_timeout: Option<Duration>,
}

/// What an idle reader should do.
#[derive(Debug, PartialEq)]
pub(crate) enum Idle {
    Wait,
    Ping,
    /// The peer has been silent past the timeout.
    Dead,
}

impl Heartbeat {
    /// How often an idle reader wakes to look: half the shorter period, so a peer is
    /// pinged and given up on within half a period of the due time. No thread or timer
    /// is needed: it is the socket's read timeout.
    pub(crate) fn tick(&self) -> Option<Duration> {
        let shortest = match (self.ping_interval, self.peer_timeout) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some((shortest / 2).max(Duration::from_millis(5)))
    }

    fn idle(&self, silent: Duration, since_ping: Option<Duration>) -> Idle {
        if self.peer_timeout.is_some_and(|t| silent >= t) {
            return Idle::Dead;
        }
        match self.ping_interval {
            // One ping per interval of silence.
            Some(every) if silent >= every && since_ping.is_none_or(|p| p >= every) => Idle::Ping,
            _ => Idle::Wait,
        }
    }
}

/// Whether a read failed only because the socket's read timeout passed.
pub(crate) fn is_timeout(error: &tungstenite::Error) -> bool {
    matches!(error, tungstenite::Error::Io(e)
        if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

/// The stream the reader's tungstenite context owns: reads from the socket, writes
/// through the sink, and notes when the peer was last heard from.
pub(crate) struct ConnStream {
    sink: Arc<Sink>,
    /// While set (during the handshake), reads fail once it has passed: a peer that
    /// sends a byte now and then cannot stretch the handshake.
    deadline: Option<Instant>,
    heard: Instant,
    pinged: Option<Instant>,
    /// What the peer's messages may cost (the server's side only).
    intake: Option<Box<Intake>>,
}

impl ConnStream {
    /// A stream whose reads fail after `deadline` until [`ConnStream::opened`].
    pub(crate) fn handshaking(sink: Arc<Sink>, deadline: Instant) -> Self {
        ConnStream {
            sink,
            deadline: Some(deadline),
            heard: Instant::now(),
            pinged: None,
            intake: None,
        }
    }

    /// From now on, follow the frames read: count their bytes against `bytes`, time
    /// each message, and keep large frames from sharing a read with what follows (so
    /// the reader can be rebuilt with a small buffer after them). Call right after
    /// [`ConnStream::opened`]: the reader then holds no bytes it has not returned.
    pub(crate) fn limit(&mut self, limits: IntakeLimits, heartbeat: &Heartbeat) -> io::Result<()> {
        // A message that stops arriving is noticed within half its timeout.
        let half = limits
            .message_timeout
            .map(|t| (t / 2).max(Duration::from_millis(5)));
        let tick = match (heartbeat.tick(), half) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.intake = Some(Box::new(Intake::new(limits)));
        self.sink.socket().set_read_timeout(tick)
    }

    /// The counter of message bytes, if [`ConnStream::limit`] set one.
    pub(crate) fn message_bytes(&self) -> Option<Arc<dyn MessageBudget>> {
        self.intake.as_ref().map(|i| i.limits.bytes.clone())
    }

    /// `read` returned `message`: the bytes of a data message, counted since its first
    /// frame header, are now the caller's to give back once it is handled.
    pub(crate) fn took(&mut self, message: &Message) -> usize {
        let Some(intake) = &mut self.intake else {
            return 0;
        };
        intake.returned += 1;
        match message {
            Message::Text(_) | Message::Binary(_) => {
                let n = message.len().min(intake.pending);
                intake.pending -= n;
                n
            }
            _ => 0,
        }
    }

    /// Whether a large frame came in since the reader was built and the reader now
    /// holds nothing: no byte it has not returned, no message begun, no pong to send.
    /// Asked right after `read` returned a data message (it sent any pong owed before
    /// reading that message's last frame): the time to rebuild the reader, small.
    pub(crate) fn shrink_due(&self) -> bool {
        self.intake.as_ref().is_some_and(|i| i.shrink_due())
    }

    /// The reader was rebuilt with an empty buffer.
    pub(crate) fn shrunk(&mut self) {
        if let Some(intake) = &mut self.intake {
            intake.large_seen = false;
        }
    }

    /// Why a read failed on purpose, if it did (taken once).
    pub(crate) fn take_cutoff(&mut self) -> Option<Cutoff> {
        self.intake.as_mut().and_then(|i| i.cutoff.take())
    }

    /// The handshake is over: reads wait for data, waking each heartbeat tick; a
    /// write that waits longer than the peer timeout means a peer that stopped
    /// reading, and ends the connection.
    pub(crate) fn opened(&mut self, heartbeat: &Heartbeat) -> io::Result<()> {
        self.deadline = None;
        self.heard = Instant::now();
        if heartbeat.peer_timeout.is_some() {
            self.sink
                .socket()
                .set_write_timeout(heartbeat.peer_timeout)?;
        }
        self.sink.socket().set_read_timeout(heartbeat.tick())
    }

    /// The reader woke without data: ping the peer, or report it dead.
    pub(crate) fn idle(&mut self, heartbeat: &Heartbeat) -> Idle {
        let now = Instant::now();
        let since_ping = self.pinged.map(|p| now - p);
        let verdict = heartbeat.idle(now - self.heard, since_ping);
        if verdict == Idle::Ping {
            self.pinged = Some(now);
            let _ = self.sink.send(Message::Ping(Default::default()));
        }
        verdict
    }
}

impl Read for ConnStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // The reader is out of whole frames: replies held back go out before it waits.
        self.sink.flush().map_err(into_io)?;
        let mut buf = buf;
        if let Some(intake) = &mut self.intake {
            if let Some(n) = intake.hand_over(buf) {
                return Ok(n);
            }
            intake.check_time(None)?;
            // A large frame's last read ends with it.
            if let Some(left) = intake.scan.large_left()
                && left < buf.len() as u64
            {
                buf = &mut buf[..left as usize];
            }
        }
        loop {
            let n = loop {
                // A signal delivered to this thread (a debugger, a profiler, the
                // application's own) interrupts the wait; it is no reason to end the
                // connection.
                match self.sink.socket().read_before(buf, self.deadline) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        if let Some(intake) = &mut self.intake {
                            intake.check_time(None)?;
                        }
                        return Err(e);
                    }
                    Ok(n) => break n,
                }
            };
            if n == 0 {
                return Ok(0);
            }
            self.heard = Instant::now();
            let Some(intake) = &mut self.intake else {
                return Ok(n);
            };
            intake.follow(&buf[..n], self.heard)?;
            if intake.scan.edits.is_empty() {
                return Ok(n);
            }
            // Rare: a header split over reads, or a frame handed over in chunks.
            let n = intake.edit(buf, n);
            if n > 0 {
                return Ok(n);
            }
            // All of it held back (part of a header): read on.
        }
    }
}

/// Why the server stopped reading a connection on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cutoff {
    /// A message took longer than `message_timeout` to arrive.
    TooSlow,
    /// A message would have passed the client's or the server's budget of bytes.
    OverBudget,
    /// A fragmented message declared more than `max_message_size` bytes.
    TooBig,
    /// A control frame declared more than 125 bytes.
    ControlTooBig,
}

/// Counts the bytes of a connection's incoming messages against a budget.
pub(crate) trait MessageBudget: Send + Sync {
    /// Count `n` more bytes; `false` if that passes the budget (they stay counted).
    fn take(&self, n: usize) -> bool;
    /// Give back `n` counted bytes.
    fn give_back(&self, n: usize);
}

/// The server's limits on what a peer's messages may cost.
#[derive(Clone)]
pub(crate) struct IntakeLimits {
    pub bytes: Arc<dyn MessageBudget>,
    pub message_timeout: Option<Duration>,
    pub max_message_size: usize,
    pub max_frame_size: usize,
}

/// The frames a connection has read so far, what they cost and how long the current
/// message has taken.
struct Intake {
    scan: FrameScan,
    limits: IntakeLimits,
    /// Bytes counted for frames whose message `read` has not returned yet.
    pending: usize,
    /// Bytes for the reader that did not fit in its buffer (`out_at` of them given).
    out: Vec<u8>,
    out_at: usize,
    /// When the message being received began (only once it spans reads).
    started: Option<Instant>,
    cutoff: Option<Cutoff>,
    /// Messages (control frames included) `read` has returned.
    returned: u64,
    /// A large frame came in since the reader was built.
    large_seen: bool,
}

impl Intake {
    fn new(limits: IntakeLimits) -> Self {
        Intake {
            scan: FrameScan::default(),
            limits,
            pending: 0,
            out: Vec::new(),
            out_at: 0,
            started: None,
            cutoff: None,
            returned: 0,
            large_seen: false,
        }
    }

    /// Fail once a message has taken longer than its timeout.
    fn check_time(&mut self, now: Option<Instant>) -> io::Result<()> {
        if let (Some(started), Some(timeout)) = (self.started, self.limits.message_timeout)
            && now
                .unwrap_or_else(Instant::now)
                .saturating_duration_since(started)
                >= timeout
        {
            return Err(self.cut(Cutoff::TooSlow));
        }
        Ok(())
    }

    fn cut(&mut self, why: Cutoff) -> io::Error {
        self.cutoff = Some(why);
        io::Error::other(format!("{why:?}"))
    }

    /// Follow the bytes just read.
    fn follow(&mut self, bytes: &[u8], now: Instant) -> io::Result<()> {
        let limits = &self.limits;
        let pending = &mut self.pending;
        let large_seen = &mut self.large_seen;
        // Whether a data message began in these bytes: its clock starts here, whatever
        // the messages before it took.
        let mut began = false;
        let verdict = self.scan.feed(bytes, |head| {
            began |= !head.control && !head.continuation;
            if head.control {
                return if head.len > 125 {
                    Err(Cutoff::ControlTooBig)
                } else {
                    Ok(false)
                };
            }
            if head.len > limits.max_frame_size as u64 {
                // The reader refuses it at its header (1009).
                return Ok(false);
            }
            if head.message_len > limits.max_message_size as u64 {
                return Err(Cutoff::TooBig);
            }
            let len = head.len as usize;
            *large_seen |= len >= LARGE_FRAME;
            *pending = pending.saturating_add(len);
            if !limits.bytes.take(len) {
                return Err(Cutoff::OverBudget);
            }
            // A fragment goes over in chunks; a message in one frame as it is.
            Ok((!head.fin || head.continuation) && head.len > CHUNK)
        });
        if let Err(why) = verdict {
            return Err(self.cut(why));
        }
        if self.scan.mid_message() {
            if began || self.started.is_none() {
                self.started = Some(now);
            }
            self.check_time(Some(now))
        } else {
            self.started = None;
            Ok(())
        }
    }

    /// Bytes held back or made up by [`Intake::edit`] that the reader has not had:
    /// copied into `buf`, if there are any.
    fn hand_over(&mut self, buf: &mut [u8]) -> Option<usize> {
        let rest = self.out.get(self.out_at..).filter(|r| !r.is_empty())?;
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.out_at += n;
        if self.out_at == self.out.len() {
            self.out = Vec::new();
            self.out_at = 0;
        }
        Some(n)
    }

    /// Apply the scan's edits to the `n` bytes just read into `buf`: the bytes for
    /// the reader go into `buf`, what does not fit waits in `out`; how many are in
    /// `buf` (0 if all were held back).
    fn edit(&mut self, buf: &mut [u8], n: usize) -> usize {
        self.out = apply(&self.scan.edits, &buf[..n]);
        self.out_at = 0;
        self.hand_over(buf).unwrap_or(0)
    }

    fn shrink_due(&self) -> bool {
        self.out_at == self.out.len()
            && self.large_seen
            && self.scan.at_boundary()
            && !self.scan.in_message
            && self.scan.ends == self.returned
    }
}

impl Drop for Intake {
    /// Bytes of messages never returned (the connection ended in one) are given back.
    fn drop(&mut self) {
        self.limits.bytes.give_back(self.pending);
    }
}

/// Where the bytes read so far stand in the sequence of frames. It follows only the
/// headers (payloads are skipped by length) and never fails: the reader itself
/// refuses what is malformed.
#[derive(Default)]
struct FrameScan {
    /// The header being read, `have` bytes of it so far.
    head: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame not read yet, once its header is complete.
    left: u64,
    in_payload: bool,
    /// The current frame ends a message: a control frame, or a data frame with FIN.
    ends_message: bool,
    /// The current frame is a data frame of at least `LARGE_FRAME` bytes.
    large: bool,
    /// A data message has begun and not ended.
    in_message: bool,
    /// Bytes its frames declared so far.
    message_len: u64,
    /// Frames seen whole that end a message (each becomes one `read` result).
    ends: u64,
    /// The first header byte of the current frame, and its mask key.
    first: u8,
    mask: Option<[u8; 4]>,
    /// The header being read is held back from the reader until it is whole (it may
    /// be one to hand over in chunks).
    withheld: bool,
    /// The current frame goes to the reader in chunks of `CHUNK` bytes; `chunk_left`
    /// of the current one are still to come, `chunked` once the first has gone.
    split: bool,
    chunk_left: u64,
    chunked: bool,
    /// How the bytes of the last `feed` must change on their way to the reader.
    edits: Vec<Edit>,
}

/// A change to the bytes read, at offsets into them.
#[derive(Debug, PartialEq)]
enum Edit {
    /// Put `bytes` (a frame header) in place of `start..end`.
    Replace {
        start: usize,
        end: usize,
        bytes: ([u8; 14], u8),
    },
    /// Hold back everything from `from` on: the start of a header not yet whole.
    Withhold { from: usize },
}

/// `input` with `edits` applied.
fn apply(edits: &[Edit], input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + 14 * edits.len());
    let mut from = 0;
    for edit in edits {
        match *edit {
            Edit::Replace { start, end, bytes } => {
                out.extend_from_slice(&input[from..start]);
                out.extend_from_slice(&bytes.0[..usize::from(bytes.1)]);
                from = end;
            }
            Edit::Withhold { from: held } => {
                out.extend_from_slice(&input[from..held]);
                from = input.len();
            }
        }
    }
    out.extend_from_slice(&input[from..]);
    out
}

/// Frames of a fragmented message reach the reader in chunks of at most this many
/// bytes (a multiple of 4, so that each chunk starts at the same point of the mask):
/// tungstenite buffers a whole frame before copying it into the message, and a large
/// fragment would otherwise cost twice its size.
const CHUNK: u64 = 64 << 10;

/// A frame header, as [`FrameScan`] saw it.
struct Header {
    control: bool,
    fin: bool,
    /// A continuation frame.
    continuation: bool,
    len: u64,
    /// Bytes the frames of its message have declared so far, this one included.
    message_len: u64,
}

impl FrameScan {
    /// Follow `bytes`, calling `on_header` for each complete frame header; it answers
    /// whether to hand that frame to the reader in chunks. What must change in `bytes`
    /// before the reader gets them is left in `edits`.
    fn feed<E>(
        &mut self,
        bytes: &[u8],
        mut on_header: impl FnMut(&Header) -> Result<bool, E>,
    ) -> Result<(), E> {
        self.edits.clear();
        let mut at = 0;
        while at < bytes.len() {
            if self.in_payload {
                let mut step = self.left.min((bytes.len() - at) as u64);
                if self.split {
                    step = step.min(self.chunk_left);
                }
                self.left -= step;
                at += step as usize;
                if self.split {
                    self.chunk_left -= step;
                    if self.chunk_left == 0 && self.left > 0 {
                        let bytes = self.chunk_header();
                        self.edits.push(Edit::Replace {
                            start: at,
                            end: at,
                            bytes,
                        });
                    }
                }
                if self.left == 0 {
                    self.end_frame();
                }
                continue;
            }
            let start = at;
            // Twice at most: the first two bytes tell how long the header is.
            loop {
                let need = self.head_len();
                let take = (need - self.have).min(bytes.len() - at);
                self.head[self.have..self.have + take].copy_from_slice(&bytes[at..at + take]);
                self.have += take;
                at += take;
                if self.have == self.head_len() || at == bytes.len() {
                    break;
                }
            }
            if self.have < self.head_len() {
                // The read ends inside a header. One that may announce a frame to
                // split (its length is not known yet, or needs 8 bytes) waits.
                if self.withheld || self.have < 2 || self.head[1] & 0x7f == 127 {
                    self.withheld = true;
                    self.edits.push(Edit::Withhold { from: start });
                }
                continue;
            }
            let original = (self.head, self.have as u8);
            let withheld = std::mem::take(&mut self.withheld);
            let header = self.start_frame();
            if on_header(&header)? {
                self.split = true;
                let bytes = self.chunk_header();
                self.edits.push(Edit::Replace {
                    start,
                    end: at,
                    bytes,
                });
            } else if withheld {
                self.edits.push(Edit::Replace {
                    start,
                    end: at,
                    bytes: original,
                });
            }
            if self.left == 0 {
                self.end_frame();
            }
        }
        Ok(())
    }

    /// The header of the next chunk of a split frame (`left` bytes of it to come).
    fn chunk_header(&mut self) -> ([u8; 14], u8) {
        let len = self.left.min(CHUNK);
        let last = self.left <= CHUNK;
        let opcode = if self.chunked { 0 } else { self.first & 0x0f };
        let fin = if last { self.first & 0x80 } else { 0 };
        let mut head = [0; 14];
        head[0] = fin | (self.first & 0x70) | opcode;
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut n = 2;
        if len <= 125 {
            head[1] = mask_bit | len as u8;
        } else if len <= 0xffff {
            head[1] = mask_bit | 126;
            head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            n = 4;
        } else {
            head[1] = mask_bit | 127;
            head[2..10].copy_from_slice(&len.to_be_bytes());
            n = 10;
        }
        if let Some(key) = self.mask {
            head[n..n + 4].copy_from_slice(&key);
            n += 4;
        }
        self.chunked = true;
        self.chunk_left = len;
        (head, n as u8)
    }

    /// The length of the header being read, as far as its bytes so far tell.
    fn head_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let ext = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn start_frame(&mut self) -> Header {
        let len = match self.head[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => u64::from_be_bytes(self.head[2..10].try_into().unwrap_or_default()),
            n => u64::from(n),
        };
        let fin = self.head[0] & 0x80 != 0;
        let opcode = self.head[0] & 0x0f;
        let control = opcode & 0x08 != 0;
        self.first = self.head[0];
        self.mask = (self.head[1] & 0x80 != 0).then(|| {
            let at = self.have - 4;
            [
                self.head[at],
                self.head[at + 1],
                self.head[at + 2],
                self.head[at + 3],
            ]
        });
        self.have = 0;
        self.left = len;
        self.in_payload = true;
        self.large = !control && len >= LARGE_FRAME as u64;
        if control {
            self.ends_message = true;
        } else {
            if opcode != 0 {
                self.in_message = true;
                self.message_len = 0;
            }
            self.message_len = self.message_len.saturating_add(len);
            self.ends_message = fin;
        }
        Header {
            control,
            fin,
            continuation: opcode == 0,
            len,
            message_len: if control { len } else { self.message_len },
        }
    }

    fn end_frame(&mut self) {
        self.in_payload = false;
        self.large = false;
        self.split = false;
        self.chunked = false;
        if self.ends_message {
            self.ends += 1;
            if self.first & 0x08 == 0 {
                self.in_message = false;
            }
        }
    }

    /// Payload bytes left of the current frame, if it is a large one.
    fn large_left(&self) -> Option<u64> {
        (self.in_payload && self.large).then_some(self.left)
    }

    /// Inside a message: a data message begun, or any frame's header begun.
    fn mid_message(&self) -> bool {
        self.in_message || self.have > 0
    }

    /// Between frames, with no byte of the next one read.
    fn at_boundary(&self) -> bool {
        !self.in_payload && self.have == 0
    }
}

impl Write for ConnStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sink.write_raw(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A frame for `bytes` in `codec`: text for JSON, binary for MessagePack.
pub(crate) fn message(codec: Codec, bytes: Vec<u8>) -> Result<Message, std::str::Utf8Error> {
    if codec.is_binary() {
        Ok(Message::Binary(bytes.into()))
    } else {
        Utf8Bytes::try_from(bytes).map(Message::Text)
    }
}

/// The close code and reason of a close frame, 1005 when it had none.
pub(crate) fn close_info(frame: Option<&CloseFrame>) -> (u16, String) {
    match frame {
        Some(f) => (u16::from(f.code), f.reason.to_string()),
        None => (1005, String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_silent_peer_is_pinged_once_per_interval_then_given_up() {
        let hb = Heartbeat {
            ping_interval: Some(ms(100)),
            peer_timeout: Some(ms(300)),
        };
        assert_eq!(hb.tick(), Some(ms(50)));
        assert_eq!(hb.idle(ms(50), None), Idle::Wait);
        assert_eq!(hb.idle(ms(100), None), Idle::Ping);
        assert_eq!(hb.idle(ms(150), Some(ms(50))), Idle::Wait);
        assert_eq!(hb.idle(ms(200), Some(ms(100))), Idle::Ping);
        assert_eq!(hb.idle(ms(300), Some(ms(10))), Idle::Dead);
    }

    #[test]
    fn heartbeats_can_be_turned_off() {
        let off = Heartbeat {
            ping_interval: None,
            peer_timeout: None,
        };
        assert_eq!(off.tick(), None);
        assert_eq!(off.idle(Duration::from_secs(1_000_000), None), Idle::Wait);
        let pings_only = Heartbeat {
            ping_interval: Some(ms(40)),
            peer_timeout: None,
        };
        assert_eq!(pings_only.tick(), Some(ms(20)));
        assert_eq!(
            pings_only.idle(Duration::from_secs(1_000), None),
            Idle::Ping
        );
    }

    /// A masked client frame header: FIN and opcode, payload length.
    fn head(first: u8, len: u64) -> Vec<u8> {
        let mut out = vec![first];
        match len {
            0..=125 => out.push(0x80 | len as u8),
            126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out
    }

    /// Feed `bytes` in pieces of `step`; the headers seen, as (control, len, message_len).
    fn scan(scan: &mut FrameScan, bytes: &[u8], step: usize) -> Vec<(bool, u64, u64)> {
        let mut seen = Vec::new();
        for piece in bytes.chunks(step) {
            let _ = scan.feed(piece, |h| {
                seen.push((h.control, h.len, h.message_len));
                Ok::<bool, ()>(false)
            });
        }
        seen
    }

    #[test]
    fn frame_scan_follows_headers_however_the_bytes_are_cut() {
        let mut stream = head(0x81, 3);
        stream.extend_from_slice(b"abc");
        stream.extend(head(0x02, 200)); // a binary message begins, in fragments
        stream.extend(vec![0; 200]);
        stream.extend(head(0x89, 0)); // a ping between them
        stream.extend(head(0x80, 70_000)); // the last fragment
        stream.extend(vec![0; 70_000]);
        for step in [1, 2, 7, 1000, stream.len()] {
            let mut s = FrameScan::default();
            let seen = scan(&mut s, &stream, step);
            assert_eq!(
                seen,
                [
                    (false, 3, 3),
                    (false, 200, 200),
                    (true, 0, 0),
                    (false, 70_000, 70_200)
                ],
                "step {step}"
            );
            assert_eq!(s.ends, 3, "a text message, a ping, a binary message");
            assert!(s.at_boundary() && !s.mid_message());
        }
    }

    #[test]
    fn frame_scan_knows_a_message_in_progress_and_what_is_left_of_a_large_frame() {
        let mut s = FrameScan::default();
        let mut bytes = head(0x01, 10);
        bytes.extend_from_slice(b"12345");
        scan(&mut s, &bytes, 3);
        assert!(s.mid_message() && !s.at_boundary());
        assert_eq!(s.large_left(), None, "a small frame is not capped");
        scan(&mut s, b"67890", 5);
        assert!(s.mid_message(), "no FIN: the message goes on");
        assert_eq!(s.ends, 0);
        scan(&mut s, &head(0x80, 100_000), 100);
        assert_eq!(s.large_left(), Some(100_000));
        scan(&mut s, &[0; 99_999], 4096);
        assert_eq!(s.large_left(), Some(1));
        scan(&mut s, &[0], 1);
        assert_eq!((s.large_left(), s.ends, s.mid_message()), (None, 1, false));
        scan(&mut s, &[0x81], 1);
        assert!(s.mid_message(), "a header begun");
        let mut s = FrameScan::default();
        scan(&mut s, &head(0x82, u64::MAX), 3);
        assert_eq!(s.large_left(), Some(u64::MAX), "no overflow");
    }

    /// What the reader gets for `bytes` read in pieces of `step`, frames over
    /// `CHUNK` in fragmented messages split.
    fn handed_over(bytes: &[u8], step: usize) -> Vec<u8> {
        let mut s = FrameScan::default();
        let mut out = Vec::new();
        for piece in bytes.chunks(step) {
            let _ = s.feed(piece, |h| {
                Ok::<bool, ()>(!h.control && (!h.fin || h.continuation) && h.len > CHUNK)
            });
            out.extend(apply(&s.edits, piece));
        }
        out
    }

    /// The frames in `bytes`: (first header byte, unmasked payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (len, at) = match bytes[1] & 0x7f {
                126 => (u64::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
                127 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()), 10),
                n => (u64::from(n), 2),
            };
            let key: [u8; 4] = bytes[at..at + 4].try_into().unwrap();
            let payload = &bytes[at + 4..at + 4 + len as usize];
            let plain = payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]);
            out.push((bytes[0], plain.collect()));
            bytes = &bytes[at + 4 + len as usize..];
        }
        out
    }

    /// A masked frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let key = [9, 8, 7, 6];
        let mut out = head(first, payload.len() as u64);
        let n = out.len();
        out[n - 4..].copy_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    #[test]
    fn large_fragments_are_handed_over_in_chunks_and_all_else_as_it_came() {
        let big: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let mut stream = frame(0x81, b"whole");
        stream.extend(frame(0x01, &big)); // a first fragment
        stream.extend(frame(0x89, b"ping"));
        stream.extend(frame(0x80, &big)); // the last one
        stream.extend(frame(0x82, &big)); // a message in one frame
        for step in [1, 3, 14, 1000, 70_000, stream.len()] {
            let got = frames(&handed_over(&stream, step));
            let kinds: Vec<(u8, usize)> = got.iter().map(|(f, p)| (*f, p.len())).collect();
            assert_eq!(
                kinds,
                [
                    (0x81, 5),
                    (0x01, 65536),
                    (0x00, 65536),
                    (0x00, 18928),
                    (0x89, 4),
                    (0x00, 65536),
                    (0x00, 65536),
                    (0x80, 18928),
                    (0x82, 150_000)
                ],
                "step {step}"
            );
            let rejoined: Vec<u8> = got[1..4].iter().flat_map(|(_, p)| p.clone()).collect();
            assert_eq!(rejoined, big, "step {step}");
            let rejoined: Vec<u8> = got[5..8].iter().flat_map(|(_, p)| p.clone()).collect();
            assert_eq!(rejoined, big, "step {step}");
        }
    }
}

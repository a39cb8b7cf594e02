//! Fan-out at a steady rate: S subscribers of one event, and an emitter that has the
//! server send it R times a second on a fixed schedule, whether or not the last ones
//! have arrived (a ticker: a price feed, a game state). Each event carries `[seq, t]`,
//! `t` the generator's clock when the emit call was sent, so emit-to-receive latency is
//! measured on one clock.
//!
//! A run: warm-up, then the measured span (the events emitted in it are the ones
//! counted, and the server's CPU time is read at its two ends), then a tail in which
//! emitting goes on so that the span's last events arrive under the same load, then a
//! grace period without emits for stragglers. An event of the span that a subscriber
//! has not received by the end of the grace period is lost; one it received after the
//! emitter stopped is late.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::fanout::{self, EmitLink};
use crate::peers::Subscribe;
use crate::wire::{self, Codec, Ws};

/// How many periods' worth of overdue events an emitter that fell behind may send
/// back to back (beyond the one due now) before its schedule slips.
pub const BURST: u32 = 3;

/// What one steady-rate run asks of a server.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub subscribers: usize,
    /// Events emitted per second.
    pub rate: f64,
    pub warmup: Duration,
    pub measure: Duration,
    /// Emitting goes on this long after the measured span.
    pub tail: Duration,
    /// After the emitter stops, how long subscribers may take to get the span's events.
    pub grace: Duration,
}

/// What one steady-rate run measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Emit-to-receive latency p50, p99, p99.9 of the span's events, milliseconds.
    pub latency_ms: [f64; 3],
    /// The server's CPU time (user + system) over the span, percent of one core.
    pub cpu_percent: f64,
    /// The server's CPU time over the span per event delivered from it, microseconds.
    pub cpu_us_per_event: f64,
    /// Times a server thread went to sleep (and was later woken) over the span, per
    /// event delivered from it: about 1 when a thread wakes per subscriber per event.
    pub wakeups_per_event: f64,
    pub peak_rss_mib: f64,
    /// Events of the span that subscribers received, and that they should have
    /// (events emitted in the span times subscribers). Summed over rounds.
    pub delivered: u64,
    pub expected: u64,
    /// Events of the span received only after the emitter stopped. Summed over rounds.
    pub late: u64,
    /// Lost events that a subscriber missed although it received a later one: dropped
    /// rather than still on their way when the grace period ended. Summed over rounds.
    pub dropped: u64,
    /// Subscribers the server disconnected before the run ended. Summed over rounds.
    pub cut_off: u64,
    /// How far the emitter fell behind its schedule at worst, milliseconds (the largest
    /// over rounds).
    pub behind_ms: f64,
}

impl Outcome {
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }
}

/// A subscriber's record of one event: its sequence number, when it was emitted and
/// when it arrived (µs on the generator's clock).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Receipt {
    pub seq: u64,
    pub sent_us: u64,
    pub received_us: u64,
}

/// What the subscribers and the emitter share.
struct Shared {
    /// Events sent so far; the next event's `seq`.
    emitted: AtomicU64,
    /// The last event's `seq` once the emitter has stopped; `u64::MAX` until then.
    last: AtomicU64,
    /// Subscribers that have received the last event.
    caught_up: AtomicUsize,
    stop_emitting: AtomicBool,
    stop: AtomicBool,
    ready: Barrier,
}

/// Run `load` against the server at `url` (process `pid`); subscribers speak `codec`.
pub fn run(
    url: &str,
    codec: Codec,
    style: Subscribe,
    load: Load,
    pid: u32,
) -> Result<Outcome, String> {
    let shared = Arc::new(Shared {
        emitted: AtomicU64::new(0),
        last: AtomicU64::new(u64::MAX),
        caught_up: AtomicUsize::new(0),
        stop_emitting: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        ready: Barrier::new(load.subscribers + 1),
    });
    let subscribers = wire::clients(load.subscribers, {
        let (url, shared) = (url.to_owned(), shared.clone());
        move || {
            let ws = wire::connect(&url).and_then(|ws| fanout::subscribe(ws, codec, style));
            // Every subscriber reaches the barrier, subscribed or not.
            shared.ready.wait();
            receive(ws?, &shared)
        }
    })?;
    shared.ready.wait();
    let emitter = {
        let (url, shared) = (url.to_owned(), shared.clone());
        thread::spawn(move || emit(&url, load.rate, &shared))
    };

    thread::sleep(load.warmup);
    let first = shared.emitted.load(Ordering::SeqCst);
    let cpu_start = wire::cpu_seconds(pid);
    let sleeps_start = wire::sleeps(pid);
    let start = Instant::now();
    thread::sleep(load.measure);
    let end = shared.emitted.load(Ordering::SeqCst);
    let cpu_end = wire::cpu_seconds(pid);
    let sleeps_end = wire::sleeps(pid);
    let elapsed = start.elapsed().as_secs_f64();
    let peak_rss_mib = wire::status_kib(pid, "VmHWM:").map_or(f64::NAN, |kib| kib as f64 / 1024.0);
    thread::sleep(load.tail);

    shared.stop_emitting.store(true, Ordering::SeqCst);
    let emitted = emitter
        .join()
        .map_err(|_| "the emitter panicked".to_owned())?;
    // Wait for every subscriber to have the last event, or for the grace period to end.
    let deadline = Instant::now() + load.grace;
    while shared.caught_up.load(Ordering::SeqCst) < load.subscribers && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    shared.stop.store(true, Ordering::SeqCst);
    let mut tally = Tally::default();
    let mut failed = None;
    for s in subscribers {
        match s.join() {
            Ok(Ok(listened)) => {
                tally.add(&listened.receipts, first..end, emitted.ended_us);
                tally.cut_off += u64::from(listened.cut_off);
            }
            Ok(Err(e)) => failed = failed.or(Some(e)),
            Err(_) => failed = failed.or(Some("a subscriber thread panicked".to_owned())),
        }
    }
    let schedule = emitted.result?;
    if let Some(e) = failed {
        return Err(e);
    }
    if end == first {
        return Err("no event was emitted while measuring".into());
    }
    let cpu = match (cpu_start, cpu_end) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    let wakeups_per_event = match (sleeps_start, sleeps_end) {
        (Some(a), Some(b)) if tally.delivered > 0 => {
            b.saturating_sub(a) as f64 / tally.delivered as f64
        }
        _ => f64::NAN,
    };
    Ok(Outcome {
        latency_ms: wire::percentiles(&mut tally.latencies_us),
        wakeups_per_event,
        cpu_percent: 100.0 * cpu / elapsed,
        cpu_us_per_event: if tally.delivered > 0 && cpu > 0.0 {
            cpu * 1e6 / tally.delivered as f64
        } else {
            f64::NAN
        },
        peak_rss_mib,
        delivered: tally.delivered,
        expected: tally.expected,
        late: tally.late,
        dropped: tally.dropped,
        cut_off: tally.cut_off,
        behind_ms: schedule.max_behind.as_secs_f64() * 1000.0,
    })
}

/// One subscriber: a receipt for every event, until told to stop.
fn receive(mut ws: Ws, shared: &Shared) -> Result<Listened, String> {
    // Wake up now and then to see whether the run is over.
    let _ = ws
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(100)));
    let mut receipts = Vec::new();
    let mut newest = None;
    let mut caught_up = false;
    while !shared.stop.load(Ordering::Relaxed) {
        match wire::read_data(&mut ws) {
            Ok(frame) => {
                let received_us = wire::now_us();
                let value = wire::decode(&frame).unwrap_or_default();
                let (seq, sent_us) =
                    fanout::event_of(&value).ok_or_else(|| format!("not an event: {value}"))?;
                receipts.push(Receipt {
                    seq,
                    sent_us,
                    received_us,
                });
                newest = newest.max(Some(seq));
            }
            Err(tungstenite::Error::Io(e)) if fanout::is_timeout(&e) => {}
            // Cut off by the server (its outgoing-queue policy, say): the events it
            // misses from here on are lost, which the tally shows.
            Err(_) => {
                if !caught_up {
                    shared.caught_up.fetch_add(1, Ordering::SeqCst);
                }
                return Ok(Listened {
                    receipts,
                    cut_off: true,
                });
            }
        }
        let last = shared.last.load(Ordering::SeqCst);
        if !caught_up && last != u64::MAX && newest.is_some_and(|n| n >= last) {
            caught_up = true;
            shared.caught_up.fetch_add(1, Ordering::SeqCst);
        }
    }
    let _ = ws.close(None);
    Ok(Listened {
        receipts,
        cut_off: false,
    })
}

/// What one subscriber received.
struct Listened {
    receipts: Vec<Receipt>,
    /// Whether the server closed the connection before the run ended.
    cut_off: bool,
}

/// What the emitter did.
struct Emitted {
    result: Result<Schedule, String>,
    /// When it stopped emitting, µs on the generator's clock.
    ended_us: u64,
}

/// The emitter: `emit [EVENT, [seq, t]]` calls on `rate`'s schedule until told to stop.
/// Its replies are read (and dropped) by a second thread on the same connection.
fn emit(url: &str, rate: f64, shared: &Shared) -> Emitted {
    let mut schedule = Schedule::new(Duration::from_secs_f64(1.0 / rate), BURST);
    let mut ended_us = None;
    let result = EmitLink::open(url).and_then(|mut link| {
        let started = Instant::now();
        let mut sent = Ok(());
        while !shared.stop_emitting.load(Ordering::SeqCst) {
            if let Some(wait) = schedule.next(started.elapsed()) {
                // Short naps, so that a stop is seen soon at low rates too.
                thread::sleep(wait.min(Duration::from_millis(50)));
                continue;
            }
            let seq = shared.emitted.load(Ordering::SeqCst);
            if let Err(e) = link.send(seq) {
                sent = Err(e);
                break;
            }
            shared.emitted.store(seq + 1, Ordering::SeqCst);
        }
        ended_us = Some(wire::now_us());
        link.close();
        sent
    });
    let ended_us = ended_us.unwrap_or_else(wire::now_us);
    let emitted = shared.emitted.load(Ordering::SeqCst);
    if emitted > 0 {
        shared.last.store(emitted - 1, Ordering::SeqCst);
    }
    Emitted {
        result: result.map(|()| schedule),
        ended_us,
    }
}

/// A fixed-rate schedule: event `k` is due `k` periods after the start. An emitter
/// that falls behind catches up by sending back to back, but never more than `burst`
/// periods' worth: past that, the schedule slips (the missed slots are given up, not
/// made up later), so a stall is never followed by a flood.
#[derive(Clone, Debug)]
pub struct Schedule {
    period: Duration,
    burst: u32,
    /// When the next event is due, from the start.
    due: Duration,
    /// The furthest behind its due time an event was sent.
    pub max_behind: Duration,
    /// Time given up by slipping.
    pub slipped: Duration,
}

impl Schedule {
    pub fn new(period: Duration, burst: u32) -> Schedule {
        Schedule {
            period,
            burst,
            due: Duration::ZERO,
            max_behind: Duration::ZERO,
            slipped: Duration::ZERO,
        }
    }

    /// At `elapsed` since the start: `Some(wait)` if the next event is not due yet,
    /// `None` if it is to be sent now (and is then counted as sent).
    pub fn next(&mut self, elapsed: Duration) -> Option<Duration> {
        if elapsed < self.due {
            return Some(self.due - elapsed);
        }
        let behind = elapsed - self.due;
        self.max_behind = self.max_behind.max(behind);
        let allowed = self.period * self.burst;
        if behind > allowed {
            self.slipped += behind - allowed;
            self.due = elapsed - allowed;
        }
        self.due += self.period;
        None
    }
}

/// Events of a span summed over subscribers: what arrived, what was late, the
/// latencies of what arrived.
#[derive(Debug, Default)]
pub struct Tally {
    pub expected: u64,
    pub delivered: u64,
    pub late: u64,
    /// Events of the span a subscriber never received although it received a later
    /// event: dropped, not merely slow.
    pub dropped: u64,
    /// Receipts of an event a subscriber already had (not counted as delivered).
    pub duplicates: u64,
    /// Subscribers whose connection the server closed before the run ended.
    pub cut_off: u64,
    pub latencies_us: Vec<u32>,
}

impl Tally {
    /// Add one subscriber's receipts: it should have every event of `span`; one
    /// received after `ended_us` (the emitter's stop) is late.
    pub fn add(&mut self, receipts: &[Receipt], span: Range<u64>, ended_us: u64) {
        let mut seen = vec![false; span.clone().count()];
        self.expected += seen.len() as u64;
        for r in receipts.iter().filter(|r| span.contains(&r.seq)) {
            let had = &mut seen[(r.seq - span.start) as usize];
            if *had {
                self.duplicates += 1;
                continue;
            }
            *had = true;
            self.delivered += 1;
            if r.received_us > ended_us {
                self.late += 1;
            }
            let us = r.received_us.saturating_sub(r.sent_us);
            self.latencies_us.push(us.min(u64::from(u32::MAX)) as u32);
        }
        let newest = receipts.iter().map(|r| r.seq).max();
        self.dropped += seen
            .iter()
            .zip(span)
            .filter(|(had, seq)| !**had && newest.is_some_and(|n| n > *seq))
            .count() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_emitter_on_time_waits_for_each_due_time() {
        let mut s = Schedule::new(ms(50), 3);
        assert_eq!(s.next(ms(0)), None);
        assert_eq!(s.next(ms(10)), Some(ms(40)));
        assert_eq!(s.next(ms(50)), None);
        assert_eq!(s.next(ms(60)), Some(ms(40)));
        assert_eq!(s.next(ms(101)), None);
        assert_eq!((s.max_behind, s.slipped), (ms(1), ms(0)));
    }

    #[test]
    fn a_late_emitter_catches_up_in_a_burst_of_at_most_a_few_events() {
        let mut s = Schedule::new(ms(10), 3);
        assert_eq!(s.next(ms(0)), None);
        // 25 ms late for the event due at 10: the events due at 10, 20 and 30 go out
        // back to back, then the schedule resumes.
        let at = ms(35);
        let burst = std::iter::from_fn(|| s.next(at).is_none().then_some(()))
            .take(100)
            .count();
        assert_eq!(burst, 3);
        assert_eq!(s.next(at), Some(ms(5)));
        assert_eq!((s.max_behind, s.slipped), (ms(25), ms(0)));
    }

    #[test]
    fn a_stalled_emitter_slips_rather_than_flooding() {
        let mut s = Schedule::new(ms(10), 3);
        assert_eq!(s.next(ms(0)), None);
        // A 1 s stall: 99 events are overdue, but only 4 go out at once (the one
        // that is due now and 3 periods' worth); the rest are given up.
        let at = ms(1010);
        let burst = std::iter::from_fn(|| s.next(at).is_none().then_some(()))
            .take(1000)
            .count();
        assert_eq!(burst, 4);
        assert_eq!(s.next(at), Some(ms(10)));
        assert_eq!((s.max_behind, s.slipped), (ms(1000), ms(970)));
        // On time again afterwards.
        assert_eq!(s.next(ms(1020)), None);
        assert_eq!(s.next(ms(1021)), Some(ms(9)));
    }

    #[test]
    fn a_subscriber_the_server_disconnects_keeps_what_it_got_and_is_counted_cut_off() {
        use tungstenite::Message;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut ws = tungstenite::accept(stream).unwrap();
            for (seq, t) in [(0, 5), (1, 6)] {
                let event = format!(r#"{{"notification":"newsUpdate","params":[{seq},{t}]}}"#);
                ws.send(Message::Text(event.into())).unwrap();
            }
            let _ = ws.close(None);
            let _ = ws.flush();
        });
        let shared = Shared {
            emitted: AtomicU64::new(0),
            last: AtomicU64::new(u64::MAX),
            caught_up: AtomicUsize::new(0),
            stop_emitting: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            ready: Barrier::new(1),
        };
        let listened = receive(wire::connect(&url).unwrap(), &shared).unwrap();
        server.join().unwrap();
        assert!(listened.cut_off);
        let seqs: Vec<u64> = listened.receipts.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [0, 1]);
        // The run does not wait out its grace period for it.
        assert_eq!(shared.caught_up.load(Ordering::SeqCst), 1);
    }

    fn receipt(seq: u64, sent_us: u64, received_us: u64) -> Receipt {
        Receipt {
            seq,
            sent_us,
            received_us,
        }
    }

    #[test]
    fn the_tally_counts_the_span_only_and_sees_losses_lateness_and_duplicates() {
        let mut t = Tally::default();
        // Span 10..15, the emitter stopped at 1,000 µs.
        let first = [
            receipt(9, 0, 5), // before the span: not counted
            receipt(10, 100, 150),
            receipt(11, 200, 260),
            receipt(11, 200, 270),   // a duplicate
            receipt(13, 400, 1_400), // late: after the emitter stopped (12 dropped)
            receipt(15, 500, 520),   // after the span: not counted (but 14 was dropped)
        ];
        t.add(&first, 10..15, 1_000);
        // A second subscriber got everything, on time.
        let second: Vec<Receipt> = (10..15).map(|s| receipt(s, s * 10, s * 10 + 7)).collect();
        t.add(&second, 10..15, 1_000);
        assert_eq!((t.expected, t.delivered), (10, 8));
        assert_eq!((t.late, t.duplicates, t.dropped), (1, 1, 2));
        let mut latencies = t.latencies_us.clone();
        latencies.sort_unstable();
        assert_eq!(latencies, [7, 7, 7, 7, 7, 50, 60, 1_000]);
    }

    #[test]
    fn a_subscriber_that_got_nothing_lost_the_whole_span() {
        let mut t = Tally::default();
        t.add(&[], 0..40, 0);
        assert_eq!((t.expected, t.delivered, t.late, t.dropped), (40, 0, 0, 0));
        assert!(t.latencies_us.is_empty());
        // One that stopped receiving after event 29: 10 lost, none dropped.
        let early: Vec<Receipt> = (0..30).map(|s| receipt(s, 0, 1)).collect();
        t.add(&early, 0..40, 0);
        assert_eq!((t.expected, t.delivered, t.dropped), (80, 30, 0));
        let outcome = Outcome {
            latency_ms: [f64::NAN; 3],
            cpu_percent: 1.0,
            cpu_us_per_event: f64::NAN,
            wakeups_per_event: f64::NAN,
            peak_rss_mib: 1.0,
            delivered: t.delivered,
            expected: t.expected,
            late: 0,
            dropped: 0,
            cut_off: 0,
            behind_ms: 0.0,
        };
        assert_eq!(outcome.lost(), 50);
    }
}

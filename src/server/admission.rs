//! Who may connect: the limits on open connections (in total and per client
//! address), checked on the acceptor thread before any thread is started for the
//! connection, and the counters that say how often a limit was hit.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::lock;
use crate::transport::MessageBudget;

/// Open connections, in total and per address.
#[derive(Default)]
pub(crate) struct Admission {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    /// Bytes of incoming messages counted against the budgets ([`MessageBytes`]), in
    /// total and per address.
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections` are open: HTTP 503.
    Full,
    /// `max_connections_per_ip` are open from this address: HTTP 429.
    TooManyFromAddress,
}

/// A place among the open connections, given back when dropped.
pub(crate) struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<Slot, Refusal> {
        let mut open = lock(&self.open);
        let (total, per_ip) = &mut *open;
        if *total >= max_total {
            return Err(Refusal::Full);
        }
        // Look before inserting: a refused address must leave no entry behind.
        if per_ip.get(&ip).copied().unwrap_or(0) >= max_per_ip {
            return Err(Refusal::TooManyFromAddress);
        }
        *per_ip.entry(ip).or_insert(0) += 1;
        *total += 1;
        Ok(Slot {
            admission: self.clone(),
            ip,
        })
    }

    pub(crate) fn open_connections(&self) -> usize {
        lock(&self.open).0
    }

    /// Bytes of incoming messages counted against the budgets now.
    pub(crate) fn held_bytes(&self) -> usize {
        lock(&self.held).0
    }

    /// Count `n` more bytes for `ip`; whether both budgets still hold. Counted even when
    /// they do not: the connection is then closed, and gives them back as it ends.
    fn charge(&self, ip: IpAddr, n: usize, budget: &Budget) -> bool {
        let mut held = lock(&self.held);
        let (total, per_ip) = &mut *held;
        *total += n;
        let mine = per_ip.entry(ip).or_insert(0);
        *mine += n;
        *total <= budget.total && *mine <= budget.per_address
    }

    fn uncharge(&self, ip: IpAddr, n: usize) {
        let mut held = lock(&self.held);
        let (total, per_ip) = &mut *held;
        *total = total.saturating_sub(n);
        if let Some(mine) = per_ip.get_mut(&ip) {
            *mine = mine.saturating_sub(n);
            if *mine == 0 {
                per_ip.remove(&ip);
            }
        }
    }
}

/// How many bytes of incoming messages the server holds at most: per connection
/// without counting, then per client address and in total.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Held by one connection without touching the shared counts (no lock for the
    /// small messages of everyday calls).
    pub free: usize,
    pub per_address: usize,
    pub total: usize,
}

/// The bytes of incoming messages one connection holds: counted from a frame's header
/// (before its payload is buffered) until its message has been handled. What goes past
/// [`Budget::free`] is counted against its address's budget and the server's.
pub(crate) struct MessageBytes {
    admission: Arc<Admission>,
    ip: IpAddr,
    budget: Budget,
    held: AtomicUsize,
}

impl MessageBudget for MessageBytes {
    fn take(&self, n: usize) -> bool {
        let old = self.held.fetch_add(n, Ordering::SeqCst);
        let over = self.counted(old.saturating_add(n)) - self.counted(old);
        over == 0 || self.admission.charge(self.ip, over, &self.budget)
    }

    fn give_back(&self, n: usize) {
        if n == 0 {
            return;
        }
        let old = self.held.fetch_sub(n, Ordering::SeqCst);
        let freed = self.counted(old) - self.counted(old.saturating_sub(n));
        if freed > 0 {
            self.admission.uncharge(self.ip, freed);
        }
    }
}

impl MessageBytes {
    /// The part of `held` counted against the shared budgets.
    fn counted(&self, held: usize) -> usize {
        held.saturating_sub(self.budget.free)
    }
}

impl Slot {
    /// The counter of this connection's message bytes, under `budget`.
    pub(crate) fn message_bytes(&self, budget: Budget) -> Arc<MessageBytes> {
        Arc::new(MessageBytes {
            admission: self.admission.clone(),
            ip: self.ip,
            budget,
            held: AtomicUsize::new(0),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = lock(&self.admission.open);
        let (total, per_ip) = &mut *open;
        *total -= 1;
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Answer a refused connection with its HTTP status and close it, without waiting:
/// the acceptor thread must not be held up by a client that does not read.
pub(crate) fn refuse(stream: TcpStream, refusal: Refusal) {
    let response: &[u8] = match refusal {
        Refusal::Full => {
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        }
        Refusal::TooManyFromAddress => {
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        }
    };
    if stream.set_nonblocking(true).is_ok() {
        let _ = (&stream).write(response);
    }
}

/// How often the server protected itself, for [`Server::stats`](super::Server::stats).
#[derive(Default)]
pub(crate) struct Counters {
    pub refused_full: AtomicU64,
    pub refused_per_address: AtomicU64,
    pub refused_origin: AtomicU64,
    pub handshakes_failed: AtomicU64,
    pub slow_clients_dropped: AtomicU64,
    pub oversized_messages: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub peers_timed_out: AtomicU64,
    pub writers_at_cap: AtomicU64,
    pub handoffs_at_cap: AtomicU64,
    pub refused_socket_id: AtomicU64,
    pub messages_timed_out: AtomicU64,
    pub over_message_budget: AtomicU64,
    pub params_past_bounds: AtomicU64,
    pub writes_handed_over: AtomicU64,
}

impl Counters {
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a server has seen so far: open connections, and how often each protection
/// kicked in. From [`Server::stats`](super::Server::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections open now (including those still in their handshake).
    pub connections: usize,
    /// Refused with HTTP 503: `max_connections` were open.
    pub refused_full: u64,
    /// Refused with HTTP 429: `max_connections_per_ip` were open from the address.
    pub refused_per_address: u64,
    /// Refused with HTTP 403: an `Origin` not in `allowed_origins`.
    pub refused_origin: u64,
    /// Handshakes that failed or timed out (garbage, half requests, slow clients).
    pub handshakes_failed: u64,
    /// Clients disconnected because their outgoing queue was full (close code 1008).
    pub slow_clients_dropped: u64,
    /// Messages or frames over the size limits (close code 1009).
    pub oversized_messages: u64,
    /// Other WebSocket protocol violations (close codes 1002 and 1007).
    pub protocol_errors: u64,
    /// Clients silent past `peer_timeout`.
    pub peers_timed_out: u64,
    /// Writer threads running now (at most `max_writer_threads`).
    pub writer_threads: usize,
    /// Threads that help the dispatcher write an event with many subscribers (at most
    /// three, fewer on a machine with fewer than four cores).
    pub fanout_threads: usize,
    /// Threads running now that keep a slow handler going while its connection reads
    /// on in another (at most `max_handoff_threads`).
    pub handoff_threads: usize,
    /// Times a connection with events to send waited because `max_writer_threads`
    /// writers were busy.
    pub writers_at_cap: u64,
    /// Looks of the slow-call watch (one every `slow_call_threshold` per connection)
    /// that found a slow handler holding up its connection's next requests because
    /// `max_handoff_threads` threads already ran slow handlers.
    pub handoffs_at_cap: u64,
    /// Refused with HTTP 409: the `socket_id` asked for is held by an open connection
    /// of the namespace.
    pub refused_socket_id: u64,
    /// Clients whose message took longer than `message_timeout` to arrive (close
    /// code 1008).
    pub messages_timed_out: u64,
    /// Clients closed because their messages would have passed
    /// `max_message_bytes_per_ip` or `max_message_bytes` (close code 1013).
    pub over_message_budget: u64,
    /// Bytes of incoming messages (being received or handled) counted against the
    /// budgets now: what connections hold past their first 16 KiB each.
    pub message_bytes: usize,
    /// Calls refused with `-32602` because their params went past a decoding bound:
    /// more than 1,000 event names in one `rpc.on` / `rpc.off`, or more JSON values than
    /// params may build (twice their size, at least 4 MiB).
    pub params_past_bounds: u64,
    /// Times something the server pushed (an event, a close frame) did not fit a
    /// client's socket buffer at once, so a writer thread finished the write: events
    /// are written by the emitting thread, without waiting, while a client keeps up.
    /// Over TLS (and off Unix) every event goes through a writer thread and counts.
    pub writes_handed_over: u64,
}

impl Stats {
    pub(crate) fn read(counters: &Counters, connections: usize, message_bytes: usize) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            connections,
            refused_full: get(&counters.refused_full),
            refused_per_address: get(&counters.refused_per_address),
            refused_origin: get(&counters.refused_origin),
            handshakes_failed: get(&counters.handshakes_failed),
            slow_clients_dropped: get(&counters.slow_clients_dropped),
            oversized_messages: get(&counters.oversized_messages),
            protocol_errors: get(&counters.protocol_errors),
            peers_timed_out: get(&counters.peers_timed_out),
            writer_threads: 0,
            handoff_threads: 0,
            fanout_threads: 0,
            writers_at_cap: get(&counters.writers_at_cap),
            handoffs_at_cap: get(&counters.handoffs_at_cap),
            refused_socket_id: get(&counters.refused_socket_id),
            messages_timed_out: get(&counters.messages_timed_out),
            over_message_budget: get(&counters.over_message_budget),
            message_bytes,
            params_past_bounds: get(&counters.params_past_bounds),
            writes_handed_over: get(&counters.writes_handed_over),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_per_address_and_in_total_and_slots_give_back() {
        let admission = Arc::new(Admission::default());
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = admission.admit(a, 3, 2).unwrap();
        let _second = admission.admit(a, 3, 2).unwrap();
        assert_eq!(
            admission.admit(a, 3, 2).err(),
            Some(Refusal::TooManyFromAddress)
        );
        let _third = admission.admit(b, 3, 2).unwrap();
        assert_eq!(admission.admit(b, 3, 2).err(), Some(Refusal::Full));
        assert_eq!(admission.open_connections(), 3);
        drop(first);
        assert_eq!(admission.open_connections(), 2);
        assert!(admission.admit(a, 3, 2).is_ok());
        let c: IpAddr = [10, 0, 0, 3].into();
        assert_eq!(
            admission.admit(c, 10, 0).err(),
            Some(Refusal::TooManyFromAddress)
        );
        assert!(
            !lock(&admission.open).1.contains_key(&c),
            "a refused address left an entry"
        );
    }

    #[test]
    fn message_bytes_past_the_free_share_count_against_address_and_server() {
        let admission = Arc::new(Admission::default());
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let budget = Budget {
            free: 10,
            per_address: 100,
            total: 150,
        };
        let slot_a = admission.admit(a, 10, 10).unwrap();
        let (a1, a2) = (slot_a.message_bytes(budget), slot_a.message_bytes(budget));
        let b1 = admission.admit(b, 10, 10).unwrap().message_bytes(budget);
        assert!(a1.take(10), "the free share");
        assert_eq!(admission.held_bytes(), 0);
        assert!(a1.take(60));
        assert!(a2.take(50));
        assert_eq!(admission.held_bytes(), 100);
        assert!(!a2.take(1), "past the address's budget");
        assert!(b1.take(50));
        assert!(!b1.take(20), "past the server's budget");
        a2.give_back(51);
        b1.give_back(70);
        assert!(b1.take(60), "given back");
        a1.give_back(70);
        b1.give_back(60);
        assert_eq!(admission.held_bytes(), 0);
        assert!(lock(&admission.held).1.is_empty());
    }
}

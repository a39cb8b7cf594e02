//! What decoding one large request costs the server: peak heap over a baseline, counted
//! by this test crate's global allocator (every thread, the server's included), for a
//! 16 MiB frame sent over loopback to the fixture server with default settings.
//!
//! The client writes a frame it prepared before the baseline straight onto the socket,
//! so what is counted is the server reading, decoding and answering it.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{OP_BINARY, OP_TEXT, Wire, ws_frame_raw};
use serde_json::Value;

/// The system allocator, counting the bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = IN_USE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // Counted as a move: both blocks exist for a moment.
            grew(new_size);
            IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One measurement at a time: the counters are process-wide.
static MEASURING: Mutex<()> = Mutex::new(());

/// Each test holds this from before it builds its frames to its last measurement: the
/// allocator counts every thread, so no other test may allocate meanwhile.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    MEASURING.lock().unwrap_or_else(|e| e.into_inner())
}

/// The largest message the server accepts by default.
const MAX_MESSAGE: usize = 16 << 20;

/// Decoding may cost at most about this many times the frame, reading included...
const AT_MOST: usize = 4;

/// ... give or take the connection's fixed buffers (and a little room, so that a busy
/// machine's other allocations do not make a bounded decode look unbounded).
const SLACK: usize = 4 << 20;

struct Cost {
    /// Peak heap above the baseline while the frame was read, decoded and answered.
    peak: usize,
    /// Heap above the baseline once the reply is in and the server has settled.
    kept: usize,
    reply: Value,
}

/// Send `payload` as one frame (binary or text) to a fresh connection to the fixture
/// server, read the reply, and report what it cost.
/// The caller must hold [`one_at_a_time`] since before it built `payload`.
fn cost_of(payload: &[u8], binary: bool) -> Cost {
    let server = common::start();
    let mut wire = Wire::connect(&server, "/");
    let opcode = if binary { OP_BINARY } else { OP_TEXT };
    // A zero mask leaves the payload as it is; the frame is ready before the baseline.
    let frame = ws_frame_raw(0x80 | opcode, Some([0; 4]), payload);
    // Let the connection's threads settle before taking the baseline.
    let settled = || {
        let before = IN_USE.load(Ordering::Relaxed);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let after = IN_USE.load(Ordering::Relaxed);
        before.abs_diff(after) < (64 << 10)
    };
    assert!(common::wait_until(settled));
    let baseline = IN_USE.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    wire.send(&frame).expect("send the frame");
    // The reply, past any ping the server sends while it works.
    let reply = std::iter::from_fn(|| wire.read_frame())
        .find(|frame| matches!(frame.opcode, OP_TEXT | OP_BINARY))
        .expect("a reply");
    assert!(common::wait_until(settled));
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(baseline);
    let kept = IN_USE.load(Ordering::Relaxed).saturating_sub(baseline);
    drop(frame);
    drop(wire);
    server.close();
    let reply = if binary {
        rmp_serde::from_slice(&reply.payload).expect("a MessagePack reply")
    } else {
        serde_json::from_slice(&reply.payload).expect("a JSON reply")
    };
    Cost { peak, kept, reply }
}

/// `{"method": method, "params": [<items>], "id": 1}` in MessagePack, as large as the
/// server accepts: `item` repeated in an array32.
fn msgpack_call(method: &str, item: &[u8]) -> Vec<u8> {
    msgpack_call_of(method, item, MAX_MESSAGE)
}

/// The same, `size` bytes long at most.
fn msgpack_call_of(method: &str, item: &[u8], size: usize) -> Vec<u8> {
    let mut out = vec![0x83, 0xa6];
    out.extend_from_slice(b"method");
    out.push(0xa0 | method.len() as u8);
    out.extend_from_slice(method.as_bytes());
    out.push(0xa6);
    out.extend_from_slice(b"params");
    let tail = [0xa2, b'i', b'd', 0x01];
    let count = (size - out.len() - 5 - tail.len()) / item.len();
    out.push(0xdd);
    out.extend_from_slice(&(count as u32).to_be_bytes());
    for _ in 0..count {
        out.extend_from_slice(item);
    }
    out.extend_from_slice(&tail);
    out
}

/// The JSON text of a call whose params are `item` repeated, as large as the server
/// accepts.
fn json_call(method: &str, item: &str) -> Vec<u8> {
    let head = format!(r#"{{"jsonrpc":"2.0","method":"{method}","id":1,"params":["#);
    let count = (MAX_MESSAGE - head.len() - 2) / (item.len() + 1);
    let mut out = head.into_bytes();
    for i in 0..count {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item.as_bytes());
    }
    out.extend_from_slice(b"]}");
    out
}

fn error_code(reply: &Value) -> i64 {
    reply["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an error reply, got {reply}"))
}

/// Check that decoding `payload` peaked under AT_MOST times its size; returns the cost.
fn assert_bounded(what: &str, payload: &[u8], binary: bool) -> Cost {
    let cost = cost_of(payload, binary);
    let mib = |n: usize| n as f64 / f64::from(1 << 20);
    eprintln!(
        "{what}: frame {:.1} MiB, peak +{:.1} MiB ({:.2}x), kept +{:.1} MiB",
        mib(payload.len()),
        mib(cost.peak),
        cost.peak as f64 / payload.len() as f64,
        mib(cost.kept)
    );
    assert!(
        cost.peak <= AT_MOST * payload.len() + SLACK,
        "{what}: decoding a {} byte frame peaked at +{} bytes",
        payload.len(),
        cost.peak
    );
    cost
}

#[test]
fn msgpack_nils_into_a_typed_handler_fail_fast() {
    let _one = one_at_a_time();
    let frame = msgpack_call("sum", &[0xc0]);
    let cost = assert_bounded("16 MiB of nils to sum (Vec<f64>)", &frame, true);
    assert_eq!(error_code(&cost.reply), -32602);
}

#[test]
fn msgpack_nils_as_event_names_fail_fast() {
    let _one = one_at_a_time();
    let frame = msgpack_call("rpc.on", &[0xc0]);
    let cost = assert_bounded("16 MiB of nils to rpc.on", &frame, true);
    assert_eq!(error_code(&cost.reply), -32602);
}

#[test]
fn millions_of_short_event_names_are_refused_while_read() {
    let _one = one_at_a_time();
    let frame = json_call("rpc.on", r#""a""#);
    let cost = assert_bounded("16 MiB of \"a\" to rpc.on, JSON", &frame, false);
    assert_eq!(error_code(&cost.reply), -32602);
    let frame = msgpack_call("rpc.on", &[0xa1, b'a']);
    let cost = assert_bounded("16 MiB of \"a\" to rpc.on, MessagePack", &frame, true);
    assert_eq!(error_code(&cost.reply), -32602);
}

#[test]
fn a_large_json_array_of_numbers_into_vec_f64_is_summed() {
    let _one = one_at_a_time();
    // Four bytes a number: `1.5,`. (Two bytes a number costs 4x in f64s alone, and
    // Vec's doubling adds half again while it grows.)
    let frame = json_call("sum", "1.5");
    let count = (frame.len() - 40) / 4;
    let cost = assert_bounded("16 MiB of 1.5 to sum, JSON", &frame, false);
    let sum = cost.reply["result"].as_f64().expect("a sum");
    assert!((sum / 1.5 - count as f64).abs() < 16.0, "{sum}");
}

#[test]
fn nils_and_zeros_into_a_value_handler_are_refused_within_the_budget() {
    let _one = one_at_a_time();
    let frame = msgpack_call("echo", &[0xc0]);
    let cost = assert_bounded("16 MiB of nils to echo (Value)", &frame, true);
    assert_eq!(error_code(&cost.reply), -32602);
    let frame = json_call("echo", "0");
    let cost = assert_bounded("16 MiB of 0 to echo (Value), JSON", &frame, false);
    assert_eq!(error_code(&cost.reply), -32602);
}

#[test]
fn short_params_into_a_value_handler_are_bounded_by_their_own_size() {
    let _one = one_at_a_time();
    // 120 KiB of one-key maps (`{"": nil}`, three bytes each) would be some 50 MiB of
    // `Value`s: short params get only a small allowance of their own.
    let frame = msgpack_call_of("echo", &[0x81, 0xa0, 0xc0], 120 << 10);
    let cost = assert_bounded("120 KiB of {\"\": nil} to echo (Value)", &frame, true);
    assert_eq!(error_code(&cost.reply), -32602);
}

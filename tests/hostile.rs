//! Attacks on a running server, one test each. After every attack: the server still
//! answers a fresh client, a client that was connected and subscribed before the
//! attack (the witness) got every reply and every event meant for it, and the matching
//! `Server::stats()` counter moved (or, for attacks that have none, nothing else did).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{
    DEADLINE, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_TEXT, Raw, Wire, rss_kib,
    wait_until, ws_frame, ws_frame_raw, ws_length,
};
use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;
use wsrpc::{DisconnectInfo, Server, ServerConfig, Stats};

// ---------------------------------------------------------------- harness

/// Tests that measure the process's resident memory run alone; every other test holds
/// this lock shared, so none of them allocates while a measurement is under way.
static MEMORY: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    MEMORY.read().unwrap_or_else(PoisonError::into_inner)
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    MEMORY.write().unwrap_or_else(PoisonError::into_inner)
}

fn config() -> ServerConfig {
    common::quick_close(200)
}

fn start(config: ServerConfig) -> Server {
    common::start_with(Server::builder().config(config))
}

/// A server whose disconnections are reported on the returned channel.
fn start_watched(config: ServerConfig) -> (Server, mpsc::Receiver<DisconnectInfo>) {
    let (tx, rx) = mpsc::channel::<DisconnectInfo>();
    let server = common::start_with(
        Server::builder()
            .config(config)
            .on_disconnection(move |d| drop(tx.send(d.clone()))),
    );
    (server, rx)
}

fn connect(server: &Server, path: &str) -> Raw {
    Raw::connect(&common::url(server, path))
}

/// A bare TCP connection to `server` whose reads give up after `DEADLINE`.
fn tcp_to(server: &Server) -> TcpStream {
    let tcp = TcpStream::connect(server.local_addr()).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    tcp
}

/// The event the witness listens to; attacks that need events use `newsUpdate`.
const WITNESS_EVENT: &str = "newMessage";
/// Time between two rounds of the witness, so that it does not hog a core.
const WITNESS_PACE: Duration = Duration::from_millis(2);

/// A client connected and subscribed before the attack. Its thread runs rounds until
/// stopped: each round emits an event to it and makes a call, and checks that the
/// event and the reply both arrive, exactly and once. A lost frame stops it with a
/// read timeout; a wrong or repeated one with an assertion.
struct Witness {
    rounds: Arc<AtomicU64>,
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Witness {
    fn start(server: &Server) -> Witness {
        let mut raw = connect(server, "/?socket_id=witness");
        assert_eq!(
            raw.call("rpc.on", json!([WITNESS_EVENT])),
            json!({"jsonrpc": "2.0", "result": {WITNESS_EVENT: "ok"}, "id": 1})
        );
        let rounds = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = mpsc::channel::<()>();
        let server = server.clone();
        let counter = rounds.clone();
        let thread = thread::Builder::new()
            .name("witness".into())
            .spawn(move || {
                let mut round = 0u64;
                loop {
                    server
                        .emit(WITNESS_EVENT, json!(["w", round]))
                        .expect("emit to the witness");
                    let call = json!({
                        "jsonrpc": "2.0", "method": "sum", "params": [round, 1], "id": round
                    });
                    raw.send_text(&call.to_string());
                    let (mut event, mut reply) = (false, false);
                    while !(event && reply) {
                        let frame = raw.recv();
                        if frame.get("notification").is_some() {
                            assert!(!event, "witness round {round}: a second event: {frame}");
                            assert_eq!(
                                frame,
                                json!({"notification": WITNESS_EVENT, "params": ["w", round]}),
                                "witness round {round}: wrong event"
                            );
                            event = true;
                        } else {
                            assert!(!reply, "witness round {round}: a second reply: {frame}");
                            assert_eq!(
                                frame,
                                json!({"jsonrpc": "2.0", "result": round + 1, "id": round}),
                                "witness round {round}: wrong reply"
                            );
                            reply = true;
                        }
                    }
                    round += 1;
                    counter.store(round, Ordering::SeqCst);
                    match stopped.recv_timeout(WITNESS_PACE) {
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        _ => return,
                    }
                }
            })
            .expect("spawn the witness");
        Witness {
            rounds,
            stop,
            thread,
        }
    }

    /// Check that the witness is still served after the attack and that it never
    /// missed anything; returns the rounds it ran.
    fn finish(self) -> u64 {
        let seen = self.rounds.load(Ordering::SeqCst);
        let progressed = wait_until(|| {
            self.rounds.load(Ordering::SeqCst) >= seen + 3 || self.thread.is_finished()
        });
        let _ = self.stop.send(());
        if let Err(panic) = self.thread.join() {
            std::panic::resume_unwind(panic);
        }
        assert!(progressed, "the witness stalled after the attack");
        self.rounds.load(Ordering::SeqCst)
    }
}

/// A fresh client is served: the server is up and answering.
fn assert_serves(server: &Server) {
    let mut fresh = connect(server, "/");
    assert_eq!(
        fresh.call("sum", json!([20, 22])),
        json!({"jsonrpc": "2.0", "result": 42, "id": 1}),
        "a fresh client after the attack"
    );
}

/// The counters of `server.stats()`, without what depends on timing.
fn counters(server: &Server) -> Stats {
    common::without_gauges(server.stats())
}

/// Wait until the server's counters are `Stats::default()` changed by `set`.
fn expect_stats(server: &Server, set: impl FnOnce(&mut Stats)) {
    let mut expected = Stats::default();
    set(&mut expected);
    let settled = wait_until(|| counters(server) == expected);
    assert!(
        settled,
        "stats: expected {expected:?}, got {:?}",
        counters(server)
    );
}

/// The end of every attack: a fresh client is served, the witness missed nothing and
/// is still served, then the server closes.
fn after_attack(server: Server, witness: Witness) {
    assert_serves(&server);
    witness.finish();
    server.close();
}

/// The start of most attacks: a server with `config()` changed by `tweak`, and the
/// witness connected to it.
fn attacked(tweak: impl FnOnce(&mut ServerConfig)) -> (Server, Witness) {
    let mut config = config();
    tweak(&mut config);
    let server = start(config);
    let witness = Witness::start(&server);
    (server, witness)
}

/// `attacked`, with the server's disconnections reported on the returned channel.
fn attacked_watched(
    tweak: impl FnOnce(&mut ServerConfig),
) -> (Server, mpsc::Receiver<DisconnectInfo>, Witness) {
    let mut config = config();
    tweak(&mut config);
    let (server, gone) = start_watched(config);
    let witness = Witness::start(&server);
    (server, gone, witness)
}

/// Wait until `connections` are open and every other counter of `server.stats()` is
/// zero but those `set` sets.
fn expect_open(server: &Server, connections: usize, set: impl FnOnce(&mut Stats)) {
    expect_stats(server, |s| {
        s.connections = connections;
        set(s);
    });
}

/// Wait until the witness is the only connection left and every other counter of
/// `server.stats()` is zero but those `set` sets; then `after_attack`.
fn after_attack_expecting(server: Server, witness: Witness, set: impl FnOnce(&mut Stats)) {
    expect_open(&server, 1, set);
    after_attack(server, witness);
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// Deterministic bytes that look random.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 56) as u8
        })
        .collect()
}

// ---------------------------------------------------------------- handshake

#[test]
fn garbage_before_the_handshake_is_dropped_and_counted() {
    let _guard = shared();
    // Long enough that a drop within the test's deadline shows the server saw the
    // garbage, rather than its handshake timing out.
    let (server, witness) = attacked(|c| c.handshake_timeout = Duration::from_secs(60));

    let mut tls_hello = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];
    tls_hello.extend(noise(500, 1));
    let mut binary = noise(4096, 2);
    binary.extend_from_slice(b"\r\n\r\n");
    let mut endless_header = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
    endless_header.extend(std::iter::repeat_n(b'a', 100 << 10));
    let upgrade = common::upgrade_request(&server, "/", &[]);
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        ("a TLS client hello", tls_hello),
        ("binary noise", binary),
        (
            "HTTP without an upgrade",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "control bytes in a header name",
            b"GET / HTTP/1.1\r\n\x00\x01\x02: \xff\r\n\r\n".to_vec(),
        ),
        (
            "a POST upgrade",
            upgrade.replacen("GET", "POST", 1).into_bytes(),
        ),
        (
            "WebSocket version 8",
            upgrade
                .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8")
                .into_bytes(),
        ),
        ("a 100 KiB header that never ends", endless_header),
    ];
    for (what, bytes) in &attacks {
        let started = Instant::now();
        let mut tcp = tcp_to(&server);
        // The server may hang up before it has read everything.
        let _ = tcp.write_all(bytes);
        assert!(
            ended(&mut tcp),
            "{what}: the connection was not dropped within {DEADLINE:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: dropped only after {}",
            ms(started.elapsed())
        );
    }
    after_attack_expecting(server, witness, |s| {
        s.handshakes_failed = attacks.len() as u64
    });
}

/// Whether the peer ends the TCP connection (EOF or reset) before the read timeout;
/// whatever it sends first is skipped.
fn ended(tcp: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if timed_out(&e) => return false,
            Err(_) => return true,
        }
    }
}

/// Whether a read failed only because its timeout ran out.
fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

#[test]
fn half_handshake_then_silence_is_dropped_at_the_deadline() {
    let _guard = shared();
    let timeout = Duration::from_secs(1);
    let (server, witness) = attacked(|c| c.handshake_timeout = timeout);

    let full = common::upgrade_request(&server, "/", &[]);
    let without_blank_line = full.strip_suffix("\r\n").unwrap().to_owned();
    let attacks = [
        ("nothing at all", String::new()),
        ("a request line", "GET / HTTP/1.1\r\n".to_owned()),
        ("all headers but the blank line", without_blank_line),
    ];
    let started = Instant::now();
    let mut streams = Vec::new();
    for (what, bytes) in &attacks {
        let mut tcp = tcp_to(&server);
        tcp.write_all(bytes.as_bytes()).unwrap();
        streams.push((what, tcp));
    }
    // Meanwhile the server counts them as open connections.
    expect_stats(&server, |s| s.connections = 1 + attacks.len());
    for (what, tcp) in &mut streams {
        assert!(ended(tcp), "{what}: never dropped");
        let waited = started.elapsed();
        assert!(
            waited >= timeout - Duration::from_millis(50),
            "{what}: dropped after {}, before the handshake timeout",
            ms(waited)
        );
        assert!(
            waited < timeout + Duration::from_secs(3),
            "{what}: dropped only after {}",
            ms(waited)
        );
    }
    after_attack_expecting(server, witness, |s| {
        s.handshakes_failed = attacks.len() as u64
    });
}

#[test]
fn header_dribbled_a_byte_at_a_time_is_dropped_by_the_handshake_deadline() {
    let _guard = shared();
    let timeout = Duration::from_millis(500);
    let (server, witness) = attacked(|c| c.handshake_timeout = timeout);

    let mut tcp = TcpStream::connect(server.local_addr()).unwrap();
    // The pause between two bytes: each read of the server is well inside the timeout,
    // and the whole request (~170 bytes) would take 8 s.
    tcp.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let request = common::upgrade_request(&server, "/", &[]);
    let started = Instant::now();
    let mut sent = 0;
    let mut dropped = false;
    for byte in request.bytes() {
        if tcp.write_all(&[byte]).is_err() {
            dropped = true;
            break;
        }
        sent += 1;
        match tcp.read(&mut [0u8; 256]) {
            Ok(0) => {
                dropped = true;
                break;
            }
            Ok(n) => panic!("the server answered a partial request with {n} bytes"),
            Err(e) if timed_out(&e) => {}
            Err(_) => {
                dropped = true;
                break;
            }
        }
    }
    let waited = started.elapsed();
    assert!(dropped, "the dribbled request was never cut off");
    assert!(sent < request.len(), "the whole request got through");
    assert!(
        waited >= timeout - Duration::from_millis(50) && waited < timeout + Duration::from_secs(3),
        "cut off after {} ({sent} bytes), the deadline is {}",
        ms(waited),
        ms(timeout)
    );
    after_attack_expecting(server, witness, |s| s.handshakes_failed = 1);
}

// ---------------------------------------------------------------- frames

/// A call the server answers, as the text of a frame.
const SUM_CALL: &[u8] = br#"{"jsonrpc":"2.0","method":"sum","params":[1,2],"id":1}"#;

/// Each attack ends its own connection with close `code`, reported once to
/// on_disconnection with that code.
fn each_closes_with(
    server: &Server,
    gone: &mpsc::Receiver<DisconnectInfo>,
    attacks: &[(&str, Vec<u8>)],
    code: u16,
) {
    for (what, bytes) in attacks {
        let (sent, ended) = attack_with_frames(server, bytes);
        assert_eq!(sent, Some(code), "{what}");
        assert!(ended, "{what}: the connection stayed open");
        let info = gone.recv_timeout(DEADLINE).expect("a disconnection");
        assert_eq!(info.code, code, "{what}: {info:?}");
    }
}

/// Open a hand-made connection and send `bytes`; returns the
/// close code the server answered with (`None`: it hung up without one) and whether
/// it then ended the connection.
fn attack_with_frames(server: &Server, bytes: &[u8]) -> (Option<u16>, bool) {
    let mut wire = Wire::connect(server, "/");
    // Ignore write errors: the server may hang up before it has read everything.
    let _ = wire.send(bytes);
    let code = wire.recv_close();
    let ended = code.is_none() || wire.ends();
    (code, ended)
}

#[test]
fn invalid_utf8_in_a_text_frame_is_closed_with_1007() {
    let _guard = shared();
    let (server, gone, witness) = attacked_watched(|_| {});

    let mut split = ws_frame(OP_TEXT, false, b"[\"\xe2\x82");
    split.extend(ws_frame(OP_CONTINUATION, true, b"\x28\"]"));
    let mut close_reason = vec![0x03, 0xe8];
    close_reason.extend_from_slice(b"bye \xff\xfe");
    let attacks = [
        (
            "a single frame",
            ws_frame(
                OP_TEXT,
                true,
                b"{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"params\":[\"\xff\xfe\"],\"id\":1}",
            ),
        ),
        ("a character split over two fragments", split),
        (
            "an overlong encoding",
            ws_frame(OP_TEXT, true, b"[\"\xc0\xaf\"]"),
        ),
        (
            "a close frame's reason",
            ws_frame(OP_CLOSE, true, &close_reason),
        ),
    ];
    each_closes_with(&server, &gone, &attacks, 1007);
    after_attack_expecting(server, witness, |s| {
        s.protocol_errors = attacks.len() as u64
    });
}

#[test]
fn truncated_frame_then_close_ends_only_that_connection() {
    let _guard = shared();
    let (server, gone, witness) = attacked_watched(|_| {});

    let whole = ws_frame(OP_TEXT, true, SUM_CALL);
    let mut then_close_frame = whole[..20].to_vec();
    then_close_frame.extend(ws_frame(OP_CLOSE, true, &[0x03, 0xe8]));
    let attacks = [
        ("half a frame header", whole[..1].to_vec()),
        ("a header without its mask", whole[..2].to_vec()),
        ("a frame cut in the middle", whole[..20].to_vec()),
        ("a cut frame, then a close frame", then_close_frame),
        (
            "a first fragment only",
            ws_frame(OP_TEXT, false, &SUM_CALL[..10]),
        ),
    ];
    for (what, bytes) in &attacks {
        let mut wire = Wire::connect(&server, "/");
        wire.send(bytes).unwrap();
        // Then the client closes its side of the TCP connection.
        wire.tcp.shutdown(Shutdown::Write).unwrap();
        assert!(wire.ends(), "{what}: the server kept the connection");
        let info = gone.recv_timeout(DEADLINE).expect("a disconnection");
        assert_eq!(info.code, 1006, "{what}: {info:?}");
    }
    // No protection kicked in: a client that hangs up is no attack on the protocol.
    after_attack_expecting(server, witness, |_| {});
}

#[test]
fn oversized_message_is_closed_with_1009() {
    let _guard = shared();
    let (server, gone, witness) = attacked_watched(|c| c.max_message_size = 1024);

    let big = json_call("echo", &format!(r#"["{}"]"#, "x".repeat(2048)), 1);
    // Fragments each within the limit whose sum is over it.
    let mut fragments = ws_frame(OP_TEXT, false, &[b' '; 500]);
    fragments.extend(ws_frame(OP_CONTINUATION, false, &[b' '; 500]));
    fragments.extend(ws_frame(OP_CONTINUATION, true, &[b' '; 500]));
    let msgpack = rmp_serde::to_vec_named(
        &json!({"jsonrpc": "2.0", "method": "echo", "params": ["x".repeat(2048)], "id": 1}),
    )
    .unwrap();
    let attacks = [
        ("one text frame", ws_frame(OP_TEXT, true, big.as_bytes())),
        ("three fragments", fragments),
        ("one MessagePack frame", ws_frame(OP_BINARY, true, &msgpack)),
    ];
    each_closes_with(&server, &gone, &attacks, 1009);
    // A message at the limit is still served.
    let mut raw = connect(&server, "/");
    let fits = json_call("echo", &format!(r#"["{}"]"#, "x".repeat(1024 - 54)), 1);
    assert_eq!(fits.len(), 1024);
    assert_eq!(
        raw.request(&fits)["result"][0].as_str().map(str::len),
        Some(970)
    );
    drop(raw);
    after_attack_expecting(server, witness, |s| {
        s.oversized_messages = attacks.len() as u64
    });
}

#[test]
fn frame_larger_than_max_message_size_is_refused_at_its_header() {
    let _guard = shared();
    // Only the message limit is lowered; the frame limit keeps its 16 MiB default.
    let (server, gone, witness) = attacked_watched(|c| c.max_message_size = 64 << 10);

    // A header announcing 8 MiB, and the first KiB of the payload. A server that
    // honours max_message_size refuses at the header; one that does not waits for (and
    // buffers) all 8 MiB before it finds the message too big.
    let mut attack = vec![0x82, 0x80 | 127];
    attack.extend_from_slice(&(8u64 << 20).to_be_bytes());
    attack.extend_from_slice(&[1, 2, 3, 4]);
    attack.extend(noise(1024, 3));
    let started = Instant::now();
    let mut wire = Wire::connect(&server, "/");
    wire.tcp
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    wire.send(&attack).unwrap();
    let code = wire.recv_close();
    assert_eq!(
        code,
        Some(1009),
        "a frame announcing 8 MiB, over max_message_size (64 KiB), was not refused at its \
         header (waited {}); the server waits to buffer the whole frame",
        ms(started.elapsed())
    );
    let info = gone.recv_timeout(DEADLINE).expect("a disconnection");
    assert_eq!(info.code, 1009);
    after_attack_expecting(server, witness, |s| s.oversized_messages = 1);
}

#[test]
fn unmasked_client_frame_is_closed_with_1002() {
    let _guard = shared();
    let (server, gone, witness) = attacked_watched(|_| {});

    let unmasked = ws_frame_raw(0x80 | OP_TEXT, None, SUM_CALL);
    each_closes_with(&server, &gone, &[("an unmasked frame", unmasked)], 1002);
    after_attack_expecting(server, witness, |s| s.protocol_errors = 1);
}

#[test]
fn other_protocol_violations_are_closed_with_1002() {
    let _guard = shared();
    let (server, gone, witness) = attacked_watched(|_| {});

    let mask = Some([9, 8, 7, 6]);
    let mut interleaved = ws_frame(OP_TEXT, false, b"[1,");
    interleaved.extend(ws_frame(OP_TEXT, true, b"2]"));
    let attacks = [
        (
            "a reserved bit",
            ws_frame_raw(0x80 | 0x40 | OP_TEXT, mask, SUM_CALL),
        ),
        ("data opcode 3", ws_frame_raw(0x80 | 0x3, mask, SUM_CALL)),
        ("control opcode 11", ws_frame_raw(0x80 | 0xb, mask, b"")),
        ("a fragmented ping", ws_frame_raw(OP_PING, mask, b"p")),
        ("a ping of 126 bytes", ws_frame(OP_PING, true, &[b'p'; 126])),
        (
            "a continuation with nothing to continue",
            ws_frame(OP_CONTINUATION, true, b"[1]"),
        ),
        ("a new message inside a fragmented one", interleaved),
        ("a close frame of one byte", ws_frame(OP_CLOSE, true, &[3])),
    ];
    each_closes_with(&server, &gone, &attacks, 1002);
    after_attack_expecting(server, witness, |s| {
        s.protocol_errors = attacks.len() as u64
    });
}

#[test]
fn frame_header_declaring_100_mb_allocates_nothing_and_is_closed_with_1009() {
    let _guard = exclusive();
    let (server, gone, witness) = attacked_watched(|_| {});

    let before = rss_kib();
    let lengths = [100_000_000u64, i64::MAX as u64, u64::MAX];
    // Many at once, so that even a lazily touched allocation would show.
    let mut wires = Vec::new();
    for _ in 0..4 {
        for len in lengths {
            let mut header = vec![0x82];
            ws_length(&mut header, 0x80, len);
            header.extend_from_slice(&[1, 2, 3, 4]);
            header.extend(noise(64, len));
            let mut wire = Wire::connect(&server, "/");
            wire.send(&header).unwrap();
            wires.push((len, wire));
        }
    }
    for (len, wire) in &mut wires {
        assert_eq!(wire.recv_close(), Some(1009), "a frame of {len} bytes");
        assert!(
            wire.ends(),
            "a frame of {len} bytes: the connection stayed open"
        );
    }
    for _ in 0..wires.len() {
        let info = gone.recv_timeout(DEADLINE).expect("a disconnection");
        assert_eq!(info.code, 1009, "{info:?}");
    }
    let grown = rss_kib().saturating_sub(before);
    assert!(
        grown < 20 << 10,
        "resident memory grew by {grown} KiB for frames that were never sent"
    );
    expect_open(&server, 1, |s| s.oversized_messages = wires.len() as u64);
    drop(wires);
    after_attack(server, witness);
}

// ---------------------------------------------------------------- requests

/// A JSON array nested `depth` levels deep.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// The JSON text of a call; `params` and `id` are JSON text too.
fn json_call(method: &str, params: &str, id: impl std::fmt::Display) -> String {
    format!(r#"{{"jsonrpc":"2.0","method":"{method}","params":{params},"id":{id}}}"#)
}

/// MessagePack arrays nested `depth` levels deep around nil.
fn nested_msgpack(depth: usize) -> Vec<u8> {
    let mut bytes = vec![0x91; depth];
    bytes.push(0xc0);
    bytes
}

/// MessagePack `{"method": <method>, "params": <params>, "id": <id>}`, for a
/// `method` of under 32 bytes and an `id` under 128.
fn msgpack_call(method: &str, params: &[u8], id: u8) -> Vec<u8> {
    let mut bytes = vec![0x83, 0xa6];
    bytes.extend_from_slice(b"method");
    bytes.push(0xa0 | method.len() as u8);
    bytes.extend_from_slice(method.as_bytes());
    bytes.extend_from_slice(&[0xa6]);
    bytes.extend_from_slice(b"params");
    bytes.extend_from_slice(params);
    bytes.extend_from_slice(&[0xa2]);
    bytes.extend_from_slice(b"id");
    bytes.push(id);
    bytes
}

/// MessagePack `{"method": "echo", "params": <params>, "id": 1}`.
fn msgpack_echo(params: &[u8]) -> Vec<u8> {
    msgpack_call("echo", params, 1)
}

#[test]
fn nesting_10000_deep_gets_an_error_reply_in_both_codecs() {
    let _guard = shared();
    let (server, witness) = attacked(|_| {});
    let mut raw = connect(&server, "/");

    let deep = nested(10_000);
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    let json_frames = [
        deep.clone(),
        deep_object.clone(),
        json_call("echo", &deep, 1),
        json_call("echo", &format!("[{deep_object}]"), 1),
        json_call("sum", "[1]", &deep),
        format!("[{}]", json_call("echo", &deep, 1)),
    ];
    for frame in &json_frames {
        raw.send_text(frame);
        let reply = raw.recv();
        let reply = match reply {
            Value::Array(mut items) if items.len() == 1 => items.remove(0),
            other => other,
        };
        assert!(
            matches!(
                reply["error"]["code"].as_i64(),
                Some(-32700 | -32600 | -32602)
            ),
            "{:.50}…: {reply}",
            frame
        );
    }

    let mut deep_map = Vec::new();
    for _ in 0..10_000 {
        deep_map.extend_from_slice(&[0x81, 0xa1, b'a']);
    }
    deep_map.push(0x01);
    let msgpack_frames = [
        nested_msgpack(10_000),
        deep_map.clone(),
        msgpack_echo(&nested_msgpack(10_000)),
        msgpack_echo(&deep_map),
        // A batch holding one such request.
        [&[0x91][..], &msgpack_echo(&nested_msgpack(10_000))].concat(),
    ];
    for frame in &msgpack_frames {
        raw.send_binary(frame);
        let reply = raw.recv_msgpack();
        let expected = json!({
            "error": {
                "code": -32700,
                "message": "Parse error",
                "data": "invalid MessagePack: nested deeper than 128 levels"
            },
            "id": null
        });
        assert_eq!(reply, expected, "{:02x?}…", &frame[..8]);
    }

    // Nesting within the limit is answered, in both codecs.
    let allowed = nested(100);
    raw.send_text(&json_call("echo", &allowed, 1));
    assert_eq!(
        raw.recv_text(),
        format!(r#"{{"jsonrpc":"2.0","result":{allowed},"id":1}}"#)
    );
    raw.send_binary(&msgpack_echo(&nested_msgpack(100)));
    let echoed = raw.recv_msgpack();
    assert_eq!(
        echoed["result"],
        serde_json::from_str::<Value>(&format!("{}null{}", "[".repeat(100), "]".repeat(100)))
            .unwrap()
    );
    // The attacker's own connection is fine too.
    assert_eq!(raw.call("sum", json!([1, 2]))["result"], 3);
    drop(raw);
    after_attack_expecting(server, witness, |_| {});
}

#[test]
fn million_element_params_are_answered_with_bounded_memory() {
    let _guard = exclusive();
    let (server, witness) = attacked(|_| {});
    let before = rss_kib();
    let mut peak = before;

    let ones = format!("[{}1]", "1,".repeat(999_999));
    let mut raw = connect(&server, "/");
    raw.send_text(&json_call("sum", &ones, 1));
    assert_eq!(
        raw.recv(),
        json!({"jsonrpc": "2.0", "result": 1_000_000, "id": 1})
    );
    peak = peak.max(rss_kib());
    // Into a `Value` a million ones would be 32 MB from 2 MB of text: past the budget.
    raw.send_text(&json_call("echo", &ones, 2));
    let refused = raw.recv();
    assert_eq!(refused["error"]["code"], -32602, "{refused:.200}");
    peak = peak.max(rss_kib());
    // A million empty objects: refused by the handler's type, not by the process.
    let objects = format!("[{}{{}}]", "{},".repeat(999_999));
    raw.send_text(&json_call("sum", &objects, 3));
    let refused = raw.recv();
    assert_eq!(refused["error"]["code"], -32602, "{refused:.200}");
    peak = peak.max(rss_kib());

    // MessagePack: an array32 of a million positive fixints.
    let mut params = vec![0xdd];
    params.extend_from_slice(&1_000_000u32.to_be_bytes());
    params.extend(std::iter::repeat_n(0x01, 1_000_000));
    raw.send_binary(&msgpack_call("sum", &params, 4));
    assert_eq!(raw.recv_msgpack(), json!({"result": 1_000_000, "id": 4}));
    raw.send_binary(&msgpack_echo(&params));
    let refused = raw.recv_msgpack();
    assert_eq!(refused["error"]["code"], -32602, "{refused:.200}");
    peak = peak.max(rss_kib());
    drop(raw);
    // The two echoes were refused for their budget of values.
    expect_stats(&server, |s| {
        s.connections = 1;
        s.params_past_bounds = 2;
    });
    let after = rss_kib();
    // The JSON texts are 2 MB (4 MB for the objects); the values the echoes could
    // build were stopped at their budget.
    let peak_growth = peak.saturating_sub(before);
    let kept = after.saturating_sub(before);
    eprintln!("million-element params: peak +{peak_growth} KiB, kept +{kept} KiB");
    assert!(
        peak_growth < 256 << 10,
        "resident memory grew by {peak_growth} KiB"
    );
    assert!(
        kept < 128 << 10,
        "{kept} KiB stayed resident after the connection closed"
    );
    after_attack(server, witness);
}

/// Subscribe `raw` to `newsUpdate`, which the server lets it do.
fn subscribe_to_news(raw: &mut Raw) {
    assert_eq!(
        raw.call("rpc.on", json!(["newsUpdate"]))["result"],
        json!({"newsUpdate": "ok"})
    );
}

/// The codec a matrix case is sent in.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Codec {
    Json,
    MsgPack,
}

/// A value of each JSON type, as JSON text.
const EVERY_TYPE: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "0.0",
    "-0",
    "1",
    "-1",
    "1.5",
    "1e3",
    r#""""#,
    r#""x""#,
    r#""2.0""#,
    "[]",
    "[1]",
    r#"["sum"]"#,
    "{}",
    r#"{"a":1}"#,
];

/// A string that stands for "any string" in an expected reply.
const ANY_STRING: &str = "<any string>";

/// Whether `actual` is `expected`, where `ANY_STRING` matches any string.
fn matches(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::String(_), Value::String(e)) if e == ANY_STRING => true,
        (Value::Object(a), Value::Object(e)) => {
            a.len() == e.len()
                && e.iter()
                    .all(|(k, ev)| a.get(k).is_some_and(|av| matches(av, ev)))
        }
        (Value::Array(a), Value::Array(e)) => {
            a.len() == e.len() && a.iter().zip(e).all(|(a, e)| matches(a, e))
        }
        _ => actual == expected,
    }
}

fn is_falsy(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn error(code: i64, message: &str, data: Option<&str>) -> Value {
    let mut error = json!({"code": code, "message": message});
    if let Some(data) = data {
        error["data"] = json!(data);
    }
    error
}

/// The contract's reply (without the `jsonrpc` member) to `{"jsonrpc":"2.0",
/// "method":"sum","params":[1,2],"id":7}` with `field` replaced by `value`; `None` when
/// nothing is sent back.
fn contract_reply(codec: Codec, field: &str, value: &Value) -> Option<Value> {
    let reply = |outcome: (&str, Value), id: Value| {
        let mut reply = json!({"id": id});
        reply[outcome.0] = outcome.1;
        Some(reply)
    };
    let id = if field == "id" {
        value.clone()
    } else {
        json!(7)
    };
    let invalid = |data: &str| ("error", error(-32600, "Invalid Request", Some(data)));
    match field {
        "id" => match value {
            Value::Null => None,
            Value::Number(_) | Value::String(_) => reply(("result", json!(3)), id),
            _ => reply(invalid("Invalid id"), Value::Null),
        },
        "jsonrpc" => match value {
            Value::String(s) if s == "2.0" => reply(("result", json!(3)), id),
            // MessagePack may leave `jsonrpc` out, and nil is absent.
            Value::Null if codec == Codec::MsgPack => reply(("result", json!(3)), id),
            _ => reply(invalid("Invalid JSON RPC version"), id),
        },
        "method" => match value {
            v if is_falsy(v) => reply(
                (
                    "error",
                    error(-32602, "Invalid params", Some("Method not specified")),
                ),
                id,
            ),
            Value::String(_) => reply(("error", error(-32601, "Method not found", None)), id),
            _ => reply(invalid("Invalid method name"), id),
        },
        "params" => match value {
            Value::Array(items) if items.iter().all(Value::is_number) => {
                let sum: f64 = items.iter().filter_map(Value::as_f64).sum();
                reply(("result", json!(sum as i64)), id)
            }
            Value::Null | Value::Array(_) | Value::Object(_) => reply(
                ("error", error(-32602, "Invalid params", Some(ANY_STRING))),
                id,
            ),
            _ => reply(("error", error(-32600, "Invalid Request", None)), id),
        },
        other => panic!("no field {other}"),
    }
}

/// Send `frame` in `codec`, then a probe call; return the replies other than the
/// probe's, read until the probe's reply and `expected` others have come (a frame
/// that takes long to decode may be answered after the probe).
fn exchange_with_probe(raw: &mut Raw, codec: Codec, frame: &[u8], expected: usize) -> Vec<Value> {
    let probe = json!({"jsonrpc": "2.0", "method": "sum", "params": [20, 22], "id": "probe"});
    match codec {
        Codec::Json => {
            raw.send_text(std::str::from_utf8(frame).unwrap());
            raw.send_text(&probe.to_string());
        }
        Codec::MsgPack => {
            raw.send_binary(frame);
            raw.send_msgpack(&probe);
        }
    }
    let mut others = Vec::new();
    let mut probed = false;
    while !probed || others.len() < expected {
        let mut reply = match codec {
            Codec::Json => raw.recv(),
            Codec::MsgPack => raw.recv_msgpack(),
        };
        if codec == Codec::Json {
            let version = match &mut reply {
                Value::Array(items) => items
                    .iter_mut()
                    .filter_map(|item| item.as_object_mut()?.remove("jsonrpc"))
                    .all(|v| v == "2.0"),
                other => other
                    .as_object_mut()
                    .and_then(|o| o.remove("jsonrpc"))
                    .is_some_and(|v| v == "2.0"),
            };
            assert!(version, "a JSON reply without jsonrpc 2.0: {reply}");
        }
        if reply["id"] == "probe" {
            assert_eq!(reply, json!({"result": 42, "id": "probe"}));
            probed = true;
        } else {
            others.push(reply);
        }
    }
    others
}

/// A request object with `field` set to the raw MessagePack `value` bytes.
fn msgpack_request(field: &str, value: &[u8]) -> Vec<u8> {
    let members: [(&str, Vec<u8>); 4] = [
        ("jsonrpc", vec![0xa3, b'2', b'.', b'0']),
        ("method", vec![0xa3, b's', b'u', b'm']),
        ("params", vec![0x92, 0x01, 0x02]),
        ("id", vec![0x07]),
    ];
    let mut frame = vec![0x84];
    for (name, default) in members {
        frame.push(0xa0 | name.len() as u8);
        frame.extend_from_slice(name.as_bytes());
        if name == field {
            frame.extend_from_slice(value);
        } else {
            frame.extend_from_slice(&default);
        }
    }
    frame
}

#[test]
fn wrong_types_in_every_request_field_get_the_contracts_error_in_both_codecs() {
    let _guard = shared();
    let (server, witness) = attacked(|_| {});
    let mut raw = connect(&server, "/");
    let mut failures = Vec::new();
    let mut cases = 0;

    for field in ["jsonrpc", "method", "params", "id"] {
        for text in EVERY_TYPE {
            let value: Value = serde_json::from_str(text).unwrap();
            for codec in [Codec::Json, Codec::MsgPack] {
                let frame = match codec {
                    Codec::Json => {
                        let mut members = vec![
                            ("jsonrpc", r#""2.0""#),
                            ("method", r#""sum""#),
                            ("params", "[1,2]"),
                            ("id", "7"),
                        ];
                        for member in &mut members {
                            if member.0 == field {
                                member.1 = text;
                            }
                        }
                        let inner: Vec<String> = members
                            .iter()
                            .map(|(k, v)| format!(r#""{k}":{v}"#))
                            .collect();
                        format!("{{{}}}", inner.join(",")).into_bytes()
                    }
                    Codec::MsgPack => msgpack_request(field, &rmp_serde::to_vec(&value).unwrap()),
                };
                let expected = contract_reply(codec, field, &value);
                let got = exchange_with_probe(&mut raw, codec, &frame, expected.iter().count());
                let ok = match (&expected, got.as_slice()) {
                    (None, []) => true,
                    (Some(e), [a]) => matches(a, e),
                    _ => false,
                };
                cases += 1;
                if !ok {
                    failures.push(format!(
                        "{codec:?} {field} = {text}: expected {expected:?}, got {got:?}"
                    ));
                }
            }
        }
    }

    // Values only MessagePack has: binary, an extension, NaN.
    let only_msgpack: [(&str, &[u8]); 3] = [
        ("binary", &[0xc4, 0x03, b'2', b'.', b'0']),
        ("an extension", &[0xd4, 0x01, 0x00]),
        ("NaN", &[0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0]),
    ];
    for (what, bytes) in only_msgpack {
        // NaN is falsy in JavaScript: see nan_method_is_method_not_specified_as_in_javascript.
        let fields = ["jsonrpc", "method", "params", "id"]
            .into_iter()
            .filter(|f| !(what == "NaN" && *f == "method"));
        for field in fields {
            let got =
                exchange_with_probe(&mut raw, Codec::MsgPack, &msgpack_request(field, bytes), 1);
            let invalid = |data: Option<&str>| error(-32600, "Invalid Request", data);
            let expected = match field {
                "id" => json!({"error": invalid(Some("Invalid id")), "id": null}),
                "jsonrpc" => json!({"error": invalid(Some("Invalid JSON RPC version")), "id": 7}),
                "method" => json!({"error": invalid(Some("Invalid method name")), "id": 7}),
                _ => json!({"error": invalid(None), "id": 7}),
            };
            cases += 1;
            if got != [expected.clone()] {
                failures.push(format!(
                    "MsgPack {field} = {what}: expected {expected}, got {got:?}"
                ));
            }
        }
    }

    // Requests that are not objects at all.
    for text in EVERY_TYPE.iter().filter(|t| !t.starts_with('[')) {
        let value: Value = serde_json::from_str(text).unwrap();
        let not_object = json!({"error": error(-32600, "Invalid Request", None), "id": null});
        for codec in [Codec::Json, Codec::MsgPack] {
            if value.is_object() {
                continue;
            }
            let frame = match codec {
                Codec::Json => text.as_bytes().to_vec(),
                Codec::MsgPack => rmp_serde::to_vec(&value).unwrap(),
            };
            let got = exchange_with_probe(&mut raw, codec, &frame, 1);
            cases += 1;
            if got != [not_object.clone()] {
                failures.push(format!("{codec:?} request {text}: got {got:?}"));
            }
        }
    }
    // A MessagePack request map whose key is not a string.
    let got = exchange_with_probe(&mut raw, Codec::MsgPack, &[0x81, 0x01, 0x02], 1);
    let expected = json!({
        "error": error(-32600, "Invalid Request", Some("map keys must be strings")),
        "id": null
    });
    cases += 1;
    if got != [expected] {
        failures.push(format!("MsgPack integer key: got {got:?}"));
    }

    assert!(
        failures.is_empty(),
        "{} of {cases} cases got the wrong reply:\n{}",
        failures.len(),
        failures.join("\n")
    );
    drop(raw);
    after_attack_expecting(server, witness, |_| {});
}

#[test]
fn nan_method_is_method_not_specified_as_in_javascript() {
    let _guard = shared();
    let server = start(config());
    let mut raw = connect(&server, "/");
    // rpc-websockets checks `!message.method` before the method's type, and `!NaN` is
    // true in JavaScript: NaN is "Method not specified", as 0 and "" are.
    let nan = [0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0];
    let got = exchange_with_probe(
        &mut raw,
        Codec::MsgPack,
        &msgpack_request("method", &nan),
        1,
    );
    assert_eq!(
        got,
        [json!({
            "error": error(-32602, "Invalid params", Some("Method not specified")),
            "id": 7
        })]
    );
    drop(raw);
    server.close();
}

#[test]
fn rpc_on_and_off_with_every_type_of_params_never_crash() {
    let _guard = shared();
    let (server, witness) = attacked(|_| {});
    let mut raw = connect(&server, "/");
    let mut failures = Vec::new();
    let mut cases = 0;

    let params = [
        "null",
        "true",
        "false",
        "0",
        "1.5",
        r#""""#,
        r#""newsUpdate""#,
        "{}",
        r#"{"newsUpdate":true}"#,
        "[]",
        "[null]",
        "[1]",
        "[true]",
        "[[]]",
        r#"[["newsUpdate"]]"#,
        "[{}]",
        r#"["newsUpdate",1]"#,
        r#"[""]"#,
        r#"["nope"]"#,
        r#"["secretFeed"]"#,
        r#"["newsUpdate"]"#,
        r#"["newsUpdate","newsUpdate"]"#,
    ];
    for method in ["rpc.on", "rpc.off"] {
        for text in params {
            let value: Value = serde_json::from_str(text).unwrap();
            let expected = match &value {
                Value::Null => {
                    json!({"error": error(-32000, "Event not provided", None), "id": 7})
                }
                Value::Array(items) if items.iter().all(Value::is_string) => {
                    if method == "rpc.on" && items.contains(&json!("secretFeed")) {
                        json!({"error": error(-32606, "Event forbidden", None), "id": 7})
                    } else {
                        json!({"result": ANY_STRING, "id": 7})
                    }
                }
                Value::Array(_) | Value::Object(_) => json!({
                    "error": error(-32602, "Invalid params", Some(ANY_STRING)),
                    "id": 7
                }),
                _ => json!({"error": error(-32600, "Invalid Request", None), "id": 7}),
            };
            for codec in [Codec::Json, Codec::MsgPack] {
                let frame = match codec {
                    Codec::Json => json_call(method, text, 7).into_bytes(),
                    Codec::MsgPack => rmp_serde::to_vec_named(
                        &json!({"jsonrpc": "2.0", "method": method, "params": value, "id": 7}),
                    )
                    .unwrap(),
                };
                let got = exchange_with_probe(&mut raw, codec, &frame, 1);
                cases += 1;
                let ok = match got.as_slice() {
                    [reply] if expected["result"] == ANY_STRING => {
                        // A result map: one verdict (a string) per distinct event named.
                        let names: std::collections::BTreeSet<&str> = value
                            .as_array()
                            .unwrap()
                            .iter()
                            .filter_map(Value::as_str)
                            .collect();
                        reply["id"] == 7
                            && reply["result"].as_object().is_some_and(|m| {
                                m.len() == names.len()
                                    && names
                                        .iter()
                                        .all(|n| m.get(*n).is_some_and(Value::is_string))
                            })
                    }
                    [reply] => matches(reply, &expected),
                    _ => false,
                };
                if !ok {
                    failures.push(format!(
                        "{codec:?} {method} {text}: expected {expected}, got {got:?}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases got the wrong reply:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The connection's subscriptions are consistent: the last call was rpc.off of
    // newsUpdate, so it is not subscribed; subscribing again works and delivers.
    subscribe_to_news(&mut raw);
    server.emit("newsUpdate", json!(["after"])).unwrap();
    assert_eq!(
        raw.recv(),
        json!({"notification": "newsUpdate", "params": ["after"]})
    );
    drop(raw);
    after_attack_expecting(server, witness, |_| {});
}

#[test]
fn login_flood_is_answered_false_and_leaves_others_alone() {
    let _guard = shared();
    let (server, witness) = attacked(|_| {});
    // Logged in before the flood; it stays logged in.
    let mut member = connect(&server, "/");
    assert_eq!(
        member.call("rpc.login", json!({"username": "foo", "password": "bar"}))["result"],
        true
    );

    /// Pipeline `n` failed logins on a fresh connection, then read every answer.
    fn flood(server: &Server, n: u64, tag: u64) {
        let mut raw = connect(server, "/");
        for id in 0..n {
            let wrong = json!({"username": "foo", "password": format!("guess-{tag}-{id}")});
            let frame = json!({"jsonrpc": "2.0", "method": "rpc.login", "params": wrong, "id": id});
            raw.send_text(&frame.to_string());
        }
        // Replies may come out of order (a handler that runs past the slow-call
        // threshold under load lets later ones overtake it): match them by id.
        let mut answered = std::collections::BTreeSet::new();
        for _ in 0..n {
            let reply = raw.recv();
            assert_eq!(reply["result"], false, "flood {tag}: {reply}");
            let id = reply["id"].as_u64().expect("a numeric id");
            assert!(answered.insert(id), "flood {tag}: id {id} answered twice");
        }
        assert_eq!(
            answered,
            (0..n).collect(),
            "flood {tag}: every login answered"
        );
        // Still not logged in, and still served.
        assert_eq!(raw.call("cryptic", json!([]))["error"]["code"], -32605);
        assert_eq!(
            raw.call("rpc.login", json!({"username": "foo", "password": "bar"}))["result"],
            true
        );
    }
    let started = Instant::now();
    flood(&server, 3000, 0);
    let floods: Vec<_> = (1..=4)
        .map(|tag| {
            let server = server.clone();
            thread::spawn(move || flood(&server, 1000, tag))
        })
        .collect();
    for flood in floods {
        flood.join().expect("a flood was answered");
    }
    eprintln!("7,000 failed logins answered in {:?}", started.elapsed());

    assert_eq!(member.call("cryptic", json!([]))["result"], "boohoo");
    drop(member);
    after_attack_expecting(server, witness, |_| {});
}

#[test]
fn batch_over_max_batch_size_is_refused_whole() {
    let _guard = shared();
    let (server, witness) = attacked(|c| c.max_batch_size = 10);
    let mut raw = connect(&server, "/");

    let call = |id: usize| json!({"jsonrpc": "2.0", "method": "sum", "params": [id, 1], "id": id});
    let too_large = json!({
        "error": error(-32600, "Invalid Request", Some("Batch too large: at most 10 requests")),
        "id": null
    });
    // Send the batch `frame`, then a probe: only `too_large` comes back besides.
    let mut refused = |codec: Codec, frame: &[u8], size: &str| {
        let got = exchange_with_probe(&mut raw, codec, frame, 1);
        let name = match codec {
            Codec::Json => "JSON",
            Codec::MsgPack => "MessagePack",
        };
        assert_eq!(
            got,
            std::slice::from_ref(&too_large),
            "a {name} batch of {size}"
        );
    };
    for size in [11, 1000] {
        let batch: Vec<Value> = (0..size).map(call).collect();
        let text = serde_json::to_string(&batch).unwrap();
        refused(Codec::Json, text.as_bytes(), &size.to_string());
        let bytes = rmp_serde::to_vec_named(&batch).unwrap();
        refused(Codec::MsgPack, &bytes, &size.to_string());
    }
    // A million (empty) requests: refused as a whole, without a reply per item.
    let started = Instant::now();
    let million = format!("[{}{{}}]", "{},".repeat(999_999));
    refused(Codec::Json, million.as_bytes(), "a million");
    let mut million = vec![0xdd];
    million.extend_from_slice(&1_000_000u32.to_be_bytes());
    million.extend(std::iter::repeat_n(0x80, 1_000_000));
    refused(Codec::MsgPack, &million, "a million");
    eprintln!("batches of a million refused in {:?}", started.elapsed());
    // Within the limit, every call is answered in order.
    let batch: Vec<Value> = (0..10).map(call).collect();
    raw.send_text(&serde_json::to_string(&batch).unwrap());
    let replies = raw.recv();
    let expected: Vec<Value> = (0..10)
        .map(|id| json!({"jsonrpc": "2.0", "result": id + 1, "id": id}))
        .collect();
    assert_eq!(replies, json!(expected));
    drop(raw);
    after_attack_expecting(server, witness, |_| {});
}

// ---------------------------------------------------------------- slow clients

/// The sequence number N of an event `{"notification":"newsUpdate","params":[N,"x…"]}`
/// whose string holds `payload_len` bytes.
fn event_number(text: &str, payload_len: usize) -> u64 {
    let rest = text
        .strip_prefix(r#"{"notification":"newsUpdate","params":["#)
        .unwrap_or_else(|| panic!("not a newsUpdate event: {text:.80}"));
    let (number, tail) = rest.split_once(',').expect("a number then the payload");
    assert_eq!(tail.len(), payload_len + 4, "the whole payload arrives");
    number.parse().unwrap()
}

#[test]
fn client_that_never_reads_large_events_is_dropped_with_1008() {
    let _guard = shared();
    let (server, gone, witness) = attacked_watched(|c| c.outgoing_queue = 8);

    let mut stalled = connect(&server, "/?socket_id=stalled");
    subscribe_to_news(&mut stalled);
    let mut good = connect(&server, "/?socket_id=good");
    subscribe_to_news(&mut good);
    let payload = "x".repeat(1 << 20);
    let payload_len = payload.len();
    let (seen_tx, seen_rx) = mpsc::channel::<u64>();
    let reader = thread::spawn(move || {
        loop {
            match good.ws.read() {
                Ok(Message::Text(text)) => seen_tx.send(event_number(&text, payload_len)).unwrap(),
                Ok(_) => continue,
                Err(_) => return,
            }
        }
    });
    let next_seen = || {
        seen_rx
            .recv_timeout(DEADLINE)
            .expect("the good client gets the event")
    };
    let mut seen = Vec::new();
    let mut emitted = 0u64;
    let mut dropped = None;
    let mut after_drop = 0;
    while emitted < 300 && after_drop < 5 {
        // The good subscriber reads as it goes: only the stalled one falls behind.
        while seen.len() as u64 + 2 <= emitted {
            seen.push(next_seen());
        }
        server.emit("newsUpdate", (emitted, &payload)).unwrap();
        emitted += 1;
        if dropped.is_none() {
            dropped = gone.try_recv().ok();
        } else {
            after_drop += 1;
        }
    }
    while (seen.len() as u64) < emitted {
        seen.push(next_seen());
    }
    assert_eq!(
        seen,
        (0..emitted).collect::<Vec<_>>(),
        "every event, in order"
    );
    let dropped = dropped.expect("the client that never reads was dropped");
    assert_eq!(
        (
            dropped.socket_id.as_str(),
            dropped.code,
            dropped.reason.as_str()
        ),
        ("stalled", 1008, "outgoing queue full")
    );
    expect_open(&server, 2, |s| s.slow_clients_dropped = 1);
    drop(stalled);
    assert_serves(&server);
    witness.finish();
    server.close();
    reader.join().unwrap();
}

#[test]
fn client_that_stops_reading_its_replies_is_timed_out() {
    let _guard = shared();
    let (server, gone, witness) = attacked_watched(|c| {
        c.ping_interval = Some(Duration::from_millis(200));
        c.peer_timeout = Some(Duration::from_millis(600));
    });

    // Requests whose replies (16 MiB in all) are more than the socket buffers hold, and
    // then silence: the client neither reads nor sends anything.
    let mut stalled = connect(&server, "/?socket_id=stalled");
    stalled
        .tcp()
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let big = "y".repeat(256 << 10);
    for id in 0..48 {
        let frame = json!({"jsonrpc": "2.0", "method": "echo", "params": [big], "id": id});
        // The server may stop reading first: then the client just stops too.
        if stalled
            .ws
            .send(Message::Text(frame.to_string().into()))
            .is_err()
        {
            break;
        }
    }
    // Not heard from for peer_timeout, the client must be let go, as an idle one is.
    let started = Instant::now();
    let info = gone.recv_timeout(DEADLINE);
    assert!(
        info.is_ok(),
        "a client that stopped reading was still connected {} after it fell silent \
         (peer_timeout 600 ms); stats: {:?}",
        ms(started.elapsed()),
        server.stats()
    );
    expect_open(&server, 1, |s| s.peers_timed_out = 1);
    drop(stalled);
    after_attack(server, witness);
}

// ---------------------------------------------------------------- admission

/// Expect the handshake of `request` to be refused with HTTP `status`.
fn refused_with(server: &Server, request: impl IntoClientRequest, status: u16) {
    match tungstenite::connect(request) {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), status, "{response:?}")
        }
        Err(e) => panic!("expected HTTP {status}, got {e}"),
        Ok(_) => panic!(
            "expected HTTP {status}, the connection was accepted; stats {:?}",
            server.stats()
        ),
    }
}

#[test]
fn connection_past_max_connections_gets_503_and_the_first_n_keep_working() {
    let _guard = shared();
    let (server, witness) = attacked(|c| c.max_connections = 4);
    let url = common::url(&server, "/");

    // The witness and three more: four.
    let mut open: Vec<Raw> = (0..3).map(|_| connect(&server, "/")).collect();
    for (n, raw) in open.iter_mut().enumerate() {
        assert_eq!(raw.call("sum", json!([n, 1]))["result"], n + 1);
    }
    for _ in 0..5 {
        refused_with(&server, url.as_str(), 503);
    }
    // A client that sends nothing is refused at once too (before any thread).
    let mut silent = tcp_to(&server);
    let mut answer = String::new();
    let _ = silent.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    expect_open(&server, 4, |s| s.refused_full = 6);
    // The first four keep working.
    for (n, raw) in open.iter_mut().enumerate() {
        assert_eq!(raw.call("sum", json!([n, 2]))["result"], n + 2);
    }
    // A place given back is taken again.
    drop(open.pop());
    expect_open(&server, 3, |s| s.refused_full = 6);
    let mut again = connect(&server, "/");
    assert_eq!(again.call("sum", json!([1, 1]))["result"], 2);
    refused_with(&server, url.as_str(), 503);
    drop(again);
    drop(open);
    after_attack_expecting(server, witness, |s| s.refused_full = 7);
}

#[test]
fn slow_calls_do_not_give_back_their_connections_place() {
    let _guard = shared();
    let (server, witness) = attacked(|c| {
        c.max_connections = 2;
        c.max_connections_per_ip = 2;
    });
    let url = common::url(&server, "/");

    // The second and last place: a client whose call runs past slow_call_threshold, so
    // that a new thread takes over reading its connection.
    let mut slow = connect(&server, "/");
    assert_eq!(slow.call("sleep", json!([150]))["result"], 150);
    // It is still connected and served, so it still holds its place.
    assert_eq!(slow.call("sum", json!([1, 2]))["result"], 3);
    let stats = server.stats();
    // Each connection let in past the limit makes a slow call too, and so on.
    let mut extra = Vec::new();
    for _ in 0..3 {
        match tungstenite::connect(url.as_str()) {
            Ok((ws, _)) => {
                let mut raw = Raw { ws };
                raw.tcp().set_read_timeout(Some(DEADLINE)).unwrap();
                assert_eq!(raw.call("sleep", json!([150]))["result"], 150);
                extra.push(raw);
            }
            Err(tungstenite::Error::Http(r)) if r.status() == 503 => {}
            Err(e) => panic!("expected HTTP 503, got {e}"),
        }
    }
    assert!(
        extra.is_empty() && stats.connections == 2,
        "with max_connections = 2 and two clients connected, {} more were admitted, so {} \
         were open at once; stats after the first slow call: {stats:?}",
        extra.len(),
        2 + extra.len()
    );
    expect_open(&server, 2, |s| s.refused_full = 3);
    drop(slow);
    after_attack_expecting(server, witness, |s| s.refused_full = 3);
}

#[test]
fn connection_past_max_connections_per_ip_gets_429() {
    let _guard = shared();
    let (server, witness) = attacked(|c| {
        c.max_connections = 100;
        c.max_connections_per_ip = 3;
    });
    let url = common::url(&server, "/");

    let mut open: Vec<Raw> = (0..2).map(|_| connect(&server, "/")).collect();
    for _ in 0..3 {
        refused_with(&server, url.as_str(), 429);
    }
    expect_open(&server, 3, |s| s.refused_per_address = 3);
    for (n, raw) in open.iter_mut().enumerate() {
        assert_eq!(raw.call("sum", json!([n, 1]))["result"], n + 1);
    }
    drop(open.pop());
    expect_open(&server, 2, |s| s.refused_per_address = 3);
    let mut again = connect(&server, "/");
    assert_eq!(again.call("sum", json!([1, 1]))["result"], 2);
    drop(again);
    drop(open);
    // The fresh client of after_attack is let in too: the count per address went down.
    after_attack_expecting(server, witness, |s| s.refused_per_address = 3);
}

#[test]
fn origin_not_in_allowed_origins_gets_403() {
    let _guard = shared();
    let (server, witness) = attacked(|c| {
        c.allowed_origins = Some(vec![
            "https://good.example".to_owned(),
            "http://localhost:8080".to_owned(),
        ])
    });
    let url = common::url(&server, "/");
    let with_origin = |origin: &str| {
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
        request
    };

    let refused = [
        "https://evil.example",
        "https://good.example.evil.example",
        "https://good.example:443",
        "HTTPS://GOOD.EXAMPLE",
        "http://good.example",
        "null",
        "",
    ];
    for origin in refused {
        refused_with(&server, with_origin(origin), 403);
    }
    expect_open(&server, 1, |s| {
        s.refused_origin = refused.len() as u64;
        // A deliberate refusal is counted as such, not as a failed handshake.
        s.handshakes_failed = 0;
    });
    for origin in ["https://good.example", "http://localhost:8080"] {
        let mut raw = Raw::connect_request(with_origin(origin));
        assert_eq!(raw.call("sum", json!([1, 2]))["result"], 3, "{origin}");
    }
    // Without Origin (not a browser): accepted.
    let mut plain = connect(&server, "/");
    assert_eq!(plain.call("sum", json!([1, 2]))["result"], 3);
    drop(plain);
    after_attack_expecting(server, witness, |s| {
        s.refused_origin = refused.len() as u64;
        s.handshakes_failed = 0;
    });
}

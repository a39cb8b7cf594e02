//! Connection lifecycle over real loopback sockets: the client's backoff and its close
//! reports, a server restarting on the same port, connections dropped without a close
//! frame, calls made during an outage, heartbeats on both sides, session resume, and
//! the graceful shutdown of the interop server.
//!
//! Retry delays have no jitter, so every delay a close report announces is exact.
//! Broken networks are played by `common::Proxy`, which sits between client and server.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use common::{ChildGuard, DEADLINE, Proxy, Raw, url, wait_until};
use serde_json::{Value, json};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use wsrpc::{
    Client, ClientBuilder, CloseInfo, CloseKind, ConnectionInfo, DisconnectInfo, Error, Server,
    ServerConfig,
};

/// How long to watch for something that must NOT happen (a retry, an early return, a
/// duplicate event). Many times the retry delays used here, short enough to stay fast.
const QUIET: Duration = Duration::from_millis(300);

/// The first retry delay of the clients here: small, so reconnects are quick.
const RETRY: Duration = Duration::from_millis(20);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A client that retries every `RETRY`, forever, without jitter.
fn fast(url: &str) -> ClientBuilder {
    Client::builder(url)
        .initial_retry_delay(RETRY)
        .retry_delay_growth(1.0)
        .retry_delay_jitter(0.0)
        .max_retries(-1)
}

/// An `on_close` that forwards every report into a channel.
fn close_recorder() -> (
    impl Fn(&CloseInfo) + Send + Sync + 'static,
    Receiver<CloseInfo>,
) {
    let (tx, rx) = mpsc::channel();
    (move |info: &CloseInfo| drop(tx.send(info.clone())), rx)
}

/// An event callback that forwards every params value into a channel.
fn forwarder() -> (impl Fn(&Value) + Send + Sync + 'static, Receiver<Value>) {
    let (tx, rx) = mpsc::channel();
    (move |params: &Value| drop(tx.send(params.clone())), rx)
}

/// Connect with an `on_close` that records every report; returns the client and the
/// reports.
fn connect_recording(builder: ClientBuilder) -> (Client, Receiver<CloseInfo>) {
    let (on_close, closes) = close_recorder();
    (builder.on_close(on_close).connect().unwrap(), closes)
}

/// An `on_error` that counts its calls.
fn error_counter() -> (impl Fn(&Error) + Send + Sync + 'static, Arc<AtomicUsize>) {
    let errors = Arc::new(AtomicUsize::new(0));
    let counter = errors.clone();
    (
        move |_: &Error| {
            counter.fetch_add(1, Ordering::SeqCst);
        },
        errors,
    )
}

fn next_close(closes: &Receiver<CloseInfo>) -> CloseInfo {
    closes
        .recv_timeout(DEADLINE)
        .expect("on_close before the deadline")
}

/// The next close report, asserted as `assert_close` does.
fn expect_close(
    closes: &Receiver<CloseInfo>,
    kind: CloseKind,
    retries: u32,
    next_delay: Option<Duration>,
) -> CloseInfo {
    let info = next_close(closes);
    assert_close(&info, kind, retries, next_delay);
    info
}

fn login(client: &Client) {
    let answer = client
        .login(json!({"username": "foo", "password": "bar"}))
        .expect("good credentials are accepted");
    assert_eq!(answer, json!(true));
}

fn whoami(client: &Client) -> String {
    client.call_as("whoami", ()).expect("whoami answers")
}

/// A round trip, so the server has surely registered the connection: a close that
/// comes during the tail of a handshake is a case of its own (tested below).
fn settle(client: &Client) {
    assert_eq!(client.call("sum", [1, 1]).unwrap(), json!(2));
}

/// Replace the fixture's login with one that counts its calls and answers only after
/// `delay`. A call sent while such a login is still running overtakes it (the server
/// reads on while a handler is slow) and finds the client not logged in: so a protected
/// call that succeeds was sent after the login was answered.
fn counting_login(server: &Server, delay: Duration) -> Arc<AtomicUsize> {
    let logins = Arc::new(AtomicUsize::new(0));
    let counter = logins.clone();
    server.set_auth(move |params: Value, _| {
        counter.fetch_add(1, Ordering::SeqCst);
        thread::sleep(delay);
        Ok(params == json!({"username": "foo", "password": "bar"}))
    });
    logins
}

/// An address nothing listens on (the OS just handed it out and it was let go).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Listen on `addr` again (a port just freed), retrying until the deadline.
fn listen_at(addr: SocketAddr) -> TcpListener {
    let mut listener = None;
    assert!(
        wait_until(|| {
            listener = TcpListener::bind(addr).ok();
            listener.is_some()
        }),
        "could not listen on {addr} again"
    );
    listener.unwrap()
}

/// Whether anybody connects to `listener` within `window`.
fn connection_within(listener: &TcpListener, window: Duration) -> bool {
    listener.set_nonblocking(true).unwrap();
    let end = Instant::now() + window;
    while Instant::now() < end {
        match listener.accept() {
            Ok(_) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => thread::sleep(ms(5)),
            Err(e) => panic!("accept failed: {e}"),
        }
    }
    false
}

/// Assert a close report's kind, retries made and announced delay (and so whether it
/// reconnects).
fn assert_close(info: &CloseInfo, kind: CloseKind, retries: u32, next_delay: Option<Duration>) {
    assert_eq!(
        (info.kind, info.retries, info.next_delay, info.reconnecting),
        (kind, retries, next_delay, next_delay.is_some()),
        "{info:?}"
    );
}

fn assert_no_more_closes(closes: &Receiver<CloseInfo>) {
    match closes.try_recv() {
        Err(TryRecvError::Empty) => {}
        other => panic!("an unexpected close report: {other:?}"),
    }
}

/// A client that gave up: a server listening on `addr` again hears from nobody, and
/// no more close reports come. `what` names the retry that must not happen.
fn assert_no_retry(addr: SocketAddr, closes: &Receiver<CloseInfo>, what: &str) {
    let listener = listen_at(addr);
    assert!(!connection_within(&listener, QUIET), "{what}");
    assert_no_more_closes(closes);
}

fn assert_not_connected(client: &Client) {
    let call = client.call("sum", [1, 1]);
    assert!(matches!(call, Err(Error::NotConnected)), "{call:?}");
}

/// Wait for the client to be connected again, and make a call over the new connection.
fn assert_reconnects(client: &Client) {
    assert!(wait_until(|| client.is_connected()), "no reconnect");
    assert_eq!(client.call("sum", [1, 2]).unwrap(), json!(3));
}

// ---------------------------------------------------------------- backoff

#[test]
fn backoff_grows_to_the_cap_and_stops_after_max_retries() {
    let server = common::start();
    let addr = server.local_addr();
    let (on_error, errors) = error_counter();
    let (client, closes) = connect_recording(
        Client::builder(&url(&server, "/"))
            .initial_retry_delay(ms(20))
            .retry_delay_growth(2.0)
            .max_retry_delay(ms(100))
            .retry_delay_jitter(0.0)
            .max_retries(5)
            .on_error(on_error),
    );
    settle(&client);

    let went_away = Instant::now();
    server.close();
    let lost = expect_close(&closes, CloseKind::Lost, 0, Some(ms(20)));
    assert_eq!(lost.code, 1001, "{lost:?}");

    // Nothing listens now: each retry fails and is reported once, with the delay to
    // the next one: times 2 each time, capped at 100 ms, none after the 5th retry.
    let expected = [
        (1, Some(ms(40))),
        (2, Some(ms(80))),
        (3, Some(ms(100))),
        (4, Some(ms(100))),
        (5, None),
    ];
    for (retries, next_delay) in expected {
        let info = expect_close(&closes, CloseKind::Unreachable, retries, next_delay);
        assert_eq!(info.code, 1006, "{info:?}");
    }
    // The client did wait: 20 + 40 + 80 + 100 + 100 ms at least.
    let took = went_away.elapsed();
    assert!(took >= ms(340), "five retries took only {took:?}");
    assert!(took < Duration::from_secs(5), "five retries took {took:?}");

    // Given up: a server listening on the port now hears from nobody.
    assert_no_retry(addr, &closes, "the client tried again past max_retries");
    assert_eq!(errors.load(Ordering::SeqCst), 5, "one on_error per attempt");
    assert!(!client.is_connected());
    client.close();
}

#[test]
fn retry_if_unreachable_false_gives_up_after_the_first_attempt() {
    let addr = free_addr();
    let (on_close, closes) = close_recorder();
    let (on_error, errors) = error_counter();
    let client = Client::builder(&format!("ws://{addr}/"))
        .initial_retry_delay(ms(20))
        .retry_delay_jitter(0.0)
        .retry_if_unreachable(false)
        .on_close(on_close)
        .on_error(on_error)
        .build();

    expect_close(&closes, CloseKind::Unreachable, 0, None);

    // A retry would now reach this listener.
    assert_no_retry(addr, &closes, "the client retried an unreachable server");
    assert_eq!(errors.load(Ordering::SeqCst), 1);
    assert_not_connected(&client);
    client.close();
}

/// Cut the client off and refuse it until it has reported the drop and then failed
/// attempts, the k-th report announcing `delays[k]`; then let it back in and wait for
/// the reconnect.
fn refuse_until_delays(
    proxy: &Proxy,
    client: &Client,
    closes: &Receiver<CloseInfo>,
    delays: &[Duration],
) {
    proxy.refuse(true);
    proxy.cut_all();
    expect_close(closes, CloseKind::Lost, 0, Some(delays[0]));
    for (retries, delay) in (1..).zip(&delays[1..]) {
        expect_close(closes, CloseKind::Unreachable, retries, Some(*delay));
    }
    proxy.refuse(false);
    assert!(wait_until(|| client.is_connected()), "no reconnect");
}

#[test]
fn the_backoff_starts_over_after_a_successful_reconnect() {
    let server = common::start();
    let proxy = Proxy::to(&server);
    let (client, closes) = connect_recording(
        Client::builder(&proxy.url("/"))
            .initial_retry_delay(ms(20))
            .retry_delay_growth(2.0)
            .retry_delay_jitter(0.0)
            .max_retries(-1),
    );

    refuse_until_delays(&proxy, &client, &closes, &[ms(20), ms(40), ms(80)]);
    assert_no_more_closes(&closes);

    // Dropped again: counted from the start, not from where the last outage ended.
    refuse_until_delays(&proxy, &client, &closes, &[ms(20), ms(40)]);
    client.close();
    server.close();
}

#[test]
fn reconnect_interval_and_max_reconnects_are_the_first_delay_and_the_retry_cap() {
    let server = common::start();
    let (client, closes) = connect_recording(
        Client::builder(&url(&server, "/"))
            .reconnect_interval(ms(30))
            .max_reconnects(2)
            .retry_delay_growth(2.0)
            .retry_delay_jitter(0.0),
    );
    settle(&client);

    server.close();
    expect_close(&closes, CloseKind::Lost, 0, Some(ms(30)));
    expect_close(&closes, CloseKind::Unreachable, 1, Some(ms(60)));
    expect_close(&closes, CloseKind::Unreachable, 2, None);
    assert_eq!(
        closes.recv_timeout(QUIET).err(),
        Some(RecvTimeoutError::Timeout),
        "a retry past max_reconnects"
    );
    client.close();
}

#[test]
fn reconnect_false_reports_the_drop_and_makes_no_attempt() {
    let server = common::start();
    let addr = server.local_addr();
    let (client, closes) = connect_recording(
        Client::builder(&url(&server, "/"))
            .reconnect(false)
            .initial_retry_delay(ms(20))
            .retry_delay_jitter(0.0),
    );
    settle(&client);

    server.close();
    let lost = expect_close(&closes, CloseKind::Lost, 0, None);
    assert_eq!(lost.code, 1001, "{lost:?}");
    assert_no_retry(
        addr,
        &closes,
        "the client reconnected with reconnect(false)",
    );
    client.close();
}

#[test]
fn retry_if_unreachable_false_still_retries_a_server_it_was_connected_to() {
    let server = common::start();
    let addr = server.local_addr();
    let (client, closes) = connect_recording(fast(&url(&server, "/")).retry_if_unreachable(false));

    server.close();
    expect_close(&closes, CloseKind::Lost, 0, Some(RETRY));
    expect_close(&closes, CloseKind::Unreachable, 1, Some(RETRY));
    let server = common::start_at(addr, Server::builder);
    assert!(wait_until(|| client.is_connected()), "no reconnect");
    client.close();
    server.close();
}

// ---------------------------------------------------------------- restarts and drops

#[test]
fn a_restarted_server_gets_login_and_subscriptions_back_before_the_client_is_ready() {
    let server = common::start();
    let addr = server.local_addr();
    let opens = Arc::new(AtomicUsize::new(0));
    let (client, closes) = connect_recording(fast(&url(&server, "/")).on_open({
        let opens = opens.clone();
        move || {
            opens.fetch_add(1, Ordering::SeqCst);
        }
    }));
    let (callback, news) = forwarder();
    client.subscribe("newsUpdate", callback).unwrap();
    login(&client);
    assert!(wait_until(|| opens.load(Ordering::SeqCst) == 1));

    server.close();
    let lost = expect_close(&closes, CloseKind::Lost, 0, Some(RETRY));
    assert_eq!(lost.code, 1001, "{lost:?}");

    let server = common::start_at(addr, Server::builder);
    // A slow login: a call let through before it is answered would fail.
    let logins = counting_login(&server, ms(150));
    assert!(wait_until(|| client.is_connected()), "no reconnect");
    // Right away: both were restored before the client said it was connected.
    server
        .emit("newsUpdate", json!({"after": "restart"}))
        .unwrap();
    assert_eq!(client.call("cryptic", ()).unwrap(), json!("boohoo"));
    assert_eq!(
        news.recv_timeout(DEADLINE).unwrap(),
        json!({"after": "restart"})
    );
    assert_eq!(logins.load(Ordering::SeqCst), 1);
    assert!(
        wait_until(|| opens.load(Ordering::SeqCst) == 2),
        "on_open did not run again"
    );

    client.close();
    server.close();
}

/// A race, so it is tried many times at once: `close()` while a client's handshake has
/// just completed (the client has its 101 response; the server thread has not yet
/// registered the connection) must still send that client 1001, as it promises every
/// client.
#[test]
fn server_close_sends_1001_even_right_after_a_handshake() {
    fn once() -> Result<(), String> {
        let server = common::start();
        let mut raw = Raw::connect(&url(&server, "/"));
        let closer = {
            let server = server.clone();
            thread::spawn(move || server.close())
        };
        let outcome = loop {
            match raw.ws.read() {
                Ok(tungstenite::Message::Close(frame)) => {
                    let _ = raw.ws.flush();
                    let code = frame.map(|f| u16::from(f.code));
                    break match code {
                        Some(1001) => Ok(()),
                        other => Err(format!("close code {other:?}")),
                    };
                }
                Ok(_) => continue,
                Err(e) => break Err(format!("no close frame: {e}")),
            }
        };
        closer.join().unwrap();
        outcome
    }
    let loops: Vec<_> = (0..4)
        .map(|_| thread::spawn(|| (0..50).map(|_| once()).find(Result::is_err)))
        .collect();
    for result in loops {
        if let Some(Err(problem)) = result.join().unwrap() {
            panic!("a client connected just before server.close(): {problem}");
        }
    }
}

#[test]
fn stop_reconnecting_in_on_close_prevents_every_retry_until_open() {
    let server = common::start();
    let addr = server.local_addr();
    let (tx, closes) = mpsc::channel::<CloseInfo>();
    let client = fast(&url(&server, "/"))
        .on_close(move |info| {
            if info.kind == CloseKind::Lost {
                info.stop_reconnecting();
            }
            let _ = tx.send(info.clone());
        })
        .connect()
        .unwrap();

    server.close();
    let lost = next_close(&closes);
    assert_eq!(lost.kind, CloseKind::Lost, "{lost:?}");
    // A server on the same port again: a retry would now reach it.
    let (conn_tx, connections) = mpsc::channel::<String>();
    let server = common::start_at(addr, || {
        let conn_tx = conn_tx.clone();
        Server::builder().on_connection(move |c| drop(conn_tx.send(c.socket_id.clone())))
    });
    assert_eq!(
        connections.recv_timeout(QUIET),
        Err(RecvTimeoutError::Timeout),
        "the client reconnected after stop_reconnecting()"
    );
    assert_no_more_closes(&closes);
    assert!(!client.is_connected());
    assert_not_connected(&client);

    client.open().expect("open() connects again");
    connections
        .recv_timeout(DEADLINE)
        .expect("the server saw the connection");
    assert_eq!(client.call("sum", [1, 2]).unwrap(), json!(3));

    client.close();
    server.close();
}

/// Connect with an `on_close` that runs `on_lost` with the client itself on each
/// report of a lost connection.
fn connect_with_on_lost(
    builder: ClientBuilder,
    on_lost: impl Fn(&Client) + Send + Sync + 'static,
) -> Client {
    // The client, for the callback; set once the client is built.
    let slot = Arc::new(OnceLock::<Client>::new());
    let client = builder
        .on_close({
            let slot = slot.clone();
            move |info| {
                if let (CloseKind::Lost, Some(client)) = (info.kind, slot.get()) {
                    on_lost(client);
                }
            }
        })
        .connect()
        .unwrap();
    let _ = slot.set(client.clone());
    client
}

#[test]
fn close_inside_a_slow_on_close_returns_and_ends_the_client() {
    let server = common::start();
    let proxy = Proxy::to(&server);
    let (tx, closed) = mpsc::channel();
    let client = connect_with_on_lost(fast(&proxy.url("/")), move |client| {
        // Past the retry delay: the client is waiting for on_close already.
        thread::sleep(5 * RETRY);
        client.close();
        let _ = tx.send(());
    });

    proxy.cut_all();
    closed
        .recv_timeout(DEADLINE)
        .expect("close() inside on_close returned");
    let call = client.call("sum", [1, 1]);
    assert!(matches!(call, Err(Error::Closed)), "{call:?}");
    assert!(matches!(client.open(), Err(Error::Closed)));
    server.close();
}

/// `open()` inside on_close, by a client with nothing to restore and by one that must
/// log in and subscribe again first; returns what `open()` returned.
fn open_inside_on_close(restore: bool) -> Result<(), Error> {
    let server = common::start();
    let proxy = Proxy::to(&server);
    let (tx, opened) = mpsc::channel();
    // No retry of its own within the test: only open() can reconnect it.
    let client = connect_with_on_lost(
        Client::builder(&proxy.url("/")).initial_retry_delay(Duration::from_secs(60)),
        move |client| drop(tx.send(client.open())),
    );
    if restore {
        client.subscribe("newsUpdate", |_| {}).unwrap();
        login(&client);
    }

    proxy.cut_all();
    // A reconnect to a server that is there takes milliseconds.
    let outcome = opened
        .recv_timeout(Duration::from_secs(3))
        .expect("open() inside on_close returned");
    // From the callback thread, open() may return before the restore, which runs there.
    assert!(wait_until(|| client.is_connected()), "no reconnect");
    settle(&client);
    client.close();
    server.close();
    outcome
}

#[test]
fn open_inside_on_close_reconnects_at_once() {
    let outcome = open_inside_on_close(false);
    assert!(outcome.is_ok(), "{outcome:?}");
}

#[test]
fn open_inside_on_close_returns_when_login_and_subscriptions_need_restoring() {
    let outcome = open_inside_on_close(true);
    assert!(outcome.is_ok(), "{outcome:?}");
}

#[test]
fn a_tcp_drop_without_close_frame_is_lost_1006_and_fails_pending_calls_at_once() {
    let server = common::start();
    // A handler that says when it runs and returns only when told to.
    let (started_tx, started) = mpsc::channel::<()>();
    let (release, released) = mpsc::channel::<()>();
    let released = Mutex::new(released);
    server.register("hold", move |_: Value, _| {
        let _ = started_tx.send(());
        let _ = released.lock().unwrap().recv_timeout(DEADLINE);
        Ok(true)
    });
    let proxy = Proxy::to(&server);
    let (client, closes) = connect_recording(fast(&proxy.url("/")));

    let caller = {
        let client = client.clone();
        thread::spawn(move || {
            let outcome = client.call_timeout("hold", json!([]), DEADLINE);
            (outcome, Instant::now())
        })
    };
    started.recv_timeout(DEADLINE).expect("the handler started");
    let cut_at = Instant::now();
    proxy.cut_all();

    let (outcome, failed_at) = caller.join().unwrap();
    assert!(matches!(outcome, Err(Error::ConnectionLost)), "{outcome:?}");
    let waited = failed_at.duration_since(cut_at);
    assert!(
        waited < Duration::from_secs(1),
        "failed only after {waited:?}"
    );
    let lost = expect_close(&closes, CloseKind::Lost, 0, Some(RETRY));
    assert_eq!(lost.code, 1006, "{lost:?}");

    assert_reconnects(&client);
    // One report for the drop; the first retry succeeded.
    assert_no_more_closes(&closes);

    let _ = release.send(());
    client.close();
    server.close();
}

// ---------------------------------------------------------------- calls during an outage

#[test]
fn calls_during_an_outage_fail_not_connected_at_once_by_default() {
    let server = common::start();
    let (client, closes) = connect_recording(fast(&url(&server, "/")));

    server.close();
    let lost = next_close(&closes);
    assert!(lost.reconnecting, "{lost:?}");
    let started = Instant::now();
    assert_not_connected(&client);
    assert!(started.elapsed() < ms(500), "took {:?}", started.elapsed());
    client.close();
}

#[test]
fn wait_while_reconnecting_holds_a_call_until_login_is_restored() {
    let server = common::start();
    let logins = counting_login(&server, ms(150));
    let proxy = Proxy::to(&server);
    let (client, closes) = connect_recording(fast(&proxy.url("/")).wait_while_reconnecting(true));
    login(&client);

    proxy.refuse(true);
    proxy.cut_all();
    let lost = next_close(&closes);
    assert_eq!(lost.kind, CloseKind::Lost, "{lost:?}");
    assert!(!client.is_connected());

    let (done_tx, done) = mpsc::channel();
    {
        let client = client.clone();
        thread::spawn(move || drop(done_tx.send(client.call_timeout("cryptic", (), DEADLINE))));
    }
    // Attempts fail meanwhile; the call waits through them.
    let failed = next_close(&closes);
    assert_eq!(failed.kind, CloseKind::Unreachable, "{failed:?}");
    assert!(
        matches!(done.recv_timeout(QUIET), Err(RecvTimeoutError::Timeout)),
        "the call did not wait for the reconnect"
    );

    proxy.refuse(false);
    let outcome = done.recv_timeout(DEADLINE).expect("the call returned");
    // Sent once the (slow) login was restored, so the protected method lets it in.
    assert_eq!(outcome.unwrap(), json!("boohoo"));
    assert_eq!(logins.load(Ordering::SeqCst), 2);
    client.close();
    server.close();
}

#[test]
fn wait_while_reconnecting_gives_timeout_when_no_server_comes_back() {
    let server = common::start();
    let (client, closes) =
        connect_recording(fast(&url(&server, "/")).wait_while_reconnecting(true));

    server.close();
    next_close(&closes);
    let started = Instant::now();
    let call = client.call_timeout("sum", [1, 1], ms(200));
    let took = started.elapsed();
    assert!(matches!(call, Err(Error::Timeout)), "{call:?}");
    assert!(took >= ms(200), "gave up after {took:?}");
    assert!(took < Duration::from_secs(2), "gave up only after {took:?}");
    client.close();
}

// ---------------------------------------------------------------- heartbeats

fn heartbeat_config(ping: Option<Duration>, timeout: Option<Duration>) -> ServerConfig {
    let mut config = common::quick_close(200);
    config.ping_interval = ping;
    config.peer_timeout = timeout;
    config
}

/// A fixture server with this config; on_disconnection reports go to the channel.
fn recording_server(config: ServerConfig) -> (Server, Receiver<DisconnectInfo>) {
    let (tx, rx) = mpsc::channel();
    let server = common::start_with(
        Server::builder()
            .config(config)
            .on_disconnection(move |d| drop(tx.send(d.clone()))),
    );
    (server, rx)
}

/// A fixture server with these heartbeats; on_disconnection reports go to the channel.
fn heartbeat_server(
    ping: Option<Duration>,
    timeout: Option<Duration>,
) -> (Server, Receiver<DisconnectInfo>) {
    recording_server(heartbeat_config(ping, timeout))
}

/// After an idle spell: the server holds just this client and dropped nobody, and
/// the client is connected.
fn assert_kept(
    server: &Server,
    disconnections: &Receiver<DisconnectInfo>,
    client: &Client,
    id: &str,
) {
    assert_eq!(server.clients(), [id]);
    assert!(
        matches!(disconnections.try_recv(), Err(TryRecvError::Empty)),
        "the idle client was dropped"
    );
    assert!(client.is_connected());
}

#[test]
fn the_server_drops_a_client_silent_past_peer_timeout() {
    let (server, disconnections) = heartbeat_server(Some(ms(50)), Some(ms(200)));
    let proxy = Proxy::to(&server);
    // The client neither pings nor times out: only the server's heartbeat acts.
    let client = Client::builder(&proxy.url("/"))
        .ping_interval(None)
        .peer_timeout(None)
        .reconnect(false)
        .connect()
        .unwrap();
    let id = whoami(&client);

    proxy.stall(true);
    let stalled_at = Instant::now();
    let gone = disconnections
        .recv_timeout(DEADLINE)
        .expect("the stalled client was dropped");
    let waited = stalled_at.elapsed();
    assert_eq!(gone.socket_id, id);
    assert_eq!(
        (gone.code, gone.reason.as_str()),
        (1006, "peer timed out"),
        "{gone:?}"
    );
    // It was heard from within a ping interval (and a tick) before the stall.
    assert!(waited >= ms(100), "dropped after only {waited:?}");
    assert!(
        waited < Duration::from_secs(3),
        "dropped only after {waited:?}"
    );
    assert!(wait_until(|| server.clients().is_empty()));

    proxy.stall(false);
    client.close();
    server.close();
}

#[test]
fn the_server_keeps_an_idle_client_that_answers_its_pings() {
    let (server, disconnections) = heartbeat_server(Some(ms(50)), Some(ms(200)));
    // Only the server pings; the client's pongs alone keep it connected.
    let client = Client::builder(&url(&server, "/"))
        .ping_interval(None)
        .peer_timeout(None)
        .connect()
        .unwrap();
    let id = whoami(&client);

    // Idle for four peer timeouts: a wait for a duration, by design.
    thread::sleep(4 * ms(200));
    assert_kept(&server, &disconnections, &client, &id);
    assert_eq!(client.call("sum", [1, 2]).unwrap(), json!(3));

    client.close();
    server.close();
}

#[test]
fn the_client_reports_a_silent_server_lost_and_reconnects_when_it_answers_again() {
    // The server never pings: only the client's heartbeat acts.
    let (server, _) = heartbeat_server(None, None);
    let proxy = Proxy::to(&server);
    let (client, closes) = connect_recording(
        fast(&proxy.url("/"))
            .ping_interval(Some(ms(50)))
            .peer_timeout(Some(ms(200))),
    );

    proxy.stall(true);
    let stalled_at = Instant::now();
    let lost = next_close(&closes);
    let waited = stalled_at.elapsed();
    assert_eq!(
        (lost.kind, lost.code, lost.reason.as_str()),
        (CloseKind::Lost, 1006, "server timed out"),
        "{lost:?}"
    );
    assert!(lost.reconnecting, "{lost:?}");
    assert!(waited >= ms(100), "timed out after only {waited:?}");
    assert!(
        waited < Duration::from_secs(3),
        "timed out only after {waited:?}"
    );
    assert!(!client.is_connected());

    // The retry hangs in its handshake while stalled, and completes once bytes flow.
    proxy.stall(false);
    assert_reconnects(&client);
    client.close();
    server.close();
}

#[test]
fn the_client_stays_connected_to_an_idle_server_that_answers_its_pings() {
    let (server, disconnections) = heartbeat_server(None, None);
    let (client, closes) = connect_recording(
        fast(&url(&server, "/"))
            .ping_interval(Some(ms(50)))
            .peer_timeout(Some(ms(200))),
    );
    let id = whoami(&client);

    // Idle for four peer timeouts: a wait for a duration, by design.
    thread::sleep(4 * ms(200));
    assert_no_more_closes(&closes);
    assert_kept(&server, &disconnections, &client, &id);

    client.close();
    server.close();
}

// ---------------------------------------------------------------- session resume

/// The config of the session tests: sessions kept for `session_ttl`.
fn session_config(session_ttl: Option<Duration>) -> ServerConfig {
    let mut config = common::quick_close(200);
    config.session_ttl = session_ttl;
    config
}

/// A subscribed, logged-in client behind a proxy, and what the server saw of it.
struct Outage {
    server: Server,
    proxy: Proxy,
    client: Client,
    news: Receiver<Value>,
    logins: Arc<AtomicUsize>,
    connections: Receiver<ConnectionInfo>,
    socket_id: String,
}

impl Outage {
    fn new(session_ttl: Option<Duration>) -> Outage {
        let (tx, connections) = mpsc::channel();
        let server = common::start_with(
            Server::builder()
                .config(session_config(session_ttl))
                .on_connection(move |c| drop(tx.send(c.clone()))),
        );
        let logins = counting_login(&server, Duration::ZERO);
        let proxy = Proxy::to(&server);
        let client = fast(&proxy.url("/")).connect().unwrap();
        let (callback, news) = forwarder();
        client.subscribe("newsUpdate", callback).unwrap();
        login(&client);
        let socket_id = whoami(&client);
        let first = connections.recv_timeout(DEADLINE).unwrap();
        assert_eq!(first.socket_id, socket_id);
        Outage {
            server,
            proxy,
            client,
            news,
            logins,
            connections,
            socket_id,
        }
    }

    /// Drop the connection without a close frame and keep the client out until the
    /// server has seen it go.
    fn drop_connection(&self) {
        self.proxy.refuse(true);
        self.proxy.cut_all();
        assert!(
            wait_until(|| self.server.clients().is_empty()),
            "the server did not notice the drop"
        );
    }

    /// Let the client back in and wait for it to be ready; returns the server's view
    /// of the new connection.
    fn readmit(&self) -> ConnectionInfo {
        self.proxy.refuse(false);
        assert!(wait_until(|| self.client.is_connected()), "no reconnect");
        self.connections
            .recv_timeout(DEADLINE)
            .expect("the server saw the reconnect")
    }

    fn emit(&self, n: u64) {
        self.server.emit("newsUpdate", json!({"n": n})).unwrap();
    }

    fn next_news(&self) -> Value {
        self.news.recv_timeout(DEADLINE).expect("an event")
    }

    fn assert_no_more_news(&self) {
        assert_eq!(
            self.news.recv_timeout(QUIET),
            Err(RecvTimeoutError::Timeout),
            "an unexpected event"
        );
    }

    fn finish(self) {
        self.client.close();
        drop(self.proxy);
        self.server.close();
    }
}

#[test]
fn a_resumed_session_keeps_socket_id_login_subscriptions_and_missed_events() {
    let outage = Outage::new(Some(Duration::from_secs(10)));
    outage.drop_connection();
    for n in 1..=3 {
        outage.emit(n);
    }

    let again = outage.readmit();
    assert_eq!(again.socket_id, outage.socket_id, "a new session");
    // The events emitted while it was away, in order, exactly once, though the
    // client never subscribed again.
    for n in 1..=3 {
        assert_eq!(outage.next_news(), json!({"n": n}));
    }
    outage.emit(4);
    assert_eq!(outage.next_news(), json!({"n": 4}));
    outage.assert_no_more_news();

    assert_eq!(whoami(&outage.client), outage.socket_id);
    assert_eq!(outage.client.call("cryptic", ()).unwrap(), json!("boohoo"));
    assert_eq!(
        outage.logins.load(Ordering::SeqCst),
        1,
        "the client logged in again"
    );
    outage.finish();
}

#[test]
fn without_session_ttl_a_reconnect_restores_but_misses_the_outage_events() {
    let outage = Outage::new(None);
    outage.drop_connection();
    for n in 1..=3 {
        outage.emit(n);
    }

    let again = outage.readmit();
    assert_ne!(again.socket_id, outage.socket_id);
    assert_eq!(whoami(&outage.client), again.socket_id);
    // Restored by logging in and subscribing again, before the client was ready.
    assert_eq!(outage.logins.load(Ordering::SeqCst), 2);
    outage.emit(4);
    assert_eq!(outage.next_news(), json!({"n": 4}), "an outage event came");
    outage.assert_no_more_news();
    assert_eq!(outage.client.call("cryptic", ()).unwrap(), json!("boohoo"));
    outage.finish();
}

#[test]
fn a_session_older_than_session_ttl_is_not_resumed() {
    let ttl = ms(150);
    let outage = Outage::new(Some(ttl));
    outage.drop_connection();
    outage.emit(1);
    // Past the session's time: a wait for a duration, by design.
    thread::sleep(2 * ttl);

    let again = outage.readmit();
    assert_ne!(again.socket_id, outage.socket_id, "the session was resumed");
    assert_eq!(outage.logins.load(Ordering::SeqCst), 2);
    outage.emit(2);
    assert_eq!(outage.next_news(), json!({"n": 2}), "a missed event came");
    outage.assert_no_more_news();
    outage.finish();
}

#[test]
fn a_client_dropped_for_silence_resumes_its_session() {
    let mut config = heartbeat_config(Some(ms(50)), Some(ms(200)));
    config.session_ttl = Some(Duration::from_secs(10));
    let (server, disconnections) = recording_server(config);
    let proxy = Proxy::to(&server);
    let (client, closes) =
        connect_recording(fast(&proxy.url("/")).ping_interval(None).peer_timeout(None));
    let (callback, news) = forwarder();
    client.subscribe("newsUpdate", callback).unwrap();
    let id = whoami(&client);

    proxy.stall(true);
    let gone = disconnections.recv_timeout(DEADLINE).expect("dropped");
    assert_eq!((gone.code, gone.reason.as_str()), (1006, "peer timed out"));
    server.emit("newsUpdate", json!({"n": 1})).unwrap();
    proxy.stall(false);

    // The client sees the drop once bytes flow again, and comes back to its session.
    assert_eq!(next_close(&closes).kind, CloseKind::Lost);
    assert_eq!(news.recv_timeout(DEADLINE).unwrap(), json!({"n": 1}));
    assert_eq!(whoami(&client), id);
    client.close();
    drop(proxy);
    server.close();
}

#[test]
fn a_client_dropped_for_a_full_queue_does_not_resume() {
    let mut config = session_config(Some(Duration::from_secs(10)));
    config.outgoing_queue = 2;
    let (server, disconnections) = recording_server(config);
    let proxy = Proxy::to(&server);
    let (client, closes) = connect_recording(fast(&proxy.url("/")));
    client.subscribe("newsUpdate", |_| {}).unwrap();
    let id = whoami(&client);

    // Events pile up behind a client that reads nothing, until the server gives up.
    proxy.stall(true);
    let big = json!({"filler": "x".repeat(256 << 10)});
    let mut gone = None;
    assert!(
        wait_until(|| {
            server.emit("newsUpdate", &big).unwrap();
            gone = disconnections.try_recv().ok();
            gone.is_some()
        }),
        "the stalled client was never disconnected"
    );
    let gone = gone.unwrap();
    assert_eq!(
        (gone.code, gone.reason.as_str()),
        (1008, "outgoing queue full")
    );
    proxy.stall(false);

    assert_eq!(next_close(&closes).kind, CloseKind::Lost);
    assert!(wait_until(|| client.is_connected()), "no reconnect");
    assert_ne!(
        whoami(&client),
        id,
        "a session dropped for cause was resumed"
    );
    client.close();
    drop(proxy);
    server.close();
}

fn raw_whoami(raw: &mut Raw) -> Value {
    raw.call("whoami", json!([]))["result"].clone()
}

/// Vanish without a close frame.
fn vanish(raw: Raw) {
    raw.tcp().shutdown(Shutdown::Both).unwrap();
    drop(raw);
}

#[test]
fn a_client_that_closed_cleanly_leaves_no_session() {
    let config = session_config(Some(Duration::from_secs(10)));
    let server = common::start_with(Server::builder().config(config));
    let (mut raw, token, resumed) = Raw::session(&server, "/", None);
    assert!(!resumed);
    let id = raw_whoami(&mut raw);

    // For contrast: vanishing without a close frame leaves a session the token resumes.
    vanish(raw);
    assert!(wait_until(|| server.clients().is_empty()));
    let (mut raw, again, resumed) = Raw::session(&server, "/", Some(&token));
    assert!(resumed, "the dropped session was not resumed");
    assert_eq!(again, token);
    assert_eq!(raw_whoami(&mut raw), id);

    // Now a clean close (code 1000, as Client::close sends), answered by the server.
    raw.ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
        .unwrap();
    while raw.ws.read().is_ok() {}
    assert!(wait_until(|| server.clients().is_empty()));
    let (mut raw, fresh, resumed) = Raw::session(&server, "/", Some(&token));
    assert!(!resumed, "a cleanly closed session was resumed");
    assert_ne!(fresh, token);
    assert_ne!(raw_whoami(&mut raw), id);

    drop(raw);
    server.close();
}

/// Keep the server's dispatcher busy: emit an event nobody listens to as fast as its
/// command queue takes them, until the returned flag is set.
fn flood(server: &Server) -> (Arc<AtomicBool>, thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let handle = thread::spawn({
        let (server, stop) = (server.clone(), stop.clone());
        move || {
            while !stop.load(Ordering::SeqCst) {
                let _ = server.emit("newMessage", 1);
            }
        }
    });
    (stop, handle)
}

/// A race, so the test tries many times: a session claimed by a reconnect shortly
/// before its ttl runs out must still be the one the connection gets. A busy server
/// (a full command queue) widens the gap between the claim (in the handshake) and the
/// registration of the connection; reconnects are spread over the first half of the
/// ttl so that some expiries fall in that gap.
#[test]
fn a_session_claimed_just_before_it_expires_keeps_its_subscriptions() {
    let ttl = ms(30);
    let server = common::start_with(Server::builder().config(session_config(Some(ttl))));
    let (stop, flooder) = flood(&server);
    let mut outcome = Ok(());
    for trial in 0..30u32 {
        let (mut raw, token, _) = Raw::session(&server, "/", None);
        assert_eq!(
            raw.call("rpc.on", json!(["newsUpdate"]))["result"]["newsUpdate"],
            "ok"
        );
        let id = raw_whoami(&mut raw);
        vanish(raw);
        assert!(wait_until(|| !server.clients().iter().any(|c| *c == id)));
        thread::sleep(ttl * (trial % 10) / 20);
        let (mut raw, _, resumed) = Raw::session(&server, "/", Some(&token));
        if !resumed {
            continue;
        }
        server.emit("newsUpdate", json!({"trial": trial})).unwrap();
        raw.tcp().set_read_timeout(Some(ms(500))).unwrap();
        let delivered = loop {
            match raw.ws.read() {
                Ok(tungstenite::Message::Text(t)) if t.contains("newsUpdate") => break true,
                Ok(_) => {}
                Err(_) => break false,
            }
        };
        if !delivered {
            raw.tcp().set_read_timeout(Some(DEADLINE)).unwrap();
            let again = raw.call("rpc.on", json!(["newsUpdate"]));
            outcome = Err(format!(
                "trial {trial}: the server said the session was resumed, yet its \
                 subscription gets nothing; subscribing again answers {again}"
            ));
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    flooder.join().unwrap();
    server.close();
    if let Err(problem) = outcome {
        panic!("{problem}");
    }
}

// ---------------------------------------------------------------- the interop server

/// Build `examples/interop_server` in this test's profile and return its path.
fn interop_server_binary() -> PathBuf {
    // target/<profile>/deps/lifecycle-HASH
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let mut build = Command::new(env!("CARGO"));
    build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--example", "interop_server"]);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            build.arg("--release");
        }
        Some(other) => {
            build.args(["--profile", other]);
        }
        None => {}
    }
    let output = build.output().expect("run cargo build");
    assert!(
        output.status.success(),
        "building the example failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bin = profile_dir
        .join("examples")
        .join(format!("interop_server{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "no {}", bin.display());
    bin
}

/// Start the interop server on `port`; returns it with the address its first line
/// names, and what it writes to stderr.
fn start_interop(bin: &Path, port: u16) -> (ChildGuard, SocketAddr, Receiver<String>) {
    let mut child = Command::new(bin)
        .args(["--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the interop server");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let guard = ChildGuard(child);
    let (line_tx, line) = mpsc::channel();
    thread::spawn(move || {
        let mut first = String::new();
        let mut stdout = BufReader::new(stdout);
        let _ = stdout.read_line(&mut first);
        let _ = line_tx.send(first);
        // Keep the pipe drained.
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
    });
    let (err_tx, errors) = mpsc::channel();
    thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let _ = err_tx.send(text);
    });
    let first = line
        .recv_timeout(DEADLINE)
        .expect("the interop server printed a line");
    let Some(addr) = first.trim().strip_prefix("listening on ") else {
        let stderr = errors.recv_timeout(DEADLINE).unwrap_or_default();
        panic!("the interop server did not start: {first:?}, stderr: {stderr}");
    };
    (guard, addr.parse().unwrap(), errors)
}

fn signal(child: &ChildGuard, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.0.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} failed");
}

fn exit_status(child: &mut ChildGuard) -> ExitStatus {
    let mut status = None;
    let exited = wait_until(|| {
        status = child.0.try_wait().unwrap();
        status.is_some()
    });
    assert!(exited, "the interop server did not exit");
    status.unwrap()
}

#[test]
fn the_interop_server_closes_gracefully_on_sigterm_and_sigint_and_rebinds_its_port() {
    let bin = interop_server_binary();
    let (mut server, addr, errors) = start_interop(&bin, 0);
    let mut raw = Raw::connect(&format!("ws://{addr}/"));
    assert_eq!(raw.call("sum", json!([2, 3]))["result"], 5);
    let (client, closes) = connect_recording(fast(&format!("ws://{addr}/")));
    settle(&client);

    signal(&server, "TERM");
    assert_eq!(raw.recv_close(), (1001, "server shutting down".to_owned()));
    let lost = next_close(&closes);
    assert_eq!((lost.kind, lost.code), (CloseKind::Lost, 1001), "{lost:?}");
    let status = exit_status(&mut server);
    assert_eq!(
        status.code(),
        Some(0),
        "{status:?}, stderr: {}",
        errors.recv_timeout(DEADLINE).unwrap_or_default()
    );

    // Started again on the same port, it binds at once (no retry here), and the
    // client finds it there.
    let (mut server, again, _) = start_interop(&bin, addr.port());
    assert_eq!(again, addr);
    assert_reconnects(&client);
    let mut raw = Raw::connect(&format!("ws://{addr}/"));

    signal(&server, "INT");
    assert_eq!(raw.recv_close(), (1001, "server shutting down".to_owned()));
    let status = exit_status(&mut server);
    assert_eq!(status.code(), Some(0), "{status:?}");
    client.close();
}

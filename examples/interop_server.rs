//! The interop fixture server: `cargo run --release --example interop_server -- --port 0`
//! prints `listening on 127.0.0.1:PORT` as its first line and serves until SIGINT or
//! SIGTERM, which close it gracefully (1001 to every client, then exit 0). `--port N`
//! binds the same port again right after a restart (the listener reuses the address).
//! The JavaScript interop tests and anyone trying wsrpc from another language use it.

#[path = "../tests/common/fixture.rs"]
mod fixture;

use std::io::Write;

fn main() {
    simplelog::TermLogger::init(
        simplelog::LevelFilter::Warn,
        simplelog::Config::default(),
        simplelog::TerminalMode::Stderr,
        simplelog::ColorChoice::Never,
    )
    .ok();
    let mut port = 0u16;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                port = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| usage("--port takes a number"))
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    // A loopback fixture for tests and benchmarks (10,000 idle connections from one
    // address): the connection limits are raised well past what they open.
    let mut config = wsrpc::ServerConfig::default();
    config.max_connections = 100_000;
    config.max_connections_per_ip = 100_000;
    let server = match wsrpc::Server::builder()
        .config(config)
        .bind(("127.0.0.1", port))
    {
        Ok(server) => server,
        Err(e) => {
            eprintln!("cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    fixture::install(&server);
    // SIGINT and SIGTERM close the server gracefully: every client gets 1001 (going
    // away) and reconnects, then the process exits 0.
    let (stop_tx, stop) = std::sync::mpsc::channel();
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    }) {
        eprintln!("cannot handle signals: {e}");
    }
    println!("listening on {}", server.local_addr());
    std::io::stdout().flush().ok();
    let _ = stop.recv();
    server.close();
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("{problem}");
    }
    eprintln!("usage: interop_server [--port N]");
    std::process::exit(if problem.is_empty() { 0 } else { 2 });
}

//! The interop fixture server: `cargo run --release --example interop_server -- --port 0`
//! prints `listening on 127.0.0.1:PORT` as its first line and serves until killed.
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
    let server = match wsrpc::Server::bind(("127.0.0.1", port)) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    fixture::install(&server);
    println!("listening on {}", server.local_addr());
    std::io::stdout().flush().ok();
    loop {
        std::thread::park();
    }
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("{problem}");
    }
    eprintln!("usage: interop_server [--port N]");
    std::process::exit(if problem.is_empty() { 0 } else { 2 });
}

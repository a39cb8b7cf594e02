//! `make bench`: wsrpc and the servers people would otherwise pick (rpc-websockets on
//! Node, jsonrpsee, and a bare tungstenite thread-per-connection server), measured on
//! the same workloads in the same run, on loopback. Writes BENCHMARKS.md and one SVG
//! chart per workload.
//!
//! ```text
//! wsrpc-bench [--quick] [--rounds N] [--steady-rounds N] [--out DIR] [--only TEXT]
//!             [--window W] [--rate R]
//! ```
//! - `--quick`: a few seconds in all, small sizes, one round (the CI smoke run); the
//!   default is the full run, about fourteen minutes (ten before the steady-rate
//!   workloads, which take three and a half to five with two rounds).
//! - `--rounds N`: runs of each call and fan-out workload per server, taking turns; each
//!   figure is the median (default 3).
//! - `--steady-rounds N`: runs of each steady-rate workload per server (default: as
//!   `--rounds`, at most 2).
//! - `--out DIR`: where BENCHMARKS.md and benchmarks/*.svg go (default: the checkout's
//!   top folder, or target/bench-quick with --quick).
//! - `--only TEXT`: only the workloads whose name contains TEXT (e.g. `fanout`,
//!   `steady`).
//! - `--window W`: fan-out events out at once (default 16); `--rate R`: emit R events/s
//!   instead of as fast as the window allows.
//!
//! The exit status is 1 if any server failed a workload (the report says which).

mod calls;
mod fanout;
mod idle;
mod jsonrpsee_peer;
mod peers;
mod plot;
mod report;
mod steady;
mod suite;
mod wire;

use std::path::PathBuf;
use std::process::ExitCode;

use peers::Peer;

/// A workload's figures from one server.
#[derive(Clone, Debug)]
pub enum Figures {
    Calls(calls::Outcome),
    Fanout(fanout::Outcome),
    Steady(steady::Outcome),
    Idle(idle::Outcome),
}

/// One workload, measured on every server that takes part.
pub struct Measured {
    /// File name of its chart.
    pub slug: String,
    pub title: String,
    pub rows: Vec<(Peer, Result<Figures, String>)>,
}

/// The checkout this binary was built from (interop/, Cargo.lock, BENCHMARKS.md).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ is inside the checkout")
        .to_path_buf()
}

fn main() -> ExitCode {
    let mut options = suite::Options::default();
    let mut out = None;
    let mut rounds = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |what: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{arg} takes {what}")))
        };
        match arg.as_str() {
            "--serve" => {
                let what = value("a server name");
                if args.next().as_deref() == Some("--parent-stdin") {
                    peers::exit_with_stdin();
                }
                return match peers::serve(&what) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("{e}");
                        ExitCode::FAILURE
                    }
                };
            }
            "--quick" => options.quick = true,
            "--rounds" => rounds = Some(number(&value("a number"))),
            "--out" => out = Some(PathBuf::from(value("a folder"))),
            "--only" => options.only = Some(value("a workload name")),
            "--window" => options.window = number(&value("a number")),
            "--rate" => options.rate = Some(number(&value("events per second"))),
            "--steady-rounds" => options.steady_rounds = Some(number(&value("a number"))),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    options.rounds = rounds.unwrap_or(if options.quick { 1 } else { 3 });
    let out = out.unwrap_or_else(|| {
        if options.quick {
            repo_root().join("target/bench-quick")
        } else {
            repo_root()
        }
    });
    let command: Vec<String> = std::env::args().collect();
    let started = std::time::Instant::now();
    let results = suite::run(&options);
    println!("ran for {:.0} s", started.elapsed().as_secs_f64());
    let quick = options.quick;
    match suite::write(&out, &results, &options, &command.join(" ")) {
        Ok(path) => println!("wrote {}", path.display()),
        Err(e) => {
            eprintln!("cannot write the report: {e}");
            return ExitCode::FAILURE;
        }
    }
    let failed: Vec<String> = results
        .iter()
        .flat_map(|m| {
            m.rows.iter().filter_map(|(peer, r)| {
                let why = match r {
                    Err(e) => e.clone(),
                    Ok(Figures::Idle(o)) if !o.answering => {
                        format!("held {} connections, then stopped answering", o.held)
                    }
                    // A peer's losses are a fact about it, in the report; wsrpc's
                    // (or anyone's in the smoke run) are a failure.
                    Ok(Figures::Steady(o)) if o.lost() > 0 && (peer.is_ours() || quick) => {
                        format!(
                            "lost {} of {} events",
                            report::whole(o.lost()),
                            report::whole(o.expected)
                        )
                    }
                    Ok(_) => return None,
                };
                Some(format!("{} / {}: {why}", m.title, peer.name()))
            })
        })
        .collect();
    for f in &failed {
        eprintln!("FAILED {f}");
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn number<T: std::str::FromStr>(text: &str) -> T {
    text.parse()
        .unwrap_or_else(|_| usage(&format!("not a number: {text}")))
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("{problem}");
    }
    eprintln!(
        "usage: wsrpc-bench [--quick] [--rounds N] [--steady-rounds N] [--out DIR] [--only TEXT]\n                   \
         [--window W] [--rate R]\n       \
         wsrpc-bench --serve wsrpc|jsonrpsee|bare"
    );
    std::process::exit(if problem.is_empty() { 0 } else { 2 });
}

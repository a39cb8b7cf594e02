//! The workloads of issues 6 and 11 (steady-rate fan-out), run on every server in turn,
//! and the report they make.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::peers::Peer;
use crate::report;
use crate::{Figures, Measured, calls, fanout, idle, steady};

/// How the suite is run.
#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    pub only: Option<String>,
    pub window: usize,
    pub rate: Option<f64>,
    /// Runs of each call and fan-out workload per server.
    pub rounds: usize,
    /// Runs of each steady-rate workload per server; `None`: `rounds`, at most 2.
    pub steady_rounds: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            quick: false,
            only: None,
            window: 16,
            rate: None,
            rounds: 3,
            steady_rounds: None,
        }
    }
}

enum Kind {
    Calls(calls::Load),
    Fanout(fanout::Load),
    Steady(steady::Load),
    Idle(usize),
}

struct Workload {
    slug: String,
    title: String,
    kind: Kind,
}

/// A count as a title writes it: 16, 1,000, 10,000.
fn count(n: usize) -> String {
    if n < 1000 {
        n.to_string()
    } else {
        report::number(n as f64)
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Steady-rate workloads: (subscribers, events per second) of each.
fn steady_loads(o: &Options) -> &'static [(usize, u32)] {
    if o.quick {
        &[(20, 50)]
    } else {
        &[(1000, 20), (1000, 50), (100, 500)]
    }
}

/// A steady-rate run's warm-up, measured span, tail of emits after it, and grace
/// period for stragglers.
fn steady_timing(o: &Options) -> steady::Load {
    let ms = Duration::from_millis;
    let (warmup, measure, tail, grace) = if o.quick {
        (ms(200), ms(600), ms(200), ms(5000))
    } else {
        // The grace period costs nothing unless events are late: a run ends as soon
        // as every subscriber has the last event.
        (ms(1000), ms(4000), ms(1000), ms(10_000))
    };
    steady::Load {
        subscribers: 0,
        rate: 0.0,
        warmup,
        measure,
        tail,
        grace,
    }
}

/// Warm-up and measured span of each run.
fn timing(o: &Options) -> (Duration, Duration) {
    if o.quick {
        (Duration::from_millis(200), Duration::from_millis(500))
    } else {
        (Duration::from_secs(1), Duration::from_secs(3))
    }
}

fn workloads(o: &Options) -> Vec<Workload> {
    let (warmup, measure) = timing(o);
    let (sequential, pipelined, fan, idle): (&[usize], &[usize], &[usize], &[usize]) = if o.quick {
        (&[1, 16], &[16], &[20], &[100])
    } else {
        (&[1, 16, 128, 512], &[1, 16], &[100, 1000], &[1000, 10_000])
    };
    let mut all = Vec::new();
    let calls = |connections, in_flight| calls::Load {
        connections,
        in_flight,
        warmup,
        measure,
    };
    for &c in sequential {
        all.push(Workload {
            slug: format!("sequential-c{c}"),
            title: format!("{} connection{}, sequential sum calls", count(c), plural(c)),
            kind: Kind::Calls(calls(c, 1)),
        });
    }
    for &c in pipelined {
        all.push(Workload {
            slug: format!("pipelined-c{c}-k32"),
            title: format!(
                "{} connection{}, 32 sum calls in flight on each",
                count(c),
                plural(c)
            ),
            kind: Kind::Calls(calls(c, 32)),
        });
    }
    for &s in fan {
        all.push(Workload {
            slug: format!("fanout-s{s}"),
            title: format!("fan-out to {} subscribers", count(s)),
            kind: Kind::Fanout(fanout::Load {
                subscribers: s,
                window: o.window,
                rate: o.rate,
                warmup,
                measure,
            }),
        });
    }
    for &(s, rate) in steady_loads(o) {
        all.push(Workload {
            slug: format!("steady-s{s}-r{rate}"),
            title: format!("{} subscribers, {rate} events/s each", count(s)),
            kind: Kind::Steady(steady::Load {
                subscribers: s,
                rate: f64::from(rate),
                ..steady_timing(o)
            }),
        });
    }
    for &n in idle {
        all.push(Workload {
            slug: format!("idle-n{n}"),
            title: format!("{} idle connections", count(n)),
            kind: Kind::Idle(n),
        });
    }
    all.retain(|w| o.only.as_ref().is_none_or(|only| w.slug.contains(only)));
    all
}

/// Every workload on every server that can take it, one server process at a time.
pub fn run(o: &Options) -> Vec<Measured> {
    let mut results = Vec::new();
    for w in workloads(o) {
        println!("# {}", w.title);
        let peers: Vec<Peer> = Peer::ALL
            .into_iter()
            .filter(|&peer| match w.kind {
                // Idle connections do not speak: one wsrpc row is enough.
                Kind::Idle(_) => peer != Peer::WsrpcMsgPack,
                Kind::Fanout(_) | Kind::Steady(_) => peer.events().is_some(),
                Kind::Calls(_) => true,
            })
            .collect();
        // Rounds take turns, so that a passing disturbance of the machine does not
        // fall on one server only; each figure is the median of its rounds.
        let rounds = match w.kind {
            Kind::Idle(_) => 1,
            Kind::Steady(_) => o.steady_rounds.unwrap_or(o.rounds.min(2)).max(1),
            _ => o.rounds.max(1),
        };
        let mut got: Vec<Result<Vec<Figures>, String>> = peers.iter().map(|_| Ok(vec![])).collect();
        for round in 1..=rounds {
            for (peer, so_far) in peers.iter().zip(&mut got) {
                let Ok(figures) = so_far else { continue };
                let name = peer.name();
                match measure(*peer, &w.kind) {
                    Ok(f) => {
                        println!("  {round}/{rounds} {name:<22} {}", f.summary());
                        figures.push(f);
                    }
                    Err(e) => {
                        println!("  {round}/{rounds} {name:<22} FAILED: {e}");
                        *so_far = Err(e);
                    }
                }
            }
        }
        let rows = peers
            .into_iter()
            .zip(got)
            .map(|(peer, r)| (peer, r.map(Figures::median)))
            .collect();
        results.push(Measured {
            slug: w.slug,
            title: w.title,
            rows,
        });
    }
    results
}

fn measure(peer: Peer, kind: &Kind) -> Result<Figures, String> {
    let server = peer.start()?;
    let pid = server.running.pid();
    match kind {
        Kind::Calls(load) => calls::run(&server.url, peer.codec(), *load, pid).map(Figures::Calls),
        Kind::Fanout(load) => {
            let style = peer.events().ok_or("no events")?;
            fanout::run(&server.url, peer.codec(), style, *load, pid).map(Figures::Fanout)
        }
        Kind::Steady(load) => {
            let style = peer.events().ok_or("no events")?;
            steady::run(&server.url, peer.codec(), style, *load, pid).map(Figures::Steady)
        }
        Kind::Idle(n) => {
            let (outcome, held) = idle::run(&server.url, *n, pid)?;
            // The server goes first, so that the closed connections wait out TIME_WAIT
            // on its listening port rather than taking up our ephemeral ports.
            drop(server);
            drop(held);
            Ok(Figures::Idle(outcome))
        }
    }
}

/// Write `out/BENCHMARKS.md` and `out/benchmarks/SLUG.svg`; returns the report's path.
pub fn write(
    out: &Path,
    results: &[Measured],
    o: &Options,
    command: &str,
) -> std::io::Result<PathBuf> {
    let charts = out.join("benchmarks");
    std::fs::create_dir_all(&charts)?;
    let machine = machine();
    let mut md = String::from("# Benchmarks\n\n");
    md.push_str(
        "wsrpc and the servers people would otherwise pick, on the same workloads in the same \
         run, over loopback. Made by `make bench` (bench/): edit that, not this file.\n\n\
         Each figure is followed by its ratio to the best peer (wsrpc is not its own peer): \
         for calls/s and events/s higher is better, for latency and memory lower is better. \
         The load generator shares the machine's cores with the server, so compare ratios \
         from one run, and calls per server CPU-second.\n\n",
    );
    let _ = writeln!(
        md,
        "- Command: `{command}`{}",
        if o.quick {
            " (quick mode: sizes and times cut for a smoke run; not figures to quote)"
        } else {
            ""
        }
    );
    let _ = writeln!(md, "- Machine: {machine}");
    let _ = writeln!(md, "- Versions: {}\n", versions());
    md.push_str(&targets(results));
    let mut steady_section = false;
    for m in results {
        if m.is_steady() && !steady_section {
            steady_section = true;
            md.push_str(STEADY_SECTION);
        }
        let level = if m.is_steady() { "###" } else { "##" };
        let _ = writeln!(md, "{level} {}\n", m.title);
        let _ = writeln!(md, "![{}](benchmarks/{}.svg)\n", m.title, m.slug);
        md.push_str(&report::table(m));
        md.push('\n');
        std::fs::write(
            charts.join(format!("{}.svg", m.slug)),
            report::chart(m, &machine),
        )?;
    }
    md.push_str(&method(o));
    let path = out.join("BENCHMARKS.md");
    std::fs::write(&path, md)?;
    Ok(path)
}

/// The head of the steady-rate workloads' part of the report.
const STEADY_SECTION: &str = "## Events at a steady rate\n\n\
An emitter has the server send one event to every subscriber at a fixed rate, without \
waiting for delivery, as a price feed or a game-state ticker does. Latency is from the emit \
call's send to each subscriber's receipt, on the generator's clock; server CPU is its user + \
system time over the measured span, as a percentage of one core and per event delivered; \
wake-ups per event are the times a server thread went to sleep waiting (voluntary context \
switches, summed over its threads; threads that end during the span make it an \
undercount) per event delivered. \
\"delivered / expected\" counts the events emitted in the measured span times the \
subscribers; an event that has not arrived by the end of the grace period is lost (shown in \
bold: dropped if the subscriber received a later event, else still on its way), and one \
that arrived only after the emitter stopped is late. \"emitter behind\" is how far the \
emitter fell behind its own schedule at worst: a server that is slow to read the emit calls \
holds the emitter back, and fewer events are then expected.\n\n";

/// How the figures were made, with this run's settings.
fn method(o: &Options) -> String {
    let (warmup, measure) = timing(o);
    let rounds = match o.rounds {
        1 => "one round".to_owned(),
        n => format!(
            "{n} rounds, the servers taking turns; each figure is the median of its rounds (percentiles are each round's)"
        ),
    };
    let steady = steady_timing(o);
    let steady_rounds = match o.steady_rounds.unwrap_or(o.rounds.min(2)).max(1) {
        1 => "one round".to_owned(),
        n => format!("{n} rounds, the servers taking turns, medians as above"),
    };
    let pace = match o.rate {
        Some(rate) => format!("at {rate} events/s, and"),
        None => "as fast as backpressure allows:".to_owned(),
    };
    format!(
        "## How it is measured\n\n\
- Servers run one at a time as child processes on 127.0.0.1; their CPU time \
(user + system) and peak RSS come from /proc. wsrpc runs with its default \
configuration but for the connection limits (raised to 100,000, as jsonrpsee's).\n\
- Calls: `sum [id, 3]` requests; sequential means one call in flight per connection. \
{warmup:?} of warm-up, then {measure:?} measured; {rounds}. Latency is from send to reply.\n\
- Fan-out: S subscribers of one event; a further connection makes `emit` calls {pace} \
never more than {window} events out at once (an event is out until every subscriber has \
it). Latency is from the emit call's send to each subscriber's receipt, on the \
generator's clock. jsonrpsee subscribers use its own subscription methods; the bare \
server has no events.\n\
- Events at a steady rate: S subscribers of one event; a further connection makes `emit` \
calls on a fixed schedule (R a second) whatever the subscribers have received; an emitter \
that falls behind catches up with at most {burst} periods' worth of calls back to back, \
then gives the missed slots up. {steady_warmup:?} of warm-up, {steady_measure:?} measured (the events emitted in it \
are counted and the server's CPU time is read at its ends), {steady_tail:?} more of emits, \
then up to {steady_grace:?} for the last events to arrive; {steady_rounds}. Counts of \
delivered, lost and late events are summed over the rounds.
- Idle: N connections opened one after another and held after the handshake; the \
server's RSS growth once it stops changing, per 1,000 connections; then one more \
connection must get `sum` answered. Connections that have made calls keep more (their \
threads' deeper stack pages).\n\
- wsrpc (MessagePack) is the same server with clients that speak MessagePack.\n",
        window = o.window.max(1),
        burst = steady::BURST,
        steady_warmup = steady.warmup,
        steady_measure = steady.measure,
        steady_tail = steady.tail,
        steady_grace = steady.grace,
    )
}

/// The targets of issues 6 and 11, checked against this run (wsrpc in JSON).
fn targets(results: &[Measured]) -> String {
    let find = |slug: &str| results.iter().find(|m| m.slug == slug);
    // wsrpc's figure of metric `i` in workload `slug`, and `peer`'s.
    let pair = |slug: &str, i: usize, peer: Peer| {
        let m = find(slug)?;
        Some((m.value(Peer::WsrpcJson, i)?, m.value(peer, i)?))
    };
    let mut out = String::from("## Targets\n\n| target | measured | met |\n|---|---|:-:|\n");
    let mut row = |target: String, measured: Option<String>, met: Option<bool>| {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        let measured = measured.unwrap_or_else(|| "not measured".into());
        let _ = writeln!(out, "| {target} | {measured} | {met} |");
    };
    // (workload, metric, peer, factor, higher is better, what)
    let ratios = [
        (
            "sequential-c16",
            0,
            Peer::RpcWebsockets,
            1.8,
            true,
            "16 connections, sequential: calls/s",
        ),
        (
            "sequential-c16",
            0,
            Peer::Jsonrpsee,
            1.3,
            true,
            "16 connections, sequential: calls/s",
        ),
        (
            "sequential-c16",
            0,
            Peer::Bare,
            0.9,
            true,
            "16 connections, sequential: calls/s",
        ),
        (
            "pipelined-c16-k32",
            4,
            Peer::RpcWebsockets,
            2.0,
            true,
            "16 connections, K = 32: calls per server CPU-s",
        ),
        (
            "pipelined-c16-k32",
            4,
            Peer::Jsonrpsee,
            2.0,
            true,
            "16 connections, K = 32: calls per server CPU-s",
        ),
        (
            "sequential-c512",
            2,
            Peer::RpcWebsockets,
            1.0,
            false,
            "512 connections: p99 latency",
        ),
        (
            "sequential-c512",
            0,
            Peer::RpcWebsockets,
            1.3,
            true,
            "512 connections: calls/s",
        ),
        (
            "fanout-s1000",
            0,
            Peer::RpcWebsockets,
            5.0,
            true,
            "fan-out to 1,000: events/s delivered",
        ),
        (
            "fanout-s1000",
            2,
            Peer::RpcWebsockets,
            1.0,
            false,
            "fan-out to 1,000: p99 latency",
        ),
        (
            "steady-s1000-r20",
            1,
            Peer::RpcWebsockets,
            1.0,
            false,
            "1,000 subscribers x 20 events/s: p99 latency",
        ),
        (
            "steady-s1000-r20",
            4,
            Peer::RpcWebsockets,
            1.0,
            false,
            "1,000 subscribers x 20 events/s: server CPU per event",
        ),
        (
            "steady-s1000-r50",
            1,
            Peer::RpcWebsockets,
            1.0,
            false,
            "1,000 subscribers x 50 events/s: p99 latency",
        ),
        (
            "steady-s1000-r50",
            4,
            Peer::RpcWebsockets,
            1.0,
            false,
            "1,000 subscribers x 50 events/s: server CPU per event",
        ),
        (
            "steady-s100-r500",
            1,
            Peer::RpcWebsockets,
            1.0,
            false,
            "100 subscribers x 500 events/s: p99 latency",
        ),
        (
            "steady-s100-r500",
            4,
            Peer::RpcWebsockets,
            1.0,
            false,
            "100 subscribers x 500 events/s: server CPU per event",
        ),
    ];
    for (slug, i, peer, factor, higher, what) in ratios {
        let bound = if higher { "at least" } else { "at most" };
        let target = format!("{what} {bound} {factor}x {}'s", peer.name());
        let found = pair(slug, i, peer).filter(|(_, theirs)| *theirs > 0.0);
        // A latency or CPU figure leaves out the events a server lost: say so.
        let losses: String = [Peer::WsrpcJson, peer]
            .into_iter()
            .filter_map(|p| {
                let lost = find(slug)?.rows.iter().find_map(|(q, r)| match r {
                    Ok(Figures::Steady(o)) if *q == p && o.lost() > 0 => Some(o.lost()),
                    _ => None,
                })?;
                Some(format!(
                    "; {} **lost {} events**",
                    p.name(),
                    report::whole(lost)
                ))
            })
            .collect();
        let measured = found.map(|(ours, theirs)| {
            format!(
                "{:.2}x ({} vs {}){losses}",
                ours / theirs,
                report::number(ours),
                report::number(theirs)
            )
        });
        let met = found.map(|(ours, theirs)| {
            if higher {
                ours / theirs >= factor
            } else {
                ours / theirs <= factor
            }
        });
        row(target, measured, met);
    }
    // Nothing lost, in each steady-rate workload this run has, by either codec.
    for m in results.iter().filter(|m| m.is_steady()) {
        let ours: Vec<(Peer, Option<steady::Outcome>)> = m
            .rows
            .iter()
            .filter(|(p, _)| p.is_ours())
            .map(|(p, r)| match r {
                Ok(Figures::Steady(o)) => (*p, Some(o.clone())),
                _ => (*p, None),
            })
            .collect();
        let measured = ours
            .iter()
            .map(|(p, o)| match o {
                Some(o) => format!("{}: {}", p.name(), report::steady_counts(o)),
                None => format!("{}: failed", p.name()),
            })
            .collect::<Vec<_>>()
            .join("; ");
        let met = ours
            .iter()
            .all(|(_, o)| o.as_ref().is_some_and(|o| o.lost() == 0));
        row(
            format!("{}: nothing lost", m.title),
            Some(measured),
            Some(met),
        );
    }
    for (slug, n) in [("idle-n1000", "1,000"), ("idle-n10000", "10,000")] {
        let mib = find(slug).and_then(|m| m.value(Peer::WsrpcJson, 1));
        row(
            format!("{n} idle connections: at most 16 MiB of server RSS per 1,000"),
            mib.map(|v| format!("{} MiB", report::number(v))),
            mib.map(|v| v <= 16.0),
        );
    }
    let held = find("idle-n10000").and_then(|m| {
        m.rows.iter().find_map(|(p, r)| match r {
            Ok(Figures::Idle(o)) if *p == Peer::WsrpcJson => Some(o.clone()),
            _ => None,
        })
    });
    row(
        "10,000 connections held and still answering".into(),
        held.as_ref()
            .map(|o| format!("{} held, answering: {}", o.held, o.answering)),
        held.map(|o| o.held == 10_000 && o.answering),
    );
    out.push('\n');
    out
}

/// CPU model, cores, memory and kernel, from /proc.
fn machine() -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = read("/proc/sys/kernel/osrelease");
    format!(
        "{model}, {cores} cores, {mem_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}

/// The versions of everything measured: the Rust crates from Cargo.lock, the npm
/// package from its installed package.json, and the toolchains.
fn versions() -> String {
    let root = crate::repo_root();
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let crate_version = |name: &str| {
        let header = format!("name = \"{name}\"\nversion = \"");
        lock.split_once(&header)
            .and_then(|(_, rest)| rest.split_once('"'))
            .map_or("?".to_owned(), |(v, _)| v.to_owned())
    };
    let npm =
        std::fs::read_to_string(root.join("interop/node_modules/rpc-websockets/package.json"))
            .ok()
            .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok())
            .and_then(|p| p["version"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "?".into());
    let tool = |cmd: &str, arg: &str| {
        std::process::Command::new(cmd)
            .arg(arg)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "wsrpc {}, tungstenite {}, rpc-websockets {npm} on Node {}, jsonrpsee {} on tokio {}; {}",
        crate_version("wsrpc"),
        crate_version("tungstenite"),
        tool("node", "--version"),
        crate_version("jsonrpsee"),
        crate_version("tokio"),
        tool("rustc", "--version"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steady_row(p99: f64, cpu_us: f64, delivered: u64) -> Result<Figures, String> {
        Ok(Figures::Steady(steady::Outcome {
            latency_ms: [1.0, p99, p99],
            cpu_percent: 50.0,
            cpu_us_per_event: cpu_us,
            wakeups_per_event: 1.0,
            peak_rss_mib: 5.0,
            delivered,
            expected: 100,
            late: 0,
            dropped: 100 - delivered,
            cut_off: 0,
            behind_ms: 0.0,
        }))
    }

    #[test]
    fn steady_targets_are_ratios_to_node_and_a_loss_misses_nothing_lost() {
        let results = [Measured {
            slug: "steady-s1000-r20".into(),
            title: "1,000 subscribers, 20 events/s each".into(),
            rows: vec![
                (Peer::WsrpcJson, steady_row(20.0, 9.0, 100)),
                (Peer::WsrpcMsgPack, steady_row(20.0, 9.0, 98)),
                (Peer::RpcWebsockets, steady_row(40.0, 6.0, 97)),
            ],
        }];
        let t = targets(&results);
        let p99 = "| 1,000 subscribers x 20 events/s: p99 latency at most 1x \
                   rpc-websockets (Node)'s | 0.50x (20.0 vs 40.0); rpc-websockets (Node) \
                   **lost 3 events** | yes |";
        assert!(t.contains(p99), "{t}");
        let cpu = "| 1,000 subscribers x 20 events/s: server CPU per event at most 1x \
                   rpc-websockets (Node)'s | 1.50x (9.00 vs 6.00); rpc-websockets (Node) \
                   **lost 3 events** | **no** |";
        assert!(t.contains(cpu), "{t}");
        let lost = "| 1,000 subscribers, 20 events/s each: nothing lost | wsrpc (JSON): \
                    100 / 100; wsrpc (MessagePack): 98 / 100, **2 lost** (dropped: later events \
                    arrived) | **no** |";
        assert!(t.contains(lost), "{t}");
    }

    #[test]
    fn the_quick_run_has_one_small_steady_workload_and_the_full_run_three() {
        let slugs = |o: &Options| -> Vec<String> {
            workloads(o)
                .into_iter()
                .filter(|w| matches!(w.kind, Kind::Steady(_)))
                .map(|w| w.slug)
                .collect()
        };
        let quick = Options {
            quick: true,
            ..Options::default()
        };
        assert_eq!(slugs(&quick), ["steady-s20-r50"]);
        let full = slugs(&Options::default());
        assert_eq!(
            full,
            ["steady-s1000-r20", "steady-s1000-r50", "steady-s100-r500"]
        );
    }
}

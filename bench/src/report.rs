//! The results as BENCHMARKS.md (tables of figures with ratios to the best peer, the
//! targets of issues 6 and 11, the machine and versions) and one SVG chart per workload.

use std::fmt::Write as _;

use crate::peers::Peer;
use crate::plot::{self, Bar, Panel};
use crate::{Figures, Measured, steady};

/// One column of a workload's table.
struct Metric {
    name: &'static str,
    higher_is_better: bool,
}

const fn metric(name: &'static str, higher_is_better: bool) -> Metric {
    Metric {
        name,
        higher_is_better,
    }
}

const CALLS: [Metric; 6] = [
    metric("calls/s", true),
    metric("p50 ms", false),
    metric("p99 ms", false),
    metric("p99.9 ms", false),
    metric("calls per CPU-s", true),
    metric("peak RSS MiB", false),
];
const FANOUT: [Metric; 6] = [
    metric("events/s delivered", true),
    metric("p50 ms", false),
    metric("p99 ms", false),
    metric("p99.9 ms", false),
    metric("events per CPU-s", true),
    metric("peak RSS MiB", false),
];
const STEADY: [Metric; 7] = [
    metric("p50 ms", false),
    metric("p99 ms", false),
    metric("p99.9 ms", false),
    metric("server CPU %", false),
    metric("CPU µs per event", false),
    metric("wake-ups per event", false),
    metric("peak RSS MiB", false),
];
const IDLE: [Metric; 2] = [
    metric("connections held", true),
    metric("MiB per 1,000", false),
];

impl Figures {
    fn metrics(&self) -> &'static [Metric] {
        match self {
            Figures::Calls(_) => &CALLS,
            Figures::Fanout(_) => &FANOUT,
            Figures::Steady(_) => &STEADY,
            Figures::Idle(_) => &IDLE,
        }
    }

    fn values(&self) -> Vec<f64> {
        match self {
            Figures::Calls(o) => vec![
                o.calls_per_second,
                o.latency_ms[0],
                o.latency_ms[1],
                o.latency_ms[2],
                o.calls_per_cpu_second,
                o.peak_rss_mib,
            ],
            Figures::Fanout(o) => vec![
                o.delivered_per_second,
                o.latency_ms[0],
                o.latency_ms[1],
                o.latency_ms[2],
                o.delivered_per_cpu_second,
                o.peak_rss_mib,
            ],
            Figures::Steady(o) => vec![
                o.latency_ms[0],
                o.latency_ms[1],
                o.latency_ms[2],
                o.cpu_percent,
                o.cpu_us_per_event,
                o.wakeups_per_event,
                o.peak_rss_mib,
            ],
            Figures::Idle(o) => vec![o.held as f64, o.mib_per_1000],
        }
    }

    /// Each figure's median over runs of one workload, taken figure by figure (so a
    /// row may mix runs; a p99 is one run's p99, not that of all samples); the upper
    /// middle one for an even count. Wire bytes are the first run's. Steady-rate
    /// runs' event counts are summed instead, and the emitter's lag is the worst, so
    /// that a loss in any round shows.
    pub fn median(mut runs: Vec<Figures>) -> Figures {
        let steady: Vec<steady::Outcome> = runs
            .iter()
            .filter_map(|f| match f {
                Figures::Steady(o) => Some(o.clone()),
                _ => None,
            })
            .collect();
        let columns: Vec<Vec<f64>> = runs.iter().map(Figures::values).collect();
        let mut first = runs.swap_remove(0);
        let medians: Vec<f64> = (0..columns[0].len())
            .map(|i| {
                let mut v: Vec<f64> = columns
                    .iter()
                    .map(|c| c[i])
                    .filter(|x| x.is_finite())
                    .collect();
                v.sort_by(f64::total_cmp);
                v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
            })
            .collect();
        first.set_values(&medians);
        if let Figures::Steady(o) = &mut first {
            o.delivered = steady.iter().map(|r| r.delivered).sum();
            o.expected = steady.iter().map(|r| r.expected).sum();
            o.late = steady.iter().map(|r| r.late).sum();
            o.dropped = steady.iter().map(|r| r.dropped).sum();
            o.cut_off = steady.iter().map(|r| r.cut_off).sum();
            o.behind_ms = steady.iter().map(|r| r.behind_ms).fold(0.0, f64::max);
        }
        first
    }

    /// The inverse of [`Figures::values`].
    fn set_values(&mut self, v: &[f64]) {
        match self {
            Figures::Calls(o) => {
                o.calls_per_second = v[0];
                o.latency_ms = [v[1], v[2], v[3]];
                o.calls_per_cpu_second = v[4];
                o.peak_rss_mib = v[5];
            }
            Figures::Fanout(o) => {
                o.delivered_per_second = v[0];
                o.latency_ms = [v[1], v[2], v[3]];
                o.delivered_per_cpu_second = v[4];
                o.peak_rss_mib = v[5];
            }
            Figures::Steady(o) => {
                o.latency_ms = [v[0], v[1], v[2]];
                o.cpu_percent = v[3];
                o.cpu_us_per_event = v[4];
                o.wakeups_per_event = v[5];
                o.peak_rss_mib = v[6];
            }
            Figures::Idle(o) => {
                o.held = v[0] as usize;
                o.mib_per_1000 = v[1];
            }
        }
    }

    /// One line for the console: each figure after its name, as the table heads them.
    pub fn summary(&self) -> String {
        let mut line: Vec<String> = self
            .metrics()
            .iter()
            .zip(self.values())
            .map(|(metric, v)| format!("{} {}", metric.name, number(v)))
            .collect();
        match self {
            Figures::Calls(o) => line.push(format!("{} B/call", o.wire_bytes_per_call)),
            Figures::Idle(o) => line.push(format!("still answering {}", o.answering)),
            Figures::Steady(o) => line.push(format!(
                "delivered / expected {}, emitter behind {} ms",
                steady_counts(o).replace("**", ""),
                number(o.behind_ms)
            )),
            Figures::Fanout(_) => {}
        }
        line.join(", ")
    }

    /// Last columns that are not figures: whether idle servers still answer; what
    /// steady-rate subscribers received, and how far the emitter lagged.
    fn notes(&self) -> Vec<(&'static str, String)> {
        match self {
            Figures::Idle(o) => {
                let yes = if o.answering { "yes" } else { "**no**" };
                vec![("still answering", yes.to_owned())]
            }
            Figures::Steady(o) => vec![
                ("delivered / expected", steady_counts(o)),
                ("emitter behind ms", number(o.behind_ms)),
            ],
            _ => Vec::new(),
        }
    }
}

impl Measured {
    /// Metric `i` of every row that has figures.
    fn column(&self, i: usize) -> impl Iterator<Item = (Peer, f64)> + '_ {
        self.rows.iter().filter_map(move |(peer, r)| {
            let v = *r.as_ref().ok()?.values().get(i)?;
            v.is_finite().then_some((*peer, v))
        })
    }

    /// The best peer's figure of metric `i` (wsrpc is not a peer of itself).
    fn best_peer(&self, i: usize, higher_is_better: bool) -> Option<f64> {
        let peers = self.column(i).filter(|(p, _)| !p.is_ours()).map(|(_, v)| v);
        if higher_is_better {
            peers.reduce(f64::max)
        } else {
            peers.reduce(f64::min)
        }
    }

    /// The figure of metric `i` for `peer`.
    pub fn value(&self, peer: Peer, i: usize) -> Option<f64> {
        self.column(i).find(|(p, _)| *p == peer).map(|(_, v)| v)
    }

    /// Whether this is a steady-rate workload.
    pub fn is_steady(&self) -> bool {
        self.rows
            .iter()
            .any(|(_, r)| matches!(r, Ok(Figures::Steady(_))))
            || self.slug.starts_with("steady-")
    }

    fn metrics(&self) -> &'static [Metric] {
        self.rows
            .iter()
            .find_map(|(_, r)| r.as_ref().ok())
            .map_or(&[], Figures::metrics)
    }
}

/// A figure as the charts print it, 0 as "0"; "n/a" when there is none.
pub fn number(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x.is_finite() {
        crate::plot::number(x)
    } else {
        "n/a".into()
    }
}

/// A count in words: 7, 1,000, 60,000.
pub fn whole(n: u64) -> String {
    if n < 1000 {
        n.to_string()
    } else {
        number(n as f64)
    }
}

/// "delivered / expected", and what was lost (in bold) or late.
pub fn steady_counts(o: &steady::Outcome) -> String {
    let mut text = format!("{} / {}", whole(o.delivered), whole(o.expected));
    let lost = o.lost();
    if lost > 0 {
        let _ = write!(text, ", **{} lost**", whole(lost));
        let why = if o.dropped == lost {
            "dropped: later events arrived".to_owned()
        } else if o.dropped == 0 {
            "still on their way when the grace period ended".to_owned()
        } else {
            format!("{} dropped, the rest still on their way", whole(o.dropped))
        };
        let _ = write!(text, " ({why})");
    }
    if o.late > 0 {
        let _ = write!(text, ", {} late", whole(o.late));
    }
    if o.cut_off > 0 {
        let _ = write!(
            text,
            ", **{} subscriber{} cut off** by the server",
            whole(o.cut_off),
            if o.cut_off == 1 { "" } else { "s" }
        );
    }
    text
}

/// A workload's table: one row per server, each figure with its ratio to the best peer.
pub fn table(m: &Measured) -> String {
    let metrics = m.metrics();
    let note_heads: Vec<&str> = m
        .rows
        .iter()
        .find_map(|(_, r)| r.as_ref().ok())
        .map(|f| f.notes().into_iter().map(|(head, _)| head).collect())
        .unwrap_or_default();
    let columns = metrics.len() + note_heads.len();
    let mut out = String::from("| server |");
    for metric in metrics {
        let _ = write!(out, " {} |", metric.name);
    }
    for head in &note_heads {
        let _ = write!(out, " {head} |");
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(columns));
    out.push('\n');
    for (peer, result) in &m.rows {
        let name = if peer.is_ours() {
            format!("**{}**", peer.name())
        } else {
            peer.name().to_owned()
        };
        let _ = write!(out, "| {name} |");
        match result {
            Err(e) => {
                let _ = write!(out, " failed: {} |", e.replace('|', "/"));
                out.push_str(&" |".repeat(columns.saturating_sub(1)));
            }
            Ok(figures) => {
                for (i, (metric, v)) in metrics.iter().zip(figures.values()).enumerate() {
                    let ratio = m
                        .best_peer(i, metric.higher_is_better)
                        .filter(|best| *best > 0.0 && v.is_finite())
                        .map(|best| format!(" ({:.2}x)", v / best))
                        .unwrap_or_default();
                    let _ = write!(out, " {}{ratio} |", number(v));
                }
                for (_, note) in figures.notes() {
                    let _ = write!(out, " {note} |");
                }
            }
        }
        out.push('\n');
    }
    out
}

/// The workload's chart: its main figure and its p99 latency (or memory) per server.
pub fn chart(m: &Measured, subtitle: &str) -> String {
    let metrics = m.metrics();
    let panels = match metrics.len() {
        0 => Vec::new(),
        2 => vec![panel(m, metrics, 1)],
        // Steady rate: p99 latency and CPU per event.
        _ if m.is_steady() => vec![panel(m, metrics, 1), panel(m, metrics, 4)],
        _ => vec![panel(m, metrics, 0), panel(m, metrics, 2)],
    };
    plot::svg(&m.title, subtitle, &panels)
}

fn panel(m: &Measured, metrics: &[Metric], i: usize) -> Panel {
    // A chart's title and the unit after each bar's figure.
    let (title, unit) = match metrics[i].name {
        "MiB per 1,000" => ("server RSS per 1,000 connections", "MiB"),
        "server CPU %" => ("server CPU", "%"),
        "CPU µs per event" => ("server CPU per event delivered", "µs"),
        name => match name.rsplit_once(' ') {
            Some((title, "ms")) => (title, "ms"),
            _ => (name, ""),
        },
    };
    Panel {
        title: title.to_owned(),
        unit: unit.to_owned(),
        higher_is_better: metrics[i].higher_is_better,
        bars: m
            .rows
            .iter()
            .map(|(peer, r)| Bar {
                label: peer.name().to_owned(),
                value: r
                    .as_ref()
                    .ok()
                    .and_then(|f| f.values().get(i).copied())
                    .unwrap_or(f64::NAN),
                highlight: peer.is_ours(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idle;

    fn idle_row(mib: f64) -> Result<Figures, String> {
        Ok(Figures::Idle(idle::Outcome {
            held: 1000,
            mib_per_1000: mib,
            answering: true,
        }))
    }

    #[test]
    fn ratios_are_to_the_best_peer() {
        let m = Measured {
            slug: "idle".into(),
            title: "idle".into(),
            rows: vec![
                (Peer::WsrpcJson, idle_row(10.0)),
                (Peer::RpcWebsockets, idle_row(20.0)),
                (Peer::Bare, idle_row(150.0)),
                (Peer::Jsonrpsee, Err("refused".into())),
            ],
        };
        let table = table(&m);
        // Lower is better for memory: the best peer is rpc-websockets at 20.
        let wsrpc = "| **wsrpc (JSON)** | 1,000 (1.00x) | 10.0 (0.50x) | yes |";
        assert!(table.contains(wsrpc), "{table}");
        assert!(table.contains("| bare tungstenite | 1,000 (1.00x) | 150 (7.50x) | yes |"));
        assert!(
            table.contains("| jsonrpsee (tokio) | failed: refused | | |"),
            "{table}"
        );
        assert_eq!(m.value(Peer::Bare, 1), Some(150.0));
        assert_eq!(m.value(Peer::Jsonrpsee, 1), None);
    }

    #[test]
    fn rounds_combine_into_the_median_of_each_figure() {
        let run = |held, mib| {
            Figures::Idle(idle::Outcome {
                held,
                mib_per_1000: mib,
                answering: true,
            })
        };
        let Figures::Idle(m) = Figures::median(vec![run(3, 9.0), run(1, f64::NAN), run(2, 7.0)])
        else {
            panic!("the kind changed")
        };
        // held: 1, 2, 3 -> 2; memory: NaN is left out, 7 and 9 -> the upper one.
        assert_eq!((m.held, m.mib_per_1000), (2, 9.0));
    }

    fn steady_run(p99: f64, delivered: u64, late: u64, behind_ms: f64) -> Figures {
        steady_run_dropping(p99, delivered, late, behind_ms, 0)
    }

    fn steady_run_dropping(
        p99: f64,
        delivered: u64,
        late: u64,
        behind_ms: f64,
        dropped: u64,
    ) -> Figures {
        Figures::Steady(steady::Outcome {
            latency_ms: [1.0, p99, 2.0 * p99],
            cpu_percent: 50.0,
            cpu_us_per_event: 10.0,
            wakeups_per_event: 0.5,
            peak_rss_mib: 5.0,
            delivered,
            expected: 1000,
            late,
            dropped,
            cut_off: u64::from(dropped > 0),
            behind_ms,
        })
    }

    #[test]
    fn steady_rounds_sum_their_counts_so_that_a_loss_in_any_round_shows() {
        let runs = vec![
            steady_run(3.0, 1000, 0, 1.0),
            steady_run_dropping(9.0, 990, 4, 30.0, 3),
            steady_run(5.0, 1000, 0, 2.0),
        ];
        let Figures::Steady(o) = Figures::median(runs) else {
            panic!("the kind changed")
        };
        assert_eq!(o.latency_ms[1], 5.0);
        assert_eq!(
            (o.delivered, o.expected, o.lost(), o.late),
            (2990, 3000, 10, 4)
        );
        assert_eq!(o.dropped, 3);
        let counts = "2,990 / 3,000, **10 lost** (3 dropped, the rest still on their way), \
                      4 late, **1 subscriber cut off** by the server";
        assert_eq!(steady_counts(&o), counts);
        assert_eq!(o.behind_ms, 30.0);
    }

    #[test]
    fn a_steady_table_shows_losses_in_bold_and_charts_p99_and_cpu_per_event() {
        let m = Measured {
            slug: "steady-s10-r5".into(),
            title: "steady".into(),
            rows: vec![
                (Peer::WsrpcJson, Ok(steady_run(2.0, 1000, 0, 0.5))),
                (Peer::RpcWebsockets, Ok(steady_run(4.0, 997, 2, 12.0))),
            ],
        };
        let table = table(&m);
        let head = "| p50 ms | p99 ms | p99.9 ms | server CPU % | CPU µs per event | \
                    wake-ups per event | peak RSS MiB | delivered / expected | emitter behind ms |";
        assert!(table.contains(head), "{table}");
        assert!(
            table.contains("| 2.00 (0.50x) |") && table.contains("| 1,000 / 1,000 | 0.500 |"),
            "{table}"
        );
        assert!(
            table.contains(
                "| 997 / 1,000, **3 lost** (still on their way when the grace period ended), \
                 2 late | 12.0 |"
            ),
            "{table}"
        );
        let svg = chart(&m, "machine");
        assert!(svg.contains(">p99 (lower is better)</text>"), "{svg}");
        assert!(svg.contains(">server CPU per event delivered (lower is better)</text>"));
        assert!(svg.contains(">10.0 µs</text>"), "{svg}");
    }

    #[test]
    fn numbers_keep_a_sensible_precision() {
        assert_eq!(number(1234567.4), "1,234,567");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(0.01234), "0.0123");
        assert_eq!(number(f64::NAN), "n/a");
        assert_eq!(number(0.0), "0");
    }
}

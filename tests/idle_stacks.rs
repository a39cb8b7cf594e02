//! What an idle connection's thread keeps resident of its stack, read from this
//! process's /proc/self/smaps. Thread stacks are process-wide, so this test has its
//! own test binary: no other test's threads end and leave their stacks behind.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

mod common;

use common::{Wire, wait_until};
use wsrpc::{Server, ServerConfig};

/// The connections' stack size. Under 513 KiB, so that glibc does not give these
/// threads the stack of an ended test harness thread (2 MiB): it reuses a stack for
/// sizes down to a quarter of it.
const STACK: usize = 508 << 10;

/// The mappings of this process: start, end and resident KiB.
fn mappings() -> Vec<(u64, u64, u64)> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
    let mut maps = Vec::new();
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            maps.push((start, end, 0));
        } else if let Some(rss) = line.strip_prefix("Rss:")
            && let Some(last) = maps.last_mut()
        {
            last.2 = rss
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .expect("kB");
        }
    }
    maps
}

/// Resident KiB of the stack of each connection thread, found from the stack pointer
/// of the system call it waits in; `None` while one of them is not waiting.
fn reader_stacks() -> Option<Vec<u64>> {
    let maps = mappings();
    let mut stacks = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let dir = task.expect("a task").path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if name.trim() != "wsrpc-conn" {
            continue;
        }
        // "NR arg1 ... arg6 SP PC", or "running".
        let syscall = std::fs::read_to_string(dir.join("syscall")).unwrap_or_default();
        let fields: Vec<&str> = syscall.split_whitespace().collect();
        let sp = fields
            .len()
            .checked_sub(2)
            .filter(|_| fields.len() > 2)
            .and_then(|i| u64::from_str_radix(fields[i].trim_start_matches("0x"), 16).ok())?;
        let (_, _, rss) = maps
            .iter()
            .find(|(start, end, _)| (*start..*end).contains(&sp))?;
        stacks.push(*rss);
    }
    Some(stacks)
}

/// Each connection's read loop runs on a thread of its own, started by the thread that
/// ran its handshake; that thread then ends and glibc keeps its stack for reuse, with
/// the pages the handshake touched still resident. A read loop started on such a
/// stack holds them for the connection's life (five pages instead of two in a release
/// build). Connections opened one after another must each get a clean stack.
#[test]
fn idle_connections_keep_no_pages_of_their_handshake() {
    const CONNECTIONS: usize = 200;
    let mut config = ServerConfig::default();
    config.stack_size = STACK;
    config.max_connections_per_ip = CONNECTIONS + 10;
    let server = common::start_with(Server::builder().config(config));
    let held: Vec<Wire> = (0..CONNECTIONS)
        .map(|_| Wire::connect(&server, "/"))
        .collect();
    // Every read loop started and waiting: as many stacks, and the same figures twice.
    let mut last = Vec::new();
    assert!(
        wait_until(|| {
            let now = reader_stacks().unwrap_or_default();
            let settled = now.len() == CONNECTIONS && now == last;
            last = now;
            settled
        }),
        "{} connection stacks, {CONNECTIONS} expected",
        last.len()
    );
    let least = last.iter().min().copied().unwrap_or_default();
    let more: Vec<u64> = last.iter().copied().filter(|&kib| kib > least).collect();
    assert!(
        more.is_empty(),
        "{} of {CONNECTIONS} idle connections hold more of their stack than the least \
         ({least} KiB): {more:?}",
        more.len()
    );
    drop(held);
}

//! Free TCP ports on loopback addresses for test servers, and loopback addresses for cluster members.
//!
//! Binding port 0 and handing the number to a child process is racy when many tests run at once: the
//! kernel hands out ephemeral ports for *outgoing* connections from the same range, and two tests can
//! receive the same number. Instead we walk a fixed range below the kernel's ephemeral range, starting at
//! an offset derived from the process id and the clock (so concurrent test binaries start far apart),
//! never handing out the same number twice inside one process, and verifying each candidate by binding
//! it. A port can still be taken between the check and the child's bind; [`crate::Server`] retries the
//! start on "address already in use".
//!
//! Cluster members each get an address of their own, 127.0.0.x ([`loopback_host`]), handed out the same
//! way: a counter over 127.0.0.2..=127.0.0.254 from a process-dependent offset, so concurrent clusters
//! (in one test binary or several) sit on different addresses, and their ports are checked on that
//! address ([`free_port_on`]). 127.0.0.1 is left to single servers.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Lowest port we hand out.
const LOW: u32 = 15_000;
/// Default upper bound (exclusive) when the ephemeral range cannot be read.
const DEFAULT_HIGH: u32 = 32_000;

/// Cluster member addresses are 127.0.0.{FIRST_HOST..FIRST_HOST + HOSTS}.
const FIRST_HOST: u32 = 2;
const HOSTS: u32 = 253;

static NEXT: AtomicU32 = AtomicU32::new(0);
static NEXT_HOST: AtomicU32 = AtomicU32::new(0);

struct Range {
    low: u32,
    span: u32,
    offset: u32,
}

fn range() -> &'static Range {
    static RANGE: OnceLock<Range> = OnceLock::new();
    RANGE.get_or_init(|| {
        // Stay below the kernel's ephemeral range (Linux default 32768-60999).
        let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
            .filter(|&h| h > LOW + 1_000)
            .unwrap_or(DEFAULT_HIGH);
        let span = high - LOW;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let offset = (std::process::id().wrapping_mul(7_919) ^ nanos) % span;
        Range {
            low: LOW,
            span,
            offset,
        }
    })
}

/// A port on 127.0.0.1 that was free a moment ago and that this process has not handed out before.
pub fn free_port() -> u16 {
    free_port_on(Ipv4Addr::LOCALHOST)
}

/// A port on `host` that was free a moment ago and that this process has not handed out before (on any
/// address).
pub fn free_port_on(host: Ipv4Addr) -> u16 {
    let r = range();
    for _ in 0..r.span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = r.low + (r.offset.wrapping_add(n)) % r.span;
        let port = port as u16;
        if TcpListener::bind((host, port)).is_ok() {
            return port;
        }
    }
    panic!(
        "ballast-testkit: no free port found on {host} in {}..{}",
        r.low,
        r.low + r.span
    );
}

/// A loopback address 127.0.0.x (x in 2..=254) for one cluster member: the next one in this process's
/// round, which starts at an offset derived from the process id and the clock. The kernel routes all of
/// 127.0.0.0/8 to `lo`, so nothing needs configuring.
pub fn loopback_host() -> Ipv4Addr {
    let n = NEXT_HOST.fetch_add(1, Ordering::Relaxed);
    let x = FIRST_HOST + range().offset.wrapping_add(n) % HOSTS;
    Ipv4Addr::new(127, 0, 0, x as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_all_distinct<T: Ord + Clone + std::fmt::Debug>(handed_out: &[T]) {
        let mut sorted = handed_out.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), handed_out.len(), "{handed_out:?}");
    }

    #[test]
    fn ports_are_distinct_and_bindable() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        assert_all_distinct(&ports);
        for p in ports {
            assert!(p >= LOW as u16);
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }

    #[test]
    fn loopback_hosts_are_distinct_and_bindable() {
        let hosts: Vec<Ipv4Addr> = (0..20).map(|_| loopback_host()).collect();
        assert_all_distinct(&hosts);
        for h in hosts {
            assert_eq!(&h.octets()[..3], &[127, 0, 0]);
            assert!(h.octets()[3] >= 2 && h.octets()[3] <= 254);
            TcpListener::bind((h, free_port_on(h))).unwrap();
        }
    }
}

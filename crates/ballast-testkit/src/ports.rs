//! Free TCP ports on 127.0.0.1 for test servers.
//!
//! Binding port 0 and handing the number to a child process is racy when many tests run at once: the
//! kernel hands out ephemeral ports for *outgoing* connections from the same range, and two tests can
//! receive the same number. Instead we walk a fixed range below the kernel's ephemeral range, starting at
//! an offset derived from the process id and the clock (so concurrent test binaries start far apart),
//! never handing out the same number twice inside one process, and verifying each candidate by binding
//! it. A port can still be taken between the check and the child's bind; [`crate::Server`] retries the
//! start on "address already in use".

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Lowest port we hand out.
const LOW: u32 = 15_000;
/// Default upper bound (exclusive) when the ephemeral range cannot be read.
const DEFAULT_HIGH: u32 = 32_000;

static NEXT: AtomicU32 = AtomicU32::new(0);

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
    let r = range();
    for _ in 0..r.span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = r.low + (r.offset.wrapping_add(n)) % r.span;
        let port = port as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!(
        "ballast-testkit: no free port found in {}..{}",
        r.low,
        r.low + r.span
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_bindable() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len());
        for p in ports {
            assert!(p >= LOW as u16);
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }
}

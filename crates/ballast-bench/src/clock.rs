//! The clock that put → event delays and request timelines are measured on: nanoseconds
//! of the monotonic clock since the process started (`main` reads it first), small enough
//! to travel in an 8-byte put value and to share between tasks in an atomic.

use std::sync::OnceLock;
use std::time::Instant;

/// Nanoseconds since the clock started.
pub fn now_ns() -> u64 {
    ns_at(Instant::now())
}

/// [`now_ns`] of another instant (0 for one before the clock started).
pub fn ns_at(t: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    t.saturating_duration_since(start).as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_clamped() {
        let a = now_ns();
        let b = ns_at(Instant::now());
        assert!(a <= b);
        // An instant before the start reads as 0 rather than wrapping.
        let early = Instant::now()
            .checked_sub(std::time::Duration::from_secs(3600 * 24 * 365))
            .unwrap_or_else(Instant::now);
        assert!(ns_at(early) <= b);
    }
}

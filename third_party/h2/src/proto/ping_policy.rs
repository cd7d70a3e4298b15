//! BALLAST PATCH (see BALLAST-PATCH.md): how often a client may send PING frames to a server.
//!
//! This is grpc-go's server keepalive enforcement (`http2_server.go`, `handlePing`) with the
//! policy etcd sets, `keepalive.EnforcementPolicy{MinTime, PermitWithoutStream: false}`:
//!
//! - a PING (not an ack) that arrives less than `min_time` after the client's previous PING is a
//!   strike; while the connection has no open stream the floor is 2 hours instead, so a client
//!   that pings an idle connection at all, more than once, is striking;
//! - the first PING after the server has sent HEADERS or DATA clears the strikes and is not
//!   judged (a client's BDP pings follow the server's data);
//! - on the third strike the server sends GOAWAY `ENHANCE_YOUR_CALM` with the debug data
//!   `too_many_pings` and closes the connection.
//!
//! The state is per connection and owned by it; nothing here does I/O.

use std::time::{Duration, Instant};

/// grpc-go's `maxPingStrikes`: more strikes than this close the connection.
const MAX_STRIKES: u8 = 2;

/// grpc-go's `defaultPingTimeout`: the floor between pings on a connection without streams
/// (`PermitWithoutStream: false`).
const FLOOR_WITHOUT_STREAMS: Duration = Duration::from_secs(2 * 60 * 60);

/// The debug data of the GOAWAY, as grpc-go sends it.
pub(crate) const TOO_MANY_PINGS: &str = "too_many_pings";

/// One connection's strikes against its client's pings.
#[derive(Debug)]
pub(crate) struct PingPolicy {
    min_time: Duration,
    strikes: u8,
    /// When the client's previous PING (not an ack) arrived.
    last_ping: Option<Instant>,
}

impl PingPolicy {
    pub(crate) fn new(min_time: Duration) -> Self {
        PingPolicy {
            min_time,
            strikes: 0,
            last_ping: None,
        }
    }

    /// Judges a PING from the client that arrived at `now`. `has_streams`: the connection has
    /// an open stream; `server_sent_stream_frames`: the server has sent HEADERS or DATA since
    /// the previous PING. False when the client has struck out.
    pub(crate) fn allow(
        &mut self,
        now: Instant,
        has_streams: bool,
        server_sent_stream_frames: bool,
    ) -> bool {
        let previous = self.last_ping.replace(now);
        if server_sent_stream_frames {
            self.strikes = 0;
            return true;
        }
        let floor = if has_streams {
            self.min_time
        } else {
            FLOOR_WITHOUT_STREAMS
        };
        if previous.map_or(false, |p| now.saturating_duration_since(p) < floor) {
            self.strikes = self.strikes.saturating_add(1);
        }
        self.strikes <= MAX_STRIKES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(200);

    /// Feeds pings `gaps` apart (the first at t0); returns the 1-based index of the first one
    /// refused, if any.
    fn struck_out_at(gaps: &[u64], has_streams: bool, sent_before: &[bool]) -> Option<usize> {
        let mut p = PingPolicy::new(MIN);
        let mut t = Instant::now();
        for (i, gap) in gaps.iter().enumerate() {
            t += Duration::from_millis(*gap);
            let sent = sent_before.get(i).copied().unwrap_or(false);
            if !p.allow(t, has_streams, sent) {
                return Some(i + 1);
            }
        }
        None
    }

    #[test]
    fn the_fourth_quick_ping_strikes_out() {
        // The first ping is never a strike; the 2nd, 3rd and 4th are.
        assert_eq!(struck_out_at(&[0, 10, 10, 10, 10], true, &[]), Some(4));
        assert_eq!(struck_out_at(&[0, 10, 10, 10, 10], false, &[]), Some(4));
    }

    #[test]
    fn pings_min_time_apart_are_allowed_while_a_stream_is_open() {
        assert_eq!(
            struck_out_at(&[0, 300, 300, 300, 300, 300], true, &[]),
            None
        );
        // Exactly min_time apart is allowed too (grpc-go: strike only if before it).
        assert_eq!(struck_out_at(&[0, 200, 200, 200, 200], true, &[]), None);
    }

    #[test]
    fn without_streams_any_repeated_ping_under_two_hours_strikes() {
        assert_eq!(struck_out_at(&[0, 300, 300, 300, 300], false, &[]), Some(4));
    }

    #[test]
    fn headers_or_data_from_the_server_clear_the_strikes() {
        // Strikes on pings 2 and 3; the server replied before ping 4: cleared, not judged.
        let sent = [false, false, false, true, false, false];
        assert_eq!(struck_out_at(&[0, 10, 10, 10, 10, 10], true, &sent), None);
        assert_eq!(
            struck_out_at(&[0, 10, 10, 10, 10, 10, 10], true, &sent),
            Some(7)
        );
    }
}

//! Batched wake-ups of busy watch streams (`--watch-batch-interval`).
//!
//! Waking a stream costs a task wake-up and, for the response or responses it then sends, an
//! HTTP/2 frame and its share of a socket write, on the server and again on the client. A
//! stream fed a few hundred events a second gets about one event per wake-up. So a *busy*
//! stream that was woken less than an interval ago is not woken at once: a timer thread wakes
//! it at the next point of its connection's grid (period = the interval, phase spread by
//! connection id), and the events queued by then leave together (a watcher's revisions in one
//! response, a connection's responses in one write). A stream that has been quiet for an
//! interval is woken at once, so a lone event is never delayed.
//!
//! Only busy streams are batched: those fed, on average, at least [`BUSY_PER_INTERVAL`] times
//! per interval (a mean of the gaps between the publishes that gave them events, weighted to
//! the recent ones). Batching saves about one wake-up per extra feed in an interval, so it pays
//! for a stream fed at least twice per interval and only delays one fed less often: with 10 ms,
//! a stream fed 75 times a second (10,000 watchers on distinct keys over 100 streams, as fast
//! as 16 writers go) gets every event at once, one fed 500 times a second gets them every 10 ms.
//!
//! The grids' phases differ per connection so that the deferred wake-ups of many connections
//! are spread over the interval: with every stream on one grid, the streams' work came as one
//! burst, and a write that met it waited for all of it (measured: the same CPU saving, a longer
//! put latency tail). A connection's own streams share its phase: woken in the same tick, their
//! responses leave in one write, and the burst is one connection's share. (With a phase per
//! stream, in `watch_slow` — 10 streams on each of 9 reading connections — the put p99 ratio's
//! median was 1.90 against 1.58 per connection, CPU per put 1.67x against 1.57x.) A stream
//! whose connection is not known (the server's own watches) has a phase of its own.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::stream::StreamShared;

/// How often the timer thread looks for streams due.
const TICK: Duration = Duration::from_millis(1);

/// A stream is busy (batched) when it is fed at least this often per interval, on average.
pub(crate) const BUSY_PER_INTERVAL: u32 = 2;

/// The mean gap's weight of a new gap is 1 / 2^`GAP_WEIGHT_SHIFT`.
const GAP_WEIGHT_SHIFT: u32 = 3;

/// How often a stream has been fed: a mean of the gaps between the publishes that gave it
/// events, each new gap weighing 1/8. It starts at the interval (not busy), so a stream is
/// batched only after a run of feeds (about ten at a third of the interval), and one gap of
/// four intervals makes it not busy again.
#[derive(Debug, Default)]
pub(crate) struct FeedRate {
    last: Option<Instant>,
    /// Zero: not fed yet (taken as the interval).
    mean_gap_ns: u64,
}

struct State {
    due: Vec<(Instant, Arc<StreamShared>)>,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

/// The timer thread of deferred wake-ups; it ends when this is dropped.
pub(crate) struct Pacer {
    interval: Duration,
    /// The origin of every stream's grid.
    origin: Instant,
    shared: Arc<Shared>,
}

impl Pacer {
    /// `None` if its thread could not start: deferred wake-ups would then never come, so the
    /// hub wakes every stream at once instead.
    pub fn start(interval: Duration) -> Option<Pacer> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                due: Vec::new(),
                stop: false,
            }),
            cv: Condvar::new(),
        });
        let run = shared.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("ballast-watch-wake".into())
            .spawn(move || run_timer(&run))
        {
            tracing::error!(error = %e, "could not start the watch wake-up thread; watch streams are woken at once");
            return None;
        }
        Some(Pacer {
            interval,
            origin: Instant::now(),
            shared,
        })
    }

    /// Notes that a publish fed the stream at `now`; whether the stream is busy.
    pub fn fed(&self, rate: &mut FeedRate, now: Instant) -> bool {
        let interval = self.interval.as_nanos().min(u64::MAX as u128) as u64;
        let mut mean = if rate.mean_gap_ns == 0 {
            interval
        } else {
            rate.mean_gap_ns
        };
        if let Some(last) = rate.last {
            let gap = now
                .saturating_duration_since(last)
                .as_nanos()
                .min(u64::MAX as u128) as u64;
            mean = if gap >= mean {
                mean + ((gap - mean) >> GAP_WEIGHT_SHIFT)
            } else {
                mean - ((mean - gap) >> GAP_WEIGHT_SHIFT)
            };
        }
        rate.mean_gap_ns = mean.max(1);
        rate.last = Some(now);
        rate.mean_gap_ns.saturating_mul(BUSY_PER_INTERVAL as u64) <= interval
    }

    /// Whether a stream last woken at `last` is woken at once at `now`.
    pub fn wake_now(&self, last: Option<Instant>, now: Instant) -> bool {
        last.is_none_or(|l| now.duration_since(l) >= self.interval)
    }

    /// The first point after `now` of the grid of `id` (a stream's phase key: its connection,
    /// or itself).
    pub fn next_slot(&self, id: u64, now: Instant) -> Instant {
        let period = self.interval.as_nanos().max(1) as u64;
        let phase = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) % period;
        let since = now.duration_since(self.origin).as_nanos() as u64;
        let slots = (since + period - phase) / period;
        self.origin + Duration::from_nanos(slots * period + phase)
    }

    /// Wakes each stream at its instant (the caller marked them `wake_deferred`).
    pub fn defer(&self, streams: Vec<(Instant, Arc<StreamShared>)>) {
        if streams.is_empty() {
            return;
        }
        let mut st = lock(&self.shared.state);
        let was_idle = st.due.is_empty();
        st.due.extend(streams);
        drop(st);
        if was_idle {
            self.shared.cv.notify_one();
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.cv.notify_one();
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn run_timer(shared: &Shared) {
    let mut st = lock(&shared.state);
    loop {
        if st.stop {
            return;
        }
        if st.due.is_empty() {
            st = shared.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            continue;
        }
        drop(st);
        std::thread::sleep(TICK);
        let now = Instant::now();
        st = lock(&shared.state);
        let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut st.due)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        st.due = later;
        drop(st);
        for (at, s) in ready {
            {
                let mut ss = s.state.lock();
                ss.wake_deferred = false;
                // On the grid, not `now`: a late tick must not shift the stream's phase.
                ss.last_wake = Some(at);
            }
            s.wake();
        }
        st = lock(&shared.state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_woken_at_once_only_after_a_quiet_interval_and_otherwise_on_its_grid() {
        let interval = Duration::from_millis(10);
        let p = Pacer::start(interval).expect("the wake-up thread starts");
        let now = Instant::now() + Duration::from_secs(1);
        assert!(p.wake_now(None, now));
        assert!(p.wake_now(Some(now - interval), now));
        assert!(!p.wake_now(Some(now - interval / 2), now));

        let mut phases = std::collections::HashSet::new();
        for id in 1..=20u64 {
            let slot = p.next_slot(id, now);
            assert!(slot > now && slot <= now + interval, "stream {id}");
            // The grid: the slot after a slot is one interval later.
            assert_eq!(p.next_slot(id, slot), slot + interval);
            phases.insert(slot.duration_since(p.origin).as_nanos() % interval.as_nanos());
        }
        assert!(
            phases.len() > 15,
            "phases spread over the interval: {phases:?}"
        );
    }

    /// Feeds `rate` `n` times `gap` apart from `*at`; whether it was busy after each.
    fn feed(
        p: &Pacer,
        rate: &mut FeedRate,
        at: &mut Instant,
        gap: Duration,
        n: usize,
    ) -> Vec<bool> {
        (0..n)
            .map(|_| {
                *at += gap;
                p.fed(rate, *at)
            })
            .collect()
    }

    #[test]
    fn only_a_stream_fed_several_times_per_interval_is_busy() {
        let interval = Duration::from_millis(10);
        let p = Pacer::start(interval).expect("the wake-up thread starts");
        let mut at = Instant::now();

        // Fed every 6 ms (less than twice per interval) for a long time: never busy.
        let mut r = FeedRate::default();
        assert!(!feed(&p, &mut r, &mut at, Duration::from_millis(6), 1000).contains(&true));

        // Fed every 2 ms: busy after a run of feeds, not at the first quick ones, and from
        // then on.
        let mut r = FeedRate::default();
        let busy = feed(&p, &mut r, &mut at, Duration::from_millis(2), 100);
        let first = busy.iter().position(|b| *b).expect("becomes busy");
        assert!((5..=20).contains(&first), "busy from feed {first}");
        assert!(busy[first..].iter().all(|b| *b));

        // One gap of four intervals: not busy any more, until a new run of quick feeds.
        at += interval * 4;
        assert!(!p.fed(&mut r, at));
        assert!(feed(&p, &mut r, &mut at, Duration::from_millis(1), 30).contains(&true));

        // A pair of quick feeds amid slow ones does not make a stream busy.
        let mut r = FeedRate::default();
        for _ in 0..50 {
            assert!(!feed(&p, &mut r, &mut at, Duration::from_millis(13), 1)[0]);
            assert!(!feed(&p, &mut r, &mut at, Duration::from_micros(300), 1)[0]);
        }
    }
}

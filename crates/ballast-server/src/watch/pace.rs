//! Batched wake-ups of busy watch streams (`--watch-batch-interval`).
//!
//! Waking a stream costs a task wake-up and, for the response or responses it then sends, an
//! HTTP/2 frame and its share of a socket write, on the server and again on the client. A
//! stream fed a few hundred events a second gets about one event per wake-up. So a stream that
//! was woken less than an interval ago is not woken at once: a timer thread wakes it at the
//! next point of its own grid (period = the interval, phase spread by stream id), and the
//! events queued by then leave together (a watcher's revisions in one response, a stream's
//! responses in one frame). A stream that has been quiet for an interval is woken at once, so
//! a lone event is never delayed.
//!
//! The grids' phases differ per stream so that the deferred wake-ups of many streams are spread
//! over the interval: woken together, the streams' work came as one burst, and a write that met
//! it waited for all of it (measured: the same CPU saving, a longer put latency tail).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::stream::StreamShared;

/// How often the timer thread looks for streams due.
const TICK: Duration = Duration::from_millis(1);

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

    /// Whether a stream last woken at `last` is woken at once at `now`.
    pub fn wake_now(&self, last: Option<Instant>, now: Instant) -> bool {
        last.is_none_or(|l| now.duration_since(l) >= self.interval)
    }

    /// The first point after `now` of stream `id`'s grid.
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
}

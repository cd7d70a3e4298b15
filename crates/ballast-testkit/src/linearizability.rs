//! Linearizability of a recorded key-value history.
//!
//! A test records every client operation ([`Op`]): which client sent it, when it was sent
//! (`call`) and when its answer came back (`ret`, `None` when no answer came: a timeout, a
//! crash), what it asked ([`Input`]: put, get, delete, or a compare-and-swap Txn on one key) and
//! what it was told ([`Output`]). [`check`] decides whether some order of all those operations
//! explains every answer as a single copy of the keyspace would, with each operation taking
//! effect at one instant between its call and its answer. An operation without an answer may
//! have taken effect at any instant after its call, or never; one answered with
//! [`Output::Failed`] (an error the caller knows means "not applied") is left out.
//!
//! Optionally each answered operation carries the header revision of its response. Revisions are
//! then checked too: along each key's order a write has a larger revision than everything before
//! it and a read (or a compare that failed, or a delete that deleted nothing) a revision at
//! least that of the last write before it; across keys, an operation called after another
//! answered cannot have a smaller revision (nor an equal one if it is a write), and no two writes
//! share a revision.
//!
//! # The algorithm, and why our own
//!
//! Wing & Gong's search with Lowe's just-in-time linearization and memoization, as in Porcupine
//! (Athalye) after Horn & Kroening's "Faster linearizability checking via P-compositionality":
//! call and return events in time order in a doubly linked list; the search linearizes the
//! earliest call whose operation the model accepts, lifts it out of the list, and backtracks when
//! it meets a return event (that operation had to take effect earlier). A cache of (set of
//! linearized operations, model state) cuts every configuration already explored. Each key is
//! its own register, so the history is split per key (P-compositionality) and each part is
//! searched alone, which keeps the search small when many keys share the load.
//!
//! Operations that never answered are the expensive part: each stays a candidate to the end. The
//! search never places one where it changes nothing or where a blind write hides it at once
//! (an order doing so can move it to the end, where it may as well not have happened), and
//! writes of unknown revision leave the model's revision bounds alone so that states still
//! match in the cache. Measured on random histories (release build, the shared 2-core machine,
//! over several runs): 10,000 operations of 8 clients over 20 keys in 8 to 70 ms; 2,000 on one
//! key in 0.04 to 0.3 s; 10,000 on one key, some 300 of them unanswered, about 11 s. Past the
//! budget the answer is Unknown.
//!
//! No crate fitted. `stateright`'s `LinearizabilityTester` is part of a model checker, takes
//! invoke/return callbacks without times and enumerates interleavings without memoization or
//! partitioning (fine for a model checker's few operations, not for 10k); `todc-utils`' WGL
//! checker (0.1, one author) answers only a bool, has no budget, no partitioning and no way to
//! express an operation that never answered; `lincheck` runs loom on an in-process data
//! structure; the Rust Porcupine ports live inside other projects' tests, not on crates.io.
//!
//! # When it fails
//!
//! [`CheckError::Violation`] names the key and a small window of its operations that cannot be
//! ordered: the shortest prefix of the key's history (cut where no operation is in flight) that
//! already fails, started from the latest such cut after which it still fails from every state
//! the key could have reached there, with the reads that are not needed for the failure left
//! out. It also prints the furthest order the search found. The search is bounded
//! ([`CheckOptions`]): past the budget the answer is [`CheckError::Unknown`], never a hang.
//!
//! # With the watch guarantees
//!
//! [`crate::watch_check`] checks what watchers received against the writes in revision order;
//! this module checks what clients were answered against real time. Revisions join the two: a
//! fault test records each answered write here with its header revision and in a
//! [`crate::watch_check::History`] with the same revision, so a write acknowledged out of order
//! fails here, and a watcher that missed or reordered it fails there.
//!
//! Every key starts absent. The checker only reads what the test recorded; it never talks to a
//! server.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use crate::watch_check::show;

/// What a client asked, on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Put `value` at `key`.
    Put {
        /// Key.
        key: Vec<u8>,
        /// New value.
        value: Vec<u8>,
    },
    /// Read `key`.
    Get {
        /// Key.
        key: Vec<u8>,
    },
    /// Delete `key` (a single key, not a range).
    Delete {
        /// Key.
        key: Vec<u8>,
    },
    /// A Txn: if `key` holds `expect` (`None`: if it is absent, i.e. `version == 0`) then put
    /// `new` at it.
    Cas {
        /// Key.
        key: Vec<u8>,
        /// The value compared with (`None`: the key must not exist).
        expect: Option<Vec<u8>>,
        /// The value put when the compare holds.
        new: Vec<u8>,
    },
}

impl Input {
    /// The key the operation is on.
    pub fn key(&self) -> &[u8] {
        match self {
            Input::Put { key, .. }
            | Input::Get { key }
            | Input::Delete { key }
            | Input::Cas { key, .. } => key,
        }
    }
}

/// What the client was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// The put was acknowledged.
    Put,
    /// The value read (`None`: the key does not exist).
    Get {
        /// The value read.
        value: Option<Vec<u8>>,
    },
    /// How many keys the delete removed (0 or 1).
    Delete {
        /// `deleted` of the answer.
        deleted: i64,
    },
    /// Whether the compare held (and the put was done).
    Cas {
        /// `succeeded` of the answer.
        succeeded: bool,
    },
    /// A definite error: the operation did not take effect (the caller decides which errors
    /// mean that; when in doubt record no answer instead).
    Failed,
}

/// One client operation of a history.
#[derive(Clone, Debug)]
pub struct Op {
    /// Who sent it (only shown in reports).
    pub client: usize,
    /// When it was sent.
    pub call: Instant,
    /// When its answer came; `None`: no answer (a timeout, a crash), so it may or may not have
    /// taken effect, at any time after `call`.
    pub ret: Option<Instant>,
    /// What was asked.
    pub input: Input,
    /// What was answered (ignored when `ret` is `None`).
    pub output: Output,
    /// The header revision of the answer, when known (ignored when `ret` is `None`).
    pub revision: Option<i64>,
}

impl Op {
    /// An answered operation, without a revision.
    pub fn new(client: usize, call: Instant, ret: Instant, input: Input, output: Output) -> Op {
        Op {
            client,
            call,
            ret: Some(ret),
            input,
            output,
            revision: None,
        }
    }

    /// An operation that got no answer.
    pub fn unanswered(client: usize, call: Instant, input: Input) -> Op {
        Op {
            client,
            call,
            ret: None,
            input,
            output: Output::Failed,
            revision: None,
        }
    }

    /// The same operation with the header revision of its answer.
    pub fn with_revision(mut self, revision: i64) -> Op {
        self.revision = Some(revision);
        self
    }

    fn answered(&self) -> bool {
        self.ret.is_some()
    }

    /// Answered, and the answer says the store changed (so the revision is the write's own).
    fn changed_store(&self) -> bool {
        self.answered()
            && match self.output {
                Output::Put => true,
                Output::Delete { deleted } => deleted > 0,
                Output::Cas { succeeded } => succeeded,
                Output::Get { .. } | Output::Failed => false,
            }
    }

    /// Takes part in the search: not a definite failure, and not a read nobody saw.
    fn matters(&self) -> bool {
        if self.answered() {
            self.output != Output::Failed
        } else {
            !matches!(self.input, Input::Get { .. })
        }
    }
}

/// Limits of one [`check_with`] (and of the shrinking of a violation, which gets the same again).
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Search steps allowed (one step tries one operation at one point of one order).
    pub max_steps: u64,
    /// Wall-clock time allowed.
    pub time_limit: Duration,
    /// Shrink a violation to a small window of the key's operations.
    pub shrink: bool,
}

impl Default for CheckOptions {
    fn default() -> CheckOptions {
        CheckOptions {
            max_steps: 50_000_000,
            time_limit: Duration::from_secs(60),
            shrink: true,
        }
    }
}

/// Why a history did not check.
#[derive(Clone, Debug)]
pub enum CheckError {
    /// The history is not linearizable.
    Violation(Box<Violation>),
    /// The budget ran out while searching `key`'s operations: undecided.
    Unknown {
        /// The key being searched.
        key: Vec<u8>,
        /// Steps taken in all.
        steps: u64,
    },
    /// An operation is not well formed (answered before it was sent, or an answer of another
    /// kind than the request): a bug of the test, not of the server.
    Malformed {
        /// Its index in the history.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Operations of one key that no order explains.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The key (for a revision contradiction across keys: the key of the later operation).
    pub key: Vec<u8>,
    /// What cannot be: one line.
    pub reason: String,
    /// The operations (index in the checked history, operation), by call time.
    pub ops: Vec<(usize, Op)>,
    /// The values the key may hold just before the first of `ops` (`None`: absent), each with
    /// the latest earlier operation that can have left it (`None`: the key's initial absence).
    pub start_values: Vec<(Option<Vec<u8>>, Option<usize>)>,
    /// The longest order of some of `ops` that the search could build (history indices); none
    /// of the others could go next.
    pub furthest: Vec<usize>,
    /// Times are shown relative to this (the first call of the history).
    pub origin: Instant,
}

/// Check `history` with the default [`CheckOptions`].
pub fn check(history: &[Op]) -> Result<(), CheckError> {
    check_with(history, &CheckOptions::default())
}

/// Check `history` (any order) for linearizability against a key-value store, key by key.
pub fn check_with(history: &[Op], opts: &CheckOptions) -> Result<(), CheckError> {
    validate(history)?;
    let Some(origin) = history.iter().map(|o| o.call).min() else {
        return Ok(());
    };
    let mut per_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        if op.matters() {
            per_key.entry(op.input.key()).or_default().push(i);
        }
    }
    let mut budget = Budget::new(opts);
    for (key, indices) in per_key {
        let kh = KeyHistory::new(history, indices, origin);
        let all: Vec<usize> = (0..kh.ops.len()).collect();
        match kh.fails(&all, &[State::INITIAL], &mut budget) {
            Ok(false) => {}
            Ok(true) => return Err(kh.violation(key, history, opts)),
            Err(OutOfBudget) => {
                return Err(CheckError::Unknown {
                    key: key.to_vec(),
                    steps: budget.steps,
                })
            }
        }
    }
    check_revisions(history, origin)
}

fn validate(history: &[Op]) -> Result<(), CheckError> {
    for (index, op) in history.iter().enumerate() {
        let malformed = |reason: &str| {
            Err(CheckError::Malformed {
                index,
                reason: reason.to_owned(),
            })
        };
        let Some(ret) = op.ret else { continue };
        if ret < op.call {
            return malformed("answered before it was sent");
        }
        let fits = matches!(
            (&op.input, &op.output),
            (_, Output::Failed)
                | (Input::Put { .. }, Output::Put)
                | (Input::Get { .. }, Output::Get { .. })
                | (Input::Delete { .. }, Output::Delete { .. })
                | (Input::Cas { .. }, Output::Cas { .. })
        );
        if !fits {
            return malformed("the answer is of another kind than the request");
        }
    }
    Ok(())
}

/// Revisions against real time across keys: an operation called after another was answered has
/// a revision at least as large (strictly larger if it changed the store), and no two writes share
/// a revision. (Along each key's order the model checks them during the search.)
fn check_revisions(history: &[Op], origin: Instant) -> Result<(), CheckError> {
    let with_rev: Vec<usize> = (0..history.len())
        .filter(|&i| {
            let o = &history[i];
            o.answered() && o.output != Output::Failed && o.revision.is_some()
        })
        .collect();
    let rev = |i: usize| history[i].revision.unwrap_or(0);
    let contradiction = |a: usize, b: usize, reason: String| {
        CheckError::Violation(Box::new(Violation {
            key: history[b].input.key().to_vec(),
            reason,
            ops: vec![(a, history[a].clone()), (b, history[b].clone())],
            start_values: Vec::new(),
            furthest: Vec::new(),
            origin,
        }))
    };
    let mut writes: HashMap<i64, usize> = HashMap::new();
    for &i in &with_rev {
        if history[i].changed_store() {
            if let Some(j) = writes.insert(rev(i), i) {
                return Err(contradiction(
                    j,
                    i,
                    format!("two writes were acknowledged at revision {}", rev(i)),
                ));
            }
        }
    }
    let mut by_ret = with_rev.clone();
    by_ret.sort_by_key(|&i| history[i].ret);
    let mut by_call = with_rev;
    by_call.sort_by_key(|&i| history[i].call);
    let mut done = by_ret.iter().peekable();
    let mut highest: Option<usize> = None;
    for b in by_call {
        while let Some(&&a) = done.peek() {
            if history[a].ret >= Some(history[b].call) {
                break;
            }
            if highest.is_none_or(|h| rev(a) > rev(h)) {
                highest = Some(a);
            }
            done.next();
        }
        let Some(a) = highest else { continue };
        let write = history[b].changed_store();
        if rev(b) < rev(a) || (write && rev(b) == rev(a)) {
            return Err(contradiction(
                a,
                b,
                format!(
                    "#{b} was sent after #{a} was answered at revision {}, yet {} at revision {}",
                    rev(a),
                    if write { "wrote" } else { "read" },
                    rev(b)
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// One key: the model and the search
// ---------------------------------------------------------------------------------------------------

/// Time of a missing answer: after everything.
const NEVER: u64 = u64::MAX;

/// An operation of one key, as the search sees it (values interned).
#[derive(Clone, Copy, Debug)]
struct KeyOp {
    /// Index in the checked history.
    index: usize,
    /// Nanoseconds since the history's first call.
    call: u64,
    /// Likewise; [`NEVER`] without an answer.
    ret: u64,
    kind: Kind,
    revision: Option<i64>,
}

/// `None` fields: not answered, anything goes.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Put {
        value: u32,
    },
    Get {
        value: Option<u32>,
    },
    Delete {
        deleted: Option<i64>,
    },
    Cas {
        expect: Option<u32>,
        new: u32,
        succeeded: Option<bool>,
    },
}

impl KeyOp {
    /// An answered operation that changed nothing: leaving it out never makes a history
    /// harder to order.
    fn read_only(&self) -> bool {
        matches!(
            self.kind,
            Kind::Get { .. }
                | Kind::Delete { deleted: Some(0) }
                | Kind::Cas {
                    succeeded: Some(false),
                    ..
                }
        )
    }
}

/// The key's state in the model.
///
/// The revision bounds only move with known revisions: a write whose revision is unknown (no
/// answer, or none recorded) leaves them alone. That is weaker than counting it (it has some
/// revision above `seen_rev`) but keeps states equal however many such writes came before,
/// which is what keeps the cache effective around operations that never answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct State {
    value: Option<u32>,
    /// Lower bound of the revision of the last write.
    write_rev: i64,
    /// Lower bound of the store's revision: the last write's, or a later read's.
    seen_rev: i64,
}

impl State {
    const INITIAL: State = State {
        value: None,
        write_rev: 0,
        seen_rev: 0,
    };

    fn write(self, value: Option<u32>, revision: Option<i64>) -> Option<State> {
        match revision {
            None => Some(State { value, ..self }),
            Some(r) if r <= self.seen_rev => None,
            Some(r) => Some(State {
                value,
                write_rev: r,
                seen_rev: r,
            }),
        }
    }

    fn read(self, revision: Option<i64>) -> Option<State> {
        match revision {
            None => Some(self),
            Some(r) if r < self.write_rev => None,
            Some(r) => Some(State {
                seen_rev: self.seen_rev.max(r),
                ..self
            }),
        }
    }

    /// The state after `op`, if the model allows `op`'s answer here.
    fn step(self, op: &KeyOp) -> Option<State> {
        let rev = op.revision;
        match op.kind {
            Kind::Put { value } => self.write(Some(value), rev),
            Kind::Get { value } if value == self.value => self.read(rev),
            Kind::Get { .. } => None,
            Kind::Delete { deleted } => match (self.value, deleted) {
                (Some(_), None | Some(1)) => self.write(None, rev),
                (None, None | Some(0)) => self.read(rev),
                _ => None,
            },
            Kind::Cas {
                expect,
                new,
                succeeded,
            } => {
                let holds = self.value == expect;
                match succeeded {
                    Some(s) if s != holds => None,
                    _ if holds => self.write(Some(new), rev),
                    _ => self.read(rev),
                }
            }
        }
    }
}

#[derive(Debug)]
struct OutOfBudget;

struct Budget {
    steps: u64,
    max_steps: u64,
    deadline: Instant,
}

impl Budget {
    fn new(opts: &CheckOptions) -> Budget {
        Budget {
            steps: 0,
            max_steps: opts.max_steps,
            deadline: Instant::now() + opts.time_limit,
        }
    }

    fn tick(&mut self) -> Result<(), OutOfBudget> {
        self.steps += 1;
        if self.steps > self.max_steps
            || (self.steps.is_multiple_of(4096) && Instant::now() >= self.deadline)
        {
            return Err(OutOfBudget);
        }
        Ok(())
    }
}

/// What one search asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// Stop at the first complete order.
    AnyOrder,
    /// Every state a complete order can end in.
    EndStates,
}

#[derive(Default)]
struct Found {
    linearizable: bool,
    ends: HashSet<State>,
    /// Positions (in the searched slice) of the longest partial order met.
    furthest: Vec<usize>,
}

/// The configurations already explored: (set of linearized operations, state, whether the last
/// one got no answer), keyed by an incremental hash of the set (XOR of one random word per
/// operation) and the rest.
#[derive(Default)]
struct Explored(HashMap<ConfigKey, Vec<Box<[u64]>>>);

/// (hash of the set, state, whether the last operation got no answer).
type ConfigKey = (u64, State, bool);

impl Explored {
    /// Whether the configuration is new (and remember it).
    fn insert(&mut self, hash: u64, state: State, after_unanswered: bool, bits: &[u64]) -> bool {
        let same = self.0.entry((hash, state, after_unanswered)).or_default();
        if same.iter().any(|old| **old == *bits) {
            return false;
        }
        same.push(bits.into());
        true
    }
}

/// Porcupine's search over `ops` (one key), from each of `starts`.
///
/// Operations that got no answer are what makes this search blow up: each stays a candidate
/// forever, and each may or may not have been applied at each point. Since such an operation is
/// never waited for and the model accepts it in any state, any order can move it to the very end
/// (where it may as well never have happened) when where it stands it changes nothing, or is
/// followed at once by a blind write (a put, or a delete with no answer) that hides it. The
/// search only builds orders where neither happens (so it remembers whether the last operation
/// got no answer), and is done when only unanswered operations are left. (Not when it collects
/// end states, which such a move would change; it does so only for prefixes cut where nothing is
/// in flight, which hold no unanswered operation anyway.)
fn search(
    ops: &[KeyOp],
    starts: &[State],
    goal: Goal,
    track_furthest: bool,
    budget: &mut Budget,
) -> Result<Found, OutOfBudget> {
    let n = ops.len();
    let unanswered = |i: usize| ops[i].ret == NEVER;
    let blind = |i: usize| {
        matches!(
            ops[i].kind,
            Kind::Put { .. } | Kind::Delete { deleted: None }
        )
    };
    let answered = (0..n).filter(|&i| !unanswered(i)).count();
    let prune = goal == Goal::AnyOrder;
    let mut found = Found::default();
    if n == 0 || (prune && answered == 0) {
        found.linearizable = true;
        found.ends.extend(starts.iter().copied());
        return Ok(found);
    }
    // Entry 2i is the call of ops[i], 2i+1 its return; then the head and tail sentinels.
    let (head, tail) = (2 * n, 2 * n + 1);
    let mut events: Vec<(u64, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        events.push((o.call, 2 * i));
        events.push((o.ret, 2 * i + 1));
    }
    // At equal times calls come first: touching operations count as concurrent.
    events.sort_unstable_by_key(|&(t, e)| (t, e & 1));
    let mut next = vec![tail; 2 * n + 2];
    let mut prev = vec![head; 2 * n + 2];
    let mut last = head;
    for &(_, e) in &events {
        next[last] = e;
        prev[e] = last;
        last = e;
    }
    next[last] = tail;
    prev[tail] = last;

    // One random word per operation: the hash of a set is the XOR of its members' words.
    let random = std::collections::hash_map::RandomState::new();
    let words: Vec<u64> = (0..n).map(|i| random.hash_one(i)).collect();
    let mut explored = Explored::default();
    let mut bits = vec![0u64; n.div_ceil(64)];
    let mut hash = 0u64;
    for &start in starts {
        let mut state = start;
        let mut stack: Vec<(usize, State)> = Vec::new();
        let mut answered_left = answered;
        let mut e = next[head];
        loop {
            budget.tick()?;
            // A return: its operation had to come earlier. Else try the call's operation next.
            let mut backtrack = e & 1 == 1;
            let i = e / 2;
            let after_unanswered = prune && stack.last().is_some_and(|&(j, _)| unanswered(j));
            let next_state = if backtrack || (after_unanswered && blind(i)) {
                None
            } else {
                state
                    .step(&ops[i])
                    .filter(|after| !(prune && unanswered(i) && *after == state))
            };
            if let Some(after) = next_state {
                bits[i / 64] ^= 1 << (i % 64);
                hash ^= words[i];
                if explored.insert(hash, after, unanswered(i), &bits) {
                    stack.push((i, state));
                    state = after;
                    answered_left -= usize::from(!unanswered(i));
                    for x in [2 * i, 2 * i + 1] {
                        next[prev[x]] = next[x];
                        prev[next[x]] = prev[x];
                    }
                    if track_furthest && stack.len() > found.furthest.len() {
                        found.furthest = stack.iter().map(|&(j, _)| j).collect();
                    }
                    if goal == Goal::AnyOrder && answered_left == 0 {
                        found.linearizable = true;
                        return Ok(found);
                    }
                    e = next[head];
                    if e != tail {
                        continue;
                    }
                    found.ends.insert(state);
                    backtrack = true;
                } else {
                    bits[i / 64] ^= 1 << (i % 64);
                    hash ^= words[i];
                }
            }
            if !backtrack {
                e = next[e];
                continue;
            }
            let Some((i, before)) = stack.pop() else {
                break;
            };
            state = before;
            answered_left += usize::from(!unanswered(i));
            bits[i / 64] ^= 1 << (i % 64);
            hash ^= words[i];
            for x in [2 * i + 1, 2 * i] {
                next[prev[x]] = x;
                prev[next[x]] = x;
            }
            e = next[2 * i];
        }
    }
    found.linearizable = !found.ends.is_empty();
    Ok(found)
}

/// A failing window of a key history.
struct Witness {
    /// Position of its first operation before leaving reads out.
    cut: usize,
    /// Positions of its operations.
    window: Vec<usize>,
    /// The states the key may be in at `cut`.
    starts: Vec<State>,
    /// Positions of the furthest order found.
    furthest: Vec<usize>,
}

/// One key's operations, by call time, with its values interned.
struct KeyHistory {
    ops: Vec<KeyOp>,
    values: Vec<Vec<u8>>,
    /// The history's first call (time 0).
    origin: Instant,
}

impl KeyHistory {
    fn new(history: &[Op], mut indices: Vec<usize>, origin: Instant) -> KeyHistory {
        indices.sort_by_key(|&i| (history[i].call, i));
        let mut ids: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut values: Vec<Vec<u8>> = Vec::new();
        let mut intern = |v: &[u8]| -> u32 {
            if let Some(&id) = ids.get(v) {
                return id;
            }
            let id = u32::try_from(values.len()).expect("fewer than 2^32 values");
            ids.insert(v.to_vec(), id);
            values.push(v.to_vec());
            id
        };
        let nanos =
            |t: Instant| u64::try_from(t.duration_since(origin).as_nanos()).unwrap_or(NEVER - 1);
        let mut ops = Vec::with_capacity(indices.len());
        for i in indices {
            let op = &history[i];
            let answered = op.answered();
            let kind = match (&op.input, &op.output) {
                (Input::Put { value, .. }, _) => Kind::Put {
                    value: intern(value),
                },
                (Input::Get { .. }, Output::Get { value }) => Kind::Get {
                    value: value.as_deref().map(&mut intern),
                },
                (Input::Delete { .. }, out) => Kind::Delete {
                    deleted: match out {
                        Output::Delete { deleted } if answered => Some(*deleted),
                        _ => None,
                    },
                },
                (Input::Cas { expect, new, .. }, out) => Kind::Cas {
                    expect: expect.as_deref().map(&mut intern),
                    new: intern(new),
                    succeeded: match out {
                        Output::Cas { succeeded } if answered => Some(*succeeded),
                        _ => None,
                    },
                },
                // `matters` and `validate` keep other gets out.
                (Input::Get { .. }, _) => unreachable!("an unanswered or failed get is left out"),
            };
            ops.push(KeyOp {
                index: i,
                call: nanos(op.call),
                ret: op.ret.map_or(NEVER, nanos),
                kind,
                revision: op.revision.filter(|_| answered),
            });
        }
        KeyHistory {
            ops,
            values,
            origin,
        }
    }

    fn subset(&self, positions: &[usize]) -> Vec<KeyOp> {
        positions.iter().map(|&p| self.ops[p]).collect()
    }

    /// Whether the operations at `positions` have no order from any of `starts`.
    fn fails(
        &self,
        positions: &[usize],
        starts: &[State],
        budget: &mut Budget,
    ) -> Result<bool, OutOfBudget> {
        let found = search(
            &self.subset(positions),
            starts,
            Goal::AnyOrder,
            false,
            budget,
        )?;
        Ok(!found.linearizable)
    }

    /// Positions `p` where every operation before `p` was answered before `ops[p]` was sent
    /// (0 and `len` included).
    fn quiet_cuts(&self) -> Vec<usize> {
        let mut cuts = vec![0];
        let mut latest_ret = 0;
        for (p, o) in self.ops.iter().enumerate() {
            if p > 0 && latest_ret < o.call {
                cuts.push(p);
            }
            latest_ret = latest_ret.max(o.ret);
        }
        cuts.push(self.ops.len());
        cuts
    }

    /// A small window of this (failing) key history that still fails. Stops shrinking when the
    /// budget runs out.
    fn shrink(&self, budget: &mut Budget) -> Witness {
        let cuts = self.quiet_cuts();
        let range = |a: usize, b: usize| (a..b).collect::<Vec<usize>>();
        // The shortest failing prefix (a prefix that fails makes every longer one fail).
        let (mut lo, mut hi) = (1, cuts.len() - 1);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.fails(&range(0, cuts[mid]), &[State::INITIAL], budget) {
                Ok(true) => hi = mid,
                Ok(false) => lo = mid + 1,
                Err(OutOfBudget) => break,
            }
        }
        let end_cut = hi;
        let end = cuts[end_cut];
        // The latest cut after which the rest fails from every state the key can be in there (if
        // it does from one cut, it does from every earlier one).
        let mut starts = vec![State::INITIAL];
        let (mut lo, mut hi) = (0, end_cut - 1);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            let at = cuts[mid];
            let probe = search(
                &self.subset(&range(0, at)),
                &[State::INITIAL],
                Goal::EndStates,
                false,
                budget,
            )
            .and_then(|f| {
                let ends: Vec<State> = f.ends.into_iter().collect();
                Ok((self.fails(&range(at, end), &ends, budget)?, ends))
            });
            match probe {
                Ok((true, ends)) => {
                    lo = mid;
                    starts = ends;
                }
                Ok((false, _)) => hi = mid - 1,
                Err(OutOfBudget) => break,
            }
        }
        let mut window = range(cuts[lo], end);
        // Leave out every read the failure does not need.
        for k in (0..window.len()).rev() {
            if !self.ops[window[k]].read_only() {
                continue;
            }
            let mut without = window.clone();
            without.remove(k);
            match self.fails(&without, &starts, budget) {
                Ok(true) => window = without,
                Ok(false) => {}
                Err(OutOfBudget) => break,
            }
        }
        let furthest = search(&self.subset(&window), &starts, Goal::AnyOrder, true, budget)
            .map(|f| f.furthest.iter().map(|&k| window[k]).collect())
            .unwrap_or_default();
        Witness {
            cut: cuts[lo],
            window,
            starts,
            furthest,
        }
    }

    /// The latest operation before position `cut` that can have left the key holding `value`.
    fn left_by(&self, cut: usize, value: Option<u32>) -> Option<usize> {
        self.ops[..cut].iter().rposition(|o| match (o.kind, value) {
            (Kind::Put { value: v }, Some(want)) => v == want,
            (Kind::Cas { new, succeeded, .. }, Some(want)) => {
                new == want && succeeded != Some(false)
            }
            (Kind::Delete { deleted }, None) => deleted != Some(0),
            _ => false,
        })
    }

    fn violation(&self, key: &[u8], history: &[Op], opts: &CheckOptions) -> CheckError {
        let w = if opts.shrink {
            self.shrink(&mut Budget::new(opts))
        } else {
            Witness {
                cut: 0,
                window: (0..self.ops.len()).collect(),
                starts: vec![State::INITIAL],
                furthest: Vec::new(),
            }
        };
        let index = |p: &usize| self.ops[*p].index;
        let mut start_values: Vec<(Option<Vec<u8>>, Option<usize>)> = w
            .starts
            .iter()
            .map(|s| {
                let value = s.value.map(|v| self.values[v as usize].clone());
                (value, self.left_by(w.cut, s.value).as_ref().map(index))
            })
            .collect();
        start_values.sort();
        start_values.dedup();
        let (window, furthest) = (w.window, w.furthest);
        CheckError::Violation(Box::new(Violation {
            key: key.to_vec(),
            reason: format!(
                "no order of these {} operations explains every answer",
                window.len()
            ),
            ops: window
                .iter()
                .map(|p| (index(p), history[index(p)].clone()))
                .collect(),
            start_values,
            furthest: furthest.iter().map(index).collect(),
            origin: self.origin,
        }))
    }
}

// ---------------------------------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------------------------------

fn show_value(v: &Option<Vec<u8>>) -> String {
    v.as_deref()
        .map_or_else(|| "absent".to_owned(), |v| format!("{:?}", show(v)))
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Put { key, value } => write!(f, "put {:?} = {:?}", show(key), show(value)),
            Input::Get { key } => write!(f, "get {:?}", show(key)),
            Input::Delete { key } => write!(f, "delete {:?}", show(key)),
            Input::Cas { key, expect, new } => write!(
                f,
                "if {:?} is {} then put {:?}",
                show(key),
                show_value(expect),
                show(new)
            ),
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Put => write!(f, "ok"),
            Output::Get { value } => write!(f, "{}", show_value(value)),
            Output::Delete { deleted } => write!(f, "deleted {deleted}"),
            Output::Cas { succeeded: true } => write!(f, "succeeded"),
            Output::Cas { succeeded: false } => write!(f, "compare failed"),
            Output::Failed => write!(f, "failed (not applied)"),
        }
    }
}

impl Op {
    /// One line: client, interval relative to `origin` (ms), request, answer, revision.
    pub fn describe(&self, origin: Instant) -> String {
        let ms = |t: Instant| t.saturating_duration_since(origin).as_secs_f64() * 1e3;
        let ret = self
            .ret
            .map_or_else(|| "       -".to_owned(), |r| format!("{:8.3}", ms(r)));
        let answer = match (self.ret, self.revision) {
            (None, _) => "no answer".to_owned(),
            (Some(_), None) => self.output.to_string(),
            (Some(_), Some(rev)) => format!("{} @rev {rev}", self.output),
        };
        format!(
            "client {:>3} [{:8.3} ms, {ret} ms] {} -> {answer}",
            self.client,
            ms(self.call),
            self.input
        )
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "not linearizable: key {:?}: {}",
            show(&self.key),
            self.reason
        )?;
        if !self.start_values.is_empty() {
            let values: Vec<String> = self
                .start_values
                .iter()
                .map(|(v, by)| match by {
                    Some(i) => format!("{} (left by #{i})", show_value(v)),
                    None => format!("{} (initially)", show_value(v)),
                })
                .collect();
            writeln!(f, "  the key may hold before them: {}", values.join(" | "))?;
        }
        for (i, op) in &self.ops {
            writeln!(f, "  #{i:<6} {}", op.describe(self.origin))?;
        }
        if !self.furthest.is_empty() {
            let order: Vec<String> = self.furthest.iter().map(|i| format!("#{i}")).collect();
            writeln!(
                f,
                "  furthest order found: {}; then none of the rest can go next",
                order.join(", ")
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Violation(v) => write!(f, "{v}"),
            CheckError::Unknown { key, steps } => write!(
                f,
                "linearizability undecided: budget ran out after {steps} steps on key {:?}",
                show(key)
            ),
            CheckError::Malformed { index, reason } => {
                write!(f, "malformed history: op #{index}: {reason}")
            }
        }
    }
}

impl std::error::Error for CheckError {}

#[cfg(test)]
mod tests;

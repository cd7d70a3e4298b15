use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// A hand-made history; times are microseconds after `base`.
struct H {
    base: Instant,
    ops: Vec<Op>,
}

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

impl H {
    fn new() -> H {
        H {
            base: Instant::now(),
            ops: Vec::new(),
        }
    }

    fn at(&self, us: u64) -> Instant {
        self.base + Duration::from_micros(us)
    }

    /// `ret: None`: no answer (the output is then ignored).
    fn op(&mut self, client: usize, call: u64, ret: Option<u64>, input: Input, output: Output) {
        self.ops.push(Op {
            client,
            call: self.at(call),
            ret: ret.map(|r| self.at(r)),
            input,
            output,
            revision: None,
        });
    }

    fn put(&mut self, client: usize, call: u64, ret: Option<u64>, key: &str, value: &str) {
        let input = Input::Put {
            key: b(key),
            value: b(value),
        };
        self.op(client, call, ret, input, Output::Put);
    }

    fn get(&mut self, client: usize, call: u64, ret: u64, key: &str, value: Option<&str>) {
        let output = Output::Get {
            value: value.map(b),
        };
        self.op(client, call, Some(ret), Input::Get { key: b(key) }, output);
    }

    fn cas(
        &mut self,
        client: usize,
        call: u64,
        ret: u64,
        key: &str,
        cas: (Option<&str>, &str, bool),
    ) {
        let (expect, new, succeeded) = cas;
        let input = Input::Cas {
            key: b(key),
            expect: expect.map(b),
            new: b(new),
        };
        self.op(client, call, Some(ret), input, Output::Cas { succeeded });
    }

    /// The revision of the last operation's answer.
    fn rev(&mut self, revision: i64) {
        if let Some(last) = self.ops.last_mut() {
            last.revision = Some(revision);
        }
    }

    fn check(&self) -> Result<(), CheckError> {
        check(&self.ops)
    }

    /// The violation found (printed), which must name `key` and include the ops `must_show`.
    fn violation(&self, key: &str, must_show: &[usize]) -> Violation {
        match self.check() {
            Err(CheckError::Violation(v)) => {
                println!("{v}");
                assert_eq!(v.key, b(key), "{v}");
                for i in must_show {
                    let shown = v.ops.iter().any(|(j, _)| j == i)
                        || v.start_values.iter().any(|(_, by)| *by == Some(*i));
                    assert!(shown, "#{i} missing:\n{v}");
                }
                *v
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }
}

#[test]
fn empty_and_sequential_histories_are_linearizable() {
    assert!(check(&[]).is_ok());
    let mut h = H::new();
    h.get(0, 0, 1, "a", None);
    h.put(0, 2, Some(3), "a", "1");
    h.get(1, 4, 5, "a", Some("1"));
    h.op(
        1,
        6,
        Some(7),
        Input::Delete { key: b("a") },
        Output::Delete { deleted: 1 },
    );
    h.op(
        0,
        8,
        Some(9),
        Input::Delete { key: b("a") },
        Output::Delete { deleted: 0 },
    );
    h.get(0, 10, 11, "a", None);
    h.cas(1, 12, 13, "a", (None, "2", true));
    h.cas(1, 14, 15, "a", (Some("1"), "3", false));
    h.cas(0, 16, 17, "a", (Some("2"), "4", true));
    h.get(0, 18, 19, "a", Some("4"));
    h.check().unwrap();
}

#[test]
fn concurrent_puts_with_overlapping_reads() {
    // c0 |---- put a=1 ----------|
    // c1   |---- put a=2 ----------|
    // c2     |get 2| |get 1|          |get 1|
    // c3       |get 2|  |get 1|
    let mut h = H::new();
    h.put(0, 0, Some(100), "a", "1");
    h.put(1, 10, Some(110), "a", "2");
    h.get(2, 20, 40, "a", Some("2"));
    h.get(3, 30, 50, "a", Some("2"));
    h.get(2, 60, 70, "a", Some("1"));
    h.get(3, 65, 90, "a", Some("1"));
    h.get(2, 120, 130, "a", Some("1"));
    h.check().unwrap();
}

#[test]
fn an_unanswered_write_that_took_effect() {
    // The put of 2 never answered; it shows up long after its client gave up.
    let mut h = H::new();
    h.put(0, 0, Some(10), "a", "1");
    h.put(1, 20, None, "a", "2");
    h.get(0, 30, 40, "a", Some("1"));
    h.get(0, 1000, 1010, "a", Some("2"));
    h.get(2, 2000, 2010, "a", Some("2"));
    h.check().unwrap();
    // But not before it was sent.
    let mut h = H::new();
    h.put(0, 0, Some(10), "a", "1");
    h.get(0, 12, 15, "a", Some("2"));
    h.put(1, 20, None, "a", "2");
    h.violation("a", &[1]);
}

#[test]
fn an_unanswered_write_that_did_not_take_effect() {
    let mut h = H::new();
    h.put(0, 0, Some(10), "a", "1");
    h.put(1, 20, None, "a", "2");
    h.op(2, 25, None, Input::Delete { key: b("a") }, Output::Failed);
    h.get(0, 30, 40, "a", Some("1"));
    h.get(0, 1000, 1010, "a", Some("1"));
    h.check().unwrap();
}

#[test]
fn a_failed_write_is_left_out() {
    let mut h = H::new();
    h.put(0, 0, Some(10), "a", "1");
    h.op(
        1,
        5,
        Some(15),
        Input::Put {
            key: b("a"),
            value: b("2"),
        },
        Output::Failed,
    );
    h.get(0, 20, 30, "a", Some("1"));
    h.check().unwrap();
    // ... so a read of its value is one of a value nobody wrote.
    h.get(2, 40, 50, "a", Some("2"));
    h.violation("a", &[3]);
}

#[test]
fn stale_read_after_a_completed_write() {
    let mut h = H::new();
    h.put(0, 0, Some(10), "a", "1");
    h.put(1, 20, Some(30), "a", "2");
    h.get(2, 40, 50, "a", Some("1"));
    // Shrunk to the read, from the value the second put left.
    let v = h.violation("a", &[1, 2]);
    assert_eq!(v.ops.len(), 1, "{v}");
    assert_eq!(v.start_values, vec![(Some(b("2")), Some(1))]);
}

#[test]
fn read_of_a_value_nobody_wrote() {
    let mut h = H::new();
    h.put(0, 0, Some(10), "a", "1");
    h.get(1, 5, 50, "a", Some("9"));
    h.put(0, 60, Some(70), "b", "9");
    h.violation("a", &[1]);
}

#[test]
fn two_reads_see_writes_in_opposite_orders() {
    // Both writes span the reads; c2 sees 1 then 2, c3 sees 2 then 1.
    let mut h = H::new();
    h.put(0, 0, Some(1000), "a", "1");
    h.put(1, 0, Some(1000), "a", "2");
    h.get(2, 100, 200, "a", Some("1"));
    h.get(2, 300, 400, "a", Some("2"));
    h.get(3, 100, 200, "a", Some("2"));
    h.get(3, 300, 400, "a", Some("1"));
    h.violation("a", &[0, 1]);
    // Either order alone is fine.
    h.ops.truncate(4);
    h.check().unwrap();
}

#[test]
fn lost_acknowledged_write() {
    let mut h = H::new();
    h.put(0, 0, Some(10), "a", "1");
    h.put(0, 20, Some(30), "b", "1");
    h.get(1, 40, 50, "b", Some("1"));
    h.get(1, 60, 70, "a", None);
    h.violation("a", &[0, 3]);
}

#[test]
fn two_clients_win_the_same_create() {
    // Both Txns "create a if absent" succeed, nothing deleted it in between: a broken lock.
    let mut h = H::new();
    h.cas(0, 0, 100, "lock", (None, "c0", true));
    h.cas(1, 10, 110, "lock", (None, "c1", true));
    h.violation("lock", &[0, 1]);
    // With a delete between them it is fine.
    h.op(
        2,
        20,
        Some(90),
        Input::Delete { key: b("lock") },
        Output::Delete { deleted: 1 },
    );
    h.check().unwrap();
}

#[test]
fn revisions_along_a_key() {
    let mut h = H::new();
    h.put(0, 0, Some(10), "a", "1");
    h.rev(5);
    h.get(1, 20, 30, "a", Some("1"));
    h.rev(7);
    h.put(0, 40, Some(50), "a", "2");
    h.rev(9);
    h.check().unwrap();
    // Concurrent writes: the one with the larger revision must be the one that stays.
    let mut h = H::new();
    h.put(0, 0, Some(100), "a", "1");
    h.rev(8);
    h.put(1, 0, Some(100), "a", "2");
    h.rev(9);
    h.get(2, 200, 210, "a", Some("1"));
    let v = h.violation("a", &[1, 2]);
    assert_eq!(v.start_values, vec![(Some(b("2")), Some(1))]);
    // A read that saw a write cannot carry an older revision than that write.
    let mut h = H::new();
    h.put(0, 0, Some(100), "a", "1");
    h.rev(8);
    h.get(2, 10, 90, "a", Some("1"));
    h.rev(7);
    h.violation("a", &[0, 1]);
}

#[test]
fn revisions_across_keys() {
    let mut h = H::new();
    h.put(0, 0, Some(10), "a", "1");
    h.rev(5);
    h.put(1, 20, Some(30), "b", "1");
    h.rev(4);
    let v = h.violation("b", &[0, 1]);
    assert!(v.reason.contains("revision 5"), "{v}");
    // Two writes at one revision.
    let mut h = H::new();
    h.put(0, 0, Some(10), "a", "1");
    h.rev(5);
    h.put(1, 0, Some(10), "b", "1");
    h.rev(5);
    h.violation("b", &[0, 1]);
    // A read's revision may equal the last write's, across keys too.
    let mut h = H::new();
    h.put(0, 0, Some(10), "a", "1");
    h.rev(5);
    h.get(1, 20, 30, "b", None);
    h.rev(5);
    h.check().unwrap();
}

#[test]
fn malformed_operations_are_reported() {
    let mut h = H::new();
    h.op(
        0,
        10,
        Some(5),
        Input::Get { key: b("a") },
        Output::Get { value: None },
    );
    assert!(matches!(
        h.check(),
        Err(CheckError::Malformed { index: 0, .. })
    ));
    let mut h = H::new();
    h.op(0, 0, Some(5), Input::Get { key: b("a") }, Output::Put);
    assert!(matches!(
        h.check(),
        Err(CheckError::Malformed { index: 0, .. })
    ));
}

#[test]
fn an_exhausted_budget_is_unknown() {
    let ops = random_history(&mut StdRng::seed_from_u64(1), Shape::new(8, 1, 400)).0;
    let opts = CheckOptions {
        max_steps: 50,
        ..CheckOptions::default()
    };
    match check_with(&ops, &opts) {
        Err(CheckError::Unknown { key, steps }) => {
            assert_eq!(key, b("k0"));
            assert!(steps > 50);
        }
        other => panic!("expected Unknown, got {other:?}"),
    }
}

#[test]
fn a_violation_is_shrunk_to_a_small_window() {
    // 300 operations of quiet traffic on "a" (and on "b"), then a stale read.
    let mut h = H::new();
    let mut t = 0;
    for i in 0..150 {
        h.put(i % 3, t, Some(t + 10), "a", &format!("v{i}"));
        h.get((i + 1) % 3, t + 5, t + 20, "a", Some(&format!("v{i}")));
        h.put(i % 3, t, Some(t + 30), "b", &format!("v{i}"));
        t += 40;
    }
    h.put(0, t, Some(t + 10), "a", "new");
    h.get(1, t + 20, t + 30, "a", Some("v149"));
    let v = h.violation("a", &[450, 451]);
    assert!(v.ops.len() <= 2, "{v}");
    let text = v.to_string();
    assert!(
        text.contains("key \"a\"") && text.contains("#451"),
        "{text}"
    );
}

/// What [`random_history`] makes.
#[derive(Clone, Copy)]
struct Shape {
    clients: usize,
    keys: usize,
    ops: usize,
    /// Answers carry revisions (90% of them).
    revisions: bool,
    /// Operations that get no answer, in percent (as many again fail definitely).
    unanswered_pct: u32,
}

impl Shape {
    fn new(clients: usize, keys: usize, ops: usize) -> Shape {
        Shape {
            clients,
            keys,
            ops,
            revisions: true,
            unanswered_pct: 3,
        }
    }

    fn without_revisions(self) -> Shape {
        Shape {
            revisions: false,
            ..self
        }
    }
}

/// What [`random_history`] knows about how it made a history.
struct Truth {
    /// The operation that wrote each value (values are unique).
    writer: HashMap<Vec<u8>, usize>,
}

/// A history from a real sequential execution: `clients` clients each send one operation after
/// another with random gaps and durations; each operation takes effect at a random instant of its
/// interval, and the operations are executed in that order on a map to get the answers. Some get
/// no answer (half of those take effect, possibly much later), some fail definitely.
fn random_history(rng: &mut StdRng, shape: Shape) -> (Vec<Op>, Truth) {
    let Shape {
        clients,
        keys,
        ops: n,
        revisions,
        unanswered_pct,
    } = shape;
    let base = Instant::now();
    let at = |us: u64| base + Duration::from_micros(us);
    let mut clock = vec![0u64; clients];
    let mut ops: Vec<Op> = Vec::with_capacity(n);
    let mut effects: Vec<(u64, usize)> = Vec::new();
    let mut recent: Vec<Vec<Vec<u8>>> = vec![Vec::new(); keys];
    let mut writer = HashMap::new();
    for seq in 0..n {
        let c = (0..clients).min_by_key(|&c| clock[c]).unwrap_or(0);
        let k = rng.random_range(0..keys);
        let key = format!("k{k}").into_bytes();
        let value = format!("c{c}.{seq}").into_bytes();
        let input = match rng.random_range(0..20) {
            0..=6 => Input::Put { key, value },
            7..=14 => Input::Get { key },
            15..=16 => Input::Delete { key },
            _ => {
                let expect = if rng.random_bool(0.25) || recent[k].is_empty() {
                    None
                } else {
                    let from = recent[k].len().saturating_sub(3);
                    Some(recent[k][rng.random_range(from..recent[k].len())].clone())
                };
                Input::Cas {
                    key,
                    expect,
                    new: value,
                }
            }
        };
        if let Input::Put { value, .. } | Input::Cas { new: value, .. } = &input {
            recent[k].push(value.clone());
            writer.insert(value.clone(), seq);
        }
        let call = clock[c] + rng.random_range(0..20);
        let took = rng.random_range(1..100);
        let roll = rng.random_range(0..100);
        let (ret, effect) = if roll < unanswered_pct {
            // A definite failure: never applied.
            (Some(call + took), None)
        } else if roll < 2 * unanswered_pct {
            // No answer: the client gives up; applied (maybe much later) or not.
            let effect = rng
                .random_bool(0.5)
                .then(|| call + rng.random_range(0..2000));
            (None, effect)
        } else {
            (Some(call + took), Some(call + rng.random_range(0..=took)))
        };
        clock[c] = ret.unwrap_or(call + 150);
        if let Some(t) = effect {
            effects.push((t, seq));
        }
        ops.push(Op {
            client: c,
            call: at(call),
            ret: ret.map(at),
            input,
            output: Output::Failed,
            revision: None,
        });
    }
    // Execute in effect order.
    effects.sort_unstable();
    let mut store: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut revision = 1;
    for (_, i) in effects {
        let op = &mut ops[i];
        let key = op.input.key().to_vec();
        let (output, wrote) = match &op.input {
            Input::Put { value, .. } => {
                store.insert(key, value.clone());
                (Output::Put, true)
            }
            Input::Get { .. } => (
                Output::Get {
                    value: store.get(&key).cloned(),
                },
                false,
            ),
            Input::Delete { .. } => {
                let deleted = i64::from(store.remove(&key).is_some());
                (Output::Delete { deleted }, deleted == 1)
            }
            Input::Cas { expect, new, .. } => {
                let succeeded = store.get(&key) == expect.as_ref();
                if succeeded {
                    store.insert(key, new.clone());
                }
                (Output::Cas { succeeded }, succeeded)
            }
        };
        revision += i64::from(wrote);
        if op.ret.is_some() {
            op.output = output;
            if revisions && rng.random_bool(0.9) {
                op.revision = Some(revision);
            }
        }
    }
    (ops, Truth { writer })
}

/// Values `read` (an answered get) certainly could not have returned: written by an operation
/// that never took effect, that was sent after the read was answered, or that was overwritten by
/// an answered write before the read was sent.
fn impossible_values(ops: &[Op], truth: &Truth, read: usize) -> Vec<Vec<u8>> {
    let r = &ops[read];
    let key = r.input.key();
    let precedes = |a: &Op, b: &Op| a.ret.is_some_and(|ret| ret < b.call);
    let mut out = Vec::new();
    for (value, &w) in &truth.writer {
        let wr = &ops[w];
        if wr.input.key() != key
            || Some(value)
                == match &r.output {
                    Output::Get { value } => value.as_ref(),
                    _ => None,
                }
        {
            continue;
        }
        let never = wr.ret.is_some()
            && matches!(wr.output, Output::Failed | Output::Cas { succeeded: false });
        let after = r.ret.is_some_and(|ret| ret < wr.call);
        let overwritten = ops.iter().enumerate().any(|(x, xo)| {
            x != w
                && xo.input.key() == key
                && xo.changed_store()
                && precedes(wr, xo)
                && precedes(xo, r)
        });
        if never || after || overwritten {
            out.push(value.clone());
        }
    }
    out.sort();
    out
}

#[test]
fn random_histories_are_linearizable_and_mutated_reads_are_caught() {
    let mut rng = StdRng::seed_from_u64(0xba11a57);
    let mut caught = 0;
    for round in 0..300 {
        let shape = Shape {
            revisions: round % 2 == 0,
            ..Shape::new(4, 3, 60)
        };
        let (mut ops, truth) = random_history(&mut rng, shape);
        if let Err(e) = check(&ops) {
            panic!("round {round}: a real execution was rejected:\n{e}");
        }
        let reads: Vec<usize> = (0..ops.len())
            .filter(|&i| ops[i].ret.is_some() && matches!(ops[i].output, Output::Get { .. }))
            .collect();
        if reads.is_empty() {
            continue;
        }
        let read = reads[rng.random_range(0..reads.len())];
        let mut values = impossible_values(&ops, &truth, read);
        if values.is_empty() || rng.random_bool(0.1) {
            values = vec![b("nobody wrote this")];
        }
        let value = values[rng.random_range(0..values.len())].clone();
        ops[read].output = Output::Get { value: Some(value) };
        match check(&ops) {
            Err(CheckError::Violation(v)) => {
                assert!(
                    v.ops.iter().any(|(i, _)| *i == read),
                    "round {round}: the mutated read #{read} is not in the report:\n{v}"
                );
                caught += 1;
            }
            other => panic!("round {round}: mutated read #{read} not caught: {other:?}"),
        }
    }
    assert!(caught >= 250, "only {caught} mutations tried");
}

#[test]
fn ten_thousand_operations_over_twenty_keys() {
    let mut rng = StdRng::seed_from_u64(7);
    let (ops, _) = random_history(&mut rng, Shape::new(8, 20, 10_000));
    let start = Instant::now();
    let result = check(&ops);
    let took = start.elapsed();
    println!(
        "checked {} operations (8 clients, 20 keys) in {took:?}",
        ops.len()
    );
    result.unwrap();
    // A fifth of that on a single key (no partitioning to help; about 30 operations with no
    // answer stay candidates to the end).
    let (ops, _) = random_history(&mut rng, Shape::new(8, 1, 2_000));
    let start = Instant::now();
    let result = check(&ops);
    println!(
        "checked {} operations (8 clients, 1 key) in {:?}",
        ops.len(),
        start.elapsed()
    );
    result.unwrap();
}

/// The definition, by brute force: some order of the operations that respects real time, each
/// unanswered one applied at its place or not at all, gives every answer on a map.
fn linearizable_by_brute_force(ops: &[Op]) -> bool {
    fn extend(ops: &[&Op], placed: &mut Vec<bool>, store: &mut HashMap<Vec<u8>, Vec<u8>>) -> bool {
        if placed.iter().all(|&p| p) {
            return true;
        }
        for i in 0..ops.len() {
            let ready = !placed[i]
                && (0..ops.len()).all(|j| placed[j] || ops[j].ret.is_none_or(|r| r >= ops[i].call));
            if !ready {
                continue;
            }
            let op = ops[i];
            let key = op.input.key().to_vec();
            let before = store.get(&key).cloned();
            let (output, after) = match &op.input {
                Input::Put { value, .. } => (Output::Put, Some(value.clone())),
                Input::Get { .. } => (
                    Output::Get {
                        value: before.clone(),
                    },
                    before.clone(),
                ),
                Input::Delete { .. } => (
                    Output::Delete {
                        deleted: i64::from(before.is_some()),
                    },
                    None,
                ),
                Input::Cas { expect, new, .. } => {
                    let succeeded = before == *expect;
                    let after = if succeeded {
                        Some(new.clone())
                    } else {
                        before.clone()
                    };
                    (Output::Cas { succeeded }, after)
                }
            };
            let mut outcomes = vec![(true, op.ret.is_none() || output == op.output)];
            if op.ret.is_none() {
                outcomes.push((false, true)); // not applied (as if at the very end)
            }
            for (apply, fits) in outcomes {
                if !fits {
                    continue;
                }
                if apply {
                    match &after {
                        Some(v) => store.insert(key.clone(), v.clone()),
                        None => store.remove(&key),
                    };
                }
                placed[i] = true;
                let done = extend(ops, placed, store);
                placed[i] = false;
                match &before {
                    Some(v) => store.insert(key.clone(), v.clone()),
                    None => store.remove(&key),
                };
                if done {
                    return true;
                }
            }
        }
        false
    }
    let ops: Vec<&Op> = ops.iter().filter(|o| o.matters()).collect();
    extend(&ops, &mut vec![false; ops.len()], &mut HashMap::new())
}

#[test]
fn small_random_histories_agree_with_brute_force() {
    let mut rng = StdRng::seed_from_u64(42);
    let (mut yes, mut no) = (0, 0);
    for round in 0..3000 {
        // Many operations without an answer: they are what the search prunes around.
        let shape = Shape {
            keys: 1 + round % 2,
            unanswered_pct: 25,
            ..Shape::new(3, 2, 8).without_revisions()
        };
        let (mut ops, truth) = random_history(&mut rng, shape);
        // Garble a few answers, to get non-linearizable histories too.
        let mut values: Vec<Vec<u8>> = truth.writer.keys().cloned().collect();
        values.sort();
        for op in ops.iter_mut().filter(|o| o.ret.is_some()) {
            if !rng.random_bool(0.15) {
                continue;
            }
            op.output = match &op.output {
                Output::Get { .. } if !values.is_empty() && rng.random_bool(0.8) => Output::Get {
                    value: Some(values[rng.random_range(0..values.len())].clone()),
                },
                Output::Get { .. } => Output::Get { value: None },
                Output::Delete { deleted } => Output::Delete {
                    deleted: 1 - deleted,
                },
                Output::Cas { succeeded } => Output::Cas {
                    succeeded: !succeeded,
                },
                other => other.clone(),
            };
        }
        let expected = linearizable_by_brute_force(&ops);
        let got = check(&ops);
        assert_eq!(
            got.is_ok(),
            expected,
            "round {round}: checker says {got:?}, brute force {expected}:\n{}",
            ops.iter()
                .enumerate()
                .map(|(i, o)| format!("#{i} {}", o.describe(ops[0].call)))
                .collect::<Vec<_>>()
                .join("\n")
        );
        if expected {
            yes += 1;
        } else {
            no += 1;
        }
    }
    println!("{yes} linearizable, {no} not");
    assert!(yes > 500 && no > 500, "{yes} linearizable, {no} not");
}

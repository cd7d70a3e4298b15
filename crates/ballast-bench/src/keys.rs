//! Key and value generation, byte-compatible with etcd's `benchmark` tool.
//!
//! etcd's tool writes the key index with Go's `binary.PutVarint` (zigzag + LEB128) into a
//! fixed-size `--key-size` buffer. We do the same, with one deliberate difference: etcd
//! reuses one buffer for every key, so a short varint written after a longer one keeps the
//! longer one's trailing bytes; we zero-pad every key, so a key space of N really has N
//! distinct keys and a run is reproducible.
//!
//! Values are random bytes generated once per run (etcd's `mustRandBytes`) and cloned per
//! request; nothing here allocates more than the request itself needs.

use rand::{Rng, RngCore};

/// Length in bytes of Go's `binary.PutVarint` encoding of `x`.
pub fn varint_len(x: i64) -> usize {
    let mut ux = zigzag(x);
    let mut n = 1;
    while ux >= 0x80 {
        ux >>= 7;
        n += 1;
    }
    n
}

fn zigzag(x: i64) -> u64 {
    let ux = (x as u64) << 1;
    if x < 0 {
        !ux
    } else {
        ux
    }
}

/// Writes Go's `binary.PutVarint(x)` at the start of `buf` and zeroes the rest.
///
/// `buf` must be at least [`varint_len`]`(x)` long; [`KeyGen::new`] checks that for the
/// whole key space up front.
pub fn encode_key_into(buf: &mut [u8], x: i64) {
    let mut ux = zigzag(x);
    let mut i = 0;
    while ux >= 0x80 {
        buf[i] = (ux as u8) | 0x80;
        ux >>= 7;
        i += 1;
    }
    buf[i] = ux as u8;
    buf[i + 1..].fill(0);
}

/// Returns the `key_size`-byte key for index `x` (see the module doc).
pub fn encode_key(key_size: usize, x: i64) -> Vec<u8> {
    let mut k = vec![0u8; key_size];
    encode_key_into(&mut k, x);
    k
}

/// How keys are picked from the key space `[0, key_space_size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOrder {
    /// Request `seq` uses key `seq % key_space_size`.
    Sequential,
    /// Each request draws a uniform random key.
    Random,
}

/// Produces benchmark keys.
#[derive(Clone, Debug)]
pub struct KeyGen {
    key_size: usize,
    key_space_size: u64,
    order: KeyOrder,
}

impl KeyGen {
    /// Checks that every key of the space fits in `key_size` bytes.
    pub fn new(key_size: usize, key_space_size: u64, order: KeyOrder) -> Result<Self, String> {
        if key_space_size == 0 {
            return Err("expected positive --key-space-size, got 0".into());
        }
        if key_space_size > i64::MAX as u64 {
            return Err(format!("--key-space-size {key_space_size} is too large"));
        }
        let need = varint_len(key_space_size as i64 - 1);
        if key_size < need {
            return Err(format!(
                "--key-size {key_size} is too small for --key-space-size {key_space_size}: \
                 the largest key index needs {need} bytes"
            ));
        }
        Ok(Self {
            key_size,
            key_space_size,
            order,
        })
    }

    /// The key index request `seq` uses.
    pub fn index(&self, seq: u64, rng: &mut impl Rng) -> u64 {
        match self.order {
            KeyOrder::Sequential => seq % self.key_space_size,
            KeyOrder::Random => rng.random_range(0..self.key_space_size),
        }
    }

    /// The key request `seq` uses.
    pub fn key(&self, seq: u64, rng: &mut impl Rng) -> Vec<u8> {
        self.key_at(self.index(seq, rng))
    }

    /// The key with index `index` (taken modulo the key space).
    pub fn key_at(&self, index: u64) -> Vec<u8> {
        encode_key(self.key_size, (index % self.key_space_size) as i64)
    }
}

/// `len` random bytes (etcd's `mustRandBytes`), generated once per run.
pub fn random_value(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rng().fill_bytes(&mut v);
    v
}

/// The smallest key greater than every key with prefix `key` (etcd's `GetPrefixRangeEnd`):
/// increment the last byte below 0xff and drop what follows; all-0xff (or empty) gives
/// `[0]`, which means "to the end of the key space".
pub fn prefix_range_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// Parses a key given on the command line: text, with `\xNN` escapes for arbitrary bytes
/// and `\\` for a backslash (so binary benchmark keys can be named).
pub fn parse_key_arg(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(b'x') => {
                let hex = b
                    .get(i + 2..i + 4)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad escape in key {s:?}: expected \\xNN"))?;
                out.push(hex);
                i += 4;
            }
            _ => return Err(format!("bad escape in key {s:?}: use \\xNN or \\\\")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn varint_matches_go_put_varint() {
        // Values checked against Go's binary.PutVarint.
        assert_eq!(encode_key(8, 0), vec![0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_key(8, 1), vec![2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_key(8, 63), vec![126, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_key(8, 64), vec![0x80, 0x01, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_key(8, 300), vec![0xd8, 0x04, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_key(4, -1), vec![1, 0, 0, 0]);
        assert_eq!(encode_key(10, i64::MAX).len(), 10);
        assert_eq!(varint_len(i64::MAX), 10);
        assert_eq!(varint_len(63), 1);
        assert_eq!(varint_len(64), 2);
        assert_eq!(varint_len(8191), 2);
        assert_eq!(varint_len(8192), 3);
    }

    #[test]
    fn reused_buffer_is_zero_padded() {
        let mut buf = [0u8; 4];
        encode_key_into(&mut buf, 300);
        encode_key_into(&mut buf, 1);
        assert_eq!(buf, [2, 0, 0, 0]);
    }

    #[test]
    fn sequential_keys_wrap_and_are_distinct() {
        let g = KeyGen::new(8, 1000, KeyOrder::Sequential).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let keys: std::collections::HashSet<_> = (0..1000).map(|i| g.key(i, &mut rng)).collect();
        assert_eq!(keys.len(), 1000);
        assert_eq!(g.key(1000, &mut rng), g.key(0, &mut rng));
        assert_eq!(g.key(1003, &mut rng), encode_key(8, 3));
        assert!(keys.iter().all(|k| k.len() == 8));
    }

    #[test]
    fn random_keys_stay_in_space() {
        let g = KeyGen::new(8, 10, KeyOrder::Random).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            let idx = g.index(i, &mut rng);
            assert!(idx < 10);
            seen.insert(idx);
        }
        assert_eq!(seen.len(), 10, "1000 draws should cover a 10-key space");
    }

    #[test]
    fn key_size_must_fit_key_space() {
        assert!(KeyGen::new(1, 64, KeyOrder::Random).is_ok());
        assert!(KeyGen::new(1, 65, KeyOrder::Random).is_err());
        assert!(KeyGen::new(8, 0, KeyOrder::Random).is_err());
        assert!(KeyGen::new(2, 8192, KeyOrder::Sequential).is_ok());
        assert!(KeyGen::new(2, 8193, KeyOrder::Sequential).is_err());
    }

    #[test]
    fn values_have_requested_size() {
        assert_eq!(random_value(256).len(), 256);
        assert!(random_value(0).is_empty());
    }

    #[test]
    fn prefix_end() {
        assert_eq!(prefix_range_end(b"foo"), b"fop");
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_range_end(b""), vec![0]);
    }

    #[test]
    fn key_arg_escapes() {
        assert_eq!(parse_key_arg("foo").unwrap(), b"foo");
        assert_eq!(parse_key_arg("\\x00\\x02ab").unwrap(), b"\x00\x02ab");
        assert_eq!(parse_key_arg("a\\\\b").unwrap(), b"a\\b");
        assert!(parse_key_arg("\\x0").is_err());
        assert!(parse_key_arg("\\q").is_err());
    }
}

//! On-disk encoding of a `key` table row value.
//!
//! ```text
//! put row:       0x01 | uvarint(key_len) | key | uvarint(create_revision) | uvarint(version)
//!                     | uvarint(lease as u64) | value (all remaining bytes)
//! tombstone row: 0x02 | uvarint(key_len) | key
//! ```
//! `uvarint` is unsigned LEB128 (7 bits per byte, low groups first, high bit = continuation,
//! at most 10 bytes). `mod_revision` is not stored: it is the row's backend key (the revision).
//! Any other tag byte, a truncated field or an over-long varint is reported as corruption.

use crate::{KeyValue, MvccError};

const TAG_PUT: u8 = 0x01;
const TAG_TOMBSTONE: u8 = 0x02;

/// A decoded row borrowing from the stored bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RowRef<'a> {
    pub key: &'a [u8],
    pub tombstone: bool,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub value: &'a [u8],
}

impl RowRef<'_> {
    pub fn to_key_value(&self, mod_revision: i64) -> KeyValue {
        KeyValue {
            key: self.key.to_vec(),
            create_revision: self.create_revision,
            mod_revision,
            version: self.version,
            value: self.value.to_vec(),
            lease: self.lease,
        }
    }
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_uvarint(buf: &[u8], pos: &mut usize) -> Result<u64, MvccError> {
    let mut v: u64 = 0;
    let mut shift = 0u32;
    loop {
        let b = *buf
            .get(*pos)
            .ok_or_else(|| MvccError::Corrupt("truncated varint in key row".into()))?;
        *pos += 1;
        if shift == 63 && b > 1 {
            return Err(MvccError::Corrupt("varint overflow in key row".into()));
        }
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
        shift += 7;
        if shift > 63 {
            return Err(MvccError::Corrupt("varint too long in key row".into()));
        }
    }
}

/// Appends an encoded put row to `out`.
pub(crate) fn encode_put(
    out: &mut Vec<u8>,
    key: &[u8],
    create_revision: i64,
    version: i64,
    lease: i64,
    value: &[u8],
) {
    out.reserve(1 + 10 + key.len() + 30 + value.len());
    out.push(TAG_PUT);
    put_uvarint(out, key.len() as u64);
    out.extend_from_slice(key);
    put_uvarint(out, create_revision as u64);
    put_uvarint(out, version as u64);
    put_uvarint(out, lease as u64);
    out.extend_from_slice(value);
}

/// Appends an encoded tombstone row to `out`.
pub(crate) fn encode_tombstone(out: &mut Vec<u8>, key: &[u8]) {
    out.push(TAG_TOMBSTONE);
    put_uvarint(out, key.len() as u64);
    out.extend_from_slice(key);
}

/// Decodes a row.
pub(crate) fn decode(buf: &[u8]) -> Result<RowRef<'_>, MvccError> {
    let tag = *buf
        .first()
        .ok_or_else(|| MvccError::Corrupt("empty key row".into()))?;
    let mut pos = 1;
    let klen = get_uvarint(buf, &mut pos)? as usize;
    let key = buf
        .get(pos..pos.saturating_add(klen))
        .ok_or_else(|| MvccError::Corrupt("truncated key in key row".into()))?;
    pos += klen;
    match tag {
        TAG_TOMBSTONE => {
            if pos != buf.len() {
                return Err(MvccError::Corrupt("trailing bytes in tombstone row".into()));
            }
            Ok(RowRef {
                key,
                tombstone: true,
                create_revision: 0,
                version: 0,
                lease: 0,
                value: &[],
            })
        }
        TAG_PUT => {
            let create_revision = get_uvarint(buf, &mut pos)? as i64;
            let version = get_uvarint(buf, &mut pos)? as i64;
            let lease = get_uvarint(buf, &mut pos)? as i64;
            Ok(RowRef {
                key,
                tombstone: false,
                create_revision,
                version,
                lease,
                value: &buf[pos..],
            })
        }
        t => Err(MvccError::Corrupt(format!("unknown key row tag {t:#x}"))),
    }
}

/// Decodes only the key and tombstone flag (what the index rebuild needs).
pub(crate) fn decode_key(buf: &[u8]) -> Result<(&[u8], bool), MvccError> {
    let tag = *buf
        .first()
        .ok_or_else(|| MvccError::Corrupt("empty key row".into()))?;
    let mut pos = 1;
    let klen = get_uvarint(buf, &mut pos)? as usize;
    let key = buf
        .get(pos..pos.saturating_add(klen))
        .ok_or_else(|| MvccError::Corrupt("truncated key in key row".into()))?;
    match tag {
        TAG_PUT => Ok((key, false)),
        TAG_TOMBSTONE => Ok((key, true)),
        t => Err(MvccError::Corrupt(format!("unknown key row tag {t:#x}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut b = Vec::new();
        encode_put(&mut b, b"foo", 7, 3, -1, b"bar");
        let r = decode(&b).unwrap();
        assert_eq!(
            r,
            RowRef {
                key: b"foo",
                tombstone: false,
                create_revision: 7,
                version: 3,
                lease: -1,
                value: b"bar"
            }
        );
        assert_eq!(decode_key(&b).unwrap(), (&b"foo"[..], false));
        let mut t = Vec::new();
        encode_tombstone(&mut t, &[0u8; 300]);
        let r = decode(&t).unwrap();
        assert!(r.tombstone);
        assert_eq!(r.key.len(), 300);
        for v in [0u64, 1, 127, 128, 300, u64::MAX, 1 << 63] {
            let mut o = Vec::new();
            put_uvarint(&mut o, v);
            let mut p = 0;
            assert_eq!(get_uvarint(&o, &mut p).unwrap(), v);
            assert_eq!(p, o.len());
        }
    }

    #[test]
    fn corrupt_rows_are_errors() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[9, 0]).is_err());
        assert!(decode(&[1, 5, b'a']).is_err());
        assert!(decode(&[1, 1, b'a', 0x80]).is_err());
        assert!(decode(&[2, 1, b'a', 0]).is_err());
        assert!(decode(&[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]).is_err());
    }
}

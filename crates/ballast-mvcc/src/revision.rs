//! Revisions: `(main, sub)` pairs and their 16-byte big-endian backend encoding.

/// A point in the store's history: `main` is the store revision of the write transaction,
/// `sub` orders the operations inside it (0, 1, 2, ...).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    /// Store revision of the write transaction.
    pub main: i64,
    /// Position of the operation inside its write transaction.
    pub sub: i64,
}

/// Length of an encoded revision (backend key of the `key` table).
pub const REV_BYTES: usize = 16;

impl Revision {
    /// A revision.
    pub const fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// Big-endian `main` (8 bytes) then big-endian `sub` (8 bytes), so byte order = revision order
    /// (both are non-negative).
    pub fn to_bytes(self) -> [u8; REV_BYTES] {
        let mut b = [0u8; REV_BYTES];
        b[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        b[8..].copy_from_slice(&(self.sub as u64).to_be_bytes());
        b
    }

    /// Inverse of [`Revision::to_bytes`].
    pub fn from_bytes(b: &[u8; REV_BYTES]) -> Self {
        let mut m = [0u8; 8];
        let mut s = [0u8; 8];
        m.copy_from_slice(&b[..8]);
        s.copy_from_slice(&b[8..]);
        Revision {
            main: u64::from_be_bytes(m) as i64,
            sub: u64::from_be_bytes(s) as i64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_roundtrip_and_order() {
        let a = Revision::new(5, 0);
        let b = Revision::new(5, 1);
        let c = Revision::new(6, 0);
        let d = Revision::new(256, 0);
        for r in [a, b, c, d] {
            assert_eq!(Revision::from_bytes(&r.to_bytes()), r);
        }
        assert!(a.to_bytes() < b.to_bytes());
        assert!(b.to_bytes() < c.to_bytes());
        assert!(c.to_bytes() < d.to_bytes());
    }
}

//! Byte-level encoding of segments and frames (see the crate docs for the format).
//!
//! This module owns the bytes only: it never touches files. Everything here works on in-memory
//! buffers so it can be tested exhaustively without a disk.

use crate::RecordKind;

/// First four bytes of every segment.
pub(crate) const SEGMENT_MAGIC: [u8; 4] = *b"BWAL";
/// Format version stored in every segment header.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Segment header: magic (4) + version (4) + sequence (8).
pub(crate) const SEGMENT_HEADER_LEN: usize = 16;
/// Frame header: length word (4) + CRC32C (4).
pub(crate) const FRAME_HEADER_LEN: usize = 8;
/// Fixed part of a frame body: kind (1) + index (8) + term (8).
pub(crate) const BODY_FIXED_LEN: usize = 17;
/// Frames start at multiples of this many bytes.
pub(crate) const ALIGN: usize = 8;
/// Unit of torn-write detection: a whole zeroed sector is evidence of a write that never landed.
pub(crate) const SECTOR: usize = 512;
/// Bit 31 of the length word: this frame is the last one of a write that was followed by fdatasync.
pub(crate) const SYNC_FLAG: u32 = 1 << 31;
/// Bit 7 of the kind byte: this record is a copy re-written at the start of a segment.
pub(crate) const COPY_FLAG: u8 = 0x80;

/// Largest `Record::data` accepted by [`crate::Wal::append`] (256 MiB).
pub const MAX_RECORD_DATA: usize = 256 << 20;
const MAX_BODY_LEN: usize = BODY_FIXED_LEN + MAX_RECORD_DATA;

const fn pad(n: usize) -> usize {
    (n + ALIGN - 1) & !(ALIGN - 1)
}

/// Bytes a record with `data_len` bytes of data occupies on disk, header and padding included.
pub(crate) const fn frame_len(data_len: usize) -> usize {
    FRAME_HEADER_LEN + pad(BODY_FIXED_LEN + data_len)
}

pub(crate) fn encode_segment_header(buf: &mut Vec<u8>, seq: u64) {
    buf.extend_from_slice(&SEGMENT_MAGIC);
    buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
}

fn segment_header(seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..4].copy_from_slice(&SEGMENT_MAGIC);
    h[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[8..].copy_from_slice(&seq.to_le_bytes());
    h
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderCheck {
    /// The segment starts with the expected header.
    Valid,
    /// The file holds nothing but (a prefix of) the expected header followed by zeros: a segment
    /// whose creation never completed. It holds no record.
    Unfinished,
    /// Anything else.
    Invalid,
}

pub(crate) fn check_segment_header(data: &[u8], seq: u64) -> HeaderCheck {
    let expected = segment_header(seq);
    if data.len() >= SEGMENT_HEADER_LEN && data[..SEGMENT_HEADER_LEN] == expected {
        return HeaderCheck::Valid;
    }
    // A prefix of the header (possibly empty) followed by nothing but zeros.
    let written = data
        .iter()
        .zip(expected.iter())
        .take_while(|(a, b)| a == b)
        .count();
    if all_zero(&data[written..]) {
        HeaderCheck::Unfinished
    } else {
        HeaderCheck::Invalid
    }
}

/// Where a frame sits in a write buffer, so [`mark_synced`] can set its flag without re-hashing the body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameMark {
    start: usize,
    body_crc: u32,
}

/// Appends one frame to `buf` and returns its mark.
pub(crate) fn encode_frame(
    buf: &mut Vec<u8>,
    kind_byte: u8,
    index: u64,
    term: u64,
    data: &[u8],
) -> FrameMark {
    debug_assert!(data.len() <= MAX_RECORD_DATA);
    let body_len = BODY_FIXED_LEN + data.len();
    let len_word = body_len as u32; // <= MAX_BODY_LEN < 2^31
    let start = buf.len();
    buf.reserve(frame_len(data.len()));
    buf.extend_from_slice(&len_word.to_le_bytes());
    buf.extend_from_slice(&[0u8; 4]);
    buf.push(kind_byte);
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(&term.to_le_bytes());
    buf.extend_from_slice(data);
    buf.resize(start + FRAME_HEADER_LEN + pad(body_len), 0);
    let body_crc =
        crc32c::crc32c(&buf[start + FRAME_HEADER_LEN..start + FRAME_HEADER_LEN + body_len]);
    let crc = crc32c::crc32c_append(body_crc, &len_word.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    FrameMark { start, body_crc }
}

/// Sets the sync flag on the frame at `mark` (and fixes its CRC, which covers the length word).
pub(crate) fn mark_synced(buf: &mut [u8], mark: FrameMark) {
    let s = mark.start;
    let len_word = read_u32(buf, s) | SYNC_FLAG;
    let crc = crc32c::crc32c_append(mark.body_crc, &len_word.to_le_bytes());
    buf[s..s + 4].copy_from_slice(&len_word.to_le_bytes());
    buf[s + 4..s + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One decoded frame, borrowing its data from the segment buffer.
#[derive(Debug)]
pub(crate) struct Frame<'a> {
    pub kind: RecordKind,
    pub copy: bool,
    pub synced: bool,
    pub index: u64,
    pub term: u64,
    pub data: &'a [u8],
    /// Offset of the next frame.
    pub next: usize,
}

#[derive(Debug)]
pub(crate) enum Parsed<'a> {
    Frame(Frame<'a>),
    /// Only zeros from here to the end of the buffer (possibly nothing at all).
    End,
    /// Not a valid frame: partial, bad CRC, bad kind, non-zero padding, or a zero length followed
    /// by non-zero bytes.
    Bad,
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub(crate) fn all_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Decodes the frame starting at `off` (which must be <= `data.len()`).
pub(crate) fn parse_at(data: &[u8], off: usize) -> Parsed<'_> {
    let rest = &data[off..];
    if rest.len() < FRAME_HEADER_LEN {
        return if all_zero(rest) {
            Parsed::End
        } else {
            Parsed::Bad
        };
    }
    let len_word = read_u32(rest, 0);
    if len_word & !SYNC_FLAG == 0 {
        return if all_zero(rest) {
            Parsed::End
        } else {
            Parsed::Bad
        };
    }
    parse_with_word(data, off, len_word)
}

/// Decodes the frame at `off` as if its length word were `len_word` (the CRC covers that word).
fn parse_with_word(data: &[u8], off: usize, len_word: u32) -> Parsed<'_> {
    let rest = &data[off..];
    let body_len = (len_word & !SYNC_FLAG) as usize;
    if !(BODY_FIXED_LEN..=MAX_BODY_LEN).contains(&body_len) {
        return Parsed::Bad;
    }
    let total = FRAME_HEADER_LEN + pad(body_len);
    if total > rest.len() {
        return Parsed::Bad;
    }
    let body = &rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + body_len];
    let crc = crc32c::crc32c_append(crc32c::crc32c(body), &len_word.to_le_bytes());
    if crc != read_u32(rest, 4) || !all_zero(&rest[FRAME_HEADER_LEN + body_len..total]) {
        return Parsed::Bad;
    }
    let kind_byte = body[0];
    let copy = kind_byte & COPY_FLAG != 0;
    let kind = match RecordKind::from_u8(kind_byte & !COPY_FLAG) {
        // Entries are never copied.
        Some(RecordKind::Entry) if copy => return Parsed::Bad,
        Some(k) => k,
        None => return Parsed::Bad,
    };
    Parsed::Frame(Frame {
        kind,
        copy,
        synced: len_word & SYNC_FLAG != 0,
        index: read_u64(body, 1),
        term: read_u64(body, 9),
        data: &body[BODY_FIXED_LEN..],
        next: off + total,
    })
}

/// What an invalid frame at the end of the last segment is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BadTail {
    /// The remains of a write that never completed: truncate from the bad frame on.
    Torn,
    /// Damage to data that had been made durable: refuse to open.
    Corrupt,
}

/// Decides whether the invalid frame at `bad` (in the last segment) is a torn tail or corruption.
///
/// The crash model: every sync writes its frames with one write and flags the last of them
/// (`SYNC_FLAG`); the next write starts only after that fdatasync returned, so a crash can only
/// tear the final write. A torn write is torn at sector granularity: each 512-byte sector (in file
/// offsets) it covers holds either the new bytes or the old ones, and the old bytes at and after
/// the end of durable data are zeros (segments are zero-filled before use). The part of the first
/// sector before the write's start holds earlier durable data either way, so only the part of a
/// sector at or after `bad` can read as "never written".
///
/// Scanning the rest of the segment (at frame alignment) for valid frames:
/// - two or more sync-flagged frames: at least one complete, later write exists, so `bad` had been
///   durable -> corrupt;
/// - exactly one: `bad` is either in the final write (whose later sectors reached the disk before
///   an earlier one) or in the write before it: torn iff a never-written sector (the part of a
///   sector from `bad` on, all zeros) lies between `bad` and the next valid frame; else corrupt;
/// - none: `bad` is in the final write or is the damaged last record; see [`tail_shape`].
pub(crate) fn classify_bad(data: &[u8], bad: usize) -> BadTail {
    let mut synced = 0usize;
    let mut first_valid = None;
    let mut off = bad + ALIGN;
    while off + FRAME_HEADER_LEN <= data.len() {
        match parse_at(data, off) {
            Parsed::Frame(f) => {
                first_valid.get_or_insert(off);
                if f.synced {
                    synced += 1;
                    if synced >= 2 {
                        return BadTail::Corrupt;
                    }
                }
                off = f.next;
            }
            Parsed::End => break,
            Parsed::Bad => off += ALIGN,
        }
    }
    match (synced, first_valid) {
        (0, _) => tail_shape(data, bad),
        (_, Some(valid)) if has_unwritten_sector(data, bad, valid) && !written_whole(data, bad) => {
            BadTail::Torn
        }
        _ => BadTail::Corrupt,
    }
}

/// The invalid frame at `bad` has nothing durable after it: is it what a crash leaves?
///
/// Torn shapes: the frame is cut short by the end of the file (a partial header, or a length
/// running past the end), or a sector of its header/body reads as never written (see
/// [`classify_bad`]), or its length word is zero where the rest of that sector is zeros too (the
/// sector holding the frame's start never reached the disk). Anything else — every sector of a
/// complete frame written, yet the CRC, kind or padding is wrong; a non-zero length out of range —
/// is data that was durable and changed: corrupt. A length word that is one bit away from making
/// the frame valid is corrupt too, even when the flipped length runs past the end of the file.
fn tail_shape(data: &[u8], bad: usize) -> BadTail {
    let rest = &data[bad..];
    if rest.len() < FRAME_HEADER_LEN {
        return BadTail::Torn;
    }
    let body_len = (read_u32(rest, 0) & !SYNC_FLAG) as usize;
    if body_len == 0 {
        let sector_end = ((bad / SECTOR + 1) * SECTOR).min(data.len());
        return if all_zero(&data[bad..sector_end]) {
            BadTail::Torn
        } else {
            BadTail::Corrupt
        };
    }
    if written_whole(data, bad) || !(BODY_FIXED_LEN..=MAX_BODY_LEN).contains(&body_len) {
        return BadTail::Corrupt;
    }
    // Cut short by the end of the file, or a sector of it reads as never written.
    BadTail::Torn
}

/// Is there evidence that the invalid frame at `bad` was written whole and changed afterwards?
/// - its length word is one bit away from a valid frame (whatever length it now claims);
/// - it fits in the file and no sector of its header/body reads as never written;
/// - its CRC matches (so only the kind or the padding is wrong) or is one bit off;
/// - flipping one bit outside the sectors that read as never written makes the CRC match: the
///   zeros are the record's own data (and the never-written space after its end). For a torn
///   frame this matches by chance with odds of about `8 * len / 2^32`, so the search is limited
///   to bodies of up to [`FLIP_SEARCH_MAX`] bytes.
fn written_whole(data: &[u8], bad: usize) -> bool {
    if bad + FRAME_HEADER_LEN > data.len() {
        return false;
    }
    let len_word = read_u32(data, bad);
    if (0..32).any(|bit| {
        matches!(
            parse_with_word(data, bad, len_word ^ (1 << bit)),
            Parsed::Frame(_)
        )
    }) {
        return true;
    }
    let body_len = (len_word & !SYNC_FLAG) as usize;
    if !(BODY_FIXED_LEN..=MAX_BODY_LEN).contains(&body_len)
        || bad + FRAME_HEADER_LEN + pad(body_len) > data.len()
    {
        return false;
    }
    let body_start = bad + FRAME_HEADER_LEN;
    let body = &data[body_start..body_start + body_len];
    let computed = crc32c::crc32c_append(crc32c::crc32c(body), &len_word.to_le_bytes());
    let syndrome = computed ^ read_u32(data, bad + 4);
    if syndrome.count_ones() <= 1 {
        return true;
    }
    // Padding is zero whether written or not: only sectors holding header/body bytes count.
    let first = bad / SECTOR;
    let unwritten: Vec<bool> = (first..(body_start + body_len).div_ceil(SECTOR))
        .map(|s| {
            let from = (s * SECTOR).max(bad);
            all_zero(&data[from..((s + 1) * SECTOR).min(data.len())])
        })
        .collect();
    if !unwritten.contains(&true) {
        return true;
    }
    let outside_zeros = |off: usize| !unwritten[off / SECTOR - first];
    body_len <= FLIP_SEARCH_MAX && one_bit_flip_in_body(body, syndrome, body_start, outside_zeros)
}

/// Largest frame body searched for a single flipped bit (see [`written_whole`]).
const FLIP_SEARCH_MAX: usize = 16 << 10;

/// Is there one bit of `body` (at file offset `body_start`), at an offset `allowed` accepts, whose
/// flip changes the frame's CRC by exactly `syndrome`? The CRC covers `body || len_word`.
///
/// CRC32C is linear: crc(m ^ e) = crc(m) ^ raw(e), where raw is the CRC without its initial value
/// and final xor. For `e` = one bit at byte `j` of an `n`-byte message, raw(e) is the table entry
/// of that byte shifted through `n - 1 - j` zero bytes, so walking backwards from the last byte
/// costs one table step per byte and bit value.
fn one_bit_flip_in_body(
    body: &[u8],
    syndrome: u32,
    body_start: usize,
    allowed: impl Fn(usize) -> bool,
) -> bool {
    let table = crc_table();
    let step = |state: u32| (state >> 8) ^ table[(state & 0xff) as usize];
    // The message is body || 4 length bytes: the last body byte is followed by 4 bytes.
    for bit in 0..8 {
        let mut state = table[1usize << bit];
        for _ in 0..4 {
            state = step(state);
        }
        for j in (0..body.len()).rev() {
            if state == syndrome && allowed(body_start + j) {
                return true;
            }
            state = step(state);
        }
    }
    false
}

/// The byte table of reflected CRC32C (polynomial 0x82F63B78).
fn crc_table() -> &'static [u32; 256] {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    })
}

/// Does a sector starting before `to` read as never written from `bad` on: is its part at or after
/// `bad` (up to the sector's end or the end of the file) all zeros?
fn has_unwritten_sector(data: &[u8], bad: usize, to: usize) -> bool {
    let mut s = bad / SECTOR * SECTOR;
    while s < to.min(data.len()) {
        let from = s.max(bad);
        let end = (s + SECTOR).min(data.len());
        if all_zero(&data[from..end]) {
            return true;
        }
        s += SECTOR;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(buf: &mut Vec<u8>, kind: RecordKind, index: u64, data: &[u8]) -> FrameMark {
        encode_frame(buf, kind as u8, index, 7, data)
    }

    #[test]
    fn frame_round_trip_and_alignment() {
        for n in 0..40 {
            let data: Vec<u8> = (0..n).map(|i| i as u8 ^ 0x5a).collect();
            let mut buf = vec![0u8; 16];
            frame(&mut buf, RecordKind::Entry, n as u64, &data);
            assert_eq!(buf.len(), 16 + frame_len(n));
            assert_eq!(buf.len() % ALIGN, 0);
            match parse_at(&buf, 16) {
                Parsed::Frame(f) => {
                    assert_eq!(f.kind, RecordKind::Entry);
                    assert!(!f.copy && !f.synced);
                    assert_eq!((f.index, f.term), (n as u64, 7));
                    assert_eq!(f.data, &data[..]);
                    assert_eq!(f.next, buf.len());
                }
                other => panic!("{other:?}"),
            }
            assert!(matches!(parse_at(&buf, buf.len()), Parsed::End));
        }
    }

    #[test]
    fn sync_flag_keeps_frame_valid() {
        let mut buf = Vec::new();
        let m = frame(&mut buf, RecordKind::HardState, 3, b"abc");
        mark_synced(&mut buf, m);
        match parse_at(&buf, 0) {
            Parsed::Frame(f) => assert!(f.synced),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let mut buf = Vec::new();
        let m = frame(&mut buf, RecordKind::Snapshot, 9, b"snapshot-meta");
        mark_synced(&mut buf, m);
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[i] ^= 1 << bit;
                assert!(
                    !matches!(parse_at(&b, 0), Parsed::Frame(_)),
                    "flip of bit {bit} at byte {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn zeros_are_end_and_garbage_is_bad() {
        assert!(matches!(parse_at(&[0u8; 64], 0), Parsed::End));
        assert!(matches!(parse_at(&[0u8; 5], 0), Parsed::End));
        assert!(matches!(parse_at(&[], 0), Parsed::End));
        let mut z = [0u8; 64];
        z[40] = 1;
        assert!(matches!(parse_at(&z, 0), Parsed::Bad));
        assert!(matches!(parse_at(&[0, 0, 1], 0), Parsed::Bad));
        // Kind 0, kind 4 and a copied Entry are invalid even with a correct CRC.
        for kind_byte in [0u8, 4, COPY_FLAG | RecordKind::Entry as u8] {
            let mut buf = Vec::new();
            encode_frame(&mut buf, kind_byte, 1, 1, b"x");
            assert!(matches!(parse_at(&buf, 0), Parsed::Bad), "{kind_byte}");
        }
    }

    #[test]
    fn segment_header_checks() {
        let mut h = Vec::new();
        encode_segment_header(&mut h, 42);
        assert_eq!(check_segment_header(&h, 42), HeaderCheck::Valid);
        assert_eq!(check_segment_header(&h, 41), HeaderCheck::Invalid);
        assert_eq!(check_segment_header(&[], 42), HeaderCheck::Unfinished);
        assert_eq!(
            check_segment_header(&[0u8; 4096], 42),
            HeaderCheck::Unfinished
        );
        assert_eq!(check_segment_header(&h[..6], 42), HeaderCheck::Unfinished);
        let mut partial = h[..6].to_vec();
        partial.extend_from_slice(&[0u8; 100]);
        assert_eq!(check_segment_header(&partial, 42), HeaderCheck::Unfinished);
        partial.push(1);
        assert_eq!(check_segment_header(&partial, 42), HeaderCheck::Invalid);
    }

    /// Builds `writes` sync batches of `per` frames each, each batch's last frame flagged.
    fn batches(writes: usize, per: usize, data_len: usize) -> (Vec<u8>, Vec<usize>) {
        let mut buf = vec![0u8; SEGMENT_HEADER_LEN];
        let mut starts = Vec::new();
        for w in 0..writes {
            let mut last = None;
            for i in 0..per {
                starts.push(buf.len());
                let data = vec![(w * per + i) as u8 | 1; data_len];
                last = Some(frame(
                    &mut buf,
                    RecordKind::Entry,
                    (w * per + i) as u64,
                    &data,
                ));
            }
            if let Some(m) = last {
                mark_synced(&mut buf, m);
            }
        }
        (buf, starts)
    }

    #[test]
    fn classify_damage_in_the_last_record() {
        let (pristine, starts) = batches(3, 4, 1200);
        let last = *starts.last().unwrap_or(&0);
        let end = pristine.len();
        let mut prealloc = pristine.clone();
        prealloc.extend_from_slice(&[0u8; 4096]);
        // A flipped bit in a complete last record (header, body, padding): durable data changed.
        for at in [last, last + 2, last + 5, last + 20, last + 700, end - 1] {
            let mut buf = prealloc.clone();
            buf[at] ^= 0x40;
            assert_eq!(classify_bad(&buf, last), BadTail::Corrupt, "flip at {at}");
        }
        // Its trailing sectors never written (the file keeps its preallocated length): torn.
        let first_sector = (last / SECTOR + 1) * SECTOR;
        let mut s = first_sector;
        while s < end {
            let mut buf = prealloc.clone();
            buf[s..].fill(0);
            assert_eq!(classify_bad(&buf, last), BadTail::Torn, "zeroed from {s}");
            s += SECTOR;
        }
        // Only a middle sector never written: torn.
        let mut buf = prealloc.clone();
        buf[first_sector..first_sector + SECTOR].fill(0);
        assert_eq!(classify_bad(&buf, last), BadTail::Torn);
        // Zeros that do not cover the rest of a sector are not an unwritten sector.
        let mut buf = prealloc.clone();
        buf[first_sector + 8..first_sector + SECTOR - 8].fill(0);
        assert_eq!(classify_bad(&buf, last), BadTail::Corrupt);
        // Cut short by the end of the file: torn.
        for cut in [last + 3, last + 8, last + 100, end - 8] {
            assert_eq!(
                classify_bad(&pristine[..cut], last),
                BadTail::Torn,
                "cut {cut}"
            );
        }
        // The first sector of the record lost, later ones written: torn.
        let mut buf = prealloc.clone();
        buf[last..first_sector].fill(0);
        assert_eq!(classify_bad(&buf, last), BadTail::Torn);
        // A zero length word with the rest of its sector written: corrupt.
        let mut buf = prealloc.clone();
        buf[last..last + 4].fill(0);
        assert_eq!(classify_bad(&buf, last), BadTail::Corrupt);
    }

    #[test]
    fn single_bit_search_finds_exactly_the_flipped_bit() {
        let mut buf = Vec::new();
        frame(&mut buf, RecordKind::Entry, 3, &[0x5au8; 300]);
        let body_len = BODY_FIXED_LEN + 300;
        let word = read_u32(&buf, 0);
        let stored = read_u32(&buf, 4);
        for at in [8usize, 9, 30, 8 + body_len - 1] {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[at] ^= 1 << bit;
                let body = &b[8..8 + body_len];
                let crc = crc32c::crc32c_append(crc32c::crc32c(body), &word.to_le_bytes());
                assert!(one_bit_flip_in_body(body, crc ^ stored, 8, |_| true));
                assert!(!one_bit_flip_in_body(body, crc ^ stored, 8, |o| o != at));
            }
        }
        // Two flipped bits are not one.
        let mut b = buf.clone();
        b[20] ^= 1;
        b[40] ^= 1;
        let body = &b[8..8 + body_len];
        let crc = crc32c::crc32c_append(crc32c::crc32c(body), &word.to_le_bytes());
        assert!(!one_bit_flip_in_body(body, crc ^ stored, 8, |_| true));
    }

    #[test]
    fn flip_in_a_last_record_ending_in_zeros_is_corrupt() {
        // The record's bytes in its last sector are zeros, and so is the space after it: that
        // sector reads as never written, yet the record was complete and one bit flipped.
        let mut buf = vec![0u8; SEGMENT_HEADER_LEN];
        let mut data = vec![0x33u8; 1000];
        let last = buf.len();
        let body_end = last + FRAME_HEADER_LEN + BODY_FIXED_LEN + data.len();
        let zero_from = (body_end / SECTOR) * SECTOR;
        for b in &mut data[zero_from - last - FRAME_HEADER_LEN - BODY_FIXED_LEN..] {
            *b = 0;
        }
        let m = frame(&mut buf, RecordKind::Entry, 1, &data);
        mark_synced(&mut buf, m);
        buf.resize(4096, 0);
        assert!(matches!(parse_at(&buf, last), Parsed::Frame(_)));
        for at in [last + 8, last + 100, zero_from - 1] {
            let mut b = buf.clone();
            b[at] ^= 4;
            assert_eq!(classify_bad(&b, last), BadTail::Corrupt, "flip at {at}");
        }
        // The same record with its last sector really lost is torn... which reads the same as
        // the complete one: it is valid. Lose an earlier sector instead.
        let mut b = buf.clone();
        b[(last / SECTOR + 1) * SECTOR..zero_from].fill(0);
        assert_eq!(classify_bad(&b, last), BadTail::Torn);
    }

    #[test]
    fn classify_length_word_flips_as_corrupt() {
        // A flipped length bit can point past the end of the file or into the zeros after the
        // record; both look like a cut-short record unless the flip itself is recognised.
        let (pristine, starts) = batches(2, 3, 200);
        let last = *starts.last().unwrap_or(&0);
        for bit in 0..32 {
            for tail in [0usize, 8192] {
                let mut buf = pristine.clone();
                buf.resize(buf.len() + tail, 0);
                buf[last + bit / 8] ^= 1 << (bit % 8);
                assert_eq!(
                    classify_bad(&buf, last),
                    BadTail::Corrupt,
                    "bit {bit}, {tail} zero bytes after"
                );
            }
        }
    }

    #[test]
    fn classify_damage_before_two_syncs_as_corrupt() {
        let (mut buf, starts) = batches(3, 4, 100);
        buf[starts[2] + 20] ^= 1; // first batch
        assert_eq!(classify_bad(&buf, starts[2]), BadTail::Corrupt);
    }

    #[test]
    fn classify_damage_with_one_sync_after() {
        // A flipped byte inside the final write: no zeroed sector, so it cannot be a torn write.
        let (mut buf, starts) = batches(1, 20, 300);
        buf[starts[3] + 20] ^= 1;
        assert_eq!(classify_bad(&buf, starts[3]), BadTail::Corrupt);
        // A whole zeroed sector inside the final write (its later pages landed first): torn.
        let (mut buf, starts) = batches(1, 20, 300);
        let sector = (starts[3] / SECTOR + 1) * SECTOR;
        buf[sector..sector + SECTOR].fill(0);
        let bad = starts
            .iter()
            .copied()
            .find(|&s| !matches!(parse_at(&buf, s), Parsed::Frame(_)))
            .unwrap_or(0);
        assert_eq!(classify_bad(&buf, bad), BadTail::Torn);
        // Only the final write's part of the sector it shares with earlier durable data was lost.
        let (mut buf, starts) = batches(1, 20, 300);
        let bad = starts[3];
        assert_ne!(bad % SECTOR, 0);
        let sector_end = (bad / SECTOR + 1) * SECTOR;
        buf[bad..sector_end].fill(0);
        assert_eq!(classify_bad(&buf, bad), BadTail::Torn);
    }
}

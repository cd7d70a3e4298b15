//! etcd's Range, end to end: `mvcc/kvstore_txn.go rangeKeys` + `etcdserver/apply.go Range`
//! (3.4), so the server only translates types.
//!
//! Rules reproduced exactly:
//! - `revision > current` -> FutureRev; `<= 0` -> current; `< compact revision` -> Compacted
//!   (a read *at* the compact revision is allowed).
//! - If a sort order is given or any min/max filter is set, every key of the range is fetched;
//!   otherwise at most `limit + 1` (to compute `more`).
//! - `count_only`: no kvs, `more == false`, `count` = keys in range.
//! - Filters drop kvs after fetching; then sort: order NONE with a target other than KEY sorts
//!   ASCEND (on what was fetched, i.e. possibly only `limit + 1` keys in key order); then
//!   truncate to `limit`, `more = true` iff something was cut; `keys_only` clears values.
//! - `count` is the number of keys in the range at the read revision, whatever limit or filters.

use parking_lot::RwLock;

use crate::index::{KeyRange, TreeIndex};
use crate::revision::Revision;
use crate::{KeyValue, MvccError, RangeOptions, RangeResult, SortOrder, SortTarget};

/// Keys visited per index lock hold.
pub(crate) const INDEX_CHUNK: usize = 1024;

/// The shared in-memory state behind one lock: the key index and the published compact
/// revision (published under the same lock so a chunked scan sees either the old compact
/// revision and an uncompacted index, or the new one).
#[derive(Debug)]
pub(crate) struct IndexState {
    pub tree: TreeIndex,
    pub compact_rev: i64,
}

/// Resolves the revision to read at. `cur` is the reader's current revision.
pub(crate) fn resolve_rev(requested: i64, cur: i64, compact: i64) -> Result<i64, MvccError> {
    if requested > cur {
        return Err(MvccError::FutureRev);
    }
    let rev = if requested <= 0 { cur } else { requested };
    if rev < compact {
        return Err(MvccError::Compacted);
    }
    Ok(rev)
}

/// Collects, in key order, up to `fetch_limit` (0 = all) revisions of keys alive at `at` in
/// `range`, and the total number of such keys. `min_compact` is an extra compact revision the
/// caller knows of (the writer's uncommitted compaction). Checks compaction on every chunk.
pub(crate) fn collect_revisions(
    index: &RwLock<IndexState>,
    range: KeyRange<'_>,
    at: i64,
    min_compact: i64,
    fetch_limit: usize,
    collect: bool,
) -> Result<(Vec<Revision>, usize), MvccError> {
    let mut revs = Vec::new();
    let mut count = 0usize;
    let mut resume: Option<Box<[u8]>> = None;
    loop {
        let guard = index.read();
        if at < guard.compact_rev.max(min_compact) {
            return Err(MvccError::Compacted);
        }
        resume = guard
            .tree
            .scan(range, at, resume.as_deref(), INDEX_CHUNK, |_, found| {
                count += 1;
                if collect && (fetch_limit == 0 || revs.len() < fetch_limit) {
                    revs.push(found.modified);
                }
            });
        drop(guard);
        if resume.is_none() {
            return Ok((revs, count));
        }
    }
}

/// Runs a full etcd Range. `cur` is the revision of the reader (header revision); `fetch`
/// reads the row at a revision.
pub(crate) fn run_range(
    index: &RwLock<IndexState>,
    cur: i64,
    min_compact: i64,
    opts: &RangeOptions,
    mut fetch: impl FnMut(Revision) -> Result<KeyValue, MvccError>,
) -> Result<RangeResult, MvccError> {
    let compact = index.read().compact_rev.max(min_compact);
    let at = resolve_rev(opts.revision, cur, compact)?;

    let fetch_all = opts.sort_order != SortOrder::None
        || opts.min_mod_revision != 0
        || opts.max_mod_revision != 0
        || opts.min_create_revision != 0
        || opts.max_create_revision != 0;
    let fetch_limit = if fetch_all || opts.limit <= 0 {
        0
    } else {
        usize::try_from(opts.limit)
            .unwrap_or(usize::MAX - 1)
            .saturating_add(1)
    };

    let range = KeyRange::new(&opts.key, &opts.range_end);
    let (revs, count) =
        collect_revisions(index, range, at, min_compact, fetch_limit, !opts.count_only)?;
    let count = count as i64;
    if opts.count_only || revs.is_empty() {
        return Ok(RangeResult {
            kvs: Vec::new(),
            count,
            more: false,
            revision: cur,
        });
    }

    let mut kvs = Vec::with_capacity(revs.len());
    for r in revs {
        kvs.push(fetch(r)?);
    }

    if opts.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= opts.max_mod_revision);
    }
    if opts.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= opts.min_mod_revision);
    }
    if opts.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= opts.max_create_revision);
    }
    if opts.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= opts.min_create_revision);
    }

    let mut order = opts.sort_order;
    if opts.sort_target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    }
    if order != SortOrder::None {
        sort_kvs(&mut kvs, opts.sort_target, order == SortOrder::Descend);
    }

    let mut more = false;
    if opts.limit > 0 && kvs.len() as i64 > opts.limit {
        kvs.truncate(opts.limit as usize);
        more = true;
    }
    if opts.keys_only {
        for kv in &mut kvs {
            kv.value = Vec::new();
        }
    }
    Ok(RangeResult {
        kvs,
        count,
        more,
        revision: cur,
    })
}

/// The rows an unsorted, unfiltered Range returns, before any is read: their revisions in key
/// order (at most `limit`), the count and `more`. `None` for a Range that sorts or filters
/// (those need every row before the first can be sent) and for `count_only`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangePlan {
    pub revs: Vec<Revision>,
    pub count: i64,
    pub more: bool,
    /// The header revision of the read.
    pub revision: i64,
}

pub(crate) fn plan_range(
    index: &RwLock<IndexState>,
    cur: i64,
    opts: &RangeOptions,
) -> Result<Option<RangePlan>, MvccError> {
    let sorts = opts.sort_order != SortOrder::None || opts.sort_target != SortTarget::Key;
    let filters = opts.min_mod_revision != 0
        || opts.max_mod_revision != 0
        || opts.min_create_revision != 0
        || opts.max_create_revision != 0;
    if sorts || filters || opts.count_only {
        return Ok(None);
    }
    let compact = index.read().compact_rev;
    let at = resolve_rev(opts.revision, cur, compact)?;
    let fetch_limit = if opts.limit <= 0 {
        0
    } else {
        usize::try_from(opts.limit)
            .unwrap_or(usize::MAX - 1)
            .saturating_add(1)
    };
    let range = KeyRange::new(&opts.key, &opts.range_end);
    let (mut revs, count) = collect_revisions(index, range, at, -1, fetch_limit, true)?;
    let mut more = false;
    if opts.limit > 0 && revs.len() as i64 > opts.limit {
        revs.truncate(opts.limit as usize);
        more = true;
    }
    Ok(Some(RangePlan {
        revs,
        count: count as i64,
        more,
        revision: cur,
    }))
}

/// Sorts by `target`; ties keep key order (etcd's sort is unstable, so any tie order is
/// etcd-compatible; we pick the deterministic one).
fn sort_kvs(kvs: &mut [KeyValue], target: SortTarget, descend: bool) {
    let cmp = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    if descend {
        kvs.sort_by(|a, b| cmp(b, a));
    } else {
        kvs.sort_by(cmp);
    }
}

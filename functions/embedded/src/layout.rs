//! The data dir's layout: which files it holds, what is in them, and how a data dir of
//! an older build becomes one of this build's.
//!
//! | layout | written by | files | records |
//! |---|---|---|---|
//! | 0 | before 5c6aa7b | `statefun.redb` (idempotency keys in it) | postcard, no tag |
//! | 1 | 5c6aa7b–d40e810 | `statefun.redb`, `accepted.redb` | postcard, no tag |
//! | 2 | today | both, and `statefun-data.json` | a format byte, then the record ([`crate::store::record`]) |
//!
//! Layout 2 writes a marker file (`statefun-data.json`: layout, data-dir id, creation
//! time) once both files exist, and the same layout and id into each file's `meta`
//! table. With the marker there, the data dir has had data: a missing or empty file, or
//! one from another data dir, is refused with its path and what to do, never started
//! empty. A data dir of layout 0 or 1 is migrated in place at start — every record
//! tagged, layout 0's idempotency keys moved into `accepted.redb` — after a copy of the
//! old files is left beside it (its path logged). Each file is migrated in one
//! transaction and says its layout itself, so a crash during a migration redoes only
//! what did not commit. A data dir of a newer layout is refused.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};
use statefun_core::InstanceState;
use statefun_core::dedup::DedupEntry;
use statefun_core::format::Versioned;
use tracing::{debug, info, warn};

use crate::EmbeddedError;
use crate::store::{
    self, DEAD_LETTERS, DEDUP, DeadLetter, DeadLetterV0, INBOX, INGRESS_KEYS, InboxEntry,
    InboxEntryV0, META, NEXT_SEQ, STATE, TIMER_TOKENS, TIMERS, TimerEntry,
};

/// The layout this build writes (and the newest it reads).
pub(crate) const LAYOUT: u64 = 2;
/// The engine's file in a data dir.
pub(crate) const MAIN_FILE: &str = "statefun.redb";
/// The accept thread's file in a data dir.
pub(crate) const ACCEPTED_FILE: &str = "accepted.redb";
/// The marker of a layout-2 data dir.
pub(crate) const MARKER_FILE: &str = "statefun-data.json";
/// `meta` rows: each file's layout and data-dir id.
const META_LAYOUT: &str = "layout";
const META_ID: &str = "data_dir_id";

/// What the marker file says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Marker {
    pub(crate) layout: u64,
    /// Both files carry it: a file of another data dir is refused.
    pub(crate) id: u64,
    pub(crate) created_ms: u64,
}

fn refused(path: &Path, why: String) -> EmbeddedError {
    EmbeddedError::Refused {
        path: path.display().to_string(),
        why,
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> EmbeddedError + '_ {
    move |e| EmbeddedError::Io(path.display().to_string(), e)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn fresh_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.write_u32(std::process::id());
    h.finish()
}

pub(crate) fn read_marker(dir: &Path) -> Result<Option<Marker>, EmbeddedError> {
    let path = dir.join(MARKER_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            refused(
                &path,
                format!("the data dir's marker does not read ({e}); restore it from a backup"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Writes the marker atomically (a temporary file renamed over it, then synced).
fn write_marker(dir: &Path, marker: &Marker) -> Result<(), EmbeddedError> {
    let path = dir.join(MARKER_FILE);
    let tmp = dir.join(format!("{MARKER_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(marker).expect("a marker serializes");
    std::fs::write(&tmp, json).map_err(io(&tmp))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// A file that exists but holds nothing is never a store to start from.
fn refuse_empty(path: &Path) -> Result<(), EmbeddedError> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() == 0 => Err(refused(
            path,
            "the file is empty (0 bytes): restore it from a backup; to start afresh, move the \
             whole data dir away"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Opens a store file; a repair the storage engine makes (after a crash, or a damaged
/// commit slot, when it falls back to the commit before) is logged at WARN.
pub(crate) fn open_db(path: &Path) -> Result<Database, EmbeddedError> {
    open_with(path, true)
}

/// Opens a store file again after an I/O error of a running runtime: its repair is
/// expected (the fault was logged already), so it is logged at DEBUG.
pub(crate) fn reopen_db(path: &Path) -> Result<Database, EmbeddedError> {
    open_with(path, false)
}

/// The page cache of each store file (the storage engine's default is 1 GiB a file):
/// together with the queue's `--max-queued-bytes` it bounds the runtime's memory. The
/// engine keeps its hot records in a cache of its own, so reads seldom reach it.
const STORE_CACHE_BYTES: usize = 32 << 20;

/// Creates (or opens) a store file with the runtime's cache size.
fn create_db(path: &Path) -> Result<Database, EmbeddedError> {
    Ok(Database::builder()
        .set_cache_size(STORE_CACHE_BYTES)
        .create(path)?)
}

fn open_with(path: &Path, loud: bool) -> Result<Database, EmbeddedError> {
    let shown = path.display().to_string();
    let mut builder = Database::builder();
    builder.set_cache_size(STORE_CACHE_BYTES);
    builder.set_repair_callback(move |session| {
        if session.progress() == 0.0 && loud {
            warn!(file = %shown, "the store file was not closed cleanly or its last commit is damaged: redb is repairing it; commits that were not durable are dropped, and what they held comes again from the other file or the sender");
        } else if session.progress() == 0.0 {
            debug!(file = %shown, "repairing the store file after an I/O error");
        }
    });
    builder.open(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => EmbeddedError::Io(
            path.display().to_string(),
            std::io::Error::new(
                std::io::ErrorKind::ResourceBusy,
                "a running runtime has it open: ask it, GET /{namespace}/{type}/{id}",
            ),
        ),
        redb::DatabaseError::Storage(redb::StorageError::Io(e))
            if e.kind() == std::io::ErrorKind::NotFound =>
        {
            refused(path, "the file is missing".into())
        }
        other => refused(
            path,
            format!("the store does not open ({other}): restore it from a backup"),
        ),
    })
}

/// A file's layout and id from its `meta` table (`None` before layout 2).
pub(crate) fn file_layout(db: &Database) -> Result<(Option<u64>, Option<u64>), EmbeddedError> {
    let txn = db.begin_read()?;
    let has_meta = txn.list_tables()?.any(|t| t.name() == META.name());
    if !has_meta {
        return Ok((None, None));
    }
    let meta = txn.open_table(META)?;
    let layout = meta.get(META_LAYOUT)?.map(|v| v.value());
    let id = meta.get(META_ID)?.map(|v| v.value());
    Ok((layout, id))
}

/// Creates the tables a file of this layout has, and its `meta` rows.
fn init_file(db: &Database, main: bool, id: u64) -> Result<(), EmbeddedError> {
    let txn = db.begin_write()?;
    if main {
        txn.open_table(STATE)?;
        txn.open_table(DEDUP)?;
        txn.open_table(TIMERS)?;
        txn.open_multimap_table(TIMER_TOKENS)?;
        txn.open_table(DEAD_LETTERS)?;
    } else {
        txn.open_table(INGRESS_KEYS)?;
    }
    txn.open_table(INBOX)?;
    let mut meta = txn.open_table(META)?;
    meta.insert(META_LAYOUT, LAYOUT)?;
    meta.insert(META_ID, id)?;
    drop(meta);
    txn.commit()?;
    Ok(())
}

/// Opens (or creates, or migrates) a data dir's two files: the engine's, then the
/// accept thread's.
pub(crate) fn open(dir: &Path) -> Result<(Database, Database), EmbeddedError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (main, accepted) = (dir.join(MAIN_FILE), dir.join(ACCEPTED_FILE));
    refuse_empty(&main)?;
    refuse_empty(&accepted)?;
    let marker = match read_marker(dir)? {
        Some(marker) => marker,
        None if !main.exists() && !accepted.exists() => create(dir)?,
        None if !main.exists() => {
            return Err(refused(
                &main,
                format!(
                    "the engine's file is missing beside {ACCEPTED_FILE}: restore it from a \
                     backup; to start afresh, move the whole data dir away"
                ),
            ));
        }
        None => migrate(dir)?,
    };
    if marker.layout > LAYOUT {
        return Err(refused(
            &dir.join(MARKER_FILE),
            format!(
                "the data dir has layout {}, written by a newer build; this build reads up \
                 to layout {LAYOUT}: run the newer build, or restore the copy a migration \
                 left beside it",
                marker.layout
            ),
        ));
    }
    let what = |file: &str| {
        format!(
            "{file} is missing from a data dir that has had data (created at {} ms): \
             restore it from a backup; to start afresh, move the whole data dir away",
            marker.created_ms
        )
    };
    for (path, file) in [(&main, MAIN_FILE), (&accepted, ACCEPTED_FILE)] {
        if !path.exists() {
            return Err(refused(path, what(file)));
        }
    }
    let db = open_db(&main)?;
    let acc = open_db(&accepted)?;
    for (file, path) in [(&db, &main), (&acc, &accepted)] {
        match file_layout(file)? {
            (Some(LAYOUT), Some(id)) if id == marker.id => {}
            (_, Some(id)) if id != marker.id => {
                return Err(refused(
                    path,
                    format!(
                        "the file belongs to another data dir (id {id:x}, this one's is {:x}): \
                         put back this data dir's own file",
                        marker.id
                    ),
                ));
            }
            (layout, _) => {
                return Err(refused(
                    path,
                    format!(
                        "the file has layout {layout:?} and no id, in a data dir of layout \
                         {}: it is not this data dir's file (an empty or replaced one?)",
                        marker.layout
                    ),
                ));
            }
        }
    }
    Ok((db, acc))
}

/// A new data dir: both files, then the marker.
fn create(dir: &Path) -> Result<Marker, EmbeddedError> {
    let marker = Marker {
        layout: LAYOUT,
        id: fresh_id(),
        created_ms: now_ms(),
    };
    for (file, main) in [(MAIN_FILE, true), (ACCEPTED_FILE, false)] {
        let db = create_db(&dir.join(file))?;
        init_file(&db, main, marker.id)?;
    }
    write_marker(dir, &marker)?;
    Ok(marker)
}

/// The layout of a data dir without a marker: 0 (one file, the idempotency keys in it,
/// as b7b5e3e and before created it; also when a d40e810 build started on it since),
/// 1 (two files), or 2 when a crash interrupted a creation or a migration before the
/// marker. A data dir of layout 1 that lost its accept file is refused, never taken for
/// a layout-0 one: that file held the messages answered 202 and the keys.
fn legacy_layout(dir: &Path, db: &Database) -> Result<u64, EmbeddedError> {
    match file_layout(db)?.0 {
        Some(layout) if layout > LAYOUT => {
            return Err(refused(
                &dir.join(MAIN_FILE),
                format!(
                    "the file has layout {layout}, written by a newer build; this build reads \
                     up to layout {LAYOUT}"
                ),
            ));
        }
        Some(layout) => return Ok(layout),
        None => {}
    }
    let txn = db.begin_read()?;
    let keys_here = txn.list_tables()?.any(|t| t.name() == INGRESS_KEYS.name());
    let accepted = dir.join(ACCEPTED_FILE);
    match (keys_here, accepted.exists()) {
        (true, _) => Ok(0),
        (false, true) => Ok(1),
        (false, false) => Err(refused(
            &accepted,
            format!(
                "the file is missing beside the {MAIN_FILE} of a layout-1 data dir: it held the \
                 messages answered 202 and not yet applied, and the idempotency keys; restore \
                 it from a backup; to start afresh, move the whole data dir away"
            ),
        )),
    }
}

/// Migrates a data dir of layout 0 or 1 to this layout, after copying its files aside.
fn migrate(dir: &Path) -> Result<Marker, EmbeddedError> {
    let main = dir.join(MAIN_FILE);
    let from = {
        let db = open_db(&main)?;
        legacy_layout(dir, &db)?
    };
    let created_ms = now_ms();
    let copy = dir.join(format!("pre-layout-{LAYOUT}-{created_ms}"));
    std::fs::create_dir_all(&copy).map_err(io(&copy))?;
    for file in [MAIN_FILE, ACCEPTED_FILE] {
        let source = dir.join(file);
        if source.exists() {
            std::fs::copy(&source, copy.join(file)).map_err(io(&source))?;
            std::fs::File::open(copy.join(file))
                .and_then(|f| f.sync_all())
                .map_err(io(&copy))?;
        }
    }
    warn!(data_dir = %dir.display(), from, to = LAYOUT, copy = %copy.display(), "migrating the data dir to this build's layout; a copy of the old files is kept");
    let db = open_db(&main)?;
    let acc = create_db(&dir.join(ACCEPTED_FILE))?;
    let id = [file_layout(&db)?.1, file_layout(&acc)?.1]
        .into_iter()
        .flatten()
        .next()
        .unwrap_or_else(fresh_id);
    let counts = migrate_accepted(&db, &acc, id)?;
    let main_counts = migrate_main(&db, id)?;
    let marker = Marker {
        layout: LAYOUT,
        id,
        created_ms,
    };
    write_marker(dir, &marker)?;
    info!(data_dir = %dir.display(), accepted_rows = counts.0, idempotency_keys = counts.1, states = main_counts[0], dedup_entries = main_counts[1], inbox_rows = main_counts[2], timers = main_counts[3], dead_letters = main_counts[4], "data dir migrated");
    Ok(marker)
}

/// Rewrites every value of `table` in this layout's form.
fn retag<K: redb::Key + 'static>(
    txn: &redb::WriteTransaction,
    table: TableDefinition<K, &'static [u8]>,
    convert: impl Fn(&[u8]) -> Result<Vec<u8>, EmbeddedError>,
) -> Result<u64, EmbeddedError> {
    let mut t = txn.open_table(table)?;
    let mut rows: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        rows.push((
            K::as_bytes(&k.value()).as_ref().to_vec(),
            convert(v.value())?,
        ));
    }
    for (k, v) in &rows {
        t.insert(K::from_bytes(k), v.as_slice())?;
    }
    Ok(rows.len() as u64)
}

fn inbox_row(bytes: &[u8]) -> Result<Vec<u8>, EmbeddedError> {
    let entry: InboxEntry =
        store::decode_untagged::<InboxEntry, InboxEntryV0>("inbox entry", bytes)?;
    Ok(store::record(&entry))
}

/// The accept thread's file: its rows tagged, layout 0's idempotency keys moved in.
fn migrate_accepted(db: &Database, acc: &Database, id: u64) -> Result<(u64, u64), EmbeddedError> {
    if file_layout(acc)?.0 == Some(LAYOUT) {
        return Ok((0, 0));
    }
    let txn = acc.begin_write()?;
    let rows = retag(&txn, INBOX, inbox_row)?;
    let mut keys = 0;
    {
        let mut moved = txn.open_table(INGRESS_KEYS)?;
        let old = db.begin_read()?;
        if old.list_tables()?.any(|t| t.name() == INGRESS_KEYS.name()) {
            for row in old.open_table(INGRESS_KEYS)?.iter()? {
                let (k, v) = row?;
                let (target, key) = k.value();
                let (seq, at, digest) = v.value();
                // A d40e810 build that ran on a layout-0 dir wrote newer keys here:
                // those win over the ones it left behind.
                let newer_here = moved
                    .get((target, key))?
                    .is_some_and(|here| here.value().1 >= at);
                if !newer_here {
                    moved.insert((target, key), (seq, at, digest))?;
                    keys += 1;
                }
            }
        }
        let next = old
            .open_table(META)
            .ok()
            .and_then(|m| m.get(NEXT_SEQ).ok().flatten().map(|v| v.value()));
        let mut meta = txn.open_table(META)?;
        let here = meta.get(NEXT_SEQ)?.map(|v| v.value());
        if let Some(next) = next.max(here) {
            meta.insert(NEXT_SEQ, next)?;
        }
        meta.insert(META_LAYOUT, LAYOUT)?;
        meta.insert(META_ID, id)?;
    }
    txn.commit()?;
    Ok((rows, keys))
}

/// The engine's file: every record tagged, the keys (now in the other file) dropped.
fn migrate_main(db: &Database, id: u64) -> Result<[u64; 5], EmbeddedError> {
    if file_layout(db)?.0 == Some(LAYOUT) {
        return Ok([0; 5]);
    }
    let txn = db.begin_write()?;
    let states = retag(&txn, STATE, |b| {
        let state: InstanceState = statefun_core::format::postcard("instance record", 1, b)
            .map_err(|e| EmbeddedError::Corrupt(e.to_string()))?;
        Ok(store::record(&state))
    })?;
    let mut dedup = 0;
    {
        let mut t = txn.open_table(DEDUP)?;
        let mut rows = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let (address, key) = k.value();
            let (bytes, expires) = v.value();
            let entry = DedupEntry::from_bytes(1, bytes)
                .map_err(|e| EmbeddedError::Corrupt(e.to_string()))?;
            rows.push((
                address.to_vec(),
                key.to_string(),
                store::record(&entry),
                expires,
            ));
        }
        for (address, key, bytes, expires) in &rows {
            t.insert(
                (address.as_slice(), key.as_str()),
                (bytes.as_slice(), *expires),
            )?;
            dedup += 1;
        }
    }
    let inbox = retag(&txn, INBOX, inbox_row)?;
    let timers = retag(&txn, TIMERS, |b| {
        let timer: TimerEntry = statefun_core::format::postcard(TimerEntry::WHAT, 1, b)
            .map_err(|e| EmbeddedError::Corrupt(e.to_string()))?;
        Ok(store::record(&timer))
    })?;
    let letters = retag(&txn, DEAD_LETTERS, |b| {
        let letter = store::decode_untagged::<DeadLetter, DeadLetterV0>("dead letter", b)?;
        Ok(store::record(&letter))
    })?;
    txn.open_multimap_table(TIMER_TOKENS)?;
    // Moved into the accept thread's file, which committed first.
    txn.delete_table(INGRESS_KEYS)?;
    {
        let mut meta = txn.open_table(META)?;
        meta.insert(META_LAYOUT, LAYOUT)?;
        meta.insert(META_ID, id)?;
    }
    txn.commit()?;
    Ok([states, dedup, inbox, timers, letters])
}

/// The data dir's files for a reader (`state`, `dlq`, `verify`): refused when a runtime
/// holds them, missing, or of another layout than this build's (a start migrates it).
pub(crate) fn open_existing(dir: &Path) -> Result<(Database, Option<Database>), EmbeddedError> {
    let (layout, db, accepted) = open_for_verify(dir)?;
    if file_layout(&db)?.0 != Some(LAYOUT) {
        return Err(refused(
            dir,
            format!(
                "the data dir has layout {layout}; this build reads layout {LAYOUT}: start the \
                 runtime on it once (`statefun-lambda run --data-dir {}`), which migrates it \
                 and keeps a copy of the old files",
                dir.display()
            ),
        ));
    }
    Ok((db, accepted))
}

/// A data dir's files and layout for a reader (`verify`, and [`open_existing`]), as
/// they are (never migrated).
pub(crate) fn open_for_verify(
    dir: &Path,
) -> Result<(u64, Database, Option<Database>), EmbeddedError> {
    let main = dir.join(MAIN_FILE);
    let accepted = dir.join(ACCEPTED_FILE);
    let marker = read_marker(dir)?;
    for path in [&main, &accepted] {
        refuse_empty(path)?;
        if marker.is_some() && !path.exists() {
            return Err(refused(
                path,
                "the file is missing from a data dir that has had data".into(),
            ));
        }
    }
    if !main.exists() {
        return Err(refused(
            &main,
            "no statefun-lambda data here (statefun.redb is missing)".into(),
        ));
    }
    let db = open_db(&main)?;
    let layout = match (&marker, file_layout(&db)?.0) {
        (Some(m), _) => m.layout,
        (None, Some(layout)) => layout,
        (None, None) => legacy_layout(dir, &db)?,
    };
    if layout > LAYOUT {
        return Err(refused(
            dir,
            format!("the data dir has layout {layout}, newer than this build reads ({LAYOUT})"),
        ));
    }
    let acc = if accepted.exists() {
        Some(open_db(&accepted)?)
    } else {
        None
    };
    Ok((layout, db, acc))
}

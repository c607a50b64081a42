//! The embedded durable store, two redb files:
//!
//! - `statefun.redb`: instance records, the dedup entries spilled out of them, the
//!   inbox of the engine's own messages (sends between functions, due timers, retries,
//!   replays), timers and dead letters — written by the engine;
//! - `accepted.redb`: the HTTP ingress's accepted messages until the engine has settled
//!   them, and the idempotency keys — written by the accept thread alone, so a 202
//!   never waits for the engine's write lock ([`crate::accept`]).
//!
//! Both hold their rows under one sequence counter, so a row's number is unique across
//! the two.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{
    Database, MultimapTableDefinition, ReadTransaction, ReadableDatabase, ReadableTable,
    TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use statefun_core::dedup::{DedupEntry, DedupKey};
use statefun_core::format::{FormatError, Versioned};
use statefun_core::{Address, Envelope, InstanceState, MessageId};

use crate::EmbeddedError;

/// Instance records by address key.
pub(crate) const STATE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("state");
/// Dedup entries spilled out of instance records, by (address key, dedup key) →
/// (entry, expires at ms): written in the commit's transaction, read only for
/// addresses that spilled ([`statefun_core::dedup`]).
pub(crate) const DEDUP: TableDefinition<DedupRow, (&[u8], u64)> = TableDefinition::new("dedup");
type DedupRow = (&'static [u8], &'static str);
/// Accepted, not yet settled messages by sequence number (in both files).
pub(crate) const INBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("inbox");
/// Delayed messages by (due time, message id): re-scheduling the same message is a no-op.
pub(crate) const TIMERS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("timers");
/// (sender, cancellation token) → timer keys.
pub(crate) const TIMER_TOKENS: MultimapTableDefinition<&[u8], (u64, &str)> =
    MultimapTableDefinition::new("timer_tokens");
/// Messages given up on, with the reason.
pub(crate) const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
/// (target address key, idempotency key) → (sequence number, accepted at ms, digest of
/// the message): a key is scoped to its target, and a reuse with another message is
/// refused.
pub(crate) const INGRESS_KEYS: TableDefinition<KeyRow, (u64, u64, &[u8])> =
    TableDefinition::new("idempotency_keys");
type KeyRow = (&'static [u8], &'static str);
/// Counters: the next sequence number (in both files).
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const NEXT_SEQ: &str = "next_seq";

/// A message in the inbox, how often it failed, and when it first did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct InboxEntry {
    pub(crate) envelope: Envelope,
    pub(crate) attempts: u32,
    pub(crate) first_failed_ms: Option<u64>,
}

/// An inbox entry as written before `first_failed_ms`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub(crate) struct InboxEntryV0 {
    envelope: Envelope,
    attempts: u32,
}

impl From<InboxEntryV0> for InboxEntry {
    fn from(v0: InboxEntryV0) -> Self {
        InboxEntry {
            envelope: v0.envelope,
            attempts: v0.attempts,
            first_failed_ms: None,
        }
    }
}

/// A scheduled delayed message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TimerEntry {
    pub(crate) envelope: Envelope,
    pub(crate) token: Option<String>,
}

/// A dead-lettered message, why, and when.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    pub envelope: Envelope,
    pub reason: String,
    /// When it was dead-lettered (ms since the epoch).
    pub at_ms: u64,
    /// When it first failed (unknown for letters written before it was recorded).
    pub first_failure_ms: Option<u64>,
}

/// A dead letter as written before `first_failure_ms`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub(crate) struct DeadLetterV0 {
    envelope: Envelope,
    reason: String,
    at_ms: u64,
}

impl From<DeadLetterV0> for DeadLetter {
    fn from(v0: DeadLetterV0) -> Self {
        DeadLetter {
            envelope: v0.envelope,
            reason: v0.reason,
            at_ms: v0.at_ms,
            first_failure_ms: None,
        }
    }
}

/// Format 1 of the embedded records: their postcard structs as d40e810 wrote them.
macro_rules! postcard_format_1 {
    ($t:ty, $what:literal) => {
        impl Versioned for $t {
            const WHAT: &'static str = $what;
            const FORMAT: u32 = 1;
            fn encode(&self) -> Vec<u8> {
                // Serde-derived records into a Vec: no failure mode.
                postcard::to_stdvec(self).expect("record serializes")
            }
            fn decode_current(format: u32, bytes: &[u8]) -> Result<Self, FormatError> {
                statefun_core::format::postcard(Self::WHAT, format, bytes)
            }
        }
    };
}
postcard_format_1!(InboxEntry, "inbox entry");
postcard_format_1!(TimerEntry, "timer");
postcard_format_1!(DeadLetter, "dead letter");

/// A record as this layout stores it: its format, then its bytes
/// ([`statefun_core::format::to_tagged`]).
pub(crate) fn record<T: Versioned>(value: &T) -> Vec<u8> {
    statefun_core::format::to_tagged(value)
}

/// Reads a stored record; `at` says where it is, for the error.
pub(crate) fn read<T: Versioned>(
    at: &dyn std::fmt::Display,
    bytes: &[u8],
) -> Result<T, EmbeddedError> {
    statefun_core::format::from_tagged(bytes)
        .map_err(|e| EmbeddedError::Corrupt(format!("{at}: {e}")))
}

/// Keys: postcard tuples, fixed by the layout ([`crate::layout`]).
fn encode_key<T: Serialize>(value: &T) -> Vec<u8> {
    // Tuples of strings into a Vec: no failure mode.
    postcard::to_stdvec(value).expect("key serializes")
}

/// Decodes an untagged record of layouts 0 and 1 whose type gained a field at its end
/// since `Old`: postcard writes no field names, so a record written before simply
/// ends early, and reads as `Old`.
pub(crate) fn decode_untagged<T, Old>(what: &str, bytes: &[u8]) -> Result<T, EmbeddedError>
where
    T: for<'de> Deserialize<'de>,
    Old: for<'de> Deserialize<'de> + Into<T>,
{
    let corrupt = |e: postcard::Error| EmbeddedError::Corrupt(format!("{what}: {e}"));
    match postcard::from_bytes::<T>(bytes) {
        // An older record reads whole, or it is not one (a damaged newer one).
        Err(postcard::Error::DeserializeUnexpectedEnd) => {
            match postcard::take_from_bytes::<Old>(bytes) {
                Ok((old, [])) => Ok(old.into()),
                Ok(_) => Err(corrupt(postcard::Error::DeserializeUnexpectedEnd)),
                Err(e) => Err(corrupt(e)),
            }
        }
        decoded => decoded.map_err(corrupt),
    }
}

pub(crate) fn address_key(address: &Address) -> Vec<u8> {
    encode_key(&(address.function_type.as_str(), address.id.as_str()))
}

/// An address key as people read it (`namespace/type/id`).
pub(crate) fn show_address_key(key: &[u8]) -> String {
    match postcard::from_bytes::<(&str, &str)>(key) {
        Ok((function_type, id)) => format!("{function_type}/{id}"),
        Err(_) => format!("{key:?}"),
    }
}

pub(crate) fn token_key(sender: &Address, token: &str) -> Vec<u8> {
    encode_key(&(sender.function_type.as_str(), sender.id.as_str(), token))
}

pub(crate) fn timer_id(id: &MessageId) -> String {
    id.to_string()
}

/// Opens (or creates, or migrates) a data dir's two files ([`crate::layout`]).
pub(crate) fn open(data_dir: &Path) -> Result<(Database, Database), EmbeddedError> {
    crate::layout::open(data_dir)
}

/// Opens a data dir's engine file for a reader, refusing one a running runtime holds.
pub(crate) fn open_existing(data_dir: &Path) -> Result<Database, EmbeddedError> {
    Ok(crate::layout::open_existing(data_dir)?.0)
}

/// Reads one instance record.
pub(crate) fn read_state(
    db: &Database,
    address: &Address,
) -> Result<Option<InstanceState>, EmbeddedError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(STATE)?;
    let Some(bytes) = table.get(address_key(address).as_slice())? else {
        return Ok(None);
    };
    Ok(Some(read(address, bytes.value())?))
}

/// Everything the engine keeps in memory, read back at start-up.
pub(crate) struct Recovered {
    pub(crate) next_seq: u64,
    /// Both files' inbox rows, in sequence order.
    pub(crate) inbox: Vec<(u64, InboxEntry)>,
    /// Which of those rows live in the accept thread's file.
    pub(crate) accepted: Vec<u64>,
    /// Rows of the accept thread's file that the engine settled before a crash took
    /// the acknowledgement (a retry moved the row into the engine's file, or it was
    /// dead-lettered): the accept thread removes them.
    pub(crate) stale: Vec<u64>,
    pub(crate) timers: Vec<(u64, String)>,
}

/// The first sequence number above everything a file holds: its counter (written with
/// every commit) and its last inbox row.
fn next_seq(txn: &ReadTransaction) -> Result<u64, EmbeddedError> {
    let counter = txn
        .open_table(META)?
        .get(NEXT_SEQ)?
        .map_or(1, |v| v.value());
    let last = txn
        .open_table(INBOX)?
        .last()?
        .map_or(0, |(row, _)| row.value() + 1);
    Ok(counter.max(last))
}

pub(crate) fn recover(db: &Database, accepted: &Database) -> Result<Recovered, EmbeddedError> {
    let (own, timers) = engine_rows(db)?;
    let txn = db.begin_read()?;
    let accepted_txn = accepted.begin_read()?;
    let mut inbox: BTreeMap<u64, InboxEntry> = own.into_iter().collect();
    let letters = txn.open_table(DEAD_LETTERS)?;
    let (mut rows, mut stale) = (Vec::new(), Vec::new());
    for row in accepted_txn.open_table(INBOX)?.iter()? {
        let (seq, bytes) = row?;
        let seq = seq.value();
        if inbox.contains_key(&seq) || letters.get(seq)?.is_some() {
            stale.push(seq);
        } else {
            inbox.insert(seq, read(&format!("accepted row {seq}"), bytes.value())?);
            rows.push(seq);
        }
    }
    let next_seq = next_seq(&txn)?.max(next_seq(&accepted_txn)?);
    Ok(Recovered {
        next_seq,
        inbox: inbox.into_iter().collect(),
        accepted: rows,
        stale,
        timers,
    })
}

/// Lists the dead letters with their rows, oldest first.
pub(crate) fn dead_letters(db: &Database) -> Result<Vec<(u64, DeadLetter)>, EmbeddedError> {
    let txn = db.begin_read()?;
    let mut out = Vec::new();
    for row in txn.open_table(DEAD_LETTERS)?.iter()? {
        let (seq, bytes) = row?;
        out.push((
            seq.value(),
            read(&format!("dead letter {}", seq.value()), bytes.value())?,
        ));
    }
    Ok(out)
}

/// Moves the dead letters `select` picks back into the inbox, each under the id
/// `replay:<row>` (see docs/DESIGN.md, "Replaying dead letters"), in one commit. A
/// dead letter's row may still be in the accept thread's file (a crash took the
/// acknowledgement): it goes, so the message comes back once, as the replay.
pub(crate) fn replay(
    data_dir: &Path,
    select: impl Fn(&DeadLetter) -> bool,
) -> Result<Vec<Envelope>, EmbeddedError> {
    let (db, accepted) = crate::layout::open_existing(data_dir)?;
    let picked: Vec<(u64, DeadLetter)> = dead_letters(&db)?
        .into_iter()
        .filter(|(_, letter)| select(letter))
        .collect();
    let mut seq = next_seq(&db.begin_read()?)?;
    if let Some(accepted) = &accepted {
        seq = seq.max(next_seq(&accepted.begin_read()?)?);
    }
    // The accept thread's rows go first: a crash in between leaves the letters to
    // replay again, never a message twice.
    if let Some(accepted) = &accepted {
        let txn = accepted.begin_write()?;
        {
            let mut rows = txn.open_table(INBOX)?;
            for (row, _) in &picked {
                rows.remove(row)?;
            }
        }
        txn.commit()?;
    }
    let txn = db.begin_write()?;
    let mut replayed = Vec::new();
    {
        let mut meta = txn.open_table(META)?;
        let mut inbox = txn.open_table(INBOX)?;
        let mut letters = txn.open_table(DEAD_LETTERS)?;
        for (row, letter) in picked {
            let envelope = Envelope {
                id: MessageId::Keyed(format!("replay:{row}")),
                ..letter.envelope
            };
            let entry = InboxEntry {
                envelope: envelope.clone(),
                attempts: 0,
                first_failed_ms: None,
            };
            inbox.insert(seq, record(&entry).as_slice())?;
            letters.remove(row)?;
            seq += 1;
            replayed.push(envelope);
        }
        meta.insert(NEXT_SEQ, seq)?;
    }
    txn.commit()?;
    Ok(replayed)
}

/// The spilled dedup entries found among `lookups`, one list per address.
pub(crate) fn read_dedup(
    db: &Database,
    lookups: &[(Address, Vec<DedupKey>)],
) -> Result<Vec<Vec<DedupEntry>>, EmbeddedError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(DEDUP)?;
    let mut out = Vec::with_capacity(lookups.len());
    for (address, keys) in lookups {
        let a = address_key(address);
        let mut found = Vec::new();
        for key in keys {
            if let Some(row) = table.get((a.as_slice(), key.to_key_string().as_str()))? {
                let entry = read(address, row.value().0)?;
                found.push(entry);
            }
        }
        out.push(found);
    }
    Ok(out)
}

/// Forgets spilled dedup entries that expired by `now_ms`.
pub(crate) fn prune_dedup(txn: &WriteTransaction, now_ms: u64) -> Result<(), EmbeddedError> {
    txn.open_table(DEDUP)?
        .retain(|_, (_, expires)| expires > now_ms)?;
    Ok(())
}

/// Forgets idempotency keys accepted before `horizon_ms`.
pub(crate) fn prune_ingress_keys(
    txn: &WriteTransaction,
    horizon_ms: u64,
) -> Result<(), EmbeddedError> {
    txn.open_table(INGRESS_KEYS)?
        .retain(|_, (_, at, _)| at >= horizon_ms)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use statefun_core::{TypeName, TypedValue};

    use super::*;

    fn entry(id: &str, attempts: u32) -> InboxEntry {
        InboxEntry {
            envelope: Envelope {
                id: MessageId::Keyed(id.into()),
                target: Address::new(TypeName::parse("example/counter").expect("type"), "a"),
                caller: None,
                value: TypedValue::of(&1_i64),
            },
            attempts,
            first_failed_ms: None,
        }
    }

    fn put(db: &Database, table: TableDefinition<u64, &[u8]>, rows: &[(u64, Vec<u8>)]) {
        let txn = db.begin_write().expect("write");
        {
            let mut t = txn.open_table(table).expect("table");
            for (row, bytes) in rows {
                t.insert(row, bytes.as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }

    fn letter(id: &str) -> Vec<u8> {
        record(&DeadLetter {
            envelope: entry(id, 1).envelope,
            reason: "poison".into(),
            at_ms: 1,
            first_failure_ms: Some(1),
        })
    }

    /// A crash can take the accept thread's removal of rows the engine settled: a row
    /// the engine moved into its own inbox (a retry) or dead-lettered is not pending
    /// twice, and the counter resumes above every row.
    #[test]
    fn recovery_skips_accepted_rows_the_engine_already_settled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, accepted) = open(dir.path()).expect("open");
        put(
            &accepted,
            INBOX,
            &[
                (5, record(&entry("retried", 0))),
                (6, record(&entry("dead", 0))),
                (7, record(&entry("pending", 0))),
                (12, record(&entry("settled later", 0))),
            ],
        );
        put(
            &db,
            INBOX,
            &[
                (5, record(&entry("retried", 2))),
                (9, record(&entry("own", 0))),
            ],
        );
        put(&db, DEAD_LETTERS, &[(6, letter("dead"))]);

        let recovered = recover(&db, &accepted).expect("recover");
        let rows: Vec<(u64, u32)> = recovered
            .inbox
            .iter()
            .map(|(s, e)| (*s, e.attempts))
            .collect();
        assert_eq!(
            rows,
            [(5, 2), (7, 0), (9, 0), (12, 0)],
            "the engine's copy wins"
        );
        assert_eq!(recovered.accepted, [7, 12]);
        assert_eq!(recovered.stale, [5, 6]);
        assert_eq!(recovered.next_seq, 13);
    }

    /// The accept thread removes the stale rows recovery found, as it starts.
    #[test]
    fn a_start_removes_the_stale_accepted_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (db, accepted) = open(dir.path()).expect("open");
            put(&accepted, INBOX, &[(6, record(&entry("dead", 0)))]);
            put(&db, DEAD_LETTERS, &[(6, letter("dead"))]);
        }
        let registry = statefun_examples::registry(Default::default()).expect("registry");
        let config = crate::EmbeddedConfig::new(dir.path());
        let runtime =
            crate::Runtime::start(registry, config, Box::new(crate::DiscardEgress)).expect("start");
        runtime.shutdown().expect("shutdown");
        let (db, accepted) = open(dir.path()).expect("open");
        let recovered = recover(&db, &accepted).expect("recover");
        assert!(recovered.stale.is_empty(), "{:?}", recovered.stale);
        assert!(recovered.inbox.is_empty());
    }

    /// Replaying a dead letter whose accepted row a crash left behind removes that row:
    /// the message comes back once, as the replay.
    #[test]
    fn replay_removes_the_dead_letters_accepted_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (db, accepted) = open(dir.path()).expect("open");
            put(&accepted, INBOX, &[(6, record(&entry("dead", 0)))]);
            put(&db, DEAD_LETTERS, &[(6, letter("dead"))]);
        }
        let replayed = replay(dir.path(), |_| true).expect("replay");
        assert_eq!(replayed.len(), 1);
        let (db, accepted) = open(dir.path()).expect("open");
        let recovered = recover(&db, &accepted).expect("recover");
        let ids: Vec<String> = recovered
            .inbox
            .iter()
            .map(|(_, e)| e.envelope.id.to_string())
            .collect();
        assert_eq!(ids, ["replay:6"]);
        assert!(recovered.stale.is_empty() && recovered.accepted.is_empty());
        assert!(recovered.inbox[0].0 > 6, "a fresh row");
    }

    #[test]
    fn records_written_before_a_field_was_added_still_read() {
        let old = entry("k", 3);
        let v0 = postcard::to_stdvec(&InboxEntryV0 {
            envelope: old.envelope.clone(),
            attempts: 3,
        })
        .expect("serializes");
        let older = decode_untagged::<InboxEntry, InboxEntryV0>("inbox entry", &v0)
            .expect("an older entry reads");
        assert_eq!((older.attempts, older.first_failed_ms), (3, None));
        let letter_bytes = letter("k");
        let letter = postcard::to_stdvec(&DeadLetterV0 {
            envelope: old.envelope,
            reason: "poison".into(),
            at_ms: 7,
        })
        .expect("serializes");
        let older = decode_untagged::<DeadLetter, DeadLetterV0>("dead letter", &letter)
            .expect("an older letter reads");
        assert_eq!((older.at_ms, older.first_failure_ms), (7, None));
        // Today's records read as they are, and a damaged one is still refused.
        let now: DeadLetter = read(&"letter", &letter_bytes).expect("a letter reads");
        assert_eq!(now.first_failure_ms, Some(1));
        assert!(read::<InboxEntry>(&"entry", &[1, 0xff]).is_err());
        let cut = &letter_bytes[1..letter_bytes.len() - 1];
        assert!(
            decode_untagged::<DeadLetter, DeadLetterV0>("dead letter", cut).is_err(),
            "a cut newer record is not an older one"
        );
    }
}

/// The engine's file, shared with the readers of a running runtime (`GET` of state,
/// dead letters), and opened again after an I/O error: the storage engine refuses
/// every operation on a file after one, until it is opened again and repaired to its
/// last commit.
#[derive(Debug)]
pub(crate) struct SharedDb {
    path: std::path::PathBuf,
    db: std::sync::RwLock<Option<std::sync::Arc<Database>>>,
}

impl SharedDb {
    pub(crate) fn new(path: std::path::PathBuf, db: Database) -> Self {
        SharedDb {
            path,
            db: std::sync::RwLock::new(Some(std::sync::Arc::new(db))),
        }
    }

    /// The open file (for one operation: a holder keeps a reopen waiting).
    /// A reader never waits for a reopen (it may take a repair's time): it is told
    /// the file is not open.
    pub(crate) fn get(&self) -> Result<std::sync::Arc<Database>, EmbeddedError> {
        let slot = match self.db.try_read() {
            Ok(slot) => slot,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(Self::not_open()),
        };
        slot.clone().ok_or_else(Self::not_open)
    }

    fn not_open() -> EmbeddedError {
        EmbeddedError::Reopening
    }

    /// Closes the file, once its readers are done, and opens it again.
    pub(crate) fn reopen(&self) -> Result<(), EmbeddedError> {
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        if let Some(mut db) = slot.take() {
            // Readers hold it for one read each; new ones wait for the lock.
            while let Err(shared) = std::sync::Arc::try_unwrap(db) {
                db = shared;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        *slot = Some(std::sync::Arc::new(crate::layout::reopen_db(&self.path)?));
        Ok(())
    }
}

/// The engine file's inbox rows and timers: what the engine rebuilds its memory from
/// after the file was opened again.
pub(crate) fn engine_rows(db: &Database) -> Result<EngineRows, EmbeddedError> {
    let txn = db.begin_read()?;
    let mut inbox = Vec::new();
    for row in txn.open_table(INBOX)?.iter()? {
        let (seq, bytes) = row?;
        inbox.push((
            seq.value(),
            read(&format!("inbox row {}", seq.value()), bytes.value())?,
        ));
    }
    let mut timers = Vec::new();
    for row in txn.open_table(TIMERS)?.iter()? {
        let (key, _) = row?;
        let (due, id) = key.value();
        timers.push((due, id.to_string()));
    }
    Ok((inbox, timers))
}

/// Which of `rows` have a dead letter.
pub(crate) fn dead_lettered(
    db: &Database,
    rows: impl Iterator<Item = u64>,
) -> Result<std::collections::HashSet<u64>, EmbeddedError> {
    let txn = db.begin_read()?;
    let letters = txn.open_table(DEAD_LETTERS)?;
    let mut found = std::collections::HashSet::new();
    for row in rows {
        if letters.get(row)?.is_some() {
            found.insert(row);
        }
    }
    Ok(found)
}

/// Inbox rows and timer keys.
pub(crate) type EngineRows = (Vec<(u64, InboxEntry)>, Vec<(u64, String)>);

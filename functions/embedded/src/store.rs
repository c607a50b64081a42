//! The embedded durable store: one redb file holding instance records, the dedup
//! entries spilled out of them, the inbox, timers, dead letters and ingress
//! idempotency keys.

use std::path::Path;

use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};
use statefun_core::dedup::{DedupEntry, DedupKey};
use statefun_core::{Address, Envelope, InstanceState, MessageId};

use crate::EmbeddedError;

/// Instance records by address key.
pub(crate) const STATE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("state");
/// Dedup entries spilled out of instance records, by (address key, dedup key) →
/// (entry, expires at ms): written in the commit's transaction, read only for
/// addresses that spilled ([`statefun_core::dedup`]).
pub(crate) const DEDUP: TableDefinition<DedupRow, (&[u8], u64)> = TableDefinition::new("dedup");
type DedupRow = (&'static [u8], &'static str);
/// Accepted, not yet settled messages by sequence number.
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
/// Counters: the next sequence number.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const NEXT_SEQ: &str = "next_seq";

/// A message in the inbox and how often it failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct InboxEntry {
    pub(crate) envelope: Envelope,
    pub(crate) attempts: u32,
}

/// A scheduled delayed message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TimerEntry {
    pub(crate) envelope: Envelope,
    pub(crate) token: Option<String>,
}

/// A dead-lettered message and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    pub envelope: Envelope,
    pub reason: String,
    pub at_ms: u64,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serde-derived records into a Vec: no failure mode.
    postcard::to_stdvec(value).expect("record serializes")
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(
    what: &str,
    bytes: &[u8],
) -> Result<T, EmbeddedError> {
    postcard::from_bytes(bytes).map_err(|e| EmbeddedError::Corrupt(format!("{what}: {e}")))
}

pub(crate) fn address_key(address: &Address) -> Vec<u8> {
    encode(&(address.function_type.as_str(), address.id.as_str()))
}

pub(crate) fn token_key(sender: &Address, token: &str) -> Vec<u8> {
    encode(&(sender.function_type.as_str(), sender.id.as_str(), token))
}

pub(crate) fn timer_id(id: &MessageId) -> String {
    id.to_string()
}

/// Opens (or creates) the data file and its tables.
pub(crate) fn open(data_dir: &Path) -> Result<Database, EmbeddedError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| EmbeddedError::Io(data_dir.display().to_string(), e))?;
    let path = data_dir.join("statefun.redb");
    let db = Database::create(&path)?;
    let txn = db.begin_write()?;
    txn.open_table(STATE)?;
    txn.open_table(DEDUP)?;
    txn.open_table(INBOX)?;
    txn.open_table(TIMERS)?;
    txn.open_multimap_table(TIMER_TOKENS)?;
    txn.open_table(DEAD_LETTERS)?;
    txn.open_table(INGRESS_KEYS)?;
    txn.open_table(META)?;
    txn.commit()?;
    Ok(db)
}

/// Reads one instance record.
/// Opens a data dir's store for reading, refusing one a running runtime holds.
pub(crate) fn open_existing(data_dir: &Path) -> Result<Database, EmbeddedError> {
    let path = data_dir.join("statefun.redb");
    if !path.exists() {
        return Err(EmbeddedError::Io(
            data_dir.display().to_string(),
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no statefun-lambda data here (statefun.redb)",
            ),
        ));
    }
    Database::open(&path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => EmbeddedError::Io(
            data_dir.display().to_string(),
            std::io::Error::new(
                std::io::ErrorKind::ResourceBusy,
                "a running runtime has it open: ask it, GET /{namespace}/{type}/{id}",
            ),
        ),
        other => EmbeddedError::Database(other.into()),
    })
}

pub(crate) fn read_state(
    db: &Database,
    address: &Address,
) -> Result<Option<InstanceState>, EmbeddedError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(STATE)?;
    let Some(bytes) = table.get(address_key(address).as_slice())? else {
        return Ok(None);
    };
    Ok(Some(
        InstanceState::from_bytes(bytes.value())
            .map_err(|e| EmbeddedError::Corrupt(e.to_string()))?,
    ))
}

/// Everything the engine keeps in memory, read back at start-up.
pub(crate) struct Recovered {
    pub(crate) next_seq: u64,
    pub(crate) inbox: Vec<(u64, InboxEntry)>,
    pub(crate) timers: Vec<(u64, String)>,
}

pub(crate) fn recover(db: &Database) -> Result<Recovered, EmbeddedError> {
    let txn = db.begin_read()?;
    let next_seq = txn
        .open_table(META)?
        .get(NEXT_SEQ)?
        .map_or(1, |v| v.value());
    let mut inbox: Vec<(u64, InboxEntry)> = Vec::new();
    for row in txn.open_table(INBOX)?.iter()? {
        let (seq, bytes) = row?;
        inbox.push((seq.value(), decode("inbox entry", bytes.value())?));
    }
    // Never below a row already written (the counter is written with every commit).
    let next_seq = inbox
        .last()
        .map_or(next_seq, |(last, _)| next_seq.max(last + 1));
    let mut timers = Vec::new();
    for row in txn.open_table(TIMERS)?.iter()? {
        let (key, _) = row?;
        let (due, id) = key.value();
        timers.push((due, id.to_string()));
    }
    Ok(Recovered {
        next_seq,
        inbox,
        timers,
    })
}

/// Lists the dead letters with their rows, oldest first.
pub(crate) fn dead_letters(db: &Database) -> Result<Vec<(u64, DeadLetter)>, EmbeddedError> {
    let txn = db.begin_read()?;
    let mut out = Vec::new();
    for row in txn.open_table(DEAD_LETTERS)?.iter()? {
        let (seq, bytes) = row?;
        out.push((seq.value(), decode("dead letter", bytes.value())?));
    }
    Ok(out)
}

/// Moves the dead letters `select` picks back into the inbox, each under the id
/// `replay:<row>` (see docs/DESIGN.md, "Replaying dead letters"), in one commit.
pub(crate) fn replay(
    db: &Database,
    select: impl Fn(&DeadLetter) -> bool,
) -> Result<Vec<Envelope>, EmbeddedError> {
    let picked: Vec<(u64, DeadLetter)> = dead_letters(db)?
        .into_iter()
        .filter(|(_, letter)| select(letter))
        .collect();
    let txn = db.begin_write()?;
    let mut replayed = Vec::new();
    {
        let mut meta = txn.open_table(META)?;
        let mut seq = meta.get(NEXT_SEQ)?.map_or(0, |v| v.value());
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
            };
            inbox.insert(seq, encode(&entry).as_slice())?;
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
                let entry = DedupEntry::from_bytes(row.value().0)
                    .map_err(|e| EmbeddedError::Corrupt(format!("{address}: {e}")))?;
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

//! `statefun-lambda verify --data-dir`: reads every record of a data dir no runtime has
//! open, with this build's readers, and says which ones it cannot decode and why — the
//! check an operator runs before starting a new build on last month's data (an older
//! layout is read as it is, not migrated) and after.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;
use statefun_core::InstanceState;
use statefun_core::dedup::DedupEntry;
use statefun_core::format::Found;

use crate::EmbeddedError;
use crate::layout::{self, ACCEPTED_FILE, LAYOUT, MAIN_FILE};
use crate::store::{
    self, DEAD_LETTERS, DEDUP, DeadLetter, DeadLetterV0, INBOX, InboxEntry, InboxEntryV0, STATE,
    TIMERS, TimerEntry,
};

/// What `verify` found in a data dir.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The data dir's layout (a start migrates an older one to this build's).
    pub layout: u64,
    pub newest_layout: u64,
    pub tables: Vec<Found>,
}

impl Report {
    pub fn undecodable(&self) -> usize {
        self.tables.iter().map(|t| t.undecodable.len()).sum()
    }
}

/// Decodes one record of a table, by the data dir's layout.
type Check = fn(tagged: bool, bytes: &[u8]) -> Result<(), String>;

fn check_as<T: statefun_core::format::Versioned>(
    tagged: bool,
    bytes: &[u8],
    untagged: impl Fn(&[u8]) -> Result<T, EmbeddedError>,
) -> Result<(), String> {
    let decoded = if tagged {
        store::read::<T>(&T::WHAT, bytes)
    } else {
        untagged(bytes)
    };
    decoded.map(drop).map_err(|e| e.to_string())
}

fn state(tagged: bool, bytes: &[u8]) -> Result<(), String> {
    check_as::<InstanceState>(tagged, bytes, |b| {
        InstanceState::from_bytes(1, b).map_err(|e| EmbeddedError::Corrupt(e.to_string()))
    })
}

fn inbox(tagged: bool, bytes: &[u8]) -> Result<(), String> {
    check_as::<InboxEntry>(tagged, bytes, |b| {
        store::decode_untagged::<InboxEntry, InboxEntryV0>("inbox entry", b)
    })
}

fn timer(tagged: bool, bytes: &[u8]) -> Result<(), String> {
    check_as::<TimerEntry>(tagged, bytes, |b| {
        statefun_core::format::postcard::<TimerEntry>("timer", 1, b)
            .map_err(|e| EmbeddedError::Corrupt(e.to_string()))
    })
}

fn letter(tagged: bool, bytes: &[u8]) -> Result<(), String> {
    check_as::<DeadLetter>(tagged, bytes, |b| {
        store::decode_untagged::<DeadLetter, DeadLetterV0>("dead letter", b)
    })
}

/// Reads every record of `table`; `progress` hears each one.
fn check_table<K: redb::Key + 'static>(
    db: &Database,
    (file, name, table): (
        &'static str,
        &'static str,
        TableDefinition<K, &'static [u8]>,
    ),
    tagged: bool,
    check: Check,
    show: impl for<'a> Fn(K::SelfType<'a>) -> String,
    progress: &mut dyn FnMut(u64),
) -> Result<Found, EmbeddedError> {
    let mut report = Found::new(format!("{file} {name}"));
    let txn = db.begin_read()?;
    let Ok(t) = txn.open_table(table) else {
        return Ok(report);
    };
    for row in t.iter()? {
        let (k, v) = row?;
        report.add(|| show(k.value()), check(tagged, v.value()));
        progress(1);
    }
    Ok(report)
}

fn row(seq: u64) -> String {
    format!("row {seq}")
}

fn rows<K: redb::Key + 'static, V: redb::Value + 'static>(
    db: &Database,
    table: TableDefinition<K, V>,
) -> Result<u64, EmbeddedError> {
    let txn = db.begin_read()?;
    Ok(match txn.open_table(table) {
        Ok(t) => t.len()?,
        Err(_) => 0,
    })
}

/// Verifies a data dir no runtime has open. `total` hears how many records there are,
/// `progress` each one read.
pub fn verify_at(
    dir: &Path,
    total: impl FnOnce(u64),
    mut progress: impl FnMut(u64),
) -> Result<Report, EmbeddedError> {
    let (layout, db, accepted) = layout::open_for_verify(dir)?;
    // Each file says its own layout: a crash between the two files' migrations leaves
    // one migrated and the other not.
    let tagged = layout::file_layout(&db)?.0 == Some(LAYOUT);
    let accepted_tagged = match &accepted {
        Some(a) => layout::file_layout(a)?.0 == Some(LAYOUT),
        None => false,
    };
    total(
        rows(&db, STATE)?
            + rows(&db, DEDUP)?
            + rows(&db, INBOX)?
            + rows(&db, TIMERS)?
            + rows(&db, DEAD_LETTERS)?
            + accepted.as_ref().map_or(Ok(0), |a| rows(a, INBOX))?,
    );
    let mut tables = vec![
        check_table(
            &db,
            (MAIN_FILE, "state", STATE),
            tagged,
            state,
            store::show_address_key,
            &mut progress,
        )?,
        check_dedup(&db, tagged, &mut progress)?,
        check_table(
            &db,
            (MAIN_FILE, "inbox", INBOX),
            tagged,
            inbox,
            row,
            &mut progress,
        )?,
        check_table(
            &db,
            (MAIN_FILE, "timers", TIMERS),
            tagged,
            timer,
            |(due, id)| format!("{id} due at {due} ms"),
            &mut progress,
        )?,
        check_table(
            &db,
            (MAIN_FILE, "dead_letters", DEAD_LETTERS),
            tagged,
            letter,
            row,
            &mut progress,
        )?,
    ];
    if let Some(accepted) = &accepted {
        tables.push(check_table(
            accepted,
            (ACCEPTED_FILE, "inbox", INBOX),
            accepted_tagged,
            inbox,
            row,
            &mut progress,
        )?);
    }
    Ok(Report {
        layout,
        newest_layout: LAYOUT,
        tables,
    })
}

/// The spilled dedup entries: (entry, expiry) values.
fn check_dedup(
    db: &Database,
    tagged: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<Found, EmbeddedError> {
    let mut report = Found::new(format!("{MAIN_FILE} dedup"));
    let txn = db.begin_read()?;
    let Ok(t) = txn.open_table(DEDUP) else {
        return Ok(report);
    };
    for row in t.iter()? {
        let (k, v) = row?;
        let bytes = v.value().0;
        let decoded = if tagged {
            store::read::<DedupEntry>(&"dedup entry", bytes).map(drop)
        } else {
            DedupEntry::from_bytes(1, bytes)
                .map(drop)
                .map_err(|e| EmbeddedError::Corrupt(e.to_string()))
        };
        let key = || {
            let (address, key) = k.value();
            format!("{} {key}", store::show_address_key(address))
        };
        report.add(key, decoded.map_err(|e| e.to_string()));
        progress(1);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use statefun_core::{Address, TypeName};

    use super::*;

    /// A record of a newer format and a damaged one are each named with why; the rest
    /// reads.
    #[test]
    fn verify_names_each_record_this_build_cannot_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (db, _) = layout::open(dir.path()).expect("open");
            let txn = db.begin_write().expect("write");
            {
                let mut states = txn.open_table(STATE).expect("table");
                let key =
                    |id: &str| store::address_key(&Address::new(TypeName::from_static("a/b"), id));
                let good = store::record(&InstanceState::default());
                states
                    .insert(key("good").as_slice(), good.as_slice())
                    .expect("insert");
                states
                    .insert(key("newer").as_slice(), &[9, 1, 2][..])
                    .expect("insert");
                states
                    .insert(key("cut").as_slice(), &good[..2])
                    .expect("insert");
            }
            txn.commit().expect("commit");
        }
        let mut seen = 0;
        let report = verify_at(dir.path(), |n| assert_eq!(n, 3), |n| seen += n).expect("verify");
        assert_eq!((report.layout, seen, report.undecodable()), (LAYOUT, 3, 2));
        let states = &report.tables[0];
        assert_eq!(
            (states.source.as_str(), states.read),
            ("statefun.redb state", 1)
        );
        let reasons: Vec<&str> = states
            .undecodable
            .iter()
            .map(|u| u.reason.as_str())
            .collect();
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("format 9") && r.contains("newer")),
            "{reasons:?}"
        );
        assert!(
            states.undecodable.iter().any(|u| u.key == "a/b/cut"),
            "{:?}",
            states.undecodable
        );
    }
}

//! The DynamoDB state store.
//!
//! Table layout (one item per instance, partition key only):
//!
//! | attribute | type | content |
//! |---|---|---|
//! | `pk` | S | `<len of type>:<namespace/type>/<id>` ([`partition_key`]) |
//! | `ft`, `fid` | S | function type and id, for people reading the table |
//! | `v` | N | the instance version; every commit is conditional on it |
//! | `st` | B | the instance record: cells, dedup record, last inputs and outbox, in format `fv` ([`InstanceState`]'s [`Versioned`] formats) |
//! | `fv` | N | the format of the item's record (`st`, `d`, or a cancellation's `cv`/`ci`); absent = 1, as written before it existed |
//! | `ttl` | N | epoch seconds after which the item may go ([`InstanceState::delete_after_ms`]): set only when every cell expires, and never before the dedup retention has passed |
//!
//! Two more kinds of items share the table, written with the instance commit that
//! makes them:
//! - cancellations of delayed messages, `pk = cancel:…` ([`crate::keys::cancel_key`]),
//!   `cv`/`ci` = the cancel's position (`fv` 1), kept 366 days: the timer forwarder drops a
//!   timer issued before it. Written with the commit, a cancel is in effect from then,
//!   however late the outbox runs;
//! - dedup entries spilled out of an instance record, `pk = dedup:…`
//!   ([`crate::keys::dedup_key`]), `d` = the entry, `ttl` = its expiry
//!   ([`statefun_core::dedup`]). An exact id applied by an earlier commit is written
//!   *ahead* of the commit, by a plain `BatchWriteItem` (1 write unit per KB): it is a
//!   fact whether or not the commit lands ([`statefun_core::dedup::Spilled::ahead`]).
//!   A source's mark, or an id the commit itself applies, goes in its transaction.
//!
//! Reads are one strongly consistent `BatchGetItem` per 100 keys (unprocessed keys
//! retried); spilled dedup entries are read the same way, only for addresses that have
//! them. A batch's commits are written concurrently, one write per address, each
//! conditional on its version: a `PutItem` (1 write unit per KB) when the instance item
//! is all that must land with it, else one `TransactWriteItems` of that address's items
//! only (2 per KB per item), for the cancellations and dedup entries that must land
//! with it. A failed condition is a conflict of that address alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConsumedCapacity, KeysAndAttributes, Put, PutRequest, ReturnConsumedCapacity,
    TransactWriteItem, WriteRequest,
};
use statefun_core::dedup::{DedupEntry, DedupKey};
use statefun_core::format::{FormatError, Versioned};
use statefun_core::ports::{Clock, CommitError, StateStore, StoreError};
use statefun_core::{Address, Commit, InstanceState, LimitError, Precondition, RetryPolicy};

use crate::keys::{cancel_key, dedup_key, partition_key};
use crate::metrics::Metrics;

/// DynamoDB's item size limit.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;
const MAX_BATCH_GET: usize = 100;
const MAX_BATCH_WRITE: usize = 25;
/// How long a cancellation is honoured: delayed messages may hop for this long.
const CANCEL_RECORD_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    /// The instance-record format written ([`DynamoStore::writing_format`]).
    write_format: u32,
}

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn record_capacity<'a>(
    metrics: &Metrics,
    consumed: impl IntoIterator<Item = &'a ConsumedCapacity>,
) {
    for c in consumed {
        let read = c.read_capacity_units().unwrap_or(0.0);
        let write = c.write_capacity_units().unwrap_or(0.0);
        // Some implementations report only the total; count it as writes for writes.
        if read == 0.0 && write == 0.0 {
            metrics.capacity(0.0, c.capacity_units().unwrap_or(0.0));
        } else {
            metrics.capacity(read, write);
        }
    }
}

/// An item's size as DynamoDB counts it: attribute names plus values.
fn item_bytes(item: &Item) -> usize {
    item.iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    AttributeValue::S(s) => s.len(),
                    AttributeValue::N(n) => n.len() / 2 + 1,
                    AttributeValue::B(b) => b.as_ref().len(),
                    _ => 1,
                }
        })
        .sum()
}

/// Write units AWS bills for `item`: 1 per KB, twice that inside a transaction.
fn write_units(item: &Item, transactional: bool) -> u64 {
    let units = item_bytes(item).div_ceil(1024).max(1) as u64;
    if transactional { 2 * units } else { units }
}

/// The format attribute of an item.
const FORMAT: &str = "fv";

fn format_attribute(format: u32) -> (String, AttributeValue) {
    (FORMAT.to_string(), AttributeValue::N(format.to_string()))
}

/// The format an item's record is in: its `fv`, or 1 for items written before `fv`.
fn item_format(item: &Item) -> Result<u32, FormatError> {
    match item.get(FORMAT) {
        None => Ok(1),
        Some(AttributeValue::N(n)) => n.parse().map_err(|_| FormatError::Corrupt {
            what: "item",
            format: 0,
            reason: format!("fv = {n:?} is not a format number"),
        }),
        Some(other) => Err(FormatError::Corrupt {
            what: "item",
            format: 0,
            reason: format!("fv is not a number: {other:?}"),
        }),
    }
}

/// Reads the record of a versioned item from its attribute `attribute`.
fn item_record<T: Versioned>(item: &Item, attribute: &str) -> Result<T, FormatError> {
    let format = item_format(item)?;
    match item.get(attribute) {
        Some(AttributeValue::B(bytes)) => T::decode_format(format, bytes.as_ref()),
        // A newer format may keep its record elsewhere: say so before anything else.
        _ if format > T::FORMAT => T::decode_format(format, &[]),
        _ => Err(FormatError::Corrupt {
            what: T::WHAT,
            format,
            reason: format!("the item has no binary {attribute}"),
        }),
    }
}

/// The instance record of a state item.
pub fn instance_of_item(item: &Item) -> Result<InstanceState, FormatError> {
    item_record(item, "st")
}

/// The dedup entry of a spilled-entry item.
pub fn dedup_of_item(item: &Item) -> Result<DedupEntry, FormatError> {
    item_record(item, "d")
}

/// Where a cancellation item's cancel was issued.
pub fn cancel_of_item(item: &Item) -> Result<statefun_core::Issued, FormatError> {
    const WHAT: &str = "cancellation";
    let format = item_format(item)?;
    if format > 1 {
        return Err(FormatError::Newer {
            what: WHAT,
            found: format,
            newest: 1,
        });
    }
    let number = |name: &str| match item.get(name) {
        Some(AttributeValue::N(n)) => n.parse::<u64>().ok(),
        _ => None,
    };
    match (
        number("cv"),
        number("ci").and_then(|i| u32::try_from(i).ok()),
    ) {
        (Some(version), Some(index)) => Ok(statefun_core::Issued { version, index }),
        _ => Err(FormatError::Corrupt {
            what: WHAT,
            format,
            reason: "cv and ci must be numbers".into(),
        }),
    }
}

/// Reads whatever record an item of the table holds, by its key: an instance record, a
/// spilled dedup entry or a cancellation (`verify`).
pub fn check_item(item: &Item) -> Result<(), FormatError> {
    match item.get("pk") {
        Some(AttributeValue::S(pk)) if pk.starts_with("cancel:") => cancel_of_item(item).map(drop),
        Some(AttributeValue::S(pk)) if pk.starts_with("dedup:") => dedup_of_item(item).map(drop),
        Some(AttributeValue::S(_)) => instance_of_item(item).map(drop),
        _ => Err(FormatError::Corrupt {
            what: "item",
            format: 0,
            reason: "no string pk".into(),
        }),
    }
}

fn store_error(what: &str, e: impl std::error::Error) -> StoreError {
    StoreError(format!("{what}: {}", DisplayErrorContext(e)))
}

impl DynamoStore {
    pub fn new(
        client: Client,
        table: String,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        DynamoStore {
            client,
            table,
            metrics,
            clock,
            write_format: InstanceState::FORMAT,
        }
    }

    /// Writes instance records in `format` (during a rolling deploy, the previous
    /// release's), if this build writes it; else in its newest.
    pub fn writing_format(mut self, format: u32) -> Self {
        if InstanceState::default().encode_as(format).is_some() {
            self.write_format = format;
        }
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The item for a commit, or a typed error when it cannot be stored.
    fn item(&self, commit: &Commit) -> Result<HashMap<String, AttributeValue>, LimitError> {
        let pk = partition_key(&commit.address);
        let (format, st) = match commit.state.encode_as(self.write_format) {
            Some(st) => (self.write_format, st),
            None => (InstanceState::FORMAT, commit.state.to_bytes()),
        };
        let size = pk.len()
            + commit.address.id.len()
            + commit.address.function_type.as_str().len()
            + st.len()
            + 68;
        if size > MAX_ITEM_BYTES {
            return Err(LimitError {
                address: commit.address.clone(),
                what: "instance record (state, dedup record and outbox) as one DynamoDB item"
                    .into(),
                size,
                limit: MAX_ITEM_BYTES,
                unit: "bytes",
            });
        }
        let mut item = HashMap::from([
            ("pk".to_string(), AttributeValue::S(pk)),
            (
                "ft".to_string(),
                AttributeValue::S(commit.address.function_type.to_string()),
            ),
            (
                "fid".to_string(),
                AttributeValue::S(commit.address.id.clone()),
            ),
            (
                "v".to_string(),
                AttributeValue::N(commit.state.version.to_string()),
            ),
            ("st".to_string(), AttributeValue::B(Blob::new(st))),
            format_attribute(format),
        ]);
        if let Some(ttl) = commit.delete_after_ms {
            item.insert(
                "ttl".into(),
                AttributeValue::N(ttl.div_ceil(1000).to_string()),
            );
        }
        Ok(item)
    }

    /// The items written beside a commit's instance item: those its transaction must
    /// carry (its cancellations, the dedup entries it moves out that are only facts
    /// once it lands), and those that may be written ahead of it on their own
    /// ([`statefun_core::dedup::Spilled::ahead`]).
    fn side_items(&self, commit: &Commit) -> (Vec<Item>, Vec<Item>) {
        let cancel_ttl = self.clock.now_ms() / 1000 + CANCEL_RECORD_TTL.as_secs();
        let cancels = commit.cancels().map(|(token, issued)| {
            HashMap::from([
                (
                    "pk".to_string(),
                    AttributeValue::S(cancel_key(&commit.address, token)),
                ),
                ("cv".into(), AttributeValue::N(issued.version.to_string())),
                ("ci".into(), AttributeValue::N(issued.index.to_string())),
                format_attribute(1),
                ("ttl".into(), AttributeValue::N(cancel_ttl.to_string())),
            ])
        });
        let spilled = |s: &statefun_core::dedup::Spilled| {
            HashMap::from([
                (
                    "pk".to_string(),
                    AttributeValue::S(dedup_key(&commit.address, &s.entry.key())),
                ),
                ("d".into(), AttributeValue::B(Blob::new(s.entry.to_bytes()))),
                format_attribute(DedupEntry::FORMAT),
                (
                    "ttl".into(),
                    AttributeValue::N(s.expires_at_ms.div_ceil(1000).to_string()),
                ),
            ])
        };
        let (ahead, with): (Vec<_>, Vec<_>) = commit.spill.iter().partition(|s| s.ahead);
        (
            cancels.chain(with.into_iter().map(spilled)).collect(),
            ahead.into_iter().map(spilled).collect(),
        )
    }

    /// Sends `first` with `send`, then what each answer leaves unprocessed, with the
    /// I/O backoff between tries, until nothing is left; the answers' results in order.
    async fn until_processed<T, R, F, Fut>(
        &self,
        api: &'static str,
        first: HashMap<String, T>,
        mut send: F,
    ) -> Result<Vec<R>, StoreError>
    where
        F: FnMut(HashMap<String, T>) -> Fut,
        Fut: std::future::Future<Output = Result<(R, Option<HashMap<String, T>>), StoreError>>,
    {
        let policy = RetryPolicy::io();
        let (mut pending, mut results) = (Some(first), Vec::new());
        for wait in std::iter::once(None).chain(policy.delays().map(Some)) {
            let Some(items) = pending.take().filter(|p| !p.is_empty()) else {
                return Ok(results);
            };
            if let Some(wait) = wait {
                self.metrics.retry();
                tokio::time::sleep(wait).await;
            }
            self.metrics.request(api);
            let (result, left) = send(items).await?;
            results.push(result);
            pending = left;
        }
        match pending {
            Some(left) if !left.is_empty() => Err(StoreError(format!(
                "{api}: still unprocessed after {} tries",
                policy.max_attempts
            ))),
            _ => Ok(results),
        }
    }

    /// Writes `items` with `BatchWriteItem` (25 a request, unprocessed items retried
    /// with backoff): unconditional standard writes, 1 write unit per KB each.
    async fn put_ahead(&self, items: Vec<Item>) -> Result<(), StoreError> {
        for chunk in items.chunks(MAX_BATCH_WRITE) {
            let units: u64 = chunk.iter().map(|i| write_units(i, false)).sum();
            let requests: Vec<WriteRequest> = chunk
                .iter()
                .map(|item| {
                    PutRequest::builder()
                        .set_item(Some(item.clone()))
                        .build()
                        .map(|put| WriteRequest::builder().put_request(put).build())
                        .map_err(|e| StoreError(format!("building a write request: {e}")))
                })
                .collect::<Result<_, _>>()?;
            let first = HashMap::from([(self.table.clone(), requests)]);
            self.until_processed("BatchWriteItem", first, |items| async move {
                let out = self
                    .client
                    .batch_write_item()
                    .set_request_items(Some(items))
                    .return_consumed_capacity(ReturnConsumedCapacity::Total)
                    .send()
                    .await
                    .map_err(|e| store_error("BatchWriteItem", e))?;
                record_capacity(&self.metrics, out.consumed_capacity());
                Ok(((), out.unprocessed_items().cloned()))
            })
            .await?;
            // Unprocessed items are not billed until written: the chunk, once.
            self.metrics.billed(0, units);
        }
        Ok(())
    }

    /// Strongly consistent reads of `keys` (chunks of 100, unprocessed keys retried
    /// with backoff); the items found, by `pk`.
    pub(crate) async fn batch_get(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, Item>, StoreError> {
        let mut found = HashMap::new();
        for chunk in keys.chunks(MAX_BATCH_GET) {
            let mut request = KeysAndAttributes::builder().consistent_read(true);
            for k in chunk {
                request = request.keys(HashMap::from([(
                    "pk".to_string(),
                    AttributeValue::S(k.clone()),
                )]));
            }
            let first = HashMap::from([(
                self.table.clone(),
                request.build().map_err(|e| StoreError(e.to_string()))?,
            )]);
            let answers = self
                .until_processed("BatchGetItem", first, |items| async move {
                    let out = self
                        .client
                        .batch_get_item()
                        .set_request_items(Some(items))
                        .return_consumed_capacity(ReturnConsumedCapacity::Total)
                        .send()
                        .await
                        .map_err(|e| store_error("BatchGetItem", e))?;
                    record_capacity(&self.metrics, out.consumed_capacity());
                    let items = out
                        .responses()
                        .and_then(|r| r.get(&self.table))
                        .cloned()
                        .unwrap_or_default();
                    Ok((items, out.unprocessed_keys().cloned()))
                })
                .await?;
            for item in answers.into_iter().flatten() {
                let Some(AttributeValue::S(pk)) = item.get("pk") else {
                    return Err(StoreError("item without pk".into()));
                };
                found.insert(pk.clone(), item);
            }
        }
        // Strongly consistent: 1 unit per 4 KB of each item, 1 for a missing one.
        let units = keys
            .iter()
            .map(|k| {
                found
                    .get(k)
                    .map_or(1, |i| item_bytes(i).div_ceil(4096).max(1)) as u64
            })
            .sum();
        self.metrics.billed(units, 0);
        Ok(found)
    }

    fn condition(precondition: Precondition) -> (String, Option<(String, AttributeValue)>) {
        match precondition {
            Precondition::DoesNotExist => ("attribute_not_exists(pk)".into(), None),
            Precondition::MatchesVersion(v) => (
                "v = :v".into(),
                Some((":v".into(), AttributeValue::N(v.to_string()))),
            ),
        }
    }

    async fn put_one(
        &self,
        commit: &Commit,
        item: HashMap<String, AttributeValue>,
    ) -> Result<(), CommitError> {
        let (expr, value) = Self::condition(commit.precondition);
        self.metrics.request("PutItem");
        let units = write_units(&item, false);
        let out = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(expr)
            .set_expression_attribute_values(value.map(|(k, v)| HashMap::from([(k, v)])))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        match out {
            Ok(out) => {
                record_capacity(&self.metrics, out.consumed_capacity());
                self.metrics.billed(0, units);
                Ok(())
            }
            Err(e) => match e.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(_)) => {
                    self.metrics.conflict();
                    // A failed condition is billed as the write would have been.
                    self.metrics.billed(0, units);
                    Err(CommitError::Conflict(commit.address.clone()))
                }
                _ => Err(store_error("PutItem", e).into()),
            },
        }
    }

    /// A commit's transaction items: the conditional instance item first, then the
    /// items beside it; with the write units AWS bills for them.
    fn transact_items(
        &self,
        commit: &Commit,
        item: Item,
        sides: Vec<Item>,
    ) -> Result<(Vec<TransactWriteItem>, u64), StoreError> {
        let (expr, value) = Self::condition(commit.precondition);
        let build = |put: aws_sdk_dynamodb::types::builders::PutBuilder| {
            put.table_name(&self.table)
                .build()
                .map(|put| TransactWriteItem::builder().put(put).build())
                .map_err(|e| StoreError(format!("building a transaction item: {e}")))
        };
        let mut units = write_units(&item, true);
        let mut items = vec![build(
            Put::builder()
                .set_item(Some(item))
                .condition_expression(expr)
                .set_expression_attribute_values(value.map(|(k, v)| HashMap::from([(k, v)]))),
        )?];
        for side in sides {
            units += write_units(&side, true);
            items.push(build(Put::builder().set_item(Some(side)))?);
        }
        Ok((items, units))
    }

    /// An address's commit: the dedup entries that may go ahead of it first
    /// ([`DynamoStore::put_ahead`]), then a conditional `PutItem` when its instance item
    /// is all that must land, else one transaction of that item and the items that
    /// must land with it (its cancellations, the dedup entries of ids it applies).
    async fn write_one(&self, commit: &Commit, item: Item) -> Result<(), CommitError> {
        self.metrics.item(item_bytes(&item));
        let (sides, ahead) = self.side_items(commit);
        if !ahead.is_empty() {
            self.put_ahead(ahead).await?;
        }
        if sides.is_empty() {
            self.put_one(commit, item).await
        } else {
            self.transact(commit, item, sides).await
        }
    }

    /// One commit's transaction; cancelled for another reason than its condition
    /// (a transaction conflict), it is tried again.
    async fn transact(
        &self,
        commit: &Commit,
        item: Item,
        sides: Vec<Item>,
    ) -> Result<(), CommitError> {
        let (writes, units) = self.transact_items(commit, item, sides)?;
        let policy = RetryPolicy::io();
        let waits = std::iter::once(None).chain(policy.delays().map(Some));
        for wait in waits {
            if let Some(wait) = wait {
                self.metrics.retry();
                tokio::time::sleep(wait).await;
            }
            self.metrics.request("TransactWriteItems");
            let out = self
                .client
                .transact_write_items()
                .set_transact_items(Some(writes.clone()))
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            let e = match out {
                Ok(out) => {
                    record_capacity(&self.metrics, out.consumed_capacity());
                    self.metrics.billed(0, units);
                    return Ok(());
                }
                Err(e) => e,
            };
            let reasons = match e.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                    c.cancellation_reasons().to_vec()
                }
                _ => Vec::new(),
            };
            if reasons.len() != writes.len() {
                return Err(store_error("TransactWriteItems", e).into());
            }
            // The instance item is the first, and the only one with a condition.
            if reasons[0].code() == Some("ConditionalCheckFailed") {
                self.metrics.conflict();
                // A failed condition is billed as the write would have been.
                self.metrics.billed(0, units);
                return Err(CommitError::Conflict(commit.address.clone()));
            }
        }
        Err(StoreError(format!(
            "TransactWriteItems: cancelled {} times",
            policy.max_attempts
        ))
        .into())
    }
}

impl StateStore for DynamoStore {
    async fn load(&self, addresses: &[Address]) -> Result<Vec<Option<InstanceState>>, StoreError> {
        let keys: Vec<String> = addresses.iter().map(partition_key).collect();
        let mut found = self.batch_get(&keys).await?;
        keys.iter()
            .map(|k| {
                found
                    .remove(k)
                    .map(|item| {
                        // A newer build's record (a rolling deploy) fails the batch as
                        // unavailable: retried, never dead-lettered, never overwritten.
                        instance_of_item(&item).map_err(|e| StoreError(format!("{k}: {e}")))
                    })
                    .transpose()
            })
            .collect()
    }

    async fn load_dedup(
        &self,
        lookups: &[(Address, Vec<DedupKey>)],
    ) -> Result<Vec<Vec<DedupEntry>>, StoreError> {
        let keys: Vec<Vec<String>> = lookups
            .iter()
            .map(|(a, keys)| keys.iter().map(|k| dedup_key(a, k)).collect())
            .collect();
        let all: Vec<String> = keys.iter().flatten().cloned().collect();
        let found = self.batch_get(&all).await?;
        keys.iter()
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| found.get(k).map(|item| (k, item)))
                    .map(|(k, item)| {
                        dedup_of_item(item).map_err(|e| StoreError(format!("{k}: {e}")))
                    })
                    .collect()
            })
            .collect()
    }

    async fn commit(&self, commits: &[Commit]) -> Vec<Result<(), CommitError>> {
        let mut results: Vec<Option<Result<(), CommitError>>> = vec![None; commits.len()];
        // One write per address, all at once: each is conditional on its own version,
        // and nothing needs two addresses to land together (docs/DESIGN.md, "One
        // conditional write per address").
        let mut writes = tokio::task::JoinSet::new();
        for (i, commit) in commits.iter().enumerate() {
            match self.item(commit) {
                Ok(item) => {
                    let (store, commit) = (self.clone(), commit.clone());
                    writes.spawn(async move { (i, store.write_one(&commit, item).await) });
                }
                Err(e) => results[i] = Some(Err(CommitError::TooLarge(e))),
            }
        }
        while let Some(done) = writes.join_next().await {
            // A write that panicked leaves its result unset: "not attempted" below.
            if let Ok((i, result)) = done {
                results[i] = Some(result);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StoreError("commit not attempted".into()).into())))
            .collect()
    }
}

//! The DynamoDB state store.
//!
//! Table layout (one item per instance, partition key only):
//!
//! | attribute | type | content |
//! |---|---|---|
//! | `pk` | S | `<len of type>:<namespace/type>/<id>` ([`partition_key`]) |
//! | `ft`, `fid` | S | function type and id, for people reading the table |
//! | `v` | N | the instance version; every commit is conditional on it |
//! | `st` | B | the instance record: cells, dedup record, last inputs and outbox (postcard) |
//! | `ttl` | N | epoch seconds after which the item may go: set only when every cell expires, and never before the dedup retention has passed |
//!
//! Cancellation records of delayed messages live in the same table under
//! `pk = cancel:…` ([`crate::keys::cancel_key`]) with `v` = the cancel's position.
//!
//! Reads are one strongly consistent `BatchGetItem` per 100 addresses (unprocessed keys
//! retried). A batch's commits are one `PutItem` when there is one, else one
//! `TransactWriteItems` (up to 100 items): each item conditional on its version. When a
//! transaction is cancelled, conflicted items are reported and the others retried.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConsumedCapacity, KeysAndAttributes, Put, ReturnConsumedCapacity,
    TransactWriteItem,
};
use statefun_core::ports::{Clock, CommitError, StateStore, StoreError};
use statefun_core::{Address, Commit, InstanceState, LimitError, Precondition};

use crate::keys::partition_key;
use crate::metrics::Metrics;

/// DynamoDB's item size limit.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;
const MAX_TRANSACTION_ITEMS: usize = 100;
const MAX_TRANSACTION_BYTES: usize = 4 * 1024 * 1024;
const MAX_BATCH_GET: usize = 100;

#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    retention_ms: u64,
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

fn store_error(what: &str, e: impl std::error::Error) -> StoreError {
    StoreError(format!("{what}: {}", DisplayErrorContext(e)))
}

impl DynamoStore {
    pub fn new(
        client: Client,
        table: String,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        retention: Duration,
    ) -> Self {
        DynamoStore {
            client,
            table,
            metrics,
            clock,
            retention_ms: retention.as_millis() as u64,
        }
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
        let st = commit.state.to_bytes();
        let size = pk.len()
            + commit.address.id.len()
            + commit.address.function_type.as_str().len()
            + st.len()
            + 64;
        if size > MAX_ITEM_BYTES {
            return Err(LimitError {
                address: commit.address.clone(),
                what: "instance record (state, dedup record and outbox) as one DynamoDB item"
                    .into(),
                size,
                limit: MAX_ITEM_BYTES,
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
        ]);
        if let Some(ttl) = self.ttl_seconds(&commit.state) {
            item.insert("ttl".into(), AttributeValue::N(ttl.to_string()));
        }
        Ok(item)
    }

    /// When the whole item may be deleted: once every cell has expired, and not before
    /// the dedup record may be forgotten.
    fn ttl_seconds(&self, state: &InstanceState) -> Option<u64> {
        if state.cells.values().any(|c| c.expires_at_ms.is_none()) {
            return None;
        }
        let last_cell = state
            .cells
            .values()
            .filter_map(|c| c.expires_at_ms)
            .max()
            .unwrap_or(0);
        let dedup_until = self.clock.now_ms() + self.retention_ms;
        Some(last_cell.max(dedup_until).div_ceil(1000))
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
                Ok(())
            }
            Err(e) => match e.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(_)) => {
                    self.metrics.conflict();
                    Err(CommitError::Conflict(commit.address.clone()))
                }
                _ => Err(store_error("PutItem", e).into()),
            },
        }
    }

    fn transact_item(
        &self,
        commit: &Commit,
        item: HashMap<String, AttributeValue>,
    ) -> Result<TransactWriteItem, StoreError> {
        let (expr, value) = Self::condition(commit.precondition);
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(expr)
            .set_expression_attribute_values(value.map(|(k, v)| HashMap::from([(k, v)])))
            .build()
            .map_err(|e| StoreError(format!("building a transaction item: {e}")))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// One transaction over `indices`; conflicted ones are settled, the rest retried.
    async fn transact(
        &self,
        commits: &[Commit],
        items: &mut [Option<HashMap<String, AttributeValue>>],
        indices: Vec<usize>,
        results: &mut [Option<Result<(), CommitError>>],
    ) {
        let mut remaining = indices;
        for attempt in 0..3 {
            if remaining.is_empty() {
                return;
            }
            if attempt > 0 {
                self.metrics.retry();
            }
            let mut writes = Vec::new();
            for &i in &remaining {
                let item = items[i].clone().unwrap_or_default();
                match self.transact_item(&commits[i], item) {
                    Ok(w) => writes.push(w),
                    Err(e) => {
                        results[i] = Some(Err(e.into()));
                    }
                }
            }
            remaining.retain(|&i| results[i].is_none());
            self.metrics.request("TransactWriteItems");
            let out = self
                .client
                .transact_write_items()
                .set_transact_items(Some(writes))
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            match out {
                Ok(out) => {
                    record_capacity(&self.metrics, out.consumed_capacity());
                    for &i in &remaining {
                        results[i] = Some(Ok(()));
                    }
                    return;
                }
                Err(e) => {
                    let reasons = match e.as_service_error() {
                        Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                            c.cancellation_reasons().to_vec()
                        }
                        _ => Vec::new(),
                    };
                    if reasons.len() != remaining.len() {
                        let err = store_error("TransactWriteItems", e);
                        for &i in &remaining {
                            results[i] = Some(Err(err.clone().into()));
                        }
                        return;
                    }
                    for (&i, reason) in remaining.iter().zip(&reasons) {
                        if reason.code() == Some("ConditionalCheckFailed") {
                            self.metrics.conflict();
                            results[i] =
                                Some(Err(CommitError::Conflict(commits[i].address.clone())));
                        }
                    }
                    remaining.retain(|&i| results[i].is_none());
                }
            }
        }
        for &i in &remaining {
            results[i] = Some(Err(StoreError(
                "TransactWriteItems: cancelled three times".into(),
            )
            .into()));
        }
    }
}

impl StateStore for DynamoStore {
    async fn load(&self, addresses: &[Address]) -> Result<Vec<Option<InstanceState>>, StoreError> {
        let keys: Vec<String> = addresses.iter().map(partition_key).collect();
        let mut found: HashMap<String, InstanceState> = HashMap::new();
        for chunk in keys.chunks(MAX_BATCH_GET) {
            let mut request = KeysAndAttributes::builder().consistent_read(true);
            for k in chunk {
                request = request.keys(HashMap::from([(
                    "pk".to_string(),
                    AttributeValue::S(k.clone()),
                )]));
            }
            let mut pending = Some(HashMap::from([(
                self.table.clone(),
                request.build().map_err(|e| StoreError(e.to_string()))?,
            )]));
            for attempt in 0..8u32 {
                let Some(items) = pending.take().filter(|p| !p.is_empty()) else {
                    break;
                };
                if attempt > 0 {
                    self.metrics.retry();
                    tokio::time::sleep(Duration::from_millis(20 << attempt.min(5))).await;
                }
                self.metrics.request("BatchGetItem");
                let out = self
                    .client
                    .batch_get_item()
                    .set_request_items(Some(items))
                    .return_consumed_capacity(ReturnConsumedCapacity::Total)
                    .send()
                    .await
                    .map_err(|e| store_error("BatchGetItem", e))?;
                record_capacity(&self.metrics, out.consumed_capacity());
                for item in out
                    .responses()
                    .and_then(|r| r.get(&self.table))
                    .into_iter()
                    .flatten()
                {
                    let (Some(AttributeValue::S(pk)), Some(AttributeValue::B(st))) =
                        (item.get("pk"), item.get("st"))
                    else {
                        return Err(StoreError("state item without pk or st".into()));
                    };
                    let state = InstanceState::from_bytes(st.as_ref())
                        .map_err(|e| StoreError(format!("{pk}: {e}")))?;
                    found.insert(pk.clone(), state);
                }
                pending = out.unprocessed_keys().cloned();
            }
            if pending.is_some_and(|p| !p.is_empty()) {
                return Err(StoreError(
                    "BatchGetItem: keys still unprocessed after 8 tries".into(),
                ));
            }
        }
        Ok(keys.iter().map(|k| found.remove(k)).collect())
    }

    async fn commit(&self, commits: &[Commit]) -> Vec<Result<(), CommitError>> {
        let mut results: Vec<Option<Result<(), CommitError>>> = vec![None; commits.len()];
        let mut items: Vec<Option<HashMap<String, AttributeValue>>> =
            Vec::with_capacity(commits.len());
        let mut sizes = Vec::with_capacity(commits.len());
        for (i, commit) in commits.iter().enumerate() {
            match self.item(commit) {
                Ok(item) => {
                    sizes.push(commit.state.to_bytes().len());
                    items.push(Some(item));
                }
                Err(e) => {
                    sizes.push(0);
                    items.push(None);
                    results[i] = Some(Err(CommitError::TooLarge(e)));
                }
            }
        }
        let writable: Vec<usize> = (0..commits.len())
            .filter(|&i| results[i].is_none())
            .collect();
        if let [only] = writable[..] {
            let item = items[only].take().unwrap_or_default();
            results[only] = Some(self.put_one(&commits[only], item).await);
        } else {
            // Group into transactions within DynamoDB's item and size limits.
            let mut group = Vec::new();
            let mut bytes = 0;
            for i in writable {
                if group.len() == MAX_TRANSACTION_ITEMS || bytes + sizes[i] > MAX_TRANSACTION_BYTES
                {
                    self.transact(
                        commits,
                        &mut items,
                        std::mem::take(&mut group),
                        &mut results,
                    )
                    .await;
                    bytes = 0;
                }
                bytes += sizes[i];
                group.push(i);
            }
            if !group.is_empty() {
                self.transact(commits, &mut items, group, &mut results)
                    .await;
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StoreError("commit not attempted".into()).into())))
            .collect()
    }
}

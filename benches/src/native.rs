//! The three example projectors, compiled natively and driven exactly like the Wasm ones: the
//! same log reader, batch size, host-side filter, JSON decoding, view overlay, catch-up cache
//! and commits — only
//! the sandbox and the boundary crossing are missing. Their logic mirrors
//! `example-projectors/*/src/lib.rs` line for line.

use prism::log::{BatchRead, EventLog, FlatBatch};
use prism::store::{BatchView, CacheBudget, StoreError, ViewStore, WriteBack};
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::sync::Arc;

/// A native projector: the subscription and the per-event logic.
pub trait Native {
    /// Event types wanted (empty: all).
    fn event_types(&self) -> &'static [&'static str];
    /// Applies one event.
    fn apply(
        &self,
        stream: &str,
        event_type: &str,
        data: &[u8],
        view: &mut View,
    ) -> Result<(), String>;
}

/// The typed view helpers of the guest SDK, with the same algorithm: a batch's reads and writes
/// are cached (values `update` touched stay decoded), and the writes go to the host's batch
/// view once, at the end of the batch.
pub struct View {
    batch: BatchView,
    cache: FxHashMap<String, Cached>,
}

struct Cached {
    value: Cell,
    dirty: bool,
}

enum Cell {
    Bytes(Option<Vec<u8>>),
    Typed(Box<dyn Erased>),
}

trait Erased: Any {
    fn to_json(&self) -> Vec<u8>;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Serialize + Any> Erased for T {
    fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a view value serializes")
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl Cell {
    fn into_bytes(self) -> Option<Vec<u8>> {
        match self {
            Cell::Bytes(bytes) => bytes,
            Cell::Typed(value) => Some(value.to_json()),
        }
    }
}

impl View {
    fn entry(&mut self, key: &str) -> Result<&mut Cached, String> {
        if !self.cache.contains_key(key) {
            let value = Cell::Bytes(self.batch.get(key).map_err(|e| e.to_string())?);
            self.cache.insert(
                key.to_string(),
                Cached {
                    value,
                    dirty: false,
                },
            );
        }
        Ok(self.cache.get_mut(key).expect("just inserted"))
    }

    fn get<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, String> {
        let entry = self.entry(key)?;
        if let Cell::Typed(_) = entry.value {
            let cell = std::mem::replace(&mut entry.value, Cell::Bytes(None));
            entry.value = Cell::Bytes(cell.into_bytes());
        }
        match &entry.value {
            Cell::Bytes(None) => Ok(None),
            Cell::Bytes(Some(bytes)) => serde_json::from_slice(bytes)
                .map(Some)
                .map_err(|e| e.to_string()),
            Cell::Typed(_) => unreachable!("turned into bytes above"),
        }
    }

    fn put<T: Serialize>(&mut self, key: &str, value: &T) -> Result<(), String> {
        let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
        let cached = Cached {
            value: Cell::Bytes(Some(bytes)),
            dirty: true,
        };
        match self.cache.get_mut(key) {
            Some(entry) => *entry = cached,
            None => {
                self.cache.insert(key.to_string(), cached);
            }
        }
        Ok(())
    }

    fn update<T: Serialize + DeserializeOwned + Default + Any>(
        &mut self,
        key: &str,
        f: impl FnOnce(&mut T),
    ) -> Result<(), String> {
        let entry = self.entry(key)?;
        if let Cell::Typed(value) = &mut entry.value
            && let Some(value) = value.as_any_mut().downcast_mut::<T>()
        {
            f(value);
            entry.dirty = true;
            return Ok(());
        }
        let bytes = std::mem::replace(&mut entry.value, Cell::Bytes(None)).into_bytes();
        let mut value: T = match &bytes {
            None => T::default(),
            Some(raw) => serde_json::from_slice(raw).map_err(|e| e.to_string())?,
        };
        f(&mut value);
        entry.value = Cell::Typed(Box::new(value));
        entry.dirty = true;
        Ok(())
    }

    /// The batch's writes, as the SDK sends them with `write-many`.
    fn into_batch(mut self) -> BatchView {
        for (key, entry) in self.cache.drain() {
            if entry.dirty {
                match entry.value.into_bytes() {
                    Some(bytes) => self.batch.put(key, bytes),
                    None => self.batch.delete(key),
                }
            }
        }
        self.batch
    }
}

/// Replays `projector` over `log` into `store`, from its checkpoint to the head, in batches of
/// up to 1024 events (like the Wasm runner), committing view and checkpoint together.
pub fn replay(
    projector: &dyn Native,
    log: &EventLog,
    store: &ViewStore,
) -> Result<u64, StoreError> {
    let mut checkpoint = store.checkpoint()?;
    let types = projector.event_types();
    // The runner's catch-up cache, with its policy: hold while a full batch or more behind,
    // commit what is held when the budget fills or the interval passes, and near the head.
    let mut held = Some(WriteBack::new(Arc::new(CacheBudget::default())));
    let mut flat = FlatBatch::default();
    loop {
        let mut view = View {
            batch: BatchView::with_cache(store.snapshot()?, held.take().expect("held")),
            cache: FxHashMap::default(),
        };
        let mut failed = None;
        // Read as the runner reads: the filter applied by the log's batch reader, into a
        // batch reused from read to read.
        let last = log
            .read_batch(
                &BatchRead::from(checkpoint + 1, 1024),
                |_, t| types.is_empty() || types.contains(&t),
                &mut flat,
            )
            .expect("reading the log");
        for i in 0..flat.len() {
            let event = flat.event(i).expect("an event of the batch");
            if let Err(e) = projector.apply(event.stream, event.event_type, event.data, &mut view) {
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            panic!("native projector failed: {e}");
        }
        let (overlay, cache) = view.into_batch().into_parts();
        let mut cache = cache.expect("the batch view lends the cache back");
        let Some(last) = last else {
            commit_held(store, &mut cache)?;
            return Ok(checkpoint);
        };
        let far_behind = log.head().saturating_sub(last) >= 1024;
        if far_behind {
            cache.absorb(overlay, last);
            if cache.due() {
                commit_held(store, &mut cache)?;
            }
        } else if cache.is_empty() {
            store.commit(&overlay, last, false, None)?;
        } else {
            cache.absorb(overlay, last);
            commit_held(store, &mut cache)?;
        }
        held = Some(cache);
        checkpoint = last;
    }
}

fn commit_held(store: &ViewStore, cache: &mut WriteBack) -> Result<(), StoreError> {
    if !cache.is_empty() {
        let position = cache.position();
        store.commit_sorted(&cache.drain_sorted(), position, false, None, None)?;
    }
    Ok(())
}

fn category(stream: &str) -> &str {
    stream.split_once('-').map_or(stream, |(c, _)| c)
}

/// `event-counter`.
pub struct EventCounter;

impl Native for EventCounter {
    fn event_types(&self) -> &'static [&'static str] {
        &[]
    }

    fn apply(
        &self,
        stream: &str,
        event_type: &str,
        _data: &[u8],
        view: &mut View,
    ) -> Result<(), String> {
        let increment = |count: &mut u64| *count += 1;
        view.update("total", increment)?;
        view.update(&format!("type/{event_type}"), increment)?;
        view.update(&format!("category/{}", category(stream)), increment)
    }
}

/// `order-totals`.
pub struct OrderTotals;

/// `OrderPlaced`'s data (shared with the rival, which reads the same events).
#[derive(Deserialize)]
pub(crate) struct OrderPlaced {
    pub order_id: String,
    pub customer: String,
    pub total_cents: i64,
}

/// `OrderCancelled`'s data.
#[derive(Deserialize)]
pub(crate) struct OrderCancelled {
    pub order_id: String,
}

#[derive(Serialize, Deserialize)]
struct Order {
    customer: String,
    total_cents: i64,
    cancelled: bool,
}

#[derive(Serialize, Deserialize, Default)]
struct Customer {
    orders: u64,
    total_cents: i64,
    cancelled: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct OrderStats {
    ignored: u64,
}

impl Native for OrderTotals {
    fn event_types(&self) -> &'static [&'static str] {
        &["OrderPlaced", "OrderCancelled"]
    }

    fn apply(
        &self,
        _stream: &str,
        event_type: &str,
        data: &[u8],
        view: &mut View,
    ) -> Result<(), String> {
        let ignore = |view: &mut View| view.update("stats", |s: &mut OrderStats| s.ignored += 1);
        match event_type {
            "OrderPlaced" => {
                let placed: OrderPlaced =
                    serde_json::from_slice(data).map_err(|e| e.to_string())?;
                let order_key = format!("order/{}", placed.order_id);
                if view.get::<Order>(&order_key)?.is_some() {
                    return ignore(view);
                }
                view.update(
                    &format!("customer/{}", placed.customer),
                    |c: &mut Customer| {
                        c.orders += 1;
                        c.total_cents += placed.total_cents;
                    },
                )?;
                view.put(
                    &order_key,
                    &Order {
                        customer: placed.customer,
                        total_cents: placed.total_cents,
                        cancelled: false,
                    },
                )
            }
            "OrderCancelled" => {
                let cancelled: OrderCancelled =
                    serde_json::from_slice(data).map_err(|e| e.to_string())?;
                let order_key = format!("order/{}", cancelled.order_id);
                let Some(mut order) = view.get::<Order>(&order_key)? else {
                    return ignore(view);
                };
                if order.cancelled {
                    return ignore(view);
                }
                view.update(
                    &format!("customer/{}", order.customer),
                    |c: &mut Customer| {
                        c.orders -= 1;
                        c.total_cents -= order.total_cents;
                        c.cancelled += 1;
                    },
                )?;
                order.cancelled = true;
                view.put(&order_key, &order)
            }
            _ => Ok(()),
        }
    }
}

/// `account-balances`.
pub struct AccountBalances;

#[derive(Deserialize)]
struct AccountOpened {
    account: String,
    owner: String,
}

#[derive(Deserialize)]
struct Movement {
    account: String,
    amount: i64,
}

#[derive(Deserialize)]
struct TransferMade {
    from: String,
    to: String,
    amount: i64,
}

#[derive(Serialize, Deserialize)]
struct Account {
    owner: String,
    balance: i64,
    rejected_overdrafts: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct AccountStats {
    rejected_overdrafts: u64,
    ignored: u64,
}

fn decode<T: DeserializeOwned>(data: &[u8]) -> Result<T, String> {
    serde_json::from_slice(data).map_err(|e| e.to_string())
}

fn account_key(id: &str) -> String {
    format!("account/{id}")
}

fn move_money(
    view: &mut View,
    from: Option<&str>,
    to: Option<&str>,
    amount: i64,
) -> Result<(), String> {
    let load = |view: &mut View, id: Option<&str>| -> Result<Option<Option<Account>>, String> {
        id.map(|id| view.get::<Account>(&account_key(id)))
            .transpose()
    };
    let (source, target) = (load(view, from)?, load(view, to)?);
    let unknown = matches!(source, Some(None)) || matches!(target, Some(None));
    if unknown || amount <= 0 || from.is_some() && from == to {
        return view.update("stats", |s: &mut AccountStats| s.ignored += 1);
    }
    if let (Some(id), Some(Some(mut account))) = (from, source) {
        if account.balance < amount {
            account.rejected_overdrafts += 1;
            view.put(&account_key(id), &account)?;
            return view.update("stats", |s: &mut AccountStats| s.rejected_overdrafts += 1);
        }
        account.balance -= amount;
        view.put(&account_key(id), &account)?;
    }
    if let (Some(id), Some(Some(mut account))) = (to, target) {
        account.balance += amount;
        view.put(&account_key(id), &account)?;
    }
    Ok(())
}

impl Native for AccountBalances {
    fn event_types(&self) -> &'static [&'static str] {
        &["AccountOpened", "Deposited", "Withdrawn", "TransferMade"]
    }

    fn apply(
        &self,
        _stream: &str,
        event_type: &str,
        data: &[u8],
        view: &mut View,
    ) -> Result<(), String> {
        match event_type {
            "AccountOpened" => {
                let opened: AccountOpened = decode(data)?;
                let key = account_key(&opened.account);
                if view.get::<Account>(&key)?.is_some() {
                    return view.update("stats", |s: &mut AccountStats| s.ignored += 1);
                }
                view.put(
                    &key,
                    &Account {
                        owner: opened.owner,
                        balance: 0,
                        rejected_overdrafts: 0,
                    },
                )
            }
            "Deposited" => {
                let m: Movement = decode(data)?;
                move_money(view, None, Some(&m.account), m.amount)
            }
            "Withdrawn" => {
                let m: Movement = decode(data)?;
                move_money(view, Some(&m.account), None, m.amount)
            }
            "TransferMade" => {
                let t: TransferMade = decode(data)?;
                move_money(view, Some(&t.from), Some(&t.to), t.amount)
            }
            _ => Ok(()),
        }
    }
}

//! The orders accepted so far, by `order_id`: what a client's retry is answered with.
//!
//! Every orders instance reads `order_details` into this index, and adds what it wrote itself
//! as soon as the broker acknowledged it. So a retry finds the order it repeats whichever
//! instance took the first copy and however often the instances were restarted since, as
//! long as the topic keeps the first copy (its retention). The log is the truth: the first
//! record of an `order_id` in `order_details` is the order that transactions decides, and it
//! replaces what an instance noted of its own write (two instances given different orders
//! under one `order_id` at the same instant).
//!
//! What was read from the log lives in an embedded database ([redb], the state stores'
//! copy: [`common::kafka::state`]) in `FLATPACK_STORE_DIR`, with, per partition, the offset
//! read up to: memory stays small however many orders there are, and a restart reads only
//! what `order_details` got since. An entry is the `order_id` (as the message key spells it,
//! so that ids given in sequence are written in sequence), 16 bytes of digest of the order's
//! content and the time it was accepted. What this instance wrote and has
//! not read back from the log yet is kept in memory. Without `FLATPACK_STORE_DIR` the
//! database is in memory and each start reads `order_details` from its beginning.
//!
//! Copies of one order that reach one instance at the same instant take turns ([`Accepted::turn`]):
//! the first is written, the others are answered as it was.
//!
//! [redb]: https://www.redb.org

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use common::KafkaSettings;
use common::events::{Order, decode_json};
use common::kafka::read::{self, Reading, Start};
use common::kafka::{self, state};
use metrics::{counter, gauge};
use rdkafka::message::{BorrowedMessage, Message};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What the index knows of an order's `order_id`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Known {
    /// Never accepted.
    New,
    /// Accepted before with the same content, at `time`.
    Same { time: f64 },
    /// Accepted before with different content.
    Different,
}

/// An order as the index keeps it: its content's digest and when it was accepted.
type Entry = ([u8; 16], f64);

/// The orders read from `order_details`: `order_id` → entry.
const ORDERS: TableDefinition<&str, Entry> = TableDefinition::new("accepted");

/// How many locks the `order_id`s are spread over: requests for different orders rarely
/// wait for each other.
const TURNS: usize = 1024;
/// Records read from the log per write to the database (fewer when reading pauses).
const BATCH: usize = 2_000;

/// The accepted orders, shared by the request handlers and the reader of `order_details`.
pub struct Accepted {
    /// Read from `order_details`, with the checkpoints read up to.
    db: Database,
    /// Written by this instance and not read back from the log yet.
    own: RwLock<HashMap<String, Entry>>,
    /// Entries in `db`.
    known: AtomicU64,
    caught_up: AtomicBool,
    turns: Box<[tokio::sync::Mutex<()>]>,
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted")
            .field("known", &self.known)
            .finish_non_exhaustive()
    }
}

impl Accepted {
    /// The index whose database is at `path` (in memory: `None`).
    pub fn open(path: Option<&Path>) -> anyhow::Result<Self> {
        let db = state::open_copy(path)?;
        let known = match state::readable(&db.begin_read()?, ORDERS)? {
            Some(table) => table.len()?,
            None => 0,
        };
        gauge!("flatpack_orders_known").set(known as f64);
        Ok(Self {
            db,
            own: RwLock::default(),
            known: AtomicU64::new(known),
            caught_up: AtomicBool::default(),
            turns: (0..TURNS).map(|_| tokio::sync::Mutex::new(())).collect(),
        })
    }

    /// Waits until no other request for `order`'s `order_id` is between its [`check`] and
    /// its [`written`] on this instance, and holds that turn until the guard is dropped.
    ///
    /// [`check`]: Accepted::check
    /// [`written`]: Accepted::written
    pub async fn turn(&self, order: &Order) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{BuildHasher, RandomState};
        static HASHER: std::sync::LazyLock<RandomState> =
            std::sync::LazyLock::new(RandomState::new);
        let index = HASHER.hash_one(key(order)) as usize % TURNS;
        self.turns[index].lock().await
    }

    /// `order_details` was read up to the end it had when this instance started: every
    /// order accepted before is known.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// What is known of `order`'s `order_id`.
    pub fn check(&self, order: &Order) -> anyhow::Result<Known> {
        let key = key(order);
        let entry = match self.logged(&key)? {
            Some(entry) => Some(entry),
            None => self
                .own
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .copied(),
        };
        Ok(match entry {
            None => Known::New,
            Some((content, time)) if content == order.digest() => Known::Same { time },
            Some(_) => Known::Different,
        })
    }

    /// The entry read from the log under `key`.
    fn logged(&self, key: &str) -> anyhow::Result<Option<Entry>> {
        let Some(table) = state::readable(&self.db.begin_read()?, ORDERS)? else {
            return Ok(None);
        };
        Ok(table.get(key)?.map(|entry| entry.value()))
    }

    /// Notes an order this instance wrote and the broker acknowledged.
    pub fn written(&self, order: &Order) {
        let mut own = self.own.write().unwrap_or_else(|p| p.into_inner());
        own.entry(key(order))
            .or_insert((order.digest(), order.time));
    }

    /// Writes orders read from `order_details` into the database, the first record of an
    /// `order_id` winning, with the offsets read up to (`next`, by partition).
    fn read(
        &self,
        orders: &[(String, Entry)],
        next: &HashMap<i32, i64>,
        durability: Durability,
    ) -> anyhow::Result<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability)?;
        let mut added = 0;
        {
            let mut table = txn.open_table(ORDERS)?;
            for (key, entry) in orders {
                if table.get(key.as_str())?.is_none() {
                    table.insert(key.as_str(), entry)?;
                    added += 1;
                }
            }
        }
        state::advance(&txn, next)?;
        txn.commit()?;
        let known = self.known.fetch_add(added, Ordering::AcqRel) + added;
        gauge!("flatpack_orders_known").set(known as f64);
        // The log now answers for these: what this instance noted of them is dropped.
        let mut own = self.own.write().unwrap_or_else(|p| p.into_inner());
        for (key, _) in orders {
            own.remove(key);
        }
        Ok(())
    }

    /// How many `order_id`s are known.
    pub fn len(&self) -> usize {
        let own = self.own.read().unwrap_or_else(|p| p.into_inner()).len();
        self.known.load(Ordering::Acquire) as usize + own
    }

    /// No `order_id` is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The index key of an order: its `order_id` as the message key spells it (what
/// transactions deduplicates by).
fn key(order: &Order) -> String {
    order.order_id.to_string()
}

/// Reads `topic` into `accepted` on a thread of its own until `stop` is cancelled, from
/// where the database's checkpoints say it was read up to, waiting for the broker as long
/// as it takes.
pub fn follow(
    settings: &KafkaSettings,
    topic: &str,
    accepted: Arc<Accepted>,
    stop: CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    // The group id only satisfies librdkafka: nothing is committed.
    let group = settings.topics().scoped(&format!(
        "orders-accepted-{}-{}",
        std::process::id(),
        common::events::now_epoch_seconds() as u64
    ));
    // What this instance writes it knows at once; the others' writes may come a fetch later.
    let consumer = kafka::follower(settings, "orders", &group, Duration::from_millis(100))?;
    let from = state::checkpoints(&accepted.db).context("reading the index's checkpoints")?;
    info!(
        topic,
        ?from,
        known = accepted.known.load(Ordering::Acquire),
        "reading the accepted orders on from the index's checkpoints"
    );
    let topic = topic.to_owned();
    let thread = std::thread::Builder::new()
        .name("orders-accepted".into())
        .spawn(move || {
            let mut reader = LogReader {
                accepted,
                topic: topic.clone(),
                restored: 0,
                batch: Vec::with_capacity(BATCH),
                next: HashMap::new(),
                syncs: state::Syncs::default(),
                started: Instant::now(),
            };
            read::follow(&consumer, &topic, Start::After(&from), &stop, &mut reader);
        })?;
    Ok(thread)
}

/// Gathers what is read from `order_details` and writes it to the index in batches.
struct LogReader {
    accepted: Arc<Accepted>,
    topic: String,
    /// Records read before catching up.
    restored: u64,
    batch: Vec<(String, Entry)>,
    /// The offset after the last record read, by partition.
    next: HashMap<i32, i64>,
    syncs: state::Syncs,
    started: Instant,
}

impl LogReader {
    fn write(&mut self) {
        if self.next.is_empty() {
            return;
        }
        let durability = self.syncs.next();
        match self.accepted.read(&self.batch, &self.next, durability) {
            Ok(()) => {
                self.batch.clear();
                self.next.clear();
                self.syncs.written(durability);
            }
            // Kept, and written with the next batch.
            Err(err) => warn!(
                cause = format!("{err:#}"),
                "the index of accepted orders could not be written; keeping the orders read in memory"
            ),
        }
    }
}

impl Reading for LogReader {
    fn message(&mut self, message: &BorrowedMessage<'_>) {
        if !self.accepted.caught_up() {
            self.restored += 1;
        }
        self.next.insert(message.partition(), message.offset() + 1);
        if let Some(payload) = message.payload() {
            match decode_json::<Order>(payload) {
                Ok(order) => self.batch.push((key(&order), (order.digest(), order.time))),
                // transactions sends it to the dead-letter topic; nothing to answer a retry with.
                Err(err) => warn!(
                    partition = message.partition(),
                    offset = message.offset(),
                    cause = %err.problem,
                    "an order on order_details does not decode; a retry of it is taken as new"
                ),
            }
        }
        if self.batch.len() >= BATCH {
            self.write();
        }
    }

    fn idle(&mut self) {
        self.write();
    }

    fn caught_up(&mut self) {
        info!(changelog = %self.topic, restored = self.restored, elapsed = ?self.started.elapsed(), known = self.accepted.known.load(Ordering::Acquire), "state restored");
        counter!("flatpack_state_restored_total", "changelog" => self.topic.clone())
            .increment(self.restored);
        self.accepted.caught_up.store(true, Ordering::Release);
    }
}

impl Drop for LogReader {
    /// Makes the index durable (an empty commit with redb's immediate durability), so that
    /// the next start reads nothing it already has.
    fn drop(&mut self) {
        self.write();
        if let Err(err) = state::make_durable(&self.accepted.db) {
            warn!(
                cause = format!("{err:#}"),
                "the index of accepted orders could not be made durable"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order(id: u64, price: &str, time: f64) -> Order {
        serde_json::from_value(json!({
            "user_id": 7, "order_id": id, "user_email": "anna@example.com",
            "order_details": { "price": price.parse::<f64>().unwrap(), "item": "BILLY" },
            "time": time,
        }))
        .unwrap()
    }

    /// What the reader of `order_details` writes after reading `orders` up to `next`.
    fn logged(accepted: &Accepted, orders: &[Order], next: &[(i32, i64)]) {
        let orders: Vec<_> = orders
            .iter()
            .map(|order| (key(order), (order.digest(), order.time)))
            .collect();
        let next = next.iter().copied().collect();
        accepted.read(&orders, &next, Durability::None).unwrap();
    }

    #[test]
    fn a_retry_is_known_with_its_first_time_and_other_content_under_the_id_is_different() {
        let accepted = Accepted::open(None).unwrap();
        let check = |order| accepted.check(&order).unwrap();
        assert_eq!(check(order(1, "10.00", 5.0)), Known::New);
        accepted.written(&order(1, "10.00", 5.0));
        assert_eq!(check(order(1, "10.00", 9.0)), Known::Same { time: 5.0 });
        assert_eq!(check(order(1, "11.00", 9.0)), Known::Different);
        assert_eq!(check(order(2, "10.00", 9.0)), Known::New);
        // A second write of the same id keeps the first.
        accepted.written(&order(1, "10.00", 7.0));
        assert_eq!(check(order(1, "10.00", 9.0)), Known::Same { time: 5.0 });
    }

    #[test]
    fn the_first_record_in_the_log_replaces_what_this_instance_noted_of_its_own_write() {
        let accepted = Accepted::open(None).unwrap();
        accepted.written(&order(1, "10.00", 5.0));
        // Another instance's order under the same id reached the log first.
        logged(&accepted, &[order(1, "20.00", 4.0)], &[(0, 1)]);
        let check = |order| accepted.check(&order).unwrap();
        assert_eq!(check(order(1, "20.00", 9.0)), Known::Same { time: 4.0 });
        // Ours, later in the log, changes nothing.
        logged(&accepted, &[order(1, "10.00", 5.0)], &[(0, 2)]);
        assert_eq!(check(order(1, "10.00", 9.0)), Known::Different);
        assert_eq!(accepted.len(), 1);
    }

    #[test]
    fn the_index_on_disk_outlives_the_process_with_the_offsets_it_was_read_up_to() {
        let dir = std::env::temp_dir().join(format!("flatpack-accepted-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("orders-accepted-5002.redb");
        {
            let accepted = Accepted::open(Some(&path)).unwrap();
            logged(
                &accepted,
                &[order(1, "10.00", 5.0), order(2, "12.00", 6.0)],
                &[(0, 7), (3, 2)],
            );
            // Noted of its own write and never read back: not kept.
            accepted.written(&order(3, "14.00", 7.0));
        }
        let accepted = Accepted::open(Some(&path)).unwrap();
        let check = |order| accepted.check(&order).unwrap();
        assert_eq!(check(order(2, "12.00", 9.0)), Known::Same { time: 6.0 });
        assert_eq!(check(order(1, "11.00", 9.0)), Known::Different);
        assert_eq!(check(order(3, "14.00", 9.0)), Known::New);
        assert_eq!(accepted.len(), 2);
        assert_eq!(
            state::checkpoints(&accepted.db).unwrap(),
            HashMap::from([(0, 7), (3, 2)])
        );
        drop(accepted);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

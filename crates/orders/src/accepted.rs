//! The orders accepted so far, by `order_id`: what a client's retry is answered with.
//!
//! Every orders instance reads `order_details` from its beginning into this index, and adds
//! what it wrote itself as soon as the broker acknowledged it. So a retry finds the order it
//! repeats whichever instance took the first copy and however often the instances were
//! restarted since, as long as the topic keeps the first copy (its retention). The log is
//! the truth: the first record of an `order_id` in `order_details` is the order that
//! transactions decides, and it replaces what an instance noted of its own write (two
//! instances given different orders under one `order_id` at the same instant).
//!
//! An entry is 16 bytes of digest for the `order_id`, 16 for the order's content and the
//! time it was accepted.
//!
//! Copies of one order that reach one instance at the same instant take turns ([`Accepted::turn`]):
//! the first is written, the others are answered as it was.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::KafkaSettings;
use common::events::{Order, decode_json};
use common::kafka::{self, read};
use metrics::gauge;
use rdkafka::message::{BorrowedMessage, Message};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::warn;

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

#[derive(Debug, Clone, Copy)]
struct Entry {
    content: [u8; 16],
    time: f64,
    /// Read from `order_details` (else noted by this instance when its write was
    /// acknowledged, and replaced by the first record the log holds).
    from_log: bool,
}

/// How many locks the `order_id`s are spread over: requests for different orders rarely
/// wait for each other.
const TURNS: usize = 1024;

/// The accepted orders, shared by the request handlers and the reader of `order_details`.
#[derive(Debug)]
pub struct Accepted {
    orders: RwLock<HashMap<[u8; 16], Entry>>,
    caught_up: AtomicBool,
    turns: Box<[tokio::sync::Mutex<()>]>,
}

impl Default for Accepted {
    fn default() -> Self {
        Self {
            orders: RwLock::default(),
            caught_up: AtomicBool::default(),
            turns: (0..TURNS).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }
}

impl Accepted {
    /// Waits until no other request for `order`'s `order_id` is between its [`check`] and
    /// its [`written`] on this instance, and holds that turn until the guard is dropped.
    ///
    /// [`check`]: Accepted::check
    /// [`written`]: Accepted::written
    pub async fn turn(&self, order: &Order) -> tokio::sync::MutexGuard<'_, ()> {
        let key = key(order);
        let index = u16::from_le_bytes([key[0], key[1]]) as usize % TURNS;
        self.turns[index].lock().await
    }

    /// `order_details` was read up to the end it had when this instance started: every
    /// order accepted before is known.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// What is known of `order`'s `order_id`.
    pub fn check(&self, order: &Order) -> Known {
        let orders = self.orders.read().unwrap_or_else(|p| p.into_inner());
        match orders.get(&key(order)) {
            None => Known::New,
            Some(entry) if entry.content == order.digest() => Known::Same { time: entry.time },
            Some(_) => Known::Different,
        }
    }

    /// Notes an order this instance wrote and the broker acknowledged.
    pub fn written(&self, order: &Order) {
        let mut orders = self.orders.write().unwrap_or_else(|p| p.into_inner());
        orders.entry(key(order)).or_insert(Entry {
            content: order.digest(),
            time: order.time,
            from_log: false,
        });
        gauge!("flatpack_orders_known").set(orders.len() as f64);
    }

    /// Notes an order read from `order_details`: the first record of an `order_id` wins.
    fn read(&self, order: &Order) {
        let mut orders = self.orders.write().unwrap_or_else(|p| p.into_inner());
        let entry = Entry {
            content: order.digest(),
            time: order.time,
            from_log: true,
        };
        orders
            .entry(key(order))
            .and_modify(|known| {
                if !known.from_log {
                    *known = entry;
                }
            })
            .or_insert(entry);
        gauge!("flatpack_orders_known").set(orders.len() as f64);
    }

    /// How many `order_id`s are known.
    pub fn len(&self) -> usize {
        self.orders.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// No `order_id` is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The index key of an order: its `order_id` as the message key spells it (what
/// transactions deduplicates by).
fn key(order: &Order) -> [u8; 16] {
    let digest = Sha256::digest(order.order_id.to_string().as_bytes());
    let mut key = [0; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// Reads `topic` into `accepted` on a thread of its own until `stop` is cancelled, waiting
/// for the broker as long as it takes.
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
    let consumer = kafka::reader_to_end(settings, "orders", &group, Duration::from_millis(100))?;
    let topic = topic.to_owned();
    let thread = std::thread::Builder::new()
        .name("orders-accepted".into())
        .spawn(move || {
            read::follow_from_beginning(
                &consumer,
                &topic,
                &stop,
                |message| note(message, &accepted),
                || accepted.caught_up.store(true, Ordering::Release),
            );
        })?;
    Ok(thread)
}

fn note(message: &BorrowedMessage<'_>, accepted: &Accepted) {
    let Some(payload) = message.payload() else {
        return;
    };
    match decode_json::<Order>(payload) {
        Ok(order) => accepted.read(&order),
        // transactions sends it to the dead-letter topic; nothing to answer a retry with.
        Err(err) => warn!(
            partition = message.partition(),
            offset = message.offset(),
            cause = %err.problem,
            "an order on order_details does not decode; a retry of it is taken as new"
        ),
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

    #[test]
    fn a_retry_is_known_with_its_first_time_and_other_content_under_the_id_is_different() {
        let accepted = Accepted::default();
        assert_eq!(accepted.check(&order(1, "10.00", 5.0)), Known::New);
        accepted.written(&order(1, "10.00", 5.0));
        assert_eq!(
            accepted.check(&order(1, "10.00", 9.0)),
            Known::Same { time: 5.0 }
        );
        assert_eq!(accepted.check(&order(1, "11.00", 9.0)), Known::Different);
        assert_eq!(accepted.check(&order(2, "10.00", 9.0)), Known::New);
        // A second write of the same id keeps the first.
        accepted.written(&order(1, "10.00", 7.0));
        assert_eq!(
            accepted.check(&order(1, "10.00", 9.0)),
            Known::Same { time: 5.0 }
        );
    }

    #[test]
    fn the_first_record_in_the_log_replaces_what_this_instance_noted_of_its_own_write() {
        let accepted = Accepted::default();
        accepted.written(&order(1, "10.00", 5.0));
        // Another instance's order under the same id reached the log first.
        accepted.read(&order(1, "20.00", 4.0));
        assert_eq!(
            accepted.check(&order(1, "20.00", 9.0)),
            Known::Same { time: 4.0 }
        );
        // Ours, later in the log, changes nothing.
        accepted.read(&order(1, "10.00", 5.0));
        assert_eq!(accepted.check(&order(1, "10.00", 9.0)), Known::Different);
        assert_eq!(accepted.len(), 1);
    }
}

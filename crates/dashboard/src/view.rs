//! The dashboard's in-memory view of the four topics: where each order is in the pipeline,
//! how long each step took, and the latest analytics figures.
//!
//! Pure logic: the Kafka readers decode messages into [`Event`]s and [`View::apply`] them;
//! the HTTP side asks for snapshots. Nothing here talks to the broker or the clock (callers
//! pass `now`), so every rule is unit-tested below.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use common::events::{DecodeError, decode_json, utc_day};
use common::{AnalyticsResult, EmailSent, Id, Money, Order, OrderDecision, Topic};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// How many days of analytics figures the view keeps (the chart and API show fewer).
const MAX_DAYS: usize = 400;

/// One decoded message from one of the four topics.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Placed(Order),
    Decided(OrderDecision),
    Emailed(EmailSent),
    Analytics(AnalyticsResult),
}

impl Event {
    /// Decodes a message's payload by the topic it came from.
    pub fn decode(topic: Topic, payload: &[u8]) -> Result<Self, DecodeError> {
        Ok(match topic {
            Topic::OrderDetails => Event::Placed(decode_json(payload)?),
            Topic::OrderConfirmed => Event::Decided(decode_json(payload)?),
            Topic::OrderEmailSent => Event::Emailed(decode_json(payload)?),
            Topic::AnalyticsResult => Event::Analytics(decode_json(payload)?),
        })
    }
}

/// Where an order is, as a customer-service person would ask: placed, decided, e-mailed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Placed,
    Decided,
    Emailed,
}

/// One order's progress through the pipeline, as the API and the page show it.
///
/// Holds the masked e-mail address only: the dashboard never shows or keeps the full one.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct OrderProgress {
    pub order_id: Id,
    pub user_id: Id,
    /// `a***@example.com`.
    pub user_email: String,
    pub price: Money,
    /// The customer's `order_details` fields other than `price`, as they came (shown as
    /// text), less anything that looks like a payment credential.
    #[schema(value_type = Object)]
    pub details: Details,
    pub stage: Stage,
    /// When the order was placed (`time`), epoch seconds.
    pub placed_at: f64,
    /// `pending` until the decision is seen, then `confirmed` or `declined`.
    #[schema(value_type = String, pattern = "^(pending|confirmed|declined)$")]
    pub status: &'static str,
    pub reason: Option<String>,
    /// The decision's `decided_at`, else the decision message's broker timestamp.
    pub decided_at: Option<f64>,
    /// Seconds from placement to decision.
    pub decision_secs: Option<f64>,
    /// Whether the e-mail went out; `None` until the email service reported.
    pub email_sent: Option<bool>,
    pub email_kind: Option<String>,
    /// The e-mail's `sent_at`, else the message's broker timestamp.
    pub emailed_at: Option<f64>,
    /// Seconds from decision (or placement, when the decision time is unknown) to e-mail.
    pub email_secs: Option<f64>,
}

impl OrderProgress {
    fn new(order: &Order) -> Self {
        Self {
            order_id: order.order_id.clone(),
            user_id: order.user_id.clone(),
            user_email: order.user_email.masked(),
            price: order.order_details.price,
            details: Details(
                order
                    .order_details
                    .extra
                    .iter()
                    .filter(|(key, _)| !is_payment_secret(key))
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect(),
            ),
            stage: Stage::Placed,
            placed_at: order.time,
            status: "pending",
            reason: None,
            decided_at: None,
            decision_secs: None,
            email_sent: None,
            email_kind: None,
            emailed_at: None,
            email_secs: None,
        }
    }

    fn refresh(&mut self) {
        self.decision_secs = self.decided_at.map(|t| step(self.placed_at, t));
        self.email_secs = self
            .emailed_at
            .map(|t| step(self.decided_at.unwrap_or(self.placed_at), t));
        self.stage = if self.email_sent.is_some() {
            Stage::Emailed
        } else if self.decided_at.is_some() || self.status != "pending" {
            Stage::Decided
        } else {
            Stage::Placed
        };
    }
}

/// The fields of `order_details` kept for display, shown as a JSON object.
///
/// A slice rather than a map: an order has a few of them, and a map's smallest node is about
/// 600 bytes, a third of what the view kept per order.
#[derive(Debug, Clone, PartialEq)]
pub struct Details(Box<[(String, Value)]>);

impl Details {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value)
    }
}

impl Serialize for Details {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(key, value)| (key, value)))
    }
}

/// Fields of `order_details` that look like payment credentials are never kept or shown.
fn is_payment_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["token", "card", "cvv", "cvc", "iban", "secret", "password"]
        .iter()
        .any(|word| key.contains(word))
}

/// Duration of a step in seconds, to the millisecond; never negative (clocks of different
/// services may disagree by a little).
fn step(from: f64, to: f64) -> f64 {
    ((to - from).max(0.0) * 1000.0).round() / 1000.0
}

/// One day's figures from analytics.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DayTotals {
    pub day: String,
    /// Confirmed orders.
    pub orders: u64,
    /// Revenue of confirmed orders, exact, two decimals.
    pub revenue: String,
    pub declined: u64,
}

/// The all-time figures of the analytics message with the highest `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AllTime {
    pub orders: u64,
    pub revenue: String,
    pub declined: u64,
    pub seq: u64,
}

/// What the view itself sees of the pipeline (bounded by the orders it keeps).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Pipeline {
    /// Orders kept in the view.
    pub tracked: usize,
    /// Of those, placed today (UTC).
    pub placed_today: usize,
    pub awaiting_decision: usize,
    /// Decided, but the email service has not reported yet.
    pub awaiting_email: usize,
    /// Of the orders awaiting their decision, those placed longer ago than the stuck time.
    pub stuck_awaiting_decision: usize,
    /// Of the orders awaiting their e-mail, those decided longer ago than the stuck time.
    pub stuck_awaiting_email: usize,
    /// The latest stuck orders (at most [`MAX_STUCK_LISTED`]), longest waiting first.
    pub stuck: Vec<StuckOrder>,
    /// Each stage's consumer group: how many messages of its topic it has not committed yet
    /// (empty until first measured).
    pub lag: Vec<GroupLag>,
}

/// How many stuck orders the totals list by id.
pub const MAX_STUCK_LISTED: usize = 20;

/// An order that waited longer than the stuck time for its next step.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct StuckOrder {
    pub order_id: Id,
    /// The step it waits for: `decision` or `email`.
    #[schema(value_type = String, pattern = "^(decision|email)$")]
    pub awaiting: &'static str,
    /// Seconds it has waited so far.
    pub waiting_secs: f64,
}

/// A stage's consumer-group lag on the topic it reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct GroupLag {
    /// The service whose group it is: `transactions`, `analytics`, `email`.
    #[schema(value_type = String)]
    pub stage: &'static str,
    pub topic: String,
    /// Messages past the group's committed offsets (transaction markers included), summed
    /// over the topic's partitions.
    pub lag: i64,
}

/// `GET /api/totals`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TotalsView {
    /// `None` until analytics wrote its first result.
    pub all_time: Option<AllTime>,
    pub today: DayTotals,
    /// The latest days with figures, oldest first.
    pub days: Vec<DayTotals>,
    pub pipeline: Pipeline,
    /// Messages that could not be decoded and were skipped since start.
    pub skipped_messages: u64,
}

/// One minute of the live chart: orders placed in it, by where they are now.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Minute {
    /// Start of the minute, epoch seconds.
    pub start: i64,
    pub confirmed: u64,
    pub declined: u64,
    pub pending: u64,
}

/// Everything the page shows, sent on every change over Server-Sent Events.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Snapshot {
    pub now: f64,
    pub totals: TotalsView,
    pub minutes: Vec<Minute>,
    pub orders: Vec<OrderProgress>,
}

/// The view. Bounded: it keeps the latest `max_orders` orders by placement time (older ones
/// are dropped as newer ones arrive, so memory stays flat however long the topics are) and
/// the latest `MAX_DAYS` days of analytics figures.
#[derive(Debug)]
pub struct View {
    max_orders: usize,
    /// Seconds an order may wait for its next step before it counts as stuck.
    stuck_after: f64,
    lag: Vec<GroupLag>,
    /// Boxed: a table's free slots then cost a pointer each, not a whole entry.
    orders: HashMap<Id, Box<OrderProgress>>,
    /// (placement time in microseconds, id): the eviction and "latest orders" order.
    by_placement: BTreeSet<(i64, Id)>,
    latest: Option<AnalyticsResult>,
    days: BTreeMap<String, AnalyticsResult>,
    skipped: u64,
}

impl View {
    pub fn new(max_orders: usize, stuck_after: f64) -> Self {
        Self {
            max_orders: max_orders.max(1),
            stuck_after,
            lag: Vec::new(),
            orders: HashMap::new(),
            by_placement: BTreeSet::new(),
            latest: None,
            days: BTreeMap::new(),
            skipped: 0,
        }
    }

    /// The latest measurement of the stages' consumer-group lag.
    pub fn set_lag(&mut self, lag: Vec<GroupLag>) {
        self.lag = lag;
    }

    /// Counts a message that could not be decoded.
    pub fn skipped(&mut self) {
        self.skipped += 1;
    }

    /// Applies one message. `record_time` is the message's broker timestamp (epoch seconds),
    /// used when the message does not say when its step happened.
    ///
    /// Topics are read independently, so a decision or e-mail may arrive before its order:
    /// each carries the order's fields, and whichever comes first creates the entry.
    pub fn apply(&mut self, event: &Event, record_time: Option<f64>) {
        match event {
            Event::Placed(order) => {
                self.entry(order);
            }
            Event::Decided(decision) => {
                if let Some(progress) = self.entry(&decision.order) {
                    progress.status = decision.status.as_str();
                    progress.reason = decision.reason.clone();
                    progress.decided_at = decision.decided_at.or(record_time);
                    progress.refresh();
                }
            }
            Event::Emailed(email) => {
                if let Some(progress) = self.entry(&email.order) {
                    progress.email_sent = Some(email.status);
                    progress.email_kind = email.kind.map(|kind| kind.as_str().to_owned());
                    progress.emailed_at = email.sent_at.or(record_time);
                    progress.refresh();
                }
            }
            Event::Analytics(result) => self.analytics(result),
        }
    }

    /// The order's entry, created when new; `None` when the order is older than every kept
    /// one and the view is full.
    fn entry(&mut self, order: &Order) -> Option<&mut OrderProgress> {
        if !self.orders.contains_key(&order.order_id) {
            let key = (micros(order.time), order.order_id.clone());
            self.by_placement.insert(key);
            self.orders
                .insert(order.order_id.clone(), Box::new(OrderProgress::new(order)));
            while self.orders.len() > self.max_orders {
                let Some((_, oldest)) = self.by_placement.pop_first() else {
                    break;
                };
                self.orders.remove(&oldest);
            }
        }
        self.orders.get_mut(&order.order_id).map(Box::as_mut)
    }

    fn analytics(&mut self, result: &AnalyticsResult) {
        // The highest seq holds the current totals; ties go to the later message (the
        // seed's messages all have seq 0).
        if self.latest.as_ref().is_none_or(|l| result.seq >= l.seq) {
            self.latest = Some(result.clone());
        }
        if !result.day.is_empty() {
            let newer = self
                .days
                .get(&result.day)
                .is_none_or(|d| result.seq >= d.seq);
            if newer {
                self.days.insert(result.day.clone(), result.clone());
            }
            while self.days.len() > MAX_DAYS {
                self.days.pop_first();
            }
        }
    }

    /// One order, by the id as a path gives it: `1001` matches the number or the string.
    pub fn order(&self, id: &str) -> Option<&OrderProgress> {
        let as_int = id.parse::<i64>().ok().map(Id::Int);
        as_int
            .and_then(|id| self.orders.get(&id))
            .or_else(|| self.orders.get(&Id::Str(id.to_owned())))
            .map(Box::as_ref)
    }

    /// The latest `limit` orders by placement time, newest first.
    pub fn latest_orders(&self, limit: usize) -> Vec<OrderProgress> {
        self.by_placement
            .iter()
            .rev()
            .filter_map(|(_, id)| self.orders.get(id))
            .take(limit)
            .map(|order| OrderProgress::clone(order))
            .collect()
    }

    pub fn totals(&self, now: f64) -> TotalsView {
        let today = utc_day(now);
        let figures = |r: &AnalyticsResult| DayTotals {
            day: r.day.clone(),
            orders: r.day_orders_count,
            revenue: money(r.day_revenue),
            declined: r.day_declined_count,
        };
        let mut pipeline = Pipeline {
            tracked: self.orders.len(),
            placed_today: 0,
            awaiting_decision: 0,
            awaiting_email: 0,
            stuck_awaiting_decision: 0,
            stuck_awaiting_email: 0,
            stuck: Vec::new(),
            lag: self.lag.clone(),
        };
        for order in self.orders.values() {
            if utc_day(order.placed_at) == today {
                pipeline.placed_today += 1;
            }
            let waiting = match (order.status, order.email_sent) {
                ("pending", _) => {
                    pipeline.awaiting_decision += 1;
                    Some(("decision", now - order.placed_at))
                }
                (_, None) => {
                    pipeline.awaiting_email += 1;
                    Some(("email", now - order.decided_at.unwrap_or(order.placed_at)))
                }
                _ => None,
            };
            if let Some((awaiting, secs)) = waiting
                && secs > self.stuck_after
            {
                match awaiting {
                    "decision" => pipeline.stuck_awaiting_decision += 1,
                    _ => pipeline.stuck_awaiting_email += 1,
                }
                pipeline.stuck.push(StuckOrder {
                    order_id: order.order_id.clone(),
                    awaiting,
                    waiting_secs: step(0.0, secs),
                });
            }
        }
        pipeline
            .stuck
            .sort_by(|a, b| b.waiting_secs.total_cmp(&a.waiting_secs));
        pipeline.stuck.truncate(MAX_STUCK_LISTED);
        TotalsView {
            all_time: self.latest.as_ref().map(|r| AllTime {
                orders: r.total_orders_count,
                // Our messages carry the exact figure; the seed's only the number.
                revenue: money(if r.total_revenue_exact.is_zero() {
                    r.total_revenue
                } else {
                    r.total_revenue_exact
                }),
                declined: r.total_declined_count,
                seq: r.seq,
            }),
            today: self.days.get(&today).map(figures).unwrap_or(DayTotals {
                day: today,
                orders: 0,
                revenue: money(Decimal::ZERO),
                declined: 0,
            }),
            days: self
                .days
                .values()
                .rev()
                .take(30)
                .rev()
                .map(figures)
                .collect(),
            pipeline,
            skipped_messages: self.skipped,
        }
    }

    /// Orders placed in each of the last `count` minutes up to `now`, oldest first.
    pub fn minutes(&self, now: f64, count: usize) -> Vec<Minute> {
        let current = (now as i64).div_euclid(60) * 60;
        let first = current - 60 * (count as i64 - 1);
        let mut minutes: Vec<Minute> = (0..count as i64)
            .map(|i| Minute {
                start: first + 60 * i,
                confirmed: 0,
                declined: 0,
                pending: 0,
            })
            .collect();
        let from = micros(first as f64);
        for (placed, id) in self.by_placement.range((from, Id::Int(i64::MIN))..) {
            let index = (placed / 1_000_000 - first).div_euclid(60);
            let (Some(minute), Some(order)) = (
                usize::try_from(index).ok().and_then(|i| minutes.get_mut(i)),
                self.orders.get(id),
            ) else {
                continue;
            };
            match order.status {
                "confirmed" => minute.confirmed += 1,
                "declined" => minute.declined += 1,
                _ => minute.pending += 1,
            }
        }
        minutes
    }

    pub fn snapshot(&self, now: f64, orders: usize) -> Snapshot {
        Snapshot {
            now,
            totals: self.totals(now),
            minutes: self.minutes(now, 30),
            orders: self.latest_orders(orders),
        }
    }
}

fn micros(epoch_seconds: f64) -> i64 {
    (epoch_seconds * 1e6) as i64
}

fn money(amount: Decimal) -> String {
    format!("{:.2}", amount)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use common::DecisionStatus;
    use serde_json::json;

    const DAY: f64 = 1_764_000_000.0; // 2025-11-24T16:00:00Z

    fn order(id: i64, time: f64) -> Order {
        serde_json::from_value(json!({
            "user_id": 7, "order_id": id, "user_email": "anna@example.com",
            "order_details": {"price": "349.50", "item": "BILLY", "payment_token": "tok_x"},
            "time": time
        }))
        .unwrap()
    }

    fn decision(id: i64, time: f64, status: DecisionStatus, decided_at: Option<f64>) -> Event {
        Event::Decided(OrderDecision {
            order: order(id, time),
            status,
            reason: (status == DecisionStatus::Declined).then(|| "card declined".into()),
            decided_at,
        })
    }

    fn analytics(seq: u64, day: &str, total: &str, day_revenue: &str) -> Event {
        Event::Analytics(
            serde_json::from_value(json!({
                "total_revenue": total.parse::<f64>().unwrap(), "total_orders_count": seq,
                "total_revenue_exact": total, "total_declined_count": 1,
                "day": day, "day_revenue": day_revenue.parse::<f64>().unwrap(),
                "day_orders_count": seq, "day_declined_count": 1, "seq": seq, "schema": 1
            }))
            .unwrap(),
        )
    }

    #[test]
    fn orders_waiting_longer_than_the_stuck_time_are_counted_and_listed_longest_first() {
        let mut view = View::new(10, 60.0);
        // 1 waits for its decision since DAY, 2 since DAY + 50; 3 was decided at DAY + 10 and
        // waits for its e-mail; 4 is done.
        view.apply(&Event::Placed(order(1, DAY)), None);
        view.apply(&Event::Placed(order(2, DAY + 50.0)), None);
        view.apply(
            &decision(3, DAY, DecisionStatus::Declined, Some(DAY + 10.0)),
            None,
        );
        view.apply(
            &decision(4, DAY, DecisionStatus::Confirmed, Some(DAY + 1.0)),
            None,
        );
        let emailed: EmailSent = serde_json::from_value(json!({
            "user_id": 7, "order_id": 4, "user_email": "anna@example.com",
            "order_details": {"price": 1}, "time": DAY, "status": true
        }))
        .unwrap();
        view.apply(&Event::Emailed(emailed), Some(DAY + 2.0));

        let pipeline = view.totals(DAY + 59.0).pipeline;
        assert_eq!(
            (pipeline.awaiting_decision, pipeline.awaiting_email),
            (2, 1)
        );
        assert_eq!(pipeline.stuck_awaiting_decision, 0);
        assert!(pipeline.stuck.is_empty());

        let pipeline = view.totals(DAY + 100.0).pipeline;
        assert_eq!(
            pipeline.stuck_awaiting_decision, 1,
            "order 2 waited 50 s only"
        );
        assert_eq!(pipeline.stuck_awaiting_email, 1);
        let listed: Vec<(String, &str, f64)> = pipeline
            .stuck
            .iter()
            .map(|o| (o.order_id.to_string(), o.awaiting, o.waiting_secs))
            .collect();
        assert_eq!(
            listed,
            [
                ("1".to_owned(), "decision", 100.0),
                ("3".to_owned(), "email", 90.0)
            ]
        );
    }

    #[test]
    fn an_order_moves_from_placed_to_decided_to_emailed_with_step_durations() {
        let mut view = View::new(10, 60.0);
        view.apply(&Event::Placed(order(1, DAY)), Some(DAY + 0.01));
        let placed = view.order("1").unwrap();
        assert_eq!(placed.stage, Stage::Placed);
        assert_eq!(placed.status, "pending");
        assert_eq!(placed.user_email, "a***@example.com");
        assert_eq!(placed.details.get("item"), Some(&json!("BILLY")));
        let shown = serde_json::to_value(placed).unwrap();
        assert_eq!(shown["details"], json!({"item": "BILLY"}));
        assert!(
            placed.details.get("payment_token").is_none(),
            "payment credentials are not kept"
        );

        view.apply(
            &decision(1, DAY, DecisionStatus::Confirmed, Some(DAY + 0.25)),
            Some(DAY + 9.0),
        );
        let decided = view.order("1").unwrap();
        assert_eq!(decided.stage, Stage::Decided);
        assert_eq!(decided.status, "confirmed");
        assert_eq!(decided.decided_at, Some(DAY + 0.25), "decided_at wins");
        assert_eq!(decided.decision_secs, Some(0.25));

        let email = Event::decode(
            Topic::OrderEmailSent,
            serde_json::to_vec(&json!({
                "user_id": 7, "order_id": 1, "user_email": "anna@example.com",
                "order_details": {"price": 349.5}, "time": DAY,
                "status": true, "kind": "confirmation", "sent_at": DAY + 1.75
            }))
            .unwrap()
            .as_slice(),
        )
        .unwrap();
        view.apply(&email, None);
        let emailed = view.order("1").unwrap();
        assert_eq!(emailed.stage, Stage::Emailed);
        assert_eq!(emailed.email_sent, Some(true));
        assert_eq!(emailed.email_kind.as_deref(), Some("confirmation"));
        assert_eq!(emailed.email_secs, Some(1.5));
    }

    #[test]
    fn a_decision_seen_before_its_order_creates_it_and_the_broker_time_stands_in() {
        let mut view = View::new(10, 60.0);
        view.apply(
            &decision(2, DAY, DecisionStatus::Declined, None),
            Some(DAY + 2.0),
        );
        view.apply(&Event::Placed(order(2, DAY)), None);
        let declined = view.order("2").unwrap();
        assert_eq!(declined.status, "declined");
        assert_eq!(declined.reason.as_deref(), Some("card declined"));
        assert_eq!(declined.decision_secs, Some(2.0));
        assert_eq!(view.latest_orders(10).len(), 1);
    }

    #[test]
    fn string_and_number_ids_are_both_found() {
        let mut view = View::new(10, 60.0);
        let mut by_string = order(0, DAY);
        by_string.order_id = Id::Str("o-9".into());
        view.apply(&Event::Placed(by_string), None);
        view.apply(&Event::Placed(order(9, DAY)), None);
        assert_eq!(view.order("o-9").unwrap().order_id, Id::Str("o-9".into()));
        assert_eq!(view.order("9").unwrap().order_id, Id::Int(9));
        assert!(view.order("10").is_none());
    }

    #[test]
    fn the_view_keeps_only_the_latest_orders_by_placement() {
        let mut view = View::new(3, 60.0);
        for id in [5, 1, 4, 2, 3] {
            view.apply(&Event::Placed(order(id, DAY + id as f64)), None);
        }
        let ids: Vec<Id> = view
            .latest_orders(10)
            .into_iter()
            .map(|o| o.order_id)
            .collect();
        assert_eq!(ids, [Id::Int(5), Id::Int(4), Id::Int(3)]);
        // A decision on an order older than all kept ones does not come back in.
        view.apply(
            &decision(1, DAY + 1.0, DecisionStatus::Confirmed, None),
            None,
        );
        assert!(view.order("1").is_none());
        assert_eq!(view.latest_orders(10).len(), 3);
    }

    #[test]
    fn totals_come_from_the_highest_seq_and_the_day_from_its_latest_message() {
        let mut view = View::new(10, 60.0);
        let now = DAY + 60.0;
        assert_eq!(view.totals(now).all_time, None);
        assert_eq!(view.totals(now).today.revenue, "0.00");

        view.apply(&analytics(5, "2025-11-24", "1049.97", "49.99"), None);
        view.apply(&analytics(3, "2025-11-24", "999.98", "0.01"), None); // late, older
        view.apply(&analytics(2, "2025-11-23", "999.98", "999.98"), None);
        let totals = view.totals(now);
        assert_eq!(
            totals.all_time,
            Some(AllTime {
                orders: 5,
                revenue: "1049.97".into(),
                declined: 1,
                seq: 5
            })
        );
        assert_eq!(totals.today.day, "2025-11-24");
        assert_eq!(totals.today.revenue, "49.99");
        assert_eq!(totals.today.orders, 5);
        let days: Vec<&str> = totals.days.iter().map(|d| d.day.as_str()).collect();
        assert_eq!(days, ["2025-11-23", "2025-11-24"]);
    }

    #[test]
    fn seed_analytics_without_exact_revenue_or_seq_is_shown() {
        let mut view = View::new(10, 60.0);
        let seed = Event::decode(
            Topic::AnalyticsResult,
            br#"{"total_revenue": 1049, "total_orders_count": 3}"#,
        )
        .unwrap();
        view.apply(&seed, None);
        let all_time = view.totals(DAY).all_time.unwrap();
        assert_eq!(all_time.revenue, "1049.00");
        assert_eq!(all_time.orders, 3);
    }

    #[test]
    fn pipeline_and_minutes_count_what_the_view_holds() {
        let mut view = View::new(10, 60.0);
        let now = DAY + 150.0; // third minute of the series ends here
        view.apply(&Event::Placed(order(1, DAY + 1.0)), None);
        view.apply(
            &decision(2, DAY + 70.0, DecisionStatus::Confirmed, None),
            None,
        );
        view.apply(
            &decision(3, DAY + 130.0, DecisionStatus::Declined, None),
            None,
        );
        let totals = view.totals(now);
        assert_eq!(totals.pipeline.tracked, 3);
        assert_eq!(totals.pipeline.placed_today, 3);
        assert_eq!(totals.pipeline.awaiting_decision, 1);
        assert_eq!(
            totals.pipeline.awaiting_email, 2,
            "a declined order gets its e-mail too (the declined notice)"
        );

        let minutes = view.minutes(now, 3);
        let start = (DAY as i64 / 60) * 60;
        assert_eq!(minutes[0].start, start);
        let counts: Vec<(u64, u64, u64)> = minutes
            .iter()
            .map(|m| (m.confirmed, m.declined, m.pending))
            .collect();
        assert_eq!(counts, [(0, 0, 1), (1, 0, 0), (0, 1, 0)]);
    }

    #[test]
    fn bad_messages_do_not_decode_and_are_counted() {
        for (topic, payload) in [
            (Topic::OrderDetails, &b"not json"[..]),
            (Topic::OrderConfirmed, br#"{"order_id": 1}"#),
            (Topic::OrderEmailSent, br#"{"status": "yes"}"#),
            (Topic::AnalyticsResult, br#"{"total_revenue": "lots"}"#),
        ] {
            assert!(Event::decode(topic, payload).is_err(), "{topic}");
        }
        let mut view = View::new(10, 60.0);
        view.skipped();
        view.skipped();
        assert_eq!(view.totals(DAY).skipped_messages, 2);
        assert!(view.latest_orders(10).is_empty());
    }
}

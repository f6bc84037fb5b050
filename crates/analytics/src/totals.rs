//! The figures analytics keeps: exact revenue and counts per UTC day and all-time.

use std::collections::BTreeMap;

use common::events::{AnalyticsResult, SCHEMA_VERSION, utc_day};
use common::{DecisionStatus, OrderDecision};
use rust_decimal::Decimal;

/// One day's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DayFigures {
    pub revenue: Decimal,
    pub orders: u64,
    pub declined: u64,
}

/// All figures, as of `seq` decisions counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub days: BTreeMap<String, DayFigures>,
    pub revenue: Decimal,
    pub orders: u64,
    pub declined: u64,
    pub seq: u64,
}

impl Totals {
    /// Counts one decision and returns the result to publish for its day.
    pub fn count(&mut self, decision: &OrderDecision) -> AnalyticsResult {
        let day = utc_day(decision.order.time);
        let figures = self.days.entry(day.clone()).or_default();
        match decision.status {
            DecisionStatus::Confirmed => {
                let price = decision.order.order_details.price.amount();
                figures.revenue += price;
                figures.orders += 1;
                self.revenue += price;
                self.orders += 1;
            }
            DecisionStatus::Declined => {
                figures.declined += 1;
                self.declined += 1;
            }
        }
        self.seq += 1;
        self.result(&day)
    }

    /// The result message for `day` as things stand.
    pub fn result(&self, day: &str) -> AnalyticsResult {
        let figures = self.days.get(day).cloned().unwrap_or_default();
        AnalyticsResult {
            total_revenue: self.revenue,
            total_orders_count: self.orders,
            total_revenue_exact: self.revenue,
            total_declined_count: self.declined,
            day: day.to_owned(),
            day_revenue: figures.revenue,
            day_orders_count: figures.orders,
            day_declined_count: figures.declined,
            seq: self.seq,
            schema: SCHEMA_VERSION,
        }
    }

    /// Takes in a result read back from `analytics_result`: the latest result of each day
    /// holds that day's figures, and the latest overall (highest `seq`) the all-time ones.
    pub fn absorb(&mut self, result: &AnalyticsResult) {
        if result.schema == 0 || result.day.is_empty() {
            // Written by the seed or by hand: no day figures and no sequence to order it by.
            return;
        }
        if result.seq >= self.seq {
            self.seq = result.seq;
            self.revenue = result.total_revenue_exact;
            self.orders = result.total_orders_count;
            self.declined = result.total_declined_count;
        }
        let figures = DayFigures {
            revenue: result.day_revenue,
            orders: result.day_orders_count,
            declined: result.day_declined_count,
        };
        let known = self.days.entry(result.day.clone()).or_default();
        // Figures only grow, so the larger count is the later result.
        if figures.orders + figures.declined >= known.orders + known.declined {
            *known = figures;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(id: u64, price: &str, time: f64, status: &str) -> OrderDecision {
        serde_json::from_value(serde_json::json!({
            "user_id": 1, "order_id": id, "user_email": "a@example.com",
            "order_details": {"price": price}, "time": time, "status": status
        }))
        .unwrap()
    }

    const DAY1: f64 = 1_700_000_000.0; // 2023-11-14
    const DAY2: f64 = DAY1 + 86_400.0;

    #[test]
    fn confirmed_orders_add_revenue_exactly_and_declined_ones_only_count() {
        let mut totals = Totals::default();
        totals.count(&decision(1, "0.10", DAY1, "confirmed"));
        totals.count(&decision(2, "0.20", DAY1, "confirmed"));
        let last = totals.count(&decision(3, "99", DAY1, "declined"));
        assert_eq!(last.total_revenue_exact, "0.30".parse::<Decimal>().unwrap());
        assert_eq!(last.total_orders_count, 2);
        assert_eq!(last.total_declined_count, 1);
        assert_eq!(last.day, "2023-11-14");
        assert_eq!(last.day_declined_count, 1);
        assert_eq!(last.seq, 3);
    }

    #[test]
    fn days_are_kept_apart_and_totals_span_them() {
        let mut totals = Totals::default();
        totals.count(&decision(1, "10", DAY1, "confirmed"));
        let second = totals.count(&decision(2, "5", DAY2, "confirmed"));
        assert_eq!(second.day, "2023-11-15");
        assert_eq!(second.day_revenue, Decimal::from(5));
        assert_eq!(second.day_orders_count, 1);
        assert_eq!(second.total_revenue, Decimal::from(15));
        assert_eq!(totals.days["2023-11-14"].revenue, Decimal::from(10));
    }

    #[test]
    fn absorbing_every_published_result_in_any_order_restores_the_totals() {
        let mut totals = Totals::default();
        let mut published = Vec::new();
        for (i, (day, status)) in [
            (DAY1, "confirmed"),
            (DAY2, "declined"),
            (DAY1, "confirmed"),
            (DAY2, "confirmed"),
        ]
        .into_iter()
        .enumerate()
        {
            published.push(totals.count(&decision(i as u64, "1.25", day, status)));
        }
        published.reverse();
        let mut restored = Totals::default();
        for result in &published {
            restored.absorb(result);
        }
        assert_eq!(restored, totals);
    }

    #[test]
    fn results_without_our_schema_are_ignored_on_restore() {
        let seed: AnalyticsResult =
            serde_json::from_str(r#"{"total_revenue": 10, "total_orders_count": 1}"#).unwrap();
        let mut restored = Totals::default();
        restored.absorb(&seed);
        assert_eq!(restored, Totals::default());
    }
}

//! The four topics flatpack services talk through, and their dead-letter companions.
//!
//! Names are fixed by the contract with the seed; a prefix may namespace them (tests use a
//! fresh prefix each so that they can share one broker and run in parallel).

use std::fmt;

/// One of the four topics of the event contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Orders accepted by the API. Written by orders, read by transactions.
    OrderDetails,
    /// Payment decisions. Written by transactions, read by email and analytics.
    OrderConfirmed,
    /// E-mails handled. Written by email.
    OrderEmailSent,
    /// Running totals. Written by analytics.
    AnalyticsResult,
}

impl Topic {
    pub const ALL: [Topic; 4] = [
        Topic::OrderDetails,
        Topic::OrderConfirmed,
        Topic::OrderEmailSent,
        Topic::AnalyticsResult,
    ];

    /// The name the seed uses for this topic.
    pub fn base_name(self) -> &'static str {
        match self {
            Topic::OrderDetails => "order_details",
            Topic::OrderConfirmed => "order_confirmed",
            Topic::OrderEmailSent => "order_email_sent",
            Topic::AnalyticsResult => "analytics_result",
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.base_name())
    }
}

/// Resolves topic names under an optional prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The topic's name on the broker: `order_details`, or `<prefix>order_details`.
    pub fn name(&self, topic: Topic) -> String {
        format!("{}{}", self.prefix, topic.base_name())
    }

    /// The dead-letter topic for messages on `topic` that could not be processed.
    pub fn dlq(&self, topic: Topic) -> String {
        format!("{}.dlq", self.name(topic))
    }

    /// The compacted topic that records which messages of the dead-letter topic `dlq` (its
    /// full name) were replayed to their source, keyed by `<dlq>/<partition>/<offset>`, so
    /// that no dead letter is replayed twice.
    pub fn replayed(&self, dlq: &str) -> String {
        format!("{dlq}.replayed")
    }

    /// The compacted topic a service keeps the state `store` in, partition by partition of
    /// its source (as Kafka Streams keeps a state store's changelog).
    pub fn changelog(&self, store: &str) -> String {
        format!("{}{store}-changelog", self.prefix)
    }

    /// Topics that keep the latest record per key for ever (compaction) rather than for a
    /// time: the totals of `analytics_result`, every changelog and every record of replayed
    /// dead letters.
    pub fn is_compacted(&self, name: &str) -> bool {
        name == self.name(Topic::AnalyticsResult)
            || (name.starts_with(&self.prefix)
                && (name.ends_with("-changelog") || name.ends_with(".replayed")))
    }

    /// A consumer group or transactional id under the same namespace as the topics.
    pub fn scoped(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_seeds_without_a_prefix() {
        let topics = Topics::default();
        let names: Vec<_> = Topic::ALL.iter().map(|t| topics.name(*t)).collect();
        assert_eq!(
            names,
            [
                "order_details",
                "order_confirmed",
                "order_email_sent",
                "analytics_result"
            ]
        );
        assert_eq!(topics.dlq(Topic::OrderDetails), "order_details.dlq");
    }

    #[test]
    fn a_prefix_namespaces_topics_dlqs_and_groups() {
        let topics = Topics::new("t42_");
        assert_eq!(topics.name(Topic::OrderConfirmed), "t42_order_confirmed");
        assert_eq!(topics.dlq(Topic::OrderDetails), "t42_order_details.dlq");
        assert_eq!(topics.scoped("transactions"), "t42_transactions");
        assert_eq!(
            topics.changelog("transactions-decided"),
            "t42_transactions-decided-changelog"
        );
        assert!(topics.is_compacted("t42_transactions-decided-changelog"));
        assert!(topics.is_compacted("t42_analytics_result"));
        assert!(!topics.is_compacted("t42_order_details"));
        let replayed = topics.replayed(&topics.dlq(Topic::OrderDetails));
        assert_eq!(replayed, "t42_order_details.dlq.replayed");
        assert!(topics.is_compacted(&replayed));
        assert!(!topics.is_compacted("t42_order_details.dlq"));
    }
}

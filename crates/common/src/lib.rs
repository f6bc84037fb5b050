//! What the five flatpack services share: the event contract, topic names, settings, Kafka
//! client construction, the exactly-once consumer loop, the shutdown signal and logging.

pub mod events;
pub mod kafka;
pub mod pipeline;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod topics;

pub use events::{
    AnalyticsResult, DecisionStatus, Email, Id, Money, Order, OrderDecision, OrderDetails,
};
pub use settings::KafkaSettings;
pub use topics::{Topic, Topics};

//! What the five flatpack services share: the event contract, topic names, settings, Kafka
//! client construction, the exactly-once and at-least-once consumer loops, the shutdown
//! signal and logging.

pub mod events;
pub mod kafka;
pub mod ops;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod topics;
pub mod traces;

pub use events::{
    AnalyticsResult, DecisionStatus, Email, EmailKind, EmailSent, Id, Money, Order, OrderDecision,
    OrderDetails,
};
pub use settings::{KafkaSettings, Settings};

/// Every flatpack program allocates through mimalloc: each order is decoded, copied into
/// records and headers and freed again on several threads, and the system allocator's
/// malloc and free were 12 % of the orders API's profile and about 20 % of transactions'
/// (BENCHMARKS.md, CPU per order). librdkafka, being C, still allocates through libc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
pub use topics::{Topic, Topics};

//! Where the tests' Kafka broker comes from.
//!
//! 1. `KAFKA_BOOTSTRAP_SERVERS`, when set (the test script starts a local broker from the
//!    Apache Kafka jars and sets it).
//! 2. Otherwise an `apache/kafka` container started with testcontainers, when a Docker
//!    engine answers.
//! 3. Otherwise no broker: under `CI=true` the test fails; elsewhere it is skipped with a
//!    loud message on stderr.

use std::time::Duration;

use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ImageExt};
use testcontainers_modules::kafka::apache::{self, Kafka};
use tokio::sync::OnceCell;

/// The Apache Kafka image tag the container provider runs (the version the local scripts
/// fetch from Maven Central).
pub const KAFKA_IMAGE_TAG: &str = "4.1.1";

/// How long the container provider may take to pull and start the image.
const CONTAINER_START_TIMEOUT: Duration = Duration::from_secs(180);

static BROKER: OnceCell<Result<String, String>> = OnceCell::const_new();

/// The bootstrap address of the broker for this test run, or `None` (after saying so loudly)
/// when there is none and the run is not CI. Panics under `CI=true` without a broker.
pub async fn bootstrap_servers() -> Option<String> {
    let found = BROKER.get_or_init(find_broker).await;
    match found {
        Ok(servers) => Some(servers.clone()),
        Err(why) => {
            super::missing(
                "Kafka broker",
                why,
                "Run `scripts/test.sh`, or set KAFKA_BOOTSTRAP_SERVERS, or start a Docker engine.",
            );
            None
        }
    }
}

pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

async fn find_broker() -> Result<String, String> {
    if let Ok(servers) = std::env::var("KAFKA_BOOTSTRAP_SERVERS")
        && !servers.trim().is_empty()
    {
        return Ok(servers);
    }
    match tokio::time::timeout(CONTAINER_START_TIMEOUT, start_container()).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "KAFKA_BOOTSTRAP_SERVERS is not set and the apache/kafka container did not start within {CONTAINER_START_TIMEOUT:?}"
        )),
    }
}

/// Starts `apache/kafka` (JVM image, KRaft, single node) and keeps it for the whole run.
async fn start_container() -> Result<String, String> {
    let container: ContainerAsync<Kafka> = Kafka::default()
        .with_jvm_image()
        .with_tag(KAFKA_IMAGE_TAG)
        // Transactions need the transaction state log; one broker can hold one replica.
        .with_env_var("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env_var("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env_var("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .start()
        .await
        .map_err(|err| {
            format!("KAFKA_BOOTSTRAP_SERVERS is not set and no Docker engine answered ({err})")
        })?;
    let port = container
        .get_host_port_ipv4(apache::KAFKA_PORT)
        .await
        .map_err(|err| format!("reading the Kafka container's port: {err}"))?;
    // Kept for the life of the test process; testcontainers' reaper removes it afterwards.
    Box::leak(Box::new(container));
    Ok(format!("127.0.0.1:{port}"))
}

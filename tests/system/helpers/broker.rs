//! Where the tests' Kafka broker comes from.
//!
//! 1. `KAFKA_BOOTSTRAP_SERVERS`, when set (the test script starts a local broker from the
//!    Apache Kafka jars and sets it).
//! 2. Otherwise an `apache/kafka` container started with testcontainers, when a Docker
//!    engine answers.
//! 3. Otherwise no broker: under `CI=true` the test fails; elsewhere it is skipped with a
//!    loud message on stderr.

use std::time::Duration;

use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
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
///
/// The container's port 9092 is published on a free host port chosen here and advertised
/// as `127.0.0.1:<port>`, so nothing needs to read the mapping back from the engine: podman
/// reports a published port with an empty `HostIp`, which testcontainers (and its Kafka
/// module, which writes the advertised listener after start) does not take for IPv4.
async fn start_container() -> Result<String, String> {
    let port = free_port().map_err(|err| format!("finding a free port for Kafka: {err}"))?;
    let container: ContainerAsync<GenericImage> =
        GenericImage::new("apache/kafka", KAFKA_IMAGE_TAG)
            .with_exposed_port(ContainerPort::Tcp(9092))
            .with_wait_for(WaitFor::message_on_stdout("Kafka Server started"))
            .with_mapped_port(port, ContainerPort::Tcp(9092))
            .with_env_var("CLUSTER_ID", "5L6g3nShT-eMCtK--X86sw")
            .with_env_var("KAFKA_NODE_ID", "1")
            .with_env_var("KAFKA_PROCESS_ROLES", "broker,controller")
            .with_env_var(
                "KAFKA_LISTENERS",
                "PLAINTEXT://0.0.0.0:9092,BROKER://0.0.0.0:9093,CONTROLLER://0.0.0.0:9094",
            )
            .with_env_var(
                "KAFKA_ADVERTISED_LISTENERS",
                format!("PLAINTEXT://127.0.0.1:{port},BROKER://localhost:9093"),
            )
            .with_env_var(
                "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
                "BROKER:PLAINTEXT,PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            )
            .with_env_var("KAFKA_INTER_BROKER_LISTENER_NAME", "BROKER")
            .with_env_var("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
            .with_env_var("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9094")
            // One broker holds one replica of the internal topics; transactions need theirs.
            .with_env_var("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
            .with_env_var("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            .with_env_var("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
            .with_env_var("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
            .start()
            .await
            .map_err(|err| {
                format!("KAFKA_BOOTSTRAP_SERVERS is not set and no Docker engine answered ({err})")
            })?;
    // Kept for the life of the test process. Nothing removes it when the process exits (a
    // static is never dropped): `scripts/test.sh` removes it after its testcontainers step;
    // by hand, `docker rm -f` the container labelled org.testcontainers.managed-by.
    Box::leak(Box::new(container));
    Ok(format!("127.0.0.1:{port}"))
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

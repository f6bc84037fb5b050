//! Brokers of a test's own, started, killed, stopped and restarted with `scripts/kafka.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// One broker (combined broker and KRaft controller) of a test.
#[derive(Debug)]
struct Node {
    id: i32,
    port: u16,
    dir: PathBuf,
}

/// One broker, or a cluster of three, each a JVM in a data dir of its own.
#[derive(Debug)]
pub struct Brokers {
    root: PathBuf,
    nodes: Vec<Node>,
    voters: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh")
}

/// Runs `scripts/kafka.sh` with `args`; its stdout (KEY=VALUE lines), or a panic with its
/// stderr.
fn kafka_sh(args: &[&str]) -> String {
    let output = Command::new(script())
        .args(args)
        .output()
        .expect("running scripts/kafka.sh");
    assert!(
        output.status.success(),
        "scripts/kafka.sh {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("kafka.sh output is UTF-8")
}

fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("address").port())
        .collect()
}

impl Brokers {
    /// Starts `count` brokers (1, or 3 as one cluster) and waits until each serves. Topics
    /// created on three get three replicas and need two in sync (see `kafka.sh`).
    pub fn start(count: usize) -> Self {
        let brokers = Self::new(count);
        brokers.start_all();
        brokers
    }

    /// `count` brokers (1, or 3 as one cluster) with their ports and data dirs chosen, none
    /// started yet.
    pub fn new(count: usize) -> Self {
        assert!(count == 1 || count == 3, "one broker or three");
        let root =
            std::env::temp_dir().join(format!("flatpack-faults-{:08x}", rand::random::<u32>()));
        let ports = free_ports(2 * count);
        let (client_ports, controller_ports) = ports.split_at(count);
        let nodes: Vec<Node> = (0..count)
            .map(|i| Node {
                id: i32::try_from(i + 1).expect("node id"),
                port: client_ports[i],
                dir: root.join(format!("kafka-{}", i + 1)),
            })
            .collect();
        let voters = nodes
            .iter()
            .zip(controller_ports)
            .map(|(node, port)| format!("{}@127.0.0.1:{port}", node.id))
            .collect::<Vec<_>>()
            .join(",");
        Self {
            root,
            nodes,
            voters,
        }
    }

    /// Formats and starts every broker, and waits until all serve with every partition in
    /// sync.
    pub fn start_all(&self) {
        let owner = std::process::id().to_string();
        let cluster_id = kafka_sh(&["cluster-id"]).trim().to_owned();
        for node in &self.nodes {
            let (id, port) = (node.id.to_string(), node.port.to_string());
            let dir = node.dir.to_str().expect("UTF-8 path");
            kafka_sh(&[
                "start",
                "--no-wait",
                "--node-id",
                &id,
                "--port",
                &port,
                "--voters",
                &self.voters,
                "--cluster-id",
                &cluster_id,
                "--data-dir",
                dir,
                "--owner-pid",
                &owner,
            ]);
        }
        for node in &self.nodes {
            kafka_sh(&["wait", "--data-dir", node.dir.to_str().expect("UTF-8 path")]);
        }
        self.await_in_sync(Duration::from_secs(120));
    }

    pub fn bootstrap_servers(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn node(&self, id: i32) -> &Node {
        self.nodes
            .iter()
            .find(|node| node.id == id)
            .unwrap_or_else(|| panic!("no broker {id}"))
    }

    /// SIGKILL: the broker gets no chance to hand anything over.
    pub fn kill(&self, id: i32) {
        let node = self.node(id);
        let pid = std::fs::read_to_string(node.dir.join("kafka.pid"))
            .expect("the broker's pid file")
            .trim()
            .to_owned();
        let status = Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .expect("kill -KILL");
        assert!(status.success(), "kill -KILL {pid} failed");
        let until = Instant::now() + Duration::from_secs(30);
        while is_alive(&pid) {
            assert!(
                Instant::now() < until,
                "broker {id} (pid {pid}) did not die"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait: a clean shutdown, leadership handed over first.
    pub fn stop(&self, id: i32) {
        let dir = self.node(id).dir.to_str().expect("UTF-8 path");
        kafka_sh(&["stop", "--data-dir", dir, "--timeout", "60"]);
    }

    /// Starts a stopped or killed broker again on its data, and waits until it serves.
    pub fn restart(&self, id: i32) {
        let dir = self.node(id).dir.to_str().expect("UTF-8 path");
        let owner = std::process::id().to_string();
        kafka_sh(&["start", "--data-dir", dir, "--owner-pid", &owner]);
    }

    /// Waits until every broker is back in the cluster and every partition of every topic
    /// has a leader and all its replicas in sync.
    pub fn await_in_sync(&self, deadline: Duration) {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .create()
            .expect("metadata client");
        let until = Instant::now() + deadline;
        loop {
            let lagging = match client.fetch_metadata(None, Duration::from_secs(5)) {
                Ok(metadata) if metadata.brokers().len() == self.nodes.len() => metadata
                    .topics()
                    .iter()
                    .flat_map(|t| t.partitions().iter().map(move |p| (t.name(), p)))
                    .filter(|(_, p)| p.leader() < 0 || p.isr().len() < p.replicas().len())
                    .map(|(topic, p)| format!("{topic}[{}]", p.id()))
                    .collect::<Vec<_>>(),
                Ok(metadata) => vec![format!("{} brokers", metadata.brokers().len())],
                Err(err) => vec![err.to_string()],
            };
            if lagging.is_empty() {
                return;
            }
            assert!(
                Instant::now() < until,
                "not in sync after {deadline:?}: {lagging:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The broker leading `partition` of `topic`.
    pub fn leader(&self, topic: &str, partition: i32) -> i32 {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .create()
            .expect("metadata client");
        let metadata = client
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("topic metadata");
        metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions())
            .find(|p| p.id() == partition)
            .map(|p| p.leader())
            .unwrap_or_else(|| panic!("{topic} has no partition {partition}"))
    }

    pub fn ids(&self) -> Vec<i32> {
        self.nodes.iter().map(|node| node.id).collect()
    }
}

fn is_alive(pid: &str) -> bool {
    // A zombie waiting for its reaper is dead to us.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

impl Drop for Brokers {
    fn drop(&mut self) {
        for node in &self.nodes {
            let dir = node.dir.to_string_lossy();
            let _ = Command::new(script())
                .args(["stop", "--data-dir", &dir, "--timeout", "5"])
                .output();
        }
        if std::thread::panicking() || std::env::var_os("FLATPACK_KEEP_TEST_LOGS").is_some() {
            eprintln!("broker logs kept in {}", self.root.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

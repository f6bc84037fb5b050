//! Brokers of a test's own: `scripts/kafka.sh run` as child processes of the test, killed,
//! stopped and started again on their data dirs.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// One broker (combined broker and KRaft controller) of a test.
#[derive(Debug)]
struct Node {
    id: i32,
    port: u16,
    dir: PathBuf,
    /// The running broker, if it runs.
    process: Mutex<Option<Child>>,
}

/// One broker, or a cluster of three, each a JVM in a data dir of its own.
#[derive(Debug)]
pub struct Brokers {
    root: PathBuf,
    nodes: Vec<Node>,
    voters: String,
    cluster_id: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh")
}

impl Node {
    /// Starts the broker on its data dir (formatting it the first time), output appended to
    /// `kafka.out` there.
    fn spawn(&self, voters: &str, cluster_id: &str) {
        std::fs::create_dir_all(&self.dir).expect("the broker's data dir");
        // Readiness is read from this run's server.log alone.
        let log = self.dir.join("server.log");
        if log.exists() {
            std::fs::rename(&log, self.dir.join("server.log.prev")).expect("keeping the last log");
        }
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("kafka.out"))
            .expect("kafka.out");
        let child = Command::new(script())
            .args(["run", "--data-dir"])
            .arg(&self.dir)
            .args([
                "--node-id",
                &self.id.to_string(),
                "--port",
                &self.port.to_string(),
            ])
            .args(["--voters", voters, "--cluster-id", cluster_id])
            .stdout(out.try_clone().expect("kafka.out"))
            .stderr(out)
            .spawn()
            .expect("running scripts/kafka.sh");
        *self.process.lock().unwrap() = Some(child);
    }

    /// Waits until the broker says it has started; panics with its log when it exits first
    /// or takes longer than two minutes.
    fn await_started(&self) {
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            if log.contains("Kafka Server started") {
                return;
            }
            let exited = match self.process.lock().unwrap().as_mut() {
                Some(child) => child.try_wait().expect("broker status").is_some(),
                None => true,
            };
            if exited || Instant::now() > until {
                let out = std::fs::read_to_string(self.dir.join("kafka.out")).unwrap_or_default();
                panic!(
                    "broker {} did not start (exited: {exited}); kafka.out:\n{out}\nserver.log ends:\n{}",
                    self.id,
                    log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM (a clean shutdown, leadership handed over first), SIGKILL after `grace`.
    fn terminate(&self, grace: Duration) {
        let Some(mut child) = self
            .process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let until = Instant::now() + grace;
        while child.try_wait().expect("broker status").is_none() {
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
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
                process: Mutex::new(None),
            })
            .collect();
        let voters = nodes
            .iter()
            .zip(controller_ports)
            .map(|(node, port)| format!("{}@127.0.0.1:{port}", node.id))
            .collect::<Vec<_>>()
            .join(",");
        let cluster_id = String::from_utf8(
            Command::new(script())
                .arg("cluster-id")
                .output()
                .expect("scripts/kafka.sh cluster-id")
                .stdout,
        )
        .expect("a UTF-8 cluster id")
        .trim()
        .to_owned();
        assert!(
            !cluster_id.is_empty(),
            "scripts/kafka.sh cluster-id printed nothing"
        );
        Self {
            root,
            nodes,
            voters,
            cluster_id,
        }
    }

    /// Formats and starts every broker, and waits until all serve with every partition in
    /// sync.
    pub fn start_all(&self) {
        for node in &self.nodes {
            node.spawn(&self.voters, &self.cluster_id);
        }
        for node in &self.nodes {
            node.await_started();
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
        let mut child = self
            .node(id)
            .process
            .lock()
            .unwrap()
            .take()
            .expect("a running broker");
        child.kill().expect("SIGKILL");
        child.wait().expect("the killed broker");
    }

    /// SIGTERM and wait: a clean shutdown, leadership handed over first.
    pub fn stop(&self, id: i32) {
        self.node(id).terminate(Duration::from_secs(60));
    }

    /// Starts a stopped or killed broker again on its data, and waits until it serves.
    pub fn restart(&self, id: i32) {
        let node = self.node(id);
        node.spawn(&self.voters, &self.cluster_id);
        node.await_started();
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

impl Drop for Brokers {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.terminate(Duration::from_secs(5));
        }
        if std::thread::panicking() || std::env::var_os("FLATPACK_KEEP_TEST_LOGS").is_some() {
            eprintln!("broker logs kept in {}", self.root.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

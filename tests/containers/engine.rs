//! The container engine and the compose CLI as the tests drive them, and the HTTP APIs of
//! the system that runs in it (orders, dashboard, Mailpit), all on the host's published ports.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository root: compose files name their build context relative to it.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Docker API socket of `DOCKER_HOST` (`unix://...`); panics without one, since these
/// tests exist to run against an engine (`scripts/test.sh` starts podman and sets it).
pub fn engine_socket() -> PathBuf {
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    let path = host.strip_prefix("unix://").unwrap_or_else(|| {
        panic!(
            "the container tests need DOCKER_HOST=unix://<socket> of a Docker API \
             (`scripts/containers.py serve` prints it); found {host:?}"
        )
    });
    PathBuf::from(path)
}

/// The compose CLI: `DOCKER_COMPOSE`, else the one `scripts/tool.sh docker-compose` builds.
fn compose_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("DOCKER_COMPOSE")
        && !bin.is_empty()
    {
        return PathBuf::from(bin);
    }
    let cache = std::env::var("FLATPACK_CACHE_DIR").map_or_else(
        |_| Path::new(&std::env::var("HOME").expect("HOME")).join(".cache/flatpack"),
        PathBuf::from,
    );
    cache.join("bin/docker-compose")
}

/// One compose project: a file (from the repository root) and its project name.
#[derive(Debug, Clone)]
pub struct Project {
    pub file: &'static str,
    pub name: &'static str,
}

impl Project {
    /// `docker compose -f <file> <args>`, waited for at most `limit`; returns stdout and
    /// panics with both streams when it fails or overruns.
    pub fn compose(&self, args: &[&str], limit: Duration) -> String {
        let mut cmd = Command::new(compose_bin());
        cmd.current_dir(repo_root())
            .arg("-f")
            .arg(self.file)
            .args(args)
            // Compose would start the five image builds at once; on two cores one at a
            // time is faster (the shared builder stage is built once and then reused).
            .env("COMPOSE_PARALLEL_LIMIT", "1")
            .env("COMPOSE_PROGRESS", "plain")
            .env_remove("COMPOSE_FILE")
            .env_remove("COMPOSE_PROJECT_NAME")
            .env_remove("COMPOSE_PROFILES");
        run(&mut cmd, limit)
    }

    /// Is anything of this project left in the engine? Containers, networks and volumes
    /// that carry its compose label, as `kind name` strings.
    pub fn leftovers(&self) -> BTreeSet<String> {
        let filter = format!(
            r#"{{"label":["com.docker.compose.project={}"]}}"#,
            self.name
        );
        let filter = percent_encode(&filter);
        let mut found = BTreeSet::new();
        for c in engine_get(&format!("/containers/json?all=true&filters={filter}"))
            .as_array()
            .expect("container list")
        {
            found.insert(format!("container {}", c["Names"]));
        }
        for n in engine_get(&format!("/networks?filters={filter}"))
            .as_array()
            .expect("network list")
        {
            found.insert(format!("network {}", n["Name"]));
        }
        let volumes = engine_get(&format!("/volumes?filters={filter}"));
        for v in volumes["Volumes"].as_array().into_iter().flatten() {
            found.insert(format!("volume {}", v["Name"]));
        }
        found
    }

    /// `docker compose ps --all` as JSON objects, one per container.
    pub fn containers(&self) -> Vec<Value> {
        let out = self.compose(
            &["ps", "--all", "--format", "json"],
            Duration::from_secs(60),
        );
        let out = out.trim();
        if out.starts_with('[') {
            return serde_json::from_str(out).expect("compose ps JSON");
        }
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("compose ps JSON line"))
            .collect()
    }

    /// The uid that process 1 of a service's container runs as (`/proc/1/status`).
    pub fn uid_of(&self, service: &str) -> String {
        let status = self.compose(
            &["exec", "-T", service, "cat", "/proc/1/status"],
            Duration::from_secs(60),
        );
        let line = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap_or_else(|| panic!("no Uid line in {service}'s /proc/1/status:\n{status}"));
        line.split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    }

    /// The last lines of every container's log, for a failing test's message.
    pub fn logs_tail(&self) -> String {
        let mut cmd = Command::new(compose_bin());
        cmd.current_dir(repo_root())
            .args(["-f", self.file, "logs", "--no-color", "--tail", "40"]);
        match cmd.output() {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(err) => format!("(compose logs failed: {err})"),
        }
    }
}

/// Runs a command to its end within `limit`; stdout on success, a panic with both streams
/// otherwise (the child is killed when it overruns).
fn run(cmd: &mut Command, limit: Duration) -> String {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {shown}: {err}"));
    // Drain both pipes on threads so a chatty build cannot block on a full pipe.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for compose") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => out,
        Some(s) => panic!(
            "{shown} failed ({s}):\n--- stdout\n{}\n--- stderr\n{}",
            tail(&out),
            tail(&err)
        ),
        None => panic!(
            "{shown} did not finish within {limit:?}:\n--- stdout\n{}\n--- stderr\n{}",
            tail(&out),
            tail(&err)
        ),
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET on the engine's Docker API (HTTP/1.0 over its unix socket), as JSON.
pub fn engine_get(path: &str) -> Value {
    let socket = engine_socket();
    let mut stream = UnixStream::connect(&socket)
        .unwrap_or_else(|err| panic!("connecting to the engine at {}: {err}", socket.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("socket timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: engine\r\n\r\n").expect("engine request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("engine response");
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("engine answered no HTTP: {response}"));
    assert!(
        head.lines().next().is_some_and(|l| l.contains(" 200 ")),
        "engine GET {path}: {head}\n{body}"
    );
    serde_json::from_str(body).unwrap_or_else(|err| panic!("engine GET {path}: {err}: {body}"))
}

/// Polls `check` every 500 ms until it returns `Some`, or panics with `what` after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

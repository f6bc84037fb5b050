//! A real Jaeger for the trace test: the binary `scripts/tool.sh jaeger` builds from Jaeger's Go
//! module (`JAEGER`), started on free ports with the repo's `scripts/jaeger/local.yaml`.
//! Without `JAEGER` the test fails under `CI=true` and is skipped elsewhere, loudly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::free_addr;

/// A Jaeger process, killed on drop.
pub struct Jaeger {
    child: Child,
    /// Where services send spans: `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp: String,
    /// The UI and its HTTP API.
    pub ui: String,
    log: PathBuf,
}

/// One trace as Jaeger's HTTP API answers it.
#[derive(Debug, Deserialize)]
pub struct Trace {
    pub spans: Vec<Span>,
    processes: BTreeMap<String, Process>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    #[serde(rename = "spanID")]
    pub span_id: String,
    pub operation_name: String,
    #[serde(default)]
    pub references: Vec<Reference>,
    #[serde(rename = "processID")]
    process_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reference {
    pub ref_type: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Process {
    service_name: String,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    data: Vec<Trace>,
}

impl Trace {
    /// The name of the service that reported `span`.
    pub fn service_of(&self, span: &Span) -> &str {
        self.processes
            .get(&span.process_id)
            .map_or("?", |p| p.service_name.as_str())
    }

    /// The spans of `service`.
    pub fn spans_of(&self, service: &str) -> Vec<&Span> {
        self.spans
            .iter()
            .filter(|span| self.service_of(span) == service)
            .collect()
    }
}

impl Span {
    /// The span this one is a child of, if any.
    pub fn parent(&self) -> Option<&str> {
        self.references
            .iter()
            .find(|r| r.ref_type == "CHILD_OF")
            .map(|r| r.span_id.as_str())
    }
}

/// The run's Jaeger binary, or `None` (after saying so) outside CI without one.
pub fn jaeger() -> Option<PathBuf> {
    match std::env::var("JAEGER") {
        Ok(path) if Path::new(&path).exists() => Some(PathBuf::from(path)),
        other => {
            let why = match other {
                Ok(path) => format!("JAEGER={path} does not exist"),
                Err(_) => "JAEGER is not set".to_owned(),
            };
            super::missing(
                "Jaeger",
                &why,
                "Run `scripts/tool.sh jaeger` (or `scripts/test.sh`) and export what it prints.",
            );
            None
        }
    }
}

impl Jaeger {
    /// Starts Jaeger on free ports and waits until its API answers.
    pub async fn start(binary: &Path) -> Self {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/jaeger/local.yaml");
        let (otlp, ui) = (free_addr(), free_addr());
        let log = std::env::temp_dir().join(format!(
            "flatpack-test-jaeger-{}.log",
            rand::random::<u32>()
        ));
        let file = std::fs::File::create(&log).expect("Jaeger log file");
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .env("JAEGER_OTLP_HTTP_ADDR", &otlp)
            .env("JAEGER_UI_ADDR", &ui)
            .env("JAEGER_QUERY_GRPC_ADDR", free_addr())
            .stdout(file.try_clone().expect("Jaeger log file"))
            .stderr(file)
            .spawn()
            .expect("starting Jaeger");
        let mut jaeger = Self {
            child,
            otlp: format!("http://{otlp}"),
            ui: format!("http://{ui}"),
            log,
        };
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = reqwest::get(format!("{}/api/services", jaeger.ui)).await;
            if answer.is_ok_and(|a| a.status().is_success()) {
                return jaeger;
            }
            let exited = jaeger.child.try_wait().expect("polling Jaeger");
            assert!(
                exited.is_none(),
                "Jaeger exited during start-up: {exited:?}\n{}",
                jaeger.log_text()
            );
            assert!(
                Instant::now() < until,
                "Jaeger not ready within 60 s\n{}",
                jaeger.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Trace `id` (32 hex digits) as Jaeger has it now, or `None` while it has none.
    pub async fn trace(&self, id: &str) -> Option<Trace> {
        let response = reqwest::get(format!("{}/api/traces/{id}", self.ui))
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let answer: Answer = response.json().await.expect("Jaeger's trace JSON");
        answer.data.into_iter().next()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- Jaeger's log ({}) ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

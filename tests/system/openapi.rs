//! The API contract: each service's `/openapi.json`, and schemathesis (from PyPI) against the
//! running orders API and dashboard: every request it generates, valid or not, gets a
//! documented status and a body that matches the documented schema, and none a 5xx.
//!
//! schemathesis comes from `SCHEMATHESIS` (`scripts/tool.sh schemathesis` installs a pinned
//! version and prints it); without it the test fails under `CI=true` and is skipped loudly
//! elsewhere, as the browser test does without Chromium.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::dashboard::spawn_dashboard;
use crate::helpers::{missing, spawn_orders};
use crate::test_env;

/// How many requests schemathesis generates per operation in its fuzzing phase (its
/// coverage phase adds the boundary cases of every schema on top).
const MAX_EXAMPLES: &str = "100";
/// A fixed seed: a failure reproduces with the same requests.
const SEED: &str = "1";

/// The schemathesis CLI for this run, or `None` (after saying so loudly) when there is none
/// and the run is not CI. Panics under `CI=true` without one.
fn schemathesis() -> Option<PathBuf> {
    let found = match std::env::var("SCHEMATHESIS") {
        Ok(path) if !path.trim().is_empty() => {
            let path = PathBuf::from(path);
            if path.exists() {
                Ok(path)
            } else {
                Err(format!("SCHEMATHESIS={} does not exist", path.display()))
            }
        }
        _ => Err("SCHEMATHESIS is not set".to_owned()),
    };
    match found {
        Ok(path) => Some(path),
        Err(why) => {
            missing(
                "schemathesis",
                &why,
                "Run `scripts/tool.sh schemathesis` (or `scripts/test.sh`) and export what it prints.",
            );
            None
        }
    }
}

async fn fetch_document(url: &str) -> Result<Value, String> {
    let response = reqwest::get(format!("{url}/openapi.json"))
        .await
        .map_err(|err| err.to_string())?;
    if response.status() != 200 {
        return Err(format!("{url}/openapi.json answered {}", response.status()));
    }
    response.json().await.map_err(|err| err.to_string())
}

/// Checks that `doc` is OpenAPI 3.1 with every one of `routes`.
fn assert_documents(doc: &Value, routes: &[&str]) {
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "not OpenAPI 3.1: {version:?}");
    let paths = doc["paths"].as_object().expect("paths");
    for route in routes {
        assert!(
            paths.contains_key(*route),
            "{route} is not documented: {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
}

// A test asserts only once the services are stopped: a panic while the dashboard runs would
// leave its blocking readers holding up the test runtime's shutdown, a hang and not a failure.

#[tokio::test(flavor = "multi_thread")]
async fn orders_and_dashboard_serve_openapi_3_1_documents_listing_their_routes() {
    let env = test_env!();
    let api = spawn_orders(&env).await;
    let board = spawn_dashboard(&env).await;
    let orders_doc = fetch_document(&api.url).await;
    let dashboard_doc = fetch_document(&board.url).await;
    board.stop().await;
    api.stop().await.unwrap();
    env.cleanup().await;

    let doc = orders_doc.unwrap();
    assert_documents(
        &doc,
        &["/order", "/healthz", "/readyz", "/metrics", "/openapi.json"],
    );
    let answers = doc["paths"]["/order"]["post"]["responses"]
        .as_object()
        .unwrap();
    for status in ["200", "400", "413", "415", "422", "503"] {
        assert!(
            answers.contains_key(status),
            "POST /order: {status} undocumented"
        );
    }
    assert!(
        answers["503"]["headers"]
            .as_object()
            .is_some_and(|h| h.contains_key("Retry-After")),
        "503 documents Retry-After"
    );
    assert_documents(
        &dashboard_doc.unwrap(),
        &[
            "/api/orders",
            "/api/orders/{id}",
            "/api/totals",
            "/api/events",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
        ],
    );
}

/// Runs `schemathesis run` against the document at `{url}/openapi.json`; its report when it
/// found something.
async fn schemathesis_run(schemathesis: &Path, url: &str, extra: &[&str]) -> Result<(), String> {
    // schemathesis keeps its example database (.hypothesis) in the working directory.
    let workdir =
        std::env::temp_dir().join(format!("flatpack-schemathesis-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&workdir).unwrap();
    let mut command = Command::new(schemathesis);
    command
        .current_dir(&workdir)
        .env("NO_COLOR", "1")
        .arg("run")
        .arg(format!("{url}/openapi.json"))
        .args(["--checks", "all", "--max-examples", MAX_EXAMPLES])
        .args(["--seed", SEED, "--no-color", "--workers", "1"])
        .args(extra);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .map_err(|err| err.to_string())?
        .map_err(|err| format!("running schemathesis: {err}"))?;
    let _ = std::fs::remove_dir_all(&workdir);
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "schemathesis found {url} breaking its contract ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_every_answer_documented_and_none_a_server_error() {
    let Some(schemathesis) = schemathesis() else {
        return;
    };
    let env = test_env!();

    let api = spawn_orders(&env).await;
    let orders = schemathesis_run(&schemathesis, &api.url, &[]).await;
    api.stop().await.unwrap();

    // The dashboard, over the orders schemathesis just placed. Its live stream never ends,
    // so it is left out (the first test checks it is documented).
    let board = spawn_dashboard(&env).await;
    let dashboard = schemathesis_run(
        &schemathesis,
        &board.url,
        &["--exclude-path", "/api/events"],
    )
    .await;
    board.stop().await;
    env.cleanup().await;

    let reports: Vec<String> = [orders, dashboard]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    assert!(reports.is_empty(), "{}", reports.join("\n\n"));
}

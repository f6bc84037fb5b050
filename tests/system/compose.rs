//! The compose files against the code: every environment variable a compose file sets for a
//! flatpack service is one that service reads, and the service starts with exactly what the
//! compose file gives it (every setting without a default is set, every value parses).
//!
//! The variables a service reads come from its settings structs
//! ([`common::settings::env_var_names`]), plus the ones every service reads outside them:
//! `KAFKA_CONFIG_*` (librdkafka pass-through, see `common::settings`) and `RUST_LOG` and
//! `LOG_FORMAT` (see `common::telemetry`). No broker needed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use analytics::AnalyticsSettings;
use common::KafkaSettings;
use common::Settings;
use common::settings::{KAFKA_CONFIG_PREFIX, env_var_names};
use dashboard::DashboardSettings;
use email::EmailSettings;
use orders::OrdersSettings;
use serde_yaml_ng::{Mapping, Value};
use transactions::{RulesCheck, TransactionsSettings};

/// Read by every service, outside its settings structs (`common::telemetry`; the `OTEL_*`
/// ones through OpenTelemetry's SDK).
const LOGGING_VARS: [&str; 4] = [
    "RUST_LOG",
    "LOG_FORMAT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
];

/// The compose files that define flatpack services (`docker-compose.yml` through `include`).
const COMPOSE_FILES: [&str; 3] = [
    "docker-compose.yml",
    "docker-compose-services.yml",
    "docker-compose-cluster.yml",
];

/// Every compose file.
const ALL_COMPOSE_FILES: [&str; 4] = [
    "docker-compose.yml",
    "docker-compose-kafka.yml",
    "docker-compose-services.yml",
    "docker-compose-cluster.yml",
];

/// Restart policies that bring an exited container back.
const RESTARTING: [&str; 3] = ["always", "unless-stopped", "on-failure"];

type Env = BTreeMap<String, String>;

/// What a service reads, and how it reads it at start.
struct ServiceSettings {
    name: &'static str,
    /// Variables named by its settings structs.
    reads: Vec<String>,
    /// Reads all its settings from `vars` the way its `main` does.
    load: fn(&Env) -> Result<(), String>,
}

fn vars(env: &Env) -> Vec<(String, String)> {
    env.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Reads and checks settings `S` from `env`, as the service does at start.
fn load<S: Settings>(env: &Env) -> Result<(), String> {
    S::from_vars(vars(env)).map(drop).map_err(|e| e.to_string())
}

fn checked_services() -> Vec<ServiceSettings> {
    let with_kafka = |own: Vec<Vec<String>>| -> Vec<String> {
        let mut names = env_var_names::<KafkaSettings>();
        names.extend(own.into_iter().flatten());
        names
    };
    vec![
        ServiceSettings {
            name: "orders",
            reads: with_kafka(vec![env_var_names::<OrdersSettings>()]),
            load: |env| {
                load::<KafkaSettings>(env)?;
                load::<OrdersSettings>(env)
            },
        },
        ServiceSettings {
            name: "transactions",
            reads: with_kafka(vec![
                env_var_names::<TransactionsSettings>(),
                env_var_names::<RulesCheck>(),
            ]),
            load: |env| {
                load::<KafkaSettings>(env)?;
                load::<TransactionsSettings>(env)?;
                load::<RulesCheck>(env)
            },
        },
        ServiceSettings {
            name: "analytics",
            reads: with_kafka(vec![env_var_names::<AnalyticsSettings>()]),
            load: |env| {
                load::<KafkaSettings>(env)?;
                load::<AnalyticsSettings>(env)
            },
        },
        ServiceSettings {
            name: "email",
            reads: with_kafka(vec![env_var_names::<EmailSettings>()]),
            load: |env| {
                load::<KafkaSettings>(env)?;
                load::<EmailSettings>(env)
            },
        },
        ServiceSettings {
            name: "dashboard",
            reads: with_kafka(vec![env_var_names::<DashboardSettings>()]),
            load: |env| {
                load::<KafkaSettings>(env)?;
                load::<DashboardSettings>(env)
            },
        },
    ]
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load_yaml(path: &Path) -> Mapping {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut value: Value = serde_yaml_ng::from_str(&text)
        .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    value
        .apply_merge()
        .unwrap_or_else(|e| panic!("merging `<<` keys in {}: {e}", path.display()));
    match value {
        Value::Mapping(map) => map,
        other => panic!("{}: top level is not a mapping: {other:?}", path.display()),
    }
}

fn scalar(value: &Value, what: &str) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("{what}: not a scalar: {other:?}"),
    }
}

/// A service's `environment`, in either of compose's forms (mapping, or `KEY=VALUE` list).
/// A bare `KEY` (passed through from the host) counts as set to the empty string.
fn environment(service: &Mapping, what: &str) -> Env {
    match service.get("environment") {
        None => Env::new(),
        Some(Value::Mapping(map)) => map
            .iter()
            .map(|(k, v)| (scalar(k, what), scalar(v, what)))
            .collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| {
                let item = scalar(item, what);
                match item.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (item, String::new()),
                }
            })
            .collect(),
        Some(other) => panic!("{what}: environment is neither a mapping nor a list: {other:?}"),
    }
}

/// Every service a compose file defines, as compose resolves it: following `include`, and
/// `extends` (the extending service's keys over the extended one's: mappings merged key by
/// key, anything else replaced). `environment` is a mapping first, whichever of compose's
/// forms a file uses, so that variables merge one by one.
fn resolved_services(path: &Path) -> BTreeMap<String, Mapping> {
    let doc = load_yaml(path);
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut all = BTreeMap::new();
    if let Some(Value::Sequence(includes)) = doc.get("include") {
        for include in includes {
            let paths: Vec<String> = match include {
                Value::String(p) => vec![p.clone()],
                Value::Mapping(m) => match m.get("path") {
                    Some(Value::Sequence(ps)) => {
                        ps.iter().map(|p| scalar(p, "include path")).collect()
                    }
                    Some(p) => vec![scalar(p, "include path")],
                    None => panic!("{}: include without path", path.display()),
                },
                other => panic!("{}: bad include {other:?}", path.display()),
            };
            for included in paths {
                all.extend(resolved_services(&dir.join(included)));
            }
        }
    }
    if let Some(Value::Mapping(defined)) = doc.get("services") {
        for (name, service) in defined {
            let name = scalar(name, "service name");
            let what = format!("{}: service {name}", path.display());
            let Value::Mapping(service) = service else {
                panic!("{what}: not a mapping");
            };
            let mut resolved = match service.get("extends") {
                None => Mapping::new(),
                Some(Value::Mapping(extends)) => {
                    let base = scalar(
                        extends.get("service").expect("extends.service"),
                        "extends.service",
                    );
                    let base_file = extends
                        .get("file")
                        .map(|f| dir.join(scalar(f, "extends.file")))
                        .unwrap_or_else(|| path.to_path_buf());
                    resolved_services(&base_file)
                        .remove(&base)
                        .unwrap_or_else(|| panic!("{what}: extends unknown service {base}"))
                }
                Some(Value::String(base)) => resolved_services(path)
                    .remove(base)
                    .unwrap_or_else(|| panic!("{what}: extends unknown service {base}")),
                Some(other) => panic!("{what}: bad extends {other:?}"),
            };
            let mut own = service.clone();
            own.remove("extends");
            if own.contains_key("environment") {
                let env: Mapping = environment(&own, &what)
                    .into_iter()
                    .map(|(k, v)| (Value::String(k), Value::String(v)))
                    .collect();
                own.insert(Value::from("environment"), Value::Mapping(env));
            }
            merge(&mut resolved, &own);
            all.insert(name, resolved);
        }
    }
    all
}

fn merge(base: &mut Mapping, over: &Mapping) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (Some(Value::Mapping(base)), Value::Mapping(over)) => merge(base, over),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// The environment of every service a compose file defines (see [`resolved_services`]).
fn services(path: &Path) -> BTreeMap<String, Env> {
    resolved_services(path)
        .into_iter()
        .map(|(name, service)| {
            let env = environment(&service, &format!("{}: service {name}", path.display()));
            (name, env)
        })
        .collect()
}

/// The problems of one compose file's services, as readable lines.
fn problems_in(file: &str) -> Vec<String> {
    let services = services(&repo_root().join(file));
    let mut problems = Vec::new();
    for checked in checked_services() {
        let Some(env) = services.get(checked.name) else {
            problems.push(format!("{file}: no service {}", checked.name));
            continue;
        };
        for var in env.keys() {
            let read = checked.reads.contains(var)
                || LOGGING_VARS.contains(&var.as_str())
                || var.starts_with(KAFKA_CONFIG_PREFIX);
            if !read {
                problems.push(format!(
                    "{file}: {} sets {var}, which it does not read (it reads {}, {}, {KAFKA_CONFIG_PREFIX}*)",
                    checked.name,
                    checked.reads.join(", "),
                    LOGGING_VARS.join(", "),
                ));
            }
        }
        if let Err(err) = (checked.load)(env) {
            problems.push(format!(
                "{file}: {} would not start with this environment: {err}",
                checked.name
            ));
        }
    }
    problems
}

#[test]
fn compose_sets_only_variables_the_services_read_and_all_they_need() {
    let problems: Vec<String> = COMPOSE_FILES.iter().flat_map(|f| problems_in(f)).collect();
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn compose_points_every_service_at_the_brokers_of_its_file() {
    // Single broker: its container listener. Cluster: all three, replicated three times.
    for (file, bootstrap, replication) in [
        ("docker-compose.yml", "kafka:29092", "1"),
        (
            "docker-compose-cluster.yml",
            "kafka:29092,kafka-2:29092,kafka-3:29092",
            "3",
        ),
    ] {
        let services = services(&repo_root().join(file));
        for checked in checked_services() {
            let env = &services[checked.name];
            assert_eq!(
                env.get("KAFKA_BOOTSTRAP_SERVERS").map(String::as_str),
                Some(bootstrap),
                "{file}: {}",
                checked.name
            );
            assert_eq!(
                env.get("FLATPACK_TOPIC_REPLICATION_FACTOR")
                    .map(String::as_str),
                Some(replication),
                "{file}: {}",
                checked.name
            );
        }
    }
}

#[test]
fn env_var_names_of_a_service_come_from_its_settings_struct() {
    // Guards the derivation the checks above rely on: renamed fields, upper-cased.
    let orders = env_var_names::<OrdersSettings>();
    assert!(orders.iter().any(|v| v == "ORDERS_HTTP_ADDR"), "{orders:?}");
    assert!(
        orders.iter().all(|v| v.starts_with("ORDERS_")),
        "{orders:?}"
    );
    assert_eq!(env_var_names::<RulesCheck>(), ["PAYMENT_MAX_AMOUNT"]);
}

/// A healthcheck that runs: present, not disabled, with a test other than `NONE`.
fn has_healthcheck(service: &Mapping) -> bool {
    let Some(Value::Mapping(check)) = service.get("healthcheck") else {
        return false;
    };
    let disabled = check.get("disable") == Some(&Value::Bool(true));
    let test = match check.get("test") {
        Some(Value::Sequence(words)) => words.first().is_some_and(|w| w != "NONE"),
        Some(Value::String(command)) => !command.trim().is_empty(),
        _ => false,
    };
    !disabled && test
}

/// `depends_on` as dependency -> condition, in either of compose's forms (a list means
/// `service_started`).
fn depends_on(service: &Mapping, what: &str) -> BTreeMap<String, String> {
    match service.get("depends_on") {
        None => BTreeMap::new(),
        Some(Value::Sequence(names)) => names
            .iter()
            .map(|n| (scalar(n, what), "service_started".to_string()))
            .collect(),
        Some(Value::Mapping(deps)) => deps
            .iter()
            .map(|(name, dep)| {
                let condition = match dep {
                    Value::Mapping(dep) => dep.get("condition").map(|c| scalar(c, what)),
                    _ => None,
                };
                (
                    scalar(name, what),
                    condition.unwrap_or_else(|| "service_started".to_string()),
                )
            })
            .collect(),
        Some(other) => panic!("{what}: depends_on is neither a list nor a mapping: {other:?}"),
    }
}

#[test]
fn compose_restarts_every_service_and_health_checks_every_http_port() {
    // HTTP ports: whatever a service publishes, and the flatpack services that listen on an
    // `*_HTTP_ADDR` (published or not).
    let http_services: Vec<&str> = checked_services()
        .iter()
        .filter(|s| s.reads.iter().any(|v| v.ends_with("_HTTP_ADDR")))
        .map(|s| s.name)
        .collect();
    assert_eq!(http_services, ["orders", "dashboard"]);
    let mut problems = Vec::new();
    for file in ALL_COMPOSE_FILES {
        let services = resolved_services(&repo_root().join(file));
        for (name, service) in &services {
            let what = format!("{file}: {name}");
            let restart = service.get("restart").map(|r| scalar(r, &what));
            if !restart
                .as_deref()
                .is_some_and(|r| RESTARTING.contains(&r.split(':').next().unwrap_or_default()))
            {
                problems.push(format!(
                    "{what}: restart is {restart:?}, not one of {RESTARTING:?}"
                ));
            }
            let publishes =
                matches!(service.get("ports"), Some(Value::Sequence(p)) if !p.is_empty());
            if (publishes || http_services.contains(&name.as_str())) && !has_healthcheck(service) {
                problems.push(format!("{what}: has an HTTP port but no healthcheck"));
            }
            for (dependency, condition) in depends_on(service, &what) {
                let checked = services.get(&dependency).is_some_and(has_healthcheck);
                if checked && condition != "service_healthy" {
                    problems.push(format!(
                        "{what}: waits for {dependency} with {condition}, not service_healthy, though it has a healthcheck"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

// ---------------------------------------------------------------- the compose CLI, hadolint

/// A checking tool named by `var` (`scripts/tool.sh` installs it and prints the line), or
/// `None` when the test must be skipped (see [`crate::helpers::missing`]).
fn tool(var: &str, name: &str) -> Option<PathBuf> {
    match std::env::var(var) {
        Ok(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => {
            crate::helpers::missing(
                name,
                &format!("{var} is not set"),
                &format!(
                    "Run `scripts/tool.sh {name}` (or `scripts/test.sh`) and export what it prints."
                ),
            );
            None
        }
    }
}

/// `docker compose <args>` from the repository root, with no user setting that changes what
/// the files mean; its stdout, or a panic naming the command and what it said.
fn compose(cli: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new(cli)
        .current_dir(repo_root())
        .args(args)
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROJECT_NAME")
        .env_remove("COMPOSE_PROFILES")
        .env_remove("COMPOSE_ENV_FILES")
        .output()
        .expect("running the compose CLI");
    assert!(
        output.status.success(),
        "docker compose {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 from compose")
}

/// Each way a user runs the files, as the real compose CLI reads them.
#[test]
fn the_compose_cli_accepts_every_file_and_every_combination_users_run() {
    let Some(cli) = tool("DOCKER_COMPOSE", "docker-compose") else {
        return;
    };
    for args in [
        &["-f", "docker-compose.yml", "config", "-q"][..],
        &["-f", "docker-compose-kafka.yml", "config", "-q"],
        &[
            "-f",
            "docker-compose-kafka.yml",
            "-f",
            "docker-compose-services.yml",
            "config",
            "-q",
        ],
        // The services alone name a broker that is not in the file.
        &[
            "-f",
            "docker-compose-services.yml",
            "config",
            "-q",
            "--no-consistency",
        ],
        &["-f", "docker-compose-cluster.yml", "config", "-q"],
    ] {
        compose(&cli, args);
    }
}

/// Kafka UI only with the profile `ui`: a plain `up` needs no image the machine cannot make.
#[test]
fn each_compose_project_runs_exactly_its_services() {
    let Some(cli) = tool("DOCKER_COMPOSE", "docker-compose") else {
        return;
    };
    let flatpack = "mailpit jaeger prometheus orders transactions analytics email dashboard";
    let cluster = format!("kafka kafka-2 kafka-3 {flatpack}");
    for (args, want) in [
        (&["-f", "docker-compose-kafka.yml"][..], "kafka".to_owned()),
        (
            &["-f", "docker-compose-kafka.yml", "--profile", "ui"],
            "kafka kafka-ui".to_owned(),
        ),
        (&["-f", "docker-compose.yml"], format!("kafka {flatpack}")),
        (
            &["-f", "docker-compose.yml", "--profile", "ui"],
            format!("kafka kafka-ui {flatpack}"),
        ),
        (&["-f", "docker-compose-cluster.yml"], cluster.clone()),
        (
            &["-f", "docker-compose-cluster.yml", "--profile", "ui"],
            format!("{cluster} kafka-ui"),
        ),
    ] {
        let have: std::collections::BTreeSet<String> =
            compose(&cli, &[args, &["config", "--services"]].concat())
                .lines()
                .map(str::to_owned)
                .collect();
        let want: std::collections::BTreeSet<String> = want.split(' ').map(str::to_owned).collect();
        assert_eq!(have, want, "docker compose {}", args.join(" "));
    }
}

/// Every service a compose file builds is a stage of `docker/Dockerfile`, tagged
/// `flatpack/<stage>`.
#[test]
fn every_built_service_is_a_dockerfile_stage_tagged_flatpack_stage() {
    let Some(cli) = tool("DOCKER_COMPOSE", "docker-compose") else {
        return;
    };
    let dockerfile = std::fs::read_to_string(repo_root().join("docker/Dockerfile")).unwrap();
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|line| line.starts_with("FROM "))
        .filter_map(|line| line.split_whitespace().collect::<Vec<_>>().get(3).copied())
        .collect();
    for file in ["docker-compose.yml", "docker-compose-cluster.yml"] {
        let config: serde_json::Value =
            serde_json::from_str(&compose(&cli, &["-f", file, "config", "--format", "json"]))
                .expect("compose config as JSON");
        let mut built = 0;
        for (name, service) in config["services"].as_object().expect("services") {
            let Some(build) = service.get("build") else {
                continue;
            };
            built += 1;
            let target = build["target"].as_str().unwrap_or_default();
            assert!(
                stages.contains(&target),
                "{file}: {name} builds '{target}', not a stage of {stages:?}"
            );
            assert_eq!(
                service["image"],
                format!("flatpack/{target}"),
                "{file}: {name}'s image"
            );
            assert_eq!(
                build["dockerfile"], "docker/Dockerfile",
                "{file}: {name}'s Dockerfile"
            );
        }
        assert_eq!(built, 5, "{file} builds the five services");
    }
}

#[test]
fn hadolint_finds_nothing_in_the_dockerfile() {
    let Some(hadolint) = tool("HADOLINT", "hadolint") else {
        return;
    };
    let output = std::process::Command::new(hadolint)
        .arg("--no-color")
        .arg(repo_root().join("docker/Dockerfile"))
        .output()
        .expect("running hadolint");
    assert!(
        output.status.success(),
        "hadolint docker/Dockerfile: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

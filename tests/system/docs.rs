//! The docs against the code: the facts the docs repeat from the code (environment
//! variables, metric names, topic names) match it, and every relative link in `README.md` and
//! `docs/` leads to a file. No broker needed.
//!
//! The code is read as text at test time, from `crates/*/src`, without its `#[cfg(test)]`
//! modules (always at the end of a file here) and without whole-line comments:
//!
//! - **Variables** come from two places. Settings structs (see `common::settings`): each type
//!   with an `impl ... Settings for Type` reads one variable per field, named by the field's
//!   `#[serde(rename = "...")]` or else by the field itself, upper-cased (`rename_all` with a
//!   case style does not change an upper-cased name); `#[serde(skip)]` fields read none.
//!   Direct reads: in a file that calls `std::env::var*`, every string literal shaped like a
//!   variable name with an underscore (`"LOG_FORMAT"`, or a prefix such as `"KAFKA_CONFIG_"`)
//!   counts as read, and so does any upper-case literal passed straight to `env::var("...")`
//!   or `env::var_os("...")` (`"HOSTNAME"`).
//!   A few variables are read by libraries on flatpack's behalf: see [`READ_BY_LIBRARIES`].
//! - **Metrics**: every `"flatpack_..."` literal that is not a serde rename.
//! - **Topics**: the four of [`Topic::ALL`] and each `.changelog("store")` of a service.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use analytics::AnalyticsSettings;
use common::settings::env_var_names;
use common::{KafkaSettings, Topic};
use dashboard::DashboardSettings;
use email::EmailSettings;
use orders::OrdersSettings;
use transactions::{RulesCheck, TransactionsSettings};

/// Documented variables that flatpack's own code never names, because a library it calls
/// reads them. `*`-free names are exact, names ending in `_` are prefixes.
const READ_BY_LIBRARIES: [&str; 4] = [
    // tracing-subscriber's `EnvFilter::try_from_default_env` (common::telemetry).
    "RUST_LOG",
    // OpenTelemetry's SDK (the resource, the batch span processor) and its OTLP exporter.
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_BSP_",
];

const CONFIGURATION: &str = "docs/configuration.md";
const VARIABLES_SECTION: &str = "## What the services read";
const OPERATIONS: &str = "docs/operations.md";
const METRICS_SECTION: &str = "## Metrics";
const CONTRACT: &str = "docs/contract.md";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every `.rs` file under `crates/*/src`, as `(path from the repository root, code)`, the
/// code without its test modules and whole-line comments.
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    let root = repo_root();
    let mut files = Vec::new();
    for krate in std::fs::read_dir(root.join("crates")).expect("listing crates/") {
        let src = krate.expect("directory entry").path().join("src");
        if src.is_dir() {
            walk(&src, &mut files);
        }
    }
    files.sort();
    assert!(!files.is_empty(), "no sources under crates/*/src");
    files
        .iter()
        .map(|path| {
            let text = read(path);
            let code: String = text
                .lines()
                .take_while(|line| line.trim() != "#[cfg(test)]")
                .filter(|line| !line.trim_start().starts_with("//"))
                .map(|line| format!("{line}\n"))
                .collect();
            let name = path.strip_prefix(&root).unwrap_or(path);
            (name.display().to_string(), code)
        })
        .collect()
}

/// The string literals in `code` made only of `allowed` characters, with the text before
/// each (to tell, say, `env!("X")` or `rename = "x"` apart).
fn literals(code: &str, allowed: fn(char) -> bool) -> Vec<(&str, &str)> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices('"') {
        let rest = &code[at + 1..];
        let len = rest.find(|c: char| !allowed(c)).unwrap_or(rest.len());
        if len > 0 && rest[len..].starts_with('"') {
            found.push((&rest[..len], &code[..at]));
        }
    }
    found
}

/// `HOSTNAME`, `LOG_FORMAT`, or a prefix such as `KAFKA_CONFIG_`.
fn is_variable_name(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_uppercase())
        && text
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Whether `name` is `documented`, exactly or under a documented prefix (ending in `_`).
fn covered(name: &str, documented: &BTreeSet<String>) -> bool {
    documented.contains(name)
        || documented
            .iter()
            .any(|doc| doc.ends_with('_') && name.starts_with(doc.as_str()))
}

/// The variables a settings struct `name`, defined in `code`, reads.
fn struct_fields(name: &str, code: &str) -> Option<Vec<String>> {
    let start = code.find(&format!("struct {name} {{"))?;
    let body = &code[start..];
    let body = &body[body.find('\n')? + 1..body.find("\n}")?];
    let mut names = Vec::new();
    let mut attrs = String::new();
    let mut in_attr = false;
    for line in body.lines().map(str::trim) {
        // An attribute, possibly over several lines, belongs to the next field.
        if in_attr || line.starts_with("#[") {
            attrs.push_str(line);
            in_attr = !line.ends_with(']');
            continue;
        }
        let field = line
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub ");
        let Some((ident, _)) = field.split_once(':') else {
            continue;
        };
        if ident.is_empty() || !ident.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        assert!(
            !attrs.contains("flatten"),
            "{name}.{ident}: #[serde(flatten)] is not understood here; list its fields"
        );
        let skipped = attrs
            .split(['(', ')', ','])
            .any(|part| part.trim() == "skip");
        if !skipped {
            let renamed = attrs
                .split_once("rename = \"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(renamed, _)| renamed);
            names.push(renamed.unwrap_or(ident).to_uppercase());
        }
        attrs.clear();
    }
    Some(names)
}

/// Every environment variable the code reads, with the file that reads it.
fn variables_read() -> BTreeMap<String, String> {
    let sources = sources();
    let mut read = BTreeMap::new();
    for (file, code) in &sources {
        // Settings structs: `impl Settings for X` or `impl common::Settings for X`.
        for (at, _) in code.match_indices("Settings for ") {
            let line_start = code[..at].rfind('\n').map_or(0, |i| i + 1);
            if !code[line_start..at].trim_start().starts_with("impl ") {
                continue;
            }
            let rest = &code[at + "Settings for ".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let fields = sources
                .iter()
                .find_map(|(_, code)| struct_fields(&name, code))
                .unwrap_or_else(|| panic!("{file}: no `struct {name} {{` found for its Settings"));
            for var in fields {
                read.entry(var).or_insert_with(|| file.clone());
            }
        }
        // Direct reads.
        if code.contains("env::var") {
            for (text, before) in literals(code, |c| c.is_ascii_alphanumeric() || c == '_') {
                let argument = before.ends_with("env::var(") || before.ends_with("env::var_os(");
                let counts = argument || (text.contains('_') && !before.ends_with("env!("));
                if is_variable_name(text) && counts {
                    read.entry(text.to_owned()).or_insert_with(|| file.clone());
                }
            }
        }
    }
    read
}

/// The names in backticks in the first column of the tables of `section` (from its heading
/// to the next `## `) in the Markdown file `doc`.
fn first_column(doc: &str, section: &str) -> BTreeSet<String> {
    let text = read(&repo_root().join(doc));
    let start = text
        .find(section)
        .unwrap_or_else(|| panic!("{doc} has no section {section:?}"));
    let body = &text[start + section.len()..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    let mut names = BTreeSet::new();
    for row in body.lines().filter(|line| line.starts_with('|')).skip(2) {
        let cell = row.split('|').nth(1).unwrap_or_default();
        for (i, name) in cell.split('`').enumerate() {
            if i % 2 == 1 {
                names.insert(name.to_owned());
            }
        }
    }
    assert!(!names.is_empty(), "{doc}: no table rows in {section:?}");
    names
}

/// The variables of `docs/configuration.md`, `<PROPERTY>` and `*` endings as prefixes.
fn variables_documented() -> BTreeSet<String> {
    first_column(CONFIGURATION, VARIABLES_SECTION)
        .into_iter()
        .map(|name| match name.find(['<', '*']) {
            Some(end) => name[..end].to_owned(),
            None => name,
        })
        .collect()
}

#[test]
fn every_variable_the_code_reads_has_a_row_in_configuration_md() {
    let documented = variables_documented();
    let missing: Vec<String> = variables_read()
        .into_iter()
        .filter(|(var, _)| !covered(var, &documented))
        .map(|(var, file)| format!("{var} (read in {file})"))
        .collect();
    assert!(
        missing.is_empty(),
        "read by the code but missing from the table of {CONFIGURATION} {VARIABLES_SECTION:?}: {}",
        missing.join(", ")
    );
}

#[test]
fn every_variable_in_configuration_md_is_read_by_the_code() {
    let read: BTreeSet<String> = variables_read().into_keys().collect();
    let libraries: BTreeSet<String> = READ_BY_LIBRARIES.iter().map(|s| s.to_string()).collect();
    let unread: Vec<String> = variables_documented()
        .into_iter()
        .filter(|var| !read.contains(var) && !libraries.contains(var))
        .collect();
    assert!(
        unread.is_empty(),
        "in the table of {CONFIGURATION} {VARIABLES_SECTION:?} but read nowhere in crates/*/src \
         (nor in READ_BY_LIBRARIES): {}",
        unread.join(", ")
    );
}

#[test]
fn the_source_scan_finds_every_variable_serde_reads() {
    // Guards the text scan above with serde's own view of the structs this binary can see.
    let read = variables_read();
    let by_serde = [
        env_var_names::<KafkaSettings>(),
        env_var_names::<OrdersSettings>(),
        env_var_names::<TransactionsSettings>(),
        env_var_names::<RulesCheck>(),
        env_var_names::<AnalyticsSettings>(),
        env_var_names::<EmailSettings>(),
        env_var_names::<DashboardSettings>(),
    ];
    let missed: Vec<String> = by_serde
        .into_iter()
        .flatten()
        .filter(|var| !read.contains_key(var))
        .collect();
    assert!(
        missed.is_empty(),
        "serde reads these but the scan of crates/*/src did not find them: {}",
        missed.join(", ")
    );
}

/// Every metric name registered in the code, with the file that registers it.
fn metrics_registered() -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for (file, code) in sources() {
        let metric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
        for (text, before) in literals(&code, metric) {
            if text.starts_with("flatpack_") && !before.trim_end().ends_with("rename =") {
                names.entry(text.to_owned()).or_insert_with(|| file.clone());
            }
        }
    }
    assert!(
        !names.is_empty(),
        "no flatpack_* metric found in crates/*/src"
    );
    names
}

#[test]
fn every_metric_the_code_registers_is_in_the_metrics_table() {
    let documented = first_column(OPERATIONS, METRICS_SECTION);
    let missing: Vec<String> = metrics_registered()
        .into_iter()
        .filter(|(name, _)| !documented.contains(name))
        .map(|(name, file)| format!("{name} (registered in {file})"))
        .collect();
    assert!(
        missing.is_empty(),
        "registered by the code but missing from the table of {OPERATIONS} {METRICS_SECTION:?}: {}",
        missing.join(", ")
    );
}

#[test]
fn every_metric_in_the_metrics_table_is_registered_by_the_code() {
    let registered = metrics_registered();
    let unknown: Vec<String> = first_column(OPERATIONS, METRICS_SECTION)
        .into_iter()
        .filter(|name| !registered.contains_key(name))
        .collect();
    assert!(
        unknown.is_empty(),
        "in the table of {OPERATIONS} {METRICS_SECTION:?} but registered nowhere in crates/*/src: {}",
        unknown.join(", ")
    );
}

#[test]
fn every_topic_of_the_code_is_named_in_contract_md() {
    let mut topics: BTreeSet<String> = Topic::ALL
        .iter()
        .map(|topic| topic.base_name().to_owned())
        .collect();
    for (_, code) in sources() {
        for (at, _) in code.match_indices(".changelog(\"") {
            let rest = &code[at + ".changelog(\"".len()..];
            let store = &rest[..rest.find('"').expect("closing quote")];
            topics.insert(format!("{store}-changelog"));
        }
    }
    let contract = read(&repo_root().join(CONTRACT));
    let missing: Vec<String> = topics
        .into_iter()
        .filter(|topic| !contract.contains(&format!("`{topic}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "topics of the code not named (in backticks) in {CONTRACT}: {}",
        missing.join(", ")
    );
}

#[test]
fn every_relative_link_in_the_docs_leads_to_a_file() {
    let root = repo_root();
    let mut docs = vec![root.join("README.md")];
    let listing = std::fs::read_dir(root.join("docs")).expect("listing docs/");
    for entry in listing {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|ext| ext == "md") {
            docs.push(path);
        }
    }
    let mut broken = Vec::new();
    for doc in &docs {
        let text = read(doc);
        for (at, _) in text.match_indices("](") {
            let rest = &text[at + 2..];
            let target = &rest[..rest.find(')').unwrap_or(rest.len())];
            let file = target.split('#').next().unwrap_or_default();
            let external = ["http://", "https://", "mailto:"]
                .iter()
                .any(|scheme| target.starts_with(scheme));
            if external || file.is_empty() {
                continue;
            }
            let dir = doc.parent().expect("a file's directory");
            if !dir.join(file).exists() {
                let name = doc.strip_prefix(&root).unwrap_or(doc);
                broken.push(format!("{} links to {target}", name.display()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links to files that do not exist: {}",
        broken.join(", ")
    );
}

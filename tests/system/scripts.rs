//! The local-run scripts: a broker a script spawned must not outlive the script; `run.sh` restarts what exits, stops everything on SIGHUP, and leaves
//! nothing behind when its process group is SIGKILLed; `tool.sh smtp-sink` installs an SMTP
//! server that accepts every e-mail.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loadgen::steady::Measurement;

fn script(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Processes whose command line mentions `marker`.
fn processes_mentioning(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(marker) {
                found.push(cmdline);
            }
        }
    }
    found
}

/// `test.sh` starts its broker with `fp_spawn` (scripts/lib.sh): when the script is
/// SIGKILLed, nothing is left to stop the broker but the kernel, which must.
#[test]
fn a_broker_a_script_spawned_is_stopped_when_the_script_is_killed() {
    if Command::new("java").arg("-version").output().is_err() {
        crate::helpers::missing(
            "Java",
            "`java` does not run",
            "Install a JDK 17 or run `scripts/test.sh` on a machine that has one.",
        );
        return;
    }
    let data_dir =
        std::env::temp_dir().join(format!("flatpack-spawn-test-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&data_dir).unwrap();
    let marker = data_dir.to_string_lossy().into_owned();
    // The script spawns the broker, then waits as `sleep` (exec: the same process).
    let [port, controller_port] = free_ports();
    let mut starter = Command::new("bash")
        .arg("-c")
        .arg(r#"source "$1/lib.sh"; fp_spawn "$2/kafka.out" "$1/kafka.sh" run --data-dir "$2" --port "$3" --controller-port "$4"; exec sleep 600"#)
        .arg("starter")
        .arg(script(""))
        .arg(&data_dir)
        .args([port.to_string(), controller_port.to_string()])
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !processes_mentioning(&format!("-Dkafka.logs.dir={marker}"))
        .iter()
        .any(|cmd| cmd.starts_with("java "))
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no broker JVM for {marker}: {}",
            std::fs::read_to_string(data_dir.join("kafka.out")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    starter.kill().unwrap();
    starter.wait().unwrap();

    let killed = Instant::now();
    while !processes_mentioning(&marker).is_empty() {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "still running a minute after their starter was killed: {:?}",
            processes_mentioning(&marker)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&data_dir);
}

// ---------------------------------------------------------------- scripts/run.sh

/// One `run.sh` at a time: each runs a whole Kafka broker, and two at once on a small
/// machine only make both slower.
static RUN_SH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the whole system may take to answer after `run.sh` starts (Kafka's start on a
/// busy machine, supervisor's installation on the first run).
const START_DEADLINE: Duration = Duration::from_secs(180);

/// `scripts/run.sh` running in a process group of its own, on free ports and a temporary
/// state directory. Dropping it kills the group and whatever is left of the run.
struct LocalRun {
    child: Child,
    state: PathBuf,
    orders: String,
    dashboard: String,
    jaeger: String,
    http: reqwest::Client,
}

/// Everything `run.sh` needs that a machine may lack; `false` when the test must be skipped.
fn run_sh_prerequisites() -> bool {
    for (what, cmd, arg) in [
        ("Java", "java", "-version"),
        ("python3", "python3", "--version"),
        ("setpriv (util-linux)", "setpriv", "--version"),
        ("setsid (util-linux)", "setsid", "--version"),
    ] {
        if Command::new(cmd).arg(arg).output().is_err() {
            crate::helpers::missing(
                what,
                &format!("`{cmd}` does not run"),
                "scripts/run.sh needs it; install it or run `scripts/test.sh` on a machine that has it.",
            );
            return false;
        }
    }
    true
}

/// Where cargo put the service binaries (`target/<profile>`, next to this test binary's
/// `deps`), so that run.sh runs those instead of building.
fn service_binaries() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory")
        .to_path_buf();
    for name in ["orders", "transactions", "email", "analytics", "dashboard"] {
        assert!(
            dir.join(name).exists(),
            "{} is missing: build the service binaries first (`cargo build --workspace --bins`, which scripts/test.sh does)",
            dir.join(name).display()
        );
    }
    dir
}

fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local address").port())
}

/// Polls `check` every 200 ms until it gives a value; panics with `what` after `deadline`.
async fn eventually<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn is_alive_as(pid: u32, cmdline: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| !c.is_empty() && String::from_utf8_lossy(&c).replace('\0', " ") == cmdline)
}

impl LocalRun {
    async fn start() -> Self {
        let state =
            std::env::temp_dir().join(format!("flatpack-run-test-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&state).unwrap();
        let [
            kafka,
            smtp,
            mailpit_http,
            orders,
            dashboard,
            transactions_ops,
            analytics_ops,
            email_ops,
            jaeger_ui,
            jaeger_otlp,
            jaeger_grpc,
        ] = free_ports::<11>();
        let output = std::fs::File::create(state.join("run.sh.out")).unwrap();
        let child = Command::new("bash")
            .arg(script("run.sh"))
            .env("FLATPACK_STATE_DIR", &state)
            .env("FLATPACK_BIN_DIR", service_binaries())
            .env("KAFKA_PORT", kafka.to_string())
            .env("MAILPIT_SMTP_PORT", smtp.to_string())
            .env("MAILPIT_HTTP_PORT", mailpit_http.to_string())
            .env("ORDERS_HTTP_ADDR", format!("127.0.0.1:{orders}"))
            .env("DASHBOARD_HTTP_ADDR", format!("127.0.0.1:{dashboard}"))
            .env(
                "TRANSACTIONS_OPS_ADDR",
                format!("127.0.0.1:{transactions_ops}"),
            )
            .env("ANALYTICS_OPS_ADDR", format!("127.0.0.1:{analytics_ops}"))
            .env("EMAIL_OPS_ADDR", format!("127.0.0.1:{email_ops}"))
            .env("JAEGER_UI_ADDR", format!("127.0.0.1:{jaeger_ui}"))
            .env("JAEGER_OTLP_HTTP_ADDR", format!("127.0.0.1:{jaeger_otlp}"))
            .env("JAEGER_QUERY_GRPC_ADDR", format!("127.0.0.1:{jaeger_grpc}"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .process_group(0)
            .spawn()
            .expect("starting scripts/run.sh");
        eprintln!("run.sh (pid {}) in {}", child.id(), state.display());
        let mut run = Self {
            child,
            state,
            orders: format!("http://127.0.0.1:{orders}"),
            dashboard: format!("http://127.0.0.1:{dashboard}"),
            jaeger: format!("http://127.0.0.1:{jaeger_ui}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        let until = Instant::now() + START_DEADLINE;
        loop {
            if let Ok(response) = run.http.get(format!("{}/readyz", run.orders)).send().await
                && response.status().is_success()
            {
                break;
            }
            if let Some(status) = run.child.try_wait().unwrap() {
                panic!(
                    "run.sh exited ({status}) during start-up:\n{}",
                    run.output()
                );
            }
            assert!(
                Instant::now() < until,
                "the orders API did not answer /readyz within {START_DEADLINE:?}:\n{}",
                run.output()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        run
    }

    fn pgid(&self) -> String {
        format!("-{}", self.child.id())
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.state.join("run.sh.out")).unwrap_or_default()
    }

    fn supervisor_log(&self) -> String {
        std::fs::read_to_string(self.state.join("logs/supervisord.log")).unwrap_or_default()
    }

    /// `<state>/supervisorctl <args>`, the control run.sh writes and tells the user about.
    fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(self.state.join("supervisorctl"))
            .args(args)
            .output()
            .expect("running supervisorctl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pid of a supervised program; `None` while it does not run.
    fn pid(&self, program: &str) -> Option<u32> {
        self.ctl(&["pid", program])
            .trim()
            .parse()
            .ok()
            .filter(|&pid| pid > 0)
    }

    /// Posts an order and waits until the dashboard shows it confirmed and e-mailed: every
    /// service, the broker and Mailpit did their part. The client's side of the order is a
    /// sampled trace (`traceparent` flag `01`), as docs/operations.md shows, so that the
    /// services, which sample 1 % of the traces that start with them, trace it whole.
    async fn order_goes_through(&self, order_id: u64) {
        let traceparent = format!(
            "00-{:032x}-{:016x}-01",
            rand::random::<u128>() | 1,
            rand::random::<u64>() | 1
        );
        let response = self
            .http
            .post(format!("{}/order", self.orders))
            .header("traceparent", traceparent)
            .json(&crate::helpers::order_body(order_id, "349"))
            .send()
            .await
            .expect("POST /order");
        assert_eq!(response.status(), 200, "POST /order {order_id}");
        let url = format!("{}/api/orders/{order_id}", self.dashboard);
        let until = Instant::now() + Duration::from_secs(60);
        let mut last = serde_json::Value::Null;
        loop {
            if let Ok(response) = self.http.get(&url).send().await
                && response.status().is_success()
            {
                last = response.json().await.expect("dashboard order JSON");
                if last["status"] == "confirmed" && last["email_sent"] == true {
                    return;
                }
            }
            assert!(
                Instant::now() < until,
                "order {order_id} not confirmed and e-mailed on the dashboard within 60 s; last seen: {last}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until the Jaeger that run.sh started (and names in what it prints) holds a
    /// trace of an order through all four services that handle one (the sampled order of
    /// [`LocalRun::order_goes_through`]).
    async fn traces_reach_jaeger(&self) {
        assert!(
            self.output()
                .contains(&format!("{}/api/traces", self.jaeger)),
            "{}",
            self.output()
        );
        // Only the orders' traces: probes of /readyz, run.sh's and the test's, are traces too.
        let url = format!(
            "{}/api/traces?service=orders&operation=POST%20%2Forder&limit=20",
            self.jaeger
        );
        let until = Instant::now() + Duration::from_secs(60);
        let mut last = serde_json::Value::Null;
        loop {
            if let Ok(response) = self.http.get(&url).send().await
                && response.status().is_success()
            {
                last = response.json().await.expect("Jaeger's JSON");
                let whole = last["data"].as_array().into_iter().flatten().any(|trace| {
                    let services: Vec<&str> = trace["processes"]
                        .as_object()
                        .into_iter()
                        .flat_map(|p| p.values())
                        .filter_map(|p| p["serviceName"].as_str())
                        .collect();
                    ["orders", "transactions", "email", "analytics"]
                        .iter()
                        .all(|s| services.contains(s))
                });
                if whole {
                    return;
                }
            }
            assert!(
                Instant::now() < until,
                "no trace through orders, transactions, email and analytics in {url} within 60 s; last: {last}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn signal_group(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, "--", &self.pgid()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} -- {}", self.pgid());
    }

    fn leftovers(&self) -> Vec<String> {
        processes_mentioning(&self.state.to_string_lossy())
    }
}

impl Drop for LocalRun {
    fn drop(&mut self) {
        // Whatever is left of the group; the rest dies with supervisord (pdeathsig).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &self.pgid()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "run.sh's output:\n{}\nstate kept in {}",
                self.output(),
                self.state.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.state);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_sh_restarts_a_killed_service_and_stops_everything_on_sighup() {
    if !run_sh_prerequisites() {
        return;
    }
    let _one_at_a_time = RUN_SH.lock().await;
    let mut run = LocalRun::start().await;
    run.order_goes_through(1001).await;
    run.traces_reach_jaeger().await;

    let killed = run.pid("services:transactions").expect("transactions runs");
    let status = Command::new("kill")
        .args(["-KILL", &killed.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let restarted = eventually(
        "supervisord restarts transactions and says so",
        Duration::from_secs(30),
        || {
            let pid = run.pid("services:transactions").filter(|&p| p != killed)?;
            let log = run.supervisor_log();
            let said = log.contains("exited: transactions (terminated by SIGKILL; not expected)")
                && log.contains(&format!("spawned: 'transactions' with pid {pid}"))
                && run
                    .output()
                    .contains(&format!("spawned: 'transactions' with pid {pid}"));
            said.then_some(pid)
        },
    )
    .await;
    eprintln!("transactions: pid {killed} killed, pid {restarted} runs");
    run.order_goes_through(1002).await;

    // A closed terminal: SIGHUP to run.sh's process group. Everything stops in order.
    run.signal_group("-HUP");
    let until = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = run.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < until,
            "run.sh still runs 90 s after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status.code(), Some(129), "run.sh exits as for SIGHUP");
    assert_eq!(
        run.leftovers(),
        Vec::<String>::new(),
        "nothing left running"
    );
    let log = run.supervisor_log();
    for program in [
        "orders",
        "transactions",
        "email",
        "analytics",
        "dashboard",
        "mailpit",
        "jaeger",
        "kafka",
    ] {
        assert!(
            log.contains(&format!("stopped: {program} (")),
            "supervisord stopped {program}:\n{log}"
        );
    }
    assert!(run.output().contains("run.sh: stopped"), "{}", run.output());
}

#[tokio::test(flavor = "multi_thread")]
async fn run_sh_killed_with_its_process_group_leaves_nothing_behind() {
    if !run_sh_prerequisites() {
        return;
    }
    let _one_at_a_time = RUN_SH.lock().await;
    let run = LocalRun::start().await;

    // Supervisord and every program it runs (the services' command lines do not name the
    // state dir, so they are followed by pid).
    let mut programs: Vec<(u32, String)> = run
        .ctl(&["pid", "all"])
        .lines()
        .chain(std::iter::once(
            std::fs::read_to_string(run.state.join("supervisord.pid"))
                .unwrap_or_default()
                .trim(),
        ))
        .filter_map(|pid| pid.trim().parse().ok())
        .filter_map(|pid: u32| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
        })
        .collect();
    programs.sort();
    assert_eq!(
        programs.len(),
        9,
        "supervisord and 8 programs: {programs:?}"
    );
    let mentioning = run.leftovers();
    for part in ["supervisord", "kafka.Kafka", "mailpit"] {
        assert!(
            mentioning.iter().any(|c| c.contains(part)),
            "a process of {part} names the state dir: {mentioning:?}"
        );
    }

    run.signal_group("-KILL");
    let gone = Instant::now();
    eventually(
        "no process of the run is left 10 s after SIGKILL to run.sh's group",
        Duration::from_secs(10),
        || {
            let left: Vec<&(u32, String)> = programs
                .iter()
                .filter(|(pid, cmdline)| is_alive_as(*pid, cmdline))
                .collect();
            (left.is_empty() && run.leftovers().is_empty()).then_some(())
        },
    )
    .await;
    eprintln!("everything gone {:?} after SIGKILL", gone.elapsed());
}

/// `tool.sh smtp-sink` gives the benchmark an SMTP server that keeps nothing: Postfix's
/// smtp-sink, unpacked from Debian's package without configuring a mail system, accepts
/// every e-mail the email service's sender sends.
#[tokio::test(flavor = "multi_thread")]
async fn tool_sh_installs_an_smtp_sink_that_accepts_every_email_the_sender_sends() {
    if Command::new("apt-get").arg("--version").output().is_err() {
        crate::helpers::missing(
            "apt-get",
            "`apt-get` does not run",
            "scripts/tool.sh smtp-sink unpacks Debian's postfix package; run the tests on Debian.",
        );
        return;
    }
    let installed = Command::new(script("tool.sh"))
        .arg("smtp-sink")
        .stderr(Stdio::inherit())
        .output()
        .expect("running tool.sh smtp-sink");
    assert!(installed.status.success(), "tool.sh smtp-sink failed");
    let stdout = String::from_utf8(installed.stdout).expect("UTF-8 output");
    let program = stdout
        .trim()
        .strip_prefix("SMTP_SINK=")
        .unwrap_or_else(|| panic!("tool.sh printed {stdout:?}, not SMTP_SINK=<path>"));

    let [port] = free_ports();
    let mut sink = Command::new(program);
    let uid = Command::new("id").arg("-u").output().expect("id -u").stdout;
    if uid.trim_ascii() == b"0" {
        sink.args(["-u", "nobody"]); // it refuses to run as root
    }
    let mut sink = sink
        .args([format!("127.0.0.1:{port}"), "64".into()])
        .stdout(Stdio::null())
        .spawn()
        .expect("starting smtp-sink");
    eventually("smtp-sink to listen", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .await;

    let settings = <email::EmailSettings as common::Settings>::from_vars(vec![
        ("SMTP_HOST".to_string(), "127.0.0.1".to_string()),
        ("SMTP_PORT".to_string(), port.to_string()),
    ])
    .expect("SMTP settings");
    let report = loadgen::bench::smtp(&settings, 200, 4, "19.99".parse().unwrap()).await;
    let _ = sink.kill();
    let _ = sink.wait();
    let report = report.expect("sending to smtp-sink");
    assert_eq!(
        (report.sent, report.failed),
        (200, 0),
        "{}",
        report.summary()
    );
}

//! The local-run scripts: a broker started for an owner that is already gone must not be
//! left running.

use std::path::Path;
use std::process::Command;

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

#[test]
fn kafka_started_for_an_owner_that_is_gone_is_stopped_again() {
    if Command::new("java").arg("-version").output().is_err() {
        crate::helpers::missing(
            "Java",
            "`java` does not run",
            "Install a JDK 17 or run `scripts/test.sh` on a machine that has one.",
        );
        return;
    }
    // A pid that no longer runs: a child that has exited and been reaped.
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    let data_dir =
        std::env::temp_dir().join(format!("flatpack-owner-test-{:08x}", rand::random::<u32>()));

    let started = Command::new("bash")
        .arg(script("kafka.sh"))
        .args(["start", "--owner-pid", &gone_pid.to_string(), "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();

    let stderr = String::from_utf8_lossy(&started.stderr);
    assert!(!started.status.success(), "start must fail: {stderr}");
    assert!(
        stderr.contains(&format!("owner pid {gone_pid} does not run")),
        "{stderr}"
    );
    assert!(started.stdout.is_empty(), "no bootstrap address is printed");
    let marker = data_dir.to_string_lossy().into_owned();
    assert_eq!(
        processes_mentioning(&marker),
        Vec::<String>::new(),
        "nothing left running"
    );
    let status = Command::new("bash")
        .arg(script("kafka.sh"))
        .args(["status", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(3), "status says stopped");
    let _ = std::fs::remove_dir_all(&data_dir);
}

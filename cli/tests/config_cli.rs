//! `replite config-check`: a config file is found, parsed and validated, and a bad key is
//! reported with the file, line and key.

use std::fs;
use std::process::Command;

fn run(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_replite"))
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .output()
        .expect("replite runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_check_finds_litefs_yml_and_reports_bad_keys_with_their_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (code, _, stderr) = run(tmp.path(), &["config-check"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("config file not found; looked for ./replite.yml, ./litefs.yml"), "{stderr}");

    fs::write(tmp.path().join("litefs.yml"), "lease:\n  type: static\n  candidate: true\nfuse:\n  dir: /mnt/db\n")
        .expect("write");
    let (code, stdout, stderr) = run(tmp.path(), &["config-check"]);
    assert_eq!((code, stdout.as_str()), (0, "./litefs.yml: ok (lease: static, fuse.dir: /mnt/db)\n"), "{stderr}");

    fs::write(tmp.path().join("bad.yml"), "lease:\n  type: static\nfuse:\n  dir: /mnt/db\n  allow-others: true\n")
        .expect("write");
    let (code, _, stderr) = run(tmp.path(), &["config-check", "-config", "bad.yml"]);
    assert_eq!(code, 1);
    insta::assert_snapshot!(stderr);
}

/// Runs `replite mount` over a static primary with `log_yaml` until its command, a commit
/// through the mount with the `sqlite3` shell, exits; its exit code and stderr. No
/// `REPLITE_LOG`: the config decides.
fn mount_once(log_yaml: &str) -> (i32, String) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("replite.yml");
    let yaml = format!(
        "data:\n  dir: {data}\nfuse:\n  dir: {mnt}\nhttp:\n  addr: 127.0.0.1:0\nlease:\n  type: static\n  candidate: true\n  advertise-url: http://127.0.0.1:1\n{log_yaml}",
        data = tmp.path().join("data").display(),
        mnt = tmp.path().join("mnt").display(),
    );
    fs::write(&config, yaml).expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_replite"))
        .arg("mount")
        .arg("-config")
        .arg(&config)
        .args(["--", "sqlite3"])
        .arg(tmp.path().join("mnt/app.db"))
        .arg("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .env_remove("REPLITE_LOG")
        .output()
        .expect("replite runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn mount_logs_at_info_by_default_without_timestamps_or_colours_as_litefs() {
    let (code, stderr) = mount_once("");
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.lines().any(|l| l.trim_start().starts_with("INFO") && l.contains("HTTP API listening")), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "escape codes in a log that is not a terminal:\n{stderr}");
    assert!(!stderr.contains("DEBUG"), "{stderr}");
    assert!(!stderr.contains("Not Implemented"), "fuser's notes on operations left to the kernel:\n{stderr}");
}

#[test]
fn mount_follows_log_format_json_timestamp_and_debug() {
    let (code, stderr) = mount_once("log:\n  format: json\n  timestamp: true\n  debug: true\n");
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().all(|l| l["timestamp"].is_string() && l["level"].is_string()), "{stderr}");
    assert!(lines.iter().any(|l| l["fields"]["message"] == "HTTP API listening"), "{stderr}");
    assert!(lines.iter().any(|l| l["level"] == "DEBUG"), "log.debug shows replite's debug lines:\n{stderr}");
}

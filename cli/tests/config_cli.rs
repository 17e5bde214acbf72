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

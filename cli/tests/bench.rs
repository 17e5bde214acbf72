//! `replite bench --quick` runs every workload on every side it names and prints a full table:
//! a smoke test of the harness (nodes start, workloads run and are verified, the table and its
//! Markdown copy have every row), never a speed assertion.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest the quick run may take here before the test fails (it takes seconds when quiet).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Row name prefix, and which columns hold figures: native, single node, pair primary, pair
/// replica (each measured column but native is followed by its ratio to native).
const ROWS: &[(&str, [bool; 4])] = &[
    ("write tx, DELETE/FULL", [true, true, true, false]),
    ("write tx, WAL/NORMAL", [true, true, true, false]),
    ("write tx, WAL/FULL", [true, true, true, false]),
    ("large tx (4 MiB), DELETE/FULL", [true, true, true, false]),
    ("large tx (4 MiB), WAL/FULL", [true, true, true, false]),
    ("autocommit read, DELETE", [true, true, true, true]),
    ("batched read (100/tx), DELETE", [true, true, true, true]),
    ("autocommit read, WAL", [true, true, true, true]),
    ("batched read (100/tx), WAL", [true, true, true, true]),
    ("mixed, speedtest1-like (1000 rows), DELETE/FULL", [true, true, true, false]),
    ("mixed, speedtest1-like (1000 rows), WAL/NORMAL", [true, true, true, false]),
    ("lag p50, DELETE/FULL", [false, false, false, true]),
    ("lag p99, DELETE/FULL", [false, false, false, true]),
    ("lag p50, WAL/NORMAL", [false, false, false, true]),
    ("lag p99, WAL/NORMAL", [false, false, false, true]),
    ("snapshot catch-up (8 MiB)", [false, false, false, true]),
    ("write tx, DELETE/FULL, synchronous", [true, false, true, false]),
    ("write tx, WAL/NORMAL, synchronous", [true, false, true, false]),
    ("write tx, WAL/FULL, synchronous", [true, false, true, false]),
];

fn positive(cell: &str, what: &str) {
    let value: f64 = cell.parse().unwrap_or_else(|_| panic!("{what}: {cell:?} is not a number"));
    assert!(value > 0.0, "{what}: {value} is not positive");
}

#[test]
fn quick_bench_prints_every_row_with_positive_figures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let markdown = dir.path().join("bench.md");
    let mut child = Command::new(env!("CARGO_BIN_EXE_replite"))
        .args(["bench", "--quick", "--dir"])
        .arg(dir.path())
        .arg("--markdown")
        .arg(&markdown)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start replite bench");
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for replite bench") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("replite bench --quick did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "replite bench failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}");

    let table = std::fs::read_to_string(&markdown).expect("the Markdown table was written");
    for (name, measured) in ROWS {
        assert!(stdout.lines().any(|l| l.starts_with(name)), "no row {name:?} in\n{stdout}");
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("no row {name:?} in\n{table}"));
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 10, "{line}");
        // native, then (figure, ratio) for single node, primary and replica.
        let figures = [cells[2], cells[3], cells[5], cells[7]];
        let ratios = [None, Some(cells[4]), Some(cells[6]), Some(cells[8])];
        for (i, &here) in measured.iter().enumerate() {
            let what = format!("{name}, column {i}");
            if here {
                positive(figures[i], &what);
            } else {
                assert_eq!(figures[i], "-", "{what}: no figure expected");
            }
            if let Some(ratio) = ratios[i] {
                if here && measured[0] {
                    positive(ratio, &format!("{what}, ratio to native"));
                } else {
                    assert_eq!(ratio, "-", "{what}: no ratio expected");
                }
            }
        }
    }
    assert_eq!(
        table.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| workload")).count(),
        ROWS.len(),
        "one row per workload:\n{table}"
    );
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let root = dir.path().to_string_lossy();
    assert!(!mounts.contains(root.as_ref()), "a mount outlived the run:\n{mounts}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("read dir").flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("bench.md")], "the work folder was removed");
}

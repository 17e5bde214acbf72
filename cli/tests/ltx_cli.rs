//! `replite ltx …` end to end: output compared with what the reference `ltx` tool printed for
//! the LiteFS fixtures, error output pinned with insta, and encode-db/apply round trips on
//! databases built with real SQLite.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rusqlite::Connection;

fn fixtures_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/ltx");
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("REPLITE_REQUIRE_FIXTURES").is_none(),
        "fixtures required but {} is missing",
        dir.display()
    );
    eprintln!("SKIP: LiteFS fixtures not found at {}", dir.display());
    None
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Everything a person sees, for snapshots.
    fn transcript(&self) -> String {
        format!("exit: {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

fn replite(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_replite")).args(args).current_dir(dir).output().expect("replite runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The block of a fixture's `.txt` that follows `# ltx-v0.3.14 <command> …`.
fn reference_section(txt: &str, command: &str) -> String {
    let start = txt.find(&format!("# ltx-v0.3.14 {command}")).expect("section present");
    let body = &txt[start..];
    let body = &body[body.find('\n').expect("header line") + 1..];
    let end = body.find("\n# ltx").map_or(body.len(), |i| i + 1);
    body[..end].to_string()
}

fn fixture_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("readable")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .filter(|n| n.ends_with(".ltx"))
        .collect();
    names.sort();
    names
}

#[test]
fn dump_list_and_verify_print_what_the_reference_tool_prints() {
    let Some(dir) = fixtures_dir() else { return };
    for name in fixture_names(&dir) {
        let txt = fs::read_to_string(dir.join(format!("{name}.txt"))).expect("reference output");
        let dump = replite(&dir, &["ltx", "dump", &name]);
        assert_eq!(dump.code, 0, "{name}: {}", dump.stderr);
        // The fixture files separate sections with one extra blank line; compare without it.
        assert_eq!(dump.stdout.trim_end(), reference_section(&txt, "dump").trim_end(), "{name}: dump");
        assert!(dump.stdout.ends_with("\n\n"), "{name}: dump ends with a blank line as the reference does");

        let list = replite(&dir, &["ltx", "list", &name]);
        assert_eq!(list.code, 0, "{name}: {}", list.stderr);
        assert_eq!(list.stdout, reference_section(&txt, "list"), "{name}: list");

        let verify = replite(&dir, &["ltx", "verify", &name]);
        assert_eq!((verify.code, verify.stdout.as_str()), (0, "ok\n"), "{name}: verify");
    }
}

#[test]
fn checksum_of_the_sample_matches_the_reference_snapshot() {
    let Some(dir) = fixtures_dir() else { return };
    let run = replite(&dir, &["ltx", "checksum", "sample-source.db"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "c3e399840f9bcef7\n"));
}

/// Copies a fixture into a scratch directory so errors print short relative paths.
fn scratch_with(dir: &Path, names: &[&str]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    for name in names {
        fs::copy(dir.join(name), tmp.path().join(name)).expect("copy fixture");
    }
    tmp
}

#[test]
fn corrupt_and_truncated_files_fail_with_file_and_offset() {
    let Some(dir) = fixtures_dir() else { return };
    let tmp = scratch_with(&dir, &["ltx-v0.3.14_encode-db_snapshot.ltx", "litefs-v0.5.14_rb_txid2.ltx"]);
    let good = fs::read(tmp.path().join("ltx-v0.3.14_encode-db_snapshot.ltx")).expect("read");
    let mut flipped = good.clone();
    flipped[4000] ^= 0x40;
    fs::write(tmp.path().join("flipped.ltx"), &flipped).expect("write");
    fs::write(tmp.path().join("short.ltx"), &good[..5000]).expect("write");
    let lz4 = fs::read(tmp.path().join("litefs-v0.5.14_rb_txid2.ltx")).expect("read");
    let mut bad_lz4 = lz4.clone();
    bad_lz4[130] ^= 0xff;
    fs::write(tmp.path().join("bad-lz4.ltx"), &bad_lz4).expect("write");
    fs::write(tmp.path().join("empty.ltx"), b"").expect("write");

    let verify = replite(
        tmp.path(),
        &[
            "ltx",
            "verify",
            "ltx-v0.3.14_encode-db_snapshot.ltx",
            "flipped.ltx",
            "short.ltx",
            "bad-lz4.ltx",
            "empty.ltx",
            "missing.ltx",
        ],
    );
    assert_eq!(verify.code, 1);
    insta::assert_snapshot!("verify_bad_files", verify.transcript());

    let dump = replite(tmp.path(), &["ltx", "dump", "short.ltx"]);
    assert_eq!(dump.code, 1);
    insta::assert_snapshot!("dump_truncated", dump.transcript());

    let list = replite(tmp.path(), &["ltx", "list", "litefs-v0.5.14_rb_txid2.ltx", "flipped.ltx"]);
    assert_eq!(list.code, 1);
    insta::assert_snapshot!("list_with_a_bad_file", list.transcript());
}

#[test]
fn apply_refuses_a_bad_or_out_of_order_file_and_leaves_the_database_untouched() {
    let Some(dir) = fixtures_dir() else { return };
    let names = ["litefs-v0.5.14_rb_txid1.ltx", "litefs-v0.5.14_rb_txid2.ltx", "litefs-v0.5.14_rb_txid3.ltx"];
    let tmp = scratch_with(&dir, &names);
    let ok = replite(tmp.path(), &["ltx", "apply", "-db", "app.db", names[0]]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let after_first = fs::read(tmp.path().join("app.db")).expect("db written");

    let gap = replite(tmp.path(), &["ltx", "apply", "-db", "app.db", names[2]]);
    assert_eq!(gap.code, 1);
    insta::assert_snapshot!("apply_out_of_order", gap.transcript());
    assert_eq!(fs::read(tmp.path().join("app.db")).expect("db"), after_first);

    let mut corrupt = fs::read(tmp.path().join(names[1])).expect("read");
    let n = corrupt.len();
    corrupt[n - 1] ^= 1;
    fs::write(tmp.path().join("corrupt.ltx"), corrupt).expect("write");
    let bad = replite(tmp.path(), &["ltx", "apply", "-db", "app.db", "corrupt.ltx"]);
    assert_eq!(bad.code, 1);
    insta::assert_snapshot!("apply_corrupt", bad.transcript());
    assert_eq!(fs::read(tmp.path().join("app.db")).expect("db"), after_first);

    let rest = replite(tmp.path(), &["ltx", "apply", "-db", "app.db", names[1], names[2]]);
    assert_eq!(rest.code, 0, "{}", rest.stderr);
    let checksum = replite(tmp.path(), &["ltx", "checksum", "app.db"]);
    assert_eq!(checksum.stdout, "e7086ffffbe1e3f0\n", "post-apply checksum of TXID 3");
}

#[test]
fn checksum_and_encode_db_reject_files_that_are_not_sqlite() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(
        tmp.path().join("notes.txt"),
        "this is not a database, just some text long enough to have a header .....",
    )
    .expect("write");
    let checksum = replite(tmp.path(), &["ltx", "checksum", "notes.txt"]);
    let encode = replite(tmp.path(), &["ltx", "encode-db", "-o", "out.ltx", "notes.txt"]);
    insta::assert_snapshot!("not_sqlite", format!("{}\n{}", checksum.transcript(), encode.transcript()));
    assert!(!tmp.path().join("out.ltx").exists(), "no output left behind");
    assert!(!tmp.path().join("out.ltx.tmp").exists(), "no temporary left behind");
}

fn build_database(path: &Path, page_size: u32, rows: usize) {
    let conn = Connection::open(path).expect("open");
    conn.execute_batch(&format!("PRAGMA page_size={page_size}; PRAGMA journal_mode=DELETE;")).expect("pragmas");
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX t_v ON t(v);").expect("schema");
    let tx = conn.unchecked_transaction().expect("tx");
    for i in 0..rows {
        tx.execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i} {}", "x".repeat(i % 300))]).expect("insert");
    }
    tx.commit().expect("commit");
}

#[test]
fn encode_db_then_apply_to_an_empty_path_gives_a_byte_identical_database() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (page_size, rows, compress) in [(512, 200, false), (4096, 3000, true), (65536, 500, false), (1024, 50, true)] {
        let src = format!("src-{page_size}.db");
        build_database(&tmp.path().join(&src), page_size, rows);
        let ltx_name = format!("snap-{page_size}.ltx");
        let mut args = vec!["ltx", "encode-db", "-o", &ltx_name];
        if compress {
            args.push("-c");
        }
        args.push(&src);
        let encode = replite(tmp.path(), &args);
        assert_eq!(encode.code, 0, "{}", encode.stderr);
        let copy = format!("copy-{page_size}.db");
        let apply = replite(tmp.path(), &["ltx", "apply", "-db", &copy, &ltx_name]);
        assert_eq!(apply.code, 0, "{}", apply.stderr);
        let original = fs::read(tmp.path().join(&src)).expect("read");
        assert_eq!(fs::read(tmp.path().join(&copy)).expect("read"), original, "page size {page_size}");
        let conn = Connection::open(tmp.path().join(&copy)).expect("open copy");
        let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity");
        assert_eq!(ok, "ok");
        let count: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("count");
        assert_eq!(count, rows as i64);
    }
}

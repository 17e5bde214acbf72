//! Mounts go away when their guard does, even with files open or after a panic.

mod common;

use common::*;

fn is_mounted(path: &std::path::Path) -> bool {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mount table");
    mounts.lines().any(|line| line.split(' ').nth(1) == Some(path.to_str().expect("utf-8 path")))
}

#[test]
fn dropping_the_fixture_unmounts_even_with_a_database_open() {
    let fx = Fixture::primary();
    let mnt = fx.mnt.clone();
    let conn = fx.open("open.db");
    conn.execute_batch("CREATE TABLE t(x)").unwrap();
    assert!(is_mounted(&mnt));
    drop(fx);
    assert!(!is_mounted(&mnt), "still mounted at {}", mnt.display());
    drop(conn);
}

#[test]
fn a_panicking_test_leaves_no_mount_behind() {
    let mut seen = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let fx = Fixture::primary();
        seen = Some(fx.mnt.clone());
        assert!(is_mounted(&fx.mnt));
        panic!("test failure inside a mounted fixture");
    }));
    assert!(result.is_err());
    let mnt = seen.expect("fixture was created");
    assert!(!is_mounted(&mnt), "still mounted at {}", mnt.display());
}

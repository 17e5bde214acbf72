//! The files replite itself serves: `<db>-pos`, `.primary`, `.lag`, and the directory listing.

mod common;

use common::*;
use replite_core::types::{Checksum, Pos, TxId};

#[test]
fn status_files_show_what_the_daemon_last_set() {
    let fx = Fixture::replica();
    let mount = fx.mount();
    assert!(!fx.path(".primary").exists(), "no primary known yet");
    mount.set_primary(Some("node-a".into()));
    assert_eq!(std::fs::read_to_string(fx.path(".primary")).unwrap(), "node-a\n");
    mount.set_lag_ms(1234);
    assert_eq!(std::fs::read_to_string(fx.path(".lag")).unwrap(), "+000001234\n");
    mount.set_lag_ms(7);
    assert_eq!(std::fs::read_to_string(fx.path(".lag")).unwrap(), "+000000007\n");

    // A database's position file exists once the database does.
    assert!(!fx.path("app.db-pos").exists());
    let stored = replite_fuse::database_path(&fx.data, "app.db");
    assert_eq!(stored, fx.data.join("dbs/app.db/database"), "LiteFS's layout");
    std::fs::create_dir_all(stored.parent().unwrap()).unwrap();
    std::fs::write(&stored, b"").unwrap();
    // Virtual files are looked up afresh every time (zero TTL), so the failed lookup above
    // leaves nothing stale behind.
    let pos = Pos::new(TxId(5), Checksum(0x8000_0000_0000_0abc));
    mount.set_position("app.db", pos);
    assert_eq!(std::fs::read_to_string(fx.path("app.db-pos")).unwrap(), "0000000000000005/8000000000000abc\n");

    let mut names: Vec<String> =
        std::fs::read_dir(&fx.mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, vec![".lag", ".primary", "app.db", "app.db-pos"]);

    // None of them can be written.
    for name in [".lag", ".primary", "app.db-pos"] {
        assert!(std::fs::write(fx.path(name), b"x").is_err(), "{name} is read-only");
    }
}

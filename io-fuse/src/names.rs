//! What each name in the mount is: a database, one of its SQLite side files, or one of the
//! files replite itself serves.

/// Name of the file that holds the primary's name on replicas.
pub const PRIMARY_FILENAME: &str = ".primary";
/// Name of the file that holds the replication lag.
pub const LAG_FILENAME: &str = ".lag";

/// The kind of node a name denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeKind {
    /// `<db>`: a database file.
    Database,
    /// `<db>-journal`: SQLite's rollback journal.
    Journal,
    /// `<db>-wal`: SQLite's write-ahead log.
    Wal,
    /// `<db>-shm`: SQLite's WAL index.
    Shm,
    /// `<db>-pos`: replite's position for `<db>`, read-only text.
    Pos,
    /// `.primary`: who the primary is (replicas only).
    Primary,
    /// `.lag`: replication lag in milliseconds.
    Lag,
}

impl NodeKind {
    /// Whether replite makes up the contents (nothing in the data directory backs it).
    pub(crate) fn is_virtual(self) -> bool {
        matches!(self, NodeKind::Pos | NodeKind::Primary | NodeKind::Lag)
    }
}

const SUFFIXES: [(&str, NodeKind); 4] =
    [("-journal", NodeKind::Journal), ("-wal", NodeKind::Wal), ("-shm", NodeKind::Shm), ("-pos", NodeKind::Pos)];

/// The name in the mount of `kind` of database `db` (the inverse of [`classify`]).
pub(crate) fn mount_name(kind: NodeKind, db: &str) -> String {
    match kind {
        NodeKind::Database => db.to_owned(),
        NodeKind::Primary => PRIMARY_FILENAME.to_owned(),
        NodeKind::Lag => LAG_FILENAME.to_owned(),
        _ => {
            let (suffix, _) = SUFFIXES.iter().find(|(_, k)| *k == kind).expect("every other kind has a suffix");
            format!("{db}{suffix}")
        }
    }
}

/// Classifies a name; `None` for names the mount does not hold (paths, `.`/`..`, empty,
/// a suffix with no database before it).
pub(crate) fn classify(name: &str) -> Option<(NodeKind, &str)> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return None;
    }
    if name == PRIMARY_FILENAME {
        return Some((NodeKind::Primary, ""));
    }
    if name == LAG_FILENAME {
        return Some((NodeKind::Lag, ""));
    }
    for (suffix, kind) in SUFFIXES {
        if let Some(db) = name.strip_suffix(suffix) {
            return if db.is_empty() { None } else { Some((kind, db)) };
        }
    }
    Some((NodeKind::Database, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_files_name_their_database() {
        assert_eq!(classify("app.db"), Some((NodeKind::Database, "app.db")));
        assert_eq!(classify("app.db-journal"), Some((NodeKind::Journal, "app.db")));
        assert_eq!(classify("app.db-wal"), Some((NodeKind::Wal, "app.db")));
        assert_eq!(classify("app.db-shm"), Some((NodeKind::Shm, "app.db")));
        assert_eq!(classify("app.db-pos"), Some((NodeKind::Pos, "app.db")));
        assert_eq!(classify(".primary"), Some((NodeKind::Primary, "")));
        assert_eq!(classify(".lag"), Some((NodeKind::Lag, "")));
        for name in ["app.db", "app.db-journal", "app.db-wal", "app.db-shm", "app.db-pos", ".primary", ".lag"] {
            let (kind, db) = classify(name).unwrap();
            assert_eq!(mount_name(kind, db), name);
        }
    }

    #[test]
    fn names_that_are_not_files_of_the_mount_are_rejected() {
        assert_eq!(classify(""), None);
        assert_eq!(classify(".."), None);
        assert_eq!(classify("a/b"), None);
        assert_eq!(classify("-wal"), None);
    }
}

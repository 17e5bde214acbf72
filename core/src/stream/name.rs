//! Database names as they travel in frames and position maps.

use std::fmt;

use crate::stream::error::FrameError;

/// Longest database name accepted: a database is a file in the mount, and Linux file names
/// are at most 255 bytes (NAME_MAX), so a longer name could never exist on either side.
pub const MAX_DB_NAME_LEN: usize = 255;

/// A validated database name: 1..=255 bytes of UTF-8, a plain file name (no `/`, no NUL,
/// not `.` or `..`). Only [`DbName::new`] makes one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DbName(String);

impl DbName {
    /// Validates a name; the error's `offset` is 0 (callers decoding a stream use
    /// [`DbName::from_wire`], which reports where the name was found).
    pub fn new(name: &str) -> Result<DbName, FrameError> {
        DbName::from_wire(name.as_bytes(), 0)
    }

    /// Validates a name read from the wire at `offset`.
    pub fn from_wire(bytes: &[u8], offset: u64) -> Result<DbName, FrameError> {
        let lossy = || String::from_utf8_lossy(bytes).into_owned();
        let invalid = |reason| FrameError::InvalidName { name: lossy(), reason, offset };
        if bytes.len() > MAX_DB_NAME_LEN {
            return Err(FrameError::TooLong {
                what: "database name",
                len: bytes.len() as u64,
                max: MAX_DB_NAME_LEN as u64,
                offset,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| invalid("not UTF-8"))?;
        if text.is_empty() {
            return Err(invalid("empty"));
        }
        if text == "." || text == ".." {
            return Err(invalid("a directory reference"));
        }
        if text.contains('/') || text.contains('\0') {
            return Err(invalid("contains '/' or NUL"));
        }
        Ok(DbName(text.to_owned()))
    }

    /// The name as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DbName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_file_names_are_valid_database_names() {
        for ok in ["db", "my.db", "a b", "ü.sqlite"] {
            assert_eq!(DbName::new(ok).map(|n| n.as_str().to_owned()), Ok(ok.to_owned()));
        }
    }

    #[test]
    fn paths_empty_and_overlong_names_are_rejected() {
        let long = "x".repeat(MAX_DB_NAME_LEN + 1);
        for bad in ["", ".", "..", "a/b", "a\0b", long.as_str()] {
            assert!(DbName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(DbName::from_wire(&[0xff, 0xfe], 7), Err(FrameError::InvalidName { offset: 7, .. })));
    }
}

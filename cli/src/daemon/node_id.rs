//! The node's id: chosen at random on first start and kept in `<data.dir>/id` (as LiteFS
//! keeps its own), so a restarted node is the same node to its peers and in LTX headers.

use std::io;
use std::path::Path;

use replite_core::NodeId;

/// Name of the id file in `data.dir`.
pub const ID_FILE: &str = "id";

/// Why the id file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NodeIdError {
    /// Reading or writing it failed.
    #[error("node id file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// It holds something other than 16 hex digits.
    #[error("node id file {path} holds {text:?}, not 16 hex digits")]
    Malformed {
        /// The file.
        path: String,
        /// What it holds.
        text: String,
    },
}

/// Reads the id from `data_dir`, or makes and durably stores a new one.
pub fn load_or_create(data_dir: &Path) -> Result<NodeId, NodeIdError> {
    let path = data_dir.join(ID_FILE);
    let io_err = |source| NodeIdError::Io { path: path.display().to_string(), source };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(text.trim()).ok_or_else(|| NodeIdError::Malformed { path: path.display().to_string(), text }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io_err)?;
            // Zero means "unset" in LTX headers: never use it.
            let id = NodeId(rand::random::<u64>().max(1));
            crate::store::write_atomic(&path, format!("{id}\n").as_bytes()).map_err(|e| io_err(io::Error::other(e)))?;
            Ok(id)
        }
        Err(e) => Err(io_err(e)),
    }
}

fn parse(text: &str) -> Option<NodeId> {
    (text.len() == 16).then(|| u64::from_str_radix(text, 16).ok()).flatten().filter(|&v| v != 0).map(NodeId)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_made_once_and_read_back_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_create(dir.path()).expect("creates");
        assert_ne!(first, NodeId(0));
        assert_eq!(load_or_create(dir.path()).expect("reads"), first);
        let text = std::fs::read_to_string(dir.path().join(ID_FILE)).expect("file");
        assert_eq!(text, format!("{first}\n"));
    }

    #[test]
    fn a_damaged_id_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(ID_FILE), "not an id\n").expect("write");
        assert!(matches!(load_or_create(dir.path()), Err(NodeIdError::Malformed { .. })));
    }
}

//! What the driver needs from durable storage, so the Node's storage outputs are carried out
//! the same way whichever store sits behind them (the data directory in production, memory in
//! the driver's own tests).

use replite_core::node::IoFailure;
use replite_core::stream::DbName;
use replite_core::{Epoch, Pos, TxId};

/// Durable storage of LTX files and the highest epoch seen.
pub trait Storage: Send + Sync + 'static {
    /// Makes an LTX file durable (written and fsynced, never visible half-written) and returns
    /// the position after it.
    fn persist_ltx(&self, db: &DbName, min: TxId, max: TxId, bytes: &[u8]) -> Result<Pos, IoFailure>;
    /// Deletes an LTX file retention no longer needs.
    fn remove_ltx(&self, db: &DbName, min: TxId, max: TxId) -> Result<(), IoFailure>;
    /// Records the highest lease epoch seen.
    fn persist_epoch(&self, epoch: Epoch) -> Result<(), IoFailure>;
}

/// The data-directory store as a primary uses it: a `PersistLtx` only makes the file durable,
/// since SQLite already wrote the pages through the mount. (A replica's driver will use
/// `Store::persist_and_apply` instead.)
pub struct PrimaryStore(pub std::sync::Mutex<crate::store::Store>);

impl PrimaryStore {
    fn store(&self) -> std::sync::MutexGuard<'_, crate::store::Store> {
        // A panic while holding the lock poisons it; the store's state is still on disk.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Storage for PrimaryStore {
    fn persist_ltx(&self, db: &DbName, min: TxId, max: TxId, bytes: &[u8]) -> Result<Pos, IoFailure> {
        self.store().persist_commit(db, min, max, bytes).map_err(|e| {
            tracing::error!(%db, %min, %max, error = %e, "persisting an LTX file failed");
            e.failure()
        })
    }

    fn remove_ltx(&self, db: &DbName, min: TxId, max: TxId) -> Result<(), IoFailure> {
        self.store().remove_ltx(db, min, max).map_err(|e| e.failure())
    }

    fn persist_epoch(&self, epoch: Epoch) -> Result<(), IoFailure> {
        self.store().persist_epoch(epoch).map_err(|e| e.failure())
    }
}

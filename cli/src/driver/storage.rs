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

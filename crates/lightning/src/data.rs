//! Where batches come from: the [`DataModule`] trait. The training stream's position is part of every
//! checkpoint, so a resumed run reads on from the same batch.

use serde_json::Value;

use crate::error::{LightningError, Result};

/// Training and validation batches for one rank. `N` is the network being trained: a source that generates its
/// batches (rollouts) reads the current policy from it; one that reads a dataset ignores it.
pub trait DataModule<N> {
    type Batch;

    /// The next training micro-batch of this rank (epochs roll over).
    fn train_batch(&mut self, net: &N) -> Result<Self::Batch>;

    /// Where the training stream continues, saved in checkpoints.
    fn position(&self) -> Value;

    /// Continues the training stream from a saved [`position`](Self::position).
    fn seek(&mut self, position: &Value) -> Result<()>;

    /// A position saved by a run that read `saved_rows` rows per micro-batch over all its ranks, as this run, which
    /// reads `rows`, counts it (an elastic restart with fewer ranks and more accumulation). By default unchanged:
    /// right for a source whose position counts items over all ranks.
    fn rescale_position(&self, position: &Value, _saved_rows: u64, _rows: u64) -> Result<Value> {
        Ok(position.clone())
    }

    /// The epoch the training stream is in (logged).
    fn epoch(&self) -> u64 {
        0
    }

    /// Epochs fully served (the current one counts once its last batch is out), for `max_epochs`; `None` when this
    /// source cannot tell where an epoch ends.
    fn epochs_completed(&mut self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// Serve at most `batches` training batches an epoch, the epoch's first ones (Lightning's
    /// `limit_train_batches`).
    fn limit_train_batches(&mut self, _batches: u64) -> Result<()> {
        Err(LightningError::Invalid("limit_train_batches: this data module cannot limit its epochs".into()))
    }

    /// Tokens (or items) in a batch, for throughput.
    fn batch_tokens(&self, batch: &Self::Batch) -> usize;

    /// Whether there is a validation split.
    fn has_validation(&self) -> bool;

    /// A fresh pass over at most `max_batches` of this rank's validation batches, each handed to `visit`.
    fn validation_pass(&self, max_batches: usize, visit: &mut dyn FnMut(&Self::Batch) -> Result<()>) -> Result<()>;
}

//! Datasets in TRL's formats (JSONL, Parquet, plain text), tokenized with loss masks, packed, batched,
//! shuffled with a seed, sharded by rank, and resumable at any batch.
//!
//! ```no_run
//! use llmtrain_core::data::{DataLoader, DataOptions, LossOn, Split};
//! use llmtrain_core::tokenizer::TextTokenizer;
//!
//! let tokenizer = TextTokenizer::load("tok".as_ref())?;
//! let options = DataOptions {
//!     files: vec!["train.jsonl".into()], seq_len: 512, batch_size: 8, packing: true, shuffle: true, seed: 0,
//!     loss_on: LossOn::CompletionOnly, skip_malformed: false, eval_fraction: 0.05, rank: 0, world_size: 1,
//! };
//! let mut loader = DataLoader::new(&options, &tokenizer, Split::Train)?;
//! let batch = loader.next_batch()?.expect("train loaders cycle");
//! let resume_here = loader.position();
//! # Ok::<(), llmtrain_core::CoreError>(())
//! ```

mod loader;
mod packing;
mod readers;
mod rows;
mod tokenize;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use loader::DataLoader;
pub use packing::{PackedRow, best_fit_decreasing, collate};
pub use rows::{Content, Row};
pub use tokenize::Sequence;

use crate::train::IGNORE_INDEX;

/// One micro-batch on the host; `input_ids` and `labels` are row-major `[rows, seq]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub rows: usize,
    pub seq: usize,
    pub input_ids: Vec<u32>,
    /// Unshifted, as in transformers: `labels[i] = input_ids[i]` where scored, -100 elsewhere (prompt tokens
    /// under completion-only loss, non-assistant tokens under assistant-only loss, padding, the first token of
    /// each packed sequence). The loss shifts them.
    pub labels: Vec<i64>,
    /// Per-token position ids restarting at each sequence, when rows are packed.
    pub position_ids: Option<Vec<u32>>,
}

impl Batch {
    /// Label positions the loss counts: per row, t in 1..seq with `labels[t] != -100`.
    pub fn scored_tokens(&self) -> usize {
        self.labels.chunks(self.seq).map(|row| row[1..].iter().filter(|&&l| l != IGNORE_INDEX).count()).sum()
    }
}

/// Where a loader continues from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    pub batch_in_epoch: u64,
}

/// Which tokens the loss scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossOn {
    All,
    CompletionOnly,
    AssistantOnly,
}

/// The training or the held-out part of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Eval,
}

/// How to read and batch a dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataOptions {
    /// `.jsonl`/`.json` (one JSON object per line), `.parquet`, or plain text (any other extension; one document
    /// per file, split into `seq_len` chunks).
    pub files: Vec<PathBuf>,
    pub seq_len: usize,
    /// Rows per micro-batch.
    pub batch_size: usize,
    pub packing: bool,
    pub shuffle: bool,
    pub seed: u64,
    pub loss_on: LossOn,
    /// Skip and count malformed rows instead of failing.
    pub skip_malformed: bool,
    /// Share of sequences held out for [`Split::Eval`].
    pub eval_fraction: f64,
    pub rank: usize,
    pub world_size: usize,
}

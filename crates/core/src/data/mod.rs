//! Datasets in TRL's formats, from JSONL, Parquet and plain-text files, tokenized with loss masks, packed,
//! batched, shuffled with a seed, sharded by rank, and resumable at any batch.
//!
//! Row formats (detected per row from its keys; other keys are ignored): `text`, `messages`, `prompt` +
//! `completion`, `prompt` + `chosen` + `rejected`, `chosen` + `rejected` (implicit prompt), `prompt` alone, and
//! `prompt` + `completion` + `label`. The [`DataLoader`] trains causal LMs on the first three; [`RowReader`] reads
//! any of them for the preference and online trainers. A plain-text file is one document, cut into `seq_len`-token
//! chunks; JSONL and Parquet rows are truncated to `seq_len`. Errors are one line naming the file, the line
//! (JSONL, 1-based) or row (Parquet, 0-based), and the field.
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
//! let batch = loader.next_batch()?.expect("the train split cycles forever");
//! println!("{} rows of {} tokens, {} scored", batch.rows, batch.seq, batch.scored_tokens());
//! let resume_here = loader.position(); // saved with a checkpoint; later: `loader.seek(resume_here)?`
//! # Ok::<(), llmtrain_core::CoreError>(())
//! ```

mod loader;
mod packing;
mod readers;
mod rows;
mod tokenize;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Labels equal to this are not scored (prompt tokens, padding), as in PyTorch's `ignore_index`.
pub use crate::kernels::IGNORE_INDEX;

pub use loader::{DataLoader, held_out};
pub use packing::{PackedRow, best_fit_decreasing, collate};
pub use readers::{Location, RowReader};
pub use rows::{Content, EXTRA_KEYS, FORMAT_KEYS, Row};
pub(crate) use tokenize::Encoder;
pub use tokenize::Sequence;

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
    /// Some when rows are packed: per-token position ids restarting at 0 at each sequence; a row's padding forms
    /// a sequence of its own (0, 1, 2, ...), so no real token attends to it.
    pub position_ids: Option<Vec<u32>>,
}

impl Batch {
    /// Tokens of the rows that are not padding (the attention mask's sum), given the loader's `pad_id`: the
    /// collator pads at the end of each row, with `pad_id` labelled [`IGNORE_INDEX`], and a row's last real token
    /// (its EOS) is scored, so a row's padding is its trailing run of such positions.
    pub fn real_tokens(&self, pad_id: u32) -> usize {
        if self.seq == 0 {
            return 0;
        }
        self.input_ids
            .chunks(self.seq)
            .zip(self.labels.chunks(self.seq))
            .map(|(ids, labels)| {
                let padding =
                    ids.iter().zip(labels).rev().take_while(|(id, l)| **id == pad_id && **l == IGNORE_INDEX).count();
                self.seq - padding
            })
            .sum()
    }

    /// Label positions the loss counts: per row, t in 1..seq with `labels[t] != -100`.
    pub fn scored_tokens(&self) -> usize {
        if self.seq == 0 {
            return 0;
        }
        self.labels.chunks(self.seq).map(|row| row[1..].iter().filter(|&&l| l != IGNORE_INDEX).count()).sum()
    }
}

/// Where a loader continues from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    pub batch_in_epoch: u64,
}

/// Which tokens the loss scores (config values `all`, `completion-only`, `assistant-only`). Completion-only
/// masks the prompt of prompt/completion rows; assistant-only also keeps only the assistant turns of `messages`
/// rows. `text` rows are scored whole under every setting.
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
    /// `.jsonl`/`.json`/`.ndjson` (one JSON object per line), `.parquet`, or plain text (`.txt` and any other
    /// extension but obvious binaries: one document per file, cut into `seq_len`-token chunks).
    pub files: Vec<PathBuf>,
    /// Tokens per row; longer JSONL/Parquet rows are truncated to it.
    pub seq_len: usize,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Best-fit-decreasing packing of several sequences per row (with position ids); else one per row.
    pub packing: bool,
    /// Shuffle the train split (within windows of sequences; see [`DataLoader`]) with `seed` and the epoch.
    pub shuffle: bool,
    pub seed: u64,
    pub loss_on: LossOn,
    /// Skip and count malformed rows instead of failing.
    pub skip_malformed: bool,
    /// Share of sequences held out for [`Split::Eval`], in [0, 1), chosen by index (see [`DataLoader`]).
    pub eval_fraction: f64,
    pub rank: usize,
    pub world_size: usize,
}

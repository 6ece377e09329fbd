//! The data loader: files → records → token sequences → (eval split) → shuffled blocks → packed rows →
//! batches → this rank's share. Deterministic, so any position can be restored by replaying its epoch.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::packing::{PackedRow, best_fit_decreasing, collate, unpacked};
use super::readers::{Record, RecordReader};
use super::rows::Row;
use super::tokenize::{self, Sequence};
use super::{Batch, DataOptions, DataPosition, Split};
use crate::error::{CoreError, Result};
use crate::tokenizer::TextTokenizer;

/// Sequences shuffled (and packed) together. Shuffling is exact within a block and blocks keep file order, so a
/// file larger than memory streams; corpora up to this many sequences are shuffled globally.
const BLOCK: usize = 8192;

/// Batches from a dataset, epoch after epoch (train) or in one pass (eval).
pub struct DataLoader {
    options: DataOptions,
    tokenizer: TextTokenizer,
    split: Split,
    single_pass: bool,
    pad_id: u32,
    epoch: u64,
    batch_in_epoch: u64,
    stream: EpochStream,
    skipped: u64,
}

impl DataLoader {
    /// A loader over `split`: train cycles through epochs (reshuffled each epoch), eval makes one pass.
    pub fn new(options: &DataOptions, tokenizer: &TextTokenizer, split: Split) -> Result<Self> {
        Self::build(options, tokenizer, split, split == Split::Eval)
    }

    /// A loader that makes exactly one pass over `split` (e.g. for corpus statistics).
    pub fn single_pass(options: &DataOptions, tokenizer: &TextTokenizer, split: Split) -> Result<Self> {
        Self::build(options, tokenizer, split, true)
    }

    fn build(options: &DataOptions, tokenizer: &TextTokenizer, split: Split, single_pass: bool) -> Result<Self> {
        if options.world_size == 0 || options.rank >= options.world_size {
            return Err(CoreError::Invalid(format!(
                "rank {} is not below world size {}",
                options.rank, options.world_size
            )));
        }
        if options.seq_len < 2 || options.batch_size == 0 {
            return Err(CoreError::Invalid("data: seq_len must be at least 2 and batch_size at least 1".into()));
        }
        for file in &options.files {
            if !file.is_file() {
                return Err(CoreError::Io { path: file.clone(), source: std::io::ErrorKind::NotFound.into() });
            }
        }
        let pad_id = tokenizer.pad_token.as_deref().and_then(|t| tokenizer.token_id(t)).unwrap_or(0);
        Ok(Self {
            stream: EpochStream::new(options.files.clone(), 0),
            options: options.clone(),
            tokenizer: tokenizer.clone(),
            split,
            single_pass,
            pad_id,
            epoch: 0,
            batch_in_epoch: 0,
            skipped: 0,
        })
    }

    /// The next batch of this rank; `None` only at the end of a single pass.
    pub fn next_batch(&mut self) -> Result<Option<Batch>> {
        loop {
            if let Some(batch) = self.next_rank_batch()? {
                self.batch_in_epoch += 1;
                return Ok(Some(batch));
            }
            if self.single_pass {
                return Ok(None);
            }
            if self.batch_in_epoch == 0 {
                return Err(CoreError::Invalid(format!(
                    "the {} data yields no full batch: fewer than batch_size ({}) x world size ({}) rows of {} tokens",
                    if self.split == Split::Train { "training" } else { "eval" },
                    self.options.batch_size,
                    self.options.world_size,
                    self.options.seq_len
                )));
            }
            self.epoch += 1;
            self.batch_in_epoch = 0;
            self.stream = EpochStream::new(self.options.files.clone(), self.epoch);
        }
    }

    /// Where the next call to [`DataLoader::next_batch`] reads from.
    pub fn position(&self) -> DataPosition {
        DataPosition { epoch: self.epoch, batch_in_epoch: self.batch_in_epoch }
    }

    /// Continues from `position`, so the following batches are those an uninterrupted loader would give.
    pub fn seek(&mut self, position: DataPosition) -> Result<()> {
        self.epoch = position.epoch;
        self.batch_in_epoch = 0;
        self.stream = EpochStream::new(self.options.files.clone(), position.epoch);
        for _ in 0..position.batch_in_epoch {
            if self.next_rank_batch()?.is_none() {
                return Err(CoreError::Invalid(format!(
                    "cannot resume at epoch {} batch {}: the data now has fewer batches (did it change?)",
                    position.epoch, position.batch_in_epoch
                )));
            }
            self.batch_in_epoch += 1;
        }
        Ok(())
    }

    /// Malformed rows skipped (with `skip_malformed`), counted once over the first epoch.
    pub fn skipped_rows(&self) -> u64 {
        self.skipped
    }

    /// The batch for this rank out of the next `world_size` batches of the global stream.
    fn next_rank_batch(&mut self) -> Result<Option<Batch>> {
        let mut mine = None;
        for r in 0..self.options.world_size {
            match self.next_global_batch()? {
                Some(batch) if r == self.options.rank => mine = Some(batch),
                Some(_) => {}
                // An incomplete group at the end of an epoch is dropped, so ranks stay in step.
                None => return Ok(None),
            }
        }
        Ok(mine)
    }

    fn next_global_batch(&mut self) -> Result<Option<Batch>> {
        let size = self.options.batch_size;
        while self.stream.rows.len() < size && !self.stream.exhausted {
            self.fill_block()?;
        }
        let take = if self.stream.rows.len() >= size {
            size
        } else if self.split == Split::Eval && !self.stream.rows.is_empty() {
            self.stream.rows.len()
        } else {
            return Ok(None);
        };
        let rows: Vec<PackedRow> = self.stream.rows.drain(..take).collect();
        Ok(Some(collate(&rows, self.options.seq_len, self.pad_id, self.options.packing)))
    }

    /// Reads up to one block of this split's sequences, shuffles and packs them into rows.
    fn fill_block(&mut self) -> Result<()> {
        let mut block = Vec::with_capacity(BLOCK.min(1024));
        while block.len() < BLOCK {
            match self.next_sequence()? {
                Some(seq) => block.push(seq),
                None => {
                    self.stream.exhausted = true;
                    break;
                }
            }
        }
        if self.split == Split::Train && self.options.shuffle {
            let seed = self.options.seed
                ^ self.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ self.stream.blocks.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
            block.shuffle(&mut StdRng::seed_from_u64(seed));
        }
        self.stream.blocks += 1;
        let rows =
            if self.options.packing { best_fit_decreasing(block, self.options.seq_len) } else { unpacked(block) };
        self.stream.rows.extend(rows);
        Ok(())
    }

    /// The next sequence of this split, reading and tokenizing records as needed.
    fn next_sequence(&mut self) -> Result<Option<Sequence>> {
        loop {
            if let Some(seq) = self.stream.pending.pop_front() {
                let index = self.stream.sequences;
                self.stream.sequences += 1;
                if self.in_split(index) {
                    return Ok(Some(seq));
                }
                continue;
            }
            if !self.read_record()? {
                return Ok(None);
            }
        }
    }

    /// Eval takes every `period`-th sequence (period = 1 / eval_fraction); train takes the rest.
    fn in_split(&self, index: u64) -> bool {
        let fraction = self.options.eval_fraction;
        let is_eval = fraction > 0.0 && {
            let period = (1.0 / fraction).round().max(2.0) as u64;
            index % period == period - 1
        };
        is_eval == (self.split == Split::Eval)
    }

    /// Reads one record into `pending`; false once every file is done.
    fn read_record(&mut self) -> Result<bool> {
        let stream = &mut self.stream;
        loop {
            if stream.reader.is_none() {
                let Some(path) = stream.files.get(stream.file_index) else { return Ok(false) };
                stream.reader = Some(RecordReader::open(path)?);
            }
            let reader = stream.reader.as_mut().expect("opened above");
            match reader.next_record()? {
                None => {
                    stream.reader = None;
                    stream.file_index += 1;
                }
                Some((location, record)) => {
                    let tok = &self.tokenizer;
                    let o = &self.options;
                    let sequences = record.and_then(|record| match record {
                        Record::Document(text) => tokenize::document(tok, &text, o.seq_len),
                        Record::Row(value) => {
                            let row = Row::parse(&value)?;
                            tokenize::row(tok, &row, o.loss_on, o.seq_len).map(|s| vec![s])
                        }
                    });
                    match sequences {
                        Ok(sequences) => {
                            stream.pending.extend(sequences.into_iter().filter(|s| s.len() > 1));
                            return Ok(true);
                        }
                        Err(message) if o.skip_malformed => {
                            if self.epoch == 0 {
                                self.skipped += 1;
                            }
                            if stream.warned.insert(location.path.clone()) {
                                tracing::warn!("{location}: {message} (skipping malformed rows in this file)");
                            }
                        }
                        Err(message) => return Err(CoreError::Invalid(format!("{location}: {message}"))),
                    }
                }
            }
        }
    }
}

/// Reading state of one epoch.
struct EpochStream {
    files: Vec<PathBuf>,
    file_index: usize,
    reader: Option<RecordReader>,
    /// Sequences tokenized from the current record, not yet taken.
    pending: VecDeque<Sequence>,
    /// Sequences seen this epoch (both splits): the index that decides the split.
    sequences: u64,
    /// Blocks shuffled so far this epoch (part of each block's seed).
    blocks: u64,
    rows: VecDeque<PackedRow>,
    exhausted: bool,
    warned: HashSet<PathBuf>,
}

impl EpochStream {
    fn new(files: Vec<PathBuf>, _epoch: u64) -> Self {
        Self {
            files,
            file_index: 0,
            reader: None,
            pending: VecDeque::new(),
            sequences: 0,
            blocks: 0,
            rows: VecDeque::new(),
            exhausted: false,
            warned: HashSet::new(),
        }
    }
}

//! The data loader: files → records → token sequences → split → shuffled windows → packed rows → global batches →
//! this rank's share. Everything is a deterministic function of the options, so a position is restored by
//! replaying its epoch.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::packing::{PackedRow, best_fit_decreasing, collate, unpacked};
use super::readers::{Location, Record, RecordReader};
use super::rows::Row;
use super::tokenize::{DocumentChunker, Encoder, Sequence, needs_other_trainer};
use super::{Batch, DataOptions, DataPosition, Split};
use crate::error::{CoreError, Result};
use crate::tokenizer::TextTokenizer;

/// Sequences shuffled and packed together: a window closes at this many sequences or [`WINDOW_TOKENS`] tokens.
/// Shuffling is exact within a window and windows follow file order, so datasets larger than memory stream while
/// smaller ones (up to a window) are shuffled globally.
const WINDOW_SEQUENCES: usize = 8192;
const WINDOW_TOKENS: usize = 1 << 22;

/// How many of the first files [`DataLoader::new`] peeks into to reject preference data early.
const FORMAT_CHECK_FILES: usize = 8;

/// Whether item `index` (in file order) of a dataset is held out for evaluation when `eval_fraction` of it is:
/// iff `floor((index + 1) * eval_fraction) > floor(index * eval_fraction)`, which spreads exactly that share
/// evenly. Every trainer splits its data by this rule.
pub fn held_out(index: u64, eval_fraction: f64) -> bool {
    eval_fraction > 0.0 && ((index + 1) as f64 * eval_fraction).floor() > (index as f64 * eval_fraction).floor()
}

/// Batches from a dataset: epoch after epoch (train) or in one pass (eval).
///
/// Shuffling (train split only) permutes sequences, and then packed rows, within windows of up to 8192 sequences,
/// seeded by `seed`, the epoch and the window's index; the eval split keeps file order. A sequence's split is
/// decided by its index in file order, before shuffling, by [`held_out`]. Sequences
/// with no scored token (say, a prompt longer than `seq_len` under completion-only loss) are dropped first.
/// Rank `r` of `W` takes global micro-batches `r, r + W, ...`. On the train split an incomplete final batch and an
/// incomplete final group are dropped, so every rank takes the same number of full batches; on the eval split
/// nothing is dropped (the last batch may be short, and ranks past the end of the last group get none), so the
/// ranks together score every held-out row once.
pub struct DataLoader {
    options: DataOptions,
    encoder: Encoder,
    split: Split,
    single_pass: bool,
    pad_id: u32,
    epoch: u64,
    batch_in_epoch: u64,
    stream: EpochStream,
    /// Malformed rows skipped: the most any one epoch met, so replays and later epochs do not count them again.
    skipped: u64,
    warned: HashSet<PathBuf>,
    /// The next batch's rows, read ahead by [`DataLoader::epoch_complete`].
    peeked: Option<Vec<PackedRow>>,
    /// Train: at most this many batches an epoch (Lightning's `limit_train_batches`).
    batch_limit: Option<u64>,
}

impl DataLoader {
    /// The id rows are padded with.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// A loader over `split`: train cycles through epochs (reshuffled each epoch), eval makes one pass.
    pub fn new(options: &DataOptions, tokenizer: &TextTokenizer, split: Split) -> Result<Self> {
        Self::build(options, tokenizer, split, split == Split::Eval)
    }

    /// A loader that makes exactly one pass over `split`, then returns `Ok(None)` (e.g. for corpus statistics).
    pub fn single_pass(options: &DataOptions, tokenizer: &TextTokenizer, split: Split) -> Result<Self> {
        Self::build(options, tokenizer, split, true)
    }

    /// Calls `visit` on the batches of one pass over `split`, in order, at most `max_batches` of them: how
    /// validation and corpus statistics read a split.
    pub fn visit_one_pass<E: From<CoreError>>(
        options: &DataOptions,
        tokenizer: &TextTokenizer,
        split: Split,
        max_batches: usize,
        mut visit: impl FnMut(&Batch) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let mut loader = Self::single_pass(options, tokenizer, split)?;
        for _ in 0..max_batches {
            let Some(batch) = loader.next_batch()? else { break };
            visit(&batch)?;
        }
        Ok(())
    }

    fn build(options: &DataOptions, tokenizer: &TextTokenizer, split: Split, single_pass: bool) -> Result<Self> {
        validate(options)?;
        for file in &options.files {
            if !file.is_file() {
                return Err(CoreError::Io { path: file.clone(), source: std::io::ErrorKind::NotFound.into() });
            }
        }
        for file in options.files.iter().take(FORMAT_CHECK_FILES) {
            check_first_row(file)?;
        }
        let pad_id = tokenizer.pad_token.as_deref().and_then(|t| tokenizer.token_id(t)).unwrap_or(0);
        Ok(Self {
            stream: EpochStream::new(options.files.clone()),
            encoder: Encoder::new(tokenizer, options.loss_on, options.seq_len),
            options: options.clone(),
            split,
            single_pass,
            pad_id,
            epoch: 0,
            batch_in_epoch: 0,
            skipped: 0,
            warned: HashSet::new(),
            peeked: None,
            batch_limit: None,
        })
    }

    /// This rank's next micro-batch. Train: cycles through epochs forever, and fails if an epoch yields no batch
    /// at all. Eval (and [`DataLoader::single_pass`]): `Ok(None)` after one pass.
    pub fn next_batch(&mut self) -> Result<Option<Batch>> {
        loop {
            let rows = match self.peeked.take() {
                _ if self.limit_reached() => None,
                Some(rows) => Some(rows),
                None => self.next_rank_rows()?,
            };
            if let Some(rows) = rows {
                self.batch_in_epoch += 1;
                return Ok(Some(collate(&rows, self.options.seq_len, self.pad_id, self.options.packing)));
            }
            if self.single_pass {
                return Ok(None);
            }
            if self.batch_in_epoch == 0 {
                return Err(self.empty_epoch_error());
            }
            self.epoch += 1;
            self.batch_in_epoch = 0;
            self.stream = EpochStream::new(self.options.files.clone());
        }
    }

    /// Train: serve at most `batches` batches an epoch, the epoch's first ones (Lightning's
    /// `limit_train_batches`).
    pub fn limit_batches_per_epoch(&mut self, batches: u64) {
        self.batch_limit = Some(batches.max(1));
    }

    /// Whether the current epoch has served its last batch (reading the next batch ahead to know; it is served
    /// next all the same).
    pub fn epoch_complete(&mut self) -> Result<bool> {
        if self.limit_reached() {
            return Ok(true);
        }
        if self.peeked.is_none() {
            self.peeked = self.next_rank_rows()?;
        }
        Ok(self.peeked.is_none())
    }

    fn limit_reached(&self) -> bool {
        !self.single_pass && self.batch_limit.is_some_and(|limit| self.batch_in_epoch >= limit)
    }

    /// Where the next call to [`DataLoader::next_batch`] reads from.
    pub fn position(&self) -> DataPosition {
        DataPosition { epoch: self.epoch, batch_in_epoch: self.batch_in_epoch }
    }

    /// Continues from `position`, so the following batches are exactly those an uninterrupted loader gives. The
    /// epoch is replayed from its start (read and tokenized again, but not collated).
    pub fn seek(&mut self, position: DataPosition) -> Result<()> {
        self.epoch = position.epoch;
        self.batch_in_epoch = 0;
        self.peeked = None;
        self.stream = EpochStream::new(self.options.files.clone());
        while self.batch_in_epoch < position.batch_in_epoch {
            if self.next_rank_rows()?.is_none() {
                return Err(CoreError::Invalid(format!(
                    "cannot resume the data at epoch {} batch {}: an epoch now has only {} batches (did the data or \
                     data options change?)",
                    position.epoch, position.batch_in_epoch, self.batch_in_epoch
                )));
            }
            self.batch_in_epoch += 1;
        }
        Ok(())
    }

    /// Malformed rows skipped so far (with `skip_malformed`); a row skipped again in a later epoch or a replay
    /// counts once.
    pub fn skipped_rows(&self) -> u64 {
        self.skipped
    }

    fn empty_epoch_error(&self) -> CoreError {
        let o = &self.options;
        let split = match self.split {
            Split::Train => "training",
            Split::Eval => "eval",
        };
        let files: Vec<String> = o.files.iter().map(|f| f.display().to_string()).collect();
        let skipped =
            if self.skipped > 0 { format!(" ({} malformed rows skipped)", self.skipped) } else { String::new() };
        if self.stream.in_split == 0 {
            return CoreError::Invalid(format!(
                "the {split} split of the data holds no sequence{skipped}; files: {}",
                files.join(", ")
            ));
        }
        CoreError::Invalid(format!(
            "the {split} split of the data fills no batch: its {} sequences make {} rows of {} tokens, fewer than \
             batch_size {} x world_size {}{skipped}",
            self.stream.in_split, self.stream.rows_made, o.seq_len, o.batch_size, o.world_size
        ))
    }

    /// This rank's rows out of the next `world_size` global batches.
    fn next_rank_rows(&mut self) -> Result<Option<Vec<PackedRow>>> {
        let mut mine = None;
        for r in 0..self.options.world_size {
            match self.next_global_rows()? {
                Some(rows) if r == self.options.rank => mine = Some(rows),
                Some(_) => {}
                // Train: an incomplete group at the end of an epoch is dropped, so ranks stay in step. Eval: every
                // row is scored exactly once, so a rank whose batch exists still takes it (ranks add up loss sums
                // after the pass, not per batch).
                None if self.split == Split::Eval => return Ok(mine),
                None => return Ok(None),
            }
        }
        Ok(mine)
    }

    /// The rows of the next global batch: `batch_size` of them, or on the eval split whatever is left at the end.
    fn next_global_rows(&mut self) -> Result<Option<Vec<PackedRow>>> {
        let size = self.options.batch_size;
        while self.stream.rows.len() < size && !self.stream.exhausted {
            self.fill_window()?;
        }
        let take = match self.stream.rows.len() {
            n if n >= size => size,
            n if n > 0 && self.split == Split::Eval => n,
            _ => return Ok(None),
        };
        Ok(Some(self.stream.rows.drain(..take).collect()))
    }

    /// Reads one window of this split's sequences, shuffles (train) and packs them into rows.
    fn fill_window(&mut self) -> Result<()> {
        let mut window = Vec::new();
        let mut tokens = 0;
        while window.len() < WINDOW_SEQUENCES && tokens < WINDOW_TOKENS {
            match self.next_sequence()? {
                Some(seq) => {
                    tokens += seq.len();
                    window.push(seq);
                }
                None => {
                    self.stream.exhausted = true;
                    break;
                }
            }
        }
        let mut rng = (self.split == Split::Train && self.options.shuffle).then(|| {
            let seed = self.options.seed
                ^ self.epoch.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ self.stream.windows.wrapping_add(1).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
            StdRng::seed_from_u64(seed)
        });
        if let Some(rng) = rng.as_mut() {
            window.shuffle(rng);
        }
        self.stream.windows += 1;
        let mut rows =
            if self.options.packing { best_fit_decreasing(window, self.options.seq_len) } else { unpacked(window) };
        // Packing opens rows longest-sequence first; shuffle them too so batches do not follow length.
        if let Some(rng) = rng.as_mut() {
            rows.shuffle(rng);
        }
        self.stream.rows_made += rows.len() as u64;
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
                    self.stream.in_split += 1;
                    return Ok(Some(seq));
                }
                continue;
            }
            if !self.read_record()? {
                return Ok(None);
            }
        }
    }

    /// Whether sequence `index` (in file order) belongs to this loader's split.
    fn in_split(&self, index: u64) -> bool {
        held_out(index, self.options.eval_fraction) == (self.split == Split::Eval)
    }

    /// Reads one record into `pending` (skipping malformed ones when allowed); false once every file is done.
    fn read_record(&mut self) -> Result<bool> {
        loop {
            let stream = &mut self.stream;
            if stream.reader.is_none() {
                let Some(path) = stream.files.get(stream.file_index) else { return Ok(false) };
                stream.reader = Some(RecordReader::open(path)?);
            }
            let Some(reader) = stream.reader.as_mut() else { return Ok(false) };
            let Some((location, record)) = reader.next_record()? else {
                stream.reader = None;
                stream.file_index += 1;
                continue;
            };
            let sequences = match record {
                Ok(Record::TextPiece { text, first, last }) => stream.chunker.piece(&self.encoder, &text, first, last),
                Ok(Record::Row(value)) => match Row::parse(&value) {
                    // The wrong kind of dataset is never skipped: skipping it all would only hide the mistake.
                    Ok(row) if !row.is_language_modeling() => {
                        return Err(CoreError::Invalid(format!("{location}: {}", needs_other_trainer(&row))));
                    }
                    Ok(row) => self.encoder.row(&row).map(|s| vec![s]),
                    Err(message) => Err(message),
                },
                Err(message) => Err(message),
            };
            match sequences {
                Ok(sequences) => {
                    stream.pending.extend(sequences.into_iter().filter(Sequence::trains_anything));
                    return Ok(true);
                }
                Err(message) if self.options.skip_malformed => self.skip(&location, &message),
                Err(message) => return Err(CoreError::Invalid(format!("{location}: {message}"))),
            }
        }
    }

    fn skip(&mut self, location: &Location, message: &str) {
        self.stream.skipped += 1;
        self.skipped = self.skipped.max(self.stream.skipped);
        if self.warned.insert(location.path.clone()) {
            tracing::warn!("{location}: {message} (skipping this and any further malformed rows of this file)");
        }
    }
}

fn validate(o: &DataOptions) -> Result<()> {
    let bad = |m: String| Err(CoreError::Invalid(format!("data: {m}")));
    if o.files.is_empty() {
        return bad("no files given".into());
    }
    if o.seq_len < 2 {
        return bad(format!("seq_len must be at least 2, got {}", o.seq_len));
    }
    if o.batch_size == 0 {
        return bad("batch_size must be at least 1".into());
    }
    if o.world_size == 0 || o.rank >= o.world_size {
        return bad(format!("rank {} must be below world_size {}", o.rank, o.world_size));
    }
    if !(0.0..1.0).contains(&o.eval_fraction) {
        return bad(format!("eval_fraction must be in [0, 1), got {}", o.eval_fraction));
    }
    Ok(())
}

/// Fails early, before any training, when a file's first row is of a format causal-LM training cannot use.
fn check_first_row(path: &std::path::Path) -> Result<()> {
    let mut reader = RecordReader::open(path)?;
    if !reader.holds_rows() {
        return Ok(());
    }
    if let Some((location, Ok(Record::Row(value)))) = reader.next_record()?
        && let Ok(row) = Row::parse(&value)
        && !row.is_language_modeling()
    {
        return Err(CoreError::Invalid(format!("{location}: {}", needs_other_trainer(&row))));
    }
    Ok(())
}

/// Reading state of one epoch.
struct EpochStream {
    files: Vec<PathBuf>,
    file_index: usize,
    reader: Option<RecordReader>,
    chunker: DocumentChunker,
    /// Sequences tokenized from the current record, not yet taken.
    pending: VecDeque<Sequence>,
    /// Sequences seen this epoch, both splits: the index that decides the split.
    sequences: u64,
    /// Sequences of this loader's split seen this epoch.
    in_split: u64,
    /// Windows shuffled so far this epoch (part of each window's seed).
    windows: u64,
    rows_made: u64,
    rows: VecDeque<PackedRow>,
    exhausted: bool,
    skipped: u64,
}

impl EpochStream {
    fn new(files: Vec<PathBuf>) -> Self {
        Self {
            files,
            file_index: 0,
            reader: None,
            chunker: DocumentChunker::default(),
            pending: VecDeque::new(),
            sequences: 0,
            in_split: 0,
            windows: 0,
            rows_made: 0,
            rows: VecDeque::new(),
            exhausted: false,
            skipped: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    /// Trainers may read ahead on another thread.
    #[test]
    fn the_loader_can_move_to_another_thread() {
        fn is_send<T: Send>() {}
        is_send::<super::DataLoader>();
    }
}

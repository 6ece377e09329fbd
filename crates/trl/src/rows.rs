//! The rows a trainer learns from: every file of `[data] files` read in TRL's formats, each row converted by
//! the trainer (tokenized, checked), and split into training and held-out items by core's rule
//! ([`held_out`]), so every trainer holds out the same share the same way.

use std::path::PathBuf;

use llmtrain_core::CoreError;
use llmtrain_core::data::{Row, RowReader, held_out};

use crate::error::{Result, TrlError};

/// A trainer's items, split.
#[derive(Debug, Clone)]
pub struct SplitItems<T> {
    pub train: Vec<T>,
    pub eval: Vec<T>,
    /// Rows skipped as malformed (`[data] skip_malformed`).
    pub skipped: u64,
    /// Rows the trainer dropped on purpose (say, a prompt that fills `max_length`).
    pub dropped: u64,
}

/// What a trainer makes of one row: an item, nothing (dropped on purpose), or why the row cannot be used.
pub type Converted<T> = std::result::Result<Option<T>, String>;

/// Reads `files` in order and converts every row; a row that cannot be used is an error naming its file and
/// line (or row), unless `skip_malformed` counts it instead. Item `i` (in file order, over the kept items) is
/// held out for evaluation iff [`held_out`]`(i, eval_fraction)`.
pub fn read_items<T>(
    files: &[PathBuf],
    eval_fraction: f64,
    skip_malformed: bool,
    mut convert: impl FnMut(&Row) -> Converted<T>,
) -> Result<SplitItems<T>> {
    let mut items = SplitItems { train: Vec::new(), eval: Vec::new(), skipped: 0, dropped: 0 };
    let mut index = 0u64;
    for file in files {
        for next in RowReader::open(file)? {
            // A malformed row is `Invalid` (reading goes on); anything else (I/O) ends the file and the run.
            let converted = match next {
                Ok((location, row)) => {
                    convert(&row).map_err(|message| TrlError::Invalid(format!("{location}: {message}")))
                }
                Err(CoreError::Invalid(message)) => Err(TrlError::Invalid(message)),
                Err(err) => return Err(err.into()),
            };
            let item = match converted {
                Ok(Some(item)) => item,
                Ok(None) => {
                    items.dropped += 1;
                    continue;
                }
                Err(_) if skip_malformed => {
                    items.skipped += 1;
                    continue;
                }
                Err(err) => return Err(err),
            };
            if held_out(index, eval_fraction) { &mut items.eval } else { &mut items.train }.push(item);
            index += 1;
        }
    }
    if items.train.is_empty() {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        return Err(TrlError::Invalid(format!(
            "[data] files ({}): no training row left ({} skipped as malformed, {} dropped, {} held out)",
            names.join(", "),
            items.skipped,
            items.dropped,
            items.eval.len()
        )));
    }
    Ok(items)
}

//! `llmtrain score`'s work: every row of a dataset file scored by a reward model, in batches.

use std::path::Path;

use llmtrain_core::data::{Location, RowReader};
use llmtrain_core::kernels::Kernels;
use llmtrain_core::model::SequenceClassifier;
use llmtrain_core::tokenizer::TextTokenizer;

use super::data::score_inputs;
use crate::error::{Result, TrlError};

/// One row's rewards: one for a completion or a text, two (chosen, rejected) for a preference pair.
#[derive(Debug, Clone, PartialEq)]
pub struct RowScores {
    pub location: Location,
    pub rewards: Vec<f32>,
}

/// Scores every row of `file` with `net`, `batch_size` sequences at a time (right-padded with `pad_id`, which
/// changes no score). A row the model cannot score is an error naming its file and line.
pub fn score_file<B: Kernels>(
    net: &SequenceClassifier<B>,
    tokenizer: &TextTokenizer,
    file: &Path,
    pad_id: u32,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<RowScores>> {
    let mut rows: Vec<(Location, Vec<Vec<u32>>)> = Vec::new();
    for next in RowReader::open(file)? {
        let (location, row) = next?;
        let inputs = score_inputs(tokenizer, &row).map_err(|m| TrlError::Invalid(format!("{location}: {m}")))?;
        rows.push((location, inputs));
    }
    let sequences: Vec<&[u32]> = rows.iter().flat_map(|(_, inputs)| inputs.iter().map(Vec::as_slice)).collect();
    let mut rewards = Vec::with_capacity(sequences.len());
    for chunk in sequences.chunks(batch_size.max(1)) {
        let scores = net.score_sequences(chunk, pad_id, device).into_data().convert::<f32>();
        rewards.extend(scores.as_slice::<f32>().unwrap_or_default());
    }
    let mut next = rewards.into_iter();
    Ok(rows
        .into_iter()
        .map(|(location, inputs)| RowScores { location, rewards: next.by_ref().take(inputs.len()).collect() })
        .collect())
}

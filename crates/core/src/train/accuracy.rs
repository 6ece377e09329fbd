//! Held-out exact-match accuracy for prompt/completion data: greedy generation after each prompt must reproduce
//! the completion token for token (and stop where it ends), as task-accuracy evaluations of SFT runs count it.

use std::path::Path;

use crate::data::{LossOn, Row, RowReader};
use crate::error::{CoreError, Result};
use crate::generate::{SamplingConfig, generate};
use crate::kernels::Kernels;
use crate::model::LlamaModel;
use crate::tokenizer::TextTokenizer;
use crate::train::IGNORE_INDEX;

/// Correct completions out of the rows scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accuracy {
    pub correct: usize,
    pub total: usize,
}

impl Accuracy {
    pub fn fraction(&self) -> f64 {
        if self.total == 0 { 0.0 } else { self.correct as f64 / self.total as f64 }
    }
}

/// A held-out prompt and the tokens its completion must be, tokenized exactly as SFT training tokenizes the row.
pub struct AccuracyExample {
    pub prompt: Vec<u32>,
    pub completion: Vec<u32>,
}

/// Reads at most `max_rows` prompt/completion rows of `file` as examples (other formats are an error naming the
/// file and line).
pub fn accuracy_examples(
    file: &Path,
    tokenizer: &TextTokenizer,
    seq_len: usize,
    max_rows: usize,
) -> Result<Vec<AccuracyExample>> {
    let encoder = crate::data::Encoder::new(tokenizer, LossOn::CompletionOnly, seq_len);
    let mut examples = Vec::new();
    for item in RowReader::open(file)?.take(max_rows) {
        let (location, row) = item?;
        if !matches!(row, Row::PromptCompletion { .. }) {
            return Err(CoreError::Invalid(format!(
                "{location}: accuracy needs prompt/completion rows, found a {} row",
                row.format_name()
            )));
        }
        let seq = encoder.row(&row).map_err(|m| CoreError::Invalid(format!("{location}: {m}")))?;
        let split = seq.labels.iter().position(|&l| l != IGNORE_INDEX).unwrap_or(seq.ids.len());
        examples.push(AccuracyExample { prompt: seq.ids[..split].to_vec(), completion: seq.ids[split..].to_vec() });
    }
    Ok(examples)
}

/// Greedy completions of every example, each compared with its expected tokens.
pub fn completion_accuracy<B: Kernels>(
    model: &LlamaModel<B>,
    examples: &[AccuracyExample],
    tokenizer: &TextTokenizer,
    device: &B::Device,
) -> Accuracy {
    let stop: Vec<u32> = tokenizer.eos_token_id().into_iter().collect();
    let mut correct = 0;
    for example in examples {
        let config = SamplingConfig {
            max_new_tokens: example.completion.len(),
            stop_tokens: stop.clone(),
            ..SamplingConfig::default()
        };
        if generate(model, &example.prompt, &config, device) == example.completion {
            correct += 1;
        }
    }
    Accuracy { correct, total: examples.len() }
}

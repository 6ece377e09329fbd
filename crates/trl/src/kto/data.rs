//! An unpaired row (`prompt`, `completion`, boolean `label`) as TRL 1.16's KTOTrainer prepares it: tokenized as
//! DPO tokenizes one completion (EOS text appended, the completion starting where the prompt's tokens and the
//! whole's diverge; chat templates for conversational rows), and given a mismatched completion for the KL
//! estimate: within consecutive chunks of a micro-batch's size, each row borrows the previous row's completion
//! (the first row the chunk's last), its own prompt kept.

use llmtrain_core::data::{Content, Row};
use llmtrain_core::tokenizer::TextTokenizer;

use crate::dpo::{tokenize_conversation_pair, tokenize_pair};

/// One KTO item: prompt, completion and label, the borrowed completion of its KL pair, and the reference's
/// log-probs of both sequences once precomputed.
#[derive(Debug, Clone, PartialEq)]
pub struct KtoItem {
    pub prompt: Vec<u32>,
    pub completion: Vec<u32>,
    pub desirable: bool,
    pub kl_completion: Vec<u32>,
    pub reference_logps: Option<[f32; 2]>,
}

impl KtoItem {
    /// Tokens of the item's sequence, as TRL counts them (its KL pair aside).
    pub fn tokens(&self) -> usize {
        self.prompt.len() + self.completion.len()
    }
}

/// One dataset row as a KTO item (its KL completion still its own: see [`assign_kl_completions`]), or `None`
/// when its prompt alone fills `max_length` (TRL drops those).
pub fn kto_item_from_row(
    tokenizer: &TextTokenizer,
    row: &Row,
    max_length: usize,
) -> std::result::Result<Option<KtoItem>, String> {
    let Row::UnpairedPreference { prompt, completion, label } = row else {
        return Err(format!(
            "a {} row, but KTO learns from unpaired rows: `prompt`, `completion` and a boolean `label`",
            row.format_name()
        ));
    };
    let pair = match (prompt, completion) {
        (Content::Text(p), Content::Text(c)) => tokenize_pair(tokenizer, p, c, c),
        (Content::Chat(p), Content::Chat(c)) => tokenize_conversation_pair(tokenizer, p, c, c),
        _ => return Err("fields `prompt` and `completion`: both strings or both message lists".into()),
    }
    .map_err(|e| e.to_string())?;
    let item = KtoItem {
        prompt: pair.prompt,
        kl_completion: pair.chosen.clone(),
        completion: pair.chosen,
        desirable: *label,
        reference_logps: None,
    };
    Ok((item.prompt.len() < max_length).then_some(item))
}

/// Gives each item the completion of the one before it within consecutive chunks of `chunk` items (the
/// chunk's first takes its last), as KTOTrainer builds its KL dataset.
pub fn assign_kl_completions(items: &mut [KtoItem], chunk: usize) {
    for group in items.chunks_mut(chunk.max(1)) {
        let completions: Vec<Vec<u32>> = group.iter().map(|item| item.completion.clone()).collect();
        let n = group.len();
        for (i, item) in group.iter_mut().enumerate() {
            item.kl_completion = completions[(i + n - 1) % n].clone();
        }
    }
}

//! A preference row as TRL 1.16's RewardTrainer tokenizes it: text rows get the EOS text appended to each
//! completion that lacks it, and prompt + completion is tokenized whole (special tokens as the tokenizer adds
//! them); conversational rows are rendered with the chat template (no generation prompt) and tokenized without
//! special tokens. A pair with a sequence longer than `max_length` is dropped, not cut.

use llmtrain_core::chat::Message;
use llmtrain_core::data::{Content, Row};
use llmtrain_core::tokenizer::TextTokenizer;

/// One pair's two token sequences and its margin (0 without a `margin` column).
#[derive(Debug, Clone, PartialEq)]
pub struct RewardPair {
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    pub margin: f32,
}

impl RewardPair {
    pub fn tokens(&self) -> usize {
        self.chosen.len() + self.rejected.len()
    }
}

/// One dataset row as a reward pair, or `None` when a sequence exceeds `max_length`.
pub fn reward_pair_from_row(
    tokenizer: &TextTokenizer,
    row: &Row,
    max_length: usize,
) -> std::result::Result<Option<RewardPair>, String> {
    let Row::Preference { prompt, chosen, rejected, margin } = row else {
        return Err(format!(
            "a {} row, but a reward model learns from preference rows: `chosen` and `rejected`, with a `prompt` or an \
             implicit one",
            row.format_name()
        ));
    };
    let (chosen, rejected) = match (prompt, chosen, rejected) {
        (Content::Text(_), Content::Text(_), Content::Text(_))
        | (Content::Chat(_), Content::Chat(_), Content::Chat(_)) => {
            (tokenize_for_score(tokenizer, prompt, chosen)?, tokenize_for_score(tokenizer, prompt, rejected)?)
        }
        _ => return Err("fields `prompt`, `chosen` and `rejected`: all strings or all message lists".into()),
    };
    let fits = chosen.len() <= max_length && rejected.len() <= max_length;
    Ok(fits.then_some(RewardPair { chosen, rejected, margin: margin.unwrap_or(0.0) as f32 }))
}

/// The ids a reward model scores for `prompt` followed by `completion`, as RewardTrainer prepares them (and
/// `llmtrain score` scores them).
pub fn tokenize_for_score(
    tokenizer: &TextTokenizer,
    prompt: &Content,
    completion: &Content,
) -> std::result::Result<Vec<u32>, String> {
    match (prompt, completion) {
        (Content::Text(p), Content::Text(c)) => {
            let eos = tokenizer.eos_token.as_deref().ok_or("the tokenizer has no eos_token to end completions with")?;
            let text = if c.ends_with(eos) { format!("{p}{c}") } else { format!("{p}{c}{eos}") };
            tokenizer.encode(&text).map_err(|e| e.to_string())
        }
        (Content::Chat(p), Content::Chat(c)) => {
            let whole: Vec<Message> = p.iter().chain(c).cloned().collect();
            let text = tokenizer.apply_chat_template(&whole, false).map_err(|e| e.to_string())?;
            tokenizer.encode_with(&text, false).map_err(|e| e.to_string())
        }
        _ => Err("fields `prompt` and the completion: both strings or both message lists".into()),
    }
}

/// What a reward model scores in a row: `prompt` + `completion`, a whole `text` (EOS appended) or a whole
/// conversation, or both completions of a preference row.
pub fn score_inputs(tokenizer: &TextTokenizer, row: &Row) -> std::result::Result<Vec<Vec<u32>>, String> {
    let empty = Content::Text(String::new());
    match row {
        Row::Preference { prompt, chosen, rejected, .. } => {
            Ok(vec![tokenize_for_score(tokenizer, prompt, chosen)?, tokenize_for_score(tokenizer, prompt, rejected)?])
        }
        Row::PromptCompletion { prompt, completion } | Row::UnpairedPreference { prompt, completion, .. } => {
            Ok(vec![tokenize_for_score(tokenizer, prompt, completion)?])
        }
        Row::Text { text } => Ok(vec![tokenize_for_score(tokenizer, &empty, &Content::Text(text.clone()))?]),
        Row::Messages { messages } => {
            Ok(vec![tokenize_for_score(tokenizer, &Content::Chat(Vec::new()), &Content::Chat(messages.clone()))?])
        }
        Row::PromptOnly { .. } => Err("a prompt-only row has no completion to score".into()),
    }
}

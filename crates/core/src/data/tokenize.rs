//! Rows to token sequences with loss masks, the way TRL's SFT prepares them.

use crate::chat::Message;
use crate::tokenizer::TextTokenizer;
use crate::train::IGNORE_INDEX;

use super::LossOn;
use super::rows::{Content, Row};

/// Token ids with their labels: `labels[i]` is `ids[i]` where the token is scored, [`IGNORE_INDEX`] elsewhere.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    pub ids: Vec<u32>,
    pub labels: Vec<i64>,
}

impl Sequence {
    fn scored(ids: Vec<u32>) -> Self {
        let labels = ids.iter().map(|&t| t as i64).collect();
        Self { ids, labels }
    }

    fn push(&mut self, ids: &[u32], scored: bool) {
        self.ids.extend_from_slice(ids);
        self.labels.extend(ids.iter().map(|&t| if scored { t as i64 } else { IGNORE_INDEX }));
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Tokenizes a plain-text document into consecutive chunks of at most `seq_len` tokens (pretraining).
pub fn document(tok: &TextTokenizer, text: &str, seq_len: usize) -> Result<Vec<Sequence>, String> {
    let mut ids = tok.encode(text).map_err(|e| e.to_string())?;
    ids.extend(tok.eos_token_id());
    Ok(ids.chunks(seq_len).filter(|c| c.len() > 1).map(|c| Sequence::scored(c.to_vec())).collect())
}

/// Tokenizes one row for causal-LM training, truncated to `seq_len` (TRL's `max_length`).
pub fn row(tok: &TextTokenizer, row: &Row, loss_on: LossOn, seq_len: usize) -> Result<Sequence, String> {
    let mut seq = match row {
        Row::Text(text) => {
            let mut ids = tok.encode(text).map_err(|e| e.to_string())?;
            ids.extend(tok.eos_token_id());
            Sequence::scored(ids)
        }
        Row::Messages(messages) => conversation(tok, messages, loss_on == LossOn::AssistantOnly)?,
        Row::PromptCompletion { prompt, completion } => {
            let mask_prompt = loss_on != LossOn::All;
            match (prompt, completion) {
                (Content::Text(p), Content::Text(c)) => {
                    let mut seq = Sequence { ids: Vec::new(), labels: Vec::new() };
                    seq.push(&tok.encode(p).map_err(|e| e.to_string())?, !mask_prompt);
                    let mut completion = tok.encode_with(c, false).map_err(|e| e.to_string())?;
                    completion.extend(tok.eos_token_id());
                    seq.push(&completion, true);
                    seq
                }
                (Content::Chat(p), Content::Chat(c)) => {
                    let prompt_text = tok.apply_chat_template(p, true).map_err(|e| e.to_string())?;
                    let whole: Vec<Message> = p.iter().chain(c).cloned().collect();
                    let full = tok.apply_chat_template(&whole, false).map_err(|e| e.to_string())?;
                    let completion_text = full.strip_prefix(&prompt_text).ok_or(
                        "fields `prompt`/`completion`: the chat template renders the prompt differently inside the \
                         whole conversation",
                    )?;
                    let mut seq = Sequence { ids: Vec::new(), labels: Vec::new() };
                    seq.push(&tok.encode_with(&prompt_text, false).map_err(|e| e.to_string())?, !mask_prompt);
                    seq.push(&tok.encode_with(completion_text, false).map_err(|e| e.to_string())?, true);
                    seq
                }
                _ => return Err("fields `prompt` and `completion`: both strings or both message lists".into()),
            }
        }
        other => {
            return Err(format!(
                "a {} row needs a preference or online trainer (llmtrain's trl), not causal-LM training",
                other.format_name()
            ));
        }
    };
    seq.ids.truncate(seq_len);
    seq.labels.truncate(seq_len);
    Ok(seq)
}

/// A rendered conversation; with `assistant_only`, only tokens inside assistant turns are scored. A turn's span
/// is where the rendering of the conversation up to it (with the generation prompt) ends and the rendering
/// including it ends; tokens are selected by their character offsets.
fn conversation(tok: &TextTokenizer, messages: &[Message], assistant_only: bool) -> Result<Sequence, String> {
    let full = tok.apply_chat_template(messages, false).map_err(|e| e.to_string())?;
    let encoding = tok.inner.encode(full.as_str(), false).map_err(|e| format!("field `messages`: {e}"))?;
    let ids = encoding.get_ids().to_vec();
    if !assistant_only {
        return Ok(Sequence::scored(ids));
    }
    let mut spans = Vec::new();
    for (i, message) in messages.iter().enumerate().filter(|(_, m)| m.role == "assistant") {
        let before = tok.apply_chat_template(&messages[..i], true).map_err(|e| e.to_string())?;
        let through = tok.apply_chat_template(&messages[..=i], false).map_err(|e| e.to_string())?;
        if !full.starts_with(&through) || !through.starts_with(&before) {
            return Err(format!(
                "field `messages[{i}]`: the chat template does not render conversations prefix by prefix, so the \
                 assistant turn `{}` cannot be located",
                message.content.chars().take(30).collect::<String>()
            ));
        }
        spans.push(before.len()..through.len());
    }
    let labels = ids
        .iter()
        .zip(encoding.get_offsets())
        .map(|(&id, &(start, end))| {
            let inside = end > start && spans.iter().any(|s| start >= s.start && end <= s.end);
            if inside { id as i64 } else { IGNORE_INDEX }
        })
        .collect();
    Ok(Sequence { ids, labels })
}

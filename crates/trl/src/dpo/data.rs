//! A preference row as TRL 1.16's DPOTrainer prepares it (text rows): the EOS token's text is appended to each
//! completion that does not end with it; the prompt, prompt + chosen and prompt + rejected are each tokenized
//! whole (special tokens as the tokenizer adds them); and the completions start where the prompt's tokens and
//! each prompt + completion's diverge (the shorter of the two common prefixes), since tokens can merge across the
//! boundary. Conversational rows are rendered with the tokenizer's chat template instead (the prompt with the
//! generation prompt, each whole conversation without) and tokenized without special tokens, as
//! `apply_chat_template` tokenizes; no EOS is appended, the template ends the turn.

use llmtrain_core::chat::Message;
use llmtrain_core::data::{Content, Row};
use llmtrain_core::tokenizer::TextTokenizer;

use crate::error::{Result, TrlError};

/// One pair's token ids: the shared prompt, then each completion (EOS included), and the reference's
/// log-probs of the two completions once they are precomputed (`precompute_ref_log_probs`).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedPair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    pub reference_logps: Option<[f32; 2]>,
}

impl TokenizedPair {
    /// Tokens the pair's two sequences hold (the prompt counts twice: it is in both), before truncation.
    pub fn tokens(&self) -> usize {
        2 * self.prompt.len() + self.chosen.len() + self.rejected.len()
    }
}

/// One dataset row as a DPO pair, or `None` when its prompt alone fills `max_length` tokens (TRL drops those:
/// truncation would leave no completion token). Rows of other formats are refused, naming what DPO needs.
pub fn pair_from_row(
    tokenizer: &TextTokenizer,
    row: &Row,
    max_length: usize,
) -> std::result::Result<Option<TokenizedPair>, String> {
    let Row::Preference { prompt, chosen, rejected, .. } = row else {
        return Err(format!(
            "a {} row, but DPO learns from preference rows: `chosen` and `rejected`, with a `prompt` or an implicit one",
            row.format_name()
        ));
    };
    let pair = match (prompt, chosen, rejected) {
        (Content::Text(p), Content::Text(c), Content::Text(r)) => tokenize_pair(tokenizer, p, c, r),
        (Content::Chat(p), Content::Chat(c), Content::Chat(r)) => tokenize_conversation_pair(tokenizer, p, c, r),
        _ => return Err("fields `prompt`, `chosen` and `rejected`: all strings or all message lists".into()),
    }
    .map_err(|e| e.to_string())?;
    Ok((pair.prompt.len() < max_length).then_some(pair))
}

/// Tokenizes one `prompt` / `chosen` / `rejected` row as DPOTrainer does.
pub fn tokenize_pair(tokenizer: &TextTokenizer, prompt: &str, chosen: &str, rejected: &str) -> Result<TokenizedPair> {
    let eos = tokenizer
        .eos_token
        .as_deref()
        .ok_or_else(|| TrlError::Invalid("the tokenizer has no eos_token: DPO ends every completion with it".into()))?;
    let with_eos = |text: &str| if text.ends_with(eos) { text.to_string() } else { format!("{text}{eos}") };
    let prompt_ids = tokenizer.encode(prompt)?;
    let chosen_ids = tokenizer.encode(&format!("{prompt}{}", with_eos(chosen)))?;
    let rejected_ids = tokenizer.encode(&format!("{prompt}{}", with_eos(rejected)))?;
    Ok(split_at_divergence(&prompt_ids, &chosen_ids, &rejected_ids))
}

/// Tokenizes one conversational row as DPOTrainer does: the prompt rendered with the generation prompt, each
/// prompt + completion rendered whole, all tokenized without special tokens.
pub fn tokenize_conversation_pair(
    tokenizer: &TextTokenizer,
    prompt: &[Message],
    chosen: &[Message],
    rejected: &[Message],
) -> Result<TokenizedPair> {
    let ids = |messages: &[Message], generation_prompt: bool| -> Result<Vec<u32>> {
        Ok(tokenizer.encode_with(&tokenizer.apply_chat_template(messages, generation_prompt)?, false)?)
    };
    let whole = |completion: &[Message]| -> Vec<Message> { prompt.iter().chain(completion).cloned().collect() };
    let prompt_ids = ids(prompt, true)?;
    Ok(split_at_divergence(&prompt_ids, &ids(&whole(chosen), false)?, &ids(&whole(rejected), false)?))
}

/// The prompt is the part the prompt's tokens share with both prompt + completion token lists; each completion
/// is the rest of its list.
fn split_at_divergence(prompt: &[u32], chosen: &[u32], rejected: &[u32]) -> TokenizedPair {
    let shared = common_prefix(prompt, chosen).min(common_prefix(prompt, rejected));
    TokenizedPair {
        prompt: prompt[..shared].to_vec(),
        chosen: chosen[shared..].to_vec(),
        rejected: rejected[shared..].to_vec(),
        reference_logps: None,
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

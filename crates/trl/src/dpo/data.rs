//! A preference row as TRL 1.16's DPOTrainer prepares it (text rows): the EOS token's text is appended to each
//! completion that does not end with it; the prompt, prompt + chosen and prompt + rejected are each tokenized
//! whole (special tokens as the tokenizer adds them); and the completions start where the prompt's tokens and
//! each prompt + completion's diverge (the shorter of the two common prefixes), since tokens can merge across the
//! boundary.

use llmtrain_core::tokenizer::TextTokenizer;

use crate::error::{Result, TrlError};

/// One pair's token ids: the shared prompt, then each completion (EOS included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
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
    let shared = common_prefix(&prompt_ids, &chosen_ids).min(common_prefix(&prompt_ids, &rejected_ids));
    Ok(TokenizedPair {
        prompt: prompt_ids[..shared].to_vec(),
        chosen: chosen_ids[shared..].to_vec(),
        rejected: rejected_ids[shared..].to_vec(),
    })
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

//! A preference row as TRL 1.16's ORPOTrainer tokenizes it. Unlike DPO, each answer gets its own prompt part:
//! the prompt and prompt + answer are tokenized without special tokens, and when the prompt's tokens are not a
//! prefix of the whole (a token merged across the boundary) the prompt part ends one token earlier. The BOS token
//! (if the tokenizer has one) starts each prompt part, the EOS id ends each answer, and an answer is cut so that
//! prompt part + answer fit `max_length`. Conversational rows are first rendered with the chat template (the
//! prompt with the generation prompt; each answer as what the whole conversation adds to it).

use llmtrain_core::chat::Message;
use llmtrain_core::data::{Content, Row};
use llmtrain_core::tokenizer::TextTokenizer;

/// One pair: each answer's prompt part and answer ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrpoPair {
    pub chosen: (Vec<u32>, Vec<u32>),
    pub rejected: (Vec<u32>, Vec<u32>),
}

impl OrpoPair {
    /// Tokens of the pair's two sequences.
    pub fn tokens(&self) -> usize {
        self.chosen.0.len() + self.chosen.1.len() + self.rejected.0.len() + self.rejected.1.len()
    }
}

/// One dataset row as an ORPO pair, or `None` when a prompt alone fills `max_length` (no answer token would
/// be left). Rows of other formats are refused, naming what ORPO needs.
pub fn orpo_pair_from_row(
    tokenizer: &TextTokenizer,
    row: &Row,
    max_length: usize,
) -> std::result::Result<Option<OrpoPair>, String> {
    let Row::Preference { prompt, chosen, rejected, .. } = row else {
        return Err(format!(
            "a {} row, but ORPO learns from preference rows: `chosen` and `rejected`, with a `prompt` or an implicit one",
            row.format_name()
        ));
    };
    let (prompt, chosen, rejected) = match (prompt, chosen, rejected) {
        (Content::Text(p), Content::Text(c), Content::Text(r)) => (p.clone(), c.clone(), r.clone()),
        (Content::Chat(p), Content::Chat(c), Content::Chat(r)) => {
            let prompt = render(tokenizer, p, true)?;
            (prompt.clone(), answer_text(tokenizer, p, c, &prompt)?, answer_text(tokenizer, p, r, &prompt)?)
        }
        _ => return Err("fields `prompt`, `chosen` and `rejected`: all strings or all message lists".into()),
    };
    let chosen = split_answer(tokenizer, &prompt, &chosen)?;
    let rejected = split_answer(tokenizer, &prompt, &rejected)?;
    let (c, r) = (&chosen.0, &rejected.0);
    let differing = c.iter().zip(r).filter(|(a, b)| a != b).count();
    if differing > 1 || c.len().abs_diff(r.len()) > 1 {
        return Err(
            "the prompt tokenizes differently before `chosen` and before `rejected` (more than one token)".into()
        );
    }
    let fit = |(prompt, mut answer): (Vec<u32>, Vec<u32>)| {
        answer.truncate(max_length.saturating_sub(prompt.len()));
        (!answer.is_empty()).then_some((prompt, answer))
    };
    Ok(fit(chosen).zip(fit(rejected)).map(|(chosen, rejected)| OrpoPair { chosen, rejected }))
}

/// The prompt part and the answer ids of `prompt` + `answer`, BOS and EOS added.
fn split_answer(
    tokenizer: &TextTokenizer,
    prompt: &str,
    answer: &str,
) -> std::result::Result<(Vec<u32>, Vec<u32>), String> {
    let encode = |text: &str| tokenizer.encode_with(text, false).map_err(|e| e.to_string());
    let prompt_ids = encode(prompt)?;
    let full = encode(&format!("{prompt}{answer}"))?;
    let mut cut = prompt_ids.len().min(full.len());
    if full[..cut] != prompt_ids[..] {
        cut = cut.saturating_sub(1);
    }
    let mut prompt_part = full[..cut].to_vec();
    let mut answer_ids = full[cut..].to_vec();
    if let Some(bos) = tokenizer.bos_token.as_deref().and_then(|t| tokenizer.token_id(t))
        && prompt_part.first() != Some(&bos)
    {
        prompt_part.insert(0, bos);
    }
    let eos = tokenizer.eos_token_id().ok_or("the tokenizer has no eos_token: ORPO ends every answer with it")?;
    if answer_ids.last() != Some(&eos) {
        answer_ids.push(eos);
    }
    Ok((prompt_part, answer_ids))
}

fn render(
    tokenizer: &TextTokenizer,
    messages: &[Message],
    generation_prompt: bool,
) -> std::result::Result<String, String> {
    tokenizer.apply_chat_template(messages, generation_prompt).map_err(|e| e.to_string())
}

/// What the whole conversation's rendering adds after the rendered prompt.
fn answer_text(
    tokenizer: &TextTokenizer,
    prompt: &[Message],
    answer: &[Message],
    rendered_prompt: &str,
) -> std::result::Result<String, String> {
    let whole: Vec<Message> = prompt.iter().chain(answer).cloned().collect();
    let full = render(tokenizer, &whole, false)?;
    full.strip_prefix(rendered_prompt).map(str::to_string).ok_or_else(|| {
        "the chat template renders the prompt differently once an answer follows, so the answer cannot be separated"
            .to_string()
    })
}

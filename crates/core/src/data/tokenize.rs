//! Rows and documents to token sequences with loss labels, the way TRL's SFT trainer prepares them.

use crate::chat::{ChatTemplate, Message};
use crate::data::IGNORE_INDEX;
use crate::tokenizer::TextTokenizer;

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
        let labels = ids.iter().map(|&t| i64::from(t)).collect();
        Self { ids, labels }
    }

    fn push(&mut self, ids: &[u32], scored: bool) {
        self.ids.extend_from_slice(ids);
        self.labels.extend(ids.iter().map(|&t| if scored { i64::from(t) } else { IGNORE_INDEX }));
    }

    fn truncate(&mut self, len: usize) {
        self.ids.truncate(len);
        self.labels.truncate(len);
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether the loss would score any of it: a label after the first token (the first is never predicted).
    pub fn trains_anything(&self) -> bool {
        self.labels.iter().skip(1).any(|&l| l != IGNORE_INDEX)
    }
}

/// Tokenizes rows for causal-LM training with one tokenizer and its chat template (compiled once).
pub(crate) struct Encoder {
    tok: TextTokenizer,
    template: Option<Result<ChatTemplate, String>>,
    loss_on: LossOn,
    seq_len: usize,
}

impl Encoder {
    pub fn new(tok: &TextTokenizer, loss_on: LossOn, seq_len: usize) -> Self {
        let template = tok.chat_template.as_deref().map(|source| ChatTemplate::new(source).map_err(|e| e.to_string()));
        Self { tok: tok.clone(), template, loss_on, seq_len }
    }

    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String> {
        let special = add_special_tokens && self.tok.add_special_tokens;
        self.tok.encode_with(text, special).map_err(|e| e.to_string())
    }

    fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, String> {
        match &self.template {
            None => Err("a conversational row needs a tokenizer with a chat_template".into()),
            Some(Err(e)) => Err(e.clone()),
            Some(Ok(template)) => template
                .render(messages, add_generation_prompt, self.tok.bos_token.as_deref(), self.tok.eos_token.as_deref())
                .map_err(|e| e.to_string()),
        }
    }

    /// Appends EOS unless the tokenizer already ended the sequence with it (as TRL does).
    fn end_with_eos(&self, ids: &mut Vec<u32>) {
        if let Some(eos) = self.tok.eos_token_id()
            && ids.last() != Some(&eos)
        {
            ids.push(eos);
        }
    }

    /// One row as a sequence truncated to `seq_len` (TRL's `max_length`). Under [`LossOn::CompletionOnly`] and
    /// [`LossOn::AssistantOnly`] a prompt/completion row scores only its completion; under
    /// [`LossOn::AssistantOnly`] a `messages` row scores only its assistant turns. `text` rows, and `messages` rows
    /// under the other settings, score every token (TRL's completion-only loss concerns prompt/completion data).
    pub fn row(&self, row: &Row) -> Result<Sequence, String> {
        let mut seq = match row {
            Row::Text { text } => {
                let mut ids = self.encode(text, true)?;
                self.end_with_eos(&mut ids);
                Sequence::scored(ids)
            }
            Row::Messages { messages } => self.conversation(messages, self.loss_on == LossOn::AssistantOnly)?,
            Row::PromptCompletion { prompt, completion } => self.prompt_completion(prompt, completion)?,
            other => return Err(needs_other_trainer(other)),
        };
        seq.truncate(self.seq_len);
        Ok(seq)
    }

    fn prompt_completion(&self, prompt: &Content, completion: &Content) -> Result<Sequence, String> {
        let score_prompt = self.loss_on == LossOn::All;
        let mut seq = Sequence { ids: Vec::new(), labels: Vec::new() };
        match (prompt, completion) {
            (Content::Text(p), Content::Text(c)) => {
                // As TRL's SFTTrainer: prompt and prompt + completion are each tokenized whole, and the
                // completion starts where their ids diverge (tokens can merge across the boundary).
                let prompt_ids = self.encode(p, true)?;
                let mut full = self.encode(&format!("{p}{c}"), true)?;
                self.end_with_eos(&mut full);
                let split = prompt_ids.iter().zip(&full).take_while(|(a, b)| a == b).count();
                seq.push(&full[..split], score_prompt);
                seq.push(&full[split..], true);
            }
            (Content::Chat(p), Content::Chat(c)) => {
                let prompt_text = self.render(p, true)?;
                let whole: Vec<Message> = p.iter().chain(c).cloned().collect();
                let full = self.render(&whole, false)?;
                let completion_text = full.strip_prefix(&prompt_text).ok_or(
                    "field `completion`: the chat template renders the prompt differently once the completion follows, \
                     so the completion cannot be separated",
                )?;
                seq.push(&self.encode(&prompt_text, false)?, score_prompt);
                seq.push(&self.encode(completion_text, false)?, true);
            }
            _ => return Err("fields `prompt` and `completion`: both must be strings or both message lists".into()),
        }
        Ok(seq)
    }

    /// A rendered conversation; with `assistant_only`, only tokens inside assistant turns are scored. A turn's span
    /// runs from where the rendering of the turns before it (with the generation prompt) ends to where the
    /// rendering including it ends; tokens are selected by their character offsets, so a token straddling a span's
    /// edge is not scored.
    fn conversation(&self, messages: &[Message], assistant_only: bool) -> Result<Sequence, String> {
        let full = self.render(messages, false)?;
        let encoding = self.tok.inner.encode(full.as_str(), false).map_err(|e| format!("tokenizer: {e}"))?;
        let ids = encoding.get_ids().to_vec();
        if !assistant_only {
            return Ok(Sequence::scored(ids));
        }
        let mut spans = Vec::new();
        for (i, message) in messages.iter().enumerate().filter(|(_, m)| m.role == "assistant") {
            let before = self.render(&messages[..i], true)?;
            let through = self.render(&messages[..=i], false)?;
            if !full.starts_with(&through) || !through.starts_with(&before) {
                return Err(format!(
                    "field `messages[{i}]`: the chat template does not render the conversation turn by turn, so the \
                     assistant turn starting {:?} cannot be located for assistant-only loss",
                    message.content.chars().take(30).collect::<String>()
                ));
            }
            spans.push(before.len()..through.len());
        }
        // Offsets are byte offsets into `full`, like the spans.
        let labels = ids
            .iter()
            .zip(encoding.get_offsets())
            .map(|(&id, &(start, end))| {
                let inside = end > start && spans.iter().any(|s| start >= s.start && end <= s.end);
                if inside { i64::from(id) } else { IGNORE_INDEX }
            })
            .collect();
        Ok(Sequence { ids, labels })
    }
}

/// The message for rows causal-LM training cannot use.
pub(crate) fn needs_other_trainer(row: &Row) -> String {
    format!(
        "a {} row needs a preference or online trainer (llmtrain's `trl` crate: DPO, KTO, GRPO, ...), not \
         language-model training; use text, messages or prompt/completion rows",
        row.format_name()
    )
}

/// Cuts a plain-text document, read in pieces, into consecutive chunks of `seq_len` tokens (pretraining). The
/// document starts with the tokenizer's special tokens (e.g. BOS) and ends with EOS; chunks run across pieces.
#[derive(Default)]
pub(crate) struct DocumentChunker {
    carry: Vec<u32>,
}

impl DocumentChunker {
    pub fn piece(&mut self, enc: &Encoder, text: &str, first: bool, last: bool) -> Result<Vec<Sequence>, String> {
        if first {
            self.carry.clear();
        }
        let mut ids = enc.encode(text, first)?;
        if last {
            enc.end_with_eos(&mut ids);
        }
        self.carry.extend(ids);
        let seq_len = enc.seq_len;
        let full = if last { self.carry.len() } else { self.carry.len() / seq_len * seq_len };
        let chunks = self.carry.drain(..full).collect::<Vec<u32>>();
        Ok(chunks.chunks(seq_len).map(|c| Sequence::scored(c.to_vec())).collect())
    }
}

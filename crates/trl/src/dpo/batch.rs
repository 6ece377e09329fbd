//! A batch of preference pairs as DPOTrainer feeds the model: one `[2·pairs, len]` token tensor holding every
//! prompt + chosen, then every prompt + rejected, right-padded and cut to `max_length` (TRL's `keep_start`), with
//! a mask of the completion tokens; and the per-sequence sums of completion log-probs a model gives it.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use llmtrain_core::model::LlamaModel;

use super::data::TokenizedPair;

/// Token ids, completion mask and padding mask, row-major `[rows, len]`: rows `0..pairs` chosen,
/// `pairs..2·pairs` rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairBatch {
    pub pairs: usize,
    pub len: usize,
    pub tokens: Vec<u32>,
    pub completion: Vec<bool>,
    /// Whether a position holds a token of the row (not padding): the attention mask.
    pub real: Vec<bool>,
}

impl PairBatch {
    /// Concatenates each pair's prompt with its chosen and its rejected completion, pads with `pad_id` to the
    /// longest row and cuts every row to `max_length` tokens.
    pub fn collate(pairs: &[TokenizedPair], pad_id: u32, max_length: Option<usize>) -> Self {
        let rows: Vec<(&[u32], &[u32])> = pairs
            .iter()
            .map(|p| (p.prompt.as_slice(), p.chosen.as_slice()))
            .chain(pairs.iter().map(|p| (p.prompt.as_slice(), p.rejected.as_slice())))
            .collect();
        Self::from_rows(&rows, pad_id, max_length)
    }

    /// A batch of (prompt, completion) rows, the chosen half then the rejected half, padded with `pad_id` to the
    /// longest row and cut to `max_length` tokens.
    pub fn from_rows(rows: &[(&[u32], &[u32])], pad_id: u32, max_length: Option<usize>) -> Self {
        let longest = rows.iter().map(|(prompt, completion)| prompt.len() + completion.len()).max().unwrap_or(0);
        let len = max_length.map_or(longest, |max| longest.min(max));
        let mut tokens = Vec::with_capacity(rows.len() * len);
        let mut completion = Vec::with_capacity(rows.len() * len);
        let mut real = Vec::with_capacity(rows.len() * len);
        for (prompt, answer) in rows {
            let row = prompt.iter().map(|&t| (t, false, true)).chain(answer.iter().map(|&t| (t, true, true)));
            let padded = row.chain(std::iter::repeat((pad_id, false, false))).take(len);
            for (token, scored, present) in padded {
                tokens.push(token);
                completion.push(scored);
                real.push(present);
            }
        }
        Self { pairs: rows.len() / 2, len, tokens, completion, real }
    }

    /// `[rows, len - 1]`: 1 where the token predicted at a position (the next one) is selected by `select`
    /// (the completion mask, or the padding mask), else 0.
    pub fn target_mask<B: Backend>(&self, select: &[bool], device: &B::Device) -> Tensor<B, 2> {
        let len = self.len;
        let values: Vec<f32> =
            select.chunks(len).flat_map(|row| row[1..].iter().map(|&c| f32::from(u8::from(c)))).collect();
        Tensor::from_data(TensorData::new(values, [2 * self.pairs, len - 1]), device)
    }

    /// Completion tokens of each row (chosen rows, then rejected), as TRL counts them for the length-normalised
    /// losses: the scored positions after the first.
    pub fn completion_lengths(&self) -> Vec<f32> {
        self.completion.chunks(self.len.max(1)).map(|row| row.iter().skip(1).filter(|&&c| c).count() as f32).collect()
    }
}

/// Each row's sum of the log-probs `model` gives its completion tokens (`[2·pairs]`: chosen, then rejected).
pub fn sequence_logps<B: Backend>(model: &LlamaModel<B>, batch: &PairBatch, device: &B::Device) -> Tensor<B, 1> {
    forward_completions(model, batch, device, false).0
}

/// [`sequence_logps`] with TRL's token statistics of the same forward (computed without gradients).
pub fn sequence_logps_with_stats<B: Backend>(
    model: &LlamaModel<B>,
    batch: &PairBatch,
    device: &B::Device,
) -> (Tensor<B, 1>, TokenStats) {
    let (logps, stats) = forward_completions(model, batch, device, true);
    (logps, stats.unwrap_or_default())
}

/// Sums over the completion tokens of a batch's policy forward, from which DPOTrainer logs `entropy` (all
/// completion tokens), `logits/chosen` and `logits/rejected` (the mean over the vocabulary of each token's
/// logits) and `mean_token_accuracy` (the chosen tokens the top logit predicts).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenStats {
    pub entropy: f64,
    pub chosen_logits: f64,
    pub rejected_logits: f64,
    pub chosen_correct: f64,
    pub chosen_tokens: f64,
    pub rejected_tokens: f64,
}

impl TokenStats {
    /// The metrics as (name, numerator, denominator), for the Trainer to reduce over micro-batches and ranks.
    pub fn ratios(&self) -> [(&'static str, f64, f64); 4] {
        [
            ("entropy", self.entropy, self.chosen_tokens + self.rejected_tokens),
            ("logits/chosen", self.chosen_logits, self.chosen_tokens),
            ("logits/rejected", self.rejected_logits, self.rejected_tokens),
            ("mean_token_accuracy", self.chosen_correct, self.chosen_tokens),
        ]
    }
}

/// One forward over a batch: per position, the log-prob of the next token `[rows, len - 1]` (with gradients),
/// and the detached log-softmax and logits `[rows, len - 1, vocab]` with the next tokens, for statistics.
pub struct TokenForward<B: Backend> {
    pub picked: Tensor<B, 2>,
    pub log_probs: Tensor<B, 3>,
    pub logits: Tensor<B, 3>,
    pub next: Tensor<B, 3, Int>,
}

impl<B: Backend> TokenForward<B> {
    pub fn run(model: &LlamaModel<B>, batch: &PairBatch, device: &B::Device) -> Self {
        let (rows, len) = (2 * batch.pairs, batch.len);
        let ids: Vec<i64> = batch.tokens.iter().map(|&t| i64::from(t)).collect();
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, len]), device);
        // Under transformers' attention mask, as TRL runs it: only the padding positions' outputs change.
        let hidden = model.hidden_states_padded(tokens.clone(), &batch.real);
        let logits = model.logits(hidden).slice([0..rows, 0..len - 1]);
        let next = tokens.slice([0..rows, 1..len]).unsqueeze_dim::<3>(2);
        let log_probs = log_softmax(logits.clone(), 2);
        let picked = log_probs.clone().gather(2, next.clone()).reshape([rows, len - 1]);
        Self { picked, log_probs: log_probs.detach(), logits: logits.detach(), next }
    }
}

fn forward_completions<B: Backend>(
    model: &LlamaModel<B>,
    batch: &PairBatch,
    device: &B::Device,
    with_stats: bool,
) -> (Tensor<B, 1>, Option<TokenStats>) {
    let (rows, len) = (2 * batch.pairs, batch.len);
    let TokenForward { picked, log_probs, logits, next } = TokenForward::run(model, batch, device);
    let mask = batch.target_mask::<B>(&batch.completion, device);
    let logps = (picked * mask.clone()).sum_dim(1).reshape([rows]);
    if !with_stats {
        return (logps, None);
    }
    let entropy = (log_probs.clone().exp() * log_probs.clone()).sum_dim(2).reshape([rows, len - 1]).neg();
    let mean_logits = logits.mean_dim(2).reshape([rows, len - 1]);
    let top1 = log_probs.argmax(2).equal(next).float().reshape([rows, len - 1]);
    let n = batch.pairs;
    let half = |t: Tensor<B, 2>, start: usize| (t * mask.clone()).narrow(0, start, n).sum();
    let sums = Tensor::cat(
        vec![
            (entropy * mask.clone()).sum(),
            half(mean_logits.clone(), 0),
            half(mean_logits, n),
            half(top1, 0),
            mask.clone().narrow(0, 0, n).sum(),
            mask.narrow(0, n, n).sum(),
        ],
        0,
    );
    let sums = sums.into_data().convert::<f64>();
    let v = sums.as_slice::<f64>().unwrap_or_default();
    let stats = (v.len() == 6).then(|| TokenStats {
        entropy: v[0],
        chosen_logits: v[1],
        rejected_logits: v[2],
        chosen_correct: v[3],
        chosen_tokens: v[4],
        rejected_tokens: v[5],
    });
    (logps, stats)
}

/// Scores every pair with `reference` once, `batch_size` pairs at a time, and keeps the two log-probs in the
/// pair (`precompute_ref_log_probs`): training then needs no reference network.
pub fn precompute_reference_logps<B: Backend>(
    reference: &LlamaModel<B>,
    pairs: &mut [TokenizedPair],
    batch_size: usize,
    pad_id: u32,
    max_length: Option<usize>,
    device: &B::Device,
) {
    for chunk in pairs.chunks_mut(batch_size.max(1)) {
        let batch = PairBatch::collate(chunk, pad_id, max_length);
        let logps = sequence_logps(reference, &batch, device).into_data().convert::<f32>();
        let logps = logps.as_slice::<f32>().unwrap_or_default();
        let n = chunk.len();
        for (i, pair) in chunk.iter_mut().enumerate() {
            pair.reference_logps = logps.get(i).zip(logps.get(n + i)).map(|(&c, &r)| [c, r]);
        }
    }
}

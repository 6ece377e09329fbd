//! transformers' `*ForSequenceClassification` with one label, as a reward model uses it: the decoder's final
//! hidden states, a bias-free `score` projection to one value per position, read at each row's last token that
//! is not padding (transformers' rule: the rightmost position whose id is not `pad_token_id`).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};

use super::LlamaModel;
use crate::kernels::Kernels;

/// A decoder with a scalar head.
#[derive(Module, Debug)]
pub struct SequenceClassifier<B: Backend> {
    pub model: LlamaModel<B>,
    /// `[1, hidden]` (transformers' `score.weight`).
    pub score: Param<Tensor<B, 2>>,
}

impl<B: Backend> SequenceClassifier<B> {
    /// A new head on `model` (whose language-model head is dropped), drawn from N(0, `std`²) as transformers
    /// initialises it (`initializer_range`, 0.02 by default), from burn's generator (seeded by the caller).
    pub fn new_head(mut model: LlamaModel<B>, std: f64, device: &B::Device) -> Self {
        model.lm_head = None;
        let hidden = model.config.hidden_size;
        let score = Tensor::random([1, hidden], Distribution::Normal(0.0, std), device);
        Self { model, score: Param::from_tensor(score) }
    }
}

impl<B: Kernels> SequenceClassifier<B> {
    /// The score of each of `sequences`, right-padded with `pad_id` into one batch.
    pub fn score_sequences(&self, sequences: &[&[u32]], pad_id: u32, device: &B::Device) -> Tensor<B, 1> {
        let len = sequences.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let ids: Vec<u32> =
            sequences.iter().flat_map(|s| s.iter().copied().chain(std::iter::repeat(pad_id)).take(len)).collect();
        self.scores(&ids, sequences.len(), pad_id, device)
    }

    /// The score of each row of `ids` (`[rows, len]` row-major, right-padded), `[rows]`: the head applied at the
    /// row's last position whose id is not `pad_id`. Padding sits after every real token, so under the causal
    /// mask the scored position sees exactly what transformers' attention mask lets it see.
    pub fn scores(&self, ids: &[u32], rows: usize, pad_id: u32, device: &B::Device) -> Tensor<B, 1> {
        let len = ids.len() / rows.max(1);
        // transformers: argmax over t of t · (id ≠ pad), so an all-padding row reads position 0.
        let last: Vec<i64> =
            ids.chunks(len.max(1)).map(|row| row.iter().rposition(|&t| t != pad_id).unwrap_or(0) as i64).collect();
        let tokens: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [rows, len]), device);
        let hidden = self.model.hidden_states(tokens, None);
        let [_, _, width] = hidden.dims();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(last, [rows]), device)
            .reshape([rows, 1, 1])
            .expand([rows, 1, width]);
        let picked = hidden.gather(1, index).reshape([rows, width]);
        let picked = super::compute::to_dtype(picked, burn::tensor::FloatDType::F32);
        picked.matmul(self.score.val().transpose()).reshape([rows])
    }
}

//! The reference policy of DPO and KTO: a frozen network (a copy of the starting weights, or another
//! checkpoint), the policy itself with its LoRA adapters left out, or log-probs computed once before training.

use burn::tensor::Tensor;
use llmtrain_core::kernels::Kernels;
use llmtrain_core::model::LlamaModel;
use llmtrain_lightning::{LightningError, Result};

use crate::dpo::{PairBatch, sequence_logps};

/// Where the reference log-probs come from.
pub enum Reference<B: Kernels> {
    /// A frozen network: a copy of the starting weights, or another checkpoint (`ref_model`).
    Model(Box<LlamaModel<B>>),
    /// The policy with its LoRA adapters left out (PEFT's `disable_adapter`): the frozen base is the reference,
    /// and no second copy of it is held.
    PolicyWithoutAdapters,
    /// Computed once before training and carried by each item (`precompute_ref_log_probs`).
    Precomputed,
}

impl<B: Kernels> Reference<B> {
    /// The reference's per-sequence completion log-probs of `batch`'s rows. `policy` gives the trained network
    /// without autodiff (for [`Reference::PolicyWithoutAdapters`]); `precomputed` the stored values in row order.
    pub fn logps(
        &self,
        policy: impl FnOnce() -> LlamaModel<B>,
        precomputed: impl FnOnce() -> Option<Vec<f32>>,
        batch: &PairBatch,
        device: &B::Device,
    ) -> Result<Tensor<B, 1>> {
        Ok(match self {
            Reference::Model(reference) => sequence_logps(reference, batch, device),
            Reference::PolicyWithoutAdapters => sequence_logps(&without_adapters(policy()), batch, device),
            Reference::Precomputed => {
                let column = precomputed()
                    .ok_or_else(|| LightningError::Invalid("an item has no precomputed reference log-probs".into()))?;
                Tensor::from_data(column.as_slice(), device)
            }
        })
    }
}

/// The stored log-probs of a batch's items in row order (every item's first, then every item's second), if every
/// item has them.
pub fn stored(logps: impl Iterator<Item = Option<[f32; 2]>>) -> Option<Vec<f32>> {
    let logps = logps.collect::<Option<Vec<[f32; 2]>>>()?;
    Some(logps.iter().map(|l| l[0]).chain(logps.iter().map(|l| l[1])).collect())
}

/// `model` with every LoRA adapter removed: its frozen base.
pub fn without_adapters<B: Kernels>(mut model: LlamaModel<B>) -> LlamaModel<B> {
    for (_, linear) in model.decoder_linears_mut() {
        linear.adapter = None;
    }
    model
}

/// Scores `items` with `network` once, `batch_size` at a time: `collate` makes a batch of two rows per item
/// (first halves, then second halves) and `store` keeps an item's two log-probs in it.
pub fn precompute<B: Kernels, T>(
    network: &LlamaModel<B>,
    items: &mut [T],
    batch_size: usize,
    collate: impl Fn(&[T]) -> PairBatch,
    store: impl Fn(&mut T, [f32; 2]),
    device: &B::Device,
) {
    for chunk in items.chunks_mut(batch_size.max(1)) {
        let logps = sequence_logps(network, &collate(chunk), device).into_data().convert::<f32>();
        let logps = logps.as_slice::<f32>().unwrap_or_default();
        let n = chunk.len();
        for (i, item) in chunk.iter_mut().enumerate() {
            if let (Some(&first), Some(&second)) = (logps.get(i), logps.get(n + i)) {
                store(item, [first, second]);
            }
        }
    }
}

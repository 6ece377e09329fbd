//! ZeRO stage 3's side of the decoder: a model whose layers' parameters are released between uses gets each
//! layer whole from a [`LayerSource`] just before the layer runs (forward, and its recompute in backward), and
//! hands that layer's gradients back to it as soon as the layer's backward has made them. The source is the
//! distributed strategy (an all-gather and a reduce-scatter per layer); the model knows nothing of ranks.

use std::collections::BTreeMap;

use burn::tensor::backend::{AutodiffBackend, Backend};

use super::DecoderLayer;
use crate::error::CoreError;
use crate::hf::HostTensor;
use crate::train::param_paths::{fill_params, visit_floats, visit_gradients};

/// Where a model with released layer parameters gets each layer whole, and where its gradients go. Both are
/// collectives: every rank calls them for the same layers in the same order.
pub trait LayerSource: Send + Sync {
    /// Layer `layer`'s released parameters, whole, by path within the layer (`self_attn.q_proj.weight.Dense`).
    fn gather(&self, layer: usize) -> Result<BTreeMap<String, HostTensor>, CoreError>;

    /// The gradients of layer `layer`'s parameters from one backward, by path within the layer.
    fn reduce(&self, layer: usize, grads: BTreeMap<String, Vec<f32>>) -> Result<(), CoreError>;
}

/// Layer `index` of a model, whole: `layer` itself, or with its released parameters filled from `source`.
pub(crate) fn whole_layer<B: Backend>(
    layer: &DecoderLayer<B>,
    index: usize,
    source: Option<&dyn LayerSource>,
) -> Result<DecoderLayer<B>, CoreError> {
    let Some(source) = source else { return Ok(layer.clone()) };
    let mut values = source.gather(index)?;
    let whole = fill_params(layer.clone(), &mut values);
    // Every gathered tensor has its parameter, and no parameter of the layer is left released.
    if let Some(stray) = values.keys().next() {
        return Err(CoreError::Invalid(format!("decoder layer {index}: gathered `{stray}`, which it does not have")));
    }
    let mut empty = 0;
    visit_floats(&whole, |value| empty += usize::from(value.shape().num_elements() == 0));
    if empty > 0 {
        return Err(CoreError::Invalid(format!("decoder layer {index}: {empty} parameter(s) not gathered")));
    }
    Ok(whole)
}

/// Hands the gradients `grads` holds for `layer`'s parameters to `source`.
pub(crate) fn reduce_layer<A: AutodiffBackend>(
    layer: &DecoderLayer<A>,
    index: usize,
    grads: &A::Gradients,
    source: &dyn LayerSource,
) -> Result<(), CoreError> {
    let mut host = BTreeMap::new();
    let mut failed = None;
    visit_gradients::<A, _>(layer, grads, |path, grad| match grad.into_data().convert::<f32>().into_vec() {
        Ok(values) => {
            host.insert(path.to_string(), values);
        }
        Err(e) => failed = Some(CoreError::Invalid(format!("gradient of layer {index}'s {path}: {e:?}"))),
    });
    match failed {
        Some(err) => Err(err),
        None => source.reduce(index, host),
    }
}

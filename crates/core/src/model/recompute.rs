//! Gradient checkpointing as a property of the forward pass: [`LlamaModel::hidden_states_recomputed`] runs the
//! decoder layers without an autodiff graph, keeping only each layer's input, and returns the final hidden
//! states as the start of a fresh graph together with a [`DeferredBackward`] that, after the objective's loss
//! has been backpropagated to those hidden states, walks the layers from the last to the first, recomputing
//! one layer at a time with its graph. Any objective built on the decoder's hidden states (a language-model
//! head, a reward or value head, a preference loss) gets it by calling this forward instead of
//! [`LlamaModel::hidden_states`].
//!
//! Peak activation memory falls from all layers' to one layer's plus the saved inputs, for one more forward
//! pass of compute. Gradients equal plain backpropagation's up to float rounding (each layer's vector-Jacobian
//! product is the same computation). With `offload` the saved inputs live in host memory until their layer's
//! turn, as PyTorch's CPU-offloaded checkpointing does.
//!
//! [`LlamaModel::hidden_states_sharded`] is the same walk for a model whose layer parameters are released
//! (ZeRO stage 3): each layer is gathered whole from a [`LayerSource`] for its forward and again for its
//! recompute, and its gradients go back to the source as soon as its backward has made them, so no more than
//! one layer is ever whole.

use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};

use super::sharded::{LayerSource, reduce_layer, whole_layer};
use super::{LlamaModel, PositionIds};
use crate::error::CoreError;
use crate::kernels::AutodiffKernels;

/// The part of a backward pass a checkpointed forward deferred.
pub trait DeferredBackward<A: AutodiffBackend> {
    /// Continues the backward pass whose gradients are `grads` (of a loss computed from the checkpointed
    /// forward's output) through the recomputed part, handing each new piece of gradients to `accumulate`. Fails
    /// only when a collective does (ZeRO stage 3's layer source).
    fn backward(
        self: Box<Self>,
        grads: &A::Gradients,
        accumulate: &mut dyn FnMut(&A::Gradients),
    ) -> Result<(), CoreError>;
}

/// The decoder layers of one checkpointed forward, waiting for their backward.
pub struct LayerRecompute<'a, A: AutodiffBackend> {
    model: &'a LlamaModel<A>,
    /// The last layer's output, the leaf the loss's graph starts from.
    top: Tensor<A, 3>,
    inputs: Vec<Saved<A::InnerBackend>>,
    tokens: Tensor<A, 2, Int>,
    positions: Option<PositionIds>,
    /// Where released layers are gathered from and their gradients go (ZeRO stage 3).
    source: Option<Arc<dyn LayerSource>>,
}

impl<A: AutodiffKernels> LlamaModel<A> {
    /// [`hidden_states`](Self::hidden_states) with gradient checkpointing per decoder layer: the returned hidden
    /// states carry a graph only from the last layer's output; the returned [`LayerRecompute`] does the layers'
    /// backward once the loss's backward has reached them. `offload` keeps the layer inputs in host memory.
    pub fn hidden_states_recomputed(
        &self,
        tokens: Tensor<A, 2, Int>,
        positions: Option<&PositionIds>,
        offload: bool,
    ) -> (Tensor<A, 3>, LayerRecompute<'_, A>) {
        match self.recomputed_forward(tokens, positions, offload, None) {
            Ok(out) => out,
            Err(_) => unreachable!("without a layer source the forward runs no collective"),
        }
    }

    /// [`hidden_states_recomputed`](Self::hidden_states_recomputed) for a model whose decoder layers' parameters
    /// are released (ZeRO stage 3): each layer is gathered from `source` for its forward and its recompute, and
    /// its gradients are handed to `source` instead of the returned recompute's `accumulate`.
    pub fn hidden_states_sharded(
        &self,
        tokens: Tensor<A, 2, Int>,
        positions: Option<&PositionIds>,
        offload: bool,
        source: Arc<dyn LayerSource>,
    ) -> Result<(Tensor<A, 3>, LayerRecompute<'_, A>), CoreError> {
        self.recomputed_forward(tokens, positions, offload, Some(source))
    }

    fn recomputed_forward(
        &self,
        tokens: Tensor<A, 2, Int>,
        positions: Option<&PositionIds>,
        offload: bool,
        source: Option<Arc<dyn LayerSource>>,
    ) -> Result<(Tensor<A, 3>, LayerRecompute<'_, A>), CoreError> {
        let [rows, seq] = tokens.dims();
        let device = tokens.device();
        // Forward without a graph, keeping each layer's input.
        let inner = self.valid();
        let inner_inputs = inner.layer_inputs(rows, seq, positions, &device);
        let inner_ctx = inner_inputs.context();
        let mut inputs = Vec::with_capacity(inner.layers.len());
        let mut x = inner.embed(tokens.clone().inner());
        for (index, layer) in inner.layers.iter().enumerate() {
            inputs.push(Saved::keep(x.clone(), offload));
            x = match source.as_deref() {
                None => layer.forward(x, &inner_ctx, None).0,
                // Whole for its forward only: dropped before the next layer is gathered.
                Some(source) => whole_layer(layer, index, Some(source))?.forward(x, &inner_ctx, None).0,
            };
        }
        let top = Tensor::<A, 3>::from_inner(x).require_grad();
        let hidden = self.norm.forward_fused(top.clone(), self.compute.fused_kernels);
        let recompute = LayerRecompute { model: self, top, inputs, tokens, positions: positions.cloned(), source };
        Ok((hidden, recompute))
    }
}

impl<A: AutodiffKernels> DeferredBackward<A> for LayerRecompute<'_, A> {
    fn backward(
        self: Box<Self>,
        grads: &A::Gradients,
        accumulate: &mut dyn FnMut(&A::Gradients),
    ) -> Result<(), CoreError> {
        let model = self.model;
        let source = self.source.as_deref();
        let [rows, seq] = self.tokens.dims();
        let device = self.tokens.device();
        let mut upstream = self.top.grad(grads);
        // The layers from the last to the first, one graph at a time.
        let layer_inputs = model.layer_inputs(rows, seq, self.positions.as_ref(), &device);
        let ctx = layer_inputs.context();
        for (index, (layer, input)) in model.layers.iter().zip(self.inputs).enumerate().rev() {
            let input = input.restore(&device);
            let grad_out = match (upstream, source) {
                (Some(grad_out), _) => grad_out,
                // Every rank runs every layer's collectives, even one whose loss did not reach the layers.
                (None, Some(_)) => input.zeros_like(),
                (None, None) => return Ok(()),
            };
            let x = Tensor::<A, 3>::from_inner(input).require_grad();
            let whole = match source {
                Some(source) => Some(whole_layer(layer, index, Some(source))?),
                None => None,
            };
            let out = whole.as_ref().unwrap_or(layer).forward(x.clone(), &ctx, None).0;
            let step = (out * Tensor::from_inner(grad_out)).sum().backward();
            match (source, &whole) {
                (Some(source), Some(whole)) => reduce_layer(whole, index, &step, source)?,
                _ => accumulate(&step),
            }
            upstream = x.grad(&step);
        }
        // The embedding.
        if let Some(grad_out) = upstream {
            let step = (model.embed(self.tokens) * Tensor::from_inner(grad_out)).sum().backward();
            accumulate(&step);
        }
        Ok(())
    }
}

/// A layer input kept for backward: on the device, or copied to host memory.
enum Saved<B: Backend> {
    Device(Tensor<B, 3>),
    Host(TensorData),
}

impl<B: Backend> Saved<B> {
    fn keep(x: Tensor<B, 3>, offload: bool) -> Self {
        if offload { Saved::Host(x.into_data()) } else { Saved::Device(x) }
    }

    fn restore(self, device: &B::Device) -> Tensor<B, 3> {
        match self {
            Saved::Device(x) => x,
            // Created in the data's own dtype (bf16 stays bf16, not the default f32), so the round trip is exact.
            Saved::Host(data) => {
                let dtype = data.dtype;
                Tensor::from_data(data, (device, dtype))
            }
        }
    }
}

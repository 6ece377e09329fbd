//! Gradient checkpointing per decoder layer: the forward pass keeps only each layer's input (no autodiff graph);
//! the backward pass walks the layers from the last to the first, recomputing one layer at a time with its graph
//! and passing the input's gradient down. Peak activation memory falls from all layers' to one layer's plus the
//! saved inputs, for one more forward pass of compute. Gradients equal plain backpropagation's up to float
//! rounding (each layer's vector-Jacobian product is the same computation).
//!
//! With `offload` the saved inputs live in host memory (as `TensorData`) until their layer's turn in backward,
//! as PyTorch's CPU-offloaded checkpointing does: on a GPU the device then holds one layer's activations at a
//! time; on the CPU it only adds copies.

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use llmtrain_core::data::Batch;
use llmtrain_core::model::LlamaModel;
use llmtrain_core::model::fused_loss::fused_causal_lm_loss;
use llmtrain_core::train::{GradientBuffer, batch_tensors, causal_lm_loss_parts};

/// Adds to `grads` the gradients of `scale` × the batch's summed loss, recomputing each decoder layer in backward,
/// and returns the summed loss (unscaled). `offload` keeps the layer inputs in host memory.
pub fn backward_by_layers<A: AutodiffBackend>(
    model: &LlamaModel<A>,
    batch: &Batch,
    scale: f64,
    offload: bool,
    grads: &mut GradientBuffer<A::InnerBackend>,
    device: &A::Device,
) -> f64 {
    // Forward without a graph, keeping each layer's input.
    let inner = model.valid();
    let (tokens, _, positions) = batch_tensors::<A::InnerBackend>(batch, device);
    let inner_inputs = inner.layer_inputs(batch.rows, batch.seq, positions.as_ref(), device);
    let inner_ctx = inner_inputs.context();
    let mut layer_inputs = Vec::with_capacity(inner.layers.len());
    let mut x = inner.embed(tokens);
    for layer in &inner.layers {
        layer_inputs.push(Saved::keep(x.clone(), offload));
        x = layer.forward(x, &inner_ctx, None).0;
    }

    // The head and the loss, with a graph from the last layer's output.
    let (tokens, labels, positions) = batch_tensors::<A>(batch, device);
    let top = Tensor::<A, 3>::from_inner(x).require_grad();
    let hidden = model.norm.forward_fused(top.clone(), model.compute.fused_kernels);
    let loss_sum = match model.compute.loss_chunk {
        Some(chunk) => fused_causal_lm_loss(model, hidden, &batch.labels, chunk).0,
        None => causal_lm_loss_parts(model.logits(hidden), labels).0,
    };
    let loss_value = loss_sum.clone().into_scalar().elem::<f64>();
    let step = loss_sum.mul_scalar(scale).backward();
    grads.accumulate(model, &step);
    let mut upstream = top.grad(&step);

    // The layers from the last to the first, one graph at a time.
    let inputs = model.layer_inputs(batch.rows, batch.seq, positions.as_ref(), device);
    let ctx = inputs.context();
    for (layer, input) in model.layers.iter().zip(layer_inputs).rev() {
        let Some(grad_out) = upstream else { break };
        let x = Tensor::<A, 3>::from_inner(input.restore(device)).require_grad();
        let out = layer.forward(x.clone(), &ctx, None).0;
        let step = (out * Tensor::from_inner(grad_out)).sum().backward();
        grads.accumulate(model, &step);
        upstream = x.grad(&step);
    }

    // The embedding.
    if let Some(grad_out) = upstream {
        let step = (model.embed(tokens) * Tensor::from_inner(grad_out)).sum().backward();
        grads.accumulate(model, &step);
    }
    loss_value
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

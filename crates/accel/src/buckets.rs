//! Gradient all-reduce in flat buckets: many small tensors cost one collective per bucket instead of one each.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use llmtrain_core::dist::Communicator;
use llmtrain_core::train::GradientBuffer;

use crate::error::{AccelError, Result};

/// Replaces every gradient in `grads` by its mean over ranks. Gradients are taken in name order (the same on
/// every rank) and packed into buckets of about `bucket_elems` values; a tensor larger than that is a bucket
/// of its own.
pub fn all_reduce_mean<B: Backend>(
    grads: &mut GradientBuffer<B>,
    comm: &dyn Communicator,
    bucket_elems: usize,
) -> Result<()> {
    let world = comm.world_size() as f32;
    for bucket in plan_buckets(grads, bucket_elems) {
        let Some(device) = bucket.first().map(|(_, g)| g.device()) else { continue };
        let lengths: Vec<(String, usize)> =
            bucket.iter().map(|(name, g)| (name.clone(), g.shape().num_elements())).collect();
        let flat = Tensor::cat(bucket.into_iter().map(|(_, g)| g).collect(), 0);
        let mut host: Vec<f32> = flat.into_data().convert::<f32>().into_vec().map_err(AccelError::tensor)?;
        comm.all_reduce_sum(&mut host)?;
        for v in &mut host {
            *v /= world;
        }
        let total = host.len();
        let reduced = Tensor::<B, 1>::from_data(TensorData::new(host, [total]), &device);
        let mut offset = 0;
        for (name, len) in lengths {
            grads.replace(&name, reduced.clone().slice(offset..offset + len));
            offset += len;
        }
    }
    Ok(())
}

/// The gradients (name, tensor handle), in name order, grouped into consecutive buckets of about
/// `bucket_elems` values.
fn plan_buckets<B: Backend>(grads: &GradientBuffer<B>, bucket_elems: usize) -> Vec<Vec<(String, Tensor<B, 1>)>> {
    let mut buckets: Vec<Vec<(String, Tensor<B, 1>)>> = Vec::new();
    let mut filled = 0;
    for (name, grad) in grads.iter() {
        let len = grad.shape().num_elements();
        if buckets.is_empty() || (filled > 0 && filled + len > bucket_elems) {
            buckets.push(Vec::new());
            filled = 0;
        }
        if let Some(last) = buckets.last_mut() {
            last.push((name.to_string(), grad.clone()));
        }
        filled += len;
    }
    buckets
}

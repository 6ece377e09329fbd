//! Shared plumbing of the autodiff nodes: moving between float tensors and their backend primitives.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

/// A float tensor from a backend primitive.
pub(crate) fn float<B: Backend, const D: usize>(primitive: B::FloatTensorPrimitive) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// The backend primitive of a float tensor.
pub(crate) fn primitive<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> B::FloatTensorPrimitive {
    tensor.into_primitive().tensor()
}

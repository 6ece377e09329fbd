//! Shared plumbing of the custom-backward ops ([`super::flash_attention`], [`super::fused_loss`],
//! [`super::fused_ops`]): they are written for `Autodiff<I>` concretely, while the model is generic over any
//! backend, so each op checks the backend's type at run time and moves tensors between the two type names.

use std::any::Any;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

/// Moves a value between two type names that `TypeId` has shown to be the same type.
pub(crate) fn same_type<X: 'static, Y: 'static>(x: X) -> Y {
    let boxed: Box<dyn Any> = Box::new(x);
    *boxed.downcast::<Y>().expect("backend type was just checked")
}

/// A float tensor from a backend primitive.
pub(crate) fn float<B: Backend, const D: usize>(primitive: B::FloatTensorPrimitive) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// The backend primitive of a float tensor.
pub(crate) fn primitive<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> B::FloatTensorPrimitive {
    tensor.into_primitive().tensor()
}

/// `$op::<B, I, ..>(args)` for each autodiff backend `I` this crate trains on (the CPU's, and CUDA's and wgpu's
/// under their features), the first `Some`: each op's `$op` returns `None` unless `B` is `Autodiff<I>`. Written
/// `known_autodiff!(op::<B, extra generics..>(args))`; `I` goes in second place.
macro_rules! known_autodiff {
    ($op:ident::<$b:ty $(, $g:tt)*>($($arg:expr),* $(,)?)) => {{
        let out = $op::<$b, $crate::device::CpuBackend $(, $g)*>($($arg),*);
        #[cfg(feature = "cuda")]
        let out = out.or_else(|| $op::<$b, $crate::device::CudaBackend $(, $g)*>($($arg),*));
        #[cfg(feature = "wgpu")]
        let out = out.or_else(|| $op::<$b, $crate::device::WgpuBackend $(, $g)*>($($arg),*));
        out
    }};
}
pub(crate) use known_autodiff;

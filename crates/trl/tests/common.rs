//! What the test modules share: JSON columns of the fixtures as tensors.

use burn::tensor::{Tensor, TensorData};
use llmtrain_core::device::CpuBackend as B;
use serde_json::Value;

/// A JSON array of numbers as an f32 tensor.
pub fn column(values: &Value) -> Tensor<B, 1> {
    let values: Vec<f32> = values.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), &Default::default())
}

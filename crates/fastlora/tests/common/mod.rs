//! What the fixture tests share: the fixture directory, the reference token ids, and logits of a model on them.

use std::path::{Path, PathBuf};

use burn::tensor::{Int, Tensor, TensorData};
use llmtrain_core::device::CpuBackend as B;
use llmtrain_core::model::LlamaModel;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The i64 `tokens` tensor of a fixture file.
pub fn fixture_tokens(file: &Path) -> Vec<i64> {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor("tokens").unwrap().data().chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Logits `[T, V]` of `model` on one row of `tokens`, flattened.
pub fn logits_of(model: &LlamaModel<B>, tokens: Vec<i64>) -> Vec<f32> {
    let n = tokens.len();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [1, n]), &Default::default());
    model.forward(tokens, None).into_data().convert::<f32>().into_vec().unwrap()
}

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

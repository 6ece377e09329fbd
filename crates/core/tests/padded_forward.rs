//! The forward of right-padded rows under transformers' attention mask: real tokens get exactly what the plain
//! causal forward gives them, and only the padding positions change (they no longer see padding). Its agreement
//! with transformers at the padding positions is checked against TRL through ORPO's `logits/*` metrics
//! (llmtrain-cli's `trl::orpo_...` test).

use burn::tensor::{Int, Tensor, TensorData};
use llmtrain_core::device::CpuBackend as B;
use llmtrain_core::model::{LlamaModel, ModelConfig};

#[test]
fn padding_changes_only_the_padding_positions_outputs() {
    let device = Default::default();
    let model = LlamaModel::<B>::init(&ModelConfig::tiny_llama(64, 32, 2, 4, 2), &device, 5);
    let ids: Vec<i64> = vec![5, 9, 11, 3, 7, 8, 0, 0];
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [2, 4]), &device);
    let real = [true, true, true, true, true, true, false, false];
    let plain = model.hidden_states(tokens.clone(), None).into_data().to_vec::<f32>().unwrap();
    let padded = model.hidden_states_padded(tokens, &real).into_data().to_vec::<f32>().unwrap();
    let hidden = 32;
    for (position, present) in real.iter().enumerate() {
        let span = position * hidden..(position + 1) * hidden;
        let diff = plain[span.clone()].iter().zip(&padded[span]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        if *present {
            assert!(diff < 1e-6, "position {position} is a token: {diff}");
        } else if position == 7 {
            assert!(diff > 1e-4, "the second padding position no longer attends to the first: {diff}");
        }
    }
}

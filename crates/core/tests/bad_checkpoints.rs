//! A wrong checkpoint is a one-line error naming the tensor (and both shapes), never a panic.

use std::path::Path;

use llmtrain_core::device::CpuBackend as B;
use llmtrain_core::hf::{self, HostTensor};

fn copy_fixture(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2_bias");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

/// Rewrites the fixture's weights through `edit` (as f32).
fn rewrite(dir: &Path, edit: impl FnOnce(&mut Vec<(String, HostTensor)>)) {
    let (model, _) = hf::load_model::<B>(dir, &Default::default()).unwrap();
    let mut tensors = hf::model_tensors(&model);
    edit(&mut tensors);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    hf::write_tensors(dir, &tensors, hf::StorageDtype::F32, u64::MAX).unwrap();
}

fn load_error(dir: &Path) -> String {
    let err = hf::load_model::<B>(dir, &Default::default()).expect_err("load should fail").to_string();
    assert!(!err.contains('\n'), "one line: {err}");
    err
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path());
    rewrite(dir.path(), |t| t.retain(|(n, _)| n != "model.layers.1.mlp.up_proj.weight"));
    let err = load_error(dir.path());
    assert!(err.contains("tensor `model.layers.1.mlp.up_proj.weight` is missing (expected shape [128, 64])"), "{err}");
}

#[test]
fn wrong_shape_names_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path());
    rewrite(dir.path(), |t| {
        let (_, tensor) = t.iter_mut().find(|(n, _)| n == "model.layers.0.self_attn.k_proj.bias").unwrap();
        *tensor = HostTensor { shape: vec![16], values: vec![0.0; 16] };
    });
    let err = load_error(dir.path());
    assert!(err.ends_with("tensor `model.layers.0.self_attn.k_proj.bias` has shape [16], expected [32]"), "{err}");
}

#[test]
fn extra_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path());
    rewrite(dir.path(), |t| {
        t.push(("model.layers.0.mlp.extra.weight".into(), HostTensor { shape: vec![2], values: vec![0.0; 2] }))
    });
    let err = load_error(dir.path());
    assert!(err.contains("unexpected tensor `model.layers.0.mlp.extra.weight` with shape [2]"), "{err}");
}

#[test]
fn unsupported_architecture_names_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path());
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(dir.path().join("config.json"), config.replace("\"qwen2\"", "\"gemma\"")).unwrap();
    let err = load_error(dir.path());
    assert!(err.ends_with("unsupported model_type `gemma`; supported: llama, mistral, qwen2"), "{err}");
}

#[test]
fn truncated_safetensors_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path());
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("model.safetensors: not a valid safetensors file"), "{err}");
}

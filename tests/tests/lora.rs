//! LoRA from the command line: `llmtrain logits --adapter` on adapters PEFT wrote, and `llmtrain merge`, both
//! against PEFT's own logits (crates/fastlora/tests/fixtures, made by scripts/make_peft_fixture.py).

use std::path::{Path, PathBuf};

use llmtrain_e2e::{assert_one_line_error, llmtrain, root};

fn peft_fixture(name: &str) -> PathBuf {
    root().join("crates/fastlora/tests/fixtures").join(name)
}

fn tensor(path: &Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(name).unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

const TOKENS: &str = "3,17,42,99,5,120,64,7,88,31,2,11";

fn logits(model: &Path, adapter: Option<&Path>, out: &Path) -> Vec<f32> {
    let mut args = vec!["logits", "--model", model.to_str().unwrap(), "--tokens", TOKENS];
    args.extend(["--out", out.to_str().unwrap()]);
    if let Some(adapter) = adapter {
        args.extend(["--adapter", adapter.to_str().unwrap()]);
    }
    let run = llmtrain(&args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    tensor(out, "logits")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn logits_with_a_peft_adapter_and_the_merged_checkpoint_match_peft() {
    let tmp = tempfile::tempdir().unwrap();
    for adapter in ["lora", "dora_rslora", "regex_pattern"] {
        let expected = peft_fixture(adapter).join("expected.safetensors");
        let with_adapter =
            logits(&peft_fixture("base"), Some(&peft_fixture(adapter)), &tmp.path().join(format!("{adapter}.st")));
        let diff = max_diff(&with_adapter, &tensor(&expected, "logits"));
        let merged_dir = tmp.path().join(format!("{adapter}-merged"));
        let out = llmtrain(&[
            "merge",
            "--base",
            peft_fixture("base").to_str().unwrap(),
            "--adapter",
            peft_fixture(adapter).to_str().unwrap(),
            "--out",
            merged_dir.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let merged = logits(&merged_dir, None, &tmp.path().join(format!("{adapter}-merged.st")));
        let merged_diff = max_diff(&merged, &tensor(&expected, "merged_logits"));
        println!("{adapter}: logits --adapter vs PEFT {diff:.2e}; merged checkpoint vs PEFT merged {merged_diff:.2e}");
        assert!(diff <= 1e-4 && merged_diff <= 1e-4, "{adapter}: {diff} / {merged_diff}");
        assert!(!merged_dir.join("adapter_config.json").exists(), "a merged checkpoint is a plain HF directory");
    }
}

#[test]
fn a_missing_adapter_is_one_line_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = llmtrain(&[
        "logits",
        "--model",
        peft_fixture("base").to_str().unwrap(),
        "--adapter",
        tmp.path().to_str().unwrap(),
        "--tokens",
        "1,2",
    ]);
    assert_one_line_error(&out, "adapter_config.json");
}

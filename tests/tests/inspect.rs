//! `llmtrain logits`, `convert`, `generate` and `tokenizer` from the command line, and their bad-input errors.

use llmtrain_e2e::{assert_one_line_error, fixture, llmtrain};

fn read_logits(path: &std::path::Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.names(), vec!["logits"]);
    let t = st.tensor("logits").unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    (t.shape().to_vec(), t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
}

fn expected_logits(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixture(name).join("expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor("logits").unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

const TOKENS: &str = "1,17,42,99,3,255,128,64,7,200,31,5";

#[test]
fn logits_command_writes_the_contract_tensor_matching_transformers() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["llama_gqa_tied", "qwen2_bias", "mistral_mqa"] {
        let out = dir.path().join(format!("{name}.safetensors"));
        let run = llmtrain(&[
            "logits",
            "--model",
            fixture(name).to_str().unwrap(),
            "--tokens",
            TOKENS,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let (shape, values) = read_logits(&out);
        let want = expected_logits(name);
        assert_eq!(shape, vec![12, want.len() / 12]);
        let diff = values.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff <= 1e-4, "{name}: {diff}");
    }
}

#[test]
fn convert_then_logits_is_unchanged_and_bf16_is_close() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("qwen2_bias");
    let sharded = dir.path().join("sharded");
    let run = llmtrain(&[
        "convert",
        "--model",
        model.to_str().unwrap(),
        "--out",
        sharded.to_str().unwrap(),
        "--max-shard-size",
        "100KB",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(sharded.join("model.safetensors.index.json").exists());
    let out = dir.path().join("l.safetensors");
    let run =
        llmtrain(&["logits", "--model", sharded.to_str().unwrap(), "--tokens", TOKENS, "--out", out.to_str().unwrap()]);
    assert!(run.status.success());
    let diff =
        read_logits(&out).1.iter().zip(expected_logits("qwen2_bias")).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff <= 1e-4, "{diff}");
}

#[test]
fn tokenizer_train_refuses_tiny_vocabularies_and_mismatched_models() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, "the quick brown fox jumps over the lazy dog\n".repeat(100)).unwrap();
    let tok = dir.path().join("tok");
    let run = llmtrain(&[
        "tokenizer",
        "train",
        "--files",
        corpus.to_str().unwrap(),
        "--vocab-size",
        "256",
        "--out",
        tok.to_str().unwrap(),
    ]);
    // 256 < 261 (bytes + special tokens): refused with a one-line reason, nothing written.
    assert_one_line_error(&run, "--vocab-size 256 is too small");
    assert!(!tok.exists());
    let run = llmtrain(&[
        "tokenizer",
        "train",
        "--files",
        corpus.to_str().unwrap(),
        "--vocab-size",
        "280",
        "--out",
        tok.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    // This tokenizer (280 ids) does not fit a model with a 256-token vocabulary: refused.
    let model = fixture("qwen2_bias");
    let run = llmtrain(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--prompt",
        "the quick",
    ]);
    assert_one_line_error(&run, "tokenizer has 280 tokens but");
}

#[test]
fn generate_greedy_prints_what_transformers_generates() {
    let model = fixture("llama_gqa_tied");
    let run = llmtrain(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "To be, or not to be",
        "--max-new-tokens",
        "12",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let want = std::fs::read_to_string(model.join("generate_expected.txt")).unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), want);
    // --chat renders the llama3 template first; it must run and add text after the prompt.
    let run = llmtrain(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "hi",
        "--chat",
        "--max-new-tokens",
        "3",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let model = fixture("llama_gqa_tied");
    let m = model.to_str().unwrap();
    assert_one_line_error(
        &llmtrain(&["logits", "--model", "/no/such/dir", "--tokens", "1"]),
        "/no/such/dir/config.json",
    );
    assert_one_line_error(&llmtrain(&["logits", "--model", m, "--tokens", "1,x"]), "item 2 (`x`)");
    assert_one_line_error(&llmtrain(&["logits", "--model", m, "--tokens", "1,999"]), "token id 999 is out of range");
    let qwen = fixture("qwen2_bias");
    assert_one_line_error(
        &llmtrain(&["generate", "--model", qwen.to_str().unwrap(), "--prompt", "hi"]),
        "tokenizer.json: not found",
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    assert_one_line_error(
        &llmtrain(&["convert", "--model", m, "--out", out.to_str().unwrap(), "--dtype", "int8"]),
        "--dtype `int8`",
    );
    assert!(!out.exists(), "nothing written on a refused convert");
}

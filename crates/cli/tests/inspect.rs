//! `llmtrain logits`, `convert`, `generate` and `tokenizer` from the command line, and their bad-input errors.

use crate::common;

use common::{assert_one_line_error, fixture, llmtrain};

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
        "model directory /no/such/dir does not exist",
    );
    assert_one_line_error(&llmtrain(&["logits", "--model", m, "--tokens", "1,x"]), "item 2 (`x`)");
    assert_one_line_error(&llmtrain(&["logits", "--model", m, "--tokens", "1,999"]), "token id 999 is out of range");
    let qwen = fixture("qwen2_bias");
    assert_one_line_error(
        &llmtrain(&["generate", "--model", qwen.to_str().unwrap(), "--prompt", "hi"]),
        "tokenizer.json: not found",
    );
    // generate --model names a wrong model directory as such, not as a missing tokenizer.
    let finl = tempfile::tempdir().unwrap();
    std::fs::create_dir(finl.path().join("final")).unwrap();
    let typo = finl.path().join("finl");
    let err = assert_one_line_error(
        &llmtrain(&["generate", "--model", typo.to_str().unwrap(), "--prompt", "hi"]),
        "model directory",
    );
    let want = format!("does not exist; did you mean {}?", finl.path().join("final").display());
    assert!(err.ends_with(&want), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    assert_one_line_error(
        &llmtrain(&["convert", "--model", m, "--out", out.to_str().unwrap(), "--dtype", "int8"]),
        "--dtype `int8`",
    );
    assert!(!out.exists(), "nothing written on a refused convert");
}

/// The names in `dir`, sorted.
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    names.sort();
    names
}

#[test]
fn convert_refuses_a_directory_holding_other_files_and_the_current_directory() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("llama_gqa_tied");
    let m = model.to_str().unwrap();
    let out = dir.path().join("mine");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let err = assert_one_line_error(&llmtrain(&["convert", "--model", m, "--out", out.to_str().unwrap()]), "notes.txt");
    assert!(err.contains("--overwrite"), "{err}");
    assert_eq!(names(&out), ["notes.txt"], "a refused convert touched the directory");
    assert_eq!(names(dir.path()), ["mine"], "a refused convert left files beside it");
    // A checkpoint directory is replaced without asking; --overwrite replaces anything.
    let ckpt = dir.path().join("ckpt");
    for _ in 0..2 {
        let run = llmtrain(&["convert", "--model", m, "--out", ckpt.to_str().unwrap(), "--dtype", "bfloat16"]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    }
    let run = llmtrain(&["convert", "--model", m, "--out", out.to_str().unwrap(), "--overwrite"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(out.join("config.json").exists() && !out.join("notes.txt").exists());

    // `--out .` (and any parent of the current directory): one line, nothing left behind.
    for target in [".", ".."] {
        let run = std::process::Command::new(common::llmtrain_bin())
            .current_dir(&ckpt)
            .args(["convert", "--model", m, "--out", target, "--overwrite"])
            .output()
            .unwrap();
        assert_one_line_error(&run, "is the current directory or contains it");
    }
    assert_eq!(names(dir.path()), ["ckpt", "mine"], "temporary copies left behind");
    // The input itself is not replaced in place unasked, and a tokenizer does not replace a model.
    let c = ckpt.to_str().unwrap();
    assert_one_line_error(&llmtrain(&["convert", "--model", c, "--out", c]), "is the --model directory");
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, "the quick brown fox jumps over the lazy dog\n".repeat(100)).unwrap();
    let run = llmtrain(&["tokenizer", "train", "--files", corpus.to_str().unwrap(), "--vocab-size", "280", "--out", c]);
    let err = assert_one_line_error(&run, "not part of a tokenizer");
    assert!(err.contains("config.json"), "{err}");
    assert!(ckpt.join("model.safetensors").exists());
    assert!(names(&ckpt).iter().all(|n| !n.starts_with('.')), "{:?}", names(&ckpt));
}

#[test]
fn merge_tokenizer_train_and_logits_refuse_to_replace_a_users_files() {
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "mine").unwrap();
    let base = common::root().join("crates/fastlora/tests/fixtures/base");
    let adapter = common::root().join("crates/fastlora/tests/fixtures/lora");
    let run = llmtrain(&[
        "merge",
        "--base",
        base.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        mine.to_str().unwrap(),
    ]);
    assert_one_line_error(&run, "notes.txt");
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, "the quick brown fox jumps over the lazy dog\n".repeat(100)).unwrap();
    let args = ["tokenizer", "train", "--files", corpus.to_str().unwrap(), "--vocab-size", "280", "--out"];
    let run = llmtrain(&[&args[..], &[mine.to_str().unwrap()]].concat());
    assert_one_line_error(&run, "notes.txt");
    assert_eq!(names(&mine), ["notes.txt"]);
    std::fs::remove_file(mine.join("notes.txt")).unwrap();
    std::fs::write(mine.join("notes.txt"), "mine").unwrap();
    // logits --out replaces its own earlier output, not another file.
    let model = base.to_str().unwrap();
    let run = llmtrain(&[
        "merge",
        "--base",
        model,
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        mine.to_str().unwrap(),
        "--overwrite",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(!mine.join("notes.txt").exists());
    std::fs::write(mine.join("notes.txt"), "mine").unwrap();
    let notes = mine.join("notes.txt");
    let run = llmtrain(&["logits", "--model", model, "--tokens", "1,2", "--out", notes.to_str().unwrap()]);
    assert_one_line_error(&run, "is not a logits file");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "mine");
    let logits = dir.path().join("l.safetensors");
    for _ in 0..2 {
        let run = llmtrain(&["logits", "--model", model, "--tokens", "1,2", "--out", logits.to_str().unwrap()]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    }
}

#[test]
fn tokenizer_train_reads_a_directory_as_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    std::fs::write(corpus.join("a.txt"), "the quick brown fox jumps over the lazy dog\n".repeat(100)).unwrap();
    std::fs::write(corpus.join("b.txt"), "pack my box with five dozen liquor jugs\n".repeat(100)).unwrap();
    // `liquor jugs` occurs only in b.txt: a tokenizer that read both files encodes it in fewer tokens than one
    // trained on a.txt alone.
    let token_count = |files: &std::path::Path, name: &str| {
        let tok = dir.path().join(name);
        let args = ["tokenizer", "train", "--files", files.to_str().unwrap(), "--vocab-size", "300", "--out"];
        let run = llmtrain(&[&args[..], &[tok.to_str().unwrap()]].concat());
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let ids = llmtrain(&["tokenizer", "encode", "--tokenizer", tok.to_str().unwrap(), "--text", "liquor jugs"]);
        String::from_utf8_lossy(&ids.stdout).trim().split(',').count()
    };
    let from_directory = token_count(&corpus, "tok-dir");
    let from_a = token_count(&corpus.join("a.txt"), "tok-a");
    assert!(from_directory < from_a, "{from_directory} vs {from_a} tokens");
}

#[test]
fn the_shipped_corpus_directory_holds_only_the_corpus() {
    let corpus = common::root().join("data/shakespeare");
    for name in names(&corpus) {
        assert!(name.ends_with(".txt"), "data/shakespeare/{name} would be read as part of the corpus");
    }
}

//! LoRA from the command line: `llmtrain logits --adapter` on adapters PEFT wrote, and `llmtrain merge`, both
//! against PEFT's own logits (crates/fastlora/tests/fixtures, made by scripts/make_peft_fixture.py).

use crate::common;

use std::path::{Path, PathBuf};

use common::{assert_one_line_error, llmtrain, root};

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

/// A LoRA run on a small from-scratch base: writes `final/` as a PEFT adapter directory, checkpoints carry the
/// adapter, and a resumed run ends exactly where an uninterrupted one does.
fn lora_run(dir: &Path, extra: &str, args: &[&str]) -> String {
    lora_command(dir, extra, &["train"], args, 4)
}

/// `llmtrain <command...> --config run.toml <args...>` in `dir`, after writing the run's corpus and config.
fn lora_command(dir: &Path, extra: &str, command: &[&str], args: &[&str], batch: usize) -> String {
    let corpus = std::fs::read_to_string(root().join("data/shakespeare/hamlet.txt")).unwrap();
    std::fs::create_dir_all(dir.join("corpus")).unwrap();
    std::fs::write(dir.join("corpus/hamlet.txt"), &corpus[..30_000]).unwrap();
    let config = format!(
        "[model]\nhidden_size = 32\nintermediate_size = 64\nnum_hidden_layers = 2\nnum_attention_heads = 4\n\
         num_key_value_heads = 2\n\n[tokenizer]\ntrain_files = [\"corpus\"]\nvocab_size = 300\n\n\
         [data]\nfiles = [\"corpus\"]\nseq_len = 32\nbatch_size = {batch}\neval_fraction = 0.1\n\n\
         [training]\nmax_steps = 12\nlearning_rate = 0.01\nlr_schedule = \"constant\"\nlogging_steps = 2\nsave_steps = 6\n\n\
         [lora]\nr = 4\nalpha = 8\ntarget_modules = [\"q_proj\", \"v_proj\", \"down_proj\"]\n{extra}\n\
         [output]\ndir = \"out\"\n"
    );
    std::fs::write(dir.join("run.toml"), config).unwrap();
    let mut cmd = command.to_vec();
    cmd.push("--config");
    let path = dir.join("run.toml");
    cmd.push(path.to_str().unwrap());
    cmd.extend(args);
    let out = std::process::Command::new(common::llmtrain_bin())
        .args(&cmd)
        .env("LLMTRAIN_CACHE", dir.join("cache"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn lora_training_writes_a_peft_adapter_and_resumes_exactly() {
    let whole = tempfile::tempdir().unwrap();
    lora_run(whole.path(), "", &[]);
    let final_dir = whole.path().join("out/final");
    for f in ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json"] {
        assert!(final_dir.join(f).exists(), "final/{f}");
    }
    assert!(!final_dir.join("model.safetensors").exists(), "final/ holds the adapter, not the model");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(final_dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((config["peft_type"].as_str(), config["r"].as_u64()), (Some("LORA"), Some(4)));
    let bytes = std::fs::read(final_dir.join("adapter_model.safetensors")).unwrap();
    let names = safetensors::SafeTensors::deserialize(&bytes).unwrap().names().len();
    assert_eq!(names, 2 * 3 * 2, "A and B for 3 modules in 2 layers");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let b = st.tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight").unwrap();
    assert!(b.data().iter().any(|&byte| byte != 0), "B starts at zero and must have trained");
    assert!(whole.path().join("out/checkpoint-12/adapter_model.safetensors").exists());
    assert!(
        !whole.path().join("out/checkpoint-12/model.safetensors").exists(),
        "checkpoints leave the frozen base out"
    );

    // Stop at step 6, resume to 12 (a constant schedule, so the shorter run follows the same steps): the adapter
    // ends bit-identical.
    let split = tempfile::tempdir().unwrap();
    lora_run(split.path(), "", &["--max-steps", "6"]);
    lora_run(split.path(), "", &["--resume"]);
    let a = std::fs::read(final_dir.join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(split.path().join("out/final/adapter_model.safetensors")).unwrap();
    assert!(a == b, "resumed LoRA run differs from the uninterrupted one");
}

const QLORA: &str = "\n[quantization]\nload_in_4bit = true\n";

#[test]
fn qlora_training_on_a_4_bit_base_writes_a_peft_adapter_and_resumes_exactly() {
    let whole = tempfile::tempdir().unwrap();
    let stdout = lora_run(whole.path(), QLORA, &[]);
    assert!(stdout.contains("4-bit"), "the run says its base is 4-bit: {stdout}");
    let final_dir = whole.path().join("out/final");
    assert!(final_dir.join("adapter_model.safetensors").exists() && !final_dir.join("model.safetensors").exists());
    let checkpoint = whole.path().join("out/checkpoint-12");
    assert!(checkpoint.join("adapter_model.safetensors").exists() && !checkpoint.join("model.safetensors").exists());
    let curve = losses(whole.path());
    assert!(curve.last() < curve.first(), "the adapters learn on the 4-bit base: {curve:?}");
    // A plain LoRA run from the same seed starts from the dense base: its first loss differs.
    let dense = tempfile::tempdir().unwrap();
    lora_run(dense.path(), "", &[]);
    assert_ne!(losses(dense.path())[0], curve[0], "the 4-bit base is not the dense one");

    // The resumed run re-quantizes the base exactly as the first did.
    let split = tempfile::tempdir().unwrap();
    lora_run(split.path(), QLORA, &["--max-steps", "6"]);
    lora_run(split.path(), QLORA, &["--resume"]);
    let a = std::fs::read(final_dir.join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(split.path().join("out/final/adapter_model.safetensors")).unwrap();
    assert!(a == b, "resumed QLoRA run differs from the uninterrupted one");
}

#[test]
fn logits_on_a_4_bit_base_match_bitsandbytes_and_peft() {
    // crates/fastlora/tests/fixtures/qlora_expected.safetensors, made by scripts/make_qlora_fixture.py.
    let tmp = tempfile::tempdir().unwrap();
    let expected = peft_fixture("qlora_expected.safetensors");
    for (adapter, extra, name) in [
        (None, None, "base_logits"),
        (None, Some("--no-double-quant"), "plain_base_logits"),
        (Some("lora"), None, "lora_logits"),
        (Some("dora_rslora"), None, "dora_logits"),
    ] {
        let out = tmp.path().join(format!("{name}.st"));
        let base = peft_fixture("base");
        let mut args = vec!["logits", "--model", base.to_str().unwrap(), "--tokens", TOKENS, "--load-in-4bit"];
        args.extend(["--out", out.to_str().unwrap()]);
        args.extend(extra);
        let adapter_dir = adapter.map(peft_fixture);
        if let Some(dir) = &adapter_dir {
            args.extend(["--adapter", dir.to_str().unwrap()]);
        }
        let run = llmtrain(&args);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let diff = max_diff(&tensor(&out, "logits"), &tensor(&expected, name));
        println!("{name}: llmtrain logits --load-in-4bit vs bitsandbytes + PEFT {diff:.2e}");
        assert!(diff <= 1e-4, "{name}: {diff}");
    }
}

/// Per-step losses of a run's metrics.jsonl.
fn losses(dir: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(dir.join("out/metrics.jsonl")).unwrap();
    text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64()).collect()
}

#[test]
fn lora_on_two_ranks_follows_one_rank_with_the_same_global_batch() {
    // 2 in-process ranks × 2 rows against 1 rank × 4 rows: only the adapters' gradients are all-reduced (the
    // frozen base has none), and the curves agree to float rounding.
    let single = tempfile::tempdir().unwrap();
    let pair = tempfile::tempdir().unwrap();
    lora_command(single.path(), "", &["train"], &[], 4);
    lora_command(pair.path(), "", &["launch", "--num-processes", "2", "--", "train"], &[], 2);
    let (a, b) = (losses(single.path()), losses(pair.path()));
    assert_eq!(a.len(), b.len());
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    println!("LoRA 1 rank x 4 vs 2 ranks x 2: max |Δloss| {worst:.2e} over {} logged steps", a.len());
    assert!(worst < 1e-5, "{a:?} vs {b:?}");
}

#[test]
fn sft_run_reports_held_out_accuracy_before_and_after() {
    // Prompt/completion rows with a completion-only loss, on a from-scratch base: the plumbing of `accuracy_file`
    // (configs/sft-lora.toml measures the real gain on the quickstart's model).
    let dir = tempfile::tempdir().unwrap();
    let sft = root().join("data/sft");
    let take = |name: &str, n: usize| {
        let text = std::fs::read_to_string(sft.join(name)).unwrap();
        let rows: Vec<&str> = text.lines().take(n).collect();
        std::fs::write(dir.path().join(name), rows.join("\n") + "\n").unwrap();
    };
    take("train.jsonl", 300);
    take("test.jsonl", 12);
    let config = "[model]\nhidden_size = 32\nintermediate_size = 64\nnum_hidden_layers = 2\nnum_attention_heads = 4\n\
                  num_key_value_heads = 2\n\n[tokenizer]\ntrain_files = [\"train.jsonl\"]\nvocab_size = 300\n\n\
                  [data]\nfiles = [\"train.jsonl\"]\nseq_len = 32\nbatch_size = 4\nloss_on = \"completion-only\"\n\n\
                  [training]\nmax_steps = 6\nlearning_rate = 0.01\nlogging_steps = 3\naccuracy_file = \"test.jsonl\"\n\n\
                  [lora]\nr = 4\n\n[output]\ndir = \"out\"\n";
    std::fs::write(dir.path().join("run.toml"), config).unwrap();
    let out = std::process::Command::new(common::llmtrain_bin())
        .args(["train", "--config", dir.path().join("run.toml").to_str().unwrap()])
        .env("LLMTRAIN_CACHE", dir.path().join("cache"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.starts_with("held-out accuracy:")).expect("an accuracy line");
    assert!(line.contains("/12") && line.contains("before") && line.contains("after"), "{line}");
    let metrics = std::fs::read_to_string(dir.path().join("out/metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .filter_map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).ok()?;
            r.get("accuracy")?;
            r["step"].as_u64()
        })
        .collect();
    assert_eq!(steps, vec![0, 6], "accuracy before the first step and after the last");
}

#[test]
fn generate_with_an_adapter_equals_generate_on_the_merged_model() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::fixture("llama_gqa_tied");
    lora_command(dir.path(), "", &["train"], &["--model", base.to_str().unwrap(), "--max-steps", "6"], 4);
    let adapter = dir.path().join("out/final");
    let merged = dir.path().join("merged");
    let b = base.to_str().unwrap();
    let merge =
        llmtrain(&["merge", "--base", b, "--adapter", adapter.to_str().unwrap(), "--out", merged.to_str().unwrap()]);
    assert!(merge.status.success(), "{}", String::from_utf8_lossy(&merge.stderr));
    let generate = |args: &[&str]| {
        let mut all = vec!["generate", "--prompt", "To be, or not", "--max-new-tokens", "8"];
        all.extend(args);
        let out = llmtrain(&all);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let a = adapter.to_str().unwrap();
    // The adapter directory's tokenizer is the one it was trained with; the merged model gets it by --tokenizer.
    let with_adapter = generate(&["--model", b, "--adapter", a]);
    assert_eq!(with_adapter, generate(&["--model", merged.to_str().unwrap(), "--tokenizer", a]));
    // On a 4-bit base too (the text may differ from the dense one: only that it runs and says something).
    let four_bit = generate(&["--model", b, "--adapter", a, "--load-in-4bit"]);
    assert!(four_bit.starts_with("To be, or not") && four_bit.len() > "To be, or not\n".len(), "{four_bit}");
}

#[test]
fn lora_on_a_loaded_base_is_reproducible_from_its_config() {
    // `[training] seed` seeds the adapters' initialisation on a checkpoint too, not only from scratch.
    let base = common::fixture("llama_gqa_tied");
    let adapters: Vec<Vec<u8>> = (0..2)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            lora_command(dir.path(), "", &["train"], &["--model", base.to_str().unwrap(), "--max-steps", "2"], 4);
            std::fs::read(dir.path().join("out/final/adapter_model.safetensors")).unwrap()
        })
        .collect();
    assert!(adapters[0] == adapters[1], "two runs of one config gave different adapters");
}

#[test]
fn lora_dropout_resumes_bit_identical_and_ignores_thread_timing() {
    // Dropout masks come from (seed, rank, step, micro-batch), not from a process-wide generator: a resumed run
    // draws what the uninterrupted one drew, and in-process ranks (threads) draw the same masks every time.
    let base = common::fixture("llama_gqa_tied");
    let b = base.to_str().unwrap();
    let adapter = |dir: &Path| std::fs::read(dir.join("out/final/adapter_model.safetensors")).unwrap();
    let dropout = "dropout = 0.1";
    let whole = tempfile::tempdir().unwrap();
    lora_command(whole.path(), dropout, &["train"], &["--model", b], 4);
    let split = tempfile::tempdir().unwrap();
    lora_command(split.path(), dropout, &["train"], &["--model", b, "--max-steps", "6"], 4);
    lora_command(split.path(), dropout, &["train"], &["--model", b, "--resume"], 4);
    assert!(adapter(whole.path()) == adapter(split.path()), "a resumed run with dropout differs");
    let ranks: Vec<Vec<u8>> = (0..2)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let launch = ["launch", "--num-processes", "2", "--", "train"];
            lora_command(dir.path(), dropout, &launch, &["--model", b, "--max-steps", "4"], 2);
            adapter(dir.path())
        })
        .collect();
    assert!(ranks[0] == ranks[1], "two runs on two in-process ranks differ");
}

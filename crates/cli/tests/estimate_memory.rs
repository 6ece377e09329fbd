//! `llmtrain estimate-memory`: DeepSpeed's ZeRO figures from the command line, a model directory's shape, the
//! standard shapes a bare `--params` size stands for (`--family`), the activation and CPU-peak terms for a batch
//! (precision, attention kernel, checkpointing, fused cross-entropy), and one-line errors for bad input.

use crate::common;

use common::{assert_one_line_error, fixture, llmtrain};

/// The column whose header starts with `name` of the printed table, by ZeRO stage.
fn column(stdout: &str, name: &str) -> Vec<(u8, f64)> {
    let cells =
        |line: &str| -> Vec<String> { line.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect() };
    let Some(index) = stdout
        .lines()
        .find(|l| l.starts_with("| ZeRO stage"))
        .and_then(|h| cells(h).iter().position(|c| c.starts_with(name)))
    else {
        return Vec::new();
    };
    stdout
        .lines()
        .filter_map(|line| {
            let cells = cells(line);
            Some((cells.first()?.parse().ok()?, cells.get(index)?.parse().ok()?))
        })
        .collect()
}

/// The per-device totals column of the printed table, by ZeRO stage.
fn totals(stdout: &str) -> Vec<(u8, f64)> {
    column(stdout, "total")
}

fn run_ok(args: &[&str]) -> String {
    let out = llmtrain(args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn zero_stages_for_7_5b_on_64_gpus_match_the_zero_paper() {
    let stdout = run_ok(&["estimate-memory", "--params", "7.5B", "--precision", "mixed", "--gpus", "64"]);
    assert!(stdout.contains("total GB per device"), "{stdout}");
    assert!(!stdout.contains("CPU step peak"), "no batch, no peak:\n{stdout}");
    assert_eq!(totals(&stdout), vec![(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)], "{stdout}");
}

#[test]
fn offload_leaves_the_16_bit_weights_on_the_device_as_deepspeed_counts() {
    // DeepSpeed's estimators with the optimizer offloaded: 2P per GPU under stages 1-2, 4·largest layer + 2P/G
    // under stage 3 (Llama 2 7B: P = 6.74B, the largest layer the 32000 x 4096 embedding).
    let args = ["estimate-memory", "--params", "7B", "--precision", "mixed", "--gpus", "8", "--offload", "optimizer"];
    let stdout = run_ok(&args);
    assert_eq!(totals(&stdout), vec![(1, 13.5), (2, 13.5), (3, 2.2)], "{stdout}");
    assert!(stdout.contains("ZeRO stage 3, optimizer offloaded: 11.8 GB of model states per rank in host memory"));
    let stdout = run_ok(&[&args[..7], &["--offload", "optimizer+params"]].concat());
    // Under 1 GB the table is in MB: 4 x 32000 x 4096 bytes.
    assert_eq!(totals(&stdout), vec![(3, 524.3)], "{stdout}");
}

/// The `assumed shape: ...` line, which comes before the table.
fn assumed_shape(stdout: &str) -> &str {
    let line = stdout.lines().find(|l| l.starts_with("assumed shape: ")).unwrap_or_default();
    let table = stdout.find("| ZeRO stage").unwrap_or(0);
    assert!(!line.is_empty() && stdout.find(line).is_some_and(|at| at < table), "{stdout}");
    line
}

#[test]
fn a_standard_size_stands_for_its_published_shape() {
    // README's synopsis: QLoRA needs the shape (which layers are quantized, the adapters' size).
    let stdout = run_ok(&["estimate-memory", "--params", "7B", "--method", "qlora"]);
    let line = assumed_shape(&stdout);
    assert!(
        line.contains("Llama 2 7B (hidden 4096, 32 layers, 32 heads / 32 KV heads, FFN 11008, vocab 32000)"),
        "{line}"
    );
    assert!(line.contains("--family mistral|qwen2"), "{line}");
    // The shape's own count, not the nominal 7B.
    assert!(stdout.contains("6.74 B parameters, qlora finetune"), "{stdout}");
    // fp32: the decoder's 6.48B linear weights in NF4 (3.34 GB), embeddings, head and norms in f32 (1.05 GB), the
    // 40.0M adapter parameters in f32 (0.16 GB).
    assert_eq!(totals(&stdout).len(), 4, "{stdout}");
    assert_eq!(column(&stdout, "weights")[0], (0, 4.6), "{stdout}");

    // A batch shape gives activations and the CPU step's peak; 8B is Llama 3 8B.
    let stdout = run_ok(&[
        "estimate-memory",
        "--params",
        "8B",
        "--method",
        "lora",
        "--batch",
        "1",
        "--seq",
        "2048",
        "--zero-stage",
        "0",
    ]);
    let line = assumed_shape(&stdout);
    assert!(
        line.contains("Llama 3 8B (hidden 4096, 32 layers, 32 heads / 8 KV heads, FFN 14336, vocab 128256)"),
        "{line}"
    );
    assert!(!line.contains("--family"), "8B has one shape: {line}");
    assert!(stdout.contains("8.03 B parameters, lora finetune"), "{stdout}");
    let (activations, peak) = (column(&stdout, "activations"), column(&stdout, "CPU step peak"));
    assert_eq!((activations.len(), peak.len()), (1, 1), "{stdout}");
    assert!(activations[0].1 > 0.0, "{stdout}");

    // --family picks among the shapes of one size.
    let mistral = run_ok(&["estimate-memory", "--params", "7B", "--family", "mistral", "--method", "lora"]);
    let line = assumed_shape(&mistral);
    assert!(
        line.contains("Mistral 7B (hidden 4096, 32 layers, 32 heads / 8 KV heads, FFN 14336, vocab 32000)"),
        "{line}"
    );
    assert!(mistral.contains("7.24 B parameters"), "{mistral}");
    let qwen = run_ok(&["estimate-memory", "--params", "7B", "--family", "qwen2"]);
    let line = assumed_shape(&qwen);
    assert!(
        line.contains("Qwen2 7B (hidden 3584, 28 layers, 28 heads / 4 KV heads, FFN 18944, vocab 152064"),
        "{line}"
    );
    assert!(qwen.contains("7.62 B parameters, full finetune"), "{qwen}");
    let tied = run_ok(&["estimate-memory", "--params", "0.5B", "--family", "qwen2", "--method", "lora"]);
    assert!(assumed_shape(&tied).contains("Qwen2 0.5B") && tied.contains("494.03 M parameters"), "{tied}");

    // A size no family has keeps the bare count for full finetuning, with no shape assumed.
    let stdout = run_ok(&["estimate-memory", "--params", "7.5B"]);
    assert!(!stdout.contains("assumed shape") && stdout.contains("7.50 B parameters"), "{stdout}");
}

#[test]
fn a_model_directory_gives_shape_activations_and_lora_states() {
    let model = fixture("llama_gqa_tied");
    let shape =
        ["estimate-memory", "--model", model.to_str().unwrap(), "--batch", "2", "--seq", "16", "--zero-stage", "0"];
    let full = run_ok(&shape);
    let lora = run_ok(&[&shape[..], &["--method", "lora", "--lora-rank", "2"]].concat());
    assert!(full.contains("total MB per device") && !full.contains("| - |"), "{full}");
    let (f, l) = (totals(&full), totals(&lora));
    assert_eq!(f.len(), 1);
    assert!(l[0].1 < f[0].1, "LoRA keeps less:\n{full}\n{lora}");
}

#[test]
fn precision_attention_and_checkpointing_change_activations_and_the_cpu_peak() {
    let model = fixture("llama_gqa_tied");
    let base =
        ["estimate-memory", "--model", model.to_str().unwrap(), "--batch", "4", "--seq", "256", "--zero-stage", "0"];
    let run = |extra: &[&str]| {
        let stdout = run_ok(&[&base[..], extra].concat());
        let activations = column(&stdout, "activations");
        let peak = column(&stdout, "CPU step peak");
        assert_eq!((activations.len(), peak.len()), (1, 1), "{stdout}");
        assert!(stdout.contains("CPU step peak, ZeRO stage 0:"), "{stdout}");
        (activations[0].1, peak[0].1, stdout)
    };
    let (fp32, fp32_peak, stdout) = run(&[]);
    assert!(stdout.contains("f32 activations, eager attention"), "{stdout}");
    // 16-bit activations: `--precision mixed` means bf16 compute unless fp16 is asked for (same bytes).
    let (mixed, _, stdout) = run(&["--precision", "mixed"]);
    assert!(stdout.contains("bf16 activations"), "{stdout}");
    let (fp16, _, _) = run(&["--precision", "mixed", "--compute-dtype", "fp16"]);
    assert!(mixed < fp32 * 0.9 && fp16 == mixed, "fp32 {fp32}, mixed {mixed}, fp16 {fp16}");
    // At 256 tokens eager attention's [seq x seq] scores dominate; flash keeps none of them.
    let (flash, flash_peak, _) = run(&["--attention", "flash"]);
    assert!(flash < fp32 / 2.0 && flash_peak < fp32_peak, "eager {fp32} ({fp32_peak}), flash {flash} ({flash_peak})");
    // Two layers: one layer's graph at a time instead of both.
    let (ckpt, ckpt_peak, stdout) = run(&["--grad-checkpointing"]);
    assert!(ckpt < fp32 * 0.6 && ckpt_peak < fp32_peak, "plain {fp32} ({fp32_peak}), ckpt {ckpt} ({ckpt_peak})");
    assert!(stdout.contains("recomputed"), "{stdout}");
}

#[test]
fn the_fused_cross_entropy_keeps_no_logits_and_lowers_the_cpu_peak() {
    let model = fixture("llama_gqa_tied");
    // Flash attention, so that the loss's [tokens x vocab] buffers are the largest of the step.
    let base = [
        "estimate-memory",
        "--model",
        model.to_str().unwrap(),
        "--batch",
        "8",
        "--seq",
        "256",
        "--zero-stage",
        "0",
        "--attention",
        "flash",
    ];
    let run = |extra: &[&str]| {
        let stdout = run_ok(&[&base[..], extra].concat());
        let (activations, peak) = (column(&stdout, "activations"), column(&stdout, "CPU step peak"));
        assert_eq!((activations.len(), peak.len()), (1, 1), "{stdout}");
        (activations[0].1, peak[0].1, stdout)
    };
    for method in ["full", "lora"] {
        let (plain, plain_peak, stdout) = run(&["--method", method, "--lora-rank", "4"]);
        assert!(!stdout.contains("fused"), "{stdout}");
        let (fused, fused_peak, stdout) = run(&["--method", method, "--lora-rank", "4", "--fused-cross-entropy"]);
        assert!(stdout.contains("fused cross-entropy (1024 rows a chunk)"), "{stdout}");
        // No shifted logits kept (2040 x 300 f32, 2.4 MB), one f32 per token instead; with LoRA the fused node
        // keeps the final norm's output (2048 x 64 f32, 0.5 MB), which the frozen head's matmul does not.
        assert!(plain - fused > 1.5, "{method}: plain {plain}, fused {fused}");
        assert!(fused_peak < plain_peak - 2.0, "{method}: plain {plain_peak}, fused {fused_peak}\n{stdout}");
        // Smaller chunks: the same tensors kept, smaller blocks in flight.
        let chunk = ["--method", method, "--lora-rank", "4", "--fused-cross-entropy", "--cross-entropy-chunk", "64"];
        let (small, small_peak, stdout) = run(&chunk);
        assert!(stdout.contains("fused cross-entropy (64 rows a chunk)"), "{stdout}");
        assert!(
            small == fused && small_peak < fused_peak,
            "{method}: {fused} ({fused_peak}) vs {small} ({small_peak})"
        );
    }
}

#[test]
fn bad_input_is_one_error_line() {
    assert_one_line_error(&llmtrain(&["estimate-memory", "--params", "seven"]), "--params seven");
    assert_one_line_error(&llmtrain(&["estimate-memory", "--params", "7B", "--zero-stage", "5"]), "--zero-stage");
    // A size with no standard shape cannot stand for a model: the known sizes are listed.
    let line = assert_one_line_error(
        &llmtrain(&["estimate-memory", "--params", "7.5B", "--method", "lora"]),
        "needs the model's shape",
    );
    assert!(line.contains("0.5B, 1B, 1.5B, 3B, 7B, 8B, 13B, 14B, 32B, 70B, 72B"), "{line}");
    let line = assert_one_line_error(
        &llmtrain(&["estimate-memory", "--params", "6B", "--batch", "1", "--seq", "128"]),
        "activations (--batch/--seq) needs the model's shape",
    );
    assert!(line.contains("7B, 8B"), "{line}");
    // A family without a shape of that size, and a family that is not one.
    let line = assert_one_line_error(
        &llmtrain(&["estimate-memory", "--params", "13B", "--family", "qwen2"]),
        "--family qwen2 has no 13B shape",
    );
    assert!(line.contains("0.5B, 1.5B, 3B, 7B, 14B, 32B, 72B"), "{line}");
    // Like every flag with a fixed set of values, clap refuses an unknown family and lists the known ones.
    let out = llmtrain(&["estimate-memory", "--params", "7B", "--family", "gpt2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("llama2, llama3, mistral, qwen2"), "{stderr}");
    // --family is for --params.
    let model = fixture("llama_gqa_tied");
    let out = llmtrain(&["estimate-memory", "--model", model.to_str().unwrap(), "--family", "llama2"]);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // "model directory /nonexistent does not exist" (or, before that check, "/nonexistent/config.json: ...").
    assert_one_line_error(&llmtrain(&["estimate-memory", "--model", "/nonexistent"]), "/nonexistent");
    assert_one_line_error(
        &llmtrain(&["estimate-memory", "--params", "7B", "--precision", "fp32", "--compute-dtype", "bf16"]),
        "--compute-dtype bf16",
    );
    let model = fixture("llama_gqa_tied");
    assert_one_line_error(
        &llmtrain(&["estimate-memory", "--model", model.to_str().unwrap(), "--batch", "0", "--seq", "16"]),
        "--batch and --seq",
    );
    let no_rows = ["estimate-memory", "--params", "7B", "--fused-cross-entropy", "--cross-entropy-chunk", "0"];
    assert_one_line_error(&llmtrain(&no_rows), "--cross-entropy-chunk must be at least 1");
    // The chunk alone is refused (it only means something with the fused loss).
    let out = llmtrain(&["estimate-memory", "--params", "7B", "--cross-entropy-chunk", "64"]);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

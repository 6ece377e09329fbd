//! `llmtrain estimate-memory`: DeepSpeed's ZeRO figures from the command line, a model directory's shape, the
//! activation and CPU-peak terms for a batch (precision, attention kernel, checkpointing, fused cross-entropy), and
//! one-line errors for bad input.

use llmtrain_e2e::{assert_one_line_error, fixture, llmtrain};

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
    assert_one_line_error(
        &llmtrain(&["estimate-memory", "--params", "7B", "--method", "lora"]),
        "needs the model's shape",
    );
    assert_one_line_error(&llmtrain(&["estimate-memory", "--model", "/nonexistent"]), "/nonexistent/config.json");
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

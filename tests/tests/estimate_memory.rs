//! `llmtrain estimate-memory`: DeepSpeed's ZeRO figures from the command line, a model directory's shape, and
//! one-line errors for bad input.

use llmtrain_e2e::{assert_one_line_error, fixture, llmtrain};

/// The per-device totals column of the printed table, by ZeRO stage.
fn totals(stdout: &str) -> Vec<(u8, f64)> {
    stdout
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            Some((cells.first()?.parse().ok()?, cells.last()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn zero_stages_for_7_5b_on_64_gpus_match_the_zero_paper() {
    let out = llmtrain(&["estimate-memory", "--params", "7.5B", "--precision", "mixed", "--gpus", "64"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("total GB per device"), "{stdout}");
    assert_eq!(totals(&stdout), vec![(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)], "{stdout}");
}

#[test]
fn a_model_directory_gives_shape_activations_and_lora_states() {
    let model = fixture("llama_gqa_tied");
    let shape =
        ["estimate-memory", "--model", model.to_str().unwrap(), "--batch", "2", "--seq", "16", "--zero-stage", "0"];
    let full = llmtrain(&shape);
    let lora = llmtrain(&[&shape[..], &["--method", "lora", "--lora-rank", "2"]].concat());
    let (full, lora) = (String::from_utf8_lossy(&full.stdout), String::from_utf8_lossy(&lora.stdout));
    assert!(full.contains("total MB per device") && !full.contains("| - |"), "{full}");
    let (f, l) = (totals(&full), totals(&lora));
    assert_eq!(f.len(), 1);
    assert!(l[0].1 < f[0].1, "LoRA keeps less:\n{full}\n{lora}");
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
}

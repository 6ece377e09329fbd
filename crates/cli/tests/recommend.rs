//! `llmtrain recommend`: the decision guide's own scenarios, the table, nothing fitting, bad input, and the
//! configs `--out` writes, each run by `llmtrain train` as written.

use std::path::Path;

use serde_json::Value;

use crate::common::{assert_one_line_error, assert_trained, llmtrain, root, tiny_model};
use crate::launch_common::ok;

fn recommend_json(args: &[&str]) -> Value {
    let mut all = vec!["recommend", "--json"];
    all.extend_from_slice(args);
    let out = llmtrain(&all);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn crates(value: &Value) -> Vec<&str> {
    value["crates"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect()
}

#[test]
fn the_guides_own_scenarios_get_the_guides_answers() {
    // 70B on 64 x 80 GB: ZeRO-3.
    let v = recommend_json(&["--params", "70B", "--gpus", "64", "--gpu-memory", "80GB"]);
    assert_eq!(
        (v["scenario"].as_str(), v["method"].as_str(), v["zero_stage"].as_u64()),
        (Some("70b+"), Some("full"), Some(3))
    );
    assert_eq!((v["offload"].as_str(), v["fits"].as_bool()), (Some("none"), Some(true)));
    assert_eq!(crates(&v)[0], "zero");
    // 70B on 8 x 80 GB: ZeRO-3 with the optimizer offloaded.
    let v = recommend_json(&["--params", "70B", "--gpus", "8", "--gpu-memory", "80GB"]);
    assert_eq!((v["zero_stage"].as_u64(), v["offload"].as_str()), (Some(3), Some("optimizer")));
    // 7B on one 16 GB GPU: QLoRA through fastlora.
    let v = recommend_json(&["--params", "7B", "--gpu-memory", "16GB"]);
    assert_eq!((v["scenario"].as_str(), v["method"].as_str()), (Some("7b-13b"), Some("qlora")));
    assert_eq!(crates(&v), ["fastlora", "memopt"]);
    assert_eq!(v["gradient_checkpointing"].as_bool(), Some(true));
    // 1B on one 80 GB GPU: Accelerate + LoRA.
    let v = recommend_json(&["--params", "1B", "--gpu-memory", "80GB"]);
    assert_eq!((v["scenario"].as_str(), v["method"].as_str()), (Some("simple-finetuning"), Some("lora")));
    assert_eq!(crates(&v), ["accel", "fastlora"]);
    assert_eq!((v["mixed_precision"].as_str(), v["zero_stage"].as_u64()), (Some("bf16"), Some(0)));
    let (need, usable) = (v["per_device_bytes"].as_u64().unwrap(), v["usable_bytes_per_device"].as_u64().unwrap());
    assert!(need <= usable, "{need} > {usable}");
    // Any DPO: trl.
    for args in [
        &["--params", "1B"][..],
        &["--params", "7B", "--gpu-memory", "24GB"],
        &["--params", "70B", "--gpus", "8", "--batch", "2"],
    ] {
        let mut args = args.to_vec();
        args.extend(["--task", "dpo"]);
        let v = recommend_json(&args);
        assert_eq!((v["scenario"].as_str(), crates(&v)[0]), (Some("rlhf-dpo"), "trl"), "{args:?}");
    }
    // Two nodes: raytrain.
    let v = recommend_json(&["--params", "7B", "--gpus", "16", "--nodes", "2"]);
    assert_eq!((v["scenario"].as_str(), crates(&v)[0]), (Some("multi-node"), "raytrain"));
    // Pretraining: Lightning's loop.
    let v = recommend_json(&["--params", "1B", "--task", "pretrain", "--gpus", "8"]);
    assert_eq!((v["scenario"].as_str(), v["method"].as_str()), (Some("clean-code"), Some("full")));
}

#[test]
fn the_table_names_every_candidate_and_why_the_choice() {
    let out = llmtrain(&["recommend", "--params", "7B", "--gpu-memory", "16GB"]);
    let stdout = ok(&out);
    assert!(stdout.contains("| 1 | LoRA (bf16 base) |"), "{stdout}");
    assert!(stdout.contains("over the 12.8 GiB usable"), "{stdout}");
    assert!(stdout.contains("chosen: the simplest that fits"), "{stdout}");
    assert!(stdout.contains("choice: QLoRA (NF4 base), checkpointing"), "{stdout}");
    assert!(stdout.contains("decision guide: 7B–13B models, one GPU (Unsloth) -> llmtrain-fastlora + llmtrain-memopt"));
}

#[test]
fn nothing_fitting_names_the_closest_and_what_would_fit() {
    let out = llmtrain(&["recommend", "--params", "70B", "--gpu-memory", "16GB"]);
    let line = assert_one_line_error(&out, "nothing fits on 1 x 16.0 GiB: the closest");
    assert!(line.contains("it would fit with --seq-len"), "{line}");
    // The table still shows what was considered.
    assert!(String::from_utf8_lossy(&out.stdout).contains("| 1 | full, data parallel |"));
    // --json says so too, and exits non-zero.
    let out = llmtrain(&["recommend", "--json", "--params", "70B", "--gpu-memory", "16GB"]);
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["fits"].as_bool(), Some(false));
    assert!(!v["remedies"].as_array().unwrap().is_empty());
}

#[test]
fn bad_input_is_one_error_line_naming_the_flag() {
    let e = |args: &[&str], needle: &str| {
        let mut all = vec!["recommend"];
        all.extend_from_slice(args);
        assert_one_line_error(&llmtrain(&all), needle);
    };
    e(&["--params", "7B", "--gpu-memory", "80XB"], "--gpu-memory 80XB");
    e(&["--params", "7B", "--gpus", "0"], "--gpus");
    e(&["--params", "7B", "--gpus", "3", "--nodes", "2"], "--nodes 2");
    e(&["--params", "seven"], "--params seven");
    e(&["--params", "7B", "--task", "rlhf"], "--task rlhf");
    e(&["--params", "1B", "--task", "pretrain", "--method", "lora"], "--method lora");
    let reward = root().join("crates/trl/tests/fixtures/reward_model");
    e(&["--model", reward.to_str().unwrap(), "--task", "grpo"], "cannot be trained with --task grpo");
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = dir.path().join("grpo.toml");
    let (model, out) = (model.to_str().unwrap(), out.to_str().unwrap());
    e(&["--model", model, "--task", "grpo", "--out", out], "--task grpo needs a reward");
    e(&["--model", model, "--task", "ppo", "--reward-model", model, "--out", out], "--reward-model");
    e(&["--params", "7B", "--out", out], "--task sft starts from a model: give --model DIR");
    assert!(!Path::new(out).exists(), "nothing is written on a bad input");
    // An existing file is replaced only with --overwrite.
    std::fs::write(out, "mine").unwrap();
    let data = root().join("data/sft/train.jsonl");
    e(&["--model", model, "--data", data.to_str().unwrap(), "--out", out], "add --overwrite");
    assert_eq!(std::fs::read_to_string(out).unwrap(), "mine");
}

/// The per-device bytes of each candidate for the tiny model's job, in the walk's order.
fn needs(args: &[&str]) -> Vec<(String, Option<u64>)> {
    let v = recommend_json(args);
    v["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["candidate"].as_str().unwrap().to_string(), c["per_device_bytes"].as_u64()))
        .collect()
}

/// A device size (in bytes, as `--gpu-memory` takes it) with which the walk stops at the candidate named
/// `target`: above its need, below every earlier candidate's.
fn memory_for(args: &[&str], target: &str) -> String {
    let needs = needs(args);
    let at = needs.iter().position(|(name, _)| name == target).unwrap_or_else(|| panic!("{target}: {needs:?}"));
    let need = needs[at].1.unwrap();
    let earlier = needs[..at].iter().filter_map(|(_, n)| *n).min().unwrap_or(u64::MAX);
    assert!(need < earlier, "{target} needs {need}, an earlier candidate {earlier}: {needs:?}");
    // Usable memory is 80% of the device's.
    let device = (need as f64 / 0.8).ceil() as u64 + 16;
    assert!(device as f64 * 0.8 < earlier as f64, "{target}: {needs:?}");
    format!("{device}B")
}

#[test]
fn each_written_config_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let model = model.to_str().unwrap();
    let data = |rel: &str| root().join(rel).to_string_lossy().into_owned();
    let (sft, pairs, prompts) =
        (data("data/sft/train.jsonl"), data("data/preference/train.jsonl"), data("data/grpo/train.jsonl"));
    let shakespeare = data("data/shakespeare");
    let reward_model = data("crates/trl/tests/fixtures/reward_model");
    // (name, recommend's flags, the candidate to land on, the written config's sections, ranks to run with)
    type Job<'a> = (&'a str, Vec<&'a str>, &'a str, &'a [&'a str], usize);
    let jobs: Vec<Job> = vec![
        ("sft-lora", vec!["--data", &sft], "LoRA (bf16 base)", &["[lora]"], 1),
        (
            "sft-qlora",
            vec!["--data", &sft],
            "QLoRA (NF4 base), checkpointing + flash attention + fused loss",
            &["[lora]", "[quantization]", "gradient_checkpointing = true"],
            1,
        ),
        (
            "full-zero3",
            vec!["--data", &sft, "--gpus", "2", "--method", "full"],
            "full, ZeRO-3 + optimizer and parameter offload, checkpointing + flash attention + fused loss",
            &["[zero]", "stage = 3", "offload_param = \"cpu\""],
            2,
        ),
        ("dpo", vec!["--data", &pairs, "--task", "dpo"], "LoRA (bf16 base)", &["[dpo]", "[lora]"], 1),
        (
            "grpo",
            vec!["--data", &prompts, "--task", "grpo", "--reward", "exact_match"],
            "LoRA (bf16 base)",
            &["[grpo]", "reward_funcs = [\"exact_match\"]"],
            1,
        ),
        ("orpo", vec!["--data", &pairs, "--task", "orpo"], "LoRA (bf16 base)", &["[orpo]"], 1),
        ("reward", vec!["--data", &pairs, "--task", "reward"], "full, data parallel", &["[reward]"], 1),
        (
            "rloo",
            vec!["--data", &prompts, "--task", "rloo", "--reward", "exact_match"],
            "LoRA (bf16 base)",
            &["[rloo]"],
            1,
        ),
        (
            "ppo",
            vec!["--data", &prompts, "--task", "ppo", "--reward-model", &reward_model],
            "LoRA (bf16 base)",
            &["[ppo]", "reward_model_path = "],
            1,
        ),
        ("pretrain", vec!["--data", &shakespeare, "--task", "pretrain"], "full, data parallel", &["packing = true"], 1),
        ("multinode", vec!["--data", &sft, "--gpus", "2", "--nodes", "2"], "LoRA (bf16 base)", &["[scaling]"], 1),
    ];
    for (name, flags, target, sections, ranks) in jobs {
        let mut args = vec!["--model", model, "--seq-len", "32", "--batch", "2"];
        args.extend(flags.iter().copied());
        let memory = memory_for(&args, target);
        let config = dir.path().join(format!("{name}.toml"));
        let mut written = args.clone();
        written.extend(["--gpu-memory", &memory, "--out", config.to_str().unwrap()]);
        let v = recommend_json(&written);
        assert_eq!(
            v["candidates"][v["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .position(|c| c["why"].as_str().unwrap().starts_with("chosen"))
                .unwrap()]["candidate"]
                .as_str(),
            Some(target),
            "{name}"
        );
        let mut text = std::fs::read_to_string(&config).unwrap();
        assert!(text.starts_with("# Decision guide: "), "{name}:\n{text}");
        for section in sections {
            assert!(text.contains(section), "{name}: no {section} in\n{text}");
        }
        if name == "multinode" {
            // The workers as threads of this CPU machine, not mpirun processes on GPUs (a build without the mpi
            // feature cannot start those).
            text = text.replace("use_gpu = true", "use_gpu = false").replace("\"mpirun\"", "\"in-process\"");
            std::fs::write(&config, &text).unwrap();
        }
        let out = dir.path().join(format!("out-{name}"));
        let (config, out_arg) = (config.to_str().unwrap().to_string(), out.to_str().unwrap().to_string());
        let train = ["train", "--config", &config, "--max-steps", "2", "--output-dir", &out_arg];
        let ranks_arg = ranks.to_string();
        let mut command: Vec<&str> = Vec::new();
        if ranks > 1 {
            command.extend(["launch", "--num-processes", &ranks_arg, "--"]);
        }
        command.extend(train);
        ok(&llmtrain(&command));
        assert_trained(name, &out);
    }
}

#[test]
fn calibrate_runs_two_steps_and_prints_the_measured_peak_beside_the_prediction() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = root().join("data/sft/train.jsonl");
    let args = [
        "recommend",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--seq-len",
        "32",
        "--batch",
        "2",
        "--calibrate",
    ];
    let stdout = ok(&llmtrain(&args));
    let line = stdout.lines().find(|l| l.starts_with("calibration: ")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains("measured peak ") && line.contains("MiB; predicted CPU step peak "), "{line}");
    assert!(line.contains("(measured / predicted "), "{line}");
}

//! `llmtrain train` with a trainer section of llmtrain-trl (`[dpo]`, `[orpo]`), against TRL 1.16 itself: the
//! fixtures of llmtrain-trl's tests (`crates/trl/tests/fixtures`, made by the scripts they name) hold a tiny
//! policy, a reference, their tokenizer, four preference rows and what TRL's trainers logged at step 1.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{assert_one_line_error, llmtrain, root};
use crate::launch_common::ok;

fn trl_fixtures() -> PathBuf {
    root().join("crates/trl/tests/fixtures")
}

fn trl_record() -> Value {
    let text = std::fs::read_to_string(trl_fixtures().join("dpo_losses.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(fixture["cases"][0]["loss_type"], serde_json::json!(["sigmoid"]));
    fixture["cases"][0]["metrics"].clone()
}

/// A directory with the fixture's rows (`copies` times over) as `pairs.jsonl`.
fn job(copies: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(trl_fixtures().join("dpo_losses.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let rows: String = fixture["rows"].as_array().unwrap().iter().map(|row| format!("{row}\n")).collect();
    std::fs::write(dir.path().join("pairs.jsonl"), rows.repeat(copies)).unwrap();
    dir
}

/// Writes `<name>.toml` in `dir`: DPO of the fixture's policy on `pairs.jsonl` into `out-<name>`, with `extra`
/// appended (a `[dpo]` section, `[lora]`, ...), and returns its path.
fn config(dir: &Path, name: &str, training: &str, extra: &str) -> PathBuf {
    let fixtures = trl_fixtures();
    let text = format!(
        "[model]\npath = \"{policy}\"\n\n[tokenizer]\npath = \"{tokenizer}\"\n\n\
         [data]\nfiles = [\"pairs.jsonl\"]\nseq_len = 64\nbatch_size = 4\nshuffle = false\n\n\
         [training]\nlogging_steps = 1\n{training}\n\n[output]\ndir = \"out-{name}\"\n\n{extra}\n",
        policy = fixtures.join("dpo_policy").display(),
        tokenizer = fixtures.join("dpo_tokenizer").display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The training records of a finished run.
fn records(dir: &Path, name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join(format!("out-{name}/metrics.jsonl"))).unwrap();
    text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).filter(|r| r.get("loss").is_some()).collect()
}

/// TRL's figures the comparisons leave aside: the Trainer's own.
const TRAINER_FIGURES: [&str; 4] = ["grad_norm", "learning_rate", "epoch", "step"];

/// Asserts that `record` holds each of TRL's figures in `trl` (`keys`, or all but [`TRAINER_FIGURES`]) within
/// 1e-5, prints the largest difference (`--nocapture` shows the parity figures), and returns how many it compared.
fn assert_matches_trl(what: &str, record: &Value, trl: &Value, keys: Option<&[&str]>) -> usize {
    let keys: Vec<&str> = match keys {
        Some(keys) => keys.to_vec(),
        None => trl.as_object().unwrap().keys().map(String::as_str).filter(|k| !TRAINER_FIGURES.contains(k)).collect(),
    };
    let mut worst = 0.0f64;
    for key in &keys {
        let ours = record[key].as_f64().unwrap_or_else(|| panic!("{what}: no {key} in {record}"));
        let theirs = trl[key].as_f64().unwrap_or_else(|| panic!("{what}: TRL logged no {key}"));
        assert!((ours - theirs).abs() <= 1e-5, "{what}: {key}: {ours} vs TRL {theirs}");
        worst = worst.max((ours - theirs).abs());
    }
    eprintln!("parity {what}: {} figures, largest |llmtrain - TRL| {worst:.1e}", keys.len());
    keys.len()
}

/// A fixture case's `[kto]` section, against `reference`.
fn kto_section(case: &Value, reference: &Path) -> String {
    format!(
        "[kto]\nloss_type = {}\ndesirable_weight = {}\nundesirable_weight = {}\nref_model = \"{}\"\n",
        case["loss_type"],
        case["desirable_weight"],
        case["undesirable_weight"],
        reference.display()
    )
}

/// [`config`] for one step of a fixture case at its `batch` and `accum`, on `data`, with `section`.
fn batched_config(dir: &Path, case: &Value, section: &str, data: &str) -> PathBuf {
    let name = case["name"].as_str().unwrap();
    let training = format!("{STEP_ONE}\ngradient_accumulation_steps = {}", case["accum"]);
    let path = config(dir, name, &training, section);
    let text = std::fs::read_to_string(&path).unwrap().replace("pairs.jsonl", data);
    std::fs::write(&path, text.replace("batch_size = 4", &format!("batch_size = {}", case["batch"]))).unwrap();
    path
}

/// One step at a learning rate too small to move a weight.
const STEP_ONE: &str = "max_steps = 1\nlearning_rate = 1e-30";

#[test]
fn dpo_from_a_config_logs_trls_step_one_loss_and_metrics_with_the_reference_a_checkpoint_or_precomputed() {
    let dir = job(1);
    let reference = trl_fixtures().join("dpo_reference");
    let trl = trl_record();
    for (name, dpo) in [
        ("checkpoint", format!("[dpo]\nref_model = \"{}\"\n", reference.display())),
        ("precomputed", format!("[dpo]\nref_model = \"{}\"\nprecompute_ref_log_probs = true\n", reference.display())),
    ] {
        let path = config(dir.path(), name, STEP_ONE, &dpo);
        let stdout = ok(&llmtrain(&["train", "--config", path.to_str().unwrap()]));
        assert!(stdout.contains("trainer: [dpo]") && stdout.contains("pairs: 4 training, 0 held out"), "{stdout}");
        assert_matches_trl(&format!("dpo {name}"), &records(dir.path(), name)[0], &trl, None);
        let final_dir = dir.path().join(format!("out-{name}/final"));
        assert!(final_dir.join("model.safetensors").is_file() && final_dir.join("tokenizer.json").is_file());
    }
}

#[test]
fn dpo_on_conversational_rows_tokenizes_with_the_chat_template_and_logs_every_metric_trl_logs() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(trl_fixtures().join("dpo_chat.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let rows: String = fixture["rows"].as_array().unwrap().iter().map(|row| format!("{row}\n")).collect();
    std::fs::write(dir.path().join("pairs.jsonl"), rows).unwrap();
    let dpo = format!("[dpo]\nref_model = \"{}\"\n", trl_fixtures().join("dpo_reference").display());
    let path = config(dir.path(), "chat", STEP_ONE, &dpo);
    let chat_tokenizer = trl_fixtures().join("dpo_chat_tokenizer");
    let text = std::fs::read_to_string(&path).unwrap().replace("batch_size = 4", "batch_size = 3");
    let text = text
        .replace(&trl_fixtures().join("dpo_tokenizer").display().to_string(), &chat_tokenizer.display().to_string());
    std::fs::write(&path, text).unwrap();
    ok(&llmtrain(&["train", "--config", path.to_str().unwrap()]));
    let compared = assert_matches_trl("dpo chat", &records(dir.path(), "chat")[0], &fixture["log"], None);
    assert_eq!(compared, 12, "loss, 4 rewards, 2 logps, 2 logits, entropy, mean_token_accuracy and num_tokens");
}

#[test]
fn dpo_starts_at_ln_2_with_the_reference_a_copy_or_the_policy_without_its_adapters_and_then_learns() {
    let dir = job(2);
    let lora = "[dpo]\n\n[lora]\nr = 4\nalpha = 8\ntarget_modules = \"all-linear\"\n";
    for (name, extra, reference) in
        [("copy", "[dpo]\n", "a frozen copy"), ("lora", lora, "the policy with its adapters disabled")]
    {
        let path = config(dir.path(), name, "max_steps = 6\nlearning_rate = 0.05", extra);
        let stdout = ok(&llmtrain(&["train", "--config", path.to_str().unwrap()]));
        assert!(stdout.contains(reference), "{stdout}");
        let records = records(dir.path(), name);
        let loss = |i: usize| records[i]["loss"].as_f64().unwrap();
        assert!((loss(0) - std::f64::consts::LN_2).abs() < 1e-6, "{name}: step 1 is ln 2: {}", loss(0));
        assert_eq!(records[0]["rewards/margins"].as_f64(), Some(0.0));
        assert!(loss(5) < loss(0) - 0.05, "{name}: the policy learns the preferences: {} -> {}", loss(0), loss(5));
    }
    assert!(dir.path().join("out-lora/final/adapter_model.safetensors").is_file(), "a LoRA run saves the adapter");
}

#[test]
fn preference_trainers_refuse_rows_of_another_format_an_unknown_loss_type_a_foreign_reference_and_two_sections() {
    let dir = job(1);
    std::fs::write(
        dir.path().join("mixed.jsonl"),
        "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n{\"text\": \"x\"}\n",
    )
    .unwrap();
    let path = config(dir.path(), "mixed", STEP_ONE, "[dpo]\n");
    let text = std::fs::read_to_string(&path).unwrap().replace("pairs.jsonl", "mixed.jsonl");
    std::fs::write(&path, text).unwrap();
    let out = llmtrain(&["train", "--config", path.to_str().unwrap()]);
    assert_one_line_error(&out, "mixed.jsonl:2: a text row, but DPO learns from preference rows");

    let path = config(dir.path(), "unknown", STEP_ONE, "[dpo]\nloss_type = [\"sigmoid\", \"dpop\"]\n");
    let out = llmtrain(&["train", "--config", path.to_str().unwrap()]);
    let line = assert_one_line_error(&out, "dpo.loss_type");
    assert!(line.contains("unknown DPO loss_type `dpop`; expected one of: sigmoid, hinge, ipo"), "{line}");

    let other = root().join("crates/core/tests/fixtures/mistral_mqa");
    let path = config(dir.path(), "vocab", STEP_ONE, &format!("[dpo]\nref_model = \"{}\"\n", other.display()));
    let out = llmtrain(&["train", "--config", path.to_str().unwrap()]);
    assert_one_line_error(&out, "mistral_mqa/config.json: vocab_size 256 but the policy's is 300");
    std::fs::write(
        dir.path().join("labels.jsonl"),
        "{\"prompt\": \"a\", \"completion\": \"b\", \"label\": true}\n{\"prompt\": \"a\", \"completion\": \"c\", \"label\": \"no\"}\n",
    )
    .unwrap();
    let path = config(dir.path(), "labels", STEP_ONE, "[kto]\n");
    let text = std::fs::read_to_string(&path).unwrap().replace("pairs.jsonl", "labels.jsonl");
    std::fs::write(&path, text).unwrap();
    let out = llmtrain(&["train", "--config", path.to_str().unwrap()]);
    assert_one_line_error(&out, "labels.jsonl:2: field `label`: expected true or false, found a string");
    let path = config(dir.path(), "both", STEP_ONE, "[kto]\n\n[dpo]\n");
    let out = llmtrain(&["train", "--config", path.to_str().unwrap()]);
    assert_one_line_error(&out, "both.toml: 2 trainer sections ([dpo], [kto])");
    for name in ["mixed", "unknown", "vocab", "labels", "both"] {
        assert!(!dir.path().join(format!("out-{name}/metrics.jsonl")).exists(), "{name}: no step ran");
    }
}

#[test]
fn dpo_sft_and_reward_on_two_launched_ranks_follow_one_process_with_the_whole_batch() {
    // ORPO's NLL and KTO's KL estimate are per device in TRL, so those two are compared with TRL's own two
    // processes instead (the next test).
    let dir = job(4);
    let training = "max_steps = 4\nlearning_rate = 0.02\nseed = 3";
    let cases: [(&str, &[&str]); 3] = [
        ("dpo", &["loss", "rewards/margins", "logps/chosen", "entropy", "logits/rejected", "mean_token_accuracy"]),
        ("sft", &["loss", "entropy", "mean_token_accuracy"]),
        ("reward", &["loss", "accuracy", "margin", "mean_reward"]),
    ];
    for (trainer, keys) in cases {
        // Unpacked, so both runs cut the rows into the same batches.
        let section = if trainer == "sft" { "[sft]\npacking = false\n".to_string() } else { format!("[{trainer}]\n") };
        let (single, ranks) = (format!("{trainer}-single"), format!("{trainer}-ranks"));
        let single_path = config(dir.path(), &single, training, &section);
        let ranks_path = config(dir.path(), &ranks, training, &section);
        // SFT trains on the same rows as prompt/completion pairs.
        let data = if trainer == "sft" { "sft.jsonl" } else { "pairs.jsonl" };
        for (path, batch) in [(&single_path, 4), (&ranks_path, 2)] {
            let text =
                std::fs::read_to_string(path).unwrap().replace("batch_size = 4", &format!("batch_size = {batch}"));
            std::fs::write(path, text.replace("shuffle = false", "shuffle = true").replace("pairs.jsonl", data))
                .unwrap();
        }
        if trainer == "sft" {
            let pairs = std::fs::read_to_string(dir.path().join("pairs.jsonl")).unwrap();
            let rows: String = pairs
                .lines()
                .map(|line| {
                    let row: Value = serde_json::from_str(line).unwrap();
                    format!("{}\n", serde_json::json!({"prompt": row["prompt"], "completion": row["chosen"]}))
                })
                .collect();
            std::fs::write(dir.path().join("sft.jsonl"), rows).unwrap();
        }
        ok(&llmtrain(&["train", "--config", single_path.to_str().unwrap()]));
        let args = ["launch", "--num-processes", "2", "--", "train", "--config", ranks_path.to_str().unwrap()];
        let stdout = ok(&llmtrain(&args));
        assert!(stdout.contains("ranks: 2"), "{trainer}: {stdout}");
        let (one, two) = (records(dir.path(), &single), records(dir.path(), &ranks));
        assert_eq!(one.len(), 4, "{trainer}");
        for (a, b) in one.iter().zip(&two) {
            for key in keys {
                let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
                assert!((x - y).abs() <= 1e-5, "{trainer}: step {}: {key}: one process {x}, two ranks {y}", a["step"]);
            }
        }
    }
}

#[test]
fn orpo_and_kto_on_two_launched_ranks_log_what_trl_logs_on_two_processes() {
    // TRL computes ORPO's NLL and KTO's KL estimate per device, so two ranks are compared with TRL's own two
    // processes (scripts/make_two_rank_fixtures.py), grad_norm included: the gradients average as DDP's do.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(trl_fixtures().join("two_ranks.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let lines = |rows: &Value| -> String { rows.as_array().unwrap().iter().map(|row| format!("{row}\n")).collect() };
    std::fs::write(dir.path().join("pairs.jsonl"), lines(&fixture["rows"])).unwrap();
    std::fs::write(dir.path().join("unpaired.jsonl"), lines(&fixture["kto_rows"])).unwrap();
    let reference = trl_fixtures().join("dpo_reference");
    let orpo = fixture["orpo"].as_array().unwrap().iter().map(|case| ("orpo", case));
    let kto = fixture["kto"].as_array().unwrap().iter().map(|case| ("kto", case));
    for (trainer, case) in orpo.chain(kto) {
        let name = case["name"].as_str().unwrap();
        let section = match trainer {
            "orpo" => format!("[orpo]\nbeta = {}\n", case["beta"]),
            _ => kto_section(case, &reference),
        };
        let data = if trainer == "kto" { "unpaired.jsonl" } else { "pairs.jsonl" };
        let path = batched_config(dir.path(), case, &section, data);
        let args = ["launch", "--num-processes", "2", "--", "train", "--config", path.to_str().unwrap()];
        let stdout = ok(&llmtrain(&args));
        assert!(stdout.contains("ranks: 2"), "{name}: {stdout}");
        let trl = &case["log"];
        let mut keys: Vec<&str> = trl.as_object().unwrap().keys().map(String::as_str).collect();
        keys.retain(|k| !TRAINER_FIGURES.contains(k) || *k == "grad_norm");
        let compared =
            assert_matches_trl(&format!("two ranks {name}"), &records(dir.path(), name)[0], trl, Some(&keys));
        assert!(compared >= 10, "{name}: {compared} figures compared");
    }
}

#[test]
fn orpo_from_a_config_logs_trls_step_one_loss_and_every_metric() {
    let dir = job(1);
    let text = std::fs::read_to_string(trl_fixtures().join("orpo.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    for case in fixture["cases"].as_array().unwrap().iter().filter(|case| case["bos_token_id"].is_null()) {
        let name = case["name"].as_str().unwrap().replace('.', "_");
        let path = config(dir.path(), &name, STEP_ONE, &format!("[orpo]\nbeta = {}\n", case["beta"]));
        let stdout = ok(&llmtrain(&["train", "--config", path.to_str().unwrap()]));
        assert!(stdout.contains("trainer: [orpo]"), "{stdout}");
        let compared = assert_matches_trl(&format!("orpo {name}"), &records(dir.path(), &name)[0], &case["log"], None);
        assert_eq!(compared, 12, "{name}: the loss, 9 pair metrics and 2 logits means");
    }
}

#[test]
fn kto_from_a_config_logs_trls_step_one_loss_and_every_metric_under_accumulation_too() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(trl_fixtures().join("kto.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let rows: String = fixture["rows"].as_array().unwrap().iter().map(|row| format!("{row}\n")).collect();
    std::fs::write(dir.path().join("unpaired.jsonl"), rows).unwrap();
    let reference = trl_fixtures().join("dpo_reference");
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let path = batched_config(dir.path(), case, &kto_section(case, &reference), "unpaired.jsonl");
        let stdout = ok(&llmtrain(&["train", "--config", path.to_str().unwrap()]));
        assert!(stdout.contains("trainer: [kto]") && stdout.contains("8 training"), "{stdout}");
        let compared = assert_matches_trl(&format!("kto {name}"), &records(dir.path(), name)[0], &case["log"], None);
        assert!(compared >= 10, "{name}: {compared} figures compared");
    }
}

#[test]
fn reward_training_from_a_reward_model_logs_trls_step_one_loss_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(trl_fixtures().join("reward.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let reward_model = trl_fixtures().join("reward_model");
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let rows: String = fixture["rows"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let mut row = row.clone();
                if let Some(margins) = case["margin"].as_array() {
                    row["margin"] = margins[i].clone();
                }
                format!("{row}\n")
            })
            .collect();
        std::fs::write(dir.path().join(format!("{name}.jsonl")), rows).unwrap();
        let section = match case["center_rewards_coefficient"].as_f64() {
            Some(c) => format!("[reward]\ncenter_rewards_coefficient = {c}\n"),
            None => "[reward]\n".to_string(),
        };
        let path = config(dir.path(), name, STEP_ONE, &section);
        let text = std::fs::read_to_string(&path).unwrap().replace("pairs.jsonl", &format!("{name}.jsonl"));
        let text = text
            .replace(&trl_fixtures().join("dpo_policy").display().to_string(), &reward_model.display().to_string())
            .replace(&trl_fixtures().join("dpo_tokenizer").display().to_string(), &reward_model.display().to_string());
        std::fs::write(&path, text).unwrap();
        let stdout = ok(&llmtrain(&["train", "--config", path.to_str().unwrap()]));
        assert!(stdout.contains("trainer: [reward], reference: the reward model"), "{stdout}");
        let keys: &[&str] = &["loss", "accuracy", "margin", "min_reward", "mean_reward", "max_reward", "num_tokens"];
        assert_matches_trl(&format!("reward {name}"), &records(dir.path(), name)[0], &case["log"], Some(keys));
    }
}

#[test]
fn a_reward_model_trained_from_a_causal_lm_is_a_sequence_classifier_that_scores_rows() {
    let dir = job(4);
    let path = config(dir.path(), "rm", "max_steps = 8\nlearning_rate = 0.01", "[reward]\n");
    let stdout = ok(&llmtrain(&["train", "--config", path.to_str().unwrap()]));
    assert!(stdout.contains("a new score head"), "{stdout}");
    let records = records(dir.path(), "rm");
    let accuracy = |i: usize| records[i]["accuracy"].as_f64().unwrap();
    assert!(accuracy(7) > accuracy(0) || accuracy(7) == 1.0, "the model learns the preferences: {records:?}");
    let final_dir = dir.path().join("out-rm/final");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(final_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"], serde_json::json!(["LlamaForSequenceClassification"]));
    assert_eq!(config["id2label"], serde_json::json!({"0": "LABEL_0"}));

    let data = dir.path().join("pairs.jsonl");
    let out = ok(&llmtrain(&["score", "--model", final_dir.to_str().unwrap(), "--data", data.to_str().unwrap()]));
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 16);
    assert_eq!(lines[0]["row"], 1);
    let preferred = lines.iter().filter(|l| l["chosen"].as_f64().unwrap() > l["rejected"].as_f64().unwrap()).count();
    assert_eq!(preferred, 16, "after training every chosen completion scores higher: {lines:?}");
    // --out keeps what is there unless told.
    let target = dir.path().join("scores.jsonl");
    std::fs::write(&target, "mine\n").unwrap();
    let args = ["score", "--model", final_dir.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out"];
    let refused = llmtrain(&[&args[..], &[target.to_str().unwrap()]].concat());
    assert_one_line_error(&refused, "scores.jsonl: exists; pass --overwrite");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "mine\n");
    ok(&llmtrain(&[&args[..], &[target.to_str().unwrap(), "--overwrite"]].concat()));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), out);
}

#[test]
fn sft_from_a_config_logs_trls_step_one_loss_and_token_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(trl_fixtures().join("sft.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    for (name, case) in fixture["cases"].as_object().unwrap() {
        let rows: String = case["rows"].as_array().unwrap().iter().map(|row| format!("{row}\n")).collect();
        std::fs::write(dir.path().join(format!("{name}.jsonl")), rows).unwrap();
        let sft = match case["completion_only_loss"].as_bool() {
            Some(on) => format!("[sft]\npacking = false\ncompletion_only_loss = {on}\n"),
            None => "[sft]\npacking = false\n".to_string(),
        };
        let path = config(dir.path(), name, STEP_ONE, &sft);
        let text = std::fs::read_to_string(&path).unwrap().replace("pairs.jsonl", &format!("{name}.jsonl"));
        std::fs::write(&path, text).unwrap();
        ok(&llmtrain(&["train", "--config", path.to_str().unwrap()]));
        let keys: &[&str] = &["loss", "entropy", "mean_token_accuracy", "num_tokens"];
        assert_matches_trl(&format!("sft {name}"), &records(dir.path(), name)[0], &case["log"], Some(keys));
    }
}

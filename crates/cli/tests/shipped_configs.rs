//! The configs README points users to (`configs/*.toml`) run as shipped: two steps each, on the repository's data,
//! the finetuning ones from a tiny checkpoint in place of the runs they build on (`--model`).

use std::path::Path;

use crate::common::{llmtrain, root};
use crate::launch_common::ok;

/// The trl fixtures' tiny Llama with its tokenizer, as one HF directory.
fn tiny_model(dir: &Path) -> std::path::PathBuf {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    let fixtures = root().join("crates/trl/tests/fixtures");
    for source in ["dpo_policy", "dpo_tokenizer"] {
        for entry in std::fs::read_dir(fixtures.join(source)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
        }
    }
    model
}

#[test]
fn every_shipped_config_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let mut names: Vec<String> = std::fs::read_dir(root().join("configs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 5, "{names:?}");
    for name in &names {
        let mut config = root().join(format!("configs/{name}.toml"));
        // PPO's reward model is another run's: a copy of the config reads the tiny fixture's instead.
        let text = std::fs::read_to_string(&config).unwrap();
        if text.contains("../runs/reward/final") {
            let reward = root().join("crates/trl/tests/fixtures/reward_model");
            let text = text.replace("../runs/reward/final", reward.to_str().unwrap());
            config = dir.path().join(format!("{name}.toml"));
            std::fs::write(&config, text.replace("\"../", &format!("\"{}/", root().display()))).unwrap();
        }
        let out = dir.path().join(format!("out-{name}"));
        let mut args = vec!["train", "--config", config.to_str().unwrap(), "--max-steps", "2"];
        args.extend(["--output-dir", out.to_str().unwrap()]);
        // The quickstart trains its base from scratch; the others finetune one.
        if name != "quickstart" {
            args.extend(["--model", model.to_str().unwrap()]);
        }
        ok(&llmtrain(&args));
        let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let steps = text.lines().filter(|line| line.contains("\"loss\"")).count();
        assert!(steps >= 1, "{name}: no training record in {text}");
        assert!(out.join("final").is_dir(), "{name}: no final/");
    }
}

//! The configs README points users to (`configs/*.toml`) run as shipped: two steps each, on the repository's data,
//! the finetuning ones from a tiny checkpoint in place of the runs they build on (`--model`). Each names its row of
//! the decision guide in its first lines, and every row has a config.

use crate::common::{MPI_CONFIGS, assert_trained, llmtrain, root, tiny_model};
use crate::launch_common::ok;

/// The rows of the decision guide (README, DESIGN.md), as a config's header names them, with the name
/// `llmtrain recommend --json` gives each (`scenario`).
const ROWS: &[&str] = &[
    "simple finetuning",
    "7B–13B models, one GPU",
    "70B+ models",
    "RLHF / DPO alignment",
    "multi-node cluster",
    "clean code structure",
];
const SCENARIOS: &[&str] = &["simple-finetuning", "7b-13b", "70b+", "rlhf-dpo", "multi-node", "clean-code"];

/// The shipped configs' names (file stems), sorted.
fn shipped_configs() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("configs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 5, "{names:?}");
    names
}

/// The `[scaling] launcher` a config names, if any (a line scan: the shipped configs are plain TOML).
fn scaling_launcher(text: &str) -> Option<String> {
    let mut section = "";
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if let Some(name) = line.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
            section = name.trim();
        } else if let Some((key, value)) = line.split_once('=')
            && section == "scaling"
            && key.trim() == "launcher"
        {
            return Some(value.trim().trim_matches('"').to_string());
        }
    }
    None
}

#[test]
fn every_shipped_config_names_its_decision_guide_row() {
    let mut rows_seen = Vec::new();
    for name in shipped_configs() {
        let text = std::fs::read_to_string(root().join(format!("configs/{name}.toml"))).unwrap();
        let lines: Vec<&str> = text.lines().take(3).collect();
        let [guide, recommend, command] = lines[..] else { panic!("{name}: fewer than 3 lines") };
        let row = guide
            .strip_prefix("# Decision guide: ")
            .and_then(|rest| rest.split_once(" — "))
            .map(|(row, _)| row)
            .unwrap_or_else(|| panic!("{name}.toml does not start with `# Decision guide: <row> — ...`: {guide}"));
        assert!(ROWS.contains(&row), "{name}: `{row}` is not a row of the decision guide {ROWS:?}");
        assert!(guide.contains(" → llmtrain-"), "{name}: the row names no llmtrain crate: {guide}");
        assert!(recommend.starts_with("#   llmtrain recommend --"), "{name}: line 2 is not the recommend command");
        // The recommend command it shows lands in its row.
        let flags = recommend["#   llmtrain ".len()..].split('#').next().unwrap_or_default();
        let mut args: Vec<&str> = flags.split_whitespace().collect();
        args.push("--json");
        let out = llmtrain(&args);
        let stdout = ok(&out);
        let json: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{name}: {e}: {stdout}"));
        let scenario = SCENARIOS[ROWS.iter().position(|r| *r == row).unwrap_or(0)];
        assert_eq!(json["scenario"].as_str(), Some(scenario), "{name}: `{flags}` lands elsewhere");
        assert!(
            command.starts_with("#   llmtrain ") && command.contains(&format!(" --config configs/{name}.toml")),
            "{name}: line 3 is not the command that runs it: {command}"
        );
        rows_seen.push(row.to_string());
    }
    for row in ROWS {
        assert!(rows_seen.iter().any(|seen| seen == row), "no shipped config for the row `{row}`");
    }
}

#[test]
fn every_shipped_config_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    for name in &shipped_configs() {
        let mut config = root().join(format!("configs/{name}.toml"));
        let text = std::fs::read_to_string(&config).unwrap();
        // Workers as processes need the `mpi` feature: the launch_mpi target runs these.
        if let Some(launcher @ ("mpirun" | "srun")) = scaling_launcher(&text).as_deref() {
            assert!(
                MPI_CONFIGS.contains(&name.as_str()),
                "{name}: [scaling] launcher = \"{launcher}\", so the e2e tests skip it, but common::MPI_CONFIGS \
                 (run by the launch_mpi target) does not list it"
            );
            continue;
        }
        // PPO's reward model is another run's: a copy of the config reads the tiny fixture's instead.
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
        assert_trained(name, &out);
    }
    for name in MPI_CONFIGS {
        assert!(root().join(format!("configs/{name}.toml")).is_file(), "common::MPI_CONFIGS lists {name}, not shipped");
    }
}

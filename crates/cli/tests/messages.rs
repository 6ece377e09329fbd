//! What a new user reads: every flag has a help line and a place in README's command table, missing paths say
//! what was probably meant, warnings look like every other message, and a terminal shows a progress bar, not
//! JSON lines.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{assert_one_line_error, llmtrain, llmtrain_bin, root};

/// The subcommands README's table documents, as argument lists.
const COMMANDS: [&[&str]; 10] = [
    &["train"],
    &["logits"],
    &["merge"],
    &["generate"],
    &["convert"],
    &["tokenizer", "train"],
    &["tokenizer", "encode"],
    &["launch"],
    &["config"],
    &["estimate-memory"],
];

/// `(flag, its help text)` for every option `llmtrain <command> --help` lists.
fn flags_with_help(command: &[&str]) -> Vec<(String, String)> {
    let out = llmtrain(&[command, &["--help"]].concat());
    assert!(out.status.success(), "{command:?} --help failed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let mut flags = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(start) =
            trimmed.find("--").filter(|&at| trimmed.starts_with("--") || trimmed.starts_with('-') && at <= 4)
        else {
            continue;
        };
        let spec = &trimmed[start..];
        let flag: String = spec.chars().take_while(|c| *c == '-' || c.is_ascii_alphanumeric()).collect();
        // clap puts the help after two or more spaces on the same line, or on the next, more indented, line.
        let rest = spec.split_once("  ").map(|(_, help)| help.trim().to_string()).unwrap_or_default();
        let help = if rest.is_empty() {
            lines
                .get(i + 1)
                .filter(|next| next.starts_with("          "))
                .map(|n| n.trim().to_string())
                .unwrap_or_default()
        } else {
            rest
        };
        flags.push((flag, help));
    }
    assert!(!flags.is_empty(), "no flags parsed from:\n{text}");
    flags
}

#[test]
fn every_flag_has_a_help_line() {
    let mut missing = Vec::new();
    for command in COMMANDS {
        for (flag, help) in flags_with_help(command) {
            if help.is_empty() || help.starts_with("--") || help.starts_with('[') {
                missing.push(format!("llmtrain {} {flag}", command.join(" ")));
            }
        }
    }
    assert!(missing.is_empty(), "flags without a help line: {missing:?}");
}

#[test]
fn readme_lists_every_flag_of_every_command() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut missing = Vec::new();
    for command in COMMANDS {
        let row_start = format!("| `llmtrain {}", command.join(" "));
        let Some(row) = readme.lines().find(|l| l.starts_with(&row_start)) else {
            missing.push(format!("no table row for llmtrain {}", command.join(" ")));
            continue;
        };
        for (flag, _) in flags_with_help(command) {
            let generic = ["--help", "--version", "--device"].contains(&flag.as_str());
            // The whole flag: `--chat` is not listed by `--chat-template`.
            let listed = row
                .match_indices(flag.as_str())
                .any(|(at, _)| !row[at + flag.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-'));
            if !generic && !listed {
                missing.push(format!("llmtrain {} {flag}", command.join(" ")));
            }
        }
    }
    assert!(missing.is_empty(), "README's command table misses: {missing:?}");
}

#[test]
fn missing_and_mistaken_paths_say_what_was_meant() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("shakespeare")).unwrap();
    std::fs::write(dir.path().join("shakespeare/a.txt"), "to be or not to be\n".repeat(50)).unwrap();
    let config = "[model]\nhidden_size = 32\nnum_hidden_layers = 1\nnum_attention_heads = 2\n\
                  [tokenizer]\ntrain_files = [\"shakespear\"]\nvocab_size = 300\n\
                  [data]\nfiles = [\"shakespear\"]\nseq_len = 16\nbatch_size = 2\n[output]\ndir = \"out\"\n";
    std::fs::write(dir.path().join("run.toml"), config).unwrap();
    let run = Command::new(llmtrain_bin())
        .args(["train", "--config", dir.path().join("run.toml").to_str().unwrap()])
        .env("LLMTRAIN_CACHE", dir.path().join("cache"))
        .output()
        .unwrap();
    let err = assert_one_line_error(&run, "data file");
    assert!(err.contains("shakespear does not exist; did you mean") && err.ends_with("shakespeare?"), "{err}");
    assert!(!err.contains("entity not found"), "{err}");

    // A run's output directory where its final/ was meant, and an adapter where a model was meant.
    let run_dir = dir.path().join("run");
    std::fs::create_dir_all(run_dir.join("final")).unwrap();
    std::fs::create_dir_all(run_dir.join("checkpoint-4")).unwrap();
    let err = assert_one_line_error(
        &llmtrain(&["logits", "--model", run_dir.to_str().unwrap(), "--tokens", "1"]),
        "training run's output directory",
    );
    assert!(err.ends_with(&format!("did you mean {}?", run_dir.join("final").display())), "{err}");
    let adapter = root().join("crates/fastlora/tests/fixtures/lora");
    let err = assert_one_line_error(
        &llmtrain(&["generate", "--model", adapter.to_str().unwrap(), "--prompt", "hi"]),
        "is a PEFT adapter, not a whole model",
    );
    assert!(err.contains("--adapter"), "{err}");
}

#[test]
fn an_unknown_section_is_named_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[model]\nhidden_size = 32\n[data]\nfiles = [\"a.txt\"]\nseq_len = 16\nbatch_size = 2\n\
                  [trainig]\nmax_steps = 3\n";
    std::fs::write(dir.path().join("run.toml"), config).unwrap();
    let run = llmtrain(&["train", "--config", dir.path().join("run.toml").to_str().unwrap()]);
    assert_one_line_error(&run, "unknown section [trainig]; did you mean [training]?");
}

/// A short from-scratch run's config in `dir` (tiny model, 6 steps, logging every step).
fn tiny_run(dir: &Path) {
    let corpus = std::fs::read_to_string(root().join("data/shakespeare/hamlet.txt")).unwrap();
    std::fs::create_dir_all(dir.join("corpus")).unwrap();
    std::fs::write(dir.join("corpus/hamlet.txt"), &corpus[..20_000]).unwrap();
    let config = "[model]\nhidden_size = 32\nintermediate_size = 64\nnum_hidden_layers = 1\nnum_attention_heads = 2\n\
                  [tokenizer]\ntrain_files = [\"corpus\"]\nvocab_size = 300\n\
                  [data]\nfiles = [\"corpus\"]\nseq_len = 16\nbatch_size = 2\n\
                  [training]\nmax_steps = 6\nlogging_steps = 1\n[output]\ndir = \"out\"\n";
    std::fs::write(dir.join("run.toml"), config).unwrap();
}

#[test]
fn a_terminal_shows_the_progress_bar_and_summary_not_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    tiny_run(dir.path());
    let command = format!(
        "LLMTRAIN_CACHE={} {} train --config {}",
        dir.path().join("cache").display(),
        llmtrain_bin().display(),
        dir.path().join("run.toml").display()
    );
    // `script` gives the run a terminal (a pty) and copies what it shows to our stdout.
    let out = Command::new("script").args(["-qec", &command, "/dev/null"]).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(!shown.contains("{\"step\""), "JSON lines on a terminal:\n{shown}");
    assert!(shown.contains("method: pretraining from scratch") && shown.contains("final train loss"), "{shown}");
    let metrics = std::fs::read_to_string(dir.path().join("out/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"loss\"")).count(), 6, "metrics.jsonl keeps every record");
    // Without a terminal (a log file), the JSON lines go to stderr.
    let out = Command::new(llmtrain_bin())
        .args(["train", "--config", dir.path().join("run.toml").to_str().unwrap(), "--overwrite"])
        .env("LLMTRAIN_CACHE", dir.path().join("cache"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.starts_with("{\"step\"")).count() >= 6);
}

#[test]
fn warnings_look_like_every_other_message() {
    let dir = tempfile::tempdir().unwrap();
    tiny_run(dir.path());
    let train = |extra: &[&str]| {
        Command::new(llmtrain_bin())
            .args([&["train", "--config", dir.path().join("run.toml").to_str().unwrap()], extra].concat())
            .env("LLMTRAIN_CACHE", dir.path().join("cache"))
            .output()
            .unwrap()
    };
    assert!(train(&["--max-steps", "3"]).status.success());
    // A damaged checkpoint is passed over with a warning.
    std::fs::write(dir.path().join("out/checkpoint-3/optimizer.safetensors"), b"damaged").unwrap();
    let out = train(&["--resume"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warning =
        stderr.lines().find(|l| l.contains("skipping damaged checkpoint")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(warning.starts_with("warning: skipping damaged checkpoint"), "{warning}");
    assert!(!stderr.contains("llmtrain_core::"), "{stderr}");
}

//! `llmtrain config`: the questionnaire on stdin, `--non-interactive` flags, re-asked answers, invalid
//! combinations and the default location.

use crate::common;

use std::path::Path;

use common::{assert_one_line_error, llmtrain, llmtrain_with_stdin};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_success(out: &std::process::Output) {
    assert!(out.status.success(), "failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn answers_piped_on_stdin_give_the_expected_toml() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("launch.toml");
    // environment, machine type, machines, rank, IP, port, processes, GPU ids, launcher, hostfile, precision
    let answers = "\nmulti-gpu\n2\n1\n10.0.0.7\n29555\n8\n0,1,2,3\nmpirun\nhosts.txt\nbf16\n";
    let out = llmtrain_with_stdin(&["config", "--output", path.to_str().unwrap()], answers, &[]);
    assert_success(&out);
    assert_eq!(stdout(&out), format!("wrote {}\n", path.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Which type of machine are you using?"), "questions go to stderr:\n{stderr}");
    let expected = "\
distributed_type = \"multi-gpu\"
num_machines = 2
machine_rank = 1
main_process_ip = \"10.0.0.7\"
main_process_port = 29555
num_processes = 8
gpu_ids = \"0,1,2,3\"
mixed_precision = \"bf16\"
launcher = \"mpirun\"
hostfile = \"hosts.txt\"
";
    let text = read(&path);
    assert!(text.starts_with('#'), "a header comment says what wrote it:\n{text}");
    let body: String = text.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect();
    assert_eq!(body, expected);
}

#[test]
fn empty_answers_take_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("launch.toml");
    let out = llmtrain_with_stdin(&["config", "--output", path.to_str().unwrap()], "\n\n\n", &[]);
    assert_success(&out);
    let text = read(&path);
    for line in
        ["distributed_type = \"no\"", "num_processes = 1", "launcher = \"in-process\"", "mixed_precision = \"no\""]
    {
        assert!(text.lines().any(|l| l == line), "`{line}` not in:\n{text}");
    }
}

#[test]
fn non_interactive_flags_answer_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/launch.toml");
    #[rustfmt::skip]
    let args = [
        "config", "--non-interactive", "--output", path.to_str().unwrap(),
        "--distributed-type", "multi-cpu", "--num-machines", "2", "--machine-rank", "1",
        "--main-process-ip", "node0", "--main-process-port", "1234", "--num-processes", "4",
        "--mixed-precision", "fp16", "--launcher", "srun",
    ];
    // Nothing is read from stdin: an empty one must not matter.
    let out = llmtrain_with_stdin(&args, "", &[]);
    assert_success(&out);
    assert_eq!(stdout(&out), format!("wrote {}\n", path.display()));
    assert!(out.stderr.is_empty(), "no questions: {}", String::from_utf8_lossy(&out.stderr));
    let text = read(&path);
    for line in [
        "distributed_type = \"multi-cpu\"",
        "num_machines = 2",
        "machine_rank = 1",
        "main_process_ip = \"node0\"",
        "main_process_port = 1234",
        "num_processes = 4",
        "mixed_precision = \"fp16\"",
        "launcher = \"srun\"",
    ] {
        assert!(text.lines().any(|l| l == line), "`{line}` not in:\n{text}");
    }

    // Unset flags take the questionnaire's defaults; the file is replaced whole.
    let out = llmtrain(&["config", "--non-interactive", "--output", path.to_str().unwrap()]);
    assert_success(&out);
    let text = read(&path);
    assert!(text.contains("distributed_type = \"no\"") && !text.contains("node0"), "{text}");
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "temporary file left behind");
}

#[test]
fn a_bad_answer_is_asked_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("launch.toml");
    // "gpu" is not a machine type, "two" not a count; then valid answers.
    let answers = "\ngpu\nmulti-gpu\ntwo\n1\n2\n\n\nfp16\n";
    let out = llmtrain_with_stdin(&["config", "--output", path.to_str().unwrap()], answers, &[]);
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("Which type of machine are you using?").count(), 2, "{stderr}");
    assert!(stderr.contains("Invalid answer: `gpu` is not one of the choices"), "{stderr}");
    assert!(stderr.contains("Invalid answer: `two` is not a whole number"), "{stderr}");
    let text = read(&path);
    assert!(text.contains("num_processes = 2") && text.contains("mixed_precision = \"fp16\""), "{text}");
}

#[test]
fn answers_ending_early_fail_with_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("launch.toml");
    let out = llmtrain_with_stdin(&["config", "--output", path.to_str().unwrap()], "\nmulti-gpu\n", &[]);
    assert_one_line_error(&out, "the answers ended before one to \"How many different machines");
    assert!(!path.exists(), "nothing written");
}

#[test]
fn an_invalid_combination_fails_with_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("launch.toml");
    #[rustfmt::skip]
    let args = [
        "config", "--non-interactive", "--output", path.to_str().unwrap(), "--distributed-type", "multi-gpu",
        "--num-machines", "2", "--machine-rank", "3", "--main-process-ip", "10.0.0.1",
    ];
    let out = llmtrain(&args);
    // The values came from flags: the error names the flags.
    assert_one_line_error(&out, "--machine-rank 3 must be below --num-machines 2");
    assert!(!path.exists(), "nothing written");

    #[rustfmt::skip]
    let args = [
        "config", "--non-interactive", "--output", path.to_str().unwrap(), "--distributed-type", "no",
        "--num-processes", "4",
    ];
    assert_one_line_error(&llmtrain(&args), "--num-processes 4 with --distributed-type no (one process)");

    let out = llmtrain(&["config", "--non-interactive", "--mixed-precision", "fp8"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mixed precision `fp8`"));
}

#[test]
fn the_default_location_follows_llmtrain_config_dir_then_xdg() {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("llmtrain-config");
    let config_dir_str = config_dir.to_str().unwrap();
    let xdg = dir.path().join("xdg");
    let xdg_str = xdg.to_str().unwrap();
    let args = ["config", "--non-interactive", "--distributed-type", "multi-cpu", "--num-processes", "2"];

    let out = llmtrain_with_stdin(
        &args,
        "",
        &[("LLMTRAIN_CONFIG_DIR", Some(config_dir_str)), ("XDG_CONFIG_HOME", Some(xdg_str))],
    );
    assert_success(&out);
    let expected = config_dir.join("default_config.toml");
    assert_eq!(stdout(&out), format!("wrote {}\n", expected.display()));
    assert!(read(&expected).contains("num_processes = 2"));

    let out = llmtrain_with_stdin(&args, "", &[("LLMTRAIN_CONFIG_DIR", None), ("XDG_CONFIG_HOME", Some(xdg_str))]);
    assert_success(&out);
    let expected = xdg.join("llmtrain/default_config.toml");
    assert_eq!(stdout(&out), format!("wrote {}\n", expected.display()));
    assert!(expected.exists());
}

/// The `llmtrain` under test is built without `cuda` / `wgpu`, so inference picks multi-cpu.
#[test]
fn more_than_one_process_or_machine_infers_multi_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("launch.toml");
    let output = path.to_str().unwrap();
    let out = llmtrain(&["config", "--non-interactive", "--output", output, "--num-processes", "2"]);
    assert_success(&out);
    let text = read(&path);
    for line in ["distributed_type = \"multi-cpu\"", "num_processes = 2", "launcher = \"in-process\""] {
        assert!(text.lines().any(|l| l == line), "`{line}` not in:\n{text}");
    }

    // Several machines: multi-cpu, one process per machine, mpirun.
    #[rustfmt::skip]
    let args = ["config", "--non-interactive", "--output", output, "--num-machines", "2", "--main-process-ip", "node0"];
    assert_success(&llmtrain(&args));
    let text = read(&path);
    for line in ["distributed_type = \"multi-cpu\"", "num_processes = 2", "launcher = \"mpirun\""] {
        assert!(text.lines().any(|l| l == line), "`{line}` not in:\n{text}");
    }

    // Asked interactively, the flags still answer the machine type.
    // environment, machines, launcher, precision
    let out = llmtrain_with_stdin(&["config", "--output", output, "--num-processes", "2"], "\n\n\n\n", &[]);
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("Which type of machine"), "{stderr}");
    assert!(read(&path).contains("distributed_type = \"multi-cpu\""));

    // Errors name the flags that gave the values, not the config keys.
    #[rustfmt::skip]
    let args = [
        "config", "--non-interactive", "--output", output, "--num-processes", "3", "--num-machines", "2",
        "--main-process-ip", "node0",
    ];
    let line =
        assert_one_line_error(&llmtrain(&args), "--num-processes 3 does not divide evenly over --num-machines 2");
    assert!(!line.contains("num_processes"), "{line}");
    let args = ["config", "--non-interactive", "--output", output, "--num-machines", "2"];
    assert_one_line_error(&llmtrain(&args), "--num-machines 2: --main-process-ip (the address of machine rank 0)");
}

#[test]
fn launch_spellings_of_the_main_address_and_port_are_aliases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("launch.toml");
    #[rustfmt::skip]
    let args = [
        "config", "--non-interactive", "--output", path.to_str().unwrap(), "--num-machines", "2",
        "--main-address", "node0", "--main-port", "1234",
    ];
    assert_success(&llmtrain(&args));
    let text = read(&path);
    for line in ["main_process_ip = \"node0\"", "main_process_port = 1234"] {
        assert!(text.lines().any(|l| l == line), "`{line}` not in:\n{text}");
    }
}

#[test]
fn a_file_that_is_not_a_launch_config_is_not_replaced_unasked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.toml");
    std::fs::write(&path, "# my notes\n").unwrap();
    let args = ["config", "--non-interactive", "--output", path.to_str().unwrap(), "--num-processes", "2"];
    assert_one_line_error(&llmtrain(&args), "is not a launch config written by `llmtrain config`");
    assert_eq!(read(&path), "# my notes\n");
    assert_success(&llmtrain(&[&args[..], &["--overwrite"]].concat()));
    // Its own file it replaces without asking.
    assert_success(&llmtrain(&args));
    assert!(read(&path).contains("num_processes = 2"));
}

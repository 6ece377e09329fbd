//! `llmtrain recommend (--model DIR | --params 7B) [--task sft|dpo|kto|orpo|reward|grpo|rloo|ppo|pretrain]
//! [--gpus N] [--gpu-memory 80GB] [--nodes M] [--cpu-memory 512GB] [--seq-len T] [--batch B]
//! [--method auto|full|lora|qlora] [--json] [--out FILE.toml [--data FILE] [--reward F] [--reward-model DIR]]
//! [--calibrate]`: the decision guide walked with the memory estimator (`crate::guide`); a table of the candidates
//! or one JSON object, and with `--out` a run config `llmtrain train` runs as is. Nothing fitting is an error.

use std::io::Write as _;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use llmtrain_core::hf::{Head, HfConfig};
use llmtrain_memopt::estimate::{EstimateInput, Method, Offload, estimate};

use super::model_size::ModelSize;
use crate::guide::write::{ModelSource, Plan, Rewards, render};
use crate::guide::{self, GIB, Hardware, MethodChoice, Recommendation, Task, Workload};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub size: ModelSize,
    /// What is trained: sft, dpo, kto, orpo, reward, grpo, rloo, ppo or pretrain.
    #[arg(long, default_value = "sft")]
    pub task: String,
    /// GPUs in all (spread evenly over --nodes).
    #[arg(long, default_value_t = 1)]
    pub gpus: usize,
    /// Memory per GPU: 80GB, 24GiB, 16000MB... (GB and GiB both count 2^30 bytes: an "80 GB" GPU holds 80 GiB).
    #[arg(long, default_value = "80GB")]
    pub gpu_memory: String,
    /// Machines.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Host memory per machine, checked against what offload moves there (default: not checked).
    #[arg(long)]
    pub cpu_memory: Option<String>,
    /// Tokens per row.
    #[arg(long, default_value_t = 1024)]
    pub seq_len: usize,
    /// Rows per device per micro-batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// auto (the guide's pick), full, lora or qlora.
    #[arg(long, default_value = "auto")]
    pub method: String,
    /// LoRA rank of the adapter candidates.
    #[arg(long, default_value_t = 16)]
    pub lora_rank: usize,
    /// One JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write the chosen setup as a run config.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace an existing --out file.
    #[arg(long, requires = "out")]
    pub overwrite: bool,
    /// Training data for the written config (default: the repository's sample for the task, if it is here).
    #[arg(long)]
    pub data: Vec<PathBuf>,
    /// A reward function of grpo/rloo: exact_match, format, soft_overlong_punishment (repeatable).
    #[arg(long)]
    pub reward: Vec<String>,
    /// A reward model directory (a one-label sequence classifier) for grpo, rloo or ppo.
    #[arg(long)]
    pub reward_model: Option<PathBuf>,
    /// Also run two steps of the chosen config on this machine and print the measured peak beside the prediction.
    #[arg(long)]
    pub calibrate: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let task = Task::from_name(&args.task)
        .ok_or_else(|| anyhow!("--task {}: expected one of {}", args.task, Task::NAMES.join(", ")))?;
    let method = match args.method.as_str() {
        "auto" => MethodChoice::Auto,
        "full" => MethodChoice::Only(Method::Full),
        "lora" => MethodChoice::Only(Method::Lora),
        "qlora" => MethodChoice::Only(Method::Qlora),
        other => bail!("--method {other}: expected auto, full, lora or qlora"),
    };
    let hardware = Hardware {
        gpus: args.gpus,
        nodes: args.nodes,
        gpu_memory: parse_size(&args.gpu_memory).ok_or_else(|| size_error("--gpu-memory", &args.gpu_memory))?,
        cpu_memory: match &args.cpu_memory {
            Some(text) => Some(parse_size(text).ok_or_else(|| size_error("--cpu-memory", text))?),
            None => None,
        },
    };
    let (params, model, shape_name) = model_shape(args, task)?;
    let work = Workload {
        params,
        model: model.clone(),
        task,
        method,
        batch: args.batch,
        seq_len: args.seq_len,
        lora_rank: args.lora_rank,
    };
    let recommendation = guide::recommend(&work, &hardware)?;
    let fits = recommendation.chosen.is_some();
    let pick = recommendation.pick().cloned();
    let written = match (&args.out, &pick) {
        (Some(out), Some(pick)) if fits => {
            let plan_text = config_text(args, &work, &hardware, &recommendation, pick, out)?;
            write_config(out, &plan_text, args.overwrite)?;
            Some(out.clone())
        }
        _ => None,
    };
    if args.json {
        println!("{}", json(&work, &hardware, &recommendation, written.as_deref()));
    } else {
        print_table(&shape_name, &work, &hardware, &recommendation, written.as_deref());
    }
    if !fits {
        bail!("{}", nothing_fits(&hardware, &recommendation));
    }
    if args.calibrate
        && let Some(pick) = pick
    {
        calibrate(args, &work, &hardware, &recommendation, &pick)?;
    }
    Ok(())
}

/// Bytes of a size such as `80GB`, `24GiB`, `16000MB`, `1.5TB` or `1073741824`.
pub fn parse_size(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.trim().parse().ok()?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => GIB * 1024.0,
        _ => return None,
    };
    (value.is_finite() && value > 0.0).then_some(value * scale)
}

fn size_error(flag: &str, text: &str) -> anyhow::Error {
    anyhow!("{flag} {text}: expected a size such as 80GB, 24GiB or 16000MB")
}

/// Parameters, shape and a line naming the shape, from --model or --params.
fn model_shape(args: &Args, task: Task) -> Result<(u64, Option<llmtrain_core::model::ModelConfig>, String)> {
    let sized = args.size.resolve()?;
    if let (Some(dir), Head::SequenceClassification { .. }, false) =
        (&args.size.model, sized.head, task == Task::Reward)
    {
        bail!(
            "--model {}: a sequence classifier (a reward model) has no language-model head, so it cannot be \
             trained with --task {}: give a causal LM (a reward model goes in --reward-model)",
            dir.display(),
            task.name()
        );
    }
    let described = match (&args.size.model, &sized.assumed) {
        (Some(dir), _) => format!("{} (its config.json)", dir.display()),
        (None, Some(shape)) => shape.describe(),
        (None, None) => format!(
            "{} parameters, no standard shape: model states only",
            args.size.params.as_deref().unwrap_or_default()
        ),
    };
    Ok((sized.params, sized.config, described))
}

fn gib(bytes: f64) -> String {
    guide::show_bytes(bytes)
}

fn print_table(shape: &str, work: &Workload, hardware: &Hardware, r: &Recommendation, written: Option<&Path>) {
    let count = if work.params >= 1_000_000_000 {
        format!("{:.2} B", work.params as f64 / 1e9)
    } else {
        format!("{:.2} M", work.params as f64 / 1e6)
    };
    println!("model: {shape}, {count} parameters");
    println!(
        "job: --task {}, {} rows x {} tokens per device; {} x {} GPU{} ({} usable each: {:.0}% kept free for \
         the CUDA context and the allocator)",
        work.task.name(),
        work.batch,
        work.seq_len,
        hardware.gpus,
        gib(hardware.gpu_memory),
        if hardware.nodes > 1 { format!(" on {} machines", hardware.nodes) } else { String::new() },
        gib(hardware.usable()),
        guide::HEADROOM * 100.0
    );
    println!("order: {}", r.order);
    println!("| # | candidate (bf16 mixed precision) | per device | host per machine | verdict |");
    println!("|---:|---|---:|---:|---|");
    for (index, c) in r.considered.iter().enumerate() {
        let host = if c.host_per_node > 0.0 { gib(c.host_per_node) } else { "-".to_string() };
        println!(
            "| {} | {} | {} | {host} | {} |",
            index + 1,
            c.candidate.describe(),
            c.per_device.map_or("-".to_string(), gib),
            c.why(hardware.usable())
        );
    }
    let Some(index) = r.chosen else { return };
    let choice = &r.considered[index];
    let (row, tool) = r.scenario().row();
    let crates: Vec<String> = r.crates.iter().map(|name| format!("llmtrain-{name}")).collect();
    println!("choice: {}", choice.candidate.describe());
    println!("  decision guide: {row} ({tool}) -> {}", crates.join(" + "));
    let c = choice.candidate;
    println!(
        "  method {}, ZeRO stage {}, offload {}, mixed precision bf16, gradient checkpointing {}",
        c.method_name(),
        c.zero_stage,
        c.offload.name(),
        if c.memopt { "on" } else { "off" }
    );
    println!(
        "  predicted per device: {} of {} usable",
        choice.per_device.map_or("-".to_string(), gib),
        gib(hardware.usable())
    );
    if let Some(path) = written {
        println!("config: {} (run: {})", path.display(), run_command(path, hardware));
    }
}

fn run_command(config: &Path, hardware: &Hardware) -> String {
    let config = config.display();
    if hardware.nodes == 1 && hardware.gpus > 1 {
        format!("llmtrain launch --num-processes {} -- train --config {config}", hardware.gpus)
    } else {
        format!("llmtrain train --config {config}")
    }
}

fn json(work: &Workload, hardware: &Hardware, r: &Recommendation, written: Option<&Path>) -> String {
    let pick = r.pick();
    let candidate = pick.map(|p| p.candidate);
    let candidates: Vec<serde_json::Value> = r
        .considered
        .iter()
        .map(|c| {
            serde_json::json!({
                "candidate": c.candidate.describe(),
                "method": c.candidate.method_name(),
                "zero_stage": c.candidate.zero_stage,
                "offload": c.candidate.offload.name(),
                "gradient_checkpointing": c.candidate.memopt,
                "per_device_bytes": c.per_device.map(|b| b.round() as u64),
                "host_bytes_per_node": c.host_per_node.round() as u64,
                "fits": matches!(c.verdict, guide::Verdict::Chosen | guide::Verdict::AlsoFits),
                "why": c.why(hardware.usable()),
            })
        })
        .collect();
    let value = serde_json::json!({
        "scenario": r.scenario().name(),
        "scenarios": r.scenarios.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "crates": r.crates,
        "method": candidate.map(|c| c.method_name()),
        "zero_stage": candidate.map(|c| c.zero_stage),
        "offload": candidate.map(|c| c.offload.name()),
        "mixed_precision": "bf16",
        "gradient_checkpointing": candidate.map(|c| c.memopt),
        "per_device_bytes": pick.and_then(|p| p.per_device).map(|b| b.round() as u64),
        "usable_bytes_per_device": hardware.usable().round() as u64,
        "host_bytes_per_node": pick.map(|p| p.host_per_node.round() as u64),
        "fits": r.chosen.is_some(),
        "task": work.task.name(),
        "params": work.params,
        "gpus": hardware.gpus,
        "nodes": hardware.nodes,
        "order": r.order,
        "candidates": candidates,
        "remedies": r.remedies,
        "config": written.map(|p| p.display().to_string()),
        "command": written.map(|p| run_command(p, hardware)),
    });
    value.to_string()
}

fn nothing_fits(hardware: &Hardware, r: &Recommendation) -> String {
    let Some(closest) = r.pick() else {
        return "no candidate could be estimated: give --model DIR or a standard --params size".to_string();
    };
    let need = closest.per_device.unwrap_or(0.0);
    let mut line = format!(
        "nothing fits on {} x {}: the closest, {}, needs {} per device, {} over the {} usable",
        hardware.gpus,
        gib(hardware.gpu_memory),
        closest.candidate.describe(),
        gib(need),
        gib(need - hardware.usable()),
        gib(hardware.usable())
    );
    if !r.remedies.is_empty() {
        line.push_str("; it would fit with ");
        line.push_str(&r.remedies.join(", or "));
    }
    line
}

/// The text of the config for the chosen candidate, paths relative to `out`'s directory.
fn config_text(
    args: &Args,
    work: &Workload,
    hardware: &Hardware,
    r: &Recommendation,
    pick: &guide::Considered,
    out: &Path,
) -> Result<String> {
    let out_dir = absolute(out.parent().unwrap_or(Path::new("")))?;
    let relative = |path: &Path| -> Result<String> { Ok(relative_to(&absolute(path)?, &out_dir)) };
    let model = match (&args.size.model, &work.model) {
        (Some(dir), _) => ModelSource::Dir(relative(dir)?),
        (None, Some(shape)) if work.task == Task::Pretrain => ModelSource::Shape(shape.clone()),
        (None, _) if work.task == Task::Pretrain => {
            bail!("--out: pretraining from --params needs a standard size (a shape to build): give one or --model DIR")
        }
        (None, _) => bail!(
            "--out: --task {} starts from a model: give --model DIR (--params only sizes the recommendation)",
            work.task.name()
        ),
    };
    let rewards = rewards(args, work.task, &relative)?;
    let data = if args.data.is_empty() { vec![sample_data(work.task)?] } else { args.data.clone() };
    let data = data.iter().map(|path| relative(path)).collect::<Result<Vec<_>>>()?;
    if matches!(work.task, Task::Grpo | Task::Rloo) && (work.batch * hardware.gpus) < 2 {
        bail!("--batch: --task {} samples several completions per prompt: give at least 2 rows", work.task.name());
    }
    let stem = out.file_stem().map_or("run".into(), |s| s.to_string_lossy().into_owned());
    let output_dir = relative(&PathBuf::from("runs").join(&stem))?;
    let invocation = format!("llmtrain {}", std::env::args().skip(1).collect::<Vec<_>>().join(" "));
    let plan = Plan {
        work,
        hardware,
        recommendation: r,
        candidate: pick.candidate,
        per_device: pick.per_device.unwrap_or(0.0),
        model,
        data,
        rewards,
        output_dir,
        invocation,
        run_command: run_command(out, hardware),
    };
    Ok(render(&plan))
}

/// The repository's sample data for a task, when run from the repository.
fn sample_data(task: Task) -> Result<PathBuf> {
    let sample = match task {
        Task::Pretrain => Some("data/shakespeare"),
        Task::Sft => Some("data/sft/train.jsonl"),
        Task::Dpo | Task::Orpo | Task::Reward => Some("data/preference/train.jsonl"),
        Task::Grpo | Task::Rloo | Task::Ppo => Some("data/grpo/train.jsonl"),
        // KTO learns from unpaired rows (prompt, completion, label); the repository has none.
        Task::Kto => None,
    };
    match sample.map(PathBuf::from) {
        Some(path) if path.exists() => Ok(path),
        _ => bail!("--out needs --data FILE (the training data in TRL's format for --task {})", task.name()),
    }
}

fn rewards(args: &Args, task: Task, relative: &dyn Fn(&Path) -> Result<String>) -> Result<Rewards> {
    const FUNCTIONS: [&str; 3] = ["exact_match", "format", "soft_overlong_punishment"];
    if let Some(function) = args.reward.iter().find(|f| !FUNCTIONS.contains(&f.as_str())) {
        bail!("--reward {function}: expected one of {}", FUNCTIONS.join(", "));
    }
    if let Some(dir) = &args.reward_model {
        let config = HfConfig::load(dir)?;
        if !matches!(config.head, Head::SequenceClassification { num_labels: 1 }) {
            bail!("--reward-model {}: not a one-label sequence classifier (a reward model)", dir.display());
        }
    }
    let model = args.reward_model.as_deref().map(relative).transpose()?;
    match task {
        Task::Grpo | Task::Rloo if args.reward.is_empty() && model.is_none() => {
            bail!("--task {} needs a reward: --reward {} or --reward-model DIR", task.name(), FUNCTIONS.join("|"))
        }
        Task::Ppo if model.is_none() => bail!("--task ppo needs a reward model: --reward-model DIR"),
        Task::Ppo if !args.reward.is_empty() => bail!("--reward: PPO scores with --reward-model only"),
        Task::Grpo | Task::Rloo | Task::Ppo => {}
        _ if !args.reward.is_empty() || model.is_some() => {
            bail!("--reward / --reward-model: --task {} has no reward (grpo, rloo and ppo do)", task.name())
        }
        _ => {}
    }
    Ok(Rewards { functions: args.reward.clone(), model })
}

/// Writes the config atomically; an existing file is replaced only with --overwrite.
fn write_config(out: &Path, text: &str, overwrite: bool) -> Result<()> {
    if out.exists() && !overwrite {
        bail!("--out {}: the file exists; add --overwrite to replace it", out.display());
    }
    llmtrain_core::fsutil::write_atomic(out, text.as_bytes()).with_context(|| format!("--out {}", out.display()))
}

fn absolute(path: &Path) -> Result<PathBuf> {
    let joined = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir()?.join(path) };
    // Lexically: `..` and `.` resolved without touching the file system (the file may not exist yet).
    let mut clean = PathBuf::new();
    for part in joined.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    Ok(clean)
}

/// `path` as seen from `base` (both absolute): `../data/x.jsonl`.
fn relative_to(path: &Path, base: &Path) -> String {
    let (path_parts, base_parts): (Vec<_>, Vec<_>) = (path.components().collect(), base.components().collect());
    let common = path_parts.iter().zip(&base_parts).take_while(|(a, b)| a == b).count();
    let mut relative = PathBuf::new();
    for _ in common..base_parts.len() {
        relative.push("..");
    }
    for part in &path_parts[common..] {
        relative.push(part);
    }
    if relative.as_os_str().is_empty() { ".".to_string() } else { relative.display().to_string() }
}

/// Two steps of the chosen config as one rank on this machine; the peak resident memory of that run beside the
/// estimator's CPU step peak for the same config.
fn calibrate(
    args: &Args,
    work: &Workload,
    hardware: &Hardware,
    r: &Recommendation,
    pick: &guide::Considered,
) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("llmtrain-calibrate-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("--calibrate: {}", scratch.display()))?;
    let result = (|| {
        let config = scratch.join("calibrate.toml");
        // One rank, no driver: the per-device view.
        let one = Hardware { gpus: 1, nodes: 1, ..*hardware };
        let text = config_text(args, work, &one, r, pick, &config)?;
        std::fs::write(&config, text)?;
        let run_dir = scratch.join("run");
        let exe = std::env::current_exe()?;
        let mut command = std::process::Command::new(exe);
        command.args(["train", "--config"]).arg(&config).args(["--max-steps", "2", "--output-dir"]).arg(&run_dir);
        let output = command.output().context("--calibrate: running the config")?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last = stderr.lines().last().unwrap_or("(no message)");
            bail!("--calibrate: two steps of the chosen config failed: {last}");
        }
        let measured = children_peak_rss();
        // The same input the walk predicted the device with, for one rank: the CPU step peak it also gives.
        let input = EstimateInput {
            zero_stage: 0,
            offload: Offload::None,
            ..guide::estimate_input(work, &one, &pick.candidate)
        };
        let predicted = estimate(&input)?.cpu_peak.map(|peak| peak.total());
        let mib = |bytes: f64| format!("{:.0} MiB", bytes / (1024.0 * 1024.0));
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "calibration: 2 steps of the chosen config as 1 rank on this machine's CPU: measured peak {}; predicted \
             CPU step peak {}{}",
            measured.map_or("unknown".to_string(), mib),
            predicted.map_or("- (no shape)".to_string(), mib),
            match (measured, predicted) {
                (Some(m), Some(p)) => format!(" (measured / predicted {:.2})", m / p),
                _ => String::new(),
            }
        )?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// The largest peak resident set of the waited-for children, in bytes.
fn children_peak_rss() -> Option<f64> {
    // SAFETY: rusage is plain integers (all-zero is a valid value), and getrusage only writes that one struct,
    // which we own.
    let (status, usage) = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage), usage)
    };
    (status == 0 && usage.ru_maxrss > 0).then_some(usage.ru_maxrss as f64 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("80GB"), Some(80.0 * GIB));
        assert_eq!(parse_size("24GiB"), Some(24.0 * GIB));
        assert_eq!(parse_size("16000MB"), Some(16000.0 * 1024.0 * 1024.0));
        assert_eq!(parse_size("1.5TB"), Some(1.5 * 1024.0 * GIB));
        assert_eq!(parse_size("80XB"), None);
        assert_eq!(parse_size("0GB"), None);
        assert_eq!(parse_size("GB"), None);
    }

    #[test]
    fn paths_are_written_relative_to_the_config() {
        let base = Path::new("/work/configs");
        assert_eq!(relative_to(Path::new("/work/data/sft/train.jsonl"), base), "../data/sft/train.jsonl");
        assert_eq!(relative_to(Path::new("/work/configs/x"), base), "x");
        assert_eq!(relative_to(Path::new("/work/configs"), base), ".");
    }
}

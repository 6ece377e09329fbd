//! The run config of a recommendation (`recommend --out FILE.toml`): the sections `llmtrain train` reads, with
//! comments saying why each choice was made. Paths are given relative to the config's directory, as the train
//! command resolves them.

use std::fmt::Write as _;

use llmtrain_core::model::ModelConfig;
use llmtrain_memopt::estimate::{Method, Offload};

use super::{Candidate, Hardware, Recommendation, Task, Workload};

/// Where the model comes from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// An HF checkpoint directory (as written in the config).
    Dir(String),
    /// A shape to build from scratch (pretraining from `--params`), with a tokenizer trained on the data.
    Shape(ModelConfig),
}

/// What the reward of an online objective is made of.
#[derive(Debug, Clone, Default)]
pub struct Rewards {
    /// TRL-style reward functions (`exact_match`, `format`, `soft_overlong_punishment`).
    pub functions: Vec<String>,
    /// A reward model directory (as written in the config).
    pub model: Option<String>,
}

/// Everything the config says.
pub struct Plan<'a> {
    pub work: &'a Workload,
    pub hardware: &'a Hardware,
    pub recommendation: &'a Recommendation,
    pub candidate: Candidate,
    pub per_device: f64,
    pub model: ModelSource,
    /// Training data files (as written in the config).
    pub data: Vec<String>,
    pub rewards: Rewards,
    /// The run's output directory (as written in the config).
    pub output_dir: String,
    /// How the config was made: the recommend command line.
    pub invocation: String,
    /// How to run it: the train (or launch) command line.
    pub run_command: String,
}

/// A TOML basic string.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|item| quoted(item)).collect::<Vec<_>>().join(", "))
}

/// The learning rate TRL's (or the method's usual) default suggests.
fn learning_rate(task: Task, method: Method) -> &'static str {
    let adapters = method != Method::Full;
    match (task, adapters) {
        (Task::Pretrain, _) => "3e-4",
        (Task::Sft, false) => "2e-5",
        (Task::Sft, true) => "2e-4",
        (Task::Reward, false) => "1e-5",
        (Task::Reward, true) => "1e-4",
        (_, false) => "1e-6",
        (_, true) => "1e-5",
    }
}

/// The config's text.
pub fn render(plan: &Plan) -> String {
    let (work, hardware, candidate) = (plan.work, plan.hardware, plan.candidate);
    let r = plan.recommendation;
    let mut t = String::new();
    let (row, tool) = r.scenario().row();
    let crates: Vec<String> = r.crates.iter().map(|name| format!("llmtrain-{name}")).collect();
    let _ = writeln!(t, "# Decision guide: {row} — {tool} → {}", crates.join(" + "));
    let _ = writeln!(t, "#   {}", plan.invocation);
    let _ = writeln!(t, "#   {}", plan.run_command);
    let _ = writeln!(t, "#");
    let _ = writeln!(
        t,
        "# Chosen: {}, {} per device predicted of {} usable ({} x {}, {:.0}% kept free).",
        candidate.describe(),
        super::show_bytes(plan.per_device),
        super::show_bytes(hardware.usable()),
        hardware.gpus,
        super::show_bytes(hardware.gpu_memory),
        super::HEADROOM * 100.0
    );
    let _ = writeln!(t, "# The walk: {}.", r.order);
    for considered in r.considered.iter().take_while(|c| c.candidate != candidate) {
        let _ = writeln!(t, "#   dropped {}: {}", considered.candidate.describe(), considered.why(hardware.usable()));
    }
    t.push('\n');

    t.push_str("[model]\n");
    match &plan.model {
        ModelSource::Dir(dir) => {
            let _ = writeln!(t, "path = {}", quoted(dir));
        }
        ModelSource::Shape(m) => {
            let _ = writeln!(t, "# The standard shape of --params, built from scratch.");
            let architecture = serde_json::to_value(m.architecture).ok();
            let architecture = architecture.as_ref().and_then(|v| v.as_str()).unwrap_or("llama");
            let _ = writeln!(t, "architecture = {}", quoted(architecture));
            let _ = writeln!(t, "hidden_size = {}", m.hidden_size);
            let _ = writeln!(t, "intermediate_size = {}", m.intermediate_size);
            let _ = writeln!(t, "num_hidden_layers = {}", m.num_hidden_layers);
            let _ = writeln!(t, "num_attention_heads = {}", m.num_attention_heads);
            let _ = writeln!(t, "num_key_value_heads = {}", m.num_key_value_heads);
            let _ =
                writeln!(t, "max_position_embeddings = {}", work.seq_len.max(m.max_position_embeddings.min(1 << 20)));
            let _ = writeln!(t, "tie_word_embeddings = {}", m.tie_word_embeddings);
            t.push_str("\n[tokenizer]\n");
            let _ = writeln!(t, "train_files = {}", list(&plan.data));
            let _ = writeln!(t, "vocab_size = {}", m.vocab_size);
        }
    }

    t.push_str("\n[data]\n");
    let _ = writeln!(t, "files = {}", list(&plan.data));
    let _ = writeln!(t, "seq_len = {}", work.seq_len);
    let _ = writeln!(t, "batch_size = {}                    # rows per device per step", work.batch);
    if matches!(work.task, Task::Pretrain | Task::Sft) {
        t.push_str("packing = true\n");
    }
    if work.task == Task::Sft {
        t.push_str("loss_on = \"completion-only\"        # TRL's default for prompt/completion rows\n");
    }
    t.push_str("eval_fraction = 0.05\n");

    t.push_str("\n[training]\n");
    t.push_str("max_steps = 1000                    # set from your data: rows / (batch_size x devices)\n");
    let _ = writeln!(t, "learning_rate = {}", learning_rate(work.task, candidate.method));
    t.push_str("lr_schedule = \"cosine\"\nwarmup_steps = 10\nmax_grad_norm = 1.0\n");
    t.push_str("logging_steps = 10\nsave_steps = 100\n");

    t.push_str("\n[memopt]\n");
    t.push_str("mixed_precision = \"bf16\"            # bf16 compute over f32 master weights\n");
    if candidate.memopt {
        t.push_str(
            "# Needed to fit: activations only at layer inputs, attention without the [seq x seq] scores, and\n",
        );
        t.push_str("# the head fused with the loss (no [tokens x vocab] logits).\n");
        t.push_str("gradient_checkpointing = true\nattention = \"flash\"\nfused_cross_entropy = true\n");
    }

    if candidate.method != Method::Full {
        t.push_str("\n[lora]                              # llmtrain-fastlora: PEFT's LoRA on every linear layer\n");
        let _ = writeln!(t, "r = {}", work.lora_rank);
        let _ = writeln!(t, "alpha = {}", 2 * work.lora_rank);
        t.push_str("target_modules = \"all-linear\"\n");
    }
    if candidate.method == Method::Qlora {
        t.push_str("\n[quantization]                      # QLoRA: the frozen base's linear weights in 4-bit NF4\n");
        t.push_str("load_in_4bit = true\nbnb_4bit_quant_type = \"nf4\"\nbnb_4bit_use_double_quant = true\n");
    }
    if candidate.zero_stage > 0 {
        t.push_str("\n[zero]                              # llmtrain-zero: DeepSpeed's ZeRO\n");
        let _ = writeln!(t, "stage = {}", candidate.zero_stage);
        if candidate.offload != Offload::None {
            t.push_str("offload_optimizer = \"cpu\"\n");
        }
        if candidate.offload == Offload::OptimizerAndParams {
            t.push_str("offload_param = \"cpu\"\n");
        }
    }
    if hardware.nodes > 1 {
        t.push_str("\n[scaling]                           # llmtrain-raytrain: the workers and their restarts\n");
        let _ = writeln!(t, "num_workers = {}", hardware.gpus);
        t.push_str("use_gpu = true\nlauncher = \"mpirun\"\n");
        let _ = writeln!(
            t,
            "# hostfile = \"hosts\"                # one `node slots={}` line per machine; without it mpirun \
             starts the workers here",
            hardware.gpus / hardware.nodes
        );
        t.push_str("\n[failure]\nmax_failures = 3                    # restarts from the newest checkpoint\n");
    }
    trainer_section(&mut t, plan);

    t.push_str("\n[output]\n");
    let _ = writeln!(t, "dir = {}", quoted(&plan.output_dir));
    t
}

/// The trainer section of an alignment task, with TRL's defaults.
fn trainer_section(t: &mut String, plan: &Plan) {
    let seq_len = plan.work.seq_len;
    match plan.work.task {
        Task::Pretrain | Task::Sft => {}
        Task::Dpo => {
            let _ = writeln!(t, "\n[dpo]\nbeta = 0.1\nmax_length = {seq_len}");
        }
        Task::Kto => {
            let _ = writeln!(t, "\n[kto]\nbeta = 0.1\nmax_length = {seq_len}");
        }
        Task::Orpo => {
            let _ = writeln!(t, "\n[orpo]\nbeta = 0.1\nmax_length = {seq_len}");
        }
        Task::Reward => {
            let _ = writeln!(t, "\n[reward]\nmax_length = {seq_len}");
        }
        Task::Grpo | Task::Rloo => {
            let name = plan.work.task.name();
            // Each step's prompts are sampled num_generations times over all devices: the most (of TRL's 8)
            // that divides the step's rows.
            let rows = plan.work.batch * plan.hardware.gpus;
            let generations = [8, 4, 2].into_iter().find(|g| rows.is_multiple_of(*g)).unwrap_or(rows);
            let _ = writeln!(
                t,
                "\n[{name}]\nnum_generations = {generations}\nmax_completion_length = {}",
                (seq_len / 2).clamp(1, 256)
            );
            if !plan.rewards.functions.is_empty() {
                let _ = writeln!(t, "reward_funcs = {}", list(&plan.rewards.functions));
            }
            if let Some(model) = &plan.rewards.model {
                let _ = writeln!(t, "reward_model = {}", quoted(model));
            }
        }
        Task::Ppo => {
            let _ = writeln!(t, "\n[ppo]\nresponse_length = {}", (seq_len / 2).clamp(1, 256));
            if let Some(model) = &plan.rewards.model {
                let _ = writeln!(t, "reward_model_path = {}", quoted(model));
            }
        }
    }
}

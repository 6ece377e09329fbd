//! `llmtrain`: one command for LLM training and finetuning. It parses arguments, picks the backend and hands
//! the work to the library crates; no numeric logic lives here.

mod backend;
mod commands;
mod guide;
mod messages;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "llmtrain", version, about = "LLM training and finetuning in Rust, on burn")]
struct Cli {
    /// Where tensors live: cpu, or cuda / wgpu when built with those features.
    #[arg(long, global = true, default_value = "cpu")]
    device: llmtrain_core::device::DeviceKind,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train or finetune a model from a TOML config.
    Train(commands::train::Args),
    /// Logits of a model for given token ids (to check a checkpoint or a conversion).
    Logits(commands::logits::Args),
    /// Fold a PEFT LoRA/DoRA adapter into its base model and write a plain HF checkpoint.
    Merge(commands::merge::Args),
    /// Generate text from a prompt.
    Generate(commands::generate::Args),
    /// Each row's reward under a reward model (a `[reward]` run's final/, or any one-label sequence classifier).
    Score(commands::score::Args),
    /// Re-save a checkpoint (change dtype, shard size), as transformers would write it.
    Convert(commands::convert::Args),
    /// Run a training command as data-parallel ranks: threads of this process, or processes under mpirun / srun.
    Launch(commands::launch::Args),
    /// The decision guide for a model and its devices: which crates, method, ZeRO stage and memory techniques fit,
    /// from the memory estimator; `--out` writes the run config.
    Recommend(commands::recommend::Args),
    /// Memory per device for a model and method, before a run (weights, gradients, optimizer, activations; ZeRO).
    EstimateMemory(commands::estimate_memory::Args),
    /// Write a launch config, asking what `accelerate config` asks.
    Config(commands::config::Args),
    /// Write a training checkpoint's model (a ZeRO run's holds it whole, gathered from the ranks' shares when it was
    /// written) alone as a plain HF checkpoint directory, after checking its digests (DeepSpeed's zero_to_fp32).
    ZeroToHf(commands::zero_to_hf::Args),
    /// Tokenizer tools.
    #[command(subcommand)]
    Tokenizer(commands::tokenizer::Command),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .event_format(messages::PlainFormat)
        .init();
    // Ctrl-C and SIGTERM: training checkpoints its step; anything else stops and removes its temporary files.
    llmtrain_core::interrupt::install();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => commands::train::start(&args, cli.device),
        Command::Logits(args) => backend::dispatch!(cli.device, logits, &args),
        Command::Generate(args) => backend::dispatch!(cli.device, generate, &args),
        Command::Score(args) => backend::dispatch!(cli.device, score, &args),
        Command::Convert(args) => backend::dispatch!(cli.device, convert, &args),
        Command::Merge(args) => backend::dispatch!(cli.device, merge, &args),
        Command::ZeroToHf(args) => backend::dispatch!(cli.device, zero_to_hf, &args),
        Command::Tokenizer(cmd) => commands::tokenizer::run(&cmd),
        Command::Launch(args) => commands::launch::start(&args, cli.device),
        Command::EstimateMemory(args) => commands::estimate_memory::run(&args),
        Command::Recommend(args) => commands::recommend::run(&args),
        Command::Config(args) => commands::config::run(&args),
    };
    // An error caused by a signal's cleanup is not reported: the signal's exit comes first.
    if result.is_err() {
        llmtrain_core::interrupt::wait_if_stopping();
    }
    let interrupted = result.as_ref().err().and_then(|err| err.downcast_ref::<commands::train::Interrupted>());
    if let Some(stop) = interrupted {
        if stop.report {
            eprintln!("{stop}");
        }
        return ExitCode::from(u8::try_from(llmtrain_core::interrupt::exit_code(stop.signal)).unwrap_or(1));
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the causes joined (skipping a cause its parent already quoted), no backtrace.
            let mut message = String::new();
            for cause in err.chain().map(|e| e.to_string()) {
                if !message.ends_with(&cause) {
                    if !message.is_empty() {
                        message.push_str(": ");
                    }
                    message.push_str(&cause);
                }
            }
            eprintln!("error: {}", message.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

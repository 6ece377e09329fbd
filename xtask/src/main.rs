//! `cargo xtask <task>`: developer tasks that are not part of the `llmtrain` binary.
//!
//! - `bench`: training-step tokens/s, median ms and peak RSS per case, and the ratio to PyTorch eager.
//! - `backends`: forward+backward time of the model on the default CPU backend (Flex) and, with `--features
//!   ndarray` or `--features openblas`, on NdArray (over OpenBLAS), on DESIGN.md's `full-tiny` shape.
//! - `fuzz`: mutation fuzzing of every parser of user files (run config, ds_config, JSONL and Parquet rows,
//!   safetensors, tokenizer.json, adapter_config.json, config.json); any panic is a failure.

mod backends;
mod bench;
mod fuzz;

use clap::{Parser, Subcommand};

/// The system allocator with a cap on one allocation that `fuzz` arms (an input asking for gigabytes is a bug).
#[global_allocator]
static ALLOCATOR: fuzz::CappedAlloc = fuzz::CappedAlloc;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Compare CPU backends on the model's forward and backward.
    Backends(backends::Args),
    /// Training-step throughput and peak memory per case (target/bench/report.json), with PyTorch's ratio.
    Bench(bench::Args),
    /// One bench case in this process (used by `bench`).
    #[command(hide = true)]
    BenchCase {
        name: String,
        #[arg(long, default_value_t = 5)]
        steps: usize,
    },
    /// Mutation fuzzing of the parsers of user files; fails on any panic (inputs in target/fuzz/<target>/).
    Fuzz(fuzz::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Backends(args) => backends::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::BenchCase { name, steps } => bench::run_case(&name, steps),
        Task::Fuzz(args) => fuzz::run(&args),
    }
}

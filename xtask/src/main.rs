//! `cargo xtask <task>`: developer tasks that are not part of the `llmtrain` binary.
//!
//! - `bench`: training-step tokens/s, median ms and peak RSS per case, and the ratio to PyTorch eager.
//! - `backends`: forward+backward time of the model on the default CPU backend (Flex) and, with `--features
//!   ndarray` or `--features openblas`, on NdArray (over OpenBLAS), on DESIGN.md's `full-tiny` shape.

mod backends;
mod bench;

use clap::{Parser, Subcommand};

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Backends(args) => backends::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::BenchCase { name, steps } => bench::run_case(&name, steps),
    }
}

//! Forward+backward timing of the decoder per CPU backend, to choose the default one.

use std::time::Instant;

use anyhow::Result;
use burn::backend::Autodiff;
use burn::tensor::{Distribution, Int, Tensor};
use llmtrain_core::kernels::AutodiffKernels;
use llmtrain_core::model::{LlamaModel, ModelConfig};
use llmtrain_core::train::causal_lm_loss;

#[derive(clap::Args)]
pub struct Args {
    /// Timed steps per backend (after 2 warm-up steps).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    seq: usize,
}

/// DESIGN.md's `full-tiny` shape.
pub fn full_tiny() -> ModelConfig {
    let mut c = ModelConfig::tiny_llama(4096, 256, 4, 8, 4);
    c.intermediate_size = 688;
    c
}

struct Timing {
    forward_ms: f64,
    backward_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn measure<B: AutodiffKernels>(args: &Args) -> Timing {
    let device = B::Device::default();
    let config = full_tiny();
    let model = LlamaModel::<B>::init(&config, &device, 0);
    let tokens = Tensor::<B, 2, Int>::random(
        [args.batch, args.seq],
        Distribution::Uniform(0.0, config.vocab_size as f64),
        &device,
    );
    let (mut forward, mut backward) = (Vec::new(), Vec::new());
    for step in 0..args.steps + 2 {
        let t0 = Instant::now();
        let loss = causal_lm_loss(model.forward(tokens.clone(), None), tokens.clone());
        // Reading the loss forces the lazy part of the forward to finish before the clock stops.
        let _value: f32 = loss.clone().into_data().convert::<f32>().to_vec::<f32>().map(|v| v[0]).unwrap_or(0.0);
        let t1 = Instant::now();
        let grads = loss.backward();
        let _ = model.embed_tokens.grad(&grads).map(|g| g.into_data());
        let t2 = Instant::now();
        if step >= 2 {
            forward.push((t1 - t0).as_secs_f64() * 1e3);
            backward.push((t2 - t1).as_secs_f64() * 1e3);
        }
    }
    Timing { forward_ms: median(forward), backward_ms: median(backward) }
}

fn report(name: &str, t: &Timing, args: &Args, rows: &mut Vec<serde_json::Value>) {
    let total = t.forward_ms + t.backward_ms;
    let tokens_per_sec = (args.batch * args.seq) as f64 / (total / 1e3);
    println!(
        "| {name:<16} | {:>10.1} | {:>11.1} | {:>9.1} | {:>10.0} |",
        t.forward_ms, t.backward_ms, total, tokens_per_sec
    );
    rows.push(serde_json::json!({
        "backend": name, "forward_ms": t.forward_ms, "backward_ms": t.backward_ms,
        "fwd_bwd_ms": total, "tokens_per_sec": tokens_per_sec,
        "batch": args.batch, "seq": args.seq, "steps": args.steps,
    }));
}

pub fn run(args: &Args) -> Result<()> {
    println!(
        "forward+backward, full-tiny shape, batch {} × seq {}, median of {} steps",
        args.batch, args.seq, args.steps
    );
    println!("| backend          | forward ms | backward ms | total ms  | tokens/s   |");
    println!("|------------------|-----------:|------------:|----------:|-----------:|");
    let mut rows = Vec::new();
    report("flex", &measure::<Autodiff<llmtrain_core::device::CpuBackend>>(args), args, &mut rows);
    #[cfg(feature = "ndarray")]
    {
        let name = if cfg!(feature = "openblas") { "ndarray+openblas" } else { "ndarray" };
        report(name, &measure::<Autodiff<llmtrain_core::device::NdArrayBackend>>(args), args, &mut rows);
    }
    let dir = std::path::Path::new("target/bench");
    std::fs::create_dir_all(dir)?;
    let variant = if cfg!(feature = "openblas") {
        "-openblas"
    } else if cfg!(feature = "ndarray") {
        "-ndarray"
    } else {
        ""
    };
    let file = dir.join(format!("backends{variant}.json"));
    std::fs::write(&file, serde_json::to_string_pretty(&rows)?)?;
    println!("wrote {}", file.display());
    Ok(())
}

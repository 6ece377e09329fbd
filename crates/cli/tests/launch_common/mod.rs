//! What the launch tests share: a job directory with configs that differ only in batch size, and the comparison
//! of a data-parallel run with the single-process run of the same global batch.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::{llmtrain_bin, root};

/// A directory with a small corpus and configs that differ only in batch size.
pub struct Job {
    pub dir: tempfile::TempDir,
}

impl Job {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let corpus = std::fs::read_to_string(root().join("data/shakespeare/hamlet.txt")).unwrap();
        std::fs::create_dir(dir.path().join("corpus")).unwrap();
        std::fs::write(dir.path().join("corpus/hamlet.txt"), &corpus[..40_000]).unwrap();
        Self { dir }
    }

    /// Writes `b<batch>.toml`, whose run goes to `out-<name>`, and returns its path.
    pub fn config(&self, batch: usize, name: &str, extra_training: &str) -> PathBuf {
        let text = format!(
            "[model]\nhidden_size = 32\nintermediate_size = 64\nnum_hidden_layers = 2\nnum_attention_heads = 4\n\
             num_key_value_heads = 2\n\n[tokenizer]\ntrain_files = [\"corpus\"]\nvocab_size = 400\n\n\
             [data]\nfiles = [\"corpus\"]\nseq_len = 32\nbatch_size = {batch}\neval_fraction = 0.1\n\n\
             [training]\nmax_steps = 12\nlearning_rate = 0.01\nwarmup_steps = 2\nlogging_steps = 1\n\
             eval_steps = 6\nsave_steps = 4\n{extra_training}\n\n[output]\ndir = \"out-{name}\"\n"
        );
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        std::process::Command::new(llmtrain_bin())
            .args(args)
            .env("LLMTRAIN_CACHE", self.path("cache"))
            .env("LLMTRAIN_CONFIG_DIR", self.path("launch-config"))
            // mpirun refuses to start as root unless told; CI runs as root.
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .output()
            .unwrap()
    }
}

pub fn ok(out: &Output) -> String {
    assert!(out.status.success(), "stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (step, value) pairs of one metric.
pub type Curve = Vec<(u64, f64)>;

/// (step, loss) of the training records and (step, eval_loss) of the eval records.
pub fn curves(out_dir: &Path) -> (Curve, Curve) {
    let text = std::fs::read_to_string(out_dir.join("metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let pick = |key: &str| -> Vec<(u64, f64)> {
        records.iter().filter_map(|r| Some((r["step"].as_u64()?, r.get(key)?.as_f64()?))).collect()
    };
    (pick("loss"), pick("eval_loss"))
}

/// Largest |Δ| between two f32 safetensors files' tensors of the same names.
pub fn max_weight_diff(a: &Path, b: &Path) -> f64 {
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let (a, b) =
        (safetensors::SafeTensors::deserialize(&a).unwrap(), safetensors::SafeTensors::deserialize(&b).unwrap());
    let mut worst = 0.0f64;
    for (name, ta) in a.tensors() {
        let tb = b.tensor(&name).unwrap();
        let values = |bytes: &[u8]| -> Vec<f32> {
            bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        };
        for (x, y) in values(ta.data()).iter().zip(values(tb.data())) {
            worst = worst.max((x - y).abs() as f64);
        }
    }
    worst
}

/// Runs the job as `world` ranks with batch b (through `launch_args`) and as one process with batch world·b, and
/// asserts they agree within 1e-5.
pub fn assert_follows_single_process(job: &Job, world: usize, launch_args: &[&str]) {
    let single = job.config(world * 2, &format!("single{world}"), "");
    let ranks = job.config(2, &format!("ranks{world}"), "");
    ok(&job.run(&["train", "--config", single.to_str().unwrap()]));
    let mut args: Vec<&str> = vec!["launch", "--num-processes"];
    let world_text = world.to_string();
    args.push(&world_text);
    args.extend_from_slice(launch_args);
    args.extend(["--", "train", "--config", ranks.to_str().unwrap()]);
    let stdout = ok(&job.run(&args));
    assert!(stdout.contains(&format!("ranks: {world}")) && stdout.matches("final train loss").count() == 1, "{stdout}");

    let (single_loss, single_eval) = curves(&job.path(&format!("out-single{world}")));
    let (ranks_loss, ranks_eval) = curves(&job.path(&format!("out-ranks{world}")));
    assert_eq!(single_loss.len(), 12);
    assert_eq!(ranks_eval.len(), single_eval.len());
    let diff = |a: &[(u64, f64)], b: &[(u64, f64)]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| {
                assert_eq!(x.0, y.0);
                (x.1 - y.1).abs()
            })
            .fold(0.0, f64::max)
    };
    let loss_diff = diff(&single_loss, &ranks_loss);
    let eval_diff = diff(&single_eval, &ranks_eval);
    let weight_diff = max_weight_diff(
        &job.path(&format!("out-single{world}/final/model.safetensors")),
        &job.path(&format!("out-ranks{world}/final/model.safetensors")),
    );
    eprintln!("{world} ranks vs 1: max |Δloss| {loss_diff:.2e}, |Δeval| {eval_diff:.2e}, |Δweight| {weight_diff:.2e}");
    // Weights get 1e-4: AdamW divides each update by √v, so a parameter whose gradient is near eps moves by up to
    // lr on a rounding difference in its (differently summed) gradient; the losses show the runs agree.
    assert!(loss_diff <= 1e-5 && eval_diff <= 1e-5 && weight_diff <= 1e-4);
    assert!(single_loss[11].1 < single_loss[0].1 - 0.3, "the run learned: {single_loss:?}");
    // Rank 0 alone wrote: one checkpoint series, metrics once per step.
    let checkpoints: Vec<String> = std::fs::read_dir(job.path(&format!("out-ranks{world}")))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    assert!(!checkpoints.is_empty());
}

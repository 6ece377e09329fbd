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

/// Runs `name` (accumulation 2, clipping at 0.5, 20 steps) as `world` launched ranks (`launch_args` choose the
/// launcher) with `zero` appended to its config; returns its stdout.
pub fn run_zero(job: &Job, world: usize, launch_args: &[&str], name: &str, zero: &str) -> String {
    let config = job.config(2, name, "gradient_accumulation_steps = 2\nmax_grad_norm = 0.5");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n{zero}\n")).unwrap();
    let world = world.to_string();
    let mut args = vec!["launch", "--num-processes", &world];
    args.extend_from_slice(launch_args);
    args.extend(["--", "train", "--config", config.to_str().unwrap(), "--max-steps", "20"]);
    ok(&job.run(&args))
}

/// ZeRO stages 1 and 2 (one collective window, and windows of 1000 elements) on `world` ranks against plain data
/// parallelism on the same ranks, as DeepSpeed tests itself: the same losses and weights within 1e-5, Adam's
/// moments in the checkpoint too, and the `zero/*` bytes of rank 0's share.
pub fn assert_zero_follows_plain_data_parallelism(job: &Job, world: usize, launch_args: &[&str]) {
    let plain = format!("plain{world}");
    run_zero(job, world, launch_args, &plain, "");
    let (plain_loss, _) = curves(&job.path(&format!("out-{plain}")));
    assert_eq!(plain_loss.len(), 20);
    let cases =
        [(1, 5e8, false), (2, 5e8, false), (2, 1000.0, false), (2, 1000.0, true), (3, 5e8, false), (3, 5e8, true)];
    for (stage, bucket, offload) in cases {
        let name = format!("zero{stage}-{world}-{bucket}-{offload}");
        let device = if offload { "cpu" } else { "none" };
        let zero = format!("[zero]\nstage = {stage}\nreduce_bucket_size = {bucket}\noffload_optimizer = \"{device}\"");
        let stdout = run_zero(job, world, launch_args, &name, &zero);
        assert!(stdout.contains(&format!("strategy: ZeRO stage {stage}")), "{stdout}");
        let (loss, _) = curves(&job.path(&format!("out-{name}")));
        let loss_diff = plain_loss.iter().zip(&loss).map(|(a, b)| (a.1 - b.1).abs()).fold(0.0, f64::max);
        let weight_diff = max_weight_diff(
            &job.path(&format!("out-{plain}/final/model.safetensors")),
            &job.path(&format!("out-{name}/final/model.safetensors")),
        );
        eprintln!(
            "zero stage {stage}, {world} ranks, bucket {bucket}, offload {offload}: max |Δloss| {loss_diff:.1e}, |Δweight| {weight_diff:.1e}"
        );
        assert_eq!(loss.len(), 20, "{name}");
        assert!(loss_diff <= 1e-5 && weight_diff <= 1e-5, "{name}: |Δloss| {loss_diff}, |Δweight| {weight_diff}");
        if stage == 3 && !offload {
            // final/, gathered from the shares, gives the logits the unsharded run's final/ gives.
            let logits = |run: &str| final_logits(job, &format!("out-{run}"));
            let diff = logits(&plain).iter().zip(logits(&name)).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            eprintln!("zero stage 3, {world} ranks: final/ logits max |Δ| {diff:.1e} vs plain data parallelism's");
            assert!(diff <= 1e-4, "{name}: logits differ by {diff}");
        }
        // Each rank wrote its share of the optimizer state; with one window, rank r's share is the r-th run of the
        // flattened moments, so the shares laid end to end are plain data parallelism's moments.
        let checkpoint = job.path(&format!("out-{name}/checkpoint-16"));
        assert!(!checkpoint.join("optimizer.safetensors").exists(), "{name}: no whole optimizer file");
        let shards: Vec<_> =
            (0..world).map(|r| checkpoint.join(format!("optimizer-rank-{r}-of-{world}.safetensors"))).collect();
        assert!(shards.iter().all(|p| p.is_file()), "{name}: one optimizer file per rank");
        // Stage 3 cuts a window per layer, so its shares laid end to end are not in path order.
        if bucket >= 1e8 && stage < 3 {
            let whole = job.path(&format!("out-{plain}/checkpoint-16/optimizer.safetensors"));
            let moments = max_concatenated_diff(&whole, &shards);
            assert!(moments <= 1e-5, "{name}: Adam's moments differ from plain data parallelism's by {moments}");
        }
        let elements = model_elements(&job.path(&format!("out-{plain}/final/model.safetensors")));
        let metrics = job.path(&format!("out-{name}/metrics.jsonl"));
        assert_model_states(&metrics, stage, world, bucket, offload, elements);
    }
}

/// Each record's `zero/*` bytes are what rank 0 holds: whole parameters (stages 1 and 2) or its share (stage 3);
/// whole gradients (stage 1) or its share (stages 2 and 3); Adam's two moments for its share. With one window its
/// share is ⌈Ψ/N⌉, as the formula says; stage 3's windows (one per layer) each split N ways.
fn assert_model_states(metrics: &Path, stage: u8, world: usize, bucket: f64, offload: bool, elements: u64) {
    let text = std::fs::read_to_string(metrics).unwrap();
    let last: serde_json::Value = text.lines().rfind(|l| l.contains("zero/")).unwrap().parse().unwrap();
    let bytes = |key: &str| last[key].as_u64().unwrap_or_else(|| panic!("no {key} in {last}"));
    let moments = if offload { "zero/offloaded_optimizer_bytes" } else { "zero/optimizer_bytes" };
    if stage == 3 {
        let share = bytes("zero/params_bytes") / 4;
        // Rank 0's share of each window is the first ⌈window/N⌉ elements: at most one more per window than a fair
        // share (a dozen windows in this model).
        let fair = elements / world as u64;
        assert!(share >= fair && share <= fair + 16, "stage 3 share {share} of {elements}");
        assert_eq!(bytes("zero/grads_bytes"), 4 * share);
        assert_eq!(bytes(moments), 8 * share);
        if offload {
            assert_eq!(bytes("zero/optimizer_bytes"), 0);
        }
        // The whole model while a checkpoint or a validation gathers it (this run has both), and never the whole
        // parameters and gradients at once, which plain data parallelism holds (the bench, which neither validates
        // nor saves, shows a layer's worth).
        let transient = bytes("zero/transient_peak_bytes");
        assert!(transient >= 4 * elements && transient < 8 * elements, "transient {transient} of {}", 4 * elements);
        return;
    }
    let params = bytes("zero/params_bytes") / 4;
    assert_eq!(params, elements);
    let share = if bucket >= params as f64 { params.div_ceil(world as u64) } else { bytes(moments) / 8 };
    let fair = params / world as u64;
    assert!(share >= fair && share <= fair + bucket as u64, "share {share} of {params}");
    assert_eq!(bytes(moments), 8 * share);
    if offload {
        assert_eq!(bytes("zero/optimizer_bytes"), 0);
    }
    assert_eq!(bytes("zero/grads_bytes"), if stage == 1 { 4 * params } else { 4 * share });
    assert!(bytes("zero/transient_peak_bytes") > 0);
}

/// The logits `llmtrain logits` computes with `run`'s `final/` for a few tokens (as transformers would: the
/// command is checked against transformers in inspect.rs).
fn final_logits(job: &Job, run: &str) -> Vec<f32> {
    let (model, out) = (job.path(run).join("final"), job.path(run).join("logits.safetensors"));
    let args = ["logits", "--model", model.to_str().unwrap(), "--tokens", "1,7,42,99,3,255", "--overwrite"];
    ok(&job.run(&[&args[..], &["--out", out.to_str().unwrap()]].concat()));
    let bytes = std::fs::read(&out).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let logits = file.tensor("logits").unwrap();
    logits.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// Elements of the tensors of a safetensors file.
pub fn model_elements(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors().iter().map(|(_, t)| t.shape().iter().product::<usize>() as u64).sum()
}

/// Largest |Δ| between the f32 tensors of `whole` and, for each name, that name's tensors in `parts` laid end to
/// end in order.
fn max_concatenated_diff(whole: &Path, parts: &[PathBuf]) -> f64 {
    let values = |bytes: &[u8]| -> Vec<f32> {
        bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    };
    let whole_bytes = std::fs::read(whole).unwrap();
    let whole = safetensors::SafeTensors::deserialize(&whole_bytes).unwrap();
    let part_bytes: Vec<Vec<u8>> = parts.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let parts: Vec<_> = part_bytes.iter().map(|b| safetensors::SafeTensors::deserialize(b).unwrap()).collect();
    let mut worst = 0.0f64;
    for (name, tensor) in whole.tensors() {
        let joined: Vec<f32> =
            parts.iter().filter_map(|p| p.tensor(&name).ok()).flat_map(|t| values(t.data())).collect();
        let expected = values(tensor.data());
        assert_eq!(joined.len(), expected.len(), "{name}");
        for (x, y) in expected.iter().zip(&joined) {
            worst = worst.max((x - y).abs() as f64);
        }
    }
    worst
}

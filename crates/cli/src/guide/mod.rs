//! The decision guide (DESIGN.md) as a decision: which crates, method, ZeRO stage, offload, precision and
//! checkpointing a job needs, from the model's size and the devices' memory (`llmtrain recommend`).
//!
//! - here: the job ([`Workload`], [`Hardware`]), the candidates in the guide's order ([`walk`]), each one's
//!   predicted memory per device (llmtrain-memopt's estimator) and the choice ([`recommend`], [`Recommendation`]);
//! - `write`: the run config of a choice (`recommend --out FILE.toml`).

pub mod write;

use llmtrain_core::model::ModelConfig;
use llmtrain_memopt::estimate::{
    AttentionImpl, BatchShape, EstimateError, EstimateInput, Method, MixedPrecision, Offload, Precision, estimate,
};

/// The share of each device's memory kept free: the CUDA context, the allocator's fragmentation and the kernels'
/// workspaces, which the estimator does not count.
pub const HEADROOM: f64 = 0.2;
/// From this size on the guide's row is DeepSpeed's (full finetuning sharded by ZeRO, LoRA only if nothing else
/// fits); below it, finetuning starts from LoRA (Accelerate + PEFT).
pub const LARGE_MODEL_PARAMS: u64 = 60_000_000_000;
/// From this size on, LoRA on one device is the Unsloth row (7B–13B, one GPU).
pub const ONE_GPU_ROW_PARAMS: u64 = 5_000_000_000;
/// Rows per chunk of the fused head and loss in the memory-saving candidates (`[memopt] cross_entropy_chunk`).
pub const LOSS_CHUNK: usize = 1024;
/// DeepSpeed's `additional_buffer_factor`: host memory for offloaded states is counted 1.5 times.
pub const HOST_BUFFER_FACTOR: f64 = 1.5;

/// What is trained: the objective, which names the trainer section of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Pretrain,
    Sft,
    Dpo,
    Kto,
    Orpo,
    Reward,
    Grpo,
    Rloo,
    Ppo,
}

impl Task {
    pub const NAMES: [&'static str; 9] = ["sft", "dpo", "kto", "orpo", "reward", "grpo", "rloo", "ppo", "pretrain"];

    pub fn from_name(name: &str) -> Option<Task> {
        Some(match name {
            "pretrain" => Task::Pretrain,
            "sft" => Task::Sft,
            "dpo" => Task::Dpo,
            "kto" => Task::Kto,
            "orpo" => Task::Orpo,
            "reward" => Task::Reward,
            "grpo" => Task::Grpo,
            "rloo" => Task::Rloo,
            "ppo" => Task::Ppo,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Task::Pretrain => "pretrain",
            Task::Sft => "sft",
            Task::Dpo => "dpo",
            Task::Kto => "kto",
            Task::Orpo => "orpo",
            Task::Reward => "reward",
            Task::Grpo => "grpo",
            Task::Rloo => "rloo",
            Task::Ppo => "ppo",
        }
    }

    /// An alignment objective of TRL's beyond SFT (the guide's "RLHF / DPO" row).
    pub fn is_alignment(self) -> bool {
        !matches!(self, Task::Pretrain | Task::Sft)
    }

    /// Sequences the forward runs per row: a chosen and a rejected one for the paired objectives.
    fn sequences_per_row(self) -> usize {
        match self {
            Task::Dpo | Task::Orpo | Task::Reward => 2,
            _ => 1,
        }
    }

    /// Frozen 16-bit copies of the model beside the policy: the reference of DPO, KTO and RLOO (KL on by default)
    /// when full finetuning (a LoRA policy's reference is its base with the adapters off), and PPO's reward
    /// model (taken to be the policy's size) besides.
    fn frozen_copies(self, method: Method) -> f64 {
        let reference = if method == Method::Full { 1.0 } else { 0.0 };
        match self {
            Task::Dpo | Task::Kto | Task::Rloo => reference,
            Task::Ppo => reference + 1.0,
            _ => 0.0,
        }
    }
}

/// `--method`: a method, or the guide's pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodChoice {
    Auto,
    Only(Method),
}

/// The job to fit.
#[derive(Debug, Clone)]
pub struct Workload {
    pub params: u64,
    /// The shape (from `config.json` or a standard size); without it only full finetuning's model states count.
    pub model: Option<ModelConfig>,
    pub task: Task,
    pub method: MethodChoice,
    /// Rows per device per micro-batch.
    pub batch: usize,
    pub seq_len: usize,
    pub lora_rank: usize,
}

/// The devices: `gpus` in all, spread evenly over `nodes` machines.
#[derive(Debug, Clone, Copy)]
pub struct Hardware {
    pub gpus: usize,
    pub nodes: usize,
    /// Bytes per device.
    pub gpu_memory: f64,
    /// Host memory per machine, when known (checked against what offload moves there).
    pub cpu_memory: Option<f64>,
}

impl Hardware {
    /// Bytes per device a candidate may use: the memory less the headroom.
    pub fn usable(&self) -> f64 {
        self.gpu_memory * (1.0 - HEADROOM)
    }

    fn gpus_per_node(&self) -> usize {
        self.gpus / self.nodes.max(1)
    }
}

/// One way to run the job: every candidate computes in bf16 over f32 master weights (mixed precision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub method: Method,
    pub zero_stage: u8,
    pub offload: Offload,
    /// memopt's savings: gradient checkpointing, flash attention and the head fused with the loss.
    pub memopt: bool,
}

impl Candidate {
    /// "ZeRO-3 + optimizer offload, checkpointing", "QLoRA", "LoRA, checkpointing", "full, data parallel".
    pub fn describe(&self) -> String {
        let method = match self.method {
            Method::Full => match (self.zero_stage, self.offload) {
                (0, _) => "full, data parallel".to_string(),
                (stage, Offload::None) => format!("full, ZeRO-{stage}"),
                (stage, Offload::Optimizer) => format!("full, ZeRO-{stage} + optimizer offload"),
                (stage, Offload::OptimizerAndParams) => format!("full, ZeRO-{stage} + optimizer and parameter offload"),
            },
            Method::Lora => "LoRA (bf16 base)".to_string(),
            Method::Qlora => "QLoRA (NF4 base)".to_string(),
        };
        if self.memopt { format!("{method}, checkpointing + flash attention + fused loss") } else { method }
    }

    pub fn method_name(&self) -> &'static str {
        match self.method {
            Method::Full => "full",
            Method::Lora => "lora",
            Method::Qlora => "qlora",
        }
    }
}

/// What became of a candidate.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The first that fits: the choice.
    Chosen,
    /// Fits, but a simpler candidate before it does too.
    AlsoFits,
    /// Needs more than the device's usable memory.
    TooBig,
    /// Offload needs more host memory than `--cpu-memory`.
    HostTooSmall,
    /// This build cannot run it, or the estimate needs what is not known; the reason.
    Skipped(String),
}

/// A candidate with its prediction.
#[derive(Debug, Clone)]
pub struct Considered {
    pub candidate: Candidate,
    /// Predicted peak bytes per device (None when skipped).
    pub per_device: Option<f64>,
    /// Bytes per machine offload puts in host memory (with DeepSpeed's buffer factor).
    pub host_per_node: f64,
    pub verdict: Verdict,
}

impl Considered {
    /// Why it was kept or dropped, in words.
    pub fn why(&self, usable: f64) -> String {
        let gib = show_bytes;
        match (&self.verdict, self.per_device) {
            (Verdict::Chosen, Some(need)) => {
                format!("chosen: the simplest that fits ({} of {} usable)", gib(need), gib(usable))
            }
            (Verdict::AlsoFits, _) => "fits, but a simpler candidate above does too".to_string(),
            (Verdict::TooBig, Some(need)) => format!("{} over the {} usable", gib(need - usable), gib(usable)),
            (Verdict::HostTooSmall, _) => format!("needs {} of host memory per machine", gib(self.host_per_node)),
            (Verdict::Skipped(reason), _) => reason.clone(),
            _ => String::new(),
        }
    }
}

pub const GIB: f64 = (1u64 << 30) as f64;

/// Bytes as GiB, or MiB below one GiB (a small model's needs would all read 0.0 GiB).
pub fn show_bytes(bytes: f64) -> String {
    if bytes.abs() >= GIB { format!("{:.1} GiB", bytes / GIB) } else { format!("{:.1} MiB", bytes / (1024.0 * 1024.0)) }
}

/// A guide row, as `--json` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    SimpleFinetuning,
    OneGpu7bTo13b,
    Large70b,
    RlhfDpo,
    MultiNode,
    CleanCode,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::SimpleFinetuning => "simple-finetuning",
            Scenario::OneGpu7bTo13b => "7b-13b",
            Scenario::Large70b => "70b+",
            Scenario::RlhfDpo => "rlhf-dpo",
            Scenario::MultiNode => "multi-node",
            Scenario::CleanCode => "clean-code",
        }
    }

    /// The row as DESIGN.md's table writes it: scenario, the Python tool it stands for.
    pub fn row(self) -> (&'static str, &'static str) {
        match self {
            Scenario::SimpleFinetuning => ("Simple finetuning", "Accelerate + PEFT"),
            Scenario::OneGpu7bTo13b => ("7B–13B models, one GPU", "Unsloth"),
            Scenario::Large70b => ("70B+ models", "DeepSpeed ZeRO-3"),
            Scenario::RlhfDpo => ("RLHF / DPO alignment", "TRL"),
            Scenario::MultiNode => ("Multi-node cluster", "Ray Train"),
            Scenario::CleanCode => ("Clean code structure", "PyTorch Lightning"),
        }
    }
}

/// The walk and its outcome.
#[derive(Debug, Clone)]
pub struct Recommendation {
    pub considered: Vec<Considered>,
    /// Index of the chosen candidate in `considered`.
    pub chosen: Option<usize>,
    /// With nothing chosen: the candidate with the smallest shortfall.
    pub closest: Option<usize>,
    /// Every row the job falls under, the most specific first ([`Recommendation::scenario`]).
    pub scenarios: Vec<Scenario>,
    /// The llmtrain crates composed, in the guide's order.
    pub crates: Vec<&'static str>,
    /// Why the walk went in this order.
    pub order: &'static str,
    /// With nothing chosen: what would make the closest fit.
    pub remedies: Vec<String>,
}

impl Recommendation {
    pub fn scenario(&self) -> Scenario {
        self.scenarios[0]
    }

    /// The chosen candidate, or the closest when nothing fits.
    pub fn pick(&self) -> Option<&Considered> {
        self.chosen.or(self.closest).map(|index| &self.considered[index])
    }
}

/// Why no walk could start.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GuideError {
    #[error("--gpus must be at least 1")]
    NoGpus,
    #[error("--nodes must be at least 1")]
    NoNodes,
    #[error("--gpus {gpus} does not spread evenly over --nodes {nodes}: give a multiple of {nodes}")]
    Uneven { gpus: usize, nodes: usize },
    #[error("--batch and --seq-len must be at least 1")]
    EmptyBatch,
    #[error("--method {0}: pretraining trains every weight from scratch; use --method full or auto")]
    PretrainMethod(&'static str),
    #[error("--method {0} needs the model's shape: give --model DIR, or --params with a standard size")]
    NeedsShape(&'static str),
    #[error("{0}")]
    Estimate(#[from] EstimateError),
}

/// The candidates in the order the guide tries them, simplest first.
pub fn walk(work: &Workload, hardware: &Hardware) -> (Vec<Candidate>, &'static str) {
    let with_and_without =
        |method, zero_stage, offload| [false, true].map(|memopt| Candidate { method, zero_stage, offload, memopt });
    // Hugging Face's advice for DeepSpeed, fastest first: stage 0, 1, 2, 2 + offload, 3, 3 + offloads. Stages 1-3
    // without offload save nothing on one device.
    let mut full = Vec::new();
    for (stage, offload) in [
        (0, Offload::None),
        (1, Offload::None),
        (2, Offload::None),
        (2, Offload::Optimizer),
        (3, Offload::None),
        (3, Offload::Optimizer),
        (3, Offload::OptimizerAndParams),
    ] {
        if hardware.gpus == 1 && stage > 0 && offload == Offload::None {
            continue;
        }
        full.extend(with_and_without(Method::Full, stage, offload));
    }
    let adapters = |methods: &[Method]| -> Vec<Candidate> {
        methods.iter().flat_map(|&method| with_and_without(method, 0, Offload::None)).collect()
    };
    match (work.task, work.method) {
        (Task::Pretrain, _) => (full, "pretraining trains every weight: data parallelism first, then ZeRO's stages"),
        (_, MethodChoice::Only(Method::Full)) => (full, "--method full: data parallelism first, then ZeRO's stages"),
        (_, MethodChoice::Only(method)) => (adapters(&[method]), "--method as asked: without memopt first"),
        (_, MethodChoice::Auto) if work.params >= LARGE_MODEL_PARAMS => {
            let mut order = full;
            order.extend(adapters(&[Method::Lora, Method::Qlora]));
            (
                order,
                "60B+ parameters: the guide's row is DeepSpeed's (full finetuning, ZeRO's stages then offload); LoRA \
                 and QLoRA only if none fits",
            )
        }
        (_, MethodChoice::Auto) => {
            let mut order = adapters(&[Method::Lora, Method::Qlora]);
            order.extend(full);
            (
                order,
                "below 60B parameters, finetuning starts from LoRA (Accelerate + PEFT), then QLoRA (Unsloth's \
                 path), then full finetuning sharded by ZeRO",
            )
        }
    }
}

/// Walks the guide: predicts each candidate's memory per device and keeps the first that fits.
pub fn recommend(work: &Workload, hardware: &Hardware) -> Result<Recommendation, GuideError> {
    check(work, hardware)?;
    let (order, why_order) = walk(work, hardware);
    let mut considered = Vec::with_capacity(order.len());
    let mut chosen = None;
    for candidate in order {
        let (per_device, host_per_node, verdict) = match unsupported(work, &candidate) {
            Some(reason) => (None, 0.0, Verdict::Skipped(reason)),
            None => {
                let need = predict(work, hardware, &candidate)?;
                let verdict = match need.fits(hardware) {
                    Err(verdict) => verdict,
                    Ok(()) if chosen.is_none() => {
                        chosen = Some(considered.len());
                        Verdict::Chosen
                    }
                    Ok(()) => Verdict::AlsoFits,
                };
                (Some(need.device), need.host_per_node, verdict)
            }
        };
        considered.push(Considered { candidate, per_device, host_per_node, verdict });
    }
    let closest = match chosen {
        Some(_) => None,
        None => considered
            .iter()
            .enumerate()
            .filter_map(|(index, c)| c.per_device.map(|need| (index, need)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(index, _)| index),
    };
    let remedies = match closest {
        Some(index) => remedies(work, hardware, &considered[index].candidate)?,
        None => Vec::new(),
    };
    let pick = chosen.or(closest).map(|index| considered[index].candidate);
    let (scenarios, crates) = match pick {
        Some(candidate) => rows(work, hardware, &candidate),
        None => (vec![Scenario::SimpleFinetuning], vec!["accel"]),
    };
    Ok(Recommendation { considered, chosen, closest, scenarios, crates, order: why_order, remedies })
}

fn check(work: &Workload, hardware: &Hardware) -> Result<(), GuideError> {
    if hardware.gpus == 0 {
        return Err(GuideError::NoGpus);
    }
    if hardware.nodes == 0 {
        return Err(GuideError::NoNodes);
    }
    if !hardware.gpus.is_multiple_of(hardware.nodes) {
        return Err(GuideError::Uneven { gpus: hardware.gpus, nodes: hardware.nodes });
    }
    if work.batch == 0 || work.seq_len == 0 {
        return Err(GuideError::EmptyBatch);
    }
    match (work.task, work.method) {
        (Task::Pretrain, MethodChoice::Only(Method::Lora)) => return Err(GuideError::PretrainMethod("lora")),
        (Task::Pretrain, MethodChoice::Only(Method::Qlora)) => return Err(GuideError::PretrainMethod("qlora")),
        (_, MethodChoice::Only(Method::Lora)) if work.model.is_none() => return Err(GuideError::NeedsShape("lora")),
        (_, MethodChoice::Only(Method::Qlora)) if work.model.is_none() => return Err(GuideError::NeedsShape("qlora")),
        _ => {}
    }
    Ok(())
}

/// Why this build cannot run a candidate, or the estimate cannot be made.
fn unsupported(work: &Workload, candidate: &Candidate) -> Option<String> {
    if candidate.method != Method::Full && work.model.is_none() {
        return Some("needs the model's shape (--model DIR or a standard --params size)".to_string());
    }
    if candidate.method != Method::Full && work.task == Task::Reward {
        return Some("reward models train in full in this build (no adapters)".to_string());
    }
    let trainer = work.task.is_alignment().then(|| work.task.name());
    match llmtrain_zero::not_partitioned(candidate.method != Method::Full, trainer) {
        Some(what) if candidate.zero_stage == 3 => Some(format!("ZeRO-3 does not partition {what} in this build")),
        _ => None,
    }
}

/// What the estimator takes for a candidate: bf16 compute over f32 master weights, memopt's savings as the
/// candidate asks, the task's sequences per row.
pub fn estimate_input(work: &Workload, hardware: &Hardware, candidate: &Candidate) -> EstimateInput {
    EstimateInput {
        params: work.params,
        model: work.model.clone(),
        method: candidate.method,
        lora_rank: work.lora_rank,
        precision: Precision::Mixed,
        compute: MixedPrecision::Bf16,
        attention: if candidate.memopt { AttentionImpl::Flash } else { AttentionImpl::Eager },
        zero_stage: candidate.zero_stage,
        gpus: hardware.gpus,
        offload: candidate.offload,
        batch: work
            .model
            .as_ref()
            .map(|_| BatchShape { batch: work.batch * work.task.sequences_per_row(), seq: work.seq_len }),
        gradient_checkpointing: candidate.memopt,
        fused_loss_chunk: candidate.memopt.then_some(LOSS_CHUNK),
    }
}

/// A candidate's predicted needs.
struct Need {
    /// Bytes per device.
    device: f64,
    /// Bytes per machine offload puts in host memory (with DeepSpeed's buffer factor).
    host_per_node: f64,
}

impl Need {
    /// Whether it fits the devices (and the host memory, when known), or the verdict that says why not.
    fn fits(&self, hardware: &Hardware) -> Result<(), Verdict> {
        if self.device > hardware.usable() {
            Err(Verdict::TooBig)
        } else if hardware.cpu_memory.is_some_and(|cpu| self.host_per_node > cpu) {
            Err(Verdict::HostTooSmall)
        } else {
            Ok(())
        }
    }
}

fn predict(work: &Workload, hardware: &Hardware, candidate: &Candidate) -> Result<Need, GuideError> {
    let estimate = estimate(&estimate_input(work, hardware, candidate))?;
    let frozen = work.task.frozen_copies(candidate.method) * work.params as f64 * 2.0;
    let host_per_node = estimate.host * hardware.gpus_per_node() as f64 * HOST_BUFFER_FACTOR;
    Ok(Need { device: estimate.total() + frozen, host_per_node })
}

/// The first candidate of the walk this build runs that fits, if any.
fn first_fit(work: &Workload, hardware: &Hardware) -> Result<Option<Candidate>, GuideError> {
    for candidate in walk(work, hardware).0.into_iter().filter(|c| unsupported(work, c).is_none()) {
        if predict(work, hardware, &candidate)?.fits(hardware).is_ok() {
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}

/// The guide's rows for a choice and the crates it composes.
fn rows(work: &Workload, hardware: &Hardware, candidate: &Candidate) -> (Vec<Scenario>, Vec<&'static str>) {
    let mut scenarios = Vec::new();
    let mut crates = Vec::new();
    if hardware.nodes > 1 {
        scenarios.push(Scenario::MultiNode);
        crates.push("raytrain");
    }
    if work.task.is_alignment() {
        scenarios.push(Scenario::RlhfDpo);
        crates.push("trl");
    }
    let sharded = candidate.zero_stage > 0 || candidate.offload != Offload::None;
    let one_gpu_row = candidate.method == Method::Qlora
        || (candidate.method == Method::Lora
            && (candidate.memopt || (hardware.gpus == 1 && work.params >= ONE_GPU_ROW_PARAMS)));
    let (row, row_crates): (Scenario, &[&'static str]) = if sharded {
        (Scenario::Large70b, &["zero"])
    } else if one_gpu_row {
        (Scenario::OneGpu7bTo13b, &["fastlora", "memopt"])
    } else if candidate.method == Method::Lora {
        (Scenario::SimpleFinetuning, &["accel", "fastlora"])
    } else if work.task == Task::Pretrain {
        (Scenario::CleanCode, &["lightning", "accel"])
    } else {
        (Scenario::SimpleFinetuning, &["accel"])
    };
    scenarios.push(row);
    for name in row_crates {
        if !crates.contains(name) {
            crates.push(name);
        }
    }
    if candidate.memopt && !crates.contains(&"memopt") {
        crates.push("memopt");
    }
    (scenarios, crates)
}

/// What would make the closest candidate fit: more devices, shorter sequences, fewer rows, or offload.
fn remedies(work: &Workload, hardware: &Hardware, closest: &Candidate) -> Result<Vec<String>, GuideError> {
    let mut remedies = Vec::new();
    // More devices: the fewest (doubling) with which some candidate fits.
    let mut gpus = hardware.gpus;
    while gpus < 1 << 16 {
        gpus *= 2;
        if let Some(candidate) = first_fit(work, &Hardware { gpus, ..*hardware })? {
            remedies.push(format!("--gpus {gpus} ({})", candidate.describe()));
            break;
        }
    }
    if work.model.is_some() {
        let mut seq_len = work.seq_len;
        while seq_len > 64 {
            seq_len /= 2;
            if first_fit(&Workload { seq_len, ..work.clone() }, hardware)?.is_some() {
                remedies.push(format!("--seq-len {seq_len}"));
                break;
            }
        }
        if work.batch > 1 && first_fit(&Workload { batch: 1, ..work.clone() }, hardware)?.is_some() {
            remedies.push("--batch 1 (with gradient accumulation for the same effective batch)".to_string());
        }
    }
    if closest.offload == Offload::None && closest.method == Method::Full {
        remedies.push("ZeRO-Offload moves the optimizer (and at stage 3 the parameters) to host memory".to_string());
    }
    Ok(remedies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmtrain_memopt::estimate::{count_params, standard_shape};

    fn job(size: &str, task: Task) -> Workload {
        let count = llmtrain_memopt::estimate::parse_param_count(size).unwrap();
        let model = standard_shape(count, None, size).unwrap().map(|s| s.config());
        let params = model.as_ref().map_or(count, count_params);
        Workload { params, model, task, method: MethodChoice::Auto, batch: 8, seq_len: 1024, lora_rank: 16 }
    }

    fn gpus(gpus: usize, gib: f64) -> Hardware {
        Hardware { gpus, nodes: 1, gpu_memory: gib * GIB, cpu_memory: None }
    }

    fn chosen(work: &Workload, hardware: &Hardware) -> (Candidate, Recommendation) {
        let recommendation = recommend(work, hardware).unwrap();
        let index = recommendation.chosen.unwrap_or_else(|| panic!("nothing fits: {recommendation:?}"));
        (recommendation.considered[index].candidate, recommendation)
    }

    #[test]
    fn the_guides_own_scenarios() {
        // 70B on 64 x 80 GB: ZeRO-3.
        let (choice, r) = chosen(&job("70B", Task::Sft), &gpus(64, 80.0));
        assert_eq!((choice.method, choice.zero_stage, choice.offload), (Method::Full, 3, Offload::None));
        assert_eq!((r.scenario(), r.crates[0]), (Scenario::Large70b, "zero"));
        // 70B on 8 x 80 GB: ZeRO-3 with the optimizer offloaded.
        let (choice, _) = chosen(&job("70B", Task::Sft), &gpus(8, 80.0));
        assert_eq!((choice.zero_stage, choice.offload), (3, Offload::Optimizer));
        // 7B on one 16 GB GPU: QLoRA through fastlora.
        let (choice, r) = chosen(&job("7B", Task::Sft), &gpus(1, 16.0));
        assert_eq!(choice.method, Method::Qlora);
        assert_eq!((r.scenario(), r.crates.clone()), (Scenario::OneGpu7bTo13b, vec!["fastlora", "memopt"]));
        // 1B on one 80 GB GPU: Accelerate + LoRA.
        let (choice, r) = chosen(&job("1B", Task::Sft), &gpus(1, 80.0));
        assert_eq!((choice.method, choice.memopt), (Method::Lora, false));
        assert_eq!((r.scenario(), r.crates.clone()), (Scenario::SimpleFinetuning, vec!["accel", "fastlora"]));
        // Any DPO: trl.
        for hardware in [gpus(1, 80.0), gpus(8, 80.0), gpus(1, 24.0)] {
            let (_, r) = chosen(&job("7B", Task::Dpo), &hardware);
            assert_eq!((r.scenario(), r.crates[0]), (Scenario::RlhfDpo, "trl"));
        }
        // Two nodes: raytrain.
        let (_, r) = chosen(&job("7B", Task::Sft), &Hardware { nodes: 2, ..gpus(16, 80.0) });
        assert_eq!((r.scenario(), r.crates[0]), (Scenario::MultiNode, "raytrain"));
        // Pretraining: Lightning's loop over data parallelism.
        let (choice, r) = chosen(&job("1B", Task::Pretrain), &gpus(8, 80.0));
        assert_eq!(choice.method, Method::Full);
        assert_eq!(r.scenario(), Scenario::CleanCode);
    }

    #[test]
    fn the_walk_keeps_the_first_fit_and_says_why_for_the_rest() {
        let (_, r) = chosen(&job("7B", Task::Sft), &gpus(1, 16.0));
        let chosen = r.chosen.unwrap();
        for (index, c) in r.considered.iter().enumerate() {
            match index.cmp(&chosen) {
                std::cmp::Ordering::Less => assert!(matches!(c.verdict, Verdict::TooBig), "{c:?}"),
                std::cmp::Ordering::Equal => assert_eq!(c.verdict, Verdict::Chosen),
                std::cmp::Ordering::Greater => {
                    assert!(!matches!(c.verdict, Verdict::Chosen), "{c:?}")
                }
            }
        }
        // The memory each LoRA candidate needs falls with memopt and with NF4.
        let need: Vec<f64> = r.considered[..4].iter().map(|c| c.per_device.unwrap()).collect();
        assert!(need[1] < need[0] && need[2] < need[0] && need[3] < need[2], "{need:?}");
    }

    #[test]
    fn nothing_fits_names_the_closest_and_what_would_fit() {
        let r = recommend(&job("70B", Task::Sft), &gpus(1, 16.0)).unwrap();
        assert_eq!(r.chosen, None);
        let closest = r.pick().unwrap();
        assert!(closest.per_device.unwrap() > gpus(1, 16.0).usable());
        // More 16 GB devices do not help (the activations stay); shorter sequences do (with everything offloaded).
        assert!(r.remedies.iter().any(|remedy| remedy.starts_with("--seq-len ")), "{:?}", r.remedies);
        assert!(!r.remedies.iter().any(|remedy| remedy.starts_with("--gpus ")), "{:?}", r.remedies);
        // Unless the host cannot hold what is offloaded: then neither does.
        let r = recommend(&job("70B", Task::Sft), &Hardware { cpu_memory: Some(64.0 * GIB), ..gpus(1, 16.0) }).unwrap();
        assert!(!r.remedies.iter().any(|remedy| remedy.starts_with("--seq-len ")), "{:?}", r.remedies);
        // Full finetuning of 70B on one 80 GB device with 64 GB of host memory (too little to offload to): more
        // devices make ZeRO-3 fit without offload.
        let full = Workload { batch: 1, method: MethodChoice::Only(Method::Full), ..job("70B", Task::Sft) };
        let r = recommend(&full, &Hardware { cpu_memory: Some(64.0 * GIB), ..gpus(1, 80.0) }).unwrap();
        assert_eq!(r.chosen, None, "{r:?}");
        let more = r.remedies.iter().find(|remedy| remedy.starts_with("--gpus ")).expect("a --gpus remedy");
        assert!(more.contains("ZeRO-3") && !more.contains("offload"), "{more}");
    }

    #[test]
    fn bad_hardware_is_named() {
        let work = job("7B", Task::Sft);
        assert_eq!(recommend(&work, &gpus(0, 80.0)).unwrap_err(), GuideError::NoGpus);
        assert_eq!(
            recommend(&work, &Hardware { nodes: 3, ..gpus(8, 80.0) }).unwrap_err(),
            GuideError::Uneven { gpus: 8, nodes: 3 }
        );
        let pretrain_lora = Workload { method: MethodChoice::Only(Method::Lora), ..job("1B", Task::Pretrain) };
        assert_eq!(recommend(&pretrain_lora, &gpus(1, 80.0)).unwrap_err(), GuideError::PretrainMethod("lora"));
    }
}

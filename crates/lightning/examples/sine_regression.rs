//! A Lightning module that is not an LLM: a small MLP learns y = sin(x) from points the example generates, trained
//! by `Trainer::fit` with early stopping, the two best checkpoints by validation loss, and the CSV and TensorBoard
//! loggers. Run it with `cargo run --release -p llmtrain-lightning --example sine_regression -- [DIR] [--resume]`.

use std::path::Path;

use burn::backend::Autodiff;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use llmtrain_accel::{Accelerator, AcceleratorConfig};
use llmtrain_core::device::CpuBackend;
use llmtrain_core::train::Schedule;
use llmtrain_core::train::checkpoint::ResumeFrom;
use llmtrain_lightning::{
    DataModule, Datasets, EarlyStopping, EarlyStoppingSection, FitSummary, InnerNet, LightningModule, LoggerKind,
    LossParts, ModelCheckpointSection, Result, StepContext, StepOutput, Trainer, TrainerSettings,
};

pub type A = Autodiff<CpuBackend>;
/// One point: (x, y).
pub type Point = (f32, f32);

/// The network: one hidden layer of 32 units.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    hidden: Linear<B>,
    out: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    pub fn new(device: &B::Device) -> Self {
        Self { hidden: LinearConfig::new(1, 32).init(device), out: LinearConfig::new(32, 1).init(device) }
    }

    /// The summed squared error of the network's predictions at these points.
    fn squared_error(&self, points: &[Point], device: &B::Device) -> Tensor<B, 1> {
        let column = |values: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(values, [points.len(), 1]), device);
        let x = column(points.iter().map(|p| p.0).collect());
        let y = column(points.iter().map(|p| p.1).collect());
        (self.out.forward(relu(self.hidden.forward(x))) - y).powi_scalar(2).sum()
    }
}

/// The objective: mean squared error. Checkpoints and `final/` hold the network as burn's record (the defaults).
pub struct SineRegression;

impl<B: AutodiffBackend> LightningModule<B> for SineRegression {
    type Net = Mlp<B>;
    type Batch = Vec<Point>;

    fn batch_weight(&self, batch: &Vec<Point>) -> f64 {
        batch.len() as f64
    }

    fn training_step<'n>(
        &self,
        net: &'n Mlp<B>,
        batch: &Vec<Point>,
        ctx: &StepContext<'_, B>,
    ) -> Result<StepOutput<'n, B>> {
        Ok(StepOutput::loss(net.squared_error(batch, ctx.device)))
    }

    fn validation_step(&self, net: &InnerNet<B, Self>, batch: &Vec<Point>, device: &B::Device) -> Result<LossParts> {
        let sum = net.squared_error(batch, device).into_scalar().elem::<f64>();
        Ok(LossParts { sum, weight: batch.len() as f64 })
    }
}

/// 400 points of y = sin(x) plus a ripple, x in [-3, 3]; every fifth is held out for validation.
pub fn sine_points() -> Datasets<Point> {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for i in 0..400 {
        let x = -3.0 + 6.0 * i as f32 / 399.0;
        let split = if i % 5 == 0 { &mut val } else { &mut train };
        split.push((x, x.sin() + 0.05 * (37.0 * x).sin()));
    }
    Datasets::new(train, val, 16).expect("points to train on").shuffled(0)
}

/// Trains `net` in `dir` for at most `max_steps`, validating and checkpointing every 10 steps, or continues from
/// `resume` (the checkpoint's weights replace `net`'s).
pub fn fit(
    dir: &Path,
    max_steps: u64,
    resume: Option<ResumeFrom>,
    net: Mlp<A>,
    data: &mut impl DataModule<Mlp<A>, Batch = Vec<Point>>,
) -> Result<(FitSummary, Mlp<A>)> {
    let settings = TrainerSettings {
        max_steps,
        schedule: Schedule::constant(1e-2),
        log_every_n_steps: 10,
        val_check_interval: 10,
        model_checkpoint: ModelCheckpointSection {
            monitor: Some("eval_loss".into()),
            save_top_k: 2,
            every_n_train_steps: Some(10),
            ..Default::default()
        },
        loggers: vec![LoggerKind::Jsonl, LoggerKind::Csv, LoggerKind::Tensorboard],
        resume,
        ..TrainerSettings::new(dir)
    };
    let early_stopping = EarlyStopping::new(EarlyStoppingSection { min_delta: 1e-4, ..Default::default() });
    let mut accelerator = Accelerator::<A>::single(AcceleratorConfig::default())?;
    let mut trainer = Trainer::new(settings, &mut accelerator)?.with_callbacks(vec![Box::new(early_stopping)]);
    trainer.fit(&mut SineRegression, net, data, &Default::default())
}

fn main() -> Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "runs/sine_regression".into());
    let resume = std::env::args().any(|arg| arg == "--resume").then_some(ResumeFrom::Last);
    let (summary, _) = fit(Path::new(&dir), 2000, resume, Mlp::new(&Default::default()), &mut sine_points())?;
    let stop = summary.stopped_early.unwrap_or_else(|| "max_steps reached".into());
    println!("{} steps, eval loss {:?} ({stop}); logs in {dir}", summary.steps, summary.final_val_loss);
    Ok(())
}

//! The Accelerator's Accelerate-style calls one by one: accumulate / sync_gradients / step, backward's division
//! by the accumulation steps, gather, gather_for_metrics, reduce, prepare_data, print-once and config checks.

use burn::backend::Autodiff;
use burn::tensor::Tensor;
use llmtrain_accel::{AccelError, Accelerator, AcceleratorConfig, MixedPrecision, ReduceOp, run_in_process};
use llmtrain_core::data::{DataOptions, LossOn};
use llmtrain_core::device::CpuBackend;
use llmtrain_core::model::{LlamaModel, ModelConfig, ParamRef};
use llmtrain_core::train::LossScaleConfig;
use llmtrain_core::train::{AdamW, AdamWConfig};

type A = Autodiff<CpuBackend>;

fn config(accumulation: usize) -> AcceleratorConfig {
    AcceleratorConfig { gradient_accumulation_steps: accumulation, ..Default::default() }
}

fn embedding(model: &LlamaModel<A>) -> Vec<f32> {
    match &model.named_params()[0].1 {
        ParamRef::Matrix(p) => p.val().into_data().convert::<f32>().into_vec().unwrap(),
        ParamRef::Vector(_) => unreachable!("the embedding is a matrix"),
    }
}

#[test]
fn accumulation_syncs_every_nth_micro_batch_and_steps_only_then() {
    let device = Default::default();
    let mut acc = Accelerator::<A>::single(config(3)).unwrap();
    let mut model = LlamaModel::<A>::init(&ModelConfig::tiny_llama(16, 8, 1, 2, 1), &device, 1);
    let mut optimizer = AdamW::new(AdamWConfig::default());
    let before = embedding(&model);
    let mut last = before.clone();
    let mut synced = Vec::new();
    for _ in 0..6 {
        synced.push(acc.accumulate());
        assert_eq!(acc.sync_gradients(), *synced.last().unwrap());
        let tokens = Tensor::<A, 2, burn::tensor::Int>::from_data([[1, 2, 3]], &device);
        let loss = model.forward(tokens, None).sum().reshape([1]);
        acc.backward(&model, loss).unwrap();
        model = acc.step(model, &mut optimizer, 1e-2).unwrap();
        let now = embedding(&model);
        assert_eq!(now != last, acc.sync_gradients(), "weights change exactly on synchronising micro-batches");
        last = now;
    }
    assert_eq!(synced, vec![false, false, true, false, false, true]);
    assert_eq!(optimizer.step, 2);
    assert_ne!(embedding(&model), before);
}

#[test]
fn backward_divides_by_the_accumulation_steps() {
    // Three micro-batches of the same loss through accumulation 3 give the gradient of one: the clip norm sees it.
    let device = Default::default();
    let model = LlamaModel::<A>::init(&ModelConfig::tiny_llama(16, 8, 1, 2, 1), &device, 1);
    let tokens = || Tensor::<A, 2, burn::tensor::Int>::from_data([[1, 2, 3, 4]], &device);
    let mut once = Accelerator::<A>::single(config(1)).unwrap();
    once.accumulate();
    once.backward(&model, model.forward(tokens(), None).mean().reshape([1])).unwrap();
    let norm_once = once.clip_grad_norm(None).unwrap();
    let mut thrice = Accelerator::<A>::single(config(3)).unwrap();
    for _ in 0..3 {
        thrice.accumulate();
        thrice.backward(&model, model.forward(tokens(), None).mean().reshape([1])).unwrap();
    }
    let norm_thrice = thrice.clip_grad_norm(None).unwrap();
    assert!(norm_once > 0.0 && ((norm_once - norm_thrice) / norm_once).abs() < 1e-6, "{norm_once} vs {norm_thrice}");
}

#[test]
fn gather_reduce_and_gather_for_metrics_across_three_ranks() {
    let results = run_in_process(3, |comm| -> Result<_, AccelError> {
        let acc = Accelerator::<A>::new(AcceleratorConfig::default(), comm)?;
        let r = acc.rank() as f32;
        let gathered = acc.gather(&[r, r + 0.5])?;
        // 3 ranks × 2 samples, but the dataset had 5: the sixth was a repeat filling the last batch.
        let for_metrics = acc.gather_for_metrics(&[r, r + 0.5], 5)?;
        let sum = acc.reduce(acc.rank() as f64 + 1.0, ReduceOp::Sum)?;
        let mean = acc.reduce(acc.rank() as f64 + 1.0, ReduceOp::Mean)?;
        // f64 all the way: a token count past f32's 2^24 and a loss sum with more digits than f32 holds.
        let precise = acc.reduce_many(&[16_777_217.0, 0.1 + acc.rank() as f64 * 1e-9], ReduceOp::Sum)?;
        Ok((gathered, for_metrics, sum, mean, precise))
    })
    .unwrap();
    for (gathered, for_metrics, sum, mean, precise) in results {
        assert_eq!(gathered, vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
        assert_eq!(for_metrics, vec![0.0, 0.5, 1.0, 1.5, 2.0]);
        assert_eq!((sum, mean), (6.0, 2.0));
        assert_eq!(precise[0], 3.0 * 16_777_217.0);
        assert_eq!(precise[1], 0.1 + (0.1 + 1e-9) + (0.1 + 2e-9), "summed in f64, in rank order");
    }
}

#[test]
fn prepare_data_gives_each_rank_its_shard() {
    let options = DataOptions {
        files: vec![],
        seq_len: 8,
        batch_size: 2,
        packing: true,
        shuffle: false,
        seed: 0,
        loss_on: LossOn::All,
        skip_malformed: false,
        eval_fraction: 0.0,
        rank: 0,
        world_size: 1,
    };
    let shards = run_in_process(2, |comm| -> Result<_, AccelError> {
        let acc = Accelerator::<A>::new(AcceleratorConfig::default(), comm)?;
        let o = acc.prepare_data(&options);
        Ok((o.rank, o.world_size, o.batch_size, acc.is_main_process()))
    })
    .unwrap();
    assert_eq!(shards, vec![(0, 2, 2, true), (1, 2, 2, false)]);
}

#[test]
fn configs_it_cannot_honour_are_refused() {
    let err = |c: AcceleratorConfig| Accelerator::<A>::single(c).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err(config(0)).contains("gradient_accumulation_steps must be at least 1"));
    let no_window = LossScaleConfig { window: 0, ..Default::default() };
    let fp16 = AcceleratorConfig { mixed_precision: MixedPrecision::Fp16, loss_scale: no_window, ..Default::default() };
    assert!(err(fp16).contains("loss_scale_window"));
    let no_buckets = AcceleratorConfig { bucket_cap_mb: 0.0, ..Default::default() };
    assert!(err(no_buckets).contains("bucket_cap_mb"));
}

//! ZeRO stages 1, 2 and 3 as an accel [`Strategy`]: each rank keeps Adam's moments for its own share of the
//! flattened parameters ([`Partition`]) and updates only that share; under stages 1 and 2 the updated shares are
//! all-gathered so every rank holds the whole model again. Stage 1 all-reduces the gradients as plain data parallelism does; stage 2
//! reduce-scatters them after every micro-batch, so a rank keeps only its share's gradients between micro-batches.
//! With the optimizer offloaded (ZeRO-Offload), the share's moments live in host memory and its update runs on the
//! CPU backend; the device keeps no optimizer state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use llmtrain_accel::{AccelError, DataParallel, Gather, HeldBytes, Params, Strategy};
use llmtrain_core::device::CpuBackend;
use llmtrain_core::dist::{Communicator, SharedComm};
use llmtrain_core::hf::HostTensor;
use llmtrain_core::model::LayerSource;
use llmtrain_core::train::{AdamW, AdamWConfig, GradientBuffer, Moments};

use crate::partition::{Partition, Segment, read_share, write_share};
use crate::section::ZeroStage;
use crate::shards::{HostMoments, read_shares, saved_layout, shard_file, write_shard};
use crate::stage3::{Shards, SharedShards, ZeroLayers, decoder_layer, end_serving, lock};
use llmtrain_core::train::checkpoint::OPTIMIZER_META_FILE;

type Result<T> = std::result::Result<T, AccelError>;

/// A ZeRO stage (1, 2 or 3) over this rank's communicator.
pub struct Zero<B: Backend> {
    stage: ZeroStage,
    /// Elements per reduce-scatter / all-gather window (DeepSpeed's `reduce_bucket_size`).
    bucket_elems: usize,
    rank: usize,
    layout: Option<Layout<B>>,
    /// Stage 2: this rank's share of each parameter's gradient, summed over the step's micro-batches.
    shard_grads: GradientBuffer<B>,
    /// Stage 2: the parameters that had a gradient in this step.
    with_grads: BTreeSet<String>,
    transient_peak: u64,
    /// Time in this strategy's own collectives since the Accelerator last asked.
    comm_time: Duration,
    /// ZeRO-Offload: the share's optimizer state, in host memory (the run's optimizer keeps the step count and
    /// settings only).
    offloaded: Option<AdamW<CpuBackend>>,
    /// Stage 3: this rank's shares of the parameters and gradients, shared with the model's layer source.
    stage3: Option<SharedShards>,
}

/// The partition, this rank's segments of it, and the device the parameters live on.
struct Layout<B: Backend> {
    partition: Partition,
    mine: Vec<(String, Vec<Segment>)>,
    device: B::Device,
}

impl<B: Backend> Zero<B> {
    /// Stage `stage`, with windows of `bucket_elems` elements.
    pub fn new(stage: ZeroStage, bucket_elems: usize) -> Self {
        Self {
            stage,
            bucket_elems: bucket_elems.max(1),
            rank: 0,
            layout: None,
            shard_grads: GradientBuffer::default(),
            with_grads: BTreeSet::new(),
            transient_peak: 0,
            comm_time: Duration::ZERO,
            offloaded: None,
            stage3: None,
        }
    }

    /// Keeps the optimizer state in host memory and runs the update on the CPU (`offload_optimizer = "cpu"`).
    pub fn with_optimizer_offload(mut self) -> Self {
        self.offloaded = Some(AdamW::new(Default::default()));
        self
    }

    fn layout(&self) -> Result<&Layout<B>> {
        prepared(&self.layout)
    }

    /// Stage 2: reduce-scatters the micro-batch's gradients window by window and adds this rank's share
    /// (averaged over ranks) to `shard_grads`.
    fn reduce_scatter(&mut self, grads: &mut GradientBuffer<B>, comm: &dyn Communicator) -> Result<()> {
        let layout = prepared(&self.layout)?;
        let (partition, world) = (&layout.partition, layout.partition.world());
        let device = &layout.device;
        let mut pieces: BTreeMap<&str, Vec<f32>> = BTreeMap::new();
        // Every rank runs every window, whatever gradients it holds (a missing one counts as zeros).
        for window in 0..partition.windows() {
            let (start, span) = (partition.window(window).start, partition.window(window).span(world));
            let covered: Vec<Tensor<B, 1>> = partition
                .params()
                .iter()
                .filter_map(|(path, offset, len)| {
                    let (lo, hi) = ((*offset).max(start), (offset + len).min(start + span));
                    (lo < hi).then(|| match grads.get(path) {
                        Some(grad) => grad.clone().slice(lo - offset..hi - offset),
                        None => Tensor::zeros([hi - lo], device),
                    })
                })
                .collect();
            // One read of the window from the device, padded to the collective's length.
            let mut buffer = if covered.is_empty() { Vec::new() } else { host(Tensor::cat(covered, 0))? };
            buffer.resize(span, 0.0);
            let started = Instant::now();
            let mut mine = comm.reduce_scatter_sum(&buffer)?;
            self.comm_time += started.elapsed();
            mine.iter_mut().for_each(|v| *v /= world as f32);
            for (path, segments) in &layout.mine {
                for s in segments.iter().filter(|s| s.window == window) {
                    pieces.entry(path).or_default().extend(&mine[s.chunk_offset..s.chunk_offset + s.len]);
                }
            }
        }
        for (path, _) in grads.iter() {
            self.with_grads.insert(path.to_string());
        }
        for (path, values) in pieces {
            self.shard_grads.add(path, device_tensor(values, device));
        }
        grads.clear();
        self.transient_peak = self.transient_peak.max(4 * partition.largest_span() as u64);
        Ok(())
    }

    /// The parameters some rank had a gradient for in this step (a collective): every rank updates the same ones.
    fn stepped_params(&self, local: impl Fn(&str) -> bool, comm: &dyn Communicator) -> Result<BTreeSet<String>> {
        let params = prepared(&self.layout)?.partition.params();
        let mut present: Vec<f64> = params.iter().map(|(path, _, _)| f64::from(u8::from(local(path)))).collect();
        comm.all_reduce_sum_f64(&mut present)?;
        Ok(params.iter().zip(present).filter(|(_, n)| *n > 0.0).map(|((path, _, _), _)| path.clone()).collect())
    }

    /// Every rank's `chunks` (this rank's chunk of each window) put together: each whole parameter is handed to
    /// `emit` once its last window has been gathered, so no more than one window and the parameters it completes
    /// are held at a time besides the chunks.
    fn all_gather(
        &self,
        chunks: &[Vec<f32>],
        comm: &dyn Communicator,
        mut emit: impl FnMut(&str, Vec<f32>),
    ) -> Result<()> {
        let partition = &self.layout()?.partition;
        let mut params = partition.params().iter().peekable();
        let mut building: Vec<f32> = Vec::new();
        for (window, chunk_values) in chunks.iter().enumerate() {
            let gathered = comm.all_gather(chunk_values)?;
            let (start, span) = (partition.window(window).start, partition.window(window).span(partition.world()));
            // Copy the window into the parameters it covers, emitting those it completes.
            while let Some((path, offset, len)) = params.peek() {
                let (lo, hi) = ((*offset).max(start), (offset + len).min(start + span));
                if lo < hi {
                    building.extend(&gathered[lo - start..hi - start]);
                }
                if offset + len > start + span {
                    break;
                }
                emit(path, std::mem::take(&mut building));
                params.next();
            }
        }
        Ok(())
    }

    /// This rank's share of a whole flattened parameter (or moment).
    fn part_of(whole: Tensor<B, 1>, segments: &[Segment]) -> Tensor<B, 1> {
        if let [only] = segments
            && only.param_offset == 0
            && only.len == whole.shape().num_elements()
        {
            return whole;
        }
        let slices = segments.iter().map(|s| whole.clone().slice(s.param_offset..s.param_offset + s.len)).collect();
        Tensor::cat(slices, 0)
    }
}

/// The layout, once the model was prepared.
fn prepared<B: Backend>(layout: &Option<Layout<B>>) -> Result<&Layout<B>> {
    layout
        .as_ref()
        .ok_or_else(|| AccelError::Config("ZeRO: the model was not prepared (Accelerator::prepare_model)".into()))
}

/// Each parameter's moments (this rank's share) on the host.
fn host_moments<C: Backend>(optimizer: &AdamW<C>) -> Result<HostMoments> {
    optimizer
        .moments
        .iter()
        .map(|(path, m)| Ok((path.clone(), (host(m.exp_avg.clone())?, host(m.exp_avg_sq.clone())?))))
        .collect()
}

/// A tensor's values on the host.
fn host<C: Backend>(t: Tensor<C, 1>) -> Result<Vec<f32>> {
    t.into_data().convert::<f32>().into_vec().map_err(|e| AccelError::Tensor(format!("{e:?}")))
}

fn device_tensor<C: Backend>(values: Vec<f32>, device: &C::Device) -> Tensor<C, 1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

/// One AdamW update of a share (host values), on the training device or, offloaded, on the CPU.
#[allow(clippy::too_many_arguments)]
fn update_share<B: Backend>(
    offloaded: Option<&mut AdamW<CpuBackend>>,
    optimizer: &mut AdamW<B>,
    device: &B::Device,
    path: &str,
    (value, grad): (Vec<f32>, Vec<f32>),
    lr: f64,
    matrix: bool,
    bias: llmtrain_core::train::BiasCorrection,
) -> Result<Vec<f32>> {
    match offloaded {
        None => {
            host(optimizer.update(path, device_tensor(value, device), device_tensor(grad, device), lr, matrix, bias))
        }
        Some(host_optimizer) => {
            let cpu = Default::default();
            host(host_optimizer.update(path, device_tensor(value, &cpu), device_tensor(grad, &cpu), lr, matrix, bias))
        }
    }
}

impl<B: Backend> Zero<B> {
    fn shards(&self) -> Result<&SharedShards> {
        self.stage3.as_ref().ok_or_else(|| {
            AccelError::Config("ZeRO stage 3: the model was not prepared (Accelerator::prepare_model)".into())
        })
    }

    /// Stage 3, after each micro-batch: the gradients of the parameters outside the layers (the layers' went out
    /// during backward) reduce-scattered into this rank's shares, window by window.
    fn reduce_outside(&mut self, grads: &mut GradientBuffer<B>, comm: &dyn Communicator) -> Result<()> {
        let mut whole = BTreeMap::new();
        for (path, grad) in grads.iter() {
            // A layer's gradients go to the layer source as its backward makes them; one here was made by a forward
            // that did not walk the layers through it, and would be lost.
            if decoder_layer(path).is_some() {
                return Err(AccelError::Config(format!(
                    "ZeRO stage 3: {path} got a gradient outside the layer walk (the objective's forward must gather \
                     the layers through StepContext::layer_source)"
                )));
            }
            whole.insert(path.to_string(), host(grad.clone())?);
        }
        grads.clear();
        let mut shards = lock(self.shards()?)?;
        for window in shards.outside_windows() {
            shards.reduce_window(window, &whole, comm)?;
        }
        Ok(())
    }

    /// Stage 3's update: each share stepped from its gradient share in place; the parameters stay in shares (the
    /// next forward gathers them), so nothing is all-gathered.
    fn step_shares(
        &mut self,
        params: &Params<B>,
        optimizer: &mut AdamW<B>,
        lr: f64,
        bias: llmtrain_core::train::BiasCorrection,
        comm: &dyn Communicator,
    ) -> Result<()> {
        let shared = self.shards()?.clone();
        let local: BTreeSet<String> = lock(&shared)?.with_grads.clone();
        let stepped = self.stepped_params(|path| local.contains(path), comm)?;
        let layout = prepared(&self.layout)?;
        let mut shards = lock(&shared)?;
        for (path, segments) in &layout.mine {
            let Some((_, matrix)) = params.get(path) else {
                return Err(AccelError::Config(format!("ZeRO: {path} is not among the model's trainable parameters")));
            };
            // A parameter no rank had a gradient for keeps its value, as under plain data parallelism.
            if !stepped.contains(path) {
                continue;
            }
            let share = (read_share(&shards.params, segments), read_share(&shards.grads, segments));
            let value =
                update_share(self.offloaded.as_mut(), optimizer, &layout.device, path, share, lr, *matrix, bias)?;
            write_share(&mut shards.params, segments, &value);
        }
        shards.end_step();
        Ok(())
    }
}

impl<B: Backend> Strategy<B> for Zero<B> {
    fn describe(&self) -> String {
        let what = match self.stage {
            ZeroStage::One => "optimizer state",
            ZeroStage::Two => "optimizer state and gradients",
            ZeroStage::Three => {
                "optimizer state, gradients and parameters; each decoder layer gathered for its forward and its \
                 recompute"
            }
        };
        format!("ZeRO stage {} ({what} partitioned across ranks)", self.stage.number())
    }

    fn prepare(&mut self, sizes: &[(String, usize)], device: &B::Device, comm: &dyn Communicator) -> Result<()> {
        let partition = match self.stage {
            // A window per decoder layer (and per run of the parameters outside them): one all-gather a layer.
            ZeroStage::Three => Partition::by_unit(sizes, comm.world_size(), decoder_layer),
            ZeroStage::One | ZeroStage::Two => Partition::new(sizes, comm.world_size(), self.bucket_elems),
        };
        self.rank = comm.rank();
        if self.stage == ZeroStage::Three {
            self.stage3 = Some(Arc::new(Mutex::new(Shards::new(partition.clone(), self.rank))));
        }
        let mine = partition.segments(self.rank);
        self.layout = Some(Layout { partition, mine, device: device.clone() });
        Ok(())
    }

    fn reduce_gradients(
        &mut self,
        grads: &mut GradientBuffer<B>,
        comm: &dyn Communicator,
        sync: bool,
        bucket_elems: usize,
    ) -> Result<()> {
        match self.stage {
            ZeroStage::One => DataParallel.reduce_gradients(grads, comm, sync, bucket_elems),
            ZeroStage::Two => self.reduce_scatter(grads, comm),
            ZeroStage::Three => self.reduce_outside(grads, comm),
        }
    }

    fn grad_norm(&self, grads: &GradientBuffer<B>, comm: &dyn Communicator) -> Result<f64> {
        match self.stage {
            ZeroStage::One => Ok(grads.global_norm()),
            ZeroStage::Two => {
                let mut squares = [self.shard_grads.global_norm().powi(2)];
                comm.all_reduce_sum_f64(&mut squares)?;
                Ok(squares[0].sqrt())
            }
            ZeroStage::Three => {
                let shards = lock(self.shards()?)?;
                let local: f64 = shards.grads.iter().flatten().map(|g| f64::from(*g) * f64::from(*g)).sum();
                let mut squares = [local];
                comm.all_reduce_sum_f64(&mut squares)?;
                Ok(squares[0].sqrt())
            }
        }
    }

    fn scale_gradients(&mut self, grads: &mut GradientBuffer<B>, factor: f64) {
        grads.scale(factor);
        self.shard_grads.scale(factor);
        if let Some(Ok(mut shards)) = self.stage3.as_ref().map(lock) {
            shards.grads.iter_mut().flatten().for_each(|g| *g = (f64::from(*g) * factor) as f32);
        }
    }

    fn clear_gradients(&mut self, grads: &mut GradientBuffer<B>) {
        grads.clear();
        self.shard_grads.clear();
        self.with_grads.clear();
        if let Some(Ok(mut shards)) = self.stage3.as_ref().map(lock) {
            shards.end_step();
        }
    }

    fn step(
        &mut self,
        params: Params<B>,
        grads: &mut GradientBuffer<B>,
        optimizer: &mut AdamW<B>,
        lr: f64,
        comm: &dyn Communicator,
    ) -> Result<BTreeMap<String, Tensor<B, 1>>> {
        let bias = optimizer.begin_step();
        if let Some(host_optimizer) = self.offloaded.as_mut() {
            (host_optimizer.config, host_optimizer.step) = (optimizer.config, optimizer.step);
            host_optimizer.lr_scale.clone_from(&optimizer.lr_scale);
        }
        if self.stage == ZeroStage::Three {
            grads.clear();
            self.step_shares(&params, optimizer, lr, bias, comm)?;
            return Ok(BTreeMap::new());
        }
        let stepped = match self.stage {
            ZeroStage::One => self.stepped_params(|path| grads.get(path).is_some(), comm)?,
            _ => self.stepped_params(|path| self.with_grads.contains(path), comm)?,
        };
        let layout = prepared(&self.layout)?;
        // This rank's updated share, written straight into its chunk of each window.
        let mut chunks: Vec<Vec<f32>> = layout.partition.all_windows().iter().map(|w| vec![0.0f32; w.chunk]).collect();
        for (path, segments) in &layout.mine {
            let Some((value, matrix)) = params.get(path) else {
                return Err(AccelError::Config(format!("ZeRO: {path} is not among the model's trainable parameters")));
            };
            let value = Self::part_of(value.clone(), segments);
            let grad = match self.stage {
                ZeroStage::One => grads.take(path).map(|g| Self::part_of(g, segments)),
                _ => self.shard_grads.take(path),
            };
            // A gradient no rank had (stage 1 holds whole reduced gradients, so each rank has one or none alike).
            let grad = grad.filter(|_| stepped.contains(path));
            // A parameter without a gradient this step keeps its value, as under plain data parallelism.
            let value = match (grad, self.offloaded.as_mut()) {
                (Some(grad), None) => host(optimizer.update(path, value, grad, lr, *matrix, bias))?,
                (Some(grad), Some(host_optimizer)) => {
                    let share = (host(value)?, host(grad)?);
                    update_share(Some(host_optimizer), optimizer, &layout.device, path, share, lr, *matrix, bias)?
                }
                (None, _) => host(value)?,
            };
            write_share(&mut chunks, segments, &value);
        }
        grads.clear();
        self.shard_grads.clear();
        self.with_grads.clear();
        let mut updated = BTreeMap::new();
        let started = Instant::now();
        self.all_gather(&chunks, comm, |path, values| {
            if let Some((value, _)) = params.get(path) {
                updated.insert(path.to_string(), device_tensor(values, &value.device()));
            }
        })?;
        self.comm_time += started.elapsed();
        Ok(updated)
    }

    fn optimizer_files(&self, world: usize) -> Vec<String> {
        std::iter::once(OPTIMIZER_META_FILE.to_string()).chain((0..world).map(|r| shard_file(r, world))).collect()
    }

    fn write_optimizer_shard(&self, optimizer: &AdamW<B>, staging: &Path, _comm: &dyn Communicator) -> Result<()> {
        let layout = self.layout()?;
        // This rank's share, from wherever it lives.
        let moments = match &self.offloaded {
            Some(host_optimizer) => host_moments(host_optimizer)?,
            None => host_moments(optimizer)?,
        };
        write_shard(staging, &layout.partition, self.rank, &moments, optimizer.step, optimizer.config)
    }

    fn load_optimizer(
        &mut self,
        dir: &Path,
        config: AdamWConfig,
        device: &B::Device,
        _comm: &dyn Communicator,
    ) -> Result<AdamW<B>> {
        let layout = prepared(&self.layout)?;
        let (step, saved) = saved_layout(dir)?;
        let shares: HostMoments = match saved {
            Some(saved) => read_shares(dir, &saved, &layout.partition, self.rank)?,
            // A whole optimizer (plain data parallelism wrote it): this rank's segments of each moment.
            None => {
                let whole = llmtrain_core::train::checkpoint::load_optimizer::<B>(dir, config, device)?;
                let mut shares = HostMoments::new();
                for (path, segments) in &layout.mine {
                    if let Some(m) = whole.moments.get(path) {
                        let part = |t: &Tensor<B, 1>| host(Self::part_of(t.clone(), segments));
                        shares.insert(path.clone(), (part(&m.exp_avg)?, part(&m.exp_avg_sq)?));
                    }
                }
                shares
            }
        };
        let mut optimizer = AdamW::new(config);
        optimizer.step = step;
        for (path, (first, second)) in shares {
            match self.offloaded.as_mut() {
                Some(host_optimizer) => {
                    let cpu = Default::default();
                    let moments =
                        Moments { exp_avg: device_tensor(first, &cpu), exp_avg_sq: device_tensor(second, &cpu) };
                    host_optimizer.moments.insert(path, moments);
                }
                None => {
                    let moments =
                        Moments { exp_avg: device_tensor(first, device), exp_avg_sq: device_tensor(second, device) };
                    optimizer.moments.insert(path, moments);
                }
            }
        }
        Ok(optimizer)
    }

    fn take_communication_time(&mut self) -> Duration {
        let layers = match self.stage3.as_ref().map(lock) {
            Some(Ok(mut shards)) => std::mem::take(&mut shards.comm_time),
            _ => Duration::ZERO,
        };
        std::mem::take(&mut self.comm_time) + layers
    }

    fn releases_params(&self) -> bool {
        self.stage == ZeroStage::Three
    }

    fn keep_shares(&mut self, whole: BTreeMap<String, HostTensor>) -> Result<()> {
        lock(self.shards()?)?.keep(whole)
    }

    fn gather(&self, scope: Gather, comm: &dyn Communicator) -> Result<BTreeMap<String, HostTensor>> {
        let mut shards = lock(self.shards()?)?;
        match scope {
            Gather::Step => shards.gather_outside(comm),
            Gather::All => shards.gather_all(comm),
        }
    }

    fn layer_source(&self, comm: SharedComm) -> Option<Arc<dyn LayerSource>> {
        let shards = self.stage3.clone()?;
        Some(Arc::new(ZeroLayers { shards, comm, driven: false }))
    }

    fn driven_layer_source(&self, comm: SharedComm) -> Option<Arc<dyn LayerSource>> {
        let shards = self.stage3.clone()?;
        Some(Arc::new(ZeroLayers { shards, comm, driven: true }))
    }

    fn serve_layers(&self, comm: &dyn Communicator) -> Result<()> {
        match &self.stage3 {
            Some(shared) => lock(shared)?.serve(comm),
            None => Ok(()),
        }
    }

    fn end_serving(&self, comm: &dyn Communicator) -> Result<()> {
        match &self.stage3 {
            Some(_) => end_serving(comm),
            None => Ok(()),
        }
    }

    fn held_bytes(&self, grads: &GradientBuffer<B>, optimizer: &AdamW<B>) -> Option<HeldBytes> {
        let layout = self.layout.as_ref()?;
        let (total, owned) = (layout.partition.total() as u64, layout.partition.owned(self.rank) as u64);
        // Stage 1 keeps a whole gradient per parameter through the step; stages 2 and 3 their shares.
        let grads = match self.stage {
            ZeroStage::One => (4 * total).max(grads.bytes()),
            ZeroStage::Two | ZeroStage::Three => 4 * owned,
        };
        if let Some(shared) = &self.stage3 {
            let shards = lock(shared).ok()?;
            return Some(HeldBytes {
                params: 4 * shards.owned() as u64,
                grads,
                optimizer: optimizer.state_bytes(),
                offloaded_optimizer: self.offloaded.as_ref().map_or(0, AdamW::state_bytes),
                transient_peak: 4 * shards.peak_elems as u64,
            });
        }
        Some(HeldBytes {
            params: 4 * total,
            grads,
            optimizer: optimizer.state_bytes(),
            offloaded_optimizer: self.offloaded.as_ref().map_or(0, AdamW::state_bytes),
            transient_peak: self.transient_peak.max(4 * layout.partition.largest_span() as u64),
        })
    }
}

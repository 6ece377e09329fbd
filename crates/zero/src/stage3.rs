//! ZeRO stage 3's state: this rank's shares of the parameters and of the step's gradients, one chunk per window
//! of a [`Partition`] cut by gather unit (each decoder layer a window; the parameters outside the layers in
//! windows of their own). A layer is put together by one all-gather of its window when the model's forward (or
//! its recompute in backward) reaches it, and its gradients are reduce-scattered into the shares as soon as its
//! backward has made them ([`ZeroLayers`], the model's [`LayerSource`]). The parameters outside the layers are
//! gathered for the whole step, as FSDP does with its root unit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use llmtrain_accel::AccelError;
use llmtrain_core::dist::{Communicator, SharedComm};
use llmtrain_core::error::CoreError;
use llmtrain_core::hf::HostTensor;
use llmtrain_core::model::LayerSource;

use crate::partition::Partition;

type Result<T> = std::result::Result<T, AccelError>;

/// The decoder layer a parameter path belongs to (`layers.3.self_attn.q_proj.weight.Dense` → 3).
pub fn decoder_layer(path: &str) -> Option<usize> {
    path.strip_prefix("layers.")?.split('.').next()?.parse().ok()
}

/// This rank's shares, shared between the strategy and the layer source a model's forward calls.
pub struct Shards {
    pub partition: Partition,
    rank: usize,
    /// Per window: this rank's chunk of the parameter values (the last padded with zeros).
    pub params: Vec<Vec<f32>>,
    /// Per window: this rank's chunk of the step's gradients, summed over micro-batches, averaged over ranks.
    pub grads: Vec<Vec<f32>>,
    /// Each parameter's shape, by path.
    shapes: BTreeMap<String, Vec<usize>>,
    /// The window of each decoder layer.
    layer_windows: BTreeMap<usize, usize>,
    /// The parameters this rank had a gradient for in this step.
    pub with_grads: BTreeSet<String>,
    /// Time in the collectives since last asked.
    pub comm_time: Duration,
    /// Elements of the parameters outside the layers while they are gathered for a step.
    gathered_outside: usize,
    /// The most elements held whole at once (gathered parameters and a window's collective buffer).
    pub peak_elems: usize,
}

/// [`Shards`] behind a lock.
pub type SharedShards = Arc<Mutex<Shards>>;

/// The shares. Lock order: this lock, then the communicator's (a collective runs with the shares locked; nothing
/// takes this lock while holding the communicator's).
pub fn lock(shards: &SharedShards) -> Result<MutexGuard<'_, Shards>> {
    // A panic in the middle of an update leaves the shares half-written: no rank may train on.
    shards.lock().map_err(|_: PoisonError<_>| {
        AccelError::Config("ZeRO stage 3: a panic left this rank's shares half-updated".into())
    })
}

impl Shards {
    /// Empty shares over `partition` (cut by [`decoder_layer`]) for `rank`.
    pub fn new(partition: Partition, rank: usize) -> Self {
        let mut layer_windows = BTreeMap::new();
        for (path, offset, _) in partition.params() {
            if let Some(layer) = decoder_layer(path) {
                let window = partition.all_windows().iter().position(|w| w.start <= *offset && *offset < w.end);
                if let Some(window) = window {
                    layer_windows.insert(layer, window);
                }
            }
        }
        let chunks: Vec<Vec<f32>> = partition.all_windows().iter().map(|w| vec![0.0; w.chunk]).collect();
        Self {
            rank,
            params: chunks.clone(),
            grads: chunks,
            partition,
            shapes: BTreeMap::new(),
            layer_windows,
            with_grads: BTreeSet::new(),
            comm_time: Duration::ZERO,
            gathered_outside: 0,
            peak_elems: 0,
        }
    }

    /// Takes this rank's chunks of `whole` (every trainable parameter, by path).
    pub fn keep(&mut self, whole: BTreeMap<String, HostTensor>) -> Result<()> {
        for (path, segments) in self.partition.segments(self.rank) {
            let value = whole.get(&path).ok_or_else(|| {
                AccelError::Config(format!("ZeRO stage 3: the model has no trainable parameter {path}"))
            })?;
            let expected = self.partition.params().iter().find(|(p, _, _)| *p == path).map_or(0, |(_, _, n)| *n);
            if value.values.len() != expected || value.shape.iter().product::<usize>() != expected {
                return Err(AccelError::Tensor(format!(
                    "ZeRO stage 3: {path} has {} values of shape {:?}, the layout {expected}",
                    value.values.len(),
                    value.shape
                )));
            }
            for s in segments {
                self.params[s.window][s.chunk_offset..s.chunk_offset + s.len]
                    .copy_from_slice(&value.values[s.param_offset..s.param_offset + s.len]);
            }
        }
        self.shapes = whole.into_iter().map(|(path, t)| (path, t.shape)).collect();
        Ok(())
    }

    /// The windows outside the decoder layers.
    pub fn outside_windows(&self) -> Vec<usize> {
        let layers: BTreeSet<usize> = self.layer_windows.values().copied().collect();
        (0..self.partition.windows()).filter(|w| !layers.contains(w)).collect()
    }

    /// Window `window`'s parameters whole (one all-gather), by path with `strip` taken off the front.
    pub fn gather_window(
        &mut self,
        window: usize,
        strip: &str,
        comm: &dyn Communicator,
    ) -> Result<BTreeMap<String, HostTensor>> {
        let started = Instant::now();
        let gathered = comm.all_gather(&self.params[window])?;
        self.comm_time += started.elapsed();
        let start = self.partition.window(window).start;
        let mut out = BTreeMap::new();
        for (path, offset, len) in self.partition.params() {
            let w = self.partition.window(window);
            if *offset < w.start || *offset >= w.end {
                continue;
            }
            let shape = self.shapes.get(path).cloned().ok_or_else(|| {
                AccelError::Config(format!("ZeRO stage 3: {path} was gathered before its shares were taken"))
            })?;
            let values = gathered[offset - start..offset - start + len].to_vec();
            out.insert(path.strip_prefix(strip).unwrap_or(path).to_string(), HostTensor { shape, values });
        }
        Ok(out)
    }

    /// The parameters outside the layers, whole, for a step (they stay gathered until it ends).
    pub fn gather_outside(&mut self, comm: &dyn Communicator) -> Result<BTreeMap<String, HostTensor>> {
        let mut out = BTreeMap::new();
        for window in self.outside_windows() {
            out.extend(self.gather_window(window, "", comm)?);
        }
        self.gathered_outside = out.values().map(|t| t.values.len()).sum();
        self.note_live(0);
        Ok(out)
    }

    /// Every parameter whole (for a checkpoint or a validation: counted in the transient peak).
    pub fn gather_all(&mut self, comm: &dyn Communicator) -> Result<BTreeMap<String, HostTensor>> {
        let mut out = BTreeMap::new();
        for window in 0..self.partition.windows() {
            out.extend(self.gather_window(window, "", comm)?);
        }
        self.peak_elems = self.peak_elems.max(self.partition.total());
        Ok(out)
    }

    /// The window of decoder layer `layer`.
    fn layer_window(&self, layer: usize) -> std::result::Result<usize, CoreError> {
        self.layer_windows
            .get(&layer)
            .copied()
            .ok_or_else(|| CoreError::Invalid(format!("ZeRO stage 3: no parameters of decoder layer {layer}")))
    }

    /// Adds the gradients `grads` (whole, by path) of window `window` to this rank's chunk: one reduce-scatter,
    /// a missing gradient counting as zeros, the sum averaged over ranks.
    pub fn reduce_window(
        &mut self,
        window: usize,
        grads: &BTreeMap<String, Vec<f32>>,
        comm: &dyn Communicator,
    ) -> Result<()> {
        let world = self.partition.world();
        let w = self.partition.window(window);
        let mut buffer = vec![0.0f32; w.span(world)];
        for (path, offset, len) in self.partition.params() {
            if *offset < w.start || *offset >= w.end {
                continue;
            }
            if let Some(grad) = grads.get(path) {
                if grad.len() != *len {
                    return Err(AccelError::Tensor(format!("{path}: a gradient of {} values for {len}", grad.len())));
                }
                buffer[offset - w.start..offset - w.start + len].copy_from_slice(grad);
                self.with_grads.insert(path.clone());
            }
        }
        self.note_live(buffer.len());
        let started = Instant::now();
        let mine = comm.reduce_scatter_sum(&buffer)?;
        self.comm_time += started.elapsed();
        for (sum, part) in self.grads[window].iter_mut().zip(mine) {
            *sum += part / world as f32;
        }
        Ok(())
    }

    /// Records `elems` more held whole for the moment, on top of the parameters gathered for the step.
    fn note_live(&mut self, elems: usize) {
        self.peak_elems = self.peak_elems.max(self.gathered_outside + elems);
    }

    /// The step is over: what it had gathered is released.
    pub fn end_step(&mut self) {
        self.gathered_outside = 0;
        self.with_grads.clear();
        self.grads.iter_mut().for_each(|chunk| chunk.fill(0.0));
    }

    /// Elements this rank owns.
    pub fn owned(&self) -> usize {
        self.partition.owned(self.rank)
    }
}

/// The model's [`LayerSource`] under stage 3: a layer's window all-gathered for its forward or its recompute,
/// its gradients reduce-scattered into this rank's shares. `driven`: rank 0 alone gathers (writing a model), so
/// each gather first broadcasts the window to the ranks in [`Shards::serve`].
pub struct ZeroLayers {
    pub shards: SharedShards,
    pub comm: SharedComm,
    pub driven: bool,
}

/// What [`ZeroLayers`] broadcasts when rank 0 has no more gathers to ask for.
const NO_MORE_GATHERS: f32 = -1.0;

impl Shards {
    /// On a rank other than 0: takes part in the gathers rank 0's driven source asks for, window by window, until
    /// it says no more follow ([`end_serving`]).
    pub fn serve(&mut self, comm: &dyn Communicator) -> Result<()> {
        loop {
            let mut asked = [0.0f32];
            comm.broadcast(&mut asked, 0)?;
            if asked[0] < 0.0 {
                return Ok(());
            }
            let window = asked[0] as usize;
            if window >= self.params.len() {
                return Err(AccelError::Config(format!("ZeRO stage 3: rank 0 asked for window {window}")));
            }
            let started = Instant::now();
            comm.all_gather(&self.params[window])?;
            self.comm_time += started.elapsed();
        }
    }
}

/// On rank 0: tells the ranks in [`Shards::serve`] that no more gathers follow.
pub fn end_serving(comm: &dyn Communicator) -> Result<()> {
    comm.broadcast(&mut [NO_MORE_GATHERS], 0)?;
    Ok(())
}

fn core_error(err: AccelError) -> CoreError {
    match err {
        AccelError::Core(err) => err,
        other => CoreError::Invalid(other.to_string()),
    }
}

impl LayerSource for ZeroLayers {
    fn gather(&self, layer: usize) -> std::result::Result<BTreeMap<String, HostTensor>, CoreError> {
        let mut shards = lock(&self.shards).map_err(core_error)?;
        let window = shards.layer_window(layer)?;
        if self.driven {
            self.comm.broadcast(&mut [window as f32], 0).map_err(|e| core_error(e.into()))?;
        }
        let whole = shards.gather_window(window, &format!("layers.{layer}."), &self.comm).map_err(core_error)?;
        let elems = whole.values().map(|t| t.values.len()).sum();
        shards.note_live(elems);
        Ok(whole)
    }

    fn reduce(&self, layer: usize, grads: BTreeMap<String, Vec<f32>>) -> std::result::Result<(), CoreError> {
        let mut shards = lock(&self.shards).map_err(core_error)?;
        let window = shards.layer_window(layer)?;
        let named = grads.into_iter().map(|(path, values)| (format!("layers.{layer}.{path}"), values)).collect();
        shards.reduce_window(window, &named, &self.comm).map_err(core_error)?;
        // The layer is still whole while its gradients go out.
        let span = shards.partition.window(window).span(shards.partition.world());
        shards.note_live(2 * span);
        Ok(())
    }
}

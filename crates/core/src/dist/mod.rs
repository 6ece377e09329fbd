//! Collective communication between data-parallel ranks, behind one trait.
//!
//! [`Communicator`] is what the training loop and `llmtrain-accel` talk to; [`InProcess`] implements it for ranks
//! that are threads of one process (CPU threads, or several devices in one process). Reductions add the ranks'
//! contributions in rank order, so every rank gets bit-identical results and runs are reproducible.
//! With the `mpi` feature, `Mpi` connects the processes `mpirun`/`srun` started; with `cuda`, `Nccl` runs the
//! collectives between GPUs of one process. Both leave the summation order to the library, so sums can differ
//! from [`InProcess`] in the last bits (every rank still gets the same result).
//!
//! ```
//! use llmtrain_core::dist::{Communicator, InProcess};
//!
//! let ranks = InProcess::group(2);
//! let handles: Vec<_> = ranks
//!     .into_iter()
//!     .map(|comm| std::thread::spawn(move || {
//!         let mut grads = vec![comm.rank() as f32 + 1.0; 4];
//!         comm.all_reduce_sum(&mut grads).unwrap();
//!         grads
//!     }))
//!     .collect();
//! for h in handles {
//!     assert_eq!(h.join().unwrap(), vec![3.0; 4]);
//! }
//! ```

mod in_process;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "cuda")]
mod nccl;

#[cfg(feature = "mpi")]
pub use self::mpi::{Mpi, launched_by_mpi};
#[cfg(feature = "cuda")]
pub use self::nccl::Nccl;
pub use in_process::InProcess;

/// Why a collective could not complete.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DistError {
    #[error("rank {rank} failed: {reason}")]
    PeerFailed { rank: usize, reason: String },
    #[error("rank {rank} passed {found} values to a collective where rank 0 passed {expected}")]
    LengthMismatch { rank: usize, expected: usize, found: usize },
    #[error("broadcast root {root} is not below the world size {world}")]
    BadRoot { root: usize, world: usize },
    /// The MPI or NCCL library (or the setup around it) failed.
    #[error("communication backend failed: {0}")]
    Backend(String),
}

/// [`DistError::LengthMismatch`] for the first rank whose length differs from rank 0's. MPI and NCCL can't
/// detect this themselves (they hang, end the job or mix up data), so their communicators gather the
/// lengths first.
#[cfg(any(feature = "mpi", feature = "cuda"))]
fn check_lengths(lengths: &[u64]) -> Result<(), DistError> {
    let expected = lengths.first().copied().unwrap_or(0);
    match lengths.iter().position(|&len| len != expected) {
        Some(rank) => {
            Err(DistError::LengthMismatch { rank, expected: expected as usize, found: lengths[rank] as usize })
        }
        None => Ok(()),
    }
}

/// The collectives data parallelism needs. Every rank must call the same collectives in the same order.
pub trait Communicator: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Element-wise sum over ranks, in place, identical on every rank.
    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), DistError>;
    /// Element-wise sum over ranks of `data` (length divisible by the world size); rank r gets chunk r.
    fn reduce_scatter_sum(&self, data: &[f32]) -> Result<Vec<f32>, DistError>;
    /// Every rank's `data` (all of the same length), concatenated in rank order.
    fn all_gather(&self, data: &[f32]) -> Result<Vec<f32>, DistError>;
    /// Copies `root`'s `data` into every other rank's `data`.
    fn broadcast(&self, data: &mut [f32], root: usize) -> Result<(), DistError>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<(), DistError>;
    /// Tells the other ranks this one failed, so their pending and future collectives return an error instead
    /// of waiting forever.
    fn abort(&self, reason: &str);

    /// Element-wise f64 sum over ranks, identical on every rank, for scalars that need f64 (token counts past
    /// 2^24, loss sums). The values travel bit for bit through [`all_gather`](Self::all_gather) (each f64 as two
    /// f32 bit patterns, never computed with) and are added in rank order.
    fn all_reduce_sum_f64(&self, data: &mut [f64]) -> Result<(), DistError> {
        let bits: Vec<f32> = data
            .iter()
            .flat_map(|v| {
                let b = v.to_bits();
                [f32::from_bits(b as u32), f32::from_bits((b >> 32) as u32)]
            })
            .collect();
        let all = self.all_gather(&bits)?;
        if bits.is_empty() {
            return Ok(());
        }
        for (i, value) in data.iter_mut().enumerate() {
            *value = all
                .chunks(bits.len())
                .map(|rank| {
                    let (low, high) = (rank[2 * i].to_bits() as u64, rank[2 * i + 1].to_bits() as u64);
                    f64::from_bits(high << 32 | low)
                })
                .sum();
        }
        Ok(())
    }
}

/// One rank's communicator shared by several owners (the Accelerator, and ZeRO stage 3's layer source that a
/// model's forward calls): each collective takes a lock, so only one runs at a time, in the order the owners call.
#[derive(Clone)]
pub struct SharedComm(std::sync::Arc<std::sync::Mutex<Box<dyn Communicator>>>);

impl SharedComm {
    pub fn new(comm: Box<dyn Communicator>) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(comm)))
    }

    /// The communicator, even after a panic elsewhere left the lock poisoned (its state is the library's).
    fn lock(&self) -> std::sync::MutexGuard<'_, Box<dyn Communicator>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Communicator for SharedComm {
    fn rank(&self) -> usize {
        self.lock().rank()
    }
    fn world_size(&self) -> usize {
        self.lock().world_size()
    }
    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), DistError> {
        self.lock().all_reduce_sum(data)
    }
    fn reduce_scatter_sum(&self, data: &[f32]) -> Result<Vec<f32>, DistError> {
        self.lock().reduce_scatter_sum(data)
    }
    fn all_gather(&self, data: &[f32]) -> Result<Vec<f32>, DistError> {
        self.lock().all_gather(data)
    }
    fn broadcast(&self, data: &mut [f32], root: usize) -> Result<(), DistError> {
        self.lock().broadcast(data, root)
    }
    fn barrier(&self) -> Result<(), DistError> {
        self.lock().barrier()
    }
    fn abort(&self, reason: &str) {
        self.lock().abort(reason)
    }
    fn all_reduce_sum_f64(&self, data: &mut [f64]) -> Result<(), DistError> {
        self.lock().all_reduce_sum_f64(data)
    }
}

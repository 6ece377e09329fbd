//! Collective communication between data-parallel ranks, behind one trait.
//!
//! [`Communicator`] is what the training loop and `llmtrain-accel` talk to; [`InProcess`] implements it for ranks
//! that are threads of one process (CPU threads, or several devices in one process). Reductions add the ranks'
//! contributions in rank order, so every rank gets bit-identical results and runs are reproducible.
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
}

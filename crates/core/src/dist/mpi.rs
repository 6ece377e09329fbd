//! Ranks as processes started by `mpirun`/`srun`, exchanging through MPI's native collectives on
//! `MPI_COMM_WORLD`.
//!
//! rsmpi ignores MPI's return codes and MPI_COMM_WORLD keeps its default `MPI_ERRORS_ARE_FATAL` handler, so a
//! failing MPI call ends the whole job rather than returning an error; what this module can check itself (roots,
//! lengths, initialisation) comes back as [`DistError`].

use std::cell::Cell;
use std::marker::PhantomData;

use ::mpi::Threading;
use ::mpi::collective::SystemOperation;
use ::mpi::environment::Universe;
use ::mpi::topology::SimpleCommunicator;
use ::mpi::traits::{Communicator as _, CommunicatorCollectives as _, Root as _};

use super::{Communicator, DistError, check_lengths};

/// MPI counts are C `int`s; longer slices go through several calls.
const MAX_COUNT: usize = i32::MAX as usize;

/// Whether the environment says this process was started by an MPI launcher as one rank of a world, so that
/// [`Mpi::init`] joins that world (instead of making a world of one).
///
/// These are the variables MPI libraries themselves read to find their world: Open MPI's `mpirun`
/// (`OMPI_COMM_WORLD_SIZE`), MPICH/Intel MPI's Hydra and Slurm's PMI-2 (`PMI_SIZE`), PMIx launchers such as Open
/// MPI 5 and `srun --mpi=pmix` (`PMIX_RANK`), and a task `srun` started (`SLURM_PROCID` and `SLURM_NTASKS`,
/// with `SLURM_STEP_ID`, which only tasks of a job step have: a batch script has the allocation's
/// `SLURM_NTASKS` too but is no rank).
pub fn launched_by_mpi() -> bool {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    set("OMPI_COMM_WORLD_SIZE")
        || set("PMI_SIZE")
        || set("PMIX_RANK")
        || (set("SLURM_STEP_ID") && set("SLURM_PROCID") && set("SLURM_NTASKS"))
}

/// This process's rank in `MPI_COMM_WORLD`. Owns the MPI universe: MPI is initialised by [`Mpi::init`] (once per
/// process) and finalised when the `Mpi` is dropped.
///
/// `Mpi` is `Send` but not `Sync`: MPI is initialised with `MPI_THREAD_SERIALIZED`, which allows calls from any
/// thread as long as no two run at once, and one `Mpi` per process reachable from one thread at a time
/// guarantees that. (It holds no rsmpi communicator, whose raw handle would not be `Send`; the world
/// communicator is a constant re-created per call.) Drop it on the thread that created it, though: MPI asks for
/// `MPI_Finalize` on the thread that initialised MPI.
///
/// Sums are MPI's `MPI_SUM`, in whatever order the library's algorithm picks for the message and world size:
/// every rank gets the same result, but it can differ in the last bits from [`super::InProcess`]'s rank-order
/// sum.
pub struct Mpi {
    /// Finalises MPI when dropped; must outlive every MPI call, so it lives as long as the `Mpi`.
    _universe: Universe,
    rank: usize,
    world: usize,
    max_count: usize,
    _not_sync: PhantomData<Cell<()>>,
}

impl Mpi {
    /// Initialises MPI (with `MPI_THREAD_SERIALIZED`) and joins `MPI_COMM_WORLD`. Outside an MPI launch (see
    /// [`launched_by_mpi`]) MPI makes a world of just this process. Fails if MPI was already initialised in this
    /// process (MPI can be initialised only once, even after finalising) or lacks serialized threading support.
    pub fn init() -> Result<Mpi, DistError> {
        let (universe, provided) = ::mpi::initialize_with_threading(Threading::Serialized).ok_or_else(|| {
            DistError::Backend("MPI is already initialised in this process; Mpi::init can run only once".into())
        })?;
        if provided < Threading::Serialized {
            return Err(DistError::Backend(format!(
                "the MPI library provides thread level {provided:?}; Mpi needs Serialized, to be usable from a \
                 thread other than the one that initialised it"
            )));
        }
        let comm = universe.world();
        let rank = usize::try_from(comm.rank())
            .map_err(|_| DistError::Backend(format!("MPI returned the negative rank {}", comm.rank())))?;
        let world = usize::try_from(comm.size())
            .map_err(|_| DistError::Backend(format!("MPI returned the world size {}", comm.size())))?;
        Ok(Mpi { _universe: universe, rank, world, max_count: MAX_COUNT, _not_sync: PhantomData })
    }

    /// Splits every collective into MPI calls of at most `count` elements in total (clamped to `1..=i32::MAX`,
    /// the default, since MPI counts are C ints). Lowering it bounds the scratch buffers; its main use is
    /// testing the splitting without multi-gigabyte buffers.
    pub fn with_max_count(mut self, count: usize) -> Mpi {
        self.max_count = count.clamp(1, MAX_COUNT);
        self
    }

    fn comm(&self) -> SimpleCommunicator {
        SimpleCommunicator::world()
    }

    /// Gathers every rank's `len` so all ranks return the same [`DistError::LengthMismatch`] before any of
    /// them starts a collective the others would not match.
    fn agree_on_length(&self, len: usize) -> Result<(), DistError> {
        let mut lengths = vec![0u64; self.world];
        self.comm().all_gather_into(&(len as u64), &mut lengths[..]);
        check_lengths(&lengths)
    }

    /// Elements per rank per call for the collectives whose MPI buffers hold `world` pieces.
    fn piece_per_rank(&self) -> usize {
        (self.max_count / self.world).max(1)
    }
}

impl Communicator for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), DistError> {
        self.agree_on_length(data.len())?;
        // rsmpi has no MPI_IN_PLACE, so each piece is sent from a copy.
        let mut send = Vec::with_capacity(data.len().min(self.max_count));
        for piece in data.chunks_mut(self.max_count) {
            send.clear();
            send.extend_from_slice(piece);
            self.comm().all_reduce_into(&send[..], piece, SystemOperation::sum());
        }
        Ok(())
    }

    fn reduce_scatter_sum(&self, data: &[f32]) -> Result<Vec<f32>, DistError> {
        self.agree_on_length(data.len())?;
        // Like InProcess, a remainder past `chunk * world` is ignored (the trait asks for a divisible length).
        let chunk = data.len() / self.world;
        let mut out = vec![0.0; chunk];
        if chunk == 0 {
            return Ok(out);
        }
        if chunk * self.world <= self.max_count {
            self.comm().reduce_scatter_block_into(&data[..chunk * self.world], &mut out[..], SystemOperation::sum());
            return Ok(out);
        }
        // Piece by piece: columns start..start+n of every rank's chunk, so MPI's block r is our chunk r's piece.
        let step = self.piece_per_rank().min(chunk);
        let mut send = Vec::with_capacity(step * self.world);
        for start in (0..chunk).step_by(step) {
            let n = step.min(chunk - start);
            send.clear();
            for r in 0..self.world {
                send.extend_from_slice(&data[r * chunk + start..][..n]);
            }
            self.comm().reduce_scatter_block_into(&send[..], &mut out[start..start + n], SystemOperation::sum());
        }
        Ok(out)
    }

    fn all_gather(&self, data: &[f32]) -> Result<Vec<f32>, DistError> {
        self.agree_on_length(data.len())?;
        let len = data.len();
        let mut out = vec![0.0; len * self.world];
        if len == 0 {
            return Ok(out);
        }
        let step = self.piece_per_rank();
        if len <= step {
            self.comm().all_gather_into(data, &mut out[..]);
            return Ok(out);
        }
        let mut gathered = vec![0.0; step * self.world];
        for start in (0..len).step_by(step) {
            let piece = &data[start..(start + step).min(len)];
            let n = piece.len();
            self.comm().all_gather_into(piece, &mut gathered[..n * self.world]);
            for (r, from_r) in gathered[..n * self.world].chunks_exact(n).enumerate() {
                out[r * len + start..][..n].copy_from_slice(from_r);
            }
        }
        Ok(out)
    }

    fn broadcast(&self, data: &mut [f32], root: usize) -> Result<(), DistError> {
        let root_rank = match i32::try_from(root) {
            Ok(r) if root < self.world => r,
            _ => return Err(DistError::BadRoot { root, world: self.world }),
        };
        self.agree_on_length(data.len())?;
        let comm = self.comm();
        let process = comm.process_at_rank(root_rank);
        for piece in data.chunks_mut(self.max_count) {
            process.broadcast_into(piece);
        }
        Ok(())
    }

    fn barrier(&self) -> Result<(), DistError> {
        self.comm().barrier();
        Ok(())
    }

    /// Never returns: `MPI_Abort` on the world makes the launcher end every rank, so none waits forever.
    fn abort(&self, reason: &str) {
        // MPI_Abort ends this process before the caller could report the error: say it here, in the command
        // line's one-line error form.
        eprintln!("error: rank {} failed: {}", self.rank, reason.replace('\n', " "));
        self.comm().abort(1)
    }
}

impl Drop for Mpi {
    /// Aborts instead of finalising while a panic unwinds: `MPI_Finalize` waits for the other ranks, which may be
    /// blocked in a collective this rank will never join.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.abort("panicked");
        }
    }
}

//! Ranks as GPUs of one process, exchanging through NCCL. cudarc loads libcuda and libnccl when first used, so
//! this builds (and the rest of the crate runs) on machines without CUDA.
//!
//! Each collective copies the host slice to the rank's GPU, runs the NCCL collective there and copies the result
//! back: simple, and right for host-side gradients; tensors already on the GPU would skip both copies.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DriverError};
use cudarc::nccl::result::NcclError;
use cudarc::nccl::{Comm, ReduceOp};

use super::{Communicator, DistError, check_lengths};

/// How long a rank sleeps between checks of its collective's completion and of its peers' failure.
const POLL: Duration = Duration::from_micros(50);

/// One rank of an in-process NCCL group, bound to one GPU. Create the whole group with [`Nccl::group`] and move
/// each member to its own thread, as with [`super::InProcess`].
pub struct Nccl {
    comm: Comm,
    /// Set once by the first rank that aborts; the others return it instead of waiting for that rank.
    failure: Arc<OnceLock<DistError>>,
}

// SAFETY: `Comm` is not `Send` only because it holds NCCL's raw `ncclComm_t`. NCCL allows a communicator to be
// used from any thread as long as no two threads use it at once, and `Nccl` is not `Sync` (neither is `Comm`),
// so every call on it goes through the single thread that currently owns it. Dropping it on another thread
// (ncclCommAbort) is allowed too. Its CUDA stream and context are `Send + Sync` in cudarc already.
unsafe impl Send for Nccl {}

fn cuda_error(err: DriverError) -> DistError {
    DistError::Backend(format!("CUDA: {err}"))
}

fn nccl_error(err: NcclError) -> DistError {
    DistError::Backend(format!("NCCL: {:?}", err.0))
}

impl Nccl {
    /// One communicator per CUDA device ordinal in `devices`: rank `i` runs on `devices[i]`. All are created
    /// together (`ncclCommInitAll`), which is how NCCL sets up several GPUs driven by one process.
    pub fn group(devices: &[usize]) -> Result<Vec<Nccl>, DistError> {
        // SAFETY: only loads the libraries (running their initialisers), as cudarc's first call would; checking
        // first turns cudarc's panic on a missing library into an error.
        let (cuda_found, nccl_found) =
            unsafe { (cudarc::driver::sys::is_culib_present(), cudarc::nccl::sys::is_culib_present()) };
        if !cuda_found {
            return Err(DistError::Backend("the CUDA driver library (libcuda) was not found".into()));
        }
        if !nccl_found {
            return Err(DistError::Backend("the NCCL library (libnccl) was not found".into()));
        }
        if devices.is_empty() {
            return Err(DistError::Backend("an NCCL group needs at least one device".into()));
        }
        let streams = devices
            .iter()
            .map(|&ordinal| CudaContext::new(ordinal).and_then(|ctx| ctx.new_stream()).map_err(cuda_error))
            .collect::<Result<Vec<Arc<CudaStream>>, _>>()?;
        let comms = Comm::from_devices(streams).map_err(nccl_error)?;
        let failure = Arc::new(OnceLock::new());
        Ok(comms.into_iter().map(|comm| Nccl { comm, failure: failure.clone() }).collect())
    }

    fn stream(&self) -> Arc<CudaStream> {
        self.comm.stream()
    }

    /// Fails if a peer aborted; makes this rank's GPU current on the calling thread (which may have changed).
    fn start(&self) -> Result<Arc<CudaStream>, DistError> {
        if let Some(err) = self.failure.get() {
            return Err(err.clone());
        }
        let stream = self.stream();
        stream.context().bind_to_thread().map_err(cuda_error)?;
        Ok(stream)
    }

    /// Waits for the work queued on `stream`, which uses `bufs`, and hands them back. Returns early if a peer
    /// aborts, as its collective would then never complete; `bufs` are leaked then, since freeing them can wait
    /// for that collective (without stream-ordered allocation). Dropping the communicator afterwards
    /// (`ncclCommAbort`) cancels it.
    fn finish<B>(&self, stream: &CudaStream, bufs: B) -> Result<B, DistError> {
        match self.wait(stream) {
            Ok(()) => Ok(bufs),
            Err(err) => {
                std::mem::forget(bufs);
                Err(err)
            }
        }
    }

    fn wait(&self, stream: &CudaStream) -> Result<(), DistError> {
        let done = stream.record_event(None).map_err(cuda_error)?;
        while !done.try_is_complete().map_err(cuda_error)? {
            if let Some(err) = self.failure.get() {
                return Err(err.clone());
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    /// Every rank's length, so that all ranks return the same [`DistError::LengthMismatch`] before any starts a
    /// collective the others would not match.
    fn agree_on_length(&self, stream: &Arc<CudaStream>, len: usize) -> Result<(), DistError> {
        let send = stream.clone_htod(&[len as u64]).map_err(cuda_error)?;
        let mut lengths: CudaSlice<u64> = stream.alloc_zeros(self.comm.world_size()).map_err(cuda_error)?;
        self.comm.all_gather(&send, &mut lengths).map_err(nccl_error)?;
        let (_send, lengths) = self.finish(stream, (send, lengths))?;
        check_lengths(&stream.clone_dtoh(&lengths).map_err(cuda_error)?)
    }
}

impl Communicator for Nccl {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), DistError> {
        let stream = self.start()?;
        self.agree_on_length(&stream, data.len())?;
        if data.is_empty() {
            return Ok(()); // CUDA can't allocate zero bytes; every rank returns here.
        }
        let mut buf = stream.clone_htod(data).map_err(cuda_error)?;
        self.comm.all_reduce_in_place(&mut buf, &ReduceOp::Sum).map_err(nccl_error)?;
        let buf = self.finish(&stream, buf)?;
        stream.memcpy_dtoh(&buf, data).map_err(cuda_error)
    }

    fn reduce_scatter_sum(&self, data: &[f32]) -> Result<Vec<f32>, DistError> {
        let stream = self.start()?;
        self.agree_on_length(&stream, data.len())?;
        // Like InProcess, a remainder past `chunk * world` is ignored (the trait asks for a divisible length).
        let chunk = data.len() / self.world_size();
        if chunk == 0 {
            return Ok(Vec::new());
        }
        let send = stream.clone_htod(&data[..chunk * self.world_size()]).map_err(cuda_error)?;
        let mut recv: CudaSlice<f32> = stream.alloc_zeros(chunk).map_err(cuda_error)?;
        self.comm.reduce_scatter(&send, &mut recv, &ReduceOp::Sum).map_err(nccl_error)?;
        let (_send, recv) = self.finish(&stream, (send, recv))?;
        stream.clone_dtoh(&recv).map_err(cuda_error)
    }

    fn all_gather(&self, data: &[f32]) -> Result<Vec<f32>, DistError> {
        let stream = self.start()?;
        self.agree_on_length(&stream, data.len())?;
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let send = stream.clone_htod(data).map_err(cuda_error)?;
        let mut recv: CudaSlice<f32> = stream.alloc_zeros(data.len() * self.world_size()).map_err(cuda_error)?;
        self.comm.all_gather(&send, &mut recv).map_err(nccl_error)?;
        let (_send, recv) = self.finish(&stream, (send, recv))?;
        stream.clone_dtoh(&recv).map_err(cuda_error)
    }

    fn broadcast(&self, data: &mut [f32], root: usize) -> Result<(), DistError> {
        let world = self.world_size();
        let root_rank = match i32::try_from(root) {
            Ok(r) if root < world => r,
            _ => return Err(DistError::BadRoot { root, world }),
        };
        let stream = self.start()?;
        self.agree_on_length(&stream, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        let mut buf = stream.clone_htod(data).map_err(cuda_error)?;
        self.comm.broadcast_in_place(&mut buf, root_rank).map_err(nccl_error)?;
        let buf = self.finish(&stream, buf)?;
        stream.memcpy_dtoh(&buf, data).map_err(cuda_error)
    }

    /// NCCL has no barrier: a one-value all-reduce that every rank must join, waited for, is one.
    fn barrier(&self) -> Result<(), DistError> {
        let stream = self.start()?;
        let mut token = stream.alloc_zeros::<f32>(1).map_err(cuda_error)?;
        self.comm.all_reduce_in_place(&mut token, &ReduceOp::Sum).map_err(nccl_error)?;
        self.finish(&stream, token).map(drop)
    }

    /// Releases the other ranks' pending and later collectives with [`DistError::PeerFailed`]. A rank still
    /// inside NCCL's enqueue (the first collective sets up connections and waits for every rank there) can't be
    /// released.
    fn abort(&self, reason: &str) {
        let _ = self.failure.set(DistError::PeerFailed { rank: self.rank(), reason: reason.to_string() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::InProcess;

    /// Sum, reduce-scatter, gather, broadcast and length-mismatch results of one rank.
    type Outcome = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Result<(), DistError>);

    /// Each rank's results from a fixed sequence of collectives (small integers: exact in any summation order).
    fn exercise(c: Box<dyn Communicator>) -> Outcome {
        let (r, world) = (c.rank() as f32, c.world_size());
        let mut sum = vec![r + 0.5; 5];
        c.all_reduce_sum(&mut sum).unwrap();
        let scattered = c.reduce_scatter_sum(&vec![r; 2 * world]).unwrap();
        let gathered = c.all_gather(&[r, -r]).unwrap();
        let mut root = vec![r; 3];
        c.broadcast(&mut root, world - 1).unwrap();
        c.barrier().unwrap();
        let mismatch = c.all_gather(&vec![r; c.rank() % 2 + 1]).map(drop);
        (sum, scattered, gathered, root, mismatch)
    }

    fn run<T: Send + 'static>(comms: Vec<Box<dyn Communicator>>, f: fn(Box<dyn Communicator>) -> T) -> Vec<T> {
        let threads: Vec<_> = comms.into_iter().map(|c| std::thread::spawn(move || f(c))).collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    fn boxed<C: Communicator + 'static>(comms: Vec<C>) -> Vec<Box<dyn Communicator>> {
        comms.into_iter().map(|c| Box::new(c) as Box<dyn Communicator>).collect()
    }

    /// `cargo test -p llmtrain-core --features cuda --lib dist::nccl -- --ignored` on a machine with GPUs.
    #[test]
    #[ignore = "needs CUDA GPUs and libnccl"]
    fn nccl_matches_in_process_and_abort_releases_the_others() {
        let world = CudaContext::device_count().expect("CUDA driver") as usize;
        let devices: Vec<usize> = (0..world).collect();
        let nccl = run(boxed(Nccl::group(&devices).unwrap()), exercise);
        assert_eq!(nccl, run(boxed(InProcess::group(world)), exercise));

        let released = run(boxed(Nccl::group(&devices).unwrap()), |c| {
            if c.rank() == 0 {
                c.abort("injected failure");
                return Ok(());
            }
            c.barrier()
        });
        for result in &released[1..] {
            assert_eq!(*result, Err(DistError::PeerFailed { rank: 0, reason: "injected failure".into() }));
        }
    }
}

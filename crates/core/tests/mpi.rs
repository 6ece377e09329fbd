//! The MPI communicator, run for real. Each test has two roles: started by `cargo test` it runs this same test
//! binary as 4 ranks under `mpirun` and checks how that ended; started by `mpirun` (`launched_by_mpi`) it is one
//! of those ranks. Needs Open MPI's `mpirun` on PATH (apt-get install openmpi-bin libopenmpi-dev).
//!
//! `cargo test -p llmtrain-core --features mpi --test mpi`
#![cfg(feature = "mpi")]

use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use llmtrain_core::dist::{Communicator, DistError, InProcess, Mpi, launched_by_mpi};

const RANKS: usize = 4;
/// Where the ranks of the barrier check leave their marker files.
const DIR_VAR: &str = "LLMTRAIN_MPI_TEST_DIR";

struct Run {
    /// `None` when the guard killed `mpirun`.
    status: Option<ExitStatus>,
    elapsed: Duration,
    /// `mpirun`'s stdout and stderr (the ranks' output included).
    output: String,
}

/// Runs `test` of this test binary as [`RANKS`] ranks under `mpirun`, killing `mpirun` after `timeout`.
fn mpirun(test: &str, timeout: Duration, dir: Option<&Path>) -> Run {
    let exe = std::env::current_exe().expect("path of the test binary");
    // Files, not pipes: nothing blocks on a full pipe, and ranks left over after a kill can't keep us waiting.
    let mut out = tempfile::tempfile().expect("temporary file for mpirun's output");
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "-np", &RANKS.to_string()])
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        // CI runs as root, which Open MPI refuses unless told otherwise.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("duplicate file handle"))
        .stderr(out.try_clone().expect("duplicate file handle"));
    if let Some(dir) = dir {
        cmd.env(DIR_VAR, dir);
    }
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`mpirun` is not on PATH: the MPI tests need Open MPI (apt-get install openmpi-bin libopenmpi-dev)")
        }
        Err(e) => panic!("could not start mpirun: {e}"),
    };
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for mpirun") {
            break Some(status);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let mut output = String::new();
    out.rewind().expect("rewind mpirun's output");
    let _ = out.read_to_string(&mut output);
    Run { status, elapsed, output }
}

/// What one rank got from a fixed sequence of collectives, to compare across communicators.
#[derive(Debug, PartialEq)]
struct Outcome {
    small_sum: Vec<f32>,
    large_sum: Vec<f32>,
    scattered: Vec<f32>,
    gathered: Vec<f32>,
    broadcast: Vec<f32>,
    bad_root: Result<(), DistError>,
    mismatch: Result<Vec<f32>, DistError>,
    empty_sum: Vec<f32>,
    empty_gather: Vec<f32>,
}

/// Inputs are small integers and quarters, so every summation order gives the same bits: MPI picks its own
/// order, InProcess sums in rank order, and both must agree exactly.
fn exercise(c: &dyn Communicator, large: usize) -> Outcome {
    let (rank, world) = (c.rank(), c.world_size());
    let r = rank as f32;
    let mut small_sum: Vec<f32> = (0..7).map(|i| (r + 1.0) * 0.5 + i as f32 * 0.25).collect();
    c.all_reduce_sum(&mut small_sum).unwrap();
    let mut large_sum: Vec<f32> = (0..large).map(|i| (i % 1000) as f32 + r).collect();
    c.all_reduce_sum(&mut large_sum).unwrap();
    let scatter_in: Vec<f32> = (0..world * 6).map(|j| 100.0 * r + j as f32).collect();
    let scattered = c.reduce_scatter_sum(&scatter_in).unwrap();
    let gathered = c.all_gather(&[10.0 * r, 10.0 * r + 1.0, 10.0 * r + 2.0]).unwrap();
    let mut broadcast = vec![r + 0.5; 9];
    c.broadcast(&mut broadcast, 1).unwrap();
    let bad_root = c.broadcast(&mut [r], world);
    let mismatch = c.all_gather(&vec![r; rank % 2 + 1]);
    let mut empty_sum = Vec::new();
    c.all_reduce_sum(&mut empty_sum).unwrap();
    let empty_gather = c.all_gather(&[]).unwrap();
    Outcome { small_sum, large_sum, scattered, gathered, broadcast, bad_root, mismatch, empty_sum, empty_gather }
}

/// The exact answers, worked out by hand.
fn check_exact(got: &Outcome, rank: usize, world: usize, large: usize) {
    let w = world as f32;
    let ranks_sum = (world * (world - 1) / 2) as f32;
    let small: Vec<f32> = (0..7).map(|i| 0.5 * (ranks_sum + w) + w * i as f32 * 0.25).collect();
    assert_eq!(got.small_sum, small, "all_reduce_sum, small");
    let large: Vec<f32> = (0..large).map(|i| w * (i % 1000) as f32 + ranks_sum).collect();
    assert!(got.large_sum == large, "all_reduce_sum, {} values", large.len());
    let scattered: Vec<f32> = (0..6).map(|k| 100.0 * ranks_sum + w * (rank * 6 + k) as f32).collect();
    assert_eq!(got.scattered, scattered, "reduce_scatter_sum gives rank {rank} chunk {rank}");
    let gathered: Vec<f32> = (0..world).flat_map(|r| (0..3).map(move |k| (10 * r + k) as f32)).collect();
    assert_eq!(got.gathered, gathered, "all_gather, in rank order");
    assert_eq!(got.broadcast, vec![1.5; 9], "broadcast from rank 1");
    assert_eq!(got.bad_root, Err(DistError::BadRoot { root: world, world }));
    assert_eq!(got.mismatch, Err(DistError::LengthMismatch { rank: 1, expected: 1, found: 2 }));
    assert!(got.empty_sum.is_empty() && got.empty_gather.is_empty());
}

/// The same sequence on an in-process group of `world` threads; this rank's share.
fn in_process(rank: usize, world: usize, large: usize) -> Outcome {
    let threads: Vec<_> =
        InProcess::group(world).into_iter().map(|c| std::thread::spawn(move || exercise(&c, large))).collect();
    let mut outcomes: Vec<Outcome> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    outcomes.swap_remove(rank)
}

/// Every rank leaves a file, passes the barrier, then must see every other rank's file.
fn check_barrier(mpi: &Mpi) {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        mpi.barrier().unwrap();
        return;
    };
    let dir = Path::new(&dir);
    File::create(dir.join(format!("rank{}", mpi.rank()))).unwrap();
    mpi.barrier().unwrap();
    for r in 0..mpi.world_size() {
        assert!(
            dir.join(format!("rank{r}")).exists(),
            "rank {} passed the barrier before rank {r} reached it",
            mpi.rank()
        );
    }
    mpi.barrier().unwrap();
}

#[test]
fn mpi_collectives_are_exact_and_match_in_process() {
    if !launched_by_mpi() {
        let dir = tempfile::tempdir().unwrap();
        let run = mpirun("mpi_collectives_are_exact_and_match_in_process", Duration::from_secs(300), Some(dir.path()));
        assert!(
            run.status.is_some_and(|s| s.success()),
            "mpirun ended with {:?} after {:?}:\n{}",
            run.status,
            run.elapsed,
            run.output
        );
        return;
    }
    let mpi = Mpi::init().expect("MPI initialises");
    assert!(matches!(Mpi::init(), Err(DistError::Backend(_))), "a second init must fail, not panic");
    let (rank, world) = (mpi.rank(), mpi.world_size());
    assert_eq!(world, RANKS, "every rank must be in one world, not in a world of its own");

    // Big enough for Open MPI's large-message (segmented / ring) algorithms.
    let large = (1 << 18) + 3;
    let got = exercise(&mpi, large);
    check_exact(&got, rank, world, large);
    assert_eq!(got, in_process(rank, world, large), "rank {rank}: MPI and InProcess differ");
    check_barrier(&mpi);

    // Pieces of at most 5 elements: every collective goes through its splitting path.
    let mpi = mpi.with_max_count(5);
    let large = 1003;
    let got = exercise(&mpi, large);
    check_exact(&got, rank, world, large);
    assert_eq!(got, in_process(rank, world, large), "rank {rank}, split: MPI and InProcess differ");
    check_barrier(&mpi);
    eprintln!("rank {rank} of {world}: all collectives exact");
}

#[test]
fn mpi_abort_ends_every_rank() {
    if !launched_by_mpi() {
        let run = mpirun("mpi_abort_ends_every_rank", Duration::from_secs(60), None);
        let Some(status) = run.status else {
            panic!("mpirun was still running after {:?}: the abort left ranks waiting\n{}", run.elapsed, run.output)
        };
        assert!(!status.success(), "mpirun must report the aborted job as failed:\n{}", run.output);
        assert!(run.elapsed < Duration::from_secs(30), "the abort took {:?} to end the job", run.elapsed);
        assert!(run.output.contains("rank 1 failed: injected failure"), "the reason is printed:\n{}", run.output);
        return;
    }
    let mpi = Mpi::init().expect("MPI initialises");
    mpi.barrier().unwrap();
    if mpi.rank() == 1 {
        mpi.abort("injected failure");
    }
    // Rank 1 never joins this: without the abort the others would wait here forever.
    let mut data = vec![1.0; 4];
    let _ = mpi.all_reduce_sum(&mut data);
}

//! Ctrl-C (SIGINT) and SIGTERM, the way a user and a cluster scheduler expect them.
//!
//! Outside training a signal stops the process at once, after removing the temporary files and directories
//! registered with [`TempGuard`], so an interrupted `convert` leaves no half-written copy behind. While a
//! [`GracefulStop`] is held (a training loop), the first signal only sets a flag: the loop finishes its optimizer
//! step, writes a checkpoint and stops; a second signal stops at once, as outside training.
//!
//! ```no_run
//! llmtrain_core::interrupt::install();
//! let _graceful = llmtrain_core::interrupt::GracefulStop::enter();
//! for step in 0.. {
//!     // ... one optimizer step ...
//!     if llmtrain_core::interrupt::stop_requested().is_some() {
//!         // save a checkpoint, then stop
//!         break;
//!     }
//! }
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

pub use signal_hook::consts::{SIGINT, SIGTERM};

/// The signal that asked for a graceful stop (0: none).
static REQUESTED: AtomicI32 = AtomicI32::new(0);
/// Set once a signal stops the process at once: the exit is moments away.
static STOPPING: AtomicBool = AtomicBool::new(false);
/// How many [`GracefulStop`] guards are alive, and how many of them say nothing on a signal.
static GRACEFUL: AtomicUsize = AtomicUsize::new(0);
static QUIET: AtomicUsize = AtomicUsize::new(0);
/// Paths to remove if the process is stopped at once.
static TEMPORARIES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Held by code that must not be cut short (swapping a directory into place); a signal waits for it.
static CRITICAL: Mutex<()> = Mutex::new(());

/// Starts listening for SIGINT and SIGTERM (once per process; later calls do nothing). Without it the
/// default actions apply: the process dies at once and [`stop_requested`] never answers.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
            tracing::warn!("cannot listen for Ctrl-C: an interrupted run will not save a checkpoint");
            return;
        };
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    on_signal(signal);
                }
            })
            .ok();
    });
}

fn on_signal(signal: i32) {
    let graceful = GRACEFUL.load(Ordering::SeqCst) > 0;
    if graceful && REQUESTED.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
        if QUIET.load(Ordering::SeqCst) >= GRACEFUL.load(Ordering::SeqCst) {
            return;
        }
        eprintln!(
            "\n{}: finishing the current step and saving a checkpoint (press Ctrl-C again to stop at once)",
            signal_name(signal)
        );
        return;
    }
    STOPPING.store(true, Ordering::SeqCst);
    // Never stop in the middle of a directory swap; the lock is not released: the process ends holding it.
    let _critical = CRITICAL.lock();
    let temporaries = TEMPORARIES.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
    for path in temporaries {
        // The main thread may still be writing into a temporary directory; a few tries outlast it (its own
        // writes then fail, and it waits for the exit in `wait_if_stopping`).
        for _ in 0..5 {
            remove(&path);
            if !path.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    eprintln!("\n{}: stopped at once", signal_name(signal));
    std::process::exit(exit_code(signal));
}

/// Runs `work` with a signal's immediate stop held off until it returns.
pub fn critical<T>(work: impl FnOnce() -> T) -> T {
    let _critical = CRITICAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    work()
}

/// Parks the calling thread for good when a signal is stopping the process: an error caused by the signal's
/// cleanup (a temporary directory removed under a write) must not be reported, nor end the process with another
/// exit code first.
pub fn wait_if_stopping() {
    while STOPPING.load(Ordering::SeqCst) {
        std::thread::park();
    }
}

/// The signal that asked the running loop to stop, if one did.
pub fn stop_requested() -> Option<i32> {
    match REQUESTED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// The shell's exit code for a process ended by `signal` (130 for SIGINT, 143 for SIGTERM).
pub fn exit_code(signal: i32) -> i32 {
    128 + signal
}

/// `SIGINT (Ctrl-C)` or `SIGTERM`.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT (Ctrl-C)",
        SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// While alive, the first SIGINT/SIGTERM asks for a graceful stop instead of stopping the process.
pub struct GracefulStop {
    quiet: bool,
}

impl GracefulStop {
    /// The first signal prints that the step is being finished and checkpointed.
    pub fn enter() -> Self {
        GRACEFUL.fetch_add(1, Ordering::SeqCst);
        GracefulStop { quiet: false }
    }

    /// The first signal is only recorded (a launcher waiting for ranks that say it themselves).
    pub fn enter_quietly() -> Self {
        QUIET.fetch_add(1, Ordering::SeqCst);
        GRACEFUL.fetch_add(1, Ordering::SeqCst);
        GracefulStop { quiet: true }
    }
}

impl Drop for GracefulStop {
    fn drop(&mut self) {
        GRACEFUL.fetch_sub(1, Ordering::SeqCst);
        if self.quiet {
            QUIET.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A temporary file or directory that must not outlive an error, a panic or a signal: removed when the guard
/// drops unless [`TempGuard::keep`] was called (after it was renamed into place).
pub struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl TempGuard {
    pub fn new(path: &Path) -> Self {
        TEMPORARIES.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(path.to_path_buf());
        Self { path: path.to_path_buf(), armed: true }
    }

    /// The path is no longer temporary (it was renamed away): do not remove it.
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        let mut list = TEMPORARIES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(i) = list.iter().rposition(|p| *p == self.path) {
            list.remove(i);
        }
        drop(list);
        if self.armed {
            remove(&self.path);
        }
    }
}

fn remove(path: &Path) {
    if path.is_dir() {
        let _ = std::fs::remove_dir_all(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
}

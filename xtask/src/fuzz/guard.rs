//! What `catch_unwind` cannot catch: an allocation sized from the input (it would abort the process or exhaust
//! memory) and an input that never finishes. The global allocator refuses single allocations above a cap while a
//! target runs, and a watchdog thread ends the process when one input runs past the time limit; either way the
//! input is saved first.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The system allocator, refusing one allocation above [`CAP`] bytes while armed.
pub struct CappedAlloc;

/// Bytes one allocation may take; `usize::MAX` when disarmed.
static CAP: AtomicUsize = AtomicUsize::new(usize::MAX);

// SAFETY: every call goes to `System` unchanged, or returns null (allowed: allocation failure).
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > CAP.load(Ordering::Relaxed) {
            return over_cap(layout.size());
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > CAP.load(Ordering::Relaxed) {
            return over_cap(layout.size());
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > CAP.load(Ordering::Relaxed) {
            return over_cap(new_size);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The input in flight, where its findings go, and the limits.
struct Current {
    target: String,
    dir: PathBuf,
    input: Vec<u8>,
}

static CURRENT: Mutex<Option<Current>> = Mutex::new(None);
/// Milliseconds since [`epoch`] at which the input in flight started; 0 when none is.
static STARTED_MS: AtomicU64 = AtomicU64::new(0);
static TIMEOUT_MS: AtomicU64 = AtomicU64::new(u64::MAX);
/// Set when an allocation was refused during the input in flight (some callers survive a refusal).
static REFUSED: AtomicBool = AtomicBool::new(false);

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// Refuses an allocation of `size` bytes: saves the input and says where the request came from. The caller
/// usually aborts (`handle_alloc_error`); one that handles the failure goes on, and the harness reports it.
#[cold]
fn over_cap(size: usize) -> *mut u8 {
    // Disarmed while reporting: saving and the backtrace allocate.
    let cap = CAP.swap(usize::MAX, Ordering::SeqCst);
    if !REFUSED.swap(true, Ordering::SeqCst) {
        let backtrace = std::backtrace::Backtrace::force_capture();
        let saved = save("alloc");
        eprintln!(
            "fuzz: an allocation of {size} bytes (over the {} MiB cap) while running {saved}\n{backtrace}",
            cap >> 20
        );
    }
    CAP.store(cap, Ordering::SeqCst);
    std::ptr::null_mut()
}

/// Saves the input in flight as `<dir>/<kind>-input` and describes it; never blocks.
fn save(kind: &str) -> String {
    let Ok(current) = CURRENT.try_lock() else { return "an input (not saved: busy)".into() };
    let Some(current) = current.as_ref() else { return "no input".into() };
    let path = current.dir.join(format!("{kind}-input"));
    match std::fs::create_dir_all(&current.dir).and_then(|()| std::fs::write(&path, &current.input)) {
        Ok(()) => format!("target {} (input saved to {})", current.target, path.display()),
        Err(e) => format!("target {} (input not saved: {e})", current.target),
    }
}

/// Arms the guards for `target` (findings saved in `dir`).
pub fn arm(target: &str, dir: &Path, max_alloc: usize, timeout: Duration) {
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) =
        Some(Current { target: target.to_string(), dir: dir.to_path_buf(), input: Vec::new() });
    TIMEOUT_MS.store(timeout.as_millis().min(u64::MAX as u128) as u64, Ordering::SeqCst);
    CAP.store(max_alloc, Ordering::SeqCst);
    start_watchdog();
}

pub fn disarm() {
    CAP.store(usize::MAX, Ordering::SeqCst);
    STARTED_MS.store(0, Ordering::SeqCst);
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Marks `input` as in flight.
pub fn begin(input: &[u8]) {
    if let Some(current) = CURRENT.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        current.input.clear();
        current.input.extend_from_slice(input);
    }
    REFUSED.store(false, Ordering::SeqCst);
    STARTED_MS.store(now_ms(), Ordering::SeqCst);
}

/// Ends the input in flight; true when an allocation was refused during it.
pub fn end() -> bool {
    STARTED_MS.store(0, Ordering::SeqCst);
    REFUSED.load(Ordering::SeqCst)
}

/// One thread per process, checking the input in flight against the time limit.
fn start_watchdog() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let started = STARTED_MS.load(Ordering::SeqCst);
                if started != 0 && now_ms().saturating_sub(started) > TIMEOUT_MS.load(Ordering::SeqCst) {
                    let saved = save("hang");
                    eprintln!("fuzz: an input ran past the time limit (a hang) in {saved}");
                    std::process::exit(3);
                }
            }
        });
    });
}

//! What counts as a failure besides a panic: an allocation above the limit (tracked by a
//! counting global allocator) and an input that runs too long (a watchdog thread).
//!
//! Both end the process (an allocator cannot unwind, and a hung call cannot be interrupted), so
//! the input in flight is saved first; `detlab-fuzz replay FILE` reproduces it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The largest allocation (one request, or live in total) an input may cause: 2 GB.
pub const ALLOCATION_LIMIT: usize = 2 << 30;

/// System allocator that counts live bytes and stops the process above [`ALLOCATION_LIMIT`].
pub struct CountingAllocator;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static TRIPPED: AtomicBool = AtomicBool::new(false);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.account(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.account(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            self.account(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

impl CountingAllocator {
    fn account(&self, size: usize) {
        let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        PEAK.fetch_max(live, Ordering::Relaxed);
        if (size > ALLOCATION_LIMIT || live > ALLOCATION_LIMIT)
            && !TRIPPED.swap(true, Ordering::SeqCst)
        {
            // Small allocations from here on are fine: this allocator only forwards them.
            fail(&format!(
                "allocation of {size} bytes ({live} live) above the {ALLOCATION_LIMIT}-byte limit"
            ));
        }
    }
}

/// Live heap bytes now.
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Reset the peak to the live bytes now; returns the previous peak.
pub fn take_peak() -> usize {
    PEAK.swap(LIVE.load(Ordering::Relaxed), Ordering::Relaxed)
}

/// The input in flight and where to save it if the process must stop.
struct InFlight {
    input: Vec<u8>,
    artifact_dir: PathBuf,
    target: String,
}

static IN_FLIGHT: Mutex<Option<InFlight>> = Mutex::new(None);
static STARTED_MS: AtomicU64 = AtomicU64::new(0);
static CLOCK: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn now_ms() -> u64 {
    CLOCK.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Record the input about to run (kept until [`finish`]).
pub fn start(target: &str, input: &[u8], artifact_dir: &std::path::Path) {
    let mut slot = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
    match slot.as_mut() {
        Some(f) => {
            f.input.clear();
            f.input.extend_from_slice(input);
            if f.target != target {
                f.target = target.to_string();
                f.artifact_dir = artifact_dir.to_path_buf();
            }
        }
        None => {
            *slot = Some(InFlight {
                input: input.to_vec(),
                artifact_dir: artifact_dir.to_path_buf(),
                target: target.to_string(),
            })
        }
    }
    drop(slot);
    STARTED_MS.store(now_ms(), Ordering::SeqCst);
}

/// The input in flight has finished.
pub fn finish() {
    STARTED_MS.store(0, Ordering::SeqCst);
}

/// Save the input in flight as `<kind>-<hash>` in its artifact folder; returns the path.
pub fn save_in_flight(kind: &str, message: &str) -> Option<PathBuf> {
    let slot = IN_FLIGHT.try_lock().ok()?;
    let f = slot.as_ref()?;
    Some(crate::save_artifact(
        &f.artifact_dir,
        kind,
        &f.input,
        &f.target,
        message,
    ))
}

fn fail(message: &str) -> ! {
    let saved = save_in_flight("oom", message);
    // Where the allocation came from, so a CI log alone points at the reader to fix.
    let trace = std::backtrace::Backtrace::force_capture();
    eprintln!(
        "\nFAILURE: {message}\ninput saved to {}\nallocated at:\n{trace}",
        saved.map(|p| p.display().to_string()).unwrap_or_default()
    );
    std::process::abort();
}

/// Start the watchdog: an input running longer than `hang` is saved and the process stops.
pub fn watchdog(hang: Duration) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let started = STARTED_MS.load(Ordering::SeqCst);
            if started != 0 && now_ms().saturating_sub(started) > hang.as_millis() as u64 {
                let message = format!("one input ran longer than {} s", hang.as_secs_f64());
                let saved = save_in_flight("hang", &message);
                eprintln!(
                    "\nFAILURE: {message}\ninput saved to {}",
                    saved.map(|p| p.display().to_string()).unwrap_or_default()
                );
                std::process::abort();
            }
        }
    });
}

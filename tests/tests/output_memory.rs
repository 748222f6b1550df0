//! Host memory per call stays within a small multiple of what a guest
//! returns: the peak of the host's allocations during one call of the
//! hostile guest, measured by a counting allocator (alone in this test
//! binary, so no other test's allocations are counted).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sluice::wasm::{EntryPoint, Failure, Invocation, Isolation, Limits, OutputLimits};
use sluice_tests::{artifacts, load, message, runtime};

/// The system allocator, counting the bytes live now and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only
// the counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees are the system allocator's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most the host allocated at once during `f`, beyond what was live
/// before it.
fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let result = f();
    (result, PEAK.load(Ordering::Relaxed).saturating_sub(before))
}

#[test]
fn host_memory_per_call_is_a_small_multiple_of_what_the_guest_returns() {
    let rt = runtime();
    let plugin = load(&rt, artifacts::HOSTILE);
    let limits = OutputLimits::default();
    let inv = Invocation {
        limits: Limits {
            timeout: Duration::from_secs(10),
            memory_bytes: 64 << 20,
            outputs: limits,
        },
        config: Arc::default(),
    };
    let msg = |value: String| message("in", value.as_bytes());
    for entry in [EntryPoint::Packed, EntryPoint::Handle] {
        let mut invoker = rt.invoker(plugin.clone(), Isolation::Reused);
        invoker.limit_entry_point(entry);
        // A first call makes the instance, which is not what is measured.
        assert!(invoker.invoke(&msg("warm".into()), &inv).is_ok());

        // The largest output the bounds allow: about 1 MB returned.
        let largest = msg(format!("bytes:{}", limits.max_output_bytes));
        let (outcome, peak) = peak_during(|| invoker.invoke(&largest, &inv));
        assert_eq!(outcome.map(|o| o.len()), Ok(1));
        let returned = limits.max_output_bytes;
        eprintln!(
            "{entry:?}: one output of {returned} bytes: peak host allocation {peak} bytes ({:.2}x)",
            peak as f64 / returned as f64
        );
        assert!(
            peak < 3 * returned,
            "{entry:?}: {peak} bytes for {returned} returned"
        );

        // 200000 empty outputs: far over max_outputs, refused before
        // they are built (packed) or right after wasmtime lifted them.
        let many = msg("outputs:200000".into());
        let (outcome, peak) = peak_during(|| invoker.invoke(&many, &inv));
        assert!(
            matches!(outcome, Err(Failure::InvalidOutput(ref e)) if e.setting == "max_outputs"),
            "{outcome:?}"
        );
        // What the guest returned: per output, through handle-packed, a
        // 4-byte topic length, the topic `in.out`, a presence byte, a
        // 4-byte value length and a header count (19 bytes); through the
        // component model, its 40-byte record and the topic (46 bytes).
        let per_output = if entry == EntryPoint::Packed { 19 } else { 46 };
        let returned = 200_000 * per_output;
        eprintln!(
            "{entry:?}: 200000 outputs: peak host allocation {peak} bytes ({:.2}x of {returned})",
            peak as f64 / returned as f64
        );
        assert!(
            peak < 3 * returned,
            "{entry:?}: {peak} bytes for {returned} returned"
        );
    }
}

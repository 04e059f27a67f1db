//! Support for this crate's property tests: a global allocator that can measure what one
//! closure allocates on the calling thread ([`measure`]), so the tests can check that parsing
//! hostile input never allocates more than a small multiple of its size (outside [`measure`]
//! it only forwards to the system allocator), and [`cases`], their case counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// What one [`measure`]d closure allocated.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Allocated {
    /// Sum of every allocation's size (reallocations count their new size).
    pub total: usize,
    /// The largest single allocation.
    pub largest: usize,
}

thread_local! {
    // `const`-initialised and without a destructor, so the allocator may touch it at any time
    // (including while the thread starts or ends).
    static MEASURING: Cell<Option<Allocated>> = const { Cell::new(None) };
}

fn note(size: usize) {
    let _ = MEASURING.try_with(|m| {
        if let Some(mut a) = m.get() {
            a.total = a.total.saturating_add(size);
            a.largest = a.largest.max(size);
            m.set(Some(a));
        }
    });
}

struct Measuring;

// SAFETY: every call is forwarded unchanged to `System`; `note` neither allocates nor unwinds.
unsafe impl GlobalAlloc for Measuring {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Measuring = Measuring;

/// Runs `f` and returns what it allocated on this thread (other threads are not counted).
pub(crate) fn measure<R>(f: impl FnOnce() -> R) -> (R, Allocated) {
    MEASURING.with(|m| m.set(Some(Allocated::default())));
    let out = f();
    let got = MEASURING.with(|m| m.replace(None)).unwrap_or_default();
    (out, got)
}

/// A property test's config with `n` cases, times `FLINT_PROPTEST_SCALE` when set (for a deeper
/// local run; CI runs the counts as written, which keep each file to a few seconds).
pub(crate) fn cases(n: u32) -> proptest::test_runner::Config {
    let scale = std::env::var("FLINT_PROPTEST_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1);
    proptest::test_runner::Config::with_cases(n.saturating_mul(scale.max(1)))
}

#[test]
fn measures_this_thread_only() {
    let (v, a) = measure(|| vec![0u8; 1 << 20]);
    assert!(a.largest >= 1 << 20 && a.total >= a.largest, "{a:?}");
    drop(v);
    let ((), a) = measure(|| {
        std::thread::spawn(|| drop(vec![0u8; 1 << 20]))
            .join()
            .expect("thread");
    });
    assert!(a.largest < 1 << 20, "{a:?}");
}

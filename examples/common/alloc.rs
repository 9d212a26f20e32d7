//! The allocator an example runs with: the `submitgate` binary's (src/main.rs), with the same
//! memory release after a policy load or reload, or, with `ALLOC=` in the environment, another
//! one to compare against: `ALLOC=mimalloc`, `ALLOC=glibc` (the C library's malloc, which heap
//! profilers such as heaptrack see) or `ALLOC=jemalloc`. Optionally it counts the bytes in use
//! (allocated and not yet freed), which no allocator's retention or fragmentation changes.

#![allow(dead_code)] // each example uses the part it needs

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};

/// The allocators an example can run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Mimalloc = 1,
    Glibc = 2,
    Jemalloc = 3,
}

/// What the `submitgate` binary uses (src/main.rs).
pub const BINARY: Which = Which::Jemalloc;

/// Which allocator: 0 not chosen yet, else a [`Which`].
static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// Bytes allocated and not yet freed, when counting.
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

/// The global allocator of an example: `#[global_allocator] static A: Switch = Switch::new();`.
pub struct Switch {
    count: bool,
}

impl Switch {
    /// Passes every call on, counting nothing (the benchmarks: no shared counter to contend on).
    pub const fn new() -> Self {
        Switch { count: false }
    }

    /// Also counts the bytes in use ([`bytes_in_use`]).
    pub const fn counting() -> Self {
        Switch { count: true }
    }
}

/// The allocator of the whole process, chosen at its first allocation (so that no block is
/// ever freed by another allocator than the one that made it). getenv does not allocate.
pub fn which() -> Which {
    match CHOSEN.load(Ordering::Relaxed) {
        1 => Which::Mimalloc,
        2 => Which::Glibc,
        3 => Which::Jemalloc,
        _ => {
            // SAFETY: a NUL-terminated name; nothing changes the environment this early.
            let value = unsafe { libc::getenv(c"ALLOC".as_ptr()) };
            let choice = if value.is_null() {
                BINARY
            } else {
                // SAFETY: getenv returned a NUL-terminated string of the environment.
                match unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes() {
                    b"mimalloc" => Which::Mimalloc,
                    b"glibc" | b"system" => Which::Glibc,
                    b"jemalloc" => Which::Jemalloc,
                    _ => BINARY,
                }
            };
            match CHOSEN.compare_exchange(0, choice as u8, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => choice,
                Err(_) => which(),
            }
        }
    }
}

/// The allocator's name, for the reports.
pub fn name() -> &'static str {
    match which() {
        Which::Mimalloc => "mimalloc",
        Which::Glibc => "glibc malloc",
        Which::Jemalloc => "jemalloc",
    }
}

/// Bytes allocated and not yet freed (only with [`Switch::counting`]).
pub fn bytes_in_use() -> i64 {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// Sets the allocator up as src/main.rs does and registers the same memory release after a
/// policy load or reload. Call first thing in `main`.
/// jemalloc's background thread is on by default in this build (Cargo.toml:
/// `background_threads`), as in the binary.
pub fn init() {
    submitgate::policy::reload::set_memory_release(release);
}

/// Gives the free memory the allocator keeps back to the system, as src/main.rs does after a
/// policy load or reload.
pub fn release() {
    match which() {
        // SAFETY: mi_collect has no preconditions: any thread, any time; it frees only pages
        // that hold no live allocation.
        Which::Mimalloc => unsafe { libmimalloc_sys::mi_collect(true) },
        Which::Glibc => {
            // SAFETY: malloc_trim has no preconditions: it locks each arena and gives back only
            // free pages.
            unsafe { libc::malloc_trim(0) };
        }
        Which::Jemalloc => {
            // SAFETY: "arena.4096.purge" (4096: every arena) takes and returns no value (see
            // src/main.rs).
            unsafe {
                tikv_jemalloc_sys::mallctl(
                    c"arena.4096.purge".as_ptr(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    0,
                );
            }
        }
    }
}

// SAFETY: every call goes unchanged to one allocator, the same for the whole process; the
// counter is only arithmetic.
unsafe impl GlobalAlloc for Switch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = match which() {
            Which::Mimalloc => mimalloc::MiMalloc.alloc(layout),
            Which::Glibc => System.alloc(layout),
            Which::Jemalloc => tikv_jemallocator::Jemalloc.alloc(layout),
        };
        if self.count && !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = match which() {
            Which::Mimalloc => mimalloc::MiMalloc.alloc_zeroed(layout),
            Which::Glibc => System.alloc_zeroed(layout),
            Which::Jemalloc => tikv_jemallocator::Jemalloc.alloc_zeroed(layout),
        };
        if self.count && !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match which() {
            Which::Mimalloc => mimalloc::MiMalloc.dealloc(ptr, layout),
            Which::Glibc => System.dealloc(ptr, layout),
            Which::Jemalloc => tikv_jemallocator::Jemalloc.dealloc(ptr, layout),
        }
        if self.count {
            LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        let p = match which() {
            Which::Mimalloc => mimalloc::MiMalloc.realloc(ptr, layout, new),
            Which::Glibc => System.realloc(ptr, layout, new),
            Which::Jemalloc => tikv_jemallocator::Jemalloc.realloc(ptr, layout, new),
        };
        if self.count && !p.is_null() {
            LIVE_BYTES.fetch_add(new as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
}

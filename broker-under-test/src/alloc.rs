//! The broker's global allocator: the system allocator, except that huge
//! requests are served by `mmap(MAP_NORESERVE)`.
//!
//! Why: the Kafka decoder pre-allocates `Vec::with_capacity(count)` from the
//! array count a client sends. A garbage count (fuzzing, a bit flip) asks
//! for hundreds of GiB; the system allocator fails and Rust aborts the
//! whole broker. With MAP_NORESERVE the kernel reserves address space only,
//! the decoder fails on the short buffer before touching it, and the
//! mapping is released: the connection is closed and the broker lives.

use std::alloc::{GlobalAlloc, Layout, System};

/// Requests at or above this size are mapped lazily.
const HUGE: usize = 1 << 30;

/// See the module doc.
pub struct LazyHugeAlloc;

unsafe impl GlobalAlloc for LazyHugeAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() < HUGE || layout.align() > 4096 {
            return System.alloc(layout);
        }
        let p = nix::libc::mmap(
            std::ptr::null_mut(),
            layout.size(),
            nix::libc::PROT_READ | nix::libc::PROT_WRITE,
            nix::libc::MAP_PRIVATE | nix::libc::MAP_ANONYMOUS | nix::libc::MAP_NORESERVE,
            -1,
            0,
        );
        if p == nix::libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            p.cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() < HUGE || layout.align() > 4096 {
            System.dealloc(ptr, layout)
        } else {
            nix::libc::munmap(ptr.cast(), layout.size());
        }
    }
}

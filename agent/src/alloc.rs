//! The agent's allocator: musl's, plus a small cache of large blocks.
//!
//! A transfer allocates and frees one chunk-sized buffer (a quarter MiB) per
//! frame, thousands per second. musl serves anything above 128 KiB with a
//! fresh `mmap` and returns it with `munmap`, so every chunk paid for the
//! system calls, a page fault per page and the kernel zeroing each page.
//! Freed blocks of 256 KiB to 1 MiB are kept here instead (a few per size,
//! so at most [`CACHED_MAX`] bytes) and handed out again.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

/// Size classes, powers of two: 256 KiB, 512 KiB, 1 MiB.
const SMALLEST_SHIFT: u32 = 18;
const CLASSES: usize = 3;
/// Freed blocks kept per class.
const SLOTS: usize = 4;
/// The most memory the cache can hold on to (7 MiB).
#[allow(dead_code)]
const CACHED_MAX: usize =
    SLOTS * ((1 << (SMALLEST_SHIFT + CLASSES as u32)) - (1 << SMALLEST_SHIFT));

/// Blocks below this size are musl's own business (its heap serves them
/// without system calls).
const CACHE_ABOVE: usize = 128 << 10;

pub struct Allocator;

#[global_allocator]
static GLOBAL: Allocator = Allocator;

static CACHE: [[AtomicPtr<u8>; SLOTS]; CLASSES] =
    [const { [const { AtomicPtr::new(ptr::null_mut()) }; SLOTS] }; CLASSES];

/// The class serving `layout`, if any.
fn class_of(layout: &Layout) -> Option<usize> {
    let size = layout.size();
    if size <= CACHE_ABOVE || layout.align() > 16 {
        return None;
    }
    let shift = size.next_power_of_two().trailing_zeros();
    let class = shift.saturating_sub(SMALLEST_SHIFT) as usize;
    (class < CLASSES).then_some(class)
}

fn class_layout(class: usize) -> Layout {
    // A power of two no larger than 1 MiB with alignment 16 is always valid.
    Layout::from_size_align(1 << (SMALLEST_SHIFT as usize + class), 16)
        .unwrap_or_else(|_| unreachable!())
}

fn take(class: usize) -> *mut u8 {
    for slot in &CACHE[class] {
        let p = slot.swap(ptr::null_mut(), Ordering::Acquire);
        if !p.is_null() {
            return p;
        }
    }
    ptr::null_mut()
}

/// Keeps `p` for reuse; false when every slot of its class is taken.
fn keep(class: usize, p: *mut u8) -> bool {
    CACHE[class].iter().any(|slot| {
        slot.compare_exchange(ptr::null_mut(), p, Ordering::Release, Ordering::Relaxed)
            .is_ok()
    })
}

// SAFETY: every block handed out is either System's for the same layout, or
// a block of the class layout (System's) that was kept in the cache by
// exactly one owner; a class block is always allocated and freed with the
// class layout, never with the caller's.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(&layout) {
            Some(class) => {
                let p = take(class);
                if p.is_null() {
                    // SAFETY: class layouts have a non-zero size.
                    unsafe { System.alloc(class_layout(class)) }
                } else {
                    p
                }
            }
            // SAFETY: forwarded unchanged.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class_of(&layout) {
            Some(class) => {
                let p = take(class);
                if p.is_null() {
                    // SAFETY: as in `alloc`; fresh pages come zeroed.
                    unsafe { System.alloc_zeroed(class_layout(class)) }
                } else {
                    // SAFETY: the block holds at least `layout.size()` bytes.
                    unsafe { ptr::write_bytes(p, 0, layout.size()) };
                    p
                }
            }
            // SAFETY: forwarded unchanged.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        match class_of(&layout) {
            Some(class) => {
                if !keep(class, p) {
                    // SAFETY: class blocks come from System with this layout.
                    unsafe { System.dealloc(p, class_layout(class)) }
                }
            }
            // SAFETY: forwarded unchanged.
            None => unsafe { System.dealloc(p, layout) },
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a
        // valid layout.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(&layout), class_of(&new)) {
            // Neither is cached: let musl grow in place or remap.
            // SAFETY: forwarded unchanged.
            (None, None) => unsafe { System.realloc(p, layout, new_size) },
            // The same class block already has room.
            (Some(a), Some(b)) if a == b => p,
            _ => {
                // SAFETY: a fresh block for `new`, the old contents copied
                // (the smaller of the two sizes), then the old block freed.
                unsafe {
                    let q = self.alloc(new);
                    if !q.is_null() {
                        ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                        self.dealloc(p, layout);
                    }
                    q
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_chunk_sized_blocks_only() {
        let l = |size| Layout::from_size_align(size, 8).unwrap();
        assert_eq!(class_of(&l(4096)), None);
        assert_eq!(class_of(&l(128 << 10)), None);
        assert_eq!(class_of(&l((128 << 10) + 1)), Some(0));
        assert_eq!(class_of(&l(256 << 10)), Some(0));
        assert_eq!(class_of(&l((256 << 10) + 64)), Some(1));
        assert_eq!(class_of(&l(1 << 20)), Some(2));
        assert_eq!(class_of(&l((1 << 20) + 1)), None);
        assert_eq!(CACHED_MAX, 7 << 20);
    }

    #[test]
    fn blocks_are_reused_and_grow_intact() {
        let mut v: Vec<u8> = Vec::with_capacity(200 << 10);
        v.extend((0..200 << 10).map(|i| i as u8));
        v.reserve(400 << 10);
        assert!((0..200 << 10).all(|i| v[i] == i as u8));
        drop(v);
        let z = vec![0u8; 300 << 10];
        assert!(z.iter().all(|&b| b == 0));
    }
}

//! A memory allocator for handlers: [`Allocator`].
//!
//! Every message costs a handler a dozen or more allocations: the host asks
//! the guest for memory for each string and byte list it hands over (topic,
//! key, value, every header), the handler builds its outputs, and everything
//! is freed when the call returns. The standard library's allocator for
//! WebAssembly (dlmalloc) is general-purpose; `host/benches/dispatch.rs`
//! showed it taking about a fifth of a call's time.
//!
//! [`Allocator`] keeps freed blocks on one list per power-of-two size class,
//! from 16 bytes to 32 KiB, and hands them out again first: an allocation or
//! a free is a few instructions. Larger blocks, and blocks aligned to more
//! than 16 bytes, go to the standard allocator. Memory on a class's list
//! stays with that class; it is not returned to the standard allocator, so an
//! instance keeps what its busiest message needed.

// Off single-threaded WebAssembly the size classes are used by the unit
// tests only: `Allocator` is the standard allocator there.
#![cfg_attr(
    not(all(target_arch = "wasm32", not(target_feature = "atomics"))),
    allow(dead_code)
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;

/// The smallest block: 16 bytes, enough for a free-list link on any target.
const MIN_SHIFT: u32 = 4;
/// The largest block handled by size class: 32 KiB.
const MAX_SHIFT: u32 = 15;
const CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;
/// The alignment every class block has.
const ALIGN: usize = 1 << MIN_SHIFT;
/// Blocks of up to a quarter of this size are cut from chunks of this size
/// taken from the standard allocator; larger ones are taken from it one by
/// one. Small chunks keep a fresh instance from growing its memory for
/// blocks it does not need: growing costs more than the whole call.
const CHUNK: usize = 16 << 10;

/// The size class of `layout`, or `None` for the standard allocator.
fn class_of(layout: Layout) -> Option<usize> {
    if layout.align() > ALIGN || layout.size() > 1 << MAX_SHIFT {
        return None;
    }
    let shift = layout.size().max(1).next_power_of_two().trailing_zeros();
    Some(shift.saturating_sub(MIN_SHIFT) as usize)
}

fn block_size(class: usize) -> usize {
    1 << (class as u32 + MIN_SHIFT)
}

/// The allocator's state, used from one thread at a time.
struct Classes {
    /// Head of each class's list of free blocks; a free block's first word
    /// points to the next.
    free: [*mut u8; CLASSES],
    /// The unused rest of the current chunk.
    next: *mut u8,
    end: *mut u8,
}

impl Classes {
    const fn new() -> Self {
        Classes {
            free: [ptr::null_mut(); CLASSES],
            next: ptr::null_mut(),
            end: ptr::null_mut(),
        }
    }

    /// # Safety
    /// As [`GlobalAlloc::alloc`]; `self` must not be used by another thread
    /// meanwhile.
    unsafe fn alloc(&mut self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            // SAFETY: forwarded from the caller.
            return unsafe { System.alloc(layout) };
        };
        let head = self.free[class];
        if !head.is_null() {
            // SAFETY: `head` is a free block of this class, whose first word
            // was written by `dealloc`.
            self.free[class] = unsafe { head.cast::<*mut u8>().read() };
            return head;
        }
        let size = block_size(class);
        if size > CHUNK / 4 {
            // SAFETY: `size` is non-zero and ALIGN a power of two.
            return unsafe { System.alloc(Layout::from_size_align_unchecked(size, ALIGN)) };
        }
        if (self.end as usize) - (self.next as usize) < size {
            // The rest of the chunk is too small for this class: give it to
            // the smaller classes, then start a new chunk.
            self.spill();
            // SAFETY: CHUNK is non-zero and ALIGN a power of two.
            let chunk = unsafe { System.alloc(Layout::from_size_align_unchecked(CHUNK, ALIGN)) };
            if chunk.is_null() {
                return chunk;
            }
            self.next = chunk;
            // SAFETY: within the chunk just allocated, or one past its end.
            self.end = unsafe { chunk.add(CHUNK) };
        }
        let block = self.next;
        // SAFETY: at least `size` bytes are left in the chunk.
        self.next = unsafe { block.add(size) };
        block
    }

    /// Puts what is left of the current chunk on the free lists, largest
    /// blocks first, so no part of a chunk is lost.
    fn spill(&mut self) {
        let mut left = (self.end as usize) - (self.next as usize);
        for class in (0..CLASSES).rev() {
            let size = block_size(class);
            while left >= size {
                let block = self.next;
                // SAFETY: `block` has at least `size` bytes left in the chunk,
                // is 16-byte aligned (chunks are, and every block is a
                // multiple of 16 bytes) and is not in use.
                unsafe {
                    block.cast::<*mut u8>().write(self.free[class]);
                    self.next = block.add(size);
                }
                self.free[class] = block;
                left -= size;
            }
        }
    }

    /// # Safety
    /// As [`GlobalAlloc::dealloc`]; `self` must not be used by another thread
    /// meanwhile.
    unsafe fn dealloc(&mut self, block: *mut u8, layout: Layout) {
        match class_of(layout) {
            // SAFETY: the block was allocated with this layout, so it is of
            // this class, at least 16 bytes and 16-byte aligned.
            Some(class) => unsafe {
                block.cast::<*mut u8>().write(self.free[class]);
                self.free[class] = block;
            },
            // SAFETY: allocated by `System` with this layout.
            None => unsafe { System.dealloc(block, layout) },
        }
    }

    /// # Safety
    /// As [`GlobalAlloc::realloc`]; `self` must not be used by another thread
    /// meanwhile.
    unsafe fn realloc(&mut self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` fits a layout of this
        // alignment.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            // The block already has room for the new size.
            (Some(old), Some(new)) if old == new => block,
            // SAFETY: both layouts are the standard allocator's.
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            _ => {
                // SAFETY: forwarded from the caller; the copy stays within
                // both blocks.
                unsafe {
                    let moved = self.alloc(new_layout);
                    if !moved.is_null() {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                    moved
                }
            }
        }
    }
}

/// A fast memory allocator for handlers. Declare it once in the handler's
/// crate:
///
/// ```
/// #[global_allocator]
/// static ALLOCATOR: sluice_guest::Allocator = sluice_guest::Allocator::new();
/// ```
///
/// It cut the cost of a handler call in `host/benches/dispatch.rs` (the
/// README's performance section has the figures). The price is memory: freed
/// blocks are kept for their size, so an instance holds on to as much memory
/// as its most demanding message needed, per block size, rounded up to a
/// power of two. A handler that allocates very different sizes from one
/// message to the next may prefer the standard allocator (declare nothing).
///
/// WebAssembly handlers run on one thread, which is what makes it fast. Built
/// for any other target (a handler's native unit tests, or WebAssembly with
/// threads), it is the standard allocator.
pub struct Allocator {
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    classes: std::cell::UnsafeCell<Classes>,
}

impl Allocator {
    /// The allocator, ready for `#[global_allocator]`.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Allocator {
            #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
            classes: std::cell::UnsafeCell::new(Classes::new()),
        }
    }
}

// SAFETY: without the atomics feature a WebAssembly module has one thread, so
// the state is never used from two threads at once.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl Sync for Allocator {}

#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
// SAFETY: `Classes` upholds the `GlobalAlloc` contract, and there is one
// thread (see the `Sync` impl).
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: one thread, and no reentrance: `Classes` does not allocate
        // through the global allocator.
        unsafe { (*self.classes.get()).alloc(layout) }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: as in `alloc`.
        unsafe { (*self.classes.get()).dealloc(block, layout) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe { (*self.classes.get()).realloc(block, layout, new_size) }
    }
}

#[cfg(not(all(target_arch = "wasm32", not(target_feature = "atomics"))))]
// SAFETY: forwards to the standard allocator.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { System.dealloc(block, layout) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        unsafe { System.realloc(block, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).expect("valid layout")
    }

    #[test]
    fn sizes_map_to_the_smallest_class_that_holds_them() {
        assert_eq!(class_of(layout(1, 1)), Some(0));
        assert_eq!(class_of(layout(16, 8)), Some(0));
        assert_eq!(class_of(layout(17, 1)), Some(1));
        assert_eq!(class_of(layout(1024, 1)), Some(6));
        assert_eq!(class_of(layout(1025, 4)), Some(7));
        assert_eq!(class_of(layout(32 << 10, 16)), Some(CLASSES - 1));
        assert_eq!(class_of(layout((32 << 10) + 1, 1)), None);
        assert_eq!(class_of(layout(8, 32)), None);
    }

    /// Fills a block with a pattern of its own, to catch overlaps.
    fn fill(block: *mut u8, len: usize, seed: u8) {
        for i in 0..len {
            // SAFETY: the block has `len` bytes.
            unsafe { block.add(i).write(seed.wrapping_add(i as u8)) };
        }
    }

    fn holds(block: *mut u8, len: usize, seed: u8) -> bool {
        // SAFETY: the block has `len` bytes.
        (0..len).all(|i| unsafe { block.add(i).read() } == seed.wrapping_add(i as u8))
    }

    #[test]
    fn blocks_never_overlap_and_freed_blocks_are_reused() {
        let mut classes = Classes::new();
        let sizes = [1, 7, 16, 24, 100, 1000, 4096, 5000, 32 << 10, 40 << 10];
        let mut live = Vec::new();
        for round in 0..50u8 {
            for (i, &size) in sizes.iter().enumerate() {
                let l = layout(size, if i % 2 == 0 { 1 } else { 8 });
                // SAFETY: non-zero size.
                let block = unsafe { classes.alloc(l) };
                assert!(!block.is_null());
                assert_eq!(block as usize % l.align(), 0, "{size} bytes misaligned");
                fill(block, size, round.wrapping_mul(31).wrapping_add(i as u8));
                live.push((block, l, round.wrapping_mul(31).wrapping_add(i as u8)));
            }
            // Free every other block, keeping the rest alive.
            let mut kept = Vec::new();
            for (n, (block, l, seed)) in live.drain(..).enumerate() {
                assert!(holds(block, l.size(), seed), "a block was overwritten");
                if n % 2 == 0 {
                    // SAFETY: allocated above with this layout.
                    unsafe { classes.dealloc(block, l) };
                } else {
                    kept.push((block, l, seed));
                }
            }
            live = kept;
        }
        for (block, l, seed) in live {
            assert!(holds(block, l.size(), seed), "a block was overwritten");
            // SAFETY: allocated above with this layout.
            unsafe { classes.dealloc(block, l) };
        }

        // A freed block is handed out again for the same class.
        // SAFETY: non-zero sizes, freed with their layouts.
        unsafe {
            let a = classes.alloc(layout(100, 1));
            classes.dealloc(a, layout(100, 1));
            assert_eq!(classes.alloc(layout(120, 1)), a);
        }
    }

    #[test]
    fn realloc_keeps_the_contents_and_the_block_while_the_class_fits() {
        let mut classes = Classes::new();
        // SAFETY: non-zero sizes; each block is used with its current layout.
        unsafe {
            let block = classes.alloc(layout(20, 1));
            fill(block, 20, 9);
            let same = classes.realloc(block, layout(20, 1), 32);
            assert_eq!(same, block, "20 and 32 bytes share a class");
            let grown = classes.realloc(same, layout(32, 1), 3000);
            assert!(holds(grown, 20, 9));
            let large = classes.realloc(grown, layout(3000, 1), 100 << 10);
            assert!(holds(large, 20, 9));
            let shrunk = classes.realloc(large, layout(100 << 10, 1), 10);
            assert!(holds(shrunk, 10, 9));
            classes.dealloc(shrunk, layout(10, 1));
        }
    }

    #[test]
    fn the_end_of_a_chunk_goes_to_smaller_classes() {
        let mut classes = Classes::new();
        let quarter = CHUNK / 4;
        // SAFETY: non-zero sizes.
        unsafe {
            // One 16-byte block, then blocks of a quarter chunk until the
            // rest of the chunk is too small for another.
            let first = classes.alloc(layout(16, 1));
            let cut: Vec<_> = (0..4).map(|_| classes.alloc(layout(quarter, 1))).collect();
            assert_eq!(cut[0] as usize, first as usize + 16);
            assert_eq!(cut[2] as usize, first as usize + 16 + 2 * quarter);
            assert!(
                !(first as usize..first as usize + CHUNK).contains(&(cut[3] as usize)),
                "the fourth block needs a new chunk"
            );
            // The quarter less 16 bytes left over became one block of each
            // smaller class, largest first: the 16-byte one ends the chunk.
            let half = classes.alloc(layout(quarter / 2, 1));
            assert_eq!(half as usize, first as usize + 16 + 3 * quarter);
            let small = classes.alloc(layout(16, 1));
            assert_eq!(small as usize, first as usize + CHUNK - 16);
        }
    }

    #[test]
    fn blocks_larger_than_a_quarter_chunk_are_kept_for_their_class_too() {
        let mut classes = Classes::new();
        let big = layout(CHUNK / 2, 1);
        // SAFETY: non-zero sizes, freed with their layouts.
        unsafe {
            let a = classes.alloc(big);
            fill(a, big.size(), 3);
            classes.dealloc(a, big);
            assert_eq!(classes.alloc(layout(CHUNK / 2 - 100, 2)), a);
        }
    }
}

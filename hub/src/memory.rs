//! The hub's global allocator, [`HubAllocator`]: glibc's `malloc`, except that a buffer of
//! [`OWN_PAGES_FROM`] bytes or more gets pages of its own (`mmap`), so that the pages of it that
//! are never written are never resident.
//!
//! Why (docs/performance.md, "Memory per agent"): every agent's HTTP/2 connection allocates a
//! 16 KiB write buffer (h2's `DEFAULT_BUFFER_CAPACITY`, which neither hyper nor tonic exposes)
//! and writes only its first few hundred bytes: h2 copies at most 256 bytes of a frame's payload
//! into it, chains larger payloads, and clears it after every flush. Carved out of glibc's heap,
//! that buffer lands on pages that the connection's own TLS and HTTP/2 handshakes, freed a moment
//! before, have already dirtied, so all 16 KiB of it stay resident for the connection's life. On
//! pages of its own, only the page it writes is.
//!
//! The policy is by size alone, as `dealloc` and `realloc` receive the size the memory was
//! allocated with: a block of `OWN_PAGES_FROM` bytes or more with an alignment of at most 16 is
//! mapped, everything else goes to glibc unchanged. Growing or shrinking a mapped block is one
//! `mremap`. If the kernel refuses a mapping (`vm.max_map_count`, or no memory), the block comes
//! from `malloc` instead, with the `malloc` pointer kept in the 16 bytes before it; such a block is
//! never page-aligned and a mapping always is, which is how `dealloc` tells them apart.
//!
//! The cost: a system call to map and one to unmap each such block, and a page fault per page
//! written. The hub allocates blocks this large per connection (one) and per batch (status and
//! history statements, Admin replies), not per ack: at 10,000 protocol agents on Postgres the hub
//! measured 50-59 µs of CPU per agent per rotation with it and 58-61 µs without, back to back.
//! Each connected agent holds one mapping, which the kernel merges with its neighbours where they
//! are adjacent (1,500 agents: under 100 mappings in `/proc/PID/smaps`), so the default
//! `vm.max_map_count` (65,530) stays far above a replica's 10,000 agents (ARCHITECTURE.md,
//! Performance Targets).
//!
//! Elsewhere than Linux the allocator is glibc's or the system's, unchanged.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks this large or larger get pages of their own (16 KiB: h2's write buffer).
pub const OWN_PAGES_FROM: usize = 16 * 1024;

/// The largest alignment of a mapped block (the fallback's header keeps 16).
const MAX_ALIGN: usize = 16;

/// The hub's global allocator (see the module documentation). `keyfleet` and the loadtest
/// binary, which runs the hub as its own process, declare it as their `#[global_allocator]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HubAllocator;

/// Whether a block of this layout gets pages of its own.
fn own_pages(layout: Layout) -> bool {
    cfg!(target_os = "linux") && layout.size() >= OWN_PAGES_FROM && layout.align() <= MAX_ALIGN
}

#[allow(unsafe_code)]
// SAFETY (the whole impl): a block is freed or resized by the code that allocated it, as
// `GlobalAlloc` requires the same layout (and so the same size) on `dealloc` and `realloc`; the
// policy `own_pages` depends only on that size and alignment, so a block is always returned to the
// allocator that gave it.
unsafe impl GlobalAlloc for HubAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if own_pages(layout) {
            // SAFETY: a nonzero size (at least OWN_PAGES_FROM); alignment ≤ 16 ≤ a page.
            unsafe { pages::alloc(layout.size()) }
        } else {
            // SAFETY: forwarded with the caller's layout.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if own_pages(layout) {
            // SAFETY: as in `alloc`; a fresh mapping is zeroed by the kernel.
            unsafe { pages::alloc_zeroed(layout.size()) }
        } else {
            // SAFETY: forwarded with the caller's layout.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if own_pages(layout) {
            // SAFETY: `ptr` came from `pages::alloc` with this size (see the impl's SAFETY).
            unsafe { pages::dealloc(ptr, layout.size()) }
        } else {
            // SAFETY: `ptr` came from `System` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to the alignment, fits an isize.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (own_pages(layout), own_pages(new_layout)) {
            // SAFETY: `ptr` came from `System` with `layout`.
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            (true, true) => {
                // SAFETY: `ptr` came from `pages::alloc` with `layout.size()`.
                match unsafe { pages::remap(ptr, layout.size(), new_size) } {
                    Some(moved) => moved,
                    // SAFETY: as for this function.
                    None => unsafe { self.move_block(ptr, layout, new_layout) },
                }
            }
            // SAFETY: as for this function.
            _ => unsafe { self.move_block(ptr, layout, new_layout) },
        }
    }
}

impl HubAllocator {
    /// `realloc` across the two policies: a new block, the bytes both hold, the old block freed.
    ///
    /// # Safety
    /// As for [`GlobalAlloc::realloc`], with `new_layout` its new layout.
    #[allow(unsafe_code)]
    unsafe fn move_block(&self, ptr: *mut u8, layout: Layout, new_layout: Layout) -> *mut u8 {
        // SAFETY: `new_layout` has a nonzero size (realloc's contract).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks hold at least this many bytes and are distinct allocations;
            // `ptr` is freed with the layout it was allocated with.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_layout.size()));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod pages {
    //! Blocks on pages of their own, and the `malloc` fallback when the kernel refuses a mapping.

    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The fallback's header: the `malloc` pointer sits in the 8 bytes before the block, and the
    /// block starts 16 or 32 bytes into the `malloc`ed memory (whichever is not page-aligned).
    const HEADER: usize = 16;

    static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

    pub(super) fn page_size() -> usize {
        match PAGE_SIZE.load(Ordering::Relaxed) {
            0 => {
                // SAFETY: sysconf reads a constant of the system; it does not allocate.
                let size = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
                    .ok()
                    .filter(|size| size.is_power_of_two())
                    .unwrap_or(4096);
                PAGE_SIZE.store(size, Ordering::Relaxed);
                size
            }
            size => size,
        }
    }

    /// `size` rounded up to whole pages.
    fn span(size: usize) -> usize {
        let page = page_size();
        size.div_ceil(page) * page
    }

    fn is_mapped(ptr: *mut u8) -> bool {
        (ptr as usize).is_multiple_of(page_size())
    }

    /// # Safety
    /// `size` is nonzero.
    pub(super) unsafe fn alloc(size: usize) -> *mut u8 {
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing.
        let mapped = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span(size),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            // SAFETY: as for this function.
            unsafe { fallback_alloc(size) }
        } else {
            mapped.cast()
        }
    }

    /// # Safety
    /// `size` is nonzero.
    pub(super) unsafe fn alloc_zeroed(size: usize) -> *mut u8 {
        // SAFETY: as for this function.
        let block = unsafe { alloc(size) };
        if !block.is_null() && !is_mapped(block) {
            // SAFETY: the fallback block holds `size` bytes (a mapping is zero already).
            unsafe { std::ptr::write_bytes(block, 0, size) };
        }
        block
    }

    /// # Safety
    /// `block` came from [`alloc`] with `size`.
    pub(super) unsafe fn dealloc(block: *mut u8, size: usize) {
        if is_mapped(block) {
            // SAFETY: the whole mapping `alloc` made for this size. munmap fails only for an
            // address range that is not page-aligned, which this is.
            unsafe { libc::munmap(block.cast(), span(size)) };
        } else {
            // SAFETY: the fallback's header holds the pointer `malloc` returned.
            unsafe { libc::free(block.sub(8).cast::<*mut u8>().read().cast()) };
        }
    }

    /// Moves a mapped block to `new_size` with `mremap`; `None` for a fallback block or when the
    /// kernel refuses, and then the block is unchanged.
    ///
    /// # Safety
    /// `block` came from [`alloc`] with `size`.
    pub(super) unsafe fn remap(block: *mut u8, size: usize, new_size: usize) -> Option<*mut u8> {
        if !is_mapped(block) {
            return None;
        }
        let (old_span, new_span) = (span(size), span(new_size));
        if old_span == new_span {
            return Some(block);
        }
        // SAFETY: the whole mapping `alloc` made; MREMAP_MAYMOVE keeps its contents.
        let moved = unsafe { libc::mremap(block.cast(), old_span, new_span, libc::MREMAP_MAYMOVE) };
        (moved != libc::MAP_FAILED).then(|| moved.cast())
    }

    /// A block from `malloc` that is never page-aligned, with the `malloc` pointer before it.
    ///
    /// # Safety
    /// `size` is nonzero.
    unsafe fn fallback_alloc(size: usize) -> *mut u8 {
        let Some(total) = size.checked_add(2 * HEADER) else {
            return std::ptr::null_mut();
        };
        // SAFETY: a nonzero size; malloc's blocks are 16-aligned on every glibc/musl target.
        let raw = unsafe { libc::malloc(total) }.cast::<u8>();
        if raw.is_null() {
            return raw;
        }
        // SAFETY: both offsets lie inside the `total` bytes malloc returned.
        let mut block = unsafe { raw.add(HEADER) };
        if is_mapped(block) {
            // SAFETY: as above; `raw + 32` is not page-aligned when `raw + 16` is.
            block = unsafe { raw.add(2 * HEADER) };
        }
        // SAFETY: the 8 bytes before `block` lie inside the allocation, and are 8-aligned.
        unsafe { block.sub(8).cast::<*mut u8>().write(raw) };
        block
    }

    #[cfg(test)]
    pub(super) fn test_fallback_alloc(size: usize) -> *mut u8 {
        // SAFETY: tests pass a nonzero size.
        unsafe { fallback_alloc(size) }
    }
}

#[cfg(not(target_os = "linux"))]
#[allow(unsafe_code)]
mod pages {
    //! Never used: `own_pages` is false off Linux.

    pub(super) unsafe fn alloc(_size: usize) -> *mut u8 {
        unreachable!("no own-page blocks off Linux")
    }
    pub(super) unsafe fn alloc_zeroed(_size: usize) -> *mut u8 {
        unreachable!("no own-page blocks off Linux")
    }
    pub(super) unsafe fn dealloc(_block: *mut u8, _size: usize) {
        unreachable!("no own-page blocks off Linux")
    }
    pub(super) unsafe fn remap(_block: *mut u8, _size: usize, _new_size: usize) -> Option<*mut u8> {
        unreachable!("no own-page blocks off Linux")
    }
}

#[cfg(all(test, target_os = "linux"))]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    fn fill(block: *mut u8, len: usize, seed: u8) {
        for i in 0..len {
            // SAFETY: the tests' blocks hold at least `len` bytes.
            unsafe { block.add(i).write(seed.wrapping_add(i as u8)) };
        }
    }

    fn holds(block: *const u8, len: usize, seed: u8) -> bool {
        // SAFETY: the tests' blocks hold at least `len` bytes.
        (0..len).all(|i| unsafe { block.add(i).read() } == seed.wrapping_add(i as u8))
    }

    #[test]
    fn small_and_large_blocks_keep_their_bytes_through_every_resize() {
        let allocator = HubAllocator;
        // Small → large → larger → large → small → smaller, crossing the threshold both ways.
        let sizes = [
            100,
            OWN_PAGES_FROM - 1,
            OWN_PAGES_FROM,
            OWN_PAGES_FROM + 1,
            3 * OWN_PAGES_FROM + 17,
            OWN_PAGES_FROM + 5,
            OWN_PAGES_FROM - 1,
            40,
        ];
        let mut layout = Layout::from_size_align(sizes[0], 8).expect("layout");
        // SAFETY: a nonzero layout.
        let mut block = unsafe { allocator.alloc(layout) };
        assert!(!block.is_null());
        fill(block, layout.size(), 7);
        for &size in &sizes[1..] {
            let kept = layout.size().min(size);
            // SAFETY: `block` came from this allocator with `layout`.
            block = unsafe { allocator.realloc(block, layout, size) };
            assert!(!block.is_null());
            assert!(holds(block, kept, 7), "{kept} bytes kept when resized to {size}");
            layout = Layout::from_size_align(size, 8).expect("layout");
            fill(block, size, 7);
            if own_pages(layout) {
                assert!(pages_aligned(block), "a block of {size} bytes is mapped");
            }
        }
        // SAFETY: allocated with `layout`.
        unsafe { allocator.dealloc(block, layout) };
    }

    #[test]
    fn a_large_zeroed_block_is_zero_and_a_large_alignment_stays_with_malloc() {
        let allocator = HubAllocator;
        let layout = Layout::from_size_align(OWN_PAGES_FROM * 2, 8).expect("layout");
        // SAFETY: a nonzero layout.
        let block = unsafe { allocator.alloc_zeroed(layout) };
        // SAFETY: the block holds `layout.size()` bytes.
        assert!((0..layout.size()).all(|i| unsafe { block.add(i).read() } == 0));
        // SAFETY: allocated with `layout`.
        unsafe { allocator.dealloc(block, layout) };

        let aligned = Layout::from_size_align(OWN_PAGES_FROM, 64).expect("layout");
        assert!(!own_pages(aligned), "alignments above 16 stay with malloc");
        // SAFETY: a nonzero layout.
        let block = unsafe { allocator.alloc(aligned) };
        assert_eq!(block as usize % 64, 0);
        fill(block, aligned.size(), 3);
        // SAFETY: allocated with `aligned`.
        unsafe { allocator.dealloc(block, aligned) };
    }

    #[test]
    fn a_fallback_block_is_never_page_aligned_and_frees_and_resizes_like_a_mapped_one() {
        let allocator = HubAllocator;
        for size in [OWN_PAGES_FROM, OWN_PAGES_FROM + 4096 - 16, 5 * OWN_PAGES_FROM] {
            let layout = Layout::from_size_align(size, 16).expect("layout");
            let block = pages::test_fallback_alloc(size);
            assert!(!block.is_null());
            assert!(!pages_aligned(block));
            assert_eq!(block as usize % 16, 0, "16-aligned");
            fill(block, size, 11);
            // SAFETY: a fallback block is a block of this allocator with `layout`; growing it
            // moves it to a mapping.
            let grown = unsafe { allocator.realloc(block, layout, size * 2) };
            assert!(holds(grown, size, 11));
            assert!(pages_aligned(grown));
            // SAFETY: now a block of `size * 2` bytes.
            unsafe { allocator.dealloc(grown, Layout::from_size_align(size * 2, 16).expect("layout")) };

            let block = pages::test_fallback_alloc(size);
            // SAFETY: a fallback block with `layout`.
            unsafe { allocator.dealloc(block, layout) };
        }
    }

    #[test]
    fn a_large_block_is_resident_only_where_it_was_written() {
        let allocator = HubAllocator;
        let page = pages::page_size();
        // h2's write buffer: 16 KiB of which a connection writes a few hundred bytes.
        let layout = Layout::from_size_align(OWN_PAGES_FROM, 1).expect("layout");
        // SAFETY: a nonzero layout.
        let block = unsafe { allocator.alloc(layout) };
        fill(block, 300, 1);
        let pages = OWN_PAGES_FROM.div_ceil(page);
        let mut resident = vec![0_u8; pages];
        // SAFETY: `block` is the start of a mapping of `OWN_PAGES_FROM` bytes and `resident`
        // holds one byte per page of it.
        let rc = unsafe { libc::mincore(block.cast(), OWN_PAGES_FROM, resident.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore on the block's mapping");
        let resident_pages = resident.iter().filter(|flags| **flags & 1 == 1).count();
        assert_eq!(
            resident_pages, 1,
            "only the written page is resident: {resident:?}"
        );
        // SAFETY: allocated with `layout`.
        unsafe { allocator.dealloc(block, layout) };
    }

    fn pages_aligned(block: *mut u8) -> bool {
        (block as usize).is_multiple_of(pages::page_size())
    }
}

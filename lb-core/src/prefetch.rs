//! Cache prefetch hints: one of the places lb-core uses `unsafe` (the others are `simd` and `mem`), because
//! `core::arch`'s prefetch intrinsics are `unsafe fn`s. A prefetch is a hint: it never faults, never
//! reads memory architecturally and has no effect on program semantics, and every caller passes a
//! valid reference anyway. Bursts use it to start the cache misses of the next packets (frame
//! bytes, flow-table buckets) while the current one is processed, as DPDK programs do with
//! `rte_prefetch0`.
#![allow(unsafe_code)]

/// Hints that the cache line holding `r` will be read soon.
#[inline(always)]
pub fn prefetch<T: ?Sized>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint with no architectural effect; it cannot fault even on an invalid
    // address, and `r` is a live reference.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(r as *const T as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

/// Hints that the cache line holding `r` will be written soon (PREFETCHW on x86_64: the line comes
/// in a state a store can take at once, so the store does not wait for it behind every later one).
#[inline(always)]
pub fn prefetch_write<T: ?Sized>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as for `prefetch`: a hint with no architectural effect that cannot fault.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_ET0 }>(r as *const T as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

//! Cache prefetch hints: one of the places lb-core uses `unsafe` (the others are `simd` and `mem`),
//! because `core::arch`'s prefetch intrinsics are `unsafe fn`s. A prefetch is a hint: it never
//! faults, never reads memory architecturally and has no effect on program semantics, and every
//! caller passes a valid reference anyway. Bursts use it to start the cache misses of the next
//! packets (frame bytes, flow-table buckets) while the current one is processed, as DPDK programs
//! do with `rte_prefetch0`.
#![allow(unsafe_code)]

/// Hints that the cache line holding `r` will be read soon.
#[inline(always)]
pub fn prefetch<T: ?Sized>(r: &T) {
    hint::<READ, T>(r);
}

/// Hints that the cache line holding `r` will be written soon: PREFETCHW where the build targets
/// CPUs that have it (`-C target-cpu` with the `prfchw` feature), which fetches the line ready for
/// a store; on the baseline x86_64 target the compiler emits an ordinary PREFETCHT0, which still
/// brings the line in before the store needs it.
#[inline(always)]
pub fn prefetch_write<T: ?Sized>(r: &T) {
    hint::<WRITE, T>(r);
}

/// `_MM_HINT_T0` and `_MM_HINT_ET0`, named here so that the callers need no target-specific
/// constant.
const READ: i32 = 3;
const WRITE: i32 = 7;

#[inline(always)]
fn hint<const STRATEGY: i32, T: ?Sized>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint with no architectural effect; it cannot fault even on an invalid
    // address, and `r` is a live reference.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<STRATEGY>(r as *const T as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    #[test]
    fn hint_constants_are_the_intrinsics_own() {
        assert_eq!(super::READ, core::arch::x86_64::_MM_HINT_T0);
        assert_eq!(super::WRITE, core::arch::x86_64::_MM_HINT_ET0);
    }
}

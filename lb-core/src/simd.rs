//! Lane compares for the flow table's signature lines: the third place lb-core uses `unsafe`,
//! because `core::arch`'s SSE2 intrinsics are `unsafe fn`s even where SSE2 is part of the target's
//! baseline (every x86_64 CPU has it). Elsewhere a portable SWAR version does the same job.
//!
//! A lookup compares a bucket's eight 16-bit signatures with one; an insert looks for empty (zero)
//! ones. With SSE2 that is a load, a compare, a pack and a move-mask (4 instructions); the SWAR
//! version needs about 20.
#![allow(unsafe_code)]

/// Bit `i` set where `lanes[i] == value`, for the eight lanes; no branch, no early exit.
#[inline(always)]
pub fn eq_mask_u16x8(lanes: &[u16; 8], value: u16) -> u32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        use core::arch::x86_64::{
            _mm_cmpeq_epi16, _mm_loadu_si128, _mm_movemask_epi8, _mm_packs_epi16, _mm_set1_epi16, _mm_setzero_si128,
        };
        // SAFETY: the cfg guarantees SSE2; the unaligned load reads exactly the 16 bytes of `lanes`.
        unsafe {
            let v = _mm_loadu_si128(lanes.as_ptr().cast());
            let eq = _mm_cmpeq_epi16(v, _mm_set1_epi16(value as i16));
            // Each 16-bit lane (0 or -1) saturates to one byte; the upper eight bytes are zero.
            _mm_movemask_epi8(_mm_packs_epi16(eq, _mm_setzero_si128())) as u32
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    {
        eq_mask_u16x8_swar(lanes, value)
    }
}

/// [`eq_mask_u16x8`] in plain 64-bit arithmetic: four lanes at a time.
#[inline(always)]
pub fn eq_mask_u16x8_swar(lanes: &[u16; 8], value: u16) -> u32 {
    const LOW15: u64 = 0x7fff_7fff_7fff_7fff;
    let wanted = u64::from(value) * 0x0001_0001_0001_0001;
    let four = |w: [u16; 4]| {
        let x = (u64::from(w[0]) | u64::from(w[1]) << 16 | u64::from(w[2]) << 32 | u64::from(w[3]) << 48) ^ wanted;
        // Bit 15 of a lane is set iff the lane is zero (exact: no borrow crosses lanes).
        let zero = !(((x & LOW15) + LOW15) | x) & !LOW15;
        // Lane k's bit (at 16k + 15) moves to bit 60 + k by one multiply; the cross terms land on
        // distinct bits below 60, so nothing carries into the top four.
        ((zero >> 15).wrapping_mul((1 << 60) | (1 << 45) | (1 << 30) | (1 << 15)) >> 60) as u32
    };
    four([lanes[0], lanes[1], lanes[2], lanes[3]]) | four([lanes[4], lanes[5], lanes[6], lanes[7]]) << 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_versions_match_a_plain_compare() {
        // Lane patterns of equal, zero and near-miss values: a borrow or carry between lanes (SWAR)
        // or a sign mix-up in the saturating pack (SSE2) would show as a wrong bit.
        let others = [0u16, 1, 0x8000, 0xffff, 0x7fff];
        for value in [0u16, 1, 0x8001, 0xffff, 0x7fff, 0x1235, 0x8000] {
            for pattern in 0..(1u32 << 16) {
                let lanes: [u16; 8] = core::array::from_fn(|i| match (pattern >> (2 * i)) & 3 {
                    0 => value,
                    1 => others[i % others.len()],
                    2 => value ^ 1,
                    _ => value.wrapping_add(0x100),
                });
                let want = (0..8).fold(0, |m, i| m | u32::from(lanes[i] == value) << i);
                assert_eq!(eq_mask_u16x8(&lanes, value), want, "{lanes:04x?} {value:04x}");
                assert_eq!(eq_mask_u16x8_swar(&lanes, value), want, "{lanes:04x?} {value:04x}");
            }
        }
    }
}

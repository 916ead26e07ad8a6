//! Internet checksums (RFC 1071) and incremental updates (RFC 1624).
//!
//! Partial sums are `u32` values in network word order (as if every 16-bit word were read big-endian)
//! so that sums over different slices, pseudo-headers and constants can simply be added and folded
//! once. [`finish`] folds and complements a partial sum into the value that goes on the wire.

/// Ones'-complement partial sum of `data` in network word order (an odd last byte is padded with zero).
///
/// The ones'-complement sum is byte-order independent (RFC 1071 2(B)): words are summed in native
/// order and swapped once at the end. The bulk loop adds 32-bit words into four independent 64-bit
/// accumulators (no carries to chase, and LLVM vectorises it), so a 1500-byte frame costs a few dozen
/// cycles, not one dependent add-with-carry per 8 bytes.
#[inline]
pub fn sum(data: &[u8]) -> u32 {
    let mut lanes = [0u64; 4];
    let mut blocks = data.chunks_exact(16);
    for b in &mut blocks {
        for (lane, w) in lanes.iter_mut().zip(b.chunks_exact(4)) {
            *lane += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
        }
    }
    // Each lane is below 2^32 * (len / 16): no overflow below 16 GiB (a packet is at most 64 KiB).
    let mut acc: u64 = lanes.iter().sum();
    let mut rest = blocks.remainder();
    while rest.len() >= 4 {
        acc += u64::from(u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]));
        rest = &rest[4..];
    }
    if rest.len() >= 2 {
        acc += u64::from(u16::from_ne_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let [last] = rest {
        acc += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    u32::from(u16::from_be(fold64(acc)))
}

#[inline(always)]
fn fold64(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    fold(acc as u32)
}

/// Folds the carries of a partial sum into 16 bits (not complemented).
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Folds and complements a partial sum: the checksum field value.
#[inline(always)]
pub fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// Adds two partial sums without risking `u32` overflow.
#[inline(always)]
pub fn combine(a: u32, b: u32) -> u32 {
    u32::from(fold(a)) + u32::from(fold(b))
}

/// Partial sum of the IPv4 pseudo-header used by TCP and UDP (RFC 793, RFC 768).
#[inline]
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], protocol: u8, l4_len: u16) -> u32 {
    u32::from(u16::from_be_bytes([src[0], src[1]]))
        + u32::from(u16::from_be_bytes([src[2], src[3]]))
        + u32::from(u16::from_be_bytes([dst[0], dst[1]]))
        + u32::from(u16::from_be_bytes([dst[2], dst[3]]))
        + u32::from(protocol)
        + u32::from(l4_len)
}

/// Partial sum of the IPv6 pseudo-header (RFC 8200 8.1).
#[inline]
pub fn pseudo_header_v6(src: &[u8; 16], dst: &[u8; 16], next_header: u8, l4_len: u32) -> u32 {
    combine(sum(src), sum(dst)) + (l4_len >> 16) + (l4_len & 0xffff) + u32::from(next_header)
}

/// Checksum of an IPv4 header (with options), skipping its checksum field at bytes 10..12.
#[inline]
pub fn ipv4_header(header: &[u8]) -> u16 {
    let (a, b) = header.split_at(10.min(header.len()));
    finish(sum(a) + sum(b.get(2..).unwrap_or(&[])))
}

/// Full TCP/UDP/ICMPv6 checksum of `l4` (checksum field zeroed by the caller) given a pseudo-header sum.
#[inline]
pub fn transport(pseudo_header: u32, l4: &[u8]) -> u16 {
    finish(combine(pseudo_header, sum(l4)))
}

/// RFC 1624 eqn. 3: the new checksum after one 16-bit word changed from `old` to `new`.
#[inline(always)]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

/// RFC 1624 eqn. 3 for a run of 16-bit words (an address or address + port); `old` and `new` have
/// the same even length.
#[inline]
pub fn update(check: u16, old: &[u8], new: &[u8]) -> u16 {
    let old_sum = fold(sum(old));
    let new_sum = fold(sum(new));
    !fold(u32::from(!check) + u32::from(!old_sum) + u32::from(new_sum))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference implementation straight from RFC 1071: big-endian words, one at a time.
    fn naive(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for c in data.chunks(2) {
            let w = if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from_be_bytes([c[0], 0]) };
            s += u32::from(w);
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn ipv4_header_of_a_real_packet() {
        // IPv4 header from a capture, checksum 0xb861 (the classic Wikipedia example).
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&h), 0xb861);
        // A header that carries its correct checksum sums to zero.
        assert_eq!(finish(sum(&h)), 0);
    }

    #[test]
    fn odd_lengths_and_all_remainders_match_rfc1071() {
        let data: [u8; 37] = core::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
        for len in 0..=data.len() {
            assert_eq!(finish(sum(&data[..len])), naive(&data[..len]), "len {len}");
        }
        let ff = [0xffu8; 64];
        for len in 0..=ff.len() {
            assert_eq!(finish(sum(&ff[..len])), naive(&ff[..len]), "0xff len {len}");
        }
    }

    #[test]
    fn incremental_update_matches_recompute() {
        let mut h = [
            0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x14, 0x32,
            0x3c, 0x0a,
        ];
        let c = ipv4_header(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        let old = [h[16], h[17], h[18], h[19]];
        let new = [10, 0, 1, 4];
        let updated = update(c, &old, &new);
        h[16..20].copy_from_slice(&new);
        assert_eq!(updated, ipv4_header(&h));
        let updated16 = update16(updated, 0x0a00, 0xffff);
        h[16..18].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(updated16, ipv4_header(&h));
    }
}

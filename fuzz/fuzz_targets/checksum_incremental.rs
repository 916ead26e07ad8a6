//! Internet checksum: the fast `checksum::sum` against a word-at-a-time RFC 1071 reference, and the
//! RFC 1624 incremental updates (`update`, `update16`, `Ipv4Packet::set_src/set_dst`) against a full
//! recomputation after rewriting one aligned 2-, 4- or 16-byte field.
//!
//! Input layout (bytes past the end of the input read as 0):
//!
//! | bytes  | meaning                                                                      |
//! |--------|------------------------------------------------------------------------------|
//! | 0      | bits 0-1: the rewrite: 0 `update16` on 2 bytes, 1 `update` on 2, 2 on 4, 3 on 16 |
//! | 1      | word index of the rewritten field                                            |
//! | 2      | word index of the checksum field                                             |
//! | 3..19  | the new field value (first 2/4/16 bytes used)                                |
//! | 19..   | the covered data (a trailing odd byte is dropped for the rewrite test)       |
//!
//! About ±0: in ones'-complement arithmetic 0x0000 and 0xffff are both zero. A full recomputation,
//! `finish(sum(..))`, returns 0xffff only when every covered word is zero; RFC 1624 eqn. 3 (what
//! `update` implements) returns 0x0000 in that case. So the incremental value is compared with the
//! recomputed one modulo that equivalence (`lb_fuzz::same_checksum`), and "the patched data verifies"
//! is asserted whenever the covered data is not all zero (all-zero data with a 0x0000 checksum is the
//! one case that cannot verify; no real IPv4/TCP/UDP header is all zero). For a real IPv4 header
//! (version nibble 4, so never all zero) the two values must be exactly equal.
#![no_main]

use lb_core::wire::checksum::{self, combine, finish, fold, sum, update, update16};
use lb_core::wire::Ipv4Packet;
use lb_fuzz::same_checksum;
use libfuzzer_sys::fuzz_target;

const HEADER: usize = 19;

fn at<const N: usize>(data: &[u8], off: usize) -> [u8; N] {
    core::array::from_fn(|i| data.get(off + i).copied().unwrap_or(0))
}

/// RFC 1071 straight: big-endian 16-bit words one at a time, an odd last byte padded with zero.
fn naive_sum(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn verifies(data: &[u8]) -> bool {
    finish(sum(data)) == 0
}

fuzz_target!(|data: &[u8]| {
    // ---- sum() against the reference, at every start alignment and split point.
    for skip in 0..data.len().min(8) {
        let d = &data[skip..];
        assert_eq!(fold(sum(d)), naive_sum(d), "sum differs from RFC 1071 on {} bytes", d.len());
    }
    let whole = fold(sum(data));
    for split in (0..=data.len().min(64)).step_by(2) {
        let (a, b) = data.split_at(split);
        // combine() of two even-aligned partial sums is the sum of the concatenation (same number
        // modulo ±0; both are canonical non-zero values unless everything is zero).
        assert_eq!(fold(combine(sum(a), sum(b))), whole, "combine at split {split}");
    }

    // ---- Pseudo-headers against the same bytes laid out explicitly.
    let (s4, d4, s16, d16): ([u8; 4], [u8; 4], [u8; 16], [u8; 16]) =
        (at(data, 3), at(data, 7), at(data, 3), at(data, 19));
    let [proto] = at::<1>(data, 0);
    let l4_len = u16::from_be_bytes(at(data, 1));
    let mut ph4 = Vec::from(s4);
    ph4.extend_from_slice(&d4);
    ph4.extend_from_slice(&[0, proto]);
    ph4.extend_from_slice(&l4_len.to_be_bytes());
    assert_eq!(fold(checksum::pseudo_header_v4(s4, d4, proto, l4_len)), fold(sum(&ph4)), "IPv4 pseudo-header");
    let l4_len32 = u32::from_be_bytes(at(data, 35));
    let mut ph6 = Vec::from(s16);
    ph6.extend_from_slice(&d16);
    ph6.extend_from_slice(&l4_len32.to_be_bytes());
    ph6.extend_from_slice(&[0, 0, 0, proto]);
    assert_eq!(fold(checksum::pseudo_header_v6(&s16, &d16, proto, l4_len32)), fold(sum(&ph6)), "IPv6 pseudo-header");

    // ---- ipv4_header() skips bytes 10..12.
    if data.len() >= 12 {
        let mut z = data.to_vec();
        z[10..12].fill(0);
        assert_eq!(checksum::ipv4_header(data), finish(sum(&z)));
    }
    // transport() is the full computation over pseudo-header + L4.
    assert_eq!(checksum::transport(0, data), finish(sum(data)));

    // ---- One aligned field rewritten: incremental vs full.
    let [sel, field_word, csum_word] = at::<3>(data, 0);
    let new_value: [u8; 16] = at(data, 3);
    let body = data.get(HEADER..).unwrap_or(&[]);
    let mut buf = body[..body.len() & !1].to_vec();
    let words = buf.len() / 2;
    let width = [2, 2, 4, 16][usize::from(sel & 3)];
    // At least one word besides the field, for the checksum.
    if words > width / 2 {
        let ck = usize::from(csum_word) % words * 2;
        let f = usize::from(field_word) % (words - width / 2 + 1) * 2;
        if ck + 2 <= f || f + width <= ck {
            buf[ck..ck + 2].fill(0);
            let c = finish(sum(&buf));
            buf[ck..ck + 2].copy_from_slice(&c.to_be_bytes());
            assert!(verifies(&buf), "a freshly computed checksum does not verify");

            let old: Vec<u8> = buf[f..f + width].to_vec();
            let new = &new_value[..width];
            let patched = if sel & 3 == 0 {
                let (o, n) = (u16::from_be_bytes([old[0], old[1]]), u16::from_be_bytes([new[0], new[1]]));
                let p = update16(c, o, n);
                assert!(same_checksum(p, update(c, &old, new)), "update16 and update disagree");
                p
            } else {
                update(c, &old, new)
            };
            buf[f..f + width].copy_from_slice(new);
            buf[ck..ck + 2].fill(0);
            let all_zero = buf.iter().all(|&b| b == 0);
            let full = finish(sum(&buf));
            assert!(
                same_checksum(patched, full),
                "incremental {patched:#06x} vs recomputed {full:#06x} (width {width}, field at {f}, checksum at {ck})"
            );
            buf[ck..ck + 2].copy_from_slice(&patched.to_be_bytes());
            if !all_zero {
                assert!(verifies(&buf), "patched checksum {patched:#06x} does not verify");
            }
            // Rewriting the field back restores the original checksum (same number).
            let back = update(patched, new, &old);
            assert!(same_checksum(back, c), "round trip {c:#06x} -> {patched:#06x} -> {back:#06x}");
        }
    }

    // ---- The IPv4 view's incremental address rewrites on a real header (never all zero).
    let mut h: [u8; 20] = at(data, HEADER);
    h[0] = 0x45;
    h[2..4].copy_from_slice(&20u16.to_be_bytes());
    let mut p = Ipv4Packet::new_checked(&mut h[..]).expect("a 20-byte IHL-5 header is a valid packet");
    p.fill_checksum();
    assert!(p.verify_checksum());
    p.set_src(at(new_value.as_slice(), 0));
    assert!(p.verify_checksum(), "set_src broke the checksum");
    p.set_dst(at(new_value.as_slice(), 4));
    assert!(p.verify_checksum(), "set_dst broke the checksum");
    let incremental = p.header().checksum.get();
    p.fill_checksum();
    assert_eq!(incremental, p.header().checksum.get(), "set_src/set_dst vs fill_checksum");
});

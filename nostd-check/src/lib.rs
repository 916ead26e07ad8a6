//! `nostd-check`: lb-core linked into a C program with no Rust standard library.
//!
//! This crate is `#![no_std]`, depends on `lb-core` with its default features off, and is built as a
//! `staticlib` under `panic = "abort"`. `main.c` links the archive with plain gcc and checks what the
//! two exported functions compute; `scripts/test.sh` also greps the archive's symbols for `std`.
//!
//! The only `unsafe` here turns the C caller's pointers into slices and references; each such block
//! states what the caller guarantees. Everything past that boundary is lb-core's safe code.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

use core::net::Ipv4Addr;

use lb_core::wire::{parse_flow_key, vxlan, Fragment, IpVersion, MacAddr, VxlanEncap, WireError};

/// The flow key of a frame, in a C layout (mirrored by `struct nostd_key` in `main.c`).
///
/// Fields are ordered so that the struct has no implicit padding (56 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NostdKey {
    /// Source address; IPv4 in the first 4 bytes.
    pub src_addr: [u8; 16],
    /// Destination address; IPv4 in the first 4 bytes.
    pub dst_addr: [u8; 16],
    /// Source port (host order).
    pub src_port: u16,
    /// Destination port (host order).
    pub dst_port: u16,
    /// IP protocol of the upper layer.
    pub protocol: u8,
    /// 4 or 6.
    pub ip_version: u8,
    /// TCP flags.
    pub tcp_flags: u8,
    /// 0 = not a fragment, 1 = first fragment, 2 = later fragment.
    pub fragment: u8,
    /// Number of VLAN tags (0..=2).
    pub vlan_count: u8,
    /// Always 0.
    pub reserved: u8,
    /// VLAN ids, outermost first.
    pub vlans: [u16; 2],
    /// Offset of the IP header.
    pub l3_offset: u16,
    /// Offset of the L4 header.
    pub l4_offset: u16,
    /// Length of the L4 part.
    pub l4_len: u16,
    /// Fragment identification.
    pub frag_ident: u32,
}

/// An IPv4 VxLAN tunnel, in a C layout (mirrored by `struct nostd_tunnel` in `main.c`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NostdTunnel {
    /// Outer source MAC.
    pub src_mac: [u8; 6],
    /// Outer destination MAC.
    pub dst_mac: [u8; 6],
    /// Outer source IPv4 address (network order bytes).
    pub src_ip: [u8; 4],
    /// Outer destination IPv4 address.
    pub dst_ip: [u8; 4],
    /// VNI (24 bits).
    pub vni: u32,
    /// Underlay IP MTU.
    pub mtu: u16,
    /// Outer TTL.
    pub ttl: u8,
    /// Always 0.
    pub reserved: u8,
}

/// Returned when a pointer argument is null.
pub const NOSTD_ERR_NULL: i32 = -1;

/// Maps a [`WireError`] to a negative code (stable for `main.c`).
fn error_code(e: WireError) -> i32 {
    match e {
        WireError::Truncated(_) => -2,
        WireError::BadVersion(_) => -3,
        WireError::BadIhl(_) => -4,
        WireError::LengthMismatch(_) => -5,
        WireError::BadDataOffset(_) => -6,
        WireError::TooManyVlanTags => -7,
        WireError::TooManyExtensionHeaders => -8,
        WireError::HopByHopNotFirst => -9,
        WireError::UnsupportedEtherType(_) => -10,
        WireError::NotVxlan => -11,
        WireError::HeadroomTooSmall { .. } => -12,
        WireError::MtuExceeded { .. } => -13,
        WireError::BadChecksum(_) => -14,
        WireError::FieldOverflow(_) => -15,
    }
}

fn to_c(k: &lb_core::wire::FlowKey) -> NostdKey {
    NostdKey {
        src_addr: k.src_addr,
        dst_addr: k.dst_addr,
        src_port: k.src_port,
        dst_port: k.dst_port,
        protocol: k.protocol,
        ip_version: match k.ip_version {
            IpVersion::V4 => 4,
            IpVersion::V6 => 6,
        },
        tcp_flags: k.tcp_flags,
        fragment: match k.fragment {
            Fragment::None => 0,
            Fragment::First => 1,
            Fragment::Later => 2,
        },
        vlan_count: k.vlan_count,
        reserved: 0,
        vlans: k.vlans,
        l3_offset: k.l3_offset,
        l4_offset: k.l4_offset,
        l4_len: k.l4_len,
        frag_ident: k.frag_ident,
    }
}

/// Parses the Ethernet frame `frame[..len]` with `lb_core::wire::parse_flow_key` and writes its flow
/// key to `*out`. Returns 0, or a negative error code (`out` untouched).
///
/// # Safety
/// `frame` must point to `len` readable bytes (or be null, which is rejected) and `out` to a writable
/// `NostdKey` (or be null). Neither may be mutated by anyone else during the call.
#[no_mangle]
pub unsafe extern "C" fn nostd_flow_key(frame: *const u8, len: usize, out: *mut NostdKey) -> i32 {
    if frame.is_null() || out.is_null() {
        return NOSTD_ERR_NULL;
    }
    // SAFETY: non-null, and the caller guarantees `len` readable bytes that stay unchanged meanwhile.
    let frame = unsafe { core::slice::from_raw_parts(frame, len) };
    match parse_flow_key(frame) {
        Ok(k) => {
            // SAFETY: non-null, and the caller guarantees a writable, exclusively held `NostdKey`.
            // `write` does not read the (possibly uninitialised) old value.
            unsafe { out.write(to_c(&k)) };
            0
        }
        Err(e) => error_code(e),
    }
}

/// VxLAN-encapsulates, in place, the inner frame at `buf[frame_start..frame_start + frame_len]` with
/// `lb_core::wire::VxlanEncap`, writing the outer headers into the headroom before it. Returns the
/// offset of the outer frame in `buf` (>= 0), or a negative error code.
///
/// # Safety
/// `tunnel` must point to a readable `NostdTunnel` and `buf` to `buf_len` writable bytes that nobody
/// else reads or writes during the call (null pointers are rejected).
#[no_mangle]
pub unsafe extern "C" fn nostd_vxlan_encap(
    tunnel: *const NostdTunnel,
    buf: *mut u8,
    buf_len: usize,
    frame_start: usize,
    frame_len: usize,
    flow_hash: u32,
) -> i64 {
    if tunnel.is_null() || buf.is_null() {
        return i64::from(NOSTD_ERR_NULL);
    }
    // SAFETY: non-null and readable per the contract; `NostdTunnel` is `Copy` plain data.
    let t = unsafe { *tunnel };
    // SAFETY: non-null, `buf_len` writable bytes held exclusively by this call per the contract.
    let buf = unsafe { core::slice::from_raw_parts_mut(buf, buf_len) };
    let encap = match VxlanEncap::new(
        MacAddr(t.src_mac),
        MacAddr(t.dst_mac),
        Ipv4Addr::from(t.src_ip).into(),
        Ipv4Addr::from(t.dst_ip).into(),
        t.vni,
        t.ttl,
        t.mtu,
    ) {
        Ok(e) => e,
        Err(e) => return i64::from(error_code(e)),
    };
    match encap.encapsulate(buf, frame_start, frame_len, flow_hash) {
        Ok(start) => start as i64,
        Err(e) => i64::from(error_code(e)),
    }
}

/// Decapsulates the VxLAN frame `frame[..len]` with `lb_core::wire::vxlan::decapsulate`: writes the
/// VNI and the offset of the inner Ethernet frame. Returns 0 or a negative error code.
///
/// # Safety
/// `frame` must point to `len` readable bytes, `vni` and `inner_offset` to writable values (null
/// pointers are rejected); none of them may be mutated by anyone else during the call.
#[no_mangle]
pub unsafe extern "C" fn nostd_vxlan_decap(
    frame: *const u8,
    len: usize,
    vni: *mut u32,
    inner_offset: *mut usize,
) -> i32 {
    if frame.is_null() || vni.is_null() || inner_offset.is_null() {
        return NOSTD_ERR_NULL;
    }
    // SAFETY: non-null, `len` readable bytes left unchanged during the call per the contract.
    let frame = unsafe { core::slice::from_raw_parts(frame, len) };
    match vxlan::decapsulate(frame) {
        Ok(d) => {
            // SAFETY: both non-null and writable per the contract.
            unsafe {
                vni.write(d.vni);
                inner_offset.write(d.inner_offset);
            }
            0
        }
        Err(e) => error_code(e),
    }
}

/// lb-core reports malformed input as errors and never panics on it; a panic here is a bug. With no
/// `std` there is no unwinding or abort to call into, so the handler parks the thread (the test script
/// runs the C program under a timeout, which turns a hang into a failure).
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

//! Shared helpers for the criterion benchmarks. The peer-crate extractors live in
//! `lb_testkit::oracle` (the property tests use the same code as oracles).

pub use lb_testkit::oracle::{etherparse_tuple, smoltcp_tuple, Tuple5};

/// lb-core's flow key reduced to a [`Tuple5`].
#[inline]
pub fn lb_core_tuple(frame: &[u8]) -> Option<Tuple5> {
    let k = lb_core::wire::parse_flow_key(frame).ok()?;
    Some(Tuple5 { src: k.src_addr, dst: k.dst_addr, protocol: k.protocol, src_port: k.src_port, dst_port: k.dst_port })
}

/// Asks the kernel to back `[addr, addr + len)` with transparent huge pages (2 MiB), as the program
/// does for its flow tables (`FlowTable::with_capacity_prepared`): a table of a million flows on
/// 4 KiB pages pays a TLB miss on nearly every lookup. A no-op where the kernel says no.
pub fn huge_pages(addr: *const u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = (addr as usize).div_ceil(PAGE) * PAGE;
        let end = (addr as usize + len) / PAGE * PAGE;
        if end > start {
            // SAFETY: madvise only changes how the kernel backs pages of this process's own
            // mapping (reserved, not yet written); it reads and writes no memory.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
}

//! Memory advice for the large tables a hosted program builds (feature `std`): one of the places
//! lb-core uses `unsafe`, for one system call that changes how the kernel backs memory and never
//! reads or writes it.
#![allow(unsafe_code)]

/// Asks the kernel to back `[addr, addr + len)` (a flow table, reserved and not yet written) with
/// transparent huge pages: a table of millions of flows on 4 KiB pages pays a TLB miss on nearly
/// every lookup. Pass it as the `prepare` of [`crate::tables::FlowTable::with_capacity_prepared`]
/// (or of `Mux::with_flow_memory` / `HostAgent::with_flow_memory`). A no-op where the kernel says no
/// (THP off) and off Linux.
pub fn huge_pages(addr: *const u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = (addr as usize).div_ceil(PAGE) * PAGE;
        let end = (addr as usize).saturating_add(len) / PAGE * PAGE;
        if end > start {
            // SAFETY: madvise only changes how the kernel backs pages of this process's own mapping;
            // it reads and writes no memory, and the range lies inside the caller's allocation.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (addr, len);
}

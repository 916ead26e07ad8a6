//! Memory advice for the data path's big tables.
#![allow(unsafe_code)]

/// Asks the kernel to back `[addr, addr + len)` (a flow table, reserved and not yet written) with
/// transparent huge pages: a table of millions of flows on 4 KiB pages pays a TLB miss on nearly
/// every lookup. A no-op where the kernel says no (THP off) or off Linux.
pub fn huge_pages(addr: *const u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = (addr as usize).div_ceil(PAGE) * PAGE;
        let end = (addr as usize + len) / PAGE * PAGE;
        if end > start {
            // SAFETY: madvise only changes how the kernel backs pages of this process's own mapping;
            // it reads and writes no memory, and the range lies inside one allocation.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
}

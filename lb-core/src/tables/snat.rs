//! The host agent's SNAT port allocator (Azure SLB outbound connections).
//!
//! A backend VM's outbound connection leaves with the frontend address as its source, and a source
//! port picked from the block of ports that address lends the VM (the control plane splits the
//! 64,512 ports `1024..=65535` of each frontend address among the pool; see
//! [`default_ports_per_backend`] for Azure's default split). This module hands those ports out and
//! takes them back.
//!
//! # Design
//!
//! - **FIFO with quarantine.** The free ports of a block sit in a ring, oldest-freed first. A released
//!   port goes to the tail, stamped with its release time; it is eligible again `quarantine_secs`
//!   later. [`SnatAllocator::alloc`] only looks at the head: if the head is not eligible yet,
//!   nothing behind it is either (with a clock that does not go backwards, stamps are in order),
//!   so allocation and release are O(1). Handing out the port that has been free the longest,
//!   and never one freed less than `quarantine_secs` ago, means late packets (retransmissions, a
//!   FIN's last ACK, TIME-WAIT on the far side) of an old connection arrive while no new connection
//!   owns the port, instead of being mistaken for the new connection's packets. If the clock does go
//!   backwards, ports are handed out later than they could be, never too soon.
//! - **TCP port sharing.** Azure documents that "the same SNAT port can be used for connections to
//!   different destinations": the 5-tuple stays unique as long as the destination differs. When no
//!   fresh port is eligible, [`SnatAllocator::alloc_shared`] looks at up to [`SHARE_PROBES`] ports of
//!   the block from a rotating cursor and takes the first one that has connections, was not released
//!   within the quarantine, and that the caller's predicate accepts (the caller knows whether it
//!   already has a live connection from that port to the same destination). Each port keeps a
//!   connection count; it returns to the free ring when its last connection ends.
//! - **UDP is never shared.** The host agent allocates UDP ports with plain [`SnatAllocator::alloc`]:
//!   one port per UDP flow (5-tuple), held while the flow lives (its idle timeout) and given to no
//!   other flow meanwhile, so a datagram that arrives on a port can only belong to that flow
//!   (endpoint-dependent mapping in RFC 4787's terms: a backend talking to two destinations from one
//!   socket shows two public ports). Sharing ([`SnatAllocator::alloc_shared`]) is for TCP only.
//! - **Reserved ports.** A port a listener on the same frontend address claims is taken out of its
//!   block for good with [`SnatAllocator::reserve`].
//!
//! # Memory
//!
//! [`SnatAllocator::new`] allocates everything once, in flat vectors over all blocks: per port a `u16`
//! connection count and its last release time, and per port one ring entry (port and release
//! time). Times are compared by the seconds elapsed since (wrapping), so a clock that wraps around
//! `u32::MAX` (the C ABI takes any monotonic clock) keeps the quarantine. Nothing allocates afterwards: allocation, sharing, release
//! and queries work in place, which is what the packet path needs.

use alloc::vec::Vec;
use core::fmt;

/// The first port SNAT uses on a frontend address: ports `SNAT_FIRST_PORT..=65535` are lent out.
pub const SNAT_FIRST_PORT: u16 = 1024;

/// How many ports [`SnatAllocator::alloc_shared`] looks at, at most, before giving up on sharing.
pub const SHARE_PROBES: usize = 16;

/// The most connections one port carries at once (sharing stops there).
pub const MAX_PORT_CONNECTIONS: u16 = u16::MAX - 1;

/// The connection count that marks a reserved port (see [`SnatAllocator::reserve`]).
const RESERVED: u16 = u16::MAX;

/// A block of ports lent to one backend: ports `first .. first + len` of frontend address `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortBlock {
    /// The frontend address, as an index the caller chooses (blocks on different addresses never
    /// overlap).
    pub address: u16,
    /// The first port of the block, at least [`SNAT_FIRST_PORT`].
    pub first: u16,
    /// The number of ports, at least 1; the last port `first + len - 1` is at most 65535.
    pub len: u16,
}

impl PortBlock {
    /// Whether `port` is one of the block's ports.
    pub fn contains(&self, port: u16) -> bool {
        port >= self.first && u32::from(port - self.first) < u32::from(self.len)
    }

    /// Whether the block is well formed (see the field docs).
    fn is_valid(&self) -> bool {
        self.first >= SNAT_FIRST_PORT
            && self.len >= 1
            && u32::from(self.first) + u32::from(self.len) - 1 <= u32::from(u16::MAX)
    }

    /// One past the last port, as a `u32` (it may be 65536).
    fn end(&self) -> u32 {
        u32::from(self.first) + u32::from(self.len)
    }
}

/// Why an allocator cannot be built, or why an operation was refused. A refused operation changes
/// nothing, except that [`SnatError::Exhausted`] moves the `exhausted` counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnatError {
    /// Block `block` (index in the slice given to [`SnatAllocator::new`]) starts below
    /// [`SNAT_FIRST_PORT`], is empty, or runs past port 65535.
    BadBlock {
        /// Index of the malformed block.
        block: usize,
    },
    /// Blocks `a` and `b` (`a < b`) share a port on the same address.
    Overlap {
        /// The lower index of the two.
        a: usize,
        /// The higher index of the two.
        b: usize,
    },
    /// The block index names no block.
    UnknownBlock(usize),
    /// No port can be handed out now.
    Exhausted,
    /// `port` is outside block `block`, reserved, or has no connection to release.
    NotAllocated {
        /// The block index.
        block: usize,
        /// The port.
        port: u16,
    },
    /// `port` cannot be reserved: it is outside block `block`, in use, or already reserved.
    NotFree {
        /// The block index.
        block: usize,
        /// The port.
        port: u16,
    },
}

impl fmt::Display for SnatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnatError::BadBlock { block } => write!(
                f,
                "SNAT port block {block} is malformed (it must start at {SNAT_FIRST_PORT} or above, hold at least \
                 one port and end at 65535 or below)"
            ),
            SnatError::Overlap { a, b } => write!(f, "SNAT port blocks {a} and {b} overlap on the same address"),
            SnatError::UnknownBlock(i) => write!(f, "no SNAT port block {i}"),
            SnatError::Exhausted => write!(f, "no SNAT port available"),
            SnatError::NotAllocated { block, port } => {
                write!(f, "SNAT port {port} of block {block} is not allocated")
            }
            SnatError::NotFree { block, port } => {
                write!(f, "SNAT port {port} of block {block} is not free to reserve")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SnatError {}

/// What the allocator did since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnatCounters {
    /// Fresh ports handed out (by [`SnatAllocator::alloc`], or by [`SnatAllocator::alloc_shared`]
    /// before it falls back to sharing).
    pub allocated: u64,
    /// Connections put on a port already in use by [`SnatAllocator::alloc_shared`].
    pub shared: u64,
    /// Successful releases (one per connection that ended).
    pub released: u64,
    /// Allocations refused with [`SnatError::Exhausted`], block by block (the host agent tries a
    /// backend's blocks in turn, so one may refuse where the next serves; its `snat_exhausted` drop
    /// counts the connections no block could take).
    pub exhausted: u64,
}

/// One entry of a block's free ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Free {
    /// When the port was released (`None`: never, eligible at once).
    released: Option<u32>,
    port: u16,
}

/// Whether a port released at `released` has been quiet for `quarantine` seconds at `now`: the
/// seconds since, on a clock that may wrap around `u32::MAX`, taken as a signed half range (as
/// the flow table's deadlines are), so that a clock gone back a little (a capture's timestamps
/// out of order) holds the port longer, never hands it out early.
#[inline(always)]
fn quiet_since(released: Option<u32>, quarantine: u32, now: u32) -> bool {
    released.is_none_or(|r| now.wrapping_sub(r) as i32 >= quarantine as i32)
}

/// Per-block bookkeeping; the ports' state lives in the allocator's flat vectors from `base` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BlockState {
    spec: PortBlock,
    /// Index of the block's first port in the flat vectors (and of its ring storage).
    base: usize,
    /// Ring position of the oldest free port.
    head: u32,
    /// Ports in the ring.
    free: u32,
    /// Ports with at least one connection.
    in_use: u32,
    /// Ports taken out by `reserve`.
    reserved: u32,
    /// Offset (from `first`) where the next sharing scan starts.
    cursor: u16,
}

/// SNAT port allocator over a fixed set of port blocks (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnatAllocator {
    blocks: Vec<BlockState>,
    /// Per port: connections on it (0 free, [`RESERVED`] reserved).
    refs: Vec<u16>,
    /// Per port: its last release time (`None` if never released); the port may carry a new
    /// connection once the quarantine has passed since.
    quiet: Vec<Option<u32>>,
    /// Per port: handed out by [`SnatAllocator::alloc`] (a UDP flow's): never shared while it lasts.
    exclusive: Vec<bool>,
    /// Per block, `len` slots: the ring of free ports.
    ring: Vec<Free>,
    quarantine: u32,
    counters: SnatCounters,
}

/// The longest quarantine (a day): times are compared by the seconds elapsed since, modulo 2^32.
pub const MAX_QUARANTINE_SECS: u32 = 86_400;

impl SnatAllocator {
    /// Builds an allocator over `blocks` (indexed as in the slice from now on), every port free and
    /// eligible, in port order. Ports released are held back `quarantine_secs` seconds (at most
    /// [`MAX_QUARANTINE_SECS`]) before they can carry a new connection. Zero blocks is fine (every
    /// allocation is then refused).
    pub fn new(blocks: &[PortBlock], quarantine_secs: u32) -> Result<Self, SnatError> {
        if let Some(block) = blocks.iter().position(|b| !b.is_valid()) {
            return Err(SnatError::BadBlock { block });
        }
        // Sorted by (address, first), blocks that do not overlap so far are disjoint, so the first
        // overlap is between neighbours.
        let mut order: Vec<usize> = (0..blocks.len()).collect();
        order.sort_unstable_by_key(|&i| (blocks[i].address, blocks[i].first));
        for w in order.windows(2) {
            let (x, y) = (blocks[w[0]], blocks[w[1]]);
            if x.address == y.address && u32::from(y.first) < x.end() {
                return Err(SnatError::Overlap { a: w[0].min(w[1]), b: w[0].max(w[1]) });
            }
        }

        let total: usize = blocks.iter().map(|b| usize::from(b.len)).sum();
        let mut state = Vec::with_capacity(blocks.len());
        let mut ring = Vec::with_capacity(total);
        let mut base = 0;
        for b in blocks {
            state.push(BlockState {
                spec: *b,
                base,
                head: 0,
                free: u32::from(b.len),
                in_use: 0,
                reserved: 0,
                cursor: 0,
            });
            ring.extend((0..b.len).map(|k| Free { released: None, port: b.first + k }));
            base += usize::from(b.len);
        }
        Ok(SnatAllocator {
            blocks: state,
            refs: alloc::vec![0; total],
            quiet: alloc::vec![None; total],
            exclusive: alloc::vec![false; total],
            ring,
            quarantine: quarantine_secs.min(MAX_QUARANTINE_SECS),
            counters: SnatCounters::default(),
        })
    }

    /// Takes the head of the block's free ring if it is eligible at `now`; `None` if it is not or the
    /// ring is empty. Counts an allocation, not an exhaustion.
    #[inline]
    fn take_fresh(&mut self, block: usize, now: u32, exclusive: bool) -> Result<Option<u16>, SnatError> {
        let b = self.blocks.get_mut(block).ok_or(SnatError::UnknownBlock(block))?;
        if b.free == 0 {
            return Ok(None);
        }
        let head = self.ring[b.base + b.head as usize];
        if !quiet_since(head.released, self.quarantine, now) {
            return Ok(None);
        }
        b.head += 1;
        if b.head == u32::from(b.spec.len) {
            b.head = 0;
        }
        b.free -= 1;
        b.in_use += 1;
        let i = b.base + usize::from(head.port - b.spec.first);
        self.refs[i] = 1;
        self.exclusive[i] = exclusive;
        self.counters.allocated += 1;
        Ok(Some(head.port))
    }

    /// Hands out a port of `block` with no connection on it: the one freed longest ago, if its
    /// quarantine is over at `now`. The port is the connection's alone: [`alloc_shared`] never puts
    /// another connection on it (UDP). O(1). [`SnatError::Exhausted`] (counted; nothing else
    /// changes) when there is none.
    ///
    /// [`alloc_shared`]: Self::alloc_shared
    #[inline]
    pub fn alloc(&mut self, block: usize, now: u32) -> Result<u16, SnatError> {
        match self.take_fresh(block, now, true)? {
            Some(port) => Ok(port),
            None => {
                self.counters.exhausted += 1;
                Err(SnatError::Exhausted)
            }
        }
    }

    /// For TCP: like [`alloc`](Self::alloc), but when no fresh port is eligible, puts the connection
    /// on a port already in use. It looks at up to [`SHARE_PROBES`] consecutive ports of the block
    /// (wrapping), from a cursor that moves on with every scan, and takes the first one that has
    /// between 1 and `MAX_PORT_CONNECTIONS - 1` connections, did not come from [`alloc`](Self::alloc)
    /// (a UDP flow's port is its own), was not released less than the
    /// quarantine ago, and for which `usable(port)` is true (the caller answers whether it has no
    /// live connection from that port to the new connection's destination). `usable` is only asked
    /// about such ports. [`SnatError::Exhausted`] (counted) if none qualifies.
    #[inline]
    pub fn alloc_shared(
        &mut self,
        block: usize,
        now: u32,
        mut usable: impl FnMut(u16) -> bool,
    ) -> Result<u16, SnatError> {
        if let Some(port) = self.take_fresh(block, now, false)? {
            return Ok(port);
        }
        let b = &mut self.blocks[block];
        let len = b.spec.len;
        let mut off = b.cursor;
        for _ in 0..SHARE_PROBES.min(usize::from(len)) {
            let i = b.base + usize::from(off);
            let port = b.spec.first + off;
            off = if off + 1 == len { 0 } else { off + 1 };
            let r = self.refs[i];
            if r != 0
                && r < MAX_PORT_CONNECTIONS
                && !self.exclusive[i]
                && quiet_since(self.quiet[i], self.quarantine, now)
                && usable(port)
            {
                self.refs[i] = r + 1;
                b.cursor = off;
                self.counters.shared += 1;
                return Ok(port);
            }
        }
        b.cursor = off;
        self.counters.exhausted += 1;
        Err(SnatError::Exhausted)
    }

    /// One connection on `port` of `block` ended at `now`. When it was the port's last, the port goes
    /// to the tail of the free ring, eligible again `quarantine_secs` after `now`. Either
    /// way sharing skips the port until then. O(1). [`SnatError::NotAllocated`] (nothing changes) if
    /// the port is outside the block, reserved, or has no connection.
    #[inline]
    pub fn release(&mut self, block: usize, port: u16, now: u32) -> Result<(), SnatError> {
        let b = self.blocks.get_mut(block).ok_or(SnatError::UnknownBlock(block))?;
        if !b.spec.contains(port) {
            return Err(SnatError::NotAllocated { block, port });
        }
        let i = b.base + usize::from(port - b.spec.first);
        let r = self.refs[i];
        if r == 0 || r == RESERVED {
            return Err(SnatError::NotAllocated { block, port });
        }
        self.quiet[i] = Some(now);
        self.refs[i] = r - 1;
        if r == 1 {
            self.exclusive[i] = false;
            let mut tail = b.head + b.free;
            if tail >= u32::from(b.spec.len) {
                tail -= u32::from(b.spec.len);
            }
            self.ring[b.base + tail as usize] = Free { released: Some(now), port };
            b.free += 1;
            b.in_use -= 1;
        }
        self.counters.released += 1;
        Ok(())
    }

    /// Control plane: takes a free `port` of `block` out of use for good (a listener on the same
    /// frontend address claims it). O(block length). [`SnatError::NotFree`] (nothing changes) if the
    /// port is outside the block, has connections, or is already reserved.
    pub fn reserve(&mut self, block: usize, port: u16) -> Result<(), SnatError> {
        let b = self.blocks.get_mut(block).ok_or(SnatError::UnknownBlock(block))?;
        if !b.spec.contains(port) || self.refs[b.base + usize::from(port - b.spec.first)] != 0 {
            return Err(SnatError::NotFree { block, port });
        }
        let len = usize::from(b.spec.len);
        let ring = &mut self.ring[b.base..b.base + len];
        let head = b.head as usize;
        let slot = |k: usize| (head + k) % len;
        let free = b.free as usize;
        // A port with no connection that is not reserved is in the ring, so this always finds it.
        let Some(k) = (0..free).find(|&k| ring[slot(k)].port == port) else {
            return Err(SnatError::NotFree { block, port });
        };
        // Close the gap, keeping the order of the others.
        for k in k..free - 1 {
            ring[slot(k)] = ring[slot(k + 1)];
        }
        b.free -= 1;
        b.reserved += 1;
        self.refs[b.base + usize::from(port - b.spec.first)] = RESERVED;
        Ok(())
    }

    /// When `port` of `block` was last released (`None`: never, or no such port).
    pub fn released_at(&self, block: usize, port: u16) -> Option<u32> {
        let b = self.blocks.get(block)?;
        b.spec.contains(port).then(|| self.quiet[b.base + usize::from(port - b.spec.first)]).flatten()
    }

    /// Gives the ports `released(block, port)` names that release time (what the allocator this
    /// one replaces held in quarantine, and the ports of connections a reload ended), so that
    /// they wait out their quarantine here too; each block's free ring is put back in order:
    /// never released first, then the longest ago, on the wrapping clock as seen from `now` (the
    /// latest time there is). Control plane: O(ports log ports), allocates.
    pub fn hold(&mut self, now: u32, released: impl Fn(usize, u16) -> Option<u32>) {
        let (blocks, quiet, ring) = (&self.blocks, &mut self.quiet, &mut self.ring);
        for (bi, b) in blocks.iter().enumerate() {
            let len = usize::from(b.spec.len);
            for k in 0..len {
                if let Some(at) = released(bi, b.spec.first + k as u16) {
                    quiet[b.base + k] = Some(at);
                }
            }
            if len == 0 {
                continue;
            }
            let head = b.head as usize;
            let mut free: Vec<Free> = (0..b.free as usize).map(|k| ring[b.base + (head + k) % len]).collect();
            for f in &mut free {
                f.released = quiet[b.base + usize::from(f.port - b.spec.first)];
            }
            // Seconds since the release, larger first (as `quiet_since` counts them).
            free.sort_by_key(|f| {
                core::cmp::Reverse(f.released.map_or(i64::MAX, |r| i64::from(now.wrapping_sub(r) as i32)))
            });
            for (k, f) in free.into_iter().enumerate() {
                ring[b.base + (head + k) % len] = f;
            }
        }
    }

    /// Control plane: puts connections carried over from a previous allocator on their ports (a
    /// reconfiguration rebuilt the allocator, and each `(block, port, exclusive)` is still its
    /// connection's backend's): a free port is taken (`exclusive`: a UDP flow's, never shared), one
    /// in use takes one more connection if both are shareable (TCP). Counted as allocated or
    /// shared, so that `allocated + shared - released` stays the connections on the allocator's
    /// ports. The adopted ports leave the free rings in one pass a block: O(connections + ports).
    /// Returns how many were adopted; one that cannot be (outside its block, reserved, or not
    /// shareable) is skipped.
    pub fn adopt(&mut self, conns: &[(usize, u16, bool)]) -> usize {
        let mut touched = alloc::vec![false; self.blocks.len()];
        let mut adopted = 0;
        for &(block, port, exclusive) in conns {
            let Some(b) = self.blocks.get_mut(block) else { continue };
            if !b.spec.contains(port) {
                continue;
            }
            let i = b.base + usize::from(port - b.spec.first);
            match self.refs[i] {
                0 => {
                    self.refs[i] = 1;
                    self.exclusive[i] = exclusive;
                    b.in_use += 1;
                    touched[block] = true;
                    self.counters.allocated += 1;
                }
                r if r != RESERVED && r < MAX_PORT_CONNECTIONS && !exclusive && !self.exclusive[i] => {
                    self.refs[i] = r + 1;
                    self.counters.shared += 1;
                }
                _ => continue,
            }
            adopted += 1;
        }
        for (block, _) in touched.iter().enumerate().filter(|(_, &t)| t) {
            let b = &mut self.blocks[block];
            let (len, head) = (usize::from(b.spec.len), b.head as usize);
            // Compacted in place, in ring order: the k-th survivor moves to the k-th slot from the
            // head, never past where it was read.
            let mut kept = 0;
            for k in 0..b.free as usize {
                let f = self.ring[b.base + (head + k) % len];
                if self.refs[b.base + usize::from(f.port - b.spec.first)] == 0 {
                    self.ring[b.base + (head + kept) % len] = f;
                    kept += 1;
                }
            }
            b.free = kept as u32;
        }
        adopted
    }

    /// Block `i` as given to [`new`](Self::new).
    pub fn block(&self, i: usize) -> Option<PortBlock> {
        self.blocks.get(i).map(|b| b.spec)
    }

    /// The number of blocks.
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    /// The quarantine, in seconds.
    pub fn quarantine_secs(&self) -> u32 {
        self.quarantine
    }

    /// Connections on `port` of `block`: 0 if it is free (or outside the block, or the block is
    /// unknown), `u16::MAX` if it is reserved.
    pub fn connections(&self, block: usize, port: u16) -> u16 {
        match self.blocks.get(block) {
            Some(b) if b.spec.contains(port) => self.refs[b.base + usize::from(port - b.spec.first)],
            _ => 0,
        }
    }

    /// Ports of `block` with at least one connection (reserved ports are not counted); 0 for an
    /// unknown block.
    pub fn ports_in_use(&self, block: usize) -> u32 {
        self.blocks.get(block).map_or(0, |b| b.in_use)
    }

    /// Ports of `block` in its free ring, eligible now or still in quarantine; 0 for an unknown
    /// block. `ports_in_use + free + reserved` is the block's length.
    pub fn free(&self, block: usize) -> u32 {
        self.blocks.get(block).map_or(0, |b| b.free)
    }

    /// Ports of `block` taken out by [`reserve`](Self::reserve); 0 for an unknown block.
    pub fn reserved(&self, block: usize) -> u32 {
        self.blocks.get(block).map_or(0, |b| b.reserved)
    }

    /// What the allocator did since it was built.
    pub fn counters(&self) -> SnatCounters {
        self.counters
    }
}

/// Azure's default SNAT ports per backend instance for a pool of `pool_size` instances (the
/// "default port allocation" table of outbound connections): 1–50 → 1024, 51–100 → 512,
/// 101–200 → 256, 201–400 → 128, 401–800 → 64, 801–1000 → 32. `None` for an empty pool or one
/// larger than 1000 instances.
pub fn default_ports_per_backend(pool_size: usize) -> Option<u16> {
    match pool_size {
        0 => None,
        1..=50 => Some(1024),
        51..=100 => Some(512),
        101..=200 => Some(256),
        201..=400 => Some(128),
        401..=800 => Some(64),
        801..=1000 => Some(32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use std::collections::BTreeSet;

    fn one(first: u16, len: u16, quarantine: u32) -> SnatAllocator {
        SnatAllocator::new(&[PortBlock { address: 0, first, len }], quarantine).unwrap()
    }

    #[test]
    fn fresh_ports_come_in_port_order() {
        let mut a = one(2000, 4, 60);
        for p in 2000..2004 {
            assert_eq!(a.alloc(0, 0), Ok(p));
        }
        assert_eq!(a.ports_in_use(0), 4);
        assert_eq!(a.free(0), 0);
        assert_eq!(a.connections(0, 2001), 1);
    }

    #[test]
    fn fifo_and_quarantine() {
        let mut a = one(2000, 4, 60);
        let p0 = a.alloc(0, 0).unwrap();
        let p1 = a.alloc(0, 0).unwrap();
        assert_eq!((p0, p1), (2000, 2001));
        // Released at 10 and 20: eligible at 70 and 80, behind the never-used 2002 and 2003.
        a.release(0, p1, 10).unwrap();
        a.release(0, p0, 20).unwrap();
        assert_eq!(a.free(0), 4);
        assert_eq!(a.alloc(0, 100), Ok(2002), "older free ports first");
        assert_eq!(a.alloc(0, 100), Ok(2003));
        // Then the released ones, in release order, and only after their quarantine.
        assert_eq!(a.alloc(0, 69), Err(SnatError::Exhausted));
        assert_eq!(a.alloc(0, 70), Ok(p1));
        assert_eq!(a.alloc(0, 79), Err(SnatError::Exhausted));
        assert_eq!(a.alloc(0, 80), Ok(p0));
        assert_eq!(a.counters(), SnatCounters { allocated: 6, shared: 0, released: 2, exhausted: 2 });
    }

    #[test]
    fn quarantine_is_kept_across_the_clock_wrapping() {
        // Released 5 s before the clock wraps: quiet for 60 s, so until 54 s after.
        let mut a = one(2000, 1, 60);
        let p = a.alloc(0, u32::MAX - 10).unwrap();
        a.release(0, p, u32::MAX - 5).unwrap();
        assert_eq!(a.alloc(0, u32::MAX), Err(SnatError::Exhausted));
        assert_eq!(a.alloc(0, 53), Err(SnatError::Exhausted));
        assert_eq!(a.alloc(0, 54), Ok(p));
        // A shared TCP port too: after its release, sharing skips it for the quarantine.
        let mut a = one(2000, 1, 60);
        let p = a.alloc_shared(0, u32::MAX - 10, |_| true).unwrap();
        assert_eq!(a.alloc_shared(0, u32::MAX - 9, |_| true), Ok(p));
        a.release(0, p, u32::MAX - 5).unwrap();
        assert_eq!(a.alloc_shared(0, 53, |_| true), Err(SnatError::Exhausted));
        assert_eq!(a.alloc_shared(0, 54, |_| true), Ok(p));
        // A clock gone back holds a released port longer, never hands it out early.
        let mut a = one(2000, 1, 60);
        let p = a.alloc(0, 1000).unwrap();
        a.release(0, p, 1000).unwrap();
        assert_eq!(a.alloc(0, 990), Err(SnatError::Exhausted));
        assert_eq!(a.alloc(0, 1059), Err(SnatError::Exhausted));
        assert_eq!(a.alloc(0, 1060), Ok(p));
        // The longest quarantine is a day.
        let mut a = one(2000, 1, u32::MAX);
        let p = a.alloc(0, 0).unwrap();
        a.release(0, p, 5).unwrap();
        assert_eq!(a.alloc(0, 5 + MAX_QUARANTINE_SECS - 1), Err(SnatError::Exhausted));
        assert_eq!(a.alloc(0, 5 + MAX_QUARANTINE_SECS), Ok(p));
    }

    #[test]
    fn held_ports_wait_out_their_quarantine_in_release_order() {
        let mut a = one(2000, 4, 60);
        a.hold(100, |_, p| match p {
            2000 => Some(90),
            2001 => Some(50),
            _ => None,
        });
        assert_eq!(a.released_at(0, 2000), Some(90));
        // Never released first, then the longest ago: each once its quarantine is over.
        assert_eq!(a.alloc(0, 100), Ok(2002));
        assert_eq!(a.alloc(0, 100), Ok(2003));
        assert_eq!(a.alloc(0, 109), Err(SnatError::Exhausted));
        assert_eq!(a.alloc(0, 110), Ok(2001));
        assert_eq!(a.alloc(0, 149), Err(SnatError::Exhausted));
        assert_eq!(a.alloc(0, 150), Ok(2000));
    }

    #[test]
    fn exhaustion_is_counted_and_changes_nothing_else() {
        let mut a = one(5000, 3, 30);
        for _ in 0..3 {
            a.alloc(0, 0).unwrap();
        }
        let before = a.clone();
        assert_eq!(a.alloc(0, 0), Err(SnatError::Exhausted));
        assert_eq!(a.counters().exhausted, 1);
        let mut expect = before.clone();
        expect.counters.exhausted = 1;
        assert_eq!(a, expect);
        // A release brings a port back, once its quarantine is over.
        a.release(0, 5001, 100).unwrap();
        assert_eq!(a.alloc(0, 129), Err(SnatError::Exhausted));
        assert_eq!(a.counters().exhausted, 2);
        assert_eq!(a.alloc(0, 130), Ok(5001));
    }

    #[test]
    fn full_drain_never_hands_a_port_out_twice() {
        let mut a = one(10_000, 1000, 0);
        let mut seen = BTreeSet::new();
        for round in 0..3u32 {
            for _ in 0..1000 {
                let p = a.alloc(0, round).unwrap();
                assert!((10_000..11_000).contains(&p), "port {p} outside the block");
                assert!(seen.insert(p), "port {p} handed out twice in round {round}");
            }
            assert_eq!(a.alloc(0, round), Err(SnatError::Exhausted));
            assert_eq!(a.ports_in_use(0), 1000);
            // Release in a scrambled order; the next round gets them back in that order.
            let order: Vec<u16> = (0..1000u16).map(|k| 10_000 + (k * 7 + round as u16) % 1000).collect();
            for &p in &order {
                a.release(0, p, round).unwrap();
            }
            assert_eq!(a.free(0), 1000);
            assert_eq!(a.alloc(0, round), Ok(order[0]));
            assert_eq!(a.alloc(0, round), Ok(order[1]));
            a.release(0, order[0], round).unwrap();
            a.release(0, order[1], round).unwrap();
            // Ring is now order[2..] ++ [order[0], order[1]]; drain it in the next round.
            let ring: Vec<u16> = order[2..].iter().chain(&order[..2]).copied().collect();
            let mut check = a.clone();
            for &p in &ring {
                assert_eq!(check.alloc(0, round), Ok(p));
            }
            seen.clear();
        }
    }

    #[test]
    fn overlapping_blocks_are_refused() {
        let b = |address, first, len| PortBlock { address, first, len };
        assert_eq!(
            SnatAllocator::new(&[b(0, 2000, 100), b(1, 2000, 100), b(0, 2099, 10)], 0).unwrap_err(),
            SnatError::Overlap { a: 0, b: 2 }
        );
        // Contained in a longer block, given in any order.
        assert_eq!(
            SnatAllocator::new(&[b(0, 3000, 5), b(0, 1024, 5000), b(0, 2000, 10)], 0).unwrap_err(),
            SnatError::Overlap { a: 1, b: 2 }
        );
        assert_eq!(
            SnatAllocator::new(&[b(3, 4000, 1), b(3, 4000, 1)], 0).unwrap_err(),
            SnatError::Overlap { a: 0, b: 1 }
        );
        // Adjacent blocks, and the same ports on different addresses, are fine.
        let a = SnatAllocator::new(&[b(0, 2000, 100), b(0, 2100, 100), b(1, 2000, 100)], 0).unwrap();
        assert_eq!(a.blocks(), 3);
        assert_eq!(a.block(1), Some(b(0, 2100, 100)));
        assert_eq!(a.block(3), None);
        let mut none = SnatAllocator::new(&[], 0).unwrap();
        assert_eq!((none.blocks(), none.alloc(0, 0)), (0, Err(SnatError::UnknownBlock(0))));
    }

    #[test]
    fn malformed_blocks_are_refused() {
        let ok = PortBlock { address: 0, first: 1024, len: 1 };
        for (bad, what) in [
            (PortBlock { address: 0, first: 1023, len: 1 }, "below 1024"),
            (PortBlock { address: 0, first: 2000, len: 0 }, "empty"),
            (PortBlock { address: 0, first: 65535, len: 2 }, "past 65535"),
            (PortBlock { address: 0, first: 1024, len: u16::MAX }, "past 65535"),
        ] {
            assert_eq!(SnatAllocator::new(&[ok, bad], 0).unwrap_err(), SnatError::BadBlock { block: 1 }, "{what}");
        }
        // Exactly the whole range, and the very last port, are fine.
        assert!(SnatAllocator::new(&[PortBlock { address: 0, first: 1024, len: 64_512 }], 0).is_ok());
        let mut a = one(65535, 1, 0);
        assert_eq!(a.alloc(0, 0), Ok(65535));
        assert_eq!(a.alloc(0, 0), Err(SnatError::Exhausted));
    }

    #[test]
    fn bad_release_errors_and_changes_nothing() {
        let mut a = one(2000, 10, 60);
        a.alloc(0, 0).unwrap();
        let before = a.clone();
        assert_eq!(a.release(0, 2005, 1), Err(SnatError::NotAllocated { block: 0, port: 2005 }));
        assert_eq!(a.release(0, 1999, 1), Err(SnatError::NotAllocated { block: 0, port: 1999 }));
        assert_eq!(a.release(0, 2010, 1), Err(SnatError::NotAllocated { block: 0, port: 2010 }));
        assert_eq!(a.release(1, 2000, 1), Err(SnatError::UnknownBlock(1)));
        assert_eq!(a, before);
        // Double release.
        a.release(0, 2000, 1).unwrap();
        let before = a.clone();
        assert_eq!(a.release(0, 2000, 2), Err(SnatError::NotAllocated { block: 0, port: 2000 }));
        assert_eq!(a, before);
        assert_eq!(a.counters().released, 1);
    }

    #[test]
    fn unknown_blocks_are_refused_everywhere() {
        let mut a = one(2000, 10, 0);
        assert_eq!(a.alloc(7, 0), Err(SnatError::UnknownBlock(7)));
        assert_eq!(a.alloc_shared(7, 0, |_| true), Err(SnatError::UnknownBlock(7)));
        assert_eq!(a.reserve(7, 2000), Err(SnatError::UnknownBlock(7)));
        assert_eq!(a.release(7, 2000, 0), Err(SnatError::UnknownBlock(7)));
        assert_eq!(a.counters(), SnatCounters::default());
        assert_eq!((a.ports_in_use(7), a.free(7), a.reserved(7), a.connections(7, 2000)), (0, 0, 0, 0));
    }

    #[test]
    fn sharing_only_when_exhausted_and_only_usable_ports() {
        let mut a = one(3000, 4, 60);
        // Fresh ports first: the predicate is not even asked.
        for p in 3000..3004 {
            assert_eq!(a.alloc_shared(0, 0, |_| panic!("asked while fresh ports remain")), Ok(p));
        }
        assert_eq!(a.counters().shared, 0);
        // Exhausted: only 3002 is usable.
        let mut asked = vec![];
        let p = a.alloc_shared(0, 0, |p| {
            asked.push(p);
            p == 3002
        });
        assert_eq!(p, Ok(3002));
        assert_eq!(asked, [3000, 3001, 3002]);
        assert_eq!(a.connections(0, 3002), 2);
        assert_eq!(a.ports_in_use(0), 4);
        // Nothing usable: Exhausted, counted, no count moved.
        assert_eq!(a.alloc_shared(0, 0, |_| false), Err(SnatError::Exhausted));
        assert_eq!(a.counters(), SnatCounters { allocated: 4, shared: 1, released: 0, exhausted: 1 });
        assert_eq!((3000..3004).map(|p| a.connections(0, p)).collect::<Vec<_>>(), [1, 1, 2, 1]);
        // One connection on 3002 ends at 10: 3002 keeps one connection but is not shared before 70.
        a.release(0, 3002, 10).unwrap();
        assert_eq!(a.connections(0, 3002), 1);
        assert_eq!(a.free(0), 0);
        assert_eq!(a.alloc_shared(0, 69, |p| p == 3002), Err(SnatError::Exhausted));
        assert_eq!(a.alloc_shared(0, 70, |p| p == 3002), Ok(3002));
        // The cursor rotates: successive shares spread over the ports.
        let got: Vec<u16> = (0..4).map(|_| a.alloc_shared(0, 70, |_| true).unwrap()).collect();
        let distinct: BTreeSet<u16> = got.iter().copied().collect();
        assert_eq!(distinct.len(), 4, "{got:?}");
    }

    #[test]
    fn sharing_skips_free_and_quarantined_ports() {
        let mut a = one(3000, 3, 60);
        for _ in 0..3 {
            a.alloc_shared(0, 0, |_| true).unwrap();
        }
        // 3000 goes back to the ring (in quarantine): it must not be shared, it has no connection.
        a.release(0, 3000, 0).unwrap();
        let mut asked = vec![];
        assert_eq!(
            a.alloc_shared(0, 59, |p| {
                asked.push(p);
                false
            }),
            Err(SnatError::Exhausted)
        );
        asked.sort_unstable();
        assert_eq!(asked, [3001, 3002]);
        // After the quarantine the fresh port wins over sharing.
        assert_eq!(a.alloc_shared(0, 60, |_| true), Ok(3000));
        assert_eq!(a.connections(0, 3000), 1);
    }

    #[test]
    fn shared_port_returns_to_the_ring_with_its_last_connection() {
        let mut a = one(3000, 1, 0);
        let p = a.alloc_shared(0, 0, |_| true).unwrap();
        assert_eq!(a.alloc_shared(0, 0, |_| true), Ok(p));
        assert_eq!(a.alloc_shared(0, 0, |_| true), Ok(p));
        assert_eq!(a.connections(0, p), 3);
        a.release(0, p, 1).unwrap();
        a.release(0, p, 1).unwrap();
        assert_eq!(a.free(0), 0);
        a.release(0, p, 1).unwrap();
        assert_eq!((a.free(0), a.ports_in_use(0), a.connections(0, p)), (1, 0, 0));
        assert_eq!(a.release(0, p, 1), Err(SnatError::NotAllocated { block: 0, port: p }));
        assert_eq!(a.counters(), SnatCounters { allocated: 1, shared: 2, released: 3, exhausted: 0 });
    }

    #[test]
    fn shared_connections_stop_at_the_maximum() {
        let mut a = one(3000, 1, 0);
        a.alloc_shared(0, 0, |_| true).unwrap();
        for _ in 1..MAX_PORT_CONNECTIONS {
            a.alloc_shared(0, 0, |_| true).unwrap();
        }
        assert_eq!(a.connections(0, 3000), MAX_PORT_CONNECTIONS);
        assert_eq!(a.alloc_shared(0, 0, |_| true), Err(SnatError::Exhausted));
        a.release(0, 3000, 0).unwrap();
        assert_eq!(a.alloc_shared(0, 0, |_| true), Ok(3000));
    }

    #[test]
    fn a_port_from_alloc_is_never_shared() {
        let mut a = one(3000, 2, 0);
        let udp = a.alloc(0, 0).unwrap();
        let tcp = a.alloc_shared(0, 0, |_| true).unwrap();
        let mut asked = vec![];
        for _ in 0..4 {
            assert_eq!(
                a.alloc_shared(0, 0, |p| {
                    asked.push(p);
                    true
                }),
                Ok(tcp)
            );
        }
        assert!(!asked.contains(&udp), "the UDP flow's port was offered: {asked:?}");
        // Once released, the port is an ordinary free port again.
        a.release(0, udp, 0).unwrap();
        assert_eq!(a.alloc_shared(0, 0, |_| true), Ok(udp));
        assert_eq!(a.alloc_shared(0, 0, |p| p == udp), Ok(udp));
    }

    #[test]
    fn reserve_takes_a_port_out() {
        let mut a = one(4000, 5, 0);
        assert_eq!(a.reserve(0, 4002), Ok(()));
        assert_eq!(a.reserve(0, 4002), Err(SnatError::NotFree { block: 0, port: 4002 }));
        assert_eq!(a.reserve(0, 4005), Err(SnatError::NotFree { block: 0, port: 4005 }));
        assert_eq!((a.free(0), a.reserved(0), a.connections(0, 4002)), (4, 1, u16::MAX));
        let got: Vec<u16> = (0..4).map(|_| a.alloc(0, 0).unwrap()).collect();
        assert_eq!(got, [4000, 4001, 4003, 4004]);
        assert_eq!(a.alloc(0, 0), Err(SnatError::Exhausted));
        // Reserved ports are neither released nor shared, and in-use ports cannot be reserved.
        assert_eq!(a.release(0, 4002, 0), Err(SnatError::NotAllocated { block: 0, port: 4002 }));
        assert_eq!(a.reserve(0, 4003), Err(SnatError::NotFree { block: 0, port: 4003 }));
        let mut asked = vec![];
        for _ in 0..8 {
            let got = a.alloc_shared(0, 0, |p| {
                asked.push(p);
                true
            });
            assert_ne!(got, Ok(4002));
        }
        assert!(!asked.contains(&4002), "{asked:?}");
        assert_eq!(a.ports_in_use(0), 4);
    }

    #[test]
    fn adopt_carries_connections_over() {
        let mut a = one(4000, 6, 0);
        a.reserve(0, 4003).unwrap();
        // A UDP connection's port is its own; TCP connections may share one. What cannot be
        // adopted (a second connection on a UDP port, a reserved port, one outside) is skipped.
        let conns = [(0, 4001, true), (0, 4001, true), (0, 4001, false), (0, 4004, false), (0, 4004, false)];
        assert_eq!(a.adopt(&conns), 3);
        assert_eq!(a.adopt(&[(0, 4003, false), (0, 4006, false), (1, 4000, false)]), 0);
        assert_eq!((a.ports_in_use(0), a.free(0), a.connections(0, 4004)), (2, 3, 2));
        let c = a.counters();
        assert_eq!((c.allocated, c.shared, c.released), (2, 1, 0), "in use = allocated + shared - released");
        // The free ports keep their order; the adopted ones come back as their connections end.
        let got: Vec<u16> = (0..3).map(|_| a.alloc(0, 0).unwrap()).collect();
        assert_eq!(got, [4000, 4002, 4005]);
        assert_eq!(a.alloc(0, 0), Err(SnatError::Exhausted));
        a.release(0, 4001, 0).unwrap();
        a.release(0, 4004, 0).unwrap();
        assert_eq!(a.connections(0, 4004), 1);
        assert_eq!(a.alloc(0, 0), Ok(4001));
    }

    /// Adopting every port of a big block takes one pass, not one ring scan a port.
    #[test]
    fn adopt_is_linear() {
        let mut a = one(1024, 64000, 0);
        let conns: Vec<(usize, u16, bool)> = (0..64000u16).rev().map(|k| (0, 1024 + k, true)).collect();
        assert_eq!(a.adopt(&conns), 64000);
        assert_eq!((a.ports_in_use(0), a.free(0)), (64000, 0));
        assert_eq!(a.alloc(0, 0), Err(SnatError::Exhausted));
    }

    #[test]
    fn reserve_keeps_the_fifo_order_of_the_rest() {
        let mut a = one(4000, 6, 10);
        for _ in 0..6 {
            a.alloc(0, 0).unwrap();
        }
        for p in 4000..4006 {
            a.release(0, p, 0).unwrap();
        }
        for p in 4000..4004 {
            assert_eq!(a.alloc(0, 10), Ok(p));
        }
        // The ring wraps: 4004, 4005 at the end of its storage, then 4002, 4000, 4003 at the start.
        for (t, p) in [(1, 4002), (2, 4000), (3, 4003)] {
            a.release(0, p, t).unwrap();
        }
        a.reserve(0, 4005).unwrap();
        let got: Vec<u16> = (0..4).map(|_| a.alloc(0, 100).unwrap()).collect();
        assert_eq!(got, [4004, 4002, 4000, 4003]);
        assert_eq!(a.alloc(0, 100), Err(SnatError::Exhausted));
        assert_eq!((a.ports_in_use(0), a.free(0), a.reserved(0)), (5, 0, 1));
    }

    #[test]
    fn default_ports_per_backend_table() {
        let f = default_ports_per_backend;
        assert_eq!(f(0), None);
        assert_eq!((f(1), f(50), f(51)), (Some(1024), Some(1024), Some(512)));
        assert_eq!((f(100), f(101), f(200), f(201)), (Some(512), Some(256), Some(256), Some(128)));
        assert_eq!((f(400), f(401), f(800), f(801)), (Some(128), Some(64), Some(64), Some(32)));
        assert_eq!((f(1000), f(1001)), (Some(32), None));
        // The default split never lends more than an address holds.
        for n in 1..=1000 {
            assert!(n as u32 * u32::from(f(n).unwrap()) <= 64_512, "{n}");
        }
    }

    #[test]
    fn errors_display() {
        use std::string::ToString;
        assert_eq!(
            SnatError::Overlap { a: 1, b: 2 }.to_string(),
            "SNAT port blocks 1 and 2 overlap on the same address"
        );
        assert!(SnatError::BadBlock { block: 3 }.to_string().contains("block 3"));
    }
}

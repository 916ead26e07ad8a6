//! The connection-tracking table of one core: bounded, allocated once, never resized, no locks.
//!
//! Layout: buckets of [`BUCKET_SLOTS`] entries, each bucket led by a 16-bit signature per slot (0 =
//! empty), so that a lookup compares eight signatures in one 16-byte word before it touches a single
//! 48-byte entry. A flow may live in either of two buckets its hash selects (two choices: the new
//! flow goes to the emptier one), which lets the table run at 75% load with almost no bucket ever
//! full; when both are full, an expired entry is reused first, then the least recently seen one is
//! evicted, and the counters say which (`expired`, `evicted`). Memory stays fixed whatever the
//! traffic does.
//!
//! Burst lookups ([`FlowTable::lookup_burst`], and the MUX's burst) prefetch every packet's bucket first and only then
//! compare keys, so that a burst of 32 pays for its cache misses in parallel rather than one after
//! another; this is what keeps a hit in a 40-million-flow table close to a hit in a small one.

use alloc::vec::Vec;
use core::fmt;

use crate::wire::{FlowKey, IpVersion, TcpFlags};

/// Entries per bucket.
pub const BUCKET_SLOTS: usize = 8;
/// Idle timeout of a closing flow, so that the last ACKs and retransmissions still find it. The
/// table closes a flow on a FIN; its owner may keep it open until both sides have sent one (the
/// host agent does, with [`FlowTable::refresh`]; a MUX sees one direction only).
pub const CLOSING_TIMEOUT_SECS: u32 = 10;
/// The most a TCP flow that has seen only its SYN lives without another packet (as Linux's
/// conntrack keeps SYN_SENT): a handshake that never completes (a dead destination, a scan, a SYN
/// flood) holds a table slot, and an SNAT port, for this long, not for the rule's idle timeout.
pub const SYN_TIMEOUT_SECS: u32 = 120;

/// TCP state as the load balancer tracks it (it sees one direction; enough to expire flows well).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum TcpState {
    /// Not TCP (UDP, ICMP, other): only the idle timeout applies.
    #[default]
    Stateless = 0,
    /// A SYN created the flow.
    SynSeen = 1,
    /// Later segments seen.
    Established = 2,
    /// A FIN was seen (the owner may say both sides': see [`CLOSING_TIMEOUT_SECS`]): the flow
    /// expires after [`CLOSING_TIMEOUT_SECS`] of silence.
    Closing = 3,
}

/// A flow's idle timeout in the one byte a [`FlowEntry`] keeps for it: minutes (Azure's
/// `idleTimeoutInMinutes`) or seconds (`idleTimeoutInSeconds`, for tests and short-lived UDP
/// services, which cannot wait minutes). The high bit says which; the low seven bits hold the
/// count, 1..=127, so that [`IdleTimeout::seconds`] is a shift, a mask and a multiply, with no
/// branch on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct IdleTimeout(u8);

impl IdleTimeout {
    /// The high bit: the count is in seconds.
    const SECONDS: u8 = 0x80;

    /// Azure's default, 4 minutes.
    pub const DEFAULT: IdleTimeout = IdleTimeout(4);

    /// `minutes` minutes, if 1..=127 (what one byte holds; a configuration allows 4..=100).
    pub const fn from_minutes(minutes: u8) -> Option<Self> {
        if minutes >= 1 && minutes < Self::SECONDS {
            Some(IdleTimeout(minutes))
        } else {
            None
        }
    }

    /// `seconds` seconds, if 1..=127.
    pub const fn from_seconds(seconds: u8) -> Option<Self> {
        if seconds >= 1 && seconds < Self::SECONDS {
            Some(IdleTimeout(Self::SECONDS | seconds))
        } else {
            None
        }
    }

    /// The timeout in seconds: the count times 60 for minutes, times 1 for seconds (the unit is
    /// computed from the high bit, not chosen by a branch).
    #[inline(always)]
    pub const fn seconds(self) -> u32 {
        let count = (self.0 & !Self::SECONDS) as u32;
        let in_seconds = (self.0 >> 7) as u32;
        count * (60 - 59 * in_seconds)
    }

    /// The count of minutes, if the timeout was given in minutes (validation checks Azure's
    /// bounds on those).
    pub const fn minutes(self) -> Option<u8> {
        if self.0 & Self::SECONDS == 0 {
            Some(self.0)
        } else {
            None
        }
    }
}

impl Default for IdleTimeout {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.minutes() {
            Some(m) => write!(f, "{m} min"),
            None => write!(f, "{} s", self.seconds()),
        }
    }
}

/// The 5-tuple as stored: 38 bytes, no padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct FlowTuple {
    /// Source address (IPv4 in the first 4 bytes).
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// IP protocol.
    pub protocol: u8,
    /// 4 or 6.
    pub version: u8,
}

impl From<&FlowKey> for FlowTuple {
    #[inline(always)]
    fn from(k: &FlowKey) -> Self {
        FlowTuple {
            src: k.src_addr,
            dst: k.dst_addr,
            src_port: k.src_port,
            dst_port: k.dst_port,
            protocol: k.protocol,
            version: match k.ip_version {
                IpVersion::V4 => 4,
                IpVersion::V6 => 6,
            },
        }
    }
}

impl FlowTuple {
    /// Whether this is the tuple of `key`, compared field by field where the key lies (no tuple
    /// is built on the stack for the compare, which would be read back before its stores land).
    #[inline(always)]
    pub fn is_of(&self, key: &FlowKey) -> bool {
        self.src_port == key.src_port
            && self.dst_port == key.dst_port
            && self.protocol == key.protocol
            && self.version == key.ip_version as u8
            && self.src == key.src_addr
            && self.dst == key.dst_addr
    }
}

/// What a data path stores with each flow. The MUX stores a [`MuxFlow`] (4 bytes, so that an entry
/// stays at 48); the host agent stores its NAT binding.
pub trait FlowValue: Copy + Default {
    /// Whether entries the table removes on its own (expired on lookup, evicted on insert, reset by
    /// a RST) are kept for [`FlowTable::take_removed`], because the owner must release what they
    /// hold (an SNAT port, a paired entry). The MUX has nothing to release and pays nothing.
    const TRACK_REMOVALS: bool = false;
}

/// The MUX's flow value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct MuxFlow {
    /// Index of the backend (tunnel) chosen when the flow started, kept for the flow's life
    /// whatever the backend's health or later table rebuilds.
    pub backend: u16,
    /// The listener (rule, NAT rule or NAT pool on a VIP, protocol and port range) that took the
    /// connection, by a number the MUX gives each listener and keeps across reconfigurations.
    pub listener: u16,
}

impl FlowValue for MuxFlow {}

/// Removed entries kept for the owner (see [`FlowValue::TRACK_REMOVALS`]); one operation removes at
/// most one entry, so a few slots suffice when the owner drains after each operation.
const REMOVED_RING: usize = 4;

/// What the table remembers of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct FlowEntry<V = MuxFlow> {
    /// The flow.
    pub tuple: FlowTuple,
    /// What the data path stores with it.
    pub value: V,
    /// TCP state.
    pub state: TcpState,
    /// Idle timeout (the rule's `idleTimeoutInMinutes` or `idleTimeoutInSeconds`).
    pub idle: IdleTimeout,
    /// Last time a packet was seen, in the caller's seconds.
    pub last_seen: u32,
}

/// Counters of one table; they only ever grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowTableCounters {
    /// Lookups that found a live flow.
    pub hits: u64,
    /// Lookups that found none.
    pub misses: u64,
    /// Flows created.
    pub inserts: u64,
    /// Flows removed because they were idle past their timeout.
    pub expired: u64,
    /// Live flows evicted because their bucket was full (the table is too small for the load).
    pub evicted: u64,
    /// Flows removed by a RST.
    pub reset: u64,
    /// Removed entries the owner did not take in time (it must drain after each operation).
    pub removals_lost: u64,
}

/// Why a table cannot be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowTableError {
    /// Capacity 0, more than 32-bit slot numbers can name (3.2 billion flows), or more memory
    /// than the allocator can give.
    BadCapacity(usize),
}

impl fmt::Display for FlowTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlowTableError::BadCapacity(n) => write!(
                f,
                "a flow table for {n} flows cannot be allocated (the capacity must be at least 1, within 32-bit \
                 slot numbers and the memory available)"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for FlowTableError {}

#[derive(Clone)]
#[repr(C, align(64))]
struct Bucket<V> {
    /// Per slot: 0 if empty, else a 16-bit signature of the flow hash (never 0).
    sigs: [u16; BUCKET_SLOTS],
    /// Per slot: the second after which the flow has been idle too long (last seen + its timeout).
    /// Beside the signatures, in the same cache line: expiry checks, sweeps and the choice of a
    /// victim in a full bucket never read the entries themselves.
    deadlines: [u32; BUCKET_SLOTS],
    /// Moves on every change of `sigs` or `deadlines` (wrapping), so that a slot chosen for an
    /// insert ahead of time is known to be still the one `place` would choose.
    version: u16,
    entries: [FlowEntry<V>; BUCKET_SLOTS],
}

impl<V: FlowValue> Bucket<V> {
    fn empty() -> Self {
        Bucket {
            sigs: [0; BUCKET_SLOTS],
            deadlines: [0; BUCKET_SLOTS],
            version: 0,
            entries: [FlowEntry::default(); BUCKET_SLOTS],
        }
    }

    #[inline(always)]
    fn changed(&mut self) {
        changed(&mut self.version);
    }
}

/// Moves a bucket's version (a free function too, for where an entry of the bucket is borrowed).
#[inline(always)]
fn changed(version: &mut u16) {
    *version = version.wrapping_add(1);
}

/// The result of a lookup: where the flow lives, so that an update needs no second search. An entry
/// never moves while it lives, so a slot stays valid until the entry is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowSlot {
    bucket: u32,
    slot: u8,
}

impl FlowSlot {
    /// The slot as one number (bucket × 8 + slot), for storing in a flow value.
    #[inline(always)]
    pub fn to_index(self) -> u32 {
        self.bucket * BUCKET_SLOTS as u32 + u32::from(self.slot)
    }
    /// The slot of [`FlowSlot::to_index`].
    #[inline(always)]
    pub fn from_index(i: u32) -> Self {
        FlowSlot { bucket: i / BUCKET_SLOTS as u32, slot: (i % BUCKET_SLOTS as u32) as u8 }
    }
}

/// One core's flow table.
pub struct FlowTable<V = MuxFlow> {
    buckets: Vec<Bucket<V>>,
    /// `buckets.len()` as the multiplier of [`split`].
    n: u32,
    /// Live entries (kept as they come and go, so that a status page does not scan the table).
    live: usize,
    counters: FlowTableCounters,
    removed: [(FlowSlot, FlowEntry<V>); REMOVED_RING],
    removed_len: usize,
}

/// The two candidate buckets and the signature of a flow hash. Multiply-shift maps a hash onto any
/// bucket count (no rounding up to a power of two, which would cost up to 2x memory) using its high
/// bits; the second bucket comes from a bijective remix of the hash; the signature is the low 16
/// bits, made non-zero.
///
/// The remix must leave the second bucket independent of the signature. It multiplies the hash
/// with its halves swapped and keeps the product's high bits, which every bit of the hash reaches.
/// (A multiply's low bits depend only on the multiplicand's low bits: a remix that rotates them
/// to the top makes the second bucket a function of the signature's bits, so every flow of one
/// signature shares one second bucket, and a lookup there meets, on average, almost one entry of
/// another flow with its signature, each an extra read of an entry.)
#[inline(always)]
fn split(hash: u32, buckets: u32) -> (usize, usize, u16) {
    let remix = hash.rotate_left(16).wrapping_mul(0x9e37_79b1) ^ 0x85eb_ca6b;
    let b1 = ((u64::from(hash) * u64::from(buckets)) >> 32) as usize;
    let b2 = ((u64::from(remix) * u64::from(buckets)) >> 32) as usize;
    (b1, b2, (hash as u16) | 1)
}

/// Where a flow hash lives in a table: its two candidate buckets and its signature, computed once
/// per packet ([`FlowTable::probe`]) and used by the prefetches, the lookup and the insert of a
/// burst alike.
///
/// A probe belongs to the table that made it (the bucket count is part of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowProbe {
    b1: u32,
    b2: u32,
    sig: u16,
    /// Where [`FlowTable::prefetch_entry`] found an insert would go, if it looked.
    place: Option<PlaceHint>,
    /// The first slot whose signature matched when [`FlowTable::prefetch_entry`] looked (bucket
    /// `b1`'s slots 0-7, then `b2`'s 8-15), which a lookup compares first; `NO_CANDIDATE` if none.
    candidate: u8,
}

const NO_CANDIDATE: u8 = u8::MAX;
/// No slot, as a [`FlowSlot::to_index`]: above every slot's index (see [`MAX_BUCKETS`]).
const NO_SLOT: u32 = u32::MAX;
/// The most buckets a table has (536,870,911: 3.2 billion flows, 240 GB), so that every slot's
/// [`FlowSlot::to_index`] fits a `u32` below [`NO_SLOT`].
const MAX_BUCKETS: usize = (u32::MAX / BUCKET_SLOTS as u32) as usize;

impl FlowProbe {
    /// A placeholder for arrays of probes, to be overwritten by [`FlowTable::probe`] before use.
    pub(crate) const UNSET: FlowProbe = FlowProbe { b1: 0, b2: 0, sig: 1, place: None, candidate: NO_CANDIDATE };
}

/// A slot chosen for an insert ahead of time, with the versions of the two buckets then, so that
/// the insert takes it without choosing again if neither bucket has changed since (then `place`
/// would choose the same slot: it reads nothing else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PlaceHint {
    bucket: u32,
    slot: u8,
    full: bool,
    versions: (u16, u16),
}

/// Bit `i` set where `sigs[i] == sig` (one SSE2 compare on x86_64; see [`crate::simd`]).
#[inline(always)]
fn sig_mask(sigs: &[u16; BUCKET_SLOTS], sig: u16) -> u32 {
    crate::simd::eq_mask_u16x8(sigs, sig)
}

/// The TCP state of a flow not yet or no longer established after a segment without FIN: the first
/// segment after the SYN establishes it, and a SYN on a closing flow is a new connection on the
/// same 5-tuple (the client reused its port after the close), which gets the SYN timeout and then
/// the rule's idle timeout again, not the closing one. Out of line: an established flow's packets
/// never come here.
#[cold]
#[inline(never)]
fn opening(state: &mut TcpState, tcp_flags: u8) {
    match *state {
        TcpState::SynSeen if tcp_flags & TcpFlags::SYN == 0 => *state = TcpState::Established,
        TcpState::Closing if tcp_flags & (TcpFlags::SYN | TcpFlags::ACK) == TcpFlags::SYN => *state = TcpState::SynSeen,
        _ => {}
    }
}

/// The deadline of an entry last seen at `now` (see [`Bucket::deadlines`]).
#[inline(always)]
fn deadline(state: TcpState, idle: IdleTimeout, now: u32) -> u32 {
    let idle = idle.seconds();
    let limit = match state {
        TcpState::Closing => CLOSING_TIMEOUT_SECS,
        TcpState::SynSeen => idle.min(SYN_TIMEOUT_SECS),
        _ => idle,
    };
    now.wrapping_add(limit)
}

/// Whether `now` is past `deadline` (wrapping time: the clock may run for any length of time).
#[inline(always)]
fn past(deadline: u32, now: u32) -> bool {
    (now.wrapping_sub(deadline) as i32) > 0
}

impl<V: FlowValue> FlowTable<V> {
    /// Bytes a table for `flows` flows occupies: enough 8-slot buckets for the nominal capacity to
    /// fill them to 75% on average.
    pub fn memory_for(flows: usize) -> usize {
        Self::buckets_for(flows) * core::mem::size_of::<Bucket<V>>()
    }

    fn buckets_for(flows: usize) -> usize {
        (flows.saturating_mul(4) / 3).div_ceil(BUCKET_SLOTS).max(1)
    }

    /// Allocates a table for about `flows` concurrent flows. This is the only allocation it makes.
    pub fn with_capacity(flows: usize) -> Result<Self, FlowTableError> {
        Self::with_capacity_prepared(flows, |_, _| {})
    }

    /// [`FlowTable::with_capacity`], handing the table's memory to `prepare` (its address and
    /// length in bytes) after it is reserved and before it is first written, so that the caller can
    /// ask the OS for large pages there (`madvise(MADV_HUGEPAGE)`): a table of millions of flows on
    /// 4 KiB pages pays a TLB miss on nearly every lookup.
    pub fn with_capacity_prepared(
        flows: usize,
        prepare: impl FnOnce(*const u8, usize),
    ) -> Result<Self, FlowTableError> {
        let n = Self::buckets_for(flows);
        if flows == 0 || n > MAX_BUCKETS {
            return Err(FlowTableError::BadCapacity(flows));
        }
        // A capacity the machine cannot hold is an error, not an abort of the whole process.
        let mut buckets: Vec<Bucket<V>> = Vec::new();
        buckets.try_reserve_exact(n).map_err(|_| FlowTableError::BadCapacity(flows))?;
        let spare = buckets.spare_capacity_mut();
        prepare(spare.as_ptr().cast::<u8>(), core::mem::size_of_val(spare));
        buckets.resize(n, Bucket::empty());
        Ok(FlowTable {
            buckets,
            n: n as u32,
            live: 0,
            counters: FlowTableCounters::default(),
            removed: [(FlowSlot::default(), FlowEntry::default()); REMOVED_RING],
            removed_len: 0,
        })
    }

    /// Slots in the table.
    pub fn slots(&self) -> usize {
        self.buckets.len() * BUCKET_SLOTS
    }

    /// Counters.
    pub fn counters(&self) -> FlowTableCounters {
        self.counters
    }

    /// Finds a live flow; a flow found idle past its timeout is removed and counted as expired.
    #[inline]
    pub fn lookup(&mut self, tuple: &FlowTuple, hash: u32, now: u32) -> Option<FlowSlot> {
        let (b1, b2, sig) = split(hash, self.n);
        self.find(b1, b2, sig, tuple, now)
    }

    /// [`FlowTable::lookup`] for the flow of `key` (the key's 5-tuple, compared in place).
    #[inline]
    pub fn lookup_key(&mut self, key: &FlowKey, hash: u32, now: u32) -> Option<FlowSlot> {
        let p = self.probe(hash);
        self.lookup_probed(&p, key, now)
    }

    /// [`FlowTable::lookup_key`] at a probe already computed for the key's hash. Always inlined:
    /// the checks of what the middle pass saw are a few instructions, and out of line the call
    /// and its arguments cost more than they do; the full search stays out of line.
    #[inline(always)]
    pub fn lookup_probed(&mut self, p: &FlowProbe, key: &FlowKey, now: u32) -> Option<FlowSlot> {
        // Its three answers meet as one number, not as an `Option<FlowSlot>`: an aggregate from
        // three return paths meets in a stack slot, is stored and loaded back field by field, and
        // its slot is bounds-checked again by the caller (a slot of `i & 7` needs no check).
        let at = self.lookup_probed_index(p, key, now);
        (at != NO_SLOT).then(|| FlowSlot::from_index(at))
    }

    /// [`FlowTable::lookup_probed`] as a [`FlowSlot::to_index`], `NO_SLOT` for none.
    #[inline(always)]
    fn lookup_probed_index(&mut self, p: &FlowProbe, key: &FlowKey, now: u32) -> u32 {
        // The slot the middle pass of a burst saw match first: if it still holds this flow, that
        // is what the full search would find first too (a flow is in the table once).
        if p.candidate != NO_CANDIDATE {
            let (b, i) = if usize::from(p.candidate) < BUCKET_SLOTS {
                (p.b1 as usize, usize::from(p.candidate))
            } else {
                (p.b2 as usize, usize::from(p.candidate) - BUCKET_SLOTS)
            };
            let bucket = &self.buckets[b];
            if bucket.sigs[i] == p.sig && bucket.entries[i].tuple.is_of(key) {
                return self.found(b, i, now).map_or(NO_SLOT, FlowSlot::to_index);
            }
        } else if self.place_holds(p).is_some() {
            // The middle pass saw no signature match, and chose where an insert goes: if neither
            // bucket has changed since (their signatures move only with their versions), the
            // search would find nothing either. A new flow's lookup costs two compares.
            self.counters.misses += 1;
            return NO_SLOT;
        }
        self.search_key(p, key, now)
    }

    /// The full search of [`FlowTable::lookup_probed`], when what the middle pass saw no longer
    /// holds (or it did not look).
    #[inline(never)]
    fn search_key(&mut self, p: &FlowProbe, key: &FlowKey, now: u32) -> u32 {
        self.find_by(p.b1 as usize, p.b2 as usize, p.sig, |t| t.is_of(key), now).map_or(NO_SLOT, FlowSlot::to_index)
    }

    /// The slot `prefetch_entry` chose for an insert at `p`, if neither bucket has changed since.
    #[inline(always)]
    fn place_holds(&self, p: &FlowProbe) -> Option<PlaceHint> {
        let versions = (self.buckets[p.b1 as usize].version, self.buckets[p.b2 as usize].version);
        p.place.filter(|h| h.versions == versions)
    }

    /// The buckets and signature of flow hash `hash` in this table.
    #[inline(always)]
    pub fn probe(&self, hash: u32) -> FlowProbe {
        let (b1, b2, sig) = split(hash, self.n);
        FlowProbe { b1: b1 as u32, b2: b2 as u32, sig, place: None, candidate: NO_CANDIDATE }
    }

    #[inline(always)]
    fn find(&mut self, b1: usize, b2: usize, sig: u16, tuple: &FlowTuple, now: u32) -> Option<FlowSlot> {
        self.find_by(b1, b2, sig, |t| t == tuple, now)
    }

    #[inline(always)]
    fn find_by(
        &mut self,
        b1: usize,
        b2: usize,
        sig: u16,
        is_flow: impl Fn(&FlowTuple) -> bool,
        now: u32,
    ) -> Option<FlowSlot> {
        for b in [b1, b2] {
            let bucket = &mut self.buckets[b];
            // The slots whose signature matches, as a mask: which slot holds the flow is data,
            // not a branch per slot whose outcome the CPU would have to guess.
            let mut candidates = sig_mask(&bucket.sigs, sig);
            while candidates != 0 {
                let i = candidates.trailing_zeros() as usize;
                candidates &= candidates - 1;
                if is_flow(&bucket.entries[i].tuple) {
                    return self.found(b, i, now);
                }
            }
        }
        self.counters.misses += 1;
        None
    }

    /// A lookup found its flow at slot `i` of bucket `b`: a hit, or, idle past its timeout, removed
    /// and counted as expired.
    #[inline(always)]
    fn found(&mut self, b: usize, i: usize, now: u32) -> Option<FlowSlot> {
        let bucket = &mut self.buckets[b];
        if past(bucket.deadlines[i], now) {
            bucket.sigs[i] = 0;
            bucket.changed();
            self.live -= 1;
            let e = bucket.entries[i];
            self.counters.expired += 1;
            self.counters.misses += 1;
            self.keep_removed(FlowSlot { bucket: b as u32, slot: i as u8 }, &e);
            return None;
        }
        self.counters.hits += 1;
        Some(FlowSlot { bucket: b as u32, slot: i as u8 })
    }

    /// Starts loading the signature lines of both buckets of flow hash `hash` into the cache (see
    /// [`crate::prefetch`]), so that a lookup a few packets later finds them there: the second
    /// holds about a third of the flows, and a new flow's insert reads both.
    #[inline(always)]
    pub fn prefetch(&self, hash: u32) {
        self.prefetch_probe(&self.probe(hash));
    }

    /// [`FlowTable::prefetch`] at a probe already computed.
    #[inline(always)]
    pub fn prefetch_probe(&self, p: &FlowProbe) {
        crate::prefetch::prefetch(&self.buckets[p.b1 as usize].sigs);
        crate::prefetch::prefetch(&self.buckets[p.b2 as usize].sigs);
    }

    /// Once the lines [`FlowTable::prefetch_probe`] asked for have arrived: starts loading the entry
    /// that a lookup at probe `p` will compare first (its first signature match, remembered in `p`)
    /// or, when no signature matches, the slot an insert would take, for writing (remembered in `p`
    /// for the insert). A burst calls it for every packet
    /// between prefetching the buckets and steering: stores leave the core in order, so an insert
    /// whose entry line is not in the cache holds up every store after it, the next packets'
    /// included.
    ///
    /// Returns whether no signature matched: then the flow is not in the table (a new flow).
    #[inline(always)]
    pub fn prefetch_entry(&self, p: &mut FlowProbe, now: u32) -> bool {
        let (b1, b2, sig) = (p.b1 as usize, p.b2 as usize, p.sig);
        let m1 = sig_mask(&self.buckets[b1].sigs, sig);
        let m2 = sig_mask(&self.buckets[b2].sigs, sig);
        let e = if m1 != 0 {
            p.candidate = m1.trailing_zeros() as u8;
            &self.buckets[b1].entries[m1.trailing_zeros() as usize]
        } else if m2 != 0 {
            p.candidate = (BUCKET_SLOTS as u32 + m2.trailing_zeros()) as u8;
            &self.buckets[b2].entries[m2.trailing_zeros() as usize]
        } else {
            let (b, i, full) = self.place(b1, b2, now);
            let versions = (self.buckets[b1].version, self.buckets[b2].version);
            p.place = Some(PlaceHint { bucket: b as u32, slot: i as u8, full, versions });
            let e = &self.buckets[b].entries[i];
            // An entry may straddle two lines.
            crate::prefetch::prefetch_write(&e.tuple.src);
            crate::prefetch::prefetch_write(&e.last_seen);
            return true;
        };
        crate::prefetch::prefetch(&e.tuple.src);
        crate::prefetch::prefetch(&e.last_seen);
        false
    }

    /// Looks up a burst: `out[i]` gets the slot of `tuples[i]` (hash `hashes[i]`). The first bucket
    /// of every packet is prefetched before any key is compared, so the cache misses of a burst
    /// overlap instead of being paid one after another (what DPDK's bulk hash lookup does).
    pub fn lookup_burst(&mut self, tuples: &[FlowTuple], hashes: &[u32], now: u32, out: &mut [Option<FlowSlot>]) {
        let n = tuples.len().min(hashes.len()).min(out.len());
        for &h in &hashes[..n] {
            self.prefetch(h);
        }
        for j in 0..n {
            let (b1, b2, sig) = split(hashes[j], self.n);
            out[j] = self.find(b1, b2, sig, &tuples[j], now);
        }
    }

    /// Whether the table holds an entry for `tuple`, live or idle past its deadline but not yet
    /// removed (a sweep or a lookup removes it, and only then does its owner release what it
    /// holds: an SNAT port sharing it must not take the tuple before); changes nothing (not even
    /// counters).
    pub fn holds(&self, tuple: &FlowTuple, hash: u32) -> bool {
        let (b1, b2, sig) = split(hash, self.n);
        [b1, b2].iter().any(|&b| {
            let bucket = &self.buckets[b];
            (0..BUCKET_SLOTS).any(|i| bucket.sigs[i] == sig && bucket.entries[i].tuple == *tuple)
        })
    }

    /// Visits every live entry; those for which `keep` returns false are removed (control plane:
    /// a reconfiguration remapping or dropping what flows refer to).
    pub fn retain(&mut self, mut keep: impl FnMut(&mut FlowEntry<V>) -> bool) {
        for b in &mut self.buckets {
            for i in 0..BUCKET_SLOTS {
                if b.sigs[i] != 0 && !keep(&mut b.entries[i]) {
                    b.sigs[i] = 0;
                    b.changed();
                    self.live -= 1;
                }
            }
        }
    }

    /// The entry at a slot returned by a lookup or insert.
    #[inline(always)]
    pub fn entry(&self, at: FlowSlot) -> &FlowEntry<V> {
        &self.buckets[at.bucket as usize].entries[usize::from(at.slot)]
    }

    /// The entry at a slot, to update its value (the key and timers stay the table's).
    #[inline(always)]
    pub fn value_mut(&mut self, at: FlowSlot) -> &mut V {
        &mut self.buckets[at.bucket as usize].entries[usize::from(at.slot)].value
    }

    /// The live entry at `at`, if the slot is in range and holds one.
    pub fn live(&self, at: FlowSlot) -> Option<&FlowEntry<V>> {
        let b = self.buckets.get(at.bucket as usize)?;
        let i = usize::from(at.slot);
        (i < BUCKET_SLOTS && b.sigs[i] != 0).then(|| &b.entries[i])
    }

    /// Marks an entry seen at `now` in TCP state `state`, without any TCP processing of its own:
    /// the paired entry of a connection whose other direction just carried a packet, which takes
    /// that entry's state (one connection, one state and one idle timer: a SYN that opens a closing
    /// connection again opens both), or an entry its owner keeps open (half closed). An empty
    /// slot's deadline changes, which nothing reads.
    #[inline(always)]
    pub fn refresh(&mut self, at: FlowSlot, state: TcpState, now: u32) {
        if let Some(b) = self.buckets.get_mut(at.bucket as usize) {
            let i = usize::from(at.slot);
            if let Some(e) = b.entries.get_mut(i) {
                e.last_seen = now;
                e.state = state;
                b.deadlines[i] = deadline(e.state, e.idle, now);
                b.changed();
            }
        }
    }

    /// Removes the live entry at `at` (the owner's decision, e.g. the pair of a removed entry);
    /// returns it, or `None` if the slot holds none. Not kept for [`FlowTable::take_removed`].
    pub fn remove(&mut self, at: FlowSlot) -> Option<FlowEntry<V>> {
        let b = self.buckets.get_mut(at.bucket as usize)?;
        let i = usize::from(at.slot);
        if i >= BUCKET_SLOTS || b.sigs[i] == 0 {
            return None;
        }
        b.sigs[i] = 0;
        b.changed();
        self.live -= 1;
        Some(b.entries[i])
    }

    /// Takes one entry the table removed on its own since the last call, with the slot it held
    /// (only with [`FlowValue::TRACK_REMOVALS`]). Drain it after every lookup, touch or insert.
    pub fn take_removed(&mut self) -> Option<(FlowSlot, FlowEntry<V>)> {
        if self.removed_len == 0 {
            return None;
        }
        self.removed_len -= 1;
        Some(self.removed[self.removed_len])
    }

    #[inline(always)]
    fn keep_removed(&mut self, at: FlowSlot, e: &FlowEntry<V>) {
        if V::TRACK_REMOVALS {
            if self.removed_len < REMOVED_RING {
                self.removed[self.removed_len] = (at, *e);
                self.removed_len += 1;
            } else {
                self.counters.removals_lost += 1;
            }
        }
    }

    /// Records a packet of a found flow: refreshes `last_seen` and follows TCP flags (a FIN moves to
    /// Closing, a RST removes the flow, a SYN on a closing flow opens it again). Returns the entry as
    /// it was before a RST removed it.
    #[inline]
    pub fn touch(&mut self, at: FlowSlot, tcp_flags: u8, now: u32) -> FlowEntry<V> {
        let bucket = &mut self.buckets[at.bucket as usize];
        let i = usize::from(at.slot);
        let e = &mut bucket.entries[i];
        e.last_seen = now;
        if e.tuple.protocol == crate::wire::ip_proto::TCP {
            if tcp_flags & TcpFlags::RST != 0 {
                if bucket.sigs[i] != 0 {
                    bucket.sigs[i] = 0;
                    changed(&mut bucket.version);
                    self.live -= 1;
                }
                self.counters.reset += 1;
                let e = *e;
                self.keep_removed(at, &e);
                return e;
            }
            // An established flow's packets take one compare here (and the idle timeout, without
            // the other states' cases); the rest are rare.
            bucket.deadlines[i] = if tcp_flags & TcpFlags::FIN != 0 {
                e.state = TcpState::Closing;
                now.wrapping_add(CLOSING_TIMEOUT_SECS)
            } else if e.state == TcpState::Established {
                now.wrapping_add(e.idle.seconds())
            } else {
                opening(&mut e.state, tcp_flags);
                deadline(e.state, e.idle, now)
            };
        } else {
            // Not TCP: stateless (said here rather than read from the entry, which keeps the
            // closing check out of the common path).
            bucket.deadlines[i] = deadline(TcpState::Stateless, e.idle, now);
        }
        changed(&mut bucket.version);
        *e
    }

    /// Where a new flow of buckets `b1`, `b2` goes: `(bucket, slot, both full)`. A free slot of the
    /// emptier bucket; when both are full, the entry nearest its deadline (an expired one if there
    /// is any), read from the two buckets' deadline lines alone.
    #[inline(always)]
    fn place(&self, b1: usize, b2: usize, now: u32) -> (usize, usize, bool) {
        let (e1, e2) = (sig_mask(&self.buckets[b1].sigs, 0), sig_mask(&self.buckets[b2].sigs, 0));
        if e1 | e2 != 0 {
            let (b, empty) = if e1.count_ones() >= e2.count_ones() { (b1, e1) } else { (b2, e2) };
            return (b, empty.trailing_zeros() as usize, false);
        }
        // The smallest (seconds left before the deadline, negative once expired; then slot, b1's
        // first) as one number, so that the choice is a minimum (conditional moves) and not a
        // branch per slot whose outcome is a coin toss.
        let mut least = u64::MAX;
        for (j, b) in [b1, b2].into_iter().enumerate() {
            for (i, &d) in self.buckets[b].deadlines.iter().enumerate() {
                let left = d.wrapping_sub(now) as i32;
                // Flipping the sign bit orders i32 as u32.
                let key = u64::from((left as u32) ^ 0x8000_0000) << 8 | (j * BUCKET_SLOTS + i) as u64;
                least = least.min(key);
            }
        }
        let at = (least & 0xff) as usize;
        if at < BUCKET_SLOTS {
            (b1, at, true)
        } else {
            (b2, at - BUCKET_SLOTS, true)
        }
    }

    /// Creates a flow (after a lookup missed) with `value` and an idle timeout of `idle`. Never fails: when both buckets are full, the entry nearest its
    /// idle deadline goes (an expired one first; else the one that would expire soonest, counted as
    /// evicted), and is kept for [`FlowTable::take_removed`].
    #[inline]
    pub fn insert(
        &mut self,
        tuple: &FlowTuple,
        hash: u32,
        tcp_flags: u8,
        value: V,
        idle: IdleTimeout,
        now: u32,
    ) -> FlowSlot {
        let p = self.probe(hash);
        self.insert_probed(&p, tuple, tcp_flags, value, idle, now)
    }

    /// [`FlowTable::insert`] at a probe already computed for the flow's hash.
    #[inline]
    pub fn insert_probed(
        &mut self,
        p: &FlowProbe,
        tuple: &FlowTuple,
        tcp_flags: u8,
        value: V,
        idle: IdleTimeout,
        now: u32,
    ) -> FlowSlot {
        let (b1, b2, sig) = (p.b1 as usize, p.b2 as usize, p.sig);
        // The slot chosen ahead (by `prefetch_entry`) if neither bucket has changed since: an
        // preceding packet of the burst may have taken that slot, freed another (RST), or moved a
        // deadline (refresh, FIN), and the victim must be the entry nearest its deadline.
        let (b, slot, full) = match self.place_holds(p) {
            Some(h) => (h.bucket as usize, usize::from(h.slot), h.full),
            None => self.place(b1, b2, now),
        };
        if full {
            if past(self.buckets[b].deadlines[slot], now) {
                self.counters.expired += 1;
            } else {
                self.counters.evicted += 1;
            }
            let e = self.buckets[b].entries[slot];
            self.keep_removed(FlowSlot { bucket: b as u32, slot: slot as u8 }, &e);
        } else {
            self.live += 1;
        }
        let bucket = &mut self.buckets[b];
        let state = if tuple.protocol != crate::wire::ip_proto::TCP {
            TcpState::Stateless
        } else if tcp_flags & TcpFlags::SYN != 0 {
            TcpState::SynSeen
        } else {
            // Mid-stream pickup (e.g. after a MUX failover): the flow is already established.
            TcpState::Established
        };
        bucket.sigs[slot] = sig;
        bucket.deadlines[slot] = deadline(state, idle, now);
        bucket.changed();
        bucket.entries[slot] = FlowEntry { tuple: *tuple, value, state, idle, last_seen: now };
        self.counters.inserts += 1;
        FlowSlot { bucket: b as u32, slot: slot as u8 }
    }

    /// Removes expired flows from up to `buckets` buckets starting at `cursor`; returns the next
    /// cursor. Call it from the poll loop's idle time to spread the work.
    pub fn sweep(&mut self, cursor: usize, buckets: usize, now: u32) -> usize {
        self.sweep_with(cursor, buckets, now, |_, _| {})
    }

    /// [`FlowTable::sweep`], handing each removed entry (and the slot it held) to `removed`, so that
    /// its owner can release what it held or tell its endpoints (TCP reset).
    pub fn sweep_with(
        &mut self,
        cursor: usize,
        buckets: usize,
        now: u32,
        mut removed: impl FnMut(FlowSlot, &FlowEntry<V>),
    ) -> usize {
        let n = self.buckets.len();
        let mut c = cursor % n;
        for _ in 0..buckets.min(n) {
            for i in 0..BUCKET_SLOTS {
                let bucket = &mut self.buckets[c];
                if bucket.sigs[i] != 0 && past(bucket.deadlines[i], now) {
                    bucket.sigs[i] = 0;
                    bucket.changed();
                    self.live -= 1;
                    self.counters.expired += 1;
                    let e = bucket.entries[i];
                    removed(FlowSlot { bucket: c as u32, slot: i as u8 }, &e);
                }
            }
            c = (c + 1) % n;
        }
        c
    }

    /// Live (non-empty) entries.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether the table holds no flow.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::maglev::mix64;
    use alloc::vec;

    #[test]
    fn lookup_by_key_finds_what_lookup_by_tuple_finds() {
        use crate::wire::{FlowKey, IpVersion};
        let mut t: FlowTable = FlowTable::with_capacity(1000).unwrap();
        for i in 0..500u64 {
            let (tp, h) = tuple(i);
            if i % 2 == 0 {
                t.insert(&tp, h, TcpFlags::SYN, MuxFlow { backend: i as u16, listener: 0 }, min(4), 0);
            }
        }
        for i in 0..500u64 {
            let (tp, h) = tuple(i);
            let key = FlowKey {
                src_addr: tp.src,
                dst_addr: tp.dst,
                src_port: tp.src_port,
                dst_port: tp.dst_port,
                protocol: tp.protocol,
                ip_version: IpVersion::V4,
                ..FlowKey::default()
            };
            assert!(tp.is_of(&key));
            let by_key = t.lookup_key(&key, h, 1);
            assert_eq!(by_key, t.lookup(&tp, h, 1), "flow {i}");
            assert_eq!(by_key.is_some(), i % 2 == 0, "flow {i}");
            // Any other field differing is another flow.
            assert!(!tp.is_of(&FlowKey { ip_version: IpVersion::V6, ..key }));
            assert!(!tp.is_of(&FlowKey { dst_port: key.dst_port ^ 1, ..key }));
            assert!(!tp.is_of(&FlowKey { protocol: 17, ..key }));
        }
    }

    #[test]
    fn live_count_follows_every_way_in_and_out() {
        let scan = |t: &FlowTable| t.buckets.iter().map(|b| b.sigs.iter().filter(|&&s| s != 0).count()).sum::<usize>();
        // Small enough that inserts evict; every way an entry leaves: expiry on lookup, RST,
        // remove, sweep, retain.
        let mut t: FlowTable = FlowTable::with_capacity(64).unwrap();
        let v = MuxFlow::default();
        for round in 0..2000u64 {
            let (tp, h) = tuple(round % 300);
            let now = (round / 10) as u32;
            match mix64(round) % 7 {
                0..=2 => {
                    if t.lookup(&tp, h, now).is_none() {
                        t.insert(&tp, h, TcpFlags::SYN, v, min(1), now);
                    }
                }
                3 => {
                    if let Some(at) = t.lookup(&tp, h, now) {
                        t.touch(at, TcpFlags::RST, now);
                    }
                }
                4 => {
                    if let Some(at) = t.lookup(&tp, h, now + 120) {
                        t.remove(at);
                    }
                }
                5 => {
                    t.sweep(round as usize, 4, now + 90);
                }
                _ => t.retain(|e| e.tuple.src_port % 5 != 0),
            }
            assert_eq!(t.len(), scan(&t), "round {round}");
        }
        assert!(t.counters().evicted + t.counters().expired > 0);
    }

    /// Flows of one signature must not share their second bucket: a lookup compares every entry
    /// whose signature matches, so a second bucket chosen by the signature's bits would fill with
    /// other flows of the same signature (see `split`).
    #[test]
    fn second_bucket_is_independent_of_the_signature() {
        let buckets = 100_003u32;
        for sig in [0x0001u32, 0x7fff, 0xbeef, 0xffff] {
            let mut seen = std::collections::BTreeSet::new();
            for high in 0..4096u32 {
                let (b1, b2, s) = split(high.wrapping_mul(0x0001_0003) << 16 | sig, buckets);
                assert_eq!(u32::from(s), sig | 1);
                assert!(b1 < buckets as usize && b2 < buckets as usize);
                seen.insert(b2);
            }
            // 4096 hashes over 100,003 buckets: about 4,013 distinct if the remix spreads them.
            assert!(seen.len() > 3900, "signature {sig:04x}: only {} distinct second buckets", seen.len());
        }
    }

    /// A slot chosen ahead of an insert (`prefetch_entry`, as a burst does before steering) is
    /// taken only if neither of its buckets has changed since: two new flows of one burst that were
    /// both given the same slot end up in two slots, a victim chosen for one is not chosen again for
    /// the other once the first took its place, and a slot freed in between is used.
    #[test]
    fn insert_takes_a_slot_chosen_ahead_only_while_it_is_unchanged() {
        let mut t: FlowTable = FlowTable::with_capacity(64).unwrap();
        // Hashes of one pair of distinct buckets (16 slots between them), each of its own signature.
        let pair = |h: u32| (t.probe(h).b1, t.probe(h).b2);
        let first = (0x1234_5678u32..).find(|&h| pair(h).0 != pair(h).1).unwrap();
        let mut sigs = std::collections::BTreeSet::new();
        let hashes: std::vec::Vec<u32> = (first..)
            .step_by(7919)
            .filter(|&h| pair(h) == pair(first) && sigs.insert(t.probe(h).sig))
            .take(20)
            .collect();
        let flows: std::vec::Vec<FlowTuple> = (0..20u64).map(|i| tuple(i).0).collect();
        let new = MuxFlow::default();
        // Empty buckets: two new flows are given the same free slot before either is inserted.
        let (mut pa, mut pb) = (t.probe(hashes[0]), t.probe(hashes[1]));
        assert!(t.prefetch_entry(&mut pa, 0) && t.prefetch_entry(&mut pb, 0));
        assert_eq!(pa.place.map(|p| (p.bucket, p.slot)), pb.place.map(|p| (p.bucket, p.slot)));
        let a = t.insert_probed(&pa, &flows[0], TcpFlags::SYN, new, min(4), 0);
        let b = t.insert_probed(&pb, &flows[1], TcpFlags::SYN, new, min(4), 0);
        assert_ne!(a, b, "the second insert overwrote the first");
        assert_eq!(t.len(), 2);
        // Fill both buckets, then two more new flows are given the same victim (flow 0, seen first).
        for i in 2..16 {
            t.insert(&flows[i], hashes[i], TcpFlags::SYN, new, min(4), i as u32);
        }
        assert_eq!(t.len(), 16);
        let (mut pc, mut pd) = (t.probe(hashes[16]), t.probe(hashes[17]));
        assert!(t.prefetch_entry(&mut pc, 100) && t.prefetch_entry(&mut pd, 100));
        assert!(pc.place.is_some_and(|p| p.full));
        assert_eq!(pc.place.map(|p| (p.bucket, p.slot)), pd.place.map(|p| (p.bucket, p.slot)));
        let c = t.insert_probed(&pc, &flows[16], TcpFlags::SYN, new, min(4), 100);
        let d = t.insert_probed(&pd, &flows[17], TcpFlags::SYN, new, min(4), 100);
        assert_ne!(c, d, "the second insert evicted the first");
        assert_eq!((t.len(), t.counters().evicted), (16, 2));
        // The two evicted are the two seen first; every other flow is still there.
        for (i, f) in flows.iter().enumerate().take(18) {
            assert_eq!(t.lookup(f, hashes[i], 100).is_some(), i >= 2, "flow {i}");
        }
        // A victim chosen ahead (flow 2, seen first of those left), then a RST frees another
        // slot before the insert: the insert takes the free slot and evicts nobody.
        let mut pe = t.probe(hashes[18]);
        assert!(t.prefetch_entry(&mut pe, 100) && pe.place.is_some_and(|p| p.full));
        let x = t.lookup(&flows[9], hashes[9], 100).unwrap();
        t.touch(x, TcpFlags::RST, 100);
        let e = t.insert_probed(&pe, &flows[18], TcpFlags::SYN, new, min(4), 100);
        assert_eq!(e, x, "the new flow takes the slot the RST freed");
        assert_eq!((t.len(), t.counters().evicted), (16, 2));
        assert!(t.lookup(&flows[2], hashes[2], 100).is_some(), "the victim chosen ahead is still there");
    }

    /// A lookup compares first the slot that matched when the burst's middle pass looked, and
    /// trusts it only if it still holds the flow: removed since, replaced by another flow of the
    /// same signature, or idle past its timeout, the lookup answers as the full search does.
    #[test]
    fn lookup_trusts_a_candidate_slot_only_while_it_holds_the_flow() {
        let mut t: FlowTable = FlowTable::with_capacity(64).unwrap();
        let h = 0x0bad_cafe;
        let (a, b) = (tuple(1).0, tuple(2).0);
        let new = MuxFlow::default();
        let at_a = t.insert(&a, h, TcpFlags::SYN, new, min(4), 0);
        // The middle pass sees a's slot match the signature.
        let mut p = t.probe(h);
        assert!(!t.prefetch_entry(&mut p, 0));
        assert_eq!(t.lookup_probed(&p, &key(&a), 0), Some(at_a));
        // b (same hash, so same signature) is not a: the lookup goes on and misses.
        assert_eq!(t.lookup_probed(&p, &key(&b), 0), None);
        // a removed: its bytes are still in the slot, but the slot is free.
        t.remove(at_a);
        assert_eq!(t.lookup_probed(&p, &key(&a), 0), None);
        // b inserted (it may take a's slot): the candidate now holds b.
        let at_b = t.insert(&b, h, TcpFlags::SYN, new, min(4), 0);
        assert_eq!(t.lookup_probed(&p, &key(&a), 0), None);
        assert_eq!(t.lookup_probed(&p, &key(&b), 0), Some(at_b));
        // Idle past its timeout (4 minutes): expired, not a hit.
        assert_eq!(t.lookup_probed(&p, &key(&b), 4 * 60 + 1), None);
        assert_eq!((t.len(), t.counters().expired), (0, 1));
    }

    /// A lookup after a middle pass that saw no signature match answers "miss" without searching,
    /// but only while neither bucket has changed: a flow of the same signature inserted since (an
    /// preceding packet of the burst opening the same connection) is found.
    #[test]
    fn lookup_trusts_a_miss_seen_ahead_only_while_the_buckets_are_unchanged() {
        let mut t: FlowTable = FlowTable::with_capacity(64).unwrap();
        let h = 0x0bad_cafe;
        let a = tuple(1).0;
        let mut p = t.probe(h);
        assert!(t.prefetch_entry(&mut p, 0), "nothing matches: a new flow");
        let misses = t.counters().misses;
        assert_eq!(t.lookup_probed(&p, &key(&a), 0), None);
        assert_eq!(t.counters().misses, misses + 1, "a miss, counted");
        // The same connection inserted by a preceding packet of the burst: found, not missed.
        let at = t.insert(&a, h, TcpFlags::SYN, MuxFlow::default(), min(4), 0);
        assert_eq!(t.lookup_probed(&p, &key(&a), 0), Some(at));
    }

    /// The flow key a packet of `t` has (what lookups compare with).
    fn key(t: &FlowTuple) -> FlowKey {
        FlowKey {
            src_addr: t.src,
            dst_addr: t.dst,
            src_port: t.src_port,
            dst_port: t.dst_port,
            protocol: t.protocol,
            ..FlowKey::default()
        }
    }

    fn tuple(i: u64) -> (FlowTuple, u32) {
        let x = mix64(i);
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&(x as u32).to_be_bytes());
        let t = FlowTuple {
            src,
            dst: [20, 50, 60, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            src_port: (x >> 32) as u16,
            dst_port: 80,
            protocol: 6,
            version: 4,
        };
        (t, (x >> 20) as u32)
    }

    const NEW: MuxFlow = MuxFlow { backend: 7, listener: 1 };

    #[test]
    fn prepare_sees_the_whole_table_before_it_is_written() {
        let mut seen = None;
        let t = FlowTable::<MuxFlow>::with_capacity_prepared(100_000, |p, len| seen = Some((p as usize, len))).unwrap();
        let (p, len) = seen.expect("prepare was called");
        assert_eq!(len, FlowTable::<MuxFlow>::memory_for(100_000));
        assert_eq!(p, t.buckets.as_ptr() as usize, "the memory the table then uses");
        assert!(t.is_empty());
    }

    #[test]
    fn layout_is_compact() {
        assert_eq!(core::mem::size_of::<FlowTuple>(), 38);
        assert_eq!(core::mem::size_of::<FlowEntry>(), 48);
        assert_eq!(
            core::mem::size_of::<Bucket<MuxFlow>>(),
            448,
            "16 B of signatures + 32 B of deadlines + 8 x 48 B, 64-byte aligned"
        );
        // 40 million concurrent flows a MUX (the size the module docs plan for): at most 3 GiB,
        // at most 80 bytes a flow.
        let bytes = FlowTable::<MuxFlow>::memory_for(40_000_000);
        assert!(bytes <= 3 << 30, "{bytes} bytes");
        assert!(bytes / 40_000_000 <= 80, "{} bytes a flow", bytes / 40_000_000);
    }

    #[test]
    fn syn_creates_fin_closes_rst_removes() {
        let mut t = FlowTable::<MuxFlow>::with_capacity(1000).unwrap();
        let (k, h) = tuple(1);
        assert_eq!(t.lookup(&k, h, 100), None);
        let at = t.insert(&k, h, TcpFlags::SYN, NEW, min(4), 100);
        assert_eq!(t.entry(at).state, TcpState::SynSeen);
        let at = t.lookup(&k, h, 101).unwrap();
        assert_eq!(t.entry(at).value.backend, 7);
        assert_eq!(t.touch(at, TcpFlags::ACK, 101).state, TcpState::Established);
        assert_eq!(t.touch(at, TcpFlags::FIN | TcpFlags::ACK, 102).state, TcpState::Closing);
        // Closing flows expire after CLOSING_TIMEOUT_SECS, not after the idle timeout.
        assert!(t.lookup(&k, h, 102 + CLOSING_TIMEOUT_SECS).is_some());
        assert_eq!(t.lookup(&k, h, 103 + CLOSING_TIMEOUT_SECS + 1), None);
        // A client that reuses the 5-tuple for a new connection while the old one is closing: its
        // SYN opens the flow again, with the rule's idle timeout (a retransmitted FIN's ACK does not).
        let at = t.insert(&k, h, TcpFlags::SYN, NEW, min(4), 150);
        t.touch(at, TcpFlags::FIN | TcpFlags::ACK, 151);
        assert_eq!(t.touch(at, TcpFlags::ACK, 152).state, TcpState::Closing);
        assert_eq!(t.touch(at, TcpFlags::SYN, 153).state, TcpState::SynSeen);
        assert_eq!(t.touch(at, TcpFlags::ACK, 154).state, TcpState::Established);
        assert!(t.lookup(&k, h, 154 + 4 * 60).is_some(), "the rule's idle timeout again");
        t.touch(at, TcpFlags::RST, 154 + 4 * 60);
        assert_eq!(t.counters().reset, 1);
        t.counters.reset = 0;
        assert_eq!(t.counters().expired, 1);
        let at = t.insert(&k, h, TcpFlags::SYN, NEW, min(4), 200);
        t.touch(at, TcpFlags::RST, 201);
        assert_eq!(t.lookup(&k, h, 201), None);
        assert_eq!(t.counters().reset, 1);
    }

    #[test]
    fn a_handshake_that_never_completes_times_out_first() {
        let mut t = FlowTable::<MuxFlow>::with_capacity(1000).unwrap();
        let (k, h) = tuple(3);
        // A SYN alone: SYN_TIMEOUT_SECS, not the rule's 30 minutes.
        t.insert(&k, h, TcpFlags::SYN, NEW, min(30), 0);
        assert!(t.lookup(&k, h, SYN_TIMEOUT_SECS).is_some());
        assert!(t.lookup(&k, h, SYN_TIMEOUT_SECS + 1).is_none());
        // Completed, the rule's idle timeout.
        let at = t.insert(&k, h, TcpFlags::SYN, NEW, min(30), 1000);
        t.touch(at, TcpFlags::ACK, 1001);
        assert!(t.lookup(&k, h, 1001 + 30 * 60).is_some());
        // A rule's idle timeout below it still applies (one in seconds, or of 1 minute).
        assert_eq!(deadline(TcpState::SynSeen, min(1), 0), 60);
    }

    /// An idle timeout of `m` minutes.
    fn min(m: u8) -> IdleTimeout {
        IdleTimeout::from_minutes(m).unwrap()
    }

    #[test]
    fn idle_timeout_holds_minutes_or_seconds_in_one_byte() {
        assert_eq!(core::mem::size_of::<IdleTimeout>(), 1);
        assert_eq!(IdleTimeout::default(), min(4));
        assert_eq!(IdleTimeout::default().seconds(), 240);
        for n in 1..=127u8 {
            let (m, s) = (min(n), IdleTimeout::from_seconds(n).unwrap());
            assert_eq!((m.seconds(), m.minutes()), (u32::from(n) * 60, Some(n)));
            assert_eq!((s.seconds(), s.minutes()), (u32::from(n), None));
        }
        for n in [0, 128, 255] {
            assert_eq!(IdleTimeout::from_minutes(n), None);
            assert_eq!(IdleTimeout::from_seconds(n), None);
        }
        assert_eq!(alloc::format!("{} {}", min(30), IdleTimeout::from_seconds(5).unwrap()), "30 min 5 s");
    }

    #[test]
    fn a_flow_with_a_5_second_idle_timeout_expires_after_5_seconds_and_not_before() {
        let mut t = FlowTable::<MuxFlow>::with_capacity(1000).unwrap();
        let five = IdleTimeout::from_seconds(5).unwrap();
        let (k, h) = tuple(4);
        let udp = FlowTuple { protocol: 17, ..k };
        t.insert(&udp, h, 0, NEW, five, 100);
        assert!(t.lookup(&udp, h, 105).is_some(), "idle exactly 5 s: still alive");
        assert!(t.lookup(&udp, h, 106).is_none(), "idle 6 s: gone");
        assert_eq!(t.counters().expired, 1);
        // TCP: the handshake and the established connection take the rule's 5 s too (below the
        // SYN timeout), and each packet starts the 5 s again.
        let at = t.insert(&k, h, TcpFlags::SYN, NEW, five, 200);
        assert!(t.lookup(&k, h, 205).is_some());
        t.touch(at, TcpFlags::ACK, 205);
        assert_eq!(t.entry(at).state, TcpState::Established);
        assert!(t.lookup(&k, h, 210).is_some(), "5 s after its last packet: still alive");
        assert!(t.lookup(&k, h, 211).is_none());
        assert_eq!(t.counters().expired, 2);
        // The sweep sees the same deadline.
        t.insert(&udp, h, 0, NEW, five, 300);
        t.sweep(0, usize::MAX, 305);
        assert_eq!(t.len(), 1);
        t.sweep(0, usize::MAX, 306);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn idle_timeout_per_rule() {
        let mut t = FlowTable::<MuxFlow>::with_capacity(1000).unwrap();
        let (k, h) = tuple(2);
        let udp = FlowTuple { protocol: 17, ..k };
        t.insert(&udp, h, 0, NEW, min(30), 0);
        assert!(t.lookup(&udp, h, 30 * 60).is_some(), "idle exactly the timeout: still alive");
        assert!(t.lookup(&udp, h, 30 * 60 + 30 * 60 + 1).is_none());
        assert_eq!(t.counters().expired, 1);
    }

    #[test]
    fn full_table_evicts_oldest_and_counts() {
        let mut t = FlowTable::<MuxFlow>::with_capacity(64).unwrap();
        let slots = t.slots();
        // Fill to twice the slots: every insert beyond a full bucket evicts, and says so.
        for i in 0..(2 * slots) as u64 {
            let (k, h) = tuple(i);
            t.insert(&k, h, TcpFlags::SYN, NEW, min(4), i as u32);
        }
        let c = t.counters();
        assert_eq!(c.inserts, 2 * slots as u64);
        assert!(c.evicted >= slots as u64 - 8 && c.evicted <= slots as u64, "{c:?}");
        assert_eq!(t.len() as u64, c.inserts - c.evicted);
        // The most recent flows survived; evictions took the oldest of each bucket.
        let (k, h) = tuple(2 * slots as u64 - 1);
        assert!(t.lookup(&k, h, 2 * slots as u32).is_some());
    }

    #[test]
    fn nominal_capacity_evicts_almost_nothing() {
        let n = 100_000;
        let mut t = FlowTable::<MuxFlow>::with_capacity(n).unwrap();
        for i in 0..n as u64 {
            let (k, h) = tuple(i);
            t.insert(&k, h, TcpFlags::SYN, NEW, min(4), 0);
        }
        // Two choices keep both buckets from being full at nominal (75%) load.
        assert!(t.counters().evicted * 10_000 <= n as u64, "{:?}", t.counters());
        let mut out = vec![None; 1000];
        let keys: Vec<_> = (0..1000u64).map(tuple).collect();
        let tuples: Vec<_> = keys.iter().map(|k| k.0).collect();
        let hashes: Vec<_> = keys.iter().map(|k| k.1).collect();
        t.lookup_burst(&tuples, &hashes, 1, &mut out);
        let found = out.iter().filter(|o| o.is_some()).count();
        assert!(found >= 999, "{found}");
        for (o, k) in out.iter().zip(&tuples) {
            if let Some(at) = o {
                assert_eq!(t.entry(*at).tuple, *k);
            }
        }
    }

    #[test]
    fn a_table_the_allocator_cannot_give_is_refused() {
        // 128 KiB values: a bucket of about 1 MiB, and the most buckets a table may have make
        // 2^49 bytes, more than a 64-bit process can address, so the reservation always fails
        // (whatever the OS's overcommit policy); the table says so instead of aborting. On a
        // thread of its own with a large stack: the table's code builds an empty bucket there.
        #[derive(Clone, Copy)]
        struct Big(#[allow(dead_code)] [u8; 1 << 17]);
        impl Default for Big {
            fn default() -> Self {
                Big([0; 1 << 17])
            }
        }
        impl FlowValue for Big {}
        let flows = MAX_BUCKETS * BUCKET_SLOTS * 3 / 4;
        assert_eq!(FlowTable::<Big>::buckets_for(flows), MAX_BUCKETS);
        let refused = std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || FlowTable::<Big>::with_capacity(flows).err())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(refused, Some(FlowTableError::BadCapacity(flows)));
    }

    #[test]
    fn sweep_expires_idle_flows() {
        let mut t = FlowTable::<MuxFlow>::with_capacity(1000).unwrap();
        for i in 0..500 {
            let (k, h) = tuple(i);
            t.insert(&k, h, 0, NEW, min(4), 0);
        }
        let n = t.slots() / BUCKET_SLOTS;
        let c = t.sweep(0, n, 4 * 60 + 1);
        assert_eq!(c, 0);
        assert_eq!(t.counters().expired, 500);
        assert!(t.is_empty());
        assert_eq!(FlowTable::<MuxFlow>::with_capacity(0).err(), Some(FlowTableError::BadCapacity(0)));
        assert!(std::string::ToString::to_string(&FlowTableError::BadCapacity(0)).contains("for 0 flows"));
        // 20 billion flows: more than 32-bit slot numbers can name, refused, not an abort.
        let huge = 20_000_000_000usize;
        assert_eq!(FlowTable::<MuxFlow>::with_capacity(huge).err(), Some(FlowTableError::BadCapacity(huge)));
        // One bucket more than 32-bit slot numbers can name: refused before any allocation; at
        // the limit the last slot's number is still below the one that means "none".
        let over = (MAX_BUCKETS + 1) * BUCKET_SLOTS * 3 / 4;
        assert_eq!(FlowTable::<MuxFlow>::buckets_for(over), MAX_BUCKETS + 1);
        assert_eq!(FlowTable::<MuxFlow>::with_capacity(over).err(), Some(FlowTableError::BadCapacity(over)));
        let last = FlowSlot { bucket: (MAX_BUCKETS - 1) as u32, slot: (BUCKET_SLOTS - 1) as u8 };
        assert!(last.to_index() < NO_SLOT);
        assert_eq!(FlowSlot::from_index(last.to_index()), last);
    }
}

//! SNAT port allocator against a shadow model kept with std collections: a few port blocks built
//! from the input (malformed or overlapping ones must be refused with the right error, never a
//! panic), then a sequence of operations, each checked against the model.
//!
//! Input layout (the op sequence stops at the first op whose arguments run past the end):
//!
//! | bytes      | meaning                                                                           |
//! |------------|-----------------------------------------------------------------------------------|
//! | 0          | number of blocks, modulo 5                                                        |
//! | 1          | quarantine: bits 6-7 pick 0, `b & 63`, `(b & 63) * 100` or `u32::MAX - (b & 63)` |
//! | 2..2+5n    | per block: flags, first (2 bytes BE), len (2 bytes BE). Flags bits 0-1: address; |
//! |            | bit 7 first as given (else `1016 + first % 512`: sometimes below 1024); bit 6 len |
//! |            | as given (else `len % 48`: sometimes 0)                                           |
//! | then       | ops: one opcode byte (`% 8`) and its arguments, see [`Op`]                        |
//!
//! Invariants: a fresh port had no connection in the model and is the model FIFO's eligible head;
//! every port handed out is in its block and was not released within the quarantine (seconds elapsed
//! on a clock that wraps around `u32::MAX`; the quarantine is at most a day); `usable` is
//! only asked about ports in use, past their quarantine, below the connection limit, at most
//! `SHARE_PROBES` of them, each once; a shared port is one `usable` accepted; refused operations
//! leave the allocator unchanged (compared with a clone taken before); counters, per-block
//! counts and every port's connection count equal the model's.
#![no_main]

use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write as _;

use lb_core::tables::{
    PortBlock, SnatAllocator, SnatCounters, SnatError, MAX_PORT_CONNECTIONS, MAX_QUARANTINE_SECS, SHARE_PROBES,
    SNAT_FIRST_PORT,
};
use libfuzzer_sys::fuzz_target;

/// Clone-and-compare refused operations only while the allocator is this small (cloning is O(ports)).
const CLONE_LIMIT: usize = 4096;

/// Opcodes (the opcode byte modulo 8) and their argument bytes.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// `alloc(block)`; 1 byte: block (modulo blocks + 1, so one index past the end).
    Alloc,
    /// `alloc_shared(block, usable)`; 2 bytes: block, mask deciding `usable`.
    AllocShared,
    /// `release` of a port the model says is in use; 2 bytes: block, which port.
    ReleaseInUse,
    /// `release` of any port; 3 bytes: block, port (2 bytes, mostly near the block).
    ReleaseAny,
    /// Time moves on by 0..=255 seconds; 1 byte.
    Tick,
    /// Time jumps by the byte × 4096 seconds, or to 300 s before `u32::MAX` if it is 255; 1 byte.
    Jump,
    /// `reserve(block, port)`; 3 bytes as `ReleaseAny`.
    Reserve,
    /// Time goes back by 0..=255 seconds (the allocator must stay consistent); 1 byte.
    Back,
}

const OPS: [Op; 8] =
    [Op::Alloc, Op::AllocShared, Op::ReleaseInUse, Op::ReleaseAny, Op::Tick, Op::Jump, Op::Reserve, Op::Back];

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.byte()?, self.byte()?]))
    }
}

/// The model of one block.
struct Model {
    spec: PortBlock,
    /// Free ports, oldest-freed first, with the time each is eligible again.
    fifo: VecDeque<(u16, Option<u32>)>,
    /// Per port: connections.
    refs: Vec<u16>,
    /// Per port: last release time; `None` if never released.
    quiet: Vec<Option<u32>>,
    /// The allocator's quarantine.
    quarantine: u32,
    reserved: BTreeSet<u16>,
    in_use: BTreeSet<u16>,
    /// Ports `alloc` handed out (never shared until released).
    exclusive: BTreeSet<u16>,
}

impl Model {
    fn idx(&self, port: u16) -> Option<usize> {
        self.spec.contains(port).then(|| usize::from(port - self.spec.first))
    }

    /// Whether `alloc_shared` may offer `port` to `usable` at `now`.
    fn shareable(&self, port: u16, now: u32) -> bool {
        self.idx(port).is_some_and(|i| {
            let r = self.refs[i];
            r != 0
                && r < MAX_PORT_CONNECTIONS
                && !self.reserved.contains(&port)
                && !self.exclusive.contains(&port)
                && quiet(self.quiet[i], self.quarantine, now)
        })
    }
}

fn valid(b: &PortBlock) -> bool {
    b.first >= SNAT_FIRST_PORT && b.len >= 1 && u32::from(b.first) + u32::from(b.len) - 1 <= 65535
}

fn overlap(x: &PortBlock, y: &PortBlock) -> bool {
    x.address == y.address
        && u32::from(x.first) < u32::from(y.first) + u32::from(y.len)
        && u32::from(y.first) < u32::from(x.first) + u32::from(x.len)
}

fn usable_for(mask: u8, port: u16) -> bool {
    (port.wrapping_mul(0x9e37) >> 8) as u8 & mask == 0
}

fn display(e: &SnatError) {
    let mut s = String::new();
    write!(s, "{e}").expect("Display for SnatError failed");
    assert!(!s.is_empty());
}

/// Runs `op` on `a` and checks its result against `expect`; a refused `op` must leave `a` as it was
/// (compared on a clone when `compare`: cloning is O(ports)).
fn checked(
    a: &mut SnatAllocator,
    compare: bool,
    expect: Result<(), SnatError>,
    (what, k, port): (&str, usize, u16),
    op: impl FnOnce(&mut SnatAllocator) -> Result<(), SnatError>,
) -> Result<(), SnatError> {
    let before = (expect.is_err() && compare).then(|| a.clone());
    let got = op(a);
    assert_eq!(got, expect, "{what} of port {port} in block {k}");
    if let Some(before) = before {
        assert!(*a == before, "a refused {what} changed the allocator");
    }
    got
}

/// Every observable of `a` against the model.
fn check_all(a: &SnatAllocator, models: &[Model], counters: &SnatCounters) {
    assert_eq!(a.counters(), *counters);
    assert_eq!(a.blocks(), models.len());
    for (k, m) in models.iter().enumerate() {
        check_block(a, k, m);
        for (i, &r) in m.refs.iter().enumerate() {
            let port = m.spec.first + i as u16;
            let expect = if m.reserved.contains(&port) { u16::MAX } else { r };
            assert_eq!(a.connections(k, port), expect, "block {k} port {port}");
        }
        // Outside the block: no connections.
        assert_eq!(a.connections(k, m.spec.first.wrapping_sub(1)), 0);
    }
    assert_eq!(a.block(models.len()), None);
    assert_eq!(a.ports_in_use(models.len()), 0);
}

fn check_block(a: &SnatAllocator, k: usize, m: &Model) {
    assert_eq!(a.block(k), Some(m.spec));
    assert_eq!(a.ports_in_use(k), m.in_use.len() as u32, "in use, block {k}");
    assert_eq!(a.free(k), m.fifo.len() as u32, "free, block {k}");
    assert_eq!(a.reserved(k), m.reserved.len() as u32, "reserved, block {k}");
    assert_eq!(m.in_use.len() + m.fifo.len() + m.reserved.len(), usize::from(m.spec.len));
}

fn pick_port(r: &mut Reader, spec: Option<PortBlock>) -> Option<u16> {
    let raw = r.u16()?;
    Some(match spec {
        Some(b) if raw & 0x8000 == 0 => {
            // Mostly in the block, sometimes just outside either end.
            let k = (raw as u32 % (u32::from(b.len) + 2)) as u16;
            (b.first - 1).wrapping_add(k)
        }
        _ => raw,
    })
}

/// Whether a port released at `released` is past its quarantine at `now`: the seconds elapsed
/// since, on a clock that wraps around `u32::MAX`, as a signed half range (a clock gone back holds
/// the port longer).
fn quiet(released: Option<u32>, quarantine: u32, now: u32) -> bool {
    released.is_none_or(|r| now.wrapping_sub(r) as i32 >= quarantine as i32)
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader(data);
    let (Some(n), Some(q)) = (r.byte(), r.byte()) else { return };
    let quarantine = match q >> 6 {
        0 => 0,
        1 => u32::from(q & 63),
        2 => u32::from(q & 63) * 100,
        _ => u32::MAX - u32::from(q & 63),
    };
    let mut specs = Vec::new();
    for _ in 0..n % 5 {
        let (Some(flags), Some(first), Some(len)) = (r.byte(), r.u16(), r.u16()) else { return };
        specs.push(PortBlock {
            address: u16::from(flags & 3),
            first: if flags & 0x80 != 0 { first } else { 1016 + first % 512 },
            len: if flags & 0x40 != 0 { len } else { len % 48 },
        });
    }

    // ---- Construction: the first malformed block, else some overlapping pair, else success.
    let built = SnatAllocator::new(&specs, quarantine);
    if let Some(bad) = specs.iter().position(|b| !valid(b)) {
        assert_eq!(built, Err(SnatError::BadBlock { block: bad }), "{specs:?}");
        display(&SnatError::BadBlock { block: bad });
        return;
    }
    let overlapping = (0..specs.len()).any(|i| (i + 1..specs.len()).any(|j| overlap(&specs[i], &specs[j])));
    if overlapping {
        let e = built.expect_err("overlapping blocks accepted");
        let SnatError::Overlap { a, b } = e else { panic!("{e:?} for overlapping blocks {specs:?}") };
        assert!(a < b && b < specs.len() && overlap(&specs[a], &specs[b]), "{e:?} for {specs:?}");
        display(&e);
        return;
    }
    let mut a = built.expect("well-formed disjoint blocks refused");
    // At most a day: times are compared by the seconds elapsed since, modulo 2^32.
    let quarantine = quarantine.min(MAX_QUARANTINE_SECS);
    assert_eq!(a.quarantine_secs(), quarantine);

    let mut models: Vec<Model> = specs
        .iter()
        .map(|&spec| Model {
            spec,
            fifo: (0..spec.len).map(|k| (spec.first + k, None)).collect(),
            refs: vec![0; usize::from(spec.len)],
            quiet: vec![None; usize::from(spec.len)],
            quarantine,
            reserved: BTreeSet::new(),
            in_use: BTreeSet::new(),
            exclusive: BTreeSet::new(),
        })
        .collect();
    let total: usize = specs.iter().map(|b| usize::from(b.len)).sum();
    let mut counters = SnatCounters::default();
    let mut now: u32 = 0;
    check_all(&a, &models, &counters);

    let nb = specs.len();
    for step in 0usize.. {
        // Also covers the ops that ended early with `continue`.
        assert_eq!(a.counters(), counters, "counters");
        let Some(code) = r.byte() else { break };
        let op = OPS[usize::from(code % 8)];
        let mut touched = None;
        match op {
            Op::Tick | Op::Jump | Op::Back => {
                let Some(b) = r.byte() else { break };
                now = match op {
                    // The clock wraps around u32::MAX (Jump gets near it).
                    Op::Tick => now.wrapping_add(u32::from(b)),
                    Op::Back => now.wrapping_sub(u32::from(b)),
                    _ if b == 255 => u32::MAX - 300,
                    _ => now.wrapping_add(u32::from(b) << 12),
                };
            }
            Op::Alloc => {
                let Some(k) = r.byte() else { break };
                let k = usize::from(k) % (nb + 1);
                let got = a.alloc(k, now);
                let Some(m) = models.get_mut(k) else {
                    assert_eq!(got, Err(SnatError::UnknownBlock(k)));
                    continue;
                };
                touched = Some(k);
                match m.fifo.front().copied() {
                    Some((port, at)) if quiet(at, quarantine, now) => {
                        assert_eq!(got, Ok(port), "FIFO head released at {at:?}, now {now}");
                        let i = m.idx(port).expect("model port outside its block");
                        assert_eq!(m.refs[i], 0, "fresh port {port} had connections");
                        assert!(quiet(m.quiet[i], quarantine, now), "port {port} back within its quarantine");
                        m.fifo.pop_front();
                        m.refs[i] = 1;
                        m.in_use.insert(port);
                        m.exclusive.insert(port);
                        counters.allocated += 1;
                    }
                    _ => {
                        assert_eq!(got, Err(SnatError::Exhausted));
                        counters.exhausted += 1;
                    }
                }
            }
            Op::AllocShared => {
                let (Some(k), Some(mask)) = (r.byte(), r.byte()) else { break };
                let k = usize::from(k) % (nb + 1);
                let mut asked = Vec::new();
                let got = {
                    let m = models.get(k);
                    a.alloc_shared(k, now, |port| {
                        let m = m.expect("usable asked about a port of an unknown block");
                        assert!(m.shareable(port, now), "usable asked about port {port}, which cannot be shared");
                        asked.push(port);
                        usable_for(mask, port)
                    })
                };
                let Some(m) = models.get_mut(k) else {
                    assert_eq!(got, Err(SnatError::UnknownBlock(k)));
                    continue;
                };
                touched = Some(k);
                assert!(asked.len() <= SHARE_PROBES, "asked about {} ports", asked.len());
                let distinct: BTreeSet<u16> = asked.iter().copied().collect();
                assert_eq!(distinct.len(), asked.len(), "asked twice: {asked:?}");
                match m.fifo.front().copied() {
                    Some((port, at)) if quiet(at, quarantine, now) => {
                        assert!(asked.is_empty(), "usable asked while a fresh port was eligible");
                        assert_eq!(got, Ok(port));
                        let i = m.idx(port).unwrap();
                        assert_eq!(m.refs[i], 0);
                        assert!(quiet(m.quiet[i], quarantine, now));
                        m.fifo.pop_front();
                        m.refs[i] = 1;
                        m.in_use.insert(port);
                        counters.allocated += 1;
                    }
                    _ => match got {
                        Ok(port) => {
                            assert_eq!(asked.last(), Some(&port), "shared a port usable was not asked about");
                            assert!(usable_for(mask, port), "shared port {port} that usable refused");
                            let i = m.idx(port).unwrap();
                            m.refs[i] += 1;
                            counters.shared += 1;
                        }
                        Err(e) => {
                            assert_eq!(e, SnatError::Exhausted);
                            counters.exhausted += 1;
                            assert!(asked.iter().all(|&p| !usable_for(mask, p)));
                            // A block no longer than the probe budget is scanned whole.
                            if usize::from(m.spec.len) <= SHARE_PROBES {
                                let candidate = (0..m.spec.len)
                                    .map(|o| m.spec.first + o)
                                    .find(|&p| m.shareable(p, now) && usable_for(mask, p));
                                assert_eq!(candidate, None, "a small block had a shareable port");
                            }
                        }
                    },
                }
            }
            Op::ReleaseInUse | Op::ReleaseAny => {
                let Some(k) = r.byte() else { break };
                let k = usize::from(k) % (nb + 1);
                let port = if let Op::ReleaseInUse = op {
                    let Some(which) = r.byte() else { break };
                    let Some(m) = models.get(k) else { continue };
                    let Some(&p) = m.in_use.iter().nth(usize::from(which) % m.in_use.len().max(1)) else { continue };
                    p
                } else {
                    let Some(p) = pick_port(&mut r, models.get(k).map(|m| m.spec)) else { break };
                    p
                };
                let expect = match models.get(k) {
                    None => Err(SnatError::UnknownBlock(k)),
                    Some(m) => match m.idx(port) {
                        Some(i) if m.refs[i] != 0 && !m.reserved.contains(&port) => Ok(()),
                        _ => Err(SnatError::NotAllocated { block: k, port }),
                    },
                };
                if matches!(op, Op::ReleaseInUse) {
                    assert_eq!(expect, Ok(()));
                }
                let got =
                    checked(&mut a, total <= CLONE_LIMIT, expect, ("release", k, port), |a| a.release(k, port, now));
                if let Err(e) = got {
                    display(&e);
                    continue;
                }
                let m = &mut models[k];
                touched = Some(k);
                let i = m.idx(port).unwrap();
                let at = Some(now);
                m.quiet[i] = at;
                m.refs[i] -= 1;
                if m.refs[i] == 0 {
                    m.fifo.push_back((port, at));
                    m.in_use.remove(&port);
                    m.exclusive.remove(&port);
                }
                counters.released += 1;
            }
            Op::Reserve => {
                let Some(k) = r.byte() else { break };
                let k = usize::from(k) % (nb + 1);
                let Some(port) = pick_port(&mut r, models.get(k).map(|m| m.spec)) else { break };
                let expect = match models.get(k) {
                    None => Err(SnatError::UnknownBlock(k)),
                    Some(m) => match m.idx(port) {
                        Some(i) if m.refs[i] == 0 && !m.reserved.contains(&port) => Ok(()),
                        _ => Err(SnatError::NotFree { block: k, port }),
                    },
                };
                let got = checked(&mut a, total <= CLONE_LIMIT, expect, ("reserve", k, port), |a| a.reserve(k, port));
                if let Err(e) = got {
                    display(&e);
                    continue;
                }
                let m = &mut models[k];
                touched = Some(k);
                m.fifo.retain(|&(p, _)| p != port);
                m.reserved.insert(port);
            }
        }
        assert_eq!(a.counters(), counters, "counters after {op:?}");
        if let Some(k) = touched {
            check_block(&a, k, &models[k]);
        }
        if step % 64 == 63 {
            check_all(&a, &models, &counters);
        }
    }
    check_all(&a, &models, &counters);
});

//! One lcore's data path: the MUX or the host agent of `lb-core`, behind one `process` call, with its
//! counters as a plain snapshot the status line and the metrics page read.

use std::net::IpAddr;

use lb_core::config::LoadBalancer;
use lb_core::paths::host::HostEgress;
use lb_core::paths::{DropReason, HostAgent, HostDrop, HostVerdict, Mux, Verdict};
use lb_core::tables::Health;

use crate::node::{NodeConfig, Role};
use crate::port::BurstFrame;
use crate::run::BURST;

/// What to do with a frame after processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Transmit `buf[start..start + len]`.
    Transmit { start: usize, len: usize },
    /// Hand `buf[start..start + len]` to local backend `backend` (host role; the pcap port writes it
    /// to the output too, the DPDK port sends it on the same port).
    Deliver { backend: usize, start: usize, len: usize },
    /// Dropped (the engine counted it).
    Drop,
}

/// A data path.
pub enum Engine {
    /// The MUX, and where its flow-table sweep goes on next.
    Mux(Box<Mux>, usize),
    /// The host agent.
    Host(Box<HostAgent>),
}

/// One backend's counters: (pool name, backend name, address, packets, new flows).
pub type BackendRow = (String, String, IpAddr, u64, u64);

/// Counters of one engine, summed over lcores for display.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames received.
    pub rx: u64,
    /// Frames sent (transmitted or delivered).
    pub tx: u64,
    /// Frames the port could not send (ring full), freed.
    pub tx_failed: u64,
    /// Nanoseconds the engine spent on received bursts (the data path alone: no polling, no I/O),
    /// so that `busy_ns / rx` is what a frame costs, as VPP's `show runtime` gives clocks a packet.
    pub busy_ns: u64,
    /// Drops by reason name.
    pub drops: Vec<(&'static str, u64)>,
    /// Per backend: (pool name, backend name, address, packets, new flows).
    pub backends: Vec<BackendRow>,
    /// MUX: whether each backend of `backends` takes new flows (its health probes' verdict); empty
    /// for a host agent, which does not steer by health.
    pub backends_up: Vec<bool>,
    /// Live flow-table entries.
    pub flows: u64,
    /// SNAT ports in use (host role).
    pub snat_ports: u64,
    /// TCP resets sent (host role).
    pub resets: u64,
}

impl Stats {
    /// Adds another lcore's counters.
    pub fn merge(&mut self, o: &Stats) {
        self.rx += o.rx;
        self.tx += o.tx;
        self.tx_failed += o.tx_failed;
        self.busy_ns += o.busy_ns;
        if self.drops.is_empty() {
            self.drops = o.drops.clone();
        } else {
            for (a, b) in self.drops.iter_mut().zip(&o.drops) {
                a.1 += b.1;
            }
        }
        // Rows meet by backend (pool, name, address), not by position: for a moment after a
        // reload, lcores that have applied it and lcores that have not yet hold different rows.
        // A row only one side has is added as it is.
        let same = |a: &BackendRow, b: &BackendRow| a.0 == b.0 && a.1 == b.1 && a.2 == b.2;
        for (i, b) in o.backends.iter().enumerate() {
            let up = o.backends_up.get(i).copied();
            let at = match self.backends.get(i) {
                Some(a) if same(a, b) => Some(i),
                _ => self.backends.iter().position(|a| same(a, b)),
            };
            match at {
                Some(j) => {
                    self.backends[j].3 += b.3;
                    self.backends[j].4 += b.4;
                    // Every lcore gets the same probe results; while one lags, the backend counts
                    // as down.
                    if let (Some(a), Some(up)) = (self.backends_up.get_mut(j), up) {
                        *a &= up;
                    }
                }
                None => {
                    self.backends.push(b.clone());
                    if let Some(up) = up {
                        self.backends_up.push(up);
                    }
                }
            }
        }
        self.flows += o.flows;
        self.snat_ports += o.snat_ports;
        self.resets += o.resets;
    }

    /// Total drops.
    pub fn dropped(&self) -> u64 {
        self.drops.iter().map(|d| d.1).sum()
    }

    /// The engine's nanoseconds a received frame since `before` (`None` if no frame came).
    pub fn ns_per_frame(&self, before: &Stats) -> Option<f64> {
        let frames = self.rx.checked_sub(before.rx).filter(|&f| f > 0)?;
        Some(self.busy_ns.saturating_sub(before.busy_ns) as f64 / frames as f64)
    }
}

impl Engine {
    /// Builds the engine a node file asks for.
    pub fn new(cfg: &NodeConfig) -> Result<Self, String> {
        match cfg.role {
            Role::Mux => Mux::with_flow_memory(cfg.mux.clone(), cfg.lb.clone(), lb_core::mem::huge_pages)
                .map(|m| Engine::Mux(Box::new(m), 0))
                .map_err(|e| e.to_string()),
            Role::Host => HostAgent::with_flow_memory(cfg.host.clone(), cfg.lb.clone(), lb_core::mem::huge_pages)
                .map(|h| Engine::Host(Box::new(h)))
                .map_err(|e| e.to_string()),
        }
    }

    /// Processes a burst of received frames where they lie, at time `now` (seconds): `out[i]` says
    /// what to do with `frames[i]` (`out` is as long as `frames`, at most [`BURST`]). The MUX takes
    /// the whole burst at once (parsing and prefetching every frame's flow before steering any).
    #[inline]
    pub fn process_burst(&mut self, frames: &mut [impl BurstFrame], now: u32, out: &mut [Action]) {
        match self {
            Engine::Mux(m, _) => {
                debug_assert!(frames.len() <= BURST, "a burst of {} frames", frames.len());
                let mut verdicts = [Verdict::Drop(DropReason::Malformed); BURST];
                let n = frames.len().min(out.len()).min(BURST);
                m.process_burst(&mut frames[..n], now, &mut verdicts[..n]);
                for (a, v) in out.iter_mut().zip(&verdicts[..n]) {
                    *a = match *v {
                        Verdict::Forward { start, len } => Action::Transmit { start, len },
                        Verdict::Drop(_) => Action::Drop,
                    };
                }
            }
            Engine::Host(h) => {
                for (f, a) in frames.iter_mut().zip(out.iter_mut()) {
                    let (buf, start, len) = f.parts();
                    // One port carries both sides of the host here.
                    *a = match h.from_either(buf, start, len, now) {
                        HostVerdict::Transmit { start, len } => Action::Transmit { start, len },
                        HostVerdict::Deliver { backend, start, len } => Action::Deliver { backend, start, len },
                        HostVerdict::Drop(_) => Action::Drop,
                    };
                }
            }
        }
    }

    /// Buckets of the flow table (what a full sweep visits).
    pub fn buckets(&mut self) -> usize {
        let slots = match self {
            Engine::Mux(m, _) => m.flows().slots(),
            Engine::Host(h) => h.flows().slots(),
        };
        slots / lb_core::tables::flow::BUCKET_SLOTS
    }

    /// Timers: flows idle past their timeout go (host: their SNAT ports are released and TCP resets
    /// sent, handed to `emit`). The poll loop calls it with a small `budget` of buckets, paced so
    /// that the whole table is covered every few seconds.
    pub fn tick(&mut self, now: u32, budget: usize, mut emit: impl FnMut(&[u8])) {
        match self {
            Engine::Mux(m, cursor) => *cursor = m.flows().sweep(*cursor, budget, now),
            Engine::Host(h) => h.expire(now, budget, |_to: HostEgress, frame| emit(frame)),
        }
    }

    /// Applies a new configuration; on error the running one stays.
    pub fn update(&mut self, lb: LoadBalancer) -> Result<(), String> {
        match self {
            Engine::Mux(m, _) => m.update(lb).map_err(|e| e.to_string()),
            Engine::Host(h) => h.update(lb).map_err(|e| e.to_string()),
        }
    }

    /// Records one probe result (MUX: the health state machine; host agents do not steer by
    /// health); [`Engine::apply_probes`] then rebuilds what changed.
    pub fn record_probe(&mut self, pool: usize, probe: usize, member: usize, up: bool) {
        if let Engine::Mux(m, _) = self {
            let _ = m.record_probe(pool, probe, member, up);
        }
    }

    /// Rebuilds the Maglev tables whose members' health the recorded results changed.
    pub fn apply_probes(&mut self) {
        if let Engine::Mux(m, _) = self {
            if let Err(e) = m.apply_probes() {
                eprintln!("lb-dpdk: a health change could not be applied: {e}");
            }
        }
    }

    /// The engine's counters.
    pub fn stats(&mut self) -> Stats {
        match self {
            Engine::Mux(m, _) => {
                let flows = m.flows().len() as u64;
                let (c, lb) = (m.counters(), m.config());
                let mut backends = Vec::new();
                let mut backends_up = Vec::new();
                for (pi, p) in lb.pools.iter().enumerate() {
                    for (bi, b) in p.backends.iter().enumerate() {
                        let t = c.backends.get(pi).and_then(|x| x.get(bi)).copied().unwrap_or_default();
                        backends.push((p.name.clone(), b.name.clone(), b.address, t.packets, t.new_flows));
                        backends_up.push(m.health(pi, bi) != Some(Health::Down));
                    }
                }
                let drops = DropReason::ALL.iter().map(|r| (r.name(), c.drops[*r as usize])).collect();
                Stats { drops, backends, backends_up, flows, ..Stats::default() }
            }
            Engine::Host(h) => {
                let c = h.counters().clone();
                let locals = h.local_backends().to_vec();
                let mut backends = Vec::new();
                let mut snat = 0;
                for (i, l) in locals.iter().enumerate() {
                    let t = c.backends.get(i).copied().unwrap_or_default();
                    let pool = &h.config().pools[l.pool];
                    backends.push((
                        pool.name.clone(),
                        pool.backends[l.member].name.clone(),
                        l.address,
                        t.packets,
                        t.new_flows,
                    ));
                    snat += u64::from(h.snat_ports_in_use(i));
                }
                let drops = HostDrop::ALL.iter().map(|r| (r.name(), c.drops[*r as usize])).collect();
                Stats {
                    drops,
                    backends,
                    flows: h.flows().len() as u64,
                    snat_ports: snat,
                    resets: c.resets,
                    ..Stats::default()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pool: &str, name: &str, last: u8, packets: u64) -> BackendRow {
        (pool.into(), name.into(), IpAddr::from([10, 0, 0, last]), packets, packets / 2)
    }

    #[test]
    fn lcores_merge_by_backend_even_while_a_reload_reaches_them() {
        // One lcore still runs the old pool [b1, b2]; the other has applied the new one, where b0
        // comes first and b2 is gone.
        let old = Stats {
            rx: 10,
            backends: vec![row("Web", "b1", 1, 6), row("Web", "b2", 2, 4)],
            backends_up: vec![true, true],
            ..Stats::default()
        };
        let new = Stats {
            rx: 5,
            backends: vec![row("Web", "b0", 9, 2), row("Web", "b1", 1, 3)],
            backends_up: vec![true, false],
            ..Stats::default()
        };
        let mut total = Stats::default();
        total.merge(&old);
        total.merge(&new);
        assert_eq!(total.rx, 15);
        assert_eq!(total.backends, vec![row("Web", "b1", 1, 9), row("Web", "b2", 2, 4), row("Web", "b0", 9, 2)]);
        // b1 keeps its old new-flow count added up too (3 + 1), and is down while one lcore says so.
        assert_eq!(total.backends[0].4, 4);
        assert_eq!(total.backends_up, vec![false, true, true]);
        // With the same rows everywhere, the merge adds row by row.
        let mut same = Stats::default();
        same.merge(&old);
        same.merge(&old);
        assert_eq!(same.backends, vec![row("Web", "b1", 1, 12), row("Web", "b2", 2, 8)]);
        assert_eq!(same.backends_up, vec![true, true]);
    }
}

//! A worker's counters as a plain snapshot, summed over workers for the status line, the metrics
//! page and the final report.

use std::collections::HashMap;
use std::net::IpAddr;

use lb_core::paths::node::NodeReport;
use lb_core::paths::Node;

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
    /// ICMP "fragmentation needed" / "packet too big" errors sent for packets that no longer fit the
    /// underlay after VxLAN.
    pub too_big: u64,
    /// Second chances given (MUX) or forwarded (host agent) to moved connections.
    pub second_chance: u64,
    /// SYNs that met a dead backend's flow and opened a new connection (MUX).
    pub syn_reopened: u64,
    /// Per listener (MUX) and per SNAT frontend address and backend (host agent): the rows of
    /// Azure Load Balancer's metrics on the metrics page.
    pub report: NodeReport,
    /// One worker's: the control plane's number of the configuration its engine runs (0: the
    /// one it started with). Not summed: [`Stats::merge`] leaves it as it is.
    pub generation: u64,
    /// One worker's: the last configuration it refused (its number) and why, if it runs an
    /// older one since. Not summed either.
    pub refused: Option<(u64, String)>,
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
        self.merge_backends(o);
        self.report.merge(&o.report);
        self.flows += o.flows;
        self.snat_ports += o.snat_ports;
        self.resets += o.resets;
        self.too_big += o.too_big;
        self.second_chance += o.second_chance;
        self.syn_reopened += o.syn_reopened;
    }

    /// Adds `o`'s backend rows. Rows meet by backend (pool, name, address), not by position: for
    /// a moment after a reload, lcores that have applied it and lcores that have not yet hold
    /// different rows. A row only one side has is added as it is. Linear in the rows (a node
    /// may have tens of thousands of backends, and the control loop merges every round).
    fn merge_backends(&mut self, o: &Stats) {
        if self.backends.is_empty() {
            self.backends.clone_from(&o.backends);
            self.backends_up.clone_from(&o.backends_up);
            return;
        }
        let same = |a: &BackendRow, b: &BackendRow| a.0 == b.0 && a.1 == b.1 && a.2 == b.2;
        let aligned =
            self.backends.len() == o.backends.len() && self.backends.iter().zip(&o.backends).all(|(a, b)| same(a, b));
        let mut index: HashMap<(String, String, IpAddr), usize> = if aligned {
            HashMap::new()
        } else {
            self.backends.iter().enumerate().map(|(i, r)| ((r.0.clone(), r.1.clone(), r.2), i)).collect()
        };
        for (i, b) in o.backends.iter().enumerate() {
            let up = o.backends_up.get(i).copied();
            let at = if aligned { Some(i) } else { index.get(&(b.0.clone(), b.1.clone(), b.2)).copied() };
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
                    index.insert((b.0.clone(), b.1.clone(), b.2), self.backends.len());
                    self.backends.push(b.clone());
                    if let Some(up) = up {
                        self.backends_up.push(up);
                    }
                }
            }
        }
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

impl Stats {
    /// The data path's own counters (the poll loop adds its I/O counters).
    pub fn of(node: &mut Node) -> Stats {
        let totals = node.totals();
        let drops = node.drops().map(|(cause, n)| (cause.name(), n)).collect();
        let mut backends = Vec::new();
        let mut backends_up = Vec::new();
        for b in node.backends() {
            backends.push((b.pool, b.backend, b.address, b.traffic.packets, b.traffic.new_flows));
            backends_up.extend(b.up);
        }
        Stats {
            drops,
            backends,
            backends_up,
            flows: totals.flows,
            snat_ports: totals.snat_ports_in_use,
            resets: totals.tcp_resets,
            too_big: totals.icmp_too_big,
            second_chance: totals.second_chance,
            syn_reopened: totals.syn_reopened,
            report: node.report(),
            ..Stats::default()
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

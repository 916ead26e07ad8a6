//! Idle timeouts: sweeps of the flow table remove idle connections (both entries), give their SNAT
//! ports back, and, for rules with TCP reset on idle (Azure Load Balancer's
//! <https://learn.microsoft.com/azure/load-balancer/load-balancer-tcp-reset>), send a RST to each
//! end with the sequence number it expects next.

use super::backend::Leg;
use super::{
    tuple_hash, HostAgent, HostDrop, HostEgress, HostFlow, HostFlowKind, HostVerdict, ACK_SEEN, NO_PEER, RESET,
    SEQ_SEEN,
};
use crate::tables::{FlowEntry, FlowSlot, TcpState};
use crate::wire::nat::TcpResetRepr;
use crate::wire::{ip_proto, IpVersion, MacAddr};

/// Headroom a frame the host agent builds (a RST) keeps for the tunnel.
const RST_HEADROOM: usize = 128;

impl HostAgent {
    /// Expires idle flows in up to `buckets` buckets of the flow table (call it from the poll loop
    /// with a small budget): ports go back to their blocks, and TCP connections of rules with
    /// `enableTcpReset` get a RST towards each end, handed to `emit` with where it goes.
    pub fn expire(&mut self, now: u32, buckets: usize, mut emit: impl FnMut(HostEgress, &[u8])) {
        let buckets = buckets.min(self.flows.slots() / crate::tables::flow::BUCKET_SLOTS);
        for _ in 0..buckets {
            let mut removed = [(FlowSlot::default(), FlowEntry::<HostFlow>::default()); 8];
            let mut n = 0;
            self.cursor = self.flows.sweep_with(self.cursor, 1, now, |slot, e| {
                removed[n] = (slot, *e);
                n += 1;
            });
            for i in 0..n {
                let (slot, e) = removed[i];
                if e.value.kind == HostFlowKind::None {
                    continue; // already handled as the pair of an earlier one
                }
                // The pair, if the same bucket held it (then it was swept too), else in the table.
                let mutual = |(s, p): &(FlowSlot, FlowEntry<HostFlow>)| {
                    s.to_index() == e.value.peer && p.value.peer == slot.to_index() && e.value.peer != NO_PEER
                };
                let peer = match removed[..n].iter().position(mutual) {
                    Some(j) => {
                        // Handed on as it was (its kind says where its reset goes), then marked.
                        let pair = removed[j].1;
                        removed[j].1.value.kind = HostFlowKind::None;
                        Some(pair)
                    }
                    None => self.take_peer(slot, &e),
                };
                self.release(&e, peer.as_ref(), now);
                if e.tuple.protocol == ip_proto::TCP && e.value.flags & RESET != 0 && e.state != TcpState::Closing {
                    self.reset_both(&e, peer.as_ref(), &mut emit);
                }
            }
            self.settle(now);
        }
    }

    /// A RST to the sender of each entry of a timed-out connection.
    fn reset_both(
        &mut self,
        a: &FlowEntry<HostFlow>,
        b: Option<&FlowEntry<HostFlow>>,
        emit: &mut impl FnMut(HostEgress, &[u8]),
    ) {
        for (e, other) in [(Some(a), b), (b, Some(a))] {
            let Some(e) = e else { continue };
            let (rst, to_backend) = self.reset_to_sender(e, other);
            let mut buf = [0u8; RST_HEADROOM + 128];
            let Ok(n) = rst.emit(&mut buf[RST_HEADROOM..]) else { continue };
            self.counters.resets += 1;
            if to_backend {
                emit(HostEgress::Backend(usize::from(e.value.local)), &buf[RST_HEADROOM..RST_HEADROOM + n]);
                continue;
            }
            let pool = self.locals.get(usize::from(e.value.local)).map_or(0, |l| l.pool);
            let hash = tuple_hash(&e.tuple, self.node.base.hash_seed);
            match self.egress(&mut buf, RST_HEADROOM, n, pool, hash, Leg::Reset) {
                HostVerdict::Transmit { start, len } => emit(HostEgress::Fabric, &buf[start..start + len]),
                HostVerdict::Drop(HostDrop::NoNextHop) => {
                    self.counters.resets -= 1;
                    self.counters.drops[HostDrop::NoNextHop as usize] += 1;
                }
                _ => self.counters.resets -= 1,
            }
        }
    }

    /// The RST to the sender of entry `e` (the pair's other entry `other`, if it is still known),
    /// and whether it goes to a local backend (else to the fabric).
    fn reset_to_sender(&self, e: &FlowEntry<HostFlow>, other: Option<&FlowEntry<HostFlow>>) -> (TcpResetRepr, bool) {
        // Exactly what the receiver expects next (RFC 5961 accepts such a RST at once): the other
        // side's next sequence number, else the last acknowledgment the receiver sent.
        let seq = match other.filter(|o| o.value.flags & SEQ_SEEN != 0) {
            Some(o) => o.value.seq,
            None if e.value.flags & ACK_SEEN != 0 => e.value.ack,
            None => 0,
        };
        let ack = (e.value.flags & SEQ_SEEN != 0).then_some(e.value.seq);
        let to_backend = matches!(e.value.kind, HostFlowKind::Response | HostFlowKind::SnatOut);
        let version = if e.tuple.version & 0x7f == 4 { IpVersion::V4 } else { IpVersion::V6 };
        let ip = |a: &[u8; 16]| crate::wire::flow::ip_of(version, a);
        let backend_link = self.locals.get(usize::from(e.value.local)).and_then(|l| l.link);
        let (dst_mac, vlan) = match (to_backend, backend_link) {
            (true, Some(link)) => link,
            (true, None) => (MacAddr([0xff; 6]), None),
            (false, _) => (self.node.base.gateway_mac, None),
        };
        let rst = TcpResetRepr {
            src_mac: self.node.base.mac,
            dst_mac,
            vlan,
            src: ip(&e.tuple.dst),
            dst: ip(&e.tuple.src),
            src_port: e.tuple.dst_port,
            dst_port: e.tuple.src_port,
            seq,
            ack,
        };
        (rst, to_backend)
    }
}

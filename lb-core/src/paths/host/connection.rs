//! A connection's two flow entries, one per direction, each naming the other's slot: inserting
//! them together, following a packet (one idle timer per connection, the sequence numbers a TCP
//! reset needs, FINs), and releasing what removed entries held.

use super::{tuple_hash, HostAgent, HostFlow, HostFlowKind, ACK_SEEN, FIN_SEEN, NO_PEER, REPLIED, SEQ_SEEN};
use crate::tables::flow::IdleTimeout;
use crate::tables::{FlowEntry, FlowSlot, FlowTuple, TcpState};
use crate::wire::{ip_proto, FlowKey, Fragment, TcpFlags};

impl HostAgent {
    /// Inserts both directions of a connection, each naming the other's slot; returns the first's,
    /// or `None` (nothing inserted, nothing held) if the second insert had to evict the first.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn insert_pair(
        &mut self,
        a: &FlowTuple,
        a_hash: u32,
        tcp_flags: u8,
        a_value: HostFlow,
        b: &FlowTuple,
        b_value: HostFlow,
        idle: IdleTimeout,
        now: u32,
    ) -> Option<FlowSlot> {
        self.settle(now);
        let sa = self.flows.insert(a, a_hash, tcp_flags, HostFlow { peer: NO_PEER, ..a_value }, idle, now);
        self.settle(now);
        let b_hash = tuple_hash(b, self.node.base.hash_seed);
        let b_flags = if tcp_flags & TcpFlags::SYN != 0 { TcpFlags::SYN } else { 0 };
        let sb = self.flows.insert(b, b_hash, b_flags, HostFlow { peer: sa.to_index(), ..b_value }, idle, now);
        // The second insert evicted the first (a full bucket pair): settling releases what the
        // first held (its SNAT port, once); the second goes too, without a second release.
        self.settle(now);
        if sb == sa || !self.flows.live(sa).is_some_and(|e| e.tuple == *a) {
            self.flows.remove(sb);
            return None;
        }
        self.flows.value_mut(sa).peer = sb.to_index();
        Some(sa)
    }

    /// After a packet of entry `slot`: refresh its pair (one idle timer per connection) and keep
    /// the sequence numbers a TCP reset will need.
    pub(super) fn follow(&mut self, slot: FlowSlot, e: &FlowEntry<HostFlow>, frame: &[u8], key: &FlowKey, now: u32) {
        let peer = e.value.peer;
        let mut state = e.state;
        // Only a SYN, a FIN or a closing connection has FIN bookkeeping to do: a data segment of
        // an established one goes straight to the refresh.
        let tcp = key.protocol == ip_proto::TCP && e.value.kind != HostFlowKind::Fragment;
        if tcp
            && (key.tcp_flags & (TcpFlags::SYN | TcpFlags::FIN) != 0 || state == TcpState::Closing)
            && self.flows.live(slot).is_some()
        {
            state = self.closing(slot, peer, state, key.tcp_flags, now);
        }
        if peer != NO_PEER {
            self.flows.refresh(FlowSlot::from_index(peer), state, now);
        }
        if key.protocol != ip_proto::TCP || key.fragment == Fragment::Later || self.flows.live(slot).is_none() {
            return;
        }
        let o = usize::from(key.l4_offset);
        let Some(h) = frame.get(o..o + 20) else { return };
        let seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let ack = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        let data = usize::from(key.l4_len).saturating_sub(usize::from(h[12] >> 4) * 4) as u32;
        let flags = h[13];
        // The next sequence number this sender uses: SYN and FIN take one each (RFC 9293, 3.4).
        let next = seq
            .wrapping_add(data)
            .wrapping_add(u32::from(flags & TcpFlags::SYN != 0))
            .wrapping_add(u32::from(flags & TcpFlags::FIN != 0));
        let v = self.flows.value_mut(slot);
        v.seq = next;
        v.flags |= SEQ_SEEN;
        if flags & TcpFlags::ACK != 0 {
            v.ack = ack;
            v.flags |= ACK_SEEN;
        }
    }

    /// The FIN bookkeeping of a live TCP entry at `slot` (state `state` after a segment with
    /// `tcp_flags`) and its pair's entry `peer`; returns the state the pair takes.
    fn closing(&mut self, slot: FlowSlot, peer: u32, state: TcpState, tcp_flags: u8, now: u32) -> TcpState {
        // The pair's other entry, if it names this one back (slots are reused).
        let other = (peer != NO_PEER)
            .then(|| self.flows.live(FlowSlot::from_index(peer)))
            .flatten()
            .filter(|p| p.value.peer == slot.to_index())
            .map(|p| p.value.flags);
        if state == TcpState::SynSeen && tcp_flags & TcpFlags::SYN != 0 {
            // A new connection on the 5-tuple (or its SYN-ACK): no side has closed it.
            self.flows.value_mut(slot).flags &= !FIN_SEEN;
            if other.is_some() {
                self.flows.value_mut(FlowSlot::from_index(peer)).flags &= !FIN_SEEN;
            }
        }
        if tcp_flags & (TcpFlags::FIN | TcpFlags::RST) == TcpFlags::FIN {
            self.flows.value_mut(slot).flags |= FIN_SEEN;
        }
        // A FIN closes one direction only: until the other side's, the connection is half closed
        // and that side may still send, for as long as its idle timeout (a server that thinks for
        // a minute after the client's request and FIN). The short closing timeout is for a
        // connection both sides have closed (or whose other side is gone).
        if state == TcpState::Closing && other.is_some_and(|f| f & FIN_SEEN == 0) {
            self.flows.refresh(slot, TcpState::Established, now);
            return TcpState::Established;
        }
        state
    }

    /// Releases what removed entries held: the pair's other entry, the SNAT port.
    pub(super) fn settle(&mut self, now: u32) {
        while let Some((at, e)) = self.flows.take_removed() {
            let peer = self.take_peer(at, &e);
            self.release(&e, peer.as_ref(), now);
        }
    }

    /// Removes and returns the other entry of the pair whose entry `e` was at `at`: the entry `e`
    /// names, provided it names `at` back (slots are reused, so only a mutual link is a pair).
    pub(super) fn take_peer(&mut self, at: FlowSlot, e: &FlowEntry<HostFlow>) -> Option<FlowEntry<HostFlow>> {
        if e.value.peer == NO_PEER {
            return None;
        }
        let p = FlowSlot::from_index(e.value.peer);
        if self.flows.live(p)?.value.peer != at.to_index() {
            return None;
        }
        self.flows.remove(p)
    }

    /// Releases the SNAT port a removed connection held (its pair `peer`, if it was still there,
    /// is gone with it); a connection no reply came back to is counted as pending.
    pub(super) fn release(&mut self, e: &FlowEntry<HostFlow>, peer: Option<&FlowEntry<HostFlow>>, now: u32) {
        if matches!(e.value.kind, HostFlowKind::SnatOut | HostFlowKind::SnatIn) {
            // Both entries carry the port; it is released once, with whichever goes first.
            let block = usize::from(e.value.block);
            let released = self.snat.release(block, e.value.port, now).is_ok();
            let replied = (e.value.flags | peer.map_or(0, |p| p.value.flags)) & REPLIED != 0;
            if released && !replied {
                if let Some(s) = self.snat_counter(block) {
                    s.pending += 1;
                }
            }
        }
    }
}

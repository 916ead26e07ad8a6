//! Packets that belong to a connection without carrying its ports, in both directions: later
//! fragments, translated by the record their first fragment left, and ICMP errors (fragmentation
//! needed, packet too big, unreachable), translated like the connection they quote, in the outer
//! header and in the quote, so that path MTU discovery works through the NAT.

use super::{tuple_hash, HostAgent, HostDrop, HostFlow, HostFlowKind, FLOATING, FRAG_SNAT, FRAG_SRC, NO_PEER};
use crate::paths::listen::fragment_record;
use crate::tables::flow::IdleTimeout;
use crate::tables::FlowTuple;
use crate::wire::flow::quoted_flow_key;
use crate::wire::nat::{rewrite, rewrite_quoted, Side};
use crate::wire::{FlowKey, Fragment};

impl HostAgent {
    /// An ICMP error about a packet of one of this host's connections (a router's "fragmentation
    /// needed" about a response, a backend's "port unreachable" about a request): found by the flow
    /// it quotes, reversed, and translated like that connection's packets, in the outer header and in
    /// the quote. `outer` is the side of the outer header this direction translates (`Dst` from the
    /// fabric, `Src` from a backend). Returns the local backend and whether the flow is SNAT.
    pub(super) fn icmp_error(
        &mut self,
        frame: &mut [u8],
        key: &FlowKey,
        outer: Side,
        now: u32,
    ) -> Result<(usize, bool), HostDrop> {
        let quoted = quoted_flow_key(frame, key).map_err(|_| HostDrop::Malformed)?;
        let t = FlowTuple::from(&quoted.reversed());
        let slot = self.flows.lookup(&t, tuple_hash(&t, self.node.base.hash_seed), now);
        self.settle(now);
        let v = slot.map(|s| self.flows.entry(s).value).ok_or(HostDrop::IcmpUntranslated)?;
        let local = usize::from(v.local);
        let l = self.locals.get(local).ok_or(HostDrop::UnknownBackend)?;
        let frontend = self.vips.get(usize::from(v.frontend)).map(|f| f.addr).ok_or(HostDrop::IcmpUntranslated)?;
        // (address, port) the quoted packet's other end gets, for each kind of entry.
        let (addr, port, snat) = match (outer, v.kind) {
            (Side::Dst, HostFlowKind::Inbound) if v.flags & FLOATING != 0 => (quoted.src_addr, v.port, false),
            (Side::Dst, HostFlowKind::Inbound) => (l.addr.1, v.port, false),
            (Side::Dst, HostFlowKind::SnatIn) => (l.addr.1, v.orig_port, true),
            (Side::Src, HostFlowKind::Response) => (frontend, v.port, false),
            (Side::Src, HostFlowKind::SnatOut) => (frontend, v.port, true),
            _ => return Err(HostDrop::IcmpUntranslated),
        };
        // The quote is a packet the other way: its source is our destination, and vice versa.
        let quoted_side = if outer == Side::Dst { Side::Src } else { Side::Dst };
        rewrite_quoted(frame, key, &quoted, quoted_side, &addr, port).map_err(|_| HostDrop::Malformed)?;
        rewrite(frame, key, outer, &addr, 0).map_err(|_| HostDrop::Malformed)?;
        Ok((local, snat))
    }

    /// A first fragment records the translation its later fragments need.
    pub(super) fn record_first_fragment(&mut self, key: &FlowKey, v: &HostFlow, side: Side, now: u32) {
        if key.fragment != Fragment::First {
            return;
        }
        // Whatever this packet's own lookup or touch removed is settled before an insert can evict
        // another entry (two removals of one pair before settling would release its port twice).
        self.settle(now);
        let (t, h) = fragment_record(key, self.node.base.hash_seed);
        let found = self.flows.lookup(&t, h, now);
        self.settle(now);
        let mut flags = v.flags & FLOATING;
        if side == Side::Src {
            flags |= FRAG_SRC;
        }
        if matches!(v.kind, HostFlowKind::SnatOut | HostFlowKind::SnatIn) {
            flags |= FRAG_SNAT;
        }
        let rec = HostFlow { kind: HostFlowKind::Fragment, flags, peer: NO_PEER, ..*v };
        match found {
            // The identification came round again (a sender numbers its datagrams to a destination
            // from one counter): the new datagram's later fragments follow the new first fragment.
            Some(at) => {
                *self.flows.value_mut(at) = rec;
                // And lives as long as a new record would.
                let state = self.flows.entry(at).state;
                self.flows.refresh(at, state, now);
            }
            None => {
                self.flows.insert(&t, h, 0, rec, const { IdleTimeout::from_minutes(1).unwrap() }, now);
            }
        }
        self.settle(now);
    }

    /// A later fragment: the address translation of its first fragment; returns the local backend
    /// and whether the datagram belongs to an SNAT connection.
    pub(super) fn later_fragment(
        &mut self,
        frame: &mut [u8],
        key: &FlowKey,
        now: u32,
    ) -> Result<(usize, bool), HostDrop> {
        let (t, h) = fragment_record(key, self.node.base.hash_seed);
        let at = self.flows.lookup(&t, h, now).ok_or(HostDrop::FragmentUnknown)?;
        let v = self.flows.touch(at, 0, now).value;
        let local = usize::from(v.local);
        let snat = v.flags & FRAG_SNAT != 0;
        let l = self.locals.get(local).ok_or(HostDrop::UnknownBackend)?;
        let (side, addr) = if v.flags & FRAG_SRC != 0 {
            (Side::Src, self.vips.get(usize::from(v.frontend)).ok_or(HostDrop::NoFlow)?.addr)
        } else if v.flags & FLOATING != 0 {
            return Ok((local, snat));
        } else {
            (Side::Dst, l.addr.1)
        };
        rewrite(frame, key, side, &addr, 0).map_err(|_| HostDrop::Malformed)?;
        Ok((local, snat))
    }
}

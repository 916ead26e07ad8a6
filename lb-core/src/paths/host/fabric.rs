//! From the fabric to a backend: a VxLAN frame from a MUX (RFC 7348) is decapsulated in place, its
//! VNI and backend tag checked, and its inner frame DNATed to the backend's address and port, or
//! delivered with the VIP untouched (floating IP). Replies to SNAT connections come this way too
//! and are translated back to the backend's own address and port.

use core::net::IpAddr;

use super::{
    HostAgent, HostDrop, HostFlow, HostFlowKind, HostVerdict, FLOATING, LOCAL_TARGET, NO_LOCAL, NO_PEER, REPLIED, RESET,
};
use crate::paths::listen::addr16;
use crate::tables::{FlowSlot, FlowTuple};
use crate::wire::nat::{rewrite, Side};
use crate::wire::vxlan::{decapsulate, stamp_backend_tag};
use crate::wire::{ip_proto, parse_flow_key, FlowKey, Fragment, TcpFlags};

/// Where a decapsulated frame lies in its buffer, and what its tunnel said.
#[derive(Clone, Copy)]
pub(super) struct Tunnel {
    outer_dst: IpAddr,
    at: usize,
    len: usize,
    vni: u32,
    tag: u32,
    /// The MUX flagged it for a second chance: `tag` names the alternate backend.
    second_chance: bool,
}

impl Tunnel {
    /// The inner frame of `d`, decapsulated from the frame at `start`.
    pub(super) fn of(start: usize, d: &crate::wire::VxlanDecap<'_>) -> Self {
        Tunnel {
            outer_dst: d.outer_dst,
            at: start + d.inner_offset,
            len: d.inner.len(),
            vni: d.vni,
            tag: d.backend_tag,
            second_chance: d.second_chance,
        }
    }
}

impl HostAgent {
    /// A frame from the fabric at `buf[start..start + len]` (a VxLAN frame from a MUX).
    pub fn from_fabric(&mut self, buf: &mut [u8], start: usize, len: usize, now: u32) -> HostVerdict {
        let v = self.fabric_frame(buf, start, len, now);
        self.settle(now);
        self.count(v)
    }

    fn fabric_frame(&mut self, buf: &mut [u8], start: usize, len: usize, now: u32) -> HostVerdict {
        let Some(frame) = start.checked_add(len).and_then(|end| buf.get(start..end)) else {
            return HostVerdict::Drop(HostDrop::Malformed);
        };
        let Ok(d) = decapsulate(frame) else {
            return HostVerdict::Drop(HostDrop::Malformed);
        };
        let t = Tunnel::of(start, &d);
        self.tunnelled(buf, t, now)
    }

    /// A decapsulated frame from the fabric: the inner frame lies at `buf[t.at..t.at + t.len]`.
    /// Packets that carry no ports of their own (later fragments, ICMP errors) are translated by
    /// the connection they belong to; the others by their flow, or they open one.
    pub(super) fn tunnelled(&mut self, buf: &mut [u8], t: Tunnel, now: u32) -> HostVerdict {
        if addr16(t.outer_dst) != self.underlay {
            return HostVerdict::Drop(HostDrop::NotForThisHost);
        }
        let inner = &mut buf[t.at..t.at + t.len];
        let Ok(key) = parse_flow_key(inner) else {
            return HostVerdict::Drop(HostDrop::Malformed);
        };
        let seed = self.node.base.hash_seed;
        if key.fragment == Fragment::Later {
            return match self.later_fragment(inner, &key, now) {
                Ok((local, snat)) => self.deliver(inner, local, t.at, snat),
                Err(d) => HostVerdict::Drop(d),
            };
        }
        if key.is_icmp_error() {
            return match self.icmp_error(inner, &key, Side::Dst, now) {
                Ok((local, snat)) => self.deliver(inner, local, t.at, snat),
                Err(d) => HostVerdict::Drop(d),
            };
        }
        let tuple = FlowTuple::from(&key);
        let hash = key.hash(seed);
        if let Some(slot) = self.flows.lookup(&tuple, hash, now) {
            return self.inbound_of_flow(slot, buf, &key, t, hash, now);
        }
        if t.second_chance && key.protocol == ip_proto::TCP && key.tcp_flags & TcpFlags::SYN == 0 {
            if let Some(v) = self.second_chance(buf, &key, &tuple, hash, t, now) {
                return v;
            }
        }
        let inner = &mut buf[t.at..t.at + t.len];
        self.open_inbound(inner, &key, tuple, hash, t, now)
    }

    /// A packet a MUX flagged for a second chance, of no connection of this host's, not a SYN: it
    /// belongs to the alternate backend the tag names (the one the MUX's previous Maglev table
    /// chose). If that backend runs on another host, the packet is forwarded there and a redirect
    /// entry forwards the connection's later packets too. `None` (the usual path) if the
    /// alternate runs here, or is unknown.
    #[cold]
    #[inline(never)]
    fn second_chance(
        &mut self,
        buf: &mut [u8],
        key: &FlowKey,
        tuple: &FlowTuple,
        hash: u32,
        t: Tunnel,
        now: u32,
    ) -> Option<HostVerdict> {
        let vip = self.vips.find(key.ip_version, &key.dst_addr)?;
        let listener = self.vips[vip].listener(key.protocol, key.dst_port)?;
        let delivery = listener.target.delivery(&self.lb, key.dst_port);
        let vni = self.lb.pools[delivery.pool].vni;
        if vni != t.vni {
            return None;
        }
        let target = self.targets.binary_search_by_key(&(vni, t.tag), |x| (x.0, x.1)).ok()?;
        if self.targets[target].2 == LOCAL_TARGET {
            return None;
        }
        let redirect = HostFlow {
            kind: HostFlowKind::Redirect,
            local: NO_LOCAL,
            frontend: vip as u16,
            block: target as u16,
            peer: NO_PEER,
            ..HostFlow::default()
        };
        self.flows.insert(tuple, hash, key.tcp_flags, redirect, delivery.idle, now);
        Some(self.redirect(buf, target as u16, t, hash))
    }

    /// Forwards the frame tunnelled in `t` to the host of second-chance target `target`: the outer
    /// headers are rewritten in place (the tunnel to that host, the same VNI, the target's tag, no
    /// flag, so it never comes back) and the frame goes back on the fabric.
    #[cold]
    #[inline(never)]
    fn redirect(&mut self, buf: &mut [u8], target: u16, t: Tunnel, hash: u32) -> HostVerdict {
        let Some(&(_, tag, at)) = self.targets.get(usize::from(target)) else {
            return HostVerdict::Drop(HostDrop::UnknownBackend);
        };
        let Some(tunnel) = self.hosts.get(usize::from(at)) else {
            return HostVerdict::Drop(HostDrop::UnknownBackend);
        };
        if !tunnel.has_next_hop() {
            return HostVerdict::Drop(HostDrop::NoNextHop);
        }
        let n = tunnel.outer_len();
        match tunnel.encapsulate(buf, t.at, t.len, hash) {
            Ok(start) if stamp_backend_tag(buf, start, n, tag) => {
                self.counters.second_chance.add(t.len, false);
                HostVerdict::Transmit { start, len: t.len + n }
            }
            _ => HostVerdict::Drop(HostDrop::Encap),
        }
    }

    /// A packet of the recorded flow at `slot`: a client's packet to the backend (DNAT, or the VIP
    /// kept with floating IP) or a remote's reply to an SNAT connection (back to the backend's own
    /// address and port).
    ///
    /// A redirect entry (a second chance, see [`HostAgent::second_chance`]) names no local backend:
    /// its packets go on to the host it names.
    fn inbound_of_flow(
        &mut self,
        slot: FlowSlot,
        buf: &mut [u8],
        key: &FlowKey,
        t: Tunnel,
        hash: u32,
        now: u32,
    ) -> HostVerdict {
        let inner = &mut buf[t.at..t.at + t.len];
        let e = self.flows.touch(slot, key.tcp_flags, now);
        self.follow(slot, &e, inner, key, now);
        let v = e.value;
        let local = usize::from(v.local);
        let Some(l) = self.locals.get(local) else {
            if v.kind == HostFlowKind::Redirect {
                return self.redirect(buf, v.block, t, hash);
            }
            return HostVerdict::Drop(HostDrop::UnknownBackend);
        };
        let (addr, port, snat) = match v.kind {
            HostFlowKind::Inbound if v.flags & FLOATING != 0 => (key.dst_addr, v.port, false),
            HostFlowKind::Inbound => (l.addr.1, v.port, false),
            HostFlowKind::SnatIn => (l.addr.1, v.orig_port, true),
            _ => return HostVerdict::Drop(HostDrop::NoRule),
        };
        if rewrite(inner, key, Side::Dst, &addr, port).is_err() {
            return HostVerdict::Drop(HostDrop::Malformed);
        }
        self.clamp_mss(inner, key);
        self.record_first_fragment(key, &e.value, Side::Dst, now);
        let delivered = self.deliver(inner, local, t.at, snat);
        if snat && v.flags & REPLIED == 0 {
            self.snat_replied(slot, &v);
        }
        delivered
    }

    /// A packet of no recorded flow: a new connection to a VIP, if a rule of this host's backends
    /// listens on its protocol and port and the MUX's VNI and tag name one of them. Both entries of
    /// the connection are recorded before the packet is translated and delivered.
    fn open_inbound(
        &mut self,
        inner: &mut [u8],
        key: &FlowKey,
        tuple: FlowTuple,
        hash: u32,
        t: Tunnel,
        now: u32,
    ) -> HostVerdict {
        let Some(vip) = self.vips.find(key.ip_version, &key.dst_addr) else {
            return HostVerdict::Drop(HostDrop::NoRule);
        };
        let Some(listener) = self.vips[vip].listener(key.protocol, key.dst_port) else {
            // A reply to an SNAT connection that is gone, or a port nobody listens on.
            return HostVerdict::Drop(HostDrop::NoRule);
        };
        let delivery = listener.target.delivery(&self.lb, key.dst_port);
        if self.lb.pools[delivery.pool].vni != t.vni {
            return HostVerdict::Drop(HostDrop::UnknownBackend);
        }
        let Some(local) = self.local_for(delivery.pool, delivery.member, t.tag) else {
            return HostVerdict::Drop(HostDrop::UnknownBackend);
        };
        let backend_port = delivery.backend_port.unwrap_or(key.dst_port);
        let mut flags = if delivery.floating_ip { FLOATING } else { 0 };
        if delivery.tcp_reset {
            flags |= RESET;
        }
        let l = &self.locals[local];
        let dst = if delivery.floating_ip { key.dst_addr } else { l.addr.1 };
        let inbound = HostFlow {
            kind: HostFlowKind::Inbound,
            flags,
            local: local as u16,
            frontend: vip as u16,
            port: backend_port,
            orig_port: key.dst_port,
            ..HostFlow::default()
        };
        // The response as the backend will send it: from its address (or the VIP) and port.
        let mut back = tuple;
        back.src = dst;
        back.src_port = backend_port;
        back.dst = tuple.src;
        back.dst_port = tuple.src_port;
        let response = HostFlow { kind: HostFlowKind::Response, port: key.dst_port, ..inbound };
        let Some(slot) = self.insert_pair(&tuple, hash, key.tcp_flags, inbound, &back, response, delivery.idle, now)
        else {
            return HostVerdict::Drop(HostDrop::FlowTableFull);
        };
        let e = *self.flows.entry(slot);
        self.follow(slot, &e, inner, key, now);
        if rewrite(inner, key, Side::Dst, &dst, backend_port).is_err() {
            return HostVerdict::Drop(HostDrop::Malformed);
        }
        self.clamp_mss(inner, key);
        self.record_first_fragment(key, &inbound, Side::Dst, now);
        let v = self.deliver(inner, local, t.at, false);
        self.counters.inbound.new_flows += 1;
        if let Some(c) = self.counters.backends.get_mut(local) {
            c.new_flows += 1;
        }
        v
    }

    /// The local backend a MUX meant: by tag, among this host's members of `pool` (and the NAT
    /// target member, if the rule names one). Tag 0 (a MUX that does not stamp): the only member.
    fn local_for(&self, pool: usize, member: Option<usize>, tag: u32) -> Option<usize> {
        let mut candidates = self
            .locals
            .iter()
            .enumerate()
            .filter(|(_, l)| l.pool == pool && member.is_none_or(|m| m == l.member))
            .filter(|(_, l)| tag == 0 || l.tag == tag);
        let first = candidates.next()?.0;
        candidates.next().is_none().then_some(first)
    }

    /// Hands the translated frame `frame`, at `start` in its buffer, to local backend `local`,
    /// counted as inbound or SNAT traffic. Once the backend's MAC is known (its own frames, or the
    /// program's [`HostAgent::set_backend_mac`]), the frame is addressed to it, from this host's
    /// MAC: it came with the MACs of the client's side, which a backend's stack drops as meant
    /// for another host. Its VLAN tags stay.
    fn deliver(&mut self, frame: &mut [u8], local: usize, start: usize, snat: bool) -> HostVerdict {
        let len = frame.len();
        if let (Some((mac, _)), Some(macs)) = (self.locals.get(local).and_then(|l| l.link), frame.get_mut(..12)) {
            macs[..6].copy_from_slice(&mac.0);
            macs[6..].copy_from_slice(&self.node.base.mac.0);
        }
        if snat {
            self.counters.snat_in.add(len, false);
        } else {
            self.counters.inbound.add(len, false);
        }
        if let Some(c) = self.counters.backends.get_mut(local) {
            c.add(len, false);
        }
        HostVerdict::Deliver { backend: local, start, len }
    }
}

//! From a backend to the fabric: a response of a recorded flow is reverse-NATed to its VIP and
//! frontend port and leaves through a MUX (VxLAN, RFC 7348) or straight to the fabric router
//! (Direct Server Return, as in the Ananta paper, SIGCOMM 2013). A connection the backend opens is
//! SNATed to a port of one of its blocks on an outbound frontend address (Azure Load Balancer's
//! outbound rules). Nothing else leaves: no frame goes out with a backend's private address.

use super::{tuple_hash, HostAgent, HostDrop, HostFlow, HostFlowKind, HostVerdict, ReturnPath, RESET};
use crate::paths::mux::too_big_error;
use crate::tables::{FlowSlot, FlowTuple};
use crate::wire::nat::{rewrite, Side, TcpResetRepr};
use crate::wire::{ip_proto, parse_flow_key, FlowKey, Fragment, IpVersion, MacAddr, TcpFlags};

/// Which counter an egress frame moves.
#[derive(Clone, Copy)]
pub(super) enum Leg {
    Response,
    Snat,
    Reset,
}

/// An SNAT port taken for a new connection: the local backend that opens it, the allocator block
/// and the port.
#[derive(Clone, Copy)]
struct SnatPort {
    local: usize,
    block: usize,
    port: u16,
}

impl HostAgent {
    /// A frame a local backend sent, at `buf[start..start + len]`, with headroom before it for the
    /// tunnel to a MUX.
    pub fn from_backend(&mut self, buf: &mut [u8], start: usize, len: usize, now: u32) -> HostVerdict {
        let v = self.backend_frame(buf, start, len, now);
        self.settle(now);
        self.count(v)
    }

    /// A frame from a backend: packets that carry no ports of their own (later fragments, ICMP
    /// errors) go out as the connection they belong to; a packet of a recorded flow is
    /// reverse-NATed; any other may open an SNAT connection.
    pub(super) fn backend_frame(&mut self, buf: &mut [u8], start: usize, len: usize, now: u32) -> HostVerdict {
        let Some(frame) = start.checked_add(len).and_then(|end| buf.get_mut(start..end)) else {
            return HostVerdict::Drop(HostDrop::Malformed);
        };
        let Ok(key) = parse_flow_key(frame) else {
            return HostVerdict::Drop(HostDrop::Malformed);
        };
        let seed = self.node.base.hash_seed;
        let hash = key.hash(seed);
        if key.fragment == Fragment::Later {
            let related = self.later_fragment(frame, &key, now);
            return self.egress_related(buf, start, len, hash, related);
        }
        if key.is_icmp_error() {
            let related = self.icmp_error(frame, &key, Side::Src, now);
            return self.egress_related(buf, start, len, hash, related);
        }
        let tuple = FlowTuple::from(&key);
        let too_big = len > self.max_frame && self.node.return_path == ReturnPath::ViaMux;
        if let Some(slot) = self.flows.lookup(&tuple, hash, now) {
            let v = self.flows.entry(slot).value;
            if too_big && matches!(v.kind, HostFlowKind::Response | HostFlowKind::SnatOut) {
                return self.too_big(buf, start, len, &key, usize::from(v.local));
            }
            return match self.reverse_nat(slot, frame, &key, now) {
                Ok((pool, leg)) => self.egress(buf, start, len, pool, hash, leg),
                Err(d) => HostVerdict::Drop(d),
            };
        }
        // No flow: a connection the backend opens, if an outbound rule (or default SNAT) covers it.
        let link = link_of(frame, &key);
        let tcp = key.protocol == ip_proto::TCP;
        if !opens_connection(&key) {
            return HostVerdict::Drop(HostDrop::NoFlow);
        }
        if too_big {
            return match self.snat_local(&key) {
                Some(local) => self.too_big(buf, start, len, &key, local),
                None => HostVerdict::Drop(HostDrop::NoFlow),
            };
        }
        let got = match self.take_snat_port(&key, now) {
            Ok(got) => got,
            Err(refused) => {
                let Some(local) = refused else {
                    return HostVerdict::Drop(HostDrop::NoFlow);
                };
                self.snat_refused(local, key.protocol);
                if tcp && self.node.reset_on_snat_exhaustion && key.tcp_flags & TcpFlags::SYN != 0 {
                    return self.refuse_with_reset(buf, start, &key, local);
                }
                return HostVerdict::Drop(HostDrop::SnatExhausted);
            }
        };
        self.learn_link(got.local, link);
        let Some((slot, out, faddr)) = self.insert_snat_pair(&key, tuple, hash, got, now) else {
            return HostVerdict::Drop(HostDrop::FlowTableFull);
        };
        let e = *self.flows.entry(slot);
        let Some(frame) = buf.get_mut(start..start + len) else {
            return HostVerdict::Drop(HostDrop::Malformed);
        };
        self.follow(slot, &e, frame, &key, now);
        if rewrite(frame, &key, Side::Src, &faddr, got.port).is_err() {
            return HostVerdict::Drop(HostDrop::Malformed);
        }
        self.clamp_mss(frame, &key);
        self.record_first_fragment(&key, &out, Side::Src, now);
        let pool = self.locals[got.local].pool;
        let v = self.egress(buf, start, len, pool, hash, Leg::Snat);
        if matches!(v, HostVerdict::Transmit { .. }) {
            self.counters.snat_out.new_flows += 1;
        }
        v
    }

    /// Sends a later fragment or an ICMP error the way its connection goes (`related`: its local
    /// backend and whether the connection is SNAT, or why it is dropped).
    fn egress_related(
        &mut self,
        buf: &mut [u8],
        start: usize,
        len: usize,
        hash: u32,
        related: Result<(usize, bool), HostDrop>,
    ) -> HostVerdict {
        match related {
            Ok((local, snat)) => {
                let leg = if snat { Leg::Snat } else { Leg::Response };
                self.egress(buf, start, len, self.locals[local].pool, hash, leg)
            }
            Err(d) => HostVerdict::Drop(d),
        }
    }

    /// A backend's packet of the recorded flow at `slot`, translated in place to its VIP (or SNAT
    /// address) and port; returns the pool whose tunnels it leaves by and the counter it moves.
    fn reverse_nat(
        &mut self,
        slot: FlowSlot,
        frame: &mut [u8],
        key: &FlowKey,
        now: u32,
    ) -> Result<(usize, Leg), HostDrop> {
        let e = self.flows.touch(slot, key.tcp_flags, now);
        self.follow(slot, &e, frame, key, now);
        let v = e.value;
        let leg = match v.kind {
            HostFlowKind::Response => Leg::Response,
            HostFlowKind::SnatOut => Leg::Snat,
            _ => return Err(HostDrop::NoFlow),
        };
        let local = usize::from(v.local);
        let Some(l) = self.locals.get(local) else {
            return Err(HostDrop::UnknownBackend);
        };
        let pool = l.pool;
        // Only from the backend's own side of its connection (a frame that matched the client's
        // side is not the backend's).
        if key.tcp_flags & TcpFlags::SYN != 0 || l.link.is_none() {
            self.learn_link(local, link_of(frame, key));
        }
        let Some(vip) = self.vips.get(usize::from(v.frontend)).map(|f| f.addr) else {
            return Err(HostDrop::NoFlow);
        };
        if rewrite(frame, key, Side::Src, &vip, v.port).is_err() {
            return Err(HostDrop::Malformed);
        }
        self.clamp_mss(frame, key);
        self.record_first_fragment(key, &v, Side::Src, now);
        Ok((pool, leg))
    }

    /// An SNAT port for a new connection from the packet `key`: a backend in several pools is a
    /// local backend of each, and any of them with a port block for this protocol may open the
    /// connection. Else the local backend whose ports are exhausted, or `None` if no rule covers
    /// the connection (not an exhaustion).
    fn take_snat_port(&mut self, key: &FlowKey, now: u32) -> Result<SnatPort, Option<usize>> {
        let mut refused = None;
        for local in 0..self.locals.len() {
            let l = &self.locals[local];
            let serves = |b: &usize| self.grants.get(*b).is_some_and(|g| g.protocol.matches(key.protocol));
            if l.addr != (key.ip_version, key.src_addr) || !l.blocks.iter().any(serves) {
                continue;
            }
            if let Some((block, port)) = self.allocate(local, key, now) {
                return Ok(SnatPort { local, block, port });
            }
            refused.get_or_insert(local);
        }
        Err(refused)
    }

    /// The local backend that would open an SNAT connection for the packet `key`: one at its source
    /// address with a port block for its protocol.
    fn snat_local(&self, key: &FlowKey) -> Option<usize> {
        self.locals.iter().position(|l| {
            l.addr == (key.ip_version, key.src_addr)
                && l.blocks.iter().any(|b| self.grants.get(*b).is_some_and(|g| g.protocol.matches(key.protocol)))
        })
    }

    /// A backend's packet (parsed as `key`, of a connection of local backend `local`) too big for
    /// the tunnel to a MUX: turned, in place, into the ICMP error that tells the backend the
    /// path's MTU (the underlay's less the tunnel's overhead and the frame's VLAN tags; RFC 1191,
    /// RFC 8201), quoting its packet as it sent it, back to its MAC. The source is the host's
    /// underlay address, the node that found the packet too big, as a router on the path would
    /// send it; when the backend's packet is of the other IP version, its destination (the client
    /// or remote). Either is an address the backend does not own (Linux drops a packet from one of
    /// its own addresses as a martian, and a floating-IP backend owns the VIP) and routes through
    /// this host (strict reverse-path filtering accepts it); the kernel finds the socket by the
    /// quote, whatever the source. What gets no error (an IPv4 packet without DF, ...) is dropped
    /// as [`HostDrop::Encap`].
    #[cold]
    #[inline(never)]
    fn too_big(&mut self, buf: &mut [u8], start: usize, len: usize, key: &FlowKey, local: usize) -> HostVerdict {
        let mtu = self.max_frame.saturating_sub(usize::from(key.l3_offset)).min(usize::from(u16::MAX)) as u16;
        let underlay = self.node.base.underlay;
        let src = if underlay.is_ipv4() == (key.ip_version == IpVersion::V4) { underlay } else { key.dst_ip() };
        match too_big_error(buf, start, len, key, src, mtu, &self.node.base) {
            Some((at, n)) => {
                self.counters.too_big += 1;
                HostVerdict::Deliver { backend: local, start: at, len: n }
            }
            None => HostVerdict::Drop(HostDrop::Encap),
        }
    }

    /// Records both entries of a new SNAT connection (the backend's direction and the remote's
    /// replies to the SNAT address and port); returns the outbound entry's slot and value and the
    /// SNAT address, or `None` if the flow table had no room for both.
    fn insert_snat_pair(
        &mut self,
        key: &FlowKey,
        tuple: FlowTuple,
        hash: u32,
        got: SnatPort,
        now: u32,
    ) -> Option<(FlowSlot, HostFlow, [u8; 16])> {
        let g = self.grants[got.block];
        let faddr = self.vips[g.frontend].addr;
        let mut flags = 0;
        if g.tcp_reset {
            flags |= RESET;
        }
        let out = HostFlow {
            kind: HostFlowKind::SnatOut,
            flags,
            local: got.local as u16,
            frontend: g.frontend as u16,
            port: got.port,
            orig_port: key.src_port,
            block: got.block as u16,
            ..HostFlow::default()
        };
        let mut back = tuple;
        back.src = tuple.dst;
        back.src_port = tuple.dst_port;
        back.dst = faddr;
        back.dst_port = got.port;
        let back_in = HostFlow { kind: HostFlowKind::SnatIn, ..out };
        let slot = self.insert_pair(&tuple, hash, key.tcp_flags, out, &back, back_in, g.idle_timeout, now)?;
        Some((slot, out, faddr))
    }

    /// An SNAT port for a new connection of local backend `local`: a fresh port of one of its blocks
    /// serving the protocol, else (TCP) a port in use whose connections all go elsewhere.
    fn allocate(&mut self, local: usize, key: &FlowKey, now: u32) -> Option<(usize, u16)> {
        let seed = self.node.base.hash_seed;
        for &b in &self.locals[local].blocks {
            let g = &self.grants[b];
            if !g.protocol.matches(key.protocol) {
                continue;
            }
            let faddr = self.vips[g.frontend].addr;
            let r = if key.protocol == ip_proto::TCP {
                let flows = &self.flows;
                self.snat.alloc_shared(b, now, |p| {
                    let mut back = FlowTuple::from(key);
                    back.src = key.dst_addr;
                    back.src_port = key.dst_port;
                    back.dst = faddr;
                    back.dst_port = p;
                    !flows.holds(&back, tuple_hash(&back, seed))
                })
            } else {
                self.snat.alloc(b, now)
            };
            if let Ok(p) = r {
                return Some((b, p));
            }
        }
        None
    }

    /// Answers a SYN that found no SNAT port with a RST, in place, back to the backend.
    fn refuse_with_reset(&mut self, buf: &mut [u8], start: usize, key: &FlowKey, local: usize) -> HostVerdict {
        let o = usize::from(key.l4_offset);
        let Some(seq) = buf.get(start + o + 4..start + o + 8).map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        else {
            return HostVerdict::Drop(HostDrop::Malformed);
        };
        let rst = TcpResetRepr {
            src_mac: self.node.base.mac,
            dst_mac: MacAddr([
                buf[start + 6],
                buf[start + 7],
                buf[start + 8],
                buf[start + 9],
                buf[start + 10],
                buf[start + 11],
            ]),
            vlan: (key.vlan_count > 0).then_some(key.vlans[0]),
            src: key.dst_ip(),
            dst: key.src_ip(),
            src_port: key.dst_port,
            dst_port: key.src_port,
            seq: 0,
            ack: Some(seq.wrapping_add(1)),
        };
        self.counters.drops[HostDrop::SnatExhausted as usize] += 1;
        let Ok(n) = rst.emit(&mut buf[start..]) else {
            return HostVerdict::Drop(HostDrop::SnatExhausted);
        };
        self.counters.resets += 1;
        HostVerdict::Deliver { backend: local, start, len: n }
    }

    /// Sends a translated frame towards the client: through a MUX (VxLAN, the pool's VNI, a MUX
    /// picked by flow hash) or directly to the fabric router.
    pub(super) fn egress(
        &mut self,
        buf: &mut [u8],
        start: usize,
        len: usize,
        pool: usize,
        hash: u32,
        leg: Leg,
    ) -> HostVerdict {
        let v = match self.node.return_path {
            ReturnPath::Direct => {
                let Some(f) = buf.get_mut(start..start + len).filter(|f| f.len() >= 12) else {
                    return HostVerdict::Drop(HostDrop::Malformed);
                };
                if self.node.base.gateway_mac == MacAddr::default() {
                    return HostVerdict::Drop(HostDrop::NoNextHop);
                }
                f[..6].copy_from_slice(&self.node.base.gateway_mac.0);
                f[6..12].copy_from_slice(&self.node.base.mac.0);
                HostVerdict::Transmit { start, len }
            }
            ReturnPath::ViaMux => {
                let Some(per_mux) = self.tunnels.get(pool).filter(|t| !t.is_empty()) else {
                    return HostVerdict::Drop(HostDrop::Encap);
                };
                let t = &per_mux[((u64::from(hash) * per_mux.len() as u64) >> 32) as usize];
                if !self.hops_known && !t.has_next_hop() {
                    return HostVerdict::Drop(HostDrop::NoNextHop);
                }
                match t.encapsulate(buf, start, len, hash) {
                    Ok(outer) => HostVerdict::Transmit { start: outer, len: len + t.outer_len() },
                    Err(_) => return HostVerdict::Drop(HostDrop::Encap),
                }
            }
        };
        match leg {
            Leg::Response => self.counters.responses.add(len, false),
            Leg::Snat => self.counters.snat_out.add(len, false),
            Leg::Reset => {}
        }
        v
    }
}

/// Whether a packet of no flow may open an SNAT connection: TCP or UDP, and for TCP only a SYN. Any
/// other TCP segment belongs to a connection this host no longer knows (expired, or from before a
/// restart): sent out through SNAT it would leave from the wrong address on a port of its own, and
/// the entry it made would answer for the connection even once the client's next segment recreated
/// its flow.
fn opens_connection(key: &FlowKey) -> bool {
    let tcp = key.protocol == ip_proto::TCP;
    if !(tcp || key.protocol == ip_proto::UDP) || key.is_icmp_error() {
        return false;
    }
    !(tcp && key.tcp_flags & (TcpFlags::SYN | TcpFlags::ACK) != TcpFlags::SYN)
}

/// The sender's MAC and outermost VLAN of a parsed frame (at least an Ethernet header long).
fn link_of(frame: &[u8], key: &FlowKey) -> (MacAddr, Option<u16>) {
    let mut mac = [0xff; 6];
    if let Some(m) = frame.get(6..12) {
        mac.copy_from_slice(m);
    }
    (MacAddr(mac), (key.vlan_count > 0).then_some(key.vlans[0]))
}

//! What both data paths ask of a frame first: which VIP it is addressed to, and which rule of that
//! VIP (load-balancing rule, HA ports, inbound NAT rule, inbound NAT pool) its protocol and port
//! select. Built once per configuration; looked up per packet without allocation.

use alloc::vec::Vec;
use core::net::IpAddr;

use crate::config::{IdleTimeout, LoadBalancer, Protocol};
use crate::tables::maglev::mix64;
use crate::tables::FlowTuple;
use crate::wire::vxlan::address_hash;
// The tag belongs to the VxLAN wire format; both data paths name it from here.
pub use crate::wire::vxlan::backend_tag;
use crate::wire::{FlowKey, HashFields, IpVersion};

/// What a listener leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Rule(usize),
    NatRule(usize),
    NatPool(usize),
}

/// One (protocol, port range) of a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Listener {
    pub protocol: Protocol,
    pub lo: u16,
    pub hi: u16,
    pub target: Target,
    /// Index into the per-rule counters: load-balancing rules, then NAT rules, then NAT pools.
    pub counter: usize,
}

/// What names a listener across reconfigurations: its VIP, protocol and port range. A validated
/// configuration has no two listeners of one VIP that share a protocol and port, so a packet that
/// an identity's listener took is taken by the listener of that identity in any later
/// configuration that has it.
pub(crate) type ListenerIdentity = (IpVersion, [u8; 16], Protocol, u16, u16);

#[derive(Debug, Clone)]
pub(crate) struct Vip {
    pub version: IpVersion,
    pub addr: [u8; 16],
    pub listeners: Vec<Listener>,
    /// The single-port TCP and UDP listeners by `(protocol, port)` (open addressing, at most half
    /// full, `NO_PORT` where empty): a VIP with a dozen rules finds a packet's rule with one hash
    /// and usually one compare instead of a scan.
    ports: Vec<(u32, u32)>,
    /// The other listeners (port ranges, HA ports, protocol All), scanned in order.
    ranges: Vec<u32>,
}

const NO_PORT: u32 = u32::MAX;

impl Vip {
    pub fn new(version: IpVersion, addr: [u8; 16]) -> Self {
        Vip { version, addr, listeners: Vec::new(), ports: Vec::new(), ranges: Vec::new() }
    }

    #[inline(always)]
    fn port_key(protocol: u8, port: u16) -> u32 {
        u32::from(protocol) << 16 | u32::from(port)
    }

    #[inline(always)]
    fn port_home(key: u32, mask: usize) -> usize {
        (key.wrapping_mul(0x9e37_79b1) >> 12) as usize & mask
    }

    /// Builds the port index once the listeners are all in.
    fn index_ports(&mut self) {
        let exact = |l: &Listener| l.lo == l.hi && matches!(l.protocol, Protocol::Tcp | Protocol::Udp);
        let n = self.listeners.iter().filter(|l| exact(l)).count();
        self.ports = if n == 0 { Vec::new() } else { alloc::vec![(NO_PORT, 0); (2 * n).next_power_of_two()] };
        self.ranges.clear();
        let mask = self.ports.len().wrapping_sub(1);
        for (i, l) in self.listeners.iter().enumerate() {
            if !exact(l) {
                self.ranges.push(i as u32);
                continue;
            }
            let p = if l.protocol == Protocol::Tcp { crate::wire::ip_proto::TCP } else { crate::wire::ip_proto::UDP };
            let key = Self::port_key(p, l.lo);
            let mut at = Self::port_home(key, mask);
            while self.ports[at].0 != NO_PORT && self.ports[at].0 != key {
                at = (at + 1) & mask;
            }
            // A validated configuration has no two listeners on one protocol and port; were there
            // two, the first would answer, as a scan in order would.
            if self.ports[at].0 == NO_PORT {
                self.ports[at] = (key, i as u32);
            }
        }
    }

    /// The listener for a packet of `protocol` to `port`. A validated configuration has no two
    /// listeners of one VIP that both match, so the port index and the ranges never disagree.
    #[inline(always)]
    pub fn listener(&self, protocol: u8, port: u16) -> Option<Listener> {
        self.listener_index(protocol, port).map(|i| self.listeners[i])
    }

    /// [`Vip::listener`]'s index in `listeners`.
    #[inline(always)]
    pub fn listener_index(&self, protocol: u8, port: u16) -> Option<usize> {
        if !self.ports.is_empty() && (protocol == crate::wire::ip_proto::TCP || protocol == crate::wire::ip_proto::UDP)
        {
            let key = Self::port_key(protocol, port);
            let mask = self.ports.len() - 1;
            let mut at = Self::port_home(key, mask);
            while let Some(&(k, i)) = self.ports.get(at) {
                if k == key {
                    return Some(i as usize).filter(|&i| i < self.listeners.len());
                }
                if k == NO_PORT {
                    break;
                }
                at = (at + 1) & mask;
            }
        }
        self.ranges.iter().map(|&i| i as usize).find(|&i| {
            self.listeners.get(i).is_some_and(|l| l.protocol.matches(protocol) && (l.lo..=l.hi).contains(&port))
        })
    }

    /// Whether some listener claims `port` for some protocol.
    pub fn claims(&self, port: u16) -> bool {
        self.listeners.iter().any(|l| (l.lo..=l.hi).contains(&port))
    }
}

/// Every VIP of a configuration, in frontend order (so `vips[i]` is frontend `i`), with a hashed
/// index from address to VIP: one hash and usually one compare per packet, however many VIPs the
/// MUX serves, instead of a scan whose length and exit point the CPU cannot predict.
#[derive(Debug, Clone, Default)]
pub(crate) struct Vips {
    list: Vec<Vip>,
    /// Open addressing with linear probing, at most half full: `(address, version, index)`, index
    /// `u32::MAX` where empty.
    slots: Vec<([u8; 16], IpVersion, u32)>,
    /// `slots.len() - 1` (a power of two minus one).
    mask: usize,
}

const NO_VIP: u32 = u32::MAX;

impl Vips {
    fn new(mut list: Vec<Vip>) -> Self {
        for v in &mut list {
            v.index_ports();
        }
        let size = (list.len() * 2).next_power_of_two().max(8);
        let mut slots = alloc::vec![([0u8; 16], IpVersion::V4, NO_VIP); size];
        let mask = size - 1;
        for (i, v) in list.iter().enumerate() {
            let mut at = Self::home(v.version, &v.addr) & mask;
            // Two frontends on one address: the first one answers (as a scan in frontend order would).
            while slots[at].2 != NO_VIP && (slots[at].0, slots[at].1) != (v.addr, v.version) {
                at = (at + 1) & mask;
            }
            if slots[at].2 == NO_VIP {
                slots[at] = (v.addr, v.version, i as u32);
            }
        }
        Vips { list, slots, mask }
    }

    /// Every listener with its VIP and identity, `(vip, counter, identity)`: the identity is what
    /// stays the same for a listener across reconfigurations that keep its VIP, protocol and ports,
    /// whatever its counter becomes.
    pub fn identities(&self) -> impl Iterator<Item = (usize, usize, ListenerIdentity)> + '_ {
        self.list.iter().enumerate().flat_map(|(i, v)| {
            v.listeners.iter().map(move |l| (i, l.counter, (v.version, v.addr, l.protocol, l.lo, l.hi)))
        })
    }

    #[inline(always)]
    fn home(version: IpVersion, addr: &[u8; 16]) -> usize {
        let (a, b) = addr.split_at(8);
        let a = u64::from_le_bytes(a.try_into().unwrap_or_default());
        let b = u64::from_le_bytes(b.try_into().unwrap_or_default());
        let r = u128::from(a ^ 0x9e37_79b9_7f4a_7c15) * u128::from(b ^ 0xc2b2_ae3d_27d4_eb4f ^ version as u64);
        ((r as u64) ^ ((r >> 64) as u64)) as usize
    }

    /// The index of the VIP at `addr`.
    #[inline(always)]
    pub fn find(&self, version: IpVersion, addr: &[u8; 16]) -> Option<usize> {
        let mut at = Self::home(version, addr) & self.mask;
        loop {
            let (a, v, i) = self.slots.get(at)?;
            if *i == NO_VIP {
                return None;
            }
            if a == addr && *v == version {
                return Some(*i as usize);
            }
            at = (at + 1) & self.mask;
        }
    }
}

impl core::ops::Deref for Vips {
    type Target = [Vip];
    fn deref(&self) -> &[Vip] {
        &self.list
    }
}

/// An address as the 16 bytes flow keys use (IPv4 in the first 4).
pub(crate) fn addr16(a: IpAddr) -> (IpVersion, [u8; 16]) {
    let mut out = [0u8; 16];
    match a {
        IpAddr::V4(v) => {
            out[..4].copy_from_slice(&v.octets());
            (IpVersion::V4, out)
        }
        IpAddr::V6(v) => (IpVersion::V6, v.octets()),
    }
}

/// Every VIP with its listeners, in counter order; and the number of rule counters.
pub(crate) fn build_vips(lb: &LoadBalancer) -> (Vips, usize) {
    let mut vips: Vec<Vip> = lb
        .frontends
        .iter()
        .map(|f| {
            let (version, addr) = addr16(f.address);
            Vip::new(version, addr)
        })
        .collect();
    let rules = lb.rules.iter().enumerate().map(|(i, r)| {
        let ports = if r.is_ha_ports() { (0, u16::MAX) } else { (r.frontend_port, r.frontend_port) };
        (r.frontend, r.protocol, ports, Target::Rule(i))
    });
    let nat_rules = lb
        .nat_rules
        .iter()
        .enumerate()
        .map(|(i, r)| (r.frontend, r.protocol, (r.frontend_port, r.frontend_port), Target::NatRule(i)));
    let nat_pools = lb
        .nat_pools
        .iter()
        .enumerate()
        .map(|(i, r)| (r.frontend, r.protocol, (r.port_start, r.port_end), Target::NatPool(i)));
    let mut counter = 0;
    for (frontend, protocol, (lo, hi), target) in rules.chain(nat_rules).chain(nat_pools) {
        vips[frontend].listeners.push(Listener { protocol, lo, hi, target, counter });
        counter += 1;
    }
    (Vips::new(vips), counter)
}

/// What a listener does with a connection, whichever kind of rule it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// Pool.
    pub pool: usize,
    /// The member, for NAT rules and pools (load-balancing rules pick one by Maglev).
    pub member: Option<usize>,
    /// Port on the backend (`None`: keep the frontend port, as HA ports do).
    pub backend_port: Option<u16>,
    pub floating_ip: bool,
    pub idle: IdleTimeout,
    pub tcp_reset: bool,
}

impl Target {
    /// The delivery of a connection to `port` (already matched by this target's listener).
    pub fn delivery(self, lb: &LoadBalancer, port: u16) -> Delivery {
        match self {
            Target::Rule(r) => {
                let r = &lb.rules[r];
                Delivery {
                    pool: r.pool,
                    member: None,
                    backend_port: (!r.is_ha_ports() && r.backend_port != 0).then_some(r.backend_port),
                    floating_ip: r.floating_ip,
                    idle: r.idle_timeout,
                    tcp_reset: r.tcp_reset,
                }
            }
            Target::NatRule(n) => {
                let n = &lb.nat_rules[n];
                Delivery {
                    pool: n.target.0,
                    member: Some(n.target.1),
                    backend_port: Some(n.backend_port),
                    floating_ip: n.floating_ip,
                    idle: n.idle_timeout,
                    tcp_reset: n.tcp_reset,
                }
            }
            Target::NatPool(p) => {
                let n = &lb.nat_pools[p];
                Delivery {
                    pool: n.pool,
                    member: Some(usize::from(port.wrapping_sub(n.port_start))),
                    backend_port: Some(n.backend_port),
                    floating_ip: n.floating_ip,
                    idle: n.idle_timeout,
                    tcp_reset: n.tcp_reset,
                }
            }
        }
    }
}

/// A backend's Maglev identity: a hash of its address, so every MUX agrees without coordination.
pub(crate) fn backend_id(a: IpAddr) -> u64 {
    address_hash(a)
}

/// Marks the flow-table entries that remember a fragmented datagram rather than a connection.
const FRAGMENT_MARK: u8 = 0x80;

/// The flow-table record that ties the fragments of one datagram together, marked so it never
/// equals a connection's key; later fragments carry no ports. What identifies the datagram is
/// what its reassembly uses: addresses, protocol and identification for IPv4 (RFC 791), where
/// every fragment's header names the protocol; addresses and identification alone for IPv6 (RFC
/// 8200, 4.5), where a later fragment's Fragment header names the first header of the
/// fragmentable part (a Destination Options or AH header, say) while the first fragment's key
/// names the upper-layer protocol found after it.
#[inline]
pub(crate) fn fragment_record(k: &FlowKey, seed: u64) -> (FlowTuple, u32) {
    let mut t = FlowTuple::from(k);
    t.src_port = (k.frag_ident >> 16) as u16;
    t.dst_port = k.frag_ident as u16;
    t.version |= FRAGMENT_MARK;
    let fields = match k.ip_version {
        IpVersion::V4 => HashFields::ThreeTuple,
        IpVersion::V6 => {
            t.protocol = 0;
            HashFields::TwoTuple
        }
    };
    let h = k.hash_fields(fields, seed) ^ (mix64(u64::from(k.frag_ident)) as u32);
    (t, h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn vip(version: IpVersion, addr: [u8; 16]) -> Vip {
        Vip::new(version, addr)
    }

    #[test]
    fn port_index_answers_as_a_scan_in_order_would() {
        let l = |protocol, lo, hi, counter| Listener { protocol, lo, hi, target: Target::Rule(counter), counter };
        // Single ports of TCP and UDP (indexed), the same port on both protocols, a range, a
        // single port of protocol All and a UDP range (scanned).
        let mut v = vip(IpVersion::V4, [20, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut n = 0;
        for port in [80u16, 443, 8080, 8443, 22, 3389, 0, 65535] {
            v.listeners.push(l(Protocol::Tcp, port, port, n));
            n += 1;
        }
        for port in [53u16, 443, 123, 4500, 5060] {
            v.listeners.push(l(Protocol::Udp, port, port, n));
            n += 1;
        }
        v.listeners.push(l(Protocol::Tcp, 50000, 50099, n));
        v.listeners.push(l(Protocol::All, 7000, 7000, n + 1));
        v.listeners.push(l(Protocol::Udp, 60000, 60010, n + 2));
        let vips = Vips::new(vec![v]);
        let v = &vips[0];
        let scan = |protocol: u8, port: u16| {
            v.listeners
                .iter()
                .find(|l| l.protocol.matches(protocol) && (l.lo..=l.hi).contains(&port))
                .map(|l| l.counter)
        };
        let mut hits = 0;
        for protocol in [6u8, 17, 1, 50, 58] {
            for port in (0..=u16::MAX).step_by(7).chain([80, 443, 53, 0, 65535, 7000, 50000, 50099, 60010, 60011]) {
                let got = v.listener(protocol, port).map(|l| l.counter);
                assert_eq!(got, scan(protocol, port), "protocol {protocol} port {port}");
                hits += usize::from(got.is_some());
            }
        }
        assert!(hits > 20, "{hits}");
        assert_eq!(v.listener(6, 443).map(|l| l.counter), Some(1));
        assert_eq!(v.listener(17, 443).map(|l| l.counter), Some(9));
        assert_eq!(v.listener(1, 7000).map(|l| l.counter), Some(14));
    }

    #[test]
    fn vip_index_finds_every_vip_and_nothing_else() {
        // 300 VIPs (the index wraps and probes past collisions), an IPv4 and an IPv6 VIP whose 16
        // bytes are equal, and a duplicate address (the first frontend answers).
        let mut list: Vec<Vip> = (0..300u32)
            .map(|i| {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&(0x1432_0000 + i).to_be_bytes());
                vip(IpVersion::V4, a)
            })
            .collect();
        let same_bytes = list[7].addr;
        list.push(vip(IpVersion::V6, same_bytes));
        list.push(vip(IpVersion::V4, list[3].addr));
        let vips = Vips::new(list.clone());
        assert_eq!(vips.len(), 302);
        for (i, v) in list.iter().enumerate().take(301) {
            assert_eq!(vips.find(v.version, &v.addr), Some(i), "VIP {i}");
        }
        assert_eq!(vips.find(IpVersion::V4, &list[301].addr), Some(3));
        let mut other = [0u8; 16];
        other[..4].copy_from_slice(&0x1432_ffffu32.to_be_bytes());
        assert_eq!(vips.find(IpVersion::V4, &other), None);
        assert_eq!(vips.find(IpVersion::V6, &list[0].addr), None);
        assert_eq!(Vips::default().find(IpVersion::V4, &other), None);
        assert_eq!(Vips::new(vec![]).find(IpVersion::V4, &other), None);
    }
}

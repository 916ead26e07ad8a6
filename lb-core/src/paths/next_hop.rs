//! The next hops a node's tunnels leave for: the MAC the program resolved for each underlay peer
//! (from the kernel's routing and neighbour tables), and the gateway for the others.

use alloc::vec::Vec;
use core::net::IpAddr;

use crate::wire::MacAddr;

/// One MAC per underlay peer the program resolved.
#[derive(Debug, Clone, Default)]
pub(crate) struct NextHops {
    peers: Vec<(IpAddr, MacAddr)>,
}

impl NextHops {
    /// Frames to `peer` leave for `mac`.
    pub(crate) fn set(&mut self, peer: IpAddr, mac: MacAddr) {
        match self.peers.iter_mut().find(|(p, _)| *p == peer) {
            Some(hop) => hop.1 = mac,
            None => self.peers.push((peer, mac)),
        }
    }

    /// Frames to `peer` leave for the gateway again.
    pub(crate) fn clear(&mut self, peer: IpAddr) {
        self.peers.retain(|(p, _)| *p != peer);
    }

    /// The MAC frames to `peer` leave for.
    pub(crate) fn mac_for(&self, peer: IpAddr, gateway: MacAddr) -> MacAddr {
        self.peers.iter().find(|(p, _)| *p == peer).map_or(gateway, |&(_, mac)| mac)
    }
}

/// Each address once, in the order first seen.
pub(crate) fn distinct(addresses: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for a in addresses {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

//! The fabric every fixture lives in: public VIPs and SNAT addresses, the MUX and two hosts on the
//! underlay, backends' private addresses (DIPs) and clients. As in Ananta, the MUX and the host agents
//! share one underlay and reach the Internet through one router (`GATEWAY`).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_core::wire::MacAddr;

/// The public VIP of the load-balancing rules.
pub const VIP: [u8; 4] = [20, 50, 60, 10];
/// A second VIP, for inbound NAT rules and pools.
pub const VIP_NAT: [u8; 4] = [20, 50, 60, 11];
/// The IPv6 VIP (2001:db8:100::10).
pub const VIP6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
/// The frontend address of the outbound rules (SNAT).
pub const SNAT_IP: [u8; 4] = [20, 50, 60, 20];
/// A second SNAT address, so that a backend can hold blocks on two addresses.
pub const SNAT_IP2: [u8; 4] = [20, 50, 60, 21];
/// The IPv6 SNAT address (2001:db8:100::20).
pub const SNAT_IP6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20];
/// The MUX's underlay address.
pub const MUX_IP: [u8; 4] = [172, 16, 5, 10];
/// The first host: the one whose agent the host tests, benches and fuzz target run.
pub const HOST_A: [u8; 4] = HOSTS[0];
/// The second host.
pub const HOST_B: [u8; 4] = HOSTS[1];
/// Four hosts on the underlay; [`HOST_A`] and [`HOST_B`] are the first two.
pub const HOSTS: [[u8; 4]; 4] = [[172, 16, 10, 20], [172, 16, 10, 21], [172, 16, 10, 22], [172, 16, 10, 23]];
/// The MUX's MAC address.
pub const MUX_MAC: MacAddr = MacAddr([2, 0, 0, 0, 5, 10]);
/// Host A's MAC address (see [`host_mac`]).
pub const HOST_MAC: MacAddr = MacAddr([2, 0, 0, 0, 10, 20]);
/// The router of the fabric: where a MUX and a host agent send what leaves the underlay.
pub const GATEWAY: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
/// The source MAC address of client frames.
pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];

/// The MAC address of the host at `addr` (its last byte in the last place).
pub fn host_mac(addr: [u8; 4]) -> MacAddr {
    MacAddr([2, 0, 0, 0, 10, addr[3]])
}

/// Backend `i`'s private IPv4 address: 10.0.1.(4 + i).
pub fn dip4(i: u8) -> [u8; 4] {
    [10, 0, 1, 4 + i]
}

/// Backend `i`'s private IPv6 address: 2001:db8:2::(4 + i).
pub fn dip6(i: u8) -> [u8; 16] {
    Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 4 + u16::from(i)).octets()
}

/// [`dip4`] as an `IpAddr`.
pub fn v4(i: u8) -> IpAddr {
    IpAddr::from(dip4(i))
}

/// [`dip6`] as an `IpAddr`.
pub fn v6(i: u8) -> IpAddr {
    IpAddr::from(dip6(i))
}

/// Client `i` of the benchmarking range (RFC 2544): 198.18.x.y.
pub fn client4(i: u32) -> [u8; 4] {
    [198, 18, (i >> 8) as u8, i as u8]
}

/// Client `i` as an `IpAddr` of either version: 198.18.x.y or 2001:db8:9::x:y.
pub fn client(i: u32, ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, (i >> 16) as u16, i as u16))
    } else {
        IpAddr::V4(Ipv4Addr::from(client4(i)))
    }
}

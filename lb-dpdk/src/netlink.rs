//! Next hops from the kernel, over rtnetlink: an interface's index, MAC, MTU and addresses; the
//! route to a destination; the neighbour (ARP / NDP) entry of its next hop; and a watcher that says
//! when routes, links or neighbours change. With `gatewayMac` absent from the node file, the MUX and
//! the host agent take the next hop's MAC from here, as the kernel beside them would.
//!
//! The socket is `netlink-sys` (safe calls, so this crate keeps `deny(unsafe_code)`); the messages
//! are built and read here by hand, as byte slices. That is shorter than `netlink-packet-route`'s
//! typed messages for the dozen attributes read here, it has no API to chase (that crate breaks its
//! types between minor versions), and the tests read real kernel replies byte for byte.
//!
//! Every call opens its own socket: calls come from the control plane, seldom, so no state is
//! shared and a reply can only be an answer to this call. Needs Linux 5.0 or later (`RTM_GETNEIGH`
//! for one entry).
//!
//! [`resolve`] asks the kernel to resolve an unknown next hop with `RTM_NEWNEIGH` and `NTF_USE`:
//! the kernel creates the entry if needed and sends its ARP request or neighbour solicitation, as
//! if a packet were waiting for it, and the entry then ages like any other. That needs
//! `CAP_NET_ADMIN`; without it, an empty UDP datagram to the next hop's discard port (9) makes the
//! kernel resolve it on the way out.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};

use lb_core::wire::MacAddr;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

// The kernel ABI (uapi linux/netlink.h, rtnetlink.h, if_link.h, if_addr.h, neighbour.h): libc has
// only some of these on every target, so they are spelled out here.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
/// On an `NLMSG_ERROR`: the request is echoed as its header alone.
const NLM_F_CAPPED: u16 = 0x100;
/// On an `NLMSG_ERROR`: extended-ack attributes follow the echoed request.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;

/// Sizes of `ifinfomsg`, `ifaddrmsg`, `rtmsg` and `ndmsg`.
const IFINFOMSG: usize = 16;
const IFADDRMSG: usize = 8;
const RTMSG: usize = 12;
const NDMSG: usize = 12;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const RTA_VIA: u16 = 18;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;

const IFF_UP: u32 = 0x1;
const IFF_RUNNING: u32 = 0x40;
/// Neighbour states whose link-layer address can be used: REACHABLE, STALE, DELAY, PROBE, NOARP,
/// PERMANENT (INCOMPLETE and FAILED have none, NONE is not resolved yet).
const NUD_USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;
/// `ndm_flags`: act as if a packet used the entry, which starts its resolution.
const NTF_USE: u8 = 0x01;

const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_ROUTE: u32 = 11;

const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

/// Every call has its own socket, so one sequence number does.
const SEQ: u32 = 1;
/// Large enough for any one datagram the kernel sends (dumps fill at most 32 KiB).
const RECV_BUF: usize = 64 * 1024;

/// A network interface as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// None for an interface without an Ethernet address (a tunnel, say).
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// Administratively up and operationally running (`IFF_UP` and `IFF_RUNNING`).
    pub running: bool,
    /// Its IPv4 and IPv6 addresses (the local end on a point-to-point link).
    pub addrs: Vec<IpAddr>,
}

/// The kernel's route to one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The destination asked about.
    pub dst: IpAddr,
    /// Output interface index.
    pub oif: u32,
    /// The gateway when the destination is off-link (an IPv6 one for an IPv4 route `via inet6`).
    pub gateway: Option<IpAddr>,
    /// The source address the kernel would pick.
    pub src: Option<IpAddr>,
}

impl Route {
    /// The address whose MAC the frames go to: the gateway, or the destination itself on-link.
    pub fn next_hop(&self) -> IpAddr {
        self.gateway.unwrap_or(self.dst)
    }
}

/// What went wrong talking to the kernel.
#[derive(Debug)]
pub enum NetlinkError {
    /// The kernel refused the request with this errno (and, from Linux 4.12, said why).
    Kernel { request: &'static str, errno: i32, message: Option<String> },
    /// A socket call failed.
    Io { request: &'static str, call: &'static str, source: io::Error },
    /// No interface has this name.
    NoInterface(String),
    /// A reply lacks what the request asks for.
    Malformed { request: &'static str, what: &'static str },
}

impl NetlinkError {
    /// The errno, for the kernel's refusals and failed socket calls.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            NetlinkError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

impl fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetlinkError::Kernel { request, errno, message } => {
                write!(f, "{request}: the kernel answered {}", errno_name(*errno))?;
                match message {
                    Some(m) => write!(f, ": {m}"),
                    None => write!(f, ": {}", io::Error::from_raw_os_error(*errno)),
                }
            }
            NetlinkError::Io { request, call, source } => match source.raw_os_error() {
                Some(e) => write!(f, "{request}: {call} failed with {}: {source}", errno_name(e)),
                None => write!(f, "{request}: {call} failed: {source}"),
            },
            NetlinkError::NoInterface(name) => write!(f, "no interface is named {name:?}"),
            NetlinkError::Malformed { request, what } => write!(f, "{request}: the reply {what}"),
        }
    }
}

impl std::error::Error for NetlinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NetlinkError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The symbolic name of the errnos rtnetlink answers with, the number for others.
fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ENOBUFS => "ENOBUFS",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

/// The interface named `name`: index, MAC, MTU, state and addresses.
pub fn interface(name: &str) -> Result<Link, NetlinkError> {
    let mut ifname = name.as_bytes().to_vec();
    ifname.push(0);
    let replies = request("RTM_GETLINK", RTM_GETLINK, 0, &[0; IFINFOMSG], &[(IFLA_IFNAME, &ifname)]).map_err(|e| {
        if e.errno() == Some(libc::ENODEV) {
            NetlinkError::NoInterface(name.into())
        } else {
            e
        }
    })?;
    let mut link = replies
        .first()
        .and_then(|p| parse_link(p))
        .ok_or(NetlinkError::Malformed { request: "RTM_GETLINK", what: "has no interface" })?;
    // The kernel filters an address dump by interface only under strict checking: filter here.
    for reply in request("RTM_GETADDR", RTM_GETADDR, NLM_F_DUMP, &[0; IFADDRMSG], &[])? {
        if let Some((index, ip)) = parse_addr(&reply) {
            if index == link.index {
                link.addrs.push(ip);
            }
        }
    }
    Ok(link)
}

/// The route the kernel takes to `dst` (`ip route get`): policy rules and multipath included.
pub fn route_to(dst: IpAddr) -> Result<Route, NetlinkError> {
    let (family, len) = match dst {
        IpAddr::V4(_) => (AF_INET, 32),
        IpAddr::V6(_) => (AF_INET6, 128),
    };
    let mut rtmsg = [0; RTMSG];
    rtmsg[0] = family;
    rtmsg[1] = len;
    let replies = request("RTM_GETROUTE", RTM_GETROUTE, 0, &rtmsg, &[(RTA_DST, &octets(dst))])?;
    replies
        .first()
        .and_then(|p| parse_route(dst, p))
        .ok_or(NetlinkError::Malformed { request: "RTM_GETROUTE", what: "has no output interface" })
}

/// The MAC of `ip` in the neighbour table of interface `ifindex`, if the entry is usable.
pub fn neighbour(ifindex: u32, ip: IpAddr) -> Result<Option<MacAddr>, NetlinkError> {
    match request("RTM_GETNEIGH", RTM_GETNEIGH, 0, &ndmsg(ip, ifindex, 0), &[(NDA_DST, &octets(ip))]) {
        Ok(replies) => Ok(replies.first().and_then(|p| parse_neigh(p))),
        // No entry at all.
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The output interface and next-hop MAC for `dst`. When the next hop is not resolved, asks the
/// kernel to resolve it and answers None: the caller asks again later (a [`Watcher`] says when the
/// neighbour table changes).
pub fn resolve(dst: IpAddr) -> Result<Option<(u32, MacAddr)>, NetlinkError> {
    let route = route_to(dst)?;
    let hop = route.next_hop();
    if let Some(mac) = neighbour(route.oif, hop)? {
        return Ok(Some((route.oif, mac)));
    }
    let flags = NLM_F_ACK | NLM_F_CREATE;
    match request("RTM_NEWNEIGH", RTM_NEWNEIGH, flags, &ndmsg(hop, route.oif, NTF_USE), &[(NDA_DST, &octets(hop))]) {
        Ok(_) => {}
        // Without CAP_NET_ADMIN: a datagram to the next hop makes the kernel resolve it to send it.
        Err(e) if matches!(e.errno(), Some(libc::EPERM | libc::EACCES)) => {
            poke(route.oif, hop).map_err(|source| NetlinkError::Io { request: "resolve", call: "sendto", source })?
        }
        Err(e) => return Err(e),
    }
    Ok(None)
}

/// Sends one empty UDP datagram to the discard port of `hop`, and nowhere else.
fn poke(oif: u32, hop: IpAddr) -> io::Result<()> {
    let to = match hop {
        IpAddr::V4(_) => SocketAddr::new(hop, 9),
        // A link-local next hop is only meaningful with its interface.
        IpAddr::V6(ip) => {
            let scope = if ip.is_unicast_link_local() { oif } else { 0 };
            SocketAddr::V6(SocketAddrV6::new(ip, 9, 0, scope))
        }
    };
    let from = match hop {
        IpAddr::V4(_) => SocketAddr::from(([0; 4], 0)),
        IpAddr::V6(_) => SocketAddr::from(([0; 16], 0)),
    };
    UdpSocket::bind(from)?.send_to(&[], to).map(drop)
}

/// Tells when routes, links or (IP) neighbours change, so the control plane resolves again what it
/// needs. The kernel queues notifications on the socket; [`Watcher::changed`] drains them.
pub struct Watcher {
    sock: Socket,
    buf: Vec<u8>,
}

impl Watcher {
    pub fn new() -> Result<Self, NetlinkError> {
        let io = |call| move |source| NetlinkError::Io { request: "watch", call, source };
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(io("socket"))?;
        sock.bind_auto().map_err(io("bind"))?;
        for group in [RTNLGRP_LINK, RTNLGRP_NEIGH, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE] {
            sock.add_membership(group).map_err(io("add_membership"))?;
        }
        sock.set_non_blocking(true).map_err(io("set_non_blocking"))?;
        Ok(Watcher { sock, buf: Vec::with_capacity(RECV_BUF) })
    }

    /// Drains the pending notifications without blocking: true if any says a route, a link or an
    /// IPv4/IPv6 neighbour changed, or if some were lost (the queue overflowed: anything may have).
    pub fn changed(&mut self) -> bool {
        let mut changed = false;
        loop {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => changed |= messages(&self.buf).any(|m| relevant(&m)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return changed,
                // ENOBUFS: notifications were dropped; the next recv goes on with newer ones.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => changed = true,
                Err(_) => return true,
            }
        }
    }
}

/// For polling the watcher's socket along with others.
impl AsFd for Watcher {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// A notification worth resolving again for. Bridge FDB entries also come as neighbour messages
/// (family `AF_BRIDGE`): they say nothing about IP next hops.
fn relevant(m: &Msg) -> bool {
    match m.ty {
        RTM_NEWLINK | RTM_DELLINK | RTM_NEWROUTE | RTM_DELROUTE => true,
        RTM_NEWNEIGH | RTM_DELNEIGH => matches!(m.payload.first(), Some(&AF_INET | &AF_INET6)),
        _ => false,
    }
}

/// Sends one request on a socket of its own and gathers the payloads of the replies: one message,
/// a dump's messages up to `NLMSG_DONE`, or none for an acknowledged change.
fn request(
    request: &'static str,
    ty: u16,
    flags: u16,
    fixed: &[u8],
    attrs: &[(u16, &[u8])],
) -> Result<Vec<Vec<u8>>, NetlinkError> {
    let io = |call| move |source| NetlinkError::Io { request, call, source };
    let sock = Socket::new(NETLINK_ROUTE).map_err(io("socket"))?;
    // The kernel's reason in words with its errors (Linux 4.12), without the request echoed back.
    let _ = sock.set_ext_ack(true);
    let _ = sock.set_cap_ack(true);
    sock.send(&message(ty, flags, fixed, attrs), 0).map_err(io("send"))?;
    let mut replies = Vec::new();
    let mut buf = Vec::with_capacity(RECV_BUF);
    loop {
        buf.clear();
        // MSG_TRUNC: the datagram's whole length, to tell a truncated one.
        let len = sock.recv(&mut buf, libc::MSG_TRUNC).map_err(io("recv"))?;
        if len > buf.len() {
            return Err(NetlinkError::Malformed { request, what: "is larger than the receive buffer" });
        }
        for m in messages(&buf).filter(|m| m.seq == SEQ) {
            match m.ty {
                NLMSG_ERROR | NLMSG_DONE => {
                    return match parse_error(&m) {
                        Some((0, _)) => Ok(replies),
                        Some((errno, message)) => Err(NetlinkError::Kernel { request, errno, message }),
                        None => Err(NetlinkError::Malformed { request, what: "has a short error" }),
                    }
                }
                _ => replies.push(m.payload.to_vec()),
            }
            if m.flags & NLM_F_MULTI == 0 && flags & NLM_F_ACK == 0 {
                return Ok(replies);
            }
        }
    }
}

/// A request: netlink header, the fixed header of its family, then attributes.
fn message(ty: u16, flags: u16, fixed: &[u8], attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut m = vec![0; NLMSG_HDRLEN];
    m.extend_from_slice(fixed);
    for (kind, data) in attrs {
        m.resize(align(m.len()), 0);
        m.extend_from_slice(&(4 + data.len() as u16).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(data);
    }
    m.resize(align(m.len()), 0);
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m[4..6].copy_from_slice(&ty.to_ne_bytes());
    m[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    m[8..12].copy_from_slice(&SEQ.to_ne_bytes());
    m
}

/// An `ndmsg` for `ip` on interface `ifindex`.
fn ndmsg(ip: IpAddr, ifindex: u32, flags: u8) -> [u8; NDMSG] {
    let mut h = [0; NDMSG];
    h[0] = if ip.is_ipv4() { AF_INET } else { AF_INET6 };
    h[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    h[10] = flags;
    h
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Netlink messages and attributes start on 4-byte boundaries.
fn align(len: usize) -> usize {
    (len + 3) & !3
}

fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// One netlink message of a datagram.
struct Msg<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

/// The messages of a datagram, up to the first malformed one.
fn messages(mut buf: &[u8]) -> impl Iterator<Item = Msg<'_>> {
    std::iter::from_fn(move || {
        let len = ne_u32(buf, 0)? as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let m =
            Msg { ty: ne_u16(buf, 4)?, flags: ne_u16(buf, 6)?, seq: ne_u32(buf, 8)?, payload: &buf[NLMSG_HDRLEN..len] };
        buf = buf.get(align(len)..).unwrap_or_default();
        Some(m)
    })
}

/// The attributes (type, data) of a message's tail, up to the first malformed one.
fn attributes(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = ne_u16(buf, 0)? as usize;
        if len < 4 || len > buf.len() {
            return None;
        }
        let a = (ne_u16(buf, 2)? & NLA_TYPE_MASK, &buf[4..len]);
        buf = buf.get(align(len)..).unwrap_or_default();
        Some(a)
    })
}

fn ip(family: u8, b: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        AF_INET6 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// The errno (0 for an acknowledgement) and the kernel's words of an `NLMSG_ERROR`, or of the
/// `NLMSG_DONE` that ends a dump.
fn parse_error(m: &Msg) -> Option<(i32, Option<String>)> {
    let errno = -(ne_u32(m.payload, 0)? as i32);
    if m.ty == NLMSG_DONE || m.flags & NLM_F_ACK_TLVS == 0 {
        return Some((errno, None));
    }
    let echoed = if m.flags & NLM_F_CAPPED != 0 { NLMSG_HDRLEN } else { ne_u32(m.payload, 4)? as usize };
    let text = attributes(m.payload.get(4 + align(echoed)..)?)
        .find(|&(kind, _)| kind == NLMSGERR_ATTR_MSG)
        .map(|(_, s)| String::from_utf8_lossy(s.split(|&b| b == 0).next().unwrap_or_default()).into_owned());
    Some((errno, text))
}

/// An `RTM_NEWLINK` payload, without addresses.
fn parse_link(p: &[u8]) -> Option<Link> {
    let flags = ne_u32(p, 8)?;
    let mut link = Link {
        index: ne_u32(p, 4)?,
        name: String::new(),
        mac: None,
        mtu: 0,
        running: flags & (IFF_UP | IFF_RUNNING) == IFF_UP | IFF_RUNNING,
        addrs: Vec::new(),
    };
    for (kind, data) in attributes(p.get(IFINFOMSG..)?) {
        match kind {
            IFLA_ADDRESS => link.mac = <[u8; 6]>::try_from(data).ok().map(MacAddr),
            IFLA_IFNAME => link.name = String::from_utf8_lossy(data.split(|&b| b == 0).next()?).into_owned(),
            IFLA_MTU => link.mtu = ne_u32(data, 0)?,
            _ => {}
        }
    }
    Some(link)
}

/// An `RTM_NEWADDR` payload: interface index and address. `IFA_LOCAL` is this end's address;
/// `IFA_ADDRESS` is the same but for the peer on a point-to-point link, and alone on IPv6.
fn parse_addr(p: &[u8]) -> Option<(u32, IpAddr)> {
    let family = *p.first()?;
    let (mut address, mut local) = (None, None);
    for (kind, data) in attributes(p.get(IFADDRMSG..)?) {
        match kind {
            IFA_ADDRESS => address = ip(family, data),
            IFA_LOCAL => local = ip(family, data),
            _ => {}
        }
    }
    Some((ne_u32(p, 4)?, local.or(address)?))
}

/// An `RTM_NEWROUTE` payload answering for `dst`.
fn parse_route(dst: IpAddr, p: &[u8]) -> Option<Route> {
    let family = *p.first()?;
    let mut route = Route { dst, oif: 0, gateway: None, src: None };
    for (kind, data) in attributes(p.get(RTMSG..)?) {
        match kind {
            RTA_OIF => route.oif = ne_u32(data, 0)?,
            RTA_GATEWAY => route.gateway = ip(family, data),
            // struct rtvia: the gateway's family, then its address.
            RTA_VIA => route.gateway = ip(ne_u16(data, 0)? as u8, data.get(2..)?),
            RTA_PREFSRC => route.src = ip(family, data),
            _ => {}
        }
    }
    (route.oif != 0).then_some(route)
}

/// The MAC of an `RTM_NEWNEIGH` payload if its state makes it usable.
fn parse_neigh(p: &[u8]) -> Option<MacAddr> {
    if ne_u16(p, 8)? & NUD_USABLE == 0 {
        return None;
    }
    let (_, mac) = attributes(p.get(NDMSG..)?).find(|&(kind, _)| kind == NDA_LLADDR)?;
    <[u8; 6]>::try_from(mac).ok().map(MacAddr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Bytes written as `ip` prints them in `strace -e read=`.
    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
    }

    /// The one message of a datagram.
    fn only(bytes: &[u8]) -> Msg<'_> {
        let mut all = messages(bytes);
        let m = all.next().unwrap();
        assert!(all.next().is_none());
        m
    }

    // Kernel replies (Linux 6.18, x86-64) to `ip` in a namespace: nlv-a (ifindex 2, 198.18.0.1/24,
    // 2001:2::1/64) faces 198.18.0.2 / 2001:2::2 (ee:55:b7:11:44:22); 198.19.0.0/16 goes via
    // 198.18.0.2, 198.19.2.0/24 via inet6 2001:2::2, 2001:2:0:1::/64 via 2001:2::2.

    /// `ip route get 198.19.1.1`
    const ROUTE_V4: &str = "
        70 00 00 00 18 00 00 00 d5 36 16 6b 6c 44 00 00 02 20 00 00 fe 00 00 01 00 02 00 00 08 00 0f 00
        fe 00 00 00 08 00 01 00 c6 13 01 01 08 00 04 00 02 00 00 00 08 00 07 00 c6 12 00 01 08 00 05 00
        c6 12 00 02 08 00 19 00 00 00 00 00 24 00 0c 00 02 00 00 00 2a 01 00 00 00 00 00 00 00 00 00 00
        00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00";
    /// `ip route get 198.19.2.1`: an IPv4 route over an IPv6 next hop (RTA_VIA).
    const ROUTE_VIA: &str = "
        80 00 00 00 18 00 00 00 d5 36 16 6b 77 44 00 00 02 20 00 00 fe 00 00 01 00 02 00 00 08 00 0f 00
        fe 00 00 00 08 00 01 00 c6 13 02 01 08 00 04 00 02 00 00 00 08 00 07 00 c6 12 00 01 16 00 12 00
        0a 00 20 01 00 02 00 00 00 00 00 00 00 00 00 00 00 02 00 00 08 00 19 00 00 00 00 00 24 00 0c 00
        02 00 00 00 1c 02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00";
    /// `ip -6 route get 2001:2:0:1::5`
    const ROUTE_V6: &str = "
        b0 00 00 00 18 00 00 00 d5 36 16 6b 82 44 00 00 0a 80 80 00 fe 03 00 01 00 00 00 00 08 00 0f 00
        fe 00 00 00 14 00 01 00 20 01 00 02 00 00 00 01 00 00 00 00 00 00 00 05 14 00 02 00 00 00 00 00
        00 00 00 00 00 00 00 00 00 00 00 00 14 00 07 00 20 01 00 02 00 00 00 00 00 00 00 00 00 00 00 01
        08 00 06 00 00 04 00 00 14 00 05 00 20 01 00 02 00 00 00 00 00 00 00 00 00 00 00 02 08 00 04 00
        02 00 00 00 24 00 0c 00 02 00 00 00 a6 19 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
        00 00 00 00 00 00 00 00 05 00 14 00 00 00 00 00";
    /// `ip neigh get 198.18.0.2 dev nlv-a`: STALE.
    const NEIGH_V4: &str = "
        4c 00 00 00 1c 00 00 00 d5 36 16 6b 8e 44 00 00 02 00 00 00 02 00 00 00 04 00 00 01 08 00 01 00
        c6 12 00 02 0a 00 02 00 ee 55 b7 11 44 22 00 00 08 00 04 00 04 00 00 00 14 00 03 00 ac 19 00 00
        ac 19 00 00 2e 11 00 00 01 00 00 00";
    /// `ip -6 neigh get 2001:2::2 dev nlv-a`: STALE.
    const NEIGH_V6: &str = "
        58 00 00 00 1c 00 00 00 d5 36 16 6b 99 44 00 00 0a 00 00 00 02 00 00 00 04 00 00 01 14 00 01 00
        20 01 00 02 00 00 00 00 00 00 00 00 00 00 00 02 0a 00 02 00 ee 55 b7 11 44 22 00 00 08 00 04 00
        04 00 00 00 14 00 03 00 ad 19 00 00 ad 19 00 00 97 0f 00 00 01 00 00 00";
    /// `ip neigh get 198.18.0.9 dev nlv-a`: ENOENT with the kernel's words (extended ack).
    const NO_NEIGH: &str = "
        58 00 00 00 02 00 00 02 d5 36 16 6b a4 44 00 00 fe ff ff ff 24 00 00 00 1e 00 01 00 d5 36 16 6b
        00 00 00 00 02 00 00 00 02 00 00 00 00 00 00 00 08 00 01 00 c6 12 00 09 1e 00 01 00 4e 65 69 67
        68 62 6f 75 72 20 65 6e 74 72 79 20 6e 6f 74 20 66 6f 75 6e 64 00 00 00";
    /// `ip -4 addr show dev nlv-a`: the dump's message for 198.18.0.1/24.
    const ADDR_V4: &str = "
        50 00 00 00 14 00 22 00 d6 36 16 6b af 44 00 00 02 18 80 00 02 00 00 00 08 00 01 00 c6 12 00 01
        08 00 02 00 c6 12 00 01 0a 00 03 00 6e 6c 76 2d 61 00 00 00 08 00 08 00 80 00 00 00 14 00 06 00
        ff ff ff ff ff ff ff ff 84 05 02 00 84 05 02 00";

    const PEER: MacAddr = MacAddr([0xee, 0x55, 0xb7, 0x11, 0x44, 0x22]);

    #[test]
    #[cfg(target_endian = "little")]
    fn routes_are_read_from_kernel_replies() {
        let v4 = hex(ROUTE_V4);
        let m = only(&v4);
        assert_eq!((m.ty, m.payload.len()), (RTM_NEWROUTE, 112 - NLMSG_HDRLEN));
        let dst = IpAddr::from([198, 19, 1, 1]);
        let r = parse_route(dst, m.payload).unwrap();
        let gateway = IpAddr::from([198, 18, 0, 2]);
        assert_eq!(r, Route { dst, oif: 2, gateway: Some(gateway), src: Some(IpAddr::from([198, 18, 0, 1])) });
        assert_eq!(r.next_hop(), gateway);

        let via = hex(ROUTE_VIA);
        let r = parse_route(IpAddr::from([198, 19, 2, 1]), only(&via).payload).unwrap();
        assert_eq!((r.oif, r.gateway), (2, Some("2001:2::2".parse().unwrap())));

        let v6 = hex(ROUTE_V6);
        let dst: IpAddr = "2001:2:0:1::5".parse().unwrap();
        let r = parse_route(dst, only(&v6).payload).unwrap();
        assert_eq!((r.oif, r.next_hop(), r.src), (2, "2001:2::2".parse().unwrap(), Some("2001:2::1".parse().unwrap())));

        // On-link: without RTA_GATEWAY the next hop is the destination itself.
        let on_link = Route { gateway: None, ..r };
        assert_eq!(on_link.next_hop(), dst);
        // Cut short: no output interface, no route.
        assert_eq!(parse_route(dst, &only(&v6).payload[..RTMSG + 8]), None);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn neighbours_are_usable_by_state() {
        for bytes in [NEIGH_V4, NEIGH_V6] {
            let mut b = hex(bytes);
            assert_eq!(only(&b).ty, RTM_NEWNEIGH);
            assert_eq!(parse_neigh(only(&b).payload), Some(PEER), "STALE still forwards");
            // ndm_state sits 8 bytes into the ndmsg.
            let state = NLMSG_HDRLEN + 8;
            for (nud, usable) in [(0x01, false), (0x02, true), (0x10, true), (0x20, false), (0x80, true), (0, false)] {
                b[state] = nud;
                assert_eq!(parse_neigh(only(&b).payload).is_some(), usable, "state {nud:#x}");
            }
        }
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn errors_carry_the_errno_and_the_kernels_words() {
        let b = hex(NO_NEIGH);
        let m = only(&b);
        assert_eq!(m.ty, NLMSG_ERROR);
        let (errno, text) = parse_error(&m).unwrap();
        assert_eq!((errno, text.as_deref()), (libc::ENOENT, Some("Neighbour entry not found")));
        let e = NetlinkError::Kernel { request: "RTM_GETNEIGH", errno, message: text };
        assert_eq!(e.to_string(), "RTM_GETNEIGH: the kernel answered ENOENT: Neighbour entry not found");
        assert_eq!(e.errno(), Some(libc::ENOENT));
        let bare = NetlinkError::Kernel { request: "RTM_GETROUTE", errno: libc::ENETUNREACH, message: None };
        assert!(bare.to_string().starts_with("RTM_GETROUTE: the kernel answered ENETUNREACH: Network is unreachable"));
        // An acknowledgement is an error message with errno 0; a capped one echoes the header only.
        let mut ack = message(NLMSG_ERROR, 0, &0u32.to_ne_bytes(), &[]);
        ack.extend_from_slice(&[0; NLMSG_HDRLEN]);
        ack[0] = ack.len() as u8;
        assert_eq!(parse_error(&only(&ack)), Some((0, None)));
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn addresses_and_notifications() {
        let b = hex(ADDR_V4);
        let m = only(&b);
        assert_eq!(m.flags & NLM_F_MULTI, NLM_F_MULTI);
        assert_eq!(parse_addr(m.payload), Some((2, IpAddr::from([198, 18, 0, 1]))));
        // A neighbour notification has the reply's form; a bridge FDB entry (AF_BRIDGE) is not ours.
        let mut n = hex(NEIGH_V4);
        assert!(relevant(&only(&n)));
        n[NLMSG_HDRLEN] = libc::AF_BRIDGE as u8;
        assert!(!relevant(&only(&n)));
        assert!(relevant(&only(&hex(ROUTE_V6))));
        assert!(!relevant(&only(&b)), "addresses are not watched");
    }

    #[test]
    fn requests_are_laid_out_as_the_kernel_reads_them() {
        let ip = IpAddr::from([198, 18, 0, 2]);
        let m = message(RTM_GETNEIGH, 0, &ndmsg(ip, 2, 0), &[(NDA_DST, &octets(ip))]);
        // What `ip neigh get 198.18.0.2 dev nlv-a` sends, but for the sequence number.
        let mut expected = 36u32.to_ne_bytes().to_vec();
        expected.extend_from_slice(&RTM_GETNEIGH.to_ne_bytes());
        expected.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        expected.extend_from_slice(&SEQ.to_ne_bytes());
        expected.extend_from_slice(&[0; 4]);
        expected.extend_from_slice(&[2, 0, 0, 0]);
        expected.extend_from_slice(&2u32.to_ne_bytes());
        expected.extend_from_slice(&[0; 4]);
        expected.extend_from_slice(&8u16.to_ne_bytes());
        expected.extend_from_slice(&NDA_DST.to_ne_bytes());
        expected.extend_from_slice(&[198, 18, 0, 2]);
        assert_eq!(m, expected);
        // Attributes are padded to 4 bytes: "lo\0" takes 8 with its header.
        let m = message(RTM_GETLINK, 0, &[0; IFINFOMSG], &[(IFLA_IFNAME, b"lo\0")]);
        assert_eq!(m.len(), NLMSG_HDRLEN + IFINFOMSG + 8);
        let (kind, name) = attributes(&only(&m).payload[IFINFOMSG..]).next().unwrap();
        assert_eq!((kind, name), (IFLA_IFNAME, &b"lo\0"[..]));
    }

    /// Real calls on this process's loopback: they read kernel tables and send nothing.
    #[test]
    fn loopback_from_the_kernel() {
        let lo = interface("lo").unwrap();
        assert_eq!((lo.index, lo.name.as_str(), lo.mac), (1, "lo", Some(MacAddr([0; 6]))));
        assert!(lo.mtu > 0);
        if lo.running {
            assert!(lo.addrs.contains(&IpAddr::from(Ipv4Addr::LOCALHOST)), "{lo:?}");
        }
        let r = route_to(IpAddr::from(Ipv4Addr::LOCALHOST)).unwrap();
        assert_eq!((r.oif, r.gateway, r.next_hop()), (1, None, IpAddr::from(Ipv4Addr::LOCALHOST)));
        match interface("no-such-if0") {
            Err(NetlinkError::NoInterface(name)) => assert_eq!(name, "no-such-if0"),
            other => panic!("{other:?}"),
        }
        // A neighbour lookup is a read: whatever the table holds for ::1 on lo, it answers.
        neighbour(1, IpAddr::from(Ipv6Addr::LOCALHOST)).unwrap();
        let mut w = Watcher::new().unwrap();
        w.changed();
    }

    /// By hand, inside a namespace laid out as the replies above were (two namespaces, a veth pair
    /// nlv-a / nlv-b, the addresses and routes listed there), with no neighbour entries on nlv-a:
    /// `ip netns exec nl-a target/debug/deps/lb_dpdk-* netlink --ignored --nocapture`. Sends ARP
    /// and neighbour solicitations (or datagrams to port 9) to 198.18.0.2 and 2001:2::2 only, and
    /// adds and removes a route in the namespace.
    #[test]
    #[ignore = "needs the nl-a namespace"]
    fn resolves_in_a_namespace() {
        let link = interface("nlv-a").unwrap();
        assert!(link.addrs.contains(&IpAddr::from([198, 18, 0, 1])), "{link:?}");
        let mut watcher = Watcher::new().unwrap();
        while watcher.changed() {}
        for dst in ["198.19.1.1", "2001:2:0:1::5", "198.19.2.1", "198.18.0.2"] {
            let dst: IpAddr = dst.parse().unwrap();
            let route = route_to(dst).unwrap();
            let first = resolve(dst).unwrap();
            let mut answer = first;
            for _ in 0..100 {
                if answer.is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
                answer = resolve(dst).unwrap();
            }
            println!("{dst}: {route:?} first {first:?}, then {answer:?}");
            let (oif, mac) = answer.expect("resolved within a second");
            assert_eq!(oif, link.index);
            assert_ne!(mac, MacAddr([0; 6]));
        }
        assert!(watcher.changed(), "the neighbour entries changed");
        // A route added and removed.
        let ip =
            |args: &str| assert!(std::process::Command::new("ip").args(args.split(' ')).status().unwrap().success());
        ip("route add 198.19.3.0/24 via 198.18.0.2");
        ip("route del 198.19.3.0/24");
        assert!(watcher.changed(), "the routes changed");
    }
}

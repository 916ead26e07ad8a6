//! A node file: this node's role, addresses and knobs, plus the load balancer (Azure's resource
//! JSON, inline or in a file of its own). `lb-dpdk` runs one; the C ABI creates instances from one.
//!
//! ```text
//! {
//!   "role": "mux",                      // or "host"
//!   "mac": "02:00:00:00:05:0a",         // this node's port (absent: the fabric interface's)
//!   "gatewayMac": "02:00:00:00:00:01",  // the fabric router (absent: learnt from the kernel)
//!   "underlay": "172.16.5.10",          // this node's underlay address
//!   "muxes": ["172.16.5.10"],           // host: the MUXes responses go back through
//!   "returnPath": "mux",                // host: "mux" or "direct" (DSR)
//!   "interfaces": {"fabric": "eth0", "backends": ["tap0"]},  // the live ports' interfaces
//!   "bgp": {"localAsn": 65001, "peers": [{"address": "172.16.5.1", "asn": 65000}]},  // MUX: VIPs over BGP
//!   "loadBalancerFile": "basic-web-app.json"   // or "loadBalancer": { ... } inline
//! }
//! ```
//! or, for a node that takes its load balancers from the control plane, in place of
//! `loadBalancer`/`loadBalancerFile`: `"etcd": {"endpoints": ["http://198.18.30.2:2379"],
//! "nodeId": "mux1", "prefix": "/lb/v1/", "leaseSeconds": 5}` (see [`Etcd`]).
//! Optional: `hashSeed` (42), `flowCapacity` (1,000,000), `maglevSize` (65537), `ttl` (64), `mtu`
//! (9000), `snatQuarantineSeconds` (60, at most 86,400), `resetOnSnatExhaustion` (false),
//! `mssClamp` (host: none; 536 to 9,000), `mac`, `gatewayMac`, `interfaces`, `bgp` (MUX: see
//! [`Bgp`]). A relative `loadBalancerFile` is read from the node file's directory.

use std::borrow::ToOwned;
use std::fmt;
use std::format;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::vec::Vec;

use serde::Deserialize;

use super::json::from_json;
use super::settings::{
    HostNode, MuxNode, NodeBase, NodeRole, ReturnPath, MSS_CLAMP_MAX, MSS_CLAMP_MIN, MSS_CLAMP_MIN_IPV6,
};
use super::{ConfigError, LoadBalancer};
use crate::wire::MacAddr;

/// Which data path a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The MUX.
    Mux,
    /// The host agent.
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ReturnPathJson {
    Mux,
    Direct,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NodeJson {
    role: Role,
    mac: Option<String>,
    gateway_mac: Option<String>,
    underlay: IpAddr,
    #[serde(default)]
    muxes: Vec<IpAddr>,
    return_path: Option<ReturnPathJson>,
    hash_seed: Option<u64>,
    flow_capacity: Option<usize>,
    maglev_size: Option<u32>,
    ttl: Option<u8>,
    mtu: Option<u16>,
    snat_quarantine_seconds: Option<u32>,
    reset_on_snat_exhaustion: Option<bool>,
    mss_clamp: Option<u16>,
    interfaces: Option<InterfacesJson>,
    bgp: Option<BgpJson>,
    load_balancer: Option<serde_json::Value>,
    load_balancer_file: Option<PathBuf>,
    state_directory: Option<PathBuf>,
    etcd: Option<EtcdJson>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EtcdJson {
    #[serde(default)]
    endpoints: Vec<String>,
    node_id: String,
    prefix: Option<String>,
    lease_seconds: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InterfacesJson {
    fabric: String,
    #[serde(default)]
    backends: Vec<String>,
    #[serde(default)]
    management: Vec<IpAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BgpJson {
    local_asn: u32,
    #[serde(default)]
    peers: Vec<BgpPeerJson>,
    router_id: Option<Ipv4Addr>,
    hold_time_seconds: Option<u16>,
    drain_seconds: Option<u32>,
    exabgp: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BgpPeerJson {
    address: IpAddr,
    asn: u32,
}

/// A MUX's route announcement (the node file's `bgp`): the program runs ExaBGP with these peerings
/// and announces each VIP (a /32 or /128, next hop self) while it can serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bgp {
    /// This MUX's AS number (`localAsn`).
    pub local_asn: u32,
    /// The routers it peers with (at least one).
    pub peers: Vec<BgpPeer>,
    /// BGP identifier (`routerId`); default: the underlay address, if it is IPv4.
    pub router_id: Ipv4Addr,
    /// Hold time offered (`holdTimeSeconds`, default 3; keepalives every third of it).
    pub hold_time_secs: u16,
    /// Seconds the MUX keeps forwarding after it withdrew everything on SIGTERM/SIGINT
    /// (`drainSeconds`, default 5), while the routers move the flows to the other MUXes.
    pub drain_secs: u32,
    /// The ExaBGP program (`exabgp`, default `/usr/sbin/exabgp`, Debian's).
    pub exabgp: PathBuf,
}

/// One BGP neighbour of a MUX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BgpPeer {
    /// The router's address (the peering's remote end).
    pub address: IpAddr,
    /// Its AS number.
    pub asn: u32,
}

/// The hold times a node file may give: RFC 4271 allows 0 (no keepalives) or at least 3; 0 is
/// refused, since then nothing but a closed TCP connection would ever take a dead MUX's routes away.
pub const BGP_HOLD_TIME_MIN: u16 = 3;
/// The longest drain a node file may give (an hour).
pub const BGP_DRAIN_MAX_SECS: u32 = 3600;
/// Debian's ExaBGP.
pub const EXABGP_DEFAULT: &str = "/usr/sbin/exabgp";

/// Where a node takes its load balancers from and reports to (the node file's `etcd`): the
/// control plane's etcd. The node runs the union of every load balancer stored under `prefix`,
/// writes its status at `<prefix>nodes/<nodeId>` under a lease of `lease_secs`, and a host agent
/// its backends' health at `<prefix>health/<nodeId>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Etcd {
    /// The etcd members' client URLs (`http://host:port`; etcd's JSON gateway over plain HTTP).
    pub endpoints: Vec<String>,
    /// This node's id in the keys (`nodeId`): 1 to 64 letters, digits, `_`, `.` and `-`.
    pub node_id: String,
    /// The key prefix (`prefix`, default `/lb/v1/`), ending with `/`.
    pub prefix: String,
    /// The TTL of the node's lease (`leaseSeconds`, default 5): its status and health keys go this
    /// long after it stops renewing it.
    pub lease_secs: u32,
}

/// The default key prefix of the `etcd` section (lb-control's).
pub const ETCD_DEFAULT_PREFIX: &str = "/lb/v1/";
/// The default lease TTL of the `etcd` section, in seconds.
pub const ETCD_LEASE_DEFAULT_SECS: u32 = 5;
/// The shortest lease: renewals go every third of it, and etcd needs a moment to answer each.
pub const ETCD_LEASE_MIN_SECS: u32 = 2;
/// The longest lease: a node gone is noticed within it.
pub const ETCD_LEASE_MAX_SECS: u32 = 60;
/// The longest node id.
pub const ETCD_NODE_ID_MAX: usize = 64;

/// The Linux interfaces a node's live ports run on (the node file's `interfaces`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interfaces {
    /// The interface to the fabric (the underlay, the router).
    pub fabric: String,
    /// A host agent's interfaces to its backends (none on a MUX).
    pub backends: Vec<String>,
    /// Addresses the backends reach through the host's kernel, not the load balancer: besides the
    /// host's own and its MUXes' underlay addresses, which always are, the other addresses of
    /// health probers (a MUX probing IPv6 backends from its IPv6 address) and management stations.
    pub management: Vec<IpAddr>,
}

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The role, with this node's settings for it.
    pub role: NodeRole,
    /// The load balancer: the node file's, or, with `etcd`, none (an empty one) until the node
    /// has read etcd.
    pub lb: LoadBalancer,
    /// The node file has no `mac`: the program takes the fabric interface's MAC and puts it in
    /// the role's `base.mac` (00:00:00:00:00:00 until then) before it builds the node.
    pub mac_from_interface: bool,
    /// The node file has no `gatewayMac`: the program learns the next hops from the kernel's
    /// routing and neighbour tables (`Node::set_gateway_mac`, `Node::set_next_hop`); until then
    /// the gateway MAC is 00:00:00:00:00:00 and frames that would leave for it are dropped as
    /// `no_next_hop`.
    pub gateway_from_kernel: bool,
    /// The interfaces of the live ports, if the node file names them.
    pub interfaces: Option<Interfaces>,
    /// A MUX's route announcement over BGP, if the node file has a `bgp` section.
    pub bgp: Option<Bgp>,
    /// Where the program keeps what must outlive it (a MUX: the pools it ran before the last
    /// change, for second chances after a restart); a relative path is the node file's
    /// directory's. None: nothing is kept.
    pub state_directory: Option<PathBuf>,
    /// The control plane the node takes its load balancers from, if the node file has an `etcd`
    /// section (then it has no `loadBalancer` of its own).
    pub etcd: Option<Etcd>,
}

impl NodeConfig {
    /// Which data path the node runs.
    pub fn kind(&self) -> Role {
        match self.role {
            NodeRole::Mux(_) => Role::Mux,
            NodeRole::Host(_) => Role::Host,
        }
    }
}

/// Why a configuration file was refused.
#[derive(Debug)]
pub enum NodeError {
    /// The file could not be read.
    Io(PathBuf, std::io::Error),
    /// The node part is not valid JSON of the expected shape.
    Json(PathBuf, serde_json::Error),
    /// A field of the node part is wrong.
    Field(&'static str, String),
    /// The load balancer is invalid.
    LoadBalancer(ConfigError),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            NodeError::Json(p, e) => write!(f, "{}: {e}", p.display()),
            NodeError::Field(field, problem) => write!(f, "node: {field}: {problem}"),
            NodeError::LoadBalancer(e) => write!(f, "loadBalancer: {e}"),
        }
    }
}

impl std::error::Error for NodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NodeError::Io(_, e) => Some(e),
            NodeError::Json(_, e) => Some(e),
            NodeError::Field(..) => None,
            NodeError::LoadBalancer(e) => Some(e),
        }
    }
}

fn mac(field: &'static str, s: &str) -> Result<MacAddr, NodeError> {
    let parts: Vec<&str> = s.split(':').collect();
    let bad = || NodeError::Field(field, format!("'{s}' is not a MAC address (aa:bb:cc:dd:ee:ff)"));
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(MacAddr(m))
}

/// Reads and validates a node file (a relative `loadBalancerFile` is read from its directory).
pub fn load(path: &Path) -> Result<NodeConfig, NodeError> {
    let text = std::fs::read_to_string(path).map_err(|e| NodeError::Io(path.to_owned(), e))?;
    parse(&text, path.parent().unwrap_or(Path::new(".")), path)
}

/// Parses a node file's text; a relative `loadBalancerFile` is read from `dir`; `name` names the
/// text in errors.
pub fn parse(text: &str, dir: &Path, name: &Path) -> Result<NodeConfig, NodeError> {
    let mut j: NodeJson = serde_json::from_str(text).map_err(|e| NodeError::Json(name.to_owned(), e))?;
    let etcd = etcd(&mut j)?;
    let lb = match etcd {
        Some(_) => LoadBalancer::default(),
        None => load_balancer(&j, dir)?,
    };
    let interfaces = interfaces(&mut j)?;
    let bgp = bgp(&mut j)?;
    let (mac_from_interface, gateway_from_kernel) = (j.mac.is_none(), j.gateway_mac.is_none());
    let state_directory = j.state_directory.take().map(|d| dir.join(d));
    let role = match j.role {
        Role::Mux => NodeRole::Mux(mux_settings(&j)?),
        Role::Host => NodeRole::Host(host_settings(j)?),
    };
    Ok(NodeConfig { role, lb, mac_from_interface, gateway_from_kernel, interfaces, bgp, state_directory, etcd })
}

/// An AS number a peering may carry: 0 and 65535/4294967295 are reserved (RFC 7607, RFC 7300) and
/// 23456 is AS_TRANS (RFC 6793), the stand-in for a 4-byte ASN towards 2-byte speakers.
fn asn(field: &'static str, what: &str, n: u32) -> Result<u32, NodeError> {
    if n == 0 || n == 23_456 || n == 65_535 || n == u32::MAX {
        return Err(NodeError::Field(
            "bgp",
            format!("{field}: {what}{n} is reserved (0, 23456 AS_TRANS, 65535 and 4294967295 are not AS numbers)"),
        ));
    }
    Ok(n)
}

/// A MUX's `bgp` section, checked.
fn bgp(j: &mut NodeJson) -> Result<Option<Bgp>, NodeError> {
    let Some(b) = j.bgp.take() else { return Ok(None) };
    let field = |problem: String| NodeError::Field("bgp", problem);
    if j.role != Role::Mux {
        return Err(field("a MUX's setting: a host agent announces no route".into()));
    }
    let local_asn = asn("localAsn", "", b.local_asn)?;
    if b.peers.is_empty() {
        return Err(field("peers: at least one router to announce the VIPs to".into()));
    }
    let mut peers: Vec<BgpPeer> = Vec::new();
    for (i, p) in b.peers.iter().enumerate() {
        let a = p.address;
        if a.is_unspecified() || a.is_multicast() || a == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return Err(field(format!("peers[{i}].address: {a} is not a unicast address")));
        }
        if peers.iter().any(|q| q.address == a) {
            return Err(field(format!("peers[{i}].address: {a} is listed twice")));
        }
        let what = format!("peer {a}: ");
        peers.push(BgpPeer { address: a, asn: asn("asn", &what, p.asn)? });
    }
    let router_id = match (b.router_id, j.underlay) {
        (Some(id), _) => id,
        (None, IpAddr::V4(u)) => u,
        (None, IpAddr::V6(_)) => return Err(field("routerId: required when the underlay is IPv6".into())),
    };
    if router_id.is_unspecified() || router_id == Ipv4Addr::BROADCAST {
        return Err(field(format!("routerId: {router_id} is not a valid BGP identifier")));
    }
    let hold_time_secs = b.hold_time_seconds.unwrap_or(3);
    if hold_time_secs < BGP_HOLD_TIME_MIN {
        return Err(field(format!(
            "holdTimeSeconds: {hold_time_secs} is outside {BGP_HOLD_TIME_MIN}..=65535 (0, no hold timer, would keep \
             a dead MUX's routes until its TCP connection closed)"
        )));
    }
    let drain_secs = b.drain_seconds.unwrap_or(5);
    if drain_secs > BGP_DRAIN_MAX_SECS {
        return Err(field(format!("drainSeconds: {drain_secs} is more than {BGP_DRAIN_MAX_SECS} (an hour)")));
    }
    let exabgp = b.exabgp.unwrap_or_else(|| PathBuf::from(EXABGP_DEFAULT));
    if exabgp.as_os_str().is_empty() {
        return Err(field("exabgp: an empty path".into()));
    }
    Ok(Some(Bgp { local_asn, peers, router_id, hold_time_secs, drain_secs, exabgp }))
}

/// The `etcd` section, checked; a node file with it has no load balancer of its own.
fn etcd(j: &mut NodeJson) -> Result<Option<Etcd>, NodeError> {
    let Some(e) = j.etcd.take() else { return Ok(None) };
    let field = |problem: String| NodeError::Field("etcd", problem);
    if j.load_balancer.is_some() || j.load_balancer_file.is_some() {
        return Err(field(
            "the load balancers come from etcd: a node file with `etcd` has no loadBalancer or loadBalancerFile".into(),
        ));
    }
    if e.endpoints.is_empty() {
        return Err(field("endpoints: at least one etcd member's client URL (http://host:port)".into()));
    }
    let mut endpoints: Vec<String> = Vec::new();
    for (i, url) in e.endpoints.iter().enumerate() {
        let url = endpoint(url).map_err(|problem| field(format!("endpoints[{i}]: '{url}' {problem}")))?;
        if endpoints.contains(&url) {
            return Err(field(format!("endpoints[{i}]: {url} is listed twice")));
        }
        endpoints.push(url);
    }
    let id_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if e.node_id.is_empty() || e.node_id.len() > ETCD_NODE_ID_MAX || !e.node_id.chars().all(id_char) {
        return Err(field(format!(
            "nodeId: '{}' is not 1 to {ETCD_NODE_ID_MAX} letters, digits, '_', '.' or '-'",
            e.node_id
        )));
    }
    let mut prefix = e.prefix.unwrap_or_else(|| ETCD_DEFAULT_PREFIX.to_owned());
    if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_graphic()) {
        return Err(field(format!("prefix: '{prefix}' is not a key prefix (printable ASCII, no blanks)")));
    }
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    let lease_secs = e.lease_seconds.unwrap_or(ETCD_LEASE_DEFAULT_SECS);
    if !(ETCD_LEASE_MIN_SECS..=ETCD_LEASE_MAX_SECS).contains(&lease_secs) {
        return Err(field(format!(
            "leaseSeconds: {lease_secs} is outside {ETCD_LEASE_MIN_SECS}..={ETCD_LEASE_MAX_SECS}"
        )));
    }
    Ok(Some(Etcd { endpoints, node_id: e.node_id, prefix, lease_secs }))
}

/// An etcd client URL, `http://host[:port]` with an optional final `/` (dropped); on refusal,
/// why. The gateway is spoken over plain HTTP, to the member's root.
fn endpoint(url: &str) -> Result<String, &'static str> {
    let Some(authority) = url.strip_prefix("http://") else {
        return Err("is not http://host:port (the etcd client speaks plain HTTP)");
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.is_empty() {
        return Err("has no host");
    }
    if !authority.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']')) {
        return Err("has more than a host and a port");
    }
    let port = match authority.rsplit_once(':') {
        // An IPv6 literal without a port: its colons are inside the brackets.
        Some((_, tail)) if tail.ends_with(']') => None,
        Some((host, port)) if !host.is_empty() => Some(port),
        Some(_) => return Err("has no host"),
        None => None,
    };
    if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
        return Err("has a port outside 1..=65535");
    }
    Ok(std::format!("http://{authority}"))
}

/// The live ports' interfaces: a fabric interface, and a host agent's backends' interfaces.
fn interfaces(j: &mut NodeJson) -> Result<Option<Interfaces>, NodeError> {
    let Some(i) = j.interfaces.take() else { return Ok(None) };
    if i.fabric.is_empty() || i.backends.iter().any(String::is_empty) {
        return Err(NodeError::Field("interfaces", "an interface name is empty".into()));
    }
    if j.role == Role::Mux && !i.backends.is_empty() {
        return Err(NodeError::Field("interfaces", "a MUX has no backend interfaces".into()));
    }
    if i.backends.contains(&i.fabric) {
        return Err(NodeError::Field(
            "interfaces",
            format!("'{}' is both the fabric and a backend interface", i.fabric),
        ));
    }
    if j.role == Role::Mux && !i.management.is_empty() {
        return Err(NodeError::Field("interfaces", "management addresses are a host agent's".into()));
    }
    Ok(Some(Interfaces { fabric: i.fabric, backends: i.backends, management: i.management }))
}

/// The load balancer, inline or from its own file.
fn load_balancer(j: &NodeJson, dir: &Path) -> Result<LoadBalancer, NodeError> {
    let lb_text = match (&j.load_balancer, &j.load_balancer_file) {
        (Some(v), None) => v.to_string(),
        (None, Some(f)) => {
            let f = if f.is_relative() { dir.join(f) } else { f.clone() };
            std::fs::read_to_string(&f).map_err(|e| NodeError::Io(f, e))?
        }
        _ => return Err(NodeError::Field("loadBalancer", "exactly one of loadBalancer and loadBalancerFile".into())),
    };
    from_json(&lb_text).map_err(NodeError::LoadBalancer)
}

/// The settings both roles share.
fn base_settings(j: &NodeJson) -> Result<NodeBase, NodeError> {
    let flow_capacity = j.flow_capacity.unwrap_or(1_000_000);
    if flow_capacity == 0 {
        return Err(NodeError::Field("flowCapacity", "at least 1".into()));
    }
    let unknown = MacAddr::default();
    Ok(NodeBase {
        mac: j.mac.as_deref().map_or(Ok(unknown), |m| mac("mac", m))?,
        gateway_mac: j.gateway_mac.as_deref().map_or(Ok(unknown), |m| mac("gatewayMac", m))?,
        underlay: j.underlay,
        ttl: j.ttl.unwrap_or(64),
        mtu: j.mtu.unwrap_or(9000),
        hash_seed: j.hash_seed.unwrap_or(42),
        flow_capacity,
    })
}

fn mux_settings(j: &NodeJson) -> Result<MuxNode, NodeError> {
    if j.mss_clamp.is_some() {
        return Err(NodeError::Field("mssClamp", "a host agent's setting: a MUX does not clamp the MSS".into()));
    }
    Ok(MuxNode { base: base_settings(j)?, maglev_size: j.maglev_size.unwrap_or(crate::tables::DEFAULT_TABLE_SIZE) })
}

fn host_settings(j: NodeJson) -> Result<HostNode, NodeError> {
    let base = base_settings(&j)?;
    let return_path = match j.return_path.unwrap_or(ReturnPathJson::Mux) {
        ReturnPathJson::Mux => ReturnPath::ViaMux,
        ReturnPathJson::Direct => ReturnPath::Direct,
    };
    if return_path == ReturnPath::ViaMux && j.muxes.is_empty() {
        return Err(NodeError::Field(
            "muxes",
            "a host returning traffic via MUX needs at least one MUX address".into(),
        ));
    }
    let snat_quarantine_secs = j.snat_quarantine_seconds.unwrap_or(60);
    if snat_quarantine_secs > crate::tables::snat::MAX_QUARANTINE_SECS {
        return Err(NodeError::Field(
            "snatQuarantineSeconds",
            alloc::format!("at most {} (a day)", crate::tables::snat::MAX_QUARANTINE_SECS),
        ));
    }
    if let Some(mss) = j.mss_clamp.filter(|m| !(MSS_CLAMP_MIN..=MSS_CLAMP_MAX).contains(m)) {
        return Err(NodeError::Field(
            "mssClamp",
            format!(
                "{mss} is outside {MSS_CLAMP_MIN}..={MSS_CLAMP_MAX} (IPv6 segments are clamped to no less than \
                 {MSS_CLAMP_MIN_IPV6})"
            ),
        ));
    }
    Ok(HostNode {
        base,
        muxes: j.muxes,
        return_path,
        snat_quarantine_secs,
        reset_on_snat_exhaustion: j.reset_on_snat_exhaustion.unwrap_or(false),
        mss_clamp: j.mss_clamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples() -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
    }

    #[test]
    fn example_node_files_load() {
        let c = load(&examples().join("demo-mux.node.json")).unwrap();
        assert_eq!(c.kind(), Role::Mux);
        let NodeRole::Mux(mux) = &c.role else { panic!("{:?}", c.role) };
        assert_eq!(mux.base.mac, MacAddr([2, 0, 0, 0, 5, 0x0a]));
        assert_eq!(mux.maglev_size, crate::tables::DEFAULT_TABLE_SIZE);
        assert_eq!(c.lb.name, "DemoLB");
    }

    #[test]
    fn bad_node_files_are_refused_with_the_field() {
        let dir = examples();
        let lb = std::fs::read_to_string(dir.join("basic-web-app.json")).unwrap();
        let node = |extra: &str| {
            format!(
                r#"{{"role":"host","mac":"02:00:00:00:0a:14","gatewayMac":"02:00:00:00:00:01","underlay":"172.16.10.21"{extra},"loadBalancer":{lb}}}"#
            )
        };
        let host = |text: &str| match parse(text, &dir, Path::new("t")).map(|c| c.role) {
            Ok(NodeRole::Host(h)) => Ok(h),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        let ok = host(&node(r#","muxes":["172.16.5.10"]"#)).unwrap();
        assert_eq!((ok.return_path, ok.muxes.len()), (ReturnPath::ViaMux, 1));
        let direct = host(&node(r#","returnPath":"direct""#)).unwrap();
        assert_eq!(direct.return_path, ReturnPath::Direct);
        let e = parse(&node(""), &dir, Path::new("t")).unwrap_err();
        assert!(matches!(e, NodeError::Field("muxes", _)), "{e}");
        let e = parse(&node(r#","muxes":["172.16.5.10"],"flowCapacity":0"#), &dir, Path::new("t")).unwrap_err();
        assert!(matches!(e, NodeError::Field("flowCapacity", _)), "{e}");
        let e = parse(&node(r#","muxes":["172.16.5.10"],"snatQuarantineSeconds":86401"#), &dir, Path::new("t"))
            .unwrap_err();
        assert!(matches!(e, NodeError::Field("snatQuarantineSeconds", _)), "{e}");
        let day = host(&node(r#","muxes":["172.16.5.10"],"snatQuarantineSeconds":86400"#));
        assert_eq!(day.unwrap().snat_quarantine_secs, 86_400);
        let bad_mac = node(r#","muxes":["172.16.5.10"]"#).replace("02:00:00:00:0a:14", "02:00:00:0a:14");
        assert!(matches!(parse(&bad_mac, &dir, Path::new("t")), Err(NodeError::Field("mac", _))));
        let unknown = node(r#","muxes":["172.16.5.10"],"colour":"blue""#);
        assert!(matches!(parse(&unknown, &dir, Path::new("t")), Err(NodeError::Json(..))));
        let both = r#"{"role":"mux","mac":"02:00:00:00:05:0a","gatewayMac":"02:00:00:00:00:01","underlay":"172.16.5.10","loadBalancerFile":"x.json","loadBalancer":{}}"#;
        assert!(matches!(parse(both, &dir, Path::new("t")), Err(NodeError::Field("loadBalancer", _))));
        let missing = both.replace(r#","loadBalancer":{}"#, "");
        assert!(matches!(parse(&missing, &dir, Path::new("t")), Err(NodeError::Io(..))));
    }

    #[test]
    fn macs_interfaces_and_the_mss_clamp() {
        let dir = examples();
        let lb = std::fs::read_to_string(dir.join("basic-web-app.json")).unwrap();
        let file = |role: &str, fields: &str| {
            format!(
                r#"{{"role":"{role}","underlay":"172.16.10.21","muxes":["172.16.5.10"]{fields},"loadBalancer":{lb}}}"#
            )
        };
        let load = |text: &str| parse(text, &dir, Path::new("t"));
        // An old node file: both MACs given, no interfaces, no clamp.
        let old = load(&file("host", r#","mac":"02:00:00:00:0a:14","gatewayMac":"02:00:00:00:00:01""#)).unwrap();
        assert!(!old.mac_from_interface && !old.gateway_from_kernel && old.interfaces.is_none());
        assert_eq!(old.role.base().gateway_mac, MacAddr([2, 0, 0, 0, 0, 1]));
        let NodeRole::Host(h) = &old.role else { panic!() };
        assert_eq!(h.mss_clamp, None);
        // Neither MAC: both unknown until the program sets them.
        let live = load(&file(
            "host",
            r#","interfaces":{"fabric":"eth0","backends":["tap0","tap1"],"management":["2001:2::2"]},"mssClamp":1440"#,
        ))
        .unwrap();
        assert!(live.mac_from_interface && live.gateway_from_kernel);
        assert_eq!((live.role.base().mac, live.role.base().gateway_mac), (MacAddr::default(), MacAddr::default()));
        let want = Interfaces {
            fabric: "eth0".into(),
            backends: std::vec!["tap0".into(), "tap1".into()],
            management: std::vec!["2001:2::2".parse().unwrap()],
        };
        assert_eq!(live.interfaces, Some(want));
        let NodeRole::Host(h) = &live.role else { panic!() };
        assert_eq!(h.mss_clamp, Some(1440));
        let mux = load(&file("mux", r#","interfaces":{"fabric":"eth0"}"#)).unwrap();
        assert_eq!(mux.interfaces.unwrap().backends, Vec::<String>::new());
        // Refused, by field.
        for (role, fields, field) in [
            ("mux", r#","interfaces":{"fabric":"eth0","backends":["tap0"]}"#, "interfaces"),
            ("mux", r#","interfaces":{"fabric":"eth0","management":["2001:2::2"]}"#, "interfaces"),
            ("host", r#","interfaces":{"fabric":"eth0","backends":["eth0"]}"#, "interfaces"),
            ("host", r#","interfaces":{"fabric":""}"#, "interfaces"),
            ("host", r#","mssClamp":535"#, "mssClamp"),
            ("host", r#","mssClamp":9001"#, "mssClamp"),
            ("mux", r#","mssClamp":1440"#, "mssClamp"),
            ("host", r#","gatewayMac":"02:00:00:00:00""#, "gatewayMac"),
        ] {
            match load(&file(role, fields)) {
                Err(NodeError::Field(f, _)) => assert_eq!(f, field, "{fields}"),
                other => panic!("{fields}: {other:?}"),
            }
        }
        assert!(matches!(load(&file("host", r#","interfaces":{"backends":[]}"#)), Err(NodeError::Json(..))));
        assert!(load(&file("host", r#","mssClamp":536"#)).is_ok());
        assert!(load(&file("host", r#","mssClamp":9000"#)).is_ok());
    }
    #[test]
    fn the_bgp_section() {
        let dir = examples();
        let lb = std::fs::read_to_string(dir.join("basic-web-app.json")).unwrap();
        let file = |role: &str, bgp: &str| {
            format!(
                r#"{{"role":"{role}","underlay":"198.18.2.2","muxes":["198.18.2.2"],"bgp":{bgp},"loadBalancer":{lb}}}"#
            )
        };
        let load = |text: &str| parse(text, &dir, Path::new("t"));
        // The least: an AS number and a peer; the rest defaults.
        let least = load(&file("mux", r#"{"localAsn":65001,"peers":[{"address":"198.18.2.1","asn":65000}]}"#)).unwrap();
        let want = Bgp {
            local_asn: 65001,
            peers: std::vec![BgpPeer { address: "198.18.2.1".parse().unwrap(), asn: 65000 }],
            router_id: Ipv4Addr::new(198, 18, 2, 2),
            hold_time_secs: 3,
            drain_secs: 5,
            exabgp: PathBuf::from(EXABGP_DEFAULT),
        };
        assert_eq!(least.bgp, Some(want));
        let full = load(&file(
            "mux",
            r#"{"localAsn":4200000000,"peers":[{"address":"198.18.2.1","asn":65000},{"address":"2001:2:0:2::1","asn":65000}],
               "routerId":"10.0.0.1","holdTimeSeconds":9,"drainSeconds":0,"exabgp":"/opt/exabgp/bin/exabgp"}"#,
        ))
        .unwrap()
        .bgp
        .unwrap();
        assert_eq!((full.local_asn, full.peers.len(), full.router_id), (4_200_000_000, 2, Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!((full.hold_time_secs, full.drain_secs), (9, 0));
        assert_eq!(full.exabgp, PathBuf::from("/opt/exabgp/bin/exabgp"));
        // No section: no announcement.
        assert_eq!(load(&file("mux", "null")).unwrap().bgp, None);
        // Refused, each with the field named.
        let peer = r#""peers":[{"address":"198.18.2.1","asn":65000}]"#;
        for (role, bgp, says) in [
            ("host", format!(r#"{{"localAsn":65001,{peer}}}"#), "a MUX's setting"),
            ("mux", format!(r#"{{"localAsn":0,{peer}}}"#), "localAsn: 0 is reserved"),
            ("mux", format!(r#"{{"localAsn":23456,{peer}}}"#), "localAsn: 23456 is reserved"),
            ("mux", r#"{"localAsn":65001,"peers":[]}"#.into(), "peers: at least one"),
            ("mux", r#"{"localAsn":65001}"#.into(), "peers: at least one"),
            ("mux", r#"{"localAsn":65001,"peers":[{"address":"0.0.0.0","asn":65000}]}"#.into(), "peers[0].address"),
            ("mux", r#"{"localAsn":65001,"peers":[{"address":"ff02::2","asn":65000}]}"#.into(), "peers[0].address"),
            (
                "mux",
                r#"{"localAsn":65001,"peers":[{"address":"198.18.2.1","asn":65000},{"address":"198.18.2.1","asn":65002}]}"#
                    .into(),
                "peers[1].address: 198.18.2.1 is listed twice",
            ),
            ("mux", r#"{"localAsn":65001,"peers":[{"address":"198.18.2.1","asn":65535}]}"#.into(), "asn: peer 198.18.2.1: 65535"),
            ("mux", format!(r#"{{"localAsn":65001,{peer},"routerId":"0.0.0.0"}}"#), "routerId"),
            ("mux", format!(r#"{{"localAsn":65001,{peer},"holdTimeSeconds":0}}"#), "holdTimeSeconds: 0"),
            ("mux", format!(r#"{{"localAsn":65001,{peer},"holdTimeSeconds":2}}"#), "holdTimeSeconds: 2"),
            ("mux", format!(r#"{{"localAsn":65001,{peer},"drainSeconds":3601}}"#), "drainSeconds: 3601"),
            ("mux", format!(r#"{{"localAsn":65001,{peer},"exabgp":""}}"#), "exabgp: an empty path"),
        ] {
            match load(&file(role, &bgp)) {
                Err(NodeError::Field("bgp", problem)) => assert!(problem.contains(says), "{bgp}: {problem}"),
                other => panic!("{bgp}: {other:?}"),
            }
        }
        // An IPv6 underlay has no IPv4 address to take as the router id.
        let v6 = file("mux", &format!(r#"{{"localAsn":65001,{peer}}}"#)).replace("198.18.2.2", "2001:2:0:2::2");
        match load(&v6) {
            Err(NodeError::Field("bgp", p)) => assert!(p.contains("routerId: required"), "{p}"),
            other => panic!("{other:?}"),
        }
        // Unknown fields and a misspelt one are refused by the parser.
        for bad in [format!(r#"{{"localAsn":65001,{peer},"holdTime":3}}"#), r#"{"peers":[]}"#.into()] {
            assert!(matches!(load(&file("mux", &bad)), Err(NodeError::Json(..))), "{bad}");
        }
        let e = load(&file("mux", r#"{"localAsn":65001,"peers":[{"address":"198.18.2.1","asn":65000,"port":179}]}"#));
        assert!(matches!(e, Err(NodeError::Json(..))));
    }

    #[test]
    fn the_etcd_section() {
        let dir = examples();
        let file = |role: &str, etcd: &str| {
            format!(r#"{{"role":"{role}","underlay":"198.18.2.2","muxes":["198.18.2.2"],"etcd":{etcd}}}"#)
        };
        let load = |text: &str| parse(text, &dir, Path::new("t"));
        // The least: endpoints and an id; no load balancer until etcd is read.
        let least = load(&file("mux", r#"{"endpoints":["http://198.18.30.2:2379"],"nodeId":"mux1"}"#)).unwrap();
        let want = Etcd {
            endpoints: std::vec!["http://198.18.30.2:2379".into()],
            node_id: "mux1".into(),
            prefix: ETCD_DEFAULT_PREFIX.into(),
            lease_secs: ETCD_LEASE_DEFAULT_SECS,
        };
        assert_eq!(least.etcd, Some(want));
        assert_eq!(least.lb, LoadBalancer::default(), "an empty load balancer: it forwards nothing");
        let full = load(&file(
            "host",
            r#"{"endpoints":["http://198.18.30.2:2379/","http://[2001:db8::2]:2379","http://etcd-3.lab"],
                "nodeId":"host_10.a-1","prefix":"/lab/lb","leaseSeconds":60}"#,
        ))
        .unwrap()
        .etcd
        .unwrap();
        assert_eq!(full.endpoints, ["http://198.18.30.2:2379", "http://[2001:db8::2]:2379", "http://etcd-3.lab"]);
        assert_eq!((full.node_id.as_str(), full.prefix.as_str(), full.lease_secs), ("host_10.a-1", "/lab/lb/", 60));
        let two = load(&file("mux", r#"{"endpoints":["http://[::1]"],"nodeId":"m","leaseSeconds":2}"#)).unwrap();
        assert_eq!(two.etcd.unwrap().lease_secs, 2);
        // A file-based node has none.
        let lb = std::fs::read_to_string(dir.join("basic-web-app.json")).unwrap();
        let plain = format!(r#"{{"role":"mux","underlay":"198.18.2.2","loadBalancer":{lb}}}"#);
        assert_eq!(load(&plain).unwrap().etcd, None);
        // Refused, each with the field named.
        let long = "m".repeat(65);
        for (etcd, says) in [
            (r#"{"endpoints":[],"nodeId":"mux1"}"#.to_owned(), "endpoints: at least one"),
            (r#"{"nodeId":"mux1"}"#.to_owned(), "endpoints: at least one"),
            (
                r#"{"endpoints":["https://e:2379"],"nodeId":"m"}"#.to_owned(),
                "endpoints[0]: 'https://e:2379' is not http",
            ),
            (r#"{"endpoints":["198.18.30.2:2379"],"nodeId":"m"}"#.to_owned(), "is not http://host:port"),
            (r#"{"endpoints":["http://"],"nodeId":"m"}"#.to_owned(), "has no host"),
            (r#"{"endpoints":["http://:2379"],"nodeId":"m"}"#.to_owned(), "has no host"),
            (r#"{"endpoints":["http://e:2379/v3"],"nodeId":"m"}"#.to_owned(), "more than a host and a port"),
            (r#"{"endpoints":["http://u@e:2379"],"nodeId":"m"}"#.to_owned(), "more than a host and a port"),
            (r#"{"endpoints":["http://e:0"],"nodeId":"m"}"#.to_owned(), "port outside"),
            (r#"{"endpoints":["http://e:65536"],"nodeId":"m"}"#.to_owned(), "port outside"),
            (r#"{"endpoints":["http://e:"],"nodeId":"m"}"#.to_owned(), "port outside"),
            (
                r#"{"endpoints":["http://e:2379","http://e:2379/"],"nodeId":"m"}"#.to_owned(),
                "endpoints[1]: http://e:2379 is listed twice",
            ),
            (r#"{"endpoints":["http://e"],"nodeId":""}"#.to_owned(), "nodeId: ''"),
            (r#"{"endpoints":["http://e"],"nodeId":"mux/1"}"#.to_owned(), "nodeId: 'mux/1'"),
            (r#"{"endpoints":["http://e"],"nodeId":"mux 1"}"#.to_owned(), "nodeId"),
            (format!(r#"{{"endpoints":["http://e"],"nodeId":"{long}"}}"#), "nodeId"),
            (r#"{"endpoints":["http://e"],"nodeId":"m","prefix":""}"#.to_owned(), "prefix"),
            (r#"{"endpoints":["http://e"],"nodeId":"m","prefix":"/lb v1/"}"#.to_owned(), "prefix"),
            (
                r#"{"endpoints":["http://e"],"nodeId":"m","leaseSeconds":1}"#.to_owned(),
                "leaseSeconds: 1 is outside 2..=60",
            ),
            (r#"{"endpoints":["http://e"],"nodeId":"m","leaseSeconds":61}"#.to_owned(), "leaseSeconds: 61"),
        ] {
            match load(&file("mux", &etcd)) {
                Err(NodeError::Field("etcd", problem)) => assert!(problem.contains(says), "{etcd}: {problem}"),
                other => panic!("{etcd}: {other:?}"),
            }
        }
        assert!(load(&format!(
            r#"{{"role":"mux","underlay":"198.18.2.2","etcd":{{"endpoints":["http://e"],"nodeId":"{}"}}}}"#,
            "m".repeat(64)
        ))
        .is_ok());
        // With a load balancer of its own as well: refused, whichever way it is given.
        let section = r#"{"endpoints":["http://e:2379"],"nodeId":"m"}"#;
        for own in [format!(r#","loadBalancer":{lb}"#), r#","loadBalancerFile":"basic-web-app.json""#.to_owned()] {
            let text = format!(r#"{{"role":"mux","underlay":"198.18.2.2","etcd":{section}{own}}}"#);
            match load(&text) {
                Err(NodeError::Field("etcd", problem)) => assert!(problem.contains("come from etcd"), "{problem}"),
                other => panic!("{own}: {other:?}"),
            }
        }
        // Unknown and missing fields, by the parser.
        for bad in [
            r#"{"endpoints":["http://e"],"nodeId":"m","lease":5}"#,
            r#"{"endpoints":["http://e"]}"#,
            r#"{"endpoints":"http://e","nodeId":"m"}"#,
            r#"{"endpoints":["http://e"],"nodeId":"m","leaseSeconds":-1}"#,
        ] {
            assert!(matches!(load(&file("mux", bad)), Err(NodeError::Json(..))), "{bad}");
        }
        // Without etcd, a load balancer is still required.
        let neither = r#"{"role":"mux","underlay":"198.18.2.2"}"#;
        assert!(matches!(load(neither), Err(NodeError::Field("loadBalancer", _))));
    }
}

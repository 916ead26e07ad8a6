//! A node file: this node's role, addresses and knobs, plus the load balancer (Azure's resource
//! JSON, inline or in a file of its own). `lb-dpdk` runs one; the C ABI creates instances from one.
//!
//! ```text
//! {
//!   "role": "mux",                      // or "host"
//!   "mac": "02:00:00:00:05:0a",         // this node's port
//!   "gatewayMac": "02:00:00:00:00:01",  // the fabric router
//!   "underlay": "172.16.5.10",          // this node's underlay address
//!   "muxes": ["172.16.5.10"],           // host: the MUXes responses go back through
//!   "returnPath": "mux",                // host: "mux" or "direct" (DSR)
//!   "loadBalancerFile": "basic-web-app.json"   // or "loadBalancer": { ... } inline
//! }
//! ```
//! Optional: `hashSeed` (42), `flowCapacity` (1,000,000), `maglevSize` (65537), `ttl` (64), `mtu`
//! (9000), `snatQuarantineSeconds` (60, at most 86,400), `resetOnSnatExhaustion` (false). A relative
//! `loadBalancerFile` is read from the node file's directory.

use std::borrow::ToOwned;
use std::fmt;
use std::format;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::vec::Vec;

use serde::Deserialize;

use super::json::from_json;
use super::settings::{HostNode, MuxNode, NodeBase, NodeRole, ReturnPath};
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
    mac: String,
    gateway_mac: String,
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
    load_balancer: Option<serde_json::Value>,
    load_balancer_file: Option<PathBuf>,
}

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The role, with this node's settings for it.
    pub role: NodeRole,
    /// The load balancer.
    pub lb: LoadBalancer,
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
    let j: NodeJson = serde_json::from_str(text).map_err(|e| NodeError::Json(name.to_owned(), e))?;
    let lb = load_balancer(&j, dir)?;
    let role = match j.role {
        Role::Mux => NodeRole::Mux(mux_settings(&j)?),
        Role::Host => NodeRole::Host(host_settings(j)?),
    };
    Ok(NodeConfig { role, lb })
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
    Ok(NodeBase {
        mac: mac("mac", &j.mac)?,
        gateway_mac: mac("gatewayMac", &j.gateway_mac)?,
        underlay: j.underlay,
        ttl: j.ttl.unwrap_or(64),
        mtu: j.mtu.unwrap_or(9000),
        hash_seed: j.hash_seed.unwrap_or(42),
        flow_capacity,
    })
}

fn mux_settings(j: &NodeJson) -> Result<MuxNode, NodeError> {
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
    Ok(HostNode {
        base,
        muxes: j.muxes,
        return_path,
        snat_quarantine_secs,
        reset_on_snat_exhaustion: j.reset_on_snat_exhaustion.unwrap_or(false),
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
}

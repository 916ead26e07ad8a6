//! The program side of the live ports (AF_XDP, AF_PACKET): which frames each interface's port
//! takes from the kernel, the workers over those ports, and what the node learns from the kernel
//! beside it: its MAC, the next hops of its tunnels and its gateway (the routing and neighbour
//! tables), and where each local backend lives and its MAC (a host agent).
//!
//! A MUX runs one worker per receive queue of its fabric interface. A host agent runs one worker
//! over every queue of its fabric interface and of its backends' interfaces: a connection's two
//! directions arrive on different interfaces, and its SNAT ports come from one allocator.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_core::config::node::{Interfaces, NodeConfig};
use lb_core::config::{LoadBalancer, NodeRole};
use lb_core::paths::Side;
use lb_core::wire::MacAddr;

use crate::netlink;
use crate::port::{LiveOptions, LivePort, Ownership, SetOwnership};
use crate::worker::{new_node, poll_loop, worker_pair, Control, PortInfo, WorkerHandle, Workers};

/// What the control plane keeps of the live ports.
pub struct Live {
    interfaces: Interfaces,
    /// The ownership setters of the fabric interface (one is enough: the program is per interface).
    fabric_ownership: Option<SetOwnership>,
    underlay: IpAddr,
    is_mux: bool,
    learn_gateway: bool,
    watcher: Option<netlink::Watcher>,
    last_refresh: Option<Instant>,
    /// What the workers were last told, so that only changes are sent.
    told: Told,
}

#[derive(Default, PartialEq, Eq)]
struct Told {
    next_hops: BTreeMap<IpAddr, MacAddr>,
    gateway: Option<MacAddr>,
    backends: BTreeMap<IpAddr, (u32, MacAddr)>,
}

/// How often the control plane looks the next hops up again when the kernel said nothing.
const REFRESH_PERIOD: Duration = Duration::from_secs(5);
/// How soon after an unresolved lookup (the kernel is resolving it) it looks again.
const RETRY_PERIOD: Duration = Duration::from_millis(200);

/// The node's own MAC from its fabric interface, when the node file gives none.
pub fn take_interface_mac(cfg: &mut NodeConfig) -> Result<(), String> {
    let Some(ifs) = &cfg.interfaces else {
        return Err("the live ports need `interfaces` in the node file (at least `fabric`)".into());
    };
    if cfg.mac_from_interface {
        let link = netlink::interface(&ifs.fabric).map_err(|e| format!("interface {}: {e}", ifs.fabric))?;
        let mac = link.mac.ok_or_else(|| format!("interface {} has no Ethernet address", ifs.fabric))?;
        cfg.role.base_mut().mac = mac;
    }
    Ok(())
}

/// The frames the fabric interface takes: a MUX's VIPs, and VxLAN to the node's own address.
fn fabric_ownership(lb: &LoadBalancer, underlay: IpAddr, is_mux: bool) -> Ownership {
    let mut addresses: Vec<IpAddr> = if is_mux { lb.frontends.iter().map(|f| f.address).collect() } else { Vec::new() };
    addresses.sort();
    addresses.dedup();
    Ownership { addresses, tunnel_endpoints: vec![underlay], all_except: None }
}

/// The frames a backends' interface takes: all but those to the host itself (its addresses on
/// every interface the node file names), to its MUXes (health probes' answers) and to the
/// management addresses of the node file.
fn backend_ownership(cfg: &NodeConfig) -> Result<Ownership, String> {
    let ifs = cfg.interfaces.as_ref().expect("checked at start");
    let mut keep: Vec<IpAddr> = vec![cfg.role.base().underlay];
    for name in std::iter::once(&ifs.fabric).chain(&ifs.backends) {
        let link = netlink::interface(name).map_err(|e| format!("interface {name}: {e}"))?;
        keep.extend(link.addrs);
    }
    if let NodeRole::Host(h) = &cfg.role {
        keep.extend(&h.muxes);
    }
    keep.extend(&ifs.management);
    keep.sort();
    keep.dedup();
    Ok(Ownership { all_except: Some(keep), ..Ownership::default() })
}

/// Opens the ports and starts the workers (see the module's notes).
pub fn start<P: LivePort>(
    cfg: &NodeConfig,
    options: &LiveOptions,
    stop: &Arc<AtomicBool>,
) -> Result<(Workers, Live), String> {
    let ifs = cfg.interfaces.clone().ok_or("the live ports need `interfaces` in the node file")?;
    let is_mux = matches!(cfg.role, NodeRole::Mux(_));
    if is_mux && !ifs.backends.is_empty() {
        return Err("a MUX has no backends' interfaces: `interfaces.backends` is for host agents".into());
    }
    let underlay = cfg.role.base().underlay;
    let fabric_own = fabric_ownership(&cfg.lb, underlay, is_mux);
    let fabric_index = netlink::interface(&ifs.fabric).map_err(|e| format!("interface {}: {e}", ifs.fabric))?.index;
    let queues = P::queues(&ifs.fabric).max(1);
    let mut groups: Vec<(Vec<P>, Vec<PortInfo>)> = Vec::new();
    let mut fabric_ownership = None;
    for q in 0..queues {
        let port = P::open(&ifs.fabric, q, &fabric_own, options)?;
        eprintln!("lb-dpdk: {} {} queue {q}: {}", P::NAME, ifs.fabric, port.describe());
        fabric_ownership.get_or_insert_with(|| port.ownership_handle());
        let info = PortInfo { side: if is_mux { Side::Either } else { Side::Fabric }, ifindex: fabric_index };
        if is_mux || groups.is_empty() {
            groups.push((vec![port], vec![info]));
        } else {
            groups[0].0.push(port);
            groups[0].1.push(info);
        }
    }
    if !is_mux {
        let own = backend_ownership(cfg)?;
        for name in &ifs.backends {
            let index = netlink::interface(name).map_err(|e| format!("interface {name}: {e}"))?.index;
            for q in 0..P::queues(name).max(1) {
                let port = P::open(name, q, &own, options)?;
                eprintln!("lb-dpdk: {} {name} queue {q}: {}", P::NAME, port.describe());
                groups[0].0.push(port);
                groups[0].1.push(PortInfo { side: Side::Backend, ifindex: index });
            }
        }
    }
    let mut joins: Vec<Box<dyn FnOnce()>> = Vec::new();
    let mut handles = Vec::new();
    for (i, (mut ports, infos)) in groups.into_iter().enumerate() {
        let mut engine = new_node(cfg)?;
        let (link, handle) = worker_pair(stop);
        let t = std::thread::Builder::new()
            .name(format!("lb-worker-{i}"))
            .spawn(move || {
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    poll_loop(&mut engine, &mut ports, &infos, &link)
                }));
                if ran.is_err() {
                    eprintln!("lb-dpdk: worker {i} panicked: stopping");
                    link.failed.store(true, Ordering::Relaxed);
                    link.stop.store(true, Ordering::Relaxed);
                }
                link.finished.store(true, Ordering::Relaxed);
            })
            .map_err(|e| e.to_string())?;
        joins.push(Box::new(move || {
            let _ = t.join();
        }));
        handles.push(handle);
    }
    eprintln!("lb-dpdk: {} worker(s) on {}", handles.len(), P::NAME);
    let live = Live {
        interfaces: ifs,
        fabric_ownership,
        underlay,
        is_mux,
        learn_gateway: cfg.gateway_from_kernel,
        watcher: netlink::Watcher::new().map_err(|e| eprintln!("lb-dpdk: netlink watcher: {e}")).ok(),
        last_refresh: None,
        told: Told::default(),
    };
    Ok((Workers { joins, handles }, live))
}

impl Live {
    /// A reload changed the load balancer: the fabric takes the new VIPs' frames.
    pub fn reload(&mut self, lb: &LoadBalancer) {
        if let Some(set) = &self.fabric_ownership {
            if let Err(e) = set(&fabric_ownership(lb, self.underlay, self.is_mux)) {
                eprintln!("lb-dpdk: {}: the new VIPs' frames are not taken: {e}", self.interfaces.fabric);
            }
        }
        self.last_refresh = None;
    }

    /// Looks the next hops and the backends up again when the kernel's tables changed, something
    /// was still unresolved, or a while passed; tells the workers what changed.
    pub fn refresh(&mut self, cfg: &NodeConfig, lb: &LoadBalancer, workers: &[WorkerHandle]) {
        let changed = self.watcher.as_mut().is_some_and(netlink::Watcher::changed);
        let due = match self.last_refresh {
            None => true,
            Some(t) => t.elapsed() >= REFRESH_PERIOD || (self.unresolved(cfg, lb) && t.elapsed() >= RETRY_PERIOD),
        };
        if !changed && !due {
            return;
        }
        self.last_refresh = Some(Instant::now());
        let now = self.resolve(cfg, lb);
        let mut messages = Vec::new();
        for (peer, mac) in &now.next_hops {
            if self.told.next_hops.get(peer) != Some(mac) {
                messages.push(Control::NextHop(*peer, *mac));
            }
        }
        if let Some(mac) = now.gateway.filter(|_| self.learn_gateway && now.gateway != self.told.gateway) {
            messages.push(Control::Gateway(mac));
        }
        if now.backends != self.told.backends {
            messages.push(Control::Backends(now.backends.iter().map(|(a, (i, m))| (*a, *i, *m)).collect()));
        }
        self.told = now;
        for w in workers {
            for m in &messages {
                let _ = w.tx.send(m.clone());
            }
        }
    }

    /// Whether a peer or a local backend has no MAC yet.
    fn unresolved(&self, cfg: &NodeConfig, lb: &LoadBalancer) -> bool {
        peers(cfg, lb).iter().any(|p| !self.told.next_hops.contains_key(p))
            || local_backends(cfg, lb).iter().any(|b| !self.told.backends.contains_key(b))
    }

    /// What the kernel's tables say now (asking it to resolve what it does not know yet).
    fn resolve(&self, cfg: &NodeConfig, lb: &LoadBalancer) -> Told {
        let mut told = Told::default();
        for peer in peers(cfg, lb) {
            match netlink::route_to(peer) {
                Ok(route) => {
                    if let Ok(Some((_, mac))) = netlink::resolve(peer) {
                        told.next_hops.insert(peer, mac);
                        // The next hop towards the fabric's other nodes is the gateway for what
                        // leaves towards clients too (a MUX's relayed responses, a host agent's
                        // Direct Server Return frames).
                        if route.gateway.is_some() && told.gateway.is_none() {
                            told.gateway = Some(mac);
                        }
                    }
                }
                Err(e) => eprintln!("lb-dpdk: no route to underlay peer {peer}: {e}"),
            }
        }
        for backend in local_backends(cfg, lb) {
            if let Ok(Some((index, mac))) = netlink::resolve(backend) {
                told.backends.insert(backend, (index, mac));
            }
        }
        told
    }
}

/// The underlay addresses the node tunnels to: a MUX's hosts; a host agent's MUXes and the other
/// hosts (where it forwards a moved connection's second chance).
fn peers(cfg: &NodeConfig, lb: &LoadBalancer) -> Vec<IpAddr> {
    let hosts = lb.pools.iter().flat_map(|p| p.backends.iter().map(|b| b.host));
    let mut p: Vec<IpAddr> = match &cfg.role {
        NodeRole::Mux(_) => hosts.collect(),
        NodeRole::Host(h) => h.muxes.iter().copied().chain(hosts.filter(|&a| a != h.base.underlay)).collect(),
    };
    p.sort();
    p.dedup();
    p
}

/// A host agent's backends (those whose host is this node).
fn local_backends(cfg: &NodeConfig, lb: &LoadBalancer) -> Vec<IpAddr> {
    let NodeRole::Host(h) = &cfg.role else { return Vec::new() };
    let mut b: Vec<IpAddr> = lb
        .pools
        .iter()
        .flat_map(|p| p.backends.iter().filter(|b| b.host == h.base.underlay).map(|b| b.address))
        .collect();
    b.sort();
    b.dedup();
    b
}

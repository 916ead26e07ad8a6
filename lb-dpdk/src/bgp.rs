//! Route announcement: a MUX with a `bgp` section in its node file announces each VIP it can serve
//! (a /32 or /128, next hop self, origin IGP) to its routers, through ExaBGP, so that the routers
//! spread the VIPs' traffic over every MUX that announces them (ECMP) and stop sending to one that
//! withdrew them or died. docs/bgp.md says why ExaBGP and how a router is set up.
//!
//! - **ExaBGP as a child.** The MUX writes ExaBGP's configuration (one neighbor a peer, hold time
//!   from the node file, keepalives every third of it) and runs `exabgp` in the foreground as its
//!   child, with `PR_SET_PDEATHSIG` = SIGKILL: when the MUX dies, even by `kill -9`, the kernel
//!   kills ExaBGP and closes its TCP connections, and the routers withdraw the MUX's routes at once
//!   (at worst when the hold time runs out). It runs in a process group of its own, so that a
//!   Ctrl-C at a terminal reaches the MUX only, which withdraws and drains first.
//! - **The channel.** ExaBGP's process API reads `announce route ...` / `withdraw route ...` lines
//!   from a helper's standard output. The helper is `cat` of a named pipe the MUX creates and writes
//!   to (non-blocking; a line the pipe cannot take yet waits for the next round). Each ExaBGP the
//!   MUX starts gets a pipe of its own, so that a helper left by a dead ExaBGP reads nothing meant
//!   for the next one (and ends when the MUX closes that pipe).
//! - **What is announced when** is [`vips_to_announce`] (pure): a frontend address while the data
//!   plane runs and at least one of its rules can take a new connection. [`route_lines`] turns the
//!   change from what was announced into ExaBGP's lines. [`Speaker::withdraw_all`] withdraws every
//!   route (SIGTERM/SIGINT: the MUX then keeps forwarding for `drainSeconds`).
//! - **Not before the probes have spoken.** A VIP not announced yet waits until
//!   [`probes_have_spoken`]: the probers' verdict on every probed member of its rules is in and
//!   applied, or `intervalInSeconds × numberOfProbes` passed since the start. Until then this MUX's
//!   health view may differ from the other MUXes', and a connection the routers move to it could be
//!   given another backend.

use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lb_core::config::node::{Bgp, BgpPeer};
use lb_core::config::{Backend, LoadBalancer, Pool};

use crate::stats::Stats;

/// The VIPs a MUX announces: the frontend addresses for which at least one listener can take a
/// new connection.
///
/// - a load-balancing rule, if a member of its pool has a weight above 0 and is healthy
///   (`healthy(pool, member)`, the probers' verdict) or the rule has no probe (then every member
///   takes new flows);
/// - an inbound NAT rule or pool (the MUX sends them to their member whatever the probes say), if
///   it has a member;
/// - an outbound rule's frontend: the replies to the backends' SNAT connections come to it, and
///   the MUX relays them whatever the probes say.
///
/// A frontend with none of these (no rule, or every member down) is not announced: the routers
/// send its traffic to MUXes that can serve it, or nowhere.
pub fn vips_to_announce(lb: &LoadBalancer, healthy: impl Fn(usize, usize) -> bool) -> BTreeSet<IpAddr> {
    let mut serving = vec![false; lb.frontends.len()];
    for r in &lb.rules {
        let Some(pool) = lb.pools.get(r.pool) else { continue };
        let takes = |(i, b): (usize, &Backend)| b.weight > 0 && (r.probe.is_none() || healthy(r.pool, i));
        if pool.backends.iter().enumerate().any(takes) {
            serving[r.frontend] = true;
        }
    }
    for n in &lb.nat_rules {
        serving[n.frontend] = true;
    }
    for n in &lb.nat_pools {
        if lb.pools.get(n.pool).is_some_and(|p| !p.backends.is_empty()) {
            serving[n.frontend] = true;
        }
    }
    for o in &lb.outbound_rules {
        for &f in &o.frontends {
            serving[f] = true;
        }
    }
    lb.frontends.iter().zip(serving).filter(|(_, s)| *s).map(|(f, _)| f.address).collect()
}

/// The probers' verdict on member `member` of pool `pool`, from the workers' counters (rows meet
/// the configuration by pool name, backend name and address, so a row of a configuration some
/// worker has not applied yet names no member). A member with no row counts as down: a VIP that a
/// reload added is announced once the workers run it.
pub fn healthy_in(stats: &Stats, lb: &LoadBalancer, pool: usize, member: usize) -> bool {
    let Some((p, b)) = lb.pools.get(pool).and_then(|p: &Pool| Some((p, p.backends.get(member)?))) else {
        return false;
    };
    stats
        .backends
        .iter()
        .zip(&stats.backends_up)
        .any(|(row, up)| *up && row.0 == p.name && row.1 == b.name && row.2 == b.address)
}

/// Whether this MUX's health view of `vip`'s probed members can be trusted, so that a VIP it has
/// not announced yet may be: for each load-balancing rule of `vip` with a probe, either every member
/// of its pool is `settled(pool, member)` (the probers' latest result on it is in and the workers
/// apply it: a member that answers is up, one that failed is down, which for a member down from the
/// start takes `numberOfProbes` failures), or `since_start` reached the probe's
/// `intervalInSeconds × numberOfProbes`, the longest the verdict can take. A VIP with no probed rule
/// (inbound NAT, outbound, rules without a probe) need not wait.
pub fn probes_have_spoken(
    lb: &LoadBalancer,
    vip: IpAddr,
    settled: impl Fn(usize, usize) -> bool,
    since_start: Duration,
) -> bool {
    lb.rules
        .iter()
        .filter(|r| lb.frontends.get(r.frontend).is_some_and(|f| f.address == vip))
        .filter_map(|r| Some((r.pool, lb.probes.get(r.probe?)?)))
        .all(|(pool, probe)| {
            let bound = crate::probe::probe_interval(probe) * u32::from(probe.number_of_probes.max(1));
            since_start >= bound || lb.pools.get(pool).is_none_or(|p| (0..p.backends.len()).all(|m| settled(pool, m)))
        })
}

/// A pool member as the speaker remembers probe results about it across reloads: pool name,
/// backend name, address (as the workers' rows name it).
type MemberKey = (String, String, IpAddr);

fn member_key(lb: &LoadBalancer, pool: usize, member: usize) -> Option<MemberKey> {
    let p = lb.pools.get(pool)?;
    let b = p.backends.get(member)?;
    Some((p.name.clone(), b.name.clone(), b.address))
}

/// The route of a VIP: its address as a host route.
fn prefix(vip: IpAddr) -> String {
    match vip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// ExaBGP's process-API lines that take the announced set from `from` to `to`: withdrawals first,
/// then announcements, each to every peer of the VIP's address family (a VIP of a family no peer
/// has is in neither).
pub fn route_lines(peers: &[BgpPeer], from: &BTreeSet<IpAddr>, to: &BTreeSet<IpAddr>) -> Vec<String> {
    let mut lines = Vec::new();
    let same_family = |vip: IpAddr| peers.iter().filter(move |p| p.address.is_ipv4() == vip.is_ipv4());
    for vip in from.difference(to) {
        for p in same_family(*vip) {
            lines.push(format!("neighbor {} withdraw route {}", p.address, prefix(*vip)));
        }
    }
    for vip in to.difference(from) {
        for p in same_family(*vip) {
            lines.push(format!("neighbor {} announce route {} next-hop self origin igp", p.address, prefix(*vip)));
        }
    }
    lines
}

/// One peering of ExaBGP's configuration: a peer and this MUX's address towards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peering {
    /// The router.
    pub peer: BgpPeer,
    /// This MUX's address the kernel sends to it from (ExaBGP needs it: `local-address`).
    pub local: IpAddr,
}

/// ExaBGP's configuration: the helper whose standard output it reads (`run`), and one neighbor a
/// peering, each fed by that helper and limited to its own address family.
pub fn exabgp_config(bgp: &Bgp, peerings: &[Peering], run: &str) -> String {
    let mut c = format!(
        "# Written by lb-dpdk (process {}) for this run; it removes it when it stops.\n\
         process lb-dpdk {{\n    run {run};\n    encoder text;\n}}\n",
        std::process::id()
    );
    for s in peerings {
        let family = if s.peer.address.is_ipv4() { "ipv4 unicast" } else { "ipv6 unicast" };
        c += &format!(
            "\nneighbor {} {{\n    router-id {};\n    local-address {};\n    local-as {};\n    peer-as {};\n    \
             hold-time {};\n    family {{\n        {family};\n    }}\n    api {{\n        processes [ lb-dpdk ];\n    }}\n}}\n",
            s.peer.address, bgp.router_id, s.local, bgp.local_asn, s.peer.asn, bgp.hold_time_secs
        );
    }
    c
}

/// This node's address towards `peer`: the source the kernel picks for it (a UDP socket connected
/// to it sends nothing).
fn local_address(peer: IpAddr) -> Result<IpAddr, String> {
    let any: SocketAddr = if peer.is_ipv4() { ([0u8; 4], 0).into() } else { ([0u16; 8], 0).into() };
    let s = UdpSocket::bind(any).map_err(|e| e.to_string())?;
    s.connect((peer, 179)).map_err(|e| format!("no route to BGP peer {peer}: {e}"))?;
    Ok(s.local_addr().map_err(|e| e.to_string())?.ip())
}

/// The speaker's directory is this and the process's PID, in the temporary directory.
const DIR_PREFIX: &str = "lb-dpdk-bgp-";

/// Removes the directories of MUXes that were killed before they could (`kill -9`): those named
/// for a process that no longer exists.
fn sweep_leftovers(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)).and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: kill(2) with signal 0 sends nothing; it says whether the process exists.
        let gone = pid > 0
            && unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// How often the speaker looks at health and at ExaBGP (the control plane's rounds are shorter).
const ROUND: Duration = Duration::from_millis(100);
/// How long after ExaBGP died the speaker starts it again.
const RESTART_AFTER: Duration = Duration::from_secs(2);
/// How long ExaBGP has to close its peerings (a NOTIFICATION each) after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// ExaBGP run by the MUX, and what it was told to announce.
pub struct Speaker {
    bgp: Bgp,
    peerings: Vec<Peering>,
    /// A directory of this process's own, for the configuration and the pipes.
    dir: PathBuf,
    /// ExaBGP, while it runs.
    child: Option<Child>,
    /// The named pipe its helper reads, this process's end of it (opened read-write, so that
    /// opening never blocks and the pipe stays open while ExaBGP restarts its helper).
    pipe: Option<(PathBuf, File)>,
    /// How many ExaBGPs were started (each one's pipe is named by it).
    started: u32,
    /// When ExaBGP was last seen gone.
    died: Option<Instant>,
    /// What ExaBGP was told to announce.
    announced: BTreeSet<IpAddr>,
    /// Bytes the pipe has not taken yet.
    pending: Vec<u8>,
    last_round: Option<Instant>,
    /// After [`Speaker::withdraw_all`]: nothing is announced again.
    closed: bool,
    /// VIPs already reported as having no peer of their address family.
    warned: BTreeSet<IpAddr>,
    /// When the speaker started: bounds how long a VIP waits for the probes.
    began: Instant,
    /// The latest probe result on each member (None: the MUX does not probe, nothing waits).
    probed: Option<HashMap<MemberKey, bool>>,
    /// VIPs reported as waiting for the probes.
    waiting: BTreeSet<IpAddr>,
    /// VIPs a staged reload removes: withdrawn while the running configuration still forwards
    /// their flows (see [`Speaker::withhold`]).
    withheld: BTreeSet<IpAddr>,
}

impl Speaker {
    /// Writes ExaBGP's configuration and starts it, announcing nothing yet. Call it from the
    /// thread that stays for the process's life (the control plane's): the kernel sends the
    /// parent-death signal when the thread that started the child ends. `probing`: the MUX runs
    /// health probes, whose first verdicts a VIP waits for (see [`probes_have_spoken`]).
    pub fn start(bgp: &Bgp, probing: bool) -> Result<Speaker, String> {
        let peerings = bgp
            .peers
            .iter()
            .map(|&peer| Ok(Peering { peer, local: local_address(peer.address)? }))
            .collect::<Result<Vec<_>, String>>()?;
        sweep_leftovers(&std::env::temp_dir());
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}", std::process::id()));
        if dir.as_os_str().as_bytes().iter().any(u8::is_ascii_whitespace) {
            return Err(format!("{}: ExaBGP's `run` cannot name a path with blanks (set TMPDIR)", dir.display()));
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut s = Speaker {
            bgp: bgp.clone(),
            peerings,
            dir,
            child: None,
            pipe: None,
            started: 0,
            died: None,
            announced: BTreeSet::new(),
            pending: Vec::new(),
            last_round: None,
            closed: false,
            warned: BTreeSet::new(),
            began: Instant::now(),
            probed: probing.then(HashMap::new),
            waiting: BTreeSet::new(),
            withheld: BTreeSet::new(),
        };
        s.spawn()?;
        Ok(s)
    }

    /// A probe result on member `member` of pool `pool` of `lb`, the configuration in force.
    pub fn probe_result(&mut self, lb: &LoadBalancer, pool: usize, member: usize, success: bool) {
        if let (Some(probed), Some(key)) = (&mut self.probed, member_key(lb, pool, member)) {
            probed.insert(key, success);
        }
    }

    /// The VIPs ExaBGP was told to announce.
    pub fn announced(&self) -> &BTreeSet<IpAddr> {
        &self.announced
    }

    /// Seconds to keep forwarding after [`Speaker::withdraw_all`].
    pub fn drain(&self) -> Duration {
        Duration::from_secs(u64::from(self.bgp.drain_secs))
    }

    /// A new pipe and configuration, and ExaBGP on them. What the last one announced died with its
    /// peerings: the new one starts from nothing.
    fn spawn(&mut self) -> Result<(), String> {
        if let Some((path, _)) = self.pipe.take() {
            let _ = std::fs::remove_file(path);
        }
        self.pending.clear();
        self.announced.clear();
        let pipe = self.dir.join(format!("api-{}.fifo", self.started));
        let name = CString::new(pipe.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: `name` is a NUL-terminated path that outlives the call.
        if unsafe { libc::mkfifo(name.as_ptr(), 0o600) } != 0 {
            return Err(format!("{}: {}", pipe.display(), std::io::Error::last_os_error()));
        }
        let end = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&pipe)
            .map_err(|e| format!("{}: {e}", pipe.display()))?;
        self.pipe = Some((pipe.clone(), end));
        let cat = ["/bin/cat", "/usr/bin/cat"].into_iter().find(|c| Path::new(c).exists()).unwrap_or("cat");
        let conf = self.dir.join("exabgp.conf");
        std::fs::write(&conf, exabgp_config(&self.bgp, &self.peerings, &format!("{cat} {}", pipe.display())))
            .map_err(|e| format!("{}: {e}", conf.display()))?;
        let mut cmd = Command::new(&self.bgp.exabgp);
        cmd.arg(&conf)
            // In the foreground, logging to its standard output (the MUX's standard error), as
            // root, with no acknowledgement lines (nothing reads them) and no CLI pipes.
            .env("exabgp_daemon_daemonize", "false")
            .env("exabgp_log_destination", "stdout")
            .env("exabgp_daemon_user", "root")
            .env("exabgp_api_ack", "false")
            .env("exabgp_api_cli", "false")
            .stdin(Stdio::null())
            .stdout(std::io::stderr())
            .stderr(std::io::stderr())
            .process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec the closure makes two async-signal-safe system calls and
        // allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                // Killed with the MUX, whatever kills it: its peerings close, the routers withdraw.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The MUX died before the signal was asked for.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the MUX is gone"));
                }
                Ok(())
            });
        }
        self.started += 1;
        let child = cmd.spawn().map_err(|e| format!("cannot run {}: {e}", self.bgp.exabgp.display()))?;
        let peers: Vec<String> =
            self.peerings.iter().map(|s| format!("{} (AS{}) from {}", s.peer.address, s.peer.asn, s.local)).collect();
        eprintln!(
            "lb-dpdk: bgp: ExaBGP started (process {}), AS{} router id {}, hold time {} s, peers {}",
            child.id(),
            self.bgp.local_asn,
            self.bgp.router_id,
            self.bgp.hold_time_secs,
            peers.join(", ")
        );
        self.child = Some(child);
        self.died = None;
        Ok(())
    }

    /// One control-plane round: restarts ExaBGP if it died, and announces or withdraws what
    /// changed. `serving`: the data plane runs (every worker alive); `stats` sums the workers'
    /// counters (called at most every 100 ms).
    pub fn round(&mut self, lb: &LoadBalancer, serving: bool, stats: impl FnOnce() -> Stats) {
        self.flush();
        if self.last_round.is_some_and(|t| t.elapsed() < ROUND) {
            return;
        }
        self.last_round = Some(Instant::now());
        if let Some(c) = &mut self.child {
            match c.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    eprintln!("lb-dpdk: bgp: ExaBGP ended ({status}): its routes are gone; starting it again");
                    self.child = None;
                    self.died = Some(Instant::now());
                }
                Err(e) => eprintln!("lb-dpdk: bgp: ExaBGP: {e}"),
            }
        }
        if self.closed {
            return;
        }
        if self.child.is_none() {
            if self.died.is_some_and(|t| t.elapsed() < RESTART_AFTER) {
                return;
            }
            if let Err(e) = self.spawn() {
                eprintln!("lb-dpdk: bgp: {e}");
                self.died = Some(Instant::now());
                return;
            }
        }
        let want = if serving {
            let stats = stats();
            let healthy = |p, m| healthy_in(&stats, lb, p, m);
            let mut want = vips_to_announce(lb, healthy);
            want.retain(|v| !self.withheld.contains(v));
            if let Some(probed) = &self.probed {
                // Settled: the latest result is in and the workers' verdict agrees with it.
                let settled = |p, m| {
                    member_key(lb, p, m).and_then(|k| probed.get(&k).copied()).is_some_and(|ok| ok == healthy(p, m))
                };
                let since = self.began.elapsed();
                let held: Vec<IpAddr> = want
                    .iter()
                    .copied()
                    .filter(|v| !self.announced.contains(v) && !probes_have_spoken(lb, *v, settled, since))
                    .collect();
                for vip in held {
                    want.remove(&vip);
                    if self.waiting.insert(vip) {
                        eprintln!("lb-dpdk: bgp: {} waits for the probes' verdicts on its members", prefix(vip));
                    }
                }
            }
            want
        } else {
            BTreeSet::new()
        };
        for vip in &want {
            if !self.peerings.iter().any(|s| s.peer.address.is_ipv4() == vip.is_ipv4()) && self.warned.insert(*vip) {
                eprintln!("lb-dpdk: bgp: VIP {vip} is not announced: no peer of its address family");
            }
        }
        self.tell(want);
    }

    /// Withdraws `vips` (those a reload is about to remove) until [`Speaker::release`], while the
    /// data path goes on forwarding them: the routers move their flows away before the MUX stops
    /// taking them, as a stopping MUX drains.
    pub fn withhold(&mut self, vips: BTreeSet<IpAddr>) {
        for vip in &vips {
            if self.announced.contains(vip) {
                eprintln!("lb-dpdk: bgp: {} leaves the configuration: withdrawn first", prefix(*vip));
            }
        }
        self.withheld = vips;
        self.last_round = None;
    }

    /// Ends a [`Speaker::withhold`]: the configuration that removed them is in force.
    pub fn release(&mut self) {
        self.withheld.clear();
    }

    /// Withdraws every route, for good (SIGTERM/SIGINT): the routers move the flows to the other
    /// MUXes while this one keeps forwarding for [`Speaker::drain`].
    pub fn withdraw_all(&mut self) {
        self.tell(BTreeSet::new());
        self.closed = true;
    }

    /// Announces `want` in place of what was announced.
    fn tell(&mut self, want: BTreeSet<IpAddr>) {
        if want == self.announced {
            return;
        }
        for vip in self.announced.difference(&want) {
            eprintln!("lb-dpdk: bgp: withdraw {}", prefix(*vip));
        }
        for vip in want.difference(&self.announced) {
            eprintln!("lb-dpdk: bgp: announce {}", prefix(*vip));
        }
        for line in route_lines(&self.bgp.peers, &self.announced, &want) {
            self.pending.extend_from_slice(line.as_bytes());
            self.pending.push(b'\n');
        }
        self.announced = want;
        self.flush();
    }

    /// Writes what the pipe takes of the pending lines.
    fn flush(&mut self) {
        let Some((_, end)) = &mut self.pipe else { return };
        while !self.pending.is_empty() {
            match end.write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("lb-dpdk: bgp: writing to ExaBGP: {e}");
                    return;
                }
            }
        }
    }

    /// Stops ExaBGP (SIGTERM: it closes its peerings with a NOTIFICATION, so the routers withdraw
    /// what is left at once) and removes the files.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.flush();
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the child's PID, which is not reaped yet (so not reused).
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let end = Instant::now() + STOP_GRACE;
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= end => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            eprintln!("lb-dpdk: bgp: ExaBGP stopped");
        }
        self.pipe = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::config::json::from_json;
    use std::net::Ipv4Addr;

    /// Frontends: Web (rule on pool A, probed), Api (rule on pool B, probed), Open (rule on pool B,
    /// no probe), Idle (no listener), Out (outbound rule only), Ssh (inbound NAT rule), Web6
    /// (rule on pool A6, probed), Zero (rule on pool Z, whose only member has weight 0).
    fn lb() -> LoadBalancer {
        let fe =
            |n: &str, a: &str| format!(r#"{{"name":"{n}","properties":{{"publicIPAddress":{{"ipAddress":"{a}"}}}}}}"#);
        let member = |n: &str, a: &str, w: u32| {
            format!(r#"{{"name":"{n}","properties":{{"ipAddress":"{a}","hostAddress":"198.18.3.2","weight":{w}}}}}"#)
        };
        let pool = |n: &str, members: &[String]| {
            format!(r#"{{"name":"{n}","properties":{{"loadBalancerBackendAddresses":[{}]}}}}"#, members.join(","))
        };
        let id = |kind: &str, n: &str| format!(r#"{{"id":"/x/{kind}/{n}"}}"#);
        let rule = |n: &str, f: &str, p: &str, port: u16, probe: Option<&str>| {
            let probe = probe.map_or(String::new(), |pr| format!(r#","probe":{}"#, id("probes", pr)));
            format!(
                r#"{{"name":"{n}","properties":{{"frontendIPConfiguration":{},"backendAddressPool":{},"protocol":"Tcp",
                   "frontendPort":{port},"backendPort":{port}{probe}}}}}"#,
                id("frontendIPConfigurations", f),
                id("backendAddressPools", p)
            )
        };
        let text = format!(
            r#"{{"name":"T","properties":{{
              "frontendIPConfigurations":[{},{},{},{},{},{},{},{}],
              "backendAddressPools":[{},{},{},{}],
              "probes":[{{"name":"P","properties":{{"protocol":"Tcp","port":80,"intervalInSeconds":5}}}}],
              "loadBalancingRules":[{},{},{},{},{}],
              "inboundNatRules":[{{"name":"Ssh","properties":{{"frontendIPConfiguration":{},"protocol":"Tcp",
                 "frontendPort":2222,"backendPort":22,"backendIPConfiguration":{{"id":"/x/a1"}}}}}}],
              "outboundRules":[{{"name":"Out","properties":{{"frontendIPConfigurations":[{}],"backendAddressPool":{},
                 "protocol":"All"}}}}]}}}}"#,
            fe("Web", "198.19.0.10"),
            fe("Api", "198.19.0.11"),
            fe("Open", "198.19.0.12"),
            fe("Idle", "198.19.0.13"),
            fe("Out", "198.19.0.20"),
            fe("Ssh", "198.19.0.30"),
            fe("Web6", "2001:2:ff::10"),
            fe("Zero", "198.19.0.40"),
            pool("A", &[member("a1", "198.18.11.10", 1), member("a2", "198.18.11.11", 1)]),
            pool("B", &[member("b1", "198.18.12.10", 1)]),
            pool("A6", &[member("a61", "2001:2:0:11::10", 1)]),
            pool("Z", &[member("z1", "198.18.12.11", 0)]),
            rule("Web", "Web", "A", 80, Some("P")),
            rule("Api", "Api", "B", 80, Some("P")),
            rule("Open", "Open", "B", 81, None),
            rule("Web6", "Web6", "A6", 80, Some("P")),
            rule("Zero", "Zero", "Z", 80, None),
            id("frontendIPConfigurations", "Ssh"),
            id("frontendIPConfigurations", "Out"),
            id("backendAddressPools", "A"),
        );
        from_json(&text).unwrap()
    }

    fn set(vips: &[&str]) -> BTreeSet<IpAddr> {
        vips.iter().map(|v| v.parse().unwrap()).collect()
    }

    #[test]
    fn a_vip_is_announced_while_one_of_its_rules_has_a_healthy_member() {
        let lb = lb();
        let always = ["198.19.0.12", "198.19.0.20", "198.19.0.30"];
        // Everything healthy: every VIP with a listener but Idle (none) and Zero (weight 0).
        let all = vips_to_announce(&lb, |_, _| true);
        assert_eq!(
            all,
            set(&["198.19.0.10", "198.19.0.11", "198.19.0.12", "198.19.0.20", "198.19.0.30", "2001:2:ff::10"])
        );
        // One member of A down: Web keeps its other one.
        assert_eq!(vips_to_announce(&lb, |p, m| !(p == 0 && m == 0)), all);
        // A and B down: Web, Web6 stay up (A6), Api goes; Open has no probe, Out and Ssh do not
        // steer by health.
        let down = vips_to_announce(&lb, |p, _| p == 2);
        assert_eq!(down, set(&["198.19.0.12", "198.19.0.20", "198.19.0.30", "2001:2:ff::10"]));
        // Nothing healthy.
        assert_eq!(vips_to_announce(&lb, |_, _| false), set(&always));
        // A VIP that leaves the configuration (a reload) is no longer announced.
        let mut smaller = lb.clone();
        smaller.rules.retain(|r| r.name != "Web");
        assert!(!vips_to_announce(&smaller, |_, _| true).contains(&"198.19.0.10".parse().unwrap()));
    }

    #[test]
    fn a_vip_waits_until_the_probes_have_spoken_on_every_probed_member() {
        let lb = lb();
        let (web, open, ssh, out): (IpAddr, IpAddr, IpAddr, IpAddr) = (
            "198.19.0.10".parse().unwrap(),
            "198.19.0.12".parse().unwrap(),
            "198.19.0.30".parse().unwrap(),
            "198.19.0.20".parse().unwrap(),
        );
        // Probe P: every 5 s, 2 probes (the default) to take a member out: the verdict takes 10 s.
        let (early, bound) = (Duration::from_secs(1), Duration::from_secs(10));
        let none = |_, _| false;
        let all = |_, _| true;
        // Web's pool A: a1 and a2. Nothing said yet: Web waits, until the bound.
        assert!(!probes_have_spoken(&lb, web, none, early));
        assert!(!probes_have_spoken(&lb, web, none, bound - Duration::from_millis(1)));
        assert!(probes_have_spoken(&lb, web, none, bound));
        // One member of two settled is not enough; both are.
        assert!(!probes_have_spoken(&lb, web, |p, m| p == 0 && m == 0, early));
        assert!(probes_have_spoken(&lb, web, |p, m| p == 0 && m < 2, early));
        assert!(probes_have_spoken(&lb, web, all, early));
        // Members of other pools do not count for Web.
        assert!(!probes_have_spoken(&lb, web, |p, _| p != 0, early));
        // Open's rule has no probe (pool B is probed, but for Api); Ssh is inbound NAT and Out an
        // outbound rule: nothing to wait for.
        for vip in [open, ssh, out] {
            assert!(probes_have_spoken(&lb, vip, none, Duration::ZERO), "{vip}");
        }
        // The bound is the probe's interval times its number of probes.
        let mut slow = lb.clone();
        slow.probes[0].interval_secs = 15;
        slow.probes[0].number_of_probes = 3;
        assert!(!probes_have_spoken(&slow, web, none, Duration::from_secs(44)));
        assert!(probes_have_spoken(&slow, web, none, Duration::from_secs(45)));
    }

    #[test]
    fn health_comes_from_the_workers_rows_by_name_and_address() {
        let lb = lb();
        let row = |p: &str, b: &str, a: &str| (p.to_string(), b.to_string(), a.parse().unwrap(), 0, 0);
        let stats = Stats {
            backends: vec![
                row("A", "a1", "198.18.11.10"),
                row("A", "a2", "198.18.11.11"),
                row("B", "b1", "198.18.12.9"),
            ],
            backends_up: vec![false, true, true],
            ..Stats::default()
        };
        assert!(!healthy_in(&stats, &lb, 0, 0), "down");
        assert!(healthy_in(&stats, &lb, 0, 1), "up");
        assert!(!healthy_in(&stats, &lb, 1, 0), "b1's row has another address: a member no worker runs yet");
        assert!(!healthy_in(&stats, &lb, 2, 0), "no row");
        assert!(!healthy_in(&stats, &lb, 9, 0), "no pool");
        // No worker has published yet: only what does not steer by health.
        let none = vips_to_announce(&lb, |p, m| healthy_in(&Stats::default(), &lb, p, m));
        assert_eq!(none, set(&["198.19.0.12", "198.19.0.20", "198.19.0.30"]));
    }

    #[test]
    fn lines_announce_and_withdraw_only_what_changed_to_peers_of_the_family() {
        let peer = |a: &str| BgpPeer { address: a.parse().unwrap(), asn: 65000 };
        let peers = [peer("198.18.2.1"), peer("198.18.9.1"), peer("2001:2:0:2::1")];
        let from = set(&["198.19.0.10", "198.19.0.11", "2001:2:ff::10"]);
        let to = set(&["198.19.0.11", "198.19.0.12", "2001:2:ff::10"]);
        assert_eq!(
            route_lines(&peers, &from, &to),
            [
                "neighbor 198.18.2.1 withdraw route 198.19.0.10/32",
                "neighbor 198.18.9.1 withdraw route 198.19.0.10/32",
                "neighbor 198.18.2.1 announce route 198.19.0.12/32 next-hop self origin igp",
                "neighbor 198.18.9.1 announce route 198.19.0.12/32 next-hop self origin igp",
            ]
        );
        assert!(route_lines(&peers, &to, &to).is_empty(), "nothing changed");
        assert_eq!(
            route_lines(&peers, &BTreeSet::new(), &set(&["2001:2:ff::10"])),
            ["neighbor 2001:2:0:2::1 announce route 2001:2:ff::10/128 next-hop self origin igp"]
        );
        assert_eq!(
            route_lines(&peers, &set(&["2001:2:ff::10"]), &BTreeSet::new()),
            ["neighbor 2001:2:0:2::1 withdraw route 2001:2:ff::10/128"]
        );
        // No IPv6 peer: an IPv6 VIP goes nowhere.
        assert!(route_lines(&peers[..2], &BTreeSet::new(), &set(&["2001:2:ff::10"])).is_empty());
    }

    #[test]
    fn exabgp_configuration_has_a_neighbor_a_peer() {
        let peer = |a: &str, asn| BgpPeer { address: a.parse().unwrap(), asn };
        let bgp = Bgp {
            local_asn: 65001,
            peers: vec![peer("198.18.2.1", 65000), peer("2001:2:0:2::1", 65002)],
            router_id: Ipv4Addr::new(198, 18, 2, 2),
            hold_time_secs: 3,
            drain_secs: 5,
            exabgp: "/usr/sbin/exabgp".into(),
        };
        let peerings = [
            Peering { peer: bgp.peers[0], local: "198.18.2.2".parse().unwrap() },
            Peering { peer: bgp.peers[1], local: "2001:2:0:2::2".parse().unwrap() },
        ];
        let c = exabgp_config(&bgp, &peerings, "/bin/cat /tmp/x/api-0.fifo");
        assert!(c.contains("process lb-dpdk {\n    run /bin/cat /tmp/x/api-0.fifo;\n    encoder text;\n}"), "{c}");
        for want in [
            "neighbor 198.18.2.1 {\n    router-id 198.18.2.2;\n    local-address 198.18.2.2;\n    local-as 65001;\n    \
             peer-as 65000;\n    hold-time 3;\n    family {\n        ipv4 unicast;\n    }\n    api {\n        \
             processes [ lb-dpdk ];\n    }\n}",
            "neighbor 2001:2:0:2::1 {\n    router-id 198.18.2.2;\n    local-address 2001:2:0:2::2;\n    local-as 65001;\n    \
             peer-as 65002;",
            "        ipv6 unicast;\n",
        ] {
            assert!(c.contains(want), "{want}\nnot in\n{c}");
        }
        assert_eq!(c.matches("neighbor ").count(), 2);
    }

    #[test]
    fn directories_of_processes_gone_are_swept() {
        let tmp = std::env::temp_dir().join(format!("lb-dpdk-bgp-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        // PIDs above pid_max's ceiling (2^22) never exist; this process does.
        let gone = tmp.join(format!("{DIR_PREFIX}{}", 1u32 << 23));
        let alive = tmp.join(format!("{DIR_PREFIX}{}", std::process::id()));
        let other = tmp.join(format!("{DIR_PREFIX}x"));
        for d in [&gone, &alive, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(gone.join("exabgp.conf"), "x").unwrap();
        sweep_leftovers(&tmp);
        assert!(!gone.exists() && alive.exists() && other.exists());
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn the_local_address_is_the_kernels_source_towards_the_peer() {
        assert_eq!(local_address("127.0.0.1".parse().unwrap()).unwrap(), IpAddr::from([127, 0, 0, 1]));
    }
}

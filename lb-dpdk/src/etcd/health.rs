//! Backends' health in etcd mode: host agents probe their own backends and publish their verdicts
//! at `health/<nodeId>`; MUXes derive each member's health from those keys.
//!
//! - **A host agent's verdicts** ([`HostVerdicts`]): for each (pool, probe) its rules ask for,
//!   each member whose `hostAddress` is this host's underlay. A member's first probe result
//!   decides its verdict (there is no history yet for `numberOfProbes` to guard); after that,
//!   `numberOfProbes` consecutive failures take it down and 2 consecutive successes bring it back,
//!   as a MUX's own probes do in a file-based deployment. A member with no result yet is not
//!   published.
//! - **A MUX's derivation** ([`derive`], pure): member `m` of pool `p` is up for probe `q` when
//!   at least one host key names (`p`, `q`, `m`'s address) on `m`'s host and every such entry says
//!   up. A member no host reports is down, and so are the members of a host whose key is gone
//!   (its lease lapsed: the host agent stopped, died or lost etcd): the host agent is what
//!   decapsulates and delivers to them, so without it they are unreachable through the load
//!   balancer, whatever they would answer to a probe. Every MUX derives the same set from the
//!   same keys, so every MUX builds the same Maglev tables.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use lb_control::store::{BackendHealth, HostHealth};
use lb_core::config::LoadBalancer;
use lb_core::paths::node::MemberHealth;
use lb_core::tables::{Health, ProbeState};

use crate::probe::probe_plan;

/// Every host's published health, by host id (the keys under `health/`).
pub type Hosts = BTreeMap<String, HostHealth>;

/// One report on a member: the probe it is of (None: every probe) and the host it places the
/// member on (None: wherever), and the verdict.
struct Report {
    probe: Option<String>,
    host: Option<IpAddr>,
    up: bool,
}

/// Each probed member's health for each of its probes, from the hosts' keys: up when at least one
/// host reports it on the member's own host and every such report says up; down otherwise (no
/// host reports it, its host's key is gone, or a report says down). In [`probe_plan`] order.
pub fn derive(lb: &LoadBalancer, hosts: &Hosts) -> Vec<MemberHealth> {
    let mut reports: HashMap<(&str, IpAddr), Vec<Report>> = HashMap::new();
    for h in hosts.values() {
        for b in &h.backends {
            let r = Report { probe: b.probe.clone(), host: b.host, up: b.up };
            reports.entry((b.pool.as_str(), b.address)).or_default().push(r);
        }
    }
    let mut out = Vec::new();
    for (pool, probe) in probe_plan(lb) {
        let (Some(p), Some(q)) = (lb.pools.get(pool), lb.probes.get(probe)) else { continue };
        for (member, b) in p.backends.iter().enumerate() {
            let about = reports
                .get(&(p.name.as_str(), b.address))
                .into_iter()
                .flatten()
                .filter(|r| r.probe.as_deref().is_none_or(|n| n == q.name) && r.host.is_none_or(|h| h == b.host));
            let (mut seen, mut up) = (false, true);
            for r in about {
                seen = true;
                up &= r.up;
            }
            out.push(MemberHealth { pool, probe, member, up: seen && up });
        }
    }
    out
}

/// Each member's health over all its pool's probes (down if one takes it out), by (pool,
/// member): what the workers' `backends_up` shows once `health` is applied.
pub fn by_member(health: &[MemberHealth]) -> BTreeMap<(usize, usize), bool> {
    let mut m = BTreeMap::new();
    for h in health {
        *m.entry((h.pool, h.member)).or_insert(true) &= h.up;
    }
    m
}

/// `health` as a node's status lists it: pool, probe and member by their names in `lb`.
pub fn as_reported(lb: &LoadBalancer, health: &[MemberHealth]) -> Vec<BackendHealth> {
    health
        .iter()
        .filter_map(|h| {
            let p = lb.pools.get(h.pool)?;
            let b = p.backends.get(h.member)?;
            Some(BackendHealth {
                address: b.address,
                pool: p.name.clone(),
                probe: Some(lb.probes.get(h.probe)?.name.clone()),
                host: Some(b.host),
                up: h.up,
            })
        })
        .collect()
}

/// The (pool, probe, member) a host agent on `underlay` probes: its own backends, for each probe
/// their pool's rules name.
pub fn local_plan(lb: &LoadBalancer, underlay: IpAddr) -> Vec<(usize, usize, usize)> {
    let mut plan = Vec::new();
    for (pool, probe) in probe_plan(lb) {
        let Some(p) = lb.pools.get(pool) else { continue };
        for (member, b) in p.backends.iter().enumerate() {
            if b.host == underlay {
                plan.push((pool, probe, member));
            }
        }
    }
    plan
}

/// A verdict's identity across configurations: pool name, probe name, backend address.
type VerdictKey = (String, String, IpAddr);

fn key(lb: &LoadBalancer, pool: usize, probe: usize, member: usize) -> Option<VerdictKey> {
    let p = lb.pools.get(pool)?;
    Some((p.name.clone(), lb.probes.get(probe)?.name.clone(), p.backends.get(member)?.address))
}

/// A host agent's verdicts on its own backends (see the module's notes).
#[derive(Debug, Default)]
pub struct HostVerdicts {
    /// By member: the verdict, from its first result on.
    states: HashMap<VerdictKey, ProbeState>,
    /// Every member up without probing (`--no-probes`).
    assume_up: bool,
}

impl HostVerdicts {
    /// Verdicts made from probe results; with `assume_up` (the program runs no probes), every
    /// member is up.
    pub fn new(assume_up: bool) -> Self {
        HostVerdicts { states: HashMap::new(), assume_up }
    }

    /// A new configuration: members that keep their pool, probe (by names) and address keep
    /// their verdict, under the probe's `numberOfProbes` now; the others are forgotten.
    pub fn reconfigure(&mut self, lb: &LoadBalancer, underlay: IpAddr) {
        let mut kept = HashMap::new();
        for (pool, probe, member) in local_plan(lb, underlay) {
            let Some(k) = key(lb, pool, probe, member) else { continue };
            if let Some(s) = self.states.remove(&k) {
                let threshold = lb.probes.get(probe).map_or(1, |p| p.number_of_probes);
                kept.insert(k, s.with_threshold(threshold));
            }
        }
        self.states = kept;
    }

    /// One probe result on member `member` of pool `pool` (indices in `lb`, the configuration in
    /// force). Returns whether the published verdicts change.
    pub fn record(&mut self, lb: &LoadBalancer, pool: usize, probe: usize, member: usize, success: bool) -> bool {
        let Some(k) = key(lb, pool, probe, member) else { return false };
        let threshold = lb.probes.get(probe).map_or(1, |p| p.number_of_probes);
        match self.states.get_mut(&k) {
            Some(s) => {
                let before = s.health();
                s.record(success);
                s.health() != before
            }
            None => {
                let mut s = ProbeState::new(threshold);
                s.set(success);
                self.states.insert(k, s);
                true
            }
        }
    }

    /// Whether every member the host probes has a verdict.
    pub fn complete(&self, lb: &LoadBalancer, underlay: IpAddr) -> bool {
        self.assume_up
            || local_plan(lb, underlay)
                .into_iter()
                .all(|(p, q, m)| key(lb, p, q, m).is_some_and(|k| self.states.contains_key(&k)))
    }

    /// The verdicts to publish: each probed member that has one, in plan order.
    pub fn published(&self, lb: &LoadBalancer, underlay: IpAddr) -> Vec<BackendHealth> {
        local_plan(lb, underlay)
            .into_iter()
            .filter_map(|(pool, probe, member)| {
                let k = key(lb, pool, probe, member)?;
                let up = match self.states.get(&k) {
                    _ if self.assume_up => true,
                    Some(s) => s.health() == Health::Up,
                    None => return None,
                };
                let (pool, probe, address) = k;
                Some(BackendHealth { address, pool, probe: Some(probe), host: Some(underlay), up })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::config::json::from_json;

    const H1: &str = "172.16.10.21";
    const H2: &str = "172.16.10.22";

    /// The union of load balancer `L`: pool `L/web` (a on H1, b on H1, c on H2) behind two rules
    /// with their own probes (`L/http`, `L/https`); pool `L/api` (d on H2) behind a rule without
    /// a probe.
    fn lb() -> LoadBalancer {
        let member = |n: &str, a: &str, h: &str| {
            format!(r#"{{"name":"{n}","properties":{{"ipAddress":"{a}","hostAddress":"{h}"}}}}"#)
        };
        let rule = |n: &str, port: u16, pool: &str, probe: Option<&str>| {
            let probe = probe.map(|p| format!(r#","probe":{{"id":"{p}"}}"#)).unwrap_or_default();
            format!(
                r#"{{"name":"{n}","properties":{{"frontendIPConfiguration":{{"id":"fe"}},"backendAddressPool":{{"id":"{pool}"}},
                "protocol":"Tcp","frontendPort":{port},"backendPort":{port}{probe}}}}}"#
            )
        };
        let json = format!(
            r#"{{"name":"L","properties":{{
              "frontendIPConfigurations":[{{"name":"fe","properties":{{"publicIPAddress":{{"ipAddress":"198.19.0.10"}}}}}}],
              "backendAddressPools":[
                {{"name":"web","properties":{{"loadBalancerBackendAddresses":[{},{},{}]}}}},
                {{"name":"api","properties":{{"loadBalancerBackendAddresses":[{}]}}}}],
              "probes":[
                {{"name":"http","properties":{{"protocol":"Http","port":80,"requestPath":"/","numberOfProbes":2}}}},
                {{"name":"https","properties":{{"protocol":"Https","port":443,"requestPath":"/","numberOfProbes":3}}}}],
              "loadBalancingRules":[{},{},{}]}}}}"#,
            member("a", "10.0.0.4", H1),
            member("b", "10.0.0.5", H1),
            member("c", "10.0.0.6", H2),
            member("d", "10.0.1.4", H2),
            rule("http", 80, "web", Some("http")),
            rule("https", 443, "web", Some("https")),
            rule("api", 8080, "api", None),
        );
        lb_control::union(&[from_json(&json).unwrap()]).unwrap()
    }

    fn entry(address: &str, probe: &str, host: &str, up: bool) -> BackendHealth {
        BackendHealth {
            address: address.parse().unwrap(),
            pool: "L/web".into(),
            probe: Some(probe.into()),
            host: Some(host.parse().unwrap()),
            up,
        }
    }

    fn hosts(list: &[(&str, Vec<BackendHealth>)]) -> Hosts {
        list.iter().map(|(id, b)| (id.to_string(), HostHealth { revision: 9, backends: b.clone() })).collect()
    }

    /// (probe, member) → up, for pool 0.
    fn table(h: &[MemberHealth]) -> Vec<(usize, usize, bool)> {
        h.iter().map(|m| (m.probe, m.member, m.up)).collect()
    }

    #[test]
    fn each_member_takes_its_hosts_verdict_for_each_probe() {
        let lb = lb();
        let all = hosts(&[
            (
                "host1",
                vec![
                    entry("10.0.0.4", "L/http", H1, true),
                    entry("10.0.0.4", "L/https", H1, true),
                    entry("10.0.0.5", "L/http", H1, true),
                    entry("10.0.0.5", "L/https", H1, false),
                ],
            ),
            ("host2", vec![entry("10.0.0.6", "L/http", H2, false), entry("10.0.0.6", "L/https", H2, true)]),
        ]);
        let h = derive(&lb, &all);
        // Only the probed pool, in plan order; b is down for HTTPS only, c for HTTP only.
        assert!(h.iter().all(|m| m.pool == 0));
        assert_eq!(table(&h), [(0, 0, true), (0, 1, true), (0, 2, false), (1, 0, true), (1, 1, false), (1, 2, true)]);
        assert_eq!(by_member(&h), BTreeMap::from([((0, 0), true), ((0, 1), false), ((0, 2), false)]));
        // The same keys give the same set, whatever order the hosts come in.
        let mut reversed: Vec<_> = all.clone().into_iter().collect();
        reversed.reverse();
        assert_eq!(derive(&lb, &reversed.into_iter().collect()), h);
        // As a status lists it: by names.
        let reported = as_reported(&lb, &h);
        assert_eq!(reported[4], entry("10.0.0.5", "L/https", H1, false));
    }

    /// The lease-lapse rule: a host whose key is gone takes its members down with it, and a
    /// member no host reports is down.
    #[test]
    fn members_of_a_host_gone_or_never_reported_are_down() {
        let lb = lb();
        let host1 = vec![
            entry("10.0.0.4", "L/http", H1, true),
            entry("10.0.0.4", "L/https", H1, true),
            entry("10.0.0.5", "L/http", H1, true),
            entry("10.0.0.5", "L/https", H1, true),
        ];
        let host2 = vec![entry("10.0.0.6", "L/http", H2, true), entry("10.0.0.6", "L/https", H2, true)];
        let both = hosts(&[("host1", host1.clone()), ("host2", host2)]);
        assert!(derive(&lb, &both).iter().all(|m| m.up));
        // host2's lease lapsed: its key is gone, and c with it.
        let lapsed = hosts(&[("host1", host1.clone())]);
        let h = derive(&lb, &lapsed);
        assert_eq!(by_member(&h), BTreeMap::from([((0, 0), true), ((0, 1), true), ((0, 2), false)]));
        // No host at all: every probed member is down.
        assert!(derive(&lb, &Hosts::new()).iter().all(|m| !m.up));
        assert_eq!(derive(&lb, &Hosts::new()).len(), 6);
        // A host that reports a only: b is not reported, so down.
        let partial = hosts(&[("host1", host1[..2].to_vec())]);
        assert!(!by_member(&derive(&lb, &partial))[&(0, 1)]);
    }

    #[test]
    fn reports_about_another_host_or_another_probe_do_not_count() {
        let lb = lb();
        // A host with a stale configuration still has a on its own underlay (H2): the MUX places
        // a on H1, so the report is not about its member.
        let stale =
            hosts(&[("host2", vec![entry("10.0.0.4", "L/http", H2, true), entry("10.0.0.4", "L/https", H2, true)])]);
        assert!(derive(&lb, &stale).iter().all(|m| !m.up));
        // A probe the MUX does not know for the pool, or another pool, is no verdict either.
        let other = hosts(&[("host1", vec![entry("10.0.0.4", "L/tcp", H1, true)])]);
        assert!(derive(&lb, &other).iter().all(|m| !m.up));
        // Two hosts report a on H1 (two agents on one underlay): up only if both say so.
        let twice = |second: bool| {
            hosts(&[
                ("host1", vec![entry("10.0.0.4", "L/http", H1, true)]),
                ("host1b", vec![entry("10.0.0.4", "L/http", H1, second)]),
            ])
        };
        assert!(derive(&lb, &twice(true))[0].up);
        assert!(!derive(&lb, &twice(false))[0].up);
        // An entry without probe and host speaks for every probe, wherever the member runs.
        let plain = BackendHealth { probe: None, host: None, ..entry("10.0.0.6", "-", H2, true) };
        let h = derive(&lb, &hosts(&[("h", vec![plain])]));
        assert!(by_member(&h)[&(0, 2)]);
    }

    #[test]
    fn a_host_agent_probes_and_publishes_its_own_backends_only() {
        let lb = lb();
        let (h1, h2): (IpAddr, IpAddr) = (H1.parse().unwrap(), H2.parse().unwrap());
        assert_eq!(local_plan(&lb, h1), [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]);
        assert_eq!(local_plan(&lb, h2), [(0, 0, 2), (0, 1, 2)], "d's rule has no probe");
        let mut v = HostVerdicts::new(false);
        v.reconfigure(&lb, h1);
        assert!(!v.complete(&lb, h1) && v.published(&lb, h1).is_empty(), "nothing before a result");
        // The first result decides: a answers HTTP, b fails HTTPS at once.
        assert!(v.record(&lb, 0, 0, 0, true));
        assert!(v.record(&lb, 0, 1, 1, false));
        assert_eq!(
            v.published(&lb, h1),
            [entry("10.0.0.4", "L/http", H1, true), entry("10.0.0.5", "L/https", H1, false)]
        );
        assert!(v.record(&lb, 0, 1, 0, true) && v.record(&lb, 0, 0, 1, true));
        assert!(v.complete(&lb, h1));
        // After that, numberOfProbes: HTTP takes 2 failures, HTTPS 3; 2 successes bring it back.
        assert!(!v.record(&lb, 0, 0, 0, false));
        assert!(v.record(&lb, 0, 0, 0, false));
        for _ in 0..2 {
            assert!(!v.record(&lb, 0, 1, 0, false));
        }
        assert!(v.record(&lb, 0, 1, 0, false));
        assert!(!v.record(&lb, 0, 1, 1, true));
        assert!(v.record(&lb, 0, 1, 1, true));
        assert_eq!(
            v.published(&lb, h1),
            [
                entry("10.0.0.4", "L/http", H1, false),
                entry("10.0.0.5", "L/http", H1, true),
                entry("10.0.0.4", "L/https", H1, false),
                entry("10.0.0.5", "L/https", H1, true),
            ]
        );
        // A result on another host's member or out of range changes nothing published.
        assert!(!v.record(&lb, 0, 0, 9, true));
        // A new configuration without b: a keeps its verdicts, b's are forgotten.
        let mut fewer = lb.clone();
        fewer.pools[0].backends.remove(1);
        v.reconfigure(&fewer, h1);
        assert_eq!(
            v.published(&fewer, h1),
            [entry("10.0.0.4", "L/http", H1, false), entry("10.0.0.4", "L/https", H1, false)]
        );
        // Without probes, every own member is up.
        let all_up = HostVerdicts::new(true);
        assert!(all_up.complete(&lb, h2));
        assert_eq!(
            all_up.published(&lb, h2),
            [entry("10.0.0.6", "L/http", H2, true), entry("10.0.0.6", "L/https", H2, true)]
        );
    }

    /// What a host publishes is what a MUX derives from.
    #[test]
    fn hosts_verdicts_feed_the_muxes_derivation() {
        let lb = lb();
        let (h1, h2): (IpAddr, IpAddr) = (H1.parse().unwrap(), H2.parse().unwrap());
        let mut v1 = HostVerdicts::new(false);
        let mut v2 = HostVerdicts::new(false);
        for (p, q, m) in local_plan(&lb, h1) {
            v1.record(&lb, p, q, m, true);
        }
        for (p, q, m) in local_plan(&lb, h2) {
            v2.record(&lb, p, q, m, q == 0);
        }
        let keys = Hosts::from([
            ("host1".into(), HostHealth { revision: 9, backends: v1.published(&lb, h1) }),
            ("host2".into(), HostHealth { revision: 9, backends: v2.published(&lb, h2) }),
        ]);
        let h = derive(&lb, &keys);
        assert_eq!(table(&h), [(0, 0, true), (0, 1, true), (0, 2, true), (1, 0, true), (1, 1, true), (1, 2, false)]);
    }
}

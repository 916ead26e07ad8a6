//! The fixtures themselves: every topology is a valid load balancer that a MUX and host agents
//! accept, laid out as its documentation says; frames read back as they were written.

use core::net::IpAddr;

use lb_core::config::*;
use lb_core::paths::{HostAgent, HostVerdict, Mux, ReturnPath, Verdict};

use crate::*;

fn names<T>(items: &[T], name: impl Fn(&T) -> &str) -> Vec<&str> {
    items.iter().map(name).collect()
}

#[test]
fn the_builder_numbers_resources_in_order_and_gives_azures_defaults() {
    let lb = LbBuilder::new("lb")
        .frontend("A", VIP)
        .internal_frontend("B", [10, 0, 0, 5])
        .pool("P", 7, [backend("vm0", v4(0), HOST_A)])
        .probe(http_probe("Probe", 80, "/"))
        .rule(rule("R", 1, 0, Protocol::Tcp, 80, 8080))
        .nat_rule(nat_rule("N", 0, Protocol::Tcp, 2200, 22, (0, 0)))
        .nat_pool(nat_pool("NP", 0, Protocol::Tcp, 3000..=3009, 2222, 0))
        .outbound(outbound_rule("O", &[0], 0, Protocol::All, None))
        .build();
    assert_eq!((lb.name.as_str(), lb.frontends[1].internal, lb.frontends[0].internal), ("lb", true, false));
    assert_eq!(lb.pools[0].backends[0], Backend { name: "vm0".into(), address: v4(0), host: HOST_A.into(), weight: 1 });
    let r = &lb.rules[0];
    assert_eq!((r.frontend, r.pool, r.probe, r.load_distribution), (1, 0, None, LoadDistribution::Default));
    assert_eq!((r.floating_ip, r.tcp_reset, r.disable_outbound_snat), (false, false, false));
    assert_eq!(r.idle_timeout, IdleTimeout::from_minutes(IDLE_MINUTES).unwrap());
    assert_eq!((lb.nat_pools[0].port_start, lb.nat_pools[0].port_end), (3000, 3009));
    assert_eq!(lb.outbound_rules[0].allocated_outbound_ports, None);
    assert_eq!(lb.validate(), Ok(()));
}

#[test]
fn each_setter_changes_its_one_setting() {
    let base = rule("R", 0, 0, Protocol::Tcp, 80, 80);
    let r = base.clone().probe(2).distribution(LoadDistribution::SourceIp).no_outbound_snat();
    assert_eq!((r.probe, r.load_distribution, r.disable_outbound_snat), (Some(2), LoadDistribution::SourceIp, true));
    let r = base.clone().floating_ip().tcp_reset(true).idle_minutes(30);
    assert_eq!((r.floating_ip, r.tcp_reset, r.idle_timeout.minutes()), (true, true, Some(30)));
    assert_eq!(Rule { floating_ip: false, tcp_reset: false, idle_timeout: IdleTimeout::default(), ..r }, base);
    let h = ha_ports("HA", 0, 0);
    assert_eq!((h.protocol, h.frontend_port, h.backend_port), (Protocol::All, 0, 0));
    let o = outbound_rule("O", &[1, 2], 0, Protocol::Tcp, Some(64)).tcp_reset(true).idle_minutes(9);
    assert_eq!((o.frontends, o.tcp_reset, o.idle_timeout.minutes()), (vec![1, 2], true, Some(9)));
    let n = nat_pool("NP", 0, Protocol::Udp, 3000..=3009, 53, 0).idle_seconds(5);
    assert_eq!((n.idle_timeout.seconds(), n.idle_timeout.minutes()), (5, None));
}

#[test]
fn web_app_is_laid_out_as_documented_and_a_mux_runs_it() {
    let lb = web_app();
    assert_eq!(lb.validate(), Ok(()));
    assert_eq!(names(&lb.frontends, |f| &f.name), ["PublicFrontend", "NatFrontend", "NvaFrontend", "V6Frontend"]);
    assert_eq!(names(&lb.pools, |p| &p.name), ["WebServersPool", "NvaPool", "V6Pool"]);
    assert_eq!(names(&lb.rules, |r| &r.name), ["HTTP-Rule", "HTTPS-Rule", "HA-Ports", "V6-HTTP", "DNS-Sticky"]);
    assert!(lb.rules.iter().all(|r| r.probe == Some(0) && r.tcp_reset));
    assert_eq!(lb.pools[0].backends[1].host, IpAddr::from(HOSTS[1]));
    assert_eq!(lb.pools[1].backends[0], web_app_member(10, false));
    assert_eq!(lb.nat_rules[0].target, (0, 1));
    assert!(Mux::new(mux_node(1), lb).is_ok());
}

#[test]
fn two_hosts_puts_backends_on_both_hosts_and_host_agents_run_it() {
    let lb = two_hosts(1024);
    assert_eq!(lb.validate(), Ok(()));
    let rules: Vec<_> =
        lb.rules.iter().map(|r| (r.name.as_str(), r.frontend_port, r.backend_port, r.floating_ip)).collect();
    assert_eq!(
        rules,
        [
            ("HTTP", 80, 8080, false),
            ("HTTP-Floating", 81, 81, true),
            ("DNS", 53, 53, false),
            ("DNS-Floating", 54, 54, true),
            ("HTTP6", 80, 8080, false),
            ("HTTP6-Floating", 81, 81, true),
            ("DNS6", 53, 53, false),
            ("DNS6-Floating", 54, 54, true),
        ]
    );
    assert!(lb.rules.iter().all(|r| r.tcp_reset && r.disable_outbound_snat && r.pool == r.frontend));
    for (host, locals) in [(HOST_A, 3), (HOST_B, 2)] {
        let h = HostAgent::new(host_node(host, ReturnPath::ViaMux), lb.clone()).unwrap();
        assert_eq!(h.local_backends().len(), locals, "{host:?}");
    }
    assert_eq!(lb.snat_plan().unwrap().for_member(0, 0).map(|g| u32::from(g.len)).sum::<u32>(), 1024);
}

#[test]
fn two_hosts_scarce_snat_gives_blocks_on_three_addresses() {
    let lb = two_hosts_scarce_snat(8);
    assert_eq!(lb.validate(), Ok(()));
    assert_eq!(names(&lb.frontends, |f| &f.name)[3..], ["Outbound2", "Outbound6"]);
    let resets: Vec<_> = lb.rules.iter().map(|r| r.tcp_reset).collect();
    assert_eq!(resets, [true, false, true, true, true, false, true, true]);
    let plan = lb.snat_plan().unwrap();
    let frontends: std::collections::BTreeSet<_> = plan.grants.iter().map(|g| g.frontend).collect();
    assert_eq!(frontends.into_iter().collect::<Vec<_>>(), [2, 3, 4]);
    assert_eq!(lb.outbound_rules[1].protocol, Protocol::Tcp);
}

#[test]
fn one_host_puts_every_backend_on_host_a() {
    let lb = one_host(4, 2, 2048);
    assert_eq!(lb.validate(), Ok(()));
    let node = host_node_flows(HOST_A, ReturnPath::Direct, 1000);
    let h = HostAgent::new(node, lb).unwrap();
    assert_eq!(h.local_backends().len(), 6);
}

#[test]
fn frames_read_back_as_written() {
    for (src, dst) in [(client(1, false), IpAddr::from(VIP)), (client(1, true), IpAddr::from(VIP6))] {
        for tcp in [Some(true), Some(false), None] {
            let s = seen(&frame(src, 40000, dst, 80, tcp, b"payload"));
            assert_eq!((s.src, s.sport, s.dst, s.dport), (src, 40000, dst, 80));
            assert_eq!(s.tcp_flags, (tcp == Some(true), false, tcp == Some(false)));
            assert_eq!((s.seq, s.payload.as_slice()), (if tcp.is_some() { 1000 } else { 0 }, &b"payload"[..]));
        }
    }
    let f = tcp4(client4(7), 1, VIP, 80, true);
    assert_eq!(&with_headroom(&f)[HEADROOM..], &f[..]);
    assert_eq!(seen(&f).payload, REQUEST);
}

#[test]
fn a_mux_tunnel_reads_back_around_the_client_frame() {
    let mut mux = Mux::new(mux_node(1), web_app()).unwrap();
    let f = tcp4(client4(3), 40000, VIP, 80, true);
    let mut buf = with_headroom(&f);
    let Verdict::Forward { start, len } = mux.process(&mut buf, HEADROOM, f.len(), 1000) else { panic!("forwarded") };
    let t = vxlan_from_mux(&buf[start..start + len]);
    assert!(HOSTS[..3].contains(&t.dst), "{t:?}");
    assert_eq!((t.vni, t.inner, t.dont_fragment), (0x1001, &f[..], true));
    let mut h = HostAgent::new(host_node(t.dst, ReturnPath::Direct), web_app()).unwrap();
    let mut outer = buf[start..start + len].to_vec();
    let n = outer.len();
    assert!(matches!(h.from_fabric(&mut outer, 0, n, 1000), HostVerdict::Deliver { .. }));
}

#[test]
fn the_tunnel_to_host_a_carries_its_vni() {
    let t = tunnel_to_host_a(0x1234, 1500);
    let inner = tcp4(client4(1), 1, VIP, 80, true);
    let mut buf = with_headroom(&inner);
    let start = t.encapsulate(&mut buf, HEADROOM, inner.len(), 0).unwrap();
    let outer = &buf[start..];
    assert_eq!(vxlan_from_mux(outer).vni, 0x1234);
    assert_eq!(&outer[30..34], &HOST_A);
}

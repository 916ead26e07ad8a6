//! Prometheus text exposition of the counters, served on a local address when `--metrics` asks.
//! The control plane renders the page once per status interval; the server thread only hands out
//! the latest copy, so scraping never touches a worker.
//!
//! Besides the program's own counters, the page has Azure Load Balancer's multi-dimensional
//! metrics (learn.microsoft.com, "Azure Load Balancer metrics" and "Monitoring load balancer data
//! reference"), named with the `lb_` prefix and labelled with Azure's dimensions in snake case:
//! "Data Path Availability" (`lb_data_path_availability`), "Health Probe Status"
//! (`lb_health_probe_status`), "Byte Count" and "Packet Count" (`lb_byte_count_total`,
//! `lb_packet_count_total`), "SYN Count" (`lb_syn_count_total`) per listener of a MUX, and "SNAT
//! Connection Count", "Allocated SNAT Ports" and "Used SNAT Ports"
//! (`lb_snat_connection_count_total`, `lb_allocated_snat_ports`, `lb_used_snat_ports`) per
//! frontend address and backend of a host agent.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lb_core::config::Protocol;
use lb_core::paths::node::{NodeReport, RuleReport};

use crate::datapath::{Availability, Frontend};
use crate::stats::Stats;

/// Each probed frontend's data path availability (see [`crate::datapath`]).
pub type DataPath = BTreeMap<Frontend, Availability>;

/// A label value as the text format wants it: backslash, double quote and line feed escaped
/// (configuration names may hold any of them, and one unescaped would make Prometheus refuse the
/// whole page).
fn label(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

/// The page for `s`, with the per-listener and SNAT series of `report` and the availability of
/// each frontend `data_path` probes.
pub fn render(s: &Stats, report: &NodeReport, data_path: &DataPath) -> String {
    let mut o = String::new();
    render_counters(&mut o, s);
    render_azure(&mut o, report, data_path);
    o
}

/// The program's own counters.
fn render_counters(o: &mut String, s: &Stats) {
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(o, "# HELP lb_{name} {help}\n# TYPE lb_{name} counter\nlb_{name} {v}");
    };
    counter("rx_frames_total", "Frames received.", s.rx);
    counter("tx_frames_total", "Frames transmitted or delivered.", s.tx);
    counter("tx_failed_total", "Frames the port could not send (freed).", s.tx_failed);
    counter("tcp_resets_total", "TCP resets sent (idle timeout, SNAT exhaustion).", s.resets);
    counter(
        "icmp_too_big_total",
        "ICMP fragmentation-needed / packet-too-big errors sent for packets too large for the tunnel.",
        s.too_big,
    );
    counter(
        "second_chance_total",
        "Packets of moved connections sent with the previous table's backend (MUX) or forwarded to it (host).",
        s.second_chance,
    );
    counter(
        "syn_reopened_total",
        "SYNs that met the flow of an earlier connection whose backend is down or gone, sent to a healthy one (MUX).",
        s.syn_reopened,
    );
    let _ = writeln!(
        o,
        "# HELP lb_engine_seconds_total Time the data path spent on received frames (polling and I/O excluded).\n\
         # TYPE lb_engine_seconds_total counter\nlb_engine_seconds_total {:.9}",
        s.busy_ns as f64 / 1e9
    );
    let _ = writeln!(o, "# HELP lb_drops_total Frames dropped, by reason.\n# TYPE lb_drops_total counter");
    for (reason, v) in &s.drops {
        let _ = writeln!(o, "lb_drops_total{{reason=\"{reason}\"}} {v}");
    }
    let _ = writeln!(
        o,
        "# HELP lb_backend_packets_total Frames sent to each backend.\n# TYPE lb_backend_packets_total counter"
    );
    for (pool, name, addr, packets, _) in &s.backends {
        let (pool, name) = (label(pool), label(name));
        let _ =
            writeln!(o, "lb_backend_packets_total{{pool=\"{pool}\",backend=\"{name}\",address=\"{addr}\"}} {packets}");
    }
    let _ = writeln!(
        o,
        "# HELP lb_backend_new_flows_total Flows started on each backend.\n# TYPE lb_backend_new_flows_total counter"
    );
    for (pool, name, addr, _, flows) in &s.backends {
        let (pool, name) = (label(pool), label(name));
        let _ =
            writeln!(o, "lb_backend_new_flows_total{{pool=\"{pool}\",backend=\"{name}\",address=\"{addr}\"}} {flows}");
    }
    if !s.backends_up.is_empty() {
        let _ = writeln!(
            o,
            "# HELP lb_backend_up Whether every health probe of the backend's pool answers for it (1), or \
             one took it out of its rules' new flows (0; rules with another probe still send to it).\n\
             # TYPE lb_backend_up gauge"
        );
        for ((pool, name, addr, _, _), up) in s.backends.iter().zip(&s.backends_up) {
            let (pool, name) = (label(pool), label(name));
            let _ =
                writeln!(o, "lb_backend_up{{pool=\"{pool}\",backend=\"{name}\",address=\"{addr}\"}} {}", u8::from(*up));
        }
    }
    let _ = writeln!(o, "# HELP lb_flows Live flow-table entries.\n# TYPE lb_flows gauge\nlb_flows {}", s.flows);
    let _ = writeln!(
        o,
        "# HELP lb_snat_ports_in_use SNAT ports in use.\n# TYPE lb_snat_ports_in_use gauge\nlb_snat_ports_in_use {}",
        s.snat_ports
    );
}

/// One metric's series, in the order they first come; series of the same labels are folded
/// into one (two rows that name the same dimensions, such as two pools with one backend address,
/// would otherwise make Prometheus refuse the page).
struct Family<T> {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    series: Vec<(String, T)>,
    at: HashMap<String, usize>,
}

impl<T: Copy + std::fmt::Display> Family<T> {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Family { name, kind, help, series: Vec::new(), at: HashMap::new() }
    }

    /// Adds `v` to the series of `labels` (`fold` says how two values of one series meet).
    fn add(&mut self, labels: &[(&str, &str)], v: T, fold: fn(T, T) -> T) {
        let mut set = String::new();
        for (i, (k, v)) in labels.iter().enumerate() {
            let _ = write!(set, "{}{k}=\"{}\"", if i == 0 { "" } else { "," }, label(v));
        }
        match self.at.get(&set) {
            Some(&i) => self.series[i].1 = fold(self.series[i].1, v),
            None => {
                self.at.insert(set.clone(), self.series.len());
                self.series.push((set, v));
            }
        }
    }

    /// The family's lines, `# HELP` and `# TYPE` first; nothing without a series.
    fn write(&self, o: &mut String) {
        if self.series.is_empty() {
            return;
        }
        let _ = writeln!(o, "# HELP {} {}\n# TYPE {} {}", self.name, self.help, self.name, self.kind);
        for (labels, v) in &self.series {
            let _ = writeln!(o, "{}{{{labels}}} {v}", self.name);
        }
    }
}

/// A protocol as the metrics name it.
fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::All => "all",
    }
}

/// A listener's frontend port: its port, a NAT pool's range as `first-last`, 0 for HA ports.
fn frontend_port(r: &RuleReport) -> String {
    match r.ports {
        (a, b) if a == b => a.to_string(),
        (a, b) => format!("{a}-{b}"),
    }
}

fn sum(a: u64, b: u64) -> u64 {
    a.saturating_add(b)
}

/// Azure Load Balancer's metrics: per listener (MUX), per SNAT frontend address and backend (host
/// agent), per probed frontend (data path probes).
fn render_azure(o: &mut String, report: &NodeReport, data_path: &DataPath) {
    let mut availability = Family::new(
        "lb_data_path_availability",
        "gauge",
        "Share of the latest synthetic TCP handshakes from this node through the load balancer to the frontend \
         that completed, in percent (Azure: Data Path Availability).",
    );
    for ((vip, proto, port), a) in data_path {
        if let Some(pct) = a.percent() {
            let (vip, port) = (vip.to_string(), port.to_string());
            let labels = [("frontend_ip_address", vip.as_str()), ("frontend_port", port.as_str()), ("protocol", proto)];
            availability.add(&labels, pct, f64::min);
        }
    }
    let mut health = Family::new(
        "lb_health_probe_status",
        "gauge",
        "100 if the load-balancing rule sends new flows to the backend (its health probe answers, or the rule has \
         none), 0 if its probe took the backend out (Azure: Health Probe Status).",
    );
    let mut bytes = Family::new(
        "lb_byte_count_total",
        "counter",
        "Bytes of the client frames each listener forwarded to a backend (Azure: Byte Count; a MUX sees the \
         inbound direction).",
    );
    let mut packets = Family::new(
        "lb_packet_count_total",
        "counter",
        "Client frames each listener forwarded to a backend (Azure: Packet Count; a MUX sees the inbound \
         direction).",
    );
    let mut syns = Family::new(
        "lb_syn_count_total",
        "counter",
        "TCP SYNs without ACK each listener received, retransmissions included (Azure: SYN Count).",
    );
    for r in &report.rules {
        let (vip, port, proto) = (r.frontend.to_string(), frontend_port(r), protocol_name(r.protocol));
        let frontend = [("frontend_ip_address", vip.as_str()), ("frontend_port", port.as_str()), ("protocol", proto)];
        let inbound = [frontend[0], frontend[1], frontend[2], ("direction", "in")];
        bytes.add(&inbound, r.traffic.bytes, sum);
        packets.add(&inbound, r.traffic.packets, sum);
        if r.protocol != Protocol::Udp {
            syns.add(&frontend, r.syns, sum);
        }
        for m in &r.members {
            let (address, port) = (m.address.to_string(), m.port.to_string());
            let labels =
                [frontend[0], frontend[1], frontend[2], ("backend_ip_address", &address), ("backend_port", &port)];
            health.add(&labels, if m.up { 100 } else { 0 }, u64::min);
        }
    }
    let mut connections = Family::new(
        "lb_snat_connection_count_total",
        "counter",
        "SNAT connections by the state they reached: successful (a reply came back), failed (no SNAT port), \
         pending (ended before any reply) (Azure: SNAT Connection Count).",
    );
    for c in &report.snat_connections {
        let (frontend, backend) = (c.frontend.to_string(), c.backend.to_string());
        for (state, n) in [("successful", c.successful), ("failed", c.failed), ("pending", c.pending)] {
            let labels = [
                ("frontend_ip_address", frontend.as_str()),
                ("backend_ip_address", &backend),
                ("connection_state", state),
            ];
            connections.add(&labels, n, sum);
        }
    }
    let mut allocated = Family::new(
        "lb_allocated_snat_ports",
        "gauge",
        "SNAT ports the backend holds on the frontend address for the protocol (Azure: Allocated SNAT Ports).",
    );
    let mut used = Family::new(
        "lb_used_snat_ports",
        "gauge",
        "SNAT ports of the backend on the frontend address that carry a connection (Azure: Used SNAT Ports).",
    );
    for p in &report.snat_ports {
        let (frontend, backend) = (p.frontend.to_string(), p.backend.to_string());
        let labels = [
            ("frontend_ip_address", frontend.as_str()),
            ("backend_ip_address", &backend),
            ("protocol", protocol_name(p.protocol)),
        ];
        allocated.add(&labels, u64::from(p.allocated), sum);
        used.add(&labels, u64::from(p.used), sum);
    }
    availability.write(o);
    for f in [health, bytes, packets, syns, connections, allocated, used] {
        f.write(o);
    }
}

/// Serves `page` at `http://addr/metrics` on a thread of its own until `stop`.
pub fn serve(addr: SocketAddr, page: Arc<Mutex<String>>, stop: Arc<AtomicBool>) -> Result<(), String> {
    let server = tiny_http::Server::http(addr).map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("lb-metrics".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(200)) else { continue };
                let resp = if req.url() == "/metrics" {
                    let body = page.lock().map(|p| p.clone()).unwrap_or_default();
                    let ct = tiny_http::Header::from_bytes("Content-Type", "text/plain; version=0.0.4")
                        .expect("static header");
                    tiny_http::Response::from_string(body).with_header(ct)
                } else {
                    tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
                };
                let _ = req.respond(resp);
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_fixtures::*;

    #[test]
    fn the_page_has_every_counter_and_the_health_gauge() {
        let s = Stats {
            rx: 7,
            tx: 5,
            busy_ns: 1_500_000_000,
            drops: vec![("no_vip", 2)],
            backends: vec![
                ("Web".into(), "b1".into(), "10.0.0.1".parse().unwrap(), 3, 1),
                ("Web".into(), "b2".into(), "10.0.0.2".parse().unwrap(), 2, 1),
            ],
            backends_up: vec![true, false],
            ..Stats::default()
        };
        let page = render(&s, &NodeReport::default(), &DataPath::new());
        for line in [
            "lb_rx_frames_total 7",
            "lb_tx_frames_total 5",
            "# TYPE lb_engine_seconds_total counter",
            "lb_engine_seconds_total 1.500000000",
            "lb_drops_total{reason=\"no_vip\"} 2",
            "lb_backend_packets_total{pool=\"Web\",backend=\"b1\",address=\"10.0.0.1\"} 3",
            "# TYPE lb_backend_up gauge",
            "lb_backend_up{pool=\"Web\",backend=\"b1\",address=\"10.0.0.1\"} 1",
            "lb_backend_up{pool=\"Web\",backend=\"b2\",address=\"10.0.0.2\"} 0",
        ] {
            assert!(page.lines().any(|l| l == line), "no line {line:?} in\n{page}");
        }
        let host = render(&Stats { backends_up: Vec::new(), ..s }, &NodeReport::default(), &DataPath::new());
        assert!(!host.contains("lb_backend_up"), "a host agent has no health gauge");
    }

    /// Every series of the page comes after its family's `# HELP` and `# TYPE` lines, once.
    fn well_formed(page: &str) {
        let mut declared = std::collections::HashSet::new();
        let mut seen = std::collections::HashSet::new();
        for l in page.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                assert!(declared.insert(rest.split(' ').next().unwrap().to_string()), "declared twice: {l}");
            } else if !l.starts_with("# HELP ") {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "{name} has no # TYPE before it:\n{page}");
                let series = l.rsplit_once(' ').unwrap().0;
                assert!(seen.insert(series.to_string()), "series twice: {series}");
            }
        }
    }

    /// A client's TCP segment to `vip:port` through a MUX node: its length.
    fn send(node: &mut lb_core::paths::Node, client: u32, vip: std::net::IpAddr, port: u16, syn: bool) -> usize {
        let f = frame(lb_fixtures::client(client, false), 40000, vip, port, Some(syn), b"hello");
        let mut buf = with_headroom(&f);
        let v = node.mux().unwrap().process(&mut buf, HEADROOM, f.len(), 10);
        assert!(matches!(v, lb_core::paths::Verdict::Forward { .. }), "{v:?}");
        f.len()
    }

    #[test]
    fn a_mux_page_has_azures_per_rule_metrics() {
        use lb_core::paths::{Node, NodeRole};
        let mut node = Node::new(NodeRole::Mux(mux_node(7)), web_app()).unwrap();
        let vip = std::net::IpAddr::from(VIP);
        let bytes = send(&mut node, 1, vip, 80, true) + send(&mut node, 1, vip, 80, false);
        send(&mut node, 2, std::net::IpAddr::from(VIP_NAT), 50001, true);
        // The HTTP probe (probe 0) takes vm1 out of the pool's rules.
        node.set_health(0, 0, 1, false).unwrap();
        node.apply_probes().unwrap();
        let mut data_path = DataPath::new();
        let a = data_path.entry((vip, "tcp", 80)).or_default();
        for ok in [true, false, true, true] {
            a.record(ok);
        }
        data_path.insert((vip, "tcp", 443), Availability::default());
        let page = render(&Stats::default(), &node.report(), &data_path);
        well_formed(&page);
        let f80 = r#"frontend_ip_address="20.50.60.10",frontend_port="80",protocol="tcp""#;
        for line in [
            "# TYPE lb_data_path_availability gauge".to_string(),
            format!("lb_data_path_availability{{{f80}}} 75"),
            "# TYPE lb_health_probe_status gauge".to_string(),
            format!(r#"lb_health_probe_status{{{f80},backend_ip_address="10.0.1.4",backend_port="80"}} 100"#),
            format!(r#"lb_health_probe_status{{{f80},backend_ip_address="10.0.1.5",backend_port="80"}} 0"#),
            "# TYPE lb_byte_count_total counter".to_string(),
            format!(r#"lb_packet_count_total{{{f80},direction="in"}} 2"#),
            format!(r#"lb_byte_count_total{{{f80},direction="in"}} {bytes}"#),
            "# TYPE lb_syn_count_total counter".to_string(),
            format!("lb_syn_count_total{{{f80}}} 1"),
            r#"lb_packet_count_total{frontend_ip_address="20.50.60.11",frontend_port="50000-50099",protocol="tcp",direction="in"} 1"#.to_string(),
            r#"lb_packet_count_total{frontend_ip_address="10.0.9.100",frontend_port="0",protocol="all",direction="in"} 0"#.to_string(),
            r#"lb_health_probe_status{frontend_ip_address="10.0.9.100",frontend_port="0",protocol="all",backend_ip_address="10.0.1.14",backend_port="0"} 100"#.to_string(),
        ] {
            assert!(page.lines().any(|l| l == line), "no line {line:?} in\n{page}");
        }
        let f443 = r#"lb_data_path_availability{frontend_ip_address="20.50.60.10",frontend_port="443""#;
        assert!(!page.contains(f443), "no availability before a probe");
        assert!(
            !page.contains(r#"lb_syn_count_total{frontend_ip_address="20.50.60.10",frontend_port="53""#),
            "UDP: no SYNs"
        );
        for host_only in ["lb_snat_connection_count_total", "lb_allocated_snat_ports", "lb_used_snat_ports"] {
            assert!(!page.contains(host_only), "a MUX has no {host_only}");
        }
    }

    #[test]
    fn a_host_agent_page_has_azures_snat_metrics() {
        use lb_core::paths::{HostVerdict, Node, NodeRole, ReturnPath};
        let mut node = Node::new(NodeRole::Host(host_node(HOST_A, ReturnPath::Direct)), two_hosts(8)).unwrap();
        let f = frame(v4(0), 10000, "93.184.216.34".parse().unwrap(), 443, Some(true), b"");
        let mut buf = with_headroom(&f);
        let v = node.host().unwrap().from_backend(&mut buf, HEADROOM, f.len(), 10);
        assert!(matches!(v, HostVerdict::Transmit { .. }), "{v:?}");
        let page = render(&Stats::default(), &node.report(), &DataPath::new());
        well_formed(&page);
        let pair = r#"frontend_ip_address="20.50.60.20",backend_ip_address="10.0.1.4""#;
        for line in [
            "# TYPE lb_snat_connection_count_total counter".to_string(),
            format!(r#"lb_snat_connection_count_total{{{pair},connection_state="successful"}} 0"#),
            format!(r#"lb_snat_connection_count_total{{{pair},connection_state="failed"}} 0"#),
            format!(r#"lb_snat_connection_count_total{{{pair},connection_state="pending"}} 0"#),
            "# TYPE lb_allocated_snat_ports gauge".to_string(),
            format!(r#"lb_allocated_snat_ports{{{pair},protocol="all"}} 8"#),
            format!(r#"lb_used_snat_ports{{{pair},protocol="all"}} 1"#),
            r#"lb_used_snat_ports{frontend_ip_address="20.50.60.20",backend_ip_address="10.0.1.5",protocol="all"} 0"#
                .to_string(),
        ] {
            assert!(page.lines().any(|l| l == line), "no line {line:?} in\n{page}");
        }
        assert!(!page.contains("lb_health_probe_status") && !page.contains("lb_syn_count"), "no listener series");
    }

    #[test]
    fn label_values_are_escaped() {
        let s = Stats {
            backends: vec![("a\\b".into(), "say \"hi\"\nbye".into(), "10.0.0.1".parse().unwrap(), 3, 1)],
            backends_up: vec![true],
            ..Stats::default()
        };
        let page = render(&s, &NodeReport::default(), &DataPath::new());
        let want = r#"lb_backend_packets_total{pool="a\\b",backend="say \"hi\"\nbye",address="10.0.0.1"} 3"#;
        assert!(page.lines().any(|l| l == want), "no line {want:?} in\n{page}");
        assert!(page.lines().all(|l| !l.starts_with("bye")), "a name's line feed split a line:\n{page}");
        assert_eq!(page.matches("backend=\"say").count(), 3, "every backend series escapes its labels");
    }
}

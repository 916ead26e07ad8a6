//! Prometheus text exposition of the counters, served on a local address when `--metrics` asks.
//! The control plane renders the page once per status interval; the server thread only hands out
//! the latest copy, so scraping never touches a worker.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::stats::Stats;

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

/// The page for `s`.
pub fn render(s: &Stats) -> String {
    let mut o = String::new();
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
    o
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
        let page = render(&s);
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
        let host = render(&Stats { backends_up: Vec::new(), ..s });
        assert!(!host.contains("lb_backend_up"), "a host agent has no health gauge");
    }

    #[test]
    fn label_values_are_escaped() {
        let s = Stats {
            backends: vec![("a\\b".into(), "say \"hi\"\nbye".into(), "10.0.0.1".parse().unwrap(), 3, 1)],
            backends_up: vec![true],
            ..Stats::default()
        };
        let page = render(&s);
        let want = r#"lb_backend_packets_total{pool="a\\b",backend="say \"hi\"\nbye",address="10.0.0.1"} 3"#;
        assert!(page.lines().any(|l| l == want), "no line {want:?} in\n{page}");
        assert!(page.lines().all(|l| !l.starts_with("bye")), "a name's line feed split a line:\n{page}");
        assert_eq!(page.matches("backend=\"say").count(), 3, "every backend series escapes its labels");
    }
}

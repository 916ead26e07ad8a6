//! Prometheus text exposition of the counters, served on a local address when `--metrics` asks.
//! The control plane renders the page once per status interval; the server thread only hands out
//! the latest copy, so scraping never touches a worker.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::Stats;

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
    let _ = writeln!(o, "# HELP lb_drops_total Frames dropped, by reason.\n# TYPE lb_drops_total counter");
    for (reason, v) in &s.drops {
        let _ = writeln!(o, "lb_drops_total{{reason=\"{reason}\"}} {v}");
    }
    let _ = writeln!(
        o,
        "# HELP lb_backend_packets_total Frames sent to each backend.\n# TYPE lb_backend_packets_total counter"
    );
    for (pool, name, addr, packets, _) in &s.backends {
        let _ =
            writeln!(o, "lb_backend_packets_total{{pool=\"{pool}\",backend=\"{name}\",address=\"{addr}\"}} {packets}");
    }
    let _ = writeln!(
        o,
        "# HELP lb_backend_new_flows_total Flows started on each backend.\n# TYPE lb_backend_new_flows_total counter"
    );
    for (pool, name, addr, _, flows) in &s.backends {
        let _ =
            writeln!(o, "lb_backend_new_flows_total{{pool=\"{pool}\",backend=\"{name}\",address=\"{addr}\"}} {flows}");
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

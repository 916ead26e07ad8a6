//! `lbctl`: applies, deletes, lists and shows the load balancers stored in etcd, and shows what
//! the nodes run.
//!
//! Exit status: 0 done; 1 refused or invalid input (the message names the resource and the
//! field), or no such load balancer; 2 etcd unavailable or failing.

use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use lb_control::etcd::{Client, EtcdError};
use lb_control::store::{ApplyError, Status, Store, StoreError, DEFAULT_PREFIX};
use serde_json::{json, Value};

/// The control plane of the load balancer, on etcd.
#[derive(Parser)]
#[command(name = "lbctl", version)]
struct Cli {
    /// etcd endpoints, comma-separated (default: $LB_ETCD_ENDPOINTS, else http://127.0.0.1:2379).
    #[arg(long, value_name = "URLS")]
    endpoints: Option<String>,
    /// Key prefix of the schema.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    prefix: String,
    /// Seconds each etcd request may take.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a load balancer (Azure's resource JSON) and store it; `-` reads standard input.
    Apply {
        /// The JSON file.
        file: String,
    },
    /// Delete a load balancer.
    Delete {
        /// Its name.
        name: String,
    },
    /// List the load balancers.
    List,
    /// Print a load balancer's JSON as stored.
    Show {
        /// Its name.
        name: String,
    },
    /// Show what each node runs and each host's backends.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

/// Exit status for refusals and bad input.
const REFUSED: u8 = 1;
/// Exit status when etcd cannot be used.
const ETCD: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(REFUSED) } else { ExitCode::SUCCESS };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("lbctl: {message}");
            ExitCode::from(code)
        }
    }
}

type Failure = (u8, String);

fn etcd(e: EtcdError) -> Failure {
    (ETCD, e.to_string())
}

fn store_error(e: StoreError) -> Failure {
    match e {
        StoreError::Etcd(e) => etcd(e),
        e => (REFUSED, e.to_string()),
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let endpoints = cli
        .endpoints
        .or_else(|| std::env::var("LB_ETCD_ENDPOINTS").ok())
        .unwrap_or_else(|| "http://127.0.0.1:2379".into());
    let endpoints: Vec<String> =
        endpoints.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned).collect();
    if endpoints.is_empty() {
        return Err((REFUSED, "--endpoints: no endpoint given".into()));
    }
    let client = Client::new(endpoints, Duration::from_secs(cli.timeout.max(1)));
    let store = Store::new(client, &cli.prefix);
    match cli.command {
        Command::Apply { file } => apply(&store, &file),
        Command::Delete { name } => {
            let revision = store.delete(&name).map_err(store_error)?;
            println!("deleted {name} at revision {revision}");
            Ok(())
        }
        Command::List => list(&store),
        Command::Show { name } => {
            let s = store.show(&name).map_err(store_error)?;
            let pretty = serde_json::from_str::<Value>(&s.json)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(s.json);
            println!("{pretty}");
            Ok(())
        }
        Command::Status { json } => {
            let status = store.status().map_err(store_error)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status_json(&status)).unwrap_or_default());
            } else {
                print!("{}", status_table(&status, now_secs()));
            }
            Ok(())
        }
    }
}

fn apply(store: &Store, file: &str) -> Result<(), Failure> {
    let text = if file == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map(|_| s)
    } else {
        std::fs::read_to_string(file)
    }
    .map_err(|e| (REFUSED, format!("{file}: {e}")))?;
    match store.apply(&text) {
        Ok(o) if o.unchanged => {
            println!("{} unchanged (revision {})", o.name, o.revision);
            Ok(())
        }
        Ok(o) => {
            let verb = if o.created { "created" } else { "updated" };
            println!("{verb} {} at revision {}", o.name, o.revision);
            for (pool, vni) in o.assigned_vnis {
                println!("  backendAddressPools '{pool}': vni {vni}");
            }
            Ok(())
        }
        Err(ApplyError::Etcd(e)) => Err(etcd(e)),
        Err(e) if e.is_refusal() => Err((REFUSED, format!("{file}: {e}"))),
        Err(e) => Err((ETCD, e.to_string())),
    }
}

fn list(store: &Store) -> Result<(), Failure> {
    let snapshot = store.list().map_err(store_error)?;
    let mut rows = vec![["NAME".to_owned(), "REVISION".into(), "FRONTENDS".into(), "POOLS (VNI)".into()]];
    for s in &snapshot.load_balancers {
        let (frontends, pools) = match s.parse() {
            Ok(lb) => (
                lb.frontends.iter().map(|f| f.address.to_string()).collect::<Vec<_>>().join(", "),
                lb.pools.iter().map(|p| format!("{} ({})", p.name, p.vni)).collect::<Vec<_>>().join(", "),
            ),
            Err(e) => (format!("refused by lb-core: {e}"), String::new()),
        };
        rows.push([s.name.clone(), s.mod_revision.to_string(), frontends, pools]);
    }
    print!("{}", table(&rows));
    Ok(())
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Rows as columns padded to their widest cell.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn status_table(status: &Status, now: u64) -> String {
    let s = &status.snapshot;
    let names: Vec<&str> = s.load_balancers.iter().map(|l| l.name.as_str()).collect();
    let mut out = format!(
        "store revision {}, load balancers changed at revision {}: {}\n\n",
        s.revision,
        s.config_revision,
        if names.is_empty() { "none".into() } else { names.join(", ") }
    );
    let mut rows = vec![[
        "NODE".to_owned(),
        "ROLE".into(),
        "RUNS".into(),
        "SNAT PORTS".into(),
        "UPDATED".into(),
        "VIPS".into(),
        "REFUSED".into(),
    ]];
    for n in &status.nodes {
        match &n.status {
            Ok(st) => {
                let runs = if st.revision >= s.config_revision {
                    format!("{} (current)", st.revision)
                } else {
                    format!("{} (behind {})", st.revision, s.config_revision)
                };
                let vips = st.vips.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ");
                let refused = st.refused.as_ref().map(|r| format!("{}: {}", r.revision, r.error)).unwrap_or_default();
                let role = format!("{:?}", st.role).to_lowercase();
                let age = format!("{} s ago", now.saturating_sub(st.updated));
                rows.push([n.id.clone(), role, runs, st.snat_ports_in_use.to_string(), age, vips, refused]);
            }
            Err(e) => {
                let e = format!("unreadable status: {e}");
                rows.push([n.id.clone(), "?".into(), e, String::new(), String::new(), String::new(), String::new()])
            }
        }
    }
    if status.nodes.is_empty() {
        out.push_str("no node reports\n");
    } else {
        out.push_str(&table(&rows));
    }
    out.push('\n');
    let mut rows = vec![["HOST".to_owned(), "BACKEND".into(), "POOL".into(), "STATE".into(), "REVISION".into()]];
    for h in &status.hosts {
        match &h.health {
            Ok(health) => {
                for b in &health.backends {
                    let state = if b.up { "up" } else { "down" };
                    let at = health.revision.to_string();
                    rows.push([h.id.clone(), b.address.to_string(), b.pool.clone(), state.into(), at]);
                }
                if health.backends.is_empty() {
                    rows.push([
                        h.id.clone(),
                        "-".into(),
                        "-".into(),
                        "no backends".into(),
                        health.revision.to_string(),
                    ]);
                }
            }
            Err(e) => {
                let e = format!("unreadable health: {e}");
                rows.push([h.id.clone(), e, String::new(), String::new(), String::new()])
            }
        }
    }
    if status.hosts.is_empty() {
        out.push_str("no host reports health\n");
    } else {
        out.push_str(&table(&rows));
    }
    out
}

fn status_json(status: &Status) -> Value {
    let s = &status.snapshot;
    let nodes: serde_json::Map<String, Value> = status
        .nodes
        .iter()
        .map(|n| {
            let v = match &n.status {
                Ok(st) => serde_json::to_value(st).unwrap_or(Value::Null),
                Err(e) => json!({ "unreadable": e }),
            };
            (n.id.clone(), v)
        })
        .collect();
    let health: serde_json::Map<String, Value> = status
        .hosts
        .iter()
        .map(|h| {
            let v = match &h.health {
                Ok(hh) => serde_json::to_value(hh).unwrap_or(Value::Null),
                Err(e) => json!({ "unreadable": e }),
            };
            (h.id.clone(), v)
        })
        .collect();
    json!({
        "revision": s.revision,
        "configRevision": s.config_revision,
        "loadBalancers": s.load_balancers.iter().map(|l| json!({"name": l.name, "revision": l.mod_revision})).collect::<Vec<_>>(),
        "nodes": nodes,
        "health": health,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_control::store::{BackendHealth, HostEntry, HostHealth, NodeEntry, NodeStatus, Refusal, Role, Snapshot};

    fn status() -> Status {
        let snapshot = Snapshot { revision: 50, config_revision: 42, ..Snapshot::default() };
        let mux = NodeStatus {
            role: Role::Mux,
            revision: 45,
            refused: None,
            vips: vec!["198.18.100.1".parse().unwrap()],
            snat_ports_in_use: 0,
            backends: vec![],
            updated: 990,
        };
        let host = NodeStatus {
            role: Role::Host,
            revision: 40,
            refused: Some(Refusal { revision: 42, error: "backendAddressPools 'A/web': vni: above 24 bits".into() }),
            vips: vec![],
            snat_ports_in_use: 1024,
            backends: vec![],
            updated: 1000,
        };
        let health = HostHealth {
            revision: 40,
            backends: vec![BackendHealth {
                address: "10.0.0.4".parse().unwrap(),
                pool: "A/web".into(),
                probe: None,
                host: None,
                up: false,
            }],
        };
        Status {
            snapshot,
            nodes: vec![
                NodeEntry { id: "mux-1".into(), status: Ok(mux) },
                NodeEntry { id: "host-1".into(), status: Ok(host) },
                NodeEntry { id: "odd".into(), status: Err("expected value".into()) },
            ],
            hosts: vec![HostEntry { id: "host-1".into(), health: Ok(health) }],
        }
    }

    #[test]
    fn status_table_shows_current_behind_and_refused() {
        let t = status_table(&status(), 1000);
        assert!(t.contains("load balancers changed at revision 42: none"), "{t}");
        let mux = t.lines().find(|l| l.starts_with("mux-1")).unwrap();
        assert!(mux.contains("45 (current)") && mux.contains("198.18.100.1") && mux.contains("10 s ago"), "{t}");
        let host = t.lines().find(|l| l.starts_with("host-1") && l.contains("host")).unwrap();
        assert!(host.contains("40 (behind 42)") && host.contains("1024"), "{t}");
        assert!(host.contains("42: backendAddressPools 'A/web': vni: above 24 bits"), "{t}");
        assert!(t.contains("unreadable status: expected value"), "{t}");
        let backend = t.lines().find(|l| l.contains("10.0.0.4")).unwrap();
        assert!(backend.contains("A/web") && backend.contains("down"), "{t}");
    }

    #[test]
    fn status_json_has_every_node() {
        let j = status_json(&status());
        assert_eq!(j["configRevision"], 42);
        assert_eq!(j["nodes"]["mux-1"]["vips"][0], "198.18.100.1");
        assert_eq!(j["nodes"]["host-1"]["refused"]["revision"], 42);
        assert_eq!(j["nodes"]["odd"]["unreadable"], "expected value");
        assert_eq!(j["health"]["host-1"]["backends"][0]["up"], false);
    }

    #[test]
    fn arguments() {
        let cli = Cli::try_parse_from(["lbctl", "--endpoints", "http://198.18.0.1:2379", "status", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::Status { json: true }));
        assert_eq!(cli.prefix, "/lb/v1/");
        assert!(Cli::try_parse_from(["lbctl", "apply"]).is_err());
    }
}

//! `lb-dpdk inspect` end to end: a capture made by lb-testkit's independent generator (plus VxLAN
//! frames and malformed ones) goes through the real binary, and both the per-frame lines and the
//! summary counts must match what the generator says it wrote.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lb_core::wire::VxlanEncap;
use lb_testkit::{FragmentKind, GeneratedFrame, MixConfig, TrafficGenerator};

const VXLAN_FRAMES: usize = 40;

fn temp_pcap(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lb-dpdk-inspect");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}-{}.pcap", std::process::id()))
}

fn inspect(path: &Path, verbose: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lb-dpdk"));
    cmd.arg("inspect").arg("--pcap").arg(path);
    if verbose {
        cmd.arg("--verbose");
    }
    cmd.output().expect("run lb-dpdk")
}

/// `label count [pct]` rows of the summary table.
fn table(stdout: &str) -> BTreeMap<String, u64> {
    let start = stdout.find("summary of ").expect("summary header");
    stdout[start..]
        .lines()
        .filter_map(|l| {
            let mut t = l.split_whitespace();
            let label = t.next()?;
            let count = t.next()?.parse().ok()?;
            Some((label.to_owned(), count))
        })
        .collect()
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "TCP".into(),
        17 => "UDP".into(),
        1 => "ICMP".into(),
        58 => "ICMPv6".into(),
        other => format!("proto-{other}"),
    }
}

fn flow_text(v6: bool, proto: u8, src: IpAddr, dst: IpAddr, ports: Option<(u16, u16)>) -> String {
    let (s, d) = match ports {
        Some((sp, dp)) => (SocketAddr::new(src, sp).to_string(), SocketAddr::new(dst, dp).to_string()),
        None => (src.to_string(), dst.to_string()),
    };
    format!("{} {} {s} -> {d}", if v6 { "v6" } else { "v4" }, proto_name(proto))
}

/// The start of the verbose line lb-dpdk must print for a generated frame, and what else it must hold.
fn expected_line(n: usize, f: &GeneratedFrame) -> (String, Vec<String>) {
    let e = &f.expected;
    let l4_ports = matches!(e.protocol, 6 | 17) && e.fragment != FragmentKind::Later;
    let ports = l4_ports.then_some((e.src_port, e.dst_port));
    let head = format!("#{n} {}", flow_text(e.src.is_ipv6(), e.protocol, e.src, e.dst, ports));
    let vlans: Vec<String> = e.vlans.iter().map(u16::to_string).collect();
    let mut parts = vec![
        format!(" vlan=[{}] ", vlans.join(",")),
        format!(
            " frag={} ",
            match e.fragment {
                FragmentKind::None => "None",
                FragmentKind::First => "First",
                FragmentKind::Later => "Later",
            }
        ),
        format!(" l3={} ", e.l3_offset),
    ];
    if let Some(l4) = e.l4_offset {
        parts.push(format!(" l4={l4}"));
    }
    if let Some((ty, code)) = e.icmp_type {
        parts.push(format!(" type={ty} code={code}"));
    }
    if e.protocol == 6 && e.fragment != FragmentKind::Later {
        const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
        let names: Vec<&str> = (0..8).filter(|b| e.tcp_flags & (1 << b) != 0).map(|b| NAMES[b]).collect();
        parts.push(format!(" flags={} ", if names.is_empty() { "-".to_owned() } else { names.join(",") }));
    }
    (head, parts)
}

fn tunnel() -> VxlanEncap {
    lb_fixtures::tunnel_to_host_a(0x00ab_cdef, 9000)
}

#[test]
fn summary_and_lines_match_the_generator() {
    // A realistic mix and a uniform one (every kind, many VLAN tags). UDP frames that happen to go to
    // port 4789 (a random client port) are left out: their payload is random, not VxLAN.
    let mut frames: Vec<GeneratedFrame> = Vec::new();
    for (seed, mix, n) in [(7, MixConfig::realistic(), 3000), (8, MixConfig::uniform(), 1200)] {
        let mut gen = TrafficGenerator::new(seed, mix);
        frames.extend(gen.take(n).into_iter().filter(|f| !(f.expected.protocol == 17 && f.expected.dst_port == 4789)));
    }
    let generated = frames.len();

    // VxLAN: the first frames again, encapsulated towards a host.
    let t = tunnel();
    let mut vxlan = Vec::new();
    for f in frames.iter().take(VXLAN_FRAMES) {
        let mut buf = vec![0u8; t.outer_len() + f.bytes.len()];
        buf[t.outer_len()..].copy_from_slice(&f.bytes);
        let start = t.encapsulate(&mut buf, t.outer_len(), f.bytes.len(), 0x1234).unwrap();
        vxlan.push(buf[start..].to_vec());
    }

    // Malformed: Ethernet cut short, ARP, IPv4 header cut short (untagged IPv4 frames only).
    let mut bad: Vec<(Vec<u8>, &str)> = Vec::new();
    let mut arp = frames[0].bytes.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    arp.truncate(60);
    bad.push((arp, "UnsupportedEtherType(0x0806)"));
    for f in frames.iter().take(5) {
        bad.push((f.bytes[..13].to_vec(), "Truncated(Ethernet)"));
    }
    for f in frames.iter().filter(|f| f.expected.vlans.is_empty() && !f.expected.src.is_ipv6()).take(5) {
        bad.push((f.bytes[..14 + 12].to_vec(), "Truncated(Ipv4)"));
    }

    let all: Vec<&[u8]> = frames
        .iter()
        .map(|f| &f.bytes[..])
        .chain(vxlan.iter().map(|v| &v[..]))
        .chain(bad.iter().map(|(b, _)| &b[..]))
        .collect();
    let path = temp_pcap("mix");
    let mut file = std::fs::File::create(&path).unwrap();
    lb_testkit::write_pcap(&mut file, all.iter()).unwrap();
    drop(file);

    let out = inspect(&path, true);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "exit {:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let counts = table(&stdout);

    // Expected counts, from the generator's own account of each frame.
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    let mut add = |k: &str, n: u64| *want.entry(k.to_owned()).or_default() += n;
    add("frames", all.len() as u64);
    add("parsed", (generated + vxlan.len()) as u64);
    add("errors", bad.len() as u64);
    add("snaplen-cut", 0);
    for f in &frames {
        let e = &f.expected;
        add(&format!("{}/{}", if e.src.is_ipv6() { "v6" } else { "v4" }, proto_name(e.protocol)), 1);
        add("vlan-tagged", u64::from(!e.vlans.is_empty()));
        add("vlan-qinq", u64::from(e.vlans.len() == 2));
        add("fragment-first", u64::from(e.fragment == FragmentKind::First));
        add("fragment-later", u64::from(e.fragment == FragmentKind::Later));
        add("icmp-errors", u64::from(e.quoted.is_some()));
        add("icmp-quoted-flow", u64::from(e.quoted.is_some()));
    }
    add("icmp-quote-errors", 0);
    add("v4/UDP", vxlan.len() as u64);
    add("vxlan", vxlan.len() as u64);
    add("vxlan-inner-parsed", vxlan.len() as u64);
    add("vxlan-inner-errors", 0);
    add("vxlan-decap-errors", 0);
    for (_, kind) in &bad {
        add(&format!("error:{kind}"), 1);
    }
    assert!(want["fragment-later"] > 0 && want["icmp-errors"] > 0 && want["vlan-qinq"] > 0, "{want:?}");
    assert_eq!(counts, want, "summary table:\n{}", &stdout[stdout.find("summary of ").unwrap()..]);

    // Per-frame lines: each generated frame's line, and the flow quoted by each ICMP error.
    let lines: Vec<&str> = stdout.lines().collect();
    let mut i = 0;
    for (idx, f) in frames.iter().enumerate() {
        let (head, parts) = expected_line(idx + 1, f);
        let line = lines[i];
        assert!(line.starts_with(&format!("{head} ")), "frame {}: {line}\nwant {head}", idx + 1);
        let line_sp = format!("{line} ");
        for p in &parts {
            assert!(line_sp.contains(p.as_str()), "frame {}: {line}\nmissing {p:?}", idx + 1);
        }
        i += 1;
        if let Some(q) = f.expected.quoted {
            let want = flow_text(q.src.is_ipv6(), q.protocol, q.src, q.dst, Some((q.src_port, q.dst_port)));
            assert_eq!(lines[i], format!("    quoted {want}"), "frame {}", idx + 1);
            i += 1;
        }
    }
    for (k, f) in frames.iter().take(VXLAN_FRAMES).enumerate() {
        let n = generated + k + 1;
        assert!(lines[i].starts_with(&format!("#{n} v4 UDP 172.16.5.10:")), "{}", lines[i]);
        assert!(lines[i].contains(" -> 172.16.10.20:4789 "), "{}", lines[i]);
        i += 1;
        let (inner_head, _) = expected_line(0, f);
        let inner_flow = inner_head.trim_start_matches("#0 ");
        assert!(lines[i].starts_with("    vxlan vni=11259375 outer 172.16.5.10 -> 172.16.10.20 "), "{}", lines[i]);
        assert!(lines[i].contains(&format!(": {inner_flow} ")), "{}\nwant {inner_flow}", lines[i]);
        i += 1;
        // An inner ICMP error is shown on the vxlan line only; its quote is not expanded.
    }
    for (k, (_, kind)) in bad.iter().enumerate() {
        let n = generated + vxlan.len() + k + 1;
        assert!(lines[i].starts_with(&format!("#{n} error {kind}: ")), "{}", lines[i]);
        i += 1;
    }
    assert!(lines[i].starts_with("summary of "), "{}", lines[i]);

    // Without --verbose: the same table and nothing before it.
    let quiet = inspect(&path, false);
    let quiet_out = String::from_utf8(quiet.stdout).unwrap();
    assert!(quiet.status.success());
    assert!(quiet_out.starts_with("summary of "), "{quiet_out}");
    assert_eq!(table(&quiet_out), counts);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn unreadable_input_fails_with_a_message() {
    let missing = temp_pcap("does-not-exist");
    let out = inspect(&missing, false);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lb-dpdk inspect: ") && err.contains("does-not-exist"), "{err}");

    let garbage = temp_pcap("garbage");
    std::fs::write(&garbage, b"this is not a pcap file at all").unwrap();
    let out = inspect(&garbage, false);
    assert!(!out.status.success());
    std::fs::remove_file(&garbage).unwrap();
}

#[test]
fn an_empty_capture_has_an_all_zero_summary() {
    let path = temp_pcap("empty");
    let mut file = std::fs::File::create(&path).unwrap();
    lb_testkit::write_pcap(&mut file, std::iter::empty::<&[u8]>()).unwrap();
    drop(file);
    let out = inspect(&path, true);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let counts = table(&stdout);
    assert_eq!(counts["frames"], 0);
    assert!(counts.values().all(|&c| c == 0), "{stdout}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_capture_cut_by_its_snaplen_is_inspected_and_its_cut_frames_counted() {
    use pcap_file::pcap::{PcapHeader, PcapWriter, RawPcapPacket};
    // An IPv4 TCP frame of 54 bytes, captured with a snaplen of 40 (as `tcpdump -s 40` does).
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(1234, 80, 1, 1000)
        .write(&mut frame, &[])
        .unwrap();
    assert_eq!(frame.len(), 54);
    let path = temp_pcap("snaplen-cut");
    let header = PcapHeader { snaplen: 40, ..PcapHeader::default() };
    let mut w = PcapWriter::with_header(std::fs::File::create(&path).unwrap(), header).unwrap();
    for _ in 0..3 {
        let raw = RawPcapPacket { ts_sec: 1, ts_frac: 0, incl_len: 40, orig_len: 54, data: frame[..40].into() };
        w.write_raw_packet(&raw).unwrap();
    }
    drop(w);
    let o = inspect(&path, false);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = table(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(t.get("snaplen-cut"), Some(&3), "{t:?}");
}

//! The example C appliance (`examples/c-appliance/appliance.c`), built against `liblb_ffi.a` and
//! run on a capture from `lb-testkit` against `examples/demo-mux.node.json`: its output pcap must
//! hold exactly the frames `lb_core::paths::Mux` transmits for the same frames and node file (VxLAN
//! to the pool's hosts, each inner frame equal to its input frame), and the counters and drops it
//! prints must be the Rust MUX's. The same capture written big-endian and with nanosecond
//! timestamps must give the same output.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CStr;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use lb_core::config::node;
use lb_core::paths::{Mux, Verdict};
use lb_fixtures::vxlan_from_mux;
use lb_testkit::{MixConfig, TrafficGenerator};

const FRAMES: usize = 3000;
const BURST: usize = 32;
const HEADROOM: usize = 128;
const EXPIRE_BUCKETS: usize = 8;

/// One pcap record: seconds, microseconds, bytes.
struct Record {
    sec: u32,
    usec: u32,
    data: Vec<u8>,
}

/// Reads a little-endian, microsecond pcap (what `lb_testkit::write_pcap` writes), timestamps
/// included (`lb_testkit::read_pcap` returns only the bytes).
fn read_le_pcap(bytes: &[u8]) -> Vec<Record> {
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    assert_eq!(u32_at(0), 0xa1b2_c3d4, "little-endian microsecond pcap");
    let mut out = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let len = u32_at(at + 8) as usize;
        out.push(Record { sec: u32_at(at), usec: u32_at(at + 4), data: bytes[at + 16..at + 16 + len].to_vec() });
        at += 16 + len;
    }
    out
}

/// Writes `records` as a pcap with the given byte order and timestamp resolution.
fn write_pcap_as(records: &[Record], big_endian: bool, nanos: bool) -> Vec<u8> {
    let put =
        |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&if big_endian { v.to_be_bytes() } else { v.to_le_bytes() });
    let put16 =
        |out: &mut Vec<u8>, v: u16| out.extend_from_slice(&if big_endian { v.to_be_bytes() } else { v.to_le_bytes() });
    let mut out = Vec::new();
    put(&mut out, if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 });
    put16(&mut out, 2); // version 2.4
    put16(&mut out, 4);
    put(&mut out, 0); // this zone
    put(&mut out, 0); // sigfigs
    put(&mut out, 65535); // snap length
    put(&mut out, 1); // Ethernet
    for r in records {
        put(&mut out, r.sec);
        put(&mut out, if nanos { r.usec * 1000 + 999 } else { r.usec });
        put(&mut out, r.data.len() as u32);
        put(&mut out, r.data.len() as u32);
        out.extend_from_slice(&r.data);
    }
    out
}

/// What the appliance printed: `name: value` lines, drops as `drop <reason>`.
fn parse_report(stdout: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    let mut drops = false;
    for line in stdout.lines() {
        if line == "drops by reason:" {
            drops = true;
            continue;
        }
        let Some((k, v)) = line.rsplit_once(": ") else { continue };
        let Ok(v) = v.parse() else { continue };
        let k = if drops { format!("drop {}", k.trim()) } else { k.to_owned() };
        m.insert(k, v);
    }
    m
}

/// The Rust MUX on the same frames, as the appliance drives it: bursts of 32 at the time of their
/// first frame, 128 bytes of headroom, expiry of 8 buckets after each burst. Returns the report the
/// appliance should print, and for each input frame the frame transmitted (if any).
fn rust_mux(node_file: &Path, records: &[Record]) -> (BTreeMap<String, u64>, Vec<Option<Vec<u8>>>) {
    let cfg = node::load(node_file).unwrap();
    let lb_core::paths::NodeRole::Mux(settings) = cfg.role else { panic!("{}: not a MUX", node_file.display()) };
    let mut mux = Mux::new(settings, cfg.lb).unwrap();
    let mut sent = Vec::new();
    let (mut transmit, mut drop, mut sweep) = (0u64, 0u64, 0usize);
    for burst in records.chunks(BURST) {
        let now = burst[0].sec;
        for r in burst {
            let mut buf = vec![0u8; HEADROOM + r.data.len()];
            buf[HEADROOM..].copy_from_slice(&r.data);
            match mux.process(&mut buf, HEADROOM, r.data.len(), now) {
                Verdict::Forward { start, len } => {
                    transmit += 1;
                    sent.push(Some(buf[start..start + len].to_vec()));
                }
                Verdict::Drop(_) => {
                    drop += 1;
                    sent.push(None);
                }
            }
        }
        sweep = mux.flows().sweep(sweep, EXPIRE_BUCKETS, now);
    }
    let c = mux.counters().clone();
    let mut m = BTreeMap::new();
    m.insert("frames".into(), records.len() as u64);
    m.insert("transmit".into(), transmit);
    m.insert("deliver".into(), 0);
    m.insert("drop".into(), drop);
    m.insert("forwarded".into(), c.vips.iter().map(|t| t.packets).sum::<u64>() + c.relayed.packets);
    m.insert("forwarded_bytes".into(), c.vips.iter().map(|t| t.bytes).sum::<u64>() + c.relayed.bytes);
    m.insert("new_flows".into(), c.vips.iter().map(|t| t.new_flows).sum());
    m.insert("flows".into(), mux.flows().len() as u64);
    for (i, n) in c.drops.iter().enumerate() {
        // SAFETY: lb_drop_reason_name returns NULL or a static NUL-terminated string.
        let name = unsafe { CStr::from_ptr(lb_ffi::lb_drop_reason_name(1, i as u32)) };
        m.insert(format!("drop {}", name.to_str().unwrap()), *n);
    }
    (m, sent)
}

#[test]
fn c_appliance_matches_the_rust_mux() {
    let dir = scratch("appliance");
    let exe = dir.join("appliance");
    let src = root().join("examples/c-appliance/appliance.c");
    compile(&src, &exe, &[]);

    // The capture: lb-testkit's realistic mix (IPv4 and IPv6, VLAN tags, fragments, ICMP) to the
    // demo VIPs, written by lb_testkit::write_pcap; then the same records big-endian and in ns.
    let frames = TrafficGenerator::new(7, MixConfig::realistic()).take(FRAMES);
    let mut le = Vec::new();
    lb_testkit::write_pcap(&mut le, frames.iter().map(|f| &f.bytes)).unwrap();
    let records = read_le_pcap(&le);
    assert_eq!(records.len(), FRAMES);
    let inputs = [
        ("le-usec.pcap", le.clone()),
        ("be-usec.pcap", write_pcap_as(&records, true, false)),
        ("be-nsec.pcap", write_pcap_as(&records, true, true)),
        ("le-nsec.pcap", write_pcap_as(&records, false, true)),
    ];
    // Relative paths, from the workspace root as a user would type them: the appliance opens the
    // captures first, then changes into the node file's directory (for its loadBalancerFile).
    let node_file = PathBuf::from("examples/demo-mux.node.json");
    let (want, sent) = rust_mux(&root().join(&node_file), &records);
    assert!(want["transmit"] > FRAMES as u64 / 2 && want["drop"] > 0, "{want:?}");

    let hosts: BTreeSet<IpAddr> = node::load(&root().join(&node_file))
        .unwrap()
        .lb
        .pools
        .iter()
        .flat_map(|p| p.backends.iter().map(|b| b.host))
        .collect();
    let vnis: BTreeSet<u32> = node::load(&root().join(&node_file)).unwrap().lb.pools.iter().map(|p| p.vni).collect();

    let mut first_output: Option<Vec<u8>> = None;
    let mut runs = vec![(exe.clone(), false)];
    if sanitizers_work() {
        let asan = dir.join("appliance-asan");
        compile(&src, &asan, SANITIZE);
        runs.push((asan, true));
    }
    for (exe, sanitize) in &runs {
        for (name, bytes) in &inputs {
            if *sanitize && *name != "le-usec.pcap" {
                continue;
            }
            let input = dir.join(name);
            std::fs::write(&input, bytes).unwrap();
            let output = dir.join(format!("out-{name}"));
            let mut cmd = Command::new(exe);
            cmd.arg(&node_file).arg(&input).arg(&output).current_dir(root());
            if *sanitize {
                sanitized(&mut cmd);
            }
            let out = run_ok(&mut cmd);
            let stdout = String::from_utf8(out.stdout).unwrap();
            let got = parse_report(&stdout);
            assert_eq!(got, want, "{name}: the appliance's report differs from the Rust MUX's:\n{stdout}");

            let out_bytes = std::fs::read(&output).unwrap();
            match &first_output {
                Some(first) => assert!(out_bytes == *first, "{name}: output differs from the first run's"),
                None => first_output = Some(out_bytes.clone()),
            }
            let transmitted = lb_testkit::read_pcap(&out_bytes[..]).unwrap();
            let expected: Vec<(usize, &Vec<u8>)> =
                sent.iter().enumerate().filter_map(|(i, s)| s.as_ref().map(|s| (i, s))).collect();
            assert_eq!(transmitted.len(), expected.len(), "{name}");
            for (outer, (i, rust)) in transmitted.iter().zip(&expected) {
                assert!(outer == *rust, "{name}: frame {i}: differs from what the Rust MUX transmits");
                check_vxlan(outer, &records[*i].data, &hosts, &vnis);
            }
            // Timestamps survive (in microseconds).
            let out_records = read_le_pcap(&out_bytes);
            for (o, (i, _)) in out_records.iter().zip(&expected) {
                assert_eq!((o.sec, o.usec), (records[*i].sec, records[*i].usec), "{name}: frame {i}");
            }
        }
    }
}

/// `outer` is a VxLAN frame over IPv4 to one of `hosts` with one of `vnis`, around `inner`.
fn check_vxlan(outer: &[u8], inner: &[u8], hosts: &BTreeSet<IpAddr>, vnis: &BTreeSet<u32>) {
    let t = vxlan_from_mux(outer);
    assert!(hosts.contains(&IpAddr::from(t.dst)), "{:?}", t.dst);
    assert!(vnis.contains(&t.vni));
    assert!(t.inner == inner, "inner frame unchanged");
}

//! `lb-dpdk inspect --pcap FILE [--verbose]`: what the `lb-core` wire layer sees in a capture.
//!
//! With `--verbose`, one line per frame (numbered from 1, as Wireshark does):
//!
//! ```text
//! #12 v4 TCP 1.2.3.4:50000 -> 20.50.60.10:80 vlan=[10] flags=SYN frag=None l3=18 l4=38
//! #13 error UnsupportedEtherType(0x0806): unsupported EtherType 0x0806
//! ```
//!
//! followed, for ICMP errors, by the flow the error quotes (`quoted_flow_key`) and, for UDP to port
//! 4789, by the VxLAN decapsulation (VNI, outer addresses, inner flow). Then a summary: one
//! `label count [percent]` line per counter (labels have no spaces, so the table is easy to grep),
//! grouped under headers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use lb_core::wire::flow::quoted_flow_key;
use lb_core::wire::vxlan::decapsulate;
use lb_core::wire::{ip_proto, parse_flow_key, FlowKey, Fragment, IpVersion, TcpFlags, WireError, VXLAN_PORT};
use pcap_file::pcap::PcapReader;
use pcap_file::DataLink;

/// Arguments of `lb-dpdk inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Classic pcap file (Ethernet link type) to read.
    #[arg(long, value_name = "FILE")]
    pub pcap: PathBuf,
    /// Print one line per frame (and the quoted / inner flow of ICMP errors and VxLAN frames).
    #[arg(long, short)]
    pub verbose: bool,
}

/// Entry point of the subcommand: prints to stdout, reports failures on stderr.
pub fn main(args: &InspectArgs) -> ExitCode {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = inspect_file(&args.pcap, args.verbose, &mut out).and_then(|summary| {
        summary.write_table(&args.pcap.display().to_string(), &mut out)?;
        out.flush()
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `lb-dpdk inspect ... | head` is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-dpdk inspect: {}: {e}", args.pcap.display());
            ExitCode::FAILURE
        }
    }
}

/// Reads a pcap file frame by frame (streaming, so a capture of any size fits in memory).
pub fn inspect_file(path: &Path, verbose: bool, out: &mut impl Write) -> io::Result<Summary> {
    let file = File::open(path)?;
    let mut reader = PcapReader::new(BufReader::new(file)).map_err(pcap_error)?;
    let link = reader.header().datalink;
    if link != DataLink::ETHERNET {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("link type {link:?} is not Ethernet")));
    }
    let mut summary = Summary::default();
    // Raw records: the library's checked ones refuse a frame longer than the snaplen, which is
    // every frame of a `tcpdump -s 96` capture; such a frame is counted and inspected as far as
    // the capture holds it.
    while let Some(packet) = reader.next_raw_packet() {
        let packet = packet.map_err(pcap_error)?;
        if (packet.orig_len as usize) > packet.data.len() {
            summary.snaplen_cut += 1;
        }
        summary.inspect_frame(&packet.data, verbose, out)?;
    }
    Ok(summary)
}

fn pcap_error(e: pcap_file::PcapError) -> io::Error {
    match e {
        pcap_file::PcapError::IoError(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

/// Counters over a capture.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Frames read.
    pub frames: u64,
    /// Frames whose flow key was extracted.
    pub parsed: u64,
    /// Frames captured shorter than they were on the wire (pcap snaplen).
    pub snaplen_cut: u64,
    /// Parsed frames by (IP version 4 or 6, protocol).
    pub by_protocol: BTreeMap<(u8, u8), u64>,
    /// Parsed frames with at least one VLAN tag.
    pub vlan_tagged: u64,
    /// Parsed frames with two tags (QinQ).
    pub vlan_qinq: u64,
    /// First fragments (offset 0, more fragments).
    pub frag_first: u64,
    /// Later fragments.
    pub frag_later: u64,
    /// ICMP / ICMPv6 error messages.
    pub icmp_errors: u64,
    /// ICMP errors whose quoted flow was extracted.
    pub icmp_quoted: u64,
    /// ICMP errors whose quote could not be parsed.
    pub icmp_quote_errors: u64,
    /// Frames that decapsulated as VxLAN.
    pub vxlan: u64,
    /// VxLAN frames whose inner frame's flow key was extracted.
    pub vxlan_inner_parsed: u64,
    /// VxLAN frames whose inner frame did not parse.
    pub vxlan_inner_errors: u64,
    /// UDP frames to port 4789 that did not decapsulate.
    pub vxlan_decap_errors: u64,
    /// Frames that did not parse, by error kind.
    pub errors: BTreeMap<String, u64>,
}

impl Summary {
    /// Frames that did not parse.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Classifies one frame, updates the counters and, when `verbose`, writes its lines to `out`.
    pub fn inspect_frame(&mut self, frame: &[u8], verbose: bool, out: &mut impl Write) -> io::Result<()> {
        self.frames += 1;
        let n = self.frames;
        let key = match parse_flow_key(frame) {
            Ok(k) => k,
            Err(e) => {
                let kind = error_kind(&e);
                if verbose {
                    writeln!(out, "#{n} error {kind}: {e}")?;
                }
                *self.errors.entry(kind).or_default() += 1;
                return Ok(());
            }
        };
        self.parsed += 1;
        *self.by_protocol.entry((key.ip_version as u8, key.protocol)).or_default() += 1;
        if key.vlan_count > 0 {
            self.vlan_tagged += 1;
        }
        if key.vlan_count > 1 {
            self.vlan_qinq += 1;
        }
        match key.fragment {
            Fragment::None => {}
            Fragment::First => self.frag_first += 1,
            Fragment::Later => self.frag_later += 1,
        }
        if verbose {
            writeln!(out, "#{n} {}", describe(&key))?;
        }
        if key.is_icmp_error() {
            self.icmp_errors += 1;
            match quoted_flow_key(frame, &key) {
                Ok(q) => {
                    self.icmp_quoted += 1;
                    if verbose {
                        writeln!(out, "    quoted {}", flow(&q))?;
                    }
                }
                Err(e) => {
                    self.icmp_quote_errors += 1;
                    if verbose {
                        writeln!(out, "    quoted error {}: {e}", error_kind(&e))?;
                    }
                }
            }
        }
        if key.protocol == ip_proto::UDP && key.dst_port == VXLAN_PORT && key.fragment == Fragment::None {
            match decapsulate(frame) {
                Ok(d) => {
                    self.vxlan += 1;
                    let inner = parse_flow_key(d.inner);
                    match inner {
                        Ok(_) => self.vxlan_inner_parsed += 1,
                        Err(_) => self.vxlan_inner_errors += 1,
                    }
                    if verbose {
                        let inner = match inner {
                            Ok(k) => describe(&k),
                            Err(e) => format!("error {}: {e}", error_kind(&e)),
                        };
                        writeln!(
                            out,
                            "    vxlan vni={} outer {} -> {} sport={} inner@{}: {inner}",
                            d.vni, d.outer_src, d.outer_dst, d.udp_src_port, d.inner_offset
                        )?;
                    }
                }
                Err(e) => {
                    self.vxlan_decap_errors += 1;
                    if verbose {
                        writeln!(out, "    vxlan error {}: {e}", error_kind(&e))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the summary table.
    pub fn write_table(&self, source: &str, out: &mut impl Write) -> io::Result<()> {
        let total = self.frames;
        let row = |out: &mut dyn Write, label: &str, count: u64| -> io::Result<()> {
            if total == 0 {
                writeln!(out, "  {label:<32} {count:>10}")
            } else {
                let pct = count as f64 * 100.0 / total as f64;
                writeln!(out, "  {label:<32} {count:>10} {pct:>7.2}%")
            }
        };
        writeln!(out, "summary of {source}")?;
        row(out, "frames", self.frames)?;
        row(out, "parsed", self.parsed)?;
        row(out, "errors", self.error_count())?;
        row(out, "snaplen-cut", self.snaplen_cut)?;
        writeln!(out, "by IP version / protocol")?;
        for (&(version, protocol), &count) in &self.by_protocol {
            row(out, &format!("v{version}/{}", protocol_name(protocol)), count)?;
        }
        writeln!(out, "link and IP")?;
        row(out, "vlan-tagged", self.vlan_tagged)?;
        row(out, "vlan-qinq", self.vlan_qinq)?;
        row(out, "fragment-first", self.frag_first)?;
        row(out, "fragment-later", self.frag_later)?;
        writeln!(out, "ICMP errors")?;
        row(out, "icmp-errors", self.icmp_errors)?;
        row(out, "icmp-quoted-flow", self.icmp_quoted)?;
        row(out, "icmp-quote-errors", self.icmp_quote_errors)?;
        writeln!(out, "VxLAN (UDP/{VXLAN_PORT})")?;
        row(out, "vxlan", self.vxlan)?;
        row(out, "vxlan-inner-parsed", self.vxlan_inner_parsed)?;
        row(out, "vxlan-inner-errors", self.vxlan_inner_errors)?;
        row(out, "vxlan-decap-errors", self.vxlan_decap_errors)?;
        writeln!(out, "errors by kind")?;
        if self.errors.is_empty() {
            writeln!(out, "  (none)")?;
        }
        for (kind, &count) in &self.errors {
            row(out, &format!("error:{kind}"), count)?;
        }
        Ok(())
    }
}

/// A stable, space-free name for an error: the variant with its layer or value.
pub fn error_kind(e: &WireError) -> String {
    match e {
        WireError::UnsupportedEtherType(t) => format!("UnsupportedEtherType({t:#06x})"),
        WireError::HeadroomTooSmall { .. } => "HeadroomTooSmall".to_owned(),
        WireError::MtuExceeded { .. } => "MtuExceeded".to_owned(),
        other => format!("{other:?}"),
    }
}

fn version_name(v: IpVersion) -> &'static str {
    match v {
        IpVersion::V4 => "v4",
        IpVersion::V6 => "v6",
    }
}

/// `TCP`, `UDP`, `ICMP`, `ICMPv6`, or `proto-N`.
pub fn protocol_name(p: u8) -> String {
    match p {
        ip_proto::TCP => "TCP".to_owned(),
        ip_proto::UDP => "UDP".to_owned(),
        ip_proto::ICMP => "ICMP".to_owned(),
        ip_proto::ICMPV6 => "ICMPv6".to_owned(),
        other => format!("proto-{other}"),
    }
}

/// `SYN,ACK`, or `-` for none.
fn tcp_flags(f: u8) -> String {
    const NAMES: [(u8, &str); 8] = [
        (TcpFlags::FIN, "FIN"),
        (TcpFlags::SYN, "SYN"),
        (TcpFlags::RST, "RST"),
        (TcpFlags::PSH, "PSH"),
        (TcpFlags::ACK, "ACK"),
        (TcpFlags::URG, "URG"),
        (TcpFlags::ECE, "ECE"),
        (TcpFlags::CWR, "CWR"),
    ];
    let names: Vec<&str> = NAMES.iter().filter(|(bit, _)| f & bit != 0).map(|&(_, name)| name).collect();
    if names.is_empty() {
        "-".to_owned()
    } else {
        names.join(",")
    }
}

/// `v4 TCP 1.2.3.4:50000 -> 20.50.60.10:80`: version, protocol and endpoints. Ports are shown for
/// TCP and UDP when the frame carries them (not for later fragments); IPv6 endpoints as `[addr]:port`.
pub fn flow(k: &FlowKey) -> String {
    let with_ports = matches!(k.protocol, ip_proto::TCP | ip_proto::UDP) && k.fragment != Fragment::Later;
    let (src, dst) = if with_ports {
        (SocketAddr::new(k.src_ip(), k.src_port).to_string(), SocketAddr::new(k.dst_ip(), k.dst_port).to_string())
    } else {
        (k.src_ip().to_string(), k.dst_ip().to_string())
    };
    format!("{} {} {src} -> {dst}", version_name(k.ip_version), protocol_name(k.protocol))
}

/// One verbose line (without the frame number): [`flow`], then VLANs, TCP flags or ICMP type,
/// fragment state and offsets.
pub fn describe(k: &FlowKey) -> String {
    let mut s = flow(k);
    let vlans: Vec<String> = k.vlans[..usize::from(k.vlan_count)].iter().map(u16::to_string).collect();
    let _ = write!(s, " vlan=[{}]", vlans.join(","));
    match k.protocol {
        ip_proto::TCP if k.fragment != Fragment::Later => {
            let _ = write!(s, " flags={}", tcp_flags(k.tcp_flags));
        }
        ip_proto::ICMP | ip_proto::ICMPV6 if k.fragment != Fragment::Later => {
            let _ = write!(s, " type={} code={}", k.icmp_type, k.icmp_code);
            if k.src_port != 0 || k.dst_port != 0 {
                let _ = write!(s, " id={}", k.src_port);
            }
        }
        _ => {}
    }
    let _ = write!(s, " frag={:?}", k.fragment);
    if k.fragment != Fragment::None {
        let _ = write!(s, " ident={:#x}", k.frag_ident);
    }
    let _ = write!(s, " l3={} l4={}", k.l3_offset, k.l4_offset);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;
    use lb_core::wire::{MacAddr, VxlanEncap};

    /// 802.1Q (vid 10) IPv4 TCP SYN 1.2.3.4:50000 -> 20.50.60.10:80 (as in Azure's packet walk).
    fn syn() -> Vec<u8> {
        let mut f = vec![0u8; 58];
        f[..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        f[12..18].copy_from_slice(&[0x81, 0x00, 0x00, 0x0a, 0x08, 0x00]);
        f[18..38].copy_from_slice(&[0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 1, 2, 3, 4, 20, 50, 60, 10]);
        f[38..58]
            .copy_from_slice(&[0xc3, 0x50, 0, 80, 0, 0, 0x03, 0xe8, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        f
    }

    fn run(frames: &[Vec<u8>]) -> (Summary, String) {
        let mut s = Summary::default();
        let mut out = Vec::new();
        for f in frames {
            s.inspect_frame(f, true, &mut out).unwrap();
        }
        (s, String::from_utf8(out).unwrap())
    }

    #[test]
    fn the_documented_line() {
        let (s, out) = run(&[syn()]);
        assert_eq!(out, "#1 v4 TCP 1.2.3.4:50000 -> 20.50.60.10:80 vlan=[10] flags=SYN frag=None l3=18 l4=38\n");
        assert_eq!((s.frames, s.parsed, s.vlan_tagged, s.vlan_qinq), (1, 1, 1, 0));
        assert_eq!(s.by_protocol.get(&(4, 6)), Some(&1));
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let mut arp = syn();
        arp[16..18].copy_from_slice(&[0x08, 0x06]);
        let (s, out) = run(&[syn()[..30].to_vec(), arp, syn()[..50].to_vec()]);
        assert_eq!((s.frames, s.parsed, s.error_count()), (3, 0, 3));
        assert_eq!(s.errors.get("UnsupportedEtherType(0x0806)"), Some(&1));
        assert_eq!(s.errors.get("Truncated(Ipv4)"), Some(&1), "{:?}", s.errors);
        assert_eq!(s.errors.get("LengthMismatch(Ipv4)"), Some(&1));
        assert!(out.starts_with("#1 error "), "{out}");
        assert!(out.contains("#2 error UnsupportedEtherType(0x0806): unsupported EtherType 0x0806\n"), "{out}");
    }

    #[test]
    fn vxlan_frames_show_vni_and_inner_flow() {
        let inner = syn();
        let encap = VxlanEncap::new(
            MacAddr([2, 0, 0, 0, 5, 10]),
            MacAddr([2, 0, 0, 0, 10, 20]),
            Ipv4Addr::new(172, 16, 5, 10).into(),
            Ipv4Addr::new(172, 16, 10, 20).into(),
            0x1234,
            64,
            1500,
        )
        .unwrap();
        let mut buf = vec![0u8; 50 + inner.len()];
        buf[50..].copy_from_slice(&inner);
        assert_eq!(encap.encapsulate(&mut buf, 50, inner.len(), 7).unwrap(), 0);
        let (s, out) = run(&[buf]);
        assert_eq!((s.vxlan, s.vxlan_inner_parsed, s.vxlan_decap_errors), (1, 1, 0));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "#1 v4 UDP 172.16.5.10:49159 -> 172.16.10.20:4789 vlan=[] frag=None l3=14 l4=34", "{out}");
        assert_eq!(
            lines[1],
            "    vxlan vni=4660 outer 172.16.5.10 -> 172.16.10.20 sport=49159 inner@50: \
             v4 TCP 1.2.3.4:50000 -> 20.50.60.10:80 vlan=[10] flags=SYN frag=None l3=18 l4=38"
        );
    }

    #[test]
    fn table_lines_are_label_count_percent() {
        let (s, _) = run(&[syn(), syn()[..30].to_vec()]);
        let mut table = Vec::new();
        s.write_table("x.pcap", &mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        let count = |label: &str| {
            table.lines().find_map(|l| {
                let mut t = l.split_whitespace();
                (t.next() == Some(label)).then(|| t.next().unwrap().parse::<u64>().unwrap())
            })
        };
        assert_eq!(count("frames"), Some(2));
        assert_eq!(count("parsed"), Some(1));
        assert_eq!(count("v4/TCP"), Some(1));
        assert_eq!(count("error:Truncated(Ipv4)"), Some(1));
        assert!(table.contains("  frames                                    2  100.00%\n"), "{table}");
    }

    #[test]
    fn flags_and_names() {
        assert_eq!(tcp_flags(0x12), "SYN,ACK");
        assert_eq!(tcp_flags(0), "-");
        assert_eq!(protocol_name(47), "proto-47");
    }
}

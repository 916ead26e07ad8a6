//! The pcap port, the embedded default: frames from one capture file, what the data path sends
//! to another. Pure Rust, no privileges, runs anywhere.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lb_core::config::node::NodeConfig;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter, RawPcapPacket};
use pcap_file::{DataLink, PcapError, TsResolution};

use crate::port::{BurstFrame, FrameBuf, Port, HEADROOM, MAX_FRAME};
use crate::worker::{new_node, poll_loop, worker_pair, PortInfo, Workers};

/// A heap buffer of the pcap port.
pub struct HeapBuf {
    data: Box<[u8]>,
    start: usize,
    len: usize,
    /// The capture time of the frame it received, which the frame sent from it keeps.
    ts: std::time::Duration,
}

impl BurstFrame for HeapBuf {
    #[inline]
    fn parts(&mut self) -> (&mut [u8], usize, usize) {
        (&mut self.data, self.start, self.len)
    }
}

impl FrameBuf for HeapBuf {
    fn set_frame(&mut self, start: usize, len: usize) {
        self.start = start;
        self.len = len;
    }
}

fn new_buf() -> HeapBuf {
    HeapBuf { data: vec![0u8; HEADROOM + MAX_FRAME].into_boxed_slice(), start: 0, len: 0, ts: Default::default() }
}

/// What a [`PcapPort`] does when it has read its input to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtEnd {
    /// The port has finished: the worker stops (and the program, unless it lingers).
    Finish,
    /// `--linger`: the port never finishes, so that its worker goes on taking probe results and
    /// reloads, running its timers and publishing its counters, until a signal.
    Wait,
    /// `--pcap-follow`: as `Wait`, and the input is read like `tail -f` reads a file: frames appended
    /// to it while the program runs are processed as they come (a record cut short at the end is
    /// completed later). The output is written as usual (buffered): it is complete once the program
    /// stopped.
    Follow,
}

/// Reads frames from one pcap file and writes what it sends to another.
pub struct PcapPort {
    reader: PcapReader<BufReader<File>>,
    /// `None` once closed, or once a write failed (a record may be half written: nothing more is).
    writer: Option<PcapWriter<BufWriter<File>>>,
    /// Why writing the output stopped, if it did before the end.
    write_error: Option<String>,
    pool: Vec<HeapBuf>,
    now: u32,
    ts: std::time::Duration,
    done: bool,
    /// What happens at the end of the input.
    at_end: AtEnd,
    /// Frames in the input longer than a buffer (skipped).
    pub oversize: u64,
    /// Frames the capture holds only the start of (a snaplen shorter than the frame, as with
    /// `tcpdump -s 96`): skipped, as a truncated frame must not be forwarded.
    pub cut: u64,
    /// Records the reader could not parse (the rest of the file is skipped).
    pub read_errors: u64,
    /// Whether the capture's timestamps are in nanoseconds (else microseconds).
    nanos: bool,
    /// A frame read ahead: of a later second than the burst it would have joined, it opens the next.
    pending: Option<HeapBuf>,
}

impl PcapPort {
    /// Opens `input` for reading and creates `output` (Ethernet link type).
    pub fn open(input: &Path, output: &Path) -> Result<Self, String> {
        let f = File::open(input).map_err(|e| format!("{}: {e}", input.display()))?;
        let reader = PcapReader::new(BufReader::new(f)).map_err(|e| format!("{}: {e}", input.display()))?;
        let input_header = reader.header();
        if input_header.datalink != DataLink::ETHERNET {
            return Err(format!(
                "{}: link type {:?}, not Ethernet (a capture of `tcpdump -i any` is Linux cooked: capture on one \
                 interface)",
                input.display(),
                input_header.datalink
            ));
        }
        let o = File::create(output).map_err(|e| format!("{}: {e}", output.display()))?;
        // Room for the largest frame a buffer holds once its outer headers are in front.
        let header = PcapHeader {
            datalink: DataLink::ETHERNET,
            snaplen: (HEADROOM + MAX_FRAME) as u32,
            ..PcapHeader::default()
        };
        let writer =
            PcapWriter::with_header(BufWriter::new(o), header).map_err(|e| format!("{}: {e}", output.display()))?;
        Ok(PcapPort {
            reader,
            writer: Some(writer),
            write_error: None,
            pool: Vec::new(),
            now: 0,
            ts: std::time::Duration::ZERO,
            done: false,
            at_end: AtEnd::Finish,
            oversize: 0,
            cut: 0,
            read_errors: 0,
            nanos: input_header.ts_resolution == TsResolution::NanoSecond,
            pending: None,
        })
    }

    /// What to do at the end of the input (default: finish).
    pub fn at_end(&mut self, at_end: AtEnd) {
        self.at_end = at_end;
    }

    fn write(&mut self, ts: std::time::Duration, frame: &[u8]) -> bool {
        let p = PcapPacket::new(ts, frame.len() as u32, frame);
        let Some(w) = self.writer.as_mut() else { return false };
        match w.write_packet(&p) {
            Ok(_) => true,
            // A frame too long for the file's snaplen is refused before anything is written.
            Err(PcapError::InvalidField(_)) => false,
            Err(e) => {
                self.write_error = Some(e.to_string());
                self.writer = None;
                false
            }
        }
    }

    /// Writes what is still buffered to the output file and closes it (frames sent after that
    /// are not written: they count as not sent).
    pub fn close(&mut self) -> Result<(), String> {
        use std::io::Write;
        if let Some(e) = self.write_error.take() {
            return Err(format!("writing stopped: {e}"));
        }
        match self.writer.take() {
            Some(w) => w.into_writer().flush().map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

/// What the pcap port's reader counts of the records it skips.
struct Skipped<'a> {
    oversize: &'a mut u64,
    cut: &'a mut u64,
}

/// A record of the capture in a buffer of `pool` with its time (`nanos`: the capture's fractions
/// are nanoseconds, else microseconds), or `None` (counted) if it is skipped.
fn take_frame(pool: &mut Vec<HeapBuf>, nanos: bool, skipped: Skipped<'_>, raw: &RawPcapPacket<'_>) -> Option<HeapBuf> {
    let len = raw.data.len();
    if len > MAX_FRAME || raw.orig_len as usize > MAX_FRAME {
        *skipped.oversize += 1;
        return None;
    }
    if raw.orig_len as usize > len {
        *skipped.cut += 1;
        return None;
    }
    // An out-of-range fraction carries into the seconds.
    let frac = if nanos { u64::from(raw.ts_frac) } else { u64::from(raw.ts_frac) * 1000 };
    let ts = std::time::Duration::from_secs(u64::from(raw.ts_sec)) + std::time::Duration::from_nanos(frac);
    let mut b = pool.pop().unwrap_or_else(new_buf);
    b.data[HEADROOM..HEADROOM + len].copy_from_slice(&raw.data);
    (b.start, b.len, b.ts) = (HEADROOM, len, ts);
    Some(b)
}

impl Port for PcapPort {
    type Buf = HeapBuf;

    /// A burst holds frames of one second of capture time, which is the engine's clock for all of
    /// them: a frame of a later second waits for the next burst (given the burst's time, a flow's
    /// packet read after a long gap in one burst would meet the idle timeout early).
    fn rx_burst(&mut self, out: &mut Vec<HeapBuf>, max: usize) -> usize {
        let mut n = 0;
        let follow = self.at_end == AtEnd::Follow;
        let mut second = None;
        if let Some(b) = self.pending.take() {
            second = Some(b.ts.as_secs());
            (self.ts, self.now) = (b.ts, b.ts.as_secs() as u32);
            out.push(b);
            n = 1;
        }
        while n < max && !self.done {
            let b = match self.reader.next_raw_packet() {
                None if follow => break,
                None => {
                    self.done = true;
                    continue;
                }
                // A record still being written: the reader keeps its start and reads on next time.
                Some(Err(PcapError::IoError(e))) if follow && e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Some(Err(e)) => {
                    eprintln!("lb-dpdk: the input capture cannot be read on ({e}): the rest of it is skipped");
                    self.read_errors += 1;
                    self.done = true;
                    continue;
                }
                Some(Ok(raw)) => {
                    let skipped = Skipped { oversize: &mut self.oversize, cut: &mut self.cut };
                    match take_frame(&mut self.pool, self.nanos, skipped, &raw) {
                        Some(b) => b,
                        None => continue,
                    }
                }
            };
            if second.is_some_and(|s| s != b.ts.as_secs()) {
                self.pending = Some(b);
                break;
            }
            second = Some(b.ts.as_secs());
            (self.ts, self.now) = (b.ts, b.ts.as_secs() as u32);
            out.push(b);
            n += 1;
        }
        if n == 0 && (follow || (self.done && self.at_end == AtEnd::Wait)) {
            // Nothing to read (a file has no interrupt): poll every millisecond rather than spin.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        n
    }

    fn tx_burst(&mut self, frames: &mut Vec<HeapBuf>) -> usize {
        let mut sent = 0;
        for b in frames.drain(..) {
            if self.write(b.ts, &b.data[b.start..b.start + b.len]) {
                sent += 1;
            }
            self.pool.push(b);
        }
        sent
    }

    fn tx_copy(&mut self, frame: &[u8]) -> bool {
        self.write(self.ts, frame)
    }

    fn recycle(&mut self, buf: HeapBuf) {
        self.pool.push(buf);
    }

    fn now(&self) -> u32 {
        self.now
    }

    fn finished(&self) -> bool {
        self.done && self.pending.is_none() && self.at_end == AtEnd::Finish
    }
}

/// Runs one worker on a pcap port reading `input` and writing `output`.
pub fn start(
    input: &Path,
    output: &Path,
    at_end: AtEnd,
    cfg: &NodeConfig,
    stop: &Arc<AtomicBool>,
) -> Result<Workers, String> {
    let mut port = PcapPort::open(input, output)?;
    let output_name: PathBuf = output.to_path_buf();
    port.at_end(at_end);
    let mut engine = new_node(cfg)?;
    let (link, handle) = worker_pair(stop);
    let t = std::thread::Builder::new()
        .name("lb-worker-0".into())
        .spawn(move || {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                poll_loop(&mut engine, std::slice::from_mut(&mut port), &[PortInfo::SINGLE], &link)
            }));
            if ran.is_err() {
                eprintln!("lb-dpdk: the worker panicked: stopping");
                link.failed.store(true, Ordering::Relaxed);
                link.stop.store(true, Ordering::Relaxed);
                link.finished.store(true, Ordering::Relaxed);
            }
            if let Err(e) = port.close() {
                eprintln!("lb-dpdk: {}: {e}", output_name.display());
                link.failed.store(true, Ordering::Relaxed);
            }
            if port.oversize > 0 || port.cut > 0 || port.read_errors > 0 {
                eprintln!(
                    "lb-dpdk: pcap input: {} frames larger than a buffer and {} cut short by the capture's \
                     snaplen skipped, {} read errors",
                    port.oversize, port.cut, port.read_errors
                );
            }
        })
        .map_err(|e| e.to_string())?;
    let join = move || {
        let _ = t.join();
    };
    Ok(Workers { joins: vec![Box::new(join)], handles: vec![handle] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A scratch directory of this test process.
    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("lb-dpdk-port-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A capture of `frames` (time, bytes, length on the wire) with `snaplen` and `datalink`.
    fn capture(path: &Path, snaplen: u32, datalink: DataLink, frames: &[(Duration, Vec<u8>, u32)]) {
        let header = PcapHeader { datalink, snaplen, ..PcapHeader::default() };
        let mut w = PcapWriter::with_header(File::create(path).unwrap(), header).unwrap();
        for (ts, data, orig_len) in frames {
            // Written raw: the library refuses to write a frame longer than the snaplen.
            let raw = RawPcapPacket {
                ts_sec: ts.as_secs() as u32,
                ts_frac: ts.subsec_micros(),
                incl_len: data.len() as u32,
                orig_len: *orig_len,
                data: data.as_slice().into(),
            };
            w.write_raw_packet(&raw).unwrap();
        }
    }

    fn read_all(path: &Path) -> Vec<(Duration, Vec<u8>)> {
        let mut r = PcapReader::new(File::open(path).unwrap()).unwrap();
        let mut out = Vec::new();
        while let Some(p) = r.next_packet() {
            let p = p.unwrap();
            out.push((p.timestamp, p.data.to_vec()));
        }
        out
    }

    #[test]
    fn frames_cut_by_the_snaplen_are_skipped_and_counted_and_the_rest_goes_on() {
        let dir = scratch("cut");
        let (input, output) = (dir.join("in.pcap"), dir.join("out.pcap"));
        let whole = |i: u8| vec![i; 54];
        let frames = vec![
            (Duration::from_secs(1), whole(1), 54),
            (Duration::from_secs(1), vec![2; 40], 54),
            (Duration::from_secs(1), whole(3), 54),
        ];
        capture(&input, 40, DataLink::ETHERNET, &frames);
        let mut port = PcapPort::open(&input, &output).unwrap();
        let mut got = Vec::new();
        while !port.finished() {
            port.rx_burst(&mut got, 32);
        }
        assert_eq!(got.iter().map(|b| b.data[b.start]).collect::<Vec<_>>(), [1, 3]);
        assert_eq!((port.cut, port.read_errors, port.oversize), (1, 0, 0));
    }

    #[test]
    fn a_burst_holds_one_second_and_frames_keep_their_capture_time() {
        let dir = scratch("time");
        let (input, output) = (dir.join("in.pcap"), dir.join("out.pcap"));
        let at = |s: u64, us: u64| Duration::from_secs(s) + Duration::from_micros(us);
        let times = [at(1, 5), at(1, 900), at(1000, 0), at(2000, 7), at(2000, 8)];
        let frames: Vec<_> = times.iter().enumerate().map(|(i, &t)| (t, vec![i as u8; 60], 60)).collect();
        capture(&input, 65535, DataLink::ETHERNET, &frames);
        let mut port = PcapPort::open(&input, &output).unwrap();
        let mut bursts = Vec::new();
        while !port.finished() {
            let mut got = Vec::new();
            if port.rx_burst(&mut got, 32) > 0 {
                bursts.push((port.now(), got.len()));
                port.tx_burst(&mut got);
            }
        }
        assert_eq!(bursts, [(1, 2), (1000, 1), (2000, 2)], "one burst a second, at that second");
        port.close().unwrap();
        let out = read_all(&output);
        assert_eq!(out.iter().map(|(t, _)| *t).collect::<Vec<_>>(), times, "each frame keeps its time");
    }

    #[test]
    fn a_capture_that_is_not_ethernet_is_refused() {
        let dir = scratch("linktype");
        let input = dir.join("in.pcap");
        capture(&input, 65535, DataLink::LINUX_SLL, &[(Duration::from_secs(1), vec![0; 60], 60)]);
        let e = PcapPort::open(&input, &dir.join("out.pcap")).err().expect("refused");
        assert!(e.contains("not Ethernet"), "{e}");
    }
}

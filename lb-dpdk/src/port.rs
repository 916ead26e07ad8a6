//! I/O behind one small trait, so that the same poll loop runs on a pcap file (the default: pure
//! Rust, runs anywhere) and on a DPDK port (feature `dpdk`).

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::{DataLink, PcapError};

pub use lb_core::paths::BurstFrame;

/// Bytes kept free in front of every received frame, for the VxLAN outer headers (70 over IPv6).
pub const HEADROOM: usize = 128;
/// Largest frame a buffer holds (a 9000-byte jumbo frame plus its tags and a tunnel).
pub const MAX_FRAME: usize = 9216 + 128;

/// A packet buffer: the frame lies at `buf[start..start + len]`, with headroom before it
/// ([`BurstFrame::parts`] gives the whole buffer and where the frame lies, so that a burst of
/// buffers goes to the data path as it is).
pub trait FrameBuf: BurstFrame {
    /// The frame now lies at `buf[start..start + len]` (after encapsulation or decapsulation).
    fn set_frame(&mut self, start: usize, len: usize);
}

/// A port: bursts in, bursts out.
pub trait Port {
    /// Its buffers.
    type Buf: FrameBuf;
    /// Receives up to `max` frames into `out`; returns how many.
    fn rx_burst(&mut self, out: &mut Vec<Self::Buf>, max: usize) -> usize;
    /// Sends the frames of `frames` in order and empties it; returns how many were sent (the port
    /// freed the rest: the caller counts them).
    fn tx_burst(&mut self, frames: &mut Vec<Self::Buf>) -> usize;
    /// Sends a copy of a frame the engine built on its own (a TCP reset); false if it could not.
    fn tx_copy(&mut self, frame: &[u8]) -> bool;
    /// Hands a buffer back for reuse (a dropped frame).
    fn recycle(&mut self, buf: Self::Buf);
    /// Seconds of the clock the data path runs on (pcap: the capture time of the last frame read).
    fn now(&self) -> u32;
    /// Whether the input has ended (a pcap file read to its end; a NIC never ends).
    fn finished(&self) -> bool;
    /// A monotonic clock in nanoseconds, for the poll loop's own accounting (the engine's time
    /// around every burst, the status period): read twice a burst, so a port with a cheaper clock
    /// than the OS's gives its own (DPDK: the TSC, 10 ns a read on the EPYC VM where
    /// `Instant::now` takes 24).
    fn clock_ns(&self) -> u64 {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        ORIGIN.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
    }
}

/// A heap buffer of the pcap port.
pub struct HeapBuf {
    data: Box<[u8]>,
    start: usize,
    len: usize,
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
    HeapBuf { data: vec![0u8; HEADROOM + MAX_FRAME].into_boxed_slice(), start: 0, len: 0 }
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
    writer: PcapWriter<BufWriter<File>>,
    pool: Vec<HeapBuf>,
    now: u32,
    ts: std::time::Duration,
    done: bool,
    /// What happens at the end of the input.
    at_end: AtEnd,
    /// Frames in the input longer than a buffer (skipped).
    pub oversize: u64,
    /// Records the reader could not parse (the rest of the file is skipped).
    pub read_errors: u64,
}

impl PcapPort {
    /// Opens `input` for reading and creates `output` (Ethernet link type).
    pub fn open(input: &Path, output: &Path) -> Result<Self, String> {
        let f = File::open(input).map_err(|e| format!("{}: {e}", input.display()))?;
        let reader = PcapReader::new(BufReader::new(f)).map_err(|e| format!("{}: {e}", input.display()))?;
        let o = File::create(output).map_err(|e| format!("{}: {e}", output.display()))?;
        let header = PcapHeader { datalink: DataLink::ETHERNET, snaplen: MAX_FRAME as u32, ..PcapHeader::default() };
        let writer =
            PcapWriter::with_header(BufWriter::new(o), header).map_err(|e| format!("{}: {e}", output.display()))?;
        Ok(PcapPort {
            reader,
            writer,
            pool: Vec::new(),
            now: 0,
            ts: std::time::Duration::ZERO,
            done: false,
            at_end: AtEnd::Finish,
            oversize: 0,
            read_errors: 0,
        })
    }

    /// What to do at the end of the input (default: finish).
    pub fn at_end(&mut self, at_end: AtEnd) {
        self.at_end = at_end;
    }

    fn write(&mut self, frame: &[u8]) -> bool {
        let p = PcapPacket::new(self.ts, frame.len() as u32, frame);
        self.writer.write_packet(&p).is_ok()
    }
}

impl Port for PcapPort {
    type Buf = HeapBuf;

    fn rx_burst(&mut self, out: &mut Vec<HeapBuf>, max: usize) -> usize {
        let mut n = 0;
        let follow = self.at_end == AtEnd::Follow;
        while n < max && !self.done {
            match self.reader.next_packet() {
                None if follow => break,
                None => self.done = true,
                // A record still being written: the reader keeps its start and reads on next time.
                Some(Err(PcapError::IoError(e))) if follow && e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Some(Err(_)) => {
                    self.read_errors += 1;
                    self.done = true;
                }
                Some(Ok(p)) => {
                    if p.data.len() > MAX_FRAME {
                        self.oversize += 1;
                        continue;
                    }
                    self.ts = p.timestamp;
                    self.now = p.timestamp.as_secs() as u32;
                    let len = p.data.len();
                    let mut b = self.pool.pop().unwrap_or_else(new_buf);
                    b.data[HEADROOM..HEADROOM + len].copy_from_slice(&p.data);
                    b.start = HEADROOM;
                    b.len = len;
                    out.push(b);
                    n += 1;
                }
            }
        }
        if n == 0 && (follow || (self.done && self.at_end == AtEnd::Wait)) {
            // Nothing to read (a file has no interrupt): poll every millisecond rather than spin.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        n
    }

    fn tx_burst(&mut self, frames: &mut Vec<HeapBuf>) -> usize {
        let mut sent = 0;
        for mut b in frames.drain(..) {
            let (buf, s, l) = b.parts();
            if self.write(&buf[s..s + l]) {
                sent += 1;
            }
            self.pool.push(b);
        }
        sent
    }

    fn tx_copy(&mut self, frame: &[u8]) -> bool {
        self.write(frame)
    }

    fn recycle(&mut self, buf: HeapBuf) {
        self.pool.push(buf);
    }

    fn now(&self) -> u32 {
        self.now
    }

    fn finished(&self) -> bool {
        self.done && self.at_end == AtEnd::Finish
    }
}

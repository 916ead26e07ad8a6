//! The C ABI (`lb-ffi`) fed what a careless C caller could pass: configuration text that is a valid
//! node file, a mutated one or arbitrary bytes (`lb_instance_new`, `lb_update`); bursts of frames
//! with random headroom, slack, `start`, `len` and `buf_len` (frames that overrun their buffer, whose
//! `start + len` overflows, NULL buffers) and random directions (`lb_process_burst`); probes with
//! random indices; `lb_expire` with random budgets and clock jumps; counters; NULL arguments.
//!
//! Topology: one load balancer (VIP 20.50.60.10: TCP 80 → 8080 with a probe, UDP 53 with floating
//! IP, inbound NAT 2201 → web1:22; outbound rule on 20.50.60.20) over three backends on hosts
//! 172.16.10.20-22. The instance under test is its MUX or the host agent of 172.16.10.21 (via the
//! MUX or direct return). A host agent's fabric frames are client frames passed through a second
//! (helper) MUX instance, so that they carry the VNI and backend tag a real MUX writes.
//!
//! Input layout (bytes past the end of the input read as 0; the op sequence stops at the end):
//!
//! | bytes | meaning                                                                                  |
//! |-------|------------------------------------------------------------------------------------------|
//! | 0..   | the node text (see [`text`]): templates MUX, host via MUX, host direct                  |
//! | then  | ops: one opcode byte (`% 8`) and its arguments, see `match op` below                     |
//!
//! Invariants: no call ever returns `LB_RESULT_PANIC` or `LB_RESULT_POISONED`; every result is one
//! the function documents; unmodified templates are accepted; a refused `lb_instance_new` leaves
//! `*out` NULL; error messages are NUL-terminated inside `err_len`, valid UTF-8, and nothing past
//! `err_len` is written; every verdict's action is TRANSMIT, DELIVER or DROP (DELIVER only from a
//! host agent), a DROP names a reason of the instance's role and leaves the frame's range as it was,
//! a TRANSMIT/DELIVER range lies inside its buffer; a refused burst (NULL, unknown direction)
//! changes no frame; the counters' drops per reason are exactly the DROP verdicts given (frames
//! with a NULL buffer aside), a MUX's `forwarded` is exactly its TRANSMIT verdicts (a host agent's
//! at most its TRANSMIT/DELIVER verdicts, at least those minus the resets it sent); a probe accepted
//! names a member `lb_backend_up` knows.
//!
//! Texts given to `lb_instance_new` containing `loadBalancerFile` or a backslash (a JSON escape
//! could spell the key) are skipped: that key reads a file, and a fuzzer could find `/dev/zero`. So
//! are texts with a run of 6 or more digits: `flowCapacity` and `maglevSize` size allocations, and
//! a big one is a resource limit, not a bug.
#![no_main]

use std::ffi::c_char;
use std::ptr::{null, null_mut};

use lb_ffi::*;
use libfuzzer_sys::fuzz_target;

const LB: &str = r#"{"name":"FLB","properties":{
"frontendIPConfigurations":[
 {"name":"Web","properties":{"publicIPAddress":{"ipAddress":"20.50.60.10"}}},
 {"name":"Out","properties":{"publicIPAddress":{"ipAddress":"20.50.60.20"}}}],
"backendAddressPools":[{"name":"Web","properties":{"vni":5001,"loadBalancerBackendAddresses":[
 {"name":"web0","properties":{"ipAddress":"10.0.1.4","hostAddress":"172.16.10.20"}},
 {"name":"web1","properties":{"ipAddress":"10.0.1.5","hostAddress":"172.16.10.21","weight":2}},
 {"name":"web2","properties":{"ipAddress":"10.0.1.6","hostAddress":"172.16.10.22"}}]}}],
"probes":[{"name":"P","properties":{"protocol":"Tcp","port":8080,"numberOfProbes":2}}],
"loadBalancingRules":[
 {"name":"Http","properties":{"frontendIPConfiguration":{"id":"f/Web"},"backendAddressPool":{"id":"p/Web"},
  "probe":{"id":"x/P"},"protocol":"Tcp","frontendPort":80,"backendPort":8080,"enableTcpReset":true}},
 {"name":"Dns","properties":{"frontendIPConfiguration":{"id":"f/Web"},"backendAddressPool":{"id":"p/Web"},
  "protocol":"Udp","frontendPort":53,"backendPort":53,"enableFloatingIP":true}}],
"inboundNatRules":[{"name":"Ssh","properties":{"frontendIPConfiguration":{"id":"f/Web"},"protocol":"Tcp",
 "frontendPort":2201,"backendPort":22,"backendIPConfiguration":{"id":"x/backendAddressPools/Web/loadBalancerBackendAddresses/web1"}}}],
"outboundRules":[{"name":"Snat","properties":{"frontendIPConfigurations":[{"id":"f/Out"}],
 "backendAddressPool":{"id":"p/Web"},"protocol":"All","allocatedOutboundPorts":64}}]}}"#;

/// The same VIP moved to a new pool on other hosts.
const LB_NEW_POOL: &str = r#"{"name":"FLB","properties":{
"frontendIPConfigurations":[{"name":"Web","properties":{"publicIPAddress":{"ipAddress":"20.50.60.10"}}}],
"backendAddressPools":[{"name":"Blue","properties":{"vni":6001,"loadBalancerBackendAddresses":[
 {"name":"b0","properties":{"ipAddress":"10.0.2.4","hostAddress":"172.16.10.21"}},
 {"name":"b1","properties":{"ipAddress":"10.0.2.5","hostAddress":"172.16.20.31"}}]}}],
"loadBalancingRules":[{"name":"Http","properties":{"frontendIPConfiguration":{"id":"f/Web"},
 "backendAddressPool":{"id":"p/Blue"},"protocol":"Tcp","frontendPort":80,"backendPort":8080}}]}}"#;

fn node(role_and_addresses: &str) -> String {
    format!(
        r#"{{{role_and_addresses},"mac":"02:00:00:00:05:0a","gatewayMac":"02:00:00:00:00:01","flowCapacity":256,"maglevSize":251,"loadBalancer":{LB}}}"#
    )
}

fn node_templates() -> [String; 3] {
    [
        node(r#""role":"mux","underlay":"172.16.5.10""#),
        node(r#""role":"host","underlay":"172.16.10.21","muxes":["172.16.5.10","172.16.5.11"]"#),
        node(r#""role":"host","underlay":"172.16.10.21","returnPath":"direct","resetOnSnatExhaustion":true"#),
    ]
}

/// Reads the input; past its end every byte is 0 and `done` turns true.
struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn done(&self) -> bool {
        self.at >= self.data.len()
    }
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }
    /// A size: mostly small, sometimes one of the values that overflow arithmetic.
    fn size(&mut self) -> usize {
        match self.u8() {
            b @ 0..=239 => usize::from(b),
            240..=247 => usize::from(self.u16()),
            248 => usize::MAX,
            249 => usize::MAX - 1,
            250 => usize::MAX / 2 + 1,
            251 => isize::MAX as usize,
            _ => self.u32() as usize,
        }
    }
}

/// A configuration text: a byte selects a template (unchanged, or with up to 8 edits: replace,
/// insert or delete a byte at an offset) or arbitrary bytes (a length byte, then the bytes).
/// Returns the text and whether it is an unmodified template.
fn text(inp: &mut Input, templates: &[&str]) -> (Vec<u8>, bool) {
    let sel = inp.u8();
    let t = templates[usize::from(sel >> 2) % templates.len()].as_bytes().to_vec();
    match sel & 3 {
        0 | 1 => (t, true),
        2 => {
            let mut t = t;
            for _ in 0..inp.u8() % 9 {
                let (op, at, b) = (inp.u8(), usize::from(inp.u16()), inp.u8());
                let at = at % (t.len() + 1);
                match op % 3 {
                    0 if at < t.len() => t[at] = b,
                    1 => t.insert(at, b),
                    _ if at < t.len() => {
                        t.remove(at);
                    }
                    _ => {}
                }
            }
            (t, false)
        }
        _ => {
            let n = usize::from(inp.u8());
            (inp.bytes(n), false)
        }
    }
}

/// Whether `lb_instance_new` may be given this text (see the module documentation).
fn safe_to_create(t: &[u8]) -> bool {
    let file_key = t.windows(16).any(|w| w == b"loadBalancerFile");
    let mut run = 0;
    let long_number = t.iter().any(|b| {
        run = if b.is_ascii_digit() { run + 1 } else { 0 };
        run >= 6
    });
    !file_key && !long_number && !t.contains(&b'\\')
}

const OK: lb_result = lb_result::LB_RESULT_OK;
const NULL_ARGUMENT: lb_result = lb_result::LB_RESULT_NULL_ARGUMENT;
const BAD_JSON: lb_result = lb_result::LB_RESULT_BAD_JSON;
const BAD_CONFIG: lb_result = lb_result::LB_RESULT_BAD_CONFIG;
const BAD_ARGUMENT: lb_result = lb_result::LB_RESULT_BAD_ARGUMENT;
const WRONG_ROLE: lb_result = lb_result::LB_RESULT_WRONG_ROLE;

/// A caller's error buffer: `err_len` bytes of 256 handed over (or NULL), the rest a sentinel.
struct ErrBuf {
    buf: [u8; 256],
    len: usize,
    null: bool,
}

impl ErrBuf {
    fn new(inp: &mut Input) -> Self {
        let b = inp.u8();
        ErrBuf { buf: [0xa5; 256], len: usize::from(b) % 257, null: b == 0xff }
    }
    fn ptr(&mut self) -> *mut c_char {
        if self.null {
            null_mut()
        } else {
            self.buf.as_mut_ptr().cast()
        }
    }
    /// After a call: on failure a NUL-terminated UTF-8 message inside `len`; nothing written past.
    fn check(&self, r: lb_result) {
        if self.null {
            assert!(self.buf.iter().all(|&b| b == 0xa5));
            return;
        }
        assert!(self.buf[self.len..].iter().all(|&b| b == 0xa5), "written past err_len");
        if r != OK && self.len > 0 {
            let nul = self.buf[..self.len].iter().position(|&b| b == 0).expect("NUL inside err_len");
            std::str::from_utf8(&self.buf[..nul]).expect("the message is UTF-8");
        }
    }
}

/// A frame for the instance: an IPv4 TCP/UDP frame from a client or from the local backend, or raw
/// bytes.
fn build_frame(inp: &mut Input) -> Vec<u8> {
    let kind = inp.u8();
    let pick = inp.u8();
    let client = [198, 18, 0, 1 + (pick & 3)];
    let cport = 40000 + u16::from(pick >> 2 & 7);
    let (src, dst, sport, dport, proto) = match kind % 8 {
        // Client → VIP: HTTP, DNS, SSH NAT, another port; client → not a VIP.
        0 => (client, [20, 50, 60, 10], cport, 80, 6),
        1 => (client, [20, 50, 60, 10], cport, 53, 17),
        2 => (client, [20, 50, 60, 10], cport, 2201, 6),
        3 => (client, [20, 50, 60, 10 + (pick & 0x10 != 0) as u8 * 10], cport, inp.u16(), 6 + 11 * (pick >> 7)),
        // The local backend (web1) answering, or opening a connection; a response from the SNAT side.
        4 => ([10, 0, 1, 5], client, 8080, cport, 6),
        5 => ([10, 0, 1, 5], [93, 184, 216, 34], 30000 + u16::from(pick), 443, 6 + 11 * (pick >> 7)),
        6 => ([93, 184, 216, 34], [20, 50, 60, 20], 443, 1024 + u16::from(pick), 6),
        _ => {
            let n = usize::from(inp.u8());
            return inp.bytes(n);
        }
    };
    let flags = inp.u8();
    let payload = usize::from(inp.u8() & 0x3f);
    let l4_len = if proto == 6 { 20 } else { 8 } + payload;
    let mut f = vec![2, 0, 0, 0, 5, 10, 2, 0, 0, 0, 0x0c, 1, 8, 0];
    let total = (20 + l4_len) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = csum(0, &ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut l4 = Vec::with_capacity(l4_len);
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        l4.extend_from_slice(&[0, 0, 1, 0, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        l4.extend_from_slice(&(l4_len as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend((0..payload).map(|i| i as u8));
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
    let c = csum(sum(0, &pseudo), &l4);
    let at = if proto == 6 { 16 } else { 6 };
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&l4);
    f
}

fn sum(mut s: u32, b: &[u8]) -> u32 {
    for c in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    s
}

fn csum(s: u32, b: &[u8]) -> u16 {
    let mut s = sum(s, b);
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// One frame of a burst: its buffer (exactly `buf_len` bytes) and the `lb_frame` describing it.
struct Slot {
    buf: Vec<u8>,
    frame: lb_frame,
    null: bool,
}

/// Places `frame` in a buffer with `headroom` before and `slack` after it, then maybe lies about the
/// geometry (the buffer's real size stays `buf_len`, as the contract requires).
fn slot(inp: &mut Input, frame: Vec<u8>) -> Slot {
    let headroom = usize::from(inp.u8());
    let slack = usize::from(inp.u8() & 0x1f);
    let mut buf = vec![0xee; headroom + frame.len() + slack];
    buf[headroom..headroom + frame.len()].copy_from_slice(&frame);
    let (mut start, mut len) = (headroom, frame.len());
    let lie = inp.u8();
    match lie % 16 {
        8 => len += 1 + slack,                             // one byte past the buffer
        9 => len = inp.size(),                             // any length
        10 => start = inp.size(),                          // any start
        11 => (start, len) = (inp.size(), inp.size()),     // both
        12 => buf.truncate(start + len.saturating_sub(1)), // the buffer ends inside the frame
        13 => (start, len) = (usize::MAX, 2),              // start + len overflows
        _ => {}
    }
    let null = lie == 0xff;
    let frame = lb_frame { buf: buf.as_mut_ptr(), buf_len: buf.len(), start, len };
    Slot { buf, frame: if null { lb_frame { buf: null_mut(), ..frame } } else { frame }, null }
}

/// What the instance has told: drop verdicts per reason, forwarding verdicts.
#[derive(Default)]
struct Tally {
    drops: [u64; LB_MAX_DROP_REASONS],
    forwarded: u64,
}

fn run(data: &[u8]) {
    let mut inp = Input { data, at: 0 };
    let nodes = node_templates();
    let (json, template) = text(&mut inp, &[&nodes[0], &nodes[1], &nodes[2]]);
    let mut err = ErrBuf::new(&mut inp);
    if !safe_to_create(&json) {
        return;
    }
    // Not NULL: the library must clear it on failure.
    let mut inst: *mut lb_instance = std::ptr::NonNull::dangling().as_ptr();
    // SAFETY: `json` is readable for its length, `inst` writable, `err` 256 bytes (len <= 256).
    let r = unsafe { lb_instance_new(json.as_ptr().cast(), json.len(), &mut inst, err.ptr(), err.len) };
    assert!([OK, BAD_JSON, BAD_CONFIG].contains(&r), "lb_instance_new: {r:?}");
    err.check(r);
    if template {
        assert_eq!(r, OK, "a template is refused: {}", String::from_utf8_lossy(&err.buf));
    }
    if r != OK {
        assert!(inst.is_null());
        return;
    }
    assert!(!inst.is_null());
    // SAFETY: live instance.
    let role = unsafe { lb_instance_role(inst) };
    let host = match role {
        1 => false,
        2 => true,
        _ => panic!("role {role}"),
    };
    let reasons = (0..).take_while(|&r| !lb_drop_reason_name(role, r).is_null()).count() as u32;
    assert!(reasons as usize <= LB_MAX_DROP_REASONS);
    // A host agent's fabric frames come from a helper MUX.
    let helper = if host {
        let mut m = null_mut();
        let t = &nodes[0];
        // SAFETY: as above; no error buffer.
        assert_eq!(unsafe { lb_instance_new(t.as_ptr().cast(), t.len(), &mut m, null_mut(), 0) }, OK);
        m
    } else {
        null_mut()
    };
    let mut tally = Tally::default();
    let mut now = inp.u32();

    while !inp.done() {
        let op = inp.u8();
        match op % 8 {
            // A burst.
            0..=2 => {
                let n = usize::from(inp.u8() % 9);
                let dsel = inp.u8();
                let direction = if dsel < 0xf0 { u32::from(dsel % 3) } else { inp.u32() };
                now = now.wrapping_add(u32::from(inp.u8() & 7));
                let mut slots: Vec<Slot> = Vec::with_capacity(n);
                for _ in 0..n {
                    let mut f = build_frame(&mut inp);
                    let through_mux = inp.u8();
                    if host && through_mux & 1 == 1 {
                        // Through the helper MUX, as the fabric would bring it.
                        let mut buf = vec![0u8; 128 + f.len()];
                        buf[128..].copy_from_slice(&f);
                        let mut fr = lb_frame { buf: buf.as_mut_ptr(), buf_len: buf.len(), start: 128, len: f.len() };
                        let mut v = lb_verdict { action: lb_action::LB_ACTION_DROP, reason: 0, backend: 0 };
                        // SAFETY: one frame in a live buffer, one verdict.
                        let r = unsafe { lb_process_burst(helper, &mut fr, 1, now, 0, &mut v) };
                        assert_eq!(r, OK);
                        if v.action == lb_action::LB_ACTION_TRANSMIT {
                            f = buf[fr.start..fr.start + fr.len].to_vec();
                        }
                    }
                    for _ in 0..(through_mux >> 5) {
                        // A few bit flips.
                        let (at, x) = (usize::from(inp.u16()), inp.u8());
                        if !f.is_empty() {
                            let i = at % f.len();
                            f[i] ^= x;
                        }
                    }
                    slots.push(slot(&mut inp, f));
                }
                let mut frames: Vec<lb_frame> = slots.iter().map(|s| s.frame).collect();
                let before = frames.clone();
                let mut verdicts = vec![lb_verdict { action: lb_action::LB_ACTION_DROP, reason: 99, backend: 99 }; n];
                let (fp, vp) = match inp.u8() {
                    0xfe => (null_mut(), verdicts.as_mut_ptr()),
                    0xff => (frames.as_mut_ptr(), null_mut()),
                    _ => (frames.as_mut_ptr(), verdicts.as_mut_ptr()),
                };
                // SAFETY: `n` frames and verdicts (or NULL), each frame's buffer `buf_len` bytes.
                let r = unsafe { lb_process_burst(inst, fp, n, now, direction, vp) };
                // NULL arrays are checked first (as documented), then the direction.
                let refused = if n > 0 && (fp.is_null() || vp.is_null()) {
                    assert_eq!(r, NULL_ARGUMENT);
                    true
                } else if direction > 2 {
                    assert_eq!(r, BAD_ARGUMENT);
                    true
                } else {
                    let any_null = slots.iter().any(|s| s.null);
                    assert_eq!(r, if any_null { NULL_ARGUMENT } else { OK });
                    false
                };
                for (i, (f, b)) in frames.iter().zip(&before).enumerate() {
                    if refused {
                        assert!(f.buf == b.buf && f.buf_len == b.buf_len && f.start == b.start && f.len == b.len);
                        continue;
                    }
                    let v = verdicts[i];
                    assert_eq!(f.buf, b.buf);
                    assert_eq!(f.buf_len, b.buf_len);
                    match v.action {
                        lb_action::LB_ACTION_DROP => {
                            assert!(v.reason < reasons, "reason {}", v.reason);
                            assert!(!lb_drop_reason_name(role, v.reason).is_null());
                            assert_eq!(v.backend, 0);
                            assert!(f.start == b.start && f.len == b.len, "a dropped frame moved");
                            if !slots[i].null {
                                tally.drops[v.reason as usize] += 1;
                            } else {
                                assert_eq!(v.reason, 0);
                            }
                        }
                        lb_action::LB_ACTION_TRANSMIT | lb_action::LB_ACTION_DELIVER => {
                            assert!(host || v.action == lb_action::LB_ACTION_TRANSMIT, "a MUX delivered");
                            assert_eq!(v.reason, 0);
                            let end = f.start.checked_add(f.len).expect("start + len overflows");
                            assert!(end <= f.buf_len && f.len > 0, "range {}+{} outside {}", f.start, f.len, f.buf_len);
                            assert!(end <= slots[i].buf.len());
                            if v.action == lb_action::LB_ACTION_TRANSMIT {
                                assert_eq!(v.backend, 0);
                            }
                            tally.forwarded += 1;
                        }
                    }
                }
            }
            // A probe.
            3 => {
                // Mostly indices the templates have (a pool, its probe, a member), sometimes any.
                let (pool, probe, member) = if inp.u8() < 224 {
                    (usize::from(inp.u8() % 2), usize::from(inp.u8() % 2), usize::from(inp.u8() % 4))
                } else {
                    (inp.size(), inp.size(), inp.size())
                };
                let ok = inp.u8() & 1 == 1;
                // SAFETY: live instance.
                let before = unsafe { lb_backend_up(inst, pool, member) };
                // SAFETY: live instance.
                let r = unsafe { lb_report_probe(inst, pool, probe, member, ok) };
                // SAFETY: live instance.
                let up = unsafe { lb_backend_up(inst, pool, member) };
                match (host, r) {
                    (true, WRONG_ROLE) => assert_eq!(up, -1),
                    (false, OK) => assert!(up == 0 || up == 1),
                    // An unknown member, or a probe no rule of the pool uses: nothing changes.
                    (false, BAD_ARGUMENT) => assert_eq!(up, before, "a refused report changed the member's health"),
                    other => panic!("lb_report_probe: {other:?}"),
                }
            }
            // An update.
            4 => {
                let (json, template) = text(&mut inp, &[LB, LB_NEW_POOL]);
                let mut err = ErrBuf::new(&mut inp);
                // SAFETY: `json` readable for its length; `err` as above.
                let r = unsafe { lb_update(inst, json.as_ptr().cast(), json.len(), err.ptr(), err.len) };
                assert!([OK, BAD_JSON, BAD_CONFIG].contains(&r), "lb_update: {r:?}");
                err.check(r);
                if template {
                    assert_eq!(r, OK, "a template update is refused: {}", String::from_utf8_lossy(&err.buf));
                }
            }
            // Time passes; expiry.
            5 => {
                now = match inp.u8() {
                    0..=127 => now.wrapping_add(u32::from(inp.u8())),
                    128..=191 => now.wrapping_add(3600),
                    _ => inp.u32(),
                };
                let buckets = inp.size();
                // SAFETY: live instance.
                assert_eq!(unsafe { lb_expire(inst, now, buckets) }, OK);
            }
            // Counters.
            6 => {
                let mut c = lb_counters::default();
                // SAFETY: live instance, writable counters.
                assert_eq!(unsafe { lb_counters_get(inst, &mut c) }, OK);
                assert_eq!(c.drop_reasons, reasons);
                assert_eq!(c.drops, tally.drops, "drop counters vs verdicts");
                if host {
                    assert!(c.forwarded <= tally.forwarded && tally.forwarded <= c.forwarded + c.tcp_resets);
                } else {
                    assert_eq!(c.forwarded, tally.forwarded, "forwarded vs verdicts");
                    assert_eq!((c.snat_ports_in_use, c.tcp_resets), (0, 0));
                }
            }
            // NULL arguments everywhere.
            _ => {
                let mut out = null_mut();
                let mut c = lb_counters::default();
                let mut v = lb_verdict { action: lb_action::LB_ACTION_DROP, reason: 0, backend: 0 };
                let mut f = lb_frame { buf: null_mut(), buf_len: 0, start: 0, len: 0 };
                // SAFETY: every pointer is NULL or valid.
                unsafe {
                    assert_eq!(lb_instance_new(null(), 3, &mut out, null_mut(), 0), NULL_ARGUMENT);
                    assert_eq!(lb_instance_new(b"{}".as_ptr().cast(), 2, null_mut(), null_mut(), 0), NULL_ARGUMENT);
                    assert_eq!(lb_process_burst(null_mut(), &mut f, 1, now, 0, &mut v), NULL_ARGUMENT);
                    assert_eq!(lb_report_probe(null_mut(), 0, 0, 0, true), NULL_ARGUMENT);
                    assert_eq!(lb_update(null_mut(), b"{}".as_ptr().cast(), 2, null_mut(), 0), NULL_ARGUMENT);
                    assert_eq!(lb_update(inst, null(), 2, null_mut(), 0), NULL_ARGUMENT);
                    assert_eq!(lb_expire(null_mut(), now, 1), NULL_ARGUMENT);
                    assert_eq!(lb_counters_get(null_mut(), &mut c), NULL_ARGUMENT);
                    assert_eq!(lb_counters_get(inst, null_mut()), NULL_ARGUMENT);
                    assert_eq!(lb_backend_up(null(), 0, 0), -1);
                    assert_eq!(lb_instance_role(null()), 0);
                    lb_instance_free(null_mut());
                }
                let name = lb_result_name(u32::from(op));
                assert!(!name.is_null());
            }
        }
    }
    // SAFETY: both are live (or NULL) and freed once.
    unsafe {
        lb_instance_free(inst);
        lb_instance_free(helper);
    }
}

fuzz_target!(|data: &[u8]| run(data));

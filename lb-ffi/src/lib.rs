//! The C ABI of the load balancer: a C appliance (a vSwitch, a firewall, a router) creates a MUX or
//! a host agent from a node file's JSON, hands it bursts of frames in its own buffers, and reads
//! verdicts, counters and errors. `include/lb.h` is generated from this file by cbindgen.
//!
//! Conventions (rustls-ffi's): every symbol starts with `lb_`; instances are opaque handles
//! (`lb_instance *`); every function that can fail returns an [`lb_result`] whose success value is
//! 0 and whose error values start at 7000; a NULL argument gives `LB_RESULT_NULL_ARGUMENT`, never a
//! crash; no panic crosses the boundary (each export runs under `catch_unwind` and a panic becomes
//! `LB_RESULT_PANIC`; the instance that panicked is poisoned and refuses further work).
//!
//! Threads: one instance per core (per thread), no hidden locks, no global state besides the
//! version string. An instance may move between threads, but must not be used by two at once.
#![allow(non_camel_case_types)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use lb_core::config::json::from_json;
use lb_core::config::node::{self, NodeError};
use lb_core::config::ConfigError;
use lb_core::paths::{Action, BurstFrame, DropCause, Node, NodeError as PathError, Side};

/// Result codes. `LB_RESULT_OK` is 0; errors start at 7000 so that they never look like a count or
/// an errno.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum lb_result {
    /// Success.
    LB_RESULT_OK = 0,
    /// A required pointer argument was NULL.
    LB_RESULT_NULL_ARGUMENT = 7000,
    /// The text is not UTF-8 or not JSON of the expected shape.
    LB_RESULT_BAD_JSON = 7001,
    /// The configuration is invalid (the message names the resource and the field).
    LB_RESULT_BAD_CONFIG = 7002,
    /// An argument is out of range (an unknown pool member, a frame outside its buffer).
    LB_RESULT_BAD_ARGUMENT = 7003,
    /// The operation does not apply to this instance's role.
    LB_RESULT_WRONG_ROLE = 7004,
    /// The library panicked (a bug); the instance refuses further work.
    LB_RESULT_PANIC = 7005,
    /// The instance panicked earlier and is unusable; free it.
    LB_RESULT_POISONED = 7006,
}

/// What to do with a frame after [`lb_process_burst`].
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum lb_action {
    /// Send `buf[start .. start + len]` on the fabric / network port.
    LB_ACTION_TRANSMIT = 1,
    /// Hand `buf[start .. start + len]` to local backend `backend` (host agent only).
    LB_ACTION_DELIVER = 2,
    /// Drop it; `reason` says why (see [`lb_drop_reason_name`]).
    LB_ACTION_DROP = 3,
}

/// Where a frame given to a host agent comes from.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum lb_direction {
    /// Decide per frame: a VxLAN frame addressed to this host, or sent by one of its MUXes, came
    /// from the fabric; anything else from a backend. A MUX ignores the direction.
    LB_DIRECTION_AUTO = 0,
    /// From the fabric (VxLAN from a MUX, replies to SNAT connections).
    LB_DIRECTION_FROM_FABRIC = 1,
    /// From a local backend (its vNIC).
    LB_DIRECTION_FROM_BACKEND = 2,
}

/// The role of an instance.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum lb_role {
    /// A MUX.
    LB_ROLE_MUX = 1,
    /// A host agent.
    LB_ROLE_HOST = 2,
}

/// One frame of a burst, in a buffer the caller owns. On input the frame lies at
/// `buf[start .. start + len]`, with headroom before it (at least 70 bytes for the tunnel's outer
/// headers over IPv6, 50 over IPv4; 128 is a safe choice); on output `start` and `len` say where the
/// frame to send or deliver now lies (the library edits frames in place and writes outer headers
/// into the headroom, never past `buf_len`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lb_frame {
    /// The buffer (caller-owned; must stay valid and unaliased during the call).
    pub buf: *mut u8,
    /// Its size in bytes.
    pub buf_len: usize,
    /// Where the frame starts.
    pub start: usize,
    /// The frame's length.
    pub len: usize,
}

/// The verdict on one frame.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct lb_verdict {
    /// What to do.
    pub action: lb_action,
    /// For `LB_ACTION_DROP`: the reason's index (see [`lb_drop_reason_name`]); else 0.
    pub reason: u32,
    /// For `LB_ACTION_DELIVER`: the local backend's index; else 0.
    pub backend: u32,
}

/// Maximum number of drop reasons an [`lb_counters`] holds.
pub const LB_MAX_DROP_REASONS: usize = 16;

/// An instance's counters (a snapshot).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct lb_counters {
    /// Frames sent on (transmitted or delivered).
    pub forwarded: u64,
    /// Their bytes, without tunnel headers (the frames as the client or the backend sent them).
    pub forwarded_bytes: u64,
    /// New connections: a MUX counts those it steered; a host agent those it delivered and those
    /// its backends opened through SNAT.
    pub new_flows: u64,
    /// Drops per reason index; `drop_reasons` of them are meaningful.
    pub drops: [u64; LB_MAX_DROP_REASONS],
    /// Number of drop reasons of this role.
    pub drop_reasons: u32,
    /// Live flow-table entries.
    pub flows: u64,
    /// SNAT ports in use (host agent).
    pub snat_ports_in_use: u64,
    /// TCP resets sent (host agent).
    pub tcp_resets: u64,
    /// ICMP "fragmentation needed" / "packet too big" errors sent for packets that no longer fit
    /// the underlay after VxLAN.
    pub icmp_too_big: u64,
}

/// An opaque MUX or host-agent instance. Create it with [`lb_instance_new`], free it with
/// [`lb_instance_free`].
pub struct lb_instance {
    node: Node,
    poisoned: bool,
}

/// The one map from the library's errors to result codes.
trait ResultCode {
    /// The code a C caller gets for this error.
    fn code(&self) -> lb_result;
}

impl ResultCode for ConfigError {
    fn code(&self) -> lb_result {
        // A load balancer whose JSON has the wrong shape is bad JSON, one that breaks a rule a bad
        // configuration.
        if self.is_json() {
            lb_result::LB_RESULT_BAD_JSON
        } else {
            lb_result::LB_RESULT_BAD_CONFIG
        }
    }
}

impl ResultCode for NodeError {
    fn code(&self) -> lb_result {
        match self {
            NodeError::Json(..) => lb_result::LB_RESULT_BAD_JSON,
            NodeError::LoadBalancer(e) => e.code(),
            NodeError::Io(..) | NodeError::Field(..) => lb_result::LB_RESULT_BAD_CONFIG,
        }
    }
}

impl ResultCode for PathError {
    fn code(&self) -> lb_result {
        match self {
            PathError::WrongRole => lb_result::LB_RESULT_WRONG_ROLE,
            PathError::Mux(lb_core::paths::MuxError::UnknownBackend { .. })
            | PathError::Mux(lb_core::paths::MuxError::NotProbed { .. }) => lb_result::LB_RESULT_BAD_ARGUMENT,
            PathError::Mux(_) | PathError::Host(_) => lb_result::LB_RESULT_BAD_CONFIG,
        }
    }
}

/// An error's code and its message for the caller's buffer.
fn failure<E: ResultCode + std::fmt::Display>(e: E, message: &mut Option<String>) -> lb_result {
    *message = Some(e.to_string());
    e.code()
}

/// Copies `msg` into the caller's `err` buffer (NUL-terminated, truncated to fit on a UTF-8
/// character boundary) if there is one; `err_len` 0 writes nothing.
fn write_error(err: *mut c_char, err_len: usize, msg: &str) {
    if err.is_null() || err_len == 0 {
        return;
    }
    let mut n = msg.len().min(err_len - 1);
    // Cut on a character boundary, so that what the caller gets is always valid UTF-8.
    while !msg.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: the caller promises `err` points to `err_len` writable bytes; we write n + 1 <= err_len.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), err.cast::<u8>(), n);
        *err.add(n) = 0;
    }
}

/// What [`lb_result_name`] says of `r`, for an error buffer.
fn describe(r: lb_result) -> &'static str {
    // SAFETY: `lb_result_name` returns a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(lb_result_name(r as u32)) }.to_str().unwrap_or("error")
}

/// Runs `f` with panics caught and turned into `LB_RESULT_PANIC`.
fn guard(f: impl FnOnce() -> lb_result) -> lb_result {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(lb_result::LB_RESULT_PANIC)
}

/// `len` bytes at `text` as UTF-8, or an error code.
///
/// # Safety
/// `text` must point to `len` readable bytes (checked for NULL here).
unsafe fn text<'a>(text: *const c_char, len: usize) -> Result<&'a str, lb_result> {
    if text.is_null() {
        return Err(lb_result::LB_RESULT_NULL_ARGUMENT);
    }
    // SAFETY: non-NULL, and the caller promises `len` readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len) };
    std::str::from_utf8(bytes).map_err(|_| lb_result::LB_RESULT_BAD_JSON)
}

/// Creates an instance from a node file's JSON (`json`, `json_len` bytes, UTF-8, need not be
/// NUL-terminated): the role (`"mux"` or `"host"`), this node's addresses and the load balancer
/// inline (`"loadBalancer": {...}`) or as a file (`"loadBalancerFile"`, relative to the current
/// directory). On success `*out` owns a new instance (free it with [`lb_instance_free`]). On failure
/// `*out` is left NULL and, if `err` is not NULL, a NUL-terminated message (truncated to `err_len`
/// bytes) says what is wrong, whatever the failure. NULL `json` or `out` gives
/// `LB_RESULT_NULL_ARGUMENT`.
///
/// # Safety
/// `json` must point to `json_len` readable bytes; `out` to a writable pointer; `err`, if not NULL,
/// to `err_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn lb_instance_new(
    json: *const c_char,
    json_len: usize,
    out: *mut *mut lb_instance,
    err: *mut c_char,
    err_len: usize,
) -> lb_result {
    // Every failure leaves a message in `err`, those without one of their own (a NULL `out`, a
    // caught panic) the result's description.
    let mut message = None;
    let r = guard(|| {
        if out.is_null() {
            return lb_result::LB_RESULT_NULL_ARGUMENT;
        }
        // SAFETY: `out` is non-NULL and writable per the contract.
        unsafe { *out = std::ptr::null_mut() };
        // SAFETY: per the contract.
        let t = match unsafe { text(json, json_len) } {
            Ok(t) => t,
            Err(e) => {
                message = Some("configuration is NULL or not UTF-8".to_string());
                return e;
            }
        };
        let cfg = match node::parse(t, Path::new("."), Path::new("<json>")) {
            Ok(c) => c,
            Err(e) => return failure(e, &mut message),
        };
        match Node::new(cfg.role, cfg.lb) {
            Ok(node) => {
                let b = Box::new(lb_instance { node, poisoned: false });
                // SAFETY: as above.
                unsafe { *out = Box::into_raw(b) };
                lb_result::LB_RESULT_OK
            }
            Err(e) => failure(e, &mut message),
        }
    });
    if r != lb_result::LB_RESULT_OK {
        write_error(err, err_len, message.as_deref().unwrap_or(describe(r)));
    }
    r
}

/// Frees an instance. NULL is ignored. Freeing the same instance twice, or using it afterwards, is
/// undefined behaviour (as with `free`).
///
/// # Safety
/// `inst` must be NULL or a pointer [`lb_instance_new`] returned and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn lb_instance_free(inst: *mut lb_instance) {
    if inst.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: per the contract, `inst` came from Box::into_raw and is freed once.
        drop(unsafe { Box::from_raw(inst) });
    }));
}

/// The role of an instance (`LB_ROLE_MUX` or `LB_ROLE_HOST`), or 0 for NULL.
///
/// # Safety
/// `inst` must be NULL or a live instance.
#[no_mangle]
pub unsafe extern "C" fn lb_instance_role(inst: *const lb_instance) -> u32 {
    catch_unwind(|| {
        // SAFETY: per the contract.
        match unsafe { inst.as_ref() } {
            Some(i) if i.node.is_mux() => lb_role::LB_ROLE_MUX as u32,
            Some(_) => lb_role::LB_ROLE_HOST as u32,
            None => 0,
        }
    })
    .unwrap_or(0)
}

/// Runs `f` on a live, unpoisoned instance, poisoning it if `f` panics.
///
/// # Safety
/// `inst` must be NULL or a live instance not used by another thread.
unsafe fn with_instance(inst: *mut lb_instance, f: impl FnOnce(&mut lb_instance) -> lb_result) -> lb_result {
    // SAFETY: per the contract.
    let Some(i) = (unsafe { inst.as_mut() }) else {
        return lb_result::LB_RESULT_NULL_ARGUMENT;
    };
    if i.poisoned {
        return lb_result::LB_RESULT_POISONED;
    }
    let r = catch_unwind(AssertUnwindSafe(|| f(&mut *i)));
    match r {
        Ok(r) => r,
        Err(_) => {
            i.poisoned = true;
            lb_result::LB_RESULT_PANIC
        }
    }
}

/// Processes `n` frames in place at time `now` (seconds of any monotonic clock) and writes one
/// verdict per frame to `verdicts` (`n` of them, caller-owned). `direction` (an [`lb_direction`])
/// tells a host agent where the frames come from (a MUX ignores it, but it must still be one of the
/// listed values: others give `LB_RESULT_BAD_ARGUMENT` and process nothing). A frame whose
/// `start`/`len` do not lie inside its buffer is dropped as malformed; a frame without enough
/// headroom for the tunnel is dropped with the encapsulation reason. Returns
/// `LB_RESULT_NULL_ARGUMENT` if `inst`, or (with `n > 0`) `frames` or `verdicts`, is NULL (checked
/// first, nothing is processed), or if a frame's `buf` is NULL (that frame's verdict is a drop with
/// reason 0, malformed; the others are processed). Never allocates.
///
/// # Safety
/// `frames` and `verdicts` must point to `n` elements; each frame's `buf` to `buf_len` bytes the
/// library may read and write, not aliased by another frame of the burst.
#[no_mangle]
pub unsafe extern "C" fn lb_process_burst(
    inst: *mut lb_instance,
    frames: *mut lb_frame,
    n: usize,
    now: u32,
    direction: u32,
    verdicts: *mut lb_verdict,
) -> lb_result {
    let work = |i: &mut lb_instance| {
        // NULL arrays first, as documented, then the direction.
        if n > 0 && (frames.is_null() || verdicts.is_null()) {
            return lb_result::LB_RESULT_NULL_ARGUMENT;
        }
        // A C caller may pass any integer: only the listed values become a side.
        let side = match direction {
            0 => Side::Either,
            1 => Side::Fabric,
            2 => Side::Backend,
            _ => return lb_result::LB_RESULT_BAD_ARGUMENT,
        };
        if n == 0 {
            return lb_result::LB_RESULT_OK;
        }
        // SAFETY: non-NULL, `n` elements each, per the contract.
        let (frames, verdicts) =
            unsafe { (std::slice::from_raw_parts_mut(frames, n), std::slice::from_raw_parts_mut(verdicts, n)) };
        // SAFETY: per the contract, every non-NULL `buf` is the library's for the call.
        unsafe { process_frames(&mut i.node, frames, verdicts, side, now) }
    };
    // SAFETY: per the contract.
    unsafe { with_instance(inst, work) }
}

/// A caller's frame, as the data path takes it.
struct CallerFrame<'a> {
    buf: &'a mut [u8],
    start: usize,
    len: usize,
}

impl BurstFrame for CallerFrame<'_> {
    #[inline(always)]
    fn parts(&mut self) -> (&mut [u8], usize, usize) {
        (&mut *self.buf, self.start, self.len)
    }
}

/// Runs the frames through the node a burst at a time (a MUX parses every frame of a burst and
/// prefetches its flow before steering any), skipping frames with a NULL buffer (dropped as
/// malformed, `LB_RESULT_NULL_ARGUMENT`).
///
/// # Safety
/// Each non-NULL `buf` points to `buf_len` bytes, exclusively the library's for the call and not
/// aliased by another frame.
unsafe fn process_frames(
    node: &mut Node,
    frames: &mut [lb_frame],
    verdicts: &mut [lb_verdict],
    side: Side,
    now: u32,
) -> lb_result {
    const BURST: usize = lb_core::paths::mux::BURST;
    let mut result = lb_result::LB_RESULT_OK;
    for (fs, vs) in frames.chunks_mut(BURST).zip(verdicts.chunks_mut(BURST)) {
        let mut views: [CallerFrame<'_>; BURST] =
            std::array::from_fn(|_| CallerFrame { buf: &mut [][..], start: 0, len: 0 });
        let mut index = [0usize; BURST];
        let mut k = 0;
        for (j, f) in fs.iter().enumerate() {
            if f.buf.is_null() {
                result = lb_result::LB_RESULT_NULL_ARGUMENT;
                vs[j] = drop_verdict(0);
                continue;
            }
            // SAFETY: non-NULL with `buf_len` bytes, exclusively ours for the call, per the contract.
            let buf = unsafe { std::slice::from_raw_parts_mut(f.buf, f.buf_len) };
            views[k] = CallerFrame { buf, start: f.start, len: f.len };
            index[k] = j;
            k += 1;
        }
        let mut actions = [Action::Drop(DropCause::mux(0).expect("a first reason")); BURST];
        node.process_burst(&mut views[..k], side, now, &mut actions[..k]);
        for (&j, a) in index[..k].iter().zip(&actions[..k]) {
            vs[j] = verdict(&mut fs[j], *a);
        }
    }
    result
}

fn drop_verdict(reason: u32) -> lb_verdict {
    lb_verdict { action: lb_action::LB_ACTION_DROP, reason, backend: 0 }
}

/// The caller's verdict on a frame; a frame sent on now lies where the action says.
fn verdict(f: &mut lb_frame, a: Action) -> lb_verdict {
    match a {
        Action::Transmit { start, len } => {
            (f.start, f.len) = (start, len);
            lb_verdict { action: lb_action::LB_ACTION_TRANSMIT, reason: 0, backend: 0 }
        }
        Action::Deliver { backend, start, len } => {
            (f.start, f.len) = (start, len);
            lb_verdict { action: lb_action::LB_ACTION_DELIVER, reason: 0, backend: backend as u32 }
        }
        Action::Drop(cause) => drop_verdict(cause.index() as u32),
    }
}

/// Reports one result of health probe `probe` for member `member` of pool `pool` (indices in the
/// load balancer's order: `backendAddressPools`, `probes`, the pool's backends). A MUX feeds its
/// health state machine (`numberOfProbes` consecutive failures take a backend out, 2 consecutive
/// successes bring it back) for the load-balancing rules that send to the pool with that probe:
/// each rule is steered by its own probe. A host agent does not steer by health and returns
/// `LB_RESULT_WRONG_ROLE`. Unknown indices, and a probe that no rule of the pool uses, give
/// `LB_RESULT_BAD_ARGUMENT`.
///
/// # Safety
/// `inst` must be NULL or a live instance.
#[no_mangle]
pub unsafe extern "C" fn lb_report_probe(
    inst: *mut lb_instance,
    pool: usize,
    probe: usize,
    member: usize,
    success: bool,
) -> lb_result {
    let work = |i: &mut lb_instance| match i
        .node
        .record_probe(pool, probe, member, success)
        .and_then(|()| i.node.apply_probes())
    {
        Ok(()) => lb_result::LB_RESULT_OK,
        Err(e) => e.code(),
    };
    // SAFETY: per the contract.
    unsafe { with_instance(inst, work) }
}

/// Whether member `member` of pool `pool` is up (1), down (0: a probe of one of the pool's rules
/// took it out, so that rule sends it no new flows), or unknown (-1: NULL instance, a poisoned
/// one, a host agent, or indices out of range).
///
/// # Safety
/// `inst` must be NULL or a live instance.
#[no_mangle]
pub unsafe extern "C" fn lb_backend_up(inst: *const lb_instance, pool: usize, member: usize) -> i32 {
    catch_unwind(|| {
        // SAFETY: per the contract.
        match unsafe { inst.as_ref() } {
            Some(lb_instance { node, poisoned: false }) => match node.health(pool, member) {
                Some(lb_core::tables::Health::Up) => 1,
                Some(_) => 0,
                None => -1,
            },
            _ => -1,
        }
    })
    .unwrap_or(-1)
}

/// Replaces the load balancer at run time with one load balancer in Azure's resource JSON (`json`,
/// `json_len` bytes; not a node file: the role and addresses stay). Established flows keep their
/// backends. On error nothing changes, the message goes to `err` as in [`lb_instance_new`], and the
/// result is `LB_RESULT_BAD_JSON` or `LB_RESULT_BAD_CONFIG`.
///
/// # Safety
/// As [`lb_instance_new`]; `inst` must be NULL or a live instance.
#[no_mangle]
pub unsafe extern "C" fn lb_update(
    inst: *mut lb_instance,
    json: *const c_char,
    json_len: usize,
    err: *mut c_char,
    err_len: usize,
) -> lb_result {
    // As in `lb_instance_new`, every failure leaves a message (a NULL or poisoned instance, a
    // caught panic: the result's description).
    let mut message = None;
    let work = |i: &mut lb_instance| {
        // SAFETY: per the contract.
        let t = match unsafe { text(json, json_len) } {
            Ok(t) => t,
            Err(e) => {
                message = Some("configuration is NULL or not UTF-8".to_string());
                return e;
            }
        };
        let lb = match from_json(t) {
            Ok(lb) => lb,
            Err(e) => return failure(e, &mut message),
        };
        match i.node.update(lb) {
            Ok(()) => lb_result::LB_RESULT_OK,
            Err(e) => failure(e, &mut message),
        }
    };
    // SAFETY: per the contract.
    let r = unsafe { with_instance(inst, work) };
    if r != lb_result::LB_RESULT_OK {
        write_error(err, err_len, message.as_deref().unwrap_or(describe(r)));
    }
    r
}

/// Expires idle flows in up to `buckets` buckets of the flow table (call it from the poll loop with
/// a small budget, e.g. 8). A host agent releases their SNAT ports; TCP resets it would send are
/// counted, and written nowhere (C appliances that want them call the Rust API).
///
/// # Safety
/// `inst` must be NULL or a live instance.
#[no_mangle]
pub unsafe extern "C" fn lb_expire(inst: *mut lb_instance, now: u32, buckets: usize) -> lb_result {
    let work = |i: &mut lb_instance| {
        i.node.expire(now, buckets, |_, _| {});
        lb_result::LB_RESULT_OK
    };
    // SAFETY: per the contract.
    unsafe { with_instance(inst, work) }
}

/// Writes a snapshot of the counters to `*out` (caller-owned).
///
/// # Safety
/// `inst` must be NULL or a live instance; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lb_counters_get(inst: *mut lb_instance, out: *mut lb_counters) -> lb_result {
    if out.is_null() {
        return lb_result::LB_RESULT_NULL_ARGUMENT;
    }
    let work = |i: &mut lb_instance| {
        let t = i.node.totals();
        let mut c = lb_counters {
            forwarded: t.forwarded,
            forwarded_bytes: t.forwarded_bytes,
            new_flows: t.new_flows,
            flows: t.flows,
            snat_ports_in_use: t.snat_ports_in_use,
            tcp_resets: t.tcp_resets,
            icmp_too_big: t.icmp_too_big,
            ..lb_counters::default()
        };
        for (cause, n) in i.node.drops() {
            if let Some(slot) = c.drops.get_mut(cause.index()) {
                *slot = n;
                c.drop_reasons = c.drop_reasons.max(cause.index() as u32 + 1);
            }
        }
        // SAFETY: non-NULL, and writable per the contract.
        unsafe { *out = c };
        lb_result::LB_RESULT_OK
    };
    // SAFETY: per the contract.
    unsafe { with_instance(inst, work) }
}

/// The name of drop reason `reason` for instances of role `role` (a static NUL-terminated string
/// the library owns: never free it), or NULL if there is no such reason.
#[no_mangle]
pub extern "C" fn lb_drop_reason_name(role: u32, reason: u32) -> *const c_char {
    let name = match role {
        r if r == lb_role::LB_ROLE_MUX as u32 => DropCause::mux(reason as usize).map(DropCause::c_name),
        r if r == lb_role::LB_ROLE_HOST as u32 => DropCause::host(reason as usize).map(DropCause::c_name),
        _ => None,
    };
    name.map_or(std::ptr::null(), |n| n.as_ptr())
}

/// A static, NUL-terminated description of a result code (never free it).
#[no_mangle]
pub extern "C" fn lb_result_name(r: u32) -> *const c_char {
    let s: &[u8] = match r {
        0 => b"ok\0",
        7000 => b"a required argument is NULL\0",
        7001 => b"not UTF-8 or not JSON of the expected shape\0",
        7002 => b"invalid configuration\0",
        7003 => b"argument out of range\0",
        7004 => b"not supported by this instance's role\0",
        7005 => b"the library panicked\0",
        7006 => b"the instance is poisoned by an earlier panic\0",
        _ => b"unknown result code\0",
    };
    s.as_ptr().cast()
}

/// The library version as a NUL-terminated string, owned by the library (never free it).
#[no_mangle]
pub extern "C" fn lb_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::paths::{DropReason, HostDrop};

    #[test]
    fn drop_names_follow_the_core() {
        let name = |role: lb_role, r: u32| {
            let p = lb_drop_reason_name(role as u32, r);
            (!p.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes_with_nul().to_vec())
        };
        assert!(DropReason::ALL.len() <= LB_MAX_DROP_REASONS && HostDrop::ALL.len() <= LB_MAX_DROP_REASONS);
        assert_eq!(name(lb_role::LB_ROLE_MUX, DropReason::ALL.len() as u32), None);
        assert_eq!(name(lb_role::LB_ROLE_HOST, HostDrop::ALL.len() as u32), None);
        assert_eq!(name(lb_role::LB_ROLE_MUX, DropReason::NotFromVip as u32).as_deref(), Some(&b"not_from_vip\0"[..]));
        assert_eq!(
            name(lb_role::LB_ROLE_HOST, HostDrop::SnatExhausted as u32).as_deref(),
            Some(&b"snat_exhausted\0"[..])
        );
        assert_eq!(
            name(lb_role::LB_ROLE_HOST, HostDrop::FlowTableFull as u32).as_deref(),
            Some(&b"flow_table_full\0"[..])
        );
    }

    /// A load balancer with `vips` frontends (20.50.60.10, .11, ...), each forwarding TCP 80 to one
    /// backend.
    fn lb_json(vips: usize) -> String {
        let fronts: Vec<String> = (0..vips)
            .map(|i| format!(r#"{{"name":"F{i}","properties":{{"privateIPAddress":"20.50.60.{}"}}}}"#, 10 + i))
            .collect();
        let rules: Vec<String> = (0..vips)
            .map(|i| {
                format!(
                    r#"{{"name":"R{i}","properties":{{"frontendIPConfiguration":{{"id":"x/F{i}"}},"backendAddressPool":{{"id":"x/P"}},"protocol":"Tcp","frontendPort":80,"backendPort":{}}}}}"#,
                    8080 + i
                )
            })
            .collect();
        format!(
            r#"{{"name":"T","properties":{{"frontendIPConfigurations":[{}],"backendAddressPools":[{{"name":"P","properties":{{"loadBalancerBackendAddresses":[{{"name":"b","properties":{{"ipAddress":"10.0.0.4","hostAddress":"172.16.10.20"}}}}]}}}}],"loadBalancingRules":[{}]}}}}"#,
            fronts.join(","),
            rules.join(",")
        )
    }

    fn syn(vip: [u8; 4]) -> Vec<u8> {
        let mut buf = vec![0u8; 128];
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 5, 10])
            .ipv4([198, 18, 0, 1], vip, 64)
            .tcp(40000, 80, 1, 65535)
            .syn()
            .write(&mut buf, &[])
            .unwrap();
        buf
    }

    fn counters(inst: *mut lb_instance) -> lb_counters {
        let mut c = lb_counters::default();
        // SAFETY: a live instance and a writable snapshot.
        assert_eq!(unsafe { lb_counters_get(inst, &mut c) }, lb_result::LB_RESULT_OK);
        c
    }

    /// Counters are totals: an update that removes a frontend does not take its traffic back.
    #[test]
    fn counters_survive_an_update_that_removes_a_frontend() {
        let node = format!(
            r#"{{"role":"mux","mac":"02:00:00:00:05:0a","gatewayMac":"02:00:00:00:00:01","underlay":"172.16.5.10","flowCapacity":64,"loadBalancer":{}}}"#,
            lb_json(2)
        );
        let mut inst = std::ptr::null_mut();
        // SAFETY: valid text and out pointer, no error buffer.
        let r = unsafe { lb_instance_new(node.as_ptr().cast(), node.len(), &mut inst, std::ptr::null_mut(), 0) };
        assert_eq!(r, lb_result::LB_RESULT_OK);
        for vip in [[20, 50, 60, 10], [20, 50, 60, 11]] {
            let mut buf = syn(vip);
            let len = buf.len() - 128;
            let mut f = lb_frame { buf: buf.as_mut_ptr(), buf_len: buf.len(), start: 128, len };
            let mut v = drop_verdict(0);
            // SAFETY: one frame in a live buffer, one verdict.
            assert_eq!(unsafe { lb_process_burst(inst, &mut f, 1, 0, 0, &mut v) }, lb_result::LB_RESULT_OK);
            assert_eq!(v.action, lb_action::LB_ACTION_TRANSMIT);
        }
        let before = counters(inst);
        assert_eq!((before.forwarded, before.new_flows), (2, 2));
        let one = lb_json(1);
        // SAFETY: valid text, no error buffer.
        let r = unsafe { lb_update(inst, one.as_ptr().cast(), one.len(), std::ptr::null_mut(), 0) };
        assert_eq!(r, lb_result::LB_RESULT_OK);
        let after = counters(inst);
        assert_eq!(
            (after.forwarded, after.forwarded_bytes, after.new_flows),
            (before.forwarded, before.forwarded_bytes, before.new_flows)
        );
        // SAFETY: freed once.
        unsafe { lb_instance_free(inst) };
    }
}

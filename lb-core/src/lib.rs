//! `lb-core`: the packet-processing core of an Azure Software Load Balancer style L4 load balancer.
//!
//! The crate is `#![no_std]`. The packet path (everything under [`wire`]) needs neither `std` nor an
//! allocator: it works on borrowed byte slices and edits frames in place.
//!
//! Layers (each imports only from below):
//! - [`wire`]: zero-copy views over Ethernet, 802.1Q/802.1ad, IPv4, IPv6 (+ extension headers), TCP,
//!   UDP, ICMPv4/ICMPv6 and VxLAN; checksums; the hot-path flow-key extractor; VxLAN encap/decap.
//! - [`tables`] (feature `alloc`, on by default): Maglev lookup tables, the per-core flow table and
//!   the probe state machine. They allocate when the control plane builds them; the packet path
//!   only reads and updates them in place.
#![no_std]
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

#[cfg(feature = "alloc")]
pub mod config;
#[cfg(feature = "std")]
pub mod mem;
#[cfg(feature = "alloc")]
pub mod paths;
pub mod prefetch;
pub mod simd;
#[cfg(feature = "alloc")]
pub mod tables;
pub mod wire;

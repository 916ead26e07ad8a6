//! The data paths of the seed, as plain functions over frames and the tables: the MUX (client frame
//! → VIP and rule → flow or Maglev → VxLAN to the backend's host).

pub mod mux;

pub use mux::{DropReason, Mux, MuxCounters, MuxError, MuxNode, Traffic, Verdict};

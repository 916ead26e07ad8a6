//! Tables of the data path: built by the control plane (they allocate when built or rebuilt), read
//! by the packet path (lookups never allocate).

pub mod maglev;

pub use maglev::{MaglevBackend, MaglevError, MaglevTable, DEFAULT_TABLE_SIZE};

//! Tables of the data path: built by the control plane (they allocate when built or rebuilt), read
//! by the packet path (lookups never allocate).

pub mod flow;
pub mod health;
pub mod maglev;
pub mod snat;

pub use flow::{
    FlowEntry, FlowProbe, FlowSlot, FlowTable, FlowTableCounters, FlowTableError, FlowTuple, FlowValue, MuxFlow,
    TcpState,
};
pub use health::{Health, ProbeState, Transition};
pub use maglev::{MaglevBackend, MaglevError, MaglevTable, DEFAULT_TABLE_SIZE};
pub use snat::{
    default_ports_per_backend, PortBlock, SnatAllocator, SnatCounters, SnatError, MAX_PORT_CONNECTIONS,
    MAX_QUARANTINE_SECS, SHARE_PROBES, SNAT_FIRST_PORT,
};

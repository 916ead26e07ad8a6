//! The data paths of Ananta (SIGCOMM 2013), as plain functions over frames and the tables: the MUX
//! (client frame → VIP and rule → flow or Maglev → VxLAN to the backend's host) and the host agent
//! (VxLAN from a MUX → NAT → backend; backend → reverse NAT or SNAT → MUX or client). [`Node`] drives
//! either behind one interface.

mod drops;
pub mod host;
mod listen;
pub mod mux;
mod next_hop;
pub mod node;

pub use host::{HostAgent, HostCounters, HostDrop, HostError, HostNode, HostVerdict, ReturnPath};
pub use listen::backend_tag;
pub use mux::{BurstFrame, DropReason, Mux, MuxCounters, MuxError, MuxNode, PreparedTables, Traffic, Verdict};
pub use node::{Action, BackendReport, DropCause, Node, NodeError, NodeRole, NodeTotals, Side};

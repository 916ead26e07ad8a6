//! The control plane of the load balancer on etcd: [`etcd`], a blocking client of etcd's JSON
//! gateway; [`store`], the keys the load balancers, the nodes' status and the hosts' health live
//! at, and the operations on them; [`union()`], the one load balancer a node runs for all of
//! those stored. `lbctl` (`src/bin/lbctl.rs`) is the command line over them.

pub mod etcd;
pub mod store;
mod union;

pub use union::{union, UnionError};

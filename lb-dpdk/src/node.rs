//! The program's configuration file (a node file): parsed by `lb_core::config::node`, which the C ABI
//! shares.

pub use lb_core::config::node::{load, NodeConfig, Role};

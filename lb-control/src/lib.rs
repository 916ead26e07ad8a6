//! The control plane of the load balancer on etcd: [`etcd`], a blocking client of etcd's JSON
//! gateway.

pub mod etcd;

//! # example-support
//!
//! What the business-flow demos share, so each demo's own code is only its flow:
//! - [`timeline`]: a shared, timestamped log the demo prints and its test inspects.
//! - [`cluster`]: an embedded Sluice (name server, broker with delays, transactions and the
//!   HTTP facade, as the `sluice` binary installs them) or an external one from the
//!   environment.

pub mod cluster;
pub mod timeline;

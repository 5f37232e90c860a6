//! The legacy SIP side: message helpers, the sans-IO transaction layer, the transport driver.

pub mod digest;
pub mod msg;
pub mod transport;
pub mod txn;

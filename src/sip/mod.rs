//! The legacy SIP side: message helpers, the sans-IO transaction layer, the transport driver.

pub mod digest;
pub mod dns;
pub mod msg;
pub mod srv;
pub mod transport;
pub mod txn;

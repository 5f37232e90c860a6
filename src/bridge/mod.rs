//! The bridge: one sans-IO engine owning every call with both legs, its tokio driver, and
//! SDP ⇄ advertisement/proposal negotiation.

pub mod driver;
pub mod engine;
pub mod negotiate;
pub mod ratelimit;
pub mod secure;
pub mod session_timer;

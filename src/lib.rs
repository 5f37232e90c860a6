//! riptide: a SIP ⇄ HTTP/3 interworking gateway.
//!
//! The crate is laid out as the rooms of the gateway:
//! - [`sip`]: the legacy side: message helpers over rsipstack's parser, the sans-IO transaction
//!   layer, and the tokio UDP/TCP/TLS transport driver;
//! - [`ript`]: the HTTP/3 side: the JSON model of the RIPT API and the quinn/h3 server and client
//!   drivers;
//! - [`bridge`]: the sans-IO [`bridge::engine::Engine`] that owns every call (both legs, timers, codec
//!   negotiation) and the tokio driver that feeds it;
//! - [`media`]: the RTP ⇄ QUIC-datagram relay;
//! - around them: [`config`], [`sdp`], [`auth`], [`tls`], [`metrics`], [`admin`] and [`gateway`],
//!   which wires everything for `riptide serve`;
//! - [`client_tool`]: `riptide call`, a command-line RIPT client for testing the HTTP/3 side.

pub mod admin;
pub mod auth;
pub mod bridge;
pub mod client_tool;
pub mod config;
pub mod gateway;
pub mod media;
pub mod metrics;
pub mod recent;
pub mod ript;
pub mod sdp;
pub mod sip;
pub mod stir;
pub mod tls;

/// Identifies one call inside one gateway process (both legs share it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey(pub u64);

impl std::fmt::Display for CallKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}

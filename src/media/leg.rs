//! One call's legacy (SIP-side) media endpoint, sans-IO.
//!
//! Everything that arrives on the call's RTP socket is demultiplexed by its first byte (RFC 7983):
//! STUN to the ICE agent, DTLS records to the DTLS-SRTP association, RTP/RTCP to SRTP and on.
//! What riptide sends toward the legacy peer goes through [`LegacyLeg::on_send`], which decides
//! the destination and protects the packet:
//!
//! - **Destination.** With ICE, only the address the agent selected and whose consent is fresh
//!   (RFC 8445, RFC 7675): nothing before a check passed, nothing after consent lapsed. Without
//!   ICE, the SDP address, or with latching the source of the peer's first authenticated packet.
//! - **Protection.** Plain, SDES-keyed SRTP (keys from the SDP), or DTLS-SRTP (keys exported from
//!   the handshake, once the peer's certificate matched its `a=fingerprint`). A secured leg never
//!   sends plain RTP: until its keys exist, media is dropped and counted.
//!
//! A leg starts unsecured and without a remote address, so nothing is sent or relayed until the
//! engine's `SetRemote`/`Secure` commands arrive.

use super::dtls::{DtlsEndpoint, DtlsIdentity, DtlsRole, DtlsState, Fingerprint};
use super::ice::{IceAgent, IceCredentials, IceMode, IceState};
use super::rtp::{self, PacketKind};
use super::srtp::SrtpSession;
use super::{LegCrypto, LegIce};
use crate::metrics::DropReason;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Instant;

/// What became of a received datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv<'a> {
    /// An RTP packet (decrypted when the leg is secured) to relay.
    Rtp(Cow<'a, [u8]>),
    /// An RTCP packet (decrypted), terminated on this leg.
    Rtcp(Cow<'a, [u8]>),
    /// STUN or DTLS, consumed here; answers may be waiting in [`LegacyLeg::poll_transmit`].
    Consumed,
    Drop(DropReason),
}

#[derive(Debug, Clone, Copy, Default)]
struct Remote {
    /// Where media goes without ICE: the SDP address, or the latched source.
    rtp: Option<SocketAddr>,
    /// The address the remote SDP gave.
    sdp: Option<SocketAddr>,
    latching: bool,
    latched: bool,
}

enum Keys {
    Plain,
    /// Waiting for DTLS: media is dropped both ways.
    Pending,
    Srtp(Box<SrtpSession>),
}

/// The legacy side of one call.
pub struct LegacyLeg {
    remote: Remote,
    /// The security last applied, to tell a repeated command from a change.
    applied: Option<(LegCrypto, Option<LegIce>)>,
    keys: Keys,
    dtls: Option<DtlsEndpoint>,
    ice: Option<IceAgent>,
    /// A security failure not yet reported to the engine.
    failure: Option<String>,
    failed: bool,
    /// ICE state last seen, to log transitions once.
    ice_state: Option<IceState>,
}

impl LegacyLeg {
    pub fn new(latching: bool) -> LegacyLeg {
        LegacyLeg {
            remote: Remote {
                latching,
                ..Remote::default()
            },
            applied: None,
            keys: Keys::Plain,
            dtls: None,
            ice: None,
            failure: None,
            failed: false,
            ice_state: None,
        }
    }

    /// The remote SDP's address. A latched source survives a repeated one (re-INVITE with the
    /// same SDP); a new address starts latching over.
    pub fn set_remote(&mut self, rtp: SocketAddr, latching: bool) {
        let r = &mut self.remote;
        let moved = r.sdp.is_some_and(|a| a != rtp);
        r.sdp = Some(rtp);
        if !(latching && r.latched && !moved) {
            r.rtp = Some(rtp);
            r.latched = false;
        }
        r.latching = latching;
    }

    /// Applies an offer/answer round's security. The same values again change nothing; new SDES
    /// keys rekey; a new DTLS role or fingerprint starts a new association; new remote ICE
    /// credentials restart ICE.
    pub fn secure(
        &mut self,
        now: Instant,
        crypto: LegCrypto,
        ice: Option<LegIce>,
        identity: Option<&DtlsIdentity>,
    ) {
        if self.applied.as_ref() == Some(&(crypto.clone(), ice.clone())) {
            return;
        }
        let (old_crypto, old_ice) = match self.applied.take() {
            Some((c, i)) => (Some(c), i),
            None => (None, None),
        };
        if old_crypto.as_ref() != Some(&crypto) {
            self.dtls = None;
            match &crypto {
                LegCrypto::Plain => self.keys = Keys::Plain,
                LegCrypto::Sdes { local, remote } => match SrtpSession::new(local, remote) {
                    Ok(s) => self.keys = Keys::Srtp(Box::new(s)),
                    Err(e) => {
                        self.keys = Keys::Pending;
                        self.fail(format!("SDES keys unusable: {e}"));
                    }
                },
                LegCrypto::Dtls {
                    client,
                    fingerprints,
                } => {
                    self.keys = Keys::Pending;
                    match start_dtls(identity, *client, fingerprints, now) {
                        Ok(d) => self.dtls = Some(d),
                        Err(e) => self.fail(e),
                    }
                }
            }
        }
        match (&ice, old_ice.as_ref()) {
            (None, _) => self.ice = None,
            (Some(new), Some(old)) if self.ice.is_some() && new.local_ufrag == old.local_ufrag => {
                if let Some(agent) = self.ice.as_mut() {
                    agent.set_remote(
                        now,
                        IceCredentials {
                            ufrag: new.remote_ufrag.clone(),
                            pwd: new.remote_pwd.clone(),
                        },
                        new.remote_candidates.clone(),
                    );
                }
            }
            (Some(new), _) => {
                let mode = if new.lite {
                    IceMode::Lite
                } else {
                    IceMode::Full {
                        controlling: new.controlling,
                    }
                };
                self.ice = Some(IceAgent::new(
                    mode,
                    IceCredentials {
                        ufrag: new.local_ufrag.clone(),
                        pwd: new.local_pwd.clone(),
                    },
                    IceCredentials {
                        ufrag: new.remote_ufrag.clone(),
                        pwd: new.remote_pwd.clone(),
                    },
                    new.remote_candidates.clone(),
                    now,
                ));
                self.ice_state = None;
            }
        }
        self.applied = Some((crypto, ice));
    }

    fn fail(&mut self, why: String) {
        if !self.failed {
            self.failed = true;
            self.failure = Some(why);
        }
    }

    /// A security failure (DTLS fingerprint mismatch, handshake failure, unusable keys) to
    /// report once; the leg sends and relays nothing after it.
    pub fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }

    /// Where media may go now.
    fn dest(&self, now: Instant) -> Option<SocketAddr> {
        match &self.ice {
            Some(agent) => agent.send_addr(now),
            None => self.remote.rtp,
        }
    }

    /// Whether a packet from `src` may carry media for this leg (before authentication).
    fn source_ok(&self, src: SocketAddr) -> bool {
        match &self.ice {
            Some(agent) => agent.accepts_from(src),
            None => !self.remote.latched || self.remote.rtp == Some(src),
        }
    }

    fn latch(&mut self, src: SocketAddr) {
        let r = &mut self.remote;
        if self.ice.is_none() && r.latching && !r.latched {
            r.rtp = Some(src);
            r.latched = true;
        }
    }

    /// One datagram from the legacy side.
    pub fn on_recv<'a>(&mut self, now: Instant, src: SocketAddr, pkt: &'a [u8]) -> Recv<'a> {
        if super::ice::is_stun(pkt) {
            return match self.ice.as_mut() {
                Some(agent) => match agent.handle_stun(now, src, pkt) {
                    Ok(()) => Recv::Consumed,
                    Err(e) => {
                        tracing::debug!(%src, error = %e, "STUN refused");
                        Recv::Drop(DropReason::Stun)
                    }
                },
                None => Recv::Drop(DropReason::Stun),
            };
        }
        if self.failed {
            return Recv::Drop(DropReason::Srtp);
        }
        if super::dtls::is_dtls(pkt) {
            if !self.source_ok(src) {
                return Recv::Drop(DropReason::WrongSource);
            }
            let Some(d) = self.dtls.as_mut() else {
                return Recv::Drop(DropReason::Malformed);
            };
            if let Err(e) = d.handle_packet(now, pkt) {
                tracing::debug!(%src, error = %e, "DTLS record refused");
            }
            self.latch(src);
            self.after_dtls();
            return Recv::Consumed;
        }
        let kind = rtp::classify(pkt);
        if kind == PacketKind::Invalid {
            return Recv::Drop(DropReason::Malformed);
        }
        if !self.source_ok(src) {
            return Recv::Drop(DropReason::WrongSource);
        }
        let plain: Cow<'a, [u8]> = match &mut self.keys {
            Keys::Plain => Cow::Borrowed(pkt),
            Keys::Pending => return Recv::Drop(DropReason::NotSecured),
            Keys::Srtp(s) => {
                let r = if kind == PacketKind::Rtcp {
                    s.unprotect_rtcp(pkt)
                } else {
                    s.unprotect_rtp(pkt)
                };
                match r {
                    Ok(b) => Cow::Owned(b.to_vec()),
                    Err(_) => return Recv::Drop(DropReason::Srtp),
                }
            }
        };
        // Only an authenticated packet moves the latch.
        self.latch(src);
        if kind == PacketKind::Rtcp {
            Recv::Rtcp(plain)
        } else {
            Recv::Rtp(plain)
        }
    }

    fn after_dtls(&mut self) {
        let Some(d) = self.dtls.as_mut() else {
            return;
        };
        match d.state().clone() {
            DtlsState::Connected => {
                if let Some(s) = d.take_srtp() {
                    tracing::info!(suite = ?d.srtp_suite(), role = ?d.role(), "DTLS-SRTP keys ready");
                    self.keys = Keys::Srtp(Box::new(s));
                }
            }
            DtlsState::Failed(why) => {
                self.keys = Keys::Pending;
                self.dtls = None;
                self.fail(format!("DTLS-SRTP failed: {why}"));
            }
            DtlsState::Handshaking => {}
        }
    }

    /// An RTP packet (plaintext) to send toward the legacy peer: where to, and the bytes.
    pub fn on_send<'a>(
        &mut self,
        now: Instant,
        pkt: &'a [u8],
    ) -> Result<(SocketAddr, Cow<'a, [u8]>), DropReason> {
        self.protect(now, pkt, false)
    }

    /// As [`on_send`](Self::on_send) for an RTCP packet of ours.
    pub fn on_send_rtcp<'a>(
        &mut self,
        now: Instant,
        pkt: &'a [u8],
    ) -> Result<(SocketAddr, Cow<'a, [u8]>), DropReason> {
        self.protect(now, pkt, true)
    }

    fn protect<'a>(
        &mut self,
        now: Instant,
        pkt: &'a [u8],
        rtcp: bool,
    ) -> Result<(SocketAddr, Cow<'a, [u8]>), DropReason> {
        if self.failed {
            return Err(DropReason::NotSecured);
        }
        let Some(to) = self.dest(now) else {
            return Err(if self.ice.is_some() {
                DropReason::IceUnchecked
            } else {
                DropReason::NoRoute
            });
        };
        let bytes = match &mut self.keys {
            Keys::Plain => Cow::Borrowed(pkt),
            Keys::Pending => return Err(DropReason::NotSecured),
            Keys::Srtp(s) => {
                let r = if rtcp {
                    s.protect_rtcp(pkt)
                } else {
                    s.protect_rtp(pkt)
                };
                Cow::Owned(r.map_err(|_| DropReason::Malformed)?.to_vec())
            }
        };
        Ok((to, bytes))
    }

    /// STUN and DTLS datagrams to send, with their destination. DTLS only ever goes where
    /// media may go (so never to an unchecked address); when there is no such address yet its
    /// flight is dropped here and the handshake's own retransmission sends it later.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        if let Some(t) = self.ice.as_mut().and_then(|a| a.poll_transmit()) {
            return Some(t);
        }
        let dest = self.dest(now);
        let d = self.dtls.as_mut()?;
        loop {
            let pkt = d.poll_transmit()?;
            if let Some(to) = dest {
                return Some((to, pkt));
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let ice = self.ice.as_ref().and_then(|a| a.poll_timeout());
        let dtls = self.dtls.as_ref().and_then(|d| d.poll_timeout());
        match (ice, dtls) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(a) = self.ice.as_mut() {
            a.handle_timeout(now);
            let st = a.state(now);
            if self.ice_state != Some(st) {
                match st {
                    IceState::Connected => {
                        tracing::info!(selected = ?a.selected(), "ICE connected")
                    }
                    IceState::ConsentLost => {
                        tracing::warn!(selected = ?a.selected(), "ICE consent lost: media to the peer stopped")
                    }
                    IceState::Failed => {
                        tracing::warn!("ICE failed: no candidate pair passed a check")
                    }
                    IceState::Checking => {}
                }
                self.ice_state = Some(st);
            }
        }
        if let Some(d) = self.dtls.as_mut() {
            d.handle_timeout(now);
        }
        self.after_dtls();
    }

    /// The label of the security in force, for logs.
    pub fn security_label(&self) -> &'static str {
        self.applied.as_ref().map_or("rtp", |(c, _)| c.label())
    }
}

fn start_dtls(
    identity: Option<&DtlsIdentity>,
    client: bool,
    fingerprints: &[String],
    now: Instant,
) -> Result<DtlsEndpoint, String> {
    let identity = identity.ok_or("no DTLS certificate on this gateway")?;
    let fps = fingerprints
        .iter()
        .map(|f| Fingerprint::parse(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("peer a=fingerprint: {e}"))?;
    let role = if client {
        DtlsRole::Client
    } else {
        DtlsRole::Server
    };
    DtlsEndpoint::with_fingerprints(identity, role, fps, now).map_err(|e| format!("DTLS: {e}"))
}

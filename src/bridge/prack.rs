//! Reliable provisional responses (RFC 3262, `100rel` and PRACK) on a SIP leg, both ways.
//!
//! - UAC (our INVITE toward a trunk): the INVITE says `Supported: 100rel`. A provisional with
//!   `Require: 100rel` and an `RSeq` is acknowledged with a PRACK in its early dialog (the
//!   provisional's To tag, Contact and Record-Route) and then handled as any provisional. A
//!   copy of one already acknowledged (the UAS retransmits until our PRACK arrives), or one
//!   whose `RSeq` is not the next of its early dialog, is neither acknowledged nor handled
//!   (§4).
//! - UAS (a caller's INVITE): `Require: 100rel` is taken instead of refused with 420. When the
//!   caller requires it, every provisional we send (but 100) is reliable; when it only
//!   supports it, those that carry our SDP answer are, so that early media does not hang on a
//!   lost datagram. A reliable provisional carries `Require: 100rel` and `RSeq`, and goes
//!   again at T1, 2·T1, … until its PRACK comes; after 64·T1 without one the INVITE gets 504
//!   (§3). Only one is outstanding at a time: later ones wait their turn, and so does a 2xx
//!   while the outstanding one carries an answer. A PRACK that matches nothing gets 481; one
//!   with an offer gets our answer in its 2xx (§5).

use super::*;

/// At most this many early dialogs of one INVITE are PRACKed (forks beyond get none).
const MAX_EARLY_DIALOGS: usize = 16;
/// At most this many provisionals wait behind an unacknowledged reliable one.
const MAX_QUEUED: usize = 4;

/// A SIP leg's RFC 3262 state.
#[derive(Debug, Default)]
pub(super) struct Reliable {
    /// UAC: the last `RSeq` acknowledged in each early dialog, by the UAS's To tag.
    acked: Vec<(String, u32)>,
    /// UAC: the CSeq of our last PRACK (0: none yet). The dialog's later requests count on
    /// from it.
    pub(super) prack_cseq: u32,
    /// UAC: the answer to our offer that came in a reliable provisional, taken or refused.
    answer: Option<Result<(), String>>,
    /// UAS: set when the caller's INVITE named `100rel`.
    uas: Option<Box<UasReliable>>,
}

#[derive(Debug)]
struct UasReliable {
    /// The caller listed `100rel` in `Require` (else only in `Supported`).
    required: bool,
    /// The `RSeq` of the last reliable provisional sent.
    rseq: u32,
    /// The one not acknowledged yet.
    unacked: Option<Unacked>,
    /// Provisionals waiting for it to be acknowledged: (code, reason, with our SDP).
    queued: Vec<(u16, String, bool)>,
    /// Our 2xx waits for the PRACK of a provisional that carried our answer.
    held_2xx: bool,
}

#[derive(Debug)]
struct Unacked {
    rseq: u32,
    out: SipOut,
    code: u16,
    sdp: bool,
    started: Instant,
    interval: Duration,
}

/// `RAck: response-num CSeq-num Method` (RFC 3262 §7.2).
fn parse_rack(v: &str) -> Option<(u32, u32, String)> {
    let mut it = v.split_whitespace();
    let rseq = it.next()?.parse().ok()?;
    let cseq = it.next()?.parse().ok()?;
    let method = it.next()?.to_string();
    it.next().is_none().then_some((rseq, cseq, method))
}

impl Reliable {
    /// UAS: the caller's INVITE listed `100rel` in `Require`.
    pub(super) fn caller_requires(&self) -> bool {
        self.uas.as_ref().is_some_and(|u| u.required)
    }

    /// UAC: our INVITE goes again (digest, 422, failover): its early dialogs start over.
    pub(super) fn new_attempt(&mut self) {
        self.acked.clear();
        self.answer = None;
    }

    /// UAS: what the caller's INVITE says of `100rel`.
    pub(super) fn for_invite(headers: &rsipstack::sip::Headers) -> Reliable {
        let required = msg::lists_option(headers, &["Require"], "100rel");
        let supported = required || msg::lists_option(headers, &["Supported", "k"], "100rel");
        Reliable {
            uas: supported.then(|| {
                Box::new(UasReliable {
                    required,
                    // §3: the first RSeq is chosen at random, at most 2^31 - 1.
                    rseq: rand::random::<u32>() % (1 << 30),
                    unacked: None,
                    queued: Vec::new(),
                    held_2xx: false,
                })
            }),
            ..Reliable::default()
        }
    }
}

impl Engine {
    /// UAC: a provisional (101–199) to our INVITE. `Some(reliable)` when it is to be handled
    /// (a reliable one is PRACKed first); None for a copy of one already acknowledged, one out
    /// of order, or one of a fork beyond [`MAX_EARLY_DIALOGS`].
    pub(super) fn take_provisional(
        &mut self,
        now: Instant,
        key: CallKey,
        m: &SipInbound,
        resp: &Response,
    ) -> Option<bool> {
        if !msg::lists_option(&resp.headers, &["Require"], "100rel") {
            return Some(false);
        }
        let Some(rseq) = msg::first_header(&resp.headers, "RSeq")
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|r| *r > 0)
        else {
            // §7.1 makes RSeq mandatory: without one there is nothing to acknowledge.
            debug!(call = %key, "a reliable provisional without a valid RSeq: taken as unreliable");
            return Some(false);
        };
        let sip = self.calls.get(&key)?.sip.as_ref()?;
        // Our INVITE's CSeq, not the response's: a peer's number is not ours to count on from.
        let invite_cseq = sip.invite_sent.map_or(sip.local_cseq, |(_, c)| c);
        let tag = m.info.to_tag.clone().unwrap_or_default();
        let acked = &sip.rel.acked;
        let known = acked.iter().position(|(t, _)| *t == tag);
        match known.map(|i| acked[i].1) {
            Some(last) if rseq <= last => return None,
            Some(last) if Some(rseq) != last.checked_add(1) => {
                debug!(call = %key, rseq, last, "a reliable provisional out of order: dropped");
                return None;
            }
            Some(_) => {}
            None if acked.len() >= MAX_EARLY_DIALOGS => {
                debug!(call = %key, "a reliable provisional of one fork too many: dropped");
                return None;
            }
            None => {}
        }
        let cseq = sip.rel.prack_cseq.max(invite_cseq).checked_add(1)?;
        let login = sip
            .trunk
            .and_then(|t| self.cfg.trunks.get(t))
            .and_then(|t| t.digest_login.clone());
        // Without a dialog to send the PRACK in, the provisional is taken as unreliable, and
        // nothing is recorded: its copies are no retransmissions of one acknowledged.
        let dialog = self.dialog_of_response(m, resp)?;
        let sip = self.calls.get_mut(&key)?.sip.as_mut()?;
        match known {
            Some(i) => sip.rel.acked[i].1 = rseq,
            None => sip.rel.acked.push((tag, rseq)),
        }
        sip.rel.prack_cseq = cseq;
        let mut extra = Extra::none().header("RAck", format!("{rseq} {invite_cseq} INVITE"));
        if let Some(login) = &login {
            let uri = dialog.target.clone();
            for (name, value) in self
                .digest
                .in_dialog_headers(key, login, ("PRACK", cseq), &uri)
            {
                extra = extra.header(name, value);
            }
        }
        let (branch, bytes) = dialog.request("PRACK", cseq, &extra);
        self.branches.insert(branch.clone(), (key, Purpose::Prack));
        self.txn
            .send_request(now, &branch, false, bytes, dialog.dest);
        Some(true)
    }

    /// UAC: the answer a reliable provisional brought was taken (`Ok`) or refused. The first
    /// one is the answer to our offer (§5); a 2xx without SDP stands on it.
    pub(super) fn reliable_answer(&mut self, key: CallKey, checked: Result<(), String>) {
        if let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) {
            sip.rel.answer.get_or_insert(checked);
        }
    }

    /// UAC: what became of the answer in a reliable provisional, if one came.
    pub(super) fn answer_in_provisional(&self, key: CallKey) -> Option<Result<(), String>> {
        self.calls.get(&key)?.sip.as_ref()?.rel.answer.clone()
    }

    /// UAS: sends a provisional on the caller's INVITE reliably when RFC 3262 says so; false
    /// leaves it to go as an ordinary one.
    pub(super) fn reliable_provisional(
        &mut self,
        now: Instant,
        key: CallKey,
        code: u16,
        reason: &str,
        sdp: bool,
    ) -> bool {
        let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) else {
            return false;
        };
        let Some(rel) = sip.rel.uas.as_mut().filter(|r| r.required || sdp) else {
            return false;
        };
        if rel.unacked.is_some() {
            // §3: not before the one outstanding is acknowledged. A later ringing says the
            // same as an earlier one still waiting.
            if !rel.queued.iter().any(|(c, _, s)| (*c, *s) == (code, sdp))
                && rel.queued.len() < MAX_QUEUED
            {
                rel.queued.push((code, reason.to_string(), sdp));
            }
            return true;
        }
        rel.rseq = rel.rseq.wrapping_add(1) & 0x7fff_ffff;
        let rseq = rel.rseq;
        let extra = Extra::none()
            .header("Require", "100rel")
            .header("RSeq", rseq.to_string());
        let Some((out, skey)) = self.provisional_bytes(key, code, reason, sdp, extra) else {
            return true;
        };
        let t1 = self.cfg.t1;
        if let Some(rel) = self.uas_reliable(key) {
            rel.unacked = Some(Unacked {
                rseq,
                out: out.clone(),
                code,
                sdp,
                started: now,
                interval: t1,
            });
        }
        self.txn.send_response(now, &skey, code, out);
        self.arm(now, key, CallTimer::Reliable, self.cfg.t1);
        true
    }

    fn uas_reliable(&mut self, key: CallKey) -> Option<&mut UasReliable> {
        self.calls
            .get_mut(&key)?
            .sip
            .as_mut()?
            .rel
            .uas
            .as_deref_mut()
    }

    /// UAS: our 2xx must wait for the PRACK of a provisional that carried our answer (§3).
    /// True when it was held; it goes when that PRACK comes.
    pub(super) fn hold_2xx_for_prack(&mut self, key: CallKey) -> bool {
        match self.uas_reliable(key) {
            Some(rel) if rel.unacked.as_ref().is_some_and(|u| u.sdp) => {
                rel.held_2xx = true;
                true
            }
            _ => false,
        }
    }

    /// UAS: the retransmission timer of the outstanding reliable provisional.
    pub(super) fn on_reliable_timer(&mut self, now: Instant, key: CallKey) {
        let t1 = self.cfg.t1;
        let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) else {
            return;
        };
        let skey = sip.invite_key.clone();
        if sip.final_done {
            return;
        }
        let Some(u) = sip.rel.uas.as_mut().and_then(|r| r.unacked.as_mut()) else {
            return;
        };
        if now.saturating_duration_since(u.started) >= t1 * 64 {
            warn!(call = %key, rseq = u.rseq, "no PRACK for a reliable provisional in 64*T1: 504");
            self.final_to_caller(now, key, 504, "Server Time-out");
            self.end_ript(now, key, "SIP;cause=504;text=\"No PRACK\"");
            self.finish(now, key, CallOutcome::Failed);
            return;
        }
        u.interval *= 2;
        // The next copy, or the end of the wait if that comes first.
        let left = (u.started + t1 * 64).saturating_duration_since(now);
        let (out, code, next) = (u.out.clone(), u.code, u.interval.min(left));
        if let Some(skey) = skey {
            self.txn.send_response(now, &skey, code, out);
        }
        self.arm(now, key, CallTimer::Reliable, next);
    }

    /// UAS: a PRACK in the caller's early (or just confirmed) dialog.
    pub(super) fn on_prack(&mut self, now: Instant, key: CallKey, m: &SipInbound) {
        let SipMessage::Request(req) = &m.msg else {
            return;
        };
        let Some(rack) = msg::first_header(&req.headers, "RAck").and_then(|v| parse_rack(&v))
        else {
            let reason = "Bad Request (missing or malformed RAck)";
            self.respond(now, m, 400, reason, None, &Extra::none());
            return;
        };
        let invite_cseq = self
            .calls
            .get(&key)
            .and_then(|c| c.sip.as_ref())
            .and_then(|s| s.invite.as_ref())
            .map(invite_cseq);
        let matched = self.uas_reliable(key).and_then(|rel| {
            let u = rel.unacked.as_ref()?;
            let (rseq, cseq, method) = &rack;
            (*rseq == u.rseq && Some(*cseq) == invite_cseq && method.eq_ignore_ascii_case("INVITE"))
                .then(|| rel.unacked.take())
        });
        if matched.is_none() {
            // §3: a PRACK that matches no unacknowledged reliable provisional.
            self.no_such_dialog(now, m);
            return;
        }
        self.disarm(key, CallTimer::Reliable);
        let answers_our_offer = (self.calls.get(&key))
            .and_then(|c| c.sip.as_ref())
            .is_some_and(|s| s.delayed_offer && s.early_offer);
        if answers_our_offer {
            // The provisional carried our offer to an offerless INVITE: this is its answer (§5).
            self.respond(now, m, 200, "OK", None, &Extra::none());
            self.answer_in_prack(now, key, &req.body);
        } else if req.body.is_empty() {
            self.respond(now, m, 200, "OK", None, &Extra::none());
        } else {
            // An offer in the PRACK (§5): its 2xx carries our answer, as an UPDATE's would.
            self.on_reoffer(now, key, m);
        }
        let Some(rel) = self.uas_reliable(key) else {
            return;
        };
        let next = (!rel.queued.is_empty()).then(|| rel.queued.remove(0));
        let held = std::mem::take(&mut rel.held_2xx);
        if held {
            // The answer was in the provisional just acknowledged: what waited behind it
            // says nothing the 2xx does not.
            rel.queued.clear();
            self.answer_caller(now, key);
        } else if let Some((code, reason, sdp)) = next {
            self.reliable_provisional(now, key, code, &reason, sdp);
        }
    }
}

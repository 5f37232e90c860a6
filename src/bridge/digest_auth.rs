//! SIP Digest authentication in the engine (RFC 3261 §22), both ways.
//!
//! - UAS: an INVITE starting a call from a trunk with `auth = "digest"` (matched by its
//!   `match_sources`) is challenged before anything else is done with it (STIR verification,
//!   routing): 401 with one `WWW-Authenticate` per offered algorithm, strongest first. The
//!   INVITE sent again with valid credentials goes on; a stale nonce gets a fresh challenge
//!   with `stale=true`; a locked-out user gets 403. The transaction layer answers the ACK of
//!   the 401 as for any non-2xx final. Requests inside a dialog are not challenged.
//! - UAC: when a trunk with a `username` answers our INVITE with 401 or 407, the INVITE goes
//!   again (same Call-ID and From tag, next CSeq, new branch) with `Authorization` or
//!   `Proxy-Authorization` for the strongest challenge we can answer. Each challenge (header
//!   kind and realm) is answered once; it may come back only with `stale=true`, else that
//!   status ends the call. The ACK of a 2xx carries the INVITE's credentials (RFC 3261
//!   §13.2.2.4).
//!
//! The digest itself (syntax, hashes, nonces, nc, lockouts) is `sip::digest`; this is the glue.

use super::*;
use crate::sip::digest::{self, Check, ParseError, Server};

/// Answers to one challenge (same header kind and realm) at most: the first, then only
/// `stale=true` ones.
const MAX_ANSWERS: u8 = 3;

/// The engine's Digest state.
pub(super) struct DigestState {
    server: Server,
    /// Nonces are stamped with seconds since this instant (the first one needed): they are
    /// only valid in this process, so a monotonic clock does.
    epoch: Option<Instant>,
    /// UAC: the credentials our INVITE carries, per call.
    uac: HashMap<CallKey, Vec<Answer>>,
}

/// Our answer to one challenge of a trunk.
struct Answer {
    /// `Authorization` or `Proxy-Authorization`.
    header: &'static str,
    realm: String,
    value: String,
    /// The Request-URI it was computed for: a redirected INVITE does not carry it.
    uri: String,
    nonce: String,
    nc: u32,
    times: u8,
    /// CSeq of the INVITE that carried it last.
    cseq: Option<u32>,
    /// The challenge answered and how, for the dialog's later requests.
    challenge: digest::Challenge,
    alg: digest::Algorithm,
    /// CSeq and value of the last re-INVITE that carried an answer to it, for that
    /// re-INVITE's ACK.
    reinvite: Option<(u32, String)>,
}

impl DigestState {
    pub(super) fn new() -> DigestState {
        use ring::rand::SecureRandom as _;
        let mut secret = [0u8; 32];
        // Without system randomness the process cannot run TLS either; a zero key would make
        // nonces forgeable, so refuse to start.
        ring::rand::SystemRandom::new()
            .fill(&mut secret)
            .expect("system randomness for the digest nonce key");
        DigestState {
            server: Server::new(&secret),
            epoch: None,
            uac: HashMap::new(),
        }
    }

    fn secs(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        now.saturating_duration_since(epoch).as_secs()
    }

    /// The credential headers of the INVITE about to be sent with `cseq` to `uri`.
    pub(super) fn invite_headers(
        &mut self,
        key: CallKey,
        cseq: u32,
        uri: &str,
    ) -> Vec<(&'static str, String)> {
        let Some(answers) = self.uac.get_mut(&key) else {
            return Vec::new();
        };
        answers
            .iter_mut()
            .filter(|a| a.uri == uri)
            .map(|a| {
                a.cseq = Some(cseq);
                (a.header, a.value.clone())
            })
            .collect()
    }

    /// Our INVITE goes again for another reason than a challenge (a 422): each answer it
    /// carries is computed anew with the next nonce count and a new cnonce, so that a server
    /// that refuses replayed credentials takes them.
    pub(super) fn renew_invite_answers(&mut self, key: CallKey, login: &digest::Login) {
        for a in self.uac.get_mut(&key).into_iter().flatten() {
            a.nc += 1;
            let cnonce = msg::token(16);
            a.value = digest::answer(&a.challenge, a.alg, login, "INVITE", &a.uri, &cnonce, a.nc)
                .render();
        }
    }

    /// The credential headers for the ACK of a 2xx to the INVITE or re-INVITE with `cseq`.
    pub(super) fn ack_headers(&self, key: CallKey, cseq: u32) -> Vec<(&'static str, String)> {
        self.uac
            .get(&key)
            .into_iter()
            .flatten()
            .filter_map(|a| match &a.reinvite {
                Some((c, value)) if *c == cseq => Some((a.header, value.clone())),
                _ => (a.cseq == Some(cseq)).then(|| (a.header, a.value.clone())),
            })
            .collect()
    }

    /// Credentials for a later request of the call's dialog (BYE, re-INVITE, INFO) with
    /// `cseq`: the challenges our INVITE answered, answered again for `method` and `uri` with
    /// the next nonce count (RFC 3261 §22.3: a UAC may send credentials for a realm it knows).
    /// A re-INVITE's are kept for its ACK.
    pub(super) fn in_dialog_headers(
        &mut self,
        key: CallKey,
        login: &digest::Login,
        (method, cseq): (&str, u32),
        uri: &str,
    ) -> Vec<(&'static str, String)> {
        let Some(answers) = self.uac.get_mut(&key) else {
            return Vec::new();
        };
        answers
            .iter_mut()
            .map(|a| {
                a.nc += 1;
                let cnonce = msg::token(16);
                let value =
                    digest::answer(&a.challenge, a.alg, login, method, uri, &cnonce, a.nc).render();
                if method == "INVITE" {
                    a.reinvite = Some((cseq, value.clone()));
                }
                (a.header, value)
            })
            .collect()
    }

    pub(super) fn forget(&mut self, key: CallKey) {
        self.uac.remove(&key);
    }
}

impl std::fmt::Debug for DigestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestState")
            .field("server", &self.server)
            .field("uac_calls", &self.uac.len())
            .finish()
    }
}

/// The Authorization `uri` names the Request-URI (RFC 2617 §3.2.2.5): equal as written, or
/// once both are rendered by the same parser.
fn same_uri(auth_uri: &str, request_uri: &str) -> bool {
    let a = auth_uri.trim();
    a == request_uri
        || rsipstack::sip::parse_uri(a)
            .map(|u| u.to_string() == request_uri)
            .unwrap_or(false)
}

impl Engine {
    /// UAS: an INVITE starting a call from a trunk that requires Digest passes only with valid
    /// credentials; otherwise it is answered here (401, 403 or 400) and false is returned.
    pub(super) fn digest_admits(&mut self, now: Instant, m: &SipInbound) -> bool {
        let Some(t) = self.cfg.trunk_of_source(m.src) else {
            return true;
        };
        let Some(db) = self.cfg.trunks[t].digest_users.clone() else {
            return true;
        };
        let SipMessage::Request(req) = &m.msg else {
            return true;
        };
        let trunk = self.cfg.trunks[t].name.clone();
        let tag = msg::token(12);
        let mut creds = None;
        for v in msg::header_values(&req.headers, "Authorization") {
            match digest::parse_credentials(&v) {
                Ok(c) if c.realm == db.realm() => {
                    creds = Some(c);
                    break;
                }
                // Another realm's or another scheme's: not for us.
                Ok(_) | Err(ParseError::NotDigest) => {}
                Err(e) => {
                    debug!(src = %m.src, %trunk, error = %e, "malformed Authorization");
                    let reason = format!("Bad Request (Authorization: {e})");
                    self.respond(now, m, 400, &reason, Some(&tag), &Extra::none());
                    return false;
                }
            }
        }
        let secs = self.digest.secs(now);
        let request_uri = req.uri.to_string();
        let verdict = match &creds {
            // A locked address gets no new nonce either.
            None if self.digest.server.source_locked(m.src.ip(), secs) => Check::SourceLocked,
            None => Check::Challenge {
                stale: false,
                why: "no credentials",
            },
            Some(c) if !same_uri(&c.uri, &request_uri) => {
                debug!(src = %m.src, %trunk, "Authorization uri is not the Request-URI");
                let reason = "Bad Request (Authorization uri is not the Request-URI)";
                self.respond(now, m, 400, reason, Some(&tag), &Extra::none());
                return false;
            }
            Some(c) => {
                let method = req.method.to_string();
                self.digest.server.check(&db, c, &method, secs, m.src.ip())
            }
        };
        match verdict {
            Check::Ok { user } => {
                info!(src = %m.src, %trunk, %user, "digest authentication passed");
                true
            }
            Check::Challenge { stale, why } => {
                let user = creds.as_ref().map_or("-", |c| c.username.as_str());
                if why == "wrong response" {
                    info!(src = %m.src, %trunk, %user, "digest authentication failed: wrong response");
                } else {
                    debug!(src = %m.src, %trunk, %user, why, stale, "digest challenge");
                }
                let challenges = self.digest.server.challenges(&db, secs, m.src.ip(), stale);
                let mut extra = Extra::none();
                for c in &challenges {
                    extra = extra.header("WWW-Authenticate", c.render());
                }
                self.respond(now, m, 401, "Unauthorized", Some(&tag), &extra);
                false
            }
            Check::Locked { user } => {
                warn!(src = %m.src, %trunk, %user, "digest: user locked out after repeated failures: 403");
                self.respond(now, m, 403, "Forbidden", Some(&tag), &Extra::none());
                self.count_rejected();
                false
            }
            Check::SourceLocked => {
                let user = creds.as_ref().map_or("-", |c| c.username.as_str());
                warn!(src = %m.src, %trunk, %user, "digest: source address locked out after repeated failures: 403");
                self.respond(now, m, 403, "Forbidden", Some(&tag), &Extra::none());
                self.count_rejected();
                false
            }
        }
    }

    /// A 401/407 to our re-INVITE toward a trunk we have a login for: its challenge (a new
    /// nonce, most often, the last one having expired during the call) replaces the one our
    /// in-dialog requests answer, from the first nonce count. True when the re-INVITE may go
    /// again; the caller makes sure it goes again only once in a row.
    pub(super) fn dialog_digest_answer(
        &mut self,
        key: CallKey,
        resp: &Response,
        code: u16,
    ) -> bool {
        let Some(call) = self.calls.get(&key).filter(|c| c.phase == Phase::Answered) else {
            return false;
        };
        let Some(sip) = call.sip.as_ref() else {
            return false;
        };
        let uri = sip.remote_target.clone();
        let has_login = sip
            .trunk
            .and_then(|t| self.cfg.trunks.get(t))
            .is_some_and(|t| t.digest_login.is_some());
        if !has_login {
            return false;
        }
        let Some((header, ch, alg)) = answerable_challenge(key, resp, code) else {
            return false;
        };
        let answers = self.digest.uac.entry(key).or_default();
        match answers
            .iter_mut()
            .find(|a| a.header == header && a.realm == ch.realm)
        {
            // The same nonce refused without `stale`: the credentials themselves were.
            Some(a) if a.nonce == ch.nonce && !ch.stale => return false,
            Some(a) => {
                a.nonce = ch.nonce.clone();
                a.nc = 0;
                a.challenge = ch.clone();
                a.alg = alg;
            }
            None => answers.push(Answer {
                header,
                realm: ch.realm.clone(),
                value: String::new(),
                uri,
                nonce: ch.nonce.clone(),
                nc: 0,
                times: 1,
                cseq: None,
                challenge: ch.clone(),
                alg,
                reinvite: None,
            }),
        }
        info!(call = %key, code, realm = %ch.realm, "answering the trunk's challenge to our re-INVITE");
        true
    }

    /// UAC: a 401/407 to our INVITE toward a trunk we have a login for. True when the INVITE
    /// was sent again with credentials; false leaves the response to end the call.
    pub(super) fn digest_retry(
        &mut self,
        now: Instant,
        key: CallKey,
        resp: &Response,
        code: u16,
    ) -> bool {
        let Some(call) = self.calls.get(&key) else {
            return false;
        };
        let Some(sip) = call.sip.as_ref() else {
            return false;
        };
        // A call being cancelled is not tried again.
        if call.phase == Phase::Ended || sip.cancel_wanted.is_some() || sip.cancel_sent {
            return false;
        }
        let Some(login) = sip
            .trunk
            .and_then(|t| self.cfg.trunks.get(t))
            .and_then(|t| t.digest_login.clone())
        else {
            return false;
        };
        let Some((header, ch, alg)) = answerable_challenge(key, resp, code) else {
            return false;
        };
        let answers = self.digest.uac.entry(key).or_default();
        let prev = answers
            .iter()
            .position(|a| a.header == header && a.realm == ch.realm);
        let (times, nc) = match prev.map(|i| &answers[i]) {
            Some(a) if !ch.stale || a.times >= MAX_ANSWERS => {
                info!(call = %key, code, realm = %ch.realm, "our credentials were refused: the call ends");
                return false;
            }
            // The same nonce again: the next nonce count.
            Some(a) if a.nonce == ch.nonce => (a.times + 1, a.nc + 1),
            Some(a) => (a.times + 1, 1),
            None => (1, 1),
        };
        let uri = sip.invite_uri.clone();
        let cnonce = msg::token(16);
        let value = digest::answer(&ch, alg, &login, "INVITE", &uri, &cnonce, nc).render();
        let answer = Answer {
            header,
            realm: ch.realm.clone(),
            value,
            uri,
            nonce: ch.nonce.clone(),
            nc,
            times,
            cseq: None,
            challenge: ch.clone(),
            alg,
            reinvite: None,
        };
        info!(call = %key, code, realm = %answer.realm, algorithm = %alg, stale = ch.stale, "answering the trunk's digest challenge");
        match prev {
            Some(i) => answers[i] = answer,
            None => answers.push(answer),
        }
        self.send_invite(now, key);
        true
    }
}

/// The challenge of a 401 (`WWW-Authenticate`) or 407 (`Proxy-Authenticate`) we answer: the
/// strongest we can, with the header our answer goes in. None (logged) when there is none.
fn answerable_challenge(
    key: CallKey,
    resp: &Response,
    code: u16,
) -> Option<(&'static str, digest::Challenge, digest::Algorithm)> {
    let (asks, header) = if code == 407 {
        ("Proxy-Authenticate", "Proxy-Authorization")
    } else {
        ("WWW-Authenticate", "Authorization")
    };
    let challenges = digest::challenges_of(&msg::header_values(&resp.headers, asks));
    let Some((ch, alg)) = digest::pick(&challenges) else {
        warn!(call = %key, code, "no {asks} challenge we can answer (MD5, SHA-256 or SHA-512-256 with qop=auth or none)");
        return None;
    };
    Some((header, ch.clone(), alg))
}

#[cfg(test)]
#[path = "digest_auth_tests.rs"]
mod tests;

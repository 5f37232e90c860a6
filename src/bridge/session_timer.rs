//! Session timers (RFC 4028) on a SIP leg: what a request or response asks for, what we answer,
//! and when the leg's timer fires.
//!
//! The engine keeps one [`SessionTimer`] per SIP leg once a 2xx set one up, and re-arms its
//! [`super::engine`] timer at every refresh: at half the interval when we refresh, at the
//! interval less a third (at most 32 s) when the peer does (§10). Each leg negotiates its own
//! timer with its own peer; the HTTP/3 side has its own liveness (ADR 0007).

use crate::sip::msg;

/// RFC 4028 §4: no session interval may be shorter.
pub const MIN_SE_FLOOR: u32 = 90;
/// The longest session interval accepted from a peer or configured (a day).
pub const MAX_SE: u32 = 86_400;

/// `[sip] session_expires_secs` and `min_se_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// The interval we ask for and the longest we accept; 0 turns session timers off (no
    /// `Supported: timer`, and `Require: timer` gets 420).
    pub expires: u32,
    /// The shortest interval we accept (at least [`MIN_SE_FLOOR`]); shorter requests get 422.
    pub min_se: u32,
}

impl TimerConfig {
    pub fn on(&self) -> bool {
        self.expires > 0
    }
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            expires: 1800,
            min_se: MIN_SE_FLOOR,
        }
    }
}

/// Who refreshes, relative to the transaction that carries the header: `uac` is the side that
/// sent the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    Uac,
    Uas,
}

impl Refresher {
    pub fn as_str(self) -> &'static str {
        match self {
            Refresher::Uac => "uac",
            Refresher::Uas => "uas",
        }
    }
}

/// A `Session-Expires` (or compact `x`) value: `delta-seconds *(;param)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionExpires {
    pub secs: u32,
    pub refresher: Option<Refresher>,
}

/// Parses a `Session-Expires` value; `None` for anything that is not one (no number, zero, a
/// number past `u32`, or a `refresher` other than `uac` or `uas`).
pub fn parse_session_expires(v: &str) -> Option<SessionExpires> {
    let mut parts = v.split(';');
    let secs = parse_delta(parts.next()?)?;
    let mut refresher = None;
    for p in parts {
        let (name, value) = p.split_once('=').unwrap_or((p, ""));
        if name.trim().eq_ignore_ascii_case("refresher") {
            let value = value.trim();
            refresher = Some(if value.eq_ignore_ascii_case("uac") {
                Refresher::Uac
            } else if value.eq_ignore_ascii_case("uas") {
                Refresher::Uas
            } else {
                return None;
            });
        }
    }
    Some(SessionExpires { secs, refresher })
}

/// Parses a `Min-SE` value (`delta-seconds *(;generic-param)`).
pub fn parse_min_se(v: &str) -> Option<u32> {
    parse_delta(v.split(';').next()?)
}

fn parse_delta(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Values past u32 are as good as "very long"; anything past a day is cut to a day later.
    let n = s
        .parse::<u64>()
        .unwrap_or(u64::MAX)
        .min(u64::from(u32::MAX)) as u32;
    (n > 0).then_some(n)
}

/// What a request (an initial INVITE, or a re-INVITE or UPDATE in the dialog) says about
/// session timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Asked {
    pub session_expires: Option<SessionExpires>,
    /// The request's `Min-SE`.
    pub min_se: Option<u32>,
    /// The sender listed `timer` in `Supported` (or `Require`).
    pub supports: bool,
    /// A `Session-Expires` header was there but could not be read.
    pub malformed: bool,
}

/// Reads what a request's headers ask (long and compact forms: `x` for `Session-Expires`, `k`
/// for `Supported`).
pub fn asked(headers: &rsipstack::sip::Headers) -> Asked {
    let se =
        msg::first_header(headers, "Session-Expires").or_else(|| msg::first_header(headers, "x"));
    let supports = supports_timer(headers);
    let session_expires = se.as_deref().and_then(parse_session_expires);
    Asked {
        session_expires,
        min_se: msg::first_header(headers, "Min-SE").and_then(|v| parse_min_se(&v)),
        supports,
        malformed: se.is_some() && session_expires.is_none(),
    }
}

/// The message lists `timer` in `Supported` (or compact `k`) or `Require`.
pub fn supports_timer(headers: &rsipstack::sip::Headers) -> bool {
    msg::lists_option(headers, &["Supported", "k", "Require"], "timer")
}

/// A response's `Session-Expires`, if it has one we can read.
pub fn response_se(headers: &rsipstack::sip::Headers) -> Option<SessionExpires> {
    msg::first_header(headers, "Session-Expires")
        .or_else(|| msg::first_header(headers, "x"))
        .and_then(|v| parse_session_expires(&v))
}

/// The headers of our 2xx to a request that asked `asked`, and the timer that 2xx sets up on
/// the leg (none when [`as_uas`] says `Off`; `TooSmall` was answered with 422 before).
pub fn answer_2xx(
    cfg: &TimerConfig,
    asked: &Asked,
) -> (Vec<(&'static str, String)>, Option<SessionTimer>) {
    let mut headers = Vec::new();
    if !cfg.on() {
        return (headers, None);
    }
    headers.push(("Supported", "timer".to_string()));
    let UasAnswer::On {
        secs,
        refresher,
        require,
    } = as_uas(cfg, asked)
    else {
        return (headers, None);
    };
    headers.push((
        "Session-Expires",
        format!("{secs};refresher={}", refresher.as_str()),
    ));
    if require {
        headers.push(("Require", "timer".to_string()));
    }
    let timer = SessionTimer {
        secs,
        // The refresher named relative to the request: `uas` is us.
        we_refresh: refresher == Refresher::Uas,
        refresh_sent: false,
    };
    (headers, Some(timer))
}

/// Our answer to a request as its UAS (RFC 4028 §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UasAnswer {
    /// No session timer on this dialog (for now).
    Off,
    /// 422 Session Interval Too Small, with our `Min-SE`.
    TooSmall { min_se: u32 },
    /// The 2xx carries `Session-Expires: secs;refresher=…` (relative to the request), with
    /// `Require: timer` when the requester supports it.
    On {
        secs: u32,
        refresher: Refresher,
        require: bool,
    },
}

/// RFC 4028 §9: the UAS copies the request's interval, may lower it to ours but not below the
/// request's `Min-SE` (or 90 s), never raises it, and rejects with 422 an interval below our own
/// minimum. Without `Session-Expires` it asks for one only of a requester that supports timers.
/// The refresher is the requester's choice; else the requester if it supports timers, else us.
pub fn as_uas(cfg: &TimerConfig, asked: &Asked) -> UasAnswer {
    if !cfg.on() {
        return UasAnswer::Off;
    }
    let floor = asked.min_se.unwrap_or(MIN_SE_FLOOR).max(MIN_SE_FLOOR);
    let secs = match asked.session_expires {
        // Only a requester that knows timers can ask again with our minimum (§9).
        Some(se) if se.secs < cfg.min_se && asked.supports => {
            return UasAnswer::TooSmall { min_se: cfg.min_se }
        }
        // A proxy asked for a short one on behalf of a caller that does not know timers: we
        // refresh, so we take our minimum instead (as §8.1 lets a proxy raise it).
        Some(se) if se.secs < cfg.min_se => cfg.min_se,
        Some(se) => se.secs.min(cfg.expires.max(floor)),
        None if asked.supports => cfg.expires.max(floor),
        None => return UasAnswer::Off,
    };
    let secs = secs.min(MAX_SE.max(floor));
    let refresher = match asked.session_expires.and_then(|se| se.refresher) {
        _ if !asked.supports => Refresher::Uas,
        Some(r) => r,
        None => Refresher::Uac,
    };
    UasAnswer::On {
        secs,
        refresher,
        require: asked.supports,
    }
}

/// The timer a 2xx to our request sets up (RFC 4028 §7.2): none without `Session-Expires`;
/// otherwise its interval, and whether we (the request's UAC) refresh. A 2xx that names no
/// refresher leaves it to us, the side that can be sure it happens. An interval below RFC
/// 4028's floor (which the peer must not give) is taken as the floor, so that refreshes never
/// come back to back.
pub fn as_uac(se: Option<SessionExpires>) -> Option<SessionTimer> {
    let se = se?;
    Some(SessionTimer {
        secs: se.secs.clamp(MIN_SE_FLOOR, MAX_SE),
        we_refresh: se.refresher != Some(Refresher::Uas),
        refresh_sent: false,
    })
}

/// A leg's running session timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimer {
    pub secs: u32,
    pub we_refresh: bool,
    /// Our refresh for this interval went out; the next firing ends the session.
    pub refresh_sent: bool,
}

impl SessionTimer {
    /// §10: how long before the session is given up, from its last refresh: the interval less
    /// a third of it, at most 32 s.
    pub fn expiry(&self) -> std::time::Duration {
        let s = u64::from(self.secs);
        std::time::Duration::from_secs(s - (s / 3).min(32))
    }

    /// When the timer fires next, from its last refresh: half the interval when we refresh
    /// (§7.4) and have not yet, else the expiry.
    pub fn next(&self) -> std::time::Duration {
        if self.we_refresh && !self.refresh_sent {
            std::time::Duration::from_secs(u64::from(self.secs) / 2)
        } else {
            self.expiry()
        }
    }

    /// The `Session-Expires` value for a request we send in this dialog (the refresher
    /// relative to that request: `uac` when it is us).
    pub fn request_header(&self) -> String {
        let r = if self.we_refresh {
            Refresher::Uac
        } else {
            Refresher::Uas
        };
        format!("{};refresher={}", self.secs, r.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const CFG: TimerConfig = TimerConfig {
        expires: 1800,
        min_se: 90,
    };

    fn se(secs: u32, refresher: Option<Refresher>) -> Option<SessionExpires> {
        Some(SessionExpires { secs, refresher })
    }

    /// A request from a UAC that supports timers, asking for `secs`.
    fn supporting(secs: u32) -> Asked {
        Asked {
            session_expires: se(secs, None),
            supports: true,
            ..Asked::default()
        }
    }

    #[test]
    fn session_expires_values_parse_as_rfc_4028_writes_them() {
        assert_eq!(
            parse_session_expires("1800;refresher=uac"),
            se(1800, Some(Refresher::Uac))
        );
        assert_eq!(
            parse_session_expires(" 90 ; Refresher = UAS ;x=y"),
            se(90, Some(Refresher::Uas))
        );
        assert_eq!(parse_session_expires("4000"), se(4000, None));
        assert_eq!(parse_session_expires("99999999999999"), se(u32::MAX, None));
        for bad in ["", "abc", "-5", "0", "1800;refresher=both", "18 00", "1.5"] {
            assert_eq!(parse_session_expires(bad), None, "{bad:?}");
        }
        assert_eq!(parse_min_se("120;lr"), Some(120));
        assert_eq!(parse_min_se("x"), None);
    }

    #[test]
    fn the_uas_keeps_the_requested_interval_and_refresher() {
        let asked = Asked {
            session_expires: se(600, Some(Refresher::Uas)),
            supports: true,
            ..Asked::default()
        };
        assert_eq!(
            as_uas(&CFG, &asked),
            UasAnswer::On {
                secs: 600,
                refresher: Refresher::Uas,
                require: true
            }
        );
    }

    #[test]
    fn the_uas_lowers_a_long_interval_to_its_own_but_not_below_the_requests_min_se() {
        let mut asked = supporting(7200);
        assert_eq!(
            as_uas(&CFG, &asked),
            UasAnswer::On {
                secs: 1800,
                refresher: Refresher::Uac,
                require: true
            }
        );
        asked.min_se = Some(3600);
        assert!(matches!(
            as_uas(&CFG, &asked),
            UasAnswer::On { secs: 3600, .. }
        ));
    }

    #[test]
    fn an_interval_below_our_minimum_gets_422_with_it() {
        let cfg = TimerConfig {
            expires: 1800,
            min_se: 300,
        };
        assert_eq!(
            as_uas(&cfg, &supporting(120)),
            UasAnswer::TooSmall { min_se: 300 }
        );
        // Below RFC 4028's floor, whatever our minimum.
        assert_eq!(
            as_uas(&CFG, &supporting(30)),
            UasAnswer::TooSmall { min_se: 90 }
        );
        // A requester that does not know timers could not ask again: we take our minimum and
        // refresh ourselves.
        let asked = Asked {
            session_expires: se(120, None),
            ..Asked::default()
        };
        assert_eq!(
            as_uas(&cfg, &asked),
            UasAnswer::On {
                secs: 300,
                refresher: Refresher::Uas,
                require: false
            }
        );
    }

    #[test]
    fn without_support_the_uas_refreshes_and_requires_nothing() {
        // A proxy inserted Session-Expires for a UAC that does not know timers (§8.1).
        let asked = Asked {
            session_expires: se(900, Some(Refresher::Uac)),
            ..Asked::default()
        };
        assert_eq!(
            as_uas(&CFG, &asked),
            UasAnswer::On {
                secs: 900,
                refresher: Refresher::Uas,
                require: false
            }
        );
        // Nothing asked, nothing supported: no timer.
        assert_eq!(as_uas(&CFG, &Asked::default()), UasAnswer::Off);
    }

    #[test]
    fn a_supporting_uac_that_asks_for_nothing_gets_our_interval() {
        let asked = Asked {
            supports: true,
            ..Asked::default()
        };
        assert_eq!(
            as_uas(&CFG, &asked),
            UasAnswer::On {
                secs: 1800,
                refresher: Refresher::Uac,
                require: true
            }
        );
    }

    #[test]
    fn turned_off_nothing_is_negotiated() {
        let off = TimerConfig {
            expires: 0,
            min_se: 90,
        };
        assert_eq!(as_uas(&off, &supporting(30)), UasAnswer::Off);
    }

    #[test]
    fn the_uac_refreshes_unless_the_2xx_names_the_uas() {
        assert_eq!(as_uac(None), None);
        let t = as_uac(se(1800, Some(Refresher::Uas))).unwrap();
        assert!(!t.we_refresh);
        assert!(as_uac(se(1800, Some(Refresher::Uac))).unwrap().we_refresh);
        assert!(as_uac(se(1800, None)).unwrap().we_refresh);
        assert_eq!(as_uac(se(u32::MAX, None)).unwrap().secs, MAX_SE);
        assert_eq!(as_uac(se(1, None)).unwrap().secs, MIN_SE_FLOOR);
    }

    #[test]
    fn the_refresher_fires_at_half_the_other_side_a_third_short_of_expiry() {
        let mut t = SessionTimer {
            secs: 1800,
            we_refresh: true,
            refresh_sent: false,
        };
        assert_eq!(t.next(), Duration::from_secs(900));
        assert_eq!(t.request_header(), "1800;refresher=uac");
        t.refresh_sent = true;
        assert_eq!(t.next(), Duration::from_secs(1768));
        let t = SessionTimer {
            secs: 90,
            we_refresh: false,
            refresh_sent: false,
        };
        assert_eq!(t.next(), Duration::from_secs(60));
        assert_eq!(t.request_header(), "90;refresher=uas");
    }
}

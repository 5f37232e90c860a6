//! The media and statistics engine one call of `riptide call` or `riptide answer` runs on: a
//! PCMU RTP endpoint on a loopback socket facing the [`MediaHub`], the call's events, DTMF,
//! keepalives, the progress line and the summary. The two tools differ only in [`Role`].

use super::stats::RecvStats;
use super::{g711, CallError, Summary};
use crate::media::dtmf::{Digit, DigitDetector};
use crate::media::rtp::{self, PacketKind};
use crate::media::{MediaCmd, MediaEvent, MediaHub};
use crate::ript::model::{CallDescription, Direction, Event, EventName, Reason};
use crate::ript::{RiptCmd, RiptEvent};
use crate::CallKey;
use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Samples in one 20 ms PCMU packet.
pub(super) const FRAME: usize = 160;
pub(super) const PTIME: Duration = Duration::from_millis(20);
/// How long a call we placed may take to be answered.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// After the last packet is sent, how long to keep listening before hanging up (echoes and
/// late packets still count).
const TAIL: Duration = Duration::from_millis(300);
/// How long to wait for the far side to confirm the end of the call.
const END_WAIT: Duration = Duration::from_secs(5);
/// Gap before the first DTMF key after the answer, and between keys.
const DTMF_GAP: Duration = Duration::from_millis(300);
pub(super) const DTMF_MS: u32 = 100;
const PING_EVERY: Duration = Duration::from_secs(5);
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// Events-stream re-opens tolerated before the call is given up.
const MAX_REOPENS: u32 = 3;

/// Which end of the call this process is.
#[derive(Debug, Clone, Copy)]
pub(super) enum Role {
    /// `riptide call`: we placed the call; it is up when the peer sends `answered`, and we
    /// hang up once `frames` packets and every DTMF key were sent.
    Caller { frames: u64 },
    /// `riptide answer`: we took a call offered to our handler; we send `answered` once the
    /// call is ours (after `alerting` and `ring` when `ring` is not zero), send media until
    /// the call ends, and hang up after `hangup_after` when it is given.
    Callee {
        ring: Duration,
        hangup_after: Option<Duration>,
    },
}

impl Role {
    /// What the summary calls the other end.
    fn far_end(&self) -> &'static str {
        match self {
            Role::Caller { .. } => "peer",
            Role::Callee { .. } => "caller",
        }
    }
}

/// The loopback RTP leg of one call: our socket and the hub's.
pub(super) struct MediaLeg {
    pub sock: UdpSocket,
    pub hub_addr: SocketAddr,
}

/// One call in progress.
pub(super) struct Run {
    role: Role,
    key: CallKey,
    cmds: mpsc::UnboundedSender<RiptCmd>,
    sock: UdpSocket,
    hub: MediaHub,
    hub_addr: SocketAddr,
    /// Looped for as long as media is sent.
    play: Vec<i16>,
    play_pos: usize,
    digits: VecDeque<Digit>,
    record: bool,
    pub recorded: Vec<i16>,
    progress: bool,
    summary: Summary,
    uri: Option<String>,
    out_seq: u64,
    in_seq: Option<u64>,
    voice_pt: u8,
    dtmf_pt: Option<u8>,
    ssrc: u32,
    detector: DigitDetector,
    seq: u16,
    ts: u32,
    rstats: RecvStats,
    /// Setup time counts from here.
    started: Instant,
    answered_at: Option<Instant>,
    /// Callee: when to send `answered` (after ringing).
    answer_due: Option<Instant>,
    /// When the last packet was sent (caller).
    media_done: Option<Instant>,
    end_sent: Option<Instant>,
    next_dtmf: Option<Instant>,
    /// When the last DTMF key's events are over.
    dtmf_done: Option<Instant>,
    reopens: u32,
    /// Ctrl-C was pressed: the call was hung up, and the tool should stop.
    pub interrupted: bool,
    /// Events about our handler (registration, its stream's `incoming`/`end`) that arrived
    /// during the call: `riptide answer` handles them once the call is over.
    pub deferred: Vec<RiptEvent>,
}

/// How the event loop finished.
enum Done {
    /// The call existed and ended (well or not): see the summary.
    Ended,
    Error(CallError),
}

/// What a [`Run`] starts from.
pub(super) struct RunSetup {
    pub role: Role,
    pub key: CallKey,
    pub cmds: mpsc::UnboundedSender<RiptCmd>,
    pub hub: MediaHub,
    pub leg: MediaLeg,
    pub play: Vec<i16>,
    pub digits: Vec<Digit>,
    pub record: bool,
    pub progress: bool,
    pub summary: Summary,
    pub started: Instant,
}

impl Run {
    pub fn new(s: RunSetup) -> Run {
        Run {
            role: s.role,
            key: s.key,
            cmds: s.cmds,
            sock: s.leg.sock,
            hub: s.hub,
            hub_addr: s.leg.hub_addr,
            play: s.play,
            play_pos: 0,
            digits: s.digits.into(),
            record: s.record,
            recorded: Vec::new(),
            progress: s.progress,
            summary: s.summary,
            uri: None,
            out_seq: 0,
            in_seq: None,
            voice_pt: 0,
            dtmf_pt: Some(101),
            ssrc: rand::random(),
            detector: DigitDetector::new(8000),
            seq: rand::random(),
            ts: rand::random(),
            rstats: RecvStats::new(8000),
            started: s.started,
            answered_at: None,
            answer_due: None,
            media_done: None,
            end_sent: None,
            next_dtmf: None,
            dtmf_done: None,
            reopens: 0,
            interrupted: false,
            deferred: Vec::new(),
        }
    }

    /// Runs the call to its end; `Err` means it never existed on the peer (refused, or not
    /// taken) or the tool failed. `media` is drained: the tool reads nothing from the hub.
    pub async fn run(
        &mut self,
        events: &mut mpsc::Receiver<RiptEvent>,
        media: &mut mpsc::UnboundedReceiver<MediaEvent>,
    ) -> Result<Summary, CallError> {
        let mut send_tick = tokio::time::interval(PTIME);
        let mut progress_tick = tokio::time::interval(PROGRESS_EVERY);
        let mut ping_tick = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let mut buf = vec![0u8; 2048];
        let done = loop {
            let timer = self.next_timer();
            tokio::select! {
                ev = events.recv() => {
                    let Some(ev) = ev else {
                        break Done::Error(CallError::Local("the HTTP/3 client stopped".into()));
                    };
                    if let Some(d) = self.on_event(ev) {
                        break d;
                    }
                }
                r = self.sock.recv_from(&mut buf) => {
                    if let Ok((n, src)) = r {
                        if src == self.hub_addr {
                            self.on_packet(&buf[..n]);
                        }
                    }
                }
                Some(_) = media.recv() => {}
                _ = send_tick.tick(), if self.sending() => self.send_frame().await,
                _ = tokio::time::sleep_until(timer) => {
                    if let Some(d) = self.on_timer() {
                        break d;
                    }
                }
                _ = progress_tick.tick(), if self.progress => self.show_progress(),
                _ = ping_tick.tick(), if self.uri.is_some() && self.end_sent.is_none() => {
                    let nonce = format!("{:08x}", rand::random::<u32>());
                    self.send_event(Event::ping(nonce));
                }
                _ = &mut ctrl_c, if !self.interrupted => {
                    self.interrupted = true;
                    if self.uri.is_none() {
                        break Done::Error(CallError::Local("interrupted".into()));
                    }
                    self.hang_up();
                }
            }
        };
        if self.progress {
            eprintln!();
        }
        let s = &mut self.summary;
        s.packets_received = self.rstats.received;
        s.expected = self.rstats.expected();
        s.lost = self.rstats.lost();
        s.jitter_ms = self.rstats.jitter_ms();
        match done {
            Done::Ended => Ok(s.clone()),
            Done::Error(e) => Err(e),
        }
    }

    fn sending(&self) -> bool {
        let more = match self.role {
            Role::Caller { frames } => self.summary.packets_sent < frames,
            Role::Callee { .. } => true,
        };
        self.answered_at.is_some() && self.end_sent.is_none() && more
    }

    /// The caller gives up on an unanswered call; a callee answers by itself.
    fn answer_deadline(&self) -> Option<Instant> {
        match self.role {
            Role::Caller { .. } if self.answered_at.is_none() => {
                Some(self.started + ANSWER_TIMEOUT)
            }
            _ => None,
        }
    }

    fn next_timer(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let candidates = [
            self.answer_deadline(),
            self.answer_due,
            self.hangup_at(),
            self.end_sent.map(|t| t + END_WAIT),
            self.next_dtmf,
        ];
        candidates.into_iter().flatten().min().unwrap_or(far)
    }

    fn on_timer(&mut self) -> Option<Done> {
        let now = Instant::now();
        if self.answer_deadline().is_some_and(|t| now >= t) {
            self.summary.end = format!("not answered within {} s", ANSWER_TIMEOUT.as_secs());
            if self.uri.is_some() && self.end_sent.is_none() {
                self.send_event(Event::end(Some(&Reason::q850(102))));
            }
            return Some(Done::Ended);
        }
        if self.answer_due.is_some_and(|t| now >= t) {
            self.answer_due = None;
            self.answer();
        }
        if let Some(t) = self.next_dtmf.filter(|t| now >= *t) {
            if let Some(d) = self.digits.pop_front() {
                self.hub.apply(MediaCmd::SendDtmf {
                    call: self.key,
                    digit: d,
                });
                self.summary.dtmf_sent.push(d.digit);
                // The key's events, then its end packet retransmissions.
                self.dtmf_done = Some(now + Duration::from_millis(u64::from(DTMF_MS) + 60));
            }
            self.next_dtmf = (!self.digits.is_empty())
                .then(|| t + Duration::from_millis(u64::from(DTMF_MS)) + DTMF_GAP);
        }
        if self.hangup_at().is_some_and(|t| now >= t) {
            self.hang_up();
        }
        if let Some(t) = self.end_sent {
            if now >= t + END_WAIT {
                self.summary.end.push_str(" (the peer did not confirm)");
                return Some(Done::Ended);
            }
        }
        None
    }

    /// When to hang up. Caller: after the media and every DTMF key were sent, and a short
    /// tail. Callee: `hangup_after` past the answer, if given.
    fn hangup_at(&self) -> Option<Instant> {
        if self.end_sent.is_some() || !self.digits.is_empty() {
            return None;
        }
        match self.role {
            Role::Caller { .. } => {
                let media = self.media_done?;
                Some(self.dtmf_done.map_or(media, |d| d.max(media)) + TAIL)
            }
            Role::Callee { hangup_after, .. } => Some(self.answered_at? + hangup_after?),
        }
    }

    /// Sends `end` (normal clearing) and waits for the far side to close the call.
    fn hang_up(&mut self) {
        if self.end_sent.is_some() {
            return;
        }
        let reason = Reason::q850(16);
        self.summary.end = format!("ended by us ({})", reason.to_header_value());
        self.summary.success = self.answered_at.is_some();
        self.send_event(Event::end(Some(&reason)));
        self.end_sent = Some(Instant::now());
    }

    /// The callee's answer: the call is up from now on.
    fn answer(&mut self) {
        let now = Instant::now();
        self.send_event(Event::answered());
        self.on_answered(now);
    }

    fn on_answered(&mut self, now: Instant) {
        self.answered_at = Some(now);
        self.summary.setup = Some(now - self.started);
        self.summary.state = "answered".into();
        if !self.digits.is_empty() {
            self.next_dtmf = Some(now + DTMF_GAP);
        }
    }

    fn send_event(&mut self, mut ev: Event) {
        ev.seq = Some(self.out_seq);
        self.out_seq += 1;
        ev.direction = Some(Direction::C2s);
        ev.call = self.uri.clone();
        let _ = self.cmds.send(RiptCmd::ClientSend {
            call: self.key,
            event: ev,
        });
    }

    fn on_event(&mut self, ev: RiptEvent) -> Option<Done> {
        match ev {
            RiptEvent::HandlerEvent { .. }
            | RiptEvent::HandlerRegistered { .. }
            | RiptEvent::HandlerFailed { .. } => {
                self.deferred.push(ev);
                None
            }
            RiptEvent::CreateFailed {
                call,
                status,
                reason,
            } if call == self.key => Some(Done::Error(if status == 0 {
                CallError::Unreachable(reason)
            } else {
                CallError::Refused { status, reason }
            })),
            RiptEvent::CallCreated { call, description } if call == self.key => {
                self.on_created(&description)
            }
            RiptEvent::ClientEvent { call, event } if call == self.key => self.on_call_event(event),
            RiptEvent::ClientEventsLost { call } if call == self.key => {
                if self.end_sent.is_some() {
                    // The server closed the stream after our `end`: the call is over.
                    return Some(Done::Ended);
                }
                self.reopens += 1;
                if self.reopens > MAX_REOPENS {
                    self.summary.end = "the events stream kept failing".into();
                    self.summary.success = false;
                    return Some(Done::Ended);
                }
                let _ = self
                    .cmds
                    .send(RiptCmd::ClientReopenEvents { call: self.key });
                None
            }
            _ => None,
        }
    }

    fn on_created(&mut self, description: &CallDescription) -> Option<Done> {
        self.uri = Some(description.uri.clone());
        self.summary.state = "proceeding".into();
        let c2s =
            |kind: &str| {
                description.proposal.streams.iter().find(|s| {
                    s.direction == Direction::C2s && s.media_type.eq_ignore_ascii_case(kind)
                })
            };
        let Some(voice) = c2s("audio/PCMU") else {
            let offered: Vec<&str> = description
                .proposal
                .streams
                .iter()
                .map(|s| s.media_type.as_str())
                .collect();
            self.summary.end = format!("the peer proposed {offered:?}, this tool sends PCMU only");
            self.send_event(Event::end(Some(&Reason::q850(65))));
            return Some(Done::Ended);
        };
        self.voice_pt = voice.payload_type;
        self.dtmf_pt = c2s("audio/telephone-event").map(|s| s.payload_type);
        if self.dtmf_pt != Some(101) {
            self.hub.apply(MediaCmd::SetCodec {
                call: self.key,
                clock_rate: 8000,
                dtmf_pt: self.dtmf_pt,
                dtmf_as_info: false,
            });
        }
        if !self.digits.is_empty() && self.dtmf_pt.is_none() {
            eprintln!("warning: the peer did not propose telephone-event; --dtmf ignored");
            self.digits.clear();
        }
        if let Role::Callee { ring, .. } = self.role {
            if ring.is_zero() {
                self.answer();
            } else {
                self.send_event(Event::alerting(false));
                self.summary.state = "alerting".into();
                self.answer_due = Some(Instant::now() + ring);
            }
        }
        None
    }

    fn on_call_event(&mut self, ev: Event) -> Option<Done> {
        if let Some(seq) = ev.seq {
            if self.in_seq.is_some_and(|last| seq <= last) {
                return None;
            }
            self.in_seq = Some(seq);
        }
        // The callee's progress is what it sent itself, not the call state the server echoes.
        let caller = matches!(self.role, Role::Caller { .. });
        match ev.name {
            EventName::Proceeding | EventName::Alerting if caller && self.answered_at.is_none() => {
                self.summary.state = ev.name.as_str().to_string();
            }
            EventName::Answered if caller && self.answered_at.is_none() => {
                self.on_answered(Instant::now());
            }
            EventName::End => {
                let reason = ev.reason.unwrap_or_else(|| "no reason given".into());
                if self.end_sent.is_none() {
                    self.summary.end = format!("ended by the {} ({reason})", self.role.far_end());
                    self.summary.success = self.answered_at.is_some();
                }
                return Some(Done::Ended);
            }
            EventName::Declined | EventName::Failed | EventName::Noanswer => {
                self.summary.state = ev.name.as_str().to_string();
                let mut end = ev.name.as_str().to_string();
                if let Some(c) = ev.code {
                    end.push_str(&format!(" {c}"));
                }
                if let Some(r) = ev.reason {
                    end.push_str(&format!(" {r}"));
                }
                self.summary.end = end;
                self.summary.success = false;
                return Some(Done::Ended);
            }
            EventName::Migrate => {
                let _ = self
                    .cmds
                    .send(RiptCmd::ClientReopenEvents { call: self.key });
            }
            _ => {}
        }
        None
    }

    fn on_packet(&mut self, pkt: &[u8]) {
        if rtp::classify(pkt) != PacketKind::Rtp {
            return;
        }
        let pt = pkt[1] & 0x7f;
        if Some(pt) == self.dtmf_pt {
            if let Some(d) = self.detector.on_packet(pkt) {
                self.summary.dtmf_received.push(d.digit);
            }
            return;
        }
        if pt != self.voice_pt {
            return;
        }
        let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
        let ts = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
        let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
        let arrival_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        self.rstats.on_packet(ssrc, seq, ts, arrival_ms);
        if self.record {
            if let Some(payload) = rtp_payload(pkt) {
                self.recorded
                    .extend(payload.iter().map(|&c| g711::decode(c)));
            }
        }
    }

    async fn send_frame(&mut self) {
        let mut pkt = Vec::with_capacity(12 + FRAME);
        pkt.push(0x80);
        pkt.push(self.voice_pt);
        pkt.extend_from_slice(&self.seq.to_be_bytes());
        pkt.extend_from_slice(&self.ts.to_be_bytes());
        pkt.extend_from_slice(&self.ssrc.to_be_bytes());
        for _ in 0..FRAME {
            pkt.push(g711::encode(self.play[self.play_pos]));
            self.play_pos = (self.play_pos + 1) % self.play.len();
        }
        if self.sock.send_to(&pkt, self.hub_addr).await.is_ok() {
            self.summary.packets_sent += 1;
        }
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(FRAME as u32);
        if let Role::Caller { frames } = self.role {
            if self.summary.packets_sent >= frames {
                self.media_done = Some(Instant::now());
            }
        }
    }

    fn show_progress(&self) {
        let since = self.answered_at.unwrap_or(self.started);
        let line = format!(
            "\r{:<10} {:>6.1} s  sent {:>6}  received {:>6}",
            self.summary.state,
            since.elapsed().as_secs_f64(),
            self.summary.packets_sent,
            self.rstats.received
        );
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes());
        let _ = err.flush();
    }
}

/// The payload of an RTP packet (after CSRCs, header extension and before padding).
fn rtp_payload(pkt: &[u8]) -> Option<&[u8]> {
    let cc = usize::from(pkt.first()? & 0x0f);
    let mut start = 12 + 4 * cc;
    if pkt[0] & 0x10 != 0 {
        let ext = pkt.get(start + 2..start + 4)?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    let mut end = pkt.len();
    if pkt[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*pkt.last()?))?;
    }
    pkt.get(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_skips_csrc_extension_and_padding() {
        let mut p = vec![0x80 | 0x20 | 0x10 | 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9];
        p.extend_from_slice(&[1, 2, 3, 4]); // one CSRC
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 7, 7, 7, 7]); // extension, one word
        p.extend_from_slice(&[10, 11, 12]);
        p.extend_from_slice(&[0, 2]); // padding of 2
        assert_eq!(rtp_payload(&p).unwrap(), &[10, 11, 12]);
        let plain = rtp::pcmu_packet(3, 1);
        assert_eq!(rtp_payload(&plain).unwrap(), &plain[12..]);
    }

    #[test]
    fn the_far_end_is_named_by_role() {
        assert_eq!(Role::Caller { frames: 1 }.far_end(), "peer");
        let callee = Role::Callee {
            ring: Duration::ZERO,
            hangup_after: None,
        };
        assert_eq!(callee.far_end(), "caller");
    }
}

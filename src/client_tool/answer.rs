//! `riptide answer`: registers a handler on the peer's TG and answers the calls offered to it
//! (protocol.md §2.7), one after the other, on the same media engine as `riptide call`.

use super::run::{Role, RunSetup, FRAME};
use super::{read_play, seconds_option, tool_advertisement, wav, CallError, Summary, Tool};
use crate::ript::client::handler_gives_up;
use crate::ript::h3util::is_segment;
use crate::ript::model::{Direction, Event, EventName, Handler};
use crate::ript::{RiptCmd, RiptEvent};
use crate::CallKey;
use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// What `riptide answer` was asked to do.
#[derive(Debug, Clone)]
pub struct AnswerOptions {
    /// Configuration whose `[[ript_peer]]` names the gateway, its TG and the token.
    pub config: PathBuf,
    /// Which `[[ript_peer]]`; default the first.
    pub peer: Option<String>,
    /// Our `handler-id`; default `riptide-answer-<random>`.
    pub handler_id: Option<String>,
    /// Where to write what the caller sends (calls after the first get `-2`, `-3`... suffixes).
    /// Required unless `decline`.
    pub record: Option<PathBuf>,
    /// Audio to send once answered, looped; silence when absent.
    pub play: Option<PathBuf>,
    /// Seconds after the answer at which we hang up; default: wait for the caller's `end`.
    pub duration: Option<f64>,
    /// Seconds to ring (`alerting`) before answering; default 0: answer at once.
    pub ring: Option<f64>,
    /// Calls to handle before exiting.
    pub calls: u32,
    /// Decline every call with 603 instead of answering.
    pub decline: bool,
    /// Keep a progress line on stderr.
    pub progress: bool,
}

/// A call ringing on our handler, from its `incoming` event.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub uri: String,
    pub from: Option<String>,
    pub destination: Option<String>,
    /// When the `incoming` arrived: setup time counts from here.
    pub at: Instant,
}

/// The calls ringing on our handler, oldest first.
#[derive(Debug, Default)]
pub struct Offers {
    ringing: VecDeque<Offer>,
    /// Every call URI offered so far: a re-opened handler stream announces the calls still
    /// ringing again, and one we already handled must not be taken twice.
    seen: HashSet<String>,
}

impl Offers {
    /// Accounts one event of the handler's stream: `incoming` adds a call, `end` removes it.
    pub fn on_event(&mut self, ev: &Event, now: Instant) {
        let Some(uri) = ev.call.as_deref() else {
            return;
        };
        match ev.name {
            EventName::Incoming if self.seen.insert(uri.to_owned()) => {
                self.ringing.push_back(Offer {
                    uri: uri.to_owned(),
                    from: ev.from.clone(),
                    destination: ev.destination.clone(),
                    at: now,
                });
            }
            EventName::End => {
                self.seen.insert(uri.to_owned());
                self.ringing.retain(|o| o.uri != uri);
            }
            _ => {}
        }
    }

    /// The oldest call still ringing.
    pub fn pop(&mut self) -> Option<Offer> {
        self.ringing.pop_front()
    }
}

/// Where call number `n` (from 1) is recorded: `base` itself for the first, then `base`
/// with `-n` before its extension.
pub fn record_path(base: &Path, n: u32) -> PathBuf {
    if n <= 1 {
        return base.to_path_buf();
    }
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match base.extension() {
        Some(ext) => format!("{stem}-{n}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{n}"),
    };
    base.with_file_name(name)
}

/// A default handler id: unique enough that two tools on one TG do not replace each other.
fn default_handler_id() -> String {
    format!("riptide-answer-{:08x}", rand::random::<u32>())
}

/// The handler's registration and the calls ringing on it.
struct Handled {
    offers: Offers,
    /// Our handler's URI once registered.
    uri: Option<String>,
}

impl Handled {
    /// One event about our handler. Before the first registration any failure ends the tool
    /// (as `riptide call` does when the peer refuses or cannot be reached); later the driver
    /// retries by itself unless the status says that is pointless.
    fn on_event(&mut self, ev: RiptEvent) -> Result<(), CallError> {
        match ev {
            RiptEvent::HandlerRegistered { uri, .. } => {
                if self.uri.is_none() {
                    // Scripts wait for this line: it must not sit in a buffer.
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "registered {uri}");
                    let _ = out.flush();
                }
                self.uri = Some(uri);
            }
            RiptEvent::HandlerFailed { status, reason, .. } => {
                if self.uri.is_none() || handler_gives_up(status) {
                    return Err(match status {
                        0 => CallError::Unreachable(reason),
                        _ => CallError::Registration { status, reason },
                    });
                }
                eprintln!("warning: handler events stream: {status} {reason}; retrying");
            }
            RiptEvent::HandlerEvent { event, .. } => self.offers.on_event(&event, Instant::now()),
            // Late events of a call that is already closed.
            _ => {}
        }
        Ok(())
    }
}

/// Registers the handler and handles `opts.calls` calls. Each call's summary is printed on
/// stdout when it ends (a blank line between them); they are also returned. `Err` means the
/// handler could not be registered or the tool failed.
pub async fn answer(opts: AnswerOptions) -> Result<Vec<Summary>, CallError> {
    let play = match &opts.play {
        Some(p) => read_play(p)?,
        None => vec![0; FRAME],
    };
    let hangup_after = opts
        .duration
        .map(|d| seconds_option("--duration", d, false))
        .transpose()
        .map_err(CallError::Config)?;
    let ring = opts
        .ring
        .map(|r| seconds_option("--ring", r, true))
        .transpose()
        .map_err(CallError::Config)?
        .unwrap_or(Duration::ZERO);
    if opts.calls == 0 {
        return Err(CallError::Config("--calls: at least 1".into()));
    }
    if opts.record.is_none() && !opts.decline {
        return Err(CallError::Config(
            "--record is required unless --decline".into(),
        ));
    }
    let handler_id = opts.handler_id.clone().unwrap_or_else(default_handler_id);
    if !is_segment(&handler_id) {
        return Err(CallError::Config(format!(
            "--handler-id {handler_id:?}: use letters, digits and - _ . ~ + (at most 128)"
        )));
    }

    let tool = Tool::start(&opts.config, opts.peer.as_deref()).await?;
    let handler = Handler {
        handler_id,
        advertisement: tool_advertisement(),
        uri: None,
    };
    let _ = tool
        .cmds
        .send(RiptCmd::RegisterHandler { peer: 0, handler });
    let mut a = Answering {
        tool,
        handled: Handled {
            offers: Offers::default(),
            uri: None,
        },
        role: Role::Callee { ring, hangup_after },
        play,
        next_key: 1,
        summaries: Vec::new(),
        interrupted: false,
    };
    let result = a.handle_calls(&opts).await;
    a.tool.shutdown().await;
    result.map(|()| a.summaries)
}

/// The tool while it answers calls.
struct Answering {
    tool: Tool,
    handled: Handled,
    role: Role,
    play: Vec<i16>,
    /// Every take gets a new key, so late events of a closed call cannot reach the next one.
    next_key: u64,
    summaries: Vec<Summary>,
    /// Ctrl-C ended the last call: take no more.
    interrupted: bool,
}

impl Answering {
    async fn handle_calls(&mut self, opts: &AnswerOptions) -> Result<(), CallError> {
        while self.summaries.len() < opts.calls as usize {
            let offer = self.wait_offer().await?;
            // An offer only arrives on the stream of a registered handler.
            let Some(handler_uri) = self.handled.uri.clone() else {
                continue;
            };
            let outcome = if opts.decline {
                decline(&self.tool, &offer).await
            } else {
                self.take(opts, &offer, &handler_uri).await
            };
            match outcome {
                Ok(summary) => {
                    let mut out = std::io::stdout().lock();
                    if !self.summaries.is_empty() {
                        let _ = writeln!(out);
                    }
                    let _ = writeln!(out, "{summary}");
                    let _ = out.flush();
                    self.summaries.push(summary);
                }
                // It rang elsewhere too and was taken there, or it stopped ringing.
                Err(CallError::Refused {
                    status: status @ (404 | 409),
                    reason,
                }) => eprintln!("note: call {} is gone ({status} {reason})", offer.uri),
                Err(e) => return Err(e),
            }
            if self.interrupted {
                return Err(CallError::Local("interrupted".into()));
            }
        }
        Ok(())
    }

    /// The next call ringing on our handler, waiting for one if need be.
    async fn wait_offer(&mut self) -> Result<Offer, CallError> {
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            if let Some(o) = self.handled.offers.pop() {
                return Ok(o);
            }
            tokio::select! {
                ev = self.tool.events.recv() => match ev {
                    Some(ev) => self.handled.on_event(ev)?,
                    None => return Err(CallError::Local("the HTTP/3 client stopped".into())),
                },
                Some(_) = self.tool.media_rx.recv() => {}
                _ = &mut ctrl_c => return Err(CallError::Local("interrupted".into())),
            }
        }
    }

    /// Takes the offered call and runs it; writes its recording.
    async fn take(
        &mut self,
        opts: &AnswerOptions,
        offer: &Offer,
        handler_uri: &str,
    ) -> Result<Summary, CallError> {
        let key = CallKey(self.next_key);
        self.next_key += 1;
        let leg = self.tool.open_media(key).await?;
        let setup = RunSetup {
            role: self.role,
            key,
            cmds: self.tool.cmds.clone(),
            hub: self.tool.hub.clone(),
            leg,
            play: self.play.clone(),
            digits: Vec::new(),
            record: opts.record.is_some(),
            progress: opts.progress,
            summary: summary_for(&self.tool, offer, "incoming"),
            started: offer.at,
        };
        let _ = self.tool.cmds.send(RiptCmd::TakeCall {
            call: key,
            peer: 0,
            uri: offer.uri.clone(),
            handler: handler_uri.to_owned(),
        });
        let (mut run, result) = self.tool.run_call(setup).await;
        self.tool.close_call(key);
        self.interrupted = run.interrupted;
        for ev in std::mem::take(&mut run.deferred) {
            self.handled.on_event(ev)?;
        }
        let summary = result?;
        if let Some(base) = &opts.record {
            let n = self.summaries.len() as u32 + 1;
            wav::write(&record_path(base, n), &run.recorded).map_err(CallError::Local)?;
        }
        Ok(summary)
    }
}

/// Declines the offered call without taking it (protocol.md §2.7 step 5).
async fn decline(tool: &Tool, offer: &Offer) -> Result<Summary, CallError> {
    const CODE: u16 = 603;
    let ev = Event {
        direction: Some(Direction::C2s),
        seq: Some(0),
        call: Some(offer.uri.clone()),
        ..Event::declined(CODE)
    };
    match tool.client.put_events_once(0, &offer.uri, &[ev]).await {
        Ok(()) => Ok(Summary {
            end: format!("declined by us ({CODE})"),
            success: true,
            ..summary_for(tool, offer, "declined")
        }),
        Err((0, reason)) => Err(CallError::Unreachable(reason)),
        Err((status, reason)) => Err(CallError::Refused { status, reason }),
    }
}

fn summary_for(tool: &Tool, offer: &Offer, state: &str) -> Summary {
    Summary {
        destination: offer.destination.clone().unwrap_or_else(|| tool.tg.clone()),
        peer: tool.peer_label.clone(),
        from: offer.from.clone(),
        state: state.into(),
        ..Summary::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(uri: &str) -> Event {
        Event {
            call: Some(uri.into()),
            from: Some("+12155551212".into()),
            destination: Some("web".into()),
            ..Event::new(EventName::Incoming)
        }
    }

    #[test]
    fn offers_are_taken_in_order_once_and_dropped_when_they_end() {
        let now = Instant::now();
        let mut o = Offers::default();
        o.on_event(&incoming("a"), now);
        o.on_event(&incoming("b"), now);
        o.on_event(&incoming("c"), now);
        // A re-opened stream repeats what still rings.
        o.on_event(&incoming("a"), now);
        o.on_event(&Event::ping("x"), now);
        let end = Event {
            call: Some("b".into()),
            ..Event::end(None)
        };
        o.on_event(&end, now);
        let first = o.pop().unwrap();
        assert_eq!(first.uri, "a");
        assert_eq!(first.from.as_deref(), Some("+12155551212"));
        assert_eq!(first.destination.as_deref(), Some("web"));
        assert_eq!(o.pop().unwrap().uri, "c");
        assert!(o.pop().is_none());
        // Handled calls announced again are not offered twice; an ended one never comes back.
        o.on_event(&incoming("a"), now);
        o.on_event(&incoming("b"), now);
        assert!(o.pop().is_none());
        // An incoming without a call URI cannot be taken.
        o.on_event(&Event::new(EventName::Incoming), now);
        assert!(o.pop().is_none());
    }

    #[test]
    fn later_calls_are_recorded_next_to_the_first() {
        let base = Path::new("/tmp/out.wav");
        assert_eq!(record_path(base, 1), PathBuf::from("/tmp/out.wav"));
        assert_eq!(record_path(base, 2), PathBuf::from("/tmp/out-2.wav"));
        assert_eq!(record_path(Path::new("rec"), 3), PathBuf::from("rec-3"));
    }

    #[test]
    fn default_handler_ids_are_usable_path_segments() {
        let a = default_handler_id();
        assert!(a.starts_with("riptide-answer-") && is_segment(&a), "{a}");
        assert_ne!(a, default_handler_id());
    }
}

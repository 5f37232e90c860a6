//! The HTTP/3 server role: RIPT peers and browsers call us.
//!
//! One task accepts QUIC connections; each connection gets an h3 accept loop, a media datagram
//! reader, and one task per request so that a slow or long-lived stream (events, media) never
//! holds up another. Call state the requests share (pending `POST {TG}/calls`, accepted calls,
//! event subscribers, handlers) sits behind one std mutex that is never held across an `.await`.
//!
//! The engine decides everything about a call: we forward `IncomingCall` and wait (bounded) for
//! its `RespondCall`; the call id it picks becomes the path segment of the call URI.

use super::events::{EventDecoder, EventEncoder};
use super::h3util::{
    append_limited, bearer, is_segment, now_unix, problem_body, state_of, MAX_BODY, PROBLEM_JSON,
    RIPT_PREFIX,
};
use super::model::{
    CallDescription, CallRequest, CallTake, Event, EventName, Handler, TgDescription, TgList,
    TgOutbound, TgRef,
};
use super::{CallAccepted, Problem, ReqId, RiptCmd, RiptEvent};
use crate::auth::{Principal, TokenVerifier};
use crate::config::{Http3Config, TgConfig};
use crate::media::MediaHub;
use crate::metrics::Metrics;
use crate::CallKey;
use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// How long a `POST {TG}/calls` waits for the engine's answer before it gets 503.
const RESPOND_TIMEOUT: Duration = Duration::from_secs(10);
/// Calls waiting for the engine at once; beyond it new calls get 503.
const MAX_PENDING: usize = 4096;
/// How long a media ticket (see [`CallDescription::media_ticket`]) may wait for its CONNECT.
const TICKET_LIFETIME: Duration = Duration::from_secs(60);
/// Unredeemed tickets kept at most; the oldest go first.
const MAX_TICKETS: usize = 4096;
/// Handlers kept per trunk group.
const MAX_HANDLERS_PER_TG: usize = 256;
/// Simultaneous `GET {call}/events` streams per call; a new one beyond it replaces the oldest.
const MAX_SUBSCRIBERS: usize = 8;
/// Events buffered per subscriber; a subscriber that falls this far behind is cut off (its
/// client sees the stream end, re-opens it and starts again from the current state).
const SUBSCRIBER_BACKLOG: usize = 64;
/// Simultaneous `GET {handler}/events` streams per handler; a new one replaces the oldest.
const MAX_HANDLER_STREAMS: usize = 4;
/// A handler events stream carries a `ping` this often, so that a dead one is noticed.
const HANDLER_PING: Duration = Duration::from_secs(15);
/// Handlers one call is offered to at most (forking fan-out).
const MAX_OFFERED: usize = 64;

type Stream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Everything the server needs from the gateway.
pub struct ServerCtx {
    pub tgs: Vec<TgConfig>,
    /// `host:port` used in the URIs we hand out, e.g. `localhost:4434`.
    pub authority: String,
    pub verifier: Arc<dyn TokenVerifier>,
    pub media: MediaHub,
    pub metrics: Arc<Metrics>,
    pub events: mpsc::Sender<RiptEvent>,
    /// Which browser origins may use the API (CORS) and open media over WebTransport.
    pub cors: CorsPolicy,
    /// The local issuer's JWK Set, served without a token at [`JWKS_PATH`] (RFC 8414 metadata
    /// at [`AS_METADATA_PATH`] points to it); `None` serves neither.
    pub jwks: Option<JwksSource>,
}

/// Produces the JWK Set to serve (it changes when the issuer's key rotates).
pub type JwksSource = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Where the local issuer's verification keys are published.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// OAuth 2.0 Authorization Server Metadata (RFC 8414) of the local issuer.
pub const AS_METADATA_PATH: &str = "/.well-known/oauth-authorization-server";

/// The scope a request needs (RFC 6750 §3.1: a token without it gets 403
/// `insufficient_scope`). Discovery reads trunk groups; handlers and calls write.
fn required_scope(route: &Route<'_>) -> Option<&'static str> {
    match route {
        Route::TgList | Route::Tg(_) => Some("tgs:read"),
        Route::Handlers(_) | Route::Handler(_, _) | Route::HandlerEvents(_, _) => {
            Some("handlers:write")
        }
        Route::Calls(_) | Route::Call(_, _) | Route::Events(_, _) | Route::Media(_, _) => {
            Some("calls:write")
        }
        Route::NotFound => None,
    }
}

/// Request headers a preflight may ask for; `Authorization` is a CORS non-wildcard name, so it
/// is always listed by name (a `*` would never cover it).
const CORS_ALLOW_HEADERS: &str = "authorization, content-type";
/// Response headers of the API that pages may read beyond the CORS-safelisted ones.
const CORS_EXPOSE_HEADERS: &str = "location, retry-after, www-authenticate, allow";

/// The browser-origin policy of the API (`[http3] cors_origins`, `cors_max_age_secs`).
///
/// Origins are matched exactly, byte for byte, against the serialised origin a browser sends
/// (the loader accepts only that form), and the allowed one is echoed: never `*`, and never
/// `Access-Control-Allow-Credentials` (tokens travel in `Authorization`, not cookies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsPolicy {
    pub origins: Vec<String>,
    pub max_age_secs: u64,
}

impl Default for CorsPolicy {
    /// No browser origin is allowed.
    fn default() -> Self {
        CorsPolicy {
            origins: Vec::new(),
            max_age_secs: 600,
        }
    }
}

/// What a request's `Origin` header says under the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginCheck {
    /// No `Origin`: not a browser's cross-origin request (or a same-origin GET).
    Absent,
    /// On the list: the value to echo.
    Allowed(String),
    /// Anything else: not listed, `null`, several `Origin` headers, not an origin at all.
    Refused,
}

/// CORS headers every answer to a request carries.
type Cors = Vec<(header::HeaderName, String)>;

impl CorsPolicy {
    pub fn from_config(c: &Http3Config) -> CorsPolicy {
        CorsPolicy {
            origins: c.cors_origins.clone(),
            max_age_secs: c.cors_max_age_secs,
        }
    }

    fn check(&self, headers: &HeaderMap) -> OriginCheck {
        let mut values = headers.get_all(header::ORIGIN).iter();
        let (Some(v), None) = (values.next(), values.next()) else {
            return if headers.contains_key(header::ORIGIN) {
                OriginCheck::Refused
            } else {
                OriginCheck::Absent
            };
        };
        let Ok(v) = v.to_str() else {
            return OriginCheck::Refused;
        };
        // Only a serialised origin is ever echoed, whatever the list holds: never `*`/`null`.
        let serialised = crate::config::normalize_origin(v).as_deref() == Some(v);
        if serialised && self.origins.iter().any(|o| o == v) {
            OriginCheck::Allowed(v.to_owned())
        } else {
            OriginCheck::Refused
        }
    }

    /// The headers every answer to a request with this origin carries.
    fn response_headers(&self, origin: &OriginCheck) -> Cors {
        let mut h = Vec::new();
        if !self.origins.is_empty() || *origin != OriginCheck::Absent {
            // The answer depends on Origin: caches must not hand one origin's answer to another.
            h.push((header::VARY, "origin".to_owned()));
        }
        if let OriginCheck::Allowed(o) = origin {
            h.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone()));
            h.push((
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                CORS_EXPOSE_HEADERS.to_owned(),
            ));
        }
        h
    }

    /// The CORS step before authentication. `Err` is a complete answer of its own: a preflight
    /// (which needs no token), or 403 for an extended CONNECT (WebTransport) from an origin not
    /// on the list. `Ok` holds the headers every answer to the request must carry.
    fn gate(&self, req: &Request<()>) -> Result<Cors, Reply> {
        let origin = self.check(req.headers());
        let cors = self.response_headers(&origin);
        let preflight = req.method() == Method::OPTIONS
            && origin != OriginCheck::Absent
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let extended_connect = req.method() == Method::CONNECT
            && req.extensions().get::<h3::ext::Protocol>().is_some();
        if origin == OriginCheck::Refused && (preflight || extended_connect) {
            let what = if preflight {
                "CORS preflight"
            } else {
                "WebTransport session"
            };
            let detail = format!("{what} from an origin that is not allowed");
            return Err(Reply::problem(&Problem::new(403, "Forbidden", detail)).with_all(&cors));
        }
        if !preflight {
            return Ok(cors);
        }
        let Some(methods) = route(req.uri().path()).methods() else {
            return Err(Reply::not_found("no such resource").with_all(&cors));
        };
        let reply = Reply {
            status: StatusCode::NO_CONTENT,
            headers: vec![
                (header::ACCESS_CONTROL_ALLOW_METHODS, methods.to_owned()),
                (
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    CORS_ALLOW_HEADERS.to_owned(),
                ),
                (
                    header::ACCESS_CONTROL_MAX_AGE,
                    self.max_age_secs.to_string(),
                ),
            ],
            body: None,
        };
        Err(reply.with_all(&cors))
    }
}

/// The running server: its command channel and tasks.
pub struct ServerHandle {
    cmds: mpsc::UnboundedSender<RiptCmd>,
    accept_task: JoinHandle<()>,
    cmd_task: JoinHandle<()>,
}

impl ServerHandle {
    /// Where the engine sends server-role commands (`RespondCall`, `ServerSend`, `ServerEnd`).
    pub fn cmd_sender(&self) -> mpsc::UnboundedSender<RiptCmd> {
        self.cmds.clone()
    }

    /// Stops accepting connections and commands. Requests already running finish on their own.
    pub fn abort(&self) {
        self.accept_task.abort();
        self.cmd_task.abort();
    }
}

/// Starts serving the RIPT API on `endpoint` (which must carry a server config with ALPN `h3`).
pub fn spawn_server(endpoint: quinn::Endpoint, ctx: ServerCtx) -> ServerHandle {
    let shared = Arc::new(Shared {
        ctx,
        next_req: AtomicU64::new(1),
        state: Mutex::new(State::default()),
    });
    let (cmds, rx) = mpsc::unbounded_channel();
    let cmd_task = tokio::spawn(run_commands(shared.clone(), rx));
    let accept_task = tokio::spawn(accept_loop(endpoint, shared));
    ServerHandle {
        cmds,
        accept_task,
        cmd_task,
    }
}

struct Shared {
    ctx: ServerCtx,
    next_req: AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    pending: HashMap<ReqId, Pending>,
    /// Accepted calls by id (the path segment).
    calls: HashMap<String, CallEntry>,
    ids: HashMap<CallKey, String>,
    /// Registered handlers per TG.
    handlers: HashMap<String, Vec<HandlerEntry>>,
    /// Takes (`POST {call}` with a handler) waiting for the engine.
    takes: HashMap<ReqId, oneshot::Sender<Result<CallDescription, Problem>>>,
    /// Recently ended calls: (tg, final state event), kept for `ENDED_LINGER` so that a client
    /// whose events GET arrives after the end (a callee that refused at once) still learns how
    /// the call ended. Oldest first in `ended_order`.
    ended: HashMap<String, (String, Option<Event>)>,
    ended_order: std::collections::VecDeque<(std::time::Instant, String)>,
    /// Unredeemed media tickets by value, and their issue order for expiry.
    tickets: HashMap<String, Ticket>,
    ticket_order: std::collections::VecDeque<(std::time::Instant, String)>,
}

/// What a media ticket opens: one call's `{call}/media`, from one origin, until `expires`.
struct Ticket {
    tg: String,
    call_id: String,
    origin: String,
    expires: std::time::Instant,
}

impl State {
    /// A new single-use media ticket for `tg`/`call_id` from `origin`.
    fn issue_ticket(&mut self, tg: &str, call_id: &str, origin: &str) -> Option<String> {
        use base64::Engine as _;
        use ring::rand::SecureRandom as _;
        let mut raw = [0u8; 24];
        ring::rand::SystemRandom::new().fill(&mut raw).ok()?;
        let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let now = std::time::Instant::now();
        while let Some((at, v)) = self.ticket_order.front() {
            if self.ticket_order.len() < MAX_TICKETS && now < *at + TICKET_LIFETIME {
                break;
            }
            self.tickets.remove(v);
            self.ticket_order.pop_front();
        }
        self.tickets.insert(
            value.clone(),
            Ticket {
                tg: tg.to_owned(),
                call_id: call_id.to_owned(),
                origin: origin.to_owned(),
                expires: now + TICKET_LIFETIME,
            },
        );
        self.ticket_order.push_back((now, value.clone()));
        Some(value)
    }

    /// Redeems `value` for a CONNECT to `tg`/`call_id` from `origin`: once, before it expires.
    /// A ticket presented for another call or from another origin stays unredeemed.
    fn redeem_ticket(
        &mut self,
        value: &str,
        tg: &str,
        call_id: &str,
        origin: Option<&str>,
    ) -> Result<(), &'static str> {
        let t = self
            .tickets
            .get(value)
            .ok_or("unknown or used media ticket")?;
        if t.tg != tg || t.call_id != call_id {
            return Err("media ticket for another call");
        }
        if origin != Some(t.origin.as_str()) {
            return Err("media ticket from another origin");
        }
        if std::time::Instant::now() >= t.expires {
            self.tickets.remove(value);
            return Err("media ticket expired");
        }
        self.tickets.remove(value);
        Ok(())
    }
}

/// The `ticket` query parameter of a request URI.
fn ticket_param(uri: &http::Uri) -> Option<&str> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("ticket="))
        .filter(|v| !v.is_empty())
}

/// How long an ended call's final event stays readable on `GET {call}/events`.
const ENDED_LINGER: std::time::Duration = std::time::Duration::from_secs(30);
/// Bound on the ended-call records kept for `ENDED_LINGER`.
const MAX_ENDED: usize = 65_536;

struct Pending {
    tg: String,
    tx: oneshot::Sender<Result<CallDescription, Problem>>,
}

/// A registered handler, whose token subject owns it, and its open events streams.
struct HandlerEntry {
    handler: Handler,
    owner: String,
    /// Shared: one allocation per event for all streams, and the channels' first blocks hold
    /// pointers, not events.
    streams: Vec<mpsc::Sender<Arc<Event>>>,
    /// Next `seq` on its events streams.
    seq: u64,
}

impl HandlerEntry {
    /// Sends `event` (stamped with the next `seq`) on every open stream; a stream too slow or
    /// gone is dropped. `true` when at least one stream took it.
    fn notify(&mut self, mut event: Event) -> bool {
        event.seq = Some(self.seq);
        event.direction = Some(super::model::Direction::S2c);
        self.seq += 1;
        let event = Arc::new(event);
        self.streams.retain(|s| s.try_send(event.clone()).is_ok());
        !self.streams.is_empty()
    }
}

/// A call the server offered to the handlers of its TG (protocol.md §2.7).
#[derive(Default)]
struct Offer {
    /// Ids of the handlers it rang.
    rang: Vec<String>,
    /// The id of the handler that took it.
    taken_by: Option<String>,
}

/// The `incoming` event announcing `e` to a handler.
fn incoming_event(e: &CallEntry) -> Event {
    Event {
        call: Some(e.description.uri.clone()),
        from: e.description.from.clone(),
        destination: Some(e.description.destination.clone()),
        ..Event::new(EventName::Incoming)
    }
}

struct CallEntry {
    key: CallKey,
    tg: String,
    description: CallDescription,
    last_state: Option<Event>,
    /// As [`HandlerEntry::streams`].
    subscribers: Vec<mpsc::Sender<Arc<Event>>>,
    /// Open events streams (GET and PUT); `ServerEventsClosed` fires when it drops to zero.
    open_streams: usize,
    /// Dropped with the entry: every stream of the call watches it to end when the call does.
    ended: watch::Sender<()>,
    /// Set when the server offered the call to handlers rather than a client creating it.
    offer: Option<Offer>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Plain data; a panic elsewhere must not take the whole API down.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tg_uri(&self, tg: &str) -> String {
        format!(
            "https://{}{}providertgs/{}",
            self.ctx.authority, RIPT_PREFIX, tg
        )
    }

    fn call_uri(&self, tg: &str, id: &str) -> String {
        format!("{}/calls/{}", self.tg_uri(tg), id)
    }

    fn tg(&self, name: &str) -> Option<&TgConfig> {
        self.ctx.tgs.iter().find(|t| t.name == name)
    }

    fn respond_call(&self, req: ReqId, result: Result<CallAccepted, Problem>) {
        let mut st = self.state();
        let Some(p) = st.pending.remove(&req) else {
            tracing::warn!(?req, "RespondCall for a request that is no longer waiting");
            return;
        };
        let answer = match result {
            Err(problem) => Err(problem),
            Ok(acc) if !is_segment(&acc.id) => Err(Problem::new(
                500,
                "Internal Server Error",
                format!("unusable call id {:?}", acc.id),
            )),
            Ok(acc) if st.calls.contains_key(&acc.id) || st.ids.contains_key(&acc.key) => Err(
                Problem::new(500, "Internal Server Error", "duplicate call id"),
            ),
            Ok(acc) => {
                let mut description = acc.description;
                description.uri = self.call_uri(&p.tg, &acc.id);
                // Registered here, not in the waiting request task, so that a ServerSend the
                // engine issues right after RespondCall already finds the call.
                st.ids.insert(acc.key, acc.id.clone());
                st.calls.insert(
                    acc.id,
                    CallEntry {
                        key: acc.key,
                        tg: p.tg.clone(),
                        description: description.clone(),
                        last_state: None,
                        subscribers: Vec::new(),
                        open_streams: 0,
                        ended: watch::channel(()).0,
                        offer: None,
                    },
                );
                Ok(description)
            }
        };
        if p.tx.send(answer).is_err() {
            tracing::warn!(?req, "the client went away before the call answer");
        }
    }

    fn send_event(&self, call: CallKey, event: Event) {
        let mut st = self.state();
        let Some(id) = st.ids.get(&call).cloned() else {
            tracing::debug!(%call, "ServerSend for an unknown call");
            return;
        };
        let Some(e) = st.calls.get_mut(&id) else {
            return;
        };
        if let Some(s) = state_of(&event.name) {
            e.description.state = s;
            e.last_state = Some(event.clone());
        }
        let event = Arc::new(event);
        e.subscribers.retain(|s| match s.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%call, "events subscriber too slow; closing its stream");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    fn end_call(&self, call: CallKey) {
        let mut st = self.state();
        let now = std::time::Instant::now();
        while let Some((at, id)) = st.ended_order.front() {
            if now.duration_since(*at) < ENDED_LINGER && st.ended_order.len() < MAX_ENDED {
                break;
            }
            let id = id.clone();
            st.ended_order.pop_front();
            st.ended.remove(&id);
        }
        if let Some(id) = st.ids.remove(&call) {
            // Dropping the entry drops its subscribers' senders and its `ended` watch, which
            // closes every stream of the call.
            if let Some(e) = st.calls.remove(&id) {
                if let Some(offer) = e.offer.as_ref().filter(|o| o.taken_by.is_none()) {
                    let reason = e
                        .last_state
                        .as_ref()
                        .filter(|ev| ev.name == EventName::End)
                        .and_then(|ev| ev.reason.clone())
                        .unwrap_or_else(|| "SIP;cause=487;text=\"Request Terminated\"".into());
                    let ev = Event {
                        call: Some(e.description.uri.clone()),
                        reason: Some(reason),
                        ..Event::new(EventName::End)
                    };
                    if let Some(list) = st.handlers.get_mut(&e.tg) {
                        for h in list
                            .iter_mut()
                            .filter(|h| offer.rang.contains(&h.handler.handler_id))
                        {
                            h.notify(ev.clone());
                        }
                    }
                }
                st.ended.insert(id.clone(), (e.tg, e.last_state));
                st.ended_order.push_back((now, id));
            }
        }
    }

    /// Creates the call resource for a SIP call routed to `tg`'s handlers and rings every
    /// reachable one; tells the engine how many rang.
    async fn offer(&self, call: CallKey, tg: String, id: String, mut description: CallDescription) {
        let rang = {
            let mut st = self.state();
            if !is_segment(&id) || st.calls.contains_key(&id) || st.ids.contains_key(&call) {
                tracing::warn!(%call, %id, "unusable or duplicate offered call id");
                0
            } else {
                description.uri = self.call_uri(&tg, &id);
                let mut entry = CallEntry {
                    key: call,
                    tg: tg.clone(),
                    description,
                    last_state: None,
                    subscribers: Vec::new(),
                    open_streams: 0,
                    ended: watch::channel(()).0,
                    offer: Some(Offer::default()),
                };
                let incoming = incoming_event(&entry);
                let mut rang = Vec::new();
                if let Some(list) = st.handlers.get_mut(&tg) {
                    for h in list.iter_mut().take(MAX_OFFERED) {
                        if h.notify(incoming.clone()) {
                            rang.push(h.handler.handler_id.clone());
                        }
                    }
                }
                let n = rang.len();
                if let Some(o) = entry.offer.as_mut() {
                    o.rang = rang;
                }
                st.ids.insert(call, id.clone());
                st.calls.insert(id, entry);
                n
            }
        };
        let _ = self
            .ctx
            .events
            .send(RiptEvent::Offered {
                call,
                handlers: rang,
            })
            .await;
    }

    fn respond_take(&self, req: ReqId, result: Result<CallDescription, Problem>) {
        let tx = self.state().takes.remove(&req);
        match tx {
            Some(tx) => {
                if tx.send(result).is_err() {
                    tracing::debug!(?req, "the client went away before the take answer");
                }
            }
            None => tracing::warn!(?req, "RespondTake for a take that is no longer waiting"),
        }
    }

    /// The final event of a call of `tg` that ended less than `ENDED_LINGER` ago.
    fn final_event(&self, tg: &str, id: &str) -> Option<Option<Event>> {
        let st = self.state();
        let (t, ev) = st.ended.get(id)?;
        let fresh = st
            .ended_order
            .iter()
            .rev()
            .find(|(_, i)| i == id)
            .map(|(at, _)| at.elapsed() < ENDED_LINGER)
            .unwrap_or(false);
        (t == tg && fresh).then(|| ev.clone())
    }

    /// Looks up a live call of `tg` for a new stream on it.
    fn open_stream(&self, tg: &str, id: &str) -> Option<(CallKey, watch::Receiver<()>)> {
        let mut st = self.state();
        let e = st.calls.get_mut(id).filter(|e| e.tg == tg)?;
        e.open_streams += 1;
        Some((e.key, e.ended.subscribe()))
    }

    /// An events stream of the call ended; tells the engine when it was the last one.
    async fn close_stream(&self, id: &str, key: CallKey) {
        let last = {
            let mut st = self.state();
            match st.calls.get_mut(id).filter(|e| e.key == key) {
                Some(e) => {
                    e.open_streams = e.open_streams.saturating_sub(1);
                    e.open_streams == 0
                }
                None => false,
            }
        };
        if last {
            let _ = self
                .ctx
                .events
                .send(RiptEvent::ServerEventsClosed { call: key })
                .await;
        }
    }
}

async fn run_commands(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<RiptCmd>) {
    while let Some(cmd) = rx.recv().await {
        match cmd {
            RiptCmd::RespondCall { req, result } => shared.respond_call(req, result),
            RiptCmd::ServerSend { call, event } => shared.send_event(call, event),
            RiptCmd::ServerEnd { call } => shared.end_call(call),
            RiptCmd::Offer {
                call,
                tg,
                id,
                description,
            } => shared.offer(call, tg, id, description).await,
            RiptCmd::RespondTake { req, result } => shared.respond_take(req, result),
            other => tracing::warn!(?other, "client-role command sent to the server driver"),
        }
    }
}

/// How many request streams of one connection are open, and the limit the peer was given: the
/// limit doubles once half of it is in use, so that a busy peer never waits for stream credit
/// while a quiet one costs little (see `tls::INITIAL_REQUEST_STREAMS`).
struct StreamBudget {
    open: std::sync::atomic::AtomicU32,
    limit: std::sync::atomic::AtomicU32,
}

/// Ceiling of the request stream limit (a third of it is about 350 000 calls on one connection).
const MAX_REQUEST_STREAMS: u32 = 1 << 20;

impl StreamBudget {
    fn new(limit: u32) -> Self {
        StreamBudget {
            open: 0.into(),
            limit: limit.into(),
        }
    }

    /// Counts a new request; `Some(limit)` when the limit must be raised to it.
    fn opened(&self) -> Option<u32> {
        use std::sync::atomic::Ordering::Relaxed;
        let open = self.open.fetch_add(1, Relaxed) + 1;
        let limit = self.limit.load(Relaxed);
        if open.saturating_mul(2) < limit || limit >= MAX_REQUEST_STREAMS {
            return None;
        }
        let raised = limit.saturating_mul(2).min(MAX_REQUEST_STREAMS);
        self.limit.store(raised, Relaxed);
        Some(raised)
    }
}

/// One open request stream of a [`StreamBudget`], counted until dropped.
struct OpenRequest(Arc<StreamBudget>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(serve_connection(incoming, shared.clone()));
    }
}

async fn serve_connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "QUIC handshake failed");
            return;
        }
    };
    let remote = conn.remote_address();
    // Media rides raw QUIC datagrams on this same connection, read outside h3.
    tokio::spawn(shared.ctx.media.clone().run_quic_reader(conn.clone()));
    let built = h3::server::builder()
        .enable_datagram(true)
        .enable_extended_connect(true)
        .enable_webtransport(true)
        .max_webtransport_sessions(1)
        .build::<_, Bytes>(super::h3settings::SettingsConn::new(conn.clone()))
        .await;
    let mut h3c = match built {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "HTTP/3 setup failed");
            return;
        }
    };
    let budget = Arc::new(StreamBudget::new(crate::tls::INITIAL_REQUEST_STREAMS));
    loop {
        match h3c.accept().await {
            Ok(Some(resolver)) => {
                let shared = shared.clone();
                if let Some(limit) = budget.opened() {
                    tracing::debug!(%remote, limit, "request stream limit raised");
                    conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(limit));
                }
                let open = OpenRequest(budget.clone());
                // The routing step (request headers, principal, room for the largest route's
                // futures) runs in its own box, freed once done. A request that lives as long as
                // its call (events, media) comes back from it as its own boxed future, so the
                // task holds two pointers for the call's lifetime, not the routing step's room.
                let routing = Box::pin({
                    let shared = shared.clone();
                    let conn = conn.clone();
                    async move {
                        let (req, stream) = match resolver.resolve_request().await {
                            Ok(r) => r,
                            Err(e) => {
                                tracing::debug!(%remote, error = %e, "bad request stream");
                                return None;
                            }
                        };
                        let mut long = None;
                        handle_request(&shared, conn.clone(), req, stream, &mut long).await;
                        long.map(|l: LongLived| l.start(shared, conn))
                    }
                });
                tokio::spawn(async move {
                    if let Some(long) = routing.await {
                        long.await;
                    }
                    drop(open);
                });
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(%remote, error = %e, "HTTP/3 connection ended");
                break;
            }
        }
    }
}

/// The resources of the API, by path.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    TgList,
    Tg(&'a str),
    Handlers(&'a str),
    Handler(&'a str, &'a str),
    HandlerEvents(&'a str, &'a str),
    Calls(&'a str),
    Call(&'a str, &'a str),
    Events(&'a str, &'a str),
    Media(&'a str, &'a str),
    NotFound,
}

impl Route<'_> {
    /// The methods the resource answers (`None`: no such resource).
    fn methods(&self) -> Option<&'static str> {
        Some(match self {
            Route::TgList | Route::Tg(_) => "GET",
            Route::Handlers(_) | Route::Calls(_) => "POST",
            Route::Handler(_, _) => "GET, PUT, DELETE",
            Route::HandlerEvents(_, _) => "GET",
            Route::Call(_, _) => "GET, POST",
            Route::Events(_, _) => "GET, PUT",
            Route::Media(_, _) => "CONNECT",
            Route::NotFound => return None,
        })
    }
}

fn route(path: &str) -> Route<'_> {
    let Some(rest) = path.strip_prefix(RIPT_PREFIX) else {
        return Route::NotFound;
    };
    let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    match segs.as_slice() {
        ["providertgs"] => Route::TgList,
        ["providertgs", tg] => Route::Tg(tg),
        ["providertgs", tg, "handlers"] => Route::Handlers(tg),
        ["providertgs", tg, "handlers", id] => Route::Handler(tg, id),
        ["providertgs", tg, "handlers", id, "events"] => Route::HandlerEvents(tg, id),
        ["providertgs", tg, "calls"] => Route::Calls(tg),
        ["providertgs", tg, "calls", id] => Route::Call(tg, id),
        ["providertgs", tg, "calls", id, "events"] => Route::Events(tg, id),
        ["providertgs", tg, "calls", id, "media"] => Route::Media(tg, id),
        _ => Route::NotFound,
    }
}

/// An answer to send: status, extra headers and an optional typed body.
struct Reply {
    status: StatusCode,
    headers: Vec<(header::HeaderName, String)>,
    body: Option<(&'static str, Bytes)>,
}

impl Reply {
    fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Reply {
        match serde_json::to_vec(v) {
            Ok(b) => Reply {
                status,
                headers: Vec::new(),
                body: Some(("application/json", Bytes::from(b))),
            },
            Err(e) => Reply::problem(&Problem::new(500, "Internal Server Error", e.to_string())),
        }
    }

    fn problem(p: &Problem) -> Reply {
        Reply {
            status: StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            headers: Vec::new(),
            body: Some((PROBLEM_JSON, problem_body(p))),
        }
    }

    /// The head of a `GET {call}/events` answer; the body is the streamed JSON array.
    fn event_stream() -> Reply {
        Reply {
            status: StatusCode::OK,
            headers: vec![(header::CACHE_CONTROL, "no-store".into())],
            body: Some(("application/json", Bytes::new())),
        }
    }

    fn not_found(what: &str) -> Reply {
        Reply::problem(&Problem::new(404, "Not Found", what))
    }

    fn method_not_allowed(allow: &str) -> Reply {
        Reply::problem(&Problem::new(
            405,
            "Method Not Allowed",
            format!("allowed: {allow}"),
        ))
        .with(header::ALLOW, allow)
    }

    fn bad_request(detail: impl Into<String>) -> Reply {
        Reply::problem(&Problem::new(400, "Bad Request", detail))
    }

    fn with(mut self, name: header::HeaderName, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    fn with_all(mut self, headers: &[(header::HeaderName, String)]) -> Reply {
        self.headers.extend_from_slice(headers);
        self
    }

    fn head(&self) -> Response<()> {
        let mut b = Response::builder().status(self.status);
        for (n, v) in &self.headers {
            b = b.header(n, v.as_str());
        }
        if let Some((ct, _)) = &self.body {
            b = b.header(header::CONTENT_TYPE, *ct);
        }
        // Header values come from our own formatting; a bad one falls back to the bare status.
        b.body(()).unwrap_or_else(|_| {
            let mut r = Response::new(());
            *r.status_mut() = self.status;
            r
        })
    }
}

/// Sends a complete response (head, body, end of stream).
async fn send_reply(shared: &Shared, stream: &mut Stream, reply: Reply) {
    shared.ctx.metrics.http_requests(reply.status.as_u16());
    let res = async {
        stream.send_response(reply.head()).await?;
        if let Some((_, body)) = reply.body {
            stream.send_data(body).await?;
        }
        stream.finish().await
    }
    .await;
    if let Err(e) = res {
        tracing::debug!(error = %e, "response not delivered");
    }
}

/// Starts a streaming response: head only.
async fn send_head(shared: &Shared, stream: &mut Stream, reply: Reply) -> bool {
    shared.ctx.metrics.http_requests(reply.status.as_u16());
    match stream.send_response(reply.head()).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "response head not delivered");
            false
        }
    }
}

/// The request's principal, or the refusal: `401` with an RFC 6750 challenge, or `503` with
/// `Retry-After` when an external issuer could not be asked (fail closed).
async fn authenticate(shared: &Shared, req: &Request<()>) -> Result<Principal, Reply> {
    let result = match bearer(req.headers()) {
        Some(token) => shared.ctx.verifier.verify_async(token, now_unix()).await,
        None => Err(crate::auth::AuthError::Missing),
    };
    result.map_err(|e| {
        shared.ctx.metrics.auth_failures();
        match e.retry_after() {
            Some(secs) => Reply::problem(&Problem::new(503, "Service Unavailable", e.to_string()))
                .with(header::RETRY_AFTER, secs.to_string()),
            None => Reply::problem(&Problem::new(401, "Unauthorized", e.to_string()))
                .with(header::WWW_AUTHENTICATE, crate::auth::www_authenticate(&e)),
        }
    })
}

/// A request that lives as long as its call. [`handle_request`] hands it back instead of running
/// it, so that the call's lifetime is spent holding this request's state only, not the routing
/// step's (request headers, principal, room for every other route's futures).
struct LongLived {
    kind: LongKind,
    tg: String,
    id: String,
    stream: Stream,
    cors: Cors,
}

enum LongKind {
    EventsGet,
    EventsPut,
    /// With the CONNECT's `:protocol`, if any.
    Media(Option<h3::ext::Protocol>),
}

impl LongLived {
    fn new(kind: LongKind, tg: &str, id: &str, stream: Stream, cors: Cors) -> Self {
        LongLived {
            kind,
            tg: tg.to_owned(),
            id: id.to_owned(),
            stream,
            cors,
        }
    }

    /// The media CONNECT, with its `:protocol` (WebTransport) if it has one.
    fn media(req: &Request<()>, tg: &str, id: &str, stream: Stream, cors: Cors) -> Self {
        let protocol = req.extensions().get::<h3::ext::Protocol>().cloned();
        LongLived::new(LongKind::Media(protocol), tg, id, stream, cors)
    }

    /// The request's future, run after the routing step was freed. Each one owns this record
    /// and uses its fields in place (see [`LongFuture`]).
    fn start(self, shared: Arc<Shared>, conn: quinn::Connection) -> LongFuture {
        match self.kind {
            LongKind::EventsGet => Box::pin(events_get(shared, conn, self)),
            LongKind::EventsPut => Box::pin(events_put(shared, conn, self)),
            LongKind::Media(_) => Box::pin(media_connect(shared, conn, self)),
        }
    }
}

/// A long-lived request's future. Its functions return an `async move` block that uses the
/// captured [`LongLived`] in place: an `async fn` would copy its arguments into the body's own
/// locals and so keep them twice for the call's lifetime. One-off steps (opening, replying) run
/// in boxes of their own, so that the future kept for the call holds only what its wait needs.
type LongFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

async fn handle_request(
    shared: &Arc<Shared>,
    conn: quinn::Connection,
    req: Request<()>,
    mut stream: Stream,
    long: &mut Option<LongLived>,
) {
    let cors = match shared.ctx.cors.gate(&req) {
        Ok(h) => h,
        Err(reply) => return Box::pin(send_reply(shared, &mut stream, reply)).await,
    };
    if let (Some(jwks), &Method::GET) = (&shared.ctx.jwks, req.method()) {
        let public = match req.uri().path() {
            JWKS_PATH => Some(jwks()),
            AS_METADATA_PATH => {
                let base = format!("https://{}", shared.ctx.authority);
                Some(serde_json::json!({
                    "issuer": crate::auth::LOCAL_ISSUER,
                    "jwks_uri": format!("{base}{JWKS_PATH}"),
                    "scopes_supported": ["calls:write", "tgs:read", "handlers:write"],
                    "response_types_supported": [],
                    "grant_types_supported": [],
                    "token_endpoint_auth_signing_alg_values_supported": ["ES256"],
                }))
            }
            _ => None,
        };
        if let Some(body) = public {
            let reply =
                Reply::json(StatusCode::OK, &body).with(header::CACHE_CONTROL, "max-age=300");
            return Box::pin(send_reply(shared, &mut stream, reply.with_all(&cors))).await;
        }
    }
    let path = req.uri().path().to_owned();
    // A browser's WebTransport CONNECT cannot carry a bearer token: a media ticket from its
    // POST {TG}/calls stands in for it, on that call's media only.
    if let (Route::Media(tg, id), Some(ticket)) = (route(&path), ticket_param(req.uri())) {
        if req.method() == Method::CONNECT {
            let origin = req
                .headers()
                .get(header::ORIGIN)
                .and_then(|v| v.to_str().ok());
            let redeemed = shared.state().redeem_ticket(ticket, tg, id, origin);
            return match redeemed {
                Ok(()) => *long = Some(LongLived::media(&req, tg, id, stream, cors)),
                Err(why) => {
                    shared.ctx.metrics.auth_failures();
                    tracing::debug!(%tg, call = %id, why, "media CONNECT refused");
                    let reply = Reply::problem(&Problem::new(401, "Unauthorized", why));
                    Box::pin(send_reply(shared, &mut stream, reply.with_all(&cors))).await
                }
            };
        }
    }
    let principal = match Box::pin(authenticate(shared, &req)).await {
        Ok(p) => p,
        Err(reply) => {
            return Box::pin(send_reply(shared, &mut stream, reply.with_all(&cors))).await
        }
    };
    if let Some(scope) = required_scope(&route(&path)) {
        if let Err(e) = crate::auth::require_scope(&principal, scope) {
            shared.ctx.metrics.auth_failures();
            let reply = Reply::problem(&Problem::new(403, "Forbidden", e.to_string()))
                .with(header::WWW_AUTHENTICATE, crate::auth::www_authenticate(&e));
            return Box::pin(send_reply(shared, &mut stream, reply.with_all(&cors))).await;
        }
    }
    let method = req.method().clone();
    let extended_connect =
        method == Method::CONNECT && req.extensions().get::<h3::ext::Protocol>().is_some();
    let reply = match (route(&path), &method) {
        // WebTransport is served on `{call}/media` only (draft-ietf-webtrans-http3: 405).
        (r, _) if extended_connect && !matches!(r, Route::Media(_, _)) => {
            Reply::method_not_allowed(r.methods().unwrap_or(""))
        }
        (Route::TgList, &Method::GET) => tg_list(shared),
        (Route::TgList, _) => Reply::method_not_allowed("GET"),
        (Route::Tg(tg), &Method::GET) => tg_description(shared, tg),
        (Route::Tg(_), _) => Reply::method_not_allowed("GET"),
        (Route::Handlers(tg), &Method::POST) => {
            Box::pin(put_handler(
                shared,
                tg,
                None,
                &principal.subject,
                &mut stream,
            ))
            .await
        }
        (Route::Handlers(_), _) => Reply::method_not_allowed("POST"),
        (Route::Handler(tg, id), &Method::GET) => get_handler(shared, tg, id, &principal.subject),
        (Route::Handler(tg, id), &Method::PUT) => {
            Box::pin(put_handler(
                shared,
                tg,
                Some(id),
                &principal.subject,
                &mut stream,
            ))
            .await
        }
        (Route::Handler(tg, id), &Method::DELETE) => {
            delete_handler(shared, tg, id, &principal.subject)
        }
        (Route::Handler(_, _), _) => Reply::method_not_allowed("GET, PUT, DELETE"),
        (Route::HandlerEvents(tg, id), &Method::GET) => {
            return Box::pin(handler_events(
                shared,
                &conn,
                tg,
                id,
                &principal.subject,
                stream,
                &cors,
            ))
            .await
        }
        (Route::HandlerEvents(_, _), _) => Reply::method_not_allowed("GET"),
        (Route::Calls(tg), &Method::POST) => {
            let origin = req
                .headers()
                .get(header::ORIGIN)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let tns = principal
                .scopes
                .iter()
                .filter_map(|s| s.strip_prefix("tn:"))
                .filter_map(crate::stir::canonical_tn)
                .collect();
            let trusted = principal.scopes.iter().any(|s| s == VERSTAT_SCOPE);
            let client = Client {
                principal: principal.subject,
                origin,
                tns,
                verstat_trusted: trusted,
            };
            Box::pin(post_call(shared, tg, client, &mut stream)).await
        }
        (Route::Calls(_), _) => Reply::method_not_allowed("POST"),
        (Route::Call(tg, id), &Method::GET) => get_call(shared, tg, id),
        (Route::Call(tg, id), &Method::POST) => {
            let origin = req
                .headers()
                .get(header::ORIGIN)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Box::pin(take_call(
                shared,
                tg,
                id,
                &principal.subject,
                origin,
                &mut stream,
            ))
            .await
        }
        (Route::Call(tg, id), _) => match get_call(shared, tg, id) {
            r if r.status == StatusCode::OK => Reply::method_not_allowed("GET, POST"),
            r => r,
        },
        // The events and media streams live as long as the call: handed back to run without
        // this step's state.
        (Route::Events(tg, id), &Method::GET) => {
            *long = Some(LongLived::new(LongKind::EventsGet, tg, id, stream, cors));
            return;
        }
        (Route::Events(tg, id), &Method::PUT) => {
            *long = Some(LongLived::new(LongKind::EventsPut, tg, id, stream, cors));
            return;
        }
        (Route::Events(_, _), _) => Reply::method_not_allowed("GET, PUT"),
        (Route::Media(tg, id), &Method::CONNECT) => {
            *long = Some(LongLived::media(&req, tg, id, stream, cors));
            return;
        }
        (Route::Media(_, _), _) => Reply::method_not_allowed("CONNECT"),
        (Route::NotFound, _) => Reply::not_found("no such resource"),
    };
    Box::pin(send_reply(shared, &mut stream, reply.with_all(&cors))).await
}

fn tg_list(shared: &Shared) -> Reply {
    let list = TgList {
        tgs: shared
            .ctx
            .tgs
            .iter()
            .map(|t| TgRef {
                uri: shared.tg_uri(&t.name),
                name: t.name.clone(),
                description: t.description.clone(),
            })
            .collect(),
    };
    Reply::json(StatusCode::OK, &list)
}

fn tg_description(shared: &Shared, tg: &str) -> Reply {
    let Some(t) = shared.tg(tg) else {
        return Reply::not_found("no such trunk group");
    };
    Reply::json(
        StatusCode::OK,
        &TgDescription {
            uri: shared.tg_uri(&t.name),
            outbound: TgOutbound {
                destinations: t.destinations.clone(),
                origins: None,
            },
            retry_backoff: 2000,
            media_timeout: 5000,
        },
    )
}

/// Reads a whole request body of at most [`MAX_BODY`] bytes.
async fn read_body(stream: &mut Stream) -> Result<Bytes, Reply> {
    let mut body = BytesMut::new();
    loop {
        match stream.recv_data().await {
            Ok(Some(chunk)) => {
                if !append_limited(&mut body, chunk, MAX_BODY) {
                    return Err(Reply::bad_request(format!(
                        "request body larger than {MAX_BODY} bytes"
                    )));
                }
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => return Err(Reply::bad_request(format!("request body: {e}"))),
        }
    }
}

/// The handler `id` of `tg` as `subject` may see it: someone else's is not found.
fn owned_handler<'a>(
    st: &'a mut State,
    tg: &str,
    id: &str,
    subject: &str,
) -> Option<&'a mut HandlerEntry> {
    st.handlers
        .get_mut(tg)?
        .iter_mut()
        .find(|h| h.handler.handler_id == id && h.owner == subject)
}

/// `POST {TG}/handlers` (`id` none) and `PUT {TG}/handlers/{id}`: registers or replaces.
async fn put_handler(
    shared: &Shared,
    tg: &str,
    id: Option<&str>,
    subject: &str,
    stream: &mut Stream,
) -> Reply {
    if shared.tg(tg).is_none() {
        return Reply::not_found("no such trunk group");
    }
    let body = match read_body(stream).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    // On PUT the path names the handler; a body without `handler-id` takes it from there.
    let mut value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return Reply::bad_request(format!("handler: {e}")),
    };
    if let (Some(id), Some(obj)) = (id, value.as_object_mut()) {
        obj.entry("handler-id")
            .or_insert_with(|| serde_json::Value::String(id.to_owned()));
    }
    let mut handler: Handler = match serde_json::from_value(value) {
        Ok(h) => h,
        Err(e) => return Reply::bad_request(format!("handler: {e}")),
    };
    if !is_segment(&handler.handler_id) {
        return Reply::bad_request("handler-id must be a non-empty URI path segment");
    }
    if id.is_some_and(|id| id != handler.handler_id) {
        return Reply::bad_request("handler-id in the body differs from the one in the path");
    }
    let uri = format!("{}/handlers/{}", shared.tg_uri(tg), handler.handler_id);
    handler.uri = Some(uri.clone());
    let created = {
        let mut st = shared.state();
        let list = st.handlers.entry(tg.to_owned()).or_default();
        let full = list.len() >= MAX_HANDLERS_PER_TG;
        match list
            .iter_mut()
            .find(|h| h.handler.handler_id == handler.handler_id)
        {
            Some(h) if h.owner != subject => {
                return Reply::problem(&Problem::new(
                    409,
                    "Conflict",
                    "this handler-id is registered by another client",
                ))
            }
            Some(h) => {
                h.handler = handler.clone();
                false
            }
            None if full => {
                return Reply::problem(&Problem::new(
                    429,
                    "Too Many Requests",
                    "handler table of this trunk group is full",
                ))
                .with(header::RETRY_AFTER, "60")
            }
            None => {
                list.push(HandlerEntry {
                    handler: handler.clone(),
                    owner: subject.to_owned(),
                    streams: Vec::new(),
                    seq: 0,
                });
                true
            }
        }
    };
    // POST always answers 201 (RIPT-00); PUT says whether it created.
    let status = if created || id.is_none() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Reply::json(status, &handler).with(header::LOCATION, uri)
}

fn get_handler(shared: &Shared, tg: &str, id: &str, subject: &str) -> Reply {
    let mut st = shared.state();
    match owned_handler(&mut st, tg, id, subject) {
        Some(h) => Reply::json(StatusCode::OK, &h.handler),
        None => Reply::not_found("no such handler"),
    }
}

fn delete_handler(shared: &Shared, tg: &str, id: &str, subject: &str) -> Reply {
    let mut st = shared.state();
    let Some(list) = st.handlers.get_mut(tg) else {
        return Reply::not_found("no such handler");
    };
    let Some(i) = list
        .iter()
        .position(|h| h.handler.handler_id == id && h.owner == subject)
    else {
        return Reply::not_found("no such handler");
    };
    // Dropping the entry drops its streams' senders: they close with `]`.
    list.remove(i);
    Reply {
        status: StatusCode::NO_CONTENT,
        headers: Vec::new(),
        body: None,
    }
}

/// `GET {TG}/handlers/{id}/events`: the handler is reachable (calls ring on it) while open.
async fn handler_events(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    tg: &str,
    id: &str,
    subject: &str,
    mut stream: Stream,
    cors: &[(header::HeaderName, String)],
) {
    let (tx, rx) = mpsc::channel(SUBSCRIBER_BACKLOG);
    let opened = {
        let mut guard = shared.state();
        let st = &mut *guard;
        match owned_handler(st, tg, id, subject) {
            None => false,
            Some(h) => {
                if h.streams.len() >= MAX_HANDLER_STREAMS {
                    h.streams.remove(0);
                }
                h.streams.push(tx.clone());
                // Calls ringing on the TG now ring here too (a page that reconnects, or one
                // that registered while a call was already ringing).
                let mut ringing: Vec<Event> = Vec::new();
                for e in st.calls.values_mut().filter(|e| e.tg == tg) {
                    if let Some(o) = e.offer.as_mut().filter(|o| o.taken_by.is_none()) {
                        if !o.rang.iter().any(|r| r == id) && o.rang.len() < MAX_OFFERED {
                            o.rang.push(id.to_owned());
                        }
                        ringing.push(incoming_event(e));
                    }
                }
                if let Some(h) = owned_handler(st, tg, id, subject) {
                    for ev in ringing {
                        h.notify(ev);
                    }
                }
                true
            }
        }
    };
    drop(tx);
    if !opened {
        let reply = Reply::not_found("no such handler").with_all(cors);
        return send_reply(shared, &mut stream, reply).await;
    }
    if !send_head(shared, &mut stream, Reply::event_stream().with_all(cors)).await {
        return;
    }
    let mut ping = || {
        let mut st = shared.state();
        owned_handler(&mut st, tg, id, subject).map(|h| {
            let mut ev = Event::new(EventName::Ping);
            ev.seq = Some(h.seq);
            ev.direction = Some(super::model::Direction::S2c);
            h.seq += 1;
            ev
        })
    };
    let (head, enc) = (EventEncoder::open(), EventEncoder::new());
    pump_events(
        &mut stream,
        conn,
        head,
        enc,
        rx,
        Some((HANDLER_PING, &mut ping)),
    )
    .await;
}

/// Writes an events array on a streaming answer whose head is sent: `head` (`[` and whatever
/// `enc` already encoded), then each event `rx` brings (and every `ping.0` the event `ping.1`
/// makes), until `rx` closes (then `]`: the call ended, the handler was removed, or this stream
/// was cut off as too slow), a write fails, or the connection goes (without watching it a dead
/// client would only be noticed at the next event).
async fn pump_events(
    stream: &mut Stream,
    conn: &quinn::Connection,
    head: Bytes,
    mut enc: EventEncoder,
    mut rx: mpsc::Receiver<Arc<Event>>,
    mut ping: Option<(Duration, &mut (dyn FnMut() -> Option<Event> + Send))>,
) {
    // Sends are boxed: this future lives as long as the call, and h3's send futures inline would
    // make it larger for all that time. Events are a handful per call. Events are encoded before
    // each send so that none is held across it.
    let mut res = Box::pin(stream.send_data(head)).await;
    // No timer at all without pings (a call's events stream).
    let mut tick = ping
        .as_ref()
        .map(|p| tokio::time::interval_at(tokio::time::Instant::now() + p.0, p.0));
    while res.is_ok() {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => {
                    let bytes = enc.encode(&ev);
                    drop(ev);
                    res = Box::pin(stream.send_data(bytes)).await;
                }
                None => {
                    if Box::pin(stream.send_data(EventEncoder::close())).await.is_ok() {
                        let _ = Box::pin(stream.finish()).await;
                    }
                    break;
                }
            },
            () = next_tick(&mut tick) => {
                let bytes = ping.as_mut().and_then(|p| (p.1)()).map(|ev| enc.encode(&ev));
                if let Some(bytes) = bytes {
                    res = Box::pin(stream.send_data(bytes)).await;
                }
            }
            _ = conn.closed() => break,
        }
    }
}

/// The next tick of `tick`; never, without one.
async fn next_tick(tick: &mut Option<tokio::time::Interval>) {
    match tick {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// `POST {call}` with `{"handler": URI}`: the handler's owner takes a call offered to it.
async fn take_call(
    shared: &Shared,
    tg: &str,
    id: &str,
    subject: &str,
    origin: Option<String>,
    stream: &mut Stream,
) -> Reply {
    let body = match read_body(stream).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let take: CallTake = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(e) => {
            return Reply::bad_request(format!(
                "POST {{call}} takes a call offered to a handler: {{\"handler\": URI}} ({e})"
            ))
        }
    };
    let prefix = format!("{}/handlers/", shared.tg_uri(tg));
    let Some(handler_id) = take.handler.strip_prefix(&prefix).filter(|h| is_segment(h)) else {
        return Reply::bad_request("handler is not a handler URI of this trunk group");
    };
    let req = ReqId(shared.next_req.fetch_add(1, Ordering::Relaxed));
    let (tx, rx) = oneshot::channel();
    let (key, handler) = {
        let mut guard = shared.state();
        let st = &mut *guard;
        let Some(e) = st.calls.get(id).filter(|e| e.tg == tg) else {
            return Reply::not_found("no such call");
        };
        let Some(offer) = e.offer.as_ref() else {
            return Reply::bad_request("the call was not offered to handlers");
        };
        if offer.taken_by.is_some() {
            return Reply::problem(&Problem::new(
                409,
                "Conflict",
                "the call was taken by another handler",
            ));
        }
        let forbidden = |d: &str| Reply::problem(&Problem::new(403, "Forbidden", d));
        if !offer.rang.iter().any(|r| r == handler_id) {
            return forbidden("the call was not offered to this handler");
        }
        let key = e.key;
        let Some(h) = owned_handler(st, tg, handler_id, subject) else {
            return forbidden("the handler belongs to another client");
        };
        let handler = h.handler.clone();
        if st.takes.len() >= MAX_PENDING {
            return Reply::problem(&Problem::new(503, "Service Unavailable", "busy"))
                .with(header::RETRY_AFTER, "5");
        }
        st.takes.insert(req, tx);
        (key, handler)
    };
    let sent = shared
        .ctx
        .events
        .send(RiptEvent::TakeCall {
            req,
            call: key,
            handler,
            origin: origin.clone(),
        })
        .await;
    let answer = match sent {
        Ok(()) => tokio::time::timeout(RESPOND_TIMEOUT, rx).await,
        Err(_) => {
            shared.state().takes.remove(&req);
            return Reply::problem(&Problem::new(503, "Service Unavailable", "busy"))
                .with(header::RETRY_AFTER, "5");
        }
    };
    let mut description = match answer {
        Ok(Ok(Ok(d))) => d,
        Ok(Ok(Err(problem))) => return Reply::problem(&problem),
        _ => {
            shared.state().takes.remove(&req);
            return Reply::problem(&Problem::new(503, "Service Unavailable", "busy"))
                .with(header::RETRY_AFTER, "5");
        }
    };
    {
        let mut guard = shared.state();
        let st = &mut *guard;
        let Some(e) = st.calls.get_mut(id).filter(|e| e.key == key) else {
            // Ended while the engine answered.
            return Reply::not_found("no such call");
        };
        description.uri = e.description.uri.clone();
        e.description = description.clone();
        let others: Vec<String> = match e.offer.as_mut() {
            Some(o) => {
                o.taken_by = Some(handler_id.to_owned());
                o.rang
                    .iter()
                    .filter(|r| *r != handler_id)
                    .cloned()
                    .collect()
            }
            None => Vec::new(),
        };
        let ev = Event {
            call: Some(description.uri.clone()),
            reason: Some("SIP;cause=200;text=\"Call completed elsewhere\"".into()),
            ..Event::new(EventName::End)
        };
        if let Some(list) = st.handlers.get_mut(tg) {
            for h in list
                .iter_mut()
                .filter(|h| others.contains(&h.handler.handler_id))
            {
                h.notify(ev.clone());
            }
        }
        if let Some(o) = &origin {
            description.media_ticket = st.issue_ticket(tg, id, o);
        }
    }
    Reply::json(StatusCode::OK, &description)
}

/// Who is placing a call with `POST {TG}/calls`, as its token and request tell.
struct Client {
    principal: String,
    origin: Option<String>,
    tns: Vec<String>,
    /// The token has [`VERSTAT_SCOPE`]: the request's `verstat` is kept.
    verstat_trusted: bool,
}

/// The scope that lets a client assert a STIR verification result (`verstat` in
/// `POST {TG}/calls`): a gateway that verified the call on its way in. From anyone else the
/// field is dropped, so a client cannot make its own call look verified.
pub const VERSTAT_SCOPE: &str = "stir:verstat";

async fn post_call(shared: &Shared, tg: &str, client: Client, stream: &mut Stream) -> Reply {
    let Client {
        principal,
        origin,
        tns,
        verstat_trusted,
    } = client;
    if shared.tg(tg).is_none() {
        return Reply::not_found("no such trunk group");
    }
    let body = match read_body(stream).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut request: CallRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return Reply::bad_request(format!("call request: {e}")),
    };
    // A call naming a registered handler uses its advertisement unless it carries its own.
    if let Some(h) = request.handler.as_deref() {
        let prefix = format!("{}/handlers/", shared.tg_uri(tg));
        let known = h.strip_prefix(&prefix).and_then(|id| {
            let mut st = shared.state();
            owned_handler(&mut st, tg, id, &principal).map(|e| e.handler.advertisement.clone())
        });
        match known {
            Some(adv) => {
                request.advertisement.get_or_insert(adv);
            }
            None => {
                return Reply::bad_request(format!(
                    "unknown handler {h}: register it on this trunk group first"
                ))
            }
        }
    }
    if !verstat_trusted && request.verstat.take().is_some() {
        tracing::debug!(%principal, "verstat from a client not trusted to assert it dropped");
    }
    let busy = || {
        Reply::problem(&Problem::new(
            503,
            "Service Unavailable",
            "the gateway cannot take the call now",
        ))
        .with(header::RETRY_AFTER, "5")
    };
    let req = ReqId(shared.next_req.fetch_add(1, Ordering::Relaxed));
    let (tx, rx) = oneshot::channel();
    {
        let mut st = shared.state();
        if st.pending.len() >= MAX_PENDING {
            return busy();
        }
        st.pending.insert(
            req,
            Pending {
                tg: tg.to_owned(),
                tx,
            },
        );
    }
    let sent = shared
        .ctx
        .events
        .send(RiptEvent::IncomingCall {
            req,
            tg: tg.to_owned(),
            request,
            principal,
            origin: origin.clone(),
            tns,
        })
        .await;
    let answer = match sent {
        Ok(()) => tokio::time::timeout(RESPOND_TIMEOUT, rx).await,
        Err(_) => {
            shared.state().pending.remove(&req);
            return busy();
        }
    };
    match answer {
        Ok(Ok(Ok(mut description))) => {
            let uri = description.uri.clone();
            if let Some(o) = &origin {
                let id = uri.rsplit('/').next().unwrap_or_default();
                description.media_ticket = shared.state().issue_ticket(tg, id, o);
            }
            Reply::json(StatusCode::CREATED, &description).with(header::LOCATION, uri)
        }
        Ok(Ok(Err(problem))) => Reply::problem(&problem),
        // Timed out, or the engine dropped the request.
        _ => {
            shared.state().pending.remove(&req);
            busy()
        }
    }
}

fn get_call(shared: &Shared, tg: &str, id: &str) -> Reply {
    let st = shared.state();
    match st.calls.get(id).filter(|e| e.tg == tg) {
        Some(e) => Reply::json(StatusCode::OK, &e.description),
        None => Reply::not_found("no such call"),
    }
}

/// `GET {call}/events`: the call's events, from its last state on, until it ends.
// Not an async fn, which would keep its arguments twice (see `LongFuture`).
#[allow(clippy::manual_async_fn)]
fn events_get(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    mut long: LongLived,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let opened = Box::pin(open_events_get(&shared, &mut long)).await;
        let Some((key, rx, head, enc)) = opened else {
            return;
        };
        pump_events(&mut long.stream, &conn, head, enc, rx, None).await;
        Box::pin(shared.close_stream(&long.id, key)).await;
    }
}

/// Subscribes a `GET {call}/events` and sends its head. Gives the subscription and the first
/// bytes to write (`[` and the call's last state, already encoded), or `None` once it has
/// answered on its own (no such call, or the final event of a call that just ended).
async fn open_events_get(
    shared: &Shared,
    long: &mut LongLived,
) -> Option<(CallKey, mpsc::Receiver<Arc<Event>>, Bytes, EventEncoder)> {
    let LongLived {
        tg,
        id,
        stream,
        cors,
        ..
    } = long;
    let (tx, rx) = mpsc::channel(SUBSCRIBER_BACKLOG);
    // Subscribing and reading the last state under one lock: no event is missed or doubled.
    let sub = {
        let mut st = shared.state();
        match st.calls.get_mut(id.as_str()).filter(|e| e.tg == *tg) {
            None => None,
            Some(e) => {
                // A GET whose client vanished is only noticed at the next write, so when the
                // table is full the oldest subscriber is the likeliest dead one: close it.
                if e.subscribers.len() >= MAX_SUBSCRIBERS {
                    e.subscribers.remove(0);
                }
                e.subscribers.push(tx);
                e.open_streams += 1;
                Some((e.key, e.last_state.clone()))
            }
        }
    };
    let cors = std::mem::take(cors);
    let Some((key, last)) = sub else {
        // Ended moments ago: give the final event and close, instead of a bare 404 that would
        // leave the client not knowing how the call ended.
        if let Some(last) = shared.final_event(tg, id) {
            if send_head(shared, stream, Reply::event_stream().with_all(&cors)).await {
                let mut enc = EventEncoder::new();
                let mut body = BytesMut::from(&EventEncoder::open()[..]);
                if let Some(ev) = &last {
                    body.extend_from_slice(&enc.encode(ev));
                }
                body.extend_from_slice(&EventEncoder::close());
                if stream.send_data(body.freeze()).await.is_ok() {
                    let _ = stream.finish().await;
                }
            }
            return None;
        }
        let reply = Reply::not_found("no such call").with_all(&cors);
        send_reply(shared, stream, reply).await;
        return None;
    };
    let opened = RiptEvent::ServerEventsOpened { call: key };
    let _ = shared.ctx.events.send(opened).await;
    if !send_head(shared, stream, Reply::event_stream().with_all(&cors)).await {
        shared.close_stream(id, key).await;
        return None;
    }
    let mut enc = EventEncoder::new();
    let mut head = BytesMut::from(&EventEncoder::open()[..]);
    if let Some(ev) = &last {
        head.extend_from_slice(&enc.encode(ev));
    }
    Some((key, rx, head.freeze(), enc))
}

/// `PUT {call}/events`: the client's events, each handed to the engine, until either side ends.
// Not an async fn, which would keep its arguments twice (see `LongFuture`).
#[allow(clippy::manual_async_fn)]
fn events_put(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    mut long: LongLived,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let Some((key, mut ended)) = Box::pin(open_events_put(&shared, &mut long)).await else {
            return;
        };
        let stream = &mut long.stream;
        let mut dec = EventDecoder::new();
        loop {
            tokio::select! {
                chunk = stream.recv_data() => match chunk {
                    Ok(Some(mut buf)) => {
                        while buf.has_remaining() {
                            let c = buf.chunk();
                            let n = c.len();
                            dec.push(c);
                            buf.advance(n);
                        }
                        // Boxed: the decoded events are not kept in this call-long future.
                        if !Box::pin(forward_events(&shared, key, &mut dec)).await {
                            break;
                        }
                    }
                    Ok(None) => {
                        let _ = Box::pin(stream.finish()).await;
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(call = %key, error = %e, "events PUT stream broke");
                        break;
                    }
                },
                _ = ended.changed() => {
                    let _ = Box::pin(stream.finish()).await;
                    break;
                }
                _ = conn.closed() => break,
            }
        }
        Box::pin(shared.close_stream(&long.id, key)).await;
    }
}

/// Opens a `PUT {call}/events` and sends its `200` head; `None` once it has answered otherwise.
async fn open_events_put(
    shared: &Shared,
    long: &mut LongLived,
) -> Option<(CallKey, watch::Receiver<()>)> {
    let cors = std::mem::take(&mut long.cors);
    let Some((key, ended)) = shared.open_stream(&long.tg, &long.id) else {
        let reply = Reply::not_found("no such call").with_all(&cors);
        send_reply(shared, &mut long.stream, reply).await;
        return None;
    };
    let opened = RiptEvent::ServerEventsOpened { call: key };
    let _ = shared.ctx.events.send(opened).await;
    let ok = Reply {
        status: StatusCode::OK,
        headers: Vec::new(),
        body: None,
    };
    if !send_head(shared, &mut long.stream, ok.with_all(&cors)).await {
        shared.close_stream(&long.id, key).await;
        return None;
    }
    Some((key, ended))
}

/// Hands every event `dec` holds to the engine; `false` when the engine is gone.
async fn forward_events(shared: &Shared, key: CallKey, dec: &mut EventDecoder) -> bool {
    while let Some(item) = dec.next_event() {
        match item {
            Ok(event) => {
                let ev = RiptEvent::ServerEvent { call: key, event };
                if shared.ctx.events.send(ev).await.is_err() {
                    return false;
                }
            }
            // The decoder resynchronises at the next object.
            Err(e) => {
                tracing::info!(call = %key, error = %e, "undecodable event skipped");
            }
        }
    }
    true
}

/// `CONNECT {call}/media`: binds the call's QUIC datagrams to this stream for as long as it is
/// open.
// Not an async fn, which would keep its arguments twice (see `LongFuture`).
#[allow(clippy::manual_async_fn)]
fn media_connect(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    mut long: LongLived,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let Some((key, mut ended)) = Box::pin(open_media(&shared, &mut long)).await else {
            return;
        };
        let stream = &mut long.stream;
        let stream_id = stream.id().into_inner();
        shared.ctx.media.bind_quic(key, conn.clone(), stream_id);
        loop {
            tokio::select! {
                r = stream.recv_data() => match r {
                    // Capsules are not used; the stream only scopes the datagrams.
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                },
                _ = ended.changed() => {
                    let _ = Box::pin(stream.finish()).await;
                    break;
                }
                _ = conn.closed() => break,
            }
        }
        shared.ctx.media.unbind_quic_stream(key, &conn, stream_id);
    }
}

/// Checks a media CONNECT and sends its `200` head; `None` once it has answered otherwise.
async fn open_media(
    shared: &Shared,
    long: &mut LongLived,
) -> Option<(CallKey, watch::Receiver<()>)> {
    let cors = std::mem::take(&mut long.cors);
    // Extended CONNECT with `:protocol webtransport` (browsers) or plain CONNECT (gateways).
    // The origin was checked in `CorsPolicy::gate` and the token in `authenticate`.
    if let LongKind::Media(Some(p)) = &long.kind {
        if *p != h3::ext::Protocol::WEB_TRANSPORT {
            let reply = Reply::bad_request(format!("unsupported :protocol {}", p.as_str()));
            send_reply(shared, &mut long.stream, reply.with_all(&cors)).await;
            return None;
        }
    }
    let found = {
        let st = shared.state();
        st.calls
            .get(long.id.as_str())
            .filter(|e| e.tg == long.tg)
            .map(|e| (e.key, e.ended.subscribe()))
    };
    let Some((key, ended)) = found else {
        let reply = Reply::not_found("no such call").with_all(&cors);
        send_reply(shared, &mut long.stream, reply).await;
        return None;
    };
    let ok = Reply {
        status: StatusCode::OK,
        headers: vec![(
            header::HeaderName::from_static("sec-webtransport-http3-draft"),
            "draft02".into(),
        )],
        body: None,
    }
    .with_all(&cors);
    if !send_head(shared, &mut long.stream, ok).await {
        return None;
    }
    Some((key, ended))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_stream_limit_doubles_at_half_use_and_not_after_streams_close() {
        let b = Arc::new(StreamBudget::new(8));
        let mut open = Vec::new();
        let mut raised = Vec::new();
        for _ in 0..20 {
            raised.extend(b.opened());
            open.push(OpenRequest(b.clone()));
        }
        // 4 open of 8: 16; 8 of 16: 32; 16 of 32: 64.
        assert_eq!(raised, vec![16, 32, 64]);
        open.clear();
        assert_eq!(b.open.load(std::sync::atomic::Ordering::Relaxed), 0);
        // Closed streams free their place: reopening as many needs no new raise.
        for _ in 0..20 {
            assert_eq!(b.opened(), None);
            open.push(OpenRequest(b.clone()));
        }
        let top = StreamBudget::new(MAX_REQUEST_STREAMS);
        for _ in 0..MAX_REQUEST_STREAMS / 2 + 1 {
            assert_eq!(top.opened(), None);
        }
    }

    #[test]
    fn routes() {
        let p = |s: &str| format!("{RIPT_PREFIX}{s}");
        assert_eq!(route(&p("providertgs")), Route::TgList);
        assert_eq!(route(&p("providertgs/")), Route::TgList);
        assert_eq!(route(&p("providertgs/a")), Route::Tg("a"));
        assert_eq!(route(&p("providertgs/a/handlers")), Route::Handlers("a"));
        assert_eq!(route(&p("providertgs/a/calls")), Route::Calls("a"));
        assert_eq!(route(&p("providertgs/a/calls/x")), Route::Call("a", "x"));
        assert_eq!(
            route(&p("providertgs/a/calls/x/events")),
            Route::Events("a", "x")
        );
        assert_eq!(
            route(&p("providertgs/a/calls/x/media")),
            Route::Media("a", "x")
        );
        assert_eq!(route(&p("providertgs/a/calls/x/other")), Route::NotFound);
        assert_eq!(route("/elsewhere"), Route::NotFound);
    }

    /// The headers of whatever answer the CORS step leads to: its own, or the ones it adds.
    fn cors_outcome(policy: &CorsPolicy, req: &Request<()>) -> (Option<StatusCode>, HeaderMap) {
        match policy.gate(req) {
            Ok(h) => {
                let mut map = HeaderMap::new();
                for (n, v) in h {
                    map.append(n, v.parse().unwrap());
                }
                (None, map)
            }
            Err(r) => (Some(r.status), r.head().headers().clone()),
        }
    }

    /// CORS-03, as a property over configuration combinations: whatever the allow list (every
    /// subset of a pool that includes entries the loader refuses, both loaded and fed in raw)
    /// and whatever the request, no answer carries `Access-Control-Allow-Origin: *` or
    /// `Access-Control-Allow-Credentials`, an ACAO is always the request's single, listed,
    /// serialised origin, and the header lists are never wildcards.
    #[test]
    fn never_a_wildcard_origin_nor_credentials_over_config_combinations() {
        let pool = [
            "https://allowed.example",
            "https://other.example:8443",
            "http://localhost:3000",
            "*",
            "null",
            "https://*.example",
            "https://allowed.example/",
        ];
        let origins: [&[&str]; 11] = [
            &[],
            &["https://allowed.example"],
            &["https://other.example:8443"],
            &["http://localhost:3000"],
            &["*"],
            &["null"],
            &["https://allowed.example.evil.com"],
            &["https://evil-allowed.example"],
            &["HTTPS://ALLOWED.EXAMPLE"],
            &["https://allowed.example/"],
            &["https://allowed.example", "https://allowed.example"],
        ];
        let methods = [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
            Method::CONNECT,
        ];
        let p = |s: &str| format!("{RIPT_PREFIX}{s}");
        let paths = [p("providertgs/t/calls"), p("providertgs/t/calls/x/media")];
        let mut checked = 0u64;
        for mask in 0u32..(1 << pool.len()) {
            let list: Vec<&str> = (0..pool.len())
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| pool[i])
                .collect();
            for max_age in [0u64, 600] {
                let text =
                    format!("[http3]\ncors_origins = {list:?}\ncors_max_age_secs = {max_age}\n");
                let mut policies = vec![CorsPolicy {
                    origins: list.iter().map(|s| s.to_string()).collect(),
                    max_age_secs: max_age,
                }];
                match crate::config::load_str(&text, "t.toml") {
                    Ok(cfg) => {
                        assert!(!list.contains(&"*"), "the loader let \"*\" through");
                        policies.push(CorsPolicy::from_config(&cfg.http3));
                    }
                    Err(e) => {
                        let bad = ["*", "null", "https://*.example", "https://allowed.example/"];
                        assert!(list.iter().any(|o| bad.contains(o)), "{text}: {e}");
                    }
                }
                for policy in &policies {
                    for origin in origins {
                        for method in &methods {
                            for acrm in [false, true] {
                                for path in &paths {
                                    let mut b = Request::builder()
                                        .method(method.clone())
                                        .uri(format!("https://localhost:4443{path}"));
                                    for o in origin {
                                        b = b.header(header::ORIGIN, *o);
                                    }
                                    if acrm {
                                        b = b
                                            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
                                            .header(
                                                header::ACCESS_CONTROL_REQUEST_HEADERS,
                                                "authorization,content-type",
                                            );
                                    }
                                    let mut req = b.body(()).unwrap();
                                    if *method == Method::CONNECT {
                                        req.extensions_mut()
                                            .insert(h3::ext::Protocol::WEB_TRANSPORT);
                                    }
                                    let (status, h) = cors_outcome(policy, &req);
                                    let ctx = format!("{list:?} {origin:?} {method} {acrm} {path}");
                                    assert!(
                                        !h.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS),
                                        "{ctx}"
                                    );
                                    let acao: Vec<_> = h
                                        .get_all(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                                        .iter()
                                        .collect();
                                    assert!(acao.len() <= 1, "{ctx}");
                                    if let Some(a) = acao.first() {
                                        let a = a.to_str().unwrap();
                                        assert_ne!(a, "*", "{ctx}");
                                        assert_eq!(origin, &[a], "{ctx}");
                                        assert!(policy.origins.iter().any(|o| o == a), "{ctx}");
                                        assert_eq!(
                                            crate::config::normalize_origin(a).as_deref(),
                                            Some(a),
                                            "{ctx}"
                                        );
                                        assert_eq!(h.get(header::VARY).unwrap(), "origin");
                                    }
                                    for name in [
                                        header::ACCESS_CONTROL_ALLOW_HEADERS,
                                        header::ACCESS_CONTROL_ALLOW_METHODS,
                                        header::ACCESS_CONTROL_EXPOSE_HEADERS,
                                    ] {
                                        if let Some(v) = h.get(&name) {
                                            assert!(!v.to_str().unwrap().contains('*'), "{ctx}");
                                        }
                                    }
                                    if let Some(v) = h.get(header::ACCESS_CONTROL_ALLOW_HEADERS) {
                                        assert!(v.to_str().unwrap().contains("authorization"));
                                    }
                                    let refused = !origin.is_empty() && acao.is_empty();
                                    let preflight = *method == Method::OPTIONS && acrm;
                                    if refused && (preflight || *method == Method::CONNECT) {
                                        assert_eq!(status, Some(StatusCode::FORBIDDEN), "{ctx}");
                                    }
                                    if preflight && !refused && !origin.is_empty() {
                                        assert_eq!(status, Some(StatusCode::NO_CONTENT), "{ctx}");
                                    }
                                    if !preflight && *method != Method::CONNECT {
                                        assert_eq!(status, None, "{ctx}: not answered early");
                                    }
                                    checked += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(
            checked,
            (128 + 8) * 2 * 11 * 6 * 2 * 2,
            "every combination ran"
        );
    }
}

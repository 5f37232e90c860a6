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
    CallDescription, CallRequest, Event, Handler, TgDescription, TgList, TgOutbound, TgRef,
};
use super::{CallAccepted, Problem, ReqId, RiptCmd, RiptEvent};
use crate::auth::{Principal, TokenVerifier};
use crate::config::TgConfig;
use crate::media::MediaHub;
use crate::metrics::Metrics;
use crate::CallKey;
use bytes::{Buf, Bytes, BytesMut};
use http::{header, Method, Request, Response, StatusCode};
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
/// Handlers kept per trunk group.
const MAX_HANDLERS_PER_TG: usize = 256;
/// Simultaneous `GET {call}/events` streams per call; a new one beyond it replaces the oldest.
const MAX_SUBSCRIBERS: usize = 8;
/// Events buffered per subscriber; a subscriber that falls this far behind is cut off (its
/// client sees the stream end, re-opens it and starts again from the current state).
const SUBSCRIBER_BACKLOG: usize = 64;

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
    handlers: HashMap<String, Vec<Handler>>,
    /// Recently ended calls: (tg, final state event), kept for `ENDED_LINGER` so that a client
    /// whose events GET arrives after the end (a callee that refused at once) still learns how
    /// the call ended. Oldest first in `ended_order`.
    ended: HashMap<String, (String, Option<Event>)>,
    ended_order: std::collections::VecDeque<(std::time::Instant, String)>,
}

/// How long an ended call's final event stays readable on `GET {call}/events`.
const ENDED_LINGER: std::time::Duration = std::time::Duration::from_secs(30);
/// Bound on the ended-call records kept for `ENDED_LINGER`.
const MAX_ENDED: usize = 65_536;

struct Pending {
    tg: String,
    tx: oneshot::Sender<Result<CallDescription, Problem>>,
}

struct CallEntry {
    key: CallKey,
    tg: String,
    description: CallDescription,
    last_state: Option<Event>,
    subscribers: Vec<mpsc::Sender<Event>>,
    /// Open events streams (GET and PUT); `ServerEventsClosed` fires when it drops to zero.
    open_streams: usize,
    /// Dropped with the entry: every stream of the call watches it to end when the call does.
    ended: watch::Sender<()>,
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
                st.ended.insert(id.clone(), (e.tg, e.last_state));
                st.ended_order.push_back((now, id));
            }
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
            other => tracing::warn!(?other, "client-role command sent to the server driver"),
        }
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
        .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
        .await;
    let mut h3c = match built {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "HTTP/3 setup failed");
            return;
        }
    };
    loop {
        match h3c.accept().await {
            Ok(Some(resolver)) => {
                let shared = shared.clone();
                let conn = conn.clone();
                tokio::spawn(async move {
                    match resolver.resolve_request().await {
                        Ok((req, stream)) => handle_request(&shared, conn, req, stream).await,
                        Err(e) => tracing::debug!(%remote, error = %e, "bad request stream"),
                    }
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
    Calls(&'a str),
    Call(&'a str, &'a str),
    Events(&'a str, &'a str),
    Media(&'a str, &'a str),
    NotFound,
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

fn authenticate(shared: &Shared, req: &Request<()>) -> Result<Principal, Reply> {
    let result = match bearer(req.headers()) {
        Some(token) => shared.ctx.verifier.verify(token, now_unix()),
        None => Err(crate::auth::AuthError::Missing),
    };
    result.map_err(|e| {
        shared.ctx.metrics.auth_failures();
        Reply::problem(&Problem::new(401, "Unauthorized", e.to_string()))
            .with(header::WWW_AUTHENTICATE, crate::auth::www_authenticate(&e))
    })
}

async fn handle_request(
    shared: &Arc<Shared>,
    conn: quinn::Connection,
    req: Request<()>,
    mut stream: Stream,
) {
    let principal = match authenticate(shared, &req) {
        Ok(p) => p,
        Err(reply) => return send_reply(shared, &mut stream, reply).await,
    };
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let reply = match (route(&path), &method) {
        (Route::TgList, &Method::GET) => tg_list(shared),
        (Route::TgList, _) => Reply::method_not_allowed("GET"),
        (Route::Tg(tg), &Method::GET) => tg_description(shared, tg),
        (Route::Tg(_), _) => Reply::method_not_allowed("GET"),
        (Route::Handlers(tg), &Method::POST) => post_handler(shared, tg, &mut stream).await,
        (Route::Handlers(_), _) => Reply::method_not_allowed("POST"),
        (Route::Calls(tg), &Method::POST) => {
            post_call(shared, tg, principal.subject, &mut stream).await
        }
        (Route::Calls(_), _) => Reply::method_not_allowed("POST"),
        (Route::Call(tg, id), &Method::GET) => get_call(shared, tg, id),
        (Route::Call(tg, id), _) => match get_call(shared, tg, id) {
            r if r.status == StatusCode::OK => Reply::method_not_allowed("GET, POST"),
            r => r,
        },
        (Route::Events(tg, id), &Method::GET) => {
            return events_get(shared, &conn, tg, id, stream).await
        }
        (Route::Events(tg, id), &Method::PUT) => {
            return events_put(shared, &conn, tg, id, stream).await
        }
        (Route::Events(_, _), _) => Reply::method_not_allowed("GET, PUT"),
        (Route::Media(tg, id), &Method::CONNECT) => {
            return media_connect(shared, conn, &req, tg, id, stream).await
        }
        (Route::Media(_, _), _) => Reply::method_not_allowed("CONNECT"),
        (Route::NotFound, _) => Reply::not_found("no such resource"),
    };
    send_reply(shared, &mut stream, reply).await
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

async fn post_handler(shared: &Shared, tg: &str, stream: &mut Stream) -> Reply {
    if shared.tg(tg).is_none() {
        return Reply::not_found("no such trunk group");
    }
    let body = match read_body(stream).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut handler: Handler = match serde_json::from_slice(&body) {
        Ok(h) => h,
        Err(e) => return Reply::bad_request(format!("handler: {e}")),
    };
    if !is_segment(&handler.handler_id) {
        return Reply::bad_request("handler-id must be a non-empty URI path segment");
    }
    let uri = format!("{}/handlers/{}", shared.tg_uri(tg), handler.handler_id);
    handler.uri = Some(uri.clone());
    {
        let mut st = shared.state();
        let list = st.handlers.entry(tg.to_owned()).or_default();
        if let Some(h) = list.iter_mut().find(|h| h.handler_id == handler.handler_id) {
            *h = handler.clone();
        } else if list.len() >= MAX_HANDLERS_PER_TG {
            return Reply::problem(&Problem::new(
                429,
                "Too Many Requests",
                "handler table of this trunk group is full",
            ))
            .with(header::RETRY_AFTER, "60");
        } else {
            list.push(handler.clone());
        }
    }
    Reply::json(StatusCode::CREATED, &handler).with(header::LOCATION, uri)
}

async fn post_call(shared: &Shared, tg: &str, principal: String, stream: &mut Stream) -> Reply {
    if shared.tg(tg).is_none() {
        return Reply::not_found("no such trunk group");
    }
    let body = match read_body(stream).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let request: CallRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return Reply::bad_request(format!("call request: {e}")),
    };
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
        Ok(Ok(Ok(description))) => {
            let uri = description.uri.clone();
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

async fn events_get(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    tg: &str,
    id: &str,
    mut stream: Stream,
) {
    let (tx, mut rx) = mpsc::channel(SUBSCRIBER_BACKLOG);
    // Subscribing and reading the last state under one lock: no event is missed or doubled.
    let sub = {
        let mut st = shared.state();
        match st.calls.get_mut(id).filter(|e| e.tg == tg) {
            None => Err(Reply::not_found("no such call")),
            Some(e) => {
                // A GET whose client vanished is only noticed at the next write, so when the
                // table is full the oldest subscriber is the likeliest dead one: close it.
                if e.subscribers.len() >= MAX_SUBSCRIBERS {
                    e.subscribers.remove(0);
                }
                e.subscribers.push(tx);
                e.open_streams += 1;
                Ok((e.key, e.last_state.clone()))
            }
        }
    };
    let (key, last) = match sub {
        Ok(x) => x,
        Err(reply) => {
            // Ended moments ago: give the final event and close, instead of a bare 404 that
            // would leave the client not knowing how the call ended.
            if let Some(last) = shared.final_event(tg, id) {
                if send_head(shared, &mut stream, Reply::event_stream()).await {
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
                return;
            }
            return send_reply(shared, &mut stream, reply).await;
        }
    };
    let _ = shared
        .ctx
        .events
        .send(RiptEvent::ServerEventsOpened { call: key })
        .await;
    if send_head(shared, &mut stream, Reply::event_stream()).await {
        let mut enc = EventEncoder::new();
        let mut res = stream.send_data(EventEncoder::open()).await;
        if let (Ok(()), Some(ev)) = (&res, &last) {
            res = stream.send_data(enc.encode(ev)).await;
        }
        while res.is_ok() {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => res = stream.send_data(enc.encode(&ev)).await,
                    // The call ended (or this subscriber was cut off): close the array.
                    None => {
                        if stream.send_data(EventEncoder::close()).await.is_ok() {
                            let _ = stream.finish().await;
                        }
                        break;
                    }
                },
                // Without this a dead client would only be noticed at the next event.
                _ = conn.closed() => break,
            }
        }
    }
    shared.close_stream(id, key).await;
}

async fn events_put(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    tg: &str,
    id: &str,
    mut stream: Stream,
) {
    let Some((key, mut ended)) = shared.open_stream(tg, id) else {
        return send_reply(shared, &mut stream, Reply::not_found("no such call")).await;
    };
    let _ = shared
        .ctx
        .events
        .send(RiptEvent::ServerEventsOpened { call: key })
        .await;
    let ok = Reply {
        status: StatusCode::OK,
        headers: Vec::new(),
        body: None,
    };
    if send_head(shared, &mut stream, ok).await {
        let mut dec = EventDecoder::new();
        'read: loop {
            tokio::select! {
                chunk = stream.recv_data() => match chunk {
                    Ok(Some(mut buf)) => {
                        while buf.has_remaining() {
                            let c = buf.chunk();
                            let n = c.len();
                            dec.push(c);
                            buf.advance(n);
                        }
                        while let Some(item) = dec.next_event() {
                            match item {
                                Ok(event) => {
                                    let ev = RiptEvent::ServerEvent { call: key, event };
                                    if shared.ctx.events.send(ev).await.is_err() {
                                        break 'read;
                                    }
                                }
                                // The decoder resynchronises at the next object.
                                Err(e) => {
                                    tracing::info!(call = %key, error = %e, "undecodable event skipped");
                                }
                            }
                        }
                    }
                    Ok(None) => {
                        let _ = stream.finish().await;
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(call = %key, error = %e, "events PUT stream broke");
                        break;
                    }
                },
                _ = ended.changed() => {
                    let _ = stream.finish().await;
                    break;
                }
                _ = conn.closed() => break,
            }
        }
    }
    shared.close_stream(id, key).await;
}

async fn media_connect(
    shared: &Arc<Shared>,
    conn: quinn::Connection,
    req: &Request<()>,
    tg: &str,
    id: &str,
    mut stream: Stream,
) {
    // Extended CONNECT with `:protocol webtransport` (browsers) or plain CONNECT (gateways).
    if let Some(p) = req.extensions().get::<h3::ext::Protocol>() {
        if *p != h3::ext::Protocol::WEB_TRANSPORT {
            let reply = Reply::bad_request(format!("unsupported :protocol {}", p.as_str()));
            return send_reply(shared, &mut stream, reply).await;
        }
    }
    let found = {
        let st = shared.state();
        st.calls
            .get(id)
            .filter(|e| e.tg == tg)
            .map(|e| (e.key, e.ended.subscribe()))
    };
    let Some((key, mut ended)) = found else {
        return send_reply(shared, &mut stream, Reply::not_found("no such call")).await;
    };
    let ok = Reply {
        status: StatusCode::OK,
        headers: vec![(
            header::HeaderName::from_static("sec-webtransport-http3-draft"),
            "draft02".into(),
        )],
        body: None,
    };
    if !send_head(shared, &mut stream, ok).await {
        return;
    }
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
                let _ = stream.finish().await;
                break;
            }
            _ = conn.closed() => break,
        }
    }
    shared.ctx.media.unbind_quic_stream(key, &conn, stream_id);
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

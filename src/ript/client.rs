//! The HTTP/3 client role: we place calls on RIPT peers, and take the calls a peer offers to
//! a handler we registered there (protocol.md §2.7).
//!
//! Each peer gets ONE QUIC/h3 connection that every call to it shares (datagrams of all calls
//! are told apart by Quarter Stream ID). It is opened on first use and re-opened when it dies;
//! callers that arrive while it is being opened wait on the same attempt (a per-peer async
//! mutex). The command loop only touches maps and spawns: every network step of a call runs in
//! a task of that call, so one slow call never delays another.

use super::events::{EventDecoder, EventEncoder};
use super::h3util::{append_limited, reason_from_body, MAX_BODY, RIPT_PREFIX};
use super::model::{CallDescription, CallRequest, CallTake, Event, Handler};
use super::{RiptCmd, RiptEvent};
use crate::media::MediaHub;
use crate::metrics::{AnswerHold, Metrics};
use crate::CallKey;
use bytes::{Buf, Bytes, BytesMut};
use http::{header, Method, Request, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle};

/// Bound on establishing a peer connection (QUIC handshake plus HTTP/3 SETTINGS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the peer's answer to `POST {TG}/calls`; the engine has its own call timers too.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Events queued toward one call's PUT stream.
const PUT_BACKLOG: usize = 256;
/// First wait before registering the handler again or re-opening its events stream; it
/// doubles after each failure up to [`HANDLER_BACKOFF_MAX`].
const HANDLER_BACKOFF_MIN: Duration = Duration::from_millis(100);
const HANDLER_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A handler stream that stayed open this long restarts the backoff: a stream that breaks
/// right after every open must not be re-opened ten times a second.
const HANDLER_STABLE: Duration = Duration::from_secs(10);
/// The server pings handler streams every 15 s: three missed pings mean the stream is dead
/// even when QUIC has not noticed (a middlebox that dropped the flow).
const HANDLER_IDLE: Duration = Duration::from_secs(45);
/// Longest an answer (or early media) from the peer waits for the call's media stream to be
/// bound before it is passed on anyway. The SIP caller starts talking at our 200 OK: before the
/// binding, its packets could only be held briefly or lost.
const ANSWER_HOLD: Duration = Duration::from_secs(2);

type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;
type Stream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// A RIPT peer as the client driver needs it (resolved from `[[ript_peer]]`).
#[derive(Clone)]
pub struct PeerRuntime {
    pub name: String,
    pub addr: SocketAddr,
    /// TLS server name, also used as the `:authority` host.
    pub server_name: String,
    /// Trunk group to call on the peer.
    pub tg: String,
    pub token: String,
    pub client_config: quinn::ClientConfig,
}

/// Everything the client needs from the gateway. `peers` is indexed like `config.ript_peers`.
pub struct ClientCtx {
    pub peers: Vec<PeerRuntime>,
    pub media: MediaHub,
    pub metrics: Arc<Metrics>,
    pub events: mpsc::Sender<RiptEvent>,
}

/// The running client: its command channel.
pub struct ClientHandle {
    cmds: mpsc::UnboundedSender<RiptCmd>,
    task: JoinHandle<()>,
    client: Arc<Client>,
}

impl ClientHandle {
    /// Where the engine sends client-role commands (`CreateCall`, `TakeCall`, `ClientSend`,
    /// `ClientReopenEvents`, `ClientClose`, `RegisterHandler`).
    pub fn cmd_sender(&self) -> mpsc::UnboundedSender<RiptCmd> {
        self.cmds.clone()
    }

    /// Stops taking commands. Running call tasks end with their streams; handler streams stop.
    pub fn abort(&self) {
        self.task.abort();
        for (_, h) in self.client.handlers().drain() {
            h.abort();
        }
    }

    /// One complete `PUT {uri}/events` carrying `events`, for a call we have not taken: how a
    /// device declines a call offered to its handler (protocol.md §2.7 step 5). The error is
    /// `(status, reason)`, status 0 for transport failures.
    pub async fn put_events_once(
        &self,
        peer: usize,
        uri: &str,
        events: &[Event],
    ) -> Result<(), (u16, String)> {
        if peer >= self.client.ctx.peers.len() {
            return Err((0, format!("no RIPT peer #{peer}")));
        }
        let path = ript_path(uri).ok_or_else(|| (0, format!("unusable call URI {uri:?}")))?;
        tokio::time::timeout(
            CREATE_TIMEOUT,
            put_once(&self.client, peer, &format!("{path}/events"), events),
        )
        .await
        .unwrap_or_else(|_| Err((0, "timed out waiting for the peer".into())))
    }
}

/// Starts the client driver; `endpoint` is used for outgoing connections only.
pub fn spawn_client(endpoint: quinn::Endpoint, ctx: ClientCtx) -> ClientHandle {
    let peers = ctx
        .peers
        .iter()
        .map(|_| tokio::sync::Mutex::new(None))
        .collect();
    let client = Arc::new(Client {
        ctx,
        endpoint,
        peers,
        calls: Mutex::new(HashMap::new()),
        handlers: Mutex::new(HashMap::new()),
    });
    let (cmds, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run_commands(client.clone(), rx));
    ClientHandle { cmds, task, client }
}

struct Client {
    ctx: ClientCtx,
    endpoint: quinn::Endpoint,
    peers: Vec<tokio::sync::Mutex<Option<Live>>>,
    calls: Mutex<HashMap<CallKey, ClientCall>>,
    /// The task keeping our handler registered on each peer (one handler per peer).
    handlers: Mutex<HashMap<usize, AbortHandle>>,
}

/// A usable connection to a peer.
#[derive(Clone)]
struct Live {
    conn: quinn::Connection,
    send: SendRequest,
}

#[derive(Default)]
struct ClientCall {
    peer: usize,
    /// Path of the call resource, once the peer created it.
    path: Option<String>,
    create: Option<AbortHandle>,
    get: Option<AbortHandle>,
    /// Identifies the current GET task, so that an old one ending is not reported as a loss.
    get_gen: u64,
    /// Boxed: the channel's first block holds 32 of them for the call's life.
    put: Option<mpsc::Sender<Box<Event>>>,
    media: Option<AbortHandle>,
    /// Fires once the current media stream is bound; its sender goes away with the stream's
    /// task, so a stream that failed ends any wait on it. Taken by the first event that waits
    /// on it (one oneshot per stream: nothing stays allocated once the call is answered).
    media_bound: Option<oneshot::Receiver<()>>,
}

impl ClientCall {
    /// Opens the call's media stream (again) in a task of its own.
    fn spawn_media(&mut self, client: &Arc<Client>, target: Target) {
        let (tx, rx) = oneshot::channel();
        self.media_bound = Some(rx);
        self.media = Some(tokio::spawn(run_media(client.clone(), target, tx)).abort_handle());
    }

    fn abort_all(&mut self) {
        for h in [self.create.take(), self.get.take(), self.media.take()]
            .into_iter()
            .flatten()
        {
            h.abort();
        }
        // Dropping the sender lets the PUT writer close the array with `]` and finish.
        self.put = None;
    }
}

/// What a call task needs to reach its call resource.
#[derive(Clone)]
struct Target {
    call: CallKey,
    peer: usize,
    path: String,
}

impl Client {
    fn calls(&self) -> MutexGuard<'_, HashMap<CallKey, ClientCall>> {
        // Plain data; a panic in one call task must not stop the others.
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handlers(&self) -> MutexGuard<'_, HashMap<usize, AbortHandle>> {
        self.handlers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn authority(&self, peer: usize) -> String {
        let p = &self.ctx.peers[peer];
        match p.server_name.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{}]:{}", p.server_name, p.addr.port()),
            Err(_) => format!("{}:{}", p.server_name, p.addr.port()),
        }
    }

    fn request(&self, peer: usize, method: Method, path: &str) -> Result<Request<()>, String> {
        let p = &self.ctx.peers[peer];
        Request::builder()
            .method(method)
            .uri(format!("https://{}{}", self.authority(peer), path))
            .header(header::AUTHORIZATION, format!("Bearer {}", p.token))
            .body(())
            .map_err(|e| format!("request: {e}"))
    }

    /// The peer's shared connection, opening it if there is none or it died.
    async fn connection(&self, peer: usize) -> Result<Live, String> {
        let slot = self.peers.get(peer).ok_or("no such peer")?;
        let mut slot = slot.lock().await;
        if let Some(live) = slot.as_ref() {
            if live.conn.close_reason().is_none() {
                return Ok(live.clone());
            }
        }
        *slot = None;
        let p = &self.ctx.peers[peer];
        let connecting = self
            .endpoint
            .connect_with(p.client_config.clone(), p.addr, &p.server_name)
            .map_err(|e| format!("connect to {}: {e}", p.name))?;
        let setup = async {
            let conn = connecting.await.map_err(|e| e.to_string())?;
            let (driver, send) = h3::client::builder()
                .enable_datagram(true)
                .enable_extended_connect(true)
                .build::<_, _, Bytes>(h3_quinn::Connection::new(conn.clone()))
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((conn, driver, send))
        };
        let (conn, mut driver, send) = tokio::time::timeout(CONNECT_TIMEOUT, Box::pin(setup))
            .await
            .map_err(|_| format!("connect to {}: timed out", p.name))?
            .map_err(|e| format!("connect to {}: {e}", p.name))?;
        let name = p.name.clone();
        // The h3 connection must be polled for its control stream to be served. Datagrams are
        // read on the raw quinn connection, so no h3 datagram handle is taken before this.
        tokio::spawn(async move {
            let e = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
            tracing::debug!(peer = %name, error = %e, "HTTP/3 connection closed");
        });
        tokio::spawn(self.ctx.media.clone().run_quic_reader(conn.clone()));
        tracing::info!(peer = %p.name, addr = %p.addr, "connected");
        let live = Live { conn, send };
        *slot = Some(live.clone());
        Ok(live)
    }

    /// Why `peer` cannot be used: not one of the configured peers.
    fn unknown_peer(&self, peer: usize) -> Option<String> {
        (peer >= self.ctx.peers.len()).then(|| format!("no RIPT peer #{peer}"))
    }

    async fn emit(&self, ev: RiptEvent) {
        if self.ctx.events.send(ev).await.is_err() {
            tracing::debug!("engine gone; event dropped");
        }
    }
}

async fn run_commands(client: Arc<Client>, mut rx: mpsc::UnboundedReceiver<RiptCmd>) {
    while let Some(cmd) = rx.recv().await {
        match cmd {
            RiptCmd::CreateCall {
                call,
                peer,
                request,
            } => start_call(&client, call, peer, Setup::Create(request)).await,
            RiptCmd::TakeCall {
                call,
                peer,
                uri,
                handler,
            } => start_call(&client, call, peer, Setup::Take { uri, handler }).await,
            RiptCmd::ClientSend { call, event } => client_send(&client, call, event),
            RiptCmd::ClientReopenEvents { call } => reopen(&client, call),
            RiptCmd::ClientClose { call } => {
                if let Some(mut c) = client.calls().remove(&call) {
                    c.abort_all();
                }
                client.ctx.media.unbind_quic(call);
            }
            RiptCmd::RegisterHandler { peer, handler } => {
                register_handler(&client, peer, handler).await
            }
            other => tracing::warn!(?other, "server-role command sent to the client driver"),
        }
    }
}

/// How a call of ours comes to exist on the peer.
enum Setup {
    /// `POST {TG}/calls`: we place the call (`201`).
    Create(CallRequest),
    /// `POST {uri}` with our handler's URI: we take a call the peer offered to it (`200`).
    Take { uri: String, handler: String },
}

async fn start_call(client: &Arc<Client>, call: CallKey, peer: usize, setup: Setup) {
    if let Some(reason) = client.unknown_peer(peer) {
        return client
            .emit(RiptEvent::CreateFailed {
                call,
                status: 0,
                reason,
            })
            .await;
    }
    let mut calls = client.calls();
    if calls.contains_key(&call) {
        tracing::warn!(%call, "CreateCall/TakeCall for a call that already exists");
        return;
    }
    let task = tokio::spawn(run_setup(client.clone(), call, peer, setup));
    calls.insert(
        call,
        ClientCall {
            peer,
            create: Some(task.abort_handle()),
            ..ClientCall::default()
        },
    );
}

/// Creates or takes the call, then opens its events streams and media: from the `2xx` on, a
/// taken call is handled exactly like one we created.
async fn run_setup(client: Arc<Client>, call: CallKey, peer: usize, setup: Setup) {
    let request = async {
        match &setup {
            Setup::Create(request) => post_call(&client, peer, request).await,
            Setup::Take { uri, handler } => take_call(&client, peer, uri, handler).await,
        }
    };
    // Only the path of the returned URI is used: requests stay on the peer we authenticated.
    let outcome = tokio::time::timeout(CREATE_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| Err((0, "timed out waiting for the peer".into())))
        .and_then(|d| match ript_path(&d.uri) {
            Some(path) => Ok((d, path)),
            None => Err((0, format!("unusable call URI {:?}", d.uri))),
        });
    let (description, path) = match outcome {
        Ok(x) => x,
        Err((status, reason)) => {
            tracing::info!(%call, status, %reason, "call creation failed");
            client.calls().remove(&call);
            return client
                .emit(RiptEvent::CreateFailed {
                    call,
                    status,
                    reason,
                })
                .await;
        }
    };
    let (put_tx, put_rx) = mpsc::channel(PUT_BACKLOG);
    {
        let mut calls = client.calls();
        let Some(c) = calls.get_mut(&call) else {
            // ClientClose arrived while the POST was in flight.
            return;
        };
        c.path = Some(path.clone());
        c.create = None;
        // In place before CallCreated, so a ClientSend right after it has somewhere to go.
        c.put = Some(put_tx);
    }
    client
        .emit(RiptEvent::CallCreated { call, description })
        .await;
    let target = Target { call, peer, path };
    let mut calls = client.calls();
    let Some(c) = calls.get_mut(&call) else {
        return;
    };
    c.get_gen += 1;
    c.get = Some(spawn_get(&client, &target, c.get_gen));
    tokio::spawn(run_put(client.clone(), target.clone(), put_rx));
    c.spawn_media(&client, target);
}

/// The path of an absolute or path-only RIPT URI, without a trailing `/`; `None` when it is not
/// under [`RIPT_PREFIX`]. Only paths are ever sent, so a URI naming another host cannot
/// redirect our token there.
fn ript_path(uri: &str) -> Option<String> {
    match uri.parse::<http::Uri>() {
        Ok(u) if u.path().starts_with(RIPT_PREFIX) => {
            Some(u.path().trim_end_matches('/').to_owned())
        }
        _ => None,
    }
}

/// `POST {TG}/calls`; the error is `(status, reason)` with status 0 for transport failures.
async fn post_call(
    client: &Client,
    peer: usize,
    request: &CallRequest,
) -> Result<CallDescription, (u16, String)> {
    let path = format!(
        "{RIPT_PREFIX}providertgs/{}/calls",
        client.ctx.peers[peer].tg
    );
    let (_, body) = post_json(client, peer, &path, request, StatusCode::CREATED).await?;
    serde_json::from_slice(&body).map_err(|e| (0, format!("call description: {e}")))
}

/// `POST {call}` with `{"handler": handler}` (protocol.md §2.7 step 3).
async fn take_call(
    client: &Client,
    peer: usize,
    uri: &str,
    handler: &str,
) -> Result<CallDescription, (u16, String)> {
    let path = ript_path(uri).ok_or_else(|| (0, format!("unusable call URI {uri:?}")))?;
    let take = CallTake {
        handler: handler.to_owned(),
    };
    let (_, body) = post_json(client, peer, &path, &take, StatusCode::OK).await?;
    serde_json::from_slice(&body).map_err(|e| (0, format!("call description: {e}")))
}

/// A JSON `POST` on the peer's shared connection that must answer `expect`: its response head
/// and body. The error is `(status, reason)` with status 0 for transport failures.
async fn post_json<T: serde::Serialize>(
    client: &Client,
    peer: usize,
    path: &str,
    body: &T,
    expect: StatusCode,
) -> Result<(http::Response<()>, Bytes), (u16, String)> {
    let body = serde_json::to_vec(body).map_err(|e| (0, e.to_string()))?;
    let (resp, mut s) = exchange(client, peer, Method::POST, path, Some(Bytes::from(body))).await?;
    let status = resp.status();
    let body = read_body(&mut s).await.map_err(|e| (status.as_u16(), e))?;
    if status != expect {
        return Err((status.as_u16(), reason_from_body(status.as_u16(), &body)));
    }
    Ok((resp, body))
}

/// A complete events array in one `PUT`: `[`, the events, `]`, then the answer.
async fn put_once(
    client: &Client,
    peer: usize,
    path: &str,
    events: &[Event],
) -> Result<(), (u16, String)> {
    let mut body = BytesMut::from(&EventEncoder::open()[..]);
    let mut enc = EventEncoder::new();
    for ev in events {
        body.extend_from_slice(&enc.encode(ev));
    }
    body.extend_from_slice(&EventEncoder::close());
    let (resp, mut s) = exchange(client, peer, Method::PUT, path, Some(body.freeze())).await?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = read_body(&mut s).await.unwrap_or_default();
    Err((status.as_u16(), reason_from_body(status.as_u16(), &body)))
}

/// Sends a request, with a complete JSON body when one is given, and waits for the response
/// head. The error is `(0, reason)`: the request could not be made.
async fn exchange(
    client: &Client,
    peer: usize,
    method: Method,
    path: &str,
    json: Option<Bytes>,
) -> Result<(http::Response<()>, Stream), (u16, String)> {
    let transport = |e: String| (0u16, e);
    let live = Box::pin(client.connection(peer)).await.map_err(transport)?;
    let mut req = client.request(peer, method, path).map_err(transport)?;
    if json.is_some() {
        req.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
    }
    let mut send = live.send.clone();
    let mut s = Box::pin(send.send_request(req))
        .await
        .map_err(|e| transport(e.to_string()))?;
    if let Some(body) = json {
        s.send_data(body)
            .await
            .map_err(|e| transport(e.to_string()))?;
    }
    s.finish().await.map_err(|e| transport(e.to_string()))?;
    let resp = s
        .recv_response()
        .await
        .map_err(|e| transport(e.to_string()))?;
    Ok((resp, s))
}

async fn read_body(s: &mut Stream) -> Result<Bytes, String> {
    let mut body = BytesMut::new();
    loop {
        match s.recv_data().await {
            Ok(Some(chunk)) => {
                if !append_limited(&mut body, chunk, MAX_BODY) {
                    return Err(format!("response body larger than {MAX_BODY} bytes"));
                }
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Whether the driver stops keeping a handler registered after a failure with `status`: a 4xx
/// other than 408/429 will not change by retrying (bad token, conflict, unknown TG, removed).
pub fn handler_gives_up(status: u16) -> bool {
    (400..500).contains(&status) && status != 408 && status != 429
}

/// Waits between handler (re)registrations and stream re-opens: doubling, capped.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            next: HANDLER_BACKOFF_MIN,
        }
    }

    fn next_wait(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(HANDLER_BACKOFF_MAX);
        d
    }

    fn reset(&mut self) {
        self.next = HANDLER_BACKOFF_MIN;
    }
}

async fn register_handler(client: &Arc<Client>, peer: usize, handler: Handler) {
    if let Some(reason) = client.unknown_peer(peer) {
        return client
            .emit(RiptEvent::HandlerFailed {
                peer,
                status: 0,
                reason,
            })
            .await;
    }
    let task = tokio::spawn(run_handler(client.clone(), peer, handler));
    // A new registration for the peer replaces the old one (and its stream).
    if let Some(old) = client.handlers().insert(peer, task.abort_handle()) {
        old.abort();
    }
}

/// How one handler events stream ended.
#[derive(Debug)]
enum HandlerStreamEnd {
    /// The GET was refused (status) or could not be made (status 0).
    Refused(u16, String),
    /// It was open for `open_for`, then broke.
    Broken { open_for: Duration, reason: String },
    /// The peer closed the array: the handler was removed.
    Removed,
}

/// Keeps the handler registered on the peer and its events stream open, for as long as the
/// task lives. `HandlerRegistered` is sent each time the stream (re)opens, so the engine
/// learns that the handler is reachable again after a `HandlerFailed`. A `404` on re-opening
/// the stream means the peer forgot the handler (handlers live in memory, so a restart loses
/// them): it is registered again. A stream the peer closes with `]` means the handler was
/// removed (`DELETE`, protocol.md §2.3): that is final.
async fn run_handler(client: Arc<Client>, peer: usize, handler: Handler) {
    let mut backoff = Backoff::new();
    let mut registered: Option<(String, String)> = None;
    loop {
        let (uri, path) = match registered.clone() {
            Some(r) => r,
            None => match post_handler(&client, peer, &handler).await {
                Ok(r) => {
                    registered = Some(r.clone());
                    r
                }
                Err((status, reason)) => {
                    tracing::info!(peer, status, %reason, "handler registration failed");
                    if handler_failed(&client, peer, status, reason).await {
                        return;
                    }
                    tokio::time::sleep(backoff.next_wait()).await;
                    continue;
                }
            },
        };
        match handler_stream(&client, peer, &uri, &path).await {
            HandlerStreamEnd::Refused(404, _) => {
                tracing::info!(peer, %uri, "the peer forgot our handler; registering it again");
                registered = None;
            }
            HandlerStreamEnd::Refused(status, reason) => {
                tracing::info!(peer, status, %reason, "handler events stream refused");
                if handler_failed(&client, peer, status, reason).await {
                    return;
                }
            }
            HandlerStreamEnd::Broken { open_for, reason } => {
                tracing::info!(peer, %reason, "handler events stream broke; re-opening");
                if open_for >= HANDLER_STABLE {
                    backoff.reset();
                }
            }
            HandlerStreamEnd::Removed => {
                tracing::info!(peer, %uri, "handler removed on the peer");
                let reason = "the handler was removed".to_string();
                handler_failed(&client, peer, 404, reason).await;
                return;
            }
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

/// Tells the engine that registering the handler or opening its stream failed; `true` when
/// retrying is pointless.
async fn handler_failed(client: &Client, peer: usize, status: u16, reason: String) -> bool {
    client
        .emit(RiptEvent::HandlerFailed {
            peer,
            status,
            reason,
        })
        .await;
    handler_gives_up(status)
}

/// `POST {TG}/handlers`: the handler's URI (from the echoed body, else `Location`) and path.
async fn post_handler(
    client: &Client,
    peer: usize,
    handler: &Handler,
) -> Result<(String, String), (u16, String)> {
    let path = format!(
        "{RIPT_PREFIX}providertgs/{}/handlers",
        client.ctx.peers[peer].tg
    );
    let (resp, body) = post_json(client, peer, &path, handler, StatusCode::CREATED).await?;
    let uri = serde_json::from_slice::<Handler>(&body)
        .ok()
        .and_then(|h| h.uri)
        .or_else(|| {
            resp.headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .ok_or_else(|| (0, "the peer gave no handler URI".to_string()))?;
    let path = ript_path(&uri).ok_or_else(|| (0, format!("unusable handler URI {uri:?}")))?;
    Ok((uri, path))
}

/// Reads `GET {handler}/events` until it ends, passing every event to the engine.
async fn handler_stream(client: &Client, peer: usize, uri: &str, path: &str) -> HandlerStreamEnd {
    let mut s = match open_events(client, peer, &format!("{path}/events")).await {
        Ok(s) => s,
        Err((status, reason)) => return HandlerStreamEnd::Refused(status, reason),
    };
    let opened = tokio::time::Instant::now();
    client
        .emit(RiptEvent::HandlerRegistered {
            peer,
            uri: uri.to_owned(),
        })
        .await;
    let mut dec = EventDecoder::new();
    let reason = loop {
        let chunk = match tokio::time::timeout(HANDLER_IDLE, recv_events(&mut s, &mut dec)).await {
            Ok(Ok(Some(events))) => events,
            Ok(Ok(None)) => break "stream ended".to_string(),
            Ok(Err(e)) => break e,
            Err(_) => break format!("nothing received for {} s", HANDLER_IDLE.as_secs()),
        };
        for event in chunk {
            client.emit(RiptEvent::HandlerEvent { peer, event }).await;
        }
        if dec.finished() {
            return HandlerStreamEnd::Removed;
        }
    };
    HandlerStreamEnd::Broken {
        open_for: opened.elapsed(),
        reason,
    }
}

fn client_send(client: &Arc<Client>, call: CallKey, event: Event) {
    let mut calls = client.calls();
    let Some(c) = calls.get_mut(&call) else {
        tracing::debug!(%call, "ClientSend for an unknown call");
        return;
    };
    let Some(path) = c.path.clone() else {
        tracing::warn!(%call, "ClientSend before the call was created; event dropped");
        return;
    };
    let event = match c.put.as_ref() {
        Some(tx) => match tx.try_send(Box::new(event)) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%call, "events PUT backlog full; event dropped");
                return;
            }
            Err(mpsc::error::TrySendError::Closed(ev)) => ev,
        },
        None => Box::new(event),
    };
    // The PUT stream broke: open a new one, starting with this event.
    let (tx, rx) = mpsc::channel(PUT_BACKLOG);
    let _ = tx.try_send(event);
    c.put = Some(tx);
    let target = Target {
        call,
        peer: c.peer,
        path,
    };
    tokio::spawn(run_put(client.clone(), target, rx));
}

fn reopen(client: &Arc<Client>, call: CallKey) {
    let mut calls = client.calls();
    let Some(c) = calls.get_mut(&call) else {
        return;
    };
    let Some(path) = c.path.clone() else {
        return;
    };
    let target = Target {
        call,
        peer: c.peer,
        path,
    };
    if let Some(old) = c.get.take() {
        old.abort();
    }
    c.get_gen += 1;
    c.get = Some(spawn_get(client, &target, c.get_gen));
    if c.put.as_ref().is_none_or(|tx| tx.is_closed()) {
        let (tx, rx) = mpsc::channel(PUT_BACKLOG);
        c.put = Some(tx);
        tokio::spawn(run_put(client.clone(), target.clone(), rx));
    }
    // A connection that died took the media stream with it; bind again on the new one.
    if c.media.as_ref().is_none_or(|m| m.is_finished()) {
        c.spawn_media(client, target);
    }
}

fn spawn_get(client: &Arc<Client>, target: &Target, gen: u64) -> AbortHandle {
    let client = client.clone();
    let target = target.clone();
    tokio::spawn(async move {
        if let Err(e) = Box::pin(run_get(&client, &target)).await {
            tracing::info!(call = %target.call, error = %e, "events GET ended");
        }
        // Only the current GET of a live call counts; ClientClose and reopen retire old ones.
        let current = client
            .calls()
            .get(&target.call)
            .is_some_and(|c| c.get_gen == gen);
        if current {
            let lost = RiptEvent::ClientEventsLost { call: target.call };
            Box::pin(client.emit(lost)).await;
        }
    })
    .abort_handle()
}

/// Reads `GET {call}/events` until it ends; every decoded event goes to the engine. Opening and
/// handing events on run in boxes of their own: this future lasts as long as the call and holds
/// only the stream and the decoder while it waits.
async fn run_get(client: &Client, t: &Target) -> Result<(), String> {
    let path = format!("{}/events", t.path);
    let mut s = Box::pin(open_events(client, t.peer, &path))
        .await
        .map_err(|(_, reason)| reason)?;
    drop(path);
    let mut dec = EventDecoder::new();
    while let Some(events) = recv_events(&mut s, &mut dec).await? {
        Box::pin(emit_events(client, t.call, events)).await;
    }
    Ok(())
}

/// Hands the events an events stream brought to the engine, in order. An event that lets the
/// SIP caller talk (an answer, or early media) waits for the call's media stream first.
async fn emit_events(client: &Client, call: CallKey, events: Vec<Event>) {
    for event in events {
        if opens_media(&event) {
            hold_for_media(client, call).await;
        }
        client.emit(RiptEvent::ClientEvent { call, event }).await;
    }
}

/// Whether `event` makes the engine answer the SIP caller or open early media toward it.
fn opens_media(event: &Event) -> bool {
    event.name == super::model::EventName::Answered || event.media == Some(true)
}

/// Waits up to [`ANSWER_HOLD`] for the call's media stream to be bound. Under load the peer's
/// answer can overtake the `200` of our media `CONNECT`; passed on at once, it would let the
/// caller talk into a call whose packets have nowhere to go yet.
async fn hold_for_media(client: &Client, call: CallKey) {
    let Some(rx) = client
        .calls()
        .get_mut(&call)
        .and_then(|c| c.media_bound.take())
    else {
        return;
    };
    if let Some(outcome) = wait_bound(rx, ANSWER_HOLD).await {
        client.ctx.metrics.answer_held(outcome);
        match outcome {
            AnswerHold::Bound => {
                tracing::debug!(call = %call, "answer held until the media stream was bound")
            }
            AnswerHold::Failed => {
                tracing::info!(call = %call, "answer passed on without a media stream (it failed)")
            }
            AnswerHold::Timeout => tracing::warn!(
                call = %call,
                hold_ms = ANSWER_HOLD.as_millis() as u64,
                "answer passed on before the media stream was bound"
            ),
        }
    }
}

/// `None` if nothing was held: the stream was bound already, or had already failed.
/// Otherwise how the wait ended.
async fn wait_bound(mut bound: oneshot::Receiver<()>, limit: Duration) -> Option<AnswerHold> {
    match bound.try_recv() {
        Ok(()) | Err(oneshot::error::TryRecvError::Closed) => return None,
        Err(oneshot::error::TryRecvError::Empty) => {}
    }
    Some(match tokio::time::timeout(limit, bound).await {
        Ok(Ok(())) => AnswerHold::Bound,
        Ok(Err(_)) => AnswerHold::Failed,
        Err(_) => AnswerHold::Timeout,
    })
}

/// Opens an events stream (`GET {path}`) and waits for its `200`. The error is
/// `(status, reason)`, status 0 when the request could not be made.
async fn open_events(client: &Client, peer: usize, path: &str) -> Result<Stream, (u16, String)> {
    let (resp, mut s) = exchange(client, peer, Method::GET, path, None).await?;
    let status = resp.status().as_u16();
    if resp.status() != StatusCode::OK {
        let body = read_body(&mut s).await.unwrap_or_default();
        return Err((status, reason_from_body(status, &body)));
    }
    Ok(s)
}

/// The events decoded from the next chunk of an events stream; `None` once the stream ended.
/// Objects that do not parse are logged and skipped (protocol.md §3).
async fn recv_events(s: &mut Stream, dec: &mut EventDecoder) -> Result<Option<Vec<Event>>, String> {
    let Some(mut buf) = s.recv_data().await.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    while buf.has_remaining() {
        let c = buf.chunk();
        let n = c.len();
        dec.push(c);
        buf.advance(n);
    }
    let mut events = Vec::new();
    while let Some(item) = dec.next_event() {
        match item {
            Ok(event) => events.push(event),
            Err(e) => tracing::info!(error = %e, "undecodable event skipped"),
        }
    }
    Ok(Some(events))
}

/// Owns `PUT {call}/events`: writes each queued event; closes the array when the queue closes.
async fn run_put(client: Arc<Client>, t: Target, mut rx: mpsc::Receiver<Box<Event>>) {
    if let Err(e) = put_events(&client, &t, &mut rx).await {
        tracing::info!(call = %t.call, error = %e, "events PUT ended");
    }
}

async fn put_events(
    client: &Client,
    t: &Target,
    rx: &mut mpsc::Receiver<Box<Event>>,
) -> Result<(), String> {
    // Opening and each send run in boxes of their own: this future lasts as long as the call.
    let (mut tx, mut resp_rx) = Box::pin(open_put(client, t)).await?;
    let mut enc = EventEncoder::new();
    let resp = resp_rx.recv_response();
    tokio::pin!(resp);
    let mut answered = false;
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => {
                    let bytes = enc.encode(&ev);
                    drop(ev);
                    Box::pin(tx.send_data(bytes)).await.map_err(|e| e.to_string())?;
                }
                None => {
                    let close = tx.send_data(EventEncoder::close());
                    Box::pin(close).await.map_err(|e| e.to_string())?;
                    return Box::pin(tx.finish()).await.map_err(|e| e.to_string());
                }
            },
            r = &mut resp, if !answered => {
                answered = true;
                let r = r.map_err(|e| e.to_string())?;
                if r.status() != StatusCode::OK {
                    return Err(format!("PUT refused with {}", r.status()));
                }
            }
        }
    }
}

/// Sends `PUT {call}/events` and the array's opening `[`; gives the stream's two halves.
async fn open_put(
    client: &Client,
    t: &Target,
) -> Result<
    (
        h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>,
        h3::client::RequestStream<h3_quinn::RecvStream, Bytes>,
    ),
    String,
> {
    let live = client.connection(t.peer).await?;
    let mut req = client.request(t.peer, Method::PUT, &format!("{}/events", t.path))?;
    req.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let mut send = live.send.clone();
    let s = send.send_request(req).await.map_err(|e| e.to_string())?;
    let (mut tx, resp_rx) = s.split();
    tx.send_data(EventEncoder::open())
        .await
        .map_err(|e| e.to_string())?;
    Ok((tx, resp_rx))
}

/// Opens `CONNECT {call}/media` and binds the call's datagrams to it while it stays open;
/// `bound` fires once they are.
async fn run_media(client: Arc<Client>, t: Target, bound: oneshot::Sender<()>) {
    // Opening runs in a box of its own: this future lasts as long as the call and holds only the
    // stream while it waits.
    let (mut s, conn, stream_id) = match Box::pin(open_media(&client, &t)).await {
        Ok(x) => x,
        Err(e) => {
            tracing::info!(call = %t.call, error = %e, "media stream ended");
            return;
        }
    };
    // The answer may have stopped waiting (timed out) already.
    let _ = bound.send(());
    // Hold the stream: the binding lives exactly as long as it does.
    while let Ok(Some(_)) = s.recv_data().await {}
    client
        .ctx
        .media
        .unbind_quic_stream(t.call, &conn, stream_id);
}

/// Sends `CONNECT {call}/media`, waits for its `200` and binds the call's datagrams to the
/// stream; gives the stream, its connection and its id.
async fn open_media(
    client: &Client,
    t: &Target,
) -> Result<(Stream, quinn::Connection, u64), String> {
    let live = client.connection(t.peer).await?;
    let mut req = client.request(t.peer, Method::CONNECT, &format!("{}/media", t.path))?;
    req.extensions_mut()
        .insert(h3::ext::Protocol::WEB_TRANSPORT);
    let mut send = live.send.clone();
    let mut s = send.send_request(req).await.map_err(|e| e.to_string())?;
    let stream_id = s.id().into_inner();
    // The peer's first datagrams can overtake its `200`: route them from now on. The guard
    // takes the route back if no binding follows (refused, failed, or this task aborted because
    // the call ended meanwhile).
    let media = &client.ctx.media;
    media.route_quic(t.call, &live.conn, stream_id);
    let _route = PreRoute {
        media,
        call: t.call,
        conn: &live.conn,
        stream_id,
    };
    let resp = s.recv_response().await.map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::OK {
        return Err(format!("media CONNECT refused with {}", resp.status()));
    }
    media.bind_quic(t.call, live.conn.clone(), stream_id);
    Ok((s, live.conn.clone(), stream_id))
}

/// A route set by [`MediaHub::route_quic`] for a media CONNECT in flight: dropping it undoes
/// the route unless the call was bound to it by then.
struct PreRoute<'a> {
    media: &'a crate::media::MediaHub,
    call: CallKey,
    conn: &'a quinn::Connection,
    stream_id: u64,
}

impl Drop for PreRoute<'_> {
    fn drop(&mut self) {
        self.media
            .unroute_quic(self.call, self.conn, self.stream_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ript::model::EventName;

    #[test]
    fn answers_and_early_media_wait_for_the_media_stream() {
        assert!(opens_media(&Event::new(EventName::Answered)));
        let mut early = Event::new(EventName::Proceeding);
        early.media = Some(true);
        assert!(opens_media(&early));
        for name in [EventName::Proceeding, EventName::Alerting, EventName::Ping] {
            assert!(!opens_media(&Event::new(name.clone())), "{name:?}");
        }
    }

    /// The events reader hands the engine an answer only once the call's media stream is
    /// bound; events that do not let the caller talk are not held.
    #[tokio::test(start_paused = true)]
    async fn the_engine_gets_the_answer_once_the_media_stream_is_bound() {
        let metrics = Arc::new(Metrics::default());
        let (media_tx, _media_rx) = mpsc::unbounded_channel();
        let media = MediaHub::new(
            &crate::config::MediaConfig::default(),
            metrics.clone(),
            media_tx,
        );
        let (events, mut engine) = mpsc::channel(8);
        let client = Arc::new(Client {
            ctx: ClientCtx {
                peers: Vec::new(),
                media,
                metrics: metrics.clone(),
                events,
            },
            endpoint: quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap(),
            peers: Vec::new(),
            calls: Mutex::new(HashMap::new()),
            handlers: Mutex::new(HashMap::new()),
        });
        let call = CallKey(7);
        let (bound, rx) = oneshot::channel();
        client.calls().insert(
            call,
            ClientCall {
                media_bound: Some(rx),
                ..ClientCall::default()
            },
        );
        let c = client.clone();
        let reader = tokio::spawn(async move {
            let evs = vec![
                Event::new(EventName::Alerting),
                Event::new(EventName::Answered),
            ];
            emit_events(&c, call, evs).await;
        });
        let name = |e: RiptEvent| match e {
            RiptEvent::ClientEvent { event, .. } => event.name,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(name(engine.recv().await.unwrap()), EventName::Alerting);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            engine.try_recv().is_err(),
            "answer passed on before the binding"
        );
        bound.send(()).unwrap();
        assert_eq!(name(engine.recv().await.unwrap()), EventName::Answered);
        reader.await.unwrap();
        let held = |o: AnswerHold| {
            metrics.answers_held[o as usize].load(std::sync::atomic::Ordering::Relaxed)
        };
        assert_eq!((held(AnswerHold::Bound), held(AnswerHold::Timeout)), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_waits_for_the_binding_up_to_the_hold() {
        let hold = Duration::from_secs(2);
        // Bound before the answer came, or failed before it: nothing is held.
        let (tx, rx) = oneshot::channel();
        tx.send(()).unwrap();
        assert_eq!(wait_bound(rx, hold).await, None);
        let (tx, rx) = oneshot::channel::<()>();
        drop(tx);
        assert_eq!(wait_bound(rx, hold).await, None);

        // Bound during the wait: let through then, not at the end of the hold.
        let (tx, rx) = oneshot::channel();
        let start = tokio::time::Instant::now();
        let wait = tokio::spawn(wait_bound(rx, hold));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!wait.is_finished(), "let through before the binding");
        tx.send(()).unwrap();
        assert_eq!(wait.await.unwrap(), Some(AnswerHold::Bound));
        assert_eq!(start.elapsed(), Duration::from_millis(300));

        // The media stream failed during the wait (its task dropped the sender): no point in
        // waiting on.
        let (tx, rx) = oneshot::channel::<()>();
        let wait = tokio::spawn(wait_bound(rx, hold));
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(tx);
        assert_eq!(wait.await.unwrap(), Some(AnswerHold::Failed));

        // Never bound: let through when the hold runs out.
        let (_tx, rx) = oneshot::channel::<()>();
        let start = tokio::time::Instant::now();
        assert_eq!(wait_bound(rx, hold).await, Some(AnswerHold::Timeout));
        assert_eq!(start.elapsed(), hold);
    }

    #[test]
    fn only_ript_paths_are_used_from_uris() {
        assert_eq!(
            ript_path("https://gw.example/.well-known/ript/v1/providertgs/web/calls/b-1/")
                .as_deref(),
            Some("/.well-known/ript/v1/providertgs/web/calls/b-1")
        );
        assert_eq!(
            ript_path("/.well-known/ript/v1/providertgs/web/handlers/h").as_deref(),
            Some("/.well-known/ript/v1/providertgs/web/handlers/h")
        );
        assert_eq!(ript_path("https://evil.example/other/path"), None);
        assert_eq!(ript_path("not a uri"), None);
        assert_eq!(ript_path(""), None);
    }

    #[test]
    fn handler_retries_stop_on_lasting_client_errors_only() {
        for s in [400, 401, 403, 404, 409, 413] {
            assert!(handler_gives_up(s), "{s}");
        }
        for s in [0, 200, 408, 429, 500, 503] {
            assert!(!handler_gives_up(s), "{s}");
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new();
        let waits: Vec<u128> = (0..7).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 2000, 2000]);
        b.reset();
        assert_eq!(b.next_wait(), HANDLER_BACKOFF_MIN);
    }
}

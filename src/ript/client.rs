//! The HTTP/3 client role: we place calls on RIPT peers.
//!
//! Each peer gets ONE QUIC/h3 connection that every call to it shares (datagrams of all calls
//! are told apart by Quarter Stream ID). It is opened on first use and re-opened when it dies;
//! callers that arrive while it is being opened wait on the same attempt (a per-peer async
//! mutex). The command loop only touches maps and spawns: every network step of a call runs in
//! a task of that call, so one slow call never delays another.

use super::events::{EventDecoder, EventEncoder};
use super::h3util::{append_limited, reason_from_body, MAX_BODY, RIPT_PREFIX};
use super::model::{CallDescription, CallRequest, Event};
use super::{RiptCmd, RiptEvent};
use crate::media::MediaHub;
use crate::metrics::Metrics;
use crate::CallKey;
use bytes::{Buf, Bytes, BytesMut};
use http::{header, Method, Request, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};

/// Bound on establishing a peer connection (QUIC handshake plus HTTP/3 SETTINGS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the peer's answer to `POST {TG}/calls`; the engine has its own call timers too.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Events queued toward one call's PUT stream.
const PUT_BACKLOG: usize = 256;

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
}

impl ClientHandle {
    /// Where the engine sends client-role commands (`CreateCall`, `ClientSend`,
    /// `ClientReopenEvents`, `ClientClose`).
    pub fn cmd_sender(&self) -> mpsc::UnboundedSender<RiptCmd> {
        self.cmds.clone()
    }

    /// Stops taking commands. Running call tasks end with their streams.
    pub fn abort(&self) {
        self.task.abort();
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
    });
    let (cmds, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run_commands(client, rx));
    ClientHandle { cmds, task }
}

struct Client {
    ctx: ClientCtx,
    endpoint: quinn::Endpoint,
    peers: Vec<tokio::sync::Mutex<Option<Live>>>,
    calls: Mutex<HashMap<CallKey, ClientCall>>,
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
    put: Option<mpsc::Sender<Event>>,
    media: Option<AbortHandle>,
}

impl ClientCall {
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
        let (conn, mut driver, send) = tokio::time::timeout(CONNECT_TIMEOUT, setup)
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
            } => create_call(&client, call, peer, request).await,
            RiptCmd::ClientSend { call, event } => client_send(&client, call, event),
            RiptCmd::ClientReopenEvents { call } => reopen(&client, call),
            RiptCmd::ClientClose { call } => {
                if let Some(mut c) = client.calls().remove(&call) {
                    c.abort_all();
                }
                client.ctx.media.unbind_quic(call);
            }
            other => tracing::warn!(?other, "server-role command sent to the client driver"),
        }
    }
}

async fn create_call(client: &Arc<Client>, call: CallKey, peer: usize, request: CallRequest) {
    if peer >= client.ctx.peers.len() {
        let reason = format!("no RIPT peer #{peer}");
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
        tracing::warn!(%call, "CreateCall for a call that already exists");
        return;
    }
    let task = tokio::spawn(run_create(client.clone(), call, peer, request));
    calls.insert(
        call,
        ClientCall {
            peer,
            create: Some(task.abort_handle()),
            ..ClientCall::default()
        },
    );
}

async fn run_create(client: Arc<Client>, call: CallKey, peer: usize, request: CallRequest) {
    let outcome = tokio::time::timeout(CREATE_TIMEOUT, post_call(&client, peer, &request))
        .await
        .unwrap_or_else(|_| Err((0, "timed out waiting for the peer".into())));
    let description = match outcome {
        Ok(d) => d,
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
    // Only the path of the returned URI is used: requests stay on the peer we authenticated.
    let path = match description.uri.parse::<http::Uri>() {
        Ok(u) if u.path().starts_with(RIPT_PREFIX) => u.path().trim_end_matches('/').to_owned(),
        _ => {
            client.calls().remove(&call);
            let reason = format!("unusable call URI {:?}", description.uri);
            return client
                .emit(RiptEvent::CreateFailed {
                    call,
                    status: 0,
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
    c.media = Some(tokio::spawn(run_media(client.clone(), target)).abort_handle());
}

/// `POST {TG}/calls`; the error is `(status, reason)` with status 0 for transport failures.
async fn post_call(
    client: &Client,
    peer: usize,
    request: &CallRequest,
) -> Result<CallDescription, (u16, String)> {
    let transport = |e: String| (0u16, e);
    let live = client.connection(peer).await.map_err(transport)?;
    let path = format!(
        "{RIPT_PREFIX}providertgs/{}/calls",
        client.ctx.peers[peer].tg
    );
    let mut req = client
        .request(peer, Method::POST, &path)
        .map_err(transport)?;
    req.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let body = serde_json::to_vec(request).map_err(|e| transport(e.to_string()))?;
    let mut send = live.send.clone();
    let mut s = send
        .send_request(req)
        .await
        .map_err(|e| transport(e.to_string()))?;
    s.send_data(Bytes::from(body))
        .await
        .map_err(|e| transport(e.to_string()))?;
    s.finish().await.map_err(|e| transport(e.to_string()))?;
    let resp = s
        .recv_response()
        .await
        .map_err(|e| transport(e.to_string()))?;
    let status = resp.status();
    let body = read_body(&mut s).await.map_err(|e| (status.as_u16(), e))?;
    if status != StatusCode::CREATED {
        return Err((status.as_u16(), reason_from_body(status.as_u16(), &body)));
    }
    serde_json::from_slice(&body).map_err(|e| (0, format!("call description: {e}")))
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
        Some(tx) => match tx.try_send(event) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%call, "events PUT backlog full; event dropped");
                return;
            }
            Err(mpsc::error::TrySendError::Closed(ev)) => ev,
        },
        None => event,
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
        c.media = Some(tokio::spawn(run_media(client.clone(), target)).abort_handle());
    }
}

fn spawn_get(client: &Arc<Client>, target: &Target, gen: u64) -> AbortHandle {
    let client = client.clone();
    let target = target.clone();
    tokio::spawn(async move {
        if let Err(e) = run_get(&client, &target).await {
            tracing::info!(call = %target.call, error = %e, "events GET ended");
        }
        // Only the current GET of a live call counts; ClientClose and reopen retire old ones.
        let current = client
            .calls()
            .get(&target.call)
            .is_some_and(|c| c.get_gen == gen);
        if current {
            client
                .emit(RiptEvent::ClientEventsLost { call: target.call })
                .await;
        }
    })
    .abort_handle()
}

/// Reads `GET {call}/events` until it ends; every decoded event goes to the engine.
async fn run_get(client: &Client, t: &Target) -> Result<(), String> {
    let live = client.connection(t.peer).await?;
    let req = client.request(t.peer, Method::GET, &format!("{}/events", t.path))?;
    let mut send = live.send.clone();
    let mut s = send.send_request(req).await.map_err(|e| e.to_string())?;
    s.finish().await.map_err(|e| e.to_string())?;
    let resp = s.recv_response().await.map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::OK {
        let body = read_body(&mut s).await.unwrap_or_default();
        return Err(reason_from_body(resp.status().as_u16(), &body));
    }
    let mut dec = EventDecoder::new();
    loop {
        match s.recv_data().await.map_err(|e| e.to_string())? {
            Some(mut buf) => {
                while buf.has_remaining() {
                    let c = buf.chunk();
                    let n = c.len();
                    dec.push(c);
                    buf.advance(n);
                }
                while let Some(item) = dec.next_event() {
                    match item {
                        Ok(event) => {
                            client
                                .emit(RiptEvent::ClientEvent {
                                    call: t.call,
                                    event,
                                })
                                .await
                        }
                        Err(e) => {
                            tracing::info!(call = %t.call, error = %e, "undecodable event skipped")
                        }
                    }
                }
            }
            None => return Ok(()),
        }
    }
}

/// Owns `PUT {call}/events`: writes each queued event; closes the array when the queue closes.
async fn run_put(client: Arc<Client>, t: Target, mut rx: mpsc::Receiver<Event>) {
    if let Err(e) = put_events(&client, &t, &mut rx).await {
        tracing::info!(call = %t.call, error = %e, "events PUT ended");
    }
}

async fn put_events(
    client: &Client,
    t: &Target,
    rx: &mut mpsc::Receiver<Event>,
) -> Result<(), String> {
    let live = client.connection(t.peer).await?;
    let mut req = client.request(t.peer, Method::PUT, &format!("{}/events", t.path))?;
    req.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let mut send = live.send.clone();
    let s = send.send_request(req).await.map_err(|e| e.to_string())?;
    let (mut tx, mut resp_rx) = s.split();
    let mut enc = EventEncoder::new();
    tx.send_data(EventEncoder::open())
        .await
        .map_err(|e| e.to_string())?;
    let resp = resp_rx.recv_response();
    tokio::pin!(resp);
    let mut answered = false;
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => tx.send_data(enc.encode(&ev)).await.map_err(|e| e.to_string())?,
                None => {
                    tx.send_data(EventEncoder::close()).await.map_err(|e| e.to_string())?;
                    return tx.finish().await.map_err(|e| e.to_string());
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

/// Opens `CONNECT {call}/media` and binds the call's datagrams to it while it stays open.
async fn run_media(client: Arc<Client>, t: Target) {
    let res = async {
        let live = client.connection(t.peer).await?;
        let mut req = client.request(t.peer, Method::CONNECT, &format!("{}/media", t.path))?;
        req.extensions_mut()
            .insert(h3::ext::Protocol::WEB_TRANSPORT);
        let mut send = live.send.clone();
        let mut s = send.send_request(req).await.map_err(|e| e.to_string())?;
        let resp = s.recv_response().await.map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::OK {
            return Err(format!("media CONNECT refused with {}", resp.status()));
        }
        let stream_id = s.id().into_inner();
        client
            .ctx
            .media
            .bind_quic(t.call, live.conn.clone(), stream_id);
        // Hold the stream: the binding lives exactly as long as it does.
        while let Ok(Some(_)) = s.recv_data().await {}
        client
            .ctx
            .media
            .unbind_quic_stream(t.call, &live.conn, stream_id);
        Ok(())
    }
    .await;
    if let Err(e) = res {
        tracing::info!(call = %t.call, error = %e, "media stream ended");
    }
}

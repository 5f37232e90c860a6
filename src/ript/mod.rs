//! The HTTP/3 side: the RIPT-style API model and the quinn/h3 drivers for both roles.

pub mod client;
pub mod events;
pub mod h3settings;
pub mod h3util;
pub mod model;
pub mod server;

use crate::CallKey;
use model::{CallDescription, CallRequest, Event, Handler};

/// Correlates an incoming `POST {TG}/calls` with the engine's answer to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReqId(pub u64);

/// An error answer for an HTTP request: rendered as an RFC 9457 problem body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: u16,
    pub title: String,
    pub detail: String,
}

impl Problem {
    pub fn new(status: u16, title: impl Into<String>, detail: impl Into<String>) -> Self {
        Problem {
            status,
            title: title.into(),
            detail: detail.into(),
        }
    }
}

/// A call the engine accepted on our server role.
#[derive(Debug, Clone, PartialEq)]
pub struct CallAccepted {
    pub key: CallKey,
    /// The call id (path segment) under `{TG}/calls/`.
    pub id: String,
    pub description: CallDescription,
}

/// Commands from the engine to the HTTP/3 drivers.
#[derive(Debug, Clone, PartialEq)]
pub enum RiptCmd {
    // --- server role (calls arriving over HTTP/3) ---
    /// Answer a pending `POST {TG}/calls`.
    RespondCall {
        req: ReqId,
        result: Result<CallAccepted, Problem>,
    },
    /// Send an event to the client on every open `GET {call}/events` stream. The driver remembers
    /// the last one so that a new GET starts with the current state.
    ServerSend { call: CallKey, event: Event },
    /// The call has ended: close its streams; further requests on it get 404. Handlers it was
    /// still ringing on get its final event as `end` on their events streams.
    ServerEnd { call: CallKey },
    /// A SIP call routed to the handlers of `tg` (protocol.md §2.7): create the call resource
    /// `{tg}/calls/{id}` with `description` and send `incoming` to every reachable handler of
    /// the TG. Answered with [`RiptEvent::Offered`].
    Offer {
        call: CallKey,
        tg: String,
        id: String,
        description: CallDescription,
    },
    /// Answer a pending take (`POST {call}` with a handler): the description with the
    /// proposal, or why not.
    RespondTake {
        req: ReqId,
        result: Result<CallDescription, Problem>,
    },

    // --- client role (calls leaving over HTTP/3) ---
    /// `POST {TG}/calls` on the peer at `config.ript_peers[peer]`; on success open the events
    /// GET and PUT and the `{call}/media` CONNECT stream, all on the peer's shared connection.
    CreateCall {
        call: CallKey,
        peer: usize,
        request: CallRequest,
    },
    /// Write an event on the call's `PUT {call}/events` stream.
    ClientSend { call: CallKey, event: Event },
    /// Re-open the events GET (and PUT if it is gone) after `ClientEventsLost`.
    ClientReopenEvents { call: CallKey },
    /// Close the call's streams (after `end` has been sent or received).
    ClientClose { call: CallKey },
    /// `POST {TG}/handlers` on the peer, then keep `GET {handler}/events` open (re-opened
    /// after a break); answered with `HandlerRegistered`/`HandlerFailed`, then `HandlerEvent`s.
    RegisterHandler { peer: usize, handler: Handler },
    /// Take a call offered to our handler: `POST {uri}` with `{"handler": handler}`; on `200`
    /// the call continues exactly like one we created (`CallCreated`, then its streams and
    /// media under `call`), else `CreateFailed`.
    TakeCall {
        call: CallKey,
        peer: usize,
        uri: String,
        handler: String,
    },
}

/// Events from the HTTP/3 drivers to the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum RiptEvent {
    // --- server role ---
    /// An authenticated `POST {TG}/calls`; answer with `RiptCmd::RespondCall`.
    IncomingCall {
        req: ReqId,
        tg: String,
        request: CallRequest,
        /// Subject of the bearer token that made the request.
        principal: String,
        /// The request's `Origin` when it came from a browser page (already checked against
        /// the allowed origins by the CORS gate).
        origin: Option<String>,
        /// Telephone numbers the client's token vouches for (`tn:<number>` scopes, canonical):
        /// a call from one of them is signed with attestation A.
        tns: Vec<String>,
    },
    /// An event read from one of the call's `PUT {call}/events` streams.
    ServerEvent { call: CallKey, event: Event },
    /// The last events stream of the call closed (the engine ends the call if none re-opens in 30 s).
    ServerEventsClosed { call: CallKey },
    /// An events stream of the call (re)opened.
    ServerEventsOpened { call: CallKey },
    /// How many handlers an [`RiptCmd::Offer`] rang (0: none reachable).
    Offered { call: CallKey, handlers: usize },
    /// `POST {call}` with `{"handler": URI}` from the handler's owner on a call we offered;
    /// answer with [`RiptCmd::RespondTake`].
    TakeCall {
        req: ReqId,
        call: CallKey,
        /// The handler as registered (with `uri`).
        handler: Handler,
        /// The request's `Origin` (already checked by the CORS gate).
        origin: Option<String>,
    },

    // --- client role ---
    /// The peer answered `201` to our `POST {TG}/calls`.
    CallCreated {
        call: CallKey,
        description: CallDescription,
    },
    /// The peer refused the call or could not be reached (status 0 = transport failure).
    CreateFailed {
        call: CallKey,
        status: u16,
        reason: String,
    },
    /// An event read from the call's `GET {call}/events` stream.
    ClientEvent { call: CallKey, event: Event },
    /// The events GET stream broke before the call ended.
    ClientEventsLost { call: CallKey },
    /// Our handler is registered on the peer (`uri`) and its events stream is open.
    HandlerRegistered { peer: usize, uri: String },
    /// Registering the handler, or (re-)opening its events stream, failed (status 0 =
    /// transport failure); the driver retries the stream with backoff unless the status is a
    /// 4xx other than 408/429.
    HandlerFailed {
        peer: usize,
        status: u16,
        reason: String,
    },
    /// An event on our handler's events stream (`incoming`, `end`, `ping`).
    HandlerEvent { peer: usize, event: Event },
}

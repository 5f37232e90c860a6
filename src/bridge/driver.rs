//! Runs the sans-IO [`Engine`] in one tokio task: feeds it inputs from the transport, the HTTP/3
//! drivers and the media hub, fires its timers, and dispatches its outputs.

use super::engine::{Engine, Input, Output};
use crate::media::{MediaEvent, MediaHub};
use crate::ript::{RiptCmd, RiptEvent};
use crate::sip::transport::SipSender;
use std::time::Instant;
use tokio::sync::mpsc;
use tracing::warn;

/// Where the engine's outputs go.
pub struct Sinks {
    pub sip: SipSender,
    pub ript_server: mpsc::UnboundedSender<RiptCmd>,
    pub ript_client: mpsc::UnboundedSender<RiptCmd>,
    pub media: MediaHub,
    /// Fetches x5u chains for STIR verification; the answers come back as engine inputs.
    pub stir: Option<crate::stir::fetch::X5uFetcher>,
    /// Looks in-dialog next hops up by name.
    pub hop_lookup: HopLookup,
    /// Where the answers to [`Output::StirFetch`] and [`Output::ResolveHop`] go.
    pub answers: mpsc::UnboundedSender<Input>,
}

/// The addresses a SIP URI's host name leads to over a transport (RFC 3263), in the order to
/// prefer them, or why none.
pub type HopLookup = std::sync::Arc<
    dyn Fn(
            String,
            crate::sip::msg::Transport,
        )
            -> futures_util::future::BoxFuture<'static, Result<Vec<std::net::SocketAddr>, String>>
        + Send
        + Sync,
>;

/// Inputs at most handled per wake-up before outputs are flushed, so one busy source cannot
/// delay the others' outputs for long.
const BATCH: usize = 64;

pub async fn run(
    mut engine: Engine,
    mut sip_rx: mpsc::Receiver<Input>,
    mut ript_rx: mpsc::Receiver<RiptEvent>,
    mut media_rx: mpsc::UnboundedReceiver<MediaEvent>,
    mut answers_rx: mpsc::UnboundedReceiver<Input>,
    sinks: Sinks,
) {
    // The engine reads no clock; it learns the wall clock once (PASSporT iat).
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        engine.set_wall_clock(Instant::now(), d.as_secs());
    }
    engine.start_pings(Instant::now());
    // The first round goes now, not when something first wakes the loop.
    while let Some(o) = engine.poll_output() {
        dispatch(&sinks, o);
    }
    loop {
        let deadline = engine.poll_timeout();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            m = media_rx.recv() => match m {
                Some(m) => engine.handle_input(Instant::now(), Input::Media(m)),
                None => return,
            },
            Some(i) = answers_rx.recv() => engine.handle_input(Instant::now(), i),
            r = ript_rx.recv() => match r {
                Some(r) => {
                    let now = Instant::now();
                    engine.handle_input(now, Input::Ript(Box::new(r)));
                    for _ in 0..BATCH {
                        match ript_rx.try_recv() {
                            Ok(r) => engine.handle_input(now, Input::Ript(Box::new(r))),
                            Err(_) => break,
                        }
                    }
                }
                None => return,
            },
            s = sip_rx.recv() => match s {
                Some(s) => {
                    let now = Instant::now();
                    engine.handle_input(now, s);
                    for _ in 0..BATCH {
                        match sip_rx.try_recv() {
                            Ok(s) => engine.handle_input(now, s),
                            Err(_) => break,
                        }
                    }
                }
                None => return,
            },
            _ = sleep => engine.handle_timeout(Instant::now()),
        }
        while let Some(o) = engine.poll_output() {
            dispatch(&sinks, o);
        }
    }
}

fn dispatch(s: &Sinks, o: Output) {
    match o {
        Output::Sip(out) => s.sip.send(out),
        Output::Media(cmd) => s.media.apply(cmd),
        Output::StirFetch { call, urls } => {
            let fetcher = s.stir.clone();
            let back = s.answers.clone();
            tokio::spawn(async move {
                let mut chains = Vec::with_capacity(urls.len());
                for url in urls {
                    let r = match &fetcher {
                        Some(f) => f
                            .fetch(&url)
                            .await
                            .map(|c| c.iter().map(|d| d.as_ref().to_vec()).collect())
                            .map_err(|e| e.to_string()),
                        None => Err("no x5u fetcher configured".to_string()),
                    };
                    chains.push((url, r));
                }
                let _ = back.send(Input::StirChains { call, chains });
            });
        }
        Output::ResolveHop {
            call,
            uri,
            transport,
        } => {
            let lookup = (s.hop_lookup)(uri.clone(), transport);
            let back = s.answers.clone();
            tokio::spawn(async move {
                let addrs = lookup.await;
                let _ = back.send(Input::HopAddr { call, uri, addrs });
            });
        }
        Output::Ript(cmd) => {
            let to = match &cmd {
                RiptCmd::RespondCall { .. }
                | RiptCmd::ServerSend { .. }
                | RiptCmd::ServerEnd { .. }
                | RiptCmd::Offer { .. }
                | RiptCmd::RespondTake { .. } => &s.ript_server,
                RiptCmd::CreateCall { .. }
                | RiptCmd::ClientSend { .. }
                | RiptCmd::ClientReopenEvents { .. }
                | RiptCmd::ClientClose { .. }
                | RiptCmd::RegisterHandler { .. }
                | RiptCmd::TakeCall { .. } => &s.ript_client,
            };
            if to.send(cmd).is_err() {
                warn!("HTTP/3 driver stopped; command dropped");
            }
        }
    }
}

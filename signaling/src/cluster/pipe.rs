//! Signaling connections that reach a node other than their doctor's home: the node they
//! reached (the *entry*) relays every frame to the home over the bus and every answer back,
//! and the home serves the connection exactly as if the client had connected to it — the same
//! join checks, rate limit, heartbeat timeout and revocations.
//!
//! The entry reads only the first message, to learn whose consultation it joins; it checks
//! nothing else. Anything it cannot place (not a join, an unknown consultation or token) is
//! served where it arrived, which refuses it as any node would.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket};
use consult_proto::signal::{
    decode_client_message, encode_server_message, ClientMessage, ServerMessage, SignalErrorCode,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use uuid::Uuid;

use super::wire::{Envelope, Frame};
use super::{EntryPipe, Home, Node, PipeEvent};
use crate::auth::sessions;
use crate::error::ApiError;
use crate::secrets::Token;
use crate::signal::limits::UnjoinedSocket;
use crate::signal::socket::{run, RateLimit};
use crate::state::AppState;

/// WebSocket close code 1012, "service restart": reconnect now.
pub const SERVICE_RESTART: u16 = 1012;
/// WebSocket close code 1013, "try again later".
const TRY_AGAIN_LATER: u16 = 1013;
/// Frames queued for one relayed connection, each way, before it counts as too slow.
const QUEUE: usize = 256;
/// A client that does not take a frame within this is cut off (as a direct connection whose
/// queue fills is).
const CLIENT_WRITE: Duration = Duration::from_secs(10);
/// How long the entry waits for the home to take a connection.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection waits before asking again where its consultation is (while the
/// deployment settles, or its home restores the rooms or moves).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Serve a client's signaling connection on a node of a deployment: here when this node is
/// (or becomes) the home of the doctor it joins, relayed to the home otherwise.
pub async fn serve(
    state: AppState,
    socket: WebSocket,
    cookie: Option<Token>,
    unjoined: UnjoinedSocket,
) {
    let (mut sink, mut stream) = socket.split();
    let join_timeout = state.config.signaling.join_timeout;
    let first = match tokio::time::timeout(join_timeout, stream.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => text.as_str().to_owned(),
        Ok(Some(Ok(other))) => {
            // Not a join: served here, which answers it as any node would.
            let stream = futures_util::stream::iter([Ok(other)]).chain(stream);
            run(state, sink, stream, cookie, unjoined).await;
            return;
        }
        Ok(_) => return,
        Err(_) => {
            // Served here, where the join timeout closes it with the usual error.
            run(state, sink, stream, cookie, unjoined).await;
            return;
        }
    };
    let placed = match placement(&state, &first, cookie.as_ref()).await {
        Ok(placed) => placed,
        Err(e) => {
            // Whose it is cannot be told now (the database is unreachable): never guess.
            tracing::warn!(
                error = format!("{e:#}"),
                "cannot place a signaling connection"
            );
            let frame = CloseFrame {
                code: TRY_AGAIN_LATER,
                reason: "the service cannot place this connection now; reconnect".into(),
            };
            let _ = sink.send(Message::Close(Some(frame))).await;
            return;
        }
    };
    if let (Some(node), Some((doctor, uses_cookie))) = (state.cluster.node().cloned(), placed) {
        // The session cookie crosses to the home only when it is the join's credential.
        let credential = if uses_cookie { cookie.as_ref() } else { None };
        let mut placed = false;
        // Settling lasts one lease; a home that is still restoring the rooms, or moving, is
        // asked again shortly, within two leases in all.
        let deadline = tokio::time::Instant::now() + state.config.cluster.lease * 2;
        while tokio::time::Instant::now() < deadline {
            match state.cluster.claim(&state, doctor).await {
                Ok(Home::Here) => {
                    placed = true;
                    break;
                }
                Ok(Home::Settling) => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Ok(Home::There(home)) => {
                    let relayed = relay(
                        &state,
                        &node,
                        home,
                        doctor,
                        &first,
                        credential,
                        &mut sink,
                        &mut stream,
                    )
                    .await;
                    if let Relayed::Done = relayed {
                        return;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot place a signaling connection");
                    break;
                }
            }
        }
        if !placed {
            // Never served here while another node may hold the consultation: the client
            // tries again (through the load balancer) in a moment.
            let frame = CloseFrame {
                code: TRY_AGAIN_LATER,
                reason: "the consultation is moving between the service's nodes; reconnect".into(),
            };
            let _ = sink.send(Message::Close(Some(frame))).await;
            return;
        }
    }
    let first = Message::Text(first.into());
    let stream = futures_util::stream::iter([Ok(first)]).chain(stream);
    run(state, sink, stream, cookie, unjoined).await;
}

/// Where a first message belongs: the doctor whose consultation it joins, when it is a join
/// whose credential holds (a place taken with an invite, or the session of the consultation's
/// doctor or of a colleague on it), and
/// whether the session cookie is its credential; `None` for anything else (served where it
/// arrived, which refuses it). An error when the database cannot say. Nothing is claimed for a
/// join that proves nothing.
async fn placement(
    state: &AppState,
    first: &str,
    cookie: Option<&Token>,
) -> anyhow::Result<Option<(Uuid, bool)>> {
    let Ok(message) = decode_client_message(first, state.config.signaling.max_message_bytes) else {
        return Ok(None);
    };
    let ClientMessage::Join {
        token,
        consultation_id,
    } = message
    else {
        return Ok(None);
    };
    match (consultation_id, token) {
        (Some(id), token) => {
            let uses_cookie = token.is_none();
            let Some(token) = token.map(|t| Token::from_client(&t)).or(cookie.cloned()) else {
                return Ok(None);
            };
            let current =
                match sessions::authenticate(state, &token, sessions::Activity::Background).await {
                    Ok(current) => current,
                    Err(ApiError::Unauthenticated | ApiError::PasskeySetupRequired) => {
                        return Ok(None)
                    }
                    Err(e) => anyhow::bail!("checking a session: {e}"),
                };
            // The room lives at its doctor's home, for the doctor and for a colleague on it.
            let Some(consultation) = crate::consultations::find(&state.pool, id).await? else {
                return Ok(None);
            };
            let takes_part = consultation.doctor_id == current.user.id
                || crate::consultations::rows::colleague(&state.pool, id, current.user.id)
                    .await?
                    .is_some();
            Ok(takes_part.then_some((consultation.doctor_id, uses_cookie)))
        }
        (None, Some(token)) => Ok(crate::invites::find_participant(
            state,
            &Token::from_client(&token),
        )
        .await
        .map_err(|e| anyhow::anyhow!("finding a place: {e}"))?
        .map(|p| (p.consultation.doctor_id, false))),
        (None, None) => Ok(None),
    }
}

enum Relayed {
    /// The connection was served by the home and is over.
    Done,
    /// The home did not take it (it is not the home any more, or did not answer).
    NotTaken,
}

/// Relay a client's connection to `home` until either side ends it.
#[allow(clippy::too_many_arguments)]
async fn relay(
    state: &AppState,
    node: &Arc<Node>,
    home: Uuid,
    doctor: Uuid,
    first: &str,
    cookie: Option<&Token>,
    sink: &mut SplitSink<WebSocket, Message>,
    stream: &mut SplitStream<WebSocket>,
) -> Relayed {
    let pipe = node.number();
    let (to_client, mut from_home) = tokio::sync::mpsc::channel(QUEUE);
    node.entry_pipes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(pipe, EntryPipe { home, to_client });
    let forget = || {
        node.entry_pipes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pipe);
    };
    node.send(
        home,
        &Envelope::Open {
            from: node.id,
            pipe,
            doctor,
            cookie: cookie.map(|c| c.expose().to_owned()),
            first: first.to_owned(),
        },
    );
    match tokio::time::timeout(OPEN_TIMEOUT, from_home.recv()).await {
        Ok(Some(PipeEvent::Opened)) => {}
        _ => {
            forget();
            // Had the home taken it after all, it lets go of it now.
            node.send(
                home,
                &Envelope::ToHome {
                    from: node.id,
                    pipe,
                    frame: Frame::Close {
                        code: None,
                        reason: String::new(),
                    },
                },
            );
            return Relayed::NotTaken;
        }
    }
    state.metrics.relayed_sockets.inc();
    let to_home = |frame: Frame| {
        node.send(
            home,
            &Envelope::ToHome {
                from: node.id,
                pipe,
                frame,
            },
        )
    };
    // The same limit the home applies, applied here too, so that a flood never reaches the bus
    // (where it would crowd out every other relayed connection of this node).
    let mut rate = RateLimit::new(state.config.signaling.max_messages_per_second);
    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) if rate.allow() => to_home(Frame::Text { text: text.as_str().to_owned() }),
                Some(Ok(Message::Text(_))) => {
                    state.metrics.signal_rejected.with_label_values(&["rate_limited"]).inc();
                    let refusal = ServerMessage::Error {
                        code: SignalErrorCode::RateLimited,
                        message: "too many messages; slow down".into(),
                        fatal: false,
                    };
                    let sent = tokio::time::timeout(CLIENT_WRITE, sink.send(Message::Text(encode_server_message(&refusal).into()))).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        to_home(Frame::Close { code: None, reason: String::new() });
                        break;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let refusal = ServerMessage::Error {
                        code: SignalErrorCode::Malformed,
                        message: "binary frames are not part of the protocol; send JSON text".into(),
                        fatal: false,
                    };
                    let sent = tokio::time::timeout(CLIENT_WRITE, sink.send(Message::Text(encode_server_message(&refusal).into()))).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        to_home(Frame::Close { code: None, reason: String::new() });
                        break;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    to_home(Frame::Close { code: None, reason: String::new() });
                    break;
                }
            },
            event = from_home.recv() => match event {
                Some(PipeEvent::Frame(Frame::Text { text })) => {
                    let sent = tokio::time::timeout(CLIENT_WRITE, sink.send(Message::Text(text.into()))).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        to_home(Frame::Close { code: None, reason: String::new() });
                        break;
                    }
                }
                Some(PipeEvent::Frame(Frame::Close { code, reason })) => {
                    let frame = code.map(|code| CloseFrame { code, reason: reason.into() });
                    let _ = tokio::time::timeout(CLIENT_WRITE, sink.send(Message::Close(frame))).await;
                    to_home(Frame::Close { code: None, reason: String::new() });
                    break;
                }
                Some(PipeEvent::Opened | PipeEvent::NotHome) => {}
                None => {
                    // Dropped for not keeping up, or the bus lost touch.
                    let frame = CloseFrame { code: SERVICE_RESTART, reason: "reconnect".into() };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    to_home(Frame::Close { code: None, reason: String::new() });
                    break;
                }
            },
            _ = state.shutdown.cancelled() => {
                let frame = CloseFrame { code: close_code::AWAY, reason: "the service is restarting".into() };
                let _ = sink.send(Message::Close(Some(frame))).await;
                to_home(Frame::Close { code: None, reason: String::new() });
                break;
            }
        }
    }
    forget();
    state.metrics.relayed_sockets.dec();
    let _ = sink.close().await;
    Relayed::Done
}

/// The home's side: serve a connection relayed from node `from` as if it were local.
pub(super) fn open_here(
    state: &AppState,
    node: &Arc<Node>,
    from: Uuid,
    pipe: u64,
    cookie: Option<String>,
    first: String,
) {
    let Some(unjoined) = state
        .unjoined_sockets
        .admit(state.config.signaling.max_unjoined_sockets)
    else {
        node.send(
            from,
            &Envelope::ToClient {
                pipe,
                frame: Frame::Close {
                    code: Some(TRY_AGAIN_LATER),
                    reason: "too many connections are waiting to join; try again shortly".into(),
                },
            },
        );
        return;
    };
    let (frames, incoming) = tokio::sync::mpsc::channel(QUEUE);
    node.home_pipes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert((from, pipe), frames);
    node.send(from, &Envelope::Opened { pipe });
    let first = Message::Text(first.into());
    let mut incoming = incoming;
    let stream = futures_util::stream::iter([Ok(first)]).chain(
        futures_util::stream::poll_fn(move |cx| incoming.poll_recv(cx)).map(|frame| {
            Ok(match frame {
                Frame::Text { text } => Message::Text(text.into()),
                Frame::Close { .. } => Message::Close(None),
            })
        }),
    );
    let out = node.clone();
    let sink = Box::pin(futures_util::sink::unfold(
        (),
        move |(), message: Message| {
            let frame = match message {
                Message::Text(text) => Some(Frame::Text {
                    text: text.as_str().to_owned(),
                }),
                Message::Close(close) => Some(Frame::Close {
                    code: close.as_ref().map(|c| c.code),
                    reason: close
                        .map(|c| c.reason.as_str().to_owned())
                        .unwrap_or_default(),
                }),
                _ => None,
            };
            if let Some(frame) = frame {
                out.send(from, &Envelope::ToClient { pipe, frame });
            }
            async { Ok::<_, Infallible>(()) }
        },
    ));
    let cookie = cookie.map(|c| Token::from_client(&c));
    let state = state.clone();
    let node = node.clone();
    tokio::spawn(async move {
        run(state, sink, stream, cookie, unjoined).await;
        node.home_pipes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(from, pipe));
    });
}

//! One signaling connection: authenticate with `join`, then relay, admit, heartbeat and leave.
//!
//! Each connection has a reader (this loop) and a writer task draining a bounded queue, so a slow
//! client never blocks the hub or anyone else. Bad messages are answered with an `error` and
//! counted; only authentication failures, heartbeat timeouts and frames over the hard limit end
//! the connection.

use crate::alerts::rules::Observation;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use consult_proto::api::{ConsultationStatus, Role};
use consult_proto::signal::{
    decode_client_message, encode_server_message, ClientMessage, ParticipantRole, ServerMessage,
    SignalErrorCode,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::time::Instant;
use uuid::Uuid;

use crate::audit::{Action, Actor};
use crate::auth::revocations::Revoked;
use crate::auth::sessions;
use crate::consultations;
use crate::error::ApiError;
use crate::invites;
use crate::secrets::Token;
use crate::signal::hub::{Connection, ConsentError, Identity, Outbound};
use crate::signal::limits::UnjoinedSocket;
use crate::state::AppState;

/// Messages queued for one client before it counts as too slow.
const OUTBOUND_QUEUE: usize = 256;
/// Initial read and write buffer of a socket.
const SOCKET_BUFFER_BYTES: usize = 4 * 1024;
/// Frames beyond this many times the message limit close the connection (code 1009) instead of
/// being read and refused.
const HARD_LIMIT_FACTOR: usize = 4;

/// `GET /api/v1/signal`: upgrade to the signaling WebSocket.
///
/// A browser always sends `Origin`; one from another site is refused, so a page elsewhere cannot
/// ride on the session cookie.
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&headers, &state.public_url) {
        state
            .metrics
            .signal_rejected
            .with_label_values(&["foreign_origin"])
            .inc();
        return ApiError::Forbidden.into_response();
    }
    if state.shutdown.is_cancelled() {
        return ApiError::unavailable("shutting_down", "the service is restarting; try again")
            .into_response();
    }
    // Until it joins, a connection has proved nothing: only so many may wait at once.
    let Some(unjoined) = state
        .unjoined_sockets
        .admit(state.config.signaling.max_unjoined_sockets)
    else {
        state
            .metrics
            .signal_rejected
            .with_label_values(&["too_many_unjoined"])
            .inc();
        return ApiError::unavailable(
            "too_many_connections",
            "too many connections are waiting to join; try again shortly",
        )
        .into_response();
    };
    let cookie = sessions::token_from_cookie(&headers);
    let hard_limit = state.config.signaling.max_message_bytes * HARD_LIMIT_FACTOR;
    // Signaling messages are small: modest buffers (instead of tungstenite's 128 KiB each) keep
    // an idle connection cheap; larger messages still arrive, the buffer grows for them.
    ws.max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .read_buffer_size(SOCKET_BUFFER_BYTES)
        .write_buffer_size(SOCKET_BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            if state.cluster.is_clustered() {
                crate::cluster::pipe::serve(state, socket, cookie, unjoined).await;
            } else {
                let (sink, stream) = socket.split();
                run(state, sink, stream, cookie, unjoined).await;
            }
        })
}

/// Whether a request's `Origin` (if any) is this service: the same host as `Host`, or the
/// configured public URL.
pub fn origin_allowed(headers: &HeaderMap, public_url: &str) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if origin.trim_end_matches('/') == public_url.trim_end_matches('/') {
        return true;
    }
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| host.eq_ignore_ascii_case(origin_host))
}

/// Where a joined connection sits.
struct Place {
    consultation_id: Uuid,
    participant_id: Uuid,
    role: ParticipantRole,
    /// The clinician's account and session (the doctor's, or a colleague's): re-checked on
    /// every heartbeat (extended by it only during a call), and watched for revocation, so that
    /// signing out, a password change, a disabled account or an idle timeout also ends the
    /// signaling connection.
    doctor: Option<DoctorSession>,
}

/// A doctor's session behind a signaling connection.
struct DoctorSession {
    user_id: Uuid,
    session_id: Uuid,
    token: Token,
}

/// Whether to keep reading.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// A token bucket: a sustained rate with bursts of twice that.
pub(crate) struct RateLimit {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    last: Instant,
}

impl RateLimit {
    pub(crate) fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            tokens: per_second * 2.0,
            capacity: per_second * 2.0,
            per_second,
            last: Instant::now(),
        }
    }

    pub(crate) fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + (now - self.last).as_secs_f64() * self.per_second).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Connected {
    state: AppState,
    conn: Connection,
    cookie: Option<Token>,
    place: Option<Place>,
    rate: RateLimit,
    /// Held until the connection joins.
    unjoined: Option<UnjoinedSocket>,
}

/// Serve one signaling connection: a client's WebSocket here, or one relayed from another node
/// (its frames arrive over Redis) when this node is the consultation's home.
pub(crate) async fn run<W, R>(
    state: AppState,
    mut sink: W,
    mut stream: R,
    cookie: Option<Token>,
    unjoined: UnjoinedSocket,
) where
    W: futures_util::Sink<Message> + Unpin + Send + 'static,
    R: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    state.metrics.connected_sockets.inc();
    let (conn, mut outbound) = state.hub.connection(OUTBOUND_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(out) = outbound.recv().await {
            let frame = match out {
                Outbound::Message(message) => Message::Text(encode_server_message(&message).into()),
                Outbound::Close => {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
                Outbound::GoingAway => {
                    let frame = CloseFrame {
                        code: close_code::AWAY,
                        reason: "the service is restarting".into(),
                    };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    break;
                }
            };
            if sink.send(frame).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let signaling = state.config.signaling.clone();
    let mut connected = Connected {
        rate: RateLimit::new(signaling.max_messages_per_second),
        state: state.clone(),
        conn,
        cookie,
        place: None,
        unjoined: Some(unjoined),
    };
    let opened = Instant::now();
    let mut last_heard = Instant::now();
    let mut revocations = state.revocations.subscribe();
    let mut listening = true;
    let mut tick =
        tokio::time::interval((signaling.heartbeat_interval / 2).max(Duration::from_millis(50)));
    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    last_heard = Instant::now();
                    if connected.handle_text(text.as_str()).await == Flow::Close {
                        break;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    last_heard = Instant::now();
                    connected.reject(SignalErrorCode::Malformed, "binary frames are not part of the protocol; send JSON text", false);
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => last_heard = Instant::now(),
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(e)) => {
                    // Includes frames over the hard limit: the socket is closed with 1009.
                    connected.state.metrics.signal_rejected.with_label_values(&["transport"]).inc();
                    tracing::debug!(error = %e, "signaling socket error");
                    break;
                }
            },
            revoked = revocations.recv(), if listening => {
                if matches!(revoked, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    listening = false;
                } else if connected.session_ended(revoked).await {
                    connected.reject(SignalErrorCode::Unauthorized, "your session ended; sign in again", true);
                    break;
                }
            }
            _ = tokio::time::sleep_until(opened + signaling.join_timeout), if connected.place.is_none() => {
                connected.reject(SignalErrorCode::NotJoined, "no join within the join timeout", true);
                break;
            }
            _ = state.shutdown.cancelled() => {
                connected.conn.going_away();
                break;
            }
            _ = tick.tick() => {
                if last_heard.elapsed() > signaling.heartbeat_timeout {
                    connected.reject(SignalErrorCode::HeartbeatTimeout, "no message within the heartbeat timeout", true);
                    break;
                }
            }
        }
    }
    connected.conn.close();
    if let Some(place) = connected.place.take()
        && let Some(generation) = state.hub.disconnect(
            place.consultation_id,
            place.participant_id,
            connected.conn.id(),
        )
    {
        schedule_expiry(
            state.clone(),
            place.consultation_id,
            place.participant_id,
            generation,
        );
    }
    drop(connected);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    state.metrics.connected_sockets.dec();
}

/// Whether a re-check of a doctor's session says it is over. A check that could not be made
/// (the database unreachable for a moment) ends nothing: the call goes on, and the next
/// heartbeat checks again.
fn session_is_over<T>(checked: Result<T, ApiError>) -> bool {
    match checked {
        Ok(_) => false,
        Err(ApiError::Unauthenticated | ApiError::PasskeySetupRequired) => true,
        Err(e) => {
            tracing::warn!(error = %e, "could not re-check a session; keeping the connection");
            false
        }
    }
}

/// After the grace period, remove a participant who did not come back.
pub fn schedule_expiry(
    state: AppState,
    consultation_id: Uuid,
    participant_id: Uuid,
    generation: u64,
) {
    tokio::spawn(async move {
        tokio::time::sleep(state.config.signaling.reconnect_grace).await;
        if let Some(departure) = state
            .hub
            .expire(consultation_id, participant_id, generation)
            && let Err(e) = invites::depart(&state, &departure).await
        {
            tracing::error!(error = format!("{e:#}"), "could not record a departure");
        }
    });
}

impl Connected {
    /// Whether a revocation (or, having missed some, a fresh look at the session) ends this
    /// connection's doctor session.
    async fn session_ended(
        &self,
        revoked: Result<Revoked, tokio::sync::broadcast::error::RecvError>,
    ) -> bool {
        let Some(doctor) = self.place.as_ref().and_then(|p| p.doctor.as_ref()) else {
            return false;
        };
        match revoked {
            Ok(revoked) => revoked.ends(doctor.user_id, doctor.session_id),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => session_is_over(
                sessions::authenticate(&self.state, &doctor.token, sessions::Activity::Background)
                    .await,
            ),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => false,
        }
    }

    fn reject(&self, code: SignalErrorCode, message: &str, fatal: bool) {
        self.state
            .metrics
            .signal_rejected
            .with_label_values(&[code.as_str()])
            .inc();
        if let (SignalErrorCode::OutsideConsultation | SignalErrorCode::NotAdmitted, Some(place)) =
            (code, &self.place)
        {
            self.state.alerts.observe(
                self.state.clock.now(),
                Observation::SignalRefused {
                    participant: place.participant_id,
                    consultation: place.consultation_id,
                    reason: code.as_str(),
                },
            );
        }
        self.conn.send(ServerMessage::Error {
            code,
            message: message.to_owned(),
            fatal,
        });
        if fatal {
            self.conn.close();
        }
    }

    async fn handle_text(&mut self, text: &str) -> Flow {
        if !self.rate.allow() {
            self.reject(
                SignalErrorCode::RateLimited,
                "too many messages; slow down",
                false,
            );
            return Flow::Continue;
        }
        let message =
            match decode_client_message(text, self.state.config.signaling.max_message_bytes) {
                Ok(message) => message,
                Err(e) => {
                    self.reject(e.code(), &e.to_string(), false);
                    return Flow::Continue;
                }
            };
        let type_name = message.type_name();
        let flow = match (&self.place, message) {
            (
                None,
                ClientMessage::Join {
                    token,
                    consultation_id,
                },
            ) => self.join(token, consultation_id).await,
            (None, _) => Err((
                SignalErrorCode::NotJoined,
                "send join first".to_owned(),
                false,
            )),
            (Some(_), ClientMessage::Join { .. }) => Err((
                SignalErrorCode::AlreadyJoined,
                "this connection has already joined".to_owned(),
                false,
            )),
            (Some(place), message) => self.joined_message(place, message).await,
        };
        match flow {
            Ok(flow) => {
                self.state
                    .metrics
                    .signal_messages
                    .with_label_values(&[type_name])
                    .inc();
                flow
            }
            Err((code, message, fatal)) => {
                self.reject(code, &message, fatal);
                if fatal {
                    Flow::Close
                } else {
                    Flow::Continue
                }
            }
        }
    }

    /// With several nodes: this node is not (any more) the home of the consultation being
    /// joined — it moved while the connection was being placed. The client is told to go away
    /// (1001) and reconnects, reaching the new home; no room is ever made here for it.
    fn moved(&self) -> Flow {
        self.state
            .metrics
            .signal_rejected
            .with_label_values(&["moved"])
            .inc();
        self.conn.going_away();
        Flow::Close
    }

    /// Refuse a join by `identity` (a participant, or a doctor's session) beyond
    /// `signaling.max_joins_per_minute`: fatal, and retryable after a while.
    fn check_join_rate(&self, identity: Uuid) -> Result<(), (SignalErrorCode, String, bool)> {
        let max = self.state.config.signaling.max_joins_per_minute;
        if self.state.join_rate.allow(identity, max, Instant::now()) {
            return Ok(());
        }
        Err((
            SignalErrorCode::RateLimited,
            format!("more than {max} joins in a minute; wait a little before reconnecting"),
            true,
        ))
    }

    async fn join(
        &mut self,
        token: Option<String>,
        consultation_id: Option<Uuid>,
    ) -> Result<Flow, (SignalErrorCode, String, bool)> {
        let state = self.state.clone();
        let fatal = |code, message: &str| (code, message.to_owned(), true);
        let internal = |e: ApiError| {
            tracing::error!(error = %e, "join failed");
            (
                SignalErrorCode::Internal,
                "could not join; try again".to_owned(),
                true,
            )
        };
        let now = state.clock.now();
        let heartbeat_ms = state.config.signaling.heartbeat_interval.as_millis() as u64;
        let place = if let Some(consultation_id) = consultation_id {
            let token = token
                .map(|t| Token::from_client(&t))
                .or_else(|| self.cookie.clone())
                .ok_or_else(|| fatal(SignalErrorCode::Unauthorized, "sign in first"))?;
            let current =
                match sessions::authenticate(&state, &token, sessions::Activity::Person).await {
                    Ok(current) => current,
                    Err(ApiError::Unauthenticated) => {
                        return Err(fatal(
                            SignalErrorCode::Unauthorized,
                            "your session is invalid or expired; sign in again",
                        ))
                    }
                    Err(ApiError::PasskeySetupRequired) => {
                        return Err(fatal(
                            SignalErrorCode::Forbidden,
                            "your organisation requires a passkey: register one first",
                        ))
                    }
                    Err(e) => return Err(internal(e)),
                };
            if current.user.role != Role::Doctor {
                return Err(fatal(
                    SignalErrorCode::Forbidden,
                    "only the consultation's clinicians can join this way",
                ));
            }
            let record = consultations::find(&state.pool, consultation_id)
                .await
                .map_err(|e| internal(e.into()))?;
            // The owner joins as its doctor; a colleague still on it, as a clinician who waits
            // to be admitted; anyone else is refused alike, whether it exists or not.
            let (record, identity) = match record {
                Some(record) if record.doctor_id == current.user.id => (record, Identity::Doctor),
                Some(record) => {
                    let colleague =
                        consultations::rows::colleague(&state.pool, record.id, current.user.id)
                            .await
                            .map_err(|e| internal(e.into()))?
                            .ok_or_else(|| {
                                fatal(SignalErrorCode::Forbidden, "no such consultation of yours")
                            })?;
                    let identity = Identity::Clinician {
                        participant_id: colleague.participant_id,
                        name: colleague.name,
                    };
                    (record, identity)
                }
                None => {
                    return Err(fatal(
                        SignalErrorCode::Forbidden,
                        "no such consultation of yours",
                    ))
                }
            };
            let role = match identity {
                Identity::Doctor => ParticipantRole::Doctor,
                _ => ParticipantRole::Clinician,
            };
            if record.status == ConsultationStatus::Ended {
                return Err(fatal(
                    SignalErrorCode::ConsultationEnded,
                    "this consultation has ended",
                ));
            }
            self.check_join_rate(current.session_id)?;
            if !state.cluster.serves(record.doctor_id) {
                return Ok(self.moved());
            }
            let Ok(participant_id) = state.hub.join(
                record.room_info(state.config.policy.max_participants),
                identity,
                self.conn.clone(),
                now,
                heartbeat_ms,
            ) else {
                return Ok(self.moved());
            };
            Place {
                consultation_id,
                participant_id,
                role,
                doctor: Some(DoctorSession {
                    user_id: current.user.id,
                    session_id: current.session_id,
                    token,
                }),
            }
        } else {
            let token = token.ok_or_else(|| {
                fatal(
                    SignalErrorCode::Unauthorized,
                    "join needs a participant token or a consultation id",
                )
            })?;
            let participant = invites::find_participant(&state, &Token::from_client(&token))
                .await
                .map_err(internal)?
                .ok_or_else(|| {
                    fatal(
                        SignalErrorCode::Unauthorized,
                        "this place is no longer valid; open your invite link again",
                    )
                })?;
            if participant.consultation.status == ConsultationStatus::Ended {
                return Err(fatal(
                    SignalErrorCode::ConsultationEnded,
                    "this consultation has ended",
                ));
            }
            self.check_join_rate(participant.id)?;
            if !state.cluster.serves(participant.consultation.doctor_id) {
                return Ok(self.moved());
            }
            let identity = Identity::Guest {
                participant_id: participant.id,
                name: participant.name.clone(),
                role: participant.role,
            };
            if state
                .hub
                .join(
                    participant
                        .consultation
                        .room_info(state.config.policy.max_participants),
                    identity,
                    self.conn.clone(),
                    now,
                    heartbeat_ms,
                )
                .is_err()
            {
                return Ok(self.moved());
            }
            Place {
                consultation_id: participant.consultation.id,
                participant_id: participant.id,
                role: participant.role,
                doctor: None,
            }
        };
        let role = place.role.as_str();
        state.metrics.joins.with_label_values(&[role]).inc();
        let actor = match &place.doctor {
            Some(doctor) => Actor::User(doctor.user_id),
            None => Actor::Participant(place.participant_id),
        };
        state
            .audit
            .record_or_log(
                now,
                &actor,
                Action::Joined,
                Some(place.consultation_id),
                json!({ "participant_id": place.participant_id, "role": role }),
            )
            .await;
        let consultation_id = place.consultation_id;
        self.place = Some(place);
        // Joined: its place among the unjoined is free.
        self.unjoined = None;
        crate::recording::reconcile(&self.state, consultation_id).await;
        Ok(Flow::Continue)
    }

    async fn joined_message(
        &self,
        place: &Place,
        message: ClientMessage,
    ) -> Result<Flow, (SignalErrorCode, String, bool)> {
        let state = &self.state;
        let refuse = |code: SignalErrorCode, message: &str| (code, message.to_owned(), false);
        match message {
            ClientMessage::Join { .. } => {
                Err(refuse(SignalErrorCode::AlreadyJoined, "already joined"))
            }
            ClientMessage::Admit { participant_id } | ClientMessage::Decline { participant_id }
                if place.role != ParticipantRole::Doctor =>
            {
                let _ = participant_id;
                Err(refuse(
                    SignalErrorCode::Forbidden,
                    "only the doctor can admit or decline",
                ))
            }
            ClientMessage::Admit { participant_id } => {
                let doctor = place.doctor.as_ref().map(|d| d.user_id).unwrap_or_default();
                consultations::admit_patient(state, doctor, place.consultation_id, participant_id)
                    .await
                    .map_err(|e| refuse(e.code(), &e.to_string()))?;
                Ok(Flow::Continue)
            }
            ClientMessage::Decline { participant_id } => {
                let doctor = place.doctor.as_ref().map(|d| d.user_id).unwrap_or_default();
                consultations::decline_patient(
                    state,
                    doctor,
                    place.consultation_id,
                    participant_id,
                )
                .await
                .map_err(|e| refuse(e.code(), &e.to_string()))?;
                Ok(Flow::Continue)
            }
            ClientMessage::Description { to, description } => {
                let relayed = ServerMessage::Description {
                    from: place.participant_id,
                    description,
                };
                state
                    .hub
                    .relay(place.consultation_id, place.participant_id, to, relayed)
                    .map_err(|code| refuse(code, relay_refusal(code)))?;
                Ok(Flow::Continue)
            }
            ClientMessage::Candidate { to, candidate } => {
                let relayed = ServerMessage::Candidate {
                    from: place.participant_id,
                    candidate,
                };
                state
                    .hub
                    .relay(place.consultation_id, place.participant_id, to, relayed)
                    .map_err(|code| refuse(code, relay_refusal(code)))?;
                Ok(Flow::Continue)
            }
            ClientMessage::Ping {} => {
                // A heartbeat is no action of the person's, unless a call is going on that they
                // are in (a colleague still waiting is not).
                let in_call = state.hub.in_call(place.consultation_id)
                    && (place.role == ParticipantRole::Doctor
                        || state
                            .hub
                            .is_admitted(place.consultation_id, place.participant_id));
                let activity = if in_call {
                    sessions::Activity::Person
                } else {
                    sessions::Activity::Background
                };
                // A colleague taken off the consultation is out, whatever raced with that.
                if place.role == ParticipantRole::Clinician
                    && let Some(doctor) = &place.doctor
                    && consultations::rows::colleague(
                        &state.pool,
                        place.consultation_id,
                        doctor.user_id,
                    )
                    .await
                    .is_ok_and(|c| c.is_none())
                {
                    let last_words = ServerMessage::Error {
                        code: SignalErrorCode::Forbidden,
                        message: "the clinician took you off this consultation".into(),
                        fatal: true,
                    };
                    if let Some(departure) =
                        state
                            .hub
                            .remove(place.consultation_id, place.participant_id, last_words)
                        && let Err(e) = invites::depart(state, &departure).await
                    {
                        tracing::error!(error = format!("{e:#}"), "could not record a departure");
                    }
                    return Ok(Flow::Close);
                }
                if let Some(doctor) = &place.doctor
                    && session_is_over(sessions::authenticate(state, &doctor.token, activity).await)
                {
                    return Err((
                        SignalErrorCode::Unauthorized,
                        "your session ended; sign in again".into(),
                        true,
                    ));
                }
                self.conn.send(ServerMessage::Pong {
                    server_time: state.clock.now(),
                });
                Ok(Flow::Continue)
            }
            ClientMessage::Consent { recording } => {
                let consent = state
                    .hub
                    .set_consent(place.consultation_id, place.participant_id, recording)
                    .map_err(|e| {
                        let code = match e {
                            ConsentError::NotAsked => SignalErrorCode::Forbidden,
                            ConsentError::Final => SignalErrorCode::Forbidden,
                        };
                        refuse(code, &e.to_string())
                    })?;
                // Kept, so a restarted service does not ask again (nor forget a refusal).
                if let Err(e) = consultations::rows::set_recording_consent(
                    &state.writer,
                    place.participant_id,
                    consent,
                )
                .await
                {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "could not store a recording answer"
                    );
                }
                state
                    .audit
                    .record_or_log(
                        state.clock.now(),
                        &Actor::Participant(place.participant_id),
                        Action::RecordingConsent,
                        Some(place.consultation_id),
                        json!({ "consent": consent }),
                    )
                    .await;
                crate::recording::reconcile(state, place.consultation_id).await;
                Ok(Flow::Continue)
            }
            ClientMessage::ScreenSharing { .. } if place.role != ParticipantRole::Doctor => {
                Err(refuse(
                    SignalErrorCode::Forbidden,
                    "only the consultation's doctor decides who may share a screen",
                ))
            }
            ClientMessage::ScreenSharing { guests_allowed } => {
                // Kept first: a restarted service, and a room rebuilt on another node, say the same.
                consultations::rows::set_guests_share_screen(
                    &state.writer,
                    place.consultation_id,
                    guests_allowed,
                )
                .await
                .map_err(|e| {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "could not store who may share a screen"
                    );
                    refuse(
                        SignalErrorCode::Internal,
                        "could not change who may share a screen",
                    )
                })?;
                state
                    .hub
                    .set_guests_share_screen(place.consultation_id, guests_allowed);
                state
                    .audit
                    .record_or_log(
                        state.clock.now(),
                        &Actor::Participant(place.participant_id),
                        Action::ScreenSharingChanged,
                        Some(place.consultation_id),
                        json!({ "guests_allowed": guests_allowed }),
                    )
                    .await;
                Ok(Flow::Continue)
            }
            ClientMessage::RecordingKey {
                recording_id,
                kid,
                suite,
                wrapped,
            } => {
                let Some((active, recorder)) = state
                    .recordings
                    .zero_knowledge_recorder(place.consultation_id)
                else {
                    return Err(refuse(
                        SignalErrorCode::OutsideConsultation,
                        "no zero-knowledge recording is being made in this consultation",
                    ));
                };
                if active != recording_id {
                    return Err(refuse(
                        SignalErrorCode::OutsideConsultation,
                        "that is not the recording being made now",
                    ));
                }
                if wrapped.len() > MAX_WRAPPED_KEY_CHARS
                    || consult_e2ee::sframe::Suite::from_id(suite).is_none()
                {
                    return Err(refuse(
                        SignalErrorCode::Malformed,
                        "a wrapped key must be base64 of at most 256 bytes, for suite 4 or 5",
                    ));
                }
                let relayed = ServerMessage::RecordingKey {
                    from: place.participant_id,
                    recording_id,
                    kid,
                    suite,
                    wrapped,
                };
                state
                    .hub
                    .relay(
                        place.consultation_id,
                        place.participant_id,
                        recorder,
                        relayed,
                    )
                    .map_err(|code| refuse(code, relay_refusal(code)))?;
                Ok(Flow::Continue)
            }
            ClientMessage::Leave {} => {
                // An invite is free again before anyone hears they left: someone who hangs up
                // and reopens their link at once must not find it "in use".
                if place.doctor.is_none()
                    && let Err(e) = invites::release(state, place.participant_id).await
                {
                    tracing::error!(error = format!("{e:#}"), "could not release an invite");
                }
                if let Some(departure) =
                    state.hub.leave(place.consultation_id, place.participant_id)
                    && let Err(e) = invites::depart(state, &departure).await
                {
                    tracing::error!(error = format!("{e:#}"), "could not record a departure");
                }
                Ok(Flow::Close)
            }
        }
    }
}

/// Longest `wrapped` accepted in a `recording_key` message (base64 of 256 bytes).
const MAX_WRAPPED_KEY_CHARS: usize = 344;

fn relay_refusal(code: SignalErrorCode) -> &'static str {
    match code {
        SignalErrorCode::NotAdmitted => "you have not been admitted yet",
        SignalErrorCode::OutsideConsultation => {
            "the recipient is not an admitted participant of your consultation"
        }
        SignalErrorCode::ConsultationEnded => "this consultation has ended",
        SignalErrorCode::Forbidden => {
            "you have not consented to recording: nothing of yours goes to the recorder"
        }
        _ => "message refused",
    }
}

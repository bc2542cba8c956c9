//! A signaling client: joins a consultation through the service like a browser does — as a
//! patient from an invite link, or as a clinician with a session token — and exchanges the
//! messages of `consult_proto::signal` over the WebSocket, with heartbeats.

use std::time::Duration;

use consult_proto::api::{ErrorBody, InviteInfo, RedeemInviteResponse};
use consult_proto::signal::{
    decode_server_message, encode_client_message, ClientMessage, ServerMessage,
};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// Who joins. Its `Debug` leaves the invite token and the bearer token out.
#[derive(Clone)]
pub enum Credentials {
    /// A patient with an invite link (`https://host/join#TOKEN`) and the name to show.
    Patient {
        /// The whole invite link.
        invite_url: String,
        /// Name shown to the doctor.
        name: String,
    },
    /// A clinician with a bearer session token.
    Clinician {
        /// Service base URL, e.g. `https://consult.example.org`.
        base_url: String,
        /// Bearer session token from sign-in.
        token: String,
        /// The consultation.
        consultation_id: Uuid,
    },
}

/// Why signaling failed.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// The invite link is not of the form `http(s)://host/join#token`.
    #[error("not an invite link: {0}")]
    BadInvite(String),
    /// The service refused (invite expired, in use, ...).
    #[error("{code}: {message}")]
    Refused {
        /// Error code from the service.
        code: String,
        /// Its message.
        message: String,
    },
    /// HTTP failed.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    WebSocket(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    /// The service closed the connection.
    #[error("signaling connection closed")]
    Closed,
    /// A message from the service could not be decoded.
    #[error("bad message from the service: {0}")]
    Protocol(String),
}

/// What a patient learns when redeeming the invite. Its `Debug` leaves the token out.
#[derive(Clone)]
pub struct PatientPlace {
    /// Their participant token (to rejoin after a dropped connection).
    pub participant_token: String,
    /// Their participant id.
    pub participant_id: Uuid,
    /// What the invite leads to.
    pub invite: InviteInfo,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Patient { invite_url, name } => f
                .debug_struct("Patient")
                .field(
                    "invite_url",
                    &invite_url.split('#').next().unwrap_or_default(),
                )
                .field("name", name)
                .finish_non_exhaustive(),
            Credentials::Clinician {
                base_url,
                consultation_id,
                ..
            } => f
                .debug_struct("Clinician")
                .field("base_url", base_url)
                .field("consultation_id", consultation_id)
                .finish_non_exhaustive(),
        }
    }
}

impl std::fmt::Debug for PatientPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatientPlace")
            .field("participant_id", &self.participant_id)
            .field("invite", &self.invite)
            .finish_non_exhaustive()
    }
}

/// Split an invite link into the service base URL and the token.
///
/// ```
/// use consult_client::signal_client::parse_invite;
/// let (base, token) = parse_invite("https://c.example/join#abc").unwrap();
/// assert_eq!((base.as_str(), token.as_str()), ("https://c.example", "abc"));
/// ```
pub fn parse_invite(url: &str) -> Result<(String, String), SignalError> {
    let (before, token) = url
        .split_once('#')
        .ok_or_else(|| SignalError::BadInvite(url.into()))?;
    let base = before
        .strip_suffix("/join")
        .filter(|b| b.starts_with("http://") || b.starts_with("https://"))
        .ok_or_else(|| SignalError::BadInvite(url.into()))?;
    if token.is_empty() {
        return Err(SignalError::BadInvite(url.into()));
    }
    Ok((base.to_owned(), token.to_owned()))
}

async fn refused(response: reqwest::Response) -> SignalError {
    let status = response.status();
    match response.json::<ErrorBody>().await {
        Ok(body) => SignalError::Refused {
            code: body.error.code,
            message: body.error.message,
        },
        Err(_) => SignalError::Refused {
            code: status.as_u16().to_string(),
            message: status.to_string(),
        },
    }
}

/// Redeem an invite link for a participant token.
pub async fn redeem_invite(
    http: &reqwest::Client,
    invite_url: &str,
    name: &str,
) -> Result<(String, PatientPlace), SignalError> {
    let (base, invite) = parse_invite(invite_url)?;
    let response = http
        .post(format!("{base}/api/v1/invites/redeem"))
        .json(&serde_json::json!({ "invite": invite, "name": name }))
        .send()
        .await?;
    if !response.status().is_success() {
        return Err(refused(response).await);
    }
    let redeemed: RedeemInviteResponse = response.json().await?;
    Ok((
        base,
        PatientPlace {
            participant_token: redeemed.participant_token,
            participant_id: redeemed.participant_id,
            invite: redeemed.invite,
        },
    ))
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One signaling connection.
pub struct SignalConnection {
    socket: Socket,
}

impl SignalConnection {
    /// Connect to `base_url`'s signaling endpoint and send `join`.
    pub async fn join(base_url: &str, join: ClientMessage) -> Result<Self, SignalError> {
        let ws_url = format!("{}/api/v1/signal", base_url.replacen("http", "ws", 1));
        // Signaling messages are small and must go at once: no Nagle.
        let (socket, _) = tokio_tungstenite::connect_async_with_config(ws_url, None, true)
            .await
            .map_err(Box::new)?;
        let mut connection = Self { socket };
        connection.send(&join).await?;
        Ok(connection)
    }

    /// Send a message.
    pub async fn send(&mut self, message: &ClientMessage) -> Result<(), SignalError> {
        self.socket
            .send(Message::Text(encode_client_message(message).into()))
            .await
            .map_err(Box::new)?;
        Ok(())
    }

    /// The next message from the service (skipping WebSocket control frames).
    pub async fn recv(&mut self) -> Result<ServerMessage, SignalError> {
        loop {
            match self.socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    return decode_server_message(&text)
                        .map_err(|e| SignalError::Protocol(e.to_string()))
                }
                Some(Ok(Message::Close(_))) | None => return Err(SignalError::Closed),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(SignalError::WebSocket(Box::new(e))),
            }
        }
    }

    /// Close politely.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.socket.close(None)).await;
    }
}

/// The `join` message for these credentials (after redeeming, for a patient).
pub fn join_message(credentials: &Credentials, patient: Option<&PatientPlace>) -> ClientMessage {
    match credentials {
        Credentials::Patient { .. } => ClientMessage::Join {
            token: patient.map(|p| p.participant_token.clone()),
            consultation_id: None,
        },
        Credentials::Clinician {
            token,
            consultation_id,
            ..
        } => ClientMessage::Join {
            token: Some(token.clone()),
            consultation_id: Some(*consultation_id),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_holds_no_token() {
        let patient = Credentials::Patient {
            invite_url: "https://c.example/join#SECRET-INVITE".into(),
            name: "Kiosk".into(),
        };
        let clinician = Credentials::Clinician {
            base_url: "https://c.example".into(),
            token: "SECRET-BEARER".into(),
            consultation_id: Uuid::nil(),
        };
        let shown = format!("{patient:?} {clinician:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("Kiosk") && shown.contains("https://c.example"));
    }

    #[test]
    fn invite_links_are_parsed_strictly() {
        assert!(parse_invite("https://c.example/join#t").is_ok());
        assert!(parse_invite("http://127.0.0.1:8080/join#t").is_ok());
        for bad in [
            "https://c.example/join",
            "https://c.example/join#",
            "ftp://c/join#t",
            "https://c.example/other#t",
        ] {
            assert!(parse_invite(bad).is_err(), "{bad}");
        }
    }
}

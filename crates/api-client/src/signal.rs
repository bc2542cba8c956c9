//! The signaling WebSocket: join a consultation like a browser does — as a patient with the
//! participant token from redeeming an invite, or as a clinician with a session token — and
//! exchange the messages of `consult_proto::signal`.

use std::time::Duration;

use consult_proto::signal::{
    decode_server_message, encode_client_message, ClientMessage, ServerMessage,
};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::{ApiError, PatientPlace};

/// Initial read and write buffer of a signaling connection.
const SOCKET_BUFFER_BYTES: usize = 4 * 1024;

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

impl Credentials {
    /// The `join` message for these credentials (after redeeming, for a patient).
    ///
    /// ```
    /// use consult_api_client::Credentials;
    /// use consult_proto::signal::ClientMessage;
    ///
    /// let doctor = Credentials::Clinician {
    ///     base_url: "https://c.example".into(),
    ///     token: "T".into(),
    ///     consultation_id: uuid::Uuid::nil(),
    /// };
    /// assert!(matches!(doctor.join_message(None), ClientMessage::Join { token: Some(_), consultation_id: Some(_) }));
    /// ```
    pub fn join_message(&self, patient: Option<&PatientPlace>) -> ClientMessage {
        match self {
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

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn websocket(error: tokio_tungstenite::tungstenite::Error) -> ApiError {
    ApiError::WebSocket(error.to_string())
}

/// One signaling connection.
pub struct SignalConnection {
    socket: Socket,
}

impl SignalConnection {
    /// Connect to `base_url`'s signaling endpoint and send `join`.
    pub async fn join(base_url: &str, join: ClientMessage) -> Result<Self, ApiError> {
        let mut connection = Self::connect(base_url).await?;
        connection.send(&join).await?;
        Ok(connection)
    }

    /// Connect to `base_url`'s signaling endpoint without sending anything yet.
    pub async fn connect(base_url: &str) -> Result<Self, ApiError> {
        let ws_url = format!(
            "{}/api/v1/signal",
            base_url.trim_end_matches('/').replacen("http", "ws", 1)
        );
        // Signaling messages are small and must go at once: no Nagle. tungstenite zeroes its
        // whole read buffer before every read (128 KiB by default, a fifth of the load
        // generator's CPU in `perf`); signaling's buffers start at 4 KiB, as the service's do,
        // and grow for a larger message.
        let config = WebSocketConfig::default()
            .read_buffer_size(SOCKET_BUFFER_BYTES)
            .write_buffer_size(SOCKET_BUFFER_BYTES);
        let (socket, _) = tokio_tungstenite::connect_async_with_config(ws_url, Some(config), true)
            .await
            .map_err(websocket)?;
        Ok(Self { socket })
    }

    /// Send a message.
    pub async fn send(&mut self, message: &ClientMessage) -> Result<(), ApiError> {
        self.send_text(encode_client_message(message)).await
    }

    /// Send any text, well-formed or not: for tests of how the service treats bad input.
    pub async fn send_text(&mut self, text: String) -> Result<(), ApiError> {
        self.socket
            .send(Message::Text(text.into()))
            .await
            .map_err(websocket)
    }

    /// The next message from the service (skipping WebSocket control frames).
    pub async fn recv(&mut self) -> Result<ServerMessage, ApiError> {
        loop {
            match self.socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    return decode_server_message(&text).map_err(|e| ApiError::Protocol {
                        url: "/api/v1/signal".into(),
                        reason: e.to_string(),
                    })
                }
                Some(Ok(Message::Close(_))) | None => return Err(ApiError::Closed),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(websocket(e)),
            }
        }
    }

    /// Close politely.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.socket.close(None)).await;
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

    /// The client's 4 KiB socket buffers limit nothing: messages far larger than them, and
    /// many small ones arriving together, come through whole and in order.
    #[tokio::test]
    async fn messages_larger_than_the_socket_buffer_arrive_whole() {
        use consult_proto::signal::{encode_server_message, SignalErrorCode};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let large = |n: usize| ServerMessage::Error {
            code: SignalErrorCode::Malformed,
            message: format!("{n}:{}", "x".repeat(n)),
            fatal: false,
        };
        let sizes = [100, 5_000, 300_000, 1, 70_000];
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut socket = tokio_tungstenite::accept_async(tcp).await.unwrap();
            // The join first, as a client sends it.
            let join = socket.next().await.unwrap().unwrap();
            assert!(join.to_text().unwrap().contains("\"join\""));
            for n in sizes {
                socket
                    .feed(Message::Text(encode_server_message(&large(n)).into()))
                    .await
                    .unwrap();
            }
            socket.flush().await.unwrap();
            socket
        });
        let mut connection = SignalConnection::connect(&base_url).await.unwrap();
        connection
            .send_text(r#"{"type":"join"}"#.to_owned())
            .await
            .unwrap();
        for n in sizes {
            assert_eq!(connection.recv().await.unwrap(), large(n));
        }
        connection.send(&ClientMessage::Ping {}).await.unwrap();
        let mut socket = server.await.unwrap();
        let ping = socket.next().await.unwrap().unwrap();
        assert!(ping.to_text().unwrap().contains("ping"), "{ping:?}");
    }
}

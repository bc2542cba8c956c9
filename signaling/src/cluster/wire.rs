//! What nodes say to each other over Redis: one JSON envelope per pub/sub message, on the
//! receiving node's own channel (or the deployment's broadcast channel for revocations).

use consult_proto::api::WaitingPatient;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::revocations::Revoked;
use crate::signal::hub::AdmissionError;

/// A message between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Envelope {
    /// Entry node → home: a client's signaling connection for one of the home's doctors. The
    /// home runs it as if the client had connected there, starting with `first`.
    Open {
        /// The entry node.
        from: Uuid,
        /// The entry node's number for this connection.
        pipe: u64,
        /// The doctor whose consultation it joins.
        doctor: Uuid,
        /// The session cookie the client sent with the upgrade, if any (a doctor's browser).
        cookie: Option<String>,
        /// The client's first message (its `join`).
        first: String,
    },
    /// Home → entry node: the connection is served here; relay the client's frames.
    Opened {
        /// The entry node's connection number.
        pipe: u64,
    },
    /// Home → entry node: the home is not (or no longer) this doctor's; look again.
    NotHome {
        /// The entry node's connection number.
        pipe: u64,
    },
    /// Entry node → home: a frame from the client, or its goodbye.
    ToHome {
        /// The entry node.
        from: Uuid,
        /// Its connection number.
        pipe: u64,
        /// What the client sent.
        frame: Frame,
    },
    /// Home → entry node: a frame for the client, or the end of the connection.
    ToClient {
        /// The entry node's connection number.
        pipe: u64,
        /// What to send.
        frame: Frame,
    },
    /// Any node → home: run a room operation there.
    Call {
        /// The calling node.
        from: Uuid,
        /// The caller's number for the call.
        id: u64,
        /// The doctor whose rooms it touches.
        doctor: Uuid,
        /// What to do.
        call: Call,
    },
    /// Home → caller: the outcome.
    Reply {
        /// The call's number.
        id: u64,
        /// The outcome.
        reply: Reply,
    },
    /// A session ended: every node closes the WebSockets that hold it.
    Revoked {
        /// Which node announced it (it has told its own sockets already).
        from: Uuid,
        /// What ended.
        revoked: Revoked,
    },
}

/// One WebSocket frame, as relayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Frame {
    /// A text message (the protocol is JSON text only).
    Text {
        /// The message.
        text: String,
    },
    /// The connection ends, with a close code when the home chose one.
    Close {
        /// The WebSocket close code.
        code: Option<u16>,
        /// Why.
        reason: String,
    },
}

/// A room operation a REST request needs from the doctor's home.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Call {
    /// The doctor's waiting patients, across their consultations.
    WaitingFor,
    /// Admit a waiting patient.
    Admit {
        /// The consultation.
        consultation: Uuid,
        /// The patient.
        participant: Uuid,
    },
    /// Turn a waiting patient away.
    Decline {
        /// The consultation.
        consultation: Uuid,
        /// The patient.
        participant: Uuid,
    },
    /// The consultation ended (already committed): tell everyone and close the room.
    End {
        /// The consultation.
        consultation: Uuid,
    },
    /// An invite was revoked: disconnect and release whoever holds it.
    RemoveHolders {
        /// The consultation.
        consultation: Uuid,
        /// The invite.
        invite: String,
    },
    /// A colleague was taken off the consultation (already committed): disconnect them.
    RemoveColleague {
        /// The consultation.
        consultation: Uuid,
        /// Their participant id.
        participant: Uuid,
    },
}

/// The outcome of a [`Call`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
pub enum Reply {
    /// [`Call::WaitingFor`].
    Waiting {
        /// Longest-waiting first.
        entries: Vec<WaitingPatient>,
    },
    /// [`Call::Admit`] and [`Call::Decline`].
    Admission {
        /// `None`: done.
        refused: Option<AdmissionError>,
    },
    /// Done.
    Done,
    /// It failed at the home; the caller answers with an internal error.
    Failed,
    /// The node called is not the doctor's home (any more).
    NotHome,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_survive_the_wire() {
        let sent = Envelope::ToClient {
            pipe: 7,
            frame: Frame::Close {
                code: Some(1001),
                reason: "the service is restarting".into(),
            },
        };
        let text = serde_json::to_string(&sent).unwrap();
        match serde_json::from_str::<Envelope>(&text).unwrap() {
            Envelope::ToClient { pipe: 7, frame } => assert_eq!(
                frame,
                Frame::Close {
                    code: Some(1001),
                    reason: "the service is restarting".into()
                }
            ),
            other => panic!("{other:?}"),
        }
        let refused = Reply::Admission {
            refused: Some(AdmissionError::DoctorBusy),
        };
        let back: Reply = serde_json::from_str(&serde_json::to_string(&refused).unwrap()).unwrap();
        assert!(matches!(
            back,
            Reply::Admission {
                refused: Some(AdmissionError::DoctorBusy)
            }
        ));
    }
}

//! Key-agreement messages on the `consult-e2ee` data channel: JSON text, one message each.
//!
//! ```
//! use consult_e2ee::wire::KeyMessage;
//! let hello = KeyMessage::Hello { participant: "p1".into(), public_key: "AAAA".into() };
//! let text = hello.encode();
//! assert_eq!(text, r#"{"v":2,"type":"hello","participant":"p1","public_key":"AAAA"}"#);
//! assert_eq!(KeyMessage::decode(&text).unwrap(), hello);
//! ```

use serde::{Deserialize, Serialize};

/// The label of the data channel key messages travel on.
pub const E2EE_CHANNEL_LABEL: &str = "consult-e2ee";
/// Protocol version in every message (2: the key is committed to before it is revealed).
pub const E2EE_PROTOCOL_VERSION: u8 = 2;
/// Longest key message accepted, in bytes.
pub const MAX_KEY_MESSAGE_BYTES: usize = 4096;

/// A key-agreement message. Byte strings are standard base64 with padding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeyMessage {
    /// "I am `participant`; this is the SHA-256 commitment to my key for this connection"
    /// ([`crate::sas::commitment`]). Sent first; the hello follows only once the other side's
    /// commitment has arrived.
    Commit {
        /// The sender's participant id (as the signaling service named it).
        participant: String,
        /// 32-byte commitment.
        commitment: String,
    },
    /// "I am `participant`; here is my X25519 public key for this connection" — the reveal,
    /// which must match the sender's commitment.
    Hello {
        /// The sender's participant id (as the signaling service named it).
        participant: String,
        /// 32-byte X25519 public key.
        public_key: String,
    },
    /// A sender's base key for an epoch, AEAD-wrapped for one recipient.
    Key {
        /// Sender participant id.
        from: String,
        /// Recipient participant id.
        to: String,
        /// The sender's epoch (from 1).
        epoch: u64,
        /// RFC 9605 cipher suite number.
        suite: u16,
        /// 12-byte AES-GCM nonce.
        nonce: String,
        /// The wrapped base key (ciphertext and tag).
        wrapped: String,
    },
    /// "I installed your key for `epoch`": the sender may switch to it.
    Ack {
        /// Who acknowledges.
        from: String,
        /// The epoch acknowledged.
        epoch: u64,
    },
    /// "I stopped end-to-end encryption on this connection, because of `reason`": both people
    /// are told why, and no key is agreed on it.
    Abort {
        /// Who stopped.
        from: String,
        /// Why.
        reason: AbortReason,
    },
}

/// Why a participant stopped the key agreement of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortReason {
    /// The other side's key does not match the commitment it sent: someone may be in the middle
    /// of the call, trying to choose a key after seeing ours (or the commitment was replayed from
    /// another call).
    CommitmentMismatch,
    /// The other side revealed its key before committing to it.
    RevealBeforeCommitment,
}

impl AbortReason {
    /// Stable snake_case name, as on the wire.
    pub fn name(self) -> &'static str {
        match self {
            AbortReason::CommitmentMismatch => "commitment_mismatch",
            AbortReason::RevealBeforeCommitment => "reveal_before_commitment",
        }
    }
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    v: u8,
    #[serde(flatten)]
    message: &'a KeyMessage,
}

/// Why a key message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Longer than [`MAX_KEY_MESSAGE_BYTES`].
    #[error("key message too long")]
    TooLong,
    /// Not JSON, an unknown type, or missing fields.
    #[error("malformed key message: {0}")]
    Malformed(String),
    /// Another protocol version.
    #[error("unsupported key protocol version {0}")]
    Version(u64),
}

impl KeyMessage {
    /// JSON text.
    pub fn encode(&self) -> String {
        serde_json::to_string(&EnvelopeOut {
            v: E2EE_PROTOCOL_VERSION,
            message: self,
        })
        .unwrap_or_default()
    }

    /// Parse JSON text, checking size and version.
    pub fn decode(text: &str) -> Result<Self, WireError> {
        if text.len() > MAX_KEY_MESSAGE_BYTES {
            return Err(WireError::TooLong);
        }
        let mut value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| WireError::Malformed(e.to_string()))?;
        let object = value
            .as_object_mut()
            .ok_or_else(|| WireError::Malformed("not an object".into()))?;
        match object.remove("v").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(E2EE_PROTOCOL_VERSION) => {}
            Some(other) => return Err(WireError::Version(other)),
            None => return Err(WireError::Malformed("no version".into())),
        }
        serde_json::from_value(value).map_err(|e| WireError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_key_messages_are_refused_with_a_reason() {
        assert!(matches!(
            KeyMessage::decode("nope"),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            KeyMessage::decode("[]"),
            Err(WireError::Malformed(_))
        ));
        // Version 1 hellos went out uncommitted: a peer still speaking it is refused.
        assert_eq!(
            KeyMessage::decode(r#"{"v":1,"type":"ack","from":"a","epoch":1}"#),
            Err(WireError::Version(1))
        );
        assert!(matches!(
            KeyMessage::decode(r#"{"v":2,"type":"ack","from":"a"}"#),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            KeyMessage::decode(r#"{"v":2,"type":"teleport"}"#),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            KeyMessage::decode(r#"{"v":2,"type":"abort","from":"a","reason":"bored"}"#),
            Err(WireError::Malformed(_))
        ));
        let abort = KeyMessage::Abort {
            from: "a".into(),
            reason: AbortReason::CommitmentMismatch,
        };
        assert_eq!(
            abort.encode(),
            r#"{"v":2,"type":"abort","from":"a","reason":"commitment_mismatch"}"#
        );
        assert_eq!(KeyMessage::decode(&abort.encode()).unwrap(), abort);
        let long = format!(
            r#"{{"v":2,"type":"ack","from":"{}","epoch":1}}"#,
            "a".repeat(5000)
        );
        assert_eq!(KeyMessage::decode(&long), Err(WireError::TooLong));
        let ack = KeyMessage::Ack {
            from: "a".into(),
            epoch: 3,
        };
        assert_eq!(KeyMessage::decode(&ack.encode()).unwrap(), ack);
    }
}

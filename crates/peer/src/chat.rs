//! Chat over a data channel: reliable, ordered, UTF-8 text, one message per frame, size-limited.

/// Label of the chat data channel.
pub const CHAT_CHANNEL_LABEL: &str = "consult-chat";
/// Default largest chat message, in bytes of UTF-8.
pub const DEFAULT_MAX_CHAT_BYTES: usize = 4096;

/// Why a chat message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// Longer than the limit.
    #[error("chat message of {size} bytes is over the {limit}-byte limit")]
    TooLong {
        /// Size in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not UTF-8 text (a binary frame or invalid bytes).
    #[error("chat messages must be UTF-8 text")]
    NotText,
    /// Empty.
    #[error("empty chat message")]
    Empty,
}

/// Check an outgoing message.
pub fn check_outgoing(text: &str, limit: usize) -> Result<(), ChatError> {
    if text.is_empty() {
        return Err(ChatError::Empty);
    }
    if text.len() > limit {
        return Err(ChatError::TooLong {
            size: text.len(),
            limit,
        });
    }
    Ok(())
}

/// Decode an incoming chat frame.
///
/// ```
/// use consult_peer::chat::{decode_incoming, ChatError};
/// assert_eq!(decode_incoming(false, "hello".as_bytes(), 4096), Ok("hello".to_string()));
/// assert_eq!(decode_incoming(true, b"hello", 4096), Err(ChatError::NotText));
/// ```
pub fn decode_incoming(binary: bool, bytes: &[u8], limit: usize) -> Result<String, ChatError> {
    if binary {
        return Err(ChatError::NotText);
    }
    if bytes.len() > limit {
        return Err(ChatError::TooLong {
            size: bytes.len(),
            limit,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| ChatError::NotText)?;
    if text.is_empty() {
        return Err(ChatError::Empty);
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_encoding_are_enforced_both_ways() {
        assert_eq!(check_outgoing("hi", 4), Ok(()));
        assert_eq!(
            check_outgoing("hello", 4),
            Err(ChatError::TooLong { size: 5, limit: 4 })
        );
        assert_eq!(check_outgoing("", 4), Err(ChatError::Empty));
        assert_eq!(
            decode_incoming(false, &[0xff, 0x00], 10),
            Err(ChatError::NotText)
        );
        assert_eq!(
            decode_incoming(false, b"hello", 4),
            Err(ChatError::TooLong { size: 5, limit: 4 })
        );
        assert_eq!(
            decode_incoming(false, "héllo".as_bytes(), 10),
            Ok("héllo".into())
        );
    }
}

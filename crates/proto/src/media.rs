//! Media vocabulary shared by the peer (which negotiates it) and the codecs (which implement it).

/// A video codec a peer can negotiate and the codec crate can encode and decode.
///
/// ```
/// use consult_proto::media::VideoCodec;
///
/// assert_ne!(VideoCodec::H264, VideoCodec::Vp8);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    /// H.264, constrained baseline, packetization mode 1.
    H264,
    /// VP8.
    Vp8,
}

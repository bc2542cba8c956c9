//! What a session tells the application, and how it hands over received media.

use consult_codec::VideoFrame;
use consult_e2ee::E2eeEvent;
use consult_peer::file_transfer::FileEvent;
use consult_peer::{EncodedFrame, Stats, VideoCodec};
use consult_proto::signal::RecordingState;
use uuid::Uuid;

/// How received media is handed to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReceiveMode {
    /// Decode: [`SessionEvent::Video`] (I420) and [`SessionEvent::Audio`] (PCM).
    #[default]
    Decoded,
    /// Hand over encoded frames as they arrive: [`SessionEvent::EncodedFrame`].
    Encoded,
}

/// What happened in the consultation.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// In the consultation; a patient waits until [`SessionEvent::Admitted`].
    Joined {
        /// Our participant id.
        participant_id: Uuid,
        /// Whether already admitted.
        admitted: bool,
        /// The doctor's name.
        doctor_name: String,
    },
    /// The doctor let us in.
    Admitted,
    /// The doctor turned us away; the session ends.
    Declined,
    /// The other participant is here; media negotiation starts.
    PeerJoined {
        /// Their name.
        name: String,
    },
    /// The other participant left for good.
    PeerLeft,
    /// ICE found a working candidate pair; the DTLS handshake follows (then [`SessionEvent::Connected`]).
    IceConnected,
    /// Media and data flow.
    Connected,
    /// The connection dropped; an ICE restart follows if it does not come back.
    Disconnected,
    /// A decoded video frame.
    Video {
        /// The picture (I420).
        frame: VideoFrame,
        /// The codec it arrived in.
        codec: VideoCodec,
    },
    /// 20 ms of decoded 48 kHz mono audio.
    Audio(Vec<i16>),
    /// An encoded frame (in [`ReceiveMode::Encoded`]).
    EncodedFrame(EncodedFrame),
    /// The remote asked for a keyframe. The session handles it for raw frames it encodes; an
    /// application sending its own encoded video ([`Session::send_encoded_video`](crate::session::Session::send_encoded_video)) should send
    /// a keyframe next.
    KeyframeRequested,
    /// A chat message.
    Chat(String),
    /// An incoming chat message was refused (too long, not text).
    ChatRejected(String),
    /// File transfer offers, progress and results.
    File(FileEvent),
    /// Connection statistics, once a second.
    Stats(Stats),
    /// End-to-end encryption: the SAS to show the person ([`E2eeEvent::SasReady`]), keys
    /// switched or installed.
    E2ee(E2eeEvent),
    /// Whether the consultation is recorded now (show it to the person). While it is, the
    /// session also sends its media to the recorder.
    Recording(RecordingState),
    /// The consultation ended; the session is over.
    Ended,
    /// Something went wrong that the call survives (a bad datagram, a decode error).
    Warning(String),
}

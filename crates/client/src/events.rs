//! What a session tells the application, and how it hands over received media.

use consult_codec::VideoFrame;
use consult_e2ee::E2eeEvent;
use consult_peer::file_transfer::FileEvent;
use consult_peer::{EncodedFrame, Stats, VideoCodec, VideoSource};
use consult_proto::signal::{ParticipantRole, RecordingState};
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

/// What happened in the consultation. In a group consultation there is a connection to every
/// other participant: what concerns one connection names that participant (`peer` or `from`).
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
    /// Another participant is here; media negotiation with them starts.
    PeerJoined {
        /// Their participant id.
        participant_id: Uuid,
        /// Their name.
        name: String,
        /// Their role.
        role: ParticipantRole,
    },
    /// Another participant left for good.
    PeerLeft {
        /// Who.
        participant_id: Uuid,
    },
    /// ICE found a working candidate pair with a participant; the DTLS handshake follows (then
    /// [`SessionEvent::Connected`]).
    IceConnected {
        /// With whom.
        peer: Uuid,
    },
    /// Media and data flow with a participant.
    Connected {
        /// With whom.
        peer: Uuid,
    },
    /// The connection with a participant dropped; an ICE restart follows if it does not come
    /// back.
    Disconnected {
        /// With whom.
        peer: Uuid,
    },
    /// A decoded video frame.
    Video {
        /// Who sent it.
        from: Uuid,
        /// The picture (I420).
        frame: VideoFrame,
        /// The codec it arrived in.
        codec: VideoCodec,
        /// The sender's camera, or the screen they share.
        source: VideoSource,
    },
    /// One packet of decoded 48 kHz mono audio from one participant: 20 ms, or 40 ms from a
    /// native participant whose video is in audio only (a packet may hold up to 120 ms).
    Audio {
        /// Who sent it.
        from: Uuid,
        /// The samples.
        samples: Vec<i16>,
    },
    /// Samples to play where nothing of `from`'s audio came: silence they did not send (DTX) or
    /// packets lost beyond the one in-band FEC rebuilt (Opus concealment, at most a second per
    /// gap), before the [`SessionEvent::Audio`] that follows the gap.
    AudioConcealed {
        /// Whose audio.
        from: Uuid,
        /// The samples.
        samples: Vec<i16>,
    },
    /// An encoded frame (in [`ReceiveMode::Encoded`]).
    EncodedFrame {
        /// Who sent it.
        from: Uuid,
        /// The frame.
        frame: EncodedFrame,
    },
    /// The remote asked for a keyframe. The session handles it for raw frames it encodes; an
    /// application sending its own encoded video ([`Session::send_encoded_video`](crate::session::Session::send_encoded_video)) should send
    /// a keyframe next.
    KeyframeRequested,
    /// A chat message.
    Chat {
        /// Who sent it.
        from: Uuid,
        /// The text.
        text: String,
    },
    /// An incoming chat message was refused (too long, not text).
    ChatRejected {
        /// Who sent it.
        from: Uuid,
        /// Why.
        reason: String,
    },
    /// File transfer offers, progress and results, on the connection with `peer` (a file
    /// offered to everyone is one transfer per participant).
    File {
        /// With whom.
        peer: Uuid,
        /// What happened.
        event: FileEvent,
    },
    /// Statistics of the connection with `peer`, once a second.
    Stats {
        /// With whom.
        peer: Uuid,
        /// The figures.
        stats: Stats,
    },
    /// End-to-end encryption with `peer` (keys are agreed per pair of participants): the SAS
    /// to compare with that person ([`E2eeEvent::SasReady`]), keys switched or installed.
    E2ee {
        /// With whom.
        peer: Uuid,
        /// What happened.
        event: E2eeEvent,
    },
    /// Whether the consultation is recorded now (show it to the person). While it is, the
    /// session also sends its media to the recorder.
    Recording(RecordingState),
    /// The consultation ended; the session is over.
    Ended,
    /// Something went wrong that the call survives (a bad datagram, a decode error).
    Warning(String),
    /// Our camera's video stepped down on a weak link or back up
    /// ([`crate::video_ladder`]); below [`Step::Full`](crate::video_ladder::Step::Full) an
    /// application says so (in audio only, a picture still goes every few seconds).
    VideoStep {
        /// The step now in force.
        step: crate::video_ladder::Step,
    },
}

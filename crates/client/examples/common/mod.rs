//! What the examples share: command-line options for joining, and printing events.
#![allow(dead_code)] // Each example uses a different part of this module.

use consult_client::peer::file_transfer::FileEvent;
use consult_client::peer::{PeerConfig, VideoCodec};
use consult_client::session::{SessionConfig, SessionEvent};
use consult_client::Credentials;
use consult_e2ee::E2eeEvent;

/// How to join.
#[derive(clap::Args, Debug, Clone)]
pub struct JoinArgs {
    /// The patient invite link (`https://host/join#token`).
    #[arg(long)]
    pub invite: String,
    /// Name shown to the doctor.
    #[arg(long, default_value = "Kiosk")]
    pub name: String,
    /// Only offer and accept this video codec (h264 or vp8).
    #[arg(long, value_parser = parse_codec)]
    pub codec: Option<VideoCodec>,
    /// Leave after this many seconds (default: stay until the consultation ends).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Print one JSON object per line instead of sentences.
    #[arg(long)]
    pub json: bool,
    /// Never agree end-to-end keys, even in an end-to-end encrypted consultation: this peer then
    /// receives only ciphertext (to show that it can see nothing).
    #[arg(long)]
    pub without_e2ee_keys: bool,
}

fn parse_codec(s: &str) -> Result<VideoCodec, String> {
    match s.to_ascii_lowercase().as_str() {
        "h264" => Ok(VideoCodec::H264),
        "vp8" => Ok(VideoCodec::Vp8),
        other => Err(format!("unknown codec {other:?} (h264 or vp8)")),
    }
}

impl JoinArgs {
    /// When to leave, if `--seconds` was given.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.seconds
            .map(|s| tokio::time::Instant::now() + std::time::Duration::from_secs(s))
    }

    /// The session configuration these options describe.
    pub fn session_config(&self) -> SessionConfig {
        let mut config = SessionConfig::new(Credentials::Patient {
            invite_url: self.invite.clone(),
            name: self.name.clone(),
        });
        if self.without_e2ee_keys {
            config.e2ee = Some(false);
        }
        if let Some(codec) = self.codec {
            config.peer = PeerConfig {
                video_codecs: vec![codec],
                ..config.peer
            };
        }
        config
    }
}

/// Counters the examples report.
#[derive(Debug, Default)]
pub struct Counters {
    pub video_decoded: u64,
    pub audio_decoded: u64,
    pub width: u32,
    pub height: u32,
}

/// Print an event, as JSON or as a sentence.
pub fn print_event(json: bool, event: &SessionEvent) {
    let value = match event {
        SessionEvent::Joined {
            participant_id,
            admitted,
            doctor_name,
        } => {
            serde_json::json!({ "event": "joined", "participant_id": participant_id, "admitted": admitted, "doctor": doctor_name })
        }
        SessionEvent::Admitted => serde_json::json!({ "event": "admitted" }),
        SessionEvent::Declined => serde_json::json!({ "event": "declined" }),
        SessionEvent::PeerJoined {
            participant_id,
            name,
            role,
        } => {
            serde_json::json!({ "event": "peer_joined", "participant_id": participant_id, "name": name, "role": role })
        }
        SessionEvent::PeerLeft { participant_id } => {
            serde_json::json!({ "event": "peer_left", "participant_id": participant_id })
        }
        SessionEvent::Connected { peer } => {
            serde_json::json!({ "event": "connected", "peer": peer })
        }
        SessionEvent::Disconnected { peer } => {
            serde_json::json!({ "event": "disconnected", "peer": peer })
        }
        SessionEvent::Chat { from, text } => {
            serde_json::json!({ "event": "chat", "from": from, "text": text })
        }
        SessionEvent::ChatRejected { from, reason } => {
            serde_json::json!({ "event": "chat_rejected", "from": from, "reason": reason })
        }
        SessionEvent::Ended => serde_json::json!({ "event": "ended" }),
        SessionEvent::Warning(message) => {
            serde_json::json!({ "event": "warning", "message": message })
        }
        SessionEvent::File {
            event: FileEvent::Offered { offer },
            ..
        } => {
            serde_json::json!({ "event": "file_offered", "name": offer.name, "size": offer.size, "mime": offer.mime })
        }
        SessionEvent::File {
            event: FileEvent::Received { offer, data },
            ..
        } => {
            use sha2::Digest;
            serde_json::json!({ "event": "file_received", "name": offer.name, "size": data.len(), "sha256": hex::encode(sha2::Sha256::digest(data)) })
        }
        SessionEvent::File {
            event: FileEvent::Failed { reason, .. },
            ..
        } => {
            serde_json::json!({ "event": "file_failed", "reason": reason.as_str() })
        }
        SessionEvent::File {
            event: FileEvent::Sent { id },
            ..
        } => {
            serde_json::json!({ "event": "file_delivered", "id": id })
        }
        SessionEvent::E2ee {
            peer,
            event: E2eeEvent::SasReady(sas),
        } => {
            serde_json::json!({ "event": "e2ee_sas", "peer": peer, "sas": sas.to_string() })
        }
        SessionEvent::E2ee {
            event: E2eeEvent::SendKeyActive { epoch },
            ..
        } => {
            serde_json::json!({ "event": "e2ee_send_key", "epoch": epoch })
        }
        SessionEvent::E2ee {
            event: E2eeEvent::ReceiveKeyInstalled { epoch },
            ..
        } => {
            serde_json::json!({ "event": "e2ee_receive_key", "epoch": epoch })
        }
        SessionEvent::E2ee {
            peer,
            event: E2eeEvent::Aborted { reason, by_remote },
        } => {
            serde_json::json!({ "event": "e2ee_aborted", "peer": peer, "reason": reason.name(), "by_remote": by_remote })
        }
        SessionEvent::Stats { peer, stats } => serde_json::json!({
            "event": "connection",
            "peer": peer,
            "rtt_ms": stats.rtt.map(|d| d.as_secs_f64() * 1000.0),
            "ingress_loss": stats.ingress_loss,
            "receive_kbps": stats.receive_bps / 1000,
            "send_kbps": stats.send_bps / 1000,
            "pair": stats.selected_pair.map(|(l, r)| format!("{l} -> {r}")),
            "frames_encoded": stats.frames_encoded,
            "frames_decoded": stats.frames_decoded,
            "jitter_ms": stats.video_jitter.map(|j| j * 1000.0),
            "e2ee": stats.e2ee.as_ref().map(|e| serde_json::json!({
                "protected": e.protected, "opened": e.opened,
                "dropped_without_key": e.dropped_without_key,
                "send_epoch": e.send_epoch, "receive_epoch": e.receive_epoch,
                "rejected": e.rejected.iter().map(|(r, n)| (r.name().to_string(), serde_json::json!(n)))
                    .collect::<serde_json::Map<_, _>>(),
            })),
        }),
        // Media and progress are summarised by the caller.
        _ => return,
    };
    if json {
        println!("{value}");
    } else {
        println!("{}", sentence(&value));
    }
}

fn sentence(value: &serde_json::Value) -> String {
    let event = value["event"].as_str().unwrap_or_default();
    let rest: Vec<String> = value
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| *k != "event")
                .map(|(k, v)| format!("{k}={v}"))
                .collect()
        })
        .unwrap_or_default();
    format!("{event:<14} {}", rest.join(" "))
}

/// Print the media counters.
pub fn print_counters(json: bool, counters: &Counters, codec: Option<VideoCodec>) {
    let codec = codec.map(|c| match c {
        VideoCodec::H264 => "h264",
        VideoCodec::Vp8 => "vp8",
    });
    if json {
        println!(
            "{}",
            serde_json::json!({ "event": "stats", "video_decoded": counters.video_decoded, "audio_decoded": counters.audio_decoded,
                "width": counters.width, "height": counters.height, "codec": codec })
        );
    } else {
        println!(
            "received       video={} frames ({}x{}, {}) audio={} frames",
            counters.video_decoded,
            counters.width,
            counters.height,
            codec.unwrap_or("-"),
            counters.audio_decoded
        );
    }
}

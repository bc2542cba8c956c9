//! An echo bot: joins as the patient and sends back what it receives — the video it decodes
//! (re-encoded), the audio, every chat message (prefixed `echo: `) and every file (accepted
//! automatically and offered back under the same name). Handy to test a browser on its own.
//!
//! ```text
//! cargo run --release -p consult-client --example echo-bot -- --invite 'http://127.0.0.1:8080/join#TOKEN' --name 'Echo bot'
//! ```

mod common;

use std::time::Duration;

use clap::Parser;
use common::{print_counters, print_event, Counters, JoinArgs};
use consult_client::peer::file_transfer::FileEvent;
use consult_client::session::{Session, SessionEvent};
use sha2::Digest;

/// Join as a patient and echo everything back.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    join: JoinArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let json = args.join.json;
    let mut session = Session::start(args.join.session_config()).await?;
    let mut report = tokio::time::interval(Duration::from_secs(1));
    let deadline = args.join.deadline();
    let mut counters = Counters::default();
    let mut codec = None;
    let mut echoing = std::collections::HashMap::new();
    loop {
        tokio::select! {
            event = session.next_event() => {
                let Some(event) = event else { break };
                print_event(json, &event);
                match event {
                    SessionEvent::Video { frame, codec: c, .. } => {
                        counters.video_decoded += 1;
                        (counters.width, counters.height) = (frame.width, frame.height);
                        codec = Some(c);
                        session.send_video(frame).await?;
                    }
                    SessionEvent::Audio { samples, .. } => {
                        counters.audio_decoded += 1;
                        // A packet may hold up to 120 ms; the encoder takes 20 ms frames.
                        for frame in samples.chunks_exact(consult_client::codec::opus::FRAME_SAMPLES) {
                            session.send_audio(frame.to_vec()).await?;
                        }
                    }
                    SessionEvent::Chat { text, .. } => {
                        if let Err(e) = session.send_chat(&format!("echo: {text}")).await {
                            print_event(json, &SessionEvent::Warning(format!("could not echo the chat: {e}")));
                        }
                    }
                    SessionEvent::File { event: FileEvent::Offered { offer }, .. } => session.accept_file(offer.id).await?,
                    SessionEvent::File { event: FileEvent::Received { offer, data }, .. } => {
                        let sha256 = hex::encode(sha2::Sha256::digest(&data));
                        match session.offer_file(&offer.name, &offer.mime, data).await {
                            Ok(ids) => {
                                for id in ids {
                                    echoing.insert(id, (offer.name.clone(), sha256.clone()));
                                }
                            }
                            Err(e) => print_event(json, &SessionEvent::Warning(format!("could not echo the file: {e}"))),
                        }
                    }
                    // Reported once the other side verified the echoed file.
                    SessionEvent::File { event: FileEvent::Sent { id }, .. } => {
                        if let Some((name, sha256)) = echoing.remove(&id) {
                            if json {
                                println!("{}", serde_json::json!({ "event": "file_sent", "name": name, "sha256": sha256 }));
                            } else {
                                println!("file_sent      name={name} sha256={sha256}");
                            }
                        }
                    }
                    SessionEvent::Ended | SessionEvent::Declined => break,
                    _ => {}
                }
            }
            _ = report.tick() => {
                print_counters(json, &counters, codec);
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    break;
                }
            }
        }
    }
    print_counters(json, &counters, codec);
    session.leave().await?;
    Ok(())
}

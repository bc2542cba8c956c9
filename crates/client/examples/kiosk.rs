//! A clinic kiosk: joins a consultation as the patient from an invite link, sends a moving test
//! pattern and a 440 Hz tone, and prints what it receives.
//!
//! ```text
//! cargo run --release -p consult-client --example kiosk -- --invite 'http://127.0.0.1:8080/join#TOKEN'
//! ```

mod common;

use std::time::Duration;

use clap::Parser;
use common::{print_counters, print_event, Counters, JoinArgs};
use consult_client::codec::pattern::{TestPattern, Tone};
use consult_client::session::{Session, SessionEvent};

/// Join as a patient and send a test pattern and a tone.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    join: JoinArgs,
    /// Video width.
    #[arg(long, default_value_t = 640)]
    width: u32,
    /// Video height.
    #[arg(long, default_value_t = 480)]
    height: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = args.join.session_config();
    config.video.width = args.width;
    config.video.height = args.height;
    let mut session = Session::start(config).await?;
    let mut pattern = TestPattern::new(args.width, args.height);
    let mut tone = Tone::new(440.0);
    let mut video = tokio::time::interval(Duration::from_millis(33));
    let mut audio = tokio::time::interval(Duration::from_millis(20));
    let mut report = tokio::time::interval(Duration::from_secs(1));
    let deadline = args.join.deadline();
    let mut counters = Counters::default();
    let mut codec = None;
    let mut connected = false;
    loop {
        tokio::select! {
            event = session.next_event() => {
                let Some(event) = event else { break };
                print_event(args.join.json, &event);
                match event {
                    SessionEvent::Connected { .. } => connected = true,
                    SessionEvent::Disconnected { .. } | SessionEvent::PeerLeft { .. } => connected = false,
                    SessionEvent::Video { frame, codec: c, .. } => {
                        counters.video_decoded += 1;
                        (counters.width, counters.height) = (frame.width, frame.height);
                        codec = Some(c);
                    }
                    SessionEvent::Audio { .. } => counters.audio_decoded += 1,
                    SessionEvent::Ended | SessionEvent::Declined => break,
                    _ => {}
                }
            }
            _ = video.tick(), if connected => session.send_video(pattern.next_frame()).await?,
            _ = audio.tick(), if connected => session.send_audio(tone.next_frame()).await?,
            _ = report.tick() => {
                if connected {
                    print_counters(args.join.json, &counters, codec);
                }
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    break;
                }
            }
        }
    }
    print_counters(args.join.json, &counters, codec);
    session.leave().await?;
    Ok(())
}

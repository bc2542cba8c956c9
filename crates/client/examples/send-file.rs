//! Send one file to the doctor: join as the patient, wait until admitted and connected, offer the
//! file, and exit once the doctor's side verified it (or declined).
//!
//! ```text
//! cargo run --release -p consult-client --example send-file -- --invite 'http://127.0.0.1:8080/join#TOKEN' scan.pdf
//! ```

mod common;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use common::{print_event, JoinArgs};
use consult_client::peer::file_transfer::FileEvent;
use consult_client::session::{Session, SessionEvent};
use sha2::Digest;

/// Join as a patient and send a file.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    join: JoinArgs,
    /// MIME type (default: guessed from the extension, else application/octet-stream).
    #[arg(long)]
    mime: Option<String>,
    /// The file.
    file: PathBuf,
}

fn guess_mime(path: &std::path::Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("pdf") => "application/pdf",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("txt") => "text/plain",
        _ => "application/octet-stream",
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let data = std::fs::read(&args.file)?;
    let name = args
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file")
        .to_owned();
    let mime = args
        .mime
        .clone()
        .unwrap_or_else(|| guess_mime(&args.file).to_owned());
    let sha256 = hex::encode(sha2::Sha256::digest(&data));
    let mut session = Session::start(args.join.session_config()).await?;
    let mut offered = None;
    let mut retry = tokio::time::interval(Duration::from_millis(200));
    let mut connected = false;
    let outcome = loop {
        tokio::select! {
            event = session.next_event() => {
                let Some(event) = event else { break Err(anyhow::anyhow!("the session ended")) };
                print_event(args.join.json, &event);
                match event {
                    SessionEvent::Connected { .. } => connected = true,
                    SessionEvent::File { event: FileEvent::Progress { bytes, total, .. }, .. } if !args.join.json => {
                        println!("progress       {bytes}/{total} bytes");
                    }
                    SessionEvent::File { event: FileEvent::Sent { .. }, .. } => break Ok(()),
                    SessionEvent::File { event: FileEvent::Failed { reason, .. }, .. } => break Err(anyhow::anyhow!("not delivered: {reason}")),
                    SessionEvent::Ended | SessionEvent::Declined => break Err(anyhow::anyhow!("the consultation ended first")),
                    _ => {}
                }
            }
            // The file channel opens shortly after the connection; offer once it takes it.
            _ = retry.tick(), if connected && offered.is_none() => {
                if let Ok(id) = session.offer_file(&name, &mime, data.clone()).await {
                    offered = Some(id);
                }
            }
        }
    };
    session.leave().await?;
    outcome?;
    if args.join.json {
        println!(
            "{}",
            serde_json::json!({ "event": "file_sent", "name": name, "size": data.len(), "sha256": sha256 })
        );
    } else {
        println!("delivered {name} ({} bytes, sha256 {sha256})", data.len());
    }
    Ok(())
}

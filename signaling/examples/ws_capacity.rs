//! How many admitted signaling participants one `consult` process holds with heartbeats on, and
//! its memory per connection. Bounded: a fixed number of consultations, a fixed hold time, loopback
//! only, and it stops by itself.
//!
//! ```text
//! cargo run --release -p consult-signaling --example ws_capacity -- --consultations 2000 --hold-secs 30
//! ```
//!
//! It starts `target/<profile>/consult serve` on 127.0.0.1 with a fresh data directory, seeds one
//! doctor per consultation (a doctor is in one call at a time) with a session written straight to
//! the database (sign-in is not what is measured), then over the real API and WebSocket: creates
//! each consultation, redeems its invite, joins doctor and patient, admits the patient, and keeps
//! every connection heartbeating for the hold time. It reports the server's resident memory before
//! and after, per connection, and any heartbeat that went unanswered.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use consult_proto::api::Consultation;
use consult_proto::signal::{
    decode_server_message, encode_client_message, ClientMessage, ServerMessage,
};
use consult_signaling::secrets::Token;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

struct Args {
    consultations: usize,
    hold: Duration,
    heartbeat: Duration,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        consultations: 1000,
        hold: Duration::from_secs(30),
        heartbeat: Duration::from_secs(5),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().context("every flag takes a value")?;
        match flag.as_str() {
            "--consultations" => args.consultations = value.parse()?,
            "--hold-secs" => args.hold = Duration::from_secs(value.parse()?),
            "--heartbeat-secs" => args.heartbeat = Duration::from_secs(value.parse()?),
            other => bail!("unknown flag {other}"),
        }
    }
    if args.consultations == 0 || args.consultations > 20_000 {
        bail!("--consultations must be 1..=20000");
    }
    if args.hold > Duration::from_secs(600) {
        bail!("--hold-secs must be at most 600");
    }
    Ok(args)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("bad VmRSS")?
        .parse()?)
}

/// Seed one doctor (with a live session) per consultation directly into the database.
async fn seed_doctors(data_dir: &std::path::Path, n: usize) -> anyhow::Result<Vec<String>> {
    let pool = consult_signaling::db::open(data_dir, None).await?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut tokens = Vec::with_capacity(n);
    let mut tx = pool.begin_write().await?;
    for i in 0..n {
        let user = Uuid::new_v4().to_string();
        consult_signaling::db::query("INSERT INTO users (id, email, display_name, role, created_at) VALUES (?, ?, ?, 'doctor', ?)")
            .bind(&user)
            .bind(format!("load{i}@consult.localhost"))
            .bind(format!("Dr Load {i}"))
            .bind(now)
            .execute(&mut tx)
            .await?;
        let token = Token::generate();
        consult_signaling::db::query(
            "INSERT INTO sessions (id, token_hash, user_id, created_at, last_seen_at, absolute_expires_at)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(token.hash().0)
        .bind(&user)
        .bind(now)
        .bind(now)
        .bind(now + 86_400)
        .execute(&mut tx)
        .await?;
        tokens.push(token.expose().to_owned());
    }
    tx.commit().await?;
    pool.close().await;
    Ok(tokens)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn recv_until(ws: &mut Ws, wanted: &str) -> anyhow::Result<ServerMessage> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .with_context(|| format!("waiting for {wanted}"))?
            .context("socket closed")??;
        if let Message::Text(text) = frame {
            let message = decode_server_message(&text)?;
            let value = serde_json::to_value(&message)?;
            if value["type"] == wanted {
                return Ok(message);
            }
            if value["type"] == "error" {
                bail!("error while waiting for {wanted}: {text}");
            }
        }
    }
}

async fn send(ws: &mut Ws, message: &ClientMessage) -> anyhow::Result<()> {
    ws.send(Message::Text(encode_client_message(message).into()))
        .await?;
    Ok(())
}

/// Heartbeat until `until`; count pings sent and pongs received.
async fn heartbeat(
    mut ws: Ws,
    until: Instant,
    every: Duration,
    sent: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if Instant::now() >= until {
                    let _ = ws.close(None).await;
                    return;
                }
                if send(&mut ws, &ClientMessage::Ping {}).await.is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) if text.contains("\"pong\"") => {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(_)) => {}
                _ => return,
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let sockets = (args.consultations * 2 + 256) as u64;
    rlimit::increase_nofile_limit(sockets * 2 + 1024).context("raising the open-file limit")?;

    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|p| p.parent())
        .context("target dir")?;
    let consult: PathBuf = profile_dir.join("consult");
    if !consult.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p consult-signaling)",
            consult.display()
        );
    }
    println!("seeding {} doctors", args.consultations);
    let tokens = seed_doctors(dir.path(), args.consultations).await?;

    let mut server = tokio::process::Command::new(&consult)
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env(
            "CONSULT_SIGNALING__HEARTBEAT_INTERVAL",
            format!("{}s", args.heartbeat.as_secs()),
        )
        .env(
            "CONSULT_SIGNALING__HEARTBEAT_TIMEOUT",
            format!("{}s", args.heartbeat.as_secs() * 3),
        )
        .env("CONSULT_SIGNALING__MAX_MESSAGES_PER_SECOND", "50")
        // Every connection comes from this one address: lift the per-address limits.
        .env("CONSULT_LIMITS__MAX_CONNECTIONS_PER_ADDRESS", "1000000")
        .env("CONSULT_LIMITS__MAX_CONNECTIONS", "1000000")
        .env("CONSULT_SIGNALING__MAX_UNJOINED_SOCKETS", "1000000")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = server.id().context("server pid")?;
    let mut lines = BufReader::new(server.stdout.take().context("stdout")?).lines();
    let base = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await??
            .context("server exited")?;
        if let Some(url) = line.strip_prefix("Consult is running at ") {
            break url.trim_end_matches('/').to_owned();
        }
    };
    let ws_url = format!("{}/api/v1/signal", base.replacen("http", "ws", 1));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_kib(pid)?;

    let http = reqwest::Client::new();
    let sent = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let admitted = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    // Join in waves, so the setup does not measure a thundering herd.
    let semaphore = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for token in tokens {
        let (http, ws_url, base) = (http.clone(), ws_url.clone(), base.clone());
        let (sent, answered, admitted, failures) = (
            sent.clone(),
            answered.clone(),
            admitted.clone(),
            failures.clone(),
        );
        let semaphore = semaphore.clone();
        let heartbeat_every = args.heartbeat;
        let hold = args.hold;
        tasks.push(tokio::spawn(async move {
            let setup = async {
                let _permit = semaphore.acquire().await?;
                let consultation: Consultation = http
                    .post(format!("{base}/api/v1/consultations"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({}))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let invite = consultation
                    .invite_url
                    .as_deref()
                    .and_then(|u| u.split_once('#'))
                    .context("invite")?
                    .1
                    .to_owned();
                let redeemed: serde_json::Value = http
                    .post(format!("{base}/api/v1/invites/redeem"))
                    .json(&serde_json::json!({ "invite": invite, "name": "Load patient" }))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let participant_token = redeemed["participant_token"]
                    .as_str()
                    .context("token")?
                    .to_owned();
                let participant_id: Uuid =
                    redeemed["participant_id"].as_str().context("id")?.parse()?;
                let (mut doctor, _) = tokio_tungstenite::connect_async(&ws_url).await?;
                send(
                    &mut doctor,
                    &ClientMessage::Join {
                        token: Some(token.clone()),
                        consultation_id: Some(consultation.id),
                    },
                )
                .await?;
                recv_until(&mut doctor, "joined").await?;
                let (mut patient, _) = tokio_tungstenite::connect_async(&ws_url).await?;
                send(
                    &mut patient,
                    &ClientMessage::Join {
                        token: Some(participant_token),
                        consultation_id: None,
                    },
                )
                .await?;
                recv_until(&mut patient, "joined").await?;
                send(&mut doctor, &ClientMessage::Admit { participant_id }).await?;
                recv_until(&mut patient, "admitted").await?;
                recv_until(&mut doctor, "peer_joined").await?;
                anyhow::Ok((doctor, patient))
            };
            match setup.await {
                Ok((doctor, patient)) => {
                    admitted.fetch_add(2, Ordering::Relaxed);
                    let until = Instant::now() + hold;
                    let d = tokio::spawn(heartbeat(
                        doctor,
                        until,
                        heartbeat_every,
                        sent.clone(),
                        answered.clone(),
                    ));
                    let p =
                        tokio::spawn(heartbeat(patient, until, heartbeat_every, sent, answered));
                    let _ = tokio::join!(d, p);
                }
                Err(e) => {
                    if failures.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("setup failed: {e:#}");
                    }
                }
            }
        }));
    }
    // Sample memory while everyone is connected and heartbeating.
    let mut peak_rss = rss_before;
    let mut all_in_at = None;
    let deadline = Instant::now() + Duration::from_secs(300) + args.hold;
    while tasks.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        peak_rss = peak_rss.max(rss_kib(pid)?);
        let done = admitted.load(Ordering::Relaxed) + failures.load(Ordering::Relaxed) * 2;
        if all_in_at.is_none() && done >= (args.consultations * 2) as u64 {
            all_in_at = Some(started.elapsed());
        }
    }
    for task in tasks {
        task.abort();
    }
    let token = std::fs::read_to_string(dir.path().join("keys/metrics.token"))?;
    let metrics = http
        .get(format!("{base}/metrics"))
        .bearer_auth(token.trim())
        .send()
        .await?
        .text()
        .await?;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(10), server.wait()).await;

    let participants = admitted.load(Ordering::Relaxed);
    let (sent, answered) = (
        sent.load(Ordering::Relaxed),
        answered.load(Ordering::Relaxed),
    );
    println!("consultations requested:   {}", args.consultations);
    println!(
        "admitted participants:      {participants} (failed setups: {})",
        failures.load(Ordering::Relaxed)
    );
    println!(
        "all joined and admitted in: {:.1} s",
        all_in_at.unwrap_or_default().as_secs_f64()
    );
    println!(
        "heartbeats:                 {sent} sent, {answered} answered, every {} s for {} s",
        args.heartbeat.as_secs(),
        args.hold.as_secs()
    );
    println!(
        "server RSS:                 {:.1} MiB idle -> {:.1} MiB peak",
        rss_before as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    if participants > 0 {
        println!(
            "memory per connection:      {:.1} KiB",
            (peak_rss.saturating_sub(rss_before)) as f64 / participants as f64
        );
    }
    let rejected: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("consult_signal_rejected_total"))
        .collect();
    println!(
        "rejected messages:          {}",
        if rejected.is_empty() {
            "none".to_owned()
        } else {
            rejected.join(", ")
        }
    );
    if participants < (args.consultations * 2) as u64 || answered + 2 * participants < sent {
        bail!("not every participant held: see above");
    }
    Ok(())
}

//! Relay only: coturn from Debian, started here on loopback with `use-auth-secret` and the
//! service's shared secret. Two native peers forced to relay connect through it and exchange
//! media; the selected candidate pair is on coturn's relay ports.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use consult_client::codec::pattern::TestPattern;
use consult_client::session::{Session, SessionConfig, SessionEvent};
use consult_client::Credentials;
use consult_e2e::Clinic;

const SECRET: &str = "a-shared-secret-for-turn-tests";
const RELAY_PORTS: std::ops::RangeInclusive<u16> = 51000..=51999;

struct Coturn {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_coturn() -> Coturn {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let dir = tempfile::tempdir().expect("dir");
    let child = Command::new("turnserver")
        .args([
            "-n",
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            "--use-auth-secret",
            "--realm=consult.test",
        ])
        .args([
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--allow-loopback-peers",
            "--log-file=stdout",
            "--simple-log",
        ])
        .arg(format!("--listening-port={port}"))
        .arg(format!("--static-auth-secret={SECRET}"))
        .arg(format!("--min-port={}", RELAY_PORTS.start()))
        .arg(format!("--max-port={}", RELAY_PORTS.end()))
        .arg(format!("--pidfile={}", dir.path().join("pid").display()))
        .arg(format!("--userdb={}", dir.path().join("db").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("coturn's turnserver is installed (apt-get install coturn)");
    // Ready when its UDP port is bound.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "coturn did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Coturn {
        child,
        port,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_native_peers_forced_to_relay_talk_through_coturn() {
    let coturn = start_coturn();
    let clinic = Clinic::start_with(|config| {
        config.ice.turn_urls = vec![format!("turn:127.0.0.1:{}?transport=udp", coturn.port)];
        config.ice.turn_shared_secret = Some(SECRET.into());
        config.ice.relay_only = true;
    })
    .await;
    let (consultation, invite) = clinic.consultation().await;
    let session = |credentials| {
        let mut config = SessionConfig::new(credentials);
        config.bind_ips = vec!["127.0.0.1".parse().expect("ip")];
        config.video.width = 320;
        config.video.height = 240;
        Session::start(config)
    };
    let mut patient = session(Credentials::Patient {
        invite_url: invite,
        name: "Relay patient".into(),
    })
    .await
    .expect("patient");
    let mut doctor = session(Credentials::Clinician {
        base_url: clinic.base.clone(),
        token: clinic.token.clone(),
        consultation_id: consultation.id,
    })
    .await
    .expect("doctor");
    clinic.admit_first_waiting(&consultation).await;

    let mut pattern = TestPattern::new(320, 240);
    let (mut connected, mut frames, mut relayed_pair) = (false, 0, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut tick = tokio::time::interval(Duration::from_millis(33));
    while frames < 30 || relayed_pair.is_none() {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => panic!("no media through the relay: connected={connected} frames={frames}"),
            _ = tick.tick(), if connected => patient.send_video(pattern.next_frame()).await.expect("send"),
            event = patient.next_event() => match event.expect("patient session") {
                SessionEvent::Connected { .. } => connected = true,
                SessionEvent::Stats { stats, .. } => {
                    if let Some((local, remote)) = stats.selected_pair {
                        // Both ends of the pair are allocations on coturn's relay ports.
                        if RELAY_PORTS.contains(&local.port()) && RELAY_PORTS.contains(&remote.port()) {
                            relayed_pair = Some((local, remote));
                        }
                    }
                }
                _ => {}
            },
            event = doctor.next_event() => {
                if let SessionEvent::Video { .. } = event.expect("doctor session") {
                    frames += 1;
                }
            }
        }
    }
    println!("relayed pair: {relayed_pair:?}; {frames} frames decoded by the doctor");
    patient.leave().await.expect("leave");
    doctor.leave().await.expect("leave");
}

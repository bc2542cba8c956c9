//! Relay only: coturn from Debian, started here on loopback with `use-auth-secret` and the
//! service's shared secret. Two native peers forced to relay connect through it and exchange
//! media; the selected candidate pair is on coturn's relay ports. The peers reach coturn over
//! UDP, over TCP, and over TLS on port 443 with a certificate chain made here (root,
//! intermediate, server); a relay whose certificate is not trusted or not for its name is
//! refused with the reason, an unreachable relay is skipped for the next, and when none can be
//! used a relay-only session fails with every server's reason within the allocation timeout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use consult_client::codec::pattern::TestPattern;
use consult_client::relay::ALLOCATION_TIMEOUT;
use consult_client::session::{Session, SessionConfig, SessionError, SessionEvent};
use consult_client::Credentials;
use consult_e2e::Clinic;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

pub(crate) const SECRET: &str = "a-shared-secret-for-turn-tests";
pub(crate) const RELAY_PORTS: std::ops::RangeInclusive<u16> = 51000..=51999;

pub(crate) struct Coturn {
    child: Child,
    pub(crate) ip: IpAddr,
    /// UDP and TCP.
    pub(crate) port: u16,
    tls_port: Option<u16>,
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Coturn {
    /// Kill it and start it again on the same addresses: every allocation is gone, and every
    /// TCP or TLS connection to it ends.
    pub(crate) fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_coturn(&self.args);
        wait_for_coturn(self.ip, self.port, self.tls_port);
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_coturn(args: &[String]) -> Child {
    Command::new("turnserver")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("coturn's turnserver is installed (apt-get install coturn)")
}

/// Ready when its UDP port is bound and its TLS port accepts.
fn wait_for_coturn(ip: IpAddr, port: u16, tls_port: Option<u16>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while UdpSocket::bind((ip, port)).is_ok()
        || tls_port.is_some_and(|p| std::net::TcpStream::connect((ip, p)).is_err())
    {
        assert!(Instant::now() < deadline, "coturn did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A loopback address of its own for each test (coturn on 443 in two tests at once would
/// otherwise collide).
fn own_loopback_ip() -> IpAddr {
    let n: u32 = rand::random::<u32>() % 0x00ff_fffe + 1;
    IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | n))
}

/// A port free for both UDP and TCP on `ip`.
fn free_port(ip: IpAddr) -> u16 {
    loop {
        let udp = UdpSocket::bind((ip, 0)).expect("free UDP port");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

/// Start coturn on `ip`; with `tls` (certificate chain file, key file, port), TLS too.
pub(crate) fn start_coturn(ip: IpAddr, tls: Option<(&Path, &Path, u16)>) -> Coturn {
    start_coturn_with(ip, tls, &[])
}

/// [`start_coturn`] with more of coturn's options.
pub(crate) fn start_coturn_with(
    ip: IpAddr,
    tls: Option<(&Path, &Path, u16)>,
    extra: &[&str],
) -> Coturn {
    let port = free_port(ip);
    let dir = tempfile::tempdir().expect("dir");
    let mut args: Vec<String> = [
        "-n",
        "--use-auth-secret",
        "--realm=consult.test",
        "--no-dtls",
        "--no-cli",
        "--allow-loopback-peers",
        "--log-file=stdout",
        "--simple-log",
    ]
    .map(String::from)
    .to_vec();
    args.extend([
        format!("--listening-ip={ip}"),
        format!("--relay-ip={ip}"),
        format!("--listening-port={port}"),
        format!("--static-auth-secret={SECRET}"),
        format!("--min-port={}", RELAY_PORTS.start()),
        format!("--max-port={}", RELAY_PORTS.end()),
        format!("--pidfile={}", dir.path().join("pid").display()),
        format!("--userdb={}", dir.path().join("db").display()),
    ]);
    args.extend(extra.iter().map(|a| a.to_string()));
    match tls {
        Some((cert, key, tls_port)) => args.extend([
            format!("--cert={}", cert.display()),
            format!("--pkey={}", key.display()),
            format!("--tls-listening-port={tls_port}"),
        ]),
        None => args.push("--no-tls".into()),
    }
    let child = spawn_coturn(&args);
    let tls_port = tls.map(|(_, _, p)| p);
    wait_for_coturn(ip, port, tls_port);
    Coturn {
        child,
        ip,
        port,
        tls_port,
        args,
        _dir: dir,
    }
}

/// A certificate chain made for one test: a root, an intermediate, and a server certificate
/// for `names`, written where coturn reads them.
pub(crate) struct Pki {
    pub(crate) root_pem: String,
    pub(crate) chain: PathBuf,
    pub(crate) key: PathBuf,
    _dir: tempfile::TempDir,
}

pub(crate) fn make_pki(names: &[&str]) -> Pki {
    let ca = |name: &str, constraint| {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(constraint);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
    };
    let root = CertifiedIssuer::self_signed(
        ca("Consult test root", BasicConstraints::Unconstrained),
        KeyPair::generate().expect("key"),
    )
    .expect("root");
    let intermediate = CertifiedIssuer::signed_by(
        ca("Consult test relays", BasicConstraints::Constrained(0)),
        KeyPair::generate().expect("key"),
        &root,
    )
    .expect("intermediate");
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].to_owned());
    let server = params.signed_by(&key, &intermediate).expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let chain = dir.path().join("chain.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&chain, format!("{}{}", server.pem(), intermediate.pem())).expect("chain");
    std::fs::write(&key_file, key.serialize_pem()).expect("key");
    Pki {
        root_pem: root.pem(),
        chain,
        key: key_file,
        _dir: dir,
    }
}

/// A relay-only consultation whose ICE servers are `turn_urls`.
async fn relay_clinic(turn_urls: Vec<String>) -> Clinic {
    Clinic::start_with(|config| {
        config.ice.turn_urls = turn_urls;
        config.ice.turn_shared_secret = Some(SECRET.into());
        config.ice.relay_only = true;
    })
    .await
}

fn session_config(credentials: Credentials, extra_ca: Option<&str>) -> SessionConfig {
    let mut config = SessionConfig::new(credentials);
    config.bind_ips = vec!["127.0.0.1".parse().expect("ip")];
    config.video.width = 320;
    config.video.height = 240;
    config.extra_ca_pem = extra_ca.map(|pem| pem.as_bytes().to_vec());
    config
}

/// A native patient and doctor in a new consultation of `clinic`, the patient admitted.
async fn patient_and_doctor(clinic: &Clinic, extra_ca: Option<&str>) -> (Session, Session) {
    let (consultation, invite) = clinic.consultation().await;
    let patient = Session::start(session_config(
        Credentials::Patient {
            invite_url: invite,
            name: "Relay patient".into(),
        },
        extra_ca,
    ))
    .await
    .expect("patient");
    let doctor = Session::start(session_config(
        Credentials::Clinician {
            base_url: clinic.base.clone(),
            token: clinic.token.clone(),
            consultation_id: consultation.id,
        },
        extra_ca,
    ))
    .await
    .expect("doctor");
    clinic.admit_first_waiting(&consultation).await;
    (patient, doctor)
}

/// A patient and a doctor in a relay-only consultation: the patient's video reaches the doctor
/// through coturn. Returns the relayed pair the patient selected.
async fn call_through_the_relay(
    clinic: &Clinic,
    extra_ca: Option<&str>,
) -> (SocketAddr, SocketAddr) {
    let (mut patient, mut doctor) = patient_and_doctor(clinic, extra_ca).await;

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
    relayed_pair.expect("a relayed pair")
}

/// A relay-only patient session that cannot start: its error, and how long it took.
async fn relay_only_start_error(clinic: &Clinic, extra_ca: Option<&str>) -> (String, Duration) {
    let (_, invite) = clinic.consultation().await;
    let started = Instant::now();
    let result = Session::start(session_config(
        Credentials::Patient {
            invite_url: invite,
            name: "Relay patient".into(),
        },
        extra_ca,
    ))
    .await;
    match result {
        Err(e @ SessionError::Network(_)) => (e.to_string(), started.elapsed()),
        Err(e) => panic!("expected a network error, got {e}"),
        Ok(_) => panic!("the session started without a usable relay"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_native_peers_forced_to_relay_talk_through_coturn() {
    let coturn = start_coturn(own_loopback_ip(), None);
    let clinic = relay_clinic(vec![format!(
        "turn:{}:{}?transport=udp",
        coturn.ip, coturn.port
    )])
    .await;
    let (local, _) = call_through_the_relay(&clinic, None).await;
    assert_eq!(local.ip(), coturn.ip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_peers_reach_the_relay_over_tcp() {
    let coturn = start_coturn(own_loopback_ip(), None);
    let clinic = relay_clinic(vec![format!(
        "turn:{}:{}?transport=tcp",
        coturn.ip, coturn.port
    )])
    .await;
    let (local, _) = call_through_the_relay(&clinic, None).await;
    assert_eq!(local.ip(), coturn.ip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_peers_reach_the_relay_over_tls_on_443_with_a_chain_the_test_made() {
    let ip = own_loopback_ip();
    let pki = make_pki(&[&ip.to_string()]);
    let _coturn = start_coturn(ip, Some((&pki.chain, &pki.key, 443)));
    let clinic = relay_clinic(vec![format!("turns:{ip}:443?transport=tcp")]).await;
    // The service hands out nothing but this turns: URL and the call is relay-only, so the
    // media went through coturn's TLS listener on 443.
    let (local, _) = call_through_the_relay(&clinic, Some(&pki.root_pem)).await;
    assert_eq!(local.ip(), ip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_certificate_is_not_trusted_or_not_for_it_is_refused_with_the_reason() {
    let ip = own_loopback_ip();
    let pki = make_pki(&[&ip.to_string()]);
    let tls_port = free_port(ip);
    let _coturn = start_coturn(ip, Some((&pki.chain, &pki.key, tls_port)));
    let clinic = relay_clinic(vec![format!("turns:{ip}:{tls_port}")]).await;
    // Its root is not ours.
    let (error, _) = relay_only_start_error(&clinic, None).await;
    assert!(
        error.contains(&format!("turns:{ip}:{tls_port}"))
            && error.contains("TLS with")
            && error.contains("UnknownIssuer"),
        "{error}"
    );
    // A chain we trust, but for another name.
    let other = make_pki(&["relay.other.test"]);
    let other_port = free_port(ip);
    let _other_coturn = start_coturn(ip, Some((&other.chain, &other.key, other_port)));
    let clinic = relay_clinic(vec![format!("turns:{ip}:{other_port}")]).await;
    let (error, _) = relay_only_start_error(&clinic, Some(&other.root_pem)).await;
    assert!(error.contains("certificate not valid for name"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_tls_relay_is_skipped_for_the_next_in_order() {
    let ip = own_loopback_ip();
    let coturn = start_coturn(ip, None);
    // Nothing listens on the first one's port.
    let closed = free_port(ip);
    let clinic = relay_clinic(vec![
        format!("turns:{ip}:{closed}"),
        format!("turn:{ip}:{}?transport=tcp", coturn.port),
    ])
    .await;
    let (local, _) = call_through_the_relay(&clinic, None).await;
    assert_eq!(local.ip(), ip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_usable_relay_a_relay_only_session_fails_clearly_within_the_timeout() {
    let ip = own_loopback_ip();
    // One refuses connections; one accepts and never answers; one swallows UDP.
    let refused = free_port(ip);
    let silent_tcp = TcpListener::bind((ip, 0)).expect("listener");
    let silent_udp = UdpSocket::bind((ip, 0)).expect("socket");
    let urls = vec![
        format!("turns:{ip}:{refused}"),
        format!(
            "turn:{ip}:{}?transport=tcp",
            silent_tcp.local_addr().expect("addr").port()
        ),
        format!(
            "turn:{ip}:{}?transport=udp",
            silent_udp.local_addr().expect("addr").port()
        ),
    ];
    let clinic = relay_clinic(urls.clone()).await;
    let (error, took) = relay_only_start_error(&clinic, None).await;
    println!("no relay: {error} (after {took:?})");
    assert!(
        error.starts_with("relay only, but no TURN server could be used"),
        "{error}"
    );
    for url in &urls {
        assert!(error.contains(url.as_str()), "{url} is named: {error}");
    }
    assert!(error.contains("cannot reach"), "{error}");
    assert!(error.contains("within"), "{error}");
    // All at once, each within the allocation timeout: no hang, and not one timeout after
    // another (two of them time out).
    assert!(took < 2 * ALLOCATION_TIMEOUT, "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_are_renewed_before_they_expire_so_a_relay_restart_mid_call_is_survived() {
    // Credentials valid for 8 s. coturn keeps an allocation made with valid credentials alive
    // after they expire, but every new allocation checks them. 20 s in (long after the first
    // credentials expired), coturn restarts: every allocation and TCP connection is gone, and
    // the call can only go on if the client allocates again with renewed credentials.
    let mut coturn = start_coturn(own_loopback_ip(), None);
    let clinic = Clinic::start_with(|config| {
        config.ice.turn_urls = vec![format!("turn:{}:{}?transport=tcp", coturn.ip, coturn.port)];
        config.ice.turn_shared_secret = Some(SECRET.into());
        config.ice.relay_only = true;
        config.ice.turn_credential_ttl = Duration::from_secs(8);
    })
    .await;
    let (mut patient, mut doctor) = patient_and_doctor(&clinic, None).await;

    let mut pattern = TestPattern::new(320, 240);
    let mut connected = false;
    let mut relayed_ports = std::collections::BTreeSet::new();
    let mut frames: Vec<Instant> = Vec::new();
    let start = tokio::time::Instant::now();
    let restart_at = start + Duration::from_secs(20);
    let mut restarted = None;
    let end = start + Duration::from_secs(35);
    let mut tick = tokio::time::interval(Duration::from_millis(66));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => break,
            _ = tokio::time::sleep_until(restart_at), if restarted.is_none() => {
                coturn.restart();
                restarted = Some(Instant::now());
            }
            _ = tick.tick(), if connected => patient.send_video(pattern.next_frame()).await.expect("send"),
            event = patient.next_event() => match event.expect("patient session") {
                SessionEvent::Connected { .. } => connected = true,
                SessionEvent::Stats { stats, .. } => {
                    if let Some((local, _)) = stats.selected_pair {
                        relayed_ports.insert(local.port());
                    }
                }
                _ => {}
            },
            event = doctor.next_event() => {
                if let SessionEvent::Video { .. } = event.expect("doctor session") {
                    frames.push(Instant::now());
                }
            }
        }
    }
    let restarted = restarted.expect("coturn restarted");
    let back = frames
        .iter()
        .find(|f| **f > restarted + Duration::from_millis(500));
    let last = frames.last().map(|f| f.elapsed());
    println!(
        "renewals: relayed ports {relayed_ports:?}; video back {:?} after coturn restarted; the last frame {last:?} before the end",
        back.map(|b| b.saturating_duration_since(restarted))
    );
    // Renewed allocations were taken into use (one port each; renewals every 6 s), and after
    // the relay's restart, with the first credentials long expired, video came back.
    assert!(relayed_ports.len() >= 3, "{relayed_ports:?}");
    assert!(
        last.is_some_and(|l| l < Duration::from_secs(2)),
        "video arrives again after the relay restarted: last frame {last:?} before the end"
    );
    patient.leave().await.expect("leave");
    doctor.leave().await.expect("leave");
}

//! Test harness: a real service on a loopback port with a manual clock, real HTTP and WebSocket
//! clients, and doctors enrolled through the same API a person uses.
//!
//! Well-formed calls go through the typed client every Rust caller uses (`consult-api-client`);
//! raw HTTP stays where a test needs what a typed client cannot send or see — cookies and CSRF,
//! malformed and hostile bodies, exact status codes.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use consult_api_client::{ApiClient, ApiError, PatientPlace, SignalConnection};
use consult_proto::api::{
    Consultation, CreateConsultationRequest, EnrolRequest, LoginRequest, LoginResponse,
    MfaEnrolResponse, Role,
};
use consult_proto::signal::{ClientMessage, ServerMessage};
use consult_signaling::accounts::{self, NewUser};
use consult_signaling::auth::totp;
use consult_signaling::clock::{Clock, ManualClock};
use consult_signaling::config::Config;
use consult_signaling::server::{self, RunningServer};
use reqwest::StatusCode;
use serde_json::{json, Value};

pub struct TestService {
    pub running: RunningServer,
    pub clock: ManualClock,
    pub base: String,
    /// The typed client of its API.
    pub api: ApiClient,
    config: Config,
    /// The data directory, shared by every node started with [`TestService::another_node`].
    dir: Arc<tempfile::TempDir>,
}

/// The PostgreSQL server the tests run against instead of SQLite, when `CONSULT_TEST_POSTGRES`
/// names one (`scripts/test.sh` runs the service tests a second time so): each test service gets
/// a database of its own on it, as it gets a data directory of its own.
pub fn test_postgres() -> Option<String> {
    std::env::var("CONSULT_TEST_POSTGRES")
        .ok()
        .filter(|url| !url.is_empty())
}

/// A new, empty database on the test PostgreSQL server; `None` when the tests run on SQLite.
pub async fn fresh_postgres_database() -> Option<String> {
    use sqlx::Connection;
    let server = test_postgres()?;
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::postgres::PgConnection::connect(&server)
        .await
        .expect("the test PostgreSQL server (CONSULT_TEST_POSTGRES) answers");
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let (base, _) = server.rsplit_once('/').unwrap();
    Some(format!("{base}/{name}"))
}

/// A real `redis-server` (Debian's) on a free loopback port, with nothing kept on disk; stopped
/// when dropped.
pub struct TestRedis {
    child: std::process::Child,
    pub port: u16,
}

impl TestRedis {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::on_port(port)
    }

    fn on_port(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package) runs");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kill it (everything it held is gone, as after a crash without persistence) and start a
    /// new one on the same port.
    pub fn restart(&mut self) {
        self.stop();
        *self = Self::on_port(self.port);
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

impl TestService {
    /// The first node of a deployment on `redis` (then [`TestService::another_node`] for more),
    /// with a short lease so that failover tests run in seconds.
    pub async fn start_clustered(redis: &TestRedis) -> Self {
        let url = redis.url();
        Self::start_with(move |c| {
            c.cluster.redis_url = Some(url);
            c.cluster.lease = Duration::from_millis(1500);
        })
        .await
    }

    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            bind: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            log: "warn".into(),
            database_url: fresh_postgres_database().await,
            ..Config::default()
        };
        tweak(&mut config);
        Self::launch(config, ManualClock::starting_now(), Arc::new(dir)).await
    }

    /// A second node of the same deployment: the same database, data directory (keys, vault)
    /// and clock, its own address and memory — as a node beside this one behind a load balancer.
    pub async fn another_node(&self) -> Self {
        let mut config = self.config.clone();
        config.bind = "127.0.0.1:0".parse().unwrap();
        config.public_url = None;
        Self::launch(config, self.clock.clone(), self.dir.clone()).await
    }

    async fn launch(config: Config, clock: ManualClock, dir: Arc<tempfile::TempDir>) -> Self {
        let running = server::start(config.clone(), Arc::new(clock.clone()))
            .await
            .unwrap();
        let base = running.url.clone();
        let api = ApiClient::new(&base).unwrap();
        Self {
            running,
            clock,
            base,
            api,
            config,
            dir,
        }
    }

    /// Stop the service as a deploy does (every socket told to go away) and start it again on
    /// the same data directory, address and clock.
    pub async fn restart(self) -> Self {
        let Self {
            running,
            clock,
            base,
            mut config,
            dir,
            ..
        } = self;
        config.bind = running.addr;
        running.shutdown(Duration::from_secs(1)).await.unwrap();
        let again = Self::launch(config, clock, dir).await;
        assert_eq!(again.base, base, "the same address");
        again
    }

    /// Stop the service, run `between` on its configuration (an operator's command on a stopped
    /// service: key rotation), and start it again on the same data directory, address and
    /// clock.
    pub async fn restart_after<F, Fut>(self, between: F) -> Self
    where
        F: FnOnce(Config) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let Self {
            running,
            clock,
            base,
            mut config,
            dir,
            ..
        } = self;
        config.bind = running.addr;
        running.shutdown(Duration::from_secs(1)).await.unwrap();
        between(config.clone()).await;
        let again = Self::launch(config, clock, dir).await;
        assert_eq!(again.base, base, "the same address");
        again
    }

    /// Stop this node at once, as a killed process stops (see `RunningServer::stop_now`).
    pub async fn kill(self) {
        self.running.stop_now().await;
    }

    /// Stop this node at once and hand back its data directory (kept while the handle lives;
    /// in this process its vault stays open).
    pub async fn stop(self) -> Arc<tempfile::TempDir> {
        self.running.stop_now().await;
        self.dir
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The signaling endpoint, for tests that open the WebSocket by hand (a foreign `Origin`).
    pub fn ws_url(&self) -> String {
        format!("{}/api/v1/signal", self.base.replacen("http", "ws", 1))
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn state(&self) -> &consult_signaling::state::AppState {
        &self.running.state
    }

    pub fn now_unix(&self) -> u64 {
        self.clock.now().unix_timestamp() as u64
    }

    /// Create an account the way an operator does, and return its enrolment token.
    pub async fn create_account(&self, email: &str, role: Role) -> String {
        let state = self.state();
        let new = NewUser {
            email: email.into(),
            display_name: format!("Dr {}", email.split('@').next().unwrap()),
            role,
            licence_number: (role == Role::Doctor)
                .then(|| format!("LIC-{}", email.split('@').next().unwrap())),
        };
        let created = accounts::create_user(
            &state.pool,
            &state.audit,
            self.clock.now(),
            &new,
            &self.base,
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
        created.enrolment_url.split_once('#').unwrap().1.to_owned()
    }

    /// A doctor enrolled through the API: password, TOTP enrolment, recovery codes, session.
    pub async fn doctor(&self, email: &str) -> Doctor {
        self.enrolled(email, Role::Doctor).await
    }

    /// An account of `role` enrolled through the API, signed in on its own device.
    pub async fn enrolled(&self, email: &str, role: Role) -> Doctor {
        let token = self.create_account(email, role).await;
        let client = http_client();
        let password = "a long enough password".to_owned();
        self.api
            .enrol(&EnrolRequest {
                token,
                password: password.clone(),
            })
            .await
            .unwrap();
        let login = LoginRequest {
            email: email.into(),
            password: password.clone(),
            totp: None,
            recovery_code: None,
        };
        let LoginResponse::MfaEnrolmentRequired { enrolment } =
            self.api.login(&login).await.unwrap()
        else {
            panic!("expected MFA enrolment")
        };
        // The last step by hand: its cookie goes into this doctor's cookie jar.
        let code = totp::code_at(&enrolment.totp_secret, self.now_unix()).unwrap();
        let r = client
            .post(self.url("/api/v1/auth/mfa/enrol"))
            .json(&json!({ "mfa_token": enrolment.mfa_token, "totp": code }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let enrolled: MfaEnrolResponse = r.json().await.unwrap();
        Doctor {
            email: email.into(),
            password,
            totp_secret: enrolment.totp_secret,
            token: enrolled.session.token.clone().unwrap(),
            csrf: enrolled.session.csrf_token.clone(),
            recovery_codes: enrolled.recovery_codes,
            client,
            api: self.api.clone(),
            base: self.base.clone(),
        }
    }

    /// Move the clock past the current TOTP step, so a new code can be used.
    pub fn next_totp_step(&self) {
        self.clock.advance(Duration::from_secs(totp::STEP_SECS));
    }

    pub async fn login(
        &self,
        email: &str,
        password: &str,
        totp_code: Option<&str>,
    ) -> reqwest::Response {
        let mut body = json!({ "email": email, "password": password });
        if let Some(code) = totp_code {
            body["totp"] = json!(code);
        }
        http_client()
            .post(self.url("/api/v1/auth/login"))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// `POST /api/v1/invites/inspect` for this invite token.
    pub async fn inspect(&self, invite: &str) -> reqwest::Response {
        http_client()
            .post(self.url("/api/v1/invites/inspect"))
            .json(&json!({ "invite": invite }))
            .send()
            .await
            .unwrap()
    }

    pub async fn redeem(&self, invite: &str, name: &str) -> reqwest::Response {
        http_client()
            .post(self.url("/api/v1/invites/redeem"))
            .json(&json!({ "invite": invite, "name": name }))
            .send()
            .await
            .unwrap()
    }

    /// A patient's place from redeeming this invite token.
    pub async fn patient(&self, invite: &str, name: &str) -> PatientPlace {
        self.api.redeem_invite(invite, name).await.unwrap()
    }

    /// `/metrics`, with the service's metrics token.
    pub async fn metrics(&self) -> String {
        let r = reqwest::Client::new()
            .get(self.url("/metrics"))
            .bearer_auth(&self.state().metrics_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.unwrap()
    }

    /// The first audit entry of `action` by `actor` (any actor if `None`), waiting for it: many
    /// entries are written after the event a test observes (a departure after `peer_left`, a
    /// shredding after the media is gone).
    pub async fn audited(
        &self,
        action: &str,
        actor: Option<&str>,
    ) -> consult_signaling::audit::Entry {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            self.close_tallies().await;
            let entries = consult_signaling::audit::entries(&self.state().pool)
                .await
                .unwrap();
            if let Some(entry) = entries
                .into_iter()
                .find(|e| e.action == action && actor.is_none_or(|a| e.actor == a))
            {
                return entry;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {action} entry by {actor:?} in the audit log"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Move every counted unauthenticated event into the audit chain now, as if their windows
    /// had closed (the service does it every few seconds once they have).
    pub async fn close_tallies(&self) -> usize {
        let later = self.clock.now() + Duration::from_secs(2 * 86_400);
        consult_signaling::audit_tally::close_due(&self.state().audit, later)
            .await
            .unwrap()
    }

    /// How many `action` events the audit holds, tallied ones by their counts (after
    /// [`TestService::close_tallies`]).
    pub async fn audited_count(&self, action: &str) -> i64 {
        self.close_tallies().await;
        consult_signaling::audit::entries(&self.state().pool)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.action == action)
            .map(|e| e.detail["count"].as_i64().unwrap_or(1))
            .sum()
    }

    pub async fn connect(&self) -> Signal {
        Signal {
            connection: SignalConnection::connect(&self.base).await.unwrap(),
        }
    }

    /// A patient connected and joined (waiting).
    pub async fn join_patient(&self, participant_token: &str) -> (Signal, ServerMessage) {
        let mut ws = self.connect().await;
        ws.send(&ClientMessage::Join {
            token: Some(participant_token.into()),
            consultation_id: None,
        })
        .await;
        let joined = ws.recv_type("joined").await;
        (ws, joined)
    }
}

/// A consultation with its doctor and an admitted patient, both connected to signaling.
pub struct AdmittedCall {
    pub doctor: Doctor,
    pub consultation: Consultation,
    pub invite: String,
    pub doctor_ws: Signal,
    pub doctor_id: uuid::Uuid,
    pub patient: PatientPlace,
    pub patient_ws: Signal,
}

impl TestService {
    /// A doctor (`email`) joins a new consultation, a patient redeems its invite and joins, and
    /// the doctor admits them over the socket.
    pub async fn admitted_call(&self, email: &str) -> AdmittedCall {
        let doctor = self.doctor(email).await;
        let (consultation, invite) = doctor.create_consultation().await;
        let (mut doctor_ws, joined) = doctor.join(self, consultation.id).await;
        let patient = self.patient(&invite, "Pat").await;
        let (mut patient_ws, _) = self.join_patient(&patient.participant_token).await;
        doctor_ws
            .send(&ClientMessage::Admit {
                participant_id: patient.participant_id,
            })
            .await;
        patient_ws.recv_type("admitted").await;
        doctor_ws.recv_type("peer_joined").await;
        AdmittedCall {
            doctor_id: participant_id(&joined),
            doctor,
            consultation,
            invite,
            doctor_ws,
            patient,
            patient_ws,
        }
    }
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap()
}

pub struct Doctor {
    pub email: String,
    pub password: String,
    pub totp_secret: String,
    pub token: String,
    pub csrf: String,
    pub recovery_codes: Vec<String>,
    /// Holds the session cookie.
    pub client: reqwest::Client,
    /// The typed client, with the bearer token passed per call.
    pub api: ApiClient,
    base: String,
}

impl Doctor {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request authenticated by the bearer token.
    pub fn bearer(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    pub async fn create_consultation(&self) -> (Consultation, String) {
        self.create_consultation_with(CreateConsultationRequest {
            title: Some("Follow-up".into()),
            ..Default::default()
        })
        .await
    }

    /// Create a consultation from this request; the consultation and its invite token.
    pub async fn create_consultation_with(
        &self,
        request: CreateConsultationRequest,
    ) -> (Consultation, String) {
        let c = self
            .api
            .create_consultation(&self.token, &request)
            .await
            .unwrap();
        let invite = c
            .invite_url
            .as_deref()
            .unwrap()
            .split_once('#')
            .unwrap()
            .1
            .to_owned();
        (c, invite)
    }

    pub async fn join(
        &self,
        service: &TestService,
        consultation_id: uuid::Uuid,
    ) -> (Signal, ServerMessage) {
        let mut ws = service.connect().await;
        ws.send(&ClientMessage::Join {
            token: Some(self.token.clone()),
            consultation_id: Some(consultation_id),
        })
        .await;
        let joined = ws.recv_type("joined").await;
        (ws, joined)
    }
}

/// A signaling connection whose every wait is bounded.
pub struct Signal {
    connection: SignalConnection,
}

fn type_of(message: &ServerMessage) -> String {
    serde_json::to_value(message).unwrap()["type"]
        .as_str()
        .unwrap()
        .to_owned()
}

impl Signal {
    pub async fn send(&mut self, message: &ClientMessage) {
        self.connection.send(message).await.unwrap();
    }

    pub async fn send_text(&mut self, text: String) {
        self.connection.send_text(text).await.unwrap();
    }

    /// The next protocol message, or `None` if the socket closed. Panics after 5 s, and on a
    /// message that is not of the protocol.
    pub async fn recv(&mut self) -> Option<ServerMessage> {
        let received = tokio::time::timeout(Duration::from_secs(5), self.connection.recv())
            .await
            .expect("no message within 5 s");
        match received {
            Ok(message) => Some(message),
            Err(ApiError::Closed | ApiError::WebSocket(_)) => None,
            Err(other) => panic!("{other}"),
        }
    }

    /// Skip messages until one of this type arrives.
    pub async fn recv_type(&mut self, wanted: &str) -> ServerMessage {
        loop {
            let message = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("closed while waiting for {wanted}"));
            if type_of(&message) == wanted {
                return message;
            }
        }
    }

    /// Messages that arrive within `window`, without failing when none do.
    pub async fn drain(&mut self, window: Duration) -> Vec<ServerMessage> {
        let mut out = Vec::new();
        while let Ok(Ok(message)) = tokio::time::timeout(window, self.connection.recv()).await {
            out.push(message);
        }
        out
    }

    /// Expect an error of this code; return whether it is fatal.
    pub async fn expect_error(&mut self, code: &str) -> bool {
        match self.recv_type("error").await {
            ServerMessage::Error {
                code: got,
                fatal,
                message,
            } => {
                assert_eq!(got.as_str(), code, "{message}");
                fatal
            }
            _ => unreachable!(),
        }
    }

    /// The socket still answers: ping gets pong.
    pub async fn assert_alive(&mut self) {
        self.send(&ClientMessage::Ping {}).await;
        assert!(matches!(
            self.recv_type("pong").await,
            ServerMessage::Pong { .. }
        ));
    }

    /// Wait until the service closes the socket, skipping messages; panics after 5 s.
    pub async fn expect_closed(&mut self) {
        while self.recv().await.is_some() {}
    }
}

/// A `joined` message's participant id, whether admitted, whether resumed, and its peers.
pub fn joined_parts(joined: &ServerMessage) -> (uuid::Uuid, bool, bool, Vec<uuid::Uuid>) {
    match joined {
        ServerMessage::Joined {
            participant_id,
            admitted,
            resumed,
            peers,
            ..
        } => (
            *participant_id,
            *admitted,
            *resumed,
            peers.iter().map(|p| p.participant_id).collect(),
        ),
        other => panic!("not joined: {other:?}"),
    }
}

pub fn participant_id(joined: &ServerMessage) -> uuid::Uuid {
    match joined {
        ServerMessage::Joined { participant_id, .. } => *participant_id,
        other => panic!("not joined: {other:?}"),
    }
}

pub async fn error_code(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// A two-minute recording written straight into the service's vault (two VP8 tracks and one
/// Opus track, the audio recorded up to 60 ms behind the video), marked complete; its id and
/// how many frames it holds.
pub async fn synthetic_recording(
    svc: &TestService,
    consultation: uuid::Uuid,
) -> (uuid::Uuid, usize) {
    use consult_vault::recording::{Codec, Frame, Record, RecordBatch, Track, TrackRole};
    let vault = svc.state().recordings.vault.clone();
    let id = uuid::Uuid::new_v4();
    let mut writer = vault.create_recording(id).unwrap();
    let mut batch = RecordBatch::default();
    for (track, codec, role) in [
        (0, Codec::Vp8, TrackRole::Doctor),
        (1, Codec::Vp8, TrackRole::Patient),
        (2, Codec::Opus, TrackRole::Patient),
    ] {
        batch.push(&Record::Track(Track {
            id: track,
            codec,
            role,
            participant: uuid::Uuid::new_v4(),
            protected: false,
            screen: false,
        }));
    }
    let vp8 = |key: bool, n: u64| {
        let mut frame = if key {
            vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01]
        } else {
            vec![0x11, 0x02, 0x00]
        };
        frame.resize(if key { 8000 } else { 1500 }, (n % 251) as u8);
        frame
    };
    let (mut video, mut audio) = (0u64, 0u64);
    while video < 30 * 120 {
        let (video_at, audio_at) = (video * 100_000 / 3, audio * 20_000);
        if video_at <= audio_at + 60_000 {
            for track in 0..2 {
                batch.push(&Record::Frame(Frame {
                    track,
                    at_us: video_at,
                    keyframe: video % 90 == 0,
                    data: vp8(video % 90 == 0, video),
                }));
            }
            video += 1;
        } else {
            batch.push(&Record::Frame(Frame {
                track: 2,
                at_us: audio_at,
                keyframe: false,
                data: vec![0x78; 100],
            }));
            audio += 1;
        }
        if batch.len() >= 256 * 1024 {
            writer.append(&batch.take()).unwrap();
        }
    }
    writer.finish(&batch.take()).unwrap();
    let pool = &svc.state().pool;
    let now = time::OffsetDateTime::now_utc();
    let rows = consult_signaling::recording::rows::RecordingStatus::Complete;
    consult_signaling::recording::rows::insert(
        pool,
        &consult_signaling::recording::rows::NewRecording {
            id,
            consultation_id: consultation,
            zero_knowledge: false,
            started_at: now,
            retain_until: now + time::Duration::days(30),
            continues: None,
        },
    )
    .await
    .unwrap();
    let bytes = vault.media_size(id).unwrap().unwrap();
    consult_signaling::recording::rows::finish(pool, id, rows, now, 0, bytes, None)
        .await
        .unwrap();
    (id, (video * 2 + audio) as usize)
}

//! Service configuration: embedded defaults, then a TOML file, then `CONSULT_*` environment
//! variables, then command-line flags — each layer overriding the one before.
//!
//! Nested keys use a double underscore in the environment: `CONSULT_SESSION__IDLE_TIMEOUT=10m`.
//! Durations are human-readable (`90s`, `15m`, `12h`).

use consult_proto::ice_url::IceUrl;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Everything the service can be told. Every field has a default that works with no file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Where the database, TLS certificate and keys live.
    pub data_dir: PathBuf,
    /// PostgreSQL instead of SQLite in the data directory: `postgres://user:password@host/db`,
    /// shared by every node of a deployment. Never logged, as it may hold a password.
    pub database_url: Option<String>,
    /// Serve HTTPS with a self-signed certificate kept in the data directory.
    pub tls: bool,
    /// The address people reach the service at, for invite and enrolment links. Defaults to the
    /// bound address (with the machine's LAN address when bound to all interfaces).
    pub public_url: Option<String>,
    /// Reverse proxies (addresses or networks, like `10.0.0.0/8`) whose `Forwarded` /
    /// `X-Forwarded-For` / `X-Forwarded-Proto` headers are believed: the client's address for
    /// throttling and audit, and whether it came over HTTPS (`Secure` cookies, HSTS). Empty: the
    /// socket's peer is the client.
    pub trusted_proxies: Vec<String>,
    /// Sign-in sessions.
    pub session: SessionConfig,
    /// Sign-in throttling.
    pub login: LoginConfig,
    /// Connections: how many, and how long a request may take to arrive.
    pub limits: LimitsConfig,
    /// The operator's surfaces: metrics.
    pub admin: AdminConfig,
    /// The audit trail's signed checkpoints.
    pub audit: AuditConfig,
    /// Detection rules and the alert webhook.
    pub alerts: AlertsConfig,
    /// Patient invites.
    pub invite: InviteConfig,
    /// The signaling WebSocket.
    pub signaling: SignalingConfig,
    /// STUN and TURN servers handed to clients.
    pub ice: IceConfig,
    /// The organisation's policy.
    pub policy: PolicyConfig,
    /// The recorder and the vault.
    pub recording: RecordingConfig,
    /// Several nodes: the Redis server they share.
    pub cluster: ClusterConfig,
    /// Encrypted, incremental backups to another site.
    pub backup: BackupConfig,
    /// Signed medical certificates.
    pub certificate: CertificateConfig,
    /// Log filter, in `RUST_LOG` syntax.
    pub log: String,
    /// The configuration file this was loaded from (not a setting: backups copy the file).
    #[serde(skip)]
    pub source_file: Option<PathBuf>,
}

/// Sign-in sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// A session unused for this long ends.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A session ends this long after sign-in, however active.
    #[serde(with = "humantime_serde")]
    pub absolute_timeout: Duration,
}

/// Sign-in throttling: failures lock an account or an address with exponential back-off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginConfig {
    /// Consecutive failures for one account before it is locked.
    pub max_failures_per_account: u32,
    /// Failures from one address (across accounts) before it is locked.
    pub max_failures_per_address: u32,
    /// First lockout; doubles with each further failure.
    #[serde(with = "humantime_serde")]
    pub lockout_base: Duration,
    /// Longest lockout.
    #[serde(with = "humantime_serde")]
    pub lockout_max: Duration,
}

/// Patient invites.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InviteConfig {
    /// How long an invite link works after it is issued.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long an account enrolment link works.
    #[serde(with = "humantime_serde")]
    pub enrolment_ttl: Duration,
}

/// The signaling WebSocket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignalingConfig {
    /// How often clients are asked to send `ping`.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A connection silent for this long is closed.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// How long a dropped participant's place is kept for them to reconnect.
    #[serde(with = "humantime_serde")]
    pub reconnect_grace: Duration,
    /// Largest message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Messages per second one connection may send (sustained); bursts of twice that pass.
    pub max_messages_per_second: u32,
    /// A connection that has not sent `join` this long after opening is closed.
    #[serde(with = "humantime_serde")]
    pub join_timeout: Duration,
    /// WebSockets open at once that have not joined yet (service-wide); more are refused with
    /// `503` until some join or close.
    pub max_unjoined_sockets: usize,
    /// Joins one participant (or one doctor's session) may make per minute; more are refused
    /// with a fatal, retryable `rate_limited` error.
    pub max_joins_per_minute: u32,
}

/// The audit trail: signed checkpoints, and how unauthenticated events are counted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// How often the chain's head is signed, stored and logged (when it grew).
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Unauthenticated events (failed sign-ins, refused invite links) are counted per source
    /// in windows this long; each window's counts enter the chain as one entry per source,
    /// account and reason when it closes.
    #[serde(with = "humantime_serde")]
    pub tally_window: Duration,
    /// Distinct sources and accounts counted separately in one window; beyond it, further ones
    /// are counted together as `others` (the counts stay exact, the log's growth bounded).
    pub max_tally_keys: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_interval: Duration::from_secs(5 * 60),
            tally_window: Duration::from_secs(60),
            max_tally_keys: 1000,
        }
    }
}

/// Several nodes behind a load balancer. Each consultation's live state (who waits, who is
/// admitted, the connections) is held by one node at a time, its doctor's *home*, chosen and
/// kept through a lease in Redis; a node that receives a connection or request for a doctor
/// homed elsewhere relays it there over Redis. A node that dies loses its leases within
/// `lease`; the next node to see one of its doctors takes the home and restores the rooms from
/// the database. Unset `redis_url`: one node, everything in its memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://[:password@]host:port[/db]`, shared by every node. Never logged, as it may
    /// hold a password. Redis is trusted as the database is: keep it on a private network.
    pub redis_url: Option<String>,
    /// Prefix of every key and channel, so that deployments can share one Redis.
    pub key_prefix: String,
    /// How long a node's home leases and its liveness last without renewal (renewed three
    /// times per period): the longest a dead node's consultations wait for a new home.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            key_prefix: "consult".into(),
            lease: Duration::from_secs(3),
        }
    }
}

/// Alerts on attacks: the detection rules' thresholds and where alerts are delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Each new alert is `POST`ed here as signed JSON (retried with back-off until it is taken).
    /// Unset: alerts are stored, audited, counted and listed, but not sent anywhere.
    pub webhook_url: Option<String>,
    /// The HMAC-SHA256 key of `X-Consult-Signature` (at least 32 characters). Unset: a random
    /// one, kept in `DATA_DIR/keys/alerts-webhook.secret`, to give to the receiver.
    pub webhook_secret: Option<String>,
    /// How long one delivery may take.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// The rules' thresholds: `count` events within `window` each.
    pub rules: crate::alerts::rules::Thresholds,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            webhook_secret: None,
            webhook_timeout: Duration::from_secs(10),
            rules: crate::alerts::rules::Thresholds::default(),
        }
    }
}

/// The operator's surfaces, off the public path.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// A second listener, for the operator's network only, serving `/metrics`, `/healthz` and
    /// `/readyz` without a token (and nothing else). Unset: no second listener.
    pub bind: Option<SocketAddr>,
    /// The bearer token `/metrics` on the main listener asks for. Unset: a random one, kept in
    /// `DATA_DIR/keys/metrics.token`.
    pub metrics_token: Option<String>,
}

/// Connections: how many, and how long a request may take to arrive.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// A request's headers must have arrived this long after the connection opened or its
    /// previous request was answered; otherwise the connection is closed (slow or half-open
    /// requests, idle keep-alive connections).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Connections one client address may hold open at once (HTTP and WebSockets; listed
    /// `trusted_proxies` are not limited). More are closed as soon as they are accepted.
    pub max_connections_per_address: usize,
    /// Connections open at once, all addresses together.
    pub max_connections: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections_per_address: 256,
            max_connections: 8192,
        }
    }
}

/// The organisation's policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Every consultation is end-to-end encrypted (SFrame): creating one without is refused, and
    /// a client that cannot do it gets no media.
    pub e2ee_required: bool,
    /// Consultations may be recorded (with the patient's consent). When false, creating a
    /// recorded consultation is refused and nothing is ever recorded.
    pub recording_allowed: bool,
    /// Recordings are shredded this many days after they end.
    pub retention_days: u32,
    /// Clinicians sign in with a passkey: a password with an authenticator-app code is accepted
    /// only until the account has a passkey (or with a recovery code), and such a session may
    /// do nothing but register one.
    pub require_passkey: bool,
    /// How many people may take part in one call at once, the doctor included (2 to 4, 4 by
    /// default; the recorder not counted). Each person beyond the patient link needs a named
    /// invite or is a colleague the doctor added; more than this are refused. 2 keeps every
    /// consultation one to one.
    pub max_participants: u8,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            e2ee_required: false,
            recording_allowed: true,
            retention_days: 30,
            require_passkey: false,
            max_participants: 4,
        }
    }
}

/// Signed medical certificates (`[certificate]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CertificateConfig {
    /// The issuer named in certificates (`iss`) and where its keys are published
    /// (`ISSUER/.well-known/jwks.json`) and its status list (`ISSUER/api/v1/certificates/status-list`).
    /// Default: the public URL. Changing it later makes earlier certificates name an issuer
    /// verifiers no longer find.
    pub issuer: Option<String>,
    /// How long the patient's invite link keeps fetching a certificate after it is issued.
    #[serde(with = "humantime_serde")]
    pub holder_access: Duration,
    /// How long a certificate verifies after the last day of its period.
    #[serde(with = "humantime_serde")]
    pub valid_after_period: Duration,
    /// How long the service keeps a certificate (sealed in the vault) after it is issued; the
    /// retention job then destroys its key. Its revocation status stays published.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for CertificateConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            holder_access: Duration::from_secs(30 * 24 * 3600),
            valid_after_period: Duration::from_secs(365 * 24 * 3600),
            retention: Duration::from_secs(10 * 365 * 24 * 3600),
        }
    }
}

/// The recorder and the vault.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordingConfig {
    /// The address the recorder receives media on (its ICE host candidate). Defaults to the
    /// bound address, or the machine's LAN address when bound to all interfaces.
    pub media_address: Option<std::net::IpAddr>,
    /// How much media the recorder gathers before sealing a chunk: at most this much is lost if
    /// the process dies.
    #[serde(with = "humantime_serde")]
    pub chunk_interval: Duration,
    /// How often the retention job looks for recordings past their retention.
    #[serde(with = "humantime_serde")]
    pub retention_sweep_interval: Duration,
    /// Networks (or addresses) of loopback, private or link-local ranges the recorder may pair
    /// with; public addresses always may. Unset: the private block of `media_address` (loopback
    /// when it is loopback, its RFC 1918 block on a LAN). `[]`: public addresses only.
    pub candidate_networks: Option<Vec<String>>,
    /// Keep recordings' media in an S3 bucket instead of `data_dir/vault/media` (the keys stay
    /// in `data_dir/vault`: the bucket holds ciphertext only).
    pub object_storage: Option<ObjectStorageConfig>,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            media_address: None,
            chunk_interval: Duration::from_secs(1),
            retention_sweep_interval: Duration::from_secs(3600),
            candidate_networks: None,
            object_storage: None,
        }
    }
}

/// An S3 bucket for recordings' media (`[recording.object_storage]`): Garage, AWS S3 or any
/// S3-compatible store. The secret can come from the environment:
/// `CONSULT_RECORDING__OBJECT_STORAGE__SECRET_ACCESS_KEY`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectStorageConfig {
    /// The S3 endpoint, e.g. `https://s3.example.org` or `http://10.0.0.5:3900`; unset: AWS.
    pub endpoint: Option<String>,
    /// The bucket.
    pub bucket: String,
    /// The region (Garage: the `s3_region` of its configuration, `garage` by default).
    #[serde(default = "default_region")]
    pub region: String,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// Prepended to every object name.
    #[serde(default = "default_object_prefix")]
    pub prefix: String,
    /// Allow a plain `http://` endpoint (only on a private network: the media is sealed, but
    /// the credentials' signatures and the object names travel in the clear).
    #[serde(default)]
    pub allow_http: bool,
    /// The longest one request may take, retries included; a store slower than that fails the
    /// recording (the call goes on, and everyone is told).
    #[serde(default = "default_object_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_object_prefix() -> String {
    "media/".into()
}

fn default_object_timeout() -> Duration {
    Duration::from_secs(10)
}

impl std::fmt::Debug for ObjectStorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The vault's form prints everything but the secret.
        self.to_vault().fmt(f)
    }
}

impl ObjectStorageConfig {
    /// The vault's form of it.
    pub fn to_vault(&self) -> consult_vault::object::ObjectStorageConfig {
        consult_vault::object::ObjectStorageConfig {
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            prefix: self.prefix.clone(),
            allow_http: self.allow_http,
            timeout: self.timeout,
        }
    }
}

/// Backups (`[backup]`): the database's consistent snapshot, the vault's keys, the recordings'
/// media (when kept locally), the configuration, the TLS material and the audit signing keys,
/// encrypted and deduplicated by restic into a repository at another site — a directory (a
/// mounted disk or network share) or an S3 bucket. Unset `repository`: no backups.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// Where backups go, in restic's syntax: a directory (`/mnt/offsite/consult`) or an S3
    /// bucket and prefix (`s3:https://s3.other-site.example/consult-backups/node1`).
    pub repository: Option<String>,
    /// The backup key: a file holding the repository's password (`consult backup keygen`).
    /// Keep it apart from the data directory, and a copy of it somewhere safe: without it no
    /// backup opens. Refused inside `data_dir`.
    pub key_file: Option<PathBuf>,
    /// How often `consult serve` makes a backup; unset: only `consult backup create` does.
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// A run taking longer than this is stopped (what it uploaded is unused; the previous
    /// backups stay whole).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// S3 repositories: the region (Garage: `garage`).
    pub s3_region: Option<String>,
    /// S3 repositories: the access key id (or `AWS_ACCESS_KEY_ID`).
    pub s3_access_key_id: Option<String>,
    /// S3 repositories: the secret key (or `AWS_SECRET_ACCESS_KEY`,
    /// `CONSULT_BACKUP__S3_SECRET_ACCESS_KEY`). Never logged.
    pub s3_secret_access_key: Option<String>,
    /// Retention (`consult backup prune`, and after every scheduled backup): the last N backups.
    pub keep_last: u32,
    /// …and the last backup of each of the last N days.
    pub keep_daily: u32,
    /// …of each of the last N weeks.
    pub keep_weekly: u32,
    /// …of each of the last N months.
    pub keep_monthly: u32,
    /// The restic program (Debian: `apt-get install restic`).
    pub restic: PathBuf,
    /// restic's local cache of the repository's indexes and trees (never file contents):
    /// set it (outside `data_dir`) for a large or remote repository; unset: no cache.
    pub cache_dir: Option<PathBuf>,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            repository: None,
            key_file: None,
            interval: None,
            timeout: Duration::from_secs(3600),
            s3_region: None,
            s3_access_key_id: None,
            s3_secret_access_key: None,
            keep_last: 48,
            keep_daily: 14,
            keep_weekly: 8,
            keep_monthly: 12,
            restic: PathBuf::from("restic"),
            cache_dir: None,
        }
    }
}

impl BackupConfig {
    /// Check the settings that must hold together; `data_dir` is the service's.
    pub fn validate(&self, data_dir: &Path) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Inconsistent(m.into()));
        let Some(repository) = &self.repository else {
            if self.interval.is_some() {
                return bad("backup.interval needs backup.repository");
            }
            return Ok(());
        };
        if repository.trim().is_empty() {
            return bad("backup.repository is empty");
        }
        let Some(key_file) = &self.key_file else {
            return bad(
                "backup.repository needs backup.key_file (consult backup keygen --out FILE)",
            );
        };
        if inside(key_file, data_dir) {
            return bad("backup.key_file must be outside data_dir: the backup key is held apart from what it protects");
        }
        if !repository.starts_with("s3:") && inside(Path::new(repository), data_dir) {
            return bad("backup.repository must be outside data_dir");
        }
        if self
            .cache_dir
            .as_deref()
            .is_some_and(|c| inside(c, data_dir))
        {
            return bad("backup.cache_dir must be outside data_dir");
        }
        if self.interval.is_some_and(|i| i < Duration::from_secs(1)) || self.timeout.is_zero() {
            return bad("backup.interval must be at least 1s and backup.timeout above zero");
        }
        if self.s3_access_key_id.is_some() != self.s3_secret_access_key.is_some() {
            return bad("backup.s3_access_key_id and backup.s3_secret_access_key go together");
        }
        if self.keep_last == 0 {
            return bad("backup.keep_last must be at least 1");
        }
        Ok(())
    }
}

/// Whether `path` is `dir` or inside it, comparing absolute forms (symbolic links resolved for
/// whatever part exists).
fn inside(path: &Path, dir: &Path) -> bool {
    /// Absolute, each existing prefix with its symbolic links resolved, `..` applied as the
    /// system would (after the links before it).
    fn resolved(p: &Path) -> PathBuf {
        use std::path::Component;
        let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let mut out = PathBuf::new();
        for component in p.components() {
            match component {
                Component::ParentDir => {
                    out.pop();
                }
                Component::CurDir => {}
                other => {
                    out.push(other);
                    if let Ok(real) = out.canonicalize() {
                        out = real;
                    }
                }
            }
        }
        out
    }
    resolved(path).starts_with(resolved(dir))
}

impl std::fmt::Debug for BackupConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupConfig")
            .field("repository", &self.repository)
            .field("key_file", &self.key_file)
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("s3_region", &self.s3_region)
            .field("s3_access_key_id", &self.s3_access_key_id)
            .field(
                "s3_secret_access_key",
                &self.s3_secret_access_key.as_ref().map(|_| "…"),
            )
            .field("keep_last", &self.keep_last)
            .field("keep_daily", &self.keep_daily)
            .field("keep_weekly", &self.keep_weekly)
            .field("keep_monthly", &self.keep_monthly)
            .field("restic", &self.restic)
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

/// STUN and TURN servers handed to clients by `GET /api/v1/ice-servers`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IceConfig {
    /// `stun:host:port` URLs.
    pub stun_urls: Vec<String>,
    /// `turn:`/`turns:` URLs of a TURN server checking REST credentials (coturn `use-auth-secret`).
    pub turn_urls: Vec<String>,
    /// The secret shared with the TURN server (`static-auth-secret`). Required with `turn_urls`.
    pub turn_shared_secret: Option<String>,
    /// How long TURN credentials stay valid.
    #[serde(with = "humantime_serde")]
    pub turn_credential_ttl: Duration,
    /// Tell clients to use relay candidates only (media through TURN; participants never learn
    /// each other's IP address). Needs `turn_urls`.
    pub relay_only: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("consult-data"),
            database_url: None,
            tls: false,
            public_url: None,
            trusted_proxies: Vec::new(),
            session: SessionConfig::default(),
            login: LoginConfig::default(),
            limits: LimitsConfig::default(),
            admin: AdminConfig::default(),
            audit: AuditConfig::default(),
            alerts: AlertsConfig::default(),
            invite: InviteConfig::default(),
            signaling: SignalingConfig::default(),
            ice: IceConfig {
                turn_credential_ttl: Duration::from_secs(3600),
                ..IceConfig::default()
            },
            policy: PolicyConfig::default(),
            recording: RecordingConfig::default(),
            cluster: ClusterConfig::default(),
            backup: BackupConfig::default(),
            certificate: CertificateConfig::default(),
            log: "info".into(),
            source_file: None,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(15 * 60),
            absolute_timeout: Duration::from_secs(12 * 3600),
        }
    }
}

impl Default for LoginConfig {
    fn default() -> Self {
        Self {
            max_failures_per_account: 5,
            max_failures_per_address: 20,
            lockout_base: Duration::from_secs(30),
            lockout_max: Duration::from_secs(3600),
        }
    }
}

impl Default for InviteConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(24 * 3600),
            enrolment_ttl: Duration::from_secs(72 * 3600),
        }
    }
}

impl Default for SignalingConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(45),
            reconnect_grace: Duration::from_secs(30),
            max_message_bytes: consult_proto::signal::DEFAULT_MAX_MESSAGE_BYTES,
            max_messages_per_second: 50,
            join_timeout: Duration::from_secs(10),
            max_unjoined_sockets: 1024,
            max_joins_per_minute: 30,
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment variable could not be read or has a wrong value.
    #[error("configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    /// Values that do not make sense together.
    #[error("configuration: {0}")]
    Inconsistent(String),
}

/// The top-level keys of [`Config`], as read from the environment.
const TOP_LEVEL_KEYS: &[&str] = &[
    "bind",
    "data_dir",
    "database_url",
    "tls",
    "public_url",
    "trusted_proxies",
    "session",
    "login",
    "limits",
    "admin",
    "audit",
    "alerts",
    "invite",
    "signaling",
    "ice",
    "policy",
    "recording",
    "cluster",
    "backup",
    "certificate",
    "log",
];

impl Config {
    /// Load defaults, then `file` (if given), then `CONSULT_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Inconsistent(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file(file));
        }
        // Only variables naming a known top-level setting are read: an unrelated `CONSULT_*`
        // variable in the environment (a test harness's, say) must not stop the service, while a
        // typo inside a known section (`CONSULT_SESSION__IDLE_TIMEUT`) is still refused.
        let env = Env::prefixed("CONSULT_").filter(|key| {
            let first = key
                .as_str()
                .split("__")
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            TOP_LEVEL_KEYS.contains(&first.as_str())
        });
        let mut config: Config = figment.merge(env.split("__")).extract().map_err(Box::new)?;
        config.source_file = file.map(Path::to_path_buf);
        config.validate()?;
        Ok(config)
    }

    /// Check values that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Inconsistent(m.into()));
        for (key, urls, turn) in [
            ("ice.stun_urls", &self.ice.stun_urls, false),
            ("ice.turn_urls", &self.ice.turn_urls, true),
        ] {
            for url in urls {
                match url.parse::<IceUrl>() {
                    Ok(parsed) if parsed.is_turn() == turn => {}
                    Ok(_) => {
                        return Err(ConfigError::Inconsistent(format!(
                            "{key}: {url:?} is a {} URL",
                            if turn { "stun:" } else { "turn:/turns:" }
                        )));
                    }
                    Err(e) => {
                        return Err(ConfigError::Inconsistent(format!("{key}: {url:?}: {e}")));
                    }
                }
            }
        }
        if self.ice.relay_only && self.ice.turn_urls.is_empty() {
            return bad("ice.relay_only needs ice.turn_urls");
        }
        if !self.ice.turn_urls.is_empty() && self.ice.turn_shared_secret.is_none() {
            return bad("ice.turn_urls needs ice.turn_shared_secret");
        }
        if self
            .ice
            .turn_shared_secret
            .as_deref()
            .is_some_and(|s| s.len() < 16)
        {
            return bad("ice.turn_shared_secret must be at least 16 characters");
        }
        if !(2..=4).contains(&self.policy.max_participants) {
            return bad("policy.max_participants must be 2, 3 or 4");
        }
        if self.cluster.lease < Duration::from_millis(600) {
            return bad("cluster.lease must be at least 600ms");
        }
        if self.cluster.key_prefix.is_empty()
            || !self
                .cluster
                .key_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return bad("cluster.key_prefix must be letters, digits, '-', '_' or '.'");
        }
        if self.signaling.heartbeat_timeout <= self.signaling.heartbeat_interval {
            return bad("signaling.heartbeat_timeout must be longer than heartbeat_interval");
        }
        if self.signaling.max_message_bytes < 1024 {
            return bad("signaling.max_message_bytes must be at least 1024");
        }
        if self.session.idle_timeout > self.session.absolute_timeout {
            return bad("session.idle_timeout must not exceed session.absolute_timeout");
        }
        if self.limits.header_read_timeout.is_zero()
            || self.limits.max_connections_per_address == 0
            || self.limits.max_connections < self.limits.max_connections_per_address
        {
            return bad("limits: header_read_timeout and max_connections_per_address must be above zero, and max_connections at least max_connections_per_address");
        }
        if self
            .admin
            .metrics_token
            .as_deref()
            .is_some_and(|t| t.trim().len() < 32)
        {
            return bad("admin.metrics_token must be at least 32 characters");
        }
        if self.audit.checkpoint_interval.is_zero() {
            return bad("audit.checkpoint_interval must be above zero");
        }
        if self.audit.tally_window.as_secs() == 0 || self.audit.tally_window.as_secs() > 86_400 {
            return bad("audit.tally_window must be from 1 second to 1 day");
        }
        if self.audit.max_tally_keys == 0 {
            return bad("audit.max_tally_keys must be at least 1");
        }
        if let Some(networks) = &self.recording.candidate_networks
            && let Err(e) = crate::recording::candidates::CandidatePolicy::new(
                std::net::Ipv4Addr::LOCALHOST.into(),
                Some(networks),
            )
        {
            return Err(ConfigError::Inconsistent(e.to_string()));
        }
        if let Some(url) = &self.alerts.webhook_url {
            match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => return bad("alerts.webhook_url must be an http or https URL"),
            }
        }
        if self
            .alerts
            .webhook_secret
            .as_deref()
            .is_some_and(|s| s.trim().len() < 32)
        {
            return bad("alerts.webhook_secret must be at least 32 characters");
        }
        if self.alerts.webhook_timeout.is_zero() {
            return bad("alerts.webhook_timeout must be above zero");
        }
        if let Some((name, _)) = self
            .alerts
            .rules
            .all()
            .into_iter()
            .find(|(_, t)| t.count == 0 || t.window.is_zero())
        {
            return Err(ConfigError::Inconsistent(format!(
                "alerts.rules.{name}: count and window must be above zero"
            )));
        }
        if self.signaling.join_timeout.is_zero()
            || self.signaling.max_unjoined_sockets == 0
            || self.signaling.max_joins_per_minute == 0
        {
            return bad("signaling.join_timeout, max_unjoined_sockets and max_joins_per_minute must be above zero");
        }
        if self.login.max_failures_per_account == 0 || self.login.max_failures_per_address == 0 {
            return bad("login.max_failures_* must be at least 1");
        }
        self.backup.validate(&self.data_dir)?;
        if let Err(e) = crate::client_origin::TrustedProxies::parse(&self.trusted_proxies) {
            return bad(&e.to_string());
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return bad("public_url must start with http:// or https://");
        }
        if let Some(issuer) = &self.certificate.issuer
            && (!(issuer.starts_with("http://") || issuer.starts_with("https://"))
                || issuer.ends_with('/')
                || issuer.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return bad(
                "certificate.issuer must be an http:// or https:// URL without a trailing slash",
            );
        }
        if self.certificate.holder_access.is_zero()
            || self.certificate.valid_after_period.is_zero()
            || self.certificate.retention < self.certificate.holder_access
        {
            return bad("certificate.holder_access and valid_after_period must be above zero, and retention at least holder_access");
        }
        Ok(())
    }
}

#[cfg(test)]
// figment's test jail returns its own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_documentation() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(config.session.idle_timeout, Duration::from_secs(900));
        assert_eq!(config.session.absolute_timeout, Duration::from_secs(43200));
    }

    #[test]
    fn file_and_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "consult.toml",
                "bind = \"127.0.0.1:9000\"\n[session]\nidle_timeout = \"5m\"\n",
            )?;
            jail.set_env("CONSULT_SESSION__ABSOLUTE_TIMEOUT", "1h");
            jail.set_env("CONSULT_ICE__STUN_URLS", "[\"stun:127.0.0.1:3478\"]");
            // Unrelated variables with the prefix are not settings.
            jail.set_env("CONSULT_BIN", "/usr/local/bin/consult");
            let config =
                Config::load(Some(Path::new("consult.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.bind.port(), 9000);
            assert_eq!(config.session.idle_timeout, Duration::from_secs(300));
            assert_eq!(config.session.absolute_timeout, Duration::from_secs(3600));
            assert_eq!(
                config.ice.stun_urls,
                vec!["stun:127.0.0.1:3478".to_string()]
            );
            Ok(())
        });
    }

    #[test]
    fn bad_audit_alert_and_recorder_settings_are_refused_with_their_name() {
        let refused = |tweak: &dyn Fn(&mut Config), naming: &str| {
            let mut config = Config::default();
            tweak(&mut config);
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(naming), "{naming}: {err}");
        };
        refused(
            &|c| c.audit.tally_window = Duration::ZERO,
            "audit.tally_window",
        );
        refused(
            &|c| c.audit.tally_window = Duration::from_secs(2 * 86_400),
            "audit.tally_window",
        );
        refused(&|c| c.audit.max_tally_keys = 0, "audit.max_tally_keys");
        for url in ["ftp://siem.example.org/x", "not a url", "http://"] {
            refused(
                &|c| c.alerts.webhook_url = Some(url.into()),
                "alerts.webhook_url",
            );
        }
        refused(
            &|c| c.alerts.webhook_secret = Some("short".into()),
            "alerts.webhook_secret",
        );
        refused(
            &|c| c.alerts.webhook_timeout = Duration::ZERO,
            "alerts.webhook_timeout",
        );
        refused(
            &|c| c.alerts.rules.invite_guessing.count = 0,
            "alerts.rules.invite_guessing",
        );
        refused(
            &|c| c.alerts.rules.export_burst.window = Duration::ZERO,
            "alerts.rules.export_burst",
        );
        refused(
            &|c| c.recording.candidate_networks = Some(vec!["10.0.0.0/33".into()]),
            "recording.candidate_networks",
        );
        refused(
            &|c| c.cluster.lease = Duration::from_millis(100),
            "cluster.lease",
        );
        for prefix in ["", "consult prod", "a:b", "x*"] {
            refused(
                &|c| c.cluster.key_prefix = prefix.into(),
                "cluster.key_prefix",
            );
        }
        // Well formed, they pass.
        let mut config = Config::default();
        config.alerts.webhook_url = Some("https://siem.example.org/consult".into());
        config.alerts.webhook_secret = Some("a webhook secret of at least 32 chars".into());
        config.recording.candidate_networks = Some(vec!["10.20.0.0/16".into(), "::1".into()]);
        config.validate().unwrap();
    }

    #[test]
    fn backup_settings_that_do_not_hold_together_are_refused_with_their_name() {
        let refused = |tweak: &dyn Fn(&mut BackupConfig), naming: &str| {
            let mut config = Config {
                data_dir: PathBuf::from("/srv/consult-data"),
                ..Config::default()
            };
            config.backup = BackupConfig {
                repository: Some("/mnt/offsite/consult".into()),
                key_file: Some(PathBuf::from("/etc/consult/backup.key")),
                ..BackupConfig::default()
            };
            assert!(config.validate().is_ok(), "the base case holds");
            tweak(&mut config.backup);
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(naming), "{naming}: {err}");
        };
        refused(&|b| b.key_file = None, "backup.key_file");
        // The backup key is held apart from what it protects, and so is the repository.
        refused(
            &|b| b.key_file = Some("/srv/consult-data/keys/backup.key".into()),
            "backup.key_file must be outside data_dir",
        );
        refused(
            &|b| b.key_file = Some("/srv/elsewhere/../consult-data/backup.key".into()),
            "backup.key_file must be outside data_dir",
        );
        refused(
            &|b| b.repository = Some("/srv/consult-data/backups".into()),
            "backup.repository must be outside data_dir",
        );
        refused(
            &|b| b.cache_dir = Some("/srv/consult-data/cache".into()),
            "backup.cache_dir",
        );
        refused(&|b| b.repository = Some("  ".into()), "backup.repository");
        refused(
            &|b| {
                b.repository = None;
                b.interval = Some(Duration::from_secs(3600));
            },
            "backup.interval needs backup.repository",
        );
        refused(
            &|b| b.interval = Some(Duration::from_millis(10)),
            "backup.interval",
        );
        refused(&|b| b.timeout = Duration::ZERO, "backup.timeout");
        refused(
            &|b| b.s3_access_key_id = Some("GK1".into()),
            "backup.s3_access_key_id and backup.s3_secret_access_key",
        );
        refused(&|b| b.keep_last = 0, "backup.keep_last");
    }

    #[test]
    fn unknown_keys_and_inconsistent_values_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("a.toml", "bnid = \"127.0.0.1:9000\"\n")?;
            let err = Config::load(Some(Path::new("a.toml"))).unwrap_err();
            assert!(err.to_string().contains("bnid"), "{err}");
            jail.create_file("b.toml", "[ice]\nturn_urls = [\"turn:127.0.0.1\"]\n")?;
            let err = Config::load(Some(Path::new("b.toml"))).unwrap_err();
            assert!(err.to_string().contains("turn_shared_secret"), "{err}");
            // Every ICE server URL is parsed at start-up: a mistyped one is named with the reason.
            let secret = "turn_shared_secret = \"a-secret-of-sixteen-chars\"\n";
            for (urls, expected) in [
                (
                    "turn_urls = [\"turn:relay.test?transport=sctp\"]",
                    "unsupported query",
                ),
                ("turn_urls = [\"turns:relay.test:0\"]", "port"),
                ("turn_urls = [\"http://relay.test\"]", "not a stun:"),
                ("turn_urls = [\"stun:relay.test\"]", "is a stun: URL"),
                ("stun_urls = [\"turn:relay.test\"]", "is a turn:/turns: URL"),
            ] {
                jail.create_file("c.toml", &format!("[ice]\n{secret}{urls}\n"))?;
                let err = Config::load(Some(Path::new("c.toml"))).unwrap_err();
                assert!(err.to_string().contains(expected), "{urls}: {err}");
            }
            jail.create_file(
                "d.toml",
                &format!("[ice]\n{secret}turn_urls = [\"turn:relay.test?transport=udp\", \"turn:relay.test:443?transport=tcp\", \"turns:relay.test:443?transport=tcp\"]\n"),
            )?;
            assert_eq!(
                Config::load(Some(Path::new("d.toml")))
                    .map_err(|e| e.to_string())?
                    .ice
                    .turn_urls
                    .len(),
                3
            );
            let err = Config::load(Some(Path::new("missing.toml"))).unwrap_err();
            assert!(err.to_string().contains("does not exist"), "{err}");
            jail.set_env("CONSULT_SESSION__IDLE_TIMEUT", "5m");
            let err = Config::load(None).unwrap_err();
            assert!(err.to_string().contains("idle_timeut"), "{err}");
            let err = Config::load(Some(Path::new("missing.toml"))).unwrap_err();
            assert!(err.to_string().contains("does not exist"), "{err}");
            Ok(())
        });
    }
}

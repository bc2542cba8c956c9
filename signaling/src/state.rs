//! The one shared state every handler gets through `State<AppState>`.

use std::ops::Deref;
use std::sync::Arc;

use crate::alerts::Alerts;
use crate::audit::AuditLog;
use crate::auth::passkeys::RelyingParty;
use crate::auth::revocations::Revocations;
use crate::auth::throttle::AddressThrottle;
use crate::client_origin::TrustedProxies;
use crate::clock::Clock;
use crate::config::Config;
use crate::limits::ConnectionLimits;
use crate::metrics::Metrics;
use crate::recording::Recordings;
use crate::secrets::SealingKey;
use crate::signal::hub::Hub;
use crate::signal::limits::{JoinRate, UnjoinedSockets};
use crate::write_lane::WriteLane;

/// Cheap to clone: everything lives behind one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// What [`AppState`] holds.
pub struct Shared {
    /// The loaded configuration.
    pub config: Config,
    /// The database, for reading. Write with [`Shared::writer`].
    pub pool: crate::db::Db,
    /// The database, for writing: the same [`crate::db::Db`] as `pool` (with SQLite, its writes
    /// queue in the process for its one writing connection; see [`crate::db`]).
    pub writer: crate::db::Db,
    /// Where write transactions run: see [`AppState::write`].
    pub lane: WriteLane,
    /// Where "now" comes from.
    pub clock: Arc<dyn Clock>,
    /// The audit trail.
    pub audit: AuditLog,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Live consultations: who is connected, waiting and admitted.
    pub hub: Hub,
    /// Sign-in failures per client address.
    pub address_throttle: AddressThrottle,
    /// The reverse proxies whose forwarding headers are believed.
    pub trusted_proxies: TrustedProxies,
    /// Ended sessions, for the WebSockets that hold them.
    pub revocations: Revocations,
    /// Open connections per client address and in all.
    pub connection_limits: Arc<ConnectionLimits>,
    /// Signaling connections that have not joined yet.
    pub unjoined_sockets: UnjoinedSockets,
    /// Joins per participant or doctor session over the last minute.
    pub join_rate: JoinRate,
    /// Cancelled when the service shuts down: every WebSocket closes with 1001 (going away).
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Base URL for links, without a trailing slash.
    pub public_url: String,
    /// Seals TOTP seeds at rest and passkey ceremonies in flight (the key lives outside the
    /// database).
    pub sealing_key: SealingKey,
    /// The service as a WebAuthn relying party.
    pub passkeys: RelyingParty,
    /// The bearer token of `/metrics` on the main listener.
    pub metrics_token: String,
    /// Recorders and the vault.
    pub recordings: Recordings,
    /// The detection rules and the queue of alerts they raise.
    pub alerts: Alerts,
    /// The other nodes of the deployment, if any.
    pub cluster: crate::cluster::Cluster,
    /// The organisation as the issuer of medical certificates: its key and status list.
    pub certificates: crate::certificates::issuer::CertificateIssuer,
    /// Poked when a recording is shredded: the scheduled backup runs now, so that its key
    /// leaves the backups at once (see `backup`).
    pub backup_soon: Arc<tokio::sync::Notify>,
}

impl AppState {
    /// Assemble the state; fails if `public_url` cannot be a WebAuthn relying party.
    pub fn new(
        config: Config,
        crate::db::Pools { pool, writer, lane }: crate::db::Pools,
        clock: Arc<dyn Clock>,
        public_url: String,
        sealing_key: SealingKey,
        recordings: Recordings,
        cluster: crate::cluster::Cluster,
    ) -> anyhow::Result<Self> {
        let public_url = public_url.trim_end_matches('/').to_owned();
        let issuer = config
            .certificate
            .issuer
            .clone()
            .unwrap_or_else(|| public_url.clone());
        if config.certificate.issuer.is_none() && config.public_url.is_none() {
            tracing::warn!(
                issuer,
                "medical certificates name an issuer taken from the bound address: set public_url \
                 (or certificate.issuer) before issuing any, or they stop verifying when it changes"
            );
        }
        let certificates =
            crate::certificates::issuer::CertificateIssuer::load(&recordings.vault, issuer)?;
        let metrics = Metrics::new();
        let alerts = Alerts::new(config.alerts.rules.clone());
        let passkeys = RelyingParty::for_public_url(&public_url)?;
        let metrics_token =
            crate::secrets::metrics_token(&config.data_dir, config.admin.metrics_token.as_deref())?;
        // Checked when the configuration was validated.
        let trusted_proxies = TrustedProxies::parse(&config.trusted_proxies).unwrap_or_default();
        let connection_limits = ConnectionLimits::new(
            config.limits.max_connections_per_address,
            config.limits.max_connections,
            trusted_proxies.clone(),
            metrics.clone(),
        );
        Ok(Self(Arc::new(Shared {
            passkeys,
            metrics_token,
            connection_limits,
            unjoined_sockets: UnjoinedSockets::default(),
            join_rate: JoinRate::default(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            audit: AuditLog::on_lane(writer.clone(), &lane),
            hub: if cluster.is_clustered() {
                Hub::for_cluster(metrics.clone())
            } else {
                Hub::new(metrics.clone())
            },
            address_throttle: match cluster.redis() {
                Some((redis, prefix)) => {
                    AddressThrottle::shared(config.login.clone(), redis, prefix)
                }
                None => AddressThrottle::new(config.login.clone()),
            },
            trusted_proxies,
            revocations: Revocations::default(),
            metrics,
            config,
            pool,
            writer,
            lane,
            clock,
            public_url,
            certificates,
            sealing_key,
            recordings,
            alerts,
            cluster,
            backup_soon: Arc::new(tokio::sync::Notify::new()),
        })))
    }
}

impl AppState {
    /// Run a write on the database's [`WriteLane`], given a clone of the state: a transaction
    /// there holds SQLite's one writer only for its statements' own time. The write runs to
    /// its end even if the caller stops waiting.
    ///
    /// ```no_run
    /// # async fn f(state: consult_signaling::state::AppState) -> anyhow::Result<()> {
    /// state
    ///     .write(|state| async move {
    ///         let tx = state.audit.begin().await?;
    ///         // … the change and its audit entries …
    ///         tx.commit().await
    ///     })
    ///     .await
    /// # }
    /// ```
    pub async fn write<T, W>(&self, work: impl FnOnce(AppState) -> W) -> T
    where
        W: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.lane.run(work(self.clone())).await
    }
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

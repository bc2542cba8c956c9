//! Running the service: open the database, bind, optionally serve TLS with a self-signed
//! certificate kept in the data directory, and shut down gracefully.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use axum_server::Handle;

use crate::client_origin::TrustedProxies;
use crate::clock::Clock;
use crate::config::Config;
use crate::limits::{ConnectionLimits, Http1Only, LimitedAcceptor};
use crate::state::AppState;
use crate::{app, db, invites};
use hyper_util::rt::TokioTimer;

/// How often closed windows of the audit's tallies are moved into the chain.
const TALLY_CLOSING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Connections the kernel completes and holds for the service before it accepts them (Linux
/// caps it at `net.core.somaxconn`, 4,096 by default). The standard library's `bind` asks for
/// 128: a burst of new connections beyond that, or a moment when every runtime thread is busy,
/// and the kernel drops the next handshakes, which the clients send again a second later (3,
/// then 7, after further drops): 6,159 drops in one run of 700 consultations a second, each a
/// second or more added to someone's wait. nginx asks for 511; Go's servers for `somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// A listening TCP socket on `addr` (address reuse on, as the standard library's `bind` sets
/// it) with a queue of [`LISTEN_BACKLOG`] connections, non-blocking, for the server to take.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(LISTEN_BACKLOG)?.into_std()?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// A service that is listening.
pub struct RunningServer {
    /// The bound address (the real port when configured with port 0).
    pub addr: SocketAddr,
    /// The URL people open.
    pub url: String,
    /// The shared state (for tests and seeding).
    pub state: AppState,
    handle: Handle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The operator's listener (`admin.bind`), if configured.
    admin: Option<AdminListener>,
}

/// The operator's listener: metrics and health only.
struct AdminListener {
    addr: SocketAddr,
    handle: Handle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start_admin_listener(bind: SocketAddr, state: &AppState) -> anyhow::Result<AdminListener> {
    let listener = listen(bind).with_context(|| format!("binding admin.bind {bind}"))?;
    let addr = listener.local_addr()?;
    let handle = Handle::new();
    let service = app::admin_router(state.clone()).into_make_service();
    // Its own connection limits (the operator's scraper is not a patient), the same refusal
    // of HTTP/2 and of silent connections.
    let limits = &state.config.limits;
    let own_limits = ConnectionLimits::new(
        limits.max_connections_per_address,
        limits.max_connections,
        TrustedProxies::default(),
        crate::metrics::Metrics::new(),
    );
    let limited = Http1Only::new(LimitedAcceptor::new(own_limits, limits.header_read_timeout));
    let mut server = axum_server::from_tcp(listener).acceptor(limited);
    server
        .http_builder()
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let task = tokio::spawn(server.handle(handle.clone()).serve(service));
    tracing::info!(%addr, "metrics and health for the operator");
    Ok(AdminListener { addr, handle, task })
}

impl RunningServer {
    /// Stop accepting, close every WebSocket (1001), give open requests `grace` to finish, then
    /// stop.
    pub async fn shutdown(self, grace: Duration) -> anyhow::Result<()> {
        // Every WebSocket closes with 1001 (going away), so clients reconnect elsewhere at once.
        self.state.shutdown.cancel();
        // Recorders seal their last chunk before the process goes.
        self.state.recordings.stop_all().await;
        // Then the other nodes may take this node's consultations (restoring them from the
        // database, where every place and recording is now closed or held as it should be).
        self.state.cluster.leave().await;
        self.handle.graceful_shutdown(Some(grace));
        if let Some(admin) = self.admin {
            admin.handle.graceful_shutdown(Some(grace));
            admin.task.await??;
        }
        self.task.await??;
        Ok(())
    }

    /// Stop at once, as a killed process does: every connection dropped, nothing drained,
    /// nothing handed over to the other nodes of a deployment (they take this node's
    /// consultations when its leases lapse). For failover drills.
    pub async fn stop_now(self) {
        self.state.cluster.halt();
        self.state.shutdown.cancel();
        self.handle.shutdown();
        if let Some(admin) = self.admin {
            admin.handle.shutdown();
            let _ = admin.task.await;
        }
        let _ = self.task.await;
    }

    /// The operator's listener's address (`admin.bind`), if one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// Run until `signal` fires, then shut down gracefully.
    pub async fn run_until(self, mut signal: ShutdownSignal) -> anyhow::Result<()> {
        signal.recv().await;
        tracing::info!("shutting down");
        self.shutdown(Duration::from_secs(5)).await
    }
}

/// SIGINT and SIGTERM, listened for from the moment this is created (so a signal that arrives
/// during start-up is not lost to the default action).
pub struct ShutdownSignal {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    /// Start listening.
    pub fn listen() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Wait for either signal.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The URL links should use: the configured one, or the bound address (a LAN address when bound
/// to all interfaces, so a phone on the same network can open it).
pub fn public_url(config: &Config, addr: SocketAddr) -> String {
    if let Some(url) = &config.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let scheme = if config.tls { "https" } else { "http" };
    match reachable_ip(addr) {
        IpAddr::V6(v6) => format!("{scheme}://[{v6}]:{}", addr.port()),
        IpAddr::V4(v4) => format!("{scheme}://{v4}:{}", addr.port()),
    }
}

/// The address others reach a service bound to `addr` at: the bound address, or the machine's
/// first LAN address when bound to all interfaces (loopback if it has none).
fn reachable_ip(addr: SocketAddr) -> IpAddr {
    if addr.ip().is_unspecified() {
        lan_addresses()
            .into_iter()
            .next()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]))
    } else {
        addr.ip()
    }
}

fn lan_addresses() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|ifs| {
            ifs.into_iter()
                .filter(|i| !i.is_loopback() && i.ip().is_ipv4())
                .map(|i| i.ip())
                .collect()
        })
        .unwrap_or_default()
}

/// The vault in the data directory, and recordings the previous run left open marked
/// interrupted (audited): they keep everything up to their last sealed chunk.
async fn open_recordings(
    config: &Config,
    pool: &crate::db::Db,
    clock: &Arc<dyn Clock>,
    addr: SocketAddr,
) -> anyhow::Result<crate::recording::Recordings> {
    let vault = crate::recording::open_vault(config).await?;
    let media_address = config
        .recording
        .media_address
        .unwrap_or_else(|| reachable_ip(addr));
    let vault = Arc::new(vault);
    if config.cluster.redis_url.is_none() {
        // Alone, whatever is still recording was this node's. With several nodes, a node
        // closes a doctor's when it takes over their consultations.
        crate::recording::close_left_open(pool, &vault, clock, None).await?;
    }
    let candidates = crate::recording::candidates::CandidatePolicy::new(
        media_address,
        config.recording.candidate_networks.as_deref(),
    )?;
    Ok(crate::recording::Recordings::new(
        vault,
        media_address,
        candidates,
    ))
}

/// Open the database, bind and start serving in the background.
pub async fn start(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<RunningServer> {
    // rustls may see more than one crypto backend in one build; pick one explicitly.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pool = db::open_configured(&config).await?;
    raise_open_files_limit(config.limits.max_connections);
    let listener = listen(config.bind).with_context(|| format!("binding {}", config.bind))?;
    let addr = listener.local_addr()?;
    let url = public_url(&config, addr);
    let tls = if config.tls {
        Some(tls_config(&config.data_dir, addr).await?)
    } else {
        None
    };
    let sealing_key = crate::secrets::SealingKey::load_or_create(&config.data_dir)
        .context("loading the sealing key")?;
    let recordings = open_recordings(&config, &pool, &clock, addr).await?;
    let retention_sweep = config.recording.retention_sweep_interval;
    let cluster = crate::cluster::Cluster::connect(&config.cluster).await?;
    let state = AppState::new(
        config,
        db::Pools::of(pool)?,
        clock,
        url.clone(),
        sealing_key,
        recordings,
        cluster,
    )
    .context("public_url")?;
    if state.cluster.is_clustered() {
        // Each doctor's consultations come back on whichever node becomes their home.
        state.cluster.start(&state);
        state.cluster.ready().await;
    } else {
        let restored = invites::restore_places(&state, None).await?;
        if restored > 0 {
            tracing::info!(
                restored,
                "places held when the previous run stopped wait for their participants"
            );
        }
    }
    // Zero: this node sweeps nothing (another node does, or a restore drill's service).
    if !retention_sweep.is_zero() {
        crate::recording::spawn_retention_job(state.clone(), retention_sweep);
    }
    crate::backup::schedule::spawn(state.clone());
    crate::audit_tally::spawn_closing_job(state.clone(), TALLY_CLOSING_INTERVAL);
    crate::alerts::spawn_writer(state.clone());
    if state.config.alerts.webhook_url.is_some() {
        let secret = crate::secrets::kept_token(
            &state.config.data_dir,
            "alerts-webhook.secret",
            state.config.alerts.webhook_secret.as_deref(),
        )
        .context("loading the alert webhook's secret")?;
        crate::alerts::webhook::spawn_delivery(state.clone(), secret);
    }
    let audit_signer =
        crate::audit_checkpoints::AuditSigner::load_or_create(&state.config.data_dir)
            .context("loading the audit signing key")?;
    crate::audit_checkpoints::spawn_checkpoint_job(
        state.writer.clone(),
        Arc::new(audit_signer),
        state.config.audit.checkpoint_interval,
    );
    let service = app::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let handle = Handle::new();
    // Within the connection limits, with TCP_NODELAY: signaling is small messages that must go
    // at once. With Nagle's algorithm a message written while the previous one is
    // unacknowledged waited for the client's delayed ACK, adding 40 ms to every admission
    // (found by `consult load --signaling-only`).
    let header_read_timeout = state.config.limits.header_read_timeout;
    let limited = LimitedAcceptor::new(state.connection_limits.clone(), header_read_timeout);
    let mut server = axum_server::from_tcp(listener);
    server
        .http_builder()
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let task = match tls {
        Some(tls) => tokio::spawn(
            server
                .acceptor(Http1Only::new(RustlsAcceptor::new(tls).acceptor(limited)))
                .handle(handle.clone())
                .serve(service),
        ),
        None => tokio::spawn(
            server
                .acceptor(Http1Only::new(limited))
                .handle(handle.clone())
                .serve(service),
        ),
    };
    let admin = match state.config.admin.bind {
        Some(bind) => Some(start_admin_listener(bind, &state).await?),
        None => None,
    };
    Ok(RunningServer {
        addr,
        url,
        state,
        handle,
        task,
        admin,
    })
}

/// Raise the soft limit of open files to the hard limit: each connection is a descriptor, and
/// the usual soft limit (1024) is below `limits.max_connections`. Says so if it stays below.
fn raise_open_files_limit(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    // Descriptors beside connections: the database, recordings, sockets of the recorder.
    if soft < max_connections as u64 + 256 {
        tracing::warn!(
            open_files = soft,
            max_connections,
            "the open-files limit is below limits.max_connections; raise it (ulimit -n) or lower the setting"
        );
    }
}

/// Load the self-signed certificate from `DATA_DIR/tls/`, creating it on first run.
async fn tls_config(data_dir: &Path, addr: SocketAddr) -> anyhow::Result<RustlsConfig> {
    let dir = data_dir.join("tls");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if !cert_path.exists() || !key_path.exists() {
        std::fs::create_dir_all(&dir)?;
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        if !addr.ip().is_unspecified() {
            names.push(addr.ip().to_string());
        }
        names.extend(lan_addresses().into_iter().map(|ip| ip.to_string()));
        names.dedup();
        let certified = rcgen::generate_simple_self_signed(names)
            .context("generating a self-signed certificate")?;
        write_private(&key_path, certified.key_pair.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, certified.cert.pem())?;
        tracing::info!(path = %cert_path.display(), "generated a self-signed TLS certificate");
    }
    let loaded = RustlsConfig::from_pem_file(&cert_path, &key_path)
        .await
        .context("loading the TLS certificate")?;
    // HTTP/1.1 only: its header-read timeout closes slow and idle connections, where an HTTP/2
    // connection that sends its preface may idle for ever.
    let mut config = (*loaded.get_inner()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(RustlsConfig::from_config(Arc::new(config)))
}

/// Write a file only its owner can read.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of connections larger than the standard library's queue of 128 all complete
    /// while the server takes none of them yet (with 128, the 130th handshake is dropped and
    /// its client waits a second to try again); the server then takes every one.
    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_queue_rather_than_being_dropped() {
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        let burst = somaxconn.min(1000);
        assert!(
            burst > 129,
            "net.core.somaxconn is {somaxconn}: raise it to test this"
        );
        let listener =
            tokio::net::TcpListener::from_std(listen("127.0.0.1:0".parse().unwrap()).unwrap())
                .unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::with_capacity(burst);
        for n in 0..burst {
            let connected = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr),
            )
            .await;
            match connected {
                Ok(Ok(stream)) => clients.push(stream),
                other => panic!("connection {n} of {burst} was not queued: {other:?}"),
            }
        }
        for _ in 0..burst {
            tokio::time::timeout(Duration::from_secs(5), listener.accept())
                .await
                .expect("a queued connection")
                .unwrap();
        }
    }
}

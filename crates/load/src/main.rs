//! `consult-load` (also run as `consult load`): the QA load generator against a service at a URL,
//! or against one this command starts for the run — a child `consult serve` on 127.0.0.1 with a
//! fresh data directory and one seeded clinician per consultation, stopped afterwards.
//!
//! It is a binary of its own because it needs the codecs, which the service never links. `consult
//! load ARGS` runs this binary from beside `consult` (or from `PATH`) and tells it, in
//! `CONSULT_LOAD_SERVICE_BIN`, which `consult` to start for a local run.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, ValueEnum};
use consult_api_client::ClinicianLogin;
use consult_load::plan::{Plan, VideoProfile};
use consult_load::run::{Target, Thresholds};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

/// On or off.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// On.
    On,
    /// Off.
    Off,
}

/// Load-test a Consult service with many real consultations (QA): two native peers each, through
/// invite, waiting room and admission; writes report.json and report.html.
#[derive(Parser)]
#[command(name = "consult-load", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    args: LoadArgs,
}

/// `consult-load` options.
#[derive(Args)]
struct LoadArgs {
    /// The service to load, e.g. https://consult.example.org. Without it, a service is started
    /// on 127.0.0.1 for the run (one seeded clinician per consultation) and stopped after.
    #[arg(long, requires = "credentials")]
    url: Option<String>,
    /// With --url: a JSON file listing the clinicians' sign-in details,
    /// `[{"email": ..., "password": ..., "totp_secret": ...}, ...]`, one per consultation
    /// (a clinician admits one patient at a time).
    #[arg(long, requires = "url")]
    credentials: Option<PathBuf>,
    /// With --url: a file holding the service's metrics token (its `admin.metrics_token`, or
    /// its `DATA_DIR/keys/metrics.token`), for the service-side figures of the report.
    #[arg(long, requires = "url")]
    metrics_token_file: Option<PathBuf>,
    /// Consultations to run at once.
    #[arg(long, short = 'n', default_value_t = 5)]
    consultations: usize,
    /// Consultations started per second during ramp-up.
    #[arg(long, default_value_t = 2.0)]
    ramp: f64,
    /// How long every consultation is held once ramp-up is over (e.g. 10s, 2m).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Video each peer sends: off, 360p or 720p (30 fps, pre-encoded H.264).
    #[arg(long, default_value = "360p")]
    video: VideoProfile,
    /// Audio each peer sends (pre-encoded Opus).
    #[arg(long, value_enum, default_value = "on")]
    audio: Switch,
    /// End-to-end encryption (SFrame) on the consultations.
    #[arg(long, value_enum, default_value = "off")]
    e2ee: Switch,
    /// Recorded consultations (the patient consents) instead of live-only.
    #[arg(long)]
    recorded: bool,
    /// Signaling only: clinicians and patients join and are admitted, no media connection.
    #[arg(long)]
    signaling_only: bool,
    /// Receivers in this many consultations also decode every frame with a real decoder.
    #[arg(long, default_value_t = 1)]
    decode: usize,
    /// People in each consultation, the clinician included: 2, or a group of 3 (an interpreter
    /// through a named invite) or 4 (and a companion). The service must allow as many
    /// (`policy.max_participants`; a service started here does).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=4))]
    participants: u8,
    /// Seed of every random choice, so a run can be repeated.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A consultation not connected this long after admission fails (ICE or DTLS).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// A connected consultation with no intact remote frame this long after connecting fails.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    media_timeout: Duration,
    /// Exit 1 when more consultations than this fail (default 0: any failure fails the run).
    #[arg(long, default_value_t = 0)]
    max_failures: u64,
    /// Exit 1 when the p95 admission-to-first-frame time (admission time with
    /// --signaling-only) is above this many milliseconds.
    #[arg(long)]
    max_p95_join_ms: Option<f64>,
    /// Directory for report.json, report.html (and service.log for a service started here).
    #[arg(long, default_value = "consult-load-report")]
    report: PathBuf,
    /// Local address for the peers' sockets. Default: 127.0.0.1 for a local service, every
    /// IPv4 interface otherwise.
    #[arg(long)]
    bind_ip: Option<IpAddr>,
    /// No progress bars.
    #[arg(long)]
    no_progress: bool,
}

impl LoadArgs {
    fn plan(&self) -> Plan {
        Plan {
            consultations: self.consultations,
            ramp_per_sec: self.ramp,
            duration: self.duration,
            video: self.video,
            audio: self.audio == Switch::On,
            e2ee: self.e2ee == Switch::On,
            recorded: self.recorded,
            signaling_only: self.signaling_only,
            decode: self.decode,
            seed: self.seed,
            connect_timeout: self.connect_timeout,
            media_timeout: self.media_timeout,
            participants: usize::from(self.participants),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Off unless asked for: RUST_LOG=consult_client=debug shows each connection's negotiation.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match load(cli.args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Run the load generator.
async fn load(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let plan = args.plan();
    if plan.signaling_only && plan.participants > 2 {
        anyhow::bail!(
            "--signaling-only runs two participants per consultation; leave out --participants"
        );
    }
    let thresholds = Thresholds {
        max_failures: Some(args.max_failures),
        max_p95_join_ms: args.max_p95_join_ms,
    };
    std::fs::create_dir_all(&args.report)
        .with_context(|| format!("creating {}", args.report.display()))?;
    // Ctrl-C (or SIGTERM) hangs everyone up, ends the consultations and writes the report.
    let interrupt = CancellationToken::new();
    let mut signal = ShutdownSignal::listen()?;
    let on_signal = interrupt.clone();
    // A service started here, killed too if a second Ctrl-C quits at once.
    let service_pid = Arc::new(AtomicU32::new(0));
    let local_pid = service_pid.clone();
    tokio::spawn(async move {
        signal.recv().await;
        eprintln!("load: interrupted — hanging up and ending every consultation (Ctrl-C again to quit at once)");
        on_signal.cancel();
        signal.recv().await;
        let pid = local_pid.load(Ordering::SeqCst);
        if pid != 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::process::exit(130);
    });
    let (target, local) = match (&args.url, &args.credentials) {
        (Some(url), Some(credentials)) => {
            let clinicians = read_credentials(credentials)?;
            let metrics_token = match &args.metrics_token_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?
                        .trim()
                        .to_owned(),
                ),
                None => None,
            };
            let target = Target {
                base_url: url.trim_end_matches('/').to_owned(),
                clinicians,
                bind_ip: args.bind_ip,
                service_log: None,
                service_pid: None,
                metrics_token,
            };
            (target, None)
        }
        _ => {
            eprintln!(
                "load: starting a local service with {} clinicians",
                plan.consultations
            );
            // Dropping the start on Ctrl-C kills the child (`kill_on_drop`).
            let local = tokio::select! {
                local = LocalService::start(plan.consultations, plan.participants, &args.report) => local?,
                _ = interrupt.cancelled() => return Ok(ExitCode::from(130)),
            };
            service_pid.store(local.child.id().unwrap_or(0), Ordering::SeqCst);
            let target = Target {
                base_url: local.url.clone(),
                clinicians: local.clinicians.clone(),
                bind_ip: Some(args.bind_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]))),
                service_log: Some(local.log.clone()),
                service_pid: local.child.id(),
                metrics_token: Some(local.metrics_token.clone()),
            };
            (target, Some(local))
        }
    };
    let result =
        consult_load::run::run(plan, target, &thresholds, interrupt, !args.no_progress).await;
    if let Some(local) = local {
        local.stop().await;
    }
    let mut report = result?;
    if let Some(log) = &report.service.log {
        // Read again now that the service has stopped: its shutdown is in the log too.
        report.service.log = Some(consult_load::run::scan_log(Path::new(&log.path)));
    }
    let (json, html) = consult_load::write_report(&report, &args.report)?;
    println!("{}", consult_load::table::render(&report));
    if let Some(message) = &report.message {
        eprintln!("load: {message}");
    }
    for threshold in report.thresholds.iter().filter(|t| !t.passed) {
        eprintln!(
            "load: threshold crossed: {} = {} (limit {})",
            threshold.name,
            threshold
                .measured
                .map_or("none".into(), |m| format!("{m:.1}")),
            threshold.limit
        );
    }
    println!("report: {} and {}", json.display(), html.display());
    Ok(ExitCode::from(report.exit_code()))
}

fn read_credentials(path: &Path) -> anyhow::Result<Vec<ClinicianLogin>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let clinicians: Vec<ClinicianLogin> = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a list of {{email, password, totp_secret}}",
            path.display()
        )
    })?;
    Ok(clinicians)
}

/// A `consult serve` child started for one run.
struct LocalService {
    child: tokio::process::Child,
    data_dir: PathBuf,
    url: String,
    clinicians: Vec<ClinicianLogin>,
    log: PathBuf,
    metrics_token: String,
}

impl LocalService {
    async fn start(
        clinicians: usize,
        participants: usize,
        report_dir: &Path,
    ) -> anyhow::Result<Self> {
        let data_dir = std::env::temp_dir().join(format!("consult-load-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&data_dir)?;
        let log = report_dir.join("service.log");
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = tokio::process::Command::new(service_binary()?);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--bind", "127.0.0.1:0"])
            .args(["--seed-load-clinicians", &clinicians.to_string()])
            // Every peer and request comes from this one address: the per-address connection
            // limits would refuse a large run (a deployment under test needs the same).
            .env("CONSULT_LIMITS__MAX_CONNECTIONS_PER_ADDRESS", "1000000")
            .env("CONSULT_LIMITS__MAX_CONNECTIONS", "1000000")
            .env("CONSULT_SIGNALING__MAX_UNJOINED_SOCKETS", "1000000")
            .env("CONSULT_POLICY__MAX_PARTICIPANTS", participants.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            // Its own process group: a Ctrl-C in the terminal reaches only the generator,
            // which ends the consultations before stopping the service.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().context("starting the local service")?;
        let stdout = child.stdout.take().context("the service's output")?;
        let mut lines = BufReader::new(stdout).lines();
        // Seeding hashes a password per clinician (Argon2, made to be slow): a large run
        // takes minutes before the service is up.
        let ready_within = Duration::from_secs(120)
            + Duration::from_millis(100) * u32::try_from(clinicians).unwrap_or(u32::MAX);
        let url = tokio::time::timeout(ready_within, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("Consult is running at ") {
                    return Ok(url.trim_end_matches('/').to_owned());
                }
            }
            anyhow::bail!(
                "the local service exited before it was ready; see {}",
                log.display()
            )
        })
        .await
        .with_context(|| format!("the local service did not start within {ready_within:?}"))??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let clinicians = read_credentials(&data_dir.join("load-credentials.json"))?;
        let metrics_token = std::fs::read_to_string(data_dir.join("keys/metrics.token"))
            .context("reading the local service's metrics token")?
            .trim()
            .to_owned();
        Ok(Self {
            child,
            data_dir,
            url,
            clinicians,
            log,
            metrics_token,
        })
    }

    /// SIGTERM, so the service shuts down as it would in production (its log shows it), then
    /// SIGKILL if it has not after 10 s; the data directory goes too.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// The `consult` binary to start for a local run: `CONSULT_LOAD_SERVICE_BIN` (set by
/// `consult load`), else the one beside this binary, else `consult` on `PATH`.
fn service_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("CONSULT_LOAD_SERVICE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let beside = std::env::current_exe()?.with_file_name("consult");
    Ok(if beside.exists() {
        beside
    } else {
        PathBuf::from("consult")
    })
}

/// SIGINT or SIGTERM, each time either arrives.
struct ShutdownSignal {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    fn listen() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
    }
}

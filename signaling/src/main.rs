//! `consult`: the one binary operators run. Argument parsing and wiring only; the work is in the
//! `consult_signaling` library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use consult_proto::api::Role;
use consult_signaling::accounts::{self, DemoCredentials, NewUser};
use consult_signaling::audit::{self, AuditLog};
use consult_signaling::audit_checkpoints;
use consult_signaling::clock::{Clock, SystemClock};
use consult_signaling::config::Config;
use consult_signaling::{db, recording, server};
use tracing_subscriber::EnvFilter;

/// Consult: peer-to-peer encrypted video consultations.
#[derive(Parser)]
#[command(name = "consult", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve(ServeArgs),
    /// Manage accounts.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Check or export the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// List, export or shred recordings.
    #[command(subcommand)]
    Recording(RecordingCommand),
    /// Manage the vault's key-encryption keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Encrypted, incremental backups to another site (restic), and restoring them.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Load-test a service with many real consultations (QA): two native peers each, through
    /// invite, waiting room and admission; writes report.json and report.html. Runs the
    /// `consult-load` binary (it needs the codecs, which this one never links):
    /// `consult load --help` lists its options.
    #[command(disable_help_flag = true)]
    Load {
        /// Everything after `load`, passed on to `consult-load`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Medical certificates: verify one, offline with the issuer's saved keys.
    #[command(subcommand)]
    Certificate(CertificateCommand),
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
}

#[derive(Subcommand)]
enum CertificateCommand {
    /// Verify a certificate presentation (the SD-JWT itself, or a verify link whose part after
    /// `#` holds it) against the issuer's keys: prints the issuer, the kind, the validity, the
    /// revocation status and exactly the claims it discloses. Exit 0 when it is valid (and, with
    /// `--status-list`, not revoked), 1 when it is not, 3 when it was revoked.
    Verify {
        /// The presentation, or `-` to read it from standard input.
        presentation: String,
        /// The issuer (its URL, as in the certificate's `iss`).
        #[arg(long)]
        issuer: String,
        /// The issuer's JWKS, saved from its `/.well-known/jwks.json`.
        #[arg(long)]
        jwks: PathBuf,
        /// The status list token, saved from the certificate's status URL: checks revocation.
        #[arg(long)]
        status_list: Option<PathBuf>,
    },
    /// Revoke a certificate as the operator, with a reason (kept in the audit trail): named by
    /// its id (from the audit trail) or by a presentation of it (the SD-JWT or a verify link),
    /// which must verify against this issuer first. Verifiers see it as revoked at once.
    Revoke {
        #[command(flatten)]
        location: Location,
        /// The certificate's id, or a presentation or verify link of it.
        certificate: String,
        /// Why it is revoked.
        #[arg(long)]
        reason: String,
    },
    /// A new issuer signing key (ES256, kept in the vault's keyring): certificates are signed
    /// with it from the next start. The old private key is destroyed; its public key stays in
    /// the JWKS, so certificates it signed still verify. Stop the service first. Audited.
    RotateKey {
        #[command(flatten)]
        location: Location,
    },
}

#[derive(Subcommand)]
enum RecordingCommand {
    /// Every recording's metadata, as JSON lines (operators may list).
    List {
        #[command(flatten)]
        location: Location,
    },
    /// Write a recording as a playable file: WebM (VP8 + Opus) or Matroska (H.264). Only the
    /// consultation's clinician may: give their session token (from `POST /api/v1/auth/login`).
    Export {
        #[command(flatten)]
        location: Location,
        /// The recording id.
        id: uuid::Uuid,
        /// The file to write (it appears only when the export is whole).
        #[arg(long)]
        out: PathBuf,
        /// A file holding the clinician's session token.
        #[arg(long, env = "CONSULT_SESSION_TOKEN_FILE")]
        session_token_file: Option<PathBuf>,
        /// End-to-end encrypted recordings: the clinician's key file (`recording keygen`).
        #[arg(long, requires = "passphrase_file")]
        key_file: Option<PathBuf>,
        /// The file whose first line is the key file's passphrase.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Create a clinician's recording key: writes the key file (private key sealed under the
    /// passphrase with Argon2id) and prints the public key to register in the web demo
    /// (`PUT /api/v1/account/recording-key`).
    Keygen {
        /// The key file to write.
        #[arg(long)]
        out: PathBuf,
        /// The file whose first line is the passphrase (at least 12 characters).
        #[arg(long)]
        passphrase_file: PathBuf,
    },
    /// Destroy a recording's key: every copy of it becomes unreadable — backups too, once the
    /// backup this then makes (with `[backup]` configured) has run.
    Shred {
        #[command(flatten)]
        location: Location,
        /// The recording id.
        id: uuid::Uuid,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a key-encryption key version, re-wrap every recording's data key under it, and
    /// destroy the old versions (media is not re-encrypted). Stop the service first.
    Rotate {
        #[command(flatten)]
        location: Location,
    },
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Write a new backup key (256 random bits, owner-only) to FILE. Point `backup.key_file` at
    /// it, outside the data directory, and keep a copy somewhere safe: no backup opens without it.
    Keygen {
        /// The file to write (refused if it exists).
        #[arg(long)]
        out: PathBuf,
    },
    /// Create the backup repository (once; backups never create one themselves, so a
    /// repository that cannot be found is never replaced by a new one elsewhere).
    Init {
        #[command(flatten)]
        location: Location,
    },
    /// Back up now: the database's consistent snapshot, the configuration, TLS material, audit
    /// keys and local recordings' media, then the vault's keys (only what changed is uploaded).
    Create {
        #[command(flatten)]
        location: Location,
    },
    /// This installation's backups, oldest first.
    List {
        #[command(flatten)]
        location: Location,
    },
    /// Check the repository, then restore the latest backup into a scratch directory and prove
    /// it: database, audit chain and checkpoints, every recording's keys and sealed chunks.
    /// Exit 1 if anything does not verify.
    Verify {
        #[command(flatten)]
        location: Location,
        /// Also read and authenticate every pack of the repository (slow; the default checks
        /// the structure and reads the latest backup).
        #[arg(long)]
        read_all_data: bool,
    },
    /// Restore a backup into the data directory (and the database, for PostgreSQL), with the
    /// current keys: recordings shredded since the backup stay shredded. Refused if the data
    /// directory is not empty, unless --force (what is there is moved aside, never deleted).
    Restore {
        #[command(flatten)]
        location: Location,
        /// The backup's id (from `consult backup list`), or `latest`.
        #[arg(long, default_value = "latest")]
        snapshot: String,
        /// Restore over a non-empty data directory or database of this installation.
        #[arg(long)]
        force: bool,
    },
    /// Apply the retention policy (`backup.keep_*`) and delete what no backup uses.
    Prune {
        #[command(flatten)]
        location: Location,
    },
    /// Restore drill: restore a backup into a scratch directory (never the live one), start a
    /// service on it on loopback and prove it: it answers, a clinician signs in, the audit chain
    /// and checkpoints verify, every recording exports into a file ffprobe accepts, shredded
    /// recordings stay shredded; then the recovery point. Exit 1 if anything does not hold.
    Drill {
        #[command(flatten)]
        location: Location,
        /// The backup's id, or `latest`.
        #[arg(long, default_value = "latest")]
        snapshot: String,
        /// Make a backup first, and drill that one.
        #[arg(long)]
        backup_first: bool,
        /// A JSON file `{"email","password","totp_secret"}` of a clinician account to sign in
        /// with (a dedicated drill account).
        #[arg(long)]
        sign_in: Option<PathBuf>,
        /// A clinician's recording key file: their zero-knowledge recordings are exported too
        /// (otherwise every sealed chunk of them is authenticated).
        #[arg(long, requires = "passphrase_file")]
        key_file: Option<PathBuf>,
        /// The file whose first line is the key file's passphrase.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// An empty PostgreSQL database to restore into, for installations on PostgreSQL.
        #[arg(long)]
        scratch_database_url: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where to find the configuration and data; shared by every subcommand.
#[derive(Args, Clone)]
struct Location {
    /// Data directory (database, TLS certificate). Default: ./consult-data
    #[arg(long, env = "CONSULT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl Location {
    fn load(&self) -> anyhow::Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
            // What depends on the data directory is checked against this one.
            config.validate()?;
        }
        Ok(config)
    }
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    location: Location,
    /// Address to listen on. Default: 127.0.0.1:8080
    #[arg(long)]
    bind: Option<std::net::SocketAddr>,
    /// Seed a demo doctor and write its sign-in details to DATA_DIR/demo-credentials.json.
    #[arg(long)]
    demo: bool,
    /// Serve HTTPS with a self-signed certificate kept in the data directory.
    #[arg(long)]
    tls: bool,
    /// Seed N load-test clinicians (`consult load`) and write their sign-in details to
    /// DATA_DIR/load-credentials.json. For test deployments only.
    #[arg(long, value_name = "N")]
    seed_load_clinicians: Option<usize>,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an account and print its one-time enrolment link.
    CreateUser {
        #[command(flatten)]
        location: Location,
        /// doctor or admin.
        #[arg(long)]
        role: Role,
        /// Sign-in email.
        #[arg(long)]
        email: String,
        /// Name shown to patients. Default: the part of the email before '@'.
        #[arg(long)]
        name: Option<String>,
        /// The licence number a clinician signs medical certificates with.
        #[arg(long)]
        licence: Option<String>,
    },
    /// Set (or replace) the licence number a clinician signs medical certificates with.
    SetLicence {
        #[command(flatten)]
        location: Location,
        /// The clinician's sign-in email.
        #[arg(long)]
        email: String,
        /// The licence number, as the licensing body writes it.
        #[arg(long)]
        licence: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the hash chain and check every stored signed checkpoint; with --against, also a
    /// head kept elsewhere. Exit 1 naming what is wrong.
    Verify {
        #[command(flatten)]
        location: Location,
        /// A head printed by `consult audit head` (the line itself, or a file holding it): a
        /// history truncated or rewritten since then is found even if every hash was recomputed.
        #[arg(long)]
        against: Option<String>,
    },
    /// Sign the chain's head now, store it, and print it for an external witness to keep.
    Head {
        #[command(flatten)]
        location: Location,
    },
    /// Start a new audit signing key; the old private key is destroyed, its public key kept to
    /// verify old heads.
    RotateKey {
        #[command(flatten)]
        location: Location,
    },
    /// Write every entry as JSON lines (to standard output, or --output).
    Export {
        #[command(flatten)]
        location: Location,
        /// File to write instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `consult load ARGS`: replace this process with `consult-load ARGS` (from beside this binary, or
/// from `PATH`), telling it which `consult` to start for a local run. Signals then reach the
/// generator directly, as if it had been started itself.
fn run_load_generator(args: &[std::ffi::OsString]) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let this = std::env::current_exe().context("locating the consult binary")?;
    let beside = this.with_file_name("consult-load");
    let generator = if beside.exists() {
        beside
    } else {
        PathBuf::from("consult-load")
    };
    let error = std::process::Command::new(&generator)
        .args(args)
        .env("CONSULT_LOAD_SERVICE_BIN", &this)
        .exec();
    anyhow::bail!(
        "could not run the load generator {} ({error}); it is a separate binary because it \
         needs the codec libraries: build it with `cargo build --release -p consult-load` \
         (Debian: libopus-dev libvpx-dev nasm pkg-config)",
        generator.display()
    )
}

fn init_logging(filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Admin(AdminCommand::CreateUser {
            location,
            role,
            email,
            name,
            licence,
        }) => {
            let config = location.load()?;
            init_logging("warn");
            let pool = db::open_configured(&config).await?;
            let audit = AuditLog::new(pool.clone());
            let public_url = server::public_url(&config, config.bind);
            let name =
                name.unwrap_or_else(|| email.split('@').next().unwrap_or_default().to_owned());
            let new = NewUser {
                email,
                display_name: name,
                role,
                licence_number: licence,
            };
            let created = accounts::create_user(
                &pool,
                &audit,
                SystemClock.now(),
                &new,
                &public_url,
                config.invite.enrolment_ttl,
            )
            .await?;
            println!(
                "Created {} {} ({}).",
                role.as_str(),
                created.user.email,
                created.user.display_name
            );
            println!(
                "Send them this one-time enrolment link (valid {}):",
                humantime::format_duration(config.invite.enrolment_ttl)
            );
            println!("{}", created.enrolment_url);
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin(AdminCommand::SetLicence {
            location,
            email,
            licence,
        }) => {
            let config = location.load()?;
            init_logging("warn");
            let pool = db::open_configured(&config).await?;
            let audit = AuditLog::new(pool.clone());
            let user =
                accounts::set_licence_number(&pool, &audit, SystemClock.now(), &email, &licence)
                    .await?;
            println!(
                "{} ({}) signs with licence number {}.",
                user.email,
                user.display_name,
                licence.trim()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Verify { location, against }) => {
            // A head that is not one is a usage error, whatever the chain holds.
            let head = match &against {
                Some(against) => {
                    let line = std::fs::read_to_string(against).unwrap_or_else(|_| against.clone());
                    Some(line.trim().parse::<audit_checkpoints::Head>()?)
                }
                None => None,
            };
            let config = location.load()?;
            let pool = db::open_configured(&config).await?;
            let n = match audit::verify(&pool).await? {
                Ok(n) => n,
                Err(broken) => {
                    println!("audit chain BROKEN at entry {}: {broken}", broken.seq());
                    return Ok(ExitCode::from(1));
                }
            };
            let keys = audit_checkpoints::public_keys(&config.data_dir)?;
            let checkpoints = match audit_checkpoints::verify_checkpoints(&pool, &keys).await? {
                Ok(c) => c,
                Err((seq, mismatch)) => {
                    println!("audit chain REWRITTEN: the signed checkpoint at entry {seq} does not hold: {mismatch}");
                    return Ok(ExitCode::from(1));
                }
            };
            if let Some(head) = head {
                if let Err(mismatch) =
                    audit_checkpoints::verify_against(&pool, &keys, &head).await?
                {
                    println!(
                        "audit chain does NOT match the head at entry {}: {mismatch}",
                        head.seq
                    );
                    return Ok(ExitCode::from(1));
                }
                println!("audit chain matches the head at entry {}", head.seq);
            }
            println!("audit chain intact: {n} entries, {checkpoints} signed checkpoints hold");
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Head { location }) => {
            let config = location.load()?;
            let pool = db::open_configured(&config).await?;
            let signer = audit_checkpoints::AuditSigner::load_or_create(&config.data_dir)?;
            println!("{}", audit_checkpoints::checkpoint(&pool, &signer).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::RotateKey { location }) => {
            let config = location.load()?;
            let version = audit_checkpoints::AuditSigner::rotate(&config.data_dir)?;
            println!("audit signing key version {version} in use; older private keys destroyed");
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Export { location, output }) => {
            let config = location.load()?;
            let pool = db::open_configured(&config).await?;
            let mut out: Box<dyn Write> = match &output {
                Some(path) => Box::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?,
                ),
                None => Box::new(std::io::stdout().lock()),
            };
            for entry in audit::entries(&pool).await? {
                serde_json::to_writer(&mut out, &entry)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Recording(command) => recording_command(command).await,
        Command::Keys(KeysCommand::Rotate { location }) => {
            let config = location.load()?;
            let rotation = recording::cli::rotate_keys(&config).await?;
            println!(
                "keys rotated: version {} is current; {} data keys re-wrapped; retired versions {:?}",
                rotation.new_version, rotation.rewrapped, rotation.retired
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Load { args } => run_load_generator(&args),
        Command::Backup(command) => backup_command(command).await,
        Command::Certificate(CertificateCommand::Verify {
            presentation,
            issuer,
            jwks,
            status_list,
        }) => verify_certificate(&presentation, &issuer, &jwks, status_list.as_deref()),
        Command::Certificate(CertificateCommand::Revoke {
            location,
            certificate,
            reason,
        }) => {
            let config = location.load()?;
            init_logging("warn");
            let revoked =
                consult_signaling::certificates::revoke_as_operator(&config, &certificate, &reason)
                    .await?;
            println!(
                "certificate {} of consultation {} revoked",
                revoked.id, revoked.consultation_id
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Certificate(CertificateCommand::RotateKey { location }) => {
            let config = location.load()?;
            init_logging("warn");
            let vault_dir = config.data_dir.join("vault");
            let (retired, current) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let vault = consult_vault::Vault::open_exclusive(&vault_dir)?;
                let retired: Vec<String> = vault
                    .signing_keys()?
                    .iter()
                    .filter(|k| k.retired_at.is_none())
                    .map(|k| k.id.clone())
                    .collect();
                let current = vault
                    .rotate_signing_key(consult_signaling::certificates::issuer::new_signing_key)?;
                Ok((retired, current.id.clone()))
            })
            .await??;
            let pool = db::open_configured(&config).await?;
            AuditLog::new(pool)
                .record(
                    SystemClock.now(),
                    &consult_signaling::audit::Actor::Operator,
                    consult_signaling::audit::Action::CertificateKeyRotated,
                    None,
                    serde_json::json!({ "kid": current, "retired": retired }),
                )
                .await?;
            println!("issuer key rotated: {current} signs from the next start; retired {retired:?} (public keys still published)");
            Ok(ExitCode::SUCCESS)
        }
        Command::Openapi => {
            println!(
                "{}",
                consult_signaling::app::openapi_document().to_pretty_json()?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `consult certificate verify`: everything offline, from files.
fn verify_certificate(
    presentation: &str,
    issuer: &str,
    jwks: &std::path::Path,
    status_list: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    use consult_certificate::{check_status, verify, CertificateStatus, Jwks};
    use std::io::Read as _;
    const MAX_INPUT: u64 = 64 * 1024;
    let read = |path: &std::path::Path, what: &str| -> anyhow::Result<String> {
        let file =
            std::fs::File::open(path).with_context(|| format!("{what} {}", path.display()))?;
        let mut text = String::new();
        file.take(16 * 1024 * 1024)
            .read_to_string(&mut text)
            .with_context(|| format!("{what} {} is not text", path.display()))?;
        Ok(text)
    };
    let mut given = presentation.to_owned();
    if given == "-" {
        given.clear();
        std::io::stdin()
            .take(MAX_INPUT + 1)
            .read_to_string(&mut given)
            .context("reading the presentation from standard input")?;
    }
    // A verify link carries the presentation after `#` (never sent to a server).
    let given = given
        .rsplit_once('#')
        .map_or(given.as_str(), |(_, after)| after)
        .trim();
    let keys: Jwks = serde_json::from_str(&read(jwks, "the JWKS")?).with_context(|| {
        format!(
            "{} is not a JWKS (a JSON object with \"keys\")",
            jwks.display()
        )
    })?;
    let now = time::OffsetDateTime::now_utc();
    let verified = match verify(given, issuer, &keys, now) {
        Ok(verified) => verified,
        Err(e) => {
            println!("NOT VALID: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let status = match (status_list, &verified.status) {
        (None, _) => "not checked (no --status-list)".to_owned(),
        (Some(_), None) => "not revocable (the certificate names no status list)".to_owned(),
        (Some(path), Some(reference)) => {
            match check_status(&read(path, "the status list")?, &keys, reference, now) {
                Ok(CertificateStatus::Valid) => "not revoked (status list checked)".to_owned(),
                Ok(CertificateStatus::Revoked) => {
                    println!("REVOKED: {} revoked this certificate", verified.issuer);
                    return Ok(ExitCode::from(3));
                }
                Err(e) => {
                    println!("NOT VALID: the status list cannot be used: {e}");
                    return Ok(ExitCode::from(1));
                }
            }
        }
    };
    let when = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.unix_timestamp().to_string())
    };
    println!("valid certificate: signature, disclosures and validity checked");
    println!("issuer: {} (key {})", verified.issuer, verified.kid);
    println!("kind: {}", verified.kind.as_str());
    println!(
        "valid from {} until {}",
        when(verified.valid_from),
        when(verified.valid_until)
    );
    println!("status: {status}");
    if verified.disclosed.is_empty() {
        println!("disclosed: nothing");
    } else {
        println!("disclosed:");
        for (name, value) in &verified.disclosed {
            match value {
                serde_json::Value::String(text) => println!("  {name}: {}", text.escape_debug()),
                other => println!("  {name}: {other}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn backup_command(command: BackupCommand) -> anyhow::Result<ExitCode> {
    use consult_signaling::backup::{BackupError, Backups};
    init_logging("warn");
    let backups_of = |location: &Location| -> anyhow::Result<(Config, Backups)> {
        let config = location.load()?;
        let backups = Backups::new(&config)?;
        Ok((config, backups))
    };
    match command {
        BackupCommand::Keygen { out } => {
            if out.exists() {
                anyhow::bail!(
                    "{} exists: a backup key is never overwritten",
                    out.display()
                );
            }
            let key = consult_signaling::secrets::Token::generate();
            server::write_private(&out, key.expose().as_bytes())
                .with_context(|| format!("writing {}", out.display()))?;
            println!("wrote the backup key to {}", out.display());
            println!("keep a copy apart from the service: without it no backup opens");
        }
        BackupCommand::Init { location } => {
            let (_, backups) = backups_of(&location)?;
            backups.init().await?;
            println!(
                "backup repository ready at {}",
                backups.restic().repository()
            );
        }
        BackupCommand::Drill {
            location,
            snapshot,
            backup_first,
            sign_in,
            key_file,
            passphrase_file,
            scratch_database_url,
            json,
        } => {
            let (config, backups) = backups_of(&location)?;
            let pool = db::open_configured(&config).await?;
            let snapshot = if backup_first {
                let created = backups.create(&pool).await?;
                println!("backup {} made", created.data_snapshot);
                Some(created.data_snapshot)
            } else {
                Some(snapshot)
            };
            let sign_in = match &sign_in {
                Some(path) => Some(
                    serde_json::from_str::<consult_signaling::backup::SignIn>(
                        &std::fs::read_to_string(path)
                            .with_context(|| format!("reading {}", path.display()))?,
                    )
                    .with_context(|| {
                        format!(
                            "{}: expected {{\"email\",\"password\",\"totp_secret\"}}",
                            path.display()
                        )
                    })?,
                ),
                None => None,
            };
            let clinician_key = match (&key_file, &passphrase_file) {
                (Some(key), Some(passphrase)) => {
                    Some(Arc::new(recording::cli::unlock_key_file(key, passphrase)?))
                }
                _ => None,
            };
            let report = backups
                .drill(
                    &pool,
                    consult_signaling::backup::DrillOptions {
                        snapshot,
                        sign_in,
                        clinician_key,
                        scratch_database_url,
                        ffprobe: "ffprobe".into(),
                    },
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "drill of backup {} (taken {}): restored in {:.1} s, service ready in {:.1} s",
                    &report.snapshot[..report.snapshot.len().min(8)],
                    report.taken_at,
                    report.restore_seconds,
                    report.start_seconds
                );
                match report.signed_in {
                    Some(true) => println!("  sign-in: yes"),
                    Some(false) => println!("  sign-in: FAILED"),
                    None => println!("  sign-in: not tried (--sign-in FILE)"),
                }
                println!(
                    "  audit: {} entries and {} checkpoints verify",
                    report.audit_entries, report.audit_checkpoints
                );
                for r in &report.recordings {
                    println!("  recording {}: {} ({})", r.id, r.outcome, r.detail);
                }
                println!(
                    "  recovery point: the backup is {:.0} s old; the live installation has {} audit entries and {} recordings more",
                    report.recovery_point_seconds, report.audit_entries_since, report.recordings_since
                );
                for failure in &report.failures {
                    println!("  FAILED: {failure}");
                }
            }
            if !report.failures.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        BackupCommand::Create { location } => {
            let (config, backups) = backups_of(&location)?;
            let pool = db::open_configured(&config).await?;
            let created = backups.create(&pool).await?;
            println!(
                "backup {} made in {:.1} s: {} bytes read, {} bytes new; {} recordings; keys {}",
                &created.data_snapshot[..created.data_snapshot.len().min(8)],
                created.duration.as_secs_f64(),
                created.bytes_processed,
                created.bytes_added,
                created.manifest.recordings.len(),
                &created.keys_snapshot[..created.keys_snapshot.len().min(8)],
            );
        }
        BackupCommand::List { location } => {
            let (_, backups) = backups_of(&location)?;
            let (data, keys) = backups.list().await?;
            for snapshot in &data {
                println!("{}  {}", snapshot.short_id(), snapshot.time);
            }
            match keys {
                Some(keys) => println!("keys: {}  {}", keys.short_id(), keys.time),
                None => println!("keys: none"),
            }
        }
        BackupCommand::Verify {
            location,
            read_all_data,
        } => {
            let (_, backups) = backups_of(&location)?;
            match backups.verify(read_all_data).await {
                Ok(v) => {
                    println!(
                        "backup {} ({}) verifies: {} audit entries and {} checkpoints, {} recordings ({} sealed chunks) opened, {} shredded since, {} in object storage (keys checked){}",
                        &v.snapshot[..v.snapshot.len().min(8)],
                        v.taken_at,
                        v.audit_entries.map_or("(PostgreSQL dump read)".into(), |n| n.to_string()),
                        v.audit_checkpoints.unwrap_or(0),
                        v.recordings_opened,
                        v.chunks_read,
                        v.recordings_shredded_since,
                        v.recordings_in_object_storage,
                        if v.read_all_data { "; every pack read" } else { "" },
                    );
                }
                Err(e @ BackupError::Corrupt { .. }) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e.into()),
            }
        }
        BackupCommand::Restore {
            location,
            snapshot,
            force,
        } => {
            let (config, backups) = backups_of(&location)?;
            let restored = backups.restore(Some(&snapshot), force).await?;
            println!(
                "restored backup {} (taken {}) into {} in {:.1} s: {} recordings with their keys, {} shredded since the backup (stay shredded)",
                &restored.snapshot[..restored.snapshot.len().min(8)],
                restored.taken_at,
                config.data_dir.display(),
                restored.duration.as_secs_f64(),
                restored.recordings,
                restored.shredded_since,
            );
            if let Some(aside) = &restored.moved_aside {
                println!("what was there is now in {}", aside.display());
            }
        }
        BackupCommand::Prune { location } => {
            let (config, backups) = backups_of(&location)?;
            let pool = db::open_configured(&config).await?;
            let installation = db::installation_id(&pool).await?;
            let forgotten = backups.prune(installation).await?;
            println!("{forgotten} backups past the retention policy removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn recording_command(command: RecordingCommand) -> anyhow::Result<ExitCode> {
    match command {
        RecordingCommand::List { location } => {
            let state = recording::cli::open_state(location.load()?).await?;
            recording::cli::list(&state, &mut std::io::stdout().lock()).await?;
        }
        RecordingCommand::Export {
            location,
            id,
            out,
            session_token_file,
            key_file,
            passphrase_file,
        } => {
            let state = recording::cli::open_state(location.load()?).await?;
            let token = match &session_token_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?,
                ),
                None => None,
            };
            let key = match (&key_file, &passphrase_file) {
                (Some(key), Some(passphrase)) => {
                    Some(recording::cli::unlock_key_file(key, passphrase)?)
                }
                _ => None,
            };
            let summary = recording::cli::export(&state, id, &out, token.as_deref(), key)
                .await?
                .summary;
            println!(
                "exported {} ({} tracks, {} frames, {:.1} s, {}) to {}",
                id,
                summary.tracks,
                summary.frames,
                summary.duration_ms as f64 / 1000.0,
                summary.container.extension(),
                out.display()
            );
        }
        RecordingCommand::Keygen {
            out,
            passphrase_file,
        } => {
            let public = recording::cli::keygen(&out, &passphrase_file)?;
            println!("wrote {}", out.display());
            println!("recording public key: {public}");
        }
        RecordingCommand::Shred { location, id } => {
            let state = recording::cli::open_state(location.load()?).await?;
            recording::cli::shred(&state, id).await?;
            println!("recording {id} shredded");
            // Take its key out of the backups now rather than at the next scheduled backup.
            if state.config.backup.repository.is_some() {
                let backups = consult_signaling::backup::Backups::new(&state.config)?;
                match backups.create(&state.pool).await {
                    Ok(created) => println!(
                        "backup {} made: its key is in no backup any more",
                        &created.data_snapshot[..created.data_snapshot.len().min(8)]
                    ),
                    Err(e) => {
                        eprintln!(
                            "warning: the backup after the shred failed ({e}); the key stays in \
                             the backups until a backup succeeds"
                        );
                        return Ok(ExitCode::FAILURE);
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = args.location.load()?;
    if let Some(bind) = args.bind {
        config.bind = bind;
    }
    config.tls |= args.tls;
    init_logging(&config.log);
    let data_dir = config.data_dir.clone();
    let shutdown = server::ShutdownSignal::listen()?;
    let running = server::start(config, Arc::new(SystemClock)).await?;
    if args.demo {
        let path = data_dir.join("demo-credentials.json");
        let existing: Option<DemoCredentials> = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let state = &running.state;
        let creds = accounts::seed_demo_doctor(
            &state.writer,
            &state.audit,
            &state.sealing_key,
            state.clock.now(),
            existing.as_ref(),
            &format!("{}/", running.url),
        )
        .await?;
        server::write_private(&path, serde_json::to_string_pretty(&creds)?.as_bytes())?;
        println!("Demo doctor (also in {}):", path.display());
        println!("  email:       {}", creds.email);
        println!("  password:    {}", creds.password);
        println!(
            "  TOTP secret: {}  (add it to an authenticator app)",
            creds.totp_secret
        );
    }
    if let Some(count) = args.seed_load_clinicians {
        let state = &running.state;
        let creds = accounts::seed_load_clinicians(
            &state.writer,
            &state.audit,
            &state.sealing_key,
            state.clock.now(),
            count,
            &format!("{}/", running.url),
        )
        .await?;
        let path = data_dir.join("load-credentials.json");
        server::write_private(&path, serde_json::to_string_pretty(&creds)?.as_bytes())?;
        println!("{count} load-test clinicians in {}", path.display());
    }
    let scheme = if running.state.config.tls {
        "https"
    } else {
        "http"
    };
    let here = format!("{scheme}://{}", running.addr);
    if running.url.trim_end_matches('/') == here {
        println!("Consult is running at {}/", running.url);
    } else {
        // Behind a load balancer (public_url): where this node itself listens, for its checks.
        println!(
            "Consult is running at {}/ (this node listens on {here}/)",
            running.url
        );
    }
    let _ = std::io::stdout().flush();
    running.run_until(shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

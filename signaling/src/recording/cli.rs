//! The operator's recording commands: `consult recording list|export|shred` and
//! `consult keys rotate`. Each asks the policy as the service would and is audited.
//!
//! An operator may list and shred, never play or export: `recording export` acts for a
//! clinician, identified by their session token (`--session-token-file`, or
//! `CONSULT_SESSION_TOKEN`), and is refused for anyone but the consultation's clinician.

use std::fs::File;
use std::io::BufWriter;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use consult_e2ee::recording_key::{RecordingKeyFile, RecordingKeyPair};
use consult_policy::{Action as PolicyAction, Relation};
use consult_vault::Vault;
use serde_json::json;
use uuid::Uuid;

use super::rows;
use super::{api, export, Recordings};
use crate::audit::{Action, Actor};
use crate::auth::sessions;
use crate::clock::SystemClock;
use crate::config::Config;
use crate::consultations;
use crate::secrets::{SealingKey, Token};
use crate::state::AppState;

/// The service's state, opened by a command-line tool beside (or instead of) the service.
pub async fn open_state(config: Config) -> anyhow::Result<AppState> {
    let pool = crate::db::open_configured(&config).await?;
    let sealing_key = SealingKey::load_or_create(&config.data_dir)?;
    let vault = super::open_vault(&config).await?;
    // A command-line tool records nothing: its recorders pair with nobody.
    let recordings = Recordings::new(
        Arc::new(vault),
        IpAddr::from([127, 0, 0, 1]),
        super::candidates::CandidatePolicy::new(IpAddr::from([127, 0, 0, 1]), Some(&[]))?,
    );
    let url = crate::server::public_url(&config, config.bind);
    AppState::new(
        config,
        crate::db::Pools::of(pool)?,
        Arc::new(SystemClock),
        url,
        sealing_key,
        recordings,
        // A command-line tool works on the database and vault; it joins no deployment.
        crate::cluster::Cluster::single(),
    )
}

const OPERATOR: Actor = Actor::Operator;

/// `consult recording list`: every recording (metadata only), as JSON lines.
pub async fn list(state: &AppState, out: &mut dyn std::io::Write) -> anyhow::Result<usize> {
    let rows = rows::all(&state.pool).await?;
    for row in &rows {
        serde_json::to_writer(&mut *out, row)?;
        writeln!(out)?;
    }
    state
        .audit
        .record(
            state.clock.now(),
            &OPERATOR,
            Action::RecordingListed,
            None,
            json!({ "count": rows.len(), "via": "cli" }),
        )
        .await?;
    Ok(rows.len())
}

/// `consult recording export ID --out FILE`: as the clinician whose session token is given
/// (none: as the operator, which the policy refuses). The file appears only when whole: it is
/// written beside `out` and renamed at the end.
pub async fn export(
    state: &AppState,
    id: Uuid,
    out: &Path,
    session_token: Option<&str>,
    clinician_key: Option<RecordingKeyPair>,
) -> anyhow::Result<export::Exported> {
    let row = rows::find(&state.pool, id)
        .await?
        .with_context(|| format!("no recording {id}"))?;
    let (actor, who) = match session_token {
        None => (OPERATOR, Relation::Operator),
        Some(token) => {
            let user = sessions::authenticate(
                state,
                &Token::from_client(token.trim()),
                sessions::Activity::Background,
            )
            .await
            .map_err(|_| {
                anyhow::anyhow!("the session token is not valid (expired or signed out?)")
            })?;
            let consultation = consultations::find(&state.pool, row.consultation_id)
                .await?
                .context("the recording's consultation is missing")?;
            let who = if consultation.doctor_id == user.user.id {
                Relation::OwnerClinician
            } else {
                Relation::OtherClinician
            };
            (Actor::User(user.user.id), who)
        }
    };
    api::check_access(
        state,
        &actor,
        who,
        PolicyAction::Export,
        row.consultation_id,
        Some(&row),
    )
    .await
    .map_err(|e| anyhow::anyhow!("export refused: {e}"))?;
    let partial = out.with_extension("partial");
    let vault = state.recordings.vault.clone();
    // Each track is named after the person who sent it.
    let names = export::participant_names(&state.pool, row.consultation_id).await?;
    // A chain that cannot be followed is refused, and audited, like any damaged recording.
    let segments = match rows::segments(&state.pool, id).await {
        Ok(segments) => Ok(segments),
        Err(e) if e.downcast_ref::<rows::BrokenChain>().is_some() => Err(e),
        Err(e) => return Err(e),
    };
    let cut_short = segments
        .as_ref()
        .ok()
        .and_then(|s| s.last())
        .filter(|last| last.state.may_be_unfinished())
        .map(|last| (last.id, last.note.clone()));
    let result = match segments {
        Err(broken) => Err(broken),
        Ok(segments) => {
            let partial = partial.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let (first, continuations) = segments
                    .split_first()
                    .with_context(|| format!("no recording {id}"))?;
                let file = File::create(&partial)
                    .with_context(|| format!("creating {}", partial.display()))?;
                let mut writer = BufWriter::new(file);
                let exported =
                    export::prepare(&vault, first, continuations, clinician_key.as_ref())?
                        .with_names(&names)
                        .write(&vault, &mut writer)?;
                let file = writer.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                Ok(exported)
            })
            .await?
        }
    };
    let detail = match &result {
        Ok(exported) => json!({ "frames": exported.summary.frames,
                                "duration_ms": exported.summary.duration_ms, "via": "cli",
                                "segments": exported.segments,
                                "unopened": exported.unopened.iter().map(|u| json!({
                                    "participant_id": u.participant, "frames": u.frames,
                                    "of": u.of })).collect::<Vec<_>>() }),
        Err(e) => json!({ "refused": format!("{e:#}"), "via": "cli" }),
    };
    state
        .audit
        .record(
            state.clock.now(),
            &actor,
            Action::RecordingExported,
            Some(row.consultation_id),
            json!({ "recording_id": id, "detail": detail }),
        )
        .await?;
    match result {
        Ok(exported) => {
            std::fs::rename(&partial, out)
                .with_context(|| format!("moving the export to {}", out.display()))?;
            if exported.segments.len() > 1 {
                eprintln!(
                    "note: recording {id} was interrupted and continued: {} segments, exported \
                     as one file with the gap between them",
                    exported.segments.len()
                );
            }
            if let Some((last, note)) = cut_short {
                eprintln!(
                    "warning: recording {last} was cut short ({}); exported up to its last sealed chunk",
                    note.as_deref().unwrap_or("see its state")
                );
            }
            for unopened in &exported.unopened {
                let name: Option<String> =
                    crate::db::query_scalar("SELECT name FROM participants WHERE id = $1")
                        .bind(unopened.participant.to_string())
                        .fetch_optional(&state.pool)
                        .await
                        .ok()
                        .flatten();
                let who = name.map_or_else(String::new, |n| format!(" ({n})"));
                eprintln!(
                    "warning: left out of the export: {unopened}{who}; everyone else's media is whole"
                );
            }
            Ok(exported)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Unlock the clinician's key file with the passphrase in `passphrase_file` (first line).
pub fn unlock_key_file(
    key_file: &Path,
    passphrase_file: &Path,
) -> anyhow::Result<RecordingKeyPair> {
    let text = std::fs::read_to_string(key_file)
        .with_context(|| format!("reading {}", key_file.display()))?;
    let file = RecordingKeyFile::from_json(&text)?;
    let passphrase = read_passphrase(passphrase_file)?;
    Ok(file.unlock(&passphrase)?)
}

fn read_passphrase(path: &Path) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    let passphrase = zeroize::Zeroizing::new(text.lines().next().unwrap_or_default().to_owned());
    if passphrase.chars().count() < 12 {
        anyhow::bail!("the passphrase must have at least 12 characters");
    }
    Ok(passphrase)
}

/// `consult recording keygen`: a new recording key pair, its private half sealed under the
/// passphrase (Argon2id) in `out` (mode 0600). Returns the public key to register.
pub fn keygen(out: &Path, passphrase_file: &Path) -> anyhow::Result<String> {
    if out.exists() {
        anyhow::bail!("{} exists; refusing to overwrite a key file", out.display());
    }
    let passphrase = read_passphrase(passphrase_file)?;
    let pair = RecordingKeyPair::generate(&mut rand::rngs::OsRng);
    let file = RecordingKeyFile::seal(&pair, &passphrase, &mut rand::rngs::OsRng)?;
    crate::server::write_private(out, file.to_json().as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(file.public_key)
}

/// `consult recording shred ID`: destroy a recording's key (an operator may).
pub async fn shred(state: &AppState, id: Uuid) -> anyhow::Result<()> {
    let row = rows::find(&state.pool, id)
        .await?
        .with_context(|| format!("no recording {id}"))?;
    api::check_access(
        state,
        &OPERATOR,
        Relation::Operator,
        PolicyAction::Delete,
        row.consultation_id,
        Some(&row),
    )
    .await
    .map_err(|e| anyhow::anyhow!("shredding refused: {e}"))?;
    api::shred_row(state, &row, &OPERATOR)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// `consult keys rotate`: a new key-encryption key version; every data key re-wrapped under it;
/// the old versions destroyed. Needs the vault to itself (the service stopped).
pub async fn rotate_keys(config: &Config) -> anyhow::Result<consult_vault::Rotation> {
    let vault_dir = config.data_dir.join("vault");
    let pool = crate::db::open_configured(config).await?;
    // Certificates keep their sealed content in the database: re-wrapped and stored in the
    // same rotation, before the old versions are destroyed (a failure keeps them). Read once
    // the vault is ours alone, so that no service seals another meanwhile.
    let runtime = tokio::runtime::Handle::current();
    let rows_pool = pool.clone();
    let rotation = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let vault = Vault::open_exclusive(&vault_dir)?;
        let documents = runtime.block_on(crate::certificates::rows::all_sealed(&rows_pool))?;
        let malformed = |e: String| consult_vault::VaultError::Malformed(e);
        let rotation = vault.rotate_keys_with(|rewrap| {
            let mut rewrapped = Vec::with_capacity(documents.len());
            for (id, text) in &documents {
                let sealed: consult_vault::SealedDocument = serde_json::from_str(text)
                    .map_err(|e| malformed(format!("certificate {id}: {e}")))?;
                let again = serde_json::to_string(&rewrap(*id, &sealed)?)
                    .map_err(|e| malformed(e.to_string()))?;
                rewrapped.push((*id, again));
            }
            runtime
                .block_on(async {
                    let mut tx = rows_pool.begin_write().await?;
                    for (id, sealed) in &rewrapped {
                        crate::certificates::rows::replace_sealed(&mut tx, *id, sealed).await?;
                    }
                    tx.commit().await?;
                    anyhow::Ok(())
                })
                .map_err(|e| malformed(format!("storing re-wrapped certificates: {e:#}")))?;
            Ok(rewrapped.len())
        })?;
        Ok(rotation)
    })
    .await??;
    crate::audit::AuditLog::new(pool)
        .record(
            time::OffsetDateTime::now_utc(),
            &OPERATOR,
            Action::KeysRotated,
            None,
            json!({ "new_version": rotation.new_version, "rewrapped": rotation.rewrapped,
                    "retired": rotation.retired }),
        )
        .await?;
    Ok(rotation)
}

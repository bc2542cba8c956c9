//! The backup engine: Debian's `restic`, run as a child process. restic chunks files by content
//! (so an unchanged file, or the unchanged part of a grown one, is never uploaded twice),
//! encrypts and authenticates every blob under the repository's key (AES-256-CTR with
//! Poly1305-AES), and checks every blob it reads back. This module speaks its command line
//! and turns its failures into [`BackupError`]s that say what is wrong.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncReadExt as _;

use super::BackupError;
use crate::config::BackupConfig;

/// A restic repository and how to open it.
#[derive(Clone)]
pub struct Restic {
    program: PathBuf,
    repository: String,
    key_file: PathBuf,
    region: Option<String>,
    credentials: Option<(String, String)>,
    cache_dir: Option<PathBuf>,
    timeout: Duration,
}

impl std::fmt::Debug for Restic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restic")
            .field("repository", &self.repository())
            .finish_non_exhaustive()
    }
}

/// One snapshot in the repository.
#[derive(Debug, Clone, Deserialize)]
pub struct Snapshot {
    /// The full id.
    pub id: String,
    /// When it was taken (RFC 3339).
    pub time: String,
    /// Its tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The paths it holds.
    #[serde(default)]
    pub paths: Vec<String>,
}

impl Snapshot {
    /// The short id restic prints.
    pub fn short_id(&self) -> &str {
        self.id.get(..8).unwrap_or(&self.id)
    }

    /// When it was taken.
    pub fn taken_at(&self) -> Option<time::OffsetDateTime> {
        time::OffsetDateTime::parse(&self.time, &time::format_description::well_known::Rfc3339).ok()
    }
}

/// What `restic backup` reports at the end of a run.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct BackupSummary {
    /// The snapshot written.
    #[serde(default)]
    pub snapshot_id: String,
    /// Bytes uploaded (after deduplication, before restic's own packing overhead).
    #[serde(default)]
    pub data_added: u64,
    /// Bytes read from the files backed up.
    #[serde(default)]
    pub total_bytes_processed: u64,
    /// Files read.
    #[serde(default)]
    pub total_files_processed: u64,
    /// Files new since the parent snapshot.
    #[serde(default)]
    pub files_new: u64,
    /// Files changed since the parent snapshot.
    #[serde(default)]
    pub files_changed: u64,
}

impl Restic {
    /// The repository of `config` (`repository` and `key_file` set). Relative paths are made
    /// absolute here, so every restic run means the same files whatever its working directory.
    pub fn new(config: &BackupConfig) -> Result<Self, BackupError> {
        let (Some(repository), Some(key_file)) = (&config.repository, &config.key_file) else {
            return Err(BackupError::NotConfigured);
        };
        let credentials = match (&config.s3_access_key_id, &config.s3_secret_access_key) {
            (Some(id), Some(secret)) => Some((id.clone(), secret.clone())),
            _ => None,
        };
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        // A local repository is a path unless it names a backend (`s3:`, `sftp:`, `rest:`…).
        let repository = match repository.split_once(':') {
            Some((backend, _)) if backend.len() > 1 && !backend.contains('/') => repository.clone(),
            _ => absolute(Path::new(repository))
                .to_string_lossy()
                .into_owned(),
        };
        let program = if config.restic.components().count() > 1 {
            absolute(&config.restic)
        } else {
            config.restic.clone()
        };
        Ok(Self {
            program,
            repository,
            key_file: absolute(key_file),
            region: config.s3_region.clone(),
            credentials,
            cache_dir: config.cache_dir.as_deref().map(absolute),
            timeout: config.timeout,
        })
    }

    /// Where the repository is, for people: any user and password in it left out.
    pub fn repository(&self) -> String {
        redact(&self.repository)
    }

    /// Whether a repository exists at the location (and opens with the backup key).
    pub async fn exists(&self) -> Result<bool, BackupError> {
        match self.run(None, &["cat", "config", "--no-lock"]).await {
            Ok(_) => Ok(true),
            Err(BackupError::NoRepository { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Create the repository (only ever asked for by the operator: a repository that cannot be
    /// found is never replaced by a new one somewhere else).
    pub async fn init(&self) -> Result<(), BackupError> {
        self.run(None, &["init"]).await.map(drop)
    }

    /// Remove the locks of restic runs that died (same host, process gone, or 30 minutes old).
    pub async fn unlock_stale(&self) -> Result<(), BackupError> {
        self.run(None, &["unlock"]).await.map(drop)
    }

    /// Back up `paths` (relative to `dir`) as one snapshot tagged `tags`.
    pub async fn backup(
        &self,
        dir: &Path,
        paths: &[&str],
        tags: &[String],
    ) -> Result<BackupSummary, BackupError> {
        let mut args: Vec<&str> = vec!["backup", "--json", "--quiet", "--host", "consult"];
        for tag in tags {
            args.push("--tag");
            args.push(tag);
        }
        args.push("--");
        args.extend_from_slice(paths);
        // Exit 3: the snapshot was made, but some files vanished while read (a recording
        // shredded meanwhile) — what a live directory does; the summary says what was saved.
        let out = self
            .exec(Some(dir), &args, None, &[0, 3], Some(self.timeout))
            .await?;
        parse_summary(&out)
    }

    /// Back up `bytes` as the one file `name` of a snapshot tagged `tags` (the bytes never
    /// touch a disk on this side).
    pub async fn backup_bytes(
        &self,
        name: &str,
        bytes: Vec<u8>,
        tags: &[String],
    ) -> Result<BackupSummary, BackupError> {
        let mut args: Vec<&str> = vec![
            "backup",
            "--json",
            "--quiet",
            "--host",
            "consult",
            "--stdin",
            "--stdin-filename",
            name,
        ];
        for tag in tags {
            args.push("--tag");
            args.push(tag);
        }
        let out = self
            .exec(None, &args, Some(bytes), &[0], Some(self.timeout))
            .await?;
        parse_summary(&out)
    }

    /// The content of file `path` in snapshot `id`, authenticated as it is read.
    pub async fn dump(&self, id: &str, path: &str) -> Result<Vec<u8>, BackupError> {
        self.exec(None, &["dump", "--no-lock", id, path], None, &[0], None)
            .await
            .map(String::into_bytes)
    }
}

fn parse_summary(out: &str) -> Result<BackupSummary, BackupError> {
    let summary = out
        .lines()
        .rev()
        .find_map(|line| {
            #[derive(Deserialize)]
            struct Message {
                message_type: String,
                #[serde(flatten)]
                summary: BackupSummary,
            }
            serde_json::from_str::<Message>(line)
                .ok()
                .filter(|m| m.message_type == "summary")
                .map(|m| m.summary)
        })
        .ok_or_else(|| BackupError::Engine {
            command: "backup".into(),
            detail: "no summary in restic's output".into(),
        })?;
    if summary.snapshot_id.is_empty() {
        return Err(BackupError::Engine {
            command: "backup".into(),
            detail: "restic named no snapshot".into(),
        });
    }
    Ok(summary)
}

impl Restic {
    /// Snapshots having every tag of `tags`, oldest first.
    pub async fn snapshots(&self, tags: &[&str]) -> Result<Vec<Snapshot>, BackupError> {
        let filter = tags.join(",");
        let mut args = vec!["snapshots", "--json", "--no-lock"];
        if !filter.is_empty() {
            args.extend(["--tag", &filter]);
        }
        let out = self.run(None, &args).await?;
        let mut snapshots: Vec<Snapshot> =
            serde_json::from_str(out.trim()).map_err(|e| BackupError::Engine {
                command: "snapshots".into(),
                detail: e.to_string(),
            })?;
        snapshots.sort_by_key(Snapshot::taken_at);
        Ok(snapshots)
    }

    /// Forget the snapshots `ids` (their data goes at the next [`Restic::prune`]).
    pub async fn forget(&self, ids: &[String]) -> Result<(), BackupError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut args = vec!["forget", "--quiet"];
        args.extend(ids.iter().map(String::as_str));
        self.run(None, &args).await.map(drop)
    }

    /// Forget the snapshots having every tag of `tags` that the retention policy does not keep.
    pub async fn forget_by_policy(
        &self,
        tags: &[&str],
        config: &BackupConfig,
    ) -> Result<(), BackupError> {
        let filter = tags.join(",");
        let (last, daily, weekly, monthly) = (
            config.keep_last.to_string(),
            config.keep_daily.to_string(),
            config.keep_weekly.to_string(),
            config.keep_monthly.to_string(),
        );
        let args = [
            "forget",
            "--quiet",
            "--tag",
            &filter,
            "--group-by",
            "tags",
            "--keep-last",
            &last,
            "--keep-daily",
            &daily,
            "--keep-weekly",
            &weekly,
            "--keep-monthly",
            &monthly,
        ];
        self.run(None, &args).await.map(drop)
    }

    /// Delete what no snapshot refers to any more: every pack file none of whose blobs is
    /// used is removed from the repository (always, whatever `max_unused`); packs partly used
    /// are repacked only past `max_unused` of the repository (`unlimited`: never).
    pub async fn prune(&self, max_unused: &str) -> Result<(), BackupError> {
        self.run(None, &["prune", "--quiet", "--max-unused", max_unused])
            .await
            .map(drop)
    }

    /// Check the repository's structure; with `read_data`, also read and authenticate every
    /// pack.
    pub async fn check(&self, read_data: bool) -> Result<(), BackupError> {
        // No lock: a full repository still checks, and a running backup is no obstacle.
        let mut args = vec!["check", "--no-lock"];
        if read_data {
            args.push("--read-data");
        }
        // Reading a large repository takes what it takes: no time limit.
        self.exec(None, &args, None, &[0], None).await.map(drop)
    }

    /// Restore snapshot `id` into `target` (every blob authenticated as it is read).
    pub async fn restore(&self, id: &str, target: &Path) -> Result<(), BackupError> {
        let target = target.to_string_lossy();
        self.exec(
            None,
            &["restore", "--no-lock", id, "--target", &target],
            None,
            &[0],
            None,
        )
        .await
        .map(drop)
    }

    /// Run restic with `args` within `backup.timeout`; its standard output, or the failure it
    /// reported.
    async fn run(&self, dir: Option<&Path>, args: &[&str]) -> Result<String, BackupError> {
        self.exec(dir, args, None, &[0], Some(self.timeout)).await
    }

    /// Run restic with `args` in `dir`, `stdin` written to it, exit codes `ok` taken as
    /// success, stopped after `limit`.
    async fn exec(
        &self,
        dir: Option<&Path>,
        args: &[&str],
        stdin: Option<Vec<u8>>,
        ok: &[i32],
        limit: Option<Duration>,
    ) -> Result<String, BackupError> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(args)
            .env_remove("RESTIC_PASSWORD")
            .env_remove("RESTIC_PASSWORD_COMMAND")
            .env_remove("RESTIC_REPOSITORY_FILE")
            .env("RESTIC_REPOSITORY", &self.repository)
            .env("RESTIC_PASSWORD_FILE", &self.key_file)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        match &self.cache_dir {
            Some(cache) => command.arg("--cache-dir").arg(cache),
            None => command.arg("--no-cache"),
        };
        if let Some(region) = &self.region {
            command.arg("-o").arg(format!("s3.region={region}"));
        }
        if let Some((id, secret)) = &self.credentials {
            command
                .env("AWS_ACCESS_KEY_ID", id)
                .env("AWS_SECRET_ACCESS_KEY", secret);
        }
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        let name = args.first().copied().unwrap_or_default().to_owned();
        let mut child = command.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                BackupError::EngineMissing {
                    program: self.program.clone(),
                }
            } else {
                BackupError::Io(e)
            }
        })?;
        if let (Some(bytes), Some(mut input)) = (stdin, child.stdin.take()) {
            use tokio::io::AsyncWriteExt as _;
            // Written beside the reading below, so a large input never deadlocks on a full pipe.
            tokio::spawn(async move {
                let _ = input.write_all(&bytes).await;
                let _ = input.shutdown().await;
            });
        }
        let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
        // Declared out here so that what restic said before a timeout is still here after it.
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let collect = async {
            let read_out = async {
                if let Some(s) = stdout.as_mut() {
                    s.read_to_end(&mut out).await?;
                }
                Ok::<_, std::io::Error>(())
            };
            let read_err = async {
                if let Some(s) = stderr.as_mut() {
                    s.read_to_end(&mut err).await?;
                }
                Ok::<_, std::io::Error>(())
            };
            tokio::try_join!(read_out, read_err)?;
            child.wait().await
        };
        let limit = limit.unwrap_or(Duration::MAX);
        let status = match tokio::time::timeout(limit, collect).await {
            Ok(done) => done?,
            Err(_) => {
                // Killed now (and reaped by tokio): nothing it half-wrote is used. restic
                // retries a failing store for minutes; what it said meanwhile names the fault.
                let _ = child.start_kill();
                let said = String::from_utf8_lossy(&err);
                return Err(match classify(&name, &self.repository(), &said) {
                    BackupError::Engine { .. } => BackupError::TimedOut {
                        command: name,
                        after: self.timeout,
                    },
                    named => named,
                });
            }
        };
        if status.code() == Some(3) && ok.contains(&3) {
            // Exit 3: some files could not be read. Only recordings' media that vanished (a
            // recording shredded while the backup ran) is expected; anything else fails.
            let said = String::from_utf8_lossy(&err);
            let unexpected: Vec<&str> = said
                .lines()
                .filter(|l| l.to_ascii_lowercase().contains("error"))
                .filter(|l| !(l.contains("vault/media/") && l.contains("no such file")))
                .collect();
            if !unexpected.is_empty() {
                return Err(BackupError::Engine {
                    command: name,
                    detail: format!(
                        "some files could not be read: {}",
                        last_lines(&unexpected.join("\n"))
                    ),
                });
            }
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        if status.code() == Some(0) || status.code().is_some_and(|c| c != 3 && ok.contains(&c)) {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        Err(classify(
            &name,
            &self.repository(),
            &String::from_utf8_lossy(&err),
        ))
    }
}

/// What a failed restic run's standard error says went wrong.
fn classify(command: &str, repository: &str, stderr: &str) -> BackupError {
    let lower = stderr.to_ascii_lowercase();
    let has = |needle: &str| lower.contains(needle);
    let detail = last_lines(stderr);
    if has("wrong password") {
        BackupError::WrongKey
    } else if has("connection refused")
        || has("no such host")
        || has("i/o timeout")
        || has("no route to host")
        || has("connection reset")
        || has("network is unreachable")
    {
        BackupError::Unreachable { detail }
    } else if has("is there a repository at the following location")
        || has("unable to open config file")
    {
        BackupError::NoRepository {
            repository: repository.to_owned(),
        }
    } else if has("ciphertext verification failed")
        || has("does not match")
        || has("repository contains errors")
        || has("invalid data returned")
        || has("checksum")
    {
        BackupError::Corrupt { detail }
    } else if has("no space left") || has("quota is reached") || has("quotaexceeded") {
        BackupError::TargetFull { detail }
    } else if has("repository is already locked") {
        BackupError::Busy { detail }
    } else {
        BackupError::Engine {
            command: command.to_owned(),
            detail,
        }
    }
}

/// `repository` without the user and password a URL form may carry.
fn redact(repository: &str) -> String {
    match repository.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) if !host.is_empty() => format!("{scheme}://***@{host}"),
            _ => repository.to_owned(),
        },
        None => repository.to_owned(),
    }
}

/// The last two lines of a tool's error output (enough to say what, never a whole log).
fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(2)..].join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_is_shown_without_its_password() {
        assert_eq!(
            redact("rest:https://user:secret@backup.example/consult"),
            "rest:https://***@backup.example/consult"
        );
        assert_eq!(redact("/mnt/offsite/consult"), "/mnt/offsite/consult");
        assert_eq!(
            redact("s3:https://s3.example/bucket/consult"),
            "s3:https://s3.example/bucket/consult"
        );
    }

    #[test]
    fn failures_are_named_from_what_restic_says() {
        let repo = "/backups";
        assert!(matches!(
            classify("snapshots", repo, "Fatal: wrong password or no key found\n"),
            BackupError::WrongKey
        ));
        assert!(matches!(
            classify("snapshots", repo, "Fatal: unable to open config file: stat /x/config: no such file or directory\nIs there a repository at the following location?\n/x"),
            BackupError::NoRepository { .. }
        ));
        assert!(matches!(
            classify("restore", repo, "ignoring error for /sub/b: ciphertext verification failed\nFatal: There were 2 errors\n"),
            BackupError::Corrupt { .. }
        ));
        assert!(matches!(
            classify(
                "backup",
                repo,
                "Save(<data/ab>) returned error: write /b/data/ab: no space left on device"
            ),
            BackupError::TargetFull { .. }
        ));
        assert!(matches!(
            classify(
                "backup",
                repo,
                "dial tcp 127.0.0.1:9: connect: connection refused"
            ),
            BackupError::Unreachable { .. }
        ));
        assert!(matches!(
            classify("backup", repo, "something else entirely"),
            BackupError::Engine { .. }
        ));
    }
}

//! PostgreSQL in backups: `pg_dump` (a consistent snapshot: one transaction) and `pg_restore`,
//! from Debian's postgresql-client, with the connection's password in the environment (never on
//! a command line other users could read).

use std::path::Path;
use std::time::Duration;

use sqlx::Row as _;
use uuid::Uuid;

use super::BackupError;

/// A consistent snapshot of the database at `url` into `file` (`pg_dump`'s custom format).
pub async fn dump(url: &str, file: &Path, limit: Duration) -> Result<(), BackupError> {
    let file = file.to_string_lossy();
    tool(
        "pg_dump",
        url,
        &["--format=custom", "--no-owner", "--file", &file],
        limit,
    )
    .await
}

/// Restore `file` (from [`dump`]) into the database at `url`, in one transaction.
pub async fn restore(url: &str, file: &Path, limit: Duration) -> Result<(), BackupError> {
    let file = file.to_string_lossy();
    let args = [
        "--clean",
        "--if-exists",
        "--no-owner",
        "--single-transaction",
        &file,
    ];
    tool("pg_restore", url, &args, limit).await
}

/// Run `pg_dump` or `pg_restore` with `args` against `url`, within `limit`.
async fn tool(program: &str, url: &str, args: &[&str], limit: Duration) -> Result<(), BackupError> {
    let mut parsed = url::Url::parse(url)
        .map_err(|_| BackupError::Database("database_url is malformed".into()))?;
    let password = parsed.password().map(percent_decode);
    if parsed.set_password(None).is_err() {
        return Err(BackupError::Database("database_url is malformed".into()));
    }
    let mut command = tokio::process::Command::new(program);
    // The whole connection string (host, port, user, database, sslmode…), password left out.
    command
        .arg("--dbname")
        .arg(parsed.as_str())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    let run = command.output();
    let output = match tokio::time::timeout(limit, run).await {
        Ok(output) => output.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                BackupError::Database(format!(
                    "{program} is not installed (Debian: apt-get install postgresql-client)"
                ))
            } else {
                BackupError::Io(e)
            }
        })?,
        Err(_) => {
            return Err(BackupError::TimedOut {
                command: program.to_owned(),
                after: limit,
            })
        }
    };
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let detail: Vec<&str> = stderr.lines().rev().take(3).collect();
    Err(BackupError::Database(format!(
        "{program}: {}",
        detail.into_iter().rev().collect::<Vec<_>>().join(" / ")
    )))
}

/// Check that a `pg_dump` archive reads whole (`pg_restore --list`).
pub async fn list(archive: &Path) -> Result<(), BackupError> {
    let output = tokio::process::Command::new("pg_restore")
        .arg("--list")
        .arg(archive)
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    if output.status.success() {
        Ok(())
    } else {
        Err(BackupError::Corrupt {
            detail: format!(
                "the PostgreSQL dump: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}

/// What a restore would write over in the database at `url`.
pub struct Target {
    /// The installation it holds, if any.
    pub installation: Option<String>,
    /// Tables in its `public` schema.
    pub tables: i64,
    /// Other sessions connected to it (nodes still running).
    pub other_sessions: i64,
}

/// Look at the database a restore would write into.
pub async fn target(url: &str) -> Result<Target, BackupError> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    let outcome = async {
        let has_installation = sqlx::query(
            "SELECT COUNT(*) AS n FROM information_schema.tables
             WHERE table_schema = 'public' AND table_name = 'installation'",
        )
        .fetch_one(&pool)
        .await?
        .try_get::<i64, _>("n")?
            > 0;
        let installation = if has_installation {
            sqlx::query("SELECT id FROM installation")
                .fetch_optional(&pool)
                .await?
                .map(|row| row.try_get::<String, _>("id"))
                .transpose()?
        } else {
            None
        };
        let tables = sqlx::query(
            "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = 'public'",
        )
        .fetch_one(&pool)
        .await?
        .try_get::<i64, _>("n")?;
        let other_sessions = sqlx::query(
            "SELECT COUNT(*) AS n FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&pool)
        .await?
        .try_get::<i64, _>("n")?;
        Ok::<_, BackupError>(Target {
            installation,
            tables,
            other_sessions,
        })
    }
    .await;
    pool.close().await;
    outcome
}

/// Refuse a database holding another installation, one still in use, or (unless `force`) any
/// data.
pub async fn check_target(url: &str, installation: Uuid, force: bool) -> Result<bool, BackupError> {
    let target = target(url).await?;
    if let Some(found) = target.installation
        && found != installation.to_string()
    {
        return Err(BackupError::OtherInstallation {
            found,
            ours: installation.to_string(),
        });
    }
    if target.other_sessions > 0 {
        return Err(BackupError::InUse(
            format!(
                "the PostgreSQL database ({} other sessions: stop every node)",
                target.other_sessions
            )
            .into(),
        ));
    }
    if target.tables > 0 && !force {
        return Err(BackupError::NotEmpty("the PostgreSQL database".into()));
    }
    Ok(target.tables > 0)
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_passwords_are_decoded_for_the_environment() {
        assert_eq!(percent_decode("p%40ss%2Fword"), "p@ss/word");
        assert_eq!(percent_decode("plain+"), "plain+");
    }
}

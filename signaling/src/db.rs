//! The SQLite database in the data directory, with embedded migrations.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use time::OffsetDateTime;

/// Open (creating if needed) `DATA_DIR/consult.db` and bring its schema up to date.
pub async fn open(data_dir: &Path) -> anyhow::Result<SqlitePool> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join("consult.db");
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await?;
    sqlx::migrate::Migrator::new(EmbeddedMigrations)
        .await?
        .run(&pool)
        .await?;
    Ok(pool)
}

/// The schema migrations in `signaling/migrations`, compiled into the binary. Listed here rather
/// than found by `sqlx::migrate!`, which would build sqlx's compile-time macros (a second sqlx
/// and tokio for the build host) for one line. Version and description follow sqlx's file
/// naming (`0001_initial.sql` is version 1, "initial"), so databases migrated by earlier builds
/// see the same checksums.
#[derive(Debug)]
struct EmbeddedMigrations;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "initial", include_str!("../migrations/0001_initial.sql")),
    (2, "e2ee", include_str!("../migrations/0002_e2ee.sql")),
    (
        3,
        "recordings",
        include_str!("../migrations/0003_recordings.sql"),
    ),
    (
        4,
        "recording key",
        include_str!("../migrations/0004_recording_key.sql"),
    ),
    (
        5,
        "trusted devices",
        include_str!("../migrations/0005_trusted_devices.sql"),
    ),
    (
        6,
        "disabled accounts",
        include_str!("../migrations/0006_disabled_accounts.sql"),
    ),
    (
        7,
        "passkeys",
        include_str!("../migrations/0007_passkeys.sql"),
    ),
    (
        8,
        "audit checkpoints",
        include_str!("../migrations/0008_audit_checkpoints.sql"),
    ),
    (
        9,
        "tallies and alerts",
        include_str!("../migrations/0009_tallies_and_alerts.sql"),
    ),
    (10, "resume", include_str!("../migrations/0010_resume.sql")),
];

impl sqlx::migrate::MigrationSource<'static> for EmbeddedMigrations {
    fn resolve(
        self,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<Vec<sqlx::migrate::Migration>, sqlx::error::BoxDynError>,
                > + Send,
        >,
    > {
        let migrations = MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                sqlx::migrate::Migration::new(
                    *version,
                    std::borrow::Cow::Borrowed(*description),
                    sqlx::migrate::MigrationType::Simple,
                    std::borrow::Cow::Borrowed(*sql),
                    sql.starts_with("-- no-transaction"),
                )
            })
            .collect();
        Box::pin(std::future::ready(Ok(migrations)))
    }
}

/// Unix seconds, as stored.
pub fn to_unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

/// Back from Unix seconds.
pub fn from_unix(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Start a transaction that writes. `BEGIN IMMEDIATE` takes the write lock up front (waiting up
/// to the busy timeout), instead of failing with "database is locked" when a read transaction
/// later tries to become a write under concurrent load.
pub async fn write_transaction(
    pool: &SqlitePool,
) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::migrate::{MigrationSource, Migrator};

    #[tokio::test]
    async fn the_embedded_migrations_are_the_migrations_directory_as_sqlx_reads_it() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let from_files = Migrator::new(dir.as_path()).await.unwrap();
        let embedded = EmbeddedMigrations.resolve().await.unwrap();
        let key = |m: &sqlx::migrate::Migration| {
            (
                m.version,
                m.description.to_string(),
                m.checksum.to_vec(),
                m.no_tx,
            )
        };
        let files: Vec<_> = from_files.iter().map(key).collect();
        let ours: Vec<_> = embedded.iter().map(key).collect();
        assert_eq!(
            ours, files,
            "a migration file is missing from MIGRATIONS or differs"
        );
    }
}

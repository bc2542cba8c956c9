//! The database: SQLite in the data directory (the embedded default) or PostgreSQL (several
//! nodes), behind one query layer. Every statement is written once, in the SQL both engines
//! speak (`$1` placeholders, `ON CONFLICT`, `RETURNING`), and runs through sqlx's `Any` driver;
//! each engine has its own embedded migrations (`migrations/` and `migrations/postgres/`).
//!
//! Statements run through [`sql`] ([`query`], [`query_scalar`]) on a [`Db`] or a [`Tx`]:
//! PostgreSQL's through sqlx, SQLite's on the thread that asks ([`lite`]).

mod lite;
pub mod sql;

pub use sql::{query, query_scalar, Db, Executor, Row, Tx};

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, ConnectOptions, Executor as _};
use time::OffsetDateTime;

use crate::write_lane::WriteLane;

/// Which engine a pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, one file in the data directory: one node.
    Sqlite,
    /// PostgreSQL: any number of nodes share it.
    Postgres,
}

impl Backend {
    /// The engine behind `pool`.
    pub fn of(pool: &AnyPool) -> Backend {
        if pool.connect_options().database_url.scheme() == "sqlite" {
            Backend::Sqlite
        } else {
            Backend::Postgres
        }
    }
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `database_url` names neither engine.
    #[error("database_url must start with postgres:// or postgresql:// (or be left out for SQLite in the data directory)")]
    UnknownScheme,
    /// The URL does not parse; the URL itself is not repeated, as it may hold a password.
    #[error("database_url is not a valid URL")]
    InvalidUrl,
    /// The data directory could not be created.
    #[error("cannot create the data directory: {0}")]
    DataDir(#[source] std::io::Error),
    /// The engine refused or could not be reached.
    #[error("cannot open the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// A migration failed.
    #[error("cannot bring the database schema up to date: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// SQLite refused to open the file for statements.
    #[error("cannot open the database: {0}")]
    Sqlite(#[source] rusqlite::Error),
    /// The thread the writes run on could not be started.
    #[error("cannot start the thread the database writes run on: {0}")]
    WriteLane(#[source] std::io::Error),
}

/// Open the database and bring its schema up to date: PostgreSQL when `database_url` is given,
/// otherwise (creating if needed) `DATA_DIR/consult.db`.
pub async fn open(data_dir: &Path, database_url: Option<&str>) -> Result<Db, OpenError> {
    sqlx::any::install_default_drivers();
    let (options, backend) = match database_url {
        Some(url) => {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(OpenError::UnknownScheme);
            }
            let options = AnyConnectOptions::from_str(url).map_err(|_| OpenError::InvalidUrl)?;
            (options, Backend::Postgres)
        }
        None => {
            std::fs::create_dir_all(data_dir).map_err(OpenError::DataDir)?;
            let url = SqliteConnectOptions::new()
                .filename(data_dir.join("consult.db"))
                .create_if_missing(true)
                .to_url_lossy();
            let options = AnyConnectOptions::from_url(&url).map_err(|_| OpenError::InvalidUrl)?;
            (options, Backend::Sqlite)
        }
    };
    let pool = connect(
        options,
        backend,
        match backend {
            // Migrations and backup snapshots only: statements go through `lite`.
            Backend::Sqlite => 2,
            Backend::Postgres => 16,
        },
    )
    .await?;
    let migrations = match backend {
        Backend::Sqlite => EmbeddedMigrations(SQLITE_MIGRATIONS),
        Backend::Postgres => EmbeddedMigrations(POSTGRES_MIGRATIONS),
    };
    sqlx::migrate::Migrator::new(migrations)
        .await
        .map_err(OpenError::Migrate)?
        .run(&pool)
        .await
        .map_err(OpenError::Migrate)?;
    Ok(match backend {
        Backend::Sqlite => {
            let lite = lite::Lite::open(&data_dir.join("consult.db")).map_err(OpenError::Sqlite)?;
            Db(sql::DbInner::Sqlite {
                lite: std::sync::Arc::new(lite),
                any: pool,
            })
        }
        Backend::Postgres => Db(sql::DbInner::Postgres(pool)),
    })
}

/// A pool of at most `connections` to the database of `options`, each set up for `backend`.
async fn connect(
    options: AnyConnectOptions,
    backend: Backend,
    connections: u32,
) -> Result<AnyPool, OpenError> {
    AnyPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(5))
        // sqlx pings a connection each time it is taken from the pool. A PostgreSQL connection
        // can die with the server or the network, and the ping finds it before a request does.
        // A SQLite connection is a file opened in this process and cannot, and there the ping
        // was one more hand-off to the connection's thread for every statement outside a
        // transaction, on the one writer every write queues for.
        .test_before_acquire(backend == Backend::Postgres)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                match backend {
                    // WAL: readers never wait for the writer; NORMAL: durable at each WAL
                    // checkpoint, never corrupt; a writer waits up to 5 s for another.
                    Backend::Sqlite => conn.execute(sqlx::raw_sql(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
                    )),
                    // No transaction holds the write lock long: a node cut off in the middle
                    // of one loses it after 15 s instead of stalling every writer of every
                    // node, and a writer waits at most 10 s for the lock.
                    Backend::Postgres => conn.execute(sqlx::raw_sql(
                        "SET idle_in_transaction_session_timeout = '15s'; \
                         SET lock_timeout = '10s'; SET statement_timeout = '60s';",
                    )),
                }
                .await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(OpenError::Connect)
}

/// A database as the service uses it: `pool` to read, `writer` to write (the same database:
/// SQLite queues its writers in the process, see [`lite`]; PostgreSQL takes concurrent
/// writers itself), and the lane write transactions run on.
pub struct Pools {
    /// For reads.
    pub pool: Db,
    /// For writes.
    pub writer: Db,
    /// Where write transactions run (see [`crate::write_lane`]).
    pub lane: WriteLane,
}

impl Pools {
    /// `db`, its writer, and the lane its writes run on.
    pub fn of(db: Db) -> Result<Pools, OpenError> {
        let lane = WriteLane::for_backend(db.backend()).map_err(OpenError::WriteLane)?;
        Ok(Pools {
            writer: db.clone(),
            pool: db,
            lane,
        })
    }
}

/// The schema migrations in `signaling/migrations`, compiled into the binary. Listed here rather
/// than found by `sqlx::migrate!`, which would build sqlx's compile-time macros (a second sqlx
/// and tokio for the build host) for one line. Version and description follow sqlx's file
/// naming (`0001_initial.sql` is version 1, "initial"), so databases migrated by earlier builds
/// see the same checksums.
#[derive(Debug)]
struct EmbeddedMigrations(&'static [(i64, &'static str, &'static str)]);

const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/0001_initial.sql"),
    ),
    (2, "e2ee", include_str!("../../migrations/0002_e2ee.sql")),
    (
        3,
        "recordings",
        include_str!("../../migrations/0003_recordings.sql"),
    ),
    (
        4,
        "recording key",
        include_str!("../../migrations/0004_recording_key.sql"),
    ),
    (
        5,
        "trusted devices",
        include_str!("../../migrations/0005_trusted_devices.sql"),
    ),
    (
        6,
        "disabled accounts",
        include_str!("../../migrations/0006_disabled_accounts.sql"),
    ),
    (
        7,
        "passkeys",
        include_str!("../../migrations/0007_passkeys.sql"),
    ),
    (
        8,
        "audit checkpoints",
        include_str!("../../migrations/0008_audit_checkpoints.sql"),
    ),
    (
        9,
        "tallies and alerts",
        include_str!("../../migrations/0009_tallies_and_alerts.sql"),
    ),
    (
        10,
        "resume",
        include_str!("../../migrations/0010_resume.sql"),
    ),
    (
        11,
        "recording segments",
        include_str!("../../migrations/0011_recording_segments.sql"),
    ),
    (
        12,
        "installation",
        include_str!("../../migrations/0012_installation.sql"),
    ),
    (
        13,
        "group consultations",
        include_str!("../../migrations/0013_group_consultations.sql"),
    ),
    (
        14,
        "guest screen sharing",
        include_str!("../../migrations/0014_guest_screen_sharing.sql"),
    ),
    (
        15,
        "certificates",
        include_str!("../../migrations/0015_certificates.sql"),
    ),
    (
        16,
        "certificate retention index",
        include_str!("../../migrations/0016_certificate_retention_index.sql"),
    ),
];

/// The PostgreSQL schema in `signaling/migrations/postgres`: the SQLite migrations' end state
/// in one step (PostgreSQL support began after them), then the same changes as SQLite's.
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "recording segments",
        include_str!("../../migrations/postgres/0002_recording_segments.sql"),
    ),
    (
        3,
        "installation",
        include_str!("../../migrations/postgres/0003_installation.sql"),
    ),
    (
        4,
        "group consultations",
        include_str!("../../migrations/postgres/0004_group_consultations.sql"),
    ),
    (
        5,
        "guest screen sharing",
        include_str!("../../migrations/postgres/0005_guest_screen_sharing.sql"),
    ),
    (
        6,
        "certificates",
        include_str!("../../migrations/postgres/0006_certificates.sql"),
    ),
    (
        7,
        "certificate retention index",
        include_str!("../../migrations/postgres/0007_certificate_retention_index.sql"),
    ),
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
        let migrations = self
            .0
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

/// Open the database `config` names, saying which one if that fails (never the URL, which may
/// hold a password).
pub async fn open_configured(config: &crate::config::Config) -> anyhow::Result<Db> {
    let which = match config.database_url {
        Some(_) => "the PostgreSQL database of database_url".to_owned(),
        None => format!("the SQLite database in {}", config.data_dir.display()),
    };
    open(&config.data_dir, config.database_url.as_deref())
        .await
        .map_err(|e| anyhow::anyhow!("opening {which}: {e}"))
}

/// Unix seconds, as stored.
pub fn to_unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

/// Back from Unix seconds.
pub fn from_unix(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// This installation's id: made (at random) by the first process to ask, the same for every node
/// sharing the database ever after. Backups carry it.
pub async fn installation_id(db: &Db) -> sql::Result<uuid::Uuid> {
    let parse = |id: String| {
        uuid::Uuid::parse_str(&id).map_err(|e| sql::Error::Decode {
            column: "id".into(),
            message: e.to_string(),
        })
    };
    // Read first: once made, asking writes nothing (a running service's backups read it, and
    // in SQLite even an insert that inserts nothing takes the write lock).
    if let Some(id) = query_scalar::<String>("SELECT id FROM installation WHERE one = 1")
        .fetch_optional(db)
        .await?
    {
        return parse(id);
    }
    let fresh = uuid::Uuid::new_v4().to_string();
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    query(
        "INSERT INTO installation (one, id, created_at) VALUES (1, $1, $2) ON CONFLICT (one) DO NOTHING",
    )
    .bind(&fresh)
    .bind(&now)
    .execute(db)
    .await?;
    let id = query_scalar::<String>("SELECT id FROM installation WHERE one = 1")
        .fetch_one(db)
        .await?;
    parse(id)
}

/// The PostgreSQL advisory lock key of [`Db::begin_write`] ("consult" in ASCII).
const WRITE_LOCK: i64 = 0x0063_6f6e_7375_6c74;

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::migrate::{MigrationSource, Migrator};

    #[tokio::test]
    async fn the_embedded_migrations_are_the_migrations_directories_as_sqlx_reads_them() {
        for (dir, embedded) in [
            ("migrations", SQLITE_MIGRATIONS),
            ("migrations/postgres", POSTGRES_MIGRATIONS),
        ] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
            let from_files = Migrator::new(dir.as_path()).await.unwrap();
            let embedded = EmbeddedMigrations(embedded).resolve().await.unwrap();
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
                ours,
                files,
                "a migration file in {} is missing from the embedded list or differs",
                dir.display()
            );
        }
    }

    #[tokio::test]
    async fn a_database_that_cannot_be_opened_is_named_without_its_password() {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        for url in [
            format!("postgres://consult:hunter2-secret@127.0.0.1:{port}/consult"),
            "mysql://consult:hunter2-secret@127.0.0.1/consult".to_owned(),
            "postgres://consult:hunter2-secret@[::1/consult".to_owned(),
        ] {
            let config = crate::config::Config {
                data_dir: dir.path().to_path_buf(),
                database_url: Some(url),
                ..crate::config::Config::default()
            };
            let Err(e) = open_configured(&config).await else {
                panic!("no database there")
            };
            let said = format!("{e:#}");
            assert!(said.contains("database_url"), "{said}");
            assert!(!said.contains("hunter2"), "the password leaked: {said}");
        }
    }
}

//! SQLite, statement by statement on the thread that asks.
//!
//! sqlx runs each SQLite connection on a thread of its own and hands it every statement over a
//! channel: the task that asked sleeps, the connection's thread wakes, runs the statement
//! (microseconds), and wakes the task again. On this machine that cost 45–65 µs of CPU per
//! statement against 3 µs for the statement itself (the same point `SELECT` both ways, one
//! after the other), and a consultation from creation to its end is about 46 statements. Here
//! the statement runs where it is asked, on a connection this process keeps:
//!
//! - **Reads** on one of a few reading connections (WAL: a reader never waits for the writer
//!   and sees every committed write), taken and given back around the statement.
//! - **Writes** on the one writing connection, which writers queue for in the process
//!   ([`tokio::sync::Mutex`], in order), so SQLite's own lock never makes a writer sleep. A
//!   statement on its own is committed at once; a [`WriteTx`] holds the writer from
//!   `BEGIN IMMEDIATE` to its commit or rollback.
//!
//! - **Checkpoints** (the log copied into the database file) on a connection and thread of
//!   their own ([`Checkpointer`]), never inside a commit.
//!
//! Whether a statement writes is SQLite's own answer (`sqlite3_stmt_readonly`) for the
//! statement as prepared, not a guess from its text.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{CachedStatement, Connection, OpenFlags};

use super::sql::{Arg, Error, Output, Row, RowInner, Value, Want};

/// Reading connections kept between statements.
const IDLE_READERS: usize = 8;

/// Prepared statements kept per connection (the service has about 170).
const STATEMENT_CACHE: usize = 256;

/// How long a write waits its turn for the writing connection before it is refused
/// ([`Error::WriterBusy`]), as long as sqlx's pool waited for a connection. A write that asks
/// while its own task holds the writer (a mistake) is refused so, not left waiting forever.
const WRITER_WAIT: Duration = Duration::from_secs(5);

/// The longest pause between two attempts of a write while another process holds the
/// database's write lock (the pauses start at 1 ms and double).
const BUSY_PAUSE: Duration = Duration::from_millis(50);

/// Commits between two nudges of the checkpointer (each commit adds a few pages to the log;
/// SQLite's own checkpoint would run every 1,000 pages).
const COMMITS_PER_CHECKPOINT: u64 = 64;

/// The checkpointer also looks this often whether anything was committed since its last run.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// A SQLite database file's connections.
pub(crate) struct Lite {
    path: PathBuf,
    writer: Arc<tokio::sync::Mutex<Connection>>,
    readers: Mutex<Vec<Connection>>,
    writer_wait: Duration,
    /// In WAL mode: copies the log into the database on a thread of its own.
    checkpointer: Option<Arc<Checkpointer>>,
}

/// Moves the write-ahead log's pages into the database file (a checkpoint, with its `fsync`)
/// on a connection and thread of its own, so that a commit never does. SQLite's default is a
/// checkpoint run by the commit that takes the log past 1,000 pages, on the writing connection
/// and while it holds the one writer: every write behind it waited for the copy and the
/// `fsync` (5 % of the service's CPU in `perf` at 600 admissions a second, all of it on the
/// writer's path). A passive checkpoint runs beside the writer and the readers without waiting
/// for either; a page still in use by a reader is left for the next run.
struct Checkpointer {
    /// Dropped (the thread sees it go) before the thread is joined.
    nudge: Option<SyncSender<()>>,
    commits: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Checkpointer {
    /// Stop the thread and wait for it: its connection is closed once this returns (a run in
    /// progress ends first).
    fn drop(&mut self) {
        self.nudge.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Checkpointer {
    /// Start the checkpointer's thread on its own connection to `path`; it stops when the last
    /// handle is dropped.
    fn start(path: &Path) -> std::io::Result<Arc<Checkpointer>> {
        let connection = connect(path).map_err(std::io::Error::other)?;
        let (nudge, nudged) = std::sync::mpsc::sync_channel::<()>(1);
        let commits = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&commits);
        let thread = std::thread::Builder::new()
            .name("consult-checkpoint".into())
            .spawn(move || {
                let mut checkpointed = 0;
                loop {
                    match nudged.recv_timeout(CHECKPOINT_INTERVAL) {
                        Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    let now = counted.load(Ordering::Relaxed);
                    if now == checkpointed {
                        continue;
                    }
                    // (busy, frames in the log, frames copied). A page a reader still needs
                    // is left in the log: the next run (a second later at most, even with no
                    // commit since) copies it.
                    match connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                        Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
                    }) {
                        Ok((log, copied)) if copied >= log => checkpointed = now,
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "SQLite checkpoint failed; trying again later")
                        }
                    }
                }
            })?;
        Ok(Arc::new(Checkpointer {
            nudge: Some(nudge),
            commits,
            thread: Some(thread),
        }))
    }

    /// A write committed: every [`COMMITS_PER_CHECKPOINT`]th nudges the thread (never waits).
    fn committed(&self) {
        let n = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(COMMITS_PER_CHECKPOINT)
            && let Some(nudge) = &self.nudge
        {
            let _ = nudge.try_send(());
        }
    }
}

/// Tell the checkpointer, if any, that a write committed.
fn committed(checkpointer: &Option<Arc<Checkpointer>>) {
    if let Some(checkpointer) = checkpointer {
        checkpointer.committed();
    }
}

impl Lite {
    /// Open `path` (created by the migrations before).
    pub(crate) fn open(path: &Path) -> rusqlite::Result<Lite> {
        let writer = connect(path)?;
        let mode: String =
            writer.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        // While another process (a command run beside the service) holds the write lock, SQLite
        // would wait by putting the calling thread — a runtime worker — to sleep. The writer
        // hears "busy" at once instead, and the write waits asleep on the runtime
        // ([`BusyWait`]). Only in WAL, where a write is refused before it changes anything and
        // a commit never waits (elsewhere SQLite's own wait stays).
        let mut checkpointer = None;
        if mode.eq_ignore_ascii_case("wal") {
            writer.busy_timeout(Duration::ZERO)?;
            // Checkpoints on a thread of their own ([`Checkpointer`]); if it cannot start,
            // SQLite's own stay (run by the commits).
            match Checkpointer::start(path) {
                Ok(started) => {
                    writer.pragma_update(None, "wal_autocheckpoint", 0)?;
                    checkpointer = Some(started);
                }
                Err(e) => tracing::warn!(error = %e, "SQLite checkpoints stay on the writer"),
            }
        } else {
            tracing::warn!(%mode, "SQLite is not in WAL mode: writes wait inside SQLite");
        }
        Ok(Lite {
            path: path.to_path_buf(),
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            readers: Mutex::new(Vec::new()),
            writer_wait: WRITER_WAIT,
            checkpointer,
        })
    }

    /// Run one statement: on a reader if it only reads, else on the writer, committed at once.
    pub(crate) async fn run(
        &self,
        sql: &str,
        args: &[Arg],
        want: Want,
    ) -> super::sql::Result<Output> {
        {
            let reader = self.reader()?;
            let mut statement = reader.connection().prepare_cached(sql)?;
            if statement.readonly() {
                return Ok(run(reader.connection(), &mut statement, args, want)?);
            }
        }
        let writer = self.writer().await?;
        let mut busy = BusyWait::new(self.writer_wait);
        loop {
            // A write SQLite finds busy has done nothing yet (it asks for the lock first).
            let attempt = writer
                .prepare_cached(sql)
                .and_then(|mut statement| run(&writer, &mut statement, args, want));
            match attempt {
                Err(e) if is_busy(&e) => busy.pause().await?,
                attempt => {
                    let output = attempt?;
                    committed(&self.checkpointer);
                    return Ok(output);
                }
            }
        }
    }

    /// Take the writer (after every writer before) and begin a transaction on it.
    pub(crate) async fn begin_write(&self) -> super::sql::Result<WriteTx> {
        let connection = self.writer().await?;
        let mut busy = BusyWait::new(self.writer_wait);
        while let Err(e) = connection.execute_batch("BEGIN IMMEDIATE") {
            if !is_busy(&e) {
                return Err(e.into());
            }
            busy.pause().await?;
        }
        Ok(WriteTx {
            connection,
            open: true,
            checkpointer: self.checkpointer.clone(),
        })
    }

    /// The writing connection, once every writer before has had it, outside any transaction
    /// (one left open by a rollback that failed is rolled back here, before anything joins it).
    async fn writer(&self) -> super::sql::Result<tokio::sync::OwnedMutexGuard<Connection>> {
        let connection =
            tokio::time::timeout(self.writer_wait, Arc::clone(&self.writer).lock_owned())
                .await
                .map_err(|_| Error::WriterBusy(self.writer_wait))?;
        if !connection.is_autocommit() {
            tracing::error!("the writing connection was left in a transaction: rolling it back");
            connection.execute_batch("ROLLBACK")?;
        }
        Ok(connection)
    }

    fn reader(&self) -> rusqlite::Result<Reader<'_>> {
        let idle = self
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let connection = match idle {
            Some(connection) => connection,
            None => connect(&self.path)?,
        };
        Ok(Reader {
            lite: self,
            connection: Some(connection),
        })
    }
}

/// The pauses of a write while another process holds the database's write lock: asleep on the
/// runtime (its thread free for other tasks), 1 ms at first, doubling to [`BUSY_PAUSE`], until
/// `wait` has passed; then the write is refused ([`Error::WriterBusy`]).
struct BusyWait {
    wait: Duration,
    deadline: tokio::time::Instant,
    pause: Duration,
}

impl BusyWait {
    fn new(wait: Duration) -> Self {
        Self {
            wait,
            deadline: tokio::time::Instant::now() + wait,
            pause: Duration::from_millis(1),
        }
    }

    /// After an attempt SQLite found busy: wait before the next, or refuse once the wait is over.
    async fn pause(&mut self) -> super::sql::Result<()> {
        let now = tokio::time::Instant::now();
        if now >= self.deadline {
            return Err(Error::WriterBusy(self.wait));
        }
        tokio::time::sleep_until(self.deadline.min(now + self.pause)).await;
        self.pause = (self.pause * 2).min(BUSY_PAUSE);
        Ok(())
    }
}

/// Whether SQLite refused because another connection holds a lock it needs.
fn is_busy(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
}

/// A connection set up as the service wants every one.
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    // The migrations made the file: a connection never creates one (a file removed under a
    // running service is an error, not a new empty database).
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // NORMAL: durable at each WAL checkpoint, never corrupt. A reader waits up to 5 s for
    // another process in the rare moments WAL makes it wait (recovery of the log); the writer
    // does not wait in SQLite at all (see `Lite::open`).
    connection.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
    )?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(connection)
}

/// A reading connection, given back when dropped.
struct Reader<'a> {
    lite: &'a Lite,
    connection: Option<Connection>,
}

impl Reader<'_> {
    fn connection(&self) -> &Connection {
        // Taken only by `drop`.
        self.connection.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            let mut idle = self
                .lite
                .readers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // One left inside a transaction (a `BEGIN` run as a statement) would read an old
            // snapshot for ever and hold back checkpoints: closed instead.
            if idle.len() < IDLE_READERS && connection.is_autocommit() {
                idle.push(connection);
            }
        }
    }
}

/// A write transaction holding the writer; rolled back if dropped before [`WriteTx::commit`].
pub(crate) struct WriteTx {
    connection: tokio::sync::OwnedMutexGuard<Connection>,
    open: bool,
    checkpointer: Option<Arc<Checkpointer>>,
}

impl WriteTx {
    /// Run one statement in the transaction. After an error that made SQLite end the
    /// transaction itself (a full disk, an I/O error, `RAISE(ROLLBACK)`), nothing more runs in
    /// it: a statement would otherwise commit on its own.
    pub(crate) fn run(
        &mut self,
        sql: &str,
        args: &[Arg],
        want: Want,
    ) -> super::sql::Result<Output> {
        if self.connection.is_autocommit() {
            return Err(Error::TransactionEnded);
        }
        let mut statement = self.connection.prepare_cached(sql)?;
        Ok(run(&self.connection, &mut statement, args, want)?)
    }

    /// Commit; if that fails, roll back so the writer is left without a transaction.
    pub(crate) fn commit(mut self) -> rusqlite::Result<()> {
        self.open = false;
        let outcome = self.connection.execute_batch("COMMIT");
        match outcome {
            Ok(()) => committed(&self.checkpointer),
            Err(_) if !self.connection.is_autocommit() => {
                let _ = self.connection.execute_batch("ROLLBACK");
            }
            Err(_) => {}
        }
        outcome
    }

    /// Roll back.
    pub(crate) fn rollback(mut self) -> rusqlite::Result<()> {
        self.open = false;
        self.connection.execute_batch("ROLLBACK")
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if self.open
            && !self.connection.is_autocommit()
            && let Err(e) = self.connection.execute_batch("ROLLBACK")
        {
            tracing::error!(error = %e, "could not roll back a write transaction");
        }
    }
}

/// Bind `args` to the statement's placeholders and run it.
fn run(
    connection: &Connection,
    statement: &mut CachedStatement<'_>,
    args: &[Arg],
    want: Want,
) -> rusqlite::Result<Output> {
    bind(statement, args)?;
    if want == Want::Done {
        let mut rows = statement.raw_query();
        while rows.next()?.is_some() {}
        drop(rows);
        let changed = if statement.readonly() {
            0
        } else {
            connection.changes()
        };
        return Ok(Output::Done(changed));
    }
    let columns: Arc<[String]> = statement
        .column_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let width = columns.len();
    let readonly = statement.readonly();
    let mut out = Vec::new();
    let mut rows = statement.raw_query();
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            values.push(match row.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Integer(v),
                ValueRef::Real(v) => Value::Real(v),
                // Text that is not UTF-8 stays bytes: decoding it as text then fails.
                ValueRef::Text(t) => match std::str::from_utf8(t) {
                    Ok(t) => Value::Text(t.to_owned()),
                    Err(_) => Value::Blob(t.to_vec()),
                },
                ValueRef::Blob(b) => Value::Blob(b.to_vec()),
            });
        }
        if want == Want::All || out.is_empty() {
            out.push(Row(RowInner::Sqlite {
                columns: Arc::clone(&columns),
                values,
            }));
        }
        // A read stops at its first row; a write (`… RETURNING`) is stepped to its end, so
        // that its last step (and, on its own, its commit) reports any error here rather than
        // in the reset that would follow.
        if want == Want::First && readonly {
            break;
        }
    }
    Ok(Output::Rows(out))
}

/// `$N` is the N-th argument wherever it appears; in a statement of unnamed `?` only, each is
/// the next argument. Every argument must be used, no placeholder may lack one, and the two
/// kinds do not mix.
fn bind(statement: &mut CachedStatement<'_>, args: &[Arg]) -> rusqlite::Result<()> {
    let count = statement.parameter_count();
    let named = (1..=count).any(|index| statement.parameter_name(index).is_some());
    let mut used = vec![false; args.len()];
    for index in 1..=count {
        let n = match statement.parameter_name(index) {
            Some(name) => name
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.to_owned()))?,
            None if named => return Err(rusqlite::Error::InvalidParameterName("?".into())),
            None => index,
        };
        if let Some(slot) = n.checked_sub(1).and_then(|i| used.get_mut(i)) {
            *slot = true;
        }
        let arg = args
            .get(n.wrapping_sub(1))
            .ok_or(rusqlite::Error::InvalidParameterCount(n, args.len()))?;
        match arg {
            Arg::Null(_) => statement.raw_bind_parameter(index, rusqlite::types::Null)?,
            Arg::Bool(v) => statement.raw_bind_parameter(index, i64::from(*v))?,
            Arg::I32(v) => statement.raw_bind_parameter(index, i64::from(*v))?,
            Arg::I64(v) => statement.raw_bind_parameter(index, *v)?,
            Arg::F64(v) => statement.raw_bind_parameter(index, *v)?,
            Arg::Text(v) => statement.raw_bind_parameter(index, v.as_str())?,
            Arg::Blob(v) => statement.raw_bind_parameter(index, v.as_slice())?,
        }
    }
    if let Some(unused) = used.iter().position(|used| !used) {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "${} (an argument no placeholder takes)",
            unused + 1
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_that_waits_too_long_for_the_writer_is_refused_and_reads_go_on() {
        let (_dir, mut lite) = scratch();
        lite.writer_wait = Duration::from_millis(100);
        let held = lite.begin_write().await.unwrap();
        assert!(matches!(
            lite.begin_write().await,
            Err(Error::WriterBusy(_))
        ));
        assert!(matches!(
            lite.run("INSERT INTO t VALUES (1)", &[], Want::Done).await,
            Err(Error::WriterBusy(_))
        ));
        assert_eq!(count(&lite).await, 0, "a read waited for the writer");
        drop(held);
        let mut tx = lite.begin_write().await.unwrap();
        tx.run("INSERT INTO t VALUES (1)", &[], Want::Done).unwrap();
        tx.commit().unwrap();
        assert_eq!(count(&lite).await, 1);
    }

    /// Another process (here another connection) holds the write lock: the service's write
    /// waits asleep on the runtime — on a runtime of one thread, the other's commit still runs
    /// meanwhile — and goes once the lock is let go, after the other's row. Held past the wait,
    /// the write is refused with nothing written, and the writer works again after.
    #[tokio::test(flavor = "current_thread")]
    async fn a_write_waits_for_another_process_asleep_on_the_runtime() {
        let (dir, mut lite) = scratch();
        let other = Connection::open(dir.path().join("scratch.db")).unwrap();
        let let_go_later = |sql: &'static str| {
            let other = &other;
            async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                other.execute_batch(sql)
            }
        };

        other
            .execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1)")
            .unwrap();
        let (ours, theirs) = tokio::join!(
            lite.run("INSERT INTO t VALUES (2)", &[], Want::Done),
            let_go_later("COMMIT")
        );
        theirs.unwrap();
        ours.unwrap();

        other
            .execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (3)")
            .unwrap();
        let (tx, theirs) = tokio::join!(lite.begin_write(), let_go_later("COMMIT"));
        theirs.unwrap();
        let mut tx = tx.unwrap();
        tx.run("INSERT INTO t VALUES (4)", &[], Want::Done).unwrap();
        tx.commit().unwrap();
        assert_eq!(values(&lite).await, [1, 2, 3, 4]);

        lite.writer_wait = Duration::from_millis(100);
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert!(matches!(
            lite.run("INSERT INTO t VALUES (5)", &[], Want::Done).await,
            Err(Error::WriterBusy(_))
        ));
        assert!(matches!(
            lite.begin_write().await,
            Err(Error::WriterBusy(_))
        ));
        assert_eq!(
            values(&lite).await,
            [1, 2, 3, 4],
            "a read waited for the lock"
        );
        other.execute_batch("ROLLBACK").unwrap();
        lite.run("INSERT INTO t VALUES (6)", &[], Want::Done)
            .await
            .unwrap();
        assert_eq!(values(&lite).await, [1, 2, 3, 4, 6]);
    }

    async fn values(lite: &Lite) -> Vec<i64> {
        let Ok(Output::Rows(rows)) = lite
            .run("SELECT x FROM t ORDER BY rowid", &[], Want::All)
            .await
        else {
            panic!("no rows")
        };
        rows.iter().map(|row| row.get(0)).collect()
    }

    fn scratch() -> (tempfile::TempDir, Lite) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scratch.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (x INTEGER)")
            .unwrap();
        let lite = Lite::open(&path).unwrap();
        (dir, lite)
    }

    async fn count(lite: &Lite) -> i64 {
        let Ok(Output::Rows(rows)) = lite.run("SELECT COUNT(*) FROM t", &[], Want::First).await
        else {
            panic!("no count")
        };
        rows[0].get(0)
    }

    #[tokio::test]
    async fn placeholders_of_both_kinds_or_arguments_left_over_are_refused() {
        let (_dir, lite) = scratch();
        let one = [Arg::I64(1)];
        let three = [Arg::I64(1), Arg::I64(2), Arg::I64(3)];
        for (sql, args) in [
            ("INSERT INTO t VALUES ($1 + ?)", &three[..2]),
            ("INSERT INTO t VALUES ($1 + $3)", &three[..]),
            ("INSERT INTO t VALUES ($1)", &three[..2]),
            ("INSERT INTO t VALUES ($2)", &one[..]),
            ("INSERT INTO t VALUES (?)", &[][..]),
        ] {
            assert!(
                lite.run(sql, args, Want::Done).await.is_err(),
                "{sql} with {} arguments",
                args.len()
            );
        }
        assert_eq!(count(&lite).await, 0);
        // Unnamed only: in order.
        lite.run("INSERT INTO t VALUES (? * 10 + ?)", &three[..2], Want::Done)
            .await
            .unwrap();
        let Ok(Output::Rows(rows)) = lite.run("SELECT x FROM t", &[], Want::First).await else {
            panic!("no row")
        };
        assert_eq!(rows[0].get::<i64, _>(0), 12);
    }

    /// Checkpoints run on the checkpointer's thread, not in a commit: the writer's automatic
    /// checkpoint is off, and yet the log's pages reach the database file (in WAL mode only a
    /// checkpoint writes it) while every connection of the service stays open.
    #[tokio::test]
    async fn the_log_reaches_the_database_file_without_a_commit_checkpointing() {
        let (dir, lite) = scratch();
        let path = dir.path().join("scratch.db");
        let automatic: i64 = lite
            .writer
            .lock()
            .await
            .pragma_query_value(None, "wal_autocheckpoint", |row| row.get(0))
            .unwrap();
        assert_eq!(automatic, 0);
        let before = std::fs::metadata(&path).unwrap().len();
        // Statements on their own and transactions both count as commits.
        for n in 0..2 * COMMITS_PER_CHECKPOINT {
            let insert = "INSERT INTO t VALUES (randomblob(4000))";
            if n % 2 == 0 {
                lite.run(insert, &[], Want::Done).await.unwrap();
            } else {
                let mut tx = lite.begin_write().await.unwrap();
                tx.run(insert, &[], Want::Done).unwrap();
                tx.commit().unwrap();
            }
        }
        let written = 2 * COMMITS_PER_CHECKPOINT * 4000;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&path).unwrap().len() < before + written {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file stayed at {} bytes",
                std::fs::metadata(&path).unwrap().len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(count(&lite).await, 2 * COMMITS_PER_CHECKPOINT as i64);
    }

    #[tokio::test]
    async fn a_write_returning_several_rows_runs_whole_when_one_is_asked_for() {
        let (_dir, lite) = scratch();
        let Ok(Output::Rows(rows)) = lite
            .run(
                "INSERT INTO t VALUES (1), (2), (3) RETURNING x",
                &[],
                Want::First,
            )
            .await
        else {
            panic!("no rows")
        };
        assert_eq!(rows.len(), 1);
        assert_eq!(count(&lite).await, 3);
    }

    #[tokio::test]
    async fn a_transaction_sqlite_ended_runs_nothing_more() {
        let (_dir, lite) = scratch();
        lite.run(
            "CREATE TRIGGER refuse BEFORE INSERT ON t WHEN NEW.x = 99 \
             BEGIN SELECT RAISE(ROLLBACK, 'refused'); END",
            &[],
            Want::Done,
        )
        .await
        .unwrap();
        let mut tx = lite.begin_write().await.unwrap();
        tx.run("INSERT INTO t VALUES (1)", &[], Want::Done).unwrap();
        assert!(tx
            .run("INSERT INTO t VALUES (99)", &[], Want::Done)
            .is_err());
        assert!(matches!(
            tx.run("INSERT INTO t VALUES (2)", &[], Want::Done),
            Err(Error::TransactionEnded)
        ));
        assert!(tx.commit().is_err());
        assert_eq!(count(&lite).await, 0);
    }

    #[tokio::test]
    async fn connections_left_inside_a_transaction_are_not_used_as_they_are() {
        let (_dir, lite) = scratch();
        // The writer, left in a transaction: the next write rolls it back first.
        Arc::clone(&lite.writer)
            .lock_owned()
            .await
            .execute_batch("BEGIN; INSERT INTO t VALUES (7);")
            .unwrap();
        lite.run("INSERT INTO t VALUES (8)", &[], Want::Done)
            .await
            .unwrap();
        let Ok(Output::Rows(rows)) = lite.run("SELECT x FROM t", &[], Want::All).await else {
            panic!("no rows")
        };
        let seen: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
        assert_eq!(seen, [8]);
        // A reader a `BEGIN` went to is closed, not kept.
        let idle = || lite.readers.lock().unwrap().len();
        let before = idle();
        lite.run("BEGIN", &[], Want::Done).await.unwrap();
        assert_eq!(idle(), before.saturating_sub(1));
    }
}

//! The one way the service runs SQL: [`query`] and [`query_scalar`], bound with
//! [`Query::bind`] and run on a [`Db`] (a statement on its own) or a [`Tx`] (a write
//! transaction). The same statement text serves both engines (`$1` placeholders); what runs it
//! differs: PostgreSQL through sqlx, SQLite through [`super::lite`] on the calling thread.
//!
//! The shape is sqlx's (`query(..).bind(..).fetch_optional(db)`, `row.get::<T, _>(i)`), so a
//! statement reads the same as before; only the engine underneath changed.

use std::sync::Arc;

use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row as _};

use super::lite::{self, Lite};
use super::Backend;

/// Why a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PostgreSQL (or sqlx around it) refused or could not be reached.
    #[error(transparent)]
    Sqlx(sqlx::Error),
    /// SQLite refused.
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A column's value is not of the type asked for.
    #[error("column {column}: {message}")]
    Decode {
        /// The column asked for (its index or name).
        column: String,
        /// What was wrong.
        message: String,
    },
    /// `fetch_one` found no row.
    #[error("no rows returned by a query that expected to return at least one row")]
    RowNotFound,
    /// SQLite ended the write transaction itself after an error; nothing more runs in it.
    #[error("the write transaction was ended by an earlier error")]
    TransactionEnded,
    /// SQLite: a write waited this long for the writing connection, or for another process to
    /// let go of the database's write lock, and was refused.
    #[error("the database's writer stayed busy for {0:?}")]
    WriterBusy(std::time::Duration),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => Error::RowNotFound,
            e => Error::Sqlx(e),
        }
    }
}

impl Error {
    /// Whether the database cannot take the statement right now (down, unreachable, or its
    /// writer busy too long): the request may succeed later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Sqlx(e) => crate::error::database_unreachable(e),
            Error::WriterBusy(_) => true,
            _ => false,
        }
    }
}

/// A result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The database: SQLite (statements run on the calling thread, writes through one connection)
/// or PostgreSQL (sqlx's pool). Cheap to clone.
#[derive(Clone)]
pub struct Db(pub(super) DbInner);

#[derive(Clone)]
pub(super) enum DbInner {
    Sqlite {
        lite: Arc<Lite>,
        /// sqlx's pool on the same file, for what SQLite cannot do through `lite`: schema
        /// migrations (sqlx's migrator) and the backup's snapshot.
        any: AnyPool,
    },
    Postgres(AnyPool),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Db").field(&self.backend()).finish()
    }
}

impl Db {
    /// Which engine this is.
    pub fn backend(&self) -> Backend {
        match &self.0 {
            DbInner::Sqlite { .. } => Backend::Sqlite,
            DbInner::Postgres(_) => Backend::Postgres,
        }
    }

    /// sqlx's pool on the same database, for engine-specific work outside the query layer
    /// (migrations, backup snapshots). Do not write through it while the service runs on
    /// SQLite: writes go through [`Db`], whose one writer they would wait on.
    pub fn any_pool(&self) -> &AnyPool {
        match &self.0 {
            DbInner::Sqlite { any, .. } => any,
            DbInner::Postgres(pool) => pool,
        }
    }

    /// Close every connection (PostgreSQL: the pool; SQLite: sqlx's pool, and the connections
    /// of this layer once the last clone is dropped).
    pub async fn close(&self) {
        self.any_pool().close().await;
    }

    /// Start a transaction that writes, holding the database's one write lock until it ends,
    /// so that read-then-write sequences (redeem an invite once, append to the audit chain)
    /// stay serial whichever node runs them. SQLite: the process's one writing connection,
    /// taken in turn, then `BEGIN IMMEDIATE`. PostgreSQL: a transaction-scoped advisory lock,
    /// released by commit or rollback, and never left behind by a node that dies
    /// mid-transaction.
    pub async fn begin_write(&self) -> Result<Tx> {
        match &self.0 {
            DbInner::Sqlite { lite, .. } => Ok(Tx(TxInner::Sqlite(lite.begin_write().await?))),
            DbInner::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(super::WRITE_LOCK)
                    .execute(&mut *tx)
                    .await?;
                Ok(Tx(TxInner::Postgres(tx)))
            }
        }
    }
}

/// A write transaction: dropped without [`Tx::commit`], it rolls back.
pub struct Tx(TxInner);

enum TxInner {
    Sqlite(lite::WriteTx),
    Postgres(sqlx::Transaction<'static, sqlx::Any>),
}

impl Tx {
    /// Commit.
    pub async fn commit(self) -> Result<()> {
        match self.0 {
            TxInner::Sqlite(tx) => Ok(tx.commit()?),
            TxInner::Postgres(tx) => Ok(tx.commit().await?),
        }
    }

    /// Roll back (as dropping does), saying whether it could.
    pub async fn rollback(self) -> Result<()> {
        match self.0 {
            TxInner::Sqlite(tx) => Ok(tx.rollback()?),
            TxInner::Postgres(tx) => Ok(tx.rollback().await?),
        }
    }
}

/// Where a statement runs: a [`Db`] (on its own) or a [`Tx`].
pub enum Target<'c> {
    /// On its own, committed at once if it writes.
    Db(&'c Db),
    /// In a write transaction.
    Tx(&'c mut Tx),
}

/// What a statement can run on: `&Db` or `&mut Tx`.
pub trait Executor<'c> {
    /// Where.
    fn target(self) -> Target<'c>;
}

impl<'c> Executor<'c> for &'c Db {
    fn target(self) -> Target<'c> {
        Target::Db(self)
    }
}

impl<'c> Executor<'c> for &'c mut Tx {
    fn target(self) -> Target<'c> {
        Target::Tx(self)
    }
}

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// SQL NULL of a type (PostgreSQL wants to know which).
    Null(Kind),
    /// A boolean (an integer 0 or 1 in SQLite).
    Bool(bool),
    /// A 32-bit integer.
    I32(i32),
    /// A 64-bit integer.
    I64(i64),
    /// A float.
    F64(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

/// The type of a NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Boolean.
    Bool,
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// Float.
    F64,
    /// Text.
    Text,
    /// Bytes.
    Blob,
}

/// A Rust value that binds to a placeholder.
pub trait Bind {
    /// As an argument.
    fn into_arg(self) -> Arg;
}

/// A Rust type with a SQL type, for `Option<T>`'s NULL.
pub trait Typed {
    /// Its SQL type.
    const KIND: Kind;
}

macro_rules! bind_value {
    ($($ty:ty => $kind:ident, |$v:ident| $arg:expr;)*) => {$(
        impl Bind for $ty {
            fn into_arg(self) -> Arg {
                let $v = self;
                $arg
            }
        }
        impl Typed for $ty {
            const KIND: Kind = Kind::$kind;
        }
    )*};
}

bind_value! {
    bool => Bool, |v| Arg::Bool(v);
    i32 => I32, |v| Arg::I32(v);
    i64 => I64, |v| Arg::I64(v);
    f64 => F64, |v| Arg::F64(v);
    String => Text, |v| Arg::Text(v);
    &String => Text, |v| Arg::Text(v.clone());
    &str => Text, |v| Arg::Text(v.to_owned());
    Vec<u8> => Blob, |v| Arg::Blob(v);
    &Vec<u8> => Blob, |v| Arg::Blob(v.clone());
    &[u8] => Blob, |v| Arg::Blob(v.to_vec());
}

impl<T: Bind + Typed> Bind for Option<T> {
    fn into_arg(self) -> Arg {
        match self {
            Some(v) => v.into_arg(),
            None => Arg::Null(T::KIND),
        }
    }
}

impl<T: Typed> Typed for Option<T> {
    const KIND: Kind = T::KIND;
}

impl<'a, T> Bind for &'a Option<T>
where
    &'a T: Bind + Typed,
{
    fn into_arg(self) -> Arg {
        match self {
            Some(v) => v.into_arg(),
            None => Arg::Null(<&'a T as Typed>::KIND),
        }
    }
}

/// A statement with its arguments; run it with `execute` or a `fetch_*`.
#[must_use = "a query does nothing until it is run"]
pub struct Query<'q> {
    sql: &'q str,
    args: Vec<Arg>,
}

/// A statement.
///
/// ```no_run
/// # async fn f(db: &consult_signaling::db::Db) -> consult_signaling::db::sql::Result<()> {
/// use consult_signaling::db::query;
/// let row = query("SELECT email FROM users WHERE id = $1").bind("a-user-id").fetch_optional(db).await?;
/// let email: Option<String> = row.map(|row| row.get(0));
/// # Ok(()) }
/// ```
pub fn query(sql: &str) -> Query<'_> {
    Query {
        sql,
        args: Vec::new(),
    }
}

/// What `execute` did.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    rows_affected: u64,
}

impl Done {
    /// Rows inserted, updated or deleted.
    pub fn rows_affected(&self) -> u64 {
        self.rows_affected
    }
}

/// What a statement is run for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    /// Rows changed.
    Done,
    /// The first row, if any.
    First,
    /// Every row.
    All,
}

/// What a statement gave.
pub(super) enum Output {
    Done(u64),
    Rows(Vec<Row>),
}

impl<'q> Query<'q> {
    /// Bind the next placeholder (`$1`, then `$2`, …).
    pub fn bind(mut self, value: impl Bind) -> Self {
        self.args.push(value.into_arg());
        self
    }

    /// Run it; how many rows it changed.
    pub async fn execute<'c>(self, on: impl Executor<'c>) -> Result<Done> {
        match self.run(on.target(), Want::Done).await? {
            Output::Done(rows_affected) => Ok(Done { rows_affected }),
            Output::Rows(_) => Ok(Done { rows_affected: 0 }),
        }
    }

    /// Its first row, if any.
    pub async fn fetch_optional<'c>(self, on: impl Executor<'c>) -> Result<Option<Row>> {
        Ok(self.rows(on, Want::First).await?.into_iter().next())
    }

    /// Its first row; [`Error::RowNotFound`] without one.
    pub async fn fetch_one<'c>(self, on: impl Executor<'c>) -> Result<Row> {
        self.fetch_optional(on).await?.ok_or(Error::RowNotFound)
    }

    /// Every row.
    pub async fn fetch_all<'c>(self, on: impl Executor<'c>) -> Result<Vec<Row>> {
        self.rows(on, Want::All).await
    }

    async fn rows<'c>(self, on: impl Executor<'c>, want: Want) -> Result<Vec<Row>> {
        match self.run(on.target(), want).await? {
            Output::Rows(rows) => Ok(rows),
            Output::Done(_) => Ok(Vec::new()),
        }
    }

    async fn run(self, on: Target<'_>, want: Want) -> Result<Output> {
        match on {
            Target::Db(db) => match &db.0 {
                DbInner::Sqlite { lite, .. } => lite.run(self.sql, &self.args, want).await,
                DbInner::Postgres(pool) => run_sqlx(pool, self.sql, self.args, want).await,
            },
            Target::Tx(tx) => match &mut tx.0 {
                TxInner::Sqlite(tx) => tx.run(self.sql, &self.args, want),
                TxInner::Postgres(tx) => run_sqlx(&mut **tx, self.sql, self.args, want).await,
            },
        }
    }
}

/// Run through sqlx (PostgreSQL).
async fn run_sqlx<'e, E>(on: E, sql: &str, args: Vec<Arg>, want: Want) -> Result<Output>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let mut q = sqlx::query(sql);
    for arg in args {
        q = match arg {
            Arg::Null(Kind::Bool) => q.bind(None::<bool>),
            Arg::Null(Kind::I32) => q.bind(None::<i32>),
            Arg::Null(Kind::I64) => q.bind(None::<i64>),
            Arg::Null(Kind::F64) => q.bind(None::<f64>),
            Arg::Null(Kind::Text) => q.bind(None::<String>),
            Arg::Null(Kind::Blob) => q.bind(None::<Vec<u8>>),
            Arg::Bool(v) => q.bind(v),
            Arg::I32(v) => q.bind(v),
            Arg::I64(v) => q.bind(v),
            Arg::F64(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::Blob(v) => q.bind(v),
        };
    }
    Ok(match want {
        Want::Done => Output::Done(q.execute(on).await?.rows_affected()),
        Want::First => Output::Rows(
            q.fetch_optional(on)
                .await?
                .into_iter()
                .map(|row| Row(RowInner::Any(row)))
                .collect(),
        ),
        Want::All => Output::Rows(
            q.fetch_all(on)
                .await?
                .into_iter()
                .map(|row| Row(RowInner::Any(row)))
                .collect(),
        ),
    })
}

/// A value as SQLite gave it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// NULL.
    Null,
    /// An integer.
    Integer(i64),
    /// A float.
    Real(f64),
    /// Text (UTF-8; other text is kept as bytes).
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

/// A row.
pub struct Row(pub(super) RowInner);

pub(super) enum RowInner {
    Sqlite {
        columns: Arc<[String]>,
        values: Vec<Value>,
    },
    Any(AnyRow),
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Row")
    }
}

/// How a column is named: its index (from 0) or its name.
pub trait ColumnIndex: Copy + std::fmt::Display {
    /// Its position among `columns`.
    fn position(self, columns: &[String]) -> Option<usize>;
    /// Its value in an sqlx row.
    fn decode_any<'r, T>(self, row: &'r AnyRow) -> std::result::Result<T, sqlx::Error>
    where
        T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>;
}

impl ColumnIndex for usize {
    fn position(self, columns: &[String]) -> Option<usize> {
        (self < columns.len()).then_some(self)
    }
    fn decode_any<'r, T>(self, row: &'r AnyRow) -> std::result::Result<T, sqlx::Error>
    where
        T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
    {
        row.try_get(self)
    }
}

impl ColumnIndex for &str {
    fn position(self, columns: &[String]) -> Option<usize> {
        columns.iter().position(|c| c == self)
    }
    fn decode_any<'r, T>(self, row: &'r AnyRow) -> std::result::Result<T, sqlx::Error>
    where
        T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
    {
        row.try_get(self)
    }
}

/// A Rust type a column's value decodes to.
pub trait Decode<'r>: Sized {
    /// From SQLite's value.
    fn from_value(value: &'r Value) -> std::result::Result<Self, String>;
    /// From an sqlx row's column.
    fn from_any<I: ColumnIndex>(
        row: &'r AnyRow,
        column: I,
    ) -> std::result::Result<Self, sqlx::Error>;
}

fn mismatch(value: &Value, wanted: &str) -> String {
    let found = match value {
        Value::Null => "NULL",
        Value::Integer(_) => "an integer",
        Value::Real(_) => "a float",
        Value::Text(_) => "text",
        Value::Blob(_) => "bytes",
    };
    format!("{found} where {wanted} was expected")
}

macro_rules! decode_value {
    ($($ty:ty, $wanted:literal, |$v:ident| $pattern:pat => $out:expr;)*) => {$(
        impl<'r> Decode<'r> for $ty {
            fn from_value($v: &'r Value) -> std::result::Result<Self, String> {
                match $v {
                    $pattern => $out,
                    other => Err(mismatch(other, $wanted)),
                }
            }
            fn from_any<I: ColumnIndex>(
                row: &'r AnyRow,
                column: I,
            ) -> std::result::Result<Self, sqlx::Error> {
                column.decode_any(row)
            }
        }
        impl<'r> Decode<'r> for Option<$ty> {
            fn from_value(value: &'r Value) -> std::result::Result<Self, String> {
                match value {
                    Value::Null => Ok(None),
                    value => <$ty as Decode<'r>>::from_value(value).map(Some),
                }
            }
            fn from_any<I: ColumnIndex>(
                row: &'r AnyRow,
                column: I,
            ) -> std::result::Result<Self, sqlx::Error> {
                column.decode_any(row)
            }
        }
    )*};
}

decode_value! {
    i64, "an integer", |v| Value::Integer(i) => Ok(*i);
    i32, "a 32-bit integer", |v| Value::Integer(i) => i32::try_from(*i).map_err(|_| format!("{i} is out of a 32-bit integer's range"));
    bool, "a boolean", |v| Value::Integer(i) => Ok(*i != 0);
    f64, "a float", |v| Value::Real(r) => Ok(*r);
    String, "text", |v| Value::Text(t) => Ok(t.clone());
    &'r str, "text", |v| Value::Text(t) => Ok(t.as_str());
    Vec<u8>, "bytes", |v| Value::Blob(b) => Ok(b.clone());
    &'r [u8], "bytes", |v| Value::Blob(b) => Ok(b.as_slice());
}

impl Row {
    /// The value of a column; panics if there is no such column or it is not a `T` (a
    /// mistake in the statement, as with sqlx's `Row::get`). See [`Row::try_get`].
    #[track_caller]
    pub fn get<'r, T: Decode<'r>, I: ColumnIndex>(&'r self, column: I) -> T {
        match self.try_get(column) {
            Ok(value) => value,
            Err(e) => panic!("{e}"),
        }
    }

    /// The value of a column.
    pub fn try_get<'r, T: Decode<'r>, I: ColumnIndex>(&'r self, column: I) -> Result<T> {
        match &self.0 {
            RowInner::Sqlite { columns, values } => {
                let at = column.position(columns).ok_or_else(|| Error::Decode {
                    column: column.to_string(),
                    message: "no such column".into(),
                })?;
                T::from_value(&values[at]).map_err(|message| Error::Decode {
                    column: column.to_string(),
                    message,
                })
            }
            RowInner::Any(row) => Ok(T::from_any(row, column)?),
        }
    }
}

/// A statement whose rows are one value each.
#[must_use = "a query does nothing until it is run"]
pub struct QueryScalar<'q, T> {
    query: Query<'q>,
    _value: std::marker::PhantomData<fn() -> T>,
}

/// A statement whose rows are one value each (its first column).
pub fn query_scalar<T>(sql: &str) -> QueryScalar<'_, T> {
    QueryScalar {
        query: query(sql),
        _value: std::marker::PhantomData,
    }
}

impl<T> QueryScalar<'_, T>
where
    T: for<'r> Decode<'r>,
{
    /// Bind the next placeholder.
    pub fn bind(mut self, value: impl Bind) -> Self {
        self.query = self.query.bind(value);
        self
    }

    /// The first row's value, if any.
    pub async fn fetch_optional<'c>(self, on: impl Executor<'c>) -> Result<Option<T>> {
        self.query
            .fetch_optional(on)
            .await?
            .map(|row| row.try_get(0))
            .transpose()
    }

    /// The first row's value; [`Error::RowNotFound`] without one.
    pub async fn fetch_one<'c>(self, on: impl Executor<'c>) -> Result<T> {
        self.fetch_optional(on).await?.ok_or(Error::RowNotFound)
    }

    /// Every row's value.
    pub async fn fetch_all<'c>(self, on: impl Executor<'c>) -> Result<Vec<T>> {
        self.query
            .fetch_all(on)
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect()
    }
}

//! The query layer (`consult_signaling::db`) on the engine the tests run on: SQLite here,
//! PostgreSQL when `CONSULT_TEST_POSTGRES` names a server. Every value type both ways, NULLs,
//! placeholders by number, wrong arguments and wrong types as errors, transactions that roll
//! back when dropped, writers that queue without losing an update, and reads that never wait
//! for a writer.

use std::time::Duration;

use consult_signaling::db::sql::Error;
use consult_signaling::db::{self, query, query_scalar, Backend, Db};

use crate::common::fresh_postgres_database;

/// A fresh database (migrated, as the service opens it) with a scratch table of every type.
async fn scratch() -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_postgres_database().await;
    let db = db::open(dir.path(), url.as_deref()).await.unwrap();
    let bytes = match db.backend() {
        Backend::Sqlite => "BLOB",
        Backend::Postgres => "BYTEA",
    };
    query(&format!(
        "CREATE TABLE layer (id TEXT PRIMARY KEY, big BIGINT, small INTEGER, yes BOOLEAN, \
         real_number DOUBLE PRECISION, words TEXT, raw {bytes}, n BIGINT NOT NULL DEFAULT 0)"
    ))
    .execute(&db)
    .await
    .unwrap();
    (db, dir)
}

#[tokio::test]
async fn every_type_goes_in_and_comes_back_and_so_do_nulls() {
    let (db, _dir) = scratch().await;
    let insert = "INSERT INTO layer (id, big, small, yes, real_number, words, raw) \
                  VALUES ($1, $2, $3, $4, $5, $6, $7)";
    let done = query(insert)
        .bind("full")
        .bind(i64::MAX)
        .bind(-7i32)
        .bind(true)
        .bind(2.5f64)
        .bind("é, 🩺 and a quote '")
        .bind(vec![0u8, 255, 0, 1])
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
    query(insert)
        .bind("empty")
        .bind(None::<i64>)
        .bind(None::<i32>)
        .bind(None::<bool>)
        .bind(None::<f64>)
        .bind(None::<String>)
        .bind(None::<Vec<u8>>)
        .execute(&db)
        .await
        .unwrap();

    let select = "SELECT big, small, yes, real_number, words, raw FROM layer WHERE id = $1";
    let row = query(select).bind("full").fetch_one(&db).await.unwrap();
    assert_eq!(row.get::<i64, _>(0), i64::MAX);
    assert_eq!(row.get::<i32, _>(1), -7);
    assert!(row.get::<bool, _>(2));
    assert_eq!(row.get::<f64, _>(3), 2.5);
    assert_eq!(row.get::<&str, _>(4), "é, 🩺 and a quote '");
    assert_eq!(row.get::<String, _>("words"), "é, 🩺 and a quote '");
    assert_eq!(row.get::<Vec<u8>, _>("raw"), vec![0, 255, 0, 1]);
    assert_eq!(row.get::<Option<i64>, _>("big"), Some(i64::MAX));

    let row = query(select).bind("empty").fetch_one(&db).await.unwrap();
    assert_eq!(row.get::<Option<i64>, _>(0), None);
    assert_eq!(row.get::<Option<i32>, _>(1), None);
    assert_eq!(row.get::<Option<bool>, _>(2), None);
    assert_eq!(row.get::<Option<f64>, _>(3), None);
    assert_eq!(row.get::<Option<&str>, _>(4), None);
    assert_eq!(row.get::<Option<Vec<u8>>, _>(5), None);

    let ids: Vec<String> = query_scalar("SELECT id FROM layer ORDER BY id")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(ids, ["empty", "full"]);
}

#[tokio::test]
async fn placeholders_are_numbered_not_ordered() {
    let (db, _dir) = scratch().await;
    // `$2` before `$1`, and `$1` twice.
    query("INSERT INTO layer (words, id, big) VALUES ($2, $1, $3)")
        .bind("by-number")
        .bind("second")
        .bind(3i64)
        .execute(&db)
        .await
        .unwrap();
    let row = query("SELECT words, big FROM layer WHERE id = $1 AND (words = $2 OR id = $1)")
        .bind("by-number")
        .bind("second")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>(0), "second");
    assert_eq!(row.get::<i64, _>(1), 3);
}

#[tokio::test]
async fn wrong_arguments_and_wrong_types_are_errors() {
    let (db, _dir) = scratch().await;
    let insert = "INSERT INTO layer (id, big) VALUES ($1, $2)";
    // Too few: refused, and nothing written.
    assert!(query(insert).bind("a").execute(&db).await.is_err());
    // Too many: SQLite's side refuses. (PostgreSQL takes a parameter it does not use, and
    // sqlx would then keep that three-parameter statement for the connection, failing the
    // two-argument insert below on it: not tried there.)
    if db.backend() == Backend::Sqlite {
        let too_many = query(insert)
            .bind("a")
            .bind(1i64)
            .bind(2i64)
            .execute(&db)
            .await;
        assert!(too_many.is_err());
        assert_eq!(count(&db).await, 0);
    }
    // Not SQL at all.
    assert!(query("SELEKT 1").fetch_all(&db).await.is_err());

    let too_big_for_i32 = i64::from(i32::MAX) + 1;
    query(insert)
        .bind("a")
        .bind(too_big_for_i32)
        .execute(&db)
        .await
        .unwrap();
    let row = query("SELECT id, big FROM layer")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(row.try_get::<i64, _>(0).is_err(), "text read as a number");
    assert!(
        row.try_get::<i32, _>(1).is_err(),
        "a number too large for i32"
    );
    assert!(row.try_get::<String, _>("no_such_column").is_err());
    assert!(row.try_get::<String, _>(9usize).is_err());
    assert!(matches!(
        query("SELECT id FROM layer WHERE id = $1")
            .bind("missing")
            .fetch_one(&db)
            .await,
        Err(Error::RowNotFound)
    ));
    // A duplicate key is the database's refusal, and the row before it stays.
    assert!(query(insert)
        .bind("a")
        .bind(6i64)
        .execute(&db)
        .await
        .is_err());
    let big: i64 = query_scalar("SELECT big FROM layer WHERE id = 'a'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(big, too_big_for_i32);
}

#[tokio::test]
async fn a_transaction_dropped_or_rolled_back_leaves_nothing_and_the_writer_goes_on() {
    let (db, _dir) = scratch().await;
    let insert = "INSERT INTO layer (id) VALUES ($1)";
    {
        let mut tx = db.begin_write().await.unwrap();
        query(insert)
            .bind("dropped")
            .execute(&mut tx)
            .await
            .unwrap();
        let seen: i64 = query_scalar("SELECT COUNT(*) FROM layer")
            .fetch_one(&mut tx)
            .await
            .unwrap();
        assert_eq!(seen, 1, "a transaction sees its own writes");
    }
    let mut tx = db.begin_write().await.unwrap();
    query(insert)
        .bind("rolled back")
        .execute(&mut tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    // A statement that fails inside a transaction, then a commit: the rest is kept.
    let mut tx = db.begin_write().await.unwrap();
    query(insert).bind("kept").execute(&mut tx).await.unwrap();
    assert!(query("INSERT INTO nowhere VALUES (1)")
        .execute(&mut tx)
        .await
        .is_err());
    if db.backend() == Backend::Sqlite {
        tx.commit().await.unwrap();
    } else {
        // PostgreSQL aborts the whole transaction on an error: nothing is kept.
        assert!(tx.commit().await.is_err() || count(&db).await == 0);
        query(insert).bind("kept").execute(&db).await.unwrap();
    }
    let ids: Vec<String> = query_scalar("SELECT id FROM layer")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(ids, ["kept"]);
}

#[tokio::test]
async fn writes_on_their_own_commit_at_once_even_with_returning() {
    let (db, _dir) = scratch().await;
    let id: String = query_scalar("INSERT INTO layer (id, big) VALUES ($1, $2) RETURNING id")
        .bind("returned")
        .bind(1i64)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(id, "returned");
    let updated = query("UPDATE layer SET big = big + 1 WHERE id = $1")
        .bind("returned")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 1);
    let big: i64 = query_scalar("SELECT big FROM layer WHERE id = $1")
        .bind("returned")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(big, 2, "the next read sees the write");
    let none = query("UPDATE layer SET big = 0 WHERE id = 'nobody'")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(none.rows_affected(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_queue_and_no_update_is_lost() {
    let (db, _dir) = scratch().await;
    query("INSERT INTO layer (id, n) VALUES ('counter', 0)")
        .execute(&db)
        .await
        .unwrap();
    let writers: Vec<_> = (0..40)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                // Read, let others run, write what was read plus one: a lost update unless
                // each transaction has the writer to itself.
                let mut tx = db.begin_write().await.unwrap();
                let n: i64 = query_scalar("SELECT n FROM layer WHERE id = 'counter'")
                    .fetch_one(&mut tx)
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
                query("UPDATE layer SET n = $1 WHERE id = 'counter'")
                    .bind(n + 1)
                    .execute(&mut tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let n: i64 = query_scalar("SELECT n FROM layer WHERE id = 'counter'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_wait_for_a_writer_nor_see_what_it_has_not_committed() {
    let (db, _dir) = scratch().await;
    let mut tx = db.begin_write().await.unwrap();
    query("INSERT INTO layer (id) VALUES ('uncommitted')")
        .execute(&mut tx)
        .await
        .unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), count(&db))
        .await
        .expect("a read waited for the open write transaction");
    assert_eq!(read, 0);
    tx.commit().await.unwrap();
    assert_eq!(count(&db).await, 1);
}

#[tokio::test]
async fn sqlite_text_that_is_not_utf8_is_refused_as_text() {
    let (db, _dir) = scratch().await;
    if db.backend() != Backend::Sqlite {
        return;
    }
    query("INSERT INTO layer (id, words) VALUES ('bad', CAST(x'ff00fe' AS TEXT))")
        .execute(&db)
        .await
        .unwrap();
    let row = query("SELECT words FROM layer")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(row.try_get::<String, _>(0).is_err());
    assert_eq!(row.get::<Vec<u8>, _>(0), vec![0xff, 0, 0xfe]);
}

async fn count(db: &Db) -> i64 {
    query_scalar("SELECT COUNT(*) FROM layer")
        .fetch_one(db)
        .await
        .unwrap()
}

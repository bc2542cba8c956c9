//! Where the service's writes run: with SQLite, on a thread of their own.
//!
//! SQLite has one writer (see [`crate::db`]): every write of the process queues for one
//! connection, and a transaction holds it from `BEGIN` to `COMMIT`. When sqlx ran SQLite's
//! statements, each was a hand-off to its connection's thread and back to the task that ran the
//! transaction, and on the service's busy runtime that task, once woken, waited its turn behind
//! every request and socket that was ready, with the writer held and idle. The statements now
//! run on the thread that asks, so a transaction no longer yields between them; the lane stays
//! because a write on it runs to its end whatever happens to the request that asked for it, and
//! running write transactions on the runtime instead measured no faster.
//!
//! A [`WriteLane`] runs write transactions on a runtime of their own, on one thread that does
//! nothing else. A woken transaction runs at once, so the connection is held for the
//! statements' own time. The task that asked waits for the result as before.
//!
//! A write handed to the lane runs to its end even if the request that asked for it goes away
//! (a client that disconnects mid-request): it commits or rolls back as a whole, never halfway
//! because its caller stopped waiting. With PostgreSQL, whose writers run concurrently, the
//! lane is the service's own runtime, with the same guarantee.

use std::future::Future;
use std::sync::Arc;

use crate::db::Backend;

/// Runs writes; cheap to clone. See the [module docs](self).
#[derive(Clone)]
pub struct WriteLane(Lane);

#[derive(Clone)]
enum Lane {
    /// A thread running a runtime of its own; it stops when the last clone is dropped.
    Thread {
        handle: tokio::runtime::Handle,
        _stop: Arc<StopOnDrop>,
    },
    /// The runtime of whoever calls [`WriteLane::run`].
    Caller,
}

/// Ends the lane's thread when dropped.
struct StopOnDrop(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}

impl WriteLane {
    /// The lane for a database on `backend`: a thread of its own for SQLite, the caller's
    /// runtime for PostgreSQL. Fails only if the thread cannot be started.
    pub fn for_backend(backend: Backend) -> std::io::Result<WriteLane> {
        match backend {
            Backend::Sqlite => WriteLane::thread(),
            Backend::Postgres => Ok(WriteLane(Lane::Caller)),
        }
    }

    /// A lane on a thread of its own.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let lane = consult_signaling::write_lane::WriteLane::thread()?;
    /// let here = std::thread::current().id();
    /// let there = lane.run(async { std::thread::current().id() }).await;
    /// assert_ne!(here, there);
    /// # Ok(())
    /// # }
    /// ```
    pub fn thread() -> std::io::Result<WriteLane> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("consult-writes".into())
            .spawn(move || {
                // Runs the writes handed to it until every clone of the lane is gone.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(WriteLane(Lane::Thread {
            handle,
            _stop: Arc::new(StopOnDrop(Some(stop))),
        }))
    }

    /// Whether the lane is a thread of its own (SQLite), not the caller's runtime.
    pub fn has_thread(&self) -> bool {
        matches!(self.0, Lane::Thread { .. })
    }

    /// Start `work` on the lane without waiting for it: something that runs as long as the
    /// lane does. On a lane of the caller's runtime, call it inside that runtime.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        match &self.0 {
            Lane::Thread { handle, .. } => drop(handle.spawn(work)),
            Lane::Caller => drop(tokio::spawn(work)),
        }
    }

    /// Run `work` on the lane and return its output. It runs to its end even if this future
    /// is dropped first; a panic in it panics here.
    pub async fn run<T, W>(&self, work: W) -> T
    where
        W: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let task = match &self.0 {
            Lane::Thread { handle, .. } => handle.spawn(work),
            Lane::Caller => tokio::spawn(work),
        };
        match task.await {
            Ok(output) => output,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // A task is cancelled only by its runtime shutting down, and this lane (which
                // keeps its runtime running) is borrowed here.
                Err(e) => panic!("a write was cancelled by its runtime: {e}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_finishes_when_its_caller_stops_waiting() {
        let lane = WriteLane::thread().unwrap();
        let (started, has_started) = tokio::sync::oneshot::channel();
        let (finish, may_finish) = tokio::sync::oneshot::channel::<()>();
        let (finished, has_finished) = tokio::sync::oneshot::channel();
        let caller = tokio::spawn({
            let lane = lane.clone();
            async move {
                lane.run(async move {
                    let _ = started.send(());
                    let _ = may_finish.await;
                    let _ = finished.send(42);
                })
                .await
            }
        });
        has_started.await.unwrap();
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
        finish.send(()).unwrap();
        assert_eq!(has_finished.await.unwrap(), 42);
    }

    #[tokio::test]
    async fn a_panic_in_a_write_reaches_its_caller() {
        let lane = WriteLane::thread().unwrap();
        let caller = tokio::spawn({
            let lane = lane.clone();
            async move {
                lane.run(async {
                    panic!("the write failed");
                })
                .await
            }
        });
        let e = caller.await.unwrap_err();
        assert!(e.is_panic());
        assert_eq!(
            lane.run(async { 7 }).await,
            7,
            "the lane runs the next write"
        );
    }

    #[tokio::test]
    async fn the_thread_ends_with_the_last_clone() {
        let lane = WriteLane::thread().unwrap();
        let Lane::Thread { handle, .. } = &lane.0 else {
            unreachable!()
        };
        let handle = handle.clone();
        let clone = lane.clone();
        drop(lane);
        assert_eq!(clone.run(async { 1 }).await, 1);
        drop(clone);
        // The runtime stops once its thread's `block_on` returns and drops it.
        for _ in 0..200 {
            if handle.spawn(async {}).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the lane's runtime still runs after its last clone was dropped");
    }

    #[tokio::test]
    async fn postgres_writes_run_on_the_callers_runtime() {
        let lane = WriteLane::for_backend(Backend::Postgres).unwrap();
        assert_eq!(lane.run(async { 3 }).await, 3);
        assert!(matches!(lane.0, Lane::Caller));
    }
}

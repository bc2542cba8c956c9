//! One reconcile at a time per consultation, any number across consultations.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedMutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use uuid::Uuid;

/// Serialises the work on each consultation (deciding and making its recording so), while
/// consultations go on side by side. [`PerConsultation::all`] waits for the work in progress
/// everywhere and holds any new work back (the service shutting down).
///
/// A lock exists only while someone holds or waits for it: the map holds no entry for a
/// consultation nobody is working on.
#[derive(Default)]
pub(crate) struct PerConsultation {
    everywhere: RwLock<()>,
    each: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while working on one consultation.
pub(crate) struct One<'a> {
    locks: &'a PerConsultation,
    consultation_id: Uuid,
    held: Option<OwnedMutexGuard<()>>,
    _everywhere: RwLockReadGuard<'a, ()>,
}

impl PerConsultation {
    fn each(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>> {
        self.each.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until nobody else works on `consultation_id`, then hold it.
    pub(crate) async fn one(&self, consultation_id: Uuid) -> One<'_> {
        let everywhere = self.everywhere.read().await;
        let lock = self.each().entry(consultation_id).or_default().clone();
        One {
            locks: self,
            consultation_id,
            held: Some(lock.lock_owned().await),
            _everywhere: everywhere,
        }
    }

    /// Wait until nobody works on any consultation, then hold them all.
    pub(crate) async fn all(&self) -> RwLockWriteGuard<'_, ()> {
        self.everywhere.write().await
    }
}

impl Drop for One<'_> {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        let lock = OwnedMutexGuard::mutex(&held).clone();
        drop(held);
        let mut each = self.locks.each();
        // Only the map and this clone: nobody waits, and nobody can start waiting without the
        // map's lock, held here.
        if Arc::strong_count(&lock) == 2 {
            each.remove(&self.consultation_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_consultation_at_a_time_others_beside_it() {
        let locks = Arc::new(PerConsultation::default());
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let first = locks.one(a).await;
        // Another consultation goes ahead at once.
        let other = tokio::time::timeout(Duration::from_secs(5), locks.one(b))
            .await
            .expect("another consultation waited");
        drop(other);
        // The same one waits for the first.
        let waiting = tokio::spawn({
            let locks = locks.clone();
            async move {
                let _second = locks.one(a).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the same consultation did not wait");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting work never went ahead")
            .unwrap();
        assert!(locks.each().is_empty(), "a lock outlived its work");
    }

    #[tokio::test]
    async fn all_waits_for_the_work_in_progress_and_holds_new_work_back() {
        let locks = Arc::new(PerConsultation::default());
        let working = locks.one(Uuid::new_v4()).await;
        let everything = tokio::spawn({
            let locks = locks.clone();
            async move {
                let _all = locks.all().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!everything.is_finished(), "all did not wait for the work");
        drop(working);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let later = tokio::spawn({
            let locks = locks.clone();
            async move {
                let _one = locks.one(Uuid::new_v4()).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !later.is_finished(),
            "new work went ahead while all were held"
        );
        everything.await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), later)
            .await
            .expect("new work never went ahead")
            .unwrap();
    }

    #[tokio::test]
    async fn a_lock_waited_for_stays_until_its_last_holder_is_done() {
        let locks = Arc::new(PerConsultation::default());
        let a = Uuid::new_v4();
        let first = locks.one(a).await;
        let second = tokio::spawn({
            let locks = locks.clone();
            async move {
                let _second = locks.one(a).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        assert_eq!(locks.each().len(), 1, "removed while another waited for it");
        second.await.unwrap();
        assert!(locks.each().is_empty());
    }
}

//! Idempotency keys: a client-chosen key per submission, so that a submission sent again (after
//! a lost answer, a timeout, a leader change) creates nothing new and is answered with the task
//! the first one created.
//!
//! Keys are scoped by the task's owner (`user_id`): two users may use the same key, and one
//! user can never learn or pre-empt another's task through a key. A key is kept from its task's
//! creation until a [`crate::LogEntry::ForgetIdempotencyKeys`] entry forgets it (the leader logs
//! one when the configured window has passed), independently of the task: purging the task
//! does not forget its key. Because forgetting is a logged entry, replay and followers hold
//! exactly the leader's keys.

use std::collections::BTreeMap;

use crate::HashMap;
use std::sync::Arc;

use crate::model::{Millis, TaskId};

/// One key the state knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// Owner of the task (keys are scoped by owner).
    pub user_id: Arc<str>,
    /// The client's key.
    pub key: Arc<str>,
    /// The task the first submission with this key created.
    pub task_id: TaskId,
    /// That task's creation time: the key is kept for the window from then.
    pub created: Millis,
}

/// One owner's keys: key → (task, created).
type OwnerKeys = HashMap<Arc<str>, (TaskId, Millis)>;

/// The keys of a state: by owner and key for lookups, by creation time for expiry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct IdempotencyKeys {
    /// owner → key → (task, created).
    by_user: HashMap<Arc<str>, OwnerKeys>,
    /// (created, task) → (owner, key). A task has at most one key, so the pair is unique.
    by_time: BTreeMap<(Millis, TaskId), (Arc<str>, Arc<str>)>,
}

impl IdempotencyKeys {
    /// The task and creation time of `key` of `user_id`, if known.
    pub(crate) fn get(&self, user_id: &str, key: &str) -> Option<(TaskId, Millis)> {
        self.by_user.get(user_id)?.get(key).copied()
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.by_time.len()
    }

    /// Records a key. Returns false, changing nothing, when the owner already has that key or
    /// the task already has a key.
    pub(crate) fn insert(
        &mut self,
        user_id: Arc<str>,
        key: Arc<str>,
        task_id: TaskId,
        created: Millis,
    ) -> bool {
        if self.get(&user_id, &key).is_some() || self.by_time.contains_key(&(created, task_id)) {
            return false;
        }
        self.by_user
            .entry(user_id.clone())
            .or_default()
            .insert(key.clone(), (task_id, created));
        self.by_time.insert((created, task_id), (user_id, key));
        true
    }

    /// Forgets every key of a task created before `created_before`; returns how many.
    pub(crate) fn forget_before(&mut self, created_before: Millis) -> usize {
        let mut forgotten = 0;
        // One by one from the oldest: the cost follows the keys forgotten, not the keys kept.
        while let Some(entry) = self.by_time.first_entry()
            && entry.key().0 < created_before
        {
            let (user_id, key) = entry.remove();
            if let Some(keys) = self.by_user.get_mut(&user_id) {
                keys.remove(&key);
                if keys.is_empty() {
                    self.by_user.remove(&user_id);
                }
            }
            forgotten += 1;
        }
        forgotten
    }

    /// Keys created at or after `from`, oldest first.
    pub(crate) fn created_from(&self, from: Millis) -> impl Iterator<Item = Millis> + '_ {
        self.by_time
            .range((from, TaskId(0))..)
            .map(|((created, _), _)| *created)
    }

    /// Every key, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = IdempotencyKey> + '_ {
        self.by_time
            .iter()
            .map(|((created, task_id), (user_id, key))| IdempotencyKey {
                user_id: user_id.clone(),
                key: key.clone(),
                task_id: *task_id,
                created: *created,
            })
    }

    /// Checks that both indexes hold the same keys.
    pub(crate) fn check(&self) -> Result<(), String> {
        let by_user: usize = self.by_user.values().map(HashMap::len).sum();
        if by_user != self.by_time.len() {
            return Err(format!(
                "{by_user} idempotency keys by owner, {} by time",
                self.by_time.len()
            ));
        }
        for ((created, task_id), (user_id, key)) in &self.by_time {
            if self.get(user_id, key) != Some((*task_id, *created)) {
                return Err(format!(
                    "idempotency key {key:?} of {user_id} (task {task_id}) is not indexed by owner"
                ));
            }
        }
        if self.by_user.values().any(HashMap::is_empty) {
            return Err("an owner without idempotency keys is still indexed".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_owner_and_forgotten_by_creation_time() {
        // Goal: lookups are per owner, a second insert of a key is refused, and forgetting
        // removes exactly the keys created before the bound from both indexes.
        let mut keys = IdempotencyKeys::default();
        assert!(keys.insert("a".into(), "k".into(), TaskId(1), 10));
        assert!(keys.insert("b".into(), "k".into(), TaskId(2), 20));
        assert!(!keys.insert("a".into(), "k".into(), TaskId(3), 30));
        assert_eq!(keys.get("a", "k"), Some((TaskId(1), 10)));
        assert_eq!(keys.get("b", "k"), Some((TaskId(2), 20)));
        assert_eq!(keys.get("c", "k"), None);
        assert_eq!(keys.forget_before(20), 1);
        assert_eq!(keys.get("a", "k"), None);
        assert_eq!(keys.get("b", "k"), Some((TaskId(2), 20)));
        assert_eq!(keys.len(), 1);
        keys.check().unwrap();
        assert_eq!(keys.forget_before(21), 1);
        assert_eq!(keys, IdempotencyKeys::default());
    }
}

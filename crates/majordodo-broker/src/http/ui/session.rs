//! The dashboard's sessions: a bounded table from random session ids to the user who logged in.
//!
//! - A session id is [`ID_BYTES`] random bytes (URL-safe base64 in the cookie), drawn from the
//!   random source given to [`Sessions::new`] (the operating system's in the broker, a seeded
//!   generator in tests). The table keys sessions by the SHA-256 of the id, so the ids
//!   themselves are not kept in memory once answered.
//! - Each session has its own CSRF token (as random and as long), which every form of the
//!   dashboard carries and every action must send back ([`Session::csrf_matches`], compared in
//!   constant time).
//! - A session ends [`UiSettings::session_ttl`](super::UiSettings) after its log-in, whatever
//!   its use, or at log-out. At most `max_sessions` live at once: a log-in into a full table
//!   first forgets the expired sessions, then ends the oldest one.
//!
//! Time is passed in (`now`), so expiry is tested without waiting.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use crate::http::Principal;

/// Random bytes of a session id and of a CSRF token: 256 bits, beyond guessing.
pub(crate) const ID_BYTES: usize = 32;

/// A random source for session ids (the operating system's in the broker).
pub(crate) type SessionRng = Box<dyn RngCore + Send>;

/// One logged-in user.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    /// Who logged in.
    pub(crate) principal: Principal,
    /// The token every action of this session must carry.
    pub(crate) csrf: String,
    created: Instant,
    expires: Instant,
}

impl Session {
    /// Whether `token` is this session's CSRF token (constant-time comparison).
    pub(crate) fn csrf_matches(&self, token: &str) -> bool {
        self.csrf.len() == token.len() && bool::from(self.csrf.as_bytes().ct_eq(token.as_bytes()))
    }
}

struct Table {
    rng: SessionRng,
    by_digest: HashMap<[u8; 32], Session>,
}

/// The table of open sessions.
pub(crate) struct Sessions {
    table: Mutex<Table>,
    ttl: Duration,
    max: usize,
}

impl Sessions {
    /// An empty table: sessions last `ttl`, at most `max` at once, ids drawn from `rng`.
    pub(crate) fn new(ttl: Duration, max: usize, rng: SessionRng) -> Sessions {
        Sessions {
            table: Mutex::new(Table {
                rng,
                by_digest: HashMap::new(),
            }),
            ttl,
            max: max.max(1),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table holds no invariant a panic could break.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session for `principal`: its id (the cookie's value) and the session.
    pub(crate) fn create(&self, principal: Principal, now: Instant) -> (String, Session) {
        let mut t = self.table();
        if t.by_digest.len() >= self.max {
            t.by_digest.retain(|_, s| s.expires > now);
        }
        while t.by_digest.len() >= self.max {
            let oldest = t
                .by_digest
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => {
                    t.by_digest.remove(&k);
                }
                None => break,
            }
        }
        let id = random_token(&mut t.rng);
        let csrf = random_token(&mut t.rng);
        let session = Session {
            principal,
            csrf,
            created: now,
            expires: now + self.ttl,
        };
        t.by_digest.insert(digest(&id), session.clone());
        (id, session)
    }

    /// The live session of `id`, if any; an expired one is forgotten.
    pub(crate) fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let key = digest(id);
        let mut t = self.table();
        match t.by_digest.get(&key) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                t.by_digest.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session of `id` (log-out); whether there was one.
    pub(crate) fn remove(&self, id: &str) -> bool {
        self.table().by_digest.remove(&digest(id)).is_some()
    }

    /// Sessions in the table (expired ones not yet forgotten included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table().by_digest.len()
    }

    /// How long a session lasts.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }
}

fn random_token(rng: &mut SessionRng) -> String {
    let mut bytes = [0u8; ID_BYTES];
    rng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::http::UserRole;

    fn user(name: &str) -> Principal {
        Principal {
            name: Arc::from(name),
            role: UserRole::User,
        }
    }

    fn table(max: usize, seed: u64) -> Sessions {
        Sessions::new(
            Duration::from_secs(60),
            max,
            Box::new(StdRng::seed_from_u64(seed)),
        )
    }

    #[test]
    fn ids_and_tokens_come_from_the_given_random_source() {
        // Goal: the same seed gives the same ids (the source is the one injected), ids and
        // CSRF tokens are 256-bit and all differ, and another seed gives other ids.
        let now = Instant::now();
        let (a1, s1) = table(8, 1).create(user("a"), now);
        let (a2, s2) = table(8, 1).create(user("a"), now);
        let (b, _) = table(8, 2).create(user("a"), now);
        assert_eq!(a1, a2);
        assert_eq!(s1.csrf, s2.csrf);
        assert_ne!(a1, b);
        assert_ne!(a1, s1.csrf);
        assert_eq!(URL_SAFE_NO_PAD.decode(&a1).unwrap().len(), ID_BYTES);
        assert_eq!(URL_SAFE_NO_PAD.decode(&s1.csrf).unwrap().len(), ID_BYTES);
    }

    #[test]
    fn a_session_is_found_until_it_expires_or_logs_out() {
        // Goal: get finds the session's user until the TTL passes (then it is forgotten), an
        // unknown id finds nothing, and remove ends a session.
        let t = table(8, 3);
        let now = Instant::now();
        let (id, _) = t.create(user("alice"), now);
        let found = t.get(&id, now + Duration::from_secs(59)).unwrap();
        assert_eq!(&*found.principal.name, "alice");
        assert!(t.get("not-a-session", now).is_none());
        assert!(t.get(&id, now + Duration::from_secs(60)).is_none());
        assert_eq!(t.len(), 0, "an expired session is forgotten");
        let (id, _) = t.create(user("alice"), now);
        assert!(t.remove(&id));
        assert!(t.get(&id, now).is_none());
        assert!(!t.remove(&id));
    }

    #[test]
    fn the_table_is_bounded_and_ends_the_oldest_session() {
        // Goal: a full table stays at its bound; a new log-in ends the oldest session first
        // (after forgetting expired ones), and the others stay.
        let t = table(3, 4);
        let now = Instant::now();
        let ids: Vec<String> = (0..3u64)
            .map(|i| t.create(user("u"), now + Duration::from_secs(i)).0)
            .collect();
        let (newest, _) = t.create(user("u"), now + Duration::from_secs(10));
        assert_eq!(t.len(), 3);
        let at = now + Duration::from_secs(11);
        assert!(t.get(&ids[0], at).is_none(), "the oldest session ended");
        assert!(t.get(&ids[1], at).is_some());
        assert!(t.get(&ids[2], at).is_some());
        assert!(t.get(&newest, at).is_some());
        // Expired sessions go first: after the TTL of the first three, two log-ins keep the
        // newest one.
        let later = now + Duration::from_secs(65);
        t.create(user("u"), later);
        t.create(user("u"), later);
        assert_eq!(t.len(), 3);
        assert!(t.get(&newest, later).is_some());
    }

    #[test]
    fn csrf_tokens_match_only_exactly() {
        // Goal: the CSRF check accepts the session's token only.
        let (_, s) = table(2, 5).create(user("u"), Instant::now());
        assert!(s.csrf_matches(&s.csrf.clone()));
        assert!(!s.csrf_matches(""));
        assert!(!s.csrf_matches(&s.csrf[1..]));
        let mut other = s.csrf.clone();
        other.replace_range(0..1, if other.starts_with('A') { "B" } else { "A" });
        assert!(!s.csrf_matches(&other));
    }
}

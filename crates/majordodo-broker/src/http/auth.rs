//! Authentication of HTTP requests (Basic and bearer), and the helpers that make credentials:
//! password hashes, random tokens, token files.
//!
//! Choices:
//! - Passwords are hashed with PBKDF2-HMAC-SHA256 ([`PBKDF2_ITERATIONS`] iterations, 16-byte
//!   random salt), built on the `hmac`/`sha2` crates the project already uses. Argon2 resists GPU
//!   guessing better, but costs tens of megabytes per verification on a small broker; PBKDF2 at
//!   the OWASP count is the standard, FIPS-approved choice and needs nothing new.
//! - Basic authentication sends the password with every request (the original Java client does),
//!   and a slow hash per request would cap the API at a few requests per second. So a verified
//!   (name, password) pair is remembered as an HMAC under a key drawn at start-up: later requests
//!   cost one HMAC. The cache never holds a password, is bounded, and only remembers successes,
//!   so a wrong password always pays the full hash. Hashes run on their own threads
//!   (`max_concurrent_hashes` of them) behind a bounded queue (`max_queued_hashes`; a login
//!   beyond it is answered 503 at once): a flood of guesses cannot starve the broker, and tokens
//!   and remembered passwords never wait for a hash.
//! - Failed password logins are counted per peer address and per configured user; past
//!   `auth_failure_limit` within the window, password logins from that address (or for that
//!   user) are refused 429 for `auth_lockout_secs` without hashing. Tokens and remembered
//!   passwords are checked before the lock-out, so a flood from a shared address does not lock
//!   out working clients. Lock-outs are logged and counted ([`AuthCounters`]).
//! - Tokens are 256 random bits; only their SHA-256 digest is configured. A token is also
//!   accepted as the password of Basic authentication (for clients that only speak Basic, like
//!   the original Java client). Digests are compared in constant time.
//! - Unknown users and wrong passwords get the same answer, after the same work.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::{CryptoRng, RngCore, TryRngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use super::config::UserRole;
use super::error::ApiError;

/// PBKDF2 iterations of new password hashes: OWASP's 2023 recommendation for
/// PBKDF2-HMAC-SHA256.
pub const PBKDF2_ITERATIONS: u32 = 600_000;

/// Fewest iterations a configured hash may have. Lower counts are refused as a mistake; counts
/// below [`PBKDF2_ITERATIONS`] are accepted (tests use them) but weaker.
pub const MIN_PBKDF2_ITERATIONS: u32 = 1_000;

/// Most iterations a configured hash may have: ten times the default, about a second of CPU per
/// verification; more would let a configuration stall every first login.
pub const MAX_PBKDF2_ITERATIONS: u32 = 10 * PBKDF2_ITERATIONS;

/// Salt length of new hashes: 128 bits, as NIST SP 800-132 asks.
pub const SALT_LEN: usize = 16;

/// Prefix of generated tokens, so they are recognisable in files and leak scanners.
pub const TOKEN_PREFIX: &str = "mdt_";

/// Random bytes in a generated token: 256 bits, beyond any guessing.
pub const TOKEN_BYTES: usize = 32;

/// Most verified credentials remembered; when full the memory is cleared (it refills at the cost
/// of one hash per client). Far above the number of distinct API users of a broker.
const MAX_CACHED_CREDENTIALS: usize = 1_024;

/// Most addresses and users whose failed logins are tracked at once; beyond it entries that are
/// not locked out are forgotten, and new ones are not tracked until room is made.
const MAX_THROTLED_KEYS: usize = 65_536;

const HASH_SCHEME: &str = "pbkdf2-sha256";
const HASH_LEN: usize = 32;

/// A PBKDF2-HMAC-SHA256 password hash.
#[derive(Clone)]
pub(crate) struct PasswordHash {
    iterations: u32,
    salt: Vec<u8>,
    hash: [u8; HASH_LEN],
}

impl PasswordHash {
    /// Reads `$pbkdf2-sha256$i=<iterations>$<salt>$<hash>` (base64, padding optional).
    pub(crate) fn parse(s: &str) -> Result<PasswordHash, &'static str> {
        let mut parts = s.split('$');
        if parts.next() != Some("") || parts.next() != Some(HASH_SCHEME) {
            return Err("must start with $pbkdf2-sha256$");
        }
        let iterations: u32 = parts
            .next()
            .and_then(|p| p.strip_prefix("i="))
            .and_then(|n| n.parse().ok())
            .ok_or("iterations must be given as i=<number>")?;
        if !(MIN_PBKDF2_ITERATIONS..=MAX_PBKDF2_ITERATIONS).contains(&iterations) {
            return Err("iterations out of range (1000 to 6000000)");
        }
        let salt = parts.next().and_then(b64).ok_or("salt is not base64")?;
        if salt.len() < 8 {
            return Err("salt must be at least 8 bytes");
        }
        let hash = parts
            .next()
            .and_then(b64)
            .and_then(|h| <[u8; HASH_LEN]>::try_from(h).ok())
            .ok_or("hash must be 32 bytes of base64")?;
        if parts.next().is_some() {
            return Err("too many $-separated parts");
        }
        Ok(PasswordHash {
            iterations,
            salt,
            hash,
        })
    }

    /// Whether `password` hashes to this hash (constant-time comparison). Slow by design.
    pub(crate) fn verify(&self, password: &[u8]) -> bool {
        let mut out = [0u8; HASH_LEN];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, &self.salt, self.iterations, &mut out);
        out.ct_eq(&self.hash).into()
    }
}

fn b64(s: &str) -> Option<Vec<u8>> {
    STANDARD_NO_PAD
        .decode(s)
        .or_else(|_| STANDARD.decode(s))
        .ok()
}

/// Hashes a password for the configuration (`password_hash`), with [`PBKDF2_ITERATIONS`] and a
/// salt from the operating system's random source.
///
/// # Panics
/// If the operating system cannot provide randomness (no safe salt can be made then).
pub fn hash_password(password: &str) -> String {
    hash_password_with(password, PBKDF2_ITERATIONS, &mut OsRng.unwrap_err())
}

/// Hashes a password with a chosen iteration count and random source (tests use few iterations
/// and a seeded generator).
pub fn hash_password_with<R: RngCore + CryptoRng>(
    password: &str,
    iterations: u32,
    rng: &mut R,
) -> String {
    let mut salt = [0u8; SALT_LEN];
    rng.fill_bytes(&mut salt);
    let mut out = [0u8; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iterations, &mut out);
    format!(
        "${HASH_SCHEME}$i={iterations}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(out)
    )
}

/// A SHA-256 token digest.
#[derive(Clone)]
pub(crate) struct TokenDigest([u8; 32]);

impl TokenDigest {
    fn of(token: &[u8]) -> TokenDigest {
        TokenDigest(Sha256::digest(token).into())
    }

    /// Reads 64 hex digits.
    pub(crate) fn from_hex(s: &str) -> Result<TokenDigest, ()> {
        let s = s.as_bytes();
        if s.len() != 64 {
            return Err(());
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16).ok_or(())?;
            let lo = (pair[1] as char).to_digit(16).ok_or(())?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Ok(TokenDigest(out))
    }

    fn matches(&self, other: &TokenDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// Generates a bearer token from the operating system's random source: [`TOKEN_PREFIX`]
/// followed by [`TOKEN_BYTES`] random bytes in URL-safe base64.
///
/// # Panics
/// If the operating system cannot provide randomness (no safe token can be made then).
pub fn generate_token() -> String {
    generate_token_with(&mut OsRng.unwrap_err())
}

/// Generates a token from `rng` (tests pass a seeded generator).
pub fn generate_token_with<R: RngCore + CryptoRng>(rng: &mut R) -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rng.fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The hex SHA-256 digest of a token, for the configuration (`token_sha256`).
pub fn token_digest(token: &str) -> String {
    TokenDigest::of(token.trim().as_bytes())
        .0
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `token` (and a newline) to `path`, readable and writable by the owner only (0600).
/// The file is written beside `path` and renamed over it, so readers never see a partial token
/// and an existing file with wider permissions is replaced, not reused.
///
/// # Errors
/// The I/O error of creating, writing, syncing or renaming the file.
pub fn write_token_file(path: &Path, token: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    // The umask cannot widen 0600, but make the mode explicit whatever created the file.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)
}

/// A configured user.
#[derive(Clone)]
pub(crate) struct User {
    pub(crate) name: Arc<str>,
    pub(crate) role: UserRole,
    pub(crate) password: Option<PasswordHash>,
    pub(crate) token: Option<TokenDigest>,
}

/// Who sent a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The user's name.
    pub name: Arc<str>,
    /// Its role.
    pub role: UserRole,
}

impl Principal {
    /// Whether this principal sees and submits every user's tasks.
    pub fn is_admin(&self) -> bool {
        self.role == UserRole::Admin
    }

    /// The only owner whose tasks this principal may see, or `None` for an admin.
    pub(crate) fn owner_filter(&self) -> Option<Arc<str>> {
        (!self.is_admin()).then(|| self.name.clone())
    }

    /// Whether this principal may submit or read a task owned by `user_id`.
    pub(crate) fn may_use(&self, user_id: &str) -> bool {
        self.is_admin() || *self.name == *user_id
    }
}

/// How failed logins are throttled.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ThrottleSettings {
    /// Failures within `window` that start a lock-out.
    pub(crate) limit: u32,
    /// Window in which failures are counted.
    pub(crate) window: Duration,
    /// Length of a lock-out.
    pub(crate) lockout: Duration,
}

/// Counts of authentication events, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthCounters {
    /// Password logins refused because the password (or the user) was wrong.
    pub failed_logins: u64,
    /// Lock-outs started (of an address or of a user).
    pub lockouts: u64,
    /// Password logins refused during a lock-out, without checking the password.
    pub refused_while_locked: u64,
    /// Password logins refused because the hashing queue was full.
    pub refused_queue_full: u64,
    /// Bearer tokens that match no user.
    pub bad_tokens: u64,
    /// Requests without credentials, or with an `Authorization` header that cannot be read.
    pub missing_credentials: u64,
}

/// Whose failures are counted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ThrottleKey {
    Peer(IpAddr),
    User(Arc<str>),
}

impl std::fmt::Display for ThrottleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ThrottleKey::Peer(ip) => write!(f, "address {ip}"),
            ThrottleKey::User(name) => write!(f, "user {name}"),
        }
    }
}

struct Failures {
    since: Instant,
    count: u32,
    locked_until: Option<Instant>,
}

/// Failed logins per address and per user, with lock-outs.
struct Throttle {
    settings: ThrottleSettings,
    entries: Mutex<HashMap<ThrottleKey, Failures>>,
    failed: AtomicU64,
    lockouts: AtomicU64,
    refused: AtomicU64,
}

impl Throttle {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<ThrottleKey, Failures>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The time left of the longest lock-out among `keys`, if any.
    fn locked(&self, keys: &[ThrottleKey], now: Instant) -> Option<Duration> {
        let entries = self.entries();
        let left = keys
            .iter()
            .filter_map(|k| entries.get(k)?.locked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max();
        if left.is_some() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        left
    }

    /// Counts a failure of each of `keys`, locking out those past the limit.
    fn failed(&self, keys: &[ThrottleKey], now: Instant) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let s = self.settings;
        let mut entries = self.entries();
        if entries.len() >= MAX_THROTLED_KEYS {
            entries
                .retain(|_, f| f.locked_until.is_some_and(|u| u > now) || now - f.since < s.window);
        }
        for key in keys {
            if !entries.contains_key(key) && entries.len() >= MAX_THROTLED_KEYS {
                continue;
            }
            let f = entries.entry(key.clone()).or_insert(Failures {
                since: now,
                count: 0,
                locked_until: None,
            });
            if now - f.since >= s.window {
                f.since = now;
                f.count = 0;
            }
            f.count += 1;
            if f.count >= s.limit && f.locked_until.is_none_or(|u| u <= now) {
                f.locked_until = Some(now + s.lockout);
                f.since = now;
                f.count = 0;
                self.lockouts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    who = %key,
                    failures = s.limit,
                    lockout_secs = s.lockout.as_secs(),
                    "too many failed logins: password logins locked out"
                );
            }
        }
    }
}

/// A password check waiting for a hashing thread.
type HashJob = (PasswordHash, String, tokio::sync::oneshot::Sender<bool>);

/// Threads that verify password hashes, behind a bounded queue; nothing else runs on them and
/// nothing but password checks waits for them.
struct HashPool {
    jobs: mpsc::SyncSender<HashJob>,
    full: AtomicU64,
}

impl HashPool {
    fn new(threads: usize, queue: usize) -> HashPool {
        let (jobs, rx) = mpsc::sync_channel::<HashJob>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("md-password-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok((hash, password, answer)) = job else {
                            return; // the authenticator is gone
                        };
                        let _ = answer.send(hash.verify(password.as_bytes()));
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "could not start a password hashing thread");
            }
        }
        HashPool {
            jobs,
            full: AtomicU64::new(0),
        }
    }

    async fn verify(&self, hash: PasswordHash, password: String) -> Result<bool, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        match self.jobs.try_send((hash, password, tx)) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                self.full.fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::Broker(crate::BrokerError::Overloaded(
                    "password checks",
                )));
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                return Err(ApiError::Internal("password hashing unavailable"));
            }
        }
        rx.await
            .map_err(|_| ApiError::Internal("password hashing failed"))
    }
}

/// Checks the credentials of requests against the configured users.
pub(crate) struct Authenticator {
    users: Vec<User>,
    by_name: HashMap<Arc<str>, usize>,
    /// Key of the HMACs that stand for verified credentials; drawn at start, never leaves memory.
    cache_key: [u8; 32],
    /// HMAC(name, password) → user index, for credentials verified before.
    verified: Mutex<HashMap<[u8; 32], usize>>,
    /// Where password hashes are computed.
    hashing: HashPool,
    /// Failed logins and lock-outs.
    throttle: Throttle,
    /// Verified for unknown users, so they cost what a wrong password costs.
    decoy: PasswordHash,
    /// Bearer tokens that matched no user.
    bad_tokens: AtomicU64,
    /// Requests refused for missing or unreadable credentials.
    missing: AtomicU64,
}

enum Credentials {
    Basic { name: String, password: String },
    Bearer(String),
}

impl Authenticator {
    pub(crate) fn new(
        users: Vec<User>,
        max_concurrent_hashes: usize,
        max_queued_hashes: usize,
        throttle: ThrottleSettings,
    ) -> Authenticator {
        let by_name = users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.clone(), i))
            .collect();
        let mut cache_key = [0u8; 32];
        OsRng.unwrap_err().fill_bytes(&mut cache_key);
        // The decoy costs what the strongest configured hash costs.
        let iterations = users
            .iter()
            .filter_map(|u| u.password.as_ref().map(|p| p.iterations))
            .max()
            .unwrap_or(MIN_PBKDF2_ITERATIONS);
        let decoy = PasswordHash {
            iterations,
            salt: vec![0; SALT_LEN],
            hash: [0; HASH_LEN],
        };
        Authenticator {
            users,
            by_name,
            cache_key,
            verified: Mutex::new(HashMap::new()),
            hashing: HashPool::new(max_concurrent_hashes, max_queued_hashes),
            throttle: Throttle {
                settings: throttle,
                entries: Mutex::new(HashMap::new()),
                failed: AtomicU64::new(0),
                lockouts: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            },
            decoy,
            bad_tokens: AtomicU64::new(0),
            missing: AtomicU64::new(0),
        }
    }

    /// What happened so far (served by `/metrics`).
    pub(crate) fn counters(&self) -> AuthCounters {
        AuthCounters {
            failed_logins: self.throttle.failed.load(Ordering::Relaxed),
            lockouts: self.throttle.lockouts.load(Ordering::Relaxed),
            refused_while_locked: self.throttle.refused.load(Ordering::Relaxed),
            refused_queue_full: self.hashing.full.load(Ordering::Relaxed),
            bad_tokens: self.bad_tokens.load(Ordering::Relaxed),
            missing_credentials: self.missing.load(Ordering::Relaxed),
        }
    }

    /// Authenticates a request by its `Authorization` header; `peer` is the address it came
    /// from, when known.
    ///
    /// # Errors
    /// [`ApiError::Unauthorized`] when the header is missing, malformed or wrong;
    /// [`ApiError::LoginsLockedOut`] during a lock-out; 503 when the hashing queue is full.
    pub(crate) async fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Principal, ApiError> {
        let credentials = parse_authorization(headers).inspect_err(|_| {
            self.missing.fetch_add(1, Ordering::Relaxed);
        })?;
        let index = match credentials {
            Credentials::Bearer(token) => {
                let found = self.by_token(token.as_bytes());
                if found.is_none() {
                    self.bad_tokens.fetch_add(1, Ordering::Relaxed);
                }
                found
            }
            Credentials::Basic { name, password } => self.by_password(name, password, peer).await?,
        };
        let user = index
            .map(|i| &self.users[i])
            .ok_or(ApiError::Unauthorized("invalid credentials"))?;
        Ok(Principal {
            name: user.name.clone(),
            role: user.role,
        })
    }

    /// Checks a name and password typed into the dashboard's log-in form, exactly as Basic
    /// credentials are checked (same hashing pool, same throttling and lock-outs); `None` when
    /// they are wrong.
    ///
    /// # Errors
    /// [`ApiError::LoginsLockedOut`] during a lock-out; 503 when the hashing queue is full.
    pub(crate) async fn login(
        &self,
        name: &str,
        password: &str,
        peer: Option<IpAddr>,
    ) -> Result<Option<Principal>, ApiError> {
        let index = self
            .by_password(name.to_owned(), password.to_owned(), peer)
            .await?;
        Ok(index.map(|i| Principal {
            name: self.users[i].name.clone(),
            role: self.users[i].role,
        }))
    }

    fn by_token(&self, token: &[u8]) -> Option<usize> {
        let digest = TokenDigest::of(token);
        // Every user is compared, so timing does not reveal which one matched.
        let mut found = None;
        for (i, u) in self.users.iter().enumerate() {
            if u.token.as_ref().is_some_and(|t| t.matches(&digest)) {
                found = Some(i);
            }
        }
        found
    }

    async fn by_password(
        &self,
        name: String,
        password: String,
        peer: Option<IpAddr>,
    ) -> Result<Option<usize>, ApiError> {
        let mut keys: Vec<ThrottleKey> = peer.map(ThrottleKey::Peer).into_iter().collect();
        let Some(&index) = self.by_name.get(name.as_str()) else {
            self.check_lockout(&keys)?;
            self.hash(self.decoy.clone(), password).await?;
            self.throttle.failed(&keys, Instant::now());
            return Ok(None);
        };
        keys.push(ThrottleKey::User(self.users[index].name.clone()));
        let user = &self.users[index];
        if user
            .token
            .as_ref()
            .is_some_and(|t| t.matches(&TokenDigest::of(password.as_bytes())))
        {
            return Ok(Some(index));
        }
        let key = self.cache_key_of(&name, &password);
        if self.cache().get(&key) == Some(&index) {
            return Ok(Some(index));
        }
        // Only now may the check cost a hash: refuse it during a lock-out.
        self.check_lockout(&keys)?;
        let Some(hash) = user.password.clone() else {
            // A token-only user: refuse after the same work as a wrong password.
            self.hash(self.decoy.clone(), password).await?;
            self.throttle.failed(&keys, Instant::now());
            return Ok(None);
        };
        if !self.hash(hash, password).await? {
            self.throttle.failed(&keys, Instant::now());
            return Ok(None);
        }
        let mut cache = self.cache();
        if cache.len() >= MAX_CACHED_CREDENTIALS {
            cache.clear();
        }
        cache.insert(key, index);
        Ok(Some(index))
    }

    /// Refuses a password check while `keys` are locked out.
    fn check_lockout(&self, keys: &[ThrottleKey]) -> Result<(), ApiError> {
        match self.throttle.locked(keys, Instant::now()) {
            Some(left) => Err(ApiError::LoginsLockedOut(left.as_secs().max(1))),
            None => Ok(()),
        }
    }

    /// Verifies `password` against `hash` on the hashing threads.
    async fn hash(&self, hash: PasswordHash, password: String) -> Result<bool, ApiError> {
        self.hashing.verify(hash, password).await
    }

    fn cache_key_of(&self, name: &str, password: &str) -> [u8; 32] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.cache_key).expect("HMAC accepts any key length");
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], usize>> {
        // The map holds no invariant a panic could break: a poisoned lock is still usable.
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn parse_authorization(headers: &HeaderMap) -> Result<Credentials, ApiError> {
    let value = headers
        .get(AUTHORIZATION)
        .ok_or(ApiError::Unauthorized("credentials required"))?
        .to_str()
        .map_err(|_| ApiError::Unauthorized("malformed authorization header"))?;
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Ok(Credentials::Bearer(rest.to_owned()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = b64(rest)
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or(ApiError::Unauthorized("malformed basic credentials"))?;
        let (name, password) = decoded
            .split_once(':')
            .ok_or(ApiError::Unauthorized("malformed basic credentials"))?;
        return Ok(Credentials::Basic {
            name: name.to_owned(),
            password: password.to_owned(),
        });
    }
    Err(ApiError::Unauthorized(
        "unsupported authorization scheme; use Basic or Bearer",
    ))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn password_hash_verifies_only_its_password() {
        // Goal: a hash made by hash_password_with parses back and accepts only its password.
        let mut rng = StdRng::seed_from_u64(7);
        let text = hash_password_with("s3cret", MIN_PBKDF2_ITERATIONS, &mut rng);
        assert!(text.starts_with("$pbkdf2-sha256$i=1000$"), "{text}");
        let hash = PasswordHash::parse(&text).unwrap();
        assert!(hash.verify(b"s3cret"));
        assert!(!hash.verify(b"s3cret "));
        assert!(!hash.verify(b""));
    }

    #[test]
    fn malformed_password_hashes_are_refused() {
        // Goal: configuration mistakes in a hash are refused with a reason, never a panic.
        for bad in [
            "",
            "plaintext",
            "$pbkdf2-sha256$i=10$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$pbkdf2-sha256$i=1000$!!$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$pbkdf2-sha256$i=1000$AAAAAAAAAAAAAAAAAAAAAA$AAAA",
            "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
        ] {
            assert!(PasswordHash::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn tokens_are_random_and_their_digest_is_hex_sha256() {
        // Goal: generated tokens differ, carry the prefix and 256 bits, and digest as expected.
        let mut rng = StdRng::seed_from_u64(1);
        let a = generate_token_with(&mut rng);
        let b = generate_token_with(&mut rng);
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
        assert_eq!(
            token_digest("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert!(
            TokenDigest::from_hex(&token_digest(&a))
                .unwrap()
                .matches(&TokenDigest::of(a.as_bytes()))
        );
        assert!(TokenDigest::from_hex("zz").is_err());
    }

    #[test]
    fn token_file_is_private_and_replaces_a_wider_file() {
        // Goal: the token file ends up 0600 with the token, even over a world-readable file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.token");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_token_file(&path, "mdt_abc").unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_to_string(&path).unwrap(), "mdt_abc\n");
    }
}

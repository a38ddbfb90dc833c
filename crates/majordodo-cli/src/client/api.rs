//! How the client commands reach the broker: the credentials chosen from the flags, the
//! environment or the standalone's data directory, and a `majordodo_client::Client` built with
//! them, and with `--zk` the leader found in ZooKeeper. Failures get a hint a user can act on.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use majordodo_client::{ADMIN_TOKEN_FILE, Auth, Client, ClientError};

use crate::cli::{ClientArgs, DEFAULT_URL};
use crate::config::read_small_file;
use crate::discovery::ClusterZk;
use crate::error::usage;
use crate::units::format_duration;

/// Time to open a connection; short, since a broker that does not accept in 5 s is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between two looks for the leader during an election: short against the seconds an
/// election takes, long enough not to load ZooKeeper.
const LEADER_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// How requests are authenticated.
#[derive(Clone)]
pub(crate) enum Credentials {
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// HTTP Basic.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .finish_non_exhaustive(),
        }
    }
}

impl Credentials {
    /// The credentials of `args`: `--token` (or `$MAJORDODO_TOKEN`), `--token-file`,
    /// `--username`/`--password`, else the `admin.token` of the data directory.
    ///
    /// # Errors
    /// A usage error when none is found or a token file cannot be read.
    pub(crate) fn from_args(args: &ClientArgs) -> anyhow::Result<Credentials> {
        if let Some(token) = &args.token {
            return non_empty_token(token.trim(), "--token");
        }
        if let Some(path) = &args.token_file {
            return read_token(path);
        }
        if let (Some(username), Some(password)) = (&args.username, &args.password) {
            return Ok(Credentials::Basic {
                username: username.clone(),
                password: password.clone(),
            });
        }
        let default = args.data_dir.join(ADMIN_TOKEN_FILE);
        if default.exists() {
            return read_token(&default);
        }
        Err(usage(format!(
            "no credentials: pass --token, --token-file or --username/--password, set \
             MAJORDODO_TOKEN, or run where `majordodo standalone` keeps its data (looked for {})",
            default.display()
        )))
    }
}

fn non_empty_token(token: &str, origin: &str) -> anyhow::Result<Credentials> {
    if token.is_empty() {
        return Err(usage(format!("the token from {origin} is empty")));
    }
    Ok(Credentials::Bearer(token.to_owned()))
}

fn read_token(path: &Path) -> anyhow::Result<Credentials> {
    let text = read_small_file(path)
        .with_context(|| format!("read the token file {}", path.display()))
        .map_err(|e| usage(format!("{e:#}")))?;
    non_empty_token(text.trim(), &path.display().to_string())
}

impl Credentials {
    fn auth(&self) -> Auth {
        match self {
            Credentials::Bearer(token) => Auth::bearer(token.clone()),
            Credentials::Basic { username, password } => {
                Auth::basic(username.clone(), password.clone())
            }
        }
    }
}

/// The client of one broker, and who it authenticates as.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    /// The typed client.
    pub(crate) client: Client,
    credentials: Credentials,
}

impl Api {
    /// A client for `args`: of `--url`, else of the leader of the cluster of `--zk`, else of
    /// the default URL.
    ///
    /// # Errors
    /// A usage error for a bad URL, bad `--zk` or missing credentials; with `--zk`, a failure
    /// when no leader answers within `--timeout`.
    pub(crate) async fn connect(args: &ClientArgs) -> anyhow::Result<Api> {
        let credentials = Credentials::from_args(args)?;
        match (&args.url, &args.zk) {
            (Some(url), _) => Api::build(args, credentials, url),
            (None, Some(zk)) => Api::find_leader(args, credentials, zk).await,
            (None, None) => Api::build(args, credentials, DEFAULT_URL),
        }
    }

    fn build(args: &ClientArgs, credentials: Credentials, url: &str) -> anyhow::Result<Api> {
        let client = Client::builder(url)
            .auth(credentials.auth())
            .timeout(args.timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(args.timeout))
            .build()
            .map_err(|e| usage(format!("{e} (check --url)")))?;
        Ok(Api {
            client,
            credentials,
        })
    }

    /// The client of the broker ZooKeeper names as the leader, once it answers as the leader.
    /// During an election (the leader's znode gone, or still held by a broker that died until
    /// its session expires) it asks again until `--timeout` has passed: nothing was sent to a
    /// broker that does not answer or does not lead, so waiting is safe.
    async fn find_leader(
        args: &ClientArgs,
        credentials: Credentials,
        zk: &str,
    ) -> anyhow::Result<Api> {
        let deadline = Instant::now() + args.timeout;
        let cluster = ClusterZk::connect(zk, &args.zk_path).await?;
        let mut noted = false;
        loop {
            let problem = match cluster.leader().await? {
                None => "no broker leads (an election is under way)".to_owned(),
                Some(leader) => {
                    let id = leader.broker_id().unwrap_or("?").to_owned();
                    match leader.api_url() {
                        None => format!("the leader {id} publishes no HTTP API URL"),
                        Some(url) => {
                            let api = Api::build(args, credentials.clone(), url)?;
                            match api.client.status().await {
                                Ok(view) if view.status == "LEADER" => return Ok(api),
                                Ok(view) => format!("the leader {id} ({url}) is {}", view.status),
                                Err(e @ ClientError::Unauthorized(_)) => {
                                    return Err(explain(e, "reach the leader", url));
                                }
                                Err(e) => format!("the leader {id} ({url}) does not answer: {e}"),
                            }
                        }
                    }
                }
            };
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "no leader of the cluster at ZooKeeper {zk} ({}) answered within {} \
                     (--timeout): {problem}",
                    args.zk_path,
                    format_duration(args.timeout)
                ));
            }
            if !noted && std::io::stderr().is_terminal() {
                eprintln!("waiting for the cluster's leader: {problem}");
                noted = true;
            }
            tokio::time::sleep(LEADER_POLL_INTERVAL.min(deadline - Instant::now())).await;
        }
    }

    /// The API's URL.
    pub(crate) fn url(&self) -> &str {
        self.client.url()
    }

    /// The user name of Basic credentials, if those are used.
    pub(crate) fn username(&self) -> Option<&str> {
        match &self.credentials {
            Credentials::Basic { username, .. } => Some(username),
            Credentials::Bearer(_) => None,
        }
    }
}

/// `error` with what was being done and, for the usual causes, what to check.
pub(crate) fn explain(error: ClientError, what: &str, url: &str) -> anyhow::Error {
    let hint = match &error {
        ClientError::Unauthorized(_) => {
            " (check the credentials: --token, --token-file, --username/--password)"
        }
        ClientError::Transport(e) if e.is_connect() => " (is the broker running? check --url)",
        ClientError::Transport(e) if e.is_timeout() => " (timed out; see --timeout)",
        ClientError::Refused { status: 404, .. } => {
            " (check the path of --url: it ends with /majordodo)"
        }
        ClientError::Unavailable(_) => " (retry later)",
        _ => "",
    };
    anyhow::Error::new(error).context(format!("{what} at {url} failed{hint}"))
}

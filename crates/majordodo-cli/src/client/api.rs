//! How the client commands reach the broker: the credentials chosen from the flags, the
//! environment or the standalone's data directory, and a `majordodo_client::Client` built with
//! them. Failures get a hint a user can act on.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use majordodo_client::{ADMIN_TOKEN_FILE, Auth, Client, ClientError, RetryPolicy, ZkDiscovery};

use crate::cli::{ClientArgs, DEFAULT_URL};
use crate::config::read_small_file;
use crate::error::usage;

/// Time to open a connection; short, since a broker that does not accept in 5 s is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// A client for `args`.
    ///
    /// # Errors
    /// A usage error for a bad URL or missing credentials.
    pub(crate) fn new(args: &ClientArgs) -> anyhow::Result<Api> {
        let credentials = Credentials::from_args(args)?;
        let (builder, flag) = match (&args.url, &args.zk) {
            (Some(_), Some(_)) => {
                return Err(usage(
                    "give either --url ($MAJORDODO_URL) or --zk ($MAJORDODO_ZK), not both",
                ));
            }
            (_, Some(zk)) => {
                let discovery = ZkDiscovery::new(zk.clone(), &args.zk_path)
                    .map_err(|e| usage(format!("{e} (check --zk and --zk-path)")))?;
                (Client::discover(discovery), "--zk")
            }
            (url, None) => (
                Client::builder(url.as_deref().unwrap_or(DEFAULT_URL)),
                "--url",
            ),
        };
        let builder = match &args.ca_file {
            Some(ca) => builder.ca_file(ca),
            None => builder,
        };
        let client = builder
            .auth(credentials.auth())
            .timeout(args.timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(args.timeout))
            .retry(RetryPolicy::for_at_most(args.retry_for))
            .build()
            .map_err(|e| {
                let flag = match e {
                    ClientError::Tls(_) => "--ca-file",
                    _ => flag,
                };
                usage(format!("{e} (check {flag})"))
            })?;
        Ok(Api {
            client,
            credentials,
        })
    }

    /// The API's URL (with ZooKeeper discovery: the leader's, once found).
    pub(crate) fn url(&self) -> String {
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
        ClientError::Transport(e) if e.is_connect() => {
            " (is the broker running? check --url or --zk)"
        }
        ClientError::Discovery(_) => {
            " (is a broker of the cluster running? check --zk and --zk-path)"
        }
        ClientError::Transport(e) if e.is_timeout() => " (timed out; see --timeout)",
        ClientError::UntrustedCertificate(_) => {
            " (give the CA that issued the broker's certificate with --ca-file, and check that \
             it is valid for the host of --url)"
        }
        ClientError::Refused {
            status: 404,
            message,
        } if message.starts_with("no such path") => {
            " (check the path of --url: it ends with /majordodo)"
        }
        ClientError::Unavailable(_) => " (retry later, or allow more time with --retry-for)",
        _ => "",
    };
    anyhow::Error::new(error).context(format!("{what} at {url} failed{hint}"))
}

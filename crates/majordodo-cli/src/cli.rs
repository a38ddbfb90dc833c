//! The command tree: every command, flag and help text (`clap` derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::cluster::DEFAULT_LEDGERS_ROOT;
use crate::units::{When, parse_duration, parse_when};

/// Default URL of the HTTP API, as the standalone broker serves it.
pub(crate) const DEFAULT_URL: &str = "http://127.0.0.1:7364/majordodo";

/// Default HTTP port of `standalone` (the original's).
pub(crate) const DEFAULT_HTTP_PORT: u16 = 7364;

/// Default worker port of `standalone` (the original's).
pub(crate) const DEFAULT_WORKER_PORT: u16 = 7363;

/// Default base path of a cluster's znodes (the original's).
pub(crate) const DEFAULT_ZK_PATH: &str = majordodo_client::DEFAULT_ZK_BASE_PATH;

/// Majordodo: a distributed resource manager that runs tasks on workers.
///
/// Try it: `majordodo standalone` starts a broker and a worker in one process, then
/// `majordodo submit --type echo --data hello` and `majordodo tasks` in another terminal.
#[derive(Debug, Parser)]
#[command(
    name = "majordodo",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub(crate) struct Cli {
    /// Log filter: error, warn, info, debug, trace, or directives such as
    /// `info,majordodo_broker=debug`. Overrides RUST_LOG. Default: info for servers
    /// (standalone, broker, worker), warn for the other commands.
    #[arg(long, value_name = "FILTER", global = true)]
    pub(crate) log_level: Option<String>,

    /// Log line format on stderr: text (for people) or json (one JSON object per line, with
    /// timestamp, level, target, message and the structured fields such as task_id, worker_id
    /// and user, for log collectors).
    #[arg(
        long,
        value_name = "FORMAT",
        global = true,
        default_value = "text",
        env = "MAJORDODO_LOG_FORMAT"
    )]
    pub(crate) log_format: crate::logging::LogFormat,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a broker and one local worker in this process, on 127.0.0.1 only.
    ///
    /// Data (commit log, snapshots, the admin token, the local worker's credential) goes to the
    /// data directory, created if needed; a restart on the same directory recovers every task. The
    /// local worker runs the built-in executors (echo, noop, sleep, fail) and any `process`
    /// executors of --worker-config. Stop with Ctrl-C or SIGTERM.
    Standalone(StandaloneArgs),
    /// Run a broker (HTTP API and worker port) from a configuration file.
    Broker(BrokerArgs),
    /// Run a worker agent that connects to a broker (with --zk, to the leader of a replicated
    /// cluster, following it) and runs its tasks.
    Worker(WorkerArgs),
    /// Submit one task, or many from a JSON Lines file or stdin.
    Submit(SubmitArgs),
    /// Show one task.
    Task(TaskArgs),
    /// List tasks, with filters.
    Tasks(TasksArgs),
    /// Show the broker's status and task counts; for a broker of a replicated cluster, also
    /// the leader and each broker's applied position and lag.
    Status(SimpleViewArgs),
    /// List the workers the broker knows.
    Workers(SimpleViewArgs),
    /// Create, delete, show or list code pools (archives the workers unpack and run tasks in).
    #[command(subcommand)]
    Codepool(CodepoolCommand),
    /// Cancel a waiting, delayed or running task: it ends in error with result "cancelled"
    /// (a running one is stopped on its worker). Only its owner or an admin may.
    Cancel(TaskArgs),
    /// Open, commit or roll back a transaction: tasks submitted with --transaction stay
    /// invisible until it is committed, then all appear at once.
    #[command(subcommand)]
    Transaction(TransactionCommand),
    /// Set a user's service level (admin): the group its tasks are scheduled in and the named
    /// resources each of them uses while it runs. Its waiting tasks move at once.
    ServiceLevel(ServiceLevelArgs),
    /// Set or remove the quota of a user or a group (admin): what its running tasks may use
    /// together (tasks, cpu, memory, named amounts). Running tasks are never stopped by it.
    Quota(QuotaArgs),
    /// Change the priority of a waiting or delayed task: higher runs first among its owner's
    /// tasks.
    Priority(PriorityArgs),
    /// Make credentials for the broker's [[http.users]] entries.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Issue, list or revoke per-worker credentials (admin): each binds one worker id to a
    /// secret the broker generates; revoking closes that worker's connection at once.
    #[command(subcommand)]
    WorkerCredentials(WorkerCredentialsCommand),
    /// Download a snapshot of the whole state from the leader into a file (admin only): a
    /// backup. The leader takes the snapshot at once; the file is checked (checksum, and
    /// decoded as a broker would) before it gets its name.
    Backup(BackupArgs),
    /// Make a data directory from a backup, for a broker to boot from: the snapshot, and an
    /// empty log that continues after it. The directory must be new or empty; nothing is
    /// written unless the backup validates.
    Restore(RestoreArgs),
    /// Inspect or repair a broker's commit log directory (with the broker stopped).
    #[command(subcommand)]
    Log(LogCommand),
    /// Show the ledgers holding a replicated cluster's log (from ZooKeeper and BookKeeper),
    /// and with --snapshots which ledgers a broker booting from that directory needs.
    ///
    /// Changes nothing: ledgers are opened without recovery, snapshot files only read.
    Ledgers(LedgersArgs),
    /// Print the records of a commit log, one line each (position, entry kind, key fields) or
    /// as JSON Lines: a file log directory (--dir) or a ledger of a cluster (--zk, --ledger).
    ///
    /// Changes nothing, also while a broker writes the log: a file log is read without
    /// opening it (an unfinished last write is shown as such, not cut), a ledger is opened
    /// without recovery (its writer is not fenced).
    DumpLog(DumpLogArgs),
    /// Run a replicated cluster on 127.0.0.1 to try failover: one ZooKeeper, bookies and
    /// brokers (child processes of `majordodo broker`), with every address and the commands to
    /// try it printed. Needs what `scripts/test-deps` installs (Java, ZooKeeper, the BookKeeper
    /// jars). Every start is a new, empty cluster. Stop with Ctrl-C: every process ends.
    LocalCluster(LocalClusterArgs),
}

/// Most brokers or bookies of a local cluster: each bookie is a JVM of up to 256 MiB of heap,
/// and a handful of each already shows everything replication does.
const LOCAL_CLUSTER_MAX_NODES: u64 = 9;

/// `majordodo local-cluster`.
#[derive(Debug, Args)]
pub(crate) struct LocalClusterArgs {
    /// Directory of the brokers' files, logs and snapshots, and of the secrets (created; a
    /// directory made by an earlier local cluster is emptied, any other must be empty).
    #[arg(long, value_name = "DIR", default_value = "majordodo-cluster")]
    pub(crate) dir: PathBuf,
    /// Number of brokers (b1 leads first).
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=LOCAL_CLUSTER_MAX_NODES))]
    pub(crate) brokers: usize,
    /// Number of bookies (ledgers use 3 of them, each entry 2, fewer with fewer bookies).
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=LOCAL_CLUSTER_MAX_NODES))]
    pub(crate) bookies: usize,
}

/// `majordodo ledgers`.
#[derive(Debug, Args)]
pub(crate) struct LedgersArgs {
    /// ZooKeeper servers of the cluster.
    #[arg(long, env = "MAJORDODO_ZK", value_name = "HOST:PORT[,...]")]
    pub(crate) zk: String,
    /// Base path of the cluster's znodes (the brokers' cluster.zk_path).
    #[arg(long, env = "MAJORDODO_ZK_PATH", value_name = "PATH", default_value = DEFAULT_ZK_PATH)]
    pub(crate) zk_path: String,
    /// BookKeeper's metadata root in ZooKeeper (the brokers' cluster.ledgers_root).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_LEDGERS_ROOT)]
    pub(crate) ledgers_root: String,
    /// File holding the ledgers' password (the brokers' cluster.ledger_password_file), needed
    /// to read a ledger's last position. Unset: the empty password.
    #[arg(long, value_name = "FILE")]
    pub(crate) ledger_password_file: Option<PathBuf>,
    /// A broker's snapshot directory (<data dir>/snapshots): show which positions each
    /// snapshot covers and which ledgers a broker booting from it replays.
    #[arg(long, value_name = "DIR")]
    pub(crate) snapshots: Option<PathBuf>,
    /// Print as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `majordodo dump-log`.
#[derive(Debug, Args)]
pub(crate) struct DumpLogArgs {
    /// A file commit log directory (<data dir>/log of a standalone or a broker without
    /// [cluster]).
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
    /// ZooKeeper servers of the cluster whose ledger --ledger names.
    #[arg(long, env = "MAJORDODO_ZK", value_name = "HOST:PORT[,...]")]
    pub(crate) zk: Option<String>,
    /// The ledger to print (`majordodo ledgers` lists them).
    #[arg(long, value_name = "ID")]
    pub(crate) ledger: Option<i64>,
    /// BookKeeper's metadata root in ZooKeeper (the brokers' cluster.ledgers_root).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_LEDGERS_ROOT)]
    pub(crate) ledgers_root: String,
    /// File holding the ledgers' password (the brokers' cluster.ledger_password_file). Unset:
    /// the empty password.
    #[arg(long, value_name = "FILE")]
    pub(crate) ledger_password_file: Option<PathBuf>,
    /// First position (LSN) to print. Default: the first the log holds.
    #[arg(long, value_name = "LSN", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) from: Option<u64>,
    /// Most records printed. Default: every one up to the end.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max: Option<u64>,
    /// Print JSON Lines: one object per record with every field, times in ms since the epoch.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `majordodo backup`.
#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// The file to write (must not exist; the download goes to FILE.part until it is checked).
    #[arg(long, short, value_name = "FILE")]
    pub(crate) output: PathBuf,
}

/// `majordodo restore`.
#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The backup (a file written by `majordodo backup`, or a `snapshot-*.snap` file of a
    /// broker's snapshots directory).
    #[arg(long, value_name = "FILE")]
    pub(crate) from: PathBuf,
    /// The data directory to make (new, or without a log and snapshots).
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: PathBuf,
}

/// `majordodo log ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum LogCommand {
    /// Find the first damaged record of a log that the broker refuses to open, and show what
    /// cutting the log there loses. With --cut-at (the first lost LSN the report names, as
    /// confirmation), cut it: every record from that LSN on is lost, some possibly
    /// acknowledged; restoring the log from a replica or a backup is the alternative.
    Repair {
        /// The commit log directory (`<data dir>/log`).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Cut the log so that it ends just before this LSN (must be the report's first lost
        /// LSN).
        #[arg(long, value_name = "LSN")]
        cut_at: Option<u64>,
    },
}

/// `majordodo standalone`.
#[derive(Debug, Args)]
pub(crate) struct StandaloneArgs {
    /// Directory of the log, snapshots, admin.token and local-worker.credential.
    #[arg(long, value_name = "DIR", default_value = "majordodo-data")]
    pub(crate) data_dir: PathBuf,
    /// Port of the HTTP API on 127.0.0.1; 0 picks a free port (printed at start).
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_HTTP_PORT)]
    pub(crate) http_port: u16,
    /// Port for workers on 127.0.0.1; 0 picks a free port (printed at start).
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_WORKER_PORT)]
    pub(crate) worker_port: u16,
    /// Worker configuration (TOML) for the local worker: process executors, limits, groups.
    /// Its broker address, secret and credential are ignored. See `majordodo worker --print-default-config`.
    #[arg(long, value_name = "FILE")]
    pub(crate) worker_config: Option<PathBuf>,
    /// Do not start the local worker (only the broker; connect workers with `majordodo worker
    /// --credential-file`, issued with `majordodo worker-credentials add`).
    #[arg(long)]
    pub(crate) no_worker: bool,
}

/// `majordodo broker`.
#[derive(Debug, Args)]
pub(crate) struct BrokerArgs {
    /// Configuration file (TOML); see --print-default-config for every key.
    #[arg(
        long,
        short,
        value_name = "FILE",
        required_unless_present = "print_default_config"
    )]
    pub(crate) config: Option<PathBuf>,
    /// Print a configuration file with every key, its default and its meaning, then exit.
    #[arg(long)]
    pub(crate) print_default_config: bool,
    /// Data directory (overrides data_dir).
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Address of the HTTP API (overrides http.listen).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) http_listen: Option<String>,
    /// Address of the worker port (overrides workers.listen).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) worker_listen: Option<String>,
    /// Name of this broker (overrides broker_id).
    #[arg(long, value_name = "NAME")]
    pub(crate) broker_id: Option<String>,
    /// File holding the workers' shared secret, for the legacy mode (overrides
    /// workers.shared_secret[_file]; needs workers.auth = "credentials-or-shared-secret").
    #[arg(long, value_name = "FILE")]
    pub(crate) shared_secret_file: Option<PathBuf>,
    /// ZooKeeper servers: replicate this broker with the others of the cluster (overrides
    /// cluster.zk).
    #[arg(long, value_name = "HOST:PORT[,...]")]
    pub(crate) zk: Option<String>,
    /// Base path of the cluster's znodes (overrides cluster.zk_path).
    #[arg(long, value_name = "PATH")]
    pub(crate) zk_path: Option<String>,
    /// ZooKeeper session timeout (overrides cluster.session_timeout).
    #[arg(long, value_name = "DURATION")]
    pub(crate) zk_session_timeout: Option<String>,
    /// Bookies per ledger (overrides cluster.ensemble).
    #[arg(long, value_name = "N")]
    pub(crate) ensemble: Option<usize>,
    /// Bookies each entry is written to (overrides cluster.write_quorum).
    #[arg(long, value_name = "N")]
    pub(crate) write_quorum: Option<usize>,
    /// Acknowledgements that make an entry durable (overrides cluster.ack_quorum).
    #[arg(long, value_name = "N")]
    pub(crate) ack_quorum: Option<usize>,
    /// Entry checksum: crc32c, crc32, hmac-sha1, dummy (overrides cluster.digest).
    #[arg(long, value_name = "DIGEST")]
    pub(crate) digest: Option<String>,
    /// File holding the ledgers' password (overrides cluster.ledger_password_file).
    #[arg(long, value_name = "FILE")]
    pub(crate) ledger_password_file: Option<PathBuf>,
    /// File holding ZooKeeper digest credentials, user:password (overrides
    /// cluster.zk_digest_file).
    #[arg(long, value_name = "FILE")]
    pub(crate) zk_digest_file: Option<PathBuf>,
    /// Roll ledgers after this many bytes (overrides cluster.ledger_roll_size).
    #[arg(long, value_name = "SIZE")]
    pub(crate) ledger_roll_size: Option<String>,
    /// Roll ledgers after this long (overrides cluster.ledger_roll_age).
    #[arg(long, value_name = "DURATION")]
    pub(crate) ledger_roll_age: Option<String>,
    /// Drop covered ledgers this long after their creation (overrides
    /// cluster.ledger_retention).
    #[arg(long, value_name = "DURATION")]
    pub(crate) ledger_retention: Option<String>,
    /// Host others reach this broker on (overrides cluster.advertise_host).
    #[arg(long, value_name = "HOST")]
    pub(crate) advertise_host: Option<String>,
    /// File holding an admin token of the other brokers, to download a snapshot at boot
    /// (overrides cluster.peer_token_file).
    #[arg(long, value_name = "FILE")]
    pub(crate) peer_token_file: Option<PathBuf>,
}

/// `majordodo worker`.
#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// Configuration file (TOML); see --print-default-config for every key.
    #[arg(long, short, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Print a configuration file with every key, its default and its meaning, then exit.
    #[arg(long)]
    pub(crate) print_default_config: bool,
    /// The broker's worker port (overrides broker, and a file's or $MAJORDODO_ZK's zk).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) broker: Option<String>,
    /// Find the leader through this ZooKeeper ensemble (host:port,...) instead of a fixed
    /// broker, before every connection attempt, so the worker follows it from one failover to
    /// the next (overrides zk).
    #[arg(long, value_name = "CONNECT", env = "MAJORDODO_ZK")]
    pub(crate) zk: Option<String>,
    /// Base path of the cluster's znodes in ZooKeeper (overrides zk_path).
    #[arg(long, value_name = "PATH", env = "MAJORDODO_ZK_PATH")]
    pub(crate) zk_path: Option<String>,
    /// Name of this worker (overrides worker_id).
    #[arg(long, value_name = "NAME")]
    pub(crate) worker_id: Option<String>,
    /// File holding the shared secret, for a broker in legacy mode (overrides
    /// shared_secret[_file] and credential_file).
    #[arg(long, value_name = "FILE", conflicts_with = "credential_file")]
    pub(crate) shared_secret_file: Option<PathBuf>,
    /// This worker's credential file, written by `majordodo worker-credentials add`; the
    /// worker id is the credential's (overrides credential_file and the shared secret).
    #[arg(long, value_name = "FILE")]
    pub(crate) credential_file: Option<PathBuf>,
    /// Connect with TLS, verifying the broker against the system's roots (sets tls).
    #[arg(long)]
    pub(crate) tls: bool,
    /// Verify the broker against the CA certificates of this PEM file, with TLS (sets
    /// tls_ca_file).
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_file: Option<PathBuf>,
    /// Client certificate (PEM) presented to the broker, with TLS (sets tls_cert_file).
    #[arg(long, value_name = "FILE", requires = "tls_key_file")]
    pub(crate) tls_cert_file: Option<PathBuf>,
    /// Private key of --tls-cert-file (sets tls_key_file).
    #[arg(long, value_name = "FILE", requires = "tls_cert_file")]
    pub(crate) tls_key_file: Option<PathBuf>,
    /// Most tasks at once (overrides max_threads).
    #[arg(long, value_name = "N")]
    pub(crate) max_threads: Option<u32>,
    /// Groups served, highest priority first, comma-separated (overrides groups).
    #[arg(long, value_name = "G,...", value_delimiter = ',')]
    pub(crate) groups: Option<Vec<u32>>,
    /// Add a built-in executor: echo, noop, sleep or fail (repeatable; adds to
    /// builtin_executors).
    #[arg(long = "builtin", value_name = "NAME")]
    pub(crate) builtins: Vec<String>,
}

/// How client commands reach and authenticate to the broker.
#[derive(Debug, Clone, Args)]
pub(crate) struct ClientArgs {
    /// URL of the broker's HTTP API. Default: http://127.0.0.1:7364/majordodo, unless --zk is
    /// given.
    #[arg(long, env = "MAJORDODO_URL")]
    pub(crate) url: Option<String>,
    /// Find the leader's API through this ZooKeeper ensemble (host:port,...) instead of --url:
    /// the URL the leader publishes in <zk-path>/leader, read again after a failure.
    #[arg(long, value_name = "CONNECT", env = "MAJORDODO_ZK")]
    pub(crate) zk: Option<String>,
    /// Base path of the cluster's znodes in ZooKeeper, with --zk.
    #[arg(long, value_name = "PATH", env = "MAJORDODO_ZK_PATH", default_value = DEFAULT_ZK_PATH)]
    pub(crate) zk_path: String,
    /// How long to keep retrying a request the broker could not serve (not the leader,
    /// recovering, stopping, overloaded, unreachable); 0 never retries. Submissions carry
    /// idempotency keys, so a retry never creates a task twice.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub(crate) retry_for: std::time::Duration,
    /// Bearer token. Default: $MAJORDODO_TOKEN, else <data-dir>/admin.token.
    #[arg(long, env = "MAJORDODO_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub(crate) token_file: Option<PathBuf>,
    /// User name for HTTP Basic authentication (with --password).
    #[arg(long, env = "MAJORDODO_USERNAME", requires = "password")]
    pub(crate) username: Option<String>,
    /// Password for HTTP Basic authentication. Prefer $MAJORDODO_PASSWORD: flags are visible
    /// to other users of the machine.
    #[arg(
        long,
        env = "MAJORDODO_PASSWORD",
        hide_env_values = true,
        requires = "username"
    )]
    pub(crate) password: Option<String>,
    /// Where `majordodo standalone` keeps admin.token (used when no other credential is given).
    #[arg(long, value_name = "DIR", default_value = "majordodo-data")]
    pub(crate) data_dir: PathBuf,
    /// Time limit of each HTTP request.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub(crate) timeout: std::time::Duration,
    /// Verify an https:// broker against the CA certificates of this PEM file instead of the
    /// system's root certificates.
    #[arg(long, value_name = "FILE", env = "MAJORDODO_CA_FILE")]
    pub(crate) ca_file: Option<PathBuf>,
}

/// `majordodo submit`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").args(["data", "data_file", "jsonl"])))]
pub(crate) struct SubmitArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// Task type (chooses the worker's executor). Required for one task; a default for
    /// --jsonl lines without `tasktype`.
    #[arg(long = "type", value_name = "TYPE")]
    pub(crate) task_type: Option<String>,
    /// Owner of the task (its userid). Default: --username if given, else "admin". A default
    /// for --jsonl lines without `userid`.
    #[arg(long, value_name = "USER")]
    pub(crate) user: Option<String>,
    /// The task's data (payload).
    #[arg(long, value_name = "TEXT")]
    pub(crate) data: Option<String>,
    /// Read the task's data from a file ('-' for stdin).
    #[arg(long, value_name = "FILE")]
    pub(crate) data_file: Option<PathBuf>,
    /// Most executions: 1 runs it at most once, 0 retries without limit.
    #[arg(long, value_name = "N")]
    pub(crate) max_attempts: Option<u32>,
    /// Fail the task if it has not finished by then: RFC 3339, epoch milliseconds, or a
    /// duration from now (10m).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    pub(crate) deadline: Option<When>,
    /// Do not start before this time: RFC 3339, epoch milliseconds, or a duration from now.
    #[arg(long, value_name = "WHEN", value_parser = parse_when, conflicts_with = "delay")]
    pub(crate) start_at: Option<When>,
    /// Do not start before this delay has passed (e.g. 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) delay: Option<std::time::Duration>,
    /// Slot: at most one task holding a slot exists at a time; a second one is not created.
    #[arg(long, value_name = "NAME")]
    pub(crate) slot: Option<String>,
    /// Idempotency key of this task. Default: a fresh random one. Running the command again
    /// with the same key (within the broker's tasks.idempotency_window) answers the task the
    /// first run created instead of creating another.
    #[arg(long, value_name = "KEY", conflicts_with_all = ["jsonl", "transaction"])]
    pub(crate) idempotency_key: Option<String>,
    /// Submit into this open transaction (`majordodo transaction begin`): the task stays
    /// invisible until the transaction is committed.
    #[arg(long, value_name = "ID")]
    pub(crate) transaction: Option<u64>,
    /// CPU each attempt needs, in millicores (1000 = one core): placed only on a worker with
    /// that much free, within its owner's and group's quotas.
    #[arg(long, value_name = "MILLICORES")]
    pub(crate) cpu: Option<u64>,
    /// Memory each attempt needs, in MiB.
    #[arg(long, value_name = "MIB")]
    pub(crate) memory: Option<u64>,
    /// A named amount each attempt needs, as NAME=AMOUNT (repeatable), e.g. db:orders=1.
    #[arg(long = "need", value_name = "NAME=AMOUNT", value_parser = parse_amount)]
    pub(crate) needs: Vec<(String, u64)>,
    /// Submit many tasks from a JSON Lines file ('-' for stdin): one task object per line
    /// with the HTTP API's field names (tasktype, userid, data, maxattempts,
    /// requestedStartTime, deadline, slot, codePoolId, mode, idempotencyKey). Flags give
    /// defaults for missing fields. Every line is checked before anything is sent; a line
    /// without idempotencyKey gets a fresh one.
    #[arg(long, value_name = "FILE")]
    pub(crate) jsonl: Option<PathBuf>,
    /// Tasks per request with --jsonl.
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) batch_size: u32,
    /// Print the broker's answer as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `majordodo transaction`.
#[derive(Debug, Subcommand)]
pub(crate) enum TransactionCommand {
    /// Open a transaction owned by you and print its id (the broker rolls it back if it is
    /// neither committed nor rolled back within its tasks.transactions_ttl).
    Begin(SimpleViewArgs),
    /// Publish every task submitted in the transaction, at once.
    Commit(TransactionArgs),
    /// Discard every task submitted in the transaction.
    Rollback(TransactionArgs),
}

/// `majordodo transaction commit|rollback`.
#[derive(Debug, Args)]
pub(crate) struct TransactionArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// The transaction id (printed by `majordodo transaction begin`).
    #[arg(value_name = "ID")]
    pub(crate) id: u64,
}

/// `majordodo task`.
#[derive(Debug, Args)]
pub(crate) struct TaskArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// The task id.
    #[arg(value_name = "ID")]
    pub(crate) id: u64,
    /// Print the task as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `majordodo service-level`.
#[derive(Debug, Args)]
pub(crate) struct ServiceLevelArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// The user.
    #[arg(value_name = "USER")]
    pub(crate) user: String,
    /// The group (one of the broker's `scheduling.groups`).
    #[arg(long, value_name = "GROUP", required_unless_present = "reset")]
    pub(crate) group: Option<u32>,
    /// A named resource each task of the user uses (repeatable).
    #[arg(long = "resource", value_name = "NAME", conflicts_with = "reset")]
    pub(crate) resources: Vec<String>,
    /// Back to the default level (the broker's default mapping).
    #[arg(long, conflicts_with = "group")]
    pub(crate) reset: bool,
    /// The user's fair-share weight inside its group (1 to 10000; default 1): users get
    /// running tasks in proportion to their weights.
    #[arg(long, value_name = "N", conflicts_with = "reset", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) weight: Option<u32>,
}

/// `majordodo worker-credentials`.
#[derive(Debug, Subcommand)]
pub(crate) enum WorkerCredentialsCommand {
    /// Issue a credential for WORKER_ID and write it to a file (mode 0600) for that worker's
    /// --credential-file. The secret is shown only this once: the broker keeps a verifier.
    Add {
        #[command(flatten)]
        client: ClientArgs,
        /// The worker id the credential is bound to (it can connect as no other).
        #[arg(value_name = "WORKER_ID")]
        worker_id: String,
        /// Where to write the credential file (default: WORKER_ID.credential).
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
        /// A note kept with the credential (where it is deployed, who holds it).
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
    },
    /// List the credentials (never their secrets), revoked ones too.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Only the credentials of this worker id.
        #[arg(long, value_name = "WORKER_ID")]
        worker_id: Option<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a credential: its worker's live connection is closed and it never connects
    /// with it again.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        /// The credential's id (as `add` printed it, or from `list`).
        #[arg(value_name = "CREDENTIAL_ID")]
        credential_id: String,
    },
}

/// `majordodo quota`.
#[derive(Debug, Args)]
pub(crate) struct QuotaArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// The user whose quota to set.
    #[arg(
        long,
        value_name = "USER",
        required_unless_present = "group",
        conflicts_with = "group"
    )]
    pub(crate) user: Option<String>,
    /// The group whose quota to set (its users' running tasks together).
    #[arg(long, value_name = "GROUP")]
    pub(crate) group: Option<u32>,
    /// An amount of the quota, as DIMENSION=AMOUNT (repeatable): tasks (running tasks), cpu
    /// (millicores), memory (MiB) or a named amount such as db:orders.
    #[arg(long = "set", value_name = "DIMENSION=AMOUNT", value_parser = parse_amount, required_unless_present = "reset")]
    pub(crate) amounts: Vec<(String, u64)>,
    /// Remove the quota.
    #[arg(long, conflicts_with = "amounts")]
    pub(crate) reset: bool,
}

/// `NAME=AMOUNT`, the amount an unsigned integer.
fn parse_amount(s: &str) -> Result<(String, u64), String> {
    let (name, amount) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=AMOUNT"))?;
    if name.is_empty() {
        return Err(format!("{s:?} has no name before ="));
    }
    let amount = amount
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("{s:?}: the amount must be a whole number of at least 0"))?;
    Ok((name.to_string(), amount))
}

/// `majordodo priority`.
#[derive(Debug, Args)]
pub(crate) struct PriorityArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// The task id.
    #[arg(value_name = "ID")]
    pub(crate) id: u64,
    /// The new priority (higher first; 0 is the default).
    #[arg(value_name = "PRIORITY", allow_negative_numbers = true)]
    pub(crate) priority: i32,
}

/// A task status, for filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StatusArg {
    /// Every status.
    All,
    /// Waiting for a worker.
    Waiting,
    /// Waiting for its start time.
    Delayed,
    /// Running on a worker.
    Running,
    /// Finished successfully.
    Finished,
    /// Failed for good.
    Error,
}

/// `majordodo tasks`.
#[derive(Debug, Args)]
pub(crate) struct TasksArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// Only tasks in this status.
    #[arg(long, value_enum, default_value_t = StatusArg::All)]
    pub(crate) status: StatusArg,
    /// Only tasks of this type.
    #[arg(long = "type", value_name = "TYPE")]
    pub(crate) task_type: Option<String>,
    /// Only tasks of this user.
    #[arg(long, value_name = "USER")]
    pub(crate) user: Option<String>,
    /// Only tasks assigned to this worker.
    #[arg(long, value_name = "WORKER")]
    pub(crate) worker: Option<String>,
    /// Only tasks holding this slot.
    #[arg(long, value_name = "SLOT")]
    pub(crate) slot: Option<String>,
    /// Most tasks listed.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max: u32,
    /// Start at this task id (listings in id order continue where an earlier one stopped).
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) from_task_id: Option<u64>,
    /// Longest time spent asking the broker for more: it examines a bounded number of tasks per
    /// request (its scan budget), so a listing with narrow filters over many tasks takes
    /// several requests.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub(crate) max_time: std::time::Duration,
    /// Print the tasks as JSON (an array of task objects).
    #[arg(long)]
    pub(crate) json: bool,
}

/// `majordodo status` and `majordodo workers`.
#[derive(Debug, Args)]
pub(crate) struct SimpleViewArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// Print as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `majordodo codepool ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum CodepoolCommand {
    /// Create a code pool from a zip or tar.gz archive (admin only).
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// The pool's id.
        #[arg(long, value_name = "ID")]
        id: String,
        /// The archive (zip or tar.gz).
        #[arg(long, value_name = "FILE")]
        archive: PathBuf,
        /// Time to live after creation (e.g. 1h); once passed, the pool is deleted when no
        /// task uses it. Default: forever.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// Delete a code pool no task uses (admin only).
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        /// The pool's id.
        #[arg(long, value_name = "ID")]
        id: String,
    },
    /// Show one code pool.
    Show {
        #[command(flatten)]
        client: ClientArgs,
        /// The pool's id.
        #[arg(long, value_name = "ID")]
        id: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the code pools.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Most pools listed.
        #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        max: u32,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `majordodo auth ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum AuthCommand {
    /// Generate a bearer token, write it to a file (mode 0600) and print the [[http.users]]
    /// entry to add to the broker's file (it holds only the token's SHA-256).
    NewToken {
        /// File to write the token to.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The user's name.
        #[arg(long, default_value = "admin")]
        name: String,
        /// The user's role: admin or user.
        #[arg(long, default_value = "admin", value_parser = ["admin", "user"])]
        role: String,
    },
    /// Hash a password read from stdin (one line) and print the password_hash to configure.
    HashPassword,
}

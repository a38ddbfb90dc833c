//! Declared cpu and memory: what this machine has ([`detect_cpu_millis`],
//! [`detect_memory_mib`]) and how the `process` executor holds a task to what it declared
//! ([`Enforcement`]: a cgroup v2 per attempt, or rlimits).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use majordodo_proto::worker::{CPU_MILLIS, MEMORY_MIB};

/// Largest `cpu` amount or need accepted, in millicores: ten thousand cores.
pub const MAX_CPU_MILLIS: u64 = 10_000_000;

/// Largest `memory` amount or need accepted, in MiB: 64 PiB.
pub const MAX_MEMORY_MIB: u64 = 1 << 36;

/// Largest named amount accepted: 2^40, far beyond any count of connections or operations,
/// and well inside what every peer can add up without overflow.
pub const MAX_NAMED_AMOUNT: u64 = 1 << 40;

/// The cgroup v2 period `cpu.max` quotas are written against, in microseconds (the kernel's
/// default period: 100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The most a value of dimension `key` may be.
pub fn max_amount(key: &str) -> u64 {
    match key {
        CPU_MILLIS => MAX_CPU_MILLIS,
        MEMORY_MIB => MAX_MEMORY_MIB,
        _ => MAX_NAMED_AMOUNT,
    }
}

/// Checks one amount or need: positive and at most [`max_amount`].
///
/// # Errors
/// The problem, without the key (the caller names it).
pub fn check_amount(key: &str, value: u64) -> Result<(), String> {
    if key.is_empty() {
        return Err("the name of an amount must not be empty".to_owned());
    }
    let max = max_amount(key);
    if value == 0 {
        Err("must be positive".to_owned())
    } else if value > max {
        Err(format!(
            "{value} is beyond the largest accepted value, {max}"
        ))
    } else {
        Ok(())
    }
}

/// The machine's CPU in millicores: the cores this process may use
/// (`std::thread::available_parallelism`, which follows affinity masks and cgroup quotas) × 1000.
pub fn detect_cpu_millis() -> u64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    cores.saturating_mul(1000).min(MAX_CPU_MILLIS)
}

/// The machine's memory in MiB: `MemTotal` of /proc/meminfo, lowered to the memory limit of
/// this process's cgroup (v2 `memory.max` or v1 `memory.limit_in_bytes`, of its cgroup and
/// every ancestor visible) when one applies; with where the value came from.
/// `None` when /proc/meminfo cannot be read.
pub fn detect_memory_mib() -> Option<(u64, String)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total = parse_meminfo_total_mib(&meminfo)?;
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let limit = cgroup_memory_limits(&own, Path::new("/sys/fs/cgroup"))
        .into_iter()
        .min_by_key(|(bytes, _)| *bytes);
    Some(match limit {
        Some((bytes, file)) if bytes / (1024 * 1024) < total => (
            (bytes / (1024 * 1024)).max(1),
            format!("cgroup limit {}", file.display()),
        ),
        _ => (total, "/proc/meminfo MemTotal".to_owned()),
    })
}

/// `MemTotal` of a /proc/meminfo text, in MiB.
pub(crate) fn parse_meminfo_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib / 1024)
}

/// Every memory limit (bytes, file) that applies to the cgroups named in a /proc/self/cgroup
/// text, read under `mount_root` (usually /sys/fs/cgroup): for cgroup v2 (`0::<path>`)
/// `memory.max` of the path and its ancestors, under `mount_root` or `mount_root/unified`; for
/// cgroup v1 (`<n>:...memory...:<path>`) `memory.limit_in_bytes` under `mount_root/memory`.
/// "max" and the v1 "unlimited" values (at least 2^62) are no limit.
pub(crate) fn cgroup_memory_limits(own: &str, mount_root: &Path) -> Vec<(u64, PathBuf)> {
    let mut found = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (bases, file): (Vec<PathBuf>, &str) = if controllers.is_empty() {
            (
                vec![mount_root.to_path_buf(), mount_root.join("unified")],
                "memory.max",
            )
        } else if controllers.split(',').any(|c| c == "memory") {
            (vec![mount_root.join("memory")], "memory.limit_in_bytes")
        } else {
            continue;
        };
        for base in bases {
            for dir in ancestors_within(&base, path) {
                let file = dir.join(file);
                let Ok(text) = std::fs::read_to_string(&file) else {
                    continue;
                };
                if let Ok(bytes) = text.trim().parse::<u64>()
                    && bytes < 1 << 62
                {
                    found.push((bytes, file));
                }
            }
        }
    }
    found
}

/// `base/path`, then each of its ancestors up to `base` itself.
fn ancestors_within(base: &Path, path: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut dir = base.join(path.trim_start_matches('/'));
    loop {
        dirs.push(dir.clone());
        if dir == base || !dir.pop() || !dir.starts_with(base) {
            break;
        }
    }
    dirs
}

/// How the `process` executor enforces the cpu and memory a task declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcement {
    /// Each attempt runs in a child cgroup of `root` with `memory.max` and `cpu.max` set.
    CgroupV2 {
        /// A writable cgroup v2 directory with the `cpu` and `memory` controllers enabled for
        /// its children.
        root: PathBuf,
    },
    /// No usable cgroup v2: memory is limited with RLIMIT_AS (the address space, which is
    /// larger than the memory used: reserved but untouched memory counts too); cpu is not
    /// limited.
    Rlimits {
        /// Why no cgroup v2 is used.
        why_no_cgroup: String,
    },
}

impl Enforcement {
    /// Checks `root`, a configured cgroup v2 directory, enabling the `cpu` and `memory`
    /// controllers for its children if they are not yet.
    ///
    /// # Errors
    /// Why it cannot be used, for a configuration error.
    pub fn cgroup_v2(root: &Path) -> Result<Enforcement, String> {
        usable_cgroup_root(root, true)?;
        Ok(Enforcement::CgroupV2 {
            root: root.to_path_buf(),
        })
    }

    /// Finds what this machine allows: the cgroup v2 of this process (from /proc/self/cgroup,
    /// under /sys/fs/cgroup or /sys/fs/cgroup/unified) if it is writable and has `cpu` and
    /// `memory` enabled for its children (delegated), else rlimits.
    pub fn detect() -> Enforcement {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
            return Enforcement::Rlimits {
                why_no_cgroup: "this process is in no cgroup v2".to_owned(),
            };
        };
        let mut problems = Vec::new();
        for mount in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
            let dir = Path::new(mount).join(path.trim_start_matches('/'));
            if !dir.join("cgroup.controllers").exists() {
                continue;
            }
            match usable_cgroup_root(&dir, false) {
                Ok(()) => return Enforcement::CgroupV2 { root: dir },
                Err(problem) => problems.push(problem),
            }
        }
        Enforcement::Rlimits {
            why_no_cgroup: if problems.is_empty() {
                "no cgroup v2 hierarchy mounted at /sys/fs/cgroup or /sys/fs/cgroup/unified"
                    .to_owned()
            } else {
                problems.join("; ")
            },
        }
    }

    /// [`Enforcement::detect`], run once per process and shared.
    pub fn auto() -> Arc<Enforcement> {
        static AUTO: OnceLock<Arc<Enforcement>> = OnceLock::new();
        AUTO.get_or_init(|| Arc::new(Enforcement::detect())).clone()
    }

    /// One line for logs and [`Capacity::enforcement`](majordodo_proto::worker::Capacity).
    pub fn describe(&self) -> String {
        match self {
            Enforcement::CgroupV2 { root } => format!(
                "cgroup v2 ({}): cpu (cpu.max) and memory (memory.max), one cgroup per attempt",
                root.display()
            ),
            Enforcement::Rlimits { why_no_cgroup } => format!(
                "rlimits: memory (RLIMIT_AS, limits the address space); cpu not enforced: {why_no_cgroup}"
            ),
        }
    }
}

/// Whether `dir` is a cgroup v2 directory where child cgroups with `cpu.max` and `memory.max`
/// can be made; with `enable`, first turns on `cpu` and `memory` for its children.
fn usable_cgroup_root(dir: &Path, enable: bool) -> Result<(), String> {
    let shown = dir.display();
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| format!("{shown} is not a cgroup v2 directory ({name}: {e})"))
    };
    let available = read("cgroup.controllers")?;
    let missing: Vec<&str> = ["cpu", "memory"]
        .into_iter()
        .filter(|c| !available.split_whitespace().any(|a| a == *c))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "cgroup v2 {shown} lacks the {} controller{} (available: {:?}; a controller bound to a cgroup v1 hierarchy is not available in v2)",
            missing.join(" and "),
            if missing.len() > 1 { "s" } else { "" },
            available.trim()
        ));
    }
    let enabled = |text: &str| {
        ["cpu", "memory"]
            .iter()
            .all(|c| text.split_whitespace().any(|e| e == *c))
    };
    if !enabled(&read("cgroup.subtree_control")?) {
        if !enable {
            return Err(format!(
                "cgroup v2 {shown} does not enable cpu and memory for its children (not delegated)"
            ));
        }
        std::fs::write(dir.join("cgroup.subtree_control"), "+cpu +memory").map_err(|e| {
            format!("cannot enable cpu and memory in {shown}/cgroup.subtree_control: {e}")
        })?;
    }
    // The real proof: a child can be made, has both files, and can be removed.
    let probe = dir.join(format!("majordodo-probe-{}", std::process::id()));
    std::fs::create_dir(&probe).map_err(|e| format!("cannot create a cgroup in {shown}: {e}"))?;
    let complete = probe.join("memory.max").exists() && probe.join("cpu.max").exists();
    let _ = std::fs::remove_dir(&probe);
    if !complete {
        return Err(format!(
            "cgroups made in {shown} have no memory.max or cpu.max"
        ));
    }
    Ok(())
}

/// What one attempt declared of the two enforced dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Declared {
    /// Millicores.
    pub(crate) cpu_millis: Option<u64>,
    /// MiB.
    pub(crate) memory_mib: Option<u64>,
}

impl Declared {
    /// The cpu and memory of a task's needs; zero counts as not declared.
    pub(crate) fn of(needs: &BTreeMap<String, u64>) -> Declared {
        let get = |key| needs.get(key).copied().filter(|v| *v > 0);
        Declared {
            cpu_millis: get(CPU_MILLIS),
            memory_mib: get(MEMORY_MIB),
        }
    }

    /// Memory in bytes, saturating.
    pub(crate) fn memory_bytes(&self) -> Option<u64> {
        self.memory_mib.map(|mib| mib.saturating_mul(1024 * 1024))
    }
}

/// The `cpu.max` line for `millis` millicores: the quota per [`CPU_PERIOD_US`].
pub(crate) fn cpu_max_line(millis: u64) -> String {
    // 1000 millicores = one full period per period.
    let quota = millis.saturating_mul(CPU_PERIOD_US / 1000).max(1000);
    format!("{quota} {CPU_PERIOD_US}")
}

/// One attempt's cgroup: made with its limits before the program starts, removed when dropped
/// (after killing whatever is left in it).
#[derive(Debug)]
pub(crate) struct TaskCgroup {
    dir: PathBuf,
    /// `cgroup.procs` of `dir`, opened close-on-exec, for the child to join before it execs.
    procs: Option<OwnedFd>,
}

impl TaskCgroup {
    /// Makes `root/majordodo-<task>-<attempt>-<pid>-<n>` with `declared`'s limits.
    pub(crate) fn create(
        root: &Path,
        task_id: u64,
        attempt: u32,
        declared: Declared,
    ) -> io::Result<TaskCgroup> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = root.join(format!(
            "majordodo-{task_id}-{attempt}-{}-{n}",
            std::process::id()
        ));
        std::fs::create_dir(&dir)?;
        let mut cgroup = TaskCgroup { dir, procs: None };
        if let Some(bytes) = declared.memory_bytes() {
            cgroup.write("memory.max", &bytes.to_string())?;
            // Without this the limit only moves the excess to swap.
            if cgroup.dir.join("memory.swap.max").exists() {
                cgroup.write("memory.swap.max", "0")?;
            }
        }
        if let Some(millis) = declared.cpu_millis {
            cgroup.write("cpu.max", &cpu_max_line(millis))?;
        }
        let procs = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(cgroup.dir.join("cgroup.procs"))?;
        cgroup.procs = Some(procs.into());
        Ok(cgroup)
    }

    fn write(&self, file: &str, value: &str) -> io::Result<()> {
        std::fs::write(self.dir.join(file), value).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("write {value:?} to {}: {e}", self.dir.join(file).display()),
            )
        })
    }

    /// The raw descriptor of `cgroup.procs`, for [`join_cgroup`] in the child.
    pub(crate) fn procs_fd(&self) -> Option<i32> {
        self.procs.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Closes this process's handle on `cgroup.procs` (once the child is started).
    pub(crate) fn close_procs(&mut self) {
        self.procs = None;
    }

    /// How many times the kernel's OOM killer ended a process of this cgroup.
    pub(crate) fn oom_kills(&self) -> u64 {
        let events = std::fs::read_to_string(self.dir.join("memory.events")).unwrap_or_default();
        events
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Kills what is left and removes the cgroup, waiting up to `patience` for it to empty.
    pub(crate) async fn remove(mut self, patience: Duration) {
        self.procs = None;
        let dir = std::mem::take(&mut self.dir);
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match std::fs::remove_dir(&dir) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    tracing::warn!(cgroup = %dir.display(), error = %e, "task cgroup not removed");
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
}

impl Drop for TaskCgroup {
    /// The attempt was dropped (aborted) before [`TaskCgroup::remove`]: kill and remove from a
    /// short-lived thread, since the cgroup empties only once the kernel reaped its processes.
    fn drop(&mut self) {
        if self.dir.as_os_str().is_empty() {
            return;
        }
        let dir = std::mem::take(&mut self.dir);
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        if std::fs::remove_dir(&dir).is_ok() {
            return;
        }
        std::thread::spawn(move || {
            for _ in 0..200 {
                std::thread::sleep(Duration::from_millis(10));
                match std::fs::remove_dir(&dir) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => continue,
                    _ => return,
                }
            }
            tracing::warn!(cgroup = %dir.display(), "task cgroup not removed");
        });
    }
}

/// In the child, between fork and exec: writes the child's pid to the `cgroup.procs`
/// descriptor `fd`, so the program starts inside the cgroup. Only async-signal-safe calls.
#[allow(unsafe_code)]
pub(crate) fn join_cgroup(fd: i32) -> io::Result<()> {
    // SAFETY: getpid(2) has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = pid as u64;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let len = digits.len() - at;
    // SAFETY: the pointer and length describe `digits[at..]`, alive for the call.
    let written = unsafe { libc::write(fd, digits[at..].as_ptr().cast(), len) };
    if written == len as isize {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// In the child, between fork and exec: limits the address space to `bytes` (RLIMIT_AS).
/// Only async-signal-safe calls.
#[allow(unsafe_code)]
pub(crate) fn limit_address_space(bytes: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: bytes as libc::rlim_t,
    };
    // SAFETY: setrlimit(2) reads the struct passed by reference for the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_is_read_in_mib() {
        // Goal: MemTotal in kB becomes MiB; a text without it, or in other units, gives None.
        let text = "MemFree:  100 kB\nMemTotal:       24683584 kB\n";
        assert_eq!(parse_meminfo_total_mib(text), Some(24683584 / 1024));
        assert_eq!(parse_meminfo_total_mib("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo_total_mib("MemTotal: 1 MB\n"), None);
    }

    #[test]
    fn cgroup_memory_limits_follow_v1_and_v2_paths_and_ancestors() {
        // Goal: the v2 memory.max of the cgroup and its ancestors and the v1
        // memory.limit_in_bytes are found; "max" and the v1 "unlimited" value are no limit.
        let root = tempfile::tempdir().unwrap();
        let v2 = root.path().join("a/b");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("memory.max"), "max\n").unwrap();
        std::fs::write(root.path().join("a/memory.max"), "1073741824\n").unwrap();
        let v1 = root.path().join("memory/job");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "536870912\n").unwrap();
        std::fs::write(
            root.path().join("memory/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        let own = "4:memory:/job\n3:cpu:/\n0::/a/b\n";
        let mut limits = cgroup_memory_limits(own, root.path());
        limits.sort();
        assert_eq!(
            limits,
            vec![
                (536870912, v1.join("memory.limit_in_bytes")),
                (1073741824, root.path().join("a/memory.max")),
            ]
        );
    }

    #[test]
    fn detection_reads_this_machine() {
        // Goal: cpu is the usable cores × 1000; memory is positive and at most MemTotal.
        let cores = std::thread::available_parallelism().unwrap().get() as u64;
        assert_eq!(detect_cpu_millis(), cores * 1000);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let total = parse_meminfo_total_mib(&meminfo).unwrap();
        let (memory, source) = detect_memory_mib().unwrap();
        assert!(
            memory > 0 && memory <= total,
            "{memory} of {total} ({source})"
        );
    }

    #[test]
    fn amounts_are_checked_per_dimension() {
        // Goal: zero and values beyond a dimension's bound are refused, with the bound named.
        assert!(check_amount(CPU_MILLIS, 4000).is_ok());
        assert_eq!(check_amount(MEMORY_MIB, 0).unwrap_err(), "must be positive");
        assert!(
            check_amount(CPU_MILLIS, MAX_CPU_MILLIS + 1)
                .unwrap_err()
                .contains("10000000")
        );
        assert!(check_amount("db:orders", MAX_NAMED_AMOUNT).is_ok());
        assert!(check_amount("", 1).is_err());
    }

    #[test]
    fn cpu_max_gives_the_quota_per_period() {
        // Goal: 1000 millicores is a full period; 500 half of it; 2500 two and a half.
        assert_eq!(cpu_max_line(1000), "100000 100000");
        assert_eq!(cpu_max_line(500), "50000 100000");
        assert_eq!(cpu_max_line(2500), "250000 100000");
        // The kernel's smallest quota is 1 ms.
        assert_eq!(cpu_max_line(1), "1000 100000");
    }

    #[test]
    fn the_statement_says_what_is_and_is_not_enforced() {
        // Goal: each mode names its mechanism, and rlimits say cpu is not enforced and why.
        let cg = Enforcement::CgroupV2 {
            root: "/sys/fs/cgroup/w".into(),
        };
        assert!(
            cg.describe()
                .starts_with("cgroup v2 (/sys/fs/cgroup/w): cpu")
        );
        let rl = Enforcement::Rlimits {
            why_no_cgroup: "no writable cgroup v2".into(),
        };
        assert_eq!(
            rl.describe(),
            "rlimits: memory (RLIMIT_AS, limits the address space); cpu not enforced: no writable cgroup v2"
        );
    }

    #[test]
    fn this_machine_is_described_truthfully() {
        // Goal: the detected mode agrees with what the cgroup files say: cgroup v2 only when
        // this process's v2 cgroup offers cpu and memory to children.
        let detected = Enforcement::detect();
        eprintln!("enforcement here: {}", detected.describe());
        match &detected {
            Enforcement::CgroupV2 { root } => {
                let controls = std::fs::read_to_string(root.join("cgroup.subtree_control"))
                    .expect("a cgroup v2 root has cgroup.subtree_control");
                assert!(controls.contains("cpu") && controls.contains("memory"));
            }
            Enforcement::Rlimits { why_no_cgroup } => assert!(!why_no_cgroup.is_empty()),
        }
        assert!(Enforcement::cgroup_v2(Path::new("/nonexistent-cgroup")).is_err());
    }
}

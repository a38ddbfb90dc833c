//! Where the harness finds Java, the Debian ZooKeeper jar and the BookKeeper jars cached by
//! `scripts/test-deps`, plus the class-data-sharing archives that make JVMs start faster.

use std::path::{Path, PathBuf};

use crate::error::TestkitError;

/// The BookKeeper server version `scripts/test-deps` caches; equal to `<bookkeeper.version>` in
/// `java/pom.xml` (a unit test checks this).
pub const BOOKKEEPER_VERSION: &str = "4.17.3";

/// Environment variable naming the cache root of `scripts/test-deps`
/// (default `$HOME/.cache/majordodo-testkit`).
pub const CACHE_ENV: &str = "MAJORDODO_TEST_CACHE";

/// The ZooKeeper server jar of the Debian package `zookeeper`; its manifest names the jars it
/// needs, so it alone is the classpath.
const DEBIAN_ZK_JAR: &str = "/usr/share/java/zookeeper.jar";

/// An SLF4J binding that Debian ships alongside ZooKeeper's dependencies; without it ZooKeeper
/// logs nothing at all.
const DEBIAN_SLF4J_SIMPLE_JAR: &str = "/usr/share/java/slf4j-simple.jar";

/// Java and the ZooKeeper classpath.
#[derive(Debug, Clone)]
pub(crate) struct ZkDeps {
    pub(crate) java: PathBuf,
    pub(crate) classpath: String,
    /// Class-data archive trained for exactly this classpath, if `scripts/test-deps` made one.
    pub(crate) cds_archive: Option<PathBuf>,
}

/// Java and the BookKeeper classpath (server jars + our tools).
#[derive(Debug, Clone)]
pub(crate) struct BkDeps {
    pub(crate) java: PathBuf,
    pub(crate) classpath: String,
    pub(crate) bookie_cds_archive: Option<PathBuf>,
    pub(crate) tools_cds_archive: Option<PathBuf>,
}

/// The `java` launcher: `$JAVA_HOME/bin/java`, else the first `java` on `PATH`.
pub(crate) fn java() -> Result<PathBuf, TestkitError> {
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        let candidate = PathBuf::from(home).join("bin").join("java");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("java"))
        .find(|candidate| candidate.is_file())
        .ok_or(TestkitError::MissingDependency {
            what: "java",
            looked_at: "$JAVA_HOME/bin and $PATH".to_owned(),
        })
}

/// The cache root of `scripts/test-deps`.
pub fn cache_root() -> Result<PathBuf, TestkitError> {
    if let Some(dir) = std::env::var_os(CACHE_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".cache").join("majordodo-testkit"))
        .ok_or(TestkitError::MissingDependency {
            what: "the test cache directory",
            looked_at: format!("${CACHE_ENV} and $HOME are unset"),
        })
}

/// The directory holding the cached BookKeeper jars.
pub fn bookkeeper_dir() -> Result<PathBuf, TestkitError> {
    Ok(cache_root()?.join(format!("bookkeeper-{BOOKKEEPER_VERSION}")))
}

/// Environment variable: set to `0` to start JVMs without the class-data archives (to measure
/// what they save, or to rule them out when a JVM misbehaves).
pub const CDS_ENV: &str = "MAJORDODO_TESTKIT_CDS";

/// The archive at `path` if it exists and archives are not switched off.
fn existing(path: PathBuf) -> Option<PathBuf> {
    let disabled = std::env::var(CDS_ENV).is_ok_and(|v| v == "0");
    (!disabled && path.is_file()).then_some(path)
}

impl ZkDeps {
    pub(crate) fn locate() -> Result<ZkDeps, TestkitError> {
        let java = java()?;
        if !Path::new(DEBIAN_ZK_JAR).is_file() {
            return Err(TestkitError::MissingDependency {
                what: "the Debian ZooKeeper jar",
                looked_at: DEBIAN_ZK_JAR.to_owned(),
            });
        }
        // scripts/test-deps builds the same classpath for the archive it trains
        let mut classpath = DEBIAN_ZK_JAR.to_owned();
        if Path::new(DEBIAN_SLF4J_SIMPLE_JAR).is_file() {
            classpath.push(':');
            classpath.push_str(DEBIAN_SLF4J_SIMPLE_JAR);
        }
        let cds_archive = bookkeeper_dir()
            .ok()
            .and_then(|dir| existing(dir.join("cds").join("zookeeper.jsa")));
        Ok(ZkDeps {
            java,
            classpath,
            cds_archive,
        })
    }
}

impl BkDeps {
    pub(crate) fn locate() -> Result<BkDeps, TestkitError> {
        let java = java()?;
        let dir = bookkeeper_dir()?;
        let list = dir.join("classpath.txt");
        let text = std::fs::read_to_string(&list).map_err(|_| TestkitError::MissingDependency {
            what: "the BookKeeper jars",
            looked_at: list.display().to_string(),
        })?;
        let jars: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if let Some(missing) = jars.iter().find(|jar| !Path::new(jar).is_file()) {
            return Err(TestkitError::MissingDependency {
                what: "a BookKeeper jar listed in the cache",
                looked_at: (*missing).to_owned(),
            });
        }
        if jars.is_empty() {
            return Err(TestkitError::MissingDependency {
                what: "the BookKeeper jars (empty classpath list)",
                looked_at: list.display().to_string(),
            });
        }
        Ok(BkDeps {
            java,
            classpath: jars.join(":"),
            bookie_cds_archive: existing(dir.join("cds").join("bookie.jsa")),
            tools_cds_archive: existing(dir.join("cds").join("tools.jsa")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::BOOKKEEPER_VERSION;

    #[test]
    fn bookkeeper_version_matches_the_pom() {
        // The cache directory the harness reads must be the one scripts/test-deps fills.
        let pom = include_str!("../java/pom.xml");
        let expected = format!("<bookkeeper.version>{BOOKKEEPER_VERSION}</bookkeeper.version>");
        assert!(
            pom.contains(&expected),
            "pom.xml does not pin {BOOKKEEPER_VERSION}"
        );
    }
}

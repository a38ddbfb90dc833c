//! Configuration files of `majordodo broker` and `majordodo worker`: reading TOML, naming the
//! key and the file in every error, and the value types shared by both files.
//!
//! Each file is deserialised with `deny_unknown_fields` into a raw struct ([`broker::BrokerFile`],
//! [`worker::WorkerFile`]) whose every field has a default, then flags are applied on top, then it
//! is validated into the typed settings the runtime uses. Relative paths in a file are relative
//! to the directory of that file.

pub(crate) mod broker;
pub(crate) mod cluster;
pub(crate) mod tls;
pub(crate) mod worker;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::units::{format_bytes, format_duration, parse_bytes, parse_duration};

/// Largest configuration or secret file read. Real files are a few kilobytes; the bound keeps a
/// wrong path (a log file, a device) from being read into memory.
const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;

/// Where a setting came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A configuration file.
    File(PathBuf),
    /// Command-line flags and built-in defaults.
    CommandLine,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::CommandLine => f.write_str("the command line"),
        }
    }
}

/// A configuration that cannot be used. Not retryable: fix the file or the flags. The CLI exits
/// with status 2 on it.
#[derive(Debug)]
pub(crate) enum ConfigError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key has a bad value, is unknown, or is missing.
    Invalid {
        /// The file (or the command line).
        origin: Origin,
        /// The key, dotted (`workers.keepalive_interval`), or the flag.
        key: String,
        /// The line in the file, when known.
        line: Option<usize>,
        /// What is wrong.
        problem: String,
    },
    /// The file is not TOML, and the error cannot be tied to a key.
    Syntax {
        /// The file.
        path: PathBuf,
        /// The line, when known.
        line: Option<usize>,
        /// The parser's message.
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, .. } => {
                write!(f, "cannot read configuration file {}", path.display())
            }
            ConfigError::Invalid {
                origin,
                key,
                line,
                problem,
            } => {
                write!(f, "invalid configuration in {origin}: key `{key}`")?;
                if let Some(line) = line {
                    write!(f, " (line {line})")?;
                }
                write!(f, ": {problem}")
            }
            ConfigError::Syntax {
                path,
                line,
                message,
            } => {
                write!(f, "invalid TOML in {}", path.display())?;
                if let Some(line) = line {
                    write!(f, " (line {line})")?;
                }
                write!(f, ": {message}")
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl ConfigError {
    /// A problem with `key` of a configuration from `origin`.
    pub(crate) fn invalid(
        origin: &Origin,
        key: impl Into<String>,
        problem: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            origin: origin.clone(),
            key: key.into(),
            line: None,
            problem: problem.into(),
        }
    }
}

/// Reads a whole small file, refusing anything larger than [`MAX_CONFIG_FILE_BYTES`].
pub(crate) fn read_small_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    file.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_CONFIG_FILE_BYTES} bytes"),
        ));
    }
    Ok(text)
}

/// Reads and deserialises the TOML file at `path`.
///
/// # Errors
/// [`ConfigError::Read`] if it cannot be read; [`ConfigError::Invalid`] naming the key (and the
/// line) for unknown keys, wrong types and bad values; [`ConfigError::Syntax`] otherwise.
pub(crate) fn load_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = read_small_file(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_toml(&text, path)
}

/// Deserialises `text`, read from `path`.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|error| {
        let message = error.message().trim().to_owned();
        let located = error.span().map(|span| locate_key(text, span.start));
        match located {
            Some((line, Some(key))) => ConfigError::Invalid {
                origin: Origin::File(path.to_path_buf()),
                key,
                line: Some(line),
                problem: message,
            },
            Some((line, None)) => match missing_field(&message) {
                Some(field) => ConfigError::Invalid {
                    origin: Origin::File(path.to_path_buf()),
                    key: field,
                    line: Some(line),
                    problem: message,
                },
                None => ConfigError::Syntax {
                    path: path.to_path_buf(),
                    line: Some(line),
                    message,
                },
            },
            None => match missing_field(&message) {
                Some(field) => ConfigError::Invalid {
                    origin: Origin::File(path.to_path_buf()),
                    key: field,
                    line: None,
                    problem: message,
                },
                None => ConfigError::Syntax {
                    path: path.to_path_buf(),
                    line: None,
                    message,
                },
            },
        }
    })
}

/// The field named in serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// The line (1-based) of byte `offset` in `text`, and the dotted key whose value or name is at
/// that place, found from the `key =` on the line (or the nearest one above it inside a
/// multi-line value) and the `[table]` header in effect.
fn locate_key(text: &str, offset: usize) -> (usize, Option<String>) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line_no = before.matches('\n').count() + 1;
    let lines: Vec<&str> = text.lines().collect();
    let mut key = None;
    let mut header = None;
    for line in lines.iter().take(line_no).rev() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            let name = trimmed
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim();
            header = Some(name.to_owned());
            break;
        }
        if key.is_none()
            && !trimmed.starts_with('#')
            && let Some((name, _)) = trimmed.split_once('=')
        {
            let name = name.trim().trim_matches('"');
            if !name.is_empty() {
                key = Some(name.to_owned());
            }
        }
    }
    let full = match (header, key) {
        (Some(h), Some(k)) if !h.is_empty() => Some(format!("{h}.{k}")),
        (_, Some(k)) => Some(k),
        (Some(h), None) if !h.is_empty() => Some(h),
        _ => None,
    };
    (line_no, full)
}

/// Resolves `path` against the directory of the configuration file it came from.
pub(crate) fn resolve_path(origin: &Origin, path: &Path) -> PathBuf {
    match origin {
        Origin::File(file) if path.is_relative() => file
            .parent()
            .map(|dir| dir.join(path))
            .unwrap_or_else(|| path.to_path_buf()),
        _ => path.to_path_buf(),
    }
}

/// A duration in a configuration file: a string with units (`"30s"`, `"1h30m"`, `"0"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HumanDuration(pub(crate) Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"30s\", \"500ms\" or \"1h30m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                parse_duration(v).map(HumanDuration).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                if v == 0 {
                    return Ok(HumanDuration(Duration::ZERO));
                }
                Err(E::custom(format!(
                    "durations need a unit: write \"{v}s\" or \"{v}ms\", not {v}"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

/// A byte size in a configuration file: a number of bytes or a string with a unit (`"64MiB"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ByteSize(pub(crate) u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of bytes or a size string such as \"64MiB\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_bytes(v).map(ByteSize).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("a size cannot be negative ({v})")))
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_bytes(self.0))
    }
}

/// Where a shared secret comes from: inline in the file, or a file holding it.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct SecretSource {
    /// `shared_secret`: the secret itself.
    pub(crate) inline: Option<String>,
    /// `shared_secret_file`: a file whose content (without a trailing newline) is the secret.
    pub(crate) file: Option<PathBuf>,
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSource")
            .field("inline", &self.inline.as_ref().map(|_| "<redacted>"))
            .field("file", &self.file)
            .finish()
    }
}

impl SecretSource {
    /// Reads the secret. `prefix` is the table holding the keys (`workers.` or empty).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when neither or both keys are set, the file cannot be read, or
    /// the secret is empty.
    pub(crate) fn load(&self, origin: &Origin, prefix: &str) -> Result<Vec<u8>, ConfigError> {
        let inline_key = format!("{prefix}shared_secret");
        let file_key = format!("{prefix}shared_secret_file");
        let secret = match (&self.inline, &self.file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    origin,
                    inline_key.clone(),
                    format!("set either {inline_key} or {file_key}, not both"),
                ));
            }
            (None, None) => {
                let how = match origin {
                    Origin::File(_) => {
                        format!("set {file_key} to a file holding it (or {inline_key})")
                    }
                    Origin::CommandLine => {
                        "pass --shared-secret-file FILE (or a configuration file with --config)"
                            .to_owned()
                    }
                };
                return Err(ConfigError::invalid(
                    origin,
                    inline_key.clone(),
                    format!("a shared secret is required: {how}"),
                ));
            }
            (Some(secret), None) => secret.clone().into_bytes(),
            (None, Some(file)) => {
                let path = resolve_path(origin, file);
                let text = read_small_file(&path).map_err(|e| {
                    ConfigError::invalid(
                        origin,
                        file_key.clone(),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                text.trim_end_matches(['\n', '\r']).as_bytes().to_vec()
            }
        };
        if secret.is_empty() {
            return Err(ConfigError::invalid(
                origin,
                inline_key,
                "the shared secret is empty",
            ));
        }
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        #[serde(default)]
        name: String,
        #[serde(default)]
        section: Section,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Section {
        #[serde(default)]
        wait: Option<HumanDuration>,
        #[serde(default)]
        size: Option<ByteSize>,
    }

    fn error_of(text: &str) -> String {
        parse_toml::<Sample>(text, Path::new("sample.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_the_dotted_key_and_the_line() {
        // Goal: unknown keys, wrong types and bad values all name `table.key`, file and line.
        let unknown = error_of("name = \"x\"\n[section]\nwiat = \"1s\"\n");
        assert!(unknown.contains("sample.toml"), "{unknown}");
        assert!(unknown.contains("`section.wiat` (line 3)"), "{unknown}");
        let bad_duration = error_of("[section]\nwait = \"10x\"\n");
        assert!(
            bad_duration.contains("`section.wait` (line 2)"),
            "{bad_duration}"
        );
        assert!(bad_duration.contains("unknown unit"), "{bad_duration}");
        let no_unit = error_of("[section]\nwait = 10\n");
        assert!(no_unit.contains("need a unit"), "{no_unit}");
        let wrong_type = error_of("name = 3\n");
        assert!(wrong_type.contains("`name` (line 1)"), "{wrong_type}");
    }

    #[test]
    fn values_with_units_are_read() {
        // Goal: durations and sizes in files accept the documented forms.
        let s: Sample = parse_toml(
            "[section]\nwait = \"1m30s\"\nsize = \"4KiB\"\n",
            Path::new("s.toml"),
        )
        .unwrap();
        assert_eq!(s.section.wait, Some(HumanDuration(Duration::from_secs(90))));
        assert_eq!(s.section.size, Some(ByteSize(4096)));
    }

    #[test]
    fn secrets_come_from_exactly_one_place_and_are_never_empty() {
        // Goal: both or neither source is refused, a file's trailing newline is dropped, empty is
        // refused, and Debug output never shows the secret.
        let dir = tempfile::tempdir().unwrap();
        let origin = Origin::File(dir.path().join("w.toml"));
        std::fs::write(dir.path().join("s"), "hunter2\n").unwrap();
        let from_file = SecretSource {
            inline: None,
            file: Some("s".into()),
        };
        assert_eq!(from_file.load(&origin, "").unwrap(), b"hunter2");
        let neither = SecretSource::default().load(&origin, "workers.");
        assert!(
            neither
                .unwrap_err()
                .to_string()
                .contains("`workers.shared_secret`")
        );
        let both = SecretSource {
            inline: Some("a".into()),
            file: Some("s".into()),
        };
        assert!(both.load(&origin, "").is_err());
        let empty = SecretSource {
            inline: Some(String::new()),
            file: None,
        };
        assert!(empty.load(&origin, "").is_err());
        let shown = format!(
            "{:?}",
            SecretSource {
                inline: Some("hunter2".into()),
                file: None
            }
        );
        assert!(!shown.contains("hunter2"));
    }
}

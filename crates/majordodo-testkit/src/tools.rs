//! The Java tools built by `scripts/test-deps` (official BookKeeper client), and helpers to read
//! what they print: one JSON object per line on stdout, each with an `"event"` field.
//!
//! | tool | prints |
//! |---|---|
//! | [`BK_WRITE`] | `created` (ledger id, ensemble), one `entry` per entry (entry id, length, `crc32`, `hex`), then `closed` or `left_open` |
//! | [`BK_READ`] | `opened` (closed flag, LAC, length), optional `lac`, one `entry` per entry (`hex` or `base64`), then `done` |
//! | [`BK_BENCH`] | `bench_config`, then `bench_result` (entries/s, MB/s, p50/p99/p999 latency in ms) |
//!
//! Every tool prints an `error` event and exits non-zero on failure (2 for a wrong command line).
//! Options are documented in each tool's Java source under `java/src/main/java`.

use crate::error::TestkitError;

/// Java package of our tools; [`crate::BkCluster::run_java_tool`] prefixes a bare class name
/// with it.
pub const TOOLS_PACKAGE: &str = "rs.majordodo.testkit.tools";

/// Creates a ledger, appends entries, closes it (or leaves it open).
pub const BK_WRITE: &str = "BkWrite";

/// Opens a ledger (optionally with recovery) and prints its entries.
pub const BK_READ: &str = "BkRead";

/// The Java client's append benchmark.
pub const BK_BENCH: &str = "BkBench";

/// BookKeeper's own administration shell (see [`crate::BkCluster::bookie_shell`]).
pub const BOOKIE_SHELL: &str = "org.apache.bookkeeper.bookie.BookieShell";

/// Environment variable the harness sets for tool runs; the tools take the cluster's metadata
/// service URI from it when no `--metadata-uri`/`--zk` is given.
pub const METADATA_URI_ENV: &str = "MAJORDODO_TESTKIT_METADATA_URI";

/// Parses the JSON objects a tool printed, one a line. Lines that do not start with `{` (a JVM
/// or library message that slipped onto stdout) are skipped.
///
/// # Errors
/// [`TestkitError::BadToolOutput`] when a line starting with `{` is not valid JSON.
pub fn json_lines(stdout: &[u8]) -> Result<Vec<serde_json::Value>, TestkitError> {
    let text = String::from_utf8_lossy(stdout);
    text.lines()
        .enumerate()
        .filter(|(_, line)| line.trim_start().starts_with('{'))
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|source| TestkitError::BadToolOutput {
                line: i + 1,
                source,
            })
        })
        .collect()
}

/// The objects among `lines` whose `"event"` is `event`, in order.
pub fn events<'a>(
    lines: &'a [serde_json::Value],
    event: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    lines
        .iter()
        .filter(move |line| line.get("event").and_then(|e| e.as_str()) == Some(event))
}

/// The payload `BkWrite --entry-size size` writes as entry `index`:
/// `payload[j] = (index * 7 + j) mod 251`. Lets a Rust test rebuild it byte for byte.
pub fn sized_payload(index: u64, size: usize) -> Vec<u8> {
    /// A prime below 256, so the pattern does not repeat at power-of-two offsets.
    const MODULUS: u64 = 251;
    let base = index.wrapping_mul(7) % MODULUS;
    (0..size as u64)
        .map(|j| ((base + j % MODULUS) % MODULUS) as u8)
        .collect()
}

/// The payload `BkWrite --payload-pattern pattern` writes as entry `index`: the pattern with
/// every `{i}` replaced by the index, as UTF-8.
pub fn pattern_payload(index: u64, pattern: &str) -> Vec<u8> {
    pattern.replace("{i}", &index.to_string()).into_bytes()
}

/// Lower-case hex, as the tools print payloads.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Decodes lower- or upper-case hex; `None` on odd length or a non-hex digit.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sized_payload_follows_the_documented_formula() {
        // The Rust and Java sides must produce the same bytes for the same entry.
        let p = sized_payload(3, 300);
        assert_eq!(p.len(), 300);
        for (j, b) in p.iter().enumerate() {
            assert_eq!(u64::from(*b), (3 * 7 + j as u64) % 251);
        }
        assert!(sized_payload(0, 0).is_empty());
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        // Payload comparison relies on exact hex decoding.
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&bytes)), Some(bytes));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("é"), None);
    }

    #[test]
    fn json_lines_skips_noise_and_reports_bad_json() {
        // JVM messages on stdout are skipped; a broken JSON line is an error naming the line.
        let out = b"SLF4J: noise\n{\"event\":\"a\",\"n\":1}\n{\"event\":\"b\"}\n";
        let lines = json_lines(out).expect("valid");
        assert_eq!(lines.len(), 2);
        assert_eq!(events(&lines, "b").count(), 1);
        let err = json_lines(b"{\"event\":\n").expect_err("broken line");
        assert!(matches!(err, TestkitError::BadToolOutput { line: 1, .. }));
    }
}

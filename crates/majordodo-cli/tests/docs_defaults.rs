//! docs/configuration.md against the binary: every default the document gives for a key of the
//! broker's or the worker's file is the one `--print-default-config` prints, and every key the
//! printed files set is documented, so the document cannot drift from the code.
//!
//! How the two are read:
//! - In the document, the sections "The broker's file" and "The worker's file" hold one table of
//!   keys per TOML table, introduced by a line starting with "Top level" or with `` `[name]` ``.
//!   A default cell that starts with a backticked literal documents that value; other cells
//!   (*required*, "the host name", none) document no literal and are not compared.
//! - In a printed file, `key = value` lines are the defaults. A table printed commented out
//!   (`# [executors.render]`, a template) gives its defaults as commented `# key = value` lines;
//!   commented lines in a table that is not commented out are examples and are ignored.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

/// (TOML table, key) → value.
type Keys = BTreeMap<(String, String), toml::Value>;

/// The TOML table a documented or printed table name stands for: the per-type executor tables
/// are one template.
fn normalize_table(name: &str) -> String {
    match name.split_once('.') {
        Some(("executors", _)) => "executors.<task type>".to_owned(),
        _ => name.to_owned(),
    }
}

/// `value` of `key = value` (trailing comment allowed), if the line is a TOML key/value pair.
fn key_value(line: &str) -> Option<(String, toml::Value)> {
    let table: toml::Table = line.parse().ok()?;
    let mut entries = table.into_iter();
    let entry = entries.next()?;
    entries.next().is_none().then_some(entry)
}

/// The defaults a printed file gives, and the keys it sets outside commented-out tables.
fn printed_defaults(text: &str) -> (Keys, Vec<(String, String)>) {
    let mut defaults = Keys::new();
    let mut set = Vec::new();
    let mut table = String::new();
    let mut commented_table = false;
    for line in text.lines() {
        let (commented, body) = match line.strip_prefix('#') {
            Some(rest) => (true, rest.trim()),
            None => (false, line.trim()),
        };
        if body.starts_with('[') && body.ends_with(']') && !body.contains(' ') {
            table = normalize_table(body.trim_matches(|c| c == '[' || c == ']'));
            commented_table = commented;
            continue;
        }
        if commented && !commented_table {
            continue;
        }
        if let Some((key, value)) = key_value(body) {
            if !commented {
                set.push((table.clone(), key.clone()));
            }
            defaults.insert((table.clone(), key), value);
        }
    }
    (defaults, set)
}

/// A documented key: its table, its name, and its literal default if the document gives one.
#[derive(Debug)]
struct DocKey {
    table: String,
    key: String,
    default: Option<String>,
    line: usize,
}

/// The keys documented in the section of `docs` headed `heading`.
fn documented_keys(docs: &str, heading: &str) -> Vec<DocKey> {
    let mut keys = Vec::new();
    let mut in_section = false;
    let mut table = None;
    for (index, line) in docs.lines().enumerate() {
        if line.starts_with("## ") {
            in_section = line == heading;
            continue;
        }
        if !in_section {
            continue;
        }
        if line.starts_with("Top level") {
            table = Some(String::new());
        } else if let Some(rest) = line.strip_prefix('`')
            && rest.starts_with('[')
        {
            let name = rest.split('`').next().unwrap_or("");
            table = Some(normalize_table(name.trim_matches(|c| c == '[' || c == ']')));
        } else if let Some(row) = line.strip_prefix("| `") {
            let table = table
                .clone()
                .unwrap_or_else(|| panic!("line {}: a key row before any table", index + 1));
            let cells: Vec<&str> = row.split(" | ").collect();
            let key = cells[0].trim_end_matches('`').to_owned();
            let default = cells.get(1).and_then(|cell| {
                let literal = cell.strip_prefix('`')?;
                Some(literal.split('`').next()?.to_owned())
            });
            keys.push(DocKey {
                table,
                key,
                default,
                line: index + 1,
            });
        }
    }
    assert!(!keys.is_empty(), "no key tables under {heading:?}");
    keys
}

/// A documented literal as the TOML value it stands for: itself when it is one (`true`, `[0]`,
/// `1024`), else a string (`16MiB`, `127.0.0.1:7364`).
fn documented_value(literal: &str) -> toml::Value {
    key_value(&format!("v = {literal}"))
        .map(|(_, v)| v)
        .unwrap_or_else(|| toml::Value::String(literal.to_owned()))
}

fn check(command: &str, heading: &str) -> Vec<String> {
    let docs_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let docs = std::fs::read_to_string(&docs_path).expect("read docs/configuration.md");
    let dir = tempfile::tempdir().unwrap();
    let printed = ok(&run_in(dir.path(), &[command, "--print-default-config"]));
    let (defaults, set) = printed_defaults(&printed);
    let documented = documented_keys(&docs, heading);
    let mut problems = Vec::new();
    for doc in &documented {
        let Some(literal) = &doc.default else {
            continue;
        };
        let name = format!("{}.{}", doc.table, doc.key);
        match defaults.get(&(doc.table.clone(), doc.key.clone())) {
            None => problems.push(format!(
                "docs/configuration.md:{}: `{name}` is documented with default `{literal}`, \
                 but `majordodo {command} --print-default-config` does not print it",
                doc.line
            )),
            Some(value) if *value != documented_value(literal) => problems.push(format!(
                "docs/configuration.md:{}: `{name}` is documented with default `{literal}`, \
                 but `majordodo {command} --print-default-config` prints {value}",
                doc.line
            )),
            Some(_) => {}
        }
    }
    for (table, key) in set {
        if !documented.iter().any(|d| d.table == table && d.key == key) {
            problems.push(format!(
                "`majordodo {command} --print-default-config` sets `{table}.{key}`, which \
                 docs/configuration.md does not document under {heading:?}"
            ));
        }
    }
    problems
}

#[test]
fn documented_defaults_are_the_printed_defaults() {
    // Goal: each documented default of the broker's and the worker's file equals the default
    // the binary prints, and each printed key is documented (a regression: scan_budget was
    // documented as 100000 while the broker uses 50000).
    let mut problems = check("broker", "## The broker's file");
    problems.extend(check("worker", "## The worker's file"));
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_readers_of_this_test_see_what_they_expect() {
    // Goal: the document's literals and the printed lines are read as the module doc says.
    assert_eq!(
        documented_value("16MiB"),
        toml::Value::String("16MiB".into())
    );
    assert_eq!(documented_value("100"), toml::Value::Integer(100));
    assert_eq!(documented_value("[0]"), toml::Value::Array(vec![0.into()]));
    let (defaults, set) = printed_defaults(
        "a = 1\n# b = 2\n[t]\nc = \"x\" # why\n# Prose = comment\n# [executors.x]\n# d = 3 # e\n",
    );
    let keys: Vec<String> = defaults.keys().map(|(t, k)| format!("{t}.{k}")).collect();
    assert_eq!(keys, vec![".a", "executors.<task type>.d", "t.c"]);
    assert_eq!(set.len(), 2);
}

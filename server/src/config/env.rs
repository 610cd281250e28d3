//! The layering of the configuration: the TOML file, then `SLUICE_*` variables, each
//! variable read as TOML (numbers, booleans, arrays) unless its key takes a string; and error
//! texts that never echo a value (it may be a secret).

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::ServerConfig;

/// Builds the layered table: the file (if any), then `SLUICE_*` variables from `env`. Not
/// validated: the binary applies its flags first, then calls [`ServerConfig::validate`].
pub fn layered(
    file: Option<&Path>,
    env: impl Iterator<Item = (String, String)>,
) -> Result<ServerConfig> {
    let mut table = match file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading config {}", p.display()))?;
            parse_file(&text).with_context(|| format!("parsing config {}", p.display()))?
        }
        None => toml::Table::new(),
    };
    let mut sniffed = Vec::new();
    let mut set_by = Vec::new();
    for (key, value) in env {
        let (found, path) = apply_env(&mut table, &key, &value)?;
        sniffed.extend(found);
        set_by.extend(path.map(|p| (p, key)));
    }
    loop {
        let e = match toml::Value::Table(table.clone()).try_into::<ServerConfig>() {
            Ok(cfg) => return Ok(cfg),
            Err(e) => e.to_string(),
        };
        // A variable read as a number or boolean where the key takes a string (a digit-only
        // secret or name) is taken as the string it was: each such variable once at most.
        // Arrays and tables are not: taken as a string after another mistake (an unknown
        // field inside an array of tables, a bad address in a list), the variable was
        // reported as "a string where a sequence was expected" instead of its real mistake.
        match sniffed
            .iter()
            .position(|s: &Sniffed| e.contains(&format!("in `{}`", s.path)))
        {
            Some(i) => sniffed.swap_remove(i).restore(&mut table),
            None => bail!("{}", config_error(&e, &set_by)),
        }
    }
}

/// The deserializer's error, without quoted values, naming the environment variable that
/// set the key it is about (the file has no such line to look for).
fn config_error(e: &str, set_by: &[(String, String)]) -> String {
    let mut out = format!("invalid configuration: {}", without_values(e));
    if e.contains("unknown field") {
        out.push_str(" (unknown keys are refused)");
    }
    // A value is named by its path; an unknown key by its own name, in its table's path.
    let named = |path: &str| {
        e.contains(&format!("in `{path}`"))
            || path.rsplit_once('.').is_some_and(|(table, key)| {
                e.contains(&format!("unknown field `{key}`"))
                    && e.contains(&format!("in `{table}`"))
            })
    };
    if let Some((_, var)) = set_by.iter().find(|(path, _)| named(path)) {
        out.push_str(&format!(" (set by the environment variable {var})"));
    }
    out
}

/// The file's table. A syntax error names its line and column and what is wrong, but not the
/// line's text, which may hold a secret (`secret = "abc` without its closing quote).
fn parse_file(text: &str) -> Result<toml::Table> {
    text.parse::<toml::Table>().map_err(|e| {
        let at = e.span().map_or(String::new(), |span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" at line {line}, column {column}")
        });
        anyhow::anyhow!("TOML syntax error{at}: {}", e.message())
    })
}

/// A `SLUICE_*` value that read as TOML other than a string, kept to be taken as a string
/// when its key turns out to take one.
struct Sniffed {
    /// `section.field`, or the top-level key.
    path: String,
    raw: String,
}

impl Sniffed {
    fn restore(self, table: &mut toml::Table) {
        let value = toml::Value::String(self.raw);
        match self.path.split_once('.') {
            Some((section, field)) => {
                if let Some(sub) = table.get_mut(section).and_then(|v| v.as_table_mut()) {
                    sub.insert(field.to_string(), value);
                }
            }
            None => {
                table.insert(self.path, value);
            }
        }
    }
}

const SECTIONS: [&str; 9] = [
    "namesrv", "broker", "store", "http", "txn", "schedule", "retry", "acl", "tls",
];
/// Variables that configure something other than the file's keys (the crash point is a test
/// hook, checked by `sluice_store::crash_point::armed` at start).
const NOT_CONFIG: [&str; 3] = [
    "SLUICE_LOG",
    "SLUICE_CONFIG",
    sluice_store::crash_point::VAR,
];

/// `SLUICE_BROKER_LISTEN=...` sets `[broker] listen`; `SLUICE_DATA_DIR` sets `data_dir`.
/// Values are read as TOML (numbers, booleans, arrays) and otherwise as strings; one read as
/// something else than a string is returned, to be taken as a string if its key needs one.
/// Also returns the key's path (`section.field`) when the variable set one.
fn apply_env(
    table: &mut toml::Table,
    key: &str,
    value: &str,
) -> Result<(Option<Sniffed>, Option<String>)> {
    let Some(rest) = key.strip_prefix("SLUICE_") else {
        return Ok((None, None));
    };
    if NOT_CONFIG.contains(&key) {
        return Ok((None, None));
    }
    let rest = rest.to_ascii_lowercase();
    if rest != "data_dir" && !SECTIONS.iter().any(|s| rest.starts_with(&format!("{s}_"))) {
        // Not a key of the file: SLUICE_NAMESRV and SLUICE_HTTP are the examples' addresses of
        // a running Sluice, SLUICE_CRASH_CYCLES and the like configure tests. Taking them as
        // keys made `sluice` refuse to start in a shell that had them set.
        eprintln!("sluice: {key} is not a configuration variable; ignored");
        return Ok((None, None));
    }
    let parsed = parse_env_value(value);
    let sniffed = |path: String, parsed: &toml::Value| {
        let scalar = !(parsed.is_str() || parsed.is_array() || parsed.is_table());
        scalar.then(|| Sniffed {
            path,
            raw: value.to_string(),
        })
    };
    for section in SECTIONS {
        if let Some(field) = rest.strip_prefix(section).and_then(|r| r.strip_prefix('_')) {
            let entry = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(sub) = entry.as_table_mut() else {
                bail!("[{section}] in the config file is not a table")
            };
            let path = format!("{section}.{field}");
            let found = sniffed(path.clone(), &parsed);
            sub.insert(field.to_string(), parsed);
            return Ok((found, Some(path)));
        }
    }
    let found = sniffed(rest.clone(), &parsed);
    table.insert(rest.clone(), parsed);
    Ok((found, Some(rest)))
}

/// An error text with its quoted values left out: a value of the wrong type is quoted in it,
/// and the value may be a secret (`SLUICE_ACL_ACCOUNTS`, `SLUICE_HTTP_TOKENS` with a quoting
/// mistake fell back to a plain string and was printed whole).
fn without_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut quoted, mut escaped) = (false, false);
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        // serde quotes a value of the wrong type in backticks (``invalid type: integer
        // `1234`, expected a string``); the key path is the line "in `http.secret`".
        if line.starts_with("in `") {
            out.push_str(line);
        } else {
            out.push_str(&without_backticked(line));
        }
        if lines.peek().is_some() {
            out.push('\n');
        }
    }
    let text = std::mem::take(&mut out);
    for c in text.chars() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => quoted = false,
            (true, false, _) => {}
            (false, _, '"') => {
                out.push_str("\"…\"");
                quoted = true;
            }
            (false, _, c) => out.push(c),
        }
    }
    out
}

/// `line` with the value serde quotes in backticks after "invalid type: integer" or
/// "invalid value: ..." replaced by `…`; other backticked names (unknown fields, the
/// expected ones) stay, since they name keys, not values.
fn without_backticked(line: &str) -> String {
    let Some(start) = ["invalid type: ", "invalid value: "]
        .iter()
        .find_map(|p| line.find(p).map(|i| i + p.len()))
    else {
        return line.to_string();
    };
    let rest = &line[start..];
    match rest.find('`').and_then(|open| {
        let close = rest[open + 1..].find('`')? + open + 1;
        Some((open, close))
    }) {
        Some((open, close)) => format!(
            "{}{}`…`{}",
            &line[..start],
            &rest[..open],
            &rest[close + 1..]
        ),
        None => line.to_string(),
    }
}

fn parse_env_value(value: &str) -> toml::Value {
    format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()))
}

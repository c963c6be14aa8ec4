//! Configuration files for `serve` and `agent` (TOML; see
//! `liaison.example.toml` and `agent.example.toml`).
//!
//! A file's keys are the long flags of the command, in snake_case. The file
//! only supplies defaults: `LIAISON_*` environment variables override it, and
//! flags override both. It works by turning the file into flags placed
//! before the ones typed (later flags win), leaving out keys whose
//! environment variable is set.

use std::ffi::OsString;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::alert_args::parse_duration;

/// How a key's value becomes a flag.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Text,
    Number,
    Duration,
    /// A list, joined with commas.
    List,
    /// true: the flag is given; false: it is not.
    Switch,
}

/// (key, flag, environment variable, shape)
type Key = (&'static str, &'static str, Option<&'static str>, Shape);

const SERVE: &[Key] = &[
    ("listen", "--listen", Some("LIAISON_LISTEN"), Shape::Text),
    ("data", "--data", Some("LIAISON_DATA"), Shape::Text),
    ("certs", "--certs", Some("LIAISON_CERTS"), Shape::Text),
    ("policy", "--policy", Some("LIAISON_POLICY"), Shape::Text),
    ("metrics", "--metrics", Some("LIAISON_METRICS"), Shape::Text),
    ("max_alert_bytes", "--max-alert-bytes", None, Shape::Number),
    ("retain", "--retain", None, Shape::Duration),
    ("retain_bytes", "--retain-bytes", None, Shape::Number),
    ("shutdown_grace", "--shutdown-grace", None, Shape::Duration),
    ("min_free_disk", "--min-free-disk", None, Shape::Number),
    (
        "checkpoint_interval",
        "--checkpoint-interval",
        None,
        Shape::Duration,
    ),
    (
        "key_file",
        "--key-file",
        Some("LIAISON_KEY_FILE"),
        Shape::Text,
    ),
    ("passphrase", "--passphrase", None, Shape::Switch),
];

const AGENT: &[Key] = &[
    (
        "upstream",
        "--upstream",
        Some("LIAISON_UPSTREAM"),
        Shape::Text,
    ),
    ("certs", "--certs", Some("LIAISON_CERTS"), Shape::Text),
    ("name", "--name", Some("LIAISON_NAME"), Shape::Text),
    (
        "listen",
        "--listen",
        Some("LIAISON_AGENT_LISTEN"),
        Shape::Text,
    ),
    ("listen_cert", "--listen-cert", None, Shape::Text),
    ("listen_key", "--listen-key", None, Shape::Text),
    ("data", "--data", Some("LIAISON_AGENT_DATA"), Shape::Text),
    (
        "outbox_max_alerts",
        "--outbox-max-alerts",
        None,
        Shape::Number,
    ),
    (
        "outbox_max_bytes",
        "--outbox-max-bytes",
        None,
        Shape::Number,
    ),
    ("inbox_feed", "--inbox-feed", None, Shape::Text),
    ("categories", "--category", None, Shape::List),
    ("min_severity", "--min-severity", None, Shape::Text),
    ("origin_countries", "--origin-country", None, Shape::List),
    (
        "include_exercise",
        "--include-exercise",
        None,
        Shape::Switch,
    ),
    ("include_test", "--include-test", None, Shape::Switch),
    ("max_backoff", "--max-backoff", None, Shape::Duration),
    ("keepalive", "--keepalive", None, Shape::Duration),
    ("metrics", "--metrics", Some("LIAISON_METRICS"), Shape::Text),
    ("min_free_disk", "--min-free-disk", None, Shape::Number),
    (
        "checkpoint_interval",
        "--checkpoint-interval",
        None,
        Shape::Duration,
    ),
    (
        "key_file",
        "--key-file",
        Some("LIAISON_KEY_FILE"),
        Shape::Text,
    ),
    ("passphrase", "--passphrase", None, Shape::Switch),
];

/// Which command a file configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Serve,
    Agent,
}

impl Kind {
    fn keys(self) -> &'static [Key] {
        match self {
            Kind::Serve => SERVE,
            Kind::Agent => AGENT,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Serve => "serve",
            Kind::Agent => "agent",
        }
    }
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

#[derive(Deserialize)]
struct RawFile(std::collections::BTreeMap<String, Spanned<toml::Value>>);

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Turns one value into flag arguments, or says what is wrong with it.
fn flag_args(key: &Key, value: &toml::Value) -> Result<Vec<String>, String> {
    let (name, flag, _, shape) = *key;
    let wrong = |what: &str| Err(format!("{name}: expected {what}"));
    Ok(match (shape, value) {
        (Shape::Text, toml::Value::String(s)) => vec![flag.to_owned(), s.clone()],
        (Shape::Text, _) => return wrong("a string"),
        (Shape::Number, toml::Value::Integer(i)) if *i >= 0 => vec![flag.to_owned(), i.to_string()],
        (Shape::Number, _) => return wrong("a whole number, 0 or more"),
        (Shape::Duration, toml::Value::String(s)) => {
            parse_duration(s).map_err(|e| format!("{name}: {e}"))?;
            vec![flag.to_owned(), s.clone()]
        }
        (Shape::Duration, _) => return wrong("a duration such as \"30s\" or \"365days\""),
        (Shape::List, toml::Value::Array(items)) => {
            let texts: Option<Vec<&str>> = items.iter().map(toml::Value::as_str).collect();
            match texts {
                Some(t) if t.is_empty() => Vec::new(),
                Some(t) => vec![flag.to_owned(), t.join(",")],
                None => return wrong("a list of strings"),
            }
        }
        (Shape::List, _) => return wrong("a list of strings"),
        (Shape::Switch, toml::Value::Boolean(true)) => vec![flag.to_owned()],
        (Shape::Switch, toml::Value::Boolean(false)) => Vec::new(),
        (Shape::Switch, _) => return wrong("true or false"),
    })
}

/// One setting of a file: its line and its flags.
pub struct Setting {
    pub line: usize,
    pub key: &'static str,
    pub flags: Vec<String>,
}

/// The settings of a file, each with its line and its flags; keys whose
/// environment variable is set are left out (the environment wins over the
/// file).
///
/// # Errors
/// Every problem, each with its line: syntax, unknown keys, wrong types,
/// malformed durations.
pub fn settings(
    text: &str,
    kind: Kind,
    env_set: impl Fn(&str) -> bool,
) -> Result<Vec<Setting>, Vec<ConfigError>> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        vec![ConfigError {
            line: e.span().map_or(0, |s| line_of(text, s.start)),
            message: e.message().to_owned(),
        }]
    })?;
    let mut flags = Vec::new();
    let mut errors = Vec::new();
    for (name, value) in &raw.0 {
        let line = line_of(text, value.span().start);
        if kind == Kind::Serve && FEDERATION_TABLES.contains(&name.as_str()) {
            // Checked by `peers::parse`; passed on as --federation-config.
            continue;
        }
        let Some(key) = kind.keys().iter().find(|k| k.0 == name) else {
            let known: Vec<&str> = kind.keys().iter().map(|k| k.0).collect();
            errors.push(ConfigError {
                line,
                message: format!(
                    "`{name}` is not a setting of `{}` (known: {})",
                    kind.name(),
                    known.join(", ")
                ),
            });
            continue;
        };
        match flag_args(key, value.get_ref()) {
            Ok(_) if key.2.is_some_and(&env_set) => {}
            Ok(args) => flags.push(Setting {
                line,
                key: key.0,
                flags: args,
            }),
            Err(message) => errors.push(ConfigError { line, message }),
        }
    }
    if errors.is_empty() {
        Ok(flags)
    } else {
        Err(errors)
    }
}

/// The serve file's tables of federation entries (see `peers`).
pub const FEDERATION_TABLES: &[&str] = &["peer", "origin"];

/// Whether a serve file has federation entries.
fn has_federation(text: &str) -> bool {
    toml::from_str::<toml::Table>(text)
        .is_ok_and(|t| FEDERATION_TABLES.iter().any(|k| t.contains_key(*k)))
}

/// Guesses the kind of a file: an agent's has `upstream`.
pub fn kind_of(text: &str) -> Kind {
    match toml::from_str::<toml::Table>(text) {
        Ok(t) if t.contains_key("upstream") => Kind::Agent,
        _ => Kind::Serve,
    }
}

/// Rewrites `liaison serve|agent … --config FILE …` so that the file's
/// settings come first and what was typed wins.
///
/// # Errors
/// A message listing every problem of the file, with lines.
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    // Find the subcommand past the global flags (`liaison --log-format json serve …`).
    let mut at = 1;
    while let Some(arg) = args.get(at).and_then(|a| a.to_str()) {
        match arg {
            "--log-format" => at += 2,
            a if a.starts_with("--log-format=") => at += 1,
            _ => break,
        }
    }
    let kind = match args.get(at).and_then(|a| a.to_str()) {
        Some("serve") => Kind::Serve,
        Some("agent") => Kind::Agent,
        _ => return Ok(args),
    };
    let mut rest = Vec::new();
    let mut file = None;
    let mut iter = args.iter().skip(at + 1).cloned();
    while let Some(arg) = iter.next() {
        match arg.to_str() {
            Some("--config") => file = iter.next(),
            Some(a) if a.starts_with("--config=") => {
                file = Some(OsString::from(&a["--config=".len()..]))
            }
            _ => rest.push(arg),
        }
    }
    let Some(file) = file else {
        return Ok(args);
    };
    let path = Path::new(&file);
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let settings =
        settings(&text, kind, |var| std::env::var_os(var).is_some()).map_err(|errors| {
            let lines: Vec<String> = errors
                .iter()
                .map(|e| format!("{}:{e}", path.display()))
                .collect();
            format!(
                "{} is not a valid `{}` configuration:\n{}",
                path.display(),
                kind.name(),
                lines.join("\n")
            )
        })?;
    // A setting typed on the command line replaces the file's entirely (a
    // list flag must not add to the file's list, a switch must stay off).
    let typed = |flag: &str| {
        rest.iter()
            .filter_map(|a| a.to_str())
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    let flag_of = |key: &str| kind.keys().iter().find(|k| k.0 == key).map(|k| k.1);
    let mut out: Vec<OsString> = args[..=at].to_vec();
    if kind == Kind::Serve && has_federation(&text) {
        out.push("--federation-config".into());
        out.push(file.clone());
    }
    for s in settings {
        if !flag_of(s.key).is_some_and(typed) {
            out.extend(s.flags.into_iter().map(OsString::from));
        }
    }
    out.extend(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags a file makes, in order.
    fn to_flags(
        text: &str,
        kind: Kind,
        env_set: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, Vec<ConfigError>> {
        Ok(settings(text, kind, env_set)?
            .into_iter()
            .flat_map(|s| s.flags)
            .collect())
    }

    #[test]
    fn a_file_becomes_flags_and_the_environment_wins_over_it() {
        let text = "listen = \"0.0.0.0:7443\"\ndata = \"/var/lib/liaison\"\nretain = \"90days\"\n";
        let flags = to_flags(text, Kind::Serve, |_| false).expect("valid");
        assert_eq!(
            flags,
            [
                "--data",
                "/var/lib/liaison",
                "--listen",
                "0.0.0.0:7443",
                "--retain",
                "90days"
            ]
        );
        let flags = to_flags(text, Kind::Serve, |v| v == "LIAISON_LISTEN").expect("valid");
        assert!(!flags.contains(&"--listen".to_owned()));
    }

    #[test]
    fn errors_name_their_lines() {
        let text = "listen = 7443\nretain = \"a while\"\ncolour = \"red\"\n";
        let errors = to_flags(text, Kind::Serve, |_| false).expect_err("invalid");
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [3, 1, 2], "{errors:?}");
        assert!(errors[0].message.contains("colour"));
    }

    #[test]
    fn typed_flags_replace_the_files_settings() {
        let dir = std::env::temp_dir().join(format!("liaison-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("agent.toml");
        std::fs::write(
            &file,
            "upstream = \"https://a:7443\"\nname = \"post\"\ncategories = [\"drugs\", \"arms\"]\n",
        )
        .expect("write");
        let args: Vec<OsString> = [
            "liaison",
            "--log-format",
            "json",
            "agent",
            "--config",
            file.to_str().expect("utf-8"),
            "--name",
            "other",
            "--category",
            "health",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let out: Vec<String> = expand(args)
            .expect("valid")
            .into_iter()
            .map(|a| a.into_string().expect("utf-8"))
            .collect();
        assert_eq!(
            out,
            [
                "liaison",
                "--log-format",
                "json",
                "agent",
                "--upstream",
                "https://a:7443",
                "--name",
                "other",
                "--category",
                "health"
            ]
        );
    }
}

//! The federation entries of a `serve` configuration file: `[[peer]]` (a
//! neighbouring state's broker, one link each) and `[[origin]]` (a third
//! state's broker whose signatures are accepted on relayed alerts). Each
//! problem is reported with its line.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::config::ConfigError;
use liaison::federation::{OriginConfig, PeerConfig};
use liaison::identity::{CountryCode, NodeId, is_label};

#[derive(Deserialize)]
struct RawFile {
    #[serde(default)]
    peer: Vec<Spanned<RawPeer>>,
    #[serde(default)]
    origin: Vec<Spanned<RawOrigin>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: Spanned<String>,
    broker: Spanned<String>,
    ca: Spanned<String>,
    crl: Option<Spanned<String>>,
    countries: Option<Spanned<Vec<String>>>,
    url: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrigin {
    country: Spanned<String>,
    broker: Spanned<String>,
    ca: Spanned<String>,
}

/// Checks entries, collecting every problem with its line.
struct Checker<'a> {
    text: &'a str,
    /// Relative paths in the file are relative to this directory.
    base: &'a Path,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn error<T>(&mut self, span: std::ops::Range<usize>, message: String) -> Option<T> {
        self.errors.push(ConfigError {
            line: super::config::line_of(self.text, span.start),
            message,
        });
        None
    }

    fn broker(&mut self, field: &str, raw: &Spanned<String>) -> Option<NodeId> {
        match raw.get_ref().parse::<NodeId>() {
            Ok(n) => Some(n),
            Err(e) => self.error(raw.span(), format!("{field}: {e}")),
        }
    }

    fn country(
        &mut self,
        field: &str,
        raw: &str,
        span: std::ops::Range<usize>,
    ) -> Option<CountryCode> {
        match CountryCode::parse(raw) {
            Ok(c) => Some(c),
            Err(e) => self.error(span, format!("{field}: `{raw}`: {e}")),
        }
    }

    fn file(&mut self, field: &str, raw: &Spanned<String>) -> Option<PathBuf> {
        let path = self.base.join(raw.get_ref());
        if path.is_file() {
            Some(path)
        } else {
            self.error(
                raw.span(),
                format!("{field}: {} is not a readable file", path.display()),
            )
        }
    }

    fn peer(&mut self, raw: &RawPeer) -> Option<PeerConfig> {
        let name = raw.name.get_ref();
        let name = if is_label(name) {
            Some(name.clone())
        } else {
            self.error(
                raw.name.span(),
                format!("name: `{name}` must match [a-z0-9-]{{1,63}}"),
            )
        };
        let broker = self.broker("broker", &raw.broker);
        let ca = self.file("ca", &raw.ca);
        let crl = match &raw.crl {
            Some(c) => Some(self.file("crl", c)?),
            None => None,
        };
        let countries = match &raw.countries {
            Some(list) => {
                let parsed: Vec<Option<CountryCode>> = list
                    .get_ref()
                    .iter()
                    .map(|c| self.country("countries", c, list.span()))
                    .collect();
                if list.get_ref().is_empty() {
                    return self.error(
                        list.span(),
                        "countries: at least one (normally the peer's own)".into(),
                    );
                }
                parsed.into_iter().collect::<Option<Vec<_>>>()
            }
            None => broker.as_ref().map(|b| vec![b.country()]),
        };
        let url = match &raw.url {
            Some(u) if u.get_ref().starts_with("https://") => Some(u.get_ref().clone()),
            Some(u) => {
                return self.error(
                    u.span(),
                    format!("url: `{}` must start with https://", u.get_ref()),
                );
            }
            None => None,
        };
        Some(PeerConfig {
            name: name?,
            broker: broker?,
            ca: ca?,
            crl,
            countries: countries?,
            url,
        })
    }

    fn origin(&mut self, raw: &RawOrigin) -> Option<OriginConfig> {
        let country = self.country("country", raw.country.get_ref(), raw.country.span());
        let broker = self.broker("broker", &raw.broker);
        let ca = self.file("ca", &raw.ca);
        if let (Some(c), Some(b)) = (country, &broker)
            && b.country() != c
        {
            return self.error(
                raw.broker.span(),
                format!("broker: {b} is not a broker of {c}"),
            );
        }
        Some(OriginConfig {
            country: country?,
            broker: broker?,
            ca: ca?,
        })
    }
}

/// The federation entries of a configuration file; paths in it are read
/// relative to `base` (the current directory, like every other path of
/// the file).
///
/// # Errors
/// Every problem, each with its line.
pub fn parse(
    text: &str,
    base: &Path,
) -> Result<(Vec<PeerConfig>, Vec<OriginConfig>), Vec<ConfigError>> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        vec![ConfigError {
            line: e
                .span()
                .map_or(0, |s| super::config::line_of(text, s.start)),
            message: e.message().to_owned(),
        }]
    })?;
    let mut checker = Checker {
        text,
        base,
        errors: Vec::new(),
    };
    let mut peers = Vec::new();
    let (mut names, mut brokers) = (HashSet::new(), HashSet::new());
    for entry in &raw.peer {
        let Some(peer) = checker.peer(entry.get_ref()) else {
            continue;
        };
        if !names.insert(peer.name.clone()) {
            checker.error::<()>(entry.span(), format!("peer `{}` is named twice", peer.name));
        } else if !brokers.insert(peer.broker.clone()) {
            checker.error::<()>(
                entry.span(),
                format!("broker {} is the broker of two peers", peer.broker),
            );
        } else {
            peers.push(peer);
        }
    }
    let origins: Vec<OriginConfig> = raw
        .origin
        .iter()
        .filter_map(|o| checker.origin(o.get_ref()))
        .collect();
    if checker.errors.is_empty() {
        Ok((peers, origins))
    } else {
        checker.errors.sort_by_key(|e| e.line);
        Err(checker.errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_entries_parse_with_their_defaults() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("af-ca.crt"), "x").expect("ca");
        let text = r#"
listen = "127.0.0.1:7443"

[[peer]]
name = "af"
broker = "urn:liaison:AF:liaison:broker"
ca = "af-ca.crt"
url = "https://af.example:7443"

[[origin]]
country = "UZ"
broker = "urn:liaison:UZ:liaison:broker"
ca = "af-ca.crt"
"#;
        let (peers, origins) = parse(text, dir.path()).expect("valid");
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].countries, [CountryCode::parse("AF").expect("cc")]);
        assert_eq!(peers[0].url.as_deref(), Some("https://af.example:7443"));
        assert_eq!(origins[0].country.as_str(), "UZ");
    }

    #[test]
    fn bad_entries_are_named_by_line() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("ca.crt"), "x").expect("ca");
        let text = r#"[[peer]]
name = "Afghanistan"
broker = "urn:liaison:af:liaison:broker"
ca = "missing.crt"
url = "http://plain:7443"

[[peer]]
name = "tj"
broker = "urn:liaison:TJ:liaison:broker"
ca = "ca.crt"
countries = ["tj"]

[[origin]]
country = "UZ"
broker = "urn:liaison:KZ:liaison:broker"
ca = "ca.crt"
"#;
        let errors = parse(text, dir.path()).expect_err("invalid");
        let at = |line: usize, what: &str| {
            assert!(
                errors
                    .iter()
                    .any(|e| e.line == line && e.message.contains(what)),
                "line {line} `{what}` in {errors:?}"
            );
        };
        at(2, "name");
        at(3, "broker");
        at(4, "missing.crt");
        at(5, "https://");
        at(11, "countries");
        at(15, "not a broker of UZ");
        // An unknown key and a peer named twice.
        let text = "[[peer]]\nname = \"a\"\nbroker = \"urn:liaison:AF:liaison:broker\"\nca = \"ca.crt\"\ncolour = \"red\"\n";
        let errors = parse(text, dir.path()).expect_err("unknown key");
        assert!(errors[0].message.contains("colour"), "{errors:?}");
        let one =
            "[[peer]]\nname = \"a\"\nbroker = \"urn:liaison:AF:liaison:broker\"\nca = \"ca.crt\"\n";
        let errors = parse(&format!("{one}\n{one}"), dir.path()).expect_err("twice");
        assert!(errors[0].message.contains("named twice"), "{errors:?}");
    }
}

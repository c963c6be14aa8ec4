//! The policy file (TOML): parsing, with every error tied to its line.
//! `policy.example.toml` at the repository root documents the format.

use std::fmt;

use serde::Deserialize;
use toml::Spanned;

use super::{Agreement, Categories, Policy, Role, Rule, Subject};
use crate::identity::{CountryCode, NodeId, is_label};
use crate::proto as pb;

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// 1-based line number (0 when unknown).
    pub line: usize,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    node: Vec<RawNode>,
    #[serde(default)]
    agreement: Vec<RawAgreement>,
    /// The file means to name no node (every node is refused).
    #[serde(default)]
    no_nodes: bool,
    /// The file means to have no agreement (nothing crosses a border).
    #[serde(default)]
    no_agreements: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    #[serde(rename = "match")]
    subject: Spanned<String>,
    role: Spanned<String>,
    publish: Option<Spanned<Vec<String>>>,
    subscribe: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgreement {
    between: Spanned<Vec<String>>,
    categories: Spanned<Vec<String>>,
    max_tlp: Spanned<String>,
    #[serde(default)]
    handling_codes: Option<Spanned<Vec<String>>>,
    /// EXERCISE and TEST alerts cross a federation link too.
    #[serde(default)]
    exercises: bool,
    /// Alerts imported from a third state may be passed on (TLP:CLEAR, and
    /// TLP:GREEN releasable to the next country).
    #[serde(default)]
    reshare: bool,
}

/// Collects errors with their lines while a file is checked.
struct Checker<'a> {
    text: &'a str,
    errors: Vec<PolicyError>,
}

impl Checker<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn error<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        let line = self.line(at.span().start);
        self.errors.push(PolicyError {
            line,
            message: message.into(),
        });
    }

    fn subject(&mut self, s: &Spanned<String>) -> Option<Subject> {
        let text = s.get_ref().as_str();
        let parsed = if text.starts_with("urn:") {
            text.parse::<NodeId>()
                .map(Subject::Node)
                .map_err(|e| e.to_string())
        } else if let Some((cc, agency)) = text.split_once(':') {
            match (CountryCode::parse(cc), is_label(agency)) {
                (Ok(cc), true) => Ok(Subject::Agency(cc, agency.to_owned())),
                _ => Err(format!(
                    "`{text}` is not a country and agency such as \"TJ:border-guard\""
                )),
            }
        } else {
            CountryCode::parse(text)
                .map(Subject::Country)
                .map_err(|e| format!("`{text}`: {e}"))
        };
        parsed
            .map_err(|e| self.error(s, format!("match: {e}")))
            .ok()
    }

    fn role(&mut self, s: &Spanned<String>) -> Option<Role> {
        let role = match s.get_ref().as_str() {
            "post" => Role::Post,
            "liaison_office" => Role::LiaisonOffice,
            "national_centre" => Role::NationalCentre,
            "administrator" => Role::Administrator,
            other => {
                self.error(
                    s,
                    format!("role: `{other}` is not one of post, liaison_office, national_centre, administrator"),
                );
                return None;
            }
        };
        Some(role)
    }

    fn categories(&mut self, s: &Spanned<Vec<String>>, field: &str) -> Option<Categories> {
        if s.get_ref().iter().any(|c| c == "*") {
            return Some(Categories::All);
        }
        let mut out = Vec::new();
        for name in s.get_ref() {
            let full = format!("CATEGORY_{}", name.to_ascii_uppercase());
            match pb::Category::from_str_name(&full) {
                Some(c) if c != pb::Category::Unspecified => out.push(c),
                _ => {
                    self.error(
                        s,
                        format!(
                            "{field}: `{name}` is not a category (drugs, arms, cbrn, terrorism, human_smuggling, \
                             migration, document_fraud, health, other, or \"*\" for all)"
                        ),
                    );
                    return None;
                }
            }
        }
        Some(Categories::Only(out))
    }

    fn tlp(&mut self, s: &Spanned<String>) -> Option<pb::Tlp> {
        let full = format!("TLP_{}", s.get_ref().to_ascii_uppercase());
        match pb::Tlp::from_str_name(&full) {
            Some(t) if t != pb::Tlp::Unspecified => Some(t),
            _ => {
                self.error(
                    s,
                    format!(
                        "max_tlp: `{}` is not one of clear, green, amber, amber_strict, red",
                        s.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn node(&mut self, raw: &RawNode) -> Option<Rule> {
        let subject = self.subject(&raw.subject);
        let role = self.role(&raw.role);
        let publish = match &raw.publish {
            Some(p) => self.categories(p, "publish"),
            None => Some(match role {
                Some(Role::Administrator) => Categories::Only(Vec::new()),
                _ => Categories::All,
            }),
        };
        Some(Rule {
            subject: subject?,
            role: role?,
            publish: publish?,
            subscribe: raw.subscribe.unwrap_or(true),
        })
    }

    fn agreement(&mut self, raw: &RawAgreement) -> Option<Agreement> {
        let countries: Vec<Option<CountryCode>> = raw
            .between
            .get_ref()
            .iter()
            .map(|c| {
                CountryCode::parse(c)
                    .map_err(|e| self.error(&raw.between, format!("between: `{c}`: {e}")))
                    .ok()
            })
            .collect();
        let between = match countries.as_slice() {
            [Some(a), Some(b)] if a != b => Some([*a, *b]),
            [Some(_), Some(_)] => {
                self.error(
                    &raw.between,
                    "between: an agreement joins two different countries",
                );
                None
            }
            [_, _] => None,
            _ => {
                self.error(
                    &raw.between,
                    "between: an agreement names exactly two countries",
                );
                None
            }
        };
        let categories = self.categories(&raw.categories, "categories");
        let max_tlp = self.tlp(&raw.max_tlp);
        let mut handling_codes = Vec::new();
        if let Some(codes) = &raw.handling_codes {
            for code in codes.get_ref() {
                let ok = (1..=32).contains(&code.len())
                    && code.bytes().all(|b| {
                        b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    });
                if ok {
                    handling_codes.push(code.clone());
                } else {
                    self.error(
                        codes,
                        format!("handling_codes: `{code}` must match [A-Z0-9_-]{{1,32}}"),
                    );
                }
            }
        }
        Some(Agreement {
            between: between?,
            categories: categories?,
            max_tlp: max_tlp?,
            handling_codes,
            exercises: raw.exercises,
            reshare: raw.reshare,
        })
    }
}

/// Parses and checks a policy file.
///
/// # Errors
/// Every problem found, each with its line.
pub fn parse(text: &str) -> Result<Policy, Vec<PolicyError>> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| {
            text[..s.start.min(text.len())].matches('\n').count() + 1
        });
        vec![PolicyError {
            line,
            message: e.message().to_owned(),
        }]
    })?;
    let mut checker = Checker {
        text,
        errors: Vec::new(),
    };
    let mut rules: Vec<Rule> = Vec::new();
    for raw_node in &raw.node {
        if let Some(rule) = checker.node(raw_node) {
            if rules.iter().any(|r| r.subject == rule.subject) {
                checker.error(
                    &raw_node.subject,
                    format!("match: `{}` already has a rule", rule.subject),
                );
            } else {
                rules.push(rule);
            }
        }
    }
    let agreements: Vec<Agreement> = raw
        .agreement
        .iter()
        .filter_map(|a| checker.agreement(a))
        .collect();
    // An empty or cut file must not pass for a policy: one that refuses
    // every node, or lets nothing cross a border, says so.
    let end = text.lines().count().max(1);
    if raw.node.is_empty() && !raw.no_nodes {
        checker.errors.push(PolicyError {
            line: end,
            message: "the file names no [[node]], so every node would be refused; if that is \
                      what you mean, say `no_nodes = true`"
                .into(),
        });
    }
    if raw.agreement.is_empty() && !raw.no_agreements {
        checker.errors.push(PolicyError {
            line: end,
            message: "the file has no [[agreement]], so nothing would cross a border; if that \
                      is what you mean, say `no_agreements = true`"
                .into(),
        });
    }
    if checker.errors.is_empty() {
        Ok(Policy::new(rules, agreements))
    } else {
        Err(checker.errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[node]]
match = "TJ"
role = "post"
publish = ["drugs", "arms"]

[[node]]
match = "TJ:border-guard"
role = "liaison_office"

[[node]]
match = "urn:liaison:TJ:border-guard:dushanbe"
role = "national_centre"
subscribe = true

[[agreement]]
between = ["TJ", "AF"]
categories = ["drugs"]
max_tlp = "amber"
handling_codes = ["LE-ONLY"]
"#;

    #[test]
    fn a_good_file_parses_and_the_most_specific_rule_wins() {
        let p = parse(GOOD).expect("valid");
        let post: NodeId = "urn:liaison:TJ:customs:panj".parse().unwrap();
        let office: NodeId = "urn:liaison:TJ:border-guard:khorog".parse().unwrap();
        let centre: NodeId = "urn:liaison:TJ:border-guard:dushanbe".parse().unwrap();
        let stranger: NodeId = "urn:liaison:KZ:customs:x".parse().unwrap();
        assert_eq!(p.role(&post), Some(Role::Post));
        assert_eq!(p.role(&office), Some(Role::LiaisonOffice));
        assert_eq!(p.role(&centre), Some(Role::NationalCentre));
        assert_eq!(p.role(&stranger), None);
        assert!(p.may_publish(&post, pb::Category::Drugs).is_ok());
        assert!(p.may_publish(&post, pb::Category::Cbrn).is_err());
        assert!(p.may_publish(&office, pb::Category::Cbrn).is_ok());
        assert!(p.may_subscribe(&stranger).is_err());
        assert_eq!(p.agreements().len(), 1);
    }

    #[test]
    fn every_error_is_reported_with_its_line() {
        let bad = r#"
[[node]]
match = "tj"
role = "boss"

[[node]]
match = "TJ:border-guard"
role = "post"
publish = ["drugz"]

[[agreement]]
between = ["TJ", "TJ"]
categories = ["*"]
max_tlp = "purple"
"#;
        let errors = parse(bad).expect_err("invalid");
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [3, 4, 9, 12, 14], "{errors:?}");
        assert!(errors[1].message.contains("boss"));
        assert!(errors[2].message.contains("drugz"));
    }

    #[test]
    fn an_empty_or_cut_file_is_not_a_policy_unless_it_says_so() {
        let errors = parse("").expect_err("empty");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].message.contains("no_nodes = true"));
        assert!(errors[1].message.contains("no_agreements = true"));
        // The first half of a file: its nodes but none of its agreements.
        let half = GOOD.split("[[agreement]]").next().unwrap();
        let errors = parse(half).expect_err("cut before the agreements");
        assert!(errors[0].message.contains("no [[agreement]]"), "{errors:?}");
        let deliberate = parse("no_nodes = true\nno_agreements = true\n").expect("said so");
        assert!(
            deliberate
                .may_subscribe(&"urn:liaison:TJ:a:b".parse().unwrap())
                .is_err()
        );
    }

    #[test]
    fn syntax_errors_and_unknown_keys_name_their_line() {
        let errors = parse("[[node]]\nmatch = \"TJ\"\nrole = \"post\"\ncolour = \"red\"\n")
            .expect_err("unknown key");
        assert_eq!(errors[0].line, 4, "{errors:?}");
        let errors = parse("[[node]]\nmatch = \"TJ\n").expect_err("syntax");
        assert_eq!(errors[0].line, 2, "{errors:?}");
    }

    #[test]
    fn agreements_say_whether_exercises_cross_and_alerts_may_be_passed_on() {
        let text = "no_nodes = true\n[[agreement]]\nbetween = [\"AF\", \"UZ\"]\ncategories = [\"*\"]\nmax_tlp = \"green\"\nexercises = true\nreshare = true\n\n[[agreement]]\nbetween = [\"TJ\", \"AF\"]\ncategories = [\"drugs\"]\nmax_tlp = \"amber\"\n";
        let p = parse(text).expect("valid");
        let (a, b) = (&p.agreements()[0], &p.agreements()[1]);
        assert!(a.exercises && a.reshare);
        assert!(!b.exercises && !b.reshare, "both default to no");
        assert!(a.to_string().contains("exercises") && a.to_string().contains("re-shared"));
        let errors = parse(&text.replace("reshare = true", "reshare = \"yes\"")).expect_err("bool");
        assert_eq!(errors[0].line, 7, "{errors:?}");
    }
}

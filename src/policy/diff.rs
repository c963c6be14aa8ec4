//! What a new policy would change: nodes and agreements added, removed or
//! changed, in words an operator checks before putting it in force (and
//! that the audit trail keeps once it is).

use std::fmt;

use super::{Agreement, Categories, Policy, Rule};

/// The difference between the policy in force and a new one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl PolicyDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl fmt::Display for PolicyDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no change");
        }
        let items = self
            .added
            .iter()
            .map(|a| format!("+{a}"))
            .chain(self.removed.iter().map(|r| format!("-{r}")))
            .chain(self.changed.iter().map(|c| format!("~{c}")));
        f.write_str(&items.collect::<Vec<_>>().join("; "))
    }
}

impl fmt::Display for Categories {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Categories::All => f.write_str("*"),
            Categories::Only(list) if list.is_empty() => f.write_str("nothing"),
            Categories::Only(list) => {
                let names: Vec<String> = list
                    .iter()
                    .map(|c| {
                        c.as_str_name()
                            .trim_start_matches("CATEGORY_")
                            .to_ascii_lowercase()
                    })
                    .collect();
                f.write_str(&names.join(","))
            }
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node {} ({}, publishes {}{})",
            self.subject,
            self.role.name(),
            self.publish,
            if self.subscribe { ", subscribes" } else { "" }
        )
    }
}

impl fmt::Display for Agreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tlp = self
            .max_tlp
            .as_str_name()
            .trim_start_matches("TLP_")
            .to_ascii_lowercase();
        write!(
            f,
            "agreement {}-{} ({} up to {tlp}",
            self.between[0], self.between[1], self.categories
        )?;
        if !self.handling_codes.is_empty() {
            write!(f, "; codes {}", self.handling_codes.join(","))?;
        }
        if self.exercises {
            f.write_str("; exercises")?;
        }
        if self.reshare {
            f.write_str("; re-shared")?;
        }
        f.write_str(")")
    }
}

/// What putting `new` in force instead of `old` changes.
pub fn diff(old: &Policy, new: &Policy) -> PolicyDiff {
    let mut d = PolicyDiff::default();
    if old.is_open() != new.is_open() {
        d.changed.push(if old.is_open() {
            "open (no policy file) → a policy file".into()
        } else {
            "a policy file → open".into()
        });
    }
    let empty = Vec::new();
    let old_rules = old.rules.as_ref().unwrap_or(&empty);
    let new_rules = new.rules.as_ref().unwrap_or(&empty);
    for rule in new_rules {
        match old_rules.iter().find(|r| r.subject == rule.subject) {
            None => d.added.push(rule.to_string()),
            Some(before) if before != rule => d.changed.push(format!("{before} → {rule}")),
            Some(_) => {}
        }
    }
    for rule in old_rules {
        if !new_rules.iter().any(|r| r.subject == rule.subject) {
            d.removed.push(rule.to_string());
        }
    }
    // Agreements have no name; two with the same countries are told apart
    // by what they say.
    for a in &new.agreements {
        if !old.agreements.contains(a) {
            d.added.push(a.to_string());
        }
    }
    for a in &old.agreements {
        if !new.agreements.contains(a) {
            d.removed.push(a.to_string());
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"
[[node]]
match = "TJ"
role = "post"
publish = ["drugs"]

[[node]]
match = "AF"
role = "liaison_office"

[[agreement]]
between = ["TJ", "AF"]
categories = ["drugs"]
max_tlp = "amber"
"#;

    #[test]
    fn a_diff_names_what_is_added_removed_and_changed() {
        let old = super::super::parse(BEFORE).unwrap();
        let after = BEFORE
            .replace(r#"publish = ["drugs"]"#, r#"publish = ["drugs", "arms"]"#)
            .replace("[[node]]\nmatch = \"AF\"\nrole = \"liaison_office\"\n", "")
            .replace("max_tlp = \"amber\"", "max_tlp = \"green\"")
            + "\n[[node]]\nmatch = \"KG\"\nrole = \"liaison_office\"\n";
        let new = super::super::parse(&after).unwrap();
        let d = diff(&old, &new);
        assert_eq!(
            d.added,
            [
                "node KG (liaison_office, publishes *, subscribes)",
                "agreement TJ-AF (drugs up to green)"
            ]
        );
        assert_eq!(
            d.removed,
            [
                "node AF (liaison_office, publishes *, subscribes)",
                "agreement TJ-AF (drugs up to amber)"
            ]
        );
        assert_eq!(
            d.changed,
            [
                "node TJ (post, publishes drugs, subscribes) → node TJ (post, publishes drugs,arms, subscribes)"
            ]
        );
        assert!(diff(&old, &old).is_empty());
        assert_eq!(diff(&old, &old).to_string(), "no change");
        assert!(
            diff(&Policy::open(), &old)
                .to_string()
                .contains("open (no policy file)")
        );
    }
}

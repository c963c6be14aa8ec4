//! The sharing policy: what each node may do (its role, the categories it
//! may publish, whether it may subscribe) and the bilateral agreements under
//! which alerts cross a border. The certificate says who; the policy says
//! what.
//!
//! Without a policy file the broker runs **open** (a development default):
//! every node may publish and subscribe every category and every pair of
//! countries is treated as having an agreement for every category and TLP
//! level. Markings are enforced in both cases ([`crate::marking`]).
//!
//! Evaluation order for "may `viewer` see `alert`":
//! 1. the markings (TLP, releasability, recipients) — [`crate::marking`];
//! 2. if the viewer is in another country than the origin and the alert is
//!    not TLP:CLEAR: an agreement between the two countries must cover the
//!    category, allow the TLP level, and accept every handling code.

mod diff;
mod export;
mod file;

use std::fmt;

pub use diff::{PolicyDiff, diff};
pub use export::{Destination, Withheld};
pub use file::{PolicyError, parse};

use crate::alert::Alert;
use crate::identity::{CountryCode, NodeId};
use crate::marking;
use crate::proto as pb;

/// What a node is in the sharing network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Post,
    LiaisonOffice,
    NationalCentre,
    Administrator,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Post => "post",
            Role::LiaisonOffice => "liaison_office",
            Role::NationalCentre => "national_centre",
            Role::Administrator => "administrator",
        }
    }
}

/// Who a rule applies to; the most specific matching rule wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Node(NodeId),
    Agency(CountryCode, String),
    Country(CountryCode),
}

impl Subject {
    fn matches(&self, node: &NodeId) -> bool {
        match self {
            Subject::Node(n) => n == node,
            Subject::Agency(cc, agency) => node.country() == *cc && node.agency() == agency,
            Subject::Country(cc) => node.country() == *cc,
        }
    }

    fn specificity(&self) -> u8 {
        match self {
            Subject::Node(_) => 3,
            Subject::Agency(..) => 2,
            Subject::Country(_) => 1,
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Node(n) => write!(f, "{n}"),
            Subject::Agency(cc, a) => write!(f, "{cc}:{a}"),
            Subject::Country(cc) => write!(f, "{cc}"),
        }
    }
}

/// A set of categories: all, or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Categories {
    All,
    Only(Vec<pb::Category>),
}

impl Categories {
    pub fn contains(&self, c: pb::Category) -> bool {
        match self {
            Categories::All => true,
            Categories::Only(list) => list.contains(&c),
        }
    }
}

/// What the nodes matching `subject` may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub subject: Subject,
    pub role: Role,
    pub publish: Categories,
    pub subscribe: bool,
}

/// A bilateral agreement: what may cross between two countries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    pub between: [CountryCode; 2],
    pub categories: Categories,
    /// The most restrictive TLP level that may cross.
    pub max_tlp: pb::Tlp,
    /// Handling codes the receiving side accepts; an alert carrying any other
    /// code does not cross.
    pub handling_codes: Vec<String>,
    /// Whether EXERCISE and TEST alerts cross a federation link.
    pub exercises: bool,
    /// Whether alerts imported from a third state may be passed on over a
    /// federation link (TLP:CLEAR, and TLP:GREEN releasable onward).
    pub reshare: bool,
}

impl Agreement {
    fn joins(&self, a: CountryCode, b: CountryCode) -> bool {
        (self.between[0] == a && self.between[1] == b)
            || (self.between[0] == b && self.between[1] == a)
    }

    fn covers(&self, alert: &Alert) -> bool {
        self.categories.contains(alert.category)
            && (alert.marking.tlp as i32) <= (self.max_tlp as i32)
            && alert
                .body
                .marking
                .iter()
                .flat_map(|m| &m.handling_codes)
                .all(|code| self.handling_codes.contains(code))
    }
}

/// Why an action is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy: {0}")]
pub struct Denied(pub String);

/// A loaded policy (or the open development default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `None`: no policy file, everything open (markings still apply).
    rules: Option<Vec<Rule>>,
    agreements: Vec<Agreement>,
}

impl Policy {
    /// The development default: no policy file.
    pub fn open() -> Policy {
        Policy {
            rules: None,
            agreements: Vec::new(),
        }
    }

    pub fn new(rules: Vec<Rule>, agreements: Vec<Agreement>) -> Policy {
        Policy {
            rules: Some(rules),
            agreements,
        }
    }

    pub fn is_open(&self) -> bool {
        self.rules.is_none()
    }

    pub fn agreements(&self) -> &[Agreement] {
        &self.agreements
    }

    /// The node rules (none for the open policy).
    pub fn rules(&self) -> &[Rule] {
        self.rules.as_deref().unwrap_or_default()
    }

    /// The most specific rule for `node`.
    pub fn rule(&self, node: &NodeId) -> Option<&Rule> {
        self.rules
            .as_ref()?
            .iter()
            .filter(|r| r.subject.matches(node))
            .max_by_key(|r| r.subject.specificity())
    }

    /// The node's role (open policy: every node is a post).
    pub fn role(&self, node: &NodeId) -> Option<Role> {
        match &self.rules {
            None => Some(Role::Post),
            Some(_) => self.rule(node).map(|r| r.role),
        }
    }

    /// # Errors
    /// [`Denied`] naming the node, its role and the category.
    pub fn may_publish(&self, node: &NodeId, category: pb::Category) -> Result<(), Denied> {
        if self.is_open() {
            return Ok(());
        }
        match self.rule(node) {
            None => Err(Denied(format!(
                "{node} is not in the policy; it may not publish"
            ))),
            Some(r) if r.publish.contains(category) => Ok(()),
            Some(r) => Err(Denied(format!(
                "{node} ({}) may not publish category {}",
                r.role.name(),
                category
                    .as_str_name()
                    .trim_start_matches("CATEGORY_")
                    .to_ascii_lowercase()
            ))),
        }
    }

    /// # Errors
    /// [`Denied`] when the node may not subscribe or read history.
    pub fn may_subscribe(&self, node: &NodeId) -> Result<(), Denied> {
        if self.is_open() {
            return Ok(());
        }
        match self.rule(node) {
            Some(r) if r.subscribe => Ok(()),
            Some(r) => Err(Denied(format!(
                "{node} ({}) may not subscribe",
                r.role.name()
            ))),
            None => Err(Denied(format!(
                "{node} is not in the policy; it may not subscribe"
            ))),
        }
    }

    /// Whether the agreements let `alert` reach `viewer` (markings aside).
    pub fn may_cross(&self, alert: &Alert, viewer: &NodeId) -> bool {
        let (from, to) = (alert.origin.country(), viewer.country());
        from == to
            || alert.marking.tlp == pb::Tlp::Clear
            || self.is_open()
            || self
                .agreements
                .iter()
                .any(|a| a.joins(from, to) && a.covers(alert))
    }

    /// Whether `viewer` may ever see `alert`: its markings, then the
    /// agreements between the two countries.
    pub fn entitled(&self, alert: &Alert, viewer: &NodeId) -> bool {
        marking::entitled(alert, viewer) && self.may_cross(alert, viewer)
    }

    /// Whether `viewer` may read the receipts of `alert`: the originating
    /// agency, and the national centres of the origin country.
    pub fn may_see_receipts(&self, alert: &Alert, viewer: &NodeId) -> bool {
        alert.origin.same_agency(viewer)
            || (viewer.country() == alert.origin.country()
                && self.role(viewer) == Some(Role::NationalCentre))
    }

    pub fn is_administrator(&self, node: &NodeId) -> bool {
        self.rule(node)
            .is_some_and(|r| r.role == Role::Administrator)
    }
}

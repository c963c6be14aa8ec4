//! What a feed or a history listing wants: categories, minimum severity,
//! origin countries, the EXERCISE/TEST opt-in, and whether the viewer's own
//! alerts are left out. Markings are not a filter
//! choice; they are enforced separately by [`crate::marking`].

use crate::alert::{Alert, Rejection};
use crate::identity::{CountryCode, NodeId};
use crate::proto as pb;

/// A validated filter. The default matches every ACTUAL alert.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub categories: Vec<pb::Category>,
    pub min_severity: Option<pb::Severity>,
    pub origin_countries: Vec<CountryCode>,
    pub include_exercise: bool,
    pub include_test: bool,
    /// Leave out alerts whose origin is the viewer itself.
    pub exclude_own: bool,
}

impl Filter {
    /// Validates a protobuf filter; `field` is its path for error messages.
    ///
    /// # Errors
    /// Names the first entry that is not a known category or country code.
    pub fn from_proto(field: &str, f: &pb::Filter) -> Result<Filter, Rejection> {
        let bad = |sub: String, rule: String| Rejection::new(format!("{field}.{sub}"), rule);
        let categories = f
            .categories
            .iter()
            .enumerate()
            .map(|(i, c)| match pb::Category::try_from(*c) {
                Ok(cat) if *c != 0 => Ok(cat),
                _ => Err(bad(
                    format!("categories[{i}]"),
                    format!("{c} is not a known category"),
                )),
            })
            .collect::<Result<_, _>>()?;
        let min_severity = match f.min_severity {
            0 => None,
            s => Some(pb::Severity::try_from(s).map_err(|_| {
                bad(
                    "min_severity".into(),
                    format!("{s} is not a known severity"),
                )
            })?),
        };
        let origin_countries = f
            .origin_countries
            .iter()
            .enumerate()
            .map(|(i, c)| {
                CountryCode::parse(c).map_err(|r| bad(format!("origin_countries[{i}]"), r.into()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Filter {
            categories,
            min_severity,
            origin_countries,
            include_exercise: f.include_exercise,
            include_test: f.include_test,
            exclude_own: f.exclude_own,
        })
    }

    pub fn to_proto(&self) -> pb::Filter {
        pb::Filter {
            categories: self.categories.iter().map(|c| *c as i32).collect(),
            min_severity: self.min_severity.map_or(0, |s| s as i32),
            origin_countries: self
                .origin_countries
                .iter()
                .map(|c| c.to_string())
                .collect(),
            include_exercise: self.include_exercise,
            include_test: self.include_test,
            exclude_own: self.exclude_own,
        }
    }

    /// Whether `viewer` wants the alert (markings aside).
    pub fn matches(&self, alert: &Alert, viewer: &NodeId) -> bool {
        let status_ok = match alert.status {
            pb::Status::Actual => true,
            pb::Status::Exercise => self.include_exercise,
            pb::Status::Test => self.include_test,
            pb::Status::Unspecified => false,
        };
        status_ok
            && (self.categories.is_empty() || self.categories.contains(&alert.category))
            && self
                .min_severity
                .is_none_or(|min| alert.severity as i32 >= min as i32)
            && (self.origin_countries.is_empty()
                || self.origin_countries.contains(&alert.origin.country()))
            && !(self.exclude_own && alert.origin == *viewer)
    }
}

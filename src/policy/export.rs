//! What a federation link may carry: the sharing policy applied to a whole
//! country at once, for the export cursor of each peer broker
//! (docs/federation.md).
//!
//! An alert is released to a peer state's broker when
//! 1. it did not come from that state, nor through that broker (no loops);
//! 2. its markings let *some* node of that state see it: TLP:CLEAR and
//!    GREEN, AMBER with the state (or one of its agencies) in
//!    `releasable_to`, RED with a recipient of that state; AMBER+STRICT
//!    never leaves its agency, so it never crosses;
//! 3. an agreement between the two states covers it (category, TLP level,
//!    handling codes), TLP:CLEAR excepted, as within one broker;
//! 4. EXERCISE and TEST alerts only where that agreement says `exercises`;
//! 5. an alert this broker imported from a third state (re-sharing) is
//!    TLP:CLEAR, or TLP:GREEN with the next state in `releasable_to`, and
//!    the agreement with the next state says `reshare`: AMBER,
//!    AMBER+STRICT and RED never cross a second border.

use std::fmt;

use super::Policy;
use crate::alert::{Alert, Releasee};
use crate::identity::CountryCode;
use crate::proto as pb;

/// Why an alert is not released to a peer state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withheld {
    /// It came from that state, or already passed through that broker.
    Loop,
    /// Its markings let no node of that state see it.
    Markings,
    /// No agreement with that state covers it.
    Agreement,
    /// An EXERCISE or TEST alert, and the agreement does not include them.
    Exercise,
    /// Imported from a third state, and its markings or the agreement do
    /// not let it go further.
    Reshare,
}

impl fmt::Display for Withheld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Withheld::Loop => "it came from that state or through that broker",
            Withheld::Markings => "its markings let no node of that state see it",
            Withheld::Agreement => "no agreement with that state covers it",
            Withheld::Exercise => "an exercise or test alert, and the agreement does not include them",
            Withheld::Reshare => "imported from a third state; its markings or the agreement do not let it go further",
        })
    }
}

/// Where the link goes.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// This broker's state.
    pub local: CountryCode,
    /// The peer broker's state.
    pub country: CountryCode,
    /// The peer broker's identity (URN).
    pub broker: &'a str,
}

impl Policy {
    /// Whether `alert`, stored here (with `provenance` when it was imported),
    /// may cross the link to `to`.
    ///
    /// # Errors
    /// The first rule it breaks.
    pub fn may_export(
        &self,
        alert: &Alert,
        provenance: Option<&pb::Provenance>,
        to: Destination<'_>,
    ) -> Result<(), Withheld> {
        let origin = alert.origin.country();
        if origin == to.country || provenance.is_some_and(|p| p.path.iter().any(|b| b == to.broker))
        {
            return Err(Withheld::Loop);
        }
        if !markings_reach(alert, to.country) {
            return Err(Withheld::Markings);
        }
        let agreement = self
            .agreements
            .iter()
            .find(|a| a.joins(to.local, to.country) && a.covers(alert));
        let clear = alert.marking.tlp == pb::Tlp::Clear;
        if agreement.is_none() && !clear {
            return Err(Withheld::Agreement);
        }
        if alert.status != pb::Status::Actual && !agreement.is_some_and(|a| a.exercises) {
            return Err(Withheld::Exercise);
        }
        // Re-sharing: the alert is not the sending state's own.
        if origin != to.local {
            let markings = clear
                || (alert.marking.tlp == pb::Tlp::Green
                    && alert
                        .marking
                        .releasable_to
                        .iter()
                        .any(|r| matches!(r, Releasee::Country(c) if *c == to.country)));
            let agreed = self
                .agreements
                .iter()
                .any(|a| a.joins(to.local, to.country) && a.reshare && (clear || a.covers(alert)));
            if !(markings && agreed) {
                return Err(Withheld::Reshare);
            }
        }
        Ok(())
    }
}

/// Whether the markings let at least one node of `country` see `alert`.
fn markings_reach(alert: &Alert, country: CountryCode) -> bool {
    let m = &alert.marking;
    match m.tlp {
        pb::Tlp::Clear | pb::Tlp::Green => true,
        pb::Tlp::Amber => m.releasable_to.iter().any(|r| match r {
            Releasee::Country(c) | Releasee::Agency(c, _) => *c == country,
        }),
        pb::Tlp::Red => m.recipients.iter().any(|n| n.country() == country),
        pb::Tlp::AmberStrict | pb::Tlp::Unspecified => false,
    }
}

//! Markings enforcement: whether a node is entitled to see an alert, by TLP
//! 2.0 and releasability. Checked on every delivery and every history read;
//! a node that is not entitled is told `NOT_FOUND`, as for a missing id.
//!
//! | TLP | who may see it |
//! |---|---|
//! | CLEAR, GREEN | every node (sharing agreements restrict GREEN once a policy is loaded) |
//! | AMBER | the originating agency, plus the countries/agencies in `releasable_to` |
//! | AMBER_STRICT | the originating agency only |
//! | RED | the originating node and the nodes named in `recipients` |

use crate::alert::Alert;
use crate::identity::NodeId;
use crate::proto::Tlp;

/// Whether `viewer` may ever see `alert`.
pub fn entitled(alert: &Alert, viewer: &NodeId) -> bool {
    let m = &alert.marking;
    match m.tlp {
        Tlp::Clear | Tlp::Green => true,
        Tlp::Amber => {
            alert.origin.same_agency(viewer) || m.releasable_to.iter().any(|r| r.admits(viewer))
        }
        Tlp::AmberStrict => alert.origin.same_agency(viewer),
        Tlp::Red => alert.origin == *viewer || m.recipients.contains(viewer),
        Tlp::Unspecified => false,
    }
}

//! Who may do what (SPEC §5): write, maintain or admin permission on the repository (GitHub's
//! collaborator-permission API, cached briefly by the client), or a place in the policy's
//! `approvals.approvers`. Checked when a command arrives and again at Gate 3.

use crate::github::client::{ClientError, GithubClient};
use crate::policy::Policy;
use crate::workflow::approval::Person;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authz {
    Allowed,
    /// The permission GitHub reported (`read`, `triage`, `none`, …).
    Denied {
        permission: String,
    },
}

/// Permissions that may run state-changing commands and approve.
const WRITERS: [&str; 3] = ["write", "maintain", "admin"];

/// Whether `who` may act. `approvals.approvers` names logins as people write them: it is matched
/// against the login GitHub sent with the request (the account's current one). GitHub's
/// permission API is asked by login too, and answers with the account that login belongs to
/// now; when that is not `who`'s account (the login changed hands since `who` used it, e.g. a
/// vote re-checked at Gate 3), `who` is not allowed.
pub async fn authorize(client: &GithubClient, installation: i64, repo: &str, who: &Person, policy: &Policy) -> Result<Authz, ClientError> {
    if policy.approvals.approvers.iter().any(|a| a.eq_ignore_ascii_case(&who.login)) {
        return Ok(Authz::Allowed);
    }
    let (permission, now_id) = client.collaborator(installation, repo, &who.login, who.id).await?;
    if let (Some(id), Some(now)) = (who.id, now_id) {
        if id != now {
            return Ok(Authz::Denied {
                permission: format!("none: @{} is now another account", who.login),
            });
        }
    }
    Ok(if WRITERS.contains(&permission.as_str()) {
        Authz::Allowed
    } else {
        Authz::Denied { permission }
    })
}

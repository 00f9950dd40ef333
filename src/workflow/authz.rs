//! Who may do what (SPEC §5): write, maintain or admin permission on the repository (GitHub's
//! collaborator-permission API, cached briefly by the client), or a place in the policy's
//! `approvals.approvers`. Checked when a command arrives and again at Gate 3.

use crate::github::client::{ClientError, GithubClient};
use crate::policy::Policy;

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

pub async fn authorize(client: &GithubClient, installation: i64, repo: &str, login: &str, policy: &Policy) -> Result<Authz, ClientError> {
    if policy.approvals.approvers.iter().any(|a| a.eq_ignore_ascii_case(login)) {
        return Ok(Authz::Allowed);
    }
    let permission = client.collaborator_permission(installation, repo, login).await?;
    Ok(if WRITERS.contains(&permission.as_str()) {
        Authz::Allowed
    } else {
        Authz::Denied { permission }
    })
}

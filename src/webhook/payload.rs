//! GitHub's webhook payload shapes, reduced to the fields orch reads. These types never leave the
//! `webhook` module: `event.rs` converts them at once into orch's own [`crate::webhook::Event`].
//! Everything GitHub sometimes leaves out (installation, sender, bodies, labels) is optional.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct User {
    pub login: String,
    pub id: i64,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct InstallationRef {
    pub id: i64,
}

#[derive(Debug, Deserialize)]
pub struct Installation {
    pub id: i64,
    #[serde(default)]
    pub account: Option<User>,
}

#[derive(Debug, Deserialize)]
pub struct Repository {
    pub id: i64,
    pub full_name: String,
    #[serde(default)]
    pub default_branch: Option<String>,
    #[serde(default)]
    pub private: bool,
}

#[derive(Debug, Deserialize)]
pub struct RepositoryName {
    pub id: i64,
    pub full_name: String,
}

#[derive(Debug, Deserialize)]
pub struct Label {
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub struct Issue {
    pub number: i64,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub body: Option<String>,
    pub user: User,
    #[serde(default)]
    pub labels: Vec<Label>,
    /// Present (an object of links) when the "issue" is a pull request.
    #[serde(default)]
    pub pull_request: Option<serde::de::IgnoredAny>,
    /// How many comments the issue has (GitHub's `comments` count).
    #[serde(default)]
    pub comments: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct Comment {
    pub id: i64,
    #[serde(default)]
    pub body: Option<String>,
    pub user: User,
}

#[derive(Debug, Deserialize)]
pub struct GitRef {
    pub sha: String,
    #[serde(rename = "ref")]
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub struct PullRequest {
    pub number: i64,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub draft: Option<bool>,
    pub user: User,
    pub head: GitRef,
    pub base: GitRef,
    #[serde(default)]
    pub labels: Vec<Label>,
    /// How many (issue) comments the pull request has.
    #[serde(default)]
    pub comments: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct CheckRun {
    pub id: i64,
    pub name: String,
    pub head_sha: String,
    #[serde(default)]
    pub external_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RequestedAction {
    pub identifier: String,
}

/// Fields every payload may carry; read for any event, known or not.
#[derive(Debug, Deserialize)]
pub struct Envelope {
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub installation: Option<InstallationRef>,
    #[serde(default)]
    pub repository: Option<RepositoryName>,
}

#[derive(Debug, Deserialize)]
pub struct IssuesPayload {
    pub action: String,
    pub issue: Issue,
    #[serde(default)]
    pub label: Option<Label>,
    pub repository: Repository,
    #[serde(default)]
    pub sender: Option<User>,
    #[serde(default)]
    pub installation: Option<InstallationRef>,
}

#[derive(Debug, Deserialize)]
pub struct IssueCommentPayload {
    pub action: String,
    pub issue: Issue,
    pub comment: Comment,
    pub repository: Repository,
    #[serde(default)]
    pub sender: Option<User>,
    #[serde(default)]
    pub installation: Option<InstallationRef>,
}

#[derive(Debug, Deserialize)]
pub struct PullRequestPayload {
    pub action: String,
    pub pull_request: PullRequest,
    #[serde(default)]
    pub label: Option<Label>,
    #[serde(default)]
    pub before: Option<String>,
    #[serde(default)]
    pub after: Option<String>,
    pub repository: Repository,
    #[serde(default)]
    pub sender: Option<User>,
    #[serde(default)]
    pub installation: Option<InstallationRef>,
}

#[derive(Debug, Deserialize)]
pub struct CheckRunPayload {
    pub action: String,
    pub check_run: CheckRun,
    #[serde(default)]
    pub requested_action: Option<RequestedAction>,
    pub repository: Repository,
    #[serde(default)]
    pub sender: Option<User>,
    #[serde(default)]
    pub installation: Option<InstallationRef>,
}

#[derive(Debug, Deserialize)]
pub struct InstallationPayload {
    pub action: String,
    pub installation: Installation,
    #[serde(default)]
    pub repositories: Option<Vec<RepositoryName>>,
}

#[derive(Debug, Deserialize)]
pub struct InstallationRepositoriesPayload {
    pub action: String,
    pub installation: Installation,
    #[serde(default)]
    pub repositories_added: Vec<RepositoryName>,
    #[serde(default)]
    pub repositories_removed: Vec<RepositoryName>,
}

#[derive(Debug, Deserialize)]
pub struct PingPayload {
    #[serde(default)]
    pub zen: Option<String>,
    #[serde(default)]
    pub hook_id: Option<i64>,
    #[serde(default)]
    pub repository: Option<RepositoryName>,
    #[serde(default)]
    pub installation: Option<InstallationRef>,
}

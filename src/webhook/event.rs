//! orch's own event type: what the rest of the pipeline works with. Built from a verified
//! delivery by [`parse`], stored compactly with the delivery, and read back by the workers.

use super::payload as gh;
use serde::{Deserialize, Serialize};

/// Who did something on GitHub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub login: String,
    pub id: i64,
    /// `user.type == "Bot"`: bots never run commands or approve.
    pub is_bot: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repo {
    pub id: i64,
    pub full_name: String,
    pub default_branch: Option<String>,
    pub private: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoName {
    pub id: i64,
    pub full_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    pub number: i64,
    pub title: String,
    pub body: String,
    pub labels: Vec<String>,
    pub author: Actor,
    /// Comments on pull requests arrive as `issue_comment` on an issue that is a PR.
    pub is_pull_request: bool,
    /// How many comments the issue had when the event happened; None when the payload did not
    /// say (the comments are then listed when they matter).
    #[serde(default)]
    pub comments: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    pub number: i64,
    pub title: String,
    pub body: String,
    pub labels: Vec<String>,
    pub author: Actor,
    pub head_sha: String,
    pub head_ref: String,
    pub base_ref: String,
    pub draft: bool,
    /// How many comments the pull request had when the event happened (None: not said).
    #[serde(default)]
    pub comments: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    pub id: i64,
    pub body: String,
    pub author: Actor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommentChange {
    Edited,
    Deleted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullRequestTrigger {
    Opened,
    Reopened,
    Labeled,
}

/// Every event orch reacts to (SPEC §4), and `Ignored` for the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Ping {
        hook_id: Option<i64>,
        zen: Option<String>,
    },
    IssueOpened {
        repo: Repo,
        issue: Issue,
        sender: Option<Actor>,
    },
    IssueLabeled {
        repo: Repo,
        issue: Issue,
        label: String,
        sender: Option<Actor>,
    },
    IssueCommentCreated {
        repo: Repo,
        issue: Issue,
        comment: Comment,
    },
    /// Edited or deleted comments never run commands; they are only recorded.
    IssueCommentChanged {
        repo: Repo,
        issue_number: i64,
        comment_id: i64,
        change: CommentChange,
        sender: Option<Actor>,
    },
    PullRequest {
        repo: Repo,
        pull_request: PullRequest,
        trigger: PullRequestTrigger,
        /// The label that was added, for `labeled`.
        label: Option<String>,
        sender: Option<Actor>,
    },
    PullRequestSynchronize {
        repo: Repo,
        pull_request: PullRequest,
        before: Option<String>,
        after: String,
        sender: Option<Actor>,
    },
    CheckRunRequestedAction {
        repo: Repo,
        check_run_id: i64,
        check_run_name: String,
        head_sha: String,
        external_id: Option<String>,
        identifier: String,
        sender: Option<Actor>,
    },
    Installation {
        action: String,
        installation_id: i64,
        account: Option<String>,
        repositories: Vec<RepoName>,
    },
    InstallationRepositories {
        action: String,
        installation_id: i64,
        account: Option<String>,
        added: Vec<RepoName>,
        removed: Vec<RepoName>,
    },
    Ignored {
        event: String,
        action: Option<String>,
        reason: String,
    },
}

impl Event {
    /// Whether the delivery needs work beyond being recorded.
    pub fn needs_processing(&self) -> bool {
        !matches!(self, Event::Ping { .. } | Event::Ignored { .. })
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Ping { .. } => "ping",
            Event::IssueOpened { .. } => "issue_opened",
            Event::IssueLabeled { .. } => "issue_labeled",
            Event::IssueCommentCreated { .. } => "issue_comment_created",
            Event::IssueCommentChanged { .. } => "issue_comment_changed",
            Event::PullRequest { .. } => "pull_request",
            Event::PullRequestSynchronize { .. } => "pull_request_synchronize",
            Event::CheckRunRequestedAction { .. } => "check_run_requested_action",
            Event::Installation { .. } => "installation",
            Event::InstallationRepositories { .. } => "installation_repositories",
            Event::Ignored { .. } => "ignored",
        }
    }
}

/// What the deliveries table indexes, whatever the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryMeta {
    pub action: Option<String>,
    pub installation_id: Option<i64>,
    pub repository: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub meta: DeliveryMeta,
    pub event: Event,
}

/// A body that cannot be read as the event it claims to be.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("body is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("{event} payload does not have the expected shape: {source}")]
    Shape { event: String, source: serde_json::Error },
}

fn actor(u: gh::User) -> Actor {
    Actor {
        is_bot: u.kind.as_deref() == Some("Bot") || u.login.ends_with("[bot]"),
        login: u.login,
        id: u.id,
    }
}

fn repo(r: gh::Repository) -> Repo {
    Repo {
        id: r.id,
        full_name: r.full_name,
        default_branch: r.default_branch,
        private: r.private,
    }
}

fn repo_name(r: gh::RepositoryName) -> RepoName {
    RepoName {
        id: r.id,
        full_name: r.full_name,
    }
}

fn labels(l: Vec<gh::Label>) -> Vec<String> {
    l.into_iter().map(|l| l.name).collect()
}

fn issue(i: gh::Issue) -> Issue {
    Issue {
        number: i.number,
        title: i.title,
        body: i.body.unwrap_or_default(),
        labels: labels(i.labels),
        author: actor(i.user),
        is_pull_request: i.pull_request.is_some(),
        comments: i.comments,
    }
}

fn pull_request(p: gh::PullRequest) -> PullRequest {
    PullRequest {
        number: p.number,
        title: p.title,
        body: p.body.unwrap_or_default(),
        labels: labels(p.labels),
        author: actor(p.user),
        head_sha: p.head.sha,
        head_ref: p.head.name,
        base_ref: p.base.name,
        draft: p.draft.unwrap_or(false),
        comments: p.comments,
    }
}

fn ignored(event: &str, action: Option<String>, reason: &str) -> Event {
    Event::Ignored {
        event: event.to_string(),
        action,
        reason: reason.to_string(),
    }
}

/// Parses a verified delivery body of GitHub event `event` (the `X-GitHub-Event` header).
pub fn parse(event: &str, body: &[u8]) -> Result<Parsed, ParseError> {
    fn typed<'a, T: serde::Deserialize<'a>>(event: &str, body: &'a [u8]) -> Result<T, ParseError> {
        // Whether the body is JSON is judged by the grammar alone, on the error path only: the
        // typed parse can stop at a wrong type before a syntax error further on, and report a
        // syntax error ("trailing characters") for valid JSON, e.g. an object written as a longer
        // array, which serde reads by position.
        serde_json::from_slice(body).map_err(|e| match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Err(syntax) => ParseError::NotJson(syntax),
            Ok(_) => ParseError::Shape {
                event: event.to_string(),
                source: e,
            },
        })
    }
    let inst = |i: &Option<gh::InstallationRef>| i.as_ref().map(|i| i.id);
    let meta = |action: &str, installation: Option<i64>, repository: &Repo| DeliveryMeta {
        action: Some(action.to_string()),
        installation_id: installation,
        repository: Some(repository.full_name.clone()),
    };
    let parsed = match event {
        "ping" => {
            let p: gh::PingPayload = typed(event, body)?;
            Parsed {
                meta: DeliveryMeta {
                    action: None,
                    installation_id: inst(&p.installation),
                    repository: p.repository.map(|r| r.full_name),
                },
                event: Event::Ping {
                    hook_id: p.hook_id,
                    zen: p.zen,
                },
            }
        }
        "issues" => {
            let p: gh::IssuesPayload = typed(event, body)?;
            let r = repo(p.repository);
            let m = meta(&p.action, inst(&p.installation), &r);
            let sender = p.sender.map(actor);
            let event = match (p.action.as_str(), p.label) {
                ("opened", _) => Event::IssueOpened {
                    repo: r,
                    issue: issue(p.issue),
                    sender,
                },
                ("labeled", Some(label)) => Event::IssueLabeled {
                    repo: r,
                    issue: issue(p.issue),
                    label: label.name,
                    sender,
                },
                ("labeled", None) => ignored(event, Some(p.action), "labeled without a label"),
                _ => ignored(event, Some(p.action), "action not handled"),
            };
            Parsed { meta: m, event }
        }
        "issue_comment" => {
            let p: gh::IssueCommentPayload = typed(event, body)?;
            let r = repo(p.repository);
            let m = meta(&p.action, inst(&p.installation), &r);
            let event = match p.action.as_str() {
                "created" => Event::IssueCommentCreated {
                    repo: r,
                    issue: issue(p.issue),
                    comment: Comment {
                        id: p.comment.id,
                        body: p.comment.body.unwrap_or_default(),
                        author: actor(p.comment.user),
                    },
                },
                "edited" | "deleted" => Event::IssueCommentChanged {
                    repo: r,
                    issue_number: p.issue.number,
                    comment_id: p.comment.id,
                    change: if p.action == "edited" {
                        CommentChange::Edited
                    } else {
                        CommentChange::Deleted
                    },
                    sender: p.sender.map(actor),
                },
                _ => ignored(event, Some(p.action), "action not handled"),
            };
            Parsed { meta: m, event }
        }
        "pull_request" => {
            let p: gh::PullRequestPayload = typed(event, body)?;
            let r = repo(p.repository);
            let m = meta(&p.action, inst(&p.installation), &r);
            let sender = p.sender.map(actor);
            let trigger = match p.action.as_str() {
                "opened" => Some(PullRequestTrigger::Opened),
                "reopened" => Some(PullRequestTrigger::Reopened),
                "labeled" => Some(PullRequestTrigger::Labeled),
                _ => None,
            };
            let event = if let Some(trigger) = trigger {
                Event::PullRequest {
                    repo: r,
                    pull_request: pull_request(p.pull_request),
                    trigger,
                    label: p.label.map(|l| l.name),
                    sender,
                }
            } else if p.action == "synchronize" {
                let pr = pull_request(p.pull_request);
                Event::PullRequestSynchronize {
                    repo: r,
                    after: p.after.unwrap_or_else(|| pr.head_sha.clone()),
                    pull_request: pr,
                    before: p.before,
                    sender,
                }
            } else {
                ignored(event, Some(p.action), "action not handled")
            };
            Parsed { meta: m, event }
        }
        "check_run" => {
            let p: gh::CheckRunPayload = typed(event, body)?;
            let r = repo(p.repository);
            let m = meta(&p.action, inst(&p.installation), &r);
            let event = match (p.action.as_str(), p.requested_action) {
                ("requested_action", Some(requested)) => Event::CheckRunRequestedAction {
                    repo: r,
                    check_run_id: p.check_run.id,
                    check_run_name: p.check_run.name,
                    head_sha: p.check_run.head_sha,
                    external_id: p.check_run.external_id.filter(|s| !s.is_empty()),
                    identifier: requested.identifier,
                    sender: p.sender.map(actor),
                },
                ("requested_action", None) => ignored(event, Some(p.action), "requested_action without an identifier"),
                _ => ignored(event, Some(p.action), "action not handled"),
            };
            Parsed { meta: m, event }
        }
        "installation" => {
            let p: gh::InstallationPayload = typed(event, body)?;
            Parsed {
                meta: DeliveryMeta {
                    action: Some(p.action.clone()),
                    installation_id: Some(p.installation.id),
                    repository: None,
                },
                event: Event::Installation {
                    action: p.action,
                    installation_id: p.installation.id,
                    account: p.installation.account.map(|a| a.login),
                    repositories: p.repositories.unwrap_or_default().into_iter().map(repo_name).collect(),
                },
            }
        }
        "installation_repositories" => {
            let p: gh::InstallationRepositoriesPayload = typed(event, body)?;
            Parsed {
                meta: DeliveryMeta {
                    action: Some(p.action.clone()),
                    installation_id: Some(p.installation.id),
                    repository: None,
                },
                event: Event::InstallationRepositories {
                    action: p.action,
                    installation_id: p.installation.id,
                    account: p.installation.account.map(|a| a.login),
                    added: p.repositories_added.into_iter().map(repo_name).collect(),
                    removed: p.repositories_removed.into_iter().map(repo_name).collect(),
                },
            }
        }
        other => {
            // Unknown events are still checked to be JSON and indexed by what they carry.
            let e: gh::Envelope = typed(other, body)?;
            Parsed {
                meta: DeliveryMeta {
                    action: e.action.clone(),
                    installation_id: inst(&e.installation),
                    repository: e.repository.map(|r| r.full_name),
                },
                event: ignored(other, e.action, "event not handled"),
            }
        }
    };
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_without_installation_parses() {
        let body = br#"{"action":"created","issue":{"number":3,"title":"t","body":null,"user":{"login":"a","id":1,"type":"User"},"labels":[{"name":"bug"}]},
            "comment":{"id":9,"body":"/orch help","user":{"login":"b","id":2,"type":"User"}},
            "repository":{"id":5,"full_name":"o/r","default_branch":"main","private":false}}"#;
        let p = parse("issue_comment", body).unwrap();
        assert_eq!(p.meta.installation_id, None);
        assert_eq!(p.meta.repository.as_deref(), Some("o/r"));
        match p.event {
            Event::IssueCommentCreated { issue, comment, .. } => {
                assert_eq!(issue.labels, vec!["bug"]);
                assert_eq!(issue.body, "");
                assert!(!issue.is_pull_request);
                assert_eq!(comment.body, "/orch help");
                assert!(!comment.author.is_bot);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bots_are_recognised() {
        let body = br#"{"action":"created","issue":{"number":3,"user":{"login":"a","id":1},"pull_request":{"url":"x"}},
            "comment":{"id":9,"body":"/orch approve","user":{"login":"orch-app[bot]","id":2,"type":"Bot"}},
            "repository":{"id":5,"full_name":"o/r"}}"#;
        match parse("issue_comment", body).unwrap().event {
            Event::IssueCommentCreated { issue, comment, .. } => {
                assert!(comment.author.is_bot);
                assert!(issue.is_pull_request);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn non_json_and_wrong_shapes_are_told_apart() {
        assert!(matches!(parse("issues", b"not json"), Err(ParseError::NotJson(_))));
        assert!(matches!(parse("whatever", b"{\"a\":"), Err(ParseError::NotJson(_))));
        let err = parse("issue_comment", br#"{"action":"created"}"#).unwrap_err();
        assert!(matches!(err, ParseError::Shape { .. }), "{err}");
        assert!(err.to_string().contains("issue"), "{err}");
    }

    #[test]
    fn unknown_events_are_ignored_but_indexed() {
        let p = parse(
            "star",
            br#"{"action":"created","installation":{"id":4},"repository":{"id":1,"full_name":"o/r"}}"#,
        )
        .unwrap();
        assert_eq!(p.meta.installation_id, Some(4));
        assert!(matches!(p.event, Event::Ignored { .. }));
        assert!(!p.event.needs_processing());
    }

    #[test]
    fn events_round_trip_through_storage_form() {
        let body = br#"{"action":"labeled","issue":{"number":1,"title":"x","user":{"login":"a","id":1}},"label":{"name":"orch:triage"},
            "repository":{"id":5,"full_name":"o/r"},"sender":{"login":"m","id":3,"type":"User"},"installation":{"id":8}}"#;
        let p = parse("issues", body).unwrap();
        let stored = serde_json::to_vec(&p.event).unwrap();
        let back: Event = serde_json::from_slice(&stored).unwrap();
        assert_eq!(back, p.event);
        assert_eq!(back.kind(), "issue_labeled");
    }
}

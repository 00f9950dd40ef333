//! Exactly-once GitHub writes. Each write is an action row with an idempotency key; its body
//! carries the hidden marker `<!-- orch:action:<id>:<tag> -->` (tagged with the server key, see
//! [`super::marks`]). Before creating, orch looks for the marker in what orch's App wrote, so a
//! write whose answer was lost (a crash, a timeout after GitHub applied it) is found and recorded
//! instead of being made twice, and nobody else's comment can pass for it. In dry-run the action
//! is recorded and nothing sent.

use super::client::{CheckRunSpec, CheckRunUpdate, ClientError, GithubClient};
use crate::store::{actions, now_ms, Store};

/// GitHub's limit for a comment body, in characters.
pub const COMMENT_LIMIT: usize = 65_536;
/// GitHub's limit for a check run's `summary` and `text`, in characters.
pub const CHECK_RUN_TEXT_LIMIT: usize = 65_535;
/// How long a worker may hold an action while it makes it without confirming it; a maker that
/// died holds it up this long. Errors give it back at once.
const ACTION_LEASE_MS: i64 = 10_000;

/// Cuts `text` so that, with `reserve` more characters appended, it stays within `limit`
/// characters, and says so at the cut.
pub fn truncate(text: &str, limit: usize, reserve: usize) -> String {
    const NOTE: &str = "\n\n… (truncated: GitHub's size limit was reached)";
    let budget = limit.saturating_sub(reserve);
    if text.chars().count() <= budget {
        return text.to_string();
    }
    let keep = budget.saturating_sub(NOTE.chars().count());
    let mut out: String = text.chars().take(keep).collect();
    out.push_str(NOTE);
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Created now, or found already made (by its marker) after an earlier attempt.
    Done { action_id: i64, github_id: i64 },
    /// `ORCH_GITHUB_DRY_RUN`: recorded, not sent.
    DryRun { action_id: i64 },
}

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    Github(#[from] ClientError),
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
}

/// One GitHub write made at most once: its action row, and how to find and make it.
struct Write<'a> {
    key: &'a str,
    installation: i64,
    repo: &'a str,
    kind: &'static str,
    target: String,
}

/// The exactly-once protocol shared by every kind of write: the action row answers repeats;
/// dry-run records and sends nothing; otherwise, before each attempt to `create`, `find` looks
/// for the write's marker, since an earlier attempt (this call's or a crashed process's) may
/// have reached GitHub with its answer lost. `find` and `create` get the action's marker.
async fn once<F, FF, C, CF>(store: &Store, client: Option<&GithubClient>, write: Write<'_>, find: F, create: C) -> Result<Sent, ActionError>
where
    F: Fn(String) -> FF,
    FF: std::future::Future<Output = Result<Option<i64>, ClientError>>,
    C: Fn(String) -> CF,
    CF: std::future::Future<Output = Result<i64, ClientError>>,
{
    let action = {
        let _write = store.write_guard().await;
        actions::get_or_create(
            store.pool(),
            write.key,
            write.installation,
            write.repo,
            write.kind,
            &write.target,
            now_ms(),
        )
        .await?
    };
    match (action.status.as_str(), action.github_id) {
        ("done", Some(github_id)) => {
            return Ok(Sent::Done {
                action_id: action.id,
                github_id,
            })
        }
        ("dry_run", _) => return Ok(Sent::DryRun { action_id: action.id }),
        _ => {}
    }
    // One maker at a time: another worker on the same action (the same comment processed twice
    // at once) waits until it is made, or until the maker's lease runs out.
    loop {
        let leased = {
            let _write = store.write_guard().await;
            let now = now_ms();
            actions::try_lease(store.pool(), action.id, now, now + ACTION_LEASE_MS).await?
        };
        if leased {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        match actions::status(store.pool(), action.id).await? {
            (status, Some(github_id)) if status == "done" => {
                return Ok(Sent::Done {
                    action_id: action.id,
                    github_id,
                })
            }
            (status, _) if status == "dry_run" => return Ok(Sent::DryRun { action_id: action.id }),
            (status, _) if status == "failed" => {
                return Err(ActionError::Github(ClientError::Decode(format!(
                    "action {} failed in another worker",
                    action.id
                ))))
            }
            _ => {}
        }
    }
    // The outcome and its audit entry commit together.
    let (kind, repo, target, key) = (write.kind, write.repo, write.target.clone(), write.key);
    let finish = |status: &'static str, github_id: Option<i64>, error: Option<String>| {
        let target = target.clone();
        async move {
            let now = now_ms();
            // Relaxed: should a power loss undo it, the action's lease (synced below before the
            // attempt) makes the next run look for the write's marker and find it.
            let mut tx = store.begin_relaxed().await.map_err(|e| sqlx::Error::Protocol(format!("{e:#}")))?;
            actions::finish(&mut *tx, action.id, status, github_id, error.as_deref(), now).await?;
            let entry = crate::audit::Entry {
                kind: crate::audit::kind::GITHUB_WRITE,
                actor: "orch",
                subject: repo,
                details: serde_json::json!({ "action": action.id, "kind": kind, "target": target, "key": key,
                                             "status": status, "github_id": github_id, "error": error }),
            };
            crate::audit::append(&mut tx, store.backend(), &entry, now).await?;
            tx.commit().await
        }
    };
    let Some(client) = client else {
        tracing::info!(action = action.id, kind = write.kind, repo = %write.repo, target = %write.target, "dry-run: write recorded, not sent");
        finish("dry_run", None, None).await?;
        return Ok(Sent::DryRun { action_id: action.id });
    };
    // The first lease of an action comes before any attempt to make it, so there is nothing
    // to look for yet: a reply does not list all the issue's comments before it is posted.
    let first_lease = actions::leases(store.pool(), action.id).await? == 1;
    // The action and its lease are on disk before GitHub is asked: after a power loss the next
    // run knows an attempt may have reached GitHub, and looks for its marker first.
    store.sync().await.map_err(|e| sqlx::Error::Protocol(format!("{e:#}")))?;
    let attempts = client.policy().max_attempts.max(1);
    for attempt in 1..=attempts {
        let looked_for = if attempt == 1 && first_lease {
            Ok(None)
        } else {
            find(client.marker(action.id)).await
        };
        let found = match looked_for {
            Ok(found) => found,
            Err(e) => {
                let _write = store.write_guard().await;
                actions::release(store.pool(), action.id).await?;
                return Err(e.into());
            }
        };
        if let Some(found) = found {
            tracing::info!(
                action = action.id,
                kind = write.kind,
                github_id = found,
                "write already made by an earlier attempt"
            );
            finish("done", Some(found), None).await?;
            return Ok(Sent::Done {
                action_id: action.id,
                github_id: found,
            });
        }
        match create(client.marker(action.id)).await {
            Ok(github_id) => {
                finish("done", Some(github_id), None).await?;
                return Ok(Sent::Done {
                    action_id: action.id,
                    github_id,
                });
            }
            Err(ClientError::DryRun { .. }) => {
                finish("dry_run", None, None).await?;
                return Ok(Sent::DryRun { action_id: action.id });
            }
            Err(e) if e.is_transient() && attempt < attempts => {
                tracing::info!(action = action.id, attempt, error = %e, "write not confirmed; checking before trying again");
                tokio::time::sleep(super::retry::backoff(client.policy(), attempt)).await;
            }
            Err(e) => {
                // Transient failures stay pending: the next run looks for the marker first.
                if e.is_transient() {
                    let _write = store.write_guard().await;
                    actions::release(store.pool(), action.id).await?;
                } else {
                    finish("failed", None, Some(e.to_string())).await?;
                }
                return Err(e.into());
            }
        }
    }
    unreachable!("the last attempt returns")
}

/// Posts `body` as a comment on `issue` at most once for `key`. `client: None` is dry-run.
pub async fn comment_once(
    store: &Store,
    client: Option<&GithubClient>,
    key: &str,
    installation: i64,
    repo: &str,
    issue: i64,
    body: &str,
) -> Result<Sent, ActionError> {
    let write = Write {
        key,
        installation,
        repo,
        kind: "comment",
        target: issue.to_string(),
    };
    once(
        store,
        client,
        write,
        |mark| async move {
            let client = client.expect("only called when sending");
            Ok(client
                .find_comment_with_marker(installation, repo, issue, &mark)
                .await?
                .map(|c| c.id))
        },
        |mark| async move {
            let client = client.expect("only called when sending");
            let full = format!("{}\n\n{mark}", truncate(body, COMMENT_LIMIT, mark.chars().count() + 2));
            Ok(client.create_issue_comment(installation, repo, issue, &full).await?.id)
        },
    )
    .await
}

/// Creates the check run `spec` at most once for `key`; its marker goes at the end of the
/// summary, where it is looked for among the commit's check runs. `client: None` is dry-run.
pub async fn check_run_once(
    store: &Store,
    client: Option<&GithubClient>,
    key: &str,
    installation: i64,
    repo: &str,
    spec: &CheckRunSpec,
) -> Result<Sent, ActionError> {
    let write = Write {
        key,
        installation,
        repo,
        kind: "check_run",
        target: format!("{}@{}", spec.name, spec.head_sha),
    };
    once(
        store,
        client,
        write,
        |mark| async move {
            let client = client.expect("only called when sending");
            // Only orch's App's check runs count: anyone's run may quote the marker.
            let me = client.app_identity(installation).await?;
            let runs = client.check_runs_for_ref(installation, repo, &spec.head_sha).await?;
            Ok(runs
                .iter()
                .find(|r| r.app_id == Some(me.app_id) && r.name == spec.name && r.summary.contains(&mark))
                .map(|r| r.id))
        },
        |mark| async move {
            let client = client.expect("only called when sending");
            let mut marked = spec.clone();
            marked.summary = format!(
                "{}\n\n{mark}",
                truncate(&spec.summary, CHECK_RUN_TEXT_LIMIT, mark.chars().count() + 2)
            );
            client.create_check_run(installation, repo, &marked).await
        },
    )
    .await
}

/// Updates check run `check_run_id` at most once for `key` (an update repeated after a lost
/// answer is harmless, so nothing is looked for first). The new summary ends with the marker of
/// the action that created the run, when orch made it, so the run stays recognisable as that
/// write.
pub async fn check_run_update_once(
    store: &Store,
    client: Option<&GithubClient>,
    key: &str,
    installation: i64,
    repo: &str,
    check_run_id: i64,
    update: &CheckRunUpdate,
) -> Result<Sent, ActionError> {
    let keep_marker = actions::made(store.pool(), "check_run", repo, check_run_id).await?;
    let write = Write {
        key,
        installation,
        repo,
        kind: "check_run_update",
        target: format!("check-run:{check_run_id}"),
    };
    once(
        store,
        client,
        write,
        |_| async { Ok(None) },
        |_| async move {
            let client = client.expect("only called when sending");
            let mut update = update.clone();
            if let Some(mark) = keep_marker.map(|id| client.marker(id)) {
                update.summary = format!(
                    "{}\n\n{mark}",
                    truncate(&update.summary, CHECK_RUN_TEXT_LIMIT, mark.chars().count() + 2)
                );
            }
            client.update_check_run(installation, repo, check_run_id, &update).await?;
            Ok(check_run_id)
        },
    )
    .await
}

/// A pull request to open: the branch `head` (already pushed) into `base`.
#[derive(Debug, Clone)]
pub struct PullSpec {
    pub title: String,
    pub head: String,
    pub base: String,
    pub body: String,
}

/// Opens the pull request `spec` at most once for `key`. A pull request is found again by its
/// branch, which orch names after the workflow, so one branch never gets a second pull request.
pub async fn pull_once(
    store: &Store,
    client: Option<&GithubClient>,
    key: &str,
    installation: i64,
    repo: &str,
    spec: &PullSpec,
) -> Result<Sent, ActionError> {
    let write = Write {
        key,
        installation,
        repo,
        kind: "pull_request",
        target: spec.head.clone(),
    };
    let find = || async move {
        let client = client.expect("only called when sending");
        Ok(client.pull_for_branch(installation, repo, &spec.head).await?.map(|p| p.number))
    };
    once(
        store,
        client,
        write,
        |_| find(),
        |mark| async move {
            let client = client.expect("only called when sending");
            let body = format!("{}\n\n{mark}", truncate(&spec.body, COMMENT_LIMIT, mark.chars().count() + 2));
            match client
                .create_pull(installation, repo, &spec.title, &spec.head, &spec.base, &body)
                .await
            {
                // GitHub refuses a second pull request for a branch: the first is the one.
                Err(ClientError::Github(super::retry::GithubError::Permanent { status: 422, .. })) => match find().await? {
                    Some(number) => Ok(number),
                    None => Err(ClientError::Decode(format!(
                        "GitHub refused a pull request for {} and none exists",
                        spec.head
                    ))),
                },
                other => other,
            }
        },
    )
    .await
}

/// Adds `labels` to `issue` at most once for `key`. Adding is idempotent on GitHub; the action
/// row records the intent and its outcome like every other write. The recorded id is the issue.
pub async fn labels_once(
    store: &Store,
    client: Option<&GithubClient>,
    key: &str,
    installation: i64,
    repo: &str,
    issue: i64,
    labels: &[String],
) -> Result<Sent, ActionError> {
    let write = Write {
        key,
        installation,
        repo,
        kind: "labels",
        target: format!("{issue}:+{}", labels.join(",")),
    };
    once(
        store,
        client,
        write,
        |_| async move {
            let client = client.expect("only called when sending");
            let present = client.list_labels(installation, repo, issue).await?;
            Ok(labels.iter().all(|l| present.contains(l)).then_some(issue))
        },
        |_| async move {
            let client = client.expect("only called when sending");
            client.add_labels(installation, repo, issue, labels).await?;
            Ok(issue)
        },
    )
    .await
}

/// Removes `label` from `issue` at most once for `key`; a label already gone counts as removed.
pub async fn remove_label_once(
    store: &Store,
    client: Option<&GithubClient>,
    key: &str,
    installation: i64,
    repo: &str,
    issue: i64,
    label: &str,
) -> Result<Sent, ActionError> {
    let write = Write {
        key,
        installation,
        repo,
        kind: "label_removal",
        target: format!("{issue}:-{label}"),
    };
    once(
        store,
        client,
        write,
        |_| async move {
            let client = client.expect("only called when sending");
            let present = client.list_labels(installation, repo, issue).await?;
            Ok((!present.iter().any(|l| l == label)).then_some(issue))
        },
        |_| async move {
            let client = client.expect("only called when sending");
            client.remove_label(installation, repo, issue, label).await?;
            Ok(issue)
        },
    )
    .await
}

/// Reacts with `content` to a comment at most once for `key` (GitHub keeps one reaction of a
/// kind per user, so a repeat after a lost answer changes nothing). The recorded id is the comment.
pub async fn reaction_once(
    store: &Store,
    client: Option<&GithubClient>,
    key: &str,
    installation: i64,
    repo: &str,
    comment_id: i64,
    content: &str,
) -> Result<Sent, ActionError> {
    let write = Write {
        key,
        installation,
        repo,
        kind: "reaction",
        target: format!("{comment_id}:{content}"),
    };
    once(
        store,
        client,
        write,
        |_| async { Ok(None) },
        |_| async move {
            let client = client.expect("only called when sending");
            client.react_to_comment(installation, repo, comment_id, content).await?;
            Ok(comment_id)
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_the_limit_and_says_so() {
        let short = "hello";
        assert_eq!(truncate(short, COMMENT_LIMIT, 30), "hello");
        let long: String = "é".repeat(COMMENT_LIMIT + 10);
        let reserve = crate::github::marks::MarkerKey::random().marker(123).chars().count() + 2;
        let cut = truncate(&long, COMMENT_LIMIT, reserve);
        assert_eq!(cut.chars().count() + reserve, COMMENT_LIMIT);
        assert!(cut.ends_with("(truncated: GitHub's size limit was reached)"));
        let exact: String = "x".repeat(CHECK_RUN_TEXT_LIMIT);
        assert_eq!(truncate(&exact, CHECK_RUN_TEXT_LIMIT, 0), exact);
        assert_eq!(
            truncate(&format!("{exact}y"), CHECK_RUN_TEXT_LIMIT, 0).chars().count(),
            CHECK_RUN_TEXT_LIMIT
        );
    }
}

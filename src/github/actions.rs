//! Exactly-once GitHub writes. Each write is an action row with an idempotency key; its body
//! carries the hidden marker `<!-- orch:action:<id> -->`. Before creating, orch looks for the
//! marker, so a write whose answer was lost (a crash, a timeout after GitHub applied it) is found
//! and recorded instead of being made twice. In dry-run the action is recorded and nothing sent.

use super::client::{CheckRunSpec, ClientError, GithubClient};
use crate::store::{actions, now_ms, Store};

/// GitHub's limit for a comment body, in characters.
pub const COMMENT_LIMIT: usize = 65_536;
/// GitHub's limit for a check run's `summary` and `text`, in characters.
pub const CHECK_RUN_TEXT_LIMIT: usize = 65_535;

pub fn marker(action_id: i64) -> String {
    format!("<!-- orch:action:{action_id} -->")
}

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
    let finish = |status: &'static str, github_id: Option<i64>, error: Option<String>| async move {
        let _write = store.write_guard().await;
        actions::finish(store.pool(), action.id, status, github_id, error.as_deref(), now_ms()).await
    };
    let Some(client) = client else {
        tracing::info!(action = action.id, kind = write.kind, repo = %write.repo, target = %write.target, "dry-run: write recorded, not sent");
        finish("dry_run", None, None).await?;
        return Ok(Sent::DryRun { action_id: action.id });
    };
    let attempts = client.policy().max_attempts.max(1);
    for attempt in 1..=attempts {
        if let Some(found) = find(marker(action.id)).await? {
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
        match create(marker(action.id)).await {
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
                if !e.is_transient() {
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
            let runs = client.check_runs_for_ref(installation, repo, &spec.head_sha).await?;
            Ok(runs.iter().find(|r| r.name == spec.name && r.summary.contains(&mark)).map(|r| r.id))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_the_limit_and_says_so() {
        let short = "hello";
        assert_eq!(truncate(short, COMMENT_LIMIT, 30), "hello");
        let long: String = "é".repeat(COMMENT_LIMIT + 10);
        let reserve = marker(123).chars().count() + 2;
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

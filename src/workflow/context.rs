//! What a workflow's model is shown beyond the issue itself (SPEC §9, issue 15), read from
//! GitHub within the budget rules of SPEC §11:
//! - every task: the maintainers' `.github/orch/instructions.md` (default branch, at most 8 KB);
//! - triage: the labels the policy allows that exist in the repository, with descriptions;
//! - QA plan: the pull request's changed files as diff hunks, and the issue its body links;
//! - patch: the repository at the base commit, one tarball, searched for what the request names.
//!
//! The instructions and the label list are read with `If-None-Match` and kept in the store
//! (`context_reads`, shared by replicas), so an unchanged one is a free 304. A missing
//! instructions file has no ETag to ask with: it is asked for again after
//! [`ABSENT_RECHECK_MS`]. A label list read within [`LABELS_FRESH_MS`] is used without asking.

use crate::github::client::{ClientError, FileRead, GithubClient, LabelsRead, RepoLabel};
use crate::github::retry::GithubError;
use crate::github::tarball::{Tarball, TarballLimits};
use crate::llm::retrieval::{fill_patch_context, SourceFile};
use crate::llm::{Context, LabelChoice, LinkedIssue};
use crate::policy::CompiledPolicy;
use crate::store::{read_cache, Store};
use std::collections::HashMap;

/// Where the maintainers' standing guidance lives, on the default branch.
pub const INSTRUCTIONS_PATH: &str = ".github/orch/instructions.md";
/// The most of it a prompt takes.
pub const INSTRUCTIONS_MAX_BYTES: usize = 8 * 1024;
/// How long a missing instructions file is believed missing.
pub const ABSENT_RECHECK_MS: i64 = 10 * 60 * 1000;
/// The most of a linked issue's body shown.
const LINKED_BODY_CHARS: usize = 4_000;

const LABELS_RESOURCE: &str = "labels";
/// A label list read this recently is used without asking again: a burst of triages on one
/// repository reads it once. A label created meanwhile is offered from the next read on.
pub const LABELS_FRESH_MS: i64 = 5 * 60 * 1000;

fn now_ms() -> i64 {
    crate::store::now_ms()
}

/// `.github/orch/instructions.md`, cut to 8 KB, and a note when it was cut.
pub async fn instructions(
    github: &GithubClient,
    store: &Store,
    installation: i64,
    repo: &str,
) -> anyhow::Result<(Option<String>, Option<String>)> {
    let cached = read_cache::context_read(store.pool(), repo, INSTRUCTIONS_PATH).await?;
    let now = now_ms();
    let text = match &cached {
        Some(c) if c.etag.is_none() && c.body.is_none() && now - c.read_at < ABSENT_RECHECK_MS => None,
        _ => {
            let etag = cached.as_ref().and_then(|c| c.etag.as_deref());
            match github.file_if_changed(installation, repo, INSTRUCTIONS_PATH, etag).await? {
                FileRead::NotModified => cached.and_then(|c| c.body),
                read => {
                    let (text, etag) = match read {
                        FileRead::Found { text, etag } => (Some(text), etag),
                        _ => (None, None),
                    };
                    let _write = store.write_guard().await;
                    read_cache::record_context_read(store.pool(), repo, INSTRUCTIONS_PATH, etag.as_deref(), text.as_deref(), now).await?;
                    text
                }
            }
        }
    };
    Ok(match text {
        Some(text) if text.len() > INSTRUCTIONS_MAX_BYTES => {
            let mut cut = INSTRUCTIONS_MAX_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let note = format!(
                "{INSTRUCTIONS_PATH} (cut: the file is {} bytes; the first {} are used)",
                text.len(),
                INSTRUCTIONS_MAX_BYTES
            );
            (Some(text[..cut].to_string()), Some(note))
        }
        text => (text, None),
    })
}

/// The labels `policy` allows that exist in the repository, with their descriptions: globs such
/// as `priority:*` are matched against the repository's label list.
pub async fn allowed_labels(
    github: &GithubClient,
    store: &Store,
    installation: i64,
    repo: &str,
    policy: &CompiledPolicy,
) -> anyhow::Result<Vec<LabelChoice>> {
    let cached = read_cache::context_read(store.pool(), repo, LABELS_RESOURCE).await?;
    let labels: Vec<RepoLabel> = match cached.as_ref().filter(|c| now_ms() - c.read_at < LABELS_FRESH_MS) {
        Some(recent) => serde_json::from_str(recent.body.as_deref().unwrap_or("[]"))?,
        None => {
            let etag = cached.as_ref().and_then(|c| c.etag.as_deref());
            match github.repo_labels_if_changed(installation, repo, etag).await? {
                LabelsRead::NotModified => {
                    let body = cached.as_ref().and_then(|c| c.body.clone()).unwrap_or_else(|| "[]".into());
                    // Still what GitHub has: fresh again, with the same ETag.
                    let _write = store.write_guard().await;
                    read_cache::record_context_read(store.pool(), repo, LABELS_RESOURCE, etag, Some(&body), now_ms()).await?;
                    serde_json::from_str(&body)?
                }
                LabelsRead::Found { labels, etag } => {
                    let body = serde_json::to_string(&labels)?;
                    let _write = store.write_guard().await;
                    read_cache::record_context_read(store.pool(), repo, LABELS_RESOURCE, etag.as_deref(), Some(&body), now_ms()).await?;
                    labels
                }
            }
        }
    };
    Ok(labels
        .into_iter()
        .filter(|l| policy.label_in_allow_list(&l.name))
        .map(|l| LabelChoice {
            name: l.name,
            description: l.description,
        })
        .collect())
}

/// The issue a pull request's body says it closes (`Fixes #12`, `Closes #12`, `Resolves #12`).
pub fn linked_issue_number(body: &str) -> Option<i64> {
    static PATTERN: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let pattern = PATTERN.get_or_init(|| {
        regex::Regex::new(r"(?i)\b(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?)\s*:?\s+#(\d{1,9})\b").expect("a valid pattern")
    });
    pattern.captures(body)?.get(1)?.as_str().parse().ok()
}

/// A pull request's changed files as hunks, largest first, and the issue its body links.
pub async fn pull_request(
    github: &GithubClient,
    installation: i64,
    repo: &str,
    number: i64,
    body: &str,
) -> anyhow::Result<(Vec<(String, String)>, Option<LinkedIssue>)> {
    let files = github.pull_files(installation, repo, number).await?;
    let mut hunks: Vec<(String, String)> = files
        .into_iter()
        .map(|f| {
            let text = match f.patch {
                Some(patch) => patch,
                // GitHub leaves the patch out of binary and very large files.
                None => format!("({} file; GitHub shows no textual diff for it)", f.status),
            };
            let path = match f.previous_filename {
                Some(from) if from != f.filename => format!("{} (renamed from {from})", f.filename),
                _ => f.filename,
            };
            (path, text)
        })
        .collect();
    hunks.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
    let linked = match linked_issue_number(body).filter(|n| *n != number) {
        Some(n) => match github.issue(installation, repo, n).await {
            Ok(issue) => Some(LinkedIssue {
                number: n,
                title: issue.title,
                body: issue.body.unwrap_or_default().chars().take(LINKED_BODY_CHARS).collect(),
            }),
            // A number that is no issue here (a typo, another repository's) is no context.
            Err(ClientError::Github(GithubError::Permanent { status: 404, .. })) => None,
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    Ok((hunks, linked))
}

/// What a patch's context read on its base commit: file texts (None: no such file), and every
/// path of the commit when the whole tree was read.
#[derive(Debug, Default)]
pub struct BaseRead {
    pub files: HashMap<String, Option<String>>,
    pub listed: Option<std::collections::HashSet<String>>,
}

/// The most text of a downloaded repository kept for the diff and the `edit`s of the proposal
/// (beyond it, only the files shown are kept, and others are read when a patch changes them).
const KEEP_TEXT_BYTES: usize = 32 * 1024 * 1024;

/// Fills a patch's context from the repository at `base` (one tarball), and returns the texts
/// read there, for the diff and for applying `edit`s without asking GitHub again. When the
/// repository is too large to download, only the files the request names in backticks are read
/// (one request each), and the proposal says so.
pub async fn patch(
    github: &GithubClient,
    installation: i64,
    repo: &str,
    base: &str,
    context: &mut Context,
    budget_tokens: u32,
    limits: &TarballLimits,
) -> anyhow::Result<BaseRead> {
    let mut read = HashMap::new();
    let mut listed = None;
    match github.tarball(installation, repo, base, limits).await? {
        Tarball::Files(snapshot) => {
            let files: Vec<SourceFile<'_>> = snapshot
                .files
                .iter()
                .map(|f| SourceFile {
                    path: &f.path,
                    text: &f.text,
                })
                .collect();
            fill_patch_context(context, &snapshot.paths, &files, budget_tokens);
            let total: usize = snapshot.files.iter().map(|f| f.text.len()).sum();
            if total <= KEEP_TEXT_BYTES {
                read.extend(snapshot.files.iter().map(|f| (f.path.clone(), Some(f.text.clone()))));
                listed = Some(snapshot.paths.iter().cloned().collect());
            } else {
                let texts: HashMap<&str, &str> = snapshot.files.iter().map(|f| (f.path.as_str(), f.text.as_str())).collect();
                for path in context.files.iter().chain(&context.excerpts).map(|(p, _)| p) {
                    read.insert(path.clone(), texts.get(path.as_str()).map(|t| t.to_string()));
                }
            }
            // A named path that is not in the repository is known to be missing.
            for path in named_paths(context) {
                if !snapshot.paths.contains(&path) {
                    read.insert(path, None);
                }
            }
        }
        Tarball::TooLarge { what } => {
            context.notes.push(format!(
                "the repository's code (not searched: {what}; only the files the request names were read)"
            ));
            let mut named = Vec::new();
            for path in named_paths(context).into_iter().take(5) {
                let text = github.file(installation, repo, &path, Some(base)).await?;
                if let Some(text) = &text {
                    named.push((path.clone(), text.clone()));
                }
                read.insert(path, text);
            }
            let files: Vec<SourceFile<'_>> = named.iter().map(|(p, t)| SourceFile { path: p, text: t }).collect();
            fill_patch_context(context, &[], &files, budget_tokens);
        }
    }
    Ok(BaseRead { files: read, listed })
}

/// The paths the instruction names in backticks that are plain relative paths (a path that could
/// leave the repository is named in `context.refused` instead, SPEC §12).
fn named_paths(context: &mut Context) -> Vec<String> {
    let Some(instruction) = context.instruction.clone() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for path in instruction
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|p| !p.contains(' ') && p.contains(['/', '.']))
    {
        match crate::github::client::check_path(path) {
            Ok(()) => out.push(path.to_string()),
            Err(e) => {
                let refused = format!("{path:?} (refused: {})", e.problem);
                if !context.refused.contains(&refused) {
                    context.refused.push(refused);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_keywords_link_an_issue() {
        assert_eq!(linked_issue_number("Fixes #12"), Some(12));
        assert_eq!(linked_issue_number("This PR closes #7 and more"), Some(7));
        assert_eq!(linked_issue_number("resolved: #40"), Some(40));
        assert_eq!(linked_issue_number("Refs #12"), None);
        assert_eq!(linked_issue_number("prefix#12 fixes#3"), None);
        assert_eq!(linked_issue_number(""), None);
    }
}

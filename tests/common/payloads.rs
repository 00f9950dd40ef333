//! Webhook bodies shaped as GitHub sends them, for end-to-end tests: every builder returns the
//! JSON of one delivery, with `installation`, `repository` and `sender` and the nested objects
//! (issue, comment, pull request, check run) carrying the fields GitHub's real payloads carry.
//! `tests/e2e_smoke.rs` parses each builder's output with `orch::webhook::parse` and checks its
//! keys against the recorded GitHub payloads of the shared reference folder.
//!
//! User ids are derived from the login, so the same login always has the same id; logins ending
//! in `[bot]` are `Bot`s, the rest `User`s, unless a builder takes the type explicitly.
#![allow(dead_code)]

use serde_json::{json, Value};

/// A fixed time for `created_at`/`updated_at`: the payloads need not be fresh, only well formed.
const AT: &str = "2024-05-02T09:30:00Z";

/// The repository a delivery is about, and the installation it came through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSpec {
    pub id: i64,
    /// `owner/name`.
    pub full_name: String,
    pub default_branch: String,
    pub private: bool,
    pub installation: i64,
}

impl RepoSpec {
    /// A public repository on `main`; its id is derived from the name.
    pub fn new(full_name: &str, installation: i64) -> Self {
        RepoSpec {
            id: stable_id("repo", full_name),
            full_name: full_name.to_string(),
            default_branch: "main".into(),
            private: false,
            installation,
        }
    }

    pub fn owner(&self) -> &str {
        self.full_name.split_once('/').map(|(o, _)| o).unwrap_or(&self.full_name)
    }

    pub fn name(&self) -> &str {
        self.full_name.split_once('/').map(|(_, n)| n).unwrap_or(&self.full_name)
    }
}

/// An issue, or the issue side of a pull request (`is_pull_request`), as webhooks show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueSpec {
    pub number: i64,
    pub title: String,
    pub body: String,
    pub author: String,
    pub labels: Vec<String>,
    pub is_pull_request: bool,
    /// GitHub's comment count in the payload.
    pub comments: i64,
}

impl IssueSpec {
    /// An open issue by `dev-lee` with a short body and no labels.
    pub fn new(number: i64, title: &str) -> Self {
        IssueSpec {
            number,
            title: title.to_string(),
            body: format!("Steps to reproduce for #{number}: run `widgets` with an empty config."),
            author: "dev-lee".into(),
            labels: Vec::new(),
            is_pull_request: false,
            comments: 0,
        }
    }

    /// The payload says the issue has `count` comments.
    pub fn comments(mut self, count: i64) -> Self {
        self.comments = count;
        self
    }

    pub fn body(mut self, body: &str) -> Self {
        self.body = body.to_string();
        self
    }

    pub fn by(mut self, author: &str) -> Self {
        self.author = author.to_string();
        self
    }

    pub fn labels(mut self, labels: &[&str]) -> Self {
        self.labels = labels.iter().map(|l| l.to_string()).collect();
        self
    }

    /// The issue side of a pull request (comments on PRs arrive as `issue_comment`).
    pub fn pull_request(mut self) -> Self {
        self.is_pull_request = true;
        self
    }
}

impl Default for IssueSpec {
    fn default() -> Self {
        IssueSpec::new(1, "Crash when the config file is empty")
    }
}

/// A pull request as webhooks show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSpec {
    pub number: i64,
    pub title: String,
    pub body: String,
    pub author: String,
    pub head_sha: String,
    pub head_ref: String,
    pub base_ref: String,
    pub base_sha: String,
    pub labels: Vec<String>,
    pub draft: bool,
}

impl PullSpec {
    /// An open, non-draft pull request by `dev-lee` from `head_ref` at `head_sha` into `main`
    /// (base SHA made up; set `base_sha` when the test knows the real one).
    pub fn new(number: i64, title: &str, head_ref: &str, head_sha: &str) -> Self {
        PullSpec {
            number,
            title: title.to_string(),
            body: "Fixes the crash on an empty config file.".into(),
            author: "dev-lee".into(),
            head_sha: head_sha.to_string(),
            head_ref: head_ref.to_string(),
            base_ref: "main".into(),
            base_sha: fake_sha("base", "main"),
            labels: Vec::new(),
            draft: false,
        }
    }

    pub fn by(mut self, author: &str) -> Self {
        self.author = author.to_string();
        self
    }

    pub fn labels(mut self, labels: &[&str]) -> Self {
        self.labels = labels.iter().map(|l| l.to_string()).collect();
        self
    }

    /// The pull request's issue side, for `issue_comment` deliveries on it.
    pub fn as_issue(&self) -> IssueSpec {
        IssueSpec {
            number: self.number,
            title: self.title.clone(),
            body: self.body.clone(),
            author: self.author.clone(),
            labels: self.labels.clone(),
            is_pull_request: true,
            comments: 0,
        }
    }
}

impl Default for PullSpec {
    fn default() -> Self {
        PullSpec::new(
            2,
            "Handle an empty config file",
            "fix-empty-config",
            &fake_sha("head", "fix-empty-config"),
        )
    }
}

/// A deterministic id for `what` (ids must be stable per login, repository, …).
pub fn stable_id(kind: &str, what: &str) -> i64 {
    // FNV-1a, folded into a range that looks like GitHub ids.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in kind.bytes().chain([0]).chain(what.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    1_000_000 + (h % 900_000_000) as i64
}

/// A made-up 40-hex-digit commit SHA, stable for its inputs.
pub fn fake_sha(kind: &str, what: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(format!("{kind}\0{what}")))[..40].to_string()
}

/// A bot account that renamed itself to a login without `[bot]`: GitHub still reports it as type
/// `Bot`, which is what makes it a bot.
pub const RENAMED_BOT: &str = "helpful-helper";

/// `Bot` for logins ending in `[bot]` and for [`RENAMED_BOT`], else `User`.
pub fn user_type(login: &str) -> &'static str {
    if login.ends_with("[bot]") || login == RENAMED_BOT {
        "Bot"
    } else {
        "User"
    }
}

/// A GitHub user object.
pub fn user(login: &str, kind: &str) -> Value {
    let id = stable_id("user", login);
    let node = if kind == "Bot" { "BOT" } else { "U" };
    json!({
        "login": login,
        "id": id,
        "node_id": format!("{node}_kgDO{id}"),
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}?v=4"),
        "gravatar_id": "",
        "url": format!("https://api.github.com/users/{login}"),
        "html_url": format!("https://github.com/{login}"),
        "type": kind,
        "site_admin": false
    })
}

fn label(repo: &RepoSpec, name: &str) -> Value {
    let id = stable_id("label", name);
    json!({
        "id": id,
        "node_id": format!("LA_kwDO{id}"),
        "url": format!("https://api.github.com/repos/{}/labels/{name}", repo.full_name),
        "name": name,
        "color": "d73a4a",
        "default": false,
        "description": null
    })
}

fn labels(repo: &RepoSpec, names: &[String], plus: Option<&str>) -> Value {
    let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
    // GitHub's `labeled` payloads list the added label among the issue's labels already.
    if let Some(l) = plus.filter(|l| !all.contains(l)) {
        all.push(l);
    }
    Value::Array(all.into_iter().map(|n| label(repo, n)).collect())
}

/// The `repository` object.
pub fn repository(repo: &RepoSpec) -> Value {
    let full = &repo.full_name;
    json!({
        "id": repo.id,
        "node_id": format!("R_kgDO{}", repo.id),
        "name": repo.name(),
        "full_name": full,
        "private": repo.private,
        "owner": user(repo.owner(), "Organization"),
        "html_url": format!("https://github.com/{full}"),
        "description": "Widgets, made well.",
        "fork": false,
        "url": format!("https://api.github.com/repos/{full}"),
        "created_at": "2023-01-10T08:00:00Z",
        "updated_at": AT,
        "pushed_at": AT,
        "homepage": null,
        "size": 120,
        "stargazers_count": 3,
        "watchers_count": 3,
        "language": "Rust",
        "has_issues": true,
        "has_projects": false,
        "has_downloads": true,
        "has_wiki": false,
        "has_pages": false,
        "forks_count": 0,
        "archived": false,
        "disabled": false,
        "open_issues_count": 4,
        "license": null,
        "forks": 0,
        "open_issues": 4,
        "watchers": 3,
        "default_branch": repo.default_branch,
        "is_template": false,
        "topics": [],
        "visibility": if repo.private { "private" } else { "public" }
    })
}

fn installation(repo: &RepoSpec) -> Value {
    json!({ "id": repo.installation, "node_id": format!("MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9u{}", repo.installation) })
}

fn reactions(url: String) -> Value {
    json!({
        "url": url, "total_count": 0, "+1": 0, "-1": 0, "laugh": 0, "hooray": 0,
        "confused": 0, "heart": 0, "rocket": 0, "eyes": 0
    })
}

/// The `issue` object.
pub fn issue(repo: &RepoSpec, issue: &IssueSpec, added_label: Option<&str>) -> Value {
    let full = &repo.full_name;
    let n = issue.number;
    let id = stable_id("issue", &format!("{full}#{n}"));
    let api = format!("https://api.github.com/repos/{full}/issues/{n}");
    let mut v = json!({
        "url": api,
        "repository_url": format!("https://api.github.com/repos/{full}"),
        "html_url": format!("https://github.com/{full}/{}/{n}", if issue.is_pull_request { "pull" } else { "issues" }),
        "id": id,
        "node_id": format!("I_kwDO{id}"),
        "number": n,
        "title": issue.title,
        "user": user(&issue.author, user_type(&issue.author)),
        "labels": labels(repo, &issue.labels, added_label),
        "state": "open",
        "locked": false,
        "assignee": null,
        "assignees": [],
        "milestone": null,
        "comments": issue.comments,
        "created_at": AT,
        "updated_at": AT,
        "closed_at": null,
        "author_association": "CONTRIBUTOR",
        "active_lock_reason": null,
        "body": issue.body,
        "reactions": reactions(format!("{api}/reactions")),
        "draft": false
    });
    if issue.is_pull_request {
        v["pull_request"] = json!({
            "url": format!("https://api.github.com/repos/{full}/pulls/{n}"),
            "html_url": format!("https://github.com/{full}/pull/{n}"),
            "diff_url": format!("https://github.com/{full}/pull/{n}.diff"),
            "patch_url": format!("https://github.com/{full}/pull/{n}.patch"),
            "merged_at": null
        });
    }
    v
}

/// The `comment` object of an issue comment.
pub fn comment(repo: &RepoSpec, issue: &IssueSpec, comment_id: i64, body: &str, author_login: &str, author_type: &str) -> Value {
    let full = &repo.full_name;
    let api = format!("https://api.github.com/repos/{full}/issues/comments/{comment_id}");
    json!({
        "url": api,
        "html_url": format!("https://github.com/{full}/issues/{}#issuecomment-{comment_id}", issue.number),
        "issue_url": format!("https://api.github.com/repos/{full}/issues/{}", issue.number),
        "id": comment_id,
        "node_id": format!("IC_kwDO{comment_id}"),
        "user": user(author_login, author_type),
        "created_at": AT,
        "updated_at": AT,
        "author_association": if author_type == "Bot" { "NONE" } else { "MEMBER" },
        "body": body,
        "reactions": reactions(format!("{api}/reactions")),
        "performed_via_github_app": null
    })
}

fn envelope(action: &str, repo: &RepoSpec, sender: Value) -> Value {
    json!({
        "action": action,
        "repository": repository(repo),
        "sender": sender,
        "installation": installation(repo)
    })
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

/// `ping`, as sent when an App's webhook is created.
pub fn ping(app_id: u64) -> Value {
    json!({
        "zen": "Design for failure.",
        "hook_id": 481_516_234_i64,
        "hook": {
            "type": "App",
            "id": 481_516_234_i64,
            "name": "web",
            "active": true,
            "events": ["issues", "issue_comment", "pull_request", "check_run"],
            "config": { "content_type": "json", "insecure_ssl": "0", "url": "https://orch.example.com/webhook" },
            "updated_at": AT,
            "created_at": AT,
            "app_id": app_id,
            "deliveries_url": "https://api.github.com/app/hook/deliveries"
        }
    })
}

/// `issues` / `opened`, sent by the issue's author.
pub fn issue_opened(repo: &RepoSpec, spec: &IssueSpec) -> Value {
    merge(
        envelope("opened", repo, user(&spec.author, user_type(&spec.author))),
        json!({ "issue": issue(repo, spec, None) }),
    )
}

/// `issues` / `labeled`: `sender` added `label` (listed among the issue's labels, as GitHub does).
pub fn issue_labeled(repo: &RepoSpec, spec: &IssueSpec, label_name: &str, sender: &str) -> Value {
    merge(
        envelope("labeled", repo, user(sender, user_type(sender))),
        json!({ "issue": issue(repo, spec, Some(label_name)), "label": label(repo, label_name) }),
    )
}

/// `issue_comment` / `created`.
pub fn issue_comment_created(
    repo: &RepoSpec,
    spec: &IssueSpec,
    comment_id: i64,
    body: &str,
    author_login: &str,
    author_type: &str,
) -> Value {
    merge(
        envelope("created", repo, user(author_login, author_type)),
        json!({
            "issue": issue(repo, spec, None),
            "comment": comment(repo, spec, comment_id, body, author_login, author_type)
        }),
    )
}

/// `issue_comment` / `edited`: the comment now reads `new_body`; `changes.body.from` holds the old
/// text. `sender` is who edited it (GitHub lets maintainers edit others' comments).
pub fn issue_comment_edited(
    repo: &RepoSpec,
    spec: &IssueSpec,
    comment_id: i64,
    old_body: &str,
    new_body: &str,
    author_login: &str,
    sender: &str,
) -> Value {
    merge(
        envelope("edited", repo, user(sender, user_type(sender))),
        json!({
            "changes": { "body": { "from": old_body } },
            "issue": issue(repo, spec, None),
            "comment": comment(repo, spec, comment_id, new_body, author_login, user_type(author_login))
        }),
    )
}

/// `issue_comment` / `deleted`: the comment as it was, deleted by `sender`.
pub fn issue_comment_deleted(repo: &RepoSpec, spec: &IssueSpec, comment_id: i64, body: &str, author_login: &str, sender: &str) -> Value {
    merge(
        envelope("deleted", repo, user(sender, user_type(sender))),
        json!({
            "issue": issue(repo, spec, None),
            "comment": comment(repo, spec, comment_id, body, author_login, user_type(author_login))
        }),
    )
}

fn branch(repo: &RepoSpec, author: &str, name: &str, sha: &str) -> Value {
    json!({
        "label": format!("{}:{name}", repo.owner()),
        "ref": name,
        "sha": sha,
        "user": user(author, user_type(author)),
        "repo": repository(repo)
    })
}

/// The `pull_request` object; `head_sha` overrides the spec's (for `synchronize`).
pub fn pull_request_object(repo: &RepoSpec, pr: &PullSpec, added_label: Option<&str>, head_sha: &str) -> Value {
    let full = &repo.full_name;
    let n = pr.number;
    let id = stable_id("pull", &format!("{full}#{n}"));
    let api = format!("https://api.github.com/repos/{full}/pulls/{n}");
    let html = format!("https://github.com/{full}/pull/{n}");
    let first = json!({
        "url": api,
        "id": id,
        "node_id": format!("PR_kwDO{id}"),
        "html_url": html,
        "diff_url": format!("{html}.diff"),
        "patch_url": format!("{html}.patch"),
        "issue_url": format!("https://api.github.com/repos/{full}/issues/{n}"),
        "number": n,
        "state": "open",
        "locked": false,
        "title": pr.title,
        "user": user(&pr.author, user_type(&pr.author)),
        "body": pr.body,
        "created_at": AT,
        "updated_at": AT,
        "closed_at": null,
        "merged_at": null,
        "merge_commit_sha": null,
        "assignee": null,
        "assignees": [],
        "requested_reviewers": [],
        "requested_teams": [],
        "labels": labels(repo, &pr.labels, added_label),
        "milestone": null
    });
    // Two halves: one `json!` of all the fields would exceed the macro recursion limit.
    let rest = json!({
        "head": branch(repo, &pr.author, &pr.head_ref, head_sha),
        "base": branch(repo, repo.owner(), &pr.base_ref, &pr.base_sha),
        "_links": {
            "self": { "href": api },
            "html": { "href": html },
            "issue": { "href": format!("https://api.github.com/repos/{full}/issues/{n}") },
            "comments": { "href": format!("https://api.github.com/repos/{full}/issues/{n}/comments") },
            "statuses": { "href": format!("https://api.github.com/repos/{full}/statuses/{head_sha}") }
        },
        "author_association": "CONTRIBUTOR",
        "auto_merge": null,
        "active_lock_reason": null,
        "draft": pr.draft,
        "merged": false,
        "mergeable": null,
        "rebaseable": null,
        "mergeable_state": "unknown",
        "merged_by": null,
        "comments": 0,
        "review_comments": 0,
        "maintainer_can_modify": false,
        "commits": 1,
        "additions": 3,
        "deletions": 1,
        "changed_files": 1
    });
    merge(first, rest)
}

/// `pull_request` / `opened`, `reopened` or `labeled` (give the added `label` for `labeled`).
pub fn pull_request(action: &str, repo: &RepoSpec, pr: &PullSpec, label_name: Option<&str>, sender: &str) -> Value {
    assert!(
        matches!(action, "opened" | "reopened" | "labeled"),
        "pull_request builder: use pull_request_synchronize for {action:?}"
    );
    assert_eq!(
        action == "labeled",
        label_name.is_some(),
        "a label goes with `labeled`, and only with it"
    );
    let mut v = merge(
        envelope(action, repo, user(sender, user_type(sender))),
        json!({ "number": pr.number, "pull_request": pull_request_object(repo, pr, label_name, &pr.head_sha) }),
    );
    if let Some(l) = label_name {
        v["label"] = label(repo, l);
    }
    v
}

/// `pull_request` / `synchronize`: the head moved from `before` to `after` (a push).
pub fn pull_request_synchronize(repo: &RepoSpec, pr: &PullSpec, before: &str, after: &str, sender: &str) -> Value {
    merge(
        envelope("synchronize", repo, user(sender, user_type(sender))),
        json!({
            "number": pr.number,
            "pull_request": pull_request_object(repo, pr, None, after),
            "before": before,
            "after": after
        }),
    )
}

/// `check_run` / `requested_action`: `sender` pressed the button `identifier` on a check run.
/// Without `external_id` the field is the empty string, as GitHub sends it.
#[allow(clippy::too_many_arguments)]
pub fn check_run_requested_action(
    repo: &RepoSpec,
    check_run_id: i64,
    name: &str,
    head_sha: &str,
    external_id: Option<&str>,
    identifier: &str,
    sender_login: &str,
    sender_type: &str,
) -> Value {
    let full = &repo.full_name;
    let suite_id = stable_id("suite", head_sha);
    let app = json!({
        "id": 4242,
        "slug": "orch",
        "node_id": "A_kwDOorch",
        "owner": user(repo.owner(), "Organization"),
        "name": "orch",
        "description": "",
        "external_url": "https://orch.example.com",
        "html_url": "https://github.com/apps/orch",
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": AT,
        "permissions": { "checks": "write", "contents": "write", "issues": "write", "metadata": "read", "pull_requests": "write" },
        "events": ["check_run", "issue_comment", "issues", "pull_request"]
    });
    merge(
        envelope("requested_action", repo, user(sender_login, sender_type)),
        json!({
            "check_run": {
                "id": check_run_id,
                "name": name,
                "node_id": format!("CR_kwDO{check_run_id}"),
                "head_sha": head_sha,
                "external_id": external_id.unwrap_or(""),
                "url": format!("https://api.github.com/repos/{full}/check-runs/{check_run_id}"),
                "html_url": format!("https://github.com/{full}/runs/{check_run_id}"),
                "details_url": "https://orch.example.com",
                "status": "completed",
                "conclusion": "action_required",
                "started_at": AT,
                "completed_at": AT,
                "output": { "title": "Waiting for approval", "summary": "", "text": null, "annotations_count": 0 },
                "check_suite": {
                    "id": suite_id,
                    "node_id": format!("CS_kwDO{suite_id}"),
                    "head_branch": null,
                    "head_sha": head_sha,
                    "status": "completed",
                    "conclusion": "action_required",
                    "url": format!("https://api.github.com/repos/{full}/check-suites/{suite_id}"),
                    "before": null,
                    "after": head_sha,
                    "pull_requests": [],
                    "app": app.clone(),
                    "created_at": AT,
                    "updated_at": AT
                },
                "app": app,
                "pull_requests": []
            },
            "requested_action": { "identifier": identifier }
        }),
    )
}

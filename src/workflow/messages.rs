//! Every text orch posts about workflows, in one place so that they read alike.

use crate::llm::{PatchOutput, Proposal, QaPlanOutput, TriageOutput};
use crate::store::workflows::Workflow;
use crate::workflow::approval::{Decision, Person, Tally, Vote};
use crate::workflow::state::Kind;

pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Triage => "triage",
        Kind::QaPlan => "QA plan",
        Kind::Patch => "patch",
    }
}

/// The labels a triage proposal applies: its labels and its priority as `priority:pN`.
pub fn triage_labels(t: &TriageOutput) -> Vec<String> {
    let mut labels = t.labels.clone();
    let priority = format!("priority:{}", t.priority.as_str());
    if !labels.contains(&priority) {
        labels.push(priority);
    }
    labels
}

fn code_list(items: &[String]) -> String {
    items.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", ")
}

/// The proposal comment: what would happen, and how to approve it.
pub fn proposal(wf: &Workflow, proposal: &Proposal, reactions: bool) -> String {
    proposal_showing(wf, proposal, reactions, None)
}

/// [`proposal`], with `shown` (a patch's diff) after the description. Every proposal names its
/// revision (the first 12 hex characters of its hash): a vote counts for that revision only.
pub fn proposal_showing(wf: &Workflow, proposal: &Proposal, reactions: bool, shown: Option<&str>) -> String {
    let mut out = format!("### orch · {} proposal (workflow {})\n\n", kind_name(wf.kind), wf.id);
    if let Some(hash) = wf.proposal_hash.as_deref() {
        out.push_str(&format!("**Revision:** `{}`\n\n", &hash[..hash.len().min(12)]));
    }
    match proposal {
        Proposal::Triage(t) => {
            out.push_str(&format!(
                "**Labels:** {}\n**Priority:** {}\n\n{}\n",
                code_list(&triage_labels(t)),
                t.priority.as_str(),
                t.rationale
            ));
            if !t.dropped.is_empty() {
                let dropped: Vec<String> = t.dropped.iter().map(|l| crate::policy::gates::code(l)).collect();
                out.push_str(&format!(
                    "\n**Dropped:** {} (the model proposed {}, but `labels.allowed` does not allow {})\n",
                    dropped.join(", "),
                    if dropped.len() == 1 { "it" } else { "them" },
                    if dropped.len() == 1 { "it" } else { "them" },
                ));
            }
        }
        Proposal::QaPlan(q) => out.push_str(&qa_plan(q)),
        Proposal::Patch(p) => out.push_str(&patch(p)),
    }
    if let Some(shown) = shown {
        out.push('\n');
        out.push_str(shown);
    }
    out.push_str(&format!(
        "\nTo go ahead, a maintainer replies `/orch approve`{}; `/orch reject [reason]` drops it and `/orch request-changes <feedback>` asks for another try.",
        if reactions { " (or reacts 👍 to this comment; 👎 rejects)" } else { "" }
    ));
    out
}

pub fn qa_plan(q: &QaPlanOutput) -> String {
    let mut out = format!("{}\n\n", q.summary);
    for (i, s) in q.steps.iter().enumerate() {
        out.push_str(&format!("{}. **{}** — expected: {}\n", i + 1, s.title, s.expected));
    }
    if !q.risks.is_empty() {
        out.push_str("\n**Risks:**\n");
        for r in &q.risks {
            out.push_str(&format!("- {r}\n"));
        }
    }
    out
}

pub fn patch(p: &PatchOutput) -> String {
    let mut out = format!("**{}**\n\n{}\n\n", p.title, p.summary);
    for f in &p.files {
        let action = f.action.as_str();
        out.push_str(&format!("- {action} `{}` ({} bytes)\n", f.path, f.content.len()));
    }
    out
}

pub fn blocked(wf: &Workflow, violations: &[String]) -> String {
    let mut out = format!(
        "### orch · {} proposal blocked by policy (workflow {})\n\nThe proposal broke these rules of `.github/orch.yml`, so nothing was done:\n\n",
        kind_name(wf.kind),
        wf.id
    );
    for v in violations {
        out.push_str(&format!("- {v}\n"));
    }
    out.push_str("\n`/orch retry` asks again.");
    out
}

/// What `/orch status` and the dashboard say of a workflow whose next step waits for GitHub's
/// rate limit (SPEC §11): that it waits, and until when.
pub fn waits_for_github(until_ms: i64) -> String {
    format!(
        "waits for GitHub's rate limit until {} UTC; it goes on by itself then",
        crate::api::ui::html::time(until_ms)
    )
}

pub fn status_line(wf: &Workflow, tally: Option<&Tally>) -> String {
    let mut line = format!(
        "- workflow {} ({}, attempt {}): `{}`",
        wf.id,
        kind_name(wf.kind),
        wf.attempt,
        wf.state.as_str()
    );
    if let Some(t) = tally {
        line.push_str(&format!(" — {}", t.summary()));
    }
    if let Some(reason) = wf.reason.as_deref().filter(|r| !r.is_empty()) {
        line.push_str(&format!(" — {reason}"));
    }
    line
}

/// Who asked and who approved so far, by login and account id (ids are who people are; a
/// renamed account keeps its id), for `/orch status`: "  requested by @mara (id 7); approved
/// so far by @lee (id 9)".
pub fn status_people(requester: &Person, approvers: &[Person]) -> String {
    let mut line = format!("\n  requested by {}", requester.display());
    if !approvers.is_empty() {
        let shown: Vec<String> = approvers.iter().map(Person::display).collect();
        line.push_str(&format!("; approved so far by {}", shown.join(", ")));
    }
    line
}

/// The people behind a tally's counted approvals (the tally names them by login only).
pub fn counted_approvers(votes: &[Vote], wf: &Workflow, tally: &Tally) -> Vec<Person> {
    let logins: &[String] = match tally {
        Tally::Approved { approvers } | Tally::Pending { approvers, .. } => approvers,
        Tally::Rejected { .. } => return Vec::new(),
    };
    let current = wf.binding();
    let mut out: Vec<Person> = Vec::new();
    for login in logins {
        let vote = votes
            .iter()
            .rev()
            .find(|v| Some(&v.binding) == current.as_ref() && v.decision == Decision::Approve && v.voter.eq_ignore_ascii_case(login));
        if let Some(p) = vote.map(Vote::person).filter(|p| !out.contains(p)) {
            out.push(p);
        }
    }
    out
}

pub fn denied(login: &str, what: &str, repo: &str, permission: &str) -> String {
    format!(
        "@{login}, {what} needs write, maintain or admin permission on {repo}, or a place in `approvals.approvers` of `.github/orch.yml` (your permission: {permission}). Nothing was changed."
    )
}

pub fn phase_too_low(what: &str, needed: u8, phase: u8) -> String {
    format!("{what} is enabled from phase {needed}; this repository is at phase {phase} (`phase:` in `.github/orch.yml`, capped by the server).")
}

pub fn internal_error(wf_id: i64) -> String {
    format!("orch hit an internal error on workflow {wf_id} and stopped it; the operator can find the details in orch's logs. `/orch retry` starts again.")
}

/// The reply to a vote cast on a proposal that a newer one replaced (SPEC §6: a vote counts only
/// for the revision it was cast on). `what` is the vote ("your 👍", "your press of the Approve
/// button"); `voted` the revision it was cast on, when known.
pub fn void_vote(login: &str, what: &str, wf_id: i64, voted: Option<&str>, current: &str) -> String {
    let on = match voted {
        Some(r) => format!("revision `{r}`"),
        None => "an earlier revision".to_string(),
    };
    format!(
        "@{login}, {what} was for {on} of workflow {wf_id}, which a newer proposal replaced; the current revision is `{current}`. Nothing was recorded: review the current proposal and vote there."
    )
}

/// The revision an action key names: its last `:` part (`wf3:check:1:<revision>`).
pub fn revision_of_key(key: &str) -> Option<&str> {
    key.rsplit(':')
        .next()
        .filter(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The note on a proposal that waited `days` days without a decision.
pub fn expired(wf_id: i64, days: u32) -> String {
    let days = if days == 1 { "1 day".to_string() } else { format!("{days} days") };
    format!(
        "Workflow {wf_id}'s proposal expired: it waited {days} without a decision (`approvals.expire_days`), so nothing was applied and orch no longer watches it for approvals. `/orch retry` makes a new proposal; `/orch cancel` closes the workflow."
    )
}

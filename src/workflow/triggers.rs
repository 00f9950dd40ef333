//! Events and commands → workflows (SPEC §4, §5): the label that starts a triage, the `/orch`
//! commands of a comment, the check-run buttons, the push that voids approvals. Everything here
//! may run again for the same delivery (a retried job): replies and reactions are exactly-once
//! actions keyed by the delivery or comment, workflows are created once per issue and kind, and
//! votes are recorded once per comment.

use super::approval::{Decision, Source, Tally, Vote};
use super::authz::{authorize, Authz};
use super::engine::Engine;
use super::messages;
use super::service::{Caller, Service, Start};
use super::state::{Kind, State, Step};
use crate::commands::{self, Command};
use crate::github::actions;
use crate::policy::{phase_needed, Effective, Work};
use crate::store::trigger_runs::{self, TriggerRun};
use crate::store::workflows::{self, Created, NewWorkflow, Workflow};
use crate::store::{jobs, now_ms, read_cache, WriteTx};
use crate::webhook::event::{Actor, Event, Issue, PullRequest, PullRequestTrigger, Repo};
use anyhow::Context as _;

/// Whether `event` may start or move a workflow (and so needs GitHub to process).
pub fn concerns_workflows(event: &Event) -> bool {
    matches!(
        event,
        Event::IssueOpened { .. }
            | Event::IssueLabeled { .. }
            | Event::IssueCommentCreated { .. }
            | Event::PullRequest { .. }
            | Event::PullRequestSynchronize { .. }
            | Event::CheckRunRequestedAction { .. }
    )
}

/// A vote for a workflow whose proposal is still being posted (see `target`): transient, so the
/// delivery's job runs again after its backoff, by when the workflow waits for approval.
#[derive(Debug, thiserror::Error)]
#[error("workflow {0}'s proposal is still being posted; the command runs again once it waits for approval")]
pub struct ProposalInFlight(pub i64);

/// Where a reply goes.
struct Place<'a> {
    installation: i64,
    repo: &'a str,
    number: i64,
}

/// One trigger: its key in `trigger_runs` (`c<comment>:<line>` for a command, `d<guid>` for a
/// label or a button), its verb, the comment to acknowledge with 👀, for commands, and how many
/// workflows the same run (comment) asked for before it.
struct Trigger<'a> {
    at: Place<'a>,
    key: String,
    verb: &'static str,
    comment: Option<i64>,
    tasks_before: u32,
    /// What the delivery said about the issue or pull request: kept with a workflow it starts,
    /// whose context is then built without asking GitHub again.
    subject: Option<read_cache::Subject>,
}

/// What a trigger decided, before it is recorded.
enum Outcome {
    /// Only a reply (help, status, refusals); `accepted` says whether it is acknowledged with 👀.
    Reply { accepted: bool, text: String },
    /// A command refused for lack of permission: its reply is posted only if the user got no
    /// other refusal on this issue within the hour (SPEC §5); otherwise it is only audited.
    Refused { user_id: i64, text: String },
    /// Start a workflow of this kind.
    Start(NewWorkflow),
    /// A vote on a waiting workflow.
    Vote {
        wf: Box<Workflow>,
        vote: Vote,
        comment_id: Option<i64>,
    },
    /// Move workflows by a step, then reply.
    Move {
        moves: Vec<(Workflow, Step)>,
        actor: String,
        reason: String,
        wake: bool,
        text: String,
    },
}

impl Engine {
    async fn reply(&self, at: &Place<'_>, key: &str, body: &str) -> anyhow::Result<()> {
        actions::comment_once(&self.store, Some(&self.github), key, at.installation, at.repo, at.number, body).await?;
        Ok(())
    }

    /// Processes one delivery's event. Decisions are recorded per trigger, so processing the
    /// same delivery or comment again repeats no effect and no reply.
    pub async fn handle(&self, guid: &str, installation: Option<i64>, event: &Event) -> anyhow::Result<()> {
        let Some(installation) = installation else {
            tracing::debug!(kind = event.kind(), "no installation in the payload; nothing to act on");
            return Ok(());
        };
        let delivery = |repo, number, verb| delivery_trigger(installation, guid, repo, number, verb);
        match event {
            Event::IssueLabeled {
                repo,
                issue,
                label,
                sender,
            } => {
                let Some(sender) = sender.as_ref().filter(|s| !self.is_bot(s)) else {
                    return Ok(());
                };
                let policy = self.policy(installation, &repo.full_name).await?;
                if *label == policy.policy.triggers.triage_label {
                    let mut t = delivery(&repo.full_name, issue.number, "label");
                    t.subject = Some(issue_subject(repo, issue, None));
                    let decision = self.start(&t, &policy, Kind::Triage, sender, None, None, "label").await?;
                    self.record(&t, decision).await?;
                }
            }
            Event::IssueOpened { repo, issue, .. } => {
                let policy = self.policy(installation, &repo.full_name).await?;
                if policy.policy.triggers.triage_on_open && policy.phase >= phase_needed(Work::AutoTrigger) && !issue.author.is_bot {
                    let mut t = delivery(&repo.full_name, issue.number, "issue_opened");
                    t.subject = Some(issue_subject(repo, issue, None));
                    let new = self
                        .new_workflow(&t, Kind::Triage, &issue.author, None, None, "issue opened")
                        .await?;
                    self.record(&t, Outcome::Start(new)).await?;
                }
            }
            Event::PullRequest {
                repo,
                pull_request,
                trigger,
                label,
                sender,
            } => {
                let policy = self.policy(installation, &repo.full_name).await?;
                let mut t = delivery(&repo.full_name, pull_request.number, "pull_request");
                t.subject = Some(pull_subject(repo, pull_request));
                let head = Some(pull_request.head_sha.clone());
                match trigger {
                    PullRequestTrigger::Labeled if label.as_deref() == Some(policy.policy.triggers.qa_label.as_str()) => {
                        if let Some(sender) = sender.as_ref().filter(|s| !self.is_bot(s)) {
                            let decision = self.start(&t, &policy, Kind::QaPlan, sender, None, head, "label").await?;
                            self.record(&t, decision).await?;
                        }
                    }
                    PullRequestTrigger::Opened | PullRequestTrigger::Reopened
                        if policy.policy.triggers.qa_on_pr_open && policy.phase >= phase_needed(Work::AutoTrigger) =>
                    {
                        let new = self
                            .new_workflow(&t, Kind::QaPlan, &pull_request.author, None, head, "pull request opened")
                            .await?;
                        self.record(&t, Outcome::Start(new)).await?;
                    }
                    _ => {}
                }
            }
            Event::PullRequestSynchronize {
                repo,
                pull_request,
                before,
                after,
                ..
            } => {
                self.head_moved(installation, repo, pull_request.number, before.as_deref(), after)
                    .await?
            }
            Event::IssueCommentCreated { repo, issue, comment } => {
                if self.is_bot(&comment.author) || !commands::has_commands(&comment.body) {
                    return Ok(());
                }
                let at = Place {
                    installation,
                    repo: &repo.full_name,
                    number: issue.number,
                };
                let subject = issue_subject(repo, issue, Some((comment.id, comment.body.clone())));
                self.run_commands(
                    &at,
                    comment.id,
                    &comment.author,
                    &comment.body,
                    issue.is_pull_request,
                    Some(subject),
                )
                .await?;
            }
            Event::IssueCommentChanged {
                repo,
                issue_number,
                comment_id,
                change,
                sender,
            } => {
                // Never runs a command; recorded so that an edit adding `/orch approve` is visible.
                let entry = crate::audit::Entry {
                    kind: crate::audit::kind::DELIVERY,
                    actor: sender.as_ref().map(|s| s.login.as_str()).unwrap_or(""),
                    subject: &format!("{}#{issue_number}", repo.full_name),
                    details: serde_json::json!({ "guid": guid, "comment_id": comment_id, "change": change, "decision": "comment changes never run commands" }),
                };
                crate::audit::append_now(&self.store, &entry).await?;
            }
            Event::CheckRunRequestedAction {
                repo,
                check_run_id,
                external_id,
                identifier,
                sender,
                ..
            } => {
                let Some(sender) = sender.as_ref().filter(|s| !self.is_bot(s)) else {
                    return Ok(());
                };
                self.button(guid, installation, repo, *check_run_id, external_id.as_deref(), identifier, sender)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Bots, and orch itself (an App bot), never run commands or approve. `is_bot` comes from
    /// the account's type (`Bot`) or a `[bot]` login, never from a name compared with orch's.
    fn is_bot(&self, actor: &Actor) -> bool {
        actor.is_bot
    }

    /// Records `decision` for the trigger with its effect in one transaction — unless a decision
    /// was recorded before, which then stands — and sends what the recorded decision says.
    async fn record(&self, t: &Trigger<'_>, decision: Outcome) -> anyhow::Result<()> {
        self.decide_once(t, decision).await?;
        self.replay(t).await
    }

    /// The first half of [`Engine::record`]: the decision and its effect in one transaction,
    /// unless a decision was recorded before. Sends nothing.
    async fn decide_once(&self, t: &Trigger<'_>, decision: Outcome) -> anyhow::Result<()> {
        let now = now_ms();
        // Relaxed: undone by a power loss, the delivery's job (whose completion is later in the
        // log) runs again and decides again; the reply it sends is synced first (`actions`).
        let mut tx = self.store.begin_relaxed().await?;
        let (accepted, reply) = match &decision {
            Outcome::Reply { accepted, text } => (*accepted, Some(text.as_str())),
            Outcome::Move { text, .. } => (true, Some(text.as_str())),
            // Known once the refusal window is claimed below.
            Outcome::Refused { .. } => (false, Some("")),
            Outcome::Start(_) | Outcome::Vote { .. } => (true, None),
        };
        if !trigger_runs::claim(&mut tx, &t.key, t.at.repo, t.verb, accepted, reply, now).await? {
            tx.rollback().await?;
            return Ok(());
        }
        match decision {
            Outcome::Refused { user_id, text } => {
                // Keyed by the comment, so that the refused lines of one comment share its reply.
                // A button press has no comment: its own delivery stands in for one, as a negative
                // number (comment ids are positive), so that each press is a refusal of its own.
                let comment = t.comment.unwrap_or_else(|| press_origin(&t.key));
                let posted = trigger_runs::claim_refusal(&mut tx, t.at.repo, t.at.number, user_id, comment, now).await?;
                if posted {
                    trigger_runs::settle(&mut *tx, &t.key, None, Some(&text)).await?;
                }
                let entry = crate::audit::Entry {
                    kind: crate::audit::kind::COMMAND_DENIED,
                    actor: "orch",
                    subject: &format!("{}#{}", t.at.repo, t.at.number),
                    details: serde_json::json!({ "trigger": t.key, "verb": t.verb, "user_id": user_id, "reply": text,
                                                 "posted": posted, "why_not_posted": (!posted).then_some("this user was refused on this issue within the hour") }),
                };
                crate::audit::append(&mut tx, self.store.backend(), &entry, now).await?;
            }
            Outcome::Reply { accepted: false, text } if t.verb != "parse" => {
                let entry = crate::audit::Entry {
                    kind: crate::audit::kind::COMMAND_DENIED,
                    actor: "orch",
                    subject: &format!("{}#{}", t.at.repo, t.at.number),
                    details: serde_json::json!({ "trigger": t.key, "verb": t.verb, "reply": text }),
                };
                crate::audit::append(&mut tx, self.store.backend(), &entry, now).await?;
            }
            Outcome::Reply { .. } => {}
            Outcome::Start(new) => {
                let kind = new.kind;
                match Service::create(&mut tx, new, now).await? {
                    Created::New(wf) => {
                        if let Some(subject) = &t.subject {
                            read_cache::remember_subject(&mut tx, t.at.repo, t.at.number, subject.clone(), now).await?;
                        }
                        let text = match (t.verb, wf.previous_id) {
                            ("retry", Some(previous)) => {
                                format!("Started attempt {} as workflow {} (after workflow {previous}).", wf.attempt, wf.id)
                            }
                            _ => String::new(),
                        };
                        trigger_runs::settle(&mut *tx, &t.key, Some(wf.id), Some(&text)).await?;
                        tracing::info!(workflow = wf.id, kind = %kind, repo = t.at.repo, number = t.at.number, "workflow started");
                    }
                    Created::AlreadyActive(wf) => {
                        let text = format!(
                            "A {} workflow is already running here: workflow {} is `{}`.",
                            messages::kind_name(kind),
                            wf.id,
                            wf.state.as_str()
                        );
                        trigger_runs::settle(&mut *tx, &t.key, Some(wf.id), Some(&text)).await?;
                    }
                }
            }
            Outcome::Vote { wf, vote, comment_id } => {
                Service::cast(&mut tx, wf.id, &vote, comment_id).await?;
                trigger_runs::settle(&mut *tx, &t.key, Some(wf.id), None).await?;
            }
            Outcome::Move {
                moves,
                actor,
                reason,
                wake,
                ..
            } => {
                for (wf, step) in &moves {
                    workflows::transition(&mut tx, wf.id, wf.kind, wf.state, *step, &actor, &reason, now).await?;
                    if wake {
                        jobs::enqueue_workflow_job(&mut tx, wf.id, now, now).await?;
                    }
                }
                if let Some((wf, _)) = moves.first() {
                    trigger_runs::settle(&mut *tx, &t.key, Some(wf.id), None).await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Sends what the trigger's recorded decision says: the 👀 of an accepted command and the
    /// reply, each once. A vote's reply is decided after the ledger settles the workflow.
    async fn replay(&self, t: &Trigger<'_>) -> anyhow::Result<()> {
        let (_, reply) = self.replay_quietly(t).await?;
        if !reply.is_empty() {
            self.reply(&t.at, &format!("{}:reply", t.key), &reply).await?;
        }
        Ok(())
    }

    /// [`Engine::replay`] without the reply, which it returns with the recorded decision: the
    /// commands of a comment gather theirs into one reply.
    async fn replay_quietly(&self, t: &Trigger<'_>) -> anyhow::Result<(TriggerRun, String)> {
        let run = trigger_runs::get(self.store.pool(), &t.key)
            .await?
            .context("a recorded trigger can be read back")?;
        if let (true, Some(comment)) = (run.accepted, t.comment) {
            actions::reaction_once(
                &self.store,
                Some(&self.github),
                &format!("c{comment}:eyes"),
                t.at.installation,
                t.at.repo,
                comment,
                "eyes",
            )
            .await?;
        }
        let workflow_id = run.workflow_id;
        let recorded = run.clone();
        let reply = match run {
            TriggerRun { reply: Some(text), .. } => text,
            TriggerRun {
                reply: None,
                workflow_id: Some(id),
                ..
            } => {
                // A vote: settle the workflow by its ledger (idempotent), then say where it stands.
                let wf = self.load(id).await?;
                let policy = self.policy(wf.installation_id, &wf.repository).await?;
                let text = match self.settle(&wf, &policy).await? {
                    Some(tally @ Tally::Pending { .. }) => format!("Workflow {}: {}.", wf.id, tally.summary()),
                    _ => String::new(),
                };
                let _write = self.store.write_guard().await;
                trigger_runs::settle(self.store.pool(), &t.key, None, Some(&text)).await?;
                text
            }
            TriggerRun { reply: None, .. } => String::new(),
        };
        // A command or vote that ended a patch proposal (reject, cancel, request-changes) retires
        // its check run's buttons; repeated on a redelivery, it changes nothing.
        if let Some(id) = workflow_id {
            self.close_check_run(&self.load(id).await?).await?;
        }
        Ok((recorded, reply))
    }

    /// The workflow an automatic trigger creates (no Gate 1 beyond the policy's `triggers`).
    async fn new_workflow(
        &self,
        t: &Trigger<'_>,
        kind: Kind,
        requester: &Actor,
        instruction: Option<String>,
        head_sha: Option<String>,
        how: &str,
    ) -> anyhow::Result<NewWorkflow> {
        let caller = Caller::github(requester);
        Service::new(self)
            .new_workflow(&start_request(t, kind, &caller, instruction, head_sha, how))
            .await
    }

    /// Starting a workflow on request of `requester`: Gate 1, by the application service.
    #[allow(clippy::too_many_arguments)]
    async fn start(
        &self,
        t: &Trigger<'_>,
        policy: &Effective,
        kind: Kind,
        requester: &Actor,
        instruction: Option<String>,
        head_sha: Option<String>,
        how: &str,
    ) -> anyhow::Result<Outcome> {
        let what = match kind {
            Kind::Triage => "Triage",
            Kind::QaPlan => "A QA plan",
            Kind::Patch => "`/orch propose`",
        };
        let caller = Caller::github(requester);
        let mut req = start_request(t, kind, &caller, instruction, head_sha, how);
        req.retry = t.verb == "retry";
        Ok(match Service::new(self).admit(&req, policy).await? {
            Ok(new) => Outcome::Start(new),
            Err(refusal) => Outcome::Reply {
                accepted: false,
                text: refusal.reply(&requester.login, kind, what, t.at.repo),
            },
        })
    }

    /// The commands of one comment, in order, each decided once: at most
    /// [`commands::MAX_PER_COMMENT`] of them, and at most one that starts or decides a workflow.
    /// The comment gets one reply gathering their answers (an exactly-once action keyed by the
    /// comment), so that no comment makes orch write more than two comments: that reply and
    /// what the one workflow it moved says.
    async fn run_commands(
        &self,
        at: &Place<'_>,
        comment_id: i64,
        author: &Actor,
        body: &str,
        on_pull: bool,
        subject: Option<read_cache::Subject>,
    ) -> anyhow::Result<()> {
        let parsed = commands::parse_comment(body);
        let (to_run, ignored) = parsed.split_at(parsed.len().min(commands::MAX_PER_COMMENT));
        let policy = self.policy(at.installation, at.repo).await?;
        let mut answers = Vec::new();
        // Whether an earlier line of the comment started or decided a workflow.
        let mut moved = false;
        for (i, p) in to_run.iter().enumerate() {
            let t = Trigger {
                at: Place { ..*at },
                key: format!("c{comment_id}:{i}"),
                verb: p.result.as_ref().map(|c| c.verb()).unwrap_or("parse"),
                comment: Some(comment_id),
                tasks_before: to_run[..i]
                    .iter()
                    .filter(|q| {
                        matches!(
                            q.result,
                            Ok(Command::Triage | Command::Plan | Command::Propose { .. } | Command::Retry)
                        )
                    })
                    .count() as u32,
                subject: subject.clone(),
            };
            if trigger_runs::get(self.store.pool(), &t.key).await?.is_none() {
                let decision = match self.decide_line(&t, p, comment_id, author, &policy, on_pull).await? {
                    Outcome::Start(_) | Outcome::Vote { .. } | Outcome::Move { wake: true, .. } if moved => Outcome::Reply {
                        accepted: false,
                        text: format!(
                            "@{}, {} was not run: one comment starts or decides at most one workflow, so that a comment never makes orch write more than two comments. Post it in a comment of its own.",
                            author.login,
                            commands::quoted(&p.text)
                        ),
                    },
                    decision => decision,
                };
                self.decide_once(&t, decision).await?;
            }
            let (run, answer) = self.replay_quietly(&t).await?;
            moved |= run.accepted && run.workflow_id.is_some() && MOVING_VERBS.contains(&t.verb);
            answers.push(answer);
        }
        let reply = commands::combined_reply(&answers, ignored);
        if !reply.is_empty() {
            self.reply(at, &format!("c{comment_id}:reply"), &reply).await?;
        }
        Ok(())
    }

    /// What one command line of a comment decides (before the per-comment limits).
    async fn decide_line(
        &self,
        t: &Trigger<'_>,
        p: &commands::Parsed,
        comment_id: i64,
        author: &Actor,
        policy: &Effective,
        on_pull: bool,
    ) -> anyhow::Result<Outcome> {
        let at = &t.at;
        Ok(match &p.result {
            Err(e) => Outcome::Reply {
                accepted: false,
                text: format!("@{}, {}", author.login, e.reply()),
            },
            Ok(command) => {
                let denied = match command.needs_write() {
                    true => {
                        authorize(
                            &self.github,
                            at.installation,
                            at.repo,
                            &Caller::github(author).person(),
                            &policy.policy,
                        )
                        .await?
                    }
                    false => Authz::Allowed,
                };
                match denied {
                    Authz::Denied { permission } => {
                        tracing::info!(login = %author.login, command = %command, %permission, "command denied");
                        Outcome::Refused {
                            user_id: author.id,
                            text: messages::denied(&author.login, &format!("`{command}`"), at.repo, &permission),
                        }
                    }
                    Authz::Allowed => {
                        // Acknowledged as soon as it is accepted, before it acts. While GitHub's
                        // rate limit holds writes the 👀 is left out: the command is decided now
                        // (what `/orch status` says is what holds now) and its reply waits for
                        // the limit like any write.
                        let eyes = actions::reaction_once(
                            &self.store,
                            Some(&self.github),
                            &format!("c{comment_id}:eyes"),
                            at.installation,
                            at.repo,
                            comment_id,
                            "eyes",
                        )
                        .await;
                        match eyes {
                            Err(actions::ActionError::Github(e)) if e.rate_limit().is_some() => {
                                tracing::info!(
                                    comment_id,
                                    "GitHub's rate limit holds writes: the command is not acknowledged with 👀"
                                );
                            }
                            other => {
                                other?;
                            }
                        }
                        self.decide(t, comment_id, author, command, policy, on_pull)
                            .await
                            .with_context(|| format!("command {command}"))?
                    }
                }
            }
        })
    }

    /// The workflow a command acts on: the one named, or the single live one of the issue in
    /// one of `states`. Err carries the reply when there is none or more than one.
    ///
    /// A vote can arrive while its workflow's proposal is being posted: the comment is visible
    /// on GitHub before the move to `WAITING_USER_APPROVAL` is recorded (posting first is what
    /// makes a crash in between safe). Such a command is not refused: it fails with
    /// `ProposalInFlight`, and its delivery job runs again after its backoff.
    async fn target(&self, at: &Place<'_>, named: Option<i64>, states: &[State]) -> anyhow::Result<Result<Workflow, String>> {
        let votes = states.contains(&State::WaitingUserApproval);
        if let Some(id) = named {
            return Ok(match workflows::get(self.store.pool(), id).await? {
                Some(wf) if wf.repository == at.repo && states.contains(&wf.state) => Ok(wf),
                Some(wf) if wf.repository == at.repo && votes && wf.state == State::PatchesProposed => {
                    return Err(ProposalInFlight(wf.id).into())
                }
                Some(wf) if wf.repository == at.repo => Err(format!(
                    "Workflow {id} is `{}`; this command does not apply to it.",
                    wf.state.as_str()
                )),
                _ => Err(format!("There is no workflow {id} in {}.", at.repo)),
            });
        }
        let active = workflows::list_active_for_issue(self.store.pool(), at.repo, at.number).await?;
        let live: Vec<Workflow> = active.iter().filter(|w| states.contains(&w.state)).cloned().collect();
        if let (true, [], Some(posting)) = (votes, live.as_slice(), active.iter().find(|w| w.state == State::PatchesProposed)) {
            return Err(ProposalInFlight(posting.id).into());
        }
        Ok(match live.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err("There is no workflow here that this command applies to. `/orch status` shows what there is.".to_string()),
            many => Err(format!(
                "Several workflows here could be meant ({}); name one, e.g. `/orch approve {}`.",
                many.iter().map(|w| w.id.to_string()).collect::<Vec<_>>().join(", "),
                many[0].id
            )),
        })
    }

    /// What an accepted command does, decided from the current state.
    async fn decide(
        &self,
        t: &Trigger<'_>,
        comment_id: i64,
        author: &Actor,
        command: &Command,
        policy: &Effective,
        on_pull: bool,
    ) -> anyhow::Result<Outcome> {
        let at = &t.at;
        let waiting = [State::WaitingUserApproval];
        let reply = |text: String| Outcome::Reply { accepted: true, text };
        let caller = Caller::github(author);
        let vote = |wf: Workflow, decision: Decision, reason: Option<String>| -> anyhow::Result<Outcome> {
            let vote = Service::ballot(&wf, &caller, decision, Source::Command, reason).context("a waiting workflow has a binding")?;
            Ok(Outcome::Vote {
                vote,
                wf: Box::new(wf),
                comment_id: Some(comment_id),
            })
        };
        Ok(match command {
            Command::Help => reply(commands::help_text()),
            Command::Status => {
                let all = workflows::list_for_issue(self.store.pool(), at.repo, at.number).await?;
                let mut text = String::from("### orch · status\n\n");
                if all.is_empty() {
                    text.push_str("No workflow has run here yet.\n");
                }
                for wf in all.iter().take(10) {
                    let tally = if wf.state == State::WaitingUserApproval { self.tally(wf, policy).await? } else { None };
                    text.push_str(&messages::status_line(wf, tally.as_ref()));
                    if let Some(until) = jobs::workflow_waits_for_github(self.store.pool(), wf.id, crate::store::now_ms()).await? {
                        text.push_str(&format!(" — {}", messages::waits_for_github(until)));
                    }
                    let approvers = match &tally {
                        Some(t) => messages::counted_approvers(&workflows::votes(self.store.pool(), wf.id).await?, wf, t),
                        None => Vec::new(),
                    };
                    text.push_str(&messages::status_people(&wf.requester(), &approvers));
                    text.push('\n');
                }
                text.push_str(&format!("\nPolicy: phase {}, {} approval(s) required.", policy.phase, policy.policy.approvals.required));
                reply(text)
            }
            Command::Triage => self.start(t, policy, Kind::Triage, author, None, None, "`/orch triage`").await?,
            Command::Plan if !on_pull => reply("`/orch plan` works on pull requests; this is an issue.".into()),
            Command::Plan => {
                let head = self.github.pull(at.installation, at.repo, at.number).await?.head.sha;
                self.start(t, policy, Kind::QaPlan, author, None, Some(head), "`/orch plan`").await?
            }
            Command::Propose { instruction } => self.start(t, policy, Kind::Patch, author, Some(instruction.clone()), None, "`/orch propose`").await?,
            Command::Approve { workflow } => match self.target(at, workflow.map(|w| w.0), &waiting).await? {
                Ok(wf) => vote(wf, Decision::Approve, None)?,
                Err(text) => reply(text),
            },
            Command::Reject { reason } => match self.target(at, None, &waiting).await? {
                Ok(wf) => vote(wf, Decision::Reject, reason.clone())?,
                Err(text) => reply(text),
            },
            Command::RequestChanges { feedback } => match self.target(at, None, &waiting).await? {
                Ok(wf) => Outcome::Move {
                    text: format!("Workflow {} is waiting for a human: @{} asked for changes. `/orch retry` generates a new proposal with that feedback.", wf.id, author.login),
                    moves: vec![(wf, Step::ChangesRequested)],
                    actor: author.login.clone(),
                    reason: feedback.clone(),
                    wake: false,
                },
                Err(text) => reply(text),
            },
            Command::Retry => self.retry(t, author, policy).await?,
            Command::Cancel => {
                let live = workflows::list_active_for_issue(self.store.pool(), at.repo, at.number).await?;
                // Changes being written to GitHub are not cancelled half-way: that would leave a
                // FAILED workflow whose labels or branch exist anyway.
                let (busy, cancellable): (Vec<Workflow>, Vec<Workflow>) =
                    live.into_iter().partition(|w| matches!(w.state, State::ApplyingChanges | State::PrCreated));
                let busy_note = busy
                    .iter()
                    .map(|w| format!(" Workflow {} is already being applied (`{}`) and can no longer be cancelled.", w.id, w.state.as_str()))
                    .collect::<String>();
                if cancellable.is_empty() {
                    let text = if busy.is_empty() { "There is no running workflow here to cancel.".to_string() } else { busy_note.trim().to_string() };
                    reply(text)
                } else {
                    let ids: Vec<String> = cancellable.iter().map(|w| w.id.to_string()).collect();
                    Outcome::Move {
                        text: format!("Cancelled workflow {} at the request of @{}.{busy_note}", ids.join(", "), author.login),
                        moves: cancellable.into_iter().map(|w| (w, Step::Cancelled)).collect(),
                        actor: author.login.clone(),
                        reason: "cancelled".into(),
                        wake: false,
                    }
                }
            }
        })
    }

    /// `/orch retry`: a workflow waiting for a human generates again with the feedback; a failed
    /// or blocked one starts a new attempt linked to the old one.
    async fn retry(&self, t: &Trigger<'_>, author: &Actor, policy: &Effective) -> anyhow::Result<Outcome> {
        let all = workflows::list_for_issue(self.store.pool(), t.at.repo, t.at.number).await?;
        let reply = |text: String| Outcome::Reply { accepted: true, text };
        let Some(latest) = all.into_iter().next() else {
            return Ok(reply("There is no workflow here to retry.".into()));
        };
        Ok(match latest.state {
            State::NeedsHuman => Outcome::Move {
                text: format!("Workflow {} is generating a new proposal.", latest.id),
                moves: vec![(latest, Step::Retry)],
                actor: author.login.clone(),
                reason: "retry with feedback".into(),
                wake: true,
            },
            State::Failed | State::BlockedPolicy => {
                let (kind, instruction, head) = (latest.kind, latest.instruction.clone(), latest.head_sha.clone());
                self.start(t, policy, kind, author, instruction, head, "`/orch retry`").await?
            }
            state => reply(format!(
                "Workflow {} is `{}`; there is nothing to retry.",
                latest.id,
                state.as_str()
            )),
        })
    }

    /// A check-run button: approve or reject the workflow the run shows, as the `sender`.
    #[allow(clippy::too_many_arguments)]
    async fn button(
        &self,
        guid: &str,
        installation: i64,
        repo: &Repo,
        check_run_id: i64,
        external_id: Option<&str>,
        identifier: &str,
        sender: &Actor,
    ) -> anyhow::Result<()> {
        let by_external = external_id
            .and_then(|e| e.strip_prefix("workflow:"))
            .and_then(|id| id.parse::<i64>().ok());
        let wf = match by_external {
            Some(id) => workflows::get(self.store.pool(), id)
                .await?
                .filter(|w| w.repository == repo.full_name),
            None => workflows::by_check_run(self.store.pool(), &repo.full_name, check_run_id).await?,
        };
        let Some(wf) = wf else {
            tracing::info!(check_run_id, "button on a check run orch does not know");
            return Ok(());
        };
        let decision = match identifier {
            "approve" => Decision::Approve,
            "reject" => Decision::Reject,
            other => {
                tracing::info!(identifier = other, "unknown check-run button");
                return Ok(());
            }
        };
        let t = Trigger {
            at: Place {
                installation,
                repo: &repo.full_name,
                number: wf.number,
            },
            key: format!("d{guid}"),
            verb: decision.as_str(),
            comment: None,
            tasks_before: 0,
            subject: None,
        };
        if trigger_runs::get(self.store.pool(), &t.key).await?.is_some() {
            return self.replay(&t).await;
        }
        let policy = self.policy(installation, &repo.full_name).await?;
        let outcome = if let Authz::Denied { permission } = authorize(
            &self.github,
            installation,
            &repo.full_name,
            &Caller::github(sender).person(),
            &policy.policy,
        )
        .await?
        {
            let what = if decision == Decision::Approve {
                "the Approve button"
            } else {
                "the Reject button"
            };
            // Like a refused command: posted at most once per user, issue and hour (SPEC §5).
            Outcome::Refused {
                user_id: sender.id,
                text: messages::denied(&sender.login, what, &repo.full_name, &permission),
            }
        } else if wf.state != State::WaitingUserApproval {
            Outcome::Reply {
                accepted: true,
                text: format!("Workflow {} is `{}`; the button no longer applies.", wf.id, wf.state.as_str()),
            }
        } else if let Some(text) = self.superseded_check_run(&wf, check_run_id, &sender.login, decision).await? {
            Outcome::Reply { accepted: false, text }
        } else {
            Outcome::Vote {
                vote: Service::ballot(&wf, &Caller::github(sender), decision, Source::Button, None)
                    .context("a waiting workflow has a binding")?,
                wf: Box::new(wf),
                comment_id: None,
            }
        };
        self.record(&t, outcome).await
    }

    /// The reply to a button pressed on a check run that is not the workflow's current one (an
    /// earlier revision's): such a press is void (SPEC §6). None when `check_run_id` is current.
    async fn superseded_check_run(
        &self,
        wf: &Workflow,
        check_run_id: i64,
        login: &str,
        decision: Decision,
    ) -> anyhow::Result<Option<String>> {
        if !wf.check_run_id.is_some_and(|current| current != check_run_id) {
            return Ok(None);
        }
        let key = crate::store::actions::key_of(self.store.pool(), "check_run", &wf.repository, check_run_id).await?;
        let current = wf.proposal_hash.as_deref().unwrap_or_default();
        let what = match decision {
            Decision::Approve => "your press of the Approve button",
            Decision::Reject => "your press of the Reject button",
        };
        Ok(Some(messages::void_vote(
            login,
            what,
            wf.id,
            key.as_deref().and_then(messages::revision_of_key),
            &current[..current.len().min(12)],
        )))
    }

    /// New commits on a pull request: approvals bound to the old head no longer count.
    async fn head_moved(&self, installation: i64, repo: &Repo, number: i64, before: Option<&str>, after: &str) -> anyhow::Result<()> {
        let live = workflows::list_active_for_issue(self.store.pool(), &repo.full_name, number).await?;
        for wf in live.into_iter().filter(|w| w.head_sha.as_deref().is_some_and(|h| h != after)) {
            let old = wf.head_sha.clone().unwrap_or_default();
            let reason = format!(
                "new commits: head moved from {} to {}",
                &old[..old.len().min(7)],
                &after[..after.len().min(7)]
            );
            let now = now_ms();
            let mut tx: WriteTx = self.store.begin().await?;
            let voided = workflows::void_votes(&mut *tx, wf.id, &reason, now).await?;
            workflows::set_head_sha(&mut *tx, wf.id, after, now).await?;
            let moved = matches!(wf.state, State::Approved | State::WaitingUserApproval);
            if moved {
                workflows::transition(&mut tx, wf.id, wf.kind, wf.state, Step::ApprovalsVoided, "orch", &reason, now).await?;
            }
            tx.commit().await?;
            tracing::info!(workflow = wf.id, voided, before, after, "head moved; approvals voided");
            if moved {
                let at = Place {
                    installation,
                    repo: &repo.full_name,
                    number,
                };
                self.reply(
                    &at,
                    &format!("wf{}:head:{after}", wf.id),
                    &format!(
                        "New commits were pushed ({} → {}). Approvals given for the old head no longer count ({voided} voided); workflow {} is waiting for approval again.",
                        &old[..old.len().min(7)],
                        &after[..after.len().min(7)],
                        wf.id
                    ),
                )
                .await?;
            }
        }
        Ok(())
    }
}

/// The verbs whose accepted command starts or decides a workflow, which then writes on its own.
const MOVING_VERBS: &[&str] = &["triage", "plan", "propose", "retry", "approve", "reject"];

/// The trigger of a whole delivery (a label, a button press), keyed by its GUID.
fn delivery_trigger<'a>(installation: i64, guid: &str, repo: &'a str, number: i64, verb: &'static str) -> Trigger<'a> {
    Trigger {
        at: Place {
            installation,
            repo,
            number,
        },
        key: format!("d{guid}"),
        verb,
        comment: None,
        tasks_before: 0,
        subject: None,
    }
}

/// The service's request for a trigger's workflow.
fn start_request<'a>(
    t: &'a Trigger<'_>,
    kind: Kind,
    requester: &'a Caller,
    instruction: Option<String>,
    head_sha: Option<String>,
    how: &'a str,
) -> Start<'a> {
    Start {
        installation: t.at.installation,
        repo: t.at.repo,
        number: t.at.number,
        kind,
        requester,
        instruction,
        head_sha,
        how,
        retry: false,
        tasks_before: t.tasks_before,
    }
}

/// The stand-in comment id of a trigger without a comment (a check-run button press): a
/// negative number derived from its key, so it never equals a comment id.
fn press_origin(key: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    -((u64::from_be_bytes(first) >> 1) as i64) - 1
}

/// What an issue's webhook says about it; `comment` is the comment the webhook is about.
fn issue_subject(repo: &Repo, issue: &Issue, comment: Option<(i64, String)>) -> read_cache::Subject {
    read_cache::Subject {
        title: issue.title.clone(),
        body: issue.body.clone(),
        labels: issue.labels.clone(),
        author: issue.author.login.clone(),
        comments: issue.comments,
        known_comments: comment.into_iter().collect(),
        default_branch: repo.default_branch.clone(),
    }
}

/// What a pull request's webhook says about it.
fn pull_subject(repo: &Repo, pr: &PullRequest) -> read_cache::Subject {
    read_cache::Subject {
        title: pr.title.clone(),
        body: pr.body.clone(),
        labels: pr.labels.clone(),
        author: pr.author.login.clone(),
        comments: pr.comments,
        known_comments: Vec::new(),
        default_branch: repo.default_branch.clone(),
    }
}

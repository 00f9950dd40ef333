//! The workflow engine: runs a workflow from its stored state to the next point where it must
//! wait (for approval, for a human, for nothing more). Every step is idempotent — GitHub writes
//! go through the exactly-once actions, transitions are conditioned on the state they start
//! from — so a step repeated after a crash or a lost lease changes nothing twice.

use super::approval::{self, Decision, Rules, Source, Tally, Vote};
use super::authz::{authorize, Authz};
use super::guard;
use super::messages;
use super::state::{Kind, State, Step};
use crate::github::actions::{self, PullSpec, Sent};
use crate::github::client::{Annotation, CheckAction, CheckRunSpec, ClientError, FileRead, GithubClient, Reactions, TreeChange};
use crate::llm::{self, Context, FileAction, Proposal, Task};
use crate::policy::gates::{self, ActionKind, Change, FileChange, ProposalView, Rule, Verdict};
use crate::policy::{ActionClass, Effective, POLICY_PATH};
use crate::store::workflows::{self, TransitionError, Workflow};
use crate::store::{jobs, model_calls, now_ms, policies, read_cache, Store, WriteTx};
use anyhow::Context as _;
use std::time::Duration;

/// The name under which the policy itself approves auto-safe proposals.
pub const POLICY_VOTER: &str = "policy";

pub struct Engine {
    pub store: Store,
    pub github: GithubClient,
    pub llm: llm::Llm,
    /// orch's own login: its comments never run commands and it never approves.
    pub bot_login: String,
    pub reaction_poll: Duration,
    /// How much of a repository a patch's context downloads and searches.
    pub tarball_limits: crate::github::tarball::TarballLimits,
    /// The server's caps (`ORCH_MAX_PHASE`, `ORCH_POLICY_CAPS`) over every repository's policy.
    pub caps: crate::policy::Caps,
    /// Compiled policies by (version, phase): compiling is done once per policy version.
    pub compiled: std::sync::Mutex<std::collections::HashMap<(String, u8), std::sync::Arc<crate::policy::compiled::CompiledPolicy>>>,
    /// `ORCH_PUBLIC_URL`: where check runs link the dashboard.
    pub public_url: Option<String>,
    /// How long a day of `approvals.expire_days` is (a real day outside tests and benchmarks).
    pub proposal_day: Duration,
}

/// How long a waiting proposal's reactions go unpolled at `age`: a tenth of its age, at least
/// `base` (`ORCH_REACTION_POLL_MS`, 30 s) and at most 60 × `base` (30 min). With the default
/// base: every 30 s for the first 5 minutes, then growing by a tenth per poll (about 45 polls
/// from 5 minutes to 5 hours), then every 30 minutes until `approvals.expire_days` — about 700
/// polls in 14 days, each a 304 that costs nothing while nobody reacts. The schedule only
/// depends on age relative to `base`, so a scaled `base` scales it whole.
pub fn poll_interval(base: Duration, age: Duration) -> Duration {
    (age / 10).clamp(base, base * 60)
}

/// How an expiry's transition reason starts: the feedback of a later `/orch retry` leaves it out.
const EXPIRED_REASON: &str = "the proposal expired after";

/// When the workflow's next job should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing to do until an event arrives (or ever: terminal).
    Idle,
    /// Run again at this time (unix ms): reactions are polled while a proposal waits.
    At(i64),
}

pub fn task_of(kind: Kind) -> Task {
    match kind {
        Kind::Triage => Task::Triage,
        Kind::QaPlan => Task::QaPlan,
        Kind::Patch => Task::Patch,
    }
}

/// The action a workflow's result is.
fn action_kind(kind: Kind) -> ActionKind {
    match kind {
        Kind::Triage => ActionKind::AddLabels,
        Kind::QaPlan => ActionKind::AddComment,
        Kind::Patch => ActionKind::CreatePr,
    }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

impl Engine {
    /// The policy in force for `repo`, read from its default branch with a conditional request:
    /// the last answer and its ETag are kept in the store (shared by the replicas), so while
    /// the file does not change GitHub answers 304, which costs no rate limit.
    pub async fn policy(&self, installation: i64, repo: &str) -> Result<Effective, ClientError> {
        let store_error = |e: sqlx::Error| ClientError::Decode(format!("store: {e}"));
        let cached = read_cache::policy_read(self.store.pool(), repo).await.map_err(store_error)?;
        let etag = cached.as_ref().and_then(|c| c.etag.as_deref());
        let (text, fresh) = match self.github.file_if_changed(installation, repo, POLICY_PATH, etag).await? {
            FileRead::NotModified => (cached.and_then(|c| c.source), false),
            read => {
                let (text, etag) = match read {
                    FileRead::Found { text, etag } => (Some(text), etag),
                    _ => (None, None),
                };
                let _write = self.store.write_guard().await;
                read_cache::record_policy_read(self.store.pool(), repo, etag.as_deref(), text.as_deref(), now_ms())
                    .await
                    .map_err(store_error)?;
                (text, true)
            }
        };
        self.effective(repo, text, fresh).await
    }

    /// The policy the last read of `repo`'s file found, without asking GitHub: what a waiting
    /// proposal's polling goes by. A policy changed since is caught where it matters, at Gate 3
    /// (which reads the file and compares the version the approvals are bound to).
    pub async fn cached_policy(&self, installation: i64, repo: &str) -> Result<Effective, ClientError> {
        match read_cache::policy_read(self.store.pool(), repo)
            .await
            .map_err(|e| ClientError::Decode(format!("store: {e}")))?
        {
            Some(read) => self.effective(repo, read.source, false).await,
            None => self.policy(installation, repo).await,
        }
    }

    /// The policy that the file's text `text` (None: no file) makes for `repo`; `fresh` when
    /// the text was just read (a valid one is then remembered as the last valid policy).
    async fn effective(&self, repo: &str, text: Option<String>, fresh: bool) -> Result<Effective, ClientError> {
        let effective = Effective::from_source_capped(text.as_deref(), &self.caps);
        let Some(error) = effective.error.clone() else {
            if let (Some(text), true) = (&text, fresh) {
                let _write = self.store.write_guard().await;
                policies::remember(self.store.pool(), repo, &effective.version, text, now_ms())
                    .await
                    .map_err(|e| ClientError::Decode(format!("store: {e}")))?;
            }
            return Ok(effective);
        };
        // Never "allow all": the last valid policy of the repository, else the built-in defaults.
        let last = policies::last_valid(self.store.pool(), repo)
            .await
            .map_err(|e| ClientError::Decode(format!("store: {e}")))?;
        let mut kept = match &last {
            Some((_, source)) => Effective::from_source_capped(Some(source), &self.caps),
            None => effective,
        };
        tracing::warn!(repo, %error, kept = %kept.version, "invalid policy file; the last valid policy applies");
        kept.error = Some(error);
        Ok(kept)
    }

    /// `wf`'s repository's default branch: as the triggering webhook said, else GitHub's word.
    async fn default_branch(&self, wf: &Workflow) -> anyhow::Result<String> {
        let said = read_cache::subject_since(self.store.pool(), &wf.repository, wf.number, wf.created_at)
            .await?
            .and_then(|s| s.default_branch);
        Ok(match said {
            Some(branch) => branch,
            None => self.github.repository(wf.installation_id, &wf.repository).await?.default_branch,
        })
    }

    /// The compiled form of `policy`, built once per version.
    pub fn compiled(
        &self,
        policy: &Effective,
    ) -> Result<std::sync::Arc<crate::policy::compiled::CompiledPolicy>, crate::policy::PolicyError> {
        let key = (policy.version.clone(), policy.phase);
        if let Some(c) = self.compiled.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(c.clone());
        }
        let compiled = std::sync::Arc::new(policy.compile()?);
        let mut cache = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        // Versions only accumulate as files change; a bound keeps a long-lived process small.
        if cache.len() >= 256 {
            cache.clear();
        }
        cache.insert(key, compiled.clone());
        Ok(compiled)
    }

    pub async fn load(&self, id: i64) -> anyhow::Result<Workflow> {
        workflows::get(self.store.pool(), id)
            .await?
            .with_context(|| format!("workflow {id} does not exist"))
    }

    /// Moves `wf` by `step` and, when `wake` is set, queues its next job in the same transaction.
    pub async fn step(&self, wf: &Workflow, step: Step, actor: &str, reason: &str, wake: bool) -> anyhow::Result<State> {
        let now = now_ms();
        let mut tx = self.store.begin_relaxed().await?;
        let to = workflows::transition(&mut tx, wf.id, wf.kind, wf.state, step, actor, reason, now).await?;
        if wake {
            jobs::enqueue_workflow_job(&mut tx, wf.id, now, now).await?;
        }
        tx.commit().await?;
        tracing::info!(workflow = wf.id, from = %wf.state, to = %to, step = %step, actor, "workflow moved");
        Ok(to)
    }

    /// Posts a comment on the workflow's issue exactly once for `key`.
    pub async fn comment(&self, wf: &Workflow, key: &str, body: &str) -> anyhow::Result<Sent> {
        Ok(actions::comment_once(
            &self.store,
            Some(&self.github),
            key,
            wf.installation_id,
            &wf.repository,
            wf.number,
            body,
        )
        .await?)
    }

    /// Runs the workflow until it has to wait. Returns when its next job is due.
    pub async fn run(&self, id: i64) -> anyhow::Result<Next> {
        let mut carried = Carried::default();
        // Each pass moves the workflow at least one state forward or returns; the bound only
        // guards against a bug turning into a busy loop.
        for _ in 0..32 {
            let wf = self.load(id).await?;
            let span =
                tracing::info_span!("workflow", id = wf.id, kind = %wf.kind, state = %wf.state, repo = %wf.repository, number = wf.number);
            let _enter = span.enter();
            match wf.state {
                State::Ingested | State::ContextLoaded => carried = self.generate(&wf).await?,
                State::PatchesProposed => self.gate2(&wf, &mut carried).await?,
                State::WaitingUserApproval => {
                    if let Some(next) = self.wait(&wf, &mut carried).await? {
                        return Ok(next);
                    }
                }
                State::Approved => {
                    if let Some(next) = self.gate3(&wf).await? {
                        return Ok(next);
                    }
                }
                State::ApplyingChanges => self.apply(&wf).await?,
                State::PrCreated => self.announce_pr(&wf).await?,
                State::NeedsHuman | State::Done | State::Failed | State::BlockedPolicy => {
                    self.close_check_run(&wf).await?;
                    return Ok(Next::Idle);
                }
            }
        }
        anyhow::bail!("workflow {id} did not settle")
    }

    /// What the model is shown for `wf`.
    ///
    /// The first proposal is made from what the triggering webhook said about the issue (title,
    /// body, labels, comment count and the comment it carried): GitHub is asked again only for
    /// comments the webhooks did not carry. That text is at most as old as the trigger, which
    /// is moments ago. A later proposal (`/orch retry` after a request for changes, maybe days
    /// later) reads the issue again, since an edit to it sends no webhook orch acts on.
    ///
    /// What else each task is shown comes from [`super::context`]: a patch's files are read at
    /// `base` (the commit it is proposed on) and also returned as read, a missing file as None.
    async fn context(
        &self,
        wf: &Workflow,
        policy: &Effective,
        feedback: Option<String>,
        round: usize,
        base: Option<&str>,
    ) -> anyhow::Result<(Context, BaseTexts)> {
        let (inst, repo) = (wf.installation_id, wf.repository.as_str());
        let subject = match round {
            // Written with the workflow by its trigger; an older one (a workflow the admin API
            // started) is not what the issue says now.
            0 => read_cache::subject_since(self.store.pool(), repo, wf.number, wf.created_at).await?,
            _ => None,
        };
        let (title, body, labels) = match &subject {
            Some(s) => (s.title.clone(), s.body.clone(), s.labels.clone()),
            None => {
                let issue = self.github.issue(inst, repo, wf.number).await?;
                (
                    issue.title,
                    issue.body.unwrap_or_default(),
                    issue.labels.into_iter().map(|l| l.name).collect(),
                )
            }
        };
        let recent: Vec<String> = match subject.as_ref().and_then(|s| s.all_comments()) {
            // Every comment came with a webhook from someone who is not a bot: none is orch's.
            Some(all) => all.iter().rev().take(5).map(|c| c.chars().take(500).collect()).collect(),
            None => {
                let comments = self.github.list_issue_comments(inst, repo, wf.number).await?;
                // orch's own comments are its output, not the conversation: they are left out by
                // who wrote them (GitHub's word), never by what they say. Everyone else's comment
                // is kept whole, marker-shaped text included, so a forged marker can neither pass
                // for orch's words nor hide a user's text from the model.
                let me = self.github.app_identity(inst).await?;
                comments
                    .iter()
                    .rev()
                    .filter(|c| !c.written_by(&me))
                    .take(5)
                    .map(|c| c.body.chars().take(500).collect())
                    .collect()
            }
        };
        let mut context = Context {
            repository: wf.repository.clone(),
            number: wf.number,
            title,
            body,
            labels,
            comments: recent.into_iter().rev().collect(),
            instruction: wf.instruction.clone(),
            feedback,
            ..Default::default()
        };
        let (instructions, cut) = super::context::instructions(&self.github, &self.store, inst, repo).await?;
        context.instructions = instructions;
        context.notes.extend(cut);
        let mut read = BaseTexts {
            commit: base.map(str::to_string),
            ..Default::default()
        };
        match wf.kind {
            Kind::Triage => {
                if let Ok(compiled) = self.compiled(policy) {
                    context.allowed_labels = super::context::allowed_labels(&self.github, &self.store, inst, repo, &compiled).await?;
                }
            }
            Kind::QaPlan => {
                let (hunks, linked) = super::context::pull_request(&self.github, inst, repo, wf.number, &context.body).await?;
                context.hunks = hunks;
                context.linked_issue = linked;
            }
            Kind::Patch => {
                let budget = llm::budget_for(Task::Patch, policy.policy.llm.context_budget_tokens);
                let base = base.context("a patch is proposed on a commit")?;
                let seen = super::context::patch(&self.github, inst, repo, base, &mut context, budget, &self.tarball_limits).await?;
                read.files = seen.files;
                read.listed = seen.listed;
            }
        }
        Ok((context, read))
    }

    /// INGESTED / CONTEXT_LOADED → PATCHES_PROPOSED: the context pack and the model's answer.
    /// Returns what Gate 2 can use without reading it again: the policy the proposal is bound
    /// to, its round and, for a patch, the files read at the commit it is proposed on.
    async fn generate(&self, wf: &Workflow) -> anyhow::Result<Carried> {
        let policy = self.policy(wf.installation_id, &wf.repository).await?;
        if let Some(error) = &policy.error {
            let kept = if policy.version == "builtin" {
                "the built-in defaults".to_string()
            } else {
                format!("the last valid policy ({})", policy.version)
            };
            let text = format!("`.github/orch.yml` on the default branch is invalid — {error}. Until it is fixed, orch judges by {kept}.");
            self.comment(
                wf,
                &format!("wf{}:policy-invalid:{}", wf.id, approval::proposal_hash(&error.to_string())),
                &text,
            )
            .await?;
        }
        let history = workflows::transitions(self.store.pool(), wf.id).await?;
        // After `/orch request-changes`, the feedback rides along with the retry.
        let feedback = history
            .iter()
            .rev()
            .find(|t| t.to == State::NeedsHuman)
            .map(|t| t.reason.clone())
            // An expiry is not a request for changes.
            .filter(|r| !r.starts_with(EXPIRED_REASON));
        let round = proposals_in(&history);
        // A patch is proposed on one commit of the default branch, read once, before anything
        // else: the model is shown the files at that commit, the diff is made against the same
        // text, and the approval is bound to that commit (Gate 3 compares the files it changes
        // with the base then). Reading the branch's files first and its commit after could
        // pair them wrongly when a push lands in between.
        let base = match wf.kind {
            Kind::Patch => {
                let default_branch = self.default_branch(wf).await?;
                self.github
                    .ref_sha(wf.installation_id, &wf.repository, &format!("heads/{default_branch}"))
                    .await?
            }
            _ => None,
        };
        let (context, read) = self.context(wf, &policy, feedback, round, base.as_deref()).await?;
        let mut wf = wf.clone();
        if wf.state == State::Ingested {
            let reason = format!(
                "title, body, {} labels, {} comments, {} files",
                context.labels.len(),
                context.comments.len(),
                context.files.len()
            );
            wf.state = self.step(&wf, Step::ContextLoaded, "orch", &reason, false).await?;
        }
        let Some(mut raw) = self.ask_model(&wf, &policy, &context).await? else {
            return Ok(Carried::default());
        };
        let mut read = read;
        if wf.kind == Kind::Triage {
            raw = self.drop_disallowed_labels(&policy, &raw);
        }
        if wf.kind == Kind::Patch {
            // `edit`s become the text they make, on the commit the model was shown, before
            // anything is shown or approved. One that does not apply is fed back to the model
            // once when the policy leaves a retry; if the second answer fails too, Gate 2
            // blocks it and says why.
            match self.resolve_edits(&wf, &raw, &mut read).await? {
                Resolved::Done(resolved) => raw = resolved,
                // No retry left (`limits.max_retries: 0`): Gate 2 blocks it as it is.
                Resolved::Failed(_) if policy.policy.limits.max_retries == 0 => {}
                Resolved::Failed(failures) => {
                    let mut context = context.clone();
                    let problems: Vec<String> = failures.iter().map(ToString::to_string).collect();
                    context.feedback = Some(format!(
                        "Your previous answer could not be applied, so it was not shown to anyone: {}. Quote `old` exactly as the file shows it, with enough lines around the change to occur exactly once.",
                        problems.join("; ")
                    ));
                    tracing::info!(workflow = wf.id, failures = %problems.join("; "), "edits did not apply; asking the model once more");
                    let Some(again) = self.ask_model(&wf, &policy, &context).await? else {
                        return Ok(Carried::default());
                    };
                    raw = match self.resolve_edits(&wf, &again, &mut read).await? {
                        Resolved::Done(resolved) => resolved,
                        Resolved::Failed(_) => again,
                    };
                }
            }
        }
        let hash = approval::proposal_hash(&raw);
        // What the proposal is bound to: a PR's head, or for a patch the default branch's commit
        // it was made against.
        let head_sha = match wf.kind {
            // The head the trigger named (a push since moved it and voids approvals by webhook).
            Kind::QaPlan if round == 0 && wf.head_sha.is_some() => wf.head_sha.clone(),
            Kind::QaPlan => Some(self.github.pull(wf.installation_id, &wf.repository, wf.number).await?.head.sha),
            Kind::Patch => base,
            Kind::Triage => None,
        };
        let now = now_ms();
        let mut tx = self.store.begin_relaxed().await?;
        workflows::set_proposal(&mut *tx, wf.id, &raw, &hash, &policy.version, head_sha.as_deref(), now).await?;
        workflows::transition(
            &mut tx,
            wf.id,
            wf.kind,
            wf.state,
            Step::Proposed,
            "model:fake",
            &format!("proposal {}", short(&hash)),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(Carried {
            read_at_base: (wf.kind == Kind::Patch).then_some(read),
            policy: Some(policy),
            round: Some(round + 1),
            waiting_since: None,
        })
    }

    /// A triage answer (`raw`) without the labels the policy does not allow, which it names
    /// (SPEC §7). When no label would be left it stays as it is: Gate 2 blocks it and names
    /// them. A model's own `dropped` list is never kept.
    fn drop_disallowed_labels(&self, policy: &Effective, raw: &str) -> String {
        let answer: serde_json::Value = serde_json::from_str(raw).unwrap_or_default();
        let (Ok(Proposal::Triage(mut t)), Ok(compiled)) = (Proposal::parse(Task::Triage, &answer), self.compiled(policy)) else {
            return raw.to_string();
        };
        let (kept, dropped): (Vec<String>, Vec<String>) = t.labels.iter().cloned().partition(|l| compiled.label_permitted(l));
        let claimed = !t.dropped.is_empty();
        if kept.is_empty() || dropped.is_empty() {
            if !claimed {
                // Nothing to change: the answer is stored as the model gave it.
                return raw.to_string();
            }
            t.dropped.clear();
        } else {
            t.labels = kept;
            t.dropped = dropped;
        }
        serde_json::to_string(&t).unwrap_or_else(|_| raw.to_string())
    }

    /// A patch answer (`raw`) with its `edit`s applied to the files on the base commit, as the
    /// JSON to store; unchanged when it has none or does not parse (Gate 2 judges it as it is).
    /// Files read at the base are added to `read`.
    async fn resolve_edits(&self, wf: &Workflow, raw: &str, read: &mut BaseTexts) -> anyhow::Result<Resolved> {
        let answer: serde_json::Value = serde_json::from_str(raw).unwrap_or_default();
        let Ok(Proposal::Patch(mut patch)) = Proposal::parse(Task::Patch, &answer) else {
            return Ok(Resolved::Done(raw.to_string()));
        };
        if patch.edited_paths().next().is_none() {
            return Ok(Resolved::Done(raw.to_string()));
        }
        for path in patch.edited_paths() {
            if read.listed.as_ref().is_some_and(|l| !l.contains(path)) {
                read.files.insert(path.to_string(), None);
            }
            if !read.files.contains_key(path) {
                let text = self
                    .github
                    .file(wf.installation_id, &wf.repository, path, read.commit.as_deref())
                    .await?;
                read.files.insert(path.to_string(), text);
            }
        }
        match patch.resolve_edits(|path| read.files.get(path).and_then(|t| t.as_deref())) {
            Ok(()) => Ok(Resolved::Done(serde_json::to_string(&patch)?)),
            Err(failures) => Ok(Resolved::Failed(failures)),
        }
    }

    /// One model call under the guardrails (SPEC §10): refused before anything is spent when
    /// the breaker is open or the projected cost would pass a ceiling; counted by the breaker.
    /// Returns the raw answer to judge, or None when the workflow was ended here.
    async fn ask_model(&self, wf: &Workflow, policy: &Effective, context: &Context) -> anyhow::Result<Option<String>> {
        let limits = &policy.policy.limits;
        let settings = &policy.policy.llm;
        let llm = match &settings.model {
            Some(model) => self.llm.with_model(model.clone()),
            None => self.llm.clone(),
        };
        let task = task_of(wf.kind);
        let now = now_ms();
        let budget = llm::budget_for(task, settings.context_budget_tokens);
        let projected = llm.projected_cost_usd(task, context, budget, settings.max_output_tokens);
        let breaker = guard::breaker(self.store.pool()).await?;
        let (run_spent, window_spent) =
            model_calls::spent(self.store.pool(), wf.id, now - i64::from(limits.window_minutes) * 60_000).await?;
        // A repository's model outside `ORCH_LLM_MODELS` is refused at Gate 1; a workflow that
        // got here another way (an automatic trigger, a policy changed since) stops here too.
        let admitted = match self.caps.refuse_model(&policy.policy) {
            Some(text) => Err(guard::Refusal::ModelNotAllowed(text.replace("Nothing was started: ", ""))),
            None => guard::admit_call(&breaker, limits, projected, run_spent, window_spent).map_err(|r| match r {
                guard::Refusal::Unpriced { .. } => guard::Refusal::Unpriced {
                    model: llm.model().to_string(),
                },
                other => other,
            }),
        };
        if let Err(refusal) = admitted {
            tracing::warn!(workflow = wf.id, %refusal, "model call refused");
            let text = format!(
                "Workflow {} stopped before asking the model: {refusal}. `/orch retry` starts again.",
                wf.id
            );
            self.comment(wf, &format!("wf{}:refused:{}", wf.id, self.proposal_round(wf).await?), &text)
                .await?;
            self.step(wf, Step::GenerationFailed, "guardrails", &refusal.to_string(), false)
                .await?;
            return Ok(None);
        }
        let result = llm
            .generate(&self.store, wf.id, task, context, budget, settings.max_output_tokens)
            .await;
        let (failed, cost) = match &result {
            Ok(g) => (false, g.cost_usd),
            Err(_) => (true, 0.0),
        };
        let opened = {
            let mut tx = self.store.begin_relaxed().await?;
            let entry = crate::audit::Entry {
                kind: crate::audit::kind::MODEL_CALL,
                actor: llm.model(),
                subject: &format!("workflow:{}", wf.id),
                details: match &result {
                    Ok(g) => {
                        serde_json::json!({ "call_id": g.call_id, "template": g.template, "tokens_in": g.tokens_in, "tokens_out": g.tokens_out,
                                                  "cost_usd": g.cost_usd, "not_seen": g.not_seen, "outcome": "ok" })
                    }
                    Err(e) => serde_json::json!({ "call_id": e.call_id(), "outcome": "error", "error": e.to_string() }),
                },
            };
            // The audit chain's lock first, the breaker's row after: every model call's count
            // goes through this one row, and a transaction holding the row while it queued for
            // the chain's lock made every other call queue behind both.
            crate::audit::append(&mut tx, self.store.backend(), &entry, now_ms()).await?;
            let opened = guard::record_task(&mut tx, failed, cost, limits.error_rate_threshold, now_ms()).await?;
            if opened {
                let b = guard::breaker(&mut *tx).await?;
                let trip = crate::audit::Entry::new(
                    crate::audit::kind::BREAKER,
                    "guardrails",
                    "circuit_breaker",
                    serde_json::json!({ "action": "open", "workflow": wf.id, "failed_tasks": b.failed_tasks, "total_tasks": b.total_tasks,
                                        "threshold": limits.error_rate_threshold }),
                );
                crate::audit::append(&mut tx, self.store.backend(), &trip, now_ms()).await?;
            }
            tx.commit().await?;
            opened
        };
        if opened {
            tracing::error!("the circuit breaker opened: no model call is made until an operator resets it");
        }
        match result {
            Ok(g) => Ok(Some(serde_json::to_string(&g.answer)?)),
            // An answer that breaks its schema is judged by Gate 2, which shows the user why.
            Err(llm::LlmError::Malformed { answer, problem, .. }) => Ok(Some(serde_json::to_string(
                &answer.unwrap_or_else(|| serde_json::json!({ "refused": problem })),
            )?)),
            Err(e) => {
                let text = format!(
                    "Workflow {} failed: the model could not be asked ({e}). `/orch retry` starts again.",
                    wf.id
                );
                self.comment(wf, &format!("wf{}:model-failed:{}", wf.id, self.proposal_round(wf).await?), &text)
                    .await?;
                self.step(wf, Step::GenerationFailed, "orch", &format!("model call failed: {e}"), false)
                    .await?;
                Ok(None)
            }
        }
    }

    /// Gate 2 (SPEC §8) of the workflow's proposal under `policy`: every violated rule, or the
    /// action's class. The issue's current labels matter to the label state machine.
    ///
    /// A patch's files are counted by their real diff against the base commit (`known`: what
    /// generating it read there; any other file it changes is read). An `edit` still in the
    /// proposal could not be applied when it was made: it is judged again here and blocked with
    /// its reason.
    async fn judge(&self, wf: &Workflow, policy: &Effective, known: Option<&BaseTexts>) -> anyhow::Result<Verdict> {
        let compiled = match self.compiled(policy) {
            Ok(c) => c,
            // A policy that parses but does not compile (a bad regex) never means "allow all".
            Err(e) => {
                return Ok(Verdict::Blocked {
                    violations: vec![Rule::SchemaInvalid {
                        problem: format!("the policy does not compile: {e}"),
                    }],
                })
            }
        };
        let mut edit_failures = Vec::new();
        let view = match Self::proposal_of(wf) {
            Err(e) => ProposalView::Invalid {
                action: action_kind(wf.kind),
                problem: e.problem,
            },
            Ok(Proposal::Triage(t)) => {
                // Gate 2 judges moments after the trigger, whose webhook carried the labels; a
                // later judgement (Gate 3, after a policy change, maybe days later) asks GitHub,
                // since a label removed meanwhile sends a webhook orch does not keep.
                let remembered = match wf.state {
                    State::PatchesProposed => {
                        read_cache::subject_since(self.store.pool(), &wf.repository, wf.number, wf.created_at).await?
                    }
                    _ => None,
                };
                let current = match remembered {
                    Some(s) => s.labels,
                    None => self.github.list_labels(wf.installation_id, &wf.repository, wf.number).await?,
                };
                ProposalView::Triage {
                    labels: messages::triage_labels(&t),
                    current_labels: current,
                    comment_text: t.rationale.clone(),
                }
            }
            Ok(Proposal::QaPlan(q)) => ProposalView::QaPlan {
                comment_text: messages::qa_plan(&q),
            },
            Ok(Proposal::Patch(p)) => {
                let paths: Vec<&str> = p.files.iter().map(|f| f.path.as_str()).collect();
                let base = self.base_texts(wf, &paths, known).await?;
                let mut resolved = p.clone();
                if let Err(failures) = resolved.resolve_edits(|path| base.get(path).and_then(|t| t.as_deref())) {
                    edit_failures = failures
                        .into_iter()
                        .map(|f| Rule::EditDoesNotApply {
                            path: f.path,
                            problem: f.problem,
                        })
                        .collect();
                }
                ProposalView::Patch {
                    title: p.title.clone(),
                    files: resolved
                        .files
                        .iter()
                        .map(|f| {
                            let change = match f.action {
                                FileAction::Create => Change::Added,
                                FileAction::Update | FileAction::Edit => Change::Modified,
                                FileAction::Delete => Change::Deleted,
                            };
                            let content = (!matches!(f.action, FileAction::Delete | FileAction::Edit)).then(|| f.content.clone());
                            let old = base.get(&f.path).cloned().flatten();
                            let (added_lines, removed_lines) = match f.action {
                                // Unresolved: blocked above; nothing of it is counted.
                                FileAction::Edit => (0, 0),
                                _ => super::shown::file_diff(&f.path, old.as_deref(), content.as_deref()).added_removed(),
                            };
                            FileChange {
                                added_lines,
                                removed_lines,
                                ..FileChange::whole(f.path.clone(), change, content)
                            }
                        })
                        .collect(),
                    comment_text: p.summary.clone(),
                }
            }
        };
        let verdict = gates::gate2(&compiled, &view);
        let verdict = match (verdict, edit_failures.is_empty()) {
            (verdict, true) => verdict,
            (Verdict::Blocked { mut violations }, false) => {
                violations.extend(edit_failures);
                Verdict::Blocked { violations }
            }
            (Verdict::Pass { .. }, false) => Verdict::Blocked { violations: edit_failures },
        };
        // A patch refused for its paths never reaches the path rules (it does not parse), so
        // each path that could leave the repository is named here under its own rule.
        Ok(match (verdict, &view) {
            (Verdict::Blocked { mut violations }, ProposalView::Invalid { .. }) => {
                violations.extend(Self::unsafe_paths(wf));
                Verdict::Blocked { violations }
            }
            (verdict, _) => verdict,
        })
    }

    /// The paths of a raw patch answer that are not plain relative paths, as Gate 2 rules.
    fn unsafe_paths(wf: &Workflow) -> Vec<Rule> {
        let raw: serde_json::Value = serde_json::from_str(wf.proposal.as_deref().unwrap_or("null")).unwrap_or_default();
        let files = raw.get("files").and_then(|f| f.as_array()).cloned().unwrap_or_default();
        files
            .iter()
            .filter_map(|f| f.get("path")?.as_str())
            .filter_map(|path| {
                gates::path_problem(path).map(|problem| Rule::PathInvalid {
                    path: path.to_string(),
                    problem: problem.to_string(),
                })
            })
            .collect()
    }

    /// Records a gate's verdict in the audit log, in `tx`: the transaction of the step it
    /// decides, so that a verdict and its step are logged together or, after a crash, judged
    /// and logged again together.
    async fn append_verdict(&self, tx: &mut WriteTx, wf: &Workflow, gate: &str, verdict: &Verdict) -> anyhow::Result<()> {
        let entry = crate::audit::Entry {
            kind: crate::audit::kind::POLICY_VERDICT,
            actor: "policy",
            subject: &format!("workflow:{}", wf.id),
            details: serde_json::json!({ "gate": gate, "class": verdict.class().map(|c| c.as_str()), "violations": verdict.lines(),
                                         "proposal_hash": wf.proposal_hash, "policy_version": wf.policy_version }),
        };
        crate::audit::append_at_commit(tx, &entry, now_ms());
        Ok(())
    }

    /// Records a gate's verdict in the audit log, in a transaction of its own.
    async fn audit_verdict(&self, wf: &Workflow, gate: &str, verdict: &Verdict) -> anyhow::Result<()> {
        // Relaxed: a verdict lost to a power loss is judged again when the step runs again.
        let mut tx = self.store.begin_relaxed().await?;
        self.append_verdict(&mut tx, wf, gate, verdict).await?;
        tx.commit().await?;
        Ok(())
    }

    fn proposal_of(wf: &Workflow) -> Result<Proposal, llm::InvalidOutput> {
        let raw: serde_json::Value = serde_json::from_str(wf.proposal.as_deref().unwrap_or("null")).unwrap_or_default();
        Proposal::parse(task_of(wf.kind), &raw)
    }

    /// PATCHES_PROPOSED → WAITING_USER_APPROVAL, APPROVED (auto-safe) or BLOCKED_POLICY.
    /// `carried`: what generating the proposal read, when this run made it.
    async fn gate2(&self, wf: &Workflow, carried: &mut Carried) -> anyhow::Result<()> {
        let mut read_at_base = carried.read_at_base.take();
        // Every file a patch changes, on its base, read once for judging and showing it.
        if let Ok(Proposal::Patch(patch)) = Self::proposal_of(wf) {
            let paths: Vec<&str> = patch.files.iter().map(|f| f.path.as_str()).collect();
            let files = self.base_texts(wf, &paths, read_at_base.as_ref()).await?;
            read_at_base = Some(BaseTexts {
                commit: wf.head_sha.clone(),
                files,
                listed: None,
            });
        }
        // The policy the proposal was just made under (its version is the one it is bound to),
        // else the one in force now.
        let policy = match carried.policy.take() {
            Some(policy) => policy,
            None => self.policy(wf.installation_id, &wf.repository).await?,
        };
        let hash = wf.proposal_hash.clone().unwrap_or_default();
        let verdict = self.judge(wf, &policy, read_at_base.as_ref()).await?;
        // The verdict is logged in the transaction of the step it decides (below).
        let class = match &verdict {
            Verdict::Blocked { violations } => {
                let lines: Vec<String> = violations.iter().map(Rule::to_string).collect();
                self.comment(wf, &format!("wf{}:blocked:{}", wf.id, short(&hash)), &messages::blocked(wf, &lines))
                    .await?;
                let reason = lines.join("; ");
                let mut tx = self.store.begin_relaxed().await?;
                self.append_verdict(&mut tx, wf, "gate2", &verdict).await?;
                let to = workflows::transition(&mut tx, wf.id, wf.kind, wf.state, Step::Gate2Blocked, "policy", &reason, now_ms()).await?;
                tx.commit().await?;
                tracing::info!(workflow = wf.id, from = %wf.state, to = %to, step = %Step::Gate2Blocked, "workflow moved");
                return Ok(());
            }
            Verdict::Pass { class } => *class,
        };
        let proposal = Self::proposal_of(wf).map_err(anyhow::Error::from)?;
        if class == ActionClass::AutoSafe {
            let binding = wf.binding().context("a proposed workflow has a binding")?;
            let now = now_ms();
            let mut tx = self.store.begin().await?;
            let vote = Vote {
                voter: POLICY_VOTER.into(),
                voter_id: None,
                decision: Decision::Approve,
                source: Source::Policy,
                binding,
                reason: None,
                at: now,
            };
            self.append_verdict(&mut tx, wf, "gate2", &verdict).await?;
            workflows::record_vote(&mut tx, wf.id, &vote, None).await?;
            workflows::transition(
                &mut tx,
                wf.id,
                wf.kind,
                wf.state,
                Step::AutoApproved,
                POLICY_VOTER,
                "auto_safe",
                now,
            )
            .await?;
            tx.commit().await?;
            return Ok(());
        }
        // A patch is shown as its diff against the base it was proposed on (SPEC §6).
        let diff = match &proposal {
            Proposal::Patch(patch) => Some(self.patch_diff(wf, patch, read_at_base.as_ref()).await?),
            _ => None,
        };
        let shown = diff.as_deref().map(|d| {
            let link = super::shown::dashboard_link(self.public_url.as_deref(), wf.id);
            super::shown::comment_section(d, short(&hash), &link)
        });
        // Posted before the state moves: if orch dies in between, the repeat finds the comment.
        let mut body = messages::proposal_showing(wf, &proposal, policy.policy.approvals.reactions, shown.as_deref());
        // Whatever did not fit the model's context budget is named, so reviewers know.
        if let Some(call) = model_calls::for_workflow(self.store.pool(), wf.id).await?.last() {
            if !call.not_seen.is_empty() {
                body.push_str(&format!(
                    "\n\n_Not seen by the model (context budget): {}._",
                    call.not_seen.join("; ")
                ));
            }
        }
        // Keyed by the round of proposals too: a retry that happens to propose the same thing
        // again still shows its proposal.
        let round = match carried.round.take() {
            Some(round) => round,
            None => self.proposal_round(wf).await?,
        };
        let comment = self
            .comment(wf, &format!("wf{}:proposal:{round}:{}", wf.id, short(&hash)), &body)
            .await?;
        let check_run = match &proposal {
            Proposal::Patch(patch) => self.patch_check_run(wf, patch, &hash, diff.as_deref().unwrap_or_default()).await?,
            _ => None,
        };
        let now = now_ms();
        let mut tx = self.store.begin_relaxed().await?;
        if let Sent::Done { github_id, .. } = comment {
            workflows::set_proposal_comment(&mut *tx, wf.id, github_id, now).await?;
        }
        if let Some(id) = check_run {
            workflows::set_check_run(&mut *tx, wf.id, id, now).await?;
        }
        workflows::transition(
            &mut tx,
            wf.id,
            wf.kind,
            wf.state,
            Step::Gate2Passed,
            "policy",
            "approval_required",
            now,
        )
        .await?;
        // Last: the audit chain's lock is held from the first append to the commit.
        self.append_verdict(&mut tx, wf, "gate2", &verdict).await?;
        tx.commit().await?;
        // The first wait of this run starts now, under the same policy.
        carried.policy = Some(policy);
        carried.waiting_since = Some(now);
        Ok(())
    }

    /// The completed check run showing a patch, with Approve and Reject buttons, on the default
    /// branch's tip (the commit the patch applies to).
    async fn patch_check_run(
        &self,
        wf: &Workflow,
        patch: &llm::PatchOutput,
        hash: &str,
        diff: &[super::shown::FileDiff],
    ) -> anyhow::Result<Option<i64>> {
        // The commit the patch was proposed on, which generation just read.
        let base = match &wf.head_sha {
            Some(sha) => Some(sha.clone()),
            None => {
                let default_branch = self.default_branch(wf).await?;
                self.github
                    .ref_sha(wf.installation_id, &wf.repository, &format!("heads/{default_branch}"))
                    .await?
            }
        };
        let Some(base) = base else {
            return Ok(None);
        };
        let spec = CheckRunSpec {
            name: "orch/patch".into(),
            head_sha: base,
            status: "completed".into(),
            conclusion: Some("action_required".into()),
            external_id: Some(format!("workflow:{}", wf.id)),
            title: format!("Patch proposal for #{} (workflow {}, revision {})", wf.number, wf.id, short(hash)),
            summary: format!("**Revision `{}`**\n\n{}", short(hash), messages::patch(patch)),
            text: Some(super::shown::check_run_text(
                diff,
                short(hash),
                &super::shown::dashboard_link(self.public_url.as_deref(), wf.id),
            )),
            annotations: patch
                .files
                .iter()
                .map(|f| Annotation {
                    path: f.path.clone(),
                    start_line: 1,
                    end_line: 1,
                    annotation_level: "notice".into(),
                    message: format!("orch proposes to {:?} this file", f.action).to_lowercase(),
                })
                .collect(),
            actions: vec![
                CheckAction {
                    label: "Approve".into(),
                    description: "Approve this patch".into(),
                    identifier: "approve".into(),
                },
                CheckAction {
                    label: "Reject".into(),
                    description: "Reject this patch".into(),
                    identifier: "reject".into(),
                },
            ],
        };
        let round = self.proposal_round(wf).await?;
        let sent = actions::check_run_once(
            &self.store,
            Some(&self.github),
            &format!("wf{}:check:{round}:{}", wf.id, short(hash)),
            wf.installation_id,
            &wf.repository,
            &spec,
        )
        .await?;
        Ok(match sent {
            Sent::Done { github_id, .. } => Some(github_id),
            Sent::DryRun { .. } => None,
        })
    }

    /// The texts of `paths` on the commit `wf`'s patch was proposed on (None: no such file):
    /// what generation read there (`known`) and, for any other path, GitHub's answer.
    async fn base_texts(
        &self,
        wf: &Workflow,
        paths: &[&str],
        known: Option<&BaseTexts>,
    ) -> anyhow::Result<std::collections::HashMap<String, Option<String>>> {
        let known = known.filter(|r| r.commit.is_some() && r.commit == wf.head_sha);
        let mut out = std::collections::HashMap::with_capacity(paths.len());
        for path in paths {
            let text = match known.and_then(|r| r.files.get(*path)) {
                Some(text) => text.clone(),
                None if known.and_then(|r| r.listed.as_ref()).is_some_and(|l| !l.contains(*path)) => None,
                None => {
                    self.github
                        .file(wf.installation_id, &wf.repository, path, wf.head_sha.as_deref())
                        .await?
                }
            };
            out.insert(path.to_string(), text);
        }
        Ok(out)
    }

    /// The diff of every file of `patch` against the commit it was proposed on, stored for the
    /// dashboard (which shows all of it). A file generation already read at that commit is not
    /// read again (a commit's files never change); any other file the patch touches is read.
    async fn patch_diff(
        &self,
        wf: &Workflow,
        patch: &llm::PatchOutput,
        read_at_base: Option<&BaseTexts>,
    ) -> anyhow::Result<Vec<super::shown::FileDiff>> {
        let known = read_at_base.filter(|r| r.commit.is_some() && r.commit == wf.head_sha);
        let mut files = Vec::with_capacity(patch.files.len());
        for f in &patch.files {
            let old = match known.and_then(|r| r.files.get(&f.path)) {
                Some(text) => text.clone(),
                None => {
                    self.github
                        .file(wf.installation_id, &wf.repository, &f.path, wf.head_sha.as_deref())
                        .await?
                }
            };
            let new = (f.action != FileAction::Delete).then_some(f.content.as_str());
            files.push(super::shown::file_diff(&f.path, old.as_deref(), new));
        }
        let _write = self.store.write_guard().await;
        workflows::set_proposal_diff(self.store.pool(), wf.id, &super::shown::unified(&files), now_ms()).await?;
        Ok(files)
    }

    /// How many proposals `wf` has made (its PATCHES_PROPOSED entries).
    async fn proposal_round(&self, wf: &Workflow) -> anyhow::Result<usize> {
        Ok(proposals_in(&workflows::transitions(self.store.pool(), wf.id).await?))
    }

    /// The ledger's verdict on `wf` under the approval rules of `policy`.
    pub async fn tally(&self, wf: &Workflow, policy: &Effective) -> anyhow::Result<Option<Tally>> {
        let Some(binding) = wf.binding() else { return Ok(None) };
        let votes = workflows::votes(self.store.pool(), wf.id).await?;
        let rules = Rules {
            required: policy.policy.approvals.required,
            allow_self_approval: policy.policy.approvals.allow_self_approval,
        };
        Ok(Some(approval::tally(&votes, &binding, Some(&wf.requester()), &rules)))
    }

    /// Moves a waiting workflow on when its ledger decides it; returns the verdict.
    pub async fn settle(&self, wf: &Workflow, policy: &Effective) -> anyhow::Result<Option<Tally>> {
        if wf.state != State::WaitingUserApproval {
            return self.tally(wf, policy).await;
        }
        let tally = self.tally(wf, policy).await?;
        let moved = match &tally {
            Some(Tally::Approved { approvers }) => {
                let actor = approvers.last().cloned().unwrap_or_default();
                let reason = format!("approved by {}", approvers.join(", "));
                self.step(wf, Step::ApprovalComplete, &actor, &reason, true).await
            }
            Some(t @ Tally::Rejected { by, .. }) => self.step(wf, Step::Rejected, by, &t.summary(), false).await,
            _ => return Ok(tally),
        };
        match moved {
            Ok(_) => {}
            // Someone settled it first (a command and the reactions poll at once): theirs stands.
            Err(e) if matches!(e.downcast_ref::<TransitionError>(), Some(TransitionError::Stale { .. })) => {
                tracing::debug!(workflow = wf.id, "settled by someone else first");
                return Ok(tally);
            }
            Err(e) => return Err(e),
        }
        if let Some(t @ Tally::Rejected { .. }) = &tally {
            let text = format!("Workflow {} was {}; nothing was applied.", wf.id, t.summary());
            self.comment(wf, &format!("wf{}:rejected", wf.id), &text).await?;
            self.close_check_run(&self.load(wf.id).await?).await?;
        }
        Ok(tally)
    }

    /// Once a patch proposal is decided (the workflow ended, applied or not), its check run says
    /// how, and its Approve/Reject buttons go: GitHub would otherwise keep offering them. Once per
    /// check run; a no-op before the end or without a check run.
    pub async fn close_check_run(&self, wf: &Workflow) -> anyhow::Result<()> {
        let (Kind::Patch, Some(run)) = (wf.kind, wf.check_run_id) else {
            return Ok(());
        };
        // An applied patch links its pull request: the check run is where the proposal was
        // shown, and orch posts no comment about the pull request (see `announce_pr`).
        let pull = match wf.state {
            State::Done | State::PrCreated => self
                .pull_number(wf)
                .await?
                .map(|n| (n, format!("{}/{}/pull/{n}", self.github.html_url(), wf.repository))),
            _ => None,
        };
        let applied = match &pull {
            Some((n, url)) => format!("Approved and applied: pull request [#{n}]({url})."),
            None => "Approved and applied (dry-run: no pull request was opened).".to_string(),
        };
        let (conclusion, outcome) = match wf.state {
            State::Done | State::PrCreated => ("success", applied.as_str()),
            State::BlockedPolicy => ("failure", "Blocked by policy: nothing was applied."),
            State::NeedsHuman => (
                "neutral",
                "Waiting for a human: nothing was applied; `/orch retry` makes a new proposal.",
            ),
            State::Failed => ("neutral", "Closed without being applied."),
            _ => return Ok(()),
        };
        let reason = wf.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        let mut summary = format!(
            "**{outcome}**\n\nWorkflow {} ended `{}`{reason}; this proposal takes no more approvals.",
            wf.id,
            wf.state.as_str()
        );
        if let Ok(Proposal::Patch(patch)) = Self::proposal_of(wf) {
            summary.push_str("\n\n---\n\n");
            summary.push_str(&messages::patch(&patch));
        }
        let update = crate::github::client::CheckRunUpdate {
            conclusion: conclusion.into(),
            title: format!("Patch proposal for #{} (workflow {}): {}", wf.number, wf.id, wf.state.as_str()),
            summary,
            actions: Vec::new(),
            details_url: pull.map(|(_, url)| url),
        };
        actions::check_run_update_once(
            &self.store,
            Some(&self.github),
            &format!("wf{}:check-closed:{run}", wf.id),
            wf.installation_id,
            &wf.repository,
            run,
            &update,
        )
        .await?;
        Ok(())
    }

    /// WAITING_USER_APPROVAL: polls the proposal's reactions (GitHub sends no webhook for them)
    /// and settles; ends the wait after `approvals.expire_days`. None when the workflow moved on.
    ///
    /// What polling costs: nothing while nobody reacts. The policy is the one the last read
    /// found (no request; a policy changed since is caught at Gate 3), and the reactions are
    /// read with their ETag, so an unchanged answer is a 304 that GitHub does not count. Only
    /// the first read of a comment, and a read after someone reacted, are counted. The polls
    /// thin out as the proposal ages ([`poll_interval`]); commands and check-run buttons do not
    /// wait for a poll (their deliveries wake the workflow).
    async fn wait(&self, wf: &Workflow, carried: &mut Carried) -> anyhow::Result<Option<Next>> {
        // Right after Gate 2 in the same run: its policy and the moment the wait began.
        let policy = match carried.policy.take() {
            Some(policy) => policy,
            None => self.cached_policy(wf.installation_id, &wf.repository).await?,
        };
        let now = now_ms();
        let since = match carried.waiting_since.take() {
            Some(since) => since,
            None => self.waiting_since(wf).await?,
        };
        let age = Duration::from_millis((now - since).max(0) as u64);
        let expires_at = since + (self.proposal_day.as_millis() as i64) * i64::from(policy.policy.approvals.expire_days);
        if now >= expires_at {
            self.expire(wf, &policy).await?;
            return Ok(None);
        }
        let polling = policy.policy.approvals.reactions && wf.proposal_comment_id.is_some();
        // A proposal posted a moment ago has no reactions worth a request yet.
        if let (true, true, Some(comment_id)) = (polling, age >= self.reaction_poll, wf.proposal_comment_id) {
            self.poll_reactions(wf, comment_id, &policy).await?;
            self.poll_superseded(wf, comment_id).await?;
        }
        let tally = self.settle(wf, &policy).await?;
        if matches!(tally, Some(Tally::Approved { .. } | Tally::Rejected { .. })) {
            return Ok(None);
        }
        let next = if polling {
            (now + poll_interval(self.reaction_poll, age).as_millis() as i64).min(expires_at)
        } else {
            expires_at
        };
        Ok(Some(Next::At(next)))
    }

    /// When `wf` began to wait for approval of its current proposal (unix ms): the latest move
    /// from PATCHES_PROPOSED into WAITING_USER_APPROVAL. Votes voided by a push or a policy
    /// change do not restart the clock.
    async fn waiting_since(&self, wf: &Workflow) -> anyhow::Result<i64> {
        Ok(workflows::transitions(self.store.pool(), wf.id)
            .await?
            .iter()
            .rev()
            .find(|t| t.to == State::WaitingUserApproval && t.from == Some(State::PatchesProposed))
            .map(|t| t.at)
            .unwrap_or(wf.updated_at))
    }

    /// WAITING_USER_APPROVAL → NEEDS_HUMAN after `approvals.expire_days` without a decision:
    /// nothing is applied, the reactions are no longer polled, and the issue is told once how
    /// to start again. NEEDS_HUMAN (not FAILED) because nothing went wrong and the workflow is
    /// not over: SPEC §3's way out of NEEDS_HUMAN is `/orch retry`, which makes a new proposal
    /// against the repository as it is by then, and `/orch cancel` ends it. A patch's check run
    /// is closed with the other NEEDS_HUMAN outcomes (its buttons go).
    async fn expire(&self, wf: &Workflow, policy: &Effective) -> anyhow::Result<()> {
        let days = policy.policy.approvals.expire_days;
        let text = messages::expired(wf.id, days);
        let round = self.proposal_round(wf).await?;
        // Posted before the state moves: a repeat after a crash finds the comment.
        self.comment(wf, &format!("wf{}:expired:{round}", wf.id), &text).await?;
        let reason = format!("{EXPIRED_REASON} {days} days without a decision");
        match self.step(wf, Step::Expired, "orch", &reason, false).await {
            Ok(_) => Ok(()),
            // A vote or a command moved it in the meantime: theirs stands.
            Err(e) if matches!(e.downcast_ref::<TransitionError>(), Some(TransitionError::Stale { .. })) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn poll_reactions(&self, wf: &Workflow, comment_id: i64, policy: &Effective) -> anyhow::Result<()> {
        let (inst, repo) = (wf.installation_id, wf.repository.as_str());
        let (etag, reactions) = match self
            .github
            .comment_reactions(inst, repo, comment_id, wf.reactions_etag.as_deref())
            .await?
        {
            Reactions::NotModified => return Ok(()),
            Reactions::Changed { etag, reactions } => (etag, reactions),
        };
        let binding = wf.binding().context("a waiting workflow has a binding")?;
        for r in reactions {
            let decision = match r.content.as_str() {
                "+1" => Decision::Approve,
                "-1" => Decision::Reject,
                _ => continue,
            };
            // A bot by its account type, whatever its login: bots and orch never vote.
            if !approval::may_vote(&r.user.login, &r.user.kind) {
                continue;
            }
            let voter = approval::Person::new(Some(r.user.id), r.user.login.clone());
            match authorize(&self.github, inst, repo, &voter, &policy.policy).await? {
                Authz::Allowed => {
                    // The reaction's user id, from the API, is who votes; the login is shown.
                    let vote = Vote {
                        voter: r.user.login.clone(),
                        voter_id: Some(r.user.id),
                        decision,
                        source: Source::Reaction,
                        binding: binding.clone(),
                        reason: None,
                        at: now_ms(),
                    };
                    let mut tx = self.store.begin().await?;
                    workflows::record_vote(&mut tx, wf.id, &vote, Some(r.id)).await?;
                    tx.commit().await?;
                }
                Authz::Denied { permission } => {
                    let what = if decision == Decision::Approve {
                        "approving with 👍"
                    } else {
                        "rejecting with 👎"
                    };
                    self.comment(
                        wf,
                        &format!("wf{}:reaction:{}:denied", wf.id, r.id),
                        &messages::denied(&r.user.login, what, repo, &permission),
                    )
                    .await?;
                }
            }
        }
        let _write = self.store.write_guard().await;
        workflows::set_reactions_etag(self.store.pool(), wf.id, etag.as_deref(), now_ms()).await?;
        Ok(())
    }

    /// 👍 and 👎 on the workflow's earlier proposal comments (replaced by a newer revision) are
    /// void (SPEC §6): each is answered once and never recorded. Reactions that were recorded
    /// while their comment was the current one are left alone.
    async fn poll_superseded(&self, wf: &Workflow, current: i64) -> anyhow::Result<()> {
        let (inst, repo) = (wf.installation_id, wf.repository.as_str());
        let earlier = crate::store::actions::done_with_prefix(self.store.pool(), &format!("wf{}:proposal:", wf.id)).await?;
        let now_revision = short(wf.proposal_hash.as_deref().unwrap_or_default());
        for (key, comment_id) in earlier.into_iter().filter(|(_, c)| *c != current) {
            // The ETag is stored, not kept in memory: polling stays free across restarts and
            // whichever replica polls.
            let etag = read_cache::reaction_etag(self.store.pool(), comment_id).await?;
            let reactions = match self.github.comment_reactions(inst, repo, comment_id, etag.as_deref()).await {
                Ok(Reactions::NotModified) => continue,
                Ok(Reactions::Changed { etag, reactions }) => {
                    if let Some(etag) = etag {
                        let _write = self.store.write_guard().await;
                        read_cache::set_reaction_etag(self.store.pool(), comment_id, &etag, now_ms()).await?;
                    }
                    reactions
                }
                // A deleted comment holds no votes.
                Err(ClientError::Github(crate::github::retry::GithubError::Permanent { status: 404 | 410, .. })) => continue,
                Err(e) => return Err(e.into()),
            };
            for r in reactions {
                let what = match r.content.as_str() {
                    "+1" => "your 👍",
                    "-1" => "your 👎",
                    _ => continue,
                };
                if !approval::may_vote(&r.user.login, &r.user.kind) || workflows::reaction_recorded(self.store.pool(), wf.id, r.id).await? {
                    continue;
                }
                let text = messages::void_vote(&r.user.login, what, wf.id, messages::revision_of_key(&key), now_revision);
                self.comment(wf, &format!("wf{}:void-reaction:{}", wf.id, r.id), &text).await?;
            }
        }
        Ok(())
    }

    /// APPROVED → APPLYING_CHANGES (Gate 3), back to WAITING_USER_APPROVAL when an approval no
    /// longer holds, or BLOCKED_POLICY when the current policy forbids the proposal.
    /// Some(next) when the workflow must wait where it is (the breaker is open).
    async fn gate3(&self, wf: &Workflow) -> anyhow::Result<Option<Next>> {
        let policy = self.policy(wf.installation_id, &wf.repository).await?;
        let now = now_ms();
        // Nothing is applied while the breaker is open; the approval stands and waits.
        if guard::breaker(self.store.pool()).await?.is_open {
            tracing::warn!(workflow = wf.id, "approved, but the circuit breaker is open: applying waits");
            return Ok(Some(Next::At(now + self.reaction_poll.as_millis() as i64)));
        }
        if wf.policy_version.as_deref() != Some(policy.version.as_str()) {
            let verdict = self.judge(wf, &policy, None).await?;
            self.audit_verdict(wf, "gate3", &verdict).await?;
            let violations = verdict.lines();
            if !violations.is_empty() {
                self.comment(
                    wf,
                    &format!("wf{}:blocked3:{}", wf.id, policy.version),
                    &messages::blocked(wf, &violations),
                )
                .await?;
                self.step(wf, Step::Gate3Blocked, "policy", &violations.join("; "), false).await?;
                return Ok(None);
            }
            // Still allowed, but approvals were given under another policy: they are asked again.
            let mut tx = self.store.begin().await?;
            workflows::void_votes(&mut *tx, wf.id, "the policy changed", now).await?;
            let proposal = wf.proposal.clone().unwrap_or_default();
            let hash = wf.proposal_hash.clone().unwrap_or_default();
            workflows::set_proposal(&mut *tx, wf.id, &proposal, &hash, &policy.version, wf.head_sha.as_deref(), now).await?;
            workflows::transition(
                &mut tx,
                wf.id,
                wf.kind,
                wf.state,
                Step::ApprovalsVoided,
                "policy",
                "the policy changed",
                now,
            )
            .await?;
            tx.commit().await?;
            self.comment(
                wf,
                &format!("wf{}:policy-changed:{}", wf.id, policy.version),
                &format!("`.github/orch.yml` changed after workflow {} was approved. The proposal still passes the new policy, but approvals are bound to the policy they were given under: please approve again.", wf.id),
            )
            .await?;
            return Ok(None);
        }
        // Approvers must still be allowed to approve (SPEC §5: checked again at Gate 3). The
        // policy's own approval and an operator's (admin API, dashboard: authorized by the admin
        // token, not by GitHub) are not GitHub permissions to re-check.
        let votes = workflows::votes(self.store.pool(), wf.id).await?;
        let mut lost = Vec::new();
        for v in votes
            .iter()
            .filter(|v| !matches!(v.source, Source::Policy | Source::Api) && v.decision == Decision::Approve)
        {
            if let Authz::Denied { permission } =
                authorize(&self.github, wf.installation_id, &wf.repository, &v.person(), &policy.policy).await?
            {
                lost.push((v.person(), permission));
            }
        }
        if !lost.is_empty() {
            let mut tx = self.store.begin().await?;
            for (voter, _) in &lost {
                workflows::void_votes_of(&mut *tx, wf.id, voter, "the approver lost the permission to approve", now).await?;
            }
            let still = approval::tally(
                &workflows::votes(&mut *tx, wf.id).await?,
                &wf.binding().context("an approved workflow has a binding")?,
                Some(&wf.requester()),
                &Rules {
                    required: policy.policy.approvals.required,
                    allow_self_approval: policy.policy.approvals.allow_self_approval,
                },
            );
            let names: Vec<String> = lost.iter().map(|(v, p)| format!("@{} (now {p})", v.login)).collect();
            if !still.is_approved() {
                workflows::transition(
                    &mut tx,
                    wf.id,
                    wf.kind,
                    wf.state,
                    Step::ApprovalsVoided,
                    "orch",
                    &format!("approver lost permission: {}", names.join(", ")),
                    now,
                )
                .await?;
            }
            tx.commit().await?;
            if !still.is_approved() {
                self.comment(
                    wf,
                    &format!("wf{}:approver-lost:{}", wf.id, names.join(",")),
                    &format!("Workflow {} is not applied: the approval of {} no longer counts, because approving needs write, maintain or admin permission. It is waiting for approval again ({}).", wf.id, names.join(", "), still.summary()),
                )
                .await?;
                return Ok(None);
            }
        }
        // The ledger decides again, against the workflow as it is now: a push or a policy change
        // that voided votes while the approval was being recorded (both only compare the state
        // name, which a void leaves at WAITING_USER_APPROVAL) must not be carried into applying.
        let current = self.load(wf.id).await?;
        if current.state != State::Approved {
            return Ok(None);
        }
        match self.tally(&current, &policy).await? {
            Some(t) if t.is_approved() => {}
            verdict => {
                let summary = verdict.map(|t| t.summary()).unwrap_or_else(|| "there is no proposal".into());
                let binding = current
                    .binding()
                    .map(|b| format!("{}:{}", short(&b.proposal_hash), b.head_sha.unwrap_or_default()));
                self.step(
                    &current,
                    Step::ApprovalsVoided,
                    "orch",
                    &format!("approvals no longer hold for the current revision: {summary}"),
                    false,
                )
                .await?;
                self.comment(
                    &current,
                    &format!("wf{}:gate3-binding:{}", wf.id, binding.unwrap_or_default()),
                    &format!("Workflow {} is not applied: the approvals it had were given for an earlier revision, head or policy, and do not count for the current one ({summary}). It is waiting for approval again.", wf.id),
                )
                .await?;
                return Ok(None);
            }
        }
        self.step(&current, Step::Gate3Passed, "orch", "approvals, policy and binding hold", false)
            .await?;
        Ok(None)
    }

    /// The approvers of `wf` as a mention list, for the messages that report an applied change.
    async fn approvers(&self, wf: &Workflow) -> anyhow::Result<String> {
        let votes = workflows::votes(self.store.pool(), wf.id).await?;
        let mut names: Vec<String> = Vec::new();
        for v in votes.iter().filter(|v| v.decision == Decision::Approve) {
            let name = if v.source == Source::Policy {
                "the policy (auto-safe)".to_string()
            } else {
                format!("@{}", v.voter)
            };
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(names.join(", "))
    }

    /// APPLYING_CHANGES → DONE (labels, QA plan) or PR_CREATED (patch).
    async fn apply(&self, wf: &Workflow) -> anyhow::Result<()> {
        let proposal = Self::proposal_of(wf).map_err(anyhow::Error::from)?;
        let approvers = self.approvers(wf).await?;
        let (inst, repo) = (wf.installation_id, wf.repository.as_str());
        match proposal {
            Proposal::Triage(t) => {
                let labels = messages::triage_labels(&t);
                let sent = actions::labels_once(
                    &self.store,
                    Some(&self.github),
                    &format!("wf{}:labels", wf.id),
                    inst,
                    repo,
                    wf.number,
                    &labels,
                )
                .await?;
                let verb = if matches!(sent, Sent::DryRun { .. }) {
                    "Would apply (dry-run)"
                } else {
                    "Applied"
                };
                let list = labels.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", ");
                self.comment(
                    wf,
                    &format!("wf{}:applied", wf.id),
                    &format!("{verb} labels {list} (workflow {}, approved by {approvers}).", wf.id),
                )
                .await?;
                self.step(wf, Step::Applied, "orch", &format!("labels {}", labels.join(", ")), false)
                    .await?;
            }
            Proposal::QaPlan(q) => {
                let head_sha = wf.head_sha.clone().context("a QA plan is bound to a head SHA")?;
                let spec = CheckRunSpec {
                    name: "orch/qa-plan".into(),
                    head_sha,
                    status: "completed".into(),
                    conclusion: Some("neutral".into()),
                    external_id: Some(format!("workflow:{}", wf.id)),
                    title: format!("QA plan ({} steps)", q.steps.len()),
                    summary: messages::qa_plan(&q),
                    text: None,
                    annotations: Vec::new(),
                    actions: Vec::new(),
                };
                actions::check_run_once(&self.store, Some(&self.github), &format!("wf{}:qa-check", wf.id), inst, repo, &spec).await?;
                self.comment(
                    wf,
                    &format!("wf{}:qa-comment", wf.id),
                    &format!("### orch · QA plan (workflow {})\n\n{}", wf.id, messages::qa_plan(&q)),
                )
                .await?;
                self.step(wf, Step::Applied, "orch", "QA plan posted", false).await?;
            }
            Proposal::Patch(p) => self.open_pull_request(wf, &p).await?,
        }
        Ok(())
    }

    /// The patch as a branch `orch/<workflow-id>`, a commit on the current base and a pull request.
    ///
    /// What it costs GitHub (issue 14): one read of the default branch (its tip and that tip's
    /// tree in one answer), the tree with the patch's texts inline (one request whatever the
    /// number of files), the commit, the branch and the pull request. Only when the base moved
    /// since the proposal are the patch's files read (two reads each) to find conflicts. The
    /// branch is created without looking for it first: GitHub refuses a branch that exists, and
    /// only then is it read and checked. A branch can be orch's own only if an earlier run
    /// recorded a commit (recorded before the branch points at it), so only then is it looked
    /// for first — such a run may have created it, and the commit made now (GitHub stamps
    /// commits with the time) would not be the one it points at.
    async fn open_pull_request(&self, wf: &Workflow, patch: &llm::PatchOutput) -> anyhow::Result<()> {
        let (inst, repo) = (wf.installation_id, wf.repository.as_str());
        let branch = format!("orch/{}", wf.id);
        let approvers = self.approvers(wf).await?;
        let commit_key = format!("wf{}:commit", wf.id);
        let recorded_before = crate::store::actions::recorded_commit(self.store.pool(), &commit_key).await?;
        let found = match &recorded_before {
            Some(_) => self.github.ref_sha(inst, repo, &format!("heads/{branch}")).await?,
            None => None,
        };
        // (the branch's tip, the commit orch recorded that the tip is judged against, whether
        // this run created the branch)
        let (head, recorded, made_now) = match found {
            // Made by an earlier run of this step, or not: compared below either way.
            Some(tip) => (tip, recorded_before, false),
            None => {
                let default_branch = self.default_branch(wf).await?;
                let base = self
                    .github
                    .branch(inst, repo, &default_branch)
                    .await?
                    .context("the default branch has no commit")?;
                // The base may have moved since the proposal: the patch still applies when every
                // file it changes is as it was then (SPEC §8, Gate 3).
                if let Some(proposed_on) = wf.head_sha.as_deref().filter(|p| *p != base.commit) {
                    let mut conflicts = Vec::new();
                    for f in &patch.files {
                        let then = self.github.file(inst, repo, &f.path, Some(proposed_on)).await?;
                        let now = self.github.file(inst, repo, &f.path, Some(&base.commit)).await?;
                        if then != now {
                            conflicts.push(f.path.clone());
                        }
                    }
                    if !conflicts.is_empty() {
                        let list = conflicts.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ");
                        let text = format!(
                            "Workflow {} was not applied: since the proposal, {default_branch} changed {list}, which the patch also changes. `/orch retry` makes a new proposal on the current {default_branch}.",
                            wf.id
                        );
                        self.comment(wf, &format!("wf{}:conflict:{}", wf.id, short(&base.commit)), &text)
                            .await?;
                        self.step(
                            wf,
                            Step::Conflict,
                            "orch",
                            &format!("conflict with {}: {}", short(&base.commit), conflicts.join(", ")),
                            false,
                        )
                        .await?;
                        return Ok(());
                    }
                }
                // Gate 2 turned every `edit` into its text or blocked the proposal.
                anyhow::ensure!(
                    patch.edited_paths().next().is_none(),
                    "workflow {}: an approved patch still has unapplied edits",
                    wf.id
                );
                let changes: Vec<TreeChange> = patch
                    .files
                    .iter()
                    .map(|f| TreeChange {
                        path: f.path.clone(),
                        content: (f.action != FileAction::Delete).then(|| f.content.clone()),
                    })
                    .collect();
                let tree = self.github.create_tree(inst, repo, &base.tree, &changes).await?;
                let message = format!(
                    "{}\n\n{}\n\nProposed by orch (workflow {}) for #{}; approved by {approvers}.",
                    patch.title, patch.summary, wf.id, wf.number
                );
                let commit = self.github.create_commit(inst, repo, &message, &tree, &base.commit).await?;
                // Recorded before the branch points at it: a branch tip that is not this commit
                // was not made by orch (SPEC §6, "the published branch is the approved patch").
                {
                    let _write = self.store.write_guard().await;
                    crate::store::actions::record_commit(self.store.pool(), &commit_key, inst, repo, &branch, &commit, now_ms()).await?;
                }
                self.store.sync().await?;
                let files: Vec<&str> = patch.files.iter().map(|f| f.path.as_str()).collect();
                let audit = |found: bool| {
                    let details = serde_json::json!({
                        "kind": "git_data", "workflow": wf.id, "branch": branch, "base": base.commit, "tree": tree,
                        "commit": commit, "files": files, "found_after_lost_answer": found,
                    });
                    async move {
                        crate::audit::append_now(
                            &self.store,
                            &crate::audit::Entry::new(crate::audit::kind::GITHUB_WRITE, "orch", repo, details),
                        )
                        .await
                    }
                };
                match self.github.create_branch(inst, repo, &branch, &commit).await {
                    Ok(()) => {
                        // The Git Data writes are not action rows (their objects are content-addressed and
                        // the branch is their marker), so the audit log records them here, once the branch
                        // makes them part of the repository.
                        audit(false).await?;
                        (commit.clone(), Some(commit.clone()), true)
                    }
                    // GitHub refuses a branch that exists ("Reference already exists"): one this
                    // step made with its answer lost, or anyone's. Which one is decided by its
                    // tip, never by its name.
                    Err(e @ ClientError::Github(crate::github::retry::GithubError::Permanent { status: 422, .. })) => {
                        let Some(tip) = self.github.ref_sha(inst, repo, &format!("heads/{branch}")).await? else {
                            // Refused, and not there: GitHub's refusal is the reason.
                            return Err(e.into());
                        };
                        let ours = [Some(&commit), recorded_before.as_ref()]
                            .into_iter()
                            .flatten()
                            .find(|c| **c == tip)
                            .cloned();
                        if tip == commit {
                            audit(true).await?;
                        } else {
                            // The commit made now is not the tip, so it was never published:
                            // the record goes back to what it was, so that a later look at the
                            // branch does not take it for one orch made and someone moved.
                            let _write = self.store.write_guard().await;
                            crate::store::actions::restore_commit(self.store.pool(), &commit_key, recorded_before.as_deref(), now_ms())
                                .await?;
                        }
                        (tip, ours, false)
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        // A branch this run just created points at the commit it just made from the base tree
        // and exactly the patch's texts: there is nothing to compare (five reads saved). A branch
        // found (an earlier run's, or anyone's) is compared.
        let difference = match made_now {
            true => None,
            false => self.published_difference(wf, patch, &branch, &head, recorded.as_deref()).await?,
        };
        if let Some(difference) = difference {
            self.not_published(wf, &branch, &head, &difference).await?;
            return Ok(());
        }
        let default_branch = self.default_branch(wf).await?;
        let spec = PullSpec {
            title: patch.title.clone(),
            head: branch.clone(),
            base: default_branch,
            body: self.pull_request_body(wf, patch).await?,
        };
        let sent = actions::pull_once(&self.store, Some(&self.github), &format!("wf{}:pull", wf.id), inst, repo, &spec).await?;
        let reason = match sent {
            Sent::Done { github_id, .. } => format!("pull request #{github_id} from {branch} at {}", short(&head)),
            Sent::DryRun { .. } => "dry-run: no pull request".to_string(),
        };
        self.step(wf, Step::PrCreated, "orch", &reason, false).await?;
        Ok(())
    }

    /// How branch `branch`, whose tip is `tip`, differs from what orch published: None when the
    /// tip is `recorded` (the commit orch recorded for it; None when orch made none it could
    /// point at) and that commit's tree is its parent's plus exactly the patch. Checked before a
    /// pull request is opened or adopted, so a branch someone else created first, or pushed to
    /// after orch, is never presented as the approved patch.
    async fn published_difference(
        &self,
        wf: &Workflow,
        patch: &llm::PatchOutput,
        branch: &str,
        tip: &str,
        recorded: Option<&str>,
    ) -> anyhow::Result<Option<Difference>> {
        let (inst, repo) = (wf.installation_id, wf.repository.as_str());
        let tip_commit = self.github.git_commit(inst, repo, tip).await?;
        let tip_files = self.github.tree_files(inst, repo, &tip_commit.tree).await?;
        match recorded {
            Some(made) if made == tip => {
                let [parent] = tip_commit.parents.as_slice() else {
                    return Ok(Some(Difference {
                        headline: format!("orch's commit `{}` has {} parents", short(tip), tip_commit.parents.len()),
                        paths: Vec::new(),
                    }));
                };
                let base = self.github.git_commit(inst, repo, parent).await?;
                let base_files = self.github.tree_files(inst, repo, &base.tree).await?;
                let mut paths = patch_difference(&base_files, &tip_files, patch);
                // Same paths changed: the content must be the approved content too.
                for f in patch.files.iter().filter(|f| f.action != FileAction::Delete) {
                    if tip_files.contains_key(&f.path)
                        && self.github.file(inst, repo, &f.path, Some(tip)).await?.as_deref() != Some(f.content.as_str())
                    {
                        paths.push(format!("`{}` is not the approved content", f.path));
                    }
                }
                Ok((!paths.is_empty()).then(|| Difference {
                    headline: format!("the tree of orch's commit `{}` is not its base plus exactly the patch", short(tip)),
                    paths,
                }))
            }
            Some(made) => {
                let ours = self.github.git_commit(inst, repo, made).await?;
                let ours_files = self.github.tree_files(inst, repo, &ours.tree).await?;
                Ok(Some(Difference {
                    headline: format!("`{branch}` was moved to `{}` after orch made `{}`", short(tip), short(made)),
                    paths: changed_paths(&ours_files, &tip_files),
                }))
            }
            None => {
                let default_branch = self.default_branch(wf).await?;
                let base = self
                    .github
                    .branch(inst, repo, &default_branch)
                    .await?
                    .context("the default branch has no commit")?;
                let base_files = self.github.tree_files(inst, repo, &base.tree).await?;
                Ok(Some(Difference {
                    headline: format!("`{branch}` already exists at `{}`, a commit orch did not make", short(tip)),
                    paths: patch_difference(&base_files, &tip_files, patch),
                }))
            }
        }
    }

    /// APPLYING_CHANGES → NEEDS_HUMAN: the branch is not the approved patch, so nothing is
    /// published, and the issue is told what differs.
    async fn not_published(&self, wf: &Workflow, branch: &str, tip: &str, difference: &Difference) -> anyhow::Result<()> {
        let mut text = format!(
            "Workflow {} was not published: {}, so the branch is not the approved patch and no pull request was opened.",
            wf.id, difference.headline
        );
        if !difference.paths.is_empty() {
            text.push_str("\n\nCompared with the approved patch:\n");
            for p in difference.paths.iter().take(50) {
                text.push_str(&format!("- {p}\n"));
            }
            if difference.paths.len() > 50 {
                text.push_str(&format!("- … and {} more\n", difference.paths.len() - 50));
            }
        }
        text.push_str(&format!(
            "\nSomeone with push access should look at `{branch}` and delete it; `/orch retry` then makes a new proposal."
        ));
        self.comment(wf, &format!("wf{}:not-published:{}", wf.id, short(tip)), &text)
            .await?;
        let reason = format!("{branch} is not the approved patch: {}", difference.headline);
        self.step(wf, Step::Conflict, "orch", &reason, false).await?;
        Ok(())
    }

    /// The pull request's body: the patch's summary, the issue it closes, the proposal (with a
    /// link to its comment), who approved it and how, where the audit log has it, and what the
    /// model did not see.
    async fn pull_request_body(&self, wf: &Workflow, patch: &llm::PatchOutput) -> anyhow::Result<String> {
        let repo = wf.repository.as_str();
        let html = self.github.html_url();
        let mut body = format!("{}\n\nCloses #{}.\n\n", patch.summary, wf.number);
        let proposal = match wf.proposal_comment_id {
            Some(c) => format!(
                "[proposal `{0}`]({html}/{repo}/issues/{1}#issuecomment-{c})",
                short(wf.proposal_hash.as_deref().unwrap_or_default()),
                wf.number
            ),
            None => format!("proposal `{}`", short(wf.proposal_hash.as_deref().unwrap_or_default())),
        };
        body.push_str(&format!(
            "**Proposed by orch**: workflow {}, {proposal}, checked against policy `{}`.\n\n**Approved by**:\n",
            wf.id,
            wf.policy_version.as_deref().unwrap_or_default()
        ));
        for v in workflows::votes(self.store.pool(), wf.id)
            .await?
            .iter()
            .filter(|v| v.decision == Decision::Approve)
        {
            let who = match v.source {
                Source::Policy => "the policy (auto-safe)".to_string(),
                Source::Api => format!("`{}` (admin API or dashboard)", v.voter),
                Source::Command => format!("@{} (`/orch approve`)", v.voter),
                Source::Reaction => format!("@{} (👍 on the proposal)", v.voter),
                Source::Button => format!("@{} (the Approve button)", v.voter),
            };
            body.push_str(&format!("- {who}, {} UTC\n", crate::api::ui::html::time(v.at)));
        }
        let filter = crate::audit::Filter {
            kind: Some("vote".to_string()),
            subject: Some(format!("workflow:{}", wf.id)),
            actor: None,
        };
        let seqs: Vec<String> = crate::audit::page(self.store.pool(), 0, 100, &filter)
            .await?
            .iter()
            .map(|r| format!("#{}", r.seq))
            .collect();
        body.push_str(&format!(
            "\n**Audit**: the votes are audit entries {} of subject `workflow:{}` (`orch audit export`, `GET /audit?subject=workflow:{}`).\n",
            if seqs.is_empty() { "–".to_string() } else { seqs.join(", ") },
            wf.id,
            wf.id
        ));
        let not_seen = model_calls::for_workflow(self.store.pool(), wf.id)
            .await?
            .last()
            .map(|c| c.not_seen.clone())
            .unwrap_or_default();
        body.push_str(&match not_seen.as_slice() {
            [] => "\n**Not seen by the model**: nothing; its context held everything it was given.".to_string(),
            cut => format!("\n**Not seen by the model** (context budget): {}.", cut.join("; ")),
        });
        Ok(body)
    }

    /// PR_CREATED → DONE. The pull request is announced without a comment of its own: its body
    /// names the issue ("Closes #N"), so GitHub shows it in the issue's timeline and links it
    /// from the issue, and the proposal's check run, closed at DONE, links it (its summary and
    /// its "Details"). That is one write fewer per patch (issue 14).
    async fn announce_pr(&self, wf: &Workflow) -> anyhow::Result<()> {
        let reason = match self.pull_number(wf).await? {
            Some(number) => format!("pull request #{number} opened"),
            None => "dry-run: no pull request was opened".to_string(),
        };
        self.step(wf, Step::Applied, "orch", &reason, false).await?;
        Ok(())
    }

    /// The number of the pull request `wf` opened, once it is opened (None in dry-run).
    async fn pull_number(&self, wf: &Workflow) -> anyhow::Result<Option<i64>> {
        Ok(crate::store::actions::done_github_id(self.store.pool(), &format!("wf{}:pull", wf.id)).await?)
    }

    /// Ends a workflow whose step failed for good, and says so on the issue: permanent GitHub
    /// errors with their reason, anything else with a short generic message (details in the log).
    pub async fn give_up(&self, id: i64, error: &anyhow::Error) -> anyhow::Result<()> {
        let wf = self.load(id).await?;
        if wf.state.is_terminal() {
            return Ok(());
        }
        let step = match wf.state {
            State::Ingested | State::ContextLoaded | State::PatchesProposed => Step::GenerationFailed,
            State::ApplyingChanges => Step::ApplyFailed,
            _ => Step::Cancelled,
        };
        let github = crate::github::client::client_error_of(error);
        let (reason, text) = match github {
            Some(e @ ClientError::Github(_)) => (
                format!("GitHub refused a request: {e}"),
                format!(
                    "Workflow {} failed: GitHub refused a request ({e}). `/orch retry` starts again.",
                    wf.id
                ),
            ),
            _ => ("internal error".to_string(), messages::internal_error(wf.id)),
        };
        self.step(&wf, step, "orch", &reason, false).await?;
        self.comment(&wf, &format!("wf{}:failed", wf.id), &text).await?;
        Ok(())
    }
}

/// How many proposals a workflow with this history has had.
fn proposals_in(history: &[workflows::TransitionRow]) -> usize {
    history.iter().filter(|t| t.to == State::PatchesProposed).count()
}

/// What one step of a run learned that the next step of the same run would otherwise read
/// again. Kept only within [`Engine::run`], so a step after a restart (or on another replica)
/// reads it afresh.
#[derive(Debug, Default)]
struct Carried {
    /// What generating a patch read at its base, for Gate 2's diff.
    read_at_base: Option<BaseTexts>,
    /// The policy the proposal was made under (generation → Gate 2 → the first wait).
    policy: Option<Effective>,
    /// The proposal's round: how many proposals the workflow has had, this one included.
    round: Option<usize>,
    /// When the proposal began to wait for approval (Gate 2's transition).
    waiting_since: Option<i64>,
}

/// A patch answer after its `edit`s were applied: the JSON to store, or why they did not apply.
enum Resolved {
    Done(String),
    Failed(Vec<llm::EditFailure>),
}

/// Files of the default branch as read at one commit (path → text; None: no such file there):
/// what generating a patch read, handed to Gate 2 so that showing the diff reads nothing twice.
#[derive(Debug, Clone, Default)]
struct BaseTexts {
    /// The commit they were read at (None: the default branch's tip, no commit known).
    commit: Option<String>,
    files: std::collections::HashMap<String, Option<String>>,
    /// Every path of the commit, when its whole tree was read (a tarball): a path not listed
    /// does not exist there, so nobody needs to ask GitHub.
    listed: Option<std::collections::HashSet<String>>,
}

/// Why a branch is not the approved patch: one line, and the paths that differ.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Difference {
    headline: String,
    paths: Vec<String>,
}

/// How `tip` differs from `base` plus `patch`, by path (file contents are blob shas): paths
/// changed that the patch does not change, and patch changes that are missing.
fn patch_difference(
    base: &std::collections::BTreeMap<String, String>,
    tip: &std::collections::BTreeMap<String, String>,
    patch: &llm::PatchOutput,
) -> Vec<String> {
    let mut out = Vec::new();
    for (path, what) in changed(base, tip) {
        if !patch.files.iter().any(|f| f.path == path) {
            out.push(format!("`{path}` {what}, which the patch does not do"));
        }
    }
    for f in &patch.files {
        let missing = match f.action {
            FileAction::Delete => tip.contains_key(&f.path),
            FileAction::Create | FileAction::Update | FileAction::Edit => !tip.contains_key(&f.path),
        };
        if missing {
            out.push(format!(
                "`{}`: the patch's {} is missing",
                f.path,
                format!("{:?}", f.action).to_lowercase()
            ));
        }
    }
    out
}

/// Every path that differs between two trees, as "`path` added/changed/deleted".
fn changed_paths(from: &std::collections::BTreeMap<String, String>, to: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    changed(from, to).map(|(path, what)| format!("`{path}` {what}")).collect()
}

fn changed<'a>(
    from: &'a std::collections::BTreeMap<String, String>,
    to: &'a std::collections::BTreeMap<String, String>,
) -> impl Iterator<Item = (&'a str, &'static str)> + 'a {
    let added_or_changed = to.iter().filter_map(move |(path, blob)| match from.get(path) {
        None => Some((path.as_str(), "added")),
        Some(b) if b != blob => Some((path.as_str(), "changed")),
        Some(_) => None,
    });
    let deleted = from.keys().filter(move |p| !to.contains_key(*p)).map(|p| (p.as_str(), "deleted"));
    added_or_changed.chain(deleted)
}

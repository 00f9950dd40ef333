//! Workflows in the store, on both backends: one live workflow per issue and kind, transitions
//! decided by the state machine and written with optimistic concurrency, the append-only history,
//! the approval ledger, and workflow steps in the job queue.

mod common;

use common::{Backend, TestDb};
use orch::store::deliveries::{self, NewDelivery, PayloadLocation};
use orch::store::workflows::{self, Created, NewWorkflow, TransitionError, TransitionRow, Workflow};
use orch::store::{jobs, Store};
use orch::workflow::approval::{self, Binding, Decision, Person, Rules, Source, Tally, Vote};
use orch::workflow::state::{Kind, State, Step};

/// A fixed clock: every time the store sees is passed explicitly.
const T0: i64 = 1_700_000_000_000;
const REPO: &str = "acme/widgets";

fn new_workflow(kind: Kind, repository: &str, number: i64) -> NewWorkflow {
    NewWorkflow {
        kind,
        installation_id: 77,
        repository: repository.to_string(),
        number,
        requested_by: "alice".into(),
        requested_by_id: Some(7),
        instruction: (kind == Kind::Patch).then(|| "fix the typo".to_string()),
        head_sha: None,
        attempt: 1,
        previous_id: None,
        reason: format!("requested {kind}"),
    }
}

async fn create(store: &Store, new: NewWorkflow, now: i64) -> Created {
    let mut tx = store.begin().await.unwrap();
    let created = workflows::create(&mut tx, new, now).await.unwrap();
    tx.commit().await.unwrap();
    created
}

async fn create_new(store: &Store, new: NewWorkflow, now: i64) -> Workflow {
    match create(store, new, now).await {
        Created::New(w) => w,
        other => panic!("expected a new workflow, got {other:?}"),
    }
}

/// One transition in a transaction of its own, committed when it succeeds.
async fn step(store: &Store, w: &Workflow, from: State, s: Step, actor: &str, now: i64) -> Result<State, TransitionError> {
    let mut tx = store.begin().await.unwrap();
    let r = workflows::transition(&mut tx, w.id, w.kind, from, s, actor, s.as_str(), now).await;
    match r {
        Ok(_) => tx.commit().await.unwrap(),
        Err(_) => tx.rollback().await.unwrap(),
    }
    r
}

async fn count(store: &Store, table: &str) -> i64 {
    use sqlx::Row;
    sqlx::query(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(store.pool())
        .await
        .unwrap()
        .try_get(0)
        .unwrap()
}

async fn create_and_one_active_per_issue_and_kind(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;

    let triage = create_new(&store, new_workflow(Kind::Triage, REPO, 1), T0).await;
    assert_eq!(
        (triage.kind, triage.state, triage.attempt, triage.previous_id),
        (Kind::Triage, State::Ingested, 1, None)
    );
    assert_eq!((triage.repository.as_str(), triage.number, triage.installation_id), (REPO, 1, 77));
    assert_eq!((triage.created_at, triage.updated_at), (T0, T0));
    assert_eq!(triage.reason.as_deref(), Some("requested triage"));
    assert_eq!(triage.binding(), None);
    assert_eq!(workflows::get(store.pool(), triage.id).await.unwrap(), Some(triage.clone()));
    assert_eq!(
        workflows::transitions(store.pool(), triage.id).await.unwrap(),
        vec![TransitionRow {
            id: workflows::transitions(store.pool(), triage.id).await.unwrap()[0].id,
            workflow_id: triage.id,
            from: None,
            to: State::Ingested,
            actor: "alice".into(),
            reason: "requested triage".into(),
            at: T0,
        }]
    );

    // A second request for the same issue and kind finds the live one and writes nothing.
    let mut again = new_workflow(Kind::Triage, REPO, 1);
    again.requested_by = "bob".into();
    assert_eq!(create(&store, again, T0 + 1).await, Created::AlreadyActive(triage.clone()));
    assert_eq!(count(&store, "workflows").await, 1);
    assert_eq!(count(&store, "workflow_transitions").await, 1);

    // Another kind, another issue, another repository: all independent.
    let plan = create_new(&store, new_workflow(Kind::QaPlan, REPO, 1), T0 + 2).await;
    let other_issue = create_new(&store, new_workflow(Kind::Triage, REPO, 2), T0 + 3).await;
    let other_repo = create_new(&store, new_workflow(Kind::Triage, "acme/gadgets", 1), T0 + 4).await;
    let patch = create_new(&store, new_workflow(Kind::Patch, REPO, 1), T0 + 5).await;
    assert_eq!(patch.instruction.as_deref(), Some("fix the typo"));
    let ids: Vec<i64> = workflows::list_active_for_issue(store.pool(), REPO, 1)
        .await
        .unwrap()
        .iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(ids, [triage.id, plan.id, patch.id]);
    assert_eq!(
        workflows::active_for(store.pool(), REPO, 2, Kind::Triage).await.unwrap(),
        Some(other_issue)
    );
    assert_eq!(
        workflows::active_for(store.pool(), "acme/gadgets", 1, Kind::Triage).await.unwrap(),
        Some(other_repo)
    );
    assert_eq!(workflows::active_for(store.pool(), REPO, 2, Kind::Patch).await.unwrap(), None);
    assert_eq!(workflows::get(store.pool(), 999_999).await.unwrap(), None);

    // Once it ends, the index lets a new attempt in, linked to the old one.
    assert_eq!(
        step(&store, &triage, State::Ingested, Step::Cancelled, "alice", T0 + 10)
            .await
            .unwrap(),
        State::Failed
    );
    assert_eq!(workflows::active_for(store.pool(), REPO, 1, Kind::Triage).await.unwrap(), None);
    let ended = workflows::latest_for(store.pool(), REPO, 1, Kind::Triage).await.unwrap().unwrap();
    assert_eq!(
        (ended.id, ended.state, ended.reason.as_deref()),
        (triage.id, State::Failed, Some("cancelled"))
    );
    let retry = NewWorkflow {
        attempt: ended.attempt + 1,
        previous_id: Some(ended.id),
        reason: "retry".into(),
        ..new_workflow(Kind::Triage, REPO, 1)
    };
    let second = create_new(&store, retry, T0 + 20).await;
    assert_eq!(
        (second.attempt, second.previous_id, second.state),
        (2, Some(triage.id), State::Ingested)
    );
    assert_eq!(
        workflows::latest_for(store.pool(), REPO, 1, Kind::Triage).await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(
        workflows::active_for(store.pool(), REPO, 1, Kind::Triage).await.unwrap(),
        Some(second)
    );

    // The database itself refuses a second live row, whoever writes it.
    let _write = store.write_guard().await;
    let dup = sqlx::query(
        "INSERT INTO workflows (kind, installation_id, repository, number, state, requested_by, created_at, updated_at) \
         VALUES ('triage', 77, $1, 1, 'NEEDS_HUMAN', 'mallory', 0, 0)",
    )
    .bind(REPO)
    .execute(store.pool())
    .await;
    assert!(dup.is_err(), "{dup:?}");
}

async fn concurrent_creates_make_one_workflow(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { create(&store, new_workflow(Kind::Patch, REPO, 7), T0 + i).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let fresh: Vec<&Created> = outcomes.iter().filter(|c| matches!(c, Created::New(_))).collect();
    assert_eq!(fresh.len(), 1, "{outcomes:?}");
    let id = fresh[0].workflow().id;
    assert!(outcomes.iter().all(|c| c.workflow().id == id), "{outcomes:?}");
    assert_eq!(count(&store, "workflows").await, 1);
    assert_eq!(count(&store, "workflow_transitions").await, 1);
}

async fn triage_and_patch_walk_to_done_with_their_history(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;

    let w = create_new(&store, new_workflow(Kind::Triage, REPO, 3), T0).await;
    let walk = [
        (State::Ingested, Step::ContextLoaded, State::ContextLoaded, "orch"),
        (State::ContextLoaded, Step::Proposed, State::PatchesProposed, "model"),
        (State::PatchesProposed, Step::Gate2Passed, State::WaitingUserApproval, "policy"),
        (State::WaitingUserApproval, Step::ApprovalComplete, State::Approved, "bob"),
        (State::Approved, Step::Gate3Passed, State::ApplyingChanges, "orch"),
        (State::ApplyingChanges, Step::Applied, State::Done, "orch"),
    ];
    for (i, (from, s, to, actor)) in walk.iter().enumerate() {
        let now = T0 + 100 * (i as i64 + 1);
        assert_eq!(step(&store, &w, *from, *s, actor, now).await.unwrap(), *to);
        let stored = workflows::get(store.pool(), w.id).await.unwrap().unwrap();
        assert_eq!((stored.state, stored.updated_at, stored.created_at), (*to, now, T0));
        assert_eq!(stored.reason.as_deref(), Some(s.as_str()));
    }
    let history = workflows::transitions(store.pool(), w.id).await.unwrap();
    let got: Vec<(Option<State>, State, &str, &str, i64)> = history
        .iter()
        .map(|t| (t.from, t.to, t.actor.as_str(), t.reason.as_str(), t.at))
        .collect();
    let mut expected = vec![(None, State::Ingested, "alice", "requested triage", T0)];
    for (i, (from, s, to, actor)) in walk.iter().enumerate() {
        expected.push((Some(*from), *to, *actor, s.as_str(), T0 + 100 * (i as i64 + 1)));
    }
    assert_eq!(got, expected);
    assert!(history.windows(2).all(|p| p[0].id < p[1].id));
    assert!(history.iter().all(|t| t.workflow_id == w.id));
    assert!(workflows::list_active_for_issue(store.pool(), REPO, 3).await.unwrap().is_empty());
    // DONE is terminal: nothing moves it.
    for s in Step::ALL {
        assert!(matches!(
            step(&store, &w, State::Done, s, "orch", T0 + 9999).await,
            Err(TransitionError::Illegal(_))
        ));
    }

    // A patch goes through PR_CREATED; an auto-safe one skips the wait.
    let p = create_new(&store, new_workflow(Kind::Patch, REPO, 3), T0).await;
    for (from, s) in [
        (State::Ingested, Step::ContextLoaded),
        (State::ContextLoaded, Step::Proposed),
        (State::PatchesProposed, Step::AutoApproved),
        (State::Approved, Step::Gate3Passed),
        (State::ApplyingChanges, Step::PrCreated),
        (State::PrCreated, Step::Applied),
    ] {
        step(&store, &p, from, s, "orch", T0 + 1).await.unwrap();
    }
    let states: Vec<State> = workflows::transitions(store.pool(), p.id)
        .await
        .unwrap()
        .iter()
        .map(|t| t.to)
        .collect();
    assert_eq!(
        states,
        [
            State::Ingested,
            State::ContextLoaded,
            State::PatchesProposed,
            State::Approved,
            State::ApplyingChanges,
            State::PrCreated,
            State::Done
        ]
    );
}

async fn refused_transitions_write_nothing(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let w = create_new(&store, new_workflow(Kind::Triage, REPO, 4), T0).await;

    // Illegal for the state machine: no SQL runs.
    let e = step(&store, &w, State::Ingested, Step::Applied, "orch", T0 + 1).await.unwrap_err();
    assert!(matches!(e, TransitionError::Illegal(_)), "{e}");
    assert_eq!(
        e.to_string(),
        "illegal transition: a triage workflow in INGESTED cannot take the step applied"
    );
    // A triage never opens a pull request, even from the right state.
    assert!(matches!(
        orch::workflow::state::next(Kind::Triage, State::ApplyingChanges, Step::PrCreated),
        Err(orch::workflow::state::IllegalTransition { .. })
    ));
    // Legal from the state the caller believes in, but the workflow is elsewhere.
    let e = step(&store, &w, State::ContextLoaded, Step::Proposed, "orch", T0 + 2)
        .await
        .unwrap_err();
    assert!(
        matches!(e, TransitionError::Stale { id, expected: State::ContextLoaded, actual: State::Ingested } if id == w.id),
        "{e}"
    );
    // The wrong kind, and a workflow that does not exist.
    let mut tx = store.begin().await.unwrap();
    let e = workflows::transition(
        &mut tx,
        w.id,
        Kind::Patch,
        State::Ingested,
        Step::ContextLoaded,
        "orch",
        "x",
        T0 + 3,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            TransitionError::WrongKind {
                expected: Kind::Patch,
                actual: Kind::Triage,
                ..
            }
        ),
        "{e}"
    );
    let e = workflows::transition(
        &mut tx,
        424_242,
        Kind::Triage,
        State::Ingested,
        Step::ContextLoaded,
        "orch",
        "x",
        T0 + 3,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, TransitionError::NotFound(424_242)), "{e}");
    // The refusals left the caller's transaction usable (on Postgres an error inside a
    // transaction would otherwise poison it): a legal step in it still commits.
    assert_eq!(
        workflows::transition(
            &mut tx,
            w.id,
            Kind::Triage,
            State::Ingested,
            Step::ContextLoaded,
            "orch",
            "ok",
            T0 + 4
        )
        .await
        .unwrap(),
        State::ContextLoaded
    );
    tx.commit().await.unwrap();

    let history = workflows::transitions(store.pool(), w.id).await.unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(
        (history[1].from, history[1].to, history[1].at),
        (Some(State::Ingested), State::ContextLoaded, T0 + 4)
    );
    assert_eq!(count(&store, "workflow_transitions").await, 2);
    let stored = workflows::get(store.pool(), w.id).await.unwrap().unwrap();
    assert_eq!((stored.state, stored.updated_at), (State::ContextLoaded, T0 + 4));

    // A transition rolled back with its caller's transaction leaves no trace either.
    let mut tx = store.begin().await.unwrap();
    workflows::transition(
        &mut tx,
        w.id,
        Kind::Triage,
        State::ContextLoaded,
        Step::Proposed,
        "orch",
        "undone",
        T0 + 5,
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        workflows::get(store.pool(), w.id).await.unwrap().unwrap().state,
        State::ContextLoaded
    );
    assert_eq!(count(&store, "workflow_transitions").await, 2);
}

async fn one_of_two_concurrent_transitions_wins(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let w = create_new(&store, new_workflow(Kind::Patch, REPO, 5), T0).await;

    // Two workers take the same step from the same state. Each holds its transaction open for a
    // while after its UPDATE, so the other one runs into it: on Postgres it waits on the row
    // lock and then finds the state changed; on SQLite it waits for the write lock.
    let tasks: Vec<_> = ["worker-a", "worker-b"]
        .into_iter()
        .map(|worker| {
            let store = store.clone();
            let w = w.clone();
            tokio::spawn(async move {
                let mut tx = store.begin().await.unwrap();
                let r = workflows::transition(&mut tx, w.id, w.kind, State::Ingested, Step::ContextLoaded, worker, worker, T0 + 1).await;
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                match r {
                    Ok(_) => tx.commit().await.unwrap(),
                    Err(_) => tx.rollback().await.unwrap(),
                }
                (worker, r)
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let winners: Vec<&str> = results.iter().filter(|(_, r)| r.is_ok()).map(|(w, _)| *w).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let loser = results.iter().find(|(_, r)| r.is_err()).unwrap();
    assert!(
        matches!(
            loser.1,
            Err(TransitionError::Stale {
                expected: State::Ingested,
                actual: State::ContextLoaded,
                ..
            })
        ),
        "{results:?}"
    );
    let history = workflows::transitions(store.pool(), w.id).await.unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[1].actor, winners[0]);
}

async fn the_transition_history_is_append_only(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let w = create_new(&store, new_workflow(Kind::Triage, REPO, 6), T0).await;
    step(&store, &w, State::Ingested, Step::ContextLoaded, "orch", T0 + 1)
        .await
        .unwrap();
    let before = workflows::transitions(store.pool(), w.id).await.unwrap();

    let _write = store.write_guard().await;
    let mut statements = vec![
        "UPDATE workflow_transitions SET reason = 'rewritten'",
        "UPDATE workflow_transitions SET to_state = 'DONE' WHERE from_state IS NOT NULL",
        "DELETE FROM workflow_transitions",
        "DELETE FROM workflow_transitions WHERE from_state IS NULL",
    ];
    if backend == Backend::Postgres {
        statements.push("TRUNCATE workflow_transitions");
    }
    for sql in statements {
        let e = sqlx::query(sql).execute(store.pool()).await.expect_err(sql);
        assert!(e.to_string().contains("append-only"), "{sql}: {e}");
    }
    drop(_write);
    assert_eq!(workflows::transitions(store.pool(), w.id).await.unwrap(), before);
}

fn binding(hash: &str, head: Option<&str>, policy: &str) -> Binding {
    Binding {
        proposal_hash: hash.to_string(),
        head_sha: head.map(str::to_string),
        policy_version: policy.to_string(),
    }
}

fn vote(voter: &str, decision: Decision, source: Source, binding: &Binding, at: i64) -> Vote {
    Vote {
        voter: voter.to_string(),
        voter_id: None,
        decision,
        source,
        binding: binding.clone(),
        reason: None,
        at,
    }
}

async fn record(store: &Store, workflow_id: i64, vote: &Vote, comment_id: Option<i64>) -> bool {
    let mut tx = store.begin().await.unwrap();
    let recorded = workflows::record_vote(&mut tx, workflow_id, vote, comment_id).await.unwrap();
    tx.commit().await.unwrap();
    recorded
}

async fn votes_round_trip_once_and_are_voided(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let w = create_new(&store, new_workflow(Kind::QaPlan, REPO, 8), T0).await;
    let proposal = r#"{"summary":"s","steps":[],"risks":[]}"#;
    let hash = approval::proposal_hash(proposal);
    {
        let _write = store.write_guard().await;
        let pool = store.pool();
        assert!(
            workflows::set_proposal(pool, w.id, proposal, &hash, "policy-1", Some("aaa111"), T0 + 1)
                .await
                .unwrap()
        );
        assert!(workflows::set_proposal_comment(pool, w.id, 5001, T0 + 2).await.unwrap());
        assert!(workflows::set_check_run(pool, w.id, 6001, T0 + 3).await.unwrap());
        assert!(workflows::set_reactions_etag(pool, w.id, Some("W/\"etag\""), T0 + 4).await.unwrap());
        assert!(!workflows::set_check_run(pool, 999_999, 1, T0).await.unwrap());
    }
    let stored = workflows::get(store.pool(), w.id).await.unwrap().unwrap();
    assert_eq!(stored.proposal.as_deref(), Some(proposal));
    assert_eq!((stored.proposal_comment_id, stored.check_run_id), (Some(5001), Some(6001)));
    assert_eq!((stored.reactions_etag.as_deref(), stored.updated_at), (Some("W/\"etag\""), T0 + 4));
    let current = stored.binding().unwrap();
    assert_eq!(current, binding(&hash, Some("aaa111"), "policy-1"));

    // The same command comment or reaction is one vote, however often it is seen; the same id
    // from another source is another vote; votes without an id are never merged.
    let bob = vote("bob", Decision::Approve, Source::Command, &current, T0 + 10);
    assert!(record(&store, w.id, &bob, Some(11)).await);
    assert!(!record(&store, w.id, &bob, Some(11)).await);
    let bob_reaction = vote("bob", Decision::Approve, Source::Reaction, &current, T0 + 11);
    assert!(record(&store, w.id, &bob_reaction, Some(11)).await);
    let mut carol = vote(
        "carol",
        Decision::Reject,
        Source::Button,
        &binding(&hash, None, "policy-1"),
        T0 + 12,
    );
    carol.reason = Some("stale head".into());
    assert!(record(&store, w.id, &carol, Some(11)).await);
    let api = vote("dave", Decision::Approve, Source::Api, &current, T0 + 13);
    assert!(record(&store, w.id, &api, None).await);
    assert!(record(&store, w.id, &api, None).await);
    let stored_votes = workflows::votes(store.pool(), w.id).await.unwrap();
    assert_eq!(stored_votes, vec![bob.clone(), bob_reaction, carol, api.clone(), api]);

    // Carol's vote is bound to another head: it does not count, and bob approves.
    let t = approval::tally(&stored_votes, &current, Some(&Person::new(None, "alice")), &Rules::default());
    assert_eq!(
        t,
        Tally::Approved {
            approvers: vec!["bob".into(), "dave".into()]
        }
    );

    // The head moves: the votes stop counting by themselves, and are voided for the record.
    {
        let _write = store.write_guard().await;
        assert!(workflows::set_head_sha(store.pool(), w.id, "bbb222", T0 + 20).await.unwrap());
        assert!(workflows::set_reactions_etag(store.pool(), w.id, None, T0 + 20).await.unwrap());
    }
    let moved = workflows::get(store.pool(), w.id).await.unwrap().unwrap();
    assert_eq!(moved.reactions_etag, None);
    let new_binding = moved.binding().unwrap();
    assert!(!approval::tally(&stored_votes, &new_binding, Some(&Person::new(None, "alice")), &Rules::default()).is_approved());
    {
        let _write = store.write_guard().await;
        assert_eq!(
            workflows::void_votes(store.pool(), w.id, "head moved to bbb222", T0 + 21)
                .await
                .unwrap(),
            5
        );
        assert_eq!(workflows::void_votes(store.pool(), w.id, "again", T0 + 22).await.unwrap(), 0);
    }
    assert!(workflows::votes(store.pool(), w.id).await.unwrap().is_empty());
    // Bob's old reaction seen again by the next poll does not come back.
    assert!(!record(&store, w.id, &bob, Some(11)).await);
    let fresh = vote("bob", Decision::Approve, Source::Command, &new_binding, T0 + 30);
    assert!(record(&store, w.id, &fresh, Some(12)).await);
    assert_eq!(workflows::votes(store.pool(), w.id).await.unwrap(), vec![fresh]);
    {
        use sqlx::Row;
        let row = sqlx::query("SELECT COUNT(*), MIN(void_reason), MIN(voided_at) FROM approvals WHERE voided_at IS NOT NULL")
            .fetch_one(store.pool())
            .await
            .unwrap();
        let (n, reason, at): (i64, String, i64) = (row.try_get(0).unwrap(), row.try_get(1).unwrap(), row.try_get(2).unwrap());
        assert_eq!((n, reason.as_str(), at), (5, "head moved to bbb222", T0 + 21));
    }
}

async fn workflow_jobs_are_claimed_alongside_delivery_jobs(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let (pool, b) = (store.pool(), store.backend());
    let w = create_new(&store, new_workflow(Kind::Triage, REPO, 9), T0).await;

    let delivery = NewDelivery {
        guid: "d-1".into(),
        event: "issues".into(),
        action: Some("labeled".into()),
        installation_id: Some(77),
        repository: Some(REPO.into()),
        received_at: T0,
        status: "queued",
        event_data: "{}".into(),
        payload_crc32: orch::store::archive::checksum(b"{}"),
    };
    let mut tx = store.begin().await.unwrap();
    deliveries::insert_new(
        &mut tx,
        &[delivery],
        &[PayloadLocation::Inline(axum::body::Bytes::from_static(b"{}"))],
    )
    .await
    .unwrap();
    jobs::enqueue_for_deliveries(&mut tx, &["d-1"], T0).await.unwrap();
    // A step is queued in the transaction that moved the workflow, as a worker will do it.
    workflows::transition(&mut tx, w.id, w.kind, State::Ingested, Step::ContextLoaded, "orch", "ctx", T0)
        .await
        .unwrap();
    let later = workflows::enqueue_workflow_job(&mut tx, w.id, T0 + 1000, T0).await.unwrap();
    assert!(later.is_some());
    // One live job per workflow: asking again for an earlier step moves that job earlier.
    assert_eq!(workflows::enqueue_workflow_job(&mut tx, w.id, T0, T0).await.unwrap(), None);
    let now_job = later.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(jobs::depth(pool).await.unwrap(), 2);
    // A job for a workflow that does not exist is refused by the foreign key.
    {
        let mut conn = store.begin().await.unwrap();
        assert!(workflows::enqueue_workflow_job(&mut conn, 424_242, T0, T0).await.is_err());
    }

    let claimed = {
        let _write = store.write_guard().await;
        jobs::claim(pool, b, "A", 60_000, 10, T0).await.unwrap()
    };
    assert_eq!(claimed.len(), 2, "{claimed:?}");
    let delivery_job = claimed.iter().find(|j| j.kind == jobs::KIND_DELIVERY).unwrap();
    assert_eq!(
        (delivery_job.delivery_guid.as_deref(), delivery_job.workflow_id),
        (Some("d-1"), None)
    );
    let workflow_job = claimed.iter().find(|j| j.kind == jobs::KIND_WORKFLOW).unwrap();
    assert_eq!(
        (
            workflow_job.id,
            workflow_job.delivery_guid.as_deref(),
            workflow_job.workflow_id,
            workflow_job.attempts
        ),
        (now_job, None, Some(w.id), 1)
    );
    {
        let _write = store.write_guard().await;
        assert!(jobs::complete(pool, workflow_job.id, "A", T0 + 1).await.unwrap());
        assert!(jobs::complete(pool, delivery_job.id, "A", T0 + 1).await.unwrap());
    }
    // The workflow's job is done: a later step may be queued now, and runs when due.
    let later_job = {
        let mut tx = store.begin().await.unwrap();
        let id = workflows::enqueue_workflow_job(&mut tx, w.id, T0 + 1000, T0 + 1)
            .await
            .unwrap()
            .unwrap();
        tx.commit().await.unwrap();
        id
    };
    {
        let _write = store.write_guard().await;
        assert!(jobs::claim(pool, b, "B", 60_000, 10, T0 + 999).await.unwrap().is_empty());
        let later = jobs::claim(pool, b, "B", 60_000, 10, T0 + 1000).await.unwrap();
        assert_eq!(
            later.iter().map(|j| (j.id, j.workflow_id)).collect::<Vec<_>>(),
            [(later_job, Some(w.id))]
        );
        assert!(jobs::complete(pool, later_job, "B", T0 + 1001).await.unwrap());
    }
    assert_eq!(
        jobs::for_workflow(pool, w.id).await.unwrap(),
        [("done".to_string(), 1), ("done".to_string(), 1)]
    );
    assert_eq!(jobs::depth(pool).await.unwrap(), 0);
}

/// Migration 0008: requesters and voters carry their account ids; rows written before it (no
/// id) stay readable, and are matched by login only.
async fn account_ids_round_trip_and_old_rows_stay_readable(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let w = create_new(&store, new_workflow(Kind::Triage, REPO, 21), T0).await;
    assert_eq!(w.requested_by_id, Some(7));
    assert_eq!(w.requester(), Person::new(Some(7), "alice"));
    // A workflow as it was stored before ids.
    {
        let _write = store.write_guard().await;
        sqlx::query(
            "INSERT INTO workflows (kind, installation_id, repository, number, state, requested_by, attempt, created_at, updated_at) \
             VALUES ('triage', 77, $1, 22, 'INGESTED', 'olduser', 1, $2, $2)",
        )
        .bind(REPO.to_string())
        .bind(T0)
        .execute(store.pool())
        .await
        .unwrap();
    }
    let old = workflows::list_for_issue(store.pool(), REPO, 22).await.unwrap().remove(0);
    assert_eq!(old.requester(), Person::new(None, "olduser"));

    let proposal = r#"{"labels":["bug"]}"#;
    let hash = approval::proposal_hash(proposal);
    {
        let _write = store.write_guard().await;
        workflows::set_proposal(store.pool(), w.id, proposal, &hash, "policy-1", None, T0 + 1)
            .await
            .unwrap();
    }
    let current = workflows::get(store.pool(), w.id).await.unwrap().unwrap().binding().unwrap();
    let mut bob = vote("bob", Decision::Approve, Source::Reaction, &current, T0 + 2);
    bob.voter_id = Some(5);
    assert!(record(&store, w.id, &bob, Some(31)).await);
    // The same reaction seen after bob renamed himself is the same vote.
    let mut renamed = bob.clone();
    renamed.voter = "bobby".into();
    assert!(!record(&store, w.id, &renamed, Some(31)).await);
    // A vote without an id, as stored before 0008.
    let carol = vote("carol", Decision::Approve, Source::Command, &current, T0 + 3);
    assert!(record(&store, w.id, &carol, Some(32)).await);
    assert_eq!(workflows::votes(store.pool(), w.id).await.unwrap(), vec![bob, carol]);
    {
        let _write = store.write_guard().await;
        // By id, whatever the login is now.
        let n = workflows::void_votes_of(store.pool(), w.id, &Person::new(Some(5), "bobby"), "lost permission", T0 + 4)
            .await
            .unwrap();
        assert_eq!(n, 1);
        // Someone else who took the login `bob` is not bob.
        let n = workflows::void_votes_of(store.pool(), w.id, &Person::new(Some(6), "bob"), "lost permission", T0 + 4)
            .await
            .unwrap();
        assert_eq!(n, 0);
        // A vote without an id matches by login.
        let n = workflows::void_votes_of(store.pool(), w.id, &Person::new(Some(9), "Carol"), "lost permission", T0 + 4)
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    assert!(workflows::votes(store.pool(), w.id).await.unwrap().is_empty());
}

both_backends!(
    account_ids_round_trip_and_old_rows_stay_readable,
    create_and_one_active_per_issue_and_kind,
    concurrent_creates_make_one_workflow,
    triage_and_patch_walk_to_done_with_their_history,
    refused_transitions_write_nothing,
    one_of_two_concurrent_transitions_wins,
    the_transition_history_is_append_only,
    votes_round_trip_once_and_are_voided,
    workflow_jobs_are_claimed_alongside_delivery_jobs,
);

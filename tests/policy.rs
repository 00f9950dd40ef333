//! The policy engine and its gates (SPEC §7–§8): every rule fires, every violated rule is listed
//! together with the others, the label state machine, dangerous patterns, secrets, caps that only
//! tighten, phases, and `orch policy check` as an operator runs it.

use orch::policy::diff::parse_patch;
use orch::policy::{
    gate1, gate2, gate3, ActionClass, ActionKind, Admission, Caps, Change, CompiledPolicy, Effective, FileChange, Policy, PreApply,
    ProposalView, Rule, Verdict,
};
use std::process::Command;

fn compiled(yaml: &str) -> CompiledPolicy {
    Policy::parse(yaml).unwrap().compile().unwrap()
}

fn file(path: &str, change: Change, content: &str) -> FileChange {
    FileChange::whole(path, change, Some(content.to_string()))
}

fn patch(files: Vec<FileChange>) -> ProposalView {
    ProposalView::Patch {
        title: "Fix the parser".into(),
        files,
        comment_text: "This fixes the parser.".into(),
    }
}

fn triage(labels: &[&str], current: &[&str]) -> ProposalView {
    ProposalView::Triage {
        labels: labels.iter().map(|s| s.to_string()).collect(),
        current_labels: current.iter().map(|s| s.to_string()).collect(),
        comment_text: "Looks like a bug in the parser.".into(),
    }
}

fn qa(text: &str) -> ProposalView {
    ProposalView::QaPlan {
        comment_text: text.to_string(),
    }
}

fn fields(v: &Verdict) -> Vec<&'static str> {
    v.violations().iter().map(Rule::field).collect()
}

const PHASE4: &str = "phase: 4\n";

#[test]
fn a_patch_breaking_five_rules_lists_all_five() {
    let p = compiled("phase: 4\ndiff: {max_files: 3, max_changed_lines: 10, max_file_bytes: 200}\n");
    let v = gate2(
        &p,
        &ProposalView::Patch {
            title: "Update CI".into(),
            files: vec![
                file(".github/workflows/ci.yml", Change::Modified, "on: push\n"),
                file("docs/a.md", Change::Added, &"word ".repeat(60)),
                file("docs/b.md", Change::Added, "a\nb\nc\nd\ne\nf\ng\nh\n"),
                file("config/aws.txt", Change::Added, "key = AKIAIOSFODNN7EXAMPLE\n"),
            ],
            comment_text: "Done.\n/merge\n".into(),
        },
    );
    let rules = v.violations();
    assert_eq!(rules.len(), 6, "{:#?}", rules);
    let mut seen = fields(&v);
    seen.sort_unstable();
    assert_eq!(
        seen,
        [
            "comments.dangerous_patterns",
            "diff.max_changed_lines",
            "diff.max_file_bytes",
            "diff.max_files",
            "paths.forbidden",
            "secrets",
        ]
    );
    assert!(rules.contains(&Rule::TooManyFiles { n: 4, max: 3 }));
    assert!(rules.contains(&Rule::TooManyLines { n: 11, max: 10 }));
    assert!(rules.contains(&Rule::PathForbidden {
        path: ".github/workflows/ci.yml".into(),
        glob: ".github/workflows/**".into()
    }));
    assert!(rules.contains(&Rule::FileTooLarge {
        path: "docs/a.md".into(),
        bytes: 300,
        max: 200
    }));
    assert!(rules.contains(&Rule::SecretInPatch {
        path: "config/aws.txt".into(),
        kind: "AWS access key ID".into(),
        line: 1
    }));
    assert!(matches!(&rules[0], Rule::DangerousText { place, .. } if place == "pull request body"));

    // Exactly five: drop the dangerous body.
    let v = gate2(
        &p,
        &ProposalView::Patch {
            title: "Update CI".into(),
            files: vec![
                file(".github/workflows/ci.yml", Change::Modified, "on: push\n"),
                file("docs/a.md", Change::Added, &"word ".repeat(60)),
                file("docs/b.md", Change::Added, "a\nb\nc\nd\ne\nf\ng\nh\n"),
                file("config/aws.txt", Change::Added, "key = AKIAIOSFODNN7EXAMPLE\n"),
            ],
            comment_text: "Done.".into(),
        },
    );
    assert_eq!(v.violations().len(), 5, "{:#?}", v.violations());
    assert_eq!(v.lines().len(), 5);
    for line in v.lines() {
        assert!(line.contains(": "), "field: description, {line}");
    }
}

#[test]
fn renames_copies_and_deletions_of_forbidden_paths_are_caught() {
    let p = compiled(PHASE4);
    let renamed = |from: &str, to: &str| FileChange {
        path: to.into(),
        previous_path: Some(from.into()),
        change: Change::Renamed,
        content: None,
        added_lines: 0,
        removed_lines: 0,
    };
    let into = gate2(&p, &patch(vec![renamed("docs/ci.yml", ".github/workflows/ci.yml")]));
    assert_eq!(
        into.violations(),
        [Rule::RenameIntoForbidden {
            from: "docs/ci.yml".into(),
            to: ".github/workflows/ci.yml".into(),
            glob: ".github/workflows/**".into()
        }]
    );
    let out = gate2(&p, &patch(vec![renamed("config/prod.env.pem", "docs/notes.txt")]));
    assert_eq!(
        out.violations(),
        [Rule::RenameOutOfForbidden {
            from: "config/prod.env.pem".into(),
            to: "docs/notes.txt".into(),
            glob: "**/*.pem".into()
        }]
    );
    let both = gate2(&p, &patch(vec![renamed(".env", ".github/workflows/x.yml")]));
    assert_eq!(fields(&both), ["paths.forbidden", "paths.forbidden"]);

    let deleted = gate2(
        &p,
        &patch(vec![FileChange::whole(".github/workflows/ci.yml", Change::Deleted, None)]),
    );
    assert_eq!(
        deleted.violations(),
        [Rule::DeleteForbidden {
            path: ".github/workflows/ci.yml".into(),
            glob: ".github/workflows/**".into()
        }]
    );
    let copied = FileChange {
        path: "docs/env.txt".into(),
        previous_path: Some("app/.env.local".into()),
        change: Change::Copied,
        content: None,
        added_lines: 0,
        removed_lines: 0,
    };
    assert!(matches!(
        gate2(&p, &patch(vec![copied])).violations(),
        [Rule::CopyFromForbidden { .. }]
    ));

    // The same through a unified diff.
    let diff = "\
diff --git a/ci.yml b/.github/workflows/ci.yml
similarity index 100%
rename from ci.yml
rename to .github/workflows/ci.yml
diff --git a/secrets/server.pem b/server.txt
similarity index 100%
rename from secrets/server.pem
rename to server.txt
diff --git a/.github/workflows/old.yml b/.github/workflows/old.yml
deleted file mode 100644
--- a/.github/workflows/old.yml
+++ /dev/null
@@ -1 +0,0 @@
-on: push
";
    let v = gate2(&p, &parse_patch(diff, &|_| None).unwrap().into_view());
    let kinds: Vec<&str> = v
        .violations()
        .iter()
        .map(|r| match r {
            Rule::RenameIntoForbidden { .. } => "into",
            Rule::RenameOutOfForbidden { .. } => "out",
            Rule::DeleteForbidden { .. } => "delete",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["into", "out", "delete"], "{:#?}", v);
}

#[test]
fn paths_that_could_dodge_the_globs_are_refused() {
    let p = compiled(PHASE4);
    for path in [
        "docs/../.github/workflows/ci.yml",
        "./.github/workflows/ci.yml",
        "/etc/passwd",
        "a//b",
        ".git/hooks/pre-commit",
        "src\\x.rs",
        "",
    ] {
        let v = gate2(&p, &patch(vec![file(path, Change::Modified, "x\n")]));
        assert!(
            v.violations().iter().any(|r| matches!(r, Rule::PathInvalid { .. })),
            "{path:?}: {:?}",
            v
        );
    }
}

#[test]
fn the_label_state_machine() {
    let p = compiled(
        "phase: 3\nlabels:\n  allowed: [bug]\n  transitions: {\"status:new\": [\"status:triaged\"], \"status:triaged\": [\"status:in-progress\", \"status:wontfix\"]}\nactions: {add_labels: auto_safe}\n",
    );
    // One legal step; state labels need no allow-list entry; case does not matter.
    assert_eq!(
        gate2(&p, &triage(&["bug", "status:triaged"], &["status:new"])),
        Verdict::Pass {
            class: ActionClass::AutoSafe
        }
    );
    assert!(gate2(&p, &triage(&["Status:Triaged"], &["STATUS:NEW"])).is_pass());
    assert_eq!(
        p.transition_removals(&["status:new".into(), "bug".into()], &["status:triaged".into()]),
        ["status:new"]
    );
    // An issue without a state label may only enter at an entry state.
    assert!(gate2(&p, &triage(&["status:new"], &[])).is_pass());
    assert_eq!(
        gate2(&p, &triage(&["status:in-progress"], &["bug"])).violations(),
        [Rule::LabelTransition {
            from: None,
            to: "status:in-progress".into(),
            allowed: vec!["status:new".into()]
        }]
    );
    // A jump, and a step backwards.
    assert_eq!(
        gate2(&p, &triage(&["status:in-progress"], &["status:new"])).violations(),
        [Rule::LabelTransition {
            from: Some("status:new".into()),
            to: "status:in-progress".into(),
            allowed: vec!["status:triaged".into()]
        }]
    );
    assert_eq!(
        fields(&gate2(&p, &triage(&["status:new"], &["status:triaged"]))),
        ["labels.transitions"]
    );
    // Two steps at once: the pair is refused, and the illegal one named.
    let v = gate2(&p, &triage(&["status:triaged", "status:in-progress"], &["status:new"]));
    assert!(
        matches!(&v.violations()[0], Rule::SeveralStates { labels } if labels.len() == 2),
        "{v:?}"
    );
    assert_eq!(v.violations().len(), 2);
    // Re-proposing the current state is no change.
    assert!(gate2(&p, &triage(&["status:triaged", "bug"], &["status:triaged"])).is_pass());
    // Describe says where it could go.
    let line = gate2(&p, &triage(&["status:in-progress"], &["status:new"])).lines()[0].clone();
    assert!(
        line.starts_with("labels.transitions: ") && line.contains("`status:triaged`"),
        "{line}"
    );
}

#[test]
fn dangerous_text_in_comments_is_caught_but_not_mid_sentence() {
    let p = compiled("");
    let text = "QA plan\n/merge\n/orch approve\ncc @acme/everyone\n<!-- orch:action:1 -->\nplease do not /merge this yet";
    let v = gate2(&p, &qa(text));
    assert_eq!(v.violations().len(), 4, "{:#?}", v.violations());
    assert!(v.violations().iter().all(|r| r.field() == "comments.dangerous_patterns"));
    let excerpts: Vec<&str> = v
        .violations()
        .iter()
        .map(|r| match r {
            Rule::DangerousText { excerpt, .. } => excerpt.as_str(),
            _ => "",
        })
        .collect();
    assert_eq!(excerpts, ["/merge", "/orch approve", "cc @acme/everyone", "‹!-- orch:action:1 --›"]);
    assert!(
        excerpts.contains(&"/merge") && excerpts.contains(&"cc @acme/everyone"),
        "{excerpts:?}"
    );
    assert!(gate2(&p, &qa("/orch approve")).violations().len() == 1);
    assert!(gate2(&p, &qa("please do not /merge this yet")).is_pass());
    assert!(gate2(&p, &qa("Run `npm i @types/node`, then test /login.")).is_pass());
    // Lines for the user never become commands, mentions or markers themselves.
    for line in v.lines() {
        assert!(!line.starts_with('/') && !line.contains("<!--"), "{line}");
    }
    // Titles, bodies and labels are texts orch posts too.
    let v = gate2(
        &compiled(PHASE4),
        &ProposalView::Patch {
            title: "@here fix".into(),
            files: vec![file("docs/a.md", Change::Modified, "/merge\n")],
            comment_text: "atlantis apply".into(),
        },
    );
    let places: Vec<&str> = v
        .violations()
        .iter()
        .filter_map(|r| match r {
            Rule::DangerousText { place, .. } => Some(place.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        places,
        ["pull request title", "pull request body"],
        "file contents are not posted text"
    );
    let v = gate2(
        &compiled("phase: 1\nlabels: {allowed: ['*']}\n"),
        &triage(&["<!-- orch:approved -->"], &[]),
    );
    assert_eq!(fields(&v), ["comments.dangerous_patterns"]);
}

#[test]
fn configured_patterns_join_the_built_ins_and_invalid_ones_are_named() {
    let p = compiled("comments:\n  dangerous_patterns: ['(?i)deploy to prod', '^rm -rf']\n");
    let v = gate2(&p, &qa("Then we Deploy To Prod.\nrm -rf /\n"));
    let patterns: Vec<&str> = v
        .violations()
        .iter()
        .filter_map(|r| match r {
            Rule::DangerousText { pattern, .. } => Some(pattern.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(patterns, ["(?i)deploy to prod", "^rm -rf"]);

    let text = "phase: 0\ncomments:\n  dangerous_patterns:\n    - 'fine'\n    - '(unclosed'\n";
    let e = Policy::parse(text).unwrap_err();
    assert!(
        e.message.contains("comments.dangerous_patterns") && e.message.contains("(unclosed"),
        "{e}"
    );
    assert_eq!(e.line, Some(5), "{e}");
    // Built in code (caps), the compile step names it too.
    let mut policy = Policy::default();
    policy.comments.dangerous_patterns = vec!["[z-a]".into()];
    let e = compile_err(&policy);
    assert!(
        e.message.contains("[z-a]") && e.message.contains("comments.dangerous_patterns"),
        "{e}"
    );
    let e = compile_err(&Policy::default().capped(&Caps {
        extra_dangerous_patterns: vec!["x(?P<name".into()],
        ..Caps::default()
    }));
    assert!(e.message.contains("x(?P<name"), "{e}");
}

fn compile_err(policy: &Policy) -> orch::policy::PolicyError {
    match policy.compile() {
        Ok(_) => panic!("an invalid pattern compiled"),
        Err(e) => e,
    }
}

#[test]
fn secrets_are_caught_and_ordinary_code_is_not() {
    let p = compiled(PHASE4);
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7V1\n-----END RSA PRIVATE KEY-----\n";
    let token = format!("const T: &str = \"ghp_{}\";\n", "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5");
    let v = gate2(
        &p,
        &patch(vec![
            file("deploy/key.txt", Change::Added, pem),
            file("docs/aws.md", Change::Added, "Use\n\nAKIAIOSFODNN7EXAMPLE\n"),
            file("tools/gh.rs", Change::Added, &token),
            file("tools/slack.py", Change::Added, "SLACK = 'xoxb-123456789012-abcdefghijkl'\n"),
            file("app/settings.py", Change::Added, "x = 1\nAPI_KEY = \"9fK2mQ7vR4tX1zB8nC5w\"\n"),
        ]),
    );
    let found: Vec<(String, String, u32)> = v
        .violations()
        .iter()
        .filter_map(|r| match r {
            Rule::SecretInPatch { path, kind, line } => Some((path.clone(), kind.clone(), *line)),
            _ => None,
        })
        .collect();
    let kinds: Vec<(&str, u32)> = found.iter().map(|(_, k, l)| (k.as_str(), *l)).collect();
    assert_eq!(
        kinds,
        [
            ("private key", 1),
            ("AWS access key ID", 3),
            ("GitHub token", 1),
            ("Slack token", 1),
            ("secret assigned in code (api_key = \"…\")", 2)
        ],
        "{v:#?}"
    );
    let line = v.lines().into_iter().find(|l| l.starts_with("secrets:")).unwrap();
    assert!(!line.contains("MIIE") && line.contains("line 1"), "{line}");

    let ordinary = r#"
use std::env;
/// Reads the GitHub token from the environment (ghp_… tokens are never in the code).
fn token() -> String { env::var("GITHUB_TOKEN").unwrap_or_default() }
const AKIA_PREFIX: &str = "AKIA";
let password = "";
let api_key = std::env::var("API_KEY")?;
let secret_name = "database-connection-string";
let placeholder = "api_key = \"your-api-key-here-1234\"";
let hash = "d41d8cd98f00b204e9800998ecf8427e";
-----BEGIN CERTIFICATE-----
-----BEGIN PUBLIC KEY-----
password: ${{ secrets.DB_PASSWORD }}
"#;
    assert!(gate2(&p, &patch(vec![file("src/main.rs", Change::Modified, ordinary)])).is_pass());
    // Secrets already in the file (diff context) are not reported again; added ones are, at their line.
    let diff = "--- a/app.cfg\n+++ b/app.cfg\n@@ -10,2 +10,3 @@\n old = AKIAIOSFODNN7EXAMPLE\n+new = AKIAI44QH8DHBEXAMPLE\n ok\n";
    let v = gate2(&p, &parse_patch(diff, &|_| None).unwrap().into_view());
    assert_eq!(
        v.violations(),
        [Rule::SecretInPatch {
            path: "app.cfg".into(),
            kind: "AWS access key ID".into(),
            line: 11
        }]
    );
}

#[test]
fn prompt_injection_labels_outside_the_allow_list_are_blocked() {
    let p = compiled("phase: 1\n");
    let v = gate2(&p, &triage(&["bug", "wontfix", "security"], &[]));
    assert_eq!(
        v.violations(),
        [
            Rule::LabelNotAllowed { label: "wontfix".into() },
            Rule::LabelNotAllowed { label: "security".into() }
        ]
    );
    assert!(v.lines()[0].starts_with("labels.allowed: label `wontfix`"), "{:?}", v.lines());
    // Glob allow-lists and case.
    assert!(gate2(&p, &triage(&["priority:p1", "Bug"], &[])).is_pass());
    assert!(!gate2(&p, &triage(&["priority"], &[])).is_pass());
}

#[test]
fn phases_gate_tasks_and_actions() {
    let at = |phase: u8| {
        compiled(&format!(
            "phase: {phase}\nactions: {{add_labels: auto_safe, create_pr: auto_safe}}\n"
        ))
    };
    let a_patch = || patch(vec![file("docs/readme.md", Change::Modified, "hello\n")]);
    // Phase 0: QA plans only.
    assert_eq!(
        gate2(&at(0), &qa("Steps")),
        Verdict::Pass {
            class: ActionClass::AutoSafe
        }
    );
    assert_eq!(
        gate2(&at(0), &triage(&["bug"], &[])).violations(),
        [Rule::PhaseTooLow { needed: 1, phase: 0 }]
    );
    // Phases 1–2: triage, but auto_safe labels still need approval.
    for phase in [1, 2] {
        assert_eq!(
            gate2(&at(phase), &triage(&["bug"], &[])).class(),
            Some(ActionClass::ApprovalRequired)
        );
    }
    // Phase 3: auto-applied labels.
    assert_eq!(gate2(&at(3), &triage(&["bug"], &[])).class(), Some(ActionClass::AutoSafe));
    assert_eq!(gate2(&at(3), &a_patch()).violations(), [Rule::PhaseTooLow { needed: 4, phase: 3 }]);
    // Phase 4: patches.
    assert_eq!(gate2(&at(4), &a_patch()).class(), Some(ActionClass::AutoSafe));
    // require_approval paths turn an auto_safe patch into approval_required.
    let src = patch(vec![file("src/lib.rs", Change::Modified, "pub fn f() {}\n")]);
    assert_eq!(gate2(&at(4), &src).class(), Some(ActionClass::ApprovalRequired));
    // The server caps the phase of the effective policy.
    let effective = Effective::from_source(Some("phase: 4\n"), 2);
    assert_eq!(effective.compile().unwrap().phase(), 2);
    assert_eq!(
        gate2(&effective.compile().unwrap(), &a_patch()).violations(),
        [Rule::PhaseTooLow { needed: 4, phase: 2 }]
    );
    // Gate 1: automatic triggers need phase 2.
    let mut a = Admission::for_action(&at(1), ActionKind::AddComment, true);
    admit(&mut a);
    assert_eq!(gate1(&a).violations(), [Rule::PhaseTooLow { needed: 2, phase: 1 }]);
    let mut a = Admission::for_action(&at(2), ActionKind::AddComment, true);
    admit(&mut a);
    assert!(gate1(&a).is_pass());
}

#[test]
fn forbidden_actions_block_with_everything_else() {
    let p = compiled("phase: 4\nactions: {add_comment: forbidden, create_pr: forbidden}\n");
    assert_eq!(
        gate2(&p, &qa("/merge")).violations().iter().map(Rule::field).collect::<Vec<_>>(),
        ["actions.add_comment", "comments.dangerous_patterns"]
    );
    let v = gate2(&p, &patch(vec![file(".env", Change::Added, "X=1\n")]));
    assert_eq!(fields(&v), ["actions.create_pr", "paths.forbidden"]);
    let mut a = Admission::for_action(&p, ActionKind::CreatePr, false);
    admit(&mut a);
    assert_eq!(
        gate1(&a).violations(),
        [Rule::ActionForbidden {
            action: ActionKind::CreatePr
        }]
    );
}

fn admit(a: &mut Admission) {
    a.signature_valid = true;
    a.delivery_new = true;
    a.installation_known = true;
    a.repository_allowed = true;
    a.trigger_enabled = true;
    a.requester_authorized = true;
    a.duplicate_within_window = false;
    a.breaker_open = false;
}

#[test]
fn gate1_lists_every_failure_and_fails_closed() {
    let p = compiled("");
    let a = Admission::for_action(&p, ActionKind::AddLabels, false);
    let v = gate1(&a);
    assert_eq!(
        fields(&v),
        [
            "webhook.signature",
            "webhook.delivery",
            "installation",
            "installation.repositories",
            "phase",
            "triggers",
            "approvals.approvers",
            "limits.dedupe_window_hours",
            "limits.error_rate_threshold",
        ]
    );
    let mut a = Admission::for_action(&compiled("phase: 1\n"), ActionKind::AddLabels, false);
    admit(&mut a);
    assert_eq!(
        gate1(&a),
        Verdict::Pass {
            class: ActionClass::ApprovalRequired
        }
    );
    a.tasks_in_run = 5;
    assert_eq!(gate1(&a).violations(), [Rule::TooManyTasks { n: 6, max: 5 }]);
    a.breaker_open = true;
    assert_eq!(gate1(&a).violations().len(), 2);
}

#[test]
fn gate3_rechecks_with_the_current_policy() {
    let then = compiled("phase: 4\nactions: {create_pr: auto_safe}\n");
    let proposal = patch(vec![file("docs/guide.md", Change::Modified, "text\n")]);
    assert_eq!(gate2(&then, &proposal).class(), Some(ActionClass::AutoSafe));
    let check = |policy: &CompiledPolicy, approvals_valid: bool| {
        gate3(&PreApply {
            policy,
            proposal: &proposal,
            approvals_valid,
            breaker_open: false,
            patch_applies: true,
        })
    };
    assert!(check(&then, false).is_pass(), "auto-safe needs no approval");
    // The policy was tightened since: docs became forbidden, and PRs need approval.
    let now = compiled("phase: 4\npaths: {forbidden: ['docs/**']}\n");
    assert_eq!(fields(&check(&now, false)), ["paths.forbidden", "approvals.required"]);
    let now = compiled("phase: 4\n");
    assert_eq!(check(&now, false).violations(), [Rule::ApprovalsInvalid]);
    assert_eq!(
        check(&now, true),
        Verdict::Pass {
            class: ActionClass::ApprovalRequired
        }
    );
    let v = gate3(&PreApply {
        policy: &now,
        proposal: &proposal,
        approvals_valid: true,
        breaker_open: true,
        patch_applies: false,
    });
    assert_eq!(v.violations(), [Rule::BreakerOpen, Rule::PatchDoesNotApply]);
}

/// A small deterministic generator (no extra crates).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn caps_only_tighten() {
    let mut rng = Lcg(7);
    let classes = [ActionClass::AutoSafe, ActionClass::ApprovalRequired, ActionClass::Forbidden];
    for _ in 0..500 {
        let mut p = Policy {
            phase: rng.next(5) as u8,
            ..Policy::default()
        };
        p.diff.max_files = rng.next(100) as u32;
        p.diff.max_changed_lines = rng.next(1000) as u32;
        p.diff.max_file_bytes = rng.next(1 << 20);
        p.approvals.required = 1 + rng.next(3) as u32;
        p.approvals.allow_self_approval = rng.next(2) == 0;
        p.actions.create_pr = classes[rng.next(3) as usize];
        p.limits.cost_ceiling_per_run_usd = rng.next(100) as f64 / 10.0;
        let some = |rng: &mut Lcg, n: u64| (rng.next(2) == 0).then(|| rng.next(n));
        let caps = Caps {
            max_phase: rng.next(5) as u8,
            max_files: some(&mut rng, 100).map(|v| v as u32),
            max_changed_lines: some(&mut rng, 1000).map(|v| v as u32),
            max_file_bytes: some(&mut rng, 1 << 20),
            cost_ceiling_per_run_usd: some(&mut rng, 100).map(|v| v as f64 / 10.0),
            extra_forbidden_paths: vec!["secrets/**".into()],
            min_approvals: some(&mut rng, 4).map(|v| v as u32),
            forbid_self_approval: rng.next(2) == 0,
            actions: orch::policy::caps::ActionFloor {
                create_pr: classes[rng.next(3) as usize],
                ..Default::default()
            },
            ..Caps::default()
        };
        let c = p.capped(&caps);
        assert!(c.phase <= p.phase && c.phase <= caps.max_phase);
        assert!(c.diff.max_files <= p.diff.max_files && c.diff.max_changed_lines <= p.diff.max_changed_lines);
        assert!(c.diff.max_file_bytes <= p.diff.max_file_bytes);
        assert!(c.limits.cost_ceiling_per_run_usd <= p.limits.cost_ceiling_per_run_usd);
        assert!(c.approvals.required >= p.approvals.required);
        assert!(!c.approvals.allow_self_approval || p.approvals.allow_self_approval);
        assert!(c.actions.create_pr >= p.actions.create_pr);
        assert!(p.paths.forbidden.iter().all(|g| c.paths.forbidden.contains(g)));
        assert!(c.paths.forbidden.contains(&"secrets/**".to_string()));
        assert_eq!(c.capped(&caps), c, "idempotent");
        // Where a cap is looser than the repository, the repository's value stands.
        if let Some(max) = caps.max_files {
            assert_eq!(c.diff.max_files, p.diff.max_files.min(max));
        }
    }
    assert_eq!(Policy::default().capped(&Caps::default()), Policy::default(), "no caps, no change");
    // Capped policies block what the caps forbid.
    let effective = Effective::from_source_capped(
        Some("phase: 4\ndiff: {max_files: 50}\n"),
        &Caps {
            max_phase: 4,
            max_files: Some(1),
            extra_forbidden_paths: vec!["infra/**".into()],
            ..Caps::default()
        },
    );
    let v = gate2(
        &effective.compile().unwrap(),
        &patch(vec![
            file("infra/main.tf", Change::Modified, "x\n"),
            file("README.md", Change::Modified, "y\n"),
        ]),
    );
    assert_eq!(fields(&v), ["diff.max_files", "paths.forbidden"]);
}

#[test]
fn schema_problems_are_rules_too() {
    let p = compiled(PHASE4);
    let v = gate2(
        &p,
        &ProposalView::Invalid {
            action: ActionKind::CreatePr,
            problem: "unknown field `shell`".into(),
        },
    );
    assert_eq!(fields(&v), ["schema"]);
    assert!(v.lines()[0].contains("unknown field"));
    assert_eq!(fields(&gate2(&p, &patch(vec![]))), ["schema"]);
    let twice = gate2(
        &p,
        &patch(vec![file("a.md", Change::Added, "x\n"), file("a.md", Change::Modified, "y\n")]),
    );
    assert_eq!(fields(&twice), ["schema"]);
}

#[test]
fn policy_errors_name_field_and_line() {
    let e = Policy::parse("phase: 1\npaths:\n  forbidden:\n    - 'ok/**'\n    - 'bad/[z'\n").unwrap_err();
    assert!(e.message.starts_with("paths.forbidden"), "{e}");
    assert_eq!(e.line, Some(5));
    let e = Policy::parse("phase: 2\napprovals: {required: 0}\n").unwrap_err();
    assert_eq!((e.message.as_str(), e.line), ("approvals.required: must be at least 1", Some(2)));
    let e = Policy::parse("# policy\nphase: 7\n").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    let e = Policy::parse("limits:\n  error_rate_threshold: 3\n").unwrap_err();
    assert!(e.message.starts_with("limits.error_rate_threshold"), "{e}");
    assert_eq!(e.line, Some(2));
}

// ---- `orch policy check` ----

fn orch(args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_orch"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn cli_validates_the_policy_file() {
    let dir = tempfile::tempdir().unwrap();
    // No file: the defaults.
    let (code, out, _) = orch(&["policy", "check"], dir.path());
    assert_eq!(code, 0);
    assert!(out.contains("built-in defaults"), "{out}");
    // The default path in the current directory.
    std::fs::create_dir_all(dir.path().join(".github")).unwrap();
    std::fs::write(dir.path().join(".github/orch.yml"), "phase: 2\n").unwrap();
    let (code, out, _) = orch(&["policy", "check"], dir.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(".github/orch.yml: valid") && out.contains("phase 2"), "{out}");
    // Invalid: field and line, exit 2.
    std::fs::write(dir.path().join("bad.yml"), "phase: 1\napprovals:\n  required: two\n").unwrap();
    let (code, out, err) = orch(&["policy", "check", "--config", "bad.yml"], dir.path());
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("bad.yml line 3") && err.contains("approvals.required"), "{err}");
    std::fs::write(dir.path().join("re.yml"), "comments:\n  dangerous_patterns: ['(oops']\n").unwrap();
    let (code, _, err) = orch(&["policy", "check", "--config", "re.yml"], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("line 2") && err.contains("(oops"), "{err}");
    let (code, _, err) = orch(&["policy", "check", "--config", "missing.yml"], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("missing.yml"), "{err}");
}

#[test]
fn cli_prints_the_verdict_on_a_patch() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("orch.yml");
    std::fs::write(&config, "phase: 4\ndiff: {max_files: 2}\n").unwrap();
    let bad = "\
diff --git a/.github/workflows/ci.yml b/.github/workflows/ci.yml
--- a/.github/workflows/ci.yml
+++ b/.github/workflows/ci.yml
@@ -1 +1,2 @@
 on: push
+permissions: write-all
diff --git a/keys/a.txt b/keys/a.txt
new file mode 100644
--- /dev/null
+++ b/keys/a.txt
@@ -0,0 +1 @@
+-----BEGIN EC PRIVATE KEY-----
diff --git a/docs/x.md b/docs/y.md
rename from docs/x.md
rename to docs/y.md
";
    std::fs::write(dir.path().join("bad.diff"), bad).unwrap();
    let (code, out, err) = orch(&["policy", "check", "--config", "orch.yml", "--patch", "bad.diff"], dir.path());
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("blocked: 3 rules violated"), "{out}");
    assert!(out.contains("  diff.max_files: 3 files changed; at most 2"), "{out}");
    assert!(
        out.contains("  paths.forbidden: `.github/workflows/ci.yml` may not be changed"),
        "{out}"
    );
    assert!(out.contains("  secrets: `keys/a.txt` line 1: private key"), "{out}");

    let json =
        r#"{"title":"Docs","summary":"Clarify the guide.","files":[{"path":"docs/guide.md","action":"update","content":"Hello\n"}]}"#;
    std::fs::write(dir.path().join("ok.json"), json).unwrap();
    let (code, out, _) = orch(&["policy", "check", "--config", "orch.yml", "--patch", "ok.json"], dir.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("pass: create_pr is approval_required"), "{out}");

    std::fs::write(dir.path().join("junk.diff"), "--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n a\n").unwrap();
    let (code, _, err) = orch(&["policy", "check", "--config", "orch.yml", "--patch", "junk.diff"], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("junk.diff: line 4"), "{err}");
}

/// `edit` answers (SPEC §9) apply to the files of the checkout (or `--base`): a one-line edit
/// of a 900-line file is two changed lines, within `diff.max_changed_lines: 500`; an `old` that
/// does not match, or a file that does not exist, is blocked with its name.
#[test]
fn cli_judges_edit_answers_against_the_checkout() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("orch.yml"),
        "phase: 4
",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    let long: String = (1..=900).map(|i| format!("const L{i}: u32 = {i};\n")).collect();
    std::fs::write(dir.path().join("src/consts.rs"), &long).unwrap();
    let edit = |old: &str, path: &str| {
        serde_json::json!({"title": "t", "summary": "s", "files": [
            {"path": path, "action": "edit", "edits": [{"old": old, "new": "const L450: u32 = 4500;"}]}
        ]})
        .to_string()
    };
    std::fs::write(dir.path().join("one.json"), edit("const L450: u32 = 450;", "src/consts.rs")).unwrap();
    let (code, out, err) = orch(&["policy", "check", "--config", "orch.yml", "--patch", "one.json"], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("one.json: 1 file(s), 2 changed line(s)"), "{out}");
    // The same file rewritten whole counts its real diff too.
    let update = serde_json::json!({"title": "t", "summary": "s", "files": [
        {"path": "src/consts.rs", "action": "update", "content": long.replace("= 450;", "= 4500;")}
    ]});
    std::fs::write(dir.path().join("whole.json"), update.to_string()).unwrap();
    let (code, out, _) = orch(&["policy", "check", "--config", "orch.yml", "--patch", "whole.json"], dir.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 changed line(s)"), "{out}");
    // From elsewhere, with --base.
    let abs = |name: &str| dir.path().join(name).display().to_string();
    let (code, out, err) = orch(
        &[
            "policy",
            "check",
            "--config",
            &abs("orch.yml"),
            "--patch",
            &abs("one.json"),
            "--base",
            &abs(""),
        ],
        std::path::Path::new("/"),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 file(s), 2 changed line(s)"), "{out}");
    let (code, out, _) = orch(
        &["policy", "check", "--config", &abs("orch.yml"), "--patch", &abs("one.json")],
        std::path::Path::new("/"),
    );
    assert_eq!(code, 1, "without --base, / has no src/consts.rs: {out}");
    for (name, answer, line) in [
        (
            "miss.json",
            edit("const L9999", "src/consts.rs"),
            "files.edits: `src/consts.rs`: edit 1: `old` (\"const L9999\") does not occur in the file",
        ),
        (
            "twice.json",
            edit("const L45", "src/consts.rs"),
            "occurs 3 times in the file; it must occur exactly once",
        ),
        (
            "nofile.json",
            edit("x", "src/nope.rs"),
            "files.edits: `src/nope.rs`: the file does not exist on the base commit",
        ),
    ] {
        std::fs::write(dir.path().join(name), answer).unwrap();
        let (code, out, err) = orch(&["policy", "check", "--config", "orch.yml", "--patch", name], dir.path());
        assert_eq!(code, 1, "{name}: {out}{err}");
        assert!(out.contains(line), "{name}: {out}");
    }
}

/// Every `limits.*` value is bounded by the server (SPEC §7, §10), each in its own direction: a
/// repository can lower its task cap, retries, ceilings and breaker threshold, and lengthen its
/// windows, never the other way round.
#[test]
fn every_limit_is_capped_by_the_server() {
    let loose = "phase: 4\nlimits: {max_tasks_per_run: 50, max_retries: 9, dedupe_window_hours: 0, cost_ceiling_per_run_usd: 100, \
                 max_cost_per_window_usd: 1000, window_minutes: 1, error_rate_threshold: 1.0}\n";
    let limits = |text: &str, caps: &Caps| Effective::from_source_capped(Some(text), caps).policy.limits;
    let summary = |l: orch::policy::Limits| {
        (
            (l.max_tasks_per_run, l.max_retries, l.dedupe_window_hours, l.window_minutes),
            (l.cost_ceiling_per_run_usd, l.max_cost_per_window_usd, l.error_rate_threshold),
        )
    };
    // Without a caps file, SPEC §10's defaults are the server's caps (no dedupe floor).
    assert_eq!(summary(limits(loose, &Caps::default())), ((5, 3, 0, 60), (0.5, 5.0, 0.5)));
    // An operator's caps.
    let caps = Caps::parse(
        "max_tasks_per_run: 2\nmax_retries: 1\nmin_dedupe_window_hours: 48\ncost_ceiling_per_run_usd: 0.1\n\
         max_cost_per_window_usd: 1\nmin_window_minutes: 120\nmax_error_rate_threshold: 0.25\n",
    )
    .unwrap();
    assert_eq!(summary(limits(loose, &caps)), ((2, 1, 48, 120), (0.1, 1.0, 0.25)));
    // A repository tighter than the caps keeps its own values.
    let tight = "limits: {max_tasks_per_run: 1, max_retries: 0, dedupe_window_hours: 72, cost_ceiling_per_run_usd: 0.01, \
                 max_cost_per_window_usd: 0.5, window_minutes: 240, error_rate_threshold: 0.1}\n";
    assert_eq!(summary(limits(tight, &caps)), ((1, 0, 72, 240), (0.01, 0.5, 0.1)));
    // Caps an operator may raise above the defaults, and bad ones refused at start.
    let raised = Caps::parse("max_tasks_per_run: 20\nmax_cost_per_window_usd: 50\n").unwrap();
    assert_eq!(summary(limits(loose, &raised)), ((20, 3, 0, 60), (0.5, 50.0, 0.5)));
    assert!(Caps::parse("max_error_rate_threshold: 2\n")
        .unwrap_err()
        .contains("max_error_rate_threshold"));
    assert!(Caps::parse("lift_builtin_forbidden: [\"docs/**\"]\n")
        .unwrap_err()
        .contains("lift_builtin_forbidden"));
}

/// `paths.forbidden` adds to the built-in forbidden paths and never replaces them; only the
/// server's caps lift a built-in (SPEC §7).
#[test]
fn forbidden_paths_add_to_the_built_ins() {
    let builtin = [
        ".github/workflows/x.yml",
        ".github/orch.yml",
        ".github/orch/instructions.md",
        "keys/server.pem",
        "app/.env.local",
    ];
    let forbids =
        |c: &CompiledPolicy, path: &str| fields(&gate2(c, &patch(vec![file(path, Change::Added, "x\n")]))).contains(&"paths.forbidden");
    for yaml in [
        "phase: 4\npaths: {forbidden: []}\n",
        "phase: 4\npaths: {forbidden: [\"docs/**\"]}\n",
        "phase: 4\n",
    ] {
        let capped = Effective::from_source_capped(Some(yaml), &Caps::default()).compile().unwrap();
        for c in [compiled(yaml), capped] {
            for path in builtin {
                assert!(forbids(&c, path), "{yaml}: {path} is not forbidden");
            }
            assert!(!forbids(&c, "README.md"), "{yaml}");
        }
    }
    assert!(
        forbids(&compiled("phase: 4\npaths: {forbidden: [\"docs/**\"]}\n"), "docs/a.md"),
        "the repository's own"
    );
    // The operator lifts one built-in; the others stay, and a repository may still forbid it.
    let caps = Caps::parse("lift_builtin_forbidden: [\".github/workflows/**\"]\n").unwrap();
    let lifted = Effective::from_source_capped(Some("phase: 4\npaths: {forbidden: []}\n"), &caps)
        .compile()
        .unwrap();
    assert!(!forbids(&lifted, ".github/workflows/x.yml"));
    assert!(forbids(&lifted, "keys/server.pem") && forbids(&lifted, ".github/orch.yml"));
    let own = Effective::from_source_capped(Some("phase: 4\npaths: {forbidden: [\".github/workflows/**\"]}\n"), &caps)
        .compile()
        .unwrap();
    assert!(forbids(&own, ".github/workflows/x.yml"));
    // A repository cannot lift anything: the field does not exist in its file.
    assert!(Policy::parse("paths: {lifted: [\"**/*.pem\"]}\n").is_err());
}

/// `llm.model` must be a model the server prices (`ORCH_LLM_MODELS`); Gate 1's reply names the
/// model and the allowed ones.
#[test]
fn a_repository_may_only_choose_a_priced_model() {
    let caps = Caps::default();
    let policy = |yaml: &str| Policy::parse(yaml).unwrap();
    assert_eq!(caps.refuse_model(&policy("llm: {model: claude-sonnet-4-5}\n")), None);
    assert_eq!(caps.refuse_model(&policy("llm: {model: claude-sonnet-4-5-20250929}\n")), None);
    assert_eq!(caps.refuse_model(&policy("")), None, "no model: the server's own");
    let text = caps.refuse_model(&policy("llm: {model: not-priced}\n")).unwrap();
    assert!(
        text.contains("`not-priced`") && text.contains("`claude-sonnet-4-5`") && text.contains("llm.model"),
        "{text}"
    );
    assert!(
        caps.refuse_model(&policy("llm: {model: fake}\n")).is_some(),
        "the offline model is not a repository's choice"
    );
    let only = Caps {
        llm_models: vec!["gpt-4o-mini".into()],
        ..Caps::default()
    };
    assert!(only.refuse_model(&policy("llm: {model: claude-sonnet-4-5}\n")).is_some());
    assert_eq!(only.refuse_model(&policy("llm: {model: gpt-4o-mini}\n")), None);
}

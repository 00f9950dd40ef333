//! `orch policy check [--config FILE] [--patch FILE [--base DIR]]`: validates a policy file and,
//! with a patch (unified diff or SPEC §9's patch JSON), prints Gate 2's verdict on it. The patch
//! JSON's `edit`s apply to, and its `update`s are counted against, the files under `--base` (by
//! default the current directory: run it in the repository's checkout).
//!
//! Exit codes: 0 the policy is valid (and the patch passes: its class is printed); 1 the patch is
//! blocked (every violated rule on its own line, with its field); 2 the policy file or the patch
//! cannot be read or is invalid (the field and line are printed).
//!
//! The patch is judged at the policy's own phase: below phase 4 a patch is always blocked by
//! `phase`, listed with whatever else it breaks.

use super::diff::parse_patch;
use super::gates::gate2;
use super::{Effective, Policy, POLICY_PATH};
use std::io::Write;
use std::path::Path;

pub const EXIT_PASS: u8 = 0;
pub const EXIT_BLOCKED: u8 = 1;
pub const EXIT_INVALID: u8 = 2;

/// Runs the check, writing the report to `out` and problems to `err`; returns the exit code.
pub fn check(config: Option<&Path>, patch: Option<&Path>, base: Option<&Path>, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    match run(config, patch, base.unwrap_or(Path::new(".")), out) {
        Ok(code) => code,
        Err(message) => {
            let _ = writeln!(err, "orch policy check: {message}");
            EXIT_INVALID
        }
    }
}

fn run(config: Option<&Path>, patch: Option<&Path>, base: &Path, out: &mut dyn Write) -> Result<u8, String> {
    let path = config.unwrap_or(Path::new(POLICY_PATH));
    let shown = path.display();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if config.is_none() && e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read {shown}: {e}")),
    };
    if let Some(text) = &text {
        if let Err(e) = Policy::parse(text) {
            let at = e.line.map(|l| format!(" line {l}")).unwrap_or_default();
            return Err(format!(
                "{shown}{at}: {}\n(orch keeps the last valid policy, or the built-in defaults, while the file is invalid)",
                e.message
            ));
        }
    }
    let effective = Effective::from_source(text.as_deref(), 4);
    let compiled = effective.compile().map_err(|e| format!("{shown}: {}", e.message))?;
    let _ = match &text {
        Some(_) => writeln!(out, "{shown}: valid (version {}, phase {})", effective.version, effective.phase),
        None => writeln!(out, "no {shown}: the built-in defaults apply (phase {})", effective.phase),
    };
    let Some(patch) = patch else {
        return Ok(EXIT_PASS);
    };
    let shown_patch = patch.display();
    let patch_text = std::fs::read_to_string(patch).map_err(|e| format!("cannot read {shown_patch}: {e}"))?;
    // Only plain relative paths are read; any other is judged by Gate 2's path rules.
    let read_base = |path: &str| {
        super::gates::path_problem(path)
            .is_none()
            .then(|| std::fs::read_to_string(base.join(path)).ok())
            .flatten()
    };
    let parsed = parse_patch(&patch_text, &read_base).map_err(|e| format!("{shown_patch}: {e}"))?;
    let problems = parsed.problems.clone();
    let (files, lines) = (
        parsed.files.len(),
        parsed
            .files
            .iter()
            .map(|f| u64::from(f.added_lines) + u64::from(f.removed_lines))
            .sum::<u64>(),
    );
    let verdict = match (gate2(&compiled, &parsed.into_view()), problems.is_empty()) {
        (verdict, true) => verdict,
        (super::Verdict::Blocked { mut violations }, false) => {
            violations.extend(problems);
            super::Verdict::Blocked { violations }
        }
        (super::Verdict::Pass { .. }, false) => super::Verdict::Blocked { violations: problems },
    };
    let _ = writeln!(out, "{shown_patch}: {files} file(s), {lines} changed line(s)");
    match verdict.class() {
        Some(class) => {
            let _ = writeln!(out, "pass: create_pr is {class}");
            Ok(EXIT_PASS)
        }
        None => {
            let n = verdict.violations().len();
            let _ = writeln!(out, "blocked: {n} rule{} violated", if n == 1 { "" } else { "s" });
            for line in verdict.lines() {
                let _ = writeln!(out, "  {line}");
            }
            Ok(EXIT_BLOCKED)
        }
    }
}

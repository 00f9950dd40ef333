//! One command: the `/orch` prefix, the verb and its arguments.
//!
//! The grammar is deliberately strict. A command that changes a workflow should do exactly what was
//! typed or nothing at all, so a misspelled verb, a missing argument or a stray word is an error
//! with a reply, never a guess: `/orch approve looks good` is refused rather than read as a bare
//! approval, and `/orch aprove` only earns a suggestion.

use super::{Command, ParseError, WorkflowRef};

/// A verb orch knows: its name, its arguments as shown in the help, what it does, and whether it
/// needs write access (or the approver list).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Verb {
    pub name: &'static str,
    pub args: &'static str,
    pub summary: &'static str,
    pub needs_write: bool,
}

/// Every verb, in the order the help lists them.
pub(crate) const VERBS: &[Verb] = &[
    Verb {
        name: "approve",
        args: "[workflow-id]",
        summary: "Approve the proposal waiting for approval here (or workflow `workflow-id`).",
        needs_write: true,
    },
    Verb {
        name: "reject",
        args: "[reason]",
        summary: "Reject the proposal; the workflow ends as failed.",
        needs_write: true,
    },
    Verb {
        name: "request-changes",
        args: "<feedback>",
        summary: "Send the proposal back with feedback; `retry` then generates again using it.",
        needs_write: true,
    },
    Verb {
        name: "retry",
        args: "",
        summary: "Generate again after requested changes, or start a new attempt after a failure.",
        needs_write: true,
    },
    Verb {
        name: "cancel",
        args: "",
        summary: "End the running workflow (it fails with reason `cancelled`).",
        needs_write: true,
    },
    Verb {
        name: "status",
        args: "",
        summary: "Show the state of orch's workflows on this issue or pull request.",
        needs_write: false,
    },
    Verb {
        name: "help",
        args: "",
        summary: "Show this help.",
        needs_write: false,
    },
    Verb {
        name: "triage",
        args: "",
        summary: "Propose labels, a priority and a rationale for this issue.",
        needs_write: true,
    },
    Verb {
        name: "plan",
        args: "",
        summary: "Write a QA test plan for this pull request.",
        needs_write: true,
    },
    Verb {
        name: "propose",
        args: "<instruction>",
        summary: "Ask for a patch following the instruction; it becomes a pull request once approved.",
        needs_write: true,
    },
];

pub(crate) const PREFIX: &str = "/orch";

/// Looks a verb up by its canonical name. Panics on an unknown name, which would be a bug here.
pub(crate) fn verb(name: &str) -> &'static Verb {
    VERBS
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("`{name}` is not in VERBS"))
}

/// If the visible line `text` is a command line, everything after the `/orch` prefix.
///
/// A command line has at most 3 columns of indentation, then `/orch` in any case, then whitespace
/// or the end of the line (so `/orchestra` and `/orch:` are prose).
pub(crate) fn command_args(text: &str) -> Option<&str> {
    let (indent, rest) = super::markdown::indentation(text);
    if indent >= 4 {
        return None;
    }
    let prefix = rest.get(..PREFIX.len())?;
    if !prefix.eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let after = &rest[PREFIX.len()..];
    match after.chars().next() {
        None => Some(after),
        Some(c) if c.is_whitespace() => Some(after),
        Some(_) => None,
    }
}

/// Parses the text after `/orch` on the command line. `continuation` holds the following lines
/// of prose (trimmed, non-empty), which only free-text arguments take.
pub(crate) fn parse(args: &str, continuation: &[&str]) -> Result<Command, ParseError> {
    let args = args.trim();
    let (typed, rest) = match args.split_once(char::is_whitespace) {
        Some((typed, rest)) => (typed, rest.trim_start()),
        None => (args, ""),
    };
    if typed.is_empty() {
        return Err(ParseError::MissingVerb);
    }
    let Some(verb) = VERBS.iter().find(|v| v.name.eq_ignore_ascii_case(typed)) else {
        return Err(ParseError::UnknownVerb {
            verb: typed.to_string(),
            suggestion: suggest(typed),
        });
    };
    let free_text = || join(rest, continuation);
    let none = |command: Command| {
        if rest.is_empty() {
            Ok(command)
        } else {
            Err(ParseError::UnexpectedArgument {
                verb: verb.name,
                argument: rest.to_string(),
            })
        }
    };
    let required = |expected: &'static str| {
        let text = free_text();
        if text.is_empty() {
            Err(ParseError::MissingArgument { verb: verb.name, expected })
        } else {
            Ok(text)
        }
    };
    match verb.name {
        "approve" => approve(rest),
        "reject" => {
            let reason = free_text();
            Ok(Command::Reject {
                reason: (!reason.is_empty()).then_some(reason),
            })
        }
        "request-changes" => required("feedback").map(|feedback| Command::RequestChanges { feedback }),
        "propose" => required("instruction").map(|instruction| Command::Propose { instruction }),
        "retry" => none(Command::Retry),
        "cancel" => none(Command::Cancel),
        "status" => none(Command::Status),
        "help" => none(Command::Help),
        "triage" => none(Command::Triage),
        "plan" => none(Command::Plan),
        other => unreachable!("verb `{other}` is in VERBS but not parsed"),
    }
}

/// `approve` takes nothing or one positive decimal workflow id (`#42` is not accepted: on GitHub
/// it means issue 42).
fn approve(rest: &str) -> Result<Command, ParseError> {
    if rest.is_empty() {
        return Ok(Command::Approve { workflow: None });
    }
    let (id, extra) = match rest.split_once(char::is_whitespace) {
        Some((id, extra)) => (id, extra.trim()),
        None => (rest, ""),
    };
    if !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::BadWorkflowId { given: rest.to_string() });
    }
    let workflow = match id.parse::<i64>() {
        Ok(n) if n > 0 => WorkflowRef(n),
        _ => return Err(ParseError::BadWorkflowId { given: id.to_string() }),
    };
    if !extra.is_empty() {
        return Err(ParseError::UnexpectedArgument {
            verb: "approve",
            argument: extra.to_string(),
        });
    }
    Ok(Command::Approve { workflow: Some(workflow) })
}

/// The free-text argument: the rest of the command line, then each continuation line.
fn join(first: &str, continuation: &[&str]) -> String {
    let first = first.trim();
    std::iter::once(first)
        .filter(|s| !s.is_empty())
        .chain(continuation.iter().map(|s| s.trim()).filter(|s| !s.is_empty()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The known verb `typed` most likely meant, if one is close enough to suggest.
///
/// In order: an abbreviation (`appr`, `req-changes`, `request` from `request changes`: each
/// `-`-separated part a prefix of the verb's part, at least 3 characters in all); a known verb
/// followed by more letters (`approved`, `cancelled`); otherwise the nearest verb by edit distance
/// (adjacent transpositions count as one edit), at most 1 for words of up to 4 characters and at
/// most 2 for longer ones. Ties go to the verb listed first. `lgtm`, `deploy` and the like get
/// nothing: a suggestion should be a plausible typo, not a guess at intent.
pub(crate) fn suggest(typed: &str) -> Option<&'static str> {
    let typed = typed.to_lowercase();
    let chars: Vec<char> = typed.chars().collect();
    if chars.len() >= 3 {
        if let Some(v) = VERBS.iter().find(|v| abbreviates(&typed, v.name)) {
            return Some(v.name);
        }
    }
    if let Some(v) = VERBS.iter().find(|v| typed.starts_with(v.name)) {
        return Some(v.name);
    }
    let limit = if chars.len() <= 4 { 1 } else { 2 };
    VERBS
        .iter()
        .filter_map(|v| {
            let target: Vec<char> = v.name.chars().collect();
            let d = distance(&chars, &target, limit)?;
            Some((d, v.name))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, name)| name)
}

/// Whether every `-`-separated part of `typed` is a non-empty prefix of the same part of `verb`.
fn abbreviates(typed: &str, verb: &str) -> bool {
    let typed: Vec<&str> = typed.split('-').collect();
    let full: Vec<&str> = verb.split('-').collect();
    // `request` alone (from `/orch request changes`) abbreviates `request-changes` too.
    typed.len() <= full.len() && typed.iter().zip(&full).all(|(t, f)| !t.is_empty() && f.starts_with(t))
}

/// Edit distance between `a` and `b` (insertions, deletions, substitutions and transpositions of
/// adjacent characters, each costing 1: the "optimal string alignment" distance), or `None` when
/// it is more than `limit`.
pub(crate) fn distance(a: &[char], b: &[char], limit: usize) -> Option<usize> {
    if a.len().abs_diff(b.len()) > limit {
        return None;
    }
    // Three rows of the dynamic programme: two back (for transpositions), previous, current.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        current[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (previous[j] + 1).min(current[j - 1] + 1).min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(before[j - 2] + 1);
            }
            current[j] = best;
        }
        std::mem::swap(&mut before, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    let d = previous[b.len()];
    (d <= limit).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dist(a: &str, b: &str) -> Option<usize> {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        distance(&a, &b, usize::MAX)
    }

    #[test]
    fn distance_counts_edits_and_transpositions() {
        assert_eq!(dist("", ""), Some(0));
        assert_eq!(dist("abc", ""), Some(3));
        assert_eq!(dist("", "abc"), Some(3));
        assert_eq!(dist("kitten", "sitting"), Some(3));
        assert_eq!(dist("stauts", "status"), Some(1));
        assert_eq!(dist("ab", "ba"), Some(1));
        assert_eq!(dist("approve", "approve"), Some(0));
        assert_eq!(dist("é", "e"), Some(1));
    }

    #[test]
    fn distance_gives_up_past_the_limit() {
        let a: Vec<char> = "deploy".chars().collect();
        let b: Vec<char> = "retry".chars().collect();
        assert_eq!(distance(&a, &b, 2), None);
        let short: Vec<char> = "ab".chars().collect();
        assert_eq!(distance(&short, &b, 2), None);
    }

    #[test]
    fn command_args_needs_the_prefix_then_whitespace() {
        assert_eq!(command_args("/orch approve"), Some(" approve"));
        assert_eq!(command_args("/orch"), Some(""));
        assert_eq!(command_args("/ORCH\tstatus"), Some("\tstatus"));
        assert_eq!(command_args("   /orch x"), Some(" x"));
        assert_eq!(command_args("    /orch x"), None);
        assert_eq!(command_args("/orchestra"), None);
        assert_eq!(command_args("/orch:approve"), None);
        assert_eq!(command_args("/orc"), None);
        assert_eq!(command_args("/orc\u{e9}x"), None);
        assert_eq!(command_args("say /orch x"), None);
    }

    #[test]
    fn every_verb_is_parsed() {
        for v in VERBS {
            let args = match v.args {
                "<feedback>" | "<instruction>" => format!("{} something", v.name),
                _ => v.name.to_string(),
            };
            let command = parse(&args, &[]).unwrap_or_else(|e| panic!("{}: {e}", v.name));
            assert_eq!(command.verb(), v.name);
            assert_eq!(command.needs_write(), v.needs_write);
        }
    }

    #[test]
    fn suggestions() {
        let cases = [
            ("aprove", Some("approve")),
            ("approv", Some("approve")),
            ("APROVE", Some("approve")),
            ("approved", Some("approve")),
            ("appr", Some("approve")),
            ("reqest-changes", Some("request-changes")),
            ("req-changes", Some("request-changes")),
            ("request_changes", Some("request-changes")),
            ("requestchanges", Some("request-changes")),
            ("request", Some("request-changes")),
            ("stauts", Some("status")),
            ("statsu", Some("status")),
            ("hepl", Some("help")),
            ("cancelled", Some("cancel")),
            ("retyr", Some("retry")),
            ("propse", Some("propose")),
            ("tirage", Some("triage")),
            ("deploy", None),
            ("lgtm", None),
            ("halt", None),
            ("re", None),
            ("x", None),
            ("", None),
            ("merge", None),
        ];
        for (typed, expected) in cases {
            assert_eq!(suggest(typed), expected, "suggestion for {typed:?}");
        }
    }
}

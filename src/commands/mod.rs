//! The `/orch` command grammar (spec §5): which lines of an issue or pull-request comment are
//! commands, and what they say. Pure: no I/O, no async, no knowledge of who wrote the comment
//! (refusing bots and orch itself, and checking permissions, happen where commands are run).
//!
//! - `markdown` decides which lines a reader sees as the commenter's own prose. Only those can
//!   hold commands: code, quotations and HTML comments show or hide text that must not act.
//! - `grammar` reads one command line: `/orch`, a verb, its arguments. It is strict, because a
//!   command that changes a workflow should do exactly what was typed or nothing.
//! - `help` renders the help text from the parser's own verb table.
//!
//! [`parse_comment`] returns every command line, in order, each with its result: one bad command
//! does not hide the others, and each error carries the reply the commenter should get.

mod grammar;
mod help;
mod markdown;
#[cfg(test)]
mod tests;

use std::fmt;

pub use help::help_text;
use markdown::LineKind;

/// A workflow named by its id in a command (`/orch approve 42`). Always positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkflowRef(pub i64);

impl fmt::Display for WorkflowRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A well-formed command. Free-text arguments are never empty; they may span several lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Approve the pending proposal, or the one of the given workflow.
    Approve {
        workflow: Option<WorkflowRef>,
    },
    /// Reject the pending proposal.
    Reject {
        reason: Option<String>,
    },
    /// Send the proposal back with feedback for the next attempt.
    RequestChanges {
        feedback: String,
    },
    Retry,
    Cancel,
    Status,
    Help,
    Triage,
    Plan,
    /// Ask for a patch.
    Propose {
        instruction: String,
    },
}

impl Command {
    /// The canonical verb, as typed after `/orch` (`request-changes`, not `RequestChanges`).
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Approve { .. } => "approve",
            Command::Reject { .. } => "reject",
            Command::RequestChanges { .. } => "request-changes",
            Command::Retry => "retry",
            Command::Cancel => "cancel",
            Command::Status => "status",
            Command::Help => "help",
            Command::Triage => "triage",
            Command::Plan => "plan",
            Command::Propose { .. } => "propose",
        }
    }

    /// Whether the commenter needs write, maintain or admin permission (or to be a configured
    /// approver). Only `status` and `help`, which change nothing, are open to anyone.
    pub fn needs_write(&self) -> bool {
        grammar::verb(self.verb()).needs_write
    }
}

/// The canonical command line, which parses back to the same command: `/orch approve 42`,
/// `/orch propose <instruction>` (a multi-line text keeps its line breaks).
impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", grammar::PREFIX, self.verb())?;
        match self {
            Command::Approve { workflow: Some(id) } => write!(f, " {id}"),
            Command::Reject { reason: Some(text) }
            | Command::RequestChanges { feedback: text }
            | Command::Propose { instruction: text } => write!(f, " {text}"),
            _ => Ok(()),
        }
    }
}

/// Why a command line is not a command. [`ParseError::reply`] is what the commenter is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("no verb after /orch")]
    MissingVerb,
    #[error("unknown verb `{verb}`")]
    UnknownVerb { verb: String, suggestion: Option<&'static str> },
    #[error("`{verb}` is missing the {expected}")]
    MissingArgument { verb: &'static str, expected: &'static str },
    #[error("`{verb}` does not take `{argument}`")]
    UnexpectedArgument { verb: &'static str, argument: String },
    #[error("`{given}` is not a workflow id (a positive number)")]
    BadWorkflowId { given: String },
}

impl ParseError {
    /// The Markdown reply: one line naming the problem with what was typed in backticks, a
    /// suggestion when there is one, then the help text.
    pub fn reply(&self) -> String {
        let problem = match self {
            ParseError::MissingVerb => format!("`{}` needs a command after it, like `{} status`.", grammar::PREFIX, grammar::PREFIX),
            ParseError::UnknownVerb { verb, .. } => {
                format!("{} is not an orch command.", code(&format!("{} {verb}", grammar::PREFIX)))
            }
            ParseError::MissingArgument { verb, expected } => format!(
                "`{} {verb}` is missing the {expected}: it is written `{}`.",
                grammar::PREFIX,
                help::usage(grammar::verb(verb))
            ),
            ParseError::UnexpectedArgument { verb, argument } => format!(
                "`{} {verb}` does not take {}: it is written `{}`.",
                grammar::PREFIX,
                code(argument),
                help::usage(grammar::verb(verb))
            ),
            ParseError::BadWorkflowId { given } => format!(
                "{} is not a workflow id: `{} approve` takes nothing or a workflow number, like `{} approve 42`.",
                code(given),
                grammar::PREFIX,
                grammar::PREFIX
            ),
        };
        let mut reply = problem;
        if let ParseError::UnknownVerb {
            suggestion: Some(suggestion),
            ..
        } = self
        {
            reply.push_str(&format!("\n\nDid you mean `{} {suggestion}`?", grammar::PREFIX));
        }
        reply.push_str("\n\n");
        reply.push_str(&help_text());
        reply
    }
}

/// Longest user text quoted back in a reply, in characters.
const QUOTE_LIMIT: usize = 80;

/// `text` as an inline code span that shows it verbatim, whatever backticks it holds (the
/// delimiter is longer than any run inside), shortened to [`QUOTE_LIMIT`] characters. A code span
/// also keeps `@mentions` and Markdown in user text inert.
fn code(text: &str) -> String {
    let text: String = match text.char_indices().nth(QUOTE_LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    };
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    // CommonMark strips one space from each end, so padding keeps edge backticks apart from the
    // delimiter without changing what is shown.
    if text.starts_with('`') || text.ends_with('`') || text.is_empty() {
        format!("{fence} {text} {fence}")
    } else {
        format!("{fence}{text}{fence}")
    }
}

/// One command line found in a comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// 1-based line number in the original body.
    pub line: usize,
    /// The command line as the reader sees it (HTML comments cut out), trimmed: it starts with
    /// `/orch`. Continuation lines of a free-text argument are not included.
    pub text: String,
    pub result: Result<Command, ParseError>,
}

/// Every command line of a comment body, in order, each parsed.
///
/// A command line is a visible line (see the `markdown` module) that starts, after at most 3 spaces, with
/// `/orch` (any case) followed by whitespace or the end of the line. A free-text argument
/// (`reject`, `request-changes`, `propose`) is the rest of the line plus the visible lines right
/// below it, each trimmed and joined with `\n`; it stops at a blank line, at the next command line
/// and at any code, quotation or comment.
pub fn parse_comment(body: &str) -> Vec<Parsed> {
    if !mentions_prefix(body) {
        return Vec::new();
    }
    let lines = markdown::scan(body);
    let mut found = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let LineKind::Text(text) = &line.kind else {
            continue;
        };
        let Some(args) = grammar::command_args(text) else {
            continue;
        };
        let continuation: Vec<&str> = lines[index + 1..]
            .iter()
            .map_while(|next| match &next.kind {
                LineKind::Text(t) if grammar::command_args(t).is_none() => Some(t.trim()),
                _ => None,
            })
            .collect();
        found.push(Parsed {
            line: line.number,
            text: text.trim().to_string(),
            result: grammar::parse(args, &continuation),
        });
    }
    found
}

/// Whether `body` holds at least one command line (well-formed or not), so a caller can skip
/// comments that are plain conversation without parsing them.
pub fn has_commands(body: &str) -> bool {
    mentions_prefix(body)
        && markdown::scan(body).iter().any(|line| match &line.kind {
            LineKind::Text(text) => grammar::command_args(text).is_some(),
            _ => false,
        })
}

/// A quick filter: no `/orch` anywhere (in any case) means no command.
fn mentions_prefix(body: &str) -> bool {
    body.as_bytes()
        .windows(grammar::PREFIX.len())
        .any(|w| w.eq_ignore_ascii_case(grammar::PREFIX.as_bytes()))
}

/// The most commands one comment runs (SPEC §5); the lines after them are named as ignored.
pub const MAX_PER_COMMENT: usize = 10;

/// The most ignored lines a reply names one by one; the rest are counted.
const IGNORED_NAMED: usize = 20;

/// The one reply a comment gets (SPEC §5): the answers of the commands it ran, in order, then
/// the command lines it did not run because of [`MAX_PER_COMMENT`]. Empty when there is nothing
/// to say. A single answer is the reply as it is; its length stays bounded whatever the comment
/// holds, since at most [`MAX_PER_COMMENT`] answers and [`IGNORED_NAMED`] lines are shown.
pub fn combined_reply(answers: &[String], ignored: &[Parsed]) -> String {
    let mut parts: Vec<String> = answers.iter().filter(|a| !a.is_empty()).cloned().collect();
    if let Some(first) = ignored.first() {
        let mut note = format!(
            "**{} more command{} not run:** one comment runs at most {MAX_PER_COMMENT} commands, so everything from line {} on was ignored",
            ignored.len(),
            if ignored.len() == 1 { " was" } else { "s were" },
            first.line
        );
        let named: Vec<String> = ignored
            .iter()
            .take(IGNORED_NAMED)
            .map(|p| format!("line {} {}", p.line, code(&p.text)))
            .collect();
        note.push_str(&format!(": {}", named.join(", ")));
        if ignored.len() > IGNORED_NAMED {
            note.push_str(&format!(", and {} more", ignored.len() - IGNORED_NAMED));
        }
        note.push_str(". Post them in another comment to run them.");
        parts.push(note);
    }
    parts.join("\n\n---\n\n")
}

/// A command line as quoted back in a reply: verbatim in a code span, shortened.
pub fn quoted(text: &str) -> String {
    code(text)
}

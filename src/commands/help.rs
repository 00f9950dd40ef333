//! The help text, built from the same verb table the parser uses so the two cannot drift apart.

use super::grammar::{Verb, PREFIX, VERBS};

/// Who may use a verb, as the help states it (spec §5: write access or the approver list, except
/// for the read-only verbs).
fn audience(verb: &Verb) -> &'static str {
    if verb.needs_write {
        "write, maintain or admin permission, or a configured approver"
    } else {
        "anyone"
    }
}

/// How a verb is written: `/orch approve [workflow-id]`.
pub(crate) fn usage(verb: &Verb) -> String {
    if verb.args.is_empty() {
        format!("{PREFIX} {}", verb.name)
    } else {
        format!("{PREFIX} {} {}", verb.name, verb.args)
    }
}

/// Markdown for `/orch help` and for the end of every error reply: each verb with its arguments,
/// what it does and who may use it.
pub fn help_text() -> String {
    let mut text = String::from(
        "**orch commands.** Write each command at the start of its own line. Commands inside code blocks, \
         quotes and HTML comments are ignored; several commands in one comment run in order.\n\n\
         | Command | What it does | Who may use it |\n\
         | --- | --- | --- |\n",
    );
    for verb in VERBS {
        text.push_str(&format!("| `{}` | {} | {} |\n", usage(verb), verb.summary, audience(verb)));
    }
    text.push_str(
        "\nThe text of `reject`, `request-changes` and `propose` runs to the end of the line and on over the \
         lines right below it, up to a blank line.\n",
    );
    text
}

//! Which lines of a comment a reader sees as the author's own prose.
//!
//! A command only counts when it is visible, unquoted text written by the commenter. Everything a
//! rendered comment shows as code, as a quotation or not at all is dropped before commands are
//! looked for:
//!
//! - **Fenced code** (```` ``` ```` or `~~~`, three or more, any info string; closed by a fence of
//!   the same character at least as long; an unclosed fence runs to the end of the comment). People
//!   paste commands into code blocks to show how to use them, not to run them.
//! - **Indented code**: a line whose indentation reaches column 4 (four spaces, a tab, or a mix)
//!   never counts. This is simpler than Markdown, where such a line may continue a paragraph or a
//!   list item, and errs on the side of running nothing.
//! - **Block quotes** (`>`, nested `> >`). Replying with a quotation of someone's `/orch approve`
//!   must never approve again, under the replier's name. A line without `>` right after a quoted
//!   line of prose is, in Markdown, a *lazy continuation* of that quotation and GitHub renders it
//!   inside the quote, so it is dropped too; a blank line ends the quotation.
//! - **HTML comments** `<!-- … -->`, on one line or across lines. Hidden text (templates, bots'
//!   markers, or someone hiding a command from the reviewers) must not act. Text outside the comment
//!   on the same line is visible and is kept, with the comment cut out: `<!-- x --> /orch status`
//!   leaves ` /orch status`, which counts, while `say <!-- x --> /orch status` does not (the command
//!   is not at the start of the line). A `<!--` inside an inline code span is literal text.
//!
//! Lines are split on `\n` with a trailing `\r` removed, so CRLF bodies behave like LF ones.

use std::borrow::Cow;

/// What one line of the body is, once hidden, quoted and code text is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LineKind<'a> {
    /// Empty or whitespace only: ends a paragraph (and a multi-line command argument).
    Blank,
    /// Code, quotation or comment: never a command, and ends a multi-line command argument.
    Hidden,
    /// Visible prose; HTML comments already cut out, so it may differ from the original line.
    Text(Cow<'a, str>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line<'a> {
    /// 1-based line number in the original body.
    pub number: usize,
    pub kind: LineKind<'a>,
}

/// A code fence: its character and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fence {
    ch: char,
    len: usize,
}

/// Classifies every line of `body`, in order (one entry per `\n`-separated line).
pub(crate) fn scan(body: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut fence: Option<Fence> = None;
    // A fence opened inside a block quote: while it is open the quote holds code, not a paragraph.
    let mut quote_fence: Option<Fence> = None;
    let mut in_comment = false;
    // The previous line was quoted prose, so an unquoted line now continues the quotation.
    let mut lazy_quote = false;

    for (index, raw) in body.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let number = index + 1;
        let kind = classify(line, &mut fence, &mut quote_fence, &mut in_comment, &mut lazy_quote);
        out.push(Line { number, kind });
    }
    out
}

fn classify<'a>(
    line: &'a str,
    fence: &mut Option<Fence>,
    quote_fence: &mut Option<Fence>,
    in_comment: &mut bool,
    lazy_quote: &mut bool,
) -> LineKind<'a> {
    if let Some(open) = *fence {
        if closes(open, line) {
            *fence = None;
        }
        return LineKind::Hidden;
    }

    if *in_comment {
        // The line starts inside a multi-line comment: only what follows its end can be visible.
        let Some(end) = line.find("-->") else {
            return LineKind::Hidden;
        };
        *in_comment = false;
        let (visible, _) = strip_comments(&line[end + 3..], in_comment);
        if *lazy_quote || visible.trim().is_empty() {
            return LineKind::Hidden;
        }
        return LineKind::Text(visible);
    }

    if line.trim().is_empty() {
        *lazy_quote = false;
        *quote_fence = None;
        return LineKind::Blank;
    }

    let (indent, rest) = indentation(line);
    if indent >= 4 {
        return LineKind::Hidden;
    }

    if let Some(content) = quoted_content(rest) {
        let content = content.trim();
        if let Some(open) = *quote_fence {
            if closes(open, content) {
                *quote_fence = None;
            }
            *lazy_quote = false;
        } else if let Some(open) = opens(content) {
            *quote_fence = Some(open);
            *lazy_quote = false;
        } else {
            *lazy_quote = !content.is_empty() && !content.starts_with('#') && !content.starts_with("<!--");
        }
        return LineKind::Hidden;
    }
    // Any unquoted line ends a fence that was opened inside the quotation.
    *quote_fence = None;

    if let Some(open) = opens(rest) {
        *fence = Some(open);
        *lazy_quote = false;
        return LineKind::Hidden;
    }

    // An HTML comment at the start of a line is an HTML block, which interrupts a quoted paragraph.
    if rest.starts_with("<!--") {
        *lazy_quote = false;
    }
    let (visible, cut) = strip_comments(line, in_comment);
    if *lazy_quote {
        return LineKind::Hidden;
    }
    if visible.trim().is_empty() {
        // Nothing but a comment: hidden text, not a paragraph break the reader sees.
        return if cut { LineKind::Hidden } else { LineKind::Blank };
    }
    LineKind::Text(visible)
}

/// The indentation of `line` in columns (a tab advances to the next multiple of 4) and the rest.
pub(crate) fn indentation(line: &str) -> (usize, &str) {
    let mut columns = 0;
    for (i, c) in line.char_indices() {
        match c {
            ' ' => columns += 1,
            '\t' => columns += 4 - columns % 4,
            _ => return (columns, &line[i..]),
        }
    }
    (columns, "")
}

/// For a block-quote line (`rest` already without indentation), the content after every `>`.
fn quoted_content(rest: &str) -> Option<&str> {
    let mut content = rest.strip_prefix('>')?;
    loop {
        let trimmed = content.trim_start_matches([' ', '\t']);
        match trimmed.strip_prefix('>') {
            Some(inner) => content = inner,
            None => return Some(trimmed),
        }
    }
}

/// The fence that `rest` (without indentation) opens, if it is an opening fence line.
fn opens(rest: &str) -> Option<Fence> {
    let ch = rest.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let len = rest.chars().take_while(|c| *c == ch).count();
    if len < 3 {
        return None;
    }
    // A backtick in the info string makes the line an inline code span, not a fence.
    if ch == '`' && rest[len..].contains('`') {
        return None;
    }
    Some(Fence { ch, len })
}

/// Whether `line` closes `fence`: up to 3 columns of indentation, a run of the same character at
/// least as long, then only whitespace.
fn closes(fence: Fence, line: &str) -> bool {
    let (indent, rest) = indentation(line);
    if indent >= 4 {
        return false;
    }
    let len = rest.chars().take_while(|c| *c == fence.ch).count();
    len >= fence.len && rest[len * fence.ch.len_utf8()..].trim().is_empty()
}

/// Cuts HTML comments out of `line`, starting outside a comment. Sets `in_comment` when a comment
/// opens and does not close on this line. Returns the remaining text and whether anything was cut.
fn strip_comments<'a>(line: &'a str, in_comment: &mut bool) -> (Cow<'a, str>, bool) {
    let Some(first) = comment_start(line) else {
        return (Cow::Borrowed(line), false);
    };
    let mut visible = String::with_capacity(line.len());
    visible.push_str(&line[..first]);
    // Searching for the end from two bytes in lets `<!-->` and `<!--->` close themselves, as in
    // CommonMark.
    let mut rest = &line[first + 2..];
    loop {
        match rest.find("-->") {
            None => {
                *in_comment = true;
                break;
            }
            Some(end) => rest = &rest[end + 3..],
        }
        match comment_start(rest) {
            None => {
                visible.push_str(rest);
                break;
            }
            Some(start) => {
                visible.push_str(&rest[..start]);
                rest = &rest[start + 2..];
            }
        }
    }
    (Cow::Owned(visible), true)
}

/// Byte index of the first `<!--` in `text` that is not inside an inline code span.
fn comment_start(text: &str) -> Option<usize> {
    if !text.contains("<!--") {
        return None;
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'`' => {
                let run = backtick_run(bytes, i);
                i = matching_run(bytes, i + run, run).unwrap_or(i + run);
            }
            b'<' if bytes[i..].starts_with(b"<!--") => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn backtick_run(bytes: &[u8], from: usize) -> usize {
    bytes[from..].iter().take_while(|b| **b == b'`').count()
}

/// The index just past the next run of exactly `run` backticks at or after `from`, if any.
fn matching_run(bytes: &[u8], mut from: usize, run: usize) -> Option<usize> {
    while from < bytes.len() {
        if bytes[from] == b'`' {
            let len = backtick_run(bytes, from);
            if len == run {
                return Some(from + len);
            }
            from += len;
        } else {
            from += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kinds of `body`'s lines, with visible text as owned strings, for compact assertions.
    fn kinds(body: &str) -> Vec<Option<String>> {
        scan(body)
            .into_iter()
            .map(|l| match l.kind {
                LineKind::Text(t) => Some(t.into_owned()),
                LineKind::Blank => Some(String::new()),
                LineKind::Hidden => None,
            })
            .collect()
    }

    fn text(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn plain_lines_are_visible_and_numbered_from_one() {
        let lines = scan("a\nb\r\n\nc");
        let numbers: Vec<usize> = lines.iter().map(|l| l.number).collect();
        assert_eq!(numbers, vec![1, 2, 3, 4]);
        assert_eq!(kinds("a\nb\r\n\nc"), vec![text("a"), text("b"), text(""), text("c")]);
    }

    #[test]
    fn fences_hide_their_content_and_need_a_long_enough_closer() {
        let body = "````rust\n```\nin\n````\nout";
        assert_eq!(kinds(body), vec![None, None, None, None, text("out")]);
        let tilde = "~~~\nin\n```\nstill in\n~~~~  \nout";
        assert_eq!(kinds(tilde), vec![None, None, None, None, None, text("out")]);
    }

    #[test]
    fn a_closing_fence_with_text_after_it_does_not_close() {
        assert_eq!(kinds("```\n``` x\nin\n```\nout"), vec![None, None, None, None, text("out")]);
    }

    #[test]
    fn backticks_in_the_info_string_make_it_inline_code() {
        assert_eq!(kinds("``` a`b\nout"), vec![text("``` a`b"), text("out")]);
    }

    #[test]
    fn tab_and_mixed_indentation_count_columns() {
        assert_eq!(indentation("\tx"), (4, "x"));
        assert_eq!(indentation("  \tx"), (4, "x"));
        assert_eq!(indentation("   x"), (3, "x"));
        assert_eq!(indentation("    "), (4, ""));
    }

    #[test]
    fn quotes_hide_themselves_and_their_lazy_continuation() {
        let body = "> said\nlazy\n\nmine";
        assert_eq!(kinds(body), vec![None, None, text(""), text("mine")]);
        // An empty quote line closes the quoted paragraph, so the next line is not lazy.
        assert_eq!(kinds("> said\n>\nmine"), vec![None, None, text("mine")]);
        // A fence inside the quote: an unquoted line closes the quote and the fence.
        assert_eq!(kinds("> ```\n> code\nmine"), vec![None, None, text("mine")]);
    }

    #[test]
    fn comments_are_cut_out_of_the_line() {
        assert_eq!(kinds("a <!-- b --> c"), vec![text("a  c")]);
        assert_eq!(kinds("<!-- b -->"), vec![None]);
        assert_eq!(kinds("a<!---->b<!-->c"), vec![text("abc")]);
        assert_eq!(kinds("a <!-- b\nc\nd --> e\nf"), vec![text("a "), None, text(" e"), text("f")]);
    }

    #[test]
    fn a_comment_opener_inside_a_code_span_is_literal() {
        assert_eq!(kinds("use `<!--` here\nnext"), vec![text("use `<!--` here"), text("next")]);
        // An unmatched backtick run is literal, so the comment after it is real.
        assert_eq!(kinds("a ` b <!-- c -->"), vec![text("a ` b ")]);
    }

    #[test]
    fn comments_and_fences_inside_code_do_not_open() {
        assert_eq!(kinds("```\n<!--\n```\nout"), vec![None, None, None, text("out")]);
        assert_eq!(kinds("    <!--\nout"), vec![None, text("out")]);
        assert_eq!(kinds("    ```\nout"), vec![None, text("out")]);
    }
}

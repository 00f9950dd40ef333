//! What a patch proposal shows on GitHub (SPEC §6, "what you see is what you approve"): the
//! unified diff of every file against the base, in the `orch/patch` check run's text (cut only
//! at GitHub's 65,535 characters, naming what is cut and where all of it is) and in the proposal
//! comment up to [`COMMENT_CHANGED_LINES`] changed lines.
//!
//! The diff is the model's output and so untrusted: it is fenced with more backticks than any
//! run in it, so no line can close the block, and `<!--` is shown as `‹!--`, so no line can
//! imitate orch's hidden markers.

use std::time::{Duration, Instant};

use similar::{Algorithm, DiffOp, DiffTag};

use crate::github::actions::CHECK_RUN_TEXT_LIMIT;

/// How many changed lines the proposal comment shows before pointing at the check run.
pub const COMMENT_CHANGED_LINES: usize = 200;
/// The most characters of diff the proposal comment holds (GitHub's limit is 65,536 for the
/// whole comment, which says more than the diff).
const COMMENT_DIFF_CHARS: usize = 55_000;
/// Lines of context around each change.
const CONTEXT: usize = 3;
/// How long the search for the smallest diff of one file may take; past it, what is left of the
/// file is shown as a whole replacement (still an exact diff, only a longer one). Ordinary
/// patches take milliseconds; this only bounds pathological ones (a large file rewritten).
const DIFF_TIME: Duration = Duration::from_secs(1);

/// One hunk: its `@@ -a,b +c,d @@` header and its lines, each starting with ` `, `-` or `+`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    pub header: String,
    pub lines: Vec<String>,
}

/// The diff of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDiff {
    pub path: String,
    /// `diff --git`, `---` and `+++` lines.
    pub header: Vec<String>,
    pub hunks: Vec<Hunk>,
}

impl FileDiff {
    /// Added and removed lines: what the diff limits count (SPEC §9).
    pub fn added_removed(&self) -> (u32, u32) {
        let lines = self.hunks.iter().flat_map(|h| &h.lines);
        let (mut added, mut removed) = (0u32, 0u32);
        for l in lines {
            if l.starts_with('+') {
                added += 1;
            } else if l.starts_with('-') {
                removed += 1;
            }
        }
        (added, removed)
    }

    pub fn changed_lines(&self) -> usize {
        self.hunks
            .iter()
            .flat_map(|h| &h.lines)
            .filter(|l| l.starts_with(['+', '-']))
            .count()
    }

    fn hunk_text(&self, i: usize) -> String {
        let mut out = String::new();
        if i == 0 {
            for l in &self.header {
                out.push_str(l);
                out.push('\n');
            }
        }
        if let Some(h) = self.hunks.get(i) {
            out.push_str(&h.header);
            out.push('\n');
            for l in &h.lines {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// The file's whole diff as text.
    pub fn text(&self) -> String {
        (0..self.hunks.len().max(1)).map(|i| self.hunk_text(i)).collect()
    }
}

/// The diff of `path` from `old` to `new` (None: the file does not exist on that side).
pub fn file_diff(path: &str, old: Option<&str>, new: Option<&str>) -> FileDiff {
    let header = vec![
        format!("diff --git a/{path} b/{path}"),
        match old {
            Some(_) => format!("--- a/{path}"),
            None => "--- /dev/null".to_string(),
        },
        match new {
            Some(_) => format!("+++ b/{path}"),
            None => "+++ /dev/null".to_string(),
        },
    ];
    let a: Vec<&str> = old.map(|t| t.lines().collect()).unwrap_or_default();
    let b: Vec<&str> = new.map(|t| t.lines().collect()).unwrap_or_default();
    FileDiff {
        path: path.to_string(),
        header,
        hunks: hunks(&a, &b),
    }
}

/// The whole diff of `files`, as stored for the dashboard.
pub fn unified(files: &[FileDiff]) -> String {
    files.iter().map(FileDiff::text).collect()
}

fn hunks(a: &[&str], b: &[&str]) -> Vec<Hunk> {
    // Myers (as git's default) so that the hunks read like `git diff`; the deadline bounds the
    // time a pathological file can take, after which the rest is shown as replaced.
    let deadline = Instant::now().checked_add(DIFF_TIME);
    let ops = similar::capture_diff_slices_deadline(Algorithm::Myers, a, b, deadline);
    similar::group_diff_ops(renumbered(ops), CONTEXT)
        .into_iter()
        .filter_map(|group| {
            // Every group holds at least one change; an empty one would show nothing.
            let (first, last) = (group.first()?, group.last()?);
            let (old, new) = (
                first.old_range().start..last.old_range().end,
                first.new_range().start..last.new_range().end,
            );
            // An empty side names the line before it (unified diff convention).
            let start = |r: &std::ops::Range<usize>| if r.is_empty() { r.start } else { r.start + 1 };
            let mut lines = Vec::with_capacity(old.len().max(new.len()));
            for op in &group {
                let (tag, o, n) = op.as_tag_tuple();
                match tag {
                    DiffTag::Equal => lines.extend(a[o].iter().map(|l| format!(" {l}"))),
                    DiffTag::Delete | DiffTag::Insert | DiffTag::Replace => {
                        lines.extend(a[o].iter().map(|l| format!("-{l}")));
                        lines.extend(b[n].iter().map(|l| format!("+{l}")));
                    }
                }
            }
            Some(Hunk {
                header: format!("@@ -{},{} +{},{} @@", start(&old), old.len(), start(&new), new.len()),
                lines,
            })
        })
        .collect()
}

/// `ops` with every index recomputed from the lengths before it. similar 2.7's Myers can give a
/// deletion a wrong `new_index` and an insertion a wrong `old_index` (mitsuhiko/similar#78),
/// which would skew the hunk headers; the order and lengths of its ops are right.
fn renumbered(ops: Vec<DiffOp>) -> Vec<DiffOp> {
    let (mut old_index, mut new_index) = (0, 0);
    ops.into_iter()
        .map(|op| {
            let (old_len, new_len) = (op.old_range().len(), op.new_range().len());
            let op = match op.tag() {
                DiffTag::Equal => DiffOp::Equal {
                    old_index,
                    new_index,
                    len: old_len,
                },
                DiffTag::Delete => DiffOp::Delete {
                    old_index,
                    old_len,
                    new_index,
                },
                DiffTag::Insert => DiffOp::Insert {
                    old_index,
                    new_index,
                    new_len,
                },
                DiffTag::Replace => DiffOp::Replace {
                    old_index,
                    old_len,
                    new_index,
                    new_len,
                },
            };
            old_index += old_len;
            new_index += new_len;
            op
        })
        .collect()
}

/// `text` with `<!--` shown as `‹!--`: nothing orch posts from the model may look like one of
/// its hidden markers (`<!-- orch:action:… -->`), even inside a code block.
pub fn neutralise(text: &str) -> String {
    text.replace("<!--", "‹!--")
}

/// `text` (already neutralised) in a fenced `diff` block whose fence is longer than any run of
/// backticks in it, so that no line of it can end the block.
pub fn fenced(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat((longest + 1).max(3));
    let body = if text.ends_with('\n') || text.is_empty() {
        text.to_string()
    } else {
        format!("{text}\n")
    };
    format!("{fence}diff\n{body}{fence}\n")
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Where the whole diff can be seen: the dashboard's workflow page.
pub fn dashboard_link(public_url: Option<&str>, workflow: i64) -> String {
    match public_url {
        Some(base) => format!("[the workflow's dashboard page]({base}/ui/workflows/{workflow})"),
        None => format!("the workflow's dashboard page (`/ui/workflows/{workflow}` on orch's server)"),
    }
}

/// The `orch/patch` check run's text: the revision and the diff of every file, within GitHub's
/// 65,535 characters. When it does not fit, whole hunks are kept in order until it would not,
/// and the text names each file and hunk left out and links `dashboard`, which shows all.
pub fn check_run_text(files: &[FileDiff], revision: &str, dashboard: &str) -> String {
    let head = format!("**Revision `{revision}`**: approving approves exactly this diff.\n\n");
    let escaped_note = |t: &str| {
        if t.contains("‹!--") {
            "\n_`<!--` in the patch is shown as `‹!--`._\n"
        } else {
            ""
        }
    };
    let whole = neutralise(&unified(files));
    let full = format!("{head}{}{}", fenced(&whole), escaped_note(&whole));
    if chars(&full) <= CHECK_RUN_TEXT_LIMIT {
        return full;
    }
    // Room for the note naming what is cut (itself bounded below) and the fences.
    const NOTE_ROOM: usize = 6_000;
    let units: Vec<(usize, usize, String)> = files
        .iter()
        .enumerate()
        .flat_map(|(f, d)| (0..d.hunks.len().max(1)).map(move |h| (f, h, neutralise(&d.hunk_text(h)))))
        .collect();
    let longest_run = units
        .iter()
        .flat_map(|(_, _, t)| t.split(|c| c != '`').map(str::len))
        .max()
        .unwrap_or(0);
    let budget = CHECK_RUN_TEXT_LIMIT.saturating_sub(chars(&head) + 2 * (longest_run + 1).max(3) + 16 + NOTE_ROOM);
    let mut kept = String::new();
    let mut used = 0;
    let mut first_cut = units.len();
    for (k, (_, _, text)) in units.iter().enumerate() {
        let n = chars(text);
        if used + n > budget {
            first_cut = k;
            break;
        }
        kept.push_str(text);
        used += n;
    }
    // The cut, by file: every hunk from the first one cut on.
    let mut cut: Vec<String> = Vec::new();
    for (f, d) in files.iter().enumerate() {
        let total = d.hunks.len().max(1);
        let from = units[first_cut..].iter().find(|(uf, _, _)| *uf == f).map(|(_, h, _)| *h);
        let Some(from) = from else { continue };
        let path = d.path.replace('`', "'");
        let path: String = if chars(&path) > 120 {
            format!("{}…", path.chars().take(120).collect::<String>())
        } else {
            path
        };
        cut.push(if from == 0 {
            format!("- `{path}`: the whole file ({total} hunk{})", if total == 1 { "" } else { "s" })
        } else {
            format!(
                "- `{path}`: hunks {} to {total} of {total} (from `{}`)",
                from + 1,
                d.hunks[from].header
            )
        });
    }
    let mut note = format!(
        "\n**Cut at GitHub's {CHECK_RUN_TEXT_LIMIT} characters.** Not shown above ({} of {} changed lines are left out):\n",
        files
            .iter()
            .enumerate()
            .flat_map(|(f, d)| d.hunks.iter().enumerate().map(move |(h, hunk)| (f, h, hunk)))
            .filter(|(f, h, _)| units[first_cut..].iter().any(|(uf, uh, _)| uf == f && uh == h))
            .map(|(_, _, hunk)| hunk.lines.iter().filter(|l| l.starts_with(['+', '-'])).count())
            .sum::<usize>(),
        files.iter().map(FileDiff::changed_lines).sum::<usize>()
    );
    let listed = cut.len().min(30);
    for line in &cut[..listed] {
        note.push_str(line);
        note.push('\n');
    }
    if cut.len() > listed {
        note.push_str(&format!("- … and {} more files\n", cut.len() - listed));
    }
    note.push_str(&format!("\nThe whole diff is on {dashboard}.\n"));
    format!("{head}{}{}{note}", fenced(&kept), escaped_note(&kept))
}

/// The proposal comment's diff: the revision and the diff up to [`COMMENT_CHANGED_LINES`]
/// changed lines, then how many more there are and where to see them.
pub fn comment_section(files: &[FileDiff], revision: &str, elsewhere: &str) -> String {
    let total: usize = files.iter().map(FileDiff::changed_lines).sum();
    let mut shown = String::new();
    let (mut changed, mut used, mut cut) = (0usize, 0usize, false);
    'files: for d in files {
        for line in neutralise(&d.text()).lines() {
            let is_change = (line.starts_with('+') && !line.starts_with("+++ ")) || (line.starts_with('-') && !line.starts_with("--- "));
            if (is_change && changed == COMMENT_CHANGED_LINES) || used + chars(line) + 1 > COMMENT_DIFF_CHARS {
                cut = true;
                break 'files;
            }
            changed += usize::from(is_change);
            used += chars(line) + 1;
            shown.push_str(line);
            shown.push('\n');
        }
    }
    let mut out = format!(
        "**Revision `{revision}`** · {total} changed line{}\n\n",
        if total == 1 { "" } else { "s" }
    );
    out.push_str(&fenced(&shown));
    if cut {
        out.push_str(&format!(
            "\n… {} more changed line{} not shown here: the whole diff is in the `orch/patch` check run and on {elsewhere}.\n",
            total - changed,
            if total - changed == 1 { "" } else { "s" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_change_is_one_hunk_with_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\n";
        let d = file_diff("x.txt", Some(old), Some(new));
        assert_eq!(d.hunks.len(), 1);
        assert_eq!(d.hunks[0].header, "@@ -2,7 +2,7 @@");
        assert_eq!(d.hunks[0].lines, [" b", " c", " d", "-e", "+E", " f", " g", " h"]);
        assert_eq!(d.changed_lines(), 2);
    }

    #[test]
    fn created_and_deleted_files() {
        let c = file_diff("n.rs", None, Some("x\ny\n"));
        assert_eq!(c.header[1], "--- /dev/null");
        assert_eq!(c.hunks[0].header, "@@ -0,0 +1,2 @@");
        let d = file_diff("o.rs", Some("x\n"), None);
        assert_eq!(d.header[2], "+++ /dev/null");
        assert_eq!(d.hunks[0].header, "@@ -1,1 +0,0 @@");
    }

    #[test]
    fn far_apart_changes_are_separate_hunks() {
        let old: String = (0..30).map(|i| format!("{i}\n")).collect();
        let new = old.replace("\n3\n", "\nthree\n").replace("\n25\n", "\ntwenty-five\n");
        let d = file_diff("n.txt", Some(&old), Some(&new));
        assert_eq!(d.hunks.len(), 2, "{d:?}");
    }

    #[test]
    fn a_cut_inside_a_file_names_the_hunks_left_out() {
        let old: String = (0..4000).map(|i| format!("line {i} {}\n", "y".repeat(200))).collect();
        let new: String = old
            .lines()
            .enumerate()
            .map(|(i, l)| if i % 10 == 5 { format!("changed {i}\n") } else { format!("{l}\n") })
            .collect();
        let files = vec![
            file_diff("big.txt", Some(&old), Some(&new)),
            file_diff("small.txt", None, Some("x\n")),
        ];
        assert_eq!(files[0].hunks.len(), 400);
        let text = check_run_text(&files, "0123456789ab", "[the page](https://orch.example.com/ui/workflows/7)");
        assert!(text.chars().count() <= CHECK_RUN_TEXT_LIMIT);
        let cut = &text[text.find("**Cut at").unwrap()..];
        let kept = text.matches("\n@@ -").count();
        assert!(kept > 10, "{kept} hunks kept");
        assert!(
            cut.contains(&format!("- `big.txt`: hunks {} to 400 of 400 (from `@@ -", kept + 1))
                && cut.contains("- `small.txt`: the whole file (1 hunk)")
                && cut.contains("https://orch.example.com/ui/workflows/7"),
            "{cut}"
        );
    }

    #[test]
    fn the_comment_stops_at_two_hundred_changed_lines() {
        let new: String = (0..300).map(|i| format!("{i}\n")).collect();
        let files = vec![file_diff("n.txt", None, Some(&new))];
        let c = comment_section(&files, "0123456789ab", "elsewhere");
        assert!(c.contains("\n+199\n") && !c.contains("\n+200\n"), "{c}");
        assert!(c.contains("… 100 more changed lines not shown here"), "{c}");
    }

    /// `old` with the hunks of `d` applied, checking on the way that every header's numbers and
    /// every context and removed line agree with `old`.
    fn apply(old: &str, d: &FileDiff) -> String {
        let old: Vec<&str> = old.lines().collect();
        let (mut out, mut at) = (Vec::new(), 0usize);
        for h in &d.hunks {
            let nums: Vec<usize> = h
                .header
                .trim_start_matches("@@ -")
                .trim_end_matches(" @@")
                .split([',', ' ', '+'])
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().expect(&h.header))
                .collect();
            let [old_start, old_count, new_start, new_count] = nums[..] else {
                panic!("{}", h.header)
            };
            let from = if old_count == 0 { old_start } else { old_start - 1 };
            assert!(from >= at, "hunks out of order: {d:?}");
            out.extend_from_slice(&old[at..from]);
            at = from;
            assert_eq!(out.len(), if new_count == 0 { new_start } else { new_start - 1 }, "{}", h.header);
            let (mut olds, mut news) = (0, 0);
            for l in &h.lines {
                let (mark, text) = l.split_at(1);
                if mark != "+" {
                    assert_eq!(old[at], text, "{}", h.header);
                    at += 1;
                    olds += 1;
                }
                if mark != "-" {
                    out.push(text);
                    news += 1;
                }
            }
            assert_eq!((olds, news), (old_count, new_count), "{d:?}");
        }
        out.extend_from_slice(&old[at..]);
        out.iter().map(|l| format!("{l}\n")).collect()
    }

    #[test]
    fn applying_the_hunks_turns_the_old_lines_into_the_new() {
        // A small deterministic generator: lines from a 4-word alphabet make many matches.
        let mut seed = 0x9e37_79b9_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for round in 0..200 {
            let mut lines = |len: u32| -> String { (0..len).map(|_| ["a\n", "b\n", "c\n", "d\n"][(next() % 4) as usize]).collect() };
            let (la, lb) = (round % 13, (round * 7) % 11);
            let (a, b) = (lines(la), lines(lb));
            let d = file_diff("r.txt", Some(&a), Some(&b));
            assert_eq!(apply(&a, &d), b, "{a:?} → {b:?}: {d:?}");
            let changed = d.hunks.iter().flat_map(|h| &h.lines).filter(|l| !l.starts_with(' ')).count();
            assert_eq!(changed == 0, a == b, "{a:?} → {b:?}: {d:?}");
        }
        let made = file_diff("n.txt", None, Some("x\ny\n"));
        assert_eq!(apply("", &made), "x\ny\n");
        let gone = file_diff("o.txt", Some("x\ny\n"), None);
        assert_eq!(apply("x\ny\n", &gone), "");
    }

    #[test]
    fn a_large_file_rewritten_is_diffed_in_bounded_time() {
        // Every line changed but with much in common between them: the smallest diff is costly
        // to search for, so it is cut at DIFF_TIME and the rest shown as replaced.
        let old: String = (0..100_000).map(|i| format!("line {}\n", i % 7)).collect();
        let new: String = (0..100_000).map(|i| format!("line {}\n", i % 11)).collect();
        let started = Instant::now();
        let d = file_diff("big.txt", Some(&old), Some(&new));
        let took = started.elapsed();
        assert!(took < DIFF_TIME * 10, "took {took:?}");
        assert!(!d.hunks.is_empty());
        assert_eq!(apply(&old, &d), new);
    }

    #[test]
    fn backticks_and_markers_cannot_escape_the_block() {
        let text = neutralise("+```\n+`````\n+<!-- orch:action:1 -->\n");
        let block = fenced(&text);
        assert!(block.starts_with("``````diff\n") && block.ends_with("\n``````\n"), "{block}");
        assert!(!block.contains("<!--"));
    }
}

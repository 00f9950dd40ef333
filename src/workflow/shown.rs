//! What a patch proposal shows on GitHub (SPEC §6, "what you see is what you approve"): the
//! unified diff of every file against the base, in the `orch/patch` check run's text (cut only
//! at GitHub's 65,535 characters, naming what is cut and where all of it is) and in the proposal
//! comment up to [`COMMENT_CHANGED_LINES`] changed lines.
//!
//! The diff is the model's output and so untrusted: it is fenced with more backticks than any
//! run in it, so no line can close the block, and `<!--` is shown as `‹!--`, so no line can
//! imitate orch's hidden markers.

use crate::github::actions::CHECK_RUN_TEXT_LIMIT;

/// How many changed lines the proposal comment shows before pointing at the check run.
pub const COMMENT_CHANGED_LINES: usize = 200;
/// The most characters of diff the proposal comment holds (GitHub's limit is 65,536 for the
/// whole comment, which says more than the diff).
const COMMENT_DIFF_CHARS: usize = 55_000;
/// Lines of context around each change.
const CONTEXT: usize = 3;
/// Beyond this many cells (old lines × new lines, after the common start and end), a file is
/// shown as a whole replacement rather than searched for the smallest diff.
const LCS_CELLS: usize = 4_000_000;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Same(usize, usize),
    Del(usize),
    Ins(usize),
}

/// An edit script from `a` to `b`: the common start and end, and between them a longest
/// common subsequence (or, when that would be too costly, everything replaced).
fn ops(a: &[&str], b: &[&str]) -> Vec<Op> {
    let pre = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suf = a[pre..].iter().rev().zip(b[pre..].iter().rev()).take_while(|(x, y)| x == y).count();
    let (am, bm) = (&a[pre..a.len() - suf], &b[pre..b.len() - suf]);
    let mut out: Vec<Op> = (0..pre).map(|i| Op::Same(i, i)).collect();
    let (n, m) = (am.len(), bm.len());
    if let Some(middle) = shortest_edit(am, bm, LCS_CELLS) {
        out.extend(middle.into_iter().map(|op| match op {
            Op::Same(i, j) => Op::Same(pre + i, pre + j),
            Op::Del(i) => Op::Del(pre + i),
            Op::Ins(j) => Op::Ins(pre + j),
        }));
    } else if n.saturating_mul(m) <= LCS_CELLS {
        // lcs[i][j]: the longest common subsequence of am[i..] and bm[j..].
        let w = m + 1;
        let mut lcs = vec![0u32; (n + 1) * w];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[i * w + j] = if am[i] == bm[j] {
                    lcs[(i + 1) * w + j + 1] + 1
                } else {
                    lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && am[i] == bm[j] {
                out.push(Op::Same(pre + i, pre + j));
                i += 1;
                j += 1;
            } else if i < n && (j == m || lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]) {
                out.push(Op::Del(pre + i));
                i += 1;
            } else {
                out.push(Op::Ins(pre + j));
                j += 1;
            }
        }
    } else {
        out.extend((0..n).map(|i| Op::Del(pre + i)));
        out.extend((0..m).map(|j| Op::Ins(pre + j)));
    }
    out.extend((0..suf).map(|k| Op::Same(a.len() - suf + k, b.len() - suf + k)));
    out
}

/// The shortest edit script from `a` to `b` (Myers' greedy algorithm, O((N+M)·D)): cheap when
/// a large file changes in few places. None when its trace would pass `cells` entries.
fn shortest_edit(a: &[&str], b: &[&str], cells: usize) -> Option<Vec<Op>> {
    let (n, m) = (a.len() as isize, b.len() as isize);
    let max = n + m;
    let off = max + 1;
    let width = (2 * max + 3) as usize;
    let mut v = vec![0isize; width];
    // trace[d]: the furthest x reached on diagonals k = x - y in -d..=d before step d (index
    // k + d), all that step d and the way back read.
    let mut trace: Vec<Vec<isize>> = Vec::new();
    let mut kept = 0usize;
    for d in 0..=max {
        kept += (2 * d + 1) as usize;
        if kept > cells {
            return None;
        }
        trace.push(v[(off - d) as usize..=(off + d) as usize].to_vec());
        for k in (-d..=d).step_by(2) {
            let down = k == -d || (k != d && v[(off + k - 1) as usize] < v[(off + k + 1) as usize]);
            let mut x = if down {
                v[(off + k + 1) as usize]
            } else {
                v[(off + k - 1) as usize] + 1
            };
            let mut y = x - k;
            while x < n && y < m && a[x as usize] == b[y as usize] {
                x += 1;
                y += 1;
            }
            v[(off + k) as usize] = x;
            if x >= n && y >= m {
                return Some(backtrack(&trace, n, m));
            }
        }
    }
    None
}

fn backtrack(trace: &[Vec<isize>], n: isize, m: isize) -> Vec<Op> {
    let (mut x, mut y) = (n, m);
    let mut out = Vec::new();
    for (d, v) in trace.iter().enumerate().rev() {
        let (d, k) = (d as isize, x - y);
        if d == 0 {
            // The first snake: from the start along the diagonal.
            while x > 0 && y > 0 {
                out.push(Op::Same((x - 1) as usize, (y - 1) as usize));
                x -= 1;
                y -= 1;
            }
            break;
        }
        let at = |k: isize| v[(k + d) as usize];
        let down = k == -d || (k != d && at(k - 1) < at(k + 1));
        let prev_k = if down { k + 1 } else { k - 1 };
        let prev_x = at(prev_k);
        let prev_y = prev_x - prev_k;
        while x > prev_x && y > prev_y {
            out.push(Op::Same((x - 1) as usize, (y - 1) as usize));
            x -= 1;
            y -= 1;
        }
        out.push(if x == prev_x {
            Op::Ins((y - 1) as usize)
        } else {
            Op::Del((x - 1) as usize)
        });
        x = prev_x;
        y = prev_y;
    }
    out.reverse();
    out
}

fn hunks(a: &[&str], b: &[&str]) -> Vec<Hunk> {
    let ops = ops(a, b);
    let changes: Vec<usize> = (0..ops.len()).filter(|&k| !matches!(ops[k], Op::Same(..))).collect();
    // Ranges of ops to show: each change with its context, merged when they touch.
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for &k in &changes {
        let (start, end) = (k.saturating_sub(CONTEXT), (k + CONTEXT + 1).min(ops.len()));
        match ranges.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => ranges.push((start, end)),
        }
    }
    // Old and new lines consumed before each op.
    let mut before = Vec::with_capacity(ops.len() + 1);
    let (mut olds, mut news) = (0usize, 0usize);
    for op in &ops {
        before.push((olds, news));
        match op {
            Op::Same(..) => {
                olds += 1;
                news += 1;
            }
            Op::Del(_) => olds += 1,
            Op::Ins(_) => news += 1,
        }
    }
    ranges
        .into_iter()
        .map(|(start, end)| {
            let slice = &ops[start..end];
            let old_count = slice.iter().filter(|o| !matches!(o, Op::Ins(_))).count();
            let new_count = slice.iter().filter(|o| !matches!(o, Op::Del(_))).count();
            let (ob, nb) = before[start];
            // An empty side names the line before it (unified diff convention).
            let old_start = if old_count == 0 { ob } else { ob + 1 };
            let new_start = if new_count == 0 { nb } else { nb + 1 };
            Hunk {
                header: format!("@@ -{old_start},{old_count} +{new_start},{new_count} @@"),
                lines: slice
                    .iter()
                    .map(|o| match *o {
                        Op::Same(i, _) => format!(" {}", a[i]),
                        Op::Del(i) => format!("-{}", a[i]),
                        Op::Ins(j) => format!("+{}", b[j]),
                    })
                    .collect(),
            }
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

    #[test]
    fn every_edit_script_turns_the_old_lines_into_the_new() {
        // A small deterministic generator: lines from a 4-word alphabet make many matches.
        let mut seed = 0x9e37_79b9_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for round in 0..200 {
            let mut lines =
                |len: u32| -> Vec<String> { (0..len).map(|_| ["a", "b", "c", "d"][(next() % 4) as usize].to_string()).collect() };
            let (la, lb) = (round % 13, (round * 7) % 11);
            let (a, b) = (lines(la), lines(lb));
            let (a, b): (Vec<&str>, Vec<&str>) = (a.iter().map(String::as_str).collect(), b.iter().map(String::as_str).collect());
            for script in [Some(ops(&a, &b)), shortest_edit(&a, &b, usize::MAX)] {
                let script = script.expect("a script");
                let (mut old, mut new) = (Vec::new(), Vec::new());
                for op in script {
                    match op {
                        Op::Same(i, j) => {
                            assert_eq!(a[i], b[j]);
                            old.push(i);
                            new.push(b[j]);
                        }
                        Op::Del(i) => old.push(i),
                        Op::Ins(j) => new.push(b[j]),
                    }
                }
                assert_eq!(old, (0..a.len()).collect::<Vec<_>>(), "{a:?} → {b:?}");
                assert_eq!(new, b, "{a:?} → {b:?}");
            }
        }
    }

    #[test]
    fn backticks_and_markers_cannot_escape_the_block() {
        let text = neutralise("+```\n+`````\n+<!-- orch:action:1 -->\n");
        let block = fenced(&text);
        assert!(block.starts_with("``````diff\n") && block.ends_with("\n``````\n"), "{block}");
        assert!(!block.contains("<!--"));
    }
}

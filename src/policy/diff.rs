//! Patches as policy reads them: unified diffs (`git diff` / `git format-patch` output, or plain
//! `diff -u`) and SPEC §9's patch JSON, both into [`FileChange`]s.
//!
//! Unified diffs: `diff --git a/x b/y` headers, `new file mode` / `deleted file mode`,
//! `rename from` / `rename to`, `copy from` / `copy to`, `--- a/x` / `+++ b/y` (with `/dev/null`
//! for added and deleted files, and a `\t`-separated timestamp allowed after the path), C-quoted
//! paths (`"a/sp\303\244ce"`), and hunks `@@ -a,b +c,d @@` counted exactly, so that a removed
//! line that reads `-- x` is not taken for a header. Lines outside files and hunks (mail headers,
//! `index`, mode and similarity lines, the `-- ` signature) are skipped. Binary patches count as a
//! changed file with no known content.
//!
//! A file's `content` is the new file as far as the diff shows it: each added line at its line
//! number in the new file, every other line empty. So a secret's line number is its line in the
//! new file, context lines (already in the repository) are not reported again, and the length is a
//! lower bound of the new file's size (a file of `n` lines has at least `n` bytes).
//!
//! The JSON form `{"title","summary","files":[{"path","action","content"}]}` (strict: unknown
//! fields are refused) gives whole files: `create` → added, `update` → modified, `delete` →
//! deleted; a file's lines count as added lines (the removed ones are not known without the base).

use super::gates::{Change, FileChange, ProposalView};
use serde::Deserialize;

/// Why a patch could not be read, with its 1-based line where it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct DiffError {
    pub line: Option<usize>,
    pub message: String,
}

fn err(line: usize, message: impl Into<String>) -> DiffError {
    DiffError {
        line: Some(line),
        message: message.into(),
    }
}

/// A patch read from a file: a title and summary (empty for a diff) and its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedPatch {
    pub title: String,
    pub summary: String,
    pub files: Vec<FileChange>,
    /// `edit`s that could not be applied to the base: Gate 2 blocks them (SPEC §9).
    pub problems: Vec<super::Rule>,
}

impl ParsedPatch {
    /// The patch as Gate 2 sees it: the summary is the pull request's body.
    pub fn into_view(self) -> ProposalView {
        ProposalView::Patch {
            title: self.title,
            files: self.files,
            comment_text: self.summary,
        }
    }
}

/// Reads a patch: JSON when the text starts with `{`, a unified diff otherwise. `base(path)` is
/// a file's text on the base (None: no such file): the patch JSON's `edit`s apply to it, and its
/// `update`s count the lines of their diff against it.
pub fn parse_patch(text: &str, base: &dyn Fn(&str) -> Option<String>) -> Result<ParsedPatch, DiffError> {
    if text.trim_start().starts_with('{') {
        parse_patch_json(text, base)
    } else {
        Ok(ParsedPatch {
            title: String::new(),
            summary: String::new(),
            files: parse_unified(text)?,
            problems: Vec::new(),
        })
    }
}

/// Added and removed lines from `old` to `new`, as a unified diff counts them.
pub fn line_changes(old: &str, new: &str) -> (u32, u32) {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let deadline = std::time::Instant::now().checked_add(std::time::Duration::from_secs(1));
    let (mut added, mut removed) = (0u32, 0u32);
    for op in similar::capture_diff_slices_deadline(similar::Algorithm::Myers, &a, &b, deadline) {
        match op {
            similar::DiffOp::Equal { .. } => {}
            similar::DiffOp::Delete { old_len, .. } => removed += old_len as u32,
            similar::DiffOp::Insert { new_len, .. } => added += new_len as u32,
            similar::DiffOp::Replace { old_len, new_len, .. } => {
                removed += old_len as u32;
                added += new_len as u32;
            }
        }
    }
    (added, removed)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchJson {
    title: String,
    summary: String,
    files: Vec<PatchJsonFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchJsonFile {
    path: String,
    action: JsonAction,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    edits: Option<Vec<PatchJsonEdit>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchJsonEdit {
    old: String,
    new: String,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum JsonAction {
    Create,
    Update,
    Delete,
    Edit,
}

/// SPEC §9's patch JSON, against the base texts `base` gives.
pub fn parse_patch_json(text: &str, base: &dyn Fn(&str) -> Option<String>) -> Result<ParsedPatch, DiffError> {
    let json: PatchJson = serde_json::from_str(text).map_err(|e| DiffError {
        line: Some(e.line()),
        message: e.to_string().split(" at line ").next().unwrap_or_default().to_string(),
    })?;
    let mut files = Vec::with_capacity(json.files.len());
    let mut problems = Vec::new();
    for (i, f) in json.files.into_iter().enumerate() {
        let missing = |field: &str| DiffError {
            line: None,
            message: format!("files[{i}].{field}: missing for {:?}", f.path),
        };
        let change = match f.action {
            JsonAction::Create => Change::Added,
            JsonAction::Update | JsonAction::Edit => Change::Modified,
            JsonAction::Delete => Change::Deleted,
        };
        let old = base(&f.path);
        let content = match f.action {
            JsonAction::Delete => None,
            JsonAction::Create | JsonAction::Update => Some(f.content.clone().ok_or_else(|| missing("content"))?),
            JsonAction::Edit => {
                let edits = f.edits.as_deref().filter(|e| !e.is_empty()).ok_or_else(|| missing("edits"))?;
                let applied = match &old {
                    None => Err("the file does not exist on the base commit; create it with `create`".to_string()),
                    Some(text) => {
                        super::edits::apply(text, edits.iter().map(|e| (e.old.as_str(), e.new.as_str()))).map_err(|e| e.to_string())
                    }
                };
                match applied {
                    Ok(text) => Some(text),
                    Err(problem) => {
                        problems.push(super::Rule::EditDoesNotApply {
                            path: f.path.clone(),
                            problem,
                        });
                        continue;
                    }
                }
            }
        };
        let mut file = FileChange::whole(f.path, change, content);
        if let (Some(old), Some(new), Change::Modified) = (&old, &file.content, change) {
            (file.added_lines, file.removed_lines) = line_changes(old, new);
        }
        files.push(file);
    }
    Ok(ParsedPatch {
        title: json.title,
        summary: json.summary,
        files,
        problems,
    })
}

/// One file being read.
#[derive(Default)]
struct Builder {
    header: Option<(String, String)>,
    /// `--- a/x` / `+++ b/y` paths; None for `/dev/null`.
    old: Option<Option<String>>,
    new: Option<Option<String>>,
    rename_from: Option<String>,
    rename_to: Option<String>,
    copy: bool,
    new_file: bool,
    deleted_file: bool,
    /// The prefixes `a/` and `b/` are in use (git's default; not with `--no-prefix`).
    prefixed: bool,
    hunks: usize,
    added: u32,
    removed: u32,
    content: String,
    content_lines: u32,
}

impl Builder {
    fn finish(self, line: usize) -> Result<FileChange, DiffError> {
        let header = self.header.clone();
        let old = self
            .rename_from
            .clone()
            .or_else(|| self.old.clone().flatten())
            .or_else(|| header.as_ref().map(|h| h.0.clone()));
        let new = self
            .rename_to
            .clone()
            .or_else(|| self.new.clone().flatten())
            .or_else(|| header.as_ref().map(|h| h.1.clone()));
        let deleted = self.deleted_file || matches!(self.new, Some(None));
        let added = self.new_file || matches!(self.old, Some(None));
        let (path, previous_path, change) = if deleted {
            (old.or(new), None, Change::Deleted)
        } else if added {
            (new.or(old), None, Change::Added)
        } else {
            match (old, new) {
                (Some(o), Some(n)) if o != n => (Some(n), Some(o), if self.copy { Change::Copied } else { Change::Renamed }),
                (o, n) => (n.or(o), None, Change::Modified),
            }
        };
        let path = path.ok_or_else(|| err(line, "a file without a path"))?;
        let content = (!deleted && self.added > 0).then_some(self.content);
        Ok(FileChange {
            path,
            previous_path,
            change,
            content,
            added_lines: self.added,
            removed_lines: self.removed,
        })
    }

    fn add_line(&mut self, at: u32, text: &str) {
        while self.content_lines + 1 < at {
            self.content.push('\n');
            self.content_lines += 1;
        }
        self.content.push_str(text);
        self.content.push('\n');
        self.content_lines += 1;
    }
}

/// A C-quoted path (`"a/b\tc"`), or the text as it is.
fn unquote(s: &str) -> String {
    let Some(inner) = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) else {
        return s.to_string();
    };
    let mut bytes = Vec::with_capacity(inner.len());
    let raw = inner.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' || i + 1 == raw.len() {
            bytes.push(raw[i]);
            i += 1;
            continue;
        }
        let c = raw[i + 1];
        i += 2;
        bytes.push(match c {
            b'n' => b'\n',
            b't' => b'\t',
            b'r' => b'\r',
            b'a' => 7,
            b'b' => 8,
            b'f' => 12,
            b'v' => 11,
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    if i < raw.len() && (b'0'..=b'7').contains(&raw[i]) {
                        v = v * 8 + u32::from(raw[i] - b'0');
                        i += 1;
                    }
                }
                v as u8
            }
            other => other,
        });
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The path of a `---` / `+++` line: None for `/dev/null`; the timestamp after a tab dropped.
fn marker_path(rest: &str) -> Option<String> {
    let rest = rest.trim_end();
    let path = if rest.starts_with('"') {
        rest.to_string()
    } else {
        rest.split('\t').next().unwrap_or_default().to_string()
    };
    let path = unquote(&path);
    (path != "/dev/null").then_some(path)
}

fn strip(path: String, prefix: &str, prefixed: bool) -> String {
    match path.strip_prefix(prefix) {
        Some(rest) if prefixed => rest.to_string(),
        _ => path,
    }
}

/// The two paths of `diff --git A B`, prefixes kept. Unquoted paths may hold spaces: the split
/// that gives equal paths (minus `a/`/`b/`) wins, else the last ` b/`.
fn git_header(rest: &str) -> Option<(String, String)> {
    if let Some(inner) = rest.strip_prefix('"') {
        // The closing quote is the first one not escaped by a backslash.
        let bytes = inner.as_bytes();
        let mut i = 0;
        while i < bytes.len() && bytes[i] != b'"' {
            i += if bytes[i] == b'\\' { 2 } else { 1 };
        }
        let end = i + 2; // both quotes
        if end > rest.len() {
            return None;
        }
        return Some((unquote(&rest[..end]), unquote(rest[end..].trim())));
    }
    if let Some(at) = rest.find(" \"") {
        return Some((rest[..at].to_string(), unquote(rest[at + 1..].trim())));
    }
    let candidates: Vec<usize> = rest.match_indices(" b/").map(|(i, _)| i).collect();
    for &i in &candidates {
        let (a, b) = (&rest[..i], &rest[i + 1..]);
        if a.strip_prefix("a/") == b.strip_prefix("b/") {
            return Some((a.to_string(), b.to_string()));
        }
    }
    if let Some(&i) = candidates.last() {
        return Some((rest[..i].to_string(), rest[i + 1..].to_string()));
    }
    // `--no-prefix`: equal halves.
    let half = rest.len() / 2;
    if rest.len() % 2 == 1 && rest.as_bytes()[half] == b' ' && rest[..half] == rest[half + 1..] {
        return Some((rest[..half].to_string(), rest[half + 1..].to_string()));
    }
    None
}

/// `@@ -a[,b] +c[,d] @@` → (b, c, d).
fn hunk_header(line: &str) -> Option<(u32, u32, u32)> {
    let rest = line.strip_prefix("@@ -")?;
    let (old, rest) = rest.split_once(" +")?;
    let (new, _) = rest.split_once(" @@")?;
    let range = |r: &str| -> Option<(u32, u32)> {
        match r.split_once(',') {
            Some((start, len)) => Some((start.parse().ok()?, len.parse().ok()?)),
            None => Some((r.parse().ok()?, 1)),
        }
    };
    let (_, old_len) = range(old)?;
    let (new_start, new_len) = range(new)?;
    Some((old_len, new_start, new_len))
}

/// Reads a unified diff into its files.
pub fn parse_unified(text: &str) -> Result<Vec<FileChange>, DiffError> {
    let mut files = Vec::new();
    let mut cur: Option<Builder> = None;
    let (mut old_left, mut new_left, mut new_line) = (0u32, 0u32, 0u32);
    let mut last = 0;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        last = n;
        if old_left > 0 || new_left > 0 {
            let b = cur.as_mut().expect("a hunk belongs to a file");
            match line.as_bytes().first() {
                Some(b' ') | None => {
                    if old_left == 0 || new_left == 0 {
                        return Err(err(n, "a context line beyond the hunk's counts"));
                    }
                    old_left -= 1;
                    new_left -= 1;
                    new_line += 1;
                }
                Some(b'-') => {
                    if old_left == 0 {
                        return Err(err(n, "more removed lines than the hunk header says"));
                    }
                    old_left -= 1;
                    b.removed += 1;
                }
                Some(b'+') => {
                    if new_left == 0 {
                        return Err(err(n, "more added lines than the hunk header says"));
                    }
                    new_left -= 1;
                    b.added += 1;
                    b.add_line(new_line, &line[1..]);
                    new_line += 1;
                }
                Some(b'\\') => {}
                Some(_) => {
                    return Err(err(
                        n,
                        format!("the hunk ends early: {old_left} old and {new_left} new line(s) missing"),
                    ))
                }
            }
            continue;
        }
        if line.starts_with('\\') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("diff --git ") {
            if let Some(b) = cur.take() {
                files.push(b.finish(n)?);
            }
            let header = git_header(rest).ok_or_else(|| err(n, "a `diff --git` line without two paths"))?;
            let prefixed = header.0.starts_with("a/") && header.1.starts_with("b/");
            cur = Some(Builder {
                header: Some((strip(header.0, "a/", prefixed), strip(header.1, "b/", prefixed))),
                prefixed,
                ..Builder::default()
            });
            continue;
        }
        if line.starts_with("diff ") && !line.starts_with("diff --git") && line.contains(" --combined") {
            return Err(err(n, "combined diffs are not supported"));
        }
        if line.starts_with("@@@ ") {
            return Err(err(n, "combined diffs are not supported"));
        }
        if let Some(rest) = line.strip_prefix("--- ") {
            // A plain unified diff starts a new file at `---`; in a git diff it follows the header.
            let starts_new = cur.as_ref().map_or(true, |b| b.hunks > 0 || b.old.is_some());
            if starts_new {
                if let Some(b) = cur.take() {
                    files.push(b.finish(n)?);
                }
                let path = marker_path(rest);
                cur = Some(Builder {
                    prefixed: path.as_deref().map_or(true, |p| p.starts_with("a/")),
                    ..Builder::default()
                });
            }
            let b = cur.as_mut().expect("set above");
            b.old = Some(marker_path(rest).map(|p| strip(p, "a/", b.prefixed)));
            continue;
        }
        let Some(b) = cur.as_mut() else {
            continue; // preamble: mail headers, commit message
        };
        if let Some(rest) = line.strip_prefix("+++ ") {
            if b.old.is_none() {
                return Err(err(n, "`+++` without a `---` line before it"));
            }
            b.new = Some(marker_path(rest).map(|p| strip(p, "b/", b.prefixed)));
        } else if line.starts_with('+') && b.hunks > 0 {
            // Added text beyond the hunk's counts: `git apply` refuses it, and so does policy,
            // rather than leave it unscanned.
            return Err(err(n, "an added line beyond the hunk's counts"));
        } else if line.starts_with("@@ ") {
            if b.header.is_none() && b.new.is_none() {
                return Err(err(n, "a hunk before its file's `---`/`+++` lines"));
            }
            let (old_len, start, new_len) = hunk_header(line).ok_or_else(|| err(n, format!("a malformed hunk header {line:?}")))?;
            old_left = old_len;
            new_left = new_len;
            new_line = start.max(1);
            b.hunks += 1;
        } else if let Some(p) = line.strip_prefix("rename from ") {
            b.rename_from = Some(unquote(p));
        } else if let Some(p) = line.strip_prefix("rename to ") {
            b.rename_to = Some(unquote(p));
        } else if let Some(p) = line.strip_prefix("copy from ") {
            b.rename_from = Some(unquote(p));
            b.copy = true;
        } else if let Some(p) = line.strip_prefix("copy to ") {
            b.rename_to = Some(unquote(p));
            b.copy = true;
        } else if line.starts_with("new file mode ") {
            b.new_file = true;
        } else if line.starts_with("deleted file mode ") {
            b.deleted_file = true;
        }
    }
    if old_left > 0 || new_left > 0 {
        return Err(err(
            last,
            format!("the diff ends inside a hunk: {old_left} old and {new_left} new line(s) missing"),
        ));
    }
    if let Some(b) = cur.take() {
        files.push(b.finish(last)?);
    }
    if files.is_empty() && !text.trim().is_empty() {
        return Err(DiffError {
            line: None,
            message: "no file changes found (expected a unified diff or the patch JSON)".into(),
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_git_diff_with_every_kind_of_change() {
        let diff = "\
From 1234 Mon Sep 17 00:00:00 2001
Subject: [PATCH] things

---
diff --git a/src/lib.rs b/src/lib.rs
index 1111111..2222222 100644
--- a/src/lib.rs
+++ b/src/lib.rs
@@ -1,3 +1,4 @@
 fn a() {}
--- not a header
+--- added
+fn b() {}
 fn c() {}
@@ -10,2 +11,2 @@ fn d
-x
+y
 z
diff --git a/old name.txt b/new name.txt
similarity index 90%
rename from old name.txt
rename to new name.txt
diff --git a/gone.txt b/gone.txt
deleted file mode 100644
--- a/gone.txt
+++ /dev/null
@@ -1 +0,0 @@
-bye
diff --git a/new.txt b/new.txt
new file mode 100644
--- /dev/null
+++ b/new.txt
@@ -0,0 +1,2 @@
+hello
+world
\\ No newline at end of file
diff --git \"a/sp\\303\\244ce\" \"b/sp\\303\\244ce\"
old mode 100644
new mode 100755
-- 
2.43.0
";
        let files = parse_unified(diff).unwrap();
        assert_eq!(files.len(), 5, "{files:#?}");
        let lib = &files[0];
        assert_eq!(
            (lib.path.as_str(), lib.change, lib.added_lines, lib.removed_lines),
            ("src/lib.rs", Change::Modified, 3, 2)
        );
        let content = lib.content.as_deref().unwrap();
        let lines: Vec<&str> = content.lines().collect();
        assert_eq!((lines[1], lines[2], lines[10]), ("--- added", "fn b() {}", "y"));
        assert_eq!(files[1].change, Change::Renamed);
        assert_eq!(
            (files[1].previous_path.as_deref(), files[1].path.as_str()),
            (Some("old name.txt"), "new name.txt")
        );
        assert_eq!(
            (files[2].path.as_str(), files[2].change, files[2].removed_lines),
            ("gone.txt", Change::Deleted, 1)
        );
        assert_eq!((files[3].path.as_str(), files[3].change), ("new.txt", Change::Added));
        assert_eq!(files[3].content.as_deref(), Some("hello\nworld\n"));
        assert_eq!((files[4].path.as_str(), files[4].change), ("späce", Change::Modified));
    }

    #[test]
    fn plain_unified_diffs_and_errors() {
        let files = parse_unified(
            "--- a/x.c\t2020-01-01\n+++ b/x.c\t2020-01-02\n@@ -1 +1 @@\n-a\n+b\n--- a/y.c\n+++ b/y.c\n@@ -1 +1,2 @@\n a\n+c\n",
        )
        .unwrap();
        assert_eq!(files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["x.c", "y.c"]);
        let e = parse_unified("--- a/x\n+++ b/x\n@@ -1,3 +1,3 @@\n a\n").unwrap_err();
        assert!(e.message.contains("ends inside a hunk"), "{e}");
        let e = parse_unified("--- a/x\n+++ b/x\n@@ -1 +1 @@\n a\n+b\n").unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert!(parse_unified("hello\n").is_err());
        let e = parse_unified("diff --git a/x b/x\n@@ nonsense @@\n").unwrap_err();
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn copies_and_no_prefix() {
        let files = parse_unified("diff --git a/.env b/env.txt\nsimilarity index 100%\ncopy from .env\ncopy to env.txt\n").unwrap();
        assert_eq!(files[0].change, Change::Copied);
        assert_eq!(files[0].previous_path.as_deref(), Some(".env"));
        let files = parse_unified("diff --git x/y.rs x/y.rs\n--- x/y.rs\n+++ x/y.rs\n@@ -1 +1 @@\n-a\n+b\n").unwrap();
        assert_eq!(files[0].path, "x/y.rs");
    }

    #[test]
    fn patch_json_is_strict() {
        let p = parse_patch(r#"{"title":"t","summary":"s","files":[{"path":"a.txt","action":"create","content":"1\n2\n"},{"path":"b","action":"delete","content":""}]}"#, &|_| None).unwrap();
        assert_eq!(p.files[0].added_lines, 2);
        assert_eq!(p.files[1].change, Change::Deleted);
        let e = parse_patch(r#"{"title":"t","summary":"s","files":[],"extra":1}"#, &|_| None).unwrap_err();
        assert!(e.message.contains("extra"), "{e}");
    }
}

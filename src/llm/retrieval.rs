//! Which files of a repository the model is shown for a patch (SPEC §9): the files the request
//! names, then the files that define or use the identifiers it names, best first, each whole
//! where it fits and as numbered excerpts around the matches where it does not.
//!
//! A pure function of the repository's text files and the request's text: the workflow reads
//! the files (one tarball of the default branch) and [`select`] ranks them, so the same
//! repository and request always give the same selection, and the retrieval benchmark
//! (`bench/context/`) measures exactly what orch runs.
//!
//! **Terms.** From the request (instruction, title, body, feedback):
//! - paths: text in backticks or a bare token with a `/` or a file extension;
//! - identifiers: text in backticks, `Type::method`, `call()`, and words that are not plain
//!   English: with an underscore, or camelCase / PascalCase with two humps or more;
//! - capitalised words in mid-sentence (maybe a type, `Glob`), and other words of four letters or
//!   more that are not common English: weak terms, matched against paths and identifiers.
//!
//! **Scores.** A named path counts most; then a file that *defines* an identifier (`fn name`,
//! `struct Name`, `def name`, `class Name`, …), weighted by how few files define it; then uses
//! of an identifier and weak terms in the path and the text, weighted by how rare they are in the
//! repository (inverse document frequency), so a word every file has does not pull any file up.
//!
//! **Selection.** Files are taken best first while the budget lasts: the best file whole if it
//! takes at most 60 % of what is left, any other whole if it takes at most 35 %; otherwise
//! excerpts (the definition's line and the 40 after it, a use's line with 6 on each side,
//! numbered as in the file, ranges merged) cut to 35 % of what is left. A file with only weak
//! evidence (words) scoring under 5 % of the best is not shown; relevant files that did not fit
//! are named.

use super::context::pack_for;
use super::{Context, Task};
use regex::Regex;
use std::collections::BTreeSet;

/// A text file of the repository.
#[derive(Debug, Clone, Copy)]
pub struct SourceFile<'a> {
    pub path: &'a str,
    pub text: &'a str,
}

/// What the model is shown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// path → whole text, best first.
    pub whole: Vec<(String, String)>,
    /// path → numbered excerpts, best first.
    pub excerpts: Vec<(String, String)>,
    /// Relevant files that did not fit, best first.
    pub left_out: Vec<String>,
}

impl Selection {
    /// Every path shown, whole or in excerpts.
    pub fn shown(&self) -> impl Iterator<Item = &str> {
        self.whole.iter().chain(&self.excerpts).map(|(p, _)| p.as_str())
    }

    /// Characters of the shown text (file texts and excerpts).
    pub fn chars(&self) -> usize {
        self.whole
            .iter()
            .chain(&self.excerpts)
            .map(|(p, t)| p.len() + t.chars().count())
            .sum()
    }
}

/// At most this share of the pack goes to the repository's file list before the files are
/// chosen (the list is cut to what is left after them).
const FILE_LIST_SHARE: usize = 10;

/// Fills a patch's `context` from the repository at its base commit: `paths` is its file list,
/// `files` its text files. The files are chosen for the request (the instruction, title, body
/// and feedback) under what `budget_tokens` leaves after the rest of the pack; relevant files
/// that did not fit are named in `context.notes`.
pub fn fill_patch_context(context: &mut Context, paths: &[String], files: &[SourceFile<'_>], budget_tokens: u32) {
    let budget_chars = (budget_tokens as usize).saturating_mul(4);
    let used = (pack_for(Task::Patch, context, budget_tokens).tokens as usize) * 4;
    let list_chars: usize = paths.iter().map(|p| p.chars().count() + 1).sum::<usize>() + FENCE_CHARS;
    let reserve = list_chars.min(budget_chars * FILE_LIST_SHARE / 100);
    let request = [
        context.instruction.as_deref().unwrap_or_default(),
        context.feedback.as_deref().unwrap_or_default(),
        &context.title,
        &context.body,
    ]
    .join("\n");
    let selection = select(files, &request, budget_chars.saturating_sub(used + reserve));
    context.files = selection.whole;
    context.excerpts = selection.excerpts;
    context.file_list = paths.to_vec();
    context.notes.extend(
        selection
            .left_out
            .into_iter()
            .map(|p| format!("file {p} (relevant, but it did not fit the budget)")),
    );
}

/// Fence and label around each file in the pack, in characters (a generous estimate).
const FENCE_CHARS: usize = 48;
/// Lines after a definition shown in an excerpt, and around a use.
const DEFINITION_LINES: usize = 40;
const USE_CONTEXT: usize = 6;
/// The most files shown.
const MAX_FILES: usize = 30;

/// The terms of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Terms {
    pub paths: Vec<String>,
    pub identifiers: Vec<String>,
    pub words: Vec<String>,
}

/// Common English words that say nothing about where code is.
const STOPWORDS: &[&str] = &[
    "about",
    "above",
    "after",
    "again",
    "against",
    "also",
    "always",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "breaks",
    "broken",
    "cannot",
    "case",
    "cases",
    "change",
    "changes",
    "could",
    "does",
    "doesn",
    "doing",
    "done",
    "down",
    "each",
    "else",
    "empty",
    "even",
    "every",
    "expected",
    "fail",
    "fails",
    "false",
    "file",
    "files",
    "first",
    "from",
    "have",
    "here",
    "instead",
    "into",
    "just",
    "like",
    "make",
    "makes",
    "more",
    "most",
    "much",
    "must",
    "need",
    "needs",
    "never",
    "none",
    "only",
    "other",
    "over",
    "please",
    "returns",
    "same",
    "should",
    "since",
    "some",
    "such",
    "than",
    "that",
    "their",
    "them",
    "then",
    "there",
    "these",
    "they",
    "thing",
    "this",
    "those",
    "through",
    "true",
    "under",
    "until",
    "used",
    "uses",
    "using",
    "very",
    "want",
    "wants",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "will",
    "with",
    "without",
    "would",
    "wrong",
    "your",
    "work",
    "works",
    "working",
    "correct",
    "correctly",
    "currently",
    "still",
    "return",
    "function",
    "method",
    "type",
    "value",
    "values",
    "called",
    "call",
    "calls",
    "right",
    "well",
    "fixes",
    "issue",
    "code",
];

/// The terms of `request` (see the module documentation).
pub fn terms(request: &str) -> Terms {
    let mut paths = BTreeSet::new();
    let mut identifiers = BTreeSet::new();
    let mut words = BTreeSet::new();
    let path_like = |t: &str| (t.contains('/') || has_extension(t)) && !t.contains(' ') && !t.contains("::");
    // Text in backticks is code: a path, or identifiers.
    for (i, span) in request.split('`').enumerate() {
        if i % 2 == 0 {
            continue;
        }
        let span = span.trim();
        if path_like(span) {
            paths.insert(span.trim_start_matches("./").to_string());
            continue;
        }
        for token in identifier_tokens(span) {
            if token.len() >= 3 {
                identifiers.insert(token.to_string());
            }
        }
    }
    let prose: String = request.split('`').step_by(2).collect::<Vec<_>>().join(" ");
    for raw in prose.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '"' | '\'' | '[' | ']' | '{' | '}' | '<' | '>')) {
        let token = raw.trim_matches(|c: char| matches!(c, '.' | ':' | '!' | '?' | '(' | ')' | '*'));
        if token.is_empty() {
            continue;
        }
        if path_like(token) && token.chars().any(|c| c.is_ascii_alphabetic()) {
            paths.insert(token.trim_start_matches("./").to_string());
            continue;
        }
        let called = raw.contains("()");
        let qualified = token.contains("::");
        for part in identifier_tokens(token) {
            if part.len() < 3 {
                continue;
            }
            if called || qualified || looks_like_code(part) {
                identifiers.insert(part.to_string());
            } else if part.chars().next().is_some_and(char::is_uppercase) && part.len() >= 4 {
                words.insert(part.to_string());
            } else if part.len() >= 4 && !STOPWORDS.contains(&part.to_ascii_lowercase().as_str()) {
                words.insert(part.to_ascii_lowercase());
            }
        }
    }
    for id in &identifiers {
        words.remove(id);
    }
    Terms {
        paths: paths.into_iter().collect(),
        identifiers: identifiers.into_iter().collect(),
        words: words.into_iter().collect(),
    }
}

fn has_extension(token: &str) -> bool {
    match token.rsplit_once('.') {
        Some((stem, ext)) => {
            !stem.is_empty()
                && (1..=5).contains(&ext.len())
                && ext.chars().all(|c| c.is_ascii_alphanumeric())
                && ext.chars().any(|c| c.is_ascii_lowercase())
                && !ext.chars().all(|c| c.is_ascii_digit())
                && stem
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        }
        None => false,
    }
}

/// The identifier-shaped parts of a token (`Type::method()` → `Type`, `method`).
fn identifier_tokens(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|t| t.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_'))
}

/// Whether a word is code rather than English: an inner underscore, or camelCase / PascalCase
/// with two humps or more, or all capitals with an underscore.
fn looks_like_code(word: &str) -> bool {
    let trimmed = word.trim_matches('_');
    if trimmed.contains('_') {
        return true;
    }
    let chars: Vec<char> = trimmed.chars().collect();
    chars.windows(2).any(|w| w[0].is_lowercase() && w[1].is_uppercase())
}

/// Per file: the definition lines of each identifier, the uses of each identifier, the
/// occurrences of each word.
type FileCounts = (Vec<Vec<usize>>, Vec<usize>, Vec<usize>);

/// Per-file evidence for the terms.
struct Evidence {
    score: f64,
    /// A named path, a definition or a use of an identifier: always worth showing.
    strong: bool,
    /// Lines (0-based) that define an identifier, and lines that use a term.
    definitions: Vec<usize>,
    uses: Vec<usize>,
}

/// Ranks `files` for `request` and selects what fits in `budget_chars` (see the module
/// documentation).
pub fn select(files: &[SourceFile<'_>], request: &str, budget_chars: usize) -> Selection {
    let terms = terms(request);
    let ranked = rank(files, &terms);
    let mut selection = Selection::default();
    let Some(best) = ranked.first().map(|(_, e)| e.score) else {
        return selection;
    };
    let mut remaining = budget_chars;
    for (i, (file, evidence)) in ranked.iter().enumerate() {
        if !evidence.strong && evidence.score < best * 0.05 {
            continue;
        }
        if selection.whole.len() + selection.excerpts.len() >= MAX_FILES {
            selection.left_out.push(file.path.to_string());
            continue;
        }
        let share = if i == 0 { remaining * 6 / 10 } else { remaining * 35 / 100 };
        let whole_cost = FENCE_CHARS + file.path.len() + file.text.chars().count();
        if whole_cost <= share {
            selection.whole.push((file.path.to_string(), file.text.to_string()));
            remaining -= whole_cost;
            continue;
        }
        let limit = (remaining * 35 / 100).saturating_sub(FENCE_CHARS + file.path.len());
        match excerpt(file.text, evidence, limit) {
            Some(text) => {
                remaining -= FENCE_CHARS + file.path.len() + text.chars().count();
                selection.excerpts.push((file.path.to_string(), text));
            }
            None => selection.left_out.push(file.path.to_string()),
        }
    }
    selection
}

/// The files with any evidence, best first (ties by path).
fn rank<'f, 'a>(files: &'f [SourceFile<'a>], terms: &Terms) -> Vec<(&'f SourceFile<'a>, Evidence)> {
    let n = files.len().max(1) as f64;
    let definition: Vec<Regex> = terms
        .identifiers
        .iter()
        .map(|id| {
            Regex::new(&format!(
                r"\b(?:fn|struct|enum|trait|type|union|mod|const|static|macro_rules!|def|class|function|func|interface|impl(?:<[^>]*>)?)\s+{}\b",
                regex::escape(id)
            ))
            .expect("an escaped identifier makes a valid pattern")
        })
        .collect();
    let lowered: Vec<String> = files.iter().map(|f| f.path.to_ascii_lowercase()).collect();
    // How many files define / mention each identifier, and mention each word.
    let mut defined_in = vec![0usize; terms.identifiers.len()];
    let mut used_in = vec![0usize; terms.identifiers.len()];
    let mut word_in = vec![0usize; terms.words.len()];
    let mut per_file: Vec<FileCounts> = Vec::with_capacity(files.len());
    for f in files {
        let mut defs = Vec::with_capacity(terms.identifiers.len());
        let mut uses = Vec::with_capacity(terms.identifiers.len());
        for (k, id) in terms.identifiers.iter().enumerate() {
            let d: Vec<usize> = if f.text.contains(id.as_str()) {
                definition[k].find_iter(f.text).map(|m| line_of(f.text, m.start())).collect()
            } else {
                Vec::new()
            };
            let u = word_count(f.text, id);
            defined_in[k] += usize::from(!d.is_empty());
            used_in[k] += usize::from(u > 0);
            defs.push(d);
            uses.push(u);
        }
        let lower = f.text.to_ascii_lowercase();
        let mut words = Vec::with_capacity(terms.words.len());
        for (k, w) in terms.words.iter().enumerate() {
            let c = lower.matches(&w.to_ascii_lowercase()).count();
            word_in[k] += usize::from(c > 0);
            words.push(c);
        }
        per_file.push((defs, uses, words));
    }
    let idf = |df: usize| (1.0 + n / (df.max(1) as f64)).ln();
    let mut out = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let (defs, uses, words) = &per_file[i];
        let path = &lowered[i];
        let stem = path.rsplit('/').next().unwrap_or(path).split('.').next().unwrap_or_default();
        let mut score = 0.0;
        let mut strong = false;
        let mut definitions = Vec::new();
        for p in &terms.paths {
            let p = p.to_ascii_lowercase();
            if *path == p || path.ends_with(&format!("/{p}")) {
                score += 1000.0;
                strong = true;
            } else if p.rsplit('/').next() == path.rsplit('/').next() {
                score += 200.0;
            }
        }
        for (k, id) in terms.identifiers.iter().enumerate() {
            if !defs[k].is_empty() {
                score += 100.0 / defined_in[k] as f64;
                definitions.extend(&defs[k]);
            }
            if uses[k] > 0 {
                score += 4.0 * (1.0 + uses[k] as f64).ln() * idf(used_in[k]);
                strong = true;
            }
            if stem == id.to_ascii_lowercase() {
                score += 20.0;
            }
        }
        for (k, w) in terms.words.iter().enumerate() {
            let w = w.to_ascii_lowercase();
            let singular = w.strip_suffix('s').filter(|s| s.len() >= 4).unwrap_or(&w);
            if path.contains(singular) {
                score += 12.0 * idf(files.iter().filter(|f| f.path.to_ascii_lowercase().contains(singular)).count());
            }
            if words[k] > 0 {
                score += (1.0 + words[k] as f64).ln() * idf(word_in[k]);
            }
        }
        if score > 0.0 {
            definitions.sort_unstable();
            definitions.dedup();
            let uses = use_lines(f.text, terms);
            out.push((
                f,
                Evidence {
                    score,
                    strong,
                    definitions,
                    uses,
                },
            ));
        }
    }
    out.sort_by(|a, b| b.1.score.total_cmp(&a.1.score).then_with(|| a.0.path.cmp(b.0.path)));
    out
}

/// Occurrences of `word` in `text` as a whole word.
fn word_count(text: &str, word: &str) -> usize {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(word)
        .filter(|(at, _)| {
            let before = text[..*at].chars().next_back();
            let after = text[at + word.len()..].chars().next();
            !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
        })
        .count()
}

fn line_of(text: &str, byte: usize) -> usize {
    text.as_bytes()[..byte].iter().filter(|b| **b == b'\n').count()
}

/// Lines that mention an identifier (or, when none does, a weak term), at most 40.
fn use_lines(text: &str, terms: &Terms) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if terms.identifiers.iter().any(|id| line.contains(id.as_str())) {
            out.push(i);
            if out.len() == 40 {
                return out;
            }
        }
    }
    if out.is_empty() {
        for (i, line) in text.lines().enumerate() {
            let lower = line.to_ascii_lowercase();
            if terms.words.iter().any(|w| lower.contains(&w.to_ascii_lowercase())) {
                out.push(i);
                if out.len() == 20 {
                    break;
                }
            }
        }
    }
    out
}

/// Numbered excerpts of `text` around the evidence, at most `limit` characters; None when not
/// even one range fits.
fn excerpt(text: &str, evidence: &Evidence, limit: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return None;
    }
    let last = lines.len() - 1;
    // Definitions first: they are what an edit of the named code needs.
    let mut ranges: Vec<(usize, usize)> = evidence
        .definitions
        .iter()
        .map(|&d| (d.saturating_sub(3), (d + DEFINITION_LINES).min(last)))
        .chain(
            evidence
                .uses
                .iter()
                .map(|&u| (u.saturating_sub(USE_CONTEXT), (u + USE_CONTEXT).min(last))),
        )
        .collect();
    if ranges.is_empty() {
        ranges.push((0, DEFINITION_LINES.min(last)));
    }
    let width = (lines.len()).to_string().len();
    let mut chosen: Vec<(usize, usize)> = Vec::new();
    let mut used = 0;
    for (from, to) in ranges {
        let merged = merge(&chosen, (from, to));
        let cost: usize = merged.iter().map(|&(a, b)| range_chars(&lines, a, b, width) + 2).sum();
        if cost > limit {
            continue;
        }
        chosen = merged;
        used = cost;
    }
    if chosen.is_empty() || used == 0 {
        return None;
    }
    let mut out = String::with_capacity(used);
    for (k, &(from, to)) in chosen.iter().enumerate() {
        if k > 0 || from > 0 {
            out.push_str("…\n");
        }
        for (n, line) in lines.iter().enumerate().take(to + 1).skip(from) {
            out.push_str(&format!("{:>width$}| {line}\n", n + 1));
        }
    }
    if chosen.last().is_some_and(|&(_, to)| to < last) {
        out.push_str("…\n");
    }
    Some(out)
}

fn range_chars(lines: &[&str], from: usize, to: usize, width: usize) -> usize {
    lines[from..=to].iter().map(|l| l.chars().count() + width + 3).sum()
}

/// `ranges` with `new` added, sorted and merged where they touch.
fn merge(ranges: &[(usize, usize)], new: (usize, usize)) -> Vec<(usize, usize)> {
    let mut all: Vec<(usize, usize)> = ranges.iter().copied().chain(std::iter::once(new)).collect();
    all.sort_unstable();
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(all.len());
    for (a, b) in all {
        match out.last_mut() {
            Some(last) if a <= last.1 + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_find_paths_identifiers_and_words() {
        let t = terms("`compute_total` is wrong for empty carts in src/cart.rs; see Cart::items() and `lib/pricing.py`");
        assert_eq!(t.paths, vec!["lib/pricing.py", "src/cart.rs"]);
        assert_eq!(t.identifiers, vec!["Cart", "compute_total", "items"]);
        assert_eq!(t.words, vec!["carts"]);
        let t = terms("The parseHeader function drops the last byte. Version 1.2 is fine.");
        assert_eq!(t.identifiers, vec!["parseHeader"]);
        assert!(t.paths.is_empty(), "{:?}", t.paths);
        assert!(
            t.words.contains(&"Version".to_string()) && t.words.contains(&"byte".to_string()),
            "{t:?}"
        );
    }

    fn repo() -> Vec<(String, String)> {
        let mut files = vec![
            (
                "src/cart.rs".to_string(),
                "pub struct Cart { items: Vec<u32> }\n\npub fn compute_total(cart: &Cart) -> u32 {\n    cart.items.iter().sum()\n}\n"
                    .to_string(),
            ),
            (
                "src/main.rs".to_string(),
                "fn main() {\n    let t = cart::compute_total(&c);\n}\n".to_string(),
            ),
            ("README.md".to_string(), "A shop.\n".to_string()),
        ];
        // A large file that defines the symbol far from its start.
        let mut big = String::new();
        for i in 0..2000 {
            big.push_str(&format!("fn helper_{i}() {{}}\n"));
        }
        big.push_str("pub fn apply_discount(total: u32) -> u32 {\n    total - 1\n}\n");
        files.push(("src/discount.rs".to_string(), big));
        files
    }

    fn sources(files: &[(String, String)]) -> Vec<SourceFile<'_>> {
        files.iter().map(|(p, t)| SourceFile { path: p, text: t }).collect()
    }

    #[test]
    fn the_defining_file_comes_first_and_whole_when_it_fits() {
        let files = repo();
        let s = select(&sources(&files), "compute_total is wrong for empty carts", 100_000);
        assert_eq!(s.whole[0].0, "src/cart.rs");
        assert!(s.shown().any(|p| p == "src/main.rs"), "the user is shown too: {s:?}");
        assert!(!s.shown().any(|p| p == "README.md"));
    }

    #[test]
    fn a_large_file_is_shown_as_numbered_excerpts_around_the_definition() {
        let files = repo();
        let s = select(&sources(&files), "apply_discount() subtracts one too many", 6_000);
        assert!(s.whole.is_empty(), "{:?}", s.whole.iter().map(|w| &w.0).collect::<Vec<_>>());
        let (path, text) = &s.excerpts[0];
        assert_eq!(path, "src/discount.rs");
        assert!(text.contains("2001| pub fn apply_discount(total: u32) -> u32 {"), "{text}");
        assert!(text.starts_with("…\n"), "{text}");
        assert!(text.chars().count() <= 6_000 * 6 / 10);
    }

    #[test]
    fn a_named_path_wins_and_nothing_is_shown_without_evidence() {
        let files = repo();
        let s = select(&sources(&files), "Typo in `README.md`", 100_000);
        assert_eq!(s.shown().collect::<Vec<_>>(), vec!["README.md"]);
        let s = select(&sources(&files), "it is slow", 100_000);
        assert_eq!(s, Selection::default());
    }

    #[test]
    fn the_budget_holds_and_what_did_not_fit_is_named() {
        let files = repo();
        for budget in [0, 50, 200, 1_000, 5_000, 50_000] {
            let s = select(&sources(&files), "compute_total and apply_discount in Cart", budget);
            assert!(
                s.chars() + (s.whole.len() + s.excerpts.len()) * FENCE_CHARS <= budget,
                "{budget}: {s:?}"
            );
            let named: Vec<&str> = s.shown().chain(s.left_out.iter().map(String::as_str)).collect();
            assert!(
                named.contains(&"src/cart.rs") && named.contains(&"src/discount.rs"),
                "{budget}: {named:?}"
            );
        }
    }
}

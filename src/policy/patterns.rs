//! What orch must never post, and what a patch must never carry.
//!
//! **Dangerous patterns** (SPEC §7) are checked on every text orch would post: comment bodies,
//! pull request titles and bodies, label names. The built-in ones are below ([`BUILTIN`]); a
//! repository adds its own in `comments.dangerous_patterns` (regexes, compiled with multi-line
//! mode on so that `^` and `$` match at line boundaries; `(?-m)` turns that off). All of them,
//! built-in and configured, form one `RegexSet`, so a text is read once whatever their number.
//! The built-ins read the raw text, code blocks and quotations included: other bots do not all
//! honour Markdown the way orch's own command parser does, so a command inside a code block still
//! blocks the proposal. That errs towards blocking.
//!
//! **Secrets** ([`SecretScanner`]) are looked for in the content a patch adds: private key blocks,
//! AWS access key IDs, GitHub tokens, Slack tokens and webhooks, Google API keys, Stripe live keys,
//! and generic `api_key = "…"` assignments. Keeping false positives low:
//!
//! - every token kind is anchored on its fixed prefix and length (`AKIA` + 16 upper-case
//!   alphanumerics, `ghp_` + at least 36 alphanumerics, …) between ASCII word boundaries, so a
//!   word merely containing `AKIA` or `ghp_` does not count;
//! - a private key needs the PEM armour line `-----BEGIN … PRIVATE KEY-----` (public keys and
//!   certificates pass);
//! - the generic rule needs a key-like name (an identifier containing `api_key`, `apikey`,
//!   `secret`, `token`, `password`, `passwd`, `access_key`, `auth_key`, …) assigned (`=`, `:`,
//!   `:=`, `=>`) a *quoted* value of 16 to 200 printable ASCII characters without blanks that
//!   also looks random: letters and digits both present, Shannon entropy of at least 3.5 bits
//!   per character, no placeholder words (`example`, `changeme`, `your`, `xxxx`, …), no template
//!   syntax (`${`, `{{`, `%s`, `<`), no URL, and not an identifier (parts separated by `_`, `-`,
//!   `.`, `/` or `:`, none mixing letters and digits, like `SERVICE_10_API_KEY`). So
//!   `token = "${{ secrets.TOKEN }}"`, `password = "changeme-changeme"`,
//!   `api_key_name = "SERVICE_10_API_KEY"` and `api_key = os.environ["API_KEY"]` all pass.
//!
//! A finding names the kind and the line, never the value.

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

/// One built-in dangerous pattern: what it is called in a verdict and its regex.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    pub name: &'static str,
    pub regex: &'static str,
    /// Whether matches inside Markdown code (inline code spans, fenced blocks) are ignored:
    /// true for mentions, which GitHub does not notify from code; false for commands, which
    /// other bots may read from the raw text.
    pub outside_code_only: bool,
}

/// The start of a line as a bot reading the raw text sees it: blanks and hidden HTML comments
/// (orch's own parser cuts those out before looking for `/orch`) may come first.
macro_rules! line_start {
    () => {
        r"(?miR)^(?:\s|<!--(?s:.)*?-->|-->)*"
    };
}

/// Built-in dangerous patterns (SPEC §7).
pub const BUILTIN: &[Builtin] = &[
    Builtin {
        name: "built-in: slash command (orch, Prow) at the start of a line",
        regex: concat!(
            line_start!(),
            r"/(?:orch|merge|approve|lgtm|assign|unassign|close|reopen|hold|unhold|retest|test|ok-to-test|cc|uncc|label|",
            r"remove-label|lifecycle|kind|priority|area|milestone|retitle|lock|unlock|cherry-?pick|override|skip|rebase|",
            r"squash|backport|deploy|shipit)(?:\s|$)"
        ),
        outside_code_only: false,
    },
    Builtin {
        name: "built-in: Atlantis command at the start of a line",
        regex: concat!(
            line_start!(),
            r"atlantis\s+(?:apply|plan|unlock|approve_policies|import|state|version)(?-u:\b)"
        ),
        outside_code_only: false,
    },
    Builtin {
        name: "built-in: merge-bot command at the start of a line",
        regex: concat!(
            line_start!(),
            r"(?:@?bors\s+(?:r\+|r=|merge|try|delegate)|@dependabot\s+(?:merge|squash|rebase|recreate|ignore|close)|",
            r"@mergifyio\s+(?:queue|rebase|refresh|backport|update|requeue)|@kodiakhq\s+merge)"
        ),
        outside_code_only: false,
    },
    Builtin {
        name: "built-in: team mention (@org/team)",
        regex: r"(?:^|[^\w@/.`-])@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?/[A-Za-z0-9][\w.-]*",
        outside_code_only: true,
    },
    Builtin {
        name: "built-in: mass mention (@everyone, @here, @channel)",
        regex: r"(?i)(?:^|[^\w@/.`-])@(?:everyone|here|channel)(?-u:\b)",
        outside_code_only: true,
    },
    Builtin {
        name: "built-in: hidden HTML comment imitating orch's markers (<!-- orch…)",
        regex: r"(?i)<!--\s*orch(?-u:\b)",
        outside_code_only: false,
    },
];

/// How many matches of one pattern a scan reports (a text full of `/merge` lines need not
/// produce a thousand violations).
pub const MAX_MATCHES_PER_PATTERN: usize = 10;

/// Configured patterns may not build automata larger than this (bytes).
const SIZE_LIMIT: usize = 4 << 20;

fn configured(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern).multi_line(true).size_limit(SIZE_LIMIT).build()
}

/// A regex error on one line (the crate's own message draws the pattern with a caret under it).
fn one_line(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    last.trim().trim_start_matches("error: ").to_string()
}

/// Whether a configured pattern compiles; the reason on one line when not.
pub fn check_configured(pattern: &str) -> Result<(), String> {
    configured(pattern).map(|_| ()).map_err(|e| one_line(&e))
}

/// The built-in and the configured dangerous patterns, compiled once per policy version.
#[derive(Debug, Clone)]
pub struct DangerousPatterns {
    set: RegexSet,
    /// The same patterns one by one, to cut an excerpt around a match the set reported.
    each: Vec<Regex>,
    names: Vec<String>,
}

/// A dangerous pattern found in a text: the pattern's name (or configured source) and the line
/// it matched, made safe to quote (see [`excerpt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DangerousMatch {
    pub pattern: String,
    pub excerpt: String,
}

impl DangerousPatterns {
    /// The built-ins plus `configured`; an invalid configured pattern is `Err((index, reason))`.
    pub fn new(configured_patterns: &[String]) -> Result<DangerousPatterns, (usize, String)> {
        let mut each = Vec::with_capacity(BUILTIN.len() + configured_patterns.len());
        let mut names = Vec::with_capacity(each.capacity());
        for b in BUILTIN {
            each.push(Regex::new(b.regex).expect("built-in patterns compile"));
            names.push(b.name.to_string());
        }
        for (i, p) in configured_patterns.iter().enumerate() {
            each.push(configured(p).map_err(|e| (i, one_line(&e)))?);
            names.push(p.clone());
        }
        // The set gets the configured ones with multi-line mode written in, so that one builder
        // setting serves both kinds (the built-ins carry their own flags).
        let sources = BUILTIN
            .iter()
            .map(|b| b.regex.to_string())
            .chain(configured_patterns.iter().map(|p| format!("(?m:{p})")));
        let set = RegexSetBuilder::new(sources)
            .size_limit(SIZE_LIMIT * 4)
            .build()
            .map_err(|e| (usize::MAX, one_line(&e)))?;
        Ok(DangerousPatterns { set, each, names })
    }

    /// How many patterns there are, built-ins included.
    pub fn len(&self) -> usize {
        self.each.len()
    }

    pub fn is_empty(&self) -> bool {
        self.each.is_empty()
    }

    /// Every match in `text`, in pattern order, then text order: one per distinct excerpt (line),
    /// at most [`MAX_MATCHES_PER_PATTERN`] per pattern. The set reads the text once; only the
    /// patterns it reports are run again to find where.
    pub fn scan(&self, text: &str) -> Vec<DangerousMatch> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<DangerousMatch> = Vec::new();
        let mut visible: Option<String> = None;
        for i in self.set.matches(text).into_iter() {
            let first = out.len();
            let haystack = if BUILTIN.get(i).is_some_and(|b| b.outside_code_only) {
                visible.get_or_insert_with(|| blank_code(text)).as_str()
            } else {
                text
            };
            for m in self.each[i].find_iter(haystack) {
                let excerpt = excerpt(text, m.start());
                if out[first..].iter().any(|d| d.excerpt == excerpt) {
                    continue;
                }
                out.push(DangerousMatch {
                    pattern: self.names[i].clone(),
                    excerpt,
                });
                if out.len() - first == MAX_MATCHES_PER_PATTERN {
                    break;
                }
            }
        }
        out
    }
}

/// `text` with Markdown code blanked out (each byte of a fenced block or an inline code span,
/// backticks and fences included, becomes a space; line breaks stay), so that offsets and lines
/// are those of `text`. Indented code is left as it is (it errs towards reporting).
pub fn blank_code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut fence: Option<(char, usize)> = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start_matches(' ');
        let run = |c: char| trimmed.chars().take_while(|&x| x == c).count();
        let opener = ['`', '~'].into_iter().map(|c| (c, run(c))).find(|&(_, n)| n >= 3);
        match (fence, opener) {
            (None, Some((c, n))) if line.len() - trimmed.len() < 4 => {
                fence = Some((c, n));
                blank_all(line, &mut out);
            }
            (Some((c, n)), Some((c2, n2))) if c == c2 && n2 >= n && trimmed[n2..].trim().is_empty() => {
                fence = None;
                blank_all(line, &mut out);
            }
            (Some(_), _) => blank_all(line, &mut out),
            (None, _) => blank_spans(line, &mut out),
        }
    }
    out
}

/// Every byte of `line` but its line break as a space.
fn blank_all(line: &str, out: &mut String) {
    for c in line.chars() {
        match c {
            '\n' | '\r' => out.push(c),
            c => out.extend(std::iter::repeat(' ').take(c.len_utf8())),
        }
    }
}

/// One line with its inline code spans (a run of n backticks up to the next run of exactly n)
/// blanked; an unclosed run is literal text. Blanked characters become spaces byte for byte.
fn blank_spans(line: &str, out: &mut String) {
    let bytes = line.as_bytes();
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        if bytes[i] != b'`' {
            i += 1;
            continue;
        }
        let n = bytes[i..].iter().take_while(|&&b| b == b'`').count();
        let mut j = i + n;
        let mut close = None;
        while j < bytes.len() {
            if bytes[j] == b'`' {
                let m = bytes[j..].iter().take_while(|&&b| b == b'`').count();
                if m == n {
                    close = Some(j + m);
                    break;
                }
                j += m;
            } else {
                j += 1;
            }
        }
        match close {
            Some(end) => {
                out.push_str(&line[copied..i]);
                out.extend(std::iter::repeat(' ').take(end - i));
                copied = end;
                i = end;
            }
            None => i += n,
        }
    }
    out.push_str(&line[copied..]);
}

/// The line of `text` holding byte `at`, trimmed, at most 80 characters, with backticks turned
/// into `'`, `<`/`>` into `‹`/`›` and control characters into spaces, so that it can be quoted
/// inside a code span of a comment without becoming a command, a mention or a marker itself (a
/// raw `<!-- orch:action:1 -->`, even in a code span, would fool a search for orch's markers).
pub fn excerpt(text: &str, at: usize) -> String {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    // A match may begin on the line break before what it found (`(?:^|[^\w])@…`, `^\s*/…`).
    at += text[at..].len() - text[at..].trim_start_matches(['\n', '\r']).len();
    let start = text[..at].rfind(['\n', '\r']).map_or(0, |i| i + 1);
    let line = text[start..]
        .split(['\n', '\r'])
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    let mut out: String = line.chars().take(80).map(inert_char).collect();
    if line.chars().count() > 80 {
        out.push('…');
    }
    out
}

/// A secret found in a text: its kind and 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFinding {
    pub kind: &'static str,
    pub line: u32,
}

/// The kinds of secret, most specific first; the generic assignment comes last.
const SECRET_KINDS: &[(&str, &str)] = &[
    ("private key", r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----"),
    ("AWS access key ID", r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}(?-u:\b)"),
    (
        "GitHub token",
        r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{40,255})(?-u:\b)",
    ),
    ("Slack token", r"(?-u:\b)xox[abeoprs]-[A-Za-z0-9-]{10,250}"),
    (
        "Slack webhook URL",
        r"https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+",
    ),
    ("Google API key", r"(?-u:\b)AIza[0-9A-Za-z_-]{35}(?-u:\b)"),
    ("Stripe live key", r"(?-u:\b)[rs]k_live_[0-9A-Za-z]{24,99}(?-u:\b)"),
];

const GENERIC_KIND: &str = "secret assigned in code (api_key = \"…\")";

/// The operator and quoted value of an assignment (`= "…"`, `: '…'`, `=> "…"`, `:= "…"`): 16 to
/// 200 printable ASCII characters without blanks or quotes. The key before it is checked by hand
/// ([`key_like`]): one case-sensitive regex with a cheap literal start reads clean content at
/// several hundred MB/s, where a case-insensitive regex over every key spelling did not.
const ASSIGNED_VALUE: &str = r#"[:=]>?[ \t]*["'][!#-&(-~]{16,200}["']"#;

/// Words that make an identifier a credential's name (compared lower-cased).
const KEY_WORDS: &[&str] = &[
    "apikey",
    "api_key",
    "api-key",
    "secret",
    "token",
    "password",
    "passwd",
    "access_key",
    "access-key",
    "accesskey",
    "auth_key",
    "auth-key",
    "authkey",
];

/// Whether the text before an assignment's operator ends with a credential-like name: the
/// trailing identifier (`[A-Za-z0-9_.-]`, quotes and blanks before the operator skipped, at most
/// 64 characters) contains one of [`KEY_WORDS`].
fn key_like(before: &str) -> bool {
    let trimmed = before.trim_end_matches([' ', '\t', ':']);
    let trimmed = trimmed.strip_suffix(['"', '\'']).unwrap_or(trimmed);
    let start = trimmed
        .bytes()
        .rev()
        .take(64)
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        .count();
    let ident = trimmed[trimmed.len() - start..].to_ascii_lowercase();
    !ident.is_empty() && KEY_WORDS.iter().any(|w| ident.contains(w))
}

/// The secret scanner: one regex for every token kind at once (each anchored on a fixed prefix,
/// so clean content is skipped by a literal search) and one for quoted assignments, whose key and
/// value are then judged by [`key_like`] and [`looks_random`].
#[derive(Debug, Clone)]
pub struct SecretScanner {
    specific: Regex,
    kinds: Vec<(&'static str, Regex)>,
    assigned: Regex,
}

impl Default for SecretScanner {
    fn default() -> Self {
        SecretScanner::new()
    }
}

impl SecretScanner {
    pub fn new() -> SecretScanner {
        let alternatives: Vec<String> = SECRET_KINDS.iter().map(|(_, r)| format!("(?:{r})")).collect();
        SecretScanner {
            specific: Regex::new(&alternatives.join("|")).expect("secret patterns compile"),
            kinds: SECRET_KINDS
                .iter()
                .map(|(k, r)| (*k, Regex::new(r).expect("secret patterns compile")))
                .collect(),
            assigned: Regex::new(ASSIGNED_VALUE).expect("secret patterns compile"),
        }
    }

    /// Every secret in `text`, in text order; a line may hold several.
    pub fn scan(&self, text: &str) -> Vec<SecretFinding> {
        let mut found: Vec<(usize, &'static str)> = Vec::new();
        for m in self.specific.find_iter(text) {
            let kind = self
                .kinds
                .iter()
                .find(|(_, re)| re.is_match(m.as_str()))
                .map_or(SECRET_KINDS[0].0, |(k, _)| *k);
            found.push((m.start(), kind));
        }
        let specific = found.len();
        for m in self.assigned.find_iter(text) {
            let s = m.as_str();
            let open = s.find(['"', '\'']).unwrap_or(0);
            let value = &s[open + 1..s.len() - 1];
            if !looks_random(value) || found[..specific].iter().any(|&(at, _)| (m.start()..m.end()).contains(&at)) {
                continue;
            }
            let line_start = text[..m.start()].rfind('\n').map_or(0, |i| i + 1);
            if key_like(&text[line_start..m.start()]) {
                found.push((line_start, GENERIC_KIND));
            }
        }
        found.sort_by_key(|&(at, _)| at);
        let (mut line, mut counted) = (1u32, 0usize);
        found
            .into_iter()
            .map(|(at, kind)| {
                line += text.as_bytes()[counted..at].iter().filter(|&&b| b == b'\n').count() as u32;
                counted = at;
                SecretFinding { kind, line }
            })
            .collect()
    }
}

/// Whether a quoted value looks like a real credential rather than a placeholder, a reference or
/// a word (see the module documentation).
pub fn looks_random(value: &str) -> bool {
    // Cheapest first: letters and digits both present.
    let has_digit = value.bytes().any(|b| b.is_ascii_digit());
    let has_alpha = value.bytes().any(|b| b.is_ascii_alphabetic());
    if !(has_digit && has_alpha) {
        return false;
    }
    // An identifier (`SERVICE_10_API_KEY`, `db.primary.host-2`): separated parts, none of which
    // mixes letters and digits. A random value of 16+ characters nearly always mixes them.
    let mut parts = value.split(['_', '-', '.', '/', ':']).filter(|p| !p.is_empty());
    let pure = |p: &str| p.bytes().all(|b| b.is_ascii_alphabetic()) || p.bytes().all(|b| b.is_ascii_digit());
    let separated = value.split(['_', '-', '.', '/', ':']).filter(|p| !p.is_empty()).nth(1).is_some();
    if separated && parts.all(pure) {
        return false;
    }
    const PLACEHOLDERS: &[&str] = &[
        "example",
        "sample",
        "dummy",
        "placeholder",
        "changeme",
        "change_me",
        "your",
        "xxxx",
        "fake",
        "redacted",
        "secret",
        "password",
        "token",
        "${",
        "{{",
        "%s",
        "<",
        "://",
    ];
    let lower = value.to_ascii_lowercase();
    if PLACEHOLDERS.iter().any(|p| lower.contains(p)) {
        return false;
    }
    shannon_entropy(value) >= 3.5
}

/// Bits per character of `s`, from its byte frequencies.
pub fn shannon_entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// A character of untrusted text as it may be quoted in a code span: no backtick to leave the
/// span, no `<`/`>` to become markup or imitate orch's markers, no control character.
pub fn inert_char(c: char) -> char {
    match c {
        '`' => '\'',
        '<' => '‹',
        '>' => '›',
        c if c.is_control() => ' ',
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        DangerousPatterns::new(&[])
            .unwrap()
            .scan(text)
            .into_iter()
            .map(|m| m.pattern)
            .collect()
    }

    #[test]
    fn slash_commands_count_at_the_start_of_a_line_only() {
        for text in [
            "/merge",
            "Looks good.\n/merge",
            "  /lgtm",
            "/orch approve",
            "/Approve\r\n",
            "<!-- x --> /orch approve",
            "ok\r/hold",
            "/test all",
        ] {
            assert_eq!(names(text).len(), 1, "{text:?}");
        }
        for text in [
            "please do not /merge yet",
            "see /tests/fixtures",
            "/merged already",
            "the /orch prefix",
            "/usr/bin/env",
        ] {
            assert!(names(text).is_empty(), "{text:?}: {:?}", names(text));
        }
    }

    #[test]
    fn bots_mentions_and_markers() {
        assert_eq!(names("atlantis apply -p prod").len(), 1);
        assert_eq!(names("bors r+").len(), 1);
        assert_eq!(names("@dependabot merge").len(), 1);
        assert_eq!(names("cc @acme/everyone please").len(), 1);
        assert_eq!(names("@here look").len(), 1);
        assert_eq!(names("<!-- orch:action:1 -->").len(), 1);
        // The keyed shape (SPEC §6), any tag, any spacing or case.
        assert_eq!(names("<!-- orch:action:7:0123456789abcdef0123456789abcdef -->").len(), 1);
        assert_eq!(names("<!--ORCH:action:7:ff-->").len(), 1);
        assert_eq!(names("<!--orch:approved-->").len(), 1);
        for clean in [
            "mail me@acme.com/x",
            "install `@types/node`",
            "see https://x.com/@user/status",
            "<!-- orchestra -->",
            "we plan to run atlantis later",
            "thanks @mara",
        ] {
            assert!(names(clean).is_empty(), "{clean:?}: {:?}", names(clean));
        }
    }

    #[test]
    fn mentions_in_code_are_not_mentions() {
        assert!(names("install `@types/node` or ``@acme/core``").is_empty());
        assert!(names("```sh\nnpm i @acme/tool\n```\n").is_empty());
        assert_eq!(names("```\n@acme/x\n```\nthen @acme/team").len(), 1);
        assert_eq!(names("an `unclosed @acme/team").len(), 1);
        // Commands count even in code: other bots read raw text.
        assert_eq!(names("```\n/merge\n```").len(), 1);
        let blanked = blank_code("a `b` c\n```\nx\n```\nd");
        assert_eq!(blanked.len(), "a `b` c\n```\nx\n```\nd".len());
        assert_eq!(blanked, "a     c\n   \n \n   \nd");
        assert_eq!(blank_code("```\né\n```").len(), "```\né\n```".len());
    }

    #[test]
    fn excerpts_are_one_safe_line() {
        assert_eq!(excerpt("a\n  /merge `now`\nb", 2), "/merge 'now'");
        assert_eq!(excerpt("x\n/merge", 1), "/merge");
        assert_eq!(excerpt("<!-- orch:action:1 -->", 0), "‹!-- orch:action:1 --›");
        assert!(excerpt(&"y".repeat(200), 0).ends_with('…'));
    }

    #[test]
    fn secrets_have_a_kind_and_a_line() {
        let s = SecretScanner::new();
        let text = "fn main() {}\nlet k = \"AKIAIOSFODNN7EXAMPLE\";\n-----BEGIN OPENSSH PRIVATE KEY-----\n";
        let found = s.scan(text);
        assert_eq!(
            found,
            vec![
                SecretFinding {
                    kind: "AWS access key ID",
                    line: 2
                },
                SecretFinding {
                    kind: "private key",
                    line: 3
                }
            ]
        );
        let generic = s.scan("x\nAPI_KEY = \"q8Zr2LmX0vTn4PbW7yKc\"\n");
        assert_eq!(generic[0].line, 2);
        assert_eq!(generic[0].kind, GENERIC_KIND);
        for spelled in [
            "{\"apiKey\": \"q8Zr2LmX0vTn4PbW7yKc\"}",
            "client_secret: 'q8Zr2LmX0vTn4PbW7yKc'",
            "auth_token := \"q8Zr2LmX0vTn4PbW7yKc\"",
            ":password => \"q8Zr2LmX0vTn4PbW7yKc\"",
            "config.db.password=\"q8Zr2LmX0vTn4PbW7yKc\"",
        ] {
            assert_eq!(s.scan(spelled).len(), 1, "{spelled}");
        }
        // A token inside an assignment is reported once, as its kind.
        let both = s.scan("aws_key = \"AKIAIOSFODNN7EXAMPLE\"");
        assert_eq!(both.iter().map(|f| f.kind).collect::<Vec<_>>(), ["AWS access key ID"]);
        // Not a credential's name, or not random.
        assert!(s.scan("checksum = \"q8Zr2LmX0vTn4PbW7yKc\"").is_empty());
        assert!(s.scan("token = \"aaaaaaaaaaaaaaaa1111\"").is_empty());
        for clean in [
            "token = \"${{ secrets.TOKEN }}\"",
            "password = \"changeme-changeme\"",
            "api_key = os.environ[\"API_KEY\"]",
            "let ghp_count = 3;",
            "-----BEGIN PUBLIC KEY-----",
            "AKIA_PREFIX = 'AKIA'",
            "secret_name = \"database_connection_string\"",
            "api_key_name = \"SERVICE_10_API_KEY\"",
            "token_path = \"config/v2/tokens.2024.json\"",
        ] {
            assert!(s.scan(clean).is_empty(), "{clean:?}: {:?}", s.scan(clean));
        }
    }

    #[test]
    fn configured_errors_are_one_line() {
        let e = check_configured("(unclosed").unwrap_err();
        assert!(!e.contains('\n') && e.contains("unclosed"), "{e}");
        assert_eq!(DangerousPatterns::new(&["ok".into(), "[z-a]".into()]).unwrap_err().0, 1);
    }
}

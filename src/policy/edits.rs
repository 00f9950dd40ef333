//! SPEC §9's `edit` file action: exact replacements in a file's text on the base commit.
//!
//! Each `old` must occur exactly once in the text on the base commit, and the edits apply in
//! order. An `old` that no longer occurs exactly once when its turn comes (an earlier edit of
//! the same answer overlapped it) is refused too: the model meant a place in the file it was
//! shown, and orch will not guess which. A failure names the edit (1-based) and why, so that it
//! can be fed back to the model and shown to the user.

/// Why an edit could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("edit {edit}: {problem}")]
pub struct EditProblem {
    /// 1-based, as the user reads it.
    pub edit: usize,
    pub problem: String,
}

/// How many characters of an `old` a message quotes.
const QUOTED_CHARS: usize = 60;

/// The text after applying `edits` (pairs of `old`, `new`) to `base`.
pub fn apply<'a>(base: &str, edits: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<String, EditProblem> {
    let mut text = base.to_string();
    for (i, (old, new)) in edits.into_iter().enumerate() {
        let edit = i + 1;
        if old.is_empty() {
            return Err(EditProblem {
                edit,
                problem: "`old` is empty; it must be text of the file that occurs exactly once".into(),
            });
        }
        let in_base = occurrences(base, old);
        if in_base != 1 {
            return Err(EditProblem {
                edit,
                problem: match in_base {
                    0 => format!("`old` ({}) does not occur in the file", quote(old)),
                    n => format!("`old` ({}) occurs {n} times in the file; it must occur exactly once", quote(old)),
                },
            });
        }
        let Some(at) = text.find(old).filter(|_| occurrences(&text, old) == 1) else {
            return Err(EditProblem {
                edit,
                problem: format!("`old` ({}) overlaps an earlier edit of the same file", quote(old)),
            });
        };
        text.replace_range(at..at + old.len(), new);
    }
    Ok(text)
}

/// Non-overlapping occurrences, as a reader would count them.
fn occurrences(text: &str, needle: &str) -> usize {
    text.matches(needle).take(3).count()
}

/// The start of `old`, on one line, for a message.
fn quote(old: &str) -> String {
    let flat: String = old.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let shown: String = flat.chars().take(QUOTED_CHARS).collect();
    if flat.chars().count() > QUOTED_CHARS {
        format!("\"{shown}…\"")
    } else {
        format!("\"{shown}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_apply_in_order_to_unique_text() {
        let base = "fn a() -> u32 {\n    41\n}\n\nfn b() {}\n";
        let out = apply(base, [("    41\n", "    42\n"), ("fn b() {}", "fn b() { a(); }")]).unwrap();
        assert_eq!(out, "fn a() -> u32 {\n    42\n}\n\nfn b() { a(); }\n");
        // A replacement may introduce text an earlier `old` had.
        assert_eq!(apply("x y", [("x", "y y"), ("x", "z")]).unwrap_err().edit, 2);
    }

    #[test]
    fn an_old_text_that_is_missing_repeated_or_empty_is_named() {
        let base = "let a = 1;\nlet a = 1;\nlet b = 2;\n";
        let missing = apply(base, [("let c", "let d")]).unwrap_err();
        assert_eq!(missing.to_string(), "edit 1: `old` (\"let c\") does not occur in the file");
        let twice = apply(base, [("let b = 2;", "let b = 3;"), ("let a = 1;", "")]).unwrap_err();
        assert_eq!(
            twice.to_string(),
            "edit 2: `old` (\"let a = 1;\") occurs 2 times in the file; it must occur exactly once"
        );
        assert_eq!(apply(base, [("", "x")]).unwrap_err().edit, 1);
        let long = "y".repeat(100);
        let problem = apply(base, [(long.as_str(), "")]).unwrap_err().problem;
        assert!(problem.contains(&format!("\"{}…\"", "y".repeat(60))), "{problem}");
    }

    #[test]
    fn overlapping_edits_are_refused() {
        let base = "alpha beta gamma";
        let e = apply(base, [("alpha beta", "one"), ("beta gamma", "two")]).unwrap_err();
        assert_eq!(e.edit, 2);
        assert!(e.problem.contains("overlaps an earlier edit"), "{e}");
    }
}

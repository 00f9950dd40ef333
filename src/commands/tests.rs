//! Tests of the whole grammar through its public entry points.

use super::*;

/// The results of every command line in `body`.
fn results(body: &str) -> Vec<Result<Command, ParseError>> {
    parse_comment(body).into_iter().map(|p| p.result).collect()
}

/// The single command in `body`, which must parse.
fn one(body: &str) -> Command {
    match results(body).as_slice() {
        [Ok(command)] => command.clone(),
        other => panic!("expected one command in {body:?}, got {other:?}"),
    }
}

/// The single error in `body`.
fn error(body: &str) -> ParseError {
    match results(body).as_slice() {
        [Err(e)] => e.clone(),
        other => panic!("expected one error in {body:?}, got {other:?}"),
    }
}

fn none(body: &str) {
    assert_eq!(parse_comment(body), vec![], "expected no command in {body:?}");
    assert!(!has_commands(body), "has_commands({body:?})");
}

fn propose(instruction: &str) -> Command {
    Command::Propose {
        instruction: instruction.to_string(),
    }
}

// --- verbs and arguments ---------------------------------------------------------------------

#[test]
fn approve_with_and_without_a_workflow_id() {
    assert_eq!(one("/orch approve"), Command::Approve { workflow: None });
    assert_eq!(
        one("/orch approve 42"),
        Command::Approve {
            workflow: Some(WorkflowRef(42))
        }
    );
    assert_eq!(
        one("/orch approve 007"),
        Command::Approve {
            workflow: Some(WorkflowRef(7))
        }
    );
    assert_eq!(
        one("/orch approve   42   "),
        Command::Approve {
            workflow: Some(WorkflowRef(42))
        }
    );
    assert_eq!(
        one(&format!("/orch approve {}", i64::MAX)),
        Command::Approve {
            workflow: Some(WorkflowRef(i64::MAX))
        }
    );
}

#[test]
fn approve_rejects_bad_ids_and_extra_words() {
    let bad = |given: &str| ParseError::BadWorkflowId { given: given.to_string() };
    assert_eq!(error("/orch approve 0"), bad("0"));
    assert_eq!(error("/orch approve -3"), bad("-3"));
    assert_eq!(error("/orch approve #42"), bad("#42"));
    assert_eq!(error("/orch approve 4x2"), bad("4x2"));
    assert_eq!(error("/orch approve ٤٢"), bad("٤٢"));
    assert_eq!(error("/orch approve 99999999999999999999"), bad("99999999999999999999"));
    // Prose after approve is refused rather than read as a bare approval.
    assert_eq!(error("/orch approve looks good"), bad("looks good"));
    assert_eq!(
        error("/orch approve 42 thanks!"),
        ParseError::UnexpectedArgument {
            verb: "approve",
            argument: "thanks!".to_string()
        }
    );
}

#[test]
fn approve_does_not_take_the_lines_below() {
    assert_eq!(one("/orch approve\nThanks, this looks great."), Command::Approve { workflow: None });
}

#[test]
fn reject_with_and_without_a_reason() {
    assert_eq!(one("/orch reject"), Command::Reject { reason: None });
    assert_eq!(
        one("/orch reject  wrong approach  "),
        Command::Reject {
            reason: Some("wrong approach".to_string())
        }
    );
    assert_eq!(
        one("/orch reject\ntoo risky\nfor now\n\nbye"),
        Command::Reject {
            reason: Some("too risky\nfor now".to_string())
        }
    );
}

#[test]
fn request_changes_needs_feedback() {
    assert_eq!(
        one("/orch request-changes add tests"),
        Command::RequestChanges {
            feedback: "add tests".to_string()
        }
    );
    assert_eq!(
        one("/orch request-changes\n  add tests  \nand docs"),
        Command::RequestChanges {
            feedback: "add tests\nand docs".to_string()
        }
    );
    let missing = ParseError::MissingArgument {
        verb: "request-changes",
        expected: "feedback",
    };
    assert_eq!(error("/orch request-changes"), missing);
    assert_eq!(error("/orch request-changes   \n\nlater text"), missing);
}

#[test]
fn propose_needs_an_instruction() {
    assert_eq!(one("/orch propose add a README"), propose("add a README"));
    assert_eq!(
        error("/orch propose"),
        ParseError::MissingArgument {
            verb: "propose",
            expected: "instruction"
        }
    );
}

#[test]
fn verbs_without_arguments() {
    let cases = [
        ("retry", Command::Retry),
        ("cancel", Command::Cancel),
        ("status", Command::Status),
        ("help", Command::Help),
        ("triage", Command::Triage),
        ("plan", Command::Plan),
    ];
    for (verb, command) in cases {
        assert_eq!(one(&format!("/orch {verb}")), command);
        assert_eq!(one(&format!("/orch {verb}   ")), command);
        // The next lines are ordinary conversation, not arguments.
        assert_eq!(one(&format!("/orch {verb}\nplease")), command);
        assert_eq!(
            error(&format!("/orch {verb} now please")),
            ParseError::UnexpectedArgument {
                verb: command.verb(),
                argument: "now please".to_string()
            }
        );
    }
}

#[test]
fn verb_and_needs_write() {
    let all = [
        Command::Approve { workflow: None },
        Command::Reject { reason: None },
        Command::RequestChanges { feedback: "f".into() },
        Command::Retry,
        Command::Cancel,
        Command::Status,
        Command::Help,
        Command::Triage,
        Command::Plan,
        propose("p"),
    ];
    let verbs: Vec<&str> = all.iter().map(Command::verb).collect();
    assert_eq!(
        verbs,
        [
            "approve",
            "reject",
            "request-changes",
            "retry",
            "cancel",
            "status",
            "help",
            "triage",
            "plan",
            "propose"
        ]
    );
    let open: Vec<&str> = all.iter().filter(|c| !c.needs_write()).map(Command::verb).collect();
    assert_eq!(open, ["status", "help"]);
}

#[test]
fn display_is_canonical_and_parses_back() {
    let cases = [
        (Command::Approve { workflow: None }, "/orch approve"),
        (
            Command::Approve {
                workflow: Some(WorkflowRef(42)),
            },
            "/orch approve 42",
        ),
        (Command::Reject { reason: None }, "/orch reject"),
        (Command::Reject { reason: Some("no".into()) }, "/orch reject no"),
        (Command::RequestChanges { feedback: "a\nb".into() }, "/orch request-changes a\nb"),
        (Command::Retry, "/orch retry"),
        (Command::Cancel, "/orch cancel"),
        (Command::Status, "/orch status"),
        (Command::Help, "/orch help"),
        (Command::Triage, "/orch triage"),
        (Command::Plan, "/orch plan"),
        (propose("do it"), "/orch propose do it"),
    ];
    for (command, line) in cases {
        assert_eq!(command.to_string(), line);
        assert_eq!(one(line), command);
    }
    assert_eq!(one("/ORCH Request-Changes   x").to_string(), "/orch request-changes x");
}

#[test]
fn verbs_and_prefix_are_case_insensitive() {
    assert_eq!(one("/orch APPROVE"), Command::Approve { workflow: None });
    assert_eq!(one("/Orch Status"), Command::Status);
    assert_eq!(one("/ORCH help"), Command::Help);
    assert_eq!(
        one("/orch REQUEST-CHANGES Keep The Case"),
        Command::RequestChanges {
            feedback: "Keep The Case".to_string()
        }
    );
}

#[test]
fn a_bare_prefix_is_missing_its_verb() {
    assert_eq!(error("/orch"), ParseError::MissingVerb);
    assert_eq!(error("/orch   "), ParseError::MissingVerb);
    assert_eq!(error("/orch\t\r\n"), ParseError::MissingVerb);
}

#[test]
fn unknown_verbs_and_their_suggestions() {
    let unknown = |body: &str| match error(body) {
        ParseError::UnknownVerb { verb, suggestion } => (verb, suggestion),
        other => panic!("{other:?}"),
    };
    assert_eq!(unknown("/orch aprove"), ("aprove".to_string(), Some("approve")));
    assert_eq!(
        unknown("/orch reqest-changes fix it"),
        ("reqest-changes".to_string(), Some("request-changes"))
    );
    assert_eq!(unknown("/orch stauts"), ("stauts".to_string(), Some("status")));
    assert_eq!(unknown("/orch Stauts"), ("Stauts".to_string(), Some("status")));
    assert_eq!(unknown("/orch deploy"), ("deploy".to_string(), None));
    assert_eq!(unknown("/orch lgtm"), ("lgtm".to_string(), None));
    assert_eq!(unknown("/orch approve!"), ("approve!".to_string(), Some("approve")));
    assert_eq!(unknown("/orch request changes"), ("request".to_string(), Some("request-changes")));
}

// --- where commands are found ------------------------------------------------------------------

#[test]
fn several_commands_in_order_with_line_numbers() {
    let body = "Thanks!\n\n/orch status\nsome prose\n  /orch aprove\n/orch approve 3";
    let parsed = parse_comment(body);
    let summary: Vec<(usize, &str)> = parsed.iter().map(|p| (p.line, p.text.as_str())).collect();
    assert_eq!(summary, vec![(3, "/orch status"), (5, "/orch aprove"), (6, "/orch approve 3")]);
    assert_eq!(parsed[0].result, Ok(Command::Status));
    assert!(matches!(parsed[1].result, Err(ParseError::UnknownVerb { .. })));
    assert_eq!(
        parsed[2].result,
        Ok(Command::Approve {
            workflow: Some(WorkflowRef(3))
        })
    );
}

#[test]
fn only_the_start_of_a_line_counts() {
    none("please /orch approve");
    none("`/orch approve`");
    none("**/orch approve**");
    none("- /orch approve");
}

#[test]
fn longer_words_are_not_the_prefix() {
    none("/orchestra is playing");
    none("/orchestrate");
    none("/orch:approve");
    none("/orc approve");
    none("orch approve");
}

#[test]
fn up_to_three_leading_spaces() {
    for spaces in 1..=3 {
        let body = format!("{}/orch status", " ".repeat(spaces));
        assert_eq!(one(&body), Command::Status, "{spaces} spaces");
        assert_eq!(parse_comment(&body)[0].text, "/orch status");
    }
    none("    /orch status");
    none("\t/orch status");
    none("  \t/orch status");
}

#[test]
fn fenced_code_never_counts() {
    none("```\n/orch approve\n```");
    none("```sh\n/orch approve\n```");
    none("~~~\n/orch approve\n~~~");
    none("~~~ text title=\"x\"\n/orch approve\n~~~");
    none("  ```\n/orch approve\n  ```");
    // An unclosed fence runs to the end.
    none("```\n/orch approve\n\n/orch status");
    // A shorter or different closer does not close.
    none("````\n```\n/orch approve\n~~~~\n/orch status");
    assert_eq!(results("```\n/orch approve\n```\n/orch status"), vec![Ok(Command::Status)]);
    assert_eq!(results("~~~~\n/orch approve\n~~~~~\n/orch status"), vec![Ok(Command::Status)]);
}

#[test]
fn indented_code_never_counts() {
    none("Run this:\n\n    /orch approve\n");
    none("\t/orch approve");
}

#[test]
fn quotes_never_count() {
    // Quoting someone's command in a reply must not run it again.
    none("> /orch approve");
    none(">/orch approve");
    none("> > /orch approve");
    none(">> /orch approve");
    none("   > /orch approve");
    none("> earlier comment\n> /orch approve 4");
    // A line right below quoted prose is a lazy continuation, rendered inside the quote.
    none("> Could you approve?\n/orch approve");
    // After a blank line (or an empty quote line) the author speaks again.
    assert_eq!(one("> /orch approve\n\n/orch approve"), Command::Approve { workflow: None });
    assert_eq!(one("> Could you approve?\n>\n/orch approve"), Command::Approve { workflow: None });
}

#[test]
fn html_comments_hide_commands() {
    none("<!-- /orch approve -->");
    none("<!--\n/orch approve\n-->");
    none("<!-- start\n\n/orch approve\n\nend -->");
    none("text <!--\n/orch approve\n-->");
    // An unclosed comment runs to the end.
    none("<!--\n/orch approve");
    // What is hidden inside a command line does not become an argument.
    assert_eq!(one("/orch approve <!-- 42 -->"), Command::Approve { workflow: None });
    assert_eq!(parse_comment("/orch approve <!-- 42 -->")[0].text, "/orch approve");
}

#[test]
fn text_after_a_comment_on_the_same_line_is_visible() {
    // Decision: only hidden text is dropped. The comment is cut out and the rest of the line is
    // read as if it started there, so a command right after a comment counts, as it is rendered
    // where the reader sees it. A command after other visible text does not (not at line start).
    assert_eq!(one("<!-- x --> /orch status"), Command::Status);
    assert_eq!(parse_comment("<!-- x --> /orch status")[0].text, "/orch status");
    assert_eq!(one("<!-- a\nb --> /orch status"), Command::Status);
    assert_eq!(parse_comment("<!-- a\nb --> /orch status")[0].line, 2);
    none("say <!-- x --> /orch status");
    // The 3-space rule applies to what is left.
    none("<!-- x -->    /orch status");
}

#[test]
fn crlf_bodies() {
    let body = "hi\r\n/orch approve 5\r\n```\r\n/orch reject\r\n```\r\n/orch propose a\r\nb\r\n\r\nc\r\n";
    let parsed = parse_comment(body);
    let lines: Vec<usize> = parsed.iter().map(|p| p.line).collect();
    assert_eq!(lines, vec![2, 6]);
    assert_eq!(
        parsed[0].result,
        Ok(Command::Approve {
            workflow: Some(WorkflowRef(5))
        })
    );
    assert_eq!(parsed[1].result, Ok(propose("a\nb")));
    assert_eq!(parsed[1].text, "/orch propose a");
    none("> /orch approve\r\n");
    none("```\r\n/orch approve\r\n```   \r\n");
}

#[test]
fn multi_line_instruction_ends_at_a_blank_line() {
    let body = "/orch propose Add a CONTRIBUTING file\nthat explains the review process\n   and the labels.\n\nThanks!";
    assert_eq!(
        one(body),
        propose("Add a CONTRIBUTING file\nthat explains the review process\nand the labels.")
    );
}

#[test]
fn multi_line_instruction_ends_at_the_next_command() {
    let body = "/orch propose first\nsecond\n/orch status\nafter";
    assert_eq!(results(body), vec![Ok(propose("first\nsecond")), Ok(Command::Status)]);
    // A bad command line still ends it.
    let body = "/orch propose first\n/orch\nafter";
    assert_eq!(results(body), vec![Ok(propose("first")), Err(ParseError::MissingVerb)]);
    // `/orchestra` is prose, so it continues the text.
    assert_eq!(one("/orch propose tune\n/orchestra parts"), propose("tune\n/orchestra parts"));
}

#[test]
fn multi_line_instruction_ends_at_code_quotes_and_comments() {
    assert_eq!(one("/orch propose a\n```\nb\n```\nc"), propose("a"));
    assert_eq!(one("/orch propose a\n> b\nc"), propose("a"));
    assert_eq!(one("/orch propose a\n    b\nc"), propose("a"));
    assert_eq!(one("/orch propose a\n<!-- b -->\nc"), propose("a"));
    // A comment inside a line only hides its own text.
    assert_eq!(one("/orch propose a <!-- hidden --> b\nc <!-- d --> e"), propose("a  b\nc  e"));
}

#[test]
fn the_instruction_may_start_on_the_next_line() {
    assert_eq!(one("/orch propose\nRename foo to bar."), propose("Rename foo to bar."));
}

#[test]
fn has_commands_matches_parse_comment() {
    assert!(has_commands("/orch status"));
    assert!(has_commands("x\n/orch nonsense"));
    assert!(has_commands("/orch"));
    assert!(!has_commands(""));
    assert!(!has_commands("no commands here"));
    assert!(!has_commands("> /orch approve"));
    assert!(!has_commands("```\n/orch approve\n```"));
}

#[test]
fn the_help_text_holds_no_commands_and_names_every_verb() {
    let help = help_text();
    assert!(!has_commands(&help));
    for verb in [
        "approve",
        "reject",
        "request-changes",
        "retry",
        "cancel",
        "status",
        "help",
        "triage",
        "plan",
        "propose",
    ] {
        assert!(help.contains(&format!("`/orch {verb}")), "{verb} missing from help");
    }
    assert!(help.contains("`/orch approve [workflow-id]`"));
    assert!(help.contains("`/orch propose <instruction>`"));
    let rows: Vec<&str> = help.lines().filter(|l| l.starts_with("| `/orch")).collect();
    assert_eq!(rows.len(), 10);
    let anyone: Vec<&&str> = rows.iter().filter(|r| r.ends_with("| anyone |")).collect();
    assert_eq!(anyone.len(), 2);
    assert!(anyone.iter().all(|r| r.contains("/orch status") || r.contains("/orch help")));
    assert!(rows
        .iter()
        .filter(|r| !r.ends_with("| anyone |"))
        .all(|r| r.contains("write, maintain or admin")));
}

// --- replies -----------------------------------------------------------------------------------

#[test]
fn reply_names_the_problem_suggests_and_helps() {
    let reply = error("/orch aprove").reply();
    let first = reply.lines().next().unwrap();
    assert!(first.contains("`/orch aprove`"), "{first}");
    assert!(reply.contains("Did you mean `/orch approve`?"), "{reply}");
    assert!(reply.ends_with(&help_text()));

    let reply = error("/orch deploy").reply();
    assert!(reply.contains("`/orch deploy`"));
    assert!(!reply.contains("Did you mean"));
    assert!(reply.ends_with(&help_text()));
}

#[test]
fn every_error_has_a_one_line_problem_quoting_the_input() {
    let cases = [
        ("/orch", "`/orch`"),
        ("/orch request-changes", "`/orch request-changes <feedback>`"),
        ("/orch propose", "`/orch propose <instruction>`"),
        ("/orch status now", "`now`"),
        ("/orch approve 1 2", "`2`"),
        ("/orch approve #7", "`#7`"),
    ];
    for (body, quoted) in cases {
        let reply = error(body).reply();
        let first = reply.lines().next().unwrap();
        assert!(first.contains(quoted), "{body}: {first}");
        assert!(!first.is_empty());
        assert!(reply.ends_with(&help_text()));
    }
}

#[test]
fn replies_quote_backticks_safely_and_briefly() {
    assert_eq!(code("plain"), "`plain`");
    assert_eq!(code("a`b"), "``a`b``");
    assert_eq!(code("`x`"), "`` `x` ``");
    assert_eq!(code("a``b`"), "``` a``b` ```");
    let long = "é".repeat(500);
    let quoted = code(&long);
    assert_eq!(quoted.chars().count(), QUOTE_LIMIT + 3);
    assert!(quoted.ends_with("…`"));
    let reply = error("/orch status `rm -rf` @someone").reply();
    assert!(reply.lines().next().unwrap().contains("`` `rm -rf` @someone ``"), "{reply}");
}

#[test]
fn error_display_is_plain_text() {
    assert_eq!(ParseError::MissingVerb.to_string(), "no verb after /orch");
    assert_eq!(
        ParseError::UnknownVerb {
            verb: "x".into(),
            suggestion: None
        }
        .to_string(),
        "unknown verb `x`"
    );
}

// --- robustness --------------------------------------------------------------------------------

/// A small deterministic generator (xorshift64*), so the test needs no dependency and is
/// reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn check(body: &str) {
    let parsed = parse_comment(body);
    let count = body.lines().count();
    for p in &parsed {
        assert!(p.line >= 1 && p.line <= count, "line {} of {count} in {body:?}", p.line);
        assert!(p.text.to_ascii_lowercase().starts_with("/orch"), "{:?} in {body:?}", p.text);
        if let Err(e) = &p.result {
            let _ = e.reply();
        }
    }
    assert_eq!(has_commands(body), !parsed.is_empty(), "{body:?}");
}

#[test]
fn random_and_edge_inputs_never_panic() {
    const PIECES: &[&str] = &[
        "/orch",
        "/ORCH",
        "/orchestra",
        " ",
        "   ",
        "    ",
        "\t",
        "\n",
        "\r\n",
        "\r",
        "```",
        "````",
        "~~~",
        "`",
        "``",
        ">",
        "> ",
        "<!--",
        "-->",
        "<!-->",
        "-",
        "#",
        "approve",
        "reject",
        "request-changes",
        "propose",
        "status",
        "aprove",
        "42",
        "0",
        "-1",
        "99999999999999999999999",
        "é",
        "🦀",
        "\u{0}",
        "\u{feff}",
        "\u{a0}",
        "\u{2028}",
        "ǅ",
        "İ",
        "ß",
        "x",
        "text",
        "*",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        let len = rng.below(40);
        let body: String = (0..len).map(|_| PIECES[rng.below(PIECES.len())]).collect();
        check(&body);
    }
    for _ in 0..500 {
        let len = rng.below(200);
        let body: String = (0..len)
            .map(|_| char::from_u32(rng.below(0x3000) as u32).unwrap_or('\u{fffd}'))
            .collect();
        check(&body);
    }

    let edges = [
        String::new(),
        "\n".repeat(10),
        "\r\n".repeat(10),
        "`".repeat(10_000),
        "<!--".repeat(10_000),
        "-->".repeat(10_000),
        "<!--\n".repeat(1000) + "/orch approve",
        format!("/orch propose {}", "x".repeat(200_000)),
        format!("/orch {}", "a".repeat(100_000)),
        format!("/orch approve {}", "9".repeat(10_000)),
        (1..300).map(|n| "`".repeat(n)).collect::<Vec<_>>().join(" ") + " <!--",
        "/orch status\n".repeat(2000),
        ">".repeat(5000) + " /orch approve",
        "/orch\u{a0}status".to_string(),
        "/orch\u{3000}approve".to_string(),
        "/orc\u{e9} approve".to_string(),
        "\u{feff}/orch approve".to_string(),
    ];
    for body in &edges {
        check(body);
    }
    assert_eq!(parse_comment(&"/orch status\n".repeat(2000)).len(), 2000);
}

#[test]
fn one_reply_gathers_the_answers_and_names_what_was_ignored() {
    let body: String = (0..5_000).map(|_| "/orch status\n").collect();
    let parsed = parse_comment(&body);
    assert_eq!(parsed.len(), 5_000);
    let (run, ignored) = parsed.split_at(MAX_PER_COMMENT);
    let answers: Vec<String> = run.iter().map(|_| "status".to_string()).collect();
    let reply = combined_reply(&answers, ignored);
    assert_eq!(reply.matches("status\n\n---").count(), MAX_PER_COMMENT);
    assert!(
        reply.contains("**4990 more commands were not run:** one comment runs at most 10 commands"),
        "{reply}"
    );
    assert!(
        reply.contains("line 11 `/orch status`") && reply.contains("and 4970 more"),
        "{reply}"
    );
    assert!(reply.len() < 2_000, "bounded: {} bytes", reply.len());
    assert_eq!(combined_reply(&["only".to_string()], &[]), "only");
    assert_eq!(combined_reply(&[String::new()], &[]), "");
}

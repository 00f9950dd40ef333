//! Gate 2 on a very large patch: 10,000 changed files and 200,000 changed lines against 200 path
//! rules (100 forbidden, 100 requiring approval) and 50 configured dangerous patterns (plus the
//! built-in ones and the secret scanner), on one thread. Run it through `bench/policy/run.sh`.
//!
//!   usage: policy_bench [ITERATIONS] [FILES] [LINES_PER_FILE]
//!
//! Prints the compile time, Gate 2's time per run (min / median / p90 / max over ITERATIONS runs
//! after 3 warm-up runs), a breakdown (paths only, contents only), the same patch with every file
//! renamed into a forbidden path (one violation per file), and the time to read the patch as a
//! unified diff. The main patch passes (nothing matches), so every rule runs on every file.

use orch::policy::diff::parse_unified;
use orch::policy::{gate2, Change, FileChange, Policy, ProposalView};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn policy_yaml() -> String {
    let mut forbidden = vec![".github/workflows/**".to_string(), "**/*.pem".into(), "**/.env*".into()];
    let mut require = vec!["src/core/**".to_string()];
    let mut i = 0;
    while forbidden.len() < 100 {
        forbidden.push(match i % 5 {
            0 => format!("vendor/lib{i}/**"),
            1 => format!("**/*.secret{i}"),
            2 => format!("deploy/env{i}/**/*.yml"),
            3 => format!("**/private{i}/**"),
            _ => format!("infra/{{prod,stage}}{i}/*.tf"),
        });
        i += 1;
    }
    while require.len() < 100 {
        require.push(match i % 4 {
            0 => format!("migrations/v{i}/**"),
            1 => format!("**/*.schema{i}.json"),
            2 => format!("api/v{i}/**/*.proto"),
            _ => format!("**/critical{i}/**"),
        });
        i += 1;
    }
    let patterns: Vec<String> = (0..50)
        .map(|i| match i % 5 {
            0 => format!("(?i)deploy{i} to production"),
            1 => format!(r"\bDROP TABLE t{i}\b"),
            2 => format!("^!cmd{i} "),
            3 => format!(r"(?i)curl [^|]*\| *sh{i}"),
            _ => format!(r"@bot{i}\s+(run|exec)"),
        })
        .collect();
    let list = |v: &[String]| v.iter().map(|s| format!("    - '{s}'\n")).collect::<String>();
    format!(
        "phase: 4\npaths:\n  forbidden:\n{}  require_approval:\n{}diff: {{max_files: 20000, max_changed_lines: 300000, max_file_bytes: 1000000}}\ncomments:\n  dangerous_patterns:\n{}actions: {{create_pr: approval_required}}\n",
        list(&forbidden),
        list(&require),
        list(&patterns)
    )
}

const DIRS: &[&str] = &[
    "src/app",
    "src/util",
    "lib/parser",
    "tests/it",
    "docs/guide",
    "web/components",
    "tools/gen",
    "pkg/store",
];
const EXTS: &[&str] = &["rs", "ts", "go", "py", "md", "json", "yml", "tsx"];

fn path(i: usize) -> String {
    format!("{}/m{}/file_{i}.{}", DIRS[i % DIRS.len()], i % 97, EXTS[(i / 8) % EXTS.len()])
}

fn line(i: usize, j: usize) -> String {
    match j % 5 {
        0 => format!("    let value_{j} = compute(input_{i}, {j}); // step {j}"),
        1 => format!("    if value_{j} > LIMIT {{ return Err(Error::TooLarge({i})); }}"),
        2 => format!("    let token_count = tokens.iter().filter(|t| t.len() > {j}).count();"),
        3 => format!("    api_key_name = \"SERVICE_{i}_API_KEY\"  # read from the environment"),
        _ => format!("    items.push(Item {{ id: {i}, name: format!(\"item-{{}}\", {j}) }});"),
    }
}

fn files(n: usize, per_file: usize) -> Vec<FileChange> {
    (0..n)
        .map(|i| {
            let mut content = String::new();
            for j in 0..per_file {
                content.push_str(&line(i, j));
                content.push('\n');
            }
            FileChange {
                path: path(i),
                previous_path: None,
                change: Change::Modified,
                content: Some(content),
                added_lines: per_file as u32,
                removed_lines: 0,
            }
        })
        .collect()
}

fn diff_text(n: usize, per_file: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        let p = path(i);
        out.push_str(&format!("diff --git a/{p} b/{p}\n--- a/{p}\n+++ b/{p}\n@@ -1,0 +1,{per_file} @@\n"));
        for j in 0..per_file {
            out.push('+');
            out.push_str(&line(i, j));
            out.push('\n');
        }
    }
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn stats(label: &str, mut runs: Vec<Duration>) {
    runs.sort();
    let p = |q: f64| ms(runs[((runs.len() - 1) as f64 * q).round() as usize]);
    println!(
        "{label:<58} min {:>7.2} ms  median {:>7.2} ms  p90 {:>7.2} ms  max {:>7.2} ms  (n={})",
        p(0.0),
        p(0.5),
        p(0.9),
        p(1.0),
        runs.len()
    );
}

fn time(iterations: usize, mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..3 {
        f();
    }
    (0..iterations)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let iterations = args.first().copied().unwrap_or(30);
    let n = args.get(1).copied().unwrap_or(10_000);
    let per_file = args.get(2).copied().unwrap_or(20);

    let yaml = policy_yaml();
    let t = Instant::now();
    let policy = Policy::parse(&yaml).expect("the bench policy parses");
    let parsed = t.elapsed();
    let t = Instant::now();
    let compiled = policy.compile().expect("the bench policy compiles");
    let compile = t.elapsed();
    println!(
        "policy: {} forbidden + {} require_approval globs, {} configured + {} built-in dangerous patterns",
        policy.paths.forbidden.len(),
        policy.paths.require_approval.len(),
        policy.comments.dangerous_patterns.len(),
        compiled.dangerous().len() - policy.comments.dangerous_patterns.len()
    );
    println!(
        "parse {:.2} ms, compile {:.2} ms (once per policy version)",
        ms(parsed),
        ms(compile)
    );

    let files = files(n, per_file);
    let bytes: usize = files.iter().map(|f| f.content.as_ref().map_or(0, String::len)).sum();
    let lines: u64 = files.iter().map(|f| u64::from(f.added_lines + f.removed_lines)).sum();
    println!(
        "patch: {} files, {lines} changed lines, {:.1} MB of added content",
        files.len(),
        bytes as f64 / 1e6
    );
    let body = "This change reworks the parser.\n\n".repeat(60);
    let proposal = ProposalView::Patch {
        title: "Rework the parser".into(),
        files: files.clone(),
        comment_text: body.clone(),
    };
    let verdict = gate2(&compiled, &proposal);
    for line in verdict.lines().iter().take(5) {
        println!("  unexpected violation: {line}");
    }
    assert!(verdict.is_pass(), "the bench patch is meant to pass, so that every rule runs");
    println!("verdict: {:?}", verdict);

    stats(
        "gate2 (whole patch)",
        time(iterations, || {
            black_box(gate2(&compiled, black_box(&proposal)));
        }),
    );
    let paths_only = ProposalView::Patch {
        title: "Rework the parser".into(),
        files: files
            .iter()
            .map(|f| FileChange {
                content: None,
                ..f.clone()
            })
            .collect(),
        comment_text: body,
    };
    stats(
        "  paths, sizes, texts (no content)",
        time(iterations, || {
            black_box(gate2(&compiled, black_box(&paths_only)));
        }),
    );
    let blocked = ProposalView::Patch {
        title: "Rework the parser".into(),
        files: files
            .iter()
            .map(|f| FileChange {
                previous_path: Some(f.path.clone()),
                path: format!("vendor/lib0/{}", f.path),
                change: Change::Renamed,
                ..f.clone()
            })
            .collect(),
        comment_text: String::new(),
    };
    let n_blocked = gate2(&compiled, &blocked).violations().len();
    stats(
        &format!("  every file renamed into a forbidden path ({n_blocked} violations)"),
        time(iterations, || {
            black_box(gate2(&compiled, black_box(&blocked)));
        }),
    );
    stats(
        "  secret scan of the content only",
        time(iterations, || {
            for f in &files {
                black_box(compiled.secrets().scan(f.content.as_deref().unwrap_or_default()));
            }
        }),
    );
    let diff = diff_text(n, per_file);
    println!("unified diff of the same patch: {:.1} MB", diff.len() as f64 / 1e6);
    stats(
        "parse_unified (diff → files)",
        time(iterations.min(10), || {
            black_box(parse_unified(black_box(&diff)).expect("the bench diff parses"));
        }),
    );
}

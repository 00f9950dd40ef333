//! Retrieval benchmark (issue 15): for each case of `bench/context/cases.json` (a request that
//! names a symbol or a behaviour of a real crate, and the file a fix would change), runs the
//! patch context orch builds — `orch::llm::retrieval::fill_patch_context` and the context pack,
//! exactly as a workflow does — over the crate's source as cargo's registry holds it, and reports
//! recall (the expected file is in the pack, whole or in excerpts) and the tokens the pack used.
//!
//! usage: context_bench [CASES_JSON] [BUDGET_TOKENS]   (default bench/context/cases.json, 32000)
//! The crates are looked up under `$CARGO_HOME/registry/src/*/NAME-VERSION` (`cargo fetch
//! --locked` brings every crate of Cargo.lock).

use orch::llm::context::pack_for;
use orch::llm::retrieval::{fill_patch_context, SourceFile};
use orch::llm::{Context, Task};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Deserialize)]
struct Case {
    #[serde(rename = "crate")]
    krate: String,
    request: String,
    expect: Vec<String>,
    kind: String,
}

/// A crate as orch would see the repository: its file list and its text files.
type Repository = (Vec<String>, Vec<(String, String)>);

/// What a tarball of the crate would give orch: every regular file's path, and the text files
/// under 256 KiB (binary and larger files skipped, as the download does).
fn load(dir: &Path) -> Repository {
    let mut paths = Vec::new();
    let mut texts = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                stack.push(p);
            } else if kind.is_file() {
                let rel = p.strip_prefix(dir).expect("under the crate").to_string_lossy().replace('\\', "/");
                // cargo's own bookkeeping, not part of the published crate.
                if rel == ".cargo-ok" {
                    continue;
                }
                paths.push(rel.clone());
                let Ok(bytes) = std::fs::read(&p) else { continue };
                if bytes.len() > 256 * 1024 || bytes.iter().take(8192).any(|b| *b == 0) {
                    continue;
                }
                if let Ok(text) = String::from_utf8(bytes) {
                    texts.push((rel, text));
                }
            }
        }
    }
    paths.sort();
    texts.sort();
    (paths, texts)
}

fn registry_dirs() -> Vec<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    std::fs::read_dir(home.join("registry/src"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cases_path = args.get(1).map(String::as_str).unwrap_or("bench/context/cases.json");
    let budget: u32 = args.get(2).and_then(|b| b.parse().ok()).unwrap_or(32_000);
    let cases: Vec<Case> = serde_json::from_str(&std::fs::read_to_string(cases_path).expect("read the cases")).expect("parse the cases");
    let registries = registry_dirs();
    let mut loaded: std::collections::HashMap<String, Repository> = Default::default();
    let (mut hits, mut whole_hits, mut tokens) = (0usize, 0usize, Vec::new());
    let mut by_kind: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    let mut by_crate: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    let started = Instant::now();
    println!(
        "{:<24} {:<9} {:>6} {:>7}  expected (how shown) / request",
        "crate", "kind", "found", "tokens"
    );
    for case in &cases {
        let repo = loaded.entry(case.krate.clone()).or_insert_with(|| {
            let dir = registries
                .iter()
                .map(|r| r.join(&case.krate))
                .find(|d| d.is_dir())
                .unwrap_or_else(|| panic!("{} is not in cargo's registry: run `cargo fetch --locked`", case.krate));
            load(&dir)
        });
        let files: Vec<SourceFile<'_>> = repo.1.iter().map(|(p, t)| SourceFile { path: p, text: t }).collect();
        // As `/orch propose <request>` on an issue titled with the request's first words.
        let mut context = Context {
            repository: format!("bench/{}", case.krate),
            number: 1,
            title: case.request.split(['.', ';']).next().unwrap_or_default().chars().take(80).collect(),
            instruction: Some(case.request.clone()),
            ..Default::default()
        };
        fill_patch_context(&mut context, &repo.0, &files, budget);
        let pack = pack_for(Task::Patch, &context, budget);
        let how = |path: &str| -> Option<&'static str> {
            if pack.text.contains(&format!("source=\"file {path}\"")) {
                Some("whole")
            } else if pack.text.contains(&format!("source=\"excerpts {path}\"")) {
                Some("excerpts")
            } else {
                None
            }
        };
        let shown: Vec<Option<&str>> = case.expect.iter().map(|p| how(p)).collect();
        let found = shown.iter().all(Option::is_some);
        hits += usize::from(found);
        whole_hits += usize::from(shown.iter().all(|s| *s == Some("whole")));
        tokens.push(pack.tokens);
        let k = by_kind.entry(case.kind.clone()).or_default();
        k.0 += usize::from(found);
        k.1 += 1;
        let c = by_crate.entry(case.krate.clone()).or_default();
        c.0 += usize::from(found);
        c.1 += 1;
        let expected: Vec<String> = case
            .expect
            .iter()
            .zip(&shown)
            .map(|(p, s)| format!("{p} ({})", s.unwrap_or("MISSING")))
            .collect();
        let request: String = case.request.chars().take(70).collect();
        println!(
            "{:<24} {:<9} {:>6} {:>7}  {} / {request}",
            case.krate,
            case.kind,
            if found { "yes" } else { "NO" },
            pack.tokens,
            expected.join(", ")
        );
    }
    let n = cases.len();
    tokens.sort_unstable();
    let mean = tokens.iter().map(|t| u64::from(*t)).sum::<u64>() as f64 / n.max(1) as f64;
    println!();
    println!(
        "cases {n} over {} crates, budget {budget} tokens, {:.1} s",
        by_crate.len(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "recall (expected file in the pack, whole or excerpts): {hits}/{n} = {:.1} %",
        100.0 * hits as f64 / n.max(1) as f64
    );
    println!("  shown whole: {whole_hits}/{n}");
    for (kind, (h, t)) in &by_kind {
        println!("  {kind}: {h}/{t} = {:.1} %", 100.0 * *h as f64 / *t as f64);
    }
    for (krate, (h, t)) in &by_crate {
        println!("  {krate}: {h}/{t}");
    }
    println!(
        "tokens per pack: mean {mean:.0}, median {}, max {}",
        tokens.get(n / 2).copied().unwrap_or(0),
        tokens.last().copied().unwrap_or(0)
    );
}

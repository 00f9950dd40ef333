//! The model layer (SPEC §9) against fake Anthropic and OpenAI-compatible servers over real HTTP:
//! the requests are checked field by field, the answers follow the real APIs' shapes, retries and
//! waits are measured, and every call's `model_calls` row is checked.

mod common;
#[path = "common/fake_llm.rs"]
mod fake_llm;

use common::{Backend, TestDb};
use fake_llm::{FakeLlm, Reply};
use orch::config::Config;
use orch::llm::fake::Script;
use orch::llm::prompt::sha256_hex;
use orch::llm::{pricing, Context, Llm, LlmError, Proposal, Provider, RetrySettings, Task};
use orch::store::model_calls::{self, Finished, NewModelCall, Outcome};
use orch::store::Store;
use secrecy::SecretString;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const ANTHROPIC_KEY: &str = "sk-ant-test-key-0123456789";
const OPENAI_KEY: &str = "sk-openai-test-key-9876543210";
const WORKFLOW: i64 = 42;

fn fast() -> RetrySettings {
    RetrySettings {
        max_retries: 3,
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        request_timeout: Duration::from_secs(5),
        max_retry_after: Duration::from_secs(5),
    }
}

fn anthropic(fake: &FakeLlm, model: &str, retry: RetrySettings) -> Llm {
    Llm::new(
        Provider::Anthropic {
            base_url: fake.url.clone(),
            api_key: SecretString::from(ANTHROPIC_KEY.to_string()),
        },
        model,
        retry,
    )
    .unwrap()
}

fn openai(fake: &FakeLlm, key: Option<&str>, retry: RetrySettings) -> Llm {
    Llm::new(
        Provider::OpenAi {
            base_url: format!("{}/v1", fake.url),
            api_key: key.map(|k| SecretString::from(k.to_string())),
        },
        "gpt-4o-mini",
        retry,
    )
    .unwrap()
}

fn context() -> Context {
    Context {
        repository: "acme/widgets".into(),
        number: 7,
        title: "Crash on start".into(),
        body: "The app panics when started without a config file.".into(),
        labels: vec!["needs-triage".into()],
        comments: vec!["Same here.".into(), "Still happens on 1.2.".into()],
        ..Default::default()
    }
}

fn triage() -> Value {
    json!({"labels": ["bug"], "priority": "p1", "rationale": "It reports a crash."})
}

async fn sqlite() -> (TestDb, Store) {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let store = db.store().await;
    (db, store)
}

async fn row(store: &Store, id: i64) -> model_calls::ModelCall {
    model_calls::get(store.pool(), id).await.unwrap().expect("a model_calls row")
}

fn header<'a>(seen: &'a fake_llm::Seen, name: &str) -> &'a str {
    seen.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

/// The stored prompt is exactly what was sent, and its hash is the hash of the stored text.
fn assert_prompt_row(r: &model_calls::ModelCall, task: Task, ctx: &Context, budget: u32) {
    let (prompt, not_seen) = Llm::prompt(task, ctx, budget);
    assert_eq!(r.prompt, prompt.text);
    assert_eq!(r.prompt_sha256, sha256_hex(&r.prompt));
    assert_eq!(r.template, orch::llm::prompt::template_for(task).name);
    assert_eq!(r.task, task.as_str());
    assert_eq!(r.not_seen, not_seen);
}

#[tokio::test]
async fn anthropic_request_is_the_messages_api_with_a_forced_tool() {
    let (_db, store) = sqlite().await;
    let fake = FakeLlm::start(vec![Reply::anthropic_tool("submit_triage", triage(), 1234, 56)]).await;
    let llm = anthropic(&fake, "claude-sonnet-4-5", fast());
    let ctx = context();
    let g = llm.generate(&store, WORKFLOW, Task::Triage, &ctx, 2000, 1024).await.unwrap();

    let seen = fake.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(header(r, "x-api-key"), ANTHROPIC_KEY);
    assert_eq!(header(r, "anthropic-version"), "2023-06-01");
    assert_eq!(header(r, "content-type"), "application/json");
    assert!(r.headers.get("authorization").is_none());
    let b = &r.body;
    assert_eq!(b["model"], "claude-sonnet-4-5");
    assert_eq!(b["max_tokens"], 1024);
    assert_eq!(b["tools"].as_array().unwrap().len(), 1);
    assert_eq!(b["tools"][0]["name"], "submit_triage");
    assert!(b["tools"][0]["description"].as_str().unwrap().len() > 10);
    assert_eq!(b["tools"][0]["input_schema"], Task::Triage.schema());
    assert_eq!(b["tools"][0]["input_schema"]["additionalProperties"], json!(false));
    assert_eq!(b["tool_choice"], json!({"type": "tool", "name": "submit_triage"}));
    assert_eq!(b["messages"].as_array().unwrap().len(), 1);
    assert_eq!(b["messages"][0]["role"], "user");
    let (prompt, _) = Llm::prompt(Task::Triage, &ctx, 2000);
    assert_eq!(b["system"], prompt.system());
    assert_eq!(b["messages"][0]["content"], prompt.user());
    let user = b["messages"][0]["content"].as_str().unwrap();
    assert!(
        user.contains("<untrusted source=\"title\">\nCrash on start\n</untrusted>"),
        "{user}"
    );
    assert!(b["system"].as_str().unwrap().contains("untrusted"));

    assert_eq!(g.answer, triage());
    assert!(matches!(Proposal::parse(Task::Triage, &g.answer), Ok(Proposal::Triage(_))));
    assert_eq!((g.tokens_in, g.tokens_out, g.attempts), (1234, 56, 1));
    let cost = (1234.0 * 3.0 + 56.0 * 15.0) / 1e6;
    assert!((g.cost_usd - cost).abs() < 1e-12, "{}", g.cost_usd);
    assert!(g.price_known && g.not_seen.is_empty());
    assert_eq!(g.template, "triage.v2");

    let r = row(&store, g.call_id).await;
    assert_prompt_row(&r, Task::Triage, &ctx, 2000);
    assert_eq!((r.provider.as_str(), r.model.as_str()), ("anthropic", "claude-sonnet-4-5"));
    assert_eq!((r.workflow_id, r.max_output_tokens), (WORKFLOW, 1024));
    assert_eq!((r.tokens_in, r.tokens_out, r.attempts), (1234, 56, 1));
    assert!((r.cost_usd - cost).abs() < 1e-12);
    assert!(r.price_known);
    assert!(r.latency_ms.unwrap() > 0);
    assert_eq!(r.outcome, Outcome::Ok);
    assert_eq!(r.error, None);
    assert_eq!(serde_json::from_str::<Value>(r.answer.as_deref().unwrap()).unwrap(), triage());
    assert!(r.finished_at.unwrap() >= r.started_at);
}

#[tokio::test]
async fn openai_request_is_chat_completions_with_a_forced_function() {
    let (_db, store) = sqlite().await;
    let plan = json!({"summary": "s", "steps": [{"title": "run", "expected": "passes"}], "risks": []});
    let fake = FakeLlm::start(vec![Reply::openai_tool("submit_qa_plan", &plan.to_string(), 900, 100)]).await;
    let llm = openai(&fake, Some(OPENAI_KEY), fast());
    let mut ctx = context();
    ctx.files = vec![("src/main.rs".into(), "@@ -1,3 +1,4 @@\n fn main() {\n+    init();\n }".into())];
    let g = llm.generate(&store, WORKFLOW, Task::QaPlan, &ctx, 2000, 512).await.unwrap();

    let seen = fake.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(header(r, "authorization"), format!("Bearer {OPENAI_KEY}"));
    assert_eq!(header(r, "content-type"), "application/json");
    assert!(r.headers.get("x-api-key").is_none());
    let b = &r.body;
    assert_eq!(b["model"], "gpt-4o-mini");
    assert_eq!(b["max_tokens"], 512);
    assert_eq!(b["tools"].as_array().unwrap().len(), 1);
    assert_eq!(b["tools"][0]["type"], "function");
    assert_eq!(b["tools"][0]["function"]["name"], "submit_qa_plan");
    assert_eq!(b["tools"][0]["function"]["parameters"], Task::QaPlan.schema());
    assert_eq!(
        b["tool_choice"],
        json!({"type": "function", "function": {"name": "submit_qa_plan"}})
    );
    let (prompt, _) = Llm::prompt(Task::QaPlan, &ctx, 2000);
    assert_eq!(b["messages"][0], json!({"role": "system", "content": prompt.system()}));
    assert_eq!(b["messages"][1], json!({"role": "user", "content": prompt.user()}));
    assert!(prompt.user().contains("<untrusted source=\"file src/main.rs\">"));

    assert_eq!(g.answer, plan);
    assert_eq!((g.tokens_in, g.tokens_out), (900, 100));
    let cost = (900.0 * 0.15 + 100.0 * 0.6) / 1e6;
    assert!((g.cost_usd - cost).abs() < 1e-12);
    let r = row(&store, g.call_id).await;
    assert_prompt_row(&r, Task::QaPlan, &ctx, 2000);
    assert_eq!(
        (r.provider.as_str(), r.model.as_str(), r.outcome),
        ("openai", "gpt-4o-mini", Outcome::Ok)
    );
    assert_eq!((r.tokens_in, r.tokens_out), (900, 100));
    assert!((r.cost_usd - cost).abs() < 1e-12);
    assert!(r.latency_ms.unwrap() > 0);
}

/// Local servers (Ollama, vLLM, llama.cpp) need no key: no Authorization header is sent, and an
/// unknown model costs 0 and is flagged.
#[tokio::test]
async fn openai_compatible_local_server_without_key() {
    let (_db, store) = sqlite().await;
    let args = triage().to_string();
    let fake = FakeLlm::start(vec![Reply::openai_tool("submit_triage", &args, 10, 5)]).await;
    let llm = openai(&fake, None, fast()).with_model("llama3.1:8b");
    let g = llm.generate(&store, WORKFLOW, Task::Triage, &context(), 2000, 256).await.unwrap();
    assert!(fake.requests()[0].headers.get("authorization").is_none());
    assert_eq!(fake.requests()[0].body["model"], "llama3.1:8b");
    assert_eq!((g.cost_usd, g.price_known), (0.0, false));
    let r = row(&store, g.call_id).await;
    assert_eq!((r.model.as_str(), r.cost_usd, r.price_known), ("llama3.1:8b", 0.0, false));
}

#[tokio::test]
async fn rate_limit_429_waits_for_retry_after() {
    let (_db, store) = sqlite().await;
    let fake = FakeLlm::start(vec![
        Reply::anthropic_error(
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
        )
        .header("retry-after", "1"),
        Reply::anthropic_tool("submit_triage", triage(), 100, 10),
    ])
    .await;
    let g = anthropic(&fake, "claude-sonnet-4-5", fast())
        .generate(&store, WORKFLOW, Task::Triage, &context(), 2000, 256)
        .await
        .unwrap();
    let gaps = fake.gaps();
    assert_eq!(gaps.len(), 1);
    assert!(gaps[0] >= Duration::from_secs(1), "waited {:?}", gaps[0]);
    assert!(gaps[0] < Duration::from_millis(1800), "waited {:?}", gaps[0]);
    assert_eq!(g.attempts, 2);
    let r = row(&store, g.call_id).await;
    assert_eq!((r.attempts, r.outcome), (2, Outcome::Ok));
    assert!(r.latency_ms.unwrap() >= 1000);
}

#[tokio::test]
async fn retry_after_ms_is_preferred_to_retry_after() {
    let (_db, store) = sqlite().await;
    let fake = FakeLlm::start(vec![
        Reply::openai_error(429, "requests", "Rate limit reached for gpt-4o-mini")
            .header("retry-after-ms", "350")
            .header("retry-after", "3"),
        Reply::openai_tool("submit_triage", &triage().to_string(), 100, 10),
    ])
    .await;
    let g = openai(&fake, Some(OPENAI_KEY), fast())
        .generate(&store, WORKFLOW, Task::Triage, &context(), 2000, 256)
        .await
        .unwrap();
    let gap = fake.gaps()[0];
    assert!(
        gap >= Duration::from_millis(350) && gap < Duration::from_millis(1500),
        "waited {gap:?}"
    );
    assert_eq!(g.attempts, 2);
}

#[tokio::test]
async fn overloaded_529_is_retried_with_backoff() {
    let (_db, store) = sqlite().await;
    let fake = FakeLlm::start(vec![
        Reply::anthropic_error(529, "overloaded_error", "Overloaded"),
        Reply::anthropic_error(529, "overloaded_error", "Overloaded"),
        Reply::anthropic_tool("submit_triage", triage(), 100, 10),
    ])
    .await;
    let g = anthropic(&fake, "claude-sonnet-4-5", fast())
        .generate(&store, WORKFLOW, Task::Triage, &context(), 2000, 256)
        .await
        .unwrap();
    assert_eq!(g.attempts, 3);
    let gaps = fake.gaps();
    // 20 ms then 40 ms, each plus up to a quarter of jitter.
    assert!(gaps[0] >= Duration::from_millis(20), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(40), "{gaps:?}");
    assert_eq!(row(&store, g.call_id).await.attempts, 3);
}

#[tokio::test]
async fn server_error_500_then_success() {
    let (_db, store) = sqlite().await;
    let fake = FakeLlm::start(vec![
        Reply::openai_error(500, "server_error", "The server had an error while processing your request."),
        Reply::openai_tool("submit_triage", &triage().to_string(), 100, 10),
    ])
    .await;
    let g = openai(&fake, Some(OPENAI_KEY), fast())
        .generate(&store, WORKFLOW, Task::Triage, &context(), 2000, 256)
        .await
        .unwrap();
    assert_eq!((g.attempts, fake.requests().len()), (2, 2));
    assert_eq!(g.answer, triage());
}

#[tokio::test]
async fn x_should_retry_false_stops_a_500() {
    let (_db, store) = sqlite().await;
    let fake = FakeLlm::start(vec![
        Reply::anthropic_error(500, "api_error", "Internal server error").header("x-should-retry", "false"),
        Reply::anthropic_tool("submit_triage", triage(), 100, 10),
    ])
    .await;
    let err = anthropic(&fake, "claude-sonnet-4-5", fast())
        .generate(&store, WORKFLOW, Task::Triage, &context(), 2000, 256)
        .await
        .unwrap_err();
    assert_eq!(fake.requests().len(), 1);
    match &err {
        LlmError::Permanent { status, message, .. } => {
            assert_eq!(*status, Some(500));
            assert!(message.contains("Internal server error"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let r = row(&store, err.call_id().unwrap()).await;
    assert_eq!((r.outcome, r.attempts), (Outcome::Permanent, 1));
}

#[tokio::test]
async fn x_should_retry_true_retries_a_400() {
    let (_db, store) = sqlite().await;
    let fake = FakeLlm::start(vec![
        Reply::anthropic_error(400, "invalid_request_error", "try again").header("x-should-retry", "true"),
        Reply::anthropic_tool("submit_triage", triage(), 100, 10),
    ])
    .await;
    let g = anthropic(&fake, "claude-sonnet-4-5", fast())
        .generate(&store, WORKFLOW, Task::Triage, &context(), 2000, 256)
        .await
        .unwrap();
    assert_eq!(g.attempts, 2);
}

#[tokio::test]
async fn bad_request_400_fails_at_once_with_the_providers_message() {
    let (_db, store) = sqlite().await;
    for (status, kind) in [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (404, "not_found_error"),
    ] {
        let message = format!("{kind}: max_tokens: 999999 > 64000, which is the maximum");
        let fake = FakeLlm::start(vec![
            Reply::anthropic_error(status, kind, &message),
            Reply::anthropic_tool("submit_triage", triage(), 100, 10),
        ])
        .await;
        let err = anthropic(&fake, "claude-sonnet-4-5", fast())
            .generate(&store, WORKFLOW, Task::Triage, &context(), 2000, 999_999)
            .await
            .unwrap_err();
        assert_eq!(fake.requests().len(), 1, "{status} must not be retried");
        assert!(!err.is_transient());
        let text = err.to_string();
        assert!(
            text.contains(&message) && text.contains(&status.to_string()) && text.contains("req_error_1"),
            "{text}"
        );
        let r = row(&store, err.call_id().unwrap()).await;
        assert_eq!((r.outcome, r.attempts, r.tokens_in, r.cost_usd), (Outcome::Permanent, 1, 0, 0.0));
        assert!(r.error.unwrap().contains(&message));
        assert!(r.answer.is_none());
    }
}

#[tokio::test]
async fn transient_errors_give_up_after_max_retries() {
    let (_db, store) = sqlite().await;
    let replies = (0..10)
        .map(|_| Reply::openai_error(503, "server_error", "upstream unavailable"))
        .collect();
    let fake = FakeLlm::start(replies).await;
    let retry = RetrySettings { max_retries: 2, ..fast() };
    let err = openai(&fake, Some(OPENAI_KEY), retry)
        .generate(&store, WORKFLOW, Task::Triage, &context(), 2000, 256)
        .await
        .unwrap_err();
    assert_eq!(fake.requests().len(), 3);
    match &err {
        LlmError::Transient { attempts, message, .. } => {
            assert_eq!(*attempts, 3);
            assert!(message.contains("503") && message.contains("upstream unavailable"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_transient());
    let r = row(&store, err.call_id().unwrap()).await;
    assert_eq!((r.outcome, r.attempts), (Outcome::Transient, 3));
}

#[tokio::test]
async fn a_retry_after_longer_than_orch_waits_fails_at_once() {
    let (_db, store) = sqlite().await;
    let fake = FakeLlm::start(vec![
        Reply::anthropic_error(429, "rate_limit_error", "slow down").header("retry-after", "600")
    ])
    .await;
    let started = Instant::now();
    let err = anthropic(&fake, "claude-sonnet-4-5", fast())
        .generate(&store, WORKFLOW, Task::Triage, &context(), 2000, 256)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(fake.requests().len(), 1);
    assert!(
        matches!(&err, LlmError::Transient { message, .. } if message.contains("600")),
        "{err}"
    );
}

#[tokio::test]
async fn malformed_json_is_an_error_not_retried() {
    let (_db, store) = sqlite().await;
    let fake = FakeLlm::start(vec![
        Reply::new(200, r#"{"id": "msg_1", "content": [{"type": "tool_use", "#),
        Reply::anthropic_tool("submit_triage", triage(), 100, 10),
    ])
    .await;
    let err = anthropic(&fake, "claude-sonnet-4-5", fast())
        .generate(&store, WORKFLOW, Task::Triage, &context(), 2000, 256)
        .await
        .unwrap_err();
    assert_eq!(fake.requests().len(), 1);
    assert!(
        matches!(&err, LlmError::Malformed { problem, answer: None, .. } if problem.contains("not JSON")),
        "{err}"
    );
    let r = row(&store, err.call_id().unwrap()).await;
    assert_eq!((r.outcome, r.attempts), (Outcome::Malformed, 1));
    assert!(r.error.unwrap().contains("not JSON"));

    // OpenAI: the arguments string is not JSON; the tokens were spent and are recorded.
    let fake = FakeLlm::start(vec![Reply::openai_tool("submit_triage", "{\"labels\": [\"bug\"", 300, 20)]).await;
    let err = openai(&fake, Some(OPENAI_KEY), fast())
        .generate(&store, WORKFLOW, Task::Triage, &context(), 2000, 256)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LlmError::Malformed { problem, .. } if problem.contains("arguments are not JSON")),
        "{err}"
    );
    let r = row(&store, err.call_id().unwrap()).await;
    assert_eq!((r.outcome, r.tokens_in, r.tokens_out), (Outcome::Malformed, 300, 20));
    assert!(r.cost_usd > 0.0);

    // No tool_use block at all.
    let text_only = json!({"id": "msg_2", "type": "message", "role": "assistant", "content": [{"type": "text", "text": "I won't."}],
        "stop_reason": "end_turn", "usage": {"input_tokens": 50, "output_tokens": 4}});
    let fake = FakeLlm::start(vec![Reply::new(200, text_only.to_string())]).await;
    let err = anthropic(&fake, "claude-sonnet-4-5", fast())
        .generate(&store, WORKFLOW, Task::Triage, &context(), 2000, 256)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LlmError::Malformed { problem, .. } if problem.contains("no tool_use block")),
        "{err}"
    );
}

#[tokio::test]
async fn an_extra_field_in_the_tool_input_is_refused() {
    let (_db, store) = sqlite().await;
    let mut hostile = triage();
    hostile["merge"] = json!(true);
    let fake = FakeLlm::start(vec![Reply::anthropic_tool("submit_triage", hostile.clone(), 400, 30)]).await;
    let err = anthropic(&fake, "claude-sonnet-4-5", fast())
        .generate(&store, WORKFLOW, Task::Triage, &context(), 2000, 256)
        .await
        .unwrap_err();
    assert_eq!(fake.requests().len(), 1);
    let expected = Proposal::parse(Task::Triage, &hostile).unwrap_err().to_string();
    assert!(expected.contains("unknown field `merge`"), "{expected}");
    match &err {
        LlmError::Malformed { problem, answer, .. } => {
            assert_eq!(problem, &expected);
            assert_eq!(answer.as_ref(), Some(&hostile));
        }
        other => panic!("{other:?}"),
    }
    let r = row(&store, err.call_id().unwrap()).await;
    assert_eq!(r.outcome, Outcome::Malformed);
    assert_eq!(r.error.as_deref(), Some(expected.as_str()));
    assert_eq!(serde_json::from_str::<Value>(r.answer.as_deref().unwrap()).unwrap(), hostile);
    assert_eq!((r.tokens_in, r.tokens_out), (400, 30));
    assert!((r.cost_usd - pricing::cost_usd("claude-sonnet-4-5", 400, 30)).abs() < 1e-12);
}

#[tokio::test]
async fn a_timeout_is_retried_then_reported() {
    let (_db, store) = sqlite().await;
    let slow = || Reply::anthropic_tool("submit_triage", triage(), 100, 10).delay(Duration::from_secs(3));
    let fake = FakeLlm::start(vec![slow(), slow()]).await;
    let retry = RetrySettings {
        max_retries: 1,
        request_timeout: Duration::from_millis(300),
        ..fast()
    };
    let started = Instant::now();
    let err = anthropic(&fake, "claude-sonnet-4-5", retry)
        .generate(&store, WORKFLOW, Task::Triage, &context(), 2000, 256)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(600) && took < Duration::from_secs(2), "{took:?}");
    assert_eq!(fake.requests().len(), 2);
    assert!(
        matches!(&err, LlmError::Transient { attempts: 2, message, .. } if message.contains("timeout")),
        "{err}"
    );
    let r = row(&store, err.call_id().unwrap()).await;
    assert_eq!((r.outcome, r.attempts), (Outcome::Transient, 2));
    assert!(r.latency_ms.unwrap() >= 600);

    // A refused connection is retried too.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let llm = Llm::new(
        Provider::Anthropic {
            base_url: dead,
            api_key: SecretString::from(ANTHROPIC_KEY.to_string()),
        },
        "claude-sonnet-4-5",
        RetrySettings { max_retries: 2, ..fast() },
    )
    .unwrap();
    let err = llm
        .generate(&store, WORKFLOW, Task::Triage, &context(), 2000, 256)
        .await
        .unwrap_err();
    assert!(matches!(&err, LlmError::Transient { attempts: 3, .. }), "{err}");
}

#[tokio::test]
async fn a_small_budget_names_what_the_model_did_not_see() {
    let (_db, store) = sqlite().await;
    let fake = FakeLlm::start(vec![Reply::anthropic_tool("submit_triage", triage(), 100, 10)]).await;
    let mut ctx = context();
    ctx.body = "A long report. ".repeat(200);
    let g = anthropic(&fake, "claude-sonnet-4-5", fast())
        .generate(&store, WORKFLOW, Task::Triage, &ctx, 120, 256)
        .await
        .unwrap();
    assert!(g.not_seen.iter().any(|s| s.starts_with("body (truncated")), "{:?}", g.not_seen);
    assert!(g.not_seen.contains(&"comment 2 of 2".to_string()) && g.not_seen.contains(&"comment 1 of 2".to_string()));
    let r = row(&store, g.call_id).await;
    assert_eq!(r.not_seen, g.not_seen);
    assert!(r.prompt.contains("Not shown to you (it did not fit): body (truncated"));
    assert_prompt_row(&r, Task::Triage, &ctx, 120);
}

#[tokio::test]
async fn the_api_key_is_never_printed() {
    let fake = FakeLlm::start(vec![]).await;
    let a = format!("{:?}", anthropic(&fake, "claude-sonnet-4-5", fast()));
    let o = format!("{:?}", openai(&fake, Some(OPENAI_KEY), fast()));
    assert!(!a.contains(ANTHROPIC_KEY) && !o.contains(OPENAI_KEY), "{a}\n{o}");
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn configuration_names_the_missing_variable() {
    let err = Llm::from_config(&Config::from_map(&env(&[("ORCH_LLM_PROVIDER", "anthropic")])).unwrap()).unwrap_err();
    assert!(err.to_string().contains("ANTHROPIC_API_KEY"), "{err}");
    let err = Llm::from_config(&Config::from_map(&env(&[("ORCH_LLM_PROVIDER", "openai")])).unwrap()).unwrap_err();
    assert!(err.to_string().contains("OPENAI_API_KEY"), "{err}");
    let local = Llm::from_config(
        &Config::from_map(&env(&[
            ("ORCH_LLM_PROVIDER", "openai"),
            ("ORCH_OPENAI_BASE_URL", "http://127.0.0.1:11434/v1"),
            ("ORCH_LLM_MODEL", "qwen2.5-coder"),
        ]))
        .unwrap(),
    )
    .unwrap();
    assert_eq!((local.provider_name(), local.model()), ("openai", "qwen2.5-coder"));
    let a = Llm::from_config(&Config::from_map(&env(&[("ORCH_LLM_PROVIDER", "anthropic"), ("ANTHROPIC_API_KEY", "k")])).unwrap()).unwrap();
    assert_eq!((a.provider_name(), a.model()), ("anthropic", "claude-sonnet-4-5"));
    let f = Llm::from_config(&Config::from_map(&env(&[])).unwrap()).unwrap();
    assert_eq!((f.provider_name(), f.model()), ("fake", "fake"));
    let err = Llm::from_config(&Config::from_map(&env(&[("ORCH_FAKE_LLM_SCRIPT", "/nonexistent/script.jsonl")])).unwrap()).unwrap_err();
    assert!(err.to_string().starts_with("ORCH_FAKE_LLM_SCRIPT"), "{err}");
}

#[tokio::test]
async fn the_fake_follows_its_script_then_falls_back() {
    let (db, store) = sqlite().await;
    let path = db.dir.path().join("script.jsonl");
    std::fs::write(
        &path,
        [
            r#"{"task": "patch", "answer": {"title": "t", "summary": "s", "files": [{"path": "a.txt", "action": "create", "content": "x"}]}}"#,
            r#"{"task": "triage", "answer": {"labels": ["docs"], "priority": "p3", "rationale": "first"}, "tokens_in": 11, "tokens_out": 7}"#,
            "",
            r#"{"task": "triage", "error": "overloaded", "status": 529}"#,
            r#"{"answer": {"labels": ["any"], "priority": "p2", "rationale": "untasked"}}"#,
            r#"{"task": "triage", "answer": {"labels": [], "priority": "p2", "rationale": "x", "extra": 1}}"#,
            r#"{"task": "triage", "error": "bad key", "status": 401}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let config = Config::from_map(&env(&[("ORCH_FAKE_LLM_SCRIPT", path.to_str().unwrap())])).unwrap();
    let llm = Llm::from_config(&config).unwrap();
    let ctx = context();
    let call = |task| {
        let llm = llm.clone();
        let store = store.clone();
        let ctx = ctx.clone();
        async move { llm.generate(&store, 9, task, &ctx, 2000, 256).await }
    };
    let first = call(Task::Triage).await.unwrap();
    assert_eq!(first.answer["rationale"], "first");
    assert_eq!((first.tokens_in, first.tokens_out, first.cost_usd), (11, 7, 0.0));
    assert!(matches!(
        call(Task::Triage).await.unwrap_err(),
        LlmError::Transient { attempts: 1, .. }
    ));
    assert_eq!(call(Task::Triage).await.unwrap().answer["rationale"], "untasked");
    let refused = call(Task::Triage).await.unwrap_err();
    assert!(
        matches!(&refused, LlmError::Malformed { problem, .. } if problem.contains("extra")),
        "{refused}"
    );
    assert!(matches!(
        call(Task::Triage).await.unwrap_err(),
        LlmError::Permanent { status: Some(401), .. }
    ));
    // The triage entries are used up: the deterministic answer.
    let fallback = call(Task::Triage).await.unwrap();
    assert_eq!(fallback.answer, orch::llm::fake::answer(Task::Triage, &ctx));
    // The patch entry waited for a patch call.
    assert_eq!(call(Task::Patch).await.unwrap().answer["files"][0]["path"], "a.txt");

    let rows = model_calls::for_workflow(store.pool(), 9).await.unwrap();
    let outcomes: Vec<Outcome> = rows.iter().map(|r| r.outcome).collect();
    use Outcome::*;
    assert_eq!(outcomes, vec![Ok, Transient, Ok, Malformed, Permanent, Ok, Ok]);
    assert!(rows.iter().all(|r| r.provider == "fake" && r.model == "fake" && r.price_known));
    assert!(rows.iter().all(|r| r.prompt_sha256 == sha256_hex(&r.prompt)));
    assert_eq!(rows[6].template, "patch.v2");

    // The JSON array form, and refusals.
    let s = Script::parse(r#"[{"answer": {"a": 1}}, {"task": "qa_plan", "error": "x"}]"#).unwrap();
    assert_eq!(s.remaining(), 2);
    assert!(s.next(Task::Patch).unwrap().answer.is_some());
    assert!(s.next(Task::Patch).is_none());
    assert!(s.next(Task::QaPlan).unwrap().error.is_some());
    assert!(Script::parse(r#"{"task": "triage"}"#).unwrap_err().contains("exactly one"));
    assert!(Script::parse(r#"{"answer": 1, "surprise": 2}"#).unwrap_err().contains("line 1"));
}

// ---------------------------------------------------------------------------------------------
// The store, on both backends.

async fn model_calls_are_stored(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let not_seen = vec!["comment 1 of 3".to_string(), "file src/x.rs".to_string()];
    let prompt = "<!-- system -->\nrules\n<!-- user -->\nhello ✓";
    let sha = sha256_hex(prompt);
    let new = |workflow_id| NewModelCall {
        workflow_id,
        task: "triage",
        template: "triage.v1",
        prompt,
        prompt_sha256: &sha,
        provider: "anthropic",
        model: "claude-sonnet-4-5",
        max_output_tokens: 2048,
        not_seen: &not_seen,
    };
    let a = model_calls::start(store.pool(), &new(5), 1_000).await.unwrap();
    let b = model_calls::start(store.pool(), &new(5), 2_000).await.unwrap();
    let c = model_calls::start(store.pool(), &new(6), 3_000).await.unwrap();
    let pending = model_calls::get(store.pool(), a).await.unwrap().unwrap();
    assert_eq!(pending.outcome, Outcome::Pending);
    assert_eq!(
        (pending.tokens_in, pending.cost_usd, pending.attempts, pending.latency_ms),
        (0, 0.0, 0, None)
    );
    assert_eq!(pending.not_seen, not_seen);
    assert_eq!((pending.prompt.as_str(), pending.prompt_sha256.as_str()), (prompt, sha.as_str()));

    let ok = Finished {
        outcome: Outcome::Ok,
        error: None,
        answer: Some(r#"{"labels":[]}"#),
        tokens_in: 1200,
        tokens_out: 300,
        cost_usd: 0.0081,
        price_known: true,
        attempts: 2,
        latency_ms: 1534,
    };
    model_calls::finish(store.pool(), a, &ok, 2_500).await.unwrap();
    let failed = Finished {
        outcome: Outcome::Transient,
        error: Some("anthropic answered 529 overloaded_error: Overloaded"),
        answer: None,
        tokens_in: 0,
        tokens_out: 0,
        cost_usd: 0.0,
        price_known: true,
        attempts: 4,
        latency_ms: 7100,
    };
    model_calls::finish(store.pool(), b, &failed, 9_000).await.unwrap();
    model_calls::finish(
        store.pool(),
        c,
        &Finished {
            cost_usd: 0.5,
            ..ok.clone()
        },
        9_500,
    )
    .await
    .unwrap();

    let r = model_calls::get(store.pool(), a).await.unwrap().unwrap();
    assert_eq!((r.outcome, r.tokens_in, r.tokens_out, r.attempts), (Outcome::Ok, 1200, 300, 2));
    assert_eq!((r.latency_ms, r.started_at, r.finished_at), (Some(1534), 1_000, Some(2_500)));
    assert!((r.cost_usd - 0.0081).abs() < 1e-12);
    assert_eq!(r.answer.as_deref(), Some(r#"{"labels":[]}"#));
    let r = model_calls::get(store.pool(), b).await.unwrap().unwrap();
    assert_eq!((r.outcome, r.attempts), (Outcome::Transient, 4));
    assert!(r.error.unwrap().contains("529"));

    let five = model_calls::for_workflow(store.pool(), 5).await.unwrap();
    assert_eq!(five.iter().map(|r| r.id).collect::<Vec<_>>(), vec![a, b]);
    let (run, window) = model_calls::spent(store.pool(), 5, 0).await.unwrap();
    assert!((run - 0.0081).abs() < 1e-12);
    assert!((window - 0.5081).abs() < 1e-12);
    let (run, window) = model_calls::spent(store.pool(), 99, 2_001).await.unwrap();
    assert_eq!(run, 0.0);
    assert!((window - 0.5).abs() < 1e-12);
    assert_eq!(model_calls::spent(store.pool(), 99, 10_000).await.unwrap(), (0.0, 0.0));
    assert_eq!(model_calls::outcomes_since(store.pool(), 0).await.unwrap(), (2, 1));
    assert_eq!(model_calls::outcomes_since(store.pool(), 10_000).await.unwrap(), (0, 0));
    assert!(model_calls::get(store.pool(), 12345).await.unwrap().is_none());
}

/// A whole call through the fake provider records its row on either backend.
async fn generate_records_a_row(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let llm = Llm::new(Provider::Fake { script: None }, "fake", RetrySettings::default()).unwrap();
    let ctx = context();
    let g = llm.generate(&store, 3, Task::Triage, &ctx, 2000, 512).await.unwrap();
    assert_eq!(g.answer, orch::llm::fake::answer(Task::Triage, &ctx));
    let r = model_calls::get(store.pool(), g.call_id).await.unwrap().unwrap();
    assert_prompt_row(&r, Task::Triage, &ctx, 2000);
    assert_eq!(
        (r.outcome, r.provider.as_str(), r.attempts, r.workflow_id),
        (Outcome::Ok, "fake", 1, 3)
    );
    assert!(r.tokens_in > 0 && r.tokens_out > 0);
}

both_backends!(model_calls_are_stored, generate_records_a_row);

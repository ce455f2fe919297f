//! Fake model API tests, over HTTP only: the SSE stream's shape, scripting by markers,
//! errors, and the request record.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use loadtest::fake_model::{FakeModel, RecordedRequest};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

async fn start() -> (FakeModel, CancellationToken) {
    let cancel = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = FakeModel::start(listener, cancel.clone()).unwrap();
    (fake, cancel)
}

/// A request shaped like the CLI's (system-role entries, reminders, tools, betas).
fn cli_like_body(prompt: &str) -> Value {
    json!({
        "model": "claude-opus-5-5",
        "max_tokens": 128000,
        "stream": true,
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.330"},
                   {"type": "text", "text": "You are a Claude agent."}],
        "tools": [{"name": "Write", "description": "w", "input_schema": {"type": "object"}},
                  {"name": "DeferredToolPlaceholder", "defer_loading": true}],
        "metadata": {"user_id": "{\"device_id\":\"d\"}"},
        "thinking": {"type": "adaptive", "display": "updates"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "medium"},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>\nAttribution…\n</system-reminder>"},
                {"type": "text", "text": prompt}]},
            {"role": "system", "content": "# Environment\n - Primary working directory: /workspace\n - Is a git repository: false"}
        ]
    })
}

async fn post(fake: &FakeModel, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/messages?beta=true", fake.base_url()))
        .header("x-api-key", "sk-ant-test-fake")
        .header("anthropic-version", "2023-06-01")
        .header(
            "anthropic-beta",
            "claude-code-20250219,interleaved-thinking-2025-05-14",
        )
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Parses an SSE body into `(event, data)` pairs, checking the two agree.
fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|chunk| !chunk.trim().is_empty())
        .map(|chunk| {
            let mut event = None;
            let mut data = None;
            for line in chunk.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = Some(e.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str::<Value>(d).unwrap());
                }
            }
            let (event, data) = (event.unwrap(), data.unwrap());
            assert_eq!(data["type"], event.as_str());
            (event, data)
        })
        .collect()
}

#[tokio::test]
async fn write_marker_streams_a_tool_call() {
    let (fake, _cancel) = start().await;
    let response = post(&fake, &cli_like_body("Please [[write:hello.txt]]")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert!(response.headers().contains_key("request-id"));
    let events = sse_events(&response.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(events[0].1["message"]["model"], "claude-opus-5-5");
    assert!(
        events[0].1["message"]["usage"]["input_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(events[2].1["content_block"]["type"], "text");
    assert_eq!(events[5].1["index"], 1);
    assert_eq!(events[5].1["content_block"]["name"], "Write");
    let json: String = events[6..8]
        .iter()
        .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
        .collect();
    let input: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(input["file_path"], "/workspace/hello.txt");
    assert_eq!(input["content"], "hello from fake model\n");
    assert_eq!(events[9].1["delta"]["stop_reason"], "tool_use");
    assert!(events[9].1["usage"]["output_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn steps_follow_the_conversation() {
    let (fake, _cancel) = start().await;
    let mut body = cli_like_body("[[bash:echo hi > out.txt]] [[ask]]");
    let first = sse_events(&post(&fake, &body).await.text().await.unwrap());
    let tool = &first[5].1["content_block"];
    assert_eq!(tool["name"], "Bash");
    let id = tool["id"].as_str().unwrap().to_owned();
    body["messages"].as_array_mut().unwrap().extend([
        json!({"role": "assistant", "content": [{"type": "tool_use", "id": id, "name": "Bash", "input": {}}]}),
        json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "ok"}]}),
    ]);
    let second = sse_events(&post(&fake, &body).await.text().await.unwrap());
    let tool = second
        .iter()
        .find(|(e, d)| e == "content_block_start" && d["content_block"]["type"] == "tool_use")
        .unwrap();
    assert_eq!(tool.1["content_block"]["name"], "AskUserQuestion");
    let id = tool.1["content_block"]["id"].as_str().unwrap().to_owned();
    body["messages"].as_array_mut().unwrap().extend([
        json!({"role": "assistant", "content": [{"type": "tool_use", "id": id, "name": "AskUserQuestion", "input": {}}]}),
        json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "Blue"}]}),
    ]);
    let third = sse_events(&post(&fake, &body).await.text().await.unwrap());
    assert_eq!(third[third.len() - 2].1["delta"]["stop_reason"], "end_turn");
    let text: String = third
        .iter()
        .filter(|(_, d)| d["delta"]["type"] == "text_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Done: Blue");
}

#[tokio::test]
async fn long_and_slow_text() {
    let (fake, _cancel) = start().await;
    let started = Instant::now();
    let events = sse_events(
        &post(&fake, &cli_like_body("[[long:500]] [[slow:600]]"))
            .await
            .text()
            .await
            .unwrap(),
    );
    assert!(started.elapsed() >= Duration::from_millis(550));
    let text: String = events
        .iter()
        .filter(|(_, d)| d["delta"]["type"] == "text_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text.chars().count(), 500);
}

#[tokio::test]
async fn error_marker_and_missing_key() {
    let (fake, _cancel) = start().await;
    let response = post(&fake, &cli_like_body("[[error:529]]")).await;
    assert_eq!(response.status(), 529);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "overloaded_error");
    let response = reqwest::Client::new()
        .post(format!("{}/v1/messages", fake.base_url()))
        .json(&cli_like_body("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn flaky_marker_fails_the_first_requests_of_its_prompt_only() {
    let (fake, _cancel) = start().await;
    let statuses = |prompt: &'static str, n: usize| {
        let fake = fake.clone();
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(post(&fake, &cli_like_body(prompt)).await.status().as_u16());
            }
            out
        }
    };
    assert_eq!(statuses("a [[flaky:529:2]]", 2).await, [529, 529]);
    // Another prompt has its own count.
    assert_eq!(statuses("b [[flaky:500:1]]", 2).await, [500, 200]);
    assert_eq!(statuses("a [[flaky:529:2]]", 2).await, [200, 200]);
}

#[tokio::test]
async fn non_streaming_reply() {
    let (fake, _cancel) = start().await;
    let mut body = cli_like_body("hello");
    body["stream"] = json!(false);
    let response: Value = post(&fake, &body).await.json().await.unwrap();
    assert_eq!(response["type"], "message");
    assert_eq!(response["stop_reason"], "end_turn");
    assert!(
        response["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("I was sent 2 messages: user[text,text] system[text]")
    );
}

#[tokio::test]
async fn requests_are_recorded_and_served() {
    let (fake, cancel) = start().await;
    post(&fake, &cli_like_body("first"))
        .await
        .text()
        .await
        .unwrap();
    let recorded = fake.message_requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].headers["x-api-key"], "***");
    assert_eq!(
        recorded[0].headers["anthropic-beta"],
        "claude-code-20250219,interleaved-thinking-2025-05-14"
    );
    assert_eq!(recorded[0].path, "/v1/messages?beta=true");
    assert!(recorded[0].transcript().contains("first"));
    let over_http: Vec<RecordedRequest> =
        reqwest::get(format!("{}/fake/requests", fake.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(over_http.len(), 1);
    assert_eq!(over_http[0].body, recorded[0].body);
    let cleared = reqwest::Client::new()
        .delete(format!("{}/fake/requests", fake.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), 204);
    assert!(fake.requests().is_empty());
    cancel.cancel();
    fake.shutdown().await;
}

/// The CLI's real recorded request (s1) is accepted and scripted.
#[tokio::test]
async fn recorded_cli_request_is_accepted() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(
        "../../shared/reference/claude-code/transcripts/s1_stream_perm_allow/api-requests.json",
    );
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("SKIPPED: {} not found (shared/ is absent)", path.display());
        return;
    };
    let requests: Vec<Value> = serde_json::from_str(&text).unwrap();
    let mut body = requests[0]["body"].clone();
    body["messages"][0]["content"][1]["text"] = json!("Please create [[write:hello.txt]]");
    let (fake, _cancel) = start().await;
    let events = sse_events(&post(&fake, &body).await.text().await.unwrap());
    let tool = events
        .iter()
        .find(|(_, d)| d["content_block"]["type"] == "tool_use")
        .unwrap();
    assert_eq!(tool.1["content_block"]["name"], "Write");
}

#[tokio::test]
async fn scripted_rate_limits_answer_one_credential_with_retry_after() {
    let (fake, _cancel) = start().await;
    let limited = loadtest::fake_model::fingerprint("sk-ant-test-fake");
    // Set over HTTP, as another process would.
    let set = reqwest::Client::new()
        .post(format!("{}/fake/limits", fake.base_url()))
        .json(&json!({"credential": limited, "status": 529, "retry_after_s": 7, "times": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 204);
    for _ in 0..2 {
        let response = post(&fake, &cli_like_body("hello")).await;
        assert_eq!(response.status(), 529);
        assert_eq!(response.headers()["retry-after"], "7");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "overloaded_error");
    }
    // Used up: answered again, with usage in the stream and in the record.
    let response = post(&fake, &cli_like_body("hello")).await;
    assert_eq!(response.status(), 200);
    let events = sse_events(&response.text().await.unwrap());
    let start_usage = &events[0].1["message"]["usage"];
    let delta_usage = &events.iter().find(|(e, _)| e == "message_delta").unwrap().1["usage"];
    let recorded = fake.message_requests();
    assert_eq!(
        recorded.iter().map(|r| r.status).collect::<Vec<_>>(),
        [529, 529, 200]
    );
    assert!(recorded[0].usage.is_none());
    let usage = recorded[2].usage.clone().unwrap();
    for key in [
        "input_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    ] {
        assert_eq!(usage[key], start_usage[key], "{key}");
        assert!(usage[key].as_u64().unwrap() > 0, "{key}");
    }
    assert_eq!(usage["output_tokens"], delta_usage["output_tokens"]);

    // Another credential is never limited by it; a limit without `times` lasts until
    // cleared.
    fake.limit(loadtest::fake_model::Limit {
        credential: limited,
        status: 429,
        retry_after_s: 1,
        times: None,
    });
    let other = reqwest::Client::new()
        .post(format!("{}/v1/messages", fake.base_url()))
        .header("x-api-key", "sk-ant-other")
        .json(&cli_like_body("hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    for _ in 0..3 {
        assert_eq!(post(&fake, &cli_like_body("hello")).await.status(), 429);
    }
    let cleared = reqwest::Client::new()
        .delete(format!("{}/fake/limits", fake.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), 204);
    assert_eq!(post(&fake, &cli_like_body("hello")).await.status(), 200);
}

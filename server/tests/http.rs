//! The server over real HTTP on an ephemeral port, with the tiny models: completions whole and
//! streamed, every refusal's status, timeouts, clients that hang up, and draining at shutdown.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use latchless_server::{ClassLimits, ModelKind, ModelSize, Server, ServerConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for something the server should do promptly.
const PATIENCE: Duration = Duration::from_secs(20);

fn tiny() -> ServerConfig {
    ServerConfig {
        size: ModelSize::Tiny,
        ..ServerConfig::default()
    }
}

/// A server on 127.0.0.1 and a free port.
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

async fn start(config: ServerConfig) -> Running {
    let server = Server::bind("127.0.0.1:0", config).await.unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stop: Some(stop),
        task,
        client: Client::builder(TokioExecutor::new()).build_http(),
    }
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn send(&self, method: &str, path: &str, body: Vec<u8>) -> Response<Incoming> {
        let req = Request::builder()
            .method(method)
            .uri(self.url(path))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        self.client.request(req).await.unwrap()
    }

    /// Posts `body` to the completions route: the status, the headers and the body as text.
    async fn post_raw(&self, body: Vec<u8>) -> (StatusCode, hyper::HeaderMap, String) {
        let resp = self.send("POST", "/v1/completions", body).await;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(bytes.to_vec()).unwrap(),
        )
    }

    async fn post(&self, body: Value) -> (StatusCode, Value) {
        let (status, _, text) = self.post_raw(body.to_string().into_bytes()).await;
        let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, value)
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        let resp = self.send("GET", path, Vec::new()).await;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    /// A sample of `/metrics`, `name` with its labels as printed.
    async fn metric(&self, name: &str) -> f64 {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .parse()
            .unwrap()
    }

    /// Polls a metric until `ok` holds of it, for at most [`PATIENCE`].
    async fn wait_for(&self, name: &str, ok: impl Fn(f64) -> bool) {
        let start = Instant::now();
        loop {
            let v = self.metric(name).await;
            if ok(v) {
                return;
            }
            assert!(start.elapsed() < PATIENCE, "{name} stayed at {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Triggers shutdown and waits for the server to return.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }
}

/// Reads a Server-Sent Events body to its end: each event's `data`.
async fn events(resp: Response<Incoming>) -> Vec<String> {
    let mut events = Vec::new();
    let mut body = resp.into_body();
    let mut buf = String::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            buf.push_str(std::str::from_utf8(&data).unwrap());
            events.extend(take_events(&mut buf));
        }
    }
    assert!(buf.trim().is_empty(), "a partial event at the end: {buf:?}");
    events
}

/// The whole events at the start of `buf`, removed from it.
fn take_events(buf: &mut String) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let event: String = buf.drain(..end + 2).collect();
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if !data.is_empty() {
            out.push(data.join("\n"));
        }
    }
    out
}

fn text_of(v: &Value) -> &str {
    v["choices"][0]["text"].as_str().unwrap()
}

/// Checks an error reply: the status, the JSON body's shape, and a message mentioning `says`.
fn check_error(status: StatusCode, body: &Value, want: StatusCode, kind: &str, says: &[&str]) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    for s in says {
        assert!(message.contains(s), "{message:?} lacks {s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_in_openai_shape_and_counted_in_metrics() {
    let server = start(tiny()).await;
    assert_eq!(server.get("/health").await, (StatusCode::OK, "ok".into()));
    let (status, body) = server
        .post(json!({"prompt": "hello", "max_tokens": 8, "session": 1}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert!(body["created"].as_u64().unwrap() > 0);
    assert_eq!(body["model"], "lstm");
    assert_eq!(body["choices"][0]["index"], 0);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert!(!text_of(&body).is_empty());
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13})
    );
    // `model` may be given, if it is the served one; `priority` picks a class.
    let (status, _) = server
        .post(json!({"prompt": "hi", "max_tokens": 2, "model": "lstm", "priority": 0}))
        .await;
    assert_eq!(status, StatusCode::OK);
    // Without `max_tokens`, 16 (OpenAI's default).
    let (status, body) = server.post(json!({"prompt": "hi"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["usage"]["completion_tokens"], 16);
    let ok = "latchless_server_requests_total{outcome=\"ok\"}";
    server.wait_for(ok, |v| v == 3.0).await;
    assert_eq!(server.metric("latchless_batch_submitted_total").await, 3.0);
    assert_eq!(server.metric("latchless_batch_completed_total").await, 3.0);
    assert!(server.metric("latchless_batch_steps_total").await >= 8.0);
    assert_eq!(server.metric("latchless_server_in_flight").await, 0.0);
    // Session 1 is kept; the sessions made up for the other two are forgotten.
    assert_eq!(server.metric("latchless_server_sessions").await, 1.0);
    // The batcher's distributions, as summaries: one latency per request, by class too (one
    // request at priority 0, two at the default, 1), one step size per step.
    let latency = "latchless_batch_latency_seconds";
    assert_eq!(server.metric(&format!("{latency}_count")).await, 3.0);
    let p50 = server
        .metric(&format!("{latency}{{quantile=\"0.5\"}}"))
        .await;
    let p99 = server
        .metric(&format!("{latency}{{quantile=\"0.99\"}}"))
        .await;
    assert!(p50 > 0.0 && p50 <= p99, "p50 {p50}, p99 {p99}");
    let sum = server.metric(&format!("{latency}_sum")).await;
    assert!(sum >= p50 && sum <= 3.0 * p99 * 1.02, "sum {sum}");
    let by_class = "latchless_batch_class_latency_seconds_count";
    assert_eq!(
        server.metric(&format!("{by_class}{{class=\"0\"}}")).await,
        1.0
    );
    assert_eq!(
        server.metric(&format!("{by_class}{{class=\"1\"}}")).await,
        2.0
    );
    assert_eq!(
        server
            .metric("latchless_batch_class_queue_seconds_count{class=\"1\"}")
            .await,
        2.0
    );
    assert_eq!(
        server.metric("latchless_batch_step_size_count").await,
        server.metric("latchless_batch_steps_total").await
    );
    for class in ["0", "1"] {
        let depth = format!("latchless_server_class_in_flight{{class=\"{class}\"}}");
        assert_eq!(server.metric(&depth).await, 0.0);
    }
    // The server's own overhead: each request admitted and finished whole, none streamed.
    let overhead = "latchless_server_overhead_seconds";
    for (phase, n) in [
        ("admit", 3.0),
        ("finish_whole", 3.0),
        ("finish_stream", 0.0),
    ] {
        let count = format!("{overhead}_count{{phase=\"{phase}\"}}");
        assert_eq!(server.metric(&count).await, n, "{phase}");
    }
    let admit = server
        .metric(&format!("{overhead}{{phase=\"admit\",quantile=\"0.5\"}}"))
        .await;
    assert!(admit > 0.0 && admit < 1.0, "admit median {admit} s");
    // Nothing streamed: no quantile to give.
    let streamed = server
        .metric(&format!(
            "{overhead}{{phase=\"finish_stream\",quantile=\"0.5\"}}"
        ))
        .await;
    assert!(
        streamed.is_nan(),
        "finish_stream median {streamed} with nothing streamed"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_dropped_purged_and_starts_afresh() {
    let ask = json!({"prompt": "hello", "max_tokens": 8, "session": 7});
    // The control: without an idle time, asking again continues the session, so the bytes
    // differ from a fresh session's.
    let keeping = start(tiny()).await;
    let (_, first) = keeping.post(ask.clone()).await;
    let (_, again) = keeping.post(ask.clone()).await;
    assert_ne!(text_of(&first), text_of(&again));
    keeping.stop().await;

    let server = start(ServerConfig {
        session_idle: Some(Duration::from_millis(100)),
        ..tiny()
    })
    .await;
    let (status, body) = server.post(ask.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(text_of(&body), text_of(&first));
    // Nobody asks for session 7 again: the purge, not a lookup, removes it.
    server
        .wait_for("latchless_server_sessions", |v| v == 0.0)
        .await;
    let (status, body) = server.post(ask).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(text_of(&body), text_of(&first), "session 7 started afresh");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_chunks_concatenate_to_the_whole_completion() {
    // The transformer with two batcher workers, each computing on its own thread.
    for (model, workers) in [(ModelKind::Lstm, 1), (ModelKind::Transformer, 2)] {
        let server = start(ServerConfig {
            model,
            workers,
            // Slow enough that bytes go out as several events.
            step_delay: Duration::from_millis(10),
            ..tiny()
        })
        .await;
        let prompt = "The quick brown fox";
        // Two fresh sessions: the same state, so the same bytes.
        let (status, whole) = server
            .post(json!({"prompt": prompt, "max_tokens": 24, "session": 10}))
            .await;
        assert_eq!(status, StatusCode::OK, "{whole}");
        let body = json!({"prompt": prompt, "max_tokens": 24, "session": 11, "stream": true});
        let resp = server
            .send("POST", "/v1/completions", body.to_string().into_bytes())
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let events = events(resp).await;
        assert_eq!(
            events.last().map(String::as_str),
            Some("[DONE]"),
            "{events:?}"
        );
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert!(chunks.len() >= 2, "{model:?}: one event only: {events:?}");
        let (last, rest) = chunks.split_last().unwrap();
        for c in rest {
            assert_eq!(c["object"], "text_completion");
            assert!(c["choices"][0]["finish_reason"].is_null(), "{c}");
            assert!(c.get("usage").is_none(), "{c}");
        }
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        assert_eq!(last["usage"], whole["usage"]);
        let streamed: String = chunks.iter().map(text_of).collect();
        assert_eq!(streamed, text_of(&whole), "{model:?}");
        // Both named sessions are kept, streamed or not.
        assert_eq!(server.metric("latchless_server_sessions").await, 2.0);
        // One finish timed each way.
        for phase in ["finish_whole", "finish_stream"] {
            let count = format!("latchless_server_overhead_seconds_count{{phase=\"{phase}\"}}");
            assert_eq!(server.metric(&count).await, 1.0, "{model:?} {phase}");
        }
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400_with_a_json_error() {
    let server = start(ServerConfig {
        max_tokens_cap: 32,
        ..tiny()
    })
    .await;
    let (status, _, text) = server.post_raw(b"{\"prompt\": \"a\",".to_vec()).await;
    let body: Value = serde_json::from_str(&text).unwrap();
    check_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        &["not valid JSON"],
    );
    let cases = [
        (json!({"prompt": "a", "max_tokens": 0}), vec!["max_tokens"]),
        (json!({"prompt": "a", "max_tokens": 33}), vec!["at most 32"]),
        (
            json!({"prompt": "a", "temperature": 0.5, "stop": "\n"}),
            vec!["temperature", "stop"],
        ),
        (
            // The tiny LSTM takes 128 tokens: prompt and generation together.
            json!({"prompt": "a".repeat(120), "max_tokens": 9}),
            vec!["129", "at most 128"],
        ),
        (json!({"prompt": "", "max_tokens": 1}), vec!["empty"]),
        (json!({"max_tokens": 1}), vec!["prompt"]),
        (json!({"prompt": 7}), vec!["invalid type"]),
        (json!(["prompt"]), vec!["JSON object"]),
        (json!({"prompt": "a", "model": "gpt"}), vec!["gpt", "lstm"]),
        (json!({"prompt": "a", "priority": 2}), vec!["priority"]),
        (json!({"prompt": "a", "session": u64::MAX}), vec!["session"]),
    ];
    let n = cases.len() + 1;
    for (req, says) in cases {
        let (status, body) = server.post(req.clone()).await;
        check_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &says,
        );
    }
    let invalid = "latchless_server_requests_total{outcome=\"invalid_request\"}";
    assert_eq!(server.metric(invalid).await, n as f64);
    // None reached the batcher.
    assert_eq!(server.metric("latchless_batch_submitted_total").await, 0.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_413() {
    let server = start(ServerConfig {
        max_body_bytes: 1024,
        ..tiny()
    })
    .await;
    let big = json!({"prompt": "a".repeat(2000), "max_tokens": 1});
    let (status, body) = server.post(big).await;
    check_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        &["1024"],
    );
    // Just under the limit is read (and refused for its length, by the model's limit).
    let under = json!({"prompt": "a".repeat(900), "max_tokens": 1});
    let (status, _) = server.post(under).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    server.stop().await;
}

/// Starts a streamed request and reads its response's head and first event: it is admitted.
async fn stream_started(server: &Running, body: Value) -> (Response<Incoming>, String) {
    let resp = server
        .send("POST", "/v1/completions", body.to_string().into_bytes())
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (parts, mut body) = resp.into_parts();
    let mut buf = String::new();
    loop {
        let frame = tokio::time::timeout(PATIENCE, body.frame())
            .await
            .expect("a first event")
            .expect("the stream goes on")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            buf.push_str(std::str::from_utf8(&data).unwrap());
            if let Some(first) = take_events(&mut buf).into_iter().next() {
                return (Response::from_parts(parts, body), first);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_429_with_retry_after() {
    let server = start(ServerConfig {
        max_queue: 1,
        step_delay: Duration::from_millis(20),
        ..tiny()
    })
    .await;
    // The one admitted request: 100 steps of 20 ms.
    let (running, _) = stream_started(
        &server,
        json!({"prompt": "busy", "max_tokens": 100, "stream": true}),
    )
    .await;
    let (status, headers, text) = server
        .post_raw(
            json!({"prompt": "more", "max_tokens": 4})
                .to_string()
                .into_bytes(),
        )
        .await;
    let body: Value = serde_json::from_str(&text).unwrap();
    check_error(
        status,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "overloaded_error",
        &["capacity"],
    );
    assert_eq!(headers["retry-after"], "1");
    let refused = "latchless_batch_refused_total{reason=\"overloaded\"}";
    assert_eq!(server.metric(refused).await, 1.0);
    drop(running);
    // Once the first leaves, requests are admitted again.
    server
        .wait_for("latchless_batch_in_flight", |v| v == 0.0)
        .await;
    let (status, _) = server
        .post(json!({"prompt": "more", "max_tokens": 4}))
        .await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_at_its_own_bound_is_429_while_the_other_admits() {
    let server = start(ServerConfig {
        // Class 0 takes one request at a time and times out after 500 ms; class 1 has the
        // server's limits.
        class_limits: vec![ClassLimits {
            max_queue: Some(1),
            timeout: Some(Duration::from_millis(500)),
        }],
        step_delay: Duration::from_millis(20),
        ..tiny()
    })
    .await;
    let (running, _) = stream_started(
        &server,
        json!({"prompt": "b", "max_tokens": 100, "stream": true, "priority": 0}),
    )
    .await;
    let urgent = json!({"prompt": "more", "max_tokens": 4, "priority": 0});
    let (status, body) = server.post(urgent.clone()).await;
    check_error(
        status,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "overloaded_error",
        &["priority class"],
    );
    let depth = "latchless_server_class_in_flight{class=\"0\"}";
    assert_eq!(server.metric(depth).await, 1.0);
    // Class 1 still admits, under the server's 30 s timeout.
    let (status, body) = server
        .post(json!({"prompt": "more", "max_tokens": 4, "priority": 1}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The running class-0 request (100 steps of 20 ms) ends at its class's 500 ms timeout.
    let mut rest = String::new();
    let mut body = running.into_body();
    while let Some(frame) = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .expect("the stream ends")
    {
        if let Ok(data) = frame.unwrap().into_data() {
            rest.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    assert!(rest.contains("timeout of 500 ms"), "{rest}");
    // Once it left, the class admits again.
    server.wait_for(depth, |v| v == 0.0).await;
    let (status, body) = server.post(urgent).await;
    assert_ne!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_timeout_is_504() {
    let server = start(ServerConfig {
        timeout: Duration::from_millis(300),
        step_delay: Duration::from_millis(20),
        ..tiny()
    })
    .await;
    // 100 steps of 20 ms: far past 300 ms.
    let (status, body) = server
        .post(json!({"prompt": "slow", "max_tokens": 100}))
        .await;
    check_error(
        status,
        &body,
        StatusCode::GATEWAY_TIMEOUT,
        "timeout_error",
        &["300 ms"],
    );
    // Streamed, the status is sent with the first byte: the timeout is the last event, with no
    // `[DONE]` (or a 504, if no byte came before the deadline).
    let req = json!({"prompt": "slow", "max_tokens": 100, "stream": true});
    let resp = server
        .send("POST", "/v1/completions", req.to_string().into_bytes())
        .await;
    if resp.status() == StatusCode::OK {
        let events = events(resp).await;
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert_eq!(last["error"]["type"], "timeout_error", "{events:?}");
        assert!(!events.iter().any(|e| e == "[DONE]"));
    } else {
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    }
    assert_eq!(server.metric("latchless_batch_expired_total").await, 2.0);
    let timeouts = "latchless_server_requests_total{outcome=\"timeout\"}";
    assert_eq!(server.metric(timeouts).await, 2.0);
    server.stop().await;
}

/// Sends a completion request over a raw socket, so that the test can hang up at will.
async fn raw_post(addr: SocketAddr, body: Value) -> TcpStream {
    let body = body.to_string();
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(body.as_bytes()).await.unwrap();
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_stream_cancels_its_request() {
    let server = start(ServerConfig {
        step_delay: Duration::from_millis(20),
        ..tiny()
    })
    .await;
    let mut socket = raw_post(
        server.addr,
        json!({"prompt": "bye", "max_tokens": 120, "stream": true}),
    )
    .await;
    // Read until the first event is in.
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("data: {") {
        let n = tokio::time::timeout(PATIENCE, socket.read(&mut buf))
            .await
            .expect("a first event")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    drop(socket);
    // 120 steps of 20 ms: it would run 2.4 s; it leaves the batch at the next step.
    server
        .wait_for("latchless_batch_cancelled_total", |v| v >= 1.0)
        .await;
    let left = "latchless_server_requests_total{outcome=\"disconnected\"}";
    assert_eq!(server.metric(left).await, 1.0);
    assert_eq!(server.metric("latchless_batch_completed_total").await, 0.0);
    server
        .wait_for("latchless_server_in_flight", |v| v == 0.0)
        .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_before_a_whole_reply_cancels_its_request() {
    let server = start(ServerConfig {
        step_delay: Duration::from_millis(20),
        ..tiny()
    })
    .await;
    let socket = raw_post(server.addr, json!({"prompt": "bye", "max_tokens": 120})).await;
    server
        .wait_for("latchless_batch_steps_total", |v| v >= 1.0)
        .await;
    drop(socket);
    server
        .wait_for("latchless_batch_cancelled_total", |v| v >= 1.0)
        .await;
    assert_eq!(server.metric("latchless_batch_completed_total").await, 0.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_admitted_requests() {
    let server = start(ServerConfig {
        step_delay: Duration::from_millis(20),
        ..tiny()
    })
    .await;
    // A whole request and a streamed one, each 40 steps of 20 ms.
    let client = server.client.clone();
    let url = server.url("/v1/completions");
    let whole = tokio::spawn(async move {
        let body = json!({"prompt": "drain", "max_tokens": 40, "session": 1}).to_string();
        let req = Request::post(url)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice::<Value>(&bytes).unwrap())
    });
    let (streamed, _) = stream_started(
        &server,
        json!({"prompt": "drain", "max_tokens": 40, "session": 2, "stream": true}),
    )
    .await;
    server
        .wait_for("latchless_batch_in_flight", |v| v == 2.0)
        .await;
    let addr = server.addr;
    let started = Instant::now();
    let stopped = tokio::spawn(server.stop());
    let (status, body) = whole.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 40);
    let rest = events(streamed).await;
    assert_eq!(rest.last().map(String::as_str), Some("[DONE]"));
    stopped.await.unwrap();
    // It waited for them (40 steps of 20 ms at least from their start), then stopped listening.
    assert!(started.elapsed() > Duration::from_millis(100));
    assert!(TcpStream::connect(addr).await.is_err());
}

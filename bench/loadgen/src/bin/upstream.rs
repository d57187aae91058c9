//! Fast local upstream for the benchmark: answers every request with `200 ok`, except POST
//! requests, which get a short OpenAI-style chat-completions event stream (`text/event-stream`,
//! chunked, one event per chunk) ending with a usage chunk and `[DONE]`, written at once.
//!
//! Usage: `bench-upstream [--listen 127.0.0.1:0]`. Prints `listening ADDR` once bound, then
//! serves until killed. One thread per connection (Envoy keeps a handful open), keep-alive.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keyward_bench_loadgen::read_message;

const MAX_CONNECTIONS: usize = 1024;
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";

/// The events of the streamed answer, as OpenAI sends them with `stream_options.include_usage`.
const STREAM_EVENTS: [&str; 5] = [
    r#"{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
    r#"{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hello from the bench."},"finish_reason":null}]}"#,
    r#"{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
    r#"{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":0}}}"#,
    "[DONE]",
];

/// The whole streamed response (head and chunked body), built once.
fn stream_response() -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for event in STREAM_EVENTS {
        let data = format!("data: {event}\n\n");
        out.extend_from_slice(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes());
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn main() {
    let mut listen = "127.0.0.1:0".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = v,
            _ => fail(&format!(
                "usage: bench-upstream [--listen 127.0.0.1:PORT] (got {a})"
            )),
        }
    }
    let addr: SocketAddr = listen
        .parse()
        .unwrap_or_else(|e| fail(&format!("--listen {listen}: {e}")));
    if !addr.ip().is_loopback() {
        fail("--listen: loopback addresses only");
    }
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| fail(&format!("bind {addr}: {e}")));
    let bound = listener
        .local_addr()
        .unwrap_or_else(|e| fail(&e.to_string()));
    println!("listening {bound}");
    let _ = io::stdout().flush();
    let live = Arc::new(AtomicUsize::new(0));
    let events_bytes: Arc<[u8]> = stream_response().into();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if live.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            continue;
        }
        let live = Arc::clone(&live);
        let events = Arc::clone(&events_bytes);
        live.fetch_add(1, Ordering::Relaxed);
        std::thread::spawn(move || {
            let _ = serve(stream, &events);
            live.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("bench-upstream: {msg}");
    std::process::exit(2);
}

fn serve(mut stream: TcpStream, events: &[u8]) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
    let mut buf = Vec::with_capacity(8192);
    while let Some(head) = read_message(&mut stream, &mut buf, false)? {
        stream.write_all(if head.post { events } else { RESPONSE })?;
        if head.close {
            break;
        }
    }
    Ok(())
}

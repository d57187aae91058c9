//! Fast local upstream for the benchmark: answers every request with `200 ok`.
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
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if live.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            continue;
        }
        let live = Arc::clone(&live);
        live.fetch_add(1, Ordering::Relaxed);
        std::thread::spawn(move || {
            let _ = serve(stream);
            live.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("bench-upstream: {msg}");
    std::process::exit(2);
}

fn serve(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
    let mut buf = Vec::with_capacity(8192);
    while let Some(head) = read_message(&mut stream, &mut buf, false)? {
        stream.write_all(RESPONSE)?;
        if head.close {
            break;
        }
    }
    Ok(())
}

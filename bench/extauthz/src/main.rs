//! Minimal HTTP ext_authz service for Envoy's `envoy.filters.http.ext_authz` (http_service).
//!
//! Usage: `keyward-bench-extauthz --listen 127.0.0.1:0 --keys FILE`
//! FILE has one key per line: `<key_id> <hex sha256 of the secret>`.
//! Prints `listening 127.0.0.1:PORT` on stdout once bound, then serves forever (the bench
//! driver kills it). One thread per connection, HTTP/1.1 keep-alive, loopback only.
//!
//! Answers 200 with `x-keyward-key-id: <id>` when the `Authorization: Bearer ak_<id>.<secret>`
//! header names a known key whose secret hashes to the stored SHA-256, else 403.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

const MAX_HEADER_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 1024 * 1024;
const MAX_CONNECTIONS: usize = 512;
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

type Keys = HashMap<String, [u8; 32]>;

fn main() {
    if let Err(e) = run() {
        eprintln!("extauthz: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut listen = "127.0.0.1:0".to_string();
    let mut keys_path: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs a value")?,
            "--keys" => keys_path = Some(args.next().ok_or("--keys needs a value")?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| format!("--listen {listen}: {e}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("--listen {addr}: loopback addresses only"));
    }
    let keys_path = keys_path.ok_or("--keys FILE is required")?;
    let keys = Arc::new(load_keys(&keys_path)?);
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening {bound} keys={}", keys.len());
    io::stdout().flush().map_err(|e| e.to_string())?;

    let live = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if live.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            continue; // dropped: closes the connection
        }
        let keys = Arc::clone(&keys);
        let live = Arc::clone(&live);
        live.fetch_add(1, Ordering::Relaxed);
        std::thread::spawn(move || {
            let _ = serve(stream, &keys);
            live.fetch_sub(1, Ordering::Relaxed);
        });
    }
    Ok(())
}

fn load_keys(path: &str) -> Result<Keys, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut keys = Keys::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(id), Some(hex), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "{path}:{}: expected `<key_id> <sha256 hex>`",
                n + 1
            ));
        };
        let hash = decode_hex32(hex).ok_or_else(|| format!("{path}:{}: bad sha256 hex", n + 1))?;
        keys.insert(id.to_string(), hash);
    }
    Ok(keys)
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// `Bearer ak_<id>.<secret>` -> the key id when the secret's SHA-256 matches.
fn check<'a>(keys: &Keys, authorization: &'a str) -> Option<&'a str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let rest = token.trim().strip_prefix("ak_")?;
    let (id, secret) = rest.split_once('.')?;
    let alnum = |s: &str| s.bytes().all(|c| c.is_ascii_alphanumeric());
    if !(4..=32).contains(&id.len())
        || !(16..=128).contains(&secret.len())
        || !alnum(id)
        || !alnum(secret)
    {
        return None;
    }
    let stored = keys.get(id)?;
    let digest = Sha256::digest(secret.as_bytes());
    let diff = digest
        .iter()
        .zip(stored.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    (diff == 0).then_some(id)
}

struct Request {
    authorization: Option<String>,
    close: bool,
}

fn serve(mut stream: TcpStream, keys: &Keys) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut out: Vec<u8> = Vec::with_capacity(256);
    loop {
        let Some(req) = read_request(&mut stream, &mut buf)? else {
            return Ok(());
        };
        out.clear();
        match req.authorization.as_deref().and_then(|a| check(keys, a)) {
            Some(id) => {
                out.extend_from_slice(b"HTTP/1.1 200 OK\r\nx-keyward-key-id: ");
                out.extend_from_slice(id.as_bytes());
                out.extend_from_slice(b"\r\ncontent-length: 0\r\n");
            }
            None => out.extend_from_slice(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n"),
        }
        if req.close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        stream.write_all(&out)?;
        if req.close {
            return Ok(());
        }
    }
}

/// Reads one request (headers and a Content-Length body, which is discarded). `None` on a clean
/// end of stream between requests. Bytes after the request stay in `buf`.
fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Request>> {
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        if let Some(pos) = find(buf, b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_HEADER_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "headers too large",
            ));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let http10 = request_line.ends_with("HTTP/1.0");
    let mut content_length = 0usize;
    let mut authorization = None;
    let mut close = http10;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunked requests not supported",
            ));
        }
    }
    if content_length > MAX_BODY_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
    }
    while buf.len() < header_end + content_length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..header_end + content_length);
    Ok(Some(Request {
        authorization,
        close,
    }))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        let mut k = Keys::new();
        let h: [u8; 32] = Sha256::digest(b"S3cretS3cretS3cret").into();
        k.insert("abcd1234".into(), h);
        k
    }

    #[test]
    fn accepts_known_key() {
        assert_eq!(
            check(&keys(), "Bearer ak_abcd1234.S3cretS3cretS3cret"),
            Some("abcd1234")
        );
        assert_eq!(
            check(&keys(), "bearer ak_abcd1234.S3cretS3cretS3cret"),
            Some("abcd1234")
        );
    }

    #[test]
    fn rejects_bad_keys() {
        let k = keys();
        assert_eq!(check(&k, "Bearer ak_abcd1234.S3cretS3cretS3creX"), None);
        assert_eq!(check(&k, "Bearer ak_zzzz1234.S3cretS3cretS3cret"), None);
        assert_eq!(check(&k, "Basic ak_abcd1234.S3cretS3cretS3cret"), None);
        assert_eq!(check(&k, "Bearer ak_abcd1234.short"), None);
        assert_eq!(check(&k, "Bearer abcd1234.S3cretS3cretS3cret"), None);
    }

    #[test]
    fn hex() {
        assert_eq!(decode_hex32(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(decode_hex32("ab"), None);
        assert_eq!(decode_hex32(&"zz".repeat(32)), None);
    }
}

//! Shared HTTP/1.1 framing for the bench load generator and upstream. Just enough of HTTP/1.1
//! for talking to Envoy on loopback: one message at a time (no pipelining), bodies framed by
//! Content-Length or chunked encoding, keep-alive unless `Connection: close`.

use std::io::{self, Read};

pub const MAX_HEADER_BYTES: usize = 64 * 1024;
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// What the caller needs from one message head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Response status; 0 for requests.
    pub status: u16,
    /// The peer asked to close the connection after this message.
    pub close: bool,
    /// A request whose method is POST (false for responses).
    pub post: bool,
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads more bytes into `buf`; error on end of stream.
fn fill<R: Read>(r: &mut R, buf: &mut Vec<u8>, chunk: &mut [u8]) -> io::Result<()> {
    let n = r.read(chunk)?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Reads one complete message (head and body; the body is discarded) from `r`. `buf` holds bytes
/// already read; whatever follows the message stays in it. Returns `None` on a clean end of
/// stream before the first byte of a message.
pub fn read_message<R: Read>(
    r: &mut R,
    buf: &mut Vec<u8>,
    response: bool,
) -> io::Result<Option<Head>> {
    let mut chunk = [0u8; 16 * 1024];
    let header_end = loop {
        if let Some(pos) = find(buf, b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_HEADER_BYTES {
            return Err(invalid("message head too large"));
        }
        let n = r.read(&mut chunk)?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..header_end]).map_err(|_| invalid("non-UTF-8 head"))?;
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let post = !response && first.starts_with("POST ");
    let (status, http10) = if response {
        // HTTP/1.1 200 OK
        let mut parts = first.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("bad status line"))?;
        (status, version == "HTTP/1.0")
    } else {
        (0, first.ends_with("HTTP/1.0"))
    };
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut close = http10;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse().map_err(|_| invalid("bad content-length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            close = v.contains("close") || (http10 && !v.contains("keep-alive"));
        }
    }
    buf.drain(..header_end);
    let no_body = response && (status == 204 || status == 304 || (100..200).contains(&status));
    if chunked && !no_body {
        read_chunked_body(r, buf, &mut chunk)?;
    } else {
        let len = if no_body {
            0
        } else {
            content_length.unwrap_or(0)
        };
        if len > MAX_BODY_BYTES {
            return Err(invalid("body too large"));
        }
        while buf.len() < len {
            fill(r, buf, &mut chunk)?;
        }
        buf.drain(..len);
    }
    Ok(Some(Head {
        status,
        close,
        post,
    }))
}

fn read_chunked_body<R: Read>(r: &mut R, buf: &mut Vec<u8>, chunk: &mut [u8]) -> io::Result<()> {
    let mut total = 0usize;
    loop {
        let line_end = loop {
            if let Some(pos) = find(buf, b"\r\n") {
                break pos;
            }
            if buf.len() > 1024 {
                return Err(invalid("bad chunk size line"));
            }
            fill(r, buf, chunk)?;
        };
        let size_text =
            std::str::from_utf8(&buf[..line_end]).map_err(|_| invalid("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size"))?;
        buf.drain(..line_end + 2);
        total += size;
        if total > MAX_BODY_BYTES {
            return Err(invalid("body too large"));
        }
        if size == 0 {
            // trailers (usually none), then an empty line
            loop {
                let end = loop {
                    if let Some(pos) = find(buf, b"\r\n") {
                        break pos;
                    }
                    if buf.len() > MAX_HEADER_BYTES {
                        return Err(invalid("trailers too large"));
                    }
                    fill(r, buf, chunk)?;
                };
                buf.drain(..end + 2);
                if end == 0 {
                    return Ok(());
                }
            }
        }
        while buf.len() < size + 2 {
            fill(r, buf, chunk)?;
        }
        buf.drain(..size + 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_response_and_leftover() {
        let data = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 401 U\r\nContent-Length: 0\r\nconnection: close\r\n\r\n";
        let mut r = &data[..];
        let mut buf = Vec::new();
        assert_eq!(
            read_message(&mut r, &mut buf, true).unwrap(),
            Some(Head {
                status: 200,
                close: false,
                post: false
            })
        );
        assert_eq!(
            read_message(&mut r, &mut buf, true).unwrap(),
            Some(Head {
                status: 401,
                close: true,
                post: false
            })
        );
        assert_eq!(read_message(&mut r, &mut buf, true).unwrap(), None);
    }

    #[test]
    fn chunked_response() {
        let data = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\na;x=1\r\n0123456789\r\n0\r\n\r\n";
        let mut r = &data[..];
        let mut buf = Vec::new();
        assert_eq!(
            read_message(&mut r, &mut buf, true).unwrap(),
            Some(Head {
                status: 200,
                close: false,
                post: false
            })
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn request_without_body() {
        let data = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
        let mut r = &data[..];
        let mut buf = Vec::new();
        assert_eq!(
            read_message(&mut r, &mut buf, false).unwrap(),
            Some(Head {
                status: 0,
                close: false,
                post: false
            })
        );
    }

    #[test]
    fn post_request_with_body() {
        let data = b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}GET / HTTP/1.1\r\n\r\n";
        let mut r = &data[..];
        let mut buf = Vec::new();
        let head = read_message(&mut r, &mut buf, false).unwrap().unwrap();
        assert!(head.post);
        let head = read_message(&mut r, &mut buf, false).unwrap().unwrap();
        assert!(!head.post);
    }

    #[test]
    fn truncated_is_error() {
        let data = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nok";
        let mut r = &data[..];
        let mut buf = Vec::new();
        assert!(read_message(&mut r, &mut buf, true).is_err());
    }
}

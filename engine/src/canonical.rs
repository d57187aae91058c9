//! The request's canonical view: the one spelling of its path and host that every check uses.
//!
//! Upstream servers merge slashes, resolve dot segments and decode percent-escapes on their own,
//! and an Envoy without `normalize_path` hands the filter the raw `:path`. A check made on the
//! raw spelling is walked around by `//admin`, `/%61dmin` or `/healthz/../admin`. So keyward
//! decides on the canonical form below, forwards that same form, and refuses the spellings whose
//! meaning differs between servers (an encoded `/`, a backslash, a `;` parameter, a double
//! escape, `..` above the root), since no single canonical form is right for all of them.

use std::borrow::Cow;

/// Why a path has no single meaning, or none at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathProblem {
    /// Not `/`-rooted: `*`, an absolute URI, or empty.
    NotAbsolute,
    /// `%2F`: one server splits there, another does not.
    EncodedSlash,
    /// `\` or `%5C`: some servers read it as `/`.
    Backslash,
    /// A `;` parameter: some servers drop it from the segment, others keep it.
    Semicolon,
    /// `%25` followed by two hex digits: a server that decodes twice sees another path.
    DoubleEncoding,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// A raw or escaped control character, space, NUL, `#`, or a byte outside ASCII.
    InvalidByte,
    /// `..` climbing above `/`.
    AboveRoot,
    /// `%3F` or `%23`: a server that decodes before it splits off the query or fragment sees
    /// a shorter path.
    EncodedDelimiter,
}

impl PathProblem {
    pub fn description(self) -> &'static str {
        match self {
            PathProblem::NotAbsolute => "the path must start with /",
            PathProblem::EncodedSlash => "the path contains an encoded slash (%2F)",
            PathProblem::Backslash => "the path contains a backslash",
            PathProblem::Semicolon => "the path contains a ; parameter",
            PathProblem::DoubleEncoding => "the path contains a double percent-encoding",
            PathProblem::BadEscape => "the path contains an invalid percent-escape",
            PathProblem::InvalidByte => "the path contains a character that is not allowed",
            PathProblem::AboveRoot => "the path climbs above the root with ..",
            PathProblem::EncodedDelimiter => "the path contains an encoded ? or #",
        }
    }
}

/// Why a host has no single meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostProblem {
    /// `user@host`.
    UserInfo,
    /// A character no host name has.
    InvalidHost,
    /// `:authority` and `host` name different hosts, or `host` is repeated.
    Conflicting,
}

impl HostProblem {
    pub fn description(self) -> &'static str {
        match self {
            HostProblem::UserInfo => "the host must not carry user information",
            HostProblem::InvalidHost => "the host is not a valid host name",
            HostProblem::Conflicting => "the request names more than one host",
        }
    }
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

fn upper_hex_digit(value: u8) -> u8 {
    match value {
        0..=9 => b'0' + value,
        _ => b'A' + (value - 10),
    }
}

/// Bytes allowed raw in a path: visible ASCII except `#` (never in `:path`), `\` and `;`, which
/// are refused with their own reasons before this is asked.
fn is_plain_path_byte(byte: u8) -> bool {
    (0x21..0x7f).contains(&byte) && byte != b'#'
}

/// The path (without its query) in canonical form: unreserved characters decoded, every other
/// escape kept with upper-case hex, slashes merged, `.` and `..` segments resolved; a trailing
/// slash kept. Borrowed, and cheap, when the path is already canonical.
pub fn canonical_path(raw: &str) -> Result<Cow<'_, str>, PathProblem> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathProblem::NotAbsolute);
    }
    let mut needs_work = false;
    let mut previous = 0u8;
    for (at, &byte) in bytes.iter().enumerate() {
        match byte {
            b'\\' => return Err(PathProblem::Backslash),
            b';' => return Err(PathProblem::Semicolon),
            b'%' => needs_work = true,
            b'/' if previous == b'/' => needs_work = true,
            b'.' if previous == b'/' => {
                // "/." or "/.." as a whole segment.
                let rest = bytes.get(at + 1..).unwrap_or_default();
                needs_work |= matches!(rest, [] | [b'/', ..] | [b'.'] | [b'.', b'/', ..]);
            }
            _ if !is_plain_path_byte(byte) => return Err(PathProblem::InvalidByte),
            _ => {}
        }
        previous = byte;
    }
    if !needs_work {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = decode_unreserved(bytes)?;
    resolve_segments(&decoded).map(Cow::Owned)
}

/// Decodes `%XX` of unreserved characters; keeps other escapes (hex upper-cased); refuses the
/// escapes whose meaning differs between servers.
fn decode_unreserved(bytes: &[u8]) -> Result<Vec<u8>, PathProblem> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        if byte != b'%' {
            out.push(byte);
            at += 1;
            continue;
        }
        let high = bytes.get(at + 1).copied().and_then(hex_value);
        let low = bytes.get(at + 2).copied().and_then(hex_value);
        let (Some(high), Some(low)) = (high, low) else {
            return Err(PathProblem::BadEscape);
        };
        let value = high * 16 + low;
        match value {
            b'/' => return Err(PathProblem::EncodedSlash),
            b'\\' => return Err(PathProblem::Backslash),
            b';' => return Err(PathProblem::Semicolon),
            b'?' | b'#' => return Err(PathProblem::EncodedDelimiter),
            b'%' => {
                let next_is_escape = bytes.get(at + 3).copied().and_then(hex_value).is_some()
                    && bytes.get(at + 4).copied().and_then(hex_value).is_some();
                if next_is_escape {
                    return Err(PathProblem::DoubleEncoding);
                }
                out.extend_from_slice(b"%25");
            }
            0..=0x1f | 0x7f => return Err(PathProblem::InvalidByte),
            _ if is_unreserved(value) => out.push(value),
            _ => {
                out.push(b'%');
                out.push(upper_hex_digit(high));
                out.push(upper_hex_digit(low));
            }
        }
        at += 3;
    }
    Ok(out)
}

/// Merges slashes and resolves dot segments (RFC 3986 §5.2.4, with `..` above the root refused
/// rather than dropped: a server that keeps it would see another path).
fn resolve_segments(path: &[u8]) -> Result<String, PathProblem> {
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split(|&b| b == b'/').skip(1) {
        match segment {
            b"" => trailing_slash = true,
            b"." => trailing_slash = true,
            b".." => {
                segments.pop().ok_or(PathProblem::AboveRoot)?;
                trailing_slash = true;
            }
            _ => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        // Only ASCII reaches here: every byte was checked or written as ASCII above.
        out.push_str(core::str::from_utf8(segment).map_err(|_| PathProblem::InvalidByte)?);
    }
    if segments.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// The host of an authority in canonical form: lower case, without port or trailing dot.
/// Borrowed when nothing changes.
pub fn canonical_host(authority: &str) -> Result<Cow<'_, str>, HostProblem> {
    if authority.contains('@') {
        return Err(HostProblem::UserInfo);
    }
    let host = if let Some(rest) = authority.strip_prefix('[') {
        let (address, after) = rest.split_once(']').ok_or(HostProblem::InvalidHost)?;
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(is_port);
        if !port_ok {
            return Err(HostProblem::InvalidHost);
        }
        let ok = !address.is_empty()
            && address
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !ok {
            return Err(HostProblem::InvalidHost);
        }
        address
    } else {
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if is_port(port) => host,
            Some(_) => return Err(HostProblem::InvalidHost),
            None => authority,
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        let ok = !host.ends_with('.')
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !ok || host.starts_with('.') || host.contains("..") {
            return Err(HostProblem::InvalidHost);
        }
        host
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Ok(Cow::Borrowed(host))
    }
}

/// A port after `:`: digits only, or nothing (`host:` means the default port).
fn is_port(digits: &str) -> bool {
    digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The path with every letter outside a percent-escape in lower case: the one spelling of a
/// path for upstreams that fold case (`case_insensitive_paths`).
pub fn fold_case(path: &str) -> Cow<'_, str> {
    if !path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut escape = 0;
    for c in path.chars() {
        if c == '%' {
            escape = 2;
            out.push(c);
        } else if escape > 0 {
            escape -= 1;
            out.push(c);
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    Cow::Owned(out)
}

/// Decodes every `%XX` of a query-parameter name, for comparing names the way servers read them
/// (`api%5Fkey` is `api_key`); `+` is a space in forms. Invalid escapes stay as they are.
pub fn decoded_query_name(name: &str) -> Cow<'_, str> {
    if !name.contains(['%', '+']) {
        return Cow::Borrowed(name);
    }
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        let escaped = (byte == b'%')
            .then(|| {
                let high = bytes.get(at + 1).copied().and_then(hex_value)?;
                let low = bytes.get(at + 2).copied().and_then(hex_value)?;
                Some(high * 16 + low)
            })
            .flatten();
        match (escaped, byte) {
            (Some(value), _) => {
                out.push(value);
                at += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                at += 1;
            }
            (None, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn canonical(path: &str) -> Result<String, PathProblem> {
        canonical_path(path).map(Cow::into_owned)
    }

    #[test]
    fn canonical_paths_are_borrowed_unchanged() {
        for path in [
            "/",
            "/v1/chat/completions",
            "/v1/chat/",
            "/a.b/c..d/.e/..f",
            "/v1/models/gpt-4o:generate",
        ] {
            assert!(
                matches!(canonical_path(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn variants_become_the_canonical_path() {
        let cases = [
            ("//admin/x", "/admin/x"),
            ("/./admin/x", "/admin/x"),
            ("/%61dmin/x", "/admin/x"),
            ("/%41dmin", "/Admin"),
            ("/healthz/../admin/secret", "/admin/secret"),
            ("/healthz/%2e%2e/admin/x", "/admin/x"),
            ("/healthz/%2E./admin", "/admin"),
            ("//v1/chat/completions", "/v1/chat/completions"),
            ("/v1/projects//proj_beta/x", "/v1/projects/proj_beta/x"),
            (
                "/v1/projects/proj_alpha/../proj_beta/x",
                "/v1/projects/proj_beta/x",
            ),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a//", "/a/"),
            ("/..x/%7e", "/..x/~"),
            ("/a/%c3%a9", "/a/%C3%A9"),
            ("/a/%20b", "/a/%20b"),
            ("/a/%25", "/a/%25"),
            ("/a/%25zz", "/a/%25zz"),
        ];
        for (raw, want) in cases {
            assert_eq!(canonical(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let cases = [
            ("", PathProblem::NotAbsolute),
            ("*", PathProblem::NotAbsolute),
            ("http://evil/admin", PathProblem::NotAbsolute),
            ("/admin%2Fx", PathProblem::EncodedSlash),
            ("/admin%2fx", PathProblem::EncodedSlash),
            ("/a%5Cb", PathProblem::Backslash),
            ("/a\\b", PathProblem::Backslash),
            ("/healthz;x=1/../admin", PathProblem::Semicolon),
            ("/admin;/x", PathProblem::Semicolon),
            ("/admin%3Bx/y", PathProblem::Semicolon),
            ("/admin%3bx/y", PathProblem::Semicolon),
            ("/admin%3Fx", PathProblem::EncodedDelimiter),
            ("/admin%23x", PathProblem::EncodedDelimiter),
            ("/healthz/%252e%252e/admin", PathProblem::DoubleEncoding),
            ("/a%2", PathProblem::BadEscape),
            ("/a%zz", PathProblem::BadEscape),
            ("/a%00", PathProblem::InvalidByte),
            ("/a%0a", PathProblem::InvalidByte),
            ("/a b", PathProblem::InvalidByte),
            ("/a#b", PathProblem::InvalidByte),
            ("/caf\u{e9}", PathProblem::InvalidByte),
            ("/..", PathProblem::AboveRoot),
            ("/a/../../b", PathProblem::AboveRoot),
            ("/%2e%2e/admin", PathProblem::AboveRoot),
        ];
        for (raw, want) in cases {
            assert_eq!(canonical(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn canonical_form_is_a_fixed_point() {
        for raw in ["//a/./b/../c//", "/%61/%2e/b", "/x/%c3%a9/..", "/a/%25"] {
            let once = canonical(raw).expect("valid");
            assert_eq!(canonical(&once).as_deref(), Ok(once.as_str()), "{raw}");
        }
    }

    #[test]
    fn hosts_lose_case_port_and_trailing_dot() {
        let cases = [
            ("secure.local", "secure.local"),
            ("Secure.Local", "secure.local"),
            ("secure.local.", "secure.local"),
            ("secure.local.:80", "secure.local"),
            ("secure.local:8443", "secure.local"),
            ("secure.local:", "secure.local"),
            ("[::1]:10000", "::1"),
            ("[FE80::1]", "fe80::1"),
            ("", ""),
        ];
        for (raw, want) in cases {
            assert_eq!(
                canonical_host(raw).map(Cow::into_owned).as_deref(),
                Ok(want),
                "{raw}"
            );
        }
    }

    #[test]
    fn ambiguous_hosts_are_refused() {
        let cases = [
            ("user@secure.local", HostProblem::UserInfo),
            ("u:p@secure.local:80", HostProblem::UserInfo),
            ("secure.local:80x", HostProblem::InvalidHost),
            ("secure%2elocal", HostProblem::InvalidHost),
            ("secure.local..", HostProblem::InvalidHost),
            ("a b", HostProblem::InvalidHost),
            ("[::1", HostProblem::InvalidHost),
            ("[::1]x", HostProblem::InvalidHost),
            ("a:b:c", HostProblem::InvalidHost),
        ];
        for (raw, want) in cases {
            assert_eq!(canonical_host(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn folding_case_keeps_escapes_upper_case() {
        assert_eq!(fold_case("/v1/Chat/%C3%A9X"), "/v1/chat/%C3%A9x");
        assert!(matches!(fold_case("/v1/chat"), Cow::Borrowed(_)));
    }

    #[test]
    fn query_names_decode_for_comparison() {
        assert_eq!(decoded_query_name("api_key"), "api_key");
        assert_eq!(decoded_query_name("api%5Fkey"), "api_key");
        assert_eq!(decoded_query_name("api%5fkey"), "api_key");
        assert_eq!(decoded_query_name("a+b"), "a b");
        assert_eq!(decoded_query_name("a%zz"), "a%zz");
    }
}

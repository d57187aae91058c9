//! What the engine knows about a request: its headers (read once from the host) and the name of
//! the Envoy route it matched.

/// One header as the host gives it: lower-case name, raw value bytes (not necessarily UTF-8).
pub type Header = (String, Vec<u8>);

/// A request as the engine sees it. Borrowed: building one copies nothing.
#[derive(Debug, Clone, Copy)]
pub struct Request<'r> {
    headers: &'r [Header],
    route_name: Option<&'r str>,
}

impl<'r> Request<'r> {
    pub fn new(headers: &'r [Header], route_name: Option<&'r str>) -> Self {
        Self {
            headers,
            route_name,
        }
    }

    /// Every value of header `name` (given in lower case), in arrival order.
    pub fn header_values<'n>(&self, name: &'n str) -> impl Iterator<Item = &'r [u8]> + use<'r, 'n> {
        self.headers
            .iter()
            .filter(move |(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_slice())
    }

    /// The only value of header `name`: `None` when absent, and also when it is repeated or not
    /// UTF-8, because a repeated or garbled routing header must not be guessed at.
    pub fn single_header(&self, name: &str) -> Option<&'r str> {
        let mut values = self.header_values(name);
        let first = values.next()?;
        if values.next().is_some() {
            return None;
        }
        core::str::from_utf8(first).ok()
    }

    /// Every header name, in arrival order (repeated names repeat).
    pub fn header_names(&self) -> impl Iterator<Item = &'r str> {
        self.headers.iter().map(|(name, _)| name.as_str())
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header_values(name).next().is_some()
    }

    pub fn method(&self) -> &'r str {
        self.single_header(":method").unwrap_or_default()
    }

    /// `:path` including the query string.
    pub fn path(&self) -> &'r str {
        self.single_header(":path").unwrap_or_default()
    }

    /// `:path` without the query string.
    pub fn path_without_query(&self) -> &'r str {
        let path = self.path();
        path.split_once('?').map_or(path, |(before, _)| before)
    }

    /// `:authority` (or `host`) without the port.
    pub fn host(&self) -> &'r str {
        let authority = self
            .single_header(":authority")
            .or_else(|| self.single_header("host"))
            .unwrap_or_default();
        strip_port(authority)
    }

    pub fn route_name(&self) -> Option<&'r str> {
        self.route_name
    }

    pub fn request_id(&self) -> &'r str {
        self.single_header("x-request-id").unwrap_or_default()
    }

    /// Values of query parameter `name` in `:path`, undecoded.
    pub fn query_values<'n>(&self, name: &'n str) -> impl Iterator<Item = &'r str> + use<'r, 'n> {
        let query = self.path().split_once('?').map_or("", |(_, query)| query);
        query.split('&').filter_map(move |pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
    }
}

fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // "[::1]:8080" keeps its brackets off: "::1".
        return rest.split_once(']').map_or(rest, |(address, _)| address);
    }
    authority
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(authority, |(host, _)| host)
}

/// `path` with every `name=...` query parameter removed; `None` when there was none.
pub fn path_without_query_parameter(path: &str, name: &str) -> Option<String> {
    let (before, query) = path.split_once('?')?;
    let mut removed = false;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(key, _)| key);
            let drop = key == name;
            removed |= drop;
            !drop
        })
        .collect();
    if !removed {
        return None;
    }
    let kept: Vec<&str> = kept.into_iter().filter(|pair| !pair.is_empty()).collect();
    Some(if kept.is_empty() {
        before.to_owned()
    } else {
        format!("{before}?{}", kept.join("&"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn headers(pairs: &[(&str, &[u8])]) -> Vec<Header> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.to_vec()))
            .collect()
    }

    #[test]
    fn reads_pseudo_headers_and_strips_port() {
        let list = headers(&[
            (":method", b"POST"),
            (":path", b"/v1/chat?x=1"),
            (":authority", b"api.example.com:8443"),
        ]);
        let request = Request::new(&list, Some("chat"));
        assert_eq!(request.method(), "POST");
        assert_eq!(request.path_without_query(), "/v1/chat");
        assert_eq!(request.host(), "api.example.com");
        assert_eq!(request.route_name(), Some("chat"));
        assert_eq!(strip_port("[::1]:10000"), "::1");
        assert_eq!(strip_port("localhost"), "localhost");
    }

    #[test]
    fn single_header_refuses_repeated_or_garbled_values() {
        let list = headers(&[("x-p", b"a"), ("x-p", b"b"), ("x-q", b"\xff")]);
        let request = Request::new(&list, None);
        assert_eq!(request.single_header("x-p"), None);
        assert_eq!(request.single_header("x-q"), None);
        assert_eq!(request.header_values("x-p").count(), 2);
    }

    #[test]
    fn removes_query_parameter() {
        assert_eq!(
            path_without_query_parameter("/v1/x?api_key=k&a=1", "api_key").as_deref(),
            Some("/v1/x?a=1")
        );
        assert_eq!(
            path_without_query_parameter("/v1/x?api_key=k&api_key=j", "api_key").as_deref(),
            Some("/v1/x")
        );
        assert_eq!(path_without_query_parameter("/v1/x?a=1", "api_key"), None);
        assert_eq!(path_without_query_parameter("/v1/x", "api_key"), None);
    }
}

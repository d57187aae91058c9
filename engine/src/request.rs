//! What the engine knows about a request: its headers (read once from the host), the name of the
//! Envoy route it matched, and its canonical view (`canonical`), on which every check decides.

use std::borrow::Cow;

use crate::canonical::{
    canonical_host, canonical_path, decoded_query_name, fold_case, HostProblem, PathProblem,
};

/// One header as the host gives it: lower-case name, raw value bytes (not necessarily UTF-8).
pub type Header = (String, Vec<u8>);

/// Whether two header names are the same to a server that folds case and reads `_` as `-`
/// (CGI, WSGI and Rack all turn both into `HTTP_X_NAME`).
pub fn same_header_name(name: &str, other: &str) -> bool {
    name.len() == other.len()
        && name.bytes().zip(other.bytes()).all(|(a, b)| {
            let fold = |byte: u8| match byte {
                b'_' => b'-',
                _ => byte.to_ascii_lowercase(),
            };
            fold(a) == fold(b)
        })
}

/// Whether `name` starts with `prefix` as [`same_header_name`] compares names.
pub fn header_name_has_prefix(name: &str, prefix: &str) -> bool {
    name.get(..prefix.len())
        .is_some_and(|head| same_header_name(head, prefix))
}

/// Why a request has no canonical view: its path or host means different things to different
/// servers. Such a request is refused before any route is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestProblem {
    Path(PathProblem),
    Host(HostProblem),
    /// `x-http-method-override` and its kin: some frameworks act on the method they name, which
    /// is not the one the route was chosen by.
    MethodOverride,
    /// `x-original-url` or `x-rewrite-url`: some servers route by the path they name.
    PathOverride,
    /// The path is not in canonical form, and routes match Envoy route names, which Envoy chose
    /// from the path as sent: the route keyward decides with may not be the one the canonical
    /// path reaches.
    NonCanonicalRouteName,
}

/// Headers with which some servers replace the request's path.
pub const PATH_OVERRIDE_HEADERS: [&str; 2] = ["x-original-url", "x-rewrite-url"];

/// Headers with which some frameworks replace the request's method.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

impl RequestProblem {
    pub fn description(self) -> &'static str {
        match self {
            RequestProblem::Path(problem) => problem.description(),
            RequestProblem::Host(problem) => problem.description(),
            RequestProblem::MethodOverride => "method override headers are not accepted",
            RequestProblem::PathOverride => "path override headers are not accepted",
            RequestProblem::NonCanonicalRouteName => {
                "the path is not in canonical form (no //, ./, ../, escaped unreserved characters, or upper case where paths fold case)"
            }
        }
    }
}

/// The one spelling of the request's path and host that every check uses.
#[derive(Debug, Clone)]
struct View<'r> {
    path: Cow<'r, str>,
    host: Cow<'r, str>,
    /// The canonical path differs from the one sent.
    rewritten: bool,
}

/// A request as the engine sees it: the headers as sent, and their canonical view. Building one
/// copies nothing unless the path or host needs rewriting.
#[derive(Debug, Clone)]
pub struct Request<'r> {
    headers: &'r [Header],
    route_name: Option<&'r str>,
    view: Result<View<'r>, RequestProblem>,
}

impl<'r> Request<'r> {
    pub fn new(headers: &'r [Header], route_name: Option<&'r str>) -> Self {
        Self::with_case_folding(headers, route_name, false)
    }

    /// A request whose canonical path is also folded to lower case (`case_insensitive_paths`).
    pub fn with_case_folding(
        headers: &'r [Header],
        route_name: Option<&'r str>,
        fold: bool,
    ) -> Self {
        let mut request = Self {
            headers,
            route_name,
            view: Err(RequestProblem::Path(PathProblem::NotAbsolute)),
        };
        request.view = request.canonical_view(fold);
        request
    }

    fn canonical_view(&self, fold: bool) -> Result<View<'r>, RequestProblem> {
        let raw = self.raw_path();
        let without_query = raw.split_once('?').map_or(raw, |(before, _)| before);
        let mut path = canonical_path(without_query).map_err(RequestProblem::Path)?;
        if fold {
            if let Cow::Owned(folded) = fold_case(&path) {
                path = Cow::Owned(folded);
            }
        }
        let rewritten = path != without_query;
        let host = self.canonical_authority().map_err(RequestProblem::Host)?;
        self.forwarded_hosts_agree(&host)
            .map_err(RequestProblem::Host)?;
        let path_overridden = self.headers.iter().any(|(name, _)| {
            PATH_OVERRIDE_HEADERS
                .iter()
                .any(|wanted| same_header_name(name, wanted))
        });
        if path_overridden {
            return Err(RequestProblem::PathOverride);
        }
        let overridden = self.headers.iter().any(|(name, _)| {
            METHOD_OVERRIDE_HEADERS
                .iter()
                .any(|wanted| same_header_name(name, wanted))
        });
        if overridden {
            return Err(RequestProblem::MethodOverride);
        }
        Ok(View {
            path,
            host,
            rewritten,
        })
    }

    /// `x-forwarded-host` and `Forwarded: host=` must name the request's own host: frameworks
    /// that trust them (Rails does by default) would otherwise serve another host's routes.
    fn forwarded_hosts_agree(&self, host: &str) -> Result<(), HostProblem> {
        let named = |value: &str| -> Result<(), HostProblem> {
            let value = value.trim().trim_matches('"');
            if value.is_empty() {
                return Ok(());
            }
            match canonical_host(value) {
                Ok(named) if named == host => Ok(()),
                _ => Err(HostProblem::Conflicting),
            }
        };
        for (name, value) in self.headers {
            let forwarded_host = same_header_name(name, "x-forwarded-host");
            let forwarded = same_header_name(name, "forwarded");
            if !forwarded_host && !forwarded {
                continue;
            }
            let text = core::str::from_utf8(value).map_err(|_| HostProblem::InvalidHost)?;
            for element in text.split(',') {
                if forwarded_host {
                    named(element)?;
                    continue;
                }
                for pair in element.split(';') {
                    if let Some((key, value)) = pair.split_once('=') {
                        if key.trim().eq_ignore_ascii_case("host") {
                            named(value)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// `:authority` and `host` must agree: an HTTP/2 client can send both, and the upstream may
    /// read either. A repeated `host` is refused for the same reason.
    fn canonical_authority(&self) -> Result<Cow<'r, str>, HostProblem> {
        let single = |name: &str| -> Result<Option<&'r str>, HostProblem> {
            let mut values = self.header_values(name);
            match (values.next(), values.next()) {
                (None, _) => Ok(None),
                (Some(value), None) => core::str::from_utf8(value)
                    .map(Some)
                    .map_err(|_| HostProblem::InvalidHost),
                (Some(_), Some(_)) => Err(HostProblem::Conflicting),
            }
        };
        let authority = single(":authority")?.map(canonical_host).transpose()?;
        let host = single("host")?.map(canonical_host).transpose()?;
        match (authority, host) {
            (Some(authority), Some(host)) if authority != host => Err(HostProblem::Conflicting),
            (Some(authority), _) => Ok(authority),
            (None, Some(host)) => Ok(host),
            (None, None) => Ok(Cow::Borrowed("")),
        }
    }

    /// Why the request has no canonical view, if it has none.
    pub fn problem(&self) -> Option<RequestProblem> {
        self.view.as_ref().err().copied()
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

    /// `:path` as sent, query included.
    pub fn raw_path(&self) -> &'r str {
        self.single_header(":path").unwrap_or_default()
    }

    /// The canonical path, without the query; empty when the request has no canonical view.
    pub fn path_without_query(&self) -> &str {
        self.view.as_ref().map_or("", |view| view.path.as_ref())
    }

    /// Whether the canonical path differs from the one sent (it is then forwarded instead).
    pub fn path_was_rewritten(&self) -> bool {
        self.view.as_ref().is_ok_and(|view| view.rewritten)
    }

    /// The query string as sent (after `?`), if any.
    pub fn query(&self) -> Option<&'r str> {
        self.raw_path().split_once('?').map(|(_, query)| query)
    }

    /// The canonical host (`:authority`, else `host`): lower case, no port, no trailing dot.
    pub fn host(&self) -> &str {
        self.view.as_ref().map_or("", |view| view.host.as_ref())
    }

    pub fn route_name(&self) -> Option<&'r str> {
        self.route_name
    }

    pub fn request_id(&self) -> &'r str {
        self.single_header("x-request-id").unwrap_or_default()
    }

    /// Values of query parameter `name`, undecoded; names compare as servers read them
    /// (percent-decoded).
    pub fn query_values<'n>(&self, name: &'n str) -> impl Iterator<Item = &'r str> + use<'r, 'n> {
        let query = self.query().unwrap_or_default();
        query.split('&').filter_map(move |pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decoded_query_name(key) == name).then_some(value)
        })
    }

    /// The `:path` to forward: the canonical path, with the query minus every parameter whose
    /// decoded name is one of `credential_names` (compared without case, as some servers read
    /// them). `None` when that is exactly what was sent.
    pub fn forwarded_path(&self, credential_names: &[String]) -> Option<String> {
        let query = self.query();
        let is_credential = |pair: &&str| {
            let key = pair.split_once('=').map_or(*pair, |(key, _)| key);
            let key = decoded_query_name(key);
            credential_names
                .iter()
                .any(|name| name.eq_ignore_ascii_case(&key))
        };
        let drops = query.is_some_and(|query| query.split('&').any(|pair| is_credential(&pair)));
        if !drops && !self.path_was_rewritten() {
            return None;
        }
        let mut path = self.path_without_query().to_owned();
        if let Some(query) = query {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|pair| !pair.is_empty() && !is_credential(pair))
                .collect();
            if !kept.is_empty() || !drops {
                path.push('?');
                path.push_str(&kept.join("&"));
            }
        }
        Some(path)
    }
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

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn reads_pseudo_headers_and_strips_port() {
        let list = headers(&[
            (":method", b"POST"),
            (":path", b"/v1/chat?x=1"),
            (":authority", b"API.example.com.:8443"),
        ]);
        let request = Request::new(&list, Some("chat"));
        assert_eq!(request.method(), "POST");
        assert_eq!(request.path_without_query(), "/v1/chat");
        assert_eq!(request.host(), "api.example.com");
        assert_eq!(request.route_name(), Some("chat"));
        assert_eq!(request.problem(), None);
        assert!(!request.path_was_rewritten());
    }

    #[test]
    fn the_canonical_path_is_what_is_checked_and_forwarded() {
        let list = headers(&[(":path", b"//v1/./chat/%63ompletions?stream=1")]);
        let request = Request::new(&list, None);
        assert_eq!(request.path_without_query(), "/v1/chat/completions");
        assert_eq!(
            request.forwarded_path(&[]).as_deref(),
            Some("/v1/chat/completions?stream=1")
        );
    }

    #[test]
    fn authority_and_host_must_agree() {
        let agree = headers(&[
            (":path", b"/"),
            (":authority", b"secure.local"),
            ("host", b"Secure.Local.:443"),
        ]);
        assert_eq!(Request::new(&agree, None).host(), "secure.local");
        let disagree = headers(&[
            (":path", b"/"),
            (":authority", b"open.local"),
            ("host", b"secure.local"),
        ]);
        assert_eq!(
            Request::new(&disagree, None).problem(),
            Some(RequestProblem::Host(HostProblem::Conflicting))
        );
        let repeated = headers(&[(":path", b"/"), ("host", b"a"), ("host", b"b")]);
        assert_eq!(
            Request::new(&repeated, None).problem(),
            Some(RequestProblem::Host(HostProblem::Conflicting))
        );
        let userinfo = headers(&[(":path", b"/"), (":authority", b"u@secure.local")]);
        assert_eq!(
            Request::new(&userinfo, None).problem(),
            Some(RequestProblem::Host(HostProblem::UserInfo))
        );
    }

    #[test]
    fn forwarded_hosts_must_name_the_same_host() {
        let with = |name: &str, value: &str| {
            let list = headers(&[
                (":path", b"/"),
                (":authority", b"api.local"),
                (name, value.as_bytes()),
            ]);
            Request::new(&list, None).problem()
        };
        let conflict = Some(RequestProblem::Host(HostProblem::Conflicting));
        assert_eq!(with("x-forwarded-host", "secure.local"), conflict);
        assert_eq!(with("x_forwarded_host", "a, secure.local"), conflict);
        assert_eq!(with("forwarded", "for=1.2.3.4;host=secure.local"), conflict);
        assert_eq!(
            with("forwarded", "for=1.2.3.4;Host=\"secure.local\""),
            conflict
        );
        assert_eq!(with("x-forwarded-host", "API.local:443"), None);
        assert_eq!(with("forwarded", "for=1.2.3.4;proto=https"), None);
        assert_eq!(
            with("x-original-url", "/admin/x"),
            Some(RequestProblem::PathOverride)
        );
    }

    #[test]
    fn folding_case_rewrites_the_path() {
        let list = headers(&[(":path", b"/OPS/x?Q=1")]);
        let folded = Request::with_case_folding(&list, None, true);
        assert_eq!(folded.path_without_query(), "/ops/x");
        assert!(folded.path_was_rewritten());
        assert_eq!(folded.forwarded_path(&[]).as_deref(), Some("/ops/x?Q=1"));
        let escapes = headers(&[(":path", b"/a/%20b")]);
        assert!(!Request::new(&escapes, None).path_was_rewritten());
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
    fn credential_parameters_are_removed_however_spelled() {
        let credentials = names(&["api_key", "key"]);
        let forwarded = |path: &str| {
            let list = headers(&[(":path", path.as_bytes())]);
            Request::new(&list, None).forwarded_path(&credentials)
        };
        assert_eq!(
            forwarded("/v1/x?api_key=k&a=1").as_deref(),
            Some("/v1/x?a=1")
        );
        assert_eq!(
            forwarded("/v1/x?api_key=k&API_KEY=j").as_deref(),
            Some("/v1/x")
        );
        assert_eq!(forwarded("/v1/x?api%5Fkey=k&b").as_deref(), Some("/v1/x?b"));
        assert_eq!(
            forwarded("/v1/x?a=1&key=AIza").as_deref(),
            Some("/v1/x?a=1")
        );
        assert_eq!(forwarded("/v1/x?a=1"), None);
        assert_eq!(forwarded("/v1/x"), None);
        assert_eq!(forwarded("/v1/x?"), None);
        assert_eq!(forwarded("//v1/x?").as_deref(), Some("/v1/x?"));
    }

    #[test]
    fn query_values_compare_decoded_names() {
        let list = headers(&[(":path", b"/x?api%5Fkey=one&other=2")]);
        let request = Request::new(&list, None);
        assert_eq!(request.query_values("api_key").collect::<Vec<_>>(), ["one"]);
    }
}

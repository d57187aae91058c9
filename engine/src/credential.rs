//! Finding the caller's credential in a request: which sources to read, and what counts as
//! missing, malformed or ambiguous.

use serde::Deserialize;

use crate::request::Request;

/// A header source of credentials, as named in the plugin configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum CredentialSource {
    /// `Authorization: Bearer <key>`, scheme case-insensitive.
    #[serde(rename = "authorization")]
    AuthorizationBearer,
    /// `x-api-key: <key>` (Anthropic-style SDKs).
    #[serde(rename = "x-api-key")]
    ApiKeyHeader,
}

impl CredentialSource {
    pub fn header_name(self) -> &'static str {
        match self {
            CredentialSource::AuthorizationBearer => "authorization",
            CredentialSource::ApiKeyHeader => "x-api-key",
        }
    }

    pub fn defaults() -> Vec<CredentialSource> {
        vec![
            CredentialSource::AuthorizationBearer,
            CredentialSource::ApiKeyHeader,
        ]
    }
}

/// Why a presented credential cannot be used, before its format is even looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadCredential {
    RepeatedHeader,
    NotBearer,
    Empty,
    TooLong,
    Ambiguous,
}

impl BadCredential {
    pub const ALL: [BadCredential; 5] = [
        BadCredential::RepeatedHeader,
        BadCredential::NotBearer,
        BadCredential::Empty,
        BadCredential::TooLong,
        BadCredential::Ambiguous,
    ];

    pub fn description(self) -> &'static str {
        match self {
            BadCredential::RepeatedHeader => "the credential header was sent more than once",
            BadCredential::NotBearer => "the Authorization header must use the Bearer scheme",
            BadCredential::Empty => "the credential is empty",
            BadCredential::TooLong => "the credential is too long",
            BadCredential::Ambiguous => "different credentials were sent in one request",
        }
    }
}

/// Where to look for a credential on one request.
#[derive(Debug, Clone, Copy)]
pub struct CredentialLookup<'c> {
    pub sources: &'c [CredentialSource],
    pub query_parameter: Option<&'c str>,
    pub max_bytes: usize,
}

fn is_blank(byte: &u8) -> bool {
    *byte == b' ' || *byte == b'\t'
}

fn trim_blanks(mut value: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = value {
        if !is_blank(first) {
            break;
        }
        value = rest;
    }
    while let [rest @ .., last] = value {
        if !is_blank(last) {
            break;
        }
        value = rest;
    }
    value
}

/// The token of a `Bearer` Authorization value. Blanks around and between are tolerated
/// (`bearer   key`), any other scheme is refused.
fn bearer_token(value: &[u8]) -> Result<&[u8], BadCredential> {
    let value = trim_blanks(value);
    let scheme_end = value.iter().position(is_blank).unwrap_or(value.len());
    let (scheme, token) = value.split_at(scheme_end);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(BadCredential::NotBearer);
    }
    Ok(trim_blanks(token))
}

impl<'c> CredentialLookup<'c> {
    /// The one credential the request presents, `Ok(None)` when it presents none.
    pub fn find<'r>(&self, request: &Request<'r>) -> Result<Option<&'r [u8]>, BadCredential> {
        let mut found: Option<&'r [u8]> = None;
        let mut offer = |candidate: &'r [u8]| -> Result<(), BadCredential> {
            if candidate.len() > self.max_bytes {
                return Err(BadCredential::TooLong);
            }
            if candidate.is_empty() {
                return Err(BadCredential::Empty);
            }
            match found {
                Some(previous) if previous != candidate => Err(BadCredential::Ambiguous),
                _ => {
                    found = Some(candidate);
                    Ok(())
                }
            }
        };
        for source in self.sources {
            let mut values = request.header_values(source.header_name());
            let Some(value) = values.next() else {
                continue;
            };
            if values.next().is_some() {
                return Err(BadCredential::RepeatedHeader);
            }
            // The length cap applies to the raw header too, so a huge value is refused before
            // it is scanned for a scheme.
            if value.len() > self.max_bytes.saturating_add(64) {
                return Err(BadCredential::TooLong);
            }
            let token = match source {
                CredentialSource::AuthorizationBearer => bearer_token(value)?,
                CredentialSource::ApiKeyHeader => trim_blanks(value),
            };
            offer(token)?;
        }
        if let Some(parameter) = self.query_parameter {
            let mut values = request.query_values(parameter);
            if let Some(value) = values.next() {
                if values.next().is_some() {
                    return Err(BadCredential::RepeatedHeader);
                }
                offer(value.as_bytes())?;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Header;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const SOURCES: &[CredentialSource] = &[
        CredentialSource::AuthorizationBearer,
        CredentialSource::ApiKeyHeader,
    ];

    fn find(
        pairs: &[(&str, &[u8])],
        query: Option<&str>,
    ) -> Result<Option<Vec<u8>>, BadCredential> {
        let headers: Vec<Header> = pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
            .collect();
        let request = Request::new(&headers, None);
        let lookup = CredentialLookup {
            sources: SOURCES,
            query_parameter: query,
            max_bytes: 64,
        };
        lookup.find(&request).map(|found| found.map(<[u8]>::to_vec))
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_tolerates_blanks() {
        for value in [
            &b"Bearer abc"[..],
            b"bearer abc",
            b"BEARER   abc  ",
            b"Bearer\tabc",
        ] {
            assert_eq!(
                find(&[("authorization", value)], None),
                Ok(Some(b"abc".to_vec()))
            );
        }
    }

    #[test]
    fn refuses_bad_authorization_values() {
        assert_eq!(
            find(&[("authorization", b"Basic dXNlcjpwYXNz")], None),
            Err(BadCredential::NotBearer)
        );
        assert_eq!(
            find(&[("authorization", b"Bearer")], None),
            Err(BadCredential::Empty)
        );
        assert_eq!(
            find(&[("authorization", b"Bearer   ")], None),
            Err(BadCredential::Empty)
        );
        assert_eq!(
            find(&[("authorization", b"Bearerabc")], None),
            Err(BadCredential::NotBearer)
        );
        assert_eq!(
            find(
                &[
                    ("authorization", b"Bearer a"),
                    ("authorization", b"Bearer a")
                ],
                None
            ),
            Err(BadCredential::RepeatedHeader)
        );
        let long = [b"Bearer ".as_slice(), &[b'a'; 65]].concat();
        assert_eq!(
            find(&[("authorization", &long)], None),
            Err(BadCredential::TooLong)
        );
        let huge = vec![b'a'; 65536];
        assert_eq!(
            find(&[("x-api-key", &huge)], None),
            Err(BadCredential::TooLong)
        );
    }

    #[test]
    fn same_key_in_two_sources_is_fine_different_keys_are_ambiguous() {
        assert_eq!(
            find(
                &[("authorization", b"Bearer k1"), ("x-api-key", b"k1")],
                None
            ),
            Ok(Some(b"k1".to_vec()))
        );
        assert_eq!(
            find(
                &[("authorization", b"Bearer k1"), ("x-api-key", b"k2")],
                None
            ),
            Err(BadCredential::Ambiguous)
        );
    }

    #[test]
    fn query_parameter_only_when_opted_in() {
        let path: &[u8] = b"/v1/x?api_key=k1&a=b";
        assert_eq!(find(&[(":path", path)], None), Ok(None));
        assert_eq!(
            find(&[(":path", path)], Some("api_key")),
            Ok(Some(b"k1".to_vec()))
        );
        assert_eq!(
            find(&[(":path", path), ("x-api-key", b"k2")], Some("api_key")),
            Err(BadCredential::Ambiguous)
        );
    }

    #[test]
    fn no_credential_is_none() {
        assert_eq!(find(&[("accept", b"*/*")], None), Ok(None));
    }
}

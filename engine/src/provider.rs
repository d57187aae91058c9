//! Model providers and how each takes its API key: what a route's `provider` option names, the
//! header the provider's key goes in, and every header a client might send a provider key in
//! (removed on provider routes, whatever their spelling).

use core::fmt;

use serde::{Deserialize, Serialize};

/// A model provider whose key keyward can inject (seed 004's list, plus Azure OpenAI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Openai,
    Anthropic,
    Azure,
    Google,
    Mistral,
    Groq,
    Deepseek,
    Cohere,
    Xai,
    Perplexity,
}

impl Provider {
    pub const ALL: [Provider; 10] = [
        Provider::Openai,
        Provider::Anthropic,
        Provider::Azure,
        Provider::Google,
        Provider::Mistral,
        Provider::Groq,
        Provider::Deepseek,
        Provider::Cohere,
        Provider::Xai,
        Provider::Perplexity,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Azure => "azure",
            Provider::Google => "google",
            Provider::Mistral => "mistral",
            Provider::Groq => "groq",
            Provider::Deepseek => "deepseek",
            Provider::Cohere => "cohere",
            Provider::Xai => "xai",
            Provider::Perplexity => "perplexity",
        }
    }

    pub fn parse(text: &str) -> Option<Provider> {
        Provider::ALL
            .into_iter()
            .find(|provider| provider.as_str() == text)
    }

    /// The position of this provider in [`Provider::ALL`] (a small table index).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The header the provider's own API documents for its key.
    pub fn default_header(self) -> HeaderStyle {
        match self {
            Provider::Anthropic => HeaderStyle::XApiKey,
            Provider::Azure => HeaderStyle::ApiKey,
            Provider::Google => HeaderStyle::XGoogApiKey,
            Provider::Openai
            | Provider::Mistral
            | Provider::Groq
            | Provider::Deepseek
            | Provider::Cohere
            | Provider::Xai
            | Provider::Perplexity => HeaderStyle::Bearer,
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a provider takes its key: which header, and whether the value is `Bearer <key>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeaderStyle {
    /// `authorization: Bearer <key>` (OpenAI and most others).
    #[serde(rename = "authorization")]
    Bearer,
    /// `x-api-key: <key>` (Anthropic).
    #[serde(rename = "x-api-key")]
    XApiKey,
    /// `api-key: <key>` (Azure OpenAI).
    #[serde(rename = "api-key")]
    ApiKey,
    /// `x-goog-api-key: <key>` (Google Gemini).
    #[serde(rename = "x-goog-api-key")]
    XGoogApiKey,
}

/// Every header a provider key travels in. On a provider route a client copy of each (in any
/// case, with `_` for `-`) is removed before the provider's own is set, so a client can never
/// smuggle its own provider key (or a second one) past keyward.
pub const PROVIDER_CREDENTIAL_HEADERS: [&str; 4] =
    ["authorization", "x-api-key", "api-key", "x-goog-api-key"];

/// Query parameters a provider reads its key from (Google's `?key=`); removed on every
/// forwarded request of a configuration with provider routes.
pub const PROVIDER_CREDENTIAL_QUERY_PARAMETERS: [&str; 2] = ["key", "api-key"];

impl HeaderStyle {
    pub fn header_name(self) -> &'static str {
        match self {
            HeaderStyle::Bearer => "authorization",
            HeaderStyle::XApiKey => "x-api-key",
            HeaderStyle::ApiKey => "api-key",
            HeaderStyle::XGoogApiKey => "x-goog-api-key",
        }
    }

    /// What goes before the key in the header's value.
    pub fn value_prefix(self) -> &'static str {
        match self {
            HeaderStyle::Bearer => "Bearer ",
            HeaderStyle::XApiKey | HeaderStyle::ApiKey | HeaderStyle::XGoogApiKey => "",
        }
    }

    /// How `explain` and the docs name it: `authorization: Bearer`, `x-api-key`, ...
    pub fn describe(self) -> &'static str {
        match self {
            HeaderStyle::Bearer => "authorization: Bearer",
            HeaderStyle::XApiKey => "x-api-key",
            HeaderStyle::ApiKey => "api-key",
            HeaderStyle::XGoogApiKey => "x-goog-api-key",
        }
    }
}

/// What a provider route does when neither the project nor its org has a key for its provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingProviderKey {
    /// 403 `provider_key_missing`.
    #[default]
    Deny,
    /// Forward without a provider key (the client's are still removed): for a fallback key set
    /// further down the filter chain, e.g. by Envoy's `credential_injector`.
    Pass,
}

/// A route's provider settings, compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderRoute {
    pub provider: Provider,
    pub header: HeaderStyle,
    pub missing: MissingProviderKey,
}

/// Whose key a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyOwnerKind {
    Project,
    Org,
}

impl KeyOwnerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyOwnerKind::Project => "project",
            KeyOwnerKind::Org => "org",
        }
    }

    /// The inverse of [`KeyOwnerKind::as_str`].
    pub fn parse(text: &str) -> Option<KeyOwnerKind> {
        [KeyOwnerKind::Project, KeyOwnerKind::Org]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// A provider key used by an allowed request: reported to the control plane with the usage,
/// which turns it into the key's last use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderKeyUse {
    pub provider: Provider,
    pub owner: KeyOwnerKind,
}

impl ProviderKeyUse {
    /// `project/openai`: how a usage report names it (a string, so the filter carries no new
    /// parser for it).
    pub fn label(self) -> String {
        format!("{}/{}", self.owner.as_str(), self.provider.as_str())
    }

    pub fn parse(text: &str) -> Option<ProviderKeyUse> {
        let (owner, provider) = text.split_once('/')?;
        Some(ProviderKeyUse {
            provider: Provider::parse(provider)?,
            owner: KeyOwnerKind::parse(owner)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn every_provider_parses_back_and_has_a_header() {
        for provider in Provider::ALL {
            assert_eq!(Provider::parse(provider.as_str()), Some(provider));
            assert_eq!(Provider::ALL[provider.index()], provider);
            let header = provider.default_header().header_name();
            assert!(PROVIDER_CREDENTIAL_HEADERS.contains(&header), "{provider}");
        }
        assert_eq!(Provider::parse("OpenAI"), None);
        assert_eq!(Provider::Anthropic.default_header().describe(), "x-api-key");
        assert_eq!(
            Provider::Google.default_header().describe(),
            "x-goog-api-key"
        );
        assert_eq!(Provider::Azure.default_header().describe(), "api-key");
        assert_eq!(Provider::Openai.default_header().value_prefix(), "Bearer ");
    }
}

//! The ordered decision of DESIGN §3: the first failing check decides.

use crate::config::{PolicyUnavailable, Settings};
use crate::credential::BadCredential;
use crate::denial::{Denial, DenyCode};
use crate::hash::{digests_equal, sha256, Sha256Digest};
use crate::key_format::{parse_key, MalformedKey, ParsedKey};
use crate::request::Request;
use crate::route::{RequestedProject, Route};
use crate::snapshot::{Key, KeyLookup, KeyScope, KeyStatus, Policy, Project, ProjectStatus};

/// Who an allowed request acts as. Borrowed from the policy: nothing is copied per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity<'p> {
    pub key: &'p Key,
    /// The project the request acts on: the key's own, or the one an org key named.
    pub project: Option<&'p Project>,
    pub org: &'p str,
    pub environment: &'p str,
}

/// A refusal, with what is known of the caller for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection<'p> {
    pub denial: Denial,
    /// Set once the key is authenticated (never for unknown ids or wrong secrets).
    pub key: Option<&'p Key>,
    pub project: Option<&'p str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<'p> {
    /// The route needs no authentication.
    Exempt,
    /// No usable policy, and the configuration says to let requests through.
    FailOpen,
    Allow(Identity<'p>),
    Deny(Rejection<'p>),
}

impl Outcome<'_> {
    pub fn deny_code(&self) -> Option<DenyCode> {
        match self {
            Outcome::Deny(rejection) => Some(rejection.denial.code),
            _ => None,
        }
    }
}

/// Decides one request. `policy` is the current snapshot, if any; `now` is Unix seconds.
pub fn decide<'p>(
    settings: &'p Settings,
    route: &Route,
    request: &Request<'_>,
    policy: Option<&'p Policy>,
    now: u64,
) -> Outcome<'p> {
    match decide_checks(settings, route, request, policy, now) {
        Ok(outcome) => outcome,
        Err(rejection) => Outcome::Deny(rejection),
    }
}

fn decide_checks<'p>(
    settings: &'p Settings,
    route: &Route,
    request: &Request<'_>,
    policy: Option<&'p Policy>,
    now: u64,
) -> Result<Outcome<'p>, Rejection<'p>> {
    let cap_status = settings.spend_cap_status;
    let anonymous = |code: DenyCode| Rejection {
        denial: Denial::new(code, cap_status),
        key: None,
        project: None,
    };

    // 0. Exempt routes.
    if route.exempt {
        return Ok(Outcome::Exempt);
    }

    // 1. A usable policy.
    let fresh = policy.filter(|policy| policy.is_fresh(now, settings.max_policy_age_seconds));
    let Some(policy) = fresh else {
        return match settings.policy_unavailable {
            PolicyUnavailable::FailOpen => Ok(Outcome::FailOpen),
            PolicyUnavailable::FailClosed => Err(anonymous(DenyCode::PolicyUnavailable)),
        };
    };

    // 2-3. Exactly one well-formed credential.
    let malformed = |detail: &str| Rejection {
        denial: Denial::new(DenyCode::MalformedApiKey, cap_status).with_detail(detail),
        key: None,
        project: None,
    };
    let credential = match settings.credential_lookup(route).find(request) {
        Ok(Some(credential)) => credential,
        Ok(None) => return Err(anonymous(DenyCode::MissingApiKey)),
        Err(bad) => return Err(malformed(BadCredential::description(bad))),
    };
    let parsed = parse_key(&settings.key_formats, credential)
        .map_err(|bad| malformed(MalformedKey::description(bad)))?;

    // 4. A known key with the right secret; one answer for both failures.
    let key = authenticate(policy, &parsed).ok_or_else(|| anonymous(DenyCode::InvalidApiKey))?;
    let key_project = match &key.scope {
        KeyScope::Project(position) => policy.project_at(*position),
        KeyScope::Org(_) => None,
    };
    let reject = |code: DenyCode, project: Option<&'p str>| Rejection {
        denial: Denial::new(code, cap_status),
        key: Some(key),
        project,
    };
    let own_project_id = key_project.map(|project| project.id.as_str());

    // 5-6. Key status and expiry.
    match key.status {
        KeyStatus::Revoked => return Err(reject(DenyCode::KeyRevoked, own_project_id)),
        KeyStatus::Paused | KeyStatus::Active => {}
    }
    if key.expires_at.is_some_and(|expires_at| now >= expires_at) {
        return Err(reject(DenyCode::KeyExpired, own_project_id));
    }
    if key.status == KeyStatus::Paused {
        return Err(reject(DenyCode::KeyPaused, own_project_id));
    }

    // 7. The key's own project is live.
    if key_project.is_some_and(|project| project.status != ProjectStatus::Active) {
        return Err(reject(DenyCode::ProjectArchived, own_project_id));
    }

    // 8. Environment.
    let environment = key.environment.as_str();
    if !route.environments.is_empty() && !route.environments.iter().any(|e| e == environment) {
        return Err(reject(DenyCode::EnvironmentMismatch, own_project_id));
    }

    // 9, 9b. The project the request acts on.
    let (project, org) = match &key.scope {
        KeyScope::Project(_) => {
            let Some(own) = key_project else {
                // compile() guarantees the project exists; a miss is refused, not guessed.
                return Err(reject(DenyCode::ProjectMismatch, None));
            };
            match route.requested_project(request) {
                RequestedProject::None => {}
                RequestedProject::Named(named) if named == own.id => {}
                RequestedProject::Named(_) | RequestedProject::Unreadable => {
                    return Err(reject(DenyCode::ProjectMismatch, own_project_id))
                }
            }
            (Some(own), own.org.as_str())
        }
        KeyScope::Org(org) => match route.requested_project(request) {
            RequestedProject::None if route.require_project => {
                return Err(reject(DenyCode::ProjectRequired, None))
            }
            RequestedProject::None => (None, org.as_str()),
            RequestedProject::Named(named) => match policy.project(named) {
                Some(project) if project.org == *org => {
                    if project.status != ProjectStatus::Active {
                        return Err(reject(DenyCode::ProjectArchived, Some(&project.id)));
                    }
                    (Some(project), org.as_str())
                }
                // Unknown and foreign projects look alike: no oracle for project ids.
                _ => return Err(reject(DenyCode::ProjectMismatch, None)),
            },
            RequestedProject::Unreadable => return Err(reject(DenyCode::ProjectMismatch, None)),
        },
    };
    let project_id = project.map(|project| project.id.as_str());

    // 9c. Secret keys never from browsers.
    if route.deny_browser_requests && is_browser_request(request) {
        return Err(reject(DenyCode::BrowserRequestDenied, project_id));
    }

    // 10. Scopes and model allow-list.
    if let Some(missing) = route.scopes.iter().find(|scope| !key.has_scope(scope)) {
        let mut rejection = reject(DenyCode::InsufficientScope, project_id);
        rejection.denial = rejection.denial.with_detail(&format!("requires {missing}"));
        return Err(rejection);
    }
    if route.model.is_some() && !route.model_from_body() && key.models.is_some() {
        // A key with an allow-list must say which model it wants; an unnamed model is refused.
        let allowed = route
            .requested_model(request)
            .is_some_and(|model| key.allows_model(model));
        if !allowed {
            return Err(reject(DenyCode::ModelNotAllowed, project_id));
        }
    }

    // 11. Spend caps, key first.
    let over = |cap: Option<u64>, spent: u64| cap.is_some_and(|cap| spent >= cap);
    if over(key.spend_cap_microusd, key.spent_microusd) {
        let mut rejection = reject(DenyCode::SpendCapExceeded, project_id);
        rejection.denial = rejection.denial.with_detail("key cap");
        return Err(rejection);
    }
    if project.is_some_and(|project| over(project.spend_cap_microusd, project.spent_microusd)) {
        let mut rejection = reject(DenyCode::SpendCapExceeded, project_id);
        rejection.denial = rejection.denial.with_detail("project cap");
        return Err(rejection);
    }

    Ok(Outcome::Allow(Identity {
        key,
        project,
        org,
        environment,
    }))
}

/// The model check of step 10 for routes that read the model from the request body: run once
/// the body is known. A key with an allow-list must name an allowed model.
pub fn check_body_model(key: &Key, model: Option<&str>) -> Result<(), DenyCode> {
    if key.models.is_none() || model.is_some_and(|model| key.allows_model(model)) {
        Ok(())
    } else {
        Err(DenyCode::ModelNotAllowed)
    }
}

/// Finds the key and checks its secret. The digest is computed before the lookup, so an unknown
/// key id costs the same as a wrong secret.
///
/// For opaque keys whose prefix names an environment, the record must name the same one: the
/// control plane writes both, and a disagreement is refused rather than resolved either way.
fn authenticate<'p>(policy: &'p Policy, parsed: &ParsedKey<'_>) -> Option<&'p Key> {
    match parsed {
        ParsedKey::KeyIdSecret { key_id, secret } => {
            let presented = sha256(secret);
            let key = policy.key_by_id(key_id);
            let stored: Sha256Digest = match key.map(|key| key.lookup) {
                Some(KeyLookup::ById { secret_digest }) => secret_digest,
                _ => [0u8; 32],
            };
            let matches = digests_equal(&presented, &stored);
            key.filter(|_| matches)
        }
        ParsedKey::Opaque {
            whole_key,
            environment,
        } => {
            let presented = sha256(whole_key);
            let key = policy.key_by_hash(&presented)?;
            let KeyLookup::ByHash { key_digest } = key.lookup else {
                return None;
            };
            let environment_agrees = environment.is_none_or(|named| named == key.environment);
            (digests_equal(&presented, &key_digest) && environment_agrees).then_some(key)
        }
    }
}

fn is_browser_request(request: &Request<'_>) -> bool {
    request.has_header("origin")
        || request
            .header_values("sec-fetch-mode")
            .any(|mode| mode.eq_ignore_ascii_case(b"cors"))
}

#[cfg(test)]
#[path = "decision_tests.rs"]
mod tests;

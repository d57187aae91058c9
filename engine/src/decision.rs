//! The decision table's rows that the request headers decide (README "Decision table"), in
//! order: the first failing check decides. Rows that need the body or live counters are in
//! `admission`. Every step is written to a [`Trace`], which `explain` prints.

use crate::config::{PolicyUnavailable, Settings};
use crate::credential::BadCredential;
use crate::denial::{Denial, DenyCode};
use crate::hash::{digests_equal, sha256, Sha256Digest};
use crate::key_format::{parse_key, MalformedKey, ParsedKey};
use crate::request::{Request, RequestProblem};
use crate::route::{RequestedProject, Route};
use crate::snapshot::{Key, KeyLookup, KeyScope, KeyStatus, Policy, Project, ProjectStatus};
use crate::trace::{NoTrace, Trace};

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
    decide_traced(settings, route, request, policy, now, &mut NoTrace)
}

/// [`decide`], writing every step to `trace`.
pub fn decide_traced<'p>(
    settings: &'p Settings,
    route: &Route,
    request: &Request<'_>,
    policy: Option<&'p Policy>,
    now: u64,
    trace: &mut impl Trace,
) -> Outcome<'p> {
    match decide_checks(settings, route, request, policy, now, trace) {
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
    trace: &mut impl Trace,
) -> Result<Outcome<'p>, Rejection<'p>> {
    let cap_status = settings.spend_cap_status;
    let anonymous = Anonymous { cap_status };

    // 0. One meaning for the path and host, or no route can be chosen. Where routes match
    // Envoy route names, Envoy chose the route from the path as sent: a path keyward would
    // rewrite may reach another route than the one decided on, so it is refused instead.
    let problem = request.problem().or_else(|| {
        (request.path_was_rewritten() && settings.needs_route_name())
            .then_some(RequestProblem::NonCanonicalRouteName)
    });
    if let Some(problem) = problem {
        let detail = problem.description();
        let mut rejection = anonymous.at(
            trace,
            "0",
            "canonical request",
            DenyCode::InvalidRequest,
            detail,
        );
        rejection.denial = rejection.denial.with_detail(detail);
        return Err(rejection);
    }
    trace.pass("0", "canonical request", || {
        format!(
            "path {}, host {:?}",
            request.path_without_query(),
            request.host()
        )
    });

    // 0a. Exempt routes.
    if route.exempt {
        trace.pass("0a", "route is exempt", || {
            format!("route {}: no authentication", route.name)
        });
        return Ok(Outcome::Exempt);
    }
    // 0b. Paths no route names, under `unmatched_paths: deny`.
    if route.denies_all {
        return Err(anonymous.at(
            trace,
            "0b",
            "a route matches",
            DenyCode::RouteNotFound,
            "no route matches, and unmatched_paths is deny",
        ));
    }
    trace.pass("0b", "a route matches", || {
        if route.name.is_empty() {
            "no route matches: the fallback (a valid key, nothing more)".to_owned()
        } else {
            format!("route {}", route.name)
        }
    });

    // 1. A usable policy.
    let fresh = policy.filter(|policy| policy.is_fresh(now, settings.max_policy_age_seconds));
    let Some(policy) = fresh else {
        return match settings.policy_unavailable {
            PolicyUnavailable::FailOpen => {
                trace.pass("1", "policy available", || {
                    "no usable policy: fail_open lets the request through".to_owned()
                });
                Ok(Outcome::FailOpen)
            }
            PolicyUnavailable::FailClosed => Err(anonymous.at(
                trace,
                "1",
                "policy available",
                DenyCode::PolicyUnavailable,
                "no policy, or it is past expires_at or max_policy_age_seconds",
            )),
        };
    };
    trace.pass("1", "policy available", || {
        format!("policy version {}", policy.version)
    });

    // 2-3. Exactly one well-formed credential.
    let credential = match settings.credential_lookup(route).find(request) {
        Ok(Some(credential)) => credential,
        Ok(None) => {
            return Err(anonymous.at(
                trace,
                "2",
                "credential present",
                DenyCode::MissingApiKey,
                "no credential in any configured source",
            ));
        }
        Err(bad) => {
            return Err(malformed(
                trace,
                cap_status,
                BadCredential::description(bad),
            ))
        }
    };
    trace.pass("2", "credential present", String::new);
    let parsed = parse_key(&settings.key_formats, credential)
        .map_err(|bad| malformed(trace, cap_status, MalformedKey::description(bad)))?;
    trace.pass("3", "credential well-formed", String::new);

    // 4. A known key with the right secret; one answer for both failures.
    let Some(key) = authenticate(policy, &parsed) else {
        return Err(anonymous.at(
            trace,
            "4",
            "key known, secret matches",
            DenyCode::InvalidApiKey,
            "unknown key id or wrong secret (one answer for both)",
        ));
    };
    trace.pass("4", "key known, secret matches", || {
        format!("key {}", key.id)
    });
    let key_project = match &key.scope {
        KeyScope::Project(position) => policy.project_at(*position),
        KeyScope::Org(_) => None,
    };
    let own_project_id = key_project.map(|project| project.id.as_str());
    let reject = Rejector { key, cap_status };

    // 5-6. Key status and expiry.
    if key.status == KeyStatus::Revoked {
        return Err(reject.at(
            trace,
            "5",
            "key not revoked or expired",
            DenyCode::KeyRevoked,
            own_project_id,
            "the key is revoked".to_owned(),
        ));
    }
    if let Some(expires_at) = key.expires_at.filter(|expires_at| now >= *expires_at) {
        return Err(reject.at(
            trace,
            "5",
            "key not revoked or expired",
            DenyCode::KeyExpired,
            own_project_id,
            format!("the key expired at {expires_at}"),
        ));
    }
    trace.pass("5", "key not revoked or expired", || match key.expires_at {
        Some(at) => format!("active, expires at {at}"),
        None => "active, no expiry".to_owned(),
    });
    if key.status == KeyStatus::Paused {
        return Err(reject.at(
            trace,
            "6",
            "key not paused",
            DenyCode::KeyPaused,
            own_project_id,
            "the key is paused".to_owned(),
        ));
    }
    trace.pass("6", "key not paused", String::new);

    // 7. The key's own project is live.
    if key_project.is_some_and(|project| project.status != ProjectStatus::Active) {
        return Err(reject.at(
            trace,
            "7",
            "key's project active",
            DenyCode::ProjectArchived,
            own_project_id,
            "the key's project is archived or suspended".to_owned(),
        ));
    }
    trace.pass("7", "key's project active", || match key_project {
        Some(project) => format!("project {} is active", project.id),
        None => "an org key: no project of its own".to_owned(),
    });

    // 8. Environment.
    let environment = key.environment.as_str();
    if !route.environments.is_empty() && !route.environments.iter().any(|e| e == environment) {
        return Err(reject.at(
            trace,
            "8",
            "environment allowed",
            DenyCode::EnvironmentMismatch,
            own_project_id,
            format!(
                "key environment {environment}; the route allows {}",
                route.environments.join(",")
            ),
        ));
    }

    trace.pass("8", "environment allowed", || {
        if route.environments.is_empty() {
            format!("key environment {environment}; the route allows any")
        } else {
            format!("key environment {environment} is allowed")
        }
    });

    // 9, 9a, 9b. The project the request acts on.
    let (project, org) = match &key.scope {
        KeyScope::Project(_) => {
            let Some(own) = key_project else {
                // compile() guarantees the project exists; a miss is refused, not guessed.
                return Err(reject.at(
                    trace,
                    "9",
                    "project scope",
                    DenyCode::ProjectMismatch,
                    None,
                    "the key's project is not in the policy".to_owned(),
                ));
            };
            match route.requested_project(request) {
                RequestedProject::None => {}
                RequestedProject::Named(named) if named == own.id => {}
                RequestedProject::Named(_) | RequestedProject::Unreadable => {
                    return Err(reject.at(
                        trace,
                        "9",
                        "project scope",
                        DenyCode::ProjectMismatch,
                        own_project_id,
                        "the request names another project than the key's".to_owned(),
                    ))
                }
            }
            (Some(own), own.org.as_str())
        }
        KeyScope::Org(org) => match route.requested_project(request) {
            RequestedProject::None if route.require_project => {
                return Err(reject.at(
                    trace,
                    "9b",
                    "project named",
                    DenyCode::ProjectRequired,
                    None,
                    "an org key must name a project on this route".to_owned(),
                ))
            }
            RequestedProject::None => (None, org.as_str()),
            RequestedProject::Named(named) => match policy.project(named) {
                Some(project) if project.org == *org => {
                    if project.status != ProjectStatus::Active {
                        return Err(reject.at(
                            trace,
                            "9a",
                            "named project active",
                            DenyCode::ProjectArchived,
                            Some(&project.id),
                            format!("project {} is archived or suspended", project.id),
                        ));
                    }
                    (Some(project), org.as_str())
                }
                // Unknown and foreign projects look alike: no oracle for project ids.
                _ => {
                    return Err(reject.at(
                        trace,
                        "9",
                        "project scope",
                        DenyCode::ProjectMismatch,
                        None,
                        "the named project is unknown or of another org".to_owned(),
                    ))
                }
            },
            RequestedProject::Unreadable => {
                return Err(reject.at(
                    trace,
                    "9",
                    "project scope",
                    DenyCode::ProjectMismatch,
                    None,
                    "the project header is repeated or unreadable".to_owned(),
                ))
            }
        },
    };
    let project_id = project.map(|project| project.id.as_str());
    trace.pass("9", "project scope", || match project_id {
        Some(id) => format!("acts on project {id} of org {org}"),
        None => format!("acts on org {org}, no project"),
    });

    // 9c. Secret keys never from browsers.
    if route.deny_browser_requests && is_browser_request(request) {
        return Err(reject.at(
            trace,
            "9c",
            "not from a browser",
            DenyCode::BrowserRequestDenied,
            project_id,
            "the request carries Origin or Sec-Fetch-Mode: cors".to_owned(),
        ));
    }
    trace.pass("9c", "not from a browser", || {
        if route.deny_browser_requests {
            "no Origin, no Sec-Fetch-Mode: cors".to_owned()
        } else {
            "the route allows browser requests".to_owned()
        }
    });

    // 10. Scopes and model allow-list.
    if let Some(missing) = route.scopes.iter().find(|scope| !key.has_scope(scope)) {
        let mut rejection = reject.at(
            trace,
            "10",
            "scopes",
            DenyCode::InsufficientScope,
            project_id,
            format!("missing {missing} (the key has {})", key.scopes.join(",")),
        );
        rejection.denial = rejection.denial.with_detail(&format!("requires {missing}"));
        return Err(rejection);
    }
    trace.pass("10", "scopes", || {
        if route.scopes.is_empty() {
            "the route requires no scope".to_owned()
        } else {
            format!("the key has {}", route.scopes.join(","))
        }
    });
    if route.model.is_some() && !route.model_from_body() && policy.restricts_models(key, project) {
        // A key with an allow-list (its own, its plan's or its project's plan's) must say which
        // model it wants; an unnamed model is refused.
        let requested = route.requested_model(request);
        if !requested.is_some_and(|model| policy.allows_model(key, project, model)) {
            return Err(reject.at(
                trace,
                "10",
                "model allowed",
                DenyCode::ModelNotAllowed,
                project_id,
                match requested {
                    Some(model) => format!("{model} is not on the key's allow-list"),
                    None => "the request names no model, and the key has an allow-list".to_owned(),
                },
            ));
        }
        trace.pass("10", "model allowed", || {
            format!(
                "{} is on the key's allow-list",
                requested.unwrap_or_default()
            )
        });
    } else if !route.model_from_body() {
        trace.skip("10", "model allowed", || {
            if route.model.is_none() {
                "the route does not read a model".to_owned()
            } else {
                "the key has no model allow-list".to_owned()
            }
        });
    }

    // 10b. A body the route must read, announced larger than keyward reads.
    if route.reads_body() {
        let announced = request
            .single_header("content-length")
            .and_then(|length| length.trim().parse::<u64>().ok());
        let limit = settings.metering.max_request_body_bytes as u64;
        if announced.is_some_and(|length| length > limit) {
            return Err(reject.at(
                trace,
                "10b",
                "body within limits",
                DenyCode::RequestTooLarge,
                project_id,
                format!("content-length is over {limit} bytes"),
            ));
        }
    }

    // 11. Spend caps as the snapshot knows them (live counters: `admission`).
    let over = |cap: Option<u64>, spent: u64| cap.is_some_and(|cap| spent >= cap);
    if over(key.spend_cap_microusd, key.spent_microusd) {
        let mut rejection = reject.at(
            trace,
            "11",
            "spend cap (key)",
            DenyCode::SpendCapExceeded,
            project_id,
            "the snapshot's spend has reached the key's cap".to_owned(),
        );
        rejection.denial = rejection.denial.with_detail("key cap");
        return Err(rejection);
    }
    if project.is_some_and(|project| over(project.spend_cap_microusd, project.spent_microusd)) {
        let mut rejection = reject.at(
            trace,
            "11",
            "spend cap (project)",
            DenyCode::SpendCapExceeded,
            project_id,
            "the snapshot's spend has reached the project's cap".to_owned(),
        );
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

/// Refusals before a key is known: written to the trace, with nobody to name in the log.
struct Anonymous {
    cap_status: u16,
}

impl Anonymous {
    fn at(
        &self,
        trace: &mut impl Trace,
        row: &'static str,
        check: &'static str,
        code: DenyCode,
        detail: &str,
    ) -> Rejection<'static> {
        trace.fail(row, check, code.as_str(), || detail.to_owned());
        Rejection {
            denial: Denial::new(code, self.cap_status),
            key: None,
            project: None,
        }
    }
}

/// Row 3's refusal, with why.
fn malformed(trace: &mut impl Trace, cap_status: u16, detail: &str) -> Rejection<'static> {
    let mut rejection = Anonymous { cap_status }.at(
        trace,
        "3",
        "credential well-formed",
        DenyCode::MalformedApiKey,
        detail,
    );
    rejection.denial = rejection.denial.with_detail(detail);
    rejection
}

/// Refusals of an authenticated key: written to the trace, with the key for the log line.
struct Rejector<'p> {
    key: &'p Key,
    cap_status: u16,
}

impl<'p> Rejector<'p> {
    fn at(
        &self,
        trace: &mut impl Trace,
        row: &'static str,
        check: &'static str,
        code: DenyCode,
        project: Option<&'p str>,
        detail: String,
    ) -> Rejection<'p> {
        trace.fail(row, check, code.as_str(), || detail);
        Rejection {
            denial: Denial::new(code, self.cap_status),
            key: Some(self.key),
            project,
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

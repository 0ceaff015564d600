//! The health probe (`/healthz`, and later `$SYS.REQ.SERVER.*.HEALTHZ`): what a
//! single server checks and the words nats-server answers with, as a pure
//! function of the request and of the JetStream assets.

use serde::Serialize;

use crate::jetstream::service::AccountAssets;

/// The probe's options, as nats-server's `HealthzOptions` has them.
#[derive(Debug, Default, Clone)]
pub struct HealthzOptions {
    /// `js-enabled-only` (or the deprecated `js-enabled`): JetStream is on, nothing more.
    pub js_enabled_only: bool,
    /// `js-server-only`: the server accepts connections; JetStream is not checked.
    pub js_server_only: bool,
    /// `js-meta-only`: the meta layer only; a single server has no meta group to
    /// check, so its assets are checked as without it (as nats-server does).
    pub js_meta_only: bool,
    pub account: String,
    pub stream: String,
    pub consumer: String,
    /// `details`: every problem in `errors` instead of the first in `error`.
    pub details: bool,
}

/// What a problem concerns, as nats-server names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthzErrorType {
    BadRequest,
    Account,
    Stream,
    Consumer,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthzError {
    #[serde(rename = "type")]
    pub kind: HealthzErrorType,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub account: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stream: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub consumer: String,
    pub error: String,
}

/// The probe's answer: the HTTP status and nats-server's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthStatus {
    pub status: &'static str,
    /// The HTTP status; monitoring sends it as the response's status, not in the body.
    #[serde(skip)]
    pub code: u16,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<HealthzError>,
}

impl HealthStatus {
    pub fn is_healthy(&self) -> bool {
        self.error.is_empty() && self.errors.is_empty()
    }

    /// The JSON body, its fields in nats-server's order.
    pub fn body(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

const UNAVAILABLE: &str = "unavailable";

/// Checks what `opts` asks for. `jetstream` is `None` when JetStream is off:
/// then only the request itself can be wrong.
pub fn healthz(opts: &HealthzOptions, jetstream: Option<&[AccountAssets]>) -> HealthStatus {
    let mut health = Probe {
        details: opts.details,
        status: "ok",
        code: None,
        error: String::new(),
        errors: Vec::new(),
    };
    health.check(opts, jetstream);
    health.finish()
}

struct Probe {
    details: bool,
    status: &'static str,
    code: Option<u16>,
    error: String,
    errors: Vec<HealthzError>,
}

impl Probe {
    /// Records a problem: the first one alone without details, every one with.
    fn fail(&mut self, status: &'static str, problem: HealthzError) {
        if self.details {
            self.errors.push(problem);
        } else {
            self.status = status;
            self.error = problem.error;
        }
    }

    fn check(&mut self, opts: &HealthzOptions, jetstream: Option<&[AccountAssets]>) {
        let problem = |kind, error: String| HealthzError {
            kind,
            account: String::new(),
            stream: String::new(),
            consumer: String::new(),
            error,
        };
        if opts.account.is_empty() && !opts.stream.is_empty() {
            self.code = Some(400);
            let error = format!(
                "{:?} must not be empty when checking stream health",
                "account"
            );
            return self.fail("error", problem(HealthzErrorType::BadRequest, error));
        }
        if opts.stream.is_empty() && !opts.consumer.is_empty() {
            self.code = Some(400);
            let error = format!(
                "{:?} must not be empty when checking consumer health",
                "stream"
            );
            return self.fail("error", problem(HealthzErrorType::BadRequest, error));
        }
        if opts.js_server_only || opts.js_enabled_only {
            return;
        }
        let Some(accounts) = jetstream else {
            return;
        };
        let (mut account_found, mut stream_found, mut consumer_found) = (false, false, false);
        for account in accounts {
            if !opts.account.is_empty() {
                if account.name != opts.account {
                    continue;
                }
                account_found = true;
            }
            for stream in &account.streams {
                if !opts.stream.is_empty() {
                    if stream.name != opts.stream {
                        continue;
                    }
                    stream_found = true;
                }
                if !stream.recovered {
                    self.fail(
                        UNAVAILABLE,
                        HealthzError {
                            kind: HealthzErrorType::Stream,
                            account: account.name.clone(),
                            stream: stream.name.clone(),
                            consumer: String::new(),
                            error: format!(
                                "JetStream stream '{} > {}' could not be recovered",
                                account.name, stream.name
                            ),
                        },
                    );
                    if !self.details {
                        return;
                    }
                    continue;
                }
                if stream_found {
                    consumer_found =
                        !opts.consumer.is_empty() && stream.consumers.contains(&opts.consumer);
                    break;
                }
            }
            if account_found {
                break;
            }
        }
        // A missing asset replaces whatever else was found.
        let missing = if !opts.account.is_empty() && !account_found {
            Some(HealthzError {
                kind: HealthzErrorType::Account,
                account: opts.account.clone(),
                stream: String::new(),
                consumer: String::new(),
                error: format!("JetStream account {:?} not found", opts.account),
            })
        } else if !opts.stream.is_empty() && !stream_found {
            Some(HealthzError {
                kind: HealthzErrorType::Stream,
                account: opts.account.clone(),
                stream: opts.stream.clone(),
                consumer: String::new(),
                error: format!(
                    "JetStream stream {:?} not found on account {:?}",
                    opts.stream, opts.account
                ),
            })
        } else if !opts.consumer.is_empty() && !consumer_found {
            Some(HealthzError {
                kind: HealthzErrorType::Consumer,
                account: opts.account.clone(),
                stream: opts.stream.clone(),
                consumer: opts.consumer.clone(),
                error: format!(
                    "JetStream consumer {:?} not found for stream {:?} on account {:?}",
                    opts.consumer, opts.stream, opts.account
                ),
            })
        } else {
            None
        };
        if let Some(problem) = missing {
            self.code = Some(404);
            self.errors.clear();
            self.fail(UNAVAILABLE, problem);
        }
    }

    fn finish(self) -> HealthStatus {
        let healthy = self.error.is_empty() && self.errors.is_empty();
        let status = match (self.details, healthy) {
            (true, true) => "ok",
            (true, false) => "error",
            (false, _) => self.status,
        };
        HealthStatus {
            status,
            code: self.code.unwrap_or(if healthy { 200 } else { 503 }),
            error: self.error,
            errors: self.errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jetstream::service::StreamAssets;

    fn assets() -> Vec<AccountAssets> {
        let stream = |name: &str, recovered, consumers: &[&str]| StreamAssets {
            name: name.into(),
            recovered,
            consumers: consumers.iter().map(|c| c.to_string()).collect(),
        };
        vec![
            AccountAssets {
                name: "$G".into(),
                streams: vec![
                    stream("BROKEN", false, &[]),
                    stream("ORDERS", true, &["C1"]),
                ],
            },
            AccountAssets {
                name: "B".into(),
                streams: vec![],
            },
        ]
    }

    fn ask(q: &[(&str, &str)]) -> HealthzOptions {
        let mut o = HealthzOptions::default();
        for (k, v) in q {
            match *k {
                "account" => o.account = v.to_string(),
                "stream" => o.stream = v.to_string(),
                "consumer" => o.consumer = v.to_string(),
                "details" => o.details = true,
                "js-enabled-only" => o.js_enabled_only = true,
                "js-server-only" => o.js_server_only = true,
                _ => unreachable!(),
            }
        }
        o
    }

    fn probe(q: &[(&str, &str)]) -> (u16, String) {
        let a = assets();
        let h = healthz(&ask(q), Some(&a));
        (h.code, h.body())
    }

    #[test]
    fn a_stream_that_did_not_open_makes_the_server_unhealthy() {
        assert_eq!(
            probe(&[]),
            (
                503,
                r#"{"status":"unavailable","error":"JetStream stream '$G > BROKEN' could not be recovered"}"#
                    .into()
            )
        );
        assert_eq!(
            probe(&[("details", "")]),
            (
                503,
                r#"{"status":"error","errors":[{"type":"STREAM","account":"$G","stream":"BROKEN","error":"JetStream stream '$G > BROKEN' could not be recovered"}]}"#
                    .into()
            )
        );
        // Probes that stop short of the assets, and other accounts, are healthy.
        for q in [
            &[("js-enabled-only", "")][..],
            &[("js-server-only", "")],
            &[("account", "B")],
        ] {
            assert_eq!(probe(q), (200, r#"{"status":"ok"}"#.into()), "{q:?}");
        }
        assert_eq!(
            healthz(&ask(&[]), None).code,
            200,
            "JetStream off checks nothing"
        );
    }

    #[test]
    fn named_assets_are_found_or_reported_missing() {
        let ok = (200, r#"{"status":"ok"}"#.to_string());
        assert_eq!(
            probe(&[("account", "$G"), ("stream", "ORDERS")]),
            ok.clone()
        );
        assert_eq!(
            probe(&[("account", "$G"), ("stream", "ORDERS"), ("consumer", "C1")]),
            ok
        );
        assert_eq!(
            probe(&[("account", "NOPE")]),
            (
                404,
                r#"{"status":"unavailable","error":"JetStream account \"NOPE\" not found"}"#.into()
            )
        );
        assert_eq!(
            probe(&[("account", "B"), ("stream", "ORDERS")]),
            (
                404,
                r#"{"status":"unavailable","error":"JetStream stream \"ORDERS\" not found on account \"B\""}"#
                    .into()
            )
        );
        assert_eq!(
            probe(&[("account", "$G"), ("stream", "ORDERS"), ("consumer", "C2"), ("details", "")]),
            (
                404,
                r#"{"status":"error","errors":[{"type":"CONSUMER","account":"$G","stream":"ORDERS","consumer":"C2","error":"JetStream consumer \"C2\" not found for stream \"ORDERS\" on account \"$G\""}]}"#
                    .into()
            )
        );
    }

    #[test]
    fn a_stream_needs_its_account_and_a_consumer_its_stream() {
        assert_eq!(
            probe(&[("stream", "ORDERS")]),
            (
                400,
                r#"{"status":"error","error":"\"account\" must not be empty when checking stream health"}"#
                    .into()
            )
        );
        assert_eq!(
            probe(&[("account", "$G"), ("consumer", "C1"), ("details", "")]),
            (
                400,
                r#"{"status":"error","errors":[{"type":"BAD_REQUEST","error":"\"stream\" must not be empty when checking consumer health"}]}"#
                    .into()
            )
        );
        // Checked before anything else, JetStream on or off.
        assert_eq!(healthz(&ask(&[("stream", "X")]), None).code, 400);
    }
}

//! One HTTP request through the filter.
//!
//! Every outcome goes through [`Stream::deny`] or [`Stream::forward`]: a hostcall that fails
//! half-way through a rewrite turns into a denial, and a denial that cannot be sent resets
//! the stream. Nothing is ever forwarded by default.

use std::rc::Rc;

use bridle_core::decision::{Denial, Grant, Request};
use bridle_core::Reason;
use proxy_wasm::types::Action;

use crate::host::{Host, Level, MapType};
use crate::plugin::Plugin;

pub struct Stream {
    plugin: Option<Rc<Plugin>>,
}

impl Stream {
    pub fn new(plugin: Option<Rc<Plugin>>) -> Stream {
        Stream { plugin }
    }

    pub fn on_request_headers<H: Host>(&mut self, host: &H) -> Action {
        let Some(plugin) = self.plugin.clone() else {
            return refuse_unconfigured(host);
        };
        let headers = match host.header_map(MapType::RequestHeaders) {
            Ok(h) => h,
            Err(e) => {
                return self.deny(
                    host,
                    &plugin,
                    Denial::new(
                        Reason::Internal,
                        format!("Could not read the request (status {}).", e.0),
                    ),
                )
            }
        };
        let now = match host.now_nanos() {
            Ok(n) => n / 1_000_000_000,
            Err(_) => {
                return self.deny(
                    host,
                    &plugin,
                    Denial::new(Reason::Internal, "Could not read the clock."),
                )
            }
        };
        let decision = {
            let revocations = plugin.revocations.borrow();
            plugin
                .gate
                .decide(&Request { headers: &headers }, now, &revocations)
        };
        match decision {
            Ok(grant) => self.forward(host, &plugin, &grant),
            Err(denial) => self.deny(host, &plugin, denial),
        }
    }

    /// Rewrites the credentials and lets the request go.
    fn forward<H: Host>(&mut self, host: &H, plugin: &Plugin, grant: &Grant) -> Action {
        let rewrite = || -> Result<(), u32> {
            for name in &grant.strip_headers {
                host.remove_header(MapType::RequestHeaders, name)
                    .map_err(|e| e.0)?;
            }
            for (name, value) in plugin.injection(grant.subject.policy_index) {
                host.replace_header(MapType::RequestHeaders, name, value.as_bytes())
                    .map_err(|e| e.0)?;
            }
            Ok(())
        };
        if let Err(status) = rewrite() {
            let denial = Denial {
                reason: Reason::Internal,
                message: format!("Could not rewrite the request's credentials (status {status})."),
                subject: Some(grant.subject.clone()),
            };
            return self.deny(host, plugin, denial);
        }
        plugin
            .metrics
            .count(host, Some(grant.subject.policy_index), Reason::Allowed);
        Action::Continue
    }

    fn deny<H: Host>(&mut self, host: &H, plugin: &Plugin, denial: Denial) -> Action {
        let policy = denial.subject.as_ref().map(|s| s.policy_index);
        plugin.metrics.count(host, policy, denial.reason);
        if denial.reason == Reason::Internal {
            host.log(Level::Error, &format!("{}", denial.message));
        } else {
            host.log(
                Level::Debug,
                &format!(
                    "denied {} token={}",
                    denial.reason,
                    denial.subject.as_ref().map_or("-", |s| s.token_id.as_str())
                ),
            );
        }
        let response = plugin
            .gate
            .vendor()
            .error_response(denial.reason, &denial.message, None);
        send_or_reset(host, response.status, &response.headers, &response.body);
        Action::Pause
    }
}

/// Sends a local reply; if even that fails, resets the stream rather than leave it hanging
/// or let it through.
fn send_or_reset<H: Host>(host: &H, status: u16, headers: &[(&'static str, String)], body: &str) {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    if host
        .send_response(status, &headers, body.as_bytes())
        .is_err()
    {
        host.log(
            Level::Error,
            "could not send a local reply; resetting the stream",
        );
        let _ = host.reset_request();
    }
}

/// Without a configuration (Envoy normally refuses to start one), refuse everything.
fn refuse_unconfigured<H: Host>(host: &H) -> Action {
    let body =
        r#"{"error":{"type":"api_error","code":"internal","message":"Bridle is not configured."}}"#;
    send_or_reset(
        host,
        500,
        &[
            ("content-type", "application/json".into()),
            ("x-bridle-reason", "internal".into()),
        ],
        body,
    );
    Action::Pause
}

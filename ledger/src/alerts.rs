//! Cap alerts leave the ledger three ways: a log line and a metric when first picked up, and
//! a webhook POST retried with backoff until it is delivered or gives up. The outbox lives in
//! the store, so an alert fired just before a crash is still delivered after the restart.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::SharedClock;
use crate::metrics::{AlertLabels, Metrics};
use crate::store::{OutboxAlert, Store};

pub const MAX_ATTEMPTS: u32 = 8;

/// The wait before attempt `n + 1`: 1s, 2s, 4s ... capped at five minutes.
pub fn backoff_ms(attempts: u32) -> u64 {
    1000u64.saturating_mul(1 << attempts.min(20)).min(300_000)
}

pub async fn deliver<S: Store>(
    store: Arc<S>,
    webhook: Option<String>,
    metrics: Arc<Metrics>,
    clock: SharedClock,
) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let due = match store.due_alerts(100).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("reading due alerts: {e}");
                continue;
            }
        };
        for OutboxAlert { alert, attempts } in due {
            if attempts == 0 {
                tracing::warn!(
                    policy = %alert.policy,
                    token = alert.token_id.as_deref().unwrap_or("-"),
                    cap = alert.cap.as_str(),
                    threshold = alert.threshold,
                    spent = %alert.spent,
                    limit = %alert.limit,
                    "cap alert: spend reached {}% of the ${} {} cap",
                    alert.threshold,
                    alert.limit,
                    alert.cap.as_str()
                );
                metrics
                    .alerts
                    .get_or_create(&AlertLabels {
                        policy: alert.policy.clone(),
                        cap: alert.cap.as_str().into(),
                        threshold: alert.threshold.to_string(),
                    })
                    .inc();
            }
            let Some(url) = webhook.clone() else {
                let _ = store.alert_attempted(alert.id.clone(), true, None).await;
                continue;
            };
            let body = serde_json::json!({ "type": "bridle.cap_alert", "alert": alert });
            let agent = agent.clone();
            let sent = tokio::task::spawn_blocking(move || {
                agent
                    .post(&url)
                    .send_json(&body)
                    .map(|r| r.status().as_u16())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
            let delivered = matches!(sent, Ok(200..=299));
            let next = if delivered || attempts + 1 >= MAX_ATTEMPTS {
                None
            } else {
                Some(clock.now_ms() + backoff_ms(attempts))
            };
            if !delivered {
                match next {
                    Some(_) => {
                        tracing::warn!(alert = %alert.id, attempt = attempts + 1, "alert webhook failed ({sent:?}); will retry")
                    }
                    None => {
                        tracing::error!(alert = %alert.id, "alert webhook failed {MAX_ATTEMPTS} times ({sent:?}); giving up")
                    }
                }
            }
            if let Err(e) = store
                .alert_attempted(alert.id.clone(), delivered, next)
                .await
            {
                tracing::error!("recording an alert delivery: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps() {
        assert_eq!(backoff_ms(0), 1000);
        assert_eq!(backoff_ms(3), 8000);
        assert_eq!(backoff_ms(30), 300_000);
    }
}

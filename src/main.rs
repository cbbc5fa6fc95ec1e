//! Start-up only: logging, configuration, clients built once, breakers created once, then the
//! Lambda runtime loop. Everything that decides lives in the library.

use std::sync::Arc;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use etcd_lifecycle_hook::aws::autoscaling::AutoScalingLifecycle;
use etcd_lifecycle_hook::aws::ec2::Ec2Fleet;
use etcd_lifecycle_hook::aws::{ATTEMPT_TIMEOUT, CONNECT_TIMEOUT};
use etcd_lifecycle_hook::config::Config;
use etcd_lifecycle_hook::etcd::EtcdMembership;
use etcd_lifecycle_hook::handler::{deadline_from_epoch_ms, Handler};
use etcd_lifecycle_hook::metrics::stdout_sink;
use etcd_lifecycle_hook::resilience::Resilience;
use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde_json::Value;
use tracing_subscriber::EnvFilter;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let config = Arc::new(
        Config::from_env().inspect_err(|e| tracing::error!(error = %e, "bad configuration"))?,
    );
    // One layer per execution environment: the breakers live as long as it does.
    let resilience = Arc::new(Resilience::new(config.resilience()));
    // The SDK's own retries are off so they never stack under ours; each attempt is bounded.
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .connect_timeout(CONNECT_TIMEOUT)
                .build(),
        )
        .load()
        .await;
    let membership = EtcdMembership::new(&config, Arc::clone(&resilience))
        .inspect_err(|e| tracing::error!(error = %e, "bad etcd TLS configuration"))?;
    let handler = Arc::new(Handler {
        fleet: Ec2Fleet::new(aws_sdk_ec2::Client::new(&sdk), Arc::clone(&resilience)),
        lifecycle: AutoScalingLifecycle::new(
            aws_sdk_autoscaling::Client::new(&sdk),
            Arc::clone(&resilience),
            config.lifecycle_hook_names.clone(),
        ),
        membership,
        metrics: stdout_sink(),
        function_name: std::env::var("AWS_LAMBDA_FUNCTION_NAME")
            .unwrap_or_else(|_| "etcd-lifecycle-hook".into()),
        resilience,
        config: Arc::clone(&config),
    });
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let handler = Arc::clone(&handler);
        let reserve = config.deadline_reserve;
        async move {
            let deadline = deadline_from_epoch_ms(event.context.deadline, reserve);
            handler
                .handle(&event.payload, deadline)
                .await
                .map_err(|e| Diagnostic {
                    error_type: e.kind().to_string(),
                    error_message: e.to_string(),
                })
        }
    }))
    .await
}

/// JSON lines on stdout (Lambda's JSON log format); the level from `AWS_LAMBDA_LOG_LEVEL` (set by
/// Lambda's advanced logging controls), else `RUST_LOG`, else `info`.
fn init_tracing() {
    let filter = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .ok()
        .map(|level| level.to_lowercase())
        .and_then(|level| EnvFilter::try_new(level).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_span_list(false)
        .flatten_event(true)
        .with_target(false)
        .with_ansi(false)
        .init();
}

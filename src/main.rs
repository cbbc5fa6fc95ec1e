//! Start-up only: logging, configuration, breakers created once, then the Lambda runtime loop.
//! Everything that decides lives in the library.
//!
//! The AWS SDK's configuration and clients are built on first use, not here: loading them reads
//! and parses the system's root certificates (several milliseconds), which an invocation that
//! makes no AWS call (a test notification, bad input, an open circuit) never needs. They are
//! built once per execution environment all the same.

// The runtime's future nests the handler's, whose AWS calls now nest one more level: its layout
// needs a little more than the default query depth (128) to compute.
#![recursion_limit = "256"]

use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use etcd_lifecycle_hook::aws::autoscaling::AutoScalingLifecycle;
use etcd_lifecycle_hook::aws::ec2::Ec2Fleet;
use etcd_lifecycle_hook::aws::{ATTEMPT_TIMEOUT, CONNECT_TIMEOUT};
use etcd_lifecycle_hook::config::Config;
use etcd_lifecycle_hook::etcd::EtcdMembership;
use etcd_lifecycle_hook::handler::{check_reserve, deadline_from_epoch_ms, Handler, HandlerError};
use etcd_lifecycle_hook::metrics::stdout_sink;
use etcd_lifecycle_hook::model::{
    ActionKey, AwsError, Completion, Fleet, GroupLifecycle, Heartbeat, Instance, Lifecycle,
    SpotStatus,
};
use etcd_lifecycle_hook::resilience::policy::Deadline;
use etcd_lifecycle_hook::resilience::Resilience;
use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde_json::Value;
use tokio::sync::OnceCell;
use tracing_subscriber::EnvFilter;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let config = Arc::new(
        Config::from_env().inspect_err(|e| tracing::error!(error = %e, "bad configuration"))?,
    );
    // One layer per execution environment: the breakers live as long as it does.
    let resilience = Arc::new(Resilience::new(config.resilience()));
    let membership = EtcdMembership::new(&config, Arc::clone(&resilience))
        .inspect_err(|e| tracing::error!(error = %e, "bad etcd TLS configuration"))?;
    let sdk = Arc::new(OnceCell::new());
    let fleet = {
        let resilience = Arc::clone(&resilience);
        OnFirstUse::new(Arc::clone(&sdk), move |sdk: &SdkConfig| {
            Ec2Fleet::new(aws_sdk_ec2::Client::new(sdk), Arc::clone(&resilience))
        })
    };
    let lifecycle = {
        let resilience = Arc::clone(&resilience);
        let hook_names = config.lifecycle_hook_names.clone();
        OnFirstUse::new(sdk, move |sdk: &SdkConfig| {
            AutoScalingLifecycle::new(
                aws_sdk_autoscaling::Client::new(sdk),
                Arc::clone(&resilience),
                hook_names.clone(),
            )
        })
    };
    let handler = Arc::new(Handler {
        fleet,
        lifecycle,
        membership,
        metrics: stdout_sink(),
        function_name: std::env::var("AWS_LAMBDA_FUNCTION_NAME")
            .unwrap_or_else(|_| "etcd-lifecycle-hook".into()),
        resilience,
        config: Arc::clone(&config),
    });
    // Judged once, from the first invocation's time (about the function timeout); a reserve
    // that does not fit makes every invocation of this execution environment answer so.
    let reserve_fits: Arc<OnceLock<Result<(), HandlerError>>> = Arc::new(OnceLock::new());
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let handler = Arc::clone(&handler);
        let reserve = config.deadline_reserve;
        let reserve_fits = Arc::clone(&reserve_fits);
        async move {
            let deadline = deadline_from_epoch_ms(event.context.deadline, reserve);
            // A deadline already past is no timeout to judge by (a local emulator's, such as
            // cargo-lambda watch's 1970 one): the flows refuse work for it themselves.
            let available = deadline
                .at
                .saturating_duration_since(tokio::time::Instant::now());
            let refused = if available.is_zero() {
                None
            } else {
                reserve_fits
                    .get_or_init(|| check_reserve(available, reserve))
                    .as_ref()
                    .err()
                    .cloned()
            };
            // Handled all the same: with no time outside the reserve every flow holds its
            // actions (heartbeats), so none times out while the configuration is fixed; the
            // answer is the configuration error.
            let answer = handler.handle(&event.payload, deadline).await;
            let answer = match refused {
                Some(e) => {
                    tracing::error!(error = %e, "the deadline reserve does not fit the function timeout: actions held, configuration error answered");
                    Err(e)
                }
                None => answer,
            };
            answer.map_err(|e| Diagnostic {
                error_type: e.kind().to_string(),
                error_message: e.to_string(),
            })
        }
    }))
    .await
}

/// The SDK's shared configuration. The SDK's own retries are off so they never stack under ours;
/// each attempt is bounded.
async fn load_sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .connect_timeout(CONNECT_TIMEOUT)
                .build(),
        )
        .load()
        .await
}

/// An SDK wrapper built the first time it is used, from the SDK configuration loaded the first
/// time any of them is used; then kept for the life of the execution environment.
struct OnFirstUse<T> {
    sdk: Arc<OnceCell<SdkConfig>>,
    build: Box<dyn Fn(&SdkConfig) -> T + Send + Sync>,
    built: OnceCell<T>,
}

impl<T: Send + Sync> OnFirstUse<T> {
    fn new(
        sdk: Arc<OnceCell<SdkConfig>>,
        build: impl Fn(&SdkConfig) -> T + Send + Sync + 'static,
    ) -> Self {
        Self {
            sdk,
            build: Box::new(build),
            built: OnceCell::new(),
        }
    }

    fn get(&self) -> impl Future<Output = &T> + Send {
        self.built.get_or_init(|| async {
            let sdk = self.sdk.get_or_init(load_sdk_config).await;
            (self.build)(sdk)
        })
    }
}

impl Fleet for OnFirstUse<Ec2Fleet> {
    async fn group_instances(
        &self,
        groups: &[String],
        deadline: &Deadline,
    ) -> Result<Vec<Instance>, AwsError> {
        self.get().await.group_instances(groups, deadline).await
    }

    async fn instance(&self, id: &str, deadline: &Deadline) -> Result<Option<Instance>, AwsError> {
        self.get().await.instance(id, deadline).await
    }

    async fn existing_instances(
        &self,
        ids: &[String],
        ips: &[IpAddr],
        deadline: &Deadline,
    ) -> Result<Vec<Instance>, AwsError> {
        self.get()
            .await
            .existing_instances(ids, ips, deadline)
            .await
    }

    async fn spot_status(
        &self,
        request_id: &str,
        deadline: &Deadline,
    ) -> Result<Option<SpotStatus>, AwsError> {
        self.get().await.spot_status(request_id, deadline).await
    }
}

impl Lifecycle for OnFirstUse<AutoScalingLifecycle> {
    async fn complete(&self, key: &ActionKey, deadline: &Deadline) -> Result<Completion, AwsError> {
        self.get().await.complete(key, deadline).await
    }

    async fn heartbeat(&self, key: &ActionKey, deadline: &Deadline) -> Result<Heartbeat, AwsError> {
        self.get().await.heartbeat(key, deadline).await
    }

    async fn group_lifecycle(
        &self,
        group: &str,
        deadline: &Deadline,
    ) -> Result<GroupLifecycle, AwsError> {
        self.get().await.group_lifecycle(group, deadline).await
    }
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

//! The AWS wrappers as the handler gets them: built on first use, not at start-up. The SDK's
//! configuration (credentials chain, region, HTTPS client with its root certificates) is loaded
//! the first time any wrapper is used, then kept with the wrappers for the life of the
//! execution environment, so an init whose first event needs no AWS call parses no
//! certificates.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use tokio::sync::OnceCell;

use super::autoscaling::AutoScalingLifecycle;
use super::ec2::Ec2Fleet;
use super::{ATTEMPT_TIMEOUT, CONNECT_TIMEOUT};
use crate::model::{
    ActionKey, AwsError, Completion, Fleet, GroupLifecycle, Heartbeat, Instance, Lifecycle,
    SpotStatus,
};
use crate::resilience::policy::Deadline;
use crate::resilience::Resilience;

/// The SDK configuration both wrappers share, loaded by whichever is used first.
pub type SharedSdkConfig = Arc<OnceCell<SdkConfig>>;

/// `Ec2Fleet` over the shared SDK configuration, built on first use.
pub fn fleet(sdk: &SharedSdkConfig, resilience: &Arc<Resilience>) -> OnFirstUse<Ec2Fleet> {
    let resilience = Arc::clone(resilience);
    OnFirstUse::new(Arc::clone(sdk), move |sdk: &SdkConfig| {
        Ec2Fleet::new(aws_sdk_ec2::Client::new(sdk), Arc::clone(&resilience))
    })
}

/// `AutoScalingLifecycle` over the shared SDK configuration, built on first use.
pub fn lifecycle(
    sdk: &SharedSdkConfig,
    resilience: &Arc<Resilience>,
    hook_names: Vec<String>,
) -> OnFirstUse<AutoScalingLifecycle> {
    let resilience = Arc::clone(resilience);
    OnFirstUse::new(Arc::clone(sdk), move |sdk: &SdkConfig| {
        AutoScalingLifecycle::new(
            aws_sdk_autoscaling::Client::new(sdk),
            Arc::clone(&resilience),
            hook_names.clone(),
        )
    })
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
pub struct OnFirstUse<T> {
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

//! Auto Scaling lifecycle actions: complete, heartbeat, and what the sweep needs to find paused
//! instances (the group's hooks, its instances, and its warm pool's instances).
//!
//! Both `CompleteLifecycleAction` and `RecordLifecycleActionHeartbeat` answer "No active Lifecycle
//! Action found" once an action is over. For an idempotent handler that is "already done" (complete)
//! or "nothing left to hold" (heartbeat), never a failure, so redelivered events do no harm.

use std::sync::Arc;

use super::{aws_error, no_active_action};
use crate::model::{
    ActionKey, AwsError, Completion, GroupLifecycle, Heartbeat, Hook, Lifecycle, Transition,
    WaitingInstance,
};
use crate::resilience::policy::Deadline;
use crate::resilience::{Dependency, Resilience};

/// Auto Scaling through the `autoscaling` breaker.
#[derive(Debug, Clone)]
pub struct AutoScalingLifecycle {
    client: aws_sdk_autoscaling::Client,
    resilience: Arc<Resilience>,
    /// `LIFECYCLE_HOOK_NAMES`: the hooks the sweep may act on (empty: all).
    hook_names: Vec<String>,
}

impl AutoScalingLifecycle {
    pub fn new(
        client: aws_sdk_autoscaling::Client,
        resilience: Arc<Resilience>,
        hook_names: Vec<String>,
    ) -> Self {
        Self {
            client,
            resilience,
            hook_names,
        }
    }
}

/// The lifecycle states in which an instance waits on a hook, in the group or its warm pool.
const WAITING: &[&str] = &[
    "Pending:Wait",
    "Terminating:Wait",
    "Warmed:Pending:Wait",
    "Warmed:Terminating:Wait",
];
const RETAINED: &[&str] = &[
    "Terminating:Retained",
    "Warmed:Terminating:Retained",
    "Warmed:Pending:Retained",
];

impl Lifecycle for AutoScalingLifecycle {
    async fn complete(&self, key: &ActionKey, deadline: &Deadline) -> Result<Completion, AwsError> {
        let result = self
            .resilience
            .call(Dependency::Autoscaling, deadline, || {
                let request = self
                    .client
                    .complete_lifecycle_action()
                    .auto_scaling_group_name(&key.group)
                    .lifecycle_hook_name(&key.hook)
                    .lifecycle_action_result("CONTINUE");
                match &key.token {
                    Some(token) => request.lifecycle_action_token(token),
                    None => request.instance_id(&key.instance_id),
                }
                .send()
            })
            .await;
        match result {
            Ok(_) => Ok(Completion::Completed),
            Err(e) if no_active_action(&e) => Ok(Completion::AlreadyDone),
            Err(e) => Err(aws_error("autoscaling:CompleteLifecycleAction", e)),
        }
    }

    async fn heartbeat(&self, key: &ActionKey, deadline: &Deadline) -> Result<Heartbeat, AwsError> {
        let result = self
            .resilience
            .call(Dependency::Autoscaling, deadline, || {
                let request = self
                    .client
                    .record_lifecycle_action_heartbeat()
                    .auto_scaling_group_name(&key.group)
                    .lifecycle_hook_name(&key.hook);
                match &key.token {
                    Some(token) => request.lifecycle_action_token(token),
                    None => request.instance_id(&key.instance_id),
                }
                .send()
            })
            .await;
        match result {
            Ok(_) => Ok(Heartbeat::Recorded),
            Err(e) if no_active_action(&e) => Ok(Heartbeat::ActionOver),
            Err(e) => Err(aws_error("autoscaling:RecordLifecycleActionHeartbeat", e)),
        }
    }

    async fn group_lifecycle(
        &self,
        group: &str,
        deadline: &Deadline,
    ) -> Result<GroupLifecycle, AwsError> {
        let mut lifecycle = GroupLifecycle {
            hooks: self.our_hooks(group, deadline).await?,
            ..GroupLifecycle::default()
        };
        let found = self
            .file_group_instances(group, &mut lifecycle, deadline)
            .await?;
        // Warm-pool instances are not the group's: only DescribeWarmPool lists them, with the
        // same lifecycle states (`Warmed:Pending:Wait`, `Warmed:Terminating:Wait`, ...). A group
        // without a warm pool answers no instances (and no `WarmPoolConfiguration`); a group that
        // does not exist has no warm pool to ask about.
        if found {
            self.file_warm_pool_instances(group, &mut lifecycle, deadline)
                .await?;
        }
        Ok(lifecycle)
    }
}

impl AutoScalingLifecycle {
    /// The group's lifecycle hooks that are ours (`LIFECYCLE_HOOK_NAMES`, or all when unset).
    async fn our_hooks(&self, group: &str, deadline: &Deadline) -> Result<Vec<Hook>, AwsError> {
        let hooks = self
            .resilience
            .call(Dependency::Autoscaling, deadline, || {
                self.client
                    .describe_lifecycle_hooks()
                    .auto_scaling_group_name(group)
                    .send()
            })
            .await
            .map_err(|e| aws_error("autoscaling:DescribeLifecycleHooks", e))?;
        Ok(hooks
            .lifecycle_hooks()
            .iter()
            .filter_map(|h| {
                let name = h.lifecycle_hook_name()?.to_string();
                let transition = match h.lifecycle_transition()? {
                    "autoscaling:EC2_INSTANCE_LAUNCHING" => Transition::Launching,
                    "autoscaling:EC2_INSTANCE_TERMINATING" => Transition::Terminating,
                    _ => return None,
                };
                Some(Hook { name, transition })
            })
            .filter(|h| self.hook_names.is_empty() || self.hook_names.contains(&h.name))
            .collect())
    }

    /// Files every page of the group's own instances; `false` when AWS does not list the group.
    async fn file_group_instances(
        &self,
        group: &str,
        lifecycle: &mut GroupLifecycle,
        deadline: &Deadline,
    ) -> Result<bool, AwsError> {
        let mut found = false;
        let mut next_token: Option<String> = None;
        loop {
            let page = self
                .resilience
                .call(Dependency::Autoscaling, deadline, || {
                    self.client
                        .describe_auto_scaling_groups()
                        .auto_scaling_group_names(group)
                        .set_next_token(next_token.clone())
                        .send()
                })
                .await
                .map_err(|e| aws_error("autoscaling:DescribeAutoScalingGroups", e))?;
            for g in page.auto_scaling_groups() {
                found = true;
                for i in g.instances() {
                    if let (Some(id), Some(state)) = (i.instance_id(), i.lifecycle_state()) {
                        file_instance(lifecycle, id, state.as_str());
                    }
                }
            }
            match page.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_string()),
                _ => return Ok(found),
            }
        }
    }

    /// Files every page of the group's warm pool.
    async fn file_warm_pool_instances(
        &self,
        group: &str,
        lifecycle: &mut GroupLifecycle,
        deadline: &Deadline,
    ) -> Result<(), AwsError> {
        let mut next_token: Option<String> = None;
        loop {
            let page = self
                .resilience
                .call(Dependency::Autoscaling, deadline, || {
                    self.client
                        .describe_warm_pool()
                        .auto_scaling_group_name(group)
                        .set_next_token(next_token.clone())
                        .send()
                })
                .await
                .map_err(|e| aws_error("autoscaling:DescribeWarmPool", e))?;
            for i in page.instances() {
                if let (Some(id), Some(state)) = (i.instance_id(), i.lifecycle_state()) {
                    file_instance(lifecycle, id, state.as_str());
                }
            }
            match page.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_string()),
                _ => return Ok(()),
            }
        }
    }
}

/// Files one listed instance of the group by its lifecycle state, once: an instance seen in both
/// listings (moving between the group and its warm pool) keeps the state it was first seen in.
fn file_instance(lifecycle: &mut GroupLifecycle, id: &str, state: &str) {
    let listed = lifecycle.waiting.iter().any(|w| w.instance_id == id)
        || lifecycle.retained.iter().any(|r| r == id)
        || lifecycle.in_service.iter().any(|i| i == id);
    if listed {
        return;
    }
    if WAITING.contains(&state) {
        lifecycle.waiting.push(WaitingInstance {
            instance_id: id.to_string(),
            lifecycle_state: state.to_string(),
        });
    } else if RETAINED.contains(&state) {
        lifecycle.retained.push(id.to_string());
    } else if state == "InService" {
        lifecycle.in_service.push(id.to_string());
    }
}

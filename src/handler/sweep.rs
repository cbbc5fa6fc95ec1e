//! The scheduled reconcile sweep: finish what events missed (each waiting instance on each of our
//! hooks of its transition), report retained instances, then clean up stale members and add a
//! missing learner, group by group.

use super::{aws_error, fail, Handler, HandlerError, InstanceResult, Target};
use crate::membership::{find_member, identity, Identity};
use crate::metrics::InvocationMetrics;
use crate::model::{ActionKey, Fleet, GroupLifecycle, Instance, Lifecycle, Membership, Transition};
use crate::resilience::policy::Deadline;
use crate::resilience::Dependency;

impl<F: Fleet, L: Lifecycle, M: Membership> Handler<F, L, M> {
    pub(super) async fn sweep(
        &self,
        deadline: &Deadline,
        metrics: &mut InvocationMetrics,
    ) -> Result<Vec<InstanceResult>, HandlerError> {
        if self.config.asg_names.is_empty() {
            return Err(HandlerError::SweepWithoutGroups);
        }
        let mut results = Vec::new();
        for group in &self.config.asg_names {
            let group_result = InstanceResult::new(Some(group), None, None);
            // Only Auto Scaling is needed to find the waiting instances; each one's flow then
            // holds it even while EC2 or etcd is out, so no hook times out during an outage.
            if let Err(open) = self.resilience.ensure_closed(&[Dependency::Autoscaling]) {
                group_result.log();
                results.push(fail(group_result, open.into()));
                continue;
            }
            let lifecycle = match self.lifecycle.group_lifecycle(group, deadline).await {
                Ok(l) => l,
                Err(e) => {
                    let r = fail(group_result, aws_error(group, "", &e));
                    r.log();
                    results.push(r);
                    continue;
                }
            };
            self.sweep_waiting(group, &lifecycle, deadline, metrics, &mut results)
                .await;
            for instance in &lifecycle.retained {
                let mut r =
                    InstanceResult::new(Some(group), Some(instance), Some(Transition::Terminating));
                r.detail = "retained by the group's instance lifecycle policy: once its member is gone, terminate it with TerminateInstanceInAutoScalingGroup".into();
                r.log();
                results.push(r);
            }
            let r = self
                .sweep_membership(group, &lifecycle, group_result, deadline, metrics)
                .await;
            r.log();
            results.push(r);
        }
        Ok(results)
    }

    /// Each instance waiting in `lifecycle`, handled as its event would be, on every one of our
    /// hooks of its transition (which of them it still waits on, Auto Scaling does not say; a
    /// finished one answers "already done").
    async fn sweep_waiting(
        &self,
        group: &str,
        lifecycle: &GroupLifecycle,
        deadline: &Deadline,
        metrics: &mut InvocationMetrics,
        results: &mut Vec<InstanceResult>,
    ) {
        for waiting in &lifecycle.waiting {
            let Some(transition) = waiting.transition() else {
                continue;
            };
            let keys: Vec<ActionKey> = lifecycle
                .hooks
                .iter()
                .filter(|h| h.transition == transition)
                .map(|h| ActionKey {
                    group: group.to_string(),
                    hook: h.name.clone(),
                    instance_id: waiting.instance_id.clone(),
                    token: None,
                })
                .collect();
            let target = Target {
                group: group.to_string(),
                instance_id: waiting.instance_id.clone(),
                keys,
                transition,
                deadline,
            };
            let r = if target.keys.is_empty() {
                let mut r = self.result_for(&target);
                r.detail = format!(
                    "{}: no hook of ours for this transition (LIFECYCLE_HOOK_NAMES)",
                    waiting.lifecycle_state
                );
                r
            } else {
                match transition {
                    Transition::Terminating => self.terminate(&target, metrics).await,
                    Transition::Launching => {
                        let warm = waiting.lifecycle_state.starts_with("Warmed:");
                        self.launch(&target, warm, metrics).await
                    }
                }
            };
            r.log();
            results.push(r);
        }
    }

    /// Stale members of instances that died without a hook (terminated through EC2), and, with
    /// learners on, a learner for an in-service instance that has no member. Under the lock;
    /// what cannot be done now is said, and the next sweep tries again.
    async fn sweep_membership(
        &self,
        group: &str,
        lifecycle: &GroupLifecycle,
        mut result: InstanceResult,
        deadline: &Deadline,
        metrics: &mut InvocationMetrics,
    ) -> InstanceResult {
        if let Err(open) = self
            .resilience
            .ensure_closed(&[Dependency::Ec2, Dependency::Etcd])
        {
            result.detail = format!("membership left as is: {open}");
            return result;
        }
        let groups = self.config.cluster_groups(group);
        let instances = match self.fleet.group_instances(&groups, deadline).await {
            Ok(instances) => instances,
            Err(e) => return fail(result, aws_error(group, "", &e)),
        };
        let lock = match self.membership.lock(&instances, deadline).await {
            Ok(lock) => lock,
            Err(e) => {
                result.detail =
                    format!("membership left as is: cannot take the membership lock: {e}");
                return result;
            }
        };
        let mut notes = Vec::new();
        match self.view_with_promotions(&instances, deadline).await {
            Err(e) => notes.push(format!("membership left as is: {e}")),
            Ok((view, promoted)) => {
                notes.extend(promoted);
                let cleanup = self.remove_stale(view, &instances, deadline, metrics).await;
                result.member_removed = cleanup.removed > 0;
                notes.extend(cleanup.notes.iter().cloned());
                if self.config.etcd_add_learner_on_launch {
                    if let Some(unknown) = cleanup
                        .view
                        .members
                        .iter()
                        .find(|m| identity(m) == Identity::Unknown)
                    {
                        // Its instance may be one that looks member-less here: a learner added
                        // for it would be a second member for one machine.
                        notes.push(format!(
                            "no missing learner added: member {} names no instance or IP, so which instances have a member cannot be told",
                            super::display_name(unknown)
                        ));
                    } else if let Some(missing) =
                        without_member(&cleanup.view, lifecycle, &instances)
                    {
                        let note = match self.add_learner(&cleanup, missing, deadline).await {
                            Ok(note) | Err(note) => note,
                        };
                        notes.push(format!("{} has no member: {note}", missing.id));
                    }
                }
            }
        }
        self.membership.unlock(lock, deadline).await;
        result.detail = if notes.is_empty() {
            "membership matches the group".into()
        } else {
            notes.join("; ")
        };
        result
    }
}

/// The first in-service, running instance of the group with no member (one learner at a time).
fn without_member<'a>(
    view: &crate::model::ClusterView,
    lifecycle: &GroupLifecycle,
    instances: &'a [Instance],
) -> Option<&'a Instance> {
    instances.iter().find(|i| {
        i.state == "running"
            && lifecycle.in_service.contains(&i.id)
            && find_member(view, i).is_none()
    })
}

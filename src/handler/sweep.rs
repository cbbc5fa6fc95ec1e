//! The scheduled reconcile sweep: finish what events missed, report retained instances, then
//! clean up stale members and add a missing learner.
//!
//! Every group of `ASG_NAMES` is listed first (its hooks, its instances and its warm pool's).
//! With more than one group listed, every waiting instance of every group then gets a heartbeat
//! on each of our hooks it may be waiting on, before any work starts: a slow group (a lock wait,
//! a leader move, a Spot notice retried) cannot leave a later group's actions to time out. (With
//! one group there is no other group's work to wait for; a flow that holds sends its own
//! heartbeat, so a held instance gets one per sweep.) Then each group in turn: each waiting
//! instance on each of our hooks of what it may be waiting on, retained instances, stale members
//! and a missing learner. A group that cannot be listed is reported as failed; the others are
//! still handled.
//!
//! `Warmed:Pending:Wait` is both an instance going back to the warm pool on scale-in (a
//! terminate action) and one launching into the pool (a launch action); the sweep cannot tell
//! which, so it takes the terminate flow on the hooks of both transitions (`WaitingOn`): with no
//! member it completes them all, and while the removal is unsafe it holds them all.

use super::{error_for_aws_failure, fail, Handler, HandlerError, InstanceResult, Target};
use crate::membership::{find_member, identity, Identity};
use crate::metrics::InvocationMetrics;
use crate::model::{
    ActionKey, Fleet, GroupLifecycle, Heartbeat, Instance, Lifecycle, Membership, Transition,
    WaitingInstance, WaitingOn,
};
use crate::resilience::policy::Deadline;
use crate::resilience::Dependency;

/// One group as the sweep found it: its listing and a target for each waiting instance, or
/// the failed result that says why it could not be listed.
struct Listed<'a> {
    group: &'a str,
    found: Result<(GroupLifecycle, Vec<Waiter<'a>>), InstanceResult>,
}

/// A waiting instance and how the sweep handles it.
struct Waiter<'a> {
    lifecycle_state: String,
    waiting_on: WaitingOn,
    /// One key per hook of ours of each transition it may be waiting on (none: not ours).
    target: Target<'a>,
}

impl<F: Fleet, L: Lifecycle, M: Membership> Handler<F, L, M> {
    pub(super) async fn sweep(
        &self,
        deadline: &Deadline,
        metrics: &mut InvocationMetrics,
    ) -> Result<Vec<InstanceResult>, HandlerError> {
        if self.config.asg_names.is_empty() {
            return Err(HandlerError::SweepWithoutGroups);
        }
        let mut listed = Vec::new();
        for group in &self.config.asg_names {
            listed.push(self.list_group(group, deadline).await);
        }
        // With more than one instance waiting (in any group), each is heartbeated before any
        // work: holds under a quorum loss take seconds each (the lock's wait), and the last in
        // line must not time out behind the others (seen in chaos: 7 held instances, the sweep's
        // time spent before the last one's turn). One alone gets its heartbeat from its own flow.
        let waiting: Vec<_> = listed.iter().flat_map(|l| l.waiters()).collect();
        if waiting.len() > 1 {
            for waiter in waiting {
                self.keep_waiting(&waiter.target, metrics).await;
            }
        }
        let mut results = Vec::new();
        for Listed { group, found } in listed {
            let (lifecycle, waiters) = match found {
                Ok(found) => found,
                Err(failed) => {
                    failed.log();
                    results.push(failed);
                    continue;
                }
            };
            for waiter in &waiters {
                let r = self.finish_waiting(waiter, metrics).await;
                r.log();
                results.push(r);
            }
            for instance in &lifecycle.retained {
                let mut r =
                    InstanceResult::new(Some(group), Some(instance), Some(Transition::Terminating));
                r.detail = "retained by the group's instance lifecycle policy: once its member is gone, terminate it with TerminateInstanceInAutoScalingGroup".into();
                r.log();
                results.push(r);
            }
            let group_result = InstanceResult::new(Some(group), None, None);
            let r = self
                .sweep_membership(group, &lifecycle, group_result, deadline, metrics)
                .await;
            r.log();
            results.push(r);
        }
        Ok(results)
    }

    /// The group's hooks and waiting, retained and in-service instances (group and warm pool),
    /// with a target for each waiting instance. Only Auto Scaling is needed for this; each
    /// instance's flow then holds it even while EC2 or etcd is out, so no hook times out during
    /// an outage.
    async fn list_group<'a>(&self, group: &'a str, deadline: &'a Deadline) -> Listed<'a> {
        let failed = || InstanceResult::new(Some(group), None, None);
        if let Err(open) = self.resilience.ensure_closed(&[Dependency::Autoscaling]) {
            return Listed {
                group,
                found: Err(fail(failed(), open.into())),
            };
        }
        let found = match self.lifecycle.group_lifecycle(group, deadline).await {
            Ok(lifecycle) => {
                let waiters = lifecycle
                    .waiting
                    .iter()
                    .filter_map(|w| waiter(group, &lifecycle, w, deadline))
                    .collect();
                Ok((lifecycle, waiters))
            }
            Err(e) => Err(fail(failed(), error_for_aws_failure(group, "", &e))),
        };
        Listed { group, found }
    }

    /// One heartbeat on each of the instance's keys, before any group's work starts. A key
    /// whose action is not waiting answers "no active action"; a failure is logged and left to
    /// the instance's own flow, which holds or completes it.
    async fn keep_waiting(&self, target: &Target<'_>, metrics: &mut InvocationMetrics) {
        for key in &target.keys {
            match self.lifecycle.heartbeat(key, target.deadline).await {
                Ok(Heartbeat::Recorded) => metrics.heartbeats += 1,
                Ok(Heartbeat::ActionOver) => {}
                Err(e) => tracing::warn!(
                    instance_id = %target.instance_id,
                    group = %target.group,
                    hook = %key.hook,
                    error = %e,
                    "heartbeat before the sweep's work failed; the instance's own flow tries again"
                ),
            }
        }
    }

    /// A waiting instance handled as its event would be, on every one of our hooks of what it
    /// may be waiting on (Auto Scaling does not say which of them it still waits on; a finished
    /// one answers "already done").
    async fn finish_waiting(
        &self,
        waiter: &Waiter<'_>,
        metrics: &mut InvocationMetrics,
    ) -> InstanceResult {
        let target = &waiter.target;
        if target.keys.is_empty() {
            let mut r = self.result_for(target);
            r.detail = format!(
                "{}: no hook of ours for this transition (LIFECYCLE_HOOK_NAMES)",
                waiter.lifecycle_state
            );
            return r;
        }
        match waiter.waiting_on {
            WaitingOn::Launch => self.launch(target, false, metrics).await,
            WaitingOn::Terminate => self.terminate(target, metrics).await,
            WaitingOn::LaunchOrTerminate => {
                let mut r = self.terminate(target, metrics).await;
                r.detail = format!(
                    "{}: launching into the warm pool or going back to it on scale-in, handled as leaving the cluster: {}",
                    waiter.lifecycle_state, r.detail
                );
                r
            }
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
            Err(e) => return fail(result, error_for_aws_failure(group, "", &e)),
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

/// The target of one waiting instance: a key for each of our hooks of each transition it may be
/// waiting on; `None` for a state that is no wait.
fn waiter<'a>(
    group: &str,
    lifecycle: &GroupLifecycle,
    waiting: &WaitingInstance,
    deadline: &'a Deadline,
) -> Option<Waiter<'a>> {
    let waiting_on = waiting.waiting_on()?;
    let keys = lifecycle
        .hooks
        .iter()
        .filter(|h| waiting_on.transitions().contains(&h.transition))
        .map(|h| ActionKey {
            group: group.to_string(),
            hook: h.name.clone(),
            instance_id: waiting.instance_id.clone(),
            token: None,
        })
        .collect();
    Some(Waiter {
        lifecycle_state: waiting.lifecycle_state.clone(),
        waiting_on,
        target: Target {
            group: group.to_string(),
            instance_id: waiting.instance_id.clone(),
            keys,
            transition: waiting_on.flow(),
            deadline,
        },
    })
}

impl<'a> Listed<'a> {
    fn waiters(&self) -> impl Iterator<Item = &Waiter<'a>> {
        self.found.iter().flat_map(|(_, waiters)| waiters)
    }
}

#[cfg(test)]
#[path = "sweep_tests.rs"]
mod tests;

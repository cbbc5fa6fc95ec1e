//! The scheduled reconcile sweep: finish what events missed, report retained instances, then
//! clean up stale members and add a missing learner.
//!
//! Every group of `ASG_NAMES` is listed first (its hooks, its instances and its warm pool's).
//! With more than one instance waiting (in any group), every waiting instance then gets a
//! heartbeat on each of our hooks it may be waiting on, before any work starts: a slow group or
//! instance (a lock wait, a leader move, a Spot notice retried) cannot leave a later one's
//! actions to time out. (One alone has no other's work to wait for; a flow that holds sends its
//! own heartbeat, so a held instance gets one per sweep.) Then each group in turn: each waiting
//! instance on each of our hooks of what it may be waiting on, retained instances, stale members
//! and a missing learner, each decided by its flow and acted on (`outcome.rs`) as its line of
//! the summary. A group that cannot be listed is reported as failed; the others are still
//! handled.
//!
//! `Warmed:Pending:Wait` is both an instance going back to the warm pool on scale-in (a
//! terminate action) and one launching into the pool (a launch action); the sweep cannot tell
//! which, so it takes the terminate flow on the hooks of both transitions (`WaitingOn`): with no
//! member it completes them all, and while the removal is unsafe it holds them all.

use super::outcome::{Outcome, Subject};
use super::reconcile::{Cleanup, NotAdded};
use super::{
    display_name, error_for_aws_failure, Handler, HandlerError, InstanceResult, Target, ACTION_OVER,
};
use crate::membership::{find_member, identity, Identity};
use crate::model::{
    ActionKey, ClusterView, Fleet, GroupLifecycle, Heartbeat, Instance, Lifecycle, Membership,
    Transition, WaitingInstance, WaitingOn,
};
use crate::resilience::policy::Deadline;
use crate::resilience::Dependency;

/// One group as the sweep found it: its listing and a target for each waiting instance, or
/// the error that says why it could not be listed.
struct Listed<'a> {
    group: &'a str,
    found: Result<(GroupLifecycle, Vec<Waiter<'a>>), HandlerError>,
}

/// A waiting instance and how the sweep handles it.
struct Waiter<'a> {
    lifecycle_state: String,
    waiting_on: WaitingOn,
    /// One key per hook of ours of each transition it may be waiting on (none: not ours).
    target: Target<'a>,
    /// Heartbeats recorded for it before any work (counted with its summary line).
    heartbeats: u64,
}

impl<F: Fleet, L: Lifecycle, M: Membership> Handler<F, L, M> {
    pub(super) async fn sweep(
        &self,
        deadline: &Deadline,
    ) -> Result<Vec<InstanceResult>, HandlerError> {
        if self.config.asg_names.is_empty() {
            return Err(HandlerError::SweepWithoutGroups);
        }
        let mut listed = Vec::new();
        for group in &self.config.asg_names {
            listed.push(self.list_group(group, deadline).await);
        }
        self.keep_all_waiting(&mut listed).await;
        let mut results = Vec::new();
        for group in listed {
            results.extend(self.sweep_group(group, deadline).await);
        }
        Ok(results)
    }

    /// With more than one instance waiting (in any group), each is heartbeated before any
    /// work: holds under a quorum loss take seconds each (the lock's wait), and the last in
    /// line must not time out behind the others (seen in chaos: 7 held instances, the sweep's
    /// time spent before the last one's turn). One alone gets its heartbeat from its own flow.
    async fn keep_all_waiting(&self, listed: &mut [Listed<'_>]) {
        if listed.iter().flat_map(|l| l.waiters()).count() <= 1 {
            return;
        }
        for listed in listed.iter_mut() {
            if let Ok((_, waiters)) = &mut listed.found {
                for waiter in waiters {
                    waiter.heartbeats = self.keep_waiting(&waiter.target).await;
                }
            }
        }
    }

    /// One group's lines: each waiting instance, retained instances, then its membership work.
    async fn sweep_group(&self, listed: Listed<'_>, deadline: &Deadline) -> Vec<InstanceResult> {
        let group = listed.group;
        let line = || Subject::line(Some(group), None, None, deadline);
        let (lifecycle, waiters) = match listed.found {
            Ok(found) => found,
            Err(error) => return vec![self.act(line(), Outcome::Fail(error)).await],
        };
        let mut results = Vec::new();
        for waiter in &waiters {
            results.push(self.finish_waiting(waiter).await);
        }
        for instance in &lifecycle.retained {
            let subject = Subject::line(
                Some(group),
                Some(instance),
                Some(Transition::Terminating),
                deadline,
            );
            let outcome = Outcome::skip("retained by the group's instance lifecycle policy: once its member is gone, terminate it with TerminateInstanceInAutoScalingGroup");
            results.push(self.act(subject, outcome).await);
        }
        let outcome = self.sweep_membership(group, &lifecycle, deadline).await;
        results.push(self.act(line(), outcome).await);
        results
    }

    /// The group's hooks and waiting, retained and in-service instances (group and warm pool),
    /// with a target for each waiting instance. Only Auto Scaling is needed for this; each
    /// instance's flow then holds it even while EC2 or etcd is out, so no hook times out during
    /// an outage.
    async fn list_group<'a>(&self, group: &'a str, deadline: &'a Deadline) -> Listed<'a> {
        if let Err(open) = self.resilience.ensure_closed(&[Dependency::Autoscaling]) {
            return Listed {
                group,
                found: Err(open.into()),
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
            Err(e) => Err(error_for_aws_failure(group, "", &e)),
        };
        Listed { group, found }
    }

    /// One heartbeat on each of the instance's keys, before any group's work starts: how many
    /// were recorded. A key whose action is not waiting answers "no active action"; a failure is
    /// logged and left to the instance's own flow, which holds or completes it.
    async fn keep_waiting(&self, target: &Target<'_>) -> u64 {
        let mut recorded = 0;
        for key in &target.keys {
            match self.lifecycle.heartbeat(key, target.deadline).await {
                Ok(Heartbeat::Recorded) => recorded += 1,
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
        recorded
    }

    /// A waiting instance handled as its event would be, on every one of our hooks of what it
    /// may be waiting on (Auto Scaling does not say which of them it still waits on; a finished
    /// one answers "already done").
    async fn finish_waiting(&self, waiter: &Waiter<'_>) -> InstanceResult {
        let target = &waiter.target;
        let mut subject = target.subject();
        let outcome = if target.keys.is_empty() {
            Outcome::skip(format!(
                "{}: no hook of ours for this transition (LIFECYCLE_HOOK_NAMES)",
                waiter.lifecycle_state
            ))
        } else {
            match waiter.waiting_on {
                WaitingOn::Launch => self.launch(target, false).await,
                WaitingOn::Terminate => self.terminate(target).await,
                WaitingOn::LaunchOrTerminate => {
                    subject.preface = Some(format!(
                        "{}: launching into the warm pool or going back to it on scale-in, handled as leaving the cluster",
                        waiter.lifecycle_state
                    ));
                    self.terminate(target).await
                }
            }
        };
        let mut result = self.act(subject, outcome).await;
        result.tally.heartbeats += waiter.heartbeats;
        result
    }

    /// Stale members of instances that died without a hook (terminated through EC2), and, with
    /// learners on, a learner for an in-service instance that has no member. Under the lock;
    /// what cannot be done now is said, and the next sweep tries again.
    async fn sweep_membership(
        &self,
        group: &str,
        lifecycle: &GroupLifecycle,
        deadline: &Deadline,
    ) -> Outcome {
        if let Err(open) = self
            .resilience
            .ensure_closed(&[Dependency::Ec2, Dependency::Etcd])
        {
            return Outcome::skip(format!("membership left as is: {open}"));
        }
        let groups = self.config.cluster_groups(group);
        let instances = match self.fleet.group_instances(&groups, deadline).await {
            Ok(instances) => instances,
            Err(e) => return Outcome::Fail(error_for_aws_failure(group, "", &e)),
        };
        let lock = match self.membership.lock(&instances, deadline).await {
            Ok(lock) => lock,
            Err(e) => {
                return Outcome::skip(format!(
                    "membership left as is: cannot take the membership lock: {e}"
                ))
            }
        };
        let (notes, removed) = self.sweep_under_lock(lifecycle, &instances, deadline).await;
        self.membership.unlock(lock, deadline).await;
        let detail = if notes.is_empty() {
            "membership matches the group".into()
        } else {
            notes.join("; ")
        };
        Outcome::Skip { detail, removed }
    }

    /// The sweep's membership work under the lock: promotions, stale members, a missing
    /// learner. The notes that say what was done, and how many members were removed.
    async fn sweep_under_lock(
        &self,
        lifecycle: &GroupLifecycle,
        instances: &[Instance],
        deadline: &Deadline,
    ) -> (Vec<String>, u64) {
        let (view, mut notes) = match self.view_with_promotions(instances, deadline).await {
            Ok(read) => read,
            Err(e) => return (vec![format!("membership left as is: {e}")], 0),
        };
        let cleanup = self.remove_stale(view, instances, deadline).await;
        notes.extend(cleanup.notes.iter().cloned());
        if self.config.etcd_add_learner_on_launch {
            if let Some(note) = self
                .missing_learner(&cleanup, lifecycle, instances, deadline)
                .await
            {
                notes.push(note);
            }
        }
        (notes, cleanup.removed)
    }

    /// A learner for the first in-service instance with no member, and what came of it.
    async fn missing_learner(
        &self,
        cleanup: &Cleanup,
        lifecycle: &GroupLifecycle,
        instances: &[Instance],
        deadline: &Deadline,
    ) -> Option<String> {
        let view = &cleanup.view;
        if let Some(unknown) = view
            .members
            .iter()
            .find(|m| identity(m) == Identity::Unknown)
        {
            // Its instance may be one that looks member-less here: a learner added for it would
            // be a second member for one machine.
            return Some(format!(
                "no missing learner added: member {} names no instance or IP, so which instances have a member cannot be told",
                display_name(unknown)
            ));
        }
        let missing = without_member(view, lifecycle, instances)?;
        let note = match self.add_learner(cleanup, missing, None, deadline).await {
            Ok(note) | Err(NotAdded::Later(note)) => note,
            Err(NotAdded::ActionOver) => ACTION_OVER.to_string(),
            Err(NotAdded::Unconfirmed(error)) => error.to_string(),
        };
        Some(format!("{} has no member: {note}", missing.id))
    }
}

/// The first in-service, running instance of the group with no member (one learner at a time).
fn without_member<'a>(
    view: &ClusterView,
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
            // Listed waiting by the sweep itself moments before.
            confirm_before_change: false,
        },
        heartbeats: 0,
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

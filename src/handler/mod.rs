//! The decisions: what to do with each lifecycle action so that the etcd cluster never knowingly
//! loses quorum and no action is lost.
//!
//! Generic over the narrow traits of `model.rs`, so every branch runs in unit tests with fakes.
//! Invariants kept here:
//! - a member is removed only when `membership::quorum_after_removal` says the healthy voters
//!   left are a majority; otherwise the instance is held (heartbeat) and the invocation answers
//!   an error naming the hold, so the event comes back (a hold is never reported as success);
//! - no new work starts inside the deadline reserve: the time left there is for the heartbeat or
//!   the completion;
//! - before a flow makes its first call, the breakers of every dependency it needs are checked,
//!   and an open one fails the flow at once, with no call to it; if Auto Scaling is still
//!   reachable, the instance is held with one heartbeat so an outage cannot time its hook out.
//!
//! `action` values in the summary: `completed` (CONTINUE sent, or the action was already over),
//! `held` (heartbeat recorded, error answered), `skipped` (not ours, or nothing left to do),
//! `ignored` (test notification), `failed` (could not complete or hold; error answered).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::config::Config;
use crate::event::{self, EventError, Invocation, Message};
use crate::membership::{find_member, leader_candidate, quorum_after_removal, stale_members};
use crate::metrics::{InvocationMetrics, Sink};
use crate::model::{
    ActionKey, AwsError, ClusterView, Completion, Fleet, Heartbeat, Instance, Lifecycle, Member,
    Membership, MembershipError, Promotion, Removal, Transition,
};
use crate::resilience::breaker::Snapshot;
use crate::resilience::policy::Deadline;
use crate::resilience::{CircuitOpen, Dependency, Resilience};

/// What the invocation answers when it does not succeed. Lambda reports only the top-level text,
/// so each variant carries the whole story.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandlerError {
    #[error(transparent)]
    BadInput(#[from] EventError),
    #[error(transparent)]
    CircuitOpen(#[from] CircuitOpen),
    #[error("held {instance_id} of {group} in its wait state: {reason}; heartbeat recorded, the event will be delivered again")]
    Held {
        instance_id: String,
        group: String,
        reason: String,
    },
    #[error("{instance_id} of {group}: {detail}")]
    Failed {
        instance_id: String,
        group: String,
        detail: String,
    },
    #[error(
        "the scheduled sweep needs ASG_NAMES: set it to the comma-separated groups to reconcile"
    )]
    SweepWithoutGroups,
    #[error("{count} of {total} lifecycle actions not done; first: {first}")]
    Several {
        count: usize,
        total: usize,
        first: Box<HandlerError>,
    },
}

impl HandlerError {
    /// A stable name for the kind of failure, reported as Lambda's `errorType`.
    pub fn kind(&self) -> &'static str {
        match self {
            HandlerError::BadInput(_) => "InvalidEvent",
            HandlerError::CircuitOpen(_) => "CircuitOpen",
            HandlerError::Held { .. } => "Held",
            HandlerError::Failed { .. } => "Failed",
            HandlerError::SweepWithoutGroups => "SweepWithoutGroups",
            HandlerError::Several { .. } => "Several",
        }
    }
}

/// What was done for one instance (or one message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Completed,
    Held,
    Skipped,
    Ignored,
    Failed,
}

/// One line of the invocation summary.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceResult {
    pub instance_id: Option<String>,
    pub group: Option<String>,
    pub transition: Option<Transition>,
    pub action: Action,
    /// `CONTINUE`, `ALREADY_DONE`, `HEARTBEAT`, `ACTION_OVER`, `NONE` or `ERROR`.
    pub result: &'static str,
    pub detail: String,
    pub member_removed: bool,
    pub leader_moved: bool,
    #[serde(skip)]
    pub error: Option<HandlerError>,
}

impl InstanceResult {
    fn new(group: Option<&str>, instance_id: Option<&str>, transition: Option<Transition>) -> Self {
        Self {
            instance_id: instance_id.map(String::from),
            group: group.map(String::from),
            transition,
            action: Action::Skipped,
            result: "NONE",
            detail: String::new(),
            member_removed: false,
            leader_moved: false,
            error: None,
        }
    }

    fn log(&self) {
        let level_error = matches!(self.action, Action::Held | Action::Failed);
        let (instance, group) = (
            self.instance_id.as_deref().unwrap_or("-"),
            self.group.as_deref().unwrap_or("-"),
        );
        let transition = self.transition.map(Transition::as_str).unwrap_or("-");
        let action = serde_json::to_value(self.action).unwrap_or_default();
        let action = action.as_str().unwrap_or("-");
        if level_error {
            tracing::warn!(instance_id = instance, group, transition, action, result = self.result, member_removed = self.member_removed, leader_moved = self.leader_moved, detail = %self.detail, "lifecycle decision");
        } else {
            tracing::info!(instance_id = instance, group, transition, action, result = self.result, member_removed = self.member_removed, leader_moved = self.leader_moved, detail = %self.detail, "lifecycle decision");
        }
    }
}

/// The handler with its collaborators. Built once per execution environment.
pub struct Handler<F, L, M> {
    pub config: Arc<Config>,
    pub resilience: Arc<Resilience>,
    pub fleet: F,
    pub lifecycle: L,
    pub membership: M,
    pub metrics: Sink,
    pub function_name: String,
}

/// A paused lifecycle action and how the flow reaches it.
struct Target<'a> {
    key: ActionKey,
    transition: Transition,
    deadline: &'a Deadline,
}

/// How a removal attempt ended.
enum RemovalOutcome {
    Removed {
        leader_moved: bool,
    },
    AlreadyGone,
    /// Not safe now: quorum would break, etcd refused, or etcd could not be asked.
    Unsafe {
        reason: String,
        error: Option<HandlerError>,
    },
}

impl<F: Fleet, L: Lifecycle, M: Membership> Handler<F, L, M> {
    /// Handles one invocation payload. Bad input is rejected before any call.
    pub async fn handle(&self, payload: &Value, deadline: Deadline) -> Result<Value, HandlerError> {
        let started = Instant::now();
        let invocation = match event::parse(payload) {
            Ok(invocation) => invocation,
            Err(e) => {
                tracing::warn!(error = %e, "rejected invocation payload");
                return Err(e.into());
            }
        };
        let mut metrics = InvocationMetrics::default();
        let outcome = match invocation {
            Invocation::Direct(messages) => {
                let mut results = Vec::new();
                for message in messages {
                    results.extend(self.message(message, &deadline, &mut metrics).await?);
                }
                let errors: Vec<HandlerError> =
                    results.iter().filter_map(|r| r.error.clone()).collect();
                let summary = self.summary(&results, None);
                tracing::info!(summary = %summary, "invocation summary");
                match errors.len() {
                    0 => Ok(summary),
                    1 => Err(errors
                        .into_iter()
                        .next()
                        .unwrap_or(HandlerError::SweepWithoutGroups)),
                    count => Err(HandlerError::Several {
                        count,
                        total: results.len(),
                        first: Box::new(errors[0].clone()),
                    }),
                }
            }
            Invocation::Queue(records) => {
                let mut results = Vec::new();
                let mut failures = Vec::new();
                for record in records {
                    let failed = match record.message {
                        Err(e) => {
                            tracing::warn!(message_id = %record.message_id, error = %e, "rejected SQS record");
                            true
                        }
                        Ok(messages) => {
                            let mut failed = false;
                            for message in messages {
                                match self.message(message, &deadline, &mut metrics).await {
                                    Ok(rs) => {
                                        failed |= rs.iter().any(|r| r.error.is_some());
                                        results.extend(rs);
                                    }
                                    Err(e) => {
                                        tracing::warn!(message_id = %record.message_id, error = %e, "SQS record failed");
                                        failed = true;
                                    }
                                }
                            }
                            failed
                        }
                    };
                    if failed {
                        failures.push(record.message_id);
                    }
                }
                let summary = self.summary(&results, Some(&failures));
                tracing::info!(summary = %summary, "invocation summary");
                Ok(summary)
            }
        };
        metrics.emit(
            &self.metrics,
            &self.function_name,
            &self.resilience,
            started.elapsed(),
        );
        outcome
    }

    fn summary(&self, results: &[InstanceResult], failures: Option<&[String]>) -> Value {
        let breakers: Vec<Snapshot> = self.resilience.snapshots();
        let mut summary = json!({ "results": results, "breakers": breakers });
        if let Some(failures) = failures {
            summary["batchItemFailures"] = failures
                .iter()
                .map(|id| json!({ "itemIdentifier": id }))
                .collect::<Vec<_>>()
                .into();
        }
        summary
    }

    async fn message(
        &self,
        message: Message,
        deadline: &Deadline,
        metrics: &mut InvocationMetrics,
    ) -> Result<Vec<InstanceResult>, HandlerError> {
        match message {
            Message::TestNotification { group } => {
                let mut r = InstanceResult::new(group.as_deref(), None, None);
                r.action = Action::Ignored;
                r.detail = "autoscaling:TEST_NOTIFICATION acknowledged".into();
                r.log();
                Ok(vec![r])
            }
            Message::Sweep => self.sweep(deadline, metrics).await,
            Message::Lifecycle(event) => {
                let target = Target {
                    key: ActionKey {
                        group: event.group.clone(),
                        hook: event.hook.clone(),
                        instance_id: event.instance_id.clone(),
                        token: Some(event.token.clone()),
                    },
                    transition: event.transition,
                    deadline,
                };
                let result = if !self.config.handles_group(&event.group) {
                    let mut r = InstanceResult::new(
                        Some(&event.group),
                        Some(&event.instance_id),
                        Some(event.transition),
                    );
                    r.detail = format!("group {} is not in ASG_NAMES", event.group);
                    r
                } else {
                    match event.transition {
                        Transition::Terminating => self.terminate(&target, metrics).await,
                        Transition::Launching => {
                            self.launch(&target, event.into_warm_pool(), metrics).await
                        }
                    }
                };
                result.log();
                Ok(vec![result])
            }
        }
    }

    fn result_for(&self, target: &Target<'_>) -> InstanceResult {
        InstanceResult::new(
            Some(&target.key.group),
            Some(&target.key.instance_id),
            Some(target.transition),
        )
    }

    /// Terminate: find the member, check quorum, move leadership away, remove, complete.
    async fn terminate(
        &self,
        target: &Target<'_>,
        metrics: &mut InvocationMetrics,
    ) -> InstanceResult {
        let (mut result, instances) = match self
            .start_flow(
                target,
                &[Dependency::Autoscaling, Dependency::Ec2, Dependency::Etcd],
                "change membership",
                metrics,
            )
            .await
        {
            Ok(started) => started,
            Err(done) => return done,
        };
        let instance = instances
            .iter()
            .find(|i| i.id == target.key.instance_id)
            .cloned()
            .unwrap_or_else(|| Instance {
                id: target.key.instance_id.clone(),
                private_ip: None,
                private_dns: None,
                state: String::new(),
                spot: false,
            });
        let view = match self.membership.cluster(&instances, target.deadline).await {
            Ok(view) => view,
            Err(e) => {
                let (reason, error) = etcd_cause(&e);
                return self
                    .hold(
                        target,
                        result,
                        format!("cannot read etcd membership to check quorum: {reason}"),
                        error,
                        metrics,
                    )
                    .await;
            }
        };
        let Some(member) = find_member(&view, &instance).cloned() else {
            result.detail = "no etcd member for this instance: already removed".into();
            return self.complete(target, result, metrics).await;
        };
        match self
            .remove_member(&view, &member, target.deadline, metrics)
            .await
        {
            RemovalOutcome::Removed { leader_moved } => {
                result.member_removed = true;
                result.leader_moved = leader_moved;
                result.detail = format!(
                    "member {} ({:x}) removed{}",
                    member.name,
                    member.id,
                    if leader_moved {
                        " after moving leadership away"
                    } else {
                        ""
                    }
                );
                self.complete(target, result, metrics).await
            }
            RemovalOutcome::AlreadyGone => {
                result.detail = format!(
                    "member {} ({:x}) was already removed",
                    member.name, member.id
                );
                self.complete(target, result, metrics).await
            }
            // A Spot interruption takes the instance after two minutes whatever the hook says:
            // holding cannot save it, so its member is kept (never knowingly breaking quorum) and
            // the action completed; stale-member cleanup removes the member once that is safe.
            RemovalOutcome::Unsafe { reason, .. } if instance.spot => {
                result.detail = format!(
                    "spot instance, cannot be held: {reason}; member kept for stale-member cleanup"
                );
                self.complete(target, result, metrics).await
            }
            RemovalOutcome::Unsafe { reason, error } => {
                self.hold(target, result, reason, error, metrics).await
            }
        }
    }

    /// The common start of a flow: fail at once if a circuit it needs is open, hold inside the
    /// deadline reserve, then read the group's instances (holding if EC2 cannot be read). `Err`
    /// carries the finished result.
    async fn start_flow(
        &self,
        target: &Target<'_>,
        dependencies: &[Dependency],
        work: &str,
        metrics: &mut InvocationMetrics,
    ) -> Result<(InstanceResult, Vec<Instance>), InstanceResult> {
        let result = self.result_for(target);
        if let Err(open) = self.resilience.ensure_closed(dependencies) {
            // No call to the open dependency. If Auto Scaling itself is reachable, the instance
            // is still held (one heartbeat) so a long outage does not let its hook time out.
            if open.dependency != Dependency::Autoscaling
                && self
                    .resilience
                    .ensure_closed(&[Dependency::Autoscaling])
                    .is_ok()
            {
                let reason = open.to_string();
                return Err(self
                    .hold(target, result, reason, Some(open.into()), metrics)
                    .await);
            }
            return Err(fail(result, open.into()));
        }
        if target.deadline.in_reserve(Instant::now()) {
            let reason = format!("too little time left before the deadline to {work}");
            return Err(self.hold(target, result, reason, None, metrics).await);
        }
        match self
            .fleet
            .group_instances(&target.key.group, target.deadline)
            .await
        {
            Ok(instances) => Ok((result, instances)),
            Err(e) => {
                let (reason, error) = aws_cause(&e);
                let reason = format!("cannot list the group's instances: {reason}");
                Err(self.hold(target, result, reason, error, metrics).await)
            }
        }
    }

    /// Removes one member under the quorum check, moving leadership away first if it leads.
    async fn remove_member(
        &self,
        view: &ClusterView,
        member: &Member,
        deadline: &Deadline,
        metrics: &mut InvocationMetrics,
    ) -> RemovalOutcome {
        let verdict = quorum_after_removal(view, member.id);
        if !verdict.is_safe() {
            metrics.quorum_holds += 1;
            return RemovalOutcome::Unsafe {
                reason: format!(
                    "removing member {} ({:x}) would break quorum: {}",
                    member.name,
                    member.id,
                    verdict.reason()
                ),
                error: None,
            };
        }
        let mut view = view.clone();
        let mut leader_moved = false;
        if view.leader == Some(member.id) && view.members.len() > 1 {
            let Some(to) = leader_candidate(&view, member.id) else {
                metrics.quorum_holds += 1;
                return RemovalOutcome::Unsafe {
                    reason: format!(
                        "member {} leads and no healthy voter can take over",
                        member.name
                    ),
                    error: None,
                };
            };
            if deadline.in_reserve(Instant::now()) {
                return deadline_unsafe();
            }
            if let Err(e) = self.membership.move_leader(&view, to, deadline).await {
                let (reason, error) = etcd_cause(&e);
                return RemovalOutcome::Unsafe {
                    reason: format!(
                        "could not move leadership away from {}: {reason}",
                        member.name
                    ),
                    error,
                };
            }
            view.leader = Some(to);
            leader_moved = true;
        }
        if deadline.in_reserve(Instant::now()) {
            return deadline_unsafe();
        }
        match self.membership.remove(&view, member.id, deadline).await {
            Ok(Removal::Removed) => {
                metrics.members_removed += 1;
                RemovalOutcome::Removed { leader_moved }
            }
            Ok(Removal::AlreadyGone) => RemovalOutcome::AlreadyGone,
            Err(e) => {
                if matches!(e, MembershipError::Refused { .. }) {
                    metrics.quorum_holds += 1;
                }
                let (reason, error) = etcd_cause(&e);
                RemovalOutcome::Unsafe {
                    reason: format!("member {} not removed: {reason}", member.name),
                    error,
                }
            }
        }
    }

    /// Launch: clean up stale members, optionally add the newcomer as a learner, complete.
    async fn launch(
        &self,
        target: &Target<'_>,
        into_warm_pool: bool,
        metrics: &mut InvocationMetrics,
    ) -> InstanceResult {
        if into_warm_pool {
            let mut result = self.result_for(target);
            if let Err(open) = self.resilience.ensure_closed(&[Dependency::Autoscaling]) {
                return fail(result, open.into());
            }
            result.detail = "launching into the warm pool: not an etcd member yet".into();
            return self.complete(target, result, metrics).await;
        }
        // etcd is optional here: a launch cannot hurt quorum, and an unreachable etcd means the
        // cluster is being bootstrapped.
        let (mut result, instances) = match self
            .start_flow(
                target,
                &[Dependency::Autoscaling, Dependency::Ec2],
                "clean up membership",
                metrics,
            )
            .await
        {
            Ok(started) => started,
            Err(done) => return done,
        };
        let newcomer = instances.iter().find(|i| i.id == target.key.instance_id);
        let notes = self
            .reconcile(&instances, newcomer, target.deadline, metrics)
            .await;
        result.member_removed = notes.removed > 0;
        result.detail = notes.text.join("; ");
        self.complete(target, result, metrics).await
    }

    /// Stale-member cleanup, learner promotion and the optional learner add, shared by launch and
    /// the sweep. Never fails the caller: what it could not do is said in the notes.
    async fn reconcile(
        &self,
        instances: &[Instance],
        newcomer: Option<&Instance>,
        deadline: &Deadline,
        metrics: &mut InvocationMetrics,
    ) -> Notes {
        let mut notes = Notes::default();
        let has_peer = !self.config.etcd_endpoints.is_empty()
            || instances
                .iter()
                .any(|i| i.private_ip.is_some() && Some(&i.id) != newcomer.map(|n| &n.id));
        if !has_peer {
            notes
                .text
                .push("no etcd peer: the cluster is being bootstrapped".into());
            return notes;
        }
        if let Err(open) = self.resilience.ensure_closed(&[Dependency::Etcd]) {
            notes.text.push(format!("membership left as is: {open}"));
            return notes;
        }
        let mut view = match self.membership.cluster(instances, deadline).await {
            Ok(view) => view,
            Err(MembershipError::Unreachable { .. }) => {
                notes
                    .text
                    .push("no etcd peer answered: the cluster is being bootstrapped".into());
                return notes;
            }
            Err(e) => {
                notes.text.push(format!("membership left as is: {e}"));
                return notes;
            }
        };
        for learner in view
            .members
            .iter()
            .filter(|m| m.is_learner && view.is_healthy(m.id))
        {
            match self.membership.promote(&view, learner.id, deadline).await {
                Ok(Promotion::Promoted) => notes
                    .text
                    .push(format!("learner {} promoted", learner.name)),
                Ok(Promotion::NotReady) => notes
                    .text
                    .push(format!("learner {} not in sync yet", learner.name)),
                Err(e) => notes
                    .text
                    .push(format!("learner {} not promoted: {e}", learner.name)),
            }
        }
        // One stale member at a time, each under the quorum check against a fresh view.
        let mut stale_left = false;
        while let Some(stale) = stale_members(&view, instances).into_iter().next().cloned() {
            if deadline.in_reserve(Instant::now()) {
                notes
                    .text
                    .push("stale-member cleanup stopped at the deadline reserve".into());
                stale_left = true;
                break;
            }
            match self.remove_member(&view, &stale, deadline, metrics).await {
                RemovalOutcome::Removed { .. } => {
                    notes.removed += 1;
                    notes.text.push(format!(
                        "stale member {} ({:x}) removed",
                        display_name(&stale),
                        stale.id
                    ));
                }
                RemovalOutcome::AlreadyGone => {}
                RemovalOutcome::Unsafe { reason, .. } => {
                    notes.text.push(format!(
                        "stale member {} kept: {reason}",
                        display_name(&stale)
                    ));
                    stale_left = true;
                    break;
                }
            }
            view = match self.membership.cluster(instances, deadline).await {
                Ok(view) => view,
                Err(e) => {
                    notes.text.push(format!("membership not re-read: {e}"));
                    stale_left = true;
                    break;
                }
            };
        }
        if let Some(newcomer) = newcomer.filter(|_| self.config.etcd_add_learner_on_launch) {
            self.add_learner(&view, newcomer, stale_left, deadline, &mut notes)
                .await;
        }
        notes
    }

    async fn add_learner(
        &self,
        view: &ClusterView,
        newcomer: &Instance,
        stale_left: bool,
        deadline: &Deadline,
        notes: &mut Notes,
    ) {
        if find_member(view, newcomer).is_some() {
            notes.text.push("already a member".into());
        } else if stale_left {
            notes
                .text
                .push("learner not added: a stale member is left".into());
        } else if view.members.iter().any(|m| m.is_learner) {
            notes
                .text
                .push("learner not added: another learner is catching up".into());
        } else if let Some(ip) = newcomer.private_ip {
            let host = if ip.is_ipv6() {
                format!("[{ip}]")
            } else {
                ip.to_string()
            };
            // Peers often speak another scheme than clients: follow the cluster's own peer URLs.
            let scheme = view
                .members
                .iter()
                .flat_map(|m| &m.peer_urls)
                .find_map(|u| u.split_once("://").map(|(scheme, _)| scheme.to_string()))
                .unwrap_or_else(|| self.config.etcd_client_scheme.as_str().to_string());
            let peer_url = format!("{scheme}://{host}:{}", self.config.etcd_peer_port);
            match self
                .membership
                .add_learner(view, &newcomer.id, &peer_url, deadline)
                .await
            {
                Ok(id) => notes
                    .text
                    .push(format!("added as learner {id:x} with peer URL {peer_url}")),
                Err(e) => notes.text.push(format!("learner not added: {e}")),
            }
        } else {
            notes
                .text
                .push("learner not added: the instance has no private IP yet".into());
        }
    }

    /// The reconcile sweep: finish what events missed, then clean up stale members.
    async fn sweep(
        &self,
        deadline: &Deadline,
        metrics: &mut InvocationMetrics,
    ) -> Result<Vec<InstanceResult>, HandlerError> {
        if self.config.asg_names.is_empty() {
            return Err(HandlerError::SweepWithoutGroups);
        }
        let mut results = Vec::new();
        for group in &self.config.asg_names {
            let mut group_result = InstanceResult::new(Some(group), None, None);
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
                    let error = aws_error(group, "", &e);
                    let r = fail(group_result, error);
                    r.log();
                    results.push(r);
                    continue;
                }
            };
            for waiting in &lifecycle.waiting {
                let Some(transition) = waiting.transition() else {
                    continue;
                };
                let Some(hook) = lifecycle.hooks.iter().find(|h| h.transition == transition) else {
                    let mut r = InstanceResult::new(
                        Some(group),
                        Some(&waiting.instance_id),
                        Some(transition),
                    );
                    r.detail = format!(
                        "{}: no hook of ours for this transition (LIFECYCLE_HOOK_NAMES)",
                        waiting.lifecycle_state
                    );
                    r.log();
                    results.push(r);
                    continue;
                };
                let target = Target {
                    key: ActionKey {
                        group: group.clone(),
                        hook: hook.name.clone(),
                        instance_id: waiting.instance_id.clone(),
                        token: None,
                    },
                    transition,
                    deadline,
                };
                let r = match transition {
                    Transition::Terminating => self.terminate(&target, metrics).await,
                    Transition::Launching => {
                        self.launch(
                            &target,
                            waiting.lifecycle_state.starts_with("Warmed:"),
                            metrics,
                        )
                        .await
                    }
                };
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
            // Stale members of instances that died without a hook (terminated through EC2).
            match self.fleet.group_instances(group, deadline).await {
                Ok(instances) => {
                    let notes = self.reconcile(&instances, None, deadline, metrics).await;
                    group_result.member_removed = notes.removed > 0;
                    group_result.detail = if notes.text.is_empty() {
                        "membership matches the group".into()
                    } else {
                        notes.text.join("; ")
                    };
                    group_result.log();
                    results.push(group_result);
                }
                Err(e) => {
                    let r = fail(group_result, aws_error(group, "", &e));
                    r.log();
                    results.push(r);
                }
            }
        }
        Ok(results)
    }

    /// Holds the instance in its wait state: heartbeat, and an error so the event comes back.
    async fn hold(
        &self,
        target: &Target<'_>,
        mut result: InstanceResult,
        reason: String,
        error: Option<HandlerError>,
        metrics: &mut InvocationMetrics,
    ) -> InstanceResult {
        match self
            .lifecycle
            .heartbeat(&target.key, &target.deadline.finishing())
            .await
        {
            Ok(Heartbeat::Recorded) => {
                metrics.heartbeats += 1;
                result.action = Action::Held;
                result.result = "HEARTBEAT";
                result.error = Some(error.unwrap_or_else(|| HandlerError::Held {
                    instance_id: target.key.instance_id.clone(),
                    group: target.key.group.clone(),
                    reason: reason.clone(),
                }));
                result.detail = reason;
                result
            }
            Ok(Heartbeat::ActionOver) => {
                result.action = Action::Skipped;
                result.result = "ACTION_OVER";
                result.detail = format!("{reason}; the lifecycle action is no longer active, so there is nothing to hold (the sweep removes a stale member)");
                result
            }
            Err(e) => {
                let heartbeat_error = aws_error(&target.key.group, &target.key.instance_id, &e);
                result.detail = format!("{reason}; and the heartbeat failed: {e}");
                let error = match (error, heartbeat_error) {
                    (Some(HandlerError::CircuitOpen(open)), _)
                    | (_, HandlerError::CircuitOpen(open)) => HandlerError::CircuitOpen(open),
                    _ => HandlerError::Failed {
                        instance_id: target.key.instance_id.clone(),
                        group: target.key.group.clone(),
                        detail: result.detail.clone(),
                    },
                };
                fail(result, error)
            }
        }
    }

    async fn complete(
        &self,
        target: &Target<'_>,
        mut result: InstanceResult,
        metrics: &mut InvocationMetrics,
    ) -> InstanceResult {
        match self
            .lifecycle
            .complete(&target.key, &target.deadline.finishing())
            .await
        {
            Ok(Completion::Completed) => {
                metrics.completed("CONTINUE");
                result.action = Action::Completed;
                result.result = "CONTINUE";
                result
            }
            Ok(Completion::AlreadyDone) => {
                metrics.completed("ALREADY_DONE");
                result.action = Action::Completed;
                result.result = "ALREADY_DONE";
                result
            }
            Err(e) => {
                let error = aws_error(&target.key.group, &target.key.instance_id, &e);
                result.detail = format!("{}; completion failed: {e}", result.detail);
                fail(result, error)
            }
        }
    }
}

#[derive(Default)]
struct Notes {
    text: Vec<String>,
    removed: usize,
}

fn display_name(member: &Member) -> String {
    if member.name.is_empty() {
        format!("(unstarted, {})", member.peer_urls.join(","))
    } else {
        member.name.clone()
    }
}

fn deadline_unsafe() -> RemovalOutcome {
    RemovalOutcome::Unsafe {
        reason: "too little time left before the deadline to change membership".into(),
        error: None,
    }
}

fn fail(mut result: InstanceResult, error: HandlerError) -> InstanceResult {
    result.action = Action::Failed;
    result.result = "ERROR";
    if result.detail.is_empty() {
        result.detail = error.to_string();
    }
    result.error = Some(error);
    result
}

fn aws_error(group: &str, instance_id: &str, e: &AwsError) -> HandlerError {
    match e {
        AwsError::CircuitOpen(open) => HandlerError::CircuitOpen(*open),
        other => HandlerError::Failed {
            instance_id: if instance_id.is_empty() {
                "-".into()
            } else {
                instance_id.into()
            },
            group: group.into(),
            detail: other.to_string(),
        },
    }
}

/// The reason text of an AWS failure, and the error to answer if it is an open circuit.
fn aws_cause(e: &AwsError) -> (String, Option<HandlerError>) {
    match e {
        AwsError::CircuitOpen(open) => (open.to_string(), Some(HandlerError::CircuitOpen(*open))),
        other => (other.to_string(), None),
    }
}

fn etcd_cause(e: &MembershipError) -> (String, Option<HandlerError>) {
    match e {
        MembershipError::CircuitOpen(open) => {
            (open.to_string(), Some(HandlerError::CircuitOpen(*open)))
        }
        other => (other.to_string(), None),
    }
}

/// The invocation's deadline from Lambda's context, as the layer's clock sees it.
pub fn deadline_from_epoch_ms(deadline_ms: u64, reserve: Duration) -> Deadline {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    Deadline::after(
        Duration::from_millis(deadline_ms.saturating_sub(now_ms)),
        reserve,
    )
}

#[cfg(test)]
mod tests;

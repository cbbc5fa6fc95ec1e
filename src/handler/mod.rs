//! The decisions: what to do with each lifecycle action so that the etcd cluster never knowingly
//! loses quorum and no action is lost.
//!
//! Generic over the narrow traits of `model.rs`, so every branch runs in unit tests with fakes.
//! One file per flow: `terminate.rs`, `launch.rs`, `sweep.rs`; `reconcile.rs` holds what launch
//! and the sweep share (stale members, learners); this file holds the entry point and the two
//! ways a flow ends (complete, hold). Invariants kept here:
//! - a member is removed only when `membership::quorum_after_removal` says the healthy voters
//!   left are a majority and at least `ETCD_MIN_VOTERS` voters remain; otherwise the instance is
//!   held (heartbeat) and the invocation answers an error naming the hold, so the event comes
//!   back (a hold is never reported as success);
//! - every read-decide-change of the membership happens under etcd's lock
//!   (`Membership::lock`), so two invocations never decide on the same view; a lock not free in
//!   a short wait is a hold;
//! - only the hooks of `LIFECYCLE_HOOK_NAMES` are ever completed or heartbeated: another tool's
//!   action on the same group is left alone;
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

use aws_lambda_events::event::sqs::SqsBatchResponse;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

mod launch;
mod reconcile;
mod sweep;
mod terminate;

use crate::config::Config;
use crate::event::{self, EventError, Invocation, Message};
use crate::membership::{leader_candidate, quorum_after_removal, Verdict};
use crate::metrics::{InvocationMetrics, Sink};
use crate::model::{
    ActionKey, AwsError, ClusterView, Completion, Fleet, Heartbeat, Instance, Lifecycle, Member,
    Membership, MembershipError, Removal, Transition,
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
    #[error("DEADLINE_RESERVE_MS={reserve_ms} is not below the {available_ms} ms the first invocation had (about the function's timeout): every lifecycle action is held for lack of time and none handled; set DEADLINE_RESERVE_MS to at most a third of the timeout (the default 4500 suits timeouts of 15 s and more) or raise the function's timeout")]
    ReserveTooLarge {
        reserve_ms: u128,
        available_ms: u128,
    },
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
            HandlerError::ReserveTooLarge { .. } => "InvalidConfiguration",
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

/// A paused lifecycle action and how the flow reaches it: one key per hook of ours the instance
/// waits on (an event names one; the sweep, which cannot tell which of our hooks an instance
/// waits on, acts on each of them).
struct Target<'a> {
    group: String,
    instance_id: String,
    keys: Vec<ActionKey>,
    transition: Transition,
    deadline: &'a Deadline,
}

/// How a removal attempt ended.
enum RemovalOutcome {
    Removed {
        leader_moved: bool,
    },
    AlreadyGone,
    /// Not safe now: quorum would break, too few voters would remain, etcd refused, the lock was
    /// taken, or etcd could not be asked.
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
                    results.extend(
                        self.handle_message(message, &deadline, &mut metrics)
                            .await?,
                    );
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
                                match self.handle_message(message, &deadline, &mut metrics).await {
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
            // Lambda's own shape for partial batch failures (`ReportBatchItemFailures`).
            let mut batch = SqsBatchResponse::default();
            for id in failures {
                batch.add_failure(id.as_str());
            }
            if let (Some(answer), Ok(Value::Object(fields))) =
                (summary.as_object_mut(), serde_json::to_value(batch))
            {
                answer.extend(fields);
            }
        }
        summary
    }

    async fn handle_message(
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
                    group: event.group.clone(),
                    instance_id: event.instance_id.clone(),
                    keys: vec![ActionKey {
                        group: event.group.clone(),
                        hook: event.hook.clone(),
                        instance_id: event.instance_id.clone(),
                        token: Some(event.token.clone()),
                    }],
                    transition: event.transition,
                    deadline,
                };
                let not_ours = if !self.config.handles_group(&event.group) {
                    Some(format!("group {} is not in ASG_NAMES", event.group))
                } else if !self.config.owns_hook(&event.hook) {
                    Some(format!(
                        "hook {} is not in LIFECYCLE_HOOK_NAMES ({}): another tool's lifecycle action, left alone",
                        event.hook,
                        self.config.lifecycle_hook_names.join(",")
                    ))
                } else {
                    None
                };
                let result = if let Some(detail) = not_ours {
                    let mut r = self.result_for(&target);
                    r.detail = detail;
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
            Some(&target.group),
            Some(&target.instance_id),
            Some(target.transition),
        )
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
            .group_instances(&self.config.cluster_groups(&target.group), target.deadline)
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

    /// Removes one member under the quorum check and the voter floor `min_voters`, moving
    /// leadership away first if it leads. The caller holds the membership lock and read `view`
    /// under it.
    async fn remove_member(
        &self,
        view: &ClusterView,
        member: &Member,
        min_voters: u32,
        deadline: &Deadline,
        metrics: &mut InvocationMetrics,
    ) -> RemovalOutcome {
        if !view.confirmed_by_leader {
            return RemovalOutcome::Unsafe {
                reason: format!(
                    "member {} not removed: the member list was not confirmed by a leader a majority follows{}",
                    display_name(member),
                    not_healthy_summary(view)
                ),
                error: None,
            };
        }
        let verdict = quorum_after_removal(view, member.id, min_voters);
        let harm = match &verdict {
            Verdict::Safe { .. } => None,
            Verdict::Unsafe { .. } => Some("would break quorum"),
            Verdict::BelowFloor { .. } => Some("would leave too few voters"),
        };
        if let Some(harm) = harm {
            metrics.quorum_holds += 1;
            return RemovalOutcome::Unsafe {
                reason: format!(
                    "removing member {} ({:x}) {harm}: {}{}",
                    display_name(member),
                    member.id,
                    verdict.reason(),
                    not_healthy_summary(view)
                ),
                error: None,
            };
        }
        let mut view = view.clone();
        let leader_moved = match self
            .move_leadership_away(&view, member, deadline, metrics)
            .await
        {
            Ok(Some(to)) => {
                view.leader = Some(to);
                true
            }
            Ok(None) => false,
            Err(unsafe_now) => return unsafe_now,
        };
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
                    reason: format!("member {} not removed: {reason}", display_name(member)),
                    error,
                }
            }
        }
    }

    /// When `member` leads, hands leadership to a healthy, caught-up voter first: `Ok(Some(to))`
    /// once moved, `Ok(None)` when it does not lead, `Err` (the outcome to report) when no voter
    /// can take over or the move failed.
    async fn move_leadership_away(
        &self,
        view: &ClusterView,
        member: &Member,
        deadline: &Deadline,
        metrics: &mut InvocationMetrics,
    ) -> Result<Option<u64>, RemovalOutcome> {
        if view.leader != Some(member.id) || view.members.len() <= 1 {
            return Ok(None);
        }
        let Some(to) = leader_candidate(view, member.id) else {
            metrics.quorum_holds += 1;
            return Err(RemovalOutcome::Unsafe {
                reason: format!(
                    "member {} leads and no healthy, caught-up voter can take over{}",
                    display_name(member),
                    not_healthy_summary(view)
                ),
                error: None,
            });
        };
        if deadline.in_reserve(Instant::now()) {
            return Err(deadline_unsafe());
        }
        if let Err(e) = self.membership.move_leader(view, to, deadline).await {
            let (reason, error) = etcd_cause(&e);
            return Err(RemovalOutcome::Unsafe {
                reason: format!(
                    "could not move leadership away from {}: {reason}",
                    display_name(member)
                ),
                error,
            });
        }
        Ok(Some(to))
    }

    /// Holds the instance in its wait state: a heartbeat for each of our actions, and an error
    /// so the event comes back.
    async fn hold(
        &self,
        target: &Target<'_>,
        mut result: InstanceResult,
        reason: String,
        error: Option<HandlerError>,
        metrics: &mut InvocationMetrics,
    ) -> InstanceResult {
        let finishing = target.deadline.finishing();
        let mut recorded = false;
        for key in &target.keys {
            match self.lifecycle.heartbeat(key, &finishing).await {
                Ok(Heartbeat::Recorded) => {
                    metrics.heartbeats += 1;
                    recorded = true;
                }
                Ok(Heartbeat::ActionOver) => {}
                Err(e) => {
                    let heartbeat_error =
                        error_for_aws_failure(&target.group, &target.instance_id, &e);
                    result.detail = format!("{reason}; and the heartbeat failed: {e}");
                    let error = match (error, heartbeat_error) {
                        (Some(HandlerError::CircuitOpen(open)), _)
                        | (_, HandlerError::CircuitOpen(open)) => HandlerError::CircuitOpen(open),
                        _ => HandlerError::Failed {
                            instance_id: target.instance_id.clone(),
                            group: target.group.clone(),
                            detail: result.detail.clone(),
                        },
                    };
                    return fail(result, error);
                }
            }
        }
        if !recorded {
            result.action = Action::Skipped;
            result.result = "ACTION_OVER";
            result.detail = format!("{reason}; the lifecycle action is no longer active, so there is nothing to hold (the sweep removes a stale member)");
            return result;
        }
        result.action = Action::Held;
        result.result = "HEARTBEAT";
        result.error = Some(error.unwrap_or_else(|| HandlerError::Held {
            instance_id: target.instance_id.clone(),
            group: target.group.clone(),
            reason: reason.clone(),
        }));
        result.detail = reason;
        result
    }

    /// Completes each of our actions with `CONTINUE`.
    async fn complete(
        &self,
        target: &Target<'_>,
        mut result: InstanceResult,
        metrics: &mut InvocationMetrics,
    ) -> InstanceResult {
        let finishing = target.deadline.finishing();
        let mut completed = false;
        for key in &target.keys {
            match self.lifecycle.complete(key, &finishing).await {
                Ok(Completion::Completed) => {
                    metrics.completed("CONTINUE");
                    completed = true;
                }
                Ok(Completion::AlreadyDone) => metrics.completed("ALREADY_DONE"),
                Err(e) => {
                    let error = error_for_aws_failure(&target.group, &target.instance_id, &e);
                    result.detail = format!("{}; completion failed: {e}", result.detail);
                    return fail(result, error);
                }
            }
        }
        result.action = Action::Completed;
        result.result = if completed {
            "CONTINUE"
        } else {
            "ALREADY_DONE"
        };
        result
    }
}

fn display_name(member: &Member) -> String {
    if member.name.is_empty() {
        format!("(unstarted, {})", member.peer_urls.join(","))
    } else {
        member.name.clone()
    }
}

/// "; not healthy: <member> (<why>), ..." for a hold reason; empty when every member is.
fn not_healthy_summary(view: &ClusterView) -> String {
    if view.not_healthy.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = view
        .not_healthy
        .iter()
        .map(|(id, why)| match view.member(*id) {
            Some(m) => format!("{} ({id:x}) {why}", display_name(m)),
            None => format!("{id:x} {why}"),
        })
        .collect();
    let alarms: Vec<String> = view
        .alarms
        .iter()
        .map(|a| format!("{} on {:x}", a.kind, a.member))
        .collect();
    let mut text = format!("; not healthy: {}", parts.join(", "));
    if !alarms.is_empty() {
        text.push_str(&format!("; alarms: {}", alarms.join(", ")));
    }
    text
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

/// The invocation's error for a failed AWS call (`aws::aws_error` made the `AwsError`): an open
/// circuit stays one, anything else names the instance and group it failed for.
fn error_for_aws_failure(group: &str, instance_id: &str, e: &AwsError) -> HandlerError {
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

/// Refuses a deadline reserve that leaves no time to work. Lambda gives each invocation its
/// function timeout, so the time the first invocation of an execution environment has is about
/// that timeout: a reserve at or above it would hold every action "too little time" until its
/// hook times out, with nothing but the holds to show for it. Checked once, at the first
/// invocation; the actions are still held (so none times out while it is fixed), and the
/// answer is this error.
pub fn check_reserve(available: Duration, reserve: Duration) -> Result<(), HandlerError> {
    if reserve >= available {
        return Err(HandlerError::ReserveTooLarge {
            reserve_ms: reserve.as_millis(),
            available_ms: available.as_millis(),
        });
    }
    Ok(())
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
mod safety_tests;
#[cfg(test)]
mod tests;

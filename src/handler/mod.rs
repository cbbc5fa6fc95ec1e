//! The decisions: what to do with each lifecycle action so that the etcd cluster never knowingly
//! loses quorum and no action is lost.
//!
//! Generic over the narrow traits of `model.rs`, so every branch runs in unit tests with fakes.
//! One file per flow: `terminate.rs`, `launch.rs`, `sweep.rs`; `reconcile.rs` holds what launch
//! and the sweep share (stale members, learners). Each flow decides and returns an `Outcome`;
//! `outcome.rs` holds the one place an outcome is acted on, which is where every flow ends
//! (complete or hold, over every one of our actions of the instance) and where the summary line
//! and its share of the metrics are made. This file holds the entry point, the start every flow
//! shares and the removal under the quorum check. Invariants kept here:
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
//! `ignored` (test notification), `failed` (could not complete or hold; error answered). The
//! metrics are derived from the summary lines at the end of the invocation.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsBatchResponse;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

mod launch;
mod outcome;
mod reconcile;
mod sweep;
mod terminate;

use crate::config::Config;
use crate::event::{self, EventError, Invocation, LifecycleEvent, Message, QueuedMessage};
use crate::membership::{leader_candidate, quorum_after_removal, Verdict};
use crate::metrics::{InvocationMetrics, Sink, Tally};
use crate::model::{
    ActionKey, AwsError, ClusterView, Fleet, Heartbeat, Instance, Lifecycle, Member, Membership,
    MembershipError, Removal, Transition,
};
use crate::resilience::breaker::Snapshot;
use crate::resilience::policy::Deadline;
use crate::resilience::{CircuitOpen, Dependency, Resilience};
use outcome::{Cause, CauseKind, Outcome, Subject};

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

/// What Auto Scaling was told, or answered, for the lifecycle actions of one summary line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ResultCode {
    /// `CONTINUE` sent.
    #[serde(rename = "CONTINUE")]
    Continue,
    /// Every action was already over when completed.
    #[serde(rename = "ALREADY_DONE")]
    AlreadyDone,
    /// A heartbeat recorded: held.
    #[serde(rename = "HEARTBEAT")]
    Heartbeat,
    /// A hold found no action still active.
    #[serde(rename = "ACTION_OVER")]
    ActionOver,
    /// No call about the actions.
    #[serde(rename = "NONE")]
    Nothing,
    /// Could not complete or hold.
    #[serde(rename = "ERROR")]
    Error,
}

impl ResultCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultCode::Continue => "CONTINUE",
            ResultCode::AlreadyDone => "ALREADY_DONE",
            ResultCode::Heartbeat => "HEARTBEAT",
            ResultCode::ActionOver => "ACTION_OVER",
            ResultCode::Nothing => "NONE",
            ResultCode::Error => "ERROR",
        }
    }
}

/// One line of the invocation summary.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceResult {
    pub instance_id: Option<String>,
    pub group: Option<String>,
    pub transition: Option<Transition>,
    pub action: Action,
    pub result: ResultCode,
    pub detail: String,
    pub member_removed: bool,
    pub leader_moved: bool,
    #[serde(skip)]
    pub error: Option<HandlerError>,
    /// What this decision adds to the invocation's metrics.
    #[serde(skip)]
    pub tally: Tally,
}

impl InstanceResult {
    fn new(group: Option<&str>, instance_id: Option<&str>, transition: Option<Transition>) -> Self {
        Self {
            instance_id: instance_id.map(String::from),
            group: group.map(String::from),
            transition,
            action: Action::Skipped,
            result: ResultCode::Nothing,
            detail: String::new(),
            member_removed: false,
            leader_moved: false,
            error: None,
            tally: Tally::default(),
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
        let result = self.result.as_str();
        if level_error {
            tracing::warn!(instance_id = instance, group, transition, action, result, member_removed = self.member_removed, leader_moved = self.leader_moved, detail = %self.detail, "lifecycle decision");
        } else {
            tracing::info!(instance_id = instance, group, transition, action, result, member_removed = self.member_removed, leader_moved = self.leader_moved, detail = %self.detail, "lifecycle decision");
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
    /// Ask Auto Scaling whether the action still waits before changing the membership for it
    /// (see [`Handler::still_waiting`]).
    confirm_before_change: bool,
}

/// What Auto Scaling says of an event's lifecycle action just before a membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Yes,
    /// Completed, abandoned or timed out: a late or repeated delivery, owed nothing.
    Over,
}

/// What a flow reports for an action found over before its membership change.
const ACTION_OVER: &str =
    "the lifecycle action is no longer active (a late or repeated delivery): membership left as is";

/// How a removal attempt ended.
enum RemovalOutcome {
    Removed {
        leader_moved: bool,
    },
    AlreadyGone,
    /// Not safe now: quorum would break, too few voters would remain, etcd refused, the lock was
    /// taken, or etcd could not be asked.
    Unsafe(Cause),
}

/// What the invocation answers, and the summary lines it rests on (its metrics come from them).
struct Answered {
    answer: Result<Value, HandlerError>,
    results: Vec<InstanceResult>,
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
        let answered = match invocation {
            Invocation::Direct(messages) => self.direct(messages, &deadline).await?,
            Invocation::Queue(records) => self.queue(records, &deadline).await,
        };
        InvocationMetrics::from_tallies(answered.results.iter().map(|r| &r.tally)).emit(
            &self.metrics,
            &self.function_name,
            &self.resilience,
            started.elapsed(),
        );
        answered.answer
    }

    /// EventBridge or SNS: all or nothing. A message that cannot be handled at all (a sweep
    /// without groups) is the answer, with no summary and no metrics.
    async fn direct(
        &self,
        messages: Vec<Message>,
        deadline: &Deadline,
    ) -> Result<Answered, HandlerError> {
        let mut results = Vec::new();
        for message in messages {
            results.extend(self.handle_message(message, deadline).await?);
        }
        let errors: Vec<HandlerError> = results.iter().filter_map(|r| r.error.clone()).collect();
        let summary = self.summary(&results, None);
        tracing::info!(summary = %summary, "invocation summary");
        let answer = match errors.len() {
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
        };
        Ok(Answered { answer, results })
    }

    /// SQS: each record on its own; a record that failed is named in `batchItemFailures`.
    async fn queue(&self, records: Vec<QueuedMessage>, deadline: &Deadline) -> Answered {
        let mut results = Vec::new();
        let mut failures = Vec::new();
        for record in records {
            let failed = match record.message {
                Err(e) => {
                    tracing::warn!(message_id = %record.message_id, error = %e, "rejected SQS record");
                    true
                }
                Ok(messages) => {
                    self.queued(&record.message_id, messages, deadline, &mut results)
                        .await
                }
            };
            if failed {
                failures.push(record.message_id);
            }
        }
        let summary = self.summary(&results, Some(&failures));
        tracing::info!(summary = %summary, "invocation summary");
        Answered {
            answer: Ok(summary),
            results,
        }
    }

    /// The messages of one SQS record, their lines added to `results`; `true` when the record
    /// failed (a line with an error, or a message that could not be handled at all).
    async fn queued(
        &self,
        message_id: &str,
        messages: Vec<Message>,
        deadline: &Deadline,
        results: &mut Vec<InstanceResult>,
    ) -> bool {
        let mut failed = false;
        for message in messages {
            match self.handle_message(message, deadline).await {
                Ok(rs) => {
                    failed |= rs.iter().any(|r| r.error.is_some());
                    results.extend(rs);
                }
                Err(e) => {
                    tracing::warn!(message_id = %message_id, error = %e, "SQS record failed");
                    failed = true;
                }
            }
        }
        failed
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
    ) -> Result<Vec<InstanceResult>, HandlerError> {
        match message {
            Message::TestNotification { group } => {
                let subject = Subject::line(group.as_deref(), None, None, deadline);
                let detail = "autoscaling:TEST_NOTIFICATION acknowledged".into();
                Ok(vec![self.act(subject, Outcome::Ignored { detail }).await])
            }
            Message::Sweep => self.sweep(deadline).await,
            Message::Lifecycle(event) => Ok(vec![self.lifecycle_event(event, deadline).await]),
        }
    }

    /// One lifecycle action named by an event: left alone when it is not ours, else the flow of
    /// its transition decides and the outcome is acted on.
    async fn lifecycle_event(&self, event: LifecycleEvent, deadline: &Deadline) -> InstanceResult {
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
            confirm_before_change: event.may_outlive_its_action(),
        };
        let outcome = match self.not_ours(&event) {
            Some(detail) => Outcome::skip(detail),
            None => match event.transition {
                Transition::Terminating => self.terminate(&target).await,
                Transition::Launching => self.launch(&target, event.into_warm_pool()).await,
            },
        };
        self.act(target.subject(), outcome).await
    }

    /// Why the event's action is not ours to touch, if it is not.
    fn not_ours(&self, event: &LifecycleEvent) -> Option<String> {
        if !self.config.handles_group(&event.group) {
            Some(format!("group {} is not in ASG_NAMES", event.group))
        } else if !self.config.owns_hook(&event.hook) {
            Some(format!(
                "hook {} is not in LIFECYCLE_HOOK_NAMES ({}): another tool's lifecycle action, left alone",
                event.hook,
                self.config.lifecycle_hook_names.join(",")
            ))
        } else {
            None
        }
    }

    /// Whether the target's lifecycle action still waits, asked of Auto Scaling right before a
    /// membership change. Deliveries are at least once and can be late (SQS, Lambda's retries of
    /// an asynchronous invocation, a held event's next delivery): an action that is over must
    /// not change the membership of an instance that has moved on since (back in service from a
    /// warm pool, resting in one, replaced). A heartbeat by the event's token is the question
    /// Auto Scaling answers for that one action, and it restarts the wait the change is about to
    /// use. Asked only where a late delivery could do harm (see
    /// [`LifecycleEvent::may_outlive_its_action`]): not for a terminate whose instance is on its
    /// way out of EC2 (its member is owed a removal whenever the event comes), nor for the
    /// sweep's targets, listed waiting moments before. `Err` when Auto Scaling cannot say:
    /// nothing is changed, and the error is answered at once (a hold's heartbeat would only fail
    /// again) so the event comes back.
    async fn still_waiting(&self, target: &Target<'_>) -> Result<Waiting, HandlerError> {
        if !target.confirm_before_change {
            return Ok(Waiting::Yes);
        }
        for key in &target.keys {
            match self.lifecycle.heartbeat(key, target.deadline).await {
                Ok(Heartbeat::Recorded) => return Ok(Waiting::Yes),
                Ok(Heartbeat::ActionOver) => {}
                Err(e) => return Err(unconfirmed(target, &e)),
            }
        }
        Ok(Waiting::Over)
    }

    /// The common start of a flow: fail at once if a circuit it needs is open, hold inside the
    /// deadline reserve, then read the group's instances (holding if EC2 cannot be read). `Err`
    /// carries the flow's outcome.
    async fn start_flow(
        &self,
        target: &Target<'_>,
        dependencies: &[Dependency],
        work: &str,
    ) -> Result<Vec<Instance>, Outcome> {
        if let Err(open) = self.resilience.ensure_closed(dependencies) {
            // No call to the open dependency. If Auto Scaling itself is reachable, the instance
            // is still held (one heartbeat) so a long outage does not let its hook time out.
            if open.dependency != Dependency::Autoscaling
                && self
                    .resilience
                    .ensure_closed(&[Dependency::Autoscaling])
                    .is_ok()
            {
                return Err(Outcome::hold(Cause::from(open)));
            }
            return Err(Outcome::Fail(open.into()));
        }
        if target.deadline.in_reserve(Instant::now()) {
            let reason = format!("too little time left before the deadline to {work}");
            return Err(Outcome::hold(Cause::other(reason)));
        }
        self.fleet
            .group_instances(&self.config.cluster_groups(&target.group), target.deadline)
            .await
            .map_err(|e| {
                Outcome::hold(Cause::from(&e).prefixed("cannot list the group's instances"))
            })
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
    ) -> RemovalOutcome {
        if let Some(cause) = removal_forbidden(view, member, min_voters) {
            return RemovalOutcome::Unsafe(cause);
        }
        let mut view = view.clone();
        let leader_moved = match self.move_leadership_away(&view, member, deadline).await {
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
            Ok(Removal::Removed) => RemovalOutcome::Removed { leader_moved },
            Ok(Removal::AlreadyGone) => RemovalOutcome::AlreadyGone,
            Err(e) => {
                let mut cause = Cause::from(&e)
                    .prefixed(format!("member {} not removed", display_name(member)));
                // etcd's strict reconfig check refused: a second guard of quorum.
                if matches!(e, MembershipError::Refused { .. }) {
                    cause.kind = CauseKind::Quorum;
                }
                RemovalOutcome::Unsafe(cause)
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
    ) -> Result<Option<u64>, RemovalOutcome> {
        if view.leader != Some(member.id) || view.members.len() <= 1 {
            return Ok(None);
        }
        let Some(to) = leader_candidate(view, member.id) else {
            return Err(RemovalOutcome::Unsafe(Cause::quorum(format!(
                "member {} leads and no healthy, caught-up voter can take over{}",
                display_name(member),
                not_healthy_summary(view)
            ))));
        };
        if deadline.in_reserve(Instant::now()) {
            return Err(deadline_unsafe());
        }
        if let Err(e) = self.membership.move_leader(view, to, deadline).await {
            return Err(RemovalOutcome::Unsafe(Cause::from(&e).prefixed(format!(
                "could not move leadership away from {}",
                display_name(member)
            ))));
        }
        Ok(Some(to))
    }
}

/// Why `member` may not be removed from `view` at all now: a member list no leader confirmed,
/// or quorum or the voter floor (a quorum hold).
fn removal_forbidden(view: &ClusterView, member: &Member, min_voters: u32) -> Option<Cause> {
    if !view.confirmed_by_leader {
        return Some(Cause::other(format!(
            "member {} not removed: the member list was not confirmed by a leader a majority follows{}",
            display_name(member),
            not_healthy_summary(view)
        )));
    }
    let verdict = quorum_after_removal(view, member.id, min_voters);
    let harm = match &verdict {
        Verdict::Safe { .. } => return None,
        Verdict::Unsafe { .. } => "would break quorum",
        Verdict::BelowFloor { .. } => "would leave too few voters",
    };
    Some(Cause::quorum(format!(
        "removing member {} ({:x}) {harm}: {}{}",
        display_name(member),
        member.id,
        verdict.reason(),
        not_healthy_summary(view)
    )))
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
    RemovalOutcome::Unsafe(Cause::other(
        "too little time left before the deadline to change membership",
    ))
}

/// The answer when Auto Scaling cannot say whether an action still waits before a change.
fn unconfirmed(target: &Target<'_>, e: &AwsError) -> HandlerError {
    match error_for_aws_failure(&target.group, &target.instance_id, e) {
        HandlerError::Failed {
            instance_id,
            group,
            detail,
        } => HandlerError::Failed {
            instance_id,
            group,
            detail: format!("cannot confirm the lifecycle action still waits, so membership is left as is: {detail}"),
        },
        other => other,
    }
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

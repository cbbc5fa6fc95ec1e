//! Decide, then act. Each flow decides what becomes of its lifecycle actions and says so in an
//! [`Outcome`]; [`Handler::act`] is the one place an outcome is acted on: a heartbeat or a
//! completion for each of the target's actions, the summary line, its log line and its share of
//! the metrics ([`Tally`](crate::metrics::Tally)). So every flow ends the same two ways
//! (complete, hold), and the invocation's figures are what its decisions did, summed at its end.
//!
//! A hold's [`Cause`] keeps the text that explains it and what kind of cause it is: a quorum
//! hold (one `QuorumHolds` per instance held for it), an open circuit (answered as the
//! `CircuitOpen` error itself, so Lambda reports "circuit open for ..."), or anything else
//! (answered as `Held`).

use std::fmt::Display;

use super::{
    error_for_aws_failure, Action, Handler, HandlerError, InstanceResult, ResultCode, Target,
};
use crate::model::{
    ActionKey, AwsError, Completion, Fleet, Heartbeat, Lifecycle, Membership, MembershipError,
    Transition,
};
use crate::resilience::policy::Deadline;
use crate::resilience::CircuitOpen;

/// What a flow decided for its lifecycle actions.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Let Auto Scaling go on: `CONTINUE` on each action.
    Complete {
        detail: String,
        /// Members removed on the way (the instance's own, or stale ones on a launch).
        removed: u64,
        leader_moved: bool,
    },
    /// Keep the instance in its wait state: a heartbeat on each action, and an error answered so
    /// the event comes back.
    Hold {
        cause: Cause,
        /// Stale members removed before the hold was decided: counted, but not reported as the
        /// held instance's removal.
        removed: u64,
    },
    /// No action to finish or hold (another tool's, no hook of ours, a group's membership
    /// work, a retained instance): reported only.
    Skip { detail: String, removed: u64 },
    /// Could not be decided or acted on: this error is answered.
    Fail(HandlerError),
    /// A test notification, acknowledged.
    Ignored { detail: String },
}

impl Outcome {
    pub(super) fn complete(detail: impl Into<String>) -> Self {
        Outcome::Complete {
            detail: detail.into(),
            removed: 0,
            leader_moved: false,
        }
    }

    pub(super) fn hold(cause: Cause) -> Self {
        Outcome::Hold { cause, removed: 0 }
    }

    pub(super) fn skip(detail: impl Into<String>) -> Self {
        Outcome::Skip {
            detail: detail.into(),
            removed: 0,
        }
    }
}

/// Why something cannot be done now: the text that says it, and its kind.
#[derive(Debug, Clone)]
pub(super) struct Cause {
    pub text: String,
    pub kind: CauseKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CauseKind {
    /// Quorum or the voter floor forbids the change (etcd's own refusal included).
    Quorum,
    /// A dependency's circuit is open: the invocation answers this error itself.
    CircuitOpen(CircuitOpen),
    Other,
}

impl Cause {
    pub(super) fn other(text: impl Into<String>) -> Self {
        Cause {
            text: text.into(),
            kind: CauseKind::Other,
        }
    }

    pub(super) fn quorum(text: impl Into<String>) -> Self {
        Cause {
            text: text.into(),
            kind: CauseKind::Quorum,
        }
    }

    /// "`what`: `text`", of the same kind.
    pub(super) fn prefixed(self, what: impl Display) -> Self {
        Cause {
            text: format!("{what}: {}", self.text),
            kind: self.kind,
        }
    }

    fn open(&self) -> Option<CircuitOpen> {
        match self.kind {
            CauseKind::CircuitOpen(open) => Some(open),
            _ => None,
        }
    }
}

impl From<CircuitOpen> for Cause {
    fn from(open: CircuitOpen) -> Self {
        Cause {
            text: open.to_string(),
            kind: CauseKind::CircuitOpen(open),
        }
    }
}

impl From<&AwsError> for Cause {
    fn from(e: &AwsError) -> Self {
        match e {
            AwsError::CircuitOpen(open) => Cause::from(*open),
            other => Cause::other(other.to_string()),
        }
    }
}

impl From<&MembershipError> for Cause {
    fn from(e: &MembershipError) -> Self {
        match e {
            MembershipError::CircuitOpen(open) => Cause::from(*open),
            other => Cause::other(other.to_string()),
        }
    }
}

/// Whom a summary line is about, and the paused actions an outcome is acted on (none for a line
/// that only reports: a group's membership work, a retained instance, a test notification).
pub(super) struct Subject<'s> {
    pub group: Option<&'s str>,
    pub instance_id: Option<&'s str>,
    pub transition: Option<Transition>,
    pub keys: &'s [ActionKey],
    pub deadline: &'s Deadline,
    /// Said before the line's detail ("<state>: ... handled as leaving the cluster").
    pub preface: Option<String>,
}

impl<'s> Subject<'s> {
    pub(super) fn line(
        group: Option<&'s str>,
        instance_id: Option<&'s str>,
        transition: Option<Transition>,
        deadline: &'s Deadline,
    ) -> Self {
        Subject {
            group,
            instance_id,
            transition,
            keys: &[],
            deadline,
            preface: None,
        }
    }
}

impl Target<'_> {
    pub(super) fn subject(&self) -> Subject<'_> {
        Subject {
            group: Some(&self.group),
            instance_id: Some(&self.instance_id),
            transition: Some(self.transition),
            keys: &self.keys,
            deadline: self.deadline,
            preface: None,
        }
    }
}

impl<F: Fleet, L: Lifecycle, M: Membership> Handler<F, L, M> {
    /// The one place an outcome is acted on: completes or holds each of the subject's actions,
    /// builds its summary line with what the metrics count, and logs it.
    pub(super) async fn act(&self, subject: Subject<'_>, outcome: Outcome) -> InstanceResult {
        let mut line = InstanceResult::new(subject.group, subject.instance_id, subject.transition);
        match outcome {
            Outcome::Complete {
                detail,
                removed,
                leader_moved,
            } => {
                line.detail = detail;
                line.member_removed = removed > 0;
                line.leader_moved = leader_moved;
                line.tally.members_removed = removed;
                self.complete(&subject, &mut line).await;
            }
            Outcome::Hold { cause, removed } => {
                line.tally.members_removed = removed;
                line.tally.quorum_holds = u64::from(cause.kind == CauseKind::Quorum);
                self.hold(&subject, &mut line, cause).await;
            }
            Outcome::Skip { detail, removed } => {
                line.detail = detail;
                line.member_removed = removed > 0;
                line.tally.members_removed = removed;
            }
            Outcome::Fail(error) => line.fail(error),
            Outcome::Ignored { detail } => {
                line.action = Action::Ignored;
                line.detail = detail;
            }
        }
        if let Some(preface) = subject.preface {
            line.detail = format!("{preface}: {}", line.detail);
        }
        line.log();
        line
    }

    /// Holds the instance in its wait state: a heartbeat for each of our actions, and an error
    /// so the event comes back.
    async fn hold(&self, subject: &Subject<'_>, line: &mut InstanceResult, cause: Cause) {
        let finishing = subject.deadline.finishing();
        let (group, instance_id) = names(subject);
        let mut recorded = false;
        for key in subject.keys {
            match self.lifecycle.heartbeat(key, &finishing).await {
                Ok(Heartbeat::Recorded) => {
                    line.tally.heartbeats += 1;
                    recorded = true;
                }
                Ok(Heartbeat::ActionOver) => {}
                Err(e) => {
                    line.detail = format!("{}; and the heartbeat failed: {e}", cause.text);
                    let open = match &e {
                        AwsError::CircuitOpen(open) => cause.open().or(Some(*open)),
                        _ => cause.open(),
                    };
                    let error = match open {
                        Some(open) => HandlerError::CircuitOpen(open),
                        None => HandlerError::Failed {
                            instance_id: instance_id.into(),
                            group: group.into(),
                            detail: line.detail.clone(),
                        },
                    };
                    return line.fail(error);
                }
            }
        }
        if !recorded {
            line.action = Action::Skipped;
            line.result = ResultCode::ActionOver;
            line.detail = format!("{}; the lifecycle action is no longer active, so there is nothing to hold (the sweep removes a stale member)", cause.text);
            return;
        }
        line.action = Action::Held;
        line.result = ResultCode::Heartbeat;
        line.error = Some(match cause.open() {
            Some(open) => HandlerError::CircuitOpen(open),
            None => HandlerError::Held {
                instance_id: instance_id.into(),
                group: group.into(),
                reason: cause.text.clone(),
            },
        });
        line.detail = cause.text;
    }

    /// Completes each of our actions with `CONTINUE`.
    async fn complete(&self, subject: &Subject<'_>, line: &mut InstanceResult) {
        let finishing = subject.deadline.finishing();
        let (group, instance_id) = names(subject);
        let mut completed = false;
        for key in subject.keys {
            match self.lifecycle.complete(key, &finishing).await {
                Ok(Completion::Completed) => {
                    line.tally.continued += 1;
                    completed = true;
                }
                Ok(Completion::AlreadyDone) => line.tally.already_done += 1,
                Err(e) => {
                    let error = error_for_aws_failure(group, instance_id, &e);
                    line.detail = format!("{}; completion failed: {e}", line.detail);
                    return line.fail(error);
                }
            }
        }
        line.action = Action::Completed;
        line.result = if completed {
            ResultCode::Continue
        } else {
            ResultCode::AlreadyDone
        };
    }
}

/// The group and instance a subject's actions belong to (a subject with actions names both).
fn names<'s>(subject: &Subject<'s>) -> (&'s str, &'s str) {
    (
        subject.group.unwrap_or_default(),
        subject.instance_id.unwrap_or_default(),
    )
}

impl InstanceResult {
    fn fail(&mut self, error: HandlerError) {
        self.action = Action::Failed;
        self.result = ResultCode::Error;
        if self.detail.is_empty() {
            self.detail = error.to_string();
        }
        self.error = Some(error);
    }
}

//! Thin wrappers over the AWS SDK clients: each SDK call goes through the resilience layer and
//! comes back as the handler's own types. No lifecycle decision is made here.

pub mod autoscaling;
pub mod ec2;
pub mod on_first_use;

use std::time::Duration;

use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::model::AwsError;
use crate::resilience::CallError;

/// Per-attempt timeout for every AWS call: the SDK's own retries are off, so this bounds one
/// attempt and the resilience layer decides about the next.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connect timeout: an unreachable endpoint should fail fast, not eat the deadline.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Turns a failed call into the handler's error, keeping the SDK's full message (code and text).
pub(crate) fn aws_error<E>(operation: &'static str, error: CallError<E>) -> AwsError
where
    E: std::error::Error + 'static,
{
    match error {
        CallError::CircuitOpen(open) => AwsError::CircuitOpen(open),
        other => AwsError::Failed {
            operation,
            detail: match other.source_error() {
                Some(source) => format!("{other}; {}", DisplayErrorContext(source)),
                None => other.to_string(),
            },
        },
    }
}

/// Whether Auto Scaling said "No active Lifecycle Action found": the action was completed before
/// (by an earlier delivery of this event, the sweep, or the hook's timeout).
pub(crate) fn no_active_action<E: ProvideErrorMetadata>(error: &CallError<E>) -> bool {
    error.source_error().is_some_and(|e| {
        e.code() == Some("ValidationError")
            && e.message()
                .is_some_and(|m| m.contains("No active Lifecycle Action found"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_DEADLINE_RESERVE;
    use crate::resilience::policy::ANSWER_MARGIN;

    /// The reserve is all the finishing call gets: it must hold one whole attempt (connect and
    /// attempt timeouts) and still leave the margin to post the answer, or a slow but healthy
    /// completion is cut off.
    #[test]
    fn the_default_reserve_holds_one_whole_finishing_attempt() {
        assert!(
            DEFAULT_DEADLINE_RESERVE >= CONNECT_TIMEOUT + ATTEMPT_TIMEOUT + ANSWER_MARGIN,
            "DEADLINE_RESERVE_MS default {:?} < one finishing attempt {:?} + answer margin {:?}",
            DEFAULT_DEADLINE_RESERVE,
            CONNECT_TIMEOUT + ATTEMPT_TIMEOUT,
            ANSWER_MARGIN
        );
    }
}

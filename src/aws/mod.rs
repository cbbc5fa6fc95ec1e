//! Thin wrappers over the AWS SDK clients: each SDK call goes through the resilience layer and
//! comes back as the handler's own types. No lifecycle decision is made here.

pub mod autoscaling;
pub mod ec2;
pub mod on_first_use;

use std::time::Duration;

use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::model::AwsError;
use crate::resilience::CallError;

/// Per-attempt timeout for every AWS call: the SDK's own retries are off, so this bounds one
/// attempt and the resilience layer decides about the next.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connect timeout: an unreachable endpoint should fail fast, not eat the deadline.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Turns a failed call into the handler's error, keeping what the service said (code, message
/// and request ID) or why no answer came.
pub(crate) fn aws_error<E>(operation: &'static str, error: CallError<E>) -> AwsError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    match error {
        CallError::CircuitOpen(open) => AwsError::CircuitOpen(open),
        other => AwsError::Failed {
            operation,
            detail: match other.source_error() {
                Some(source) => format!("{other}; {}", cause_of(source)),
                None => other.to_string(),
            },
        },
    }
}

/// One line an operator can read in the log and in Lambda's error: the service's code, message
/// and request ID when it answered, else the chain of causes (refused, timed out). Not the SDK's
/// `DisplayErrorContext`, which ends with the error's `Debug` form: the raw response, headers and
/// body, kilobytes of it in every held instance's error.
fn cause_of<E>(error: &E) -> String
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    if let Some(code) = error.code() {
        let message = error.message().unwrap_or("(no message)");
        return match error.meta().extra("aws_request_id") {
            Some(id) => format!("{code}: {message} (request ID {id})"),
            None => format!("{code}: {message}"),
        };
    }
    // The call's own error already says the top of the chain ("service error", "dispatch
    // failure"); the causes under it are what is news.
    let mut causes: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = match error.source() {
        Some(source) => Some(source),
        None => Some(error),
    };
    while let Some(cause) = next {
        let text = cause.to_string();
        if causes.last() != Some(&text) {
            causes.push(text);
        }
        next = cause.source();
    }
    causes.join(": ")
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

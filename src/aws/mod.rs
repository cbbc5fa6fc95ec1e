//! Thin wrappers over the AWS SDK clients: each SDK call goes through the resilience layer and
//! comes back as the handler's own types. No lifecycle decision is made here.

pub mod autoscaling;
pub mod ec2;
pub mod on_first_use;

use std::time::Duration;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::error_text::with_causes;
use crate::model::AwsError;
use crate::resilience::CallError;

/// Per-attempt timeout for every AWS call: the SDK's own retries are off, so this bounds one
/// attempt and the resilience layer decides about the next.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connect timeout: an unreachable endpoint should fail fast, not eat the deadline.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Turns a failed call into the handler's error, keeping what the service said (code, message,
/// HTTP status and request ID) or why no answer came.
pub(crate) fn aws_error<O>(
    operation: &'static str,
    error: CallError<SdkError<O, HttpResponse>>,
) -> AwsError
where
    O: std::error::Error + ProvideErrorMetadata + 'static,
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

/// One line an operator can read in the log and in Lambda's error: the service's code and message
/// when it gave them, else the causes under the call's own error (refused, timed out, an answer
/// that could not be read), then the HTTP status and the request ID to quote to AWS support. Not
/// the SDK's `DisplayErrorContext`, which ends with the error's `Debug` form: the raw response,
/// headers and body, kilobytes of it in every held instance's error.
fn cause_of<O>(error: &SdkError<O, HttpResponse>) -> String
where
    O: std::error::Error + ProvideErrorMetadata + 'static,
{
    let what = match error.code() {
        Some(code) => format!("{code}: {}", error.message().unwrap_or("(no message)")),
        None => causes_under(error),
    };
    let response = error.raw_response();
    let request_id = error
        .meta()
        .extra("aws_request_id")
        .or_else(|| response.and_then(|r| r.headers().get("x-amzn-requestid")));
    match (response.map(|r| r.status().as_u16()), request_id) {
        (Some(status), Some(id)) => format!("{what} (HTTP {status}, request ID {id})"),
        (Some(status), None) => format!("{what} (HTTP {status})"),
        (None, _) => what,
    }
}

/// The causes under `error`: the call's own error already says its top ("service error",
/// "dispatch failure").
fn causes_under(error: &(dyn std::error::Error + 'static)) -> String {
    match error.source() {
        Some(cause) => with_causes(cause.to_string(), cause.source()),
        None => error.to_string(),
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

//! Which failures are worth retrying and counting against a dependency.
//!
//! Transient: the dependency is overloaded, restarting or unreachable right now (throttling, 5xx,
//! timeouts, connection errors, etcd `Unavailable`). Retrying may help, and a run of them means the
//! dependency is unhealthy. Permanent: the request itself is wrong or not allowed (validation,
//! permission, not found): retrying cannot help and the dependency is fine.

use aws_runtime::retries::classifiers::{THROTTLING_ERRORS, TRANSIENT_ERRORS};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// The verdict on one failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Transient,
    Permanent,
}

/// Anything the resilience layer can retry: it knows whether it is transient.
pub trait Classify {
    fn class(&self) -> Class;
}

/// Codes the SDK's own retry classifier does not list but AWS services answer when the service,
/// not the request, failed (most arrive with a 5xx status too; the code decides when not).
const SERVER_ERROR_CODES: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "Unavailable",
];

/// Whether an AWS error code names a transient condition: the SDK's throttling and transient
/// codes (`aws_runtime`'s lists, so a code the SDK learns is ours too; `LimitExceededException`
/// among them), or a server error.
pub fn is_transient_code(code: &str) -> bool {
    THROTTLING_ERRORS.contains(&code)
        || TRANSIENT_ERRORS.contains(&code)
        || SERVER_ERROR_CODES.contains(&code)
}

/// Whether an HTTP status says "the service, not the request, failed".
pub fn is_transient_status(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504)
}

impl<E: ProvideErrorMetadata> Classify for SdkError<E, HttpResponse> {
    fn class(&self) -> Class {
        match self {
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => Class::Transient,
            // The service answered with something the SDK could not read: most often a proxy or
            // load balancer's error page.
            SdkError::ResponseError(e) => status_class(e.raw().status().as_u16()),
            SdkError::ServiceError(e) => {
                if self.code().is_some_and(is_transient_code) {
                    Class::Transient
                } else {
                    status_class(e.raw().status().as_u16())
                }
            }
            // Construction failures are bugs or bad input on our side.
            _ => Class::Permanent,
        }
    }
}

fn status_class(status: u16) -> Class {
    if is_transient_status(status) {
        Class::Transient
    } else {
        Class::Permanent
    }
}

impl Classify for etcd_client::Error {
    fn class(&self) -> Class {
        use etcd_client::Error as E;
        match self {
            E::GRpcStatus(status) => grpc_class(status.code()),
            E::TransportError(_) | E::IoError(_) => Class::Transient,
            _ => Class::Permanent,
        }
    }
}

/// gRPC codes etcd answers when it cannot serve right now.
pub fn grpc_class(code: tonic::Code) -> Class {
    use tonic::Code;
    match code {
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted => {
            Class::Transient
        }
        // tonic reports a dropped connection mid-call as Unknown with a transport message; the
        // member may simply have restarted.
        Code::Unknown => Class::Transient,
        _ => Class::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_the_sdk_retries_is_transient_here_too() {
        for code in THROTTLING_ERRORS.iter().chain(TRANSIENT_ERRORS) {
            assert!(is_transient_code(code), "{code}");
        }
        assert!(is_transient_code("LimitExceededException"));
        assert!(is_transient_code("RequestTimeout"));
    }

    #[test]
    fn throttling_codes_are_transient() {
        for code in [
            "Throttling",
            "ThrottlingException",
            "RequestLimitExceeded",
            "TooManyRequestsException",
            "ProvisionedThroughputExceededException",
            "RequestThrottled",
            "SlowDown",
            "PriorRequestNotComplete",
            "EC2ThrottledException",
        ] {
            assert!(is_transient_code(code), "{code}");
        }
        for code in [
            "ValidationError",
            "AccessDenied",
            "UnauthorizedOperation",
            "",
        ] {
            assert!(!is_transient_code(code), "{code}");
        }
    }

    #[test]
    fn server_statuses_are_transient() {
        for status in [429, 500, 502, 503, 504] {
            assert!(is_transient_status(status), "{status}");
        }
        for status in [200, 400, 403, 404, 501] {
            assert!(!is_transient_status(status), "{status}");
        }
    }

    #[test]
    fn etcd_status_codes() {
        let grpc = |code, msg: &str| etcd_client::Error::GRpcStatus(tonic::Status::new(code, msg));
        assert_eq!(
            grpc(tonic::Code::Unavailable, "etcdserver: leader changed").class(),
            Class::Transient
        );
        assert_eq!(
            grpc(tonic::Code::DeadlineExceeded, "timeout").class(),
            Class::Transient
        );
        assert_eq!(
            grpc(tonic::Code::ResourceExhausted, "too many").class(),
            Class::Transient
        );
        assert_eq!(
            grpc(tonic::Code::NotFound, "member not found").class(),
            Class::Permanent
        );
        assert_eq!(
            grpc(tonic::Code::FailedPrecondition, "not leader").class(),
            Class::Permanent
        );
        assert_eq!(
            grpc(tonic::Code::PermissionDenied, "no").class(),
            Class::Permanent
        );
        let io = etcd_client::Error::IoError(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        ));
        assert_eq!(io.class(), Class::Transient);
        assert_eq!(
            etcd_client::Error::InvalidArgs("x".into()).class(),
            Class::Permanent
        );
    }
}

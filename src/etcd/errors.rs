//! etcd's answers, sorted once where they arrive: each endpoint's miss, what a pass over the
//! endpoints amounts to, and etcd's "not now". Nothing above this module reads error text.

use super::*;

/// Why a member's `Status` gave no answer to judge.
#[derive(Debug)]
pub(super) enum Unanswered {
    Silent(String),
    /// The deadline cut the wait short, or left none.
    NotInTime,
}

impl fmt::Display for Unanswered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unanswered::Silent(detail) => f.write_str(detail),
            Unanswered::NotInTime => f.write_str("not asked in time"),
        }
    }
}

/// How an operation failed on one endpoint.
#[derive(Debug)]
pub(super) enum OpError {
    Etcd(etcd_client::Error),
    /// No answer in time.
    Silent(String),
    /// The answer came from a member that is no longer in the cluster.
    Stale(String),
    /// An answer that makes no sense (a missing field).
    Malformed(String),
    /// The lock was not free within this wait.
    Locked(Duration),
}

impl From<etcd_client::Error> for OpError {
    fn from(e: etcd_client::Error) -> Self {
        OpError::Etcd(e)
    }
}

/// Why one endpoint gave no usable answer.
#[derive(Debug)]
pub(super) enum EndpointMiss {
    /// It did not answer: connection refused, timed out or dropped.
    Silent(String),
    /// The TLS handshake failed.
    Tls(String),
    /// It answered from a view that is out of date.
    Stale(String),
    /// etcd answered with a transient error (leader changed, timed out).
    Busy(String),
    /// The member has no leader: an election, or it is cut off from a quorum.
    NoLeader(String),
    /// No client could be built for it (a malformed URL).
    Unusable(String),
    /// An answer that ends the call.
    Final(PassFailure),
}

/// One failed attempt of a cluster-level call, as the resilience layer sees it.
#[derive(Debug)]
pub(super) enum PassFailure {
    /// No endpoint answered. Transient: counted by the breaker.
    Unreachable { endpoints: String, detail: String },
    /// etcd answered with transient errors only. Transient.
    Busy { detail: String },
    /// The members that answered have no leader. An answer about the cluster (no quorum, or an
    /// election under way), not a failure of it as a dependency: not counted.
    NoLeader { detail: String },
    /// The strict reconfig check refused the change. An answer: not counted.
    /// `for_now`: the strict reconfig check's "unhealthy cluster", which also answers for a few
    /// seconds after an election; worth waiting out briefly, unlike "too many learners".
    Refused { detail: String, for_now: bool },
    /// Another invocation held the membership lock for the whole wait. An answer: not counted.
    Locked { waited: Duration },
    /// etcd refuses writes under an alarm (NOSPACE). An answer about the cluster: not counted.
    WritesRefused { detail: String },
    /// etcd answered with an error retrying cannot fix.
    Rejected { detail: String },
    /// Every reachable endpoint failed the TLS handshake: a configuration problem.
    Tls { detail: String },
    /// No client could be built for any endpoint that was not silent.
    Unusable { detail: String },
    /// The deadline left no time to ask any endpoint.
    OutOfTime,
}

impl Classify for PassFailure {
    fn class(&self) -> Class {
        match self {
            PassFailure::Unreachable { .. } | PassFailure::Busy { .. } => Class::Transient,
            _ => Class::Permanent,
        }
    }
}

/// Whether a strict reconfig refusal is waited out too, or reported at once.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusals {
    Wait,
    Report,
}

/// When `result` is etcd's "not now" (no leader during a short election, or, with
/// `Refusals::Wait`, the strict reconfig check's "unhealthy cluster") and a pause still ends
/// before `until`: pauses and answers `true` (try again). Otherwise `false`: the result stands.
pub(super) async fn paused_for_not_now<T>(
    operation: &'static str,
    result: &Result<T, CallError<PassFailure>>,
    refusals: Refusals,
    until: Instant,
) -> bool {
    let not_now = match result.as_ref().err().and_then(CallError::source_error) {
        Some(PassFailure::NoLeader { detail }) => {
            Some(("etcd has no leader (an election)", detail))
        }
        Some(PassFailure::Refused {
            detail,
            for_now: true,
        }) if refusals == Refusals::Wait => Some(("etcd refused the change for now", detail)),
        _ => None,
    };
    match not_now {
        Some((what, detail)) if Instant::now() + REFUSAL_PAUSE < until => {
            tracing::debug!(operation, %detail, "{what}; trying again shortly");
            tokio::time::sleep(REFUSAL_PAUSE).await;
            true
        }
        _ => false,
    }
}

/// What a pass over the endpoints amounts to when none gave a usable answer.
pub(super) fn summarize(urls: &[String], misses: Vec<(String, EndpointMiss)>) -> PassFailure {
    if misses.is_empty() {
        return PassFailure::OutOfTime;
    }
    let detail = misses
        .iter()
        .map(|(url, miss)| match miss {
            EndpointMiss::Silent(d)
            | EndpointMiss::Tls(d)
            | EndpointMiss::Stale(d)
            | EndpointMiss::Busy(d)
            | EndpointMiss::NoLeader(d)
            | EndpointMiss::Unusable(d) => {
                format!("{url}: {d}")
            }
            EndpointMiss::Final(f) => format!("{url}: {f:?}"),
        })
        .collect::<Vec<_>>()
        .join("; ");
    let any = |pred: fn(&EndpointMiss) -> bool| misses.iter().any(|(_, m)| pred(m));
    if any(|m| matches!(m, EndpointMiss::Busy(_))) {
        PassFailure::Busy { detail }
    } else if any(|m| matches!(m, EndpointMiss::NoLeader(_))) {
        PassFailure::NoLeader { detail }
    } else if any(|m| matches!(m, EndpointMiss::Tls(_))) {
        PassFailure::Tls { detail }
    } else if any(|m| matches!(m, EndpointMiss::Silent(_) | EndpointMiss::Stale(_))) {
        PassFailure::Unreachable {
            endpoints: urls.join(","),
            detail,
        }
    } else {
        PassFailure::Unusable { detail }
    }
}

/// Sorts an etcd client error from `url` into "move on to the next endpoint" or "stop".
pub(super) fn sort_error(url: &str, e: &etcd_client::Error) -> EndpointMiss {
    let detail = describe(e);
    if is_refusal(e) {
        return EndpointMiss::Final(PassFailure::Refused {
            detail: format!("{url} answered {detail}: {}", refusal_meaning(e)),
            for_now: grpc_message(e).contains("unhealthy cluster"),
        });
    }
    if ["database space exceeded", "corrupt cluster"]
        .iter()
        .any(|m| grpc_message(e).contains(m))
    {
        return EndpointMiss::Final(PassFailure::WritesRefused {
            detail: format!("{url} answered {detail}"),
        });
    }
    if !answered_by_etcd(e) {
        return if looks_like_tls(&detail) {
            EndpointMiss::Tls(detail)
        } else {
            EndpointMiss::Silent(detail)
        };
    }
    if grpc_message(e).contains("no leader") {
        return EndpointMiss::NoLeader(detail);
    }
    match e.class() {
        Class::Transient => EndpointMiss::Busy(detail),
        Class::Permanent => EndpointMiss::Final(PassFailure::Rejected {
            detail: format!("{url} answered {detail}"),
        }),
    }
}

/// Whether etcd itself answered (as opposed to the connection failing on the way). etcd's own
/// errors carry the `etcdserver:` prefix; a transport failure surfaces as `Unavailable` or
/// `Unknown` without it.
pub(super) fn answered_by_etcd(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            status.message().starts_with("etcdserver:")
                || !matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
                )
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => false,
        _ => true,
    }
}

/// etcd's refusals of a membership change it considers unsafe or not possible right now.
pub(super) fn is_refusal(e: &etcd_client::Error) -> bool {
    let message = grpc_message(e);
    [
        "unhealthy cluster",
        "not enough started members",
        "too many learner members",
    ]
    .iter()
    .any(|m| message.contains(m))
}

pub(super) fn refusal_meaning(e: &etcd_client::Error) -> &'static str {
    let message = grpc_message(e);
    if message.contains("too many learner members") {
        "etcd allows one learner at a time; promote the current learner (once it has caught up) or remove it, then retry"
    } else if message.contains("not enough started members") {
        "too few members have started for this change to keep quorum; retry once the new members run"
    } else {
        "etcd's strict reconfig check: the change would leave too few connected voting members, or a leader was elected in the last few seconds; retry later"
    }
}

/// etcd's answer to `MoveLeader` sent to a member that no longer leads.
pub(super) fn is_not_leader(e: &etcd_client::Error) -> bool {
    grpc_message(e).contains("not leader")
}

pub(super) fn is_member_not_found(e: &etcd_client::Error) -> bool {
    is_not_found(e) || grpc_message(e).contains("member not found")
}

/// etcd's NotFound: a member or a lease it no longer knows.
pub(super) fn is_not_found(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(status) if status.code() == tonic::Code::NotFound)
}

/// etcd's answers to adding a peer URL that is already a member's. etcd derives a member's ID
/// from its peer URLs and the time in seconds, so a repeat within the same second collides on
/// the ID instead of the URL.
pub(super) fn is_already_added(e: &etcd_client::Error) -> bool {
    let message = grpc_message(e);
    message.contains("Peer URLs already exists") || message.contains("member ID already exist")
}

/// The gRPC status message, or "" for errors that are not a status.
pub(super) fn grpc_message(e: &etcd_client::Error) -> &str {
    match e {
        etcd_client::Error::GRpcStatus(status) => status.message(),
        _ => "",
    }
}

pub(super) fn looks_like_tls(detail: &str) -> bool {
    let detail = detail.to_ascii_lowercase();
    [
        "certificate",
        "unknownissuer",
        "handshake",
        "tls",
        "alert",
        "http/2 was not negotiated",
    ]
    .iter()
    .any(|m| detail.contains(m))
}

/// An error's text with its whole source chain, without tonic's metadata dump.
pub(super) fn describe(e: &etcd_client::Error) -> String {
    let (text, source): (String, Option<&(dyn std::error::Error + 'static)>) = match e {
        etcd_client::Error::GRpcStatus(status) => (
            format!("{:?} \"{}\"", status.code(), status.message()),
            std::error::Error::source(status),
        ),
        etcd_client::Error::TransportError(t) => (
            format!("transport error: {t}"),
            std::error::Error::source(t),
        ),
        etcd_client::Error::IoError(io) => {
            (format!("io error: {io}"), std::error::Error::source(io))
        }
        other => (other.to_string(), None),
    };
    crate::error_text::with_causes(text, source)
}

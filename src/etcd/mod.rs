//! etcd membership through etcd's own gRPC API: the real [`Membership`]. Four jobs, four files:
//! `tls.rs` (set-up at start-up), `endpoints.rs` (failover), `errors.rs` (etcd's answers sorted
//! where they arrive) and `membership.rs` (the `Membership` impl).
//!
//! Why this is more than a thin wrapper over `etcd-client`:
//!
//! - A terminating instance is soon a dead endpoint, and `etcd-client`'s balanced client fails
//!   about half its calls while one of its endpoints is dead. So cluster-level calls ask one
//!   endpoint at a time and move on when it does not answer. The whole pass over the endpoints is
//!   one attempt through the resilience layer: only "no endpoint answered" counts against etcd's
//!   breaker, never one gone instance. Endpoints that did not answer are asked last next time.
//! - `Status` describes the member that answers it and `MoveLeader` works only on the leader, so
//!   both go to one member's own advertised client URL, never through a balanced client. A status
//!   that fails is information about that member (it is unhealthy), not about etcd as a
//!   dependency, so it takes the layer's uncounted probe path.
//! - etcd's strict reconfig check answers "unhealthy cluster" both when a change would break
//!   quorum and for a few seconds after an election or a leader move. A membership change waits
//!   that out briefly, then reports [`MembershipError::Refused`] (hold, retry later). That is
//!   etcd's answer, not its failure, so the breaker does not count it.
//! - Membership changes go to the leader, which is read again from the members' status just
//!   before each change: the caller's view may be from before a leader move (see
//!   [`EtcdMembership::remove`]).
//! - A member that was just removed may answer with its old member list for a moment, so member
//!   lists answered by members this process removed are not used.
//! - TLS files are read once, at start-up, so a wrong path stops the function at once with the
//!   variable's name rather than failing every call. Key material is never logged: this type's
//!   `Debug` shows paths only.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, Identity, LockOptions, MemberAddOptions, TlsOptions,
};
use futures_util::future::join_all;
use tokio::time::Instant;

use crate::config::{Config, Scheme, TlsFiles};
use crate::health::{self, Judgement, StatusAnswer, StatusReport};
use crate::model::{
    ClusterView, Instance, Member, Membership, MembershipError, MembershipLock, Promotion, Removal,
};
use crate::resilience::classify::{Class, Classify};
use crate::resilience::policy::{Deadline, REFUSAL_PAUSE};
use crate::resilience::{CallError, Dependency, Resilience};

/// Longest wait for the TCP (and TLS) connection to one member.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for one answer once connected. `MoveLeader` waits for the election it causes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for one member's `Status` during the quorum check.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// The name of etcd's lock under which every membership change is made (the v3lock service
/// keeps its waiters as keys under this prefix).
pub const LOCK_NAME: &str = "etcd-lifecycle-hook/membership";
/// How many removed member IDs are remembered to ignore their stale answers. Member IDs are
/// never reused, so forgetting old ones only matters for memory.
const REMEMBERED_REMOVALS: usize = 64;

mod endpoints;
mod errors;
mod membership;
mod tls;

pub use endpoints::Connections;
use errors::*;
pub use tls::TlsSetupError;
use tls::*;

/// [`Membership`] over etcd's gRPC API, through the resilience layer's `etcd` breaker.
///
/// Built once per execution environment. Connections live for one invocation: one client per
/// member URL asked, shared by every request of the invocation to that member, dropped when the
/// invocation answers (`release_connections`) or when the next one starts, so an instance that
/// went away since the last invocation leaves nothing stale behind.
pub struct EtcdMembership {
    resilience: Arc<Resilience>,
    /// `ETCD_ENDPOINTS`; empty means "build them from the group's instances".
    endpoints: Vec<String>,
    scheme: Scheme,
    client_port: u16,
    /// What `https` URLs are dialled with: the CA file and client certificate when given, else
    /// the system trust store (honouring `SSL_CERT_FILE` / `SSL_CERT_DIR`).
    tls: TlsOptions,
    /// Paths only, for `Debug`.
    tls_files: TlsFiles,
    /// Members this process removed, most recent last.
    removed: Mutex<VecDeque<u64>>,
    /// Endpoints whose last try got no answer: asked after the others.
    silent: Mutex<HashSet<String>>,
    /// The client URLs the members advertised in the latest member list, by member: asked too
    /// when the instances give too few (a zone's only instance being removed, one group of a
    /// cluster over several).
    known: Mutex<Vec<(u64, String)>>,
    /// The leader of the latest confirmed view: its client URLs are asked first, so the member
    /// list usually comes from the leader at once and needs no second read.
    leader: Mutex<Option<u64>>,
    /// This invocation's clients, one per member URL (see `connect`).
    clients: Mutex<endpoints::Clients>,
}

impl fmt::Debug for EtcdMembership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the TLS options themselves: their Debug prints the private key.
        f.debug_struct("EtcdMembership")
            .field("endpoints", &self.endpoints)
            .field("scheme", &self.scheme)
            .field("client_port", &self.client_port)
            .field("tls_files", &self.tls_files)
            .finish_non_exhaustive()
    }
}

impl EtcdMembership {
    /// Reads the TLS files named in `config` (if any) and keeps the endpoint settings. Makes no
    /// network call.
    pub fn new(config: &Config, resilience: Arc<Resilience>) -> Result<Self, TlsSetupError> {
        Ok(Self {
            resilience,
            endpoints: config.etcd_endpoints.clone(),
            scheme: config.etcd_client_scheme,
            client_port: config.etcd_client_port,
            tls: load_tls(&config.etcd_tls)?,
            tls_files: config.etcd_tls.clone(),
            removed: Mutex::new(VecDeque::new()),
            silent: Mutex::new(HashSet::new()),
            known: Mutex::new(Vec::new()),
            leader: Mutex::new(None),
            clients: Mutex::new(endpoints::Clients::default()),
        })
    }
}

pub(super) fn member_from(m: &etcd_client::Member) -> Member {
    Member {
        id: m.id(),
        name: m.name().to_string(),
        peer_urls: m.peer_urls().to_vec(),
        client_urls: m.client_urls().to_vec(),
        is_learner: m.is_learner(),
    }
}

/// Member IDs in hex, as `etcdctl` shows them.
pub(super) fn hex(id: u64) -> String {
    format!("{id:x}")
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent even if a holder panicked.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests;

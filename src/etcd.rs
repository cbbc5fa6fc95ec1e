//! etcd membership through etcd's own gRPC API: the real [`Membership`].
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

use std::collections::{HashSet, VecDeque};
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

/// The TLS files named by `ETCD_CA_FILE`, `ETCD_CERT_FILE` and `ETCD_KEY_FILE` cannot be used.
/// Raised at start-up by [`EtcdMembership::new`].
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A file is missing or cannot be read.
    #[error("cannot read {variable}={}: {source}; check that the file exists and that the function can read it", path.display())]
    Unreadable {
        variable: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file holds something other than the PEM it should.
    #[error("{variable}={} holds no PEM {expected}; check that the variable names the right file", path.display())]
    NotPem {
        variable: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    /// The files read but rustls cannot use them (a broken key, a key that is not the
    /// certificate's).
    #[error("the TLS files ({files}) do not form a usable client configuration: {detail}; check that the certificate and the key are PEM and belong together")]
    Unusable { files: String, detail: String },
}

/// [`Membership`] over etcd's gRPC API, through the resilience layer's `etcd` breaker.
///
/// Built once per execution environment; it holds no connection. Every call connects to the
/// endpoints it needs and drops the connections when it returns, so an instance that went away
/// since the last invocation leaves nothing stale behind.
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
        })
    }

    /// The client URLs to ask for the member list: `ETCD_ENDPOINTS`, or else
    /// `{scheme}://{ip}:{port}` for the private IP of each of `peers` that is pending or running.
    pub fn endpoints_for(&self, peers: &[Instance]) -> Vec<String> {
        if !self.endpoints.is_empty() {
            return self.endpoints.clone();
        }
        let scheme = self.scheme.as_str();
        let port = self.client_port;
        let mut urls: Vec<String> = Vec::new();
        for ip in peers
            .iter()
            .filter(|p| p.is_up())
            .filter_map(|p| p.private_ip.or_else(|| p.ips().next()))
        {
            let url = match ip {
                IpAddr::V4(v4) => format!("{scheme}://{v4}:{port}"),
                IpAddr::V6(v6) => format!("{scheme}://[{v6}]:{port}"),
            };
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
        urls
    }

    /// [`endpoints_for`](Self::endpoints_for) and then the client URLs the members advertised
    /// last time, or `Unreachable` when there are none to ask.
    fn cluster_endpoints(&self, peers: &[Instance]) -> Result<Vec<String>, MembershipError> {
        let urls = self.with_known(self.endpoints_for(peers));
        if urls.is_empty() {
            return Err(MembershipError::Unreachable {
                endpoints: "none".to_string(),
                detail: "ETCD_ENDPOINTS is empty and no running instance of the group has a private IP to build endpoints from".to_string(),
            });
        }
        Ok(urls)
    }

    /// `urls`, then the members' advertised client URLs not among them.
    fn with_known(&self, mut urls: Vec<String>) -> Vec<String> {
        for (_, url) in lock(&self.known).iter() {
            if !urls.contains(url) {
                urls.push(url.clone());
            }
        }
        urls
    }

    fn remember_members(&self, members: &[Member]) {
        *lock(&self.known) = members
            .iter()
            .flat_map(|m| m.client_urls.iter().map(|u| (m.id, u.clone())))
            .collect();
    }

    fn remember_removed(&self, member: u64) {
        lock(&self.known).retain(|(id, _)| *id != member);
        let mut removed = lock(&self.removed);
        if !removed.contains(&member) {
            removed.push_back(member);
        }
        while removed.len() > REMEMBERED_REMOVALS {
            removed.pop_front();
        }
    }

    fn removed_members(&self) -> Vec<u64> {
        lock(&self.removed).iter().copied().collect()
    }

    /// `urls` with the ones that were silent last time moved to the end, order kept otherwise.
    fn ordered(&self, urls: &[String]) -> Vec<String> {
        let silent = lock(&self.silent);
        let (quiet, answering): (Vec<&String>, Vec<&String>) =
            urls.iter().partition(|u| silent.contains(*u));
        answering.into_iter().chain(quiet).cloned().collect()
    }

    fn note_answer(&self, url: &str, answered: bool) {
        let mut silent = lock(&self.silent);
        if answered {
            silent.remove(url);
        } else {
            silent.insert(url.to_string());
        }
    }

    async fn connect(&self, url: &str, left: Duration) -> Result<Client, etcd_client::Error> {
        // A member without a leader answers "no leader" at once instead of letting a write wait
        // for a quorum that is not there (and its Status then says it is not serving).
        let mut options = ConnectOptions::new()
            .with_connect_timeout(DIAL_TIMEOUT.min(left))
            .with_timeout(REQUEST_TIMEOUT.min(left))
            .with_require_leader(true);
        if url.starts_with("https://") {
            options = options.with_tls(self.tls.clone());
        }
        Client::connect([url], Some(options)).await
    }

    /// One attempt of a cluster-level call: `op` on each of `urls` in turn until one answers.
    /// Endpoints that do not answer, or answer with a transient error, make it move on; an
    /// answer that ends the call (success, or an error retrying cannot fix) stops it.
    async fn first_answer<T, F, Fut>(
        &self,
        urls: &[String],
        deadline: &Deadline,
        op: &F,
    ) -> Result<T, Failure>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, OpError>>,
    {
        let mut misses: Vec<(String, Miss)> = Vec::new();
        for url in self.ordered(urls) {
            let left = deadline
                .work_until()
                .saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let client = match self.connect(&url, left).await {
                Ok(client) => client,
                Err(e) => {
                    misses.push((url, Miss::Unusable(describe(&e))));
                    continue;
                }
            };
            let limit = (DIAL_TIMEOUT + REQUEST_TIMEOUT).min(left);
            let outcome = match tokio::time::timeout(limit, op(client)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(OpError::Silent(format!(
                    "no answer within {} ms",
                    limit.as_millis()
                ))),
            };
            let miss = match outcome {
                Ok(value) => {
                    self.note_answer(&url, true);
                    return Ok(value);
                }
                Err(OpError::Silent(detail)) => Miss::Silent(detail),
                Err(OpError::Stale(detail)) => Miss::Stale(detail),
                Err(OpError::Odd(detail)) => Miss::Final(Failure::Rejected {
                    detail: format!("{url} answered: {detail}"),
                }),
                Err(OpError::Locked(waited)) => Miss::Final(Failure::Locked { waited }),
                Err(OpError::Etcd(e)) => sort_error(&url, &e),
            };
            self.note_answer(&url, !matches!(miss, Miss::Silent(_) | Miss::Tls(_)));
            tracing::debug!(endpoint = %url, miss = ?miss, "etcd endpoint gave no usable answer");
            match miss {
                Miss::Final(failure) => return Err(failure),
                miss => misses.push((url, miss)),
            }
        }
        Err(summarize(urls, misses))
    }

    /// A cluster-level call through the breaker: one attempt is one pass over `urls`.
    async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        urls: &[String],
        deadline: &Deadline,
        op: &F,
    ) -> Result<T, MembershipError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, OpError>>,
    {
        self.resilience
            .call(Dependency::Etcd, deadline, || {
                self.first_answer(urls, deadline, op)
            })
            .await
            .map_err(|e| self.membership_error(operation, e))
    }

    /// A membership change, sent to the current leader first (then the other members), tried
    /// again for up to [`REFUSAL_WAIT`](crate::resilience::policy::REFUSAL_WAIT) while etcd refuses it as "unhealthy cluster".
    /// `last` is the member to ask only when no other answers (the one being removed).
    async fn change<T, F, Fut>(
        &self,
        operation: &'static str,
        view: &ClusterView,
        last: Option<u64>,
        deadline: &Deadline,
        op: F,
    ) -> Result<T, MembershipError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, OpError>>,
    {
        let wait_until = deadline.refusal_wait_until(Instant::now());
        loop {
            let leader = self.leader_now(view, deadline).await?;
            let urls = targets(view, leader, last);
            if urls.is_empty() {
                return Err(MembershipError::Unreachable {
                    endpoints: "none".to_string(),
                    detail: "no member of the cluster advertises a client URL".to_string(),
                });
            }
            let result = self.run(operation, &urls, deadline, &op).await;
            if !paused_for_not_now(operation, &result, Refusals::Wait, wait_until).await {
                return result;
            }
        }
    }

    /// A cluster-level call that waits out a short election ("no leader") like a refused
    /// change, then reports it.
    async fn retry_without_leader<T, F, Fut>(
        &self,
        operation: &'static str,
        urls: &[String],
        deadline: &Deadline,
        op: &F,
    ) -> Result<T, MembershipError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, OpError>>,
    {
        let wait_until = deadline.refusal_wait_until(Instant::now());
        loop {
            let result = self.run(operation, urls, deadline, op).await;
            if !paused_for_not_now(operation, &result, Refusals::Report, wait_until).await {
                return result;
            }
        }
    }

    /// Revokes `lease` (and with it the lock key on it, which wakes the next waiter). Best
    /// effort: the lease expires with the invocation anyway.
    async fn revoke(&self, lease: i64, urls: &[String], deadline: &Deadline) {
        let op = move |mut client: Client| async move {
            match client.lease_revoke(lease).await {
                Ok(_) => Ok(()),
                // Expired already: nothing is held on it.
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(e.into()),
            }
        };
        match self
            .run("release the membership lock", urls, deadline, &op)
            .await
        {
            Ok(()) => tracing::debug!(lease, "released the membership lock"),
            Err(e) => {
                tracing::warn!(lease, error = %e, "could not release the membership lock; it is freed when its lease expires with this invocation")
            }
        }
    }

    /// `member`'s own status, asked at its advertised client URLs, as [`health::judge`] takes
    /// it. Uncounted by the breaker: a silent member is information about that member.
    async fn status_of(
        &self,
        member: &Member,
        deadline: &Deadline,
    ) -> Result<StatusAnswer, MembershipError> {
        if member.client_urls.is_empty() {
            return Ok(StatusAnswer::NeverStarted);
        }
        if deadline.in_reserve(Instant::now()) {
            return Ok(StatusAnswer::NotAskedInTime);
        }
        let ask = async {
            let mut last = Unanswered::Silent(String::new());
            for url in &member.client_urls {
                let left = deadline
                    .work_until()
                    .saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Unanswered::NotInTime);
                }
                let limit = STATUS_TIMEOUT.min(left);
                let cut_short = limit < STATUS_TIMEOUT;
                let mut client = match self.connect(url, limit).await {
                    Ok(client) => client,
                    Err(_) if cut_short => {
                        last = Unanswered::NotInTime;
                        continue;
                    }
                    Err(e) => {
                        last = Unanswered::Silent(format!("{url}: {}", describe(&e)));
                        continue;
                    }
                };
                match tokio::time::timeout(limit, client.status()).await {
                    Ok(Ok(status)) => {
                        let own = status.header().map_or(0, |h| h.member_id());
                        if own != 0 && own != member.id {
                            last = Unanswered::Silent(format!(
                                "{url} is member {own:x}, not {:x}",
                                member.id
                            ));
                            continue;
                        }
                        return Ok(StatusAnswer::Answered(StatusReport {
                            leader: status.leader(),
                            raft_term: status.raft_term(),
                            raft_index: status.raft_index(),
                            errors: status.errors().to_vec(),
                        }));
                    }
                    Ok(Err(e)) if matches!(sort_error(url, &e), Miss::NoLeader(_)) => {
                        return Ok(StatusAnswer::NoLeader);
                    }
                    Ok(Err(e)) => last = Unanswered::Silent(format!("{url}: {}", describe(&e))),
                    Err(_) if cut_short => last = Unanswered::NotInTime,
                    Err(_) => {
                        last = Unanswered::Silent(format!(
                            "{url}: no answer within {} ms",
                            limit.as_millis()
                        ))
                    }
                }
            }
            Err(last)
        };
        match self.resilience.probe(Dependency::Etcd, deadline, ask).await {
            Ok(answer) => Ok(answer),
            Err(CallError::CircuitOpen(open)) => Err(MembershipError::CircuitOpen(open)),
            Err(CallError::DeadlineReached { .. }) => Ok(StatusAnswer::NotAskedInTime),
            Err(e) => {
                let answer = match e.source_error() {
                    Some(Unanswered::NotInTime) => StatusAnswer::NotAskedInTime,
                    Some(Unanswered::Silent(detail)) => StatusAnswer::Silent(detail.clone()),
                    None => StatusAnswer::Silent(e.to_string()),
                };
                tracing::debug!(member = %hex(member.id), answer = ?answer, "member gave no usable Status");
                Ok(answer)
            }
        }
    }

    /// Every member's `Status`, asked concurrently, judged together.
    async fn judged(
        &self,
        members: &[Member],
        deadline: &Deadline,
    ) -> Result<Judgement, MembershipError> {
        let answers = join_all(members.iter().map(|m| self.status_of(m, deadline))).await;
        let mut asked = Vec::with_capacity(members.len());
        for (member, answer) in members.iter().zip(answers) {
            asked.push((member.id, answer?));
        }
        Ok(health::judge(members, &asked))
    }

    /// The member list from the first of `urls` that answers (never one this process removed,
    /// and without the members it removed), with the ID of the member that answered.
    async fn member_list(
        &self,
        urls: &[String],
        deadline: &Deadline,
    ) -> Result<(Vec<Member>, u64), MembershipError> {
        let removed = self.removed_members();
        let list = |mut client: Client| {
            let removed = removed.clone();
            async move {
                let answer = client.member_list().await?;
                let from = answer.header().map_or(0, |h| h.member_id());
                if removed.contains(&from) {
                    return Err(OpError::Stale(format!(
                        "answered by member {from:x}, which was removed"
                    )));
                }
                let members = answer.members().iter().map(member_from).collect::<Vec<_>>();
                Ok((members, from))
            }
        };
        let (mut members, from) = self.run("member list", urls, deadline, &list).await?;
        // A member that has not applied a removal yet still lists the removed member; etcd
        // never reuses an ID, so one this process saw removed is gone for good.
        members.retain(|m| !removed.contains(&m.id));
        Ok((members, from))
    }

    /// The leader as the members say now: the first of `view.leader` and the other healthy
    /// members that answers `Status` with a leader. `view.leader` when none does.
    async fn leader_now(
        &self,
        view: &ClusterView,
        deadline: &Deadline,
    ) -> Result<Option<u64>, MembershipError> {
        let order = view.leader.into_iter().chain(
            view.healthy
                .iter()
                .copied()
                .filter(|id| Some(*id) != view.leader),
        );
        for id in order {
            let Some(member) = view.member(id) else {
                continue;
            };
            if let StatusAnswer::Answered(status) = self.status_of(member, deadline).await? {
                if status.leader != 0 {
                    return Ok(Some(status.leader));
                }
            }
        }
        Ok(view.leader)
    }

    fn membership_error(
        &self,
        operation: &'static str,
        error: CallError<Failure>,
    ) -> MembershipError {
        let failed = |detail: String| MembershipError::Failed { operation, detail };
        let (failure, attempts) = match error {
            CallError::CircuitOpen(open) => return MembershipError::CircuitOpen(open),
            CallError::DeadlineReached { .. } => {
                return failed(
                    "no answer before the invocation deadline; etcd may be overloaded or cut off from this function"
                        .to_string(),
                )
            }
            CallError::Permanent { source, .. } => (source, None),
            CallError::Exhausted {
                source, attempts, ..
            } => (source, Some(attempts)),
        };
        let tries = attempts.map_or(String::new(), |n| format!(" ({n} attempt(s))"));
        match failure {
            Failure::Unreachable { endpoints, detail } => MembershipError::Unreachable {
                endpoints,
                detail: format!("{detail}{tries}"),
            },
            Failure::Refused { detail } => MembershipError::Refused { detail },
            Failure::WritesRefused { detail } => MembershipError::WritesRefused { detail },
            Failure::NoLeader { detail } => MembershipError::NoLeader { detail },
            Failure::Locked { waited } => MembershipError::Locked {
                name: LOCK_NAME.to_string(),
                waited_ms: waited.as_millis(),
            },
            Failure::Busy { detail } => failed(format!(
                "{detail}{tries}; etcd answered but could not serve the request (electing a leader or overloaded): retry later"
            )),
            Failure::Rejected { detail } => failed(detail),
            Failure::Tls { detail } => {
                let hint = if self.tls_files.ca.is_some() {
                    "check that ETCD_CA_FILE is the CA that signed the etcd server certificates, that those certificates name the addresses used, and that ETCD_CERT_FILE/ETCD_KEY_FILE hold a client certificate that etcd's --trusted-ca-file trusts"
                } else {
                    "the endpoints use https and ETCD_CA_FILE is not set, so the system trust store is used (SSL_CERT_FILE / SSL_CERT_DIR): add the CA that signed etcd's server certificates there or set ETCD_CA_FILE (and ETCD_CERT_FILE/ETCD_KEY_FILE for client certificates), or set ETCD_CLIENT_SCHEME=http if etcd serves plain HTTP"
                };
                failed(format!("TLS failed with every endpoint: {detail}; {hint}"))
            }
            Failure::Unusable { detail } => failed(format!(
                "{detail}; check ETCD_ENDPOINTS and the client URLs the members advertise"
            )),
            Failure::OutOfTime => failed(
                "the invocation's time ran out before etcd could be asked (DEADLINE_RESERVE_MS is kept for the lifecycle action)"
                    .to_string(),
            ),
        }
    }
}

impl Membership for EtcdMembership {
    /// Takes etcd's lock [`LOCK_NAME`] on a fresh lease that lives no longer than the
    /// invocation. One lease for every try: a lock request whose answer was lost (cut off,
    /// or its endpoint died after the server took it) leaves a key on that lease, and etcd
    /// treats a second request on the same lease as the same acquisition, so the function never
    /// waits behind its own lost request. Each try first has the endpoint answer a quick request
    /// on the lease (granting it, or reading its time to live), so a hung endpoint is passed
    /// over by its request timeout and never eats the lock's wait. A lock not free within
    /// [`Deadline::lock_wait`] of a responsive endpoint is `Locked`; the lease is revoked then
    /// (and on any other failure), so this invocation's place in the lock's queue goes with it.
    async fn lock(
        &self,
        peers: &[Instance],
        deadline: &Deadline,
    ) -> Result<MembershipLock, MembershipError> {
        let urls = self.cluster_endpoints(peers)?;
        let ttl = deadline.lease_ttl_secs(Instant::now());
        if deadline.lock_wait(Instant::now()).is_zero() || ttl < 1 {
            return Err(MembershipError::Failed {
                operation: "take the membership lock",
                detail: "too little time left before the deadline to wait for the lock".into(),
            });
        }
        let lease: Arc<Mutex<Option<i64>>> = Arc::new(Mutex::new(None));
        let budget = *deadline;
        let take = |mut client: Client| {
            let lease = Arc::clone(&lease);
            async move {
                let granted = *lock(&lease);
                let id = match granted {
                    Some(id) => {
                        client.lease_time_to_live(id, None).await?;
                        id
                    }
                    None => {
                        let id = client.lease_grant(ttl, None).await?.id();
                        *lock(&lease) = Some(id);
                        id
                    }
                };
                let wait = budget.lock_wait(Instant::now());
                let options = LockOptions::new().with_lease(id);
                match tokio::time::timeout(wait, client.lock(LOCK_NAME, Some(options))).await {
                    Ok(Ok(answer)) => Ok((answer.key().to_vec(), id)),
                    Ok(Err(e)) => Err(e.into()),
                    Err(_) => Err(OpError::Locked(wait)),
                }
            }
        };
        let taken = self
            .retry_without_leader("take the membership lock", &urls, deadline, &take)
            .await;
        match taken {
            Ok((key, lease)) => {
                tracing::debug!(lease, ttl, "took the membership lock");
                Ok(MembershipLock {
                    key,
                    lease,
                    endpoints: urls,
                })
            }
            Err(e) => {
                let granted = *lock(&lease);
                if let Some(id) = granted {
                    self.revoke(id, &urls, deadline).await;
                }
                Err(e)
            }
        }
    }

    /// Revokes the lock's lease, which deletes the lock's key and wakes the next waiter. A
    /// failure is only logged: the lease expires with the invocation anyway.
    async fn unlock(&self, lock: MembershipLock, deadline: &Deadline) {
        // The endpoint the lock was taken through may be the member just removed.
        let urls = self.with_known(lock.endpoints);
        self.revoke(lock.lease, &urls, deadline).await;
    }

    /// The member list, then every started member's `Status` (asked concurrently at its own
    /// client URL), judged by [`health::judge`]. A list answered by another member than the
    /// leader is read again from the leader: a member that lags may not list a member added or
    /// removed a moment ago, and the quorum check and the proof that an instance has no member
    /// must count the members the cluster has committed.
    async fn cluster(
        &self,
        peers: &[Instance],
        deadline: &Deadline,
    ) -> Result<ClusterView, MembershipError> {
        let urls = self.cluster_endpoints(peers)?;
        let (mut members, mut from) = self.member_list(&urls, deadline).await?;
        self.remember_members(&members);
        let mut judgement = self.judged(&members, deadline).await?;
        // Read again from the leader only when it answered as the leader itself: a leader the
        // followers still name but that has stepped down or cannot be reached confirms nothing.
        let leader = judgement.leader.filter(|_| judgement.leader_answered);
        if let Some(leader) = leader.filter(|leader| *leader != from) {
            let leader_urls = members
                .iter()
                .find(|m| m.id == leader)
                .map(|m| m.client_urls.clone())
                .unwrap_or_default();
            match self.member_list(&leader_urls, deadline).await {
                Ok((listed, answered)) if answered == leader => {
                    if listed != members {
                        tracing::info!(from = %hex(from), leader = %hex(leader), "a lagging member's list differed from the leader's: using the leader's");
                        self.remember_members(&listed);
                        judgement = self.judged(&listed, deadline).await?;
                    }
                    members = listed;
                    from = answered;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(leader = %hex(leader), error = %e, "could not read the member list from the leader: the view is not confirmed")
                }
            }
        }
        Ok(ClusterView {
            confirmed_by_leader: judgement.leader_answered
                && judgement.leader.is_some_and(|leader| leader == from),
            members,
            healthy: judgement.healthy,
            not_healthy: judgement.not_healthy,
            leader: judgement.leader,
            alarms: judgement.alarms,
        })
    }

    /// Asks the current leader (read again from the members' status, `view.leader` if none
    /// answers) to hand leadership to `to`. `MoveLeader` returns once `to` leads. When the leader
    /// changed in between and answers "not leader", the new leader is asked once more.
    async fn move_leader(
        &self,
        view: &ClusterView,
        to: u64,
        deadline: &Deadline,
    ) -> Result<(), MembershipError> {
        let failed = |detail: String| MembershipError::Failed {
            operation: "move leader",
            detail,
        };
        if view.member(to).is_none_or(|m| m.is_learner) {
            return Err(failed(format!(
                "member {to:x} is not a voting member of the cluster; choose a healthy voting member"
            )));
        }
        let mut asked = Vec::new();
        loop {
            let Some(leader) = self.leader_now(view, deadline).await? else {
                return Err(failed(
                    "no member reports a leader; the cluster is electing one or has lost quorum: retry shortly"
                        .to_string(),
                ));
            };
            if leader == to {
                return Ok(());
            }
            let urls = view
                .member(leader)
                .map(|m| m.client_urls.clone())
                .unwrap_or_default();
            if urls.is_empty() {
                return Err(failed(format!(
                    "the leader {leader:x} advertises no client URL that this view knows; read the cluster again"
                )));
            }
            let op = move |mut client: Client| async move {
                client.move_leader(to).await?;
                Ok(())
            };
            asked.push(leader);
            match self.run("move leader", &urls, deadline, &op).await {
                Ok(()) => {
                    tracing::info!(from = %hex(leader), to = %hex(to), "moved etcd leadership");
                    return Ok(());
                }
                Err(MembershipError::Failed { detail, .. })
                    if detail.contains("not leader") && asked.len() < 2 => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes `member` with `MemberRemove`, sent to the leader as it is now: the members'
    /// status is read again first, so after [`move_leader`](Membership::move_leader) the removal
    /// reaches the new leader even with the `view` from before the move. Other members are asked
    /// if the leader does not answer, the member being removed last. "member not found" means
    /// it was removed before: `AlreadyGone`.
    async fn remove(
        &self,
        view: &ClusterView,
        member: u64,
        deadline: &Deadline,
    ) -> Result<Removal, MembershipError> {
        let op = move |mut client: Client| async move {
            match client.member_remove(member).await {
                Ok(_) => Ok(Removal::Removed),
                Err(e) if is_member_not_found(&e) => Ok(Removal::AlreadyGone),
                Err(e) => Err(e.into()),
            }
        };
        let removal = self
            .change("remove member", view, Some(member), deadline, op)
            .await?;
        self.remember_removed(member);
        tracing::info!(member = %hex(member), outcome = ?removal, "etcd member removal");
        Ok(removal)
    }

    /// Adds `peer_url` as a learner (`MemberAdd` with `is_learner`). etcd takes the member's
    /// name from the new node's own `--name` when it starts; until then the member list shows it
    /// with an empty name, so `name` is only for the logs. A member that already has this peer
    /// URL is returned as it is (a retried launch event adds nothing twice). etcd 3.4 allows one
    /// learner at a time: a second one is `Refused` until the first is promoted or removed.
    async fn add_learner(
        &self,
        view: &ClusterView,
        name: &str,
        peer_url: &str,
        deadline: &Deadline,
    ) -> Result<u64, MembershipError> {
        if let Some(existing) = view
            .members
            .iter()
            .find(|m| m.peer_urls.iter().any(|u| u == peer_url))
        {
            tracing::info!(member = %hex(existing.id), name, peer_url, "already a member; not added again");
            return Ok(existing.id);
        }
        let peer = peer_url.to_string();
        let op = |mut client: Client| {
            let peer = peer.clone();
            async move {
                let options = MemberAddOptions::new().with_is_learner();
                match client.member_add([peer.as_str()], Some(options)).await {
                    Ok(answer) => answer.member().map(|m| m.id()).ok_or_else(|| {
                        OpError::Odd("MemberAdd answered without the new member".into())
                    }),
                    Err(e) if is_already_added(&e) => {
                        // Added by an earlier try (whose answer may have been lost): find it.
                        let list = client.member_list().await?;
                        list.members()
                            .iter()
                            .find(|m| m.peer_urls().contains(&peer))
                            .map(|m| m.id())
                            .ok_or(OpError::Etcd(e))
                    }
                    Err(e) => Err(e.into()),
                }
            }
        };
        let id = self.change("add learner", view, None, deadline, op).await?;
        tracing::info!(member = %hex(id), name, peer_url, "added etcd learner");
        Ok(id)
    }

    /// Promotes the learner `member` to a voter (`MemberPromote`). etcd refuses until the
    /// learner has caught up with the leader: that is `NotReady`, not an error. A member that is
    /// already a voter counts as promoted.
    async fn promote(
        &self,
        view: &ClusterView,
        member: u64,
        deadline: &Deadline,
    ) -> Result<Promotion, MembershipError> {
        if view.member(member).is_some_and(|m| !m.is_learner) {
            return Ok(Promotion::Promoted);
        }
        let op = move |mut client: Client| async move {
            match client.member_promote(member).await {
                Ok(_) => Ok(Promotion::Promoted),
                Err(e) => {
                    let message = grpc_message(&e);
                    if message.contains("in sync with leader") {
                        Ok(Promotion::NotReady)
                    } else if message.contains("can only promote a learner member") {
                        Ok(Promotion::Promoted)
                    } else {
                        Err(e.into())
                    }
                }
            }
        };
        let promotion = self
            .change("promote learner", view, None, deadline, op)
            .await?;
        tracing::info!(member = %hex(member), outcome = ?promotion, "etcd learner promotion");
        Ok(promotion)
    }
}

/// Why a member's `Status` gave no answer to judge.
#[derive(Debug)]
enum Unanswered {
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
enum OpError {
    Etcd(etcd_client::Error),
    /// No answer in time.
    Silent(String),
    /// The answer came from a member that is no longer in the cluster.
    Stale(String),
    /// An answer that makes no sense (a missing field).
    Odd(String),
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
enum Miss {
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
    Final(Failure),
}

/// One failed attempt of a cluster-level call, as the resilience layer sees it.
#[derive(Debug)]
enum Failure {
    /// No endpoint answered. Transient: counted by the breaker.
    Unreachable { endpoints: String, detail: String },
    /// etcd answered with transient errors only. Transient.
    Busy { detail: String },
    /// The members that answered have no leader. An answer about the cluster (no quorum, or an
    /// election under way), not a failure of it as a dependency: not counted.
    NoLeader { detail: String },
    /// The strict reconfig check refused the change. An answer: not counted.
    Refused { detail: String },
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

impl Classify for Failure {
    fn class(&self) -> Class {
        match self {
            Failure::Unreachable { .. } | Failure::Busy { .. } => Class::Transient,
            _ => Class::Permanent,
        }
    }
}

/// Whether a strict reconfig refusal is waited out too, or reported at once.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refusals {
    Wait,
    Report,
}

/// When `result` is etcd's "not now" (no leader during a short election, or, with
/// `Refusals::Wait`, the strict reconfig check's "unhealthy cluster") and a pause still ends
/// before `until`: pauses and answers `true` (try again). Otherwise `false`: the result stands.
async fn paused_for_not_now<T>(
    operation: &'static str,
    result: &Result<T, MembershipError>,
    refusals: Refusals,
    until: Instant,
) -> bool {
    let not_now = match result {
        Err(MembershipError::NoLeader { detail }) => {
            Some(("etcd has no leader (an election)", detail))
        }
        Err(MembershipError::Refused { detail })
            if refusals == Refusals::Wait && detail.contains("unhealthy cluster") =>
        {
            Some(("etcd refused the change for now", detail))
        }
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
fn summarize(urls: &[String], misses: Vec<(String, Miss)>) -> Failure {
    if misses.is_empty() {
        return Failure::OutOfTime;
    }
    let detail = misses
        .iter()
        .map(|(url, miss)| match miss {
            Miss::Silent(d)
            | Miss::Tls(d)
            | Miss::Stale(d)
            | Miss::Busy(d)
            | Miss::NoLeader(d)
            | Miss::Unusable(d) => {
                format!("{url}: {d}")
            }
            Miss::Final(f) => format!("{url}: {f:?}"),
        })
        .collect::<Vec<_>>()
        .join("; ");
    let any = |pred: fn(&Miss) -> bool| misses.iter().any(|(_, m)| pred(m));
    if any(|m| matches!(m, Miss::Busy(_))) {
        Failure::Busy { detail }
    } else if any(|m| matches!(m, Miss::NoLeader(_))) {
        Failure::NoLeader { detail }
    } else if any(|m| matches!(m, Miss::Tls(_))) {
        Failure::Tls { detail }
    } else if any(|m| matches!(m, Miss::Silent(_) | Miss::Stale(_))) {
        Failure::Unreachable {
            endpoints: urls.join(","),
            detail,
        }
    } else {
        Failure::Unusable { detail }
    }
}

/// Sorts an etcd client error from `url` into "move on to the next endpoint" or "stop".
fn sort_error(url: &str, e: &etcd_client::Error) -> Miss {
    let detail = describe(e);
    if is_refusal(e) {
        return Miss::Final(Failure::Refused {
            detail: format!("{url} answered {detail}: {}", refusal_meaning(e)),
        });
    }
    if ["database space exceeded", "corrupt cluster"]
        .iter()
        .any(|m| grpc_message(e).contains(m))
    {
        return Miss::Final(Failure::WritesRefused {
            detail: format!("{url} answered {detail}"),
        });
    }
    if !answered_by_etcd(e) {
        return if looks_like_tls(&detail) {
            Miss::Tls(detail)
        } else {
            Miss::Silent(detail)
        };
    }
    if grpc_message(e).contains("no leader") {
        return Miss::NoLeader(detail);
    }
    match e.class() {
        Class::Transient => Miss::Busy(detail),
        Class::Permanent => Miss::Final(Failure::Rejected {
            detail: format!("{url} answered {detail}"),
        }),
    }
}

/// Whether etcd itself answered (as opposed to the connection failing on the way). etcd's own
/// errors carry the `etcdserver:` prefix; a transport failure surfaces as `Unavailable` or
/// `Unknown` without it.
fn answered_by_etcd(e: &etcd_client::Error) -> bool {
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
fn is_refusal(e: &etcd_client::Error) -> bool {
    let message = grpc_message(e);
    [
        "unhealthy cluster",
        "not enough started members",
        "too many learner members",
    ]
    .iter()
    .any(|m| message.contains(m))
}

fn refusal_meaning(e: &etcd_client::Error) -> &'static str {
    let message = grpc_message(e);
    if message.contains("too many learner members") {
        "etcd allows one learner at a time; promote the current learner (once it has caught up) or remove it, then retry"
    } else if message.contains("not enough started members") {
        "too few members have started for this change to keep quorum; retry once the new members run"
    } else {
        "etcd's strict reconfig check: the change would leave too few connected voting members, or a leader was elected in the last few seconds; retry later"
    }
}

fn is_member_not_found(e: &etcd_client::Error) -> bool {
    is_not_found(e) || grpc_message(e).contains("member not found")
}

/// etcd's NotFound: a member or a lease it no longer knows.
fn is_not_found(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(status) if status.code() == tonic::Code::NotFound)
}

/// etcd's answers to adding a peer URL that is already a member's. etcd derives a member's ID
/// from its peer URLs and the time in seconds, so a repeat within the same second collides on
/// the ID instead of the URL.
fn is_already_added(e: &etcd_client::Error) -> bool {
    let message = grpc_message(e);
    message.contains("Peer URLs already exists") || message.contains("member ID already exist")
}

/// The gRPC status message, or "" for errors that are not a status.
fn grpc_message(e: &etcd_client::Error) -> &str {
    match e {
        etcd_client::Error::GRpcStatus(status) => status.message(),
        _ => "",
    }
}

fn looks_like_tls(detail: &str) -> bool {
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
fn describe(e: &etcd_client::Error) -> String {
    let (mut text, mut source): (String, Option<&(dyn std::error::Error + 'static)>) = match e {
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
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Client URLs to send a membership change to, best first: the leader, the leader of the view,
/// the other healthy members, the remaining members, and `last` at the very end.
fn targets(view: &ClusterView, leader: Option<u64>, last: Option<u64>) -> Vec<String> {
    let not_last = |id: &u64| Some(*id) != last;
    let ids = leader
        .into_iter()
        .chain(view.leader)
        .chain(view.healthy.iter().copied())
        .filter(not_last)
        .chain(view.members.iter().map(|m| m.id).filter(not_last))
        .chain(last);
    let mut urls: Vec<String> = Vec::new();
    for id in ids {
        for url in view
            .member(id)
            .map(|m| m.client_urls.as_slice())
            .unwrap_or_default()
        {
            if !urls.contains(url) {
                urls.push(url.clone());
            }
        }
    }
    urls
}

fn member_from(m: &etcd_client::Member) -> Member {
    Member {
        id: m.id(),
        name: m.name().to_string(),
        peer_urls: m.peer_urls().to_vec(),
        client_urls: m.client_urls().to_vec(),
        is_learner: m.is_learner(),
    }
}

/// Member IDs in hex, as `etcdctl` shows them.
fn hex(id: u64) -> String {
    format!("{id:x}")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent even if a holder panicked.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The TLS configuration for `https` endpoints. The files are read once and checked to form a
/// usable client configuration; without `ETCD_CA_FILE` the system trust store is used, which
/// honours `SSL_CERT_FILE` and `SSL_CERT_DIR`: how a Lambda adds a private CA without a layer.
fn load_tls(files: &TlsFiles) -> Result<TlsOptions, TlsSetupError> {
    let mut tls = match &files.ca {
        Some(ca_path) => {
            let ca = read_pem("ETCD_CA_FILE", ca_path, "CERTIFICATE")?;
            TlsOptions::new().ca_certificate(Certificate::from_pem(ca))
        }
        None => TlsOptions::new().with_native_roots(),
    };
    if !files.enabled() {
        // Nothing the operator gave can be wrong; the system store is read when first dialled.
        return Ok(tls);
    }
    match (&files.cert, &files.key) {
        (Some(cert_path), Some(key_path)) => {
            let cert = read_pem("ETCD_CERT_FILE", cert_path, "CERTIFICATE")?;
            let key = read_pem("ETCD_KEY_FILE", key_path, "PRIVATE KEY")?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        (None, None) => {}
        (Some(_), None) | (None, Some(_)) => {
            return Err(TlsSetupError::Unusable {
                files: tls_file_list(files),
                detail: "ETCD_CERT_FILE and ETCD_KEY_FILE must be set together".to_string(),
            })
        }
    }
    // Build a connector once (no connection is made) so that a certificate or key rustls cannot
    // use stops start-up instead of failing every call.
    tonic::transport::Endpoint::from_static("https://127.0.0.1:2379")
        .tls_config(tls.clone())
        .map_err(|e| TlsSetupError::Unusable {
            files: tls_file_list(files),
            detail: error_chain(&e),
        })?;
    Ok(tls)
}

fn read_pem(
    variable: &'static str,
    path: &Path,
    expected: &'static str,
) -> Result<Vec<u8>, TlsSetupError> {
    let bytes = std::fs::read(path).map_err(|source| TlsSetupError::Unreadable {
        variable,
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    if !(text.contains("-----BEGIN ") && text.contains(&format!("{expected}-----"))) {
        return Err(TlsSetupError::NotPem {
            variable,
            path: path.to_path_buf(),
            expected,
        });
    }
    Ok(bytes)
}

fn tls_file_list(files: &TlsFiles) -> String {
    [
        ("ETCD_CA_FILE", &files.ca),
        ("ETCD_CERT_FILE", &files.cert),
        ("ETCD_KEY_FILE", &files.key),
    ]
    .iter()
    .filter_map(|(name, path)| path.as_ref().map(|p| format!("{name}={}", p.display())))
    .collect::<Vec<_>>()
    .join(", ")
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests;

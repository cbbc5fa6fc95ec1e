//! Endpoint failover: which URLs to ask, in what order, and one cluster-level call as one pass
//! over them through the resilience layer (only "no endpoint answered" counts against etcd).

use super::*;

impl EtcdMembership {
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

    /// The last known leader's client URLs, then [`endpoints_for`](Self::endpoints_for), then
    /// the client URLs the members advertised last time; `Unreachable` when there are none.
    pub(super) fn cluster_endpoints(
        &self,
        peers: &[Instance],
    ) -> Result<Vec<String>, MembershipError> {
        let urls = self.leader_first(self.with_known(self.endpoints_for(peers)));
        if urls.is_empty() {
            return Err(MembershipError::Unreachable {
                endpoints: "none".to_string(),
                detail: "ETCD_ENDPOINTS is empty and no running instance of the group has a private IP to build endpoints from".to_string(),
            });
        }
        Ok(urls)
    }

    /// `urls`, then the members' advertised client URLs not among them.
    pub(super) fn with_known(&self, mut urls: Vec<String>) -> Vec<String> {
        for (_, url) in lock(&self.known).iter() {
            if !urls.contains(url) {
                urls.push(url.clone());
            }
        }
        urls
    }

    /// `urls` with the last known leader's advertised client URLs first.
    fn leader_first(&self, mut urls: Vec<String>) -> Vec<String> {
        let Some(leader) = *lock(&self.leader) else {
            return urls;
        };
        let first: Vec<String> = lock(&self.known)
            .iter()
            .filter(|(id, _)| *id == leader)
            .map(|(_, url)| url.clone())
            .collect();
        urls.retain(|url| !first.contains(url));
        first.into_iter().chain(urls).collect()
    }

    pub(super) fn remember_leader(&self, leader: Option<u64>) {
        *lock(&self.leader) = leader;
    }

    pub(super) fn remember_members(&self, members: &[Member]) {
        *lock(&self.known) = members
            .iter()
            .flat_map(|m| m.client_urls.iter().map(|u| (m.id, u.clone())))
            .collect();
    }

    pub(super) fn remember_removed(&self, member: u64) {
        lock(&self.known).retain(|(id, _)| *id != member);
        let mut removed = lock(&self.removed);
        if !removed.contains(&member) {
            removed.push_back(member);
        }
        while removed.len() > REMEMBERED_REMOVALS {
            removed.pop_front();
        }
    }

    pub(super) fn removed_members(&self) -> Vec<u64> {
        lock(&self.removed).iter().copied().collect()
    }

    /// `urls` with the ones that were silent last time moved to the end, order kept otherwise.
    pub(super) fn ordered(&self, urls: &[String]) -> Vec<String> {
        let silent = lock(&self.silent);
        let (quiet, answering): (Vec<&String>, Vec<&String>) =
            urls.iter().partition(|u| silent.contains(*u));
        answering.into_iter().chain(quiet).cloned().collect()
    }

    pub(super) fn note_answer(&self, url: &str, answered: bool) {
        let mut silent = lock(&self.silent);
        if answered {
            silent.remove(url);
        } else {
            silent.insert(url.to_string());
        }
    }

    /// This invocation's client for `url`: made on first use and kept until the invocation ends,
    /// so each member asked costs one connection (one TLS handshake) however many requests go to
    /// it: the member list, its status (asked twice when it leads), the lock and the change. A
    /// call through it that gets no usable answer (silence, a TLS failure, "try again", a removed
    /// member's stale answer) drops it, so a retry dials afresh. A client from an earlier
    /// invocation is never reused: its member may be gone, and the connection may not have
    /// survived the freeze between invocations. The connection itself is opened by the first
    /// request (etcd-client's channel is lazy); the callers bound every request by the deadline.
    pub(super) async fn connect(
        &self,
        url: &str,
        deadline: &Deadline,
    ) -> Result<Client, etcd_client::Error> {
        if let Some(client) = lock(&self.clients).of(deadline).get(url) {
            return Ok(client.clone());
        }
        // A member without a leader answers "no leader" at once instead of letting a write wait
        // for a quorum that is not there (and its Status then says it is not serving).
        let mut options = ConnectOptions::new()
            .with_connect_timeout(DIAL_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_require_leader(true);
        if url.starts_with("https://") {
            options = options.with_tls(self.tls.clone());
        }
        let client = Client::connect([url], Some(options)).await?;
        let mut clients = lock(&self.clients);
        clients.of(deadline).insert(url.to_string(), client.clone());
        clients.made += 1;
        Ok(client)
    }

    /// Drops the client for `url` after a call through it got no usable answer: the next call
    /// dials again rather than wait on a connection that may be dead.
    pub(super) fn forget_client(&self, url: &str) {
        lock(&self.clients).by_url.remove(url);
    }

    /// Closes this invocation's connections. Called when the invocation has answered, so no
    /// socket is left open while the execution environment is frozen.
    pub fn release_connections(&self) {
        *lock(&self.clients) = Clients::default();
    }

    /// This invocation's clients: how many were made, how many are still held.
    pub fn connections(&self) -> Connections {
        let clients = lock(&self.clients);
        Connections {
            made: clients.made,
            open: clients.by_url.len(),
        }
    }

    /// One attempt of a cluster-level call: `op` on each of `urls` in turn until one answers.
    /// Endpoints that do not answer, or answer with a transient error, make it move on; an
    /// answer that ends the call (success, or an error retrying cannot fix) stops it.
    pub(super) async fn first_answer<T, F, Fut>(
        &self,
        urls: &[String],
        deadline: &Deadline,
        op: &F,
    ) -> Result<T, PassFailure>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, OpError>>,
    {
        let mut misses: Vec<(String, EndpointMiss)> = Vec::new();
        for url in self.ordered(urls) {
            let left = deadline
                .work_until()
                .saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let client = match self.connect(&url, deadline).await {
                Ok(client) => client,
                Err(e) => {
                    misses.push((url, EndpointMiss::Unusable(describe(&e))));
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
                Err(e) => miss_of(&url, e),
            };
            let silent = matches!(miss, EndpointMiss::Silent(_) | EndpointMiss::Tls(_));
            self.note_answer(&url, !silent);
            // A retry starts from a fresh connection, not one that just failed a call: etcd's
            // "try again" answers are rare, so this costs a handshake only then.
            if silent || matches!(miss, EndpointMiss::Busy(_) | EndpointMiss::Stale(_)) {
                self.forget_client(&url);
            }
            tracing::debug!(endpoint = %url, miss = ?miss, "etcd endpoint gave no usable answer");
            match miss {
                EndpointMiss::Final(failure) => return Err(failure),
                miss => misses.push((url, miss)),
            }
        }
        Err(summarize(urls, misses))
    }

    /// A cluster-level call through the breaker: one attempt is one pass over `urls`.
    pub(super) async fn run<T, F, Fut>(
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
        self.attempt(urls, deadline, op)
            .await
            .map_err(|e| self.membership_error(operation, e))
    }

    /// [`run`](Self::run) before its failure is turned into the caller's error: what etcd
    /// answered, as sorted where it arrived.
    async fn attempt<T, F, Fut>(
        &self,
        urls: &[String],
        deadline: &Deadline,
        op: &F,
    ) -> Result<T, CallError<PassFailure>>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, OpError>>,
    {
        self.resilience
            .call(Dependency::Etcd, deadline, || {
                self.first_answer(urls, deadline, op)
            })
            .await
    }

    /// A membership change, sent to the current leader first (then the other members), tried
    /// again for up to [`REFUSAL_WAIT`](crate::resilience::policy::REFUSAL_WAIT) while etcd
    /// refuses it as "unhealthy cluster". `last` is the member to ask only when no other answers
    /// (the one being removed).
    pub(super) async fn change<T, F, Fut>(
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
            let result = self.attempt(&urls, deadline, &op).await;
            if !paused_for_not_now(operation, &result, Refusals::Wait, wait_until).await {
                return result.map_err(|e| self.membership_error(operation, e));
            }
        }
    }

    /// A cluster-level call that waits out a short election ("no leader") like a refused
    /// change, then reports it.
    pub(super) async fn retry_without_leader<T, F, Fut>(
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
            let result = self.attempt(urls, deadline, op).await;
            if !paused_for_not_now(operation, &result, Refusals::Report, wait_until).await {
                return result.map_err(|e| self.membership_error(operation, e));
            }
        }
    }
}

/// How one endpoint's failed answer counts in a pass.
fn miss_of(url: &str, e: OpError) -> EndpointMiss {
    match e {
        OpError::Silent(detail) => EndpointMiss::Silent(detail),
        OpError::Stale(detail) => EndpointMiss::Stale(detail),
        OpError::Malformed(detail) => EndpointMiss::Final(PassFailure::Rejected {
            detail: format!("{url} answered: {detail}"),
        }),
        OpError::Locked(waited) => EndpointMiss::Final(PassFailure::Locked { waited }),
        OpError::Etcd(e) => sort_error(url, &e),
    }
}

/// The clients of one invocation, by member URL; `invocation` is that invocation's deadline.
#[derive(Default)]
pub(super) struct Clients {
    invocation: Option<Instant>,
    by_url: HashMap<String, Client>,
    made: usize,
}

impl Clients {
    /// The clients of the invocation `deadline` belongs to: those of an earlier one are dropped.
    fn of(&mut self, deadline: &Deadline) -> &mut HashMap<String, Client> {
        if self.invocation != Some(deadline.at) {
            *self = Clients {
                invocation: Some(deadline.at),
                ..Clients::default()
            };
        }
        &mut self.by_url
    }
}

/// How many etcd clients (each one connection, one TLS handshake under https) an invocation
/// made, and how many it still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connections {
    pub made: usize,
    pub open: usize,
}

/// Client URLs to send a membership change to, best first: the leader, the leader of the view,
/// the other healthy members, the remaining members, and `last` at the very end.
pub(super) fn targets(view: &ClusterView, leader: Option<u64>, last: Option<u64>) -> Vec<String> {
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

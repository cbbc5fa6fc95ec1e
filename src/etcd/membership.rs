//! The real `Membership`: the lock, the cluster view (member list confirmed by the leader,
//! every member's `Status` judged by `health::judge`), leader moves and membership changes.

use super::*;

impl EtcdMembership {
    /// Revokes `lease` (and with it the lock key on it, which wakes the next waiter). Best
    /// effort: the lease expires with the invocation anyway.
    pub(super) async fn revoke(&self, lease: i64, urls: &[String], deadline: &Deadline) {
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
    pub(super) async fn status_of(
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
                match self.status_at(url, member.id, left, deadline).await {
                    Ok(answer) => return Ok(answer),
                    Err(unanswered) => last = unanswered,
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

    /// The `Status` answered at one of `member`'s client URLs, within `left` (at most
    /// [`STATUS_TIMEOUT`]). An answer from another member than the one asked (an address reused
    /// by a newer member) is no answer from it.
    async fn status_at(
        &self,
        url: &str,
        member: u64,
        left: Duration,
        deadline: &Deadline,
    ) -> Result<StatusAnswer, Unanswered> {
        let limit = STATUS_TIMEOUT.min(left);
        let mut client = self
            .connect(url, deadline)
            .await
            .map_err(|e| Unanswered::Silent(format!("{url}: {}", describe(&e))))?;
        let answer = tokio::time::timeout(limit, client.status()).await;
        if !matches!(answer, Ok(Ok(_))) {
            self.forget_client(url);
        }
        match answer {
            Ok(Ok(status)) => {
                let own = status.header().map_or(0, |h| h.member_id());
                if own != 0 && own != member {
                    return Err(Unanswered::Silent(format!(
                        "{url} is member {own:x}, not {member:x}"
                    )));
                }
                Ok(StatusAnswer::Answered(StatusReport {
                    leader: status.leader(),
                    raft_term: status.raft_term(),
                    raft_index: status.raft_index(),
                    errors: status.errors().to_vec(),
                }))
            }
            Ok(Err(e)) if matches!(sort_error(url, &e), EndpointMiss::NoLeader(_)) => {
                Ok(StatusAnswer::NoLeader)
            }
            Ok(Err(e)) => Err(Unanswered::Silent(format!("{url}: {}", describe(&e)))),
            // Cut short by the deadline, not by the member: not taken for a dead member.
            Err(_) if limit < STATUS_TIMEOUT => Err(Unanswered::NotInTime),
            Err(_) => Err(Unanswered::Silent(format!(
                "{url}: no answer within {} ms",
                limit.as_millis()
            ))),
        }
    }

    /// Every member's `Status`, asked concurrently, judged together.
    pub(super) async fn judged(
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
    pub(super) async fn member_list(
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
    pub(super) async fn leader_now(
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

    pub(super) fn membership_error(
        &self,
        operation: &'static str,
        error: CallError<PassFailure>,
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
            PassFailure::Unreachable { endpoints, detail } => MembershipError::Unreachable {
                endpoints,
                detail: format!("{detail}{tries}"),
            },
            PassFailure::Refused { detail, .. } => MembershipError::Refused { detail },
            PassFailure::WritesRefused { detail } => MembershipError::WritesRefused { detail },
            PassFailure::NoLeader { detail } => MembershipError::NoLeader { detail },
            PassFailure::Locked { waited } => MembershipError::Locked {
                name: LOCK_NAME.to_string(),
                waited_ms: waited.as_millis(),
            },
            PassFailure::Busy { detail } => failed(format!(
                "{detail}{tries}; etcd answered but could not serve the request (electing a leader or overloaded): retry later"
            )),
            PassFailure::Rejected { detail } => failed(detail),
            PassFailure::Tls { detail } => {
                let hint = if self.tls_files.ca.is_some() {
                    "check that ETCD_CA_FILE is the CA that signed the etcd server certificates, that those certificates name the addresses used, and that ETCD_CERT_FILE/ETCD_KEY_FILE hold a client certificate that etcd's --trusted-ca-file trusts"
                } else {
                    "the endpoints use https and ETCD_CA_FILE is not set, so the system trust store is used (SSL_CERT_FILE / SSL_CERT_DIR): add the CA that signed etcd's server certificates there or set ETCD_CA_FILE (and ETCD_CERT_FILE/ETCD_KEY_FILE for client certificates), or set ETCD_CLIENT_SCHEME=http if etcd serves plain HTTP"
                };
                failed(format!("TLS failed with every endpoint: {detail}; {hint}"))
            }
            PassFailure::Unusable { detail } => failed(format!(
                "{detail}; check ETCD_ENDPOINTS and the client URLs the members advertise"
            )),
            PassFailure::OutOfTime => failed(
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
        let confirmed =
            judgement.leader_answered && judgement.leader.is_some_and(|leader| leader == from);
        self.remember_leader(judgement.leader.filter(|_| judgement.leader_answered));
        Ok(ClusterView {
            confirmed_by_leader: confirmed,
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
            // `Ok(false)`: the member asked no longer leads (it changed in between).
            let op = move |mut client: Client| async move {
                match client.move_leader(to).await {
                    Ok(_) => Ok(true),
                    Err(e) if is_not_leader(&e) => Ok(false),
                    Err(e) => Err(e.into()),
                }
            };
            asked.push(leader);
            match self.run("move leader", &urls, deadline, &op).await {
                Ok(true) => {
                    tracing::info!(from = %hex(leader), to = %hex(to), "moved etcd leadership");
                    return Ok(());
                }
                Ok(false) if asked.len() < 2 => {}
                Ok(false) => {
                    return Err(failed(format!(
                        "asked {} in turn, none of them still led; leadership is changing: retry shortly",
                        asked.iter().map(|id| hex(*id)).collect::<Vec<_>>().join(", ")
                    )))
                }
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
                        OpError::Malformed("MemberAdd answered without the new member".into())
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

//! Terminate: find the instance's member, check quorum and the voter floor, move leadership
//! away, remove the member, then decide to complete. Held when unsafe; a confirmed Spot
//! interruption, which no hold can stop, is tried again within its notice and then let go.

use tokio::time::Instant;

use super::outcome::{Cause, Outcome};
use super::{
    display_name, removal_forbidden, Handler, HandlerError, RemovalOutcome, Target, Waiting,
    ACTION_OVER,
};
use crate::membership::{
    absence_proven, find_member, identities_to_look_up, quorum_beside_departures, Absence,
};
use crate::model::{ClusterView, Fleet, Instance, Lifecycle, Member, Membership, MembershipError};
use crate::resilience::policy::{Deadline, SPOT_NOTICE, SPOT_RETRY_PAUSE};
use crate::resilience::Dependency;

/// What the terminate decided under the membership lock, with the notes that explain it.
enum Decision {
    /// Nothing is left to hold for: removed now, removed before, or no member at all.
    Done {
        note: String,
        removed: bool,
        leader_moved: bool,
    },
    /// Not safe now (or not decidable: the lock or the view could not be had).
    Unsafe(Cause),
    /// The lifecycle action was found over just before the removal: nothing is owed to it.
    Over,
    /// Auto Scaling could not say whether the action still waits: nothing was changed.
    Failed(HandlerError),
}

impl<F: Fleet, L: Lifecycle, M: Membership> Handler<F, L, M> {
    pub(super) async fn terminate(&self, target: &Target<'_>) -> Outcome {
        let instances = match self
            .start_flow(
                target,
                &[Dependency::Autoscaling, Dependency::Ec2, Dependency::Etcd],
                "change membership",
            )
            .await
        {
            Ok(instances) => instances,
            Err(outcome) => return outcome,
        };
        let instance = match self.terminating_instance(target, &instances).await {
            Ok(instance) => instance,
            Err(reason) => {
                let reason = format!("cannot look up the terminating instance: {reason}");
                return Outcome::hold(Cause::other(reason));
            }
        };
        let interrupted = self.spot_interruption(&instance, target.deadline).await;
        self.removal_outcome(target, &instances, &instance, interrupted)
            .await
    }

    /// The removal decided under the lock, as the terminate's outcome. A confirmed interruption
    /// takes the machine in two minutes whatever is decided: its member kept, a cluster at the
    /// voter floor loses quorum then (two voters, one gone); removed, it keeps a quorum of the
    /// voters left. So the floor does not hold it back; quorum still does, and the last voter is
    /// never removed.
    async fn removal_outcome(
        &self,
        target: &Target<'_>,
        instances: &[Instance],
        instance: &Instance,
        interrupted: Option<String>,
    ) -> Outcome {
        let started = Instant::now();
        loop {
            let (mut notes, decision) = self
                .decide_removal(target, instances, instance, interrupted.is_some())
                .await;
            let (removed, leader_moved) = match decision {
                Decision::Over => {
                    notes.push(ACTION_OVER.to_string());
                    return Outcome::skip(notes.join("; "));
                }
                Decision::Failed(error) => return Outcome::Fail(error),
                Decision::Done {
                    note,
                    removed,
                    leader_moved,
                } => {
                    notes.push(note);
                    (removed, leader_moved)
                }
                Decision::Unsafe(cause) => {
                    let Some(interruption) = &interrupted else {
                        return Outcome::hold(cause);
                    };
                    // No hold can keep an interrupted Spot instance: try again while its
                    // notice runs, then let it go with its member kept (never knowingly
                    // breaking quorum); the stale-member cleanup removes the member once its
                    // machine is gone and the removal is safe.
                    let next = Instant::now() + SPOT_RETRY_PAUSE;
                    if next < started + SPOT_NOTICE && next < target.deadline.work_until() {
                        tracing::warn!(instance_id = %target.instance_id, reason = %cause.text, "spot interruption: removal not safe yet, trying again");
                        tokio::time::sleep(SPOT_RETRY_PAUSE).await;
                        continue;
                    }
                    notes.push(format!(
                        "{interruption}: it cannot be held; member kept: {}; the stale-member cleanup removes it once its machine is gone and that is safe",
                        cause.text
                    ));
                    (false, false)
                }
            };
            return Outcome::Complete {
                detail: notes.join("; "),
                removed: u64::from(removed),
                leader_moved,
            };
        }
    }

    /// The terminating instance: from the group's listing, or else by ID in any state (a
    /// stopped instance being replaced, one whose group tag is gone). EC2 no longer knowing it
    /// leaves its ID only: its member is then found by name.
    async fn terminating_instance(
        &self,
        target: &Target<'_>,
        instances: &[Instance],
    ) -> Result<Instance, String> {
        if let Some(found) = instances.iter().find(|i| i.id == target.instance_id) {
            return Ok(found.clone());
        }
        match self
            .fleet
            .instance(&target.instance_id, target.deadline)
            .await
        {
            Ok(Some(found)) => Ok(found),
            Ok(None) => Ok(Instance {
                other_ips: Vec::new(),
                id: target.instance_id.clone(),
                private_ip: None,
                private_dns: None,
                state: String::new(),
                spot: false,
                spot_request_id: None,
            }),
            Err(e) => Err(Cause::from(&e).text),
        }
    }

    /// `Some(what was seen)` when `instance` is a Spot instance being interrupted: its request
    /// is `marked-for-termination`, or it is already shutting down. A Spot instance scaled in,
    /// refreshed or rebalanced is not: it is held like any other. When EC2 cannot tell, it is
    /// not confirmed, and the terminating instance is held like any other.
    async fn spot_interruption(&self, instance: &Instance, deadline: &Deadline) -> Option<String> {
        self.spot_notice(instance, deadline)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(instance_id = %instance.id, error = %e, "cannot read the spot request's status: not treated as an interruption");
                None
            })
    }

    /// What EC2 shows of `instance`'s Spot interruption: confirmed (`Some`), none (`None`: not
    /// a Spot instance, no request, a request EC2 no longer knows, or any other status), or
    /// `Err` when EC2 could not be asked.
    async fn spot_notice(
        &self,
        instance: &Instance,
        deadline: &Deadline,
    ) -> Result<Option<String>, String> {
        if !instance.spot {
            return Ok(None);
        }
        if matches!(instance.state.as_str(), "shutting-down" | "terminated") {
            return Ok(Some(format!(
                "spot instance already {} (interrupted)",
                instance.state
            )));
        }
        let Some(request) = instance.spot_request_id.as_deref() else {
            return Ok(None);
        };
        match self.fleet.spot_status(request, deadline).await {
            Ok(Some(status)) if status.code == "marked-for-termination" => Ok(Some(format!(
                "spot interruption confirmed (request {request} is marked-for-termination)"
            ))),
            Ok(_) => Ok(None),
            Err(e) => Err(Cause::from(&e).text),
        }
    }

    /// "; alarms: NOSPACE on etcd-2 (8e9e05c52164694d)" from a fresh read of the cluster, so a
    /// hold under an alarm names the member to compact and defragment.
    async fn alarms_named(&self, instances: &[Instance], deadline: &Deadline) -> String {
        match self.membership.cluster(instances, deadline).await {
            Ok(view) if !view.alarms.is_empty() => {
                let named: Vec<String> = view
                    .alarms
                    .iter()
                    .map(|a| match view.member(a.member) {
                        Some(m) => format!("{} on {} ({:x})", a.kind, display_name(m), a.member),
                        None => format!("{} on {:x}", a.kind, a.member),
                    })
                    .collect();
                format!("; alarms: {}", named.join(", "))
            }
            Ok(_) => String::new(),
            Err(e) => format!("; the alarms could not be read: {e}"),
        }
    }

    /// "No member" completes the terminate only when proven (see [`absence_proven`]): voters
    /// no instance of the groups accounts for are looked up in EC2 (any group or none) first;
    /// what is still unaccounted for is held, named.
    async fn absence_decision(
        &self,
        view: &ClusterView,
        instance: &Instance,
        instances: &[Instance],
        deadline: &Deadline,
    ) -> Decision {
        let unaccounted = match absence_proven(view, instance, instances) {
            Ok(()) => return absent(),
            Err(Absence::Unconfirmed) => return unconfirmed(),
            Err(Absence::Unaccounted(members)) => members,
        };
        let (ids, ips) = identities_to_look_up(&unaccounted);
        let mut known = instances.to_vec();
        match self.fleet.existing_instances(&ids, &ips, deadline).await {
            Ok(found) => known.extend(found),
            Err(e) => {
                return Decision::Unsafe(Cause::from(&e).prefixed(
                    "no member matches this instance, and EC2 could not be asked which instances carry the unmatched voters",
                ));
            }
        }
        match absence_proven(view, instance, &known) {
            Ok(()) => absent(),
            Err(Absence::Unconfirmed) => unconfirmed(),
            Err(Absence::Unaccounted(members)) => Decision::Unsafe(Cause::other(format!(
                    "no member matches this instance, but voting member(s) {} match no other instance and may be this one's (a name that says nothing of its machine, at an address no other instance has): name members by instance ID or private DNS name, or advertise the instances' private addresses",
                    members
                        .iter()
                        .map(|m| format!("{} ({:x}, {})", display_name(m), m.id, m.peer_urls.join(",")))
                        .collect::<Vec<_>>()
                        .join("; ")
                ))),
        }
    }

    /// Under the membership lock: read the view, promote caught-up learners (so a refresh does
    /// not count them out), find the member and try its removal. An `interrupted` instance's
    /// member goes under quorum alone (see [`Self::removal_outcome`]); any other's must also
    /// leave enough voters beside the peers a confirmed Spot interruption is taking.
    async fn decide_removal(
        &self,
        target: &Target<'_>,
        instances: &[Instance],
        instance: &Instance,
        interrupted: bool,
    ) -> (Vec<String>, Decision) {
        let deadline = target.deadline;
        let lock = match self.membership.lock(instances, deadline).await {
            Ok(lock) => lock,
            Err(e) => {
                let mut cause = Cause::from(&e).prefixed("cannot take the membership lock");
                if let MembershipError::WritesRefused { .. } = e {
                    cause
                        .text
                        .push_str(&self.alarms_named(instances, deadline).await);
                }
                return (Vec::new(), Decision::Unsafe(cause));
            }
        };
        let decided = match self.view_with_promotions(instances, deadline).await {
            Err(e) => (
                Vec::new(),
                unsafe_because("cannot read etcd membership to check quorum", &e),
            ),
            Ok((view, notes)) => match find_member(&view, instance) {
                None => (
                    notes,
                    self.absence_decision(&view, instance, instances, deadline)
                        .await,
                ),
                Some(member) => (
                    notes,
                    self.member_decision(target, &view, member, instances, interrupted)
                        .await,
                ),
            },
        };
        self.membership.unlock(lock, deadline).await;
        decided
    }
}

impl<F: Fleet, L: Lifecycle, M: Membership> Handler<F, L, M> {
    /// The removal of the instance's member, tried once nothing forbids it (quorum, the floor,
    /// the peers a Spot interruption is taking) and Auto Scaling confirms the action still
    /// waits: the checks come first so a hold costs no extra call.
    async fn member_decision(
        &self,
        target: &Target<'_>,
        view: &ClusterView,
        member: &Member,
        instances: &[Instance],
        interrupted: bool,
    ) -> Decision {
        let deadline = target.deadline;
        let min_voters = if interrupted {
            1
        } else {
            self.config.etcd_min_voters
        };
        if let Some(cause) = removal_forbidden(view, member, min_voters) {
            return Decision::Unsafe(cause);
        }
        if !interrupted {
            let beside = self.held_beside_interruptions(view, member, instances, deadline);
            if let Some(cause) = beside.await {
                return Decision::Unsafe(cause);
            }
        }
        match self.still_waiting(target).await {
            Ok(Waiting::Yes) => {}
            Ok(Waiting::Over) => return Decision::Over,
            Err(error) => return Decision::Failed(error),
        }
        let outcome = self.remove_member(view, member, min_voters, deadline).await;
        decision_from(member, outcome)
    }

    /// Why a plain removal of `member`, which nothing else forbids, must wait for peers under a
    /// confirmed Spot interruption: their machines go within two minutes whatever is decided, so
    /// the voters left without them must still hold quorum and the floor (see
    /// [`quorum_beside_departures`]). EC2 is asked only when the answer could matter: some other
    /// Spot instance carries a voter, and counting every such voter out would forbid the
    /// removal. A peer whose Spot status EC2 cannot give then counts as leaving: the removal
    /// waits for an answer rather than guess.
    async fn held_beside_interruptions(
        &self,
        view: &ClusterView,
        member: &Member,
        instances: &[Instance],
        deadline: &Deadline,
    ) -> Option<Cause> {
        let min_voters = self.config.etcd_min_voters;
        let spot_voters: Vec<(&Instance, &Member)> = instances
            .iter()
            .filter(|i| i.spot)
            .filter_map(|i| Some((i, find_member(view, i)?)))
            .filter(|(_, m)| !m.is_learner && m.id != member.id)
            .collect();
        let all: Vec<u64> = spot_voters.iter().map(|(_, m)| m.id).collect();
        if quorum_beside_departures(view, member.id, min_voters, &all).is_safe() {
            return None;
        }
        let (mut confirmed, mut unknown) = (Vec::new(), Vec::new());
        for (peer, voter) in spot_voters {
            match self.spot_notice(peer, deadline).await {
                Ok(Some(what)) => confirmed.push((voter.id, format!("{} ({what})", peer.id))),
                Ok(None) => {}
                Err(why) => unknown.push((voter.id, format!("{} ({why})", peer.id))),
            }
        }
        let ids = |peers: &[(u64, String)]| peers.iter().map(|(id, _)| *id).collect::<Vec<_>>();
        let names = |peers: &[(u64, String)]| {
            peers
                .iter()
                .map(|(_, n)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let removing = format!("removing member {} ({:x})", display_name(member), member.id);
        let verdict = quorum_beside_departures(view, member.id, min_voters, &ids(&confirmed));
        if !verdict.is_safe() {
            return Some(Cause::quorum(format!(
                "{removing} is not safe beside the peer(s) a confirmed Spot interruption is taking, {}: {}",
                names(&confirmed),
                verdict.reason()
            )));
        }
        let worst = [ids(&confirmed), ids(&unknown)].concat();
        let verdict = quorum_beside_departures(view, member.id, min_voters, &worst);
        if verdict.is_safe() {
            return None;
        }
        Some(Cause::other(format!(
            "{removing} waits: EC2 could not say whether Spot peer(s) {} are being interrupted, and if they are: {}",
            names(&unknown),
            verdict.reason()
        )))
    }
}

fn absent() -> Decision {
    done("no etcd member for this instance (every voter of the leader's member list is another machine's): already removed, or never joined")
}

fn unconfirmed() -> Decision {
    Decision::Unsafe(Cause::other("no member matches this instance, but the member list was not confirmed by a leader a majority follows, so absence is not proven"))
}

fn unsafe_because(what: &str, e: &MembershipError) -> Decision {
    Decision::Unsafe(Cause::from(e).prefixed(what))
}

fn done(note: &str) -> Decision {
    Decision::Done {
        note: note.to_string(),
        removed: false,
        leader_moved: false,
    }
}

fn decision_from(member: &Member, outcome: RemovalOutcome) -> Decision {
    let (name, id) = (display_name(member), member.id);
    match outcome {
        RemovalOutcome::Removed { leader_moved } => Decision::Done {
            note: format!(
                "member {name} ({id:x}) removed{}",
                if leader_moved {
                    " after moving leadership away"
                } else {
                    ""
                }
            ),
            removed: true,
            leader_moved,
        },
        RemovalOutcome::AlreadyGone => done(&format!("member {name} ({id:x}) was already removed")),
        RemovalOutcome::Unsafe(cause) => Decision::Unsafe(cause),
    }
}

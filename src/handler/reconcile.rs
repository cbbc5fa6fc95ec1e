//! What launch and the sweep share, all under the membership lock: reading the view with
//! caught-up learners promoted, removing stale members one at a time, and adding a learner.
//!
//! A member is stale only when both halves of `membership::stale_members` hold: it did not
//! answer `Status` in this invocation, and no instance that still exists carries its identity
//! (asked of EC2 across every group, since one cluster often spans several). A member that
//! answers is never removed here, whatever its name or group.

use tokio::time::Instant;

use super::{display_name, Handler, HandlerError, RemovalOutcome, Target, Waiting};
use crate::membership::{
    find_member, identities_to_look_up, peer_host, silent_members, stale_members,
};
use crate::model::{
    ClusterView, Fleet, Instance, Lifecycle, Member, Membership, MembershipError, Promotion,
};
use crate::resilience::policy::Deadline;

/// What a stale-member cleanup did, and the view it ended on.
pub(super) struct Cleanup {
    pub view: ClusterView,
    pub notes: Vec<String>,
    pub removed: u64,
    /// A stale member is still there (unsafe to remove, out of time, not checked).
    pub stale_left: bool,
}

impl<F: Fleet, L: Lifecycle, M: Membership> Handler<F, L, M> {
    /// The member list and health, with every healthy learner asked to be promoted first
    /// (etcd refuses until it has caught up: "not yet") and the view read again after a
    /// promotion, so no decision is made on a view from before it.
    pub(super) async fn view_with_promotions(
        &self,
        instances: &[Instance],
        deadline: &Deadline,
    ) -> Result<(ClusterView, Vec<String>), MembershipError> {
        let view = self.membership.cluster(instances, deadline).await?;
        let mut notes = Vec::new();
        let mut promoted = false;
        for learner in view
            .members
            .iter()
            .filter(|m| m.is_learner && view.is_healthy(m.id))
        {
            let name = display_name(learner);
            match self.membership.promote(&view, learner.id, deadline).await {
                Ok(Promotion::Promoted) => {
                    promoted = true;
                    notes.push(format!("learner {name} promoted"));
                }
                Ok(Promotion::NotReady) => notes.push(format!("learner {name} not in sync yet")),
                Err(e) => notes.push(format!("learner {name} not promoted: {e}")),
            }
        }
        if !promoted {
            return Ok((view, notes));
        }
        let view = self.membership.cluster(instances, deadline).await?;
        Ok((view, notes))
    }

    /// Removes stale members one at a time, each under the quorum check against a view read
    /// again after the previous removal. Never fails the caller: what it could not do is said in
    /// the notes.
    pub(super) async fn remove_stale(
        &self,
        mut view: ClusterView,
        instances: &[Instance],
        deadline: &Deadline,
    ) -> Cleanup {
        let mut notes: Vec<String> = Vec::new();
        let mut removed = 0;
        let stale_left = loop {
            let stale = match self.next_stale(&view, deadline, &mut notes).await {
                Ok(Some(stale)) => stale,
                Ok(None) => break false,
                Err(()) => break true,
            };
            if deadline.in_reserve(Instant::now()) {
                notes.push("stale-member cleanup stopped at the deadline reserve".into());
                break true;
            }
            let min_voters = self.config.etcd_min_voters;
            match self
                .remove_member(&view, &stale, min_voters, deadline)
                .await
            {
                RemovalOutcome::Removed { .. } => {
                    removed += 1;
                    notes.push(format!(
                        "stale member {} ({:x}) removed",
                        display_name(&stale),
                        stale.id
                    ));
                }
                RemovalOutcome::AlreadyGone => {}
                RemovalOutcome::Unsafe(cause) => {
                    notes.push(format!(
                        "stale member {} kept: {}",
                        display_name(&stale),
                        cause.text
                    ));
                    break true;
                }
            }
            view = match self.membership.cluster(instances, deadline).await {
                Ok(view) => view,
                Err(e) => {
                    notes.push(format!("membership not re-read: {e}"));
                    break true;
                }
            };
        };
        Cleanup {
            view,
            notes,
            removed,
            stale_left,
        }
    }

    /// The first stale member of `view` (see `membership::stale_members`), asking EC2 which
    /// instances carry the silent members' identities; silent members whose machine cannot be
    /// told are noted and kept. `Err` when EC2 could not be asked (noted).
    async fn next_stale(
        &self,
        view: &ClusterView,
        deadline: &Deadline,
        notes: &mut Vec<String>,
    ) -> Result<Option<Member>, ()> {
        let silent = silent_members(view);
        if silent.is_empty() {
            return Ok(None);
        }
        let (ids, ips) = identities_to_look_up(&silent);
        let existing = match self.fleet.existing_instances(&ids, &ips, deadline).await {
            Ok(existing) => existing,
            Err(e) => {
                notes.push(format!("silent members not checked for staleness: {e}"));
                return Err(());
            }
        };
        let (stale, unknown) = stale_members(view, &existing);
        for member in unknown {
            let note = format!("member {} does not answer and neither its name nor its URLs name an instance or IP: kept (remove it by hand once its machine is gone)", display_name(member));
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
        Ok(stale.first().map(|m| (*m).clone()))
    }

    /// Adds `newcomer` as a learner so its node can join with `initial-cluster-state=existing`.
    /// `NotAdded::Later` says why it cannot be added yet: the caller holds the launch rather
    /// than let the instance in without a member (over an instance refresh, that is how voters
    /// are lost). For a launch event (`action`), Auto Scaling is asked just before the add
    /// whether the action still waits (see `still_waiting`).
    pub(super) async fn add_learner(
        &self,
        cleanup: &Cleanup,
        newcomer: &Instance,
        action: Option<&Target<'_>>,
        deadline: &Deadline,
    ) -> Result<String, NotAdded> {
        let view = &cleanup.view;
        if let Some(member) = find_member(view, newcomer) {
            return Ok(format!("already a member ({:x})", member.id));
        }
        if cleanup.stale_left {
            return Err(NotAdded::Later("the newcomer is not added as a learner while a stale member is left; it is added once that member is removed".into()));
        }
        if let Some(other) = view.members.iter().find(|m| m.is_learner) {
            return Err(NotAdded::Later(format!(
                "the newcomer is not added as a learner while another learner ({}) is catching up (etcd allows one at a time); it is added once that one is promoted",
                display_name(other)
            )));
        }
        let Some(host) = peer_host(newcomer, view) else {
            return Err(NotAdded::Later(
                "the newcomer has no private IP yet to build its learner's peer URL from".into(),
            ));
        };
        // Peers often speak another scheme than clients: follow the cluster's own peer URLs.
        let scheme = view
            .members
            .iter()
            .flat_map(|m| &m.peer_urls)
            .find_map(|u| u.split_once("://").map(|(scheme, _)| scheme.to_string()))
            .unwrap_or_else(|| self.config.etcd_client_scheme.as_str().to_string());
        let peer_url = format!("{scheme}://{host}:{}", self.config.etcd_peer_port);
        if let Some(target) = action {
            match self.still_waiting(target).await {
                Ok(Waiting::Yes) => {}
                Ok(Waiting::Over) => return Err(NotAdded::ActionOver),
                Err(error) => return Err(NotAdded::Unconfirmed(error)),
            }
        }
        match self
            .membership
            .add_learner(view, &newcomer.id, &peer_url, deadline)
            .await
        {
            Ok(id) => Ok(format!("added as learner {id:x} with peer URL {peer_url}")),
            Err(e) => Err(NotAdded::Later(format!(
                "the newcomer's learner was not added: {e}"
            ))),
        }
    }
}

/// Why a learner was not added.
pub(super) enum NotAdded {
    /// Not yet, and why: the launch is held until it can be.
    Later(String),
    /// The launch's lifecycle action was found over just before the add: nothing is owed to it.
    ActionOver,
    /// Auto Scaling could not say whether the launch's action still waits: nothing was added.
    Unconfirmed(HandlerError),
}

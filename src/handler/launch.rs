//! Launch: remove stale members, promote caught-up learners, optionally add the newcomer as a
//! learner, then decide to complete. With learners on, a newcomer that cannot be added yet is
//! held, not let in without a member.

use super::outcome::{Cause, Outcome};
use super::reconcile::NotAdded;
use super::{Handler, Target, ACTION_OVER};
use crate::model::{Fleet, Instance, Lifecycle, Membership, MembershipError};
use crate::resilience::Dependency;

impl<F: Fleet, L: Lifecycle, M: Membership> Handler<F, L, M> {
    pub(super) async fn launch(&self, target: &Target<'_>, into_warm_pool: bool) -> Outcome {
        if into_warm_pool {
            if let Err(open) = self.resilience.ensure_closed(&[Dependency::Autoscaling]) {
                return Outcome::Fail(open.into());
            }
            return Outcome::complete("launching into the warm pool: not an etcd member yet");
        }
        // etcd is optional here: a launch cannot hurt quorum, and an unreachable etcd means the
        // cluster is being bootstrapped.
        let instances = match self
            .start_flow(
                target,
                &[Dependency::Autoscaling, Dependency::Ec2],
                "clean up membership",
            )
            .await
        {
            Ok(instances) => instances,
            Err(outcome) => return outcome,
        };
        self.launch_membership(target, &instances).await
    }

    async fn launch_membership(&self, target: &Target<'_>, instances: &[Instance]) -> Outcome {
        let newcomer = instances.iter().find(|i| i.id == target.instance_id);
        let has_peer = !self.config.etcd_endpoints.is_empty()
            || instances
                .iter()
                .any(|i| i.is_up() && i.private_ip.is_some() && i.id != target.instance_id);
        if !has_peer {
            return Outcome::complete("no etcd peer: the cluster is being bootstrapped");
        }
        if let Err(open) = self.resilience.ensure_closed(&[Dependency::Etcd]) {
            return self.cannot(Cause::from(open));
        }
        let lock = match self.membership.lock(instances, target.deadline).await {
            Ok(lock) => lock,
            Err(MembershipError::Unreachable { .. }) => {
                return Outcome::complete(
                    "no etcd peer answered: the cluster is being bootstrapped",
                )
            }
            Err(e @ MembershipError::Locked { .. }) => {
                return Outcome::hold(Cause::from(&e).prefixed("cannot take the membership lock"))
            }
            Err(e) => {
                return self.cannot(Cause::from(&e).prefixed("cannot take the membership lock"))
            }
        };
        let outcome = self.under_lock(target, instances, newcomer).await;
        self.membership.unlock(lock, target.deadline).await;
        outcome
    }

    /// What a launch does when membership cannot be worked on now. Without learners nothing here
    /// is owed to the newcomer: what cannot be done now is the sweep's. With learners, the
    /// newcomer must not be let in without its member.
    fn cannot(&self, cause: Cause) -> Outcome {
        if self.config.etcd_add_learner_on_launch {
            Outcome::hold(cause)
        } else {
            Outcome::complete(format!("membership left as is: {}", cause.text))
        }
    }

    /// The launch's membership work, under the lock: promotions, stale members, the learner.
    async fn under_lock(
        &self,
        target: &Target<'_>,
        instances: &[Instance],
        newcomer: Option<&Instance>,
    ) -> Outcome {
        let learners = self.config.etcd_add_learner_on_launch;
        let (view, mut notes) = match self.view_with_promotions(instances, target.deadline).await {
            Ok(read) => read,
            Err(e) => return self.cannot(Cause::from(&e).prefixed("cannot read etcd membership")),
        };
        let cleanup = self.remove_stale(view, instances, target.deadline).await;
        notes.extend(cleanup.notes.iter().cloned());
        let removed = cleanup.removed;
        let learner = match newcomer.filter(|_| learners) {
            None if learners => return Outcome::Hold {
                cause: Cause::other(
                    "the launching instance is not listed by EC2 yet: its learner cannot be added",
                ),
                removed,
            },
            None => {
                return Outcome::Complete {
                    detail: notes.join("; "),
                    removed,
                    leader_moved: false,
                }
            }
            Some(newcomer) => {
                self.add_learner(&cleanup, newcomer, Some(target), target.deadline)
                    .await
            }
        };
        match learner {
            Ok(note) => {
                notes.push(note);
                Outcome::Complete {
                    detail: notes.join("; "),
                    removed,
                    leader_moved: false,
                }
            }
            Err(NotAdded::Later(reason)) => {
                notes.push(reason);
                Outcome::Hold {
                    cause: Cause::other(notes.join("; ")),
                    removed,
                }
            }
            Err(NotAdded::Unconfirmed(error)) => Outcome::Fail(error),
            Err(NotAdded::ActionOver) => {
                notes.push(ACTION_OVER.to_string());
                Outcome::Skip {
                    detail: notes.join("; "),
                    removed,
                }
            }
        }
    }
}

//! Launch: remove stale members, promote caught-up learners, optionally add the newcomer as a
//! learner, then complete. With learners on, a newcomer that cannot be added yet is held, not
//! let in without a member.

use super::{etcd_cause, Handler, InstanceResult, Target};
use crate::metrics::InvocationMetrics;
use crate::model::{Fleet, Instance, Lifecycle, Membership, MembershipError};
use crate::resilience::Dependency;

/// How a launch ends.
enum Ending {
    Complete {
        notes: Vec<String>,
        removed: usize,
    },
    Hold {
        reason: String,
        error: Option<super::HandlerError>,
    },
}

impl<F: Fleet, L: Lifecycle, M: Membership> Handler<F, L, M> {
    pub(super) async fn launch(
        &self,
        target: &Target<'_>,
        into_warm_pool: bool,
        metrics: &mut InvocationMetrics,
    ) -> InstanceResult {
        if into_warm_pool {
            let mut result = self.result_for(target);
            if let Err(open) = self.resilience.ensure_closed(&[Dependency::Autoscaling]) {
                return super::fail(result, open.into());
            }
            result.detail = "launching into the warm pool: not an etcd member yet".into();
            return self.complete(target, result, metrics).await;
        }
        // etcd is optional here: a launch cannot hurt quorum, and an unreachable etcd means the
        // cluster is being bootstrapped.
        let (mut result, instances) = match self
            .start_flow(
                target,
                &[Dependency::Autoscaling, Dependency::Ec2],
                "clean up membership",
                metrics,
            )
            .await
        {
            Ok(started) => started,
            Err(done) => return done,
        };
        match self.launch_membership(target, &instances, metrics).await {
            Ending::Complete { notes, removed } => {
                result.member_removed = removed > 0;
                result.detail = notes.join("; ");
                self.complete(target, result, metrics).await
            }
            Ending::Hold { reason, error } => {
                self.hold(target, result, reason, error, metrics).await
            }
        }
    }

    async fn launch_membership(
        &self,
        target: &Target<'_>,
        instances: &[Instance],
        metrics: &mut InvocationMetrics,
    ) -> Ending {
        let newcomer = instances.iter().find(|i| i.id == target.instance_id);
        let has_peer = !self.config.etcd_endpoints.is_empty()
            || instances
                .iter()
                .any(|i| i.is_up() && i.private_ip.is_some() && i.id != target.instance_id);
        if !has_peer {
            return complete_with("no etcd peer: the cluster is being bootstrapped");
        }
        if let Err(open) = self.resilience.ensure_closed(&[Dependency::Etcd]) {
            return self.cannot(open.to_string(), Some(open.into()));
        }
        let lock = match self.membership.lock(instances, target.deadline).await {
            Ok(lock) => lock,
            Err(MembershipError::Unreachable { .. }) => {
                return complete_with("no etcd peer answered: the cluster is being bootstrapped")
            }
            Err(e @ MembershipError::Locked { .. }) => {
                return Ending::Hold {
                    reason: format!("cannot take the membership lock: {e}"),
                    error: None,
                }
            }
            Err(e) => {
                let (reason, error) = etcd_cause(&e);
                return self.cannot(format!("cannot take the membership lock: {reason}"), error);
            }
        };
        let ending = self.under_lock(target, instances, newcomer, metrics).await;
        self.membership.unlock(lock, target.deadline).await;
        ending
    }

    /// What a launch does when membership cannot be worked on now. Without learners nothing here
    /// is owed to the newcomer: what cannot be done now is the sweep's. With learners, the
    /// newcomer must not be let in without its member.
    fn cannot(&self, reason: String, error: Option<super::HandlerError>) -> Ending {
        if self.config.etcd_add_learner_on_launch {
            Ending::Hold { reason, error }
        } else {
            complete_with(&format!("membership left as is: {reason}"))
        }
    }

    /// The launch's membership work, under the lock: promotions, stale members, the learner.
    async fn under_lock(
        &self,
        target: &Target<'_>,
        instances: &[Instance],
        newcomer: Option<&Instance>,
        metrics: &mut InvocationMetrics,
    ) -> Ending {
        let learners = self.config.etcd_add_learner_on_launch;
        match self.view_with_promotions(instances, target.deadline).await {
            Err(e) => {
                let (reason, error) = etcd_cause(&e);
                self.cannot(format!("cannot read etcd membership: {reason}"), error)
            }
            Ok((view, mut notes)) => {
                let cleanup = self
                    .remove_stale(view, instances, target.deadline, metrics)
                    .await;
                notes.extend(cleanup.notes.iter().cloned());
                match newcomer.filter(|_| learners) {
                    None if learners => Ending::Hold {
                        reason: "the launching instance is not listed by EC2 yet: its learner cannot be added".into(),
                        error: None,
                    },
                    None => Ending::Complete {
                        notes,
                        removed: cleanup.removed,
                    },
                    Some(newcomer) => {
                        match self.add_learner(&cleanup, newcomer, target.deadline).await {
                            Ok(note) => {
                                notes.push(note);
                                Ending::Complete {
                                    notes,
                                    removed: cleanup.removed,
                                }
                            }
                            Err(reason) => {
                                notes.push(reason);
                                Ending::Hold {
                                    reason: notes.join("; "),
                                    error: None,
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn complete_with(note: &str) -> Ending {
    Ending::Complete {
        notes: vec![note.to_string()],
        removed: 0,
    }
}

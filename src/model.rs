//! The handler's view of the world: instances, lifecycle actions, etcd members, and the three
//! narrow traits through which it reaches Auto Scaling, EC2 and etcd.
//!
//! The handler depends on these traits only, never on `aws-sdk-*` or `etcd-client` types, so
//! every decision is unit-tested with in-memory fakes. The real implementations live in
//! `aws/` and `etcd/`; `main.rs` wires them in.

use std::future::Future;
use std::net::IpAddr;

use serde::Serialize;

use crate::resilience::policy::Deadline;
use crate::resilience::CircuitOpen;

/// An EC2 instance, as `DescribeInstances` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    pub id: String,
    pub private_ip: Option<IpAddr>,
    pub private_dns: Option<String>,
    /// EC2 state name: `pending`, `running`, `stopping`, `stopped`, `shutting-down`, ...
    pub state: String,
    /// A Spot instance: an interruption takes it after two minutes whatever the hook says.
    pub spot: bool,
    /// The Spot request behind a Spot instance, whose status says whether it is being
    /// interrupted (`marked-for-termination`).
    pub spot_request_id: Option<String>,
    /// Every other private address of its network interfaces: secondary IPv4 addresses and
    /// IPv6 addresses (dual-stack and IPv6-only subnets). A member may advertise any of them.
    pub other_ips: Vec<IpAddr>,
}

/// EC2 states in which an instance still exists (it may come back, or is coming up): a member
/// of such an instance is never stale.
pub const EXISTING_STATES: &[&str] = &["pending", "running", "stopping", "stopped"];

impl Instance {
    /// Pending or running: it may serve etcd now, so its address is worth asking.
    pub fn is_up(&self) -> bool {
        matches!(self.state.as_str(), "pending" | "running")
    }

    /// Every private address EC2 reported for it, the primary first.
    pub fn ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.private_ip
            .into_iter()
            .chain(self.other_ips.iter().copied())
    }

    pub fn has_ip(&self, ip: IpAddr) -> bool {
        self.ips().any(|own| own == ip)
    }
}

/// What EC2 says of a Spot instance's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpotStatus {
    /// The request's status code, such as `fulfilled` or `marked-for-termination`.
    pub code: String,
}

/// The lifecycle transition being handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Transition {
    #[serde(rename = "autoscaling:EC2_INSTANCE_LAUNCHING")]
    Launching,
    #[serde(rename = "autoscaling:EC2_INSTANCE_TERMINATING")]
    Terminating,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Launching => "autoscaling:EC2_INSTANCE_LAUNCHING",
            Transition::Terminating => "autoscaling:EC2_INSTANCE_TERMINATING",
        }
    }
}

/// Identifies one paused lifecycle action: by token when an event carried one, else by instance ID
/// (the sweep's way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionKey {
    pub group: String,
    pub hook: String,
    pub instance_id: String,
    #[serde(skip)]
    pub token: Option<String>,
}

/// What `CompleteLifecycleAction` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Completion {
    Completed,
    /// "No active Lifecycle Action found": completed before (by us or by a timeout).
    AlreadyDone,
}

/// What `RecordLifecycleActionHeartbeat` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Heartbeat {
    Recorded,
    /// The action is no longer active: there is nothing left to hold.
    ActionOver,
}

/// An instance of the group, or of its warm pool, paused in a wait state, found by the sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingInstance {
    pub instance_id: String,
    /// `Pending:Wait`, `Terminating:Wait`, `Warmed:Pending:Wait`, `Warmed:Terminating:Wait`.
    pub lifecycle_state: String,
}

impl WaitingInstance {
    /// What its lifecycle state says it may be waiting on; `None` for a state that is no wait.
    pub fn waiting_on(&self) -> Option<WaitingOn> {
        match self.lifecycle_state.as_str() {
            "Pending:Wait" => Some(WaitingOn::Launch),
            "Terminating:Wait" | "Warmed:Terminating:Wait" => Some(WaitingOn::Terminate),
            "Warmed:Pending:Wait" => Some(WaitingOn::LaunchOrTerminate),
            _ => None,
        }
    }
}

/// The lifecycle action(s) an instance in a wait state may be waiting on. The sweep has no event
/// and learns only the lifecycle state, which does not always name the transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitingOn {
    /// `Pending:Wait`: a launch into the group (new, or out of the warm pool).
    Launch,
    /// `Terminating:Wait`: leaving the group; `Warmed:Terminating:Wait`: leaving the warm pool
    /// for good. Both wait on a terminate action.
    Terminate,
    /// `Warmed:Pending:Wait`: either launching into the warm pool (a launch action) or going back
    /// to it on scale-in, leaving the cluster (a terminate action, in AWS's naming). The state is
    /// the same for both.
    LaunchOrTerminate,
}

impl WaitingOn {
    /// The transitions whose hooks the instance may be waiting on: the sweep acts on each of
    /// our hooks of these (finishing one that is not waiting answers "already done").
    pub fn transitions(self) -> &'static [Transition] {
        match self {
            WaitingOn::Launch => &[Transition::Launching],
            WaitingOn::Terminate => &[Transition::Terminating],
            WaitingOn::LaunchOrTerminate => &[Transition::Terminating, Transition::Launching],
        }
    }

    /// The flow that handles it. One that may leave the cluster takes the terminate flow: with
    /// no member (a launch into the warm pool) it completes every action at once, and while
    /// the removal is unsafe it holds every one of them.
    pub fn flow(self) -> Transition {
        match self {
            WaitingOn::Launch => Transition::Launching,
            WaitingOn::Terminate | WaitingOn::LaunchOrTerminate => Transition::Terminating,
        }
    }
}

/// A lifecycle hook of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub name: String,
    pub transition: Transition,
}

/// What the sweep learns of one group from Auto Scaling: `DescribeLifecycleHooks`, the group's
/// instances (`DescribeAutoScalingGroups`) and its warm pool's (`DescribeWarmPool`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupLifecycle {
    pub hooks: Vec<Hook>,
    /// Instances of the group and of its warm pool paused in a wait state, each listed once.
    pub waiting: Vec<WaitingInstance>,
    /// Instances kept by the `TerminateHookAbandon: retain` policy, reported to operators.
    pub retained: Vec<String>,
    /// Instances `InService`: each should have an etcd member (the sweep adds a missing learner).
    pub in_service: Vec<String>,
}

/// An AWS call failed. The text names the call and carries the cause.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error(transparent)]
    CircuitOpen(#[from] CircuitOpen),
    #[error("{operation} failed: {detail}")]
    Failed {
        operation: &'static str,
        detail: String,
    },
}

/// EC2's view of the instances.
pub trait Fleet: Send + Sync {
    /// The instances that still exist ([`EXISTING_STATES`]) of `groups` (the event's group and
    /// every other group of the cluster), in one paged `DescribeInstances` filtered by the
    /// `aws:autoscaling:groupName` tag.
    fn group_instances(
        &self,
        groups: &[String],
        deadline: &Deadline,
    ) -> impl Future<Output = Result<Vec<Instance>, AwsError>> + Send;

    /// One instance by ID, in any state; `None` when EC2 no longer knows it.
    fn instance(
        &self,
        id: &str,
        deadline: &Deadline,
    ) -> impl Future<Output = Result<Option<Instance>, AwsError>> + Send;

    /// Instances that still exist ([`EXISTING_STATES`]), in any group or none, whose ID is one of
    /// `ids` or whose private IP is one of `ips`. No call when both are empty.
    fn existing_instances(
        &self,
        ids: &[String],
        ips: &[IpAddr],
        deadline: &Deadline,
    ) -> impl Future<Output = Result<Vec<Instance>, AwsError>> + Send;

    /// The status of a Spot request; `None` when EC2 no longer knows it.
    fn spot_status(
        &self,
        request_id: &str,
        deadline: &Deadline,
    ) -> impl Future<Output = Result<Option<SpotStatus>, AwsError>> + Send;
}

/// Auto Scaling's lifecycle actions.
pub trait Lifecycle: Send + Sync {
    fn complete(
        &self,
        key: &ActionKey,
        deadline: &Deadline,
    ) -> impl Future<Output = Result<Completion, AwsError>> + Send;

    fn heartbeat(
        &self,
        key: &ActionKey,
        deadline: &Deadline,
    ) -> impl Future<Output = Result<Heartbeat, AwsError>> + Send;

    /// The group's hooks, the instances waiting on them and the retained ones (for the sweep).
    fn group_lifecycle(
        &self,
        group: &str,
        deadline: &Deadline,
    ) -> impl Future<Output = Result<GroupLifecycle, AwsError>> + Send;
}

/// One etcd member as the member list reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub id: u64,
    /// Empty for a member that was added but never started.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// etcd's own view of the cluster: the member list plus each member's health, judged by
/// `health::judge` (the one definition of "healthy").
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ClusterView {
    pub members: Vec<Member>,
    /// IDs of the healthy members: answered, follow the leader a majority of the voters follow
    /// in its term, caught up with it, and named by no alarm.
    pub healthy: Vec<u64>,
    /// Why each other member is not healthy, for the hold reasons.
    pub not_healthy: Vec<(u64, NotHealthy)>,
    /// The leader a majority of the voting members follow; `None` when no leader has a majority.
    pub leader: Option<u64>,
    /// Alarms raised in the cluster (`NOSPACE`, `CORRUPT`), each with the member it names.
    pub alarms: Vec<Alarm>,
    /// The member list was answered by the leader (or read again from it): it is the list the
    /// cluster has committed, not the view of a member that lags. Removals and the proof that
    /// an instance has no member rest on it.
    pub confirmed_by_leader: bool,
}

impl ClusterView {
    pub fn member(&self, id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    pub fn is_healthy(&self, id: u64) -> bool {
        self.healthy.contains(&id)
    }

    /// Why `id` is not healthy; `None` for a healthy (or unknown) member.
    pub fn why_not_healthy(&self, id: u64) -> Option<&NotHealthy> {
        self.not_healthy
            .iter()
            .find(|(member, _)| *member == id)
            .map(|(_, why)| why)
    }
}

/// An alarm etcd has raised for a member (etcd lists every alarm in each member's `Status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alarm {
    pub member: u64,
    /// `NOSPACE` (the member's database is over its quota: the cluster refuses writes) or
    /// `CORRUPT` (the member's data disagrees with the others').
    pub kind: String,
}

/// Why a member is not counted healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum NotHealthy {
    /// Added but never started: it advertises no client URL.
    NeverStarted,
    /// It did not answer `Status`.
    Silent(String),
    /// The deadline left no time to ask it, or to wait for its answer: its health is unknown,
    /// not bad.
    NotAskedInTime,
    /// It answered, but has no leader: cut off from a quorum, or in an election.
    NoLeader,
    /// It follows another leader or term than a majority of the voters do (or no leader has a
    /// majority).
    OtherLeader { leader: u64, term: u64 },
    /// Its raft log is this many entries behind the leader's.
    Behind { entries: u64 },
    /// An alarm names it.
    Alarmed { kind: String },
}

impl std::fmt::Display for NotHealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotHealthy::NeverStarted => write!(f, "never started"),
            NotHealthy::Silent(detail) => write!(f, "did not answer ({detail})"),
            NotHealthy::NotAskedInTime => {
                write!(
                    f,
                    "not asked in time (the invocation's deadline came first)"
                )
            }
            NotHealthy::NoLeader => write!(
                f,
                "answered without a leader (cut off from a quorum, or an election)"
            ),
            NotHealthy::OtherLeader { leader, term } => write!(
                f,
                "follows leader {leader:x} in term {term}, not the leader a majority follows"
            ),
            NotHealthy::Behind { entries } => {
                write!(f, "{entries} raft entries behind the leader")
            }
            NotHealthy::Alarmed { kind } => write!(f, "{kind} alarm raised"),
        }
    }
}

/// How the cluster answered a removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Removal {
    Removed,
    /// etcd did not know the member: removed before.
    AlreadyGone,
}

/// How the cluster answered a learner promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Promotion {
    Promoted,
    /// The learner has not caught up with the leader yet: try again later.
    NotReady,
}

/// An etcd call failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(transparent)]
    CircuitOpen(#[from] CircuitOpen),
    /// No endpoint answered. On launch this means the cluster is being bootstrapped.
    #[error("no etcd endpoint answered ({endpoints}): {detail}; check ETCD_ENDPOINTS, the security group and that etcd runs")]
    Unreachable { endpoints: String, detail: String },
    /// etcd's strict reconfig check refused a membership change: unsafe now, hold and retry later.
    #[error("etcd refused the membership change as unsafe now: {detail}")]
    Refused { detail: String },
    /// etcd refuses writes while an alarm is raised (NOSPACE: a member's database is over its
    /// quota; CORRUPT: a member's data disagrees), so neither the lock nor any change can be
    /// had: hold until an operator clears it.
    #[error("etcd refuses writes while an alarm is raised ({detail}): under NOSPACE a member's database is over its quota (compact, defragment, then disarm the alarm); under CORRUPT a member's data disagrees with the others' (replace that member); see README, runbook")]
    WritesRefused { detail: String },
    /// The members that answered have no leader: the cluster has lost quorum, or is electing a
    /// leader. Nothing can change until it has one: hold.
    #[error("etcd has no leader (quorum lost, or an election under way): {detail}; nothing can change until a majority of the voting members run and elect one")]
    NoLeader { detail: String },
    /// Another invocation holds the membership lock: its change may alter the view this one
    /// would decide on, so this one holds and comes back.
    #[error("the membership lock ({name}) is held by another invocation and was not free within {waited_ms} ms; another membership change is under way")]
    Locked { name: String, waited_ms: u128 },
    #[error("etcd {operation} failed: {detail}")]
    Failed {
        operation: &'static str,
        detail: String,
    },
}

/// The membership lock an invocation holds: etcd's own lock (v3lock), on a lease that expires
/// no later than the invocation, so a function that dies holding it cannot block the cluster
/// past its own deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipLock {
    /// The lock's key in etcd, as the lock service answered it.
    pub key: Vec<u8>,
    pub lease: i64,
    /// Where the lock was taken: its release is sent there first.
    pub endpoints: Vec<String>,
}

/// etcd membership, reached through the resilience layer's `etcd` breaker.
pub trait Membership: Send + Sync {
    /// Takes the membership lock, waiting a short while if another invocation holds it
    /// (`Locked` then). Every read-decide-change of the membership happens under it, so two
    /// invocations never decide on the same view.
    fn lock(
        &self,
        peers: &[Instance],
        deadline: &Deadline,
    ) -> impl Future<Output = Result<MembershipLock, MembershipError>> + Send;

    /// Releases the lock (best effort: its lease expires with the invocation anyway).
    fn unlock(&self, lock: MembershipLock, deadline: &Deadline) -> impl Future<Output = ()> + Send;

    /// Reads the member list and each member's status. `peers` are the group's instances, used to
    /// build endpoints when `ETCD_ENDPOINTS` is empty. `Unreachable` when no endpoint answers.
    fn cluster(
        &self,
        peers: &[Instance],
        deadline: &Deadline,
    ) -> impl Future<Output = Result<ClusterView, MembershipError>> + Send;

    /// Moves leadership from the current leader (`view.leader`) to `to`, asking the leader itself.
    fn move_leader(
        &self,
        view: &ClusterView,
        to: u64,
        deadline: &Deadline,
    ) -> impl Future<Output = Result<(), MembershipError>> + Send;

    /// Removes `member`, preferring the leader as the receiver. `Refused` when etcd's strict
    /// reconfig check says the change is unsafe now.
    fn remove(
        &self,
        view: &ClusterView,
        member: u64,
        deadline: &Deadline,
    ) -> impl Future<Output = Result<Removal, MembershipError>> + Send;

    /// Adds `peer_url` as a learner named `name`; returns the new member's ID.
    fn add_learner(
        &self,
        view: &ClusterView,
        name: &str,
        peer_url: &str,
        deadline: &Deadline,
    ) -> impl Future<Output = Result<u64, MembershipError>> + Send;

    fn promote(
        &self,
        view: &ClusterView,
        member: u64,
        deadline: &Deadline,
    ) -> impl Future<Output = Result<Promotion, MembershipError>> + Send;
}

//! Every branch of the handler against in-memory fakes that record each call.

use std::sync::Mutex;

use super::*;
use crate::metrics::memory_sink;
use crate::model::{Completion, GroupLifecycle, Heartbeat, Hook, Promotion, WaitingInstance};
use crate::resilience::breaker::State;

const GROUP: &str = "etcd-asg";

pub(super) fn instance(n: u8) -> Instance {
    Instance {
        id: format!("i-0000000000000000{n}"),
        private_ip: Some(format!("10.0.0.{n}").parse().unwrap()),
        private_dns: Some(format!("ip-10-0-0-{n}.ec2.internal")),
        state: "running".into(),
        spot: false,
        spot_request_id: None,
        other_ips: Vec::new(),
    }
}

pub(super) fn member(n: u8) -> Member {
    Member {
        id: u64::from(n) * 0x1111,
        name: format!("i-0000000000000000{n}"),
        peer_urls: vec![format!("https://10.0.0.{n}:2380")],
        client_urls: vec![format!("https://10.0.0.{n}:2379")],
        is_learner: false,
    }
}

#[derive(Default)]
pub(super) struct Calls(Mutex<Vec<String>>);

impl Calls {
    pub(super) fn push(&self, call: String) {
        self.0.lock().unwrap().push(call);
    }
    pub(super) fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A Spot request status the fake EC2 cannot give: its `DescribeSpotInstanceRequests` fails.
pub(super) const UNREADABLE: &str = "(unreadable)";

pub(super) struct FakeFleet {
    /// The group's instances.
    instances: Vec<Instance>,
    /// Instances outside the group that EC2 still knows (other groups, none).
    elsewhere: Vec<Instance>,
    /// Spot request statuses by request ID.
    spot: Vec<(String, String)>,
    calls: Arc<Calls>,
}

impl FakeFleet {
    fn known(&self) -> impl Iterator<Item = &Instance> {
        self.instances.iter().chain(&self.elsewhere)
    }
}

impl Fleet for FakeFleet {
    async fn group_instances(
        &self,
        groups: &[String],
        _: &Deadline,
    ) -> Result<Vec<Instance>, AwsError> {
        self.calls
            .push(format!("ec2:DescribeInstances {}", groups.join(",")));
        Ok(self.instances.clone())
    }

    async fn instance(&self, id: &str, _: &Deadline) -> Result<Option<Instance>, AwsError> {
        self.calls.push(format!("ec2:DescribeInstances id={id}"));
        Ok(self.known().find(|i| i.id == id).cloned())
    }

    async fn existing_instances(
        &self,
        ids: &[String],
        ips: &[std::net::IpAddr],
        _: &Deadline,
    ) -> Result<Vec<Instance>, AwsError> {
        let ips_text: Vec<String> = ips.iter().map(ToString::to_string).collect();
        self.calls.push(format!(
            "ec2:DescribeInstances existing ids={} ips={}",
            ids.join(","),
            ips_text.join(",")
        ));
        Ok(self
            .known()
            .filter(|i| crate::model::EXISTING_STATES.contains(&i.state.as_str()))
            .filter(|i| ids.contains(&i.id) || i.private_ip.is_some_and(|ip| ips.contains(&ip)))
            .cloned()
            .collect())
    }

    async fn spot_status(
        &self,
        request_id: &str,
        _: &Deadline,
    ) -> Result<Option<crate::model::SpotStatus>, AwsError> {
        self.calls
            .push(format!("ec2:DescribeSpotInstanceRequests {request_id}"));
        let code = self.spot.iter().find(|(id, _)| id == request_id);
        if code.is_some_and(|(_, code)| code == UNREADABLE) {
            return Err(AwsError::Failed {
                operation: "ec2:DescribeSpotInstanceRequests",
                detail: "RequestLimitExceeded".into(),
            });
        }
        Ok(code.map(|(_, code)| crate::model::SpotStatus { code: code.clone() }))
    }
}

pub(super) struct FakeLifecycle {
    calls: Arc<Calls>,
    /// Keys already completed: a second completion answers AlreadyDone.
    done: Mutex<Vec<String>>,
    group: GroupLifecycle,
    open: Option<CircuitOpen>,
}

fn key_text(key: &ActionKey) -> String {
    match &key.token {
        Some(t) => format!("{} {} token={t}", key.group, key.hook),
        None => format!("{} {} instance={}", key.group, key.hook, key.instance_id),
    }
}

impl Lifecycle for FakeLifecycle {
    async fn complete(&self, key: &ActionKey, _: &Deadline) -> Result<Completion, AwsError> {
        if let Some(open) = self.open {
            return Err(open.into());
        }
        let text = key_text(key);
        self.calls.push(format!(
            "autoscaling:CompleteLifecycleAction {text} CONTINUE"
        ));
        let mut done = self.done.lock().unwrap();
        if done.contains(&key.instance_id) {
            return Ok(Completion::AlreadyDone);
        }
        done.push(key.instance_id.clone());
        Ok(Completion::Completed)
    }

    async fn heartbeat(&self, key: &ActionKey, _: &Deadline) -> Result<Heartbeat, AwsError> {
        if let Some(open) = self.open {
            return Err(open.into());
        }
        self.calls.push(format!(
            "autoscaling:RecordLifecycleActionHeartbeat {}",
            key_text(key)
        ));
        if self.done.lock().unwrap().contains(&key.instance_id) {
            return Ok(Heartbeat::ActionOver);
        }
        Ok(Heartbeat::Recorded)
    }

    async fn group_lifecycle(&self, group: &str, _: &Deadline) -> Result<GroupLifecycle, AwsError> {
        self.calls.push(format!("autoscaling:Describe {group}"));
        Ok(self.group.clone())
    }
}

/// etcd as a mutable view: removals and moves change it, like the real cluster would.
pub(super) struct FakeMembership {
    view: Mutex<Option<ClusterView>>,
    calls: Arc<Calls>,
    refuse_removal: bool,
    /// Another invocation holds the membership lock.
    locked_elsewhere: bool,
    /// etcd refuses writes (a NOSPACE alarm): the lock cannot be taken.
    writes_refused: bool,
    /// Learners have caught up: a promotion succeeds.
    learners_ready: bool,
    /// Locks taken and not released.
    held_locks: Mutex<usize>,
}

impl FakeMembership {
    fn view(&self) -> Result<ClusterView, MembershipError> {
        self.view
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| MembershipError::Unreachable {
                endpoints: "https://10.0.0.1:2379".into(),
                detail: "connection refused".into(),
            })
    }
}

impl Membership for FakeMembership {
    async fn lock(
        &self,
        _: &[Instance],
        _: &Deadline,
    ) -> Result<crate::model::MembershipLock, MembershipError> {
        self.view()?;
        self.calls.push("etcd:Lock".into());
        if self.writes_refused {
            return Err(MembershipError::WritesRefused {
                detail: "https://10.0.0.1:2379 answered ResourceExhausted \"etcdserver: mvcc: database space exceeded\"".into(),
            });
        }
        if self.locked_elsewhere {
            return Err(MembershipError::Locked {
                name: "etcd-lifecycle-hook/membership".into(),
                waited_ms: 4000,
            });
        }
        *self.held_locks.lock().unwrap() += 1;
        Ok(crate::model::MembershipLock {
            key: b"lock".to_vec(),
            lease: 7,
            endpoints: vec![],
        })
    }

    async fn unlock(&self, lock: crate::model::MembershipLock, _: &Deadline) {
        assert_eq!(lock.lease, 7);
        self.calls.push("etcd:Unlock".into());
        *self.held_locks.lock().unwrap() -= 1;
    }

    async fn cluster(&self, _: &[Instance], _: &Deadline) -> Result<ClusterView, MembershipError> {
        self.calls.push("etcd:MemberList+Status".into());
        self.view()
    }

    async fn move_leader(
        &self,
        _: &ClusterView,
        to: u64,
        _: &Deadline,
    ) -> Result<(), MembershipError> {
        self.calls.push(format!("etcd:MoveLeader {to:x}"));
        if let Some(v) = self.view.lock().unwrap().as_mut() {
            v.leader = Some(to);
        }
        Ok(())
    }

    async fn remove(
        &self,
        view: &ClusterView,
        member: u64,
        _: &Deadline,
    ) -> Result<Removal, MembershipError> {
        self.calls.push(format!(
            "etcd:MemberRemove {member:x} via leader {:x}",
            view.leader.unwrap_or(0)
        ));
        if self.refuse_removal {
            return Err(MembershipError::Refused {
                detail: "etcdserver: unhealthy cluster".into(),
            });
        }
        let mut guard = self.view.lock().unwrap();
        let v = guard.as_mut().expect("cluster is up");
        let before = v.members.len();
        v.members.retain(|m| m.id != member);
        v.healthy.retain(|&id| id != member);
        Ok(if v.members.len() < before {
            Removal::Removed
        } else {
            Removal::AlreadyGone
        })
    }

    async fn add_learner(
        &self,
        _: &ClusterView,
        name: &str,
        peer_url: &str,
        _: &Deadline,
    ) -> Result<u64, MembershipError> {
        self.calls
            .push(format!("etcd:MemberAdd learner {name} {peer_url}"));
        if let Some(v) = self.view.lock().unwrap().as_mut() {
            v.members.push(Member {
                id: 0xabc,
                name: String::new(),
                peer_urls: vec![peer_url.to_string()],
                client_urls: vec![],
                is_learner: true,
            });
        }
        Ok(0xabc)
    }

    async fn promote(
        &self,
        _: &ClusterView,
        member: u64,
        _: &Deadline,
    ) -> Result<Promotion, MembershipError> {
        self.calls.push(format!("etcd:MemberPromote {member:x}"));
        if !self.learners_ready {
            return Ok(Promotion::NotReady);
        }
        if let Some(v) = self.view.lock().unwrap().as_mut() {
            for m in v.members.iter_mut().filter(|m| m.id == member) {
                m.is_learner = false;
            }
        }
        Ok(Promotion::Promoted)
    }
}

pub(super) type FakeHandler = Handler<FakeFleet, FakeLifecycle, FakeMembership>;

pub(super) struct World {
    pub(super) instances: Vec<Instance>,
    elsewhere: Vec<Instance>,
    pub(super) spot: Vec<(String, String)>,
    view: Option<ClusterView>,
    pub(super) config: Config,
    group: GroupLifecycle,
    refuse_removal: bool,
    locked_elsewhere: bool,
    pub(super) writes_refused: bool,
    learners_ready: bool,
    open_lifecycle: Option<CircuitOpen>,
    /// Instances whose lifecycle actions are already over (completed before, timed out).
    pub(super) actions_over: Vec<String>,
}

impl World {
    /// Three running instances, each an etcd member, all healthy, member 1 leading.
    pub(super) fn three_nodes() -> Self {
        Self {
            instances: (1..=3).map(instance).collect(),
            view: Some(ClusterView {
                members: (1..=3).map(member).collect(),
                healthy: (1..=3).map(|n| member(n).id).collect(),
                leader: Some(member(1).id),
                confirmed_by_leader: true,
                ..ClusterView::default()
            }),
            elsewhere: Vec::new(),
            spot: Vec::new(),
            config: Config::default(),
            group: GroupLifecycle::default(),
            refuse_removal: false,
            locked_elsewhere: false,
            writes_refused: false,
            learners_ready: false,
            open_lifecycle: None,
            actions_over: Vec::new(),
        }
    }

    /// Changes etcd's view as the test needs.
    pub(super) fn view_with(mut self, change: impl FnOnce(&mut ClusterView)) -> Self {
        if let Some(v) = self.view.as_mut() {
            change(v);
        }
        self
    }

    /// Member `n` does not answer `Status`.
    pub(super) fn silent(mut self, n: u8) -> Self {
        if let Some(v) = self.view.as_mut() {
            v.healthy.retain(|&id| id != member(n).id);
        }
        self
    }

    pub(super) fn build(self) -> (FakeHandler, Arc<Calls>, Arc<Mutex<Vec<String>>>) {
        let calls = Arc::new(Calls::default());
        let (sink, lines) = memory_sink();
        let handler = Handler {
            resilience: Arc::new(Resilience::new(self.config.resilience())),
            config: Arc::new(self.config),
            fleet: FakeFleet {
                instances: self.instances,
                elsewhere: self.elsewhere,
                spot: self.spot,
                calls: Arc::clone(&calls),
            },
            lifecycle: FakeLifecycle {
                calls: Arc::clone(&calls),
                done: Mutex::new(self.actions_over),
                group: self.group,
                open: self.open_lifecycle,
            },
            membership: FakeMembership {
                view: Mutex::new(self.view),
                calls: Arc::clone(&calls),
                refuse_removal: self.refuse_removal,
                locked_elsewhere: self.locked_elsewhere,
                writes_refused: self.writes_refused,
                learners_ready: self.learners_ready,
                held_locks: Mutex::new(0),
            },
            metrics: sink,
            function_name: "etcd-lifecycle-hook".into(),
        };
        (handler, calls, lines)
    }
}

pub(super) fn minute() -> Deadline {
    Deadline::after(Duration::from_secs(60), Duration::from_secs(2))
}

fn lifecycle_event(transition: &str, instance: &str) -> Value {
    let (detail_type, origin, destination) = if transition.ends_with("LAUNCHING") {
        (
            "EC2 Instance-launch Lifecycle Action",
            "EC2",
            "AutoScalingGroup",
        )
    } else {
        (
            "EC2 Instance-terminate Lifecycle Action",
            "AutoScalingGroup",
            "EC2",
        )
    };
    json!({
        "detail-type": detail_type,
        "source": "aws.autoscaling",
        "detail": {
            "LifecycleActionToken": "tok-1",
            "AutoScalingGroupName": GROUP,
            "LifecycleHookName": "hook",
            "EC2InstanceId": instance,
            "LifecycleTransition": transition,
            "Origin": origin,
            "Destination": destination,
        }
    })
}

pub(super) fn terminate(n: u8) -> Value {
    lifecycle_event("autoscaling:EC2_INSTANCE_TERMINATING", &instance(n).id)
}

/// A scale-in back to the warm pool (`ReuseOnScaleIn`): the instance may come back in service.
pub(super) fn terminate_to_warm_pool(n: u8) -> Value {
    let mut event = terminate(n);
    event["detail"]["Destination"] = json!("WarmPool");
    event
}

pub(super) fn launch(id: &str) -> Value {
    lifecycle_event("autoscaling:EC2_INSTANCE_LAUNCHING", id)
}

fn complete_call(n: u8) -> String {
    format!("autoscaling:CompleteLifecycleAction {GROUP} hook token=tok-1 CONTINUE (i-{n})")
        .replace(&format!(" (i-{n})"), "")
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn terminate_a_follower_removes_it_then_completes() {
    let (h, calls, _) = World::three_nodes().build();
    let out = h.handle(&terminate(3), minute()).await.unwrap();
    assert_eq!(
        calls.all(),
        strs(&[
            "ec2:DescribeInstances etcd-asg",
            "etcd:Lock",
            "etcd:MemberList+Status",
            "etcd:MemberRemove 3333 via leader 1111",
            "etcd:Unlock",
            &complete_call(3),
        ])
    );
    let r = &out["results"][0];
    assert_eq!(
        (r["action"].as_str(), r["result"].as_str()),
        (Some("completed"), Some("CONTINUE"))
    );
    assert_eq!(r["member_removed"], true);
    assert_eq!(r["leader_moved"], false);
    assert_eq!(out["breakers"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn terminate_the_leader_moves_leadership_first() {
    let (h, calls, _) = World::three_nodes().build();
    let out = h.handle(&terminate(1), minute()).await.unwrap();
    assert_eq!(
        calls.all(),
        strs(&[
            "ec2:DescribeInstances etcd-asg",
            "etcd:Lock",
            "etcd:MemberList+Status",
            "etcd:MoveLeader 2222",
            "etcd:MemberRemove 1111 via leader 2222",
            "etcd:Unlock",
            &complete_call(1),
        ])
    );
    assert_eq!(out["results"][0]["leader_moved"], true);
}

#[tokio::test]
async fn unsafe_removal_holds_with_one_heartbeat_and_nothing_else() {
    let mut world = World::three_nodes();
    world
        .view
        .as_mut()
        .unwrap()
        .healthy
        .retain(|&id| id != member(2).id);
    let (h, calls, lines) = world.build();
    let err = h.handle(&terminate(3), minute()).await.unwrap_err();
    assert_eq!(
        calls.all(),
        strs(&[
            "ec2:DescribeInstances etcd-asg",
            "etcd:Lock",
            "etcd:MemberList+Status",
            "etcd:Unlock",
            "autoscaling:RecordLifecycleActionHeartbeat etcd-asg hook token=tok-1",
        ])
    );
    let text = err.to_string();
    assert!(
        text.starts_with("held i-00000000000000003 of etcd-asg"),
        "{text}"
    );
    assert!(
        text.contains("would break quorum: 1 of 2 remaining voting members healthy, 2 needed"),
        "{text}"
    );
    let lines = lines.lock().unwrap();
    assert!(
        lines.iter().any(|l| l.contains("\"QuorumHolds\":1.0")),
        "{lines:?}"
    );
}

/// A Spot instance that is scaled in (no interruption) is held like any other.
#[tokio::test]
async fn a_spot_instance_scaled_in_is_held_when_unsafe() {
    let mut world = World::three_nodes().silent(2);
    world.instances[2].spot = true;
    world.instances[2].spot_request_id = Some("sir-3".into());
    world.spot = vec![("sir-3".into(), "fulfilled".into())];
    let (h, calls, _) = world.build();
    let err = h.handle(&terminate(3), minute()).await.unwrap_err();
    assert!(matches!(err, HandlerError::Held { .. }), "{err}");
    assert!(calls
        .all()
        .contains(&"ec2:DescribeSpotInstanceRequests sir-3".to_string()));
    assert!(calls.all().iter().all(|c| !c.contains("Complete")));
}

/// A confirmed interruption cannot be held: an unsafe removal is tried again while the notice
/// runs (within the invocation), then the action is completed with the member kept.
#[tokio::test(start_paused = true)]
async fn a_confirmed_spot_interruption_is_retried_then_let_go_with_its_member_kept() {
    let mut world = World::three_nodes().silent(2);
    world.instances[2].spot = true;
    world.instances[2].spot_request_id = Some("sir-3".into());
    world.spot = vec![("sir-3".into(), "marked-for-termination".into())];
    let (h, calls, _) = world.build();
    let started = Instant::now();
    let out = h.handle(&terminate(3), minute()).await.unwrap();
    let tries = calls.all().iter().filter(|c| *c == "etcd:Lock").count();
    assert!(tries > 2, "retried: {:?}", calls.all());
    assert!(
        Instant::now() <= started + Duration::from_secs(58),
        "stopped before the deadline reserve"
    );
    assert_eq!(calls.all().last().unwrap(), &complete_call(3));
    let detail = out["results"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("marked-for-termination") && detail.contains("member kept"),
        "{detail}"
    );
    assert_eq!(out["results"][0]["member_removed"], false);
    assert!(calls.all().iter().all(|c| !c.contains("MemberRemove")));
}

#[tokio::test]
async fn a_confirmed_spot_interruption_is_removed_at_once_when_safe() {
    let mut world = World::three_nodes();
    world.instances[2].spot = true;
    world.instances[2].state = "shutting-down".into();
    let (h, calls, _) = world.build();
    let out = h.handle(&terminate(3), minute()).await.unwrap();
    assert_eq!(out["results"][0]["member_removed"], true);
    assert!(
        calls.all().iter().all(|c| !c.contains("Spot")),
        "shutting down says enough"
    );
}

#[tokio::test]
async fn refused_removal_is_a_hold() {
    let mut world = World::three_nodes();
    world.refuse_removal = true;
    let (h, calls, _) = world.build();
    let err = h.handle(&terminate(3), minute()).await.unwrap_err();
    assert!(matches!(err, HandlerError::Held { .. }), "{err}");
    assert!(err.to_string().contains("unhealthy cluster"));
    assert!(calls
        .all()
        .iter()
        .all(|c| !c.contains("CompleteLifecycleAction")));
}

#[tokio::test]
async fn no_member_means_already_gone_and_complete() {
    let mut world = World::three_nodes();
    world
        .view
        .as_mut()
        .unwrap()
        .members
        .retain(|m| m.id != member(3).id);
    let (h, calls, _) = world.build();
    let out = h.handle(&terminate(3), minute()).await.unwrap();
    assert_eq!(calls.all().last().unwrap(), &complete_call(3));
    assert!(calls.all().iter().all(|c| !c.contains("MemberRemove")));
    assert_eq!(out["results"][0]["member_removed"], false);
}

#[tokio::test]
async fn the_same_event_twice_does_no_harm() {
    let (h, calls, _) = World::three_nodes().build();
    h.handle(&terminate(3), minute()).await.unwrap();
    let out = h.handle(&terminate(3), minute()).await.unwrap();
    assert_eq!(out["results"][0]["result"], "ALREADY_DONE");
    let removals = calls
        .all()
        .iter()
        .filter(|c| c.contains("MemberRemove"))
        .count();
    assert_eq!(removals, 1);
}

#[tokio::test]
async fn other_groups_are_skipped_without_a_call() {
    let mut world = World::three_nodes();
    world.config.asg_names = vec!["another-group".into()];
    let (h, calls, _) = world.build();
    let out = h.handle(&terminate(3), minute()).await.unwrap();
    assert!(calls.all().is_empty());
    assert_eq!(out["results"][0]["action"], "skipped");
}

#[tokio::test]
async fn inside_the_deadline_reserve_only_a_heartbeat_is_sent() {
    let (h, calls, _) = World::three_nodes().build();
    let short = Deadline::after(Duration::from_millis(1500), Duration::from_secs(2));
    let err = h.handle(&terminate(3), short).await.unwrap_err();
    assert_eq!(
        calls.all(),
        strs(&["autoscaling:RecordLifecycleActionHeartbeat etcd-asg hook token=tok-1"])
    );
    assert!(err.to_string().contains("too little time left"));
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_fails_the_flow_before_any_call() {
    let (h, calls, _) = World::three_nodes().build();
    let etcd = h.resilience.breaker(Dependency::Etcd);
    for _ in 0..5 {
        etcd.acquire(Instant::now())
            .unwrap()
            .failure(Instant::now());
    }
    let err = h.handle(&terminate(3), minute()).await.unwrap_err();
    assert_eq!(err.to_string(), "circuit open for etcd; retry after 60s");
    assert_eq!(
        calls.all(),
        strs(&["autoscaling:RecordLifecycleActionHeartbeat etcd-asg hook token=tok-1"]),
        "no EC2 or etcd call; the instance is held"
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_auto_scaling_circuit_means_no_call_at_all() {
    let (h, calls, _) = World::three_nodes().build();
    let autoscaling = h.resilience.breaker(Dependency::Autoscaling);
    for _ in 0..5 {
        autoscaling
            .acquire(Instant::now())
            .unwrap()
            .failure(Instant::now());
    }
    let err = h.handle(&terminate(3), minute()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "circuit open for autoscaling; retry after 60s"
    );
    assert!(calls.all().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_sweep_during_an_etcd_outage_holds_every_waiting_instance() {
    let mut world = World::three_nodes();
    world.config.asg_names = vec![GROUP.into()];
    world.group.hooks = vec![Hook {
        name: "etcd-terminate".into(),
        transition: Transition::Terminating,
    }];
    world.group.waiting = [2, 3]
        .map(|n| WaitingInstance {
            instance_id: instance(n).id,
            lifecycle_state: "Terminating:Wait".into(),
        })
        .to_vec();
    let (h, calls, _) = world.build();
    let etcd = h.resilience.breaker(Dependency::Etcd);
    for _ in 0..5 {
        etcd.acquire(Instant::now())
            .unwrap()
            .failure(Instant::now());
    }
    let sweep = json!({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}});
    let err = h.handle(&sweep, minute()).await.unwrap_err();
    assert!(err.to_string().contains("circuit open for etcd"), "{err}");
    let beats: Vec<String> = calls
        .all()
        .into_iter()
        .filter(|c| c.contains("Heartbeat"))
        .collect();
    // Each of the two: a heartbeat before any work (two are waiting), then its hold's.
    assert_eq!(
        beats.len(),
        4,
        "both waiting instances heartbeated first, then held: {:?}",
        calls.all()
    );
    assert!(calls.all().iter().all(|c| !c.starts_with("etcd:")));
}

#[tokio::test(start_paused = true)]
async fn a_circuit_that_opens_mid_flow_is_what_the_invocation_says() {
    let mut world = World::three_nodes();
    world.open_lifecycle = Some(CircuitOpen {
        dependency: Dependency::Autoscaling,
        retry_after: Duration::from_secs(42),
    });
    let (h, _, _) = world.build();
    let err = h.handle(&terminate(3), minute()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "circuit open for autoscaling; retry after 42s"
    );
}

#[tokio::test]
async fn launch_removes_stale_members_one_at_a_time() {
    let mut world = World::three_nodes();
    // Instance 3 died without a hook; instance 4 is launching.
    world.instances = vec![instance(1), instance(2), instance(4)];
    let (h, calls, _) = world.silent(3).build();
    let out = h.handle(&launch(&instance(4).id), minute()).await.unwrap();
    assert_eq!(
        calls.all(),
        strs(&[
            "ec2:DescribeInstances etcd-asg",
            "etcd:Lock",
            "etcd:MemberList+Status",
            "ec2:DescribeInstances existing ids=i-00000000000000003 ips=",
            "etcd:MemberRemove 3333 via leader 1111",
            "etcd:MemberList+Status",
            "etcd:Unlock",
            &complete_call(4),
        ])
    );
    assert!(out["results"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("stale member i-00000000000000003"));
}

#[tokio::test]
async fn launch_adds_a_learner_when_asked() {
    let mut world = World::three_nodes();
    world.instances.push(instance(4));
    world.config.etcd_add_learner_on_launch = true;
    // Clients on http, peers on https (as the cluster's own peer URLs say).
    world.config.etcd_client_scheme = crate::config::Scheme::Http;
    let (h, calls, _) = world.build();
    h.handle(&launch(&instance(4).id), minute()).await.unwrap();
    assert!(calls
        .all()
        .contains(&"etcd:MemberAdd learner i-00000000000000004 https://10.0.0.4:2380".to_string()));
}

#[tokio::test]
async fn no_learner_while_another_catches_up() {
    let mut world = World::three_nodes();
    world.instances.extend([instance(4), instance(5)]);
    let mut learner = member(5);
    learner.is_learner = true;
    world.view.as_mut().unwrap().members.push(learner);
    world.config.etcd_add_learner_on_launch = true;
    let (h, calls, _) = world.build();
    let err = h
        .handle(&launch(&instance(4).id), minute())
        .await
        .unwrap_err();
    assert!(calls.all().iter().all(|c| !c.contains("MemberAdd")));
    assert!(matches!(err, HandlerError::Held { .. }), "{err}");
    assert!(err.to_string().contains("another learner"), "{err}");
    assert!(calls.all().iter().any(|c| c.contains("Heartbeat")));
    assert!(calls.all().iter().all(|c| !c.contains("Complete")));
}

#[tokio::test]
async fn first_launch_bootstraps_without_asking_etcd() {
    let mut world = World::three_nodes();
    world.instances = vec![instance(1)];
    world.view = None;
    let (h, calls, _) = world.build();
    let out = h.handle(&launch(&instance(1).id), minute()).await.unwrap();
    assert_eq!(
        calls.all(),
        strs(&["ec2:DescribeInstances etcd-asg", &complete_call(1)])
    );
    assert!(out["results"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("bootstrapped"));
}

#[tokio::test]
async fn unreachable_etcd_on_launch_means_bootstrap() {
    let mut world = World::three_nodes();
    world.view = None;
    let (h, calls, _) = world.build();
    let out = h
        .handle(&launch("i-00000000000000009"), minute())
        .await
        .unwrap();
    assert_eq!(out["results"][0]["result"], "CONTINUE");
    assert_eq!(
        calls.all(),
        strs(&[
            "ec2:DescribeInstances etcd-asg",
            "autoscaling:CompleteLifecycleAction etcd-asg hook token=tok-1 CONTINUE"
        ])
    );
}

#[tokio::test]
async fn warm_pool_launch_only_completes() {
    let (h, calls, _) = World::three_nodes().build();
    let mut event = launch("i-00000000000000009");
    event["detail"]["Destination"] = json!("WarmPool");
    h.handle(&event, minute()).await.unwrap();
    assert_eq!(
        calls.all(),
        strs(&["autoscaling:CompleteLifecycleAction etcd-asg hook token=tok-1 CONTINUE"])
    );
}

#[tokio::test]
async fn sweep_finishes_an_instance_left_in_terminating_wait() {
    let mut world = World::three_nodes();
    world.config.asg_names = vec![GROUP.into()];
    world.group = GroupLifecycle {
        hooks: vec![Hook {
            name: "etcd-terminate".into(),
            transition: Transition::Terminating,
        }],
        waiting: vec![WaitingInstance {
            instance_id: instance(3).id,
            lifecycle_state: "Terminating:Wait".into(),
        }],
        retained: vec![],
        in_service: vec![],
    };
    let (h, calls, _) = world.build();
    let sweep = json!({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}});
    let out = h.handle(&sweep, minute()).await.unwrap();
    let calls = calls.all();
    assert!(
        calls.contains(&"etcd:MemberRemove 3333 via leader 1111".to_string()),
        "{calls:?}"
    );
    assert!(calls.contains(
        &"autoscaling:CompleteLifecycleAction etcd-asg etcd-terminate instance=i-00000000000000003 CONTINUE".to_string()
    ));
    assert_eq!(out["results"][0]["action"], "completed");
}

#[tokio::test]
async fn sweep_holds_what_is_unsafe_and_answers_an_error() {
    let mut world = World::three_nodes();
    world.config.asg_names = vec![GROUP.into()];
    world
        .view
        .as_mut()
        .unwrap()
        .healthy
        .retain(|&id| id != member(2).id);
    world.group.hooks = vec![Hook {
        name: "etcd-terminate".into(),
        transition: Transition::Terminating,
    }];
    world.group.waiting = vec![WaitingInstance {
        instance_id: instance(3).id,
        lifecycle_state: "Terminating:Wait".into(),
    }];
    let (h, calls, _) = world.build();
    let sweep = json!({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}});
    let err = h.handle(&sweep, minute()).await.unwrap_err();
    assert!(
        err.to_string().contains("held i-00000000000000003"),
        "{err}"
    );
    assert!(calls.all().contains(
        &"autoscaling:RecordLifecycleActionHeartbeat etcd-asg etcd-terminate instance=i-00000000000000003".to_string()
    ));
}

#[tokio::test]
async fn sweep_without_groups_is_a_clear_error() {
    let (h, calls, _) = World::three_nodes().build();
    let sweep = json!({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}});
    let err = h.handle(&sweep, minute()).await.unwrap_err();
    assert!(err.to_string().contains("ASG_NAMES"));
    assert!(calls.all().is_empty());
}

#[tokio::test]
async fn sqs_batch_reports_only_the_failed_records() {
    let mut world = World::three_nodes();
    world
        .view
        .as_mut()
        .unwrap()
        .healthy
        .retain(|&id| id != member(2).id);
    let (h, _, _) = world.build();
    let body = |n: u8| {
        json!({
            "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
            "AutoScalingGroupName": GROUP, "LifecycleHookName": "hook",
            "LifecycleActionToken": format!("tok-{n}"), "EC2InstanceId": instance(n).id,
        })
        .to_string()
    };
    let batch = json!({"Records": [
        {"messageId": "m-held", "body": body(3), "eventSource": "aws:sqs"},
        {"messageId": "m-poison", "body": "not json", "eventSource": "aws:sqs"},
        {"messageId": "m-gone", "body": body(2), "eventSource": "aws:sqs"},
    ]});
    let out = h.handle(&batch, minute()).await.unwrap();
    let failed: Vec<&str> = out["batchItemFailures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap())
        .collect();
    // Removing 3 is unsafe with 2 down: held. Removing 2 (the dead one) is safe: done.
    assert_eq!(failed, vec!["m-held", "m-poison"]);
}

#[tokio::test]
async fn test_notifications_and_bad_input_make_no_call() {
    let (h, calls, _) = World::three_nodes().build();
    let note = json!({"Records": [{"EventSource": "aws:sns", "Sns": {"Message": json!({
        "Event": "autoscaling:TEST_NOTIFICATION", "AutoScalingGroupName": GROUP}).to_string()}}]});
    let out = h.handle(&note, minute()).await.unwrap();
    assert_eq!(out["results"][0]["action"], "ignored");
    let err = h
        .handle(
            &json!({"detail-type": "EC2 Instance-terminate Lifecycle Action", "detail": {}}),
            minute(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, HandlerError::BadInput(_)));
    assert!(calls.all().is_empty());
}

/// Every EMF line is a valid CloudWatch Embedded Metric Format document.
#[tokio::test]
async fn emf_lines_follow_the_schema() {
    let (h, _, lines) = World::three_nodes().build();
    h.handle(&terminate(3), minute()).await.unwrap();
    let lines = lines.lock().unwrap().clone();
    assert!(lines.len() >= 2, "{lines:?}");
    let mut names = Vec::new();
    for line in &lines {
        let doc: Value = serde_json::from_str(line).unwrap();
        let aws = &doc["_aws"];
        assert!(aws["Timestamp"].as_u64().unwrap() > 1_600_000_000_000);
        for directive in aws["CloudWatchMetrics"].as_array().unwrap() {
            assert_eq!(directive["Namespace"], crate::metrics::NAMESPACE);
            for set in directive["Dimensions"].as_array().unwrap() {
                for dim in set.as_array().unwrap() {
                    assert!(
                        doc[dim.as_str().unwrap()].is_string(),
                        "dimension {dim} has a value in {line}"
                    );
                }
            }
            for metric in directive["Metrics"].as_array().unwrap() {
                let name = metric["Name"].as_str().unwrap();
                assert!(["Count", "Milliseconds"].contains(&metric["Unit"].as_str().unwrap()));
                assert!(doc[name].is_number(), "{name} is numeric in {line}");
                names.push(name.to_string());
            }
        }
    }
    for expected in [
        "MembersRemoved",
        "QuorumHolds",
        "Retries",
        "HandlerDuration",
        "LifecycleActionsCompleted",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    assert!(lines.iter().any(|l| l.contains("\"MembersRemoved\":1.0")));
}

#[tokio::test(start_paused = true)]
async fn breaker_transitions_are_emitted() {
    let (h, _, lines) = World::three_nodes().build();
    let ec2 = h.resilience.breaker(Dependency::Ec2);
    for _ in 0..5 {
        ec2.acquire(Instant::now()).unwrap().failure(Instant::now());
    }
    let _ = h.handle(&terminate(3), minute()).await;
    let lines = lines.lock().unwrap();
    let doc = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|d| d.get("BreakerTransitions").is_some())
        .expect("a BreakerTransitions document");
    assert_eq!(
        (doc["Dependency"].as_str(), doc["State"].as_str()),
        (Some("ec2"), Some(State::Open.as_str()))
    );
}

mod bad_input {
    use super::*;
    use proptest::prelude::*;

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-zA-Z:_ -]{0,12}".prop_map(Value::from),
            prop::sample::select(vec![
                "aws:sqs",
                "aws:sns",
                "Notification",
                "Scheduled Event",
                "autoscaling:EC2_INSTANCE_TERMINATING",
                "EC2 Instance-terminate Lifecycle Action",
                "i-0123",
                "etcd-asg",
            ])
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let keys = prop::sample::select(vec![
                "Records",
                "detail",
                "detail-type",
                "body",
                "Sns",
                "Message",
                "eventSource",
                "EventSource",
                "LifecycleTransition",
                "EC2InstanceId",
                "LifecycleActionToken",
                "AutoScalingGroupName",
                "LifecycleHookName",
                "Type",
                "Event",
                "messageId",
                "Destination",
            ]);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(keys, inner, 0..6).prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
            ]
        })
    }

    /// A valid terminate event with one field replaced by an arbitrary value.
    fn mutated_event() -> impl Strategy<Value = Value> {
        let fields = prop::sample::select(vec![
            "LifecycleActionToken",
            "AutoScalingGroupName",
            "LifecycleHookName",
            "EC2InstanceId",
            "LifecycleTransition",
        ]);
        (fields, arbitrary_json()).prop_map(|(field, value)| {
            let mut event = terminate(3);
            event["detail"][field] = value;
            event
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]
        /// Ten thousand arbitrary and mutated inputs: none panics, and input the parser rejects never reaches
        /// an AWS or etcd call.
        #[test]
        fn rejected_input_makes_no_call(payload in prop_oneof![arbitrary_json(), mutated_event()]) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let (h, calls, _) = World::three_nodes().build();
            let parsed = event::parse(&payload);
            let answer = runtime.block_on(h.handle(&payload, minute()));
            if let Err(e) = parsed {
                prop_assert!(calls.all().is_empty(), "{e} but calls {:?}", calls.all());
                prop_assert!(matches!(answer, Err(HandlerError::BadInput(_))));
            }
        }
    }
}

mod layouts {
    //! The layouts operators run: several groups, hooks of other tools, a voter floor, learners
    //! over an instance refresh, concurrent invocations.
    use super::*;

    fn sweep_event() -> Value {
        json!({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}})
    }

    fn held_locks(h: &FakeHandler) -> usize {
        *h.membership.held_locks.lock().unwrap()
    }

    #[tokio::test]
    async fn another_tools_hook_is_acknowledged_and_left_alone() {
        let mut world = World::three_nodes();
        world.config.lifecycle_hook_names = vec!["etcd-terminate".into()];
        let (h, calls, _) = world.build();
        // `terminate` names the hook "hook": not ours.
        let out = h.handle(&terminate(3), minute()).await.unwrap();
        assert!(calls.all().is_empty(), "{:?}", calls.all());
        let r = &out["results"][0];
        assert_eq!(r["action"], "skipped");
        assert!(r["detail"]
            .as_str()
            .unwrap()
            .contains("not in LIFECYCLE_HOOK_NAMES"));
    }

    #[tokio::test]
    async fn the_sweep_acts_on_each_of_our_hooks_of_the_transition() {
        let mut world = World::three_nodes();
        world.config.asg_names = vec![GROUP.into()];
        world.group.hooks = ["etcd-terminate", "etcd-terminate-2"]
            .map(|name| Hook {
                name: name.into(),
                transition: Transition::Terminating,
            })
            .into_iter()
            .chain([Hook {
                name: "etcd-launch".into(),
                transition: Transition::Launching,
            }])
            .collect();
        world.group.waiting = vec![WaitingInstance {
            instance_id: instance(3).id,
            lifecycle_state: "Terminating:Wait".into(),
        }];
        let (h, calls, _) = world.build();
        h.handle(&sweep_event(), minute()).await.unwrap();
        let completions: Vec<String> = calls
            .all()
            .into_iter()
            .filter(|c| c.contains("CompleteLifecycleAction"))
            .collect();
        assert_eq!(
            completions,
            strs(&[
                "autoscaling:CompleteLifecycleAction etcd-asg etcd-terminate instance=i-00000000000000003 CONTINUE",
                "autoscaling:CompleteLifecycleAction etcd-asg etcd-terminate-2 instance=i-00000000000000003 CONTINUE",
            ])
        );
    }

    #[tokio::test]
    async fn a_member_that_answers_is_never_stale_whatever_its_group() {
        // Member 3 answers but has no instance in this group (its instance is in another
        // zone's group, or is no EC2 instance at all).
        let mut world = World::three_nodes();
        world.config.asg_names = vec![GROUP.into()];
        world.instances = vec![instance(1), instance(2)];
        let (h, calls, _) = world.build();
        let out = h.handle(&sweep_event(), minute()).await.unwrap();
        assert!(calls.all().iter().all(|c| !c.contains("MemberRemove")));
        assert!(
            calls.all().iter().all(|c| !c.contains("existing")),
            "no silent member: no EC2 lookup"
        );
        assert_eq!(out["results"][0]["detail"], "membership matches the group");
    }

    #[tokio::test]
    async fn a_silent_member_whose_instance_still_exists_elsewhere_is_kept() {
        let mut world = World::three_nodes().silent(3);
        world.config.asg_names = vec![GROUP.into()];
        let mut stopped = instance(3);
        stopped.state = "stopped".into();
        world.instances = vec![instance(1), instance(2)];
        world.elsewhere = vec![stopped];
        let (h, calls, _) = world.build();
        h.handle(&sweep_event(), minute()).await.unwrap();
        assert!(
            calls
                .all()
                .contains(&"ec2:DescribeInstances existing ids=i-00000000000000003 ips=".into()),
            "{:?}",
            calls.all()
        );
        assert!(calls.all().iter().all(|c| !c.contains("MemberRemove")));
        assert_eq!(held_locks(&h), 0);
    }

    #[tokio::test]
    async fn two_voters_are_never_shrunk_to_one_by_default() {
        let mut world = World::three_nodes();
        world.instances.truncate(2);
        world.view.as_mut().unwrap().members.truncate(2);
        world.view.as_mut().unwrap().healthy.truncate(2);
        let (h, calls, _) = world.build();
        let err = h.handle(&terminate(2), minute()).await.unwrap_err();
        assert!(matches!(err, HandlerError::Held { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("would leave too few voters")
                && text.contains("fewer than ETCD_MIN_VOTERS=2"),
            "{text}"
        );
        assert!(calls.all().iter().all(|c| !c.contains("MemberRemove")));

        let mut world = World::three_nodes();
        world.instances.truncate(2);
        world.view.as_mut().unwrap().members.truncate(2);
        world.view.as_mut().unwrap().healthy.truncate(2);
        world.config.etcd_min_voters = 1;
        let (h, _, _) = world.build();
        let out = h.handle(&terminate(2), minute()).await.unwrap();
        assert_eq!(out["results"][0]["member_removed"], true);
    }

    #[tokio::test]
    async fn a_lock_held_by_another_invocation_is_a_hold() {
        let mut world = World::three_nodes();
        world.locked_elsewhere = true;
        let (h, calls, _) = world.build();
        let err = h.handle(&terminate(3), minute()).await.unwrap_err();
        assert!(matches!(err, HandlerError::Held { .. }), "{err}");
        assert!(err.to_string().contains("membership lock"), "{err}");
        assert_eq!(
            calls.all(),
            strs(&[
                "ec2:DescribeInstances etcd-asg",
                "etcd:Lock",
                "autoscaling:RecordLifecycleActionHeartbeat etcd-asg hook token=tok-1",
            ]),
            "the lock refused: nothing read, nothing changed"
        );
    }

    #[tokio::test]
    async fn a_lock_held_elsewhere_holds_a_launch_too() {
        let mut world = World::three_nodes();
        world.instances.push(instance(4));
        world.locked_elsewhere = true;
        let (h, _, _) = world.build();
        let err = h
            .handle(&launch(&instance(4).id), minute())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("membership lock"), "{err}");
    }

    #[tokio::test]
    async fn a_terminate_promotes_caught_up_learners_before_its_quorum_check() {
        // Two voters and a caught-up learner: without the promotion, removing a voter would
        // leave one.
        let mut world = World::three_nodes();
        world.view.as_mut().unwrap().members[2].is_learner = true;
        world.learners_ready = true;
        let (h, calls, _) = world.build();
        let out = h.handle(&terminate(2), minute()).await.unwrap();
        assert_eq!(
            calls.all(),
            strs(&[
                "ec2:DescribeInstances etcd-asg",
                "etcd:Lock",
                "etcd:MemberList+Status",
                "etcd:MemberPromote 3333",
                "etcd:MemberList+Status",
                "etcd:MemberRemove 2222 via leader 1111",
                "etcd:Unlock",
                &complete_call(2),
            ])
        );
        let detail = out["results"][0]["detail"].as_str().unwrap();
        assert!(
            detail.contains("learner i-00000000000000003 promoted"),
            "{detail}"
        );
    }

    #[tokio::test]
    async fn a_launch_with_a_stale_member_left_is_held_not_let_in_without_its_member() {
        // Member 3 is silent and its instance gone, but removing it is unsafe (2 is down too).
        let mut world = World::three_nodes().silent(2).silent(3);
        world.instances = vec![instance(1), instance(2), instance(4)];
        world.config.etcd_add_learner_on_launch = true;
        let (h, calls, _) = world.build();
        let err = h
            .handle(&launch(&instance(4).id), minute())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("stale member"), "{text}");
        assert!(calls.all().iter().all(|c| !c.contains("MemberAdd")));
        assert!(calls.all().iter().all(|c| !c.contains("Complete")));
        assert_eq!(held_locks(&h), 0);
    }

    #[tokio::test]
    async fn the_sweep_adds_a_learner_for_an_in_service_instance_without_a_member() {
        let mut world = World::three_nodes();
        world.config.asg_names = vec![GROUP.into()];
        world.config.etcd_add_learner_on_launch = true;
        world.instances.push(instance(4));
        world.group.in_service = (1..=4).map(|n| instance(n).id).collect();
        let (h, calls, _) = world.build();
        let out = h.handle(&sweep_event(), minute()).await.unwrap();
        assert!(calls
            .all()
            .contains(&"etcd:MemberAdd learner i-00000000000000004 https://10.0.0.4:2380".into()));
        let detail = out["results"][0]["detail"].as_str().unwrap();
        assert!(
            detail.contains("i-00000000000000004 has no member: added as learner"),
            "{detail}"
        );
    }

    #[tokio::test]
    async fn every_group_of_the_cluster_is_asked_for_instances_in_one_call() {
        let mut world = World::three_nodes();
        world.config.asg_names = vec!["etcd-zone-b".into(), GROUP.into()];
        let (h, calls, _) = world.build();
        h.handle(&terminate(3), minute()).await.unwrap();
        assert_eq!(
            calls.all()[0],
            "ec2:DescribeInstances etcd-asg,etcd-zone-b",
            "the event's group first, then the others"
        );
    }

    #[tokio::test]
    async fn no_learner_is_added_while_a_member_names_no_instance_or_ip() {
        // Member 3 is named by a host name with host-name URLs: it may well be instance 3's,
        // which would then get a second member.
        let mut world = World::three_nodes();
        world.config.asg_names = vec![GROUP.into()];
        world.config.etcd_add_learner_on_launch = true;
        let m3 = &mut world.view.as_mut().unwrap().members[2];
        m3.name = "etcd-3".into();
        m3.peer_urls = vec!["https://etcd-3.corp.example:2380".into()];
        m3.client_urls = vec!["https://etcd-3.corp.example:2379".into()];
        world.group.in_service = (1..=3).map(|n| instance(n).id).collect();
        let (h, calls, _) = world.build();
        let out = h.handle(&sweep_event(), minute()).await.unwrap();
        assert!(calls.all().iter().all(|c| !c.contains("MemberAdd")));
        let detail = out["results"][0]["detail"].as_str().unwrap();
        assert!(
            detail.contains("no missing learner added: member etcd-3"),
            "{detail}"
        );
    }

    #[tokio::test]
    async fn a_terminating_instance_the_group_no_longer_lists_is_looked_up_by_id() {
        let mut world = World::three_nodes();
        let mut stopped = instance(3);
        stopped.state = "stopped".into();
        stopped.private_dns = None;
        world.instances.truncate(2);
        world.elsewhere = vec![stopped];
        // Its member is named for its IP under a custom DHCP domain.
        world.view.as_mut().unwrap().members[2].name = "ip-10-0-0-3.corp.example".into();
        let (h, calls, _) = world.build();
        let out = h.handle(&terminate(3), minute()).await.unwrap();
        assert!(calls
            .all()
            .contains(&"ec2:DescribeInstances id=i-00000000000000003".into()));
        assert_eq!(out["results"][0]["member_removed"], true);
    }
}

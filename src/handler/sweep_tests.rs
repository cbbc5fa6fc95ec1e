//! The sweep over warm pools and several groups, with the fakes of `handler/tests.rs` and a
//! lifecycle fake of its own: each group listed on its own (or failing), and the lifecycle
//! actions really waiting, so completing or heartbeating a hook the instance does not wait on
//! answers as AWS does ("no active action"). Every call goes into one log, in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::super::tests::{instance, minute, Calls, FakeFleet, FakeMembership, World};
use super::super::{Action, Handler, HandlerError, InstanceResult};
use crate::model::{
    ActionKey, AwsError, Completion, GroupLifecycle, Heartbeat, Hook, Lifecycle, Transition,
    WaitingInstance, WaitingOn,
};
use crate::resilience::policy::Deadline;

/// Auto Scaling with a listing per group and the actions that are waiting.
struct Groups {
    calls: Arc<Calls>,
    listings: HashMap<String, Result<GroupLifecycle, String>>,
    /// (group, hook, instance) of each action waiting.
    active: Mutex<Vec<(String, String, String)>>,
}

impl Groups {
    fn take(&self, key: &ActionKey) -> bool {
        let mut active = self.active.lock().unwrap();
        let before = active.len();
        active.retain(|a| *a != action(&key.group, &key.hook, &key.instance_id));
        active.len() < before
    }

    fn waiting(&self, key: &ActionKey) -> bool {
        let found = action(&key.group, &key.hook, &key.instance_id);
        self.active.lock().unwrap().contains(&found)
    }
}

fn action(group: &str, hook: &str, instance_id: &str) -> (String, String, String) {
    (group.into(), hook.into(), instance_id.into())
}

impl Lifecycle for Groups {
    async fn complete(&self, key: &ActionKey, _: &Deadline) -> Result<Completion, AwsError> {
        self.calls
            .push(complete_call(&key.group, &key.hook, &key.instance_id));
        Ok(if self.take(key) {
            Completion::Completed
        } else {
            Completion::AlreadyDone
        })
    }

    async fn heartbeat(&self, key: &ActionKey, _: &Deadline) -> Result<Heartbeat, AwsError> {
        self.calls
            .push(heartbeat_call(&key.group, &key.hook, &key.instance_id));
        Ok(if self.waiting(key) {
            Heartbeat::Recorded
        } else {
            Heartbeat::ActionOver
        })
    }

    async fn group_lifecycle(&self, group: &str, _: &Deadline) -> Result<GroupLifecycle, AwsError> {
        self.calls.push(format!("autoscaling:Describe {group}"));
        match self.listings.get(group) {
            Some(Ok(listing)) => Ok(listing.clone()),
            Some(Err(detail)) => Err(AwsError::Failed {
                operation: "autoscaling:DescribeAutoScalingGroups",
                detail: detail.clone(),
            }),
            None => Ok(GroupLifecycle::default()),
        }
    }
}

fn complete_call(group: &str, hook: &str, instance_id: &str) -> String {
    format!("autoscaling:CompleteLifecycleAction {group} {hook} instance={instance_id} CONTINUE")
}

fn heartbeat_call(group: &str, hook: &str, instance_id: &str) -> String {
    format!("autoscaling:RecordLifecycleActionHeartbeat {group} {hook} instance={instance_id}")
}

/// A group's etcd hooks, `<group>-launch` and `<group>-terminate`, and its waiting instances.
fn listing(group: &str, waiting: &[(u8, &str)]) -> GroupLifecycle {
    GroupLifecycle {
        hooks: vec![
            Hook {
                name: format!("{group}-launch"),
                transition: Transition::Launching,
            },
            Hook {
                name: format!("{group}-terminate"),
                transition: Transition::Terminating,
            },
        ],
        waiting: waiting
            .iter()
            .map(|(n, state)| WaitingInstance {
                instance_id: instance(*n).id,
                lifecycle_state: (*state).into(),
            })
            .collect(),
        ..GroupLifecycle::default()
    }
}

type SweepHandler = Handler<FakeFleet, Groups, FakeMembership>;

/// `world` (its `asg_names` set to the listed groups, in order) with `Groups` for Auto Scaling.
fn build(
    mut world: World,
    listings: Vec<(&str, Result<GroupLifecycle, String>)>,
    active: &[(&str, &str, u8)],
) -> (SweepHandler, Arc<Calls>) {
    world.config.asg_names = listings.iter().map(|(g, _)| g.to_string()).collect();
    let (h, calls, _) = world.build();
    let Handler {
        config,
        resilience,
        fleet,
        membership,
        metrics,
        function_name,
        lifecycle: _,
    } = h;
    let lifecycle = Groups {
        calls: Arc::clone(&calls),
        listings: listings
            .into_iter()
            .map(|(g, l)| (g.to_string(), l))
            .collect(),
        active: Mutex::new(
            active
                .iter()
                .map(|(g, hook, n)| action(g, hook, &instance(*n).id))
                .collect(),
        ),
    };
    let h = Handler {
        config,
        resilience,
        fleet,
        lifecycle,
        membership,
        metrics,
        function_name,
    };
    (h, calls)
}

async fn sweep(h: &SweepHandler) -> Vec<InstanceResult> {
    h.sweep(&minute()).await.expect("ASG_NAMES is set")
}

fn result_of(results: &[InstanceResult], n: u8) -> &InstanceResult {
    let id = instance(n).id;
    results
        .iter()
        .find(|r| r.instance_id.as_deref() == Some(id.as_str()))
        .unwrap_or_else(|| panic!("no result for {id}"))
}

fn position(calls: &[String], call: &str) -> usize {
    calls
        .iter()
        .position(|c| c == call)
        .unwrap_or_else(|| panic!("no call {call:?} in {calls:?}"))
}

#[test]
fn each_wait_state_says_what_it_may_be_waiting_on() {
    let on = |state: &str| {
        WaitingInstance {
            instance_id: "i-1".into(),
            lifecycle_state: state.into(),
        }
        .waiting_on()
    };
    assert_eq!(on("Pending:Wait"), Some(WaitingOn::Launch));
    assert_eq!(on("Terminating:Wait"), Some(WaitingOn::Terminate));
    assert_eq!(on("Warmed:Terminating:Wait"), Some(WaitingOn::Terminate));
    assert_eq!(
        on("Warmed:Pending:Wait"),
        Some(WaitingOn::LaunchOrTerminate)
    );
    assert_eq!(on("InService"), None);
    assert_eq!(on("Warmed:Pending"), None);
    // The warm pool's ambiguous wait takes the terminate flow, on the hooks of both.
    let both = WaitingOn::LaunchOrTerminate;
    assert_eq!(both.flow(), Transition::Terminating);
    assert_eq!(
        both.transitions(),
        &[Transition::Terminating, Transition::Launching]
    );
    assert_eq!(WaitingOn::Launch.flow(), Transition::Launching);
}

/// Scale-in back into the warm pool: the instance waits in `Warmed:Pending:Wait` on its
/// terminate hook. Member 2 is down, so removing instance 3's member would break quorum.
#[tokio::test]
async fn a_warm_pool_scale_in_whose_removal_is_unsafe_is_held_on_its_terminate_hook() {
    let g = "etcd-asg";
    let (h, calls) = build(
        World::three_nodes().silent(2),
        vec![(g, Ok(listing(g, &[(3, "Warmed:Pending:Wait")])))],
        &[(g, "etcd-asg-terminate", 3)],
    );

    let results = sweep(&h).await;

    let r = result_of(&results, 3);
    assert_eq!(r.action, Action::Held, "{r:?}");
    assert_eq!(r.transition, Some(Transition::Terminating));
    assert!(
        matches!(&r.error, Some(HandlerError::Held { reason, .. }) if reason.contains("would break quorum")),
        "{r:?}"
    );
    let calls = calls.all();
    let id = instance(3).id;
    assert!(
        calls.contains(&heartbeat_call(g, "etcd-asg-terminate", &id)),
        "{calls:?}"
    );
    assert!(
        calls.iter().all(|c| !c.contains("CompleteLifecycleAction")),
        "nothing completed, not even as a launch: {calls:?}"
    );
    assert!(
        calls.iter().all(|c| !c.contains("MemberRemove")),
        "{calls:?}"
    );
    assert_eq!(
        h.lifecycle.active.lock().unwrap().len(),
        1,
        "the terminate action still waits"
    );
}

/// The same scale-in when removing the member is safe: removed, then the terminate action
/// completed (and the launch hook, which does not wait, answers "already done").
#[tokio::test]
async fn a_warm_pool_scale_in_removes_its_member_then_completes() {
    let g = "etcd-asg";
    let (h, calls) = build(
        World::three_nodes(),
        vec![(g, Ok(listing(g, &[(3, "Warmed:Pending:Wait")])))],
        &[(g, "etcd-asg-terminate", 3)],
    );

    let results = sweep(&h).await;

    let r = result_of(&results, 3);
    assert_eq!(
        (r.action, r.result.as_str()),
        (Action::Completed, "CONTINUE"),
        "{r:?}"
    );
    assert!(r.member_removed, "{r:?}");
    assert!(r.detail.starts_with("Warmed:Pending:Wait"), "{r:?}");
    let calls = calls.all();
    let removed = position(&calls, "etcd:MemberRemove 3333 via leader 1111");
    let completed = position(
        &calls,
        &complete_call(g, "etcd-asg-terminate", &instance(3).id),
    );
    assert!(removed < completed, "{calls:?}");
    assert!(h.lifecycle.active.lock().unwrap().is_empty());
}

/// A fresh instance launching into the warm pool waits in the same state on its launch hook.
/// It has no member: both hooks are completed, nothing in etcd changes.
#[tokio::test]
async fn a_warm_pool_launch_without_a_member_completes_both_hooks() {
    let g = "etcd-asg";
    let mut world = World::three_nodes();
    world.instances.push(instance(4));
    let (h, calls) = build(
        world,
        vec![(g, Ok(listing(g, &[(4, "Warmed:Pending:Wait")])))],
        &[(g, "etcd-asg-launch", 4)],
    );

    let results = sweep(&h).await;

    let r = result_of(&results, 4);
    assert_eq!(
        (r.action, r.result.as_str()),
        (Action::Completed, "CONTINUE"),
        "{r:?}"
    );
    assert!(!r.member_removed);
    let calls = calls.all();
    let id = instance(4).id;
    for hook in ["etcd-asg-terminate", "etcd-asg-launch"] {
        assert!(calls.contains(&complete_call(g, hook, &id)), "{calls:?}");
    }
    assert!(
        calls
            .iter()
            .all(|c| !c.contains("MemberRemove") && !c.contains("MemberAdd")),
        "{calls:?}"
    );
    assert!(h.lifecycle.active.lock().unwrap().is_empty());
}

/// Three groups, each with instances waiting: every one of them is heartbeated, on each of
/// its group's hooks of its transition, after every group is listed and before the first
/// group's work (EC2, etcd, completions) starts.
#[tokio::test]
async fn every_waiting_instance_of_every_group_is_heartbeated_before_any_work() {
    let waiting = [
        ("etcd-a", 3, "Terminating:Wait"),
        ("etcd-b", 5, "Terminating:Wait"),
        ("etcd-b", 6, "Pending:Wait"),
        ("etcd-c", 7, "Warmed:Pending:Wait"),
    ];
    let listings = ["etcd-a", "etcd-b", "etcd-c"]
        .into_iter()
        .map(|g| {
            let mine: Vec<(u8, &str)> = waiting
                .iter()
                .filter(|(group, _, _)| *group == g)
                .map(|(_, n, state)| (*n, *state))
                .collect();
            (g, Ok(listing(g, &mine)))
        })
        .collect();
    let (h, calls) = build(
        World::three_nodes(),
        listings,
        &[
            ("etcd-a", "etcd-a-terminate", 3),
            ("etcd-b", "etcd-b-terminate", 5),
            ("etcd-b", "etcd-b-launch", 6),
            ("etcd-c", "etcd-c-launch", 7),
        ],
    );

    let results = sweep(&h).await;

    let calls = calls.all();
    let first_work = calls
        .iter()
        .position(|c| !c.starts_with("autoscaling:Describe") && !c.contains("Heartbeat"))
        .unwrap_or_else(|| panic!("no work done: {calls:?}"));
    let (before, _) = calls.split_at(first_work);
    assert_eq!(
        &before[..3],
        ["etcd-a", "etcd-b", "etcd-c"].map(|g| format!("autoscaling:Describe {g}")),
        "every group listed first: {calls:?}"
    );
    let mut expected = vec![
        heartbeat_call("etcd-a", "etcd-a-terminate", &instance(3).id),
        heartbeat_call("etcd-b", "etcd-b-terminate", &instance(5).id),
        heartbeat_call("etcd-b", "etcd-b-launch", &instance(6).id),
        // Warmed:Pending:Wait may wait on either hook: both are kept alive.
        heartbeat_call("etcd-c", "etcd-c-launch", &instance(7).id),
        heartbeat_call("etcd-c", "etcd-c-terminate", &instance(7).id),
    ];
    let mut heartbeats = before[3..].to_vec();
    expected.sort();
    heartbeats.sort();
    assert_eq!(heartbeats, expected, "{calls:?}");
    assert_eq!(
        calls[first_work], "ec2:DescribeInstances etcd-a,etcd-b,etcd-c",
        "then the first group's work"
    );
    // And then each instance's work, group by group, as before.
    for n in [3, 5, 6, 7] {
        let r = result_of(&results, n);
        assert_eq!(r.action, Action::Completed, "{r:?}");
    }
    assert!(h.lifecycle.active.lock().unwrap().is_empty());
    let groups: Vec<&str> = results.iter().filter_map(|r| r.group.as_deref()).collect();
    assert_eq!(
        groups,
        ["etcd-a", "etcd-a", "etcd-b", "etcd-b", "etcd-b", "etcd-c", "etcd-c"],
        "per group: its waiting instances, then its membership line"
    );
}

/// The middle group cannot be listed: it is reported as failed, and the other two are still
/// heartbeated up front and handled.
#[tokio::test]
async fn a_group_that_cannot_be_listed_does_not_stop_the_others() {
    let (h, calls) = build(
        World::three_nodes(),
        vec![
            ("etcd-a", Ok(listing("etcd-a", &[(3, "Terminating:Wait")]))),
            ("etcd-b", Err("Throttling: Rate exceeded".into())),
            ("etcd-c", Ok(listing("etcd-c", &[(5, "Pending:Wait")]))),
        ],
        &[
            ("etcd-a", "etcd-a-terminate", 3),
            ("etcd-c", "etcd-c-launch", 5),
        ],
    );

    let results = sweep(&h).await;

    let failed: Vec<&InstanceResult> = results
        .iter()
        .filter(|r| r.action == Action::Failed)
        .collect();
    assert_eq!(failed.len(), 1, "{results:?}");
    assert_eq!(failed[0].group.as_deref(), Some("etcd-b"));
    assert!(
        failed[0]
            .error
            .as_ref()
            .is_some_and(|e| e.to_string().contains("Rate exceeded")),
        "{:?}",
        failed[0]
    );
    let calls = calls.all();
    let beats = [
        position(
            &calls,
            &heartbeat_call("etcd-a", "etcd-a-terminate", &instance(3).id),
        ),
        position(
            &calls,
            &heartbeat_call("etcd-c", "etcd-c-launch", &instance(5).id),
        ),
    ];
    let first_work = position(&calls, "ec2:DescribeInstances etcd-a,etcd-b,etcd-c");
    assert!(beats.iter().all(|&b| b < first_work), "{calls:?}");
    assert_eq!(result_of(&results, 3).action, Action::Completed);
    assert_eq!(result_of(&results, 5).action, Action::Completed);
    assert!(
        calls.contains(&"ec2:DescribeInstances etcd-c,etcd-a,etcd-b".to_string()),
        "the last group's membership is still checked: {calls:?}"
    );
    assert!(h.lifecycle.active.lock().unwrap().is_empty());
}

/// With one group there is no other group to wait for: a held instance gets the one
/// heartbeat of its hold, not a second one up front.
#[tokio::test]
async fn one_group_holds_with_one_heartbeat() {
    let g = "etcd-asg";
    let (h, calls) = build(
        World::three_nodes().silent(2),
        vec![(g, Ok(listing(g, &[(3, "Terminating:Wait")])))],
        &[(g, "etcd-asg-terminate", 3)],
    );

    let results = sweep(&h).await;

    assert_eq!(result_of(&results, 3).action, Action::Held);
    let beats = calls
        .all()
        .into_iter()
        .filter(|c| c.contains("Heartbeat"))
        .count();
    assert_eq!(beats, 1, "{:?}", calls.all());
}

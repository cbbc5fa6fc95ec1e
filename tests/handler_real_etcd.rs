//! The whole handler, terminate and launch flows, against a real etcd cluster; Auto Scaling and
//! EC2 are in-memory fakes that record every call. Each scenario checks etcd's own member list.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::etcd_cluster::EtcdCluster;
use etcd_lifecycle_hook::config::Config;
use etcd_lifecycle_hook::etcd::EtcdMembership;
use etcd_lifecycle_hook::handler::{Handler, HandlerError};
use etcd_lifecycle_hook::metrics::memory_sink;
use etcd_lifecycle_hook::model::*;
use etcd_lifecycle_hook::resilience::policy::Deadline;
use etcd_lifecycle_hook::resilience::Resilience;
use serde_json::{json, Value};

struct FixedFleet(Vec<Instance>);

impl Fleet for FixedFleet {
    async fn group_instances(&self, _: &[String], _: &Deadline) -> Result<Vec<Instance>, AwsError> {
        Ok(self.0.clone())
    }
    async fn instance(&self, id: &str, _: &Deadline) -> Result<Option<Instance>, AwsError> {
        Ok(self.0.iter().find(|i| i.id == id).cloned())
    }
    async fn existing_instances(
        &self,
        ids: &[String],
        ips: &[std::net::IpAddr],
        _: &Deadline,
    ) -> Result<Vec<Instance>, AwsError> {
        Ok(self
            .0
            .iter()
            .filter(|i| ids.contains(&i.id) || i.private_ip.is_some_and(|ip| ips.contains(&ip)))
            .cloned()
            .collect())
    }
    async fn spot_status(&self, _: &str, _: &Deadline) -> Result<Option<SpotStatus>, AwsError> {
        Ok(None)
    }
}

/// Auto Scaling as a list of the calls made, shared with the test.
#[derive(Default, Clone)]
struct RecordingLifecycle(Arc<Mutex<Vec<String>>>);

impl RecordingLifecycle {
    fn calls(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl Lifecycle for RecordingLifecycle {
    async fn complete(&self, key: &ActionKey, _: &Deadline) -> Result<Completion, AwsError> {
        self.0
            .lock()
            .unwrap()
            .push(format!("complete {}", key.instance_id));
        Ok(Completion::Completed)
    }
    async fn heartbeat(&self, key: &ActionKey, _: &Deadline) -> Result<Heartbeat, AwsError> {
        self.0
            .lock()
            .unwrap()
            .push(format!("heartbeat {}", key.instance_id));
        Ok(Heartbeat::Recorded)
    }
    async fn group_lifecycle(&self, _: &str, _: &Deadline) -> Result<GroupLifecycle, AwsError> {
        Ok(GroupLifecycle::default())
    }
}

type RealHandler = Handler<FixedFleet, RecordingLifecycle, EtcdMembership>;

fn handler(instances: Vec<Instance>, config: Config) -> (RealHandler, RecordingLifecycle) {
    let resilience = Arc::new(Resilience::new(config.resilience()));
    let membership =
        EtcdMembership::new(&config, Arc::clone(&resilience)).expect("etcd configuration");
    let lifecycle = RecordingLifecycle::default();
    let (sink, _) = memory_sink();
    let handler = Handler {
        config: Arc::new(config),
        resilience,
        fleet: FixedFleet(instances),
        lifecycle: lifecycle.clone(),
        membership,
        metrics: sink,
        function_name: "etcd-lifecycle-hook".into(),
    };
    (handler, lifecycle)
}

fn event(transition: &str, instance_id: &str) -> Value {
    let kind = if transition.ends_with("LAUNCHING") {
        "launch"
    } else {
        "terminate"
    };
    json!({
        "detail-type": format!("EC2 Instance-{kind} Lifecycle Action"),
        "source": "aws.autoscaling",
        "detail": {
            "LifecycleActionToken": "token", "AutoScalingGroupName": "etcd-asg", "LifecycleHookName": "hook",
            "EC2InstanceId": instance_id, "LifecycleTransition": transition,
        }
    })
}

fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(30), Duration::from_secs(2))
}

/// Instance IDs are the member names the helper gives its nodes; EC2 requires the `i-` form.
fn instance_id(cluster: &EtcdCluster, slot: u8) -> String {
    cluster.name(slot).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_the_leader_moves_leadership_removes_and_completes() {
    let cluster = EtcdCluster::start(100, 3).await;
    cluster.wait_reconfig_ready().await;
    let leader = cluster.leader().await;
    let mut slot = None;
    for s in 1..=3 {
        if cluster.id_of(s).await == leader {
            slot = Some(s);
        }
    }
    let slot = slot.expect("the leader is one of ours");
    let id = instance_id(&cluster, slot);
    let (h, lifecycle) = handler(cluster.instances(), cluster.config());
    let out = h
        .handle(
            &event("autoscaling:EC2_INSTANCE_TERMINATING", &id),
            deadline(),
        )
        .await
        .unwrap_or_else(|e| panic!("terminate failed: {e}\n{}", cluster.logs()));
    assert_eq!(out["results"][0]["leader_moved"], true, "{out}");
    assert_eq!(out["results"][0]["member_removed"], true, "{out}");
    assert_eq!(lifecycle.calls(), vec![format!("complete {id}")]);
    cluster.wait_converged().await;
    let names = cluster.member_names().await;
    assert_eq!(names.len(), 2);
    assert!(!names.contains(&id), "{names:?}");
    assert_ne!(
        cluster.leader().await,
        leader,
        "a new leader among the rest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_while_another_node_is_down_holds_without_removing() {
    let mut cluster = EtcdCluster::start(110, 3).await;
    cluster.wait_reconfig_ready().await;
    let instances = cluster.instances();
    let config = cluster.config();
    let before = cluster.member_names().await;
    cluster.stop(2).await;
    let id = instance_id(&cluster, 3);
    let (h, lifecycle) = handler(instances, config);
    let err = h
        .handle(
            &event("autoscaling:EC2_INSTANCE_TERMINATING", &id),
            deadline(),
        )
        .await
        .expect_err("removal must be refused");
    assert!(matches!(err, HandlerError::Held { .. }), "{err}");
    assert!(err.to_string().contains("would break quorum"), "{err}");
    assert_eq!(
        lifecycle.calls(),
        vec![format!("heartbeat {id}")],
        "one heartbeat, no completion"
    );
    assert_eq!(cluster.member_names().await, before, "membership unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_removes_a_stale_member_and_completes() {
    let cluster = EtcdCluster::start(120, 3).await;
    cluster.wait_reconfig_ready().await;
    let stale = cluster.add_stale_member(7).await;
    let mut instances = cluster.instances();
    let newcomer = Instance {
        id: "i-0new0000000000001".into(),
        private_ip: Some("127.0.0.128".parse().unwrap()),
        private_dns: None,
        state: "pending".into(),
        spot: false,
        spot_request_id: None,
        other_ips: Vec::new(),
    };
    instances.push(newcomer.clone());
    let (h, lifecycle) = handler(instances, cluster.config());
    let out = h
        .handle(
            &event("autoscaling:EC2_INSTANCE_LAUNCHING", &newcomer.id),
            deadline(),
        )
        .await
        .unwrap_or_else(|e| panic!("launch failed: {e}\n{}", cluster.logs()));
    assert_eq!(out["results"][0]["member_removed"], true, "{out}");
    assert_eq!(lifecycle.calls(), vec![format!("complete {}", newcomer.id)]);
    cluster.wait_converged().await;
    let ids: Vec<u64> = cluster.members().await.iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 3);
    assert!(!ids.contains(&stale));
}

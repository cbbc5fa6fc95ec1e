//! The AWS wrappers against `aws-smithy-mocks` clients (SDK retries disabled, as in production):
//! retries, idempotent completion, heartbeats, paging, the breaker, and the request count of a
//! happy-path terminate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_autoscaling::operation::complete_lifecycle_action::{
    CompleteLifecycleActionError, CompleteLifecycleActionOutput,
};
use aws_sdk_autoscaling::operation::record_lifecycle_action_heartbeat::{
    RecordLifecycleActionHeartbeatError, RecordLifecycleActionHeartbeatOutput,
};
use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
use aws_sdk_ec2::operation::describe_spot_instance_requests::{
    DescribeSpotInstanceRequestsError, DescribeSpotInstanceRequestsOutput,
};
use aws_sdk_ec2::types::{
    Filter, Instance as Ec2Instance, InstanceLifecycleType, InstanceState, InstanceStateName,
    Reservation, SpotInstanceRequest, SpotInstanceStatus,
};
use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::error::ErrorMetadata;
use aws_smithy_types::retry::RetryConfig;
use etcd_lifecycle_hook::aws::autoscaling::AutoScalingLifecycle;
use etcd_lifecycle_hook::aws::ec2::Ec2Fleet;
use etcd_lifecycle_hook::config::Config;
use etcd_lifecycle_hook::handler::Handler;
use etcd_lifecycle_hook::metrics::memory_sink;
use etcd_lifecycle_hook::model::*;
use etcd_lifecycle_hook::resilience::breaker::State;
use etcd_lifecycle_hook::resilience::policy::Deadline;
use etcd_lifecycle_hook::resilience::{Dependency, Resilience};
use serde_json::json;

fn resilience() -> Arc<Resilience> {
    Arc::new(Resilience::new(Config::default().resilience()))
}

fn autoscaling(rules: &[&Rule], resilience: &Arc<Resilience>) -> AutoScalingLifecycle {
    let client = mock_client!(aws_sdk_autoscaling, RuleMode::Sequential, rules, |c| c
        .retry_config(RetryConfig::disabled()));
    AutoScalingLifecycle::new(client, Arc::clone(resilience), vec![])
}

fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(60), Duration::from_secs(2))
}

fn key() -> ActionKey {
    ActionKey {
        group: "etcd-asg".into(),
        hook: "etcd-terminate".into(),
        instance_id: "i-0123456789abcdef0".into(),
        token: Some("tok".into()),
    }
}

fn no_active_action() -> ErrorMetadata {
    ErrorMetadata::builder()
        .code("ValidationError")
        .message("No active Lifecycle Action found with token tok")
        .build()
}

#[tokio::test(start_paused = true)]
async fn a_503_then_success_is_retried() {
    let rule = mock!(aws_sdk_autoscaling::Client::complete_lifecycle_action)
        .sequence()
        .http_status(503, None)
        .output(|| CompleteLifecycleActionOutput::builder().build())
        .build();
    let layer = resilience();
    let done = autoscaling(&[&rule], &layer)
        .complete(&key(), &deadline())
        .await
        .unwrap();
    assert_eq!(done, Completion::Completed);
    assert_eq!(rule.num_calls(), 2);
    assert_eq!(layer.take_retries(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_validation_error_is_not_retried() {
    let rule = mock!(aws_sdk_autoscaling::Client::complete_lifecycle_action).then_error(|| {
        CompleteLifecycleActionError::generic(
            ErrorMetadata::builder()
                .code("ValidationError")
                .message("1 validation error detected")
                .build(),
        )
    });
    let layer = resilience();
    let err = autoscaling(&[&rule], &layer)
        .complete(&key(), &deadline())
        .await
        .unwrap_err();
    assert_eq!(rule.num_calls(), 1);
    let text = err.to_string();
    assert!(
        text.contains("autoscaling:CompleteLifecycleAction failed")
            && text.contains("1 validation error detected"),
        "{text}"
    );
    assert_eq!(
        layer
            .breaker(Dependency::Autoscaling)
            .snapshot(tokio::time::Instant::now())
            .consecutive_failures,
        0
    );
}

#[tokio::test(start_paused = true)]
async fn completing_twice_is_already_done() {
    let rule = mock!(aws_sdk_autoscaling::Client::complete_lifecycle_action)
        .sequence()
        .output(|| CompleteLifecycleActionOutput::builder().build())
        .error(|| CompleteLifecycleActionError::generic(no_active_action()))
        .build();
    let lifecycle = autoscaling(&[&rule], &resilience());
    assert_eq!(
        lifecycle.complete(&key(), &deadline()).await.unwrap(),
        Completion::Completed
    );
    assert_eq!(
        lifecycle.complete(&key(), &deadline()).await.unwrap(),
        Completion::AlreadyDone
    );
    assert_eq!(rule.num_calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn completion_by_instance_id_when_there_is_no_token() {
    let rule = mock!(aws_sdk_autoscaling::Client::complete_lifecycle_action)
        .match_requests(|r| {
            r.instance_id() == Some("i-0123456789abcdef0")
                && r.lifecycle_action_token().is_none()
                && r.lifecycle_action_result() == Some("CONTINUE")
        })
        .then_output(|| CompleteLifecycleActionOutput::builder().build());
    let lifecycle = autoscaling(&[&rule], &resilience());
    let by_id = ActionKey {
        token: None,
        ..key()
    };
    assert_eq!(
        lifecycle.complete(&by_id, &deadline()).await.unwrap(),
        Completion::Completed
    );
}

#[tokio::test(start_paused = true)]
async fn heartbeat_then_action_over() {
    let rule = mock!(aws_sdk_autoscaling::Client::record_lifecycle_action_heartbeat)
        .sequence()
        .output(|| RecordLifecycleActionHeartbeatOutput::builder().build())
        .error(|| RecordLifecycleActionHeartbeatError::generic(no_active_action()))
        .build();
    let lifecycle = autoscaling(&[&rule], &resilience());
    assert_eq!(
        lifecycle.heartbeat(&key(), &deadline()).await.unwrap(),
        Heartbeat::Recorded
    );
    assert_eq!(
        lifecycle.heartbeat(&key(), &deadline()).await.unwrap(),
        Heartbeat::ActionOver
    );
}

#[tokio::test(start_paused = true)]
async fn five_consecutive_503s_open_the_circuit_and_the_sixth_call_makes_no_request() {
    let rule = mock!(aws_sdk_autoscaling::Client::complete_lifecycle_action)
        .sequence()
        .http_status(503, None)
        .repeatedly()
        .build();
    let layer = resilience();
    let lifecycle = autoscaling(&[&rule], &layer);
    // Four attempts in the first call, the fifth failure (second call) opens the circuit.
    let first = lifecycle.complete(&key(), &deadline()).await.unwrap_err();
    assert!(
        first
            .to_string()
            .contains("kept failing after 4 attempt(s)"),
        "{first}"
    );
    assert_eq!(rule.num_calls(), 4);
    // What the service sent, not the SDK's debug dump of the raw response.
    assert!(
        first.to_string().ends_with(
            "service error; unhandled error: error parsing XML: no root element (HTTP 503)"
        ),
        "{first}"
    );
    let second = lifecycle.complete(&key(), &deadline()).await.unwrap_err();
    assert_eq!(rule.num_calls(), 5);
    assert!(
        second
            .to_string()
            .starts_with("circuit open for autoscaling; retry after"),
        "{second}"
    );
    let third = lifecycle.complete(&key(), &deadline()).await.unwrap_err();
    assert_eq!(rule.num_calls(), 5, "no request while open");
    assert_eq!(
        third.to_string(),
        "circuit open for autoscaling; retry after 60s"
    );
    assert_eq!(
        layer
            .breaker(Dependency::Autoscaling)
            .state(tokio::time::Instant::now()),
        State::Open
    );
}

/// Throttling is a transient failure (PRODUCT.md): retried, and counted by the breaker like a 5xx.
/// The error an operator reads names what Auto Scaling said, not the SDK's dump of the response.
#[tokio::test(start_paused = true)]
async fn throttling_is_retried_counted_and_named() {
    let throttled = || {
        RecordLifecycleActionHeartbeatError::generic(
            ErrorMetadata::builder()
                .code("Throttling")
                .message("Rate exceeded")
                .build(),
        )
    };
    let rule = mock!(aws_sdk_autoscaling::Client::record_lifecycle_action_heartbeat)
        .sequence()
        .error(throttled)
        .times(2)
        .output(|| RecordLifecycleActionHeartbeatOutput::builder().build())
        .error(throttled)
        .repeatedly()
        .build();
    let layer = resilience();
    let lifecycle = autoscaling(&[&rule], &layer);
    assert_eq!(
        lifecycle.heartbeat(&key(), &deadline()).await.unwrap(),
        Heartbeat::Recorded
    );
    assert_eq!(rule.num_calls(), 3);
    let text = lifecycle
        .heartbeat(&key(), &deadline())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("kept failing after 4 attempt(s)")
            && text.contains("service error; Throttling: Rate exceeded (HTTP "),
        "{text}"
    );
    let breaker = layer.breaker(Dependency::Autoscaling);
    assert_eq!(
        breaker
            .snapshot(tokio::time::Instant::now())
            .consecutive_failures,
        4
    );
    let text = lifecycle
        .heartbeat(&key(), &deadline())
        .await
        .unwrap_err()
        .to_string();
    assert!(text.starts_with("circuit open for autoscaling"), "{text}");
    assert_eq!(rule.num_calls(), 8, "the fifth throttle opened the circuit");
}

/// A proxy's or endpoint policy's page, not an AWS answer: no code to quote, so the message keeps
/// the HTTP status (it decides transient or not) and the request ID from the headers.
#[tokio::test(start_paused = true)]
async fn an_answer_that_is_not_aws_keeps_its_status_and_request_id() {
    let rule =
        mock!(aws_sdk_autoscaling::Client::complete_lifecycle_action).then_http_response(|| {
            let mut response = HttpResponse::new(
                StatusCode::try_from(403).expect("a valid status"),
                SdkBody::from("<html>Access denied by the proxy</html>"),
            );
            response.headers_mut().insert("x-amzn-RequestId", "req-403");
            response
        });
    let text = autoscaling(&[&rule], &resilience())
        .complete(&key(), &deadline())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(rule.num_calls(), 1, "a 403 is not retried");
    assert!(
        text.starts_with(
            "autoscaling:CompleteLifecycleAction failed: autoscaling refused the request"
        ) && text.ends_with("(HTTP 403, request ID req-403)"),
        "{text}"
    );
}

fn ec2_instance(n: u8) -> Ec2Instance {
    ec2_instance_builder(n).build()
}

fn ec2_instance_builder(n: u8) -> aws_sdk_ec2::types::builders::InstanceBuilder {
    Ec2Instance::builder()
        .instance_id(format!("i-000000000000000{n}"))
        .private_ip_address(format!("10.0.0.{n}"))
        .private_dns_name(format!("ip-10-0-0-{n}.ec2.internal"))
        .state(
            InstanceState::builder()
                .name(InstanceStateName::Running)
                .build(),
        )
}

fn ec2_fleet(rules: &[&Rule], layer: &Arc<Resilience>) -> Ec2Fleet {
    let client = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, rules, |c| c
        .retry_config(RetryConfig::disabled()));
    Ec2Fleet::new(client, Arc::clone(layer))
}

#[tokio::test(start_paused = true)]
async fn describe_instances_follows_every_page() {
    let first = mock!(aws_sdk_ec2::Client::describe_instances)
        .match_requests(|r| r.next_token().is_none())
        .then_output(|| {
            DescribeInstancesOutput::builder()
                .reservations(
                    Reservation::builder()
                        .instances(ec2_instance(1))
                        .instances(ec2_instance(2))
                        .build(),
                )
                .next_token("page-2")
                .build()
        });
    let second = mock!(aws_sdk_ec2::Client::describe_instances)
        .match_requests(|r| {
            r.next_token() == Some("page-2")
                && r.filters().iter().any(|f| {
                    f.name() == Some("tag:aws:autoscaling:groupName") && f.values() == ["etcd-asg"]
                })
        })
        .then_output(|| {
            DescribeInstancesOutput::builder()
                .reservations(
                    Reservation::builder()
                        .instances(
                            ec2_instance_builder(3)
                                .instance_lifecycle(InstanceLifecycleType::Spot)
                                .build(),
                        )
                        .build(),
                )
                .build()
        });
    let fleet = ec2_fleet(&[&first, &second], &resilience());
    let instances = fleet
        .group_instances(&["etcd-asg".into()], &deadline())
        .await
        .unwrap();
    let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "i-0000000000000001",
            "i-0000000000000002",
            "i-0000000000000003"
        ]
    );
    assert_eq!(instances[2].private_ip, Some("10.0.0.3".parse().unwrap()));
    assert_eq!(instances[2].state, "running");
    let spot: Vec<bool> = instances.iter().map(|i| i.spot).collect();
    assert_eq!(spot, [false, false, true]);
    assert_eq!((first.num_calls(), second.num_calls()), (1, 1));
}

fn has_filter(filters: &[Filter], name: &str, values: &[&str]) -> bool {
    filters
        .iter()
        .any(|f| f.name() == Some(name) && f.values() == values)
}

const EXISTING: [&str; 4] = ["pending", "running", "stopping", "stopped"];

/// The group's listing asks for every instance that still exists, so a stopped instance being
/// replaced is still found with its private IP.
#[tokio::test(start_paused = true)]
async fn the_group_listing_includes_stopped_instances() {
    let rule = mock!(aws_sdk_ec2::Client::describe_instances)
        .match_requests(|r| has_filter(r.filters(), "instance-state-name", &EXISTING))
        .then_output(|| DescribeInstancesOutput::builder().build());
    let fleet = ec2_fleet(&[&rule], &resilience());
    fleet
        .group_instances(&["etcd-asg".into()], &deadline())
        .await
        .unwrap();
    assert_eq!(rule.num_calls(), 1);
}

/// One instance by ID in any state, through a filter: an ID EC2 has forgotten is `None`.
#[tokio::test(start_paused = true)]
async fn one_instance_by_id_in_any_state() {
    let found = mock!(aws_sdk_ec2::Client::describe_instances)
        .match_requests(|r| {
            has_filter(r.filters(), "instance-id", &["i-0000000000000003"])
                && r.filters().len() == 1
        })
        .then_output(|| {
            DescribeInstancesOutput::builder()
                .reservations(
                    Reservation::builder()
                        .instances(
                            ec2_instance_builder(3)
                                .state(
                                    InstanceState::builder()
                                        .name(InstanceStateName::Stopped)
                                        .build(),
                                )
                                .build(),
                        )
                        .build(),
                )
                .build()
        });
    let gone = mock!(aws_sdk_ec2::Client::describe_instances)
        .then_output(|| DescribeInstancesOutput::builder().build());
    let fleet = ec2_fleet(&[&found, &gone], &resilience());
    let stopped = fleet
        .instance("i-0000000000000003", &deadline())
        .await
        .unwrap()
        .expect("found");
    assert_eq!(
        (stopped.state.as_str(), stopped.private_ip),
        ("stopped", Some("10.0.0.3".parse().unwrap()))
    );
    assert_eq!(fleet.instance("i-0ffff", &deadline()).await.unwrap(), None);
}

/// Existing instances by ID and by IP are two queries (EC2 ANDs filters), both limited to the
/// states in which an instance still exists; nothing to ask makes no request.
#[tokio::test(start_paused = true)]
async fn existing_instances_ask_by_id_and_by_ip_separately() {
    let by_id = mock!(aws_sdk_ec2::Client::describe_instances)
        .match_requests(|r| {
            has_filter(r.filters(), "instance-id", &["i-0000000000000001"])
                && has_filter(r.filters(), "instance-state-name", &EXISTING)
        })
        .then_output(|| {
            DescribeInstancesOutput::builder()
                .reservations(Reservation::builder().instances(ec2_instance(1)).build())
                .build()
        });
    let by_ip = mock!(aws_sdk_ec2::Client::describe_instances)
        .match_requests(|r| {
            has_filter(r.filters(), "private-ip-address", &["10.0.0.2", "10.0.0.9"])
                && has_filter(r.filters(), "instance-state-name", &EXISTING)
        })
        .then_output(|| {
            DescribeInstancesOutput::builder()
                .reservations(Reservation::builder().instances(ec2_instance(2)).build())
                .build()
        });
    let fleet = ec2_fleet(&[&by_id, &by_ip], &resilience());
    let found = fleet
        .existing_instances(
            &["i-0000000000000001".into()],
            &["10.0.0.2".parse().unwrap(), "10.0.0.9".parse().unwrap()],
            &deadline(),
        )
        .await
        .unwrap();
    let ids: Vec<&str> = found.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["i-0000000000000001", "i-0000000000000002"]);
    assert_eq!((by_id.num_calls(), by_ip.num_calls()), (1, 1));
    assert!(fleet
        .existing_instances(&[], &[], &deadline())
        .await
        .unwrap()
        .is_empty());
    assert_eq!((by_id.num_calls(), by_ip.num_calls()), (1, 1));
}

/// A Spot request's status code; a request EC2 no longer knows is `None`, not a failure.
#[tokio::test(start_paused = true)]
async fn spot_request_status() {
    let marked = mock!(aws_sdk_ec2::Client::describe_spot_instance_requests)
        .match_requests(|r| r.spot_instance_request_ids() == ["sir-1"])
        .then_output(|| {
            DescribeSpotInstanceRequestsOutput::builder()
                .spot_instance_requests(
                    SpotInstanceRequest::builder()
                        .spot_instance_request_id("sir-1")
                        .status(
                            SpotInstanceStatus::builder()
                                .code("marked-for-termination")
                                .build(),
                        )
                        .build(),
                )
                .build()
        });
    let unknown = mock!(aws_sdk_ec2::Client::describe_spot_instance_requests).then_error(|| {
        DescribeSpotInstanceRequestsError::generic(
            ErrorMetadata::builder()
                .code("InvalidSpotInstanceRequestID.NotFound")
                .message("The spot instance request ID 'sir-2' does not exist")
                .build(),
        )
    });
    let layer = resilience();
    let fleet = ec2_fleet(&[&marked, &unknown], &layer);
    let status = fleet.spot_status("sir-1", &deadline()).await.unwrap();
    assert_eq!(
        status.map(|s| s.code),
        Some("marked-for-termination".into())
    );
    assert_eq!(fleet.spot_status("sir-2", &deadline()).await.unwrap(), None);
    assert_eq!(
        layer
            .breaker(Dependency::Ec2)
            .state(tokio::time::Instant::now()),
        State::Closed
    );
}

/// etcd for the request-count test: three healthy members named after the instances.
struct ThreeMembers(Mutex<Vec<u64>>);

impl Membership for ThreeMembers {
    async fn lock(&self, _: &[Instance], _: &Deadline) -> Result<MembershipLock, MembershipError> {
        Ok(MembershipLock {
            key: b"lock".to_vec(),
            lease: 1,
            endpoints: vec![],
        })
    }
    async fn unlock(&self, _: MembershipLock, _: &Deadline) {}
    async fn cluster(&self, _: &[Instance], _: &Deadline) -> Result<ClusterView, MembershipError> {
        let ids = self.0.lock().unwrap().clone();
        Ok(ClusterView {
            members: ids
                .iter()
                .map(|&n| Member {
                    id: n,
                    name: format!("i-000000000000000{n}"),
                    peer_urls: vec![],
                    client_urls: vec![],
                    is_learner: false,
                })
                .collect(),
            healthy: ids.clone(),
            leader: Some(1),
            confirmed_by_leader: true,
            ..ClusterView::default()
        })
    }
    async fn move_leader(
        &self,
        _: &ClusterView,
        _: u64,
        _: &Deadline,
    ) -> Result<(), MembershipError> {
        Ok(())
    }
    async fn remove(
        &self,
        _: &ClusterView,
        member: u64,
        _: &Deadline,
    ) -> Result<Removal, MembershipError> {
        self.0.lock().unwrap().retain(|&m| m != member);
        Ok(Removal::Removed)
    }
    async fn add_learner(
        &self,
        _: &ClusterView,
        _: &str,
        _: &str,
        _: &Deadline,
    ) -> Result<u64, MembershipError> {
        unreachable!("not on this path")
    }
    async fn promote(
        &self,
        _: &ClusterView,
        _: u64,
        _: &Deadline,
    ) -> Result<Promotion, MembershipError> {
        unreachable!("not on this path")
    }
}

/// The happy path of a terminate event makes exactly two AWS requests (a scale-in whose machine
/// goes, as AWS sends it: `Destination` `EC2`; one back to a warm pool also asks whether its
/// action still waits before the removal).
#[tokio::test(start_paused = true)]
async fn a_happy_terminate_makes_two_aws_requests() {
    let describe = mock!(aws_sdk_ec2::Client::describe_instances).then_output(|| {
        DescribeInstancesOutput::builder()
            .reservations(
                Reservation::builder()
                    .instances(ec2_instance(1))
                    .instances(ec2_instance(2))
                    .instances(ec2_instance(3))
                    .build(),
            )
            .build()
    });
    let complete = mock!(aws_sdk_autoscaling::Client::complete_lifecycle_action)
        .match_requests(|r| r.lifecycle_action_token() == Some("tok-3"))
        .then_output(|| CompleteLifecycleActionOutput::builder().build());
    let layer = resilience();
    let (sink, _) = memory_sink();
    let handler = Handler {
        config: Arc::new(Config::default()),
        resilience: Arc::clone(&layer),
        fleet: ec2_fleet(&[&describe], &layer),
        lifecycle: autoscaling(&[&complete], &layer),
        membership: ThreeMembers(Mutex::new(vec![1, 2, 3])),
        metrics: sink,
        function_name: "etcd-lifecycle-hook".into(),
    };
    let event = json!({
        "detail-type": "EC2 Instance-terminate Lifecycle Action", "source": "aws.autoscaling",
        "detail": {"LifecycleActionToken": "tok-3", "AutoScalingGroupName": "etcd-asg", "LifecycleHookName": "etcd-terminate",
                   "EC2InstanceId": "i-0000000000000003", "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
                   "Origin": "AutoScalingGroup", "Destination": "EC2"}
    });
    let out = handler.handle(&event, deadline()).await.unwrap();
    assert_eq!(out["results"][0]["result"], "CONTINUE");
    assert_eq!(describe.num_calls() + complete.num_calls(), 2);
    assert_eq!((describe.num_calls(), complete.num_calls()), (1, 1));
}

// ------------------------------------------------------------------------------------------------
// The sweep's listing of a group: hooks, the group's instances and its warm pool's
// ------------------------------------------------------------------------------------------------

mod group_lifecycle {
    use super::*;
    use aws_sdk_autoscaling::operation::describe_auto_scaling_groups::DescribeAutoScalingGroupsOutput;
    use aws_sdk_autoscaling::operation::describe_lifecycle_hooks::DescribeLifecycleHooksOutput;
    use aws_sdk_autoscaling::operation::describe_warm_pool::{
        DescribeWarmPoolError, DescribeWarmPoolOutput,
    };
    use aws_sdk_autoscaling::types::{
        AutoScalingGroup, Instance as AsgInstance, LifecycleHook, LifecycleState,
        WarmPoolConfiguration, WarmPoolState,
    };

    const GROUP: &str = "etcd-asg";

    fn asg_instance(id: &str, state: &str) -> AsgInstance {
        AsgInstance::builder()
            .instance_id(id)
            .lifecycle_state(LifecycleState::from(state))
            .availability_zone("us-east-1a")
            .health_status("Healthy")
            .protected_from_scale_in(false)
            .build()
    }

    fn hooks() -> Rule {
        mock!(aws_sdk_autoscaling::Client::describe_lifecycle_hooks)
            .match_requests(|r| r.auto_scaling_group_name() == Some(GROUP))
            .then_output(|| {
                DescribeLifecycleHooksOutput::builder()
                    .lifecycle_hooks(
                        LifecycleHook::builder()
                            .lifecycle_hook_name("etcd-launch")
                            .lifecycle_transition("autoscaling:EC2_INSTANCE_LAUNCHING")
                            .build(),
                    )
                    .lifecycle_hooks(
                        LifecycleHook::builder()
                            .lifecycle_hook_name("etcd-terminate")
                            .lifecycle_transition("autoscaling:EC2_INSTANCE_TERMINATING")
                            .build(),
                    )
                    .build()
            })
    }

    fn group(instances: &'static [(&'static str, &'static str)]) -> Rule {
        mock!(aws_sdk_autoscaling::Client::describe_auto_scaling_groups)
            .match_requests(|r| r.auto_scaling_group_names() == [GROUP])
            .then_output(move || {
                let mut group = AutoScalingGroup::builder().auto_scaling_group_name(GROUP);
                for (id, state) in instances {
                    group = group.instances(asg_instance(id, state));
                }
                DescribeAutoScalingGroupsOutput::builder()
                    .auto_scaling_groups(group.build())
                    .build()
            })
    }

    fn waiting(lifecycle: &GroupLifecycle) -> Vec<(&str, &str)> {
        lifecycle
            .waiting
            .iter()
            .map(|w| (w.instance_id.as_str(), w.lifecycle_state.as_str()))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_group_and_every_page_of_its_warm_pool_are_merged() {
        let hooks = hooks();
        let group = group(&[
            ("i-1", "InService"),
            ("i-2", "Terminating:Wait"),
            ("i-3", "Pending:Wait"),
            ("i-4", "Terminating:Retained"),
        ]);
        let first = mock!(aws_sdk_autoscaling::Client::describe_warm_pool)
            .match_requests(|r| {
                r.auto_scaling_group_name() == Some(GROUP) && r.next_token().is_none()
            })
            .then_output(|| {
                DescribeWarmPoolOutput::builder()
                    .warm_pool_configuration(
                        WarmPoolConfiguration::builder()
                            .min_size(1)
                            .pool_state(WarmPoolState::Stopped)
                            .build(),
                    )
                    // Back to the pool on scale-in (a terminate action), or launched into it.
                    .instances(asg_instance("i-5", "Warmed:Pending:Wait"))
                    .instances(asg_instance("i-6", "Warmed:Stopped"))
                    .next_token("wp-2")
                    .build()
            });
        let second = mock!(aws_sdk_autoscaling::Client::describe_warm_pool)
            .match_requests(|r| {
                r.auto_scaling_group_name() == Some(GROUP) && r.next_token() == Some("wp-2")
            })
            .then_output(|| {
                DescribeWarmPoolOutput::builder()
                    .instances(asg_instance("i-7", "Warmed:Terminating:Wait"))
                    .instances(asg_instance("i-8", "Warmed:Pending:Retained"))
                    // Seen in the group already (moving between the two): listed once.
                    .instances(asg_instance("i-2", "Warmed:Pending:Wait"))
                    .build()
            });
        let lifecycle = autoscaling(&[&hooks, &group, &first, &second], &resilience())
            .group_lifecycle(GROUP, &deadline())
            .await
            .unwrap();

        assert_eq!(
            waiting(&lifecycle),
            [
                ("i-2", "Terminating:Wait"),
                ("i-3", "Pending:Wait"),
                ("i-5", "Warmed:Pending:Wait"),
                ("i-7", "Warmed:Terminating:Wait"),
            ]
        );
        let on: Vec<Option<WaitingOn>> = lifecycle.waiting.iter().map(|w| w.waiting_on()).collect();
        assert_eq!(
            on,
            [
                Some(WaitingOn::Terminate),
                Some(WaitingOn::Launch),
                Some(WaitingOn::LaunchOrTerminate),
                Some(WaitingOn::Terminate),
            ]
        );
        assert_eq!(lifecycle.retained, ["i-4", "i-8"]);
        assert_eq!(lifecycle.in_service, ["i-1"]);
        assert_eq!(lifecycle.hooks.len(), 2);
        assert_eq!(
            (
                hooks.num_calls(),
                group.num_calls(),
                first.num_calls(),
                second.num_calls()
            ),
            (1, 1, 1, 1)
        );
    }

    /// AWS answers a group without a warm pool with no instances and no configuration.
    #[tokio::test(start_paused = true)]
    async fn a_group_without_a_warm_pool_lists_its_own_instances() {
        let hooks = hooks();
        let group = group(&[("i-1", "InService"), ("i-2", "Terminating:Wait")]);
        let empty = mock!(aws_sdk_autoscaling::Client::describe_warm_pool)
            .then_output(|| DescribeWarmPoolOutput::builder().build());
        let lifecycle = autoscaling(&[&hooks, &group, &empty], &resilience())
            .group_lifecycle(GROUP, &deadline())
            .await
            .unwrap();
        assert_eq!(waiting(&lifecycle), [("i-2", "Terminating:Wait")]);
        assert_eq!(lifecycle.in_service, ["i-1"]);
        assert_eq!(empty.num_calls(), 1);
    }

    /// A group that does not exist has no warm pool to ask about.
    #[tokio::test(start_paused = true)]
    async fn a_group_that_does_not_exist_is_not_asked_for_its_warm_pool() {
        let hooks = mock!(aws_sdk_autoscaling::Client::describe_lifecycle_hooks)
            .then_output(|| DescribeLifecycleHooksOutput::builder().build());
        let none = mock!(aws_sdk_autoscaling::Client::describe_auto_scaling_groups)
            .then_output(|| DescribeAutoScalingGroupsOutput::builder().build());
        let warm = mock!(aws_sdk_autoscaling::Client::describe_warm_pool)
            .then_output(|| DescribeWarmPoolOutput::builder().build());
        let client = mock_client!(
            aws_sdk_autoscaling,
            RuleMode::MatchAny,
            [&hooks, &none, &warm],
            |c| c.retry_config(RetryConfig::disabled())
        );
        let lifecycle = AutoScalingLifecycle::new(client, resilience(), vec![])
            .group_lifecycle(GROUP, &deadline())
            .await
            .unwrap();
        assert_eq!(lifecycle, GroupLifecycle::default());
        assert_eq!(warm.num_calls(), 0);
    }

    /// A warm pool that cannot be read fails the listing, naming the call (a role without
    /// `autoscaling:DescribeWarmPool` says so), rather than hiding its waiting instances.
    #[tokio::test(start_paused = true)]
    async fn a_warm_pool_that_cannot_be_read_fails_the_listing_and_says_which_call() {
        let hooks = hooks();
        let group = group(&[("i-1", "InService")]);
        let denied = mock!(aws_sdk_autoscaling::Client::describe_warm_pool).then_error(|| {
            DescribeWarmPoolError::generic(
                ErrorMetadata::builder()
                    .code("AccessDenied")
                    .message("User is not authorized to perform: autoscaling:DescribeWarmPool")
                    .build(),
            )
        });
        let err = autoscaling(&[&hooks, &group, &denied], &resilience())
            .group_lifecycle(GROUP, &deadline())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("autoscaling:DescribeWarmPool failed")
                && text.contains("AccessDenied"),
            "{text}"
        );
        assert_eq!(denied.num_calls(), 1, "a permission error is not retried");
    }
}

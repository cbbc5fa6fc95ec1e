//! Every sample in `events/` parses to what its name says; every malformed one is rejected with a
//! message that names the field and what was expected.

use std::path::Path;

use etcd_lifecycle_hook::event::{parse, Invocation, LifecycleEvent, Message};
use etcd_lifecycle_hook::model::Transition;
use serde_json::Value;

fn sample(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("events")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn direct(name: &str) -> Vec<Message> {
    match parse(&sample(name)) {
        Ok(Invocation::Direct(messages)) => messages,
        other => panic!("{name}: {other:?}"),
    }
}

fn lifecycle(name: &str) -> LifecycleEvent {
    match direct(name).as_slice() {
        [Message::Lifecycle(e)] => e.clone(),
        other => panic!("{name}: {other:?}"),
    }
}

fn queue(name: &str) -> Vec<etcd_lifecycle_hook::event::QueuedMessage> {
    match parse(&sample(name)) {
        Ok(Invocation::Queue(records)) => records,
        other => panic!("{name} is not a queue batch: {other:?}"),
    }
}

#[test]
fn eventbridge_terminate_and_launch() {
    let t = lifecycle("terminate.json");
    assert_eq!(t.transition, Transition::Terminating);
    assert_eq!(
        (t.group.as_str(), t.hook.as_str()),
        ("etcd-asg", "etcd-terminate")
    );
    assert_eq!(t.instance_id, "i-0123456789abcdef0");
    assert!(!t.token.is_empty());
    let l = lifecycle("launch.json");
    assert_eq!(l.transition, Transition::Launching);
    assert!(!l.into_warm_pool());
}

#[test]
fn warm_pool_forms() {
    assert!(lifecycle("warm-pool-launch.json").into_warm_pool());
    let exit = lifecycle("warm-pool-exit.json");
    assert_eq!(exit.origin.as_deref(), Some("WarmPool"));
    assert!(!exit.into_warm_pool(), "leaving the pool is a real launch");
}

/// Which deliveries could outlive their action and do harm if acted on late: every launch, and
/// a terminate that does not end with the machine gone (back to the warm pool, or not said).
#[test]
fn which_events_are_confirmed_still_waiting_before_a_change() {
    assert!(!lifecycle("terminate.json").may_outlive_its_action());
    assert!(!lifecycle("sns-terminate.json").may_outlive_its_action());
    assert!(lifecycle("launch.json").may_outlive_its_action());
    assert!(lifecycle("warm-pool-exit.json").may_outlive_its_action());
    let mut to_pool = lifecycle("terminate.json");
    to_pool.destination = Some("WarmPool".into());
    assert!(to_pool.may_outlive_its_action());
    to_pool.destination = None;
    assert!(to_pool.may_outlive_its_action(), "not said: asked");
}

#[test]
fn sns_wrapped_notification() {
    let e = lifecycle("sns-terminate.json");
    assert_eq!(
        (e.transition, e.hook.as_str()),
        (Transition::Terminating, "etcd-terminate")
    );
}

#[test]
fn test_notification_is_recognised() {
    assert_eq!(
        direct("test-notification.json"),
        vec![Message::TestNotification {
            group: Some("etcd-asg".into())
        }]
    );
}

#[test]
fn scheduled_sweep() {
    assert_eq!(direct("scheduled-sweep.json"), vec![Message::Sweep]);
}

#[test]
fn sqs_batch_of_three() {
    let kinds: Vec<(String, Transition)> = queue("sqs-batch.json")
        .iter()
        .map(|r| match r.message.as_deref() {
            Ok([Message::Lifecycle(e)]) => (e.instance_id.clone(), e.transition),
            other => panic!("{}: {other:?}", r.message_id),
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("i-0aaaaaaaaaaaaaaa1".into(), Transition::Terminating),
            ("i-0bbbbbbbbbbbbbbb2".into(), Transition::Launching),
            ("i-0ccccccccccccccc3".into(), Transition::Terminating),
        ]
    );
}

#[test]
fn sns_fanned_out_to_sqs() {
    let records = queue("sqs-sns-fanout.json");
    assert!(
        matches!(records[0].message.as_deref(), Ok([Message::Lifecycle(e)]) if e.instance_id == "i-0123456789abcdef0")
    );
}

#[test]
fn poison_records_fail_alone() {
    let records = queue("sqs-batch-with-poison.json");
    let ok: Vec<bool> = records.iter().map(|r| r.message.is_ok()).collect();
    assert_eq!(ok, vec![true, false, false]);
    let errors: Vec<String> = records
        .iter()
        .filter_map(|r| r.message.as_ref().err())
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors[0].contains("`Records[1].body` is not JSON"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains("Records[2].body has no detail-type"),
        "{}",
        errors[1]
    );
}

#[test]
fn malformed_samples_name_the_problem() {
    let cases = [
        ("detail-type-disagrees-with-transition.json", "detail-type \"EC2 Instance-launch Lifecycle Action\" disagrees with LifecycleTransition \"autoscaling:EC2_INSTANCE_TERMINATING\""),
        ("missing-token.json", "`detail.LifecycleActionToken` is missing; expected a non-empty string"),
        ("unknown-transition.json", "`detail.LifecycleTransition` is \"autoscaling:EC2_INSTANCE_REBOOTING\""),
        ("bad-instance-id.json", "`detail.EC2InstanceId` is \"not-an-instance\"; expected an EC2 instance ID"),
        ("unknown-detail-type.json", "`detail-type` is \"EC2 Instance State-change Notification\""),
        ("not-an-object.json", "the payload is an array, not a JSON object"),
        ("empty-records.json", "`Records` is an empty array"),
        ("wrong-source.json", "`source` is \"aws.ec2\"; expected \"aws.autoscaling\""),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("events/malformed");
    let on_disk = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(
        on_disk,
        cases.len(),
        "every malformed sample has a case here"
    );
    for (name, expected) in cases {
        let err = parse(&sample(&format!("malformed/{name}")))
            .expect_err(name)
            .to_string();
        assert!(err.starts_with("invalid event: "), "{name}: {err}");
        assert!(err.contains(expected), "{name}: {err}");
    }
}

#[test]
fn every_sample_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("events");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            assert!(parse(&sample(&name)).is_ok(), "{name} parses");
        }
    }
}

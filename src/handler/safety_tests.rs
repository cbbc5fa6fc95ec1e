//! What "healthy" and "this instance's member" mean to a terminate: no match is not proof of
//! absence, a member list not confirmed by the leader decides nothing, and every hold names the
//! members that are not healthy and why.

use super::tests::{
    instance, launch, member, minute, terminate, terminate_to_warm_pool, World, UNREADABLE,
};
use crate::model::{Alarm, Member, NotHealthy};

fn held_reason(result: Result<serde_json::Value, super::HandlerError>) -> String {
    match result {
        Err(super::HandlerError::Held { reason, .. }) => reason,
        other => panic!("expected a hold, got {other:?}"),
    }
}

/// Instance 3's member renamed to a name and host-name URL that say nothing of its machine.
fn host_named(n: u8) -> Member {
    Member {
        name: format!("etcd-{n}"),
        peer_urls: vec![format!("https://etcd-{n}.corp.example:2380")],
        client_urls: vec![format!("https://etcd-{n}.corp.example:2379")],
        ..member(n)
    }
}

#[tokio::test]
async fn no_match_with_an_unplaceable_voter_is_held_naming_it() {
    let world = World::three_nodes().view_with(|v| v.members[2] = host_named(3));
    let (h, calls, _) = world.build();
    let reason = held_reason(h.handle(&terminate(3), minute()).await);
    assert!(reason.contains("etcd-3"), "{reason}");
    assert!(reason.contains("may be this one's"), "{reason}");
    let calls = calls.all();
    assert!(!calls.iter().any(|c| c.contains("Complete")), "{calls:?}");
    assert!(
        !calls.iter().any(|c| c.contains("MemberRemove")),
        "{calls:?}"
    );
}

#[tokio::test]
async fn no_match_when_every_voter_is_another_machines_completes() {
    // Instance 3's member is gone; the other two are named for instances 1 and 2.
    let world = World::three_nodes().view_with(|v| {
        v.members.truncate(2);
        v.healthy.truncate(2);
    });
    let (h, calls, _) = world.build();
    let out = h.handle(&terminate(3), minute()).await.expect("completed");
    assert_eq!(out["results"][0]["action"], "completed");
    assert!(calls
        .all()
        .iter()
        .any(|c| c.contains("CompleteLifecycleAction")));
}

#[tokio::test]
async fn a_member_list_not_confirmed_by_the_leader_decides_nothing() {
    for (members, what) in [(2, "absence"), (3, "removal")] {
        let world = World::three_nodes().view_with(|v| {
            v.members.truncate(members);
            v.confirmed_by_leader = false;
        });
        let (h, calls, _) = world.build();
        let reason = held_reason(h.handle(&terminate(3), minute()).await);
        assert!(
            reason.contains("not confirmed by a leader"),
            "{what}: {reason}"
        );
        let calls = calls.all();
        assert!(
            !calls.iter().any(|c| c.contains("MemberRemove")),
            "{calls:?}"
        );
        assert!(!calls.iter().any(|c| c.contains("Complete")), "{calls:?}");
    }
}

#[tokio::test]
async fn a_quorum_hold_names_each_unhealthy_member_and_why() {
    let world = World::three_nodes().view_with(|v| {
        v.healthy = vec![member(1).id, member(3).id];
        v.not_healthy = vec![(member(2).id, NotHealthy::NotAskedInTime)];
    });
    let (h, _, _) = world.build();
    let reason = held_reason(h.handle(&terminate(3), minute()).await);
    assert!(reason.contains("would break quorum"), "{reason}");
    assert!(
        reason.contains(&format!(
            "{} ({:x}) not asked in time",
            instance(2).id,
            member(2).id
        )),
        "{reason}"
    );
}

#[tokio::test]
async fn voters_behind_or_following_another_leader_do_not_count() {
    // Four voters: removing the leader keeps a majority of three, but the only answering
    // voters besides it are behind or follow another leader.
    let world = World::three_nodes().view_with(|v| {
        v.members.push(member(4));
        v.healthy = vec![member(1).id, member(4).id];
        v.not_healthy = vec![
            (member(2).id, NotHealthy::Behind { entries: 5000 }),
            (
                member(3).id,
                NotHealthy::OtherLeader {
                    leader: member(3).id,
                    term: 9,
                },
            ),
        ];
        v.members[3].is_learner = true;
    });
    let (h, calls, _) = world.build();
    let reason = held_reason(h.handle(&terminate(1), minute()).await);
    assert!(reason.contains("would break quorum"), "{reason}");
    assert!(reason.contains("5000 raft entries behind"), "{reason}");
    assert!(!calls.all().iter().any(|c| c.contains("MoveLeader")));
}

#[tokio::test]
async fn under_a_nospace_alarm_the_hold_names_the_alarm_and_its_member() {
    let mut world = World::three_nodes().view_with(|v| {
        v.alarms = vec![Alarm {
            member: member(2).id,
            kind: "NOSPACE".into(),
        }];
    });
    world.writes_refused = true;
    let (h, calls, _) = world.build();
    let reason = held_reason(h.handle(&terminate(3), minute()).await);
    assert!(reason.contains("NOSPACE"), "{reason}");
    assert!(
        reason.contains(&format!("NOSPACE on {}", instance(2).id)),
        "{reason}"
    );
    assert!(reason.contains("defragment"), "{reason}");
    let calls = calls.all();
    assert!(calls.iter().any(|c| c.contains("Heartbeat")), "{calls:?}");
    assert!(
        !calls.iter().any(|c| c.contains("MemberRemove")),
        "{calls:?}"
    );
}

#[test]
fn a_reserve_at_or_above_the_time_an_invocation_has_is_refused() {
    use std::time::Duration;
    let err = super::check_reserve(Duration::from_millis(3000), Duration::from_millis(4500))
        .expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("DEADLINE_RESERVE_MS=4500"), "{text}");
    assert!(text.contains("3000 ms"), "{text}");
    assert_eq!(err.kind(), "InvalidConfiguration");
    assert!(super::check_reserve(Duration::from_secs(30), Duration::from_millis(4500)).is_ok());
    assert!(super::check_reserve(Duration::from_secs(3), Duration::from_secs(3)).is_err());
}

/// Two voters, one of them a Spot instance being interrupted: kept, its machine goes in two
/// minutes and the survivor has no quorum (one of two); removed, the survivor is a quorum of
/// one. The voter floor does not hold a confirmed interruption back; a plain scale-in at the
/// floor is still held, and the last voter is never removed.
#[tokio::test(start_paused = true)]
async fn a_confirmed_spot_interruption_at_the_voter_floor_is_removed() {
    let two_voters = || {
        let mut world = World::three_nodes().view_with(|v| {
            v.members.truncate(2);
            v.healthy.truncate(2);
        });
        world.instances.truncate(2);
        world.instances[1].spot = true;
        world.instances[1].state = "shutting-down".into();
        world
    };
    let (h, calls, _) = two_voters().build();
    let out = h.handle(&terminate(2), minute()).await.expect("completed");
    assert_eq!(out["results"][0]["member_removed"], true, "{out}");
    assert!(calls.all().iter().any(|c| c.contains("MemberRemove")));

    let mut scaled_in = two_voters();
    scaled_in.instances[1].spot = false;
    scaled_in.instances[1].state = "running".into();
    let (h, calls, _) = scaled_in.build();
    let reason = held_reason(h.handle(&terminate(2), minute()).await);
    assert!(reason.contains("ETCD_MIN_VOTERS"), "{reason}");
    assert!(!calls.all().iter().any(|c| c.contains("MemberRemove")));

    let mut last = two_voters().view_with(|v| {
        v.members.truncate(1);
        v.members[0] = member(2);
        v.healthy = vec![member(2).id];
        v.leader = Some(member(2).id);
    });
    last.instances.remove(0);
    let (h, calls, _) = last.build();
    let out = h.handle(&terminate(2), minute()).await.expect("let go");
    assert_eq!(out["results"][0]["member_removed"], false, "{out}");
    assert!(!calls.all().iter().any(|c| c.contains("MemberRemove")));
}

/// Three voters, one a Spot instance whose interruption is confirmed: a scale-in of another
/// would leave two, and the interrupted one then one (or, its own removal failing, one of two
/// without quorum). The scale-in waits; with the interruption not confirmed, or with voters to
/// spare, it goes ahead, and EC2 is asked about Spot peers only when the answer could matter.
#[tokio::test]
async fn a_scale_in_waits_for_a_peer_a_confirmed_spot_interruption_is_taking() {
    let spot_peer = |code: &str| {
        let mut world = World::three_nodes();
        world.instances[1].spot = true;
        world.instances[1].spot_request_id = Some("sir-2".into());
        world.spot = vec![("sir-2".into(), code.into())];
        world
    };
    let (h, calls, _) = spot_peer("marked-for-termination").build();
    let reason = held_reason(h.handle(&terminate(3), minute()).await);
    assert!(reason.contains("confirmed Spot interruption"), "{reason}");
    assert!(reason.contains(&instance(2).id), "{reason}");
    assert!(reason.contains("ETCD_MIN_VOTERS=2"), "{reason}");
    let calls = calls.all();
    assert!(calls.iter().any(|c| c.contains("Heartbeat")), "{calls:?}");
    assert!(
        !calls.iter().any(|c| c.contains("MemberRemove")),
        "{calls:?}"
    );

    let (h, calls, _) = spot_peer("fulfilled").build();
    let out = h.handle(&terminate(3), minute()).await.expect("completed");
    assert_eq!(out["results"][0]["member_removed"], true, "{out}");
    assert!(calls
        .all()
        .contains(&"ec2:DescribeSpotInstanceRequests sir-2".to_string()));

    // EC2 cannot say whether the peer is being interrupted: the removal waits for an answer.
    let (h, calls, _) = spot_peer(UNREADABLE).build();
    let reason = held_reason(h.handle(&terminate(3), minute()).await);
    assert!(reason.contains("EC2 could not say"), "{reason}");
    assert!(reason.contains("RequestLimitExceeded"), "{reason}");
    assert!(!calls.all().iter().any(|c| c.contains("MemberRemove")));

    // A dead voter is removed all the same: kept, it would make the interrupted one's removal
    // unsafe, and one live voter of three is no quorum once that machine goes.
    let (h, calls, _) = spot_peer("marked-for-termination").silent(3).build();
    let out = h.handle(&terminate(3), minute()).await.expect("completed");
    assert_eq!(out["results"][0]["member_removed"], true, "{out}");
    assert!(
        !calls.all().iter().any(|c| c.contains("Spot")),
        "a dead voter's removal needs no Spot status: {:?}",
        calls.all()
    );

    // Five voters: counting the Spot peer out still leaves three, so EC2 is not asked.
    let mut five = spot_peer("marked-for-termination").view_with(|v| {
        v.members.extend([member(4), member(5)]);
        v.healthy.extend([member(4).id, member(5).id]);
    });
    five.instances.extend([instance(4), instance(5)]);
    let (h, calls, _) = five.build();
    let out = h.handle(&terminate(3), minute()).await.expect("completed");
    assert_eq!(out["results"][0]["member_removed"], true, "{out}");
    assert!(
        !calls.all().iter().any(|c| c.contains("Spot")),
        "{:?}",
        calls.all()
    );
}

/// Deliveries are at least once and can be late: a scale-in back to the warm pool whose action
/// is over (the instance may be back in service since) must not remove the member of an
/// instance that serves again; a launch whose action is over (the instance rests in a warm pool
/// since) must not add a learner that no node will ever start, which would block every later
/// launch (one learner at a time). Auto Scaling is asked just before the change; a hold asks
/// nothing more, and a terminate whose machine goes (destination `EC2`) is not asked at all.
#[tokio::test]
async fn a_late_delivery_of_an_action_that_is_over_changes_no_membership() {
    let mut world = World::three_nodes();
    world.actions_over = vec![instance(3).id];
    let (h, calls, _) = world.build();
    let out = h
        .handle(&terminate_to_warm_pool(3), minute())
        .await
        .expect("answered");
    let result = &out["results"][0];
    assert_eq!(result["action"], "skipped", "{out}");
    assert!(
        result["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no longer active")),
        "{out}"
    );
    let calls = calls.all();
    assert!(
        !calls.iter().any(|c| c.contains("MemberRemove")),
        "{calls:?}"
    );
    assert!(!calls.iter().any(|c| c.contains("Complete")), "{calls:?}");

    // Still waiting: asked, then removed and completed.
    let (h, calls, _) = World::three_nodes().build();
    let out = h
        .handle(&terminate_to_warm_pool(3), minute())
        .await
        .expect("completed");
    assert_eq!(out["results"][0]["member_removed"], true, "{out}");
    let calls = calls.all();
    let asked = calls.iter().position(|c| c.contains("Heartbeat"));
    let removed = calls.iter().position(|c| c.contains("MemberRemove"));
    assert!(
        asked.is_some() && removed.is_some() && asked < removed,
        "{calls:?}"
    );

    let mut world = World::three_nodes();
    world.instances.push(instance(4));
    world.config.etcd_add_learner_on_launch = true;
    world.actions_over = vec![instance(4).id];
    let (h, calls, _) = world.build();
    let out = h
        .handle(&launch(&instance(4).id), minute())
        .await
        .expect("answered");
    assert_eq!(out["results"][0]["action"], "skipped", "{out}");
    assert!(
        !calls.all().iter().any(|c| c.contains("MemberAdd")),
        "{:?}",
        calls.all()
    );
}

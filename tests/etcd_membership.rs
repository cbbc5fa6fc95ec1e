//! `EtcdMembership` against real etcd 3.4 clusters on loopback addresses. Each scenario checks
//! etcd's own member list afterwards, read from the leader by the test helper, not through the
//! code under test.

mod common;

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use common::etcd_cluster::EtcdCluster;
use etcd_lifecycle_hook::config::Config;
use etcd_lifecycle_hook::etcd::{Connections, EtcdMembership};
use etcd_lifecycle_hook::membership::{leader_candidate, quorum_after_removal, stale_members};
use etcd_lifecycle_hook::model::{
    Alarm, ClusterView, Member, Membership, MembershipError, NotHealthy, Promotion, Removal,
};
use etcd_lifecycle_hook::resilience::breaker::State;
use etcd_lifecycle_hook::resilience::policy::Deadline;
use etcd_lifecycle_hook::resilience::policy::LOCK_WAIT;
use etcd_lifecycle_hook::resilience::{Dependency, Resilience};
use tokio::time::Instant;

fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(30), Duration::from_secs(2))
}

fn membership_with(config: &Config) -> (EtcdMembership, Arc<Resilience>) {
    let resilience = Arc::new(Resilience::new(config.resilience()));
    let etcd = ok(
        EtcdMembership::new(config, resilience.clone()),
        "EtcdMembership::new",
    );
    (etcd, resilience)
}

fn membership(cluster: &EtcdCluster) -> (EtcdMembership, Arc<Resilience>) {
    membership_with(&cluster.config())
}

fn ok<T, E: Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

async fn view_of(etcd: &EtcdMembership, cluster: &EtcdCluster) -> ClusterView {
    ok(
        etcd.cluster(&cluster.instances(), &deadline()).await,
        "reading the cluster",
    )
}

/// A member of `view` that does not lead it.
fn a_follower(view: &ClusterView) -> &Member {
    let leader = view.leader.expect("a leader");
    view.members
        .iter()
        .find(|m| m.id != leader)
        .expect("a follower")
}

fn assert_breaker_closed(resilience: &Resilience) {
    let snapshot = resilience
        .breaker(Dependency::Etcd)
        .snapshot(Instant::now());
    assert_eq!(
        (snapshot.state, snapshot.consecutive_failures),
        (State::Closed, 0),
        "etcd's breaker"
    );
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn removes_a_follower() {
    let cluster = EtcdCluster::start(20, 3).await;
    cluster.wait_reconfig_ready().await;
    // No ETCD_ENDPOINTS: the endpoints are built from the instances' private IPs.
    let config = Config {
        etcd_endpoints: Vec::new(),
        ..cluster.config()
    };
    let (etcd, resilience) = membership_with(&config);

    let view = view_of(&etcd, &cluster).await;
    assert_eq!((view.members.len(), view.healthy.len()), (3, 3));
    let follower = a_follower(&view);
    assert!(quorum_after_removal(&view, follower.id, 2).is_safe());

    let removal = etcd.remove(&view, follower.id, &deadline()).await;
    assert_eq!(ok(removal, "removing a follower"), Removal::Removed);
    // Read at once, before every member has applied the removal: still not listed.
    let at_once = view_of(&etcd, &cluster).await;
    assert!(at_once.member(follower.id).is_none());

    let remaining: Vec<&str> = cluster
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .filter(|n| *n != follower.name)
        .collect();
    assert_eq!(cluster.member_names().await, sorted(&remaining));
    cluster.wait_converged().await;
    let after = view_of(&etcd, &cluster).await;
    assert_eq!(after.members.len(), 2);
    assert!(after.member(follower.id).is_none());
    assert_breaker_closed(&resilience);
}

#[tokio::test]
async fn moves_leadership_away_before_removing_the_leader() {
    let cluster = EtcdCluster::start(30, 3).await;
    cluster.wait_reconfig_ready().await;
    let (etcd, resilience) = membership(&cluster);

    let view = view_of(&etcd, &cluster).await;
    let leader = view.leader.expect("a leader");
    let name = view
        .member(leader)
        .expect("the leader is a member")
        .name
        .clone();
    let to = leader_candidate(&view, leader).expect("a healthy voter to lead");
    ok(
        etcd.move_leader(&view, to, &deadline()).await,
        "moving the leader",
    );

    let moved = view_of(&etcd, &cluster).await;
    assert_eq!(
        moved.leader,
        Some(to),
        "leadership moved before the removal"
    );
    assert_eq!(cluster.leader().await, to);

    // The removal gets the view from before the move: it finds the new leader by itself.
    let removal = etcd.remove(&view, leader, &deadline()).await;
    assert_eq!(ok(removal, "removing the old leader"), Removal::Removed);

    let remaining: Vec<&str> = cluster
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .filter(|n| *n != name)
        .collect();
    assert_eq!(cluster.member_names().await, sorted(&remaining));
    cluster.wait_converged().await;
    let after = view_of(&etcd, &cluster).await;
    let new_leader = after.leader.expect("a leader after the removal");
    assert_ne!(new_leader, leader);
    assert!(after.member(new_leader).is_some());
    assert_breaker_closed(&resilience);
}

#[tokio::test]
async fn holds_a_removal_when_another_member_is_down() {
    let mut cluster = EtcdCluster::start(40, 3).await;
    cluster.wait_reconfig_ready().await;
    let (etcd, resilience) = membership(&cluster);
    let names = cluster.member_names().await;

    let leader = cluster.leader().await;
    let mut followers = Vec::new();
    for slot in 1..=3 {
        let id = cluster.id_of(slot).await;
        if id != leader {
            followers.push((slot, id));
        }
    }
    let (down_slot, down) = followers[0];
    let target = followers[1].1;
    cluster.stop(down_slot).await;

    let view = view_of(&etcd, &cluster).await;
    assert_eq!((view.members.len(), view.healthy.len()), (3, 2));
    assert!(!view.is_healthy(down));
    let verdict = quorum_after_removal(&view, target, 2);
    assert!(!verdict.is_safe(), "{}", verdict.reason());
    assert_eq!(
        verdict.reason(),
        "1 of 2 remaining voting members healthy, 2 needed"
    );

    // Forced anyway, etcd's own strict reconfig check refuses, and that reads as "hold".
    let refused = etcd.remove(&view, target, &deadline()).await;
    match refused {
        Err(MembershipError::Refused { detail }) => {
            assert!(detail.contains("unhealthy cluster"), "{detail}")
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(cluster.member_names().await, names, "membership unchanged");
    assert_breaker_closed(&resilience);

    // Removing the member that is down is what keeps quorum, and etcd accepts it.
    assert!(quorum_after_removal(&view, down, 2).is_safe());
    let removal = etcd.remove(&view, down, &deadline()).await;
    assert_eq!(ok(removal, "removing the dead member"), Removal::Removed);
    assert_eq!(cluster.members().await.len(), 2);
}

#[tokio::test]
async fn removes_a_stale_member_that_never_started() {
    let cluster = EtcdCluster::start(50, 3).await;
    cluster.wait_reconfig_ready().await;
    let names = cluster.member_names().await;
    let stale = cluster.add_stale_member(5).await;
    let (etcd, resilience) = membership(&cluster);

    let view = view_of(&etcd, &cluster).await;
    assert_eq!((view.members.len(), view.healthy.len()), (4, 3));
    let member = view.member(stale).expect("the stale member is listed");
    assert!(member.name.is_empty() && member.client_urls.is_empty());
    let found: Vec<u64> = stale_members(&view, &cluster.instances())
        .0
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(found, vec![stale]);
    assert!(quorum_after_removal(&view, stale, 2).is_safe());

    let removal = etcd.remove(&view, stale, &deadline()).await;
    assert_eq!(ok(removal, "removing the stale member"), Removal::Removed);
    assert_eq!(cluster.member_names().await, names);
    assert_breaker_closed(&resilience);
}

#[tokio::test]
async fn removing_a_removed_member_is_already_gone() {
    let cluster = EtcdCluster::start(60, 3).await;
    cluster.wait_reconfig_ready().await;
    let (etcd, resilience) = membership(&cluster);

    let view = view_of(&etcd, &cluster).await;
    let follower = a_follower(&view).id;
    let first = etcd.remove(&view, follower, &deadline()).await;
    assert_eq!(ok(first, "first removal"), Removal::Removed);

    // The same event delivered again, with the view from before.
    let again = etcd.remove(&view, follower, &deadline()).await;
    assert_eq!(ok(again, "second removal"), Removal::AlreadyGone);
    let never = etcd.remove(&view, 0x1234_5678, &deadline()).await;
    assert_eq!(ok(never, "removing an unknown ID"), Removal::AlreadyGone);

    assert_eq!(cluster.members().await.len(), 2);
    assert!(cluster.members().await.iter().all(|m| m.id != follower));
    assert_breaker_closed(&resilience);
}

#[tokio::test]
async fn tls_works_with_the_right_ca_and_fails_clearly_with_a_wrong_one() {
    let cluster = EtcdCluster::start_tls(70, 3).await;
    let tls = cluster.tls.as_ref().expect("a TLS cluster");
    let (etcd, resilience) = membership(&cluster);
    let view = view_of(&etcd, &cluster).await;
    assert_eq!((view.members.len(), view.healthy.len()), (3, 3));
    assert!(view.leader.is_some());
    assert_eq!(cluster.leader().await, view.leader.unwrap_or_default());
    assert_breaker_closed(&resilience);

    let mut wrong = cluster.config();
    wrong.etcd_tls.ca = Some(tls.wrong_ca.clone());
    let (etcd, resilience) = membership_with(&wrong);
    let err = etcd
        .cluster(&cluster.instances(), &deadline())
        .await
        .expect_err("a CA that signed nothing must not be trusted");
    let text = err.to_string();
    assert!(matches!(err, MembershipError::Failed { .. }), "{text}");
    assert!(
        text.contains("TLS failed with every endpoint") && text.contains("ETCD_CA_FILE"),
        "{text}"
    );
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    // A configuration mistake is not an outage of etcd.
    assert_breaker_closed(&resilience);

    // No client certificate: etcd (--client-cert-auth) turns the client away.
    let mut anonymous = cluster.config();
    anonymous.etcd_tls.cert = None;
    anonymous.etcd_tls.key = None;
    let (etcd, _) = membership_with(&anonymous);
    let err = etcd
        .cluster(&cluster.instances(), &deadline())
        .await
        .expect_err("etcd requires a client certificate");
    let text = err.to_string();
    assert!(text.contains("ETCD_CERT_FILE"), "{text}");

    let mut missing = cluster.config();
    missing.etcd_tls.key = Some("/nonexistent/etcd-client.key".into());
    let err = EtcdMembership::new(&missing, Arc::new(Resilience::new(missing.resilience())))
        .expect_err("a missing key file stops start-up");
    let text = err.to_string();
    assert!(
        text.contains("ETCD_KEY_FILE") && text.contains("/nonexistent/etcd-client.key"),
        "{text}"
    );
}

#[tokio::test]
async fn a_dead_endpoint_fails_no_call_and_leaves_the_breaker_closed() {
    let mut cluster = EtcdCluster::start(80, 3).await;
    cluster.wait_reconfig_ready().await;
    // A learner: a stale voter would make the cluster four members, whose quorum of three the
    // stopped member would break.
    let stale = cluster.add_stale_learner(5).await;
    let leader = cluster.leader().await;
    let mut dead_slot = 1;
    for slot in 1..=3 {
        if cluster.id_of(slot).await != leader {
            dead_slot = slot;
        }
    }
    cluster.stop(dead_slot).await;

    // The dead member's URL stays in ETCD_ENDPOINTS, first.
    let mut config = cluster.config();
    config
        .etcd_endpoints
        .sort_by_key(|url| *url != cluster.client_url(dead_slot));
    assert_eq!(config.etcd_endpoints[0], cluster.client_url(dead_slot));
    let resilience = Arc::new(Resilience::new(config.resilience()));

    for _ in 0..20 {
        // A new client each time (as after a cold start), so each call meets the dead endpoint
        // first rather than after the ones that answered before.
        let etcd = ok(
            EtcdMembership::new(&config, resilience.clone()),
            "EtcdMembership::new",
        );
        let view = view_of(&etcd, &cluster).await;
        assert_eq!((view.members.len(), view.healthy.len()), (4, 2));
        assert_eq!(view.leader, Some(leader));
    }
    let etcd = ok(
        EtcdMembership::new(&config, resilience.clone()),
        "EtcdMembership::new",
    );
    let view = view_of(&etcd, &cluster).await;
    assert!(quorum_after_removal(&view, stale, 2).is_safe());
    let removal = etcd.remove(&view, stale, &deadline()).await;
    assert_eq!(ok(removal, "removing the stale member"), Removal::Removed);

    assert_eq!(cluster.members().await.len(), 3);
    assert_breaker_closed(&resilience);
    assert_eq!(resilience.take_retries(), 0, "no attempt failed as a whole");
}

#[tokio::test]
async fn adds_a_learner_promotes_it_once_caught_up_and_refuses_a_second() {
    let mut cluster = EtcdCluster::start(90, 3).await;
    cluster.wait_reconfig_ready().await;
    let (etcd, resilience) = membership(&cluster);
    let before = view_of(&etcd, &cluster).await;

    let name = "i-90node4";
    let peer = cluster.peer_url(4);
    let id = ok(
        etcd.add_learner(&before, name, &peer, &deadline()).await,
        "adding a learner",
    );
    let listed = cluster.members().await;
    let learner = listed
        .iter()
        .find(|m| m.id == id)
        .expect("the learner is listed");
    assert!(learner.is_learner && learner.name.is_empty());
    assert_eq!(learner.peer_urls, vec![peer.clone()]);

    // The same launch event again, with the view from before: the same member, nothing added.
    let again = etcd.add_learner(&before, name, &peer, &deadline()).await;
    assert_eq!(ok(again, "adding the learner again"), id);
    assert_eq!(cluster.members().await.len(), 4);

    // etcd 3.4 allows one learner at a time.
    let view = view_of(&etcd, &cluster).await;
    let second = etcd
        .add_learner(&view, "i-90node5", &cluster.peer_url(5), &deadline())
        .await;
    match second {
        Err(MembershipError::Refused { detail }) => {
            assert!(detail.contains("one learner at a time"), "{detail}")
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(cluster.members().await.len(), 4);

    // Not started yet, so not in sync: not yet, not an error.
    let early = etcd.promote(&view, id, &deadline()).await;
    assert_eq!(ok(early, "promoting too early"), Promotion::NotReady);

    cluster.start_added_member(name, 4).await;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let view = view_of(&etcd, &cluster).await;
        match ok(etcd.promote(&view, id, &deadline()).await, "promoting") {
            Promotion::Promoted => break,
            Promotion::NotReady => {
                assert!(
                    Instant::now() < until,
                    "the learner never caught up\n{}",
                    cluster.logs()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    let members = cluster.members().await;
    let promoted = members.iter().find(|m| m.id == id).expect("still listed");
    assert!(!promoted.is_learner);
    assert_eq!(members.len(), 4);
    cluster.wait_converged().await;
    let view = view_of(&etcd, &cluster).await;
    assert!(!view.member(id).expect("listed").is_learner);
    assert_breaker_closed(&resilience);
}

/// Two invocations (two function processes: two `EtcdMembership`s with their own breakers) never
/// hold the membership lock at once; the second gets `Locked` after its short wait, not a
/// breaker failure, and takes the lock once the first releases it.
#[tokio::test]
async fn the_membership_lock_admits_one_invocation_at_a_time() {
    let cluster = EtcdCluster::start(130, 3).await;
    let (first, _) = membership(&cluster);
    let (second, second_breakers) = membership(&cluster);
    let peers = cluster.instances();

    let held = ok(first.lock(&peers, &deadline()).await, "first lock");
    let asked = Instant::now();
    let refused = second.lock(&peers, &deadline()).await;
    let waited = asked.elapsed();
    assert!(
        matches!(refused, Err(MembershipError::Locked { .. })),
        "second lock while the first is held: {refused:?}"
    );
    assert!(
        waited >= LOCK_WAIT,
        "gave up after {waited:?}, before its wait"
    );
    assert_breaker_closed(&second_breakers);

    first.unlock(held, &deadline()).await;
    let taken = ok(second.lock(&peers, &deadline()).await, "lock after release");
    second.unlock(taken, &deadline()).await;
}

/// A function that dies holding the lock cannot block the cluster past its own deadline: the
/// lease lives no longer than the invocation had left.
#[tokio::test]
async fn a_lock_left_behind_ends_with_the_invocation_that_took_it() {
    let cluster = EtcdCluster::start(140, 3).await;
    let (abandoned, _) = membership(&cluster);
    let (next, _) = membership(&cluster);
    let peers = cluster.instances();
    let short = Deadline::after(Duration::from_secs(3), Duration::from_millis(500));
    let _never_released = ok(abandoned.lock(&peers, &short).await, "lock");
    let asked = Instant::now();
    // The lease (3 s at most) runs out while the next invocation waits, or by its next try.
    let taken = match next.lock(&peers, &deadline()).await {
        Ok(lock) => lock,
        Err(MembershipError::Locked { .. }) => ok(
            next.lock(&peers, &deadline()).await,
            "lock once the lease ran out",
        ),
        Err(e) => panic!("lock after an abandoned one: {e}"),
    };
    assert!(
        asked.elapsed() < Duration::from_secs(3) + LOCK_WAIT * 2,
        "took {:?}",
        asked.elapsed()
    );
    next.unlock(taken, &deadline()).await;
}

/// A cluster that lost quorum answers "no leader" at once (the function asks with etcd's
/// require-leader option): the lock is refused quickly, as an answer about the cluster, and
/// etcd's breaker does not count it.
#[tokio::test]
async fn a_cluster_without_quorum_refuses_the_lock_at_once_and_opens_no_circuit() {
    let mut cluster = EtcdCluster::start(150, 3).await;
    let (etcd, resilience) = membership(&cluster);
    let peers = cluster.instances();
    let first = cluster.name(1).to_string();
    cluster.stop(2).await;
    cluster.stop(3).await;
    // The survivor notices after its election timeout (1 s) and then has no leader.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for _ in 0..6 {
        let asked = Instant::now();
        let refused = etcd.lock(&peers, &deadline()).await;
        assert!(
            matches!(&refused, Err(MembershipError::NoLeader { .. })),
            "lock without quorum: {refused:?}"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(12),
            "{:?}",
            asked.elapsed()
        );
    }
    assert_breaker_closed(&resilience);
    let view = etcd.cluster(&peers, &deadline()).await;
    assert!(
        view.is_err() || view.as_ref().is_ok_and(|v| v.healthy.is_empty()),
        "{first} alone serves no quorum: {view:?}"
    );
}

/// What the lock relies on: etcd treats a second lock request on the same lease as the same
/// acquisition, so a try whose answer was lost can be made again without waiting behind itself.
#[tokio::test]
async fn a_second_lock_request_on_the_same_lease_is_the_same_acquisition() {
    let cluster = EtcdCluster::start(160, 3).await;
    let mut client = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let lease = ok(client.lease_grant(30, None).await, "lease").id();
    let options = || Some(etcd_client::LockOptions::new().with_lease(lease));
    let first = ok(
        client
            .lock(etcd_lifecycle_hook::etcd::LOCK_NAME, options())
            .await,
        "first lock",
    );
    let again = tokio::time::timeout(
        Duration::from_secs(3),
        client.lock(etcd_lifecycle_hook::etcd::LOCK_NAME, options()),
    )
    .await
    .unwrap_or_else(|_| panic!("the second request on the same lease waited behind the first"));
    assert_eq!(ok(again, "second lock").key(), first.key());
    ok(client.lease_revoke(lease).await, "revoke");
}

/// A zone's only instance is scaled in: the function found etcd through that instance alone.
/// After its member is removed, the lock is still released (through the URLs the members
/// advertised), so other invocations are not held for the lock's whole lease.
#[tokio::test]
async fn the_lock_is_released_after_removing_the_only_endpoint_it_was_taken_through() {
    let cluster = EtcdCluster::start(170, 3).await;
    cluster.wait_reconfig_ready().await;
    let only_zone_instance = vec![cluster.instances()[2].clone()];
    let config = Config {
        etcd_endpoints: Vec::new(),
        etcd_client_port: 2379,
        ..cluster.config()
    };
    let (etcd, _) = membership_with(&config);
    let (other, _) = membership(&cluster);
    let held = ok(etcd.lock(&only_zone_instance, &deadline()).await, "lock");
    let view = ok(
        etcd.cluster(&only_zone_instance, &deadline()).await,
        "view through the zone's instance",
    );
    let victim = cluster.id_of(3).await;
    let removal = etcd.remove(&view, victim, &deadline()).await;
    assert_eq!(ok(removal, "removing the zone's member"), Removal::Removed);
    etcd.unlock(held, &deadline()).await;
    let asked = Instant::now();
    let next = other.lock(&cluster.instances()[..2], &deadline()).await;
    assert!(
        next.is_ok() && asked.elapsed() < LOCK_WAIT,
        "the lock was left held: {next:?} after {:?}",
        asked.elapsed()
    );
    other.unlock(ok(next, "next lock"), &deadline()).await;
}

/// An alarm makes the member it names unhealthy (etcd lists every alarm in each member's
/// `Status`), and under NOSPACE etcd refuses writes, the lock's lease included: `WritesRefused`,
/// not a failure the breaker counts. Disarmed, the lock is free again.
#[tokio::test]
async fn an_alarm_makes_its_member_unhealthy_and_nospace_refuses_the_lock() {
    use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
    let cluster = EtcdCluster::start(180, 3).await;
    cluster.wait_reconfig_ready().await;
    let (etcd, resilience) = membership(&cluster);
    let named = cluster.id_of(2).await;
    let mut raw = ok(
        etcd_client::Client::connect([cluster.client_url(1)], None).await,
        "connecting",
    );
    let mut options = AlarmOptions::new();
    options.with_member(named);
    ok(
        raw.alarm(
            AlarmAction::Activate,
            AlarmType::Nospace,
            Some(options.clone()),
        )
        .await,
        "raising NOSPACE",
    );

    let view = view_of(&etcd, &cluster).await;
    assert_eq!(
        view.why_not_healthy(named),
        Some(&NotHealthy::Alarmed {
            kind: "NOSPACE".into()
        }),
        "{view:?}"
    );
    assert_eq!(view.healthy.len(), 2, "{view:?}");
    assert_eq!(
        view.alarms,
        vec![Alarm {
            member: named,
            kind: "NOSPACE".into()
        }]
    );
    let refused = etcd.lock(&cluster.instances(), &deadline()).await;
    assert!(
        matches!(&refused, Err(MembershipError::WritesRefused { .. })),
        "{refused:?}"
    );
    assert_breaker_closed(&resilience);

    ok(
        raw.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(options))
            .await,
        "disarming NOSPACE",
    );
    let view = view_of(&etcd, &cluster).await;
    assert_eq!(view.healthy.len(), 3, "{view:?}");
    let lock = ok(
        etcd.lock(&cluster.instances(), &deadline()).await,
        "the lock after disarming",
    );
    etcd.unlock(lock, &deadline()).await;
}

/// A member list answered by a follower is read again from the leader, so the view rests on the
/// list the cluster has committed; a member cut off from the others (the minority side of a
/// stopped majority) answers "no leader" rather than nothing, and no view is made of it.
#[tokio::test]
async fn the_view_is_confirmed_by_the_leader_and_a_leaderless_member_says_so() {
    let mut cluster = EtcdCluster::start(190, 3).await;
    cluster.wait_reconfig_ready().await;
    let leader = cluster.leader().await;
    let mut follower = 1;
    for slot in 1..=3 {
        if cluster.id_of(slot).await != leader {
            follower = slot;
            break;
        }
    }
    let config = Config {
        etcd_endpoints: vec![cluster.client_url(follower)],
        ..cluster.config()
    };
    let (etcd, _) = membership_with(&config);
    let view = ok(etcd.cluster(&[], &deadline()).await, "reading the cluster");
    assert_eq!(view.leader, Some(leader));
    assert!(view.confirmed_by_leader, "{view:?}");
    assert_eq!(view.healthy.len(), 3, "{view:?}");

    for slot in (1..=3).filter(|s| *s != follower) {
        cluster.stop(slot).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let read = etcd.cluster(&[], &deadline()).await;
    assert!(
        matches!(&read, Err(MembershipError::NoLeader { .. })),
        "{read:?}"
    );
}

/// One invocation asks each member over one connection (one TLS handshake): the view (the
/// member list and every member's status), the lock, the leader read again before the removal,
/// the removal and the unlock add no client. A member that stops answering loses its client, and
/// a new invocation starts with none.
#[tokio::test]
async fn one_client_per_member_for_the_whole_invocation() {
    let mut cluster = EtcdCluster::start_tls(200, 3).await;
    cluster.wait_reconfig_ready().await;
    let (etcd, resilience) = membership(&cluster);
    let invocation = deadline();

    let view = ok(
        etcd.cluster(&cluster.instances(), &invocation).await,
        "reading the cluster",
    );
    assert_eq!((view.members.len(), view.healthy.len()), (3, 3));
    let one_each = Connections { made: 3, open: 3 };
    assert_eq!(etcd.connections(), one_each, "one client per member");
    let follower = a_follower(&view).clone();
    let lock = ok(
        etcd.lock(&cluster.instances(), &invocation).await,
        "taking the lock",
    );
    let removal = etcd.remove(&view, follower.id, &invocation).await;
    assert_eq!(ok(removal, "removing a follower"), Removal::Removed);
    etcd.unlock(lock, &invocation).await;
    assert_eq!(
        etcd.connections(),
        one_each,
        "no second client for any member"
    );

    // The next invocation dials afresh: only the two members left are asked.
    let next = deadline();
    let after = ok(
        etcd.cluster(&cluster.instances(), &next).await,
        "reading the cluster again",
    );
    assert_eq!(after.members.len(), 2);
    let two = Connections { made: 2, open: 2 };
    assert_eq!(etcd.connections(), two, "the earlier clients dropped");

    // A member that stops answering loses its client; the other one keeps its own (whether it
    // still serves the view or already answers "no leader", it answered).
    let left: Vec<u8> = (1..=3u8)
        .filter(|slot| cluster.name(*slot) != follower.name)
        .collect();
    cluster.stop(left[0]).await;
    let partial = etcd.cluster(&cluster.instances(), &next).await;
    if let Ok(view) = &partial {
        assert!(
            view.healthy.len() < 2,
            "the stopped member is not healthy: {view:?}"
        );
    }
    assert_eq!(
        etcd.connections().open,
        1,
        "the stopped member's client dropped: {partial:?}"
    );

    etcd.release_connections();
    assert_eq!(etcd.connections().open, 0);
    assert_breaker_closed(&resilience);
}

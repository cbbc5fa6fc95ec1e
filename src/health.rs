//! What "healthy" means, in one place: what `etcdctl endpoint health` would say of a member,
//! judged from every member's `Status` answer at once. A member that merely answers is not
//! healthy: a partitioned member answers without a leader, a member after a partition heals may
//! still follow an old term, a restarted one may be far behind, and an alarm may name it. Each
//! such member counted toward quorum (or chosen to take over leadership) would let a removal
//! break the cluster. No I/O here: `etcd/membership.rs` asks, this module judges.

use crate::model::{Alarm, Member, NotHealthy};

/// How far (raft log entries) a member's committed index may trail the leader's and still count
/// as caught up: etcd's own snapshot catch-up window (`SnapshotCatchUpEntries`, 5000). A
/// follower further behind than that can no longer be caught up from the leader's log and is
/// sent a snapshot, and until it has applied it, it acks nothing. Status answers are gathered
/// concurrently but not at one instant, so a busy cluster shows gaps of hundreds to a few
/// thousand entries between members that are in step: a tighter bound would call them behind.
pub const RAFT_INDEX_LAG_MAX: u64 = 5000;

/// What one member's `Status` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// The leader it follows; 0 for none.
    pub leader: u64,
    pub raft_term: u64,
    /// Its committed raft index.
    pub raft_index: u64,
    /// etcd's own list of problems: "etcdserver: no leader" and every alarm of the cluster
    /// (`memberID:<decimal> alarm:<KIND>`).
    pub errors: Vec<String>,
}

/// How asking one member for its `Status` went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusAnswer {
    Answered(StatusReport),
    /// It answered etcd's "no leader" (the require-leader option refuses even `Status` then).
    NoLeader,
    /// No answer: refused, timed out, dropped, or a different member at that URL.
    Silent(String),
    /// The deadline left no time to ask, or cut the wait for its answer short.
    NotAskedInTime,
    /// Added but never started: no client URL to ask.
    NeverStarted,
}

/// The health of every member, judged together.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Judgement {
    pub healthy: Vec<u64>,
    pub not_healthy: Vec<(u64, NotHealthy)>,
    /// The leader a majority of the voting members follow, in the same term.
    pub leader: Option<u64>,
    /// That leader answered too, as the leader in that term (not stepped down, not silent).
    pub leader_answered: bool,
    pub alarms: Vec<Alarm>,
}

/// A member is healthy when it answered, follows the leader that a majority of the voting
/// members follow in that same term, its committed index is within [`RAFT_INDEX_LAG_MAX`] of
/// that leader's, and no alarm names it. Learners are judged by the same rules but do not count
/// toward the majority. `answers` pairs member IDs with how asking them went; a member missing
/// from it counts as not asked in time.
pub fn judge(members: &[Member], answers: &[(u64, StatusAnswer)]) -> Judgement {
    let alarms = alarms_in(answers);
    let agreed = agreed_leader(members, answers);
    let leader_index = agreed.map(|(leader, term)| leader_raft_index(leader, term, answers));
    let mut judgement = Judgement {
        leader: agreed.map(|(leader, _)| leader),
        leader_answered: agreed.is_some_and(|(leader, term)| {
            report_of(answers, leader).is_some_and(|r| (r.leader, r.raft_term) == (leader, term))
        }),
        ..Judgement::default()
    };
    for member in members {
        match verdict(member.id, answers, agreed, leader_index, &alarms) {
            Ok(()) => judgement.healthy.push(member.id),
            Err(why) => judgement.not_healthy.push((member.id, why)),
        }
    }
    judgement.alarms = alarms;
    judgement
}

/// Looked up by ID, not by position: `answers` need not follow the order of `members`, and a
/// member not asked in time is missing from it.
fn answer_of(answers: &[(u64, StatusAnswer)], id: u64) -> Option<&StatusAnswer> {
    answers.iter().find(|(m, _)| *m == id).map(|(_, a)| a)
}

/// Only an answered `Status` says whom a member follows; every other outcome says nothing.
fn report_of(answers: &[(u64, StatusAnswer)], id: u64) -> Option<&StatusReport> {
    match answer_of(answers, id) {
        Some(StatusAnswer::Answered(r)) => Some(r),
        _ => None,
    }
}

/// The (leader, term) a majority of all voting members follow, silent ones included in the
/// count: after a partition two leaders can each claim followers, and only one with a majority
/// of the whole cluster can commit, so only its followers are in step.
fn agreed_leader(members: &[Member], answers: &[(u64, StatusAnswer)]) -> Option<(u64, u64)> {
    let voters: Vec<&Member> = members.iter().filter(|m| !m.is_learner).collect();
    let majority = voters.len() / 2 + 1;
    let mut votes: Vec<((u64, u64), usize)> = Vec::new();
    for report in voters.iter().filter_map(|m| report_of(answers, m.id)) {
        if report.leader == 0 {
            continue;
        }
        let key = (report.leader, report.raft_term);
        match votes.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => votes.push((key, 1)),
        }
    }
    votes
        .iter()
        .find(|(_, n)| *n >= majority)
        .map(|(key, _)| *key)
}

/// The index the others are measured against: the leader's own, or when the leader itself did
/// not answer, its followers' best, so a silent leader does not make every follower look behind.
fn leader_raft_index(leader: u64, term: u64, answers: &[(u64, StatusAnswer)]) -> u64 {
    report_of(answers, leader)
        .map(|r| r.raft_index)
        .unwrap_or_else(|| {
            answers
                .iter()
                .filter_map(|(_, a)| match a {
                    StatusAnswer::Answered(r) if (r.leader, r.raft_term) == (leader, term) => {
                        Some(r.raft_index)
                    }
                    _ => None,
                })
                .max()
                .unwrap_or(0)
        })
}

/// Why asking failed is kept as the reason, so a member is never judged on an answer it did not
/// give; only an answered `Status` goes on to the rules of [`judge_one`].
fn verdict(
    id: u64,
    answers: &[(u64, StatusAnswer)],
    agreed: Option<(u64, u64)>,
    leader_index: Option<u64>,
    alarms: &[Alarm],
) -> Result<(), NotHealthy> {
    match answer_of(answers, id) {
        None | Some(StatusAnswer::NotAskedInTime) => Err(NotHealthy::NotAskedInTime),
        Some(StatusAnswer::NeverStarted) => Err(NotHealthy::NeverStarted),
        Some(StatusAnswer::Silent(detail)) => Err(NotHealthy::Silent(detail.clone())),
        Some(StatusAnswer::NoLeader) => Err(NotHealthy::NoLeader),
        Some(StatusAnswer::Answered(report)) => judge_one(id, report, agreed, leader_index, alarms),
    }
}

fn judge_one(
    id: u64,
    report: &StatusReport,
    agreed: Option<(u64, u64)>,
    leader_index: Option<u64>,
    alarms: &[Alarm],
) -> Result<(), NotHealthy> {
    if report.leader == 0 {
        return Err(NotHealthy::NoLeader);
    }
    if agreed != Some((report.leader, report.raft_term)) {
        return Err(NotHealthy::OtherLeader {
            leader: report.leader,
            term: report.raft_term,
        });
    }
    let behind = leader_index
        .unwrap_or(report.raft_index)
        .saturating_sub(report.raft_index);
    if behind > RAFT_INDEX_LAG_MAX {
        return Err(NotHealthy::Behind { entries: behind });
    }
    if let Some(alarm) = alarms.iter().find(|a| a.member == id) {
        return Err(NotHealthy::Alarmed {
            kind: alarm.kind.clone(),
        });
    }
    Ok(())
}

/// Every alarm any member reported, once. etcd writes each as `memberID:<decimal ID>
/// alarm:<KIND>` in `Status.errors`.
fn alarms_in(answers: &[(u64, StatusAnswer)]) -> Vec<Alarm> {
    let mut alarms: Vec<Alarm> = Vec::new();
    for (_, answer) in answers {
        let StatusAnswer::Answered(report) = answer else {
            continue;
        };
        for alarm in report.errors.iter().filter_map(|e| parse_alarm(e)) {
            if !alarms.contains(&alarm) {
                alarms.push(alarm);
            }
        }
    }
    alarms
}

fn parse_alarm(text: &str) -> Option<Alarm> {
    let mut member = None;
    let mut kind = None;
    for part in text.split_whitespace() {
        if let Some(id) = part.strip_prefix("memberID:") {
            member = id.parse::<u64>().ok();
        } else if let Some(k) = part.strip_prefix("alarm:") {
            kind = Some(k.to_string());
        }
    }
    Some(Alarm {
        member: member?,
        kind: kind.filter(|k| !k.is_empty() && k != "NONE")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, learner: bool) -> Member {
        Member {
            id,
            name: format!("m{id}"),
            peer_urls: vec![format!("http://10.0.0.{id}:2380")],
            client_urls: vec![format!("http://10.0.0.{id}:2379")],
            is_learner: learner,
        }
    }

    fn says(leader: u64, term: u64, index: u64) -> StatusAnswer {
        StatusAnswer::Answered(StatusReport {
            leader,
            raft_term: term,
            raft_index: index,
            errors: Vec::new(),
        })
    }

    fn three() -> Vec<Member> {
        (1..=3).map(|id| member(id, false)).collect()
    }

    #[test]
    fn members_in_step_with_the_majority_leader_are_healthy() {
        let j = judge(
            &three(),
            &[
                (1, says(1, 5, 100)),
                (2, says(1, 5, 99)),
                (3, says(1, 5, 100)),
            ],
        );
        assert_eq!(j.healthy, vec![1, 2, 3]);
        assert_eq!(j.leader, Some(1));
        assert!(j.leader_answered);
        assert!(j.not_healthy.is_empty());
    }

    #[test]
    fn a_member_without_a_leader_is_not_healthy() {
        let j = judge(
            &three(),
            &[
                (1, says(1, 5, 100)),
                (2, says(1, 5, 100)),
                (3, says(0, 5, 100)),
            ],
        );
        assert_eq!(j.healthy, vec![1, 2]);
        assert_eq!(j.not_healthy, vec![(3, NotHealthy::NoLeader)]);
        let j = judge(
            &three(),
            &[
                (1, says(1, 5, 100)),
                (2, says(1, 5, 100)),
                (3, StatusAnswer::NoLeader),
            ],
        );
        assert_eq!(j.not_healthy, vec![(3, NotHealthy::NoLeader)]);
    }

    #[test]
    fn a_member_following_another_leader_or_term_is_not_healthy() {
        // Member 3 came back from a partition and still follows the old leader of term 4.
        let j = judge(
            &three(),
            &[
                (1, says(2, 5, 100)),
                (2, says(2, 5, 100)),
                (3, says(1, 4, 80)),
            ],
        );
        assert_eq!(j.leader, Some(2));
        assert_eq!(j.healthy, vec![1, 2]);
        assert_eq!(
            j.not_healthy,
            vec![(3, NotHealthy::OtherLeader { leader: 1, term: 4 })]
        );
    }

    #[test]
    fn a_leader_that_stepped_down_since_does_not_confirm_itself() {
        // Two followers still follow 1 in term 5; 1 itself has moved on to term 6 under 3.
        let j = judge(
            &three(),
            &[
                (1, says(3, 6, 100)),
                (2, says(1, 5, 100)),
                (3, says(1, 5, 100)),
            ],
        );
        assert_eq!(j.leader, Some(1));
        assert!(!j.leader_answered);
        assert_eq!(j.healthy, vec![2, 3]);
    }

    #[test]
    fn without_a_majority_on_one_leader_nobody_is_healthy() {
        let j = judge(
            &three(),
            &[
                (1, says(1, 5, 100)),
                (2, says(2, 6, 100)),
                (3, StatusAnswer::Silent("refused".into())),
            ],
        );
        assert_eq!(j.leader, None);
        assert!(j.healthy.is_empty());
        assert_eq!(j.not_healthy.len(), 3);
    }

    #[test]
    fn a_member_far_behind_the_leader_is_not_healthy() {
        let lag = RAFT_INDEX_LAG_MAX + 1;
        let j = judge(
            &three(),
            &[
                (1, says(1, 5, 10_000)),
                (2, says(1, 5, 10_000 - RAFT_INDEX_LAG_MAX)),
                (3, says(1, 5, 10_000 - lag)),
            ],
        );
        assert_eq!(j.healthy, vec![1, 2]);
        assert_eq!(
            j.not_healthy,
            vec![(3, NotHealthy::Behind { entries: lag })]
        );
    }

    #[test]
    fn without_the_leaders_answer_the_best_follower_index_stands_in() {
        let j = judge(
            &three(),
            &[
                (1, StatusAnswer::Silent("timed out".into())),
                (2, says(1, 5, 10_000)),
                (3, says(1, 5, 1_000)),
            ],
        );
        assert_eq!(j.leader, Some(1));
        assert!(!j.leader_answered, "a silent leader confirms nothing");
        assert_eq!(j.healthy, vec![2]);
        assert_eq!(j.not_healthy[1], (3, NotHealthy::Behind { entries: 9_000 }));
    }

    #[test]
    fn an_alarm_makes_the_member_it_names_unhealthy() {
        let alarm = |index| {
            StatusAnswer::Answered(StatusReport {
                leader: 1,
                raft_term: 5,
                raft_index: index,
                errors: vec!["memberID:2 alarm:NOSPACE ".into()],
            })
        };
        let j = judge(
            &three(),
            &[(1, alarm(100)), (2, alarm(100)), (3, alarm(100))],
        );
        assert_eq!(j.healthy, vec![1, 3]);
        assert_eq!(
            j.not_healthy,
            vec![(
                2,
                NotHealthy::Alarmed {
                    kind: "NOSPACE".into()
                }
            )]
        );
        assert_eq!(
            j.alarms,
            vec![Alarm {
                member: 2,
                kind: "NOSPACE".into()
            }]
        );
    }

    #[test]
    fn learners_do_not_count_toward_the_majority() {
        let mut members = three();
        members.push(member(4, true));
        members.push(member(5, true));
        // Two voters of three agree on leader 1; the learners follow leader 2 (stale) and do not
        // make it a majority.
        let j = judge(
            &members,
            &[
                (1, says(1, 5, 100)),
                (2, says(1, 5, 100)),
                (3, StatusAnswer::Silent("down".into())),
                (4, says(2, 4, 100)),
                (5, says(2, 4, 100)),
            ],
        );
        assert_eq!(j.leader, Some(1));
        assert_eq!(j.healthy, vec![1, 2]);
    }

    #[test]
    fn unasked_and_unstarted_members_say_so() {
        let mut members = three();
        members.push(member(4, true));
        let j = judge(
            &members,
            &[
                (1, says(1, 5, 100)),
                (2, says(1, 5, 100)),
                (4, StatusAnswer::NeverStarted),
            ],
        );
        assert_eq!(j.healthy, vec![1, 2]);
        assert_eq!(
            j.not_healthy,
            vec![
                (3, NotHealthy::NotAskedInTime),
                (4, NotHealthy::NeverStarted)
            ]
        );
        assert!(NotHealthy::NotAskedInTime
            .to_string()
            .contains("not asked in time"));
    }

    #[test]
    fn alarm_texts_parse() {
        assert_eq!(
            parse_alarm("memberID:12345 alarm:CORRUPT "),
            Some(Alarm {
                member: 12345,
                kind: "CORRUPT".into()
            })
        );
        assert_eq!(parse_alarm("etcdserver: no leader"), None);
        assert_eq!(parse_alarm("memberID:1 alarm:NONE"), None);
    }
}

//! Pure membership decisions: which member belongs to which instance, which members are stale,
//! and whether removing one keeps quorum. No I/O here, so the rule that guards the cluster's
//! quorum is property-tested against a brute-force definition.

use std::net::IpAddr;

use serde::Serialize;

use crate::model::{ClusterView, Instance, Member};

/// Whether a removal may go ahead, with the reason either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Verdict {
    Safe { reason: String },
    Unsafe { reason: String },
}

impl Verdict {
    pub fn is_safe(&self) -> bool {
        matches!(self, Verdict::Safe { .. })
    }

    pub fn reason(&self) -> &str {
        match self {
            Verdict::Safe { reason } | Verdict::Unsafe { reason } => reason,
        }
    }
}

/// The host part of a URL such as `https://10.0.1.5:2379` or `http://[fd00::1]:2380`.
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split_once(']').map(|(h, _)| h);
    }
    Some(authority.rsplit_once(':').map_or(authority, |(h, _)| h))
}

fn url_ip(url: &str) -> Option<IpAddr> {
    url_host(url)?.parse().ok()
}

/// Whether `member` is the etcd member of `instance`: by name (instance ID or private DNS name,
/// short or full), or by the private IP in its peer or client URLs.
pub fn member_matches(member: &Member, instance: &Instance) -> bool {
    let name = member.name.as_str();
    if !name.is_empty() {
        if name == instance.id {
            return true;
        }
        if let Some(dns) = instance.private_dns.as_deref().filter(|d| !d.is_empty()) {
            let short = dns.split('.').next().unwrap_or(dns);
            if name == dns || name == short {
                return true;
            }
        }
        // A name that is another instance's ID or EC2 host name belongs to that instance, even
        // when this instance was given the private IP it used to have.
        if names_an_ec2_instance(name) {
            return false;
        }
    }
    instance.private_ip.is_some_and(|ip| {
        member
            .peer_urls
            .iter()
            .chain(&member.client_urls)
            .any(|u| url_ip(u) == Some(ip))
    })
}

/// Whether `name` has the form of an EC2 instance ID (`i-` and 8 or 17 hex digits) or of an EC2
/// private host name (`ip-10-0-1-5`, optionally with its domain).
fn names_an_ec2_instance(name: &str) -> bool {
    if let Some(hex) = name.strip_prefix("i-") {
        return matches!(hex.len(), 8 | 17) && hex.chars().all(|c| c.is_ascii_hexdigit());
    }
    name.split('.')
        .next()
        .and_then(|host| host.strip_prefix("ip-"))
        .is_some_and(|ip| {
            let parts: Vec<&str> = ip.split('-').collect();
            parts.len() == 4 && parts.iter().all(|p| p.parse::<u8>().is_ok())
        })
}

/// The member of `instance`, if the cluster has one.
pub fn find_member<'a>(view: &'a ClusterView, instance: &Instance) -> Option<&'a Member> {
    view.members.iter().find(|m| member_matches(m, instance))
}

/// Members that match none of `instances` (the group's pending and running instances).
pub fn stale_members<'a>(view: &'a ClusterView, instances: &[Instance]) -> Vec<&'a Member> {
    view.members
        .iter()
        .filter(|m| !instances.iter().any(|i| member_matches(m, i)))
        .collect()
}

/// Two conditions, both on etcd's own view: the healthy voting members must be a majority of the
/// voting members now (or the change cannot commit and would hang), and after removing `member`
/// the healthy voting members left must be a majority of the voting members left. Learners neither
/// vote nor count; removing one changes no majority.
pub fn quorum_after_removal(view: &ClusterView, member: u64) -> Verdict {
    let Some(target) = view.member(member) else {
        return Verdict::Safe {
            reason: format!("member {member:x} is not in the cluster"),
        };
    };
    // The change itself must commit in the current configuration: without a healthy majority of
    // today's voters no removal can succeed, whatever the cluster would look like after it.
    let current: Vec<&Member> = view.members.iter().filter(|m| !m.is_learner).collect();
    let current_healthy = current.iter().filter(|m| view.is_healthy(m.id)).count();
    if current_healthy < current.len() / 2 + 1 {
        return Verdict::Unsafe {
            reason: format!(
                "the cluster has no quorum now ({current_healthy} of {} voting members healthy, {} needed to commit a change)",
                current.len(),
                current.len() / 2 + 1
            ),
        };
    }
    if target.is_learner {
        return Verdict::Safe {
            reason: format!("member {member:x} is a learner, not a voter"),
        };
    }
    let voters: Vec<&Member> = current.into_iter().filter(|m| m.id != member).collect();
    let healthy = voters.iter().filter(|m| view.is_healthy(m.id)).count();
    let needed = voters.len() / 2 + 1;
    let summary = format!(
        "{healthy} of {} remaining voting members healthy, {needed} needed",
        voters.len()
    );
    if voters.is_empty() {
        Verdict::Unsafe {
            reason: format!("member {member:x} is the last voting member"),
        }
    } else if healthy >= needed {
        Verdict::Safe { reason: summary }
    } else {
        Verdict::Unsafe { reason: summary }
    }
}

/// A healthy voting member other than `except` to hand leadership to, preferring the lowest ID so
/// the choice is stable across retries.
pub fn leader_candidate(view: &ClusterView, except: u64) -> Option<u64> {
    view.members
        .iter()
        .filter(|m| !m.is_learner && m.id != except && view.is_healthy(m.id))
        .map(|m| m.id)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(id: u64, name: &str, ip: &str, learner: bool) -> Member {
        Member {
            id,
            name: name.to_string(),
            peer_urls: vec![format!("https://{ip}:2380")],
            client_urls: if name.is_empty() {
                vec![]
            } else {
                vec![format!("https://{ip}:2379")]
            },
            is_learner: learner,
        }
    }

    fn instance(id: &str, ip: &str, dns: &str) -> Instance {
        Instance {
            id: id.to_string(),
            private_ip: ip.parse().ok(),
            private_dns: Some(dns.to_string()).filter(|d| !d.is_empty()),
            state: "running".to_string(),
            spot: false,
        }
    }

    fn view(members: Vec<Member>, healthy: &[u64]) -> ClusterView {
        ClusterView {
            members,
            healthy: healthy.to_vec(),
            leader: healthy.first().copied(),
        }
    }

    #[test]
    fn url_hosts() {
        assert_eq!(url_host("https://10.0.1.5:2379"), Some("10.0.1.5"));
        assert_eq!(url_host("http://[fd00::1]:2380"), Some("fd00::1"));
        assert_eq!(url_host("http://node-1.internal"), Some("node-1.internal"));
        assert_eq!(url_host("10.0.0.9:2379/path"), Some("10.0.0.9"));
    }

    #[test]
    fn matching_by_name_dns_or_ip() {
        let i = instance("i-0abc", "10.0.1.5", "ip-10-0-1-5.ec2.internal");
        assert!(member_matches(&member(1, "i-0abc", "10.9.9.9", false), &i));
        assert!(member_matches(
            &member(1, "ip-10-0-1-5.ec2.internal", "10.9.9.9", false),
            &i
        ));
        assert!(member_matches(
            &member(1, "ip-10-0-1-5", "10.9.9.9", false),
            &i
        ));
        assert!(
            member_matches(&member(1, "", "10.0.1.5", false), &i),
            "unstarted member by peer IP"
        );
        assert!(!member_matches(
            &member(1, "i-0other", "10.0.1.50", false),
            &i
        ));
        assert!(!member_matches(
            &member(1, "", "10.0.1.6", false),
            &instance("i-x", "", "")
        ));
    }

    #[test]
    fn a_reused_ip_does_not_adopt_another_instances_member() {
        let newcomer = instance(
            "i-0bbbbbbbbbbbbbbb2",
            "10.0.0.5",
            "ip-10-0-0-5.ec2.internal",
        );
        let dead = member(1, "i-0aaaaaaaaaaaaaaa1", "10.0.0.5", false);
        assert!(
            !member_matches(&dead, &newcomer),
            "named for the dead instance"
        );
        let by_host = member(2, "ip-10-0-0-9", "10.0.0.5", false);
        assert!(!member_matches(&by_host, &newcomer));
        let custom = member(3, "etcd-blue", "10.0.0.5", false);
        assert!(
            member_matches(&custom, &newcomer),
            "other names still match by IP"
        );
        let v = view(vec![dead], &[1]);
        assert_eq!(stale_members(&v, &[newcomer]).len(), 1);
    }

    #[test]
    fn stale_members_match_no_instance() {
        let v = view(
            vec![
                member(1, "i-a", "10.0.0.1", false),
                member(2, "i-gone", "10.0.0.2", false),
                member(3, "", "10.0.0.3", false),
            ],
            &[1, 2],
        );
        let stale: Vec<u64> = stale_members(&v, &[instance("i-a", "10.0.0.1", "")])
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(stale, vec![2, 3]);
    }

    #[test]
    fn three_node_cluster_cases() {
        let three = |healthy: &[u64]| {
            view(
                (1..=3)
                    .map(|i| member(i, &format!("i-{i}"), &format!("10.0.0.{i}"), false))
                    .collect(),
                healthy,
            )
        };
        assert!(quorum_after_removal(&three(&[1, 2, 3]), 3).is_safe());
        assert!(
            quorum_after_removal(&three(&[1, 2]), 3).is_safe(),
            "removing the dead one"
        );
        let v = quorum_after_removal(&three(&[1, 3]), 3);
        assert_eq!(
            v,
            Verdict::Unsafe {
                reason: "1 of 2 remaining voting members healthy, 2 needed".into()
            }
        );
        assert!(quorum_after_removal(&three(&[1, 2, 3]), 99).is_safe());
        let single = view(vec![member(1, "i-1", "10.0.0.1", false)], &[1]);
        assert!(!quorum_after_removal(&single, 1).is_safe());
    }

    #[test]
    fn no_change_without_quorum_now() {
        // Three nodes and a stale voter that never started: four voters, three needed to commit.
        // With one node down, even removing the stale member cannot commit.
        let mut members: Vec<Member> = (1..=3)
            .map(|i| member(i, &format!("i-{i}"), &format!("10.0.0.{i}"), false))
            .collect();
        members.push(member(4, "", "10.0.0.4", false));
        let v = quorum_after_removal(&view(members.clone(), &[1, 2]), 4);
        assert_eq!(
            v,
            Verdict::Unsafe {
                reason: "the cluster has no quorum now (2 of 4 voting members healthy, 3 needed to commit a change)".into()
            }
        );
        assert!(quorum_after_removal(&view(members, &[1, 2, 3]), 4).is_safe());
    }

    #[test]
    fn learners_do_not_vote() {
        let members = vec![
            member(1, "a", "10.0.0.1", false),
            member(2, "b", "10.0.0.2", false),
            member(3, "c", "10.0.0.3", true),
        ];
        let all_up = view(members.clone(), &[1, 2, 3]);
        assert!(
            quorum_after_removal(&all_up, 3).is_safe(),
            "a learner's removal changes no majority"
        );
        assert!(
            quorum_after_removal(&all_up, 2).is_safe(),
            "one healthy voter left of one"
        );
        // Two voters, one down: the healthy learner does not make a majority.
        let one_voter_down = view(members, &[1, 3]);
        assert!(!quorum_after_removal(&one_voter_down, 3).is_safe());
        assert_eq!(
            leader_candidate(&one_voter_down, 1),
            None,
            "the learner cannot lead, 2 is down"
        );
    }

    /// Brute force: the removal is safe iff, among the voters left, the healthy ones can form a
    /// majority on their own, i.e. some subset of healthy voters has more than half the votes.
    fn brute_force_safe(view: &ClusterView, member: u64) -> bool {
        let Some(target) = view.member(member) else {
            return true;
        };
        let voters: Vec<&Member> = view.members.iter().filter(|m| !m.is_learner).collect();
        if !has_healthy_majority(view, &voters) {
            return false;
        }
        if target.is_learner {
            return true;
        }
        let left: Vec<&Member> = voters.into_iter().filter(|m| m.id != member).collect();
        has_healthy_majority(view, &left)
    }

    /// Some subset of `voters`, all healthy, holds more than half of their votes.
    fn has_healthy_majority(view: &ClusterView, voters: &[&Member]) -> bool {
        let n = voters.len();
        (0u32..(1 << n)).any(|mask| {
            let chosen: Vec<&&Member> = voters
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, m)| m)
                .collect();
            chosen.iter().all(|m| view.is_healthy(m.id)) && 2 * chosen.len() > n
        })
    }

    proptest! {
        #[test]
        fn quorum_rule_matches_brute_force(
            spec in prop::collection::vec((any::<bool>(), any::<bool>()), 1..8),
            target in 0usize..9,
        ) {
            let members: Vec<Member> = spec.iter().enumerate()
                .map(|(i, &(learner, _))| member(i as u64 + 1, &format!("m{i}"), "10.0.0.1", learner))
                .collect();
            let healthy: Vec<u64> = spec.iter().enumerate().filter(|(_, &(_, h))| h).map(|(i, _)| i as u64 + 1).collect();
            let v = view(members, &healthy);
            let id = target as u64 + 1;
            prop_assert_eq!(quorum_after_removal(&v, id).is_safe(), brute_force_safe(&v, id));
        }
    }
}

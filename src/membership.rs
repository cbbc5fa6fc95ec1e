//! Pure membership decisions: which member belongs to which instance, which members are stale,
//! and whether removing one keeps quorum. No I/O here, so the rule that guards the cluster's
//! quorum is property-tested against a brute-force definition.

use std::net::IpAddr;

use serde::Serialize;

use crate::model::{ClusterView, Instance, Member, NotHealthy};

/// Whether a removal may go ahead, with the reason either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Verdict {
    Safe {
        reason: String,
    },
    /// The healthy voters would not (or do not) make a majority.
    Unsafe {
        reason: String,
    },
    /// Fewer voters than `ETCD_MIN_VOTERS` would remain.
    BelowFloor {
        reason: String,
    },
}

impl Verdict {
    pub fn is_safe(&self) -> bool {
        matches!(self, Verdict::Safe { .. })
    }

    pub fn reason(&self) -> &str {
        match self {
            Verdict::Safe { reason }
            | Verdict::Unsafe { reason }
            | Verdict::BelowFloor { reason } => reason,
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
    url_host(url)?
        .parse::<IpAddr>()
        .ok()
        .map(|ip| ip.to_canonical())
}

/// What a member's name says about the machine it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NameSays {
    /// An instance ID (`i-0abc...`), alone or as the first label of a resource-name host name
    /// (`i-0abc....us-west-2.compute.internal`).
    Instance(String),
    /// An EC2 IP-name host name (`ip-10-0-1-5`) under any domain (`.ec2.internal`, a custom DHCP
    /// domain such as `.corp.example`): the instance with that private IP.
    Ip(IpAddr),
    /// Any other name (`etcd-1`, a custom host name): it says nothing about the instance.
    Nothing,
}

fn name_says(name: &str) -> NameSays {
    let first = name.split('.').next().unwrap_or(name);
    if is_instance_id(first) {
        return NameSays::Instance(first.to_string());
    }
    if let Some(ip) = first.strip_prefix("ip-").and_then(ip_from_dashes) {
        return NameSays::Ip(ip);
    }
    NameSays::Nothing
}

/// An EC2 instance ID: `i-` and 8 or 17 hex digits.
fn is_instance_id(text: &str) -> bool {
    text.strip_prefix("i-").is_some_and(|hex| {
        matches!(hex.len(), 8 | 17) && hex.chars().all(|c| c.is_ascii_hexdigit())
    })
}

/// `10-0-1-5` as 10.0.1.5.
fn ip_from_dashes(text: &str) -> Option<IpAddr> {
    let parts: Vec<&str> = text.split('-').collect();
    if parts.len() != 4 {
        return None;
    }
    parts
        .join(".")
        .parse::<std::net::Ipv4Addr>()
        .ok()
        .map(IpAddr::V4)
}

/// The IPs in a member's peer and client URLs (host names in URLs are not resolved).
fn url_ips(member: &Member) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in member
        .peer_urls
        .iter()
        .chain(&member.client_urls)
        .filter_map(|u| url_ip(u))
    {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

/// Whether `member`'s name names `instance`: its instance ID, its private DNS name (short or
/// full), or an IP-name host name of its private IP under any domain.
fn matches_by_name(member: &Member, instance: &Instance) -> bool {
    let name = member.name.as_str();
    if name.is_empty() {
        return false;
    }
    if name == instance.id {
        return true;
    }
    if let Some(dns) = instance.private_dns.as_deref().filter(|d| !d.is_empty()) {
        let short = dns.split('.').next().unwrap_or(dns);
        if name == dns || name == short {
            return true;
        }
    }
    match name_says(name) {
        NameSays::Instance(id) => id == instance.id,
        // An IP-name host name is derived from the primary private IPv4 address only.
        NameSays::Ip(ip) => instance.private_ip == Some(ip),
        NameSays::Nothing => false,
    }
}

/// Whether `member` is the etcd member of `instance`: by name (see [`matches_by_name`]), or, for
/// a name that says nothing about its machine (`etcd-1`, or empty: not started yet), by the
/// private IP in its peer or client URLs. A name that is another instance's ID or IP-name
/// belongs to that instance, even when this instance was given the private IP it used to have.
pub fn member_matches(member: &Member, instance: &Instance) -> bool {
    if matches_by_name(member, instance) {
        return true;
    }
    if name_says(&member.name) != NameSays::Nothing {
        return false;
    }
    url_ips(member).into_iter().any(|ip| instance.has_ip(ip))
}

/// The member of `instance`, if the cluster has one: a member named for it first, then one that
/// carries its IP (an unstarted learner added for the same address must not shadow the
/// instance's own named member).
pub fn find_member<'a>(view: &'a ClusterView, instance: &Instance) -> Option<&'a Member> {
    let on_primary = |m: &&&Member| {
        instance
            .private_ip
            .is_some_and(|ip| url_ips(m).contains(&ip))
    };
    view.members
        .iter()
        .find(|m| matches_by_name(m, instance))
        .or_else(|| {
            // Of the members an address matches, one on the primary address first: a secondary
            // address may have been a dead instance's once.
            let by_address: Vec<&Member> = view
                .members
                .iter()
                .filter(|m| member_matches(m, instance))
                .collect();
            by_address
                .iter()
                .find(on_primary)
                .or(by_address.first())
                .copied()
        })
}

/// The proof that `leaving` has no member, which a terminate needs before it completes
/// without a removal: no match is not proof of absence (a member the matcher cannot place may
/// be this instance's). `Ok` when the list is the leader's and every voter is accounted for:
/// matched by another existing instance (`others`), or provably another machine's by its name
/// (another instance's ID, or the IP-name of another primary address than `leaving`'s, when
/// that is known). An address in a URL proves nothing by itself: an elastic, public or
/// container address EC2 does not list may still be `leaving`'s. `Err` names the voters that
/// are neither.
pub fn absence_proven<'a>(
    view: &'a ClusterView,
    leaving: &Instance,
    others: &[Instance],
) -> Result<(), Absence<'a>> {
    if !view.confirmed_by_leader {
        return Err(Absence::Unconfirmed);
    }
    let unaccounted: Vec<&Member> = view
        .members
        .iter()
        .filter(|m| !m.is_learner)
        .filter(|m| {
            let matched = others
                .iter()
                .any(|i| i.id != leaving.id && member_matches(m, i));
            !matched && !elsewhere(m, leaving)
        })
        .collect();
    if unaccounted.is_empty() {
        Ok(())
    } else {
        Err(Absence::Unaccounted(unaccounted))
    }
}

/// Why [`absence_proven`] could not prove it.
#[derive(Debug, PartialEq, Eq)]
pub enum Absence<'a> {
    /// The member list did not come from the leader.
    Unconfirmed,
    /// Voters that no other instance accounts for and that may be `leaving`'s.
    Unaccounted(Vec<&'a Member>),
}

/// Whether `member`'s name says it runs on another machine than `leaving`.
fn elsewhere(member: &Member, leaving: &Instance) -> bool {
    match name_says(&member.name) {
        NameSays::Instance(id) => id != leaving.id,
        NameSays::Ip(ip) => leaving.private_ip.is_some_and(|own| own != ip),
        NameSays::Nothing => false,
    }
}

/// The host to put in a newcomer's peer URL: an address of the family its peers use (an
/// IPv6-only or dual-stack cluster advertises `[v6]` peer URLs), bracketed for IPv6.
pub fn peer_host(newcomer: &Instance, view: &ClusterView) -> Option<String> {
    let peers_v6 = view
        .members
        .iter()
        .flat_map(|m| &m.peer_urls)
        .find_map(|u| url_ip(u))
        .map(|ip| ip.is_ipv6());
    let ip = match peers_v6 {
        Some(v6) => newcomer
            .ips()
            .find(|ip| ip.is_ipv6() == v6)
            .or_else(|| newcomer.ips().next()),
        None => newcomer.private_ip.or_else(|| newcomer.ips().next()),
    }?;
    Some(if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    })
}

/// What to ask EC2 about a member: the instance its name names, or the IPs it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Instance(String),
    Ips(Vec<IpAddr>),
    /// Neither its name nor its URLs name an instance or an IP (host names in URLs): which
    /// machine it runs on cannot be told, so it is never called stale.
    Unknown,
}

/// How a member is told apart from the instances: by the instance its name names (then its IP,
/// which AWS may have handed to a newer instance, says nothing), or else by the IPs it carries.
pub fn identity(member: &Member) -> Identity {
    match name_says(&member.name) {
        NameSays::Instance(id) => Identity::Instance(id),
        NameSays::Ip(ip) => Identity::Ips(vec![ip]),
        NameSays::Nothing => {
            let ips = url_ips(member);
            if ips.is_empty() {
                Identity::Unknown
            } else {
                Identity::Ips(ips)
            }
        }
    }
}

/// Whether some instance in `existing` carries `identity`.
fn carried_by_any(identity: &Identity, existing: &[Instance]) -> bool {
    match identity {
        Identity::Instance(id) => existing.iter().any(|i| &i.id == id),
        Identity::Ips(ips) => existing.iter().any(|i| i.ips().any(|ip| ips.contains(&ip))),
        Identity::Unknown => true,
    }
}

/// Members that did not answer `Status` in this invocation (or never started): the only ones
/// that may be stale. A member that answers is alive, whatever its name, group or health; one
/// not asked in time may be too.
pub fn silent_members(view: &ClusterView) -> Vec<&Member> {
    view.members
        .iter()
        .filter(|m| !view.is_healthy(m.id))
        .filter(|m| {
            matches!(
                view.why_not_healthy(m.id),
                None | Some(NotHealthy::Silent(_) | NotHealthy::NeverStarted)
            )
        })
        .collect()
}

/// The instance IDs and IPs to ask EC2 about for `members`, each once.
pub fn identities_to_look_up(members: &[&Member]) -> (Vec<String>, Vec<IpAddr>) {
    let (mut ids, mut ips): (Vec<String>, Vec<IpAddr>) = (Vec::new(), Vec::new());
    for member in members {
        match identity(member) {
            Identity::Instance(id) if !ids.contains(&id) => ids.push(id),
            Identity::Ips(found) => {
                for ip in found {
                    if !ips.contains(&ip) {
                        ips.push(ip);
                    }
                }
            }
            _ => {}
        }
    }
    (ids, ips)
}

/// The stale-member rule, both halves: a member is stale when it did not answer `Status` in this
/// invocation AND no instance that still exists (`existing`: pending, running, stopping or
/// stopped, in any group or none) carries its identity. Silent members whose machine cannot be
/// told (`Identity::Unknown`) are never stale: they are returned apart so they can be reported.
pub fn stale_members<'a>(
    view: &'a ClusterView,
    existing: &[Instance],
) -> (Vec<&'a Member>, Vec<&'a Member>) {
    let silent = silent_members(view);
    let unknown = silent
        .iter()
        .copied()
        .filter(|m| identity(m) == Identity::Unknown)
        .collect();
    let stale = silent
        .into_iter()
        .filter(|m| !carried_by_any(&identity(m), existing))
        .collect();
    (stale, unknown)
}

/// Three conditions, all on etcd's own view: the healthy voting members must be a majority of
/// the voting members now (or the change cannot commit and would hang); after removing `member`
/// at least `min_voters` voters must remain (`ETCD_MIN_VOTERS`: two to one is raft's hazardous
/// step, where a crash between the commit and its application can leave the survivor unable to
/// elect itself); and the healthy voting members left must be a majority of the voting members
/// left. Learners neither vote nor count; removing one changes no majority.
pub fn quorum_after_removal(view: &ClusterView, member: u64, min_voters: u32) -> Verdict {
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
    if voters.is_empty() {
        return Verdict::Unsafe {
            reason: format!("member {member:x} is the last voting member"),
        };
    }
    if voters.len() < min_voters as usize {
        return Verdict::BelowFloor {
            reason: format!(
                "{} voting member(s) would remain, fewer than ETCD_MIN_VOTERS={min_voters} (shrinking to one voter is raft's hazardous step; set ETCD_MIN_VOTERS=1 only to run a single node on purpose)",
                voters.len()
            ),
        };
    }
    let healthy = voters.iter().filter(|m| view.is_healthy(m.id)).count();
    let needed = voters.len() / 2 + 1;
    let summary = format!(
        "{healthy} of {} remaining voting members healthy, {needed} needed",
        voters.len()
    );
    if healthy >= needed {
        Verdict::Safe { reason: summary }
    } else {
        Verdict::Unsafe { reason: summary }
    }
}

/// [`quorum_after_removal`] beside voters that go whatever is decided: `leaving` are members
/// whose machines a confirmed Spot interruption takes within two minutes. Removing a healthy
/// voter must stay safe both ways they can go: their own removals run first (fewer voters: the
/// floor counts them out), or their machines go with their members kept (dead voters: the
/// majority counts them in). Without this a scale-in beside an interruption takes three voters
/// to two, and the interrupted one then leaves one voter, or none able to elect a leader.
///
/// Only a healthy voter is held so: keeping it is then never worse than removing it, in either
/// future. A member that is not healthy, or a learner, adds no vote a majority can count on;
/// holding it would keep a dead voter in the count and could itself cost quorum (three voters,
/// one dead and one interrupted: the dead one removed, the interrupted one can follow and one
/// voter is left; the dead one kept, the interrupted one cannot, and one of three is no quorum).
pub fn quorum_beside_departures(
    view: &ClusterView,
    member: u64,
    min_voters: u32,
    leaving: &[u64],
) -> Verdict {
    let base = quorum_after_removal(view, member, min_voters);
    let leaving: Vec<u64> = leaving.iter().copied().filter(|id| *id != member).collect();
    let healthy_voter = view
        .member(member)
        .is_some_and(|m| !m.is_learner && view.is_healthy(m.id));
    if leaving.is_empty() || !base.is_safe() || !healthy_voter {
        return base;
    }
    let mut removed = view.clone();
    removed.members.retain(|m| !leaving.contains(&m.id));
    removed.healthy.retain(|id| !leaving.contains(id));
    let mut dead = view.clone();
    dead.healthy.retain(|id| !leaving.contains(id));
    let ways = [
        (removed, "once their own removals have run"),
        (dead, "if their machines go with their members kept"),
    ];
    for (after, how) in ways {
        let verdict = quorum_after_removal(&after, member, min_voters);
        let reason = format!(
            "{} voter(s) under a confirmed Spot interruption leave whatever is decided; {how}: {}",
            leaving.len(),
            verdict.reason()
        );
        match verdict {
            Verdict::Safe { .. } => {}
            Verdict::Unsafe { .. } => return Verdict::Unsafe { reason },
            Verdict::BelowFloor { .. } => return Verdict::BelowFloor { reason },
        }
    }
    base
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
            spot_request_id: None,
            other_ips: Vec::new(),
        }
    }

    fn view(members: Vec<Member>, healthy: &[u64]) -> ClusterView {
        ClusterView {
            members,
            healthy: healthy.to_vec(),
            leader: healthy.first().copied(),
            confirmed_by_leader: true,
            ..ClusterView::default()
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
        // Silent, and the instance its name names is gone: stale, although a newer instance
        // carries the IP it used to have.
        let v = view(vec![dead], &[]);
        let (stale, unknown) = stale_members(&v, &[newcomer]);
        assert_eq!((stale.len(), unknown.len()), (1, 0));
    }

    #[test]
    fn ip_names_match_under_any_domain() {
        let i = instance("i-0abc", "10.0.1.5", "ip-10-0-1-5.ec2.internal");
        for name in [
            "ip-10-0-1-5.corp.example",
            "ip-10-0-1-5.eu-west-1.compute.internal",
            "ip-10-0-1-5",
        ] {
            assert!(
                member_matches(&member(1, name, "10.9.9.9", false), &i),
                "{name}"
            );
        }
        assert!(!member_matches(
            &member(1, "ip-10-0-1-6.corp.example", "10.0.1.5", false),
            &i
        ));
        let resource_name = member(
            1,
            "i-0abcdef1.us-west-2.compute.internal",
            "10.9.9.9",
            false,
        );
        assert!(member_matches(
            &resource_name,
            &instance("i-0abcdef1", "10.0.0.7", "")
        ));
    }

    #[test]
    fn a_named_member_wins_over_an_unstarted_one_with_the_same_ip() {
        let i = instance("i-0abc", "10.0.1.5", "");
        let unstarted = member(7, "", "10.0.1.5", true);
        let named = member(8, "i-0abc", "10.0.1.5", false);
        let v = view(vec![unstarted, named], &[8]);
        assert_eq!(find_member(&v, &i).map(|m| m.id), Some(8));
    }

    #[test]
    fn only_silent_members_no_existing_instance_carries_are_stale() {
        let v = view(
            vec![
                member(1, "i-0000000a", "10.0.0.1", false),
                // Silent, its instance still exists (stopped, or in another group): kept.
                member(2, "i-0000000b", "10.0.0.2", false),
                // Silent, unstarted, no instance has its IP: stale.
                member(3, "", "10.0.0.3", true),
                // Answers, and no instance has anything of it (a node outside any group): kept.
                member(4, "etcd-outside", "10.0.0.4", false),
                // Silent, named for its IP under a custom domain, no instance with that IP.
                member(5, "ip-10-0-0-5.corp.example", "10.0.0.5", false),
                // Silent, and nothing tells its machine: never stale, reported.
                Member {
                    id: 6,
                    name: "etcd-6".into(),
                    peer_urls: vec!["https://etcd-6.corp.example:2380".into()],
                    client_urls: vec![],
                    is_learner: false,
                },
            ],
            &[1, 4],
        );
        let mut stopped = instance("i-0000000b", "10.0.0.2", "");
        stopped.state = "stopped".into();
        let existing = vec![instance("i-0000000a", "10.0.0.1", ""), stopped];
        let (stale, unknown) = stale_members(&v, &existing);
        let ids = |ms: Vec<&Member>| ms.iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(ids(stale), vec![3, 5]);
        assert_eq!(ids(unknown), vec![6]);
        let silent = silent_members(&v);
        assert_eq!(
            identities_to_look_up(&silent),
            (
                vec!["i-0000000b".to_string()],
                vec!["10.0.0.3".parse().unwrap(), "10.0.0.5".parse().unwrap()]
            )
        );
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
        assert!(quorum_after_removal(&three(&[1, 2, 3]), 3, 2).is_safe());
        assert!(
            quorum_after_removal(&three(&[1, 2]), 3, 2).is_safe(),
            "removing the dead one"
        );
        let v = quorum_after_removal(&three(&[1, 3]), 3, 2);
        assert_eq!(
            v,
            Verdict::Unsafe {
                reason: "1 of 2 remaining voting members healthy, 2 needed".into()
            }
        );
        assert!(quorum_after_removal(&three(&[1, 2, 3]), 99, 2).is_safe());
        let single = view(vec![member(1, "i-1", "10.0.0.1", false)], &[1]);
        assert!(!quorum_after_removal(&single, 1, 1).is_safe());
    }

    #[test]
    fn no_change_without_quorum_now() {
        // Three nodes and a stale voter that never started: four voters, three needed to commit.
        // With one node down, even removing the stale member cannot commit.
        let mut members: Vec<Member> = (1..=3)
            .map(|i| member(i, &format!("i-{i}"), &format!("10.0.0.{i}"), false))
            .collect();
        members.push(member(4, "", "10.0.0.4", false));
        let v = quorum_after_removal(&view(members.clone(), &[1, 2]), 4, 2);
        assert_eq!(
            v,
            Verdict::Unsafe {
                reason: "the cluster has no quorum now (2 of 4 voting members healthy, 3 needed to commit a change)".into()
            }
        );
        assert!(quorum_after_removal(&view(members, &[1, 2, 3]), 4, 2).is_safe());
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
            quorum_after_removal(&all_up, 3, 2).is_safe(),
            "a learner's removal changes no majority"
        );
        assert!(
            quorum_after_removal(&all_up, 2, 1).is_safe(),
            "one healthy voter left of one, when one is allowed"
        );
        assert_eq!(
            quorum_after_removal(&all_up, 2, 2),
            Verdict::BelowFloor {
                reason: "1 voting member(s) would remain, fewer than ETCD_MIN_VOTERS=2 (shrinking to one voter is raft's hazardous step; set ETCD_MIN_VOTERS=1 only to run a single node on purpose)".into()
            },
            "the learner does not count toward the floor"
        );
        // Two voters, one down: the healthy learner does not make a majority.
        let one_voter_down = view(members, &[1, 3]);
        assert!(!quorum_after_removal(&one_voter_down, 3, 1).is_safe());
        assert_eq!(
            leader_candidate(&one_voter_down, 1),
            None,
            "the learner cannot lead, 2 is down"
        );
    }

    #[test]
    fn voters_under_a_confirmed_interruption_are_counted_out_both_ways() {
        let voters = |n: u64| -> Vec<Member> {
            (1..=n)
                .map(|i| member(i, &format!("m{i}"), "10.0.0.1", false))
                .collect()
        };
        let three = view(voters(3), &[1, 2, 3]);
        assert!(quorum_after_removal(&three, 3, 2).is_safe());
        let beside = quorum_beside_departures(&three, 3, 2, &[2]);
        assert!(
            matches!(beside, Verdict::BelowFloor { .. }),
            "three to two, then the interrupted one goes: {beside:?}"
        );
        assert!(
            beside.reason().contains("once their own removals have run"),
            "{}",
            beside.reason()
        );
        // Even with one voter allowed: if the interrupted one's removal fails, its dead member
        // and one live voter are no quorum, where three with one dead were.
        let floor_one = quorum_beside_departures(&three, 3, 1, &[2]);
        assert!(
            floor_one.reason().contains("with their members kept"),
            "{floor_one:?}"
        );
        assert!(!floor_one.is_safe());

        let five = view(voters(5), &[1, 2, 3, 4, 5]);
        assert!(quorum_beside_departures(&five, 5, 2, &[4]).is_safe());
        let two_leaving = quorum_beside_departures(&five, 5, 2, &[3, 4]);
        assert!(
            matches!(two_leaving, Verdict::Unsafe { .. }),
            "kept and dead, two of four voters left healthy: {two_leaving:?}"
        );
        assert!(
            two_leaving.reason().contains("with their members kept"),
            "{}",
            two_leaving.reason()
        );

        // A dead voter or a learner is not held: keeping it is no better than removing it.
        let dead_target = view(voters(3), &[1, 2]);
        assert!(quorum_after_removal(&dead_target, 3, 2).is_safe());
        assert!(quorum_beside_departures(&dead_target, 3, 2, &[2]).is_safe());

        // The target itself and learners change nothing; an unsafe removal stays as it was.
        assert_eq!(
            quorum_beside_departures(&three, 3, 2, &[3]),
            quorum_after_removal(&three, 3, 2)
        );
        let mut with_learner = voters(3);
        with_learner.push(member(4, "m4", "10.0.0.1", true));
        let with_learner = view(with_learner, &[1, 2, 3, 4]);
        assert!(quorum_beside_departures(&with_learner, 3, 1, &[4]).is_safe());
        let one_down = view(voters(3), &[1, 3]);
        assert_eq!(
            quorum_beside_departures(&one_down, 3, 1, &[1]),
            quorum_after_removal(&one_down, 3, 1)
        );
    }

    /// Brute force: the removal is safe iff, among the voters left, the healthy ones can form a
    /// majority on their own, i.e. some subset of healthy voters has more than half the votes.
    fn brute_force_safe(view: &ClusterView, member: u64, min_voters: u32) -> bool {
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
        !left.is_empty() && left.len() >= min_voters as usize && has_healthy_majority(view, &left)
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

    fn with_urls(id: u64, name: &str, urls: &[&str]) -> Member {
        Member {
            id,
            name: name.to_string(),
            peer_urls: urls.iter().map(|u| format!("{u}:2380")).collect(),
            client_urls: urls.iter().map(|u| format!("{u}:2379")).collect(),
            is_learner: false,
        }
    }

    #[test]
    fn absence_is_proven_when_every_voter_is_another_machines() {
        let leaving = instance("i-0ccc", "10.0.0.3", "ip-10-0-0-3.ec2.internal");
        let others = [
            instance("i-0aaa", "10.0.0.1", "ip-10-0-0-1.ec2.internal"),
            instance("i-0bbb", "10.0.0.2", "ip-10-0-0-2.ec2.internal"),
        ];
        let v = view(
            vec![
                // Matched by another instance's ID; by another's IP-name; a dead instance's ID.
                with_urls(1, "i-0aaa", &["http://10.0.0.1"]),
                with_urls(2, "ip-10-0-0-2.corp.example", &["http://10.0.0.2"]),
                with_urls(3, "i-0000dead", &["http://10.0.0.3"]),
                // A name that says nothing, at another instance's address.
                with_urls(4, "etcd-4", &["http://10.0.0.4"]),
            ],
            &[1, 2, 4],
        );
        let mut with_fourth = others.to_vec();
        with_fourth.push(instance("i-0eee", "10.0.0.4", ""));
        assert_eq!(absence_proven(&v, &leaving, &with_fourth), Ok(()));
        // Without an instance at that address, nothing proves it is not the leaving instance's
        // (an elastic or container address EC2 does not list for it).
        assert!(absence_proven(&v, &leaving, &others).is_err());
    }

    #[test]
    fn absence_is_not_proven_for_a_member_that_could_be_the_leaving_instances() {
        let leaving = instance("i-0ccc", "10.0.0.3", "ip-10-0-0-3.ec2.internal");
        let others = [instance("i-0aaa", "10.0.0.1", "ip-10-0-0-1.ec2.internal")];
        let hosted = with_urls(2, "etcd-2", &["https://etcd-2.corp.example"]);
        let v = view(
            vec![with_urls(1, "i-0aaa", &["http://10.0.0.1"]), hosted.clone()],
            &[1, 2],
        );
        assert_eq!(
            absence_proven(&v, &leaving, &others),
            Err(Absence::Unaccounted(vec![&hosted]))
        );
        // Its IPs unknown (EC2 forgot it), an IP-named member of no other instance may be it.
        let forgotten = Instance {
            private_ip: None,
            private_dns: None,
            ..leaving.clone()
        };
        let by_ip = with_urls(3, "ip-10-0-0-3", &["http://10.0.0.3"]);
        let v = view(vec![by_ip.clone()], &[3]);
        assert_eq!(
            absence_proven(&v, &forgotten, &others),
            Err(Absence::Unaccounted(vec![&by_ip]))
        );
        // Learners are not asked for: they hold no vote.
        let mut learner = with_urls(5, "etcd-5", &["https://etcd-5.corp.example"]);
        learner.is_learner = true;
        let v = view(
            vec![with_urls(1, "i-0aaa", &["http://10.0.0.1"]), learner],
            &[1],
        );
        assert_eq!(absence_proven(&v, &leaving, &others), Ok(()));
    }

    #[test]
    fn absence_needs_the_leaders_member_list() {
        let leaving = instance("i-0ccc", "10.0.0.3", "");
        let mut v = view(vec![with_urls(1, "i-0aaa", &["http://10.0.0.1"])], &[1]);
        v.confirmed_by_leader = false;
        assert_eq!(absence_proven(&v, &leaving, &[]), Err(Absence::Unconfirmed));
    }

    #[test]
    fn a_dead_members_ip_name_on_a_secondary_address_is_not_this_instances() {
        // The leaving instance was given, as a secondary address, the primary address a dead
        // instance's member is named for; its own member comes later in the list.
        let mut leaving = instance("i-0ccc", "10.0.0.3", "ip-10-0-0-3.ec2.internal");
        leaving.other_ips = vec!["10.0.9.7".parse().unwrap()];
        let dead = with_urls(1, "ip-10-0-9-7", &["http://10.0.9.7"]);
        let own = with_urls(2, "ip-10-0-0-3", &["http://10.0.0.3"]);
        let v = view(vec![dead.clone(), own], &[2]);
        assert_eq!(find_member(&v, &leaving).map(|m| m.id), Some(2));
        assert!(!member_matches(&dead, &leaving));
        // Among address matches, the primary address first.
        let by_secondary = with_urls(3, "etcd-a", &["http://10.0.9.7"]);
        let by_primary = with_urls(4, "etcd-b", &["http://10.0.0.3"]);
        let v = view(vec![by_secondary, by_primary], &[3, 4]);
        assert_eq!(find_member(&v, &leaving).map(|m| m.id), Some(4));
    }

    #[test]
    fn ipv6_and_secondary_addresses_match() {
        let mut dual = instance("i-0ddd", "10.0.0.7", "ip-10-0-0-7.ec2.internal");
        dual.other_ips = vec!["fd00::7".parse().unwrap(), "10.0.9.7".parse().unwrap()];
        let v6 = with_urls(1, "etcd-7", &["https://[fd00::7]"]);
        let secondary = with_urls(2, "", &["http://10.0.9.7"]);
        assert!(member_matches(&v6, &dual));
        assert!(member_matches(&secondary, &dual));
        let v = view(vec![v6.clone()], &[1]);
        assert_eq!(find_member(&v, &dual).map(|m| m.id), Some(1));
        // A member of a dual-stack instance is not stale while that instance exists.
        let silent = view(vec![v6], &[]);
        let (stale, _) = stale_members(&silent, &[dual.clone()]);
        assert!(stale.is_empty());
        // And an IPv6-URL member of the leaving instance is never "another machine's".
        let leaving_v = view(vec![with_urls(3, "etcd-7", &["https://[fd00::7]"])], &[3]);
        assert!(find_member(&leaving_v, &dual).is_some());
    }

    #[test]
    fn a_learners_peer_url_follows_its_peers_family() {
        let mut dual = instance("i-0ddd", "10.0.0.7", "");
        dual.other_ips = vec!["fd00::7".parse().unwrap()];
        let v6_peers = view(vec![with_urls(1, "i-0aaa", &["https://[fd00::1]"])], &[1]);
        let v4_peers = view(vec![with_urls(1, "i-0aaa", &["https://10.0.0.1"])], &[1]);
        assert_eq!(peer_host(&dual, &v6_peers).as_deref(), Some("[fd00::7]"));
        assert_eq!(peer_host(&dual, &v4_peers).as_deref(), Some("10.0.0.7"));
        let v6_only = Instance {
            private_ip: None,
            other_ips: vec!["fd00::8".parse().unwrap()],
            ..dual.clone()
        };
        assert_eq!(peer_host(&v6_only, &v4_peers).as_deref(), Some("[fd00::8]"));
        assert_eq!(
            peer_host(&v6_only, &ClusterView::default()).as_deref(),
            Some("[fd00::8]")
        );
    }

    #[test]
    fn only_members_that_did_not_answer_may_be_stale() {
        let mut v = view(
            vec![
                with_urls(1, "etcd-1", &["http://10.0.0.1"]),
                with_urls(2, "etcd-2", &["http://10.0.0.2"]),
                with_urls(3, "etcd-3", &["http://10.0.0.3"]),
                with_urls(4, "etcd-4", &["http://10.0.0.4"]),
            ],
            &[],
        );
        v.not_healthy = vec![
            (1, NotHealthy::Silent("refused".into())),
            (2, NotHealthy::NoLeader),
            (3, NotHealthy::NotAskedInTime),
            (4, NotHealthy::Behind { entries: 5000 }),
        ];
        let silent: Vec<u64> = silent_members(&v).iter().map(|m| m.id).collect();
        assert_eq!(silent, vec![1]);
    }

    proptest! {
        #[test]
        fn quorum_rule_matches_brute_force(
            spec in prop::collection::vec((any::<bool>(), any::<bool>()), 1..8),
            target in 0usize..9,
            min_voters in 1u32..5,
        ) {
            let members: Vec<Member> = spec.iter().enumerate()
                .map(|(i, &(learner, _))| member(i as u64 + 1, &format!("m{i}"), "10.0.0.1", learner))
                .collect();
            let healthy: Vec<u64> = spec.iter().enumerate().filter(|(_, &(_, h))| h).map(|(i, _)| i as u64 + 1).collect();
            let v = view(members, &healthy);
            let id = target as u64 + 1;
            prop_assert_eq!(quorum_after_removal(&v, id, min_voters).is_safe(), brute_force_safe(&v, id, min_voters));
        }
    }

    proptest! {
        // Small views, a brute force each: enough cases to meet the rarer layouts (a dead
        // member among the voters beside a departure) every time.
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Safe beside departures iff safe now, once the leaving voters are removed, and with
        /// them dead but kept.
        #[test]
        fn departures_rule_matches_brute_force(
            spec in prop::collection::vec((any::<bool>(), any::<bool>(), any::<bool>()), 1..8),
            target in 0usize..9,
            min_voters in 1u32..5,
        ) {
            let members: Vec<Member> = spec.iter().enumerate()
                .map(|(i, &(learner, _, _))| member(i as u64 + 1, &format!("m{i}"), "10.0.0.1", learner))
                .collect();
            let healthy: Vec<u64> = spec.iter().enumerate().filter(|(_, &(_, h, _))| h).map(|(i, _)| i as u64 + 1).collect();
            let id = target as u64 + 1;
            let leaving: Vec<u64> = spec.iter().enumerate().filter(|(_, &(_, _, l))| l).map(|(i, _)| i as u64 + 1).filter(|l| *l != id).collect();
            let v = view(members, &healthy);
            let mut removed = v.clone();
            removed.members.retain(|m| !leaving.contains(&m.id));
            removed.healthy.retain(|m| !leaving.contains(m));
            let mut dead = v.clone();
            dead.healthy.retain(|m| !leaving.contains(m));
            let healthy_voter = v.member(id).is_some_and(|m| !m.is_learner && v.is_healthy(id));
            let expected = brute_force_safe(&v, id, min_voters)
                && (!healthy_voter
                    || (brute_force_safe(&removed, id, min_voters)
                        && brute_force_safe(&dead, id, min_voters)));
            let verdict = quorum_beside_departures(&v, id, min_voters, &leaving);
            prop_assert_eq!(verdict.is_safe(), expected);
            // A hold is never worse than the removal: in each way the leaving voters can go,
            // if the voters left without the member keep a healthy majority, so do they with it.
            if !verdict.is_safe() && quorum_after_removal(&v, id, min_voters).is_safe() {
                for future in [&removed, &dead] {
                    let with: Vec<&Member> = future.members.iter().filter(|m| !m.is_learner).collect();
                    let without: Vec<&Member> = with.iter().copied().filter(|m| m.id != id).collect();
                    prop_assert!(
                        !has_healthy_majority(future, &without) || has_healthy_majority(future, &with),
                        "held {} although keeping it is worse", id
                    );
                }
            }
        }
    }
}

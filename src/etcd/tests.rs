//! The parts of `EtcdMembership` that need no etcd: endpoints, TLS set-up, how errors are sorted
//! and reported, and the breaker accounting when nothing answers. The behaviour against a real
//! cluster is tested in `tests/etcd_membership.rs`.

use super::endpoints::targets;
use super::*;
use crate::resilience::breaker::State;
use std::io::Write as _;

fn resilience(config: &Config) -> Arc<Resilience> {
    Arc::new(Resilience::new(config.resilience()))
}

fn membership(config: &Config) -> EtcdMembership {
    EtcdMembership::new(config, resilience(config)).unwrap_or_else(|e| panic!("{e}"))
}

fn instance(id: &str, ip: Option<&str>) -> Instance {
    Instance {
        id: id.to_string(),
        private_ip: ip.map(|ip| ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"))),
        private_dns: None,
        state: "running".to_string(),
        spot: false,
        spot_request_id: None,
        other_ips: Vec::new(),
    }
}

fn member(id: u64, client_urls: &[&str]) -> Member {
    Member {
        id,
        name: format!("i-{id}"),
        peer_urls: vec![format!("http://10.0.0.{id}:2380")],
        client_urls: client_urls.iter().map(|u| u.to_string()).collect(),
        is_learner: false,
    }
}

fn status(code: tonic::Code, message: &str) -> etcd_client::Error {
    etcd_client::Error::GRpcStatus(tonic::Status::new(code, message))
}

fn file(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
    let path = dir.path().join(name);
    let mut f = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    f.write_all(contents.as_bytes())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    path
}

fn tls_config(ca: Option<PathBuf>, cert: Option<PathBuf>, key: Option<PathBuf>) -> Config {
    Config {
        etcd_tls: TlsFiles { ca, cert, key },
        ..Config::default()
    }
}

/// A port on 127.0.0.1 that nothing listens on: connections to it are refused at once.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    listener.local_addr().map_or(0, |a| a.port())
}

#[test]
fn endpoints_come_from_etcd_endpoints_or_else_the_peers_ips() {
    let peers = [
        instance("i-a", Some("10.0.1.5")),
        instance("i-b", Some("fd00::7")),
        instance("i-c", None),
        instance("i-d", Some("10.0.1.5")),
    ];
    let built = membership(&Config {
        etcd_client_port: 12379,
        ..Config::default()
    });
    assert_eq!(
        built.endpoints_for(&peers),
        vec!["https://10.0.1.5:12379", "https://[fd00::7]:12379"]
    );

    let plain = membership(&Config {
        etcd_client_scheme: Scheme::Http,
        ..Config::default()
    });
    assert_eq!(
        plain.endpoints_for(&peers[..1]),
        vec!["http://10.0.1.5:2379"]
    );

    let listed = membership(&Config {
        etcd_endpoints: vec!["https://etcd-1.internal:2379".to_string()],
        ..Config::default()
    });
    assert_eq!(
        listed.endpoints_for(&peers),
        vec!["https://etcd-1.internal:2379"]
    );
}

/// The members' advertised client URLs are asked after the instances' addresses, and a member
/// this process removed is no longer asked.
#[test]
fn endpoints_add_what_the_members_advertised_last_time() {
    let etcd = membership(&Config {
        etcd_client_scheme: Scheme::Http,
        ..Config::default()
    });
    let peers = [instance("i-a", Some("10.0.1.5"))];
    etcd.remember_members(&[
        member(1, &["http://10.0.1.5:2379"]),
        member(2, &["http://10.0.2.6:2379"]),
        member(3, &["http://10.0.3.7:2379"]),
    ]);
    assert_eq!(
        etcd.cluster_endpoints(&peers)
            .unwrap_or_else(|e| panic!("{e}")),
        vec![
            "http://10.0.1.5:2379",
            "http://10.0.2.6:2379",
            "http://10.0.3.7:2379"
        ]
    );
    etcd.remember_removed(2);
    assert_eq!(
        etcd.cluster_endpoints(&[])
            .unwrap_or_else(|e| panic!("{e}")),
        vec!["http://10.0.1.5:2379", "http://10.0.3.7:2379"]
    );
}

#[test]
fn the_last_known_leader_is_asked_first() {
    let etcd = membership(&Config {
        etcd_client_scheme: Scheme::Http,
        ..Config::default()
    });
    let peers = [
        instance("i-a", Some("10.0.1.5")),
        instance("i-c", Some("10.0.3.7")),
    ];
    etcd.remember_members(&[
        member(1, &["http://10.0.1.5:2379"]),
        member(3, &["http://10.0.3.7:2379"]),
    ]);
    etcd.remember_leader(Some(3));
    assert_eq!(
        etcd.cluster_endpoints(&peers)
            .unwrap_or_else(|e| panic!("{e}")),
        vec!["http://10.0.3.7:2379", "http://10.0.1.5:2379"]
    );
    etcd.remember_leader(None);
    assert_eq!(
        etcd.cluster_endpoints(&peers)
            .unwrap_or_else(|e| panic!("{e}")),
        vec!["http://10.0.1.5:2379", "http://10.0.3.7:2379"]
    );
}

#[test]
fn unreadable_tls_files_name_the_variable_and_the_path() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let missing = dir.path().join("missing-ca.pem");
    let config = tls_config(Some(missing.clone()), None, None);
    let err = EtcdMembership::new(&config, resilience(&config)).expect_err("missing CA file");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("cannot read ETCD_CA_FILE={}", missing.display())),
        "{text}"
    );

    let not_pem = file(&dir, "ca.txt", "this is not a certificate");
    let config = tls_config(Some(not_pem.clone()), None, None);
    let err = EtcdMembership::new(&config, resilience(&config)).expect_err("not PEM");
    assert_eq!(
        err.to_string(),
        format!(
            "ETCD_CA_FILE={} holds no PEM CERTIFICATE; check that the variable names the right file",
            not_pem.display()
        )
    );

    let (ca, _) = self_signed(&dir);
    let config = tls_config(Some(ca), Some(dir.path().join("nope.pem")), Some(not_pem));
    let err = EtcdMembership::new(&config, resilience(&config)).expect_err("missing cert");
    assert!(err.to_string().contains("ETCD_CERT_FILE="), "{err}");
}

#[test]
fn client_certificates_without_a_ca_file_trust_the_system_store_and_need_a_usable_key() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (cert, key) = self_signed(&dir);
    // A private CA can reach the function through SSL_CERT_FILE instead of ETCD_CA_FILE.
    let config = tls_config(None, Some(cert.clone()), Some(key));
    EtcdMembership::new(&config, resilience(&config))
        .unwrap_or_else(|e| panic!("client certificate with the system store: {e}"));

    let broken_key = file(
        &dir,
        "broken-key.pem",
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    );
    let config = tls_config(Some(cert.clone()), Some(cert), Some(broken_key));
    let err = EtcdMembership::new(&config, resilience(&config)).expect_err("broken key");
    assert!(matches!(err, TlsSetupError::Unusable { .. }), "{err}");
    assert!(err.to_string().contains("ETCD_KEY_FILE="), "{err}");
}

#[test]
fn debug_shows_paths_never_key_material() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (cert, key) = self_signed(&dir);
    let key_pem = std::fs::read_to_string(&key).unwrap_or_else(|e| panic!("{e}"));
    let config = tls_config(Some(cert.clone()), Some(cert), Some(key.clone()));
    let etcd = membership(&config);
    let debug = format!("{etcd:?}");
    assert!(debug.contains(&key.display().to_string()), "{debug}");
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    let body = key_pem.lines().nth(1).unwrap_or_default();
    assert!(!body.is_empty() && !debug.contains(body), "{debug}");
}

/// A self-signed certificate and its key, as PEM files: (certificate, key).
fn self_signed(dir: &tempfile::TempDir) -> (PathBuf, PathBuf) {
    let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
        .unwrap_or_else(|e| panic!("{e}"));
    (
        file(dir, "cert.pem", &generated.cert.pem()),
        file(dir, "key.pem", &generated.signing_key.serialize_pem()),
    )
}

#[test]
fn etcd_errors_are_sorted_into_move_on_or_stop() {
    use tonic::Code;
    let url = "https://10.0.0.1:2379";
    let sorted = |e: etcd_client::Error| sort_error(url, &e);

    let refused = sorted(status(Code::Unavailable, "etcdserver: unhealthy cluster"));
    assert!(
        matches!(&refused, EndpointMiss::Final(PassFailure::Refused { detail, for_now: true })
            if detail.contains("unhealthy cluster") && detail.contains("strict reconfig check")),
        "{refused:?}"
    );
    let learners = sorted(status(
        Code::FailedPrecondition,
        "etcdserver: too many learner members in cluster",
    ));
    assert!(
        matches!(&learners, EndpointMiss::Final(PassFailure::Refused { detail, for_now: false }) if detail.contains("one learner at a time")),
        "{learners:?}"
    );

    let busy = sorted(status(Code::Unavailable, "etcdserver: leader changed"));
    assert!(matches!(busy, EndpointMiss::Busy(_)), "{busy:?}");
    let leaderless = sorted(status(Code::Unavailable, "etcdserver: no leader"));
    assert!(
        matches!(leaderless, EndpointMiss::NoLeader(_)),
        "{leaderless:?}"
    );
    let silent = sorted(status(Code::Unavailable, "tcp connect error"));
    assert!(matches!(silent, EndpointMiss::Silent(_)), "{silent:?}");
    let timeout = sorted(status(Code::Cancelled, "Timeout expired"));
    assert!(matches!(timeout, EndpointMiss::Silent(_)), "{timeout:?}");
    let io = sorted(etcd_client::Error::IoError(std::io::Error::from(
        std::io::ErrorKind::ConnectionRefused,
    )));
    assert!(matches!(io, EndpointMiss::Silent(_)), "{io:?}");
    let tls = sorted(status(
        Code::Unavailable,
        "invalid peer certificate: UnknownIssuer",
    ));
    assert!(matches!(tls, EndpointMiss::Tls(_)), "{tls:?}");

    let denied = sorted(status(
        Code::PermissionDenied,
        "etcdserver: permission denied",
    ));
    assert!(
        matches!(&denied, EndpointMiss::Final(PassFailure::Rejected { detail })
            if detail == "https://10.0.0.1:2379 answered PermissionDenied \"etcdserver: permission denied\""),
        "{denied:?}"
    );

    assert!(is_member_not_found(&status(
        Code::NotFound,
        "etcdserver: member not found"
    )));
    assert!(!is_member_not_found(&status(
        Code::Unavailable,
        "etcdserver: unhealthy cluster"
    )));
    assert!(is_already_added(&status(
        Code::FailedPrecondition,
        "etcdserver: Peer URLs already exists"
    )));
    assert!(is_already_added(&status(
        Code::FailedPrecondition,
        "etcdserver: member ID already exist"
    )));
}

#[test]
fn a_pass_with_no_answer_is_summarized_by_its_most_telling_miss() {
    let urls = ["a".to_string(), "b".to_string()];
    let silent = || EndpointMiss::Silent("refused".into());
    let summary = |misses: Vec<EndpointMiss>| {
        summarize(
            &urls,
            urls.iter()
                .cloned()
                .zip(misses)
                .collect::<Vec<(String, EndpointMiss)>>(),
        )
    };

    let failure = summary(vec![silent(), silent()]);
    assert!(
        matches!(&failure, PassFailure::Unreachable { endpoints, detail }
            if endpoints == "a,b" && detail == "a: refused; b: refused"),
        "{failure:?}"
    );
    assert_eq!(failure.class(), Class::Transient);

    let failure = summary(vec![silent(), EndpointMiss::Busy("leader changed".into())]);
    assert!(matches!(failure, PassFailure::Busy { .. }), "{failure:?}");
    assert_eq!(failure.class(), Class::Transient);

    // One member gone, the other has no leader: the cluster has no quorum. That is an answer
    // about the cluster, not a failure of etcd as a dependency.
    let failure = summary(vec![silent(), EndpointMiss::NoLeader("no leader".into())]);
    assert!(
        matches!(failure, PassFailure::NoLeader { .. }),
        "{failure:?}"
    );
    assert_eq!(failure.class(), Class::Permanent);

    // One member gone, the others turn the certificate down: a configuration problem.
    let failure = summary(vec![silent(), EndpointMiss::Tls("UnknownIssuer".into())]);
    assert!(matches!(failure, PassFailure::Tls { .. }), "{failure:?}");
    assert_eq!(failure.class(), Class::Permanent);

    let failure = summary(vec![EndpointMiss::Unusable("invalid uri".into())]);
    assert!(
        matches!(failure, PassFailure::Unusable { .. }),
        "{failure:?}"
    );
    assert!(matches!(summary(Vec::new()), PassFailure::OutOfTime));
    assert_eq!(
        PassFailure::Refused {
            detail: String::new(),
            for_now: true,
        }
        .class(),
        Class::Permanent,
        "a refusal is an answer: not counted"
    );
}

#[test]
fn changes_go_to_the_leader_first_and_to_the_removed_member_last() {
    let view = ClusterView {
        members: vec![
            member(1, &["http://10.0.0.1:2379"]),
            member(2, &["http://10.0.0.2:2379"]),
            member(3, &["http://10.0.0.3:2379", "http://10.0.0.33:2379"]),
            member(4, &[]),
        ],
        healthy: vec![1, 2, 3],
        leader: Some(1),
        confirmed_by_leader: true,
        ..ClusterView::default()
    };
    // The leader moved from 1 to 3, and 1 is being removed.
    assert_eq!(
        targets(&view, Some(3), Some(1)),
        vec![
            "http://10.0.0.3:2379",
            "http://10.0.0.33:2379",
            "http://10.0.0.2:2379",
            "http://10.0.0.1:2379",
        ]
    );
    assert_eq!(
        targets(&view, None, None),
        vec![
            "http://10.0.0.1:2379",
            "http://10.0.0.2:2379",
            "http://10.0.0.3:2379",
            "http://10.0.0.33:2379",
        ]
    );
}

#[test]
fn silent_endpoints_are_asked_last_until_they_answer() {
    let etcd = membership(&Config::default());
    let urls: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    etcd.note_answer("a", false);
    assert_eq!(etcd.ordered(&urls), vec!["b", "c", "a"]);
    etcd.note_answer("a", true);
    assert_eq!(etcd.ordered(&urls), urls);
}

#[test]
fn removed_members_are_remembered_within_a_bound() {
    let etcd = membership(&Config::default());
    for id in 0..(REMEMBERED_REMOVALS as u64 + 10) {
        etcd.remember_removed(id);
        etcd.remember_removed(id);
    }
    let removed = etcd.removed_members();
    assert_eq!(removed.len(), REMEMBERED_REMOVALS);
    assert_eq!(removed.first(), Some(&10));
}

#[tokio::test]
async fn no_endpoint_to_ask_is_unreachable_without_any_call() {
    let config = Config::default();
    let resilience = resilience(&config);
    let etcd = EtcdMembership::new(&config, resilience.clone()).unwrap_or_else(|e| panic!("{e}"));
    let deadline = Deadline::after(Duration::from_secs(10), Duration::from_secs(1));
    let err = etcd
        .cluster(&[instance("i-a", None)], &deadline)
        .await
        .expect_err("nothing to ask");
    assert!(
        matches!(&err, MembershipError::Unreachable { endpoints, .. } if endpoints == "none"),
        "{err}"
    );
    let snapshot = resilience
        .breaker(Dependency::Etcd)
        .snapshot(Instant::now());
    assert_eq!(snapshot.consecutive_failures, 0);
}

#[tokio::test]
async fn when_no_endpoint_answers_each_attempt_counts_once() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let config = Config {
        etcd_endpoints: vec![url.clone(), url.replace("127.0.0.1", "127.0.0.2")],
        retry_max_attempts: 2,
        retry_base_delay: Duration::from_millis(1),
        retry_max_delay: Duration::from_millis(1),
        ..Config::default()
    };
    let resilience = resilience(&config);
    let etcd = EtcdMembership::new(&config, resilience.clone()).unwrap_or_else(|e| panic!("{e}"));
    let deadline = Deadline::after(Duration::from_secs(10), Duration::from_secs(1));
    let err = etcd
        .cluster(&[], &deadline)
        .await
        .expect_err("nothing listens");
    let text = err.to_string();
    assert!(matches!(err, MembershipError::Unreachable { .. }), "{text}");
    assert!(
        text.starts_with(&format!("no etcd endpoint answered ({url},")),
        "{text}"
    );
    assert!(text.contains("(2 attempt(s))"), "{text}");
    let snapshot = resilience
        .breaker(Dependency::Etcd)
        .snapshot(Instant::now());
    assert_eq!(
        (snapshot.state, snapshot.consecutive_failures),
        (State::Closed, 2),
        "one failure per attempt, not per endpoint"
    );
}

#[tokio::test]
async fn an_open_circuit_is_reported_as_circuit_open() {
    let config = Config {
        etcd_endpoints: vec![format!("http://127.0.0.1:{}", closed_port())],
        retry_max_attempts: 1,
        breaker_failure_threshold: 1,
        ..Config::default()
    };
    let etcd = membership(&config);
    let deadline = Deadline::after(Duration::from_secs(10), Duration::from_secs(1));
    let first = etcd.cluster(&[], &deadline).await.expect_err("refused");
    assert!(
        matches!(first, MembershipError::CircuitOpen(_)),
        "the failure that opens the circuit says so: {first}"
    );
    let view = ClusterView {
        members: vec![member(1, &["http://127.0.0.1:1"])],
        healthy: vec![1],
        leader: Some(1),
        confirmed_by_leader: true,
        ..ClusterView::default()
    };
    let err = etcd
        .remove(&view, 1, &deadline)
        .await
        .expect_err("circuit open");
    assert!(matches!(err, MembershipError::CircuitOpen(_)), "{err}");
    assert_eq!(err.to_string(), "circuit open for etcd; retry after 60s");
}

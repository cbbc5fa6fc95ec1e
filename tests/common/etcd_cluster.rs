//! A real etcd cluster (3.4 by default; `ETCD_BIN` picks another) on loopback addresses, for the tests of the membership code.
//!
//! Why real etcd rather than a fake: what matters here is etcd's own behaviour (the strict reconfig
//! check and its refusals, a member list answered from the asked member's view, the one-learner
//! rule, which member answers `Status` and `MoveLeader`), and a fake would only repeat our
//! assumptions back to us.
//!
//! Each test picks its own `base`, a multiple of ten from 20 to 240: member `i` (1-based) listens on
//! `127.0.0.(base + i)` with the standard ports 2379 and 2380, so tests run in parallel without
//! port clashes. Slots `size + 1 ..= 8` are free for members a test adds; slot 9 is used by
//! [`EtcdCluster::wait_reconfig_ready`]. Every process is a child of the cluster value and is
//! killed when the value drops.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, MemberAddOptions, TlsOptions};
use etcd_lifecycle_hook::config::{Config, Scheme, TlsFiles};
use etcd_lifecycle_hook::model::Instance;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::time::{sleep, Instant};

const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
/// How long any wait of this helper may take before the test fails with the members' logs.
const WAIT_LIMIT: Duration = Duration::from_secs(40);
const POLL: Duration = Duration::from_millis(100);
/// The slot whose peer URL `wait_reconfig_ready` adds and removes as a learner.
const PROBE_SLOT: u8 = 9;

/// The etcd binary the clusters run: `ETCD_BIN`, else Debian's `/usr/bin/etcd` (3.4). The same
/// variable chooses the version for the Python stack, so one setting runs every suite on it.
pub fn etcd_binary() -> String {
    std::env::var("ETCD_BIN")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "/usr/bin/etcd".to_string())
}

/// One member's etcd process and files.
pub struct Node {
    /// The member name, shaped like an instance ID (`i-21node1`).
    pub name: String,
    pub ip: Ipv4Addr,
    data_dir: PathBuf,
    log: PathBuf,
    initial_cluster: String,
    initial_state: &'static str,
    child: Option<Child>,
}

/// A member as the leader's member list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    /// Empty until the member has started.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub is_learner: bool,
}

/// Certificates of a TLS cluster, written as PEM files.
pub struct TlsSetup {
    /// The CA that signed the servers' and the client's certificates.
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing here: a client that trusts only it must fail.
    pub wrong_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

/// A running cluster. Dropping it kills its processes and deletes its files.
pub struct EtcdCluster {
    pub base: u8,
    pub nodes: Vec<Node>,
    pub tls: Option<TlsSetup>,
    token: String,
    dir: TempDir,
}

impl EtcdCluster {
    /// Starts `size` members over plain HTTP and waits until they agree on a leader.
    pub async fn start(base: u8, size: usize) -> Self {
        Self::launch(base, size, false).await
    }

    /// Like [`start`](Self::start), with client TLS and client certificate authentication
    /// (`--client-cert-auth --trusted-ca-file`). Peer traffic stays plain.
    pub async fn start_tls(base: u8, size: usize) -> Self {
        Self::launch(base, size, true).await
    }

    async fn launch(base: u8, size: usize, tls: bool) -> Self {
        assert!(
            (1..=3).contains(&size) && (20..=240).contains(&base) && base % 10 == 0,
            "base must be a multiple of ten from 20 to 240 and size from 1 to 3"
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("etcd-{base}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let tls = tls.then(|| make_tls(dir.path(), base));
        let mut cluster = EtcdCluster {
            base,
            nodes: Vec::new(),
            tls,
            token: format!("test-cluster-{base}"),
            dir,
        };
        let initial_cluster = (1..=size as u8)
            .map(|slot| format!("{}={}", node_name(base, slot), cluster.peer_url(slot)))
            .collect::<Vec<_>>()
            .join(",");
        for slot in 1..=size as u8 {
            let name = node_name(base, slot);
            cluster.add_node(name, slot, initial_cluster.clone(), "new");
        }
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster.wait_healthy().await;
        cluster
    }

    /// `127.0.0.(base + slot)`.
    pub fn ip(&self, slot: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, 0, self.base + slot)
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The client URL of the member in `slot`.
    pub fn client_url(&self, slot: u8) -> String {
        format!("{}://{}:{CLIENT_PORT}", self.scheme(), self.ip(slot))
    }

    /// The peer URL of the member in `slot` (always plain HTTP).
    pub fn peer_url(&self, slot: u8) -> String {
        format!("http://{}:{PEER_PORT}", self.ip(slot))
    }

    /// The client URLs of the members this helper started, in slot order.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| self.url_of(n)).collect()
    }

    fn url_of(&self, node: &Node) -> String {
        format!("{}://{}:{CLIENT_PORT}", self.scheme(), node.ip)
    }

    /// The members as the group's instances: the instance ID is the member name.
    pub fn instances(&self) -> Vec<Instance> {
        self.nodes
            .iter()
            .map(|n| Instance {
                id: n.name.clone(),
                private_ip: Some(IpAddr::V4(n.ip)),
                private_dns: None,
                state: "running".to_string(),
                spot: false,
                spot_request_id: None,
                other_ips: Vec::new(),
            })
            .collect()
    }

    /// A configuration that reaches this cluster: its endpoints, its scheme and, for a TLS
    /// cluster, the right CA and the client certificate.
    pub fn config(&self) -> Config {
        Config {
            etcd_endpoints: self.endpoints(),
            etcd_client_scheme: if self.tls.is_some() {
                Scheme::Https
            } else {
                Scheme::Http
            },
            etcd_tls: self
                .tls
                .as_ref()
                .map(|t| TlsFiles {
                    ca: Some(t.ca.clone()),
                    cert: Some(t.client_cert.clone()),
                    key: Some(t.client_key.clone()),
                })
                .unwrap_or_default(),
            ..Config::default()
        }
    }

    fn add_node(&mut self, name: String, slot: u8, initial_cluster: String, state: &'static str) {
        let data_dir = self.dir.path().join(&name);
        let log = self.dir.path().join(format!("{name}.log"));
        self.nodes.push(Node {
            name,
            ip: self.ip(slot),
            data_dir,
            log,
            initial_cluster,
            initial_state: state,
            child: None,
        });
    }

    fn spawn(&mut self, i: usize) {
        let node = &self.nodes[i];
        let client_url = self.url_of(node);
        let peer_url = format!("http://{}:{PEER_PORT}", node.ip);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", node.log.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", node.log.display()));
        let mut command = Command::new(etcd_binary());
        command
            .arg("--name")
            .arg(&node.name)
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &node.initial_cluster])
            .args(["--initial-cluster-state", node.initial_state])
            .args(["--initial-cluster-token", &self.token])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {} (ETCD_BIN; Debian's etcd-server by default): {e}",
                etcd_binary()
            )
        });
        self.nodes[i].child = Some(child);
    }

    fn index_of(&self, slot: u8) -> usize {
        let ip = self.ip(slot);
        self.nodes
            .iter()
            .position(|n| n.ip == ip)
            .unwrap_or_else(|| panic!("no member was started in slot {slot}"))
    }

    /// The member name of the process started in `slot`.
    pub fn name(&self, slot: u8) -> &str {
        &self.nodes[self.index_of(slot)].name
    }

    /// Kills the member in `slot` (SIGKILL, as when an instance dies) and waits for it to exit.
    pub async fn stop(&mut self, slot: u8) {
        let i = self.index_of(slot);
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts the member in `slot` again on its data directory.
    pub async fn restart(&mut self, slot: u8) {
        let i = self.index_of(slot);
        self.spawn(i);
        self.wait_healthy().await;
    }

    /// Starts the etcd process of a member that was added to the cluster (for example as a
    /// learner) with `--initial-cluster-state existing`, as a new instance's bootstrap script
    /// would, from the current member list.
    pub async fn start_added_member(&mut self, name: &str, slot: u8) {
        let own_peer = self.peer_url(slot);
        let members = self.members().await;
        assert!(
            members.iter().any(|m| m.peer_urls.contains(&own_peer)),
            "{own_peer} is not in the member list {members:?}: add it before starting it"
        );
        let initial_cluster = members
            .iter()
            .flat_map(|m| {
                let member_name = if m.peer_urls.contains(&own_peer) {
                    name.to_string()
                } else if m.name.is_empty() {
                    format!("unstarted-{:x}", m.id)
                } else {
                    m.name.clone()
                };
                m.peer_urls
                    .iter()
                    .map(move |u| format!("{member_name}={u}"))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .join(",");
        self.add_node(name.to_string(), slot, initial_cluster, "existing");
        let i = self.nodes.len() - 1;
        self.spawn(i);
    }

    async fn client(&self, url: &str) -> Client {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(3));
        if let Some(tls) = &self.tls {
            let read = |p: &Path| {
                std::fs::read(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
            };
            options = options.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(read(&tls.ca)))
                    .identity(Identity::from_pem(
                        read(&tls.client_cert),
                        read(&tls.client_key),
                    )),
            );
        }
        Client::connect([url], Some(options))
            .await
            .unwrap_or_else(|e| panic!("cannot build a client for {url}: {e}"))
    }

    /// `(url, own member ID, leader ID)` of every started member that answers `Status` now.
    async fn statuses(&self) -> Vec<(String, u64, u64)> {
        let mut answers = Vec::new();
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let url = self.url_of(node);
            let mut client = self.client(&url).await;
            if let Ok(status) = client.status().await {
                let own = status.header().map_or(0, |h| h.member_id());
                answers.push((url, own, status.leader()));
            }
        }
        answers
    }

    /// Waits until every started member answers and all agree on one leader among them.
    pub async fn wait_healthy(&mut self) {
        let until = Instant::now() + WAIT_LIMIT;
        loop {
            for node in &mut self.nodes {
                // A member that was removed exits by itself: it is no longer part of the cluster.
                if let Some(child) = &mut node.child {
                    if matches!(child.try_wait(), Ok(Some(_))) {
                        node.child = None;
                    }
                }
            }
            let started = self.nodes.iter().filter(|n| n.child.is_some()).count();
            let answers = self.statuses().await;
            let leader = answers.first().map_or(0, |a| a.2);
            if answers.len() == started
                && leader != 0
                && answers.iter().all(|a| a.2 == leader)
                && answers.iter().any(|a| a.1 == leader)
            {
                return;
            }
            self.fail_after(until, "the members to agree on a leader");
            sleep(POLL).await;
        }
    }

    /// Waits until every started member would accept a membership change.
    ///
    /// etcd's strict reconfig check refuses changes ("unhealthy cluster") until the member that
    /// receives the request has been connected to its peers for 5 s, which for a fresh cluster
    /// means about 5 s after the election. Adding a learner asks the same question (in its
    /// strictest form: every voter connected), so this adds a learner through each member in turn
    /// until it is accepted, and removes it again at once (removing a learner is always allowed).
    /// Each try uses a new peer URL: etcd derives a member's ID from its peer URLs and the time in
    /// seconds, and refuses an ID it has removed before ("member not found").
    pub async fn wait_reconfig_ready(&self) {
        let until = Instant::now() + WAIT_LIMIT;
        let mut tries = 0u16;
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let mut client = self.client(&self.url_of(node)).await;
            loop {
                tries += 1;
                let probe_peer = format!("http://{}:{}", self.ip(PROBE_SLOT), 30000 + tries);
                let added = client
                    .member_add(
                        [probe_peer.as_str()],
                        Some(MemberAddOptions::new().with_is_learner()),
                    )
                    .await;
                match added {
                    Ok(response) => {
                        let id = response.member().map_or(0, |m| m.id());
                        client
                            .member_remove(id)
                            .await
                            .unwrap_or_else(|e| panic!("removing probe learner {id:x}: {e}"));
                        break;
                    }
                    Err(e) if e.to_string().contains("unhealthy cluster") => {}
                    Err(e) => panic!(
                        "{} refused a learner for an unexpected reason: {e}\n{}",
                        node.name,
                        self.logs()
                    ),
                }
                self.fail_after(until, "etcd to accept membership changes");
                sleep(POLL).await;
            }
        }
        self.wait_converged().await;
    }

    /// Waits until every started member's member list is the leader's. Member lists are
    /// answered from the asked member's own applied state, which trails the leader's by a few
    /// milliseconds after a change.
    pub async fn wait_converged(&self) {
        let until = Instant::now() + WAIT_LIMIT;
        loop {
            let leaders = self.members().await;
            let mut converged = true;
            for node in self.nodes.iter().filter(|n| n.child.is_some()) {
                let mut client = self.client(&self.url_of(node)).await;
                converged &= match client.member_list().await {
                    Ok(list) => {
                        let mut own: Vec<(u64, bool)> = list
                            .members()
                            .iter()
                            .map(|m| (m.id(), m.is_learner()))
                            .collect();
                        let mut expected: Vec<(u64, bool)> =
                            leaders.iter().map(|m| (m.id, m.is_learner)).collect();
                        own.sort_unstable();
                        expected.sort_unstable();
                        own == expected
                    }
                    // Not yet serving (a member that is starting) or gone for good (removed).
                    Err(_) => true,
                };
            }
            if converged {
                return;
            }
            self.fail_after(until, "the members to apply the same membership");
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// The current leader's member ID.
    pub async fn leader(&self) -> u64 {
        self.leader_url().await.1
    }

    async fn leader_url(&self) -> (String, u64) {
        let until = Instant::now() + WAIT_LIMIT;
        loop {
            let answers = self.statuses().await;
            if let Some(answer) = answers.iter().find(|a| a.1 == a.2 && a.2 != 0) {
                return (answer.0.clone(), answer.2);
            }
            self.fail_after(until, "a leader");
            sleep(POLL).await;
        }
    }

    /// The member list as the leader sees it (a removed member may still answer with its old
    /// list for a moment; the leader's is the one that counts).
    pub async fn members(&self) -> Vec<MemberInfo> {
        let (url, _) = self.leader_url().await;
        let mut client = self.client(&url).await;
        let list = client
            .member_list()
            .await
            .unwrap_or_else(|e| panic!("member list from the leader {url}: {e}"));
        list.members()
            .iter()
            .map(|m| MemberInfo {
                id: m.id(),
                name: m.name().to_string(),
                peer_urls: m.peer_urls().to_vec(),
                is_learner: m.is_learner(),
            })
            .collect()
    }

    /// The sorted names of the members (empty for a member that never started).
    pub async fn member_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.members().await.into_iter().map(|m| m.name).collect();
        names.sort();
        names
    }

    /// The member ID of the member this helper started in `slot`.
    pub async fn id_of(&self, slot: u8) -> u64 {
        let name = self.name(slot);
        self.members()
            .await
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.id)
            .unwrap_or_else(|| panic!("{name} is not a member"))
    }

    /// Adds a voting member whose process never starts (its instance is gone), with the peer
    /// URL of `slot`'s unused address. Returns its ID.
    ///
    /// Mind the arithmetic: with it, three started members make a cluster of four whose quorum
    /// is three, so stopping one more member loses quorum. Use
    /// [`add_stale_learner`](Self::add_stale_learner) when a member will be stopped.
    pub async fn add_stale_member(&self, slot: u8) -> u64 {
        self.add_unstarted(slot, None).await
    }

    /// Adds a learner whose process never starts, with the peer URL of `slot`'s unused address.
    /// It changes no majority. Returns its ID.
    pub async fn add_stale_learner(&self, slot: u8) -> u64 {
        self.add_unstarted(slot, Some(MemberAddOptions::new().with_is_learner()))
            .await
    }

    async fn add_unstarted(&self, slot: u8, options: Option<MemberAddOptions>) -> u64 {
        let (url, _) = self.leader_url().await;
        let mut client = self.client(&url).await;
        let peer = self.peer_url(slot);
        let added = client
            .member_add([peer.as_str()], options)
            .await
            .unwrap_or_else(|e| panic!("adding stale member {peer}: {e}"));
        let id = added
            .member()
            .map(|m| m.id())
            .unwrap_or_else(|| panic!("etcd answered MemberAdd for {peer} without the member"));
        self.wait_converged().await;
        id
    }

    /// The last lines of every member's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let text = std::fs::read_to_string(&node.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let _ = writeln!(out, "--- {} ({})", node.name, node.log.display());
            for line in &lines[lines.len().saturating_sub(12)..] {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    fn fail_after(&self, until: Instant, what: &str) {
        if Instant::now() > until {
            panic!(
                "gave up waiting {}s for {what}\n{}",
                WAIT_LIMIT.as_secs(),
                self.logs()
            );
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = &mut node.child {
                let _ = child.start_kill();
            }
        }
    }
}

/// `i-21node1` for the first member of base 21: shaped like an instance ID.
fn node_name(base: u8, slot: u8) -> String {
    format!("i-{base}node{slot}")
}

fn make_tls(dir: &Path, base: u8) -> TlsSetup {
    let (ca_pem, issuer) = new_ca("etcd test CA");
    let (wrong_ca_pem, _) = new_ca("unrelated CA");

    // One server certificate for every address the cluster may use.
    let ips: Vec<String> = (1..=PROBE_SLOT)
        .map(|slot| format!("127.0.0.{}", base + slot))
        .collect();
    let server = leaf(
        &issuer,
        ips,
        "etcd",
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    );
    let client = leaf(
        &issuer,
        Vec::new(),
        "etcd-lifecycle-hook",
        &[ExtendedKeyUsagePurpose::ClientAuth],
    );

    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    };
    TlsSetup {
        ca: write("ca.pem", &ca_pem),
        wrong_ca: write("wrong-ca.pem", &wrong_ca_pem),
        server_cert: write("server.pem", &server.0),
        server_key: write("server-key.pem", &server.1),
        client_cert: write("client.pem", &client.0),
        client_key: write("client-key.pem", &client.1),
    }
}

fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new())
        .unwrap_or_else(|e| panic!("CA parameters: {e}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let key = KeyPair::generate().unwrap_or_else(|e| panic!("CA key: {e}"));
    let cert = params
        .self_signed(&key)
        .unwrap_or_else(|e| panic!("CA certificate: {e}"));
    (cert.pem(), Issuer::new(params, key))
}

/// A certificate signed by `issuer`: (certificate PEM, private key PEM).
fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    names: Vec<String>,
    common_name: &str,
    usages: &[ExtendedKeyUsagePurpose],
) -> (String, String) {
    let mut params =
        CertificateParams::new(names).unwrap_or_else(|e| panic!("certificate parameters: {e}"));
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages.to_vec();
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap_or_else(|e| panic!("key: {e}"));
    let cert = params
        .signed_by(&key, issuer)
        .unwrap_or_else(|e| panic!("signing {common_name}: {e}"));
    (cert.pem(), key.serialize_pem())
}

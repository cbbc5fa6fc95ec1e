//! EC2's view of the instances: the group's, one by ID, the ones that still carry a member's
//! identity, and a Spot request's status.
//!
//! One paged `DescribeInstances` filtered by the group tag returns both the terminating instance
//! (its private IP and DNS name, to find its etcd member) and its peers (to build etcd
//! endpoints): the happy path of a terminate event makes exactly this call and the completion.
//! The other calls run only when a decision needs them (a terminating instance the group no
//! longer lists, a silent member, a Spot instance).

use std::net::IpAddr;
use std::sync::Arc;

use aws_sdk_ec2::operation::describe_instances::builders::DescribeInstancesFluentBuilder;
use aws_sdk_ec2::types::{Filter, InstanceLifecycleType};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use super::aws_error;
use crate::model::{AwsError, Fleet, Instance, SpotStatus, EXISTING_STATES};
use crate::resilience::policy::Deadline;
use crate::resilience::{Dependency, Resilience};

/// EC2 through the `ec2` breaker.
#[derive(Debug, Clone)]
pub struct Ec2Fleet {
    client: aws_sdk_ec2::Client,
    resilience: Arc<Resilience>,
}

impl Ec2Fleet {
    pub fn new(client: aws_sdk_ec2::Client, resilience: Arc<Resilience>) -> Self {
        Self { client, resilience }
    }

    /// Every page of one `DescribeInstances` query, each page one call through the breaker.
    async fn describe(
        &self,
        query: impl Fn() -> DescribeInstancesFluentBuilder,
        deadline: &Deadline,
    ) -> Result<Vec<Instance>, AwsError> {
        let mut instances = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let page = self
                .resilience
                .call(Dependency::Ec2, deadline, || {
                    query().set_next_token(next_token.clone()).send()
                })
                .await
                .map_err(|e| aws_error("ec2:DescribeInstances", e))?;
            for reservation in page.reservations() {
                instances.extend(reservation.instances().iter().filter_map(instance_from));
            }
            match page.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_string()),
                _ => break,
            }
        }
        Ok(instances)
    }
}

fn filter(name: &str, values: impl IntoIterator<Item = String>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().collect()))
        .build()
}

fn existing() -> Filter {
    filter(
        "instance-state-name",
        EXISTING_STATES.iter().map(|s| s.to_string()),
    )
}

fn instance_from(i: &aws_sdk_ec2::types::Instance) -> Option<Instance> {
    Some(Instance {
        id: i.instance_id()?.to_string(),
        private_ip: i.private_ip_address().and_then(|ip| ip.parse().ok()),
        private_dns: i
            .private_dns_name()
            .filter(|d| !d.is_empty())
            .map(String::from),
        state: i
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string())
            .unwrap_or_default(),
        spot: i.instance_lifecycle() == Some(&InstanceLifecycleType::Spot),
        spot_request_id: i
            .spot_instance_request_id()
            .filter(|r| !r.is_empty())
            .map(String::from),
        other_ips: other_ips(i),
    })
}

/// Every private address of the instance's network interfaces but the primary IPv4 one:
/// secondary IPv4 addresses and IPv6 addresses, each once.
fn other_ips(i: &aws_sdk_ec2::types::Instance) -> Vec<IpAddr> {
    let primary = i.private_ip_address();
    let mut texts: Vec<&str> = i.ipv6_address().into_iter().collect();
    for interface in i.network_interfaces() {
        texts.extend(
            interface
                .private_ip_addresses()
                .iter()
                .filter_map(|a| a.private_ip_address()),
        );
        texts.extend(
            interface
                .ipv6_addresses()
                .iter()
                .filter_map(|a| a.ipv6_address()),
        );
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in texts
        .into_iter()
        .filter(|t| Some(*t) != primary)
        .filter_map(|t| t.parse().ok())
    {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

impl Fleet for Ec2Fleet {
    async fn group_instances(
        &self,
        groups: &[String],
        deadline: &Deadline,
    ) -> Result<Vec<Instance>, AwsError> {
        let query = || {
            self.client
                .describe_instances()
                .filters(filter(
                    "tag:aws:autoscaling:groupName",
                    groups.iter().cloned(),
                ))
                .filters(existing())
        };
        self.describe(query, deadline).await
    }

    async fn instance(&self, id: &str, deadline: &Deadline) -> Result<Option<Instance>, AwsError> {
        // A filter, not `InstanceIds`: an ID EC2 has forgotten is an empty answer, not an error.
        let query = || {
            self.client
                .describe_instances()
                .filters(filter("instance-id", [id.to_string()]))
        };
        let found = self.describe(query, deadline).await?;
        Ok(found.into_iter().find(|i| i.id == id))
    }

    async fn existing_instances(
        &self,
        ids: &[String],
        ips: &[IpAddr],
        deadline: &Deadline,
    ) -> Result<Vec<Instance>, AwsError> {
        // EC2 ANDs filters, so IDs and IPs are two queries.
        let mut found = Vec::new();
        if !ids.is_empty() {
            let query = || {
                self.client
                    .describe_instances()
                    .filters(filter("instance-id", ids.iter().cloned()))
                    .filters(existing())
            };
            found.extend(self.describe(query, deadline).await?);
        }
        // By family: IPv4 by the primary private address, IPv6 by any interface's address.
        let by_family = [
            ("private-ip-address", false),
            ("network-interface.ipv6-addresses.ipv6-address", true),
        ];
        for (name, v6) in by_family {
            let wanted: Vec<String> = ips
                .iter()
                .filter(|ip| ip.is_ipv6() == v6)
                .map(IpAddr::to_string)
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let query = || {
                self.client
                    .describe_instances()
                    .filters(filter(name, wanted.iter().cloned()))
                    .filters(existing())
            };
            for instance in self.describe(query, deadline).await? {
                if !found.iter().any(|f: &Instance| f.id == instance.id) {
                    found.push(instance);
                }
            }
        }
        Ok(found)
    }

    async fn spot_status(
        &self,
        request_id: &str,
        deadline: &Deadline,
    ) -> Result<Option<SpotStatus>, AwsError> {
        let result = self
            .resilience
            .call(Dependency::Ec2, deadline, || {
                self.client
                    .describe_spot_instance_requests()
                    .spot_instance_request_ids(request_id)
                    .send()
            })
            .await;
        let answer = match result {
            Ok(answer) => answer,
            Err(e)
                if e.source_error().and_then(|s| s.code())
                    == Some("InvalidSpotInstanceRequestID.NotFound") =>
            {
                return Ok(None)
            }
            Err(e) => return Err(aws_error("ec2:DescribeSpotInstanceRequests", e)),
        };
        Ok(answer
            .spot_instance_requests()
            .iter()
            .find(|r| r.spot_instance_request_id() == Some(request_id))
            .map(|r| SpotStatus {
                code: r
                    .status()
                    .and_then(|s| s.code())
                    .unwrap_or_default()
                    .to_string(),
            }))
    }
}

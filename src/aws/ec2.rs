//! The group's instances from EC2, in one paged `DescribeInstances` filtered by the group tag.
//!
//! One call returns both the terminating instance (its private IP and DNS name, to find its etcd
//! member) and its peers (to build etcd endpoints and spot stale members): the happy path of a
//! terminate event makes exactly this call and the completion.

use std::sync::Arc;

use aws_sdk_ec2::types::{Filter, InstanceLifecycleType};

use super::aws_error;
use crate::model::{AwsError, Fleet, Instance};
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
}

impl Fleet for Ec2Fleet {
    async fn group_instances(
        &self,
        group: &str,
        deadline: &Deadline,
    ) -> Result<Vec<Instance>, AwsError> {
        let mut instances = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let page = self
                .resilience
                .call(Dependency::Ec2, deadline, || {
                    self.client
                        .describe_instances()
                        .filters(
                            Filter::builder()
                                .name("tag:aws:autoscaling:groupName")
                                .values(group)
                                .build(),
                        )
                        .filters(
                            Filter::builder()
                                .name("instance-state-name")
                                .values("pending")
                                .values("running")
                                .build(),
                        )
                        .set_next_token(next_token.clone())
                        .send()
                })
                .await
                .map_err(|e| aws_error("ec2:DescribeInstances", e))?;
            for reservation in page.reservations() {
                for i in reservation.instances() {
                    let Some(id) = i.instance_id() else { continue };
                    instances.push(Instance {
                        id: id.to_string(),
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
                    });
                }
            }
            match page.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_string()),
                _ => break,
            }
        }
        Ok(instances)
    }
}

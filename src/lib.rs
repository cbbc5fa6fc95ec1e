//! etcd-lifecycle-hook: an AWS Lambda that handles EC2 Auto Scaling lifecycle hooks for an etcd
//! cluster without ever knowingly breaking its quorum. See ARCHITECTURE.md for the map.

pub mod aws;
pub mod config;
pub mod error_text;
pub mod etcd;
pub mod event;
pub mod handler;
pub mod health;
pub mod membership;
pub mod metrics;
pub mod model;
pub mod resilience;

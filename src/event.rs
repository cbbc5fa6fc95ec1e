//! Every input form, turned into one list of messages before anything else happens.
//!
//! Why a separate parsing step: a lifecycle action is paid for with the cluster's quorum, so an
//! event that is not understood must be rejected whole, with a message naming the field, before a
//! single AWS or etcd call is made. This module makes no call and has no side effect.

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use serde_json::{Map, Value};

use crate::model::Transition;

/// A lifecycle action to handle, whatever envelope it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    pub group: String,
    pub hook: String,
    pub instance_id: String,
    pub token: String,
    pub transition: Transition,
    /// Warm pools: where the instance comes from (`EC2`, `AutoScalingGroup`, `WarmPool`).
    pub origin: Option<String>,
    /// Warm pools: where the instance goes (`AutoScalingGroup`, `WarmPool`, `EC2`).
    pub destination: Option<String>,
}

impl LifecycleEvent {
    /// Whether this event, delivered late or again, could find its instance moved on to where a
    /// membership change made for it would do harm: a launch (the instance may since rest in a
    /// warm pool, stopped, or be leaving: a learner added for it would never be started) and a
    /// terminate that does not end in EC2 (back to the warm pool, or not said: the instance may
    /// be in service again, its member live). A terminate whose destination is `EC2` ends with
    /// the machine gone, so its member is owed a removal whenever the event comes.
    pub fn may_outlive_its_action(&self) -> bool {
        match self.transition {
            Transition::Launching => true,
            Transition::Terminating => self.destination.as_deref() != Some("EC2"),
        }
    }

    /// A launch into the warm pool: the instance is not an etcd member yet and will not run etcd
    /// until it leaves the pool.
    pub fn into_warm_pool(&self) -> bool {
        self.transition == Transition::Launching && self.destination.as_deref() == Some("WarmPool")
    }
}

/// One unit of work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Lifecycle(LifecycleEvent),
    /// `autoscaling:TEST_NOTIFICATION`, sent when a notification target is configured: acknowledged.
    TestNotification {
        group: Option<String>,
    },
    /// The scheduled reconcile sweep.
    Sweep,
}

/// One SQS record: its ID for the partial batch response and what it held.
#[derive(Debug)]
pub struct QueuedMessage {
    pub message_id: String,
    pub message: Result<Vec<Message>, EventError>,
}

/// The whole invocation payload.
#[derive(Debug)]
pub enum Invocation {
    /// EventBridge (lifecycle action or schedule) or SNS: all or nothing.
    Direct(Vec<Message>),
    /// SQS: each record on its own; failures are reported per record.
    Queue(Vec<QueuedMessage>),
}

/// Input that cannot be handled. Nothing was done with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("invalid event: `{field}` is missing; expected {expected}")]
    Missing {
        field: String,
        expected: &'static str,
    },
    #[error("invalid event: `{field}` is {found}; expected {expected}")]
    Invalid {
        field: String,
        found: String,
        expected: &'static str,
    },
    #[error("invalid event: detail-type {detail_type:?} disagrees with LifecycleTransition {transition:?}")]
    Disagreement {
        detail_type: String,
        transition: String,
    },
    #[error("invalid event: not an Auto Scaling lifecycle action, a scheduled sweep, or an SNS/SQS delivery of one ({what})")]
    Unrecognized { what: String },
}

const LAUNCH_DETAIL: &str = "EC2 Instance-launch Lifecycle Action";
const TERMINATE_DETAIL: &str = "EC2 Instance-terminate Lifecycle Action";
const TEST_NOTIFICATION: &str = "autoscaling:TEST_NOTIFICATION";

/// Parses a raw invocation payload.
pub fn parse(payload: &Value) -> Result<Invocation, EventError> {
    let Some(obj) = payload.as_object() else {
        return Err(EventError::Unrecognized {
            what: format!("the payload is {}, not a JSON object", kind(payload)),
        });
    };
    if let Some(records) = obj.get("Records") {
        return parse_records(records);
    }
    parse_message(obj, "").map(Invocation::Direct)
}

/// A Lambda trigger delivers records of one source only, so the first record's source decides
/// how the whole batch is read.
fn parse_records(records: &Value) -> Result<Invocation, EventError> {
    let list = records
        .as_array()
        .ok_or_else(|| invalid("Records", records, "an array of SNS or SQS records"))?;
    let first = list.first().ok_or_else(|| EventError::Invalid {
        field: "Records".into(),
        found: "an empty array".into(),
        expected: "at least one SNS or SQS record",
    })?;
    match record_source(first) {
        "aws:sqs" => parse_sqs_records(list),
        "aws:sns" => parse_sns_records(list),
        other => Err(EventError::Invalid {
            field: "Records[0].eventSource".into(),
            found: if other.is_empty() {
                "missing".into()
            } else {
                format!("{other:?}")
            },
            expected: "\"aws:sqs\" or \"aws:sns\"",
        }),
    }
}

/// SQS spells it `eventSource`, SNS `EventSource`; either is accepted so the caller need not
/// know which delivery it got. Empty when neither is a string.
fn record_source(record: &Value) -> &str {
    record
        .get("eventSource")
        .or_else(|| record.get("EventSource"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// An SQS batch is not all or nothing: a record that does not parse is reported for that record
/// alone (partial batch response), so one bad message cannot block the others' lifecycle actions.
fn parse_sqs_records(list: &[Value]) -> Result<Invocation, EventError> {
    let event: SqsEvent = serde_json::from_value(Value::Array(list.to_vec()).wrap("Records"))
        .map_err(|e| EventError::Invalid {
            field: "Records".into(),
            found: format!("not an SQS batch ({e})"),
            expected: "SQS records with messageId and body",
        })?;
    let queued = event
        .records
        .iter()
        .enumerate()
        .map(|(i, record)| queued_message(i, record))
        .collect();
    Ok(Invocation::Queue(queued))
}

/// A record without a `messageId` still needs a name in the partial batch response and in logs;
/// its position stands in for it.
fn queued_message(i: usize, record: &SqsMessage) -> QueuedMessage {
    let message_id = record
        .message_id
        .clone()
        .unwrap_or_else(|| format!("record-{i}"));
    let field = format!("Records[{i}].body");
    let message = match record.body.as_deref() {
        None => Err(EventError::Missing {
            field,
            expected: "the notification as a JSON string",
        }),
        Some(body) => parse_body(body, &field),
    };
    QueuedMessage {
        message_id,
        message,
    }
}

/// SNS has no partial batch response: a bad record rejects the whole delivery, as for a direct
/// event, so nothing is acted on from input that is only partly understood.
fn parse_sns_records(list: &[Value]) -> Result<Invocation, EventError> {
    // Only `Sns.Message` matters; the typed `SnsEvent` insists on every envelope field
    // (signature, URLs), which would reject deliveries for fields never read.
    let mut messages = Vec::new();
    for (i, record) in list.iter().enumerate() {
        let field = format!("Records[{i}].Sns.Message");
        let message = record
            .get("Sns")
            .and_then(|sns| sns.get("Message"))
            .and_then(Value::as_str)
            .ok_or_else(|| EventError::Missing {
                field: field.clone(),
                expected: "the notification as a JSON string",
            })?;
        messages.extend(parse_body(message, &field)?);
    }
    Ok(Invocation::Direct(messages))
}

trait Wrap {
    fn wrap(self, key: &str) -> Value;
}

impl Wrap for Value {
    fn wrap(self, key: &str) -> Value {
        let mut map = Map::new();
        map.insert(key.to_string(), self);
        Value::Object(map)
    }
}

/// A notification carried as a string (SNS `Message`, SQS `body`), possibly an SNS envelope
/// itself (SNS fanned out to SQS without raw message delivery).
fn parse_body(body: &str, field: &str) -> Result<Vec<Message>, EventError> {
    let value: Value = serde_json::from_str(body).map_err(|e| EventError::Invalid {
        field: field.to_string(),
        found: format!("not JSON ({e})"),
        expected: "an Auto Scaling notification as a JSON string",
    })?;
    let obj = value
        .as_object()
        .ok_or_else(|| invalid(field, &value, "a JSON object"))?;
    if obj.get("Type").and_then(Value::as_str) == Some("Notification") {
        let inner =
            obj.get("Message")
                .and_then(Value::as_str)
                .ok_or_else(|| EventError::Missing {
                    field: format!("{field}.Message"),
                    expected: "the SNS notification's message as a string",
                })?;
        return parse_body(inner, &format!("{field}.Message"));
    }
    parse_message(obj, field)
}

/// An EventBridge event, or a classic Auto Scaling notification.
fn parse_message(obj: &Map<String, Value>, prefix: &str) -> Result<Vec<Message>, EventError> {
    if let Some(detail_type) = obj.get("detail-type") {
        return parse_eventbridge(obj, detail_type, prefix);
    }
    if obj.get("Event").and_then(Value::as_str) == Some(TEST_NOTIFICATION) {
        let group = obj
            .get("AutoScalingGroupName")
            .and_then(Value::as_str)
            .map(String::from);
        return Ok(vec![Message::TestNotification { group }]);
    }
    if obj.contains_key("LifecycleTransition") {
        return Ok(vec![Message::Lifecycle(lifecycle(obj, prefix)?)]);
    }
    Err(EventError::Unrecognized {
        what: if prefix.is_empty() {
            "no detail-type, Records, Event or LifecycleTransition".to_string()
        } else {
            format!("{prefix} has no detail-type, Event or LifecycleTransition")
        },
    })
}

/// A `detail-type` commits the event to being EventBridge's: a kind we do not handle is refused
/// by name rather than read as a classic notification that happens to carry the same fields.
fn parse_eventbridge(
    obj: &Map<String, Value>,
    detail_type: &Value,
    prefix: &str,
) -> Result<Vec<Message>, EventError> {
    let path = |name: &str| field_path(prefix, name);
    let detail_type = detail_type
        .as_str()
        .ok_or_else(|| invalid(&path("detail-type"), detail_type, "a string"))?;
    match detail_type {
        "Scheduled Event" => {
            require_source(obj, &path("source"), "aws.events", "\"aws.events\"")?;
            Ok(vec![Message::Sweep])
        }
        LAUNCH_DETAIL | TERMINATE_DETAIL => parse_lifecycle_action(obj, detail_type, prefix),
        other => Err(EventError::Invalid {
            field: path("detail-type"),
            found: format!("{other:?}"),
            expected: "\"EC2 Instance-launch Lifecycle Action\", \"EC2 Instance-terminate Lifecycle Action\" or \"Scheduled Event\"",
        }),
    }
}

/// An EventBridge lifecycle action says its transition twice (`detail-type` and the detail's
/// `LifecycleTransition`); when they disagree the event is refused, since acting on either could
/// add or remove the wrong member.
fn parse_lifecycle_action(
    obj: &Map<String, Value>,
    detail_type: &str,
    prefix: &str,
) -> Result<Vec<Message>, EventError> {
    let path = |name: &str| field_path(prefix, name);
    // Only Auto Scaling pauses instances: a look-alike from another source (a misconfigured rule,
    // a test harness) must not remove a member.
    require_source(
        obj,
        &path("source"),
        "aws.autoscaling",
        "\"aws.autoscaling\"",
    )?;
    let detail = obj.get("detail").ok_or_else(|| EventError::Missing {
        field: path("detail"),
        expected: "the lifecycle action's detail object",
    })?;
    let detail = detail
        .as_object()
        .ok_or_else(|| invalid(&path("detail"), detail, "an object"))?;
    let event = lifecycle(detail, &path("detail"))?;
    let expected = if detail_type == LAUNCH_DETAIL {
        Transition::Launching
    } else {
        Transition::Terminating
    };
    if event.transition != expected {
        return Err(EventError::Disagreement {
            detail_type: detail_type.to_string(),
            transition: event.transition.as_str().to_string(),
        });
    }
    Ok(vec![Message::Lifecycle(event)])
}

/// Errors name a field by its full path from the payload (`Records[0].body.detail.EC2InstanceId`),
/// so an operator can find it in the event as delivered, whatever envelope wrapped it.
fn field_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn lifecycle(obj: &Map<String, Value>, prefix: &str) -> Result<LifecycleEvent, EventError> {
    let path = |name: &str| field_path(prefix, name);
    let required = |name: &str| -> Result<String, EventError> {
        match obj.get(name) {
            None | Some(Value::Null) => Err(EventError::Missing {
                field: path(name),
                expected: "a non-empty string",
            }),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            Some(other) => Err(invalid(&path(name), other, "a non-empty string")),
        }
    };
    let optional = |name: &str| obj.get(name).and_then(Value::as_str).map(String::from);
    let transition_text = required("LifecycleTransition")?;
    let transition = match transition_text.as_str() {
        "autoscaling:EC2_INSTANCE_LAUNCHING" => Transition::Launching,
        "autoscaling:EC2_INSTANCE_TERMINATING" => Transition::Terminating,
        other => return Err(EventError::Invalid {
            field: path("LifecycleTransition"),
            found: format!("{other:?}"),
            expected:
                "\"autoscaling:EC2_INSTANCE_LAUNCHING\" or \"autoscaling:EC2_INSTANCE_TERMINATING\"",
        }),
    };
    let instance_id = required("EC2InstanceId")?;
    if !instance_id.starts_with("i-")
        || !instance_id[2..].chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(EventError::Invalid {
            field: path("EC2InstanceId"),
            found: format!("{instance_id:?}"),
            expected: "an EC2 instance ID such as \"i-0123456789abcdef0\"",
        });
    }
    Ok(LifecycleEvent {
        group: required("AutoScalingGroupName")?,
        hook: required("LifecycleHookName")?,
        token: required("LifecycleActionToken")?,
        instance_id,
        transition,
        origin: optional("Origin"),
        destination: optional("Destination"),
    })
}

/// `source` must be `wanted`; `expected` is how the error message spells it.
fn require_source(
    obj: &Map<String, Value>,
    field: &str,
    wanted: &str,
    expected: &'static str,
) -> Result<(), EventError> {
    match obj.get("source") {
        Some(Value::String(source)) if source == wanted => Ok(()),
        None => Err(EventError::Missing {
            field: field.to_string(),
            expected,
        }),
        Some(Value::String(other)) => Err(EventError::Invalid {
            field: field.to_string(),
            found: format!("{other:?}"),
            expected,
        }),
        Some(other) => Err(invalid(field, other, expected)),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid(field: &str, found: &Value, expected: &'static str) -> EventError {
    EventError::Invalid {
        field: field.to_string(),
        found: kind(found).to_string(),
        expected,
    }
}

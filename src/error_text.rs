//! Error text for operators: an error and the causes under it, on one line.
//!
//! Why one helper: AWS calls, etcd calls and the TLS setup each turn a source chain into the text
//! of a hold or a start-up error, and a cause that repeats its parent's words (hyper and tonic
//! both do) should be said once everywhere, without any `Debug` dump.

use std::error::Error;

/// `head`, then each cause of the `source` chain whose text `head` and the causes before it do
/// not already contain, joined by ": ".
pub fn with_causes(head: String, mut source: Option<&(dyn Error + 'static)>) -> String {
    let mut text = head;
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Link {
        text: &'static str,
        #[source]
        under: Option<Box<Link>>,
    }

    fn chain(parts: &[&'static str]) -> Option<Box<Link>> {
        parts
            .iter()
            .rev()
            .fold(None, |under, &text| Some(Box::new(Link { text, under })))
    }

    #[test]
    fn each_cause_is_said_once() {
        let causes = chain(&[
            "dispatch failure",
            "io error",
            "io error",
            "Connection refused",
        ]);
        let source = causes.as_deref().map(|l| l as &(dyn Error + 'static));
        assert_eq!(
            with_causes("DescribeInstances failed".into(), source),
            "DescribeInstances failed: dispatch failure: io error: Connection refused"
        );
        assert_eq!(with_causes("alone".into(), None), "alone");
    }
}

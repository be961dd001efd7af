//! Topic routing: the row's `topic` column wins, else the configured template.

/// A parsed `kafka.topic-template`, e.g. `outbox.{aggregate_type}`.
#[derive(Debug, Clone)]
pub struct TopicTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    AggregateType,
    EventType,
    Table,
}

/// What a template may refer to.
pub struct RouteFields<'a> {
    /// Row's aggregate type.
    pub aggregate_type: &'a str,
    /// Row's event type.
    pub event_type: &'a str,
    /// Outbox table name (without schema).
    pub table: &'a str,
}

impl TopicTemplate {
    /// Parse; the error says which placeholder is unknown.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| "unclosed '{'".to_string())?
                + open;
            parts.push(match &rest[open + 1..close] {
                "aggregate_type" => Part::AggregateType,
                "event_type" => Part::EventType,
                "table" => Part::Table,
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}} (known: {{aggregate_type}}, {{event_type}}, {{table}})"
                    ))
                }
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Self { parts })
    }

    /// Render for one row.
    pub fn render(&self, f: &RouteFields<'_>) -> String {
        let mut out = String::with_capacity(32);
        for p in &self.parts {
            out.push_str(match p {
                Part::Lit(s) => s,
                Part::AggregateType => f.aggregate_type,
                Part::EventType => f.event_type,
                Part::Table => f.table,
            });
        }
        out
    }
}

/// Kafka's topic-name rule: 1–249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
/// Checked before producing so a bad name is a row-level error with the row
/// id, not an opaque broker failure.
pub fn validate_topic(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err(format!(
            "topic name must be 1-249 characters, got {}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err("topic name must not be '.' or '..'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {name:?} contains illegal character {c:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders() {
        let t = TopicTemplate::parse("outbox.{aggregate_type}.{event_type}").unwrap();
        let f = RouteFields {
            aggregate_type: "order",
            event_type: "created",
            table: "outbox",
        };
        assert_eq!(t.render(&f), "outbox.order.created");
        assert!(TopicTemplate::parse("x.{nope}")
            .unwrap_err()
            .contains("nope"));
        assert!(TopicTemplate::parse("x.{aggregate_type").is_err());
    }

    #[test]
    fn topic_names() {
        assert!(validate_topic("outbox.order_1-x").is_ok());
        assert!(validate_topic("bad topic").is_err());
        assert!(validate_topic("").is_err());
        assert!(validate_topic(&"a".repeat(250)).is_err());
    }
}

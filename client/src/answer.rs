//! One join's answer as a client sees it, and what a script or an operator expects of it
//! (`poc-client join-expect`): the status, the instance that answered, the error code and the
//! owner an error names.

use std::fmt;

use serde_json::Value;

/// What one join came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status; 0 when no answer came (printed `000`, as curl does).
    pub status: u16,
    /// The instance that answered (a join's `instance`, or the refusing instance of a 421).
    pub instance: Option<u64>,
    /// The error code of an error answer (`owner_unavailable`, `misdirected`, ...).
    pub error: Option<String>,
    /// The owner an answer names, as text: a host:port (`owner_unavailable`) or an index
    /// (a join, a 421).
    pub owner: Option<String>,
    /// The body as it came, or why there was none.
    pub body: String,
}

impl Answer {
    /// The answer of `status` with `body`; a body that is not JSON names nothing.
    pub fn parse(status: u16, body: String) -> Self {
        let json: Option<Value> = serde_json::from_str(&body).ok();
        let field = |name: &str| json.as_ref().and_then(|j| j.get(name));
        Self {
            status,
            instance: field("instance").and_then(Value::as_u64),
            error: field("error").and_then(Value::as_str).map(str::to_owned),
            owner: field("owner").and_then(|o| match o {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }),
            body,
        }
    }

    /// No answer: `reason` says why (unreachable, timed out).
    pub fn none(reason: String) -> Self {
        Self {
            status: 0,
            instance: None,
            error: None,
            owner: None,
            body: reason,
        }
    }

    /// `<status> <instance>`: the line `join-expect` prints (`-` for no instance).
    pub fn line(&self) -> String {
        format!(
            "{:03} {}",
            self.status,
            self.instance
                .map_or_else(|| "-".to_owned(), |i| i.to_string())
        )
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.status == 0 {
            return write!(f, "no answer ({})", self.body);
        }
        write!(f, "HTTP {}", self.status)?;
        if let Some(i) = self.instance {
            write!(f, " from instance {i}")?;
        }
        if let Some(e) = &self.error {
            write!(f, " {e}")?;
        }
        if let Some(o) = &self.owner {
            write!(f, " (owner {o})")?;
        }
        write!(f, ": {:.300}", self.body.trim())
    }
}

/// What an answer must be; every field left `None` is not judged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expect {
    pub status: Option<u16>,
    pub instance: Option<u64>,
    pub error: Option<String>,
    pub owner: Option<String>,
}

impl Expect {
    /// What is expected, in words (`any answer` when nothing is).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = self.status {
            parts.push(format!("HTTP {s}"));
        }
        if let Some(i) = self.instance {
            parts.push(format!("from instance {i}"));
        }
        if let Some(e) = &self.error {
            parts.push(format!("error {e}"));
        }
        if let Some(o) = &self.owner {
            parts.push(format!("owner {o}"));
        }
        if parts.is_empty() {
            "any answer".to_owned()
        } else {
            parts.join(", ")
        }
    }

    /// Whether `answer` is what is expected.
    pub fn holds(&self, answer: &Answer) -> bool {
        self.status.is_none_or(|s| s == answer.status)
            && self.instance.is_none_or(|i| Some(i) == answer.instance)
            && self
                .error
                .as_ref()
                .is_none_or(|e| Some(e) == answer.error.as_ref())
            && self
                .owner
                .as_ref()
                .is_none_or(|o| Some(o) == answer.owner.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_names_its_instance() {
        let a = Answer::parse(
            200,
            r#"{"client_id":"x","status":"joined","instance":1,"owner":1,"hostport":"server-1:8081","epoch":"e","served_under":"current"}"#.into(),
        );
        assert_eq!(a.line(), "200 1");
        assert_eq!(a.owner.as_deref(), Some("1"));
        let e = Expect {
            status: Some(200),
            instance: Some(1),
            ..Expect::default()
        };
        assert!(e.holds(&a));
        assert!(!Expect {
            instance: Some(0),
            ..e.clone()
        }
        .holds(&a));
        assert_eq!(e.describe(), "HTTP 200, from instance 1");
    }

    #[test]
    fn an_owner_down_is_judged_by_error_and_owner() {
        let a = Answer::parse(
            503,
            r#"{"error":"owner_unavailable","message":"down","owner":"poc-routing-server-2:8081"}"#
                .into(),
        );
        assert_eq!(a.line(), "503 -");
        let e = Expect {
            error: Some("owner_unavailable".into()),
            owner: Some("poc-routing-server-2:8081".into()),
            ..Expect::default()
        };
        assert!(e.holds(&a));
        let other = Expect {
            owner: Some("poc-routing-server-3:8081".into()),
            ..e.clone()
        };
        assert!(!other.holds(&a));
        assert!(a
            .to_string()
            .starts_with("HTTP 503 owner_unavailable (owner poc-routing-server-2:8081): {"));
    }

    #[test]
    fn no_answer_and_bodies_that_are_not_json() {
        let a = Answer::none("cannot reach x".into());
        assert_eq!(a.line(), "000 -");
        assert_eq!(a.to_string(), "no answer (cannot reach x)");
        assert!(!Expect {
            status: Some(200),
            ..Expect::default()
        }
        .holds(&a));
        assert!(Expect::default().holds(&a));
        let a = Answer::parse(503, "no healthy upstream".into());
        assert_eq!(a.line(), "503 -");
        assert_eq!(a.error, None);
        assert_eq!(Expect::default().describe(), "any answer");
    }
}

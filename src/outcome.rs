//! The result of one delivery attempt for one recipient. A result is data,
//! not an error: the scheduler turns it into a recipient state, a retry or a
//! bounce, and the DSN composer reads its details.

/// What is known about one attempt's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detail {
    /// RFC 3463 status, e.g. `2.0.0`, `4.4.1`, `5.1.1`.
    pub status: String,
    /// Human-readable text (for logs, `mailq`, the bounce's text part).
    pub text: String,
    /// The host that answered, as `name[ip]:port` (Remote-MTA).
    pub remote_mta: Option<String>,
    /// The remote SMTP reply as received (Diagnostic-Code).
    pub smtp_reply: Option<String>,
    /// The connection that answered, `name[ip]:port` (the log's `relay=`).
    pub peer: Option<String>,
}

impl Detail {
    /// A result decided here, without a remote reply.
    pub fn local(status: &str, text: impl Into<String>) -> Detail {
        Detail {
            status: status.to_string(),
            text: text.into(),
            remote_mta: None,
            smtp_reply: None,
            peer: None,
        }
    }

    /// `status text`, as shown in `mailq` and logs.
    pub fn reason(&self) -> String {
        format!("{} {}", self.status, self.text)
    }
}

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Final success.
    Delivered(Detail),
    /// Temporary failure: retry later.
    TempFail(Detail),
    /// Permanent failure: bounce.
    PermFail(Detail),
}

impl Outcome {
    /// A temporary failure decided here.
    pub fn temp(status: &str, text: impl Into<String>) -> Outcome {
        Outcome::TempFail(Detail::local(status, text))
    }

    /// A permanent failure decided here.
    pub fn perm(status: &str, text: impl Into<String>) -> Outcome {
        Outcome::PermFail(Detail::local(status, text))
    }

    /// The detail of any outcome.
    pub fn detail(&self) -> &Detail {
        match self {
            Outcome::Delivered(d) | Outcome::TempFail(d) | Outcome::PermFail(d) => d,
        }
    }
}

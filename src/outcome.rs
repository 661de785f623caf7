//! The result of one delivery attempt for one recipient. A result is data,
//! not an error: the scheduler turns it into a recipient state, a retry or a
//! bounce.

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Final success; the text says where (e.g. `mailbox alice`).
    Delivered(String),
    /// Temporary failure: retry later. The text is kept as the reason.
    TempFail(String),
    /// Permanent failure: bounce. The text is the diagnostic.
    PermFail(String),
}

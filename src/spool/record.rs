//! The spool's record format: what is stored per message, encoded with
//! bincode behind a format version byte.

use serde::{Deserialize, Serialize};

use super::id::QueueId;

/// Format version written in front of every record.
const RECORD_VERSION: u8 = 1;

/// Where one recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RcptState {
    /// Not tried yet.
    Pending,
    /// Tried and failed temporarily; will be tried again.
    Deferred,
    /// Final: delivered.
    Delivered,
    /// Final: failed permanently (or expired).
    Bounced,
}

impl RcptState {
    /// Whether nothing more will happen to the recipient.
    pub fn is_final(self) -> bool {
        matches!(self, RcptState::Delivered | RcptState::Bounced)
    }

    /// Lower-case name used in `show` and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            RcptState::Pending => "pending",
            RcptState::Deferred => "deferred",
            RcptState::Delivered => "delivered",
            RcptState::Bounced => "bounced",
        }
    }
}

/// RFC 3461 NOTIFY as bits; 0 means the default (FAILURE and DELAY).
pub mod notify {
    /// NOTIFY=NEVER.
    pub const NEVER: u8 = 1;
    /// SUCCESS.
    pub const SUCCESS: u8 = 2;
    /// FAILURE.
    pub const FAILURE: u8 = 4;
    /// DELAY.
    pub const DELAY: u8 = 8;

    /// Whether a notice of this kind (one of the bits) is wanted.
    pub fn wants(bits: u8, kind: u8) -> bool {
        if bits == 0 {
            kind == FAILURE || kind == DELAY
        } else {
            bits & NEVER == 0 && bits & kind != 0
        }
    }
}

/// RFC 3461 RET: what a failure report carries of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    /// The whole message.
    Full,
    /// Only its headers.
    Hdrs,
}

/// One envelope recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// Address to deliver to (after alias expansion).
    pub address: String,
    /// The address as the client gave it (RFC 3461 ORCPT), when it differs.
    pub orcpt: Option<String>,
    /// Current state.
    pub state: RcptState,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Unix ms of the next attempt while deferred.
    pub next_attempt: i64,
    /// The last error, for `mailq` and bounces.
    pub last_error: Option<String>,
    /// RFC 3461 NOTIFY bits (`notify::*`); 0: default.
    pub notify: u8,
    /// The host that gave the last answer (Remote-MTA).
    pub remote_mta: Option<String>,
    /// The last remote SMTP reply (Diagnostic-Code).
    pub diagnostic: Option<String>,
    /// The last RFC 3463 status.
    pub status: Option<String>,
}

impl Recipient {
    /// A new recipient, not tried yet.
    pub fn new(address: String, orcpt: Option<String>) -> Recipient {
        Recipient {
            address,
            orcpt,
            state: RcptState::Pending,
            attempts: 0,
            next_attempt: 0,
            last_error: None,
            notify: 0,
            remote_mta: None,
            diagnostic: None,
            status: None,
        }
    }
}

/// Everything the queue keeps about a message except its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMessage {
    /// Queue id.
    pub id: QueueId,
    /// Arrival time, Unix ms.
    pub arrival: i64,
    /// Envelope sender; empty for the null sender `<>`.
    pub sender: String,
    /// Content size in octets, as stored (with our Received header).
    pub size: u64,
    /// Client that submitted it (`name[ip]` or `sendmail`).
    pub client: String,
    /// Listener it came in on.
    pub listener: String,
    /// The Message-ID header, if any, for logs.
    pub message_id: Option<String>,
    /// Recipients, in the order given.
    pub recipients: Vec<Recipient>,
    /// Kept from delivery by the administrator.
    pub held: bool,
    /// RFC 3461 ENVID, as received (xtext decoded).
    pub envid: Option<String>,
    /// RFC 3461 RET.
    pub ret: Option<Ret>,
    /// Whether the 8BITMIME body type was declared (RFC 6152).
    pub body_8bit: bool,
    /// Whether SMTPUTF8 was declared (RFC 6531).
    pub smtputf8: bool,
    /// Whether the delay notice was sent.
    pub warned: bool,
    /// The time key under which the message sits in the due index, if any.
    pub due: Option<i64>,
    /// Number of content chunks in the body tree.
    pub chunks: u32,
}

impl QueuedMessage {
    /// Whether every recipient is final.
    pub fn is_done(&self) -> bool {
        self.recipients.iter().all(|r| r.state.is_final())
    }

    /// Earliest next attempt among recipients not final.
    pub fn next_due(&self) -> Option<i64> {
        self.recipients
            .iter()
            .filter(|r| !r.state.is_final())
            .map(|r| r.next_attempt)
            .min()
    }
}

/// A record that could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("unreadable spool record: {0}")]
pub struct DecodeError(pub String);

/// Encodes a record with its version byte.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    // Encoding plain structs of strings and integers into a Vec cannot fail.
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("bincode encodes plain data");
    out.extend_from_slice(&body);
    out
}

/// Decodes a record written by `encode`.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, rest)) => {
            bincode::serde::decode_from_slice(rest, bincode::config::standard())
                .map(|(v, _)| v)
                .map_err(|e| DecodeError(e.to_string()))
        }
        Some((v, _)) => Err(DecodeError(format!(
            "record format version {v} is not known"
        ))),
        None => Err(DecodeError("empty record".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_with_version_byte() {
        let m = QueuedMessage {
            id: QueueId(42),
            arrival: 1,
            sender: "a@b.test".into(),
            size: 10,
            client: "localhost[127.0.0.1]".into(),
            listener: "mx".into(),
            message_id: Some("<x@y>".into()),
            recipients: vec![Recipient::new("c@d.test".into(), None)],
            held: false,
            envid: None,
            ret: None,
            body_8bit: false,
            smtputf8: false,
            warned: false,
            due: Some(5),
            chunks: 1,
        };
        let bytes = encode(&m);
        assert_eq!(bytes[0], RECORD_VERSION);
        assert_eq!(decode::<QueuedMessage>(&bytes).expect("decodes"), m);
        let mut future = bytes.clone();
        future[0] = 99;
        assert!(decode::<QueuedMessage>(&future).is_err());
    }
}

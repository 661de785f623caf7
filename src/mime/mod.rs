//! MIME structure of a stored message, computed once when the message
//! enters the message store and cached there, so that IMAP's ENVELOPE,
//! BODYSTRUCTURE, `BODY[section]` and header SEARCH, and the webmail's
//! message list, never reparse or reread a body.
//!
//! Offsets are relative to the start of the stored blob (the octets the
//! store keeps once per delivery). A per-copy prefix (`Return-Path:`,
//! `Delivered-To:`) is added by the store's readers, which shift offsets
//! by its length; nothing here knows about it.
//!
//! Strings are kept as the raw octets of the header (RFC 2047 encoded
//! words left encoded), because IMAP returns them raw; `decode` helpers
//! turn them into text for people.

pub mod downgrade;

use serde::{Deserialize, Serialize};

/// What is cached about one message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The RFC 3501 §7.4.2 ENVELOPE of the message.
    pub envelope: Envelope,
    /// The top-level body part (a tree for multipart messages).
    pub body: Part,
    /// `Date:` parsed, Unix seconds (for SORT, SENTBEFORE, the webmail).
    pub sent: Option<i64>,
    /// Whether any part is an attachment (for the webmail's list).
    pub has_attachments: bool,
    /// The start of the first text part, decoded, at most a few hundred
    /// characters (the webmail's preview line).
    pub preview: String,
}

/// RFC 3501 ENVELOPE fields, raw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// `Date:`, raw.
    pub date: Option<Vec<u8>>,
    /// `Subject:`, raw (unfolded).
    pub subject: Option<Vec<u8>>,
    /// `From:`.
    pub from: Vec<Address>,
    /// `Sender:` (defaults to From, as RFC 3501 asks, when absent).
    pub sender: Vec<Address>,
    /// `Reply-To:` (defaults to From when absent).
    pub reply_to: Vec<Address>,
    /// `To:`.
    pub to: Vec<Address>,
    /// `Cc:`.
    pub cc: Vec<Address>,
    /// `Bcc:`.
    pub bcc: Vec<Address>,
    /// `In-Reply-To:`, raw.
    pub in_reply_to: Option<Vec<u8>>,
    /// `Message-ID:`, raw.
    pub message_id: Option<Vec<u8>>,
}

/// One address of an ENVELOPE list. A group is a start marker
/// (`mailbox = Some(group name)`, `host = None`) followed by its members
/// and an end marker (both `None`), as RFC 3501 §7.4.2 encodes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// Display name, raw.
    pub name: Option<Vec<u8>>,
    /// Source route (obsolete), raw.
    pub adl: Option<Vec<u8>>,
    /// Local part (or group name).
    pub mailbox: Option<Vec<u8>>,
    /// Domain.
    pub host: Option<Vec<u8>>,
}

/// MIME parameters (`name`, raw value), in order.
pub type Params = Vec<(String, Vec<u8>)>;

/// One body part, with what BODYSTRUCTURE reports and where its octets are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Media type, lower case (`text`, `multipart`, `message`, …).
    pub media_type: String,
    /// Subtype, lower case.
    pub subtype: String,
    /// Content-Type parameters, in order (RFC 2231 continuations joined).
    pub params: Params,
    /// `Content-ID:`, raw.
    pub id: Option<Vec<u8>>,
    /// `Content-Description:`, raw.
    pub description: Option<Vec<u8>>,
    /// `Content-Transfer-Encoding:`, lower case; `7bit` when absent.
    pub encoding: String,
    /// `Content-MD5:`, raw.
    pub md5: Option<Vec<u8>>,
    /// `Content-Disposition:` type and parameters.
    pub disposition: Option<(String, Params)>,
    /// `Content-Language:` values.
    pub language: Vec<Vec<u8>>,
    /// `Content-Location:`, raw.
    pub location: Option<Vec<u8>>,
    /// Offset of the part's header section (its MIME header).
    pub header_start: u64,
    /// Offset of the part's body (after the empty line).
    pub body_start: u64,
    /// Offset just past the part's body.
    pub body_end: u64,
    /// Lines of the body (text and message/rfc822 parts).
    pub lines: u32,
    /// Sub-parts of a multipart, in order.
    pub parts: Vec<Part>,
    /// For `message/rfc822` (and `message/global`): the enclosed message.
    pub message: Option<Box<Summary>>,
}

impl Part {
    /// The body's size in octets, as BODYSTRUCTURE reports it.
    pub fn size(&self) -> u64 {
        self.body_end.saturating_sub(self.body_start)
    }
}

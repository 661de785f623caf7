//! SEARCH keys (RFC 9051 §6.4.4, RFC 7162 MODSEQ): their grammar and their
//! evaluation against a message. Flag, size, date and envelope keys are
//! answered from the store's metadata and cached summary; only HEADER,
//! BODY and TEXT read a message's content, and only when a cheaper key
//! in the same search has not already decided.

use super::parser::{Bad, Parser, SeqSet};
use crate::mime::{Address, Summary};
use crate::store::{MessageMeta, flags};

/// One search key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchKey {
    All,
    /// Message sequence numbers.
    Seq(SeqSet),
    Uid(SeqSet),
    /// A system flag set (`true`) or not set (`false`).
    Flag(u16, bool),
    Keyword(String, bool),
    /// `NEW`, `RECENT`: no message is `\Recent` here.
    Recent,
    Before(i64),
    On(i64),
    Since(i64),
    SentBefore(i64),
    SentOn(i64),
    SentSince(i64),
    Larger(u64),
    Smaller(u64),
    /// An envelope address field or the subject: `FROM`, `TO`, `CC`,
    /// `BCC`, `SUBJECT`.
    Envelope(Field, String),
    Header(String, String),
    Body(String),
    Text(String),
    Modseq(u64),
    Not(Box<SearchKey>),
    Or(Box<SearchKey>, Box<SearchKey>),
    And(Vec<SearchKey>),
}

/// The envelope fields SEARCH looks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    From,
    To,
    Cc,
    Bcc,
    Subject,
}

/// Most nesting of parentheses and NOT/OR accepted.
const MAX_DEPTH: usize = 64;

/// Parses one search key.
pub fn parse_key(p: &mut Parser<'_>) -> Result<SearchKey, Bad> {
    key(p, 0)
}

fn key(p: &mut Parser<'_>, depth: usize) -> Result<SearchKey, Bad> {
    if depth > MAX_DEPTH {
        return Err("search keys nested too deeply".into());
    }
    match p.peek() {
        Some(b'(') => {
            p.pos += 1;
            let mut keys = vec![key(p, depth + 1)?];
            while p.peek() == Some(b' ') {
                p.sp()?;
                keys.push(key(p, depth + 1)?);
            }
            p.expect(b')')?;
            return Ok(SearchKey::And(keys));
        }
        Some(b'0'..=b'9' | b'*') => return Ok(SearchKey::Seq(p.seq_set()?)),
        _ => {}
    }
    let w = p.word()?;
    let text = |p: &mut Parser<'_>| -> Result<String, Bad> {
        p.sp()?;
        Ok(String::from_utf8_lossy(&p.astring()?).into_owned())
    };
    let day = |p: &mut Parser<'_>| -> Result<i64, Bad> {
        p.sp()?;
        let s = if p.peek() == Some(b'"') {
            p.string()?
        } else {
            p.astring()?
        };
        super::parser::date(&s).ok_or_else(|| "bad date".to_string())
    };
    use SearchKey as K;
    Ok(match w.as_str() {
        "ALL" => K::All,
        "ANSWERED" => K::Flag(flags::ANSWERED, true),
        "DELETED" => K::Flag(flags::DELETED, true),
        "DRAFT" => K::Flag(flags::DRAFT, true),
        "FLAGGED" => K::Flag(flags::FLAGGED, true),
        "SEEN" => K::Flag(flags::SEEN, true),
        "UNANSWERED" => K::Flag(flags::ANSWERED, false),
        "UNDELETED" => K::Flag(flags::DELETED, false),
        "UNDRAFT" => K::Flag(flags::DRAFT, false),
        "UNFLAGGED" => K::Flag(flags::FLAGGED, false),
        "UNSEEN" => K::Flag(flags::SEEN, false),
        "OLD" => K::Not(Box::new(K::Recent)),
        "NEW" | "RECENT" => K::Recent,
        "KEYWORD" | "UNKEYWORD" => {
            let k = text(p)?;
            K::Keyword(k, w == "KEYWORD")
        }
        "BEFORE" => K::Before(day(p)?),
        "ON" => K::On(day(p)?),
        "SINCE" => K::Since(day(p)?),
        "SENTBEFORE" => K::SentBefore(day(p)?),
        "SENTON" => K::SentOn(day(p)?),
        "SENTSINCE" => K::SentSince(day(p)?),
        "LARGER" | "SMALLER" => {
            p.sp()?;
            let n = p.number64()?;
            if w == "LARGER" {
                K::Larger(n)
            } else {
                K::Smaller(n)
            }
        }
        "FROM" => K::Envelope(Field::From, text(p)?),
        "TO" => K::Envelope(Field::To, text(p)?),
        "CC" => K::Envelope(Field::Cc, text(p)?),
        "BCC" => K::Envelope(Field::Bcc, text(p)?),
        "SUBJECT" => K::Envelope(Field::Subject, text(p)?),
        "HEADER" => {
            let name = text(p)?;
            K::Header(name, text(p)?)
        }
        "BODY" => K::Body(text(p)?),
        "TEXT" => K::Text(text(p)?),
        "UID" => {
            p.sp()?;
            K::Uid(p.seq_set()?)
        }
        "MODSEQ" => {
            p.sp()?;
            // Optional entry name and type (RFC 7162 §3.1.5): ignored.
            if p.peek() == Some(b'"') {
                p.string()?;
                p.sp()?;
                p.word()?;
                p.sp()?;
            }
            K::Modseq(p.number64()?)
        }
        "NOT" => {
            p.sp()?;
            K::Not(Box::new(key(p, depth + 1)?))
        }
        "OR" => {
            p.sp()?;
            let a = key(p, depth + 1)?;
            p.sp()?;
            K::Or(Box::new(a), Box::new(key(p, depth + 1)?))
        }
        other => return Err(format!("unknown search key {other}")),
    })
}

/// Whether evaluating needs the summary / the content.
pub fn needs(key: &SearchKey) -> (bool, bool) {
    use SearchKey as K;
    match key {
        K::SentBefore(_) | K::SentOn(_) | K::SentSince(_) | K::Envelope(..) => (true, false),
        K::Header(..) | K::Body(_) | K::Text(_) => (false, true),
        K::Not(k) => needs(k),
        K::Or(a, b) => {
            let (x, y) = (needs(a), needs(b));
            (x.0 || y.0, x.1 || y.1)
        }
        K::And(ks) => ks
            .iter()
            .map(needs)
            .fold((false, false), |a, b| (a.0 || b.0, a.1 || b.1)),
        _ => (false, false),
    }
}

/// Whether a MODSEQ key is in the search (RFC 7162 §3.1.5: the result
/// then carries the highest MODSEQ found).
pub fn uses_modseq(key: &SearchKey) -> bool {
    match key {
        SearchKey::Modseq(_) => true,
        SearchKey::Not(k) => uses_modseq(k),
        SearchKey::Or(a, b) => uses_modseq(a) || uses_modseq(b),
        SearchKey::And(ks) => ks.iter().any(uses_modseq),
        _ => false,
    }
}

/// What one message offers the evaluation.
pub struct Candidate<'a> {
    pub msn: u32,
    pub max_msn: u32,
    pub max_uid: u32,
    pub meta: &'a MessageMeta,
    pub summary: Option<&'a Summary>,
    /// The stored octets (prefix and blob), for HEADER, BODY and TEXT.
    pub content: Option<&'a [u8]>,
}

fn contains_ci(hay: &str, needle: &str) -> bool {
    needle.is_empty() || hay.to_lowercase().contains(&needle.to_lowercase())
}

fn day_of(ts: i64) -> i64 {
    ts.div_euclid(86_400)
}

fn address_text(a: &[Address]) -> String {
    let mut s = String::new();
    for x in a {
        if let Some(n) = &x.name {
            s.push_str(&crate::mime::decode_words(n));
            s.push(' ');
        }
        s.push_str(&String::from_utf8_lossy(
            x.mailbox.as_deref().unwrap_or_default(),
        ));
        s.push('@');
        s.push_str(&String::from_utf8_lossy(
            x.host.as_deref().unwrap_or_default(),
        ));
        s.push(' ');
    }
    s
}

/// Evaluates `key` for one message.
pub fn matches(key: &SearchKey, c: &Candidate<'_>) -> bool {
    use SearchKey as K;
    let m = c.meta;
    match key {
        K::All => true,
        K::Seq(s) => s.contains(c.msn, c.max_msn),
        K::Uid(s) => s.contains(m.uid, c.max_uid),
        K::Flag(f, set) => (m.flags & f != 0) == *set,
        K::Keyword(k, set) => m.keywords.iter().any(|x| x.eq_ignore_ascii_case(k)) == *set,
        K::Recent => false,
        K::Before(d) => day_of(m.internal_date) < *d,
        K::On(d) => day_of(m.internal_date) == *d,
        K::Since(d) => day_of(m.internal_date) >= *d,
        K::SentBefore(d) | K::SentOn(d) | K::SentSince(d) => {
            let sent = c.summary.and_then(|s| s.sent).unwrap_or(m.internal_date);
            let day = day_of(sent);
            match key {
                K::SentBefore(_) => day < *d,
                K::SentOn(_) => day == *d,
                _ => day >= *d,
            }
        }
        K::Larger(n) => m.size > *n,
        K::Smaller(n) => m.size < *n,
        K::Modseq(n) => m.modseq >= *n,
        K::Envelope(field, needle) => {
            let Some(s) = c.summary else { return false };
            let e = &s.envelope;
            let hay = match field {
                Field::From => address_text(&e.from),
                Field::To => address_text(&e.to),
                Field::Cc => address_text(&e.cc),
                Field::Bcc => address_text(&e.bcc),
                Field::Subject => e
                    .subject
                    .as_deref()
                    .map(crate::mime::decode_words)
                    .unwrap_or_default(),
            };
            contains_ci(&hay, needle)
        }
        K::Header(name, needle) => {
            let Some(content) = c.content else {
                return false;
            };
            crate::headers::fields(content)
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .any(|(_, v)| contains_ci(&crate::mime::decode_words(v.as_bytes()), needle))
        }
        K::Body(needle) | K::Text(needle) => {
            let Some(content) = c.content else {
                return false;
            };
            let text = crate::mime::searchable_text(content, matches!(key, K::Text(_)));
            contains_ci(&text, needle)
        }
        K::Not(k) => !matches(k, c),
        K::Or(a, b) => matches(a, c) || matches(b, c),
        K::And(ks) => ks.iter().all(|k| matches(k, c)),
    }
}

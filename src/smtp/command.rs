//! Parsing of SMTP command lines and envelope addresses (RFC 5321 §4.1,
//! RFC 6531 for SMTPUTF8). Strict: what the grammar does not allow is
//! refused with the reply that names the problem, never guessed at.

use super::reply::Reply;
use crate::spool::{Ret, notify};

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain`
    Ehlo(String),
    /// `HELO domain`
    Helo(String),
    /// `MAIL FROM:<path> [params]`
    Mail(MailFrom),
    /// `RCPT TO:<path> [params]`
    Rcpt(RcptTo),
    /// `DATA`
    Data,
    /// `RSET`
    Rset,
    /// `NOOP [text]`
    Noop,
    /// `QUIT`
    Quit,
    /// `HELP [topic]`
    Help,
    /// `VRFY string`
    Vrfy,
    /// `EXPN string`
    Expn,
    /// `STARTTLS`
    Starttls,
    /// `AUTH mechanism [initial-response]`
    Auth(String),
    /// `BDAT`, `ETRN`, `TURN` and other known commands petrel does not do.
    NotImplemented(String),
}

/// `MAIL FROM` and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFrom {
    /// Reverse path; empty for `<>`.
    pub address: String,
    /// `SIZE=` (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=8BITMIME` (RFC 6152).
    pub body_8bit: bool,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `RET=` (RFC 3461 §4.3).
    pub ret: Option<Ret>,
    /// `ENVID=` (RFC 3461 §4.4), xtext decoded.
    pub envid: Option<String>,
}

/// `RCPT TO` and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptTo {
    /// Forward path.
    pub address: String,
    /// `NOTIFY=` bits (RFC 3461 §4.1); 0 when absent.
    pub notify: u8,
    /// `ORCPT=rfc822;…` (RFC 3461 §4.2), xtext decoded.
    pub orcpt: Option<String>,
}

/// Decodes RFC 3461 xtext (`+XX` hex escapes); `None` if malformed.
pub fn xtext_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c if (b'!'..=b'~').contains(&c) && c != b'=' => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes text as RFC 3461 xtext.
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if (b'!'..=b'~').contains(&c) && c != b'+' && c != b'=' {
            out.push(c as char);
        } else {
            out.push_str(&format!("+{c:02X}"));
        }
    }
    out
}

fn syntax(text: &str) -> Reply {
    Reply::new(501, "5.5.4", text.to_string())
}

/// Parses one command line (without its CRLF).
pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    if line.contains(&0) {
        return Err(Reply::new(500, "5.5.2", "Error: NUL character in command"));
    }
    let text = std::str::from_utf8(line)
        .map_err(|_| Reply::new(500, "5.5.2", "Error: command is not valid UTF-8"))?;
    let (verb, rest) = match text.find(' ') {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, ""),
    };
    let verb_uc = verb.to_ascii_uppercase();
    let no_args = |cmd: Command, name: &str| {
        if rest.trim().is_empty() {
            Ok(cmd)
        } else {
            Err(syntax(&format!("Syntax: {name}")))
        }
    };
    match verb_uc.as_str() {
        "EHLO" | "HELO" => {
            let domain = rest.trim();
            if domain.is_empty() || domain.contains(char::is_whitespace) || !domain.is_ascii() {
                return Err(syntax(&format!("Syntax: {verb_uc} hostname")));
            }
            Ok(if verb_uc == "EHLO" {
                Command::Ehlo(domain.to_string())
            } else {
                Command::Helo(domain.to_string())
            })
        }
        "MAIL" => parse_mail(rest),
        "RCPT" => parse_rcpt(rest),
        "DATA" => no_args(Command::Data, "DATA"),
        "RSET" => no_args(Command::Rset, "RSET"),
        "QUIT" => no_args(Command::Quit, "QUIT"),
        "STARTTLS" => no_args(Command::Starttls, "STARTTLS"),
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "VRFY" => {
            if rest.trim().is_empty() {
                Err(syntax("Syntax: VRFY address"))
            } else {
                Ok(Command::Vrfy)
            }
        }
        "EXPN" => Ok(Command::Expn),
        "AUTH" => Ok(Command::Auth(rest.to_string())),
        "BDAT" | "ETRN" | "TURN" | "ATRN" | "SEND" | "SOML" | "SAML" | "XCLIENT" | "XFORWARD" => {
            Ok(Command::NotImplemented(verb_uc))
        }
        _ => Err(Reply::new(500, "5.5.2", "Error: command not recognized")),
    }
}

/// Splits `FROM:<path> params` after the keyword; tolerates one space after
/// the colon (common in the wild and harmless).
fn after_keyword<'a>(rest: &'a str, keyword: &str) -> Option<&'a str> {
    let (k, v) = rest.split_once(':')?;
    if !k.eq_ignore_ascii_case(keyword) {
        return None;
    }
    Some(v.strip_prefix(' ').unwrap_or(v))
}

fn parse_mail(rest: &str) -> Result<Command, Reply> {
    let v = after_keyword(rest, "FROM").ok_or_else(|| syntax("Syntax: MAIL FROM:<address>"))?;
    let (address, params) = parse_path(v, true).map_err(|e| e.reply("sender"))?;
    let mut mail = MailFrom {
        address,
        size: None,
        body_8bit: false,
        smtputf8: false,
        ret: None,
        envid: None,
    };
    for p in params.split(' ').filter(|p| !p.is_empty()) {
        let (k, val) = match p.split_once('=') {
            Some((k, v)) => (k.to_ascii_uppercase(), Some(v)),
            None => (p.to_ascii_uppercase(), None),
        };
        match (k.as_str(), val) {
            ("SIZE", Some(n)) => {
                let n: u64 = n
                    .parse()
                    .map_err(|_| Reply::new(501, "5.5.4", "Bad SIZE parameter"))?;
                mail.size = Some(n);
            }
            ("BODY", Some(b)) if b.eq_ignore_ascii_case("8BITMIME") => mail.body_8bit = true,
            ("BODY", Some(b)) if b.eq_ignore_ascii_case("7BIT") => mail.body_8bit = false,
            ("BODY", _) => return Err(Reply::new(501, "5.5.4", "Bad BODY parameter")),
            ("SMTPUTF8", None) => mail.smtputf8 = true,
            ("RET", Some(r)) if mail.ret.is_none() && r.eq_ignore_ascii_case("FULL") => {
                mail.ret = Some(Ret::Full)
            }
            ("RET", Some(r)) if mail.ret.is_none() && r.eq_ignore_ascii_case("HDRS") => {
                mail.ret = Some(Ret::Hdrs)
            }
            ("RET", _) => return Err(Reply::new(501, "5.5.4", "Bad RET parameter")),
            ("ENVID", Some(e)) if mail.envid.is_none() && e.len() <= 100 => {
                mail.envid = Some(
                    xtext_decode(e)
                        .ok_or_else(|| Reply::new(501, "5.5.4", "Bad ENVID parameter"))?,
                );
            }
            ("ENVID", _) => return Err(Reply::new(501, "5.5.4", "Bad ENVID parameter")),
            _ => return Err(Reply::new(555, "5.5.4", format!("Unsupported option: {p}"))),
        }
    }
    if !mail.smtputf8 && !mail.address.is_ascii() {
        return Err(Reply::new(
            553,
            "5.6.7",
            "Non-ASCII sender address needs the SMTPUTF8 parameter",
        ));
    }
    Ok(Command::Mail(mail))
}

/// The address of `RCPT TO:<Postmaster>` (no domain) as parsed.
pub const BARE_POSTMASTER: &str = "postmaster";

fn parse_rcpt(rest: &str) -> Result<Command, Reply> {
    let v = after_keyword(rest, "TO").ok_or_else(|| syntax("Syntax: RCPT TO:<address>"))?;
    // `<Postmaster>` without a domain is always a legal recipient
    // (RFC 5321 §4.1.1.3); it names this host's postmaster. The session
    // gives it the primary domain.
    let bare_postmaster = v
        .get(..12)
        .is_some_and(|p| p.eq_ignore_ascii_case("<postmaster>"));
    let (address, params) = if bare_postmaster {
        (
            BARE_POSTMASTER.to_string(),
            params_after(&v[12..]).map_err(|e| e.reply("recipient"))?,
        )
    } else {
        parse_path(v, false).map_err(|e| e.reply("recipient"))?
    };
    let mut rcpt = RcptTo {
        address,
        notify: 0,
        orcpt: None,
    };
    for p in params.split(' ').filter(|p| !p.is_empty()) {
        let (k, val) = match p.split_once('=') {
            Some((k, v)) => (k.to_ascii_uppercase(), Some(v)),
            None => (p.to_ascii_uppercase(), None),
        };
        match (k.as_str(), val) {
            ("NOTIFY", Some(list)) if rcpt.notify == 0 => {
                for item in list.split(',') {
                    rcpt.notify |= match item.to_ascii_uppercase().as_str() {
                        "NEVER" => notify::NEVER,
                        "SUCCESS" => notify::SUCCESS,
                        "FAILURE" => notify::FAILURE,
                        "DELAY" => notify::DELAY,
                        _ => return Err(Reply::new(501, "5.5.4", "Bad NOTIFY parameter")),
                    };
                }
                // RFC 3461 §4.1: NEVER stands alone.
                if rcpt.notify & notify::NEVER != 0 && rcpt.notify != notify::NEVER {
                    return Err(Reply::new(
                        501,
                        "5.5.4",
                        "Bad NOTIFY parameter: NEVER with other values",
                    ));
                }
            }
            ("ORCPT", Some(o)) if rcpt.orcpt.is_none() => {
                let (kind, addr) = o
                    .split_once(';')
                    .ok_or_else(|| Reply::new(501, "5.5.4", "Bad ORCPT parameter"))?;
                if !kind.eq_ignore_ascii_case("rfc822") && !kind.eq_ignore_ascii_case("utf-8") {
                    return Err(Reply::new(
                        501,
                        "5.5.4",
                        "Bad ORCPT parameter: unknown address type",
                    ));
                }
                rcpt.orcpt = Some(
                    xtext_decode(addr)
                        .ok_or_else(|| Reply::new(501, "5.5.4", "Bad ORCPT parameter"))?,
                );
            }
            _ => return Err(Reply::new(555, "5.5.4", format!("Unsupported option: {p}"))),
        }
    }
    Ok(Command::Rcpt(rcpt))
}

/// What is wrong with an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// Not of the RFC 5321 path grammar.
    Syntax(&'static str),
}

impl AddressError {
    fn reply(&self, role: &str) -> Reply {
        let AddressError::Syntax(why) = self;
        let status = if role == "sender" { "5.1.7" } else { "5.1.3" };
        Reply::new(501, status, format!("Bad {role} address syntax: {why}"))
    }
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// Parses `<path>` at the start of `s` and returns the mailbox (local part
/// as written, domain in lower case; empty for `<>` where allowed) and the
/// rest of the line (the parameters).
pub fn parse_path(s: &str, allow_null: bool) -> Result<(String, &str), AddressError> {
    let inner = s.strip_prefix('<').ok_or(AddressError::Syntax(
        "the address must be in angle brackets",
    ))?;
    if let Some(rest) = inner.strip_prefix('>') {
        return if allow_null {
            Ok((String::new(), params_after(rest)?))
        } else {
            Err(AddressError::Syntax("empty address"))
        };
    }
    let mut rest = inner;
    // A source route (RFC 5321 §4.1.2 A-d-l) is accepted and ignored
    // (RFC 5321 appendix C).
    if rest.starts_with('@') {
        let colon = rest
            .find(':')
            .ok_or(AddressError::Syntax("source route without ':'"))?;
        for hop in rest[..colon].split(',') {
            let d = hop
                .strip_prefix('@')
                .ok_or(AddressError::Syntax("bad source route"))?;
            parse_domain(d)?;
        }
        rest = &rest[colon + 1..];
    }
    let (local, after_local) = parse_local_part(rest)?;
    let after_at = after_local
        .strip_prefix('@')
        .ok_or(AddressError::Syntax("missing '@domain'"))?;
    let end = after_at
        .find('>')
        .ok_or(AddressError::Syntax("missing '>'"))?;
    let domain = parse_domain(&after_at[..end])?;
    let params = params_after(&after_at[end + 1..])?;
    if local.len() > 64 {
        return Err(AddressError::Syntax("local part longer than 64 octets"));
    }
    Ok((format!("{local}@{domain}"), params))
}

fn params_after(rest: &str) -> Result<&str, AddressError> {
    if rest.is_empty() {
        Ok("")
    } else if let Some(p) = rest.strip_prefix(' ') {
        Ok(p)
    } else {
        Err(AddressError::Syntax("unexpected text after '>'"))
    }
}

/// Reads a Dot-string or Quoted-string local part; returns it as written
/// and what follows.
fn parse_local_part(s: &str) -> Result<(&str, &str), AddressError> {
    if let Some(q) = s.strip_prefix('"') {
        let mut escaped = false;
        for (i, c) in q.char_indices() {
            if escaped {
                if !(' '..='~').contains(&c) {
                    return Err(AddressError::Syntax("bad quoted pair"));
                }
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                let end = i + 2; // the opening quote plus the closing quote
                return Ok((&s[..end], &s[end..]));
            } else if c.is_control() {
                return Err(AddressError::Syntax(
                    "control character in quoted local part",
                ));
            }
        }
        return Err(AddressError::Syntax("unbalanced quotes"));
    }
    let end = s
        .find(|c: char| !(is_atext(c) || c == '.'))
        .unwrap_or(s.len());
    let local = &s[..end];
    if local.is_empty() {
        return Err(AddressError::Syntax("empty local part"));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(AddressError::Syntax("misplaced '.' in local part"));
    }
    Ok((local, &s[end..]))
}

/// Checks a domain or address literal; returns it in lower case without a
/// trailing dot.
fn parse_domain(d: &str) -> Result<String, AddressError> {
    if let Some(lit) = d.strip_prefix('[') {
        let inner = lit
            .strip_suffix(']')
            .ok_or(AddressError::Syntax("unbalanced '[' in address literal"))?;
        let ok = match inner
            .strip_prefix("IPv6:")
            .or_else(|| inner.strip_prefix("ipv6:"))
        {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => inner.parse::<std::net::Ipv4Addr>().is_ok(),
        };
        return if ok {
            Ok(d.to_ascii_lowercase().replace("[ipv6:", "[IPv6:"))
        } else {
            Err(AddressError::Syntax("bad address literal"))
        };
    }
    let d = d.strip_suffix('.').unwrap_or(d);
    if d.is_empty() || d.len() > 255 {
        return Err(AddressError::Syntax("bad domain"));
    }
    for label in d.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii());
        if !ok {
            return Err(AddressError::Syntax("bad domain"));
        }
    }
    Ok(d.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(s: &str) -> Result<Command, Reply> {
        parse(s.as_bytes())
    }

    #[test]
    fn commands_parse_case_insensitively() {
        assert_eq!(
            mail("ehlo client.test"),
            Ok(Command::Ehlo("client.test".into()))
        );
        assert_eq!(mail("QuIt"), Ok(Command::Quit));
        assert_eq!(mail("NOOP whatever"), Ok(Command::Noop));
        assert_eq!(mail("FOO").unwrap_err().code, 500);
        assert_eq!(mail("DATA now").unwrap_err().code, 501);
        assert_eq!(mail("EHLO").unwrap_err().code, 501);
        assert_eq!(
            mail("BDAT 10 LAST"),
            Ok(Command::NotImplemented("BDAT".into()))
        );
    }

    #[test]
    fn mail_from_with_params() {
        match mail("MAIL FROM:<Alice@Example.TEST> SIZE=1000 BODY=8BITMIME") {
            Ok(Command::Mail(m)) => {
                assert_eq!(m.address, "Alice@example.test");
                assert_eq!(m.size, Some(1000));
                assert!(m.body_8bit);
            }
            other => panic!("{other:?}"),
        }
        match mail("MAIL FROM:<>") {
            Ok(Command::Mail(m)) => assert_eq!(m.address, ""),
            other => panic!("{other:?}"),
        }
        assert_eq!(mail("MAIL FROM:<a@b.test> FOO=1").unwrap_err().code, 555);
        assert_eq!(mail("MAIL FROM:<a@b.test> SIZE=x").unwrap_err().code, 501);
    }

    #[test]
    fn malformed_addresses_get_501() {
        for bad in [
            "RCPT TO:bob@example.test",
            "RCPT TO:<bob@@example.test>",
            "RCPT TO:<bob@example.test>>",
            "RCPT TO:<\"bob@example.test>",
            "RCPT TO:<bob@example.test",
            "RCPT TO:<>",
            "RCPT TO:<bob>",
            "RCPT TO:<.bob@example.test>",
            "RCPT TO:<bob@[300.1.1.1]>",
            "RCPT TO:<bob@-bad.test>",
        ] {
            let r = mail(bad).expect_err(bad);
            assert_eq!(r.code, 501, "{bad}: {r}");
        }
    }

    #[test]
    fn source_routes_quotes_and_literals() {
        assert_eq!(
            mail("RCPT TO:<@relay.test:user@Other.Test>"),
            Ok(Command::Rcpt(RcptTo {
                address: "user@other.test".into(),
                notify: 0,
                orcpt: None,
            }))
        );
        assert_eq!(
            mail("RCPT TO:<\"user@other.test\"@example.test>"),
            Ok(Command::Rcpt(RcptTo {
                address: "\"user@other.test\"@example.test".into(),
                notify: 0,
                orcpt: None,
            }))
        );
        assert_eq!(
            mail("RCPT TO:<user@[192.0.2.1]>"),
            Ok(Command::Rcpt(RcptTo {
                address: "user@[192.0.2.1]".into(),
                notify: 0,
                orcpt: None,
            }))
        );
        assert_eq!(
            mail("RCPT TO:<user@example.test.>"),
            Ok(Command::Rcpt(RcptTo {
                address: "user@example.test".into(),
                notify: 0,
                orcpt: None,
            }))
        );
    }

    #[test]
    fn dsn_parameters_parse() {
        match mail("MAIL FROM:<a@b.test> RET=HDRS ENVID=QQ+2B314") {
            Ok(Command::Mail(m)) => {
                assert_eq!(m.ret, Some(Ret::Hdrs));
                assert_eq!(m.envid.as_deref(), Some("QQ+314"));
            }
            other => panic!("{other:?}"),
        }
        match mail("RCPT TO:<c@d.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;orig+2Bx@d.test") {
            Ok(Command::Rcpt(r)) => {
                assert_eq!(r.notify, notify::SUCCESS | notify::DELAY);
                assert_eq!(r.orcpt.as_deref(), Some("orig+x@d.test"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            mail("RCPT TO:<c@d.test> NOTIFY=NEVER,SUCCESS")
                .unwrap_err()
                .code,
            501
        );
        assert_eq!(
            mail("RCPT TO:<c@d.test> NOTIFY=SOMETIMES")
                .unwrap_err()
                .code,
            501
        );
        assert_eq!(mail("MAIL FROM:<a@b.test> RET=ALL").unwrap_err().code, 501);
        assert_eq!(xtext_encode("a+b=c d"), "a+2Bb+3Dc+20d");
    }

    #[test]
    fn non_ascii_needs_smtputf8() {
        assert_eq!(mail("MAIL FROM:<jörg@example.test>").unwrap_err().code, 553);
        assert!(matches!(
            mail("MAIL FROM:<jörg@example.test> SMTPUTF8"),
            Ok(Command::Mail(_))
        ));
    }

    #[test]
    fn nul_and_invalid_utf8_are_refused() {
        assert_eq!(parse(b"NOOP \0").unwrap_err().code, 500);
        assert_eq!(parse(b"NOOP \xff").unwrap_err().code, 500);
    }
}

//! `petrel sendmail` (and a link named `sendmail`): the message on stdin is
//! queued through the daemon, or straight into the spool when no daemon
//! runs (the daemon delivers it when it starts). Options as sendmail(1):
//! `-t`, `-i`/`-oi`, `-f SENDER`, `-F NAME`; other `-o`/`-b` options are
//! accepted and ignored as Postfix does. Exit codes are sysexits(3).

use std::io::Read;

use super::{RequestError, request};
use crate::config::Config;
use crate::control::{Item, Request};
use crate::headers;
use crate::smtp::command::parse_path;

/// Command line usage error.
pub const EX_USAGE: i32 = 64;
/// Input data was incorrect (a bad address, a message too large).
pub const EX_DATAERR: i32 = 65;
/// Addressee unknown.
pub const EX_NOUSER: i32 = 67;
/// Internal software error.
pub const EX_SOFTWARE: i32 = 70;
/// Temporary failure: the spool could not take the message; try later.
pub const EX_TEMPFAIL: i32 = 75;
/// Configuration error.
pub const EX_CONFIG: i32 = 78;

#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    from_headers: bool,
    ignore_dots: bool,
    sender: Option<String>,
    full_name: Option<String>,
    recipients: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    let mut options_done = false;
    while let Some(a) = it.next() {
        if options_done || !a.starts_with('-') || a == "-" {
            o.recipients.push(a.clone());
            continue;
        }
        match a.as_str() {
            "--" => options_done = true,
            "-t" => o.from_headers = true,
            "-i" | "-oi" => o.ignore_dots = true,
            "-f" | "-r" => o.sender = Some(it.next().ok_or("-f needs an address")?.clone()),
            "-F" => o.full_name = Some(it.next().ok_or("-F needs a name")?.clone()),
            "-bm" | "-v" | "-odi" | "-odb" | "-oem" | "-oee" | "-om" | "-U" | "-n" => {}
            "-o" | "-O" | "-B" | "-C" | "-N" | "-R" | "-V" | "-X" | "-L" => {
                it.next();
            }
            s if s.starts_with("-f") || s.starts_with("-r") => o.sender = Some(s[2..].to_string()),
            s if s.starts_with("-F") => o.full_name = Some(s[2..].to_string()),
            s if s.starts_with("-o")
                || s.starts_with("-B")
                || s.starts_with("-N")
                || s.starts_with("-R")
                || s.starts_with("-V") => {}
            s if s.starts_with("-b") => {
                return Err(format!(
                    "mode {s} is not supported; only -bm (deliver mail)"
                ));
            }
            s => return Err(format!("unknown option {s}")),
        }
    }
    Ok(o)
}

/// Reads the message: LF or CRLF line ends become CRLF; without `-i` a line
/// of a single "." ends the input; a leading mbox `From ` line is dropped.
fn read_message(input: &[u8], ignore_dots: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 40);
    for (n, raw) in input.split(|&b| b == b'\n').enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if n == 0 && line.starts_with(b"From ") {
            continue;
        }
        if !ignore_dots && line == b"." {
            return out;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    // The split yields an empty last piece after a final newline.
    if input.ends_with(b"\n") || input.is_empty() {
        out.truncate(out.len().saturating_sub(2));
    }
    out
}

/// Adds an address's domain when it has none.
fn qualify(addr: &str, domain: &str) -> String {
    let a = addr.trim().trim_start_matches('<').trim_end_matches('>');
    if a.contains('@') {
        a.to_string()
    } else {
        format!("{a}@{domain}")
    }
}

fn login_name() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| {
            !u.is_empty()
                && u.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        })
        .unwrap_or_else(|| "root".into())
}

/// Removes a header field (all of its lines) from the header section.
fn remove_field(content: &[u8], name: &str) -> Vec<u8> {
    let head_len = headers::section(content).len();
    let (head, body) = content.split_at(head_len);
    let mut out = Vec::with_capacity(content.len());
    let mut skipping = false;
    for line in head.split_inclusive(|&b| b == b'\n') {
        let continuation = line.starts_with(b" ") || line.starts_with(b"\t");
        if !continuation {
            let n = line.iter().position(|&b| b == b':').map(|i| &line[..i]);
            skipping = n.is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes()));
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(body);
    out
}

/// Recipients named in To, Cc and Bcc.
fn header_recipients(content: &[u8]) -> Vec<String> {
    let head = headers::section(content);
    let Some(msg) = mail_parser::MessageParser::default().parse_headers(head) else {
        return Vec::new();
    };
    [msg.to(), msg.cc(), msg.bcc()]
        .into_iter()
        .flatten()
        .flat_map(|a| {
            a.iter()
                .filter_map(|x| x.address().map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Runs `sendmail`; returns a sysexits status.
pub fn run(config: &Config, args: &[String]) -> i32 {
    let opts = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sendmail: {e}");
            return EX_USAGE;
        }
    };
    let domain = config.domains.primary.clone();
    let max = config.inbound.max_message_size;
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin()
        .take(max.saturating_mul(2) + 1)
        .read_to_end(&mut input)
    {
        eprintln!("sendmail: cannot read the message: {e}");
        return EX_SOFTWARE;
    }
    let mut content = read_message(&input, opts.ignore_dots);
    drop(input);

    let mut recipients: Vec<String> = opts
        .recipients
        .iter()
        .flat_map(|r| r.split(','))
        .map(|r| qualify(r, &domain))
        .collect();
    if opts.from_headers {
        recipients.extend(
            header_recipients(&content)
                .iter()
                .map(|r| qualify(r, &domain)),
        );
        content = remove_field(&content, "Bcc");
    }
    recipients.retain(|r| r != &format!("@{domain}"));
    if recipients.is_empty() {
        eprintln!("sendmail: no recipients given (name them, or use -t)");
        return EX_USAGE;
    }
    let sender = match &opts.sender {
        Some(s) if s.is_empty() || s == "<>" => String::new(),
        Some(s) => qualify(s, &domain),
        None => qualify(&login_name(), &domain),
    };
    for a in std::iter::once(&sender)
        .filter(|s| !s.is_empty())
        .chain(recipients.iter())
    {
        if let Err(e) = parse_path(&format!("<{a}>"), false) {
            eprintln!("sendmail: bad address {a:?}: {e:?}");
            return EX_DATAERR;
        }
    }
    for r in &recipients {
        let local = r
            .rsplit_once('@')
            .is_some_and(|(_, d)| config.domains.is_local(d));
        if local && config.directory.expand(r, &config.domains).is_empty() {
            eprintln!("sendmail: {r}: user unknown");
            return EX_NOUSER;
        }
    }
    content = add_missing_headers(
        content,
        &sender,
        opts.full_name.as_deref(),
        &config.server.hostname,
    );
    content = add_received(content, &config.server.hostname, &recipients);
    if content.len() as u64 > max {
        eprintln!("sendmail: message is larger than the {max}-octet limit");
        return EX_DATAERR;
    }
    let req = Request::Submit {
        sender,
        recipients,
        content_length: content.len() as u64,
    };
    match request(config, req, content, |_item: Item| {}) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("sendmail: {e}");
            match e {
                RequestError::NoSpool(_) => EX_CONFIG,
                RequestError::Temporary(_) => EX_TEMPFAIL,
                // The daemon refused the message: a spool that cannot
                // store it now (disk full, I/O) is temporary.
                RequestError::Failed(m) if m.contains("spool") => EX_TEMPFAIL,
                RequestError::Failed(_) => EX_SOFTWARE,
            }
        }
    }
}

/// Prepends the trace field of a local submission (RFC 5321 §4.4, as
/// Postfix's pickup writes it): who submitted it, where, and when. Without
/// it a locally submitted message carries no trace of this host, and its
/// hop count misses one.
fn add_received(content: Vec<u8>, hostname: &str, recipients: &[String]) -> Vec<u8> {
    // SAFETY: getuid has no preconditions and cannot fail (POSIX).
    let uid = unsafe { libc::getuid() };
    let for_clause = match recipients {
        [one] => format!("\r\n\tfor <{one}>"),
        _ => String::new(),
    };
    let field = format!(
        "Received: by {hostname} (petrel, from userid {uid}){for_clause};\r\n\t{}\r\n",
        chrono::Local::now().to_rfc2822()
    );
    let mut out = Vec::with_capacity(field.len() + content.len());
    out.extend_from_slice(field.as_bytes());
    if headers::section(&content).is_empty() && !content.starts_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&content);
    out
}

/// Adds `From:`, `Date:` and `Message-ID:` where missing (RFC 5322 §3.6
/// requires From and Date; RFC 6409 §8 lets a submission server add them).
fn add_missing_headers(
    content: Vec<u8>,
    sender: &str,
    full_name: Option<&str>,
    hostname: &str,
) -> Vec<u8> {
    let has = |n: &str| headers::first(&content, n).is_some();
    let mut extra = String::new();
    if !has("From") && !sender.is_empty() {
        match full_name {
            Some(n) => extra.push_str(&format!("From: \"{}\" <{sender}>\r\n", n.replace('"', ""))),
            None => extra.push_str(&format!("From: {sender}\r\n")),
        }
    }
    if !has("Date") {
        extra.push_str(&format!("Date: {}\r\n", chrono::Local::now().to_rfc2822()));
    }
    if !has("Message-ID") {
        let unique = format!(
            "{:x}.{:x}",
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0),
            std::process::id()
        );
        extra.push_str(&format!("Message-ID: <{unique}@{hostname}>\r\n"));
    }
    if extra.is_empty() {
        return content;
    }
    // A message with no header section gets the empty line that ends one.
    let no_headers = headers::section(&content).is_empty();
    let mut out = extra.into_bytes();
    if no_headers && !content.starts_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_parse_like_sendmail() {
        let o = parse_args(&args(&[
            "-oi",
            "-t",
            "-fbob@example.test",
            "-F",
            "Bob",
            "carol",
            "--",
            "-odd",
        ]))
        .expect("valid");
        assert!(o.ignore_dots && o.from_headers);
        assert_eq!(o.sender.as_deref(), Some("bob@example.test"));
        assert_eq!(o.full_name.as_deref(), Some("Bob"));
        assert_eq!(o.recipients, vec!["carol", "-odd"]);
        assert!(parse_args(&args(&["-bd"])).is_err());
        assert!(parse_args(&args(&["-Z"])).is_err());
    }

    #[test]
    fn dot_ends_input_unless_i() {
        assert_eq!(read_message(b"a\n.\nb\n", false), b"a\r\n");
        assert_eq!(read_message(b"a\n.\nb\n", true), b"a\r\n.\r\nb\r\n");
        assert_eq!(read_message(b"From x\nS: y\r\n", true), b"S: y\r\n");
    }

    #[test]
    fn bcc_is_removed_and_read() {
        let m = b"To: a@x.test\r\nBcc: b@y.test,\r\n c@z.test\r\nSubject: s\r\n\r\nBcc: body\r\n";
        assert_eq!(
            header_recipients(m),
            vec!["a@x.test", "b@y.test", "c@z.test"]
        );
        assert_eq!(
            remove_field(m, "bcc"),
            b"To: a@x.test\r\nSubject: s\r\n\r\nBcc: body\r\n"
        );
    }
}

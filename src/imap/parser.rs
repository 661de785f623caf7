//! The IMAP command grammar (RFC 9051 §9, RFC 3501 §9, with the
//! extensions petrel announces): a recursive-descent parser over one
//! complete command as it came off the wire — the line, and each literal
//! (`{n}` / `{n+}` CRLF, then n octets) inline where the client sent it.
//! `reader` has already collected the literals, so parsing never waits.
//!
//! Errors are text for a `BAD` reply; nothing here panics on input.

use super::search::SearchKey;

/// A parse failure: the text of the `BAD` reply.
pub type Bad = String;
type R<T> = Result<T, Bad>;

/// `*` in a sequence set: the largest number in use.
pub const STAR: u32 = u32::MAX;

/// `$` (RFC 5182 SEARCHRES): the result the last `SEARCH RETURN (SAVE)`
/// kept; a set holding only `(SAVED, SAVED)` stands for it.
pub const SAVED: u32 = 0;

/// A sequence set (RFC 9051 §9 `sequence-set`): ranges, inclusive, with
/// `STAR` for `*`, as written (not yet resolved or sorted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqSet(pub Vec<(u32, u32)>);

impl SeqSet {
    /// Whether this is `$`.
    pub fn is_saved(&self) -> bool {
        self.0 == [(SAVED, SAVED)]
    }

    /// Whether `n` is in the set, `*` standing for `max`.
    pub fn contains(&self, n: u32, max: u32) -> bool {
        self.0.iter().any(|&(a, b)| {
            let (a, b) = (resolve(a, max), resolve(b, max));
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            (lo..=hi).contains(&n)
        })
    }
}

fn resolve(n: u32, max: u32) -> u32 {
    if n == STAR { max } else { n }
}

/// `BODY[section]`'s section (RFC 9051 §6.4.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Part numbers, outermost first (`1.2` → `[1, 2]`).
    pub path: Vec<u32>,
    /// What of that part.
    pub spec: SectionSpec,
}

/// The text after the part numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionSpec {
    /// Nothing: the whole part (or message).
    Full,
    /// `HEADER`.
    Header,
    /// `HEADER.FIELDS (…)` (`not`: `HEADER.FIELDS.NOT`).
    Fields {
        /// Field names as given.
        names: Vec<String>,
        /// `.NOT`.
        not: bool,
    },
    /// `TEXT`.
    Text,
    /// `MIME`.
    Mime,
}

impl Section {
    /// The section as it goes back in the response (`1.HEADER.FIELDS (TO)`).
    pub fn render(&self) -> String {
        let mut s: Vec<String> = self.path.iter().map(u32::to_string).collect();
        let spec = match &self.spec {
            SectionSpec::Full => None,
            SectionSpec::Header => Some("HEADER".to_string()),
            SectionSpec::Text => Some("TEXT".to_string()),
            SectionSpec::Mime => Some("MIME".to_string()),
            SectionSpec::Fields { names, not } => Some(format!(
                "HEADER.FIELDS{} ({})",
                if *not { ".NOT" } else { "" },
                names.join(" ")
            )),
        };
        s.extend(spec);
        s.join(".")
    }
}

/// One FETCH data item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchItem {
    /// `UID`.
    Uid,
    /// `FLAGS`.
    Flags,
    /// `INTERNALDATE`.
    InternalDate,
    /// `RFC822.SIZE`.
    Size,
    /// `ENVELOPE`.
    Envelope,
    /// `BODYSTRUCTURE`.
    BodyStructure,
    /// `BODY` (the structure without extension data).
    Body,
    /// `MODSEQ` (RFC 7162).
    Modseq,
    /// `BODY[…]`, `BODY.PEEK[…]`, `RFC822`, `RFC822.HEADER`, `RFC822.TEXT`.
    Section {
        /// The name in the response: `BODY` or one of the RFC822 forms.
        name: &'static str,
        /// Leaves `\Seen` alone.
        peek: bool,
        /// Which octets.
        section: Section,
        /// `<origin.count>`.
        partial: Option<(u32, u32)>,
    },
    /// `BINARY[…]` / `BINARY.PEEK[…]` (RFC 3516): the part decoded.
    Binary {
        /// Leaves `\Seen` alone.
        peek: bool,
        /// Part numbers.
        path: Vec<u32>,
        /// `<origin.count>`.
        partial: Option<(u32, u32)>,
    },
    /// `BINARY.SIZE[…]`.
    BinarySize(Vec<u32>),
}

/// The RFC 7162 / RFC 5162 SELECT parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qresync {
    /// The UIDVALIDITY the client knew.
    pub uid_validity: u32,
    /// The MODSEQ it knew.
    pub modseq: u64,
    /// The UIDs it knows, if given.
    pub known: Option<SeqSet>,
}

/// `STORE`'s operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    /// `FLAGS`.
    Replace,
    /// `+FLAGS`.
    Add,
    /// `-FLAGS`.
    Remove,
}

/// `STATUS` items (RFC 9051 §6.3.11, RFC 7162, RFC 8438).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusItem {
    /// `MESSAGES`.
    Messages,
    /// `UIDNEXT`.
    UidNext,
    /// `UIDVALIDITY`.
    UidValidity,
    /// `UNSEEN`.
    Unseen,
    /// `RECENT` (IMAP4rev1 only; always 0 here).
    Recent,
    /// `DELETED`.
    Deleted,
    /// `SIZE`.
    Size,
    /// `HIGHESTMODSEQ`.
    HighestModseq,
}

/// What `LIST … RETURN (…)` asked for (RFC 5258, RFC 5819, RFC 6154).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListReturn {
    /// `SUBSCRIBED`.
    pub subscribed: bool,
    /// `CHILDREN`.
    pub children: bool,
    /// `SPECIAL-USE`.
    pub special_use: bool,
    /// `STATUS (…)`.
    pub status: Option<Vec<StatusItem>>,
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Capability,
    Noop,
    Logout,
    StartTls,
    Authenticate {
        mechanism: String,
        initial: Option<Vec<u8>>,
    },
    Login {
        user: Vec<u8>,
        password: Vec<u8>,
    },
    Enable(Vec<String>),
    Select {
        mailbox: Vec<u8>,
        read_only: bool,
        condstore: bool,
        qresync: Option<Qresync>,
    },
    Create(Vec<u8>),
    Delete(Vec<u8>),
    Rename(Vec<u8>, Vec<u8>),
    Subscribe(Vec<u8>, bool),
    List {
        reference: Vec<u8>,
        patterns: Vec<Vec<u8>>,
        /// `LSUB`, or `LIST (SUBSCRIBED)`.
        subscribed_only: bool,
        lsub: bool,
        ret: ListReturn,
    },
    Namespace,
    Status(Vec<u8>, Vec<StatusItem>),
    Append {
        mailbox: Vec<u8>,
        flags: Vec<String>,
        date: Option<i64>,
        message: Vec<u8>,
    },
    Idle,
    /// `COMPRESS <algorithm>` (RFC 4978), the name upper-cased.
    Compress(String),
    Check,
    Close,
    Unselect,
    Expunge(Option<SeqSet>),
    Search {
        keys: SearchKey,
        /// ESEARCH `RETURN (…)` options, upper-cased; `None`: plain SEARCH.
        ret: Option<Vec<String>>,
    },
    Fetch {
        set: SeqSet,
        items: Vec<FetchItem>,
        changed_since: Option<u64>,
        vanished: bool,
    },
    Store {
        set: SeqSet,
        unchanged_since: Option<u64>,
        op: StoreOp,
        silent: bool,
        flags: Vec<String>,
    },
    Copy {
        set: SeqSet,
        mailbox: Vec<u8>,
        move_: bool,
    },
    Id,
    GetQuota(Vec<u8>),
    GetQuotaRoot(Vec<u8>),
    SetQuota,
}

/// A command with its tag and whether it came as `UID …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    pub tag: String,
    pub uid: bool,
    pub command: Command,
}

/// The tag of a line, for a `BAD` reply to a line that does not parse;
/// `*` when there is none.
pub fn tag_of(line: &[u8]) -> String {
    let end = line
        .iter()
        .position(|&b| b == b' ' || b == b'\r' || b == b'\n')
        .unwrap_or(line.len());
    let t = &line[..end];
    if t.is_empty() || !t.iter().all(|&b| is_tag_char(b)) {
        "*".into()
    } else {
        String::from_utf8_lossy(t).into_owned()
    }
}

fn is_atom_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !b"(){%*\"\\]".contains(&b)
}

fn is_tag_char(b: u8) -> bool {
    is_atom_char(b) && b != b'+'
}

/// Parses one complete command.
pub fn parse(input: &[u8]) -> Result<Tagged, (String, Bad)> {
    let tag = tag_of(input);
    let mut p = Parser { b: input, pos: 0 };
    parse_tagged(&mut p).map_err(|e| (tag, e))
}

fn parse_tagged(p: &mut Parser<'_>) -> R<Tagged> {
    let tag = p.take_while(is_tag_char);
    if tag.is_empty() {
        return Err("missing tag".into());
    }
    let tag = String::from_utf8_lossy(tag).into_owned();
    p.sp()?;
    let mut verb = p.word()?;
    let mut uid = false;
    if verb == "UID" {
        p.sp()?;
        uid = true;
        verb = p.word()?;
        if !matches!(
            verb.as_str(),
            "FETCH" | "STORE" | "SEARCH" | "COPY" | "MOVE" | "EXPUNGE"
        ) {
            return Err(format!("UID {verb} is not a command"));
        }
    }
    let command = command(p, &verb, uid)?;
    p.end()?;
    Ok(Tagged { tag, uid, command })
}

fn command(p: &mut Parser<'_>, verb: &str, uid: bool) -> R<Command> {
    Ok(match verb {
        "CAPABILITY" => Command::Capability,
        "NOOP" => Command::Noop,
        "LOGOUT" => Command::Logout,
        "STARTTLS" => Command::StartTls,
        "CHECK" => Command::Check,
        "CLOSE" => Command::Close,
        "UNSELECT" => Command::Unselect,
        "IDLE" => Command::Idle,
        "COMPRESS" => {
            p.sp()?;
            Command::Compress(p.word()?)
        }
        "NAMESPACE" => Command::Namespace,
        "ID" => {
            // RFC 2971: `ID NIL` or a list of pairs; the client's values
            // are not used.
            p.sp()?;
            if p.eat_word("NIL") {
            } else {
                p.skip_list()?;
            }
            Command::Id
        }
        "AUTHENTICATE" => {
            p.sp()?;
            let mechanism = p.word()?;
            let initial = if p.peek() == Some(b' ') {
                p.sp()?;
                Some(
                    p.take_while(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
                        .to_vec(),
                )
            } else {
                None
            };
            Command::Authenticate { mechanism, initial }
        }
        "LOGIN" => {
            p.sp()?;
            let user = p.astring()?;
            p.sp()?;
            let password = p.astring()?;
            Command::Login { user, password }
        }
        "ENABLE" => {
            let mut caps = Vec::new();
            while p.peek() == Some(b' ') {
                p.sp()?;
                caps.push(p.word()?);
            }
            if caps.is_empty() {
                return Err("ENABLE needs a capability".into());
            }
            Command::Enable(caps)
        }
        "SELECT" | "EXAMINE" => {
            p.sp()?;
            let mailbox = p.astring()?;
            let (mut condstore, mut qresync) = (false, None);
            if p.peek() == Some(b' ') {
                p.sp()?;
                p.expect(b'(')?;
                loop {
                    let w = p.word()?;
                    match w.as_str() {
                        "CONDSTORE" => condstore = true,
                        "QRESYNC" => {
                            p.sp()?;
                            p.expect(b'(')?;
                            let uid_validity = p.nz_number()?;
                            p.sp()?;
                            let modseq = p.number64()?;
                            let mut known = None;
                            if p.peek() == Some(b' ') {
                                p.sp()?;
                                if p.peek() == Some(b'(') {
                                    p.skip_list()?;
                                } else {
                                    known = Some(p.seq_set()?);
                                    if p.peek() == Some(b' ') {
                                        p.sp()?;
                                        p.skip_list()?;
                                    }
                                }
                            }
                            p.expect(b')')?;
                            qresync = Some(Qresync {
                                uid_validity,
                                modseq,
                                known,
                            });
                        }
                        other => return Err(format!("unknown SELECT parameter {other}")),
                    }
                    if p.peek() == Some(b')') {
                        p.pos += 1;
                        break;
                    }
                    p.sp()?;
                }
            }
            Command::Select {
                mailbox,
                read_only: verb == "EXAMINE",
                condstore,
                qresync,
            }
        }
        "CREATE" => {
            p.sp()?;
            let m = p.astring()?;
            if p.peek() == Some(b' ') {
                // RFC 4466 create parameters (USE (…)): accepted, unused.
                p.sp()?;
                p.skip_list()?;
            }
            Command::Create(m)
        }
        "DELETE" => {
            p.sp()?;
            Command::Delete(p.astring()?)
        }
        "RENAME" => {
            p.sp()?;
            let a = p.astring()?;
            p.sp()?;
            Command::Rename(a, p.astring()?)
        }
        "SUBSCRIBE" | "UNSUBSCRIBE" => {
            p.sp()?;
            Command::Subscribe(p.astring()?, verb == "SUBSCRIBE")
        }
        "LIST" | "LSUB" => list(p, verb == "LSUB")?,
        "STATUS" => {
            p.sp()?;
            let m = p.astring()?;
            p.sp()?;
            Command::Status(m, status_items(p)?)
        }
        "APPEND" => {
            p.sp()?;
            let mailbox = p.astring()?;
            p.sp()?;
            let mut flags = Vec::new();
            if p.peek() == Some(b'(') {
                flags = p.flag_list()?;
                p.sp()?;
            }
            let mut date = None;
            if p.peek() == Some(b'"') {
                let d = p.quoted()?;
                date = Some(date_time(&d).ok_or("bad date-time")?);
                p.sp()?;
            }
            // RFC 3516 `~{n}` literal8.
            if p.peek() == Some(b'~') {
                p.pos += 1;
            }
            let message = p.literal()?;
            Command::Append {
                mailbox,
                flags,
                date,
                message,
            }
        }
        "EXPUNGE" => {
            if uid {
                p.sp()?;
                Command::Expunge(Some(p.seq_set()?))
            } else {
                Command::Expunge(None)
            }
        }
        "SEARCH" => search(p)?,
        "FETCH" => fetch(p)?,
        "STORE" => store(p)?,
        "COPY" | "MOVE" => {
            p.sp()?;
            let set = p.seq_set()?;
            p.sp()?;
            Command::Copy {
                set,
                mailbox: p.astring()?,
                move_: verb == "MOVE",
            }
        }
        "GETQUOTA" => {
            p.sp()?;
            Command::GetQuota(p.astring()?)
        }
        "GETQUOTAROOT" => {
            p.sp()?;
            Command::GetQuotaRoot(p.astring()?)
        }
        "SETQUOTA" => {
            p.rest();
            Command::SetQuota
        }
        other => return Err(format!("unknown command {other}")),
    })
}

fn list(p: &mut Parser<'_>, lsub: bool) -> R<Command> {
    p.sp()?;
    let mut subscribed_only = lsub;
    let mut ret = ListReturn::default();
    if !lsub && p.peek() == Some(b'(') {
        p.pos += 1;
        while p.peek() != Some(b')') {
            match p.word()?.as_str() {
                "SUBSCRIBED" => {
                    subscribed_only = true;
                    ret.subscribed = true;
                }
                "REMOTE" | "RECURSIVEMATCH" => {}
                "SPECIAL-USE" => ret.special_use = true,
                other => return Err(format!("unknown LIST selection option {other}")),
            }
            if p.peek() == Some(b' ') {
                p.pos += 1;
            }
        }
        p.pos += 1;
        p.sp()?;
    }
    let reference = p.astring()?;
    p.sp()?;
    let mut patterns = Vec::new();
    if !lsub && p.peek() == Some(b'(') {
        p.pos += 1;
        loop {
            patterns.push(p.list_mailbox()?);
            if p.peek() == Some(b')') {
                p.pos += 1;
                break;
            }
            p.sp()?;
        }
    } else {
        patterns.push(p.list_mailbox()?);
    }
    if !lsub && p.peek() == Some(b' ') {
        p.sp()?;
        if !p.eat_word("RETURN") {
            return Err("expected RETURN".into());
        }
        p.sp()?;
        p.expect(b'(')?;
        while p.peek() != Some(b')') {
            match p.word()?.as_str() {
                "SUBSCRIBED" => ret.subscribed = true,
                "CHILDREN" => ret.children = true,
                "SPECIAL-USE" => ret.special_use = true,
                "STATUS" => {
                    p.sp()?;
                    ret.status = Some(status_items(p)?);
                }
                other => return Err(format!("unknown LIST return option {other}")),
            }
            if p.peek() == Some(b' ') {
                p.pos += 1;
            }
        }
        p.pos += 1;
    }
    Ok(Command::List {
        reference,
        patterns,
        subscribed_only,
        lsub,
        ret,
    })
}

fn status_items(p: &mut Parser<'_>) -> R<Vec<StatusItem>> {
    p.expect(b'(')?;
    let mut items = Vec::new();
    loop {
        items.push(match p.word()?.as_str() {
            "MESSAGES" => StatusItem::Messages,
            "UIDNEXT" => StatusItem::UidNext,
            "UIDVALIDITY" => StatusItem::UidValidity,
            "UNSEEN" => StatusItem::Unseen,
            "RECENT" => StatusItem::Recent,
            "DELETED" => StatusItem::Deleted,
            "SIZE" => StatusItem::Size,
            "HIGHESTMODSEQ" => StatusItem::HighestModseq,
            other => return Err(format!("unknown STATUS item {other}")),
        });
        if p.peek() == Some(b')') {
            p.pos += 1;
            return Ok(items);
        }
        p.sp()?;
    }
}

fn search(p: &mut Parser<'_>) -> R<Command> {
    let mut ret = None;
    p.sp()?;
    if p.eat_word("RETURN") {
        p.sp()?;
        p.expect(b'(')?;
        let mut opts = Vec::new();
        while p.peek() != Some(b')') {
            let w = p.word()?;
            if !matches!(w.as_str(), "MIN" | "MAX" | "ALL" | "COUNT" | "SAVE") {
                return Err(format!("unknown SEARCH return option {w}"));
            }
            opts.push(w);
            if p.peek() == Some(b' ') {
                p.pos += 1;
            }
        }
        p.pos += 1;
        p.sp()?;
        ret = Some(opts);
    }
    if p.eat_word("CHARSET") {
        p.sp()?;
        let cs = String::from_utf8_lossy(&p.astring()?).to_ascii_uppercase();
        if cs != "US-ASCII" && cs != "UTF-8" {
            return Err("[BADCHARSET (US-ASCII UTF-8)] unsupported charset".into());
        }
        p.sp()?;
    }
    let mut keys = vec![super::search::parse_key(p)?];
    while p.peek() == Some(b' ') {
        p.sp()?;
        keys.push(super::search::parse_key(p)?);
    }
    let keys = if keys.len() == 1 {
        keys.pop().expect("one key")
    } else {
        SearchKey::And(keys)
    };
    Ok(Command::Search { keys, ret })
}

fn fetch(p: &mut Parser<'_>) -> R<Command> {
    p.sp()?;
    let set = p.seq_set()?;
    p.sp()?;
    let mut items = Vec::new();
    if p.peek() == Some(b'(') {
        p.pos += 1;
        loop {
            items.push(fetch_item(p)?);
            if p.peek() == Some(b')') {
                p.pos += 1;
                break;
            }
            p.sp()?;
        }
    } else {
        let save = p.pos;
        match p.word()?.as_str() {
            "ALL" => items.extend([
                FetchItem::Flags,
                FetchItem::InternalDate,
                FetchItem::Size,
                FetchItem::Envelope,
            ]),
            "FAST" => items.extend([FetchItem::Flags, FetchItem::InternalDate, FetchItem::Size]),
            "FULL" => items.extend([
                FetchItem::Flags,
                FetchItem::InternalDate,
                FetchItem::Size,
                FetchItem::Envelope,
                FetchItem::Body,
            ]),
            _ => {
                p.pos = save;
                items.push(fetch_item(p)?);
            }
        }
    }
    let (mut changed_since, mut vanished) = (None, false);
    if p.peek() == Some(b' ') {
        p.sp()?;
        p.expect(b'(')?;
        loop {
            match p.word()?.as_str() {
                "CHANGEDSINCE" => {
                    p.sp()?;
                    changed_since = Some(p.number64()?);
                }
                "VANISHED" => vanished = true,
                other => return Err(format!("unknown FETCH modifier {other}")),
            }
            if p.peek() == Some(b')') {
                p.pos += 1;
                break;
            }
            p.sp()?;
        }
    }
    Ok(Command::Fetch {
        set,
        items,
        changed_since,
        vanished,
    })
}

fn fetch_item(p: &mut Parser<'_>) -> R<FetchItem> {
    let w = p.take_while(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    let w = String::from_utf8_lossy(w).to_ascii_uppercase();
    let full = |path| Section {
        path,
        spec: SectionSpec::Full,
    };
    Ok(match w.as_str() {
        "UID" => FetchItem::Uid,
        "FLAGS" => FetchItem::Flags,
        "INTERNALDATE" => FetchItem::InternalDate,
        "RFC822.SIZE" => FetchItem::Size,
        "ENVELOPE" => FetchItem::Envelope,
        "BODYSTRUCTURE" => FetchItem::BodyStructure,
        "MODSEQ" => FetchItem::Modseq,
        "RFC822" => FetchItem::Section {
            name: "RFC822",
            peek: false,
            section: full(vec![]),
            partial: None,
        },
        "RFC822.HEADER" => FetchItem::Section {
            name: "RFC822.HEADER",
            peek: true,
            section: Section {
                path: vec![],
                spec: SectionSpec::Header,
            },
            partial: None,
        },
        "RFC822.TEXT" => FetchItem::Section {
            name: "RFC822.TEXT",
            peek: false,
            section: Section {
                path: vec![],
                spec: SectionSpec::Text,
            },
            partial: None,
        },
        "BODY" if p.peek() != Some(b'[') => FetchItem::Body,
        "BODY" | "BODY.PEEK" => {
            let section = section(p)?;
            FetchItem::Section {
                name: "BODY",
                peek: w == "BODY.PEEK",
                section,
                partial: partial(p)?,
            }
        }
        "BINARY" | "BINARY.PEEK" | "BINARY.SIZE" => {
            p.expect(b'[')?;
            let path = part_path(p)?;
            p.expect(b']')?;
            if w == "BINARY.SIZE" {
                FetchItem::BinarySize(path)
            } else {
                FetchItem::Binary {
                    peek: w == "BINARY.PEEK",
                    path,
                    partial: partial(p)?,
                }
            }
        }
        "" => return Err("expected a FETCH item".into()),
        other => return Err(format!("unknown FETCH item {other}")),
    })
}

fn part_path(p: &mut Parser<'_>) -> R<Vec<u32>> {
    let mut path = Vec::new();
    while p.peek().is_some_and(|b| b.is_ascii_digit()) {
        path.push(p.nz_number()?);
        if p.peek() == Some(b'.') {
            p.pos += 1;
        } else {
            break;
        }
    }
    Ok(path)
}

fn section(p: &mut Parser<'_>) -> R<Section> {
    p.expect(b'[')?;
    let path = part_path(p)?;
    let w = p.take_while(|b| b.is_ascii_alphabetic() || b == b'.');
    let w = String::from_utf8_lossy(w).to_ascii_uppercase();
    let spec = match w.as_str() {
        "" => SectionSpec::Full,
        "HEADER" => SectionSpec::Header,
        "TEXT" => SectionSpec::Text,
        "MIME" if !path.is_empty() => SectionSpec::Mime,
        "HEADER.FIELDS" | "HEADER.FIELDS.NOT" => {
            p.sp()?;
            p.expect(b'(')?;
            let mut names = Vec::new();
            loop {
                let n = p.astring()?;
                if n.is_empty() || !n.iter().all(|&b| b > 0x20 && b < 0x7f && b != b':') {
                    return Err("bad header field name".into());
                }
                names.push(String::from_utf8_lossy(&n).to_ascii_uppercase());
                if p.peek() == Some(b')') {
                    p.pos += 1;
                    break;
                }
                p.sp()?;
            }
            SectionSpec::Fields {
                names,
                not: w.ends_with(".NOT"),
            }
        }
        other => return Err(format!("unknown section {other}")),
    };
    p.expect(b']')?;
    Ok(Section { path, spec })
}

fn partial(p: &mut Parser<'_>) -> R<Option<(u32, u32)>> {
    if p.peek() != Some(b'<') {
        return Ok(None);
    }
    p.pos += 1;
    let origin = p.number()?;
    p.expect(b'.')?;
    let count = p.nz_number()?;
    p.expect(b'>')?;
    Ok(Some((origin, count)))
}

fn store(p: &mut Parser<'_>) -> R<Command> {
    p.sp()?;
    let set = p.seq_set()?;
    p.sp()?;
    let mut unchanged_since = None;
    if p.peek() == Some(b'(') {
        p.pos += 1;
        if !p.eat_word("UNCHANGEDSINCE") {
            return Err("unknown STORE modifier".into());
        }
        p.sp()?;
        unchanged_since = Some(p.number64()?);
        p.expect(b')')?;
        p.sp()?;
    }
    let w = p.take_while(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    let w = String::from_utf8_lossy(w).to_ascii_uppercase();
    let (op, rest) = match w.strip_prefix('+') {
        Some(r) => (StoreOp::Add, r),
        None => match w.strip_prefix('-') {
            Some(r) => (StoreOp::Remove, r),
            None => (StoreOp::Replace, w.as_str()),
        },
    };
    let silent = match rest {
        "FLAGS" => false,
        "FLAGS.SILENT" => true,
        _ => return Err("expected FLAGS, +FLAGS or -FLAGS".into()),
    };
    p.sp()?;
    let flags = if p.peek() == Some(b'(') {
        p.flag_list()?
    } else {
        let mut f = vec![p.flag()?];
        while p.peek() == Some(b' ') {
            p.sp()?;
            f.push(p.flag()?);
        }
        f
    };
    Ok(Command::Store {
        set,
        unchanged_since,
        op,
        silent,
        flags,
    })
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];

/// `date` (`1-Feb-2026`) as a day number (days since 1970-01-01).
pub fn date(s: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(s).ok()?;
    let mut it = s.trim().split('-');
    let (d, m, y) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    let month = MONTHS.iter().position(|x| x.eq_ignore_ascii_case(m))? as u32 + 1;
    let day = chrono::NaiveDate::from_ymd_opt(y.parse().ok()?, month, d.trim().parse().ok()?)?;
    Some(
        day.signed_duration_since(chrono::NaiveDate::default())
            .num_days(),
    )
}

/// `date-time` (`" 1-Feb-2026 10:00:00 +0100"`) as Unix seconds.
pub fn date_time(s: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(s).ok()?.trim();
    let mut it = s.split(' ').filter(|w| !w.is_empty());
    let (d, t, z) = (it.next()?, it.next()?, it.next()?);
    let day = date(d.as_bytes())?;
    let mut hms = t.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, se) = (hms.next()??, hms.next()??, hms.next()??);
    if h > 23 || mi > 59 || se > 60 || z.len() != 5 {
        return None;
    }
    let sign = match &z[..1] {
        "+" => 1,
        "-" => -1,
        _ => return None,
    };
    let zh: i64 = z[1..3].parse().ok()?;
    let zm: i64 = z[3..5].parse().ok()?;
    Some(day * 86_400 + h * 3600 + mi * 60 + se - sign * (zh * 3600 + zm * 60))
}

/// A cursor over one command.
pub struct Parser<'a> {
    pub(super) b: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Parser<'a> {
    pub(super) fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        &self.b[start..self.pos]
    }

    fn rest(&mut self) {
        self.pos = self.b.len();
    }

    pub(super) fn expect(&mut self, c: u8) -> R<()> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected {:?}", c as char))
        }
    }

    pub(super) fn sp(&mut self) -> R<()> {
        self.expect(b' ')
    }

    fn end(&mut self) -> R<()> {
        if self.pos == self.b.len() {
            Ok(())
        } else {
            Err("unexpected text at the end of the command".into())
        }
    }

    /// An atom, upper-cased (command names, keywords of the grammar).
    pub(super) fn word(&mut self) -> R<String> {
        let w = self.take_while(|b| is_atom_char(b) && b != b'[');
        if w.is_empty() {
            return Err("expected a word".into());
        }
        Ok(String::from_utf8_lossy(w).to_ascii_uppercase())
    }

    /// Takes `word` if it comes next (case-insensitive), as a whole atom.
    pub(super) fn eat_word(&mut self, word: &str) -> bool {
        let end = self.pos + word.len();
        if self.b.len() >= end
            && self.b[self.pos..end].eq_ignore_ascii_case(word.as_bytes())
            && self.b.get(end).is_none_or(|&b| !is_atom_char(b))
        {
            self.pos = end;
            true
        } else {
            false
        }
    }

    pub(super) fn number(&mut self) -> R<u32> {
        let d = self.take_while(|b| b.is_ascii_digit());
        std::str::from_utf8(d)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "expected a number".to_string())
    }

    fn nz_number(&mut self) -> R<u32> {
        match self.number()? {
            0 => Err("0 is not allowed here".into()),
            n => Ok(n),
        }
    }

    pub(super) fn number64(&mut self) -> R<u64> {
        let d = self.take_while(|b| b.is_ascii_digit());
        std::str::from_utf8(d)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "expected a number".to_string())
    }

    pub(super) fn seq_set(&mut self) -> R<SeqSet> {
        if self.peek() == Some(b'$') {
            self.pos += 1;
            return Ok(SeqSet(vec![(SAVED, SAVED)]));
        }
        let mut ranges = Vec::new();
        loop {
            let a = self.seq_number()?;
            let b = if self.peek() == Some(b':') {
                self.pos += 1;
                self.seq_number()?
            } else {
                a
            };
            ranges.push((a, b));
            if self.peek() == Some(b',') {
                self.pos += 1;
            } else {
                return Ok(SeqSet(ranges));
            }
        }
    }

    fn seq_number(&mut self) -> R<u32> {
        if self.peek() == Some(b'*') {
            self.pos += 1;
            Ok(STAR)
        } else {
            self.nz_number()
        }
    }

    fn quoted(&mut self) -> R<Vec<u8>> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None | Some(b'\r') | Some(b'\n') => return Err("unterminated string".into()),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => out.push(c),
                        _ => return Err("bad escape in string".into()),
                    }
                    self.pos += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn literal(&mut self) -> R<Vec<u8>> {
        self.expect(b'{')?;
        let n = self.number64()? as usize;
        if self.peek() == Some(b'+') || self.peek() == Some(b'-') {
            self.pos += 1;
        }
        self.expect(b'}')?;
        if self.b[self.pos..].starts_with(b"\r\n") {
            self.pos += 2;
        } else if self.peek() == Some(b'\n') {
            self.pos += 1;
        } else {
            return Err("a literal's size must end the line".into());
        }
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            return Err("literal shorter than announced".into());
        };
        let v = self.b[self.pos..end].to_vec();
        self.pos = end;
        Ok(v)
    }

    /// `string`: quoted or literal.
    pub(super) fn string(&mut self) -> R<Vec<u8>> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{') => self.literal(),
            Some(b'~') if self.b.get(self.pos + 1) == Some(&b'{') => {
                self.pos += 1;
                self.literal()
            }
            _ => Err("expected a string".into()),
        }
    }

    /// `astring`: atom (with `]`) or string.
    pub(super) fn astring(&mut self) -> R<Vec<u8>> {
        match self.peek() {
            Some(b'"' | b'{' | b'~') => self.string(),
            _ => {
                let a = self.take_while(|b| is_atom_char(b) || b == b']');
                if a.is_empty() {
                    Err("expected a string or atom".into())
                } else {
                    Ok(a.to_vec())
                }
            }
        }
    }

    /// `list-mailbox`: like astring, with `%` and `*`.
    fn list_mailbox(&mut self) -> R<Vec<u8>> {
        match self.peek() {
            Some(b'"' | b'{') => self.string(),
            _ => {
                let a = self.take_while(|b| is_atom_char(b) || b"]%*".contains(&b));
                if a.is_empty() {
                    Err("expected a mailbox pattern".into())
                } else {
                    Ok(a.to_vec())
                }
            }
        }
    }

    fn flag(&mut self) -> R<String> {
        let start = self.pos;
        if self.peek() == Some(b'\\') {
            self.pos += 1;
        }
        let w = self.take_while(is_atom_char);
        if w.is_empty() {
            return Err("expected a flag".into());
        }
        Ok(String::from_utf8_lossy(&self.b[start..self.pos]).into_owned())
    }

    fn flag_list(&mut self) -> R<Vec<String>> {
        self.expect(b'(')?;
        let mut flags = Vec::new();
        while self.peek() != Some(b')') {
            flags.push(self.flag()?);
            if self.peek() == Some(b' ') {
                self.pos += 1;
            } else if self.peek() != Some(b')') {
                return Err("bad flag list".into());
            }
        }
        self.pos += 1;
        Ok(flags)
    }

    /// Skips a parenthesised list (nested, with strings).
    fn skip_list(&mut self) -> R<()> {
        self.expect(b'(')?;
        let mut depth = 1;
        while depth > 0 {
            match self.peek() {
                None => return Err("unterminated list".into()),
                Some(b'(') => {
                    depth += 1;
                    self.pos += 1;
                }
                Some(b')') => {
                    depth -= 1;
                    self.pos += 1;
                }
                Some(b'"') => {
                    self.quoted()?;
                }
                Some(b'{') => {
                    self.literal()?;
                }
                Some(_) => self.pos += 1,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Tagged {
        parse(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    #[test]
    fn commands() {
        assert_eq!(ok("a1 NOOP").command, Command::Noop);
        assert_eq!(
            ok("a LOGIN alice \"p\\\"w\"").command,
            Command::Login {
                user: b"alice".to_vec(),
                password: b"p\"w".to_vec()
            }
        );
        assert_eq!(
            ok("a LOGIN {5}\r\nalice {2+}\r\npw").command,
            Command::Login {
                user: b"alice".to_vec(),
                password: b"pw".to_vec()
            }
        );
        let t = ok(
            "7 UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From To)]<0.100>) (CHANGEDSINCE 5)",
        );
        assert!(t.uid);
        match t.command {
            Command::Fetch {
                set,
                items,
                changed_since,
                ..
            } => {
                assert_eq!(set, SeqSet(vec![(1, STAR)]));
                assert_eq!(changed_since, Some(5));
                assert_eq!(items.len(), 2);
                match &items[1] {
                    FetchItem::Section {
                        peek,
                        section,
                        partial,
                        ..
                    } => {
                        assert!(*peek);
                        assert_eq!(section.render(), "HEADER.FIELDS (FROM TO)");
                        assert_eq!(*partial, Some((0, 100)));
                    }
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ok("b STORE 1,3:5 (UNCHANGEDSINCE 9) +FLAGS.SILENT (\\Seen $Junk)").command,
            Command::Store {
                op: StoreOp::Add,
                silent: true,
                unchanged_since: Some(9),
                ..
            }
        ));
        assert!(matches!(
            ok("c LIST (SUBSCRIBED) \"\" (INBOX \"Sent\") RETURN (CHILDREN STATUS (MESSAGES))")
                .command,
            Command::List {
                subscribed_only: true,
                ..
            }
        ));
        assert!(matches!(
            ok("d APPEND INBOX (\\Seen) \" 1-Feb-2026 10:00:00 +0100\" {3}\r\nabc").command,
            Command::Append { date: Some(_), .. }
        ));
        assert!(matches!(
            ok("e SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211))").command,
            Command::Select {
                qresync: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn refusals_keep_the_tag() {
        for bad in [
            "a1 FOO",
            "a1 FETCH",
            "a1 FETCH 0 FLAGS",
            "a1 LOGIN {10}\r\nabc",
            "a1 LOGIN \"x",
            "a1 NOOP extra",
            "a1 UID NOOP",
            "a1 SEARCH CHARSET KOI8 ALL",
        ] {
            let e = parse(bad.as_bytes()).unwrap_err();
            assert_eq!(e.0, "a1", "{bad}");
        }
        assert_eq!(parse(b"").unwrap_err().0, "*");
    }

    #[test]
    fn dates() {
        assert_eq!(date(b"1-Jan-1970"), Some(0));
        assert_eq!(date_time(b" 1-Jan-1970 01:00:00 +0100"), Some(0));
        assert_eq!(date(b"31-Feb-2026"), None);
    }

    #[test]
    fn seq_set_contains() {
        let s = SeqSet(vec![(1, 3), (7, STAR)]);
        assert!(s.contains(2, 10) && s.contains(10, 10) && !s.contains(5, 10));
        assert!(SeqSet(vec![(STAR, 4)]).contains(5, 6));
    }
}

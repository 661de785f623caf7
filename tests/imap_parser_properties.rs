//! Property tests (proptest) for the IMAP command parser, sequence sets,
//! dates and modified UTF-7: no input panics, and what is accepted is
//! well-formed. The case count comes from PROPTEST_CASES (default 256);
//! a long run: `tests/interop/fuzz_parsers.sh 600` (both parser suites).

use petrel::imap::mutf7;
use petrel::imap::parser::{self, Command, FetchItem, SAVED, STAR, SeqSet};
use proptest::prelude::*;

/// Lines built from IMAP's own pieces, so the parser gets past the tag and
/// verb and into its argument grammar most of the time.
fn imap_like() -> impl Strategy<Value = Vec<u8>> {
    let verbs = prop_oneof![
        Just("FETCH"),
        Just("UID FETCH"),
        Just("STORE"),
        Just("UID STORE"),
        Just("SEARCH"),
        Just("UID SEARCH"),
        Just("COPY"),
        Just("MOVE"),
        Just("UID EXPUNGE"),
        Just("SELECT"),
        Just("EXAMINE"),
        Just("LIST"),
        Just("LSUB"),
        Just("STATUS"),
        Just("APPEND"),
        Just("LOGIN"),
        Just("AUTHENTICATE"),
        Just("ENABLE"),
        Just("ID"),
        Just("CREATE"),
        Just("RENAME"),
        Just("GETQUOTAROOT"),
        Just("COMPRESS"),
        Just("IDLE"),
    ];
    let token = prop_oneof![
        Just(" ".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("<".to_string()),
        Just(">".to_string()),
        Just("\"".to_string()),
        Just("\\".to_string()),
        Just("*".to_string()),
        Just(":".to_string()),
        Just(",".to_string()),
        Just("$".to_string()),
        Just(".".to_string()),
        Just("{3}\r\nabc".to_string()),
        Just("{0+}\r\n".to_string()),
        Just("~{4}\r\n\0\x01\r\n".to_string()),
        Just("{99999999999}".to_string()),
        Just("NIL".to_string()),
        Just("BODY".to_string()),
        Just("BODY.PEEK".to_string()),
        Just("BINARY".to_string()),
        Just("HEADER.FIELDS".to_string()),
        Just("MIME".to_string()),
        Just("TEXT".to_string()),
        Just("FLAGS".to_string()),
        Just("+FLAGS.SILENT".to_string()),
        Just("\\Seen".to_string()),
        Just("ENVELOPE".to_string()),
        Just("BODYSTRUCTURE".to_string()),
        Just("MODSEQ".to_string()),
        Just("CHANGEDSINCE".to_string()),
        Just("UNCHANGEDSINCE".to_string()),
        Just("VANISHED".to_string()),
        Just("QRESYNC".to_string()),
        Just("CONDSTORE".to_string()),
        Just("RETURN".to_string()),
        Just("OR".to_string()),
        Just("NOT".to_string()),
        Just("SUBJECT".to_string()),
        Just("SINCE".to_string()),
        Just("1-Feb-2026".to_string()),
        Just("\"01-Jan-2026 10:00:00 +0100\"".to_string()),
        Just("INBOX".to_string()),
        Just("&AMk-t&AOk-".to_string()),
        Just("&-".to_string()),
        Just("&Jjo".to_string()),
        "[0-9]{1,11}",
        "[a-zA-Z]{1,6}",
        any::<u8>().prop_map(|b| (b as char).to_string()),
    ];
    (
        "[A-Za-z0-9]{0,4}",
        verbs,
        prop::collection::vec(token, 0..40),
    )
        .prop_map(|(tag, verb, tokens)| {
            let mut line = format!("{tag} {verb} ").into_bytes();
            for t in tokens {
                line.extend_from_slice(t.as_bytes());
            }
            line
        })
}

/// What must hold of every sequence set the parser accepts.
fn sane_set(s: &SeqSet) -> Result<(), TestCaseError> {
    prop_assert!(!s.0.is_empty());
    if !s.is_saved() {
        for &(a, b) in &s.0 {
            prop_assert!(a != SAVED && b != SAVED, "0 in a sequence set: {:?}", s);
        }
    }
    // Resolving against any mailbox size never panics.
    for max in [0, 1, 7, STAR - 1] {
        let _ = s.contains(1, max);
        let _ = s.contains(max, max);
    }
    Ok(())
}

fn sane(input: &[u8]) -> Result<(), TestCaseError> {
    let tag_before = parser::tag_of(input);
    match parser::parse(input) {
        Ok(t) => {
            prop_assert!(!t.tag.is_empty());
            prop_assert_eq!(&t.tag, &tag_before);
            prop_assert!(!t.tag.contains([' ', '\r', '\n', '*', '+']));
            match &t.command {
                Command::Fetch { set, items, .. } => {
                    sane_set(set)?;
                    prop_assert!(!items.is_empty());
                    for item in items {
                        if let FetchItem::Section {
                            partial: Some((_, n)),
                            ..
                        }
                        | FetchItem::Binary {
                            partial: Some((_, n)),
                            ..
                        } = item
                        {
                            prop_assert!(*n > 0, "a partial of 0 octets");
                        }
                    }
                }
                Command::Store { set, .. } => sane_set(set)?,
                Command::Copy { set, .. } => sane_set(set)?,
                Command::Expunge(Some(set)) => sane_set(set)?,
                _ => {}
            }
        }
        Err((tag, why)) => {
            prop_assert_eq!(tag, tag_before);
            prop_assert!(!why.is_empty());
            prop_assert!(
                !why.contains(['\r', '\n']),
                "a reply text with a line break"
            );
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn any_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..800)) {
        sane(&input)?;
    }

    #[test]
    fn imap_like_commands_never_panic_and_accepted_ones_are_sane(input in imap_like()) {
        sane(&input)?;
    }

    #[test]
    fn dates_never_panic(s in prop::collection::vec(any::<u8>(), 0..40), t in "[0-9 A-Za-z:+-]{0,32}") {
        let _ = parser::date(&s);
        let _ = parser::date_time(&s);
        let _ = parser::date(t.as_bytes());
        let _ = parser::date_time(t.as_bytes());
    }

    #[test]
    fn modified_utf7_round_trips(name in "\\PC{0,40}") {
        let wire = mutf7::encode(&name);
        prop_assert!(wire.is_ascii());
        prop_assert_eq!(mutf7::decode(wire.as_bytes()), Some(name));
    }

    #[test]
    fn modified_utf7_decoding_never_panics(s in prop::collection::vec(prop_oneof![any::<u8>(), Just(b'&'), Just(b'-'), Just(b',')], 0..80)) {
        let _ = mutf7::decode(&s);
    }
}

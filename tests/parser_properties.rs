//! Property tests (proptest) for the SMTP command, address and line
//! parsers: no input panics, and what is accepted is well-formed. The case
//! count comes from PROPTEST_CASES (default 256); a long run:
//! `PROPTEST_CASES=2000000 cargo test --release --test parser_properties`.

use petrel::smtp::command::{self, Command, parse_path, xtext_decode, xtext_encode};
use petrel::smtp::line::{Ending, read_line};
use proptest::prelude::*;

fn smtp_like() -> impl Strategy<Value = Vec<u8>> {
    let verbs = prop_oneof![
        Just("MAIL FROM:".to_string()),
        Just("RCPT TO:".to_string()),
        Just("EHLO ".to_string()),
        Just("AUTH ".to_string()),
        Just("VRFY ".to_string()),
        "[A-Za-z]{0,8} ?",
    ];
    let tail = prop::collection::vec(
        prop_oneof![
            Just(b'<'),
            Just(b'>'),
            Just(b'@'),
            Just(b'"'),
            Just(b'\\'),
            Just(b'['),
            Just(b']'),
            Just(b':'),
            Just(b','),
            Just(b'.'),
            Just(b'='),
            Just(b' '),
            Just(0u8),
            Just(0xc3),
            Just(0xa9),
            any::<u8>(),
            b'a'..=b'z',
        ],
        0..120,
    );
    (verbs, tail).prop_map(|(v, t)| {
        let mut b = v.into_bytes();
        b.extend(t);
        b
    })
}

proptest! {
    #[test]
    fn command_parser_never_panics(line in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = command::parse(&line);
    }

    #[test]
    fn smtp_like_lines_never_panic_and_accepted_addresses_are_sane(line in smtp_like()) {
        match command::parse(&line) {
            Ok(Command::Mail(m)) => {
                prop_assert!(m.address.is_empty() || m.address.contains('@'));
                prop_assert!(m.smtputf8 || m.address.is_ascii());
                prop_assert!(!m.address.contains(['\r', '\n', '\0']));
            }
            Ok(Command::Rcpt(r)) => {
                prop_assert!(r.address.contains('@'));
                prop_assert!(!r.address.contains(['\r', '\n', '\0', '<', '>']) || r.address.starts_with('"'));
            }
            Ok(_) | Err(_) => {}
        }
    }

    #[test]
    fn path_parser_never_panics(s in "\\PC{0,80}") {
        let _ = parse_path(&s, true);
        let _ = parse_path(&s, false);
    }

    #[test]
    fn xtext_round_trips(s in "\\PC{0,60}") {
        prop_assert_eq!(xtext_decode(&xtext_encode(&s)), Some(s));
    }

    #[test]
    fn line_reader_keeps_limits_and_never_panics(input in prop::collection::vec(prop_oneof![any::<u8>(), Just(b'\r'), Just(b'\n')], 0..3000), limit in 3usize..1100) {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(async {
            let mut r = tokio::io::BufReader::with_capacity(64, input.as_slice());
            let mut consumed = 0;
            loop {
                let l = read_line(&mut r, limit, 4096).await.expect("in-memory read");
                prop_assert!(l.bytes.len() <= limit.saturating_sub(2));
                prop_assert!(l.too_long || l.ending != Ending::Crlf || !l.bytes.contains(&b'\n'));
                consumed += l.wire_len;
                if l.ending == Ending::Eof {
                    break;
                }
            }
            prop_assert!(consumed <= input.len());
            Ok(())
        })?;
    }
}

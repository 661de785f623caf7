//! 8-bit mail reaches a peer that does not offer 8BITMIME, converted to
//! 7 bits (RFC 6152 §3), and no line over 998 characters reaches any peer
//! (RFC 5321 §4.5.3.1.6): the parts concerned are re-encoded. An
//! independent reader (Python's email package) decodes what the peer got
//! to exactly the octets of the original.

mod common;

use std::time::Duration;

use common::sink::{Received, Sink, SinkOptions};
use common::{Smtp, TestServer, queued_id};

const WAIT: Duration = Duration::from_secs(15);

/// Python's reading of a message (see tests/interop/mime_parts.py).
fn python_reads(raw: &[u8]) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("msg.eml");
    std::fs::write(&file, raw).expect("write");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/mime_parts.py");
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(script)
        .arg(&file)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "mime_parts.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The original, with 8-bit headers, an 8-bit text part, an 8-bit
/// attachment with a non-ASCII name and an enclosed 8-bit message.
fn eight_bit_message() -> (Vec<u8>, Vec<u8>) {
    let attachment: Vec<u8> = (0x80u8..=0xff)
        .chain(b" ascii too".iter().copied())
        .collect();
    let mut m = "From: J\u{f6}rg M\u{fc}ller <alice@example.test>\r\n\
To: dave@partner.test\r\n\
Subject: Gr\u{fc}\u{df}e aus K\u{f6}ln\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
\r\n\
This is a multi-part message.\r\n\
--outer\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
Gr\u{fc}\u{df}e = 100% aus K\u{f6}ln.\r\n\
Zeile mit Leerzeichen am Ende \r\n\
.eine Zeile mit Punkt\r\n\
--outer\r\n\
Content-Type: application/octet-stream; name=\"\u{dc}bersicht.bin\"\r\n\
Content-Disposition: attachment; filename=\"\u{dc}bersicht.bin\"\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n"
        .as_bytes()
        .to_vec();
    m.extend_from_slice(&attachment);
    m.extend_from_slice(
        "\r\n--outer\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
Subject: drinnen \u{e4}\r\n\
From: x@partner.test\r\n\
\r\n\
innen: caf\u{e9}\r\n\
--outer--\r\n"
            .as_bytes(),
    );
    (m, attachment)
}

fn check_same_reading(original: &[u8], got: &Received) {
    let before = python_reads(original);
    let after = python_reads(&got.data);
    assert_eq!(after["eight_bit"], false, "8-bit octets were sent");
    let longest = after["longest_line"].as_u64().expect("longest");
    assert!(longest <= 998, "a line of {longest} characters was sent");
    assert_eq!(after["subject"], before["subject"]);
    assert_eq!(after["from"], before["from"]);
    let (b, a) = (
        before["parts"].as_array().expect("parts"),
        after["parts"].as_array().expect("parts"),
    );
    assert_eq!(a.len(), b.len(), "{after}");
    for (x, y) in b.iter().zip(a) {
        assert_eq!(x["type"], y["type"]);
        assert_eq!(x["hex"], y["hex"], "part {x} became {y}");
        assert_eq!(x["filename"], y["filename"]);
        assert_eq!(x["subject"], y["subject"]);
    }
}

#[test]
fn eight_bit_mail_to_a_seven_bit_peer_is_converted_and_decodes_to_the_original() {
    let sink = Sink::start(
        "127.0.0.2:0",
        SinkOptions {
            seven_bit: true,
            ..Default::default()
        },
    );
    let server = TestServer::start_with("", "", sink.addr.port());
    let (original, attachment) = eight_bit_message();
    let mut s = Smtp::ready(server.mx());
    assert_eq!(s.cmd("MAIL FROM:<alice@example.test> BODY=8BITMIME").0, 250);
    assert_eq!(s.cmd("RCPT TO:<dave@partner.test>").0, 250);
    assert_eq!(s.cmd("DATA").0, 354);
    let mut stuffed = Vec::new();
    for line in original.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            stuffed.push(b'.');
        }
        stuffed.extend_from_slice(line);
    }
    s.send_raw(&stuffed);
    s.send_raw(b".\r\n");
    let id = queued_id(&s.reply());
    assert!(
        server.wait_log(&["delivery", &id, "status=sent"], WAIT),
        "{}",
        server.log()
    );
    let got = sink.wait(1, WAIT);
    assert_eq!(got.len(), 1);
    assert!(!got[0].mail.contains("BODY=8BITMIME"), "{}", got[0].mail);
    // What we sent is the original after our own Received: header.
    let text = String::from_utf8_lossy(&got[0].data).into_owned();
    assert!(
        text.contains("Content-Transfer-Encoding: quoted-printable"),
        "{text}"
    );
    assert!(text.contains("Content-Transfer-Encoding: base64"), "{text}");
    assert!(text.contains("Subject: =?utf-8?B?"), "{text}");
    check_same_reading(&original, &got[0]);
    let after = python_reads(&got[0].data);
    assert_eq!(after["parts"][1]["hex"], hex(&attachment));
}

#[test]
fn an_over_long_line_is_reencoded_for_the_peer_and_nothing_is_lost() {
    // The peer offers 8BITMIME; the only problem is a line of 300,000
    // characters (submitted locally).
    let sink = Sink::start("127.0.0.2:0", SinkOptions::default());
    let server = TestServer::start_with("", "", sink.addr.port());
    // 300,000 characters: large enough to be converted off the delivery
    // thread.
    let long = format!("{} end", "0123456789".repeat(30_000));
    let body = format!(
        "Subject: long line\r\nFrom: alice@example.test\r\n\r\nfirst\r\n{long}\r\nlast\r\n"
    );
    let out = server.cli_stdin(
        &["sendmail", "-f", "alice@example.test", "dave@partner.test"],
        body.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = sink.wait(1, WAIT);
    assert_eq!(got.len(), 1, "{}", server.log());
    let after = python_reads(&got[0].data);
    let longest = after["longest_line"].as_u64().expect("longest");
    assert!(longest <= 998, "a line of {longest} characters was sent");
    assert_eq!(
        after["parts"][0]["hex"],
        hex(format!("first\r\n{long}\r\nlast\r\n").as_bytes()),
        "{after}"
    );
    assert_eq!(after["parts"][0]["cte"], "quoted-printable");
    assert_eq!(after["subject"], "long line");
}

#[test]
fn a_real_postfix_without_8bitmime_receives_the_converted_message() {
    let Some(peer) = common::postfix::PostfixPeer::start("smtpd_discard_ehlo_keywords = 8bitmime")
    else {
        return;
    };
    let server = TestServer::start_with(
        "",
        &format!(
            "[smtp.outbound]\nport = {0}\n[[smtp.outbound.routes]]\ndomain = \"postfix.test\"\nhost = \"[127.0.0.1]:{0}\"",
            peer.port
        ),
        peer.port,
    );
    let (original, attachment) = eight_bit_message();
    let mut s = Smtp::ready(server.mx());
    assert_eq!(s.cmd("MAIL FROM:<alice@example.test> BODY=8BITMIME").0, 250);
    assert_eq!(s.cmd("RCPT TO:<user@postfix.test>").0, 250);
    assert_eq!(s.cmd("DATA").0, 354);
    let mut stuffed = Vec::new();
    for line in original.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            stuffed.push(b'.');
        }
        stuffed.extend_from_slice(line);
    }
    s.send_raw(&stuffed);
    s.send_raw(b".\r\n");
    let id = queued_id(&s.reply());
    assert!(
        server.wait_log(&["delivery", &id, "status=sent"], Duration::from_secs(20)),
        "{}",
        server.log()
    );
    let files = peer.wait_maildir(1, Duration::from_secs(20));
    assert_eq!(files.len(), 1, "one message in Postfix's maildir");
    // The maildir holds LF lines; the canonical form has CRLF.
    let mut crlf = Vec::with_capacity(files[0].len() + files[0].len() / 20);
    for &b in &files[0] {
        if b == b'\n' {
            crlf.push(b'\r');
        }
        crlf.push(b);
    }
    let got = Received {
        mail: String::new(),
        rcpts: vec![],
        rcpt_lines: vec![],
        data: crlf,
        tls: false,
        peer: None,
    };
    check_same_reading(&original, &got);
    assert_eq!(python_reads(&got.data)["parts"][1]["hex"], hex(&attachment));
}

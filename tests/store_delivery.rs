//! Local delivery into the message store through the real daemon: an
//! alias fan-out of a 1 MiB message to 200 users stores one body (about
//! 1 MiB on disk, not 200), each user's copy with its own
//! `Delivered-To:`.

mod common;

use std::time::Duration;

use common::{Smtp, TestServer, free_port, queued_id};

fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn alias_fan_out_to_200_users_stores_one_body() {
    let mut extra = String::from("[[aliases]]\naddress = \"all@example.test\"\nmembers = [");
    for n in 0..200 {
        extra.push_str(&format!("\"user{n}@example.test\", "));
    }
    extra.push_str("]\n");
    for n in 0..200 {
        extra.push_str(&format!(
            "\n[[users]]\nname = \"user{n}\"\naddresses = [\"user{n}@example.test\"]\n"
        ));
    }
    let server = TestServer::start_with("", &extra, free_port());
    let segments = server.dir.path().join("store").join("segments");
    let before = dir_size(&segments);
    let mut body = String::from("Subject: all hands\r\nMessage-ID: <fan@test>\r\n\r\n");
    while body.len() < 1 << 20 {
        body.push_str(
            "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n",
        );
    }
    let mut s = Smtp::ready(server.mx());
    queued_id(&s.send_mail("boss@partner.test", &["all@example.test"], &body));
    for n in [0, 57, 199] {
        let m = server.wait_mailbox(&format!("user{n}"), 1, Duration::from_secs(30));
        assert_eq!(m[0]["message_id"], "<fan@test>");
        let content = server.mailbox_message(&format!("user{n}"), 1);
        let want = format!("Delivered-To: user{n}@example.test\r\n");
        assert!(
            String::from_utf8_lossy(&content[..200]).contains(&want),
            "user{n}'s copy has its own prefix"
        );
        let tail = &body.as_bytes()[body.len() - 4096..];
        assert!(
            memchr::memmem::find(&content, tail).is_some() && content.len() >= body.len(),
            "user{n}'s copy holds the message"
        );
    }
    for n in 0..200 {
        server.wait_mailbox(&format!("user{n}"), 1, Duration::from_secs(30));
    }
    let grew = dir_size(&segments) - before;
    eprintln!(
        "fan-out through the daemon: {grew} octets of bodies for 200 copies of a {} octet message",
        body.len()
    );
    assert!(
        grew < 2 * body.len() as u64,
        "{grew} octets of bodies for one message"
    );
}

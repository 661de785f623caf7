//! Modified UTF-7 mailbox names (RFC 3501 §5.1.3): how folder names that
//! are not ASCII travel until a client enables UTF8=ACCEPT (RFC 6855).
//! The store keeps names as UTF-8.

use base64::Engine as _;
use base64::alphabet::IMAP_MUTF7;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

const ENGINE: GeneralPurpose = GeneralPurpose::new(
    &IMAP_MUTF7,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// UTF-8 → modified UTF-7.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if !pending.is_empty() {
            let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
            out.push('&');
            out.push_str(&ENGINE.encode(bytes));
            out.push('-');
            pending.clear();
        }
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// Modified UTF-7 → UTF-8; `None` when it is not valid modified UTF-7.
pub fn decode(name: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        let b = name[i];
        if b == b'&' {
            let end = i + 1 + name[i + 1..].iter().position(|&c| c == b'-')?;
            let chunk = &name[i + 1..end];
            if chunk.is_empty() {
                out.push('&');
            } else {
                let bytes = ENGINE.decode(chunk).ok()?;
                if bytes.len() % 2 != 0 {
                    return None;
                }
                let units: Vec<u16> = bytes
                    .chunks(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                out.push_str(&String::from_utf16(&units).ok()?);
            }
            i = end + 1;
        } else if (0x20..0x7f).contains(&b) {
            out.push(b as char);
            i += 1;
        } else {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for (utf8, wire) in [
            ("INBOX", "INBOX"),
            ("Entwürfe", "Entw&APw-rfe"),
            ("A&B", "A&-B"),
            ("日本語", "&ZeVnLIqe-"),
            ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ] {
            assert_eq!(encode(utf8), wire);
            assert_eq!(decode(wire.as_bytes()).as_deref(), Some(utf8));
        }
        assert_eq!(decode(b"&Jjo!"), None);
        assert_eq!(decode("é".as_bytes()), None);
    }
}

//! Reading the header section of a stored message (RFC 5322 §2.2): find a
//! field's unfolded values, count fields. Only what intake and sendmail
//! need; full MIME parsing is mail-parser's job.

/// The header section: everything before the first empty line.
pub fn section(content: &[u8]) -> &[u8] {
    if content.starts_with(b"\r\n") || content.starts_with(b"\n") {
        return &[];
    }
    for (i, w) in content.windows(4).enumerate() {
        if w == b"\r\n\r\n" {
            return &content[..i + 2];
        }
    }
    for (i, w) in content.windows(2).enumerate() {
        if w == b"\n\n" {
            return &content[..i + 1];
        }
    }
    content
}

/// Unfolded fields of the header section as (name, value) pairs.
pub fn fields(content: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(section(content));
    let mut out: Vec<(String, String)> = Vec::new();
    for raw in text.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    out
}

/// The first value of a field, by case-insensitive name.
pub fn first(content: &[u8], name: &str) -> Option<String> {
    fields(content)
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// How many fields of that name the header section has.
pub fn count(content: &[u8], name: &str) -> usize {
    fields(content)
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_unfolded_fields_in_the_header_section_only() {
        let m = b"Received: a\r\n\tb\r\nReceived: c\r\nMessage-ID: <x@y>\r\n\r\nMessage-ID: <body@z>\r\n";
        assert_eq!(count(m, "received"), 2);
        assert_eq!(first(m, "message-id").as_deref(), Some("<x@y>"));
        assert_eq!(first(m, "Received").as_deref(), Some("a b"));
        assert_eq!(first(b"\r\nSubject: no\r\n", "subject"), None);
    }
}

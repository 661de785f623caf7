//! What the webmail's and the console's POST handlers share: the
//! urlencoded body (fields may repeat: `uid`, `id`), the local path a form
//! asks to go back to, and the notice appended to it.

/// An urlencoded form body as name–value pairs.
pub struct Form(Vec<(String, String)>);

impl Form {
    /// Parses a body; one that is not urlencoded has no fields.
    pub fn parse(body: &[u8]) -> Form {
        Form(serde_urlencoded::from_bytes(body).unwrap_or_default())
    }

    /// The first value of a field.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeated field.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `back` field if it is a path on this site under `under`
    /// (never another site: no `//`, no backslash), else `default`.
    pub fn back(&self, under: &str, default: &str) -> String {
        match self.get("back") {
            Some(b) if b.starts_with(under) && !b.contains("//") && !b.contains('\\') => {
                b.to_string()
            }
            _ => default.to_string(),
        }
    }
}

/// `path` with `notice=code` (one notice: an earlier one is replaced).
pub fn with_notice(path: &str, code: &str) -> String {
    let base: String = path
        .split('&')
        .filter(|p| !p.starts_with("notice="))
        .collect::<Vec<_>>()
        .join("&");
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}notice={code}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn going_back_stays_on_this_site() {
        let f = |b: &str| Form::parse(format!("back={b}").as_bytes());
        assert_eq!(f("%2F%3Ff%3DINBOX").back("/", "/"), "/?f=INBOX");
        assert_eq!(f("%2F%2Fevil.example%2F").back("/", "/"), "/");
        assert_eq!(f("https%3A%2F%2Fevil.example%2F").back("/", "/"), "/");
        assert_eq!(f("%2F%5Cevil").back("/", "/"), "/");
        assert_eq!(f("%2Fread").back("/admin", "/admin/queue"), "/admin/queue");
        assert_eq!(
            with_notice("/?f=INBOX&notice=sent", "moved"),
            "/?f=INBOX&notice=moved"
        );
        assert_eq!(with_notice("/read", "moved"), "/read?notice=moved");
    }

    #[test]
    fn repeated_fields_are_all_kept() {
        let f = Form::parse(b"uid=1&uid=2&op=flag&uid=x");
        assert_eq!(f.all("uid").collect::<Vec<_>>(), vec!["1", "2", "x"]);
        assert_eq!(f.get("op"), Some("flag"));
        assert_eq!(f.get("none"), None);
        assert_eq!(Form::parse(b"\xff\xfe").get("a"), None);
    }
}

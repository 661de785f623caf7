//! Where a recipient goes: a local mailbox, a remote domain, or nowhere.
//! Pure: no I/O, no state; the scheduler asks it for each recipient.

use crate::config::Config;

/// Where one recipient's copy goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A local mailbox, by name.
    Mailbox(String),
    /// A remote domain (lower case, no trailing dot), to be reached over SMTP.
    Remote(String),
    /// A local address the directory does not know.
    Unknown,
}

/// Routes one (already alias-expanded) recipient address.
pub fn route(config: &Config, address: &str) -> Destination {
    let Some((_, domain)) = address.rsplit_once('@') else {
        return Destination::Unknown;
    };
    if config.domains.is_local(domain) {
        match config
            .directory
            .mailbox_for(&config.domains.canonical(address))
        {
            Some(mailbox) => Destination::Mailbox(mailbox.to_string()),
            None => Destination::Unknown,
        }
    } else {
        Destination::Remote(domain.trim_end_matches('.').to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_remote_and_unknown() {
        let c = Config::parse(
            r#"
[domains]
primary = "example.test"
aliases = ["[192.0.2.10]"]
[[users]]
name = "alice"
addresses = ["alice@example.test"]
"#,
        )
        .expect("valid");
        assert_eq!(
            route(&c, "Alice@Example.Test"),
            Destination::Mailbox("alice".into())
        );
        assert_eq!(route(&c, "bob@example.test"), Destination::Unknown);
        assert_eq!(route(&c, "bob@[192.0.2.10]"), Destination::Unknown);
        assert_eq!(
            route(&c, "alice@[192.0.2.10]"),
            Destination::Mailbox("alice".into())
        );
        assert_eq!(
            route(&c, "dave@Partner.Test."),
            Destination::Remote("partner.test".into())
        );
    }
}

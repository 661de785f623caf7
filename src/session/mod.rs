//! What the sessions of every protocol share, so that SMTP, POP3, IMAP and
//! the web access check it in one place: logging in against the directory
//! with the failure back-off (`login`), SASL PLAIN (`sasl`) and the
//! connection limits (`limits`). The TLS upgrade in place (STARTTLS, STLS)
//! lives with the connection type in `conn`.

pub mod limits;
pub mod login;
pub mod sasl;

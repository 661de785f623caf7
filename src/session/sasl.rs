//! SASL responses (RFC 4422) as SMTP AUTH (RFC 4954), POP3 AUTH (RFC 5034)
//! and IMAP AUTHENTICATE (RFC 9051 §6.2.2) carry them: base64 lines, `=`
//! for an empty initial response, `*` to cancel; and the PLAIN mechanism
//! (RFC 4616).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// Why a SASL response was not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslError {
    /// The client sent `*`.
    Cancelled,
    /// Not base64.
    Base64,
    /// Not `authzid NUL authcid NUL password`.
    Malformed,
    /// An authorization identity other than the login: petrel lets nobody
    /// act as somebody else.
    Authz,
}

/// Decodes one response line (without its CRLF).
pub fn decode(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    let line = line.trim_ascii();
    match line {
        b"*" => Err(SaslError::Cancelled),
        b"=" => Ok(Vec::new()),
        _ => BASE64.decode(line).map_err(|_| SaslError::Base64),
    }
}

/// The login and password of a decoded PLAIN response.
pub fn plain(raw: &[u8]) -> Result<(String, String), SaslError> {
    let parts: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
    match parts.as_slice() {
        [authz, authc, pass] if authz.is_empty() || authz == authc => Ok((
            String::from_utf8_lossy(authc).into_owned(),
            String::from_utf8_lossy(pass).into_owned(),
        )),
        [_, _, _] => Err(SaslError::Authz),
        _ => Err(SaslError::Malformed),
    }
}

/// The base64 of a challenge (for LOGIN's prompts and tests).
pub fn encode(raw: &[u8]) -> String {
    BASE64.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_responses() {
        let r = decode(encode(b"\0alice\0pw").as_bytes()).unwrap();
        assert_eq!(plain(&r).unwrap(), ("alice".into(), "pw".into()));
        let r = decode(encode(b"alice\0alice\0pw").as_bytes()).unwrap();
        assert_eq!(plain(&r).unwrap(), ("alice".into(), "pw".into()));
        let r = decode(encode(b"bob\0alice\0pw").as_bytes()).unwrap();
        assert_eq!(plain(&r), Err(SaslError::Authz));
        assert_eq!(plain(b"alice"), Err(SaslError::Malformed));
        assert_eq!(decode(b"*"), Err(SaslError::Cancelled));
        assert_eq!(decode(b"=").unwrap(), b"");
        assert_eq!(decode(b"%%%"), Err(SaslError::Base64));
    }
}

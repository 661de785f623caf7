//! Raw HTTP/1.1 for the web tests: one request per connection, a form
//! login that keeps its session cookie and CSRF token.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One raw HTTP/1.1 request; the status, headers and body.
pub fn http(port: u16, req: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_string(), body.to_string())
}

/// A request with a session cookie (none when empty) and a body of
/// `content_type` (none when empty); the status, headers and body.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    cookie: &str,
    content_type: &str,
    body: &str,
) -> (u16, String, String) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    if !cookie.is_empty() {
        req.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    if !content_type.is_empty() {
        req.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    http(port, &req)
}

pub const FORM: &str = "application/x-www-form-urlencoded";

/// A GET with a session cookie; the status and body.
pub fn get(port: u16, cookie: &str, path: &str) -> (u16, String) {
    let (code, _, body) = request(port, "GET", path, cookie, "", "");
    (code, body)
}

/// A form POST with a session cookie; the status and head.
pub fn post(port: u16, cookie: &str, path: &str, form: &str) -> (u16, String) {
    let (code, head, _) = request(port, "POST", path, cookie, FORM, form);
    (code, head)
}

/// A logged-in browser: the cookie to send, the `Set-Cookie` line it came
/// in, the CSRF token of its forms.
pub struct Login {
    /// `name=value` to send back.
    pub cookie: String,
    /// The whole `Set-Cookie` line.
    pub set_cookie: String,
    /// The CSRF token of its forms.
    pub csrf: String,
}

pub fn login(port: u16, user: &str, password: &str) -> Login {
    let body = format!("username={user}&password={}", password.replace(' ', "+"));
    let (code, head) = post(port, "", "/login", &body);
    assert_eq!(code, 303, "{head}");
    let set_cookie = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .expect("cookie")
        .to_string();
    let cookie = set_cookie
        .split_once(':')
        .unwrap()
        .1
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (_, page) = get(port, &cookie, "/");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("csrf token")
        .to_string();
    Login {
        cookie,
        set_cookie,
        csrf,
    }
}

#!/usr/bin/env python3
"""Scripted sessions of the IMAP clients people use, against a running
petrel IMAP service: Thunderbird (STARTTLS, COMPRESS=DEFLATE, IDLE,
CONDSTORE off, its header FETCH) and Outlook (ID first, IDLE before
SELECT, STATUS polling), and how fast IDLE wakes. The command sequences
follow what those clients send (their protocol logs); the wire is a raw
socket, so nothing is hidden by a library. Started by tests/imap.rs with
three messages in alice's INBOX. Prints a closing "N passed, N failed".
"""
import argparse
import re
import smtplib
import socket
import ssl
import sys
import time
import zlib

from scenarios import check, summary


class Client:
    """One IMAP connection: lines and literals, optional TLS and deflate."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buf = b""
        self.inflate = None
        self.deflate = None
        self.n = 0
        self.raw_in = 0  # octets received on the wire
        self.plain_in = 0  # octets after inflating

    def starttls(self):
        c = ssl.create_default_context()
        c.check_hostname = False
        c.verify_mode = ssl.CERT_NONE  # self-signed test certificate
        self.sock = c.wrap_socket(self.sock, server_hostname="localhost")

    def start_deflate(self):
        assert not self.buf, self.buf
        self.inflate = zlib.decompressobj(-15)
        self.deflate = zlib.compressobj(6, zlib.DEFLATED, -15)

    def send(self, data):
        if self.deflate:
            data = self.deflate.compress(data) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        self.raw_in += len(chunk)
        if self.inflate:
            chunk = self.inflate.decompress(chunk)
        self.plain_in += len(chunk)
        self.buf += chunk

    def line(self):
        """One response line with its literals inlined."""
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                self.fill()
            l, self.buf = self.buf.split(b"\r\n", 1)
            out += l
            m = re.search(rb"\{(\d+)\}$", l)
            if not m:
                return out
            n = int(m.group(1))
            while len(self.buf) < n:
                self.fill()
            out += b"\r\n" + self.buf[:n]
            self.buf = self.buf[n:]

    def tag(self):
        self.n += 1
        return f"a{self.n}"

    def cmd(self, text):
        """Sends a command; returns (untagged lines, tagged line)."""
        t = self.tag()
        self.send(f"{t} {text}\r\n".encode())
        return self.until(t)

    def until(self, t):
        lines = []
        while True:
            l = self.line()
            if l.startswith(t.encode() + b" "):
                return lines, l
            lines.append(l)

    def ok(self, text):
        lines, done = self.cmd(text)
        assert done.split()[1] == b"OK", (text, done, lines)
        return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--imap", type=int, required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--smtp", type=int, required=True)
    ap.add_argument("--petrel", required=True)
    ap.add_argument("--config", required=True)
    a = ap.parse_args()

    def deliver(subject):
        """Sends one message to alice; returns the time its 250 arrived."""
        s = smtplib.SMTP("127.0.0.1", a.smtp, timeout=20)
        s.sendmail("late@partner.test", ["alice@example.test"],
                   f"Subject: {subject}\r\nFrom: late@partner.test\r\n\r\nnew\r\n".encode())
        at = time.monotonic()
        s.quit()
        return at

    def logged_in(tls=True):
        c = Client(a.imap)
        assert c.line().startswith(b"* OK"), "greeting"
        if tls:
            c.ok("STARTTLS")
            c.starttls()
        c.ok(f'LOGIN "alice" "{a.password}"')
        return c

    def thunderbird():
        c = Client(a.imap)
        greeting = c.line()
        assert b"STARTTLS" in greeting, greeting
        c.ok("STARTTLS")
        c.starttls()
        caps = b" ".join(c.ok("CAPABILITY"))
        assert b"IMAP4rev1" in caps and b"COMPRESS" not in caps, caps
        lines, done = c.cmd(f'login "alice" "{a.password}"')
        assert b"OK" in done, done
        caps = b" ".join(lines) + done
        if b"COMPRESS=DEFLATE" not in caps:
            caps = b" ".join(c.ok("capability"))
        assert b"COMPRESS=DEFLATE" in caps, caps
        assert b"IDLE" in caps and b"CONDSTORE" in caps, caps
        c.ok("COMPRESS DEFLATE")
        c.start_deflate()
        ident = b" ".join(c.ok('ID ("name" "Thunderbird" "version" "128.5.0")'))
        assert b'"name"' in ident, ident
        assert b"Shared/" in b" ".join(c.ok("namespace"))
        folders = b" ".join(c.ok('list (SUBSCRIBED) "" "*" RETURN (SPECIAL-USE)'))
        assert b"\\Sent" in folders or b"INBOX" in folders, folders
        c.ok('list "" "INBOX"')
        sel = b" ".join(c.ok('select "INBOX"'))  # CONDSTORE off: no (CONDSTORE)
        assert b"3 EXISTS" in sel and b"UIDVALIDITY" in sel, sel
        flags = c.ok("UID fetch 1:* (FLAGS)")
        assert len(flags) == 3 and all(b"FLAGS (" in f for f in flags), flags
        heads = c.ok(
            "UID fetch 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc "
            "Subject Date Message-ID Priority X-Priority References Newsgroups In-Reply-To "
            "Content-Type Reply-To)])")
        assert len(heads) == 3 and b"Subject: one" in heads[0], heads[0]
        body = c.ok("UID fetch 1 (UID RFC822.SIZE BODY.PEEK[])")[0]
        assert b"first body" in body, body
        c.ok("UID store 1 +Flags (\\Seen)")
        assert b"\\Seen" in c.ok("UID fetch 1 (FLAGS)")[0]
        # New mail while idling arrives compressed.
        t = c.tag()
        c.send(f"{t} IDLE\r\n".encode())
        assert c.line().startswith(b"+"), "IDLE continuation"
        deliver("for thunderbird")
        exists = c.line()
        assert re.match(rb"\* 4 EXISTS", exists), exists
        c.send(b"DONE\r\n")
        _, done = c.until(t)
        assert b"OK" in done, done
        new = c.ok("UID fetch 4:* (UID RFC822.SIZE FLAGS)")
        assert len(new) == 1, new
        no = c.cmd("COMPRESS DEFLATE")[1]
        assert b"NO" in no and b"COMPRESSIONACTIVE" in no, no
        c.ok("UID store 4 +Flags (\\Deleted)")
        c.ok("expunge")
        c.ok("logout")
        assert c.raw_in < c.plain_in, (c.raw_in, c.plain_in)
        print(f"     thunderbird: {c.plain_in} octets of replies in {c.raw_in} on the wire")

    def compress_refusals():
        c = Client(a.imap)
        c.line()
        assert b"BAD" in c.cmd("COMPRESS DEFLATE")[1], "COMPRESS before login"
        c.ok("STARTTLS")
        c.starttls()
        c.ok(f'LOGIN "alice" "{a.password}"')
        assert b"BAD" in c.cmd("COMPRESS GZIP")[1], "unknown algorithm"
        c.ok("NOOP")  # still uncompressed
        c.ok("LOGOUT")

    def outlook():
        c = Client(a.imap)
        c.line()
        c.ok("CAPABILITY")
        c.ok("STARTTLS")
        c.starttls()
        c.ok('ID ("name" "Microsoft Outlook" "version" "16.0")')
        c.ok(f"LOGIN alice {{{len(a.password)}+}}\r\n{a.password}")
        # Outlook idles in the authenticated state before any SELECT.
        t = c.tag()
        c.send(f"{t} IDLE\r\n".encode())
        assert c.line().startswith(b"+"), "IDLE before SELECT accepted"
        c.send(b"DONE\r\n")
        _, done = c.until(t)
        assert b"OK" in done, done
        c.ok('LIST "" "*"')
        st = b" ".join(c.ok('STATUS "INBOX" (UIDNEXT UNSEEN MESSAGES)'))
        assert b"MESSAGES 3" in st, st
        c.ok('SELECT "INBOX"')
        assert len(c.ok("UID FETCH 1:* (UID FLAGS)")) == 3
        c.ok("UID FETCH 2 (UID RFC822.SIZE BODY.PEEK[HEADER] INTERNALDATE)")
        c.ok("LOGOUT")

    def idle_wakes_within_a_second():
        watcher = logged_in()
        watcher.ok('SELECT "INBOX"')
        other = logged_in()
        other.ok('SELECT "INBOX"')
        t = watcher.tag()
        watcher.send(f"{t} IDLE\r\n".encode())
        assert watcher.line().startswith(b"+"), "IDLE continuation"
        # A flag change made by another session.
        other.send(b"s1 UID STORE 2 +FLAGS (\\Flagged)\r\n")
        other.until("s1")
        done_at = time.monotonic()
        line = watcher.line()
        flag_wake = time.monotonic() - done_at
        assert b"FETCH" in line and b"\\Flagged" in line, line
        # A delivery over SMTP, timed from its 250.
        sent_at = deliver("wake up")
        line = watcher.line()
        mail_wake = time.monotonic() - sent_at
        assert re.match(rb"\* \d+ EXISTS", line), line
        watcher.send(b"DONE\r\n")
        watcher.until(t)
        print(f"     IDLE woke {flag_wake * 1000:.1f} ms after another session's STORE, "
              f"{mail_wake * 1000:.1f} ms after a delivery's 250")
        assert flag_wake < 1.0, flag_wake
        assert mail_wake < 1.0, mail_wake
        # Clean up for the other scenarios.
        other.ok("UID STORE 2 -FLAGS (\\Flagged)")
        other.ok("UID SEARCH SUBJECT \"wake up\"")
        other.ok("LOGOUT")
        watcher.ok("LOGOUT")

    for name, fn in [
        ("Thunderbird: STARTTLS, COMPRESS=DEFLATE, header FETCH, IDLE", thunderbird),
        ("COMPRESS before login or of an unknown kind is refused", compress_refusals),
        ("Outlook: ID, IDLE before SELECT, STATUS", outlook),
        ("IDLE wakes within a second of a STORE and of a delivery", idle_wakes_within_a_second),
    ]:
        check(name, fn)
    sys.exit(summary())


if __name__ == "__main__":
    main()

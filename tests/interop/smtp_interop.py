#!/usr/bin/env python3
"""Interop: Python's smtplib against a running petrel daemon.

Started by tests/interop.rs, which runs the daemon on a loopback port and
passes: --port, --petrel (the binary) and --config. Every check talks to the
real daemon; message bytes are read back with `petrel mailbox`.
Prints one line per check and a closing "N passed, N failed" line.
"""
import argparse
import json
import os
import shutil
import smtplib
import ssl
import subprocess
import sys
import time
from email.message import EmailMessage

from scenarios import check, summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--petrel", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--submission-port", type=int, required=True)
    ap.add_argument("--password", required=True)
    a = ap.parse_args()

    def petrel(*args):
        return subprocess.run([a.petrel, "-c", a.config, *args], capture_output=True, check=True).stdout

    def mailbox(name):
        out = petrel("mailbox", name, "--json").decode()
        return [json.loads(line) for line in out.splitlines()]

    def wait_mailbox(name, n, limit=10.0):
        end = time.time() + limit
        while time.time() < end:
            m = mailbox(name)
            if len(m) >= n:
                return m
            time.sleep(0.05)
        raise AssertionError(f"{name} has {len(mailbox(name))} messages, wanted {n}")

    def connect():
        s = smtplib.SMTP("127.0.0.1", a.port, local_hostname="interop.test", timeout=20)
        s.ehlo()
        return s

    def extensions():
        s = connect()
        for ext in ("pipelining", "size", "8bitmime", "enhancedstatuscodes", "smtputf8"):
            assert s.has_extn(ext), f"{ext} not offered: {s.esmtp_features}"
        assert int(s.esmtp_features["size"]) == 26214400
        assert s.noop()[0] == 250
        assert s.verify("alice")[0] == 252
        s.quit()

    def send_message_arrives_intact():
        msg = EmailMessage()
        msg["From"] = "carol@partner.test"
        msg["To"] = "alice@example.test, bob@example.test"
        msg["Subject"] = "interop"
        msg["Message-ID"] = "<interop-1@partner.test>"
        msg.set_content("Hello from smtplib.\n.leading dot line\n")
        s = connect()
        refused = s.send_message(msg)
        s.quit()
        assert refused == {}, refused
        for box in ("alice", "bob"):
            m = wait_mailbox(box, 1)
            mine = [x for x in m if x["message_id"] == "<interop-1@partner.test>"]
            assert len(mine) == 1, m
            raw = petrel("mailbox", box, "--uid", str(mine[0]["uid"]))
            sent = msg.as_bytes().replace(b"\n", b"\r\n")
            assert raw.endswith(sent), (raw[-200:], sent[-200:])
            assert b"\r\n.leading dot line\r\n" in raw

    def unknown_user_refused():
        s = connect()
        try:
            s.sendmail("carol@partner.test", ["nobody@example.test"], b"Subject: x\r\n\r\nx\r\n")
            raise AssertionError("accepted an unknown user")
        except smtplib.SMTPRecipientsRefused as e:
            code, text = e.recipients["nobody@example.test"]
            assert code == 550 and text.startswith(b"5.1.1"), (code, text)
        s.quit()

    def relay_refused():
        s = connect()
        try:
            s.sendmail("carol@partner.test", ["victim@elsewhere.test"], b"Subject: x\r\n\r\nx\r\n")
            raise AssertionError("relayed for a stranger")
        except smtplib.SMTPRecipientsRefused as e:
            code, text = e.recipients["victim@elsewhere.test"]
            assert code == 554 and b"Relay access denied" in text, (code, text)
        s.quit()

    def eight_bit_and_smtputf8():
        body = "Subject: caf\u00e9\r\nMessage-ID: <interop-utf8@partner.test>\r\n\r\nGr\u00fc\u00dfe \u2603\r\n".encode()
        s = connect()
        s.sendmail("j\u00f6rg@partner.test", ["support@example.test"], body, mail_options=["BODY=8BITMIME", "SMTPUTF8"])
        s.quit()
        m = wait_mailbox("support", 1)
        raw = petrel("mailbox", "support", "--uid", str(m[-1]["uid"]))
        assert raw.endswith(body), raw[-100:]
        assert "Return-Path: <j\u00f6rg@partner.test>".encode() in raw

    def oversize_refused():
        s = connect()
        code, text = s.mail("carol@partner.test", ["SIZE=999999999"])
        assert code == 552 and text.startswith(b"5.3.4"), (code, text)
        s.quit()

    def many_messages_one_session():
        s = connect()
        for i in range(20):
            s.sendmail("carol@partner.test", ["bob@example.test"], f"Subject: n{i}\r\nMessage-ID: <bulk-{i}@p.test>\r\n\r\n{i}\r\n")
        s.quit()
        wait_mailbox("bob", 21)

    def unverified():
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the test server's certificate is self-signed
        return ctx

    def submission_with_auth_over_starttls():
        s = smtplib.SMTP("127.0.0.1", a.submission_port, local_hostname="interop.test", timeout=20)
        s.ehlo()
        assert s.has_extn("starttls") and not s.has_extn("auth"), s.esmtp_features
        s.starttls(context=unverified())
        s.ehlo()
        assert "PLAIN" in s.esmtp_features.get("auth", ""), s.esmtp_features
        try:
            s.login("alice", "wrong password")
            raise AssertionError("a wrong password was accepted")
        except smtplib.SMTPAuthenticationError as e:
            assert e.smtp_code == 535, e
        s.login("alice", a.password)
        msg = EmailMessage()
        msg["From"] = "alice@example.test"
        msg["To"] = "bob@example.test"
        msg["Subject"] = "submitted with smtplib"
        msg.set_content("via submission\n")
        assert s.send_message(msg) == {}
        s.quit()
        m = wait_mailbox("bob", 22)
        raw = petrel("mailbox", "bob", "--uid", str(m[-1]["uid"]))
        assert b"with ESMTPSA id" in raw and b"Message-ID: <" in raw, raw[:400]

    def swaks_submission():
        if not shutil.which("swaks"):
            assert not os.environ.get("CI"), "swaks is not installed, and CI is set"
            print("     (swaks not installed: skipped outside CI)")
            return
        out = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{a.submission_port}", "--tls", "--auth", "PLAIN",
             "--auth-user", "alice", "--auth-password", a.password,
             "--from", "alice@example.test", "--to", "support@example.test",
             "--header", "Subject: via swaks", "--body", "sent by swaks"],
            capture_output=True, timeout=60)
        assert out.returncode == 0, (out.stdout.decode()[-1500:], out.stderr.decode()[-500:])
        m = wait_mailbox("support", 2)
        raw = petrel("mailbox", "support", "--uid", str(m[-1]["uid"]))
        assert b"Subject: via swaks" in raw and b"sent by swaks" in raw, raw[:400]

    check("ehlo advertises the extensions", extensions)
    check("send_message to two users arrives byte for byte", send_message_arrives_intact)
    check("unknown local user refused with 550 5.1.1", unknown_user_refused)
    check("relay for a stranger refused with 554 5.7.1", relay_refused)
    check("8BITMIME and SMTPUTF8 content arrives intact", eight_bit_and_smtputf8)
    check("SIZE over the limit refused with 552 5.3.4", oversize_refused)
    check("twenty messages in one session", many_messages_one_session)
    check("submission with AUTH over STARTTLS (smtplib)", submission_with_auth_over_starttls)
    check("submission with AUTH over STARTTLS (swaks)", swaks_submission)

    return summary()


if __name__ == "__main__":
    sys.exit(main())

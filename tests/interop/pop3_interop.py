#!/usr/bin/env python3
"""Interop: Python's poplib (and fetchmail, where installed) against a
running petrel POP3 service. Started by tests/pop3.rs with the daemon's
ports, alice's password and the petrel binary; message bytes are compared
with what `petrel mailbox` holds. Prints a closing "N passed, N failed".
"""
import argparse
import base64
import json
import os
import poplib
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

from scenarios import check, summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pop3", type=int, required=True)
    ap.add_argument("--pop3s", type=int, required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--petrel", required=True)
    ap.add_argument("--config", required=True)
    a = ap.parse_args()

    def petrel(*args):
        return subprocess.run([a.petrel, "-c", a.config, *args], capture_output=True, check=True).stdout

    def mailbox(name):
        return [json.loads(l) for l in petrel("mailbox", name, "--json").decode().splitlines()]

    def ctx():
        c = ssl.create_default_context()
        c.check_hostname = False
        c.verify_mode = ssl.CERT_NONE  # self-signed test certificate
        return c

    def tls_session(user="alice"):
        p = poplib.POP3("127.0.0.1", a.pop3, timeout=20)
        p.stls(context=ctx())
        p.user(user)
        p.pass_(a.password)
        return p

    def retr(p, n):
        resp, lines, octets = p.retr(n)
        return b"\r\n".join(lines) + b"\r\n", octets

    def plaintext_refused_before_stls():
        p = poplib.POP3("127.0.0.1", a.pop3, timeout=20)
        caps = p.capa()
        assert "STLS" in caps and "USER" not in caps, caps
        try:
            p.user("alice")
            raise AssertionError("USER accepted before STLS")
        except poplib.error_proto as e:
            assert b"[AUTH]" in e.args[0], e
        p.stls(context=ctx())
        caps = p.capa()
        assert "USER" in caps and "STLS" not in caps and "UIDL" in caps, caps
        p.quit()

    def wrong_password_refused():
        p = poplib.POP3("127.0.0.1", a.pop3, timeout=20)
        p.stls(context=ctx())
        p.user("alice")
        try:
            p.pass_("wrong")
            raise AssertionError("a wrong password was accepted")
        except poplib.error_proto as e:
            assert b"[AUTH]" in e.args[0], e
        p.quit()

    def retr_matches_the_mailbox_byte_for_byte():
        boxed = mailbox("alice")
        p = tls_session()
        count, size = p.stat()
        assert count == len(boxed) == 3, (count, boxed)
        assert size == sum(m["size"] for m in boxed), (size, boxed)
        for i, m in enumerate(boxed, start=1):
            got, octets = retr(p, i)
            want = petrel("mailbox", "alice", "--uid", str(m["uid"]))
            assert got == want, (got[-120:], want[-120:])
            assert len(want) == m["size"]
        resp, lines, _ = p.top(1, 0)
        assert lines[-1] == b"" and any(l.startswith(b"Subject:") for l in lines), lines
        p.quit()

    def second_session_gets_in_use():
        p = tls_session()
        q = poplib.POP3("127.0.0.1", a.pop3, timeout=20)
        q.stls(context=ctx())
        q.user("alice")
        try:
            q.pass_(a.password)
            raise AssertionError("two sessions held the mailbox")
        except poplib.error_proto as e:
            assert b"[IN-USE]" in e.args[0], e
        q.quit()
        p.quit()

    def dropped_connection_deletes_nothing():
        p = tls_session()
        p.dele(1)
        p.sock.close()  # no QUIT: no UPDATE state
        time.sleep(0.3)
        assert len(mailbox("alice")) == 3

    def dele_rset_and_quit():
        p = tls_session()
        before = [l.split()[1] for l in p.uidl()[1]]
        p.dele(1)
        p.rset()
        p.dele(1)
        try:
            p.retr(1)
            raise AssertionError("a deleted message was retrieved")
        except poplib.error_proto:
            pass
        p.quit()
        assert len(mailbox("alice")) == 2
        q = tls_session()
        after = [l.split()[1] for l in q.uidl()[1]]
        q.quit()
        assert after == before[1:], (before, after)

    def implicit_tls_with_auth_plain():
        p = poplib.POP3_SSL("127.0.0.1", a.pop3s, timeout=20, context=ctx())
        token = base64.b64encode(b"\0alice\0" + a.password.encode()).decode()
        resp = p._shortcmd("AUTH PLAIN " + token)
        assert resp.startswith(b"+OK"), resp
        assert p.stat()[0] == 2
        p.quit()

    def shared_mailbox_by_user_plus_name():
        p = tls_session("alice+support")
        assert p.stat()[0] == 1
        got, _ = retr(p, 1)
        assert b"Subject: for support" in got
        p.quit()
        try:
            tls_session("bob+support")
            raise AssertionError("bob read a mailbox he is not a reader of")
        except poplib.error_proto as e:
            assert b"[AUTH]" in e.args[0], e

    def garbage_gets_err():
        s = socket.create_connection(("127.0.0.1", a.pop3), timeout=20)
        f = s.makefile("rb")
        assert f.readline().startswith(b"+OK")
        for junk in (b"RETR 1\r\n", b"X" * 5000 + b"\r\n", b"\x00\xff\r\n", b"LIST\r\n", b"PASS nope\r\n"):
            s.sendall(junk)
            line = f.readline()
            assert line.startswith(b"-ERR"), (junk[:10], line)
        s.sendall(b"QUIT\r\n")
        assert f.readline().startswith(b"+OK")
        s.close()

    def fetchmail_over_stls():
        if not shutil.which("fetchmail"):
            assert not os.environ.get("CI"), "fetchmail is not installed, and CI is set"
            print("     (fetchmail not installed: skipped outside CI)")
            return
        boxed = mailbox("alice")
        wants = [petrel("mailbox", "alice", "--uid", str(m["uid"])) for m in boxed]
        with tempfile.TemporaryDirectory() as d:
            rc = os.path.join(d, "fetchmailrc")
            with open(rc, "w") as f:
                f.write(
                    f"set no bouncemail\n"
                    f"poll 127.0.0.1 service {a.pop3} protocol pop3 auth password\n"
                    f"  user \"alice\" there with password \"{a.password}\" is \"root\" here\n"
                    f"  sslproto \"tls1.2+\" no sslcertck keep\n"
                    f"  mda \"/bin/sh -c 'cat > {d}/msg.$$'\"\n"
                )
            os.chmod(rc, 0o600)
            out = subprocess.run(["fetchmail", "-f", rc, "--nosyslog", "--nodetach", "-v", "--pidfile", os.path.join(d, "pid")],
                                 capture_output=True, timeout=60, env={**os.environ, "HOME": d})
            log = (out.stdout + out.stderr).decode(errors="replace")
            assert out.returncode == 0, log[-2000:]
            assert "STLS" in log, log[-2000:]
            got = [open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d)) if n.startswith("msg.")]
            assert len(got) == len(wants), (len(got), log[-1500:])
            def without_fetchmail_trace(m):
                # fetchmail inserts one Received: field of its own (after
                # Return-Path and Delivered-To); remove exactly that field.
                lines = m.split(b"\n")
                for i, l in enumerate(lines):
                    if l.startswith(b"Received: ") and b"fetchmail" in b"\n".join(lines[i:i + 3]):
                        j = i + 1
                        while j < len(lines) and lines[j][:1] in (b" ", b"\t"):
                            j += 1
                        return b"\n".join(lines[:i] + lines[j:])
                return m
            cleaned = [without_fetchmail_trace(g) for g in got]
            for w in wants:
                # fetchmail hands the MDA LF line ends.
                w_lf = w.replace(b"\r\n", b"\n")
                assert w_lf in cleaned, (w_lf[:300], [c[:300] for c in cleaned])
        assert len(mailbox("alice")) == len(boxed), "fetchmail with keep deleted nothing"

    check("plain text login refused before STLS; CAPA after STLS", plaintext_refused_before_stls)
    check("wrong password refused with [AUTH]", wrong_password_refused)
    check("STAT, RETR and TOP match the mailbox byte for byte", retr_matches_the_mailbox_byte_for_byte)
    check("a second session gets [IN-USE]", second_session_gets_in_use)
    check("a dropped connection deletes nothing", dropped_connection_deletes_nothing)
    check("DELE, RSET, QUIT delete only at QUIT; UIDL stable", dele_rset_and_quit)
    check("POP3S with AUTH PLAIN", implicit_tls_with_auth_plain)
    check("user+mailbox opens a shared mailbox for its readers only", shared_mailbox_by_user_plus_name)
    check("garbage, long lines, NUL and out-of-state commands get -ERR", garbage_gets_err)
    check("fetchmail fetches over STLS, bytes intact", fetchmail_over_stls)

    return summary()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Synchronising clients against a running petrel IMAP service: mbsync
(isync) both ways — new mail, flags, deletions, a folder created on either
side — and offlineimap3 pulling every folder over implicit TLS. Started by
tests/imap.rs with three messages in alice's INBOX; imaplib looks at the
server side. Prints a closing "N passed, N failed".
"""
import argparse
import imaplib
import os
import re
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time

from scenarios import check, summary


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    if p.returncode != 0:
        raise AssertionError(f"{cmd[0]} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def maildir(path):
    """UID (from mbsync's ,U= or offlineimap's ,U=) → maildir flags, for
    the messages in a maildir folder."""
    out = {}
    for sub in ("cur", "new"):
        d = os.path.join(path, sub)
        if not os.path.isdir(d):
            continue
        for f in os.listdir(d):
            m = re.search(r",U=(\d+)", f)
            flags = f.split(":2,", 1)[1] if ":2," in f else ""
            out[int(m.group(1)) if m else f] = (flags, os.path.join(d, f))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--imap", type=int, required=True)
    ap.add_argument("--imaps", type=int, required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--smtp", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--petrel", required=True)
    ap.add_argument("--config", required=True)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="petrel-sync-")

    def server():
        c = ssl.create_default_context()
        c.check_hostname = False
        c.verify_mode = ssl.CERT_NONE  # self-signed test certificate
        m = imaplib.IMAP4("127.0.0.1", a.imap, timeout=20)
        m.starttls(ssl_context=c)
        m.login("alice", a.password)
        return m

    def uids(m, folder):
        """UID → flags on the server."""
        typ, _ = m.select(f'"{folder}"')
        assert typ == "OK", folder
        typ, data = m.uid("FETCH", "1:*", "(FLAGS)")
        out = {}
        for d in data:
            if d is None:
                continue
            u = re.search(rb"UID (\d+)", d)
            fl = re.search(rb"FLAGS \(([^)]*)\)", d)
            assert u and fl, d
            out[int(u.group(1))] = fl.group(1).decode()
        return out

    rc = os.path.join(work, "mbsyncrc")
    local = os.path.join(work, "mail")
    os.makedirs(local)
    with open(rc, "w") as f:
        f.write(f"""IMAPAccount petrel
Host 127.0.0.1
Port {a.imap}
User alice
Pass "{a.password}"
SSLType STARTTLS
CertificateFile {a.cert}

IMAPStore remote
Account petrel

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns * !Shared*
Create Both
Remove None
Expunge Both
SyncState *
""")

    def mbsync():
        return run(["mbsync", "-c", rc, "-a"])

    def first_pull():
        mbsync()
        inbox = maildir(os.path.join(local, "INBOX"))
        assert len(inbox) == 3, inbox
        for folder in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
            assert os.path.isdir(os.path.join(local, folder, "cur")), folder

    def server_changes_reach_the_laptop():
        m = server()
        m.select("INBOX")
        typ, _ = m.uid("STORE", "1", "+FLAGS", "(\\Flagged)")
        assert typ == "OK"
        m.create("Work")
        typ, _ = m.append("Work", "(\\Seen)", None,
                          b"Subject: plan\r\nFrom: boss@example.test\r\n\r\nthe plan\r\n")
        assert typ == "OK"
        m.logout()
        s = smtplib.SMTP("127.0.0.1", a.smtp, timeout=20)
        s.sendmail("late@partner.test", ["alice@example.test"],
                   b"Subject: fourth\r\nFrom: late@partner.test\r\n\r\nfour\r\n")
        s.quit()
        deadline = time.monotonic() + 10
        while True:  # until local delivery has filed it
            m = server()
            n = len(uids(m, "INBOX"))
            m.logout()
            if n == 4 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        mbsync()
        inbox = maildir(os.path.join(local, "INBOX"))
        assert len(inbox) == 4, inbox
        assert "F" in inbox[1][0], inbox[1]
        work_box = maildir(os.path.join(local, "Work"))
        assert len(work_box) == 1 and "S" in list(work_box.values())[0][0], work_box

    def laptop_changes_reach_the_server():
        inbox = maildir(os.path.join(local, "INBOX"))
        # Read message 2: add S to its maildir flags.
        flags, path = inbox[2]
        os.rename(path, path.split(":2,")[0] + ":2," + "".join(sorted(flags + "S")))
        # Delete message 3.
        os.unlink(inbox[3][1])
        # A new folder with one message.
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(local, "Work", "Local", sub))
        with open(os.path.join(local, "Work", "Local", "new", "1.local.host"), "wb") as f:
            f.write(b"Subject: written offline\r\nFrom: alice@example.test\r\n\r\nnotes\r\n")
        mbsync()
        m = server()
        got = uids(m, "INBOX")
        assert 3 not in got and len(got) == 3, got
        assert "\\Seen" in got[2], got
        assert "\\Flagged" in got[1], got
        sub = uids(m, "Work/Local")
        assert len(sub) == 1, sub
        typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert b"written offline" in data[0][1], data
        m.logout()

    def a_second_run_changes_nothing():
        before = {f: maildir(os.path.join(local, f)) for f in ("INBOX", "Work", "Work/Local")}
        p = mbsync()
        after = {f: maildir(os.path.join(local, f)) for f in ("INBOX", "Work", "Work/Local")}
        assert before == after, (before, after, p.stdout)
        m = server()
        assert len(uids(m, "INBOX")) == 3
        m.logout()

    def offlineimap_pulls_every_folder():
        fp = run(["openssl", "x509", "-in", a.cert, "-noout", "-fingerprint", "-sha256"]).stdout
        fingerprint = fp.strip().split("=", 1)[1].replace(":", "").lower()
        oi = os.path.join(work, "offlineimap")
        os.makedirs(oi)
        conf = os.path.join(oi, "offlineimaprc")
        with open(conf, "w") as f:
            f.write(f"""[general]
accounts = petrel
metadata = {oi}/meta
ui = basic

[Account petrel]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {oi}/mail

[Repository remote]
type = IMAP
remotehost = 127.0.0.1
remoteport = {a.imaps}
remoteuser = alice
remotepass = {a.password}
ssl = yes
cert_fingerprint = {fingerprint}
folderfilter = lambda f: not f.startswith('Shared')
""")
        run(["offlineimap", "-c", conf, "-o", "-u", "basic"])
        inbox = maildir(os.path.join(oi, "mail", "INBOX"))
        assert len(inbox) == 3, inbox
        assert any("S" in fl for fl, _ in inbox.values()), inbox
        work_dir = os.path.join(oi, "mail", "Work")
        assert len(maildir(work_dir)) == 1, os.listdir(os.path.join(oi, "mail"))
        # A flag set locally goes back to the server.
        uid, (flags, path) = sorted(inbox.items())[0]
        os.rename(path, path.split(":2,")[0] + ":2," + "".join(sorted(set(flags + "R"))))
        run(["offlineimap", "-c", conf, "-o", "-u", "basic"])
        m = server()
        assert "\\Answered" in uids(m, "INBOX")[uid]
        m.logout()

    for name, fn in [
        ("mbsync: first pull of INBOX and the special-use folders", first_pull),
        ("mbsync: new mail, a flag and a folder made on the server", server_changes_reach_the_laptop),
        ("mbsync: a flag, a deletion and a folder made on the laptop", laptop_changes_reach_the_server),
        ("mbsync: a second run changes nothing", a_second_run_changes_nothing),
        ("offlineimap3: every folder over implicit TLS, a flag back", offlineimap_pulls_every_folder),
    ]:
        check(name, fn)
    sys.exit(summary())


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""petrel's message store and IMAP against Dovecot, same machine, same run,
alternately (issue 12, item 4). Called by benches/imap_compare.sh, which
builds petrel and the load driver (benches/imap_load.rs) in release mode.

  delivery  4 KiB messages over 20 SMTP sessions, a new connection per
            message (smtp-source), into one local mailbox: petrel alone,
            against Postfix delivering to Dovecot over LMTP. End to end is
            until the last `status=sent` line of the MTA's log (petrel
            writes it after the store's group commit; Postfix after
            Dovecot's LMTP 250, which Dovecot sends after its fsync).
  mixed     10 and 100 IMAP clients, one user each, 200 × 4 KiB messages
            per INBOX, for SECONDS: SELECT, FETCH 1:* FLAGS, FETCH
            ENVELOPE, FETCH BODY.PEEK[], STORE, APPEND, UID STORE \\Deleted
            + UID EXPUNGE, IDLE + DONE; operations per second and p50/p99
            latency (from the driver), CPU per operation and peak PSS of
            the server's process tree.
  big       one INBOX of BIG (100,000) 1 KiB messages (petrel: pipelined
            APPEND; Dovecot: the files written into its Maildir, since its
            APPEND fsyncs each message and takes over ten minutes for this;
            its first EXAMINE then indexes them): SELECT, UID FETCH
            1:* (FLAGS), SEARCH SUBJECT and FROM, and a QRESYNC SELECT
            after 100 flag changes by another session (the FETCHes it
            returns are counted).

Dovecot runs as a private instance (own configuration and directories,
Maildir, loopback only, ssl off, its high-performance login mode as its
documentation recommends for busy servers); petrel with its defaults and
the embedded store. Both serve plain IMAP (no TLS: the cost compared is the
store's and the protocol's). RUNS (default 3) runs each, median (min-max).
Everything started is stopped; every wait is bounded.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (process-tree CPU and PSS, Postfix's private instance)
from compare import cpu_ms, free_port, rss_kib, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
PETREL = os.environ.get("PETREL", os.path.join(TARGET, "release", "petrel"))
LOAD = os.environ["IMAP_LOAD"]
RUNS = int(os.environ.get("RUNS", "3"))
PARTS = os.environ.get("PARTS", "delivery mixed big").split()
SECONDS = int(os.environ.get("SECONDS_PER_RUN", "20"))
CLIENTS = [int(c) for c in os.environ.get("CLIENTS", "10 100").split()]
BIG = int(os.environ.get("BIG", "100000"))
SERVERS = os.environ.get("SERVERS", "dovecot petrel").split()  # big only
DELIVERIES = int(os.environ.get("DELIVERIES", "5000"))
PASSWORD = "bench secret"
USERS = max(CLIENTS)
LIMIT = 600


class Sampler:
    """Peak PSS of some process trees, every 50 ms, while it runs."""

    def __init__(self, roots):
        self.roots, self.peak, self.done = roots, 0, threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.done.is_set():
            self.peak = max(self.peak, sum(rss_kib(r) for r in self.roots))
            time.sleep(0.05)

    def stop(self):
        self.done.set()
        self.t.join()
        return self.peak / 1024.0


def count_in(path, needle):
    try:
        with open(path, "rb") as f:
            return f.read().count(needle)
    except OSError:
        return 0


def wait_count(path, needle, n, limit=LIMIT):
    end = time.time() + limit
    while count_in(path, needle) < n:
        if time.time() > end:
            raise RuntimeError(f"{path}: {count_in(path, needle)} of {n} {needle!r} after {limit}s")
        time.sleep(0.02)


class Dovecot:
    name = "dovecot"

    def __init__(self, users):
        self.dir = tempfile.mkdtemp(prefix="dovecotbench.")
        os.chmod(self.dir, 0o755)
        for d in ("run", "state", "mail", "home"):
            os.makedirs(os.path.join(self.dir, d))
        with open(os.path.join(self.dir, "passwd"), "w") as f:
            for u in users:
                f.write(f"{u}:{{PLAIN}}{PASSWORD}\n")
        for d in ("mail", "home"):
            subprocess.run(["chown", "-R", "65534:65534", os.path.join(self.dir, d)], check=True)
        self.port, self.lmtp = free_port(), free_port()
        r = self.dir
        self.conf = os.path.join(r, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(f"""base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
hostname = localhost
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 0
first_valid_gid = 0
mail_location = maildir:{r}/mail/%u
mail_max_userip_connections = 1000
default_client_limit = 4000
namespace inbox {{
  inbox = yes
  separator = /
}}
passdb {{
  driver = passwd-file
  args = {r}/passwd
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={r}/home/%u allow_all_users=yes
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  service_count = 0
  process_min_avail = 2
}}
service imap {{
  process_limit = 1024
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.lmtp}
  }}
}}
""")
        st = subprocess.run(["/usr/sbin/dovecot", "-c", self.conf], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if st.returncode != 0:
            sys.exit("dovecot did not start:\n" + open(os.path.join(r, "dovecot.log")).read()[-2000:])
        wait_port(self.port)
        wait_port(self.lmtp)
        pidfile = os.path.join(r, "run", "master.pid")
        end = time.time() + 10
        while not os.path.exists(pidfile) and time.time() < end:  # written after it listens
            time.sleep(0.02)
        self.root = int(open(pidfile).read().split()[0])
        self.roots = [self.root]

    def write_maildir(self, user, count):
        """`count` messages as files in `user`'s INBOX, the same text
        imap_load APPENDs to petrel."""
        cur = os.path.join(self.dir, "mail", user, "cur")
        for d in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(self.dir, "mail", user, d), exist_ok=True)
        t0 = time.time()
        for i in range(count):
            with open(os.path.join(cur, f"{1796000000 + i}.M{i}P1.bench:2,"), "wb") as f:
                f.write(message(i, 1024))
        subprocess.run(["chown", "-R", "65534:65534", os.path.join(self.dir, "mail")], check=True)
        return time.time() - t0

    def stop(self):
        subprocess.run(["/usr/sbin/dovecot", "-c", self.conf, "stop"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        end = time.time() + 20
        while os.path.exists(f"/proc/{self.root}") and time.time() < end:
            time.sleep(0.05)
        shutil.rmtree(self.dir, ignore_errors=True)


class PostfixDovecot:
    """Postfix in front, delivering over LMTP into Dovecot."""
    name = "postfix+dovecot"

    def __init__(self):
        self.dovecot = Dovecot(["user"])
        self.postfix = compare.Postfix(9, extra=f"""mydestination =
virtual_mailbox_domains = example.test
virtual_transport = lmtp:inet:127.0.0.1:{self.dovecot.lmtp}
smtpd_reject_unlisted_recipient = no
""", services="lmtp      unix  -       -       n       -       -       lmtp\n")
        self.port = self.postfix.port
        self.roots = [self.postfix.root, self.dovecot.root]
        self.log_path = os.path.join(self.postfix.dir, "maillog")

    def stop(self):
        self.postfix.stop()
        self.dovecot.stop()


def petrel_config(d, port, imap, users, password_hash, hostname="petrel-bench.test", extra=""):
    """A petrel configuration: SMTP on `port`, plain IMAP on `imap`, the
    spool in `d`, `users` with one password hash; `extra` appended."""
    text = f"""[server]
hostname = "{hostname}"
spool = "{d}/spool"
postmaster = "{users[0]}@example.test"
[domains]
primary = "example.test"
[[listeners]]
name = "mx"
protocol = "smtp"
bind = "127.0.0.1:{port}"
[[listeners]]
name = "imap"
protocol = "imap"
bind = "127.0.0.1:{imap}"
tls = "none"
[imap]
allow_plaintext_auth = true
max_connections = 2000
max_connections_per_client = 2000
[smtp.inbound]
max_connections_per_client = 1000
[dns]
nameservers = ["127.0.0.1:9"]
[log]
level = "info"
{extra}"""
    for u in users:
        text += f'[[users]]\nname = "{u}"\npassword = "{password_hash}"\naddresses = ["{u}@example.test"]\n'
    return text


class Petrel(compare.Petrel):
    """petrel with an IMAP listener and `users`; stopped as compare's."""

    def __init__(self, users):
        self.dir = tempfile.mkdtemp(prefix="petrelbench.")
        self.port, self.imap = free_port(), free_port()
        h = subprocess.run([PETREL, "hash-password"], input=PASSWORD, capture_output=True,
                           text=True, check=True).stdout.strip()
        cfg = os.path.join(self.dir, "petrel.toml")
        with open(cfg, "w") as f:
            f.write(petrel_config(self.dir, self.port, self.imap, users, h))
        self.cfg = cfg
        self.log_path = os.path.join(self.dir, "log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([PETREL, "-c", cfg, "serve"], stdout=subprocess.DEVNULL,
                                     stderr=self.log)
        wait_port(self.port)
        wait_port(self.imap)
        self.root = self.proc.pid
        self.roots = [self.root]


def message(i, size):
    """The message imap_load's `message` makes (benches/imap_load.rs)."""
    head = (f"From: Sender {i % 50} <sender{i % 50}@partner.test>\r\nTo: user@example.test\r\n"
            f"Subject: message {i} about topic {i % 97}\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{i}.bench@partner.test>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog, and again, and again.\r\n"
    n = max(0, (size - len(head)) // len(line))
    return head + line * n


def load(*args):
    out = subprocess.run([LOAD, *map(str, args)], capture_output=True, text=True, timeout=LIMIT)
    if out.returncode != 0:
        raise RuntimeError(f"imap_load {args[0]} failed:\n{out.stdout}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt(values, spec=".0f"):
    m = statistics.median(values)
    return f"{m:{spec}} ({min(values):{spec}}-{max(values):{spec}})"


def delivery():
    res = {"petrel": [], "postfix+dovecot": []}
    for _ in range(RUNS):
        for make in (PostfixDovecot, lambda: Petrel(["user"])):
            s = make()
            try:
                sampler = Sampler(s.roots)
                cpu0 = sum(cpu_ms(r) for r in s.roots)
                t0 = time.time()
                subprocess.run(["smtp-source", "-s", "20", "-l", "4096", "-m", str(DELIVERIES),
                                "-f", "load@partner.test", "-t", "user@example.test", "-M", "source.test",
                                f"127.0.0.1:{s.port}"], check=True, timeout=LIMIT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                wait_count(s.log_path, b"status=sent", DELIVERIES)
                t = time.time() - t0
                cpu = sum(cpu_ms(r) for r in s.roots) - cpu0
                peak = sampler.stop()
                res[s.name].append({"rate": DELIVERIES / t, "cpu": cpu / DELIVERIES, "pss": peak})
            finally:
                s.stop()
    print(f"\n## Local delivery: {DELIVERIES} × 4 KiB, 20 SMTP sessions, a new connection per message\n")
    print("| server | delivered msg/s | CPU ms/msg | peak PSS MiB |")
    print("| --- | --- | --- | --- |")
    for name, runs in res.items():
        print(f"| {name} | {fmt([r['rate'] for r in runs])} | {fmt([r['cpu'] for r in runs], '.2f')} "
              f"| {fmt([r['pss'] for r in runs])} |")
    ratio = statistics.median(r["rate"] for r in res["petrel"]) / statistics.median(
        r["rate"] for r in res["postfix+dovecot"])
    print(f"\npetrel / Postfix+Dovecot (LMTP): {ratio:.2f}×", flush=True)


def mixed():
    users = [f"u{i}" for i in range(USERS)]
    res = {(n, c): [] for n in ("petrel", "dovecot") for c in CLIENTS}
    for _ in range(RUNS):
        for make in (lambda: Dovecot(users), lambda: Petrel(users)):
            s = make()
            port = s.imap if s.name == "petrel" else s.port
            try:
                load("fill", port, PASSWORD, USERS, 200, 4096)
                for c in CLIENTS:
                    sampler = Sampler(s.roots)
                    cpu0 = sum(cpu_ms(r) for r in s.roots)
                    r = load("mixed", port, PASSWORD, c, SECONDS)
                    r["cpu"] = (sum(cpu_ms(x) for x in s.roots) - cpu0) / r["ops"]
                    r["pss"] = sampler.stop()
                    res[(s.name, c)].append(r)
            finally:
                s.stop()
    print(f"\n## Mixed IMAP workload, {SECONDS} s per run, 200 × 4 KiB per INBOX\n")
    print("| clients | server | ops/s | p50 ms | p99 ms | CPU ms/op | peak PSS MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for c in CLIENTS:
        for n in ("dovecot", "petrel"):
            runs = res[(n, c)]
            print(f"| {c} | {n} | {fmt([r['ops_per_s'] for r in runs])} | {fmt([r['p50_ms'] for r in runs], '.2f')} "
                  f"| {fmt([r['p99_ms'] for r in runs], '.2f')} | {fmt([r['cpu'] for r in runs], '.3f')} "
                  f"| {fmt([r['pss'] for r in runs])} |")
        ratio = statistics.median(r["ops_per_s"] for r in res[("petrel", c)]) / statistics.median(
            r["ops_per_s"] for r in res[("dovecot", c)])
        print(f"| {c} | petrel / Dovecot | {ratio:.2f}× | | | | |", flush=True)


def big():
    print(f"\n## One folder of {BIG} messages (1 KiB each), filled by pipelined APPEND\n")
    keys = ["select_ms", "fetch_flags_ms", "search_subject_ms", "search_from_ms", "qresync_ms"]
    print("| server | fill s | cold EXAMINE ms | " + " | ".join(keys) + " | FLAGS lines | SUBJECT / FROM hits | QRESYNC FETCHes |")
    print("| --- " * (len(keys) + 6) + "|")
    makers = {"dovecot": lambda: Dovecot(["big"]), "petrel": lambda: Petrel(["big"])}
    for make in (makers[n] for n in SERVERS):
        s = make()
        port = s.imap if s.name == "petrel" else s.port
        try:
            if s.name == "dovecot":
                s.write_maildir("big", BIG)
            runs = [load("big", port, PASSWORD, "big", BIG) for _ in range(RUNS)]
        finally:
            s.stop()
        last = runs[-1]
        print(f"| {s.name} | {runs[0]['fill_s']:.0f} | {runs[0]['cold_select_ms']:.0f} | " + " | ".join(fmt([r[k] for r in runs], ".1f") for k in keys)
              + f" | {last['fetch_flags_lines']} | {last['search_subject_hits']} / {last['search_from_hits']} "
              f"| {last['qresync_fetches']} |", flush=True)


def main():
    if os.geteuid() != 0:
        sys.exit("run as root: Postfix's master and Dovecot need it")
    os.environ["PATH"] += ":/usr/sbin"
    pf = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True).stdout.strip()
    dv = subprocess.run(["/usr/sbin/dovecot", "--version"], capture_output=True, text=True).stdout.strip()
    pv = subprocess.run([PETREL, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"# {pv} vs Dovecot {dv} (Maildir), Postfix {pf}; {os.cpu_count()} cores; "
          f"runs={RUNS}; {time.strftime('%Y-%m-%d')}; median (min-max)")
    for part in PARTS:
        {"delivery": delivery, "mixed": mixed, "big": big}[part]()


if __name__ == "__main__":
    main()

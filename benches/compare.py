#!/usr/bin/env python3
"""petrel vs Postfix, same machine, same run, alternately (issues 6, 17).

Two workloads (WORKLOAD=new|reused|both, default both):
  new      a new connection for every message (smtp-source without -d):
           an Internet MX's workload, where most senders connect, send one
           message and leave;
  reused   messages reuse their sessions (smtp-source -d): a relay's.

For each workload, message size and session count, each run starts
Postfix's smtp-sink on loopback (it exits after the last message), starts
the MTA under test relaying everything to it, injects with Postfix's
smtp-source, and measures:
  inject   messages / time until smtp-source is done (all 250s received)
  e2e      messages / time until smtp-sink has every message
  CPU      user+system ms per message of the MTA's processes (Postfix: the
           master, every child it reaped, and the live ones)
  memory   peak of the MTA's summed proportional set size (PSS), sampled
           every 50 ms
  batch    petrel only: messages per group commit (writers answered per
           flush+fdatasync, from `petrel status --json`)
Postfix runs as a private instance (own config and queue directories,
loopback, default durability: it fsyncs each queue file), DNS look-ups off.
petrel runs with its group commit (flush + fsync before each 250).
Everything started is stopped; every run is bounded (300 s).

Sender authentication (issue 14), AUTH=off|sign-ed25519|sign-rsa|
verify-ed25519|verify-rsa|sign|verify|all (several may be given, space or
comma separated; sign = both sign variants, verify = both verify
variants, all = the four; default off, which is the run above):
  sign-*    petrel relays for a trusted relay_from client (127.0.0.1/32)
            and DKIM-signs every message (From: load@example.test) with a
            [[dkim.keys]] key for example.test made by `petrel dkim
            keygen --algorithm ed25519|rsa2048`; the messages are
            smtp-source's own, as in the run without AUTH.
  verify-*  petrel is an edge: 127.0.0.1 is not trusted (relay_from = []),
            the recipient's domain example.test is a relay domain
            forwarded to the sink, checks spf/dkim/dmarc/arc = "enforce",
            and the message is ARC-sealed with a [[dkim.keys]] key for
            example.test. smtp-source -F sends one pre-formatted message
            (payload of SIZE octets) from load@sender.test, DKIM-signed
            beforehand by dkimpy (benches/support/bench_dkim.py, Debian's
            /usr/bin/python3 with python3-dkim) with a key for sender.test.
            dnsmasq (Debian's dnsmasq-base) on loopback, authoritative for
            test. (negative answers carry its SOA, so they can be cached),
            serves the DKIM key, "v=spf1 ip4:127.0.0.1 -all" and
            "v=DMARC1; p=reject" for sender.test; petrel's [dns] points at
            it, and the queries it answered are counted. The algorithm in the
            name is that of both keys (the sender's signature and the
            edge's ARC seal: an ARC set is two signatures).
Postfix gets the same messages in the same way and relays them without
milters (no signing, no checks). Before each variant's runs, one message
goes through petrel to an `smtp-sink -d` that keeps it, and the headers
petrel added are checked (and shown): the DKIM-Signature or the
Authentication-Results and ARC set, also verified by dkimpy.
PETREL=path: the petrel binary (default target/release/petrel, or
$CARGO_TARGET_DIR/release/petrel when that is set).
"""
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PETREL = os.environ.get("PETREL") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release", "petrel")
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with python3-dkim
RUNS = int(os.environ.get("RUNS", "3"))
SIZES = [int(s) for s in os.environ.get("SIZES", "1024 4096 65536").split()]
SESSIONS = [int(s) for s in os.environ.get("SESSIONS", "1 20 100").split()]
WORKLOADS = {"both": ["new", "reused"], "new": ["new"], "reused": ["reused"]}[os.environ.get("WORKLOAD", "both")]
LIMIT = 300
HZ = os.sysconf("SC_CLK_TCK")


def messages_for(size, sessions):
    scale = float(os.environ.get("SCALE", "1"))
    if size >= 65536:
        n = 1000 if sessions == 1 else 2000
    else:
        n = 2000 if sessions == 1 else 5000
    return max(int(n * scale), sessions)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, limit=30):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def proc_stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields
    except OSError:
        return None


def children(pid):
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            st = proc_stat(p)
            if st and int(st[1]) == pid:
                out.append(int(p))
    return out


def tree(pid):
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(children(p))
    return pids


def cpu_ms(root):
    """utime+stime of the tree, plus the reaped children's times."""
    total = 0
    for p in tree(root):
        st = proc_stat(p)
        if st:
            total += int(st[11]) + int(st[12]) + int(st[13]) + int(st[14])
    return total * 1000.0 / HZ


def rss_kib(root):
    """Proportional set size of the tree: shared pages (Postfix's many
    processes share libraries) are divided among their users, not counted
    once per process."""
    total = 0
    for p in tree(root):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class Postfix:
    name = "postfix"

    def __init__(self, sink_port, extra="", services=""):
        """`extra`: main.cf lines after the defaults (later lines win);
        `services`: more master.cf lines."""
        self.dir = tempfile.mkdtemp(prefix="pfbench.")
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        for d in ("etc", "queue", "data"):
            os.makedirs(os.path.join(self.dir, d))
        shutil.chown(os.path.join(self.dir, "data"), "postfix")
        with open(os.path.join(self.dir, "etc", "main.cf"), "w") as f:
            f.write(f"""compatibility_level = 3.6
queue_directory = {self.dir}/queue
data_directory = {self.dir}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink_port}
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtpd_recipient_restrictions = permit_mynetworks, reject
maillog_file = /dev/stdout
{extra}""")
        with open(os.path.join(self.dir, "etc", "master.cf"), "w") as f:
            f.write(f"""127.0.0.1:{self.port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
{services}""")
        # Postfix logs every message, as petrel does at `info`.
        self.log = open(os.path.join(self.dir, "maillog"), "w")
        self.proc = subprocess.Popen(["postfix", "-c", os.path.join(self.dir, "etc"), "start-fg"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port)
        except RuntimeError:
            sys.exit("Postfix did not start:\n" + open(os.path.join(self.dir, "maillog")).read()[-2000:])
        pidfile = os.path.join(self.dir, "queue", "pid", "master.pid")
        end = time.time() + 10
        while not os.path.exists(pidfile) and time.time() < end:
            time.sleep(0.05)
        self.root = int(open(pidfile).read().split()[0])

    def stop(self):
        subprocess.run(["postfix", "-c", os.path.join(self.dir, "etc"), "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Petrel:
    name = "petrel"

    def __init__(self, sink_port, auth=None):
        """`auth`: an `Auth` variant, whose configuration goes in."""
        auth = auth or Auth("off")
        self.dir = tempfile.mkdtemp(prefix="petrelbench.")
        self.port = free_port()
        cfg = os.path.join(self.dir, "petrel.toml")
        with open(cfg, "w") as f:
            f.write(f"""[server]
hostname = "petrel-bench.test"
spool = "{self.dir}/spool"
postmaster = "postmaster@bench.test"
[domains]
{auth.domains}
[[listeners]]
name = "mx"
protocol = "smtp"
bind = "127.0.0.1:{self.port}"
[smtp.inbound]
max_connections_per_client = 1000
{auth.inbound}
[smtp.outbound]
smarthost = "[127.0.0.1]:{sink_port}"
tls = "off"
[dns]
nameservers = ["{auth.nameserver}"]
[log]
level = "info"
{auth.sections}""")
        self.cfg = cfg
        self.log = open(os.path.join(self.dir, "log"), "w")
        self.proc = subprocess.Popen([PETREL, "-c", cfg, "serve"], stdout=subprocess.DEVNULL, stderr=self.log)
        wait_port(self.port)
        self.root = self.proc.pid

    def commits(self):
        """(group commits, writers answered) so far."""
        import json
        out = subprocess.run([PETREL, "-c", self.cfg, "status", "--json"], capture_output=True, text=True)
        try:
            j = json.loads(out.stdout)
            return j.get("commits", 0), j.get("commit_waiters", 0)
        except ValueError:
            return 0, 0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


AUTH_VARIANTS = ("off", "sign-ed25519", "sign-rsa", "verify-ed25519", "verify-rsa")
AUTH_GROUPS = {"sign": ["sign-ed25519", "sign-rsa"], "verify": ["verify-ed25519", "verify-rsa"],
               "all": ["sign-ed25519", "sign-rsa", "verify-ed25519", "verify-rsa"]}


def auth_variants():
    names = []
    for word in os.environ.get("AUTH", "off").replace(",", " ").split():
        for name in AUTH_GROUPS.get(word, [word]):
            if name not in AUTH_VARIANTS:
                sys.exit(f"AUTH: unknown variant {name} (one of {', '.join(AUTH_VARIANTS)}, sign, verify, all)")
            if name not in names:
                names.append(name)
    return names or ["off"]


def message_text(size, sender, recipient):
    """A message of `size` octets of payload in smtp-source's style (its
    `-l` payload does not count the header section either), CRLF."""
    head = (f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: petrel benchmark\r\n"
            f"Date: Thu, 03 Dec 2026 12:00:00 +0000\r\nMessage-ID: <bench.{size}@{sender.split('@')[1]}>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
    body, n = [], 0
    while n < size:
        line = (str(len(body) + 1) + "X" * 78)[:min(78, size - n - 2) if size - n > 2 else 1]
        body.append(line)
        n += len(line) + 2
    return (head + "\r\n".join(body) + "\r\n").encode()


class Auth:
    """One AUTH variant: petrel's configuration for it, the keys, the DNS
    server and the messages it needs (see the module's docstring)."""

    def __init__(self, name):
        self.name = name
        self.kind = name.split("-")[0]
        self.algorithm = {"ed25519": "ed25519", "rsa": "rsa2048"}.get(name.split("-")[-1])
        self.domains = 'primary = "example.test"'
        self.inbound = ""
        self.nameserver = "127.0.0.1:9"
        self.sections = ""
        self.dir = None
        self.dns = None
        self.dns_log = None
        self.records = {}
        self.messages = {}

    def describe(self):
        return {
            "off": "no signing, no checks",
            "sign": f"petrel DKIM-signs ({self.algorithm}) for a relay_from client; Postfix relays, no milter",
            "verify": f"petrel as an edge: SPF, DKIM ({self.algorithm} signatures), DMARC, ARC enforced, "
                      f"ARC-sealed ({self.algorithm}); Postfix relays, no milter",
        }[self.kind]

    def keygen(self, domain, selector):
        path = os.path.join(self.dir, f"{domain}.{selector}.key")
        out = subprocess.run([PETREL, "dkim", "keygen", "--domain", domain, "--selector", selector,
                              "--algorithm", self.algorithm, "--out", path],
                             capture_output=True, text=True, check=True).stdout
        # The record to publish: `NAME IN TXT ( "..." "..." )` or similar;
        # its text is the quoted strings joined.
        strings = re.findall(r'"([^"]*)"', out)
        txt = "".join(strings) if strings else out.split("TXT", 1)[-1].strip()
        if "p=" not in txt:
            sys.exit(f"petrel dkim keygen printed no record I can read:\n{out}")
        self.records[f"{selector}._domainkey.{domain}"] = txt
        return path

    def start(self):
        if self.kind == "off":
            return
        self.dir = tempfile.mkdtemp(prefix="petrelauth.")
        os.chmod(self.dir, 0o755)
        key = self.keygen("example.test", "bench")
        self.sections = f'[[dkim.keys]]\ndomain = "example.test"\nselector = "bench"\nkey = "{key}"\n'
        if self.kind == "sign":
            self.inbound = 'relay_from = ["127.0.0.1/32"]'
            return
        if not os.path.exists(SYSTEM_PYTHON) or subprocess.run(
                [SYSTEM_PYTHON, "-c", "import dkim"], capture_output=True).returncode != 0:
            sys.exit(f"AUTH={self.name} needs dkimpy in {SYSTEM_PYTHON} (apt-get install python3-dkim)")
        if not shutil.which("dnsmasq"):
            sys.exit(f"AUTH={self.name} needs dnsmasq (apt-get install dnsmasq-base)")
        self.domains = 'primary = "petrel-bench.test"\nrelay_domains = ["example.test"]'
        # Nobody is trusted: 127.0.0.1 (the default relay_from) gets checked.
        self.inbound = "relay_from = []"
        self.sections = ('[smtp.inbound.checks]\nspf = "enforce"\ndkim = "enforce"\n'
                         'dmarc = "enforce"\narc = "enforce"\n' + self.sections)
        self.sender_key = self.keygen("sender.test", "s1")
        self.records["sender.test"] = "v=spf1 ip4:127.0.0.1 -all"
        self.records["_dmarc.sender.test"] = "v=DMARC1; p=reject"
        port = free_port()
        self.dns_log = os.path.join(self.dir, "dnsmasq.log")
        args = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
                f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                "--pid-file=", "--user=root",
                # Authoritative for test.: a name it does not know gets
                # NXDOMAIN with the zone's SOA, whose minimum (auth-ttl)
                # a resolver may cache it for (RFC 2308), as a real
                # zone's servers answer. (With --local=/test/ instead,
                # dnsmasq answers NXDOMAIN without an SOA, which hickory
                # does not cache: DMARC's tree walk then asks for
                # _dmarc.test again and again.)
                "--auth-server=ns.test,127.0.0.1", "--auth-zone=test",
                "--auth-soa=1,hostmaster.test,1200,180,1209600", "--auth-ttl=3600", "--local-ttl=3600",
                "--log-queries", f"--log-facility={self.dns_log}"]
        for name, text in self.records.items():
            # Character-strings of at most 255 octets (RFC 1035 §3.3).
            parts = [text[i:i + 255] for i in range(0, len(text), 255)]
            # (dnsmasq takes them comma-separated, unquoted in argv.)
            args.append(f"--txt-record={name}," + ",".join(parts))
        self.dns = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        if self.dns.poll() is not None:
            sys.exit("dnsmasq did not start: " + self.dns.stderr.read())
        self.nameserver = f"127.0.0.1:{port}"

    def message(self, size):
        """The pre-signed message file for `smtp-source -F` (verify-*)."""
        if size not in self.messages:
            raw = os.path.join(self.dir, f"raw.{size}")
            with open(raw, "wb") as f:
                f.write(message_text(size, "load@sender.test", "someone@example.test"))
            out = os.path.join(self.dir, f"signed.{size}")
            subprocess.run([SYSTEM_PYTHON, os.path.join(ROOT, "benches", "support", "bench_dkim.py"),
                            "sign", raw, self.sender_key, "s1", "sender.test", out], check=True)
            self.messages[size] = out
        return self.messages[size]

    def source_args(self, size):
        if self.kind == "verify":
            return ["-F", self.message(size), "-f", "load@sender.test", "-t", "someone@example.test",
                    "-M", "source.test"]
        return ["-l", str(size), "-f", "load@example.test", "-t", "someone@remote.test", "-M", "source.test"]

    def dns_queries(self):
        try:
            return sum(1 for line in open(self.dns_log) if " query[" in line or " auth[" in line)
        except (OSError, TypeError):
            return 0

    def check(self, size):
        """One message through petrel to a sink that keeps it; the headers
        petrel added must show the work done. Prints what it found."""
        if self.kind == "off":
            return
        dump = tempfile.mkdtemp(prefix="petrelcheck.")
        os.chmod(dump, 0o777)
        sink_port = free_port()
        sink = subprocess.Popen(["smtp-sink", "-u", "nobody", "-d", f"{dump}/m.", "-M", "1",
                                 f"127.0.0.1:{sink_port}", "10"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(sink_port)
        mta = Petrel(sink_port, self)
        try:
            subprocess.run(["smtp-source", "-m", "1"] + self.source_args(size) + [f"127.0.0.1:{mta.port}"],
                           check=True, timeout=60, capture_output=True)
            sink.wait(timeout=60)
        except (subprocess.SubprocessError, OSError) as e:
            log = open(os.path.join(mta.dir, "log")).read()[-3000:]
            mta.stop()
            sys.exit(f"AUTH={self.name}: the check message did not get through ({e}):\n{log}")
        finally:
            if sink.poll() is None:
                sink.kill()
        log = open(os.path.join(mta.dir, "log")).read()
        mta.stop()
        files = os.listdir(dump)
        text = open(os.path.join(dump, files[0]), "rb").read().decode("utf-8", "replace") if files else ""
        head = text.split("\n\n", 1)[0]
        fields = []
        for line in head.split("\n"):
            if line[:1] in (" ", "\t") and fields:
                fields[-1] += " " + line.strip()
            else:
                fields.append(line)
        records = os.path.join(self.dir, "records.json")
        with open(records, "w") as f:
            json.dump(self.records, f)
        dkimpy = subprocess.run([SYSTEM_PYTHON, os.path.join(ROOT, "benches", "support", "bench_dkim.py"),
                                 "check", os.path.join(dump, files[0]) if files else "/dev/null", records],
                                capture_output=True, text=True).stdout.strip().splitlines()
        shutil.rmtree(dump, ignore_errors=True)
        shown = [f for f in fields if f.split(":", 1)[0].lower() in
                 ("dkim-signature", "authentication-results", "arc-seal", "arc-message-signature",
                  "arc-authentication-results")]
        print(f"# check AUTH={self.name}: one message through petrel, headers at the sink:")
        for f in shown:
            print("#   " + (f if f.lower().startswith(("authentication-results", "arc-authentication"))
                           else f[:110] + " ..."))
        for line in dkimpy:
            print("#   " + line)
        ar = next((f for f in fields if f.lower().startswith("authentication-results:")), "")
        if self.kind == "sign":
            want = [f"a={'ed25519' if self.algorithm == 'ed25519' else 'rsa'}-sha256", "d=example.test"]
            sig = next((f for f in fields if f.lower().startswith("dkim-signature:")), "")
            ok = all(w in sig for w in want) and "dkimpy: DKIM-Signature 0: pass" in dkimpy
        else:
            want = ["spf=pass", "dkim=pass", "dmarc=pass", "arc=none"]
            # dkimpy 1.1.4 verifies ARC sets made with RSA only ("unknown
            # signature algorithm: b'ed25519-sha256'"); an Ed25519 seal is
            # only required to be there.
            arc_ok = any(line.startswith("dkimpy: arc=pass") for line in dkimpy) or (
                self.algorithm == "ed25519" and any(f.lower().startswith("arc-seal:") and "cv=none" in f
                                                    for f in fields))
            ok = (all(w in ar for w in want) and any(f.lower().startswith("arc-seal:") for f in fields)
                  and "dkimpy: DKIM-Signature 0: pass" in dkimpy and arc_ok)
        if not ok:
            sys.exit(f"AUTH={self.name}: the check message lacks what it should carry:\n{text[:4000]}\n"
                     f"petrel's log:\n{log[-3000:]}")

    def stop(self):
        if self.dns is not None:
            self.dns.terminate()
            try:
                self.dns.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.dns.kill()
            self.dns = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def run_once(mta_class, size, sessions, count, workload, auth):
    sink_port = free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", "-M", str(count), f"127.0.0.1:{sink_port}", "1000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(sink_port)
    mta = mta_class(sink_port, auth) if mta_class is Petrel else mta_class(sink_port)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(mta.root))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        sampler.start()
        commits0 = mta.commits() if hasattr(mta, "commits") else (0, 0)
        cpu0 = cpu_ms(mta.root)
        reuse = ["-d"] if workload == "reused" else []
        t0 = time.time()
        subprocess.run(["smtp-source"] + reuse + ["-s", str(sessions), "-m", str(count)]
                       + auth.source_args(size) + [f"127.0.0.1:{mta.port}"], check=True, timeout=LIMIT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t1 = time.time()
        sink.wait(timeout=LIMIT)
        t2 = time.time()
        cpu1 = cpu_ms(mta.root)
        commits1 = mta.commits() if hasattr(mta, "commits") else (0, 0)
    finally:
        done.set()
        sampler.join()
        mta.stop()
        if sink.poll() is None:
            sink.kill()
    return {
        "inject": count / (t1 - t0),
        "e2e": count / (t2 - t0),
        "cpu": (cpu1 - cpu0) / count,
        "rss": peak[0] / 1024.0,
        # Writers per commit during the run (intake and local delivery
        # both wait on the group commit; relayed mail's results do not).
        "batch": (commits1[1] - commits0[1]) / max(commits1[0] - commits0[0], 1),
    }


def main():
    if os.geteuid() != 0:
        sys.exit("run as root: Postfix's master needs it")
    for tool in ("postfix", "smtp-source", "smtp-sink"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} is missing (apt-get install postfix)")
    os.environ["PATH"] += ":/usr/sbin"
    variants = auth_variants()
    with_auth = variants != ["off"]
    ver = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True).stdout.strip()
    print(f"# petrel vs Postfix {ver}; {os.cpu_count()} cores; runs={RUNS}; median (min-max)")
    if with_auth:
        print(f"# petrel: {PETREL}; AUTH={' '.join(variants)}")
    ratios = []
    for name in variants:
        auth = Auth(name)
        try:
            auth.start()
            if with_auth:
                print()
                print(f"## auth: {name} ({auth.describe()})")
                print("# load average before: %.2f %.2f %.2f" % os.getloadavg())
                auth.check(SIZES[0])
            queries0 = auth.dns_queries()
            petrel_runs = 0
            for workload in WORKLOADS:
                print()
                print(f"{'###' if with_auth else '##'} workload: {workload} "
                      f"({'a new connection per message' if workload == 'new' else 'sessions reused'})")
                print("| size | sessions | msgs | MTA | inject msg/s | end-to-end msg/s | CPU ms/msg | peak PSS MiB | msgs/commit |")
                print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
                for size in SIZES:
                    for sessions in SESSIONS:
                        count = messages_for(size, sessions)
                        res = {"postfix": [], "petrel": []}
                        for _ in range(RUNS):
                            for cls in (Postfix, Petrel):
                                res[cls.name].append(run_once(cls, size, sessions, count, workload, auth))
                            petrel_runs += 1
                        med = {}
                        for mta, runs in res.items():
                            m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                            lo = {k: min(r[k] for r in runs) for k in runs[0]}
                            hi = {k: max(r[k] for r in runs) for k in runs[0]}
                            med[mta] = m
                            batch = f"{m['batch']:.1f}" if mta == "petrel" else "-"
                            print(f"| {size} | {sessions} | {count} | {mta} | {m['inject']:.0f} ({lo['inject']:.0f}-{hi['inject']:.0f}) "
                                  f"| {m['e2e']:.0f} ({lo['e2e']:.0f}-{hi['e2e']:.0f}) | {m['cpu']:.2f} | {m['rss']:.0f} ({lo['rss']:.0f}-{hi['rss']:.0f}) | {batch} |", flush=True)
                        ratios.append((name, workload, size, sessions, med["petrel"]["e2e"] / med["postfix"]["e2e"],
                                       med["petrel"]["cpu"] / max(med["postfix"]["cpu"], 1e-9),
                                       med["petrel"]["rss"] / max(med["postfix"]["rss"], 1e-9)))
            if with_auth:
                print()
                print("# load average after: %.2f %.2f %.2f" % os.getloadavg())
            if auth.dns is not None:
                print(f"# dnsmasq answered {auth.dns_queries() - queries0} queries in {petrel_runs} petrel runs "
                      f"(each a fresh daemon, so a cold resolver cache)")
        finally:
            auth.stop()
    print()
    lead = "| auth " if with_auth else ""
    print(f"{lead}| workload | size | sessions | end-to-end petrel/Postfix | CPU per msg petrel/Postfix | peak PSS petrel/Postfix |")
    print(f"{'| --- ' if with_auth else ''}| --- | --- | --- | --- | --- | --- |")
    for name, workload, size, sessions, r, c, m in ratios:
        print(f"{'| ' + name + ' ' if with_auth else ''}| {workload} | {size} | {sessions} | {r:.2f}x | {c:.2f}x | {m:.2f}x |")


if __name__ == "__main__":
    main()

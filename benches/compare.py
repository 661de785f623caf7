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
"""
import os
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
PETREL = os.path.join(ROOT, "target", "release", "petrel")
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

    def __init__(self, sink_port):
        self.dir = tempfile.mkdtemp(prefix="petrelbench.")
        self.port = free_port()
        cfg = os.path.join(self.dir, "petrel.toml")
        with open(cfg, "w") as f:
            f.write(f"""[server]
hostname = "petrel-bench.test"
spool = "{self.dir}/spool"
postmaster = "postmaster@bench.test"
[domains]
primary = "example.test"
[[listeners]]
name = "mx"
protocol = "smtp"
bind = "127.0.0.1:{self.port}"
[smtp.inbound]
max_connections_per_client = 1000
[smtp.outbound]
smarthost = "[127.0.0.1]:{sink_port}"
tls = "off"
[dns]
nameservers = ["127.0.0.1:9"]
[log]
level = "info"
""")
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


def run_once(mta_class, size, sessions, count, workload):
    sink_port = free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", "-M", str(count), f"127.0.0.1:{sink_port}", "1000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(sink_port)
    mta = mta_class(sink_port)
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
        subprocess.run(["smtp-source"] + reuse + ["-s", str(sessions), "-l", str(size), "-m", str(count),
                        "-f", "load@example.test", "-t", "someone@remote.test", "-M", "source.test",
                        f"127.0.0.1:{mta.port}"], check=True, timeout=LIMIT,
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
    ver = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True).stdout.strip()
    print(f"# petrel vs Postfix {ver}; {os.cpu_count()} cores; runs={RUNS}; median (min-max)")
    ratios = []
    for workload in WORKLOADS:
        print()
        print(f"## workload: {workload} ({'a new connection per message' if workload == 'new' else 'sessions reused'})")
        print("| size | sessions | msgs | MTA | inject msg/s | end-to-end msg/s | CPU ms/msg | peak PSS MiB | msgs/commit |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for size in SIZES:
            for sessions in SESSIONS:
                count = messages_for(size, sessions)
                res = {"postfix": [], "petrel": []}
                for _ in range(RUNS):
                    for cls in (Postfix, Petrel):
                        res[cls.name].append(run_once(cls, size, sessions, count, workload))
                med = {}
                for name, runs in res.items():
                    m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                    lo = {k: min(r[k] for r in runs) for k in runs[0]}
                    hi = {k: max(r[k] for r in runs) for k in runs[0]}
                    med[name] = m
                    batch = f"{m['batch']:.1f}" if name == "petrel" else "-"
                    print(f"| {size} | {sessions} | {count} | {name} | {m['inject']:.0f} ({lo['inject']:.0f}-{hi['inject']:.0f}) "
                          f"| {m['e2e']:.0f} ({lo['e2e']:.0f}-{hi['e2e']:.0f}) | {m['cpu']:.2f} | {m['rss']:.0f} ({lo['rss']:.0f}-{hi['rss']:.0f}) | {batch} |", flush=True)
                ratios.append((workload, size, sessions, med["petrel"]["e2e"] / med["postfix"]["e2e"],
                               med["petrel"]["cpu"] / max(med["postfix"]["cpu"], 1e-9),
                               med["petrel"]["rss"] / max(med["postfix"]["rss"], 1e-9)))
    print()
    print("| workload | size | sessions | end-to-end petrel/Postfix | CPU per msg petrel/Postfix | peak PSS petrel/Postfix |")
    print("| --- | --- | --- | --- | --- | --- |")
    for workload, size, sessions, r, c, m in ratios:
        print(f"| {workload} | {size} | {sessions} | {r:.2f}x | {c:.2f}x | {m:.2f}x |")


if __name__ == "__main__":
    main()

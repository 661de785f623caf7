#!/usr/bin/env python3
"""Several petrel nodes on one shared PostgreSQL (issue 16, item 6): local
delivery and the mixed IMAP workload with one, two and three nodes on one
database, and one node on the embedded store, same machine, same run,
alternately. Called by benches/scale_out.sh, which builds petrel and the
load driver (benches/imap_load.rs) in release mode.

Configurations (CONFIGS, default all four, in this order in every run):
  embedded  one node, the default embedded store
  pg-1      one node, `[store] backend = "postgres"`
  pg-2      two nodes on the same database
  pg-3      three nodes on the same database
Every node has its own spool directory and ports; the directory is the
configuration file's ([directory] backend = "config"), the same users in
every node's file. Each configuration gets a fresh database (and fresh
nodes) for each part of each run, dropped afterwards. PostgreSQL is a
private server (initdb into a temporary directory, loopback only) with its
default durability (fsync on, synchronous_commit on: a COMMIT is on disk);
POOL_SIZE (default 16, petrel's default) connections per node.

  delivery  DELIVERIES (3000) × 4 KiB to one local user, split evenly
            across the nodes: one smtp-source per node, in parallel, with
            ceil(20 / nodes) sessions each and a new connection per
            message; end to end is until every node has logged its share of
            `status=sent` (petrel writes it after the store's commit).
            Afterwards the last node must show all DELIVERIES messages in
            the user's INBOX over IMAP (mail delivered on the other nodes).
  mixed     USERS (40) users, 200 × 4 KiB each, APPENDed (imap_load fill)
            through node 0; then for each CLIENTS (10 40) total clients,
            split across the nodes (each node's imap_load on its own port,
            all in parallel, different users per node: imap_load's
            FIRST_USER), SECONDS_PER_RUN (15) of SELECT, FETCH FLAGS /
            ENVELOPE / BODY.PEEK[], STORE, APPEND, UID STORE \\Deleted + UID
            EXPUNGE, IDLE + DONE. Before that, every node must show 200
            messages in the INBOX of one of its users (filled on node 0).
            ops/s is the sum over the nodes; p50 and p99 are the median
            of the nodes' own p50 and p99 (each node's driver measures its
            clients' latencies).

Cost per operation and where it goes: CPU (user+system) ms of all petrel
processes, and separately of PostgreSQL's process tree (the postmaster,
its live children and the children it reaped: backends, WAL writer,
checkpointer, ...), per message or operation; WAL written per message or
operation (pg_current_wal_lsn before and after, the whole server: nothing
else uses it); peak PSS of the petrel nodes together and of PostgreSQL.
RUNS (3) runs, median (min-max); ratios are of the medians. Everything
started is stopped; every wait is bounded (LIMIT).
"""
import glob
import imaplib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

if "IMAP_LOAD" not in os.environ:
    sys.exit("IMAP_LOAD is not set: run benches/scale_out.sh, which builds benches/imap_load.rs")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (process stats, free ports, petrel's stop)
from compare import free_port, wait_port  # noqa: E402
from imap_compare import LIMIT, LOAD, PASSWORD, PETREL, fmt, load, petrel_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(os.environ.get("RUNS", "3"))
PARTS = os.environ.get("PARTS", "delivery mixed").split()
CONFIGS = os.environ.get("CONFIGS", "embedded pg-1 pg-2 pg-3").split()
DELIVERIES = int(os.environ.get("DELIVERIES", "3000"))
USERS = int(os.environ.get("USERS", "40"))
CLIENTS = [int(c) for c in os.environ.get("CLIENTS", "10 40").split()]
SECONDS = int(os.environ.get("SECONDS_PER_RUN", "15"))
POOL_SIZE = int(os.environ.get("POOL_SIZE", "16"))
FILL = 200
PROBLEMS = []


def nodes_of(config):
    return 1 if config == "embedded" else int(config.split("-")[1])


def split(total, n):
    """`total` in `n` shares that differ by at most one."""
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


def trees(roots):
    """The pids of each root's process tree, from one pass over /proc
    (compare.tree reads all of /proc once per process of the tree, too slow
    to sample PostgreSQL's dozens of processes while it is measured)."""
    kids = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            st = compare.proc_stat(p)
            if st:
                kids.setdefault(int(st[1]), []).append(int(p))
    out = []
    for r in roots:
        pids, todo = [], [r]
        while todo:
            p = todo.pop()
            pids.append(p)
            todo.extend(kids.get(p, []))
        out.append(pids)
    return out


def cpu_ms(roots):
    """As compare.cpu_ms, summed over the roots' trees: utime+stime of every
    live process, plus cutime+cstime (the children it reaped: PostgreSQL's
    backends of closed connections)."""
    total = 0
    for pids in trees(roots):
        for p in pids:
            st = compare.proc_stat(p)
            if st:
                total += int(st[11]) + int(st[12]) + int(st[13]) + int(st[14])
    return total * 1000.0 / compare.HZ


def pss_kib(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class Peak:
    """Peak PSS (MiB) of two groups of process trees, every 200 ms."""

    def __init__(self, *groups):
        self.groups = groups
        self.peak = [0] * len(groups)
        self.done = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.done.is_set():
            for i, g in enumerate(self.groups):
                if g:
                    self.peak[i] = max(self.peak[i], sum(pss_kib(t) for t in trees(g)))
            self.done.wait(0.2)

    def stop(self):
        self.done.set()
        self.t.join()
        return [k / 1024.0 for k in self.peak]


class Postgres:
    """A private PostgreSQL server: initdb into a temporary directory (as
    `postgres` when run as root: initdb refuses root), loopback only."""

    def __init__(self):
        found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
        if not found:
            sys.exit("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb)")
        found.sort(key=lambda p: [int(x) for x in re.findall(r"\d+", p.split("/")[4])])
        self.bin = os.path.dirname(found[-1])
        self.dir = tempfile.mkdtemp(prefix="pgbench.")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")
        self.port = free_port()
        self.root = None
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "postgres:postgres", self.dir], check=True)
        self.run("initdb", "-D", self.data, "-U", "petrel", "--auth=trust", "-E", "UTF8", "--no-instructions")
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=300"
        try:
            self.run("pg_ctl", "-D", self.data, "-o", opts, "-l", self.log, "-w", "-t", "60", "start")
        except RuntimeError as e:
            self.cleanup()
            sys.exit(f"{e}\n{self.server_log()}")
        wait_port(self.port)
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            self.root = int(f.readline())

    def run(self, program, *args):
        cmd = [os.path.join(self.bin, program), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        out = subprocess.run(cmd, cwd=self.dir, stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=LIMIT)
        if out.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)}: {out.stdout}{out.stderr}")
        return out.stdout.strip()

    def psql(self, sql, db="postgres"):
        return self.run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "petrel", "-d", db,
                        "-At", "-c", sql)

    def database(self, name):
        self.psql(f"CREATE DATABASE {name}")
        return f"postgres://petrel@127.0.0.1:{self.port}/{name}"

    def drop(self, name):
        try:
            self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        except RuntimeError as e:
            PROBLEMS.append(f"DROP DATABASE {name}: {e}")

    def wal(self):
        """The server's WAL insert position, in octets."""
        hi, lo = self.psql("SELECT pg_current_wal_insert_lsn()").split("/")
        return (int(hi, 16) << 32) + int(lo, 16)

    def server_log(self):
        try:
            with open(self.log) as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def stop(self):
        if self.root is not None:
            try:
                self.run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop")
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                print(f"pg_ctl stop: {e}", file=sys.stderr)
                self.run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        self.cleanup()

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


NOTEWORTHY = re.compile(rb"\b(WARN|ERROR)\b|status=(deferred|bounced)")


class Node(compare.Petrel):
    """One petrel node: own spool and ports, an SMTP and a plain IMAP
    listener, the users in its file; on PostgreSQL when `url` is given.
    Stopped as compare's (SIGTERM, then its directory removed)."""

    def __init__(self, users, url, i):
        self.i = i
        self.dir = tempfile.mkdtemp(prefix=f"petrelnode{i}.")
        self.port, self.imap = free_port(), free_port()
        h = subprocess.run([PETREL, "hash-password"], input=PASSWORD, capture_output=True,
                           text=True, check=True).stdout.strip()
        store = (f'[store]\nbackend = "postgres"\nurl = "{url}"\npool_size = {POOL_SIZE}\n'
                 '[directory]\nbackend = "config"\n') if url else ""
        self.cfg = os.path.join(self.dir, "petrel.toml")
        with open(self.cfg, "w") as f:
            f.write(petrel_config(self.dir, self.port, self.imap, users, h,
                                  hostname=f"node{i}.petrel-bench.test", extra=store))
        self.log_path = os.path.join(self.dir, "log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([PETREL, "-c", self.cfg, "serve"], stdout=subprocess.DEVNULL,
                                     stderr=self.log)
        self.root = self.proc.pid
        end = time.time() + 60
        try:
            for port in (self.port, self.imap):
                while True:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"node {i} exited ({self.proc.returncode}) at start:\n{self.tail()}")
                    if time.time() > end:
                        raise RuntimeError(f"node {i} did not listen on {port} in 60 s:\n{self.tail()}")
                    try:
                        wait_port(port, limit=0.5)
                        break
                    except RuntimeError:
                        pass
        except BaseException:
            self.stop()
            raise

    def tail(self, n=3000):
        self.log.flush()
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def count(self, *needles):
        """Occurrences of the needles in the log (one read)."""
        try:
            with open(self.log_path, "rb") as f:
                text = f.read()
        except OSError:
            return 0
        return sum(text.count(x) for x in needles)

    def noteworthy(self, n=5):
        """The first `n` warning, error, deferral or bounce lines of the log."""
        try:
            with open(self.log_path, "rb") as f:
                lines = [ln for ln in f if NOTEWORTHY.search(ln)]
        except OSError:
            return []
        return [ln.decode(errors="replace").rstrip() for ln in lines[:n]]

    def exists(self, user):
        """Messages in `user`'s INBOX, as this node's IMAP says."""
        c = imaplib.IMAP4("127.0.0.1", self.imap, timeout=60)
        try:
            c.login(user, PASSWORD)
            typ, data = c.select("INBOX", readonly=True)
            if typ != "OK":
                raise RuntimeError(f"node {self.i}: SELECT INBOX as {user}: {typ} {data}")
            return int(data[0])
        finally:
            try:
                c.logout()
            except (imaplib.IMAP4.error, OSError):
                pass


class Setup:
    """One configuration's nodes (and its fresh database)."""

    def __init__(self, config, users, pg, db):
        self.name, self.pg, self.db, self.nodes = config, pg, None, []
        url = None
        if config != "embedded":
            url = pg.database(db)
            self.db = db
        try:
            for i in range(nodes_of(config)):
                self.nodes.append(Node(users, url, i))
        except BaseException:
            self.stop()
            raise

    def roots(self):
        return [n.root for n in self.nodes]

    def pg_roots(self):
        return [self.pg.root] if self.db else []

    def begin(self):
        """Counters before a measurement."""
        wal = self.pg.wal() if self.db else 0
        self.peak = Peak(self.roots(), self.pg_roots())
        self.cpu0 = cpu_ms(self.roots()), cpu_ms(self.pg_roots())
        self.wal0 = wal
        self.t0 = time.time()

    def end(self, ops):
        """Costs per operation since `begin`, and the elapsed time."""
        t = time.time() - self.t0
        cpu = cpu_ms(self.roots()) - self.cpu0[0], cpu_ms(self.pg_roots()) - self.cpu0[1]
        pss = self.peak.stop()
        wal = (self.pg.wal() - self.wal0) if self.db else 0
        r = {"seconds": t, "cpu": cpu[0] / ops, "pgcpu": cpu[1] / ops, "pss": pss[0], "pgpss": pss[1],
             "wal": wal / 1024.0 / ops}
        r["total"] = r["cpu"] + r["pgcpu"]
        return r

    def stop(self):
        for n in self.nodes:
            n.stop()
        if self.db:
            self.pg.drop(self.db)


def attempt(config, run, what, body):
    """Runs `body`; a failure is noted (with the nodes' noteworthy log lines,
    which `body` adds to the exception) and the benchmark goes on."""
    try:
        return body()
    except (RuntimeError, subprocess.SubprocessError, OSError, ValueError, imaplib.IMAP4.error) as e:
        PROBLEMS.append(f"{what}, {config}, run {run + 1}: {e}")
        print(f"FAILED {what}, {config}, run {run + 1}: {e}", file=sys.stderr, flush=True)
        return None


def with_logs(setup, e):
    lines = []
    for n in setup.nodes:
        lines += [f"  node {n.i}: {ln}" for ln in n.noteworthy()]
    if setup.db:
        lines += ["  PostgreSQL: " + ln for ln in setup.pg.server_log().splitlines()[-5:]]
    return RuntimeError(str(e) + ("\n" + "\n".join(lines) if lines else ""))


def delivery_once(config, run, pg):
    s = Setup(config, ["user"], pg, f"bench_d{run}_{config.replace('-', '_')}")
    procs = []
    try:
        shares = split(DELIVERIES, len(s.nodes))
        sessions = -(-20 // len(s.nodes))
        s.begin()
        end = s.t0 + LIMIT
        for n, share in zip(s.nodes, shares):
            err = open(os.path.join(n.dir, "smtp-source.err"), "w")
            procs.append((subprocess.Popen(
                ["smtp-source", "-s", str(sessions), "-l", "4096", "-m", str(share), "-f", "load@partner.test",
                 "-t", "user@example.test", "-M", "source.test", f"127.0.0.1:{n.port}"],
                stdout=subprocess.DEVNULL, stderr=err), err, n))
        for p, err, n in procs:
            p.wait(timeout=max(1, end - time.time()))
            err.close()
            if p.returncode != 0:
                with open(err.name) as f:
                    raise RuntimeError(f"smtp-source to node {n.i} exited {p.returncode}: {f.read()[-2000:]}")
        for n, share in zip(s.nodes, shares):
            while (sent := n.count(b"status=sent")) < share:
                if n.count(b"status=deferred", b"status=bounced") or time.time() > end:
                    raise RuntimeError(f"node {n.i}: {sent} of {share} status=sent after "
                                       f"{time.time() - s.t0:.0f} s")
                time.sleep(0.02)
        r = s.end(DELIVERIES)
        r["rate"] = DELIVERIES / r["seconds"]
        seen = s.nodes[-1].exists("user")
        if seen != DELIVERIES:
            PROBLEMS.append(f"delivery, {config}, run {run + 1}: node {len(s.nodes) - 1} shows {seen} "
                            f"of {DELIVERIES} messages in user's INBOX")
        warn = [f"node {n.i}: {ln}" for n in s.nodes for ln in n.noteworthy(3)]
        if warn:
            PROBLEMS.append(f"delivery, {config}, run {run + 1}, log lines: " + " | ".join(warn))
        return r
    except (RuntimeError, subprocess.SubprocessError) as e:
        raise with_logs(s, e) from e
    finally:
        for p, err, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            err.close()
        s.stop()


def delivery(pg):
    res = {c: [] for c in CONFIGS}
    for run in range(RUNS):
        for config in CONFIGS:
            r = attempt(config, run, "delivery", lambda: delivery_once(config, run, pg))
            if r:
                res[config].append(r)
    print(f"\n## Local delivery: {DELIVERIES} × 4 KiB to one user, split across the nodes; "
          f"ceil(20 / nodes) SMTP sessions per node, a new connection per message\n")
    print("| config | nodes | delivered msg/s | petrel CPU ms/msg | PostgreSQL CPU ms/msg | total CPU ms/msg "
          "| WAL KiB/msg | petrel PSS MiB | PostgreSQL PSS MiB |")
    print("| --- " * 9 + "|")
    for c in CONFIGS:
        print(row([c, str(nodes_of(c))], res[c], c == "embedded",
                  [("rate", ".0f"), ("cpu", ".2f"), ("pgcpu", ".2f"), ("total", ".2f"), ("wal", ".1f"),
                   ("pss", ".0f"), ("pgpss", ".0f")]))
    ratios(res, "rate", "msg/s", "CPU ms/msg")


PG_ONLY = ("pgcpu", "wal", "pgpss")


def row(head, runs, embedded, cols):
    cells = list(head)
    for key, spec in cols:
        if not runs:
            cells.append("failed")
        elif embedded and key in PG_ONLY:
            cells.append("–")
        else:
            cells.append(fmt([r[key] for r in runs], spec))
    return "| " + " | ".join(cells) + " |"


def ratios(res, key, rate_name, cpu_name, prefix=()):
    """Ratio rows of the medians against embedded and pg-1."""
    bases = [b for b in ("embedded", "pg-1") if res.get(b)]
    if not bases:
        return
    if not prefix:
        print()
        print("| config | " + " | ".join(f"{rate_name} ÷ {b} | {cpu_name} (total) ÷ {b}" for b in bases) + " |")
        print("| --- " * (1 + 2 * len(bases)) + "|")

    def med(c, k):
        return statistics.median(r[k] for r in res[c])

    for c in res:
        if not res[c] or c in bases[:1]:
            continue
        cells = [*prefix, c]
        for b in bases:
            cells += ["", ""] if b == c else [f"{med(c, key) / med(b, key):.2f}×",
                                              f"{med(c, 'total') / med(b, 'total'):.2f}×"]
        print("| " + " | ".join(cells) + " |", flush=True)


def start_mixed(node, clients, first):
    return subprocess.Popen([LOAD, "mixed", str(node.imap), PASSWORD, str(clients), str(SECONDS), str(first)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_mixed(p, node):
    try:
        out, err = p.communicate(timeout=SECONDS + LIMIT)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise RuntimeError(f"imap_load mixed on node {node.i} did not finish: {err[-2000:]}")
    if p.returncode != 0:
        raise RuntimeError(f"imap_load mixed on node {node.i} exited {p.returncode}:\n{out}\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def mixed_once(config, run, pg, users):
    s = Setup(config, users, pg, f"bench_m{run}_{config.replace('-', '_')}")
    out = {}
    try:
        load("fill", s.nodes[0].imap, PASSWORD, USERS, FILL, 4096)
        for c in CLIENTS:
            shares = split(c, len(s.nodes))
            firsts = [sum(shares[:i]) for i in range(len(shares))]
            for n, share, first in zip(s.nodes, shares, firsts):
                if share and (seen := n.exists(users[first])) != FILL:
                    PROBLEMS.append(f"mixed, {config}, run {run + 1}: node {n.i} shows {seen} of {FILL} "
                                    f"messages in {users[first]}'s INBOX")
            s.begin()
            procs = [(start_mixed(n, share, first), n)
                     for n, share, first in zip(s.nodes, shares, firsts) if share]
            try:
                results = [finish_mixed(p, n) for p, n in procs]
            finally:
                for p, _ in procs:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
            ops = sum(x["ops"] for x in results)
            r = s.end(ops)
            r["ops_per_s"] = sum(x["ops_per_s"] for x in results)
            r["p50_ms"] = statistics.median(x["p50_ms"] for x in results)
            r["p99_ms"] = statistics.median(x["p99_ms"] for x in results)
            out[c] = r
        warn = [f"node {n.i}: {ln}" for n in s.nodes for ln in n.noteworthy(3)]
        if warn:
            PROBLEMS.append(f"mixed, {config}, run {run + 1}, log lines: " + " | ".join(warn))
        return out
    except (RuntimeError, subprocess.SubprocessError) as e:
        raise with_logs(s, e) from e
    finally:
        s.stop()


def mixed(pg):
    users = [f"u{i}" for i in range(USERS)]
    res = {(c, k): [] for c in CLIENTS for k in CONFIGS}
    for run in range(RUNS):
        for config in CONFIGS:
            r = attempt(config, run, "mixed", lambda: mixed_once(config, run, pg, users))
            for c, x in (r or {}).items():
                res[(c, config)].append(x)
    print(f"\n## Mixed IMAP workload, {SECONDS} s per run, {USERS} users with {FILL} × 4 KiB per INBOX "
          f"(filled through node 0), the clients split across the nodes, one user each\n")
    print("p50 and p99: the median of the nodes' own percentiles.\n")
    print("| clients | config | ops/s | p50 ms | p99 ms | petrel CPU ms/op | PostgreSQL CPU ms/op "
          "| total CPU ms/op | WAL KiB/op | petrel PSS MiB | PostgreSQL PSS MiB |")
    print("| --- " * 11 + "|")
    for c in CLIENTS:
        for k in CONFIGS:
            print(row([str(c), k], res[(c, k)], k == "embedded",
                      [("ops_per_s", ".0f"), ("p50_ms", ".2f"), ("p99_ms", ".2f"), ("cpu", ".3f"),
                       ("pgcpu", ".3f"), ("total", ".3f"), ("wal", ".2f"), ("pss", ".0f"), ("pgpss", ".0f")]))
    bases = [b for b in ("embedded", "pg-1") if any(res[(c, b)] for c in CLIENTS)]
    if bases:
        print("\n| clients | config | " + " | ".join(f"ops/s ÷ {b} | CPU ms/op (total) ÷ {b}" for b in bases) + " |")
        print("| --- " * (2 + 2 * len(bases)) + "|")
        for c in CLIENTS:
            ratios({k: res[(c, k)] for k in CONFIGS}, "ops_per_s", "", "", prefix=(str(c),))


def main():
    if "mixed" in PARTS and max(CLIENTS) > USERS:
        sys.exit(f"CLIENTS: at most USERS ({USERS}) clients, one user each")
    os.environ["PATH"] += ":/usr/sbin"
    pg = Postgres()
    try:
        pv = subprocess.run([PETREL, "--version"], capture_output=True, text=True).stdout.strip()
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        commit += " + uncommitted changes" if dirty else ""
        pgv = pg.run("postgres", "--version")
        settings = ", ".join(f"{k} = {pg.psql(f'SHOW {k}')}" for k in
                             ("fsync", "synchronous_commit", "wal_sync_method", "shared_buffers"))
        print(f"# {pv} (commit {commit}) on {pgv}; {os.cpu_count()} cores; runs={RUNS}; "
              f"{time.strftime('%Y-%m-%d %H:%M')}; median (min-max)\n")
        print(f"PostgreSQL: {settings}, max_connections = 300; petrel: pool_size = {POOL_SIZE} per node, "
              f"configurations {', '.join(CONFIGS)} alternately in each run.", flush=True)
        for part in PARTS:
            {"delivery": delivery, "mixed": mixed}[part](pg)
    finally:
        pg.stop()
    if PROBLEMS:
        print("\n## Problems\n")
        for p in PROBLEMS:
            print(f"- {p}")


if __name__ == "__main__":
    main()

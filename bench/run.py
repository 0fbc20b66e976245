#!/usr/bin/env python3
"""roost's benchmarks side by side (issue 8): one command, every ratio measured in the same run.

usage: python3 bench/run.py [--quick] [--rows pop3,flood,spawn,master,core] [--runs N]

Run from the repository root, as root (the Dovecot peer needs it). Rows:
  pop3    1. POP3 sessions/s and p50/p99, roost against Dovecot 2.3, both login modes
  flood   2. pre-auth flood: legitimate logins while 1000 idle connections are held
  spawn   3. per-connection process: roost inetd vs posix_spawn+wait vs ucspi-tcp's tcpserver
  master  4. the master's own cost: CPU per 10,000 connections, RSS with 1,000 children
  core    5. Master::handle events/s at 100 and 10,000 processes, the sim against real time
Prints a markdown table (medians of --runs runs and their min-max) and writes
target/bench/results.{csv,svg,md}. Loopback only; every server it starts is stopped on exit,
Ctrl-C included. BENCHMARKS.md explains each row. Standard library only; the spawn rows' client is
bench/connload, which the harness builds with cargo."""
import argparse, csv, json, math, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOST = os.path.join(ROOT, "target", "release", "roost")
CONNLOAD = os.path.join(ROOT, "target", "release", "connload")
OUT = os.path.join(ROOT, "target", "bench")
ALL_ROWS = ("pop3", "flood", "spawn", "master", "core")
DOVECOT_PORT, ROOST_PORT = 11110, 11111
INETD_PORT, TCPSERVER_PORT, HOLD_PORT = 11112, 11113, 11114
DOVECOT_DIR = "/tmp/roost-bench-dovecot"
CONCURRENCY = (1, 50, 200)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- results

class Result:
    """One line of the table. kind "ratio": roost against a reference; the ratio is always roost's
    advantage (reference / roost when lower is better), so > 1 means roost is ahead. kind "abs": a
    value of roost's own checked against a fixed goal."""

    def __init__(self, row, name, unit, kind="ratio", better="higher", goal=None, goal_op=">=",
                 goal_text="", ref_name="", roost=None, ref=None, roost_note="", ref_note="",
                 check=None, fmt="{:,.0f}"):
        self.row, self.name, self.unit, self.kind, self.better = row, name, unit, kind, better
        self.goal, self.goal_op, self.goal_text, self.ref_name = goal, goal_op, goal_text, ref_name
        self.roost, self.ref = list(roost or []), list(ref or [])
        self.roost_note, self.ref_note, self.check, self.fmt = roost_note, ref_note, check, fmt

    def ratio(self):
        if self.kind != "ratio" or not self.roost or not self.ref:
            return None
        a, b = statistics.median(self.roost), statistics.median(self.ref)
        if self.better == "higher":
            return a / b if b else None
        return b / a if a else float("inf")

    def met(self):
        """True, False, or None when not measured or informational."""
        if self.kind == "abs":
            return self.check(self.roost) if self.roost and self.check else None
        r = self.ratio()
        if r is None or self.goal is None:
            return None
        return r > self.goal if self.goal_op == ">" else r >= self.goal

    def verdict(self):
        r, met = self.ratio(), self.met()
        goal = f"goal {self.goal_text}" if self.goal_text else "info"
        if self.kind == "ratio" and r is None:
            return f"{goal}: not measured ({'roost' if not self.roost else self.ref_name or 'reference'} failed)"
        if self.kind == "abs" and not self.roost:
            return f"{goal}: not measured (roost failed)"
        shown = f"{r:.2f}×" if r is not None else cell(self.roost, self.fmt, self.unit)
        if met is None:
            return f"{goal} ({shown})" if self.goal_text else f"info ({shown})"
        return f"{goal}: {'met' if met else 'NOT met'} ({shown})"


def cell(values, fmt, unit, note=""):
    if not values:
        return note or "—"
    med = fmt.format(statistics.median(values))
    text = f"{med}{unit}"
    if len(values) > 1:
        text += f" ({fmt.format(min(values))}–{fmt.format(max(values))})"
    return text + (f"; {note}" if note else "")


def table(results, header):
    lines = [header, "",
             "| row | measurement | roost median (min–max) | reference median (min–max) | goal and verdict (ratio) |",
             "|---|---|---|---|---|"]
    for r in results:
        ref = cell(r.ref, r.fmt, r.unit, r.ref_note)
        if r.ref_name:
            ref = f"{r.ref_name}: {ref}"
        ref = ref.replace("\n", " / ")
        lines.append(f"| {r.row} | {r.name} | {cell(r.roost, r.fmt, r.unit, r.roost_note)} | {ref} | {r.verdict()} |")
    return "\n".join(lines)


def write_csv(results, path):
    def stats(v):
        return [round(statistics.median(v), 4), round(min(v), 4), round(max(v), 4)] if v else ["", "", ""]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "measurement", "unit", "roost_median", "roost_min", "roost_max", "reference",
                    "ref_median", "ref_min", "ref_max", "ratio", "goal", "met", "roost_note", "ref_note"])
        for r in results:
            ratio, met = r.ratio(), r.met()
            w.writerow([r.row, r.name, r.unit.strip(), *stats(r.roost), r.ref_name, *stats(r.ref),
                        "" if ratio is None else round(ratio, 4), r.goal_text,
                        "" if met is None else ("yes" if met else "no"), r.roost_note, r.ref_note])


def write_svg(results, path, title):
    """A grouped bar chart of the ratios (roost's advantage, log scale), one group per row; the goal
    of each bar is a dark tick, a bar that meets it is green, one that does not is orange."""
    bars = [r for r in results if r.kind == "ratio"]
    lo, hi = -3, 6                         # log2 axis: 1/8 .. 64
    bw, gap, left, top, plot_h = 26, 30, 60, 64, 300
    x, items, groups = left + 10, [], []
    for row in sorted({r.row for r in bars}):
        start = x
        for r in (b for b in bars if b.row == row):
            items.append((x, r))
            x += bw + 4
        groups.append((row, start, x))
        x += gap
    width, height = max(x + 170, 760), top + plot_h + 260

    def y(v):
        v = min(max(v, 2.0 ** lo), 2.0 ** hi)
        return top + plot_h * (hi - math.log2(v)) / (hi - lo)

    esc = lambda s: s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="13">{esc(title.split(": ", 1)[0])}</text>',
           f'<text x="{left}" y="34" font-size="10" fill="#555">{esc(title.split(": ", 1)[-1])}</text>',
           f'<text x="{left}" y="48" font-size="10" fill="#555">bars: roost\'s advantage (×, log scale), black tick: goal, green: met, orange: not met</text>']
    for e in range(lo, hi + 1):
        yy = y(2.0 ** e)
        label = f"{2 ** e}×" if e >= 0 else f"1/{2 ** -e}×"
        svg.append(f'<line x1="{left}" x2="{width - 10}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="{"#555" if e == 0 else "#ddd"}"/>')
        svg.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{label}</text>')
    for x0, r in items:
        ratio = r.ratio()
        if ratio is None:
            svg.append(f'<text x="{x0 + bw / 2}" y="{y(1) - 4:.1f}" text-anchor="middle" fill="#999">n/m</text>')
        else:
            color = {True: "#3a3", False: "#e80", None: "#88a"}[r.met()]
            y0, y1 = sorted((y(1), y(ratio)))
            svg.append(f'<rect x="{x0}" y="{y0:.1f}" width="{bw}" height="{max(y1 - y0, 1):.1f}" fill="{color}">'
                       f'<title>{esc(r.name)}: {ratio:.2f}×</title></rect>')
            svg.append(f'<text x="{x0 + bw / 2}" y="{y0 - 3:.1f}" text-anchor="middle" font-size="9">{ratio:.2g}</text>')
        if r.goal is not None:
            svg.append(f'<line x1="{x0 - 2}" x2="{x0 + bw + 2}" y1="{y(r.goal):.1f}" y2="{y(r.goal):.1f}" stroke="black" stroke-width="2"/>')
        lx, ly = x0 + bw / 2, top + plot_h + 8
        svg.append(f'<text x="{lx}" y="{ly}" transform="rotate(60 {lx} {ly})" font-size="9">{esc(r.name[:48])}</text>')
    for row, a, b in groups:
        svg.append(f'<text x="{(a + b) / 2 - 2}" y="{top + plot_h + 250}" text-anchor="middle" font-size="12">row {row}</text>')
    svg.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(svg) + "\n")


# ---------------------------------------------------------------- processes and /proc

class Cleanup:
    """Everything started is stopped here, newest first, whatever happened."""

    def __init__(self):
        self.actions = []

    def push(self, name, fn):
        self.actions.append((name, fn))
        return len(self.actions) - 1

    def run_one(self, index):
        name, fn = self.actions[index]
        self.actions[index] = (name, None)
        if fn:
            try:
                fn()
            except Exception as e:
                log(f"cleanup of {name} failed: {e}")

    def run_all(self):
        for i in reversed(range(len(self.actions))):
            self.run_one(i)


def stop_process(proc, timeout=15):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_pid(path, timeout=10):
    """The pid in PATH, waiting up to TIMEOUT seconds for the file; None if it never comes."""
    end = time.time() + timeout
    while True:
        try:
            with open(path) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            if time.time() > end:
                return None
            time.sleep(0.1)


def stop_pid(pid, timeout=15):
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.time() + timeout
    while time.time() < end and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.05)
    if os.path.exists(f"/proc/{pid}"):
        os.kill(pid, signal.SIGKILL)


def cpu_seconds(pid):
    """utime + stime of one process (not its children), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(pid):
    """CPU of a whole server: the process, the children it has reaped (cutime + cstime: the
    adapters and programs of every connection) and the children still running (roost's spawner
    and log process)."""
    def fields(p):
        with open(f"/proc/{p}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    own = fields(pid)
    total = sum(int(own[i]) for i in (11, 12, 13, 14))
    for child in child_pids(pid):
        try:
            total += sum(int(fields(child)[i]) for i in (11, 12))
        except (OSError, IndexError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def memory_kib(pid):
    """(VmRSS, RssAnon) of one process in KiB: everything resident, and its own memory alone
    (heap, stacks; not the code and libraries it shares with every other process)."""
    got = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon"):
                got[key] = int(line.split()[1])
    return got.get("VmRSS", 0), got.get("RssAnon", 0)


def child_pids(pid):
    """The pids whose parent is PID."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return found


def child_count(pid):
    return len(child_pids(pid))


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


SCRATCH = []


def scratch_dir(prefix):
    """A temp dir that the end of the run removes (unless --keep)."""
    d = tempfile.mkdtemp(prefix=prefix)
    SCRATCH.append(d)
    return d


def port_owner(port):
    """Who listens on 127.0.0.1:PORT, as ss says it, or ''."""
    try:
        out = subprocess.run(["ss", "-Htlnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    except OSError:
        return ""
    m = re.search(r'users:\(\("([^"]+)",pid=(\d+)', out)
    return f"{m.group(1)} pid {m.group(2)}" if m else ""


def choose_ports():
    """Each of our fixed ports that another program already listens on (another session's roost,
    say) is replaced by a free one, so that we never measure someone else's server."""
    notes = []
    for name in ("ROOST_PORT", "INETD_PORT", "TCPSERVER_PORT", "HOLD_PORT"):
        port = globals()[name]
        if port_open(port):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                globals()[name] = s.getsockname()[1]
            notes.append(f"port {port} is taken ({port_owner(port) or 'unknown program'}), used {globals()[name]}")
            log("  " + notes[-1])
    return notes


def wait_port_free(port, timeout=30):
    end = time.time() + timeout
    while port_open(port) and time.time() < end:
        time.sleep(0.2)


def interesting_line(path, fallback=""):
    """The first log line that says what went wrong: an error, a warning, or a left-out service."""
    try:
        with open(path, errors="replace") as f:
            lines = [l.strip() for l in f if l.strip()]
    except OSError:
        return fallback
    for pattern in ("Fatal", "Error", "error", "Panic", "pop3-login", "no program", "Warning"):
        for l in lines:
            if pattern in l:
                return re.sub(r"^\w{3} [ \d]\d \d\d:\d\d:\d\d ", "", l)[:160]
    return lines[0][:160] if lines else fallback


def inetd_config(program, port, **settings):
    """A temp dir and a roost config in it: one inetd service running PROGRAM on 127.0.0.1:PORT."""
    tmp = scratch_dir(prefix="roost-bench-inetd-")
    conf = os.path.join(tmp, "roost.conf")
    lines = "".join(f"  {k} = {v}\n" for k, v in settings.items())
    with open(conf, "w") as f:
        f.write(f"base_dir = {tmp}/run\nlog_path = {tmp}/roost.log\nprotocols = none\n"
                f"service bench {{\n  executable = inetd {program}\n{lines}"
                f"  inet_listener bench {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n")
    return tmp, conf


def start_roost(config, workdir, port, cleanup, what):
    """Starts target/release/roost -F -c CONFIG and waits until PORT accepts. Returns (proc, None)
    or (None, why) with the log line that explains it."""
    out = os.path.join(workdir, "roost.out")
    if port_open(port):
        return None, f"port {port} is already taken by {port_owner(port) or 'another program'}"
    proc = subprocess.Popen([ROOST, "-F", "-c", config], stdin=subprocess.DEVNULL,
                            stdout=open(out, "w"), stderr=subprocess.STDOUT)
    cleanup.push(f"roost ({what})", lambda: stop_process(proc))
    end = time.time() + 10
    while time.time() < end:
        if proc.poll() is not None:
            why = (interesting_line(out) or interesting_line(os.path.join(workdir, "roost.log"))
                   or interesting_line(os.path.join(workdir, "dovecot.log"), "no output"))
            return None, f"failed to start (exit {proc.returncode}): {why}"
        if port_open(port):
            return proc, None
        time.sleep(0.1)
    why = (interesting_line(os.path.join(workdir, "roost.log")) or interesting_line(os.path.join(workdir, "dovecot.log"))
           or interesting_line(out, "no log line"))
    stop_process(proc)
    return None, f"no listener on :{port} after 10 s ({why})"


# ---------------------------------------------------------------- load

def exited(proc):
    """None while PROC runs, else how it ended (signal or status)."""
    code = proc.poll()
    if code is None:
        return None
    return f"roost master exited during the run ({f'signal {-code}' if code < 0 else f'status {code}'})"


def connection_load(port, n, c):
    """N connections at concurrency C that each read until the server closes: (conn/s, p50 ms, p99 ms,
    errors). The client is bench/connload (a thread per concurrent connection, blocking calls): an
    asyncio client cost ~250 µs of a core per connection, a third of the work on two cores, and
    more the slower the server answered, so it measured itself as much as the servers."""
    p = subprocess.run([CONNLOAD, f"127.0.0.1:{port}", str(n), str(c), "30"], capture_output=True, text=True,
                       timeout=60 + n)
    if p.returncode != 0:
        raise RuntimeError(f"connload failed: {(p.stderr or p.stdout).strip()[-200:]}")
    r = json.loads(p.stdout)
    if r["failures"]:
        log(f"    connload failures: {r['failures']}")
    return r["conns_per_s"], r["p50_ms"], r["p99_ms"], r["failed"]


def spawn_rate(n):
    start = time.perf_counter()
    for _ in range(n):
        pid = os.posix_spawn("/bin/true", ["/bin/true"], {})
        os.waitpid(pid, 0)
    return n / (time.perf_counter() - start)


def peer_script(peers, name, *args, timeout):
    """Runs one of ../shared/peers/bench/*.py and returns its JSON line."""
    p = subprocess.run([sys.executable, os.path.join(peers, "bench", name), *map(str, args)],
                       capture_output=True, text=True, timeout=timeout)
    for line in p.stdout.splitlines():
        if line.startswith("JSON "):
            return json.loads(line[5:])
    raise RuntimeError(f"{name} printed no result: {(p.stderr or p.stdout).strip()[-200:]}")


def pop3_probe(port):
    """One session with short timeouts: None if it works, else what went wrong."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError as e:
        return f"connect: {e}"
    try:
        f = s.makefile("rb")
        for line in (None, b"USER load0000", b"PASS load", b"QUIT"):
            if line:
                s.sendall(line + b"\r\n")
            reply = f.readline()
            if not reply.startswith(b"+OK"):
                step = line.split()[0].decode() if line else "greeting"
                return f"{step}: {reply[:70].decode(errors='replace').strip() or 'connection closed'}"
        return None
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    finally:
        s.close()


# ---------------------------------------------------------------- servers for rows 1, 2 and 4

def run_logged(cmd, timeout):
    """(exit status, output) of CMD, its output through a file: a daemon that keeps an inherited
    pipe open (dovecot does) would make subprocess.run wait for it forever."""
    with tempfile.TemporaryFile("w+") as out:
        code = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout).returncode
        out.seek(0)
        return code, out.read().strip()


def ensure_vmail():
    if subprocess.run(["id", "vmail"], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-r", "-M", "-s", "/usr/sbin/nologin", "vmail"], check=True)


def dovecot_conf_text(peers, d, mode, port=DOVECOT_PORT):
    """The peer's template with start.sh's substitutions (and its performance-mode insertion)."""
    with open(os.path.join(peers, "dovecot", "dovecot.conf")) as f:
        text = f.read().replace("@DIR@", d)
    if port != DOVECOT_PORT:
        text = text.replace(f"port = {DOVECOT_PORT}", f"port = {port}")
    if mode == "performance":
        text = text.replace("service pop3-login {\n",
                            f"service pop3-login {{\n  service_count = 0\n  process_min_avail = {os.cpu_count()}\n", 1)
    return text


def lay_out_peer_dir(d):
    """What start.sh makes for Dovecot: a passwd file with demo and load0000..load0999, a Maildir
    holding one message for demo, all mail owned by vmail."""
    ensure_vmail()
    os.chmod(d, 0o755)                    # the mail user must reach DIR/mail
    maildir = os.path.join(d, "mail", "demo", "Maildir")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    with open(os.path.join(maildir, "new", "1700000000.M1P1.peer"), "w") as f:
        f.write("From: a@example.org\r\nTo: demo@example.org\r\nSubject: hello\r\n\r\nhello from the peer\r\n")
    subprocess.run(["chown", "-R", "vmail:vmail", os.path.join(d, "mail")], check=True)
    with open(os.path.join(d, "passwd"), "w") as f:
        f.write("demo:{PLAIN}demo\n" + "".join(f"load{i:04d}:{{PLAIN}}load\n" for i in range(1000)))


def roost_pop3_dir(peers, mode):
    """A temp dir laid out as start.sh lays out Dovecot's, with roost's config on port 11111."""
    d = scratch_dir(prefix=f"roost-bench-pop3-{mode}-")
    lay_out_peer_dir(d)
    text = dovecot_conf_text(peers, d, mode, ROOST_PORT).replace("instance_name = dvpeer", "instance_name = roostbench")
    conf = os.path.join(d, "roost.conf")
    with open(conf, "w") as f:
        f.write(text)
    return d, conf


class Dovecot:
    def __init__(self, peers, cleanup):
        self.peers, self.cleanup, self.index = peers, cleanup, None

    def start(self, mode):
        """None, or why Dovecot could not be started."""
        if os.geteuid() != 0:
            return "the peer needs root"
        if os.path.exists(os.path.join(DOVECOT_DIR, "dovecot.conf")):
            self.stop_quietly()
        self.index = self.cleanup.push("dovecot", self.stop_quietly)
        code, text = run_logged(["bash", os.path.join(self.peers, "dovecot", "start.sh"), mode, DOVECOT_DIR], 600)
        if code != 0:
            return f"start.sh failed: {text[:160]}".replace("\n", " / ")
        return None

    def master_pid(self):
        pid = read_pid(os.path.join(DOVECOT_DIR, "run", "master.pid"))
        if pid is None:
            raise OSError("no run/master.pid")
        return pid

    def stop_quietly(self):
        pid = read_pid(os.path.join(DOVECOT_DIR, "run", "master.pid"), timeout=0)
        run_logged(["bash", os.path.join(self.peers, "dovecot", "stop.sh"), DOVECOT_DIR], 60)
        end = time.time() + 15
        while time.time() < end and ((pid and os.path.exists(f"/proc/{pid}")) or port_open(DOVECOT_PORT)):
            time.sleep(0.1)

    def stop(self):
        if self.index is not None:
            self.cleanup.run_one(self.index)
            self.index = None


# ---------------------------------------------------------------- the rows

class Bench:
    def __init__(self, args, cleanup):
        self.args, self.cleanup, self.results = args, cleanup, []
        self.runs = args.runs
        self.quick = args.quick

    def add(self, result):
        self.results.append(result)
        log(f"  -> {result.name}: roost {cell(result.roost, result.fmt, result.unit, result.roost_note)}"
            f" | {result.ref_name} {cell(result.ref, result.fmt, result.unit, result.ref_note)} | {result.verdict()}")

    # ---- rows 1, 2 and 4 (CPU): the POP3 servers, one login mode at a time
    def pop3_phase(self, mode, rows):
        peers = self.args.peers
        log(f"== POP3, {mode} mode")
        sizes = {1: 100 if mode == "security" else 200, 50: 300, 200: 400} if self.quick else \
                {1: 300 if mode == "security" else 600, 50: 600, 200: 600}
        dovecot = Dovecot(peers, self.cleanup)
        servers = {}                      # name -> (port, master pid) or a reason it is not measured
        why = dovecot.start(mode)
        try:
            servers["Dovecot"] = why or (DOVECOT_PORT, dovecot.master_pid())
        except (OSError, ValueError) as e:
            servers["Dovecot"] = f"no master.pid: {e}"

        ensure_vmail()
        rdir, rconf = roost_pop3_dir(peers, mode)
        proc, why = start_roost(rconf, rdir, ROOST_PORT, self.cleanup, f"pop3 {mode}")
        if proc and (probe := pop3_probe(ROOST_PORT)):
            why = f"probe session failed: {probe}"
        servers["roost"] = why or (ROOST_PORT, proc.pid)
        for name, s in servers.items():
            if isinstance(s, str):
                log(f"  {name}: {s}")
        try:
            stats = {n: {c: dict(rate=[], p50=[], p99=[], err=[], n=sizes[c]) for c in CONCURRENCY} for n in servers}
            cpu = {n: [] for n in servers}
            for run in range(self.runs if {"pop3", "master"} & set(rows) else 0):
                spent = {n: [0.0, 0] for n in servers}
                for c in CONCURRENCY:
                    for name, s in servers.items():           # back to back, same load
                        if isinstance(s, str):
                            continue
                        if name == "roost" and exited(proc):
                            servers[name] = exited(proc)
                            continue
                        port, pid = s
                        before = cpu_seconds(pid)
                        try:
                            res = peer_script(peers, "pop3_bench.py", "--port", port, "--n", sizes[c], "--c", c,
                                              "--label", f"{name} {mode} c{c}", timeout=300)
                        except (RuntimeError, subprocess.TimeoutExpired) as e:
                            servers[name] = f"load run failed: {e}"[:200]
                            continue
                        spent[name][0] += cpu_seconds(pid) - before
                        spent[name][1] += res["n"]
                        st = stats[name][c]
                        st["rate"].append(res["conn_per_s"]); st["err"].append(res["errors"])
                        if res["p50_ms"] is not None:
                            st["p50"].append(res["p50_ms"]); st["p99"].append(res["p99_ms"])
                        log(f"  run {run + 1} {name} c={c}: {res['conn_per_s']}/s p50 {res['p50_ms']} ms "
                            f"p99 {res['p99_ms']} ms errors {res['errors']}/{res['n']} {res['error_kinds'] or ''}")
                for name in servers:
                    if spent[name][1]:
                        cpu[name].append(spent[name][0] / spent[name][1] * 10000)
            if "pop3" in rows:
                self.pop3_rows(mode, servers, stats)
            if "master" in rows:
                note = lambda n: servers[n] if isinstance(servers[n], str) else ""
                self.add(Result(4, f"master CPU s per 10,000 POP3 sessions, {mode}", " s", better="lower",
                                goal=1, goal_text="≤ Dovecot's (≥1×)", ref_name="Dovecot", roost=cpu["roost"],
                                ref=cpu["Dovecot"], roost_note=note("roost"), ref_note=note("Dovecot"), fmt="{:.2f}"))
            if "flood" in rows and mode == "security":
                self.flood_rows(servers)
        finally:
            dovecot.stop()
            if proc:
                stop_process(proc)

    def pop3_rows(self, mode, servers, stats):
        for c in CONCURRENCY:
            label = "sequential" if c == 1 else f"{c} concurrent"
            notes = {}
            for name in servers:
                st = stats[name][c]
                if isinstance(servers[name], str) and not st["rate"]:
                    notes[name] = servers[name]
                    continue
                extra = []
                if st["p50"]:
                    extra.append(f"p50 {statistics.median(st['p50']):,.0f} ms, p99 {statistics.median(st['p99']):,.0f} ms")
                if any(st["err"]):
                    extra.append(f"failed sessions {'/'.join(map(str, st['err']))} of {st['n']}")
                if isinstance(servers[name], str):
                    extra.append(servers[name])
                notes[name] = "; ".join(extra)
            self.add(Result(1, f"POP3 sessions/s, {mode}, {label}", "/s", goal=2, goal_text="≥2×", ref_name="Dovecot",
                            roost=stats["roost"][c]["rate"], ref=stats["Dovecot"][c]["rate"],
                            roost_note=notes["roost"], ref_note=notes["Dovecot"]))
        st = stats["roost"][200]
        self.add(Result(1, f"failed POP3 sessions at 200 concurrent, {mode}", "", kind="abs", goal_text="0 failed",
                        check=lambda v: max(v) == 0, ref_name="Dovecot", roost=st["err"],
                        ref=stats["Dovecot"][200]["err"],
                        roost_note=servers["roost"] if isinstance(servers["roost"], str) else f"of {st['n']} per run",
                        ref_note=f"of {stats['Dovecot'][200]['n']} per run"))

    def flood_rows(self, servers):
        log("== pre-auth flood, security mode")
        legit, settle, hold = (10, 3, 1) if self.quick else (20, 5, 3)
        got = {n: dict(ok=[], p99=[], note="") for n in servers}
        for run in range(self.runs):
            for name, s in servers.items():
                if isinstance(s, str):
                    got[name]["note"] = s
                    continue
                try:
                    res = peer_script(self.args.peers, "flood_bench.py", "--port", s[0], "--flood", 1000,
                                      "--legit", legit, "--settle", settle, "--hold", hold,
                                      "--label", f"{name} flood", timeout=400)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    got[name]["note"] = f"flood run failed: {e}"[:200]
                    continue
                got[name]["ok"].append(100.0 * res["legit_ok"] / res["legit"])
                if res["legit_p99_ms"] is not None:
                    got[name]["p99"].append(res["legit_p99_ms"])
                log(f"  run {run + 1} {name}: legit {res['legit_ok']}/{res['legit']} p99 {res['legit_p99_ms']} ms, "
                    f"flood closed by server {res['closed_by_server']}, in order {res['legit_in_order_ms']}")
        self.add(Result(2, f"flood: legitimate logins that succeed (1000 idle, {legit} logins)", " %", kind="abs",
                        goal_text="100 %", check=lambda v: min(v) == 100, ref_name="Dovecot", roost=got["roost"]["ok"],
                        ref=got["Dovecot"]["ok"], roost_note=got["roost"]["note"], ref_note=got["Dovecot"]["note"]))
        self.add(Result(2, "flood: p99 of legitimate logins", " ms", better="lower", goal=5, goal_text="≥5× (≤ ⅕ of Dovecot's)",
                        ref_name="Dovecot", roost=got["roost"]["p99"], ref=got["Dovecot"]["p99"],
                        roost_note=got["roost"]["note"], ref_note=got["Dovecot"]["note"]))

    # ---- row 3 (and row 4's inetd CPU): a process per connection
    def spawn_rows(self, rows):
        log("== per-connection process: posix_spawn, roost inetd, tcpserver")
        n = 1000 if self.quick else 4000
        tmp, conf = inetd_config("/bin/true", INETD_PORT, service_count=1, process_min_avail=4, process_limit=200)
        proc, roost_why = start_roost(conf, tmp, INETD_PORT, self.cleanup, "inetd")
        tcpserver, tcp_why = shutil.which("tcpserver"), None
        if not tcpserver and os.geteuid() == 0:
            log("  installing ucspi-tcp")
            subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ucspi-tcp",
                           shell=True, capture_output=True)
            tcpserver = shutil.which("tcpserver")
        tproc = None
        if tcpserver:
            tproc = subprocess.Popen([tcpserver, "-q", "-HRl0", "-c", "100", "-b", "100", "127.0.0.1",
                                      str(TCPSERVER_PORT), "/bin/true"], stdin=subprocess.DEVNULL)
            self.cleanup.push("tcpserver", lambda: stop_process(tproc))
            end = time.time() + 10
            while not port_open(TCPSERVER_PORT) and time.time() < end:
                time.sleep(0.05)
        else:
            tcp_why = "tcpserver (ucspi-tcp) is not installed"
        raw = []
        m = {k: dict(rate=[], p50=[], p99=[], err=[]) for k in ("roost1", "roost50", "tcp1", "tcp50")}
        cpu = {"roost": [], "tcpserver": []}
        server_cpu = {"roost": [], "tcpserver": []}
        try:
            for run in range(self.runs):
                raw.append(spawn_rate(n))
                log(f"  run {run + 1} posix_spawn+wait /bin/true: {raw[-1]:,.0f}/s")
                # At 50 concurrent the two servers are close and the machine's noise is not:
                # each run measures them there twice, in the order A B B A, so that a drift
                # within the run weighs on both alike.
                servers = [s for s in (("roost", proc, INETD_PORT), ("tcp", tproc, TCPSERVER_PORT)) if s[1]]
                used = {who: [0.0, 0.0, 0] for who, _, _ in servers}     # CPU, server CPU, connections
                for c, order in ((1, servers), (50, servers), (50, servers[::-1])):
                    for who, p, port in order:
                        if who == "roost" and exited(p):
                            roost_why = exited(p)
                            continue
                        before, server_before = cpu_seconds(p.pid), server_cpu_seconds(p.pid)
                        rate, p50, p99, err = connection_load(port, n, c)
                        u = used[who]
                        u[0] += cpu_seconds(p.pid) - before
                        u[1] += server_cpu_seconds(p.pid) - server_before
                        u[2] += n
                        st = m[f"{who}{c}"]
                        st["rate"].append(rate); st["p50"].append(p50 or 0); st["p99"].append(p99 or 0); st["err"].append(err)
                        log(f"  run {run + 1} {who} c={c}: {rate:,.0f}/s p50 {p50 or 0:.1f} ms p99 {p99 or 0:.1f} ms errors {err}")
                for who, (own, server, conns) in used.items():
                    if conns:
                        name = "roost" if who == "roost" else "tcpserver"
                        cpu[name].append(own / conns * 10000)
                        server_cpu[name].append(server / conns * 10000)
        finally:
            if proc:
                stop_process(proc)
            if tproc:
                stop_process(tproc)

        def note(k, why):
            st = m[k]
            if not st["rate"]:
                return why or ""
            text = f"p50 {statistics.median(st['p50']):.1f} ms, p99 {statistics.median(st['p99']):.1f} ms"
            return text + (f"; errors {'/'.join(map(str, st['err']))}" if any(st["err"]) else "")
        if "spawn" in rows:
            for c, label in ((1, "sequential"), (50, "50 concurrent")):
                self.add(Result(3, f"inetd /bin/true conn/s vs raw spawn, {label}", "/s", goal=0.5, goal_text="≥0.5×",
                                ref_name="posix_spawn+wait", roost=m[f"roost{c}"]["rate"], ref=raw,
                                roost_note=note(f"roost{c}", roost_why)))
                self.add(Result(3, f"inetd /bin/true conn/s vs tcpserver, {label}", "/s", goal=1, goal_op=">",
                                goal_text=">1× (ahead)", ref_name="tcpserver", roost=m[f"roost{c}"]["rate"],
                                ref=m[f"tcp{c}"]["rate"], roost_note=note(f"roost{c}", roost_why),
                                ref_note=note(f"tcp{c}", tcp_why)))
            # Why the concurrent row is where it is: there the two servers share the cores with
            # the load generator, so conn/s follows the CPU each connection costs in all.
            self.add(Result(3, "server CPU s per 10,000 inetd /bin/true connections (master, spawner, "
                            "adapters and programs; tcpserver and its children)", " s", better="lower",
                            ref_name="tcpserver", roost=server_cpu["roost"], ref=server_cpu["tcpserver"],
                            roost_note=roost_why or "", ref_note=tcp_why or "", fmt="{:.2f}"))
        if "master" in rows:
            self.add(Result(4, "master CPU s per 10,000 inetd /bin/true connections", " s", better="lower",
                            ref_name="tcpserver", roost=cpu["roost"], ref=cpu["tcpserver"], roost_note=roost_why or "",
                            ref_note=tcp_why or "", fmt="{:.2f}"))

    # ---- row 4: the master's resident memory with 1,000 live children
    def rss_rows(self):
        log("== master RSS with 1,000 live children")
        kib = {"roost": [], "Dovecot": []}
        anon = {"roost": [], "Dovecot": []}
        failed = {"roost": [], "Dovecot": []}
        for run in range(self.runs):
            for name in kib:
                wait_port_free(HOLD_PORT)         # the last pool's children may still hold it
                if name == "roost":
                    got, why = self.roost_rss()
                elif os.geteuid() != 0:
                    got, why = None, "the Dovecot peer needs root"
                else:
                    got, why = self.dovecot_rss()
                if got:
                    kib[name].append(got[0] / 1024)
                    anon[name].append(got[1] / 1024)
                else:
                    failed[name].append(why)
                log(f"  run {run + 1} {name}: " + (f"{got[0] / 1024:.1f} MiB, {got[1] / 1024:.1f} MiB anonymous"
                                                   if got else why))

        def note(name, what):
            if not failed[name]:
                return what
            return f"{len(failed[name])} of {self.runs} runs failed: {failed[name][0]}"
        self.add(Result(4, "master RSS with 1,000 live children", " MiB", better="lower", goal=1,
                        goal_text="≤ Dovecot's (≥1×)", ref_name="Dovecot", roost=kib["roost"], ref=kib["Dovecot"],
                        roost_note=note("roost", "inetd /bin/cat ×1000"),
                        ref_note=note("Dovecot", "pop3-login ×1000"), fmt="{:.1f}"))
        # RSS counts the code and libraries the master shares with every process (roost's one
        # binary holds every built-in, Dovecot's master is a small program on shared libraries):
        # its own memory is the anonymous part.
        self.add(Result(4, "master anonymous memory (RSS less shared code) with 1,000 live children", " MiB",
                        better="lower", ref_name="Dovecot", roost=anon["roost"], ref=anon["Dovecot"],
                        roost_note=note("roost", "inetd /bin/cat ×1000"),
                        ref_note=note("Dovecot", "pop3-login ×1000"), fmt="{:.2f}"))

    def roost_rss(self):
        tmp, conf = inetd_config("/bin/cat", HOLD_PORT, process_min_avail=1000, process_limit=1000)
        proc, why = start_roost(conf, tmp, HOLD_PORT, self.cleanup, "1000 children")
        if not proc:
            return None, why
        try:
            return self.hold_children(proc.pid, 1000)
        finally:
            stop_process(proc, timeout=60)

    def hold_children(self, pid, want, timeout=60):
        """(master (RSS, anonymous) KiB once PID has WANT children and 2 s have passed, or None; why not)."""
        end, n = time.time() + timeout, 0
        while time.time() < end:
            n = child_count(pid)
            if n >= want:
                time.sleep(2)
                return memory_kib(pid), None
            time.sleep(0.25)
        return None, f"only {n} children after {timeout} s"

    def dovecot_rss(self):
        """The peer's security configuration with pop3-login process_min_avail = process_limit = 1000,
        on a port of its own; Dovecot's master then holds 1000 login processes."""
        peers = self.args.peers
        if not shutil.which("dovecot"):
            return None, "dovecot is not installed (the POP3 rows install it)"
        d = scratch_dir(prefix="roost-bench-dovecot-rss-")
        lay_out_peer_dir(d)
        conf = os.path.join(d, "dovecot-rss.conf")
        text = dovecot_conf_text(peers, d, "security", HOLD_PORT).replace(
            "service pop3-login {\n", "service pop3-login {\n  process_min_avail = 1000\n  process_limit = 1000\n", 1)
        with open(conf, "w") as f:
            f.write(text)
        pidfile = os.path.join(d, "run", "master.pid")
        # registered before the start: dovecot daemonizes and writes master.pid a moment later
        index = self.cleanup.push("dovecot (1000 children)", lambda: stop_pid(read_pid(pidfile), timeout=30))
        try:
            code, text = run_logged(["dovecot", "-c", conf], 60)
            if code != 0:
                return None, f"dovecot failed: {text[-160:]}".replace("\n", " / ")
            pid = read_pid(pidfile)
            if not pid:
                return None, "no master.pid after 10 s"
            return self.hold_children(pid, 1000)
        finally:
            self.cleanup.run_one(index)

    # ---- row 5: the core and the simulator
    def core_rows(self):
        log("== core: Master::handle; sim: speed against real time")
        times = ["--warm-up-time", "1", "--measurement-time", "2"]
        per = {100: [], 10000: []}
        why = ""
        for run in range(self.runs):
            p = subprocess.run(["cargo", "bench", "-q", "-p", "roost-core", "--bench", "master", "--", *times,
                                "master_handle/(100|10000)$"], cwd=ROOT, capture_output=True, text=True, timeout=900)
            found = re.findall(r"master_handle/(\d+)\s+time:.*?\n\s+thrpt:\s+\[\S+ \S+ (\S+) (\S*)elem/s", p.stdout)
            if p.returncode != 0 or not found:
                why = f"cargo bench failed: {(p.stderr or p.stdout).strip()[-160:]}"
                break
            scale = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}
            for n, value, unit in found:
                per[int(n)].append(float(value) * scale[unit])
            log(f"  run {run + 1}: " + ", ".join(f"{n} processes {float(v):.2f} {u}events/s" for n, v, u in found))
        self.add(Result(5, "Master::handle events/s, 10,000 vs 100 processes (flat)", "/s", goal=0.8,
                        goal_text="≥0.8× (flat)", ref_name="at 100 processes", roost=per[10000], ref=per[100],
                        roost_note=why, ref_note=why, fmt="{:,.3g}"))
        speed = {"discrete-event": [], "turmoil": []}
        why = ""
        build = subprocess.run(["cargo", "build", "-q", "--release", "-p", "sim"], cwd=ROOT, capture_output=True,
                               text=True, timeout=900)
        if build.returncode != 0:
            why = f"sim build failed: {build.stderr.strip()[-160:]}"
        else:
            for run in range(self.runs):
                p = subprocess.run([os.path.join(ROOT, "target", "release", "sim"), "bench", "--turmoil"],
                                   capture_output=True, text=True, timeout=300)
                for kind in speed:
                    m = re.search(rf"^{kind}\b.*?: (\d+)× real time", p.stdout, re.M)
                    if m:
                        speed[kind].append(float(m.group(1)))
                log(f"  run {run + 1}: sim " + ", ".join(f"{k} {v[-1]:,.0f}× real time" for k, v in speed.items() if v))
        for kind, values in speed.items():
            self.add(Result(5, f"sim speed, {kind} (1000 clients, 10 simulated min)", "× real time", kind="abs",
                            goal_text=">1× real time", check=lambda v: min(v) > 1, roost=values,
                            roost_note=why or ("" if values else "no figure in sim's output")))


def guard(what, fn, *args):
    """A row that breaks is reported and the others go on."""
    try:
        fn(*args)
    except Exception:
        log(f"!! {what} broke, going on with the other rows:\n{traceback.format_exc()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one run, smaller loads (about 3 minutes)")
    ap.add_argument("--rows", default=",".join(ALL_ROWS), help=f"comma-separated subset of {','.join(ALL_ROWS)}")
    ap.add_argument("--runs", type=int, help="runs per measurement (default 3, 1 with --quick)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (configs, logs) under /tmp")
    ap.add_argument("--roost", help="measure this roost binary (copied first) instead of building this checkout's")
    ap.add_argument("--peers", default=os.path.normpath(os.path.join(ROOT, "..", "shared", "peers")),
                    help="the peers folder (default ../shared/peers beside the repository)")
    args = ap.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if unknown := [r for r in rows if r not in ALL_ROWS]:
        ap.error(f"unknown rows {unknown}; choose from {','.join(ALL_ROWS)}")
    args.runs = args.runs or (1 if args.quick else 3)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even when started with SIGINT ignored
    os.makedirs(OUT, exist_ok=True)
    started = time.time()
    cleanup = Cleanup()
    bench = Bench(args, cleanup)
    interrupted, port_notes = False, []
    try:
        if args.roost:
            global ROOST                  # a copy: the original may be rebuilt while we measure
            ROOST = os.path.join(scratch_dir(prefix="roost-bench-bin-"), "roost")
            shutil.copy2(args.roost, ROOST)
            port_notes.append(f"roost binary: {args.roost}")
            log("== cargo build --release -p connload")
            subprocess.run(["cargo", "build", "-q", "--release", "-p", "connload"], cwd=ROOT, check=True)
        else:
            log("== cargo build --release -p roost -p connload")
            subprocess.run(["cargo", "build", "-q", "--release", "-p", "roost", "-p", "connload"], cwd=ROOT,
                           check=True)
        port_notes += choose_ports()
        if "core" in rows:
            guard("core", bench.core_rows)
        if "spawn" in rows or "master" in rows:
            guard("spawn", bench.spawn_rows, rows)
        if {"pop3", "flood", "master"} & set(rows):
            guard("pop3 security", bench.pop3_phase, "security", rows)
            if "pop3" in rows or "master" in rows:
                guard("pop3 performance", bench.pop3_phase, "performance", rows)
        if "master" in rows:
            # After the POP3 rows: the peer's start.sh installs Dovecot on a fresh machine.
            guard("rss", bench.rss_rows)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping every server started")
    finally:
        cleanup.run_all()
        for d in SCRATCH:
            if args.keep:
                log(f"kept {d}")
            else:
                shutil.rmtree(d, ignore_errors=True)
    results = sorted(bench.results, key=lambda r: r.row)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    header = (f"roost benchmarks, {when}: {os.cpu_count()} cores, Linux {os.uname().release}, "
              f"{args.runs} run(s) per measurement{' (--quick)' if args.quick else ''}, "
              f"{time.time() - started:.0f} s" + "".join(f"; {n}" for n in port_notes)
              + (" — INTERRUPTED, partial" if interrupted else ""))
    text = table(results, header)
    print(text)
    with open(os.path.join(OUT, "results.md"), "w") as f:
        f.write(text + "\n")
    write_csv(results, os.path.join(OUT, "results.csv"))
    write_svg(results, os.path.join(OUT, "results.svg"), header)
    print(f"\nwritten: {os.path.relpath(OUT, ROOT)}/results.md, results.csv, results.svg")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())

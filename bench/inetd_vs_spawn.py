#!/usr/bin/env python3
"""The cost of a per-connection process: an inetd-style roost service with service_count = 1
against the machine's raw posix_spawn + wait rate of /bin/true, measured in the same run.

usage: bench/inetd_vs_spawn.py [--roost target/release/roost] [--n 2000] [--runs 3]

Prints one line per measurement and the ratio roost / raw. Loopback only; it starts and stops
its own roost with a temporary base_dir. A benchmark, not a test: it asserts nothing."""
import argparse, concurrent.futures, os, socket, statistics, subprocess, sys, tempfile, time

def spawn_rate(n):
    start = time.perf_counter()
    for _ in range(n):
        pid = os.posix_spawn("/bin/true", ["/bin/true"], {})
        os.waitpid(pid, 0)
    return n / (time.perf_counter() - start)

def one_session(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    while s.recv(64):
        pass
    s.close()

def roost_rate(port, n, concurrency):
    start = time.perf_counter()
    if concurrency == 1:
        for _ in range(n):
            one_session(port)
    else:
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda _: one_session(port), range(n)))
    return n / (time.perf_counter() - start)

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--roost", default="target/release/roost")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="roost-bench-")
    conf = os.path.join(tmp, "roost.conf")
    with open(conf, "w") as f:
        f.write(f"""base_dir = {tmp}/run
log_path = {tmp}/roost.log
protocols = none
service true {{
  executable = inetd /bin/true
  service_count = 1
  process_min_avail = 4
  process_limit = 200
  inet_listener true {{
    address = 127.0.0.1
    port = {port}
  }}
}}
""")
    proc = subprocess.Popen([args.roost, "-F", "-c", conf], stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                one_session(port)
                break
            except OSError:
                time.sleep(0.05)
        rows = {"posix_spawn+wait /bin/true": [], "roost inetd sequential": [], "roost inetd 50 concurrent": []}
        for _ in range(args.runs):
            rows["posix_spawn+wait /bin/true"].append(spawn_rate(args.n))
            rows["roost inetd sequential"].append(roost_rate(port, args.n, 1))
            rows["roost inetd 50 concurrent"].append(roost_rate(port, args.n, 50))
        print(f"machine: {os.cpu_count()} cores; {args.n} per run, {args.runs} runs (median, min-max)")
        for name, values in rows.items():
            print(f"{name:30s} {statistics.median(values):8.0f}/s  ({min(values):.0f}-{max(values):.0f})")
        raw = statistics.median(rows["posix_spawn+wait /bin/true"])
        for name in ("roost inetd sequential", "roost inetd 50 concurrent"):
            print(f"ratio {name} / raw spawn: {statistics.median(rows[name]) / raw:.2f} (goal >= 0.5)")
    finally:
        proc.terminate()
        proc.wait(timeout=10)

if __name__ == "__main__":
    sys.exit(main())

# A hostile test suite, run by the e2e agent's tests through the real agent:
# each test performs one attack and writes what happened to a report in
# /tmp; the last test fails with the report, so it comes back in the
# result's tail. The Rust test checks the same attacks from the host.
# Placeholders: @PORT@, @MARKER@, @SECRET@, @AGENT_CWD@, @HOST_HOME@.
import glob
import os
import socket
import subprocess
import sys
import time
import unittest

PORT = @PORT@
MARKER = "@MARKER@"
SECRET = b"@SECRET@"
AGENT_CWD = "@AGENT_CWD@"
HOST_HOME = "@HOST_HOME@"
REPORT = "/tmp/attack-report"


def report(name, outcome):
    with open(REPORT, "a") as f:
        f.write(f"{name}: {outcome}\n")


def redis_forge(host):
    """Connects to Redis and tries to write a key and a forged result."""
    try:
        s = socket.create_connection((host, PORT), timeout=3)
    except OSError as e:
        return f"blocked ({type(e).__name__})"
    s.sendall(b"AUTH " + SECRET + b"\r\nSET pwned-" + MARKER.encode() + b" 1\r\n")
    return f"CONNECTED {s.recv(200)!r}"


class Attack(unittest.TestCase):
    def test_a_flood(self):
        line = "A" * (1 << 20) + "\n"
        for _ in range(100):
            sys.stdout.write(line)
        sys.stdout.flush()
        report("flood", "printed 100 MiB")

    def test_b_proc(self):
        ppid = os.getppid()
        for what in ("environ", "cmdline"):
            try:
                data = open(f"/proc/{ppid}/{what}", "rb").read()
                leak = " WITH THE SECRET" if SECRET in data else " (no secret)"
                report(f"proc-ppid-{what}", f"read {len(data)} bytes{leak}")
            except OSError as e:
                report(f"proc-ppid-{what}", f"refused ({e.strerror})")
        seen, leaks = 0, []
        for path in glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/cmdline"):
            try:
                data = open(path, "rb").read()
            except OSError:
                continue
            seen += 1
            if SECRET in data or MARKER.encode() + b"ns" in data or b"AGENTIC" in data:
                leaks.append(path)
        found = "LEAKED " + " ".join(leaks) if leaks else "no agent env or argv"
        report("proc-all", f"{found} in {seen} readable files")
        env = " ".join(sorted(os.environ))
        report("own-env", f"{'LEAKED' if 'AGENTIC' in env or 'REDIS' in env else 'clean'}: {env}")

    def test_c_redis(self):
        report("redis-loopback", redis_forge("127.0.0.1"))
        report("redis-localhost", redis_forge("localhost"))
        url = os.environ.get("AGENTIC_REDIS_URL")
        report("redis-url-in-env", "absent" if url is None else "PRESENT")

    def test_d_write_outside(self):
        for d in (HOST_HOME, AGENT_CWD, "/usr", "/etc", "/root", os.path.dirname(os.getcwd())):
            target = os.path.join(d, f"pwned-{MARKER}")
            try:
                with open(target, "w") as f:
                    f.write("pwned")
                report(f"write {d}", "WROTE")
            except OSError as e:
                report(f"write {d}", f"refused ({e.strerror})")

    def test_e_fork_bomb(self):
        pids, err = [], None
        try:
            # Bounded here so a failed limit does not take the host down:
            # 2,000 forks means the jail did not stop it.
            for _ in range(2000):
                pid = os.fork()
                if pid == 0:
                    time.sleep(600)
                    os._exit(0)
                pids.append(pid)
        except OSError as e:
            err = e
        for p in pids:
            os.kill(p, 9)
            os.waitpid(p, 0)
        if err is None:
            report("fork-bomb", f"NOT STOPPED: {len(pids)} forks")
        else:
            report("fork-bomb", f"stopped after {len(pids)} forks ({type(err).__name__})")

    def test_f_allocate_4gib(self):
        r = subprocess.run(
            [sys.executable, "-c", "b = b'x' * (4 << 30); print('allocated', len(b))"],
            capture_output=True,
        )
        if r.returncode < 0:
            report("alloc-4GiB", f"killed by signal {-r.returncode}")
        else:
            report("alloc-4GiB", f"exit {r.returncode} {r.stdout[-80:]!r} {r.stderr[-80:]!r}")

    def test_g_daemon(self):
        subprocess.Popen(
            ["setsid", "sh", "-c", "while :; do date > daemon-alive; sleep 0.1; done", f"daemon-{MARKER}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            if os.path.exists("daemon-alive"):
                report("daemon", "setsid daemon started and beating")
                return
            time.sleep(0.1)
        report("daemon", "never started")

    def test_z_report(self):
        with open(REPORT) as f:
            self.fail("ATTACK REPORT\n" + f.read())


if __name__ == "__main__":
    unittest.main()

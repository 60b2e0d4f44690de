"""Measures what idle connections cost the real server (issue 25, item 10).

    python3 tests/tools/connections_rss.py target/debug/portcullis MAX_GRPC COUNT

Starts the binary as a child process with `connections.max_grpc: MAX_GRPC` (and
timeouts long enough not to interfere), opens COUNT TCP connections that each send
the HTTP/2 preface and an empty SETTINGS frame and then nothing, and prints the
child's VmRSS before and after and how many descriptors it holds. Stops the child
it started, by its handle. Not a test: the numbers go into docs/security.md.
"""
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(binary, max_grpc, count):
    work = tempfile.mkdtemp()
    os.mkdir(os.path.join(work, "p"))
    with open(os.path.join(work, "p", "t1.yaml"), "w") as f:
        f.write("apiVersion: portcullis/v1\ntenant: t1\nrules:\n"
                "  - { id: open, path: /open, effect: allow, public: true }\n")
    grpc, admin = free_port(), free_port()
    with open(os.path.join(work, "c.yaml"), "w") as f:
        f.write(f"listen: 127.0.0.1:{grpc}\nadmin_listen: 127.0.0.1:{admin}\n"
                "policies: p\ndecision_log: { output: \"off\" }\n"
                f"connections: {{ max_grpc: {max_grpc}, header_read_timeout: 10m, idle_timeout: 10m }}\n")
    child = subprocess.Popen([os.path.abspath(binary), "serve", "--config", "c.yaml"], cwd=work,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def rss_kb():
            with open(f"/proc/{child.pid}/status") as f:
                return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", grpc)).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not listen"
                time.sleep(0.05)
        time.sleep(0.5)
        before = rss_kb()
        held = []
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", grpc))
            s.sendall(PREFACE)
            held.append(s)
        time.sleep(2)  # a measurement, not a test: let the server settle
        after = rss_kb()
        fds = len(os.listdir(f"/proc/{child.pid}/fd"))
        kept = min(count, max_grpc)
        print(f"max_grpc={max_grpc} connections={count}: VmRSS {before} kB -> {after} kB "
              f"(+{(after - before) / 1024:.1f} MB, {(after - before) / kept:.1f} kB per held one), "
              f"{fds} descriptors")
        for s in held:
            s.close()
    finally:
        child.terminate()
        child.wait()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))

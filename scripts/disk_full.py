"""Disk full on a real file system: 507s, reads meanwhile, automatic resume.

Runs a real ``trio-streams serve`` whose data directory is on a small file
system (``--dir``; as root the script mounts a fresh tmpfs of ``--size-mib``
itself), with a ballast file beside the data. It appends 256 KiB bodies until
the disk is full, checks that refused appends answer 507 with Retry-After,
that reads and /healthz keep answering (and /healthz names the episode),
then deletes the ballast and measures how long until appends succeed again
— no restart. Finally it stops the server (SIGTERM), starts it again and
checks every acknowledged byte.

    sudo .venv/bin/python scripts/disk_full.py [--size-mib 24] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

EXE = Path(sys.executable).with_name("trio-streams")
BODY = bytes(range(256)) * 1024  # 256 KiB
BALLAST_BYTES = 4 * 1024 * 1024


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(data: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([str(EXE), "serve", "--port", str(port), "--data-dir", str(data),
                             "--log-level", "warning"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(400):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("server did not become ready")


def one_round(root: Path) -> dict[str, float]:
    data, ballast = root / "data", root / "ballast"
    ballast.write_bytes(b"\0" * BALLAST_BYTES)
    port = _port()
    proc = _start(data, port)
    url = f"http://127.0.0.1:{port}/v1/stream/fill"
    headers = {"content-type": "application/octet-stream"}
    with httpx.Client(timeout=30) as client:
        client.put(url, headers=headers).raise_for_status()
        acknowledged, refused = 0, 0
        while refused < 5:
            r = client.post(url, content=BODY, headers=headers)
            if r.status_code == 204:
                acknowledged += 1
                continue
            assert r.status_code == 507 and r.headers.get("retry-after"), (r.status_code, r.text)
            refused += 1
        health = client.get(f"http://127.0.0.1:{port}/healthz").json()
        assert health["storage"]["state"] == "disk_full", health
        read = client.get(url)
        assert read.status_code == 200 and read.content == (BODY * acknowledged)[: len(read.content)], read.status_code
        os.unlink(ballast)
        freed = time.monotonic()
        while client.post(url, content=BODY, headers=headers).status_code != 204:
            time.sleep(0.01)
        resume_s = time.monotonic() - freed
        acknowledged += 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    proc = _start(data, port)
    with httpx.Client(timeout=30) as client:
        offset, content = "-1", bytearray()
        while True:
            r = client.get(url, params={"offset": offset})
            content += r.content
            if r.headers.get("stream-up-to-date") == "true":
                break
            offset = r.headers["stream-next-offset"]
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert bytes(content) == BODY * acknowledged, (len(content), acknowledged)
    return {"acknowledged": acknowledged, "refused_507": refused, "resume_s": resume_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", help="a directory on a small file system (default: mount a tmpfs, as root)")
    parser.add_argument("--size-mib", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = []
    for _ in range(args.rounds):
        if args.dir:
            root = Path(tempfile.mkdtemp(dir=args.dir))
            results.append(one_round(root))
            continue
        mount = Path(tempfile.mkdtemp())
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.size_mib}m", "tmpfs", str(mount)], check=True)
        try:
            results.append(one_round(mount))
        finally:
            subprocess.run(["umount", str(mount)], check=False)
    for r in results:
        print(f"  acknowledged {r['acknowledged']} x 256 KiB, {r['refused_507']} refused with 507, "
              f"writes resumed {r['resume_s'] * 1000:.0f} ms after space was freed; all data intact after restart")
    print(f"median time to resume: {statistics.median(r['resume_s'] for r in results) * 1000:.0f} ms")


if __name__ == "__main__":
    main()

"""The client without the server's dependencies: a plain `pip install trio_streams` is the client.

The fast test runs the client in a subprocess where every server-only
package is unimportable, so any import of one from the client fails it.
The slow one installs the project into a fresh venv from its metadata and
checks that the server's packages are absent and the client works there
(it needs PyPI for httpx, anyio and setuptools; about 20-40 s, so `slow`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from client_harness import ROOT

# Distributions only the server needs (its direct dependencies and theirs).
SERVER_ONLY = ["trio", "hypercorn", "orjson", "crc32c", "h2", "hpack", "hyperframe", "priority", "wsproto",
               "outcome", "sortedcontainers", "attr", "attrs"]

SCENARIO = """
import subprocess, sys
from trio_streams.client.sync import DurableStream, IdempotentProducer, stream
import trio_streams.client, trio_streams.client.cli

url = sys.argv[1]
DurableStream.create(url, content_type="text/plain", body="hello ")
stream_ = DurableStream(url=url)
producer = IdempotentProducer(stream_, "client-only")
producer.append("world")
producer.close()
text = stream_.read(live=False)
assert text == "hello world", text
assert stream(url).closed or True
for name in {blocked!r}:
    assert name not in sys.modules, name
cli = subprocess.run([sys.executable, "-m", "trio_streams.client", "read", url], capture_output=True, env=None)
assert cli.returncode == 0 and cli.stdout == b"hello world", cli
print("client-only ok")
"""

BLOCKER = """
import importlib.abc, sys
BLOCKED = set({blocked!r})
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (server-only, blocked)", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


def test_the_client_imports_and_works_with_every_server_package_blocked(server, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    # sitecustomize runs in the scenario and in the CLI it starts: both must do without the server packages.
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=SERVER_ONLY))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    result = subprocess.run(
        [sys.executable, "-c", SCENARIO.format(blocked=SERVER_ONLY), server.stream_url("client-only-blocked")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "client-only ok" in result.stdout


@pytest.mark.slow
def test_a_plain_install_in_a_clean_venv_is_the_client_without_the_server(server, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "trio_streams", source / "trio_streams", ignore=shutil.ignore_patterns("__pycache__"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    for name in SERVER_ONLY[:4]:
        probe = subprocess.run([str(python), "-c", f"import {name}"], capture_output=True, timeout=60)
        assert probe.returncode != 0, f"{name} was installed with the client"
    result = subprocess.run(
        [str(python), "-c", SCENARIO.format(blocked=SERVER_ONLY), server.stream_url("client-only-venv")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = subprocess.run([str(env_dir / "bin" / "trio-streams-client"), "head", server.stream_url("client-only-venv")],
                            capture_output=True, text=True, timeout=60)
    assert client.returncode == 0 and "closed: true" in client.stdout, client.stderr

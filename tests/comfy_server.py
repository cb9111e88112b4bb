"""ComfyUI's real server with this pack, for the tests that talk to it over HTTP (tests/test_browser.py,
tests/test_http_hostile.py).

`comfy_server` starts `main.py --cpu` on 127.0.0.1 at a free port, with the pack (and any test node folders) as
custom nodes, the given model folders through an extra_model_paths.yaml, its own input, output, temp and user
folders, and an in-memory database; it waits until the server answers and no custom node failed to import, and
stops it afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

import folder_paths
from conftest import COMFYUI, PACK

SERVER_START_S = 240


@dataclass(frozen=True)
class Server:
    base: str  # http://127.0.0.1:<port>
    module: str  # the pack's folder name under custom_nodes (its extension path in the frontend)
    log: Path
    start_s: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def post_json(url: str, value, timeout: float = 10.0) -> None:
    req = urllib.request.Request(url, data=json.dumps(value).encode(), method="POST")
    urllib.request.urlopen(req, timeout=timeout).close()


def request(url: str, body: bytes | None = None, headers: dict | None = None, method: str | None = None,
            timeout: float = 30.0) -> tuple[int, str]:
    """(status, body text) for any answer, errors included."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _paths_yaml(folders: dict[str, list[Path]]) -> str:
    lines = ["likeness_test:"]
    for kind, paths in folders.items():
        lines.append(f"    {kind}: |")
        lines += [f"        {p}" for p in paths]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def comfy_server(root: Path, folders: dict[str, Path | list[Path]], custom_nodes: dict[str, Path] | None = None,
                 input_dir=None, output_dir=None, extra_args=(), keep_log: Path | None = None):
    """A running ComfyUI (see the module docstring); `root` holds its config, custom_nodes, user, temp and log.
    `custom_nodes`: more custom node folders, by the name they get; `keep_log`: a folder the server log is copied to
    when the server stops."""
    custom = root / "custom_nodes"
    custom.mkdir()
    loaded_from = {Path(p).resolve() for p in folder_paths.get_folder_paths("custom_nodes")}
    module = PACK.name
    if PACK.parent.resolve() not in loaded_from:  # not already installed in the ComfyUI we start
        module = "comfyui-likeness"
        (custom / module).symlink_to(PACK, target_is_directory=True)
    for name, folder in (custom_nodes or {}).items():
        (custom / name).symlink_to(folder, target_is_directory=True)
    paths = {"custom_nodes": [custom]}
    paths.update({k: (v if isinstance(v, list) else [v]) for k, v in folders.items()})
    config = root / "extra_model_paths.yaml"
    config.write_text(_paths_yaml(paths))
    for name in ("user", "temp"):
        (root / name).mkdir()
    port = free_port()
    log_path = root / "server.log"
    log = open(log_path, "w")
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
           "--database-url", "sqlite:///:memory:", "--extra-model-paths-config", str(config),
           "--input-directory", str(input_dir or folder_paths.get_input_directory()),
           "--output-directory", str(output_dir or folder_paths.get_output_directory()),
           "--user-directory", str(root / "user"), "--temp-directory", str(root / "temp"), *extra_args]
    proc = subprocess.Popen(cmd, cwd=COMFYUI, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))  # tiny models: see test_workflows
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {proc.returncode}:\n" + log_path.read_text()[-4000:])
            try:
                get_json(base + "/api/system_stats")
                break
            except OSError:
                if time.monotonic() - started > SERVER_START_S:
                    pytest.fail(f"ComfyUI did not answer within {SERVER_START_S} s:\n" + log_path.read_text()[-4000:])
                time.sleep(1)
        failed = [line for line in log_path.read_text().splitlines() if "IMPORT FAILED" in line]
        assert not failed, "custom nodes failed to import:\n" + "\n".join(failed)
        yield Server(base, module, log_path, time.monotonic() - started)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if keep_log is not None:
            keep_log.mkdir(parents=True, exist_ok=True)
            shutil.copy(log_path, keep_log / "server.log")

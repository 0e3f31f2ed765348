"""A real ComfyUI server (the selected host's ``main.py``, see hosts.py) in a subprocess, with the pack installed as
a custom node.

    with ComfyServer() as srv:                      # pack symlinked as custom_nodes/ComfyUI-DNG
        pid = srv.queue(prompt)                     # POST /prompt (raises PromptRejected on a 400)
        entry = srv.wait(pid)                       # polls /history/<id> until completed or error
        png = srv.view(entry["outputs"]["7"]["images"][0])   # GET /view -> bytes

Only the standard library (urllib) is used for HTTP; the optional websocket collector uses aiohttp, which the
host's requirements already install.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable

from .host import CHECKPOINT_NAME, HOST, PACK_NAME, REPO_ROOT
from .hosts import HostSpec


class ServerStartError(RuntimeError):
    pass


class PromptRejected(RuntimeError):
    """POST /prompt answered 400 (validation failed); ``.body`` has ``error`` and ``node_errors``."""

    def __init__(self, body: dict):
        self.body = body
        super().__init__(json.dumps(body, indent=1))


class PromptFailed(RuntimeError):
    """The prompt ran and ended with status 'error'; ``.entry`` is its history entry."""

    def __init__(self, entry: dict):
        self.entry = entry
        msgs = (entry.get("status") or {}).get("messages", [])
        err = next((d for ev, d in msgs if ev == "execution_error"), {})
        tb = "".join(err.get("traceback", []))
        super().__init__(f"prompt failed in node {err.get('node_id')} ({err.get('node_type')}): "
                         f"{err.get('exception_type')}: {err.get('exception_message')}\n{tb}")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ComfyServer:
    """Start ``main.py --cpu`` on a free loopback port with a throw-away ``--base-directory``.

    base layout: ``custom_nodes/<pack_name>`` -> repo root (unless ``install_pack=False``),
    ``models/checkpoints/tiny_sd15.safetensors`` -> the cached tiny checkpoint (``checkpoint=None`` to skip,
    or a path), ``output/ input/ temp/ user/``, and ``server.log`` (stdout+stderr of the server).
    The server is stopped by its own pid (SIGTERM, then SIGKILL) on exit and the base dir removed
    (``keep=True`` keeps it for inspection).
    """

    def __init__(self, *, install_pack: bool = True, pack_dir: str | os.PathLike = REPO_ROOT,
                 pack_name: str = PACK_NAME, checkpoint: str | os.PathLike | None | bool = True,
                 extra_args: list[str] | None = None, startup_timeout: float = 90.0,
                 base_dir: str | os.PathLike | None = None, keep: bool = False, python: str | None = None,
                 env: dict | None = None, host: HostSpec = HOST,
                 front_end_root: str | os.PathLike | None = None):
        """``host``: the ComfyUI tree to run (default: the one this process tests); ``front_end_root``: a
        frontend's ``static/`` folder (default: the host's pinned frontend, see ``HostSpec.frontend_root``)."""
        self.host = host
        self.front_end_root = Path(front_end_root) if front_end_root else host.frontend_root
        self.install_pack = install_pack
        self.pack_dir = Path(pack_dir)
        self.pack_name = pack_name
        self.checkpoint = checkpoint
        self.extra_args = list(extra_args or [])
        self.startup_timeout = startup_timeout
        self._base_arg = base_dir
        self.keep = keep
        self.python = python or sys.executable
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.base_dir: Path | None = None
        self.port: int | None = None
        self.log_path: Path | None = None
        self.startup_s: float | None = None
        self._log_fh = None

    # ---------------------------------------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ComfyServer":
        if not (self.host.dir / "main.py").is_file():
            raise ServerStartError(f"no ComfyUI host at {self.host.dir}; run scripts/setup_env.sh")
        if self.front_end_root is not None and not (self.front_end_root / "index.html").is_file():
            raise ServerStartError(f"no frontend at {self.front_end_root}; run scripts/setup_env.sh")
        self.base_dir = Path(self._base_arg or tempfile.mkdtemp(prefix="dng_server_")).resolve()
        for sub in ("models/checkpoints", "output", "input", "temp", "user", "custom_nodes"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        if self.install_pack:
            link = self.base_dir / "custom_nodes" / self.pack_name
            if not link.exists():
                link.symlink_to(self.pack_dir.resolve(), target_is_directory=True)
        if self.checkpoint:
            if self.checkpoint is True:
                from .tiny_checkpoint import get_tiny_checkpoint

                ckpt = get_tiny_checkpoint()
            else:
                ckpt = Path(self.checkpoint)
            dst = self.base_dir / "models" / "checkpoints" / CHECKPOINT_NAME
            if not dst.exists():
                dst.symlink_to(Path(ckpt).resolve())

        self.port = free_port()
        self.log_path = self.base_dir / "server.log"
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base_dir), "--disable-auto-launch",
               "--database-url", "sqlite:///:memory:", *self.extra_args]
        if self.front_end_root is not None:
            cmd += ["--front-end-root", str(self.front_end_root)]
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)  # the pack must import the way a user's ComfyUI imports it
        env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
        env.update(self.extra_env)
        self._log_fh = open(self.log_path, "wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=str(self.host.dir), env=env, stdout=self._log_fh,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0
        return self

    def _wait_ready(self, t0: float):
        deadline = t0 + self.startup_timeout
        while time.perf_counter() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise ServerStartError(f"ComfyUI exited with {rc} during start-up:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
                pass
            time.sleep(0.25)
        raise ServerStartError(f"ComfyUI did not answer /system_stats within {self.startup_timeout:.0f} s:\n"
                               f"{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=timeout)
            rc = self.proc.returncode
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        if self.base_dir is not None and not self.keep and self._base_arg is None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        return rc

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    # ------------------------------------------------------------------------------------------------- HTTP
    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, bytes]:
        data = None
        headers = {}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get(self, path: str, timeout: float = 30.0) -> Any:
        """GET ``path``; JSON-decoded if possible, else bytes. Raises on a non-2xx status."""
        status, raw = self.request("GET", path, timeout=timeout)
        if status >= 300:
            raise RuntimeError(f"GET {path} -> {status}: {raw[:500]!r}")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return raw

    def post(self, path: str, body: Any, timeout: float = 30.0) -> tuple[int, Any]:
        status, raw = self.request("POST", path, body, timeout=timeout)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw

    def object_info(self, node_class: str | None = None) -> dict:
        if node_class:
            return self.get(f"/object_info/{urllib.parse.quote(node_class)}")[node_class]
        return self.get("/object_info")

    def queue(self, prompt: dict, client_id: str | None = None, prompt_id: str | None = None,
              extra_data: dict | None = None) -> str:
        """POST /prompt; returns the prompt_id. Raises PromptRejected with the server's errors on a 400."""
        body: dict = {"prompt": prompt}
        if client_id is not None:
            body["client_id"] = client_id
        if prompt_id is not None:
            body["prompt_id"] = prompt_id
        if extra_data is not None:
            body["extra_data"] = extra_data
        status, resp = self.post("/prompt", body)
        if status != 200:
            raise PromptRejected(resp if isinstance(resp, dict) else {"raw": repr(resp), "status": status})
        return resp["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.get(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 120.0, poll: float = 0.1, check: bool = True) -> dict:
        """Poll /history/<id> (history is written after the worker finishes, possibly after the websocket
        said so) and return the entry; ``check`` raises PromptFailed if its status is 'error'."""
        deadline = time.perf_counter() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry is not None:
                status = entry.get("status") or {}
                if status.get("completed") or status.get("status_str") in ("success", "error"):
                    if check and status.get("status_str") == "error":
                        raise PromptFailed(entry)
                    return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout} s; queue: "
                                   f"{self.get('/queue')}\n{self.log_tail()}")
            time.sleep(poll)

    def run(self, prompt: dict, timeout: float = 120.0, client_id: str | None = None, check: bool = True) -> dict:
        """queue() + wait(): the finished history entry."""
        return self.wait(self.queue(prompt, client_id=client_id), timeout=timeout, check=check)

    def view(self, image: dict) -> bytes:
        """Bytes of an image from a ui output entry ({filename, subfolder, type}) via GET /view."""
        q = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                                    "type": image.get("type", "output")})
        status, raw = self.request("GET", f"/view?{q}")
        if status != 200:
            raise RuntimeError(f"/view {image} -> {status}")
        return raw

    def output_path(self, image: dict) -> Path:
        d = {"output": "output", "temp": "temp", "input": "input"}[image.get("type", "output")]
        return self.base_dir / d / image.get("subfolder", "") / image["filename"]

    def websocket(self, client_id: str | None = None) -> "WsCollector":
        return WsCollector(self, client_id or uuid.uuid4().hex)


class WsCollector:
    """Collects the websocket messages a client_id receives (aiohttp client on a private thread).

        with srv.websocket() as ws:
            pid = srv.queue(prompt, client_id=ws.client_id)
            ws.wait_for(lambda m: m["type"] == "executing" and m["data"].get("node") is None
                        and m["data"].get("prompt_id") == pid)
            ws.of("progress")

    JSON messages are stored as dicts ({"type", "data"}); binary frames as {"type": "binary", "event": int,
    "data": bytes}. ``feature_flags`` is sent first as the frontend does (None to skip).
    """

    def __init__(self, server: ComfyServer, client_id: str, feature_flags: dict | None = None):
        self.server = server
        self.client_id = client_id
        self.feature_flags = feature_flags if feature_flags is not None else {"supports_preview_metadata": False}
        self.messages: list[dict] = []
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._connected = threading.Event()
        self._error: BaseException | None = None

    def __enter__(self) -> "WsCollector":
        self._thread = threading.Thread(target=self._run, name=f"ws-{self.client_id}", daemon=True)
        self._thread.start()
        if not self._connected.wait(15):
            raise RuntimeError(f"websocket did not connect: {self._error!r}")
        if self._error:
            raise RuntimeError(f"websocket failed: {self._error!r}")
        # the server greets every connection with a 'status' message: wait for it so nothing is missed
        self.wait_for(lambda m: m.get("type") == "status", timeout=15)
        return self

    def __exit__(self, *exc):
        self.close()

    def _run(self):
        import aiohttp

        async def main():
            self._stop = asyncio.Event()
            url = self.server.url.replace("http://", "ws://") + f"/ws?clientId={self.client_id}"
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(url, max_msg_size=0) as ws:
                    if self.feature_flags is not None:
                        await ws.send_json({"type": "feature_flags", "data": self.feature_flags})
                    self._connected.set()
                    recv = asyncio.ensure_future(self._pump(ws))
                    stop = asyncio.ensure_future(self._stop.wait())
                    await asyncio.wait([recv, stop], return_when=asyncio.FIRST_COMPLETED)
                    recv.cancel()
                    await ws.close()

        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(main())
        except BaseException as e:  # noqa: BLE001
            self._error = e
            self._connected.set()
        finally:
            self._loop.close()

    async def _pump(self, ws):
        import struct

        import aiohttp

        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                item = json.loads(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                (event,) = struct.unpack(">I", msg.data[:4])
                item = {"type": "binary", "event": event, "data": msg.data[4:]}
            else:
                continue
            with self._cv:
                self.messages.append(item)
                self._cv.notify_all()

    def close(self):
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass
        if self._thread is not None:
            self._thread.join(10)

    def wait_for(self, pred: Callable[[dict], bool], timeout: float = 60.0) -> dict:
        deadline = time.perf_counter() + timeout
        seen = 0
        with self._cv:
            while True:
                for m in self.messages[seen:]:
                    if pred(m):
                        return m
                seen = len(self.messages)
                left = deadline - time.perf_counter()
                if left <= 0:
                    types = [m.get("type") for m in self.messages]
                    raise TimeoutError(f"no matching websocket message in {timeout} s; got {types}")
                self._cv.wait(left)

    def wait_done(self, prompt_id: str, timeout: float = 120.0) -> dict:
        """Until the server says the prompt finished (executing node=None) or failed (execution_error)."""
        return self.wait_for(lambda m: isinstance(m.get("data"), dict) and m["data"].get("prompt_id") == prompt_id
                             and ((m["type"] == "executing" and m["data"].get("node") is None)
                                  or m["type"] in ("execution_error", "execution_interrupted")), timeout)

    def of(self, type_: str, prompt_id: str | None = None) -> list[dict]:
        with self._cv:
            out = [m for m in self.messages if m.get("type") == type_]
        if prompt_id is not None:
            out = [m for m in out if isinstance(m.get("data"), dict) and m["data"].get("prompt_id") == prompt_id]
        return out

"""The real ComfyUI host (``.host/ComfyUI-<version>``, chosen by ``DNG_HOST``: see hosts.py), in-process.

* :func:`import_host` puts the host on ``sys.path`` (in front of the repo root: the pack's ``nodes/`` package
  would otherwise shadow ComfyUI's ``nodes.py``), forces ``--cpu`` before ``comfy.model_management`` is
  imported, points ``folder_paths`` at a temporary base directory, pins torch to one thread, loads ComfyUI's
  built-in extra nodes (``comfy_extras``; API nodes are skipped) and installs an :class:`EventRecorder` as
  ``server.PromptServer.instance`` so that code calling ``PromptServer.instance.send_sync`` works.
* :func:`load_pack` loads the pack at the repo root the way ``main.py`` does (``nodes.load_custom_node`` on
  ``<base>/custom_nodes/ComfyUI-DNG``, a symlink to the repo) and returns the node classes it registered.
* :class:`PromptRunner` validates (``execution.validate_prompt``) and executes (``execution.PromptExecutor``)
  API-format prompts, keeping one executor, and so its output cache, across prompts like the server's worker.

Nothing here mocks comfy: the recorder is only the message sink the executor talks to.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import importlib.util
import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from .hosts import REPO_ROOT, selected_host

# scripts/setup_env.sh puts the pinned hosts in .host/; DNG_HOST=floor selects the floor, DNG_COMFYUI_DIR any tree.
HOST = selected_host()
HOST_DIR = HOST.dir.resolve()
PACK_NAME = "ComfyUI-DNG"
CHECKPOINT_NAME = "tiny_sd15.safetensors"

# Top-level module names the host owns; if something else already sits in sys.modules under these names the
# host would silently import the wrong thing.
_HOST_TOPLEVEL = ("nodes", "execution", "server", "folder_paths", "comfy", "comfy_extras", "comfy_execution",
                  "comfy_api", "app", "utils", "node_helpers", "latent_preview", "protocol", "comfyui_version")

_HOST: SimpleNamespace | None = None
_PACKS: dict[str, dict] = {}  # name -> info of packs loaded in this process
_LOCK = threading.RLock()
log = logging.getLogger("dng.tests.host")


class HostUnavailable(RuntimeError):
    """The ComfyUI source tree is missing (run scripts/setup_env.sh)."""


class PackMissing(RuntimeError):
    """There is no pack (``__init__.py``) at the repo root yet."""


class PackImportError(RuntimeError):
    """ComfyUI failed to import the pack (it only logs this; we raise with the log)."""


def host_available() -> bool:
    return (HOST_DIR / "main.py").is_file() and (HOST_DIR / "comfyui_version.py").is_file()


def _under(path: str | None, root: Path) -> bool:
    if not path:
        return False
    try:
        Path(path).resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _evict_shadowing_modules() -> list[str]:
    """Drop non-host modules that squat on host top-level names (e.g. the pack's own ``nodes`` package,
    imported as top-level ``nodes`` through pytest's ``pythonpath = ["."]``)."""
    evicted = []
    for name in _HOST_TOPLEVEL:
        mod = sys.modules.get(name)
        if mod is None:
            continue
        f = getattr(mod, "__file__", None)
        paths = list(getattr(mod, "__path__", []) or [])
        if _under(f, HOST_DIR) or any(_under(p, HOST_DIR) for p in paths):
            continue
        for k in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            sys.modules.pop(k, None)
            evicted.append(k)
    if evicted:
        log.warning("import_host: evicted modules shadowing ComfyUI's: %s", ", ".join(sorted(evicted)))
    return evicted


def set_torch_threads(n: int = 1) -> None:
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ.setdefault("MKL_NUM_THREADS", str(n))
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:
        pass  # only settable once, before any inter-op work


def import_host(base_dir: str | os.PathLike | None = None, *, builtin_nodes: bool = True) -> SimpleNamespace:
    """Import the real ComfyUI host into this process (idempotent) and return a namespace with
    ``host_dir, base_dir, version, nodes, execution, server, folder_paths, recorder, failed_extras``.

    ``base_dir`` (default: a fresh temp dir removed at exit) becomes ComfyUI's ``--base-directory``: it holds
    ``models/checkpoints``, ``output``, ``input``, ``temp``, ``user`` and ``custom_nodes``.
    """
    global _HOST
    with _LOCK:
        if _HOST is not None:
            if base_dir is not None and Path(base_dir).resolve() != _HOST.base_dir.resolve():
                raise RuntimeError(f"host already imported with base_dir {_HOST.base_dir}")
            if builtin_nodes and not _HOST.builtin_nodes_loaded:
                _HOST.failed_extras = _load_builtin_nodes()
                _HOST.builtin_nodes_loaded = True
            return _HOST
        if not host_available():
            raise HostUnavailable(f"no ComfyUI host at {HOST_DIR}; run scripts/setup_env.sh")

        os.environ["OMP_NUM_THREADS"] = "1"
        host = str(HOST_DIR)
        while host in sys.path:
            sys.path.remove(host)
        sys.path.insert(0, host)
        _evict_shadowing_modules()

        if base_dir is None:
            base_dir = Path(tempfile.mkdtemp(prefix="dng_host_"))
            import atexit

            atexit.register(shutil.rmtree, str(base_dir), True)
        base_dir = Path(base_dir).resolve()
        for sub in ("models/checkpoints", "output", "input", "temp", "user", "custom_nodes"):
            (base_dir / sub).mkdir(parents=True, exist_ok=True)

        if "comfy.model_management" in sys.modules:
            import comfy.cli_args

            if not comfy.cli_args.args.cpu:
                raise RuntimeError("comfy.model_management was imported before import_host() set args.cpu")
        import comfy.options  # noqa: F401  (args parsing stays disabled: parse_args([]))
        from comfy.cli_args import args

        args.cpu = True  # must precede `import comfy.model_management`
        args.disable_auto_launch = True
        with _quiet_root_logger():
            return _import_host_locked(base_dir, builtin_nodes, args)


def _import_host_locked(base_dir: Path, builtin_nodes: bool, args) -> SimpleNamespace:
    global _HOST
    fp_preloaded = "folder_paths" in sys.modules
    if not fp_preloaded:
        args.base_directory = str(base_dir)

    set_torch_threads(1)
    import folder_paths

    if fp_preloaded or Path(folder_paths.base_path).resolve() != base_dir:
        folder_paths.add_model_folder_path("checkpoints", str(base_dir / "models/checkpoints"), is_default=True)
        folder_paths.add_model_folder_path("custom_nodes", str(base_dir / "custom_nodes"), is_default=True)
        folder_paths.set_output_directory(str(base_dir / "output"))
        folder_paths.set_input_directory(str(base_dir / "input"))
        folder_paths.set_temp_directory(str(base_dir / "temp"))
        folder_paths.set_user_directory(str(base_dir / "user"))

    # main.py's import order. nodes.py inserts <host>/comfy at sys.path[0], after which a top-level
    # `import utils` finds comfy/utils.py, so the `utils` package (and server, which needs
    # utils.install_util) must be imported before nodes.
    import utils.extra_config  # noqa: F401
    import utils.install_util  # noqa: F401
    import comfy.utils
    import execution
    import server
    import nodes
    import comfy.model_management  # noqa: F401
    import comfyui_version

    recorder = EventRecorder()
    if getattr(server.PromptServer, "instance", None) is None:
        server.PromptServer.instance = recorder
    _install_progress_hook(recorder)

    failed_extras: list[str] = _load_builtin_nodes() if builtin_nodes else []

    _HOST = SimpleNamespace(
        host_dir=HOST_DIR,
        base_dir=base_dir,
        version=comfyui_version.__version__,
        nodes=nodes,
        execution=execution,
        server=server,
        folder_paths=folder_paths,
        recorder=recorder,
        failed_extras=failed_extras,
        builtin_nodes_loaded=builtin_nodes,
    )
    return _HOST


def _load_builtin_nodes() -> list[str]:
    # comfy_extras that need missing optional deps (torchaudio, kornia, spandrel) log long tracebacks; keep
    # them off stderr (the names come back in failed_extras) but still visible to pytest's log capture.
    with _quiet_root_logger():
        failed = _run_async(_init_builtin_nodes())
    if failed:
        log.info("comfy_extras that did not import (missing optional deps): %s", failed)
    return failed


class _Sink(logging.Handler):
    def emit(self, record):
        pass


@contextlib.contextmanager
def _quiet_root_logger():
    """While the host imports, a handler on the root logger keeps ``logging.warning()`` from calling
    basicConfig() and printing optional-dependency tracebacks to stderr (pytest's log capture still sees
    them; the failed comfy_extras are returned in failed_extras)."""
    root = logging.getLogger()
    sink = _Sink()
    root.addHandler(sink)
    try:
        yield
    finally:
        root.removeHandler(sink)


def _run_async(coro):
    """Run a host coroutine from sync code (the host's own entry points are async in 0.3.75)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from inside a running loop (e.g. an async test): run it on a private loop in a thread.
    box: dict = {}

    def target():
        try:
            box["v"] = asyncio.run(coro)
        except BaseException as e:  # noqa: BLE001
            box["e"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["v"]


async def _init_builtin_nodes() -> list[str]:
    """``nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)``, keeping the failure list."""
    import hook_breaker_ac10a0
    import nodes

    hook_breaker_ac10a0.save_functions()
    try:
        await nodes.init_public_apis()
        return await nodes.init_builtin_extra_nodes()
    finally:
        hook_breaker_ac10a0.restore_functions()


def _install_progress_hook(recorder: "EventRecorder") -> None:
    """What main.hijack_progress does, aimed at the recorder (ProgressBar -> 'progress' events)."""
    import comfy.model_management
    import comfy.utils
    from comfy_api import feature_flags
    from comfy_execution.progress import get_progress_state
    from comfy_execution.utils import get_executing_context
    from protocol import BinaryEventTypes

    def hook(value, total, preview_image, prompt_id=None, node_id=None):
        ctx = get_executing_context()
        if prompt_id is None and ctx is not None:
            prompt_id = ctx.prompt_id
        if node_id is None and ctx is not None:
            node_id = ctx.node_id
        comfy.model_management.throw_exception_if_processing_interrupted()
        if prompt_id is None:
            prompt_id = recorder.last_prompt_id
        if node_id is None:
            node_id = recorder.last_node_id
        progress = {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id}
        get_progress_state().update_progress(node_id, value, total, preview_image)
        recorder.send_sync("progress", progress, recorder.client_id)
        if preview_image is not None and not feature_flags.supports_feature(
            recorder.sockets_metadata, recorder.client_id, "supports_preview_metadata"
        ):
            recorder.send_sync(BinaryEventTypes.UNENCODED_PREVIEW_IMAGE, preview_image, recorder.client_id)

    comfy.utils.set_progress_bar_global_hook(hook)


# ------------------------------------------------------------------------------------------------------------
# The message sink


@dataclasses.dataclass
class Event:
    event: Any  # str, or an int BinaryEventTypes
    data: Any
    sid: str | None
    t: float = dataclasses.field(default_factory=time.perf_counter)


class EventRecorder:
    """The object the executor sends its messages to (``server`` in execution.py) and, in-process,
    ``PromptServer.instance``. It records every ``send_sync`` instead of pushing it to websockets."""

    def __init__(self):
        from aiohttp import web

        self.events: list[Event] = []
        self._lock = threading.Lock()
        self.client_id: str | None = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata: dict = {}
        self.routes = web.RouteTableDef()  # packs may register HTTP routes at import time
        self.on_prompt_handlers: list[Callable] = []
        self.number = 0

    # PromptServer's messaging surface ------------------------------------------------------------------
    def send_sync(self, event, data, sid=None):
        with self._lock:
            self.events.append(Event(event, data, sid))

    async def send(self, event, data, sid=None):
        self.send_sync(event, data, sid)

    async def send_json(self, event, data, sid=None):
        self.send_sync(event, data, sid)

    def send_progress_text(self, text, node_id, sid=None):
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", "replace")
        self.send_sync("progress_text", {"node": node_id, "text": text}, sid)

    def queue_updated(self):
        self.send_sync("status", {"status": {"exec_info": {"queue_remaining": 0}}})

    def add_on_prompt_handler(self, handler):
        self.on_prompt_handlers.append(handler)

    def trigger_on_prompt(self, json_data):
        for handler in self.on_prompt_handlers:
            try:
                json_data = handler(json_data)
            except Exception:  # noqa: BLE001  (the server logs and carries on, so do we)
                log.exception("on_prompt handler failed")
        return json_data

    # queries ----------------------------------------------------------------------------------------------
    def mark(self) -> int:
        with self._lock:
            return len(self.events)

    def since(self, mark: int) -> list[Event]:
        with self._lock:
            return list(self.events[mark:])

    def of(self, event, prompt_id: str | None = None) -> list[Event]:
        with self._lock:
            evs = [e for e in self.events if e.event == event]
        if prompt_id is not None:
            evs = [e for e in evs if isinstance(e.data, dict) and e.data.get("prompt_id") == prompt_id]
        return evs

    def clear(self):
        with self._lock:
            self.events.clear()


def get_recorder() -> EventRecorder:
    return import_host().recorder


# ------------------------------------------------------------------------------------------------------------
# Models and the pack


def install_checkpoint(path: str | os.PathLike | None = None, name: str = CHECKPOINT_NAME, seed: int = 0) -> Path:
    """Symlink a checkpoint (default: the cached tiny SD1.5 one) into ``<base>/models/checkpoints/<name>``."""
    h = import_host()
    if path is None:
        from .tiny_checkpoint import get_tiny_checkpoint

        path = get_tiny_checkpoint(seed)
    dst = h.base_dir / "models" / "checkpoints" / name
    if dst.is_symlink() or dst.exists():
        if dst.resolve() == Path(path).resolve():
            return dst
        dst.unlink()
    dst.symlink_to(Path(path).resolve())
    return dst


def load_tiny_checkpoint(seed: int = 0):
    """(model, clip, vae) of the tiny checkpoint via ``comfy.sd.load_checkpoint_guess_config`` (as
    CheckpointLoaderSimple loads it)."""
    import_host()
    import comfy.sd
    import folder_paths

    p = install_checkpoint(seed=seed)
    out = comfy.sd.load_checkpoint_guess_config(
        str(p), output_vae=True, output_clip=True,
        embedding_directory=folder_paths.get_folder_paths("embeddings"))
    return out[:3]


def pack_available(pack_dir: str | os.PathLike = REPO_ROOT) -> bool:
    return (Path(pack_dir) / "__init__.py").is_file()


def load_pack(pack_dir: str | os.PathLike = REPO_ROOT, name: str = PACK_NAME) -> dict[str, type]:
    """Load the pack like ComfyUI loads a custom node folder and return {node_id: class} it registered.

    The pack is symlinked as ``<base>/custom_nodes/<name>`` and imported by ``nodes.load_custom_node`` (V1
    ``NODE_CLASS_MAPPINGS`` or V3 ``comfy_entrypoint``) under the module name ComfyUI gives it (the folder's
    full path, dots replaced by ``_x_``); its prestartup_script.py, if any, runs first as in main.py. Node ids
    that clash with already-registered ones are ignored, as in the server. Raises PackMissing if there is no
    ``__init__.py``, PackImportError (with ComfyUI's log) if the host reports IMPORT FAILED. Each name is
    loaded once per process; later calls return the same dict.
    """
    h = import_host()
    with _LOCK:
        pack_dir = Path(pack_dir).resolve()
        if name in _PACKS:
            if pack_dir != _PACKS[name]["pack_dir"]:
                raise RuntimeError(f"a different pack is already loaded as {name}")
            return dict(_PACKS[name]["nodes"])
        if not pack_available(pack_dir):
            raise PackMissing(f"no pack at {pack_dir} (no __init__.py yet)")
        link = h.base_dir / "custom_nodes" / name
        if not link.is_symlink():
            link.symlink_to(pack_dir, target_is_directory=True)

        nodes = h.nodes
        records: list[logging.LogRecord] = []

        class _Capture(logging.Handler):
            def emit(self, record):
                records.append(record)

        cap = _Capture(level=logging.WARNING)
        root = logging.getLogger()
        root.addHandler(cap)
        try:
            pre = link / "prestartup_script.py"
            if pre.is_file():
                spec = importlib.util.spec_from_file_location("prestartup_script", str(pre))
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
            import hook_breaker_ac10a0

            base_node_names = set(nodes.NODE_CLASS_MAPPINGS.keys())
            hook_breaker_ac10a0.save_functions()
            try:
                t0 = time.perf_counter()
                ok = _run_async(nodes.load_custom_node(str(link), base_node_names, module_parent="custom_nodes"))
                dt = time.perf_counter() - t0
            finally:
                hook_breaker_ac10a0.restore_functions()
        finally:
            root.removeHandler(cap)
        if not ok:
            msgs = "\n".join(r.getMessage() for r in records)
            raise PackImportError(f"ComfyUI could not import the pack at {link}:\n{msgs}")
        rel = f"custom_nodes.{name}"
        registered = {k: v for k, v in nodes.NODE_CLASS_MAPPINGS.items()
                      if getattr(v, "RELATIVE_PYTHON_MODULE", None) == rel}
        _PACKS[name] = {"pack_dir": pack_dir, "name": name, "nodes": registered, "link": link,
                        "module_name": str(link).replace(".", "_x_"), "import_s": dt,
                        "web_dir": nodes.EXTENSION_WEB_DIRS.get(nodes.get_module_name(str(link))),
                        "warnings": [r.getMessage() for r in records]}
        return dict(registered)


def pack_info(name: str = PACK_NAME) -> dict:
    """Details of a loaded pack: module_name (its sys.modules key), link, import_s, web_dir, warnings, nodes."""
    if name not in _PACKS:
        raise RuntimeError(f"load_pack(name={name!r}) has not run")
    return dict(_PACKS[name])


def pack_module(relname: str = "", name: str = PACK_NAME):
    """The pack's own module object as ComfyUI imported it, e.g. ``pack_module("dng_core.trace")``.

    ComfyUI keys the pack in sys.modules by its folder path, so ``import dng_core`` in a test gives a
    *different* copy (other class identities, other module-level state) than the one the loaded nodes use.
    """
    base = pack_info(name)["module_name"]
    full = f"{base}.{relname}" if relname else base
    if full not in sys.modules:
        importlib.import_module(full)
    return sys.modules[full]


# ------------------------------------------------------------------------------------------------------------
# Running prompts


@dataclasses.dataclass
class PromptResult:
    prompt_id: str
    valid: bool
    success: bool
    history: dict | None  # same shape as GET /history/<id>[<id>]
    events: list[Event]
    validation_error: dict | None = None
    node_errors: dict = dataclasses.field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.valid and self.success

    @property
    def outputs(self) -> dict:
        return (self.history or {}).get("outputs", {})

    @property
    def error(self) -> dict | None:
        """The 'execution_error' message (node_id, exception_type, exception_message, traceback...)."""
        for ev in self.events:
            if ev.event == "execution_error":
                return ev.data
        return None

    @property
    def cached_nodes(self) -> list[str]:
        for ev in self.events:
            if ev.event == "execution_cached":
                return list(ev.data.get("nodes", []))
        return []

    @property
    def executed_nodes(self) -> list[str]:
        """Node ids in the order they started executing (cached nodes are not listed)."""
        return [ev.data["node"] for ev in self.events
                if ev.event == "executing" and isinstance(ev.data, dict) and ev.data.get("node") is not None]

    def events_of(self, event) -> list[Event]:
        return [e for e in self.events if e.event == event]

    def images(self, node_id: str | None = None) -> list[Path]:
        """Files behind the ui 'images' outputs (of one node, or all)."""
        import folder_paths

        paths = []
        for nid, out in self.outputs.items():
            if node_id is not None and str(nid) != str(node_id):
                continue
            for img in out.get("images", []) or []:
                d = folder_paths.get_directory_by_type(img.get("type", "output"))
                paths.append(Path(d) / img.get("subfolder", "") / img["filename"])
        return paths

    def raise_for_status(self) -> "PromptResult":
        if not self.valid:
            raise AssertionError(f"prompt failed validation: {json.dumps(self.validation_error, indent=1)}\n"
                                 f"node_errors: {json.dumps(self.node_errors, indent=1, default=str)}")
        if not self.success:
            err = self.error or {}
            tb = "".join(err.get("traceback", []))
            raise AssertionError(f"prompt failed in node {err.get('node_id')} ({err.get('node_type')}): "
                                 f"{err.get('exception_type')}: {err.get('exception_message')}\n{tb}")
        return self


class PromptRunner:
    """Validate and execute API-format prompts in-process through the host's real executor.

    One ``execution.PromptExecutor`` is kept for the runner's life, so node outputs are cached across
    prompts exactly as in the server (CLASSIC cache unless ``cache_type`` says otherwise); ``reset()`` clears
    it like the server's "free memory" flag.
    """

    def __init__(self, cache_type=None, cache_args: dict | None = None, recorder: EventRecorder | None = None):
        h = import_host()
        self.host = h
        self.recorder = recorder or h.recorder
        if cache_type is None:
            cache_type = h.execution.CacheType.CLASSIC
        if cache_args is None:
            # The server builds this dict in main.py's prompt_worker; its keys grew over time (0.33 reads
            # "ram_inactive", and "ram" as a number where --cache-ram became a list). The CLASSIC cache uses
            # none of them, so pass every key with a neutral value rather than reading the host's CLI args.
            cache_args = {"lru": 0, "ram": 0.0, "ram_inactive": 0.0}
        self.executor = h.execution.PromptExecutor(self.recorder, cache_type=cache_type, cache_args=cache_args)
        self.history: dict[str, dict] = {}
        self._number = 0

    def reset(self):
        self.executor.reset()

    def output_of(self, node_id: str) -> list | None:
        """A node's cached outputs from the last prompt that included it: one entry per output socket, each a
        list (ComfyUI's list mapping; ``[0]`` for ordinary nodes), e.g. ``output_of("5")[0][0]["samples"]``."""
        cache = self.executor.caches.outputs
        # get() became async (0.33); get_local() is its synchronous form where the host has it
        getter = getattr(cache, "get_local", None) or cache.get
        entry = getter(str(node_id))
        if inspect.isawaitable(entry):
            entry = _run_async(entry)
        return None if entry is None else entry.outputs

    def validate(self, prompt: dict, prompt_id: str = "validate", partial_execution_targets=None):
        """(valid, error, outputs_to_execute, node_errors) from ``execution.validate_prompt``."""
        return _run_async(self.host.execution.validate_prompt(prompt_id, prompt, partial_execution_targets))

    def run(self, prompt: dict, *, client_id: str | None = "dng-tests", prompt_id: str | None = None,
            extra_data: dict | None = None, partial_execution_targets: list[str] | None = None,
            check: bool = False) -> PromptResult:
        """Run one prompt like POST /prompt + the server's prompt_worker would. ``check=True`` raises on
        a validation or execution error (with the node's traceback)."""
        # JSON round trip: the prompt must survive the wire, and nodes may not mutate our dict.
        prompt = json.loads(json.dumps(prompt))
        json_data = self.recorder.trigger_on_prompt({"prompt": prompt, "client_id": client_id})
        prompt = json_data["prompt"]
        prompt_id = prompt_id or str(uuid.uuid4())
        mark = self.recorder.mark()
        t0 = time.perf_counter()
        valid, error, outputs_to_execute, node_errors = self.validate(prompt, prompt_id, partial_execution_targets)
        if not valid:
            res = PromptResult(prompt_id, False, False, None, self.recorder.since(mark), error, node_errors,
                               time.perf_counter() - t0)
            return res.raise_for_status() if check else res

        extra = copy.deepcopy(extra_data or {})
        if client_id is not None:
            extra["client_id"] = client_id
        extra["create_time"] = int(time.time() * 1000)
        self._number += 1
        self.recorder.last_prompt_id = prompt_id
        e = self.executor
        e.history_result = {"outputs": {}, "meta": {}}
        # PromptExecutor.execute() is asyncio.run(execute_async(...)); _run_async also works under a running loop
        _run_async(e.execute_async(prompt, prompt_id, extra, outputs_to_execute))
        # what prompt_worker does after execute()
        if self.recorder.client_id is not None:
            self.recorder.send_sync("executing", {"node": None, "prompt_id": prompt_id}, self.recorder.client_id)
        history = {
            "prompt": [self._number, prompt_id, prompt, extra, outputs_to_execute],
            "outputs": {},
            "status": {"status_str": "success" if e.success else "error", "completed": e.success,
                       "messages": copy.deepcopy(e.status_messages)},
        }
        history.update(e.history_result)
        self.history[prompt_id] = history
        res = PromptResult(prompt_id, True, bool(e.success), history, self.recorder.since(mark), None,
                           node_errors, time.perf_counter() - t0)
        return res.raise_for_status() if check else res


# ------------------------------------------------------------------------------------------------------------
# Prompt builders (built-in nodes only)


_WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def node_defaults(class_type: str, optional: bool = False) -> dict:
    """Widget defaults of a registered node as API-format inputs (API prompts must carry every required
    widget value; the frontend fills them, POST /prompt does not). Links (MODEL, LATENT, ...) are left out."""
    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS[class_type]
    spec = cls.INPUT_TYPES()
    out = {}
    for section in ("required", "optional") if optional else ("required",):
        for name, entry in (spec.get(section) or {}).items():
            typ = entry[0]
            opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            if isinstance(typ, (list, tuple)):  # classic combo
                out[name] = opts.get("default", typ[0] if typ else None)
            elif typ == "COMBO":
                out[name] = opts.get("default", (opts.get("options") or [None])[0])
            elif typ in _WIDGET_TYPES and "default" in opts:
                out[name] = opts["default"]
            elif typ in _WIDGET_TYPES:
                out[name] = {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(typ)
    return out


def txt2img_prompt(ckpt_name: str = CHECKPOINT_NAME, *, positive: str = "a photo of a cat",
                   negative: str = "blurry", seed: int = 0, steps: int = 4, cfg: float = 7.0,
                   sampler_name: str = "euler", scheduler: str = "normal", width: int = 64, height: int = 64,
                   batch_size: int = 1, filename_prefix: str = "rig_smoke") -> dict:
    """CheckpointLoaderSimple -> CLIPTextEncode x2 -> KSampler -> VAEDecode -> SaveImage (API format).

    Node ids: "1" loader, "2" positive, "3" negative, "4" EmptyLatentImage, "5" KSampler, "6" VAEDecode,
    "7" SaveImage. Splice a patch node between "1" and "5" by rewriting ``prompt["5"]["inputs"]["model"]``.
    """
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch_size}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler_name,
            "scheduler": scheduler, "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": filename_prefix}},
    }

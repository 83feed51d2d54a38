"""Record what the real NVML answers, and play it back where there is no GPU.

`RecordingNvml(pynvml)` wraps the real module: every `nvml*` call goes through, and its answer (or its
NVML error code) is kept under the call's name and arguments (device and sample handles become tokens
`h0`, `h1`, ... in order of first sight). `ReplayNvml(recording)` is a stand-in for the module that
answers each call with the recorded answers in order (the last one again once they run out), so the
exporter's NvmlLibrary reads a real GPU's values in CI: the mapping and the maths are tested on what
NVML really said. Constants, structure types and error classes come from the real pynvml.

tests/fixtures/nvml-gpm/ holds recordings made on an H200 by bench/gpu/gpm_proof.py.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pynvml


def _is_call(name: str, value: Any) -> bool:
    return name.startswith("nvml") and callable(value) and not isinstance(value, type)


class _Handles:
    def __init__(self) -> None:
        self.tokens: dict[int, str] = {}

    def token(self, pointer: Any) -> str:
        address = ctypes.cast(pointer, ctypes.c_void_p).value or 0
        if address not in self.tokens:
            self.tokens[address] = f"h{len(self.tokens)}"
        return self.tokens[address]


def _plain(value: Any, handles: _Handles) -> Any:
    """A JSON-able copy of an NVML answer."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, ctypes._Pointer):
        return {"handle": handles.token(value)}
    if isinstance(value, ctypes.Structure):
        out = {}
        for name, *_ in value._fields_:
            item = getattr(value, name)
            if name == "metrics" and hasattr(value, "numMetrics"):
                item = item[: value.numMetrics]
            out[name] = _plain(item, handles)
        return out
    if isinstance(value, tuple):
        return {"tuple": [_plain(v, handles) for v in value]}
    if isinstance(value, (list, ctypes.Array)):
        return [_plain(v, handles) for v in value]
    if hasattr(value, "__dict__"):
        return {k: _plain(v, handles) for k, v in vars(value).items() if not k.startswith("_")}
    return repr(value)


def _arg_key(value: Any, handles: _Handles) -> str:
    if isinstance(value, ReplayHandle):
        return value.token
    if isinstance(value, ctypes._Pointer):
        return handles.token(value)
    if isinstance(value, (ctypes.Structure, SimpleNamespace)):
        return "struct"
    if isinstance(value, (bool, int, float, str)) or value is None:
        return repr(value)
    return type(value).__name__


def call_key(name: str, args: tuple[Any, ...], handles: _Handles) -> str:
    return f"{name}({', '.join(_arg_key(a, handles) for a in args)})"


class RecordingNvml:
    """The real pynvml, with every call's answer written down."""

    def __init__(self, module: Any = pynvml):
        self._module = module
        self._handles = _Handles()
        self.calls: dict[str, list[Any]] = {}

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._module, name)
        if not _is_call(name, value):
            return value
        return self._recorded(name, value)

    def _recorded(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            key = call_key(name, args, self._handles)
            try:
                answer = fn(*args)
            except self._module.NVMLError as exc:
                self.calls.setdefault(key, []).append({"error": int(exc.value)})
                raise
            self.calls.setdefault(key, []).append({"answer": _plain(answer, self._handles)})
            return answer

        return call

    def recording(self) -> dict[str, Any]:
        return {"calls": self.calls}


class ReplayHandle:
    def __init__(self, token: str):
        self.token = token

    def __repr__(self) -> str:
        return f"<handle {self.token}>"


def _revive(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"handle"}:
            return ReplayHandle(value["handle"])
        if set(value) == {"tuple"}:
            return tuple(_revive(v) for v in value["tuple"])
        return SimpleNamespace(**{k: _revive(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_revive(v) for v in value]
    return value


class NotRecorded(RuntimeError):
    pass


class ReplayNvml:
    """A pynvml stand-in answering from a recording."""

    def __init__(self, recording: dict[str, Any]):
        self._calls = {key: list(answers) for key, answers in recording["calls"].items()}
        self._next: dict[str, int] = {}
        self._handles = _Handles()
        self.asked: list[str] = []

    def c_nvmlGpmMetricsGet_t(self) -> SimpleNamespace:
        return SimpleNamespace(metrics=[SimpleNamespace() for _ in range(pynvml.NVML_GPM_METRIC_MAX)])

    def __getattr__(self, name: str) -> Any:
        value = getattr(pynvml, name)
        if not _is_call(name, value):
            return value

        def call(*args: Any) -> Any:
            key = call_key(name, args, self._handles)
            self.asked.append(key)
            answers = self._calls.get(key)
            if not answers:
                raise NotRecorded(f"{key} was not recorded")
            index = self._next.get(key, 0)
            self._next[key] = index + 1
            answer = answers[min(index, len(answers) - 1)]
            if "error" in answer:
                raise pynvml.NVMLError(answer["error"])
            return _revive(answer["answer"])

        return call


def load_recording(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
        return data

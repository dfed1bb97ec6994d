"""A reasoner that answers from a recorded file: demos, regression tests, the Slicer self-test, benchmarks.

The file is JSON lines, one raw model answer per reasoner call::

    {"meta": {"convention": "qwen2.5-vl", "identity": {...}}}      optional, first line (written by record_to)
    {"round": 1, "step": "pick_slice", "raw": "{\"targets\": [{\"slice\": 12, ...}]}"}
    {"round": 1, "step": "locate", "raw": "<think>...</think><answer>{...}</answer>"}

Lines carrying ``round`` are served to the calls of that round (``context.round``) in file order; files without
rounds are served in order. ``step`` is informative (it must match the call when present, so a file recorded
with another strategy fails loudly instead of answering the wrong question). The answers go through the SAME
parser and coordinate conversion as live answers; the convention is the recorded one, ``pixels`` (pixels of the
rendered image) for hand-written files, or what the caller passes.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path

from ..jsonlines import read_json_objects
from ..wire.errors import InputError
from .answer import GenerationStats
from .base import ReasonerIdentity, TextCallback
from .chat import ChatReasoner, ChatRequest
from .coords import get_convention
from .prompts import prompt_set

_CHUNK = 24  # characters per streamed chunk: the chat panel shows replayed text arriving like live text

# The shipped example: two recorded answers (key slice, then box) for the demo series that `medseg-reasoning demo`
# builds in ./medseg-sample, so the reasoner path can be tried before downloading any reasoner model.
EXAMPLE_FILE = "demo-caudate.jsonl"
EXAMPLE_SERIES = "medseg-sample/dicom"
EXAMPLE_QUESTION = "Segment the head of the left caudate nucleus."


def example_replay_path() -> Path:
    """The installed path of the shipped replay example (package data)."""
    return Path(__file__).resolve().parent.parent / "data" / "replay" / EXAMPLE_FILE


def example_command() -> str:
    """The ``ask`` command that runs the shipped replay example on the demo series (after ``demo`` built it)."""
    import shlex

    return (
        f"medseg-reasoning ask {EXAMPLE_SERIES} {shlex.quote(EXAMPLE_QUESTION)} "
        f"--reasoner {shlex.quote('replay:' + str(example_replay_path()))}"
    )


def without_weights_hint() -> str:
    """What works without a reasoner model, for the messages that say one is missing."""
    return (
        "without any reasoner model, `--box I0,J0,I1,J1,K` segments a box you give, and the shipped replay example "
        f"tries the reasoner path on the demo series (built by `medseg-reasoning demo`): `{example_command()}`"
    )


class ReplayReasoner(ChatReasoner):
    """Answers from ``path``; see the module docstring for the file format."""

    def __init__(self, path: str | Path, *, convention: str | None = None, prompt_style: str = "contract") -> None:
        self.path = Path(path).expanduser()
        meta, entries = _read_replay_file(self.path)
        name = convention or meta.get("convention") or "pixels"
        conv = get_convention(name)
        prompts = prompt_set(prompt_style)
        recorded = meta.get("identity") or {}
        identity = ReasonerIdentity(
            name=f"replay of {recorded.get('name', self.path.name)}",
            backend="replay",
            revision=_file_digest(self.path),
            convention=conv.name,
            prompt_version=recorded.get("prompt_version", prompts.identity),
            decoding={"source": str(self.path)},
        )
        super().__init__(identity, conv, prompts)
        self._by_round: dict[int | None, list[dict]] = defaultdict(list)
        for entry in entries:
            self._by_round[entry.get("round")].append(entry)
        self._served: dict[int | None, int] = defaultdict(int)
        self._rounds = any(key is not None for key in self._by_round)
        self._lock = threading.Lock()

    def complete(
        self, request: ChatRequest, on_text: TextCallback | None, cancel: threading.Event | None
    ) -> tuple[str, GenerationStats]:
        start = time.perf_counter()
        entry = self._next(request.task, request.round)
        raw = entry["raw"]
        if on_text is not None:
            for n in range(0, len(raw), _CHUNK):
                on_text(raw[n : n + _CHUNK])
        return raw, GenerationStats(None, None, time.perf_counter() - start, 0.0, "stop")

    def _next(self, task: str, round_number: int) -> dict:
        key = round_number if self._rounds else None
        with self._lock:
            queue = self._by_round.get(key, [])
            position = self._served[key]
            if position >= len(queue):
                where = f"for round {key}" if key is not None else "left"
                raise InputError(
                    f"the replay file {self.path} has no answer {where} (it holds {len(queue)} for "
                    f"{'that round' if key is not None else 'the whole session'}, and call {position + 1} asked for "
                    f"a '{task}' answer): record one line per reasoner call, e.g. "
                    '{"round": 1, "raw": "..."}.'
                )
            entry = queue[position]
            self._served[key] = position + 1
        step = entry.get("step")
        if step is not None and step != task:
            raise InputError(
                f"line {entry['_line']} of the replay file {self.path} answers a '{step}' call, but the reasoner was "
                f"asked for '{task}': the file was recorded with another reasoning strategy."
            )
        return entry


def _read_replay_file(path: Path) -> tuple[dict, list[dict]]:
    if path.is_dir():
        raise InputError(
            f"the replay file {path} is a folder: pass the JSON-lines file of recorded answers in it "
            "(replay:<folder>/answers.jsonl)."
        )
    if not path.is_file():
        raise InputError(f"the replay file {path} does not exist: pass a JSON-lines file of recorded answers.")
    meta: dict = {}
    entries: list[dict] = []
    for number, item in read_json_objects(path, f"the replay file {path}"):
        if "meta" in item:
            if isinstance(item["meta"], dict):
                meta.update(item["meta"])
                _check_meta(meta, path, number)
            continue
        if not isinstance(item.get("raw"), str):
            raise InputError(f'line {number} of the replay file {path} has no "raw" answer text.')
        round_number = item.get("round")
        if round_number is not None and (isinstance(round_number, bool) or not isinstance(round_number, int)):
            raise InputError(f'line {number} of the replay file {path}: "round" must be a whole number.')
        entries.append({**item, "_line": number})
    if not entries:
        raise InputError(f"the replay file {path} holds no answers.")
    with_round = sum(1 for e in entries if e.get("round") is not None)
    if 0 < with_round < len(entries):
        raise InputError(f'the replay file {path} gives "round" on some lines only: give it on all or none.')
    return meta, entries


def _check_meta(meta: dict, path: Path, number: int) -> None:
    """The meta line's fields have the types the reasoner reads (a hand-edited file may say otherwise)."""
    identity = meta.get("identity")
    wrong = []
    if meta.get("convention") is not None and not isinstance(meta["convention"], str):
        wrong.append('"convention" must be a convention name')
    if identity is not None and not isinstance(identity, dict):
        wrong.append('"identity" must be an object')
    elif identity:
        wrong += [
            f'"identity.{k}" must be text'
            for k in ("name", "prompt_version")
            if not isinstance(identity.get(k, ""), str)
        ]
    if wrong:
        raise InputError(f"line {number} of the replay file {path}: {'; '.join(wrong)}.")


def _file_digest(path: Path) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()

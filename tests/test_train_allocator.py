"""The CPU allocator setting of training: what is asked for, what runs, and the restart that preloads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from installed import require  # the tests folder is on sys.path (conftest.py)

from longalign.train import allocator
from longalign.train.allocator import Decision, decide, loaded, requested, restart_command

ROOT = Path(__file__).resolve().parents[1]
FOUND = {"tcmalloc": "/opt/lib/libtcmalloc_minimal.so.4", "jemalloc": "/opt/lib/libjemalloc.so.2"}


def test_the_option_beats_the_environment_which_beats_auto():
    assert requested("lean", {allocator.ENV: "glibc"}) == "lean"
    assert requested("auto", {allocator.ENV: " Glibc "}) == "glibc"
    assert requested("auto", {}) == "auto" and requested(None, {}) == "auto"
    with pytest.raises(ValueError, match="'fast' is not one of auto, glibc, lean, tcmalloc, jemalloc"):
        requested("auto", {allocator.ENV: "fast"})


def test_auto_is_tcmalloc_where_installed_and_glibc_elsewhere():
    assert decide("auto", find=FOUND.get) == Decision("auto", "tcmalloc", FOUND["tcmalloc"])
    missing = decide("auto", find=lambda name: None)
    assert missing.setting == "glibc" and missing.library is None
    assert "apt-get install libtcmalloc-minimal4" in missing.note
    on_gpu = decide("auto", find=FOUND.get, gpu=True)
    assert on_gpu.setting == "glibc" and "GPU" in on_gpu.note


def test_named_settings():
    assert decide("lean", find=FOUND.get) == Decision("lean", "lean")
    assert decide("glibc", find=FOUND.get) == Decision("glibc", "glibc")
    assert decide("jemalloc", find=FOUND.get, gpu=True).library == FOUND["jemalloc"]  # asked for by name
    with pytest.raises(ValueError, match="apt-get install libjemalloc2"):
        decide("jemalloc", find=lambda name: None)


def test_which_allocator_a_process_runs_on_is_read_from_its_mappings():
    maps = "7f00-7f10 r-xp 00000000 08:01 42 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n"
    assert loaded(maps) == "tcmalloc"
    assert loaded("7f00-7f10 r-xp 0 0 0 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n") == "jemalloc"
    assert loaded("7f00-7f10 r-xp 0 0 0 /usr/lib/x86_64-linux-gnu/libc.so.6\n") == "glibc"


def test_the_restart_preloads_the_library_first_and_never_loops():
    tc = Decision("auto", "tcmalloc", FOUND["tcmalloc"])
    argv, env = restart_command(
        tc, ["python", "-m", "longalign.cli", "train"], {"LD_PRELOAD": "/x/libfoo.so"}, current="glibc"
    )
    assert argv == ["python", "-m", "longalign.cli", "train"]
    assert env["LD_PRELOAD"] == f"{FOUND['tcmalloc']} /x/libfoo.so"
    assert env[allocator.RESTARTED_ENV] == "tcmalloc" and "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD" in env
    quiet = restart_command(tc, ["x"], {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": "5"}, current="glibc")
    assert quiet[1]["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == "5"  # the user's setting stands
    assert restart_command(tc, ["x"], {}, current="tcmalloc") is None  # already loaded
    assert restart_command(tc, ["x"], {allocator.RESTARTED_ENV: "tcmalloc"}, current="glibc") is None
    assert restart_command(tc, ["x"], {}, current="glibc", platform="darwin") is None
    assert restart_command(Decision("lean", "lean"), ["x"], {}, current="glibc") is None  # set in-process


def test_restart_with_preload_replaces_the_process_with_the_same_command(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "find_library", lambda name, dirs=(): FOUND.get(name))
    monkeypatch.setattr(allocator, "gpu_visible", lambda: False)
    monkeypatch.setattr(allocator, "loaded", lambda maps=None: "glibc")
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "longalign.cli", "train", "--run", "r"], raising=False)
    monkeypatch.delenv(allocator.RESTARTED_ENV, raising=False)
    monkeypatch.delenv(allocator.ENV, raising=False)
    allocator.restart_with_preload("auto", execve=lambda *a: calls.append(a))
    ((exe, argv, env),) = calls
    assert exe == sys.executable and argv == ["python", "-m", "longalign.cli", "train", "--run", "r"]
    assert env["LD_PRELOAD"].startswith(FOUND["tcmalloc"])
    calls.clear()
    allocator.restart_with_preload("glibc", execve=lambda *a: calls.append(a))
    allocator.restart_with_preload("lean", execve=lambda *a: calls.append(a))
    assert calls == []


def test_apply_in_process_reports_what_runs():
    assert allocator.apply_in_process(Decision("glibc", "glibc")) == loaded()
    if loaded() == "glibc":  # a preloaded allocator cannot be switched on from inside
        assert allocator.apply_in_process(Decision("auto", "tcmalloc", FOUND["tcmalloc"])) == "glibc"
        assert allocator.apply_in_process(Decision("lean", "lean"), {"MALLOC_MMAP_THRESHOLD_": "4096"}) == "glibc"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux")
def test_a_real_restart_runs_the_same_command_on_tcmalloc():
    require("tcmalloc")  # a skip when it is missing; a failure under CI=true (scripts/setup.sh installs it)
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout); "
        "from longalign.train import allocator; allocator.restart_with_preload('tcmalloc'); "
        "print('running on', allocator.loaded())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.RESTARTED_ENV)}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "starting again with tcmalloc preloaded" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "running on tcmalloc"
    assert out.stdout.count("running on") == 1  # the first process was replaced, not run to its end


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux") or allocator.gpu_visible(), reason="needs Linux and no GPU")
def test_longalign_train_starts_itself_again_on_tcmalloc(tmp_path):
    require("tcmalloc")
    from test_train import TINY, make_tokens

    make_tokens(tmp_path / "tokens")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.RESTARTED_ENV, allocator.ENV)}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "longalign.cli", "train", "--tokens", str(tmp_path / "tokens"), "--output-dir"]
    cmd += [str(tmp_path / "out"), "--model", TINY, "--max-len", "64", "--max-steps", "1", "--save-steps", "0"]
    cmd += ["--save-final", "false", "--progress", "false"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "starting again with tcmalloc preloaded" in out.stderr
    meta = json.loads((tmp_path / "out" / "run_meta.json").read_text())
    assert meta["cpu_allocator"] == "tcmalloc"
    again = subprocess.run(
        [*cmd[:7], str(tmp_path / "out2"), *cmd[8:], "--cpu-allocator", "lean"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "starting again" not in again.stderr
    assert json.loads((tmp_path / "out2" / "run_meta.json").read_text())["cpu_allocator"] == "lean"

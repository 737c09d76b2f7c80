"""scripts/gpu_check.sh: it parses, everything it calls exists (scripts, their flags, modules,
Hydra keys and pipeline options), and on a CPU it skips the CUDA steps, runs the cheap CPU ones
and exits 0 with its summary (slow: several training processes)."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_train
from omegaconf import OmegaConf

from scl_slt.stages.pipeline import split_arguments

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

_END = {";", "|", "||", "&&", "then", "do", "]]"}


def python_invocations() -> list[list[str]]:
    """The words after each `"$PYTHON"` of the script (comments and here-documents left out;
    continuation lines joined; stopped at the end of the command)."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if line.lstrip().startswith("#") or '"$PYTHON"' not in line:
            continue
        words = []
        for word in shlex.split(line.split('"$PYTHON"', 1)[1]):
            if word in _END or word.startswith((">", "2>")) or word.endswith(")"):
                break
            words.append(word)
        found.append(words)
    return found


def calls(kind: str) -> dict[str, list[list[str]]]:
    """{script path or module: [argument lists]} of the `.py` scripts or the `-m` modules."""
    out: dict[str, list[list[str]]] = {}
    for words in python_invocations():
        if kind == "module" and words[:1] == ["-m"]:
            out.setdefault(words[1], []).append(words[2:])
        elif kind == "script" and words and words[0].endswith(".py"):
            out.setdefault(words[0], []).append(words[1:])
    return out


@functools.cache
def help_text(script: str) -> str:
    done = subprocess.run(
        [sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{script} --help failed:\n{done.stderr[-2000:]}"
    return done.stdout


def bash_array(name: str) -> list[str]:
    match = re.search(rf"^{name}=\((.*?)^\)", SCRIPT.read_text(), re.M | re.S)
    assert match, f"no {name}=( ... ) in {SCRIPT}"
    return shlex.split(match.group(1), comments=True)


@needs_bash
def test_the_script_parses():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert os.access(SCRIPT, os.X_OK), "scripts/gpu_check.sh is not executable"


def test_every_script_it_calls_exists_with_the_flags_it_passes():
    scripts = calls("script")
    assert {"scripts/bench_train_step.py", "scripts/bench_all_pairs.py"} <= set(scripts)
    for script, invocations in scripts.items():
        assert (REPO / script).is_file(), f"gpu_check.sh calls {script}, which does not exist"
        flags = {w.split("=", 1)[0] for args in invocations for w in args if w.startswith("--")}
        missing = [
            f for f in sorted(flags) if not re.search(rf"(?<![\w-]){f}(?![\w-])", help_text(script))
        ]
        assert not missing, f"{script} --help does not list {missing} (gpu_check.sh passes them)"


def test_every_module_it_runs_exists_and_takes_its_options(tmp_path):
    modules = calls("module")
    assert {"pytest", "scl_slt.pipeline", "scl_slt.train"} <= set(modules)
    for module in modules:
        assert importlib.util.find_spec(module) is not None, f"no module {module}"
    # The pipeline's arguments are all pipeline options (none falls through as a Hydra override).
    for args in modules["scl_slt.pipeline"]:
        own = [w.replace("$OUT", str(tmp_path)) for w in args]
        _, overrides = split_arguments(own)
        assert overrides == [], f"not pipeline options any more: {overrides}"
    # The resume runs' overrides compose against the schema (unknown keys and wrong types fail),
    # and every key the training commands set literally exists.
    cfg = compose_train([*bash_array("TINY_TRAIN"), "device=cpu", "stage.max_steps=4"])
    missing = object()
    for args in modules["scl_slt.train"]:
        for word in args:
            key = word.split("=", 1)[0]
            if "=" in word and re.fullmatch(r"[\w.]+", key):
                assert OmegaConf.select(cfg, key, default=missing) is not missing, key


@pytest.mark.slow
@needs_bash
def test_on_cpu_it_skips_the_cuda_steps_and_exits_0(tmp_path):
    env = {
        **os.environ,
        "FORCE_CPU": "1",  # as on a machine without a GPU, wherever the test runs
        "PYTHON": sys.executable,
        "OUT": str(tmp_path / "out"),
        "SCL_SLT_CACHE": str(tmp_path / "cache"),
    }
    done = subprocess.run(
        ["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-2000:]
    for step in ("gpu-tests", "train-bench", "all-pairs", "pipeline"):
        assert f"[{step}] skipped: " in out
    assert "=== summary" in out
    summary = out.split("=== summary", 1)[1]
    assert re.search(r"^train-bench-tiny-cpu +ok", summary, re.M)
    assert re.search(r"^resume-cpu +ok", summary, re.M)
    assert "max |resumed - uninterrupted| = 0 (tolerance 0)" in out
    assert out.rstrip().endswith("gpu_check: no step failed")

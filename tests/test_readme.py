"""README commands as written: every `python -m scip_gpu` / `scip-gpu` command in a bash block
composes (its overrides checked and composed by Hydra, then validated); the cheap ones (the demo)
run fully with a few objects; the Python API example runs verbatim."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)


def blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCK.findall(README.read_text()) if kind == lang]


def commands() -> list[list[str]]:
    """The scip_gpu commands of the README's bash blocks, as argument lists (shell-split)."""
    out = []
    for body in blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            args = shlex.split(line, comments=True)
            if args[:3] == ["python", "-m", "scip_gpu"]:
                out.append(args[3:])
            elif args[:1] == ["scip-gpu"]:
                out.append(args[1:])
    return out


COMMANDS = commands()
FLAGS = {"--help", "--version", "warmup"}


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from scip_gpu._resources import conf_dir
    from scip_gpu.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("config", overrides=overrides)


def _cheap(args: list[str]) -> bool:
    """The demo on this machine's CPU, nothing that needs a GPU, a cluster or a given folder."""
    return all(a == "+dataset=demo" or not a.startswith(("+dataset", "device=cuda", "cluster", "output"))
               for a in args)


def test_readme_has_the_commands():
    assert [] in COMMANDS and ["warmup"] in COMMANDS and len(COMMANDS) >= 12
    assert any(a.startswith("features.per_mask=") for c in COMMANDS for a in c)


@pytest.mark.parametrize("args", [c for c in COMMANDS if not FLAGS & set(c)], ids=" ".join)
def test_readme_command_composes(args):
    from scip_gpu.cli import to_config
    from scip_gpu.config import validate
    from scip_gpu.overrides import prepare

    cfg, _ = to_config(_compose(prepare(args)))
    validate(cfg)


@pytest.mark.parametrize("args", [c for c in COMMANDS if not FLAGS & set(c) and _cheap(c)], ids=" ".join)
def test_readme_demo_command_runs(args, tmp_path, monkeypatch):
    """Run as written, with a few objects, in this process, into a temporary folder."""
    from scip_gpu.cli import task
    from scip_gpu.overrides import prepare

    monkeypatch.chdir(tmp_path)
    extra = ["dataset.n_objects=4", "cluster=sync", "progress=false"]
    assert task(_compose(prepare(args + extra))) == 0
    (run,) = (tmp_path / "outputs").iterdir()
    assert (run / "features.h5ad").is_file()


@pytest.mark.parametrize("flag", sorted(FLAGS - {"warmup"}))
def test_readme_flags(flag, capsys):
    from scip_gpu import __version__
    from scip_gpu.cli import main

    with pytest.raises(SystemExit) as exc:
        main([flag])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert (f"scip_gpu {__version__}" in out) if flag == "--version" else ("+dataset=demo" in out and "usage" in out)


def test_readme_python_api_example(tmp_path, monkeypatch):
    """The Python API section's example, verbatim."""
    text = README.read_text()
    section = text[text.index("## Python API"):text.index("\n## ", text.index("## Python API") + 5)]
    (code,) = [b for kind, b in BLOCK.findall(section) if kind == "python"]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)  # noqa: S102 - the README's own code
    assert namespace["adata"].shape == (12, 1369) and (namespace["adata"].obs["meta_status"] == "ok").all()
    assert namespace["small"].n_obs == 12

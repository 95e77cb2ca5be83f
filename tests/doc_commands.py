"""Checks that the commands and config keys of README.md and docs/*.md work as written
(used by tests/unit/test_readme_commands.py).

Nothing trains: every check is an argument parse, a Hydra composition or `bash -n`.

- Fenced blocks labelled bash/sh/shell/console: each command (continuation lines joined,
  `#` comments dropped, split at `|`, `&&`, `||`, `;`, leading `VAR=value` and redirections
  dropped) is checked by what it runs:
  * `python scripts/<x>.py ARGS`, a console script of pyproject.toml (`nmtbench-train ARGS`),
    `torchrun [its options] scripts/<x>.py ARGS`: the entry point runs in-process up to its
    argument parsing. A Hydra app gets `--cfg job` appended, so its config is composed with
    the overrides exactly as on the command line (an unknown key or option fails) and nothing
    runs; an argparse app stops right after `parse_args` succeeded.
    A Hydra multirun (`-m a=1,2`) is composed once per sweep value. Commands that already
    show something (`--cfg`, `--info`, `--help`) keep their flag.
  * `bash X`, `X.sh ARGS`, `sbatch [options] X`: the script exists and passes `bash -n`.
  * `make TARGET`: `make -n TARGET` succeeds, and each command it would run is checked as above.
  * `srun`, `timeout`, `env`, `nohup`, `time`, `nice`, `exec`: the command they run is checked.
  * `python -m M`: M is importable; any other program (`tensorboard`, `echo`): it is a shell
    builtin, on PATH, or a cluster/GPU tool (CLUSTER_TOOLS) a CPU machine lacks.
- Inline code in prose, by what it looks like:
  * a command (several words starting with python/torchrun/make/bash/sbatch, a console
    script or scripts/): as above; a lone `nmtbench-x` must be a console script;
  * Hydra overrides (`trainer.max_steps=100 data=toy`): compose with one of the Hydra apps;
    `group=` alone names a group that exists;
  * a config key alone (`data.max_tokens`): a key of a composed config (each configs/*.yaml
    with its defaults, and with any one option of any group), or an attribute of the object
    its parent node builds (`trainer.world_size`: the `_target_` lightning.pytorch.Trainer;
    `model.flops_per_batch`: the model class that `model.name` selects);
  * a repository path (`configs/...`, `scripts/...`): exists; markdown links resolve;
  * table rows `| `group` | `option`, ... |`: each option exists in configs/<group>/.
- No fence without a language (a command block could slip past the checks), no `_TBD_` /
  TODO placeholders, and documents cited in code (`docs/interfaces.md`, `DESIGN.md`) exist.

Substitution rules, applied before checking: `<...>` placeholders become `x` (`<run>/last.ckpt`
-> `x/last.ckpt`); a whole-argument placeholder of a Hydra app (`<overrides>`) stands for
any overrides and is dropped; as a key segment (`callbacks.<name>=null`) a placeholder stands
for an existing child of that node. `$NAME` / `${NAME}` (upper case: environment variables)
become `x` and `$((...))` becomes `1`; `{a,b}` offers alternatives, each checked. `???`
(mandatory) values stay: `--cfg job` composes without them. Overrides in ALL CAPS
(`PARALLEL=1`) are environment variables, not checked. Deliberate mistakes the docs show
on purpose are listed in EXPECTED_ERRORS with a word their error must contain.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from nmtbench.schema import register_configs

from .doc_snippets import ROOT

CONFIG_DIR = ROOT / "configs"


def _console_scripts() -> dict[str, str]:
    """[project.scripts] of pyproject.toml (read without tomllib, which Python 3.10 lacks)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", text, re.S | re.M).group(1)
    return dict(re.findall(r'^([\w.-]+)\s*=\s*"([^"]+)"', section, re.M))


CONSOLE_SCRIPTS = _console_scripts()
PROJECT = re.search(r'^name = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
BUILTINS = {"cd", ".", "source", "export", "set", "echo", "exit", "true", "false", "unset"}
WRAPPERS = {"srun", "timeout", "env", "nohup", "time", "nice", "exec"}  # run the command after them
CLUSTER_TOOLS = {"scontrol", "squeue", "scancel", "sinfo", "nvidia-smi"}  # not on a CPU machine
PATH_ROOTS = ("configs/", "scripts/", "src/", "docs/", "tests/", "benchmarks/", ".github/")
FILE_SUFFIXES = (
    ".py",
    ".yaml",
    ".yml",
    ".json",
    ".md",
    ".txt",
    ".ckpt",
    ".log",
    ".csv",
    ".png",
    ".sh",
    ".sbatch",
    ".toml",
    ".model",
    ".vocab",
)
# Deliberate mistakes the docs show on purpose -> a word their error message must contain.
EXPECTED_ERRORS = {"model.d_modle=64": "d_modle"}

PLACEHOLDER = re.compile(r"<[A-Za-z][^<>\n]*?>")
ENV_VAR = re.compile(r"\$\{?[A-Z_][A-Z0-9_]*\}?")
ARITHMETIC = re.compile(r"\$\(\([^)]*\)\)")
REDIRECT = re.compile(r"(?<!\S)\d*(?:>>?|<)&?\s*\S+")
OVERRIDE = re.compile(r"^[+~]?[A-Za-z_][\w.\-/@]*=\S*$")
KEY = re.compile(r"^[a-z_][a-z0-9_]*(?:\.[a-z0-9_*]+)+$")


# -- running entry points up to their argument parsing ---------------------------------------


class _Parsed(Exception):
    """Raised by the patched ArgumentParser.parse_args once an argparse app parsed its args."""


def _substitute(text: str) -> str:
    text = ARITHMETIC.sub("1", text)
    text = ENV_VAR.sub("x", text)
    return PLACEHOLDER.sub("x", text)


def _run_entry(call, argv: list[str]) -> tuple[str | None, str | None]:
    """Run `call()` with sys.argv = argv, stopping at argument parsing.
    Returns (kind, error): kind "hydra" | "argparse" | None; error None when it parsed."""
    original = argparse.ArgumentParser.parse_args
    kind: list[str] = []

    def parse_args(self, args=None, namespace=None):
        if self.description == "Hydra":  # hydra.main's own parser: compose as --cfg job would
            kind.append("hydra")
            # A whole-argument placeholder (`<overrides>`, now `x`) stands for any overrides.
            overrides = [a for a in sys.argv[1:] if a != "x"]
            shows = {
                "--cfg",
                "-c",
                "--info",
                "-i",
                "--help",
                "-h",
                "--hydra-help",
                "--shell-completion",
                "-sc",
            }
            if not shows & set(overrides):  # else it shows something already and runs nothing
                overrides += ["--cfg", "job"]
            return original(self, overrides, namespace)
        kind.append("argparse")
        namespace = original(self, args, namespace)
        raise _Parsed(namespace)

    out, err = io.StringIO(), io.StringIO()
    saved_argv = sys.argv[:]
    GlobalHydra.instance().clear()
    argparse.ArgumentParser.parse_args = parse_args
    try:
        sys.argv = list(argv)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = call()
        error = f"exit status {status}" if status not in (None, 0) else None
    except _Parsed:
        error = None
    except SystemExit as exc:
        error = (
            None if exc.code in (None, 0) else (err.getvalue().strip() or f"exit status {exc.code}")
        )
        if not kind and error and "Unknown config key" in error:
            kind.append(
                "hydra"
            )  # the entry point's key check (nmtbench.config) runs before Hydra's parser
    except Exception as exc:  # an import error, a missing config, ...
        error = f"{type(exc).__name__}: {exc}"
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.argv = saved_argv
        GlobalHydra.instance().clear()
    return (kind[0] if kind else None), error


def _console_script(name: str):
    module, _, attr = CONSOLE_SCRIPTS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def _bash_syntax(path: Path) -> str | None:
    if not path.is_file():
        return f"no such file: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    return (result.stderr.strip() or "bash -n failed") if result.returncode else None


def check_command(argv: list[str]) -> str | None:
    """None when the command would start as written, else what is wrong."""
    prog, args = argv[0], argv[1:]
    if re.fullmatch(r"python[\d.]*", prog):
        if args[:1] == ["-m"] and len(args) > 1:
            if args[1] == "torch.distributed.run":
                return check_command(["torchrun", *args[2:]])
            found = importlib.util.find_spec(args[1].split(".")[0])
            return None if found else f"no module {args[1]}"
        if not args or args[0].startswith("-"):
            return None
        script = ROOT / args[0]
        if not script.is_file():
            return f"no such script: {args[0]}"

        def run_script() -> None:
            runpy.run_path(str(script), run_name="__main__")

        return _first_problem(
            _run_entry(run_script, [str(script), *variant])[1] for variant in _sweeps(args[1:])
        )
    if prog == "torchrun":
        from torch.distributed.run import get_args_parser

        parsed = get_args_parser().parse_args(args)
        return check_command(["python", parsed.training_script, *parsed.training_script_args])
    if prog in CONSOLE_SCRIPTS:
        return _first_problem(
            _run_entry(_console_script(prog), [prog, *variant])[1] for variant in _sweeps(args)
        )
    if prog in ("bash", "sh", "sbatch"):  # a script file, then its arguments
        files = [a for a in args if not a.startswith("-")]
        return (
            _bash_syntax(ROOT / files[0])
            if files
            else (None if prog != "sbatch" else "sbatch without a script")
        )
    if prog in WRAPPERS:  # `srun [options] CMD`, `timeout 60 CMD`, `env A=1 CMD`: check CMD
        i = 0  # skip the wrapper's options, assignments and durations/counts
        while i < len(args) and re.fullmatch(r"-.*|[A-Za-z_]\w*=\S*|[\d.]+[smhd]?", args[i]):
            i += 1
        return check_command(args[i:]) if args[i:] else None
    if prog.endswith(".sh") or prog.startswith(("scripts/", "./")):
        return _bash_syntax(ROOT / prog)
    if prog == "make":
        result = subprocess.run(
            ["make", "-n", "--no-print-directory", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            # Under `make test` the parent make exports MAKEFLAGS (with -w): a nested make would
            # print "Entering directory" lines that are not commands.
            env={
                k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")
            },
        )
        if result.returncode:
            return result.stderr.strip()
        for line in result.stdout.splitlines():
            for command in split_commands(line):
                problem = check_command(command)
                if problem:
                    return f"`make {' '.join(args)}` runs `{line.strip()}`: {problem}"
        return None
    if prog in BUILTINS or prog in CLUSTER_TOOLS or shutil.which(prog):
        return None
    return f"{prog}: not a shell builtin and not on PATH"


def _first_problem(problems) -> str | None:
    return next((p for p in problems if p), None)


def _sweeps(args: list[str]) -> list[list[str]]:
    """Arguments as they are, or for a Hydra multirun (`-m a=1,2 b=x,y`): without `-m`, every
    sweep at its first value, then each other value of each sweep in turn."""
    if not {"-m", "--multirun"} & set(args):
        return [args]
    args = [a for a in args if a not in ("-m", "--multirun")]
    split = [a.partition("=") for a in args]
    first = [
        f"{k}={v.split(',')[0]}" if sep and "," in v and not re.search(r"[\[({]", v) else a
        for a, (k, sep, v) in zip(args, split)
    ]
    variants = [first]
    for i, (k, sep, v) in enumerate(split):
        if sep and "," in v and not re.search(r"[\[({]", v):
            variants += [first[:i] + [f"{k}={alt}"] + first[i + 1 :] for alt in v.split(",")[1:]]
    return variants


def split_commands(text: str) -> list[list[str]]:
    """Simple commands of one shell line after the substitution rules, without leading
    VAR=value assignments and redirections."""
    lexer = shlex.shlex(REDIRECT.sub(" ", _substitute(text)), posix=True, punctuation_chars=";&|")
    lexer.commenters = "#"
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in (";", "&", "&&", "|", "||"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    out = []
    for command in commands:
        while command and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", command[0]):
            command = command[1:]
        if command:
            out.append(command)
    return out


# -- config keys ---------------------------------------------------------------------------


def _keys(node, prefix: str = "", targets: dict | None = None) -> set[str]:
    keys = set()
    if isinstance(node, dict):
        if "_target_" in node and targets is not None:
            targets.setdefault(prefix, set()).add(str(node["_target_"]))
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            keys.add(path)
            keys |= _keys(value, path, targets)
    return keys


_KNOWN_KEYS: set[str] = set()
_TARGETS: dict[str, set[str]] = {}  # config path -> the `_target_`s it builds


def known_keys() -> set[str]:
    """Every key of each top-level config (configs/*.yaml) composed with its defaults, and of
    the first of them that composes with each option of each config group (Hydra's own
    `hydra.*` keys included)."""
    if _KNOWN_KEYS:
        return _KNOWN_KEYS
    names = [p.stem for p in sorted(CONFIG_DIR.glob("*.yaml"))]
    choices = [[]]
    for group in sorted(p for p in CONFIG_DIR.iterdir() if p.is_dir()):
        choices += [[f"{group.name}={opt.stem}"] for opt in sorted(group.glob("*.yaml"))]
    composed = []
    GlobalHydra.instance().clear()
    register_configs()  # the structured-config schemas of configs/model and configs/data
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for overrides in choices:
            for name in names:
                try:
                    composed.append(compose(name, overrides=overrides, return_hydra_config=True))
                except Exception:  # this group/option is not part of this config
                    continue
                if overrides:
                    break
    GlobalHydra.instance().clear()
    for cfg in composed:
        _KNOWN_KEYS.update(_keys(OmegaConf.to_container(cfg, resolve=False), targets=_TARGETS))
        _TARGETS.setdefault("model", set()).add(
            f"nmtbench.models:{cfg.get('model', {}).get('name')}"
        )
    return _KNOWN_KEYS


def _builds_attribute(key: str) -> bool:
    """Whether `key` names an attribute (property, method) of an object its parent node
    builds: a `_target_` class (`trainer.world_size` of lightning.pytorch.Trainer) or, for
    `model`, the model class registered under `model.name` (`model.flops_per_batch`)."""
    parent, _, attr = key.rpartition(".")
    for target in _TARGETS.get(parent, ()):
        if target.startswith("nmtbench.models:"):
            from nmtbench.models import registered_models

            entry = registered_models().get(target.partition(":")[2])
            cls = entry.model_class if entry else None
        else:
            module, _, name = target.rpartition(".")
            try:
                cls = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                continue
        if cls is not None and hasattr(cls, attr):
            return True
    return False


def _key_pattern(key: str) -> re.Pattern:
    return re.compile(re.escape(PLACEHOLDER.sub("\0", key)).replace("\0", r"[^.]+") + "$")


def check_overrides(tokens: list[str]) -> str | None:
    """None when the overrides compose with one of the Hydra apps, else the first app's error."""
    resolved = []
    for token in tokens:
        prefix = re.match(r"^[+~]?", token).group(0)
        key, _, value = token[len(prefix) :].partition("=")
        if PLACEHOLDER.search(key):
            matches = sorted(k for k in known_keys() if _key_pattern(key).match(k))
            if not matches:
                return f"no config key matches {key}"
            key = matches[0]
        resolved.append(f"{prefix}{key}={_substitute(value)}")
    errors = []
    for name in CONSOLE_SCRIPTS:
        kind, error = _run_entry(_console_script(name), [name, *resolved])
        if kind == "hydra":
            if error is None:
                return None
            errors.append(error)
    return errors[0] if errors else "no Hydra app among the console scripts"


def _normalize(text: str) -> str:
    """`$((...))` -> 1, `$NAME` -> x, and spaces inside `<...>` placeholders -> `_` (so a
    placeholder is one word); the placeholders themselves stay."""
    text = ARITHMETIC.sub("1", text)
    text = ENV_VAR.sub("x", text)
    return PLACEHOLDER.sub(lambda m: m.group(0).replace(" ", "_"), text)


def _alternatives(text: str) -> list[str]:
    """`{a,b}` in the docs offers alternatives: one text per combination."""
    match = re.search(r"(?<!\$)\{([^{}\s]*,[^{}\s]*)\}", text)
    if not match:
        return [text]
    head, tail = text[: match.start()], text[match.end() :]
    return [x for alt in match.group(1).split(",") for x in _alternatives(head + alt + tail)]


def check_line(text: str) -> str | None:
    for variant in _alternatives(_normalize(text)):
        for command in split_commands(variant):
            problem = check_command(command)
            if problem:
                return f"`{' '.join(command)}`: {problem}"
    return None


def check_inline(span: str) -> str | None:
    """Check an inline code span by what it looks like; None when fine or not checkable."""
    text = _normalize(span)
    tokens = text.split()
    first = tokens[0]
    if len(tokens) > 1 and (
        first in ("python", "python3", "torchrun", "make", "bash", "sbatch")
        or first in CONSOLE_SCRIPTS
        or first.startswith("scripts/")
    ):
        return check_line(span)
    if len(tokens) == 1 and first.startswith(f"{PROJECT}-"):
        return (
            None
            if first in CONSOLE_SCRIPTS
            else f"{first} is not a console script of pyproject.toml"
        )
    if len(tokens) == 1 and text.endswith("=") and text[:-1] in known_keys():
        return None  # `trainer=`: names the option of a group
    if all(OVERRIDE.match(PLACEHOLDER.sub("x", t)) for t in tokens):
        tokens = [
            t for t in tokens if not re.match(r"^[A-Z_][A-Z0-9_]*=", t)
        ]  # environment variables
        return check_overrides(tokens) if tokens else None
    if (
        len(tokens) == 1
        and KEY.match(PLACEHOLDER.sub("x", text))
        and not text.endswith(FILE_SUFFIXES)
    ):
        if text.split(".")[0] not in {k.split(".")[0] for k in known_keys()}:
            return None  # `nmtbench.scoring`, `torch.nn`: not a config key
        if any(_key_pattern(text).match(k) for k in known_keys()) or _builds_attribute(text):
            return None
        return f"{text} is not a key of any composed config"
    if len(tokens) == 1 and text.startswith(PATH_ROOTS):
        pattern = PLACEHOLDER.sub("*", text).rstrip("/")
        if not list(ROOT.glob(pattern)):
            return f"no such file or directory: {span}"
    return None

"""Every command and config key in README.md and docs/*.md works as written: the checks and
their substitution rules are described in tests/doc_commands.py, the extraction in
tests/doc_snippets.py."""

from __future__ import annotations

import re

import pytest

from ..doc_commands import (
    CONFIG_DIR,
    EXPECTED_ERRORS,
    PATH_ROOTS,
    check_inline,
    check_line,
    check_overrides,
    known_keys,
)
from ..doc_snippets import DOCS, PROBLEMS, ROOT, SNIPPETS


def test_docs_have_commands_to_check():
    assert sum(s.kind == "command" for s in SNIPPETS) >= 10, "no fenced commands found: did the format change?"


def test_no_unlabelled_fences_placeholders_or_broken_links():
    assert not PROBLEMS, "\n".join(PROBLEMS)


@pytest.mark.parametrize("snippet", [s for s in SNIPPETS if s.kind == "command"], ids=str)
def test_fenced_command(snippet):
    assert check_line(snippet.text) is None, f"{snippet}\n{check_line(snippet.text)}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_inline_code(doc):
    where = f"{doc.relative_to(ROOT)}:"
    problems = [f"{s}\n    {problem}" for s in SNIPPETS
                if s.kind == "inline" and s.where.startswith(where) and s.text not in EXPECTED_ERRORS
                and (problem := check_inline(s.text))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_group_tables_list_existing_options(doc):
    """Table rows `| `group` | `option`, `option` ... |` name options that exist."""
    problems = []
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        group = re.fullmatch(r"`(\w+)`", cells[0]) if len(cells) > 1 else None
        if not group or not (CONFIG_DIR / group.group(1)).is_dir():
            continue
        for option in re.findall(r"`(\w+)`", cells[1]):
            if not (CONFIG_DIR / group.group(1) / f"{option}.yaml").is_file():
                problems.append(f"{doc.relative_to(ROOT)}:{number}: {group.group(1)}={option} does not exist")
    assert not problems, "\n".join(problems)


def test_documents_cited_in_code_exist():
    """Documents named in source, benchmarks, scripts and configs (a path under a repository directory,
    `docs/interfaces.md`, or an upper-case name, `README.md`) exist, relative to the repository
    root, docs/ or the citing file. Lower-case bare names are outputs (`table.md`)."""
    problems = []
    files = [*ROOT.glob("src/**/*.py"), *ROOT.glob("benchmarks/**/*.py"), *ROOT.glob("scripts/**/*"),
             *ROOT.glob("configs/**/*.yaml")]
    for path in sorted(f for f in files if f.is_file()):
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for name in re.findall(r"[\w./-]*\w\.md\b", line):
                if not (name.startswith(PATH_ROOTS) or re.fullmatch(r"[A-Z][A-Z0-9_]*\.md", name)):
                    continue
                if not any((base / name).exists() for base in (ROOT, ROOT / "docs", path.parent)):
                    problems.append(f"{path.relative_to(ROOT)}:{number}: {name} does not exist")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("span,word", sorted(EXPECTED_ERRORS.items()))
def test_deliberate_mistakes_fail_as_the_docs_say(span, word):
    assert any(s.text == span for s in SNIPPETS), f"{span} is no longer in the docs: drop it from EXPECTED_ERRORS"
    problem = check_overrides(span.split())
    assert problem is not None and word in problem, problem


def test_the_checks_catch_mistakes():
    """The checker itself: each of these is wrong and must be reported."""
    assert check_inline("callbacks.wallclock.targets") is not None           # the key is bleu_targets
    assert check_inline("callbacks.wallclock.bleu_targets") is None
    assert check_inline("callbacks.<name>=null") is None
    assert check_inline("trainer.max_stepz=100 data=toy") is not None
    assert check_inline("trainer.max_steps=100 data=toy") is None
    assert check_line("python scripts/train.py model=transformr") is not None
    assert check_line("python scripts/evaluate.py ckpt_path=<ckpt> beam=4") is not None
    assert check_line("python scripts/average_checkpoints.py runs/x --last 5") is not None
    assert check_line("python scripts/no_such_script.py") is not None
    assert check_line("nmtbench-train experiment=no_such_row") is not None
    assert check_line("torchrun --nproc-per-node 2 scripts/train.py trainer=multinode model.d_modle=1") is not None
    assert check_line("make no-such-target") is not None
    assert check_line("srun --kill-on-bad-exit=1 python scripts/train.py trainer=multinod") is not None
    assert check_line("timeout 60 python scripts/train.py experiment=smoke") is None
    assert check_line("python scripts/train.py -m model=transformer,lstm_seq2seq") is None
    assert check_line("python scripts/train.py -m model=transformer,lstm_seq2sq") is not None
    assert check_line("python scripts/train.py experiment=smoke --info defaults") is None
    assert check_inline("configs/model/no_such_model.yaml") is not None
    assert check_inline("nmtbench-trian") is not None and check_inline("nmtbench-train") is None
    assert check_inline("trainer.world_size") is None            # an attribute of lightning's Trainer
    assert "data.max_tokens" in known_keys() and "hydra.run.dir" in known_keys()

"""The newcomer's docs cannot drift from the code: docs/COLAB_COMMANDS.md is exactly what
scripts/write_commands_doc.py builds from the parser; docs/COLAB_TRAINING.md's parameter counts and
file sizes match the presets' models; every message its troubleshooting quotes is one the package
prints; every link points at a file or heading that exists."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMANDS_DOC = REPO / "docs" / "COLAB_COMMANDS.md"
TRAINING_DOC = REPO / "docs" / "COLAB_TRAINING.md"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_commands_doc_is_what_the_parser_gives():
    expected = load_script("write_commands_doc").render()
    assert COMMANDS_DOC.read_text() == expected, (
        "docs/COLAB_COMMANDS.md is out of date: run `python scripts/write_commands_doc.py` and commit it")


def test_the_commands_doc_names_every_command_and_flag():
    from midikit.cli import COMMANDS, build_parser

    text = COMMANDS_DOC.read_text()
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in COMMANDS:
        assert f"\n## {name}\n" in text and f"python -m midikit {name} " in text, name
        for action in commands[name]._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in text, (name, flag)
    assert "the original project decoded greedily by default; midikit samples at temperature 0.95" in text


def presets_table() -> list[dict]:
    text = TRAINING_DOC.read_text().split("<!-- BEGIN generated: presets -->")[1]
    text = text.split("<!-- END generated: presets -->")[0]
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[1].startswith("`"):
            rows.append(dict(model_type=cells[0], preset=cells[1].strip("`"), parameters=cells[4], state=cells[5],
                             pth=cells[6]))
    return rows


def size_in_bytes(text: str) -> float:
    number, unit = text.split()
    return float(number.replace(",", "")) * {"MB": 1e6, "GB": 1e9}[unit]


def test_the_training_doc_matches_the_presets_models():
    """Parameter counts from the presets' models (built on the meta device: no memory, no time), and the
    measured sizes that follow from them: a .pth is the fp32 weights, a state about three times that."""
    import torch

    from midikit.models import build_model, count_parameters
    from midikit.presets import PRESETS, get_preset

    text = TRAINING_DOC.read_text()
    vocab = int(re.search(r"vocabulary \((\d+) tokens\)", text).group(1))
    context = int(re.search(r"context \((\d+) tokens\)", text).group(1))
    rows = presets_table()
    assert {(r["model_type"], r["preset"]) for r in rows} == {(m, p) for m in PRESETS for p in PRESETS[m]}
    for row in rows:
        with torch.device("meta"):
            preset = get_preset(row["model_type"], row["preset"])
            model = build_model(preset.model_config(row["model_type"], vocab, context))
        parameters = count_parameters(model)
        assert row["parameters"] == f"{parameters / 1e6:,.2f}M", (row, parameters)
        weights = 4 * parameters  # fp32; the shown sizes are rounded (0.1 MB, 0.01 GB)
        assert weights * 0.995 - 0.1e6 <= size_in_bytes(row["pth"]) <= weights * 1.02 + 0.1e6, row
        assert 3 * weights * 0.995 - 0.1e6 <= size_in_bytes(row["state"]) <= 3 * weights * 1.03 + 0.1e6, row


def package_source() -> str:
    """Every .py file of the package, with adjacent string literals joined ("a " "b" -> "a b")."""
    text = "\n".join(path.read_text() for path in sorted((REPO / "midikit").rglob("*.py")))
    return re.sub(r"([\"'])\s*\n\s*(?:f|rf|fr)?\1", "", text)


def test_every_troubleshooting_message_is_one_the_package_prints():
    text = TRAINING_DOC.read_text().split("## Troubleshooting")[1].split("\n## ")[0]
    quoted = re.findall(r"^\| `([^`]+)` \|", text, flags=re.M)
    assert len(quoted) >= 40
    source = package_source()
    missing = [fragment for fragment in quoted if fragment not in source]
    assert not missing, f"quoted in docs/COLAB_TRAINING.md but printed nowhere in midikit/: {missing}"
    assert len(set(quoted)) == len(quoted)


def heading_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", [COMMANDS_DOC, TRAINING_DOC], ids=lambda p: p.name)
def test_links_point_at_files_and_headings_that_exist(doc):
    text = doc.read_text()
    anchors = {heading_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        if path:
            assert (doc.parent / path).exists(), f"{doc.name}: broken link {target}"
        elif anchor:
            assert anchor in anchors, f"{doc.name}: no heading for #{anchor}"

"""The committed C header is exactly what the specification generates, and it compiles."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from dmalab.artifacts.cache import repo_root
from dmalab.cli import main
from dmalab.cli import spec as spec_cli
from dmalab.spec import cheader

HEADER = repo_root() / "qemu-devices" / cheader.HEADER_NAME


def test_committed_header_matches_the_spec() -> None:
    assert HEADER.read_text() == cheader.generate(), (
        f"{HEADER} is stale: run `dmalab spec header` and commit it"
    )


@pytest.mark.parametrize("std", ["gnu11", "gnu17"])
def test_header_compiles_cleanly(tmp_path: Path, std: str) -> None:
    user = tmp_path / "user.c"
    # Included twice: the include guard must hold.
    user.write_text(
        f'#include "{HEADER}"\n#include "{HEADER}"\n'
        "int main(void) { struct ncdma_desc d = {0}; (void)d; return NCDMA_NR_COUNTERS ? 0 : 1; }\n"
    )
    for source in (HEADER, user):
        proc = subprocess.run(
            [
                "gcc",
                f"-std={std}",
                "-fsyntax-only",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-x",
                "c",
                str(source),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr


def test_spec_header_check_fails_on_a_stale_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / cheader.HEADER_NAME
    stale.write_text(cheader.generate().replace("NCDMA_", "OLD_", 1))
    monkeypatch.setattr(spec_cli, "header_path", lambda: stale)
    result = CliRunner().invoke(main, ["spec", "header", "--check"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("dmalab: error: ")


def test_spec_header_writes_then_check_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / cheader.HEADER_NAME
    monkeypatch.setattr(spec_cli, "header_path", lambda: target)
    runner = CliRunner()
    assert runner.invoke(main, ["spec", "header"]).exit_code == 0
    assert target.read_text() == cheader.generate()
    assert runner.invoke(main, ["spec", "header", "--check"]).exit_code == 0

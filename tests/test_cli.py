"""The command line's own frame: `sase --help` lists every command at once, without importing torch; each command
parses its own flags; `import sase` imports its names on first use."""
from __future__ import annotations

import subprocess
import sys

import pytest

from sase.cli import HELP, main, named_command


def fresh_python(code: str) -> str:
    """stdout of `code` in a new interpreter (a module imported here would be imported there already)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_help_lists_every_command_without_importing_torch():
    out = fresh_python("import sys\nfrom sase.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n"
                       "    assert e.code == 0\nprint('torch imported' if 'torch' in sys.modules else 'no torch')")
    assert out.strip().endswith("no torch"), out
    listed = " ".join(out.split())  # argparse wraps the help column
    for name, help in HELP.items():
        assert f"{name} {' '.join(help.split())}" in listed, name


@pytest.mark.parametrize("name", list(HELP))
def test_each_command_parses_its_own_flags(name, capsys):
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sase {name} ")
    assert "--debug" in out  # every command takes the top-level --debug too


@pytest.mark.parametrize("argv, command", [
    (["train", "--epochs", "1"], "train"), (["--debug", "search"], "search"), (["--version"], None), ([], None),
    (["nosuch", "train"], None),
])
def test_the_command_is_the_first_word_that_is_not_a_flag(argv, command):
    assert named_command(argv) == command


def test_an_unknown_command_is_one_line_naming_the_choices(capsys):
    assert main(["nosuch"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "invalid choice: 'nosuch'" in line and all(f"'{name}'" in line for name in HELP)


def test_the_package_imports_its_names_on_first_use():
    out = fresh_python("import sys, sase\nprint('torch' in sys.modules)\nfrom sase import Genotype, create_model\n"
                       "print(Genotype.paper()['channel_excitation'], type(create_model('resnet20')).__name__)\n"
                       "print(sorted(set(sase.__all__) - set(dir(sase))))")
    assert out.splitlines() == ["False", "fc CifarResNet", "[]"]
    import sase
    with pytest.raises(AttributeError, match="has no attribute 'nosuch'"):
        sase.nosuch

"""Every subcommand answers bad input with one line and exit status 2, never a traceback.

The subcommands are read from the parser itself, so a new one is walked too (and must get a row in
ARGUMENTS, or this fails). For each: an option it does not have; each path it reads, missing; an
unknown --backend wherever it takes one (or unknown backend names where they are its arguments);
each numeric option at a value it cannot use. Everything runs in this process through
``cli.main`` and fails before any backend starts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from conftest import one_error_line

from bnconform.interfaces.cli import _parser, main

ROOT = Path(__file__).resolve().parent.parent
CASE = "cases/degenerate/c1_rank2.json"
MISSING = "no/such/file.json"
# Each subcommand's arguments that let it reach its own checks; "{path}" marks one it reads
ARGUMENTS = {
    "generate": [], "validate": ["{path}" + CASE], "new": ["{path}examples/published/keras_inference_so47567655.yaml"],
    "show": ["{path}" + CASE], "run": [], "check": ["{path}" + CASE], "list": [],
    "report": ["{path}reports/results.json"], "diff": ["{path}reports/results.json", "{path}reports/results.json"],
    "bench": [], "fuzz": [], "port": ["torch.nn", "keras3.jax"], "setup": [], "env": ["list"], "history": [],
}
BAD_NUMBERS = {"--jobs": ["0", "two"], "--timeout": ["0", "-1", "inf"], "--seconds": ["0", "nan"],
               "--max-examples": ["0"]}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _plain(arguments: list[str]) -> list[str]:
    return [a.removeprefix("{path}") for a in arguments]


def _one_line_exit_2(capsys, argv: list[str], *needles: str) -> str:
    """Run ``bnconform argv``: exit status 2 and exactly one line on stderr holding every needle."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own exit
        code = exit_.code
    return one_error_line(code, capsys.readouterr().err, *needles)


@pytest.fixture(autouse=True)
def in_the_checkout(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_every_subcommand_has_a_row():
    assert sorted(_subcommands()) == sorted(ARGUMENTS), "a new subcommand needs its ARGUMENTS row"


@pytest.mark.parametrize("command", sorted(ARGUMENTS))
def test_an_option_the_subcommand_does_not_have(capsys, command):
    _one_line_exit_2(capsys, [command, *_plain(ARGUMENTS[command]), "--no-such-option"], "--no-such-option")


@pytest.mark.parametrize("command", sorted(ARGUMENTS))
def test_each_path_it_reads_missing(capsys, command):
    for position, argument in enumerate(ARGUMENTS[command]):
        if argument.startswith("{path}"):
            arguments = _plain(ARGUMENTS[command])
            arguments[position] = MISSING
            _one_line_exit_2(capsys, [command, *arguments], MISSING)


@pytest.mark.parametrize("command", sorted(ARGUMENTS))
def test_an_unknown_backend(capsys, command):
    options = _subcommands()[command]._option_string_actions
    if command == "port":
        for position in (0, 1):
            arguments = _plain(ARGUMENTS[command])
            arguments[position] = "nope"
            _one_line_exit_2(capsys, [command, *arguments], "'nope'", "Expected")
    elif "--backend" in options:
        line = _one_line_exit_2(capsys, [command, *_plain(ARGUMENTS[command]), "--backend", "nope"], "'nope'", "Expected")
        assert "No registered name is close" in line
        line = _one_line_exit_2(capsys, [command, *_plain(ARGUMENTS[command]), "--backend", "torh"], "'torh'")
        assert "Did you mean: torch.functional" in line


@pytest.mark.parametrize("command", sorted(ARGUMENTS))
def test_numbers_it_cannot_use(capsys, command):
    options = _subcommands()[command]._option_string_actions
    for option, values in BAD_NUMBERS.items():
        for value in values if option in options else []:
            _one_line_exit_2(capsys, [command, *_plain(ARGUMENTS[command]), option, value], option, repr(value))


@pytest.mark.parametrize("command", ["run", "bench", "port"])
def test_an_unknown_family_or_case_directory(capsys, command):
    # port reads --family and --cases only for a fresh run: when there is no results document
    arguments = _plain(ARGUMENTS[command]) + (["--results", "no/such/results.json"] if command == "port" else [])
    _one_line_exit_2(capsys, [command, *arguments, "--family", "nope"], "--family", "nope")
    if "--cases" in _subcommands()[command]._option_string_actions:
        _one_line_exit_2(capsys, [command, *arguments, "--cases", "no/such/dir"], "no/such/dir")


def test_generate_check_of_a_missing_directory(capsys):
    _one_line_exit_2(capsys, ["generate", "--cases", "no/such/dir", "--check"], "no/such/dir")


def test_no_subcommand_and_an_unknown_one(capsys):
    _one_line_exit_2(capsys, [], "command")
    _one_line_exit_2(capsys, ["nope"], "'nope'")

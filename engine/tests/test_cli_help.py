"""Every option of every `medgen` command explains itself: a help line, and its default where it has one."""

import argparse

import pytest

from medgen.cli import all_subparsers, build_parser, main, own_parser
from medgen.cli_help import HelpFormatter


def _command_parsers() -> dict[str, argparse.ArgumentParser]:
    """Each command's full parser, by its prog name (commands that parse their own options included)."""
    parsers = {}
    for sub in all_subparsers(build_parser()):
        parsers[sub.prog] = own_parser(sub) or sub
        for nested in all_subparsers(parsers[sub.prog]):  # e.g. medgen train lora
            parsers[nested.prog] = nested
    return parsers


COMMANDS = _command_parsers()


def _options(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
            continue
        yield action


def test_the_walk_reaches_the_commands_that_parse_their_own_options():
    for prog in ("medgen inpaint", "medgen serve", "medgen train lora", "medgen bench speed",
                 "medgen bench quality", "medgen phantom make", "medgen validate", "medgen export", "medgen demo"):
        assert any(name.endswith(prog) for name in COMMANDS), prog


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_every_option_has_a_help_line(prog):
    parser = COMMANDS[prog]
    missing = [action.option_strings or action.dest for action in _options(parser) if not (action.help or "").strip()]
    assert not missing, f"{prog}: options without help: {missing}"


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_every_default_is_shown(prog):
    """Rendered with the project's formatter, an option with a default names it."""
    parser = COMMANDS[prog]
    formatter = HelpFormatter(prog)
    silent = []
    for action in _options(parser):
        if not action.option_strings or action.default in (None, argparse.SUPPRESS, []) or action.default is False:
            continue
        text = formatter._expand_help(action) if action.help else ""
        if "default" not in text.lower():
            silent.append(action.option_strings[0])
    assert not silent, f"{prog}: defaults not shown for {silent}"


def test_parsers_use_the_project_help_style():
    plain = [prog for prog, parser in COMMANDS.items() if parser.formatter_class is not HelpFormatter]
    assert not plain, f"parsers with another help style: {plain}"


def test_one_name_per_setting_across_commands():
    """The same `dest` is spelled the same way wherever it is offered (old spellings stay hidden aliases)."""
    spellings: dict[str, set[str]] = {}
    for parser in COMMANDS.values():
        for action in _options(parser):
            long = [o for o in action.option_strings if o.startswith("--")]
            if long:
                spellings.setdefault(action.dest, set()).add(long[0])
    clashes = {dest: names for dest, names in spellings.items() if len(names) > 1}
    assert not clashes, f"settings with more than one visible name: {clashes}"


def test_old_spellings_still_work(capsys):
    args = build_parser().parse_args(
        ["inpaint", "x.dcm", "--mask", "m.png", "--prompt", "p", "--out", "o", "--mask-dilate-mm", "3"]
    )
    assert args.mask_dilate_mm == 3.0
    args = build_parser().parse_args(["inpaint", "x.dcm", "--mask", "m.png", "--prompt", "p", "--out", "o"])
    assert args.mask_dilate_mm == 2.0  # the hidden alias leaves the default alone


def test_model_may_be_left_out_and_help_names_the_demo_model(capsys):
    args = build_parser().parse_args(["inpaint", "x.dcm", "--mask", "m.png", "--prompt", "p", "--out", "o"])
    assert args.model is None
    with pytest.raises(SystemExit):
        main(["inpaint", "--help"])
    text = capsys.readouterr().out
    assert "demo" in text and "phantom anatomy only" in text


def test_create_tiny_prints_one_line_and_no_library_noise(tmp_path):
    """Importing diffusers logs about optional backends (torchvision) and saving draws bars: none of that."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY")}
    result = subprocess.run([sys.executable, "-m", "medgen.cli", "model", "create-tiny", str(tmp_path / "tiny")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.strip().splitlines() == [
        f"wrote a tiny random-weight inpaint model to {tmp_path / 'tiny'} (its output is noise: use it for plumbing only)"
    ]


def test_the_progress_bar_starts_from_the_first_report_not_from_zero(capsys):
    """A first report of (1, 20) used to read as thousands of steps per second."""
    from medgen.progress import ProgressBar

    with ProgressBar("steps") as bar:
        bar.update(1, 20)
        assert bar.bar.n == 1 and "?step/s" in str(bar.bar)  # no rate yet: nothing has been timed
        bar.update(3, 20)
        assert bar.bar.n == 3

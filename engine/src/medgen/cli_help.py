"""One help style for every `medgen` command: each option's default is shown, and old spellings stay hidden.

Every parser of the command (including those that `serve`, `train`, `bench ...` and `phantom ...` build
themselves) uses :class:`HelpFormatter`, so a default is written once, in the code, and `--help` cannot
drift from it. `engine/tests/test_cli_help.py` walks every parser and fails on an option without help.
"""

from __future__ import annotations

import argparse

SUPPRESS = argparse.SUPPRESS


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or "%(default)" in text:
            return text
        default = action.default
        if default is None or default is False or default == SUPPRESS or default == [] or isinstance(
            action, argparse._HelpAction
        ):
            return text  # a flag, or an option whose absence the help already explains
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text  # a required positional has no default to state
        return f"{text} (default: %(default)s)"


def hidden_alias(parser: argparse.ArgumentParser | argparse._ArgumentGroup, old: str, *, dest: str, **kwargs) -> None:
    """Accept an old, published spelling of an option without listing it in --help."""
    parser.add_argument(old, dest=dest, help=SUPPRESS, default=SUPPRESS, **kwargs)


def new_parser(prog: str, description: str | None = None, **kwargs) -> argparse.ArgumentParser:
    """An `argparse.ArgumentParser` in the project's help style."""
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter, **kwargs)

"""A Sphinx directive that documents the ``gswfast`` command from its argument parser.

    ```{gswfast-command}
    ```

    ```{gswfast-command} explain
    ```

Without an argument it renders the top-level usage, options and subcommands; with one, that
subcommand's one-line help, usage, arguments and options (help text, choices, defaults),
all read from the parser that ``gswfast`` itself builds, so the page cannot drift from the
command. The builder is named by the ``cli_reference_parser`` setting, ``"module:function"``
(``conf.py``). A subcommand the parser has and no page documents is reported when the build
ends (a warning, so an error under ``sphinx-build -W``), as is a subcommand a page names
that the parser lacks.
"""

from __future__ import annotations

import argparse
import importlib
import re
from typing import Any, ClassVar

from docutils import nodes  # type: ignore[import-untyped]  # no stubs in the dev set
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

USAGE_WIDTH = 88  # the usage block wraps here, whatever the terminal of the build
DOCUMENTED = "cli_reference_documented"  # env attribute: {subcommand: docname}


def build_parser(spec: str) -> argparse.ArgumentParser:
    """Calls the parser builder ``spec`` names (``"package.module:function"``)."""
    module_name, _, function_name = spec.partition(":")
    if not function_name:
        raise ValueError(f"cli_reference_parser: expected 'module:function', got {spec!r}")
    builder = getattr(importlib.import_module(module_name), function_name)
    parser = builder()
    if not isinstance(parser, argparse.ArgumentParser):
        raise TypeError(f"{spec} returned {type(parser).__name__}, not an ArgumentParser")
    return parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """Each subcommand's parser and one-line help, in the parser's order."""
    found: dict[str, tuple[argparse.ArgumentParser, str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                found[name] = (sub, helps.get(name, ""))
    return found


def usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(prog=parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _literal(text: str) -> nodes.literal:
    return nodes.literal(text, text)


OPTION = re.compile(r"(?<![\w-])(--[A-Za-z][\w-]*)")  # an option named in help text


def _help_nodes(text: str) -> list[nodes.Node]:
    """Help text with the options it names as literals (so that ``--out`` stays two
    hyphens, not a dash)."""
    parts = OPTION.split(text)
    return [_literal(part) if i % 2 else nodes.Text(part) for i, part in enumerate(parts) if part]


def _description(parser: argparse.ArgumentParser, action: argparse.Action) -> nodes.paragraph:
    formatter = argparse.HelpFormatter(prog=parser.prog, width=USAGE_WIDTH)
    text = formatter._expand_help(action) if action.help else ""
    paragraph = nodes.paragraph()
    paragraph += _help_nodes(text)
    notes: list[list[nodes.Node]] = []
    if action.required and action.option_strings:
        notes.append([nodes.Text("required")])
    if (
        action.option_strings
        and action.nargs != 0
        and action.default not in (None, argparse.SUPPRESS)
        and "default" not in text.lower()
    ):
        notes.append([nodes.Text("default "), _literal(str(action.default))])
    for i, note in enumerate(notes):
        paragraph += nodes.Text("; " if i else " (" if text else "(")
        paragraph += note
    if notes:
        paragraph += nodes.Text(")")
    return paragraph


def _arguments(parser: argparse.ArgumentParser, positional: bool) -> nodes.definition_list:
    formatter = argparse.HelpFormatter(prog=parser.prog, width=USAGE_WIDTH)
    items = nodes.definition_list()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if bool(action.option_strings) == positional:
            continue
        item = nodes.definition_list_item()
        term = nodes.term()
        term += _literal(formatter._format_action_invocation(action))
        definition = nodes.definition()
        definition += _description(parser, action)
        item += [term, definition]
        items += item
    return items


def _titled(title: str, body: nodes.Node) -> list[nodes.Node]:
    return [nodes.rubric(title, title), body]


class CommandReference(SphinxDirective):
    """``{gswfast-command} [SUBCOMMAND]``: the usage and options, from the parser."""

    optional_arguments = 1
    has_content = False
    option_spec: ClassVar[dict[str, Any]] = {}

    def run(self) -> list[nodes.Node]:
        spec = self.config.cli_reference_parser
        parser = build_parser(spec)
        # the page is rebuilt when the module that builds the parser changes
        module_file = importlib.import_module(spec.partition(":")[0]).__file__
        if module_file:
            self.env.note_dependency(module_file)
        commands = subcommands(parser)
        out: list[nodes.Node] = []
        if not self.arguments:
            out.append(nodes.literal_block(usage(parser), usage(parser)))
            if parser.description:
                out.append(nodes.paragraph(parser.description, parser.description))
            out += _titled("Options", _arguments(parser, positional=False))
            listing = nodes.definition_list()
            for name, (_, help_text) in commands.items():
                item = nodes.definition_list_item()
                term = nodes.term()
                term += _literal(f"{parser.prog} {name}")
                definition = nodes.definition()
                definition += nodes.paragraph(help_text, help_text)
                item += [term, definition]
                listing += item
            out += _titled("Subcommands", listing)
            return out
        name = self.arguments[0]
        if name not in commands:
            known = ", ".join(commands)
            raise self.error(f"{parser.prog} has no subcommand {name!r} (it has {known})")
        documented: dict[str, str] = getattr(self.env, DOCUMENTED, {})
        documented[name] = self.env.docname
        setattr(self.env, DOCUMENTED, documented)
        sub, help_text = commands[name]
        if help_text:
            out.append(nodes.paragraph(help_text, help_text[0].upper() + help_text[1:] + "."))
        out.append(nodes.literal_block(usage(sub), usage(sub)))
        if any(not action.option_strings for action in sub._actions):
            out += _titled("Arguments", _arguments(sub, positional=True))
        out += _titled("Options", _arguments(sub, positional=False))
        return out


def _purge(app: Sphinx, env: BuildEnvironment, docname: str) -> None:
    documented: dict[str, str] = getattr(env, DOCUMENTED, {})
    for name in [name for name, doc in documented.items() if doc == docname]:
        del documented[name]


def _merge(app: Sphinx, env: BuildEnvironment, docnames: set[str], other: BuildEnvironment) -> None:
    documented: dict[str, str] = getattr(env, DOCUMENTED, {})
    documented.update(getattr(other, DOCUMENTED, {}))
    setattr(env, DOCUMENTED, documented)


def _check(app: Sphinx, env: BuildEnvironment) -> None:
    documented: dict[str, str] = getattr(env, DOCUMENTED, {})
    missing = [
        name
        for name in subcommands(build_parser(app.config.cli_reference_parser))
        if name not in documented
    ]
    if missing:
        logger.warning(
            "cli_reference: no page documents the subcommand(s) %s: add a "
            "```{gswfast-command} NAME``` block for each",
            ", ".join(missing),
        )


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("cli_reference_parser", "gswfast.cli:_parser", "env", types=[str])
    app.add_directive("gswfast-command", CommandReference)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.connect("env-check-consistency", _check)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

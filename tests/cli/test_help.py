"""Every command explains itself and every flag."""

import click
import typer
from typer.testing import CliRunner

from securecloud.cli.main import app


def walk(command, path=()):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from walk(sub, (*path, name))


def test_top_level_help_lists_the_command_groups():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for group in ("las", "cas", "runtime", "batch", "demo", "up", "status", "down"):
        assert group in result.output


def test_every_command_and_flag_has_help_text():
    root = typer.main.get_command(app)
    missing = []
    for path, command in walk(root):
        if not (command.help or command.short_help):
            missing.append(" ".join(path) or "securecloud")
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help" and not param.help:
                missing.append(f"{' '.join(path)} {param.opts[0]}")
            if isinstance(param, click.Argument) and not getattr(param, "help", None):
                missing.append(f"{' '.join(path)} {param.name}")
    assert not missing, f"without help: {missing}"


def test_every_command_answers_help():
    root = typer.main.get_command(app)
    runner = CliRunner()
    for path, _ in walk(root):
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)

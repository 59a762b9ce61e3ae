"""``unclip`` entry point: a click group whose sub-commands are imported only when used.

Each sub-command lives in its own module under ``unclip.cli`` and is registered below as
``name -> "module:attribute"``. Errors from bad user input surface as one clear line and exit code 2
(usage) or 1 (runtime), never a traceback.
"""

from __future__ import annotations

import os

from unclip.omp_policy import apply_wait_policy

# Must happen before torch is imported anywhere: OpenMP threads spin briefly between parallel regions on an
# idle machine and sleep when other work competes for the cores (unclip.omp_policy).
try:
    apply_wait_policy()
    _POLICY_ERROR: str | None = None
except ValueError as _err:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _POLICY_ERROR = str(_err)

import importlib  # noqa: E402
import sys  # noqa: E402

import click  # noqa: E402

from unclip.cli.startup import pause_gc  # noqa: E402

FAST_EXIT_COMMANDS = frozenset({"generate", "vary", "interpolate", "edit", "mix", "inpaint", "embed"})
"""Commands whose process ends with ``os._exit`` after a success, once output is flushed: they leave no worker
processes or pending files behind, and the interpreter's teardown after importing torch costs ~0.2 s."""


class LazyGroup(click.Group):
    """A click group that imports each sub-command's module on first use."""

    def __init__(self, *args, lazy_commands: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy_commands:
            module_name, attr = self.lazy_commands[name].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, name)


# One module per stage so that each stage's options live beside nothing else.
TRAIN_COMMANDS = {
    "clip": "unclip.cli.train_clip:command",
    "oracle": "unclip.cli.train_oracle:command",
    "decoder": "unclip.cli.train_decoder:command",
    "upsampler": "unclip.cli.train_upsampler:command",
    "prior": "unclip.cli.train_prior:command",
    "shapes": "unclip.cli.train_shapes:command",
}


@click.group(cls=LazyGroup, lazy_commands=TRAIN_COMMANDS)
def train() -> None:
    """Train one stage (clip, oracle, decoder, upsampler, prior) through the one trainer, or all (shapes)."""


@click.group(
    cls=LazyGroup,
    lazy_commands={
        "shapes": "unclip.cli.shapes_cmds:shapes",
        "generate": "unclip.cli.generate_cmds:generate",
        "vary": "unclip.cli.generate_cmds:vary",
        "interpolate": "unclip.cli.generate_cmds:interpolate",
        "edit": "unclip.cli.generate_cmds:edit",
        "mix": "unclip.cli.mix_cmd:mix",
        "inpaint": "unclip.cli.inpaint_cmd:inpaint",
        "convert": "unclip.cli.convert_cmds:convert",
        "embed": "unclip.cli.embed_cmds:embed",
        "experiment": "unclip.cli.experiment_cmds:experiment",
        "serve": "unclip.cli.serve:command",
    },
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="unclip")
def cli() -> None:
    """unclip: unCLIP text-to-image (DALL-E 2) in PyTorch."""


cli.add_command(train)


def one_line(message: object) -> str:
    """A message flattened to one line (library errors sometimes span several)."""
    return " ".join(str(message).split())


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: every error is one line on stderr (``Error: ...``), exit code 2 for bad usage
    and 1 otherwise; ``UNCLIP_DEBUG=1`` shows the traceback of unexpected errors instead."""
    if _POLICY_ERROR is not None:
        click.echo(f"Error: {_POLICY_ERROR}", err=True)
        sys.exit(2)
    if argv is None and len(sys.argv) > 1 and sys.argv[1] in FAST_EXIT_COMMANDS:
        pause_gc()  # until the pipeline is loaded (unclip.cli.startup)
    try:
        code = cli.main(args=argv, prog_name="unclip", standalone_mode=False)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.UsageError as err:
        command = err.ctx.command_path if err.ctx is not None else "unclip"
        click.echo(f"Error: {one_line(err.format_message())} (see '{command} --help')", err=True)
        sys.exit(err.exit_code)
    except click.ClickException as err:
        click.echo(f"Error: {one_line(err.format_message())}", err=True)
        sys.exit(err.exit_code)
    except Exception as err:  # noqa: BLE001 - the CLI's promise: one line, never a traceback
        if os.environ.get("UNCLIP_DEBUG"):
            raise
        click.echo(f"Error: {one_line(err) or type(err).__name__} ({type(err).__name__})", err=True)
        sys.exit(1)
    code = code if isinstance(code, int) else 0
    if argv is None and code == 0 and len(sys.argv) > 1 and sys.argv[1] in FAST_EXIT_COMMANDS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    sys.exit(code)


if __name__ == "__main__":
    main()

"""The ``perturbprobe`` group: --version, --quiet, --debug, logging, and how errors end.

User errors (:class:`perturbprobe.PerturbprobeError`) end with a one-line message on stderr and
exit status 1; ``--debug`` shows the traceback instead. The commands register onto :data:`cli`
from their own modules (imported by the package).
"""

from __future__ import annotations

import logging
import sys

import click

from .._version import __version__
from ..errors import PerturbprobeError


class _Group(click.Group):
    """Turns user errors into one-line messages (unless --debug) and Ctrl-C into exit 130."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PerturbprobeError as exc:
            if ctx.meta.get("perturbprobe.debug"):
                raise
            click.echo(f"perturbprobe: error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("perturbprobe: interrupted; nothing was written", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="perturbprobe")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or info logs; errors only.")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, debug: bool) -> None:
    """Calibrated confidence that an LLM's answer is right, from the stability of its internals.

    \b
    Typical flow:
      perturbprobe collect --dataset builtin:easy-qa --out records.jsonl
      perturbprobe extract --records records.jsonl --out features/
      perturbprobe fit --features features/ --probe lightgbm
      perturbprobe score --bundle models/<llm>/lightgbm --input pairs.jsonl --out scored.jsonl
    Run `perturbprobe COMMAND --help` for the options of a command.
    """
    ctx.meta["perturbprobe.debug"] = debug
    ctx.obj = {"progress": not quiet}
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if not debug:
        for noisy in ("transformers", "httpx", "urllib3", "huggingface_hub"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point. Under torchrun, a rank ends through
    :func:`perturbprobe.distributed.exit_rank`, so it never aborts in teardown."""
    try:
        cli.main(args=argv, prog_name="perturbprobe")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if "torch.distributed" in sys.modules:  # only a torchrun job can have joined a group
            from ..distributed import exit_rank

            exit_rank(code)
        raise

"""Production use of a bundle: `score` a file of pairs, `generate` (optionally guided by the
probe) and `serve` over HTTP."""

from __future__ import annotations

import click

from ..errors import PerturbprobeError
from . import runtime
from .choices import BRANCH_MODES
from .group import cli
from .options import (
    allow_llm_mismatch_option,
    batch_size_option,
    bundle_option,
    choice_option,
    input_option,
    max_new_tokens_option,
    model_options,
    out_option,
    seed_option,
    target_accuracy_option,
)
from .output import generation_summary, print_unscored


@cli.command()
@model_options()
@bundle_option()
@input_option(
    "JSONL of pairs: 'messages' (or 'question') and 'response'; other fields pass through."
)
@batch_size_option(8)
@allow_llm_mismatch_option("Score even if the LLM differs from the one the probe was fitted on.")
@target_accuracy_option(
    "The LLM's known accuracy on this traffic, in (0, 1): confidences are moved from the "
    "calibration data's accuracy to it (prior-shift correction)."
)
@out_option("JSONL to write: the input rows with 'confidence' (and 'abstain').")
@click.pass_obj
def score(
    obj,
    model,
    device,
    dtype,
    bundle,
    input_path,
    batch_size,
    allow_llm_mismatch,
    target_accuracy,
    out,
):
    """Score answers with a saved bundle (production use); input order is kept."""
    import numpy as np

    from ..bundles import ProbeBundle, Scorer, score_file

    probe_bundle = ProbeBundle.load(bundle)  # verify before loading the LLM
    if target_accuracy is not None:
        probe_bundle.adjust_to_accuracy(np.array([0.5]), target_accuracy)  # fail early
    group = runtime.join_process_group(obj)
    scorer = Scorer(
        probe_bundle,
        runtime.load_model(model, dtype, device, group),
        allow_llm_mismatch=allow_llm_mismatch,
        batch_size=batch_size,
        target_accuracy=target_accuracy,
        group=group,
    )
    outcome = score_file(scorer, input_path, out, progress=obj["progress"])
    if outcome is None:
        return  # not rank 0: rank 0 writes
    errors, shift = outcome
    if shift is not None and not shift.shifted:
        click.echo(f"shift check: {shift.message()}", err=True)
    print_unscored(input_path, errors)
    click.echo(f"scored lines written to {out} ({len(errors)} could not be scored)")


@cli.command()
@model_options()
@input_option(
    "JSONL of prompts: 'messages' (or 'question'); other fields (e.g. 'id') pass through."
)
@out_option("JSONL to write: the input rows with 'response' (and 'guard' with --guard).")
@click.option("--guard", is_flag=True, help="Branch at an early entropy spike (GUARD).")
@bundle_option(
    required=False,
    help="With --guard: score branches with this bundle's probe [default: mean log-prob].",
)
@click.option(
    "--branches", "-k", type=int, default=3, show_default=True, help="K branches per fork."
)
@click.option(
    "--z", type=float, default=3.0, show_default=True, help="Spike threshold in robust σ."
)
@click.option(
    "--window",
    "-w",
    type=int,
    default=16,
    show_default=True,
    help="Only the first W tokens can fork.",
)
@click.option(
    "--max-interventions",
    "-n",
    type=int,
    default=1,
    show_default=True,
    help="Forks per answer at most.",
)
@click.option(
    "--min-entropy",
    type=float,
    default=0.0,
    show_default=True,
    help="A spike needs at least this entropy (nats).",
)
@choice_option(
    "--branch-mode",
    choices=BRANCH_MODES,
    default="top-k",
    help="top-k: the K most likely tokens, continued greedily; sample: K sampled continuations.",
)
@click.option(
    "--temperature", type=float, default=1.0, show_default=True, help="For --branch-mode sample."
)
@seed_option("For --branch-mode sample.")
@allow_llm_mismatch_option("Use a bundle fitted on another LLM.")
@max_new_tokens_option()
@batch_size_option(16)
@click.pass_context
def generate(
    ctx,
    model,
    device,
    dtype,
    input_path,
    out,
    guard,
    bundle,
    allow_llm_mismatch,
    max_new_tokens,
    batch_size,
    **guard_options,
):
    """Answer prompts greedily; with --guard, branch at early entropy spikes and keep the
    branch the probe (or the mean log-prob) rates best."""
    from .._io import check_writable
    from ..bundles import ProbeBundle, Scorer
    from ..decoding import GuardConfig
    from ..decoding.files import generate_file, read_prompts
    from ..errors import GenerationError

    obj = ctx.obj
    if not guard:
        given = [
            name
            for name in (*guard_options, "bundle", "allow_llm_mismatch")
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        ]
        if given:
            option = "--" + given[0].replace("_", "-")
            raise GenerationError(f"{option} only applies with --guard")
    config = GuardConfig(**guard_options) if guard else None  # bad options fail here
    rows = read_prompts(input_path)[0]  # a bad file fails before the model loads
    probe_bundle = ProbeBundle.load(bundle) if bundle is not None else None
    check_writable(out)
    group = runtime.join_process_group(obj)
    llm = runtime.load_model(model, dtype, device, group)
    scorer = (
        Scorer(probe_bundle, llm, allow_llm_mismatch=allow_llm_mismatch)
        if probe_bundle is not None
        else None
    )
    answers = generate_file(
        llm,
        input_path,
        out,
        scorer=scorer,
        guard=config,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=obj["progress"],
        group=group,
    )
    if answers is None:
        return  # not rank 0: rank 0 writes
    click.echo(generation_summary(answers, len(rows), out, config))


def _limit(name: str, value_type, default, help: str):
    """One of serve's limits, passed on to ``ServeSettings``."""
    return click.option(name, type=value_type, default=default, show_default=True, help=help)


@cli.command()
@model_options()
@bundle_option()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@_limit("--max-batch", click.IntRange(min=1), 32, "Most pairs merged into one extraction batch.")
@_limit(
    "--max-wait-ms",
    click.FloatRange(min=0),
    10.0,
    "How long a batch waits for more pairs after its oldest one arrived.",
)
@_limit(
    "--max-queue",
    click.IntRange(min=1),
    256,
    "Most pairs waiting; beyond, requests get 503 with Retry-After.",
)
@_limit("--max-pairs", click.IntRange(min=1), 64, "Most pairs per request.")
@_limit(
    "--max-response-chars",
    click.IntRange(min=1),
    16_000,
    "Longest response accepted, in characters.",
)
@_limit("--max-body-bytes", click.IntRange(min=1), 2_000_000, "Largest request body.")
@_limit(
    "--request-timeout",
    click.FloatRange(min=0, min_open=True),
    60.0,
    "Seconds a request may wait for its results (504).",
)
@click.option(
    "--api-key-env",
    metavar="VAR",
    default=None,
    help="Require 'Authorization: Bearer <key>' on /v1/* and /metrics, the key read from "
    "environment variable VAR.",
)
@batch_size_option(8)
@allow_llm_mismatch_option("Serve even if the LLM differs from the one the probe was fitted on.")
@target_accuracy_option("The LLM's known accuracy on the traffic (prior-shift correction).")
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="One log line per request (method, path, status; never the body).",
)
@click.pass_obj
def serve(
    obj,
    model,
    device,
    dtype,
    bundle,
    host,
    port,
    api_key_env,
    batch_size,
    allow_llm_mismatch,
    target_accuracy,
    access_log,
    **limits,
):
    """Serve a saved bundle over HTTP: POST /v1/score, /healthz, /readyz, /metrics, /docs.

    \b
    Pairs of concurrent requests are merged into one extraction batch. Stop with SIGTERM or
    Ctrl-C: requests in flight are answered first, then the process exits 0.
    """
    import os

    from ..bundles import ProbeBundle, Scorer
    from ..serve import ServeSettings, create_app
    from ..serve import serve as run_server

    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env, "")
        if not api_key:
            raise PerturbprobeError(
                f"--api-key-env {api_key_env}: that environment variable is unset or empty"
            )
    try:
        settings = ServeSettings(api_key=api_key, **limits)
    except ValueError as exc:
        raise PerturbprobeError(str(exc)) from exc
    probe_bundle = ProbeBundle.load(bundle)  # verify before loading the LLM
    scorer = Scorer(
        probe_bundle,
        runtime.load_model(model, dtype, device),
        allow_llm_mismatch=allow_llm_mismatch,
        batch_size=batch_size,
        target_accuracy=target_accuracy,
    )
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        runtime.logger.warning(
            "serving on %s without an API key: anyone who reaches it can score", host
        )
    runtime.logger.info("serving %r on http://%s:%d", probe_bundle, host, port)
    run_server(
        create_app(scorer, settings),
        host=host,
        port=port,
        drain_timeout=settings.request_timeout + 5,
        log_level="info" if obj["progress"] else "warning",
        access_log=access_log,
    )

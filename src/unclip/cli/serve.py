"""``unclip serve``: the HTTP API and the web page (``pip install "unclip[serve]"``); see docs/serve.md."""

from __future__ import annotations

import click

from unclip.pipeline import bounds

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@click.command()
@click.option("--model", "-m", default="shapes", show_default=True, help="Built-in model, directory or hub id.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", "-p", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: torch's).")
@click.option("--max-queue", type=click.IntRange(0, 1000), default=4, show_default=True,
              help="Jobs that may wait behind the running one; more get 429.")  # fmt: skip
@click.option("--max-body-mb", type=click.FloatRange(0.01, 1024), default=8.0, show_default=True,
              help="Largest request body in MiB (uploads included); more gets 413.")  # fmt: skip
@click.option("--max-images", type=click.IntRange(1, bounds.MAX_IMAGES), default=8, show_default=True,
              help="Images per request.")  # fmt: skip
@click.option("--max-steps", type=click.IntRange(1, bounds.MAX_STEPS), default=200, show_default=True,
              help="Steps per stage.")  # fmt: skip
@click.option("--store-images", type=click.IntRange(min=1), default=256, show_default=True,
              help="Results kept in memory (oldest dropped first).")  # fmt: skip
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True)  # fmt: skip
def command(model, host, port, device, threads, max_queue, max_body_mb, max_images, max_steps, store_images,
            log_level) -> None:  # fmt: skip
    """Serve MODEL over HTTP: the API under /api/v1, a web page at /, API docs at /docs."""
    try:
        import uvicorn

        from unclip.web.app import create_app
    except ImportError as err:
        raise click.ClickException(f"{err.name} is missing: pip install 'unclip[serve]'") from None
    import torch

    from unclip.limits import check_device, check_threads
    from unclip.pipeline import UnCLIPPipeline
    from unclip.web.config import ServeConfig

    try:
        check_threads("--threads", threads)
        check_device("--device", device)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    if threads:
        torch.set_num_threads(threads)
    try:
        config = ServeConfig(
            model=model, host=host, port=port, max_queue=max_queue, max_body_bytes=int(max_body_mb * 1024 * 1024),
            max_images=max_images, max_steps=max_steps, store_images=store_images, device=device,
        )  # fmt: skip
        click.echo(f"loading {model!r} on {device} ...", err=True)
        pipe = UnCLIPPipeline.from_pretrained(model, device=device)
    except (ValueError, TypeError, FileNotFoundError, OSError, RuntimeError) as err:
        raise click.ClickException(str(err)) from None
    if host not in LOOPBACK:
        click.echo(f"warning: on {host} the server is reachable from other machines (no authentication)", err=True)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"serving {model!r} at http://{shown}:{port}/ (API docs: /docs; Ctrl+C stops)", err=True)
    uvicorn.run(
        create_app(pipe, config), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=3,
        limit_concurrency=256, access_log=log_level == "debug",
    )  # fmt: skip

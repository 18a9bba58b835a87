"""`seesku triton serve`: a real Triton Inference Server on CPU with the model repository prepared for it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(help="A local Triton Inference Server on CPU (needs `make triton`).", no_args_is_help=True)


@app.command("serve")
def triton_serve(
    grpc_port: Annotated[
        int, typer.Option(help="gRPC port: point the API at it with SEESKU_INFERENCE=triton://HOST:PORT")
    ] = 8001,
    http_port: Annotated[int, typer.Option(help="HTTP port (health, metadata)")] = 8002,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port")] = 8003,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    model_dir: Annotated[
        Optional[Path],
        typer.Option(
            help="exported embedder (manifest.json + graph); the shipped one by default; an int8 folder "
            "(triton_models/product_embedder_int8) runs on OpenVINO"
        ),
    ] = None,
    workdir: Annotated[Path, typer.Option(help="where the prepared model repository and backends go")] = Path(
        "data/triton"
    ),
) -> None:
    """Start the real `tritonserver` (python backend, CPU) with the model repository prepared for it."""
    import signal

    from triton_models.server import TritonNotInstalled, TritonServer

    console = Console(stderr=True)
    from api.settings import Settings

    server = TritonServer(
        workdir.resolve(),
        grpc_port,
        http_port,
        metrics_port,
        model_dir,
        limits=Settings().limits(),
        host=host,
        inherit_output=True,
    )
    try:
        server.prepare()
        console.print(f"starting tritonserver: models in {workdir / 'models'}", soft_wrap=True)
        server.start()
    except (TritonNotInstalled, RuntimeError, TimeoutError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1)
    console.print(f"[green]Triton ready[/green]: gRPC {server.grpc_url}, HTTP {host}:{http_port}", soft_wrap=True)
    console.print(f"run the API on it: SEESKU_INFERENCE={server.inference_setting} seesku serve", soft_wrap=True)
    signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    try:
        code = server.process.wait()
    except KeyboardInterrupt:
        server.stop()
        code = 0
    # Stopped by us (SIGTERM passed on) is a clean exit; anything else is the server's own failure.
    raise typer.Exit(0 if code in (0, -signal.SIGTERM) else code)

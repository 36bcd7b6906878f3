"""`medgen serve`: start the local engine server (also `python -m medgen.server.main`)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

from medgen.cli_help import new_parser
from medgen.server.config import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    AdapterEntry,
    ModelEntry,
    ServerConfig,
    default_data_dir,
    default_limits,
)
from medgen.server.destinations import ExportDestination, load_destinations_file, parse_destination_option
from medgen.server.retention import RetentionPolicy, format_duration, parse_duration
from medgen.server.storage import PRIVATE_UMASK, parse_size

EXIT_BAD_USAGE = 2
_LOOPBACK_NAMES = ("localhost",)


def build_parser(prog: str = "medgen serve") -> argparse.ArgumentParser:
    p = new_parser(prog, "Serve the engine over HTTP for the MedGenSlicer module (token-protected, loopback by default).")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow binding to an address other hosts can reach (the token then travels without TLS)",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="diffusers folder, single-file checkpoint or 'demo'; repeat for several (the first is the default); "
        "NAME defaults to the file or folder name (default: phantom-demo=demo, the phantom model shipped in "
        "the package, which knows phantom anatomy only)",
    )
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="a textual inversion, LoRA or ControlNet that jobs may name; repeat for several "
        "(NAME defaults to the file or folder name)",
    )
    p.add_argument(
        "--destination",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="a PACS that clients may export to, by NAME: dicom://CALLED_AET@HOST:PORT[?calling_aet=AET] "
        "or dicomweb+http(s)://HOST[:PORT]/PATH; repeat for several",
    )
    p.add_argument("--destinations", type=Path, metavar="FILE",
                   help='JSON {"NAME": {"url", "calling_aet", "tls_ca", "tls_cert", "tls_key", "user", '
                        '"password_file"}}: destinations with TLS files or a DICOMweb login')
    p.add_argument("--data-dir", type=Path, default=None, help="jobs, results and the token (default: %(default)s → "
                                                               "$MEDGEN_DATA_DIR or ~/.local/share/medgen)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the model runs; auto takes CUDA when there is one")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"],
                   help="model precision (default: bf16 or fp16 on CUDA, fp32 on the CPU)")
    limits = default_limits()
    p.add_argument("--max-queue", type=int, default=limits.max_queued_jobs, help="queued jobs before new ones get 429")
    p.add_argument("--max-upload-mb", type=int, default=limits.max_upload_bytes >> 20, help="largest upload, in MiB")
    p.add_argument("--max-variants", type=int, default=limits.max_variants, help="most variants one job may ask for")
    p.add_argument("--max-steps", type=int, default=limits.max_inference_steps,
                   help="most denoising steps one job may ask for")
    p.add_argument("--max-slices", type=int, default=limits.max_slices, metavar="N",
                   help="slices (or frames) an upload may declare; checked from its headers before decoding")
    p.add_argument("--max-slice-pixels", type=int, default=limits.max_slice_pixels, metavar="N",
                   help="rows x columns x samples one slice may declare; checked from its headers before decoding")
    p.add_argument("--keep-results", default="7d", metavar="DURATION",
                   help="delete a finished job (results, uploads, database contents) this long after it finished: "
                        "90s, 30m, 12h, 7d or 'forever' (default: %(default)s)")
    p.add_argument("--keep-inputs", default="0", metavar="DURATION",
                   help="remove a job's uploaded scan and mask this long after it finished: 0 = as soon as it "
                        "succeeds, fails or is cancelled; 'forever' = with its results (default: %(default)s)")
    p.add_argument("--max-data-size", default=None, metavar="SIZE",
                   help="quota of the data folder in bytes or with a unit (500M, 20G); a submission that would "
                        "pass it answers 507 (default: no quota)")
    p.add_argument("--access-log", type=Path, default=None, metavar="PATH",
                   help="log of requests that read or change a job, rotated at 10 MiB "
                        "(default: access.log in the data folder)")
    p.add_argument("--threads", "--cpu-threads", dest="threads", type=int, metavar="N",
                   help="torch CPU threads (default: $MEDGEN_THREADS, else torch's default; on a shared or small "
                        "CPU, 1 avoids threads spinning against each other)")
    p.add_argument("--lazy", action="store_true", help="load the model at the first job, not at start")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request and job step")
    return p


def serve_main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from disk; never reach for a hub
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="medgen serve: %(levelname)s: %(message)s",
    )
    logging.getLogger("medgen.server").setLevel(logging.INFO)
    logging.getLogger("medgen.native").setLevel(logging.INFO)  # stderr lines collected around native decoders

    # 1. Check the options before anything is created
    if not is_loopback(args.host) and not args.allow_remote:
        print(
            f"medgen serve: error: refusing to bind to {args.host}, which other machines can reach; "
            f"add --allow-remote if that is what you want",
            file=sys.stderr,
        )
        return EXIT_BAD_USAGE
    try:
        models = tuple(parse_model_option(value) for value in args.model) or (default_model(),)
        destinations = parse_destinations(args.destination, args.destinations)
        adapters = tuple(parse_adapter_option(value) for value in args.adapter)
        retention = RetentionPolicy(keep_results_s=parse_duration(args.keep_results),
                                    keep_inputs_s=parse_duration(args.keep_inputs))
        max_data_bytes = parse_size(args.max_data_size) if args.max_data_size is not None else None
    except ValueError as exc:
        print(f"medgen serve: error: {exc}", file=sys.stderr)
        return EXIT_BAD_USAGE
    limits = default_limits().model_copy(
        update={
            "max_queued_jobs": args.max_queue,
            "max_upload_bytes": args.max_upload_mb << 20,
            "max_variants": args.max_variants,
            "max_inference_steps": args.max_steps,
            "max_slices": args.max_slices,
            "max_slice_pixels": args.max_slice_pixels,
            "max_data_bytes": max_data_bytes,
        }
    )

    # 2. The data folder (private to this user) and the token
    from medgen.server.auth import TOKEN_FILENAME, load_or_create_token

    os.umask(PRIVATE_UMASK)  # every file this process writes is the user's alone (600, folders 700)
    data_dir = (args.data_dir or default_data_dir()).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    token, created = load_or_create_token(data_dir)
    url = f"http://{args.host if ':' not in args.host else f'[{args.host}]'}:{args.port}"
    if created:
        print(
            f"medgen serve: a new access token was made and saved in {data_dir / TOKEN_FILENAME}:\n\n"
            f"    {token}\n\n"
            f"In Slicer, open the MedGenSlicer module, paste it into 'Token', set 'Engine URL' to {url} "
            f"and press 'Check connection'. It is shown only this once; the file keeps it.",
            flush=True,
        )
    else:
        print(f"medgen serve: using the token in {data_dir / TOKEN_FILENAME}", flush=True)
    if not is_loopback(args.host):
        print(
            f"medgen serve: WARNING: listening on {args.host}: other machines can reach this engine, and the "
            f"token and scans travel unencrypted; put it behind TLS or an SSH tunnel",
            file=sys.stderr,
            flush=True,
        )

    # 3. Serve
    import uvicorn

    from medgen.threads import set_threads, threads_wanted

    set_threads(threads_wanted(args.threads))

    from medgen.server.app import create_app

    config = ServerConfig(data_dir=data_dir, models=models, device=args.device, dtype=args.dtype, limits=limits,
                          preload=not args.lazy, destinations=destinations, adapters=adapters, retention=retention,
                          access_log=args.access_log.expanduser().resolve() if args.access_log else None)
    app = create_app(config, token)
    print(f"medgen serve: engine at {url} (model {models[0].name}; data in {data_dir})", flush=True)
    print(f"medgen serve: finished jobs kept {format_duration(retention.keep_results_s)}, uploads kept "
          f"{format_duration(retention.keep_inputs_s)} after the job; access log {config.access_log_path}", flush=True)
    for adapter in adapters:
        print(f"medgen serve: adapter {adapter.name!r} ({adapter.kind}): {adapter.path}", flush=True)
    for destination in destinations:
        print(f"medgen serve: export destination {destination.name!r}: {destination.address}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                access_log=args.verbose)
    return 0


def is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _named_path(option: str, value: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (NAME: the file or folder name); the path must exist so a typo fails at
    start, not at the first job."""
    name, sep, path_text = value.partition("=")
    if not sep:
        name, path_text = "", value
    path = Path(path_text).expanduser()
    if not path.exists():
        raise ValueError(f"{option} {value}: no such file or folder")
    return name or path.name.removesuffix(".safetensors"), path.resolve()


def parse_model_option(value: str) -> ModelEntry:
    """``[NAME=]PATH``; PATH 'demo' is the shipped demo model, as everywhere else."""
    name, sep, path_text = value.partition("=")
    if (path_text if sep else value) == "demo":
        return ModelEntry(name=name if sep else default_model().name, path=default_model().path)
    name, path = _named_path("--model", value)
    return ModelEntry(name=name, path=path)


def parse_adapter_option(value: str) -> AdapterEntry:
    """Read and checked now, so a bad adapter fails at start."""
    from medgen.errors import MedgenError
    from medgen.generate.adapters import describe_adapter

    name, path = _named_path("--adapter", value)
    try:
        described = describe_adapter(path)
    except MedgenError as exc:
        raise ValueError(f"--adapter {value}: {exc}") from None
    manifest = described["manifest"] or {}
    base = manifest.get("base_model")
    return AdapterEntry(
        name=name,
        path=path,
        kind=described["kind"],
        token=manifest.get("token") if isinstance(manifest.get("token"), str) else None,
        base_model=base.get("name") if isinstance(base, dict) else None,
        modality=manifest.get("modality") if isinstance(manifest.get("modality"), str) else None,
    )


def parse_destinations(options: list[str], file: Path | None) -> tuple[ExportDestination, ...]:
    """``--destination NAME=URL`` options, then the entries of ``--destinations FILE``; names are unique."""
    destinations = [parse_destination_option(value) for value in options]
    if file is not None:
        destinations += load_destinations_file(file)
    names = [destination.name for destination in destinations]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"destination name(s) given twice: {', '.join(repeated)}")
    return tuple(destinations)


def default_model() -> ModelEntry:
    """The phantom demo model shipped in the package, when it is there."""
    demo = Path(__file__).resolve().parent.parent / "phantom" / "demo_model"
    if (demo / "model_index.json").exists():
        return ModelEntry(name="phantom-demo", path=demo)
    raise ValueError(
        "no model given and the phantom demo model is not installed; pass --model DIR "
        "(for a plumbing test: `medgen model create-tiny DIR`)"
    )


if __name__ == "__main__":
    sys.exit(serve_main())

"""The `mmserve` command: serve, plugins, models, train, eval, alias."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("mmserve")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.config:
        import os

        os.environ["MMSERVE_CONFIG"] = args.config
    return int(args.handler(args) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmserve", description="Multimodal model server for attention-RNN tasks.")
    parser.add_argument("--config", help="YAML settings file (also MMSERVE_CONFIG)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(required=True, metavar="command")

    serve = sub.add_parser("serve", help="start the HTTP server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--backend", choices=["embedded", "ray"])
    serve.set_defaults(handler=_serve)

    plugins = sub.add_parser("plugins", help="list plugins, their tasks, origin and model versions")
    plugins.add_argument("--json", action="store_true")
    plugins.set_defaults(handler=_plugins)

    models = sub.add_parser("models", help="list registered models, versions and aliases")
    models.add_argument("--json", action="store_true")
    models.set_defaults(handler=_models)

    train = sub.add_parser("train", help="train a task's model, log it to MLflow and register it")
    train.add_argument("task")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--seed", type=int)
    train.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (smoke tests)")
    train.add_argument("--device", default="cpu")
    train.add_argument("--output-dir", type=Path, help="where to write the model artifacts (default: a temp dir)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="task-specific option")
    train.add_argument("--alias", help="point this alias (e.g. production) at the new version")
    train.add_argument("--no-register", action="store_true", help="train and write artifacts only (no MLflow)")
    train.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation after training")
    train.set_defaults(handler=_train)

    evaluate = sub.add_parser("eval", help="evaluate a model on the task's test split and log to MLflow")
    evaluate.add_argument("task")
    evaluate.add_argument("--model-dir", type=Path, help="artifact directory (default: the served alias)")
    evaluate.add_argument("--alias", default=None)
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--no-log", action="store_true", help="do not create an MLflow run")
    evaluate.add_argument(
        "--write-metrics", action="store_true", help="store the results as metrics.json in --model-dir"
    )
    evaluate.set_defaults(handler=_evaluate)

    register = sub.add_parser("register", help="register a model artifact directory as a new version of a task")
    register.add_argument("task")
    register.add_argument("model_dir", type=Path, help="weights and config as `mmserve train --output-dir` writes them")
    register.add_argument("--alias", help="point this alias (e.g. production) at the new version")
    register.add_argument("--description", default="mmserve register")
    register.set_defaults(handler=_register)

    alias = sub.add_parser("alias", help="point a model alias at a registered version")
    alias.add_argument("task")
    alias.add_argument("alias")
    alias.add_argument("version")
    alias.set_defaults(handler=_alias)

    config = sub.add_parser("serve-config", help="write the Ray Serve config YAML for the settings")
    config.add_argument("--output", type=Path)
    config.set_defaults(handler=_serve_config)
    return parser


def _settings(**overrides: Any):
    from mmserve.server.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(host=args.host, port=args.port, backend=args.backend)
    if settings.backend == "ray":
        from mmserve.server.rayserve.ray_backend import serve_with_ray

        return serve_with_ray(settings)
    import uvicorn

    from mmserve.server.http.app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level)
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from mmserve.registry.discovery import discover
    from mmserve.registry.models import ModelRegistry

    settings = _settings()
    _, found = discover(allow=settings.plugins or None, modules=settings.plugin_modules)
    registry = ModelRegistry(settings.data_dir)
    try:
        registered = {m["name"]: m["versions"] for m in registry.list_models()}
    except Exception as exc:  # the listing is still useful without MLflow
        log.warning("could not read the model registry: %s", exc)
        registered = {}
    rows = [
        {
            "plugin": p.name,
            "source": p.source,
            "tasks": [{"name": t, "versions": registered.get(t, [])} for t in p.tasks],
            "error": p.error,
        }
        for p in found.plugins
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['plugin']}  ({row['source']})")
        if row["error"]:
            print(f"  ERROR: {row['error']}")
        for task in row["tasks"]:
            versions = ", ".join(_version_label(v) for v in task["versions"]) or "no registered versions"
            print(f"  task {task['name']}: {versions}")
    return 0


def _version_label(version: dict[str, Any]) -> str:
    aliases = "".join(f" @{a}" for a in version["aliases"])
    return f"v{version['version']}{aliases}"


def _models(args: argparse.Namespace) -> int:
    from mmserve.registry.models import ModelRegistry

    registry = ModelRegistry(_settings().data_dir)
    try:
        models = registry.list_models()
    except Exception as exc:  # the tracking server is down or unreachable: say so, and what is cached
        return _registry_unreachable(registry, exc, args.json)
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    if not models:
        print("no registered models")
    for model in models:
        print(model["name"])
        for version in model["versions"]:
            print(f"  {_version_label(version)}  run {version['run_id']}  {version['description'] or ''}".rstrip())
    return 0


def _registry_unreachable(registry, exc: Exception, as_json: bool) -> int:
    from mmserve.registry.tracking import redact_uri

    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    where = redact_uri(registry.tracking_uri)
    cached = registry.cached_models()
    if as_json:
        print(json.dumps({"error": f"MLflow is unreachable at {where}", "reason": reason, "cached": cached}, indent=2))
        return 1
    print(f"MLflow is unreachable at {where}: {reason}", file=sys.stderr)
    if not cached:
        print("no model versions are cached locally", file=sys.stderr)
    else:
        print("cached locally (a server with this data directory serves these while MLflow is down):", file=sys.stderr)
        for model in cached:
            versions = ", ".join(_version_label(v) for v in model["versions"])
            print(f"  {model['name']}: {versions}", file=sys.stderr)
    return 1


def _task(name: str):
    from mmserve.registry.discovery import discover

    settings = _settings()
    _, found = discover(allow=settings.plugins or None, modules=settings.plugin_modules)
    if name not in found.tasks:
        raise SystemExit(f"unknown task {name!r}; available: {sorted(found.tasks)}")
    return settings, found.tasks[name]


def parse_set_options(pairs: list[str]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects KEY=VALUE, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            extra[key] = json.loads(raw)
        except json.JSONDecodeError:
            extra[key] = raw
    return extra


def _train(args: argparse.Namespace) -> int:
    from mmserve.plugins.artifacts import write_metrics
    from mmserve.plugins.task import TrainOptions
    from mmserve.plugins.tracking import NullRunLogger

    settings, task = _task(args.task)
    output_dir = args.output_dir or Path(tempfile.mkdtemp(prefix=f"mmserve-{task.name}-"))
    options = TrainOptions(output_dir=output_dir, device=args.device, extra=parse_set_options(args.set))
    for flag, attr in (("epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "learning_rate"), ("seed", "seed"), ("max_steps", "max_steps")):
        value = getattr(args, flag)
        if value is not None:
            setattr(options, attr, value)
    if args.no_register:
        result = task.train(options, NullRunLogger())
        metrics = dict(result.metrics)
        if not args.no_eval:
            metrics.update(_test_metrics(task, result.artifact_dir, NullRunLogger(), args.device, metrics))
        write_metrics(result.artifact_dir, metrics)
        print(json.dumps({"artifact_dir": str(result.artifact_dir), "metrics": metrics}, indent=2))
        return 0
    from mmserve.registry.models import ModelRegistry

    registry = ModelRegistry(settings.data_dir)
    with registry.start_run(task.name, run_name=f"train-{task.name}") as logger:
        result = task.train(options, logger)
        metrics = dict(result.metrics)
        if not args.no_eval:
            metrics.update(_test_metrics(task, result.artifact_dir, logger, args.device, metrics))
        write_metrics(result.artifact_dir, metrics)
        version = registry.register(
            task.name, result.artifact_dir, run_id=logger.run_id, alias=args.alias, description="mmserve train",
            metrics=metrics,
        )
    print(json.dumps({"task": task.name, "version": version, "alias": args.alias, "artifact_dir": str(result.artifact_dir), "metrics": metrics}, indent=2))
    return 0


def _test_metrics(task, artifact_dir: Path, logger, device: str, known: dict[str, float]) -> dict[str, float]:
    """The test-split evaluation as test_* metrics, unless training already measured it."""
    if any(k.startswith("test_") for k in known):
        return {}
    return {k if k.startswith("test_") else f"test_{k}": v for k, v in task.evaluate(artifact_dir, logger, device).items()}


def _evaluate(args: argparse.Namespace) -> int:
    from mmserve.plugins.artifacts import read_metrics, with_test_metrics, write_metrics
    from mmserve.plugins.tracking import NullRunLogger
    from mmserve.registry.models import ModelRegistry

    settings, task = _task(args.task)
    registry = ModelRegistry(settings.data_dir)
    model_dir = args.model_dir
    if model_dir is None:
        alias = args.alias or settings.task(task.name).alias
        if settings.register_bundled:
            registry.ensure_bundled(task.name, task.bundled_artifacts(), alias)
        model_dir = registry.resolve(task.name, alias).path
    if args.no_log:
        metrics = task.evaluate(model_dir, NullRunLogger(), args.device)
    else:
        with registry.start_run(task.name, run_name=f"eval-{task.name}") as logger:
            logger.log_params({"model_dir": str(model_dir)})
            metrics = task.evaluate(model_dir, logger, args.device)
    if args.write_metrics:
        if args.model_dir is None:
            raise SystemExit("--write-metrics needs --model-dir (the artifact directory to write metrics.json into)")
        print(f"wrote {write_metrics(model_dir, with_test_metrics(read_metrics(model_dir), metrics))}", file=sys.stderr)
    print(json.dumps(metrics, indent=2))
    return 0


def _register(args: argparse.Namespace) -> int:
    import torch

    from mmserve.registry.models import ModelRegistry

    settings, task = _task(args.task)
    # The task's own loader checks the directory (config, weights, shapes) before anything
    # is registered: a version that cannot load would fail every server that switches to it.
    try:
        task.load_model(args.model_dir, torch.device("cpu"))
    except Exception as error:  # noqa: BLE001 - any loader failure means "not a model of this task"
        raise SystemExit(f"{args.model_dir} is not a loadable {task.name} model: {error}") from None
    version = ModelRegistry(settings.data_dir).register(task.name, args.model_dir, alias=args.alias, description=args.description)
    print(json.dumps({"task": task.name, "version": version, "alias": args.alias, "model_dir": str(args.model_dir)}))
    return 0


def _alias(args: argparse.Namespace) -> int:
    from mmserve.registry.models import ModelRegistry

    ModelRegistry(_settings().data_dir).set_alias(args.task, args.alias, args.version)
    print(f"{args.task}@{args.alias} -> version {args.version}")
    return 0


def _serve_config(args: argparse.Namespace) -> int:
    from mmserve.server.rayserve.ray_backend import write_serve_config

    text = write_serve_config(_settings())
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The HTTP API of a pack on Ray Serve: scale-out on an existing serving engine.

One replica (``MixtureDeployment``) loads the pack once and answers ``POST /`` with the JSON of
``server``'s ``/v1/predict`` (the same request model and limits, the same answer records:
``{"results": [...]}``, one per row, exactly ``predict --json``'s). Ray Serve's ``@serve.batch``
does the coalescing: the requests a replica receives within ``batch_wait_timeout_s`` (at most
``max_batch_size`` of them) become one call of ``TTLoRAMoE.predict`` per option group
(``expert``, ``abstain``), answers handed back in order. ``num_replicas`` copies of the deployment
(each ``num_cpus`` / ``num_gpus``) spread over the Ray cluster; Ray Serve's proxy routes requests
to them. ``build_app`` returns the application; ``app_builder`` is the same for ``serve run
ttmoe_core.services.ray_serve:app_builder pack=DIR num_replicas=2`` (README "Serving").
Optional: needs ``ray[serve]`` (requirements-ray.txt); nothing else in the engine imports it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..moe import MoEError, TTLoRAMoE
from ..runtime import allocator
from .server import ServeSettings, request_models

Options = tuple[str | None, bool]                 # (expert, abstain): rows sharing them share a call
Job = tuple[list[str], list[str | None], Options]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@serve.deployment(ray_actor_options={"num_cpus": 1})
class MixtureDeployment:
    """One replica: the pack's mixture and the request model of ``server`` (its limits)."""

    def __init__(self, pack: str, device: str | None = None, dtype: str | None = None,
                 max_batch_size: int = 32, batch_wait_timeout_s: float = 0.005,
                 max_rows: int = 256, max_text_chars: int = 10_000):
        allocator.fix_mmap_threshold()       # a flat RSS over many requests (runtime.allocator)
        self.moe = TTLoRAMoE.from_pack(pack, device=device, dtype=dtype)
        self.settings = ServeSettings(max_rows=max_rows, max_text_chars=max_text_chars)
        _, self.request_model = request_models(self.settings)
        self.predict_batch.set_max_batch_size(max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def __call__(self, request: Request) -> Response:
        """``POST /``: the body of ``/v1/predict``; ``GET /``: the experts (``/v1/experts``)."""
        if request.method == "GET":
            return JSONResponse({"router": self.moe.router is not None,
                                 "experts": [c.name for c in self.moe.cards]})
        try:
            body = self.request_model.model_validate(json.loads(await request.body()))
        except json.JSONDecodeError as exc:
            return _error(400, f"the body is not JSON ({exc.msg})")
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            return _error(422, f"{where}: {first.get('msg', 'invalid')}" if where else "invalid")
        if body.expert is None and self.moe.router is None:
            return _error(422, "this pack has no router: choose an expert with \"expert\"")
        texts, pairs = body.inputs()
        answers = await self.predict_batch((texts, pairs, (body.expert, body.abstain)))
        if isinstance(answers, Exception):
            return _error(422, str(answers))
        return JSONResponse({"results": answers})

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batch(self, jobs: Sequence[Job]) -> list[list[dict] | Exception]:
        """The answers of each request (or its error), from one ``predict`` per option group."""
        return await asyncio.to_thread(answer_jobs, self.moe, jobs)


def answer_jobs(moe: TTLoRAMoE, jobs: Sequence[Job]) -> list[list[dict] | Exception]:
    """Each job's answers, in order: jobs with the same options share one ``predict`` call on
    their concatenated rows; when a shared call fails, each of its jobs runs alone, so a bad
    request fails only itself (its entry is the exception)."""
    groups: dict[Options, list[int]] = {}
    for i, (_, _, options) in enumerate(jobs):
        groups.setdefault(options, []).append(i)
    out: list[list[dict] | Exception] = [[] for _ in jobs]
    for (expert, abstain), members in groups.items():
        texts = [t for i in members for t in jobs[i][0]]
        pairs = [p for i in members for p in jobs[i][1]]
        try:
            answers = moe.predict(texts, pairs, expert=expert, abstain=abstain)
        except MoEError as exc:
            if len(members) == 1:
                out[members[0]] = exc
                continue
            for i in members:
                try:
                    out[i] = moe.predict(jobs[i][0], jobs[i][1], expert=expert, abstain=abstain)
                except MoEError as alone:
                    out[i] = alone
            continue
        start = 0
        for i in members:
            out[i] = answers[start:start + len(jobs[i][0])]
            start += len(jobs[i][0])
    return out


def build_app(pack: str, num_replicas: int = 1, num_cpus: float = 1.0, num_gpus: float = 0.0,
              device: str | None = None, dtype: str | None = None, max_batch_size: int = 32,
              batch_wait_timeout_s: float = 0.005, max_rows: int = 256):
    """The Ray Serve application of ``pack``: ``num_replicas`` replicas, each with ``num_cpus``
    CPUs and ``num_gpus`` GPUs reserved, coalescing up to ``max_batch_size`` requests within
    ``batch_wait_timeout_s`` seconds. The pack folder must exist at this path on every node."""
    deployment = MixtureDeployment.options(
        num_replicas=num_replicas,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus})
    return deployment.bind(pack, device=device, dtype=dtype, max_batch_size=max_batch_size,
                           batch_wait_timeout_s=batch_wait_timeout_s, max_rows=max_rows)


_ARGS = {"pack": str, "num_replicas": int, "num_cpus": float, "num_gpus": float, "device": str,
         "dtype": str, "max_batch_size": int, "batch_wait_timeout_s": float, "max_rows": int}


def app_builder(args: Mapping[str, Any]):
    """``build_app`` from ``serve run``'s ``key=value`` arguments (strings), e.g.
    ``serve run ttmoe_core.services.ray_serve:app_builder pack=assets/demo num_replicas=2``."""
    unknown = sorted(set(args) - set(_ARGS))
    if unknown or "pack" not in args:
        raise ValueError(f"arguments: pack=DIR and any of {sorted(set(_ARGS) - {'pack'})}"
                         + (f"; unknown {unknown}" if unknown else ""))
    return build_app(**{key: _ARGS[key](value) for key, value in args.items()})

"""Teacher regeneration over a Ray cluster: the fixed batches of a generation pass are spread over a
pool of Ray actors with Ray Data (``map_batches`` over an actor pool), each actor holding one
backend (``vllm`` on GPU nodes, ``hf`` on CPU nodes).

:class:`RayBackend` is a :class:`~sdd_plugin.interfaces.GenerationBackend` whose ``name`` is the
backend its actors run, so a Ray run reads and writes the same row cache as a single-process run
of that backend. The batches are the ones the single-process backend plans
(:func:`~sdd_plugin.generation.hf.backend.plan_batches`); one dataset row is one whole batch and
an actor generates it exactly as the single-process backend would, so the rows are the same.

Top-k log-probs (``settings.extra["logprobs_top_k"]``) come back with their rows, unchanged.

Only the driver writes results: ``on_result`` is called once per row, as each batch comes back
(a batch Ray delivers twice is reported once). A worker that dies loses only the batch it was
generating: Ray restarts the actor and runs that batch again, while the rows that already came back
stay in the caller's cache. A killed driver loses nothing that was reported; the next run resumes.

Without an address a local Ray instance starts on this machine (``RAY_ADDRESS``, when set, is
used instead); ``"auto"`` joins the cluster this node belongs to; ``ray://host:10001`` goes
through Ray Client. Every node needs sdd-plugin and the chosen backend installed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from ..interfaces import GenerationResult, GenerationSettings, TokenLogprobs
from .hf.backend import plan_batches

#: ``address`` values that mean "start Ray on this machine".
LOCAL = ("", "local")

#: The backend name resolved by the cluster: ``vllm`` when it has GPUs, else ``hf``.
AUTO = "auto"


class _BatchWorker:
    """A Ray Data actor: one backend, teacher loaded once, generating one whole batch per call."""

    def __init__(self, backend: str, model_path: str, settings: dict[str, Any]) -> None:
        from ..plugins import get_backend

        self.backend = get_backend(backend)
        self.model_path = model_path
        self.settings = GenerationSettings(**settings)
        if hasattr(self.backend, "load"):
            self.backend.load(model_path, self.settings)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        out: dict[str, list] = {"row": [], "text": [], "num_tokens": [], "finished": [], "logprobs": []}
        for payload in batch["payload"]:
            item = json.loads(str(payload))
            rows: list[int] = item["rows"]
            results: list[GenerationResult] = []
            self.backend.generate(
                self.model_path, item["prompts"], self.settings, results.append, show_progress=False
            )
            found = {res.index: res for res in results}
            for local, row in enumerate(rows):
                res = found[local]
                out["row"].append(row)
                out["text"].append(res.text)
                out["num_tokens"].append(res.num_tokens)
                out["finished"].append(res.finished)
                out["logprobs"].append(json.dumps(asdict(res.logprobs)) if res.logprobs is not None else "")
        return out


class RayBackend:
    """Runs a generation backend's batches on a pool of Ray actors.

    ``backend``: ``hf``, ``vllm`` or ``auto`` (``vllm`` when the cluster has GPUs, else ``hf``).
    ``address``: None or ``"local"`` to start Ray here, else a cluster address. ``workers``: the
    actor pool size (default: one per GPU group of ``tensor_parallel_size`` GPUs for ``vllm``,
    one per node for ``hf``); ``hf`` actors share the cluster's CPUs evenly."""

    def __init__(self, backend: str = AUTO, address: str | None = None, workers: int | None = None) -> None:
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"ray workers must be an integer >= 1, got {workers!r}")
        if backend != AUTO:
            from ..plugins import get_backend

            get_backend(backend)  # an unknown name fails here, before Ray or any weights start
        self.requested = backend
        self.address = None if address is None or str(address) in LOCAL else str(address)
        self.workers = workers
        self._name: str | None = None if backend == AUTO else backend

    # ----------------------------------------------------------------- cluster
    def connect(self) -> None:
        """Join the cluster at ``address``, or start a local Ray instance."""
        import ray

        if ray.is_initialized():
            return
        ray.init(
            address=self.address,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
        )

    @staticmethod
    def _resources() -> dict[str, float]:
        import ray

        return dict(ray.cluster_resources())

    @property
    def name(self) -> str:
        """The backend the actors run (for ``auto``: asks the cluster whether it has GPUs)."""
        if self._name is None:
            self.connect()
            self._name = "vllm" if self._resources().get("GPU", 0) >= 1 else "hf"
        return self._name

    def plan_workers(self, settings: GenerationSettings) -> tuple[int, dict[str, float]]:
        """``(pool size, resources of one actor)`` for this cluster."""
        import ray

        resources = self._resources()
        if self.name == "vllm":
            tp = int((settings.extra or {}).get("tensor_parallel_size", 1))
            gpus = int(resources.get("GPU", 0))
            if gpus < tp:
                raise RuntimeError(
                    f"the vllm backend on Ray needs GPUs: the cluster has {gpus}, one worker {tp}"
                )
            return self.workers or gpus // tp, {"num_gpus": tp, "num_cpus": 1}
        cpus = int(resources.get("CPU", 1))
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        workers = self.workers or max(1, len(nodes))
        if workers > cpus:
            raise RuntimeError(f"{workers} hf workers need a CPU each; the cluster has {cpus}")
        return workers, {"num_cpus": max(1, cpus // workers)}

    # ---------------------------------------------------------------- generate
    def generate(
        self,
        model_path: str,
        prompts: Sequence[str],
        settings: GenerationSettings,
        on_result: Callable[[GenerationResult], None],
        *,
        show_progress: bool = True,
        desc: str = "distill",
    ) -> None:
        """Generate every prompt on the actor pool; ``on_result`` once per row as batches return."""
        if not prompts:
            return
        import ray
        from tqdm.auto import tqdm

        from ..models import load_tokenizer

        tok = load_tokenizer(model_path)
        lengths = [len(ids) for ids in tok(list(prompts), add_special_tokens=False)["input_ids"]]
        batches = plan_batches(lengths, settings.batch_size)
        self.connect()
        workers, actor_resources = self.plan_workers(settings)
        workers = min(workers, len(batches))
        items = [{"payload": json.dumps({"rows": b, "prompts": [prompts[i] for i in b]})} for b in batches]

        ray.data.DataContext.get_current().enable_progress_bars = False
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        results = dataset.map_batches(
            _BatchWorker,
            fn_constructor_kwargs={
                "backend": self.name,
                "model_path": str(model_path),
                "settings": asdict(settings),
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=workers),
            **actor_resources,
        )
        seen: set[int] = set()
        bar = tqdm(total=len(prompts), desc=f"{desc} (ray x{workers})", unit="row", disable=not show_progress)
        try:
            for row in results.iter_rows():
                index = int(row["row"])
                if index in seen:
                    continue
                seen.add(index)
                packed = str(row["logprobs"])
                logprobs = TokenLogprobs(**json.loads(packed)) if packed else None
                on_result(
                    GenerationResult(
                        index, str(row["text"]), int(row["num_tokens"]), bool(row["finished"]), logprobs
                    )
                )
                bar.update(1)
        finally:
            bar.close()

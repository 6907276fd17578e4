"""One explicit training loop for every method: `fit(spec, out_dir, on_event)`."""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.artifact import drop_snapshots_after, save_artifact, save_snapshot, write_json_atomic
from core.backbone import Backbone, load_backbone, resolve_device
from core.batching import Codec, Encoded, collate, length_bucketed_order
from core.errors import Cancelled, ConfigError, OutOfMemory, TrainingDiverged
from core.evaluate import evaluate, primary_metric
from core.events import Callback, Event, peak_memory_mb
from core.methods import build_prompt, input_offset
from core.scoring import loss_fn
from core.spec import DEFAULT_STEPS, DataConfig, RunSpec, spec_from_dict, spec_to_dict, validate_spec
from core.tasks import TaskData, load_builtin_task, load_user_task
from core.vocab import common_token_ids, task_instruction, text_start_ids
from core.warm_start import check_width, load_warm_source

CHECKPOINT = "checkpoint.pt"
NORM_RANGE = (0.1, 10.0)
"""Sane range of the prompt's per-token norm relative to the vocabulary's; outside it a warning event goes out."""


@dataclass(frozen=True)
class FitResult:
    artifact: str
    steps: int
    trainable_params: int
    train_seconds: float
    """Seconds spent in training steps (evaluation excluded)."""
    total_seconds: float
    examples_per_second: float
    peak_memory_mb: float
    metrics: dict[str, float]
    """Test-split metrics of the best checkpoint; `gen_` names are scored by generation, the rest by ranking."""
    scoring: dict[str, str]
    best_step: int
    resumed_from: int | None
    data: dict[str, Any] = field(default_factory=dict)
    """What was left out of or added to the user's data (TaskData.data_report: rows skipped, labels added)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def load_task(data: DataConfig) -> TaskData:
    """The run's data, split with `data.split_seed` (not the run's seed: every seed sees the same test set)."""
    seed = data.split_seed
    if data.train_file is not None:
        return load_user_task(data.train_file, data.eval_file, text_column=data.text_column,
                              label_column=data.label_column, template=data.template, kind=data.kind, seed=seed,
                              strict=data.strict, eval_labels=data.eval_labels)
    assert data.task is not None  # validate_spec guarantees one of the two
    return load_builtin_task(data.task, data_dir=data.data_dir, seed=seed)


def total_steps(spec: RunSpec, train_size: int) -> int:
    t = spec.train
    if t.steps is not None:
        return t.steps
    if t.epochs is not None:
        return max(1, math.ceil(t.epochs * math.ceil(train_size / t.batch_size)))
    return DEFAULT_STEPS


def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warm-up to `base`, then linear decay to zero at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * max(0.0, (total - step) / max(1, total - warmup))


def _trainable(prompt: nn.Module) -> list[nn.Parameter]:
    return [p for p in prompt.parameters() if p.requires_grad]


def param_groups(prompt: nn.Module, lr: float, scaling: str, start: dict[str, torch.Tensor],
                 fallback_rms: float) -> list[dict[str, Any]]:
    """One AdamW group per trainable tensor, each with its own peak rate `base_lr` (the schedule scales it).

    `absolute`: every tensor takes `lr`. `relative`: `lr` times the RMS of the tensor's starting value (`start`,
    the module's state at initialisation, so a resumed run computes the same rates); Adam moves every entry by about
    its rate per step, so this moves each tensor by the same fraction of its own size. A tensor that starts at
    zero takes `fallback_rms` (the backbone's embedding RMS) as its size. A module's `lr_factors` (DePT's second
    rate for A and B) multiply its tensors' rates either way."""
    factors: dict[str, float] = getattr(prompt, "lr_factors", {})
    if scaling != "relative" and not factors:  # one group, as checkpoints written before per-tensor rates hold
        return [{"params": _trainable(prompt), "lr": lr, "base_lr": lr}]
    groups = []
    for name, param in prompt.named_parameters():
        if param.requires_grad:
            rms = start[name].detach().float().pow(2).mean().sqrt().item()
            size = (rms if rms > 0 else fallback_rms) if scaling == "relative" else 1.0
            rate = lr * size * factors.get(name, 1.0)
            groups.append({"params": [param], "lr": rate, "base_lr": rate, "name": name})
    return groups


def set_lr(optimizer: torch.optim.Optimizer, step: int, warmup: int, total: int, lr: float) -> None:
    """Each group's rate at `step` of the schedule: lr_at over the group's own peak rate (`lr` for a group restored
    from a checkpoint that predates per-group rates)."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, group.get("base_lr", lr), warmup, total)


def optimizer_step(loss: torch.Tensor, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
                   grad_clip: float) -> None:
    """Backward from the loss into the prompt's parameters, clip their norm (0: no clipping), update."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()


def _norms(prompt: torch.Tensor, vocab_norm: float) -> dict[str, float]:
    norm = prompt.detach().float().norm(dim=-1).mean().item()
    return {"prompt_norm": norm, "vocab_norm": vocab_norm, "norm_ratio": norm / vocab_norm}


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-write leaves the previous checkpoint intact


def _resume_key(spec_dict: dict[str, Any]) -> dict[str, Any]:
    """The settings a checkpoint must share to be resumed: all but where and how fast it runs."""
    train = {k: v for k, v in spec_dict["train"].items() if k not in ("device", "threads")}
    return {**spec_dict, "train": train}


def _load_checkpoint(path: Path, spec_dict: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    # Through the dataclasses: a checkpoint written before a setting existed reads it at its default.
    if _resume_key(spec_to_dict(spec_from_dict(state["spec"]))) != _resume_key(spec_dict):
        raise ConfigError(f"{path.parent} holds a checkpoint of a run with other settings; use another --out "
                          "or delete that directory to start over")
    return state


def fit(
    spec: RunSpec,
    out_dir: str | Path,
    on_event: Callback | None = None,
    should_stop: Callable[[], bool] | None = None,
    backbone: Backbone | None = None,
) -> FitResult:
    """Train `spec.method`'s prompt on a frozen backbone and write an artifact to `out_dir`.

    Resumes from `out_dir/checkpoint.pt` when one with the same settings is there (prompt parameters, optimizer,
    step, data order and best checkpoint), so a killed run continues where its last checkpoint left it. With
    `spec.train.init_from` the prompt starts from that finished run's prompt (core.warm_start). With
    `spec.train.mlflow_uri` or `tensorboard_dir` the events are logged there too (core.tracking).
    """
    t = spec.train
    if not (t.mlflow_uri or t.tensorboard_dir):
        return _fit(spec, out_dir, on_event, should_stop, backbone)
    from core.tracking import open_trackers

    validate_spec(spec)
    trackers = open_trackers(spec_to_dict(spec), Path(out_dir).expanduser(), t.mlflow_uri, t.tensorboard_dir)

    def emit(event: Event) -> None:
        if on_event is not None:
            on_event(event)
        for tracker in trackers:
            tracker(event)

    try:
        result = _fit(spec, out_dir, emit, should_stop, backbone)
    except BaseException:
        for tracker in trackers:
            tracker.close(failed=True)
        raise
    for tracker in trackers:
        tracker.close(failed=False)
    return result


def _fit(spec: RunSpec, out_dir: str | Path, on_event: Callback | None, should_stop: Callable[[], bool] | None,
         backbone: Backbone | None) -> FitResult:
    validate_spec(spec)
    started = time.perf_counter()
    emit = on_event or (lambda event: None)
    emit(Event("phase", 0, 0, {"phase": "loading"}))
    t = spec.train
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    if t.threads is not None:
        torch.set_num_threads(t.threads)
    spec_dict = spec_to_dict(spec)
    checkpoint_path = out / CHECKPOINT
    state = _load_checkpoint(checkpoint_path, spec_dict)

    # Data, backbone and the prompt module, all from the spec and its seed.
    task = load_task(spec.data)
    device = resolve_device(t.device)
    if backbone is None:
        backbone = load_backbone(spec.model, device)
    device = backbone.device
    codec = Codec.for_backbone(backbone, task.answer_cue, t.max_length)
    common = common_token_ids(backbone.tokenizer)
    table = backbone.embedding_table()
    vocab_norm = table[torch.tensor(common)].norm(dim=-1).mean().item()
    warm = load_warm_source(t.init_from) if t.init_from is not None else None
    if warm is not None:
        check_width(warm, backbone.hidden_size)
    start_ids = None
    if spec.prompt_init == "text" and warm is None:
        text = t.prompt_init_text or task_instruction(task.answer_cue, task.label_words)
        start_ids = text_start_ids(backbone.tokenizer, text, spec.method.length, getattr(spec.method, "pool", 1))
    prompt, init_ids = build_prompt(spec.method, table, common, torch.Generator().manual_seed(t.seed),
                                    warm=warm.dense if warm is not None else None, start_ids=start_ids)
    embedding_rms = table[torch.tensor(common)].pow(2).mean().sqrt().item()
    del table
    origin: dict[str, Any] | None = None
    if warm is not None:
        with torch.no_grad():
            origin = warm.origin(start=prompt.dense())
    init_params = {k: v.detach().clone() for k, v in prompt.state_dict().items()}
    prompt.to(device)
    params = _trainable(prompt)
    n_params = sum(p.numel() for p in params)
    if n_params != spec.method.trainable_params(backbone.hidden_size):
        raise AssertionError(f"{spec.method.name}: {n_params} trainable parameters, formula says "
                             f"{spec.method.trainable_params(backbone.hidden_size)}")
    train_examples = task.train[: spec.data.max_train_examples]
    val_examples = task.validation[: spec.data.max_eval_examples]
    test_examples = task.test[: spec.data.max_test_examples]
    encoded: list[Encoded] = codec.encode_many([(e.source, e.target) for e in train_examples])
    lengths = [len(e.source) + len(e.target) for e in encoded]
    steps = total_steps(spec, len(encoded))
    optimizer = torch.optim.AdamW(param_groups(prompt, spec.lr, spec.lr_scaling, init_params, embedding_rms),
                                  weight_decay=t.weight_decay)

    step, epoch, position, best_step = 0, 0, 0, 0
    best_value: float | None = None
    best_state = {k: v.detach().clone() for k, v in prompt.state_dict().items()}
    train_seconds, seen = 0.0, 0
    resumed_from: int | None = None
    if state is not None:
        prompt.load_state_dict(state["prompt"])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, position = state["step"], state["epoch"], state["position"]
        best_value, best_step, best_state = state["best_value"], state["best_step"], state["best_prompt"]
        train_seconds, seen = state["train_seconds"], state["seen"]
        torch.set_rng_state(state["torch_rng"])
        resumed_from = step
    history = out / "history.jsonl"
    if resumed_from is not None and history.is_file():  # drop what was logged after the checkpoint
        kept = [line for line in history.read_text().splitlines() if _logged_step(line) <= resumed_from]
        history.write_text("".join(f"{line}\n" for line in kept))
    elif resumed_from is None:
        history.unlink(missing_ok=True)
    drop_snapshots_after(out, resumed_from)  # the snapshots follow the checkpoint as the history does

    def send(event: Event) -> None:
        if event.kind in ("step", "eval", "warning", "test"):
            with history.open("a") as f:
                f.write(json.dumps({"kind": event.kind, "step": event.step, **event.data}) + "\n")
        emit(event)

    def checkpoint() -> None:
        _save_checkpoint(checkpoint_path, {
            "spec": spec_dict, "prompt": prompt.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
            "epoch": epoch, "position": position, "best_value": best_value, "best_step": best_step,
            "best_prompt": best_state, "train_seconds": train_seconds, "seen": seen,
            "torch_rng": torch.get_rng_state(),
        })
        send(Event("checkpoint", step, steps, {"path": str(checkpoint_path)}))

    def run_eval(examples: list[Any], kind: str) -> tuple[dict[str, float], dict[str, str]]:
        phase = "validating" if kind == "val" else "testing"

        def progress(done: int, total: int) -> None:
            emit(Event("phase", step, steps, {"phase": phase, "done": done, "total": total}))

        progress(0, len(examples))
        with torch.no_grad():
            metrics, scoring = evaluate(backbone, prompt(), codec, task, examples,
                                        generate=t.generate_eval and kind == "test", progress=progress,
                                        offset=input_offset(prompt))
        # The name of the metric that picks the best checkpoint travels with it (a study's pruner reads it).
        data = {**metrics, "primary": primary_metric(task, metrics)}
        send(Event("eval" if kind == "val" else "test", step, steps, data))
        return metrics, scoring

    send(Event("start", step, steps, {
        "trainable_params": n_params, "method": spec.method.name, "model": backbone.source,
        "hidden_size": backbone.hidden_size, "prompt_tokens": spec.method.prompt_tokens,
        "train_examples": len(encoded), "lr": spec.lr, "lr_scaling": spec.lr_scaling,
        "prompt_init": "warm start" if warm is not None else spec.prompt_init, "resumed_from": resumed_from,
        "data": task.data_report(), **_norms(prompt(), vocab_norm),
    }))
    for note in task.data_notes():  # rows skipped, labels added: said where the run's events are read
        send(Event("warning", step, steps, {"message": note}))
    batches = length_bucketed_order(lengths, t.batch_size, random.Random(t.seed + epoch))
    norm_ok = True
    emit(Event("phase", step, steps, {"phase": "training"}))
    try:
        while step < steps:
            if should_stop is not None and should_stop():
                checkpoint()
                raise Cancelled(f"stopped at step {step} of {steps}; the checkpoint in {out} resumes it")
            if position >= len(batches):  # a new epoch: a new order from the seed and the epoch number
                epoch, position = epoch + 1, 0
                batches = length_bucketed_order(lengths, t.batch_size, random.Random(t.seed + epoch))
            idx = batches[position]
            tick = time.perf_counter()
            lr = lr_at(step, spec.lr, t.warmup_steps, steps)
            set_lr(optimizer, step, t.warmup_steps, steps, spec.lr)
            batch = collate([encoded[i] for i in idx], backbone.family, backbone.tokenizer.pad_token_id, device)
            loss = loss_fn(backbone, prompt(), batch, input_offset(prompt))
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"the loss became {loss.item()} at step {step + 1}; lower --lr "
                                       f"(now {spec.lr}) or use --dtype float32")
            optimizer_step(loss, params, optimizer, t.grad_clip)
            step, position = step + 1, position + 1
            elapsed = time.perf_counter() - tick
            train_seconds, seen = train_seconds + elapsed, seen + len(idx)
            with torch.no_grad():  # the prompt's size after the update: no graph for it
                norms = _norms(prompt(), vocab_norm)
            send(Event("step", step, steps, {
                "loss": loss.item(), "lr": lr, "examples_per_second": len(idx) / elapsed, "step_seconds": elapsed,
                "peak_memory_mb": peak_memory_mb(device), "epoch": epoch, **norms,
            }))
            inside = NORM_RANGE[0] <= norms["norm_ratio"] <= NORM_RANGE[1]
            if not inside and norm_ok:
                send(Event("warning", step, steps, {"message": (
                    f"the prompt's per-token norm is {norms['norm_ratio']:.1f}x the vocabulary's "
                    f"(sane range {NORM_RANGE[0]}x-{NORM_RANGE[1]}x); if the loss stalls or jumps, lower --lr")}))
            norm_ok = inside
            if step % t.eval_every == 0 or step == steps:
                save_snapshot(out, step, prompt.state_dict())  # what the prompt was at this eval (lamp inspect)
                metrics, _ = run_eval(val_examples, "val")
                value = metrics[primary_metric(task, metrics)]
                if best_value is None or value > best_value:
                    best_value, best_step = value, step
                    best_state = {k: v.detach().clone() for k, v in prompt.state_dict().items()}
                if step < steps:
                    emit(Event("phase", step, steps, {"phase": "training"}))
            if step % t.checkpoint_every == 0 or step == steps:
                checkpoint()
    except torch.OutOfMemoryError as exc:
        raise OutOfMemory(f"out of memory on {device} at step {step + 1}: lower --batch-size (now {t.batch_size}) "
                          f"or --max-length (now {t.max_length}), or use --dtype bfloat16 / --quantize 4bit") from exc
    except MemoryError as exc:
        raise OutOfMemory(f"the process ran out of memory at step {step + 1}: lower --batch-size "
                          f"(now {t.batch_size}) or --max-length (now {t.max_length})") from exc

    # The best checkpoint (by the primary validation metric) is what gets tested and saved.
    prompt.load_state_dict(best_state)
    metrics, scoring = run_eval(test_examples, "test") if t.final_eval else ({}, {})
    emit(Event("phase", step, steps, {"phase": "writing"}))
    with torch.no_grad():
        pooled, offset = prompt(), input_offset(prompt)
    manifest = {
        "spec": spec_dict,
        "model": {"id": spec.model.name, "source": backbone.source, "family": backbone.family,
                  "hidden_size": backbone.hidden_size, "hub_id": _hub_id(backbone)},
        "task": {"name": task.name, "label_words": list(task.label_words) if task.label_words else None,
                 "template": task.template, "answer_cue": task.answer_cue, "metrics": list(task.metrics),
                 "split_note": task.split_note, "data": task.data_report()},
        "init_token_ids": init_ids,
        "init_from": origin,
        "trainable_params": n_params,
        "prompt_tokens": int(pooled.shape[0]),
        "steps": step,
        "best_step": best_step,
        "metrics": metrics,
        "scoring": scoring,
    }
    save_artifact(out, manifest, prompt.state_dict(), init_params, pooled, offset)
    result = FitResult(
        artifact=str(out), steps=step, trainable_params=n_params, train_seconds=round(train_seconds, 3),
        total_seconds=round(time.perf_counter() - started, 3),
        examples_per_second=round(seen / train_seconds, 3) if train_seconds else 0.0,
        peak_memory_mb=round(peak_memory_mb(device), 1), metrics=metrics, scoring=scoring, best_step=best_step,
        resumed_from=resumed_from, data=task.data_report(),
    )
    write_json_atomic(out / "result.json", result.to_json())
    emit(Event("done", step, steps, result.to_json()))
    return result


def _logged_step(line: str) -> float:
    """The step of a history line; a line cut short by a crash counts as after any checkpoint (dropped)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def _hub_id(backbone: Backbone) -> str:
    """The id a PEFT adapter should name: the hub id when known, else the folder."""
    source = Path(backbone.source) / "lamp_source.json"
    if source.is_file():
        return str(json.loads(source.read_text())["hub_id"])
    return backbone.source

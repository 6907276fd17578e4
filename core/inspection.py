"""Inside a tuned prompt: what the backbone sees and how training moved it, read from an artifact plus the
backbone's input embedding table and tokenizer (`lamp inspect`, the Jobs tab's "Inside the prompt").

    nearest tokens  each pooled prompt vector (l/p of them) against every vocabulary embedding (special and
                    added tokens left out) by cosine similarity, for the pooled prompt at initialisation and trained
    norms           the prompt's per-token L2 norm beside the vocabulary's: every token, and the 5,000 common
                    tokens the initial prompt is drawn from (mean and percentiles)
    C               the compressed outer product before pooling (l, d): LAMP U diag(Q)^2 V^T, prompt tuning P,
                    DPT A B
    drift           ||X - X0||_F / ||X0||_F for C and for the pooled prompt, at each evaluation snapshot and trained
    Q               LAMP's Q at initialisation, at each snapshot and trained

The trained prompt is the artifact's: the best evaluation's, which is also one of the snapshots.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.artifact import Artifact, load_artifact
from core.errors import ConfigError
from core.methods import LampConfig, MethodConfig, prompt_module
from core.vocab import common_token_ids
from core.warm_start import relative_distance

PERCENTILES = (5, 25, 50, 75, 95)


@dataclass(frozen=True)
class Neighbour:
    token_id: int
    token: str
    """The token decoded to text (a leading space shows as a space)."""
    cosine: float


@dataclass(frozen=True)
class Stage:
    """The prompt at one point of training: initialisation, an evaluation snapshot, or the trained result."""

    step: int
    label: str
    drift_dense: float
    """||C - C0||_F / ||C0||_F."""
    drift_pooled: float
    """The same for the pooled prompt P' the backbone sees."""
    mean_norm: float
    """Mean per-token L2 norm of the pooled prompt."""
    q: list[float] | None
    """LAMP's Q (r values); None for the other methods."""


@dataclass(frozen=True)
class Inspection:
    artifact: str
    method: dict[str, Any]
    model: str
    hidden_size: int
    steps: int
    best_step: int
    top_k: int
    nearest_init: list[list[Neighbour]]
    """Per pooled prompt vector, its top-k vocabulary tokens at initialisation."""
    nearest_trained: list[list[Neighbour]]
    norms_init: list[float]
    """Per pooled prompt vector, its L2 norm at initialisation."""
    norms_trained: list[float]
    vocab_norms: dict[str, dict[str, float]]
    """"all" tokens and the "common" ones: mean and percentiles (p5 ... p95) of the embedding norms."""
    norm_ratio: float
    """Mean trained per-token norm over the common tokens' mean norm (as the training events report it)."""
    drift_dense: float
    drift_pooled: float
    history: list[Stage]
    """Initialisation, each evaluation snapshot, then the trained prompt (the best evaluation's)."""
    origin: dict[str, Any] | None
    """The manifest's `init_from`: the run this one was warm-started from (None: from the vocabulary)."""
    dense: torch.Tensor = field(repr=False)
    """C (l, d) trained, float32: for a heatmap; left out of to_json."""
    offset_norm: float | None = None
    """DePT: the trained input offset's mean per-position L2 norm (what it adds to each input token's embedding);
    None for the other methods."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("dense")
        data["dense_shape"] = list(self.dense.shape)
        return data


def nearest_tokens(vectors: torch.Tensor, table: torch.Tensor, tokenizer: Any, k: int = 5,
                   skip: list[int] | None = None) -> list[list[Neighbour]]:
    """For each row of `vectors` (n, d), the k rows of the embedding `table` (vocab, d) of highest cosine
    similarity, best first; the ids in `skip` are never picked."""
    a = torch.nn.functional.normalize(vectors.detach().double(), dim=-1)
    b = torch.nn.functional.normalize(table.detach().double(), dim=-1)
    sims = a @ b.T  # (n, vocab)
    if skip:
        sims[:, torch.tensor(skip)] = -torch.inf
    cos, ids = sims.topk(min(k, table.shape[0] - len(set(skip or []))), dim=-1)  # (n, k)
    return [[Neighbour(int(i), tokenizer.decode([int(i)]), float(c)) for c, i in zip(row_c, row_i, strict=True)]
            for row_c, row_i in zip(cos.tolist(), ids.tolist(), strict=True)]


def norm_stats(norms: torch.Tensor) -> dict[str, float]:
    """Mean and percentiles of a vector of norms."""
    x = norms.detach().double()
    stats = {"mean": float(x.mean())}
    stats.update({f"p{p}": float(torch.quantile(x, p / 100)) for p in PERCENTILES})
    return stats


def special_ids(tokenizer: Any) -> list[int]:
    """Special and added tokens (SmolLM2's <|im_start|>, <file_sep>, ...): markers whose barely trained, nearly
    equal embeddings sit close to any averaged vector, so nearest-token lists leave them out."""
    ids = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}).keys())
    return sorted(ids)


def vocab_norms(table: torch.Tensor, common_ids: list[int]) -> dict[str, dict[str, float]]:
    norms = table.detach().float().norm(dim=-1)  # (vocab,)
    return {"all": norm_stats(norms), "common": norm_stats(norms[torch.tensor(common_ids)])}


def _prompts(config: MethodConfig, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(C (l, d), pooled P' (l/p, d)) of a method's parameters."""
    module = prompt_module(config, params)
    with torch.no_grad():
        return module.dense().detach().float(), module().detach().float()


def _stage(step: int, label: str, config: MethodConfig, params: dict[str, torch.Tensor],
           start: tuple[torch.Tensor, torch.Tensor]) -> Stage:
    dense, pooled = _prompts(config, params)
    q = params["q"].float().tolist() if isinstance(config, LampConfig) else None
    return Stage(step, label, relative_distance(dense, start[0]), relative_distance(pooled, start[1]),
                 float(pooled.norm(dim=-1).mean()), q)


def inspect_prompt(artifact: Artifact, table: torch.Tensor, tokenizer: Any, common_ids: list[int],
                   top_k: int = 5) -> Inspection:
    """Everything `lamp inspect` shows, from the artifact and the backbone's embedding table (vocab, d)."""
    config = artifact.method
    trained = artifact.params()
    init = artifact.init_params() or trained  # every artifact this version writes has init_params
    start = _prompts(config, init)
    dense, pooled = _prompts(config, trained)
    if pooled.shape[1] != table.shape[1]:
        raise ConfigError(f"the prompt has width {pooled.shape[1]} but the embedding table's is {table.shape[1]}: "
                          "inspect it on a model of the same hidden size")
    manifest = artifact.manifest
    best = int(manifest.get("best_step", manifest.get("steps", 0)))
    history = [_stage(0, "init", config, init, start)]
    history += [_stage(step, f"step {step}", config, params, start) for step, params in artifact.snapshots()]
    history.append(_stage(best, f"trained (best, step {best})", config, trained, start))
    vocab = vocab_norms(table, common_ids)
    skip = [i for i in special_ids(tokenizer) if i < table.shape[0]]
    return Inspection(
        artifact=str(artifact.path), method=manifest["spec"]["method"], model=manifest["model"]["id"],
        hidden_size=int(table.shape[1]), steps=int(manifest.get("steps", 0)), best_step=best, top_k=top_k,
        nearest_init=nearest_tokens(start[1], table, tokenizer, top_k, skip),
        nearest_trained=nearest_tokens(pooled, table, tokenizer, top_k, skip),
        norms_init=start[1].norm(dim=-1).tolist(), norms_trained=pooled.norm(dim=-1).tolist(),
        vocab_norms=vocab, norm_ratio=float(pooled.norm(dim=-1).mean()) / vocab["common"]["mean"],
        drift_dense=relative_distance(dense, start[0]), drift_pooled=relative_distance(pooled, start[1]),
        history=history, origin=manifest.get("init_from"), dense=dense,
        offset_norm=None if (offset := artifact.offset()) is None else float(offset.norm(dim=-1).mean()),
    )


def _embedding_file_tensor(source: str) -> torch.Tensor | None:
    """The input embedding table read alone from a local folder's safetensors (None if it is not laid out so)."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    folder = Path(source)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files: dict[str, str] = json.loads(index.read_text())["weight_map"]
    elif (folder / "model.safetensors").is_file():
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            files = dict.fromkeys(f.keys(), "model.safetensors")
    else:
        return None
    config = AutoConfig.from_pretrained(source)
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    with torch.device("meta"):  # only the parameter names: no weights are built
        model = auto.from_config(config)
    weight = model.get_input_embeddings().weight
    names = [n for n, p in model.named_parameters(remove_duplicate=False) if p is weight]
    for name in names:
        if name in files:
            with safe_open(str(folder / files[name]), "pt") as f:
                return f.get_tensor(name).float()
    return None


def load_vocabulary(model: str) -> tuple[torch.Tensor, Any]:
    """(input embedding table (vocab, d) float32, tokenizer) of a backbone: from its safetensors alone when it is a
    local folder, else through the shared backbone cache on the CPU."""
    from transformers import AutoTokenizer

    from core.backbone import resolve_model_source

    source = resolve_model_source(model)
    table = _embedding_file_tensor(source) if Path(source).is_dir() else None
    if table is not None:
        return table, AutoTokenizer.from_pretrained(source)
    from core.inference import cached_backbone
    from core.spec import ModelConfig

    backbone = cached_backbone(ModelConfig(model), torch.device("cpu"))
    return backbone.embedding_table().cpu(), backbone.tokenizer


def inspect_artifact(path: str | Path, top_k: int = 5, model: str | None = None) -> Inspection:
    """Inspect an artifact directory on the backbone it was trained on (or `model`, of the same hidden size)."""
    artifact = load_artifact(path)
    table, tokenizer = load_vocabulary(model or artifact.spec.model.name)
    return inspect_prompt(artifact, table, tokenizer, common_token_ids(tokenizer), top_k)


def _tokens(row: list[Neighbour]) -> str:
    return ", ".join(f"{n.token!r} {n.cosine:.2f}" for n in row)


def format_text(ins: Inspection) -> str:
    """The inspection as lines for a terminal (`lamp inspect` without --json)."""
    m = ins.method
    knobs = " ".join(f"{k[0]}={m[k]}" for k in ("length", "rank", "pool", "positions") if k in m)
    v, c = ins.vocab_norms["all"], ins.vocab_norms["common"]
    mean, mean_init = (sum(n) / len(n) for n in (ins.norms_trained, ins.norms_init))
    lines = [f"{ins.artifact}: {m['name']} {knobs} on {ins.model} (d={ins.hidden_size}), trained {ins.steps} steps, "
             f"kept step {ins.best_step}"]
    if ins.origin:
        lines.append(f"warm start from {ins.origin['artifact']} ({ins.origin['method']['name']} on "
                     f"{ins.origin['model']}, task {ins.origin['task']})")
    lines += [
        f"per-token norm of the pooled prompt: trained {mean:.2f} (init {mean_init:.2f}), {ins.norm_ratio:.2f}x the "
        "common tokens' mean",
        f"vocabulary norms: all mean {v['mean']:.2f} (p5 {v['p5']:.2f}, p50 {v['p50']:.2f}, p95 {v['p95']:.2f}); "
        f"5,000 common mean {c['mean']:.2f} (p5 {c['p5']:.2f}, p50 {c['p50']:.2f}, p95 {c['p95']:.2f})",
        f"drift from init (relative Frobenius): C {ins.drift_dense:.3f}, pooled prompt {ins.drift_pooled:.3f}",
        *([f"input offset A B: mean per-position norm {ins.offset_norm:.3f}, {ins.offset_norm / c['mean']:.2f}x the "
           "common tokens' mean (added to the input's first token embeddings)"] if ins.offset_norm is not None
          else []),
        "",
        f"  {'over training':>26s}  {'drift C':>7s}  {'drift pooled':>12s}  {'mean norm':>9s}"
        + ("  Q" if ins.history[0].q is not None else ""),
    ]
    for s in ins.history:
        q = "  " + " ".join(f"{x:.3f}" for x in s.q) if s.q is not None else ""
        lines.append(f"  {s.label:>26s}  {s.drift_dense:7.3f}  {s.drift_pooled:12.3f}  {s.mean_norm:9.3f}{q}")
    lines += ["", f"nearest tokens by cosine (top {ins.top_k}) of each pooled prompt vector, init -> trained:"]
    for i, (before, after) in enumerate(zip(ins.nearest_init, ins.nearest_trained, strict=True)):
        lines.append(f"  {i:3d}  {_tokens(before)}")
        lines.append(f"    -> {_tokens(after)}")
    return "\n".join(lines)

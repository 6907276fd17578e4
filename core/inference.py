"""Answering with a trained prompt: `lamp predict` and the playground."""

from __future__ import annotations

import math
import string
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.artifact import Artifact, load_artifact
from core.backbone import Backbone, load_backbone, resolve_device
from core.batching import Codec
from core.errors import ConfigError
from core.scoring import generate, rank_candidates
from core.serving import Lane, PromptKV, Query, generate_mixed, rank_mixed
from core.spec import ModelConfig

_CACHE: OrderedDict[tuple[str, str, str, str], Backbone] = OrderedDict()
CACHE_SIZE = 2
_LOAD_LOCK = threading.RLock()


def cached_backbone(model: ModelConfig, device: torch.device) -> Backbone:
    """Frozen backbones are shared between prompts; the least recently used is dropped past CACHE_SIZE. One load
    at a time (threads of a server asking for the same model at once get the one copy)."""
    key = (model.name, model.dtype, model.quantize, str(device))
    with _LOAD_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        backbone = load_backbone(model, device)
        _CACHE[key] = backbone
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
        return backbone


def template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def render_source(template: str, text: str | None = None, fields: dict[str, str] | None = None) -> str:
    """The model input for a person's text: a one-field template takes `text`; others need every field."""
    names = template_fields(template)
    values = dict(fields or {})
    if text is not None:
        if len(names) != 1 and not values:
            raise ConfigError(f"this task's input has fields {', '.join(names)}: give each one "
                              f"(--field {names[0]}=...) or the whole input with --raw")
        if len(names) == 1:
            values[names[0]] = text
    missing = [n for n in names if n not in values]
    if missing:
        raise ConfigError(f"missing field(s) {', '.join(missing)} for template {template!r}")
    return template.format_map(values)


@dataclass(frozen=True)
class Prediction:
    source: str
    answer: str
    """The chosen label word (ranking) for classification, else the generated text."""
    generated: str
    scores: dict[str, float] = field(default_factory=dict)
    """Label word -> probability among the label words (softmax of their log-likelihoods)."""


class Predictor:
    """A trained prompt on its frozen backbone."""

    def __init__(self, artifact: Artifact, backbone: Backbone) -> None:
        self.artifact = artifact
        self.backbone = backbone
        task = artifact.manifest["task"]
        self.template: str = task["template"] or "{text}"
        self.label_words = artifact.label_words
        spec = artifact.spec
        self.codec = Codec.for_backbone(backbone, task["answer_cue"], spec.train.max_length)
        self.prompt = artifact.prompt().to(backbone.device)
        offset = artifact.offset()
        self.offset = None if offset is None else offset.to(backbone.device)
        """What the method adds to the input's own token embeddings (DePT), or None."""
        manifest = Path(artifact.path) / "lamp_artifact.json"
        self.key = (str(artifact.path), manifest.stat().st_mtime_ns if manifest.is_file() else 0,
                    str(backbone.device))
        """Names this prompt in a PromptKV cache: the artifact and its version, on this device."""
        if self.prompt.shape[1] != backbone.hidden_size:
            raise ConfigError(f"the prompt has width {self.prompt.shape[1]} but the model's hidden size is "
                              f"{backbone.hidden_size}")

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", model: str | None = None) -> Predictor:
        artifact = load_artifact(path)
        return cls(artifact, cached_backbone(_model_config(artifact, model), resolve_device(device)))

    def predict(self, sources: list[str], *, use_prompt: bool = True, max_new_tokens: int = 16) -> list[Prediction]:
        """Answers for model inputs (already rendered with the template); `use_prompt=False` is the bare model."""
        prompt, offset = (self.prompt, self.offset) if use_prompt else (None, None)
        texts = generate(self.backbone, prompt, self.codec, sources, max_new_tokens=max_new_tokens, offset=offset)
        if self.label_words is None:
            return [Prediction(s, g, g) for s, g in zip(sources, texts, strict=True)]
        words = self.label_words
        scores = rank_candidates(self.backbone, prompt, self.codec, sources, [words] * len(sources), offset=offset)
        return [_prediction(src, gen, words, row) for src, gen, row in zip(sources, texts, scores, strict=True)]


def _model_config(artifact: Artifact, model: str | None) -> ModelConfig:
    """The backbone an artifact was trained on, or `model` (another of the same hidden size) in its dtype."""
    spec = artifact.spec
    return spec.model if model is None else ModelConfig(model, spec.model.dtype, spec.model.quantize)


def _prediction(source: str, generated: str, words: Sequence[str] | None, scores: Sequence[float]) -> Prediction:
    """The answer: the most likely label word (softmax over the words' log-likelihoods), else the generated text."""
    if not words:
        return Prediction(source, generated, generated)
    top = max(scores)
    z = sum(math.exp(s - top) for s in scores)
    probs = {w: math.exp(s - top) / z for w, s in zip(words, scores, strict=True)}
    return Prediction(source, max(probs, key=probs.__getitem__), generated, probs)


@dataclass(frozen=True)
class Ask:
    """One answer wanted from a MultiPredictor."""

    prompt: int
    """Which of its artifacts."""
    source: str
    """The model input, rendered with that artifact's template."""
    bare: bool = False
    """The bare model's answer instead, through that artifact's answer cue and label words."""


class MultiPredictor:
    """Several trained prompts on one frozen backbone, answered together: the rows of a batch read different
    prompts (core.serving), so K prompts cost one pass over the inputs instead of K."""

    def __init__(self, predictors: Sequence[Predictor]) -> None:
        if not predictors:
            raise ConfigError("give at least one artifact")
        self.predictors = list(predictors)
        self.backbone = predictors[0].backbone
        apart = [str(p.artifact.path) for p in predictors if p.backbone is not self.backbone]
        if apart:
            raise ConfigError(f"{', '.join(apart)}: not on the same loaded backbone as {predictors[0].artifact.path}")

    @classmethod
    def load(cls, paths: Sequence[str | Path], device: str = "auto", model: str | None = None) -> MultiPredictor:
        """One backbone for every artifact: all must name the same model, dtype and quantization (or `model`)."""
        artifacts = [load_artifact(p) for p in paths]
        configs = [_model_config(a, model) for a in artifacts]
        if len(set(configs)) > 1:
            listing = "; ".join(f"{a.path}: {c.name} ({c.dtype}{', 4-bit' if c.quantize == '4bit' else ''})"
                                for a, c in zip(artifacts, configs, strict=True))
            raise ConfigError(f"these artifacts were trained on different backbones, so they cannot share one: "
                              f"{listing}. Answer them in separate calls, or give --model to read every prompt "
                              "with one backbone of the same hidden size")
        backbone = cached_backbone(configs[0], resolve_device(device))
        return cls([Predictor(a, backbone) for a in artifacts])

    def predict(self, sources: Sequence[Sequence[str]], *, bare: bool = False, sequential: bool = False,
                max_new_tokens: int = 16) -> list[list[Prediction]]:
        """`sources[k]`: the inputs for the k-th artifact (rendered with its template). Answers [k][j]."""
        if len(sources) != len(self.predictors):
            raise ConfigError(f"{len(sources)} lists of inputs for {len(self.predictors)} artifacts")
        asks = [Ask(k, s, bare) for k, group in enumerate(sources) for s in group]
        flat = iter(self.answer(asks, sequential=sequential, max_new_tokens=max_new_tokens))
        return [[next(flat) for _ in group] for group in sources]

    def answer(self, asks: Sequence[Ask], *, sequential: bool = False, max_new_tokens: int = 16,
               generate: bool = True, kv_cache: PromptKV | None = None, batch_size: int = 32) -> list[Prediction]:
        """A Prediction per ask, the same as each artifact's Predictor.predict gives. Batched: one pass of mixed
        batches for the generations and one for the label scores; `sequential`: one prompt after another.
        `generate=False` ranks the label words only (the generated text is left empty); `kv_cache` keeps each
        prompt's keys and values between calls (a server's)."""
        if sequential:
            return self._one_prompt_at_a_time(asks, max_new_tokens)
        lanes: dict[tuple[int | None, str, int], int] = {}  # bare lanes of artifacts with one codec are one lane
        queries: dict[Query, int] = {}  # the same input for the same lane is answered once
        rows = []
        for ask in asks:
            pred = self.predictors[ask.prompt]
            key = (None if ask.bare else ask.prompt, pred.codec.answer_cue, pred.codec.max_length)
            lane = lanes.setdefault(key, len(lanes))
            rows.append(queries.setdefault(Query(lane, ask.source, pred.label_words or ()), len(queries)))
        lane_list = [Lane(None, self._codec(cue, length)) if k is None else
                     Lane(self.predictors[k].prompt, self._codec(cue, length), self.predictors[k].key,
                          self.predictors[k].offset)
                     for (k, cue, length) in lanes]
        unique = list(queries)
        texts = (generate_mixed(self.backbone, lane_list, unique, max_new_tokens=max_new_tokens, kv_cache=kv_cache,
                                batch_size=min(batch_size, 16)) if generate else [""] * len(unique))
        labelled = [i for i, q in enumerate(unique) if q.candidates]
        ranked = rank_mixed(self.backbone, lane_list, [unique[i] for i in labelled], kv_cache=kv_cache,
                            batch_size=batch_size)
        scores: list[list[float]] = [[] for _ in unique]
        for i, row in zip(labelled, ranked, strict=True):
            scores[i] = row
        return [_prediction(ask.source, texts[r], unique[r].candidates, scores[r])
                for ask, r in zip(asks, rows, strict=True)]

    def _codec(self, cue: str, length: int) -> Codec:
        return next(p.codec for p in self.predictors if (p.codec.answer_cue, p.codec.max_length) == (cue, length))

    def _one_prompt_at_a_time(self, asks: Sequence[Ask], max_new_tokens: int) -> list[Prediction]:
        out: list[Prediction | None] = [None] * len(asks)
        for k, bare in dict.fromkeys((a.prompt, a.bare) for a in asks):
            idx = [i for i, a in enumerate(asks) if (a.prompt, a.bare) == (k, bare)]
            answers = self.predictors[k].predict([asks[i].source for i in idx], use_prompt=not bare,
                                                 max_new_tokens=max_new_tokens)
            for i, p in zip(idx, answers, strict=True):
                out[i] = p
        return [p for p in out if p is not None]

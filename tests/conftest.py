"""Shared fixtures: a private LAMP_HOME, the offline tokenizer, and tiny random models built from configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

HIDDEN = 32


@pytest.fixture(scope="session", autouse=True)
def lamp_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test run gets its own LAMP_HOME; set LAMP_TEST_HOME to reuse a converted default model between runs."""
    home = Path(os.environ.get("LAMP_TEST_HOME") or tmp_path_factory.mktemp("lamp-home"))
    os.environ["LAMP_HOME"] = str(home)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return home


@pytest.fixture(scope="session")
def default_dir(lamp_home: Path) -> Path:
    """The offline default model converted into LAMP_HOME (its tokenizer also serves the tiny models)."""
    from core.backbone import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="session")
def gemma_dir(lamp_home: Path) -> Path:
    """The second offline family, Gemma 3 270M (base), converted into LAMP_HOME from its GGUF parts (about a minute
    the first time)."""
    from core.backbone import offline_model_dir

    return offline_model_dir("gemma3-270m")


def _save_tiny(model: torch.nn.Module, tokenizer_dir: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    model.save_pretrained(out)  # type: ignore[operator]
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(default_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, pad_token_id=2, eos_token_id=2, bos_token_id=1,
                         initializer_range=0.2)
    return _save_tiny(LlamaForCausalLM(config), default_dir, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_t5_dir(default_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=49152, d_model=HIDDEN, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                      num_heads=4, pad_token_id=2, eos_token_id=2, decoder_start_token_id=2)  # type: ignore[call-arg]
    return _save_tiny(T5ForConditionalGeneration(config), default_dir, tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(default_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=49152, n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=512,
                        pad_token_id=2, eos_token_id=2, bos_token_id=1)
    return _save_tiny(GPT2LMHeadModel(config), default_dir, tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_gemma3_dir(default_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma 3's layout: a local layer (sliding window of 64) then a global one, one key/value head, embeddings
    scaled by sqrt(d) on the way in."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=49152, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                              sliding_window=64, layer_types=["sliding_attention", "full_attention"],
                              max_position_embeddings=512, pad_token_id=2, eos_token_id=2, bos_token_id=1,
                              initializer_range=0.2)
    return _save_tiny(Gemma3ForCausalLM(config), default_dir, tmp_path_factory.mktemp("tiny-gemma3"))


@pytest.fixture(scope="session")
def tiny_dirs(tiny_llama_dir: Path, tiny_t5_dir: Path) -> dict[str, Path]:
    return {"llama": tiny_llama_dir, "t5": tiny_t5_dir}


@pytest.fixture()
def sentiment_csv(tmp_path: Path) -> Path:
    """A small classification file in a user's own layout."""
    good = ["a joy to watch", "wonderful acting", "I loved it", "great fun", "a moving story", "brilliant"]
    bad = ["a dull mess", "boring and long", "I hated it", "awful script", "a waste of time", "terrible"]
    lines = ["review,verdict"]
    for i in range(4):
        lines += [f'"{g} {i}",good' for g in good] + [f'"{b} {i}",bad' for b in bad]
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def access(tmp_path_factory: pytest.TempPathFactory) -> object:
    """What a dashboard user may name in tests: its own uploads, and (as `lamp serve --allow-dir` would offer)
    every folder the tests make, the tiny models among them."""
    from app.access import Access

    return Access(owner="user:test", allowed_dirs=(tmp_path_factory.getbasetemp().resolve(),))


@pytest.fixture()
def gradio_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Gradio's upload folder (a server points GRADIO_TEMP_DIR at $LAMP_HOME/gradio-tmp)."""
    folder = tmp_path / "gradio-upload"
    folder.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder

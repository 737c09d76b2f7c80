"""Pre-flight: a look inside the files a run will read, before its run directory is created.

``validate_train`` checks the config on its own (values, combinations, that the paths exist).
This goes one step further, as far as it can cheaply (file names, a ``.npy`` header, a label
file's record count), for mistakes that would otherwise stop the run only after its directory,
log and config were written, or mid-way through setting it up:

* the records of the splits the stage reads are where ``data.layout`` says: a GFSLT labels folder
  that holds no ``labels.train``, or a release folder that is not one; when the folder looks like
  the other layout, the message says which ``data.layout=`` to use;
* ``selection.pair_scores`` is a whole N x N matrix over the train split (its header only,
  ``data/npy_header.py``; the sampler reads the values).

Runs on every rank: each raises the same error, so none waits at a collective for another.
"""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError, DataConfig, Layout, SelectionName, StageName, TrainConfig
from ..data import official
from ..data.labels import DataError, labels_path, read_labels
from ..data.npy_header import read_npy_header
from ..data.scan import scan_data


def preflight(cfg: TrainConfig) -> None:
    """Raise DataError / ConfigError (naming the key and the file) before any work starts."""
    splits = _splits_read(cfg)
    check_records(cfg.data, splits)
    check_pair_scores(cfg)
    # Every clip file of those splits, from its header alone (seconds at PHOENIX-2014-T scale):
    # all bad files listed at once, an error (or one warning in skip mode) before any training.
    width = cfg.model.sign_embedding.feature_dim
    scan_data(cfg.data, splits, feature_dim=width).enforce(cfg.data.on_bad_sample)


def _splits_read(cfg: TrainConfig) -> tuple[str, ...]:
    """The splits a stage builds: train, and dev when it evaluates (or, in stage 1, retrieves)."""
    s = cfg.stage
    retrieval = s.name is StageName.contrastive and bool(s.retrieval_every)
    return ("train", "dev") if s.eval_every > 0 or retrieval else ("train",)


# -------------------------------------------------------------------------------------- records
def _looks_official(name: str, folder: Path) -> bool:
    if name == official.PHOENIX14T:
        rel = official.PHOENIX_ANNOTATIONS
        return (folder / rel).is_dir() or (folder / "PHOENIX-2014-T" / rel).is_dir()
    if name == official.CSL_DAILY:
        return (folder / official.CSL_LABELS / official.CSL_SPLIT_FILE).is_file()
    return False


def _looks_gfslt(folder: Path) -> bool:
    return labels_path(folder, "train").is_file()


def check_records(d: DataConfig, splits: tuple[str, ...]) -> None:
    """The label or release files of ``splits`` exist for ``data.layout`` (synthetic: generated)."""
    if d.layout is Layout.gfslt:
        key = "data.labels_dir" if d.labels_dir else "data.root"
        folder = Path(d.labels_dir or d.root).expanduser()
        missing = [
            labels_path(folder, s).name for s in splits if not labels_path(folder, s).is_file()
        ]
        if missing:
            hint = ""
            if _looks_official(d.name, folder):
                hint = (
                    "; it looks like the official release: use data.layout=official "
                    f"data.root={folder}"
                )
            raise DataError(
                f"{key}={folder}: no GFSLT-style label file {', '.join(missing)} (the gfslt "
                f"layout reads labels.{{train,dev,test}} from this folder){hint}"
            )
    elif d.layout is Layout.official:
        _check_release(d, splits)


def _check_release(d: DataConfig, splits: tuple[str, ...]) -> None:
    if d.name not in (official.PHOENIX14T, official.CSL_DAILY):
        raise DataError(
            f"data.name={d.name!r} has no official layout (expected {official.PHOENIX14T} or "
            f"{official.CSL_DAILY}); use data.layout=gfslt"
        )
    if not d.root:
        hint = " (data.labels_dir is set: for labels.* use data.layout=gfslt)" * bool(d.labels_dir)
        raise DataError(
            f"data.root is not set: {d.name} (official layout) needs the release folder{hint}"
        )
    root = Path(d.root).expanduser()
    hint = ""
    if _looks_gfslt(root):
        hint = f"; it holds GFSLT-style labels.*: use data.layout=gfslt data.labels_dir={root}"
    try:
        if d.name == official.PHOENIX14T:
            release = official.phoenix_root(root)
            needed = [official.phoenix_corpus_path(release, s) for s in splits]
        else:
            labels = root / official.CSL_LABELS
            needed = [labels / official.CSL_SPLIT_FILE, labels / official.CSL_ANNOTATION_FILE]
            if not any(p.is_file() for p in needed):
                raise DataError(f"data.root={root}: not a CSL-Daily release (no {needed[0]})")
        for path in needed:
            if not path.is_file():
                raise DataError(f"data.root={root}: {path} is missing")
    except DataError as e:
        raise DataError(f"{e}{hint}") from e


def train_split_size(d: DataConfig) -> int:
    """The number of train records, read cheaply: the synthetic config, the label file, the
    corpus CSV (PHOENIX) or the split list (CSL-Daily: the annotation pickle is not loaded)."""
    if d.layout is Layout.synthetic:
        return d.synthetic.num_train
    if d.layout is Layout.gfslt:
        return len(read_labels(labels_path(Path(d.labels_dir or d.root).expanduser(), "train")))
    root = Path(d.root).expanduser()
    if d.name == official.PHOENIX14T:
        path = official.phoenix_corpus_path(official.phoenix_root(root), "train")
        return len(official.read_phoenix_corpus(path, "train"))
    split_file = root / official.CSL_LABELS / official.CSL_SPLIT_FILE
    return sum(s == "train" for s in official.read_csl_split(split_file).values())


# ----------------------------------------------------------------------------------- pair scores
def check_pair_scores(cfg: TrainConfig) -> None:
    """``selection.pair_scores`` (selection=trajectory, stage 1): N x N over the train split."""
    sel = cfg.selection
    if sel.name is not SelectionName.trajectory or cfg.stage.name is not StageName.contrastive:
        return
    path = Path(sel.pair_scores).expanduser()
    key = "selection.pair_scores"
    try:
        header = read_npy_header(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{key}: cannot read {path} as a .npy file: {e}") from e
    shape = header.shape
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ConfigError(f"{key}: {path} holds shape {shape}, not N x N")
    if header.truncated:
        raise ConfigError(
            f"{key}: {path} is truncated ({header.file_size} bytes, its header promises "
            f"{header.data_offset + header.data_bytes})"
        )
    n = train_split_size(cfg.data)
    if shape[0] != n:
        raise ConfigError(
            f"{key}: {path} scores N={shape[0]} samples but the train split of "
            f"data={cfg.data.name} has {n}; it belongs to another split or dataset version"
        )

"""Few-shot image sets: a `shots/<class>/*.jpg` folder, a seeded hold-out, or a Dassl/CoOp split.

Everything is sorted so that labels and sample order are the same on every machine. Files that are
not images are skipped and reported (never raised); unreadable images are skipped and listed, or
raise with `strict=True`. Problems that make the set unusable (no folder, one class, an empty class,
mismatched evaluation classes) raise one-line `DataError`s that name the fix.
"""

from __future__ import annotations

import json
import random
import re
import stat
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edge_tune.errors import DataError

#: What `fit`, `eval` and `predict` all read (a GIF or TIFF: its first frame; HEIC/HEIF through the
#: optional `heif` extra, AVIF through Pillow's own decoder).
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".webp",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".heic",
    ".heif",
    ".avif",
)
CLASSNAMES_FILE = "classnames.json"
#: CoOp's ImageNet layout: one "<folder> <class name>" line per class (e.g. "n01440764 tench").
CLASSNAMES_TXT = "classnames.txt"
#: Folder names that read as a WordNet id rather than a word ("n01440764").
WNID = re.compile(r"n\d{8}")
#: Class names that are Caltech's catch-all folders rather than a class (CoOp leaves them out).
BACKGROUND = re.compile(r"(\d+\.)?(background( google)?|clutter)", re.IGNORECASE)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class Skipped:
    """A file left out of a dataset, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class Dataset:
    classnames: list[str]
    samples: list[Sample]
    root: Path
    skipped: tuple[Skipped, ...] = ()
    notes: tuple[str, ...] = ()
    #: sha256 of the sample files hashed while loading (path -> hex), so a fit does not read them again
    digests: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def labels(self) -> np.ndarray:
        return np.array([sample.label for sample in self.samples], dtype=np.int64)

    def counts(self) -> list[int]:
        """Images per class, in label order."""
        counts = [0] * len(self.classnames)
        for sample in self.samples:
            counts[sample.label] += 1
        return counts

    def report(self, limit: int = 3) -> str | None:
        """One line about what was skipped or noticed, or None when nothing was."""
        return describe_skipped(self.skipped, limit=limit, notes=self.notes)


def class_name_from_folder(folder: str) -> str:
    """`golden_retriever` and `golden-retriever` both read as "golden retriever"."""
    return " ".join(folder.replace("_", " ").replace("-", " ").split())


def walk_files(folder: Path) -> list[Path]:
    """Every file under `folder`, sub-folders included, in sorted order; hidden files and folders
    (a name starting with ".") left out. Symlinked folders are not entered (no loops)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if not p.is_dir() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def load_shots(root: str | Path, *, strict: bool = False) -> Dataset:
    """Read `root/<class>/**/*.{jpg,png,...}` (IMAGE_EXTENSIONS, sub-folders of a class included);
    every image is decoded once to check it."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            "data folder does not exist" if not root.exists() else "not a folder",
            path=root,
            hint="Pass a folder holding one sub-folder of photos per class",
        )
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(
            "no class folders found",
            path=root,
            hint="Put the photos in one sub-folder per class: <data>/<class name>/*.jpg",
        )
    names = _read_classnames(root, [f.name for f in folders])
    if len(folders) < 2:
        raise DataError(
            f"only one class ({names[0]!r}); a classifier needs at least 2",
            path=root,
            hint="Add a folder of photos for each other class",
        )
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    for label, folder in enumerate(folders):
        found = 0
        for path in walk_files(folder):
            problem = image_problem(path)
            if problem is not None:
                if strict and not problem.startswith("not an image"):
                    raise DataError(
                        problem, path=path, hint="Remove or replace it, or run without --strict"
                    )
                skipped.append(Skipped(path, problem))
                continue
            samples.append(Sample(path, label))
            found += 1
        if found == 0:
            raise DataError(
                f"class folder {folder.name!r} holds no readable images",
                path=folder,
                hint=f"Add {', '.join(IMAGE_EXTENSIONS)} photos or remove the folder",
            )
    digests: dict[Path, str] = {}
    notes = (
        _linked_class_folders(folders, names)
        + _names_that_are_not_words(names, root)
        + _identical_across_classes(samples, names, digests)
    )
    return Dataset(
        classnames=names,
        samples=samples,
        root=root,
        skipped=tuple(skipped),
        notes=tuple(notes),
        digests=digests,
    )


def _names_that_are_not_words(names: list[str], root: Path) -> list[str]:
    """Warnings for class names CLIP cannot read as words: WordNet ids (ImageNet's folders) and
    Caltech's background folder."""
    notes = []
    ids = [n for n in names if WNID.fullmatch(n)]
    if ids:
        notes.append(
            f"warning: {len(ids)} class name(s) look like WordNet ids ({ids[0]!r}); CLIP reads "
            f"words: add {root / CLASSNAMES_TXT} with lines like 'n01440764 tench'"
        )
    background = [n for n in names if BACKGROUND.fullmatch(n)]
    if background:
        notes.append(
            f"warning: class {background[0]!r} looks like Caltech's background folder, which "
            "CoOp leaves out; remove it unless it is a class you mean"
        )
    return notes


def _linked_class_folders(folders: list[Path], names: list[str]) -> list[str]:
    """A warning for each class folder that is the same folder as an earlier one (a symlink)."""
    seen: dict[Path, str] = {}
    notes = []
    for folder, name in zip(folders, names):
        real = folder.resolve()
        if real in seen:
            notes.append(
                f"warning: class {name!r} is the same folder as {seen[real]!r} (a link); "
                "both hold the same photos"
            )
        seen.setdefault(real, name)
    return notes


def _identical_across_classes(
    samples: list[Sample], names: list[str], digests: dict[Path, str]
) -> list[str]:
    """A warning when one image file's bytes appear under two classes. Only files of equal size
    are hashed, so a large evaluation folder is not read twice; their digests go into `digests`."""
    from edge_tune.features import file_digest  # the cache's key: the same bytes, the same image

    by_size: dict[int, list[Sample]] = {}
    for sample in samples:
        by_size.setdefault(sample.path.stat().st_size, []).append(sample)
    clashes = []
    for group in by_size.values():
        if len({s.label for s in group}) < 2:
            continue
        by_digest: dict[str, list[Sample]] = {}
        for sample in group:
            digests[sample.path] = file_digest(sample.path)
            by_digest.setdefault(digests[sample.path], []).append(sample)
        clashes += [same for same in by_digest.values() if len({s.label for s in same}) > 1]
    if not clashes:
        return []
    first = clashes[0]
    where = " and ".join(f"{names[s.label]!r} ({s.path.name})" for s in first[:2])
    more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
    return [f"warning: the same image is in classes {where}{more}; a photo belongs to one class"]


def load_eval(root: str | Path, train: Dataset, *, strict: bool = False) -> Dataset:
    """An evaluation folder with the same classes as `train`, relabelled to train's label order."""
    evaluation = load_shots(root, strict=strict)
    if evaluation.classnames != train.classnames:
        missing = [n for n in train.classnames if n not in evaluation.classnames]
        extra = [n for n in evaluation.classnames if n not in train.classnames]
        if missing or extra:
            parts = ([f"missing {_names(missing)}"] if missing else []) + (
                [f"not in the training data {_names(extra)}"] if extra else []
            )
            raise DataError(
                f"evaluation classes differ from the training classes: {'; '.join(parts)}",
                path=root,
                hint="Use the same class folders (or classnames.json) for both",
            )
        order = {name: i for i, name in enumerate(train.classnames)}
        evaluation = replace(
            evaluation,
            classnames=list(train.classnames),
            samples=[
                Sample(s.path, order[evaluation.classnames[s.label]]) for s in evaluation.samples
            ],
        )
    return evaluation


def load_dassl_split(
    split_json: str | Path, image_root: str | Path | None, *, shots: int = 16, seed: int = 1
) -> tuple[Dataset, Dataset, Dataset]:
    """(train, val, test) from a CoOp `split_zhou_<dataset>.json`, few-shot sampled as Dassl does.

    `image_root=None` looks for the images beside the split file (`split_image_root`).

    Dassl's `generate_fewshot_dataset` groups each split by label in order of appearance and draws
    `random.sample(items, k)` per class from Python's `random` seeded with the run seed: `shots` for
    train, then `min(shots, 4)` for val. A class with fewer images keeps all of them (noted).
    """
    split_json = Path(split_json)
    try:
        split = json.loads(split_json.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(
            "split file not found",
            path=split_json,
            hint="Pass the dataset's split_zhou_<name>.json",
        ) from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(
            f"split file is not valid JSON ({err})",
            path=split_json,
            hint="Re-download the split file",
        ) from err
    if shots < 1:
        raise DataError(
            f"--shots {shots} must be at least 1", path=split_json, hint="Use e.g. --shots 16"
        )
    items = {}
    for part in ("train", "val", "test"):
        rows = split.get(part) if isinstance(split, dict) else None
        if not isinstance(rows, list) or not all(_is_split_row(r) for r in rows):
            raise DataError(
                f"split file lacks a valid {part!r} list of [path, label, classname]",
                path=split_json,
                hint="Use a CoOp/Dassl split_zhou_*.json file",
            )
        items[part] = rows
    if image_root is None:
        rows = items["train"] or items["test"]
        image_root = split_image_root(split_json, rows[0][0] if rows else None)
    image_root = Path(image_root)
    if not image_root.is_dir():
        raise DataError(
            "image root is not a folder",
            path=image_root,
            hint="Pass the dataset's image folder (the paths in the split are relative to it)",
        )
    classnames = _dassl_classnames(items["train"] + items["val"] + items["test"], split_json)
    rng = random.Random(seed)
    train, train_notes = _fewshot(items["train"], shots, rng, classnames)
    val, _ = _fewshot(items["val"], min(shots, 4), rng, classnames)
    datasets = []
    for rows, notes in ((train, train_notes), (val, ()), (items["test"], ())):
        samples = [Sample(image_root / row[0], int(row[1])) for row in rows]
        datasets.append(
            Dataset(classnames=classnames, samples=samples, root=image_root, notes=tuple(notes))
        )
    for sample in datasets[0].samples + datasets[1].samples:
        if not sample.path.is_file():
            raise DataError(
                "image listed in the split is missing",
                path=sample.path,
                hint="Pass the dataset's image folder as the image root",
            )
    return datasets[0], datasets[1], datasets[2]


def split_image_root(split_json: Path, first: str | None) -> Path:
    """The folder a split's relative paths start in, when only the split file is given: the split's
    own folder or one of its sub-folders (CoOp keeps `oxford_pets/split_zhou_OxfordPets.json`
    beside `oxford_pets/images/`), the first where the split's first image (`first`) exists."""
    parent = split_json.parent
    if first is not None:
        subfolders = sorted(p for p in parent.iterdir() if p.is_dir() and p.name[:1] != ".")
        for folder in [parent, *subfolders]:
            if (folder / first).is_file():
                return folder
    raise DataError(
        f"cannot find the split's images beside it (looked for {first!r} in {parent} and its "
        "sub-folders)",
        path=split_json,
        hint="Name the image folder: --data IMAGE_ROOT --split FILE",
    )


def describe_skipped(skipped, *, limit: int = 3, notes=()) -> str | None:
    """'skipped 3 non-image files (a.txt, b.csv, c.md) and 1 unreadable image (x.jpg: …)'."""
    non_images = [s for s in skipped if s.reason.startswith("not an image")]
    unreadable = [s for s in skipped if not s.reason.startswith("not an image")]
    parts = []
    if non_images:
        names = ", ".join(s.path.name for s in non_images[:limit])
        more = ", …" if len(non_images) > limit else ""
        parts.append(
            f"{len(non_images)} non-image file{'s' * (len(non_images) != 1)} ({names}{more})"
        )
    if unreadable:
        names = "; ".join(f"{s.path.name}: {s.reason}" for s in unreadable[:limit])
        more = "; …" if len(unreadable) > limit else ""
        parts.append(
            f"{len(unreadable)} unreadable image{'s' * (len(unreadable) != 1)} ({names}{more})"
        )
    text = f"skipped {' and '.join(parts)}" if parts else ""
    if notes:
        text = "; ".join(([text] if text else []) + list(notes))
    return text or None


def image_problem(path: Path) -> str | None:
    """Why `path` cannot be used as an image (None when it decodes)."""
    from edge_tune.preprocess import open_image

    problem = file_problem(path)
    if problem is not None:
        return problem
    try:
        open_image(path, draft_size=(64, 64))  # JPEGs decode at 1/8 scale: 3x faster, same checks
    except DataError as err:
        return err.message
    return None


def file_problem(path: Path) -> str | None:
    """Why `path` is not an image file, without opening it (None when it may be one). Only a
    regular file is ever opened: a FIFO named `x.png` would block its reader forever."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if stat.S_ISDIR(mode):
        return "not an image (a folder)"
    if not stat.S_ISREG(mode):
        return "not a regular file (a FIFO, socket or device); skipped without opening it"
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image (extension {path.suffix or 'none'!r})"
    return None


def _read_classnames(root: Path, folders: list[str]) -> list[str]:
    """Names from folder names, overridden by `classnames.json` ({folder: name} or a list)."""
    names = [class_name_from_folder(f) for f in folders]
    path = root / CLASSNAMES_FILE
    if not path.exists():
        if (root / CLASSNAMES_TXT).exists():
            return _read_classnames_txt(root / CLASSNAMES_TXT, folders, names)
        return _check_unique(names, folders, root)
    hint = (
        f"Make it a JSON object {{folder: class name}} or a list of {len(folders)} names "
        "in folder order"
    )
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"not valid JSON ({err})", path=path, hint=hint) from err
    if isinstance(mapping, list):
        if len(mapping) != len(folders) or not all(
            isinstance(n, str) and n.strip() for n in mapping
        ):
            raise DataError(
                f"holds {len(mapping)} entries for {len(folders)} class folders",
                path=path,
                hint=hint,
            )
        names = [" ".join(n.split()) for n in mapping]
    elif isinstance(mapping, dict):
        unknown = [k for k in mapping if k not in folders]
        if unknown:
            raise DataError(
                f"names folder(s) that do not exist: {_names(unknown)}", path=path, hint=hint
            )
        bad = [k for k, v in mapping.items() if not isinstance(v, str) or not v.strip()]
        if bad:
            raise DataError(f"empty or non-text class name for {_names(bad)}", path=path, hint=hint)
        names = [
            " ".join(mapping[f].split()) if f in mapping else n
            for f, n in zip(folders, names, strict=True)
        ]
    else:
        raise DataError("must be a JSON object or list", path=path, hint=hint)
    return _check_unique(names, folders, path)


def _read_classnames_txt(path: Path, folders: list[str], names: list[str]) -> list[str]:
    """Names from CoOp's `classnames.txt` ("<folder> <class name>" per line; lines for folders
    that are not here are ignored, as a few-shot folder holds a subset of ImageNet's classes)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(
            f"cannot be read ({err})", path=path, hint="Make it UTF-8 text, one class per line"
        ) from err
    mapping = {}
    for number, line in enumerate(lines, 1):
        folder, _, name = line.strip().partition(" ")
        if not folder or folder.startswith("#"):
            continue
        if not name.strip():
            raise DataError(
                f"line {number} names folder {folder!r} but no class",
                path=path,
                hint="Write each line as '<folder> <class name>', e.g. 'n01440764 tench'",
            )
        mapping[folder] = " ".join(name.split())
    names = [mapping.get(f, n) for f, n in zip(folders, names, strict=True)]
    return _check_unique(names, folders, path)


def _check_unique(names: list[str], folders: list[str], where: Path) -> list[str]:
    seen: dict[str, str] = {}
    for name, folder in zip(names, folders, strict=True):
        if not name:
            raise DataError(
                f"folder {folder!r} gives an empty class name",
                path=where,
                hint="Rename the folder or name the class in classnames.json",
            )
        if name.casefold() in seen:
            raise DataError(
                f"folders {seen[name.casefold()]!r} and {folder!r} give the same class name "
                f"{name!r}",
                path=where,
                hint="Rename one, or set names in classnames.json",
            )
        seen[name.casefold()] = folder
    return names


def _by_label(samples: list[Sample]) -> dict[int, list[Sample]]:
    groups: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.label].append(sample)
    return groups


def _is_split_row(row) -> bool:
    return (
        isinstance(row, list)
        and len(row) >= 3
        and isinstance(row[0], str)
        and isinstance(row[1], int)
        and not isinstance(row[1], bool)
        and isinstance(row[2], str)
    )


def _dassl_classnames(rows: list, where: Path) -> list[str]:
    names: dict[int, str] = {}
    for path, label, name, *_ in rows:
        if label < 0:
            raise DataError(
                f"negative label {label} for {path}", path=where, hint="Fix the split file"
            )
        if names.setdefault(label, name) != name:
            raise DataError(
                f"label {label} is named both {names[label]!r} and {name!r}",
                path=where,
                hint="Fix the split file",
            )
    count = max(names) + 1 if names else 0
    missing = [i for i in range(count) if i not in names]
    if count < 2 or missing:
        raise DataError(
            f"labels must run 0..K-1 with K >= 2 (missing {missing[:5]})"
            if missing
            else "fewer than 2 classes",
            path=where,
            hint="Fix the split file",
        )
    return [names[i] for i in range(count)]


def _fewshot(
    rows: list, shots: int, rng: random.Random, classnames: list[str]
) -> tuple[list, list[str]]:
    """Dassl's per-class `random.sample`, classes taken in order of first appearance."""
    groups: dict[int, list] = defaultdict(list)
    for row in rows:
        groups[row[1]].append(row)
    chosen, notes = [], []
    for label, items in groups.items():
        if len(items) >= shots:
            chosen.extend(rng.sample(items, shots))
        else:
            chosen.extend(items)
            notes.append(f"class {classnames[label]!r} has only {len(items)} of {shots} shots")
    return chosen, notes


def _names(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")

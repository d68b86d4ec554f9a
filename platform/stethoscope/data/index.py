"""Dataset index: parse the official DCASE Task 2 folder layouts and file names into one pyarrow table.

Grammars (DESIGN.md step 1):
- DCASE 2020 (Koizumi et al. 2020, MIMII + ToyADMOS): ``<machine_type>/{train,test}/{normal|anomaly}_id_XX_NNNNNNNN.wav``;
  evaluation-set names without labels: ``id_XX_NNNNNNNN.wav``.
- DCASE 2021-2024: ``<machine_type>/{train,test}/section_XX_{source|target}_{train|test}_{normal|anomaly}_NNNN[_<attr>_<value>...].wav``;
  evaluation-set names without labels: ``section_XX_NNNN.wav``. The 2021 development set's ``source_test`` /
  ``target_test`` folders are accepted as the test split. The 2024 ``noAttribute`` token means no attributes.

One row per clip. Nothing is dropped silently: a name that matches neither grammar raises
:class:`~stethoscope.errors.IndexParseError` listing every offending path, or, with ``lenient=True``, is skipped and
returned in the report; every other entry under the root that is not a clip (a dangling symlink, a symlink loop, a
directory or FIFO named ``*.wav``, a folder that cannot be listed, a file that is not ``.wav``) is returned in the
report with its reason (:data:`SKIP_REASONS`), and ingest copies the report into ``ingest_report.json``.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from stethoscope.data.audio import file_kind
from stethoscope.data.labels import id_field
from stethoscope.errors import DataError, IndexParseError

DCASE2020 = "dcase2020"
DCASE2021_PLUS = "dcase2021+"

_RE_2020 = re.compile(r"^(?:(?P<label>normal|anomaly)_)?id_(?P<id>\d{2})_(?P<num>\d{8})\.wav$")
_RE_2021 = re.compile(
    r"^section_(?P<section>\d{2})_(?P<domain>source|target)_(?P<split>train|test)_(?P<label>normal|anomaly)_"
    r"(?P<num>\d{4})(?:_(?P<attrs>.+))?\.wav$"
)
_RE_2021_EVAL = re.compile(r"^section_(?P<section>\d{2})_(?P<num>\d{4})\.wav$")
_SPLIT_DIRS = {"train": "train", "test": "test", "source_test": "test", "target_test": "test"}

#: The index table's schema. machine_id is set for DCASE 2020 clips, section for 2021+ clips.
SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("file_name", pa.string()),
        ("dataset", pa.string()),
        ("machine_type", pa.string()),
        ("machine_id", pa.string()),
        ("section", pa.string()),
        ("domain", pa.string()),
        ("split", pa.string()),
        ("label", pa.string()),
        ("clip_number", pa.string()),
        ("attributes", pa.map_(pa.string(), pa.string())),
    ]
)


#: ``reason`` of an entry the index skips → what it means.
SKIP_REASONS = {
    "unparseable_name": "a .wav whose name matches no DCASE grammar, or whose folder is not train/test (lenient mode)",
    "dangling_symlink": "a symlink whose target does not exist",
    "symlink_loop": "a symlink that resolves to itself, or to a folder that holds it",
    "duplicate_folder": "a symlink to a folder already indexed through another path",
    "not_a_file": "a directory, FIFO, socket or device named *.wav (a directory's contents are still indexed)",
    "unreadable_directory": "a folder whose entries cannot be listed: none of its clips can be indexed",
    "unreadable": "an entry whose type cannot be read (stat failed)",
    "not_wav": "a file that is not .wav",
}


@dataclasses.dataclass
class IndexResult:
    """``table``: the index (:data:`SCHEMA`); ``skipped``: every entry under the root that is not in the table, as
    ``{"path", "reason", "detail"}`` (``reason`` from :data:`SKIP_REASONS`), sorted by path."""

    table: pa.Table
    skipped: list[dict[str, str]]


def _parse_attributes(text: str | None) -> list[tuple[str, str]]:
    if not text or text == "noAttribute":
        return []
    tokens = text.split("_")
    pairs = [(tokens[i], tokens[i + 1]) for i in range(0, len(tokens) - 1, 2)]
    if len(tokens) % 2:
        pairs.append((tokens[-1], ""))
    return pairs


def parse_path(path: str | os.PathLike) -> dict | None:
    """Parse one clip path into an index row (a dict), or None if the name matches no grammar.

    The split comes from the parent folder (``train``, ``test``, ``source_test``, ``target_test``) and the
    machine type from the folder above it. A 2021+ name whose embedded split disagrees with its folder is rejected.
    """
    p = Path(path)
    parent = p.parent.name
    split = _SPLIT_DIRS.get(parent)
    if split is None:
        return None
    row = {
        "path": str(p),
        "file_name": p.name,
        "machine_type": p.parent.parent.name,
        "machine_id": None,
        "section": None,
        "domain": None,
        "split": split,
        "label": None,
        "attributes": [],
    }
    if m := _RE_2020.match(p.name):
        row.update(dataset=DCASE2020, machine_id=m["id"], label=m["label"], clip_number=m["num"])
        return row
    if m := _RE_2021.match(p.name):
        if m["split"] != split:
            return None
        row.update(
            dataset=DCASE2021_PLUS,
            section=m["section"],
            domain=m["domain"],
            label=m["label"],
            clip_number=m["num"],
            attributes=_parse_attributes(m["attrs"]),
        )
        return row
    if m := _RE_2021_EVAL.match(p.name):
        row.update(dataset=DCASE2021_PLUS, section=m["section"], clip_number=m["num"])
        return row
    return None


def _walk(root: Path) -> tuple[list[Path], list[dict[str, str]]]:
    """Every regular ``*.wav`` file under ``root`` (following symlinks, each folder once) and every other entry
    that is not a folder walked, with its reason."""
    wavs: list[Path] = []
    skipped: list[dict[str, str]] = []
    seen: dict[tuple[int, int], str] = {}

    def skip(path: Path, reason: str, detail: str) -> None:
        skipped.append({"path": str(path), "reason": reason, "detail": detail})

    def walk(folder: Path, ancestors: frozenset) -> None:
        try:
            with os.scandir(folder) as it:
                names = sorted(e.name for e in it)
        except OSError as exc:
            skip(folder, "unreadable_directory", f"its entries cannot be listed, so none of its clips can be "
                                                 f"indexed: {exc.strerror or exc}")
            return
        for name in names:
            path = folder / name
            try:
                st = os.stat(path)  # follows symlinks
            except FileNotFoundError:
                try:
                    target = os.readlink(path)
                except OSError:
                    target = "?"
                skip(path, "dangling_symlink", f"a symlink to {target!r}, which does not exist")
                continue
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    skip(path, "symlink_loop", "a symlink that never reaches a file (it resolves to itself)")
                else:
                    skip(path, "unreadable", f"stat failed: {exc.strerror or exc}")
                continue
            is_wav = path.suffix.lower() == ".wav"
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    skip(path, "symlink_loop", f"a symlink to {os.path.realpath(path)!r}, a folder that holds it")
                    continue
                if key in seen:
                    skip(path, "duplicate_folder", f"the same folder as {seen[key]!r}, indexed there")
                    continue
                seen[key] = str(path)
                if is_wav:
                    skip(path, "not_a_file", "a directory named *.wav (its contents are indexed)")
                walk(path, ancestors | {key})
            elif is_wav and stat.S_ISREG(st.st_mode):
                wavs.append(path)
            elif is_wav:
                skip(path, "not_a_file", f"a {file_kind(st.st_mode)} named *.wav, not a regular file")
            else:
                skip(path, "not_wav", f"a {file_kind(st.st_mode)} that is not .wav; only .wav clips are indexed")

    st = os.stat(root)
    seen[(st.st_dev, st.st_ino)] = str(root)
    walk(root, frozenset(seen))
    return sorted(wavs), skipped


def index(root: str | os.PathLike, *, lenient: bool = False) -> IndexResult:
    """Index every ``*.wav`` under ``root`` (recursively, following symlinks, each folder once; sorted by path).

    Args:
        root: a DCASE tree, e.g. ``../shared/data/dcase2020_task2_dev_sample`` or its ``dev_data``, or a single
            machine-type folder.
        lenient: skip unparseable names and report them instead of raising.
    Returns:
        IndexResult with a pyarrow table in :data:`SCHEMA` (one row per clip) and every entry skipped, with its
        reason (:data:`SKIP_REASONS`): unparseable names (lenient mode) and entries that are not clips, which
        are reported and skipped in either mode.
    Raises:
        DataError: ``root`` does not exist, is not a folder, or holds no ``.wav`` files.
        IndexParseError: (lenient=False) one or more names match no grammar; lists every offending path.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data root {str(root)!r} does not exist; expected a folder with a DCASE Task 2 layout")
    if not root.is_dir():
        raise DataError(f"data root {str(root)!r} is not a folder")
    root = root.resolve()  # absolute paths, so Ray workers with another working directory can read them
    wavs, skipped = _walk(root)
    if not wavs:
        why = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:5])
        raise DataError(
            f"no .wav files under {str(root)!r}; expected <machine_type>/{{train,test}}/*.wav (DCASE Task 2 layout)"
            + (f"; {len(skipped)} entries skipped: {why}" if skipped else "")
        )
    rows, bad = [], []
    for p in wavs:
        row = parse_path(p)
        if row is None:
            bad.append(str(p))
        else:
            rows.append(row)
    if bad and not lenient:
        raise IndexParseError(bad)
    detail = "the file name matches no DCASE grammar (or its folder is not train/test)"
    skipped = sorted(skipped + [{"path": b, "reason": "unparseable_name", "detail": detail} for b in bad],
                     key=lambda s: s["path"])
    if not rows:
        raise DataError(f"no parseable DCASE clips under {str(root)!r}; {len(bad)} file(s) skipped")
    return IndexResult(pa.Table.from_pylist(rows, schema=SCHEMA), skipped)


def select(
    table: pa.Table,
    *,
    machine_type: str | None = None,
    machine_ids: list[str] | None = None,
    sections: list[str] | None = None,
    split: str | None = None,
) -> pa.Table:
    """Filter an index table. ``None`` means no filter on that column.

    Raises:
        DataError: the machine type, IDs or sections are not in the table (names what is available).
    """
    if machine_type is not None:
        known = sorted(set(table.column("machine_type").to_pylist()))
        if machine_type not in known:
            raise DataError(f"machine type {machine_type!r} is not in the data; found {known}")
        table = table.filter(pc.equal(table["machine_type"], machine_type))
    for col, wanted in (("machine_id", machine_ids), ("section", sections)):
        if wanted:
            known = sorted(set(v for v in table.column(col).to_pylist() if v is not None))
            missing = sorted(set(wanted) - set(known))
            if missing:
                raise DataError(f"{col} {missing} not found for {machine_type or 'these clips'}; found {known}")
            table = table.filter(pc.is_in(table[col], pa.array(wanted)))
    if split is not None:
        table = table.filter(pc.equal(table["split"], split))
    return table


def select_ids(table: pa.Table, ids: list[str] | None) -> pa.Table:
    """Filter an index table of one dataset grammar to the groups ``ids`` (two-digit strings, e.g. ``["00"]``):
    machine IDs for DCASE 2020, sections for 2021+ (the field :func:`stethoscope.data.labels.id_field` names, read
    from the first clip's ``dataset``). ``None`` or empty means no filter.

    Raises:
        DataError: an ID / section that is not in the table (:func:`select`; names what is available).
    """
    if not ids:
        return table
    if id_field(table.column("dataset")[0].as_py()) == "machine_id":
        return select(table, machine_ids=ids)
    return select(table, sections=ids)


def counts(table: pa.Table) -> dict[tuple[str, str, str | None], int]:
    """``{(machine_type, split, label): n}`` — for summaries and tests."""
    out: dict = {}
    for mt, sp, lb in zip(
        table.column("machine_type").to_pylist(), table.column("split").to_pylist(), table.column("label").to_pylist()
    ):
        out[(mt, sp, lb)] = out.get((mt, sp, lb), 0) + 1
    return out

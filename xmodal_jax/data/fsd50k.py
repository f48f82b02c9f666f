"""FSD50K (NAS-Bench-360): 200-class multi-label sound events from 1-s log-mel chunks.

Layout under the manual data dir ``root`` (sjunhongshen/ORCA ``load_fsd`` with its ``utils.py``
``SpectrogramDataset`` / ``FSD50kEvalDataset``; manifests from fsd50k-pytorch's
``make_chunks_manifests.py``)::

    chunks/tr.csv, chunks/val.csv, chunks/eval.csv   columns ``files`` (path of a 1-s 22.05 kHz
        mono WAV chunk), ``labels`` (comma-separated label names), ``ext`` (the clip id its
        chunk was cut from)
    chunks/lbl_map.json    label name → class index (200); ``root/lbl_map.json`` also accepted
    noise_22050/*.wav      background noises for :func:`mix_background` (train-time only)

Chunk paths are absolute paths of the machine that made them (the reference swaps their first
four characters for its own data dir); they are re-rooted under ``root`` with
:func:`xmodal_jax.data.cosmic.resolve_under_root`. A ``.npy`` chunk holding an already computed
96×T log-mel (or the final 1×96×102) is accepted too.

Features (reference ``AudioParser('melspectrogram')``): audio tiled to ≥ 1 s; torchaudio
``MelSpectrogram(sr 22050, n_fft 1920, win 661, hop 220, 96 mels, htk, no norm, power 2,
centred reflect padding)``; ``librosa.power_to_db`` (ref 1, amin 1e-10, top_db 80); + 75; minus
the chunk's mean. Then the evaluation transform ``PadToSize(101)`` (constant = min), and one
zero column appended (``F.pad(real, (0, 1))``): 1×96×102.
"""

from __future__ import annotations

import csv
import functools
import glob
import json
import os
import struct
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from xmodal_jax.data.cosmic import resolve_under_root
from xmodal_jax.data.formats import DataFormatError, LazyArray, Splits, require_file

NUM_CLASSES = 200
SAMPLE_RATE = 22050
N_MELS = 96
N_FFT = 96 * 20
WIN_LENGTH = int(SAMPLE_RATE * 0.03)  # 661
HOP_LENGTH = int(SAMPLE_RATE * 0.01)  # 220
FRAMES = 101  # one second of hops; the model sees FRAMES + 1 (a zero column)
CHUNK_SHAPE = (1, N_MELS, FRAMES + 1)
MIX_PROB = 0.75
MIX_ALPHA_MAX = 0.5
_COLUMNS = ("files", "labels", "ext")
_SPLITS = {"train": "tr.csv", "val": "val.csv", "test": "eval.csv"}


# ---------------------------------------------------------------------------------------------
# features


def read_wav(path: str) -> np.ndarray:
    """A mono 22.05 kHz WAV as float32 in [-1, 1] (PCM scaled as soundfile scales it)."""
    from scipy.io import wavfile

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", wavfile.WavFileWarning)
            rate, data = wavfile.read(path)
    except (OSError, ValueError, EOFError, struct.error) as e:
        raise DataFormatError(f"{path}: not a readable WAV file ({e})") from e
    for w in caught:
        # scipy only warns on a data chunk shorter than its header says: a truncated file.
        if "EOF" in str(w.message):
            raise DataFormatError(f"{path}: field 'data' is truncated ({w.message})")
    if rate != SAMPLE_RATE:
        raise DataFormatError(f"{path}: field 'sample_rate' is {rate}, expected {SAMPLE_RATE}")
    if data.ndim == 2 and data.shape[1] == 1:
        data = data[:, 0]
    if data.ndim != 1:
        raise DataFormatError(f"{path}: field 'channels' is {data.shape[1]}, expected mono")
    if len(data) == 0:
        raise DataFormatError(f"{path}: field 'data' is empty")
    if data.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
        return ((data - 128.0) / 128.0).astype(np.float32)
    if data.dtype.kind == "i":  # 24-bit arrives left-aligned in int32, so itemsize scaling holds
        return (data / float(2 ** (8 * data.dtype.itemsize - 1))).astype(np.float32)
    return data.astype(np.float32)


@functools.cache
def mel_filterbank() -> np.ndarray:
    """torchaudio's ``melscale_fbanks`` (htk scale, no norm): (N_FFT // 2 + 1) × N_MELS."""
    all_freqs = np.linspace(0.0, SAMPLE_RATE // 2, N_FFT // 2 + 1)
    m_max = 2595.0 * np.log10(1.0 + (SAMPLE_RATE // 2) / 700.0)
    f_pts = 700.0 * (10.0 ** (np.linspace(0.0, m_max, N_MELS + 2) / 2595.0) - 1.0)
    f_diff = np.diff(f_pts)
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return np.maximum(0.0, np.minimum(down, up))


@functools.cache
def _sparse_filterbank_t():
    # 2% of the filterbank is non-zero; the dense product dominated a chunk's cost.
    from scipy import sparse

    return sparse.csr_matrix(mel_filterbank().T)


@functools.cache
def _window() -> np.ndarray:
    # torch.stft centres a shorter (periodic Hann) window inside n_fft.
    n = np.arange(WIN_LENGTH)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / WIN_LENGTH)
    left = (N_FFT - WIN_LENGTH) // 2
    return np.pad(w, (left, N_FFT - WIN_LENGTH - left))


def log_mel(audio: np.ndarray) -> np.ndarray:
    """The reference's 96×T log-mel of a waveform (T = 1 + len // 220), float32."""
    audio = np.asarray(audio, np.float64)
    padded = np.pad(audio, N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH]
    power = np.abs(np.fft.rfft(frames * _window(), axis=-1)) ** 2
    mel = _sparse_filterbank_t() @ power.T
    db = 10.0 * np.log10(np.maximum(1e-10, mel))
    db = np.maximum(db, db.max() - 80.0)
    db = db.astype(np.float32) + np.float32(75.0)  # + top_db / 2 with the parser's top_db 150
    return db - db.mean()


def _fit_frames(spec: np.ndarray) -> np.ndarray:
    """PadToSize(101) (constant = min, centred) or a centred crop, then the zero column."""
    t = spec.shape[1]
    if t < FRAMES:
        left = (FRAMES - t) // 2
        spec = np.pad(spec, ((0, 0), (left, FRAMES - t - left)), constant_values=spec.min())
    elif t > FRAMES:
        # The reference crops at random in training and has no rule at evaluation (its chunks
        # are exactly 1 s, so this never triggers there); a centred crop is deterministic.
        start = (t - FRAMES) // 2
        spec = spec[:, start : start + FRAMES]
    return np.pad(spec, ((0, 0), (0, 1)))[None].astype(np.float32)


def chunk_features(audio: np.ndarray) -> np.ndarray:
    """A waveform's 1×96×102 model input (audio tiled to ≥ 1 s first, as ``load_audio``)."""
    audio = np.asarray(audio, np.float32)
    if len(audio) < SAMPLE_RATE:
        audio = np.tile(audio, SAMPLE_RATE // len(audio) + 1)[:SAMPLE_RATE]
    return _fit_frames(log_mel(audio))


def load_chunk(path: str) -> np.ndarray:
    """The 1×96×102 float32 input of a WAV chunk, or of a ``.npy`` log-mel (96×T or 1×96×102)."""
    if not path.endswith(".npy"):
        return chunk_features(read_wav(path))
    try:
        spec = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataFormatError(f"{path}: not a readable .npy ({e})") from e
    if spec.dtype.kind != "f":
        raise DataFormatError(f"{path}: field 'log_mel' has dtype {spec.dtype}, expected float")
    if spec.shape == CHUNK_SHAPE:
        return spec.astype(np.float32)
    if spec.ndim != 2 or spec.shape[0] != N_MELS or spec.shape[1] == 0:
        raise DataFormatError(
            f"{path}: field 'log_mel' has shape {spec.shape}, expected {N_MELS}×T or "
            f"{'×'.join(map(str, CHUNK_SHAPE))}"
        )
    return _fit_frames(spec)


# ---------------------------------------------------------------------------------------------
# manifests


def read_label_map(root: str) -> dict[str, int]:
    """``chunks/lbl_map.json`` (where the manifest script and the reference put it) or
    ``lbl_map.json``: label name → class index, a permutation of ``range(NUM_CLASSES)``."""
    path = os.path.join(root, "chunks", "lbl_map.json")
    if not os.path.exists(path):
        path = require_file(root, "lbl_map.json")
    try:
        with open(path) as f:
            lbl_map = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: not a readable JSON label map ({e})") from e
    if not isinstance(lbl_map, dict):
        raise DataFormatError(f"{path}: expected an object of label name → index")
    for name, ix in lbl_map.items():
        if isinstance(ix, bool) or not isinstance(ix, int) or not 0 <= ix < NUM_CLASSES:
            raise DataFormatError(
                f"{path}: field {name!r} has index {ix!r}, expected an int in [0, {NUM_CLASSES})"
            )
    if sorted(lbl_map.values()) != list(range(NUM_CLASSES)):
        raise DataFormatError(
            f"{path}: {len(lbl_map)} labels with indices that are not exactly 0..{NUM_CLASSES - 1}"
        )
    return lbl_map


def _clip_order(exts: Sequence[str]) -> tuple[np.ndarray, int]:
    """Dense clip index per row; clips sorted as the reference's ``np.unique(ext)`` sorts them
    (numerically when every id is an integer, as pandas parses FSD50K's ids)."""
    keys: np.ndarray = np.asarray(exts)
    if all(e.lstrip("-").isdigit() for e in exts):
        keys = keys.astype(np.int64)
    uniq, inverse = np.unique(keys, return_inverse=True)
    return inverse.astype(np.int32), len(uniq)


def _read_manifest(path: str, lbl_map: dict[str, int]) -> dict[str, Any]:
    try:
        f = open(path, newline="")
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read ({e})") from e
    with f:
        reader = csv.DictReader(f)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataFormatError(
                f"{path}: missing column {missing[0]!r} (found {reader.fieldnames})"
            )
        files, exts, label_ids, lines = [], [], [], []
        parsed: dict[str, tuple[int, ...]] = {}
        for row in reader:
            if None in row or any(row[c] is None for c in _COLUMNS):
                raise DataFormatError(f"{path}: line {reader.line_num} has the wrong field count")
            text = row["labels"]
            if text not in parsed:
                names = text.split(",")  # the reference splits on "," without stripping
                unknown = [n for n in names if n not in lbl_map]
                if unknown:
                    raise DataFormatError(
                        f"{path}: line {reader.line_num} field 'labels' has unknown label "
                        f"{unknown[0]!r}"
                    )
                parsed[text] = tuple(sorted({lbl_map[n] for n in names}))
            if not row["files"] or not row["ext"]:
                raise DataFormatError(f"{path}: line {reader.line_num} has an empty files/ext")
            files.append(row["files"])
            exts.append(row["ext"].strip())
            label_ids.append(parsed[text])
            lines.append(reader.line_num)
    if not files:
        raise DataFormatError(f"{path}: no rows")
    clip, n_clips = _clip_order(exts)
    first: dict[int, int] = {}
    for r, c in enumerate(clip):
        j = first.setdefault(int(c), r)
        if label_ids[j] != label_ids[r]:
            raise DataFormatError(
                f"{path}: field 'labels' differs between chunks of clip {exts[r]!r} "
                f"(lines {lines[j]} and {lines[r]})"
            )
    return {"files": files, "labels": label_ids, "clip": clip, "n_clips": n_clips, "lines": lines}


def _multi_hot(label_ids: Sequence[tuple[int, ...]]) -> np.ndarray:
    y = np.zeros((len(label_ids), NUM_CLASSES), np.float32)
    for r, ids in enumerate(label_ids):
        y[r, list(ids)] = 1.0
    return y


class _Chunks:
    """Lazy chunk loader of one manifest: directories resolved up front, files per access."""

    def __init__(self, root: str, manifest: str, files: list[str], lines: list[int]):
        self.manifest, self.files, self.lines = manifest, files, lines
        self.dirs: dict[str, str] = {}
        for f, line in zip(files, lines, strict=True):
            head = os.path.dirname(f)
            if head not in self.dirs:
                where = f"line {line}"
                self.dirs[head] = resolve_under_root(root, head, manifest, where, isdir=True)

    def __call__(self, i: int) -> np.ndarray:
        head, name = os.path.split(self.files[i])
        path = os.path.join(self.dirs[head], name)
        if not os.path.isfile(path):
            raise DataFormatError(
                f"{self.manifest}: line {self.lines[i]} field 'files': {path} not found "
                f"(listed as {self.files[i]!r})"
            )
        return load_chunk(path)


def read_fsd50k(root: str, *, seed: int = 0, train_chunks: str = "one_per_clip") -> Splits:
    """FSD50K splits: ``x`` a ``LazyArray`` of 1×96×102 float32 chunks, ``y`` float32 N×200
    multi-hot; ``val`` and ``test`` add int32 ``clip`` (dense clip index per chunk).

    Train is tr.csv, val the official val.csv, test eval.csv. Val/test hold every chunk, grouped
    by clip (clips in the reference's order, chunks in csv order); a clip's score is the mean of
    its chunks' logits (reference ``evaluate`` with ``fsd_epoch``), its target any chunk's y.
    ``train_chunks="one_per_clip"`` is the reference's training set: one chunk per clip drawn once
    (``seed``); ``"all"`` keeps every chunk.
    """
    if train_chunks not in ("one_per_clip", "all"):
        raise ValueError(f"train_chunks={train_chunks!r}; expected 'one_per_clip' or 'all'")
    lbl_map = read_label_map(root)
    out: Splits = {}
    for split, name in _SPLITS.items():
        manifest = require_file(root, "chunks", name)
        m = _read_manifest(manifest, lbl_map)
        clip = m["clip"]
        if split == "train" and train_chunks == "one_per_clip":
            order = np.argsort(clip, kind="stable")
            counts = np.bincount(clip, minlength=m["n_clips"])
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            rows = order[starts + np.random.default_rng(seed).integers(0, counts)]
        elif split == "train":
            rows = np.arange(len(clip))
        else:
            rows = np.argsort(clip, kind="stable")
        files = [m["files"][r] for r in rows]
        chunks = _Chunks(root, manifest, files, [m["lines"][r] for r in rows])
        arrays: dict[str, Any] = {
            "x": LazyArray(len(rows), CHUNK_SHAPE, np.float32, chunks, f"{manifest} files"),
            "y": _multi_hot([m["labels"][r] for r in rows]),
        }
        if split != "train":
            arrays["clip"] = clip[rows]
        out[split] = arrays
    return out


def read_fsd50k_background(root: str) -> LazyArray:
    """The background noises ``noise_22050/*.wav`` (sorted by name) as 1×96×102 inputs, for
    :func:`mix_background`. The reference random-crops 101 frames of each noise per draw (and
    applies its train transform); this takes the centred 101 frames."""
    noise_dir = require_file(root, "noise_22050")
    files = sorted(glob.glob(os.path.join(noise_dir, "*.wav")))
    if not files:
        raise DataFormatError(f"{noise_dir}: no .wav background files")
    return LazyArray(len(files), CHUNK_SHAPE, np.float32, lambda i: load_chunk(files[i]), noise_dir)


def mix_background(
    x: np.ndarray, noise: Any, rng: np.random.Generator, p: float = MIX_PROB
) -> np.ndarray:
    """Training-time background mixing (reference ``UseMixerWithProb(BackgroundAddMixer(), 0.75)``).

    With probability ``p``: pick a noise ``n = noise[k]``, ``k`` uniform over ``len(noise)``,
    draw ``α ~ U(0, 0.5)`` and return ``(1 − α)·x + α·n``; otherwise ``x`` unchanged. Labels are
    unchanged. ``x`` is one example and ``noise`` an indexable bank of same-shaped examples (e.g.
    :func:`read_fsd50k_background`); the reference mixes before appending the zero column, which
    is the same when both columns are zero, as they are for inputs from this module.
    """
    x = np.asarray(x)
    if rng.random() >= p:
        return x
    n = np.asarray(noise[int(rng.integers(len(noise)))], x.dtype)
    alpha = rng.uniform(0.0, MIX_ALPHA_MAX)
    return ((1.0 - alpha) * x + alpha * n).astype(x.dtype)

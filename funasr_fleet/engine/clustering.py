"""Speaker clustering over speech-window embeddings: requested counts honoured, cost bounded at any length.

Input: one speaker embedding per speech window, rows in time order, shape ``(N, D)`` (FunASR's
``sv_chunk``: 1.5 s windows every 0.75 s inside each VAD segment; CAM++ gives D = 192, so 4 h of
speech is about 19,000 rows). Output: one speaker label per window, numbered by first appearance.

What runs (N = windows; ``max_dense`` = 2048, FunASR's own cut between its dense and large paths):

- N = 0: nothing. One window, a request for one speaker, or identical embeddings: one speaker.
- An exact count (or min = max) below 20 windows, where FunASR's ``ClusterBackend`` returns one
  speaker before it reads the request: average-linkage agglomerative clustering on cosine distance,
  cut at the count. From 20 windows: FunASR's ``SpectralCluster`` with the count as its oracle.
- No exact count, 6 <= N <= max_dense: FunASR's ``SpectralCluster`` (p-pruned cosine affinity,
  eigengap over 1..15 speakers, its choice clipped to the requested range), then FunASR's
  ``merge_by_cos`` rule (centroid cosine >= 0.78 is one speaker), never below the requested
  minimum. FunASR runs this from 20 windows; at 6..19 windows (measured on synthetic embeddings,
  ``benchmarks.clustering``) it finds a second voice in 36..98 of 100 clips, where FunASR's one
  speaker never does, and splits one voice in 0..14 of 100. Below 6 windows (about 5 s of speech)
  it split one voice in up to 32 of 100: there the fewest speakers allowed (1 without a range).
- N > max_dense: a deterministic, time-spread sample of ``max_dense`` windows (one per equal stretch
  of the recording) is clustered as above and every other window goes to the nearest speaker
  centroid (cosine). Cost: O(max_dense^2) memory and one partial eigendecomposition of that size,
  plus O(N * speakers * D) for the assignment, whatever N is, with or without a count; labels come
  from one clustering, so they are consistent over the whole recording. No HDBSCAN: no noise label.
  (FunASR's large-input k-means splits a dominant voice; its UMAP+HDBSCAN takes a minute at 4 h.)

FunASR's SpectralCluster is used with safe pruning for few rows, a partial eigendecomposition and a
seeded k-means (see ``_spectral_class``).

A request that cannot be met returns what is possible and a ``speaker_count_not_met`` warning that
says what was asked, what was found and why. ``cluster_speakers`` is a pure function of its inputs:
the same embeddings, request and seed give the same labels.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from funasr_fleet.engine.speaker_count import AUTO_MAX_SPEAKERS, NO_REQUEST, SpeakerCount, not_met
from funasr_fleet.engine.transcript import TranscriptWarning

__all__ = ["ClusterBackendSlot", "Clustering", "SpeakerCount", "cluster_speakers"]

CLUSTERING_VERSION = "fleet-1"  # part of the engine fingerprint: other labels, other results
SMALL_N = 20  # below this FunASR's ClusterBackend returns one speaker; a known count uses agglomerative
MIN_SPLIT_N = 6  # below this no count is chosen from the data (measured: eigengap splits one voice too often)
MERGE_COS = 0.78  # FunASR's ClusterBackend merge_thr: speakers whose centroids are this close are one
MIN_NEIGHBOURS = 6  # FunASR's p-pruning keeps at least this many affinities per row
WINDOW_S, SHIFT_S = 1.5, 0.75  # FunASR's sv_chunk, for messages
_ASSIGN_CHUNK = 65536  # rows per block when assigning windows to centroids (bounds the temporary)


@dataclass(frozen=True, eq=False)
class Clustering:
    """One label per window and what a reader must know about them.

    ``labels``: shape (N,), int64, speakers 0..k-1 numbered by first appearance (never -1).
    ``method``: what ran, for logs and benchmarks (``single``, ``agglomerative``, ``spectral``,
    ``sample(M)+spectral+assign`` ...). ``clustered``: windows the dense method saw (N, or the sample).
    """

    labels: np.ndarray
    warnings: tuple[TranscriptWarning, ...] = ()
    method: str = ""
    clustered: int = 0

    @property
    def speakers(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0


def cluster_speakers(
    embeddings: np.ndarray, count: SpeakerCount = NO_REQUEST, *, max_dense: int = 2048, seed: int = 0
) -> Clustering:
    """Cluster ``embeddings`` (N, D; rows in time order, any scale: compared by cosine) into speakers.

    ``count`` constrains the number of speakers; ``max_dense`` (>= 64) bounds the windows the dense
    method sees (the rest are assigned to centroids); ``seed`` fixes the sample and k-means. Raises
    ``ValueError`` for a non-2-D or non-finite input. See the module docstring for what runs when.
    """
    x = np.asarray(embeddings, dtype=np.float32)  # all N rows: only dot products with a few centroids
    if x.ndim != 2 or (x.size and not np.isfinite(x).all()):
        raise ValueError(f"embeddings must be a finite (N, D) array, got shape {x.shape}")
    if max_dense < 64:
        raise ValueError(f"max_dense must be at least 64, got {max_dense}")
    n = x.shape[0]
    if n == 0:
        none = (not_met(count, 0, "there is no speech to tell speakers apart"),) if count.requested else ()
        return Clustering(np.zeros(0, dtype=np.int64), none, "empty", 0)
    voiced = np.flatnonzero(np.linalg.norm(x, axis=1) > 0)
    if 0 < len(voiced) < n:  # a zero embedding holds no voice: it takes the previous voiced window's speaker
        inner = cluster_speakers(x[voiced], count, max_dense=max_dense, seed=seed)
        previous = np.maximum(np.searchsorted(voiced, np.arange(n), side="right") - 1, 0)
        labels = first_appearance(inner.labels[previous])
        return Clustering(labels, inner.warnings, inner.method, inner.clustered)
    x = _unit_rows(x if len(voiced) else np.ones_like(x))  # no voice in any window: all alike
    sample = time_spread_sample(n, max_dense, seed) if n > max_dense else None
    xs = _unit_rows((x if sample is None else x[sample]).astype(np.float64))  # the dense method's rows
    low, high = count.bounds()
    possible = min(len(xs), distinct_rows(xs, limit=high))
    warns: list[TranscriptWarning] = []
    if low > possible:
        warns.append(not_met(count, possible, _why_fewer(len(xs), possible)))
        low = high = possible
    high = min(high, possible)

    if len(xs) < MIN_SPLIT_N and low < high:
        high = low  # too few windows to choose a count: the fewest the request allows
    if high == 1:
        labels, method = np.zeros(len(xs), dtype=np.int64), "single"
    elif low == high and len(xs) < SMALL_N:
        labels, method = _agglomerative(xs, low), "agglomerative"
    elif low == high:
        labels, method = spectral_cluster(low, high, seed)(xs.copy(), oracle_num=low), "spectral"
    else:
        labels = spectral_cluster(low, high, seed)(xs.copy())
        labels, method = merge_close(labels, xs, MERGE_COS, floor=low), "spectral+merge"
    if sample is not None:
        labels = assign_to_centroids(x, sample, labels)
        method = f"sample({len(xs)})+{method}+assign"
    labels = first_appearance(labels)
    found = int(labels.max()) + 1
    if not warns and not count.allows(found):  # the checks above make this unreachable; never silent anyway
        warns.append(not_met(count, found, "the clustering could not separate more voices"))
    return Clustering(labels, tuple(warns), method, len(xs))


class ClusterBackendSlot:
    """Takes the place of FunASR's ``ClusterBackend`` in ``AutoModel.cb_model``.

    AutoModel calls ``cb_model(embeddings, oracle_num=...)`` once per diarized ``generate`` with
    the (N, 192) CAM++ window embeddings (a CPU torch tensor) and expects (N,) labels. The caller
    sets ``count`` before ``generate`` and reads ``last`` after it; ``oracle_num`` is not used (the
    request travels in ``count``, ranges included). One slot per AutoModel; not thread-safe (neither
    is AutoModel).
    """

    def __init__(self, *, max_dense: int = 2048, seed: int = 0) -> None:
        self.max_dense = max_dense
        self.seed = seed
        self.count = NO_REQUEST
        self.last: Clustering | None = None

    def reset(self, count: SpeakerCount) -> None:
        self.count = count
        self.last = None

    def __call__(self, embeddings: object, oracle_num: int | None = None, **_: object) -> np.ndarray:
        detach = getattr(embeddings, "detach", None)
        x = detach().cpu().float().numpy() if detach is not None else np.asarray(embeddings)
        self.last = cluster_speakers(x, self.count, max_dense=self.max_dense, seed=self.seed)
        return self.last.labels


# --- steps (pure; tested through cluster_speakers and directly) -------------------------------------
def time_spread_sample(n: int, size: int, seed: int) -> np.ndarray:
    """``size`` sorted row indices out of ``n``, one from each of ``size`` equal stretches (seeded)."""
    edges = (np.arange(size + 1, dtype=np.int64) * n) // size
    offsets = (np.random.default_rng(seed).random(size) * (edges[1:] - edges[:-1])).astype(np.int64)
    return edges[:-1] + offsets


def distinct_rows(x: np.ndarray, *, limit: int) -> int:
    """How many different rows ``x`` (unit rows) has, counted up to ``limit`` (cosine >= 1 - 1e-6: same)."""
    reps: list[np.ndarray] = []
    for row in x:
        if all(float(row @ r) < 1.0 - 1e-6 for r in reps):
            reps.append(row)
            if len(reps) >= limit:
                break
    return len(reps)


def merge_close(labels: np.ndarray, x: np.ndarray, threshold: float, *, floor: int = 1) -> np.ndarray:
    """FunASR's ``ClusterBackend.merge_by_cos`` rule, stopped at ``floor`` speakers: while the two
    closest centroids have cosine >= ``threshold`` and more than ``floor`` speakers remain, merge them."""
    labels = first_appearance(labels)
    while (k := int(labels.max()) + 1) > max(floor, 1):
        centroids = _unit_rows(np.stack([x[labels == i].mean(axis=0) for i in range(k)]))
        affinity = np.triu(centroids @ centroids.T, 1)
        i, j = np.unravel_index(int(np.argmax(affinity)), affinity.shape)
        if affinity[i, j] < threshold:
            break
        labels = np.where(labels == j, i, labels)
        labels = np.where(labels > j, labels - 1, labels)
    return labels


def assign_to_centroids(x: np.ndarray, sample: np.ndarray, sample_labels: np.ndarray) -> np.ndarray:
    """Labels for all rows of ``x`` (unit rows): sampled rows keep theirs, the rest take the speaker
    whose centroid (of its sampled rows) is nearest by cosine. Memory: blocks of 65,536 rows."""
    k = int(sample_labels.max()) + 1
    centroids = _unit_rows(np.stack([x[sample][sample_labels == i].mean(axis=0) for i in range(k)]))
    labels = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), _ASSIGN_CHUNK):
        block = x[start : start + _ASSIGN_CHUNK]
        labels[start : start + len(block)] = np.argmax(block @ centroids.T, axis=1)
    labels[sample] = sample_labels
    return labels


def first_appearance(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0..k-1 in order of first appearance (the first window's speaker is 0)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def _agglomerative(x: np.ndarray, k: int) -> np.ndarray:
    """A known count on few windows (2..19): average-linkage on cosine distance, cut at ``k``
    (measured more accurate than spectral's k-means on the eigenvectors at this size)."""
    from sklearn.cluster import AgglomerativeClustering

    labels = AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(x)
    return np.asarray(labels, dtype=np.int64)


def spectral_cluster(low: int, high: int, seed: int) -> Any:
    """FunASR's ``SpectralCluster`` for [low, high] speakers with a seeded k-means (see ``_spectral_class``)."""
    return _spectral_class()(low, high, seed)


@functools.cache
def _spectral_class() -> type:
    """FunASR's SpectralCluster with changes that keep its results and bound its cost: p-pruning that
    is safe for few rows (FunASR's gives pval = 6/N > 1 below 6 rows) and vectorised; a Laplacian
    built in place (no dense diagonal matrix); only the eigenpairs the eigengap reads; a seeded
    k-means (FunASR's is unseeded, so its labels change between runs). Built on first use: importing
    FunASR imports torch, which must wait until the engine has set its thread counts, and FunASR
    prints its version on import (stdout belongs to commands)."""
    import scipy.linalg
    from sklearn.cluster import k_means

    with contextlib.redirect_stdout(sys.stderr):
        from funasr.models.campplus.cluster_backend import SpectralCluster

    class Spectral(SpectralCluster):
        def __init__(self, low: int, high: int, seed: int) -> None:
            # the eigengap looks at FunASR's whole range (or more) and its choice is then clipped
            # to [low, high]: a gap searched only inside a narrow range is meaningless when the
            # data has more voices than ``high`` (3 separate voices, high = 2: all gaps are 0 -> 1)
            super().__init__(min_num_spks=1, max_num_spks=max(high, AUTO_MAX_SPEAKERS))
            self.low, self.high, self.seed = low, high, seed

        def p_pruning(self, A: np.ndarray) -> np.ndarray:  # noqa: N803 - FunASR's parameter name (override)
            n = A.shape[0]
            pval = self.pval if n * self.pval >= MIN_NEIGHBOURS else MIN_NEIGHBOURS / n
            drop = max(0, int((1 - pval) * n))  # FunASR zeroes the int((1 - pval) * n) smallest of each row
            for start in range(0, n if drop else 0, 256):  # in row blocks: the index array stays small
                block = A[start : start + 256]
                lowest = np.argpartition(block, drop - 1, axis=1)[:, :drop]
                np.put_along_axis(block, lowest, 0.0, axis=1)
            return A

        def get_laplacian(self, M: np.ndarray) -> np.ndarray:  # noqa: N803 - FunASR's parameter name (override)
            np.fill_diagonal(M, 0.0)
            degree = np.abs(M).sum(axis=1)
            M *= -1.0  # noqa: N806 - in place: the parameter, FunASR's name
            M[np.diag_indices_from(M)] = degree
            return M

        def get_spec_embs(self, L: np.ndarray, k_oracle: int | None = None) -> tuple[np.ndarray, int]:  # noqa: N803
            last = min(L.shape[0] - 1, k_oracle - 1 if k_oracle else self.max_num_spks)
            lambdas, vectors = scipy.linalg.eigh(L, subset_by_index=[0, last], overwrite_a=True, check_finite=False)
            if k_oracle:
                k = k_oracle
            else:
                gaps = np.diff(lambdas[: self.max_num_spks + 1])
                k = min(max(int(np.argmax(gaps)) + 1 if len(gaps) else 1, self.low), self.high)
            return vectors[:, :k], k

        def cluster_embs(self, emb: np.ndarray, k: int) -> np.ndarray:
            _, labels, _ = k_means(emb, k, random_state=self.seed, n_init=10)
            return np.asarray(labels, dtype=np.int64)

    return Spectral


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _why_fewer(windows: int, distinct: int) -> str:
    speech = f"{windows} speech window" + ("" if windows == 1 else "s") + f" ({WINDOW_S:g} s each, every {SHIFT_S:g} s)"
    if distinct >= windows:
        return f"only {speech}: one window holds one voice, so no more speakers can be told apart"
    if distinct == 1:
        return f"the voice embeddings of all {speech} are identical, so they cannot be split"
    return f"only {distinct} of the {speech} have different voice embeddings"

"""Speaker clustering (``funasr_fleet.engine.clustering``): counts honoured or explained, bounded cost.

Unit tests use synthetic, clearly separable embeddings: k speakers as tight clusters on the unit
sphere in 192 dimensions (CAM++'s size), speaking in turns. The engine tests at the end run the
short-speakers case files through the real Engine (tiny random models: they cannot tell voices
apart, so they assert the count and the warning, never who spoke).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from funasr_fleet.engine import clustering as cl
from funasr_fleet.engine.clustering import SpeakerCount, cluster_speakers, first_appearance, time_spread_sample
from funasr_fleet.engine.speaker_count import transcript_warnings
from funasr_fleet.engine.transcript import TranscribeOptions, Transcript, WarningCode

if TYPE_CHECKING:
    from funasr_fleet.engine.pipeline import Engine

DIM = 192


def voices(n: int, k: int, *, seed: int = 1, spread: float = 0.15, turn: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``n`` windows of ``k`` voices taking turns of ``turn`` windows; returns (embeddings, true labels).

    Window-to-own-centre cosine is about 1 / sqrt(1 + spread^2) (0.99 at 0.15); centres are random
    directions (cosine about 0 in 192-d): clearly separable.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = (np.arange(n) // turn) % k
    noise = rng.standard_normal((n, DIM)) / np.sqrt(DIM)
    return (centres[truth] + spread * noise).astype(np.float32), truth


def same_partition(labels: np.ndarray, truth: np.ndarray) -> bool:
    pairs = {(int(a), int(b)) for a, b in zip(labels, truth, strict=True)}
    return len(pairs) == len(set(labels.tolist())) == len(set(truth.tolist()))


def assert_valid(labels: np.ndarray, n: int) -> None:
    assert labels.shape == (n,) and labels.dtype == np.int64
    if n:
        assert labels.min() == 0  # never -1 (HDBSCAN's noise label)
        np.testing.assert_array_equal(first_appearance(labels), labels)  # numbered by first appearance


# --- SpeakerCount ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [{"exact": 0}, {"exact": 33}, {"min": 0}, {"max": 40}, {"min": 3, "max": 2}, {"exact": 2, "min": 1},
     {"exact": 2, "max": 3}, {"exact": True}, {"min": 2.0}],
)  # fmt: skip
def test_speaker_count_rejects_invalid_requests(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SpeakerCount(**kwargs)  # type: ignore[arg-type]


def test_speaker_count_bounds_and_wording() -> None:
    assert SpeakerCount().bounds() == (1, 15) and not SpeakerCount().requested
    assert SpeakerCount(exact=3).bounds() == (3, 3)
    assert SpeakerCount(min=2).bounds() == (2, 15) and SpeakerCount(min=20).bounds() == (20, 20)
    assert SpeakerCount(max=4).bounds() == (1, 4)
    assert SpeakerCount.from_options(2, 1, 5) == SpeakerCount(exact=2)  # an exact count wins over a range
    assert SpeakerCount.from_options(None, 2, 4) == SpeakerCount(min=2, max=4)
    assert SpeakerCount(exact=1).describe() == "exactly 1 speaker"
    assert SpeakerCount(min=2, max=4).describe() == "2 to 4 speakers"
    assert SpeakerCount(min=2).describe() == "at least 2 speakers"
    assert SpeakerCount(max=3).describe() == "at most 3 speakers"
    assert SpeakerCount(min=2, max=4).allows(3) and not SpeakerCount(min=2, max=4).allows(5)
    assert SpeakerCount().allows(7) and not SpeakerCount(exact=2).allows(1)


# --- exact counts at every length -----------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 5, 13, 19, 25, 3000])
def test_exact_two_speakers_at_every_length(n: int) -> None:
    x, truth = voices(n, 2, turn=1 if n < 5 else 3)
    result = cluster_speakers(x, SpeakerCount(exact=2))
    assert_valid(result.labels, n)
    assert result.speakers == 2 and result.warnings == ()
    assert same_partition(result.labels, truth)


@pytest.mark.parametrize("n", [3, 13, 19, 25, 400, 3000])
def test_exact_three_speakers(n: int) -> None:
    x, truth = voices(n, 3, turn=1 if n < 13 else 3)
    result = cluster_speakers(x, SpeakerCount(exact=3))
    assert result.speakers == 3 and result.warnings == ()
    assert same_partition(result.labels, truth)


def test_exact_count_is_forced_even_on_one_voice() -> None:
    """The caller knows better than the embeddings: distinct windows can always be split."""
    x, _ = voices(13, 1)
    result = cluster_speakers(x, SpeakerCount(exact=2))
    assert result.speakers == 2 and result.warnings == ()


def test_funasr_clusterbackend_ignores_the_count_below_20_windows() -> None:
    """Why this module exists: FunASR returns one speaker for 13 windows of two clear voices."""
    from funasr.models.campplus.cluster_backend import ClusterBackend

    x, _ = voices(13, 2)
    assert set(ClusterBackend()(x, oracle_num=2).tolist()) == {0}
    assert cluster_speakers(x, SpeakerCount(exact=2)).speakers == 2


# --- without a count, and ranges ------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 5, 13, 19, 20, 25, 500, 3000])
def test_one_voice_without_a_count_stays_one_speaker(n: int) -> None:
    x, _ = voices(n, 1, spread=0.6)  # window cosine about 0.86: a noisier single voice
    result = cluster_speakers(x)
    assert_valid(result.labels, n)
    assert result.speakers == 1 and result.warnings == ()


@pytest.mark.parametrize(("n", "k"), [(6, 2), (13, 2), (19, 3), (25, 2), (60, 3), (500, 4), (3000, 3)])
def test_clear_voices_without_a_count_are_found(n: int, k: int) -> None:
    x, truth = voices(n, k, turn=2)
    result = cluster_speakers(x)
    assert result.speakers == k and same_partition(result.labels, truth)


@pytest.mark.parametrize("n", [13, 60, 3000])
def test_range_constrains_the_automatic_choice(n: int) -> None:
    x3, truth3 = voices(n, 3, turn=2)
    inside = cluster_speakers(x3, SpeakerCount(min=2, max=4))
    assert inside.speakers == 3 and same_partition(inside.labels, truth3) and inside.warnings == ()
    assert cluster_speakers(x3, SpeakerCount(max=2)).speakers == 2  # capped
    x2, _ = voices(n, 2, turn=2)
    raised = cluster_speakers(x2, SpeakerCount(min=3))
    assert raised.speakers == 3 and raised.warnings == ()  # the merge rule never goes below min
    x1, _ = voices(n, 1)
    assert cluster_speakers(x1, SpeakerCount(min=2, max=4)).speakers == 2


# --- requests that cannot be met are said, never silent -------------------------------------------
def _one_warning(result: cl.Clustering) -> str:
    assert len(result.warnings) == 1
    assert result.warnings[0].code == WarningCode.SPEAKER_COUNT_NOT_MET
    return result.warnings[0].message


def test_one_window_cannot_hold_two_speakers() -> None:
    x, _ = voices(1, 1)
    result = cluster_speakers(x, SpeakerCount(exact=2))
    assert result.labels.tolist() == [0]
    message = _one_warning(result)
    assert "exactly 2 speakers" in message and "found 1" in message and "1 speech window " in message


def test_fewer_windows_than_speakers() -> None:
    x, _ = voices(3, 3, turn=1)
    result = cluster_speakers(x, SpeakerCount(exact=5))
    assert result.speakers == 3
    message = _one_warning(result)
    assert "exactly 5 speakers" in message and "found 3" in message and "only 3 speech windows" in message
    assert "at least 4 speakers" in _one_warning(cluster_speakers(x, SpeakerCount(min=4)))


def test_identical_embeddings_cannot_be_split() -> None:
    x = np.tile(np.random.default_rng(3).standard_normal(DIM), (25, 1))
    result = cluster_speakers(x, SpeakerCount(exact=2))
    assert result.speakers == 1 and "identical" in _one_warning(result)
    two = np.concatenate([x[:10], -x[10:]])  # two distinct embeddings, three asked
    result = cluster_speakers(two, SpeakerCount(exact=3))
    assert result.speakers == 2 and "only 2 of the 25" in _one_warning(result)


def test_zero_embeddings_hold_no_voice() -> None:
    zeros = np.zeros((10, DIM))
    result = cluster_speakers(zeros, SpeakerCount(exact=2))
    assert result.speakers == 1 and "identical" in _one_warning(result)
    x, truth = voices(20, 2)
    x[[0, 7, 8]] = 0  # they take the previous voiced window's speaker (the first: the next one's)
    result = cluster_speakers(x, SpeakerCount(exact=2))
    assert result.speakers == 2 and result.warnings == ()
    expected = truth.copy()
    expected[[0, 7, 8]] = truth[[1, 6, 6]]
    assert same_partition(result.labels, expected)


def test_no_windows() -> None:
    empty = np.zeros((0, DIM), dtype=np.float32)
    assert cluster_speakers(empty).labels.shape == (0,) and cluster_speakers(empty).warnings == ()
    assert "no speech" in _one_warning(cluster_speakers(empty, SpeakerCount(exact=2)))


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        cluster_speakers(np.zeros(5))
    with pytest.raises(ValueError):
        cluster_speakers(np.full((3, DIM), np.nan))
    with pytest.raises(ValueError):
        cluster_speakers(np.zeros((3, DIM)), max_dense=10)


# --- noise, small N, determinism, bounded cost ----------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7, 19, 20, 21, 200, 2500])
def test_unstructured_noise_gives_valid_labels(n: int) -> None:
    x = np.random.default_rng(n).standard_normal((n, DIM))
    for count in (SpeakerCount(), SpeakerCount(exact=min(n, 2)), SpeakerCount(min=1, max=4)):
        result = cluster_speakers(x, count)
        assert_valid(result.labels, n)
        assert 1 <= result.speakers <= 15 and count.allows(result.speakers) and result.warnings == ()


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7, 20, 21])
def test_spectral_pruning_is_safe_for_few_rows(n: int) -> None:
    """FunASR's p_pruning uses pval = 6/N (> 1 below 6 rows); ours keeps every row then."""
    x, _ = voices(n, 2, turn=1)
    labels = cl.spectral_cluster(2, 2, 0)(cl._unit_rows(x.astype(np.float64)), oracle_num=2)
    assert sorted(set(labels.tolist())) == [0, 1]


@pytest.mark.parametrize("n", [40, 3000])
def test_same_seed_same_labels(n: int) -> None:
    x = np.random.default_rng(7).standard_normal((n, DIM))  # no structure: the seed decides
    for count in (SpeakerCount(), SpeakerCount(exact=3), SpeakerCount(min=2, max=4)):
        a, b = cluster_speakers(x, count, seed=5), cluster_speakers(x, count, seed=5)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.method == b.method


def test_large_input_clusters_a_bounded_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past max_dense windows only a sample reaches the dense method; every window gets a label."""
    seen: list[int] = []
    spectral = cl._spectral_class()
    original = spectral.get_sim_mat

    def spy(self: object, x: np.ndarray) -> np.ndarray:
        seen.append(x.shape[0])
        return original(self, x)

    monkeypatch.setattr(spectral, "get_sim_mat", spy)
    x, truth = voices(5000, 3, turn=40)
    for count in (SpeakerCount(), SpeakerCount(exact=3), SpeakerCount(min=2, max=4)):
        result = cluster_speakers(x, count, max_dense=256)
        assert result.clustered == 256 and result.method.startswith("sample(256)+spectral")
        assert_valid(result.labels, 5000)
        assert same_partition(result.labels, truth)
    assert seen == [256, 256, 256]


def test_time_spread_sample() -> None:
    idx = time_spread_sample(10_000, 100, seed=0)
    assert len(idx) == 100 and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx // 100, np.arange(100))  # one window from each hundredth of the recording
    np.testing.assert_array_equal(idx, time_spread_sample(10_000, 100, seed=0))
    assert not np.array_equal(idx, time_spread_sample(10_000, 100, seed=1))


def test_merge_close_stops_at_the_floor() -> None:
    x, _ = voices(30, 1)
    labels = np.arange(30) % 3  # three clusters of one voice
    unit = cl._unit_rows(x.astype(np.float64))
    assert set(cl.merge_close(labels, unit, cl.MERGE_COS).tolist()) == {0}
    assert len(set(cl.merge_close(labels, unit, cl.MERGE_COS, floor=2).tolist())) == 2


def test_first_appearance() -> None:
    assert first_appearance(np.array([5, 5, 2, 7, 2, 5])).tolist() == [0, 0, 1, 2, 1, 0]


def test_transcript_warnings() -> None:
    x, _ = voices(13, 2)
    met = cluster_speakers(x, SpeakerCount(exact=2))
    assert transcript_warnings(SpeakerCount(exact=2), 2, met) == ()
    assert transcript_warnings(SpeakerCount(), 1, cluster_speakers(x)) == ()
    (fewer,) = transcript_warnings(SpeakerCount(exact=2), 1, met)  # met by windows, not by sentences
    assert fewer.code == WarningCode.SPEAKER_COUNT_NOT_MET and "clustered into 2 speakers, but only 1" in fewer.message
    (none,) = transcript_warnings(SpeakerCount(min=2), 0, None)
    assert "at least 2 speakers, found 0: no speech windows" in none.message
    one = cluster_speakers(x[:1], SpeakerCount(exact=2))
    assert transcript_warnings(SpeakerCount(exact=2), 1, one) == one.warnings  # the clustering's own reason


def test_cluster_backend_slot_takes_torch_tensors() -> None:
    import torch

    x, truth = voices(13, 2)
    slot = cl.ClusterBackendSlot()
    slot.reset(SpeakerCount(exact=2))
    labels = slot(torch.from_numpy(x), oracle_num=None)  # how FunASR's AutoModel calls cb_model
    assert same_partition(labels, truth) and slot.last is not None and slot.last.speakers == 2


# --- through the real Engine (tiny random models) -------------------------------------------------
CASES = Path(__file__).resolve().parent / "data" / "short-speakers"  # copies of shared/cases/short-speakers
REPO = Path(__file__).resolve().parents[1]


def assert_honoured_or_said(t: Transcript, count: SpeakerCount) -> None:
    """The transcript's speaker count meets the request, or exactly one warning says why not."""
    said = [w for w in t.warnings if w.code == WarningCode.SPEAKER_COUNT_NOT_MET]
    if count.allows(len(t.speakers)):
        assert said == []
    else:
        assert len(said) == 1 and count.describe() in said[0].message and f"found {len(t.speakers)}" in said[0].message


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Unseen inputs of the same kinds: one short word (one speech window), one voice reading 4 and
    8 lines (about 11 and 24 windows), a 2-line two-voice dialogue (about 7 s)."""
    from funasr_fleet.devaudio import LINES, VOICES, missing_tools, run_tool, silence, synth_dialogue

    if missing_tools():
        pytest.skip(f"not installed: {', '.join(missing_tools())}")
    root = tmp_path_factory.mktemp("clips")
    pause = silence(root / "pause.wav", 0.8)
    run_tool(
        ["espeak-ng", "-v", VOICES[0][0], "-p", VOICES[0][1], "-s", "190", "-w", str(root / "yes.raw.wav"), "Yes."]
    )
    run_tool(
        ["sox", "-R", "-D", str(root / "yes.raw.wav"), "-r", "16000", "-c", "1", "-b", "16", str(root / "yes.wav")]
    )
    run_tool(["sox", "-R", "-D", str(pause), str(root / "yes.wav"), str(pause), str(root / "one-word.wav")])
    for voice, pitch in VOICES:
        lines = [LINES[i % len(LINES)] for i in range(8)]
        run_tool(
            ["espeak-ng", "-v", voice, "-p", pitch, "-s", "190", "-w", str(root / "mono.raw.wav"), " ".join(lines)]
        )
        name = voice.replace("+", "-")
        run_tool(["sox", "-R", "-D", str(root / "mono.raw.wav"), "-r", "16000", "-c", "1", "-b", "16",
                  str(root / f"{name}.wav")])  # fmt: skip
    synth_dialogue(root / "two-lines.wav", lines=LINES[:2])
    return root


@pytest.mark.parametrize("name", ["crosstalk.wav", "rapid-turns.wav"])
def test_short_speakers_case_with_a_count(engine: Engine, name: str) -> None:
    """12.9 s and 14.5 s of two voices (16 and 18 windows): FunASR returned 1 speaker, no warning."""
    for count in (SpeakerCount(exact=2), SpeakerCount(min=2, max=3)):
        t = engine.transcribe(CASES / name, TranscribeOptions(num_speakers=count.exact, min_speakers=count.min,
                                                              max_speakers=count.max))  # fmt: skip
        clustered = engine._clusters.last
        assert clustered is not None and len(clustered.labels) >= 16 and clustered.speakers == 2  # the request arrived
        assert t.speakers and len(t.speakers) <= 2
        assert_honoured_or_said(t, count)


def test_short_two_voice_dialogue_with_a_count(engine: Engine, clips: Path) -> None:
    t = engine.transcribe(clips / "two-lines.wav", TranscribeOptions(num_speakers=2))
    assert engine._clusters.last is not None and engine._clusters.last.speakers == 2
    assert_honoured_or_said(t, SpeakerCount(exact=2))


def test_one_window_with_two_speakers_asked(engine: Engine, clips: Path) -> None:
    t = engine.transcribe(clips / "one-word.wav", TranscribeOptions(num_speakers=2))
    assert t.sentences and t.speakers == (0,)
    assert engine._clusters.last is not None and len(engine._clusters.last.labels) == 1
    assert [w.code for w in t.warnings] == [WarningCode.SPEAKER_COUNT_NOT_MET]
    assert "exactly 2 speakers, found 1: only 1 speech window" in t.warnings[0].message


@pytest.mark.parametrize("voice", ["en-us-f3", "en-gb-m3"])
def test_one_voice_without_a_count_is_one_speaker(engine: Engine, clips: Path, voice: str) -> None:
    """The random speaker model must not invent speakers (6..19 windows are now clustered)."""
    t = engine.transcribe(clips / f"{voice}.wav")
    assert engine._clusters.last is not None and len(engine._clusters.last.labels) >= 6
    assert t.speakers == (0,) and t.warnings == ()


def test_invalid_speaker_request_is_a_job_error(engine: Engine) -> None:
    from funasr_fleet.errors import JobError

    with pytest.raises(JobError, match="min speakers"):
        engine.transcribe(CASES / "crosstalk.wav", TranscribeOptions(min_speakers=3, max_speakers=2))


def test_cli_speaker_range_and_warning(engine_env: dict[str, str], tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    def fleet(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "funasr_fleet", "transcribe", *args, "-o", str(tmp_path)],
                              env={**os.environ, **engine_env}, cwd=REPO, capture_output=True, text=True, check=False,
                              timeout=300)  # fmt: skip

    bad = fleet(str(CASES / "crosstalk.wav"), "--min-speakers", "3", "--max-speakers", "2")
    assert bad.returncode == 2 and "speakers" in bad.stderr  # refused before the engine loads
    ok = fleet(str(CASES / "crosstalk.wav"), "--min-speakers", "2", "--max-speakers", "3", "--formats", "json")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "2 speaker(s)" in ok.stderr or "warning speaker_count_not_met: asked for 2 to 3 speakers" in ok.stderr

"""Channel statistics and ``plan_channels``: pure rules on hand-made stats, and the thresholds on real inputs.

The second half decodes synthetic recordings (espeak-ng voices mixed with numpy, no model): the
planner's thresholds must put each kind of recording on the right side with a margin.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from funasr_fleet.engine.audio import decode
from funasr_fleet.engine.channels import CANCEL_DB, OWN_SPEECH, best_channel, plan_channels
from funasr_fleet.engine.channelstats import ChannelStats, StatsAccumulator
from funasr_fleet.engine.source import AudioSource
from funasr_fleet.engine.transcript import ChannelUse, WarningCode


def stats(
    n: int,
    *,
    active: list[float] | None = None,
    gram: list[list[float]] | None = None,
    own: list[list[float]] | None = None,
    under: list[list[float]] | None = None,
    level: list[float] | None = None,
) -> ChannelStats:
    """Hand-made stats: by default n independent channels of equal energy, all active, same speech."""
    eye = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
    zero = [[0.0] * n for _ in range(n)]
    return ChannelStats(
        channels=n,
        duration_s=60.0,
        gram=tuple(tuple(r) for r in (gram or [[0.01 if i == j else 0.0 for j in range(n)] for i in range(n)])),
        active_s=tuple(active or [30.0] * n),
        threshold_db=(-60.0,) * n,
        level_db=tuple(level or [-20.0] * n),
        own=tuple(tuple(r) for r in (own or eye)),
        under=tuple(tuple(r) for r in (under or zero)),
        overlap=tuple(tuple(r) for r in eye),
    )


def codes(plan: tuple[ChannelUse, tuple]) -> list[str]:
    return [w.code for w in plan[1]]


# --- the rules, on hand-made stats ----------------------------------------------------------------
@pytest.mark.parametrize("mode", ["auto", "mix", "split"])
def test_mono_is_single(mode: str) -> None:
    assert plan_channels(stats(1), mode) == (ChannelUse("single", (0,)), ())  # type: ignore[arg-type]


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError):
        plan_channels(stats(2), "both")  # type: ignore[arg-type]


def test_exact_inverse_falls_back_to_one_channel_with_a_warning() -> None:
    inverse = stats(2, gram=[[0.01, -0.01], [-0.01, 0.01]])
    assert inverse.mix_retention_db((0, 1)) == -math.inf
    for mode in ("auto", "mix"):
        use, warnings = plan_channels(inverse, mode)  # type: ignore[arg-type]
        assert use == ChannelUse("single", (0,))
        assert [w.code for w in warnings] == [WarningCode.CHANNELS_CANCELLED] and "silent" in warnings[0].message


def test_partial_inverse_falls_back_to_the_louder_channel() -> None:
    # right = -0.8 left: the mix keeps 0.01 of the left's energy
    g = [[0.01, -0.008], [-0.008, 0.0064]]
    s = stats(2, gram=g, active=[30.0, 25.0], level=[-20.0, -22.0])
    assert s.mix_retention_db((0, 1)) < CANCEL_DB
    assert plan_channels(s, "mix")[0] == ChannelUse("single", (0,))
    assert codes(plan_channels(s, "mix")) == ["channels_cancelled"]
    # the channel with more speech wins, whichever index it has
    assert best_channel(stats(2, active=[10.0, 25.0]), (0, 1)) == 1


def test_mildly_anticorrelated_channels_still_mix() -> None:
    s = stats(2, gram=[[0.01, -0.004], [-0.004, 0.01]])  # correlation -0.4: the mix keeps -2.2 dB
    assert plan_channels(s, "mix") == (ChannelUse("mix", (0, 1)), ())


def test_dual_mono_mixes_in_auto_and_mix() -> None:
    dual = stats(2, gram=[[0.01, 0.01], [0.01, 0.01]], own=[[1, 0], [0, 1]])
    assert plan_channels(dual, "auto") == (ChannelUse("mix", (0, 1)), ())
    assert plan_channels(dual, "mix") == (ChannelUse("mix", (0, 1)), ())
    assert plan_channels(dual, "split") == (ChannelUse("split", (0, 1)), ())  # asked for: both kept


def test_silent_channel_is_left_out_with_a_warning() -> None:
    s = stats(2, active=[30.0, 0.1])
    for mode in ("auto", "mix", "split"):
        use, warnings = plan_channels(s, mode)  # type: ignore[arg-type]
        assert use == ChannelUse("single", (0,))
        assert [w.code for w in warnings] == ["channel_silent"] and "channel 1 " in warnings[0].message


def test_all_channels_silent_mix_everything_without_warnings() -> None:
    assert plan_channels(stats(3, active=[0.0, 0.2, 0.0]), "split") == (ChannelUse("mix", (0, 1, 2)), ())


def test_different_speech_splits_in_auto() -> None:
    call = stats(2, own=[[1.0, 0.6], [0.6, 1.0]], under=[[0.0, 0.4], [0.4, 0.0]])
    assert call.own_share(0, 1) == pytest.approx(1.0)
    assert plan_channels(call, "auto") == (ChannelUse("split", (0, 1)), ())
    assert plan_channels(call, "mix") == (ChannelUse("mix", (0, 1)), ())  # asked for: mixed
    # a caller who speaks little: most of that channel is the agent bleeding in, the rest is its own
    quiet_caller = stats(2, own=[[1.0, 1.0], [0.2, 1.0]], under=[[0.0, 0.0], [0.75, 0.0]])
    assert quiet_caller.own_share(1, 0) == pytest.approx(0.8)
    assert plan_channels(quiet_caller, "auto")[0].mode == "split"


def test_same_speech_attenuated_mixes_in_auto() -> None:
    # near and far mic: the near one has "own" frames (far one below its floor), the far one none
    room = stats(2, own=[[1.0, 0.9], [0.02, 1.0]], under=[[0.0, 0.0], [0.8, 0.0]])
    assert room.own_share(1, 0) < OWN_SPEECH
    assert plan_channels(room, "auto") == (ChannelUse("mix", (0, 1)), ())


def test_crosstalk_only_channel_is_left_out_of_a_split() -> None:
    s = stats(2, own=[[1.0, 1.0], [0.0, 1.0]], under=[[0.0, 0.0], [1.0, 0.0]])
    use, warnings = plan_channels(s, "split")
    assert use == ChannelUse("single", (0,))
    assert codes((use, warnings)) == ["channel_silent"] and "crosstalk of channel 0" in warnings[0].message


def test_many_channels_split_only_those_with_signal() -> None:
    s = stats(6, active=[20.0, 15.0, 10.0, 0.0, 0.0, 0.0], own=[[1.0] * 6 for _ in range(6)])
    use, warnings = plan_channels(s, "auto")
    assert use == ChannelUse("split", (0, 1, 2))
    assert codes((use, warnings)) == ["channel_silent"] and "channels 3, 4 and 5 of 6" in warnings[0].message
    # eight channels of one talker (same speech everywhere): mixed
    assert plan_channels(stats(8, own=[[0.0] * 8 for _ in range(8)]), "auto")[0] == ChannelUse("mix", tuple(range(8)))


def test_cancellation_check_uses_only_channels_with_signal() -> None:
    # channels 0 and 1 inverse, channel 2 silent: the mix of 0 and 1 cancels
    g = [[0.01, -0.01, 0.0], [-0.01, 0.01, 0.0], [0.0, 0.0, 0.0]]
    use, warnings = plan_channels(stats(3, gram=g, active=[30.0, 30.0, 0.0], own=[[0.0] * 3] * 3), "auto")
    assert use == ChannelUse("single", (0,)) and codes((use, warnings)) == ["channel_silent", "channels_cancelled"]


# --- the accumulator -------------------------------------------------------------------------------
def test_accumulator_is_independent_of_block_sizes() -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((16000 * 3, 2)) * [0.1, 0.01]).astype(np.float32)
    whole, pieces = StatsAccumulator(2, 16000), StatsAccumulator(2, 16000)
    whole.add(x)
    for start in range(0, len(x), 777):
        pieces.add(x[start : start + 777])
    a, b = whole.finish(), pieces.finish()
    assert a.active_s == b.active_s and a.own == b.own and a.threshold_db == b.threshold_db
    assert np.allclose(a.gram, b.gram) and a.duration_s == 3.0
    assert a.correlation(0, 1) == pytest.approx(0.0, abs=0.02)
    assert a.mix_retention_db((0, 1)) == pytest.approx(0.0, abs=0.2)  # independent: 0 dB by definition


def test_noise_only_channel_is_not_activity() -> None:
    rng = np.random.default_rng(4)
    speech_like = np.zeros(16000 * 4, dtype=np.float32)
    speech_like[16000:32000] = rng.standard_normal(16000) * 0.1  # one loud second
    hiss = (rng.standard_normal(16000 * 4) * 0.005).astype(np.float32)  # steady -46 dBFS
    s = AudioSource.from_array(np.stack([speech_like, hiss], axis=1)).stats
    assert s.active_s[0] == pytest.approx(1.0, abs=0.05) and s.active_s[1] == 0.0


# --- thresholds on real (synthetic-speech) recordings ------------------------------------------------
CASES = {
    "mono-control.wav": ("single", (0,), []),
    "out-of-phase.wav": ("single", (0,), ["channels_cancelled"]),
    "out-of-phase.mp3": ("single", (0,), ["channels_cancelled"]),
    "partial-inverse.wav": ("single", (0,), ["channels_cancelled"]),
    "call-centre.wav": ("split", (0, 1), []),
    "dual-mono.wav": ("mix", (0, 1), []),
    "silent-right.wav": ("single", (0,), ["channel_silent"]),
    "room.wav": ("mix", (0, 1), []),
    "six.wav": ("split", (0, 1, 2), ["channel_silent"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_auto_plan_on_recordings(channels_dir: Path, name: str) -> None:
    mode, used, warnings = CASES[name]
    with decode(channels_dir / name) as audio:
        use, got = plan_channels(audio.stats, "auto")
    assert (use.mode, use.channels, [w.code for w in got]) == (mode, used, warnings)


def test_recordings_fall_far_from_the_thresholds(channels_dir: Path) -> None:
    """Margins: what each rule measures on its inputs, not just which side they land on."""
    with decode(channels_dir / "partial-inverse.wav") as a:
        assert a.stats.mix_retention_db((0, 1)) < CANCEL_DB - 6  # about -16 dB
    with decode(channels_dir / "dual-mono.wav") as a:
        assert a.stats.mix_retention_db((0, 1)) == pytest.approx(3.0, abs=0.1)
        assert a.stats.own_share(0, 1) < 0.05
    with decode(channels_dir / "call-centre.wav") as a:
        assert min(a.stats.own_share(0, 1), a.stats.own_share(1, 0)) > 2 * OWN_SPEECH  # about 1.0
        assert a.stats.mix_retention_db((0, 1)) > CANCEL_DB + 5  # independent voices: about 0 dB
    with decode(channels_dir / "room.wav") as a:
        assert max(a.stats.own_share(0, 1), a.stats.own_share(1, 0)) < OWN_SPEECH / 2  # about 0.1


# --- crosstalk gating (split channels) ---------------------------------------------------------------
def test_isolated_channel_mutes_the_other_party_and_keeps_its_own(channels_dir: Path, tmp_path: Path) -> None:
    from tests.fixtures.audio import voice_tracks

    a, b = voice_tracks(tmp_path / "voices")
    with decode(channels_dir / "call-centre.wav") as audio:
        plain, isolated = audio.read(channels=(1,)), audio.read_isolated(channel=1)
    only_a = (np.abs(a) > 0.05) & (b == 0)  # the other party talks: channel 1 holds its -30 dB bleed
    only_b = (np.abs(b) > 0.05) & (a == 0)
    assert np.abs(plain[only_a]).max() > 0.001  # the bleed is there
    assert np.mean(isolated[only_a] == 0.0) > 0.95  # and is muted (frame edges aside)
    assert np.mean(isolated[only_b] == plain[only_b]) > 0.99  # the channel's own speech is untouched


def test_isolated_windows_equal_slices_of_the_whole(channels_dir: Path) -> None:
    with decode(channels_dir / "six.wav") as audio:
        n = audio.num_samples
        for channel in (0, 2, 5):
            whole = audio.read_isolated(channel=channel)
            assert whole.shape == (n,) and whole.dtype == np.float32
            for start, stop in ((0, 1), (17, 16_000 * 31 + 5), (n // 2 + 3, n + 50), (n - 1, n)):
                assert np.array_equal(audio.read_isolated(start, stop, channel), whole[start:stop])
        with pytest.raises(ValueError):
            audio.read_isolated(channel=6)
    mono = AudioSource.from_array(np.linspace(-0.5, 0.5, 16_000, dtype=np.float32))
    assert np.array_equal(mono.read_isolated(), mono.read())

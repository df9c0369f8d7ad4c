"""What to do with a recording's channels: ``plan_channels`` (pure; decided from ``ChannelStats``).

- mono → ``single``.
- ``mix`` → the average of the channels that carry signal, unless that average would cancel (an
  inverted channel, or one close to it): then the best channel alone + ``channels_cancelled``.
- ``split`` → every channel with signal of its own is transcribed on its own (speaker = channel);
  channels with no signal, or with nothing but another channel's crosstalk, are left out
  (``channel_silent``).
- ``auto`` → ``split`` when at least two channels carry different speech (each has a good share
  of speech the other does not: a call-centre recording), otherwise ``mix`` (dual mono, two mics in
  one room), with the same cancellation fallback.

The thresholds below were set on synthetic inputs (tests/test_channels.py makes them) and checked
on the stereo-phase case; each is far from where those inputs fall (see the module's tests).
"""

from __future__ import annotations

import math

from funasr_fleet.engine.channelstats import ChannelStats
from funasr_fleet.engine.transcript import ChannelMode, ChannelUse, TranscriptWarning, WarningCode

MIN_ACTIVE_S = 0.5  # a channel with less active audio than this holds no usable signal
CANCEL_DB = -6.0  # mix keeps < 1/4 of the energy uncorrelated channels would keep: it cancels
OWN_SPEECH = 0.3  # ChannelStats.own_share both ways at least this: the channels carry different speech
CROSSTALK = 0.8  # share of a channel's active frames dominated by another channel: it only echoes that one

Plan = tuple[ChannelUse, tuple[TranscriptWarning, ...]]


def plan_channels(stats: ChannelStats, requested: ChannelMode = "auto") -> Plan:
    """Decide mix / split / single for ``stats`` as ``requested``; returns the use and its warnings.

    ``requested``: ``auto`` | ``mix`` | ``split`` (``TranscribeOptions.channels``). Raises
    ValueError for another value. Never returns an empty channel list.
    """
    if requested not in ("auto", "mix", "split"):
        raise ValueError(f"channels must be auto, mix or split, not {requested!r}")
    n = stats.channels
    if n <= 1:
        return ChannelUse("single", (0,)), ()
    everything = tuple(range(n))
    signal = tuple(c for c in everything if stats.active_s[c] >= MIN_ACTIVE_S)
    if not signal:
        return ChannelUse("mix", everything), ()  # nothing to choose between: silence is silence
    warnings: list[TranscriptWarning] = []
    silent = tuple(c for c in everything if c not in signal)
    if silent:
        warnings.append(TranscriptWarning(
            WarningCode.CHANNEL_SILENT.value,
            f"{_channels(silent)} of {n} {'holds' if len(silent) == 1 else 'hold'} no usable signal: left out",
        ))  # fmt: skip
    if requested == "split" or (requested == "auto" and _different_speech(stats, signal)):
        own, echoes = _drop_crosstalk(stats, signal)
        if echoes:
            warnings.append(TranscriptWarning(
                WarningCode.CHANNEL_SILENT.value,
                "; ".join(f"channel {c} holds only crosstalk of channel {src}" for c, src in echoes)
                + ": left out of the split",
            ))  # fmt: skip
        if len(own) == 1:
            return ChannelUse("single", own), tuple(warnings)
        return ChannelUse("split", own), tuple(warnings)
    if len(signal) == 1:
        return ChannelUse("single", signal), tuple(warnings)
    retention = stats.mix_retention_db(signal)
    if retention < CANCEL_DB:
        best = best_channel(stats, signal)
        below = retention - 10 * math.log10(len(signal))  # dB relative to the channels' mean energy
        level = "silent" if math.isinf(below) else f"{-below:.0f} dB below the channels' level"
        warnings.append(TranscriptWarning(
            WarningCode.CHANNELS_CANCELLED.value,
            f"mixing {_channels(signal)} would cancel the speech (the mix is {level}: one channel carries "
            f"another's signal phase-inverted); channel {best} was transcribed alone",
        ))  # fmt: skip
        return ChannelUse("single", (best,)), tuple(warnings)
    return ChannelUse("mix", signal), tuple(warnings)


def different_speech(stats: ChannelStats, i: int, j: int) -> bool:
    """Channels i and j each carry a good share of speech the other does not (not one talker twice)."""
    return stats.own_share(i, j) >= OWN_SPEECH and stats.own_share(j, i) >= OWN_SPEECH


def best_channel(stats: ChannelStats, channels: tuple[int, ...]) -> int:
    """The channel with the most active audio (then the louder, then the lower index)."""
    return max(channels, key=lambda c: (round(stats.active_s[c], 2), stats.level_db[c], -c))


def _different_speech(stats: ChannelStats, channels: tuple[int, ...]) -> bool:
    return any(different_speech(stats, i, j) for i in channels for j in channels if i < j)


def _drop_crosstalk(stats: ChannelStats, channels: tuple[int, ...]) -> tuple[tuple[int, ...], list[tuple[int, int]]]:
    """Channels whose activity is almost all another channel's speech bleeding in are not speakers.

    A channel is dropped only when its source is not itself dominated by it, so two copies of
    one talker (dual mono asked to split) both stay, and at least one channel always stays.
    """
    keep: list[int] = []
    echoes: list[tuple[int, int]] = []
    for c in channels:
        src = max((j for j in channels if j != c), key=lambda j: stats.under[c][j], default=None)
        if src is not None and stats.under[c][src] >= CROSSTALK and stats.under[src][c] < CROSSTALK:
            echoes.append((c, src))
        else:
            keep.append(c)
    if not keep:
        return (best_channel(stats, channels),), []
    return tuple(keep), echoes


def _channels(channels: tuple[int, ...]) -> str:
    if len(channels) == 1:
        return f"channel {channels[0]}"
    return "channels " + ", ".join(str(c) for c in channels[:-1]) + f" and {channels[-1]}"

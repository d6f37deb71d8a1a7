"""``SyntheticAudio``: a procedurally generated, seeded audio classification set (no download).

Each class is a combination of three cues: vowel (the formant envelope of a harmonic voice:
a, e, o, u), pitch contour (flat, rising, falling, vibrato) and rhythm (one steady note, or
3-4 short pulses): 4 x 4 x 2 = 32 classes. Clips come from speakers (6 per split by default,
different in every split), each with its own vocal-tract length, vowel accent, pitch centre,
tilt, bandwidths, breathiness, room noise colour and recording-channel EQ, so the test split
asks for generalisation to unseen speakers, as a speaker-disjoint split of real recordings
does. Everything else is drawn per clip: pitch, formant jitter, contour depth and rate, onset
(shift), background noise, mains hum, a quieter distractor note, SNR and gain. See
``docs/synthetic.md``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from kdcore.data.audio import AudioExample

# Formant centres F1, F2, F3 (Hz) of an adult voice. "a"/"o" and "o"/"u" differ by less than
# the vocal-tract-length scaling, so no single formant separates them: F1 and F2 together do.
VOWELS = {
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
}
F0_RANGE = (100.0, 220.0)  # Hz: speakers' pitch centres (low: the harmonics sample formants)
F0_SPREAD = 0.3  # octaves: a speaker's notes start within +-0.3 octave of the centre
TRACT_SCALE = 0.08  # vocal-tract length: every formant of a speaker times 1 +- 0.08
ACCENT = 0.05  # a speaker's vowels: each formant of each vowel times 1 +- 0.05
CLIP_JITTER = 0.02  # each formant of each note times 1 +- 0.02
CHANNEL_DB = 6.0  # recording channel: three EQ bumps of +-6 dB
CONTOURS = ("flat", "rise", "fall", "vibrato")
RHYTHMS = ("steady", "pulsed")
CLASS_NAMES = tuple(f"{v}-{c}-{r}" for v in VOWELS for c in CONTOURS for r in RHYTHMS)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Speaker:
    """What stays fixed across one speaker's clips: vocal-tract length, accent (how each vowel's
    formants sit), pitch centre, spectral tilt, formant bandwidths, breathiness, the room's
    background colour and the recording channel's EQ."""

    tract: float
    accent: np.ndarray  # (4 vowels, 3 formants) multiplicative offsets
    f0: float
    tilt: float
    bandwidth: float
    breath_centre: float
    breath_db: float
    room_colour: float
    channel: tuple[tuple[float, float, float], ...]  # (centre Hz, width octaves, gain dB)

    @classmethod
    def draw(cls, rng: np.random.Generator, sample_rate: int) -> Speaker:
        top = min(3200.0, 0.4 * sample_rate)
        return cls(
            tract=rng.uniform(1 - TRACT_SCALE, 1 + TRACT_SCALE),
            accent=rng.uniform(1 - ACCENT, 1 + ACCENT, (len(VOWELS), 3)),
            f0=float(np.exp(rng.uniform(np.log(F0_RANGE[0]), np.log(F0_RANGE[1])))),
            tilt=rng.uniform(0.3, 0.9),
            bandwidth=rng.uniform(0.8, 1.25),
            breath_centre=rng.uniform(800.0, top),
            breath_db=rng.uniform(-20.0, -10.0),
            room_colour=rng.uniform(0.3, 1.7),
            channel=tuple((float(np.exp(rng.uniform(np.log(150.0), np.log(0.45 * sample_rate)))),
                           rng.uniform(0.3, 1.0), rng.uniform(-CHANNEL_DB, CHANNEL_DB))
                          for _ in range(3)),
        )

    def formants(self, vowel: str) -> np.ndarray:
        """F1, F2, F3 (Hz) of ``vowel`` in this speaker's voice."""
        row = tuple(VOWELS).index(vowel)
        return np.asarray(VOWELS[vowel]) * self.tract * self.accent[row]


def _ramp_envelope(n: int, ramp: int) -> np.ndarray:
    env = np.ones(n)
    ramp = min(ramp, n // 2)
    if ramp > 0:
        up = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, ramp))
        env[:ramp] = up
        env[n - ramp:] = up[::-1]
    return env


def _band_noise(rng: np.random.Generator, n: int, sr: int, low: float, high: float) -> np.ndarray:
    """White noise band-limited to [low, high] Hz with an FFT mask, unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    spectrum[(freqs < low) | (freqs > high)] = 0.0
    band = np.fft.irfft(spectrum, n)
    return band / (np.sqrt(np.mean(band**2)) + 1e-12)


def _colour_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(spectrum.shape[0], dtype=np.float64)
    freqs[0] = 1.0
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _pitch_track(rng: np.random.Generator, contour: str, f0: float, n: int, sr: int) -> np.ndarray:
    """Instantaneous frequency (Hz) of the fundamental over ``n`` samples."""
    position = np.linspace(0.0, 1.0, n)
    if contour == "flat":
        drift = rng.uniform(-0.04, 0.04)  # at most 1/25 octave: far below rise/fall depths
        return f0 * 2.0 ** (drift * position)
    if contour == "rise":
        return f0 * 2.0 ** (rng.uniform(0.25, 0.9) * position)
    if contour == "fall":
        return f0 * 2.0 ** (-rng.uniform(0.25, 0.9) * position)
    rate = rng.uniform(4.0, 9.0)
    depth = rng.uniform(0.04, 0.09)
    seconds = np.arange(n) / sr
    return f0 * (1.0 + depth * np.sin(2 * np.pi * rate * seconds + rng.uniform(0, 2 * np.pi)))


def _voice(rng: np.random.Generator, vowel: str, speaker: Speaker, track: np.ndarray,
           sr: int) -> np.ndarray:
    """Harmonics of the pitch track shaped by the speaker's rendering of the vowel's formant
    envelope, alias-free (harmonics kept below 0.45*sr). Each harmonic's level follows the
    envelope at its own instantaneous frequency, so gliding pitch moves harmonics through the
    formants."""
    phase = 2 * np.pi * np.cumsum(track) / sr + rng.uniform(0, 2 * np.pi)
    tilt = speaker.tilt * rng.uniform(0.85, 1.15)
    top = max(int(0.45 * sr / track.max()), 1)
    centres = speaker.formants(vowel) * rng.uniform(1 - CLIP_JITTER, 1 + CLIP_JITTER, 3)
    half_widths = speaker.bandwidth * np.array(
        [rng.uniform(50, 90), rng.uniform(70, 120), rng.uniform(100, 180)])
    peaks = np.array([1.0, rng.uniform(0.4, 0.8), rng.uniform(0.15, 0.4)])
    # sin(k*phase) by the recurrence s_k = 2cos(phase) s_(k-1) - s_(k-2): no sin per harmonic.
    twice_cos = 2.0 * np.cos(phase)
    previous, current = np.zeros_like(phase), np.sin(phase)
    tone = np.zeros_like(phase)
    for k in range(1, top + 1):
        offsets = (k * track[:, None] - centres) / half_widths
        envelope = 0.03 + (peaks / (1.0 + offsets**2)).sum(axis=1)  # resonances + floor
        tone += k ** (-tilt) * rng.uniform(0.85, 1.15) * envelope * current
        previous, current = current, twice_cos * current - previous
    return tone


def _gate(rng: np.random.Generator, rhythm: str, n: int, sr: int) -> np.ndarray:
    """Amplitude gate over the clip: one long note or 3-4 short pulses, at a random onset."""
    gate = np.zeros(n)
    ramp = int(0.008 * sr)
    if rhythm == "steady":
        length = int(rng.uniform(0.45, 0.7) * n)
        start = int(rng.integers(0, n - length + 1))
        gate[start:start + length] = _ramp_envelope(length, ramp)
        return gate
    pulses = int(rng.integers(3, 5))
    lengths = (rng.uniform(0.06, 0.11, pulses) * n).astype(int)
    gaps = (rng.uniform(0.04, 0.09, pulses - 1) * n).astype(int)
    span = int(lengths.sum() + gaps.sum())
    position = int(rng.integers(0, max(n - span, 0) + 1))
    for i, length in enumerate(lengths):
        end = min(position + length, n)
        gate[position:end] = _ramp_envelope(length, ramp)[: end - position]
        position = end + (gaps[i] if i < pulses - 1 else 0)
    return gate


def _event(rng: np.random.Generator, vowel: str, contour: str, rhythm: str,
           speaker: Speaker, n: int, sr: int) -> np.ndarray:
    f0 = speaker.f0 * 2.0 ** rng.uniform(-F0_SPREAD, F0_SPREAD)
    track = _pitch_track(rng, contour, f0, n, sr)
    voice = _voice(rng, vowel, speaker, track, sr)
    voice /= np.sqrt(np.mean(voice**2)) + 1e-12
    centre = speaker.breath_centre * rng.uniform(0.85, 1.15)
    width = rng.uniform(150.0, 700.0)
    breath = _band_noise(rng, n, sr, centre - width / 2, centre + width / 2)
    breath_level = 10 ** ((speaker.breath_db + rng.uniform(-4.0, 4.0)) / 20)
    return (voice + breath_level * breath) * _gate(rng, rhythm, n, sr)


def _channel(speaker: Speaker, clip: np.ndarray, sr: int) -> np.ndarray:
    """The speaker's recording channel: a smooth EQ (sum of Gaussian bumps in log-frequency,
    dB) applied with an FFT."""
    spectrum = np.fft.rfft(clip)
    octaves = np.log2(np.maximum(np.fft.rfftfreq(clip.size, 1.0 / sr), 20.0))
    gain_db = np.zeros_like(octaves)
    for centre, width, height in speaker.channel:
        gain_db += height * np.exp(-0.5 * ((octaves - np.log2(centre)) / width) ** 2)
    return np.fft.irfft(spectrum * 10 ** (gain_db / 20), clip.size)


def synthesize(rng: np.random.Generator, label: int, num_samples: int, sample_rate: int,
               snr_db: tuple[float, float] = (-6.0, 12.0),
               speaker: Speaker | None = None) -> np.ndarray:
    """One clip of class ``label`` as float64 (num_samples,), peak at most 1, spoken by
    ``speaker`` (drawn from ``rng`` when None)."""
    if speaker is None:
        speaker = Speaker.draw(rng, sample_rate)
    vowel, contour, rhythm = CLASS_NAMES[label].split("-")
    n, sr = num_samples, sample_rate
    foreground = _event(rng, vowel, contour, rhythm, speaker, n, sr)
    fg_power = np.mean(foreground**2) + 1e-12

    background = _colour_noise(rng, n, speaker.room_colour + rng.uniform(-0.3, 0.3))
    if rng.random() < 0.3:
        mains = rng.choice([50.0, 60.0])
        seconds = np.arange(n) / sr
        hum = sum(np.sin(2 * np.pi * mains * k * seconds) / k for k in (1, 2, 3))
        background += 10 ** (rng.uniform(-12.0, 0.0) / 20) * hum / np.sqrt(np.mean(hum**2))
    background *= np.sqrt(fg_power / np.mean(background**2))
    if rng.random() < 0.5:
        other = _event(rng, tuple(VOWELS)[rng.integers(len(VOWELS))], CONTOURS[rng.integers(4)],
                       RHYTHMS[rng.integers(2)], Speaker.draw(rng, sr), n, sr)
        distractor_level = 10 ** (rng.uniform(-18.0, -8.0) / 20)
        background += distractor_level * other * np.sqrt(fg_power / (np.mean(other**2) + 1e-12))
    snr = rng.uniform(*snr_db)
    clip = _channel(speaker, foreground + background * 10 ** (-snr / 20), sr)
    gain = 10 ** (rng.uniform(-20.0, 0.0) / 20)
    return clip * gain / (np.abs(clip).max() + 1e-12)


class SyntheticAudio(Dataset):
    """Seeded procedural audio classification set with 32 classes (``CLASS_NAMES``).

    Yields :class:`AudioExample` ``(waveform float32 (T,), label int, index int)`` with
    ``T = round(duration * sample_rate)``. Item ``i`` depends only on
    ``(seed, split, speakers, i)``, so the same arguments give identical arrays in any access
    order, and the splits share neither a clip nor a speaker. Labels cycle through the classes
    (``label = i % 32``), so a split whose size is a multiple of 32 is balanced; each block of
    32 consecutive items is one speaker's (``speaker_of``).

    Args:
        num_examples: clips in this split.
        split: ``"train"``, ``"val"`` or ``"test"`` (independent random streams).
        seed: base seed.
        sample_rate: Hz, default 16000.
        duration: seconds per clip, default 1.0.
        snr_db: range of foreground-to-background ratio (dB) drawn per clip; the default
            (-6, 12) leaves a small student well below a teacher (docs/synthetic.md).
        speakers: speakers in this split, default 6 (blocks of 32 clips go to speakers in
            turn); None draws a new speaker for every clip (no speaker shift between splits).
        cache: keep generated clips in memory (float32) after the first access.
    """

    classes: tuple[str, ...] = CLASS_NAMES

    def __init__(self, num_examples: int = 2048, *, split: str = "train", seed: int = 0,
                 sample_rate: int = 16000, duration: float = 1.0,
                 snr_db: tuple[float, float] = (-6.0, 12.0), speakers: int | None = 6,
                 cache: bool = True) -> None:
        if not isinstance(num_examples, int) or num_examples < 1:
            raise ValueError(f"num_examples must be a positive int, got {num_examples!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not isinstance(sample_rate, int) or sample_rate < 4000:
            raise ValueError(f"sample_rate must be an int >= 4000, got {sample_rate!r}")
        if not duration > 0.1:
            raise ValueError(f"duration must be > 0.1 s, got {duration!r}")
        if len(snr_db) != 2 or snr_db[0] > snr_db[1]:
            raise ValueError(f"snr_db must be a (low, high) pair, got {snr_db!r}")
        if speakers is not None and (not isinstance(speakers, int) or speakers < 1):
            raise ValueError(f"speakers must be a positive int or None, got {speakers!r}")
        self.num_examples, self.split, self.seed = num_examples, split, int(seed)
        self.speakers = speakers
        self.sample_rate, self.duration = sample_rate, float(duration)
        self.num_samples = round(duration * sample_rate)
        self.snr_db = (float(snr_db[0]), float(snr_db[1]))
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def labels(self) -> list[int]:
        return [i % self.num_classes for i in range(self.num_examples)]

    def speaker_of(self, index: int) -> int | None:
        """Speaker (0 .. speakers-1, within this split) of item ``index``; None when every clip
        has its own speaker. Each block of 32 consecutive items (one clip per class) shares one
        speaker, so every speaker has every class equally often."""
        if self.speakers is None:
            return None
        return (index // self.num_classes) % self.speakers

    def _speaker(self, speaker: int) -> Speaker:
        stream = np.random.SeedSequence([self.seed, SPLITS.index(self.split), speaker, 1])
        return Speaker.draw(np.random.default_rng(stream), self.sample_rate)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> AudioExample:
        if not -self.num_examples <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        index %= self.num_examples
        label = index % self.num_classes
        if self._cache is not None and index in self._cache:
            return AudioExample(self._cache[index], label, index)
        stream = np.random.SeedSequence([self.seed, SPLITS.index(self.split), index])
        speaker = self.speaker_of(index)
        clip = synthesize(np.random.default_rng(stream), label, self.num_samples,
                          self.sample_rate, self.snr_db,
                          None if speaker is None else self._speaker(speaker))
        waveform = torch.from_numpy(clip.astype(np.float32))
        if self._cache is not None:
            self._cache[index] = waveform
        return AudioExample(waveform, label, index)

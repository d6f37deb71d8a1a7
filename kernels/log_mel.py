"""Fused log-mel: waveform to (B, n_mels, frames) in one kernel.

Each program takes ``BLOCK_T`` frames of one item. Frame samples are read straight from the
unpadded waveform (the centre/edge padding is an index map, so no padded copy and no frame
tensor exist in memory). For each tile of ``BLOCK_F`` frequency bins:

    re, im = frames @ basis[0], frames @ basis[1]    # (BLOCK_T, win) x (win, BLOCK_F), tl.dot
    mel   += (re^2 + im^2)^(power/2) @ filterbank    # (BLOCK_T, BLOCK_F) x (BLOCK_F, M), tl.dot

The basis has the window, DC removal and pre-emphasis folded in (``kdcore.ops.log_mel.
dft_basis``). The log and ``(y + shift)/divisor`` are the epilogue; padded frames get
``pad_value``; the output is written once, transposed to (n_mels, frames).

``precision`` picks the ``tl.dot`` mode: ``"ieee"``, ``"tf32x3"``, ``"tf32"``, or ``"bf16"``
(operands cast to bf16, fp32 accumulation; the CPU interpreter rounds the operands to bf16
and multiplies in fp32, because its bf16 ``tl.dot`` is wrong).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._common import INTERPRET

BLOCK_F = 32
BLOCK_K = 32


@triton.jit
def _round_to_bf16(x):
    """fp32 ``x`` rounded to the nearest bf16 value (ties to even), kept in fp32."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr):
    if PRECISION == "bf16":
        if EMULATE_BF16:  # the interpreter's bf16 dot is wrong; same rounding, fp32 products
            acc = tl.dot(_round_to_bf16(a), _round_to_bf16(b), acc, input_precision="ieee")
        else:
            acc = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    else:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _gather_frames(x_item, position, load_ok, length, period, reflect_shift, circular_shift,
                   PAD_MODE: tl.constexpr):
    """Waveform samples at (padded) ``position``, padding by index: 0 constant, 1 reflect (any
    pad size), 2 replicate, 3 circular. Returns fp32."""
    if PAD_MODE == 0:
        load_ok = load_ok & (position >= 0) & (position < length)
        source = position
    elif PAD_MODE == 1:
        folded = (position + reflect_shift) % period
        source = tl.where(folded < length, folded, period - folded)
        source = tl.minimum(source, length - 1)
    elif PAD_MODE == 2:
        source = tl.minimum(tl.maximum(position, 0), length - 1)
    else:
        source = (position + circular_shift) % length
    return tl.load(x_item + source, mask=load_ok, other=0.0).to(tl.float32)


@triton.jit
def _power(re, im, power, POWER_MODE: tl.constexpr):
    spectrum = re * re + im * im
    if POWER_MODE == 1:
        spectrum = tl.sqrt(spectrum)
    elif POWER_MODE == 2:
        safe = tl.maximum(spectrum, 1e-30)
        spectrum = tl.where(spectrum > 0.0, tl.exp(0.5 * power * tl.log(safe)), 0.0)
    return spectrum


@triton.jit
def _log_and_store(mel, out_ptr, item, frames, frame_ok, mels, n_frames, n_mels, log_eps,
                   shift, divisor, pad_value, LOG_MODE: tl.constexpr, AFFINE: tl.constexpr):
    if LOG_MODE == 1:
        mel = tl.log(mel + log_eps)
    elif LOG_MODE == 2:
        mel = tl.log(tl.maximum(mel, log_eps))
    elif LOG_MODE == 3:
        mel = tl.log(tl.maximum(mel, log_eps)) * 0.4342944819032518
    elif LOG_MODE == 4:
        mel = tl.log(tl.maximum(mel, 1e-10)) * 4.342944819032518
    if AFFINE:
        mel = (mel + shift) / divisor
    mel = tl.where(frame_ok[:, None], mel, pad_value)
    out_offsets = (item.to(tl.int64) * n_mels * n_frames + mels[None, :] * n_frames
                   + frames[:, None])
    tl.store(out_ptr + out_offsets, mel, mask=(frames[:, None] < n_frames)
             & (mels[None, :] < n_mels))


@triton.jit
def _log_mel_kernel(x_ptr, lengths_ptr, valid_ptr, basis_ptr, fb_ptr, out_ptr,
                    samples, n_frames, hop, lead, n_mels, power, log_eps, shift, divisor,
                    pad_value,
                    N_FFT: tl.constexpr, WIN: tl.constexpr, WIN_PAD: tl.constexpr,
                    F_PAD: tl.constexpr, M_PAD: tl.constexpr, PAD_MODE: tl.constexpr,
                    POWER_MODE: tl.constexpr, LOG_MODE: tl.constexpr, AFFINE: tl.constexpr,
                    PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr):
    item = tl.program_id(0)
    tile = tl.program_id(1)
    length = tl.load(lengths_ptr + item).to(tl.int32)
    valid = tl.load(valid_ptr + item).to(tl.int32)
    frames = tile * BLOCK_T + tl.arange(0, BLOCK_T)
    frame_ok = frames < valid
    starts = frames * hop - lead
    x_item = x_ptr + item.to(tl.int64) * samples
    bins = tl.arange(0, BLOCK_F)
    taps = tl.arange(0, BLOCK_K)
    mels = tl.arange(0, M_PAD)
    # reflect/circular periods, and offsets that make every position non-negative before `%`
    period = tl.maximum(2 * (length - 1), 1)
    reflect_shift = period * (N_FFT // period + 1)
    circular_shift = length * (N_FFT // length + 1)

    mel = tl.zeros((BLOCK_T, M_PAD), dtype=tl.float32)
    for f0 in range(0, F_PAD, BLOCK_F):
        re = tl.zeros((BLOCK_T, BLOCK_F), dtype=tl.float32)
        im = tl.zeros((BLOCK_T, BLOCK_F), dtype=tl.float32)
        for k0 in range(0, WIN_PAD, BLOCK_K):
            tap = k0 + taps
            position = starts[:, None] + tap[None, :]
            load_ok = frame_ok[:, None] & (tap[None, :] < WIN)
            chunk = _gather_frames(x_item, position, load_ok, length, period, reflect_shift,
                                   circular_shift, PAD_MODE)
            basis_offsets = tap[:, None] * F_PAD + (f0 + bins)[None, :]
            cos_tile = tl.load(basis_ptr + basis_offsets)
            sin_tile = tl.load(basis_ptr + WIN_PAD * F_PAD + basis_offsets)
            re = _dot(chunk, cos_tile, re, PRECISION, EMULATE_BF16)
            im = _dot(chunk, sin_tile, im, PRECISION, EMULATE_BF16)
        spectrum = _power(re, im, power, POWER_MODE)
        fb_tile = tl.load(fb_ptr + (f0 + bins)[:, None] * M_PAD + mels[None, :])
        mel = _dot(spectrum, fb_tile, mel, PRECISION, EMULATE_BF16)
    _log_and_store(mel, out_ptr, item, frames, frame_ok, mels, n_frames, n_mels, log_eps, shift,
                   divisor, pad_value, LOG_MODE, AFFINE)


@triton.jit
def _log_mel_split_kernel(x_ptr, lengths_ptr, valid_ptr, basis_ptr, twiddle_ptr, fb_ptr, out_ptr,
                          samples, n_frames, hop, lead, n_mels, power, log_eps, shift, divisor,
                          pad_value,
                          N_FFT: tl.constexpr, WIN: tl.constexpr, HALF_PAD: tl.constexpr,
                          K_PAD: tl.constexpr, M_PAD: tl.constexpr, PAD_MODE: tl.constexpr,
                          POWER_MODE: tl.constexpr, LOG_MODE: tl.constexpr,
                          AFFINE: tl.constexpr, PRECISION: tl.constexpr,
                          EMULATE_BF16: tl.constexpr, BLOCK_T: tl.constexpr,
                          BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr):
    """The same output with half the multiply-adds (even ``n_fft``, window-only frame transform):
    ``E``/``O`` are the ``n_fft/2``-point DFTs of the even/odd windowed samples for
    ``k <= n_fft/4``, and ``X[k] = E + W^k O``, ``conj(X[n_fft/2 - k]) = E - W^k O``."""
    item = tl.program_id(0)
    tile = tl.program_id(1)
    length = tl.load(lengths_ptr + item).to(tl.int32)
    valid = tl.load(valid_ptr + item).to(tl.int32)
    frames = tile * BLOCK_T + tl.arange(0, BLOCK_T)
    frame_ok = frames < valid
    starts = frames * hop - lead
    x_item = x_ptr + item.to(tl.int64) * samples
    bins = tl.arange(0, BLOCK_F)
    taps = tl.arange(0, BLOCK_K)
    mels = tl.arange(0, M_PAD)
    period = tl.maximum(2 * (length - 1), 1)
    reflect_shift = period * (N_FFT // period + 1)
    circular_shift = length * (N_FFT // length + 1)
    plane = HALF_PAD * K_PAD

    mel = tl.zeros((BLOCK_T, M_PAD), dtype=tl.float32)
    for f0 in range(0, K_PAD, BLOCK_F):
        even_re = tl.zeros((BLOCK_T, BLOCK_F), dtype=tl.float32)
        even_im = tl.zeros((BLOCK_T, BLOCK_F), dtype=tl.float32)
        odd_re = tl.zeros((BLOCK_T, BLOCK_F), dtype=tl.float32)
        odd_im = tl.zeros((BLOCK_T, BLOCK_F), dtype=tl.float32)
        for k0 in range(0, HALF_PAD, BLOCK_K):
            tap = k0 + taps
            position = starts[:, None] + 2 * tap[None, :]
            even_ok = frame_ok[:, None] & (2 * tap[None, :] < WIN)
            odd_ok = frame_ok[:, None] & (2 * tap[None, :] + 1 < WIN)
            even = _gather_frames(x_item, position, even_ok, length, period, reflect_shift,
                                  circular_shift, PAD_MODE)
            odd = _gather_frames(x_item, position + 1, odd_ok, length, period, reflect_shift,
                                 circular_shift, PAD_MODE)
            offsets = tap[:, None] * K_PAD + (f0 + bins)[None, :]
            even_re = _dot(even, tl.load(basis_ptr + offsets), even_re, PRECISION, EMULATE_BF16)
            even_im = _dot(even, tl.load(basis_ptr + plane + offsets), even_im, PRECISION,
                           EMULATE_BF16)
            odd_re = _dot(odd, tl.load(basis_ptr + 2 * plane + offsets), odd_re, PRECISION,
                          EMULATE_BF16)
            odd_im = _dot(odd, tl.load(basis_ptr + 3 * plane + offsets), odd_im, PRECISION,
                          EMULATE_BF16)
        twiddle_re = tl.load(twiddle_ptr + f0 + bins)[None, :]
        twiddle_im = tl.load(twiddle_ptr + K_PAD + f0 + bins)[None, :]
        turned_re = twiddle_re * odd_re - twiddle_im * odd_im
        turned_im = twiddle_re * odd_im + twiddle_im * odd_re
        low = _power(even_re + turned_re, even_im + turned_im, power, POWER_MODE)
        high = _power(even_re - turned_re, even_im - turned_im, power, POWER_MODE)
        fb_offsets = (f0 + bins)[:, None] * M_PAD + mels[None, :]
        mel = _dot(low, tl.load(fb_ptr + fb_offsets), mel, PRECISION, EMULATE_BF16)
        mel = _dot(high, tl.load(fb_ptr + K_PAD * M_PAD + fb_offsets), mel, PRECISION,
                   EMULATE_BF16)
    _log_and_store(mel, out_ptr, item, frames, frame_ok, mels, n_frames, n_mels, log_eps, shift,
                   divisor, pad_value, LOG_MODE, AFFINE)


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


class LogMelTables(NamedTuple):
    """Device tables for one setting, zero-padded to the kernel tiles, fp32.

    Direct kernel: ``basis`` (2, win_pad, F_pad), ``filterbank`` (F_pad, M_pad), no twiddle.
    Split kernel: ``basis`` (4, half_pad, K_pad) (even cos/sin, odd cos/sin), ``filterbank``
    (2, K_pad, M_pad) (rows for bins ``k`` and ``n_fft/2 - k``), ``twiddle`` (2, K_pad)."""

    basis: torch.Tensor
    filterbank: torch.Tensor
    twiddle: torch.Tensor | None = None


def _mel_pad(n_mels: int) -> int:
    return max(16, triton.next_power_of_2(n_mels))


def log_mel_tables(basis: torch.Tensor, filterbank: torch.Tensor) -> LogMelTables:
    """Tables for the direct kernel from a (2, win, F) ``basis`` (any frame transform folded in)
    and an (F, M) ``filterbank``."""
    _, win, n_freqs = basis.shape
    win_pad, f_pad = _round_up(win, BLOCK_K), _round_up(n_freqs, BLOCK_F)
    basis_padded = basis.new_zeros((2, win_pad, f_pad), dtype=torch.float32)
    basis_padded[:, :win, :n_freqs] = basis
    fb_padded = filterbank.new_zeros((f_pad, _mel_pad(filterbank.shape[1])), dtype=torch.float32)
    fb_padded[:n_freqs, :filterbank.shape[1]] = filterbank
    return LogMelTables(basis_padded, fb_padded)


def log_mel_split_tables(window: torch.Tensor, n_fft: int,
                         filterbank: torch.Tensor) -> LogMelTables:
    """Tables for the split kernel (even ``n_fft``, frames only windowed): (win,) ``window`` and
    (n_fft/2+1, M) ``filterbank``, built in float64."""
    if n_fft % 2:
        raise ValueError(f"the split kernel needs an even n_fft, got {n_fft}")
    device = filterbank.device
    window = window.double().cpu()
    win, half = window.shape[0], n_fft // 2
    count = n_fft // 4 + 1  # E and O at k = 0 .. n_fft/4 give every bin
    half_pad, k_pad = _round_up((win + 1) // 2, BLOCK_K), _round_up(count, BLOCK_F)
    m = torch.arange(half_pad, dtype=torch.float64)
    k = torch.arange(k_pad, dtype=torch.float64)
    angle = 2.0 * math.pi * torch.remainder(m[:, None] * k[None, :], half) / half
    padded = torch.zeros(2 * half_pad + 2, dtype=torch.float64)
    padded[:win] = window
    even_w, odd_w = padded[0:2 * half_pad:2, None], padded[1:2 * half_pad:2, None]
    live = (k < count)[None, :]
    basis = torch.stack([even_w * torch.cos(angle), -even_w * torch.sin(angle),
                         odd_w * torch.cos(angle), -odd_w * torch.sin(angle)]) * live
    turn = 2.0 * math.pi * k / n_fft
    twiddle = torch.stack([torch.cos(turn), -torch.sin(turn)]) * (k < count)
    filterbank = filterbank.double().cpu()
    n_mels = filterbank.shape[1]
    fb = torch.zeros((2, k_pad, _mel_pad(n_mels)), dtype=torch.float64)
    fb[0, :count, :n_mels] = filterbank[:count]
    for index in range(count):
        mirrored = half - index
        if mirrored >= count:  # bins up to n_fft/4 come from the low half already
            fb[1, index, :n_mels] = filterbank[mirrored]
    return LogMelTables(basis.float().to(device), fb.float().to(device),
                        twiddle.float().to(device))


def log_mel_forward(waveform: torch.Tensor, lengths: torch.Tensor, valid_frames: torch.Tensor,
                    tables: LogMelTables, *, n_fft: int,
                    win_length: int, hop_length: int, lead: int, n_mels: int, n_frames: int,
                    pad_mode: int, power: float, log_mode: int, log_eps: float, shift: float,
                    divisor: float, pad_value: float, precision: str) -> torch.Tensor:
    """(B, n_mels, n_frames) fp32 log-mel of (B, T) ``waveform`` (fp32/bf16/fp16, contiguous).

    ``tables`` come from :func:`log_mel_tables` (direct kernel) or :func:`log_mel_split_tables`
    (split kernel, half the multiply-adds); ``lengths``/``valid_frames`` are
    (B,) int valid samples/frames; ``pad_mode``: 0 constant, 1 reflect, 2 replicate,
    3 circular; ``log_mode``: 0 none, 1 ln, 2 ln_clamp, 3 log10_clamp, 4 db."""
    batch, samples = waveform.shape
    out = torch.empty((batch, n_mels, n_frames), dtype=torch.float32, device=waveform.device)
    if batch == 0 or n_frames == 0:
        return out
    block_t = 64 if batch * n_frames >= 64 * 512 else 32
    power_mode = 0 if power == 2.0 else 1 if power == 1.0 else 2
    grid = (batch, triton.cdiv(n_frames, block_t))
    scalars = (samples, n_frames, hop_length, lead, n_mels, float(power), float(log_eps),
               float(shift), float(divisor), float(pad_value))
    options = dict(N_FFT=n_fft, WIN=win_length, M_PAD=tables.filterbank.shape[-1],
                   PAD_MODE=pad_mode, POWER_MODE=power_mode, LOG_MODE=log_mode,
                   AFFINE=shift != 0.0 or divisor != 1.0, PRECISION=precision,
                   EMULATE_BF16=INTERPRET, BLOCK_T=block_t, BLOCK_F=BLOCK_F, BLOCK_K=BLOCK_K,
                   num_warps=4 if block_t == 32 else 8)
    if tables.twiddle is None:
        _, win_pad, f_pad = tables.basis.shape
        _log_mel_kernel[grid](waveform, lengths, valid_frames, tables.basis, tables.filterbank,
                              out, *scalars, WIN_PAD=win_pad, F_PAD=f_pad, **options)
    else:
        _, half_pad, k_pad = tables.basis.shape
        _log_mel_split_kernel[grid](waveform, lengths, valid_frames, tables.basis,
                                    tables.twiddle, tables.filterbank, out, *scalars,
                                    HALF_PAD=half_pad, K_PAD=k_pad, **options)
    return out

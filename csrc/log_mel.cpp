// Log-mel on the CPU: for each chunk of frames (sized to stay in cache), gather the frames
// straight from the waveform (padding by index), window them, run ATen's real FFT (MKL or
// pocketfft, as torch.stft does), then one fused pass computes power, the sparse mel
// projection and the log, and writes the (n_mels, frames) output once. Chunks run in parallel.
// Semantics: kdcore/ops/log_mel.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

enum PadMode { kConstant = 0, kReflect = 1, kReplicate = 2, kCircular = 3 };
enum LogMode { kNone = 0, kLn = 1, kLnClamp = 2, kLog10Clamp = 3, kDb = 4 };
constexpr int64_t kChunkFrames = 128;

// Sample index for padded position j of an item with `length` samples; -1 means zero.
inline int64_t fold_index(int64_t j, int64_t length, int64_t pad_mode) {
  if (j >= 0 && j < length) return j;
  switch (pad_mode) {
    case kReflect: {
      if (length == 1) return 0;
      const int64_t period = 2 * (length - 1);
      int64_t m = j % period;
      if (m < 0) m += period;
      return m < length ? m : period - m;
    }
    case kReplicate:
      return j < 0 ? 0 : length - 1;
    case kCircular: {
      int64_t m = j % length;
      return m < 0 ? m + length : m;
    }
    default:
      return -1;
  }
}

template <typename scalar_t>
inline scalar_t apply_log(scalar_t x, int64_t log_mode, double eps) {
  switch (log_mode) {
    case kLn:
      return std::log(x + static_cast<scalar_t>(eps));
    case kLnClamp:
      return std::log(std::max(x, static_cast<scalar_t>(eps)));
    case kLog10Clamp:
      return std::log10(std::max(x, static_cast<scalar_t>(eps)));
    case kDb:
      return static_cast<scalar_t>(10) * std::log10(std::max(x, static_cast<scalar_t>(1e-10)));
    default:
      return x;
  }
}

template <typename scalar_t>
void log_mel_impl(const at::Tensor& waveform, const at::Tensor& lengths,
                  const at::Tensor& valid_frames, const at::Tensor& window,
                  const at::Tensor& filterbank, int64_t n_fft, int64_t hop, int64_t lead,
                  int64_t pad_mode, int64_t n_frames, double preemphasis, bool remove_dc,
                  double power, int64_t log_mode, double log_eps, double shift, double divisor,
                  double pad_value, at::Tensor& out) {
  const int64_t batch = waveform.size(0);
  const int64_t samples = waveform.size(1);
  const int64_t win = window.size(0);
  const int64_t n_freqs = filterbank.size(0);
  const int64_t n_mels = filterbank.size(1);
  const scalar_t* x = waveform.data_ptr<scalar_t>();
  const scalar_t* w = window.data_ptr<scalar_t>();
  const int64_t* item_lengths = lengths.data_ptr<int64_t>();
  const int64_t* item_valid = valid_frames.data_ptr<int64_t>();
  scalar_t* y = out.data_ptr<scalar_t>();

  // Sparse filterbank: each filter's non-zero bin range and its weights, contiguous.
  const at::Tensor filters = filterbank.t().contiguous();
  const scalar_t* fb = filters.data_ptr<scalar_t>();
  std::vector<int64_t> first(n_mels), last(n_mels);
  for (int64_t m = 0; m < n_mels; ++m) {
    int64_t lo = n_freqs, hi = 0;
    for (int64_t k = 0; k < n_freqs; ++k) {
      if (fb[m * n_freqs + k] != scalar_t(0)) {
        lo = std::min(lo, k);
        hi = k + 1;
      }
    }
    first[m] = lo < hi ? lo : 0;
    last[m] = lo < hi ? hi : 0;
  }

  const int64_t chunks = (n_frames + kChunkFrames - 1) / kChunkFrames;
  const auto options = waveform.options();
  const scalar_t scale = static_cast<scalar_t>(1.0 / divisor);
  const scalar_t offset = static_cast<scalar_t>(shift);
  const scalar_t fill = static_cast<scalar_t>(pad_value);
  const scalar_t emphasis = static_cast<scalar_t>(preemphasis);
  const bool affine = shift != 0.0 || divisor != 1.0;
  const bool plain_window = !remove_dc && preemphasis == 0.0;

  at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor frames = at::zeros({kChunkFrames, n_fft}, options);
    scalar_t* frame_data = frames.data_ptr<scalar_t>();
    std::vector<scalar_t> raw(win), spectrum_power(n_freqs), mel(kChunkFrames * n_mels);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t b = unit / chunks;
      const int64_t t0 = (unit % chunks) * kChunkFrames;
      const int64_t count = std::min(kChunkFrames, n_frames - t0);
      const int64_t computed = std::max<int64_t>(0, std::min(count, item_valid[b] - t0));
      const int64_t length = item_lengths[b];
      const scalar_t* item = x + b * samples;
      for (int64_t t = 0; t < computed; ++t) {
        const int64_t start = (t0 + t) * hop - lead;
        scalar_t* row = frame_data + t * n_fft;
        if (plain_window && start >= 0 && start + win <= length) {
          for (int64_t n = 0; n < win; ++n) row[n] = item[start + n] * w[n];
          continue;
        }
        for (int64_t n = 0; n < win; ++n) {
          const int64_t source = fold_index(start + n, length, pad_mode);
          raw[n] = source < 0 ? scalar_t(0) : item[source];
        }
        if (remove_dc) {
          scalar_t mean = 0;
          for (int64_t n = 0; n < win; ++n) mean += raw[n];
          mean /= static_cast<scalar_t>(win);
          for (int64_t n = 0; n < win; ++n) raw[n] -= mean;
        }
        if (preemphasis != 0.0) {
          for (int64_t n = win - 1; n > 0; --n) raw[n] -= emphasis * raw[n - 1];
          raw[0] -= emphasis * raw[0];
        }
        for (int64_t n = 0; n < win; ++n) row[n] = raw[n] * w[n];
      }
      if (computed > 0) {
        const at::Tensor spectrum =
            at::view_as_real(at::fft_rfft(frames.narrow(0, 0, computed), c10::nullopt, -1));
        const scalar_t* re_im = spectrum.data_ptr<scalar_t>();
        for (int64_t t = 0; t < computed; ++t) {
          const scalar_t* bins = re_im + t * 2 * n_freqs;
          for (int64_t k = 0; k < n_freqs; ++k) {
            const scalar_t p = bins[2 * k] * bins[2 * k] + bins[2 * k + 1] * bins[2 * k + 1];
            spectrum_power[k] = power == 2.0   ? p
                                : power == 1.0 ? std::sqrt(p)
                                               : std::pow(p, static_cast<scalar_t>(power / 2));
          }
          for (int64_t m = 0; m < n_mels; ++m) {
            scalar_t acc = 0;
            const scalar_t* weights = fb + m * n_freqs;
            for (int64_t k = first[m]; k < last[m]; ++k) acc += weights[k] * spectrum_power[k];
            scalar_t value = apply_log(acc, log_mode, log_eps);
            if (affine) value = (value + offset) * scale;
            mel[t * n_mels + m] = value;
          }
        }
      }
      scalar_t* item_out = y + b * n_mels * n_frames + t0;
      for (int64_t m = 0; m < n_mels; ++m) {
        scalar_t* row = item_out + m * n_frames;
        for (int64_t t = 0; t < computed; ++t) row[t] = mel[t * n_mels + m];
        for (int64_t t = computed; t < count; ++t) row[t] = fill;
      }
    }
  });
}

at::Tensor log_mel_cpu(const at::Tensor& waveform, const at::Tensor& lengths,
                       const at::Tensor& valid_frames, const at::Tensor& window,
                       const at::Tensor& filterbank, int64_t n_fft, int64_t hop_length,
                       int64_t lead, int64_t pad_mode, int64_t n_frames, double preemphasis,
                       bool remove_dc, double power, int64_t log_mode, double log_eps,
                       double shift, double divisor, double pad_value) {
  TORCH_CHECK(waveform.dim() == 2, "log_mel: waveform must be (B, T)");
  TORCH_CHECK(waveform.scalar_type() == at::kFloat || waveform.scalar_type() == at::kDouble,
              "log_mel: waveform must be float32 or float64");
  TORCH_CHECK(window.scalar_type() == waveform.scalar_type() &&
                  filterbank.scalar_type() == waveform.scalar_type(),
              "log_mel: window and filterbank must have the waveform's dtype");
  TORCH_CHECK(filterbank.size(0) == n_fft / 2 + 1, "log_mel: filterbank must be (n_fft/2+1, M)");
  TORCH_CHECK(window.size(0) <= n_fft, "log_mel: window longer than n_fft");
  TORCH_CHECK(lengths.scalar_type() == at::kLong && valid_frames.scalar_type() == at::kLong,
              "log_mel: lengths and valid_frames must be int64");
  const at::Tensor x = waveform.contiguous();
  const at::Tensor w = window.contiguous();
  const at::Tensor item_lengths = lengths.contiguous();
  const at::Tensor item_valid = valid_frames.contiguous();
  at::Tensor out = at::empty({x.size(0), filterbank.size(1), n_frames}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "kdcore_log_mel", [&] {
    log_mel_impl<scalar_t>(x, item_lengths, item_valid, w, filterbank, n_fft, hop_length, lead,
                           pad_mode, n_frames, preemphasis, remove_dc, power, log_mode,
                           log_eps, shift, divisor, pad_value, out);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(kdcore_cpp, m) {
  m.def(
      "log_mel(Tensor waveform, Tensor lengths, Tensor valid_frames, Tensor window, "
      "Tensor filterbank, int n_fft, int hop_length, int lead, int pad_mode, int n_frames, "
      "float preemphasis, bool remove_dc, float power, int log_mode, float log_eps, "
      "float shift, float divisor, float pad_value) -> Tensor");
}

TORCH_LIBRARY_IMPL(kdcore_cpp, CPU, m) { m.impl("log_mel", &log_mel_cpu); }

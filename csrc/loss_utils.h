// Shared pieces of the fused CPU loss kernels: vectorisable exp/log1p, argument checks, and the
// small helpers every op uses (grad_scale, validity, buffers, compile-time flag dispatch).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <type_traits>

namespace kdcore {

// exp(x) in fp32, branch-free so GCC vectorises loops calling it. Range reduction
// x = n*ln2 + r (|r| <= ln2/2, ln2 split in two for an exact n*ln2_hi), a degree-7 Taylor
// polynomial for e^r (truncation < 1e-8 relative) and 2^n built in the exponent bits.
// Returns exactly 0 below -87 (where e^x would leave the normal range), +inf above 88 (callers
// pass x <= 0) and NaN for NaN.
C10_ALWAYS_INLINE float exp_vec(float x) {
  constexpr float kLowest = -87.0f;
  constexpr float kHighest = 88.0f;
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693145751953125f;       // trailing zero bits: n*kLn2Hi is exact
  constexpr float kLn2Lo = 1.42860682030941723e-06f;  // ln2 - kLn2Hi
  constexpr float kRound = 12582912.0f;               // 1.5*2^23: adding it rounds to an integer
  constexpr int32_t kRoundBits = 0x4B400000;          // the bits of kRound
  float clamped = x < kLowest ? kLowest : x;
  clamped = clamped > 88.0f ? 88.0f : clamped;
  const float shifted = clamped * kLog2e + kRound;
  const float n = shifted - kRound;
  float r = clamped - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float poly = 1.0f / 5040.0f;
  poly = poly * r + 1.0f / 720.0f;
  poly = poly * r + 1.0f / 120.0f;
  poly = poly * r + 1.0f / 24.0f;
  poly = poly * r + 1.0f / 6.0f;
  poly = poly * r + 0.5f;
  poly = poly * r + 1.0f;
  poly = poly * r + 1.0f;
  int32_t shifted_bits;
  std::memcpy(&shifted_bits, &shifted, sizeof(shifted_bits));
  const int32_t exponent_bits = (shifted_bits - kRoundBits + 127) << 23;
  float two_to_n;
  std::memcpy(&two_to_n, &exponent_bits, sizeof(two_to_n));
  const float result = poly * two_to_n;
  const float low_or_result = x < kLowest ? 0.0f : result;
  return x > kHighest ? std::numeric_limits<float>::infinity() : low_or_result;
}

inline double exp_vec(double x) { return std::exp(x); }

// log(1 + e) for e in [0, 1] in fp32, branch-free. With m = 1 + e, or (1 + e)/2 when that is
// nearer 1, log m = 2 atanh(s), s = (m - 1)/(m + 1), |s| <= 0.172; s is formed from e directly
// so small e keeps full relative precision.
C10_ALWAYS_INLINE float log1p_unit(float e) {
  constexpr float kLn2 = 0.693147180559945309f;
  constexpr float kSqrt2Minus1 = 0.414213562373095049f;
  const bool halve = e > kSqrt2Minus1;
  // Selects feed one unconditional division: a division inside a branch blocks vectorisation.
  const float numerator = halve ? e - 1.0f : e;
  const float denominator = halve ? e + 3.0f : e + 2.0f;
  const float s = numerator / denominator;
  const float s2 = s * s;
  float tail = 1.0f / 11.0f;
  tail = tail * s2 + 1.0f / 9.0f;
  tail = tail * s2 + 1.0f / 7.0f;
  tail = tail * s2 + 1.0f / 5.0f;
  tail = tail * s2 + 1.0f / 3.0f;
  const float two_s = 2.0f * s;
  const float log_m = two_s + two_s * s2 * tail;
  return log_m + (halve ? kLn2 : 0.0f);
}

inline double log1p_unit(double e) { return std::log1p(e); }

// e^x - 1 for |x| < 1/2 in fp32 (callers select another form outside): the nested Taylor
// series x (1 + x/2 (1 + x/3 (... (1 + x/10)))), truncation below 2e-11 relative.
C10_ALWAYS_INLINE float expm1_small(float x) {
  float nested = 1.0f + x * (1.0f / 10.0f);
  nested = 1.0f + x * (1.0f / 9.0f) * nested;
  nested = 1.0f + x * (1.0f / 8.0f) * nested;
  nested = 1.0f + x * (1.0f / 7.0f) * nested;
  nested = 1.0f + x * (1.0f / 6.0f) * nested;
  nested = 1.0f + x * (1.0f / 5.0f) * nested;
  nested = 1.0f + x * (1.0f / 4.0f) * nested;
  nested = 1.0f + x * (1.0f / 3.0f) * nested;
  nested = 1.0f + x * 0.5f * nested;
  return x * nested;
}

inline double expm1_small(double x) { return std::expm1(x); }

// log(1 + y) for |y| <= 0.7 in fp32: 2 atanh(s), s = y/(2 + y), |s| <= 0.26, series to s^15
// (truncation below 1e-9 relative); s is formed from y so small y keeps full precision.
C10_ALWAYS_INLINE float log1p_small(float y) {
  const float s = y / (2.0f + y);
  const float s2 = s * s;
  float tail = 1.0f / 15.0f;
  tail = tail * s2 + 1.0f / 13.0f;
  tail = tail * s2 + 1.0f / 11.0f;
  tail = tail * s2 + 1.0f / 9.0f;
  tail = tail * s2 + 1.0f / 7.0f;
  tail = tail * s2 + 1.0f / 5.0f;
  tail = tail * s2 + 1.0f / 3.0f;
  const float two_s = 2.0f * s;
  return two_s + two_s * s2 * tail;
}

inline double log1p_small(double y) { return std::log1p(y); }

// Call f(std::integral_constant<bool, flag>) so a runtime flag becomes a template constant.
template <typename F>
inline void with_flag(bool flag, F&& f) {
  if (flag) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// Uninitialised scratch of `count` values, one per parallel chunk.
template <typename T>
inline std::unique_ptr<T[]> scratch(int64_t count) {
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(count > 0 ? count : 1)]);
}

// Rows per parallel task: enough elements that a task outweighs the scheduling cost.
inline int64_t row_grain(int64_t width) {
  constexpr int64_t kElementsPerTask = 32768;
  return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, width));
}

// student/teacher: 2-D (N, C) CPU floating tensors of one dtype, unit stride over C.
inline void check_pair(const at::Tensor& student, const at::Tensor& teacher, const char* op) {
  TORCH_CHECK(student.dim() == 2 && teacher.dim() == 2, op,
              ": student and teacher must be 2-D (N, C), got ", student.sizes(), " and ",
              teacher.sizes());
  TORCH_CHECK(student.sizes() == teacher.sizes(), op,
              ": student and teacher must have the same shape, got ", student.sizes(), " and ",
              teacher.sizes());
  TORCH_CHECK(student.scalar_type() == teacher.scalar_type(), op,
              ": student and teacher must have the same dtype, got ", student.scalar_type(),
              " and ", teacher.scalar_type());
  TORCH_CHECK(at::isFloatingType(student.scalar_type()), op,
              ": student and teacher must be floating tensors, got ", student.scalar_type());
  TORCH_CHECK(student.device().is_cpu() && teacher.device().is_cpu(), op,
              ": student and teacher must be CPU tensors");
  TORCH_CHECK(student.size(1) <= 1 || (student.stride(1) == 1 && teacher.stride(1) == 1), op,
              ": student and teacher must have unit stride over the last dimension");
}

// valid: (N,) bool or undefined (every row valid). Returns a contiguous copy if needed.
inline std::optional<at::Tensor> checked_valid(const std::optional<at::Tensor>& valid,
                                               int64_t rows, const char* op) {
  if (!valid.has_value() || !valid->defined()) {
    return std::nullopt;
  }
  TORCH_CHECK(valid->scalar_type() == at::kBool && valid->dim() == 1 && valid->size(0) == rows,
              op, ": valid must be a (", rows, ",) bool tensor, got ", valid->scalar_type(), " ",
              valid->sizes());
  TORCH_CHECK(valid->device().is_cpu(), op, ": valid must be a CPU tensor");
  return valid->contiguous();
}

inline const bool* valid_data(const std::optional<at::Tensor>& valid) {
  return valid.has_value() ? valid->const_data_ptr<bool>() : nullptr;
}

// grad_scale: 0-dim (or one-element) tensor, or undefined meaning 1. Reading a CPU scalar is free.
inline double read_grad_scale(const std::optional<at::Tensor>& grad_scale, const char* op) {
  if (!grad_scale.has_value() || !grad_scale->defined()) {
    return 1.0;
  }
  TORCH_CHECK(grad_scale->numel() == 1, op, ": grad_scale must hold one value, got shape ",
              grad_scale->sizes());
  return grad_scale->item<double>();
}

// The loss dtype: fp64 for fp64 inputs, otherwise fp32.
inline at::ScalarType loss_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

// A gradient output shaped like `like`, or the empty placeholder for an unrequested one.
inline at::Tensor gradient_output(const at::Tensor& like, bool requested) {
  if (!requested) {
    return at::empty({0}, like.options());
  }
  return at::empty(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
}

template <typename scalar_t>
inline void zero_row(scalar_t* row, int64_t width) {
  if (row != nullptr) {
    std::fill(row, row + width, static_cast<scalar_t>(0));
  }
}

}  // namespace kdcore

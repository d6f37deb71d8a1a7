// Fused softmax distillation loss on the CPU: T^2 KL(p_t||p_s), T^2 KL(p_s||p_t) or
// T^2 JSD_beta, optionally mixed with a hard-label cross-entropy at T = 1, plus the gradients
// of sum(row_loss) * grad_scale, all from one read of each input row.
//
// Per row: sweep 1 copies both logit rows into fp32 (fp64 for fp64) scratch and takes their
// maxima; the remaining passes run over that scratch, which stays in L1/L2:
//   pass 2: e = exp((x - max)/T) for both rows, their sums Z (and the KL cross term);
//   pass 3: log(Z_s/Z_t) from the summed Z_s - Z_t (exact when the rows are close);
//   (T != 1 with labels: the T = 1 student exponentials for the cross-entropy;)
//   pass 4 (JSD only): the per-class softplus terms and both KL(.||m) sums;
//   pass 5: gradients, written once in the input dtype.
// Classes with zero probability contribute 0 (0 log 0 = 0); every p*(...) term is guarded by
// p > 0, so masked (-inf) or underflowed classes never produce NaN.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>

#include "loss_utils.h"

namespace kdcore {
namespace {

constexpr int64_t kKl = 0;
constexpr int64_t kReverseKl = 1;
constexpr int64_t kJsd = 2;

struct KdOptions {
  double temperature;
  double beta;
  double alpha;
  double grad_scale;
  bool has_labels;
};

// One row's scratch: raw logits, shifted exponentials, and the T = 1 student exponentials
// the cross-entropy needs when T != 1.
template <typename acc_t>
struct KdScratch {
  explicit KdScratch(int64_t classes)
      : storage(scratch<acc_t>(5 * classes)),
        student(storage.get()),
        teacher(student + classes),
        exp_student(teacher + classes),
        exp_teacher(exp_student + classes),
        exp_hard(exp_teacher + classes) {}
  std::unique_ptr<acc_t[]> storage;
  acc_t* student;
  acc_t* teacher;
  acc_t* exp_student;
  acc_t* exp_teacher;
  acc_t* exp_hard;
};

// Softmax normaliser of a row from e = exp(u), u = shifted logits <= 0: Z = top + rest, where
// top counts the classes at the maximum (e == 1) and rest sums the others. With a unique top
// class k, 1 - p_k = rest/Z and log Z = log1p(rest) keep full relative precision, so nearly
// one-hot rows (large logits, T < 1) do not lose the small quantities that 1 - p_k and
// log Z would round away.
template <typename acc_t>
struct Normaliser {
  Normaliser(acc_t top, acc_t rest)
      : top_mass(top / (top + rest)),
        rest_mass(rest / (top + rest)),
        log_sum(std::log1p((top - 1) + rest)),
        inv_sum(acc_t(1) / (top + rest)),
        unique_top(top == 1) {}
  acc_t top_mass;   // sum of p over the top classes
  acc_t rest_mass;  // sum of p over the others (1 - p_k for a unique top class k)
  acc_t log_sum;
  acc_t inv_sum;
  bool unique_top;
};

// softplus(x) and softplus(-x) from one exp and one log1p; x = NaN (both distributions 0 at
// a class) gives 0 and 0, harmless since such terms are guarded by p > 0.
template <typename acc_t>
struct SoftplusPair {
  C10_ALWAYS_INLINE explicit SoftplusPair(acc_t x) {
    const acc_t magnitude = x > 0 ? x : -x;
    const acc_t tail = exp_vec(-magnitude);
    const acc_t shared = log1p_unit(magnitude <= acc_t(1e4) ? tail : acc_t(0));
    positive = (x > 0 ? x : acc_t(0)) + shared;
    negative = (x < 0 ? -x : acc_t(0)) + shared;
  }
  acc_t positive;
  acc_t negative;
};

template <typename acc_t>
inline void count_top(acc_t e, acc_t& top, acc_t& rest) {
  top += e >= 1 ? acc_t(1) : acc_t(0);
  rest += e >= 1 ? acc_t(0) : e;  // NaN lands here and spreads over the row
}

template <int64_t kKind, bool kStudentGrad, bool kTeacherGrad, typename scalar_t>
void kd_loss_row(const scalar_t* __restrict student_row, const scalar_t* __restrict teacher_row,
                 int64_t classes, int64_t label, const KdOptions& options,
                 KdScratch<at::opmath_type<scalar_t>>& buffers, at::opmath_type<scalar_t>* row_loss,
                 scalar_t* __restrict grad_student_row, scalar_t* __restrict grad_teacher_row) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  constexpr acc_t kNaN = std::numeric_limits<acc_t>::quiet_NaN();
  acc_t* __restrict raw_s = buffers.student;
  acc_t* __restrict raw_t = buffers.teacher;
  acc_t* __restrict exp_s = buffers.exp_student;
  acc_t* __restrict exp_t = buffers.exp_teacher;
  acc_t* __restrict exp_h = buffers.exp_hard;

  const acc_t temperature = static_cast<acc_t>(options.temperature);
  const acc_t inv_t = acc_t(1) / temperature;
  const acc_t kd_weight = options.has_labels ? static_cast<acc_t>(options.alpha) : acc_t(1);
  // 1 - alpha (and 1 - beta below) in double: in float they lose most digits near 1.
  const acc_t ce_weight = options.has_labels ? static_cast<acc_t>(1.0 - options.alpha) : acc_t(0);
  const acc_t grad_scale = static_cast<acc_t>(options.grad_scale);

  // Sweep 1: the only read of the inputs (plus the label's logit below). reverse_kl restricts
  // the student to the teacher's support: a class whose teacher logit is -inf counts as -inf
  // for the student too (the KD term and its gradient only; the CE term sees every class).
  acc_t max_s = -kInf;
  acc_t max_t = -kInf;
  acc_t max_full = -kInf;  // over the unrestricted student, for the CE term
#pragma omp simd reduction(max : max_s, max_t, max_full)
  for (int64_t c = 0; c < classes; ++c) {
    const acc_t full = static_cast<acc_t>(student_row[c]);
    const acc_t t = static_cast<acc_t>(teacher_row[c]);
    const acc_t s = kKind == kReverseKl && t == -kInf ? -kInf : full;
    raw_s[c] = s;
    raw_t[c] = t;
    max_s = s > max_s ? s : max_s;
    max_t = t > max_t ? t : max_t;
    max_full = full > max_full ? full : max_full;
  }

  // Pass 2: e = exp(u), u = (x - max)/T, and the normalisers. For the KL kinds, with p the
  // first distribution of KL(p||q): cross = sum_{p>0} e_p (u_p - u_q), split by top class.
  acc_t top_s = 0;
  acc_t rest_s = 0;
  acc_t top_t = 0;
  acc_t rest_t = 0;
  acc_t cross_top = 0;
  acc_t cross_rest = 0;
#pragma omp simd reduction(+ : top_s, rest_s, top_t, rest_t, cross_top, cross_rest)
  for (int64_t c = 0; c < classes; ++c) {
    const acc_t u_s = (raw_s[c] - max_s) * inv_t;
    const acc_t u_t = (raw_t[c] - max_t) * inv_t;
    const acc_t e_s = exp_vec(u_s);
    const acc_t e_t = exp_vec(u_t);
    exp_s[c] = e_s;
    exp_t[c] = e_t;
    count_top(e_s, top_s, rest_s);
    count_top(e_t, top_t, rest_t);
    if constexpr (kKind != kJsd) {
      const acc_t e_p = kKind == kKl ? e_t : e_s;
      const acc_t term = e_p * (kKind == kKl ? u_t - u_s : u_s - u_t);
      const acc_t guarded = e_p > 0 ? term : acc_t(0);
      cross_top += e_p >= 1 ? guarded : acc_t(0);
      cross_rest += e_p >= 1 ? acc_t(0) : guarded;
    }
  }
  const Normaliser<acc_t> norm_s(top_s, rest_s);
  const Normaliser<acc_t> norm_t(top_t, rest_t);
  const bool unique_s = norm_s.unique_top;
  const bool unique_t = norm_t.unique_top;
  // log Z_s - log Z_t: log1p of the directly summed Z_s - Z_t when the two are close, where
  // the difference of the two logs would keep only their rounding (about eps log C).
  acc_t mass_gap = 0;  // Z_s - Z_t, from e_t expm1(u_s - u_t) where that is exact
#pragma omp simd reduction(+ : mass_gap)
  for (int64_t c = 0; c < classes; ++c) {
    const acc_t u_gap = (raw_s[c] - max_s) * inv_t - (raw_t[c] - max_t) * inv_t;
    const acc_t e_t = exp_t[c];
    const acc_t near = e_t * expm1_small(u_gap);
    const bool use_near = (e_t > 0) & (u_gap < acc_t(0.5)) & (u_gap > acc_t(-0.5));
    mass_gap += use_near ? near : exp_s[c] - e_t;
  }
  const acc_t relative_gap = mass_gap * norm_t.inv_sum;
  const acc_t log_sum_ratio = std::abs(relative_gap) < acc_t(0.5)
                                  ? std::log1p(relative_gap)
                                  : norm_s.log_sum - norm_t.log_sum;

  // Cross-entropy at T = 1: -log softmax(student)[label]. An out-of-range label makes its row
  // (loss and student gradient) NaN without reading out of bounds.
  const bool label_in_range = label >= 0 && label < classes;
  acc_t cross_entropy = 0;
  const acc_t* hard = exp_s;  // exp(student - max) at T = 1 (exact reuse when T == 1)
  Normaliser<acc_t> norm_h = norm_s;
  if (options.has_labels) {
    if (options.temperature != 1.0 || kKind == kReverseKl) {
      acc_t top_h = 0;
      acc_t rest_h = 0;
#pragma omp simd reduction(+ : top_h, rest_h)
      for (int64_t c = 0; c < classes; ++c) {
        const acc_t e_h = exp_vec(static_cast<acc_t>(student_row[c]) - max_full);
        exp_h[c] = e_h;
        count_top(e_h, top_h, rest_h);
      }
      norm_h = Normaliser<acc_t>(top_h, rest_h);
      hard = exp_h;
    }
    cross_entropy = label_in_range
                        ? norm_h.log_sum - (static_cast<acc_t>(student_row[label]) - max_full)
                        : kNaN;
  }
  const acc_t ce_coef = !options.has_labels ? acc_t(0)
                        : label_in_range     ? grad_scale * ce_weight
                                             : kNaN;
  const int64_t hot = options.has_labels && label_in_range ? label : -1;
  const bool unique_h = norm_h.unique_top;
  // softmax(student) - onehot(label) for class c; 1 - p_label from rest_mass when it is the top.
  auto ce_gradient = [&](int64_t c) -> acc_t {
    const acc_t q = hard[c] * norm_h.inv_sum;
    const acc_t q_minus_one = unique_h & (hard[c] >= 1) ? -norm_h.rest_mass : q - 1;
    return c == hot ? q_minus_one : q;
  };
  const acc_t kd_coef = grad_scale * kd_weight * temperature;

  acc_t distill = 0;
  if constexpr (kKind == kKl || kKind == kReverseKl) {
    constexpr bool kTeacherFirst = kKind == kKl;  // KL(p_t||p_s); else KL(p_s||p_t)
    const Normaliser<acc_t>& norm_p = kTeacherFirst ? norm_t : norm_s;
    const Normaliser<acc_t>& norm_q = kTeacherFirst ? norm_s : norm_t;
    const acc_t* exp_p = kTeacherFirst ? exp_t : exp_s;
    const acc_t* exp_q = kTeacherFirst ? exp_s : exp_t;
    const bool unique_p = norm_p.unique_top;
    const bool unique_q = norm_q.unique_top;
    // d = log p - log q = (u_p - u_q) + shift; KL = sum p d, split into top and rest.
    const acc_t shift = kTeacherFirst ? log_sum_ratio : -log_sum_ratio;
    const acc_t kl_rest = cross_rest * norm_p.inv_sum + norm_p.rest_mass * shift;
    const acc_t kl_top = cross_top * norm_p.inv_sum + norm_p.top_mass * shift;
    const acc_t divergence = kl_top + kl_rest;
    distill = divergence;
    // d KL/d x_p = T p (d - KL): for a unique top class d - KL = (1 - p) d - sum_rest p d.
    auto p_gradient = [&](int64_t c) -> acc_t {
      const acc_t p = exp_p[c] * norm_p.inv_sum;
      const acc_t u_s = (raw_s[c] - max_s) * inv_t;
      const acc_t u_t = (raw_t[c] - max_t) * inv_t;
      const acc_t d = (kTeacherFirst ? u_t - u_s : u_s - u_t) + shift;
      const acc_t delta =
          unique_p & (exp_p[c] >= 1) ? norm_p.rest_mass * d - kl_rest : d - divergence;
      const acc_t term = kd_coef * p * delta;
      return p > 0 ? term : acc_t(0);
    };
    // d KL/d x_q = T (q - p), exact when both have their unique top class here.
    auto q_gradient = [&](int64_t c) -> acc_t {
      const bool both_top = unique_p & unique_q & (exp_p[c] >= 1) & (exp_q[c] >= 1);
      const acc_t difference = both_top
                                   ? norm_p.rest_mass - norm_q.rest_mass
                                   : exp_q[c] * norm_q.inv_sum - exp_p[c] * norm_p.inv_sum;
      return kd_coef * difference;
    };
    if constexpr (kStudentGrad) {
#pragma omp simd
      for (int64_t c = 0; c < classes; ++c) {
        const acc_t kd = kTeacherFirst ? q_gradient(c) : p_gradient(c);
        grad_student_row[c] = static_cast<scalar_t>(kd + ce_coef * ce_gradient(c));
      }
    }
    if constexpr (kTeacherGrad) {
#pragma omp simd
      for (int64_t c = 0; c < classes; ++c) {
        grad_teacher_row[c] = static_cast<scalar_t>(kTeacherFirst ? p_gradient(c) : q_gradient(c));
      }
    }
  } else {
    // JSD. With m = beta p_t + (1-beta) p_s and L = log((1-beta)/beta) + log p_s - log p_t:
    //   log p_t - log m = -log beta - softplus(L),  log p_s - log m = -log(1-beta) - softplus(-L),
    // so KL(p_t||m) = sum p_t (-log beta - A), KL(p_s||m) = sum p_s (-log(1-beta) - B) with
    // A = softplus(L), B = softplus(-L). The gradients need A_k - sum p_t A (B alike), small
    // numbers that this form keeps exact where log p - log m would cancel to rounding noise.
    // At beta = 0 or 1 the divergence is identically 0. Classes where both probabilities are
    // 0 give NaN L; their terms are guarded by p > 0.
    const acc_t beta = static_cast<acc_t>(options.beta);
    const acc_t one_minus_beta = static_cast<acc_t>(1.0 - options.beta);
    if (options.beta > 0 && options.beta < 1) {
      const acc_t log_weight_ratio =
          static_cast<acc_t>(std::log1p(-options.beta) - std::log(options.beta));
      // -log beta = softplus(log_weight_ratio), -log(1-beta) = softplus(-log_weight_ratio),
      // evaluated exactly as the per-class terms so equal distributions give exactly 0.
      const SoftplusPair<acc_t> at_equal(log_weight_ratio);
      const acc_t neg_log_beta = at_equal.positive;
      const acc_t neg_log_one_minus_beta = at_equal.negative;
      acc_t sum_a = 0;  // sum p_t A
      acc_t sum_b = 0;  // sum p_s B
      acc_t sum_a_rest = 0;  // the same sums without the unique top class
      acc_t sum_b_rest = 0;
      acc_t kl_t = 0;  // KL(p_t||m) = sum p_t (-log beta - A), summed per class: no bias
      acc_t kl_s = 0;  // from a rounded sum p = 1 when the divergence is tiny
#pragma omp simd reduction(+ : sum_a, sum_b, sum_a_rest, sum_b_rest, kl_t, kl_s)
      for (int64_t c = 0; c < classes; ++c) {
        const acc_t u_s = (raw_s[c] - max_s) * inv_t;
        const acc_t u_t = (raw_t[c] - max_t) * inv_t;
        const acc_t p_s = exp_s[c] * norm_s.inv_sum;
        const acc_t p_t = exp_t[c] * norm_t.inv_sum;
        // log p_s - log p_t = (u_s - u_t) - log(Z_s/Z_t)
        const acc_t log_ratio = (u_s - u_t) - log_sum_ratio;
        const SoftplusPair<acc_t> softplus(log_weight_ratio + log_ratio);
        const acc_t softplus_pos = softplus.positive;
        const acc_t softplus_neg = softplus.negative;
        const acc_t term_t = p_t * softplus_pos;
        const acc_t term_s = p_s * softplus_neg;
        const acc_t guarded_t = p_t > 0 ? term_t : acc_t(0);
        const acc_t guarded_s = p_s > 0 ? term_s : acc_t(0);
        sum_a += guarded_t;
        sum_b += guarded_s;
        sum_a_rest += unique_t & (exp_t[c] >= 1) ? acc_t(0) : guarded_t;
        // log p_t - log m = -log1p((1-beta) expm1(D)), log p_s - log m = -log1p(beta expm1(-D))
        // with D = log p_s - log p_t: exact for nearly equal distributions (small D), where the
        // softplus form would cancel to rounding.
        const bool close = (log_ratio < acc_t(0.5)) & (log_ratio > acc_t(-0.5));
        const acc_t grow = expm1_small(log_ratio);
        const acc_t shrink = expm1_small(-log_ratio);
        const acc_t close_t = -log1p_small(one_minus_beta * grow);
        const acc_t close_s = -log1p_small(beta * shrink);
        const acc_t divergence_t = p_t * (close ? close_t : neg_log_beta - softplus_pos);
        const acc_t divergence_s = p_s * (close ? close_s : neg_log_one_minus_beta - softplus_neg);
        kl_t += p_t > 0 ? divergence_t : acc_t(0);
        kl_s += p_s > 0 ? divergence_s : acc_t(0);
        sum_b_rest += unique_s & (exp_s[c] >= 1) ? acc_t(0) : guarded_s;
        raw_t[c] = softplus_pos;
        raw_s[c] = softplus_neg;
      }
      distill = beta * kl_t + one_minus_beta * kl_s;
      // d/ds_k = -T (1-beta) p_s,k (B_k - sum p_s B); for a unique top class
      // B_k - sum p_s B = (1 - p_k) B_k - sum_rest p_s B. Teacher alike with beta and A.
      if constexpr (kStudentGrad) {
        const acc_t coef = -kd_coef * one_minus_beta;
#pragma omp simd
        for (int64_t c = 0; c < classes; ++c) {
          const acc_t p_s = exp_s[c] * norm_s.inv_sum;
          const acc_t delta = unique_s & (exp_s[c] >= 1) ? norm_s.rest_mass * raw_s[c] - sum_b_rest
                                                          : raw_s[c] - sum_b;
          const acc_t term = coef * p_s * delta;
          const acc_t grad = p_s > 0 ? term : acc_t(0);
          grad_student_row[c] = static_cast<scalar_t>(grad + ce_coef * ce_gradient(c));
        }
      }
      if constexpr (kTeacherGrad) {
        const acc_t coef = -kd_coef * beta;
#pragma omp simd
        for (int64_t c = 0; c < classes; ++c) {
          const acc_t p_t = exp_t[c] * norm_t.inv_sum;
          const acc_t delta = unique_t & (exp_t[c] >= 1) ? norm_t.rest_mass * raw_t[c] - sum_a_rest
                                                          : raw_t[c] - sum_a;
          const acc_t term = coef * p_t * delta;
          grad_teacher_row[c] = static_cast<scalar_t>(p_t > 0 ? term : acc_t(0));
        }
      }
    } else {
      if constexpr (kStudentGrad) {
#pragma omp simd
        for (int64_t c = 0; c < classes; ++c) {
          grad_student_row[c] = static_cast<scalar_t>(ce_coef * ce_gradient(c));
        }
      }
      zero_row(grad_teacher_row, kTeacherGrad ? classes : 0);
    }
  }
  *row_loss = kd_weight * temperature * temperature * distill + ce_weight * cross_entropy;
}

template <int64_t kKind, bool kStudentGrad, bool kTeacherGrad, typename scalar_t>
void kd_loss_rows(const at::Tensor& student, const at::Tensor& teacher, const int64_t* labels,
                  const bool* valid, const KdOptions& options, at::Tensor& row_loss,
                  at::Tensor& grad_student, at::Tensor& grad_teacher) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = student.size(0);
  const int64_t classes = student.size(1);
  const int64_t student_stride = student.stride(0);
  const int64_t teacher_stride = teacher.stride(0);
  const scalar_t* student_data = student.const_data_ptr<scalar_t>();
  const scalar_t* teacher_data = teacher.const_data_ptr<scalar_t>();
  acc_t* loss_data = row_loss.data_ptr<acc_t>();
  scalar_t* grad_student_data = kStudentGrad ? grad_student.data_ptr<scalar_t>() : nullptr;
  scalar_t* grad_teacher_data = kTeacherGrad ? grad_teacher.data_ptr<scalar_t>() : nullptr;

  at::parallel_for(0, rows, row_grain(classes), [&](int64_t begin, int64_t end) {
    KdScratch<acc_t> buffers(classes);
    for (int64_t row = begin; row < end; ++row) {
      scalar_t* grad_s = kStudentGrad ? grad_student_data + row * classes : nullptr;
      scalar_t* grad_t = kTeacherGrad ? grad_teacher_data + row * classes : nullptr;
      if (valid != nullptr && !valid[row]) {
        loss_data[row] = 0;
        zero_row(grad_s, classes);
        zero_row(grad_t, classes);
        continue;
      }
      const int64_t label = labels != nullptr ? labels[row] : -1;
      kd_loss_row<kKind, kStudentGrad, kTeacherGrad>(
          student_data + row * student_stride, teacher_data + row * teacher_stride, classes,
          label, options, buffers, loss_data + row, grad_s, grad_t);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kd_loss_forward(
    const at::Tensor& student, const at::Tensor& teacher,
    const std::optional<at::Tensor>& labels, const std::optional<at::Tensor>& valid,
    const std::optional<at::Tensor>& grad_scale, double temperature, int64_t kind, double beta,
    double alpha, bool student_grad, bool teacher_grad) {
  constexpr const char* kOp = "kd_loss_forward";
  check_pair(student, teacher, kOp);
  TORCH_CHECK(kind == kKl || kind == kReverseKl || kind == kJsd, kOp,
              ": kind must be 0 (kl), 1 (reverse_kl) or 2 (jsd), got ", kind);
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, kOp,
              ": temperature must be finite and > 0, got ", temperature);
  TORCH_CHECK(beta >= 0 && beta <= 1, kOp, ": beta must be in [0, 1], got ", beta);
  TORCH_CHECK(alpha >= 0 && alpha <= 1, kOp, ": alpha must be in [0, 1], got ", alpha);
  const int64_t rows = student.size(0);
  const auto valid_rows = checked_valid(valid, rows, kOp);
  std::optional<at::Tensor> label_ids;
  if (labels.has_value() && labels->defined()) {
    TORCH_CHECK(labels->scalar_type() == at::kLong && labels->dim() == 1 &&
                    labels->size(0) == rows,
                kOp, ": labels must be a (", rows, ",) int64 tensor, got ",
                labels->scalar_type(), " ", labels->sizes());
    TORCH_CHECK(labels->device().is_cpu(), kOp, ": labels must be a CPU tensor");
    label_ids = labels->contiguous();
  }
  KdOptions options{temperature, beta, alpha, read_grad_scale(grad_scale, kOp),
                    label_ids.has_value()};

  at::Tensor row_loss =
      at::empty({rows}, student.options().dtype(loss_dtype(student.scalar_type())));
  at::Tensor grad_student = gradient_output(student, student_grad);
  at::Tensor grad_teacher = gradient_output(teacher, teacher_grad);
  const int64_t* label_data = label_ids.has_value() ? label_ids->const_data_ptr<int64_t>()
                                                    : nullptr;
  const bool* valid_ptr = valid_data(valid_rows);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), kOp, [&] {
    with_flag(student_grad, [&](auto student_flag) {
      with_flag(teacher_grad, [&](auto teacher_flag) {
        constexpr bool kS = decltype(student_flag)::value;
        constexpr bool kT = decltype(teacher_flag)::value;
        if (kind == kKl) {
          kd_loss_rows<kKl, kS, kT, scalar_t>(student, teacher, label_data, valid_ptr, options,
                                              row_loss, grad_student, grad_teacher);
        } else if (kind == kReverseKl) {
          kd_loss_rows<kReverseKl, kS, kT, scalar_t>(student, teacher, label_data, valid_ptr,
                                                     options, row_loss, grad_student,
                                                     grad_teacher);
        } else {
          kd_loss_rows<kJsd, kS, kT, scalar_t>(student, teacher, label_data, valid_ptr,
                                               options, row_loss, grad_student, grad_teacher);
        }
      });
    });
  });
  return {row_loss, grad_student, grad_teacher};
}

}  // namespace
}  // namespace kdcore

TORCH_LIBRARY_FRAGMENT(kdcore_cpp, m) {
  m.def(
      "kd_loss_forward(Tensor student, Tensor teacher, Tensor? labels, Tensor? valid, "
      "Tensor? grad_scale, float temperature, int kind, float beta, float alpha, "
      "bool student_grad, bool teacher_grad) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(kdcore_cpp, CPU, m) {
  m.impl("kd_loss_forward", &kdcore::kd_loss_forward);
}

// Fused sigmoid (multi-label) distillation loss on the CPU, per element, with x = s/T and
// q = sigmoid(t/T):
//   loss = alpha T^2 BCE(x, q) + (1 - alpha) BCE(s, y),
//   BCE(x, q) = q softplus(-x) + (1 - q) softplus(x)
//   d/ds = alpha T (sigmoid(x) - q) + (1 - alpha)(sigmoid(s) - y)
//   d/dt = -alpha T x q (1 - q)
// (without labels alpha is 1), gradients of sum(loss) * grad_scale, in one pass over the inputs.
// A zero weight (q, 1-q, y or 1-y) removes its term even where the softplus is infinite.
// Differences of two sigmoids near 1 are formed from their complements, so they keep their
// relative precision.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>

#include "loss_utils.h"

namespace kdcore {
namespace {

// sigmoid(x), 1 - sigmoid(x), softplus(x) and softplus(-x) from one exp and one log1p.
template <typename acc_t>
struct SigmoidParts {
  C10_ALWAYS_INLINE explicit SigmoidParts(acc_t x) {
    const acc_t magnitude = x > 0 ? x : -x;
    const acc_t tail = exp_vec(-magnitude);  // e^{-|x|} in (0, 1]
    const acc_t shared = log1p_unit(tail);
    const acc_t reciprocal = acc_t(1) / (acc_t(1) + tail);
    positive = x >= 0;
    sigmoid = positive ? reciprocal : tail * reciprocal;
    complement = positive ? tail * reciprocal : reciprocal;
    softplus = (x > 0 ? x : acc_t(0)) + shared;
    softplus_neg = (x < 0 ? -x : acc_t(0)) + shared;
  }
  bool positive;
  acc_t sigmoid;
  acc_t complement;
  acc_t softplus;
  acc_t softplus_neg;
};

// BCE with logit parts `x` and target `q` (with 1 - q given separately for precision).
template <typename acc_t>
C10_ALWAYS_INLINE acc_t binary_cross_entropy(const SigmoidParts<acc_t>& x, acc_t q,
                                             acc_t one_minus_q) {
  const acc_t on = q * x.softplus_neg;
  const acc_t off = one_minus_q * x.softplus;
  return (q > 0 ? on : acc_t(0)) + (one_minus_q > 0 ? off : acc_t(0));
}

template <bool kHasLabels, bool kStudentGrad, bool kTeacherGrad, typename scalar_t>
void kd_bce_loss_rows(const at::Tensor& student, const at::Tensor& teacher,
                      const at::opmath_type<scalar_t>* labels, const bool* valid,
                      double temperature_value, double alpha_value, double grad_scale_value,
                      at::Tensor& element_loss, at::Tensor& grad_student,
                      at::Tensor& grad_teacher) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = student.size(0);
  const int64_t classes = student.size(1);
  const int64_t student_stride = student.stride(0);
  const int64_t teacher_stride = teacher.stride(0);
  const scalar_t* student_data = student.const_data_ptr<scalar_t>();
  const scalar_t* teacher_data = teacher.const_data_ptr<scalar_t>();
  acc_t* loss_data = element_loss.data_ptr<acc_t>();
  scalar_t* grad_student_data = kStudentGrad ? grad_student.data_ptr<scalar_t>() : nullptr;
  scalar_t* grad_teacher_data = kTeacherGrad ? grad_teacher.data_ptr<scalar_t>() : nullptr;

  const acc_t temperature = static_cast<acc_t>(temperature_value);
  const acc_t inv_t = acc_t(1) / temperature;
  const acc_t kd_weight = kHasLabels ? static_cast<acc_t>(alpha_value) : acc_t(1);
  // 1 - alpha in double: in float it loses most digits when alpha is near 1.
  const acc_t hard_weight = kHasLabels ? static_cast<acc_t>(1.0 - alpha_value) : acc_t(0);
  const acc_t loss_coef = kd_weight * temperature * temperature;
  const acc_t grad_scale = static_cast<acc_t>(grad_scale_value);
  const acc_t kd_grad_coef = grad_scale * kd_weight * temperature;
  const acc_t hard_grad_coef = grad_scale * hard_weight;

  at::parallel_for(0, rows, row_grain(classes), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      acc_t* __restrict loss_row = loss_data + row * classes;
      scalar_t* __restrict grad_s = kStudentGrad ? grad_student_data + row * classes : nullptr;
      scalar_t* __restrict grad_t = kTeacherGrad ? grad_teacher_data + row * classes : nullptr;
      if (valid != nullptr && !valid[row]) {
        std::fill(loss_row, loss_row + classes, acc_t(0));
        zero_row(grad_s, classes);
        zero_row(grad_t, classes);
        continue;
      }
      const scalar_t* __restrict student_row = student_data + row * student_stride;
      const scalar_t* __restrict teacher_row = teacher_data + row * teacher_stride;
      const acc_t* __restrict label_row = kHasLabels ? labels + row * classes : nullptr;
#pragma omp simd
      for (int64_t c = 0; c < classes; ++c) {
        const acc_t s = static_cast<acc_t>(student_row[c]);
        const acc_t x_value = s * inv_t;
        const SigmoidParts<acc_t> x(x_value);
        const SigmoidParts<acc_t> z(static_cast<acc_t>(teacher_row[c]) * inv_t);
        const acc_t q = z.sigmoid;
        const acc_t one_minus_q = z.complement;
        acc_t loss = loss_coef * binary_cross_entropy(x, q, one_minus_q);
        // sigmoid(x) - q, from the complements when both are >= 1/2.
        const acc_t kd_difference =
            x.positive & z.positive ? one_minus_q - x.complement : x.sigmoid - q;
        acc_t grad_student_value = kd_grad_coef * kd_difference;
        if constexpr (kHasLabels) {
          const acc_t y = label_row[c];
          const SigmoidParts<acc_t> hard(s);
          loss += hard_weight * binary_cross_entropy(hard, y, acc_t(1) - y);
          const acc_t hard_difference =
              hard.positive ? (acc_t(1) - y) - hard.complement : hard.sigmoid - y;
          grad_student_value += hard_grad_coef * hard_difference;
        }
        loss_row[c] = loss;
        if constexpr (kStudentGrad) {
          grad_s[c] = static_cast<scalar_t>(grad_student_value);
        }
        if constexpr (kTeacherGrad) {
          const acc_t spread = q * one_minus_q;
          const acc_t term = -kd_grad_coef * x_value * spread;
          grad_t[c] = static_cast<scalar_t>(spread > 0 ? term : acc_t(0));
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kd_bce_loss_forward(
    const at::Tensor& student, const at::Tensor& teacher,
    const std::optional<at::Tensor>& labels, const std::optional<at::Tensor>& valid,
    const std::optional<at::Tensor>& grad_scale, double temperature, double alpha,
    bool student_grad, bool teacher_grad) {
  constexpr const char* kOp = "kd_bce_loss_forward";
  check_pair(student, teacher, kOp);
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, kOp,
              ": temperature must be finite and > 0, got ", temperature);
  TORCH_CHECK(alpha >= 0 && alpha <= 1, kOp, ": alpha must be in [0, 1], got ", alpha);
  const int64_t rows = student.size(0);
  const auto valid_rows = checked_valid(valid, rows, kOp);
  const at::ScalarType accumulate = loss_dtype(student.scalar_type());
  std::optional<at::Tensor> targets;
  if (labels.has_value() && labels->defined()) {
    TORCH_CHECK(labels->scalar_type() == accumulate && labels->sizes() == student.sizes(), kOp,
                ": labels must be a ", accumulate, " tensor of shape ", student.sizes(),
                ", got ", labels->scalar_type(), " ", labels->sizes());
    TORCH_CHECK(labels->device().is_cpu(), kOp, ": labels must be a CPU tensor");
    targets = labels->contiguous();
  }
  const double scale = read_grad_scale(grad_scale, kOp);

  at::Tensor element_loss = at::empty(student.sizes(), student.options().dtype(accumulate));
  at::Tensor grad_student = gradient_output(student, student_grad);
  at::Tensor grad_teacher = gradient_output(teacher, teacher_grad);
  const bool* valid_ptr = valid_data(valid_rows);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), kOp, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* label_data = targets.has_value() ? targets->const_data_ptr<acc_t>() : nullptr;
    with_flag(label_data != nullptr, [&](auto label_flag) {
      with_flag(student_grad, [&](auto student_flag) {
        with_flag(teacher_grad, [&](auto teacher_flag) {
          kd_bce_loss_rows<decltype(label_flag)::value, decltype(student_flag)::value,
                           decltype(teacher_flag)::value, scalar_t>(
              student, teacher, label_data, valid_ptr, temperature, alpha, scale, element_loss,
              grad_student, grad_teacher);
        });
      });
    });
  });
  return {element_loss, grad_student, grad_teacher};
}

}  // namespace
}  // namespace kdcore

TORCH_LIBRARY_FRAGMENT(kdcore_cpp, m) {
  m.def(
      "kd_bce_loss_forward(Tensor student, Tensor teacher, Tensor? labels, Tensor? valid, "
      "Tensor? grad_scale, float temperature, float alpha, bool student_grad, "
      "bool teacher_grad) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(kdcore_cpp, CPU, m) {
  m.impl("kd_bce_loss_forward", &kdcore::kd_bce_loss_forward);
}

// Fused feature-distance losses on the CPU, with the gradients of sum(loss) * grad_scale:
//   kind 0 mse:    (s - t)^2 per element;       d/ds = 2 (s - t), d/dt = -d/ds
//   kind 1 l1:     |s - t| per element;         d/ds = sign(s - t) (0 where equal), d/dt = -d/ds
//   kind 2 cosine: 1 - s.t / (max(|s|, eps) max(|t|, eps)) per row, eps = 1e-8;
//                  d/ds = (cos s/|s| - t/|t|)/|s| (the cos term only where |s| >= eps),
//                  teacher alike.
// mse and l1 read each row once; cosine reads it twice (norms and dot, then the gradients).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>

#include "loss_utils.h"

namespace kdcore {
namespace {

constexpr int64_t kMse = 0;
constexpr int64_t kL1 = 1;
constexpr int64_t kCosine = 2;
constexpr double kCosineEps = 1e-8;

template <int64_t kKind, bool kStudentGrad, bool kTeacherGrad, typename scalar_t>
void elementwise_rows(const at::Tensor& student, const at::Tensor& teacher, const bool* valid,
                      double grad_scale_value, at::Tensor& loss, at::Tensor& grad_student,
                      at::Tensor& grad_teacher) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = student.size(0);
  const int64_t width = student.size(1);
  const int64_t student_stride = student.stride(0);
  const int64_t teacher_stride = teacher.stride(0);
  const scalar_t* student_data = student.const_data_ptr<scalar_t>();
  const scalar_t* teacher_data = teacher.const_data_ptr<scalar_t>();
  acc_t* loss_data = loss.data_ptr<acc_t>();
  scalar_t* grad_student_data = kStudentGrad ? grad_student.data_ptr<scalar_t>() : nullptr;
  scalar_t* grad_teacher_data = kTeacherGrad ? grad_teacher.data_ptr<scalar_t>() : nullptr;
  const acc_t grad_scale = static_cast<acc_t>(grad_scale_value);
  const acc_t grad_coef = kKind == kMse ? 2 * grad_scale : grad_scale;

  at::parallel_for(0, rows, row_grain(width), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      acc_t* __restrict loss_row = loss_data + row * width;
      scalar_t* __restrict grad_s = kStudentGrad ? grad_student_data + row * width : nullptr;
      scalar_t* __restrict grad_t = kTeacherGrad ? grad_teacher_data + row * width : nullptr;
      if (valid != nullptr && !valid[row]) {
        std::fill(loss_row, loss_row + width, acc_t(0));
        zero_row(grad_s, width);
        zero_row(grad_t, width);
        continue;
      }
      const scalar_t* __restrict student_row = student_data + row * student_stride;
      const scalar_t* __restrict teacher_row = teacher_data + row * teacher_stride;
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) {
        const acc_t difference =
            static_cast<acc_t>(student_row[c]) - static_cast<acc_t>(teacher_row[c]);
        acc_t slope;
        if constexpr (kKind == kMse) {
          loss_row[c] = difference * difference;
          slope = difference;
        } else {
          loss_row[c] = difference > 0 ? difference : -difference;
          slope = difference > 0 ? acc_t(1) : (difference < 0 ? acc_t(-1) : acc_t(0));
        }
        if constexpr (kStudentGrad) {
          grad_s[c] = static_cast<scalar_t>(grad_coef * slope);
        }
        if constexpr (kTeacherGrad) {
          grad_t[c] = static_cast<scalar_t>(-grad_coef * slope);
        }
      }
    }
  });
}

template <bool kStudentGrad, bool kTeacherGrad, typename scalar_t>
void cosine_rows(const at::Tensor& student, const at::Tensor& teacher, const bool* valid,
                 double grad_scale_value, at::Tensor& loss, at::Tensor& grad_student,
                 at::Tensor& grad_teacher) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = student.size(0);
  const int64_t width = student.size(1);
  const int64_t student_stride = student.stride(0);
  const int64_t teacher_stride = teacher.stride(0);
  const scalar_t* student_data = student.const_data_ptr<scalar_t>();
  const scalar_t* teacher_data = teacher.const_data_ptr<scalar_t>();
  acc_t* loss_data = loss.data_ptr<acc_t>();
  scalar_t* grad_student_data = kStudentGrad ? grad_student.data_ptr<scalar_t>() : nullptr;
  scalar_t* grad_teacher_data = kTeacherGrad ? grad_teacher.data_ptr<scalar_t>() : nullptr;
  const acc_t grad_scale = static_cast<acc_t>(grad_scale_value);
  const acc_t eps = static_cast<acc_t>(kCosineEps);

  at::parallel_for(0, rows, row_grain(width), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      scalar_t* __restrict grad_s = kStudentGrad ? grad_student_data + row * width : nullptr;
      scalar_t* __restrict grad_t = kTeacherGrad ? grad_teacher_data + row * width : nullptr;
      if (valid != nullptr && !valid[row]) {
        loss_data[row] = 0;
        zero_row(grad_s, width);
        zero_row(grad_t, width);
        continue;
      }
      const scalar_t* __restrict student_row = student_data + row * student_stride;
      const scalar_t* __restrict teacher_row = teacher_data + row * teacher_stride;
      acc_t dot = 0;
      acc_t student_square = 0;
      acc_t teacher_square = 0;
#pragma omp simd reduction(+ : dot, student_square, teacher_square)
      for (int64_t c = 0; c < width; ++c) {
        const acc_t s = static_cast<acc_t>(student_row[c]);
        const acc_t t = static_cast<acc_t>(teacher_row[c]);
        dot += s * t;
        student_square += s * s;
        teacher_square += t * t;
      }
      const acc_t student_norm = std::sqrt(student_square);
      const acc_t teacher_norm = std::sqrt(teacher_square);
      // Below eps a norm is clamped to the constant eps, which passes no gradient.
      const bool student_clamped = !(student_norm >= eps);
      const bool teacher_clamped = !(teacher_norm >= eps);
      const acc_t student_scale = student_clamped ? eps : student_norm;
      const acc_t teacher_scale = teacher_clamped ? eps : teacher_norm;
      const acc_t cosine = dot / (student_scale * teacher_scale);
      loss_data[row] = acc_t(1) - cosine;
      // d(1 - cos)/ds = (cos s/|s| - t/|t|)/|s|, with each norm clamped to eps (the cos s/|s|
      // term vanishes where |s| is clamped). Dividing by the norms (no reciprocals) keeps
      // parallel vectors at an exactly zero gradient.
      if constexpr (kStudentGrad) {
        const acc_t self_cosine = student_clamped ? acc_t(0) : cosine;
        const acc_t coef = grad_scale / student_scale;
#pragma omp simd
        for (int64_t c = 0; c < width; ++c) {
          const acc_t s = static_cast<acc_t>(student_row[c]);
          const acc_t t = static_cast<acc_t>(teacher_row[c]);
          grad_s[c] = static_cast<scalar_t>(
              coef * (self_cosine * (s / student_scale) - t / teacher_scale));
        }
      }
      if constexpr (kTeacherGrad) {
        const acc_t self_cosine = teacher_clamped ? acc_t(0) : cosine;
        const acc_t coef = grad_scale / teacher_scale;
#pragma omp simd
        for (int64_t c = 0; c < width; ++c) {
          const acc_t s = static_cast<acc_t>(student_row[c]);
          const acc_t t = static_cast<acc_t>(teacher_row[c]);
          grad_t[c] = static_cast<scalar_t>(
              coef * (self_cosine * (t / teacher_scale) - s / student_scale));
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> feature_loss_forward(
    const at::Tensor& student, const at::Tensor& teacher, const std::optional<at::Tensor>& valid,
    const std::optional<at::Tensor>& grad_scale, int64_t kind, bool student_grad,
    bool teacher_grad) {
  constexpr const char* kOp = "feature_loss_forward";
  check_pair(student, teacher, kOp);
  TORCH_CHECK(kind == kMse || kind == kL1 || kind == kCosine, kOp,
              ": kind must be 0 (mse), 1 (l1) or 2 (cosine), got ", kind);
  const int64_t rows = student.size(0);
  const auto valid_rows = checked_valid(valid, rows, kOp);
  const double scale = read_grad_scale(grad_scale, kOp);
  const auto loss_options = student.options().dtype(loss_dtype(student.scalar_type()));
  at::Tensor loss = kind == kCosine ? at::empty({rows}, loss_options)
                                    : at::empty(student.sizes(), loss_options);
  at::Tensor grad_student = gradient_output(student, student_grad);
  at::Tensor grad_teacher = gradient_output(teacher, teacher_grad);
  const bool* valid_ptr = valid_data(valid_rows);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), kOp, [&] {
    with_flag(student_grad, [&](auto student_flag) {
      with_flag(teacher_grad, [&](auto teacher_flag) {
        constexpr bool kS = decltype(student_flag)::value;
        constexpr bool kT = decltype(teacher_flag)::value;
        if (kind == kMse) {
          elementwise_rows<kMse, kS, kT, scalar_t>(student, teacher, valid_ptr, scale, loss,
                                                   grad_student, grad_teacher);
        } else if (kind == kL1) {
          elementwise_rows<kL1, kS, kT, scalar_t>(student, teacher, valid_ptr, scale, loss,
                                                  grad_student, grad_teacher);
        } else {
          cosine_rows<kS, kT, scalar_t>(student, teacher, valid_ptr, scale, loss, grad_student,
                                        grad_teacher);
        }
      });
    });
  });
  return {loss, grad_student, grad_teacher};
}

}  // namespace
}  // namespace kdcore

TORCH_LIBRARY_FRAGMENT(kdcore_cpp, m) {
  m.def(
      "feature_loss_forward(Tensor student, Tensor teacher, Tensor? valid, Tensor? grad_scale, "
      "int kind, bool student_grad, bool teacher_grad) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(kdcore_cpp, CPU, m) {
  m.impl("feature_loss_forward", &kdcore::feature_loss_forward);
}

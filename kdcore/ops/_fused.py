"""Autograd shared by the fused losses.

Each fused op returns ``(loss, grad_student, grad_teacher)``: the kernels compute the gradients
of the reduced loss in the forward pass (one sweep over the inputs instead of about three), and
the backward only multiplies them by ``grad_output``:

- C++/CPU: the saved gradient is returned as is when ``grad_output`` is 1 (reading a CPU scalar
  costs no sync), otherwise a scaled copy, so repeated backward passes stay correct.
- Triton: scaled in place by a kernel that reads ``grad_output`` on the device and returns at
  once when it is 1: no host sync, no second gradient-sized buffer. The saved gradient is
  consumed, so a second backward through the same graph (``retain_graph=True``) raises; use
  ``backend="cpp"`` or ``"reference"`` for that.
- Compiled or traced (``torch.compile``, ``opcheck``): an out-of-place multiply, since a graph
  may not mutate a saved forward output (the compiler fuses the multiply).
"""

from __future__ import annotations

import torch

from kdcore import _backends


@torch.library.custom_op("kdcore::scale_grad_", mutates_args=("grad",))
def scale_grad_(grad: torch.Tensor, grad_output: torch.Tensor) -> None:
    """``grad *= grad_output`` in place. ``grad`` is (N, C); ``grad_output`` is a scalar, (N,)
    (one value per row) or (N, C)."""
    _backends.triton_kernels().scale_grad_(grad, grad_output)


@scale_grad_.register_fake
def _(grad: torch.Tensor, grad_output: torch.Tensor) -> None:
    return None


def apply_grad_output(grad: torch.Tensor, grad_output: torch.Tensor, backend: str,
                      ctx: object) -> torch.Tensor:
    """``grad * grad_output``, broadcasting ``grad_output`` over trailing dims of ``grad``."""
    if backend == "triton" and not _tracing(grad_output):
        if getattr(ctx, "kdcore_consumed", False):
            raise RuntimeError(
                "kdcore: the fused Triton loss consumed its saved gradient in an earlier "
                "backward pass; backward twice through one graph (retain_graph=True) needs "
                "backend='cpp' or backend='reference'"
            )
        scale_grad_(grad, grad_output)
        return grad
    if grad_output.numel() == 1 and _is_plain_value(grad_output) and float(grad_output) == 1.0:
        return grad
    shaped = grad_output.reshape(grad_output.shape + (1,) * (grad.dim() - grad_output.dim()))
    return (grad.to(shaped.dtype) * shaped).to(grad.dtype)


def _tracing(tensor: torch.Tensor) -> bool:
    """Whether the backward is being compiled or traced (fake or functional tensors): then it
    may neither read ``tensor`` on the host nor mutate a saved forward output."""
    if torch.compiler.is_compiling() or type(tensor) is not torch.Tensor:
        return True
    return torch._guards.detect_fake_mode() is not None


def _is_plain_value(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` holds real CPU data that may be read on the host without a sync."""
    return not _tracing(tensor) and tensor.device.type == "cpu"


def register_fused_autograd(op: torch.library.CustomOpDef, num_inputs: int,
                            backend_index: int) -> None:
    """Register autograd for an op whose outputs are ``(loss, grad_student, grad_teacher)`` and
    whose first two inputs are ``student`` and ``teacher``."""

    def setup_context(ctx, inputs, output):
        _, grad_student, grad_teacher = output
        # The gradient outputs are never differentiated: pass None for them, not a zero-filled
        # gradient-sized tensor each backward.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad_student, grad_teacher)
        ctx.kdcore_backend = inputs[backend_index]
        ctx.kdcore_shapes = (inputs[0].shape, inputs[1].shape)

    def backward(ctx, grad_loss, _unused_student, _unused_teacher):
        if (getattr(ctx, "kdcore_consumed", False) and ctx.kdcore_backend == "triton"
                and not torch.compiler.is_compiling()):
            # Raise the clear error before ctx.saved_tensors, whose version check fires first.
            apply_grad_output(None, grad_loss, ctx.kdcore_backend, ctx)
        grads = [None] * num_inputs
        if grad_loss is None:  # the loss does not reach the output being differentiated
            return tuple(grads)
        grad_student, grad_teacher = ctx.saved_tensors
        for index, (name, grad) in enumerate((("student", grad_student),
                                              ("teacher", grad_teacher))):
            if not ctx.needs_input_grad[index]:
                continue
            if grad.shape != ctx.kdcore_shapes[index]:
                raise RuntimeError(
                    f"kdcore: the {name} gradient was not computed in the forward pass (its "
                    "input did not require grad then)"
                )
            grads[index] = apply_grad_output(grad, grad_loss, ctx.kdcore_backend, ctx)
        ctx.kdcore_consumed = True
        return tuple(grads)

    op.register_autograd(backward, setup_context=setup_context)


def reduce_items(item_loss: torch.Tensor, grad_scale: torch.Tensor | None,
                 keep_items: bool) -> torch.Tensor:
    """The op's loss output: the per-item losses (``keep_items``), or their sum times
    ``grad_scale`` (the factor the kernels already applied to the gradients)."""
    if keep_items:
        return item_loss
    loss = item_loss.sum()
    return loss if grad_scale is None else loss * grad_scale


def needs_grad(tensor: torch.Tensor) -> bool:
    return tensor.requires_grad and torch.is_grad_enabled()

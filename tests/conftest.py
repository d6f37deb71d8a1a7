"""Test setup. Without a GPU, Triton kernels run through the interpreter, which must be
switched on before anything imports them."""

import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core CI machine spinning pool
# threads starve the next parallel region (read by libgomp when torch loads it, so set first).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

try:
    from hypothesis import settings
except ImportError:  # the test extra installs it; without it the fuzz tests fail to import
    settings = None
if settings is not None:
    # Hypothesis fuzzing is reproducible: the "ci" profile derandomizes (the examples follow
    # from each test's source, so a failure on CI fails again on every rerun). It is loaded
    # by default, so with CI set too; HYPOTHESIS_PROFILE=dev draws new examples each run.
    settings.register_profile("ci", derandomize=True, print_blob=True)
    settings.register_profile("dev", derandomize=False)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

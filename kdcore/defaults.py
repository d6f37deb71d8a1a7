"""Every default that more than one layer uses, written once.

The ops (``kdcore.kd_loss``), the modules (``LogMel``, ``KDLoss``), the ``Distiller``, the
config objects and the CLI all read their defaults from here, so they cannot disagree.

- ``TEMPERATURE = 2.0``: softening of ``T^2 * KL(softmax(t/T) || softmax(s/T))``; 2 is the
  common choice for classifiers (Hinton et al. 2015; distil-whisper uses 2).
- ``ALPHA = 0.9``: weight of the distillation term against the label term,
  ``alpha * KD + (1 - alpha) * label``; a batch without labels uses the KD term alone.
- ``LR = 3e-3``: peak learning rate of AdamW under the one-cycle schedule for the small
  students kdcore trains.
- ``SAMPLE_RATE = 16000``, ``N_FFT = 512``, ``WIN_LENGTH = 400``, ``HOP_LENGTH = 160``,
  ``N_MELS = 64``: the student log-mel frontend (25 ms window, 10 ms hop at 16 kHz).
"""

TEMPERATURE: float = 2.0
ALPHA: float = 0.9
LR: float = 3e-3
SAMPLE_RATE: int = 16000
N_FFT: int = 512
WIN_LENGTH: int = 400
HOP_LENGTH: int = 160
N_MELS: int = 64

"""Parameter and multiply-accumulate counts of :class:`~inat_tune.models.cnn.ScratchCNN`,
as plain arithmetic of (config numbers, image size). No torch needed.

Shapes. Block i (i = 1..5) has a k_i x k_i conv with same padding (k_i // 2, odd k_i),
c_{i-1} -> c_i channels (c_0 = 3 input channels), so its output keeps the input side
s_{i-1}; the 2x2 max-pool then floors: s_i = floor(s_{i-1} / 2) = floor(S / 2^i), s_0 = S.
The head sees c5 * s5^2 features.

Parameters (every conv and linear layer has a bias):

    params = sum_i (c_{i-1} * c_i * k_i^2 + c_i)        conv weights + biases
           + [sum_i 2 * c_i]                            batch norm gamma + beta, if on
           + c5 * s5^2 * n + n                          hidden dense layer
           + n * C + C                                  output layer (C = num_classes)

Batch norm adds 2 trainable parameters per channel; its running mean/var are buffers (plus a
num_batches_tracked counter) and are not counted. Max-pool, activations, flatten and dropout
have no parameters.

The course question (Q1): m filters of size k x k in every block, n dense neurons, image S x S
with 3 channels, 10 classes, no batch norm:

    params = 3*m*k^2 + m  +  4*(m*m*k^2 + m)  +  m*s5^2*n + n  +  10*n + 10

Multiply-accumulates (one forward pass, one image):

    MACs = sum_{i=1..5} s_{i-1}^2 * k_i^2 * c_{i-1} * c_i   conv: out pixels x window x c_in x c_out
         + c5 * s5^2 * n                                    hidden dense layer
         + n * C                                            output layer

and for Q1: MACs = 3*m*k^2*S^2 + m^2*k^2*(s1^2 + s2^2 + s3^2 + s4^2) + m*s5^2*n + 10*n.
Biases, batch norm, activations and max-pool are element-wise or comparisons, not MACs, and are
left out -- the same convention as ``torch.utils.flop_counter.FlopCounterMode``, which counts
2 FLOPs per MAC of convolution and (add)mm only; so FLOPs = 2 * MACs here, and the tests
check both counts exactly against the real module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from inat_tune.config import RunConfig


def _shapes(filters: Sequence[int], kernel_sizes: Sequence[int], image_size: int,
            in_channels: int) -> tuple[list[int], list[int]]:
    """Channel counts c_0..c_B and sides s_0..s_B (B = number of blocks)."""
    if len(filters) != len(kernel_sizes) or not filters:
        raise ValueError(f"need one kernel size per block: filters={list(filters)}, "
                         f"kernel_sizes={list(kernel_sizes)}")
    if any(k < 1 or k % 2 == 0 for k in kernel_sizes):
        raise ValueError("kernel sizes must be odd and >= 1 for same padding: "
                         f"{list(kernel_sizes)}")
    if any(c < 1 for c in filters) or in_channels < 1:
        raise ValueError(f"channel counts must be >= 1: {list(filters)}, in={in_channels}")
    blocks = len(filters)
    if image_size < 2**blocks:
        raise ValueError(f"image_size={image_size} < 2**{blocks}: the pools leave no pixels")
    channels = [in_channels, *filters]
    sides = [image_size // 2**i for i in range(blocks + 1)]  # repeated floor(/2) == floor(/2^i)
    return channels, sides


def cnn_param_count(filters: Sequence[int], kernel_sizes: Sequence[int], dense: int,
                    image_size: int, in_channels: int = 3, num_classes: int = 10,
                    batch_norm: bool = False) -> int:
    """Trainable parameters of ScratchCNN, equal to
    ``sum(p.numel() for p in model.parameters())``."""
    c, s = _shapes(filters, kernel_sizes, image_size, in_channels)
    conv = sum(c[i] * c[i + 1] * k * k + c[i + 1] for i, k in enumerate(kernel_sizes))
    bn = 2 * sum(c[1:]) if batch_norm else 0
    flat = c[-1] * s[-1] * s[-1]
    head = flat * dense + dense + dense * num_classes + num_classes
    return conv + bn + head


def cnn_macs(filters: Sequence[int], kernel_sizes: Sequence[int], dense: int, image_size: int,
             in_channels: int = 3, num_classes: int = 10) -> int:
    """Multiply-accumulates of the conv and linear layers for one image (FLOPs = 2 x this)."""
    c, s = _shapes(filters, kernel_sizes, image_size, in_channels)
    conv = sum(s[i] * s[i] * k * k * c[i] * c[i + 1] for i, k in enumerate(kernel_sizes))
    flat = c[-1] * s[-1] * s[-1]
    return conv + flat * dense + dense * num_classes


def count_for_config(cfg: "RunConfig", num_classes: int = 10) -> dict[str, int]:
    """{"params", "macs", "flops"} of the Part-A CNN that ``cfg`` describes (one image)."""
    filters, kernels = cfg.conv_filters(), cfg.kernel_sizes()
    macs = cnn_macs(filters, kernels, cfg.dense, cfg.image_size, num_classes=num_classes)
    params = cnn_param_count(filters, kernels, cfg.dense, cfg.image_size,
                             num_classes=num_classes, batch_norm=cfg.batch_norm)
    return {"params": params, "macs": macs, "flops": 2 * macs}

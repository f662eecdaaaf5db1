"""What the critical set means for compression and faults.

One module per job: ``params`` (bits, group size, sparsity, method, protect mode: checked once), ``weights`` (the
decoder-block Linear weights; in-place edits with a bit-exact restore), ``protect`` (protect lists), ``quantize``
(RTN), ``activations`` (input-activation norms on a text), ``prune`` (magnitude, Wanda), ``bitflips`` (int8
faults: greedy search, random control, replay). The study sections ``quantization``, ``pruning`` and ``bitflips``
(``studies/study/``) are built on these.
"""
from .bitflips import Flip, int8_model, replay_flips
from .params import CompressionError
from .protect import ProtectList, protect_list, random_down_proj
from .prune import pruned
from .quantize import quantized, rtn

__all__ = ["CompressionError", "ProtectList", "protect_list", "random_down_proj", "quantized", "rtn", "pruned",
           "Flip", "int8_model", "replay_flips"]

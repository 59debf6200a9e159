"""Stage 1, score and prune: find the n contiguous decoder blocks that matter least and cut them.

- :mod:`.calibration` -- the text the blocks are scored on;
- :mod:`.scoring` -- d(l, n) for every start l and length n from one forward pass per batch;
- :mod:`.metrics` -- the built-in block metrics (registered through the entry-point group);
- :mod:`.surgery` -- remove blocks from a loaded model;
- :mod:`.stage` -- ``prune()``: score, cut, save a loadable checkpoint with its model card;
  ``pruned_path()`` names the cache folder, ``load_prune_result()`` reads a pruned folder back.
"""

from .scoring import ScoreResult, score_blocks, score_model
from .stage import PRUNE_FILE, PruneResult, load_prune_result, prune, pruned_path
from .surgery import count_parameters, decoder_layers, remove_blocks, validate_blocks

__all__ = [
    "PRUNE_FILE",
    "PruneResult",
    "ScoreResult",
    "count_parameters",
    "decoder_layers",
    "load_prune_result",
    "prune",
    "pruned_path",
    "remove_blocks",
    "score_blocks",
    "score_model",
    "validate_blocks",
]

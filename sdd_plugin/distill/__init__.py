"""Stage 2, self-data distillation: the unpruned model rewrites each response in its own words.

- :mod:`.formats` -- dataset formats: read (instruction, response, expected answer), write back;
- :mod:`.templates` -- the built-in SDFT prompt templates;
- :mod:`.answers` and :mod:`.checkers` -- final-answer parsing and the built-in rewrite checks;
- :mod:`.stage` -- ``distill_dataset()``: generate, check, fall back, report, resume;
- :mod:`.convert` -- ``convert_dataset()``: rows of any format in a layout axolotl reads as it is;
- :mod:`.kd` -- SDD + KD: the teacher's top-k log-probs aligned to the distilled set in axolotl's KD layout.
"""

from .convert import convert_dataset, convert_rows
from .kd import AXOLOTL_KD_PLUGIN, AXOLOTL_KD_TYPE, KD_NAME, kd_targets
from .stage import DistillResult, distill_dataset

__all__ = [
    "AXOLOTL_KD_PLUGIN",
    "AXOLOTL_KD_TYPE",
    "DistillResult",
    "KD_NAME",
    "convert_dataset",
    "convert_rows",
    "distill_dataset",
    "kd_targets",
]

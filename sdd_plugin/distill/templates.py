"""Built-in SDFT distillation templates (Yang et al. 2402.13669): ``general`` and ``math``.

Each renders ``(messages, assistant_prefix)``; the distiller passes the messages through the
teacher's own chat template (``add_generation_prompt=True``) and appends the prefix, which seeds the
assistant turn but is not part of the distilled response.
"""

from __future__ import annotations

from ..hookspecs import hookimpl

GENERAL_PROMPT = (
    "Below are an instruction that describes a task along with a reference answer. "
    "Using the reference answer as a guide, write your own response.\n\n"
    "### Instruction:\n{instruction}\n\n### Reference Answer:\n{reference}"
)
MATH_PROMPT = (
    "You are an expert in math. Below are a math question and its reference answer. "
    "Refer to the reference answer and write a response that appropriately answers the question.\n\n"
    "### Question:\n{instruction}\n\n### Reference Answer:\n{reference}"
)
MATH_PREFIX = "Great! Let's think step by step."


class SDFTTemplate:
    """A one-turn SDFT rewrite prompt with an optional assistant prefix."""

    def __init__(self, name: str, prompt: str, prefix: str = "") -> None:
        self.name = name
        self.prompt = prompt
        self.prefix = prefix

    def render(self, instruction: str, reference: str) -> tuple[list[dict[str, str]], str]:
        """Return ``([user message], assistant_prefix)`` for one example."""
        content = self.prompt.format(instruction=instruction.strip(), reference=reference.strip())
        return [{"role": "user", "content": content}], self.prefix

    def __repr__(self) -> str:
        return f"SDFTTemplate({self.name!r})"


@hookimpl
def sdd_distill_templates():
    """The built-in templates."""
    return [
        SDFTTemplate("general", GENERAL_PROMPT),
        SDFTTemplate("math", MATH_PROMPT, MATH_PREFIX),
    ]


def render_prompt(tokenizer, messages: list[dict[str, str]], prefix: str = "") -> str:
    """Render chat messages through the teacher's chat template (generation prompt on) + ``prefix``."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:  # a base model without a chat template: a plain instruction layout
        text = "\n\n".join(m["content"].strip() for m in messages) + "\n\n### Response:\n"
    return text + prefix

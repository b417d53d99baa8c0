"""Prompts and special tokens, defined once for data preparation, training and evaluation."""

from __future__ import annotations

# The reference implementation's prompt: it asks for steps separated by blank lines,
# which is exactly the layout the assistant messages are built with.
DEFAULT_SYSTEM_PROMPT = (
    "Please solve the problem step by step (separate steps with double newlines), "
    "but keep it short and put your final answer (do not include any other text or units) "
    "within \\boxed{}."
)

# The final segment of every assistant message. `\boxed{..}` is what the system prompt
# asks for and what strict answer extraction reads first.
DEFAULT_ANSWER_TEMPLATE = "The final answer is \\boxed{{answer}}."

# Steps are joined with a blank line; a step's token span includes this separator.
STEP_SEPARATOR = "\n\n"


def predictor_tokens(k: int) -> list[str]:
    """The K predictor tokens `<|predictor_1|>` .. `<|predictor_K|>` (empty for K = 0)."""
    if k < 0:
        raise ValueError(f"K must be >= 0, got {k}")
    return [f"<|predictor_{i}|>" for i in range(1, k + 1)]


# Special tokens and chat template of the embedded tiny model (ChatML, as Qwen uses).
BOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

"""Choosing the next token from logits: greedy, or sampled through transformers' logits warpers."""

from __future__ import annotations


def logits_warpers(settings):
    """Temperature and top-p warpers for sampling ``settings`` (an empty list when greedy)."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList()
    if settings is not None and settings.do_sample:
        if settings.temperature and settings.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_p is not None and settings.top_p < 1.0:
            warpers.append(TopPLogitsWarper(settings.top_p))
    return warpers


def next_tokens(logits, warpers, do_sample: bool, generator):
    """``[B]`` next tokens from ``[B, V]`` logits: argmax, or a draw from the warped softmax."""
    import torch

    logits = logits.float()
    if do_sample:
        probs = torch.softmax(warpers(None, logits), dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return logits.argmax(dim=-1)

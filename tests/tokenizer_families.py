"""Compatibility re-export for modules not yet moved to tests.support.tokenizer_families
(remove after the issue-14 merge: tests/test_evaluate.py still imports from here)."""

from tests.support.tokenizer_families import (  # noqa: F401
    ALPHABET, FAMILIES, byte_level_bpe, corpus, gsm8k_like_step, merged_newline_bpe, metaspace_unigram,
)

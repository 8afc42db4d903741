"""QA extraction: prompts, tolerant parsing and validation, the LLM extractor and the rule extractor."""

from equal.extract.base import DocumentLike, ExtractionResult, Extractor
from equal.extract.llm_extractor import LLMExtractor
from equal.extract.parse import DROP_REASONS, parse_pairs, parse_text_pairs, validate_pair
from equal.extract.prompts import (
    PAIRS_FORMAT,
    PROMPT_VERSION,
    REFINE_VERSION,
    build_extract_messages,
    build_refine_messages,
    extract_instructions,
    refine_instructions,
    truncate_text,
)
from equal.extract.quality import QUALITY_REASONS, QualityConfig, content_words, quality_reason
from equal.extract.rules import RULES_VERSION, RuleExtractor, find_pairs

__all__ = [
    "DROP_REASONS",
    "PAIRS_FORMAT",
    "PROMPT_VERSION",
    "QUALITY_REASONS",
    "REFINE_VERSION",
    "RULES_VERSION",
    "DocumentLike",
    "ExtractionResult",
    "Extractor",
    "LLMExtractor",
    "QualityConfig",
    "RuleExtractor",
    "build_extract_messages",
    "build_refine_messages",
    "content_words",
    "extract_instructions",
    "find_pairs",
    "parse_pairs",
    "parse_text_pairs",
    "quality_reason",
    "refine_instructions",
    "truncate_text",
    "validate_pair",
]

"""The bundled toy model's world, trainer and evaluation; :func:`vocabulary` lists the words it knows."""

from .known_words import ToyVocabularyWarning, is_toy, unknown_words, vocabulary

__all__ = ["ToyVocabularyWarning", "is_toy", "unknown_words", "vocabulary"]

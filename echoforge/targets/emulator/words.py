"""The word lengths the emulator holds: products of two words, and the echo's accumulators, fit int64
(fixed.py). A module of its own so that the target registry reads them without loading numba."""

MIN_WORD_BITS, MAX_WORD_BITS = 12, 32

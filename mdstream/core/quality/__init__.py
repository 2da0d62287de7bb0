"""Data quality: the spec's five validation levels, scores, provider reliability and alerts.

Everything here is a pure function of (batch, state): no clock, no randomness, no I/O, so the
streaming pipeline and its recomputation agree (see `mdstream.core.processor`). Level 1
(syntactic) is decoding (`mdstream.core.contracts`); hard per-tick rejections are
`mdstream.core.validation`; the rest — semantic flags, cross-source, temporal and statistical
checks — is `mdstream.core.quality.checks`, combined per batch by `mdstream.core.quality.assess`.
"""

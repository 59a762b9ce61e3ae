"""unclip.eval: measuring generated images.

- :mod:`unclip.eval.oracle_net`: ``ShapesOracle`` / ``OracleConfig`` / ``PRESETS`` (the attribute reader).
- :mod:`unclip.eval.oracle`: ``load_oracle``, ``predict``, ``oracle_features``, ``score_specified``,
  ``unspecified_entropy``, ``record_agreement``, ``pooled_accuracy``, ``evaluate_on_world``.
- :mod:`unclip.eval.metrics`: ``frechet_distance``, ``normalized_entropy``, ``accuracy``.
"""

"""Measurements of generated images and embeddings, below training and the experiments that use them.

- :mod:`unclip.measure.oracle`: the shapes oracle (its network: :mod:`unclip.models.oracle_net`): ``load_oracle``,
  ``predict``, ``oracle_features``, ``score_specified``, ``unspecified_entropy``, ``record_agreement``,
  ``pooled_accuracy``, ``evaluate_on_world``.
- :mod:`unclip.measure.metrics`: ``frechet_distance``, ``normalized_entropy``, ``accuracy``.
- :mod:`unclip.measure.prior_metrics`: how well a prior's z_i match the true image embeddings.
- :mod:`unclip.measure.quality`: the built-in model's quality targets (attributes, diversity, variations).
"""

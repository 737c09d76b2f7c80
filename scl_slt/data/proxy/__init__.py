"""A proxy benchmark with real texts: per-frame features rendered from a real dataset's glosses.

The synthetic language (``data/synthetic/``) writes its own sentences; this package takes a user's
PHOENIX-2014-T or CSL-Daily label files (GFSLT-style ``labels.{train,dev,test}``: the real
sentences, gloss sequences and frame counts; no video) and renders every clip's frames from its
real gloss sequence, so a benchmark on it has the real texts' structure (duplicated and
near-identical sentences, a narrow domain) while the visual side is known exactly:

* a motion per gloss of the dataset's vocabulary (all three splits), drawn from the seed, and
  visually confusable twins (``confusable_rate`` of the glosses, ``confusable_distance``);
* the clip's real frame count (or ``frames_per_gloss`` per gloss) shared among its glosses in
  proportion to each gloss's typical duration, so the frame -> gloss alignment is known;
* per-signer styles (CSL-Daily: the P number of the name; PHOENIX: a hash of the broadcast) and
  per-frame Gaussian noise.

Modules: ``options`` (what a build depends on), ``language`` (motions, twins, signers, one clip's
rendering), ``build`` (the folder, checked input, atomic build, meta). The data configs
``phoenix14t_proxy`` / ``csl_daily_proxy`` read the folder.

    python -m scl_slt.data.proxy --labels ../shared/data/phoenix14t --out work/phoenix14t-proxy
"""

"""The built-in synthetic sign language: a small weather-report language generated from a seed.

Real sign language datasets cannot be shipped, so ``data=synthetic`` generates one on first use,
in the GFSLT-style format the real loaders read (``labels.{train,dev,test}`` + one array or frame
folder per clip). It keeps the properties selective contrastive learning is about:

* a gloss vocabulary, each gloss a short smooth motion (cosine-basis trajectory) with its own
  typical duration; clips concatenate gloss motions with a little coarticulation blur;
* a grammar: ``[TIME] [REGION] HEAD [MODIFIER] [NICHT]`` clauses, optionally joined by ``UND`` /
  ``ABER``, translated into German word order with function words
  (``MORGEN NORD REGEN`` -> "morgen regnet es im norden"), so translation is a learnable function
  of the gloss sequence but not a copy of it;
* several signers (a fixed per-signer linear transform and offset, a signing speed, colours for
  frames), per-frame noise, and the exact frame -> gloss alignment;
* visually confusable gloss pairs ("twins": same category, near-identical motion, different
  meaning) for ``confusable_rate`` of the vocabulary, and duplicated target sentences (one sentence
  signed by 2-3 clips, by different signers) for ``duplicate_rate`` of the train clips.

Achieved rates (measured on the generated data, written to ``meta.json``) match the requested ones
within ``1 / num_glosses`` (twins come in pairs) and ``1 / num_train`` (duplicates come in groups of
at least two). Dev/test sentences are new combinations except ``eval_seen_rate`` of them, which
reuse a train sentence (signed again).

Modules: ``grammar`` (lexicon, clause grammar, translation), ``language`` (vocabulary, twins,
motions, signers), ``plan`` (every clip's sentence, signer and alignment), ``render`` (features
and frames), ``generate`` (the on-disk dataset, cached and built atomically; ``ensure_synthetic``
is what the data layer calls), ``dialogue`` (the question each sentence answers, for
``data.assist=question``; derived on load, nothing cached depends on it).

    python -m scl_slt.data.synthetic [modality=frames] [seed=1 num_train=200 ...]
"""

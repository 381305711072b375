"""Probes: one module per way of looking at models, each a pure computation and a typed result.

Every probe module has `compute(...)`, which reads checkpoints and corpora and returns a result
dataclass; the result's `save(dir)` writes its tables (CSV, Markdown, JSON) and figures (PNG),
and `load(dir)` reads the tables back, so summaries and the report work from results, not from
rows by position. The older entry points (`softmax_probe`, `attribution_probe`, ...) are
`compute` followed by `save`.

    corpus_stats   characters of each corpus                      lmscope data stats
    cross_domain   zero-shot loss of every model on every corpus  lmscope matrix
    transfer       few-shot fine-tuning from early/mid/late       lmscope transfer
    softmax        next-character confidence and entropy          lmscope probe softmax
    attribution    gradient attribution over input characters     lmscope probe attribution
    attention      attention maps of a prompt, per head           lmscope probe attention
    generation     quality, speed and attention of samples        lmscope probe generation
    sampling       nucleus-sampling table                         lmscope sample --sweep-top-p
    compare        curves, early-stopping point, fit verdict      lmscope compare
    seeds          means over seeds with standard errors          lmscope study --seeds
    correlation    attention vs loss and vs sample quality (used by generation and seeds)
    lens           logit lens (and tuned_lens) at every layer           lmscope probe lens
    heads          head detectors and the in-context-learning score     lmscope probe heads
    ablation       each component ablated, the loss on each corpus      lmscope probe ablate
    patching       activation patching between two prompts             lmscope probe patch
    dynamics       weights, gradients, activations over checkpoints     lmscope probe dynamics
    similarity     layer x layer CKA between runs                       lmscope probe similarity

The numbers they compute with are lmscope.metrics (pure functions); studies run them in order
(lmscope.study); examples/tour.py walks through them from Python.
"""

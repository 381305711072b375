"""Studies of trained models, one module per study.

Each module works through the public API only (`lmscope.load`, `evaluate`, `generate`, the
checkpoints a run keeps) and writes numbers as CSV/JSON and figures as PNG into an output folder:

    corpus_stats       characters of each corpus                      lmscope data stats
    cross_domain       zero-shot loss of every model on every corpus  lmscope matrix
    transfer           few-shot fine-tuning from early/mid/late       lmscope transfer
    softmax            next-character confidence and entropy          lmscope probe softmax
    attribution        gradient attribution over input characters     lmscope probe attribution
    attention          attention maps of a prompt, per head           lmscope probe attention
    attention_metrics  entropy, span, head diversity, layer similarity (tracked in training)
    generation         quality, speed and attention of samples        lmscope probe generation
    generation_quality distinct-n, repetition, coherence of text
    correlation        Pearson / Spearman with p-values
    sampling           nucleus-sampling table                         lmscope sample --sweep-top-p
    compare            curves, early-stopping point, fit verdict      lmscope compare
    seeds              means over seeds with standard errors          lmscope study --seeds
    study              a TOML file that runs the steps above in order lmscope study

examples/tour.py walks through them from Python.
"""

"""Studies of trained models, one module per study.

Each module works through the public API only (`lmscope.load`, `evaluate`, `generate`, the
checkpoints a run keeps) and writes numbers as CSV/JSON and figures as PNG into an output folder:

    corpus_stats   characters of each corpus                     lmscope data stats
    cross_domain   zero-shot loss of every model on every corpus  lmscope matrix
    transfer       few-shot fine-tuning from early/mid/late       lmscope transfer
    softmax        next-character confidence and entropy          lmscope probe softmax
    attribution    gradient attribution over input characters     lmscope probe attribution
    study          a TOML file that runs the steps above in order lmscope study
"""
